//! Image administration against real envoyd processes, through `envoy-xl image` / `envoy-xl
//! check` and a 9P client: a snapshot taken from the command line holds what a client wrote
//! and never synced; attach names root a session inside an image or a (read-only) snapshot;
//! deleting an image in use is refused; `check` passes a whole image and names the file of a
//! missing or corrupt block; deleting a snapshot, or an image, and collecting garbage frees
//! what only it held while a fork of it stays whole.
//!
//! `envoy-xl` is run from beside `envoyd` (`cargo test --workspace`, as scripts/test.sh runs
//! it, builds both).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use envoy_objstore::wire::AdminOp;
use envoy_objstore::{LocalStore, ObjectId, StoreOptions};
use envoy_protocol::Dialect;
use envoy_protocol::consts::*;
use envoy_tools::client::Client;
use support::storage::{Host, content, free_port};

const ROOT: u32 = 1;
const BLOCK: usize = 64 * 1024;

fn envoy_xl() -> PathBuf {
    let xl = Path::new(env!("CARGO_BIN_EXE_envoyd")).with_file_name("envoy-xl");
    assert!(
        xl.exists(),
        "{} is missing: build it (cargo build -p envoy-tools) or run cargo test --workspace",
        xl.display()
    );
    xl
}

/// What one `envoy-xl` run did.
struct Run {
    ok: bool,
    out: String,
    err: String,
}

/// `envoy-xl ARGS` against `host`'s image socket (given after the first argument: `image` or
/// `check`).
fn xl(host: &Host, args: &[&str]) -> Run {
    let socket = host.data.join("images.sock");
    let out = Command::new(envoy_xl())
        .arg(args[0])
        .arg("--socket")
        .arg(&socket)
        .args(&args[1..])
        .output()
        .expect("run envoy-xl");
    Run {
        ok: out.status.success(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `envoy-xl ARGS`, which must succeed; its output.
fn xl_ok(host: &Host, args: &[&str]) -> String {
    let r = xl(host, args);
    assert!(r.ok, "envoy-xl {args:?} failed: {}{}", r.out, r.err);
    r.out
}

/// A one-host envoyd serving the image namespace on a 9P port; returns it and that port.
async fn start(dir: &Path, name: &str) -> (Host, u16) {
    let p9 = free_port();
    let listen = format!("tcp:127.0.0.1:{p9}");
    let mut host = Host::start(
        name,
        free_port(),
        &dir.join(name),
        None,
        &["--images", "--listen", &listen],
    );
    host.client().await;
    wait_for_socket(&host).await;
    (host, p9)
}

async fn wait_for_socket(host: &Host) {
    let path = host.data.join("images.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while envoy::image::control::Client::connect(&path).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no image socket: {}",
            host.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A 9P2000.L client of the envoyd on `port`, attached to `aname` as root.
async fn attach(port: u16, aname: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    let c = loop {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        match Client::connect_tcp(addr, Dialect::P9P2000L, 1 << 20).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "no 9P server on {port}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    c.attach(ROOT, "", aname, 0).await.unwrap();
    c
}

/// Create (or truncate and rewrite) `name` in the client's root with `data`, then close it:
/// committed.
async fn put_file(c: &Client, dir: &[&str], name: &str, data: &[u8]) {
    let path: Vec<&str> = dir.iter().copied().chain([name]).collect();
    // A walk that stops short (no such file) is no error in 9P, and makes no fid.
    if matches!(c.walk(ROOT, 90, &path).await, Ok(q) if q.len() == path.len()) {
        c.lopen(90, P9_DOTL_RDWR | P9_DOTL_TRUNC).await.unwrap();
    } else {
        c.walk(ROOT, 90, dir).await.unwrap();
        c.lcreate(90, name, P9_DOTL_RDWR, 0o644, 0).await.unwrap();
    }
    c.write(90, 0, data).await.unwrap();
    c.clunk(90).await.unwrap();
}

async fn read_file(c: &Client, path: &[&str]) -> Vec<u8> {
    c.walk(ROOT, 91, path).await.unwrap();
    c.lopen(91, P9_DOTL_RDONLY).await.unwrap();
    let data = c.read(91, 0, 16 << 20).await.unwrap().to_vec();
    c.clunk(91).await.unwrap();
    data
}

/// `n` 64 KiB blocks of random content for `seed` (distinct from every other seed's).
fn blocks(seed: u64, n: usize) -> Vec<u8> {
    (0..n as u64)
        .flat_map(|k| content((seed << 16) | k, BLOCK))
        .collect()
}

fn errno(e: envoy_tools::client::ClientError) -> Option<i32> {
    e.errno().map(|n| n as i32)
}

/// Retry `envoy-xl ARGS` until it succeeds (a disconnected client's fids go a moment later).
async fn xl_until_ok(host: &Host, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = xl(host, args);
        if r.ok {
            return r.out;
        }
        assert!(Instant::now() < deadline, "envoy-xl {args:?}: {}", r.err);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_envoy_xl_holds_unsynced_writes_and_attach_names_root_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let (host, p9) = start(tmp.path(), "a").await;
    assert_eq!(
        xl_ok(&host, &["image", "create", "vm1"]).trim(),
        "image vm1 created"
    );
    // A client attached to "vm1" writes a file and keeps it open, never syncing.
    let c = attach(p9, "vm1").await;
    let data = blocks(1, 3);
    c.walk(ROOT, 2, &[]).await.unwrap();
    c.lcreate(2, "disk.img", P9_DOTL_RDWR, 0o644, 0)
        .await
        .unwrap();
    c.write(2, 0, &data).await.unwrap();
    let out = xl_ok(&host, &["image", "snapshot", "vm1"]);
    assert!(out.starts_with("snapshot vm1@1 taken (root "), "{out}");

    // The snapshot, attached as "vm1/1": the unsynced data is there; it is read-only.
    let s = attach(p9, "vm1/1").await;
    assert_eq!(read_file(&s, &["disk.img"]).await, data);
    s.walk(ROOT, 3, &["disk.img"]).await.unwrap();
    assert_eq!(
        errno(s.lopen(3, P9_DOTL_RDWR).await.unwrap_err()),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno(s.mkdir(ROOT, "d", 0o755, 0).await.unwrap_err()),
        Some(libc::EROFS)
    );
    // "vm1/current" is the live image; ".." at an attach root stays there.
    let cur = attach(p9, "/vm1/current").await;
    cur.walk(ROOT, 4, &["..", "..", "disk.img"]).await.unwrap();
    cur.lopen(4, P9_DOTL_RDONLY).await.unwrap();
    assert_eq!(cur.read(4, 0, data.len()).await.unwrap().len(), data.len());
    // The namespace itself is still served at "", and unknown names are ENOENT.
    let top = attach(p9, "").await;
    top.walk(ROOT, 5, &["vm1", "1", "disk.img"]).await.unwrap();
    for bad in ["nope", "vm1/7", "vm1/x", "a@b"] {
        let probe = Client::connect_tcp(
            std::net::SocketAddr::from(([127, 0, 0, 1], p9)),
            Dialect::P9P2000L,
            1 << 20,
        )
        .await
        .unwrap();
        assert_eq!(
            errno(probe.attach(ROOT, "", bad, 0).await.unwrap_err()),
            Some(libc::ENOENT),
            "attach {bad:?}"
        );
    }

    // In use: removing the image, or the snapshot a client is in, is refused (exit 1, one
    // line saying why).
    for target in ["vm1", "vm1@1"] {
        let r = xl(&host, &["image", "rm", target]);
        assert!(!r.ok, "rm {target} of a tree in use succeeded");
        assert_eq!(
            r.err.trim(),
            format!(
                "envoy-xl: {target} is in use (a 9P client holds a file in it, or envoyd serves it with --image): close those first"
            )
        );
    }
    drop((c, s, cur, top));
    let out = xl_until_ok(&host, &["image", "rm", "vm1"]).await;
    assert!(out.starts_with("removed vm1@1, vm1;"), "{out}");
    assert_eq!(
        xl_ok(&host, &["image", "list"]).trim(),
        "no images",
        "the catalog still lists vm1"
    );
}

/// The objects of `data`'s blocks.
fn block_ids(data: &[u8]) -> Vec<ObjectId> {
    data.chunks(BLOCK).map(ObjectId::of).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_a_whole_image_and_names_the_file_of_a_missing_or_corrupt_object() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut host, p9) = start(tmp.path(), "a").await;
    xl_ok(&host, &["image", "create", "vm2"]);
    let c = attach(p9, "vm2").await;
    c.mkdir(ROOT, "etc", 0o755, 0).await.unwrap();
    let motd = blocks(2, 2);
    put_file(&c, &["etc"], "motd", &motd).await;
    put_file(&c, &[], "hostname", b"vm2\n").await;
    drop(c);
    xl_ok(&host, &["image", "snapshot", "vm2"]);
    let out = xl_ok(&host, &["check", "vm2"]);
    assert!(
        out.starts_with("check vm2: 2 trees (vm2, vm2@1): ") && out.trim_end().ends_with(": OK"),
        "{out}"
    );

    // envoyd stopped: block 0 of /etc/motd deleted, block 1 corrupted on disk.
    let ids = block_ids(&motd);
    host.kill();
    {
        let store = LocalStore::open(&host.store_dir(), StoreOptions::default()).unwrap();
        assert_eq!(store.delete(&[ids[0]], u64::MAX).unwrap(), 1);
        let (path, offset) = store.locate(&ids[1]).unwrap().unwrap();
        drop(store);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offset as usize + 1000] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
    }
    host.restart();
    host.client().await;
    wait_for_socket(&host).await;
    let r = xl(&host, &["check", "vm2"]);
    assert!(!r.ok, "check passed a damaged image: {}", r.out);
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines.len(), 5, "{}", r.out);
    for (i, tree) in ["vm2", "vm2@1"].iter().enumerate() {
        let (missing, corrupt) = (lines[2 * i], lines[2 * i + 1]);
        assert!(
            missing.starts_with(&format!("{tree}: /etc/motd (inode "))
                && missing.contains("block 0 missing")
                && missing.ends_with(&format!("[object {}]", ids[0])),
            "{missing}"
        );
        assert!(
            corrupt.starts_with(&format!("{tree}: /etc/motd (inode "))
                && corrupt.contains("block 1 corrupt")
                && corrupt.ends_with(&format!("[object {}]", ids[1])),
            "{corrupt}"
        );
    }
    assert!(lines[4].ends_with(": 4 problems"), "{}", r.out);
    assert_eq!(
        r.err.trim(),
        "envoy-xl: image vm2 failed its check: 4 problems"
    );
    // --json: the same report, machine-readable; the exit status still says it failed.
    let r = xl(&host, &["check", "vm2", "--json"]);
    assert!(!r.ok);
    let j: serde_json::Value = serde_json::from_str(&r.out).unwrap();
    let problems = j["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 4);
    assert_eq!(problems[0]["path"], "/etc/motd");
    assert_eq!(problems[0]["object"], ids[0].to_string());
    assert_eq!(j["trees"], serde_json::json!(["vm2", "vm2@1"]));
    // The undamaged file still reads; a missing image is its own error.
    let c = attach(p9, "vm2").await;
    assert_eq!(read_file(&c, &["hostname"]).await, b"vm2\n");
    let r = xl(&host, &["check", "nope"]);
    assert!(!r.ok);
    assert_eq!(r.err.trim(), "envoy-xl: image nope does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_and_gc_reclaim_what_only_a_snapshot_or_an_image_held_and_the_fork_stays_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut host, p9) = start(tmp.path(), "a").await;
    let storage = host.client().await;
    xl_ok(&host, &["image", "create", "base"]);
    let shared = blocks(3, 4);
    let only_base = blocks(4, 8);
    let only_vm = blocks(5, 2);
    let c = attach(p9, "base").await;
    put_file(&c, &[], "a", &shared).await;
    drop(c);
    xl_ok(&host, &["image", "snapshot", "base"]);
    assert_eq!(
        xl_ok(&host, &["image", "fork", "base@1", "vm"]).trim(),
        "image vm forked from base@1"
    );
    // Snapshot 2 holds a first /b that is then rewritten: only base@2 keeps its blocks.
    let old_b = blocks(6, 3);
    let c = attach(p9, "base").await;
    put_file(&c, &[], "b", &old_b).await;
    assert!(xl_ok(&host, &["image", "snapshot", "base"]).starts_with("snapshot base@2 "));
    put_file(&c, &[], "b", &only_base).await;
    drop(c);
    let du: serde_json::Value =
        serde_json::from_str(&xl_ok(&host, &["image", "du", "base", "--json"])).unwrap();
    let snap2 = du["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["snapshot"] == 2)
        .unwrap()
        .clone();
    let unique2 = snap2["unique"].as_u64().unwrap();
    assert!(
        (3 * BLOCK as u64..3 * BLOCK as u64 + 16384).contains(&unique2),
        "{snap2}"
    );
    let before = storage.stats().await.unwrap().local;
    assert!(xl_ok(&host, &["image", "rm", "base@2"]).starts_with("removed base@2;"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    storage.admin(AdminOp::Gc, 0).await.unwrap();
    let after = storage.stats().await.unwrap().local;
    assert!(
        before.bytes - after.bytes >= unique2,
        "gc freed {} bytes, base@2 alone held {unique2}",
        before.bytes - after.bytes
    );
    for id in block_ids(&old_b) {
        assert!(
            !storage.has(&[id]).await.unwrap()[0],
            "{id} of base@2 survived GC"
        );
    }
    for id in block_ids(&only_base).into_iter().chain(block_ids(&shared)) {
        assert!(
            storage.has(&[id]).await.unwrap()[0],
            "{id} went with base@2"
        );
    }
    assert!(
        xl_ok(&host, &["check", "base"])
            .trim_end()
            .ends_with(": OK")
    );

    let v = attach(p9, "vm").await;
    put_file(&v, &[], "c", &only_vm).await;
    drop(v);

    let du: serde_json::Value =
        serde_json::from_str(&xl_ok(&host, &["image", "du", "--json"])).unwrap();
    let row = |image: &str| {
        du["usage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["image"] == image && r["snapshot"].is_null())
            .unwrap_or_else(|| panic!("no {image} in {du}"))
            .clone()
    };
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
    let (base, vm) = (row("base"), row("vm"));
    let blk = BLOCK as u64;
    let slack = 16 * 1024;
    assert!(
        (8 * blk..8 * blk + slack).contains(&n(&base, "unique")),
        "{base}"
    );
    assert!(
        (2 * blk..2 * blk + slack).contains(&n(&vm, "unique")),
        "{vm}"
    );
    assert!(
        (4 * blk..4 * blk + slack).contains(&n(&vm, "shared")),
        "{vm}"
    );
    assert_eq!(base["contents"]["logical"], 12 * blk);

    let before = storage.stats().await.unwrap().local;
    let out = xl_ok(&host, &["image", "rm", "base"]);
    assert!(out.starts_with("removed base@1, base;"), "{out}");
    // Stamps are whole seconds: let one pass so that --grace 0 covers the last writes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let msg = storage.admin(AdminOp::Gc, 0).await.unwrap();
    assert!(msg.starts_with("gc done: "), "{msg}");
    let after = storage.stats().await.unwrap().local;
    let freed = before.bytes - after.bytes;
    assert!(
        freed >= n(&base, "unique"),
        "gc freed {freed} bytes, base alone held {}",
        n(&base, "unique")
    );
    assert!(
        after.bytes >= n(&vm, "referenced"),
        "{} bytes left, the fork references {}",
        after.bytes,
        n(&vm, "referenced")
    );
    for id in block_ids(&only_base) {
        assert!(!storage.has(&[id]).await.unwrap()[0], "{id} survived GC");
    }
    // The fork is whole, reads back, and now holds alone what it shared.
    let out = xl_ok(&host, &["check", "vm"]);
    assert!(out.trim_end().ends_with(": OK"), "{out}");
    let v = attach(p9, "vm").await;
    assert_eq!(read_file(&v, &["a"]).await, shared);
    assert_eq!(read_file(&v, &["c"]).await, only_vm);
    drop(v);
    let du: serde_json::Value =
        serde_json::from_str(&xl_ok(&host, &["image", "du", "vm", "--json"])).unwrap();
    let rows = du["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        n(&rows[0], "unique") >= 6 * blk && n(&rows[0], "shared") == 0,
        "{du}"
    );
    // Still true after a restart: nothing the fork needs was collected.
    host.kill();
    host.restart();
    host.client().await;
    wait_for_socket(&host).await;
    assert!(xl_ok(&host, &["check", "vm"]).trim_end().ends_with(": OK"));
}
