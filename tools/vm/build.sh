#!/usr/bin/env bash
# Build Envoy's test-VM kernel and base initramfs from Debian packages only.
#
#   tools/vm/build.sh            -> $ENVOY_VM_OUT/vmlinux (PVH ELF), $ENVOY_VM_OUT/base.cpio.gz
#
# The base holds busybox-static, the guest /init (tools/vm/init), fdrelay (trans=fd over a
# virtio-serial port) and the kernel modules for 9P
# (tcp, fd, virtio), virtio net/console, SCTP and veth, with their dependencies. Suites add their own
# files as a payload archive at boot (run-vm.sh -P DIR). Installs missing Debian packages
# (apt-get update first). The kernel .deb is downloaded and unpacked, never installed.
# Outputs are reused while the kernel package and the inputs are unchanged.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${ENVOY_VM_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/envoy-vm}
KPKG=${KPKG:-linux-image-amd64}   # not linux-image-cloud-amd64: no 9P there
mkdir -p "$OUT/debs"

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static)
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
command -v readelf >/dev/null || need+=(binutils)
command -v file >/dev/null || need+=(file)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
[ -f /usr/share/qemu/qboot.rom ] || need+=(qemu-system-data)
if [ ${#need[@]} -gt 0 ]; then
    echo "build.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# 1. Kernel: resolve the metapackage to today's ABI package (old debs leave the mirror).
KREAL=$(apt-cache depends "$KPKG" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$KREAL" ]; then apt-get update -qq; KREAL=$(apt-cache depends "$KPKG" | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); fi
KVER=${KREAL#linux-image-}
STAMP="$KREAL $(cat "$HERE/init" "$HERE/fdrelay.c" "$0" | sha256sum | cut -c1-16)"
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] && [ -f "$OUT/vmlinux" ] && [ -f "$OUT/base.cpio.gz" ]; then
    echo "build.sh: up to date ($KREAL) in $OUT" >&2
    exit 0
fi
echo "build.sh: kernel package $KREAL" >&2
KROOT=$OUT/kernel-$KVER
if [ ! -f "$KROOT/boot/vmlinuz-$KVER" ]; then
    (cd "$OUT/debs" && apt-get download "$KREAL" >/dev/null 2>&1) || { echo "build.sh: apt-get download $KREAL failed" >&2; exit 1; }
    rm -rf "$KROOT"; mkdir -p "$KROOT"
    dpkg-deb -x "$OUT/debs/${KREAL}_"*.deb "$KROOT"
    rm -f "$OUT/debs/${KREAL}_"*.deb
fi
[ -f "$KROOT/lib/modules/$KVER/modules.dep" ] || depmod -b "$KROOT" "$KVER"   # the deb has none

# Boot the uncompressed ELF through its PVH note: skips real-mode setup and in-guest xz
# decompression (~3.5 s under TCG).
python3 - "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinux.xz" <<'PY'
import sys
d = open(sys.argv[1], 'rb').read()
off = d.find(b'\xfd7zXZ\x00')
assert off > 0, "no xz stream in the bzImage"
open(sys.argv[2], 'wb').write(d[off:])
PY
xz -dc --single-stream "$OUT/vmlinux.xz" > "$OUT/vmlinux"; rm -f "$OUT/vmlinux.xz"
readelf -n "$OUT/vmlinux" | grep -q 'Unknown note type: (0x00000012)' || echo "build.sh: warning: no PVH note" >&2

# 2. Root file system.
R=$OUT/rootfs; rm -rf "$R"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,mnt/9p,etc,root,lib/modules}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
install -m 0755 "$HERE/init" "$R/init"
gcc -static -O2 -Wall -o "$R/bin/fdrelay" "$HERE/fdrelay.c"
# root and Debian's nobody/nogroup: the kernel's 9P client attaches as "nobody" first.
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"

# 3. Modules and their dependencies, resolved by the host's modprobe against the unpacked tree.
MODS="9p 9pnet 9pnet_fd 9pnet_virtio netfs fscache virtio_pci virtio_net virtio_console sctp sctp_diag crc32c_generic veth"
MD=$R/lib/modules/$KVER; mkdir -p "$MD"
for m in $MODS; do
    modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | sort -u | while read -r f; do
    rel=${f#"$KROOT"/lib/modules/$KVER/}
    mkdir -p "$MD/$(dirname "$rel")"; cp "$f" "$MD/$rel"
done
cp "$KROOT/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$MD/"
depmod -b "$R" "$KVER"

(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --reproducible -R 0:0 --quiet) | gzip -6n > "$OUT/base.cpio.gz"
rm -rf "$R"
echo "$STAMP" > "$OUT/stamp"
echo "build.sh: $OUT/vmlinux, $OUT/base.cpio.gz ($(du -h "$OUT/base.cpio.gz" | cut -f1), $(find "$KROOT/lib/modules" -name '*.ko' | wc -l) modules available)" >&2
