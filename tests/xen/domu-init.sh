#!/bin/sh
# /init of the Xen harness's PV domUs (busybox): the Linux 9pfs Xen frontend (9pnet_xen) against
# envoyd in dom0.
#
# Kernel command line (dom0-init.sh puts it in xl's extra="..."):
#   xrole=main    guest 1 (default): runs the cases on its boot shares, and with xextras=1 also
#                 takes the hot-plugged share ([H]) and, at the end, proves it is still served
#                 after guest 2's destruction ([F])
#   xrole=peer    guest 2: one share (tag share2); tries to reach guest 1's files, then keeps
#                 using its share until dom0 destroys it ([P])
#   xrole=bench   a benchmark guest: /bench.sh (tests/xen/domu-bench.sh) with
#                 xbench=SERVER:ROUND:MIB:READERS
#   xcases=L,u    guest 1's cases: L = the VM suite's workload (at the sizes of
#                 /workload-sizes.env) on tag share with 9p2000.L, u = on tag shareu with
#                 9p2000.u, S = a quick data check on share (self-test)
#   xpar=0        run the cases one after another (default: side by side)
#   xextras=1     guest 1 takes part in the hot-plug and the final check
# Everything goes to hvc0, which xenconsoled logs in dom0 (only /init's output reaches that
# log, not the kernel's); dom0 relays it to the serial console. Lines:
#   ENVOY-XENBUS: 9pfs-N nodename=... state=...      the frontends' xenbus view after loading
#   ENVOY-BOOT-DEVICES: PATH...                       after those: dom0 may hot-plug now
#   [CASE] ENVOY-CHECK: PASS|FAIL name ...            the checks (CASE: L u S H F P)
#   [CASE] ENVOY-HOST: md5 PATH HASH                  files dom0 should checksum in CASE's share
#   [H] ENVOY-HOT: unmounted                          dom0 may detach the hot-plugged device now
#   [P] ENVOY-PEER: ready                             guest 2's isolation checks are done
#   ENVOY-DOMU-DONE failed=N                          the last line
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
mkdir -p /tmp /mnt
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1

up() { cut -d' ' -f1 /proc/uptime; }
log() { echo "=== domU [$(up)s] $*"; }
elapsed() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1fs", b - a }'; }
MSIZE=524288
log "domU init, kernel $(uname -r), cmdline: $(cat /proc/cmdline)"

cases='' par=1 role=main extras=0 bench=envoy:1:256:4
# shellcheck disable=SC2013 # words, not lines
for a in $(cat /proc/cmdline); do
    case $a in
        xcases=*) cases=${a#xcases=} ;; xpar=*) par=${a#xpar=} ;; xrole=*) role=${a#xrole=} ;;
        xextras=*) extras=${a#xextras=} ;; xbench=*) bench=${a#xbench=} ;;
    esac
done

# Loading 9pnet_xen blocks until every 9pfs device is Connected (xenbus waits for the devices
# it probed, up to 300 s), so its duration is the backend handshake's.
t0=$(up)
modprobe 9pnet_xen; rc=$?
log "9pnet_xen loaded (rc=$rc) in $(elapsed "$t0")"
modprobe 9p || log "modprobe 9p failed"
BOOT_DEVS=''
for d in /sys/bus/xen/devices/9pfs-*; do
    [ -e "$d" ] || { echo "ENVOY-XENBUS: no 9pfs device"; continue; }
    BOOT_DEVS="$BOOT_DEVS $d"
    echo "ENVOY-XENBUS: ${d##*/} nodename=$(cat "$d/nodename") state=$(cat "$d/state")"
done
echo "ENVOY-BOOT-DEVICES:$BOOT_DEVS"

# check CASE NAME OK(0/1) DETAIL: one check line; failures are counted in /tmp/fails-CASE.
check() {
    if [ "$3" = 0 ]; then echo "[$1] ENVOY-CHECK: PASS $2${4:+ ($4)}"
    else echo "[$1] ENVOY-CHECK: FAIL $2: ${4:-failed}"; echo x >> "/tmp/fails-$1"; fi
}
# wait_for TENTHS COMMAND...: poll every 0.1 s until COMMAND succeeds; 1 on timeout.
wait_for() {
    n=$1; shift
    while [ "$n" -gt 0 ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; n=$((n - 1)); done
    return 1
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
md5() { md5sum "$1" | cut -d' ' -f1; }

# run_case CASE TAG VERSION COMMAND...: mount, COMMAND in the mount, unmount; every line is
# prefixed [CASE]. Cases may run side by side, so each runs in its own mount namespace with a
# private /tmp (the workload keeps its random blocks in /tmp).
run_case() {
    c=$1; tag=$2; ver=$3; shift 3
    mkdir -p "/mnt/$tag"
    t=$(up)
    if ! mount -t 9p -o "trans=xen,version=$ver,msize=$MSIZE" "$tag" "/mnt/$tag" 2>"/tmp/mount-$c.err"; then
        check "$c" mount 1 "$(cat "/tmp/mount-$c.err") ($(elapsed "$t"))"
        return
    fi
    check "$c" mount 0 "$(grep " /mnt/$tag " /proc/mounts | cut -d' ' -f4), $(elapsed "$t")"
    : > "/tmp/out-$c"
    # read is a builtin: each line is printed as soon as the workload writes it.
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare -m sh -c 'mount -t tmpfs tmpfs /tmp && cd "$0" && exec "$@" 2>&1' "/mnt/$tag" "$@" \
        | while IFS= read -r l; do echo "[$c] $l"; echo "$l" >> "/tmp/out-$c"; done
    grep '^ENVOY-CHECK: FAIL' "/tmp/out-$c" | while read -r _; do echo x >> "/tmp/fails-$c"; done
    t=$(up)
    umount "/mnt/$tag"; check "$c" umount $? "$(elapsed "$t")"
}

# hot_job: the share dom0 hot-plugs with `envoy-xl attach` once this guest's boot devices are
# connected: wait for a new 9pfs device to be Connected, mount it (tag hot), read dom0's file,
# write and read back one of ours (dom0 compares its copy), unmount, tell dom0, and wait for
# `envoy-xl detach` to take the device away.
hot_job() {
    t=$(up) dev=''
    n=0
    while [ $n -lt 1800 ] && [ -z "$dev" ]; do
        for d in /sys/bus/xen/devices/9pfs-*; do
            [ -e "$d" ] || continue
            case "$BOOT_DEVS " in *" $d "*) continue ;; esac
            [ "$(cat "$d/state" 2>/dev/null)" = Connected ] && dev=$d
        done
        [ -n "$dev" ] || { sleep 0.1; n=$((n + 1)); }
    done
    if [ -z "$dev" ]; then
        check H hot_device 1 "no new 9pfs device Connected within 180 s"
        echo "[H] ENVOY-HOT: unmounted"
        return
    fi
    check H hot_device 0 "${dev##*/} $(cat "$dev/nodename") Connected $(elapsed "$t") after boot's devices"
    mkdir -p /mnt/hot
    t=$(up)
    if mount -t 9p -o "trans=xen,version=9p2000.L,msize=$MSIZE" hot /mnt/hot 2>/tmp/mount-H.err; then
        check H hot_mount 0 "$(elapsed "$t")"
        [ "$(cat /mnt/hot/from-dom0.txt 2>&1)" = "put in the hot-plugged share by dom0" ]
        check H hot_read_dom0_file $? "$(head -c 80 /mnt/hot/from-dom0.txt 2>&1)"
        dd if=/dev/urandom of=/tmp/hot.bin bs=65536 count=32 2>/dev/null
        want=$(md5 /tmp/hot.bin)
        cp /tmp/hot.bin /mnt/hot/hot.bin && drop_caches
        got=$(md5 /mnt/hot/hot.bin 2>/dev/null)
        [ "$got" = "$want" ]; check H hot_write_read $? "2 MiB, read back ${got:-nothing}"
        echo "[H] ENVOY-HOST: md5 hot.bin $want"
        umount /mnt/hot; check H hot_umount $?
    else
        check H hot_mount 1 "$(cat /tmp/mount-H.err)"
    fi
    echo "[H] ENVOY-HOT: unmounted"
    t=$(up)
    gone() { [ ! -e "$dev" ]; }
    wait_for 1200 gone; check H hot_device_removed $? "${dev##*/} $(elapsed "$t") after unmounting"
}

# final_probe: after its cases, guest 1 mounts share again and waits for dom0's file
# ctl-after-peer (written once guest 2 is destroyed), then writes and reads a file: envoyd still
# serves this guest after another guest's teardown and the hostile frontends.
final_probe() {
    mkdir -p /mnt/share /mnt/x
    # Guest 2's share, the other way round: its tag is no device of ours, and attach names
    # naming it give nothing of it. (Before share is mounted again: one client per device.)
    bad=''
    mount -t 9p -o trans=xen,version=9p2000.L share2 /mnt/x 2>/dev/null && { bad="$bad tag:share2"; umount /mnt/x; }
    for an in /srv/share2 ../share2 /srv/share/../share2; do
        if mount -t 9p -o "trans=xen,version=9p2000.L,aname=$an" share /mnt/x 2>/dev/null; then
            [ -e /mnt/x/g2-file.txt ] && bad="$bad aname:$an"
            umount /mnt/x
        fi
    done
    if ! mount -t 9p -o "trans=xen,version=9p2000.L,msize=$MSIZE" share /mnt/share 2>/tmp/mount-F.err; then
        check F mount 1 "$(cat /tmp/mount-F.err)"; return
    fi
    for p in /mnt/share/../share2/g2-file.txt /mnt/share/../../srv/share2/g2-file.txt; do
        [ -e "$p" ] && bad="$bad $p"
    done
    [ -z "$(find /mnt/share -name 'g2-*' 2>/dev/null)" ] || bad="$bad find"
    [ -z "$bad" ]; check F isolation_from_guest2 $? "${bad:+reached:$bad}"
    t=$(up)
    there() { [ -e /mnt/share/ctl-after-peer ]; }
    if wait_for 3000 there; then
        line="written by guest 1 after guest 2's destruction, at $(up)"
        echo "$line" > /mnt/share/after-peer.txt && drop_caches
        [ "$(cat /mnt/share/after-peer.txt)" = "$line" ]
        check F served_after_peer_destroy $? "waited $(elapsed "$t") for dom0"
        echo "[F] ENVOY-HOST: md5 after-peer.txt $(md5 /mnt/share/after-peer.txt)"
        echo "[F] ENVOY-HOST: md5 guest1-secret.txt $(md5 /mnt/share/guest1-secret.txt)"
    else
        check F served_after_peer_destroy 1 "dom0's ctl-after-peer did not appear within 300 s"
    fi
    umount /mnt/share; check F umount $?
}

# peer: guest 2. Tries to reach guest 1's files every way a Linux guest can ask for them, then
# writes and reads its own share in a loop until dom0 destroys it.
peer() {
    mkdir -p /mnt/share2 /mnt/x
    # Other tags (guest 1's devices and the hot-plugged one): no such device in this guest.
    # (Before mounting share2: 9pnet_xen keeps one client per device, a second mount of a tag
    # would take over the first one's replies.)
    bad=''
    for tag in share shareu hot; do
        mount -t 9p -o trans=xen,version=9p2000.L "$tag" /mnt/x 2>/dev/null && { bad="$bad $tag"; umount /mnt/x; }
    done
    [ -z "$bad" ]; check P other_tags_refused $? "${bad:+mounted:$bad}"
    # The attach name (Tattach's aname) naming other paths of dom0 must not give them.
    bad=''
    for an in /srv/share /srv / ../share /srv/share2/../share; do
        if mount -t 9p -o "trans=xen,version=9p2000.L,aname=$an" share2 /mnt/x 2>/dev/null; then
            [ -e /mnt/x/guest1-secret.txt ] || [ -e /mnt/x/share/guest1-secret.txt ] && bad="$bad $an"
            umount /mnt/x
        fi
    done
    [ -z "$bad" ]; check P aname_confined $? "${bad:+guest 1 file reached with aname$bad}"
    t=$(up)
    if ! mount -t 9p -o "trans=xen,version=9p2000.L,msize=$MSIZE" share2 /mnt/share2 2>/tmp/mount-P.err; then
        check P mount 1 "$(cat /tmp/mount-P.err)"
        return
    fi
    check P mount 0 "$(elapsed "$t")"
    set -- /sys/bus/xen/devices/9pfs-*
    [ $# = 1 ]; check P one_device $? "$*"
    [ "$(cat /mnt/share2/sub/own.txt 2>&1)" = "guest 2's own file" ]; check P own_share $?
    # '..' every way: the mount's parent is this guest's /mnt, never dom0's /srv.
    bad=''
    for p in /mnt/share2/../share/guest1-secret.txt /mnt/share2/sub/../../share/guest1-secret.txt \
        /mnt/share2/../../srv/share/guest1-secret.txt /mnt/share2/sub/../../../srv/share/guest1-secret.txt; do
        [ -e "$p" ] && bad="$bad $p"
    done
    (cd /mnt/share2/sub && cd ../../.. && [ "$(pwd)" = / ]) || bad="$bad cd"
    [ -z "$(find /mnt/share2 -name 'guest1-*' 2>/dev/null)" ] || bad="$bad find"
    [ -z "$bad" ]; check P dotdot_confined $? "${bad:+reached:$bad}"
    # Symbolic links to guest 1's file: stored as links, resolved in this guest, never in dom0.
    bad=''
    ln -s /srv/share/guest1-secret.txt /mnt/share2/g2-link-abs && ln -s ../share/guest1-secret.txt /mnt/share2/g2-link-rel \
        || bad="$bad ln"
    for l in g2-link-abs g2-link-rel; do
        cat "/mnt/share2/$l" >/dev/null 2>&1 && bad="$bad read:$l"
        (echo "written by guest 2" > "/mnt/share2/$l") 2>/dev/null && bad="$bad write:$l"
    done
    [ "$(readlink /mnt/share2/g2-link-abs)" = /srv/share/guest1-secret.txt ] || bad="$bad readlink"
    (echo "written by guest 2" > /mnt/share2/../g2-escaped.txt) 2>/dev/null
    echo "guest 2 was here" > /mnt/share2/g2-file.txt || bad="$bad own-write"
    [ -z "$bad" ]; check P symlinks_confined $? "$bad"
    echo "[P] ENVOY-HOST: md5 g2-file.txt $(md5 /mnt/share2/g2-file.txt)"
    echo "[P] ENVOY-PEER: ready"
    # Keep the share busy (dom0 runs the hostile frontends meanwhile, then destroys this guest
    # in the middle of it). dom0's file after-hostile asks for proof of service.
    i=0 reported=0 failed=0
    while [ $i -lt 3000 ]; do
        i=$((i + 1))
        if echo "beat $i" > /mnt/share2/hb.tmp && mv /mnt/share2/hb.tmp /mnt/share2/hb \
            && [ "$(cat /mnt/share2/hb)" = "beat $i" ]; then
            if [ $reported = 0 ] && [ -e /mnt/share2/after-hostile ]; then
                check P served_after_hostile 0 "beat $i"; reported=1
            fi
        elif [ $failed = 0 ]; then
            check P heartbeat 1 "beat $i failed"; failed=1
        fi
        sleep 0.2
    done
}

if [ "$role" = peer ]; then
    peer
elif [ "$role" = bench ]; then
    # shellcheck disable=SC2046 # SERVER ROUND MIB READERS
    sh /bench.sh $(echo "$bench" | tr : ' ') "$MSIZE" || echo x > /tmp/fails-B
else
    [ "$extras" = 1 ] && hot_job &
    # The workload's sizes for this nested guest (tests/xen/workload-sizes.env).
    set -a; . /workload-sizes.env; set +a
    # Cases run side by side (each on its own device and share): the guest and dom0 have two
    # vCPUs each, and much of a case is waiting for the other side.
    for c in $(echo "${cases:-L,u}" | tr , ' '); do
        case $c in
            L) run_case L share 9p2000.L sh /workload.sh & ;;
            u) run_case u shareu 9p2000.u sh /workload.sh & ;;
            S) run_case S share 9p2000.L sh /quick-data.sh & ;;
            *) check "$c" case 1 "unknown case $c" ;;
        esac
        [ "$par" = 1 ] || wait
    done
    wait
    [ "$extras" = 1 ] && final_probe
fi
fails=$(cat /tmp/fails-* 2>/dev/null | wc -l)
log "done"
echo "ENVOY-DOMU-DONE failed=$fails uptime=$(up)"
# dom0 destroys the domain once it has read the line above; power off only if it does not.
sleep 60
poweroff -f
