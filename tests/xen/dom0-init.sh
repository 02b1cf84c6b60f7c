#!/bin/sh
# /init of the Xen harness's dom0 (busybox; runs as PID 1 under Xen 4.17 in QEMU).
#
# Brings up the Xen toolstack (xenstored, xen-init-dom0, xenconsoled), starts `envoyd --xen`,
# creates the PV domU of /etc/xen/domu.cfg (its 9pfs devices served by envoyd, its "device
# model" envoy-dm), relays the domU's console to this console, checksums what the guest asked
# for, destroys the domU and checks that nothing of its devices is left.
#
# Kernel command line (unknown name=value parameters become environment variables of init):
#   xcases=L:u      the guest's cases (L: share with 9p2000.L, u: shareu with 9p2000.u); ':'
#                   separates them because ',' cannot appear in a multiboot module's arguments
#   xpar=1          the guest runs its cases side by side (0: one after another)
#   xtimeout=420    seconds to wait for the guest's result
#   xenvoyd=BASE64  extra envoyd options (e.g. --debug-corrupt-reads for the self-test)
#   xshell=1        a shell on the console at the end instead of powering off
# Machine-parsable lines (everything else is commentary):
#   ENVOY-CHECK: PASS|FAIL name [detail]       dom0's own checks
#   domU| LINE                                 a line of the guest's console
#   ENVOY-DOM0-MD5: CASE PATH HASH             dom0's checksum of a file the guest wrote
#   ENVOY-XEN-RESULT: PASS|FAIL failed=N ...   the last line
export PATH=/usr/lib/xen-4.17/bin:/usr/lib/envoy:/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /run/xen /run/xenstored /run/envoy /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1

up() { cut -d' ' -f1 /proc/uptime; }
log() { echo "=== dom0 [$(up)s] $*"; }
fails=0
check() { # NAME OK(0/1) DETAIL
    if [ "$2" = 0 ]; then echo "ENVOY-CHECK: PASS $1${3:+ ($3)}"
    else echo "ENVOY-CHECK: FAIL $1: ${3:-failed}"; fails=$((fails + 1)); fi
}
# elapsed T0: seconds since uptime T0, one decimal.
elapsed() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1fs", b - a }'; }
ENVOYD_PID='' RELAY=''
GLOG=/var/log/xen/console/guest-domu.log
finish() {
    [ -n "$RELAY" ] && kill "$RELAY" 2>/dev/null
    # On any failure, dom0's or the guest's, show the logs that explain it.
    if [ "$fails" != 0 ] || [ -n "${1:-}" ] || grep -q 'ENVOY-CHECK: FAIL' "$GLOG" 2>/dev/null; then
        echo "----- envoyd log (tail) -----"; tail -n 60 /var/log/envoyd.log 2>/dev/null | cut -c1-400
        echo "----- envoy-dm log -----"; tail -n 30 /var/log/xen/qemu-dm-domu.log 2>/dev/null
        echo "----- xl create (tail) -----"; tail -n 30 /run/xl-create.log 2>/dev/null
        echo "----- dom0 dmesg (crashes, then the tail) -----"
        dmesg | grep -E 'segfault|traps:|Oops|BUG|WARNING' | tail -n 20 | sed 's/^/dmesg: /'
        dmesg | tail -n 20 | sed 's/^/dmesg: /' 
        echo "-----------------------------"
    fi
    echo "ENVOY-XEN-RESULT: $([ "$fails" = 0 ] && [ -z "${1:-}" ] && echo PASS || echo FAIL) failed=$fails${1:+ stage=$1} uptime=$(up)"
    if [ "${xshell:-0}" = 1 ]; then setsid cttyhack sh; fi
    sync
    poweroff -f
    sleep 10
}
# wait_for SECONDS COMMAND...: poll every 0.1 s until COMMAND succeeds; 1 on timeout.
wait_for() {
    n=$(($1 * 10)); shift
    while [ "$n" -gt 0 ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; n=$((n - 1)); done
    return 1
}
log "dom0 init, kernel $(uname -r)"

# 1. Xen's dom0 services. The event channel, grant and privcmd drivers are modules in Debian's
# kernel; xenfs gives /proc/xen (xsd_kva/xsd_port for xenstored, privcmd for the tools).
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs; do
    modprobe "$m" || { log "modprobe $m failed"; finish modules; }
done
mount -t xenfs xenfs /proc/xen || finish xenfs
xenstored --pid-file /run/xenstored.pid || finish xenstored
wait_for 20 xenstore-read / || { log "xenstored does not answer"; finish xenstored; }
xen-init-dom0 >/dev/null || finish xen-init-dom0
# --log=guest: each guest's console goes to /var/log/xen/console/guest-NAME.log.
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console || finish xenconsoled
log "xenstored, xen-init-dom0, xenconsoled up"

# 2. envoyd serves the 9pfs backends of this domain.
extra=
[ -n "${xenvoyd:-}" ] && extra=$(echo "$xenvoyd" | base64 -d)
# shellcheck disable=SC2086 # extra is a list of options
# (In a subshell that records its exit status; NO_COLOR: a log file, not a terminal.)
( NO_COLOR=1 envoyd --xen -v $extra >/run/envoyd.out 2>/var/log/envoyd.log; echo "$?" > /run/envoyd.rc ) &
served() { grep -q '^envoyd: serving Xen' /run/envoyd.out; }
wait_for 20 served; check envoyd_starts $? "$(head -n 1 /run/envoyd.out 2>/dev/null)"
ENVOYD_PID=$(pidof envoyd)
[ "$fails" = 0 ] || finish envoyd

# What envoyd holds of Xen besides its device handles: grant mappings (gntdev in its memory
# map) and event channels (one /dev/xen/evtchn descriptor per bound port). After the guest is
# destroyed both must be back to this.
evtchn_fds() { for f in "/proc/$ENVOYD_PID"/fd/*; do readlink "$f"; done 2>/dev/null | grep -c 'xen/evtchn'; }
grant_maps() { grep -c 'xen/gntdev' "/proc/$ENVOYD_PID/maps" 2>/dev/null; }
EVTCHN_BEFORE=$(evtchn_fds) MAPS_BEFORE=$(grant_maps)

# 3. The guest. xl create returns once the domain runs; its device model (envoy-dm) answered
# libxl's QMP by then.
t0=$(up)
cases=$(echo "${xcases:-L:u}" | tr : ,)
xl -vvv create /etc/xen/domu.cfg "extra=\"console=hvc0 quiet loglevel=4 xcases=$cases xpar=${xpar:-1}\"" >/run/xl-create.log 2>&1
rc=$?
check xl_create $rc "rc=$rc, $(elapsed "$t0")"
[ "$rc" = 0 ] || finish xl-create
DOMID=$(xl domid domu 2>/dev/null)
dm_state=$(xenstore-read "/local/domain/0/device-model/$DOMID/state" 2>/dev/null)
[ "$dm_state" = running ]; check envoy_dm_running $? "device-model/$DOMID/state=$dm_state"

# Relay the guest's console (xenconsoled's log; the guest's /init output) line by line.
CR=$(printf '\r')
( tail -F -n +1 "$GLOG" 2>/dev/null | while IFS= read -r l; do echo "domU| ${l%"$CR"}"; done ) &
RELAY=$!

# 4. Wait for the guest's last line (or its death).
done_line() { grep -q 'ENVOY-DOMU-DONE' "$GLOG"; }
timeout=${xtimeout:-420}
n=0 missing=0
while ! done_line 2>/dev/null; do
    sleep 0.5; n=$((n + 1))
    if [ $((n % 60)) = 0 ]; then
        # Every 30 s, a sign of life (a hung guest or server shows here, not as silence).
        log "waiting for the guest: $(grep -c 'ENVOY-CHECK' "$GLOG" 2>/dev/null) check lines, envoyd $(kill -0 "$ENVOYD_PID" 2>/dev/null && echo alive || echo GONE), load $(cut -d' ' -f1-3 /proc/loadavg)"
    fi
    # envoyd must outlive the guest: without it the guest's 9P requests wait forever.
    if ! kill -0 "$ENVOYD_PID" 2>/dev/null; then
        log "envoyd exited (status $(cat /run/envoyd.rc 2>/dev/null)) while the guest runs"
        break
    fi
    if [ $((n % 10)) = 0 ]; then
        # Every 5 s: is the guest still there and not crashed? (xl list may fail once while
        # dom0 is busy: only three misses in a row count.)
        if state=$(xl list domu 2>/run/xl-list.err | awk 'NR==2{print $5}') && [ -n "$state" ]; then
            missing=0
            case $state in *c*) log "domU crashed (state $state)"; break ;; esac
        else
            missing=$((missing + 1))
            [ "$missing" -ge 3 ] && { log "domU is gone: $(cat /run/xl-list.err)"; break; }
        fi
    fi
    [ $((n / 2)) -ge "$timeout" ] && { log "no result from domU within ${timeout}s"; break; }
done
done_line 2>/dev/null; check domu_result $? "$(elapsed "$t0") after xl create"
sleep 0.3   # let the relay print the last lines before ours
kill "$RELAY" 2>/dev/null; RELAY=

# 5. What dom0 sees of the files the guest asked about ("[CASE] ENVOY-HOST: md5 PATH HASH").
tr -d '\r' < "$GLOG" | sed -n 's/^\[\([A-Za-z]*\)\] ENVOY-HOST: md5 \([^ ]*\) .*/\1 \2/p' | while read -r c p; do
    case $c in L|S) dir=/srv/share ;; u) dir=/srv/shareu ;; *) continue ;; esac
    echo "ENVOY-DOM0-MD5: $c $p $(md5sum "$dir/$p" 2>/dev/null | cut -d' ' -f1)"
done

EVTCHN_DURING=$(evtchn_fds) MAPS_DURING=$(grant_maps)

# 6. Tear down: xl destroy kills envoy-dm and removes the devices; envoyd must let go of them
# (unmap, unbind) and never write them back.
t1=$(up)
xl destroy domu >/run/xl-destroy.log 2>&1
rc=$?
check xl_destroy $rc "rc=$rc, $(elapsed "$t1")"
gone() { ! xl list domu; }
wait_for 10 gone; check domain_gone $?
backend_clean() { ! xenstore-ls /local/domain/0/backend 2>/dev/null | grep -q 9pfs; }
wait_for 10 backend_clean; check backend_nodes_removed $? "$(xenstore-ls -f /local/domain/0/backend 2>/dev/null | grep 9pfs | head -n 3)"
sleep 1   # a late write by envoyd would show up now
backend_clean; check backend_nodes_stay_removed $?
dm_clean() { ! xenstore-exists "/local/domain/0/device-model/$DOMID"; }
wait_for 10 dm_clean; check device_model_nodes_removed $?
no_dm() { ! pidof envoy-dm; }
wait_for 10 no_dm; check envoy_dm_exited $?
released() { [ "$(grant_maps)" = "$MAPS_BEFORE" ]; }
wait_for 10 released; check envoyd_unmapped_grants $? "$(grant_maps) gntdev mappings; $MAPS_DURING with the guest, $MAPS_BEFORE before"
unbound() { [ "$(evtchn_fds)" = "$EVTCHN_BEFORE" ]; }
wait_for 10 unbound; check envoyd_unbound_event_channels $? "$(evtchn_fds) evtchn descriptors; $EVTCHN_DURING with the guest, $EVTCHN_BEFORE before"
kill -0 "$ENVOYD_PID" 2>/dev/null; check envoyd_alive $? "$([ -f /run/envoyd.rc ] && echo "exit status $(cat /run/envoyd.rc)")"
! grep -q 'panicked' /var/log/envoyd.log; check envoyd_no_panic $?
finish
