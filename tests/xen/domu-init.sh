#!/bin/sh
# /init of the Xen harness's PV domU (busybox): the Linux 9pfs Xen frontend (9pnet_xen) against
# envoyd in dom0, running the VM suite's workload (tests/vm/workload.sh) on each share.
#
# Kernel command line: xcases=L,u (L: tag share with 9p2000.L, u: tag shareu with 9p2000.u,
# S: a quick data check on share, for the self-test); xpar=0 runs the cases one after another.
# Everything goes to hvc0, which xenconsoled logs in dom0 (only /init's output reaches that
# log, not the kernel's); dom0 relays it to the serial console. Lines:
#   ENVOY-XENBUS: 9pfs-N nodename=... state=...      the frontends' xenbus view after loading
#   [CASE] ENVOY-CHECK: PASS|FAIL name ...            mount and the workload's checks
#   [CASE] ENVOY-HOST: md5 PATH HASH                  files dom0 should checksum
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
log "domU init, kernel $(uname -r), cmdline: $(cat /proc/cmdline)"

# Loading 9pnet_xen blocks until every 9pfs device is Connected (xenbus waits for the devices
# it probed, up to 300 s), so its duration is the backend handshake's.
t0=$(up)
modprobe 9pnet_xen; rc=$?
log "9pnet_xen loaded (rc=$rc) in $(elapsed "$t0")"
modprobe 9p || log "modprobe 9p failed"
for d in /sys/bus/xen/devices/9pfs-*; do
    [ -e "$d" ] || { echo "ENVOY-XENBUS: no 9pfs device"; continue; }
    echo "ENVOY-XENBUS: ${d##*/} nodename=$(cat "$d/nodename") state=$(cat "$d/state")"
done

# run_case CASE TAG VERSION COMMAND...: mount, COMMAND in the mount, unmount; every line is
# prefixed [CASE]. The number of failed checks goes to /tmp/fails-CASE. Cases may run side by
# side, so each runs in its own mount namespace with a private /tmp (the workload keeps its
# random blocks in /tmp).
run_case() {
    c=$1; tag=$2; ver=$3; shift 3
    mkdir -p "/mnt/$tag"
    t=$(up)
    if ! mount -t 9p -o "trans=xen,version=$ver,msize=524288" "$tag" "/mnt/$tag" 2>"/tmp/mount-$c.err"; then
        echo "[$c] ENVOY-CHECK: FAIL mount: $(cat "/tmp/mount-$c.err") ($(elapsed "$t"))"
        echo 1 > "/tmp/fails-$c"
        return
    fi
    echo "[$c] ENVOY-CHECK: PASS mount ($(grep " /mnt/$tag " /proc/mounts | cut -d' ' -f4), $(elapsed "$t"))"
    : > "/tmp/out-$c"
    # read is a builtin: each line is printed as soon as the workload writes it.
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare -m sh -c 'mount -t tmpfs tmpfs /tmp && cd "$0" && exec "$@" 2>&1' "/mnt/$tag" "$@" \
        | while IFS= read -r l; do echo "[$c] $l"; echo "$l" >> "/tmp/out-$c"; done
    f=$(grep -c '^ENVOY-CHECK: FAIL' "/tmp/out-$c")
    t=$(up)
    if umount "/mnt/$tag"; then echo "[$c] ENVOY-CHECK: PASS umount ($(elapsed "$t"))"
    else echo "[$c] ENVOY-CHECK: FAIL umount"; f=$((f + 1)); fi
    echo "$f" > "/tmp/fails-$c"
}

cases='' par=1
# shellcheck disable=SC2013 # words, not lines
for a in $(cat /proc/cmdline); do
    case $a in xcases=*) cases=${a#xcases=} ;; xpar=*) par=${a#xpar=} ;; esac
done
# Cases run side by side (each on its own device and share): the guest and dom0 have two vCPUs
# each, and much of a case is waiting for the other side.
for c in $(echo "${cases:-L,u}" | tr , ' '); do
    case $c in
        L) run_case L share 9p2000.L sh /workload.sh & ;;
        u) run_case u shareu 9p2000.u sh /workload.sh & ;;
        S) run_case S share 9p2000.L sh /quick-data.sh & ;;
        *) echo "[$c] ENVOY-CHECK: FAIL case: unknown case $c"; echo 1 > "/tmp/fails-$c" ;;
    esac
    [ "$par" = 1 ] || wait
done
wait
fails=0
for f in /tmp/fails-*; do [ -f "$f" ] && fails=$((fails + $(cat "$f"))); done
log "done"
echo "ENVOY-DOMU-DONE failed=$fails uptime=$(up)"
# dom0 destroys the domain once it has read the line above; power off only if it does not.
sleep 60
poweroff -f
