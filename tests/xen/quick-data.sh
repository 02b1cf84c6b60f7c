#!/bin/sh
# The self-test's guest check (cwd = the 9P mount): a 16 MiB random file written, read back
# after dropping the page cache, and compared — seconds instead of the workload's minutes, and
# exactly what a server corrupting reads must fail.
dd if=/dev/urandom of=/tmp/q bs=1048576 count=16 2>/dev/null
want=$(md5sum < /tmp/q | cut -d' ' -f1)
cp /tmp/q quick.bin && sync && echo 3 > /proc/sys/vm/drop_caches
got=$(md5sum < quick.bin | cut -d' ' -f1)
echo "ENVOY-HOST: md5 quick.bin $want"
if [ "$got" = "$want" ]; then echo "ENVOY-CHECK: PASS quick_data"
else echo "ENVOY-CHECK: FAIL quick_data: read back $got, wrote $want"; fi
