//! Malformed frames: each is rejected with the specific [`DecodeError`] that describes it.

use bytes::Bytes;
use envoy_protocol::consts::*;
use envoy_protocol::*;

const ALL: [Dialect; 3] = Dialect::ALL;
const L: Dialect = Dialect::P9P2000L;
const U: Dialect = Dialect::P9P2000U;
const B: Dialect = Dialect::P9P2000;

fn h(hex: &str) -> Vec<u8> {
    let d: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    d.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// Wrap a body in a header whose size is right.
fn frame(ty: u8, tag: u16, body: &[u8]) -> Bytes {
    let mut f = ((7 + body.len()) as u32).to_le_bytes().to_vec();
    f.push(ty);
    f.extend_from_slice(&tag.to_le_bytes());
    f.extend_from_slice(body);
    f.into()
}

/// `s` as a 9P string.
fn st(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u16).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

fn err(f: Bytes, d: Dialect) -> DecodeError {
    decode(f, d).expect_err("must not decode")
}

// Well-formed frames used as a base for cutting.
const HEX_TWALK: &str = "1b000000 6e 0500 01000000 02000000 0200 0300 757372 0300 6c6962";
const HEX_TATTACH_L: &str =
    "1f000000 68 0200 01000000 ffffffff 0400 726f6f74 0400 2f737276 00000000";
const HEX_TLOCK: &str = "2a000000 34 0100 02000000 01 01000000 0000000000000000 0000000000000000 \
                         d2040000 0400 686f7374";
const HEX_RSTAT_B: &str = "3d000000 7d 0d00 3400 3200 0000 00000000 80 00000000 0100000000000000 ed010080 \
                       00ca9a3b 01ca9a3b 0000000000000000 0100 2f 0100 75 0100 67 0000";
const HEX_TWRITE: &str = "1a000000 76 0900 02000000 0500000000000000 03000000 616263";

#[test]
fn frames_cut_at_every_length() {
    for (hex, d) in [
        (HEX_TWALK, L),
        (HEX_TATTACH_L, L),
        (HEX_TLOCK, L),
        (HEX_RSTAT_B, B),
        (HEX_TWRITE, U),
    ] {
        let full = h(hex);
        assert!(decode(full.clone().into(), d).is_ok(), "{hex}");
        for n in 0..full.len() {
            let cut = Bytes::copy_from_slice(&full[..n]);
            let want = if n < 7 {
                DecodeError::FrameTooShort
            } else {
                DecodeError::SizeMismatch {
                    declared: full.len() as u32,
                    actual: n,
                }
            };
            assert_eq!(err(cut, d), want, "{hex} cut to {n}");
        }
    }
}

#[test]
fn bodies_cut_at_every_length_with_a_matching_size() {
    for (hex, d) in [
        (HEX_TWALK, L),
        (HEX_TATTACH_L, L),
        (HEX_TLOCK, L),
        (HEX_RSTAT_B, B),
    ] {
        let full = h(hex);
        for n in 7..full.len() {
            let f = frame(full[4], 1, &full[7..n]);
            assert_eq!(
                err(f, d),
                DecodeError::Truncated,
                "{hex} body cut to {}",
                n - 7
            );
        }
    }
    // A data message: cut inside the count it is Truncated, after it the count is wrong.
    let full = h(HEX_TWRITE);
    for n in 7..full.len() {
        let f = frame(full[4], 1, &full[7..n]);
        let want = if n < 7 + 16 {
            DecodeError::Truncated
        } else {
            DecodeError::BadCount {
                declared: 3,
                actual: n - 7 - 16,
            }
        };
        assert_eq!(err(f, U), want, "Twrite body cut to {}", n - 7);
    }
}

#[test]
fn size_field_must_match_the_frame() {
    let mut f = h("0b000000 78 0100 02000000");
    f[0] = 0x0c;
    assert_eq!(
        err(f.clone().into(), L),
        DecodeError::SizeMismatch {
            declared: 12,
            actual: 11
        }
    );
    f[0] = 0x0a;
    assert_eq!(
        err(f.clone().into(), L),
        DecodeError::SizeMismatch {
            declared: 10,
            actual: 11
        }
    );
    f[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        err(f.into(), L),
        DecodeError::SizeMismatch {
            declared: u32::MAX,
            actual: 11
        }
    );
    assert_eq!(err(Bytes::new(), L), DecodeError::FrameTooShort);
    // A header claiming to be shorter than itself.
    assert_eq!(
        err(h("00000000 78 0100").into(), L),
        DecodeError::SizeMismatch {
            declared: 0,
            actual: 7
        }
    );
}

#[test]
fn trailing_bytes() {
    assert_eq!(
        err(frame(TCLUNK, 1, &h("02000000 00")), L),
        DecodeError::TrailingBytes(1)
    );
    assert_eq!(
        err(frame(RCLUNK, 1, &h("0000")), L),
        DecodeError::TrailingBytes(2)
    );
    // A 9P2000.u Tattach read as 9P2000: n_uname is left over.
    assert_eq!(
        err(h(HEX_TATTACH_L).into(), B),
        DecodeError::TrailingBytes(4)
    );
}

#[test]
fn oversized_counts() {
    // Data counts larger and smaller than the data.
    let rread = frame(RREAD, 1, &h("ffffffff 68656c6c6f"));
    assert_eq!(
        err(rread, L),
        DecodeError::BadCount {
            declared: u32::MAX,
            actual: 5
        }
    );
    let rread = frame(RREAD, 1, &h("04000000 68656c6c6f"));
    assert_eq!(
        err(rread, L),
        DecodeError::BadCount {
            declared: 4,
            actual: 5
        }
    );
    let twrite = frame(TWRITE, 1, &h("01000000 0000000000000000 00001000 616263"));
    assert_eq!(
        err(twrite, B),
        DecodeError::BadCount {
            declared: 0x0010_0000,
            actual: 3
        }
    );
    let rreaddir = frame(RREADDIR, 1, &h("19000000 80"));
    assert_eq!(
        err(rreaddir, L),
        DecodeError::BadCount {
            declared: 25,
            actual: 1
        }
    );
    // A string longer than the frame.
    let tversion = frame(TVERSION, NOTAG, &h("00200000 ffff 3950"));
    assert_eq!(err(tversion, L), DecodeError::Truncated);
    // Walk counts are bounded before anything is read or allocated.
    let twalk = frame(TWALK, 1, &h("01000000 02000000 ffff"));
    assert_eq!(err(twalk, L), DecodeError::TooManyWalkElements(0xffff));
    let rwalk = frame(RWALK, 1, &h("ffff"));
    assert_eq!(err(rwalk, L), DecodeError::TooManyWalkElements(0xffff));
    // Fewer elements than announced.
    let rwalk = frame(RWALK, 1, &h("0200 80 00000000 0100000000000000"));
    assert_eq!(err(rwalk, L), DecodeError::Truncated);
}

#[test]
fn stat_sizes_must_agree() {
    let good = h(HEX_RSTAT_B);
    assert!(decode(good.clone().into(), B).is_ok());
    // n[2] one larger than the stat (and the frame padded to match).
    let mut f = good[7..].to_vec();
    f[0] += 1;
    f.push(0);
    assert_eq!(
        err(frame(RSTAT, 1, &f), B),
        DecodeError::BadStat("outer count larger than the stat")
    );
    // n[2] one smaller than the stat.
    let mut f = good[7..].to_vec();
    f[0] -= 1;
    assert_eq!(
        err(frame(RSTAT, 1, &f), B),
        DecodeError::BadStat("outer count smaller than the stat")
    );
    // The stat's size[2] one larger than its fields (padded), and n[2] to match.
    let mut f = good[7..].to_vec();
    f[0] += 1;
    f[2] += 1;
    f.push(0);
    assert_eq!(
        err(frame(RSTAT, 1, &f), B),
        DecodeError::BadStat("size field larger than the fields")
    );
    // The stat's size[2] one smaller than its fields.
    let mut f = good[7..].to_vec();
    f[2] -= 1;
    assert_eq!(
        err(frame(RSTAT, 1, &f), B),
        DecodeError::BadStat("size field smaller than the fields")
    );
    // A 9P2000 stat read as 9P2000.u lacks its tail.
    assert_eq!(
        err(good.into(), U),
        DecodeError::BadStat("size field smaller than the fields")
    );
    // n[2] beyond the frame.
    assert_eq!(
        err(frame(TWSTAT, 1, &h("04000000 ffff 0000")), U),
        DecodeError::Truncated
    );
}

#[test]
fn strings_must_be_utf8_without_nul() {
    let bad_utf8: [&[u8]; 4] = [b"\xff", b"a\xc3", b"\xc3\x28", b"\xed\xa0\x80"];
    for bad in bad_utf8 {
        let mut body = h("01000000 02000000 0200");
        body.extend(st(b"ok"));
        body.extend(st(bad));
        assert_eq!(
            err(frame(TWALK, 1, &body), L),
            DecodeError::InvalidUtf8,
            "{bad:?}"
        );
        let mut body = st(bad);
        body.extend(h("05000000"));
        assert_eq!(
            err(frame(RERROR, 1, &body), U),
            DecodeError::InvalidUtf8,
            "{bad:?}"
        );
    }
    for nul in [&b"\0"[..], b"a\0", b"\0b", b"a\0b"] {
        let mut body = h("01000000 ffffffff");
        body.extend(st(nul));
        body.extend(st(b"/"));
        body.extend(h("ffffffff"));
        assert_eq!(
            err(frame(TATTACH, 1, &body), L),
            DecodeError::NulInString,
            "{nul:?}"
        );
        let mut body = h("00200000");
        body.extend(st(nul));
        assert_eq!(
            err(frame(TVERSION, NOTAG, &body), B),
            DecodeError::NulInString,
            "{nul:?}"
        );
    }
    // Non-ASCII UTF-8 is fine.
    let mut body = h("01000000 02000000 0100");
    body.extend(st("héllo wörld ✓".as_bytes()));
    assert!(decode(frame(TWALK, 1, &body), L).is_ok());
}

#[test]
fn walks_of_17_elements_are_rejected() {
    for (n, ok) in [(16u16, true), (17, false)] {
        let mut body = h("01000000 02000000");
        body.extend(n.to_le_bytes());
        for _ in 0..n {
            body.extend(st(b"a"));
        }
        let got = decode(frame(TWALK, 1, &body), L);
        assert_eq!(got.is_ok(), ok, "{n} names");
        if !ok {
            assert_eq!(got.unwrap_err(), DecodeError::TooManyWalkElements(17));
        }
        let mut body = n.to_le_bytes().to_vec();
        for _ in 0..n {
            body.extend(h("80 00000000 0100000000000000"));
        }
        let got = decode(frame(RWALK, 1, &body), B);
        assert_eq!(got.is_ok(), ok, "{n} qids");
        if !ok {
            assert_eq!(got.unwrap_err(), DecodeError::TooManyWalkElements(17));
        }
    }
}

#[test]
fn unknown_types() {
    let known: Vec<u8> = (0..=255u8)
        .filter(|&t| ALL.iter().any(|d| d.has_type(t)) || t == RERROR)
        .collect();
    assert_eq!(known.len(), 39 + 27);
    for ty in (0..=255u8).filter(|t| !known.contains(t)) {
        for d in ALL {
            assert_eq!(
                err(frame(ty, 1, &[]), d),
                DecodeError::UnknownType(ty),
                "type {ty}"
            );
            assert_eq!(
                err(frame(ty, 1, &[0; 16]), d),
                DecodeError::UnknownType(ty),
                "type {ty}"
            );
        }
    }
    assert!(!known.contains(&TERROR) && !known.contains(&TLERROR));
}

#[test]
fn messages_outside_their_dialect() {
    let tlopen = frame(TLOPEN, 1, &h("02000000 00000000"));
    for d in [B, U] {
        assert_eq!(
            err(tlopen.clone(), d),
            DecodeError::NotInDialect {
                ty: TLOPEN,
                dialect: d
            }
        );
    }
    assert!(decode(tlopen, L).is_ok());
    let topen = frame(TOPEN, 1, &h("02000000 00"));
    assert_eq!(
        err(topen, L),
        DecodeError::NotInDialect {
            ty: TOPEN,
            dialect: L
        }
    );
    let rlerror = frame(RLERROR, 1, &h("02000000"));
    assert_eq!(
        err(rlerror, U),
        DecodeError::NotInDialect {
            ty: RLERROR,
            dialect: U
        }
    );
    let tstat = frame(TSTAT, 1, &h("01000000"));
    assert_eq!(
        err(tstat, L),
        DecodeError::NotInDialect {
            ty: TSTAT,
            dialect: L
        }
    );
    // Rerror is readable in every dialect (with errno wherever the dialect is extended).
    assert!(decode(frame(RERROR, 1, &h("0100 78")), B).is_ok());
    assert!(decode(frame(RERROR, 1, &h("0100 78 05000000")), L).is_ok());
}

#[test]
fn errnos_for_replies() {
    let cases = [
        (DecodeError::FrameTooShort, 71),
        (
            DecodeError::SizeMismatch {
                declared: 1,
                actual: 2,
            },
            71,
        ),
        (DecodeError::Truncated, 74),
        (DecodeError::TrailingBytes(1), 74),
        (DecodeError::BadStat("x"), 74),
        (
            DecodeError::BadCount {
                declared: 1,
                actual: 2,
            },
            74,
        ),
        (DecodeError::UnknownType(3), 95),
        (
            DecodeError::NotInDialect {
                ty: TOPEN,
                dialect: L,
            },
            95,
        ),
        (DecodeError::InvalidUtf8, 84),
        (DecodeError::NulInString, 22),
        (DecodeError::TooManyWalkElements(17), 22),
    ];
    for (e, errno) in cases {
        assert_eq!(e.errno(), errno, "{e}");
        let text = e.to_string();
        assert!(text.chars().next().unwrap().is_lowercase(), "{text}");
    }
    assert_eq!(
        DecodeError::NotInDialect {
            ty: TOPEN,
            dialect: L
        }
        .to_string(),
        "message type 112 is not part of 9P2000.L"
    );
}
