#!/usr/bin/env bash
# The object layer against fio on the same disk, in one run (see docs/benchmarks.md).
#
#   tools/bench/objstore.sh           ROUNDS rounds, interleaved: fio sequential write with an
#                                     fsync per 4 MiB block and read (page cache dropped), then
#                                     4 MiB objects put/get straight on a local store (R=1, one
#                                     and four in flight), 4 KiB objects put/get, the same through
#                                     one envoyd's storage service over loopback TCP (R=1), and
#                                     replicated puts/gets across two envoyds (R=2); medians and
#                                     the store/fio ratios
#   tools/bench/objstore.sh --smoke   each measurement once, small (debug build, < 30 s)
#
# env: ROUNDS (3), COUNT (4 MiB objects per run, 256 = 1 GiB), SMALL_COUNT (20000),
#      BENCH_DIR (scratch directory on the disk under test; default /var/tmp/envoy-objbench),
#      OUT (results; default target/bench/objstore-DATE). Needs root (drop_caches) and fio.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export RUST_LIB_BACKTRACE=0

SMOKE=0
case "${1:-}" in
--smoke) SMOKE=1 ;;
"") ;;
*)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
log() { printf '[objbench] %s\n' "$*" >&2; }
die() {
    printf '[objbench] FAILED: %s\n' "$*" >&2
    exit 1
}

if [ $SMOKE = 1 ]; then
    ROUNDS=1 COUNT=${COUNT:-8} SMALL_COUNT=${SMALL_COUNT:-500} PROFILE=debug
else
    ROUNDS=${ROUNDS:-3} COUNT=${COUNT:-256} SMALL_COUNT=${SMALL_COUNT:-20000} PROFILE=release
fi
command -v fio >/dev/null || die "fio is not installed (apt-get install fio)"
BENCH_DIR=${BENCH_DIR:-/var/tmp/envoy-objbench}
OUT=${OUT:-$ROOT/target/bench/objstore-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
if [ $PROFILE = release ]; then
    cargo build --release -q -p envoy-tools -p envoy-dom0-agent
    BIN=$ROOT/target/release
else
    cargo build -q -p envoy-tools -p envoy-dom0-agent
    BIN=$ROOT/target/debug
fi
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$BENCH_DIR"
}
trap cleanup EXIT
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on port $1"
}
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
MIB=$((COUNT * 4))

# fio: one job, 4 MiB blocks, an fsync after every write; then read back from disk.
fio_run() {
    local round=$1 dir=$BENCH_DIR/fio
    rm -rf "$dir" && mkdir -p "$dir"
    fio --name=w --directory="$dir" --filename=f --rw=write --bs=4M --size=${MIB}M --fsync=1 \
        --ioengine=psync --output-format=json >"$OUT/fio-w-$round.json"
    drop_caches
    fio --name=r --directory="$dir" --filename=f --rw=read --bs=4M --size=${MIB}M \
        --ioengine=psync --output-format=json >"$OUT/fio-r-$round.json"
    python3 - "$OUT/fio-w-$round.json" "$OUT/fio-r-$round.json" "$round" >>"$RESULTS" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]["bw_bytes"]
r = json.load(open(sys.argv[2]))["jobs"][0]["read"]["bw_bytes"]
for phase, bw in (("put", w), ("get", r)):
    print(json.dumps({"label": "fio 4 MiB seq, fsync each", "phase": phase, "round": int(sys.argv[3]),
                      "mb_s": bw / 1e6, "ops_s": bw / 4194304}))
PY
    rm -rf "$dir"
}

# objbench LABEL ROUND ARGS...: one envoy-bench objstore run, recorded.
objbench() {
    local label=$1 round=$2
    shift 2
    local verify=
    [ $SMOKE = 1 ] && verify=--verify
    "$BIN/envoy-bench" objstore --json --drop-caches $verify "$@" >"$OUT/last.json" ||
        die "envoy-bench objstore $* failed"
    python3 - "$OUT/last.json" "$label" "$round" >>"$RESULTS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for phase in ("put", "get"):
    print(json.dumps({"label": sys.argv[2], "phase": phase, "round": int(sys.argv[3]),
                      "mb_s": r[phase]["mb_s"], "ops_s": r[phase]["ops_s"]}))
PY
}

# Storage services: one alone (R=1) and a pair (R=2), on loopback, with empty stores (started
# afresh each round so that rounds do not fill the disk).
start_services() {
    P1=$(free_port) PA=$(free_port) PB=$(free_port)
    rm -rf "$BENCH_DIR/solo" "$BENCH_DIR/a" "$BENCH_DIR/b"
    cat >"$BENCH_DIR/pair.toml" <<EOT
replicas = 2
[[host]]
name = "a"
storage = "tcp:127.0.0.1:$PA"
[[host]]
name = "b"
storage = "tcp:127.0.0.1:$PB"
EOT
    "$BIN/envoyd" --host solo --data-dir "$BENCH_DIR/solo" --storage "tcp:127.0.0.1:$P1" \
        >>"$OUT/solo.log" 2>&1 &
    PIDS+=($!)
    for h in a b; do
        "$BIN/envoyd" --host $h --data-dir "$BENCH_DIR/$h" --cluster "$BENCH_DIR/pair.toml" \
            >>"$OUT/$h.log" 2>&1 &
        PIDS+=($!)
    done
    wait_port "$P1" && wait_port "$PA" && wait_port "$PB"
}
stop_services() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
    rm -rf "$BENCH_DIR/solo" "$BENCH_DIR/a" "$BENCH_DIR/b"
}

for round in $(seq 1 "$ROUNDS"); do
    log "round $round/$ROUNDS: fio"
    fio_run "$round"
    log "round $round/$ROUNDS: local store"
    rm -rf "$BENCH_DIR/local"
    objbench "store 4 MiB, 1 in flight" "$round" --dir "$BENCH_DIR/local" --count "$COUNT" --jobs 1
    rm -rf "$BENCH_DIR/local"
    objbench "store 4 MiB, 4 in flight" "$round" --dir "$BENCH_DIR/local" --count "$COUNT" --jobs 4
    rm -rf "$BENCH_DIR/local"
    objbench "store 4 KiB, 16 in flight" "$round" --dir "$BENCH_DIR/local" --size 4096 \
        --count "$SMALL_COUNT" --jobs 16
    rm -rf "$BENCH_DIR/local"
    log "round $round/$ROUNDS: services"
    start_services
    objbench "service R=1 4 MiB, 4 in flight" "$round" --endpoint "tcp:127.0.0.1:$P1" \
        --count "$COUNT" --jobs 4
    objbench "service R=1 4 KiB, 16 in flight" "$round" --endpoint "tcp:127.0.0.1:$P1" \
        --size 4096 --count "$SMALL_COUNT" --jobs 16
    objbench "service R=2 4 MiB, 4 in flight" "$round" --endpoint "tcp:127.0.0.1:$PA" \
        --replicated --count "$COUNT" --jobs 4
    objbench "service R=2 4 KiB, 16 in flight" "$round" --endpoint "tcp:127.0.0.1:$PA" \
        --replicated --size 4096 --count "$SMALL_COUNT" --jobs 16
    stop_services
done

python3 - "$RESULTS" "$OUT/summary.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out = open(sys.argv[2], "w")
def emit(s=""):
    print(s); out.write(s + "\n")
FIO = "fio 4 MiB seq, fsync each"
by = {}
for r in rows:
    by.setdefault((r["label"], r["phase"]), {})[r["round"]] = r
def ratio(label, phase):
    # Each round's figure over fio's in the same round; min / median / max of those.
    rs = [by[(label, phase)][k]["mb_s"] / by[(FIO, phase)][k]["mb_s"]
          for k in by[(label, phase)] if k in by[(FIO, phase)]]
    return "%.2f / **%.2f** / %.2f" % (min(rs), statistics.median(rs), max(rs))
emit("| run | put MB/s | put ops/s | get MB/s | get ops/s | put / fio write (min / **median** / max) | get / fio read |")
emit("| --- | --- | --- | --- | --- | --- | --- |")
for label in dict.fromkeys(r["label"] for r in rows):
    p, g = by[(label, "put")].values(), by[(label, "get")].values()
    med = lambda xs, k: statistics.median(x[k] for x in xs)
    big = label != FIO and "4 MiB" in label
    emit("| %s | %.0f | %.0f | %.0f | %.0f | %s | %s |" % (label, med(p, "mb_s"), med(p, "ops_s"),
         med(g, "mb_s"), med(g, "ops_s"), ratio(label, "put") if big else "-",
         ratio(label, "get") if big else "-"))
PY
log "results in $OUT (summary.md)"
