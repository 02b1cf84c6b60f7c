//! The writer thread: the only code that appends to segments or adds objects to the index.
//!
//! Callers hash and check their objects on their own threads, then queue them here and wait.
//! The writer takes everything queued (up to [`BATCH_BYTES`]) as one group commit: in one
//! redb write transaction it sorts out objects already present (refreshing their stamps) and
//! duplicates within the batch, checks free space, appends all new records with vectored
//! positional writes (the payloads are not copied), `fdatasync`s the segment, records the
//! index entries and the new checkpoint, commits and answers. Index commits are
//! non-durable ([`Durability::None`]) except every [`DURABLE_BYTES`] or
//! [`DURABLE_INTERVAL`], on request, and for compaction's moves: the log, replayed from the
//! last durable checkpoint on open, is what makes an acknowledged put durable.
//!
//! A failed append (a full disk) is cut off again (`set_len` to the last good offset) and
//! reported to the puts it concerned; the store stays usable.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::Durability;

use super::files::{create_segment, fs_space, is_enospc, pwrite_all_vectored, segment_path};
use super::format::{FILE_HEADER_LEN, encode_record_head, record_len};
use super::index::{self, Location};
use super::shared::{Shared, now_secs};
use super::{PutObject, PutOutcome};
use crate::{ObjectId, Result, StoreError};

/// Most payload bytes taken into one group commit (a single larger request is still taken).
pub(crate) const BATCH_BYTES: u64 = 64 << 20;
/// Appended bytes after which the index commit is made durable.
pub(crate) const DURABLE_BYTES: u64 = 256 << 20;
/// Time after which pending non-durable index commits are made durable.
pub(crate) const DURABLE_INTERVAL: Duration = Duration::from_secs(2);

/// An object compaction copies forward out of a dying segment.
#[derive(Debug)]
pub(crate) struct MoveItem {
    /// The object.
    pub id: ObjectId,
    /// Its verified content.
    pub data: Bytes,
    /// Its refs (written into the new record: the log carries them).
    pub refs: Vec<ObjectId>,
    /// Where compaction found it: the move happens only if the index still says so.
    pub old: Location,
}

/// Work for the writer.
pub(crate) enum Request {
    /// Store verified objects; one result per object.
    Put {
        objects: Vec<PutObject>,
        reply: SyncSender<Vec<Result<PutOutcome>>>,
    },
    /// Copy objects forward (compaction); answers how many moved. Committed durably.
    Move {
        items: Vec<MoveItem>,
        reply: SyncSender<Result<u64>>,
    },
    /// Commit durably and stop.
    Shutdown,
}

impl Request {
    fn payload_bytes(&self) -> u64 {
        match self {
            Request::Put { objects, .. } => objects.iter().map(|o| o.data.len() as u64).sum(),
            Request::Move { items, .. } => items.iter().map(|m| m.data.len() as u64).sum(),
            Request::Shutdown => 0,
        }
    }
}

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct Active {
    /// Its sequence number.
    pub seq: u64,
    /// Its file (read-write).
    pub file: Arc<File>,
    /// Where the next record goes (everything before is fsync'd).
    pub offset: u64,
}

/// One record to append.
struct Write<'a> {
    id: ObjectId,
    data: &'a Bytes,
    refs: &'a [ObjectId],
    rec: u64,
    /// For a move: the entry as it is now (its stamp is kept, its old segment loses the
    /// live bytes).
    moved_from: Option<Location>,
}

/// What becomes of one put object in a batch.
enum Plan {
    Present,
    Write(usize),
    Dup(usize),
}

/// The writer thread's state.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<Request>,
    active: Active,
    /// Segments whose file length changed since the last commit: seq → length.
    touched: BTreeMap<u64, u64>,
    /// Bytes appended since the last durable commit.
    pending_bytes: u64,
    /// Non-durable commits since the last durable one.
    dirty: bool,
    last_durable: Instant,
}

impl Writer {
    /// A writer appending to `active`.
    pub fn new(shared: Arc<Shared>, rx: Receiver<Request>, active: Active) -> Writer {
        Writer {
            shared,
            rx,
            active,
            touched: BTreeMap::new(),
            pending_bytes: 0,
            dirty: false,
            last_durable: Instant::now(),
        }
    }

    /// Serve requests until `Shutdown` (or every sender is gone).
    pub fn run(mut self) {
        loop {
            let first = if self.dirty {
                let wait = DURABLE_INTERVAL.saturating_sub(self.last_durable.elapsed());
                match self.rx.recv_timeout(wait) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = self.durable_commit() {
                            tracing::error!(error = %e, "periodic durable index commit failed");
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            };
            let mut bytes = first.payload_bytes();
            let mut batch = vec![first];
            while bytes < BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(r) => {
                        bytes += r.payload_bytes();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            let shutdown = batch.iter().any(|r| matches!(r, Request::Shutdown));
            self.process(batch);
            if shutdown {
                break;
            }
        }
        if self.dirty
            && let Err(e) = self.durable_commit()
        {
            tracing::error!(error = %e, "final durable index commit failed");
        }
    }

    /// Commit the checkpoint durably (and with it every earlier non-durable commit).
    fn durable_commit(&mut self) -> Result<()> {
        let sh = self.shared.clone();
        let mut txn = sh.db.begin_write().map_err(|e| sh.ix(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| sh.ix(e))?;
        self.record_positions(&txn)?;
        txn.commit().map_err(|e| sh.ix(e))?;
        self.touched.clear();
        self.dirty = false;
        self.pending_bytes = 0;
        self.last_durable = Instant::now();
        Ok(())
    }

    /// Write the touched segments' lengths and the checkpoint into `txn`.
    fn record_positions(&self, txn: &redb::WriteTransaction) -> Result<()> {
        let sh = &self.shared;
        let mut segments = txn.open_table(index::SEGMENTS).map_err(|e| sh.ix(e))?;
        for (&seq, &len) in &self.touched {
            index::segment_add(&mut segments, seq, 0, Some(len), &sh.index_path)?;
        }
        let mut meta = txn.open_table(index::META).map_err(|e| sh.ix(e))?;
        meta.insert(index::META_CHECKPOINT_SEQ, self.active.seq)
            .map_err(|e| sh.ix(e))?;
        meta.insert(index::META_CHECKPOINT_OFFSET, self.active.offset)
            .map_err(|e| sh.ix(e))?;
        Ok(())
    }

    fn process(&mut self, batch: Vec<Request>) {
        let mut puts = Vec::new();
        let mut moves = Vec::new();
        for r in batch {
            match r {
                Request::Put { objects, reply } => puts.push((objects, reply)),
                Request::Move { items, reply } => moves.push((items, reply)),
                Request::Shutdown => {}
            }
        }
        let force_durable = !moves.is_empty();
        match self.commit_batch(&puts, &moves, force_durable) {
            Ok((put_results, move_results)) => {
                for ((objects, reply), results) in puts.into_iter().zip(put_results) {
                    // Let go of the data before answering: a caller that counts the memory
                    // its objects hold sees it free once answered.
                    drop(objects);
                    let _ = reply.send(results);
                }
                for ((_, reply), result) in moves.into_iter().zip(move_results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                for (objects, reply) in puts {
                    let answer = objects.iter().map(|_| Err(echo(&e))).collect();
                    drop(objects);
                    let _ = reply.send(answer);
                }
                for (_, reply) in moves {
                    let _ = reply.send(Err(echo(&e)));
                }
            }
        }
    }

    /// One group commit. On `Err` nothing of the batch is acknowledged (records already
    /// appended are harmless: they are valid objects, indexed again by replay at the latest).
    #[allow(clippy::type_complexity)]
    fn commit_batch(
        &mut self,
        puts: &[(Vec<PutObject>, SyncSender<Vec<Result<PutOutcome>>>)],
        moves: &[(Vec<MoveItem>, SyncSender<Result<u64>>)],
        force_durable: bool,
    ) -> Result<(Vec<Vec<Result<PutOutcome>>>, Vec<Result<u64>>)> {
        let sh = self.shared.clone();
        let ix = |e: redb::Error| sh.ix(e);
        let now = now_secs();
        let mut txn = sh.db.begin_write().map_err(|e| sh.ix(e))?;

        // Sort out what is already here, what is a duplicate, and what to write.
        let mut writes: Vec<Write<'_>> = Vec::new();
        let mut put_plans: Vec<Vec<Plan>> = Vec::with_capacity(puts.len());
        let mut move_plans: Vec<Vec<Option<usize>>> = Vec::with_capacity(moves.len());
        {
            let mut objects = txn.open_table(index::OBJECTS).map_err(|e| ix(e.into()))?;
            let mut seen: HashMap<ObjectId, usize> = HashMap::new();
            for (objs, _) in puts {
                let mut plans = Vec::with_capacity(objs.len());
                for o in objs {
                    if let Some(&w) = seen.get(&o.id) {
                        plans.push(Plan::Dup(w));
                    } else if let Some(mut loc) = index::lookup(&objects, &o.id, &sh.index_path)? {
                        if loc.stamp < now {
                            loc.stamp = now;
                            objects
                                .insert(o.id.as_bytes(), &loc.encode()[..])
                                .map_err(|e| ix(e.into()))?;
                        }
                        plans.push(Plan::Present);
                    } else {
                        seen.insert(o.id, writes.len());
                        plans.push(Plan::Write(writes.len()));
                        writes.push(Write {
                            id: o.id,
                            data: &o.data,
                            refs: &o.refs,
                            rec: record_len(o.data.len() as u64, o.refs.len() as u64),
                            moved_from: None,
                        });
                    }
                }
                put_plans.push(plans);
            }
            for (items, _) in moves {
                let mut plans = Vec::with_capacity(items.len());
                for m in items {
                    let current = index::lookup(&objects, &m.id, &sh.index_path)?;
                    match current {
                        Some(cur)
                            if cur.seq == m.old.seq
                                && cur.offset == m.old.offset
                                && !seen.contains_key(&m.id) =>
                        {
                            seen.insert(m.id, writes.len());
                            plans.push(Some(writes.len()));
                            writes.push(Write {
                                id: m.id,
                                data: &m.data,
                                refs: &m.refs,
                                rec: record_len(m.data.len() as u64, m.refs.len() as u64),
                                moved_from: Some(cur),
                            });
                        }
                        _ => plans.push(None),
                    }
                }
                move_plans.push(plans);
            }
        }

        // Free space: admit in order while the reserve stays untouched.
        let mut failures: HashMap<usize, StoreError> = HashMap::new();
        let mut admitted = Vec::with_capacity(writes.len());
        if !writes.is_empty() {
            let (_, free) = fs_space(&sh.dir)?;
            let reserve = sh.options.reserve;
            let mut need = 0u64;
            for (i, w) in writes.iter().enumerate() {
                // A new segment's header may be needed too.
                let cost = w.rec + FILE_HEADER_LEN;
                if free >= need.saturating_add(cost).saturating_add(reserve) {
                    need += cost;
                    admitted.push(i);
                } else {
                    failures.insert(
                        i,
                        StoreError::NoSpace {
                            dir: sh.dir.clone(),
                            needed: w.rec,
                            free: free.saturating_sub(need),
                            reserve,
                        },
                    );
                }
            }
        }

        // Append.
        let (placed, append_error) = self.append(&writes, &admitted);
        let mut placed_at: HashMap<usize, (u64, u64)> = HashMap::new();
        for &(wi, seq, off) in &placed {
            placed_at.insert(wi, (seq, off));
        }
        if let Some((e, first_failed)) = append_error {
            for &wi in &admitted[first_failed..] {
                failures.insert(wi, echo(&e));
            }
        }

        // Index.
        let mut appended = 0u64;
        {
            let mut objects = txn.open_table(index::OBJECTS).map_err(|e| ix(e.into()))?;
            let mut refs = txn.open_table(index::REFS).map_err(|e| ix(e.into()))?;
            let mut segments = txn.open_table(index::SEGMENTS).map_err(|e| ix(e.into()))?;
            let mut bytes_added = 0u64;
            for &(wi, seq, offset) in &placed {
                let w = &writes[wi];
                let loc = Location {
                    seq,
                    offset,
                    len: w.data.len() as u64,
                    stamp: w.moved_from.map_or(now, |c| c.stamp),
                    record: w.rec,
                };
                objects
                    .insert(w.id.as_bytes(), &loc.encode()[..])
                    .map_err(|e| ix(e.into()))?;
                index::segment_add(&mut segments, seq, i128::from(w.rec), None, &sh.index_path)?;
                match w.moved_from {
                    Some(old) => index::segment_add(
                        &mut segments,
                        old.seq,
                        -i128::from(old.record),
                        None,
                        &sh.index_path,
                    )?,
                    None => {
                        bytes_added += loc.len;
                        if !w.refs.is_empty() {
                            let mut b = Vec::with_capacity(w.refs.len() * 32);
                            for r in w.refs {
                                b.extend_from_slice(r.as_bytes());
                            }
                            refs.insert(w.id.as_bytes(), &b[..])
                                .map_err(|e| ix(e.into()))?;
                        }
                    }
                }
                appended += w.rec;
            }
            if bytes_added > 0 {
                let mut meta = txn.open_table(index::META).map_err(|e| ix(e.into()))?;
                let bytes = index::meta_get(&meta, index::META_BYTES, &sh.index_path)?;
                meta.insert(index::META_BYTES, bytes + bytes_added)
                    .map_err(|e| ix(e.into()))?;
            }
        }
        self.record_positions(&txn)?;
        self.pending_bytes += appended;
        let durable = force_durable
            || self.pending_bytes >= DURABLE_BYTES
            || self.last_durable.elapsed() >= DURABLE_INTERVAL;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| ix(e.into()))?;
        txn.commit().map_err(|e| ix(e.into()))?;
        self.touched.clear();
        if durable {
            self.dirty = false;
            self.pending_bytes = 0;
            self.last_durable = Instant::now();
        } else {
            self.dirty = true;
        }

        // Answers.
        let outcome_of = |wi: usize, fresh: bool| -> Result<PutOutcome> {
            if placed_at.contains_key(&wi) {
                Ok(if fresh {
                    PutOutcome::Stored
                } else {
                    PutOutcome::Present
                })
            } else {
                match failures.get(&wi) {
                    Some(e) => Err(echo(e)),
                    None => Err(StoreError::Refused("put was not written".to_owned())),
                }
            }
        };
        let put_results = put_plans
            .into_iter()
            .map(|plans| {
                plans
                    .into_iter()
                    .map(|p| match p {
                        Plan::Present => Ok(PutOutcome::Present),
                        Plan::Write(wi) => outcome_of(wi, true),
                        Plan::Dup(wi) => outcome_of(wi, false),
                    })
                    .collect()
            })
            .collect();
        let move_results = move_plans
            .into_iter()
            .map(|plans| {
                let mut moved = 0u64;
                for wi in plans.into_iter().flatten() {
                    if placed_at.contains_key(&wi) {
                        moved += 1;
                    } else if let Some(e) = failures.get(&wi) {
                        return Err(echo(e));
                    }
                }
                Ok(moved)
            })
            .collect();
        Ok((put_results, move_results))
    }

    /// Append the admitted writes (indices into `writes`), in runs that fit the segment size,
    /// each run one vectored write and one `fdatasync`. Returns where each written record's
    /// content lies, and the error that stopped the appends with the position (in
    /// `admitted`) of the first write it concerns.
    #[allow(clippy::type_complexity)]
    fn append(
        &mut self,
        writes: &[Write<'_>],
        admitted: &[usize],
    ) -> (Vec<(usize, u64, u64)>, Option<(StoreError, usize)>) {
        let seg_size = self.shared.options.segment_size;
        let mut placed = Vec::new();
        let mut i = 0;
        while i < admitted.len() {
            let first = &writes[admitted[i]];
            if self.active.offset > FILE_HEADER_LEN
                && self.active.offset.saturating_add(first.rec) > seg_size
                && let Err(e) = self.roll()
            {
                return (placed, Some((e, i)));
            }
            let start = self.active.offset;
            let mut heads: Vec<u8> = Vec::new();
            // (write index, head start, head end, content offset)
            let mut spans: Vec<(usize, usize, usize, u64)> = Vec::new();
            let mut pos = start;
            let mut j = i;
            while j < admitted.len() {
                let w = &writes[admitted[j]];
                if j > i && pos.saturating_add(w.rec) > seg_size {
                    break;
                }
                let hs = heads.len();
                let len = u32::try_from(w.data.len()).unwrap_or(u32::MAX);
                encode_record_head(&mut heads, &w.id, len, w.refs);
                let he = heads.len();
                spans.push((admitted[j], hs, he, pos + (he - hs) as u64));
                pos += w.rec;
                j += 1;
            }
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(spans.len() * 2);
            for &(wi, hs, he, _) in &spans {
                slices.push(IoSlice::new(&heads[hs..he]));
                if !writes[wi].data.is_empty() {
                    slices.push(IoSlice::new(&writes[wi].data[..]));
                }
            }
            let file = self.active.file.clone();
            #[cfg(test)]
            if self.shared.fail_next_append.swap(false, Ordering::SeqCst) {
                // Half the first piece reaches the file, then the disk is "full".
                let piece = &slices[0][..slices[0].len() / 2];
                let result = std::os::unix::fs::FileExt::write_all_at(&*file, piece, start)
                    .and_then(|()| Err::<(), _>(std::io::Error::from_raw_os_error(libc::ENOSPC)))
                    .map_err(|e| (e, "append"));
                slices.clear();
                if let Err(fault) = result {
                    return self.append_failed(&file, start, pos, fault, placed, i);
                }
            }
            let result = pwrite_all_vectored(&file, &mut slices, start)
                .map_err(|e| (e, "append"))
                .and_then(|()| {
                    file.sync_data()
                        .map_err(|e| (e, "fdatasync after appending"))
                });
            match result {
                Ok(()) => {
                    self.active.offset = pos;
                    self.touched.insert(self.active.seq, pos);
                    placed.extend(
                        spans
                            .iter()
                            .map(|&(wi, _, _, off)| (wi, self.active.seq, off)),
                    );
                    i = j;
                }
                Err(fault) => return self.append_failed(&file, start, pos, fault, placed, i),
            }
        }
        (placed, None)
    }

    /// Undo a failed append (cut the segment back to `start`) and say why it failed.
    #[allow(clippy::type_complexity)]
    fn append_failed(
        &self,
        file: &File,
        start: u64,
        end: u64,
        (e, what): (std::io::Error, &str),
        placed: Vec<(usize, u64, u64)>,
        first_failed: usize,
    ) -> (Vec<(usize, u64, u64)>, Option<(StoreError, usize)>) {
        let path = segment_path(&self.shared.dir, self.active.seq);
        // Cut the partial records off again: nothing partial stays in the log.
        if let Err(te) = file.set_len(start).and_then(|()| file.sync_data()) {
            tracing::error!(
                segment = %path.display(),
                offset = start,
                error = %te,
                "could not truncate a failed append (recovery will)"
            );
        }
        let err = if is_enospc(&e) {
            self.no_space(end - start)
        } else {
            StoreError::io(
                format!(
                    "{what} {} bytes at offset {start} of segment {}",
                    end - start,
                    path.display()
                ),
                e,
            )
        };
        (placed, Some((err, first_failed)))
    }

    fn no_space(&self, needed: u64) -> StoreError {
        StoreError::NoSpace {
            dir: self.shared.dir.clone(),
            needed,
            free: fs_space(&self.shared.dir).map(|s| s.1).unwrap_or(0),
            reserve: self.shared.options.reserve,
        }
    }

    /// Seal the active segment and start the next.
    fn roll(&mut self) -> Result<()> {
        let next = self.active.seq + 1;
        let file = match create_segment(&self.shared.dir, next) {
            Ok(f) => Arc::new(f),
            Err(StoreError::Io { source, .. }) if is_enospc(&source) => {
                return Err(self.no_space(FILE_HEADER_LEN));
            }
            Err(e) => return Err(e),
        };
        self.shared.files.insert(next, file.clone());
        self.touched.insert(self.active.seq, self.active.offset);
        self.touched.insert(next, FILE_HEADER_LEN);
        self.active = Active {
            seq: next,
            file,
            offset: FILE_HEADER_LEN,
        };
        self.shared.active_seq.store(next, Ordering::SeqCst);
        Ok(())
    }
}

/// The same error again, for a second caller (errors are not `Clone`).
pub(crate) fn echo(e: &StoreError) -> StoreError {
    match e {
        StoreError::NoSpace {
            dir,
            needed,
            free,
            reserve,
        } => StoreError::NoSpace {
            dir: dir.clone(),
            needed: *needed,
            free: *free,
            reserve: *reserve,
        },
        StoreError::Io { context, source } => StoreError::Io {
            context: context.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StoreError::Index { path, message } => StoreError::Index {
            path: path.clone(),
            message: message.clone(),
        },
        StoreError::Format { dir, message } => StoreError::Format {
            dir: dir.clone(),
            message: message.clone(),
        },
        StoreError::TooLarge { size, max } => StoreError::TooLarge {
            size: *size,
            max: *max,
        },
        other => StoreError::Refused(other.to_string()),
    }
}
