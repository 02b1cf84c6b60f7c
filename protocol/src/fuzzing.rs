//! The entry point for fuzzers (cargo-fuzz target `decode` in `fuzz/`).

use crate::dialect::Dialect;
use crate::dirent::decode_dirents;
use crate::frame::{decode as decode_frame, peek_header};
use crate::stat::decode_stats;
use bytes::{Bytes, BytesMut};

/// Feed arbitrary bytes to every decoder.
///
/// For each dialect the bytes are decoded as a message; whatever decodes must re-encode to
/// exactly the input (decoding is strict, so this is a true round trip). The same holds for
/// the bytes read as directory entries or as a 9P2000/.u directory read. Nothing here may
/// panic except those assertions.
pub fn decode(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    let _ = peek_header(data);
    for d in Dialect::ALL {
        if let Ok((tag, msg)) = decode_frame(bytes.clone(), d) {
            let mut out = BytesMut::with_capacity(data.len());
            msg.encode(tag, d, &mut out);
            assert_eq!(&out[..], data, "{} did not round-trip in {d}", msg.name());
            assert_eq!(
                msg.encoded_len(d),
                data.len(),
                "{} encoded_len in {d}",
                msg.name()
            );
        }
        if let Ok(stats) = decode_stats(bytes.clone(), d) {
            let mut out = BytesMut::new();
            stats.iter().for_each(|s| s.encode(&mut out, d));
            assert_eq!(&out[..], data, "stats did not round-trip in {d}");
        }
    }
    if let Ok(entries) = decode_dirents(bytes) {
        let mut out = BytesMut::new();
        entries.iter().for_each(|e| e.encode(&mut out));
        assert_eq!(&out[..], data, "dirents did not round-trip");
    }
}
