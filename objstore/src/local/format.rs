//! The segment file format: a 16-byte file header, then object records, each a checksummed
//! header, the ids the object refers to, and the content.
//!
//! Encoding and decoding live here, apart from any I/O, so that the writer, recovery,
//! compaction and the tests agree on one definition (docs/objstore.md describes it). Decoding
//! never panics: a damaged header is an `Err` naming what is wrong.

use crate::ObjectId;

/// Magic at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"ENVOYSEG";
/// The segment format version this code writes and understands.
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment file header.
pub(crate) const FILE_HEADER_LEN: u64 = 16;

/// Magic at the start of every record (`EOBJ` in little-endian byte order).
pub(crate) const RECORD_MAGIC: u32 = 0x4A42_4F45;
/// Record kind: an immutable object.
pub(crate) const KIND_OBJECT: u8 = 1;
/// Bytes of a record header (before the refs and the content).
pub(crate) const RECORD_HEADER_LEN: u64 = 52;
/// Most refs one object may carry (32 MiB of ids): bounds what recovery reads for a header.
pub(crate) const MAX_REFS: u32 = 1 << 20;

/// The segment file header.
pub(crate) fn file_header() -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h
}

/// What is wrong with a segment file header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FileHeaderError {
    /// Not a segment header at all (torn or damaged).
    BadMagic,
    /// A segment of another format version.
    Version(u32),
}

/// Check a segment file header.
pub(crate) fn check_file_header(h: &[u8]) -> Result<(), FileHeaderError> {
    if h.len() < FILE_HEADER_LEN as usize || h[..8] != SEGMENT_MAGIC {
        return Err(FileHeaderError::BadMagic);
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != SEGMENT_VERSION {
        return Err(FileHeaderError::Version(version));
    }
    Ok(())
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Content bytes.
    pub len: u32,
    /// Ids following the header.
    pub nrefs: u32,
    /// The object's id.
    pub id: ObjectId,
    /// The stored checksum (over the header and the refs).
    pub crc: u32,
}

impl RecordHeader {
    /// Bytes of the refs that follow the header.
    pub fn refs_len(&self) -> u64 {
        u64::from(self.nrefs) * 32
    }

    /// Bytes of the whole record: header, refs and content.
    pub fn record_len(&self) -> u64 {
        record_len(u64::from(self.len), u64::from(self.nrefs))
    }

    /// Offset of the content, for a record starting at `start`.
    pub fn content_offset(&self, start: u64) -> u64 {
        start + RECORD_HEADER_LEN + self.refs_len()
    }

    /// Whether the stored checksum matches the header and `refs` (the refs bytes).
    pub fn crc_ok(&self, header: &[u8; RECORD_HEADER_LEN as usize], refs: &[u8]) -> bool {
        let c = crc32c::crc32c_append(crc32c::crc32c(&header[..48]), refs);
        c == self.crc
    }
}

/// Bytes of a record with `len` content bytes and `nrefs` refs.
pub(crate) fn record_len(len: u64, nrefs: u64) -> u64 {
    RECORD_HEADER_LEN + nrefs * 32 + len
}

/// Append the header and refs of an object record to `out` (the content follows them in the
/// file). `len` must fit in a u32 and `refs` in [`MAX_REFS`]: the callers check both.
pub(crate) fn encode_record_head(out: &mut Vec<u8>, id: &ObjectId, len: u32, refs: &[ObjectId]) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.push(KIND_OBJECT);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    let nrefs = u32::try_from(refs.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&nrefs.to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    for r in refs {
        out.extend_from_slice(r.as_bytes());
    }
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&out[start..crc_at]),
        &out[crc_at + 4..out.len()],
    );
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decode a record header; `None` if it is not one (bad magic, unknown kind, non-zero
/// reserved bytes, too many refs). The checksum is checked by [`RecordHeader::crc_ok`] once
/// the refs are read.
pub(crate) fn decode_record_header(h: &[u8; RECORD_HEADER_LEN as usize]) -> Option<RecordHeader> {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if u32_at(0) != RECORD_MAGIC || h[4] != KIND_OBJECT || h[5..8] != [0, 0, 0] {
        return None;
    }
    let nrefs = u32_at(12);
    if nrefs > MAX_REFS {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&h[16..48]);
    Some(RecordHeader {
        len: u32_at(8),
        nrefs,
        id: ObjectId(id),
        crc: u32_at(48),
    })
}

/// Split refs bytes into ids (`refs.len()` is a multiple of 32 by construction; a ragged
/// tail is ignored).
pub(crate) fn decode_refs(refs: &[u8]) -> Vec<ObjectId> {
    refs.chunks_exact(32)
        .map(|c| {
            let mut id = [0u8; 32];
            id.copy_from_slice(c);
            ObjectId(id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(buf: &[u8]) -> [u8; RECORD_HEADER_LEN as usize] {
        let mut h = [0u8; RECORD_HEADER_LEN as usize];
        h.copy_from_slice(&buf[..RECORD_HEADER_LEN as usize]);
        h
    }

    #[test]
    fn record_header_round_trip_and_checksum() {
        let id = ObjectId::of(b"hello");
        let refs = vec![ObjectId::of(b"a"), ObjectId::of(b"b")];
        let mut buf = Vec::new();
        encode_record_head(&mut buf, &id, 5, &refs);
        assert_eq!(buf.len() as u64, RECORD_HEADER_LEN + 64);
        let h = head(&buf);
        let rec = decode_record_header(&h).expect("decodes");
        assert_eq!(rec.id, id);
        assert_eq!(rec.len, 5);
        assert_eq!(rec.nrefs, 2);
        assert_eq!(rec.record_len(), RECORD_HEADER_LEN + 64 + 5);
        assert_eq!(rec.content_offset(100), 100 + RECORD_HEADER_LEN + 64);
        assert!(rec.crc_ok(&h, &buf[RECORD_HEADER_LEN as usize..]));
        assert_eq!(decode_refs(&buf[RECORD_HEADER_LEN as usize..]), refs);

        // A flipped bit in the refs or in the header fails the checksum.
        let mut bad = buf.clone();
        bad[60] ^= 1;
        assert!(!rec.crc_ok(&head(&bad), &bad[RECORD_HEADER_LEN as usize..]));
        let mut bad = buf.clone();
        bad[9] ^= 1;
        let h2 = head(&bad);
        let rec2 = decode_record_header(&h2).expect("still a header");
        assert!(!rec2.crc_ok(&h2, &bad[RECORD_HEADER_LEN as usize..]));
    }

    #[test]
    fn damaged_headers_are_refused_without_panics() {
        let mut buf = Vec::new();
        encode_record_head(&mut buf, &ObjectId::of(b""), 0, &[]);
        let mut h = head(&buf);
        h[0] ^= 0xff;
        assert!(decode_record_header(&h).is_none());
        let mut h = head(&buf);
        h[4] = 9;
        assert!(decode_record_header(&h).is_none());
        let mut h = head(&buf);
        h[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_record_header(&h).is_none());
        assert!(decode_record_header(&[0u8; RECORD_HEADER_LEN as usize]).is_none());
    }

    #[test]
    fn file_header_checks() {
        let h = file_header();
        assert_eq!(check_file_header(&h), Ok(()));
        assert_eq!(check_file_header(&h[..8]), Err(FileHeaderError::BadMagic));
        let mut v2 = h;
        v2[8] = 2;
        assert_eq!(check_file_header(&v2), Err(FileHeaderError::Version(2)));
        assert_eq!(
            check_file_header(&[0u8; 16]),
            Err(FileHeaderError::BadMagic)
        );
    }
}
