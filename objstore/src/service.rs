//! The storage service: answers the storage dialect on transport channels.
//!
//! Per connection, one reader decodes requests and starts each as its own task (many in
//! flight; a byte budget stops reading when too much is held), one writer gathers replies
//! into batched sends. Requests flagged [`REPLICATED`] are served by the [`Cluster`]
//! (placement, replicas, failover); the others touch only this host's [`LocalStore`] — those
//! are what peers send each other. A malformed request gets an `Rerror` naming what is wrong;
//! a frame the transport cannot delimit ends the connection.
//!
//! [`LocalStore`]: crate::LocalStore

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use envoy_transport::{Channel, FrameRx, FrameTx, Listener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, blocking};
use crate::local::{PutObject, PutOutcome};
use crate::wire::{self, AdminOp, HEADER_ROOM, NOTAG, REPLICATED, Reply, Request, RequestType};
use crate::{ObjectId, Result, StoreError};

/// Limits of one connection.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Largest frame offered (default and maximum [`wire::MAX_MSIZE`]).
    pub max_msize: u32,
    /// Bytes of requests one connection may hold in flight (default 256 MiB).
    pub max_held: usize,
    /// Bytes of partly received objects one connection may hold (default 64 MiB).
    pub max_staged: usize,
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        ServiceConfig {
            max_msize: wire::MAX_MSIZE,
            max_held: 256 << 20,
            max_staged: 64 << 20,
        }
    }
}

/// The storage service of one host (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct StorageService {
    cluster: Arc<Cluster>,
    config: ServiceConfig,
}

/// A partly received object.
struct Staging {
    flags: u8,
    total: u64,
    refs: Vec<ObjectId>,
    data: BytesMut,
}

/// Budget units are KiB, so that a semaphore's permit count covers hundreds of MiB.
fn budget_units(bytes: usize) -> u32 {
    (bytes / 1024 + 1).min(u32::MAX as usize) as u32
}

impl ServiceConfig {
    /// The budget units of `bytes`, never more than the whole budget (so one large request
    /// waits for the others to finish rather than forever).
    fn units(&self, bytes: usize) -> u32 {
        budget_units(bytes).min(budget_units(self.max_held))
    }
}

impl StorageService {
    /// Serve `cluster` (and its local store).
    pub fn new(cluster: Arc<Cluster>, config: ServiceConfig) -> StorageService {
        StorageService { cluster, config }
    }

    /// The cluster served.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Accept and serve connections until `stop` turns true.
    pub async fn serve<L: Listener>(
        self,
        mut listener: L,
        mut stop: watch::Receiver<bool>,
    ) -> envoy_transport::Result<()> {
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(channel) => {
                        let this = self.clone();
                        tokio::spawn(this.serve_channel(channel));
                    }
                    Err(e) => {
                        warn!(error = %e, "storage: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    /// Serve one connection until it ends.
    pub async fn serve_channel<R: FrameRx, T: FrameTx>(self, channel: Channel<R, T>) {
        let Channel { mut rx, tx, peer } = channel;
        debug!(%peer, "storage connection");
        // Every reply holds budget until it is written, so a client that sends and never
        // reads stops being read from (TCP pushes back) instead of growing the queue.
        let (replies, to_send) = mpsc::unbounded_channel::<Outgoing>();
        let writer = tokio::spawn(write_replies(tx, to_send));
        let budget = Arc::new(Semaphore::new(budget_units(self.config.max_held) as usize));
        let units = |bytes: usize| self.config.units(bytes);
        let queue = |frame: Bytes| {
            let (budget, replies) = (budget.clone(), replies.clone());
            async move {
                match budget.acquire_many_owned(units(frame.len())).await {
                    Ok(permit) => replies.send((frame, permit)).is_ok(),
                    Err(_) => false,
                }
            }
        };
        let mut staging: HashMap<ObjectId, Staging> = HashMap::new();
        let mut staged = 0usize;
        let mut versioned = false;
        let mut msize = 0u32;
        loop {
            let frame = match rx.recv().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "storage connection ends");
                    break;
                }
            };
            let ty = RequestType::peek(&frame);
            let size = frame.len();
            let (tag, request) = match Request::decode(frame.clone()) {
                Ok(r) => r,
                Err(e) => {
                    let tag = wire::peek_tag(&frame).unwrap_or(NOTAG);
                    queue(Reply::error(&e).encode(ty, tag)).await;
                    continue;
                }
            };
            if let Request::Version {
                msize: asked,
                version,
            } = &request
            {
                // A new Tversion starts the connection over: partly sent objects are dropped.
                staging.clear();
                staged = 0;
                let reply = if version == wire::VERSION && *asked >= wire::MIN_MSIZE {
                    msize = (*asked).min(self.config.max_msize);
                    rx.set_max_frame(msize);
                    versioned = true;
                    Reply::Version {
                        msize,
                        version: wire::VERSION.into(),
                    }
                } else {
                    Reply::Version {
                        msize: 0,
                        version: "unknown".into(),
                    }
                };
                queue(reply.encode(ty, tag)).await;
                continue;
            }
            if !versioned {
                let e = StoreError::Protocol("Tversion must come first".into());
                queue(Reply::error(&e).encode(ty, tag)).await;
                continue;
            }
            // Pieces of a large object are gathered here, in order, before it is stored.
            let request = match request {
                Request::Put {
                    flags,
                    id,
                    total,
                    offset,
                    refs,
                    data,
                } if offset != 0 || data.len() as u64 != total => {
                    match self.stage(
                        &mut staging,
                        &mut staged,
                        flags,
                        id,
                        total,
                        offset,
                        refs,
                        data,
                    ) {
                        Err(e) => {
                            queue(Reply::error(&e).encode(ty, tag)).await;
                            continue;
                        }
                        Ok(None) => {
                            let reply = Reply::Put {
                                outcome: PutOutcome::Stored,
                                copies: 0,
                            };
                            queue(reply.encode(ty, tag)).await;
                            continue;
                        }
                        Ok(Some(whole)) => whole,
                    }
                }
                other => other,
            };
            // Held from here until the reply is written: the request's bytes or the most its
            // reply can take, whichever is more.
            let reply_room = match &request {
                Request::Get { count, .. } => (*count).min(msize) as usize,
                Request::List { .. }
                | Request::Refs { .. }
                | Request::Records { .. }
                | Request::Cluster => msize as usize,
                _ => 1024,
            };
            let Ok(permit) = budget
                .clone()
                .acquire_many_owned(units(size.max(reply_room)))
                .await
            else {
                break;
            };
            let this = self.clone();
            let replies = replies.clone();
            tokio::spawn(async move {
                let reply = this.handle(request, msize).await;
                let _ = replies.send((reply.encode(ty, tag), permit));
            });
        }
        drop(replies);
        let _ = writer.await;
    }

    /// Add a piece to a partly received object; the whole object's request once complete.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &self,
        staging: &mut HashMap<ObjectId, Staging>,
        staged: &mut usize,
        flags: u8,
        id: ObjectId,
        total: u64,
        offset: u64,
        refs: Vec<ObjectId>,
        data: Bytes,
    ) -> Result<Option<Request>> {
        if offset == 0 {
            let max = self.cluster.local().max_object();
            if total > max {
                return Err(StoreError::TooLarge { size: total, max });
            }
            if *staged + total as usize > self.config.max_staged {
                return Err(StoreError::Refused(format!(
                    "too many partly sent objects on this connection ({} bytes staged, limit {})",
                    *staged, self.config.max_staged
                )));
            }
            if let Some(old) = staging.remove(&id) {
                *staged -= old.total as usize;
            }
            *staged += total as usize;
            let mut buf = BytesMut::with_capacity(total as usize);
            buf.extend_from_slice(&data);
            staging.insert(
                id,
                Staging {
                    flags,
                    total,
                    refs,
                    data: buf,
                },
            );
        } else {
            let Some(s) = staging.get_mut(&id) else {
                return Err(StoreError::Protocol(format!(
                    "piece at {offset} of {id}, whose first piece was not sent"
                )));
            };
            if s.total != total || s.data.len() as u64 != offset {
                let (have, size) = (s.data.len(), s.total);
                *staged -= s.total as usize;
                staging.remove(&id);
                return Err(StoreError::Protocol(format!(
                    "piece at {offset} of {id} ({total} bytes) does not follow the {have} bytes received of {size}"
                )));
            }
            s.data.extend_from_slice(&data);
        }
        let done = staging
            .get(&id)
            .is_some_and(|s| s.data.len() as u64 == s.total);
        if !done {
            return Ok(None);
        }
        let Some(s) = staging.remove(&id) else {
            return Ok(None);
        };
        *staged -= s.total as usize;
        Ok(Some(Request::Put {
            flags: s.flags,
            id,
            total: s.total,
            offset: 0,
            refs: s.refs,
            data: s.data.freeze(),
        }))
    }

    /// Answer one request.
    async fn handle(&self, request: Request, msize: u32) -> Reply {
        match self.answer(request, msize).await {
            Ok(r) => r,
            Err(e) => Reply::error(&e),
        }
    }

    async fn answer(&self, request: Request, msize: u32) -> Result<Reply> {
        let cluster = &self.cluster;
        let local = cluster.local().clone();
        // What fits in one reply frame.
        let room = (msize.saturating_sub(HEADER_ROOM)).max(4096) as usize;
        Ok(match request {
            Request::Version { .. } => {
                return Err(StoreError::Protocol("Tversion handled elsewhere".into()));
            }
            Request::Put {
                flags,
                id,
                refs,
                data,
                ..
            } => {
                let object = PutObject::claimed(id, data, refs);
                if flags & REPLICATED != 0 {
                    let (outcome, copies) = cluster.put(object).await?;
                    Reply::Put {
                        outcome,
                        copies: copies.min(255) as u8,
                    }
                } else {
                    let outcome = blocking(move || local.put(object)).await?;
                    Reply::Put { outcome, copies: 1 }
                }
            }
            Request::Get {
                flags,
                id,
                offset,
                count,
            } => {
                let count = u64::from(count).min(room as u64);
                let (total, data) = if flags & REPLICATED != 0 {
                    cluster.get(&id, offset, count).await?
                } else {
                    blocking(move || local.get_range(&id, offset, count)).await?
                };
                Reply::Get { total, data }
            }
            Request::Has { ids } => Reply::Has {
                present: blocking(move || local.has(&ids)).await?,
            },
            Request::List { after, max } => {
                let max = (max as usize).min(room / 48);
                let objects = blocking(move || local.list(after.as_ref(), max + 1)).await?;
                let more = objects.len() > max;
                Reply::List {
                    objects: objects.into_iter().take(max).collect(),
                    more,
                }
            }
            Request::Refs { ids } => {
                let refs: Vec<Vec<ObjectId>> =
                    blocking(move || ids.iter().map(|id| local.refs(id)).collect()).await?;
                let size: usize = refs.iter().map(|r| 2 + 32 * r.len()).sum();
                if size > room {
                    return Err(StoreError::Refused(format!(
                        "the references of {} objects take {size} bytes, more than a frame: ask for fewer",
                        refs.len()
                    )));
                }
                Reply::Refs { refs }
            }
            Request::Delete { cutoff, ids } => Reply::Delete {
                deleted: blocking(move || local.delete(&ids, cutoff)).await?,
            },
            Request::Record { flags, name } => Reply::Record {
                record: if flags & REPLICATED != 0 {
                    cluster.record(&name).await?
                } else {
                    blocking(move || local.record_copy(&name)).await?
                },
            },
            Request::Cas {
                flags,
                name,
                expected,
                refs,
                value,
            } => Reply::Cas {
                version: if flags & REPLICATED != 0 {
                    cluster.cas_record(&name, expected, value, refs).await?
                } else {
                    blocking(move || local.cas_record(&name, expected, value, refs)).await?
                },
            },
            Request::StoreRecord { name, record } => Reply::StoreRecord {
                stored: blocking(move || local.store_record(&name, record)).await?,
            },
            Request::DeleteRecord {
                flags,
                name,
                expected,
            } => Reply::DeleteRecord {
                version: if flags & REPLICATED != 0 {
                    cluster.delete_record(&name, expected).await?
                } else {
                    blocking(move || local.delete_record(&name, expected)).await?
                },
            },
            Request::Records { after, max } => {
                let all = blocking(move || local.record_copies()).await?;
                let mut records = Vec::new();
                let mut size = 0;
                let mut more = false;
                for (name, r) in all.into_iter().filter(|(n, _)| *n > after) {
                    let len = 17 + name.len() + 32 * r.refs.len() + r.value.len();
                    if records.len() >= max as usize || size + len > room {
                        more = true;
                        break;
                    }
                    size += len;
                    records.push((name, r));
                }
                Reply::Records { records, more }
            }
            Request::Stats => Reply::Stats(cluster.stats().await?),
            Request::Cluster => {
                let (replicas, hosts) = cluster.view().await;
                Reply::Cluster { replicas, hosts }
            }
            Request::Admin { op, arg } => Reply::Admin {
                message: self.admin(op, arg).await?,
            },
            Request::Replicas { id } => Reply::Replicas {
                hosts: cluster.replica_hosts(&id).await?,
            },
        })
    }

    /// Maintenance: scrub and repair run in the background unless `arg` is 1 (wait); GC
    /// (`arg` = grace in seconds) and compaction answer when done.
    async fn admin(&self, op: AdminOp, arg: u64) -> Result<String> {
        let cluster = self.cluster.clone();
        match op {
            AdminOp::Scrub => {
                if arg == 1 {
                    let (corrupt, repaired) = cluster.scrub().await?;
                    return Ok(format!(
                        "scrub done: {corrupt} corrupt copies found, {repaired} repaired"
                    ));
                }
                tokio::spawn(async move {
                    match cluster.scrub().await {
                        Ok((c, r)) => info!(corrupt = c, repaired = r, "scrub done"),
                        Err(e) => warn!(error = %e, "scrub failed"),
                    }
                });
                Ok("scrub started".into())
            }
            AdminOp::Repair => {
                if arg == 1 {
                    cluster.repair().await?;
                    let m = cluster.stats().await?.maintenance;
                    return Ok(format!(
                        "re-replication done: {} objects examined, {} copies made, {} failed",
                        m.repair_scanned, m.repair_copied, m.repair_failed
                    ));
                }
                tokio::spawn(async move {
                    if let Err(e) = cluster.repair().await {
                        warn!(error = %e, "re-replication failed");
                    }
                });
                Ok("re-replication started".into())
            }
            AdminOp::Gc => {
                let deleted = cluster.gc(Duration::from_secs(arg)).await?;
                Ok(format!("gc done: {deleted} objects deleted"))
            }
            AdminOp::Reload => cluster.reload(),
            AdminOp::Compact => {
                let local = cluster.local().clone();
                let r = blocking(move || local.compact()).await?;
                Ok(format!(
                    "compaction done: {} segments removed, {} objects moved, {} bytes freed",
                    r.segments_removed, r.objects_moved, r.bytes_freed
                ))
            }
        }
    }
}

/// A reply frame and the budget it holds until written.
type Outgoing = (Bytes, OwnedSemaphorePermit);

async fn write_replies<T: FrameTx>(mut tx: T, mut replies: mpsc::UnboundedReceiver<Outgoing>) {
    let mut batch = Vec::new();
    let mut held = Vec::new();
    while let Some((frame, permit)) = replies.recv().await {
        batch.push(frame);
        held.push(permit);
        while batch.len() < 64 {
            match replies.try_recv() {
                Ok((f, p)) => {
                    batch.push(f);
                    held.push(p);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = tx.send(&mut batch).await {
            debug!(error = %e, "storage: cannot send replies");
            return;
        }
        held.clear();
    }
    let _ = tx.close().await;
}
