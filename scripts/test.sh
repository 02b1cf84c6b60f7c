#!/usr/bin/env bash
# The project's test command (README): installs what it needs, then runs every check.
#   scripts/test.sh            everything
#   SKIP_LINT=1 scripts/test.sh   skip fmt/clippy/doc (quicker local runs)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

# --- dependencies -----------------------------------------------------------------------
need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
# iproute2's ip: the SCTP multi-homing case builds a network namespace and veth pairs in the guest.
command -v ip >/dev/null || need_apt+=(iproute2)
# fio: the object layer's benchmark compares the store with it on the same disk.
command -v fio >/dev/null || need_apt+=(fio)
# The real C xenstored (run on the host under a test shim), the xenstore-* tools and Xen's
# public headers (ioctl ABI check) for the Xen layer's tests.
compgen -G '/usr/lib/xen-*/bin/xenstored' >/dev/null || need_apt+=(xen-utils-4.17)
command -v xenstore-read >/dev/null || need_apt+=(xenstore-utils)
[ -f /usr/include/xen/sys/gntdev.h ] || need_apt+=(libxen-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    step "installing Debian packages: ${need_apt[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}"
fi
if ! python3 -c 'import p9fs' 2>/dev/null; then
    step "installing the PyPI 9P client p9fs (independent interop peer)"
    python3 -m pip install --quiet 'p9fs==0.0.4'
fi

# --- static checks ----------------------------------------------------------------------
if [ -z "${SKIP_LINT:-}" ]; then
    step "cargo fmt --check"
    cargo fmt --all -- --check
    step "cargo clippy -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
    step "cargo doc -D warnings"
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
fi

# --- tests ------------------------------------------------------------------------------
step "cargo test (unit, codec vectors + fuzz corpus replay, semantics, bad input, escapes)"
cargo test --workspace

step "protocol suites again over simulated Xen 9pfs rings (Linux frontend model, 2 rings, order 9)"
ENVOY_TEST_MEDIUM=xen-sim cargo test -p envoy-tests --test dotl --test dotu --test inflight

step "protocol suites against the image backend (one suite, two backends): TCP, then .L and .u over simulated Xen rings"
ENVOY_TEST_BACKEND=image cargo test -p envoy-tests --test dotl --test dotu --test inflight --test malformed --test escapes
ENVOY_TEST_BACKEND=image ENVOY_TEST_MEDIUM=xen-sim cargo test -p envoy-tests --test dotl --test dotu

step "interop: the PyPI p9fs client against envoyd (9P2000.u and 9P2000.L)"
cargo build --quiet -p envoy-dom0-agent
ENVOYD="$PWD/target/debug/envoyd" python3 tests/python/test_p9fs.py

step "envoy-bench smoke: every workload once against envoyd (.L over tcp, .u over unix), reads verified"
tools/bench/compare.sh --smoke

step "object layer: envoy-xl storage against two envoyds (status, scrub, repair, gc, reload)"
tests/storage/xl-smoke.sh

step "images: envoy-xl image / check against envoyd (tables, --json, errors; rm + gc reclaims, the fork stays whole)"
tests/storage/image-smoke.sh

step "object layer bench smoke: the store vs fio, R=1 and R=2 over loopback (debug, small)"
tools/bench/objstore.sh --smoke

step "Linux guest suite: the kernel's v9fs client (QEMU TCG) against envoyd, tcp and fd, .u and .L"
tests/vm/run-suite.sh
step "Linux guest suite self-test: envoyd corrupts reads on purpose, the suite must say FAIL"
tests/vm/run-suite.sh --selftest

step "Xen suite: Xen 4.17 (bookworm, type=qemu + envoy-dm) and Xen 4.20 (trixie, type=xen_9pfsd, envoyd as xen-9pfsd) under QEMU: the guests' 9pnet_xen against envoyd (.L and .u), hot-plug, two confined guests, hostile frontends, xl destroy"
cargo build --release --quiet -p envoy-dom0-agent -p envoy-tools
tests/xen/run-suite.sh
step "Xen suite self-test: envoyd corrupts reads on purpose, the suite must say FAIL"
tests/xen/run-suite.sh --selftest

step "envoyd smoke: no-argument start prints the mount command"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
XDG_DATA_HOME="$tmp" timeout 10 target/debug/envoyd --data-dir "$tmp/data" --listen tcp:127.0.0.1:0 >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 50); do grep -q 'mount -t 9p' "$tmp/out" 2>/dev/null && break; sleep 0.1; done
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
grep -q 'mount -t 9p -o trans=tcp' "$tmp/out" || { cat "$tmp/out" "$tmp/err"; echo "envoyd did not print the mount command"; exit 1; }
[ -d "$tmp/data/export" ] || { echo "envoyd did not create its default export"; exit 1; }
if target/debug/envoyd --listen bogus:1 2>"$tmp/err"; then echo "bad --listen accepted"; exit 1; fi
[ "$(wc -l <"$tmp/err")" -le 2 ] && grep -q 'bad --listen' "$tmp/err" || { cat "$tmp/err"; echo "error not one clear line"; exit 1; }

step "all tests passed"
