#!/bin/sh
# /init of the Xen harness's dom0 (busybox; PID 1 under Xen 4.17 or 4.20 in QEMU).
#
# Brings up the Xen toolstack (xenstored, xen-init-dom0, xenconsoled) and envoyd, creates guest 1
# (/etc/xen/domu.cfg: its 9pfs devices served by envoyd) and relays its console; while guest 1
# runs its cases, dom0 (with xextras=1) hot-plugs a share into it and takes it away again
# (envoy-xl), creates guest 2 (/etc/xen/domu2.cfg) next to it and checks that guest 2 reached
# nothing of guest 1's, plays correct and hostile frontends against envoyd
# (envoy-xen-frontend), destroys guest 2 mid-I/O and checks that nothing of it is left while
# guest 1 is still served. At the end it checksums what the guests wrote, destroys guest 1 and
# checks that nothing of any device is left.
#
# /etc/envoy-xen.conf (written by build-images.sh): XENVER=4.17 (xl type=qemu devices, backend
# kind 9pfs, envoyd started here, envoy-dm as every guest's device model) or XENVER=4.20
# (type=xen_9pfsd, kind xen_9pfs: libxl spawns /usr/lib/xen-4.20/bin/xen-9pfsd, which is envoyd).
#
# Kernel command line (unknown name=value parameters become environment variables of init):
#   xcases=L:u      guest 1's cases (see domu-init.sh); ':' separates them because ',' cannot
#                   appear in a multiboot module's arguments
#   xpar=1          guest 1 runs its cases side by side (0: one after another)
#   xextras=1       hot-plug, guest 2, hostile frontends, guest 2's destruction (0: the cases only)
#   xtimeout=420    seconds to wait for guest 1's result
#   xenvoyd=BASE64  extra envoyd options (4.17 only; e.g. --debug-corrupt-reads for the self-test)
#   xshell=1        a shell on the console at the end instead of powering off
#   xbench=R:M:N[:D] run the benchmark instead (dom0-bench.sh, domu-bench.sh; Xen 4.17 with QEMU)
# Machine-parsable lines (everything else is commentary):
#   ENVOY-CHECK: PASS|FAIL name [detail]       dom0's own checks
#   domU| LINE, domU2| LINE                    a line of guest 1's, guest 2's console
#   ENVOY-DOM0-MD5: CASE PATH HASH             dom0's checksum of a file a guest wrote
#   ENVOY-XEN-RESULT: PASS|FAIL failed=N ...   the last line
. /etc/envoy-xen.conf
export PATH=/usr/lib/xen-$XENVER/bin:/usr/lib/envoy:/bin:/sbin:/usr/bin:/usr/sbin
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
# wait_for SECONDS COMMAND...: poll every 0.1 s until COMMAND succeeds; 1 on timeout.
wait_for() {
    n=$(($1 * 10)); shift
    while [ "$n" -gt 0 ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; n=$((n - 1)); done
    return 1
}
ENVOYD_PID='' RELAYS=''
GLOG=/var/log/xen/console/guest-domu.log GLOG2=/var/log/xen/console/guest-domu2.log
# envoyd's log: its stderr. On 4.20 libxl spawns it with xl's stdio: guest 1's xl create log.
if [ "$XENVER" = 4.17 ]; then ENVOYD_LOG=/var/log/envoyd.log; else ENVOYD_LOG=/run/xl-create.log; fi
finish() {
    for r in $RELAYS; do kill "$r" 2>/dev/null; done
    # On any failure, dom0's or a guest's, show the logs that explain it.
    if [ "$fails" != 0 ] || [ -n "${1:-}" ] || grep -q 'ENVOY-CHECK: FAIL' "$GLOG" "$GLOG2" 2>/dev/null; then
        echo "----- envoyd log (tail of $ENVOYD_LOG) -----"; tail -n 60 "$ENVOYD_LOG" 2>/dev/null | cut -c1-400
        for f in /var/log/xen/qemu-dm-domu.log /var/log/xen/qemu-dm-domu2.log; do
            [ -f "$f" ] && { echo "----- $f -----"; tail -n 20 "$f"; }
        done
        for f in /run/xl-create.log /run/xl-create2.log /run/envoy-xl-*.log /run/fe-*.err; do
            [ -f "$f" ] && [ "$f" != "$ENVOYD_LOG" ] && { echo "----- $f (tail) -----"; tail -n 25 "$f" | cut -c1-300; }
        done
        echo "----- dom0 dmesg (crashes, then the tail) -----"
        dmesg | grep -E 'segfault|traps:|Oops|BUG|WARNING' | tail -n 20 | sed 's/^/dmesg: /'
        dmesg | tail -n 20 | sed 's/^/dmesg: /'
        echo "-----------------------------"
    fi
    echo "ENVOY-XEN-RESULT: $([ "$fails" = 0 ] && [ -z "${1:-}" ] && echo PASS || echo FAIL) failed=$fails${1:+ stage=$1} xen=$XENVER uptime=$(up)"
    if [ "${xshell:-0}" = 1 ]; then setsid cttyhack sh; fi
    sync
    poweroff -f
    sleep 10
}
# relay FILE PREFIX: copy a guest's console log (xenconsoled's) to ours, line by line.
CR=$(printf '\r')
relay() {
    ( tail -F -n +1 "$1" 2>/dev/null | while IFS= read -r l; do echo "$2 ${l%"$CR"}"; done ) &
    RELAYS="$RELAYS $!"
}
in_log() { grep -q "$2" "$1" 2>/dev/null; } # FILE PATTERN
log "dom0 init, Xen $XENVER, kernel $(uname -r)"

# 1. Xen's dom0 services. The event channel, grant and privcmd drivers are modules in Debian's
# kernels; xenfs gives /proc/xen (xsd_kva/xsd_port for xenstored, privcmd for the tools).
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

# What envoyd holds of Xen besides its device handles: grant mappings (gntdev in its memory
# map) and event channels (one /dev/xen/evtchn descriptor per bound port). After a guest is
# destroyed or a device removed, both must be back to what they were without it.
evtchn_fds() { for f in "/proc/$ENVOYD_PID"/fd/*; do readlink "$f"; done 2>/dev/null | grep -c 'xen/evtchn'; }
grant_maps() { grep -c 'xen/gntdev' "/proc/$ENVOYD_PID/maps" 2>/dev/null; }
counts() { echo "$(grant_maps) gntdev mappings, $(evtchn_fds) evtchn descriptors"; }
counts_are() { [ "$(counts)" = "$1" ]; }
envoyd_alive() { [ -n "$ENVOYD_PID" ] && kill -0 "$ENVOYD_PID" 2>/dev/null; }
# xl destroy asks each backend to close and waits (LIBXL_DESTROY_TIMEOUT, 10 s) for it to say
# Closed; a backend that never does costs 10 s and an error in libxl's log.
timeouts() { grep -ai 'timed out\|timeout reached\|unable to remove' "$1" | head -n 2 | cut -c1-200; }
no_timeout() { [ -z "$(timeouts "$1")" ]; }
# destroy_checked DOMAIN [PREFIX [DETAIL]]: xl destroy DOMAIN; checks PREFIXxl_destroy (rc,
# time, DETAIL), PREFIXxl_destroy_no_timeout (libxl's log) and PREFIXdomain_gone.
destroy_checked() {
    dc_dom=$1 dc_log=/run/xl-destroy-$1.log dc_t=$(up)
    xl -vvv destroy "$dc_dom" >"$dc_log" 2>&1
    dc_rc=$?
    check "${2:-}xl_destroy" $dc_rc "rc=$dc_rc, $(elapsed "$dc_t")${3:-}"
    no_timeout "$dc_log"; check "${2:-}xl_destroy_no_timeout" $? "$(timeouts "$dc_log")"
    dc_gone() { ! xl list "$dc_dom"; }
    wait_for 10 dc_gone; check "${2:-}domain_gone" $?
}

# The benchmark instead of the suite (xbench=ROUNDS:MIB:READERS, Xen 4.17; starts and stops
# envoyd itself; ends in finish).
if [ -n "${xbench:-}" ]; then
    . /etc/envoy/dom0-bench.sh
    bench_run
fi

# 2. envoyd serves the 9pfs backends of this domain. On 4.17 this init starts it; on 4.20 libxl
# does, at guest 1's creation (below).
extra=
[ -n "${xenvoyd:-}" ] && extra=$(echo "$xenvoyd" | base64 -d)
if [ "$XENVER" = 4.17 ]; then
    # shellcheck disable=SC2086 # extra is a list of options
    # (In a subshell that records its exit status; NO_COLOR: a log file, not a terminal.)
    ( NO_COLOR=1 envoyd --xen -v $extra >/run/envoyd.out 2>"$ENVOYD_LOG"; echo "$?" > /run/envoyd.rc ) &
    served() { grep -q '^envoyd: serving Xen' /run/envoyd.out; }
    wait_for 20 served; check envoyd_starts $? "$(head -n 1 /run/envoyd.out 2>/dev/null)"
    ENVOYD_PID=$(pidof envoyd)
    [ "$fails" = 0 ] || finish envoyd
    BEFORE=$(counts)
else
    [ -n "$extra" ] && log "xenvoyd ignored: libxl starts xen-9pfsd without options"
    # libxl spawns xen-9pfsd with xl's environment: envoyd logs at debug level, like -v.
    export RUST_LOG=debug NO_COLOR=1
    # Without any device envoyd maps no grant and binds no port.
    BEFORE="0 gntdev mappings, 0 evtchn descriptors"
fi

# guest 1's share holds a file of dom0's that guest 2 must not reach or change.
head -c 4096 /dev/urandom > /srv/share/guest1-secret.txt
SECRET=$(md5sum /srv/share/guest1-secret.txt | cut -d' ' -f1)
SECRET_MTIME=$(stat -c %Y /srv/share/guest1-secret.txt)
secret_unchanged() {
    [ "$(md5sum /srv/share/guest1-secret.txt 2>/dev/null | cut -d' ' -f1)" = "$SECRET" ] \
        && [ "$(stat -c %Y /srv/share/guest1-secret.txt)" = "$SECRET_MTIME" ]
}

# 3. Guest 1. xl create returns once the domain runs (4.17: its device model, envoy-dm,
# answered libxl's QMP; 4.20: libxl's xen-9pfsd, envoyd, announced itself and took the devices
# to InitWait).
t0=$(up)
cases=$(echo "${xcases:-L:u}" | tr : ,)
EXTRAS=${xextras:-1}
xl -vvv create /etc/xen/domu.cfg "extra=\"console=hvc0 quiet loglevel=4 xrole=main xcases=$cases xpar=${xpar:-1} xextras=$EXTRAS\"" >/run/xl-create.log 2>&1
rc=$?
check xl_create $rc "rc=$rc, $(elapsed "$t0")"
[ "$rc" = 0 ] || finish xl-create
DOMID=$(xl domid domu 2>/dev/null)
if [ "$XENVER" = 4.17 ]; then
    dm_state=$(xenstore-read "/local/domain/0/device-model/$DOMID/state" 2>/dev/null)
    [ "$dm_state" = running ]; check envoy_dm_running $? "device-model/$DOMID/state=$dm_state"
else
    # libxl spawns one xen-9pfsd per device that finds no libxl/xen-9pfs/state yet (it adds a
    # guest's devices concurrently): the latecomers must leave, one daemon serves.
    one_daemon() { [ "$(pidof xen-9pfsd | wc -w)" = 1 ]; }
    wait_for 10 one_daemon
    ENVOYD_PID=$(pidof xen-9pfsd | cut -d' ' -f1)
    st=$(xenstore-read /local/domain/0/libxl/xen-9pfs/state 2>/dev/null)
    exe=$(readlink "/proc/$ENVOYD_PID/exe" 2>/dev/null)
    [ "$st" = running ] && [ "$exe" = /usr/lib/envoy/envoyd ]
    check xen_9pfsd_spawned $? "libxl/xen-9pfs state=$st; pid $ENVOYD_PID exe=$exe comm=$(cat "/proc/$ENVOYD_PID/comm" 2>/dev/null)"
    one_daemon; check xen_9pfsd_single $? "$(pidof xen-9pfsd | wc -w) running, $(grep -c 'another xen-9pfsd runs' "$ENVOYD_LOG") latecomer(s) left"
    grep -q '^envoyd: serving Xen' "$ENVOYD_LOG"; check envoyd_starts $? "$(grep -a '^envoyd: ' "$ENVOYD_LOG" | head -n 1)"
    envoyd_alive || finish envoyd
fi
relay "$GLOG" "domU|"

# 4. The extras, while guest 1 runs its cases.
C1='' C2=''
hotplug() {
    t=$(up)
    envoy-xl attach domu --tag hot --path /srv/hot --kind "$KIND" --timeout 60 >/run/envoy-xl-attach.log 2>&1
    rc=$?
    check hot_attach $rc "$(elapsed "$t"): $(tail -n 1 /run/envoy-xl-attach.log)"
    [ "$rc" = 0 ] || return
    HOTDEV=$(sed -n 's/.*9pfs device \([0-9]*\) .*/\1/p' /run/envoy-xl-attach.log | head -n 1)
    unmounted() { in_log "$GLOG" 'ENVOY-HOT: unmounted'; }
    wait_for 180 unmounted || log "guest 1 did not finish with the hot-plugged share within 180 s"
    t=$(up)
    envoy-xl detach domu --tag hot --timeout 30 >/run/envoy-xl-detach.log 2>&1
    rc=$?
    check hot_detach $rc "$(elapsed "$t"): $(tail -n 1 /run/envoy-xl-detach.log)"
    hot_gone() {
        ! xenstore-exists "/local/domain/0/backend/$KIND/$DOMID/$HOTDEV" \
            && ! xenstore-exists "/local/domain/$DOMID/device/9pfs/$HOTDEV" \
            && ! xenstore-exists "/libxl/$DOMID/device/9pfs/$HOTDEV"
    }
    wait_for 10 hot_gone; check hot_nodes_removed $? "device $HOTDEV"
    wait_for 10 counts_are "$C1"; check hot_released $? "$(counts); $C1 before the attach"
}
peer_start() {
    t=$(up)
    xl -vvv create /etc/xen/domu2.cfg "extra=\"console=hvc0 quiet loglevel=4 xrole=peer\"" >/run/xl-create2.log 2>&1
    rc=$?
    check peer_xl_create $rc "rc=$rc, $(elapsed "$t")"
    [ "$rc" = 0 ] || return 1
    DOMID2=$(xl domid domu2 2>/dev/null)
    relay "$GLOG2" "domU2|"
    peer_ready() { in_log "$GLOG2" 'ENVOY-PEER: ready\|ENVOY-DOMU-DONE'; }
    wait_for 120 peer_ready && in_log "$GLOG2" 'ENVOY-PEER: ready'
    check peer_ready $? "$(elapsed "$t") after xl create"
    secret_unchanged; check isolation_guest1_file_unchanged $? "md5 $SECRET"
    # Nothing guest 2 made may be anywhere but in its share (its links stay links there).
    outside=$(find / /tmp -xdev -name 'g2-*' 2>/dev/null | grep -v '^/srv/share2/')
    [ -z "$outside" ] && [ "$(readlink /srv/share2/g2-link-abs)" = /srv/share/guest1-secret.txt ] \
        && [ -f /srv/share2/g2-file.txt ]
    check isolation_nothing_outside_share2 $? "${outside:-in /srv/share2: $(ls /srv/share2 | tr '\n' ' ')}"
    return 0
}
frontends() {
    devid=20
    for mode in good bad-order bogus-ref bad-indexes oversize; do
        set -- --create --path /srv/fe --devid "$devid" --kind "$KIND" --mode "$mode" --timeout 30
        [ "$mode" = good ] && set -- "$@" --file hello.bin --expect-md5 "$(cat /srv/fe.md5)"
        t=$(up)
        line=$(envoy-xen-frontend "$@" 2>"/run/fe-$mode.err" | grep '^ENVOY-FE: ')
        rc=$?
        case $line in "ENVOY-FE: PASS"*) ok=0 ;; *) ok=1 ;; esac
        check "fe_$(echo "$mode" | tr - _)" $ok "devid $devid, $(elapsed "$t"): ${line:-no ENVOY-FE line, $(tail -n 1 "/run/fe-$mode.err")}"
        envoyd_alive || { check fe_envoyd_alive 1 "envoyd died during $mode"; return; }
        devid=$((devid + 1))
    done
    check fe_envoyd_alive 0
    fe_gone() {
        [ -z "$(xenstore-list /local/domain/0/device/9pfs 2>/dev/null)" ] \
            && ! xenstore-exists "/local/domain/0/backend/$KIND/0"
    }
    wait_for 10 fe_gone; check fe_nodes_removed $? "$(xenstore-ls -f /local/domain/0/device 2>/dev/null | head -n 3)"
    wait_for 10 counts_are "$C2"; check fe_released $? "$(counts); $C2 before them"
}
peer_destroy() {
    : > /srv/share2/after-hostile
    peer_served() { in_log "$GLOG2" 'served_after_hostile'; }
    wait_for 30 peer_served; check peer_served_after_hostile $? "guest 2 wrote and read its share after the hostile frontends"
    destroy_checked domu2 peer_ ", guest 2 in the middle of its I/O loop"
    peer_clean() {
        ! xenstore-exists "/local/domain/0/backend/9pfs/$DOMID2" \
            && ! xenstore-exists "/local/domain/0/backend/xen_9pfs/$DOMID2"
    }
    wait_for 10 peer_clean; check peer_backend_nodes_removed $? "$(xenstore-ls -f "/local/domain/0/backend/$KIND/$DOMID2" 2>/dev/null | head -n 3)"
    if [ "$XENVER" = 4.17 ]; then
        dm2_clean() { ! xenstore-exists "/local/domain/0/device-model/$DOMID2"; }
        wait_for 10 dm2_clean; check peer_device_model_nodes_removed $?
    fi
    wait_for 10 counts_are "$C1"; check peer_released $? "$(counts); $C1 with guest 1 alone"
    envoyd_alive; check envoyd_alive_after_peer_destroy $?
}
if [ "$EXTRAS" = 1 ]; then
    booted() { in_log "$GLOG" 'ENVOY-BOOT-DEVICES'; }
    if wait_for 120 booted; then
        C1=$(counts)
        log "guest 1 connected: envoyd holds $C1"
        hotplug
        if peer_start; then
            C2=$(counts)
            log "guest 2 connected: envoyd holds $C2"
            frontends
            peer_destroy
        fi
    else
        check guest1_connected 1 "guest 1 did not report its devices within 120 s"
    fi
    # guest 1's final check waits for this.
    : > /srv/share/ctl-after-peer
fi

# 5. Wait for guest 1's last line (or its death).
done_line() { grep -q 'ENVOY-DOMU-DONE' "$GLOG"; }
timeout=${xtimeout:-420}
n=0 missing=0
while ! done_line 2>/dev/null; do
    sleep 0.5; n=$((n + 1))
    if [ $((n % 60)) = 0 ]; then
        # Every 30 s, a sign of life (a hung guest or server shows here, not as silence).
        log "waiting for guest 1: $(grep -c 'ENVOY-CHECK' "$GLOG" 2>/dev/null) check lines, envoyd $(envoyd_alive && echo alive || echo GONE), load $(cut -d' ' -f1-3 /proc/loadavg)"
    fi
    # envoyd must outlive the guest: without it the guest's 9P requests wait forever.
    if ! envoyd_alive; then
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
sleep 0.3   # let the relays print the last lines before ours
for r in $RELAYS; do kill "$r" 2>/dev/null; done; RELAYS=

# 6. What dom0 sees of the files the guests asked about ("[CASE] ENVOY-HOST: md5 PATH HASH").
cat "$GLOG" "$GLOG2" 2>/dev/null | tr -d '\r' | sed -n 's/^\[\([A-Za-z]*\)\] ENVOY-HOST: md5 \([^ ]*\) .*/\1 \2/p' | while read -r c p; do
    case $c in L|S|F) dir=/srv/share ;; u) dir=/srv/shareu ;; H) dir=/srv/hot ;; P) dir=/srv/share2 ;; *) continue ;; esac
    echo "ENVOY-DOM0-MD5: $c $p $(md5sum "$dir/$p" 2>/dev/null | cut -d' ' -f1)"
done

DURING=$(counts)

# 7. Tear down: xl destroy removes the devices (and on 4.17 kills envoy-dm); envoyd must let go
# of them (unmap, unbind) and never write them back.
destroy_checked domu
backend_clean() { ! xenstore-ls /local/domain/0/backend 2>/dev/null | grep -q 9pfs; }
wait_for 10 backend_clean; check backend_nodes_removed $? "$(xenstore-ls -f /local/domain/0/backend 2>/dev/null | grep 9pfs | head -n 3)"
sleep 1   # a late write by envoyd would show up now
backend_clean; check backend_nodes_stay_removed $?
if [ "$XENVER" = 4.17 ]; then
    dm_clean() { ! xenstore-exists "/local/domain/0/device-model/$DOMID"; }
    wait_for 10 dm_clean; check device_model_nodes_removed $?
    no_dm() { ! pidof envoy-dm; }
    wait_for 10 no_dm; check envoy_dm_exited $?
fi
released() { [ "$(grant_maps)" = "${BEFORE%% *}" ]; }
wait_for 10 released; check envoyd_unmapped_grants $? "$(counts); $DURING with guest 1, $BEFORE without guests"
unbound() { [ "$(counts)" = "$BEFORE" ]; }
wait_for 10 unbound; check envoyd_unbound_event_channels $? "$(counts); $DURING with guest 1, $BEFORE without guests"
envoyd_alive; check envoyd_alive $? "$([ -f /run/envoyd.rc ] && echo "exit status $(cat /run/envoyd.rc)")"
! grep -q 'panicked' "$ENVOYD_LOG"; check envoyd_no_panic $?
if [ "$EXTRAS" = 1 ]; then
    secret_unchanged; check isolation_guest1_file_unchanged_at_end $?
fi
finish
