#!/usr/bin/env bash
# What Envoy images cost, in one run (see docs/benchmarks.md, "Envoy images").
#
#   tools/bench/image.sh           snapshot and fork latency on images of 1,000 and 100,000
#                                  files and of 1 GiB and 8 GiB of data (envoy-bench image
#                                  snapshot); the space of 10 forks of a 1 GiB image each
#                                  rewriting 1 % (in 64 KiB and in 4 KiB writes) and what
#                                  deleting them plus GC gives back (envoy-bench image space);
#                                  9P seqwrite/seqread throughput of envoyd serving an image vs
#                                  envoyd exporting a directory on the same disk, ROUNDS rounds
#                                  interleaved, per-round ratios (page cache dropped before reads)
#   tools/bench/image.sh --smoke   each measurement once, small (debug build, < 1 min)
#
# env: ROUNDS (3), SECONDS_PER_RUN (5), BIG_MIB (1024: the file seqread reads), IMAGE_CACHE_MIB
#      (the image's block cache; default BIG_MIB + 512, so the file fits), SHAPES (override
#      the snapshot shapes, "FILES:KIB ..."), BENCH_DIR (scratch directory on the disk under
#      test; default /var/tmp/envoy-imgbench), OUT (results; default target/bench/image-DATE).
#      Needs root (drop_caches).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export RUST_LIB_BACKTRACE=0

SMOKE=0
case "${1:-}" in
--smoke) SMOKE=1 ;;
"") ;;
*)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
log() { printf '[imgbench] %s\n' "$*" >&2; }
die() {
    printf '[imgbench] FAILED: %s\n' "$*" >&2
    exit 1
}

if [ $SMOKE = 1 ]; then
    ROUNDS=1 RUN_S=1 BIG_MIB=${BIG_MIB:-16} PROFILE=debug
    SHAPES=${SHAPES:-"200:4 4:1024"} SPACE_MIB=64 FORKS=3 REPS=5
else
    ROUNDS=${ROUNDS:-3} RUN_S=${SECONDS_PER_RUN:-5} BIG_MIB=${BIG_MIB:-1024} PROFILE=release
    SHAPES=${SHAPES:-"1000:4 100000:4 16:65536 128:65536"} SPACE_MIB=1024 FORKS=10 REPS=50
fi
IMAGE_CACHE_MIB=${IMAGE_CACHE_MIB:-$((BIG_MIB + 512))}
BENCH_DIR=${BENCH_DIR:-/var/tmp/envoy-imgbench}
OUT=${OUT:-$ROOT/target/bench/image-$(date +%Y%m%d-%H%M%S)}
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
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

# 1. Snapshot and fork latency by image shape.
for shape in $SHAPES; do
    files=${shape%%:*} kib=${shape##*:}
    log "snapshot/fork latency: $files files x $kib KiB"
    "$BIN/envoy-bench" image snapshot --dir "$BENCH_DIR/snap" --files "$files" --file-kib "$kib" \
        --reps "$REPS" | tee -a "$OUT/snapshot.txt"
    rm -rf "$BENCH_DIR/snap"
done

# 2. Space of forks, and what deleting them and GC give back.
for kib in 64 4; do
    log "space: $FORKS forks of $SPACE_MIB MiB, 1 % each in $kib KiB writes"
    "$BIN/envoy-bench" image space --dir "$BENCH_DIR/space" --base-mib "$SPACE_MIB" \
        --forks "$FORKS" --write-kib "$kib" | tee -a "$OUT/space.txt"
    rm -rf "$BENCH_DIR/space"
done

# 3. 9P throughput: an image vs an export on the same disk.
mkdir -p "$BENCH_DIR/export" "$BENCH_DIR/img"
head -c $((BIG_MIB << 20)) /dev/urandom >"$BENCH_DIR/export/big"
start() { # NAME ARGS...: an envoyd on a free port; sets PORT and PID
    local name=$1
    shift
    "$BIN/envoyd" "$@" --listen tcp:127.0.0.1:0 >"$OUT/$name.out" 2>"$OUT/$name.log" &
    PID=$!
    PIDS+=("$PID")
    for _ in $(seq 200); do grep -q '^envoyd: serving' "$OUT/$name.out" 2>/dev/null && break; sleep 0.05; done
    PORT=$(sed -n 's/^envoyd: serving .* on tcp:127\.0\.0\.1:\([0-9]*\)$/\1/p' "$OUT/$name.out")
    [ -n "$PORT" ] || die "envoyd $name did not start: $(tail -5 "$OUT/$name.log")"
}
start export --export "$BENCH_DIR/export" --data-dir "$BENCH_DIR/export-data"
EXPORT_PORT=$PORT EXPORT_PID=$PID
# The export's file sits in the page cache after its first read; the image gets a block cache
# that holds it too (envoyd's default is 512 MiB).
start image --host bench --data-dir "$BENCH_DIR/img" --storage "unix:$BENCH_DIR/storage.sock" --image bench \
    --image-cache-mib "$IMAGE_CACHE_MIB"
IMAGE_PORT=$PORT IMAGE_PID=$PID
log "copying the $BIG_MIB MiB file into the image through 9P"
"$BIN/envoy-9p" --tcp "127.0.0.1:$IMAGE_PORT" --uid 0 put big <"$BENCH_DIR/export/big"
run() { # SERVER WORKLOAD ROUND
    local port pid
    if [ "$1" = export ]; then port=$EXPORT_PORT pid=$EXPORT_PID; else port=$IMAGE_PORT pid=$IMAGE_PID; fi
    local path=(--tree /)
    if [ "$2" = seqread ]; then path=(--file big); drop_caches; fi
    "$BIN/envoy-bench" --tcp "127.0.0.1:$port" --workload "$2" "${path[@]}" \
        --conns 1 --depth 4 --msize 1048576 --seconds "$RUN_S" --server-pid "$pid" --json |
        sed "s/^{/{\"server\":\"$1\",\"round\":$3,/" >>"$OUT/throughput.jsonl"
}
for round in $(seq "$ROUNDS"); do
    for w in seqwrite seqread; do
        for server in export image; do
            log "round $round: $w on the $server"
            run "$server" "$w" "$round"
        done
    done
done
python3 - "$OUT/throughput.jsonl" <<'EOF' | tee "$OUT/throughput.md"
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def mbps(r):
    return r["mb_per_s"]
print("| workload | export MB/s (median) | image MB/s (median) | image/export (median of per-round ratios) |")
print("| --- | --- | --- | --- |")
for w in ("seqwrite", "seqread"):
    by = {}
    for r in runs:
        if r.get("workload") == w:
            by.setdefault(r["round"], {})[r["server"]] = mbps(r)
    ex = [v["export"] for v in by.values() if "export" in v]
    im = [v["image"] for v in by.values() if "image" in v]
    ratios = [v["image"] / v["export"] for v in by.values() if v.get("export") and "image" in v]
    if ex and im and ratios:
        print(f"| {w} | {statistics.median(ex):.0f} | {statistics.median(im):.0f} | {statistics.median(ratios):.2f} |")
EOF
log "results in $OUT"
