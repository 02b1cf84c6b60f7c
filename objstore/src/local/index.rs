//! The index: redb tables mapping ids to where their records lie, plus the quarantine list,
//! per-segment byte counts and the log checkpoint; and the table of the mutable records,
//! which lives in a database of its own (`records.redb`).
//!
//! The table definitions and the fixed encodings of their values live here so that the
//! writer, recovery and the readers cannot disagree. Every decode checks lengths: a damaged
//! value becomes [`StoreError::Index`], never a panic.

use std::path::Path;

use bytes::Bytes;
use redb::{ReadableTable, TableDefinition};

use crate::local::Record;
use crate::{ObjectId, Result, StoreError};

/// id → [`Location`] (40 bytes).
pub(crate) const OBJECTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("objects");
/// id → the ids it refers to, concatenated (only when non-empty).
pub(crate) const REFS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("refs");
/// name → encoded [`Record`]: the one table of `records.redb` (in the index of a store
/// made before that file, moved out on open).
pub(crate) const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// segment seq → (live record bytes, total file bytes).
pub(crate) const SEGMENTS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("segments");
/// id → what was wrong with the copy taken out of service.
pub(crate) const QUARANTINE: TableDefinition<&[u8; 32], &str> = TableDefinition::new("quarantine");
/// key → value: see the `META_*` keys.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The index format version.
pub(crate) const META_FORMAT: &str = "format";
/// Checkpoint: every record in the log before (seq, offset) is accounted for in the index.
pub(crate) const META_CHECKPOINT_SEQ: &str = "checkpoint.seq";
/// See [`META_CHECKPOINT_SEQ`].
pub(crate) const META_CHECKPOINT_OFFSET: &str = "checkpoint.offset";
/// Content bytes of all indexed objects.
pub(crate) const META_BYTES: &str = "bytes";

/// The index format this code writes.
pub(crate) const INDEX_FORMAT: u64 = 1;

/// Where an object's record lies, and its GC stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    /// Segment sequence number.
    pub seq: u64,
    /// Offset of the content's first byte in the segment file.
    pub offset: u64,
    /// Content bytes.
    pub len: u64,
    /// Last put, seconds since the epoch.
    pub stamp: u64,
    /// Bytes of the whole record (header, refs, content): what it adds to its segment's live
    /// bytes.
    pub record: u64,
}

/// Bytes of an encoded [`Location`].
pub(crate) const LOCATION_LEN: usize = 40;

impl Location {
    /// Fixed little-endian encoding.
    pub fn encode(&self) -> [u8; LOCATION_LEN] {
        let mut b = [0u8; LOCATION_LEN];
        for (i, v) in [self.seq, self.offset, self.len, self.stamp, self.record]
            .into_iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Decode; `None` if the value has the wrong size.
    pub fn decode(b: &[u8]) -> Option<Location> {
        if b.len() != LOCATION_LEN {
            return None;
        }
        let at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(x)
        };
        Some(Location {
            seq: at(0),
            offset: at(1),
            len: at(2),
            stamp: at(3),
            record: at(4),
        })
    }
}

/// The `nrefs` of a tombstone (a deleted record: nothing follows).
const TOMBSTONE: u32 = u32::MAX;

/// Encode a record: version u64 | nrefs u32 | refs | value; a tombstone is version u64 |
/// [`TOMBSTONE`].
pub(crate) fn encode_record(r: &Record) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + r.refs.len() * 32 + r.value.len());
    b.extend_from_slice(&r.version.to_le_bytes());
    if r.deleted {
        b.extend_from_slice(&TOMBSTONE.to_le_bytes());
        return b;
    }
    // check_record bounds refs far below TOMBSTONE.
    let n = u32::try_from(r.refs.len()).unwrap_or(TOMBSTONE - 1);
    b.extend_from_slice(&n.to_le_bytes());
    for id in &r.refs {
        b.extend_from_slice(id.as_bytes());
    }
    b.extend_from_slice(&r.value);
    b
}

/// Decode a record; `None` if damaged.
pub(crate) fn decode_record(b: &[u8]) -> Option<Record> {
    if b.len() < 12 {
        return None;
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[..8]);
    let version = u64::from_le_bytes(v);
    let n = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if n == TOMBSTONE {
        return (b.len() == 12).then(|| Record::tombstone(version));
    }
    let n = n as usize;
    let refs_end = n.checked_mul(32)?.checked_add(12)?;
    if refs_end > b.len() {
        return None;
    }
    Some(Record {
        version,
        value: Bytes::copy_from_slice(&b[refs_end..]),
        refs: crate::local::format::decode_refs(&b[12..refs_end]),
        deleted: false,
    })
}

/// Map a redb error to [`StoreError::Index`] naming the index file.
pub(crate) fn index_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    let message = match e {
        redb::Error::PreviousIo => "an earlier write to the index failed (disk full?); \
                                    reopen the store once the cause is fixed"
            .to_owned(),
        other => other.to_string(),
    };
    StoreError::Index {
        path: path.to_owned(),
        message,
    }
}

/// A damaged value in the index.
pub(crate) fn damaged(path: &Path, what: impl std::fmt::Display) -> StoreError {
    StoreError::Index {
        path: path.to_owned(),
        message: format!("damaged entry: {what}"),
    }
}

/// Read one u64 from the meta table (0 if absent).
pub(crate) fn meta_get(
    table: &impl ReadableTable<&'static str, u64>,
    key: &str,
    path: &Path,
) -> Result<u64> {
    Ok(table
        .get(key)
        .map_err(|e| index_err(path, e))?
        .map(|g| g.value())
        .unwrap_or(0))
}

/// Look an object up.
pub(crate) fn lookup(
    table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    id: &ObjectId,
    path: &Path,
) -> Result<Option<Location>> {
    match table.get(id.as_bytes()).map_err(|e| index_err(path, e))? {
        None => Ok(None),
        Some(g) => Location::decode(g.value())
            .map(Some)
            .ok_or_else(|| damaged(path, format!("object {id}"))),
    }
}

/// Add `live` (may be negative) and `total` bytes to a segment's row.
pub(crate) fn segment_add(
    table: &mut redb::Table<u64, (u64, u64)>,
    seq: u64,
    live: i128,
    total: Option<u64>,
    path: &Path,
) -> Result<()> {
    let (old_live, old_total) = table
        .get(seq)
        .map_err(|e| index_err(path, e))?
        .map(|g| g.value())
        .unwrap_or((0, 0));
    let new_live = (i128::from(old_live) + live).clamp(0, i128::from(u64::MAX)) as u64;
    let new_total = total.unwrap_or(old_total);
    table
        .insert(seq, (new_live, new_total))
        .map_err(|e| index_err(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_round_trip_and_damage() {
        let l = Location {
            seq: 7,
            offset: 12345,
            len: 4 << 20,
            stamp: 1_700_000_000,
            record: (4 << 20) + 52,
        };
        assert_eq!(Location::decode(&l.encode()), Some(l));
        assert_eq!(Location::decode(&l.encode()[..39]), None);
        assert_eq!(Location::decode(&[]), None);
    }

    #[test]
    fn record_round_trip_and_damage() {
        let refs = vec![ObjectId::of(b"x"), ObjectId::of(b"y")];
        let b = encode_record(&Record {
            version: 9,
            value: Bytes::from_static(b"value"),
            refs: refs.clone(),
            deleted: false,
        });
        let r = decode_record(&b).expect("decodes");
        assert_eq!(r.version, 9);
        assert_eq!(&r.value[..], b"value");
        assert_eq!(r.refs, refs);
        assert!(decode_record(&b[..11]).is_none());
        let mut bad = b.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_record(&bad).is_none());
        let empty = encode_record(&Record {
            version: 1,
            ..Record::default()
        });
        assert_eq!(decode_record(&empty).map(|r| r.version), Some(1));
        let tomb = encode_record(&Record::tombstone(4));
        assert_eq!(decode_record(&tomb), Some(Record::tombstone(4)));
        assert!(decode_record(&[&tomb[..], b"x"].concat()).is_none());
    }
}
