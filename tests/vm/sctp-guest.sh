#!/bin/sh
# The SCTP cases of the VM suite, run inside the Linux guest (its kernel has SCTP; the hosts'
# does not). envoyd and the client are both in the guest. One "ENVOY-CHECK: PASS|FAIL name"
# line per check, like workload.sh.
#
#   sh /sctp-guest.sh loop VERSION      envoyd on sctp:127.0.0.1, envoy-mount (trans=fd over
#                                       the association), workload.sh, then the export checked
#   sh /sctp-guest.sh multihome VERSION envoyd in a network namespace on two addresses, each
#                                       behind its own veth pair; envoy-mount to both; the
#                                       primary path's link goes down mid-workload
#   sh /sctp-guest.sh rust              the Rust SCTP tests (tests/tests/sctp.rs, --ignored)
#                                       and the dotl, dotu, inflight suites over SCTP
# Payload: /bin/{envoyd,envoy-mount,mmapcat}, /bin/$IP (iproute2's ip) (+ their libraries), /tests/*, /workload.sh,
# /workload-sizes.env, /bigdir.sh.
kind=$1 ver=${2:-9p2000.L}
PORT=5640
IP=/opt/iproute2/ip   # iproute2's, for network namespaces and veth pairs (busybox's has neither)
pass() { echo "ENVOY-CHECK: PASS $1"; }
fail() { echo "ENVOY-CHECK: FAIL $1: $2"; }
check() { # NAME COMMAND...: PASS when the command succeeds
    name=$1; shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$(echo "$out" | tail -n 3 | tr '\n' ' ')"; fi
}

mkdir -p /srv && mount -t tmpfs -o size=400m tmpfs /srv
EXPORT=/srv/export
mkdir -p "$EXPORT"
# The workload at the nested guests' sizes: this guest's one vCPU runs envoyd too.
set -a; . /workload-sizes.env; set +a

start_envoyd() { # LISTEN [PREFIX...]: envoyd serving $EXPORT, up when it prints its endpoint
    listen=$1; shift
    "$@" envoyd --export "$EXPORT" --listen "$listen" >/tmp/envoyd.out 2>/tmp/envoyd.log &
    for _ in $(seq 100); do grep -q '^envoyd: serving' /tmp/envoyd.out && return 0; sleep 0.1; done
    cat /tmp/envoyd.log; return 1
}

# run_workload ENDPOINT: mount with envoy-mount, run the workload, verify its files in the
# export (what the host does for the other cases). The caller unmounts.
run_workload() {
    check envoy_mount envoy-mount -o "version=$ver,msize=524288" "$1" /mnt/9p
    grep ' /mnt/9p 9p ' /proc/mounts | grep -q 'trans=fd' || { fail mounted_over_fd "$(grep 9p /proc/mounts)"; return; }
    (cd /mnt/9p && sh /workload.sh) | tee /tmp/workload.out
    grep '^ENVOY-HOST: md5 ' /tmp/workload.out | while read -r _ _ path hash; do
        have=$(md5sum "$EXPORT/$path" 2>/dev/null | cut -d' ' -f1)
        if [ "$have" = "$hash" ]; then pass "export_has_$path"; else fail "export_has_$path" "export has ${have:-nothing}, guest wrote $hash"; fi
    done
}

case $kind in
loop)
    /bigdir.sh "$EXPORT" "$WL_DIR_ENTRIES"
    check envoyd_listens start_envoyd "sctp:127.0.0.1:$PORT"
    run_workload "sctp:127.0.0.1:$PORT"
    check umount umount /mnt/9p
    ;;
multihome)
    /bigdir.sh "$EXPORT" "$WL_DIR_ENTRIES"
    # Two independent paths: c1<->s1 (10.1.1.0/24) and c2<->s2 (10.1.2.0/24); envoyd's side
    # (s1, s2) in the namespace "srv".
    $IP netns add srv || { fail netns "$IP netns add"; exit 1; }
    for i in 1 2; do
        $IP link add "c$i" type veth peer name "s$i" netns srv &&
            $IP addr add "10.1.$i.2/24" dev "c$i" && $IP link set "c$i" up &&
            $IP -n srv addr add "10.1.$i.1/24" dev "s$i" && $IP -n srv link set "s$i" up ||
            { fail "veth$i" "setup failed"; exit 1; }
    done
    $IP -n srv link set lo up
    # Fail over in seconds rather than a minute: the RTO bounds and path retransmissions an
    # admin would set for a LAN (per namespace, so on both ends).
    for ns in "" "$IP netns exec srv"; do
        $ns sysctl -qw net.sctp.rto_min=200 net.sctp.rto_initial=500 net.sctp.rto_max=1000 \
            net.sctp.path_max_retrans=2 net.sctp.hb_interval=500
    done
    check envoyd_listens_on_two_addresses start_envoyd "sctp:10.1.1.1,10.1.2.1:$PORT" $IP netns exec srv
    # Take the primary path's link down once the workload is well under way.
    (sleep 12; $IP link set c1 down; echo "$(cut -d' ' -f1 /proc/uptime)" > /tmp/path-down) &
    downer=$!
    t0=$(cut -d' ' -f1 /proc/uptime)
    run_workload "sctp:10.1.1.1,10.1.2.1:$PORT"
    t1=$(cut -d' ' -f1 /proc/uptime)
    wait $downer
    down=$(cat /tmp/path-down 2>/dev/null)
    check path_went_down_mid_workload awk -v a="$t0" -v d="${down:-0}" -v b="$t1" 'BEGIN { exit !(d > a && d < b) }'
    # One association carried it all (trans=fd cannot reconnect: had it died, the workload
    # would have failed with EIO), it is still up, and it saw the primary path fail:
    # /proc/net/sctp/remaddr's state column for envoyd's 10.1.1.1 (0 inactive, 1 failing).
    n=$($IP netns exec srv cat /proc/net/sctp/assocs | tail -n +2 | wc -l)
    check association_still_up test "$n" -eq 1
    check primary_path_marked_down sh -c "awk '\$1 == \"10.1.1.1\" { print \$NF }' /proc/net/sctp/remaddr | grep -qx '[01]'"
    cat /proc/net/sctp/remaddr
    check umount umount /mnt/9p
    ;;
rust)
    export ENVOY_TEST_MEDIUM=sctp RUST_BACKTRACE=1 ENVOY_TEST_LOG=debug
    for t in /tests/*; do
        name=${t##*/}
        case $name in sctp) args=--ignored ;; *) args= ;; esac
        # dotl::xattrs needs user.* extended attributes, which this kernel's tmpfs (6.1) lacks;
        # it runs on the host over TCP and the simulated rings.
        case $name in dotl) args="--skip xattrs" ;; esac
        "$t" $args --test-threads=1 > "/tmp/$name.out" 2>&1
        rc=$?
        sed -n 's/^test \(.*\) \.\.\. ok$/ENVOY-CHECK: PASS '"$name"'::\1/p; s/^test \(.*\) \.\.\. FAILED$/ENVOY-CHECK: FAIL '"$name"'::\1: failed/p' "/tmp/$name.out"
        if [ $rc != 0 ]; then
            fail "$name" "exit $rc"
            tail -n 40 "/tmp/$name.out"
        fi
    done
    ;;
*)
    fail config "unknown case $kind"
    ;;
esac
[ -f /tmp/envoyd.log ] && tail -n 20 /tmp/envoyd.log | sed 's/^/envoyd| /'
echo "ENVOY-SCTP-DONE"
