//! The cluster of storage services: where objects go, how many copies, and keeping them there.
//!
//! Membership is a static list of hosts (from configuration; the cluster layer replaces it
//! later). Placement is rendezvous hashing: every host gets a score per object, the R best
//! live hosts hold it, so adding or losing a host moves only the objects it gains or held.
//! Writes go to R distinct hosts and succeed on a majority quorum; a host that does not
//! answer is skipped for the next one in the object's order. Reads try the nearest copy
//! (this host first) and fail over; a replica found missing or corrupt on the way is repaired
//! from the copy that was served. A host down longer than `lost_after` (or removed from the
//! membership) is lost: a re-replication pass brings every object back to R copies on the
//! live hosts. Scrub re-hashes this host's copies and repairs bad ones from replicas; GC marks
//! from the records' roots through objects' references and sweeps the rest.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use envoy_transport::Endpoint;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::client::StorageClient;
use crate::local::{LocalStore, PutObject, PutOutcome, Record, ScrubProgress};
use crate::wire::{HostState, HostStats, HostView, Maintenance};
use crate::{ObjectId, Result, StoreError};

/// One host of the membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    /// Its unique name.
    pub name: String,
    /// Where its storage service listens.
    pub endpoint: Endpoint,
}

/// The static membership: the hosts and the replication factor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// Copies of every object (default 2), capped by the number of live hosts.
    pub replicas: usize,
    /// Every host, this one included.
    pub hosts: Vec<HostSpec>,
}

/// Timing of the cluster's background work.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// A host that has not answered for this long is declared lost (default 10 min).
    pub lost_after: Duration,
    /// How often every peer is probed (default 1 s).
    pub probe_interval: Duration,
    /// Longest wait for one call to a peer (default 30 s).
    pub call_timeout: Duration,
    /// A re-replication pass runs this often even without a change (default 10 min).
    pub repair_interval: Duration,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            lost_after: Duration::from_secs(600),
            probe_interval: Duration::from_secs(1),
            call_timeout: Duration::from_secs(30),
            repair_interval: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    up: bool,
    probed: bool,
    down_since: Option<Instant>,
    lost: bool,
    rtt_us: u32,
    error: String,
    stats: Option<HostStats>,
}

/// Another host of the cluster.
#[derive(Debug)]
struct Peer {
    name: String,
    endpoint: Endpoint,
    key: [u8; 32],
    client: tokio::sync::Mutex<Option<StorageClient>>,
    health: Mutex<Health>,
}

/// A host as a target of an operation: this one (its own disk) or a peer.
#[derive(Clone, Debug)]
enum Host {
    Me,
    Peer(Arc<Peer>),
}

struct State {
    membership: Membership,
    my_key: [u8; 32],
    peers: Vec<Arc<Peer>>,
}

/// Re-reads the membership (from the configuration file) when asked to reload.
pub type Reloader = Box<dyn Fn() -> Result<Membership> + Send + Sync>;

/// This host's member of the cluster (see the module docs).
pub struct Cluster {
    me: String,
    local: Arc<LocalStore>,
    options: ClusterOptions,
    state: RwLock<State>,
    scrub: ScrubProgress,
    maintenance: Mutex<Maintenance>,
    /// Wakes the background task for a re-replication pass.
    repair_wanted: watch::Sender<u64>,
    /// One re-replication pass at a time; a caller that finds one running waits for it and
    /// then runs its own (so that it sees every change made before it asked).
    repair_pass: tokio::sync::Mutex<()>,
    reloader: Option<Reloader>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("me", &self.me).finish()
    }
}

fn host_key(name: &str) -> [u8; 32] {
    *blake3::hash(name.as_bytes()).as_bytes()
}

/// The rendezvous score of a host for a key: higher is preferred.
fn score(host_key: &[u8; 32], key: &[u8; 32]) -> u64 {
    let h = blake3::keyed_hash(host_key, key);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_be_bytes(b)
}

/// The placement key of a record.
fn record_key(name: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"envoy record\0");
    h.update(name.as_bytes());
    *h.finalize().as_bytes()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A majority of `r`.
fn quorum(r: usize) -> usize {
    r / 2 + 1
}

/// Run a blocking store call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Refused(format!("store task failed: {e}")))?
}

impl Cluster {
    /// This host (`me`, which must be in the membership unless it is the only host) in a
    /// cluster. Call [`run`](Self::run) to start probing and maintenance.
    pub fn new(
        me: String,
        local: Arc<LocalStore>,
        membership: Membership,
        options: ClusterOptions,
        reloader: Option<Reloader>,
    ) -> Result<Arc<Cluster>> {
        let state = Self::state_for(&me, membership, &[])?;
        Ok(Arc::new(Cluster {
            me,
            local,
            options,
            state: RwLock::new(state),
            scrub: ScrubProgress::default(),
            maintenance: Mutex::new(Maintenance::default()),
            repair_wanted: watch::channel(0).0,
            repair_pass: tokio::sync::Mutex::new(()),
            reloader,
        }))
    }

    /// A one-host cluster: this host's disk only, one copy.
    pub fn single(me: String, local: Arc<LocalStore>) -> Arc<Cluster> {
        let membership = Membership {
            replicas: 1,
            hosts: Vec::new(),
        };
        let state = State {
            membership,
            my_key: host_key(&me),
            peers: Vec::new(),
        };
        Arc::new(Cluster {
            me,
            local,
            options: ClusterOptions::default(),
            state: RwLock::new(state),
            scrub: ScrubProgress::default(),
            maintenance: Mutex::new(Maintenance::default()),
            repair_wanted: watch::channel(0).0,
            repair_pass: tokio::sync::Mutex::new(()),
            reloader: None,
        })
    }

    fn state_for(me: &str, membership: Membership, old: &[Arc<Peer>]) -> Result<State> {
        let mut seen = HashSet::new();
        for h in &membership.hosts {
            if !seen.insert(h.name.as_str()) {
                return Err(StoreError::Refused(format!(
                    "host {:?} is listed twice in the membership",
                    h.name
                )));
            }
        }
        if !membership.hosts.is_empty() && !seen.contains(me) {
            return Err(StoreError::Refused(format!(
                "this host ({me:?}) is not in the membership ({})",
                membership
                    .hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if membership.replicas == 0 {
            return Err(StoreError::Refused("replicas must be at least 1".into()));
        }
        let peers = membership
            .hosts
            .iter()
            .filter(|h| h.name != me)
            .map(|h| {
                // Keep a peer's connection and health across a reload if it did not move.
                old.iter()
                    .find(|p| p.name == h.name && p.endpoint == h.endpoint)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Peer {
                            name: h.name.clone(),
                            endpoint: h.endpoint.clone(),
                            key: host_key(&h.name),
                            client: tokio::sync::Mutex::new(None),
                            health: Mutex::new(Health::default()),
                        })
                    })
            })
            .collect();
        Ok(State {
            membership,
            my_key: host_key(me),
            peers,
        })
    }

    /// This host's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// This host's store.
    pub fn local(&self) -> &Arc<LocalStore> {
        &self.local
    }

    /// Replace the membership (after the configuration changed); starts a re-replication
    /// pass, since placement moved.
    pub fn set_membership(&self, membership: Membership) -> Result<()> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let new = Self::state_for(&self.me, membership, &state.peers)?;
        info!(
            hosts = new.membership.hosts.len(),
            replicas = new.membership.replicas,
            "storage membership changed"
        );
        *state = new;
        drop(state);
        self.want_repair();
        Ok(())
    }

    /// Re-read the membership through the reloader.
    pub fn reload(&self) -> Result<String> {
        let Some(reload) = &self.reloader else {
            return Err(StoreError::Refused(
                "this envoyd has no membership file to reload".into(),
            ));
        };
        let m = reload()?;
        let n = m.hosts.len();
        self.set_membership(m)?;
        Ok(format!("membership reloaded: {n} hosts"))
    }

    fn want_repair(&self) {
        self.repair_wanted.send_modify(|n| *n += 1);
    }

    fn replicas(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .membership
            .replicas
    }

    /// Every live (not lost) host, best first for `key`.
    fn placement(&self, key: &[u8; 32]) -> Vec<Host> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut hosts: Vec<(u64, Host)> = state
            .peers
            .iter()
            .filter(|p| !p.health.lock().unwrap_or_else(|e| e.into_inner()).lost)
            .map(|p| (score(&p.key, key), Host::Peer(p.clone())))
            .collect();
        hosts.push((score(&state.my_key, key), Host::Me));
        hosts.sort_by_key(|h| std::cmp::Reverse(h.0));
        hosts.into_iter().map(|(_, h)| h).collect()
    }

    fn name<'a>(&'a self, host: &'a Host) -> &'a str {
        match host {
            Host::Me => &self.me,
            Host::Peer(p) => &p.name,
        }
    }

    fn is_up(host: &Host) -> bool {
        match host {
            Host::Me => true,
            Host::Peer(p) => {
                let h = p.health.lock().unwrap_or_else(|e| e.into_inner());
                h.up || !h.probed
            }
        }
    }

    /// Run `f` against `peer` with the call timeout; a transport failure marks it down.
    async fn on_peer<T, F, Fut>(&self, peer: &Arc<Peer>, f: F) -> Result<T>
    where
        F: FnOnce(StorageClient) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        call_peer(peer, self.options.call_timeout, f).await
    }

    // ---- objects ----------------------------------------------------------------------

    /// Store an object on R hosts; succeeds once a majority of them have it durably.
    /// Returns the outcome and the number of copies written or found.
    pub async fn put(&self, object: PutObject) -> Result<(PutOutcome, usize)> {
        let actual = ObjectId::of(&object.data);
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

    async fn get_from(
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
        // Nearest first: this host if it should hold a copy, then up hosts in the object's
        // order, hosts known to be down last.
        let me_first = !skip_me && placement[..r].iter().any(|h| matches!(h, Host::Me));
        let mut order: Vec<Host> = Vec::with_capacity(placement.len());
        if me_first {
            order.push(Host::Me);
        }
        let (up, down): (Vec<Host>, Vec<Host>) = placement
            .into_iter()
            .filter(|h| !matches!(h, Host::Me) || !(skip_me || me_first))
            .partition(Self::is_up);
        order.extend(up);
        order.extend(down);
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
                Ok::<_, StoreError>(PutObject { id, data, refs })
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

    // ---- records ----------------------------------------------------------------------

    /// The newest copy of a record among its replicas (stale replicas are brought up to it).
    pub async fn record(&self, name: &str) -> Result<Option<Record>> {
        let placement = self.placement(&record_key(name));
        let r = self.replicas().min(placement.len());
        let mut copies: Vec<(Host, Option<Record>)> = Vec::new();
        let mut failures = Vec::new();
        for host in placement.into_iter().take(r) {
            match self.record_on(&host, name).await {
                Ok(rec) => copies.push((host, rec)),
                Err(e) => failures.push(format!("{}: {e}", self.name(&host))),
            }
        }
        if copies.is_empty() {
            return Err(StoreError::Quorum {
                op: format!("read record {name:?}"),
                acks: 0,
                needed: 1,
                failures: failures.join("; "),
            });
        }
        let newest = copies
            .iter()
            .filter_map(|(_, r)| r.clone())
            .max_by_key(|r| r.version);
        if let Some(newest) = &newest {
            for (host, rec) in &copies {
                if rec.as_ref().is_none_or(|r| r.version < newest.version) {
                    let _ = self.store_record_on(host, name, newest.clone()).await;
                }
            }
        }
        Ok(newest)
    }

    /// Compare-and-set a record on its replicas: version `expected + 1` if the newest copy is
    /// at `expected` (0: absent). Succeeds on a majority.
    pub async fn cas_record(
        &self,
        name: &str,
        expected: u64,
        value: Bytes,
        refs: Vec<ObjectId>,
    ) -> Result<u64> {
        let current = self.record(name).await?.map_or(0, |r| r.version);
        if current != expected {
            return Err(StoreError::Conflict {
                name: name.into(),
                expected,
                current,
            });
        }
        let record = Record {
            version: expected + 1,
            value,
            refs,
        };
        let placement = self.placement(&record_key(name));
        let r = self.replicas().min(placement.len());
        let mut acks = 0;
        let mut failures = Vec::new();
        for host in placement.into_iter().take(r) {
            match self.store_record_on(&host, name, record.clone()).await {
                Ok(true) => acks += 1,
                Ok(false) => {
                    return Err(StoreError::Conflict {
                        name: name.into(),
                        expected,
                        current: expected + 1,
                    });
                }
                Err(e) => failures.push(format!("{}: {e}", self.name(&host))),
            }
        }
        if acks >= quorum(r) {
            Ok(record.version)
        } else {
            Err(StoreError::Quorum {
                op: format!("write record {name:?}"),
                acks,
                needed: quorum(r),
                failures: failures.join("; "),
            })
        }
    }

    async fn record_on(&self, host: &Host, name: &str) -> Result<Option<Record>> {
        match host {
            Host::Me => {
                let (local, name) = (self.local.clone(), name.to_owned());
                blocking(move || local.record(&name)).await
            }
            Host::Peer(p) => {
                let name = name.to_owned();
                self.on_peer(p, |c| async move { c.record(&name, 0).await })
                    .await
            }
        }
    }

    async fn store_record_on(&self, host: &Host, name: &str, record: Record) -> Result<bool> {
        match host {
            Host::Me => {
                let (local, name) = (self.local.clone(), name.to_owned());
                blocking(move || local.store_record(&name, record)).await
            }
            Host::Peer(p) => {
                let name = name.to_owned();
                self.on_peer(p, |c| async move { c.store_record(&name, record).await })
                    .await
            }
        }
    }

    // ---- status -----------------------------------------------------------------------

    /// This host's usage and maintenance progress.
    pub async fn stats(&self) -> Result<HostStats> {
        let local = self.local.clone();
        let local = blocking(move || local.stats()).await?;
        let mut m = self
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        m.scrub_running = self.scrub.running.load(Ordering::Relaxed);
        m.scrub_total = self.scrub.total.load(Ordering::Relaxed);
        m.scrub_checked = self.scrub.checked.load(Ordering::Relaxed);
        m.scrub_bytes = self.scrub.bytes.load(Ordering::Relaxed);
        m.scrub_corrupt = self.scrub.corrupt.load(Ordering::Relaxed);
        Ok(HostStats {
            host: self.me.clone(),
            local,
            maintenance: m,
        })
    }

    /// Every host of the membership as seen from here (this host's figures fresh, peers' from
    /// their last probe), and the replication factor.
    pub async fn view(&self) -> (u8, Vec<HostView>) {
        let (replicas, hosts, peers) = {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            (
                s.membership.replicas,
                s.membership.hosts.clone(),
                s.peers.clone(),
            )
        };
        let mine = self.stats().await;
        let mut views = Vec::new();
        let my_endpoint = hosts
            .iter()
            .find(|h| h.name == self.me)
            .map(|h| h.endpoint.to_string())
            .unwrap_or_default();
        views.push(HostView {
            name: self.me.clone(),
            endpoint: my_endpoint,
            state: HostState::Up,
            rtt_us: 0,
            error: mine
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            stats: mine.ok(),
        });
        for p in peers {
            let h = p.health.lock().unwrap_or_else(|e| e.into_inner());
            views.push(HostView {
                name: p.name.clone(),
                endpoint: p.endpoint.to_string(),
                state: if h.lost {
                    HostState::Lost
                } else if h.up {
                    HostState::Up
                } else {
                    HostState::Down
                },
                rtt_us: h.rtt_us,
                stats: h.stats.clone().filter(|_| h.up),
                error: h.error.clone(),
            });
        }
        (replicas.min(255) as u8, views)
    }

    // ---- background work --------------------------------------------------------------

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
        let peers = self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .peers
            .clone();
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
        let object = PutObject {
            id: *id,
            data,
            refs,
        };
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
                    let (local, obj) = (
                        self.local.clone(),
                        PutObject {
                            id: *id,
                            data,
                            refs,
                        },
                    );
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
        let peers = self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .peers
            .clone();
        for p in peers {
            let h = p.health.lock().unwrap_or_else(|e| e.into_inner());
            if h.lost {
                continue;
            }
            drop(h);
            hosts.push(Host::Peer(p));
        }
        // Roots: the references of every record on every host.
        let mut live: HashSet<ObjectId> = HashSet::new();
        let mut frontier: Vec<ObjectId> = Vec::new();
        for host in &hosts {
            let records = match host {
                Host::Me => {
                    let local = self.local.clone();
                    blocking(move || local.records()).await?
                }
                Host::Peer(p) => {
                    self.on_peer(p, |c| async move { c.records().await })
                        .await?
                }
            };
            for (_, r) in records {
                for id in r.refs {
                    if live.insert(id) {
                        frontier.push(id);
                    }
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

/// Run `f` against `peer` within `timeout`; a transport failure marks it down.
async fn call_peer<T, F, Fut>(peer: &Arc<Peer>, timeout: Duration, f: F) -> Result<T>
where
    F: FnOnce(StorageClient) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let result = async {
        let client = peer_client(peer).await?;
        tokio::time::timeout(timeout, f(client))
            .await
            .map_err(|_| StoreError::Peer {
                peer: peer.name.clone(),
                message: format!("no answer within {timeout:?}"),
            })?
    }
    .await;
    if let Err(StoreError::Peer { message, .. }) = &result {
        mark_down(peer, message);
    }
    result
}

/// A connection to `peer` (made if there is none or it failed).
async fn peer_client(peer: &Peer) -> Result<StorageClient> {
    let mut slot = peer.client.lock().await;
    if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
        return Ok(c.clone());
    }
    let c = tokio::time::timeout(
        Duration::from_secs(5),
        StorageClient::connect(&peer.endpoint),
    )
    .await
    .map_err(|_| StoreError::Peer {
        peer: peer.name.clone(),
        message: "connect timed out".into(),
    })??;
    *slot = Some(c.clone());
    Ok(c)
}

fn mark_down(peer: &Peer, why: &str) {
    let mut h = peer.health.lock().unwrap_or_else(|e| e.into_inner());
    if h.up {
        warn!(host = %peer.name, error = %why, "storage host is down");
    }
    h.up = false;
    h.probed = true;
    h.error = why.to_owned();
    h.down_since.get_or_insert_with(Instant::now);
}
