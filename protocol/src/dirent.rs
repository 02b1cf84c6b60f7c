//! 9P2000.L directory entries, the records inside an Rreaddir's data.

use crate::dialect::Dialect;
use crate::error::DecodeError;
use crate::qid::Qid;
use crate::wire::WireFormat;
use bytes::{Bytes, BytesMut};

/// Encoding is dialect-independent; this is what the shared field codecs are called with.
const D: Dialect = Dialect::P9P2000L;

/// One directory entry: `qid[13] offset[8] type[1] name[s]` (diod protocol.md, readdir).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirent {
    /// The entry's qid.
    pub qid: Qid,
    /// The offset to pass in the next Treaddir to continue after this entry.
    pub offset: u64,
    /// Linux `DT_*` file type of the entry.
    pub ty: u8,
    /// The entry's name.
    pub name: String,
}

impl Dirent {
    /// Encoded size: 13 + 8 + 1 + 2 + the name's length.
    pub fn encoded_len(&self) -> usize {
        Qid::LEN + 8 + 1 + self.name.encoded_len(D)
    }

    /// Append the encoding to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        self.qid.encode(buf, D);
        self.offset.encode(buf, D);
        self.ty.encode(buf, D);
        self.name.encode(buf, D);
    }

    /// Read one entry from the front of `buf`, advancing it.
    pub fn decode(buf: &mut Bytes) -> Result<Dirent, DecodeError> {
        Ok(Dirent {
            qid: Qid::decode(buf, D)?,
            offset: u64::decode(buf, D)?,
            ty: u8::decode(buf, D)?,
            name: String::decode(buf, D)?,
        })
    }
}

/// An iterator over the entries packed in an Rreaddir's data.
///
/// It yields an error at most once, for a malformed or cut-off entry, and then stops.
#[derive(Clone, Debug)]
pub struct DirentIter {
    data: Bytes,
}

impl DirentIter {
    /// Iterate over the entries in `data`.
    pub fn new(data: Bytes) -> DirentIter {
        DirentIter { data }
    }
}

impl Iterator for DirentIter {
    type Item = Result<Dirent, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let entry = Dirent::decode(&mut self.data);
        if entry.is_err() {
            self.data.clear();
        }
        Some(entry)
    }
}

/// Decode every entry of an Rreaddir's data.
pub fn decode_dirents(data: Bytes) -> Result<Vec<Dirent>, DecodeError> {
    DirentIter::new(data).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_is_byte_exact() {
        let d = Dirent {
            qid: Qid {
                ty: 0x80,
                version: 1,
                path: 2,
            },
            offset: 3,
            ty: 4,
            name: "ab".into(),
        };
        let mut b = BytesMut::new();
        d.encode(&mut b);
        let want: &[u8] = &[
            0x80, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, // qid
            3, 0, 0, 0, 0, 0, 0, 0, // offset
            4, // type
            2, 0, b'a', b'b', // name
        ];
        assert_eq!(&b[..], want);
        assert_eq!(d.encoded_len(), 26);
        assert_eq!(decode_dirents(b.freeze()), Ok(vec![d]));
    }

    #[test]
    fn iterator_stops_after_an_error() {
        let d = Dirent {
            qid: Qid::default(),
            offset: 1,
            ty: 8,
            name: "x".into(),
        };
        let mut b = BytesMut::new();
        d.encode(&mut b);
        d.encode(&mut b);
        b.truncate(b.len() - 1);
        let mut it = DirentIter::new(b.freeze());
        assert_eq!(it.next(), Some(Ok(d)));
        assert_eq!(it.next(), Some(Err(DecodeError::Truncated)));
        assert_eq!(it.next(), None);
        assert_eq!(decode_dirents(Bytes::new()), Ok(vec![]));
    }
}
