//! envoyd's storage service: this host's object store, the cluster membership file, and the
//! endpoints the storage dialect is served on (the cluster's, and a local admin socket for
//! `envoy-xl storage`).
//!
//! The membership file (TOML) lists every host and the replication factor:
//!
//! ```toml
//! replicas = 2              # copies of every object (default 2)
//! lost_after_secs = 600     # a host silent this long is lost: its objects are re-replicated
//! [[host]]
//! name = "host-a"
//! storage = "tcp:10.0.0.1:5650"
//! [[host]]
//! name = "host-b"
//! storage = "tcp:10.0.0.2:5650"
//! ```
//!
//! It is re-read on SIGHUP (or `envoy-xl storage reload`): replacing a lost host is editing
//! the file and reloading every envoyd.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use envoy_objstore::{
    Cluster, ClusterOptions, HostSpec, LocalStore, Membership, ServiceConfig, StorageService,
    StoreOptions,
};
use envoy_transport::Endpoint;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

/// What the command line says about storage.
#[derive(Debug, Clone)]
pub struct StorageSetup {
    /// This host's name in the membership.
    pub host: String,
    /// The membership file, if this host is part of a cluster.
    pub cluster_file: Option<PathBuf>,
    /// Endpoints to serve the storage dialect on (default: this host's in the membership).
    pub listen: Vec<Endpoint>,
    /// The store's directory.
    pub dir: PathBuf,
    /// The local admin socket.
    pub admin_socket: PathBuf,
    /// Free space the store keeps in reserve, bytes.
    pub reserve: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipFile {
    replicas: Option<usize>,
    lost_after_secs: Option<u64>,
    repair_interval_secs: Option<u64>,
    probe_interval_ms: Option<u64>,
    #[serde(default)]
    host: Vec<HostEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    name: String,
    storage: String,
}

/// Read a membership file.
pub fn load_membership(path: &Path) -> Result<(Membership, ClusterOptions)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the membership file {}", path.display()))?;
    let file: MembershipFile =
        toml::from_str(&text).with_context(|| format!("bad membership file {}", path.display()))?;
    if file.host.is_empty() {
        bail!("membership file {} lists no [[host]]", path.display());
    }
    let hosts = file
        .host
        .into_iter()
        .map(|h| {
            let endpoint = h.storage.parse::<Endpoint>().with_context(|| {
                format!(
                    "host {:?} in {}: bad storage endpoint",
                    h.name,
                    path.display()
                )
            })?;
            Ok(HostSpec {
                name: h.name,
                endpoint,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let defaults = ClusterOptions::default();
    let options = ClusterOptions {
        lost_after: file
            .lost_after_secs
            .map_or(defaults.lost_after, Duration::from_secs),
        repair_interval: file
            .repair_interval_secs
            .map_or(defaults.repair_interval, Duration::from_secs),
        probe_interval: file
            .probe_interval_ms
            .map_or(defaults.probe_interval, Duration::from_millis),
        ..defaults
    };
    Ok((
        Membership {
            replicas: file.replicas.unwrap_or(2),
            hosts,
        },
        options,
    ))
}

/// This machine's host name (the default name in the membership).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Open the store, join the cluster and serve the storage dialect until `stop`; returns the
/// cluster (images are served from it, replicated).
pub async fn start(
    setup: StorageSetup,
    stop: &watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<Result<()>>,
) -> Result<Arc<Cluster>> {
    let mut options = StoreOptions::default();
    if let Some(r) = setup.reserve {
        options.reserve = r;
    }
    let dir = setup.dir.clone();
    let store = tokio::task::spawn_blocking(move || LocalStore::open(&dir, options))
        .await?
        .with_context(|| format!("cannot open the object store in {}", setup.dir.display()))?;
    let store = Arc::new(store);
    let (cluster, mut listen) = match &setup.cluster_file {
        Some(file) => {
            let (membership, options) = load_membership(file)?;
            let mine = membership
                .hosts
                .iter()
                .find(|h| h.name == setup.host)
                .map(|h| h.endpoint.clone())
                .with_context(|| {
                    format!(
                        "this host ({:?}) is not in {} (give its name with --host)",
                        setup.host,
                        file.display()
                    )
                })?;
            let reload_file = file.clone();
            let reloader = Box::new(move || {
                load_membership(&reload_file)
                    .map(|(m, _)| m)
                    .map_err(|e| envoy_objstore::StoreError::Refused(format!("{e:#}")))
            });
            let cluster = Cluster::new(
                setup.host.clone(),
                store.clone(),
                membership,
                options,
                Some(reloader),
            )?;
            (cluster, vec![mine])
        }
        None => (
            Cluster::single(setup.host.clone(), store.clone()),
            Vec::new(),
        ),
    };
    if !setup.listen.is_empty() {
        listen = setup.listen.clone();
    }
    listen.push(Endpoint::Unix(setup.admin_socket.clone()));
    let service = StorageService::new(cluster.clone(), ServiceConfig::default());
    for ep in &listen {
        let listener = envoy_transport::bind(ep)
            .await
            .with_context(|| format!("cannot serve storage on {ep}"))?;
        let bound = envoy_transport::Listener::local_endpoint(&listener);
        info!(store = %setup.dir.display(), listen = %bound, host = %setup.host, "storage service");
        println!(
            "envoyd: storage {} ({}) on {bound}",
            setup.host,
            setup.dir.display()
        );
        let serving = service.clone().serve(listener, stop.clone());
        tasks.spawn(async move { Ok(serving.await?) });
    }
    let (background, stop_background) = (cluster.clone(), stop.clone());
    tasks.spawn(async move {
        background.run(stop_background).await;
        Ok(())
    });
    // SIGHUP: re-read the membership file.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut stop_hup = stop.clone();
    let reloading = cluster.clone();
    tasks.spawn(async move {
        let cluster = reloading;
        loop {
            tokio::select! {
                _ = stop_hup.changed() => return Ok(()),
                _ = hup.recv() => match cluster.reload() {
                    Ok(m) => info!("SIGHUP: {m}"),
                    Err(e) => warn!(error = %e, "SIGHUP: membership not reloaded"),
                },
            }
        }
    });
    Ok(cluster)
}
