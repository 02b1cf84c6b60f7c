//! Recovery on open: replay the log from the index's durable checkpoint to its end.
//!
//! Index commits between durable checkpoints may be lost in a crash, but every acknowledged
//! object is in a segment (fsync'd before the answer). Replay reads each record after the
//! checkpoint, checks its magic, checksum and content hash, and indexes what the index lacks.
//! The first bad record is a torn tail (never acknowledged) when nothing valid follows it in
//! its segment: the segment is cut there. When valid records do follow, the bad bytes are
//! damage in the middle of the log: they are skipped (with a warning) and nothing
//! acknowledged after them is lost. Segment files left behind by an interrupted compaction
//! (below the checkpoint, unknown to the index) are removed.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use redb::{Durability, ReadableTable};

use super::files::{create_segment, list_segments, segment_path, segments_dir, sync_dir};
use super::format::{
    FILE_HEADER_LEN, FileHeaderError, RECORD_HEADER_LEN, RECORD_MAGIC, RecordHeader,
    check_file_header, decode_record_header, file_header,
};
use super::index::{self, Location};
use super::shared::{Shared, now_secs};
use super::writer::Active;
use crate::{ObjectId, Result, StoreError};

/// A valid record found by a scan.
pub(crate) struct Found {
    /// Its header.
    pub header: RecordHeader,
    /// Offset of the record's first byte.
    pub start: u64,
    /// Its refs bytes.
    pub refs: Vec<u8>,
}

/// The record at `pos`, if a whole valid one is there (magic, checksum, content hash).
fn try_record(file: &File, pos: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<Option<Found>> {
    if pos.saturating_add(RECORD_HEADER_LEN) > len {
        return Ok(None);
    }
    let mut h = [0u8; RECORD_HEADER_LEN as usize];
    file.read_exact_at(&mut h, pos)?;
    let Some(header) = decode_record_header(&h) else {
        return Ok(None);
    };
    if pos.saturating_add(header.record_len()) > len {
        return Ok(None);
    }
    let mut refs = vec![0u8; header.refs_len() as usize];
    file.read_exact_at(&mut refs, pos + RECORD_HEADER_LEN)?;
    if !header.crc_ok(&h, &refs) {
        return Ok(None);
    }
    buf.clear();
    buf.resize(header.len as usize, 0);
    file.read_exact_at(buf, header.content_offset(pos))?;
    if ObjectId::of(buf) != header.id {
        return Ok(None);
    }
    Ok(Some(Found {
        header,
        start: pos,
        refs,
    }))
}

/// The start of the next valid record at or after `from`, if any.
fn find_next(file: &File, from: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<Option<u64>> {
    const CHUNK: usize = 1 << 20;
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut window = vec![0u8; CHUNK];
    let mut pos = from;
    while pos.saturating_add(RECORD_HEADER_LEN) <= len {
        let n = (len - pos).min(CHUNK as u64) as usize;
        file.read_exact_at(&mut window[..n], pos)?;
        for k in 0..n.saturating_sub(3) {
            if window[k..k + 4] == magic {
                let cand = pos + k as u64;
                if try_record(file, cand, len, buf)?.is_some() {
                    return Ok(Some(cand));
                }
            }
        }
        if n < 4 {
            break;
        }
        // Overlap by 3 bytes so that a magic across two windows is seen.
        pos += (n - 3) as u64;
    }
    Ok(None)
}

/// What a scan found besides the records.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    /// Where the valid log ends (the file is cut here if longer).
    pub end: u64,
    /// Damaged byte ranges skipped in the middle.
    pub damaged: Vec<(u64, u64)>,
}

/// Scan the records of a segment from `start` to `len`, calling `each` for every valid one.
pub(crate) fn scan(
    file: &File,
    start: u64,
    len: u64,
    mut each: impl FnMut(Found) -> Result<()>,
    what: &str,
) -> Result<ScanEnd> {
    let io_err = |e: io::Error| StoreError::io(format!("read {what} during recovery"), e);
    let mut buf = Vec::new();
    let mut pos = start;
    let mut damaged = Vec::new();
    while pos < len {
        match try_record(file, pos, len, &mut buf).map_err(io_err)? {
            Some(found) => {
                pos += found.header.record_len();
                each(found)?;
            }
            None => match find_next(file, pos + 1, len, &mut buf).map_err(io_err)? {
                Some(next) => {
                    damaged.push((pos, next));
                    pos = next;
                }
                None => break,
            },
        }
    }
    Ok(ScanEnd { end: pos, damaged })
}

/// Replay the log after the checkpoint into the index; returns the segment to append to.
pub(crate) fn recover(sh: &Arc<Shared>) -> Result<Active> {
    let ix = |e: redb::Error| sh.ix(e);
    let (cp_seq, cp_off, rows) = {
        use redb::ReadableDatabase;
        let txn = sh.db.begin_read().map_err(|e| ix(e.into()))?;
        let meta = txn.open_table(index::META).map_err(|e| ix(e.into()))?;
        let cp_seq = index::meta_get(&meta, index::META_CHECKPOINT_SEQ, &sh.index_path)?;
        let cp_off = index::meta_get(&meta, index::META_CHECKPOINT_OFFSET, &sh.index_path)?;
        let segments = txn.open_table(index::SEGMENTS).map_err(|e| ix(e.into()))?;
        let mut rows = HashSet::new();
        for row in segments.iter().map_err(|e| ix(e.into()))? {
            let (k, _) = row.map_err(|e| ix(e.into()))?;
            rows.insert(k.value());
        }
        (cp_seq, cp_off, rows)
    };
    let have_cp = cp_seq > 0;
    let mut segs = list_segments(&sh.dir)?;

    // Files an interrupted compaction left: below the checkpoint and unknown to the index.
    if have_cp {
        let mut removed = false;
        segs.retain(|&seq| {
            if seq < cp_seq && !rows.contains(&seq) {
                let path = segment_path(&sh.dir, seq);
                tracing::warn!(segment = %path.display(), "removing a segment left by an interrupted compaction");
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::error!(segment = %path.display(), error = %e, "could not remove");
                }
                removed = true;
                false
            } else {
                true
            }
        });
        if removed {
            sync_dir(&segments_dir(&sh.dir))?;
        }
    }

    let now = now_secs();
    let last = segs.last().copied();
    let mut active: Option<Active> = None;
    let mut replayed = 0u64;
    for &seq in &segs {
        let replay = !have_cp || seq >= cp_seq;
        if !replay && Some(seq) != last {
            continue;
        }
        let path = segment_path(&sh.dir, seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("open segment {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io(format!("stat segment {}", path.display()), e))?
            .len();
        if !replay {
            active = Some(Active {
                seq,
                file: Arc::new(file),
                offset: len.max(FILE_HEADER_LEN),
            });
            continue;
        }
        let mut head = [0u8; FILE_HEADER_LEN as usize];
        let header_ok = if len >= FILE_HEADER_LEN {
            file.read_exact_at(&mut head, 0).map_err(|e| {
                StoreError::io(format!("read header of segment {}", path.display()), e)
            })?;
            match check_file_header(&head) {
                Ok(()) => true,
                Err(FileHeaderError::Version(v)) => {
                    return Err(StoreError::Format {
                        dir: sh.dir.clone(),
                        message: format!(
                            "segment {} has format version {v}; this build understands version {}",
                            path.display(),
                            super::format::SEGMENT_VERSION
                        ),
                    });
                }
                Err(FileHeaderError::BadMagic) => false,
            }
        } else {
            false
        };
        let start = if have_cp && seq == cp_seq {
            cp_off.max(FILE_HEADER_LEN)
        } else {
            FILE_HEADER_LEN
        };

        let mut txn = sh.db.begin_write().map_err(|e| ix(e.into()))?;
        txn.set_durability(Durability::None)
            .map_err(|e| ix(e.into()))?;
        let end = {
            let mut objects = txn.open_table(index::OBJECTS).map_err(|e| ix(e.into()))?;
            let mut refs = txn.open_table(index::REFS).map_err(|e| ix(e.into()))?;
            let mut live = 0i128;
            let mut bytes = 0u64;
            let end = if start > len {
                if start > FILE_HEADER_LEN {
                    tracing::warn!(
                    segment = %path.display(),
                    length = len,
                    checkpoint = start,
                    "segment is shorter than the index's checkpoint: objects in the lost part will read as corrupt"
                    );
                }
                len.max(FILE_HEADER_LEN)
            } else {
                let what = format!("segment {}", path.display());
                let scanned = scan(
                    &file,
                    start,
                    len,
                    |found| {
                        replayed += 1;
                        if index::lookup(&objects, &found.header.id, &sh.index_path)?.is_some() {
                            return Ok(());
                        }
                        let loc = Location {
                            seq,
                            offset: found.header.content_offset(found.start),
                            len: u64::from(found.header.len),
                            stamp: now,
                            record: found.header.record_len(),
                        };
                        objects
                            .insert(found.header.id.as_bytes(), &loc.encode()[..])
                            .map_err(|e| ix(e.into()))?;
                        if !found.refs.is_empty() {
                            refs.insert(found.header.id.as_bytes(), &found.refs[..])
                                .map_err(|e| ix(e.into()))?;
                        }
                        live += i128::from(loc.record);
                        bytes += loc.len;
                        Ok(())
                    },
                    &what,
                )?;
                for (from, to) in &scanned.damaged {
                    tracing::warn!(
                        segment = %path.display(),
                        from,
                        to,
                        "damaged bytes in the middle of a segment skipped"
                    );
                }
                if scanned.end < len {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = scanned.end,
                        dropped = len - scanned.end,
                        "cutting off a torn tail (never acknowledged)"
                    );
                    file.set_len(scanned.end)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| {
                            StoreError::io(
                                format!("truncate torn tail of segment {}", path.display()),
                                e,
                            )
                        })?;
                }
                scanned.end.max(FILE_HEADER_LEN)
            };
            if !header_ok {
                tracing::warn!(segment = %path.display(), "rewriting a damaged segment header");
                file.write_all_at(&file_header(), 0)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| {
                        StoreError::io(format!("rewrite header of segment {}", path.display()), e)
                    })?;
            }
            let mut segments = txn.open_table(index::SEGMENTS).map_err(|e| ix(e.into()))?;
            index::segment_add(&mut segments, seq, live, Some(end), &sh.index_path)?;
            let mut meta = txn.open_table(index::META).map_err(|e| ix(e.into()))?;
            let old = index::meta_get(&meta, index::META_BYTES, &sh.index_path)?;
            meta.insert(index::META_BYTES, old + bytes)
                .map_err(|e| ix(e.into()))?;
            end
        };
        txn.commit().map_err(|e| ix(e.into()))?;
        active = Some(Active {
            seq,
            file: Arc::new(file),
            offset: end,
        });
    }
    if replayed > 0 {
        tracing::info!(records = replayed, "replayed the log tail into the index");
    }

    let active = match active {
        Some(a) => a,
        None => {
            let seq = cp_seq.max(last.unwrap_or(0)) + 1;
            Active {
                seq,
                file: Arc::new(create_segment(&sh.dir, seq)?),
                offset: FILE_HEADER_LEN,
            }
        }
    };

    // Make the replay durable, with the checkpoint at the log's end.
    let mut txn = sh.db.begin_write().map_err(|e| ix(e.into()))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| ix(e.into()))?;
    {
        let mut segments = txn.open_table(index::SEGMENTS).map_err(|e| ix(e.into()))?;
        index::segment_add(
            &mut segments,
            active.seq,
            0,
            Some(active.offset),
            &sh.index_path,
        )?;
        let mut meta = txn.open_table(index::META).map_err(|e| ix(e.into()))?;
        meta.insert(index::META_CHECKPOINT_SEQ, active.seq)
            .map_err(|e| ix(e.into()))?;
        meta.insert(index::META_CHECKPOINT_OFFSET, active.offset)
            .map_err(|e| ix(e.into()))?;
    }
    txn.commit().map_err(|e| ix(e.into()))?;
    Ok(active)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::format::encode_record_head;

    fn record(data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let len = u32::try_from(data.len()).expect("small");
        encode_record_head(&mut b, &ObjectId::of(data), len, &[]);
        b.extend_from_slice(data);
        b
    }

    fn scan_bytes(bytes: &[u8]) -> (Vec<ObjectId>, ScanEnd) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s");
        std::fs::write(&p, bytes).expect("write");
        let f = File::open(&p).expect("open");
        let mut ids = Vec::new();
        let end = scan(
            &f,
            FILE_HEADER_LEN,
            bytes.len() as u64,
            |found| {
                ids.push(found.header.id);
                Ok(())
            },
            "test",
        )
        .expect("scan");
        (ids, end)
    }

    #[test]
    fn torn_tail_ends_the_log_mid_log_damage_is_skipped() {
        let mut seg = file_header().to_vec();
        let a = record(b"first");
        let b = record(b"second object");
        let c = record(b"third");
        seg.extend_from_slice(&a);
        let b_at = seg.len();
        seg.extend_from_slice(&b);
        let c_at = seg.len();
        seg.extend_from_slice(&c);
        let full = seg.len() as u64;

        // Clean.
        let (ids, end) = scan_bytes(&seg);
        assert_eq!(ids.len(), 3);
        assert_eq!(
            end,
            ScanEnd {
                end: full,
                damaged: vec![]
            }
        );

        // Torn tail: the last record cut short.
        let (ids, end) = scan_bytes(&seg[..seg.len() - 2]);
        assert_eq!(
            ids,
            vec![ObjectId::of(b"first"), ObjectId::of(b"second object")]
        );
        assert_eq!(end.end, c_at as u64);

        // Garbage appended.
        let mut g = seg.clone();
        g.extend_from_slice(&[0xAB; 100]);
        let (ids, end) = scan_bytes(&g);
        assert_eq!(ids.len(), 3);
        assert_eq!(end.end, full);

        // A flipped content byte in the middle record: skipped, the third still found.
        let mut m = seg.clone();
        m[c_at - 1] ^= 0x01;
        let (ids, end) = scan_bytes(&m);
        assert_eq!(ids, vec![ObjectId::of(b"first"), ObjectId::of(b"third")]);
        assert_eq!(end.end, full);
        assert_eq!(end.damaged, vec![(b_at as u64, c_at as u64)]);
    }
}
