#!/usr/bin/env bash
# Build the images of the Xen end-to-end harness from Debian packages only.
#
#   tests/xen/build-images.sh   -> $ENVOY_XEN_OUT (default ~/.cache/envoy-xen):
#       xen              the hypervisor (Debian's xen-hypervisor-4.17-amd64, gunzipped: QEMU's
#                        multiboot loader reads ELF, not gzip)
#       vmlinuz          the dom0 kernel (the Debian kernel the VM harness uses)
#       dom0.cpio.gz     busybox dom0: Xen modules, xl, cxenstored, xenconsoled, xen-init-dom0,
#                        the xenstore tools (with the libraries ldd lists), tests/xen/dom0-init.sh
#                        as /init, the domU config(s), and under /guest the domU kernel and
#                        initramfs. No Envoy binaries: run-qemu.sh appends those as a second
#                        archive at boot, so rebuilding envoyd does not rebuild this.
#       domu.cpio.gz     busybox PV domU: the 9p modules, tests/xen/domu-init.sh as /init, the VM
#                        suite's workload (tests/vm/workload.sh, mmapcat)
#
# The hypervisor and kernel .debs are downloaded and unpacked, never installed. Host packages
# whose binaries are copied (xen-utils-4.17, xenstore-utils, busybox-static) are installed with
# apt if missing. Outputs are reused while every input (packages, scripts, workload) is the same.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${ENVOY_XEN_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/envoy-xen}
VMOUT=${ENVOY_VM_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/envoy-vm}
XENPKG=xen-hypervisor-4.17-amd64
XB=/usr/lib/xen-4.17/bin
mkdir -p "$OUT/debs"

need=()
[ -x "$XB/xl" ] && [ -x "$XB/xenstored" ] || need+=(xen-utils-4.17)
command -v xenstore >/dev/null || need+=(xenstore-utils)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
for t in cpio:cpio depmod:kmod file:file gcc:gcc strip:binutils; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "build-images: installing ${need[*]}" >&2
    apt-get update -qq
    # xen-utils' postinst complains that there is no hypervisor: harmless here.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# 1. The kernel: the VM harness resolves, downloads and unpacks it (and caches it) already.
"$ROOT/tools/vm/build.sh" >&2
KROOT=$(find "$VMOUT" -maxdepth 1 -name "kernel-*" -type d | sort -V | tail -n 1)
KVER=${KROOT##*/kernel-}
[ -f "$KROOT/boot/vmlinuz-$KVER" ] || { echo "build-images: no kernel in $KROOT" >&2; exit 1; }

# 2. The hypervisor .deb (version of today's candidate; old ones leave the mirror).
XENVER=$(apt-cache policy "$XENPKG" 2>/dev/null | awk '/Candidate:/{print $2}')
if [ -z "$XENVER" ] || [ "$XENVER" = "(none)" ]; then
    apt-get update -qq
    XENVER=$(apt-cache policy "$XENPKG" | awk '/Candidate:/{print $2}')
fi
UTILSVER=$(dpkg-query -W -f '${Version}' xen-utils-4.17)
STAMP="$KVER $XENVER $UTILSVER $(cat "$0" "$HERE"/dom0-init.sh "$HERE"/domu-init.sh "$HERE"/quick-data.sh "$HERE"/*.cfg \
    "$ROOT"/tests/vm/workload.sh "$ROOT"/tests/vm/mmapcat.c | sha256sum | cut -c1-16)"
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] \
    && [ -f "$OUT/xen" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/dom0.cpio.gz" ]; then
    echo "build-images: up to date in $OUT" >&2
    exit 0
fi
echo "build-images: kernel $KVER, $XENPKG $XENVER, xen-utils $UTILSVER" >&2
XROOT=$OUT/xen-$XENVER
if [ ! -f "$XROOT/boot/xen-4.17-amd64.gz" ]; then
    rm -f "$OUT/debs/${XENPKG}_"*.deb
    (cd "$OUT/debs" && apt-get download "$XENPKG=$XENVER" >/dev/null 2>&1) \
        || { echo "build-images: apt-get download $XENPKG=$XENVER failed" >&2; exit 1; }
    rm -rf "$XROOT"; mkdir -p "$XROOT"
    dpkg-deb -x "$OUT/debs/${XENPKG}_"*.deb "$XROOT"
    rm -f "$OUT/debs/${XENPKG}_"*.deb
fi
zcat "$XROOT/boot/xen-4.17-amd64.gz" > "$OUT/xen.tmp" && mv "$OUT/xen.tmp" "$OUT/xen"
cp "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"

# base_root DIR: busybox and the usual directories. `busybox --list` names busybox itself: a
# symlink busybox -> busybox would loop (ELOOP at /init).
base_root() {
    local r=$1
    rm -rf "$r"; mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,mnt}
    cp /bin/busybox "$r/bin/busybox"
    for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
    # nobody: Linux's 9p client attaches first as user "nobody" (no numeric id); envoyd looks
    # the name up in dom0's user database, as on any real dom0.
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
}
# add_modules DIR MODULE...: the modules and their dependencies (resolved by the host's modprobe
# against the unpacked kernel), with depmod's index so busybox modprobe loads them in order.
add_modules() {
    local r=$1; shift
    local md=$r/lib/modules/$KVER m f rel
    mkdir -p "$md"
    for m in "$@"; do
        modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
    done | sort -u | while read -r f; do
        rel=${f#"$KROOT"/lib/modules/"$KVER"/}
        mkdir -p "$md/$(dirname "$rel")"; cp "$f" "$md/$rel"
    done
    cp "$KROOT/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$md/"
    depmod -b "$r" "$KVER"
}
# copy_bin DIR FILE...: binaries and the shared libraries ldd lists for them.
copy_bin() {
    local r=$1 f lib; shift
    for f in "$@"; do
        mkdir -p "$r$(dirname "$f")"; cp -L "$f" "$r$f"
        ldd "$f" | grep -oE '/[^ ]+' | while read -r lib; do
            [ -e "$r$lib" ] && continue
            mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"
        done
    done
}
pack() { # DIR OUTPUT: newc cpio, gzip -1 (the guest decompresses it under TCG: fast beats small)
    (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --reproducible -R 0:0 --quiet) \
        | gzip -1n > "$2.tmp"
    mv "$2.tmp" "$2"
}

W=$(mktemp -d /tmp/envoy-xenbuild-XXXXXX)
trap 'rm -rf "$W"' EXIT

# 3. domU: busybox, the 9p-over-Xen modules, /init, the workload.
DU=$W/domu
base_root "$DU"
add_modules "$DU" 9pnet_xen 9p
install -m 0755 "$HERE/domu-init.sh" "$DU/init"
install -m 0755 "$ROOT/tests/vm/workload.sh" "$DU/workload.sh"
install -m 0755 "$HERE/quick-data.sh" "$DU/quick-data.sh"
gcc -static -O2 -Wall -o "$DU/bin/mmapcat" "$ROOT/tests/vm/mmapcat.c"
pack "$DU" "$OUT/domu.cpio.gz"

# 4. dom0: busybox, Xen modules (the rest of dom0 support is built into Debian's kernel), the
# toolstack and its libraries, /init, the guest.
D0=$W/dom0
base_root "$D0"
add_modules "$D0" xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs
copy_bin "$D0" "$XB/xl" "$XB/xenstored" "$XB/xenconsoled" "$XB/xen-init-dom0" /usr/bin/xenstore
# envoyd and envoy-dm (appended at boot) need these beyond what the Xen tools pull in.
copy_bin "$D0" "$(ldd /bin/true | grep -oE '/[^ ]*libc\.so\.6')"
for lib in libgcc_s.so.1 libm.so.6; do
    src=$(ldconfig -p | awk -v l="$lib" '$1==l && /x86-64/{print $NF; exit}')
    [ -n "$src" ] && mkdir -p "$D0$(dirname "$src")" && cp -L "$src" "$D0$src"
done
# The xenstore-* tools are one multi-call binary dispatching on its name.
for t in read write ls list exists rm chmod watch; do ln -sf xenstore "$D0/usr/bin/xenstore-$t"; done
find "$D0/usr/lib/xen-4.17" "$D0/lib" "$D0/usr/lib" -type f \( -name '*.so*' -o -perm -u+x \) \
    -exec strip --strip-unneeded {} + 2>/dev/null || true
mkdir -p "$D0"/etc/xen "$D0"/var/lib/xen "$D0"/var/lib/xenstored "$D0"/var/log/xen/console \
    "$D0"/guest "$D0"/usr/lib/envoy
ln -s ../run "$D0/var/run"   # xenstored, xl and envoy-dm's QMP sockets live in /var/run/...
# The shares: each holds the suite's host-made 5,000-entry directory and its expected listing
# (made here, not in dom0 under TCG, where 10,000 creates would cost seconds).
for s in share shareu; do
    mkdir -p "$D0/srv/$s/big5000"
    (cd "$D0/srv/$s/big5000" && for i in $(seq -w 0 4999); do : > "entry-$i-with-a-longer-name"; done)
    # shellcheck disable=SC2012 # plain names; the same listing the VM suite makes
    (cd "$D0/srv/$s" && ls big5000 | LC_ALL=C sort | sed 's|^|big5000/|' | md5sum | cut -d' ' -f1) > "$D0/srv/$s/big5000.expected"
done
cp /etc/xen/xl.conf "$D0/etc/xen/"
install -m 0644 "$HERE"/*.cfg "$D0/etc/xen/"
install -m 0755 "$HERE/dom0-init.sh" "$D0/init"
cp "$KROOT/boot/vmlinuz-$KVER" "$D0/guest/vmlinuz"
cp "$OUT/domu.cpio.gz" "$D0/guest/domu.cpio.gz"
pack "$D0" "$OUT/dom0.cpio.gz"

echo "$STAMP" > "$OUT/stamp"
echo "build-images: $OUT: xen $(du -h "$OUT/xen" | cut -f1), dom0.cpio.gz $(du -h "$OUT/dom0.cpio.gz" | cut -f1), domu.cpio.gz $(du -h "$OUT/domu.cpio.gz" | cut -f1)" >&2
