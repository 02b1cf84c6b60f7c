//! The [`WireFormat`] trait and its implementations for the field types 9P is built from.
//!
//! All integers are little-endian. A string is `len[2] bytes[len]` (UTF-8, no NUL). Data
//! is `count[4] bytes[count]` and always ends its message. A walk list is
//! `n[2] n*(element)` with `n <= MAXWELEM`. Decoding reads from a `Bytes` cursor so that
//! data fields are zero-copy slices of the received frame, and checks every length against
//! the bytes that remain before allocating anything.

use crate::consts::MAXWELEM;
use crate::dialect::Dialect;
use crate::error::DecodeError;
use crate::qid::Qid;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A value with a 9P wire encoding.
///
/// The dialect is passed through because a few structures (the stat) differ between
/// 9P2000 and its extensions.
pub(crate) trait WireFormat: Sized {
    /// The number of bytes [`encode`](WireFormat::encode) appends.
    fn encoded_len(&self, d: Dialect) -> usize;
    /// Append the encoding to `buf`.
    fn encode(&self, buf: &mut BytesMut, d: Dialect);
    /// Read one value from the front of `buf`, advancing it.
    fn decode(buf: &mut Bytes, d: Dialect) -> Result<Self, DecodeError>;
}

/// Fail with [`DecodeError::Truncated`] unless `n` more bytes are available.
pub(crate) fn need(buf: &Bytes, n: usize) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        Err(DecodeError::Truncated)
    } else {
        Ok(())
    }
}

macro_rules! integer {
    ($($t:ty: $get:ident, $put:ident;)*) => {$(
        impl WireFormat for $t {
            fn encoded_len(&self, _: Dialect) -> usize {
                size_of::<$t>()
            }
            fn encode(&self, buf: &mut BytesMut, _: Dialect) {
                buf.$put(*self);
            }
            fn decode(buf: &mut Bytes, _: Dialect) -> Result<Self, DecodeError> {
                need(buf, size_of::<$t>())?;
                Ok(buf.$get())
            }
        }
    )*};
}

integer! {
    u8: get_u8, put_u8;
    u16: get_u16_le, put_u16_le;
    u32: get_u32_le, put_u32_le;
    u64: get_u64_le, put_u64_le;
}

/// The part of `s` that goes on the wire: a string longer than a `len[2]` field can
/// describe is cut to the longest prefix of at most 65535 bytes ending on a char boundary.
/// (No file name, user name or link target comes near that; this only keeps encoding
/// infallible.)
pub(crate) fn wire_str(s: &str) -> &str {
    if s.len() <= usize::from(u16::MAX) {
        return s;
    }
    let mut end = usize::from(u16::MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl WireFormat for String {
    fn encoded_len(&self, _: Dialect) -> usize {
        2 + wire_str(self).len()
    }
    fn encode(&self, buf: &mut BytesMut, _: Dialect) {
        let s = wire_str(self);
        // wire_str guarantees the length fits.
        buf.put_u16_le(s.len() as u16);
        buf.put_slice(s.as_bytes());
    }
    fn decode(buf: &mut Bytes, _: Dialect) -> Result<Self, DecodeError> {
        need(buf, 2)?;
        let len = usize::from(buf.get_u16_le());
        need(buf, len)?;
        let raw = &buf.chunk()[..len];
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if raw.contains(&0) {
            return Err(DecodeError::NulInString);
        }
        let s = s.to_owned();
        buf.advance(len);
        Ok(s)
    }
}

impl WireFormat for Qid {
    fn encoded_len(&self, _: Dialect) -> usize {
        Qid::LEN
    }
    fn encode(&self, buf: &mut BytesMut, _: Dialect) {
        buf.put_u8(self.ty);
        buf.put_u32_le(self.version);
        buf.put_u64_le(self.path);
    }
    fn decode(buf: &mut Bytes, _: Dialect) -> Result<Self, DecodeError> {
        need(buf, Qid::LEN)?;
        Ok(Qid {
            ty: buf.get_u8(),
            version: buf.get_u32_le(),
            path: buf.get_u64_le(),
        })
    }
}

/// `count[4] data[count]`: the payload of Twrite, Rread and Rreaddir. It is always the last
/// field of its message, so the count must equal exactly the bytes that remain
/// ([`DecodeError::BadCount`] otherwise). Decoding slices the frame without copying.
impl WireFormat for Bytes {
    fn encoded_len(&self, _: Dialect) -> usize {
        4 + self.len()
    }
    fn encode(&self, buf: &mut BytesMut, _: Dialect) {
        let count = u32::try_from(self.len()).expect("9P data payload larger than 4 GiB");
        buf.put_u32_le(count);
        buf.put_slice(self);
    }
    fn decode(buf: &mut Bytes, _: Dialect) -> Result<Self, DecodeError> {
        need(buf, 4)?;
        let declared = buf.get_u32_le();
        let actual = buf.remaining();
        if usize::try_from(declared).ok() != Some(actual) {
            return Err(DecodeError::BadCount { declared, actual });
        }
        Ok(buf.split_to(actual))
    }
}

/// `n[2] n*(T)`: the element list of Twalk (names) and Rwalk (qids), bounded by
/// [`MAXWELEM`] before anything is allocated. Encoding writes whatever it is given (a list
/// longer than 65535 is cut); the decoder of the peer enforces the bound.
impl<T: WireFormat> WireFormat for Vec<T> {
    fn encoded_len(&self, d: Dialect) -> usize {
        2 + self
            .iter()
            .take(usize::from(u16::MAX))
            .map(|e| e.encoded_len(d))
            .sum::<usize>()
    }
    fn encode(&self, buf: &mut BytesMut, d: Dialect) {
        let n = self.len().min(usize::from(u16::MAX));
        buf.put_u16_le(n as u16);
        for e in &self[..n] {
            e.encode(buf, d);
        }
    }
    fn decode(buf: &mut Bytes, d: Dialect) -> Result<Self, DecodeError> {
        need(buf, 2)?;
        let n = buf.get_u16_le();
        if usize::from(n) > MAXWELEM {
            return Err(DecodeError::TooManyWalkElements(n));
        }
        let mut v = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            v.push(T::decode(buf, d)?);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Dialect = Dialect::P9P2000L;

    fn dec<T: WireFormat>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
        let mut b = Bytes::copy_from_slice(bytes);
        let v = T::decode(&mut b, D)?;
        Ok((v, b.len()))
    }

    #[test]
    fn integers_are_little_endian() {
        let mut b = BytesMut::new();
        0x0102u16.encode(&mut b, D);
        0x0304_0506u32.encode(&mut b, D);
        0x0708_090a_0b0c_0d0eu64.encode(&mut b, D);
        assert_eq!(
            &b[..],
            &[2, 1, 6, 5, 4, 3, 0x0e, 0x0d, 0x0c, 0x0b, 0x0a, 9, 8, 7]
        );
        assert_eq!(dec::<u32>(&[1, 0, 0]), Err(DecodeError::Truncated));
        assert_eq!(dec::<u64>(&[1, 0, 0, 0, 0, 0, 0, 0, 9]), Ok((1, 1)));
    }

    #[test]
    fn strings() {
        let mut b = BytesMut::new();
        "héllo".to_owned().encode(&mut b, D);
        assert_eq!(&b[..], b"\x06\x00h\xc3\xa9llo");
        assert_eq!(
            dec::<String>(b"\x06\x00h\xc3\xa9llo!"),
            Ok(("héllo".to_owned(), 1))
        );
        assert_eq!(
            dec::<String>(b"\x06\x00h\xc3\xa9ll"),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            dec::<String>(b"\x02\x00\xc3\x28"),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            dec::<String>(b"\x03\x00a\x00b"),
            Err(DecodeError::NulInString)
        );
        assert_eq!(dec::<String>(b"\x00"), Err(DecodeError::Truncated));
    }

    #[test]
    fn overlong_strings_are_cut_on_a_char_boundary() {
        let s = "é".repeat(40_000); // 80000 bytes
        let cut = wire_str(&s);
        assert_eq!(cut.len(), 65534);
        assert_eq!(s.encoded_len(D), 2 + 65534);
        let mut b = BytesMut::new();
        s.encode(&mut b, D);
        assert_eq!(b.len(), 2 + 65534);
        assert_eq!(&b[..2], &[0xfe, 0xff]);
    }

    #[test]
    fn data_count_must_match() {
        let (d, rest) = dec::<Bytes>(&[3, 0, 0, 0, 1, 2, 3]).unwrap();
        assert_eq!((&d[..], rest), (&[1u8, 2, 3][..], 0));
        assert_eq!(
            dec::<Bytes>(&[4, 0, 0, 0, 1, 2, 3]),
            Err(DecodeError::BadCount {
                declared: 4,
                actual: 3
            })
        );
        assert_eq!(
            dec::<Bytes>(&[2, 0, 0, 0, 1, 2, 3]),
            Err(DecodeError::BadCount {
                declared: 2,
                actual: 3
            })
        );
        assert_eq!(dec::<Bytes>(&[2, 0, 0]), Err(DecodeError::Truncated));
    }

    #[test]
    fn walk_lists_are_bounded_before_allocation() {
        assert_eq!(
            dec::<Vec<Qid>>(&[17, 0]),
            Err(DecodeError::TooManyWalkElements(17))
        );
        assert_eq!(
            dec::<Vec<String>>(&[0xff, 0xff]),
            Err(DecodeError::TooManyWalkElements(0xffff))
        );
        assert_eq!(
            dec::<Vec<String>>(&[2, 0, 1, 0, b'a']),
            Err(DecodeError::Truncated)
        );
        assert_eq!(dec::<Vec<String>>(&[0, 0]), Ok((vec![], 0)));
    }
}
