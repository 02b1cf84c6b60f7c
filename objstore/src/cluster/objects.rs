//! Objects across the cluster: quorum puts, reads with failover and read repair, and where
//! the copies are.

use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::{Cluster, Host, blocking, call_peer, peer_client, quorum};
use crate::local::{PutObject, PutOutcome};
use crate::{ObjectId, Result, StoreError};

impl Cluster {
    /// Store an object on R hosts; succeeds once a majority of them have it durably.
    /// Returns the outcome and the number of copies written or found.
    pub async fn put(&self, object: PutObject) -> Result<(PutOutcome, usize)> {
        let actual = if object.is_hashed() {
            object.id
        } else {
            ObjectId::of(&object.data)
        };
        if actual != object.id {
            return Err(StoreError::HashMismatch {
                claimed: object.id,
                actual,
            });
        }
        let placement = self.placement(&object.id.0);
        let r = self.replicas().min(placement.len());
        let need = quorum(r);
        // Up hosts first in placement order; hosts known to be down only if needed.
        let (up, down): (Vec<Host>, Vec<Host>) = placement.into_iter().partition(Self::is_up);
        let mut candidates = up.into_iter().chain(down);
        let mut acks = 0usize;
        let mut outcome = PutOutcome::Present;
        let mut failures = Vec::new();
        let mut running = tokio::task::JoinSet::new();
        let object = Arc::new(object);
        let mut launched = 0;
        while launched < r {
            let Some(h) = candidates.next() else { break };
            running.spawn(self.put_on(h, object.clone()));
            launched += 1;
        }
        while let Some(done) = running.join_next().await {
            match done {
                Ok((_, Ok(o))) => {
                    acks += 1;
                    if o == PutOutcome::Stored {
                        outcome = PutOutcome::Stored;
                    }
                }
                Ok((name, Err(e))) => {
                    if matches!(e, StoreError::HashMismatch { .. }) {
                        return Err(e);
                    }
                    debug!(host = %name, id = %object.id, error = %e, "replica write failed");
                    failures.push(format!("{name}: {e}"));
                    // Replace the failed replica with the next host in the object's order.
                    if let Some(h) = candidates.next() {
                        running.spawn(self.put_on(h, object.clone()));
                    }
                }
                Err(e) => failures.push(format!("task: {e}")),
            }
        }
        if acks >= need {
            if acks < r {
                warn!(id = %object.id, acks, r, "stored with fewer copies than wanted; re-replication will add them");
                self.want_repair();
            }
            Ok((outcome, acks))
        } else {
            Err(StoreError::Quorum {
                op: format!("put {}", object.id),
                acks,
                needed: need,
                failures: failures.join("; "),
            })
        }
    }

    /// Store many objects (an image commit's blocks and nodes), each on R hosts, all durable
    /// on return. The copies placed on this host go to the local store in one batch (one
    /// group commit, no task per object); the copies for peers are pipelined, `window` at a
    /// time. An object any of whose copies failed goes through [`Cluster::put`] again, which
    /// replaces failed hosts and needs a majority, as every put does.
    pub async fn put_many(&self, objects: Vec<PutObject>, window: usize) -> Result<()> {
        let objects: Vec<Arc<PutObject>> = objects.into_iter().map(Arc::new).collect();
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            let placement = self.placement(&o.id.0);
            let r = self.replicas().min(placement.len());
            let (up, down): (Vec<Host>, Vec<Host>) = placement.into_iter().partition(Self::is_up);
            for h in up.into_iter().chain(down).take(r) {
                match h {
                    Host::Me => local.push(i),
                    peer => remote.push((i, peer)),
                }
            }
        }
        let mut failed = vec![false; objects.len()];
        let mut running = tokio::task::JoinSet::new();
        if !local.is_empty() {
            let store = self.local.clone();
            let batch: Vec<PutObject> = local.iter().map(|&i| (*objects[i]).clone()).collect();
            running.spawn(async move {
                let results = blocking(move || Ok(store.put_many(batch))).await;
                match results {
                    Ok(results) => local
                        .into_iter()
                        .zip(results)
                        .filter(|(_, r)| r.is_err())
                        .map(|(i, _)| i)
                        .collect::<Vec<_>>(),
                    Err(_) => local,
                }
            });
        }
        let mut remote = remote.into_iter();
        loop {
            while running.len() < window.max(2) {
                let Some((i, host)) = remote.next() else {
                    break;
                };
                let put = self.put_on(host, objects[i].clone());
                running.spawn(async move {
                    match put.await {
                        (_, Ok(_)) => Vec::new(),
                        (_, Err(_)) => vec![i],
                    }
                });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            match done {
                Ok(bad) => bad.into_iter().for_each(|i| failed[i] = true),
                Err(e) => return Err(StoreError::Refused(format!("put task failed: {e}"))),
            }
        }
        for (i, o) in objects.iter().enumerate() {
            if failed[i] {
                debug!(id = %o.id, "a copy of a batched put failed: putting it again");
                self.put((**o).clone()).await?;
            }
        }
        Ok(())
    }

    /// Store the object on one host; a `'static` future, for the put's task set.
    fn put_on(
        &self,
        host: Host,
        object: Arc<PutObject>,
    ) -> impl std::future::Future<Output = (String, Result<PutOutcome>)> + Send + 'static + use<>
    {
        let local = self.local.clone();
        let name = self.name(&host).to_owned();
        let timeout = self.options.call_timeout;
        async move {
            let r = match host {
                Host::Me => {
                    let obj = (*object).clone();
                    blocking(move || local.put(obj)).await
                }
                Host::Peer(peer) => {
                    call_peer(&peer, timeout, |c| async move {
                        c.put(&object, 0).await.map(|(o, _)| o)
                    })
                    .await
                }
            };
            (name, r)
        }
    }

    /// Read `count` bytes at `offset` of an object (all of it with `count = u64::MAX`),
    /// returning the bytes and the object's size.
    pub async fn get(&self, id: &ObjectId, offset: u64, count: u64) -> Result<(u64, Bytes)> {
        self.get_from(id, offset, count, false).await
    }

    pub(super) async fn get_from(
        &self,
        id: &ObjectId,
        offset: u64,
        count: u64,
        skip_me: bool,
    ) -> Result<(u64, Bytes)> {
        let placement = self.placement(&id.0);
        let r = self.replicas().min(placement.len());
        let expected: Vec<String> = placement[..r]
            .iter()
            .map(|h| self.name(h).to_owned())
            .collect();
        // Nearest first: this host if it holds a copy, then the other replicas that are up,
        // fastest (by probe round trip) first, then any other up host (a stand-in may hold
        // it), hosts known to be down last.
        let mut rest = placement;
        let mut replicas: Vec<Host> = rest.drain(..r).collect();
        replicas.sort_by_key(|h| match h {
            Host::Me => 0,
            Host::Peer(p) => {
                1 + u64::from(p.health.lock().unwrap_or_else(|e| e.into_inner()).rtt_us)
            }
        });
        let (up, down): (Vec<Host>, Vec<Host>) = replicas
            .into_iter()
            .chain(rest)
            .filter(|h| !(skip_me && matches!(h, Host::Me)))
            .partition(Self::is_up);
        let order: Vec<Host> = up.into_iter().chain(down).collect();
        let mut missing = Vec::new();
        let mut corrupt = Vec::new();
        let mut failures = Vec::new();
        for host in order {
            let name = self.name(&host).to_owned();
            match self.get_on(&host, id, offset, count).await {
                Ok(got) => {
                    let stale: Vec<String> = missing
                        .iter()
                        .chain(corrupt.iter())
                        .filter(|(n, _)| expected.contains(n))
                        .map(|(n, _): &(String, String)| n.clone())
                        .collect();
                    if !stale.is_empty() {
                        self.read_repair(*id, host, stale, &got);
                    }
                    return Ok(got);
                }
                Err(StoreError::NotFound(_)) => missing.push((name, String::new())),
                Err(StoreError::Corrupt { detail, .. }) => {
                    warn!(host = %name, id = %id, %detail, "corrupt copy; trying another replica");
                    corrupt.push((name, detail));
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        if !corrupt.is_empty() {
            return Err(StoreError::Corrupt {
                id: *id,
                detail: format!(
                    "no good copy: {}",
                    corrupt
                        .iter()
                        .map(|(n, d)| format!("{n}: {d}"))
                        .chain(failures)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            });
        }
        if failures.is_empty() {
            return Err(StoreError::NotFound(*id));
        }
        Err(StoreError::Quorum {
            op: format!("get {id}"),
            acks: 0,
            needed: 1,
            failures: failures.join("; "),
        })
    }

    async fn get_on(
        &self,
        host: &Host,
        id: &ObjectId,
        offset: u64,
        count: u64,
    ) -> Result<(u64, Bytes)> {
        match host {
            Host::Me => {
                let local = self.local.clone();
                let id = *id;
                blocking(move || local.get_range(&id, offset, count)).await
            }
            Host::Peer(p) => {
                let id = *id;
                self.on_peer(p, |c| async move {
                    if offset == 0 && count == u64::MAX {
                        let data = c.get_object(&id, 0).await?;
                        Ok((data.len() as u64, data))
                    } else {
                        c.get(&id, offset, count.min(u64::from(u32::MAX)) as u32, 0)
                            .await
                    }
                })
                .await
            }
        }
    }

    /// Put a good copy back on the replicas that lacked it or had it corrupt (in the
    /// background: the reader has its bytes already). The copy keeps the object's references,
    /// read from the host that served it.
    fn read_repair(&self, id: ObjectId, source: Host, stale: Vec<String>, got: &(u64, Bytes)) {
        let whole = (got.1.len() as u64 == got.0).then(|| got.1.clone());
        let targets: Vec<(String, Host)> = self
            .placement(&id.0)
            .into_iter()
            .filter(|h| stale.iter().any(|s| s == self.name(h)))
            .map(|h| (self.name(&h).to_owned(), h))
            .collect();
        let local = self.local.clone();
        let timeout = self.options.call_timeout;
        tokio::spawn(async move {
            let fetched = async {
                let refs = match &source {
                    Host::Me => {
                        let local = local.clone();
                        blocking(move || local.refs(&id)).await?
                    }
                    Host::Peer(p) => peer_client(p)
                        .await?
                        .refs(&[id])
                        .await?
                        .pop()
                        .unwrap_or_default(),
                };
                let data = match whole {
                    Some(d) => d,
                    None => match &source {
                        Host::Me => {
                            let local = local.clone();
                            blocking(move || local.get(&id)).await?
                        }
                        Host::Peer(p) => peer_client(p).await?.get_object(&id, 0).await?,
                    },
                };
                Ok::<_, StoreError>(PutObject::claimed(id, data, refs))
            }
            .await;
            let object = match fetched {
                Ok(o) => Arc::new(o),
                Err(e) => {
                    warn!(%id, error = %e, "read repair: cannot fetch a good copy");
                    return;
                }
            };
            for (name, host) in targets {
                let result = match host {
                    Host::Me => {
                        let (local, obj) = (local.clone(), (*object).clone());
                        blocking(move || local.put(obj)).await.map(|_| ())
                    }
                    Host::Peer(p) => {
                        let object = object.clone();
                        call_peer(&p, timeout, |c| async move {
                            c.put(&object, 0).await.map(|_| ())
                        })
                        .await
                    }
                };
                match result {
                    Ok(()) => info!(%id, host = %name, "read repair: replica restored"),
                    Err(e) => warn!(%id, host = %name, error = %e, "read repair failed"),
                }
            }
        });
    }

    /// Whether any live host holds the object.
    pub async fn has(&self, id: &ObjectId) -> Result<bool> {
        Ok(!self.replica_hosts(id).await?.is_empty())
    }

    /// The live hosts holding a copy of the object (asking every one of them).
    pub async fn replica_hosts(&self, id: &ObjectId) -> Result<Vec<String>> {
        let mut hosts = Vec::new();
        for host in self.placement(&id.0) {
            let present = match &host {
                Host::Me => {
                    let (local, id) = (self.local.clone(), *id);
                    blocking(move || local.has(&[id])).await?[0]
                }
                Host::Peer(p) => {
                    let id = *id;
                    match self.on_peer(p, |c| async move { c.has(&[id]).await }).await {
                        Ok(v) => v.first().copied().unwrap_or(false),
                        Err(_) => false,
                    }
                }
            };
            if present {
                hosts.push(self.name(&host).to_owned());
            }
        }
        Ok(hosts)
    }
}
