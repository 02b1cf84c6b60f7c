#!/usr/bin/env bash
# Boot the Xen harness: Xen 4.17 or 4.20 + the busybox dom0 (+ Envoy's binaries) under QEMU
# TCG; dom0 runs envoyd --xen, creates the test domUs and reports (see dom0-init.sh).
#
# usage: tests/xen/run-qemu.sh [-x 4.17|4.20] [-l LOG] [-c CASES] [-p 0|1] [-E 0|1]
#                              [-e 'ENVOYD OPTIONS'] [-t GUEST_SECS] [-T QEMU_SECS] [-s]
#   -x VER     the Xen release: 4.17 (bookworm, type=qemu + envoy-dm; default) or 4.20 (trixie,
#              type=xen_9pfsd, envoyd spawned by libxl as xen-9pfsd)
#   -l LOG     serial console log (Xen + dom0 + the relayed domU consoles); default a temp file
#   -c CASES   guest 1's cases, comma-separated (L = the workload with 9p2000.L on tag share,
#              u = with 9p2000.u on shareu, S = the self-test's quick data check on share)
#   -p 0|1     run the cases one after another (0) or side by side (1, default)
#   -E 0|1     the extras: hot-plug, guest 2, hostile frontends, guest 2's destruction (default 1)
#   -e OPTS    extra envoyd options in dom0 (4.17 only; e.g. --debug-corrupt-reads)
#   -t SECS    how long dom0 waits for the guest's result (default 420)
#   -T SECS    how long QEMU may run at all (default 540)
#   -s         dom0 ends in a shell on the console (interactive debugging: use with -l /dev/stdout)
#   -b R:M:N[:D]  the benchmark instead of the suite (Xen 4.17; needs build-images.sh 4.17 qemu):
#              R rounds of M MiB sequential write/read and an N-reader read, envoyd vs QEMU;
#              D > 0: dom0's files on storage with D ms latency (dm-delay), not in RAM
# env: ENVOYD, ENVOY_DM (default target/debug/{envoyd,envoy-dm}), ENVOY_XL, ENVOY_FE (default
#      target/{release,debug}/{envoy-xl,envoy-xen-frontend} if present; needed for -E 1),
#      ENVOY_XEN_OUT (images, see build-images.sh), XEN_QEMU_CPU (QEMU's -cpu, see below)
# exit: 0 = ENVOY-XEN-RESULT PASS, 1 = FAIL, 2 = no result (timeout, crash), 3 = setup error
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BASE=${ENVOY_XEN_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/envoy-xen}
ENVOYD=${ENVOYD:-$ROOT/target/debug/envoyd}
ENVOY_DM=${ENVOY_DM:-$ROOT/target/debug/envoy-dm}
# envoy-xl and envoy-xen-frontend (dom0's other tools) when built: the release builds if any.
if [ -z "${ENVOY_XL:-}" ]; then
    for ENVOY_XL in "$ROOT"/target/release/envoy-xl "$ROOT"/target/debug/envoy-xl ""; do
        [ -x "$ENVOY_XL" ] && break
    done
fi
if [ -z "${ENVOY_FE:-}" ]; then
    for ENVOY_FE in "$ROOT"/target/release/envoy-xen-frontend "$ROOT"/target/debug/envoy-xen-frontend ""; do
        [ -x "$ENVOY_FE" ] && break
    done
fi
XV=4.17 LOG='' CASES=L,u PAR=1 EXTRAS=1 EOPTS='' GUEST_TMO=420 QEMU_TMO=540 SHELL_AT_END=0 BENCH=''
while getopts "x:l:c:p:E:e:t:T:sb:h" o; do
    case $o in
        x) XV=$OPTARG ;; l) LOG=$OPTARG ;; c) CASES=$OPTARG ;; p) PAR=$OPTARG ;; E) EXTRAS=$OPTARG ;;
        e) EOPTS=$OPTARG ;; t) GUEST_TMO=$OPTARG ;; T) QEMU_TMO=$OPTARG ;; s) SHELL_AT_END=1 ;;
        b) BENCH=$OPTARG EXTRAS=0 ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 3 ;;
    esac
done
OUT=$BASE/$XV
LOG=${LOG:-$(mktemp /tmp/envoy-xen-XXXXXX.log)}
for f in xen vmlinuz dom0.cpio.gz; do
    [ -f "$OUT/$f" ] || { echo "run-qemu: $OUT/$f missing: run tests/xen/build-images.sh $XV" >&2; exit 3; }
done
for b in "$ENVOYD" "$ENVOY_DM"; do
    [ -x "$b" ] || { echo "run-qemu: $b missing: cargo build -p envoy-dom0-agent" >&2; exit 3; }
done
if [ "$EXTRAS" = 1 ]; then
    for b in "$ENVOY_XL" "$ENVOY_FE"; do
        [ -n "$b" ] && [ -x "$b" ] || { echo "run-qemu: envoy-xl/envoy-xen-frontend missing: cargo build -p envoy-tools" >&2; exit 3; }
    done
fi

W=$(mktemp -d /tmp/envoy-xen-run-XXXXXX)
trap 'rm -rf "$W"' EXIT
# Envoy's binaries as a second archive: concatenated cpio archives form one initramfs. Stripped
# (debug info is most of a debug build, and dom0 unpacks this under TCG). They are linked
# against this host's (bookworm) glibc; the 4.17 image carries bookworm's libraries, the 4.20
# image trixie's (newer: old binaries run on it).
P=$W/payload/usr/lib/envoy
mkdir -p "$P"
strip --strip-debug -o "$P/envoyd" "$ENVOYD"
strip --strip-debug -o "$P/envoy-dm" "$ENVOY_DM"
[ -n "$ENVOY_XL" ] && [ -x "$ENVOY_XL" ] && strip --strip-debug -o "$P/envoy-xl" "$ENVOY_XL"
[ -n "$ENVOY_FE" ] && [ -x "$ENVOY_FE" ] && strip --strip-debug -o "$P/envoy-xen-frontend" "$ENVOY_FE"
(cd "$W/payload" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 > "$W/envoy.cpio.gz"
QEMU_DM=''
if [ -n "$BENCH" ]; then
    QEMU_DM=$OUT/qemu-dm.cpio.gz
    [ -f "$QEMU_DM" ] || { echo "run-qemu: $QEMU_DM missing: run tests/xen/build-images.sh $XV qemu" >&2; exit 3; }
fi
cat "$OUT/dom0.cpio.gz" "$W/envoy.cpio.gz" ${QEMU_DM:+"$QEMU_DM"} > "$W/dom0.cpio.gz"

# dom0's command line travels inside QEMU's -initrd list, where ',' separates modules: the
# envoyd options go base64-encoded (no commas), the cases with ':' for ','.
D0ARGS="console=hvc0 earlyprintk=xen quiet loglevel=4 xcases=${CASES//,/:} xpar=$PAR xextras=$EXTRAS xtimeout=$GUEST_TMO xshell=$SHELL_AT_END"
[ -n "$EOPTS" ] && D0ARGS="$D0ARGS xenvoyd=$(printf '%s' "$EOPTS" | base64 -w0)"
[ -n "$BENCH" ] && D0ARGS="$D0ARGS xbench=$BENCH"
case $D0ARGS in *,*) echo "run-qemu: no commas in options, please" >&2; exit 3 ;; esac
# Xen: serial console; dom0 gets 1 GiB and both vCPUs; noreboot: dom0's poweroff ends QEMU.
XENARGS="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=2 loglvl=warning guest_loglvl=warning noreboot"

start=$(date +%s.%N)
set +e
# -cpu max minus:
#   smap   with SMAP, QEMU 7.2 TCG faults dom0's IRET in iret_to_self (a 64-bit PV kernel runs
#          in ring 3 on user pages);
#   xsave  (and with it AVX): with it, processes in dom0 die at random under load — busybox
#          applets ("Segmentation fault", NULL+8), envoyd (SIGSEGV on a pointer with its upper
#          half all ones, SIGABRT from glibc's heap checks) — in every run of ~3 minutes; with
#          -xsave none did. Xen context-switches the vector state with XSAVE*; QEMU 7.2 is the
#          first release emulating AVX. (docs/xen-harness.md has the evidence.)
#   monitor Xen then idles with HLT and wakes CPUs with IPIs (not measured to matter).
# thread=multi: one host thread per vCPU. XEN_QEMU_CPU overrides, for experiments.
CPU=${XEN_QEMU_CPU:-max,-smap,-xsave,-monitor}
timeout "$QEMU_TMO" qemu-system-x86_64 -M pc -accel tcg,thread=multi -cpu "$CPU" -m 1536 -smp 2 \
    -nodefaults -no-user-config -display none -no-reboot -monitor none \
    -chardev file,id=ser0,path="$LOG" -serial chardev:ser0 \
    -kernel "$OUT/xen" -append "$XENARGS" \
    -initrd "$OUT/vmlinuz $D0ARGS,$W/dom0.cpio.gz" </dev/null >"$W/qemu.out" 2>&1
qrc=$?
set -e
wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "run-qemu: xen=$XV cases=$CASES extras=$EXTRAS wall=${wall}s qemu-rc=$qrc log=$LOG" >&2
res=$(tr -d '\r' < "$LOG" | grep -a '^ENVOY-XEN-RESULT: ' | tail -n 1)
case $res in
    "ENVOY-XEN-RESULT: PASS"*) exit 0 ;;
    "ENVOY-XEN-RESULT: FAIL"*) exit 1 ;;
esac
cat "$W/qemu.out" >&2
exit 2
