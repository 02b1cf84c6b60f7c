//! The local store: one host's objects on its own disk.
//!
//! Immutable objects, named by the BLAKE3 hash of their content, are appended to segment files
//! (a checksummed log) and found through an index in redb; every read re-hashes the bytes
//! before they are served. A few mutable records (image roots, log heads) live beside them in
//! a small redb database of their own, versioned with compare-and-set. Crash safety: an object
//! is acknowledged only once its bytes are fsync'd in a segment; the index is rebuilt from the
//! log's tail after a crash; a record write is acknowledged once its commit is durable. The
//! on-disk format is documented in docs/objstore.md.

mod cache;
mod files;
mod format;
mod index;
mod maint;
mod recover;
mod shared;
mod writer;

use std::fs::OpenOptions;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::{ObjectId, Result, StoreError};
use cache::VerifiedCache;
use index::Location;
use shared::Shared;
pub(crate) use shared::now_secs;
use writer::{Request, Writer};

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
    /// Its id: the content's hash, computed here ([`PutObject::new`]) or claimed by whoever
    /// sent it ([`PutObject::claimed`]), which the store checks.
    pub(crate) id: ObjectId,
    /// The content.
    pub(crate) data: Bytes,
    /// Objects this one refers to (its children in a tree): followed by GC's mark phase.
    pub(crate) refs: Vec<ObjectId>,
    /// The id was computed from the data in this process: the store need not hash it again.
    hashed: bool,
}

impl PutObject {
    /// An object named by its content's hash (computed here, once).
    pub fn new(data: Bytes, refs: Vec<ObjectId>) -> PutObject {
        PutObject {
            id: ObjectId::of(&data),
            data,
            refs,
            hashed: true,
        }
    }

    /// An object whose id someone else claims (a peer, a client, a replica's copy): the
    /// store hashes the content and refuses it if the claim is false.
    pub fn claimed(id: ObjectId, data: Bytes, refs: Vec<ObjectId>) -> PutObject {
        PutObject {
            id,
            data,
            refs,
            hashed: false,
        }
    }

    /// Its id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Its content.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The objects it refers to.
    pub fn refs(&self) -> &[ObjectId] {
        &self.refs
    }

    /// Whether the id was computed from the data in this process.
    pub(crate) fn is_hashed(&self) -> bool {
        self.hashed
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
///
/// Deleting a record writes a *tombstone*: a version with no value and no refs. It is kept
/// (it is small) so that the newest-version-wins rule that brings stale replicas up to date
/// also deletes their copies, instead of an old copy bringing the record back.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// Starts at 1 for the first write, +1 per write (a deletion included).
    pub version: u64,
    /// The value.
    pub value: Bytes,
    /// Objects this record refers to: the roots of GC's mark phase.
    pub refs: Vec<ObjectId>,
    /// This version is a tombstone: the record was deleted.
    pub deleted: bool,
}

impl Record {
    /// The tombstone of a record deleted at `version`.
    pub fn tombstone(version: u64) -> Record {
        Record {
            version,
            deleted: true,
            ..Record::default()
        }
    }
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
    shared: Arc<Shared>,
    /// Queue of the writer thread.
    tx: mpsc::Sender<Request>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// Largest record value (value plus refs), in bytes.
const MAX_RECORD: u64 = 1 << 20;
/// Longest record name, in bytes.
const MAX_RECORD_NAME: usize = 1024;
/// Objects read per index transaction by scans (list, scrub, compaction).
const SCAN_BATCH: usize = 1024;
/// Cache size of the redb index.
const INDEX_CACHE: usize = 256 << 20;
/// Cache size of the records database.
const RECORDS_CACHE: usize = 16 << 20;

impl LocalStore {
    /// Open (creating if empty) the store in `dir`, replaying the log tail after a crash.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<LocalStore> {
        let sdir = files::segments_dir(dir);
        std::fs::create_dir_all(&sdir)
            .map_err(|e| StoreError::io(format!("create store directory {}", sdir.display()), e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| StoreError::io(format!("open lock file {}", lock_path.display()), e))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(StoreError::Refused(format!(
                    "store {} is in use by another process (its LOCK file is locked): \
                     stop the other user or open another directory",
                    dir.display()
                )));
            }
            Err(e) => {
                return Err(StoreError::io(
                    format!("lock {}", lock_path.display()),
                    std::io::Error::from(e),
                ));
            }
        }
        files::sync_dir(dir)?;

        let index_path = dir.join("index.redb");
        let db = open_db(
            &index_path,
            INDEX_CACHE,
            "the object index can be rebuilt from the segments by moving index.redb aside \
             (the quarantine list lives only in the index)",
        )?;
        init_index(&db, dir, &index_path)?;
        let records_path = dir.join("records.redb");
        let records = open_db(
            &records_path,
            RECORDS_CACHE,
            "the mutable records live only in records.redb: restore it from a copy (moving \
             it aside starts the store with no records)",
        )?;
        init_records(&records, &records_path, &db, &index_path)?;

        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            index_path,
            options,
            db,
            records_path,
            records,
            files: files::SegmentFiles::default(),
            cache: VerifiedCache::new(shared::CACHE_BYTES),
            active_seq: AtomicU64::new(0),
            compacting: Mutex::new(()),
            #[cfg(test)]
            fail_next_append: AtomicBool::new(false),
            _lock: lock,
        });
        let active = recover::recover(&shared)?;
        shared.files.insert(active.seq, active.file.clone());
        shared.active_seq.store(active.seq, Ordering::SeqCst);

        let (tx, rx) = mpsc::channel();
        let w = Writer::new(shared.clone(), rx, active);
        let writer = std::thread::Builder::new()
            .name("objstore-writer".to_owned())
            .spawn(move || w.run())
            .map_err(|e| StoreError::io("start the store's writer thread", e))?;
        Ok(LocalStore {
            dir: dir.to_owned(),
            shared,
            tx,
            writer: Some(writer),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Store one object; returns once it is durable. Refuses content that does not hash to
    /// the claimed id, objects over the limit, and writes that would fill the disk.
    pub fn put(&self, object: PutObject) -> Result<PutOutcome> {
        self.put_many(vec![object])
            .pop()
            .unwrap_or_else(|| Err(StoreError::Refused("put gave no answer".to_owned())))
    }

    /// Store several objects with one commit; one result per object, in order.
    pub fn put_many(&self, objects: Vec<PutObject>) -> Vec<Result<PutOutcome>> {
        let max = self.max_object();
        let mut results: Vec<Option<Result<PutOutcome>>> = Vec::with_capacity(objects.len());
        let mut queued = Vec::new();
        for o in objects {
            let size = o.data.len() as u64;
            if size > max {
                results.push(Some(Err(StoreError::TooLarge { size, max })));
            } else if o.refs.len() > format::MAX_REFS as usize {
                results.push(Some(Err(StoreError::Refused(format!(
                    "object {} has {} refs; at most {} are kept",
                    o.id,
                    o.refs.len(),
                    format::MAX_REFS
                )))));
            } else {
                let actual = if o.hashed {
                    o.id
                } else {
                    ObjectId::of(&o.data)
                };
                if actual != o.id {
                    results.push(Some(Err(StoreError::HashMismatch {
                        claimed: o.id,
                        actual,
                    })));
                } else {
                    results.push(None);
                    queued.push(o);
                }
            }
        }
        if !queued.is_empty() {
            let n = queued.len();
            let answers = self
                .submit(|reply| Request::Put {
                    objects: queued,
                    reply,
                })
                .unwrap_or_else(|e| (0..n).map(|_| Err(writer::echo(&e))).collect());
            let mut answers = answers.into_iter();
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                *slot =
                    Some(answers.next().unwrap_or_else(|| {
                        Err(StoreError::Refused("put gave no answer".to_owned()))
                    }));
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Refused("put gave no answer".to_owned()))))
            .collect()
    }

    /// The whole object, verified against its id. A corrupt copy is quarantined (taken out
    /// of the index, recorded) and reported as `Corrupt`; never served.
    pub fn get(&self, id: &ObjectId) -> Result<Bytes> {
        if self.shared.lookup(id)?.is_none() {
            return Err(StoreError::NotFound(*id));
        }
        if let Some(data) = self.shared.cache.get(id) {
            return Ok(data);
        }
        self.shared.read_verified(id)
    }

    /// `count` bytes at `offset` of the object (fewer at its end), and its total size;
    /// verified like [`get`](Self::get).
    pub fn get_range(&self, id: &ObjectId, offset: u64, count: u64) -> Result<(u64, Bytes)> {
        let loc = self.shared.lookup(id)?.ok_or(StoreError::NotFound(*id))?;
        if offset > loc.len {
            return Err(StoreError::BadRange {
                id: *id,
                offset,
                count,
                size: loc.len,
            });
        }
        let data = match self.shared.cache.get(id) {
            Some(d) => d,
            None => {
                let d = self.shared.read_verified(id)?;
                // Keep it for the next range unless this one took it all.
                if offset > 0 || count < loc.len {
                    self.shared.cache.insert(*id, d.clone());
                }
                d
            }
        };
        let size = data.len() as u64;
        let start = offset.min(size);
        let end = offset.saturating_add(count).min(size);
        Ok((size, data.slice(start as usize..end as usize)))
    }

    /// Whether each object is here.
    pub fn has(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        let sh = &self.shared;
        let txn = sh.db.begin_read().map_err(|e| sh.ix(e))?;
        let table = txn.open_table(index::OBJECTS).map_err(|e| sh.ix(e))?;
        ids.iter()
            .map(|id| Ok(table.get(id.as_bytes()).map_err(|e| sh.ix(e))?.is_some()))
            .collect()
    }

    /// What the index knows of the object, if it is here.
    pub fn info(&self, id: &ObjectId) -> Result<Option<ObjectInfo>> {
        Ok(self.shared.lookup(id)?.map(|l| ObjectInfo {
            id: *id,
            size: l.len,
            stamp: l.stamp,
        }))
    }

    /// The objects it refers to (empty if none or not here).
    pub fn refs(&self, id: &ObjectId) -> Result<Vec<ObjectId>> {
        let sh = &self.shared;
        let txn = sh.db.begin_read().map_err(|e| sh.ix(e))?;
        let table = txn.open_table(index::REFS).map_err(|e| sh.ix(e))?;
        let refs = table.get(id.as_bytes()).map_err(|e| sh.ix(e))?;
        Ok(refs
            .map(|g| format::decode_refs(g.value()))
            .unwrap_or_default())
    }

    /// Up to `max` objects in id order, starting after `after`.
    pub fn list(&self, after: Option<&ObjectId>, max: usize) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .locations(after, max)?
            .into_iter()
            .map(|(id, l)| ObjectInfo {
                id,
                size: l.len,
                stamp: l.stamp,
            })
            .collect())
    }

    /// GC's sweep: drop the listed objects whose stamp is older than `cutoff` (seconds since
    /// the epoch); returns how many were dropped. Their space is given back by
    /// [`compact`](Self::compact).
    pub fn delete(&self, ids: &[ObjectId], cutoff: u64) -> Result<u64> {
        let sh = &self.shared;
        let txn = sh.db.begin_write().map_err(|e| sh.ix(e))?;
        let mut dropped = 0u64;
        {
            let mut objects = txn.open_table(index::OBJECTS).map_err(|e| sh.ix(e))?;
            let mut refs = txn.open_table(index::REFS).map_err(|e| sh.ix(e))?;
            let mut segments = txn.open_table(index::SEGMENTS).map_err(|e| sh.ix(e))?;
            let mut bytes_dropped = 0u64;
            for id in ids {
                let Some(loc) = index::lookup(&objects, id, &sh.index_path)? else {
                    continue;
                };
                if loc.stamp >= cutoff {
                    continue;
                }
                objects.remove(id.as_bytes()).map_err(|e| sh.ix(e))?;
                refs.remove(id.as_bytes()).map_err(|e| sh.ix(e))?;
                index::segment_add(
                    &mut segments,
                    loc.seq,
                    -i128::from(loc.record),
                    None,
                    &sh.index_path,
                )?;
                bytes_dropped += loc.len;
                dropped += 1;
            }
            if bytes_dropped > 0 {
                let mut meta = txn.open_table(index::META).map_err(|e| sh.ix(e))?;
                let bytes = index::meta_get(&meta, index::META_BYTES, &sh.index_path)?;
                meta.insert(index::META_BYTES, bytes.saturating_sub(bytes_dropped))
                    .map_err(|e| sh.ix(e))?;
            }
        }
        txn.commit().map_err(|e| sh.ix(e))?;
        for id in ids {
            sh.cache.remove(id);
        }
        Ok(dropped)
    }

    /// Rewrite sealed segments that are mostly dead; returns what was reclaimed.
    pub fn compact(&self) -> Result<CompactReport> {
        maint::compact(self)
    }

    /// Re-hash every object; corrupt copies are quarantined and returned.
    pub fn scrub(&self, progress: &ScrubProgress) -> Result<Vec<ObjectId>> {
        maint::scrub(self, progress)
    }

    /// A record, if it exists (a deleted record does not).
    pub fn record(&self, name: &str) -> Result<Option<Record>> {
        Ok(self.record_copy(name)?.filter(|r| !r.deleted))
    }

    /// This host's copy of a record, a tombstone included (what replication compares).
    pub fn record_copy(&self, name: &str) -> Result<Option<Record>> {
        let sh = &self.shared;
        let txn = sh.records.begin_read().map_err(|e| sh.rx(e))?;
        let table = txn.open_table(index::RECORDS).map_err(|e| sh.rx(e))?;
        read_record(&table, name, &sh.records_path)
    }

    /// Every record, by name (deleted ones left out).
    pub fn records(&self) -> Result<Vec<(String, Record)>> {
        let mut all = self.record_copies()?;
        all.retain(|(_, r)| !r.deleted);
        Ok(all)
    }

    /// Every record this host has a copy of, tombstones included, by name.
    pub fn record_copies(&self) -> Result<Vec<(String, Record)>> {
        let sh = &self.shared;
        let txn = sh.records.begin_read().map_err(|e| sh.rx(e))?;
        let table = txn.open_table(index::RECORDS).map_err(|e| sh.rx(e))?;
        read_records(&table, &sh.records_path)
    }

    /// Compare-and-set: write `value`/`refs` if the record is at version `expected` (0:
    /// absent, or deleted); else `Conflict` with the current version. Returns the new version:
    /// `expected + 1`, or one past a deleted record's tombstone. Durable on return.
    pub fn cas_record(
        &self,
        name: &str,
        expected: u64,
        value: Bytes,
        refs: Vec<ObjectId>,
    ) -> Result<u64> {
        let mut v = self.cas_records(vec![(name.to_owned(), expected, value, refs)])?;
        v.pop()
            .ok_or_else(|| StoreError::Refused("compare-and-set gave no answer".to_owned()))
    }

    /// Several compare-and-sets as one durable transaction: all are written, or none (the
    /// first whose record is not at its expected version is the `Conflict`). The new
    /// versions, in order. One commit, so one sync, whatever their number (an image's
    /// snapshot moves the image's record and writes the snapshot's together).
    pub fn cas_records(
        &self,
        writes: Vec<(String, u64, Bytes, Vec<ObjectId>)>,
    ) -> Result<Vec<u64>> {
        for (name, _, value, refs) in &writes {
            check_record(name, value, refs)?;
        }
        let sh = &self.shared;
        let txn = sh.records.begin_write().map_err(|e| sh.rx(e))?;
        let mut versions = Vec::with_capacity(writes.len());
        {
            let mut table = txn.open_table(index::RECORDS).map_err(|e| sh.rx(e))?;
            for (name, expected, value, refs) in writes {
                let copy = read_record(&table, &name, &sh.records_path)?;
                let current = live_version(copy.as_ref());
                if current != expected {
                    // Dropping the transaction uncommitted writes none of them.
                    return Err(StoreError::Conflict {
                        name,
                        expected,
                        current,
                    });
                }
                let version = next_version(&name, copy.as_ref())?;
                let enc = index::encode_record(&Record {
                    version,
                    value,
                    refs,
                    deleted: false,
                });
                table
                    .insert(name.as_str(), &enc[..])
                    .map_err(|e| sh.rx(e))?;
                versions.push(version);
            }
        }
        txn.commit().map_err(|e| sh.rx(e))?;
        Ok(versions)
    }

    /// Delete a record at version `expected` (compare-and-set, like a write): a tombstone
    /// takes its place as version `expected + 1`, returned. `Conflict` if the record is not at
    /// `expected` (a missing or deleted record is at 0). Durable on return.
    pub fn delete_record(&self, name: &str, expected: u64) -> Result<u64> {
        check_record(name, &[], &[])?;
        let sh = &self.shared;
        let txn = sh.records.begin_write().map_err(|e| sh.rx(e))?;
        let version;
        {
            let mut table = txn.open_table(index::RECORDS).map_err(|e| sh.rx(e))?;
            let copy = read_record(&table, name, &sh.records_path)?;
            let current = live_version(copy.as_ref());
            if current != expected || current == 0 {
                return Err(StoreError::Conflict {
                    name: name.to_owned(),
                    expected,
                    current,
                });
            }
            version = next_version(name, copy.as_ref())?;
            let enc = index::encode_record(&Record::tombstone(version));
            table.insert(name, &enc[..]).map_err(|e| sh.rx(e))?;
        }
        txn.commit().map_err(|e| sh.rx(e))?;
        Ok(version)
    }

    /// Replication and repair: store `record` (a tombstone too) if it is newer than this
    /// host's copy. Returns whether it was stored. Durable on return.
    pub fn store_record(&self, name: &str, record: Record) -> Result<bool> {
        check_record(name, &record.value, &record.refs)?;
        let sh = &self.shared;
        let txn = sh.records.begin_write().map_err(|e| sh.rx(e))?;
        {
            let mut table = txn.open_table(index::RECORDS).map_err(|e| sh.rx(e))?;
            let current = read_record(&table, name, &sh.records_path)?.map_or(0, |r| r.version);
            if record.version <= current {
                return Ok(false);
            }
            let enc = index::encode_record(&record);
            table.insert(name, &enc[..]).map_err(|e| sh.rx(e))?;
        }
        txn.commit().map_err(|e| sh.rx(e))?;
        Ok(true)
    }

    /// Usage figures.
    pub fn stats(&self) -> Result<LocalStats> {
        let sh = &self.shared;
        let txn = sh.db.begin_read().map_err(|e| sh.ix(e))?;
        let objects = txn.open_table(index::OBJECTS).map_err(|e| sh.ix(e))?;
        let meta = txn.open_table(index::META).map_err(|e| sh.ix(e))?;
        let segments = txn.open_table(index::SEGMENTS).map_err(|e| sh.ix(e))?;
        let quarantine = txn.open_table(index::QUARANTINE).map_err(|e| sh.ix(e))?;
        let records_txn = sh.records.begin_read().map_err(|e| sh.rx(e))?;
        let records = records_txn
            .open_table(index::RECORDS)
            .map_err(|e| sh.rx(e))?;
        let mut disk_bytes = 0u64;
        for row in segments.iter().map_err(|e| sh.ix(e))? {
            let (_, v) = row.map_err(|e| sh.ix(e))?;
            disk_bytes += v.value().1;
        }
        let (fs_total, fs_free) = files::fs_space(&sh.dir)?;
        Ok(LocalStats {
            objects: objects.len().map_err(|e| sh.ix(e))?,
            bytes: index::meta_get(&meta, index::META_BYTES, &sh.index_path)?,
            disk_bytes,
            fs_total,
            fs_free,
            quarantined: quarantine.len().map_err(|e| sh.ix(e))?,
            records: records.len().map_err(|e| sh.rx(e))?,
        })
    }

    /// Where the object's content lies on disk: the segment file and the byte offset of its
    /// first byte (for tools and fault-injection tests).
    pub fn locate(&self, id: &ObjectId) -> Result<Option<(PathBuf, u64)>> {
        Ok(self
            .shared
            .lookup(id)?
            .map(|l| (files::segment_path(&self.dir, l.seq), l.offset)))
    }

    // ---- private helpers ----

    /// The largest object it accepts (the configured limit, at most what the record
    /// format's 32-bit length field holds).
    pub fn max_object(&self) -> u64 {
        self.shared.options.max_object.min(u64::from(u32::MAX))
    }

    /// Queue a request for the writer and wait for its answer.
    fn submit<T>(&self, make: impl FnOnce(mpsc::SyncSender<T>) -> Request) -> Result<T> {
        let stopped = || {
            StoreError::Refused(format!(
                "store {}: its writer thread has stopped",
                self.dir.display()
            ))
        };
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx.send(make(reply)).map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())
    }

    /// Up to `max` index entries in id order after `after`.
    fn locations(&self, after: Option<&ObjectId>, max: usize) -> Result<Vec<(ObjectId, Location)>> {
        let sh = &self.shared;
        let txn = sh.db.begin_read().map_err(|e| sh.ix(e))?;
        let table = txn.open_table(index::OBJECTS).map_err(|e| sh.ix(e))?;
        let lower = match after {
            Some(a) => Bound::Excluded(a.as_bytes()),
            None => Bound::Unbounded,
        };
        let range = table
            .range::<&[u8; 32]>((lower, Bound::Unbounded))
            .map_err(|e| sh.ix(e))?;
        let mut out = Vec::new();
        for row in range.take(max) {
            let (k, v) = row.map_err(|e| sh.ix(e))?;
            let id = ObjectId(*k.value());
            let loc = Location::decode(v.value())
                .ok_or_else(|| index::damaged(&sh.index_path, format!("object {id}")))?;
            out.push((id, loc));
        }
        Ok(out)
    }
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        // The writer commits the index durably (checkpoint at the log's end) and stops.
        let _ = self.tx.send(Request::Shutdown);
        if let Some(w) = self.writer.take()
            && w.join().is_err()
        {
            tracing::error!(dir = %self.dir.display(), "the store's writer thread panicked");
        }
    }
}

/// Open (or create) the index or the records database, refusing a damaged one with an error
/// (with `advice`) rather than a panic.
fn open_db(path: &Path, cache: usize, advice: &str) -> Result<redb::Database> {
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
        redb::Builder::new()
            .set_cache_size(cache)
            .set_check_integrity_on_open(true)
            .create(path)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::Index {
            path: path.to_owned(),
            message: "already open (in use by another process)".to_owned(),
        }),
        Ok(Err(e)) => Err(StoreError::Index {
            path: path.to_owned(),
            message: format!("cannot open: {e}; {advice}"),
        }),
        Err(_) => Err(StoreError::Index {
            path: path.to_owned(),
            message: format!("damaged (opening it failed inside redb); {advice}"),
        }),
    }
}

/// Create the tables and check the index format.
fn init_index(db: &redb::Database, dir: &Path, path: &Path) -> Result<()> {
    let ix = |e: redb::Error| index::index_err(path, e);
    let txn = db.begin_write().map_err(|e| ix(e.into()))?;
    {
        txn.open_table(index::OBJECTS).map_err(|e| ix(e.into()))?;
        txn.open_table(index::REFS).map_err(|e| ix(e.into()))?;
        txn.open_table(index::SEGMENTS).map_err(|e| ix(e.into()))?;
        txn.open_table(index::QUARANTINE)
            .map_err(|e| ix(e.into()))?;
        let mut meta = txn.open_table(index::META).map_err(|e| ix(e.into()))?;
        match index::meta_get(&meta, index::META_FORMAT, path)? {
            0 => {
                meta.insert(index::META_FORMAT, index::INDEX_FORMAT)
                    .map_err(|e| ix(e.into()))?;
            }
            index::INDEX_FORMAT => {}
            other => {
                return Err(StoreError::Format {
                    dir: dir.to_owned(),
                    message: format!(
                        "index format version {other}; this build understands version {}",
                        index::INDEX_FORMAT
                    ),
                });
            }
        }
    }
    txn.commit().map_err(|e| ix(e.into()))
}

/// Create the records table, first moving in the records of a store whose index still holds
/// them (where they lived before `records.redb`): copied where newer than the copy here (so a
/// move a crash interrupted is simply done again), committed, then dropped from the index.
fn init_records(
    db: &redb::Database,
    path: &Path,
    index_db: &redb::Database,
    index_path: &Path,
) -> Result<()> {
    let ix = |e: redb::Error| index::index_err(index_path, e);
    let rx = |e: redb::Error| index::index_err(path, e);
    let old: Option<Vec<(String, Record)>> = {
        let txn = index_db.begin_read().map_err(|e| ix(e.into()))?;
        match txn.open_table(index::RECORDS) {
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(ix(e.into())),
            Ok(table) => Some(read_records(&table, index_path)?),
        }
    };
    let txn = db.begin_write().map_err(|e| rx(e.into()))?;
    {
        let mut table = txn.open_table(index::RECORDS).map_err(|e| rx(e.into()))?;
        for (name, rec) in old.iter().flatten() {
            let here = read_record(&table, name, path)?.map_or(0, |r| r.version);
            if rec.version > here {
                table
                    .insert(name.as_str(), &index::encode_record(rec)[..])
                    .map_err(|e| rx(e.into()))?;
            }
        }
    }
    txn.commit().map_err(|e| rx(e.into()))?;
    if let Some(rows) = old {
        let txn = index_db.begin_write().map_err(|e| ix(e.into()))?;
        txn.delete_table(index::RECORDS).map_err(|e| ix(e.into()))?;
        txn.commit().map_err(|e| ix(e.into()))?;
        tracing::info!(
            records = rows.len(),
            "moved the records out of the index into records.redb"
        );
    }
    Ok(())
}

/// Refuse unusable record names and oversized values.
fn check_record(name: &str, value: &[u8], refs: &[ObjectId]) -> Result<()> {
    if name.is_empty() || name.len() > MAX_RECORD_NAME {
        return Err(StoreError::Refused(format!(
            "record name {name:?}: must be 1 to {MAX_RECORD_NAME} bytes"
        )));
    }
    let size = value.len() as u64 + refs.len() as u64 * 32;
    if size > MAX_RECORD {
        return Err(StoreError::TooLarge {
            size,
            max: MAX_RECORD,
        });
    }
    Ok(())
}

/// This host's copy of a record, a tombstone included.
fn read_record(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
    path: &Path,
) -> Result<Option<Record>> {
    match table.get(name).map_err(|e| index::index_err(path, e))? {
        None => Ok(None),
        Some(g) => index::decode_record(g.value())
            .map(Some)
            .ok_or_else(|| index::damaged(path, format!("record {name:?}"))),
    }
}

/// Every record in a records table (of the database at `path`), tombstones included.
fn read_records(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &Path,
) -> Result<Vec<(String, Record)>> {
    let mut out = Vec::new();
    for row in table.iter().map_err(|e| index::index_err(path, e))? {
        let (k, v) = row.map_err(|e| index::index_err(path, e))?;
        let name = k.value().to_owned();
        let rec = index::decode_record(v.value())
            .ok_or_else(|| index::damaged(path, format!("record {name:?}")))?;
        out.push((name, rec));
    }
    Ok(out)
}

/// The version a compare-and-set must expect: the copy's, 0 if absent or deleted.
fn live_version(copy: Option<&Record>) -> u64 {
    copy.filter(|r| !r.deleted).map_or(0, |r| r.version)
}

/// The version the next write of a record gets: one past its copy's (a tombstone's too, so
/// that a record created again outranks its deletion everywhere).
fn next_version(name: &str, copy: Option<&Record>) -> Result<u64> {
    let current = copy.map_or(0, |r| r.version);
    current.checked_add(1).ok_or_else(|| {
        StoreError::Refused(format!("record {name:?}: version {current} cannot grow"))
    })
}

#[cfg(test)]
mod tests;
