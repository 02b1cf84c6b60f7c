#!/bin/sh
# The guest workload of the VM suite: run by busybox sh inside the test VM, cwd = the 9P mount.
# One line per check: "ENVOY-CHECK: PASS name" or "ENVOY-CHECK: FAIL name: detail".
# "ENVOY-HOST: md5 PATH HASH" lines ask the host to verify a file in its export.
# Exit status: the number of failed checks.
# Sizes (environment; the defaults are the VM suite's, the Xen suite's nested guest uses smaller):
#   WL_FILES (1000) small files, WL_DIR_ENTRIES (5000) entries of the share's bigN directory,
#   WL_BIG_BLOCKS (64) and WL_CW_BLOCKS (12) 1 MiB-ish blocks in big.bin and in each of cw1/cw2.
FILES=${WL_FILES:-1000} DIR_ENTRIES=${WL_DIR_ENTRIES:-5000}
BIG_BLOCKS=${WL_BIG_BLOCKS:-64} CW_BLOCKS=${WL_CW_BLOCKS:-12}

fails=0
pass() { echo "ENVOY-CHECK: PASS $1"; }
fail() { echo "ENVOY-CHECK: FAIL $1: $2"; fails=$((fails + 1)); }
# run NAME FUNCTION: a check passes when its function returns 0.
run() {
    t0=$(cut -d' ' -f1 /proc/uptime)
    out=$("$2" 2>&1); rc=$?
    t=$(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1fs", b - a }')
    if [ $rc = 0 ]; then pass "$1 ($t)"; else fail "$1" "rc=$rc ($t) $(echo "$out" | tail -n 3 | tr '\n' ' ')"; fi
}
# md5 is enough to catch corruption and about twice as fast as sha256 under TCG.
sha() { md5sum "$1" | cut -d' ' -f1; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# repeat FILE N: FILE's bytes N times on stdout.
repeat() { i=0; while [ $i -lt "$2" ]; do cat "$1"; i=$((i + 1)); done; }

# A 1,052,673-byte random block: repeated, its period does not align with msize or pages.
dd if=/dev/urandom of=/tmp/blk bs=1052673 count=1 2>/dev/null
dd if=/dev/urandom of=/tmp/blk2 bs=999983 count=1 2>/dev/null
BIG_SUM=$(repeat /tmp/blk "$BIG_BLOCKS" | md5sum | cut -d' ' -f1)

deep_mkdir() {
    mkdir -p deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t || return 1
    echo bottom > deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/file
    [ "$(cat deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/file)" = bottom ]
}

small_files() {
    mkdir small || return 1
    i=0
    while [ $i -lt "$FILES" ]; do echo "small file $i" > small/f$i || return 1; i=$((i + 1)); done
    [ "$(ls small | wc -l)" -eq "$FILES" ] || { echo "count $(ls small | wc -l)"; return 1; }
    drop_caches
    # One reader for all files (busybox's `read` builtin would issue one 1-byte read per byte);
    # the expected bytes are derived from each name, in the same glob order.
    want=$(for f in small/*; do echo "small file ${f#small/f}"; done | md5sum)
    got=$(cat small/* | md5sum)
    [ "$got" = "$want" ] || { echo "contents differ"; return 1; }
}

big_file() {
    want=$BIG_SUM
    repeat /tmp/blk "$BIG_BLOCKS" > big.bin || return 1
    [ "$(stat -c %s big.bin)" -eq $((1052673 * BIG_BLOCKS)) ] || { echo "size $(stat -c %s big.bin)"; return 1; }
    drop_caches
    got=$(sha big.bin)
    [ "$got" = "$want" ] || { echo "read back $got, wrote $want"; return 1; }
    echo "ENVOY-HOST: md5 big.bin $want" >&3
}

append() {
    printf 'one\n' > app && printf 'two\n' >> app && printf 'three\n' >> app || return 1
    drop_caches
    [ "$(cat app)" = "$(printf 'one\ntwo\nthree')" ]
}

truncate_up_down() {
    printf 'abcdef' > trunc || return 1
    truncate -s 100000 trunc && [ "$(stat -c %s trunc)" -eq 100000 ] || return 1
    [ "$(dd if=trunc bs=1 skip=6 count=10 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 00000000000000000000 ] || return 1
    truncate -s 3 trunc && [ "$(stat -c %s trunc)" -eq 3 ] && [ "$(cat trunc)" = abc ]
}

renames() {
    echo r1 > ren1 && mv ren1 ren2 && [ ! -e ren1 ] && [ "$(cat ren2)" = r1 ] || return 1
    mkdir ra rb && echo moved > ra/x && mv ra/x rb/y && [ ! -e ra/x ] && [ "$(cat rb/y)" = moved ] || return 1
    echo new > over-new && echo old > over-old && mv over-new over-old || return 1
    [ ! -e over-new ] && [ "$(cat over-old)" = new ] || return 1
    mv ra rb/ra-moved && [ -d rb/ra-moved ] && [ ! -e ra ]
}

links() {
    echo linked > lt && ln lt lt2 || return 1
    [ "$(stat -c %h lt)" -eq 2 ] || { echo "nlink $(stat -c %h lt)"; return 1; }
    echo more >> lt2 && [ "$(cat lt)" = "$(printf 'linked\nmore')" ] || return 1
    ln -s lt sl && [ "$(readlink sl)" = lt ] && [ "$(cat sl)" = "$(cat lt)" ] || return 1
    ln -s /nonexistent/target dangling && [ "$(readlink dangling)" = /nonexistent/target ] && [ -L dangling ]
}

attrs() {
    echo x > at && chmod 640 at && [ "$(stat -c %a at)" = 640 ] || { stat at; return 1; }
    chmod 4755 at && [ "$(stat -c %a at)" = 4755 ] || { stat at; return 1; }
    chown 1234:5678 at && [ "$(stat -c %u:%g at)" = 1234:5678 ] || { stat at; return 1; }
    [ "$(stat -c %s at)" -eq 2 ] || return 1
    touch -d '2001-02-03 04:05:06' at && [ "$(stat -c %Y at)" = "$(date -d '2001-02-03 04:05:06' +%s)" ]
}

fifo() {
    mkfifo ff && [ -p ff ] || return 1
    case "$(stat -c %F ff)" in *fifo*) ;; *) stat ff; return 1 ;; esac
}

big_directory() {
    # Shell globs list through getdents alone (no stat, no fork per entry).
    d=big$DIR_ENTRIES
    set -- "$d"/*
    [ "$#" -eq "$DIR_ENTRIES" ] || { echo "listed $# of $DIR_ENTRIES"; return 1; }
    [ "$(printf '%s\n' "$@" | md5sum | cut -d' ' -f1)" = "$(cat "$d.expected")" ] || { echo "names differ"; return 1; }
    # A second listing (the directory offsets restart) gives the same names.
    set -- "$d"/*
    [ "$(printf '%s\n' "$@" | md5sum | cut -d' ' -f1)" = "$(cat "$d.expected")" ] || { echo "second listing differs"; return 1; }
    [ "$(ls "$d" | wc -l)" -eq "$DIR_ENTRIES" ]
}

concurrent_writers() {
    (repeat /tmp/blk "$CW_BLOCKS" > cw1) & p1=$!
    (repeat /tmp/blk2 "$CW_BLOCKS" > cw2) & p2=$!
    wait $p1 && wait $p2 || return 1
    drop_caches
    [ "$(sha cw1)" = "$(repeat /tmp/blk "$CW_BLOCKS" | md5sum | cut -d' ' -f1)" ] || { echo cw1; return 1; }
    [ "$(sha cw2)" = "$(repeat /tmp/blk2 "$CW_BLOCKS" | md5sum | cut -d' ' -f1)" ] || { echo cw2; return 1; }
}

mmap_read() {
    drop_caches
    got=$(mmapcat cw1 | md5sum | cut -d' ' -f1)
    [ "$got" = "$(repeat /tmp/blk "$CW_BLOCKS" | md5sum | cut -d' ' -f1)" ] || { echo "mmap read $got"; return 1; }
}

host_visible() {
    echo "written in the guest at $(cat /proc/uptime)" > visible.txt && sync || return 1
    echo "ENVOY-HOST: md5 visible.txt $(sha visible.txt)" >&3
    echo "ENVOY-HOST: md5 cw1 $(sha cw1)" >&3
}

rm_rf() {
    rm -rf deep small rb && [ ! -e deep ] && [ ! -e small ] && [ ! -e rb ] || return 1
    [ -z "$(ls -A . | grep -E '^(deep|small|rb)$')" ]
}

exec 3>&1
run deep_mkdir deep_mkdir
run small_files small_files
run big_file big_file
run append append
run truncate truncate_up_down
run rename renames
run links links
run attrs attrs
run fifo fifo
run big_directory big_directory
run concurrent_writers concurrent_writers
run mmap_read mmap_read
run host_visible_after_sync host_visible
run rm_rf rm_rf
echo "ENVOY-CHECKS-DONE failed=$fails"
exit $fails
