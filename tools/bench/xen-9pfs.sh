#!/usr/bin/env bash
# envoyd vs QEMU's own Xen 9pfs backend, in the same Xen VM and the same run: Xen 4.17 under
# QEMU TCG (the Xen suite's bookworm images plus QEMU 7.2's xen-qemu-system-i386 in dom0). The
# same PV guest (2 vCPUs, 256 MiB) mounts the same dom0 directory over trans=xen, 9p2000.L,
# msize 512 KiB, served by envoyd (envoy-dm as device model) or by QEMU (as device model), in
# alternating phases (tests/xen/dom0-bench.sh; envoyd runs only in its phases). Per phase: a
# MIB MiB sequential write (dd from /dev/zero, fsync), its sequential read, and READERS
# concurrent readers of 1/READERS of it each (tests/xen/domu-bench.sh). The files live in dom0's
# RAM, or with DELAY_MS > 0 on storage that takes DELAY_MS ms per read and write (an ext2 on a
# RAM disk behind dm-delay: a disk's or a remote store's latency without its CPU); dom0's and
# the guest's page caches are dropped before every operation.
#
#   tools/bench/xen-9pfs.sh                 ROUNDS=3 MIB=256 READERS=4 DELAY_MS=0
# Prints each measurement, the median MiB/s per server and operation with the ratio
# envoyd / QEMU, and each server process's CPU seconds and peak RSS over the whole run.
# ENVOY_XEN_KEEP=1 keeps the serial log.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3} MIB=${MIB:-256} READERS=${READERS:-4} DELAY_MS=${DELAY_MS:-0}
cargo build --release --quiet -p envoy-dom0-agent -p envoy-tools
tests/xen/build-images.sh 4.17
tests/xen/build-images.sh 4.17 qemu
log=$(mktemp /tmp/envoy-xen-bench-XXXXXX.log)
[ "${ENVOY_XEN_KEEP:-0}" = 1 ] || trap 'rm -f "$log"' EXIT
R=target/release
set +e
ENVOYD=$R/envoyd ENVOY_DM=$R/envoy-dm tests/xen/run-qemu.sh -x 4.17 -l "$log" \
    -b "$ROUNDS:$MIB:$READERS:$DELAY_MS" -t 400 -T $((ROUNDS * 2 * 240 + 120))
rc=$?
set -e
tr -d '\r' < "$log" | python3 -c '
import re, statistics, sys
rows, servers, checks = [], [], []
for line in sys.stdin:
    m = re.search(r"ENVOY-BENCH: round=(\d+) server=(\w+) op=(\w+) bytes=(\d+) secs=([\d.]+)", line)
    if m:
        r, s, op, b, t = m.groups()
        rows.append((int(r), s, op, int(b), float(t)))
    m = re.search(r"ENVOY-BENCH-SERVER: round=(\d+) server=(\w+) cpu_secs=([\d.]+) hwm_kib=(\d+)", line)
    if m:
        servers.append((m.group(2), float(m.group(3)), int(m.group(4))))
    m = re.search(r"ENVOY-BENCH-STORAGE: (.*)", line)
    if m:
        print("storage:", m.group(1).strip())
    if re.search(r"ENVOY-CHECK: FAIL", line):
        checks.append(line.strip())
for r, s, op, b, t in rows:
    print(f"round {r}  {s:5}  {op:9}  {b / 2**20:6.0f} MiB  {t:7.2f} s  {b / 2**20 / t:7.1f} MiB/s")
print()
print("| operation | envoyd MiB/s | QEMU MiB/s | envoyd / QEMU (median of rounds) |")
print("| --- | --- | --- | --- |")
for op in ("seq_write", "seq_read", "par_read"):
    rates = {s: [b / 2**20 / t for (_, s2, o, b, t) in rows if o == op and s2 == s] for s in ("envoy", "qemu")}
    ratios = [e / q for e, q in zip(
        [b / 2**20 / t for (r, s, o, b, t) in sorted(rows) if o == op and s == "envoy"],
        [b / 2**20 / t for (r, s, o, b, t) in sorted(rows) if o == op and s == "qemu"])]
    if not ratios:
        continue
    fmt = lambda v: f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"
    e, q = fmt(rates["envoy"]), fmt(rates["qemu"])
    print(f"| {op} | {e} | {q} | **{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}) |")
print()
for name in ("envoy", "qemu"):
    cpu = [c for (s, c, _) in servers if s == name]
    hwm = [h for (s, _, h) in servers if s == name]
    if cpu:
        print(f"{name}: CPU seconds per phase (all threads) median {statistics.median(cpu):.2f} "
              f"({min(cpu):.2f}-{max(cpu):.2f}), peak RSS max {max(hwm) / 1024:.1f} MiB")
for c in checks:
    print(c)
if not rows or checks:
    sys.exit(1)
' || { echo "xen-9pfs: no complete result (run-qemu rc=$rc); serial log: $log" >&2; trap - EXIT; exit 1; }
echo "xen-9pfs: run-qemu rc=$rc"
