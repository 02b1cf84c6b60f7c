//! envoyd as the dom0 9pfs backend: find the 9pfs devices whose backend is this domain in
//! xenstore and serve each over its shared rings.
//!
//! libxl writes a backend directory per device under `/local/domain/<me>/backend/9pfs/` (xl's
//! `type=qemu`) or `.../backend/xen_9pfs/` (`type=xen_9pfsd`). [`XenBackend::run`] watches the
//! kinds it serves, starts one task per device (devices that existed before envoyd started included) and
//! forgets a task when its device is removed. Each task runs the xenbus handshake
//! ([`envoy_xen::device::run_device`]) and, per frontend connection, serves the device's `path`
//! with the export backend through the ring transport; the guest's identity is its domid.
//!
//! With `--xen-9pfsd` (or when started under the name `xen-9pfsd`, as libxl ≥ 4.19 does for
//! `type=xen_9pfsd`) it also announces itself the way xen-9pfsd does:
//! `/local/domain/<me>/libxl/xen-9pfs/state = running` and `.../pid`, which libxl waits for.
//! Like xen-9pfsd it claims that node in a transaction and ends at once (successfully) when
//! the node exists already: libxl adds a guest's p9 devices concurrently and spawns a daemon
//! for each one that sees no `state` yet, so a guest with two shares starts two. As xen-9pfsd
//! it serves `xen_9pfs` devices only: on Xen ≥ 4.19 a `type=qemu` device belongs to the QEMU
//! libxl starts as the guest's device model, which may run beside it.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use envoy::{ExportFs, Server, ServerConfig};
use envoy_transport::xen::{XenDevice, XenOptions, XenRing, XenRx, XenTx, xen_channel};
use envoy_transport::{Channel, Peer};
use envoy_xen::device::{BACKEND_KINDS, BackendLimits, Device, DeviceEnd, MappedRing, run_device};
use envoy_xen::evtchn::EventChannels;
use envoy_xen::grant::GrantMapper;
use envoy_xen::xenstore::{WatchEvent, Xenstore};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The Xen backend of one envoyd.
pub struct XenBackend<G, E> {
    xs: Xenstore,
    grants: Arc<G>,
    events: Arc<E>,
    limits: BackendLimits,
    config: ServerConfig,
    announce_9pfsd: bool,
    kinds: &'static [&'static str],
}

impl<G: GrantMapper, E: EventChannels> XenBackend<G, E> {
    /// A backend talking to `xs`, mapping with `grants`, binding with `events`; every device's
    /// sessions use `config`. `announce_9pfsd`: play xen-9pfsd's part towards libxl (and
    /// serve only its kind of device, `xen_9pfs`); otherwise serve both kinds.
    pub fn new(
        xs: Xenstore,
        grants: G,
        events: E,
        config: ServerConfig,
        announce_9pfsd: bool,
    ) -> Self {
        XenBackend {
            xs,
            grants: Arc::new(grants),
            events: Arc::new(events),
            limits: BackendLimits::default(),
            config,
            announce_9pfsd,
            kinds: if announce_9pfsd {
                &BACKEND_KINDS[1..]
            } else {
                &BACKEND_KINDS
            },
        }
    }

    /// This domain's id (`domid` relative to the connection's home; dom0 when absent).
    async fn my_domid(&self) -> Result<u32> {
        Ok(match self.xs.try_read_string("domid").await? {
            Some(d) => d
                .trim()
                .parse()
                .context("xenstore `domid` is not a number")?,
            None => 0,
        })
    }

    /// Serve until `shutdown`; then stop every device (its guests see Closing).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let me = self.my_domid().await?;
        let home = format!("/local/domain/{me}");
        if self.announce_9pfsd {
            let d = format!("{home}/libxl/xen-9pfs");
            if !self.announce(&d).await? {
                // libxl adds a guest's p9 devices concurrently and spawns xen-9pfsd for each
                // one it sees no daemon for yet: the latecomers leave, as xen-9pfsd does.
                info!("{d}/state exists: another xen-9pfsd runs; exiting");
                return Ok(());
            }
            info!("announced as xen-9pfsd ({d}/state = running)");
        }
        let mut watches = Vec::new();
        for kind in self.kinds {
            watches.push(self.xs.watch(&format!("{home}/backend/{kind}")).await?);
        }
        info!(domid = me, kinds = ?self.kinds, "serving Xen 9pfs devices");
        let mut devices: HashMap<String, JoinHandle<()>> = HashMap::new();
        loop {
            devices.retain(|_, task| !task.is_finished());
            for path in self.scan(&home).await? {
                if devices.contains_key(&path) {
                    continue;
                }
                info!(backend = %path, "new 9pfs device");
                devices.insert(path.clone(), self.spawn_device(path, shutdown.clone()));
            }
            // One or two kinds: a second watch that is absent never fires.
            let (a, b) = watches.split_at_mut(1);
            let second = async {
                match b.first_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                e = a[0].next() => e,
                e = second => e,
                _ = shutdown.changed() => break,
            };
            if !matches!(event, Some(WatchEvent::Changed(_) | WatchEvent::Overflowed)) {
                anyhow::bail!("the xenstore connection ended");
            }
        }
        for (_, task) in devices.drain() {
            let _ = task.await;
        }
        if self.announce_9pfsd {
            let _ = self.xs.rm(&format!("{home}/libxl/xen-9pfs")).await;
        }
        Ok(())
    }

    /// Claim the xen-9pfsd role under `dir` (`<home>/libxl/xen-9pfs`): in one transaction,
    /// unless `dir/state` exists already, write `pid` and `state = running`. `false`: another
    /// daemon holds it.
    async fn announce(&self, dir: &str) -> Result<bool> {
        let (state, pid) = (format!("{dir}/state"), format!("{dir}/pid"));
        let me = std::process::id().to_string();
        let claimed = self
            .xs
            .transaction(async move |tx| {
                if tx.try_read_string(&state).await?.is_some() {
                    return Ok(false);
                }
                tx.write(&pid, me.as_str()).await?;
                tx.write(&state, "running").await?;
                Ok(true)
            })
            .await?;
        Ok(claimed)
    }

    /// Every device directory `<home>/backend/<kind>/<domid>/<devid>` present now.
    async fn scan(&self, home: &str) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for kind in self.kinds {
            let base = format!("{home}/backend/{kind}");
            let guests = match self.xs.directory(&base).await {
                Ok(g) => g,
                Err(e) if e.is_enoent() => continue,
                Err(e) => return Err(e.into()),
            };
            for guest in guests {
                let dir = format!("{base}/{guest}");
                let devs = match self.xs.directory(&dir).await {
                    Ok(d) => d,
                    Err(e) if e.is_enoent() => continue,
                    Err(e) => return Err(e.into()),
                };
                found.extend(devs.into_iter().map(|d| format!("{dir}/{d}")));
            }
        }
        Ok(found)
    }

    fn spawn_device(&self, backend: String, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let (xs, grants, events) = (self.xs.clone(), self.grants.clone(), self.events.clone());
        let (limits, config) = (self.limits, self.config.clone());
        tokio::spawn(async move {
            let outcome = run_device(
                &xs,
                &backend,
                &*grants,
                &*events,
                &limits,
                shutdown,
                |device, rings, stop| serve_rings(device, rings, stop, config.clone()),
            )
            .await;
            match outcome {
                Ok(DeviceEnd::Removed) => info!(%backend, "device removed"),
                Ok(DeviceEnd::Shutdown) => info!(%backend, "device stopped (shutdown)"),
                Err(e) => warn!(%backend, error = %e, "device abandoned"),
            }
        })
    }
}

/// One connection of a device's frontend: the export of the device's `path`, served through
/// its rings until the session ends or `stop` is raised. `Err` carries the reason the guest
/// broke the protocol.
fn serve_rings<G: GrantMapper, E: EventChannels>(
    device: &Device,
    rings: Vec<MappedRing<G, E>>,
    stop: watch::Receiver<bool>,
    config: ServerConfig,
) -> impl std::future::Future<Output = Result<(), String>> + use<G, E> {
    let prepared = prepare(device, rings, config);
    async move {
        let (server, channel, ring_tasks) = prepared?;
        server.serve_xen(channel, ring_tasks, stop).await
    }
}

type Prepared = (Arc<Server<ExportFs>>, Channel<XenRx, XenTx>, XenDevice);

/// The server for the device's share and the ring channel to it.
fn prepare<G: GrantMapper, E: EventChannels>(
    device: &Device,
    rings: Vec<MappedRing<G, E>>,
    config: ServerConfig,
) -> Result<Prepared, String> {
    let share = &device.config;
    let fs = ExportFs::new(std::path::Path::new(&share.path), share.read_only)
        .map_err(|e| format!("cannot export {}: {e}", share.path))?;
    let rings = rings
        .into_iter()
        .map(|r| XenRing {
            ring: r.ring,
            events: r.port,
        })
        .collect();
    let peer = Peer::Xen {
        domid: device.domid,
        devid: device.devid,
    };
    let (channel, ring_tasks) =
        xen_channel(rings, peer, XenOptions::default()).map_err(|e| e.to_string())?;
    Ok((Server::new(Arc::new(fs), config), channel, ring_tasks))
}
