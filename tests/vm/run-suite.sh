#!/usr/bin/env bash
# The Linux-guest suite: the kernel's own v9fs client, in a QEMU guest, against envoyd.
#
#   tests/vm/run-suite.sh              the matrix: trans=tcp and trans=fd x 9p2000.u and 9p2000.L,
#                                      msize 512 KiB (tcp also 1 MiB); the same workload over
#                                      trans=tcp on an Envoy image (.L and .u: envoyd --image, the
#                                      image seeded through 9P, checked after a restart of envoyd);
#                                      the 2006 namespace from the guest's shell (envoyd --images:
#                                      ln -s snapshots and forks, EROFS, EPERM, ENOENT);
#                                      and the SCTP cases, run
#                                      inside the guest because its kernel has SCTP and the hosts'
#                                      does not (tests/vm/sctp-guest.sh: envoy-mount over loopback
#                                      in .L and .u, a multi-homed association losing a path
#                                      mid-workload, the Rust SCTP and protocol suites over SCTP);
#                                      two VMs at a time
#   tests/vm/run-suite.sh --selftest   proves the suite can fail: envoyd corrupts read data on
#                                      purpose and the suite must report FAIL
# env: ENVOYD (default target/debug/envoyd; envoy-mount is taken from beside it), VM_JOBS
#      (default 2), VM_CASES (filter, e.g. "tcp-L-512k sctp-rust")
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
ENVOY_MOUNT=$(dirname "$ENVOYD")/envoy-mount
ENVOY_9P=$(dirname "$ENVOYD")/envoy-9p
ENVOY_XL=$(dirname "$ENVOYD")/envoy-xl
"$ROOT/tools/vm/build.sh" || exit 3
W=$(mktemp -d /tmp/envoy-vmsuite-XXXXXX)
cleanup() { pkill -f "envoyd --export $W/" 2>/dev/null; pkill -f "envoyd --host vm --data-dir $W/" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

mkdir -p "$W/payload/bin"
gcc -static -O2 -Wall -o "$W/payload/bin/mmapcat" "$ROOT/tests/vm/mmapcat.c" || exit 3
install -m 0755 "$ROOT/tests/vm/workload.sh" "$W/payload/workload.sh"
install -m 0755 "$ROOT/tests/vm/namespace.sh" "$W/payload/namespace.sh"

# start_envoyd DIR LISTEN ARGS...: envoyd serving with ARGS (and any extra ones) on LISTEN, its
# output in DIR; sets PID and PORT (for tcp).
start_envoyd() {
    local d=$1 listen=$2; shift 2
    "$ENVOYD" "$@" --listen "$listen" >"$d/envoyd.out" 2>>"$d/envoyd.log" &
    PID=$!
    for _ in $(seq 200); do grep -q '^envoyd: serving' "$d/envoyd.out" 2>/dev/null && break; sleep 0.05; done
    PORT=$(sed -n 's/^envoyd: serving .* on tcp:127\.0\.0\.1:\([0-9]*\)$/\1/p' "$d/envoyd.out")
}

# run_case NAME MODE VERSION MSIZE [ENVOYD ARGS...]: writes $W/NAME/verdict (PASS or FAIL).
# MODE: tcp or fd to an envoyd exporting a directory, or image: tcp to an envoyd serving an
# Envoy image, seeded with the same files through 9P (envoy-9p import) and read back after
# envoyd restarts.
run_case() {
    local name=$1 mode=$2 ver=$3 msize=$4; shift 4
    local d=$W/$name trans=$mode serve listen target
    "$ROOT/tests/vm/bigdir.sh" "$d/export" 5000
    if [ "$mode" = image ]; then
        trans=tcp
        serve=(--host vm --data-dir "$d/data" --storage "unix:$d/storage.sock" --image vm "$@")
    else
        serve=(--export "$d/export/" "$@")
    fi
    if [ "$trans" = tcp ]; then listen=tcp:127.0.0.1:0; else listen=unix:$d/envoy.sock; fi
    start_envoyd "$d" "$listen" "${serve[@]}"
    if [ "$trans" = tcp ]; then target=(-p "$PORT"); else target=(-u "$d/envoy.sock"); fi
    local start=$SECONDS seeded=PASS
    if [ "$mode" = image ]; then
        "$ENVOY_9P" --tcp "127.0.0.1:$PORT" --uid 0 import "$d/export" / >"$d/import.log" 2>&1 || seeded=FAIL
    fi
    "$ROOT/tools/vm/run-vm.sh" -t "$trans" -v "$ver" -s "$msize" "${target[@]}" -P "$W/payload" \
        -l "$d/console.log" -T 240 -- 'sh /workload.sh' 2>"$d/run-vm.log"
    local vmrc=$?
    kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null
    # The host's view: the export directory, or the image served by a restarted envoyd.
    host_md5() { md5sum "$d/export/$1" 2>/dev/null | cut -d' ' -f1; }
    if [ "$mode" = image ]; then
        start_envoyd "$d" tcp:127.0.0.1:0 "${serve[@]}"
        host_md5() { "$ENVOY_9P" --tcp "127.0.0.1:$PORT" --uid 0 cat "$1" 2>/dev/null | md5sum | cut -d' ' -f1; }
    fi
    {
        [ "$mode" = image ] && echo "$seeded image_seeded_through_9p"
        tr -d '\r' < "$d/console.log" | grep -a '^ENVOY-CHECK: ' | sed 's/^ENVOY-CHECK: //'
        tr -d '\r' < "$d/console.log" | grep -a '^ENVOY-HOST: md5 ' | while read -r _ _ path hash; do
            local have
            have=$(host_md5 "$path")
            if [ "$have" = "$hash" ]; then echo "PASS host_sees_$path"; else echo "FAIL host_sees_$path: host has ${have:-nothing}, guest wrote $hash"; fi
        done
    } > "$d/checks"
    if [ "$mode" = image ]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; fi
    verdict "$d" "$name" "$vmrc" $((EXPECTED_CHECKS + 3)) "$start"
}

# run_namespace_case NAME VERSION: the 2006 interface from the guest's shell (tests/vm/namespace.sh)
# on an envoyd serving every image (--images) over trans=tcp; the host creates image vm1 first
# (envoy-xl image create) and afterwards checks the catalog and the fork through envoyd.
run_namespace_case() {
    local name=$1 ver=$2 d=$W/$1
    mkdir -p "$d"
    local serve=(--host vm --data-dir "$d/data" --storage "unix:$d/storage.sock" --images)
    start_envoyd "$d" tcp:127.0.0.1:0 "${serve[@]}"
    local start=$SECONDS created=PASS
    "$ENVOY_XL" image create vm1 --socket "$d/data/images.sock" >"$d/xl.log" 2>&1 || created=FAIL
    "$ROOT/tools/vm/run-vm.sh" -t tcp -v "$ver" -p "$PORT" -P "$W/payload" \
        -l "$d/console.log" -T 240 -- 'sh /namespace.sh' 2>"$d/run-vm.log"
    local vmrc=$?
    {
        echo "$created host_created_vm1"
        tr -d '\r' < "$d/console.log" | grep -a '^ENVOY-CHECK: ' | sed 's/^ENVOY-CHECK: //'
        local list
        list=$("$ENVOY_XL" image list --json --socket "$d/data/images.sock" 2>&1)
        if python3 -c 'import json,sys; l={i["name"]: i["snapshots"] for i in json.loads(sys.argv[1])["images"]}; sys.exit(0 if l.get("vm1") == [1, 2] and "vm2" in l else 1)' "$list"; then
            echo "PASS host_catalog_has_vm1_snapshots_1_2_and_vm2"
        else
            echo "FAIL host_catalog_has_vm1_snapshots_1_2_and_vm2: $list"
        fi
        if [ "$("$ENVOY_9P" --tcp "127.0.0.1:$PORT" --uid 0 --aname vm2 cat a 2>&1)" = fork ]; then
            echo "PASS host_reads_the_fork"
        else
            echo "FAIL host_reads_the_fork"
        fi
    } > "$d/checks"
    kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null
    verdict "$d" "$name" "$vmrc" 10 "$start"
}

# verdict DIR NAME VMRC MIN_CHECKS START: PASS when the VM passed, no check failed and at least
# MIN_CHECKS checks ran; writes DIR/verdict and DIR/summary.
verdict() {
    local d=$1 name=$2 vmrc=$3 min=$4 start=$5 passed failed v=PASS
    passed=$(grep -c '^PASS' "$d/checks"); failed=$(grep -c '^FAIL' "$d/checks")
    if [ "$vmrc" != 0 ] || [ "$failed" != 0 ] || [ $((passed + failed)) -lt "$min" ]; then v=FAIL; fi
    echo "$v" > "$d/verdict"
    printf '%-22s %s  %2d passed, %d failed  (%ds, vm rc=%s)\n' "$name" "$v" "$passed" "$failed" $((SECONDS - start)) "$vmrc" > "$d/summary"
}

# The SCTP cases' payload: envoyd, envoy-mount, the Rust test binaries and iproute2's ip (for
# the network namespace and veth pairs), with the shared libraries they load, and the scripts.
sctp_payload() {
    local p=$W/sctp-payload
    mkdir -p "$p/bin" "$p/tests"
    cp "$W/payload/bin/mmapcat" "$p/bin/"
    install -m 0755 "$ROOT/tests/vm/workload.sh" "$ROOT/tests/vm/sctp-guest.sh" "$ROOT/tests/vm/bigdir.sh" "$p/"
    cp "$ROOT/tests/xen/workload-sizes.env" "$p/"
    local add=$ROOT/tools/vm/add-binaries.sh
    "$add" "$p" bin "$ENVOYD" "$ENVOY_MOUNT" || return 1
    # Not in PATH: busybox sh runs its own ip applet for a bare "ip" (sctp-guest.sh gives the path).
    "$add" "$p" opt/iproute2 "$(command -v ip)" || return 1
    # The test binaries cargo built (cargo test builds them; this only lists them).
    local tests
    tests=$(cd "$ROOT" && cargo test -q -p envoy-tests --test sctp --test dotl --test dotu --test inflight --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["executable"])')
    # shellcheck disable=SC2086 # one path per word
    "$add" "$p" tests $tests || return 1
    # Named after the test target (sctp, dotl, ...), not cargo's hashed file name.
    for t in "$p"/tests/*-*; do mv "$t" "${t%-*}"; done
    [ "$(ls "$p/tests" | wc -l)" = 4 ] || { echo "run-suite: SCTP test binaries missing: $(ls "$p/tests")" >&2; return 1; }
}

# run_sctp_case NAME KIND VERSION MIN_CHECKS: tests/vm/sctp-guest.sh KIND VERSION in a guest.
run_sctp_case() {
    local name=$1 kind=$2 ver=$3 min=$4 d=$W/$1 start=$SECONDS
    mkdir -p "$d"
    "$ROOT/tools/vm/run-vm.sh" -t none -x "evmods=sctp,veth" -M 1024 -P "$W/sctp-payload" \
        -l "$d/console.log" -T 420 -- "sh /sctp-guest.sh $kind $ver" 2>"$d/run-vm.log"
    local vmrc=$?
    tr -d '\r' < "$d/console.log" | grep -a '^ENVOY-CHECK: ' | sed 's/^ENVOY-CHECK: //' > "$d/checks"
    tr -d '\r' < "$d/console.log" | grep -aq '^ENVOY-SCTP-DONE' || echo "FAIL sctp-guest.sh did not finish" >> "$d/checks"
    # envoyd ran in the guest; sctp-guest.sh prints its log's tail.
    tr -d '\r' < "$d/console.log" | sed -n 's/^envoyd| //p' > "$d/envoyd.log"
    verdict "$d" "$name" "$vmrc" "$min" "$start"
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

# The SCTP cases first (the longest), then the host-envoyd matrix. SCTP minimum checks: the
# workload's 14 + 3 export files + listen, mount, umount; + 3 for multi-homing; the Rust case's
# tests (sctp 6, dotl 16 without xattrs, dotu 6, inflight 4).
CASES=("sctp-rust sctp rust - 32" "sctp-multihome-L sctp multihome 9p2000.L 23"
       "sctp-loop-L sctp loop 9p2000.L 20" "sctp-loop-u sctp loop 9p2000.u 20"
       "tcp-u-512k tcp 9p2000.u 524288" "tcp-L-512k tcp 9p2000.L 524288"
       "fd-u-512k fd 9p2000.u 524288" "fd-L-512k fd 9p2000.L 524288"
       "tcp-u-1m tcp 9p2000.u 1048576" "tcp-L-1m tcp 9p2000.L 1048576"
       "image-tcp-L image 9p2000.L 524288" "image-tcp-u image 9p2000.u 524288"
       "namespace-tcp-L namespace 9p2000.L")
names=()
t0=$SECONDS
payload_built=0
for c in "${CASES[@]}"; do
    set -- $c
    [ -n "${VM_CASES:-}" ] && [[ " $VM_CASES " != *" $1 "* ]] && continue
    if [ "$2" = sctp ] && [ $payload_built = 0 ]; then
        sctp_payload || { echo "run-suite: cannot build the SCTP payload" >&2; exit 3; }
        payload_built=1
    fi
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    case $2 in
    sctp) run_sctp_case "$1" "$3" "$4" "$5" & ;;
    namespace) run_namespace_case "$1" "$3" & ;;
    *) run_case "$@" & ;;
    esac
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
