//! The object layer under faults: envoyd killed with -9 in the middle of a write stream
//! (50 trials), malformed storage frames, content that does not match its claimed hash, and
//! a full disk (a small tmpfs this test mounts).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_objstore::wire::{self, NOTAG, Reply, Request, RequestType};
use envoy_objstore::{ErrorCode, ObjectId, PutObject, StorageClient};
use support::storage::{Host, content, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every object the store lists reads back whole and hashes to its id.
async fn all_valid(c: &StorageClient) -> usize {
    let listed = c.list_all().await.expect("list");
    for o in &listed {
        let data = c
            .get_object(&o.id, 0)
            .await
            .expect("listed object readable");
        assert_eq!(data.len() as u64, o.size);
        assert_eq!(ObjectId::of(&data), o.id, "partial or wrong bytes served");
    }
    listed.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_loses_no_acknowledged_object() {
    const TRIALS: u64 = 50;
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut host = Host::start("solo", port, &tmp.path().join("solo"), None, &[]);
    let mut acked_all: Vec<ObjectId> = Vec::new();
    let mut record_version = 0u64;
    for trial in 0..TRIALS {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "trials take too long"
        );
        let client = host.client().await;
        // Four writers, each with its own stream of objects (1 KiB .. 1 MiB), plus a record
        // advanced by compare-and-set.
        let acked = Arc::new(Mutex::new(Vec::new()));
        let versions = Arc::new(Mutex::new(record_version));
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..4u64 {
            let (client, acked) = (client.clone(), acked.clone());
            writers.spawn(async move {
                for i in 0..10_000u64 {
                    let seed = trial * 1_000_000 + w * 100_000 + i;
                    let len = 1024 << (seed % 11);
                    let object = PutObject::new(content(seed, len), Vec::new());
                    match client.put(&object, 0).await {
                        Ok(_) => acked.lock().unwrap().push(object.id()),
                        Err(_) => return, // killed
                    }
                }
            });
        }
        {
            let (client, versions) = (client.clone(), versions.clone());
            writers.spawn(async move {
                loop {
                    let v = *versions.lock().unwrap();
                    let value = Bytes::from(format!("version {}", v + 1));
                    match client.cas("root", v, value, Vec::new(), 0).await {
                        Ok(n) => *versions.lock().unwrap() = n,
                        Err(_) => return,
                    }
                }
            });
        }
        // Let the stream run a while (varied per trial), then kill -9 mid-write.
        tokio::time::sleep(Duration::from_millis(40 + (trial * 37) % 300)).await;
        host.kill();
        while writers.join_next().await.is_some() {}
        let acked = acked.lock().unwrap().clone();
        acked_all.extend(acked);
        let acked_version = *versions.lock().unwrap();
        // Restart on the same directory: everything acknowledged is there and valid.
        host.restart();
        let client = host.client().await;
        let present = client.has(&acked_all).await.expect("has");
        for (id, here) in acked_all.iter().zip(&present) {
            assert!(here, "trial {trial}: acknowledged object {id} lost");
        }
        let record = client.record("root", 0).await.unwrap().expect("record");
        assert!(
            record.version >= acked_version,
            "trial {trial}: record at {} after version {acked_version} was acknowledged",
            record.version
        );
        assert_eq!(record.value, format!("version {}", record.version));
        record_version = record.version;
        if trial % 10 == 9 || trial == TRIALS - 1 {
            let n = all_valid(&client).await;
            assert!(n >= acked_all.len());
        }
    }
    assert!(
        acked_all.len() > 200,
        "too few writes acknowledged to mean anything"
    );
    eprintln!(
        "{TRIALS} kill -9 trials, {} acknowledged objects, all present and valid, {:?}",
        acked_all.len(),
        started.elapsed()
    );
}

/// A raw connection to the storage service, after Tversion.
async fn raw(endpoint_port: u16) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", endpoint_port))
        .await
        .unwrap();
    let v = Request::Version {
        msize: 1 << 20,
        version: wire::VERSION.into(),
    };
    s.write_all(&v.encode(NOTAG)).await.unwrap();
    let reply = read_frame(&mut s).await.expect("Rversion");
    let (_, r) = Reply::decode(reply, RequestType::of(&v)).unwrap();
    assert!(matches!(r, Reply::Version { msize: 1048576, .. }), "{r:?}");
    s
}

async fn read_frame(s: &mut tokio::net::TcpStream) -> Option<Bytes> {
    let mut size = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut size))
        .await
        .ok()?
        .ok()?;
    let n = u32::from_le_bytes(size) as usize;
    let mut rest = vec![0u8; n - 4];
    s.read_exact(&mut rest).await.ok()?;
    let mut f = BytesMut::from(&size[..]);
    f.put_slice(&rest);
    Some(f.freeze())
}

fn frame(ty: u8, tag: u16, body: &[u8]) -> Vec<u8> {
    let mut f = ((7 + body.len()) as u32).to_le_bytes().to_vec();
    f.push(ty);
    f.extend_from_slice(&tag.to_le_bytes());
    f.extend_from_slice(body);
    f
}

/// The error code of the reply to a raw frame (which must be an Rerror with the tag).
async fn error_code(s: &mut tokio::net::TcpStream, f: &[u8], tag: u16) -> ErrorCode {
    s.write_all(f).await.unwrap();
    let reply = read_frame(s)
        .await
        .expect("a reply, not a closed connection");
    let (t, r) = Reply::decode(reply, RequestType::peek(f)).unwrap();
    assert_eq!(t, tag);
    match r {
        Reply::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_false_hashes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut host = Host::start("solo", port, &tmp.path().join("solo"), None, &[]);
    let good = host.client().await;

    let mut s = raw(port).await;
    // Unknown type, truncated Tget, trailing bytes, a Thas claiming more ids than sent, a
    // bad UTF-8 record name, an unknown admin op, a piece of an object never started.
    assert_eq!(
        error_code(&mut s, &frame(99, 1, b""), 1).await,
        ErrorCode::Protocol
    );
    assert_eq!(
        error_code(&mut s, &frame(132, 2, &[0; 10]), 2).await,
        ErrorCode::Protocol
    );
    let mut get = vec![0u8; 45];
    get.push(0);
    assert_eq!(
        error_code(&mut s, &frame(132, 3, &get), 3).await,
        ErrorCode::Protocol
    );
    assert_eq!(
        error_code(&mut s, &frame(134, 4, &[200, 0, 1, 2]), 4).await,
        ErrorCode::Protocol
    );
    assert_eq!(
        error_code(&mut s, &frame(142, 5, &[0, 2, 0, 0xff, 0xfe]), 5).await,
        ErrorCode::Protocol
    );
    assert_eq!(
        error_code(&mut s, &frame(154, 6, &[77, 0, 0, 0, 0, 0, 0, 0, 0]), 6).await,
        ErrorCode::Protocol
    );
    let piece = Request::Put {
        flags: 0,
        id: ObjectId([9; 32]),
        total: 100,
        offset: 50,
        refs: Vec::new(),
        data: Bytes::from_static(&[1; 50]),
    };
    assert_eq!(
        error_code(&mut s, &piece.encode(7), 7).await,
        ErrorCode::Protocol
    );
    // A put whose content does not hash to its claimed id: refused (locally and for the
    // cluster), nothing stored.
    for (tag, flags) in [(8, 0), (9, wire::REPLICATED)] {
        let liar = Request::Put {
            flags,
            id: ObjectId::of(b"the truth"),
            total: 5,
            offset: 0,
            refs: Vec::new(),
            data: Bytes::from_static(b"a lie"),
        };
        assert_eq!(
            error_code(&mut s, &liar.encode(tag), tag).await,
            ErrorCode::HashMismatch
        );
    }
    assert_eq!(
        good.has(&[ObjectId::of(b"the truth")]).await.unwrap(),
        vec![false]
    );
    // The same lie sent in pieces is refused when the last piece arrives.
    let big = content(3, 2 << 20);
    let liar_id = ObjectId::of(b"something else");
    for (tag, (i, chunk)) in (20..).zip(big.chunks(1 << 19).enumerate()) {
        let p = Request::Put {
            flags: 0,
            id: liar_id,
            total: big.len() as u64,
            offset: (i << 19) as u64,
            refs: Vec::new(),
            data: Bytes::copy_from_slice(chunk),
        };
        s.write_all(&p.encode(tag)).await.unwrap();
        let (t, r) = Reply::decode(read_frame(&mut s).await.unwrap(), RequestType::of(&p)).unwrap();
        assert_eq!(t, tag);
        if i < 3 {
            assert!(matches!(r, Reply::Put { copies: 0, .. }), "{r:?}");
        } else {
            assert!(
                matches!(
                    r,
                    Reply::Error {
                        code: ErrorCode::HashMismatch,
                        ..
                    }
                ),
                "{r:?}"
            );
        }
    }
    assert_eq!(good.has(&[liar_id]).await.unwrap(), vec![false]);
    // Requests before Tversion are refused; the connection still answers after all this.
    let mut fresh = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    assert_eq!(
        error_code(&mut fresh, &frame(150, 1, b""), 1).await,
        ErrorCode::Protocol
    );
    s.write_all(&Request::Stats.encode(30)).await.unwrap();
    let (t, r) = Reply::decode(
        read_frame(&mut s).await.unwrap(),
        RequestType::of(&Request::Stats),
    )
    .unwrap();
    assert_eq!(t, 30);
    assert!(matches!(r, Reply::Stats(_)));
    // Framing violations end the connection: a size field below the header, then one far
    // beyond msize.
    for bad in [
        vec![3u8, 0, 0, 0, 150, 0, 0],
        ((64u32 << 20).to_le_bytes().to_vec()),
    ] {
        let mut s = raw(port).await;
        s.write_all(&bad).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the connection must be closed, not left hanging")
            .unwrap_or(0);
        assert_eq!(n, 0, "expected the connection to close");
    }
    // Garbage from many connections at once: the service still serves a good client.
    let mut junk = tokio::task::JoinSet::new();
    for i in 0..16u8 {
        junk.spawn(async move {
            let mut s = raw(port).await;
            for j in 0..50u8 {
                let body: Vec<u8> = (0..(i as usize * 7 + j as usize))
                    .map(|k| (k as u8) ^ i ^ j)
                    .collect();
                let _ = s
                    .write_all(&frame(130 + (j % 28), u16::from(j), &body))
                    .await;
            }
        });
    }
    while junk.join_next().await.is_some() {}
    let object = PutObject::new(content(1, 10_000), Vec::new());
    good.put(&object, 0).await.unwrap();
    assert_eq!(
        good.get_object(&object.id(), 0).await.unwrap(),
        object.data()
    );
    assert!(host.exited().is_none(), "envoyd died: {}", host.log_tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_replies_cannot_grow_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut host = Host::start("solo", port, &tmp.path().join("solo"), None, &[]);
    let good = host.client().await;
    let big = PutObject::new(content(5, 16 << 20), Vec::new());
    good.put(&big, 0).await.unwrap();
    let before = host.rss_kib().expect("rss");
    // 400 reads of 16 MiB (6.4 GB of replies) sent without reading one: the service must stop
    // reading from this connection once its budget of held replies is spent.
    let mut greedy = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let v = Request::Version {
        msize: wire::MAX_MSIZE,
        version: wire::VERSION.into(),
    };
    greedy.write_all(&v.encode(NOTAG)).await.unwrap();
    let mut sent = 0;
    for tag in 0..400u16 {
        let get = Request::Get {
            flags: 0,
            id: big.id(),
            offset: 0,
            count: 16 << 20,
        };
        match tokio::time::timeout(Duration::from_secs(2), greedy.write_all(&get.encode(tag))).await
        {
            Ok(Ok(())) => sent += 1,
            _ => break, // the service stopped reading: the point of the test
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = host.rss_kib().expect("rss");
    assert!(
        after < before + 600 * 1024,
        "envoyd grew from {before} KiB to {after} KiB for one client that never reads ({sent} requests sent)"
    );
    // Other clients are still served.
    let small = PutObject::new(content(6, 1000), Vec::new());
    good.put(&small, 0).await.unwrap();
    assert_eq!(good.get_object(&small.id(), 0).await.unwrap(), small.data());
    drop(greedy);
    assert!(host.exited().is_none(), "envoyd died: {}", host.log_tail());
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "cannot mount a tmpfs (this test needs root)");
        Tmpfs(dir.to_owned())
    }

    fn resize(&self, size: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_the_service_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "24m");
    let port = free_port();
    let data = tmp.path().join("data");
    let store = disk.0.join("objects");
    let mut host = Host::start(
        "solo",
        port,
        &data,
        None,
        &[
            "--storage-dir",
            store.to_str().unwrap(),
            "--storage-reserve-mib",
            "1",
        ],
    );
    let client = host.client().await;
    let mut stored = Vec::new();
    let mut full = None;
    for n in 0..64u64 {
        let object = PutObject::new(content(n, 1 << 20), Vec::new());
        match client.put(&object, 0).await {
            Ok(_) => stored.push(object),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let e = full.expect("24 MiB cannot hold 64 MiB");
    assert_eq!(e.code(), ErrorCode::NoSpace, "{e}");
    assert!(e.to_string().contains("no space"), "{e}");
    assert!(stored.len() >= 10, "only {} objects fit", stored.len());
    // Nothing corrupted: every acknowledged object reads back; small puts still fail cleanly.
    for o in &stored {
        assert_eq!(client.get_object(&o.id(), 0).await.unwrap(), o.data());
    }
    // Still full after a restart; the store opens and serves what it has.
    host.kill();
    host.restart();
    let client = host.client().await;
    for o in &stored {
        assert_eq!(client.get_object(&o.id(), 0).await.unwrap(), o.data());
    }
    // Space returns: puts succeed again, old objects intact.
    disk.resize("96m");
    let mut ok = 0;
    for n in 100..110u64 {
        let object = PutObject::new(content(n, 1 << 20), Vec::new());
        client
            .put(&object, 0)
            .await
            .expect("put after space returned");
        assert_eq!(
            client.get_object(&object.id(), 0).await.unwrap(),
            object.data()
        );
        ok += 1;
    }
    assert_eq!(ok, 10);
    for o in &stored {
        assert_eq!(client.get_object(&o.id(), 0).await.unwrap(), o.data());
    }
    drop(host);
}
