#!/usr/bin/env bash
# Put host binaries into a VM payload directory with the shared libraries they load, at the
# paths the guest's dynamic loader looks in (the guest has busybox and nothing else).
#   tools/vm/add-binaries.sh PAYLOAD_DIR DEST_SUBDIR BINARY...   (stripped on the way in)
# e.g. tools/vm/add-binaries.sh "$W/payload" bin target/release/envoyd
set -euo pipefail
p=$1 sub=$2; shift 2
mkdir -p "$p/$sub"
for b in "$@"; do
    strip -o "$p/$sub/$(basename "$b")" "$b"
    ldd "$b" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
done | sort -u | while read -r lib; do
    [ -f "$p$lib" ] || { mkdir -p "$p$(dirname "$lib")"; cp -L "$lib" "$p$lib"; }
done
