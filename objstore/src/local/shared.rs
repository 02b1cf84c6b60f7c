//! The state every thread of a store shares: the index, the records, the open segment files,
//! the verified cache, and the read path (look up, `pread`, verify, quarantine on mismatch).
//!
//! Reads never go through the writer thread: they take a redb read transaction and read the
//! segment file directly, so they run in parallel with each other and with puts.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{Durability, ReadableDatabase};

use super::StoreOptions;
use super::cache::VerifiedCache;
use super::files::{OpenError, SegmentFiles, segment_path};
use super::index::{self, Location, index_err};
use crate::{ObjectId, Result, StoreError};

/// Objects are read and hashed in pieces of this size.
const READ_PIECE: usize = 512 << 10;

/// Bytes of verified objects kept in the cache.
pub(crate) const CACHE_BYTES: usize = 64 << 20;

/// What all threads of one store share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The store's directory.
    pub dir: PathBuf,
    /// `dir/index.redb`.
    pub index_path: PathBuf,
    /// The tunables.
    pub options: StoreOptions,
    /// The index.
    pub db: redb::Database,
    /// `dir/records.redb`.
    pub records_path: PathBuf,
    /// The mutable records, in a database of their own. Their compare-and-sets commit
    /// durably, and a durable commit of the index would also write back every index page the
    /// puts touched since its last one (many, scattered: the ids are hashes); the index is
    /// kept durable by the log instead (see `writer`).
    pub records: redb::Database,
    /// Open segment files.
    pub files: SegmentFiles,
    /// Recently verified whole objects.
    pub cache: VerifiedCache,
    /// The segment the writer appends to (never compacted).
    pub active_seq: AtomicU64,
    /// One compaction at a time.
    pub compacting: Mutex<()>,
    /// Tests: make the next append fail with ENOSPC after writing part of it.
    #[cfg(test)]
    pub fail_next_append: std::sync::atomic::AtomicBool,
    /// `dir/LOCK`, flock'ed while the store is open. Declared last: released after the index
    /// is closed.
    pub _lock: File,
}

/// Why a located read failed.
pub(crate) enum ReadFailure {
    /// The bytes are not there (segment missing or too short): corrupt unless the object
    /// moved meanwhile.
    Missing(String),
    /// An I/O error (not taken as corruption: it may pass).
    Io(StoreError),
}

/// Seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shared {
    /// Map a redb error.
    pub fn ix(&self, e: impl Into<redb::Error>) -> StoreError {
        index_err(&self.index_path, e)
    }

    /// Map a redb error of the records database.
    pub fn rx(&self, e: impl Into<redb::Error>) -> StoreError {
        index_err(&self.records_path, e)
    }

    /// The object's location, if indexed.
    pub fn lookup(&self, id: &ObjectId) -> Result<Option<Location>> {
        let txn = self.db.begin_read().map_err(|e| self.ix(e))?;
        let table = txn.open_table(index::OBJECTS).map_err(|e| self.ix(e))?;
        index::lookup(&table, id, &self.index_path)
    }

    /// Read an object's content bytes from where `loc` says, and the hash of what was read
    /// (the caller compares it with the id). The kernel is asked for the whole extent at once
    /// (`WILLNEED`) and the content is read and hashed in pieces, so hashing one piece
    /// overlaps the disk fetching the next: a large object costs about its read time.
    pub fn read_at(&self, loc: &Location) -> Result<(Vec<u8>, ObjectId), ReadFailure> {
        let path = segment_path(&self.dir, loc.seq);
        let file = match self.files.get(&self.dir, loc.seq) {
            Ok(f) => f,
            Err(OpenError::Missing) => {
                return Err(ReadFailure::Missing(format!(
                    "segment {} is missing",
                    path.display()
                )));
            }
            Err(OpenError::Io(e)) => {
                return Err(ReadFailure::Io(StoreError::io(
                    format!("open segment {}", path.display()),
                    e,
                )));
            }
        };
        let len = usize::try_from(loc.len).map_err(|_| {
            ReadFailure::Missing(format!("index claims an object of {} bytes", loc.len))
        })?;
        if loc.len > u64::from(u32::MAX) {
            return Err(ReadFailure::Missing(format!(
                "index claims an object of {} bytes",
                loc.len
            )));
        }
        // Check the extent against the file first: a damaged index must not make us allocate
        // (or read) more than is there.
        let file_len = file.metadata().map(|m| m.len()).map_err(|e| {
            ReadFailure::Io(StoreError::io(
                format!("stat segment {}", path.display()),
                e,
            ))
        })?;
        if loc.offset.saturating_add(loc.len) > file_len {
            return Err(ReadFailure::Missing(format!(
                "segment {} ends at {file_len}, before offset {} + {} bytes",
                path.display(),
                loc.offset,
                loc.len
            )));
        }
        if len > READ_PIECE {
            // Advice only: a failure changes nothing but speed.
            let _ = rustix::fs::fadvise(
                &*file,
                loc.offset,
                std::num::NonZeroU64::new(loc.len),
                rustix::fs::Advice::WillNeed,
            );
        }
        let mut buf = vec![0u8; len];
        let mut hasher = blake3::Hasher::new();
        let mut at = loc.offset;
        let mut read = Ok(());
        for piece in buf.chunks_mut(READ_PIECE) {
            read = file.read_exact_at(piece, at);
            if read.is_err() {
                break;
            }
            hasher.update(piece);
            at += piece.len() as u64;
        }
        match read {
            Ok(()) => Ok((buf, ObjectId(*hasher.finalize().as_bytes()))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(ReadFailure::Missing(format!(
                    "segment {} ends before offset {} + {} bytes",
                    path.display(),
                    loc.offset,
                    loc.len
                )))
            }
            Err(e) => Err(ReadFailure::Io(StoreError::io(
                format!(
                    "read {} bytes at offset {} of segment {}",
                    loc.len,
                    loc.offset,
                    path.display()
                ),
                e,
            ))),
        }
    }

    /// The whole object read from disk and verified (the cache is not consulted). A copy that
    /// does not hash to its id, or whose bytes are gone, is quarantined and reported as
    /// `Corrupt`. A missing segment is looked up once more first: compaction may have moved
    /// the object meanwhile.
    pub fn read_verified(&self, id: &ObjectId) -> Result<Bytes> {
        let mut previous: Option<Location> = None;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let loc = self.lookup(id)?.ok_or(StoreError::NotFound(*id))?;
            match self.read_at(&loc) {
                Ok((data, actual)) => {
                    if actual == *id {
                        return Ok(Bytes::from(data));
                    }
                    let detail = format!(
                        "segment {} offset {} hashes to {actual}",
                        segment_path(&self.dir, loc.seq).display(),
                        loc.offset
                    );
                    return Err(self.quarantine(id, &loc, detail));
                }
                Err(ReadFailure::Io(e)) => return Err(e),
                Err(ReadFailure::Missing(detail)) => {
                    if previous != Some(loc) && attempts < 4 {
                        // First failure at this location: the object may have moved.
                        previous = Some(loc);
                        if self.lookup(id)? != Some(loc) {
                            continue;
                        }
                    }
                    return Err(self.quarantine(id, &loc, detail));
                }
            }
        }
    }

    /// Take a bad copy out of service: drop its index entry (if it still points at `loc`),
    /// record why in the quarantine table, durably. Returns the `Corrupt` error to report
    /// (or the index error if the quarantine could not be recorded).
    pub fn quarantine(&self, id: &ObjectId, loc: &Location, detail: String) -> StoreError {
        tracing::warn!(object = %id, %detail, "corrupt object copy quarantined");
        self.cache.remove(id);
        match self.quarantine_txn(id, loc, &detail) {
            Ok(()) => StoreError::Corrupt { id: *id, detail },
            Err(e) => {
                tracing::error!(object = %id, error = %e, "could not record quarantine");
                StoreError::Corrupt {
                    id: *id,
                    detail: format!("{detail}; the quarantine was not recorded: {e}"),
                }
            }
        }
    }

    fn quarantine_txn(&self, id: &ObjectId, loc: &Location, detail: &str) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(|e| self.ix(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.ix(e))?;
        {
            let mut objects = txn.open_table(index::OBJECTS).map_err(|e| self.ix(e))?;
            let current = index::lookup(&objects, id, &self.index_path)?;
            if current.is_some_and(|c| c.seq == loc.seq && c.offset == loc.offset) {
                objects.remove(id.as_bytes()).map_err(|e| self.ix(e))?;
                let mut refs = txn.open_table(index::REFS).map_err(|e| self.ix(e))?;
                refs.remove(id.as_bytes()).map_err(|e| self.ix(e))?;
                let mut segments = txn.open_table(index::SEGMENTS).map_err(|e| self.ix(e))?;
                index::segment_add(
                    &mut segments,
                    loc.seq,
                    -i128::from(loc.record),
                    None,
                    &self.index_path,
                )?;
                let mut meta = txn.open_table(index::META).map_err(|e| self.ix(e))?;
                let bytes = index::meta_get(&meta, index::META_BYTES, &self.index_path)?;
                meta.insert(index::META_BYTES, bytes.saturating_sub(loc.len))
                    .map_err(|e| self.ix(e))?;
            }
            let mut q = txn.open_table(index::QUARANTINE).map_err(|e| self.ix(e))?;
            q.insert(id.as_bytes(), detail).map_err(|e| self.ix(e))?;
        }
        txn.commit().map_err(|e| self.ix(e))
    }
}
