#!/usr/bin/env bash
# The Xen suite: real Xen hypervisors (under QEMU TCG), a busybox dom0 whose 9pfs backend is
# envoyd, and PV domUs whose Linux 9pfs frontend (9pnet_xen) mounts shares over Xen shared rings.
# Two configurations, one boot each, one after the other:
#   4.17  Debian bookworm: Xen 4.17, Linux 6.1, xl type=qemu devices with envoy-dm as the device
#         model and envoyd --xen started by dom0; guest 1 runs the VM suite's workload in
#         9p2000.L and 9p2000.u side by side (every check, at tests/xen/workload-sizes.env's sizes)
#   4.20  Debian trixie: Xen 4.20, Linux 6.12, xl type=xen_9pfsd devices served by the envoyd
#         libxl spawns as xen-9pfsd; guest 1 runs the same workload
# and in each, while guest 1 runs: a share hot-plugged into it and removed (envoy-xl), a second
# guest confined to its own share, dom0 frontends correct and hostile (envoy-xen-frontend), the
# second guest destroyed mid-I/O with nothing left behind while guest 1 is still served; then
# guest 1's files checked from dom0 and its destruction leaving nothing behind (dom0-init.sh,
# domu-init.sh; docs/xen-harness.md).
#
#   tests/xen/run-suite.sh              the suite (~4-5 minutes on 2 cores)
#   tests/xen/run-suite.sh --selftest   proves the suite can fail: envoyd corrupts every read
#                                       reply on purpose and a quick data check must FAIL
# env: ENVOYD, ENVOY_DM, ENVOY_XL, ENVOY_FE (default target/release/..., built if missing: a
#      debug envoyd is ~5x slower under TCG), XEN_CONFIGS (default "4.17 4.20"), XEN417_CASES
#      (default L,u), XEN420_CASES (default L,u), XEN_PAR (default 1: the cases side by side;
#      0: one after the other), XEN_EXTRAS (default 1; 0: the cases only), ENVOY_XEN_OUT
#      (images), ENVOY_XEN_KEEP=1 (keep the logs)
# Prints one PASS/FAIL line per check (CONFIG/WHO/name) and a summary; exits non-zero on any
# failure, a missing check included.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SELFTEST=0
[ "${1:-}" = --selftest ] && SELFTEST=1
CONFIGS=${XEN_CONFIGS:-4.17 4.20}
PAR=${XEN_PAR:-1}
EXTRAS=${XEN_EXTRAS:-1}
T_START=$SECONDS

R=$ROOT/target/release
if [ -z "${ENVOYD:-}" ] || [ -z "${ENVOY_DM:-}" ] || [ -z "${ENVOY_XL:-}" ] || [ -z "${ENVOY_FE:-}" ]; then
    if [ ! -x "$R/envoyd" ] || [ ! -x "$R/envoy-dm" ] || [ ! -x "$R/envoy-xl" ] || [ ! -x "$R/envoy-xen-frontend" ]; then
        (cd "$ROOT" && cargo build --release -p envoy-dom0-agent -p envoy-tools) || exit 3
    fi
fi
export ENVOYD=${ENVOYD:-$R/envoyd} ENVOY_DM=${ENVOY_DM:-$R/envoy-dm}
export ENVOY_XL=${ENVOY_XL:-$R/envoy-xl} ENVOY_FE=${ENVOY_FE:-$R/envoy-xen-frontend}
W=$(mktemp -d /tmp/envoy-xensuite-XXXXXX)
keep=${ENVOY_XEN_KEEP:-0}
trap '[ "$keep" = 1 ] && echo "run-suite: logs kept in $W" || rm -rf "$W"' EXIT

# What each run must report. dom0's checks by name; the guests' extras by name; workload cases
# by count (mount, the workload's checks, umount), each with the files dom0 must see.
DOM0_COMMON="envoyd_starts xl_create domu_result xl_destroy xl_destroy_no_timeout domain_gone backend_nodes_removed
    backend_nodes_stay_removed envoyd_unmapped_grants envoyd_unbound_event_channels envoyd_alive
    envoyd_no_panic"
DOM0_417="envoy_dm_running device_model_nodes_removed envoy_dm_exited"
DOM0_420="xen_9pfsd_spawned xen_9pfsd_single"
DOM0_EXTRAS="hot_attach hot_detach hot_nodes_removed hot_released peer_xl_create peer_ready
    isolation_guest1_file_unchanged isolation_nothing_outside_share2 fe_good fe_bad_order
    fe_bogus_ref fe_bad_indexes fe_oversize fe_envoyd_alive fe_nodes_removed fe_released
    peer_served_after_hostile peer_xl_destroy peer_xl_destroy_no_timeout peer_domain_gone peer_backend_nodes_removed
    peer_released envoyd_alive_after_peer_destroy isolation_guest1_file_unchanged_at_end"
DOM0_EXTRAS_417="peer_device_model_nodes_removed"
GUEST_EXTRAS="H/hot_device H/hot_mount H/hot_read_dom0_file H/hot_write_read H/hot_umount
    H/hot_device_removed H/dom0_sees_hot.bin F/isolation_from_guest2 F/served_after_peer_destroy F/umount
    F/dom0_sees_after-peer.txt F/dom0_sees_guest1-secret.txt P/other_tags_refused P/aname_confined
    P/mount P/one_device P/own_share P/dotdot_confined P/symlinks_confined P/served_after_hostile
    P/dom0_sees_g2-file.txt domU2/xenbus_9pfs-0"
# Checks per case: mount + the workload's 14 + umount + dom0's view of the 3 files
# the workload names; the self-test's case: mount, quick_data, umount and 1 file.
case_checks() { case $1 in L|u) echo 19 ;; S) echo 4 ;; *) echo 1 ;; esac; }

# checks LOG: one "PASS who/name (detail)" or "FAIL who/name: detail" line per check in the log.
checks() {
    local s=$W/serial.txt
    tr -d '\r' < "$1" > "$s"
    # dom0's own checks.
    sed -n 's/^ENVOY-CHECK: \(PASS\|FAIL\) \(.*\)$/\1 dom0\/\2/p' "$s"
    # The guests' frontends must have reached Connected.
    sed -n 's/^\(domU2\?\)| ENVOY-XENBUS: \([^ ]*\) .*state=\(.*\)$/\1 \2 \3/p' "$s" | while read -r g dev st; do
        if [ "$st" = Connected ]; then echo "PASS $g/xenbus_$dev (Connected)"; else echo "FAIL $g/xenbus_$dev: state $st"; fi
    done
    # The guests' checks, per case.
    sed -n 's/^domU2\?| \[\([A-Za-z]*\)\] ENVOY-CHECK: \(PASS\|FAIL\) \(.*\)$/\2 \1\/\3/p' "$s"
    # What the guests wrote, as dom0 reads it from the shares.
    sed -n 's/^domU2\?| \[\([A-Za-z]*\)\] ENVOY-HOST: md5 \([^ ]*\) \([0-9a-f]*\)$/\1 \2 \3/p' "$s" | while read -r c path want; do
        local have
        have=$(sed -n "s/^ENVOY-DOM0-MD5: $c ${path//./\\.} \([0-9a-f]*\)$/\1/p" "$s" | head -n 1)
        if [ "$have" = "$want" ]; then echo "PASS $c/dom0_sees_$path"
        else echo "FAIL $c/dom0_sees_$path: dom0 has ${have:-nothing}, the guest wrote $want"; fi
    done
}

# run NAME XENVER CASES EXTRAS [ENVOYD OPTIONS]: one boot; writes $W/NAME.{log,checks,verdict,summary}.
run() {
    local name=$1 xv=$2 cases=$3 extras=$4 eopts=${5:-}
    local t0=$SECONDS
    "$ROOT/tests/xen/build-images.sh" "$xv" 2>"$W/$name.build" || { cat "$W/$name.build"; echo "run-suite: image build for Xen $xv failed" >&2; exit 3; }
    "$ROOT/tests/xen/run-qemu.sh" -x "$xv" -l "$W/$name.log" -c "$cases" -p "$PAR" -E "$extras" \
        ${eopts:+-e "$eopts"} 2>"$W/$name.run"
    local rc=$?
    checks "$W/$name.log" > "$W/$name.raw"
    # Every check expected and not reported is a failure too.
    local want="$DOM0_COMMON" n c
    [ "$xv" = 4.17 ] && want="$want $DOM0_417" || want="$want $DOM0_420"
    [ "$extras" = 1 ] && want="$want $DOM0_EXTRAS"
    [ "$extras" = 1 ] && [ "$xv" = 4.17 ] && want="$want $DOM0_EXTRAS_417"
    want=$(for n in $want; do echo "dom0/$n"; done)
    [ "$extras" = 1 ] && want="$want $GUEST_EXTRAS"
    want="$want domU/xenbus_9pfs-0 domU/xenbus_9pfs-1"
    {
        cat "$W/$name.raw"
        for n in $want; do
            grep -q "^\(PASS\|FAIL\) ${n//./\\.}\( \|:\|$\)" "$W/$name.raw" || echo "FAIL $n: not reported"
        done
        for c in ${cases//,/ }; do
            n=$(grep -c "^\(PASS\|FAIL\) $c/" "$W/$name.raw")
            [ "$n" -ge "$(case_checks "$c")" ] || echo "FAIL $c/all_checks: $n of $(case_checks "$c") reported"
        done
    } | sed "s#^\(PASS\|FAIL\) #\1 $xv/#" > "$W/$name.checks"
    local passed failed verdict=PASS
    passed=$(grep -c '^PASS' "$W/$name.checks"); failed=$(grep -c '^FAIL' "$W/$name.checks")
    if [ "$rc" != 0 ] || [ "$failed" != 0 ]; then verdict=FAIL; fi
    echo "$verdict" > "$W/$name.verdict"
    printf '%-10s Xen %s, cases %s, extras %s: %s  %d passed, %d failed  (%ds wall, run-qemu rc=%s)\n' \
        "$name" "$xv" "$cases" "$extras" "$verdict" "$passed" "$failed" $((SECONDS - t0)) "$rc" > "$W/$name.summary"
}

report() { # NAME [MAX_LINES]: the checks, and the serial log's end when it failed
    local name=$1
    cat "$W/$name.summary"
    sed 's/^/    /' "$W/$name.checks"
    if [ "$(cat "$W/$name.verdict")" != PASS ]; then
        echo "    ----- run-qemu ($name) -----"; sed 's/^/    | /' "$W/$name.run" | tail -n 10
        echo "    ----- serial console, without Xen's and dom0's kernel lines ($name) -----"
        tr -d '\r' < "$W/$name.log" | grep -av '^(XEN)\|^\[ *[0-9]' | sed 's/^/    | /' | tail -n "${2:-200}"
    fi
}

if [ "$SELFTEST" = 1 ]; then
    echo "run-suite: self-test: envoyd in dom0 corrupts every read reply; the suite must report FAIL"
    run selftest 4.17 S 0 --debug-corrupt-reads
    report selftest 40
    if [ "$(cat "$W/selftest.verdict")" = FAIL ] && grep -q '^FAIL 4.17/S/quick_data' "$W/selftest.checks" \
        && grep -q '^PASS 4.17/dom0/xl_create' "$W/selftest.checks"; then
        echo "SELFTEST PASS: corrupted reads over Xen rings were reported as FAIL ($((SECONDS - T_START))s wall)"
        exit 0
    fi
    echo "SELFTEST FAIL: the suite did not notice corrupted reads"
    keep=1
    exit 1
fi

all=PASS
for xv in $CONFIGS; do
    case $xv in
        4.17) cases=${XEN417_CASES:-L,u} ;;
        4.20) cases=${XEN420_CASES:-L,u} ;;
        *) echo "run-suite: unknown configuration $xv (4.17 or 4.20)" >&2; exit 3 ;;
    esac
    run "xen-$xv" "$xv" "$cases" "$EXTRAS"
    report "xen-$xv"
    [ "$(cat "$W/xen-$xv.verdict")" = PASS ] || all=FAIL
done
echo "run-suite: summary"
for xv in $CONFIGS; do sed 's/^/    /' "$W/xen-$xv.summary"; done
echo "run-suite: Xen suite wall time $((SECONDS - T_START))s (configurations: $CONFIGS)"
if [ "$all" = PASS ]; then
    echo "run-suite: Xen suite ALL PASS"
    exit 0
fi
keep=1
echo "run-suite: Xen suite FAILURES"
exit 1
