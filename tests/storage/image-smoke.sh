#!/usr/bin/env bash
# envoy-xl image / check against a real envoyd (one host, --images): every subcommand's table
# and --json, errors as one line with exit status 1, and `rm` + `storage gc` giving back an
# image's unshared space while its fork stays whole (files written with envoy-9p).
#   tests/storage/image-smoke.sh        (builds the debug binaries)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q -p envoy-dom0-agent -p envoy-tools
BIN=$PWD/target/debug
tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
die() {
    echo "image-smoke FAILED: $*" >&2
    echo "--- envoyd log" >&2
    tail -20 "$tmp/envoyd.log" >&2 || true
    exit 1
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PS=$(port) P9=$(port)
"$BIN/envoyd" --host a --data-dir "$tmp/a" --storage "tcp:127.0.0.1:$PS" --images \
    --listen "tcp:127.0.0.1:$P9" >"$tmp/envoyd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$tmp/a/images.sock" ] && break; sleep 0.1; done
xi() { "$BIN/envoy-xl" image --socket "$tmp/a/images.sock" "$@"; }
check() { "$BIN/envoy-xl" check --socket "$tmp/a/images.sock" "$@"; }
p9() { "$BIN/envoy-9p" --tcp "127.0.0.1:$P9" --aname "$1" "${@:2}"; }
# fails CMD...: CMD must exit 1 with one line on stderr; prints it.
fails() {
    local err rc=0
    err=$("$@" 2>&1 >/dev/null) || rc=$?
    [ "$rc" = 1 ] || die "$* exited $rc, not 1"
    [ "$(wc -l <<<"$err")" = 1 ] || die "$*: error not one line: $err"
    echo "$err"
}
json() { python3 -c "import json,sys; j=json.load(sys.stdin); $1" || die "json check: $1"; }

out=$(xi create vm1 --uid "$(id -u)" --gid "$(id -g)") || die "create"
[ "$out" = "image vm1 created" ] || die "create: $out"
[ "$(fails xi create vm1)" = "envoy-xl: image vm1 already exists" ] || die "create twice"
fails xi create a/b | grep -q '"a/b" is not a valid image name' || die "bad name"
head -c 524288 /dev/urandom >"$tmp/shared"
head -c 1048576 /dev/urandom >"$tmp/mine"
p9 vm1 put /shared <"$tmp/shared" || die "put /shared"
out=$(xi snapshot vm1) || die "snapshot"
grep -q '^snapshot vm1@1 taken (root [0-9a-f]\{16\})$' <<<"$out" || die "snapshot: $out"
[ "$(fails xi snapshot vm1 1)" = "envoy-xl: snapshot vm1@1 already exists" ] || die "snapshot taken"
[ "$(fails xi snapshot vm9)" = "envoy-xl: image vm9 does not exist" ] || die "snapshot missing"
out=$(xi fork vm1@1 vm2) || die "fork"
[ "$out" = "image vm2 forked from vm1@1" ] || die "fork: $out"
[ "$(fails xi fork vm1@9 vm3)" = "envoy-xl: snapshot vm1@9 does not exist" ] || die "fork missing"
[ "$(fails xi fork vm1@1 vm2)" = "envoy-xl: image vm2 already exists" ] || die "fork exists"
p9 vm1 put /mine <"$tmp/mine" || die "put /mine"

out=$(xi list) || die "list"
echo "$out"
[ "$(sed -n 1p <<<"$out")" = "IMAGE  SNAPSHOTS  FILES  SIZE       ROOT" ] || die "list header: $out"
grep -q '^vm1    1          2      1.5 MiB    [0-9a-f]\{16\}$' <<<"$out" || die "list vm1: $out"
grep -q '^vm2    -          1      512.0 KiB  [0-9a-f]\{16\}$' <<<"$out" || die "list vm2: $out"
xi list --json | json '
names = [(i["name"], i["snapshots"], i["contents"]["files"], i["contents"]["logical"]) for i in j["images"]]
assert names == [("vm1", [1], 2, 1572864), ("vm2", [], 1, 524288)], names
assert all(len(i["root"]) == 64 for i in j["images"])'

out=$(xi du) || die "du"
echo "$out"
grep -q '^IMAGE  *FILES  *LOGICAL  *REFERENCED  *UNIQUE  *SHARED$' <<<"$(sed -n 1p <<<"$out")" || die "du header: $out"
grep -q '^vm1  *2  *1.5 MiB  *1.5 MiB  *1.0 MiB  *512.[0-9] KiB$' <<<"$out" || die "du vm1: $out"
[ "$(awk '{print $1}' <<<"$out" | tail -n +2 | tr '\n' ' ')" = "vm1 vm1@1 vm2 " ] || die "du rows: $out"
xi du --json | json '
rows = {(r["image"], r["snapshot"]): r for r in j["usage"]}
MiB = 1 << 20
vm1, snap, vm2 = rows[("vm1", None)], rows[("vm1", 1)], rows[("vm2", None)]
assert MiB <= vm1["unique"] < MiB + 16384, vm1          # /mine: only vm1 has it
assert MiB // 2 <= vm1["shared"] < MiB // 2 + 16384, vm1  # /shared: also vm2 (the fork)
assert vm2["unique"] < 16384 and vm2["shared"] >= MiB // 2, vm2
assert snap["unique"] < 16384, snap                        # vm1@1 holds nothing alone
assert vm1["referenced"] == vm1["unique"] + vm1["shared"]'
[ "$(xi du vm2 | wc -l)" = 2 ] || die "du vm2"
[ "$(fails xi du vm9)" = "envoy-xl: image vm9 does not exist" ] || die "du missing"

out=$(check vm1) || die "check vm1"
grep -q '^check vm1: 2 trees (vm1, vm1@1): [0-9]* objects (.*) verified, [0-9]* inodes: OK$' <<<"$out" || die "check: $out"
check vm1 --json | json 'assert j["problems"] == [] and j["trees"] == ["vm1", "vm1@1"], j'
[ "$(fails check vm9)" = "envoy-xl: image vm9 does not exist" ] || die "check missing"
[ "$(fails xi rm vm1@5)" = "envoy-xl: snapshot vm1@5 does not exist" ] || die "rm missing snapshot"
[ "$(fails xi rm nothere)" = "envoy-xl: image nothere does not exist" ] || die "rm missing image"
fails xi rm vm1@x | grep -q 'is not IMAGE or IMAGE@N' || die "rm bad target"

# rm + gc: vm1's own megabyte goes, the fork keeps what it shares.
xs() { "$BIN/envoy-xl" storage --endpoint "unix:$tmp/a/storage.sock" "$@"; }
bytes() { xs status --json | json 'print(j["hosts"][0]["stats"]["bytes"])'; }
before=$(bytes)
out=$(xi rm vm1) || die "rm vm1"
[ "$out" = "removed vm1@1, vm1; the space nothing else shares is reclaimed by the next envoy-xl storage gc" ] || die "rm: $out"
sleep 1.1   # stamps are whole seconds: --grace 0 then covers the last writes
out=$(xs gc --grace 0) || die "gc"
grep -q '^gc done: [1-9][0-9]* objects deleted$' <<<"$out" || die "gc: $out"
after=$(bytes)
echo "store: $before bytes before, $after after"
[ $((before - after)) -ge 1048576 ] || die "gc freed $((before - after)) bytes, vm1 alone held 1 MiB"
[ "$after" -ge 524288 ] || die "the fork's data went: $after bytes left"
out=$(check vm2) || die "check vm2 after gc: $out"
p9 vm2 cat /shared | cmp - "$tmp/shared" || die "vm2's /shared changed"
[ "$(xi list | awk 'NR > 1 {print $1}')" = "vm2" ] || die "list after rm: $(xi list)"

err=$(fails "$BIN/envoy-xl" image --socket "$tmp/nothere.sock" list)
[ "$err" = "envoy-xl: cannot reach envoyd's image service at unix:$tmp/nothere.sock (is envoyd running with --storage or --cluster?): i/o error: No such file or directory (os error 2)" ] || die "unclear error: $err"
echo "image-smoke: all checks passed"
