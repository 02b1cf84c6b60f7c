#!/bin/sh
# The Xen benchmark's guest side (installed as /bench.sh in the domU image; run by domu-init.sh
# with xrole=bench): one round on the 9pfs share tagged SERVER (dom0's /srv/bench, served by
# envoyd or by QEMU's Xen 9pfs backend: dom0-bench.sh), mounted over trans=xen, 9p2000.L:
#   seq_write   dd a MIB MiB file (seq.bin) from /dev/zero, 1 MiB blocks, fsync at the end
#   seq_read    dd it back to /dev/null, 1 MiB blocks
#   par_read    READERS dd's at once, each reading its 1/READERS of seq.bin
# Page cache dropped before every operation, here and in dom0 (asked for by creating
# .envoy-drop-caches in the share; dom0-bench.sh removes it when done); 9p's default cache=none
# sends every read and write to the server anyway. Lines:
#   ENVOY-BENCH: round=R server=S op=OP bytes=B secs=T
#   [B] ENVOY-CHECK: PASS|FAIL ...      (mount, byte counts)
# usage: domu-bench.sh SERVER ROUND MIB READERS MSIZE
server=$1 round=$2 mib=${3:-256} readers=${4:-4} msize=${5:-524288}
fails=0
check() {
    if [ "$2" = 0 ]; then echo "[B] ENVOY-CHECK: PASS $1${3:+ ($3)}"
    else echo "[B] ENVOY-CHECK: FAIL $1: ${3:-failed}"; fails=$((fails + 1)); fi
}
now() { cut -d' ' -f1 /proc/uptime; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# dom0_drop_caches MOUNT: ask dom0 to drop its page cache and wait (at most 20 s) until it has.
dom0_drop_caches() {
    : > "$1/.envoy-drop-caches" || return 1
    n=0
    while [ -e "$1/.envoy-drop-caches" ] && [ $n -lt 200 ]; do sleep 0.1; n=$((n + 1)); done
    [ ! -e "$1/.envoy-drop-caches" ]
}
# bytes_of FILE: what busybox dd (bs=1M) says it copied: "F+P records out" is F whole MiB
# (a partial record P makes the count wrong on purpose: never expected here).
bytes_of() {
    sed -n 's/^\([0-9]*\)+\([0-9]*\) records out$/\1 \2/p' "$1" | tail -n 1 \
        | awk '{ if ($2 == 0) print $1 * 1048576; else print -1 }'
}
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

mkdir -p "/mnt/$server"
mount -t 9p -o "trans=xen,version=9p2000.L,msize=$msize" "$server" "/mnt/$server" 2>/tmp/mount.err
check "mount_$server" $? "$(grep " /mnt/$server " /proc/mounts | cut -d' ' -f4)$(cat /tmp/mount.err)"
[ "$fails" = 0 ] || exit 1
total=$((mib * 1048576))
part=$((mib / readers))

# op SERVER OP ROUND: one timed operation, one ENVOY-BENCH line.
op() {
    m=/mnt/$1
    dom0_drop_caches "$m" || check "dom0_drop_caches_$1_round$3" 1 "dom0 did not drop its cache"
    drop_caches
    case $2 in
        seq_write)
            t=$(now)
            dd if=/dev/zero of="$m/seq.bin" bs=1M count="$mib" conv=fsync 2>/tmp/dd.err
            rc=$? t1=$(now) got=$(bytes_of /tmp/dd.err)
            ;;
        seq_read)
            t=$(now)
            dd if="$m/seq.bin" of=/dev/null bs=1M 2>/tmp/dd.err
            rc=$? t1=$(now) got=$(bytes_of /tmp/dd.err)
            ;;
        par_read)
            t=$(now) i=0 pids=''
            while [ $i -lt "$readers" ]; do
                dd if="$m/seq.bin" of=/dev/null bs=1M skip=$((i * part)) count="$part" 2>"/tmp/dd.err$i" &
                pids="$pids $!" i=$((i + 1))
            done
            rc=0
            for p in $pids; do wait "$p" || rc=$?; done
            t1=$(now) got=0 i=0
            while [ $i -lt "$readers" ]; do
                b=$(bytes_of "/tmp/dd.err$i")
                got=$((got + ${b:-0})); i=$((i + 1))
            done
            ;;
    esac
    if [ "$rc" != 0 ] || [ "$got" != "$total" ]; then
        check "${2}_$1_round$3" 1 "rc=$rc, $got of $total bytes: $(tail -n 1 /tmp/dd.err)"
    fi
    echo "ENVOY-BENCH: round=$3 server=$1 op=$2 bytes=$got secs=$(secs "$t" "$t1")"
}

for o in seq_write seq_read par_read; do op "$server" "$o" "$round"; done
umount "/mnt/$server"
check done "$fails" "round $round on $server"
exit "$fails"
