//! 9P2000.L semantics against a real temporary export or image (`ENVOY_TEST_BACKEND`): every
//! message type, checked by outcome (bytes and attributes as the host sees them, errnos).

use bytes::Bytes;
use envoy_protocol::consts::*;
use envoy_protocol::*;
use envoy_tests::{Options, TestServer, errno, ok};
use envoy_tools::client::{Client, ClientError};

const ROOT: u32 = 1;

async fn attach(c: &Client, fid: u32, n_uname: u32) -> Result<Qid, ClientError> {
    match c
        .rpc(Fcall::Tattach(Tattach {
            fid,
            afid: NOFID,
            uname: String::new(),
            aname: String::new(),
            n_uname,
        }))
        .await?
    {
        Fcall::Rattach(r) => Ok(r.qid),
        other => panic!("unexpected {other:?}"),
    }
}

async fn walk(c: &Client, fid: u32, newfid: u32, names: &[&str]) -> Result<Vec<Qid>, ClientError> {
    let wnames = names.iter().map(|s| s.to_string()).collect();
    match c
        .rpc(Fcall::Twalk(Twalk {
            fid,
            newfid,
            wnames,
        }))
        .await?
    {
        Fcall::Rwalk(r) => Ok(r.wqids),
        other => panic!("unexpected {other:?}"),
    }
}

async fn getattr(c: &Client, fid: u32) -> Rgetattr {
    match ok(
        c,
        Fcall::Tgetattr(Tgetattr {
            fid,
            request_mask: GETATTR_ALL,
        }),
    )
    .await
    {
        Fcall::Rgetattr(r) => r,
        other => panic!("unexpected {other:?}"),
    }
}

async fn clunk(c: &Client, fid: u32) {
    ok(c, Fcall::Tclunk(Tclunk { fid })).await;
}

async fn setup() -> (TestServer, Client) {
    let srv = TestServer::start().await;
    let c = srv.client(Dialect::P9P2000L, 1 << 20).await;
    attach(&c, ROOT, 0).await.unwrap();
    (srv, c)
}

async fn create(c: &Client, dir_fid: u32, fid: u32, name: &str, data: &[u8]) -> Qid {
    walk(c, dir_fid, fid, &[]).await.unwrap();
    let qid = match ok(
        c,
        Fcall::Tlcreate(Tlcreate {
            fid,
            name: name.into(),
            flags: P9_DOTL_RDWR,
            mode: 0o644,
            gid: 0,
        }),
    )
    .await
    {
        Fcall::Rlcreate(r) => r.qid,
        other => panic!("unexpected {other:?}"),
    };
    if !data.is_empty() {
        let r = ok(
            c,
            Fcall::Twrite(Twrite {
                fid,
                offset: 0,
                data: Bytes::copy_from_slice(data),
            }),
        )
        .await;
        assert_eq!(
            r,
            Fcall::Rwrite(Rwrite {
                count: data.len() as u32
            })
        );
    }
    qid
}

#[tokio::test]
async fn version_negotiation() {
    let srv = TestServer::start().await;
    let c = srv.client(Dialect::P9P2000L, 1 << 20).await;
    let r = ok(
        &c,
        Fcall::Tversion(Tversion {
            msize: 4 << 20,
            version: "9P2000.L".into(),
        }),
    )
    .await;
    assert_eq!(
        r,
        Fcall::Rversion(Rversion {
            msize: 1 << 20,
            version: "9P2000.L".into()
        }),
        "msize capped at 1 MiB"
    );
    let r = ok(
        &c,
        Fcall::Tversion(Tversion {
            msize: 8192,
            version: "9P2000.X".into(),
        }),
    )
    .await;
    assert_eq!(
        r,
        Fcall::Rversion(Rversion {
            msize: 8192,
            version: "unknown".into()
        })
    );
    let r = ok(
        &c,
        Fcall::Tversion(Tversion {
            msize: 65536,
            version: "9P2000.L".into(),
        }),
    )
    .await;
    assert_eq!(
        r,
        Fcall::Rversion(Rversion {
            msize: 65536,
            version: "9P2000.L".into()
        })
    );
}

#[tokio::test]
async fn version_resets_the_session() {
    let (_srv, c) = setup().await;
    walk(&c, ROOT, 2, &[]).await.unwrap();
    ok(
        &c,
        Fcall::Tversion(Tversion {
            msize: 1 << 20,
            version: "9P2000.L".into(),
        }),
    )
    .await;
    assert_eq!(
        errno(&c, Fcall::Tclunk(Tclunk { fid: 2 })).await,
        libc::EBADF as u32,
        "fids are gone"
    );
    attach(&c, ROOT, 0)
        .await
        .expect("fid numbers are free again");
}

#[tokio::test]
async fn auth_is_refused_properly() {
    let (_srv, c) = setup().await;
    let e = errno(
        &c,
        Fcall::Tauth(Tauth {
            afid: 9,
            uname: "root".into(),
            aname: String::new(),
            n_uname: 0,
        }),
    )
    .await;
    assert_eq!(e, libc::EOPNOTSUPP as u32);
    let e = errno(
        &c,
        Fcall::Tattach(Tattach {
            fid: 3,
            afid: 9,
            uname: String::new(),
            aname: String::new(),
            n_uname: 0,
        }),
    )
    .await;
    assert_eq!(e, libc::EBADF as u32, "an attach naming an afid is refused");
}

#[tokio::test]
async fn files_round_trip() {
    let (srv, c) = setup().await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    create(&c, ROOT, 2, "big", &[]).await;
    // Write in msize-sized pieces, as the kernel does.
    let mut off = 0;
    for chunk in data.chunks((1 << 20) - 24) {
        let r = ok(
            &c,
            Fcall::Twrite(Twrite {
                fid: 2,
                offset: off,
                data: Bytes::copy_from_slice(chunk),
            }),
        )
        .await;
        assert_eq!(
            r,
            Fcall::Rwrite(Rwrite {
                count: chunk.len() as u32
            })
        );
        off += chunk.len() as u64;
    }
    ok(
        &c,
        Fcall::Tfsync(Tfsync {
            fid: 2,
            datasync: 0,
        }),
    )
    .await;
    assert_eq!(srv.host().read("big").unwrap(), data, "host sees the bytes");
    // Read back with a count larger than msize allows: the server caps it.
    let Fcall::Rread(r) = ok(
        &c,
        Fcall::Tread(Tread {
            fid: 2,
            offset: 0,
            count: 4 << 20,
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!(r.data.len(), (1 << 20) - 11);
    assert_eq!(&r.data[..], &data[..(1 << 20) - 11]);
    let Fcall::Rread(r) = ok(
        &c,
        Fcall::Tread(Tread {
            fid: 2,
            offset: 2_999_990,
            count: 100,
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!(&r.data[..], &data[2_999_990..]);
    let Fcall::Rread(r) = ok(
        &c,
        Fcall::Tread(Tread {
            fid: 2,
            offset: 5_000_000,
            count: 100,
        }),
    )
    .await
    else {
        panic!()
    };
    assert!(r.data.is_empty(), "EOF");
    assert_eq!(getattr(&c, 2).await.size, 3_000_000);
    clunk(&c, 2).await;
}

#[tokio::test]
async fn append_and_truncate() {
    let (srv, c) = setup().await;
    srv.host().write("log", b"one\n").unwrap();
    walk(&c, ROOT, 2, &["log"]).await.unwrap();
    ok(
        &c,
        Fcall::Tlopen(Tlopen {
            fid: 2,
            flags: P9_DOTL_WRONLY | P9_DOTL_APPEND,
        }),
    )
    .await;
    ok(
        &c,
        Fcall::Twrite(Twrite {
            fid: 2,
            offset: 0,
            data: Bytes::from_static(b"two\n"),
        }),
    )
    .await;
    assert_eq!(srv.host().read("log").unwrap(), b"one\ntwo\n");
    // Truncate up and down through setattr.
    let set = |size| Tsetattr {
        fid: 2,
        valid: SETATTR_SIZE,
        mode: 0,
        uid: 0,
        gid: 0,
        size,
        atime_sec: 0,
        atime_nsec: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
    };
    ok(&c, Fcall::Tsetattr(set(100))).await;
    assert_eq!(srv.host().metadata("log").unwrap().size, 100);
    ok(&c, Fcall::Tsetattr(set(3))).await;
    assert_eq!(srv.host().read("log").unwrap(), b"one");
    // Open with TRUNC.
    walk(&c, ROOT, 3, &["log"]).await.unwrap();
    ok(
        &c,
        Fcall::Tlopen(Tlopen {
            fid: 3,
            flags: P9_DOTL_WRONLY | P9_DOTL_TRUNC,
        }),
    )
    .await;
    assert_eq!(srv.host().metadata("log").unwrap().size, 0);
}

#[tokio::test]
async fn setattr_mode_owner_times() {
    let (srv, c) = setup().await;
    create(&c, ROOT, 2, "f", b"x").await;
    let m = Tsetattr {
        fid: 2,
        valid: SETATTR_MODE
            | SETATTR_UID
            | SETATTR_GID
            | SETATTR_ATIME
            | SETATTR_ATIME_SET
            | SETATTR_MTIME
            | SETATTR_MTIME_SET,
        mode: 0o640,
        uid: 1234,
        gid: 5678,
        size: 0,
        atime_sec: 1_000_000_000,
        atime_nsec: 5,
        mtime_sec: 1_500_000_000,
        mtime_nsec: 7,
    };
    ok(&c, Fcall::Tsetattr(m)).await;
    let meta = srv.host().metadata("f").unwrap();
    assert_eq!(meta.perm(), 0o640);
    assert_eq!((meta.uid, meta.gid), (1234, 5678));
    assert_eq!(meta.atime, (1_000_000_000, 5));
    assert_eq!(meta.mtime, (1_500_000_000, 7));
    let a = getattr(&c, 2).await;
    assert_eq!(a.mode, libc::S_IFREG | 0o640);
    assert_eq!((a.uid, a.gid, a.size, a.nlink), (1234, 5678, 1, 1));
    assert_eq!((a.mtime_sec, a.mtime_nsec), (1_500_000_000, 7));
    assert_eq!(a.valid & GETATTR_BASIC, GETATTR_BASIC);
}

#[tokio::test]
async fn directories_links_and_names() {
    let (srv, c) = setup().await;
    // mkdir, deep.
    let Fcall::Rmkdir(d) = ok(
        &c,
        Fcall::Tmkdir(Tmkdir {
            dfid: ROOT,
            name: "a".into(),
            mode: 0o755,
            gid: 0,
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!(d.qid.ty, QTDIR);
    walk(&c, ROOT, 2, &["a"]).await.unwrap();
    ok(
        &c,
        Fcall::Tmkdir(Tmkdir {
            dfid: 2,
            name: "b".into(),
            mode: 0o700,
            gid: 0,
        }),
    )
    .await;
    assert!(srv.host().is_dir("a/b"));
    assert_eq!(srv.host().metadata("a/b").unwrap().perm() & 0o777, 0o700);
    // symlink + readlink.
    let Fcall::Rsymlink(s) = ok(
        &c,
        Fcall::Tsymlink(Tsymlink {
            fid: 2,
            name: "l".into(),
            symtgt: "b/../../x".into(),
            gid: 0,
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!(s.qid.ty, QTSYMLINK);
    assert_eq!(srv.host().read_link("a/l").unwrap(), "b/../../x");
    walk(&c, 2, 3, &["l"]).await.unwrap();
    assert_eq!(
        ok(&c, Fcall::Treadlink(Treadlink { fid: 3 })).await,
        Fcall::Rreadlink(Rreadlink {
            target: "b/../../x".into()
        })
    );
    // mknod: fifo (and a regular file).
    let Fcall::Rmknod(_) = ok(
        &c,
        Fcall::Tmknod(Tmknod {
            dfid: 2,
            name: "p".into(),
            mode: libc::S_IFIFO | 0o600,
            major: 0,
            minor: 0,
            gid: 0,
        }),
    )
    .await
    else {
        panic!()
    };
    assert!(srv.host().metadata("a/p").unwrap().is_fifo());
    // hard link: link count 2.
    create(&c, 2, 4, "f", b"data").await;
    walk(&c, 2, 5, &["f"]).await.unwrap();
    ok(
        &c,
        Fcall::Tlink(Tlink {
            dfid: ROOT,
            fid: 5,
            name: "hard".into(),
        }),
    )
    .await;
    assert_eq!(getattr(&c, 5).await.nlink, 2);
    assert_eq!(
        srv.host().metadata("hard").unwrap().ino,
        srv.host().metadata("a/f").unwrap().ino
    );
    // rename (fid follows), renameat across directories and over an existing file.
    ok(
        &c,
        Fcall::Trename(Trename {
            fid: 5,
            dfid: ROOT,
            name: "moved".into(),
        }),
    )
    .await;
    assert!(srv.host().exists("moved") && !srv.host().exists("a/f"));
    assert_eq!(getattr(&c, 5).await.size, 4, "the fid names the moved file");
    srv.host().write("a/b/victim", b"old").unwrap();
    let over_dir = Fcall::Trenameat(Trenameat {
        olddirfid: ROOT,
        oldname: "moved".into(),
        newdirfid: 2,
        newname: "b".into(),
    });
    assert_eq!(
        errno(&c, over_dir).await,
        libc::EISDIR as u32,
        "a file cannot replace a directory"
    );
    walk(&c, 2, 6, &["b"]).await.unwrap();
    ok(
        &c,
        Fcall::Trenameat(Trenameat {
            olddirfid: ROOT,
            oldname: "moved".into(),
            newdirfid: 6,
            newname: "victim".into(),
        }),
    )
    .await;
    assert_eq!(srv.host().read("a/b/victim").unwrap(), b"data");
    // unlinkat: file, then directories (ENOTEMPTY first).
    assert_eq!(
        errno(
            &c,
            Fcall::Tunlinkat(Tunlinkat {
                dirfd: 2,
                name: "b".into(),
                flags: AT_REMOVEDIR
            })
        )
        .await,
        libc::ENOTEMPTY as u32
    );
    ok(
        &c,
        Fcall::Tunlinkat(Tunlinkat {
            dirfd: 6,
            name: "victim".into(),
            flags: 0,
        }),
    )
    .await;
    ok(
        &c,
        Fcall::Tunlinkat(Tunlinkat {
            dirfd: 2,
            name: "b".into(),
            flags: AT_REMOVEDIR,
        }),
    )
    .await;
    assert!(!srv.host().exists("a/b"));
    // statfs.
    let Fcall::Rstatfs(s) = ok(&c, Fcall::Tstatfs(Tstatfs { fid: ROOT })).await else {
        panic!()
    };
    assert!(s.bsize > 0 && s.blocks > 0 && s.namelen >= 255);
}

#[tokio::test]
async fn error_paths() {
    let (srv, c) = setup().await;
    srv.host().write("file", b"x").unwrap();
    srv.host().create_dir("dir").unwrap();
    srv.host().write("dir/inner", b"y").unwrap();
    srv.host().symlink("file", "link").unwrap();
    let e = |r: Result<Vec<Qid>, ClientError>| match r {
        Err(ClientError::Remote { errno, .. }) => errno,
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(
        e(walk(&c, ROOT, 2, &["missing"]).await),
        libc::ENOENT as u32
    );
    // A partial walk returns the qids that worked and creates no fid.
    assert_eq!(
        walk(&c, ROOT, 2, &["dir", "missing"]).await.unwrap().len(),
        1
    );
    assert_eq!(
        errno(&c, Fcall::Tclunk(Tclunk { fid: 2 })).await,
        libc::EBADF as u32
    );
    assert_eq!(
        walk(&c, ROOT, 2, &["file", "x"]).await.unwrap().len(),
        1,
        "partial walk"
    );
    walk(&c, ROOT, 7, &["file"]).await.unwrap();
    assert_eq!(e(walk(&c, 7, 2, &["x"]).await), libc::ENOTDIR as u32);
    assert_eq!(
        errno(
            &c,
            Fcall::Tmkdir(Tmkdir {
                dfid: ROOT,
                name: "dir".into(),
                mode: 0o755,
                gid: 0
            })
        )
        .await,
        libc::EEXIST as u32
    );
    walk(&c, ROOT, 3, &[]).await.unwrap();
    assert_eq!(
        errno(
            &c,
            Fcall::Tlcreate(Tlcreate {
                fid: 3,
                name: "file".into(),
                flags: P9_DOTL_RDWR,
                mode: 0o644,
                gid: 0
            })
        )
        .await,
        libc::EEXIST as u32
    );
    walk(&c, ROOT, 4, &["dir"]).await.unwrap();
    assert_eq!(
        errno(
            &c,
            Fcall::Tlopen(Tlopen {
                fid: 4,
                flags: P9_DOTL_WRONLY
            })
        )
        .await,
        libc::EISDIR as u32
    );
    walk(&c, ROOT, 5, &["link"]).await.unwrap();
    assert_eq!(
        errno(
            &c,
            Fcall::Tlopen(Tlopen {
                fid: 5,
                flags: P9_DOTL_RDONLY
            })
        )
        .await,
        libc::ELOOP as u32
    );
    assert_eq!(
        e(walk(&c, 5, 6, &["x"]).await),
        libc::ENOTDIR as u32,
        "no walking through a symlink"
    );
    assert_eq!(
        errno(
            &c,
            Fcall::Tunlinkat(Tunlinkat {
                dirfd: ROOT,
                name: "dir".into(),
                flags: AT_REMOVEDIR
            })
        )
        .await,
        libc::ENOTEMPTY as u32
    );
    assert_eq!(
        errno(
            &c,
            Fcall::Tunlinkat(Tunlinkat {
                dirfd: ROOT,
                name: "dir".into(),
                flags: 0
            })
        )
        .await,
        libc::EISDIR as u32
    );
    assert_eq!(
        errno(&c, Fcall::Treadlink(Treadlink { fid: 4 })).await,
        libc::EINVAL as u32
    );
    assert_eq!(
        errno(
            &c,
            Fcall::Tread(Tread {
                fid: 4,
                offset: 0,
                count: 10
            })
        )
        .await,
        libc::EBADF as u32,
        "not open"
    );
    assert_eq!(
        errno(&c, Fcall::Tclunk(Tclunk { fid: 77 })).await,
        libc::EBADF as u32
    );
}

#[tokio::test]
async fn non_root_attach_is_checked_by_mode() {
    if !envoy::export::CredSwitch::enabled() {
        panic!(
            "this test must run as root: it checks that a non-root attach cannot read a 0600 root file"
        );
    }
    let srv = TestServer::start().await;
    srv.host().write("secret", b"root only").unwrap();
    srv.host().set_mode("secret", 0o600).unwrap();
    srv.host().create_dir("private").unwrap();
    srv.host().set_mode("private", 0o700).unwrap();
    let c = srv.client(Dialect::P9P2000L, 65536).await;
    attach(&c, ROOT, 65534).await.unwrap();
    walk(&c, ROOT, 2, &["secret"]).await.unwrap();
    assert_eq!(
        errno(
            &c,
            Fcall::Tlopen(Tlopen {
                fid: 2,
                flags: P9_DOTL_RDONLY
            })
        )
        .await,
        libc::EACCES as u32
    );
    walk(&c, ROOT, 5, &["private"]).await.unwrap();
    match walk(&c, 5, 3, &["x"]).await {
        Err(ClientError::Remote { errno, .. }) => assert_eq!(errno, libc::EACCES as u32),
        other => panic!("expected EACCES, got {other:?}"),
    }
    assert_eq!(
        errno(
            &c,
            Fcall::Tmkdir(Tmkdir {
                dfid: ROOT,
                name: "nope".into(),
                mode: 0o755,
                gid: 65534
            })
        )
        .await,
        libc::EACCES as u32,
        "the export root is 0755 root"
    );
    // Root on the same server can.
    attach(&c, 10, 0).await.unwrap();
    walk(&c, 10, 11, &["secret"]).await.unwrap();
    ok(
        &c,
        Fcall::Tlopen(Tlopen {
            fid: 11,
            flags: P9_DOTL_RDONLY,
        }),
    )
    .await;
    // Files a user creates are theirs.
    srv.host().set_mode("", 0o777).unwrap();
    create(&c, ROOT, 4, "mine", b"").await;
    let meta = srv.host().metadata("mine").unwrap();
    assert_eq!((meta.uid, meta.gid), (65534, 65534));
}

#[tokio::test]
async fn read_only_export() {
    let srv = TestServer::start_with(Options {
        read_only: true,
        prepare: Some(|host| host.write("f", b"ro").unwrap()),
        ..Default::default()
    })
    .await;
    let c = srv.client(Dialect::P9P2000L, 65536).await;
    attach(&c, ROOT, 0).await.unwrap();
    walk(&c, ROOT, 2, &[]).await.unwrap();
    let erofs = libc::EROFS as u32;
    assert_eq!(
        errno(
            &c,
            Fcall::Tlcreate(Tlcreate {
                fid: 2,
                name: "n".into(),
                flags: P9_DOTL_RDWR,
                mode: 0o644,
                gid: 0
            })
        )
        .await,
        erofs
    );
    assert_eq!(
        errno(
            &c,
            Fcall::Tmkdir(Tmkdir {
                dfid: ROOT,
                name: "d".into(),
                mode: 0o755,
                gid: 0
            })
        )
        .await,
        erofs
    );
    walk(&c, ROOT, 3, &["f"]).await.unwrap();
    assert_eq!(
        errno(
            &c,
            Fcall::Tlopen(Tlopen {
                fid: 3,
                flags: P9_DOTL_RDWR
            })
        )
        .await,
        erofs
    );
    assert_eq!(
        errno(
            &c,
            Fcall::Tunlinkat(Tunlinkat {
                dirfd: ROOT,
                name: "f".into(),
                flags: 0
            })
        )
        .await,
        erofs
    );
    ok(
        &c,
        Fcall::Tlopen(Tlopen {
            fid: 3,
            flags: P9_DOTL_RDONLY,
        }),
    )
    .await;
    let Fcall::Rread(r) = ok(
        &c,
        Fcall::Tread(Tread {
            fid: 3,
            offset: 0,
            count: 10,
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!(&r.data[..], b"ro");
    assert_eq!(
        srv.host().list_dir("").unwrap(),
        ["f"],
        "nothing was created"
    );
}

#[tokio::test]
async fn readdir_is_complete_and_resumable() {
    let (srv, c) = setup().await;
    srv.host().create_dir("big").unwrap();
    for i in 0..5000 {
        srv.host()
            .write(&format!("big/entry-with-a-longish-name-{i:05}"), b"")
            .unwrap();
    }
    walk(&c, ROOT, 2, &["big"]).await.unwrap();
    ok(
        &c,
        Fcall::Tlopen(Tlopen {
            fid: 2,
            flags: P9_DOTL_RDONLY | P9_DOTL_DIRECTORY,
        }),
    )
    .await;
    let mut names = Vec::new();
    let mut offset = 0;
    let mut calls = 0;
    loop {
        let Fcall::Rreaddir(r) = ok(
            &c,
            Fcall::Treaddir(Treaddir {
                fid: 2,
                offset,
                count: 8192,
            }),
        )
        .await
        else {
            panic!()
        };
        if r.data.is_empty() {
            break;
        }
        assert!(r.data.len() <= 8192);
        calls += 1;
        for d in decode_dirents(r.data).unwrap() {
            offset = d.offset;
            names.push(d.name);
        }
    }
    assert!(calls > 10, "several calls were needed");
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 5002, "every entry exactly once, plus . and ..");
    assert!(names.contains(&"entry-with-a-longish-name-04999".to_string()));
    // Restarting from an offset in the middle yields the rest again.
    let Fcall::Rreaddir(r) = ok(
        &c,
        Fcall::Treaddir(Treaddir {
            fid: 2,
            offset: 0,
            count: 200,
        }),
    )
    .await
    else {
        panic!()
    };
    let first = decode_dirents(r.data).unwrap();
    let resume = first.last().unwrap().offset;
    let Fcall::Rreaddir(r) = ok(
        &c,
        Fcall::Treaddir(Treaddir {
            fid: 2,
            offset: resume,
            count: 200,
        }),
    )
    .await
    else {
        panic!()
    };
    let second = decode_dirents(r.data).unwrap();
    assert!(
        second
            .iter()
            .all(|d| first.iter().all(|f| f.name != d.name)),
        "no entry repeats after a resume"
    );
}

#[tokio::test]
async fn open_then_unlink_keeps_working() {
    let (srv, c) = setup().await;
    create(&c, ROOT, 2, "tmp", b"still here").await;
    ok(
        &c,
        Fcall::Tunlinkat(Tunlinkat {
            dirfd: ROOT,
            name: "tmp".into(),
            flags: 0,
        }),
    )
    .await;
    assert!(!srv.host().exists("tmp"));
    let Fcall::Rread(r) = ok(
        &c,
        Fcall::Tread(Tread {
            fid: 2,
            offset: 0,
            count: 100,
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!(&r.data[..], b"still here");
    let a = getattr(&c, 2).await;
    assert_eq!((a.nlink, a.size), (0, 10));
    ok(
        &c,
        Fcall::Twrite(Twrite {
            fid: 2,
            offset: 10,
            data: Bytes::from_static(b"!"),
        }),
    )
    .await;
    assert_eq!(getattr(&c, 2).await.size, 11);
}

#[tokio::test]
async fn xattrs() {
    let (srv, c) = setup().await;
    create(&c, ROOT, 2, "f", b"").await;
    walk(&c, ROOT, 3, &["f"]).await.unwrap();
    let value = b"hello xattr";
    ok(
        &c,
        Fcall::Txattrcreate(Txattrcreate {
            fid: 3,
            name: "user.envoy".into(),
            attr_size: value.len() as u64,
            flags: 0,
        }),
    )
    .await;
    ok(
        &c,
        Fcall::Twrite(Twrite {
            fid: 3,
            offset: 0,
            data: Bytes::from_static(value),
        }),
    )
    .await;
    clunk(&c, 3).await;
    walk(&c, ROOT, 4, &["f"]).await.unwrap();
    let Fcall::Rxattrwalk(w) = ok(
        &c,
        Fcall::Txattrwalk(Txattrwalk {
            fid: 4,
            newfid: 5,
            name: "user.envoy".into(),
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!(w.size, value.len() as u64);
    let Fcall::Rread(r) = ok(
        &c,
        Fcall::Tread(Tread {
            fid: 5,
            offset: 0,
            count: 100,
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!(&r.data[..], value);
    let Fcall::Rxattrwalk(_) = ok(
        &c,
        Fcall::Txattrwalk(Txattrwalk {
            fid: 4,
            newfid: 6,
            name: String::new(),
        }),
    )
    .await
    else {
        panic!()
    };
    let Fcall::Rread(r) = ok(
        &c,
        Fcall::Tread(Tread {
            fid: 6,
            offset: 0,
            count: 1000,
        }),
    )
    .await
    else {
        panic!()
    };
    assert!(r.data.split(|b| *b == 0).any(|n| n == b"user.envoy"));
    let e = errno(
        &c,
        Fcall::Txattrwalk(Txattrwalk {
            fid: 4,
            newfid: 7,
            name: "user.missing".into(),
        }),
    )
    .await;
    assert_eq!(e, libc::ENODATA as u32);
    // Namespaces a guest must not touch on the host.
    walk(&c, ROOT, 8, &["f"]).await.unwrap();
    ok(
        &c,
        Fcall::Txattrcreate(Txattrcreate {
            fid: 8,
            name: "trusted.evil".into(),
            attr_size: 1,
            flags: 0,
        }),
    )
    .await;
    ok(
        &c,
        Fcall::Twrite(Twrite {
            fid: 8,
            offset: 0,
            data: Bytes::from_static(b"1"),
        }),
    )
    .await;
    assert_eq!(
        errno(&c, Fcall::Tclunk(Tclunk { fid: 8 })).await,
        libc::EOPNOTSUPP as u32
    );
    // setxattr's flags, checked when the clunk sets the value: XATTR_CREATE of an existing name
    // is EEXIST, XATTR_REPLACE of a missing one ENODATA; a replace changes the value.
    assert_eq!(
        set_xattr(&c, "f", "user.envoy", b"again", XATTR_CREATE).await,
        Err(libc::EEXIST as u32)
    );
    assert_eq!(set_xattr(&c, "f", "user.other", b"x", 0).await, Ok(()));
    assert_eq!(
        set_xattr(&c, "f", "user.missing", b"x", XATTR_REPLACE).await,
        Err(libc::ENODATA as u32)
    );
    assert_eq!(
        set_xattr(&c, "f", "user.envoy", b"replaced", XATTR_REPLACE).await,
        Ok(())
    );
    assert_eq!(
        get_xattr(&c, "f", "user.envoy").await,
        Ok(b"replaced".to_vec())
    );
    // A zero-length value removes the attribute (Linux's removexattr); removing a missing one
    // is ENODATA.
    assert_eq!(
        set_xattr(&c, "f", "user.envoy", b"", XATTR_REPLACE).await,
        Ok(())
    );
    assert_eq!(
        get_xattr(&c, "f", "user.envoy").await,
        Err(libc::ENODATA as u32)
    );
    assert_eq!(
        set_xattr(&c, "f", "user.envoy", b"", 0).await,
        Err(libc::ENODATA as u32)
    );
    assert_eq!(get_xattr(&c, "f", "").await, Ok(b"user.other\0".to_vec()));
    // Limits: a value past XATTR_SIZE_MAX is E2BIG at the create, a name past 255 bytes ERANGE.
    walk(&c, ROOT, 10, &["f"]).await.unwrap();
    let big = Fcall::Txattrcreate(Txattrcreate {
        fid: 10,
        name: "user.big".into(),
        attr_size: 65537,
        flags: 0,
    });
    assert_eq!(errno(&c, big).await, libc::E2BIG as u32);
    let long = format!("user.{}", "n".repeat(251));
    assert_eq!(
        set_xattr(&c, "f", &long, b"x", 0).await,
        Err(libc::ERANGE as u32)
    );
    assert_eq!(set_xattr(&c, "f", &long[..255], b"x", 0).await, Ok(()));
    assert_eq!(get_xattr(&c, "f", &long[..255]).await, Ok(b"x".to_vec()));
    let _ = srv;
}

/// Set extended attribute `name` of `path` to `value` through a Txattrcreate (on fid 39); the
/// outcome of the clunk that applies it (its errno on failure).
async fn set_xattr(
    c: &Client,
    path: &str,
    name: &str,
    value: &[u8],
    flags: u32,
) -> Result<(), u32> {
    let fid = 39;
    walk(c, ROOT, fid, &[path]).await.unwrap();
    ok(
        c,
        Fcall::Txattrcreate(Txattrcreate {
            fid,
            name: name.into(),
            attr_size: value.len() as u64,
            flags,
        }),
    )
    .await;
    if !value.is_empty() {
        ok(
            c,
            Fcall::Twrite(Twrite {
                fid,
                offset: 0,
                data: Bytes::copy_from_slice(value),
            }),
        )
        .await;
    }
    match c.rpc(Fcall::Tclunk(Tclunk { fid })).await {
        Ok(_) => Ok(()),
        Err(ClientError::Remote { errno, .. }) => Err(errno),
        Err(e) => panic!("clunk: {e}"),
    }
}

/// The value of extended attribute `name` of `path` (the name list for ""), or the errno.
async fn get_xattr(c: &Client, path: &str, name: &str) -> Result<Vec<u8>, u32> {
    walk(c, ROOT, 40, &[path]).await.unwrap();
    let r = c
        .rpc(Fcall::Txattrwalk(Txattrwalk {
            fid: 40,
            newfid: 41,
            name: name.into(),
        }))
        .await;
    clunk(c, 40).await;
    let size = match r {
        Ok(Fcall::Rxattrwalk(w)) => w.size,
        Err(ClientError::Remote { errno, .. }) => return Err(errno),
        other => panic!("{other:?}"),
    };
    let Fcall::Rread(r) = ok(
        c,
        Fcall::Tread(Tread {
            fid: 41,
            offset: 0,
            count: 65536,
        }),
    )
    .await
    else {
        panic!()
    };
    clunk(c, 41).await;
    assert_eq!(r.data.len() as u64, size);
    Ok(r.data.to_vec())
}

#[tokio::test]
async fn posix_locks_between_fids() {
    let (_srv, c) = setup().await;
    create(&c, ROOT, 2, "locked", b"0123456789").await;
    walk(&c, ROOT, 3, &["locked"]).await.unwrap();
    ok(
        &c,
        Fcall::Tlopen(Tlopen {
            fid: 3,
            flags: P9_DOTL_RDWR,
        }),
    )
    .await;
    let lock = |fid, ty, start, length| {
        Fcall::Tlock(Tlock {
            fid,
            ty,
            flags: 0,
            start,
            length,
            proc_id: 1,
            client_id: "guest".into(),
        })
    };
    assert_eq!(
        ok(&c, lock(2, LOCK_TYPE_WRLCK, 0, 5)).await,
        Fcall::Rlock(Rlock {
            status: LOCK_SUCCESS
        })
    );
    assert_eq!(
        ok(&c, lock(3, LOCK_TYPE_WRLCK, 2, 2)).await,
        Fcall::Rlock(Rlock {
            status: LOCK_BLOCKED
        })
    );
    assert_eq!(
        ok(&c, lock(3, LOCK_TYPE_WRLCK, 5, 5)).await,
        Fcall::Rlock(Rlock {
            status: LOCK_SUCCESS
        }),
        "disjoint"
    );
    let Fcall::Rgetlock(g) = ok(
        &c,
        Fcall::Tgetlock(Tgetlock {
            fid: 3,
            ty: LOCK_TYPE_RDLCK,
            start: 0,
            length: 0,
            proc_id: 1,
            client_id: "g".into(),
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!((g.ty, g.start, g.length), (LOCK_TYPE_WRLCK, 0, 5));
    ok(&c, lock(2, LOCK_TYPE_UNLCK, 0, 5)).await;
    assert_eq!(
        ok(&c, lock(3, LOCK_TYPE_WRLCK, 2, 2)).await,
        Fcall::Rlock(Rlock {
            status: LOCK_SUCCESS
        })
    );
    // Fid 3 now holds [2, 4) and [5, 10): fid 2 sees the first, and cannot lock the file.
    let Fcall::Rgetlock(g) = ok(
        &c,
        Fcall::Tgetlock(Tgetlock {
            fid: 2,
            ty: LOCK_TYPE_WRLCK,
            start: 0,
            length: 0,
            proc_id: 1,
            client_id: "g".into(),
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!((g.ty, g.start, g.length), (LOCK_TYPE_WRLCK, 2, 2));
    assert_eq!(
        ok(&c, lock(2, LOCK_TYPE_RDLCK, 0, 0)).await,
        Fcall::Rlock(Rlock {
            status: LOCK_BLOCKED
        })
    );
    // A clunk releases the fid's locks.
    clunk(&c, 3).await;
    assert_eq!(
        ok(&c, lock(2, LOCK_TYPE_WRLCK, 0, 0)).await,
        Fcall::Rlock(Rlock {
            status: LOCK_SUCCESS
        })
    );
}

#[tokio::test]
async fn fid_limits() {
    let cfg = envoy::ServerConfig {
        session: envoy::SessionLimits {
            max_msize: 65536,
            max_fids: 8,
            ..Default::default()
        },
        max_in_flight: 4,
        ..Default::default()
    };
    let srv = TestServer::start_with(Options {
        config: Some(cfg),
        ..Default::default()
    })
    .await;
    let c = srv.client(Dialect::P9P2000L, 65536).await;
    attach(&c, ROOT, 0).await.unwrap();
    for fid in 2..=8 {
        walk(&c, ROOT, fid, &[]).await.unwrap();
    }
    match walk(&c, ROOT, 9, &[]).await {
        Err(ClientError::Remote { errno, .. }) => assert_eq!(errno, libc::EMFILE as u32),
        other => panic!("expected EMFILE, got {other:?}"),
    }
    clunk(&c, 8).await;
    walk(&c, ROOT, 9, &[]).await.unwrap();
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn qids_are_unique_across_file_systems_and_track_changes() {
    let (srv, c) = setup().await;
    let host = srv.host();
    let mut mounts = Vec::new();
    for name in ["m1", "m2"] {
        host.create_dir(name).unwrap();
        // An export spans host file systems: mount one on each directory. An image is one
        // file system numbering its own inodes, with nothing to mount inside, so for images
        // the same property is checked without mounts: same-named entries in different
        // directories get distinct qids, and versions follow changes.
        if let Some(dir) = host.dir_path(name) {
            let st = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "envoy-test"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success(), "this test mounts tmpfs (run as root)");
            mounts.push(Mounted(dir));
        }
        host.write(&format!("{name}/f"), name).unwrap();
    }
    if !mounts.is_empty() {
        // tmpfs numbers inodes from scratch in each instance, so the host inode numbers collide.
        let ino = |p: &str| host.metadata(p).unwrap().ino;
        assert_eq!(ino("m1"), ino("m2"));
        assert_eq!(ino("m1/f"), ino("m2/f"));
    }
    let mut paths = Vec::new();
    for (fid, name) in [(2, "m1"), (3, "m2")] {
        walk(&c, ROOT, fid, &[name]).await.unwrap();
        paths.push(getattr(&c, fid).await.qid.path);
        let w = walk(&c, ROOT, fid + 10, &[name, "f"]).await.unwrap();
        paths.push(w[1].path);
    }
    paths.push(getattr(&c, ROOT).await.qid.path);
    let mut unique = paths.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), paths.len(), "qid paths collide: {paths:?}");
    // The version changes when the file does.
    walk(&c, 12, 20, &[]).await.unwrap();
    let v1 = getattr(&c, 20).await.qid;
    std::thread::sleep(std::time::Duration::from_millis(10));
    host.write("m1/f", b"changed").unwrap();
    let v2 = getattr(&c, 20).await.qid;
    assert_eq!(v1.path, v2.path);
    assert_ne!(v1.version, v2.version);
    for fid in [2, 3, 12, 13, 20] {
        clunk(&c, fid).await;
    }
}

#[tokio::test]
async fn remove_and_flush_in_dotl() {
    let (srv, c) = setup().await;
    srv.host().create_dir("emptydir").unwrap();
    srv.host().write("file", b"x").unwrap();
    for name in ["emptydir", "file"] {
        walk(&c, ROOT, 2, &[name]).await.unwrap();
        ok(&c, Fcall::Tremove(Tremove { fid: 2 })).await;
        assert!(!srv.host().exists(name), "{name} removed");
    }
    assert_eq!(
        ok(&c, Fcall::Tflush(Tflush { oldtag: 77 })).await,
        Fcall::Rflush(Rflush {})
    );
    walk(&c, ROOT, 3, &[]).await.unwrap();
    assert_eq!(
        errno(&c, Fcall::Tremove(Tremove { fid: 3 })).await,
        libc::EBUSY as u32,
        "the root stays"
    );
}
