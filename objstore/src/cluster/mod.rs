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

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use envoy_transport::Endpoint;
use tokio::sync::watch;
use tracing::{info, warn};

mod maintenance;
mod objects;
mod records;

use crate::client::StorageClient;
use crate::local::{LocalStore, ScrubProgress};
use crate::wire::{HostState, HostStats, HostView, Maintenance};
use crate::{Result, StoreError};

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

    /// The other hosts of the membership.
    fn peers(&self) -> Vec<Arc<Peer>> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .peers
            .clone()
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
                rtt_us: if h.up { h.rtt_us } else { 0 },
                stats: h.stats.clone().filter(|_| h.up),
                error: h.error.clone(),
            });
        }
        (replicas.min(255) as u8, views)
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
