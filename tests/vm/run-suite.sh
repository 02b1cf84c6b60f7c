#!/usr/bin/env bash
# The Linux-guest suite: the kernel's own v9fs client, in a QEMU guest, against envoyd.
#
#   tests/vm/run-suite.sh              the matrix: trans=tcp and trans=fd x 9p2000.u and 9p2000.L,
#                                      msize 512 KiB (tcp also 1 MiB); two VMs at a time
#   tests/vm/run-suite.sh --selftest   proves the suite can fail: envoyd corrupts read data on
#                                      purpose and the suite must report FAIL
# env: ENVOYD (default target/debug/envoyd), VM_JOBS (default 2), VM_CASES (filter, e.g. "tcp-L-512k")
# Each case gets its own export (with a host-made 5,000-entry directory) and its own envoyd.
# The guest prints one line per check; the host then verifies the files the guest asked for
# (ENVOY-HOST lines) in the export. On any failure the guest console and envoyd log are printed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ENVOYD=${ENVOYD:-$ROOT/target/debug/envoyd}
JOBS=${VM_JOBS:-2}
SELFTEST=0
[ "${1:-}" = --selftest ] && SELFTEST=1
EXPECTED_CHECKS=14

[ -x "$ENVOYD" ] || { echo "run-suite: build envoyd first ($ENVOYD)" >&2; exit 3; }
"$ROOT/tools/vm/build.sh" || exit 3
W=$(mktemp -d /tmp/envoy-vmsuite-XXXXXX)
cleanup() { pkill -f "envoyd --export $W/" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

mkdir -p "$W/payload/bin"
gcc -static -O2 -Wall -o "$W/payload/bin/mmapcat" "$ROOT/tests/vm/mmapcat.c" || exit 3
install -m 0755 "$ROOT/tests/vm/workload.sh" "$W/payload/workload.sh"

# run_case NAME MODE VERSION MSIZE [ENVOYD ARGS...]: writes $W/NAME/verdict (PASS or FAIL).
run_case() {
    local name=$1 mode=$2 ver=$3 msize=$4; shift 4
    local d=$W/$name
    mkdir -p "$d/export/big5000"
    (cd "$d/export/big5000" && for i in $(seq -w 0 4999); do : > "entry-$i-with-a-longer-name"; done)
    (cd "$d/export" && ls big5000 | LC_ALL=C sort | sed 's|^|big5000/|' | md5sum | cut -d' ' -f1) > "$d/export/big5000.expected"
    local listen target
    if [ "$mode" = tcp ]; then listen=tcp:127.0.0.1:0; else listen=unix:$d/envoy.sock; fi
    "$ENVOYD" --export "$d/export/" --listen "$listen" "$@" >"$d/envoyd.out" 2>"$d/envoyd.log" &
    local pid=$!
    for _ in $(seq 100); do grep -q '^envoyd: serving' "$d/envoyd.out" 2>/dev/null && break; sleep 0.05; done
    if [ "$mode" = tcp ]; then
        local port
        port=$(sed -n 's/^envoyd: serving .* on tcp:127\.0\.0\.1:\([0-9]*\)$/\1/p' "$d/envoyd.out")
        target=(-p "$port")
    else
        target=(-u "$d/envoy.sock")
    fi
    local start=$SECONDS
    "$ROOT/tools/vm/run-vm.sh" -t "$mode" -v "$ver" -s "$msize" "${target[@]}" -P "$W/payload" \
        -l "$d/console.log" -T 240 -- 'sh /workload.sh' 2>"$d/run-vm.log"
    local vmrc=$?
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    {
        tr -d '\r' < "$d/console.log" | grep -a '^ENVOY-CHECK: ' | sed 's/^ENVOY-CHECK: //'
        tr -d '\r' < "$d/console.log" | grep -a '^ENVOY-HOST: md5 ' | while read -r _ _ path hash; do
            local have
            have=$(md5sum "$d/export/$path" 2>/dev/null | cut -d' ' -f1)
            if [ "$have" = "$hash" ]; then echo "PASS host_sees_$path"; else echo "FAIL host_sees_$path: host has ${have:-nothing}, guest wrote $hash"; fi
        done
    } > "$d/checks"
    local passed failed
    passed=$(grep -c '^PASS' "$d/checks"); failed=$(grep -c '^FAIL' "$d/checks")
    local verdict=PASS
    if [ "$vmrc" != 0 ] || [ "$failed" != 0 ] || [ "$(grep -c '^PASS\|^FAIL' "$d/checks")" -lt $((EXPECTED_CHECKS + 3)) ]; then
        verdict=FAIL
    fi
    echo "$verdict" > "$d/verdict"
    printf '%-22s %s  %2d passed, %d failed  (%ds, vm rc=%s)\n' "$name" "$verdict" "$passed" "$failed" $((SECONDS - start)) "$vmrc" > "$d/summary"
}

report() { # NAME: the case's checks, and its logs when it failed
    local d=$W/$1
    cat "$d/summary"
    sed 's/^/    /' "$d/checks"
    if [ "$(cat "$d/verdict")" != PASS ]; then
        echo "    ----- guest console ($1) -----"; sed 's/^/    | /' "$d/console.log" | tail -n 80
        echo "    ----- run-vm ($1) -----"; sed 's/^/    | /' "$d/run-vm.log" | tail -n 20
        echo "    ----- envoyd log ($1) -----"; sed 's/^/    | /' "$d/envoyd.log" | tail -n 40
    fi
}

if [ "$SELFTEST" = 1 ]; then
    echo "run-suite: self-test: envoyd corrupts every read reply; the suite must report FAIL"
    run_case selftest-tcp-L tcp 9p2000.L 524288 --debug-corrupt-reads
    report selftest-tcp-L | head -n 25
    if [ "$(cat "$W/selftest-tcp-L/verdict")" = FAIL ] && grep -q '^FAIL big_file' "$W/selftest-tcp-L/checks"; then
        echo "SELFTEST PASS: corrupted reads were reported as FAIL"
        exit 0
    fi
    echo "SELFTEST FAIL: the suite did not notice corrupted reads"
    exit 1
fi

CASES=("tcp-u-512k tcp 9p2000.u 524288" "tcp-L-512k tcp 9p2000.L 524288"
       "fd-u-512k fd 9p2000.u 524288" "fd-L-512k fd 9p2000.L 524288"
       "tcp-u-1m tcp 9p2000.u 1048576" "tcp-L-1m tcp 9p2000.L 1048576")
names=()
t0=$SECONDS
for c in "${CASES[@]}"; do
    set -- $c
    [ -n "${VM_CASES:-}" ] && [[ " $VM_CASES " != *" $1 "* ]] && continue
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    run_case "$@" &
    names+=("$1")
done
wait
status=0
for n in "${names[@]}"; do
    report "$n"
    [ "$(cat "$W/$n/verdict" 2>/dev/null)" = PASS ] || status=1
done
echo "run-suite: ${#names[@]} cases in $((SECONDS - t0))s: $([ $status = 0 ] && echo 'ALL PASS' || echo 'FAILURES')"
exit $status
