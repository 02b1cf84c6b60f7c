#!/bin/sh
# The 2006 interface from a Linux guest's shell: run by busybox sh inside the test VM, cwd = the
# mount of an envoyd serving every image (`--images`), where the host created image vm1.
# Plain tools only: ln -s takes snapshots and forks, snapshots are read-only, reserved names are
# protected. One line per check ("ENVOY-CHECK: PASS name" / "FAIL name: detail"); exit status:
# the number of failed checks.
fails=0
pass() { echo "ENVOY-CHECK: PASS $1"; }
fail() { echo "ENVOY-CHECK: FAIL $1: $2"; fails=$((fails + 1)); }
run() {
    out=$("$2" 2>&1); rc=$?
    if [ $rc = 0 ]; then pass "$1"; else fail "$1" "rc=$rc $(echo "$out" | tail -n 3 | tr '\n' ' ')"; fi
}
# refuses ERRNO_TEXT COMMAND...: the command fails, saying ERRNO_TEXT.
refuses() {
    want=$1
    shift
    if msg=$("$@" 2>&1); then echo "'$*' succeeded"; return 1; fi
    case "$msg" in *"$want"*) return 0 ;; *) echo "'$*': $msg (wanted $want)"; return 1 ;; esac
}

write_then_snapshot() {
    echo one > vm1/current/a && mkdir vm1/current/d && echo inside > vm1/current/d/f && sync || return 1
    ln -s current vm1/1 || return 1
    [ -d vm1/1 ] && [ "$(cat vm1/1/a)" = one ] && [ "$(cat vm1/1/d/f)" = inside ] || return 1
    [ "$(readlink vm1/snapshot)" = 1 ]
}

snapshot_keeps_old_content() {
    echo two > vm1/current/a && sync || return 1
    [ "$(cat vm1/current/a)" = two ] && [ "$(cat vm1/1/a)" = one ]
}

snapshot_is_read_only() {
    refuses "Read-only file system" sh -c 'echo x > vm1/1/new' || return 1
    refuses "Read-only file system" sh -c 'echo x > vm1/1/a' || return 1
    refuses "Read-only file system" rm vm1/1/a || return 1
    refuses "Read-only file system" mkdir vm1/1/e || return 1
    [ "$(cat vm1/1/a)" = one ]
}

fork_diverges() {
    mkdir vm2 && ln -s /img/vm1/1 vm2/current || return 1
    [ "$(cat vm2/current/a)" = one ] || return 1
    echo fork > vm2/current/a && rm vm2/current/d/f && sync || return 1
    [ "$(cat vm2/current/a)" = fork ] && [ ! -e vm2/current/d/f ] || return 1
    [ "$(cat vm1/current/a)" = two ] && [ "$(cat vm1/current/d/f)" = inside ] || return 1
    [ "$(cat vm1/1/a)" = one ] && [ -e vm1/1/d/f ]
}

reserved_names_are_eperm() {
    refuses "Operation not permitted" rmdir vm1/current || return 1
    refuses "Operation not permitted" mv vm1/current vm1/renamed || return 1
    refuses "Operation not permitted" rmdir vm1/1 || return 1
    refuses "Operation not permitted" rm vm1/snapshot || return 1
    refuses "Operation not permitted" ln -s current vm1/notanumber || return 1
    refuses "Operation not permitted" mkdir vm1/other || return 1
    refuses "Operation not permitted" sh -c 'echo x > vm1/file' || return 1
    [ -d vm1/current ] && [ "$(readlink vm1/snapshot)" = 1 ]
}

forking_a_missing_snapshot_is_enoent() {
    mkdir vm3 || return 1
    refuses "No such file or directory" ln -s /img/vm1/9 vm3/current || return 1
    [ ! -e vm3/current ]
}

second_snapshot() {
    ln -s current vm1/2 && [ "$(cat vm1/2/a)" = two ] && [ "$(readlink vm1/snapshot)" = 2 ] || return 1
    # Taken: ln(1) then links inside the snapshot directory, which is read-only.
    refuses "Read-only file system" ln -s current vm1/2 || return 1
    [ ! -e vm1/2/current ] && [ "$(cat vm1/2/a)" = two ]
}

run write_then_snapshot write_then_snapshot
run snapshot_keeps_old_content snapshot_keeps_old_content
run snapshot_is_read_only snapshot_is_read_only
run fork_diverges fork_diverges
run reserved_names_are_eperm reserved_names_are_eperm
run forking_a_missing_snapshot_is_enoent forking_a_missing_snapshot_is_enoent
run second_snapshot second_snapshot
echo "ENVOY-CHECKS-DONE failed=$fails"
exit $fails
