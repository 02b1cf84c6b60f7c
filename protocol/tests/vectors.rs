//! Byte-exact vectors: one hand-written frame for every message in every dialect it
//! belongs to, checked in both directions (encode gives these bytes, decode gives this
//! message) and rejected in the other dialects.
//!
//! The hex was written out from the wire layouts in protocol.md §A1 (Plan 9 section 5,
//! the 9P2000.u draft, diod protocol.md), one space-separated group per field:
//! `size[4] type[1] tag[2]` then the body. Integers are little-endian. Messages with
//! 9P2000.u extension fields (Tauth, Tattach, Rerror, Tcreate, Rstat, Twstat) have a
//! 9P2000 form and an extended form.
//!
//! The same vectors seed the fuzz corpus (`fuzz/corpus/decode/`).

use bytes::{Bytes, BytesMut};
use envoy_protocol::consts::*;
use envoy_protocol::*;

const B: &[Dialect] = &[Dialect::P9P2000];
const U: &[Dialect] = &[Dialect::P9P2000U];
const L: &[Dialect] = &[Dialect::P9P2000L];
const BU: &[Dialect] = &[Dialect::P9P2000, Dialect::P9P2000U];
const UL: &[Dialect] = &[Dialect::P9P2000U, Dialect::P9P2000L];
const BUL: &[Dialect] = &[Dialect::P9P2000, Dialect::P9P2000U, Dialect::P9P2000L];

/// One vector: a name (also the corpus file name), the dialects whose encoding these
/// bytes are, the tag, the message and the bytes.
struct Vector {
    name: &'static str,
    dialects: &'static [Dialect],
    tag: u16,
    msg: Fcall,
    hex: &'static str,
}

fn v(
    name: &'static str,
    dialects: &'static [Dialect],
    tag: u16,
    msg: impl Into<Fcall>,
    hex: &'static str,
) -> Vector {
    Vector {
        name,
        dialects,
        tag,
        msg: msg.into(),
        hex,
    }
}

/// Hex digits to bytes, ignoring whitespace.
fn h(hex: &str) -> Bytes {
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {hex}"
    );
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).expect("hex digit"))
        .collect::<Vec<u8>>()
        .into()
}

fn qid(ty: u8, version: u32, path: u64) -> Qid {
    Qid { ty, version, path }
}

fn s(x: &str) -> String {
    x.to_owned()
}

fn rstat_base() -> Stat {
    Stat {
        ty: 0,
        dev: 0,
        qid: qid(QTDIR, 0, 1),
        mode: DMDIR | 0o755,
        atime: 1_000_000_000,
        mtime: 1_000_000_001,
        length: 0,
        name: s("/"),
        uid: s("u"),
        gid: s("g"),
        muid: s(""),
        ..Stat::default()
    }
}

fn wstat() -> Stat {
    Stat {
        name: s("renamed"),
        ..Stat::dont_touch()
    }
}

#[rustfmt::skip]
fn vectors() -> Vec<Vector> {
    vec![
        // ------------------------------------------------------------ 9P2000 / .u / .L
        v("tversion", BUL, NOTAG, Tversion { msize: 8192, version: s("9P2000.L") },
          "15000000 64 ffff 00200000 0800 3950323030302e4c"),
        v("rversion", BUL, NOTAG, Rversion { msize: 8192, version: s("9P2000") },
          "13000000 65 ffff 00200000 0600 395032303030"),
        v("tauth-base", B, 1, Tauth { afid: 5, uname: s("bob"), aname: s(""), n_uname: NONUNAME },
          "12000000 66 0100 05000000 0300 626f62 0000"),
        v("tauth-ext", UL, 1, Tauth { afid: 5, uname: s("bob"), aname: s(""), n_uname: 1000 },
          "16000000 66 0100 05000000 0300 626f62 0000 e8030000"),
        v("rauth", BUL, 1, Rauth { aqid: qid(QTAUTH, 0, 0x1122_3344_5566_7788) },
          "14000000 67 0100 08 00000000 8877665544332211"),
        v("tattach-base", B, 2,
          Tattach { fid: 1, afid: NOFID, uname: s("root"), aname: s("/srv"), n_uname: NONUNAME },
          "1b000000 68 0200 01000000 ffffffff 0400 726f6f74 0400 2f737276"),
        v("tattach-ext", UL, 2,
          Tattach { fid: 1, afid: NOFID, uname: s("root"), aname: s("/srv"), n_uname: 0 },
          "1f000000 68 0200 01000000 ffffffff 0400 726f6f74 0400 2f737276 00000000"),
        v("rattach", BUL, 2, Rattach { qid: qid(QTDIR, 7, 42) },
          "14000000 69 0200 80 07000000 2a00000000000000"),
        v("rerror-base", B, 3, Rerror { ename: s("no such file"), errno: 0 },
          "15000000 6b 0300 0c00 6e6f20737563682066696c65"),
        v("rerror-ext", UL, 3, Rerror { ename: s("no such file"), errno: 2 },
          "19000000 6b 0300 0c00 6e6f20737563682066696c65 02000000"),
        v("tflush", BUL, 4, Tflush { oldtag: 3 }, "09000000 6c 0400 0300"),
        v("rflush", BUL, 4, Rflush {}, "07000000 6d 0400"),
        v("twalk", BUL, 5, Twalk { fid: 1, newfid: 2, wnames: vec![s("usr"), s("lib")] },
          "1b000000 6e 0500 01000000 02000000 0200 0300 757372 0300 6c6962"),
        v("twalk-clone", BUL, 5, Twalk { fid: 1, newfid: 2, wnames: vec![] },
          "11000000 6e 0500 01000000 02000000 0000"),
        v("rwalk", BUL, 5, Rwalk { wqids: vec![qid(QTDIR, 1, 10), qid(QTFILE, 2, 11)] },
          "23000000 6f 0500 0200 80 01000000 0a00000000000000 00 02000000 0b00000000000000"),
        v("topen", BU, 6, Topen { fid: 2, mode: ORDWR | OTRUNC }, "0c000000 70 0600 02000000 12"),
        v("ropen", BU, 6, Ropen { qid: qid(QTFILE, 3, 12), iounit: 8168 },
          "18000000 71 0600 00 03000000 0c00000000000000 e81f0000"),
        v("tcreate-base", B, 7,
          Tcreate { fid: 1, name: s("new"), perm: 0o644, mode: OWRITE, extension: s("") },
          "15000000 72 0700 01000000 0300 6e6577 a4010000 01"),
        v("tcreate-ext", U, 7,
          Tcreate { fid: 1, name: s("lnk"), perm: DMSYMLINK | 0o777, mode: OREAD, extension: s("/tmp") },
          "1b000000 72 0700 01000000 0300 6c6e6b ff010002 00 0400 2f746d70"),
        v("rcreate", BU, 7, Rcreate { qid: qid(QTFILE, 0, 99), iounit: 0 },
          "18000000 73 0700 00 00000000 6300000000000000 00000000"),
        v("tread", BUL, 8, Tread { fid: 2, offset: 0x1000, count: 4096 },
          "17000000 74 0800 02000000 0010000000000000 00100000"),
        v("rread", BUL, 8, Rread { data: Bytes::from_static(b"hello") },
          "10000000 75 0800 05000000 68656c6c6f"),
        v("rread-eof", BUL, 8, Rread { data: Bytes::new() }, "0b000000 75 0800 00000000"),
        v("twrite", BUL, 9, Twrite { fid: 2, offset: 5, data: Bytes::from_static(b"abc") },
          "1a000000 76 0900 02000000 0500000000000000 03000000 616263"),
        v("rwrite", BUL, 9, Rwrite { count: 3 }, "0b000000 77 0900 03000000"),
        v("tclunk", BUL, 10, Tclunk { fid: 2 }, "0b000000 78 0a00 02000000"),
        v("rclunk", BUL, 10, Rclunk {}, "07000000 79 0a00"),
        v("tremove", BUL, 11, Tremove { fid: 3 }, "0b000000 7a 0b00 03000000"),
        v("rremove", BUL, 11, Rremove {}, "07000000 7b 0b00"),
        v("tstat", BU, 12, Tstat { fid: 1 }, "0b000000 7c 0c00 01000000"),
        // n[2]=52, then the stat: size[2]=50 type dev qid mode atime mtime length name uid
        // gid muid.
        v("rstat-base", B, 13, Rstat { stat: rstat_base() },
          "3d000000 7d 0d00 3400 3200 0000 00000000 80 00000000 0100000000000000 ed010080 \
           00ca9a3b 01ca9a3b 0000000000000000 0100 2f 0100 75 0100 67 0000"),
        // The same plus extension[s] n_uid[4] n_gid[4] n_muid[4]: n=66, size=64.
        v("rstat-ext", U, 13,
          Rstat { stat: Stat { extension: s(""), n_uid: 1000, n_gid: 100, n_muid: NONUNAME, ..rstat_base() } },
          "4b000000 7d 0d00 4200 4000 0000 00000000 80 00000000 0100000000000000 ed010080 \
           00ca9a3b 01ca9a3b 0000000000000000 0100 2f 0100 75 0100 67 0000 \
           0000 e8030000 64000000 ffffffff"),
        // A rename: every field "don't touch" but the name. n=56, size=54.
        v("twstat-base", B, 13, Twstat { fid: 4, stat: wstat() },
          "45000000 7e 0d00 04000000 3800 3600 ffff ffffffff ff ffffffff ffffffffffffffff \
           ffffffff ffffffff ffffffff ffffffffffffffff 0700 72656e616d6564 0000 0000 0000"),
        v("twstat-ext", U, 13, Twstat { fid: 4, stat: wstat() },
          "53000000 7e 0d00 04000000 4600 4400 ffff ffffffff ff ffffffff ffffffffffffffff \
           ffffffff ffffffff ffffffff ffffffffffffffff 0700 72656e616d6564 0000 0000 0000 \
           0000 ffffffff ffffffff ffffffff"),
        v("rwstat", BU, 13, Rwstat {}, "07000000 7f 0d00"),
        // ------------------------------------------------------------------- 9P2000.L
        v("rlerror", L, 1, Rlerror { ecode: 2 }, "0b000000 07 0100 02000000"),
        v("tstatfs", L, 1, Tstatfs { fid: 1 }, "0b000000 08 0100 01000000"),
        v("rstatfs", L, 1,
          Rstatfs {
              ty: 0x0102_1994, bsize: 4096, blocks: 1000, bfree: 500, bavail: 400, files: 100,
              ffree: 50, fsid: 0x1234, namelen: 255,
          },
          "43000000 09 0100 94190201 00100000 e803000000000000 f401000000000000 \
           9001000000000000 6400000000000000 3200000000000000 3412000000000000 ff000000"),
        v("tlopen", L, 1, Tlopen { fid: 2, flags: P9_DOTL_RDWR | P9_DOTL_TRUNC },
          "0f000000 0c 0100 02000000 02020000"),
        v("rlopen", L, 1, Rlopen { qid: qid(QTFILE, 1, 0x2c1fac), iounit: 0 },
          "18000000 0d 0100 00 01000000 ac1f2c0000000000 00000000"),
        v("tlcreate", L, 1, Tlcreate { fid: 2, name: s("foo"), flags: 0x8241, mode: 0o100644, gid: 500 },
          "1c000000 0e 0100 02000000 0300 666f6f 41820000 a4810000 f4010000"),
        v("rlcreate", L, 1, Rlcreate { qid: qid(QTFILE, 0, 0x2c1bd1), iounit: 4096 },
          "18000000 0f 0100 00 00000000 d11b2c0000000000 00100000"),
        v("tsymlink", L, 1, Tsymlink { fid: 1, name: s("ln"), symtgt: s("/tmp"), gid: 500 },
          "19000000 10 0100 01000000 0200 6c6e 0400 2f746d70 f4010000"),
        v("rsymlink", L, 1, Rsymlink { qid: qid(QTSYMLINK, 0, 0x2c1de3) },
          "14000000 11 0100 02 00000000 e31d2c0000000000"),
        v("tmknod", L, 1, Tmknod { dfid: 1, name: s("dev"), mode: 0o20644, major: 1, minor: 3, gid: 0 },
          "20000000 12 0100 01000000 0300 646576 a4210000 01000000 03000000 00000000"),
        v("rmknod", L, 1, Rmknod { qid: qid(QTFILE, 0, 5) }, "14000000 13 0100 00 00000000 0500000000000000"),
        v("trename", L, 1, Trename { fid: 3, dfid: 1, name: s("b") },
          "12000000 14 0100 03000000 01000000 0100 62"),
        v("rrename", L, 1, Rrename {}, "07000000 15 0100"),
        v("treadlink", L, 1, Treadlink { fid: 4 }, "0b000000 16 0100 04000000"),
        v("rreadlink", L, 1, Rreadlink { target: s("/tmp/9/newdir") },
          "16000000 17 0100 0d00 2f746d702f392f6e6577646972"),
        v("tgetattr", L, 1, Tgetattr { fid: 1, request_mask: GETATTR_ALL },
          "13000000 18 0100 01000000 ff3f000000000000"),
        v("rgetattr", L, 1,
          Rgetattr {
              valid: GETATTR_BASIC, qid: qid(QTDIR, 0, 0x2c1fac), mode: 0o40755, uid: 500, gid: 500,
              nlink: 56, rdev: 0, size: 4096, blksize: 4096, blocks: 8,
              atime_sec: 1, atime_nsec: 2, mtime_sec: 3, mtime_nsec: 4, ctime_sec: 5, ctime_nsec: 6,
              btime_sec: 7, btime_nsec: 8, r#gen: 9, data_version: 10,
          },
          "a0000000 19 0100 ff07000000000000 80 00000000 ac1f2c0000000000 ed410000 f4010000 f4010000 \
           3800000000000000 0000000000000000 0010000000000000 0010000000000000 0800000000000000 \
           0100000000000000 0200000000000000 0300000000000000 0400000000000000 0500000000000000 \
           0600000000000000 0700000000000000 0800000000000000 0900000000000000 0a00000000000000"),
        v("tsetattr", L, 1,
          Tsetattr {
              fid: 2, valid: 0x1ff, mode: 0o644, uid: 1, gid: 2, size: 3,
              atime_sec: 4, atime_nsec: 5, mtime_sec: 6, mtime_nsec: 7,
          },
          "43000000 1a 0100 02000000 ff010000 a4010000 01000000 02000000 0300000000000000 \
           0400000000000000 0500000000000000 0600000000000000 0700000000000000"),
        v("rsetattr", L, 1, Rsetattr {}, "07000000 1b 0100"),
        v("txattrwalk", L, 1, Txattrwalk { fid: 1, newfid: 2, name: s("user.a") },
          "17000000 1e 0100 01000000 02000000 0600 757365722e61"),
        v("rxattrwalk", L, 1, Rxattrwalk { size: 5 }, "0f000000 1f 0100 0500000000000000"),
        v("txattrcreate", L, 1, Txattrcreate { fid: 2, name: s("user.a"), attr_size: 5, flags: XATTR_CREATE },
          "1f000000 20 0100 02000000 0600 757365722e61 0500000000000000 01000000"),
        v("rxattrcreate", L, 1, Rxattrcreate {}, "07000000 21 0100"),
        v("treaddir", L, 1, Treaddir { fid: 2, offset: 0, count: 65488 },
          "17000000 28 0100 02000000 0000000000000000 d0ff0000"),
        // One entry: qid[13] offset[8] type[1] name[s] = 25 bytes.
        v("rreaddir", L, 1,
          Rreaddir { data: h("80 00000000 ac1f2c0000000000 0100000000000000 04 0100 2e") },
          "24000000 29 0100 19000000 80 00000000 ac1f2c0000000000 0100000000000000 04 0100 2e"),
        v("rreaddir-end", L, 1, Rreaddir { data: Bytes::new() }, "0b000000 29 0100 00000000"),
        v("tfsync", L, 1, Tfsync { fid: 2, datasync: 1 }, "0f000000 32 0100 02000000 01000000"),
        v("rfsync", L, 1, Rfsync {}, "07000000 33 0100"),
        v("tlock", L, 1,
          Tlock {
              fid: 2, ty: LOCK_TYPE_WRLCK, flags: LOCK_FLAG_BLOCK, start: 0, length: 0, proc_id: 1234,
              client_id: s("host"),
          },
          "2a000000 34 0100 02000000 01 01000000 0000000000000000 0000000000000000 d2040000 0400 686f7374"),
        v("rlock", L, 1, Rlock { status: LOCK_STATUS_BLOCKED }, "08000000 35 0100 01"),
        v("tgetlock", L, 1,
          Tgetlock { fid: 2, ty: LOCK_TYPE_RDLCK, start: 10, length: 20, proc_id: 7, client_id: s("h") },
          "23000000 36 0100 02000000 00 0a00000000000000 1400000000000000 07000000 0100 68"),
        v("rgetlock", L, 1,
          Rgetlock { ty: LOCK_TYPE_UNLCK, start: 10, length: 20, proc_id: 7, client_id: s("h") },
          "1f000000 37 0100 02 0a00000000000000 1400000000000000 07000000 0100 68"),
        v("tlink", L, 1, Tlink { dfid: 1, fid: 3, name: s("hard") },
          "15000000 46 0100 01000000 03000000 0400 68617264"),
        v("rlink", L, 1, Rlink {}, "07000000 47 0100"),
        v("tmkdir", L, 1, Tmkdir { dfid: 1, name: s("newdir"), mode: 0o40755, gid: 500 },
          "1b000000 48 0100 01000000 0600 6e6577646972 ed410000 f4010000"),
        v("rmkdir", L, 1, Rmkdir { qid: qid(QTDIR, 0, 0x2c1bd1) },
          "14000000 49 0100 80 00000000 d11b2c0000000000"),
        v("trenameat", L, 1, Trenameat { olddirfid: 1, oldname: s("a"), newdirfid: 2, newname: s("bc") },
          "16000000 4a 0100 01000000 0100 61 02000000 0200 6263"),
        v("rrenameat", L, 1, Rrenameat {}, "07000000 4b 0100"),
        v("tunlinkat", L, 1, Tunlinkat { dirfd: 1, name: s("d"), flags: AT_REMOVEDIR },
          "12000000 4c 0100 01000000 0100 64 00020000"),
        v("runlinkat", L, 1, Runlinkat {}, "07000000 4d 0100"),
    ]
}

#[test]
fn every_vector_encodes_to_its_bytes() {
    for vec in vectors() {
        let want = h(vec.hex);
        for &d in vec.dialects {
            let mut buf = BytesMut::new();
            vec.msg.encode(vec.tag, d, &mut buf);
            assert_eq!(&buf[..], &want[..], "{} encoded in {d}", vec.name);
            assert_eq!(
                vec.msg.encoded_len(d),
                want.len(),
                "{} encoded_len in {d}",
                vec.name
            );
        }
    }
}

#[test]
fn every_vector_decodes_to_its_message() {
    for vec in vectors() {
        let bytes = h(vec.hex);
        for &d in vec.dialects {
            let got =
                decode(bytes.clone(), d).unwrap_or_else(|e| panic!("{} in {d}: {e}", vec.name));
            assert_eq!(
                got,
                (vec.tag, vec.msg.clone()),
                "{} decoded in {d}",
                vec.name
            );
        }
    }
}

#[test]
fn vectors_are_rejected_in_other_dialects() {
    for vec in vectors() {
        let bytes = h(vec.hex);
        for d in Dialect::ALL
            .into_iter()
            .filter(|d| !vec.dialects.contains(d))
        {
            let got = decode(bytes.clone(), d);
            if !d.has_type(vec.msg.ty()) && vec.msg.ty() != RERROR {
                assert_eq!(
                    got,
                    Err(DecodeError::NotInDialect {
                        ty: vec.msg.ty(),
                        dialect: d
                    }),
                    "{}",
                    vec.name
                );
            } else {
                // The other form of a message with extension fields.
                assert!(got.is_err(), "{} must not decode in {d}: {got:?}", vec.name);
            }
        }
    }
}

#[test]
fn vectors_cover_every_message_of_every_dialect() {
    let all = vectors();
    for d in Dialect::ALL {
        for ty in (0..=255u8).filter(|&t| d.has_type(t) || t == RERROR) {
            assert!(
                all.iter()
                    .any(|v| v.msg.ty() == ty && v.dialects.contains(&d)),
                "no vector for type {ty} in {d}"
            );
        }
    }
    let mut names: Vec<_> = all.iter().map(|v| v.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        names.len(),
        all.len(),
        "vector names must be unique (they name corpus files)"
    );
}

#[test]
fn readdir_entry_vector_matches_dirent_encoding() {
    let entry = Dirent {
        qid: qid(QTDIR, 0, 0x2c1fac),
        offset: 1,
        ty: 4,
        name: s("."),
    };
    let mut buf = BytesMut::new();
    entry.encode(&mut buf);
    assert_eq!(
        &buf[..],
        &h("80 00000000 ac1f2c0000000000 0100000000000000 04 0100 2e")[..]
    );
    assert_eq!(entry.encoded_len(), 25);
}

#[test]
fn data_reply_header_vector() {
    let mut buf = BytesMut::new();
    encode_data_reply_header(&mut buf, RREAD, 8, 5);
    assert_eq!(&buf[..], &h("10000000 75 0800 05000000")[..]);
    assert_eq!(DATA_REPLY_HEADER_LEN, 11);
}

/// Every vector is a file of the fuzz seed corpus, with the same bytes.
#[test]
fn vectors_are_in_the_fuzz_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    for vec in vectors() {
        let path = dir.join(vec.name);
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk,
            &h(vec.hex)[..],
            "{} differs from its vector",
            path.display()
        );
    }
}
