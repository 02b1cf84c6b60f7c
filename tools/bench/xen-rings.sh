#!/usr/bin/env bash
# Many requests in flight per Xen ring vs one (QEMU's / xen-9pfsd's way), same server, same run.
#   tools/bench/xen-rings.sh            ROUNDS (3) x {2 rings, 1 ring} x {0, 1000 us read delay}
# envoyd's server runs inside envoy-bench behind simulated 9pfs rings (order 9) with a model of
# Linux's frontend; 64 KiB random reads of a page-cached 256 MiB file, 8 requests in flight.
# Prints one line per run and the median throughput ratio (8 in flight / one per ring) per case.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${RUN_SECONDS:-3}
cargo build --release --quiet -p envoy-tools --bin envoy-bench
bench=target/release/envoy-bench
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
"$bench" prepare "$tree" --meta-files 10 --small-files 10 --big-mib 256 >/dev/null
cat "$tree/big" >/dev/null
run() { # rings delay_us [--one-request-per-ring] -> ops/s
    local rings=$1 delay=$2; shift 2
    local extra=()
    [ "$delay" -gt 0 ] && extra+=(--read-delay-us "$delay")
    "$bench" --xen-sim "$tree" --rings "$rings" "${extra[@]}" "$@" --workload randread \
        --block 65536 --depth 8 --seconds "$SECONDS_PER_RUN" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["ops_per_s"])'
}
for delay in 0 1000; do
    for rings in 2 1; do
        ratios=()
        for round in $(seq "$ROUNDS"); do
            many=$(run "$rings" "$delay")
            one=$(run "$rings" "$delay" --one-request-per-ring)
            ratio=$(python3 -c "print(f'{$many / $one:.2f}')")
            ratios+=("$ratio")
            printf 'delay %4s us  rings %s  round %s  8 in flight %8.0f ops/s  one per ring %8.0f ops/s  ratio %s\n' \
                "$delay" "$rings" "$round" "$many" "$one" "$ratio"
        done
        median=$(printf '%s\n' "${ratios[@]}" | sort -n | python3 -c 'import sys; v=[float(x) for x in sys.stdin]; print(f"{v[len(v)//2]:.2f}")')
        printf '== delay %s us, %s ring(s): median ratio %s (ceiling %s)\n' "$delay" "$rings" "$median" $((8 / rings))
    done
done
