//! The 9P2000.L sample session of diod's `protocol.md` ("Sample Session": a Linux v9fs
//! mount, `ls`, `echo hello >foo`, `unlink`, `mkdir`, `ln -s`, `readlink`, `chmod`, `cat`).
//!
//! The document shows the session as decoded field values, not as bytes; the only byte
//! dumps are the start of the first Rreaddir's data and the Twrite/Rread payload
//! (`68656c6c 6f0a`). So each frame here is **built from the described field values** with
//! a tiny byte writer local to this test (not the crate's encoder), following the wire
//! layouts of the same document. Each frame must decode to the described message and
//! re-encode to the same bytes.
//!
//! Interpretation of the trace's notation:
//! - `qid (00000000002c1fac 0 'd')` is path, version, type; `'d'` is QTDIR, `'L'` is
//!   QTSYMLINK and `''` is QTFILE.
//! - Fields printed as `X` (not valid in the reply, or not set in the request) are 0.
//! - Times are printed as local dates without a zone; they are taken as UTC seconds with
//!   0 nanoseconds.
//! - The Tlopen "mode" field is the `flags[4]` of the wire layout; Tmkdir's "fid" is `dfid`.
//! - The first Rreaddir carried 4457 bytes of which the document dumps 64; those hold the
//!   two complete entries `.` and `..` (51 bytes) and the start of a third. The frame here
//!   carries the two complete entries, byte for byte as dumped.

use bytes::{Bytes, BytesMut};
use envoy_protocol::consts::*;
use envoy_protocol::*;

/// A minimal little-endian writer, independent of the crate under test.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(self, s: &str) -> Self {
        let mut w = self.u16(s.len() as u16);
        w.0.extend_from_slice(s.as_bytes());
        w
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn qid(self, q: Qid) -> Self {
        self.u8(q.ty).u32(q.version).u64(q.path)
    }
    /// Wrap the body in `size[4] type[1] tag[2]`.
    fn frame(self, ty: u8, tag: u16) -> Bytes {
        let mut f = Vec::new();
        f.extend_from_slice(&(7 + self.0.len() as u32).to_le_bytes());
        f.push(ty);
        f.extend_from_slice(&tag.to_le_bytes());
        f.extend_from_slice(&self.0);
        f.into()
    }
}

fn w() -> W {
    W::default()
}

const ROOT: Qid = Qid {
    ty: QTDIR,
    version: 0,
    path: 0x2c1fac,
};
const FOO: Qid = Qid {
    ty: QTFILE,
    version: 0,
    path: 0x2c1bd1,
};
const NEWDIR: Qid = Qid {
    ty: QTDIR,
    version: 0,
    path: 0x2c1bd1,
};
const SYMLINK: Qid = Qid {
    ty: QTSYMLINK,
    version: 0,
    path: 0x2c1de3,
};
const FOO2: Qid = Qid {
    ty: QTFILE,
    version: 0,
    path: 0x2c1de4,
};

/// "Fri Feb  4 17:57:18 2011" and friends, as UTC seconds.
const FEB4_175718: u64 = 1_296_842_238;
const FEB4_174507: u64 = 1_296_841_507;
const FEB7_030704: u64 = 1_297_048_024;
const FEB7_085835: u64 = 1_297_069_115;
const FEB7_090110: u64 = 1_297_069_270;
const FEB7_090720: u64 = 1_297_069_640;

/// Arguments of an Rgetattr from the trace (nanoseconds, btime, gen, data_version are 0).
struct Attr {
    valid: u64,
    qid: Qid,
    mode: u32,
    nlink: u64,
    size: u64,
    blocks: u64,
    atime: u64,
    mtime: u64,
    ctime: u64,
}

fn rgetattr(a: Attr) -> (W, Fcall) {
    let bytes = w()
        .u64(a.valid)
        .qid(a.qid)
        .u32(a.mode)
        .u32(500)
        .u32(500)
        .u64(a.nlink)
        .u64(0)
        .u64(a.size)
        .u64(4096)
        .u64(a.blocks)
        .u64(a.atime)
        .u64(0)
        .u64(a.mtime)
        .u64(0)
        .u64(a.ctime)
        .u64(0)
        .u64(0)
        .u64(0)
        .u64(0)
        .u64(0);
    let msg = Rgetattr {
        valid: a.valid,
        qid: a.qid,
        mode: a.mode,
        uid: 500,
        gid: 500,
        nlink: a.nlink,
        rdev: 0,
        size: a.size,
        blksize: 4096,
        blocks: a.blocks,
        atime_sec: a.atime,
        atime_nsec: 0,
        mtime_sec: a.mtime,
        mtime_nsec: 0,
        ctime_sec: a.ctime,
        ctime_nsec: 0,
        btime_sec: 0,
        btime_nsec: 0,
        r#gen: 0,
        data_version: 0,
    };
    (bytes, msg.into())
}

/// The first 51 bytes of the first Rreaddir's data, as dumped in protocol.md (the dump
/// prints memory in groups of four bytes).
const READDIR_DUMP: &str = "80000000 00ac1f2c 00000000 00010000 00000000 00040100 2e800000 0000ffff \
                            25000000 00002658 ea000000 00000402 002e2e";

fn unhex(s: &str) -> Vec<u8> {
    let d: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    d.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn twalk(fid: u32, newfid: u32, names: &[&str]) -> (W, Fcall) {
    let mut b = w().u32(fid).u32(newfid).u16(names.len() as u16);
    for n in names {
        b = b.str(n);
    }
    let msg = Twalk {
        fid,
        newfid,
        wnames: names.iter().map(|n| n.to_string()).collect(),
    };
    (b, msg.into())
}

fn rwalk(qids: &[Qid]) -> (W, Fcall) {
    let mut b = w().u16(qids.len() as u16);
    for q in qids {
        b = b.qid(*q);
    }
    (
        b,
        Rwalk {
            wqids: qids.to_vec(),
        }
        .into(),
    )
}

fn session() -> Vec<(u16, (W, Fcall))> {
    let hello = Bytes::from_static(b"hello\n");
    let dirents = Bytes::from(unhex(READDIR_DUMP));
    let rlerror_enoent = || (w().u32(2), Rlerror { ecode: 2 }.into());
    let tgetattr = |fid, mask| {
        (
            w().u32(fid).u64(mask),
            Tgetattr {
                fid,
                request_mask: mask,
            }
            .into(),
        )
    };
    let tclunk = |fid| (w().u32(fid), Tclunk { fid }.into());
    let rclunk = || (w(), Rclunk {}.into());
    let t = 1;
    vec![
        // Version negotiation, attach as root, getattr of the mount point.
        (
            NOTAG,
            (
                w().u32(65512).str("9P2000.L"),
                Tversion {
                    msize: 65512,
                    version: "9P2000.L".into(),
                }
                .into(),
            ),
        ),
        (
            NOTAG,
            (
                w().u32(65512).str("9P2000.L"),
                Rversion {
                    msize: 65512,
                    version: "9P2000.L".into(),
                }
                .into(),
            ),
        ),
        (
            t,
            (
                w().u32(0)
                    .u32(NOFID)
                    .str("root")
                    .str("/tmp/9")
                    .u32(NONUNAME),
                Tattach {
                    fid: 0,
                    afid: NOFID,
                    uname: "root".into(),
                    aname: "/tmp/9".into(),
                    n_uname: NONUNAME,
                }
                .into(),
            ),
        ),
        (t, (w().qid(ROOT), Rattach { qid: ROOT }.into())),
        (t, tgetattr(0, 0x7ff)),
        (
            t,
            rgetattr(Attr {
                valid: 0x7ff,
                qid: ROOT,
                mode: 0o40755,
                nlink: 56,
                size: 0,
                blocks: 2664,
                atime: FEB4_175718,
                mtime: FEB4_174507,
                ctime: FEB7_030704,
            }),
        ),
        // uid 500 runs ls: its own attach, getattr, clone + lopen, readdir, clunk.
        (
            t,
            (
                w().u32(1).u32(NOFID).str("").str("/tmp/9").u32(500),
                Tattach {
                    fid: 1,
                    afid: NOFID,
                    uname: "".into(),
                    aname: "/tmp/9".into(),
                    n_uname: 500,
                }
                .into(),
            ),
        ),
        (t, (w().qid(ROOT), Rattach { qid: ROOT }.into())),
        (t, tgetattr(1, 0x3fff)),
        (
            t,
            rgetattr(Attr {
                valid: 0x3fff,
                qid: ROOT,
                mode: 0o40755,
                nlink: 56,
                size: 0,
                blocks: 2664,
                atime: FEB4_175718,
                mtime: FEB4_174507,
                ctime: FEB7_030704,
            }),
        ),
        (t, twalk(1, 2, &[])),
        (t, rwalk(&[])),
        (
            t,
            (
                w().u32(2).u32(0o2304000),
                Tlopen {
                    fid: 2,
                    flags: 0o2304000,
                }
                .into(),
            ),
        ),
        (
            t,
            (
                w().qid(ROOT).u32(0),
                Rlopen {
                    qid: ROOT,
                    iounit: 0,
                }
                .into(),
            ),
        ),
        (
            t,
            (
                w().u32(2).u64(0).u32(65488),
                Treaddir {
                    fid: 2,
                    offset: 0,
                    count: 65488,
                }
                .into(),
            ),
        ),
        (
            t,
            (
                w().u32(dirents.len() as u32).raw(&dirents),
                Rreaddir {
                    data: dirents.clone(),
                }
                .into(),
            ),
        ),
        (
            t,
            (
                w().u32(2).u64(2147483647).u32(65488),
                Treaddir {
                    fid: 2,
                    offset: 2147483647,
                    count: 65488,
                }
                .into(),
            ),
        ),
        (t, (w().u32(0), Rreaddir { data: Bytes::new() }.into())),
        (t, tclunk(2)),
        (t, rclunk()),
        // ls /tmp/9/foo: ENOENT.
        (t, twalk(1, 2, &["foo"])),
        (t, rlerror_enoent()),
        // echo hello >/tmp/9/foo
        (t, twalk(1, 2, &[])),
        (t, rwalk(&[])),
        (
            t,
            (
                w().u32(2).str("foo").u32(0x8241).u32(0o100644).u32(500),
                Tlcreate {
                    fid: 2,
                    name: "foo".into(),
                    flags: 0x8241,
                    mode: 0o100644,
                    gid: 500,
                }
                .into(),
            ),
        ),
        (
            t,
            (
                w().qid(FOO).u32(4096),
                Rlcreate {
                    qid: FOO,
                    iounit: 4096,
                }
                .into(),
            ),
        ),
        (t, twalk(1, 3, &["foo"])),
        (t, rwalk(&[FOO])),
        (t, tgetattr(3, 0x7ff)),
        (
            t,
            rgetattr(Attr {
                valid: 0x7ff,
                qid: FOO,
                mode: 0o100644,
                nlink: 1,
                size: 0,
                blocks: 0,
                atime: FEB7_085835,
                mtime: FEB7_085835,
                ctime: FEB7_085835,
            }),
        ),
        (
            t,
            (
                w().u32(2).u64(0).u32(6).raw(&hello),
                Twrite {
                    fid: 2,
                    offset: 0,
                    data: hello.clone(),
                }
                .into(),
            ),
        ),
        (t, (w().u32(6), Rwrite { count: 6 }.into())),
        (t, tclunk(2)),
        (t, rclunk()),
        // unlink /tmp/9/foo
        (t, twalk(3, 2, &[])),
        (t, rwalk(&[])),
        (t, (w().u32(2), Tremove { fid: 2 }.into())),
        (t, (w(), Rremove {}.into())),
        // mkdir /tmp/9/newdir
        (t, twalk(1, 2, &["newdir"])),
        (t, rlerror_enoent()),
        (
            t,
            (
                w().u32(1).str("newdir").u32(0o40755).u32(500),
                Tmkdir {
                    dfid: 1,
                    name: "newdir".into(),
                    mode: 0o40755,
                    gid: 500,
                }
                .into(),
            ),
        ),
        (t, (w().qid(NEWDIR), Rmkdir { qid: NEWDIR }.into())),
        // ln -s /tmp/9/foo /tmp/9/newsymlink
        (t, twalk(1, 4, &["newsymlink"])),
        (t, rlerror_enoent()),
        (
            t,
            (
                w().u32(1).str("newsymlink").str("/tmp/9/newdir").u32(500),
                Tsymlink {
                    fid: 1,
                    name: "newsymlink".into(),
                    symtgt: "/tmp/9/newdir".into(),
                    gid: 500,
                }
                .into(),
            ),
        ),
        (t, (w().qid(SYMLINK), Rsymlink { qid: SYMLINK }.into())),
        // readlink /tmp/9/newsymlink
        (t, twalk(1, 4, &["newsymlink"])),
        (t, rwalk(&[SYMLINK])),
        (t, (w().u32(4), Treadlink { fid: 4 }.into())),
        (
            t,
            (
                w().str("/tmp/9/newdir"),
                Rreadlink {
                    target: "/tmp/9/newdir".into(),
                }
                .into(),
            ),
        ),
        // chmod 0 /tmp/9/newdir
        (t, tgetattr(2, 0x3fff)),
        (
            t,
            rgetattr(Attr {
                valid: 0x3fff,
                qid: NEWDIR,
                mode: 0o40755,
                nlink: 2,
                size: 0,
                blocks: 8,
                atime: FEB7_090110,
                mtime: FEB7_090110,
                ctime: FEB7_090110,
            }),
        ),
        (
            t,
            (
                w().u32(2)
                    .u32(0x41)
                    .u32(0o40000)
                    .u32(0)
                    .u32(0)
                    .u64(0)
                    .u64(0)
                    .u64(0)
                    .u64(0)
                    .u64(0),
                Tsetattr {
                    fid: 2,
                    valid: 0x41,
                    mode: 0o40000,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    atime_sec: 0,
                    atime_nsec: 0,
                    mtime_sec: 0,
                    mtime_nsec: 0,
                }
                .into(),
            ),
        ),
        (t, (w(), Rsetattr {}.into())),
        // cat /tmp/9/foo2
        (t, twalk(6, 5, &[])),
        (t, rwalk(&[])),
        (
            t,
            (
                w().u32(5).u32(0o100000),
                Tlopen {
                    fid: 5,
                    flags: 0o100000,
                }
                .into(),
            ),
        ),
        (
            t,
            (
                w().qid(FOO2).u32(0),
                Rlopen {
                    qid: FOO2,
                    iounit: 0,
                }
                .into(),
            ),
        ),
        (t, tgetattr(6, 0x3fff)),
        (
            t,
            rgetattr(Attr {
                valid: 0x3fff,
                qid: FOO2,
                mode: 0o100644,
                nlink: 1,
                size: 6,
                blocks: 8,
                atime: FEB7_090720,
                mtime: FEB7_090720,
                ctime: FEB7_090720,
            }),
        ),
        (
            t,
            (
                w().u32(5).u64(0).u32(32768),
                Tread {
                    fid: 5,
                    offset: 0,
                    count: 32768,
                }
                .into(),
            ),
        ),
        (
            t,
            (
                w().u32(6).raw(&hello),
                Rread {
                    data: hello.clone(),
                }
                .into(),
            ),
        ),
        (
            t,
            (
                w().u32(5).u64(6).u32(32768),
                Tread {
                    fid: 5,
                    offset: 6,
                    count: 32768,
                }
                .into(),
            ),
        ),
        (t, (w().u32(0), Rread { data: Bytes::new() }.into())),
        (t, tclunk(5)),
        (t, rclunk()),
    ]
}

#[test]
fn sample_session_decodes_and_reencodes_identically() {
    let steps = session();
    assert_eq!(steps.len(), 66, "every message of the trace");
    for (i, (tag, (body, want))) in steps.into_iter().enumerate() {
        let frame = body.frame(want.ty(), tag);
        let (got_tag, got) = decode(frame.clone(), Dialect::P9P2000L)
            .unwrap_or_else(|e| panic!("step {i} ({}): {e}", want.name()));
        assert_eq!((got_tag, &got), (tag, &want), "step {i}");
        let mut again = BytesMut::new();
        got.encode(got_tag, Dialect::P9P2000L, &mut again);
        assert_eq!(
            &again[..],
            &frame[..],
            "step {i} ({}) re-encoded differently",
            want.name()
        );
    }
}

#[test]
fn sample_readdir_dump_holds_dot_and_dotdot() {
    let entries = decode_dirents(Bytes::from(unhex(READDIR_DUMP))).unwrap();
    assert_eq!(
        entries,
        vec![
            Dirent {
                qid: ROOT,
                offset: 1,
                ty: 4,
                name: ".".into()
            },
            Dirent {
                qid: Qid {
                    ty: QTDIR,
                    version: 0,
                    path: 0x25ffff
                },
                offset: 0xea5826,
                ty: 4,
                name: "..".into()
            },
        ]
    );
    // The dump's 64 bytes end inside a third entry: that is a truncated record.
    let full = unhex(
        "80000000 00ac1f2c 00000000 00010000 00000000 00040100 2e800000 0000ffff \
         25000000 00002658 ea000000 00000402 002e2e00 00000000 d51d2c00 00000000",
    );
    assert_eq!(full.len(), 64);
    assert_eq!(
        decode_dirents(Bytes::from(full)),
        Err(DecodeError::Truncated)
    );
}
