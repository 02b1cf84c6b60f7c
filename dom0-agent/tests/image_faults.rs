//! Images under faults, through a real envoyd and the 9P client. The owner killed with -9 in
//! the middle of a write workload, 30 times: after each restart every byte a client fsync'd
//! is there, and nothing else is — each file reads as it was at its last fsync or at some
//! later point of its own history (the log is replayed in order; a torn or invented state
//! fails the test). A stored block corrupted on disk: reads of its range are EIO, the rest
//! of the file reads back, the checksum failure is in envoyd's log — never wrong bytes.

mod support;

use std::time::{Duration, Instant};

use envoy_protocol::Tsetattr;
use envoy_protocol::consts::*;
use support::storage::{Host, flip_byte, free_port, nine_p};

const WRITERS: usize = 3;
const FILES: usize = 3;
const TRIALS: u64 = 30;

/// One file's history since its last fsync: the fsync'd content first, then every later
/// state a crash may leave it in.
#[derive(Clone, Default)]
struct History {
    states: Vec<Vec<u8>>,
}

impl History {
    fn current(&self) -> &Vec<u8> {
        self.states.last().expect("a state")
    }
    fn changed(&mut self, next: Vec<u8>) {
        self.states.push(next);
    }
    fn synced(&mut self) {
        let now = self.current().clone();
        self.states = vec![now];
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One writer's files: edits them through its own connection until envoyd dies, recording
/// each file's history; fsyncs often.
async fn write_until_killed(
    port: u16,
    w: usize,
    seed: u64,
    mut files: Vec<History>,
) -> Vec<History> {
    let c = nine_p(port).await;
    if c.attach(1, "", "", 0).await.is_err() {
        return files;
    }
    for (i, _) in files.iter().enumerate() {
        let fid = 10 + i as u32;
        let name = format!("w{w}-f{i}");
        let opened = match c.walk(1, fid, &[name.as_str()]).await {
            Ok(_) => c.lopen(fid, P9_DOTL_RDWR).await.map(drop),
            Err(_) => {
                let _ = c.walk(1, fid, &[]).await;
                c.lcreate(fid, &name, P9_DOTL_RDWR, 0o644, 0)
                    .await
                    .map(drop)
            }
        };
        if opened.is_err() {
            return files;
        }
    }
    let mut rng = Rng(seed | 1);
    loop {
        let i = (rng.next() % FILES as u64) as usize;
        let fid = 10 + i as u32;
        let x = rng.next();
        let mut next = files[i].current().clone();
        let done = match x % 10 {
            0..=5 => {
                let offset = (x >> 8) % (768 << 10);
                let len = 1 + ((x >> 32) % (160 << 10)) as usize;
                let data: Vec<u8> = (0..len).map(|k| (k as u64 ^ x) as u8 | 1).collect();
                let end = offset as usize + len;
                if next.len() < end {
                    next.resize(end, 0);
                }
                next[offset as usize..end].copy_from_slice(&data);
                // The state after the write is possible from the moment it is sent.
                files[i].changed(next);
                c.write(fid, offset, &data).await.map(drop)
            }
            6 => {
                let size = (x >> 8) % (512 << 10);
                next.resize(size as usize, 0);
                files[i].changed(next);
                c.setattr(Tsetattr {
                    fid,
                    valid: SETATTR_SIZE,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    size,
                    atime_sec: 0,
                    atime_nsec: 0,
                    mtime_sec: 0,
                    mtime_nsec: 0,
                })
                .await
            }
            _ => {
                let r = c.fsync(fid, false).await;
                if r.is_ok() {
                    files[i].synced();
                }
                r
            }
        };
        if done.is_err() {
            return files;
        }
    }
}

/// One envoyd serving image `vm` from its own store under `dir`; its 9P port.
fn image_host(dir: &std::path::Path) -> (Host, u16) {
    let p9 = free_port();
    let listen = format!("tcp:127.0.0.1:{p9}");
    let host = Host::start(
        "solo",
        free_port(),
        &dir.join("solo"),
        None,
        &["--image", "vm", "--listen", &listen],
    );
    (host, p9)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_loses_no_fsyncd_byte() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (mut host, p9) = image_host(tmp.path());
    let mut histories: Vec<Vec<History>> = (0..WRITERS)
        .map(|_| {
            vec![
                History {
                    states: vec![Vec::new()]
                };
                FILES
            ]
        })
        .collect();
    let mut syncs_seen = 0usize;
    for trial in 0..TRIALS {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "trials take too long"
        );
        let writers: Vec<_> = histories
            .drain(..)
            .enumerate()
            .map(|(w, files)| {
                tokio::spawn(write_until_killed(p9, w, trial * 977 + w as u64, files))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + (trial * 53) % 500)).await;
        host.kill();
        for w in writers {
            histories.push(w.await.unwrap());
        }
        host.restart();
        // Every file is at its last fsync or a later state of its own history.
        let c = nine_p(p9).await;
        c.attach(1, "", "", 0).await.unwrap();
        for (w, files) in histories.iter_mut().enumerate() {
            for (i, h) in files.iter_mut().enumerate() {
                let name = format!("w{w}-f{i}");
                let got = match c.walk(1, 2, &[name.as_str()]).await {
                    Ok(_) => {
                        c.lopen(2, P9_DOTL_RDONLY).await.unwrap();
                        let got = c.read(2, 0, 2 << 20).await.unwrap().to_vec();
                        c.clunk(2).await.unwrap();
                        got
                    }
                    // Created, never synced, lost: only allowed if it was never synced.
                    Err(_) => {
                        assert!(
                            h.states[0].is_empty(),
                            "trial {trial}: {name} lost after it was fsync'd\n{}",
                            host.log_tail()
                        );
                        Vec::new()
                    }
                };
                let at = h.states.iter().position(|s| *s == got);
                assert!(
                    at.is_some(),
                    "trial {trial}: {name} ({} bytes) is neither its fsync'd content ({} bytes) \
                     nor a later state of it\n{}",
                    got.len(),
                    h.states[0].len(),
                    host.log_tail()
                );
                if h.states.len() > 1 || !h.states[0].is_empty() {
                    syncs_seen += 1;
                }
                h.states = vec![got];
            }
        }
        c.clunk(1).await.unwrap();
    }
    assert!(
        syncs_seen > TRIALS as usize,
        "the workload made too little progress"
    );
    let log = std::fs::read_to_string(host.data.join("envoyd.log")).unwrap_or_default();
    eprintln!(
        "{TRIALS} kill -9 trials of an image under {WRITERS} writers: every fsync'd byte \
         intact; {} restarts replayed a write-ahead log; {:?}",
        log.matches("replayed the write-ahead log").count(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_block_is_eio_for_its_range_and_logged() {
    const BLOCK: usize = 64 << 10;
    let tmp = tempfile::tempdir().unwrap();
    let (mut host, p9) = image_host(tmp.path());
    // 24 distinct blocks: more than a log entry holds, so the fsync commits them as blocks.
    let data: Vec<u8> = (0..24 * BLOCK)
        .map(|i| (i / BLOCK * 7 + i % 251) as u8)
        .collect();
    let c = nine_p(p9).await;
    c.attach(1, "", "", 0).await.unwrap();
    c.walk(1, 2, &[]).await.unwrap();
    c.lcreate(2, "disk", P9_DOTL_RDWR, 0o644, 0).await.unwrap();
    c.write(2, 0, &data).await.unwrap();
    c.fsync(2, false).await.unwrap();
    drop(c);
    host.kill();
    let victim = envoy_objstore::ObjectId::of(&data[5 * BLOCK..6 * BLOCK]);
    flip_byte(&host.store_dir(), &victim);
    host.restart();

    let c = nine_p(p9).await;
    c.attach(1, "", "", 0).await.unwrap();
    c.walk(1, 2, &["disk"]).await.unwrap();
    c.lopen(2, P9_DOTL_RDONLY).await.unwrap();
    for attempt in 0..2 {
        for (offset, len) in [(5 * BLOCK, 100), (5 * BLOCK - 10, 20), (6 * BLOCK - 1, 1)] {
            let r = c.read(2, offset as u64, len).await;
            assert_eq!(
                r.as_ref().err().and_then(|e| e.errno()),
                Some(libc::EIO as u32),
                "attempt {attempt}: read of {len} at {offset} gave {r:?}"
            );
        }
        // The blocks around it read back exactly.
        let before = c.read(2, 0, 5 * BLOCK).await.unwrap();
        assert!(before[..] == data[..5 * BLOCK]);
        let after = c.read(2, 6 * BLOCK as u64, 18 * BLOCK).await.unwrap();
        assert!(after[..] == data[6 * BLOCK..]);
    }
    let log = std::fs::read_to_string(host.data.join("envoyd.log")).unwrap();
    assert!(
        log.contains("corrupt object copy quarantined") && log.contains(&victim.to_string()),
        "no checksum error for {victim} in the log:\n{}",
        host.log_tail()
    );
}
