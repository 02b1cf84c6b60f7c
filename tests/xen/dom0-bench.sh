# The Xen benchmark's dom0 side, sourced by dom0-init.sh (as /etc/envoy/dom0-bench.sh) when
# the kernel command line has xbench=ROUNDS:MIB:READERS[:DELAY_MS] (Xen 4.17, with QEMU's
# device model in dom0: build-images.sh 4.17 qemu). envoyd and QEMU's Xen 9pfs backend serve the same dom0
# directory, /srv/bench, to the same kind of guest, in alternating phases of this one boot:
#   envoy  envoyd --xen runs; guest domu-bench-envoy.cfg (envoy-dm as its device model, tag
#          envoy); envoyd is stopped after the guest is destroyed
#   qemu   no envoyd; guest domu-bench-qemu.cfg (QEMU as its device model, serving tag qemu)
# Round R runs both phases, envoy first in odd rounds. Each guest runs one round of
# domu-bench.sh on its tag. (Both at once cannot work on 4.17: every p9 device there is
# type=qemu, and envoyd --xen serves all of them. On 4.20, type=qemu devices are added after
# libxl has started QEMU 10, whose legacy 9pfs backend then fails with "Device 'xen-backend'
# does not support hotplugging": docs/benchmarks.md.)
# Storage: /srv/bench is in dom0's RAM (rootfs), unless DELAY_MS > 0: then it is an ext2 file
# system on a RAM disk behind dm-delay, which holds every read and write DELAY_MS milliseconds
# (storage whose latency is not this machine's CPU: a disk, a remote owner). Either way the
# guest asks dom0 to drop its page cache before each operation (it creates .envoy-drop-caches in
# the share and waits for it to go), so reads reach the storage.
# Besides the guests' ENVOY-BENCH lines, per phase:
#   ENVOY-BENCH-SERVER: round=R server=S cpu_secs=C hwm_kib=K
# (the server process's CPU time, all threads, and peak RSS over its phase). Uses dom0-init.sh's
# helpers (check, log, relay, wait_for, finish).
bench_phase() { # SERVER ROUND
    s=$1 r=$2 pid=''
    if [ "$s" = envoy ]; then
        NO_COLOR=1 envoyd --xen >/run/envoyd.out 2>>/var/log/envoyd.log &
        pid=$!
        served() { grep -q '^envoyd: serving Xen' /run/envoyd.out; }
        wait_for 20 served || { check "bench_envoyd_starts_$r" 1; return; }
    fi
    # A name per phase: a console log per phase (guest-NAME.log), nothing relayed twice.
    name=bench-$s-$r
    log_file=/var/log/xen/console/guest-$name.log
    t0=$(up)
    xl create "/etc/xen/domu-bench-$s.cfg" "name=\"$name\"" \
        "extra=\"console=hvc0 quiet loglevel=4 xrole=bench xbench=$s:$r:$BENCH_MIB:$BENCH_READERS\"" >/run/xl-create.log 2>&1
    rc=$?
    check "bench_xl_create_${s}_$r" $rc "rc=$rc, $(elapsed "$t0")"
    if [ "$rc" = 0 ]; then
        DOMID=$(xl domid "$name" 2>/dev/null)
        [ "$s" = qemu ] && pid=$(xenstore-read "/local/domain/$DOMID/image/device-model-pid" 2>/dev/null)
        relay "$log_file" "domU|"
        done_line() { grep -q 'ENVOY-DOMU-DONE' "$log_file"; }
        wait_for "${xtimeout:-420}" done_line
        check "bench_guest_${s}_$r" $? "$(elapsed "$t0") after xl create"
        sleep 0.3
        for x in $RELAYS; do kill "$x" 2>/dev/null; done; RELAYS=
        # utime + stime of all threads (clock ticks, 100 per second), and the peak resident set.
        ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null)
        hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status" 2>/dev/null)
        echo "ENVOY-BENCH-SERVER: round=$r server=$s cpu_secs=$(awk -v t="${ticks:-0}" 'BEGIN { printf "%.2f", t / 100 }') hwm_kib=${hwm:-0}"
        xl destroy "$name" >/run/xl-destroy.log 2>&1
        check "bench_xl_destroy_${s}_$r" $? "$(tail -n 1 /run/xl-destroy.log)"
    fi
    if [ "$s" = envoy ]; then
        kill "$pid"
        gone() { ! kill -0 "$pid"; }
        wait_for 10 gone || kill -9 "$pid"
    fi
}

# bench_storage DELAY_MS: /srv/bench on a RAM disk behind dm-delay (see above).
bench_storage() {
    modprobe brd rd_nr=1 rd_size=$(((BENCH_MIB + 64) * 1024)) && modprobe dm-delay || return 1
    sectors=$(blockdev --getsz /dev/ram0) || return 1
    # No udev in this dom0: dmsetup makes the device node itself.
    dmsetup --noudevsync create envoy-bench-disk --table "0 $sectors delay /dev/ram0 0 $1" || return 1
    dmsetup --noudevsync mknodes envoy-bench-disk || return 1
    # Debian's kernels mount ext2 with the ext4 driver.
    modprobe crc32c_generic && modprobe ext4 && mke2fs -q /dev/mapper/envoy-bench-disk >/dev/null \
        && mount -t ext4 /dev/mapper/envoy-bench-disk /srv/bench
}

# bench_drops: drop dom0's page cache whenever a guest asks (.envoy-drop-caches in the share).
bench_drops() {
    while :; do
        if [ -e /srv/bench/.envoy-drop-caches ]; then
            sync; echo 3 > /proc/sys/vm/drop_caches; rm -f /srv/bench/.envoy-drop-caches
        fi
        sleep 0.1
    done
}

bench_run() {
    [ "$XENVER" = 4.17 ] || { log "the benchmark runs on Xen 4.17 (see dom0-bench.sh)"; finish bench; }
    [ -x /usr/libexec/xen-qemu-system-i386 ] || { log "no QEMU in this dom0 (build-images.sh 4.17 qemu)"; finish bench; }
    mkdir -p /srv/bench
    # shellcheck disable=SC2034 # BENCH_* are read by bench_phase
    IFS=: read -r rounds BENCH_MIB BENCH_READERS delay_ms <<END
$xbench
END
    if [ "${delay_ms:-0}" -gt 0 ]; then
        bench_storage "$delay_ms"; check bench_storage $? "dm-delay $delay_ms ms over a RAM disk, ext2"
        echo "ENVOY-BENCH-STORAGE: dm-delay $delay_ms ms"
    else
        echo "ENVOY-BENCH-STORAGE: dom0 RAM"
    fi
    bench_drops &
    drops=$!
    r=1
    while [ "$r" -le "$rounds" ]; do
        if [ $((r % 2)) = 1 ]; then order="envoy qemu"; else order="qemu envoy"; fi
        for s in $order; do bench_phase "$s" "$r"; done
        r=$((r + 1))
    done
    kill "$drops"
    ! grep -q 'panicked' /var/log/envoyd.log; check envoyd_no_panic $?
    finish
}
