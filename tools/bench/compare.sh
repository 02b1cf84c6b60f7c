#!/usr/bin/env bash
# envoyd against diod on one file tree over loopback, and the loopback ceiling (see
# docs/benchmarks.md for results and how to read them).
#
#   tools/bench/compare.sh            full comparison: every workload against envoyd and diod in
#                                     alternation (A B A B ...), ROUNDS rounds, then per workload
#                                     the envoyd/diod ratios (min / median / max)
#   tools/bench/compare.sh --smoke    every workload once against envoyd only (9P2000.L over TCP
#                                     and 9P2000.u over a unix socket, ~1 s each, reads verified);
#                                     debug build, small tree, < 30 s; fails loudly on any error
#   tools/bench/compare.sh --summarize DIR   print the table again for an earlier run's results
#
# env: ROUNDS (5), RUN_SECONDS (4, per run), BIG_MIB (1024), META_FILES (10000), SMALL_FILES (1000),
#      OUT (results directory; default target/bench/compare-DATE), KEEP=1 keeps the temp tree,
#      BENCH_TMP (parent of the temp tree, default /tmp), PROFILE (release; smoke: debug)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export RUST_LIB_BACKTRACE=0 # errors as one clear chain, without backtraces

SMOKE=0
SUMMARIZE=
case "${1:-}" in
--smoke) SMOKE=1 ;;
--summarize) SUMMARIZE=${2:?--summarize needs a results directory} ;;
"") ;;
*)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

log() { printf '[compare] %s\n' "$*" >&2; }
die() {
    printf '[compare] FAILED: %s\n' "$*" >&2
    exit 1
}

# summarize DIR: the envoyd/diod table from DIR/results.jsonl and DIR/loopback.jsonl, printed
# and written to DIR/summary.md.
summarize() {
    python3 - "$1" "$(nproc)" <<'EOF'
import json, statistics, sys
outdir = sys.argv[1]
results = [json.loads(l) for l in open(outdir + "/results.jsonl")]
loop = [json.loads(l)["mb_per_s"] for l in open(outdir + "/loopback.jsonl")]
out = open(outdir + "/summary.md", "w")
def emit(s=""):
    print(s); out.write(s + "\n")
def mmm(xs):
    return "%.2f / **%.2f** / %.2f" % (min(xs), statistics.median(xs), max(xs))
labels = list(dict.fromkeys(r["label"] for r in results))
by = {}
for r in results:
    by.setdefault((r["label"], r["server"]), {})[r["round"]] = r
emit("| workload | conns x depth | msize (envoyd / diod) | envoyd | diod | envoyd/diod min / **median** / max |"
     " CPU s/GiB envoyd / diod | CPU ratio min / **median** / max |")
emit("| --- | --- | --- | --- | --- | --- | --- | --- |")
for lab in labels:
    e, d = by[(lab, "envoyd")], by[(lab, "diod")]
    rounds = sorted(set(e) & set(d))
    seq = lab.startswith("seq")
    key, unit = ("mb_per_s", "MB/s") if seq else ("ops_per_s", "ops/s")
    ratios = [e[i][key] / d[i][key] for i in rounds]
    med = lambda rs, k: statistics.median(r[k] for r in rs.values() if r[k] is not None)
    r0 = e[rounds[0]]
    cpu = "-"; cpur = "-"
    if r0["bytes"] > 0:
        cr = [e[i]["server_cpu_s_per_gib"] / d[i]["server_cpu_s_per_gib"] for i in rounds]
        cpu = "%.2f / %.2f" % (med(e, "server_cpu_s_per_gib"), med(d, "server_cpu_s_per_gib"))
        cpur = mmm(cr)
    emit("| %s | %dx%d | %s / %s | %.0f %s | %.0f %s | %s | %s | %s |" % (
        lab, r0["conns"], r0["depth"], r0["msize"], d[rounds[0]]["msize"],
        med(e, key), unit, med(d, key), unit, mmm(ratios), cpu, cpur))
emit()
lb = statistics.median(loop)
sr = statistics.median(r["mb_per_s"] for r in by[("seqread", "envoyd")].values())
emit("loopback TCP ceiling (1 MiB buffers, two processes): median %.0f MB/s (min %.0f, max %.0f)" % (lb, min(loop), max(loop)))
emit("envoyd seqread: median %.0f MB/s = %.0f%% of the loopback ceiling" % (sr, 100 * sr / lb))
emit()
emit("latency medians (p50 / p99 us):")
for lab in labels:
    e, dd = by[(lab, "envoyd")], by[(lab, "diod")]
    m = lambda rs, k: statistics.median(r[k] for r in rs.values())
    emit("  %-14s envoyd %8.1f / %8.1f   diod %8.1f / %8.1f" % (lab, m(e, "p50_us"), m(e, "p99_us"), m(dd, "p50_us"), m(dd, "p99_us")))
emit()
# The targets of the baseline issue, on medians of per-round ratios.
def ratio_med(lab, key):
    e, d = by[(lab, "envoyd")], by[(lab, "diod")]
    return statistics.median(e[i][key] / d[i][key] for i in sorted(set(e) & set(d)))
def target(name, value, ok):
    emit("  %-4s %s: %s" % ("MET" if ok else "NOT", name, value))
emit("targets (medians of envoyd/diod ratios):")
if ("metadata", "envoyd") in by:
    v = ratio_med("metadata", "ops_per_s"); target("metadata ops/s >= 1.5x diod", "%.2fx" % v, v >= 1.5)
if ("seqread", "envoyd") in by:
    v = ratio_med("seqread", "mb_per_s"); target("seqread MB/s >= 1.2x diod", "%.2fx" % v, v >= 1.2)
    target("seqread >= 70% of the loopback ceiling", "%.0f%%" % (100 * sr / lb), sr >= 0.7 * lb)
if ("randread", "envoyd") in by:
    v = ratio_med("randread", "ops_per_s"); target("randread 4K ops/s >= 1.2x diod", "%.2fx" % v, v >= 1.2)
for lab in ("smallread", "randread", "seqread"):
    if (lab, "envoyd") in by:
        v = ratio_med(lab, "server_cpu_s_per_gib")
        target("%s: envoyd CPU s/GiB <= diod's" % lab, "%.2fx" % v, v <= 1.0)
emit()
# CPU time the machine spent on neither the server nor the bench: other processes (noise).
ncpu = int(sys.argv[2])
noisy = [r for r in results if (r.get("other_cpu_s") or 0) > 0.1 * r["seconds"] * ncpu]
emit("runs disturbed by other processes (> 10%% of the machine's CPU): %d of %d%s" % (
    len(noisy), len(results),
    "".join("\n  round %d %s %s: %.2f CPU s" % (r["round"], r["server"], r["label"], r["other_cpu_s"]) for r in noisy)))
EOF
}

if [ -n "$SUMMARIZE" ]; then
    summarize "$SUMMARIZE"
    exit 0
fi

if [ $SMOKE = 1 ]; then
    VERIFY=(--verify) # every byte read is checked (too much client CPU for the measured runs)
    PROFILE=${PROFILE:-debug}
    ROUNDS=1
    RUN_SECONDS=${RUN_SECONDS:-1}
    BIG_MIB=${BIG_MIB:-64}
    META_FILES=${META_FILES:-1000}
    SMALL_FILES=${SMALL_FILES:-100}
else
    VERIFY=()
    PROFILE=${PROFILE:-release}
    ROUNDS=${ROUNDS:-5}
    RUN_SECONDS=${RUN_SECONDS:-4}
    BIG_MIB=${BIG_MIB:-1024}
    META_FILES=${META_FILES:-10000}
    SMALL_FILES=${SMALL_FILES:-1000}
fi
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 100 ] || die "ROUNDS must be 1..100"

# --- tools ------------------------------------------------------------------------------
if [ $SMOKE = 0 ] && ! command -v diod >/dev/null; then
    log "installing diod (Debian package)"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends diod
fi
command -v python3 >/dev/null || die "python3 is needed for the summary"

log "building envoyd and envoy-bench ($PROFILE)"
if [ "$PROFILE" = release ]; then
    cargo build --quiet --release -p envoy-dom0-agent -p envoy-tools --bin envoyd --bin envoy-bench
else
    cargo build --quiet -p envoy-dom0-agent -p envoy-tools --bin envoyd --bin envoy-bench
fi
ENVOYD=$ROOT/target/$PROFILE/envoyd
BENCH=$ROOT/target/$PROFILE/envoy-bench

# busy_pct SECONDS: how busy all CPUs were over SECONDS, in percent (from /proc/stat).
busy_pct() {
    local a b i d busy=0 total=0
    read -r -a a </proc/stat
    sleep "$1"
    read -r -a b </proc/stat
    for i in 1 2 3 4 5 6 7 8; do
        d=$((b[i] - a[i]))
        total=$((total + d))
        [ "$i" = 4 ] || [ "$i" = 5 ] || busy=$((busy + d)) # idle, iowait
    done
    echo $((total > 0 ? 100 * busy / total : 0))
}

# wait_quiet: wait (at most QUIET_WAIT s) until other processes leave the CPUs alone, since
# the bench measures CPU-bound servers on a shared machine. Sets NOISY=1 if it gave up.
QUIET_PCT=${QUIET_PCT:-10}
QUIET_WAIT=${QUIET_WAIT:-900}
NOISY=0
wait_quiet() {
    local waited=0 pct
    while :; do
        pct=$(busy_pct 2)
        [ "$pct" -le "$QUIET_PCT" ] && return 0
        if [ "$waited" -ge "$QUIET_WAIT" ]; then
            log "WARNING: the machine is still ${pct}% busy after ${waited} s; measuring anyway (noisy)"
            NOISY=1
            return 0
        fi
        log "the machine is ${pct}% busy (other processes); waiting for <= ${QUIET_PCT}%"
        sleep 10
        waited=$((waited + 12))
    done
}

# --- the tree and the servers -------------------------------------------------------------
TMP=$(mktemp -d "${BENCH_TMP:-/tmp}/envoy-bench.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
EXPORT=$TMP/export

log "preparing the tree in $EXPORT"
"$BENCH" prepare "$EXPORT" --meta-files "$META_FILES" --small-files "$SMALL_FILES" --big-mib "$BIG_MIB" >&2

# start_envoyd: sets ENVOYD_PID, ENVOYD_PORT, ENVOYD_SOCK
start_envoyd() {
    ENVOYD_SOCK=$TMP/envoyd.sock
    "$ENVOYD" --export "$EXPORT" --listen tcp:127.0.0.1:0 --listen "unix:$ENVOYD_SOCK" \
        >"$TMP/envoyd.out" 2>"$TMP/envoyd.err" &
    ENVOYD_PID=$!
    PIDS+=("$ENVOYD_PID")
    local i
    for i in $(seq 100); do
        grep -q "on unix:" "$TMP/envoyd.out" 2>/dev/null && break
        kill -0 "$ENVOYD_PID" 2>/dev/null || break
        sleep 0.1
    done
    ENVOYD_PORT=$(sed -n 's/^envoyd: serving .* on tcp:127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/envoyd.out")
    if [ -z "$ENVOYD_PORT" ] || ! grep -q "on unix:" "$TMP/envoyd.out"; then
        cat "$TMP/envoyd.out" "$TMP/envoyd.err" >&2
        die "envoyd did not start"
    fi
    log "envoyd (pid $ENVOYD_PID) on 127.0.0.1:$ENVOYD_PORT and $ENVOYD_SOCK"
}

# start_diod: sets DIOD_PID, DIOD_PORT. diod 1.0.x: -f foreground, -n no auth (attach as any
# user; we are root), -c /dev/null ignores /etc/diod.conf, -e the export (attach name = its path).
start_diod() {
    DIOD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    diod -f -n -c /dev/null -L stderr -l "127.0.0.1:$DIOD_PORT" -e "$EXPORT" 2>"$TMP/diod.err" &
    DIOD_PID=$!
    PIDS+=("$DIOD_PID")
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$DIOD_PORT") 2>/dev/null && break
        kill -0 "$DIOD_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$DIOD_PID" 2>/dev/null || {
        cat "$TMP/diod.err" >&2
        die "diod did not start"
    }
    # It must really serve the tree: one short metadata run.
    "$BENCH" --tcp "127.0.0.1:$DIOD_PORT" --aname "$EXPORT" --workload metadata --seconds 0.3 \
        >/dev/null || {
        cat "$TMP/diod.err" >&2
        die "diod does not serve $EXPORT"
    }
    log "diod (pid $DIOD_PID) on 127.0.0.1:$DIOD_PORT"
}

start_envoyd
[ $SMOKE = 1 ] || start_diod

# bench SERVER WORKLOAD [ARGS...]: one run, one JSON line appended to $RESULTS.
bench() {
    local server=$1 label=$2 workload=$3
    shift 3
    local target
    case $server in
    envoyd) target=(--tcp "127.0.0.1:$ENVOYD_PORT" --server-pid "$ENVOYD_PID") ;;
    envoyd-unix) target=(--unix "$ENVOYD_SOCK" --server-pid "$ENVOYD_PID") ;;
    diod) target=(--tcp "127.0.0.1:$DIOD_PORT" --server-pid "$DIOD_PID") ;;
    esac
    local line
    line=$(timeout $((${RUN_SECONDS%.*} + 60)) "$BENCH" "${target[@]}" --aname "$EXPORT" \
        --workload "$workload" --seconds "$RUN_SECONDS" "${VERIFY[@]}" --json --label "$label" "$@") ||
        die "$label on $server failed (see the error above)"
    printf '{"server":"%s","round":%s,%s\n' "${server%-unix}" "$ROUND" "${line#\{}" >>"$RESULTS"
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("  %-11s %-14s %-9s %9.0f ops/s %8.1f MB/s p50 %8.1f us p99 %8.1f us cpu %.2f s" % (sys.argv[2], r["label"], r["dialect"], r["ops_per_s"], r["mb_per_s"], r["p50_us"], r["p99_us"], r["server_cpu_s"]))' \
        "$line" "$server" >&2
}

# --- smoke ------------------------------------------------------------------------------
if [ $SMOKE = 1 ]; then
    RESULTS=$TMP/results.jsonl
    ROUND=1
    start=$(date +%s)
    for w in metadata create smallread seqread seqwrite randread; do
        bench envoyd "$w" "$w" --dialect L --conns 2 --depth 4
        bench envoyd-unix "$w" "$w" --dialect u --conns 2 --depth 4
    done
    "$BENCH" loopback --seconds 0.5 >&2 || die "loopback measurement failed"
    kill -0 "$ENVOYD_PID" 2>/dev/null || die "envoyd died during the smoke run"
    ! grep -q panicked "$TMP/envoyd.err" || die "envoyd panicked: $(grep panicked "$TMP/envoyd.err")"
    [ "$(wc -l <"$RESULTS")" -eq 12 ] || die "expected 12 results"
    log "smoke passed: 6 workloads x (9P2000.L tcp, 9P2000.u unix) in $(($(date +%s) - start)) s"
    exit 0
fi

# --- full comparison --------------------------------------------------------------------
OUT=${OUT:-$ROOT/target/bench/compare-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
LOOPBACK=$OUT/loopback.jsonl
: >"$LOOPBACK"

# label workload conns depth msize
CASES=(
    "metadata metadata 4 8 1048576"
    "create create 4 8 1048576"
    "smallread smallread 4 8 1048576"
    "randread randread 4 8 1048576"
    "seqread seqread 1 4 1048576"
    "seqwrite seqwrite 1 4 1048576"
    "seqread-64k seqread 1 4 65536"
    "smallread-64k smallread 4 8 65536"
)

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "kernel: $(uname -r)"
    echo "load before the run: $(cut -d" " -f1-3 /proc/loadavg)"
    echo "diod: $(dpkg-query -W -f '${Version}' diod 2>/dev/null || echo unknown)"
    echo "envoy: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (modified)')"
    echo "rounds: $ROUNDS x ${RUN_SECONDS} s, tree: $META_FILES meta files, $SMALL_FILES small files, big $BIG_MIB MiB"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

for ROUND in $(seq "$ROUNDS"); do
    wait_quiet
    log "round $ROUND/$ROUNDS"
    "$BENCH" loopback --seconds "$RUN_SECONDS" --json >>"$LOOPBACK" || die "loopback measurement failed"
    for c in "${CASES[@]}"; do
        read -r label workload conns depth msize <<<"$c"
        for server in envoyd diod; do
            bench "$server" "$label" "$workload" --conns "$conns" --depth "$depth" --msize "$msize"
        done
    done
done
for p in "$ENVOYD_PID" "$DIOD_PID"; do
    kill -0 "$p" 2>/dev/null || die "a server (pid $p) died during the run"
done

summarize "$OUT"
log "results in $OUT (results.jsonl, loopback.jsonl, machine.txt, summary.md)"
