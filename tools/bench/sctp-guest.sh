#!/usr/bin/env bash
# envoy-bench over SCTP vs TCP on the loopback of the Linux test guest (the only kernel here
# with SCTP): one envoyd listening on both, the same run, interleaved rounds.
#   tools/bench/sctp-guest.sh      ROUNDS (3) x {metadata, seqread} x {1, 16 in flight} x {tcp, sctp}
# env: ROUNDS, RUN_SECONDS (4). Release builds. Prints one line per run and the median
# SCTP/TCP throughput ratio per case. Results: docs/benchmarks.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-3} RUN_SECONDS=${RUN_SECONDS:-4}
cd "$ROOT"
cargo build --release --quiet -p envoy-dom0-agent -p envoy-tools
tools/vm/build.sh
W=$(mktemp -d /tmp/envoy-sctpbench-XXXXXX)
trap 'rm -rf "$W"' EXIT
tools/vm/add-binaries.sh "$W/payload" bin target/release/envoyd target/release/envoy-bench
cat > "$W/payload/bench.sh" <<GUEST
mkdir -p /srv && mount -t tmpfs -o size=600m tmpfs /srv
envoy-bench prepare /srv/tree --meta-files 2000 --small-files 100 --big-mib 128 >/dev/null
envoyd --export /srv/tree --listen tcp:127.0.0.1:5640 --listen sctp:127.0.0.1:5641 >/tmp/e.out 2>/tmp/e.log &
sleep 1
for round in \$(seq $ROUNDS); do
  for w in metadata seqread; do
    for depth in 1 16; do
      for t in "--tcp 127.0.0.1:5640" "--sctp 127.0.0.1:5641"; do
        r=\$(envoy-bench \$t --workload \$w --depth \$depth --seconds $RUN_SECONDS --msize 524288 --json --threads 1) &&
          echo "BENCH \$round \$w \$depth \${t%% *} \$r"
      done
    done
  done
done
GUEST
tools/vm/run-vm.sh -t none -x evmods=sctp -M 1024 -T 900 -P "$W/payload" -l "$W/console.log" -- 'sh /bench.sh' || {
    tail -n 30 "$W/console.log"; exit 1; }
tr -d '\r' < "$W/console.log" | grep '^BENCH ' | python3 -c '
import json, sys, statistics
runs = {}
for line in sys.stdin:
    _, rnd, w, depth, t, js = line.split(" ", 5)
    r = json.loads(js)
    rate = r["mb_per_s"] if w == "seqread" else r["ops_per_s"]
    unit = "MB/s" if w == "seqread" else "ops/s"
    p50, p99 = r["p50_us"], r["p99_us"]
    print(f"round {rnd} {w:9} depth {depth:>2} {t[2:]:5} {rate:10.1f} {unit}  p50 {p50:.0f} us  p99 {p99:.0f} us")
    runs.setdefault((w, int(depth), unit), {}).setdefault(t[2:], []).append(rate)
print()
for (w, depth, unit), by in sorted(runs.items()):
    tcp, sctp = statistics.median(by["tcp"]), statistics.median(by["sctp"])
    print(f"== {w:9} {depth:2} in flight: tcp {tcp:9.1f} {unit}, sctp {sctp:9.1f} {unit}, sctp/tcp {sctp / tcp:.2f}")
'
