#!/usr/bin/env bash
# Build the images of the Xen end-to-end harness from Debian packages only.
#
#   tests/xen/build-images.sh [4.17|4.20] [qemu]   (default 4.17)
#       -> $ENVOY_XEN_OUT/<version>/ (ENVOY_XEN_OUT default ~/.cache/envoy-xen):
#       xen              the hypervisor, gunzipped (QEMU's multiboot loader reads ELF, not gzip)
#       vmlinuz          the dom0 (and domU) kernel
#       dom0.cpio.gz     busybox dom0: the Xen modules, xl, cxenstored, xenconsoled,
#                        xen-init-dom0, the xenstore tools (with the libraries ldd lists),
#                        tests/xen/dom0-init.sh as /init, the guests' configs, the shares, and
#                        under /guest the domU kernel and initramfs. No Envoy binaries:
#                        run-qemu.sh appends those as a second archive at boot, so rebuilding
#                        envoyd does not rebuild this.
#       domu.cpio.gz     busybox PV domU: the 9p modules, tests/xen/domu-init.sh as /init, the
#                        VM suite's workload (tests/vm/workload.sh, mmapcat) and its sizes here
#       qemu-dm.cpio.gz  with `qemu` only (and only that): QEMU's Xen device model and dmsetup for dom0,
#                        the benchmark's peer (tools/bench/xen-9pfs.sh)
#
# 4.17 (Debian bookworm, the host's release): xen-hypervisor-4.17-amd64 (unpacked, never
#   installed), the VM harness's bookworm kernel (tools/vm/build.sh), the host's xen-utils-4.17,
#   xenstore-utils and busybox-static (installed with apt if missing). Guests: xl type=qemu 9pfs
#   devices, envoy-dm as their device model, envoyd started by dom0's /init.
# 4.20 (Debian trixie): a trixie minbase tree (debootstrap, cached in $ENVOY_XEN_OUT/trixie-root)
#   gives xen-utils-4.20, xenstore-utils and busybox-static (ldd runs in the chroot, so no
#   bookworm library is mixed in); xen-hypervisor-4.20-amd64 and trixie's kernel are fetched with
#   apt-get download inside the chroot and unpacked (its .ko.xz modules decompressed: busybox
#   modprobe needs plain .ko). Guests: xl type=xen_9pfsd; /usr/lib/xen-4.20/bin/xen-9pfsd is a
#   symlink to envoyd, which libxl spawns itself.
# Outputs are reused while every input (packages, scripts, workload) is the same.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
XV=${1:-4.17}
case $XV in 4.17|4.20) ;; *) echo "usage: $0 [4.17|4.20] [qemu]" >&2; exit 3 ;; esac
BASE=${ENVOY_XEN_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/envoy-xen}
OUT=$BASE/$XV
VMOUT=${ENVOY_VM_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/envoy-vm}
mkdir -p "$OUT" "$BASE/debs"

need=()
if [ "$XV" = 4.17 ]; then
    [ -x /usr/lib/xen-4.17/bin/xl ] && [ -x /usr/lib/xen-4.17/bin/xenstored ] || need+=(xen-utils-4.17)
    command -v xenstore >/dev/null || need+=(xenstore-utils)
    [ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static)
else
    command -v debootstrap >/dev/null || need+=(debootstrap)
fi
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
for t in cpio:cpio depmod:kmod file:file gcc:gcc strip:binutils xz:xz-utils; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "build-images: installing ${need[*]}" >&2
    apt-get update -qq
    # xen-utils' postinst complains that there is no hypervisor: harmless here.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# --- the packages of each release: sets KROOT KVER (unpacked kernel, depmod'ed), XENGZ (the
# hypervisor), SYSROOT (where the toolstack binaries come from: / or the trixie chroot), XB
# (their directory), BUSYBOX, and PKGS (the versions, for the stamp).
if [ "$XV" = 4.17 ]; then
    XENPKG=xen-hypervisor-4.17-amd64
    # The kernel: the VM harness resolves, downloads and unpacks it (and caches it) already.
    "$ROOT/tools/vm/build.sh" >&2
    KROOT=$(find "$VMOUT" -maxdepth 1 -name "kernel-*" -type d | sort -V | tail -n 1)
    KVER=${KROOT##*/kernel-}
    # The hypervisor .deb (version of today's candidate; old ones leave the mirror).
    XENVER=$(apt-cache policy "$XENPKG" 2>/dev/null | awk '/Candidate:/{print $2}')
    if [ -z "$XENVER" ] || [ "$XENVER" = "(none)" ]; then
        apt-get update -qq
        XENVER=$(apt-cache policy "$XENPKG" | awk '/Candidate:/{print $2}')
    fi
    XROOT=$BASE/xen-$XENVER
    XENGZ=$XROOT/boot/xen-4.17-amd64.gz
    SYSROOT='' XB=/usr/lib/xen-4.17/bin BUSYBOX=/bin/busybox
    PKGS="$KVER $XENVER $(dpkg-query -W -f '${Version}' xen-utils-4.17)"
else
    TR=$BASE/trixie-root
    if [ ! -x "$TR/usr/lib/xen-4.20/bin/xl" ] || [ ! -x "$TR/bin/busybox" ]; then
        echo "build-images: debootstrapping a trixie minbase tree into $TR (~80 s)" >&2
        rm -rf "$TR.tmp"
        # --no-check-gpg: a bookworm host's keyring lacks trixie's keys.
        debootstrap --variant=minbase --no-check-gpg \
            --include=xen-utils-4.20,xenstore-utils,busybox-static \
            trixie "$TR.tmp" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$BASE/debootstrap.log" 2>&1 \
            || { echo "build-images: debootstrap failed (see $BASE/debootstrap.log)" >&2; exit 1; }
        rm -rf "$TR"; mv "$TR.tmp" "$TR"
    fi
    # The hypervisor and kernel: downloaded once with the chroot's apt, unpacked into XROOT.
    XROOT=$BASE/trixie-boot
    if ! compgen -G "$XROOT/boot/xen-4.20-amd64.gz" >/dev/null || ! compgen -G "$XROOT/boot/vmlinuz-*" >/dev/null; then
        chroot "$TR" apt-get update -qq >&2
        KPKG=$(chroot "$TR" apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
        [ -n "$KPKG" ] || { echo "build-images: no trixie kernel package found" >&2; exit 1; }
        rm -rf "$TR/tmp/envoy-debs"; mkdir -p "$TR/tmp/envoy-debs"
        chroot "$TR" sh -c "cd /tmp/envoy-debs && apt-get download -qq -o APT::Sandbox::User=root xen-hypervisor-4.20-amd64 $KPKG" >&2 \
            || { echo "build-images: apt-get download in the trixie tree failed" >&2; exit 1; }
        rm -rf "$XROOT"; mkdir -p "$XROOT"
        for f in "$TR"/tmp/envoy-debs/*.deb; do dpkg-deb -x "$f" "$XROOT"; basename "$f"; done > "$XROOT/debs.txt"
        rm -rf "$TR/tmp/envoy-debs"
    fi
    XENGZ=$XROOT/boot/xen-4.20-amd64.gz
    # merged /usr: modules under usr/lib/modules; modprobe -d and depmod -b look in lib/modules.
    [ -e "$XROOT/lib" ] || ln -s usr/lib "$XROOT/lib"
    KVER=$(find "$XROOT/usr/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1)
    KROOT=$XROOT
    [ -f "$KROOT/lib/modules/$KVER/modules.dep" ] || depmod -b "$KROOT" "$KVER"   # the deb has none
    SYSROOT=$TR XB=/usr/lib/xen-4.20/bin BUSYBOX=$TR/bin/busybox
    PKGS="$(tr '\n' ' ' < "$XROOT/debs.txt") $(chroot "$TR" dpkg-query -W -f '${Version} ' xen-utils-4.20 busybox-static libc6)"
fi
[ -f "$KROOT/boot/vmlinuz-$KVER" ] || { echo "build-images: no kernel $KVER in $KROOT" >&2; exit 1; }

# base_root DIR: busybox and the usual directories. `busybox --list` names busybox itself: a
# symlink busybox -> busybox would loop (ELOOP at /init).
base_root() {
    local r=$1 a
    rm -rf "$r"; mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,mnt}
    cp "$BUSYBOX" "$r/bin/busybox"
    for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
    # nobody: Linux's 9p client attaches first as user "nobody" (no numeric id); envoyd looks
    # the name up in dom0's user database, as on any real dom0.
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
}
# add_modules DIR MODULE...: the modules and their dependencies (resolved by the host's modprobe
# against the unpacked kernel), decompressed (busybox modprobe loads plain .ko only), with
# depmod's index so busybox modprobe loads them in order.
add_modules() {
    local r=$1; shift
    local md=$r/lib/modules/$KVER m f rel
    mkdir -p "$md"
    for m in "$@"; do
        modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
    done | sort -u | while read -r f; do
        rel=${f#"$KROOT"/lib/modules/"$KVER"/}
        mkdir -p "$md/$(dirname "$rel")"
        case $f in
            *.ko.xz) xz -dc "$f" > "$md/${rel%.xz}" ;;
            *.ko.zst) zstd -qdc "$f" > "$md/${rel%.zst}" ;;
            *) cp "$f" "$md/$rel" ;;
        esac
    done
    cp "$KROOT/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$md/"
    sed -i 's/\.ko\.\(xz\|zst\)$/.ko/' "$md/modules.order"
    depmod -b "$r" "$KVER"
}
# ldd_of FILE: the libraries FILE needs, resolved in SYSROOT.
ldd_of() {
    if [ -n "$SYSROOT" ]; then chroot "$SYSROOT" ldd "$1"; else ldd "$1"; fi | grep -oE '/[^ ]+' || true
}
# copy_bin DIR FILE...: binaries (paths in SYSROOT) and the shared libraries ldd lists for them.
copy_bin() {
    local r=$1 f lib; shift
    for f in "$@"; do
        mkdir -p "$r$(dirname "$f")"; cp -L "$SYSROOT$f" "$r$f"
        ldd_of "$f" | while read -r lib; do
            [ -e "$r$lib" ] && continue
            mkdir -p "$r$(dirname "$lib")"; cp -L "$SYSROOT$lib" "$r$lib"
        done
    done
}
pack() { # DIR OUTPUT: newc cpio, gzip -1 (the guest decompresses it under TCG: fast beats small)
    (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --reproducible -R 0:0 --quiet) \
        | gzip -1n > "$2.tmp"
    mv "$2.tmp" "$2"
}

# --- `build-images.sh VER qemu`: QEMU's Xen device model (xen-qemu-system-i386, the libraries
# it needs, its keymaps: libxl passes -vnc none and QEMU still loads en-us) and dmsetup (the
# benchmark's dm-delay storage) as
# $OUT/qemu-dm.cpio.gz, the benchmark's peer; run-qemu.sh -b appends it to dom0's initramfs.
if [ "${2:-}" = qemu ]; then
    DM=/usr/libexec/xen-qemu-system-i386
    if [ ! -x "$SYSROOT$DM" ]; then
        echo "build-images: installing qemu-system-xen${SYSROOT:+ in $SYSROOT}" >&2
        if [ -n "$SYSROOT" ]; then
            chroot "$SYSROOT" apt-get update -qq >&2
            chroot "$SYSROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-xen >&2
        else
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-xen >&2
        fi
    fi
    QV=$(if [ -n "$SYSROOT" ]; then chroot "$SYSROOT" dpkg-query -W -f '${Version}' qemu-system-xen; else dpkg-query -W -f '${Version}' qemu-system-xen; fi)
    QV="$QV + dmsetup"
    if [ -f "$OUT/qemu-dm.stamp" ] && [ "$(cat "$OUT/qemu-dm.stamp")" = "$QV" ] && [ -f "$OUT/qemu-dm.cpio.gz" ]; then
        echo "build-images: QEMU $QV for $XV up to date" >&2
        exit 0
    fi
    Q=$(mktemp -d /tmp/envoy-xenqemu-XXXXXX)
    trap 'rm -rf "$Q"' EXIT
    if [ ! -x "$SYSROOT/usr/sbin/dmsetup" ]; then
        echo "build-images: installing dmsetup${SYSROOT:+ in $SYSROOT}" >&2
        if [ -n "$SYSROOT" ]; then
            chroot "$SYSROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dmsetup >&2
        else
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dmsetup >&2
        fi
    fi
    copy_bin "$Q" "$DM" /usr/sbin/dmsetup
    mkdir -p "$Q/usr/share/qemu"
    cp -a "$SYSROOT/usr/share/qemu/keymaps" "$Q/usr/share/qemu/"
    find "$Q" -type f \( -name '*.so*' -o -perm -u+x \) -exec strip --strip-unneeded {} + 2>/dev/null || true
    pack "$Q" "$OUT/qemu-dm.cpio.gz"
    echo "$QV" > "$OUT/qemu-dm.stamp"
    echo "build-images: $OUT/qemu-dm.cpio.gz: QEMU $QV, $(du -h "$OUT/qemu-dm.cpio.gz" | cut -f1)" >&2
    exit 0
fi

STAMP="$XV $PKGS $(cat "$0" "$HERE"/dom0-init.sh "$HERE"/domu-init.sh "$HERE"/quick-data.sh "$HERE"/*.cfg \
    "$HERE"/dom0-bench.sh "$HERE"/domu-bench.sh "$HERE"/workload-sizes.env \
    "$ROOT"/tests/vm/workload.sh "$ROOT"/tests/vm/mmapcat.c | sha256sum | cut -c1-16)"
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] \
    && [ -f "$OUT/xen" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/dom0.cpio.gz" ]; then
    echo "build-images: $XV up to date in $OUT" >&2
    exit 0
fi
echo "build-images: Xen $XV: kernel $KVER, $PKGS" >&2
if [ "$XV" = 4.17 ] && [ ! -f "$XENGZ" ]; then
    rm -f "$BASE/debs/${XENPKG}_"*.deb
    (cd "$BASE/debs" && apt-get download "$XENPKG=$XENVER" >/dev/null 2>&1) \
        || { echo "build-images: apt-get download $XENPKG=$XENVER failed" >&2; exit 1; }
    rm -rf "$XROOT"; mkdir -p "$XROOT"
    dpkg-deb -x "$BASE/debs/${XENPKG}_"*.deb "$XROOT"
    rm -f "$BASE/debs/${XENPKG}_"*.deb
fi
zcat "$XENGZ" > "$OUT/xen.tmp" && mv "$OUT/xen.tmp" "$OUT/xen"
cp "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"

W=$(mktemp -d /tmp/envoy-xenbuild-XXXXXX)
trap 'rm -rf "$W"' EXIT

# 1. domU: busybox, the 9p-over-Xen modules, /init, the workload and its sizes here.
DU=$W/domu
base_root "$DU"
add_modules "$DU" 9pnet_xen 9p
install -m 0755 "$HERE/domu-init.sh" "$DU/init"
install -m 0755 "$ROOT/tests/vm/workload.sh" "$DU/workload.sh"
install -m 0755 "$HERE/quick-data.sh" "$DU/quick-data.sh"
install -m 0755 "$HERE/domu-bench.sh" "$DU/bench.sh"
install -m 0644 "$HERE/workload-sizes.env" "$DU/workload-sizes.env"
gcc -static -O2 -Wall -o "$DU/bin/mmapcat" "$ROOT/tests/vm/mmapcat.c"
pack "$DU" "$OUT/domu.cpio.gz"

# 2. dom0: busybox, Xen modules (the rest of dom0 support is built into Debian's kernels), the
# toolstack and its libraries, /init, the guests.
D0=$W/dom0
base_root "$D0"
# brd, dm-delay, ext4 (and the crc32c it loads by name): the benchmark's slow storage (dom0-bench.sh; its dmsetup comes with QEMU).
add_modules "$D0" xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs brd dm-delay ext4 crc32c_generic
copy_bin "$D0" "$XB/xl" "$XB/xenstored" "$XB/xenconsoled" "$XB/xen-init-dom0" /usr/bin/xenstore
# envoyd and the other Envoy tools (appended at boot; built on a bookworm host, they run on
# trixie's newer glibc too) need these beyond what the Xen tools pull in.
copy_bin "$D0" "$(ldd_of /bin/true | grep -E '/libc\.so\.6$' | head -n 1)"
for lib in libgcc_s.so.1 libm.so.6; do
    if [ -n "$SYSROOT" ]; then src=$(chroot "$SYSROOT" ldconfig -p | awk -v l="$lib" '$1==l && /x86-64/{print $NF; exit}')
    else src=$(ldconfig -p | awk -v l="$lib" '$1==l && /x86-64/{print $NF; exit}'); fi
    [ -n "$src" ] && mkdir -p "$D0$(dirname "$src")" && cp -L "$SYSROOT$src" "$D0$src"
done
# The xenstore-* tools are one multi-call binary dispatching on its name.
for t in read write ls list exists rm chmod watch; do ln -sf xenstore "$D0/usr/bin/xenstore-$t"; done
find "$D0/usr/lib/xen-$XV" "$D0/lib" "$D0/usr/lib" -type f \( -name '*.so*' -o -perm -u+x \) \
    -exec strip --strip-unneeded {} + 2>/dev/null || true
mkdir -p "$D0"/etc/xen "$D0"/var/lib/xen "$D0"/var/lib/xenstored "$D0"/var/log/xen/console \
    "$D0"/guest "$D0"/usr/lib/envoy
ln -s ../run "$D0/var/run"   # xenstored, xl and envoy-dm's QMP sockets live in /var/run/...
# The shares. share and shareu (guest 1's boot devices) each hold the workload's host-made
# directory of WL_DIR_ENTRIES entries and its expected listing (made here, not in dom0 under
# TCG, where thousands of creates would cost seconds); share2 is guest 2's, hot the hot-plugged
# device's, fe the dom0 frontend's (envoy-xen-frontend).
# shellcheck source=workload-sizes.env
. "$HERE/workload-sizes.env"
for s in share shareu; do
    "$HERE/../vm/bigdir.sh" "$D0/srv/$s" "$WL_DIR_ENTRIES"
done
mkdir -p "$D0/srv/share2/sub" "$D0/srv/hot" "$D0/srv/fe"
echo "guest 2's own file" > "$D0/srv/share2/sub/own.txt"
echo "put in the hot-plugged share by dom0" > "$D0/srv/hot/from-dom0.txt"
head -c 300000 /dev/urandom > "$D0/srv/fe/hello.bin"
md5sum < "$D0/srv/fe/hello.bin" | cut -d' ' -f1 > "$D0/srv/fe.md5"
cp "$SYSROOT/etc/xen/xl.conf" "$D0/etc/xen/"
if [ "$XV" = 4.17 ]; then
    install -m 0644 "$HERE/domu.cfg" "$D0/etc/xen/domu.cfg"
    install -m 0644 "$HERE/domu2.cfg" "$D0/etc/xen/domu2.cfg"
    printf 'XENVER=4.17\nKIND=9pfs\n' > "$D0/etc/envoy-xen.conf"
else
    install -m 0644 "$HERE/domu-9pfsd.cfg" "$D0/etc/xen/domu.cfg"
    install -m 0644 "$HERE/domu2-9pfsd.cfg" "$D0/etc/xen/domu2.cfg"
    printf 'XENVER=4.20\nKIND=xen_9pfs\n' > "$D0/etc/envoy-xen.conf"
    # libxl 4.20 spawns LIBEXEC_BIN/xen-9pfsd for type=xen_9pfsd devices: that is envoyd, which
    # behaves as `envoyd --xen --xen-9pfsd` under this name.
    ln -sf /usr/lib/envoy/envoyd "$D0/usr/lib/xen-4.20/bin/xen-9pfsd"
fi
install -m 0755 "$HERE/dom0-init.sh" "$D0/init"
mkdir -p "$D0/etc/envoy"
install -m 0644 "$HERE/dom0-bench.sh" "$D0/etc/envoy/dom0-bench.sh"
[ "$XV" = 4.17 ] && install -m 0644 "$HERE"/domu-bench-{envoy,qemu}.cfg "$D0/etc/xen/"
cp "$KROOT/boot/vmlinuz-$KVER" "$D0/guest/vmlinuz"
cp "$OUT/domu.cpio.gz" "$D0/guest/domu.cpio.gz"
pack "$D0" "$OUT/dom0.cpio.gz"

echo "$STAMP" > "$OUT/stamp"
echo "build-images: $OUT: xen $(du -h "$OUT/xen" | cut -f1), dom0.cpio.gz $(du -h "$OUT/dom0.cpio.gz" | cut -f1), domu.cpio.gz $(du -h "$OUT/domu.cpio.gz" | cut -f1)" >&2
