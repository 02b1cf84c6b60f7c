#!/usr/bin/env bash
# The Xen suite: the real Xen 4.17 hypervisor (under QEMU TCG), a busybox dom0 running
# `envoyd --xen`, and a PV domU whose Linux 9pfs frontend (9pnet_xen) mounts two shares over
# Xen shared rings and runs the VM suite's workload on each (9p2000.L on one, 9p2000.u on the
# other, side by side); dom0 checksums what the guest wrote, destroys it, and checks that
# nothing of its devices is left (see dom0-init.sh, domu-init.sh).
#
#   tests/xen/run-suite.sh              the suite (~5 minutes on 2 cores)
#   tests/xen/run-suite.sh --selftest   proves the suite can fail: envoyd corrupts every read
#                                       reply on purpose and a quick data check must FAIL
# env: ENVOYD, ENVOY_DM (default target/release/{envoyd,envoy-dm}, built if missing: a debug
#      envoyd is ~5x slower under TCG), XEN_CASES (default L,u), XEN_PAR (default 1: the cases
#      side by side, both devices busy at once; 0: one after the other), ENVOY_XEN_OUT
#      (images), ENVOY_XEN_KEEP=1 (keep the logs)
# Prints one PASS/FAIL line per check and a summary; exits non-zero on any failure.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SELFTEST=0
[ "${1:-}" = --selftest ] && SELFTEST=1
CASES=${XEN_CASES:-L,u}
PAR=${XEN_PAR:-1}
# Checks per case: mount + the workload's 14 + umount, then dom0's view of the 3 files the
# workload asks about; the self-test's case: mount, quick_data, umount and 1 file.
WORKLOAD_CHECKS=19 QUICK_CHECKS=4
DOM0_CHECKS=14

if [ -z "${ENVOYD:-}" ] || [ -z "${ENVOY_DM:-}" ]; then
    if [ ! -x "$ROOT/target/release/envoyd" ] || [ ! -x "$ROOT/target/release/envoy-dm" ]; then
        (cd "$ROOT" && cargo build --release -p envoy-dom0-agent) || exit 3
    fi
fi
export ENVOYD=${ENVOYD:-$ROOT/target/release/envoyd}
export ENVOY_DM=${ENVOY_DM:-$ROOT/target/release/envoy-dm}
"$ROOT/tests/xen/build-images.sh" || exit 3
W=$(mktemp -d /tmp/envoy-xensuite-XXXXXX)
keep=${ENVOY_XEN_KEEP:-0}
trap '[ "$keep" = 1 ] && echo "run-suite: logs kept in $W" || rm -rf "$W"' EXIT

# checks LOG: one "PASS name" or "FAIL name: detail" line per check found in the serial log.
checks() {
    local log=$1
    tr -d '\r' < "$log" > "$W/serial.txt"
    # dom0's own checks.
    sed -n 's/^ENVOY-CHECK: \(PASS\|FAIL\) \(.*\)$/\1 dom0\/\2/p' "$W/serial.txt"
    # The guest's frontends must have reached Connected.
    sed -n 's/^domU| ENVOY-XENBUS: \([^ ]*\) .*state=\(.*\)$/\1 \2/p' "$W/serial.txt" | while read -r dev st; do
        if [ "$st" = Connected ]; then echo "PASS domU/xenbus_$dev (Connected)"; else echo "FAIL domU/xenbus_$dev: state $st"; fi
    done
    # The guest's checks, per case.
    sed -n 's/^domU| \[\(.\)\] ENVOY-CHECK: \(PASS\|FAIL\) \(.*\)$/\2 \1\/\3/p' "$W/serial.txt"
    # What the guest wrote, as dom0 reads it from the share.
    sed -n 's/^domU| \[\(.\)\] ENVOY-HOST: md5 \([^ ]*\) \([0-9a-f]*\)$/\1 \2 \3/p' "$W/serial.txt" | while read -r c path want; do
        local have
        have=$(sed -n "s/^ENVOY-DOM0-MD5: $c ${path//./\\.} \([0-9a-f]*\)$/\1/p" "$W/serial.txt" | head -n 1)
        if [ "$have" = "$want" ]; then echo "PASS $c/dom0_sees_$path"
        else echo "FAIL $c/dom0_sees_$path: dom0 has ${have:-nothing}, the guest wrote $want"; fi
    done
}

# run NAME CASES [ENVOYD OPTIONS]: one boot; writes $W/NAME.{log,checks,verdict,summary}.
run() {
    local name=$1 cases=$2 eopts=${3:-}
    local t0=$SECONDS
    "$ROOT/tests/xen/run-qemu.sh" -l "$W/$name.log" -c "$cases" -p "$PAR" ${eopts:+-e "$eopts"} 2>"$W/$name.run"
    local rc=$?
    checks "$W/$name.log" > "$W/$name.checks"
    local expected=$DOM0_CHECKS c
    for c in ${cases//,/ }; do
        case $c in S) expected=$((expected + QUICK_CHECKS)) ;; *) expected=$((expected + WORKLOAD_CHECKS)) ;; esac
    done
    # The guest's frontends: one per share.
    expected=$((expected + 2))
    local passed failed total verdict=PASS
    passed=$(grep -c '^PASS' "$W/$name.checks"); failed=$(grep -c '^FAIL' "$W/$name.checks")
    total=$((passed + failed))
    if [ "$rc" != 0 ] || [ "$failed" != 0 ] || [ "$total" -lt "$expected" ]; then verdict=FAIL; fi
    echo "$verdict" > "$W/$name.verdict"
    printf '%-10s %s  %d passed, %d failed, %d of %d checks reported  (%ds wall, run-qemu rc=%s)\n' \
        "$name" "$verdict" "$passed" "$failed" "$total" "$expected" $((SECONDS - t0)) "$rc" > "$W/$name.summary"
}

report() { # NAME [MAX_LINES]: the checks, and the serial log's end when it failed
    local name=$1
    cat "$W/$name.summary"
    sed 's/^/    /' "$W/$name.checks"
    if [ "$(cat "$W/$name.verdict")" != PASS ]; then
        echo "    ----- run-qemu ($name) -----"; sed 's/^/    | /' "$W/$name.run" | tail -n 10
        echo "    ----- serial console, without Xen's and dom0's kernel lines ($name) -----"
        tr -d '\r' < "$W/$name.log" | grep -av '^(XEN)\|^\[ *[0-9]' | sed 's/^/    | /' | tail -n "${2:-150}"
    fi
}

if [ "$SELFTEST" = 1 ]; then
    echo "run-suite: self-test: envoyd in dom0 corrupts every read reply; the suite must report FAIL"
    run selftest S --debug-corrupt-reads
    report selftest 40
    if [ "$(cat "$W/selftest.verdict")" = FAIL ] && grep -q '^FAIL S/quick_data' "$W/selftest.checks" \
        && grep -q '^PASS dom0/xl_create' "$W/selftest.checks"; then
        echo "SELFTEST PASS: corrupted reads over Xen rings were reported as FAIL"
        exit 0
    fi
    echo "SELFTEST FAIL: the suite did not notice corrupted reads"
    keep=1
    exit 1
fi

run xen "$CASES"
report xen
if [ "$(cat "$W/xen.verdict")" = PASS ]; then
    echo "run-suite: Xen suite ALL PASS"
    exit 0
fi
keep=1
echo "run-suite: Xen suite FAILURES"
exit 1
