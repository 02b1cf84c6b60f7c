//! The local store: one host's objects on its own disk.
//!
//! Immutable objects, named by the BLAKE3 hash of their content, are appended to segment files
//! (a checksummed log) and found through an index in redb; every read re-hashes the bytes
//! before they are served. A few mutable records (image roots, log heads) live beside them,
//! versioned with compare-and-set. Crash safety: an object is acknowledged only once its bytes
//! are fsync'd in a segment; the index is rebuilt from the log's tail after a crash. The
//! on-disk format is documented in docs/objstore.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};

use bytes::Bytes;

use crate::{ObjectId, Result};

/// Tunables of a local store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Largest object accepted (default 16 MiB).
    pub max_object: u64,
    /// A segment file is sealed once it reaches this size (default 256 MiB).
    pub segment_size: u64,
    /// Free space kept for the index: puts that would eat into it fail with `NoSpace`
    /// (default 64 MiB).
    pub reserve: u64,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            max_object: 16 << 20,
            segment_size: 256 << 20,
            reserve: 64 << 20,
        }
    }
}

/// An object to store.
#[derive(Clone, Debug)]
pub struct PutObject {
    /// The id the writer claims; the store checks it against the content.
    pub id: ObjectId,
    /// The content.
    pub data: Bytes,
    /// Objects this one refers to (its children in a tree): followed by GC's mark phase.
    pub refs: Vec<ObjectId>,
}

impl PutObject {
    /// An object named by its content's hash.
    pub fn new(data: Bytes, refs: Vec<ObjectId>) -> PutObject {
        PutObject {
            id: ObjectId::of(&data),
            data,
            refs,
        }
    }
}

/// What a put did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Stored,
    /// The object was already here (its GC timestamp was refreshed).
    Present,
}

/// What the index knows about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object.
    pub id: ObjectId,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last put (seconds since the Unix epoch): GC spares objects put after its
    /// cutoff.
    pub stamp: u64,
}

/// A mutable record: a small value plus the objects it keeps alive (GC roots).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// Starts at 1 for the first write, +1 per write.
    pub version: u64,
    /// The value.
    pub value: Bytes,
    /// Objects this record refers to: the roots of GC's mark phase.
    pub refs: Vec<ObjectId>,
}

/// Live counters of a scrub, shared with whoever shows progress.
#[derive(Debug, Default)]
pub struct ScrubProgress {
    /// A scrub is running.
    pub running: AtomicBool,
    /// Objects to check.
    pub total: AtomicU64,
    /// Objects checked so far.
    pub checked: AtomicU64,
    /// Bytes checked so far.
    pub bytes: AtomicU64,
    /// Corrupt copies found (and quarantined).
    pub corrupt: AtomicU64,
}

/// Usage of one store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalStats {
    /// Objects indexed.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes of all segment files (live + reclaimable).
    pub disk_bytes: u64,
    /// Size of the file system holding the store.
    pub fs_total: u64,
    /// Free bytes on it.
    pub fs_free: u64,
    /// Corrupt copies found and taken out of service since the store was created.
    pub quarantined: u64,
    /// Mutable records.
    pub records: u64,
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segment files removed.
    pub segments_removed: u64,
    /// Live objects copied forward out of them.
    pub objects_moved: u64,
    /// Disk bytes given back.
    pub bytes_freed: u64,
}

/// One host's object store (see the module docs). Cheap to share: all methods take `&self`
/// and may be called from many threads at once; concurrent puts are committed together.
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// Open (creating if empty) the store in `dir`, replaying the log tail after a crash.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<LocalStore> {
        let _ = options;
        todo!("{}", dir.display())
    }

    /// The largest object it accepts.
    pub fn max_object(&self) -> u64 {
        todo!()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Store one object; returns once it is durable. Refuses content that does not hash to
    /// the claimed id, objects over the limit, and writes that would fill the disk.
    pub fn put(&self, object: PutObject) -> Result<PutOutcome> {
        let _ = object;
        todo!()
    }

    /// Store several objects with one commit; one result per object, in order.
    pub fn put_many(&self, objects: Vec<PutObject>) -> Vec<Result<PutOutcome>> {
        let _ = objects;
        todo!()
    }

    /// The whole object, verified against its id. A corrupt copy is quarantined (taken out
    /// of the index, recorded) and reported as `Corrupt`; never served.
    pub fn get(&self, id: &ObjectId) -> Result<Bytes> {
        let _ = id;
        todo!()
    }

    /// `count` bytes at `offset` of the object (fewer at its end), and its total size;
    /// verified like [`get`](Self::get).
    pub fn get_range(&self, id: &ObjectId, offset: u64, count: u64) -> Result<(u64, Bytes)> {
        let _ = (id, offset, count);
        todo!()
    }

    /// Whether each object is here.
    pub fn has(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        let _ = ids;
        todo!()
    }

    /// What the index knows of the object, if it is here.
    pub fn info(&self, id: &ObjectId) -> Result<Option<ObjectInfo>> {
        let _ = id;
        todo!()
    }

    /// The objects it refers to (empty if none or not here).
    pub fn refs(&self, id: &ObjectId) -> Result<Vec<ObjectId>> {
        let _ = id;
        todo!()
    }

    /// Up to `max` objects in id order, starting after `after`.
    pub fn list(&self, after: Option<&ObjectId>, max: usize) -> Result<Vec<ObjectInfo>> {
        let _ = (after, max);
        todo!()
    }

    /// GC's sweep: drop the listed objects whose stamp is older than `cutoff` (seconds since
    /// the epoch); returns how many were dropped. Their space is given back by
    /// [`compact`](Self::compact).
    pub fn delete(&self, ids: &[ObjectId], cutoff: u64) -> Result<u64> {
        let _ = (ids, cutoff);
        todo!()
    }

    /// Rewrite sealed segments that are mostly dead; returns what was reclaimed.
    pub fn compact(&self) -> Result<CompactReport> {
        todo!()
    }

    /// Re-hash every object; corrupt copies are quarantined and returned.
    pub fn scrub(&self, progress: &ScrubProgress) -> Result<Vec<ObjectId>> {
        let _ = progress;
        todo!()
    }

    /// A record, if it exists.
    pub fn record(&self, name: &str) -> Result<Option<Record>> {
        let _ = name;
        todo!()
    }

    /// Every record, by name.
    pub fn records(&self) -> Result<Vec<(String, Record)>> {
        todo!()
    }

    /// Compare-and-set: write `value`/`refs` as version `expected + 1` if the record is at
    /// version `expected` (0: absent); else `Conflict` with the current version. Durable on
    /// return.
    pub fn cas_record(
        &self,
        name: &str,
        expected: u64,
        value: Bytes,
        refs: Vec<ObjectId>,
    ) -> Result<u64> {
        let _ = (name, expected, value, refs);
        todo!()
    }

    /// Replication and repair: store `record` if it is newer than the local version.
    /// Returns whether it was stored. Durable on return.
    pub fn store_record(&self, name: &str, record: Record) -> Result<bool> {
        let _ = (name, record);
        todo!()
    }

    /// Usage figures.
    pub fn stats(&self) -> Result<LocalStats> {
        todo!()
    }

    /// Where the object's content lies on disk: the segment file and the byte offset of its
    /// first byte (for tools and fault-injection tests).
    pub fn locate(&self, id: &ObjectId) -> Result<Option<(PathBuf, u64)>> {
        let _ = id;
        todo!()
    }
}
