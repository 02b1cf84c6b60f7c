#!/usr/bin/env bash
# Boot Envoy's test VM (Debian kernel + busybox initramfs, QEMU TCG), mount a 9P server of the
# host inside it, run a command there, and report.
#
# usage: tools/vm/run-vm.sh [options] -- 'shell command run in the guest (cwd = the mount)'
#   -t MODE   tcp     trans=tcp via QEMU user networking: guest 10.0.2.2:PORT = host 127.0.0.1:PORT
#             fd      trans=fd over a virtio-serial port; QEMU connects the port to unix socket -u
#             none    no mount (the command runs in /)
#   -v VER    version= (9p2000.L default | 9p2000.u | 9p2000)
#   -s MSIZE  msize= (default 524288)
#   -o OPTS   extra mount options
#   -p PORT   host TCP port of the server (tcp mode)
#   -u PATH   host unix socket of the server (fd mode)
#   -P DIR    payload: DIR's contents are added at / of the guest (scripts, static helpers)
#   -x ARGS   extra kernel command line (e.g. evmods=sctp evnet=1)
#   -M MIB    guest RAM (default 256)   -T SECS  timeout (default 240)   -l FILE serial log
# env: ENVOY_VM_OUT (build outputs, see build.sh)
# exit: 0 = the guest printed PASS, 1 = FAIL, 2 = no result (timeout or crash), 3 = setup error
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${ENVOY_VM_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/envoy-vm}
MODE=tcp VER=9p2000.L MSIZE=524288 OPTS= PORT= USOCK= PAYLOAD= XAPPEND= MEM=256 TMO=240 LOG=
while getopts "t:v:s:o:p:u:P:x:M:T:l:h" o; do
    case $o in
        t) MODE=$OPTARG ;; v) VER=$OPTARG ;; s) MSIZE=$OPTARG ;; o) OPTS=$OPTARG ;;
        p) PORT=$OPTARG ;; u) USOCK=$OPTARG ;; P) PAYLOAD=$OPTARG ;; x) XAPPEND=$OPTARG ;;
        M) MEM=$OPTARG ;; T) TMO=$OPTARG ;; l) LOG=$OPTARG ;;
        *) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 3 ;;
    esac
done
shift $((OPTIND - 1))
CMD=${*:-ls -la .}
LOG=${LOG:-$(mktemp /tmp/envoy-vm-XXXXXX.log)}
[ -f "$OUT/vmlinux" ] && [ -f "$OUT/base.cpio.gz" ] || { echo "run-vm: run tools/vm/build.sh first" >&2; exit 3; }

WORK=$(mktemp -d /tmp/envoy-vm-work-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
INITRD=$OUT/base.cpio.gz
if [ -n "$PAYLOAD" ]; then
    [ -d "$PAYLOAD" ] || { echo "run-vm: payload $PAYLOAD is not a directory" >&2; exit 3; }
    # Concatenated cpio archives form one initramfs.
    (cd "$PAYLOAD" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 > "$WORK/payload.cpio.gz"
    cat "$OUT/base.cpio.gz" "$WORK/payload.cpio.gz" > "$WORK/initrd.cpio.gz"
    INITRD=$WORK/initrd.cpio.gz
fi

APPEND="console=ttyS0 quiet panic=-1 evmode=$MODE evver=$VER evmsize=$MSIZE"
QDEV=()
case $MODE in
    tcp)
        [ -n "$PORT" ] || { echo "run-vm: -t tcp needs -p PORT" >&2; exit 3; }
        QDEV=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0)
        APPEND="$APPEND evport=$PORT" ;;
    fd)
        [ -S "$USOCK" ] || { echo "run-vm: -t fd needs -u SOCKET (listening)" >&2; exit 3; }
        QDEV=(-chardev "socket,id=evc,path=$USOCK"
              -device virtio-serial-pci,id=vser0 -device virtserialport,bus=vser0.0,chardev=evc,name=envoy) ;;
    none)
        case " $XAPPEND " in *" evnet=1 "*) QDEV=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0) ;; esac ;;
    *) echo "run-vm: bad mode $MODE" >&2; exit 3 ;;
esac
[ -n "$OPTS" ] && APPEND="$APPEND evopts=$OPTS"
APPEND="$APPEND evcmd=$(printf '%s' "$CMD" | base64 -w0) $XAPPEND"
[ ${#APPEND} -lt 2000 ] || { echo "run-vm: command too long for the kernel command line; put it in the payload" >&2; exit 3; }

BIOS=()
[ -f /usr/share/qemu/qboot.rom ] && BIOS=(-bios /usr/share/qemu/qboot.rom)
start=$(date +%s)
timeout "$TMO" qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
    -M pc -accel tcg -cpu max -m "$MEM" -smp 1 "${BIOS[@]}" \
    -kernel "$OUT/vmlinux" -initrd "$INITRD" -append "$APPEND" \
    -chardev file,id=ser0,path="$LOG" -serial chardev:ser0 \
    "${QDEV[@]}" </dev/null >"$LOG.qemu" 2>&1
qrc=$?
echo "run-vm: mode=$MODE ver=$VER msize=$MSIZE wall=$(( $(date +%s) - start ))s qemu-rc=$qrc log=$LOG" >&2
grep -q '^ENVOY-VM-RESULT: PASS' "$LOG" && exit 0
grep -q '^ENVOY-VM-RESULT: FAIL' "$LOG" && exit 1
cat "$LOG.qemu" >&2
exit 2
