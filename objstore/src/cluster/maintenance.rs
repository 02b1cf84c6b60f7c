//! Keeping copies where they belong: probing peers (down, lost, back), re-replication passes,
//! scrub with repair from replicas, and mark-and-sweep GC from the records' roots.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Cluster, Host, Peer, blocking, peer_client};
use crate::local::PutObject;
use crate::local::now_secs;
use crate::{ObjectId, Result, StoreError};

impl Cluster {
    /// Probe peers, declare lost ones, and run re-replication passes until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut wanted = self.repair_wanted.subscribe();
        let mut probe = tokio::time::interval(self.options.probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_repair = Instant::now();
        // One pass soon after start: this host may have missed writes while it was away.
        self.want_repair();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = probe.tick() => {
                    self.probe_all().await;
                    if last_repair.elapsed() >= self.options.repair_interval {
                        self.want_repair();
                    }
                }
                Ok(()) = wanted.changed() => {
                    wanted.borrow_and_update();
                    // Let the probes settle (a just-started cluster finds its peers first).
                    tokio::time::sleep(self.options.probe_interval).await;
                    wanted.borrow_and_update();
                    last_repair = Instant::now();
                    if let Err(e) = self.repair().await {
                        warn!(error = %e, "re-replication pass failed");
                    }
                }
            }
        }
    }

    async fn probe_all(&self) {
        let peers = self.peers();
        let mut probes = tokio::task::JoinSet::new();
        for p in peers {
            let timeout = self.options.probe_interval.max(Duration::from_secs(2));
            probes.spawn(async move {
                let start = Instant::now();
                let result = async {
                    let c = peer_client(&p).await?;
                    tokio::time::timeout(timeout, c.stats())
                        .await
                        .map_err(|_| StoreError::Refused("probe timed out".into()))?
                }
                .await;
                (p, start.elapsed(), result)
            });
        }
        let mut became_lost = false;
        let mut came_back = false;
        while let Some(Ok((p, rtt, result))) = probes.join_next().await {
            let mut h = p.health.lock().unwrap_or_else(|e| e.into_inner());
            h.probed = true;
            match result {
                Ok(stats) => {
                    if !h.up {
                        info!(host = %p.name, "storage host is up");
                        came_back |= h.lost || h.down_since.is_some();
                    }
                    h.up = true;
                    h.lost = false;
                    h.down_since = None;
                    h.error.clear();
                    h.rtt_us = rtt.as_micros().min(u128::from(u32::MAX)) as u32;
                    h.stats = Some(stats);
                }
                Err(e) => {
                    if h.up {
                        warn!(host = %p.name, error = %e, "storage host is down");
                    }
                    h.up = false;
                    h.error = e.to_string();
                    let since = *h.down_since.get_or_insert_with(Instant::now);
                    if !h.lost && since.elapsed() >= self.options.lost_after {
                        warn!(host = %p.name, after = ?self.options.lost_after, "storage host declared lost; re-replicating its objects");
                        h.lost = true;
                        became_lost = true;
                    }
                }
            }
        }
        if became_lost || came_back {
            self.want_repair();
        }
    }

    /// One re-replication pass: every object this host holds gets a copy on each live host
    /// that should hold it and does not.
    pub async fn repair(&self) -> Result<()> {
        let _one_at_a_time = self.repair_pass.lock().await;
        {
            let mut m = self.maintenance.lock().unwrap_or_else(|e| e.into_inner());
            m.repair_running = true;
            m.repair_scanned = 0;
            m.repair_copied = 0;
            m.repair_failed = 0;
        }
        let result = self.repair_pass().await;
        let mut m = self.maintenance.lock().unwrap_or_else(|e| e.into_inner());
        m.repair_running = false;
        m.repairs_done += 1;
        info!(
            scanned = m.repair_scanned,
            copied = m.repair_copied,
            failed = m.repair_failed,
            "re-replication pass done"
        );
        result
    }

    async fn repair_pass(&self) -> Result<()> {
        let mut after = None;
        loop {
            let local = self.local.clone();
            let page = blocking(move || local.list(after.as_ref(), 2048)).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.id);
            let r = self.replicas();
            // Which peers should hold which of these objects.
            let mut wanted: HashMap<String, (Arc<Peer>, Vec<ObjectId>)> = HashMap::new();
            for o in &page {
                for h in self.placement(&o.id.0).into_iter().take(r) {
                    if let Host::Peer(p) = h
                        && Self::is_up(&Host::Peer(p.clone()))
                    {
                        wanted
                            .entry(p.name.clone())
                            .or_insert_with(|| (p.clone(), Vec::new()))
                            .1
                            .push(o.id);
                    }
                }
            }
            self.maintenance
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .repair_scanned += page.len() as u64;
            for (_, (peer, ids)) in wanted {
                let present = match self
                    .on_peer(&peer, |c| {
                        let ids = ids.clone();
                        async move { c.has(&ids).await }
                    })
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        debug!(host = %peer.name, error = %e, "repair: host unreachable");
                        continue;
                    }
                };
                for (id, here) in ids.iter().zip(present) {
                    if here {
                        continue;
                    }
                    let result = self.copy_to(&peer, id).await;
                    let mut m = self.maintenance.lock().unwrap_or_else(|e| e.into_inner());
                    match result {
                        Ok(()) => m.repair_copied += 1,
                        Err(e) => {
                            m.repair_failed += 1;
                            debug!(host = %peer.name, %id, error = %e, "repair: copy failed");
                        }
                    }
                }
            }
        }
    }

    /// Copy a local object (with its references) to a peer.
    async fn copy_to(&self, peer: &Arc<Peer>, id: &ObjectId) -> Result<()> {
        let (local, i) = (self.local.clone(), *id);
        let (data, refs) = blocking(move || Ok((local.get(&i)?, local.refs(&i)?))).await?;
        let object = PutObject::claimed(*id, data, refs);
        self.on_peer(peer, |c| async move { c.put(&object, 0).await.map(|_| ()) })
            .await
    }

    /// Scrub this host: re-hash every copy; bad ones are taken out of service and replaced
    /// from replicas. Returns (corrupt, repaired).
    pub async fn scrub(self: &Arc<Self>) -> Result<(u64, u64)> {
        if self.scrub.running.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Refused("a scrub is already running".into()));
        }
        let this = self.clone();
        let result = blocking(move || this.local.scrub(&this.scrub)).await;
        // The store clears `running` when its pass ends; the repairs below are still the scrub.
        self.scrub.running.store(true, Ordering::Release);
        let corrupt = match result {
            Ok(c) => c,
            Err(e) => {
                self.scrub.running.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let mut repaired = 0;
        for id in &corrupt {
            match self.get_from(id, 0, u64::MAX, true).await {
                Ok((_, data)) => {
                    let refs = self.refs_anywhere(id).await;
                    let (local, obj) = (self.local.clone(), PutObject::claimed(*id, data, refs));
                    match blocking(move || local.put(obj)).await {
                        Ok(_) => {
                            repaired += 1;
                            info!(%id, "scrub: corrupt copy replaced from a replica");
                        }
                        Err(e) => warn!(%id, error = %e, "scrub: cannot store the good copy"),
                    }
                }
                Err(e) => warn!(%id, error = %e, "scrub: no good copy anywhere"),
            }
        }
        {
            let mut m = self.maintenance.lock().unwrap_or_else(|e| e.into_inner());
            m.scrub_repaired = repaired;
            m.scrubs_done += 1;
        }
        self.scrub.running.store(false, Ordering::Release);
        Ok((corrupt.len() as u64, repaired))
    }

    /// An object's references as any live host knows them.
    async fn refs_anywhere(&self, id: &ObjectId) -> Vec<ObjectId> {
        for host in self.placement(&id.0) {
            if let Host::Peer(p) = host {
                let id = *id;
                if let Ok(mut r) = self
                    .on_peer(&p, |c| async move { c.refs(&[id]).await })
                    .await
                    && let Some(refs) = r.pop().filter(|r| !r.is_empty())
                {
                    return refs;
                }
            }
        }
        Vec::new()
    }

    /// Collect garbage across the cluster: objects not reachable from any record, and last
    /// put more than `grace` ago, are deleted from every host; then each host compacts.
    /// Every live host must be up (an unreachable host's records could be roots).
    pub async fn gc(&self, grace: Duration) -> Result<u64> {
        {
            let mut m = self.maintenance.lock().unwrap_or_else(|e| e.into_inner());
            if m.gc_running {
                return Err(StoreError::Refused("a GC is already running".into()));
            }
            m.gc_running = true;
        }
        let result = self.gc_pass(grace).await;
        let mut m = self.maintenance.lock().unwrap_or_else(|e| e.into_inner());
        m.gc_running = false;
        if let Ok(n) = &result {
            m.gc_deleted = *n;
            m.gcs_done += 1;
        }
        result
    }

    async fn gc_pass(&self, grace: Duration) -> Result<u64> {
        let cutoff = now_secs().saturating_sub(grace.as_secs());
        let mut hosts = vec![Host::Me];
        let peers = self.peers();
        for p in peers {
            let h = p.health.lock().unwrap_or_else(|e| e.into_inner());
            if h.lost {
                continue;
            }
            drop(h);
            hosts.push(Host::Peer(p));
        }
        // Roots: the references of the newest version of every record on every host. A
        // record deleted anywhere is no root, and its tombstone replaces the older copies
        // first (so that no stale copy can later name what this pass deletes).
        let mut copies = Vec::new();
        for host in &hosts {
            copies.push((host.clone(), self.record_copies_on(host).await?));
        }
        let mut live: HashSet<ObjectId> = HashSet::new();
        let mut frontier: Vec<ObjectId> = Vec::new();
        for (_, r) in self.reconcile(copies).await {
            for id in r.refs {
                if live.insert(id) {
                    frontier.push(id);
                }
            }
        }
        // Mark: follow references, asking every host (each knows the objects it holds).
        while !frontier.is_empty() {
            let batch = std::mem::take(&mut frontier);
            for host in &hosts {
                let refs = match host {
                    Host::Me => {
                        let (local, ids) = (self.local.clone(), batch.clone());
                        blocking(move || ids.iter().map(|id| local.refs(id)).collect()).await?
                    }
                    Host::Peer(p) => {
                        let ids = batch.clone();
                        self.on_peer(p, |c| async move { c.refs(&ids).await })
                            .await?
                    }
                };
                for id in refs.into_iter().flatten() {
                    if live.insert(id) {
                        frontier.push(id);
                    }
                }
            }
        }
        // Sweep.
        let mut deleted = 0;
        for host in &hosts {
            let objects = match host {
                Host::Me => {
                    let local = self.local.clone();
                    blocking(move || {
                        let mut all = Vec::new();
                        let mut after = None;
                        loop {
                            let page = local.list(after.as_ref(), 8192)?;
                            let Some(last) = page.last() else { break };
                            after = Some(last.id);
                            all.extend(page);
                        }
                        Ok(all)
                    })
                    .await?
                }
                Host::Peer(p) => {
                    self.on_peer(p, |c| async move { c.list_all().await })
                        .await?
                }
            };
            let dead: Vec<ObjectId> = objects
                .into_iter()
                .filter(|o| o.stamp < cutoff && !live.contains(&o.id))
                .map(|o| o.id)
                .collect();
            let n = match host {
                Host::Me => {
                    let local = self.local.clone();
                    blocking(move || {
                        let n = local.delete(&dead, cutoff)?;
                        local.compact()?;
                        Ok(n)
                    })
                    .await?
                }
                Host::Peer(p) => {
                    self.on_peer(p, |c| async move {
                        let n = c.delete(&dead, cutoff).await?;
                        c.admin(crate::wire::AdminOp::Compact, 0).await?;
                        Ok(n)
                    })
                    .await?
                }
            };
            info!(host = %self.name(host), deleted = n, "gc: swept");
            deleted += n;
        }
        Ok(deleted)
    }
}
