//! 9P2000.u and plain 9P2000 semantics against a real temporary export or image: create of
//! every .u kind, stat/wstat (with "don't touch" fields and wstat-as-fsync), directory reads as
//! stat streams, ORCLOSE, remove, and the errnos .u carries.

use bytes::Bytes;
use envoy_protocol::consts::*;
use envoy_protocol::*;
use envoy_tests::{TestServer, err, ok, twalk as walk};
use envoy_tools::client::Client;

async fn setup(dialect: Dialect) -> (TestServer, Client) {
    let srv = TestServer::start().await;
    let c = srv.client(dialect, 65536).await;
    c.rpc(Fcall::Tattach(Tattach {
        fid: 1,
        afid: NOFID,
        uname: "root".into(),
        aname: String::new(),
        n_uname: NONUNAME,
    }))
    .await
    .unwrap();
    (srv, c)
}

fn create(fid: u32, name: &str, perm: u32, mode: u8, extension: &str) -> Fcall {
    Fcall::Tcreate(Tcreate {
        fid,
        name: name.into(),
        perm,
        mode,
        extension: extension.into(),
    })
}

async fn stat(c: &Client, fid: u32) -> Stat {
    match ok(c, Fcall::Tstat(Tstat { fid })).await {
        Fcall::Rstat(r) => r.stat,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn create_every_kind() {
    let (srv, c) = setup(Dialect::P9P2000U).await;
    // Regular file: created open, written, read back.
    ok(&c, walk(1, 2, &[])).await;
    let Fcall::Rcreate(r) = ok(&c, create(2, "file", 0o640, ORDWR, "")).await else {
        panic!()
    };
    assert_eq!(r.qid.ty, QTFILE);
    ok(
        &c,
        Fcall::Twrite(Twrite {
            fid: 2,
            offset: 0,
            data: Bytes::from_static(b"hello"),
        }),
    )
    .await;
    assert_eq!(srv.host().read("file").unwrap(), b"hello");
    assert_eq!(srv.host().metadata("file").unwrap().perm() & 0o777, 0o640);
    // Directory.
    ok(&c, walk(1, 3, &[])).await;
    let Fcall::Rcreate(r) = ok(&c, create(3, "dir", DMDIR | 0o750, OREAD, "")).await else {
        panic!()
    };
    assert_eq!(r.qid.ty, QTDIR);
    assert!(srv.host().is_dir("dir"));
    // Symlink.
    ok(&c, walk(1, 4, &[])).await;
    ok(&c, create(4, "sym", DMSYMLINK | 0o777, OREAD, "file")).await;
    assert_eq!(srv.host().read_link("sym").unwrap(), "file");
    // Hard link by fid number (Linux's .u convention).
    ok(&c, walk(1, 5, &["file"])).await;
    ok(&c, walk(1, 6, &[])).await;
    ok(&c, create(6, "hard", DMLINK, OREAD, "5\n")).await;
    assert_eq!(srv.host().metadata("file").unwrap().nlink, 2);
    // Devices, fifo, socket.
    ok(&c, walk(1, 7, &[])).await;
    ok(&c, create(7, "null", DMDEVICE | 0o666, OREAD, "c 1 3")).await;
    let m = srv.host().metadata("null").unwrap();
    assert!(m.is_char_device());
    assert_eq!(m.rdev, rustix::fs::makedev(1, 3));
    ok(&c, walk(1, 8, &[])).await;
    ok(&c, create(8, "blk", DMDEVICE | 0o600, OREAD, "b 7 0")).await;
    assert!(srv.host().metadata("blk").unwrap().is_block_device());
    ok(&c, walk(1, 9, &[])).await;
    ok(&c, create(9, "pipe", DMNAMEDPIPE | 0o600, OREAD, "")).await;
    assert!(srv.host().metadata("pipe").unwrap().is_fifo());
    ok(&c, walk(1, 10, &[])).await;
    ok(&c, create(10, "sock", DMSOCKET | 0o600, OREAD, "")).await;
    assert!(srv.host().metadata("sock").unwrap().is_socket());
    // Stat carries the .u extension and numeric ids.
    ok(&c, walk(1, 11, &["sym"])).await;
    let s = stat(&c, 11).await;
    assert_eq!(
        (s.mode & DMSYMLINK, s.extension.as_str()),
        (DMSYMLINK, "file")
    );
    ok(&c, walk(1, 12, &["null"])).await;
    let s = stat(&c, 12).await;
    assert_eq!(
        (s.mode & DMDEVICE, s.extension.as_str(), s.n_uid, s.n_gid),
        (DMDEVICE, "c 1 3", 0, 0)
    );
    // Errors carry errno and text.
    ok(&c, walk(1, 13, &[])).await;
    let (e, text) = err(&c, create(13, "file", 0o644, OWRITE, "")).await;
    assert_eq!(e, libc::EEXIST as u32);
    assert!(!text.is_empty());
    ok(&c, walk(1, 14, &[])).await;
    assert_eq!(
        err(&c, create(14, "bad", DMDEVICE | 0o600, OREAD, "q 1 2"))
            .await
            .0,
        libc::EINVAL as u32
    );
}

#[tokio::test]
async fn wstat_changes_and_dont_touch() {
    let (srv, c) = setup(Dialect::P9P2000U).await;
    srv.host().write("f", b"0123456789").unwrap();
    ok(&c, walk(1, 2, &["f"])).await;
    let mut s = Stat::dont_touch();
    s.mode = 0o600;
    s.mtime = 1_234_567_890;
    s.length = 4;
    s.n_uid = 4321;
    s.n_gid = 8765;
    ok(&c, Fcall::Twstat(Twstat { fid: 2, stat: s })).await;
    let m = srv.host().metadata("f").unwrap();
    assert_eq!(m.perm(), 0o600);
    assert_eq!(
        (m.mtime.0, m.size, m.uid, m.gid),
        (1_234_567_890, 4, 4321, 8765)
    );
    // Rename through wstat's name; the fid follows.
    let mut s = Stat::dont_touch();
    s.name = "g".into();
    ok(&c, Fcall::Twstat(Twstat { fid: 2, stat: s })).await;
    assert!(srv.host().exists("g") && !srv.host().exists("f"));
    let st = stat(&c, 2).await;
    assert_eq!((st.name.as_str(), st.length), ("g", 4));
    // All "don't touch" on an open file: a sync, nothing changes.
    ok(
        &c,
        Fcall::Topen(Topen {
            fid: 2,
            mode: ORDWR,
        }),
    )
    .await;
    ok(
        &c,
        Fcall::Twstat(Twstat {
            fid: 2,
            stat: Stat::dont_touch(),
        }),
    )
    .await;
    let m2 = srv.host().metadata("g").unwrap();
    assert_eq!((m2.mtime.0, m2.size, m2.perm()), (1_234_567_890, 4, 0o600));
    // Changing the directory bit is refused.
    let mut s = Stat::dont_touch();
    s.mode = DMDIR | 0o755;
    assert_eq!(
        err(&c, Fcall::Twstat(Twstat { fid: 2, stat: s })).await.0,
        libc::EINVAL as u32
    );
}

#[tokio::test]
async fn directory_reads_are_whole_stat_records() {
    let (srv, c) = setup(Dialect::P9P2000U).await;
    srv.host().create_dir("d").unwrap();
    for i in 0..700 {
        srv.host()
            .write(&format!("d/file-{i:04}"), vec![b'x'; i])
            .unwrap();
    }
    srv.host().symlink("file-0001", "d/zz-link").unwrap();
    ok(&c, walk(1, 2, &["d"])).await;
    ok(
        &c,
        Fcall::Topen(Topen {
            fid: 2,
            mode: OREAD,
        }),
    )
    .await;
    let mut offset = 0u64;
    let mut stats = Vec::new();
    loop {
        let Fcall::Rread(r) = ok(
            &c,
            Fcall::Tread(Tread {
                fid: 2,
                offset,
                count: 4000,
            }),
        )
        .await
        else {
            panic!()
        };
        if r.data.is_empty() {
            break;
        }
        assert!(r.data.len() <= 4000);
        offset += r.data.len() as u64;
        stats.extend(decode_stats(r.data, Dialect::P9P2000U).expect("integral stat records"));
        // Linux fills its buffer with several reads; one too small for the next record gets
        // an empty reply and changes nothing.
        let Fcall::Rread(tiny) = ok(
            &c,
            Fcall::Tread(Tread {
                fid: 2,
                offset,
                count: 5,
            }),
        )
        .await
        else {
            panic!()
        };
        assert!(tiny.data.is_empty());
    }
    assert_eq!(stats.len(), 701, "every entry, no . or ..");
    let f = stats.iter().find(|s| s.name == "file-0123").unwrap();
    assert_eq!(f.length, 123);
    let l = stats.iter().find(|s| s.name == "zz-link").unwrap();
    assert_eq!(
        (l.mode & DMSYMLINK, l.extension.as_str()),
        (DMSYMLINK, "file-0001")
    );
    // A read at an offset that is neither 0 nor the end of the previous one is refused; 0 restarts.
    assert_eq!(
        err(
            &c,
            Fcall::Tread(Tread {
                fid: 2,
                offset: 17,
                count: 4000
            })
        )
        .await
        .0,
        libc::EINVAL as u32
    );
    let Fcall::Rread(r) = ok(
        &c,
        Fcall::Tread(Tread {
            fid: 2,
            offset: 0,
            count: 4000,
        }),
    )
    .await
    else {
        panic!()
    };
    assert!(!r.data.is_empty());
}

#[tokio::test]
async fn orclose_remove_and_open_modes() {
    let (srv, c) = setup(Dialect::P9P2000U).await;
    ok(&c, walk(1, 2, &[])).await;
    ok(&c, create(2, "tmp", 0o600, ORDWR | ORCLOSE, "")).await;
    assert!(srv.host().exists("tmp"));
    ok(&c, Fcall::Tclunk(Tclunk { fid: 2 })).await;
    assert!(!srv.host().exists("tmp"), "ORCLOSE removed it");
    srv.host().write("t", b"abcdef").unwrap();
    ok(&c, walk(1, 3, &["t"])).await;
    ok(
        &c,
        Fcall::Topen(Topen {
            fid: 3,
            mode: OWRITE | OTRUNC,
        }),
    )
    .await;
    assert_eq!(srv.host().metadata("t").unwrap().size, 0);
    assert_eq!(
        err(
            &c,
            Fcall::Tread(Tread {
                fid: 3,
                offset: 0,
                count: 1
            })
        )
        .await
        .0,
        libc::EBADF as u32
    );
    assert_eq!(
        err(
            &c,
            Fcall::Topen(Topen {
                fid: 3,
                mode: OREAD
            })
        )
        .await
        .0,
        libc::EBADF as u32,
        "already open"
    );
    // Remove clunks the fid, even when the removal fails.
    srv.host().create_dir("full").unwrap();
    srv.host().write("full/x", b"").unwrap();
    ok(&c, walk(1, 4, &["full"])).await;
    assert_eq!(
        err(&c, Fcall::Tremove(Tremove { fid: 4 })).await.0,
        libc::ENOTEMPTY as u32
    );
    assert_eq!(
        err(&c, Fcall::Tclunk(Tclunk { fid: 4 })).await.0,
        libc::EBADF as u32
    );
    ok(&c, walk(1, 5, &["t"])).await;
    ok(&c, Fcall::Tremove(Tremove { fid: 5 })).await;
    assert!(!srv.host().exists("t"));
    // .L-only messages are not part of .u.
    assert_eq!(
        err(
            &c,
            Fcall::Tgetattr(Tgetattr {
                fid: 1,
                request_mask: GETATTR_ALL
            })
        )
        .await
        .0,
        libc::EOPNOTSUPP as u32
    );
}

#[tokio::test]
async fn plain_9p2000() {
    let (srv, c) = setup(Dialect::P9P2000).await;
    ok(&c, walk(1, 2, &[])).await;
    ok(&c, create(2, "plain", 0o644, ORDWR, "")).await;
    ok(
        &c,
        Fcall::Twrite(Twrite {
            fid: 2,
            offset: 0,
            data: Bytes::from_static(b"nine"),
        }),
    )
    .await;
    let Fcall::Rread(r) = ok(
        &c,
        Fcall::Tread(Tread {
            fid: 2,
            offset: 0,
            count: 10,
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!(&r.data[..], b"nine");
    let s = stat(&c, 2).await;
    assert_eq!(
        (s.name.as_str(), s.length, s.mode & 0o777, s.uid.as_str()),
        ("plain", 4, 0o644, "0")
    );
    // Special files need .u: DMSYMLINK is ignored and a regular file results.
    ok(&c, walk(1, 3, &[])).await;
    ok(&c, create(3, "notalink", DMSYMLINK | 0o644, OWRITE, "")).await;
    assert!(srv.host().metadata("notalink").unwrap().is_file());
    // Errors are text only in 9P2000.
    ok(&c, walk(1, 4, &[])).await;
    let (_, text) = err(&c, create(4, "plain", 0o644, OWRITE, "")).await;
    assert!(text.to_lowercase().contains("exist"), "{text}");
}

#[tokio::test]
async fn auth_flush_and_remove_in_dotu() {
    let (srv, c) = setup(Dialect::P9P2000U).await;
    let (e, text) = err(
        &c,
        Fcall::Tauth(Tauth {
            afid: 5,
            uname: "root".into(),
            aname: String::new(),
            n_uname: 0,
        }),
    )
    .await;
    assert_eq!(e, libc::EOPNOTSUPP as u32);
    assert!(text.contains("authentication not required"), "{text}");
    // A flush of a tag not in flight is answered with Rflush, never Rerror.
    assert_eq!(
        ok(&c, Fcall::Tflush(Tflush { oldtag: 4242 })).await,
        Fcall::Rflush(Rflush {})
    );
    srv.host().write("gone", b"x").unwrap();
    ok(&c, walk(1, 2, &["gone"])).await;
    ok(&c, Fcall::Tremove(Tremove { fid: 2 })).await;
    assert!(!srv.host().exists("gone"));
}
