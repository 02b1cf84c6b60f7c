//! Confinement: nothing outside the export is read or changed, whatever the guest tries —
//! `..` past the root, symlinks out (absolute and relative), a directory swapped for a symlink
//! under a live fid, DMLINK naming another session's fid, renames into symlinked directories,
//! device nodes. Each test snapshots the outside tree before and after, and checks that no
//! reply carried its secret bytes. An image has no host paths to escape to: there the same
//! attempts must be refused or stay inside the image just the same (the outside checks then
//! hold trivially; the reply checks still bite).

use envoy_protocol::consts::*;
use envoy_protocol::*;
use envoy_tests::{TestServer, snapshot_tree, twalk as walk};
use envoy_tools::client::{Client, ClientError};

const SECRET: &[u8] = b"TOP-SECRET-OUTSIDE-THE-EXPORT";

async fn fixture(dialect: Dialect) -> (TestServer, Client) {
    let srv = TestServer::start().await;
    std::fs::write(srv.outside().join("secret"), SECRET).unwrap();
    std::fs::create_dir(srv.outside().join("dir")).unwrap();
    srv.host().symlink("/etc", "abs").unwrap();
    srv.host().symlink("../outside", "rel").unwrap();
    let secret = srv.outside().join("secret");
    srv.host()
        .symlink(secret.to_str().unwrap(), "abs-secret")
        .unwrap();
    srv.host().create_dir("inside").unwrap();
    srv.host().write("inside/file", b"inside").unwrap();
    let c = srv.attached(dialect, 65536).await;
    (srv, c)
}

/// Run `m`; return the reply (or the errno), and fail if any reply carries the secret.
async fn try_rpc(c: &Client, m: Fcall) -> Result<Fcall, u32> {
    match c.rpc(m).await {
        Ok(r) => {
            let text = format!("{r:?}");
            assert!(
                !text.contains("TOP-SECRET"),
                "a reply leaked outside data: {text}"
            );
            if let Fcall::Rread(rr) = &r {
                assert!(
                    !rr.data.windows(SECRET.len()).any(|w| w == SECRET),
                    "read leaked outside data"
                );
            }
            Ok(r)
        }
        Err(ClientError::Remote { errno, .. }) => Err(errno),
        Err(e) => panic!("transport failure: {e}"),
    }
}

#[tokio::test]
async fn dotdot_stays_at_the_root() {
    let (srv, c) = fixture(Dialect::P9P2000L).await;
    let before = snapshot_tree(&srv.outside());
    let root_qid = match try_rpc(&c, walk(1, 2, &[])).await {
        Ok(Fcall::Rwalk(_)) => {
            let Ok(Fcall::Rgetattr(a)) = try_rpc(
                &c,
                Fcall::Tgetattr(Tgetattr {
                    fid: 2,
                    request_mask: GETATTR_ALL,
                }),
            )
            .await
            else {
                panic!()
            };
            a.qid
        }
        other => panic!("{other:?}"),
    };
    let Ok(Fcall::Rwalk(w)) = try_rpc(&c, walk(1, 3, &["..", "..", ".."])).await else {
        panic!()
    };
    assert_eq!(w.wqids, vec![root_qid; 3], ".. at the root is the root");
    // Past the root and back down names the export's own entries, never the host's.
    let r = try_rpc(&c, walk(1, 4, &["..", "outside", "secret"])).await;
    assert!(
        matches!(r, Ok(Fcall::Rwalk(ref w)) if w.wqids.len() == 1),
        "stopped after '..': {r:?}"
    );
    assert!(
        matches!(try_rpc(&c, walk(1, 5, &["inside", "..", "..", "inside", "file"])).await, Ok(Fcall::Rwalk(ref w)) if w.wqids.len() == 5)
    );
    // Names with slashes are not names.
    assert_eq!(
        try_rpc(&c, walk(1, 6, &["../outside"])).await,
        Err(libc::EINVAL as u32)
    );
    assert_eq!(
        try_rpc(&c, walk(1, 6, &["inside/file"])).await,
        Err(libc::EINVAL as u32)
    );
    assert_eq!(before, snapshot_tree(&srv.outside()));
}

#[tokio::test]
async fn symlinks_do_not_lead_out() {
    let (srv, c) = fixture(Dialect::P9P2000L).await;
    let before = snapshot_tree(&srv.outside());
    let etc_before = std::fs::read_dir("/etc").unwrap().count();
    // Walking through a symlink is refused, absolute or relative.
    for link in ["abs", "rel"] {
        let r = try_rpc(&c, walk(1, 2, &[link, "secret"])).await;
        assert!(
            matches!(r, Ok(Fcall::Rwalk(ref w)) if w.wqids.len() == 1),
            "{link}: {r:?}"
        );
    }
    assert!(
        matches!(try_rpc(&c, walk(1, 2, &["abs", "passwd"])).await, Ok(Fcall::Rwalk(ref w)) if w.wqids.len() == 1)
    );
    // The link itself is what a fid names: opening it is ELOOP, its attributes are the link's.
    try_rpc(&c, walk(1, 3, &["abs-secret"])).await.unwrap();
    assert_eq!(
        try_rpc(
            &c,
            Fcall::Tlopen(Tlopen {
                fid: 3,
                flags: P9_DOTL_RDONLY
            })
        )
        .await,
        Err(libc::ELOOP as u32)
    );
    let Ok(Fcall::Rgetattr(a)) = try_rpc(
        &c,
        Fcall::Tgetattr(Tgetattr {
            fid: 3,
            request_mask: GETATTR_ALL,
        }),
    )
    .await
    else {
        panic!()
    };
    assert_eq!(a.mode & libc::S_IFMT, libc::S_IFLNK);
    // Creating, linking or renaming *into* a symlinked directory fails.
    try_rpc(&c, walk(1, 4, &["rel"])).await.unwrap();
    let create = Tlcreate {
        fid: 4,
        name: "planted".into(),
        flags: P9_DOTL_RDWR,
        mode: 0o644,
        gid: 0,
    };
    assert!(try_rpc(&c, Fcall::Tlcreate(create)).await.is_err());
    assert!(
        try_rpc(
            &c,
            Fcall::Tmkdir(Tmkdir {
                dfid: 4,
                name: "d".into(),
                mode: 0o755,
                gid: 0
            })
        )
        .await
        .is_err()
    );
    let sym = Tsymlink {
        fid: 4,
        name: "s".into(),
        symtgt: "/".into(),
        gid: 0,
    };
    assert!(try_rpc(&c, Fcall::Tsymlink(sym)).await.is_err());
    try_rpc(&c, walk(1, 5, &["inside", "file"])).await.unwrap();
    assert!(
        try_rpc(
            &c,
            Fcall::Tlink(Tlink {
                dfid: 4,
                fid: 5,
                name: "hl".into()
            })
        )
        .await
        .is_err()
    );
    assert!(
        try_rpc(
            &c,
            Fcall::Trename(Trename {
                fid: 5,
                dfid: 4,
                name: "moved".into()
            })
        )
        .await
        .is_err()
    );
    let ra = Trenameat {
        olddirfid: 1,
        oldname: "inside".into(),
        newdirfid: 4,
        newname: "x".into(),
    };
    assert!(try_rpc(&c, Fcall::Trenameat(ra)).await.is_err());
    assert!(
        try_rpc(
            &c,
            Fcall::Tunlinkat(Tunlinkat {
                dirfd: 4,
                name: "secret".into(),
                flags: 0
            })
        )
        .await
        .is_err()
    );
    // Attributes and xattrs through a symlinked directory fail too.
    assert!(
        try_rpc(
            &c,
            Fcall::Txattrwalk(Txattrwalk {
                fid: 4,
                newfid: 9,
                name: "user.x".into()
            })
        )
        .await
        .is_err()
    );
    assert!(
        srv.host().exists("inside/file"),
        "the file was not moved out"
    );
    assert_eq!(before, snapshot_tree(&srv.outside()));
    assert_eq!(etc_before, std::fs::read_dir("/etc").unwrap().count());
}

#[tokio::test]
async fn directory_swapped_for_a_symlink_under_a_live_fid() {
    let (srv, c) = fixture(Dialect::P9P2000L).await;
    srv.host().create_dir("d").unwrap();
    srv.host().write("d/secret", b"harmless").unwrap();
    try_rpc(&c, walk(1, 2, &["d", "secret"])).await.unwrap();
    try_rpc(&c, walk(1, 3, &["d"])).await.unwrap();
    // The host (or another guest) swaps the directory for a link to the outside, where a file
    // of the same name holds the secret.
    srv.host().rename("d", "d-old").unwrap();
    srv.host().symlink("../outside", "d").unwrap();
    let before = snapshot_tree(&srv.outside());
    // Each operation on the old fids either fails or acts on the original directory (still
    // inside the export); `try_rpc` fails the test if a reply carries the outside secret.
    if try_rpc(
        &c,
        Fcall::Tlopen(Tlopen {
            fid: 2,
            flags: P9_DOTL_RDONLY,
        }),
    )
    .await
    .is_ok()
    {
        let r = try_rpc(
            &c,
            Fcall::Tread(Tread {
                fid: 2,
                offset: 0,
                count: 100,
            }),
        )
        .await;
        assert_eq!(
            r,
            Ok(Fcall::Rread(Rread {
                data: bytes::Bytes::from_static(b"harmless")
            }))
        );
    }
    let _ = try_rpc(
        &c,
        Fcall::Tgetattr(Tgetattr {
            fid: 2,
            request_mask: GETATTR_ALL,
        }),
    )
    .await;
    let set = Tsetattr {
        fid: 2,
        valid: SETATTR_SIZE | SETATTR_MODE,
        mode: 0o777,
        uid: 0,
        gid: 0,
        size: 0,
        atime_sec: 0,
        atime_nsec: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
    };
    let _ = try_rpc(&c, Fcall::Tsetattr(set)).await;
    let create = Tlcreate {
        fid: 3,
        name: "planted".into(),
        flags: P9_DOTL_RDWR,
        mode: 0o644,
        gid: 0,
    };
    let _ = try_rpc(&c, Fcall::Tlcreate(create)).await;
    let _ = try_rpc(
        &c,
        Fcall::Tunlinkat(Tunlinkat {
            dirfd: 1,
            name: "planted".into(),
            flags: 0,
        }),
    )
    .await;
    walk_fresh_stops_at_the_link(&c).await;
    assert_eq!(
        before,
        snapshot_tree(&srv.outside()),
        "nothing outside changed"
    );
    assert!(!srv.outside().join("planted").exists());
}

/// A new walk through the swapped name stops at the symlink.
async fn walk_fresh_stops_at_the_link(c: &Client) {
    let r = try_rpc(c, walk(1, 9, &["d", "secret"])).await;
    assert!(
        matches!(r, Ok(Fcall::Rwalk(ref w)) if w.wqids.len() == 1 && w.wqids[0].ty == QTSYMLINK),
        "{r:?}"
    );
}

#[tokio::test]
async fn dmlink_only_resolves_this_sessions_fids() {
    let (srv, a) = fixture(Dialect::P9P2000U).await;
    let b = srv.attached(Dialect::P9P2000U, 65536).await;
    // Session A holds fid 40 on a file; session B has no fid 40.
    try_rpc(&a, walk(1, 40, &["inside", "file"])).await.unwrap();
    try_rpc(&b, walk(1, 2, &[])).await.unwrap();
    let link = |fid: u32, target: &str| {
        Fcall::Tcreate(Tcreate {
            fid,
            name: "hardlink".into(),
            perm: DMLINK | 0o644,
            mode: OREAD,
            extension: target.into(),
        })
    };
    assert_eq!(
        try_rpc(&b, link(2, "40\n")).await,
        Err(libc::EBADF as u32),
        "another session's fid"
    );
    assert_eq!(
        try_rpc(&b, link(2, "4294967295")).await,
        Err(libc::EBADF as u32)
    );
    assert_eq!(
        try_rpc(&b, link(2, "not-a-number")).await,
        Err(libc::EINVAL as u32)
    );
    assert!(!srv.host().exists("hardlink"));
    // A target fid naming a symlink to the outside links the symlink, never the outside file.
    try_rpc(&b, walk(1, 41, &["abs-secret"])).await.unwrap();
    try_rpc(&b, walk(1, 3, &[])).await.unwrap();
    try_rpc(&b, link(3, "41")).await.unwrap();
    let meta = srv.host().metadata("hardlink").unwrap();
    assert!(meta.is_symlink(), "the link is to the symlink itself");
    assert_eq!(
        std::fs::metadata(srv.outside().join("secret"))
            .unwrap()
            .len(),
        SECRET.len() as u64
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(srv.outside().join("secret"))
            .unwrap()
            .nlink(),
        1,
        "outside file gained no link"
    );
    // Within the session, DMLINK works.
    try_rpc(&a, walk(1, 4, &[])).await.unwrap();
    let ok = Tcreate {
        fid: 4,
        name: "hl2".into(),
        perm: DMLINK | 0o644,
        mode: OREAD,
        extension: "40\n".into(),
    };
    try_rpc(&a, Fcall::Tcreate(ok)).await.unwrap();
    assert_eq!(srv.host().read("hl2").unwrap(), b"inside");
    assert_eq!(srv.host().metadata("inside/file").unwrap().nlink, 2);
}

#[tokio::test]
async fn wstat_rename_cannot_leave_the_directory() {
    let (srv, c) = fixture(Dialect::P9P2000U).await;
    let before = snapshot_tree(&srv.outside());
    try_rpc(&c, walk(1, 2, &["inside", "file"])).await.unwrap();
    for name in ["../../outside/file", "../file", "a/b", ".."] {
        let mut stat = Stat::dont_touch();
        stat.name = name.into();
        let r = try_rpc(&c, Fcall::Twstat(Twstat { fid: 2, stat })).await;
        assert!(r.is_err(), "rename to {name:?} accepted");
    }
    assert!(srv.host().exists("inside/file"));
    assert_eq!(before, snapshot_tree(&srv.outside()));
}

#[tokio::test]
async fn device_nodes_cannot_be_opened() {
    let (srv, c) = fixture(Dialect::P9P2000L).await;
    // The guest (as root) makes /dev/null's twin and /dev/mem's twin; neither opens.
    for (name, major, minor) in [("null", 1, 3), ("mem", 1, 1)] {
        let m = Tmknod {
            dfid: 1,
            name: name.into(),
            mode: libc::S_IFCHR | 0o666,
            major,
            minor,
            gid: 0,
        };
        try_rpc(&c, Fcall::Tmknod(m)).await.unwrap();
        try_rpc(&c, walk(1, 2, &[name])).await.unwrap();
        assert_eq!(
            try_rpc(
                &c,
                Fcall::Tlopen(Tlopen {
                    fid: 2,
                    flags: P9_DOTL_RDWR
                })
            )
            .await,
            Err(libc::ENXIO as u32)
        );
        try_rpc(&c, Fcall::Tclunk(Tclunk { fid: 2 })).await.unwrap();
    }
    // A fifo neither (it would block a server thread).
    let m = Tmknod {
        dfid: 1,
        name: "fifo".into(),
        mode: libc::S_IFIFO | 0o666,
        major: 0,
        minor: 0,
        gid: 0,
    };
    try_rpc(&c, Fcall::Tmknod(m)).await.unwrap();
    try_rpc(&c, walk(1, 3, &["fifo"])).await.unwrap();
    assert_eq!(
        try_rpc(
            &c,
            Fcall::Tlopen(Tlopen {
                fid: 3,
                flags: P9_DOTL_RDONLY
            })
        )
        .await,
        Err(libc::ENXIO as u32)
    );
    drop(srv);
}
