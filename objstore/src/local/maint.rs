//! Maintenance: compaction (giving back the space of deleted objects) and scrub (re-hashing
//! everything to find rot before a reader does).
//!
//! Compaction picks sealed segments whose live bytes are under half their size, finds their
//! live objects by a pass over the index (the per-segment counters only choose victims; the
//! pass decides what is live), reads and verifies each, and has the writer copy it forward
//! into the active segment; the writer moves an entry only if it still points at the old
//! copy, so deletes, quarantines and puts may run meanwhile. A segment is removed (index row
//! first, durably; then the file) once nothing points into it. Readers that looked up an old
//! location either read it from a still-open handle or, finding the file gone, look again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use redb::ReadableDatabase;

use super::files::{segment_path, segments_dir, sync_dir};
use super::index::{self, Location};
use super::shared::ReadFailure;
use super::writer::{BATCH_BYTES, MoveItem, Request};
use super::{CompactReport, LocalStore, SCAN_BATCH, ScrubProgress};
use crate::{ObjectId, Result, StoreError};

/// See [`LocalStore::compact`].
pub(crate) fn compact(store: &LocalStore) -> Result<CompactReport> {
    let sh = &store.shared;
    let _one = sh.compacting.lock().unwrap_or_else(|p| p.into_inner());
    let active = sh.active_seq.load(Ordering::SeqCst);

    // Candidates: sealed segments that are empty or less than half live.
    let mut candidates = BTreeSet::new();
    {
        let txn = sh.db.begin_read().map_err(|e| sh.ix(e))?;
        let segments = txn.open_table(index::SEGMENTS).map_err(|e| sh.ix(e))?;
        for row in segments.range(..active).map_err(|e| sh.ix(e))? {
            let (k, v) = row.map_err(|e| sh.ix(e))?;
            let (live, total) = v.value();
            if live.saturating_mul(2) < total {
                candidates.insert(k.value());
            }
        }
    }
    let mut report = CompactReport::default();
    if candidates.is_empty() {
        return Ok(report);
    }

    // Their live objects, from the index.
    let mut live: BTreeMap<u64, Vec<(ObjectId, Location)>> = BTreeMap::new();
    let mut after: Option<ObjectId> = None;
    loop {
        let batch = store.locations(after.as_ref(), SCAN_BATCH)?;
        let Some(last) = batch.last() else { break };
        after = Some(last.0);
        for (id, loc) in batch {
            if candidates.contains(&loc.seq) {
                live.entry(loc.seq).or_default().push((id, loc));
            }
        }
    }

    // Copy them forward.
    let mut moved_bytes = 0u64;
    let mut kept = BTreeSet::new();
    for objs in live.values_mut() {
        objs.sort_by_key(|(_, l)| l.offset);
        let mut items = Vec::new();
        let mut bytes = 0u64;
        for &(id, loc) in objs.iter() {
            let (data, actual) = match sh.read_at(&loc) {
                Ok(read) => read,
                Err(ReadFailure::Missing(detail)) => {
                    set_aside(store, &id, &loc, detail, &mut kept)?;
                    continue;
                }
                Err(ReadFailure::Io(e)) => return Err(e),
            };
            if actual != id {
                let detail = format!(
                    "segment {} offset {} hashes to {actual}",
                    segment_path(&sh.dir, loc.seq).display(),
                    loc.offset
                );
                set_aside(store, &id, &loc, detail, &mut kept)?;
                continue;
            }
            bytes += loc.len;
            items.push(MoveItem {
                id,
                data: Bytes::from(data),
                refs: store.refs(&id)?,
                old: loc,
            });
            if bytes >= BATCH_BYTES {
                report.objects_moved += move_items(store, std::mem::take(&mut items))?;
                moved_bytes += bytes;
                bytes = 0;
            }
        }
        if !items.is_empty() {
            report.objects_moved += move_items(store, items)?;
            moved_bytes += bytes;
        }
    }

    // Remove the candidates: every entry that pointed into them has moved or gone.
    let mut freed = 0u64;
    for &seq in candidates.difference(&kept) {
        let txn = sh.db.begin_write().map_err(|e| sh.ix(e))?;
        {
            let mut segments = txn.open_table(index::SEGMENTS).map_err(|e| sh.ix(e))?;
            segments.remove(seq).map_err(|e| sh.ix(e))?;
        }
        txn.commit().map_err(|e| sh.ix(e))?;
        let path = segment_path(&sh.dir, seq);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        sh.files.remove(seq);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::io(
                    format!("remove compacted segment {}", path.display()),
                    e,
                ));
            }
        }
        freed += size;
        report.segments_removed += 1;
    }
    sync_dir(&segments_dir(&sh.dir))?;
    report.bytes_freed = freed.saturating_sub(moved_bytes);
    tracing::info!(?report, "compaction done");
    Ok(report)
}

/// Quarantine a bad copy found while compacting; if its entry still points into the segment
/// (the quarantine could not be recorded), the segment is kept.
fn set_aside(
    store: &LocalStore,
    id: &ObjectId,
    loc: &Location,
    detail: String,
    kept: &mut BTreeSet<u64>,
) -> Result<()> {
    let _ = store.shared.quarantine(id, loc, detail);
    if store
        .shared
        .lookup(id)?
        .is_some_and(|l| l.seq == loc.seq && l.offset == loc.offset)
    {
        kept.insert(loc.seq);
    }
    Ok(())
}

fn move_items(store: &LocalStore, items: Vec<MoveItem>) -> Result<u64> {
    store.submit(|reply| Request::Move { items, reply })?
}

/// See [`LocalStore::scrub`].
pub(crate) fn scrub(store: &LocalStore, progress: &ScrubProgress) -> Result<Vec<ObjectId>> {
    struct Running<'a>(&'a ScrubProgress);
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.running.store(false, Ordering::SeqCst);
        }
    }
    let sh = &store.shared;
    progress.checked.store(0, Ordering::SeqCst);
    progress.bytes.store(0, Ordering::SeqCst);
    progress.corrupt.store(0, Ordering::SeqCst);
    progress
        .total
        .store(store.stats()?.objects, Ordering::SeqCst);
    progress.running.store(true, Ordering::SeqCst);
    let _running = Running(progress);

    let mut corrupt = Vec::new();
    let mut after: Option<ObjectId> = None;
    loop {
        let batch = store.locations(after.as_ref(), SCAN_BATCH)?;
        let Some(last) = batch.last() else { break };
        after = Some(last.0);
        for (id, _) in batch {
            match sh.read_verified(&id) {
                Ok(data) => {
                    progress
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Err(StoreError::Corrupt { .. }) => {
                    progress.corrupt.fetch_add(1, Ordering::Relaxed);
                    corrupt.push(id);
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e @ StoreError::Io { .. }) => {
                    tracing::warn!(object = %id, error = %e, "scrub could not read an object");
                }
                Err(e) => return Err(e),
            }
            progress.checked.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(corrupt)
}
