//! The image backend served over 9P2000.L by the real server, driven by the 9P client: files,
//! directories, links and renames behave as on a file system, permissions are enforced, and
//! what a client wrote and closed (or fsync'd) is in the image's committed root — a fresh
//! server on the same store sees it.

use std::sync::Arc;

use envoy::image::fs::ImageFs;
use envoy::vfs::Errno;
use envoy::{Server, ServerConfig};
use envoy_objstore::{LocalStore, StoreOptions};
use envoy_protocol::Dialect;
use envoy_protocol::consts::*;
use envoy_tools::client::Client;
use envoy_transport::{Endpoint, Listener};
use tokio::sync::watch;

const ROOT: u32 = 1;

/// Serve `fs` (an image, or the namespace of images) on loopback; a connected, attached client
/// (as `uid`).
async fn serve<F: envoy::vfs::FileSystem>(fs: F, uid: u32) -> (Client, watch::Sender<bool>) {
    let server = Server::new(Arc::new(fs), ServerConfig::default());
    let listener = envoy_transport::bind(&"tcp:127.0.0.1:0".parse::<Endpoint>().unwrap())
        .await
        .unwrap();
    let Endpoint::Tcp(addr) = listener.local_endpoint() else {
        unreachable!()
    };
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(envoy::serve_listener(server, listener, stop_rx));
    let c = Client::connect_tcp(addr, Dialect::P9P2000L, 1 << 20)
        .await
        .unwrap();
    c.attach(ROOT, "", "", uid).await.unwrap();
    (c, stop)
}

fn store() -> (tempfile::TempDir, Arc<LocalStore>) {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
    (dir, Arc::new(s))
}

#[tokio::test]
async fn files_directories_and_links_over_9p_and_durable_after_close() {
    let (_d, s) = store();
    let fs = ImageFs::create(s.clone(), "vm1", 0, 0).unwrap();
    let (c, stop) = serve(fs, 0).await;
    // A file of 300 KiB (five blocks), written in pieces, read back.
    let data: Vec<u8> = (0..300 * 1024).map(|i| (i % 253) as u8).collect();
    c.walk(ROOT, 2, &[]).await.unwrap();
    let (_, iounit) = c.lcreate(2, "f", P9_DOTL_RDWR, 0o644, 0).await.unwrap();
    // As many whole 64 KiB blocks as a 1 MiB message carries: clients send aligned writes.
    assert_eq!(iounit, 15 * 65536);
    for (i, piece) in data.chunks(70_000).enumerate() {
        c.write(2, (i * 70_000) as u64, piece).await.unwrap();
    }
    assert_eq!(&c.read(2, 0, data.len() + 10).await.unwrap()[..], &data[..]);
    c.clunk(2).await.unwrap();
    // Directories, a symlink, a hard link, a rename, an unlink.
    c.mkdir(ROOT, "d", 0o755, 0).await.unwrap();
    c.walk(ROOT, 3, &["d"]).await.unwrap();
    c.symlink(3, "l", "../f", 0).await.unwrap();
    c.walk(ROOT, 4, &["f"]).await.unwrap();
    c.link(3, 4, "hard").await.unwrap();
    c.renameat(ROOT, "f", 3, "g").await.unwrap();
    let attr = c.getattr(4, GETATTR_ALL).await.unwrap();
    assert_eq!((attr.nlink, attr.size), (2, data.len() as u64));
    c.walk(3, 5, &["l"]).await.unwrap();
    assert_eq!(c.readlink(5).await.unwrap(), "../f");
    c.lopen(3, P9_DOTL_RDONLY).await.unwrap();
    let mut names: Vec<String> = c
        .readdir(3)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    names.sort();
    assert_eq!(names, [".", "..", "g", "hard", "l"]);
    assert_eq!(
        c.unlinkat(ROOT, "d", AT_REMOVEDIR)
            .await
            .unwrap_err()
            .errno(),
        Some(libc::ENOTEMPTY as u32)
    );
    c.unlinkat(3, "hard", 0).await.unwrap();
    assert_eq!(c.getattr(4, GETATTR_ALL).await.unwrap().nlink, 1);
    // A file written and fsync'd but not closed is durable too.
    c.walk(ROOT, 6, &[]).await.unwrap();
    c.lcreate(6, "synced", P9_DOTL_RDWR, 0o600, 0)
        .await
        .unwrap();
    c.write(6, 0, b"durable").await.unwrap();
    c.fsync(6, false).await.unwrap();
    let _ = stop.send(true);
    drop(c);

    // A new server on the same store sees the committed image.
    let fs = ImageFs::open(s.clone(), "vm1", false).unwrap();
    let (c, _stop) = serve(fs, 0).await;
    c.walk(ROOT, 2, &["d", "g"]).await.unwrap();
    c.lopen(2, P9_DOTL_RDONLY).await.unwrap();
    assert_eq!(&c.read(2, 0, data.len()).await.unwrap()[..], &data[..]);
    c.walk(ROOT, 3, &["synced"]).await.unwrap();
    c.lopen(3, P9_DOTL_RDONLY).await.unwrap();
    assert_eq!(&c.read(3, 0, 100).await.unwrap()[..], b"durable");
    // The unlinked name is gone: the walk stops after "d".
    assert_eq!(
        c.walk(ROOT, 4, &["d", "hard"])
            .await
            .map(|q| q.len())
            .unwrap_or(0),
        1
    );
}

#[tokio::test]
async fn permissions_and_read_only_images() {
    let (_d, s) = store();
    let fs = ImageFs::create(s.clone(), "vm2", 0, 0).unwrap();
    let (root, _stop) = serve(fs, 0).await;
    root.walk(ROOT, 2, &[]).await.unwrap();
    root.lcreate(2, "secret", P9_DOTL_RDWR, 0o600, 0)
        .await
        .unwrap();
    root.write(2, 0, b"root only").await.unwrap();
    root.clunk(2).await.unwrap();
    root.mkdir(ROOT, "pub", 0o777, 0).await.unwrap();
    // A directory change is durable once fsync'd (here on the directory itself).
    root.walk(ROOT, 3, &["pub"]).await.unwrap();
    root.lopen(3, P9_DOTL_RDONLY).await.unwrap();
    root.fsync(3, false).await.unwrap();
    drop(root);

    // Another user: cannot read 0600 root files, cannot create in /, can in /pub.
    let fs = ImageFs::open(s.clone(), "vm2", false).unwrap();
    let (user, _stop2) = serve(fs, 1000).await;
    user.walk(ROOT, 2, &["secret"]).await.unwrap();
    assert_eq!(
        user.lopen(2, P9_DOTL_RDONLY).await.unwrap_err().errno(),
        Some(libc::EACCES as u32)
    );
    user.walk(ROOT, 3, &[]).await.unwrap();
    assert_eq!(
        user.lcreate(3, "x", P9_DOTL_RDWR, 0o644, 1000)
            .await
            .unwrap_err()
            .errno(),
        Some(libc::EACCES as u32)
    );
    user.walk(ROOT, 4, &["pub"]).await.unwrap();
    user.lcreate(4, "mine", P9_DOTL_RDWR, 0o644, 1000)
        .await
        .unwrap();
    user.write(4, 0, b"hello").await.unwrap();
    user.clunk(4).await.unwrap();
    drop(user);

    // Read-only (as a snapshot is served): reads work, every change is EROFS.
    let fs = ImageFs::open(s.clone(), "vm2", true).unwrap();
    let (ro, _stop3) = serve(fs, 0).await;
    ro.walk(ROOT, 2, &["pub", "mine"]).await.unwrap();
    ro.lopen(2, P9_DOTL_RDONLY).await.unwrap();
    assert_eq!(&ro.read(2, 0, 10).await.unwrap()[..], b"hello");
    ro.walk(ROOT, 3, &["pub", "mine"]).await.unwrap();
    assert_eq!(
        ro.lopen(3, P9_DOTL_RDWR).await.unwrap_err().errno(),
        Some(libc::EROFS as u32)
    );
    assert_eq!(
        ro.mkdir(ROOT, "new", 0o755, 0).await.unwrap_err().errno(),
        Some(libc::EROFS as u32)
    );
}

/// Read a whole file through a fresh server on `fs`.
async fn read_file(fs: ImageFs, path: &[&str]) -> Vec<u8> {
    let (c, _stop) = serve(fs, 0).await;
    c.walk(ROOT, 2, path).await.unwrap();
    c.lopen(2, P9_DOTL_RDONLY).await.unwrap();
    c.read(2, 0, 1 << 20).await.unwrap().to_vec()
}

/// `/os-release` of an image or snapshot, read through a fresh server.
async fn os_release(fs: Result<ImageFs, Errno>) -> Vec<u8> {
    read_file(fs.unwrap(), &["os-release"]).await
}

#[tokio::test]
async fn snapshots_keep_their_content_and_forks_diverge() {
    use envoy::image::catalog;
    let (_d, s) = store();
    let fs = ImageFs::create(s.clone(), "base", 0, 0).unwrap();
    let (c, _stop) = serve(fs, 0).await;
    c.walk(ROOT, 2, &[]).await.unwrap();
    c.lcreate(2, "os-release", P9_DOTL_RDWR, 0o644, 0)
        .await
        .unwrap();
    c.write(2, 0, b"version 1").await.unwrap();
    c.fsync(2, false).await.unwrap();
    drop(c);
    // Snapshot 1 of the live image (the same ImageFs the server had is reopened here).
    let live = ImageFs::open(s.clone(), "base", false).unwrap();
    live.snapshot(1).unwrap();
    assert_eq!(live.snapshot(1).unwrap_err(), Errno::EEXIST);
    let (c, _stop) = serve(live, 0).await;
    c.walk(ROOT, 2, &["os-release"]).await.unwrap();
    c.lopen(2, P9_DOTL_RDWR).await.unwrap();
    c.write(2, 8, b"2, changed").await.unwrap();
    c.clunk(2).await.unwrap();
    drop(c);
    // Snapshot 1 still says version 1 and refuses writes; current has the change.
    let snap = ImageFs::open_snapshot(s.clone(), "base", 1).unwrap();
    let (c, _stop) = serve(snap, 0).await;
    c.walk(ROOT, 2, &["os-release"]).await.unwrap();
    assert_eq!(
        c.lopen(2, P9_DOTL_RDWR).await.unwrap_err().errno(),
        Some(libc::EROFS as u32)
    );
    drop(c);
    assert_eq!(
        os_release(ImageFs::open_snapshot(s.clone(), "base", 1)).await,
        b"version 1"
    );
    assert_eq!(
        os_release(ImageFs::open(s.clone(), "base", false)).await,
        b"version 2, changed"
    );
    // A fork of snapshot 1 diverges on its own.
    catalog::fork(&*s, "base", 1, "vm7").unwrap();
    assert_eq!(
        catalog::fork(&*s, "base", 1, "vm7").unwrap_err(),
        Errno::EEXIST
    );
    assert_eq!(
        catalog::fork(&*s, "base", 9, "vm8").unwrap_err(),
        Errno::ENOENT
    );
    let (c, _stop) = serve(ImageFs::open(s.clone(), "vm7", false).unwrap(), 0).await;
    c.walk(ROOT, 2, &["os-release"]).await.unwrap();
    c.lopen(2, P9_DOTL_RDWR).await.unwrap();
    c.write(2, 0, b"VM7").await.unwrap();
    c.clunk(2).await.unwrap();
    drop(c);
    assert_eq!(
        os_release(ImageFs::open(s.clone(), "vm7", false)).await,
        b"VM7sion 1"
    );
    assert_eq!(
        os_release(ImageFs::open_snapshot(s.clone(), "base", 1)).await,
        b"version 1"
    );
    assert_eq!(
        os_release(ImageFs::open(s.clone(), "base", false)).await,
        b"version 2, changed"
    );
    // The catalog lists both images and base's snapshot.
    let records: Vec<(String, bytes::Bytes)> = s
        .records()
        .unwrap()
        .into_iter()
        .map(|(n, r)| (n, r.value))
        .collect();
    let list = catalog::images(&records);
    let names: Vec<(&str, Vec<u64>)> = list
        .iter()
        .map(|i| (i.name.as_str(), i.snapshots.keys().copied().collect()))
        .collect();
    assert_eq!(names, [("base", vec![1u64]), ("vm7", vec![])]);
}

/// The 2006 interface from a client: `ln -s current N` snapshots, `mkdir` + `ln -s
/// /img/NAME/N NEW/current` forks, reserved names are EPERM, a missing snapshot is ENOENT.
#[tokio::test]
async fn the_2006_namespace_snapshots_and_forks_with_links() {
    use envoy::image::namespace::NamespaceFs;
    let (_d, s) = store();
    drop(ImageFs::create(s.clone(), "base", 0, 0).unwrap());
    let ns = NamespaceFs::new(Arc::new(envoy::image::registry::Images::new(s.clone())));
    let (c, _stop) = serve(ns, 0).await;
    let eno = |e: envoy_tools::client::ClientError| e.errno().map(|n| Errno::from_raw(n as i32));

    // Write through /base/current.
    c.walk(ROOT, 2, &["base", "current"]).await.unwrap();
    c.lcreate(2, "motd", P9_DOTL_RDWR, 0o644, 0).await.unwrap();
    c.write(2, 0, b"one").await.unwrap();
    c.clunk(2).await.unwrap();
    // ln -s current 1 (in /base): snapshot 1.
    c.walk(ROOT, 3, &["base"]).await.unwrap();
    c.symlink(3, "1", "current", 0).await.unwrap();
    c.walk(ROOT, 4, &["base", "current", "motd"]).await.unwrap();
    c.lopen(4, P9_DOTL_RDWR).await.unwrap();
    c.write(4, 0, b"two").await.unwrap();
    c.clunk(4).await.unwrap();
    let read = |path: &'static [&'static str], fid: u32| {
        let c = &c;
        async move {
            c.walk(ROOT, fid, path).await.unwrap();
            c.lopen(fid, P9_DOTL_RDONLY).await.unwrap();
            let data = c.read(fid, 0, 100).await.unwrap().to_vec();
            c.clunk(fid).await.unwrap();
            data
        }
    };
    assert_eq!(read(&["base", "1", "motd"], 5).await, b"one");
    assert_eq!(read(&["base", "current", "motd"], 5).await, b"two");
    c.walk(ROOT, 6, &["base", "1", "motd"]).await.unwrap();
    assert_eq!(
        eno(c.lopen(6, P9_DOTL_RDWR).await.unwrap_err()),
        Some(Errno::EROFS)
    );
    c.walk(ROOT, 7, &["base", "snapshot"]).await.unwrap();
    assert_eq!(c.readlink(7).await.unwrap(), "1");
    c.walk(ROOT, 8, &["base"]).await.unwrap();
    c.lopen(8, P9_DOTL_RDONLY).await.unwrap();
    let names: Vec<String> = c
        .readdir(8)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, [".", "..", "current", "1", "snapshot"]);
    // Reserved names and anything else in an image directory: EPERM; a taken number: EEXIST.
    assert_eq!(
        eno(c.mkdir(3, "x", 0o755, 0).await.unwrap_err()),
        Some(Errno::EPERM)
    );
    assert_eq!(
        eno(c.unlinkat(3, "current", AT_REMOVEDIR).await.unwrap_err()),
        Some(Errno::EPERM)
    );
    assert_eq!(
        eno(c.symlink(3, "snapshot", "current", 0).await.unwrap_err()),
        Some(Errno::EPERM)
    );
    assert_eq!(
        eno(c.symlink(3, "1", "current", 0).await.unwrap_err()),
        Some(Errno::EEXIST)
    );
    // mkdir /vm9; ln -s /img/base/1 /vm9/current: a fork of snapshot 1.
    c.mkdir(ROOT, "vm9", 0o755, 0).await.unwrap();
    c.walk(ROOT, 9, &["vm9"]).await.unwrap();
    c.symlink(9, "current", "/img/base/1", 0).await.unwrap();
    assert_eq!(read(&["vm9", "current", "motd"], 10).await, b"one");
    c.walk(ROOT, 11, &["vm9", "current", "motd"]).await.unwrap();
    c.lopen(11, P9_DOTL_RDWR).await.unwrap();
    c.write(11, 0, b"VM9").await.unwrap();
    c.clunk(11).await.unwrap();
    assert_eq!(read(&["vm9", "current", "motd"], 10).await, b"VM9");
    assert_eq!(read(&["base", "1", "motd"], 10).await, b"one");
    assert_eq!(read(&["base", "current", "motd"], 10).await, b"two");
    // Forking a snapshot that does not exist: ENOENT.
    c.mkdir(ROOT, "vm10", 0o755, 0).await.unwrap();
    c.walk(ROOT, 12, &["vm10"]).await.unwrap();
    assert_eq!(
        eno(c
            .symlink(12, "current", "/img/base/7", 0)
            .await
            .unwrap_err()),
        Some(Errno::ENOENT)
    );
}

/// The guest workload's truncate: a written, closed file extended (the gap reads as zeros),
/// then cut, through Tsetattr on a walked fid, as Linux's truncate(1) sends it.
#[tokio::test]
async fn truncate_up_then_down_through_setattr() {
    let (_d, s) = store();
    let fs = ImageFs::create(s.clone(), "vm1", 0, 0).unwrap();
    let (c, _stop) = serve(fs, 0).await;
    c.walk(ROOT, 2, &[]).await.unwrap();
    c.lcreate(2, "trunc", P9_DOTL_WRONLY, 0o644, 0)
        .await
        .unwrap();
    c.write(2, 0, b"abcdef").await.unwrap();
    c.clunk(2).await.unwrap();
    let set = |size| envoy_protocol::Tsetattr {
        fid: 3,
        valid: SETATTR_SIZE | SETATTR_MTIME | SETATTR_CTIME,
        mode: 0,
        uid: 0,
        gid: 0,
        size,
        atime_sec: 0,
        atime_nsec: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
    };
    c.walk(ROOT, 3, &["trunc"]).await.unwrap();
    c.setattr(set(100_000)).await.unwrap();
    assert_eq!(c.getattr(3, GETATTR_ALL).await.unwrap().size, 100_000);
    c.walk(ROOT, 4, &["trunc"]).await.unwrap();
    c.lopen(4, P9_DOTL_RDONLY).await.unwrap();
    assert_eq!(&c.read(4, 6, 10).await.unwrap()[..], &[0u8; 10]);
    // One byte at a time past the written bytes, as dd bs=1 reads (was a panic at 7).
    for at in 5..12 {
        let want: &[u8] = if at == 5 { b"f" } else { &[0] };
        assert_eq!(&c.read(4, at, 1).await.unwrap()[..], want, "at {at}");
    }
    c.setattr(set(3)).await.unwrap();
    assert_eq!(&c.read(4, 0, 100).await.unwrap()[..], b"abc");
}
