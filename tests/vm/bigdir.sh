#!/bin/sh
# Make the workload's big directory in an export: DIR/bigN with N empty files, and
# DIR/bigN.expected, the md5 of its sorted listing as the workload's shell glob prints it.
# Used by the VM suite (host export), the SCTP cases (export inside the guest) and the Xen
# suite's images; POSIX sh, so busybox runs it too.
#   tests/vm/bigdir.sh DIR N
set -eu
dir=$1 n=$2
mkdir -p "$dir/big$n"
(cd "$dir/big$n" && for i in $(seq -w 0 $((n - 1))); do : > "entry-$i-with-a-longer-name"; done)
# shellcheck disable=SC2012 # plain names
(cd "$dir" && ls "big$n" | LC_ALL=C sort | sed "s|^|big$n/|" | md5sum | cut -d' ' -f1) > "$dir/big$n.expected"
