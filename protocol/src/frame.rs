//! Whole messages: `size[4] type[1] tag[2] body`.

use crate::consts::{HEADER_LEN, RERROR, RREAD, RREADDIR};
use crate::dialect::Dialect;
use crate::error::DecodeError;
use crate::messages::{Fcall, is_known_type};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The 7-byte header every message starts with.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Length of the whole message, this field included.
    pub size: u32,
    /// Message type number.
    pub ty: u8,
    /// Tag pairing a reply with its request.
    pub tag: u16,
}

/// Read the header at the start of `buf`, or `None` if fewer than 7 bytes are there.
///
/// Nothing is validated: this is for framing a byte stream (how many bytes make the
/// message) and for answering a message that will not decode (with its tag).
pub fn peek_header(buf: &[u8]) -> Option<Header> {
    let h = buf.get(..HEADER_LEN)?;
    Some(Header {
        size: u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
        ty: h[4],
        tag: u16::from_le_bytes([h[5], h[6]]),
    })
}

/// Decode one whole message (size field included) in dialect `d`, returning its tag.
///
/// Strict: the size field must equal `frame.len()`, the type must exist and belong to `d`
/// (an Rerror is accepted in every dialect so a client can read it), and the body must be
/// consumed exactly. Data payloads (Twrite, Rread, Rreaddir) are slices of `frame`, not
/// copies.
pub fn decode(frame: Bytes, d: Dialect) -> Result<(u16, Fcall), DecodeError> {
    let header = peek_header(&frame).ok_or(DecodeError::FrameTooShort)?;
    if usize::try_from(header.size).ok() != Some(frame.len()) {
        return Err(DecodeError::SizeMismatch {
            declared: header.size,
            actual: frame.len(),
        });
    }
    if !is_known_type(header.ty) {
        return Err(DecodeError::UnknownType(header.ty));
    }
    if !d.has_type(header.ty) && header.ty != RERROR {
        return Err(DecodeError::NotInDialect {
            ty: header.ty,
            dialect: d,
        });
    }
    let mut body = frame;
    body.advance(HEADER_LEN);
    let msg = Fcall::decode_body(header.ty, &mut body, d).expect("type checked above")?;
    if !body.is_empty() {
        return Err(DecodeError::TrailingBytes(body.len()));
    }
    Ok((header.tag, msg))
}

impl Fcall {
    /// Length of the whole encoded message, header included.
    pub fn encoded_len(&self, d: Dialect) -> usize {
        HEADER_LEN + self.body_len(d)
    }

    /// Append the whole message (`size[4] type[1] tag[2] body`) to `buf`.
    ///
    /// Fields the dialect does not carry are left out. Encoding does not validate: a
    /// string with a NUL or a walk with 17 names is written as given (and the peer will
    /// reject it).
    ///
    /// # Panics
    ///
    /// If the message is larger than 4 GiB, or a stat larger than 64 KiB.
    pub fn encode(&self, tag: u16, d: Dialect, buf: &mut BytesMut) {
        let len = self.encoded_len(d);
        buf.reserve(len);
        let start = buf.len();
        buf.put_u32_le(u32::try_from(len).expect("9P message larger than 4 GiB"));
        buf.put_u8(self.ty());
        buf.put_u16_le(tag);
        self.encode_body(buf, d);
        debug_assert_eq!(
            buf.len() - start,
            len,
            "encoded_len disagrees with encode for {}",
            self.name()
        );
    }
}

/// Length of the header of an Rread/Rreaddir: `size[4] type[1] tag[2] count[4]`.
pub const DATA_REPLY_HEADER_LEN: usize = HEADER_LEN + 4;

/// Write the header of an Rread or Rreaddir whose `count` data bytes the caller appends
/// itself (so the data can be read straight into the reply buffer).
///
/// # Panics
///
/// In debug builds, if `ty` is neither RREAD nor RREADDIR; always if `count` makes the
/// message larger than 4 GiB.
pub fn encode_data_reply_header(buf: &mut BytesMut, ty: u8, tag: u16, count: u32) {
    debug_assert!(ty == RREAD || ty == RREADDIR, "type {ty} carries no data");
    let size = count
        .checked_add(DATA_REPLY_HEADER_LEN as u32)
        .expect("9P message larger than 4 GiB");
    buf.reserve(DATA_REPLY_HEADER_LEN);
    buf.put_u32_le(size);
    buf.put_u8(ty);
    buf.put_u16_le(tag);
    buf.put_u32_le(count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Rread;

    #[test]
    fn peek() {
        assert_eq!(peek_header(&[1, 2, 3, 4, 5, 6]), None);
        assert_eq!(
            peek_header(&[0x0b, 0, 0, 0, 117, 0x34, 0x12, 0xff]),
            Some(Header {
                size: 11,
                ty: 117,
                tag: 0x1234
            })
        );
    }

    #[test]
    fn data_reply_header_matches_the_encoder() {
        let mut a = BytesMut::new();
        encode_data_reply_header(&mut a, RREAD, 9, 3);
        assert_eq!(&a[..], &[14, 0, 0, 0, 117, 9, 0, 3, 0, 0, 0]);
        a.put_slice(b"abc");
        let mut b = BytesMut::new();
        Fcall::Rread(Rread {
            data: Bytes::from_static(b"abc"),
        })
        .encode(9, Dialect::P9P2000L, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn decoded_data_is_a_slice_of_the_frame() {
        let frame = Bytes::from_static(&[14, 0, 0, 0, 117, 9, 0, 3, 0, 0, 0, b'a', b'b', b'c']);
        let (tag, msg) = decode(frame.clone(), Dialect::P9P2000).unwrap();
        assert_eq!(tag, 9);
        let Fcall::Rread(r) = msg else {
            panic!("not an Rread")
        };
        assert_eq!(r.data.as_ptr(), frame[11..].as_ptr());
    }
}
