//! Property tests: arbitrary messages of every dialect survive encode → decode unchanged.
//!
//! The strategies come from the message table itself (`messages::arbitrary_messages`), so
//! a message added to the table is covered without touching this file.

use crate::consts::{HEADER_LEN, MAXWELEM};
use crate::dialect::Dialect;
use crate::dirent::{Dirent, decode_dirents};
use crate::messages::{Fcall, arbitrary_messages};
use crate::qid::Qid;
use crate::stat::{Stat, decode_stats};
use crate::{decode, fuzzing, peek_header};
use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;

/// A field type with a strategy; `d` decides whether dialect-dependent parts are arbitrary.
pub(crate) trait Arb: Sized {
    fn strategy(d: Dialect) -> BoxedStrategy<Self>;
}

/// The strategy for `T` in dialect `d` (used by the message table's generated code).
pub(crate) fn arb<T: Arb>(d: Dialect) -> BoxedStrategy<T> {
    T::strategy(d)
}

macro_rules! arb_int {
    ($($t:ty)*) => {$(
        impl Arb for $t {
            fn strategy(_: Dialect) -> BoxedStrategy<Self> {
                any::<$t>().boxed()
            }
        }
    )*};
}
arb_int!(u8 u16 u32 u64);

impl Arb for String {
    fn strategy(_: Dialect) -> BoxedStrategy<Self> {
        // Any characters but NUL, multi-byte ones included.
        "[^\u{0}]{0,12}".boxed()
    }
}

impl Arb for Bytes {
    fn strategy(_: Dialect) -> BoxedStrategy<Self> {
        vec(any::<u8>(), 0..64).prop_map(Bytes::from).boxed()
    }
}

impl Arb for Qid {
    fn strategy(_: Dialect) -> BoxedStrategy<Self> {
        (any::<u8>(), any::<u32>(), any::<u64>())
            .prop_map(|(ty, version, path)| Qid { ty, version, path })
            .boxed()
    }
}

impl Arb for Vec<String> {
    fn strategy(d: Dialect) -> BoxedStrategy<Self> {
        vec(String::strategy(d), 0..=MAXWELEM).boxed()
    }
}

impl Arb for Vec<Qid> {
    fn strategy(d: Dialect) -> BoxedStrategy<Self> {
        vec(Qid::strategy(d), 0..=MAXWELEM).boxed()
    }
}

impl Arb for Stat {
    fn strategy(d: Dialect) -> BoxedStrategy<Self> {
        let s = || String::strategy(d);
        let fixed = (
            any::<u16>(),
            any::<u32>(),
            Qid::strategy(d),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
        );
        let names = (s(), s(), s(), s());
        let ext = (s(), any::<u32>(), any::<u32>(), any::<u32>());
        (fixed, names, ext)
            .prop_map(
                move |((ty, dev, qid, mode, atime, mtime, length), (name, uid, gid, muid), ext)| {
                    let mut stat = Stat {
                        ty,
                        dev,
                        qid,
                        mode,
                        atime,
                        mtime,
                        length,
                        name,
                        uid,
                        gid,
                        muid,
                        ..Stat::default()
                    };
                    if d.extended() {
                        (stat.extension, stat.n_uid, stat.n_gid, stat.n_muid) = ext;
                    }
                    stat
                },
            )
            .boxed()
    }
}

impl Arb for Dirent {
    fn strategy(d: Dialect) -> BoxedStrategy<Self> {
        (
            Qid::strategy(d),
            any::<u64>(),
            any::<u8>(),
            String::strategy(d),
        )
            .prop_map(|(qid, offset, ty, name)| Dirent {
                qid,
                offset,
                ty,
                name,
            })
            .boxed()
    }
}

/// Any message of dialect `d`.
fn message(d: Dialect) -> impl Strategy<Value = Fcall> {
    let arms: Vec<_> = arbitrary_messages(d)
        .into_iter()
        .filter(|(ty, _)| d.has_type(*ty))
        .map(|(_, s)| s)
        .collect();
    Union::new(arms)
}

fn dialect() -> impl Strategy<Value = Dialect> {
    prop_oneof![
        Just(Dialect::P9P2000),
        Just(Dialect::P9P2000U),
        Just(Dialect::P9P2000L)
    ]
}

/// A dialect and a message of it.
fn dialect_message() -> impl Strategy<Value = (Dialect, Fcall)> {
    dialect().prop_flat_map(|d| message(d).prop_map(move |m| (d, m)))
}

/// A dialect and a few stats of it.
fn dialect_stats() -> impl Strategy<Value = (Dialect, Vec<Stat>)> {
    dialect().prop_flat_map(|d| vec(Stat::strategy(d), 0..4).prop_map(move |s| (d, s)))
}

fn encode(m: &Fcall, tag: u16, d: Dialect) -> Bytes {
    let mut buf = BytesMut::new();
    m.encode(tag, d, &mut buf);
    buf.freeze()
}

#[test]
fn every_message_has_a_strategy_in_every_dialect_it_belongs_to() {
    for d in Dialect::ALL {
        let covered: Vec<u8> = arbitrary_messages(d)
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| d.has_type(*t))
            .collect();
        let members: Vec<u8> = (0..=255).filter(|t| d.has_type(*t)).collect();
        assert_eq!(covered.len(), members.len(), "{d}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn messages_round_trip((d, m) in dialect_message(), tag in any::<u16>()) {
        let bytes = encode(&m, tag, d);
        prop_assert_eq!(bytes.len(), m.encoded_len(d));
        let h = peek_header(&bytes).unwrap();
        prop_assert_eq!((h.size as usize, h.ty, h.tag), (bytes.len(), m.ty(), tag));
        let (got_tag, got) = decode(bytes.clone(), d).unwrap();
        prop_assert_eq!(got_tag, tag);
        prop_assert_eq!(&got, &m);
        prop_assert_eq!(encode(&got, tag, d), bytes);
    }

    #[test]
    fn messages_are_rejected_outside_their_dialect((d, m) in dialect_message(), other in dialect()) {
        let bytes = encode(&m, 1, d);
        if !other.has_type(m.ty()) && m.ty() != crate::consts::RERROR {
            prop_assert_eq!(
                decode(bytes, other).unwrap_err(),
                crate::DecodeError::NotInDialect { ty: m.ty(), dialect: other }
            );
        }
    }

    #[test]
    fn every_proper_prefix_is_rejected((d, m) in dialect_message(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&m, 1, d);
        let n = cut.index(bytes.len());
        let prefix = bytes.slice(..n);
        prop_assert!(decode(prefix.clone(), d).is_err());
        // With a size field patched to match, the body itself is short.
        if n >= HEADER_LEN {
            let mut patched = BytesMut::from(&prefix[..]);
            patched[..4].copy_from_slice(&(n as u32).to_le_bytes());
            prop_assert!(decode(patched.freeze(), d).is_err());
        }
    }

    #[test]
    fn stats_round_trip((sd, stats) in dialect_stats()) {
        let mut buf = BytesMut::new();
        stats.iter().for_each(|s| s.encode(&mut buf, sd));
        prop_assert_eq!(buf.len(), stats.iter().map(|s| s.encoded_len(sd)).sum::<usize>());
        prop_assert_eq!(decode_stats(buf.freeze(), sd).unwrap(), stats);
    }

    #[test]
    fn dirents_round_trip(entries in vec(Dirent::strategy(Dialect::P9P2000L), 0..8)) {
        let mut buf = BytesMut::new();
        entries.iter().for_each(|e| e.encode(&mut buf));
        prop_assert_eq!(buf.len(), entries.iter().map(Dirent::encoded_len).sum::<usize>());
        prop_assert_eq!(decode_dirents(buf.freeze()).unwrap(), entries);
    }

    #[test]
    fn fuzz_entry_point_survives_mutated_frames(
        (d, m) in dialect_message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = BytesMut::from(&encode(&m, 1, d)[..]);
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        fuzzing::decode(&bytes);
    }

    #[test]
    fn fuzz_entry_point_survives_random_bytes(data in vec(any::<u8>(), 0..256)) {
        fuzzing::decode(&data);
    }
}
