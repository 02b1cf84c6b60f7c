#!/usr/bin/env bash
# envoy-xl storage against two real envoyds (R=2) on loopback: status (table and --json), a
# scrub followed to the end, a re-replication pass, GC and reload. Asserts what each prints.
#   tests/storage/xl-smoke.sh        (builds the debug binaries)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q -p envoy-dom0-agent -p envoy-tools
BIN=$PWD/target/debug
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
die() {
    echo "xl-smoke FAILED: $*" >&2
    for h in a b; do echo "--- envoyd $h log" >&2; tail -20 "$tmp/$h.log" >&2 || true; done
    exit 1
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PA=$(port) PB=$(port)
cat >"$tmp/cluster.toml" <<EOT
replicas = 2
probe_interval_ms = 200
[[host]]
name = "a"
storage = "tcp:127.0.0.1:$PA"
[[host]]
name = "b"
storage = "tcp:127.0.0.1:$PB"
EOT
for h in a b; do
    "$BIN/envoyd" --host $h --data-dir "$tmp/$h" --cluster "$tmp/cluster.toml" >"$tmp/$h.log" 2>&1 &
    pids+=($!)
done
xl() { "$BIN/envoy-xl" storage --endpoint "unix:$tmp/a/storage.sock" "$@"; }
for _ in $(seq 100); do [ -S "$tmp/a/storage.sock" ] && [ -S "$tmp/b/storage.sock" ] && break; sleep 0.1; done
# Both hosts up (the probes run every 200 ms).
for _ in $(seq 50); do
    out=$(xl status) && [ "$(grep -c ' up ' <<<"$out")" = 2 ] && break
    sleep 0.2
done
echo "$out"
grep -q '^2 hosts, 2 replicas per object' <<<"$out" || die "status header: $out"
[ "$(grep -c ' up ' <<<"$out")" = 2 ] || die "both hosts should be up: $out"
json=$(xl status --json)
python3 - "$json" <<'PY' || die "status --json: $json"
import json, sys
j = json.loads(sys.argv[1])
assert j["replicas"] == 2, j
assert sorted(h["name"] for h in j["hosts"]) == ["a", "b"], j
assert all(h["state"] == "up" and h["stats"]["fs_total"] > 0 for h in j["hosts"]), j
PY
out=$(xl scrub --wait) || die "scrub --wait"
echo "$out"
grep -q '^scrub of a done: 0 objects' <<<"$out" || die "scrub: $out"
out=$(xl repair --wait) || die "repair --wait"
grep -q '^re-replication done' <<<"$out" || die "repair: $out"
out=$(xl gc --grace 0) || die "gc"
grep -q '^gc done: 0 objects deleted' <<<"$out" || die "gc: $out"
out=$(xl reload) || die "reload"
grep -q 'membership reloaded: 2 hosts' <<<"$out" || die "reload: $out"
out=$(xl replicas 0000000000000000000000000000000000000000000000000000000000000000) || die "replicas"
grep -q ': 0 copies' <<<"$out" || die "replicas: $out"
# Errors are one line, exit 1: a bad id, and a host that is not there.
if err=$(xl replicas nothex 2>&1); then die "bad id accepted"; fi
[ "$(wc -l <<<"$err")" = 1 ] || die "error not one line: $err"
if err=$("$BIN/envoy-xl" storage --endpoint "unix:$tmp/nothere.sock" status 2>&1); then die "missing envoyd accepted"; fi
grep -q 'cannot reach envoyd' <<<"$err" || die "unclear error: $err"
# One host killed: it shows as down, with the reason.
kill -9 "${pids[1]}"
for _ in $(seq 50); do out=$(xl status) && grep -q '^b .*down' <<<"$out" && break; sleep 0.2; done
echo "$out"
grep -q '^b .*down' <<<"$out" || die "killed host not shown down: $out"
echo "xl-smoke: all checks passed"
