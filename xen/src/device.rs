//! The backend half of one Xen 9pfs device: the xenbus handshake, ring mapping and teardown.
//!
//! The toolstack (libxl, or `envoy-xl attach`) creates a backend directory
//! `/local/domain/<backend>/backend/<kind>/<domid>/<devid>` (`kind` is `9pfs` for xl's default
//! `type=qemu`, `xen_9pfs` for `type=xen_9pfsd`) and the guest's frontend directory
//! `/local/domain/<domid>/device/9pfs/<devid>` with the share's `tag`. [`run_device`] then
//! drives the protocol of Xen's `docs/misc/9pfs.pandoc`:
//!
//! 1. publish `versions=1`, `max-rings`, `max-ring-page-order` and `state=InitWait` in one
//!    transaction (new Linux frontends wait for InitWait; old ones read the features as soon as
//!    they probe, which works as long as the nodes exist by then — `envoy-xl attach` writes them
//!    together with the device);
//! 2. when the frontend is Initialised, read `num-rings`, `ring-ref<N>`, `event-channel-<N>`,
//!    map every ring and bind every event channel, and go Connected;
//! 3. serve until the frontend closes, the device or domain is removed, or the session fails;
//!    then stop serving (which unmaps and unbinds everything) and answer Closing/Closed — ready
//!    to connect again if the frontend comes back (a guest reloading its driver). A removed
//!    device ends the loop with Closed while its backend directory still exists: `xl destroy`
//!    removes the frontend's directory first and waits for that before it goes on.
//!
//! Everything the guest writes is parsed strictly and bounded; anything wrong disconnects the
//! device with the reason logged and written to `error/<backend path>/error`, the node Linux
//! backends use (`xenbus_dev_fatal`). States are written only while the backend directory
//! exists, so a device the toolstack removed is never recreated by a late write.

use std::future::Future;

use tokio::sync::watch;

use crate::evtchn::EventChannels;
use crate::grant::GrantMapper;
use crate::ring::{MAX_RING_ORDER, Ring, RingPages, map_ring};
use crate::xenbus::XenbusState;
use crate::xenstore::{Watch, WatchEvent, Xenstore, XsError};

/// The kinds of 9pfs backend directories: xl's `type=qemu` and `type=xen_9pfsd`.
pub const BACKEND_KINDS: [&str; 2] = ["9pfs", "xen_9pfs"];

/// What this backend offers frontends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendLimits {
    /// `max-rings` (Linux needs at least 2 and uses 2).
    pub max_rings: u32,
    /// `max-ring-page-order` (at most 9: 512 refs fill the intf page).
    pub max_ring_order: u32,
}

impl Default for BackendLimits {
    fn default() -> Self {
        BackendLimits {
            max_rings: 8,
            max_ring_order: MAX_RING_ORDER,
        }
    }
}

/// The share the toolstack configured: the backend directory's keys and the frontend's tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareConfig {
    /// `path`: what to serve (a host directory).
    pub path: String,
    /// `security_model` (`none` is the only one Xen defines).
    pub security_model: String,
    /// The frontend's `tag` (what the guest mounts), if present.
    pub tag: Option<String>,
    /// `max-space` in MiB (0: unlimited).
    pub max_space_mib: u64,
    /// `max-files` (0: unlimited).
    pub max_files: u64,
    /// `max-open-files` (0: unlimited).
    pub max_open_files: u64,
    /// `auto-delete`: remove the oldest files when `max-space` is reached.
    pub auto_delete: bool,
    /// `envoy-read-only` (written by `envoy-xl attach --ro`): refuse every modification.
    pub read_only: bool,
}

/// One 9pfs device, as found in xenstore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The backend directory.
    pub backend: String,
    /// The frontend directory (from the backend's `frontend` node).
    pub frontend: String,
    /// The guest (from `frontend-id`).
    pub domid: u16,
    /// The device index (last element of the backend path).
    pub devid: u32,
    /// The share.
    pub config: ShareConfig,
}

/// Where the frontend granted one ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRef {
    /// Grant reference of the intf page (`ring-ref<N>`).
    pub intf_ref: u32,
    /// The frontend's unbound event-channel port (`event-channel-<N>`).
    pub port: u32,
}

/// A mapped ring and its bound event channel.
pub struct MappedRing<G: GrantMapper, E: EventChannels> {
    /// The ring over the guest's pages.
    pub ring: Ring<RingPages<G::Mapping>>,
    /// The bound event channel.
    pub port: E::Port,
}

/// Why a device could not be served.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Talking to xenstore failed.
    #[error(transparent)]
    Xenstore(#[from] XsError),
    /// The toolstack's nodes are missing or malformed.
    #[error("backend {backend}: {reason}")]
    Backend {
        /// The backend directory.
        backend: String,
        /// What is wrong.
        reason: String,
    },
    /// The guest published something unusable (the device is disconnected).
    #[error("frontend {frontend}: {reason}")]
    Frontend {
        /// The frontend directory.
        frontend: String,
        /// What is wrong.
        reason: String,
    },
}

/// How [`run_device`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum DeviceEnd {
    /// The backend or frontend directory was removed (device detached, domain destroyed).
    Removed,
    /// The shutdown signal was raised.
    Shutdown,
}

/// A snapshot of both ends, re-read whenever a watch fires (level-triggered: no event is
/// interpreted on its own, so coalesced or overflowed watches lose nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ends {
    backend_exists: bool,
    frontend_exists: bool,
    frontend: XenbusState,
}

impl Ends {
    fn removed(&self) -> bool {
        !self.backend_exists || !self.frontend_exists
    }
}

fn bad_backend(backend: &str, reason: impl Into<String>) -> DeviceError {
    DeviceError::Backend {
        backend: backend.to_owned(),
        reason: reason.into(),
    }
}

fn parse_u64(text: Option<String>) -> u64 {
    text.and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

impl Device {
    /// Read the device at `backend` (a backend directory).
    pub async fn probe(xs: &Xenstore, backend: &str) -> Result<Device, DeviceError> {
        let backend = backend.trim_end_matches('/').to_owned();
        let devid = backend
            .rsplit('/')
            .next()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| bad_backend(&backend, "the path does not end in a device index"))?;
        let frontend = xs.read_string(&format!("{backend}/frontend")).await?;
        let domid = xs
            .read_string(&format!("{backend}/frontend-id"))
            .await?
            .trim()
            .parse()
            .map_err(|_| bad_backend(&backend, "frontend-id is not a domain id"))?;
        let path = xs.read_string(&format!("{backend}/path")).await?;
        let node = |key: &str| format!("{backend}/{key}");
        let config = ShareConfig {
            path,
            security_model: xs
                .try_read_string(&node("security_model"))
                .await?
                .unwrap_or_else(|| "none".into()),
            tag: xs.try_read_string(&format!("{frontend}/tag")).await?,
            max_space_mib: parse_u64(xs.try_read_string(&node("max-space")).await?),
            max_files: parse_u64(xs.try_read_string(&node("max-files")).await?),
            max_open_files: parse_u64(xs.try_read_string(&node("max-open-files")).await?),
            auto_delete: parse_u64(xs.try_read_string(&node("auto-delete")).await?) != 0,
            read_only: parse_u64(xs.try_read_string(&node("envoy-read-only")).await?) != 0,
        };
        Ok(Device {
            backend,
            frontend,
            domid,
            devid,
            config,
        })
    }

    /// Publish the backend's features and go to InitWait, atomically.
    pub async fn announce(&self, xs: &Xenstore, limits: &BackendLimits) -> Result<(), XsError> {
        let b = &self.backend;
        let writes = [
            (format!("{b}/versions"), "1".to_owned()),
            (format!("{b}/max-rings"), limits.max_rings.to_string()),
            (
                format!("{b}/max-ring-page-order"),
                limits.max_ring_order.to_string(),
            ),
            (format!("{b}/state"), XenbusState::InitWait.as_node()),
        ];
        write_if_exists(xs, &format!("{b}/state"), &writes).await
    }

    /// Write the backend's state, unless the toolstack removed the directory.
    pub async fn set_state(&self, xs: &Xenstore, state: XenbusState) -> Result<(), XsError> {
        let node = format!("{}/state", self.backend);
        write_if_exists(xs, &node, &[(node.clone(), state.as_node())]).await
    }

    /// Record why the device was disconnected where admins and tools look for it.
    pub async fn report_error(&self, xs: &Xenstore, reason: &str) -> Result<(), XsError> {
        let home = self
            .backend
            .split("/backend/")
            .next()
            .unwrap_or("/local/domain/0");
        let rel = self.backend.strip_prefix(home).unwrap_or(&self.backend);
        xs.write(&format!("{home}/error{rel}/error"), reason).await
    }

    async fn ends(&self, xs: &Xenstore) -> Result<Ends, XsError> {
        let backend_exists = xs
            .try_read_string(&format!("{}/state", self.backend))
            .await?
            .is_some();
        let state = xs
            .try_read_string(&format!("{}/state", self.frontend))
            .await?;
        Ok(Ends {
            backend_exists,
            frontend_exists: state.is_some(),
            frontend: state.map_or(XenbusState::Unknown, |s| XenbusState::parse(&s)),
        })
    }

    /// Read the rings the frontend published (it is Initialised).
    pub async fn read_rings(
        &self,
        xs: &Xenstore,
        limits: &BackendLimits,
    ) -> Result<Vec<RingRef>, DeviceError> {
        let f = &self.frontend;
        let bad = |reason: String| DeviceError::Frontend {
            frontend: f.clone(),
            reason,
        };
        let read_u32 = async |key: String| -> Result<u32, DeviceError> {
            let text = xs
                .try_read_string(&format!("{f}/{key}"))
                .await?
                .ok_or_else(|| bad(format!("{key} is missing")))?;
            text.trim()
                .parse::<u32>()
                .map_err(|_| bad(format!("{key} = {text:?} is not a number")))
        };
        let version = xs
            .try_read_string(&format!("{f}/version"))
            .await?
            .unwrap_or_default();
        if version.trim() != "1" {
            return Err(bad(format!(
                "version {version:?} is not the protocol version 1 this backend speaks"
            )));
        }
        let count = read_u32("num-rings".into()).await?;
        if count == 0 || count > limits.max_rings {
            return Err(bad(format!(
                "num-rings = {count} is outside 1..={}",
                limits.max_rings
            )));
        }
        let mut rings = Vec::with_capacity(count as usize);
        for n in 0..count {
            rings.push(RingRef {
                intf_ref: read_u32(format!("ring-ref{n}")).await?,
                port: read_u32(format!("event-channel-{n}")).await?,
            });
        }
        Ok(rings)
    }

    /// Map every ring and bind every event channel; on any failure, everything mapped so far
    /// is dropped (unmapped, unbound) before the error returns.
    pub fn map<G: GrantMapper, E: EventChannels>(
        &self,
        refs: &[RingRef],
        grants: &G,
        events: &E,
        limits: &BackendLimits,
    ) -> Result<Vec<MappedRing<G, E>>, DeviceError> {
        let bad = |reason: String| DeviceError::Frontend {
            frontend: self.frontend.clone(),
            reason,
        };
        let max_order = limits.max_ring_order.min(MAX_RING_ORDER);
        refs.iter()
            .enumerate()
            .map(|(n, r)| {
                let ring = map_ring(grants, self.domid, r.intf_ref, max_order)
                    .map_err(|e| bad(format!("ring {n}: {e}")))?;
                let port = events
                    .bind_interdomain(self.domid, r.port)
                    .map_err(|e| bad(format!("ring {n}: event channel {}: {e}", r.port)))?;
                Ok(MappedRing { ring, port })
            })
            .collect()
    }
}

/// Conflicting transactions retried before giving up.
const TRANSACTION_ATTEMPTS: u32 = 32;

/// In one transaction, if `guard` exists, make `writes` (a device the toolstack removed is
/// never recreated). Retries on conflict. (Written out rather than with
/// [`Xenstore::transaction`] so that the futures stay `Send` for spawned device tasks.)
async fn write_if_exists(
    xs: &Xenstore,
    guard: &str,
    writes: &[(String, String)],
) -> Result<(), XsError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tx = xs.transaction_start().await?;
        if tx.try_read_string(guard).await?.is_none() {
            return tx.abort().await;
        }
        for (path, value) in writes {
            tx.write(path, value).await?;
        }
        match tx.commit().await {
            Err(e) if e.is_again() && attempt < TRANSACTION_ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt))).await;
            }
            done => return done,
        }
    }
}

/// Two watches covering both ends of a device.
struct Watches {
    backend: Watch,
    frontend: Watch,
}

impl Watches {
    async fn new(xs: &Xenstore, device: &Device) -> Result<Watches, XsError> {
        Ok(Watches {
            backend: xs.watch(&device.backend).await?,
            frontend: xs.watch(&device.frontend).await?,
        })
    }

    /// Wait for any change at either end; `false` if the xenstore connection is gone.
    async fn changed(&mut self) -> bool {
        let event = tokio::select! {
            e = self.backend.next() => e,
            e = self.frontend.next() => e,
        };
        matches!(event, Some(WatchEvent::Changed(_) | WatchEvent::Overflowed))
    }
}

fn lost() -> DeviceError {
    DeviceError::Xenstore(XsError::Closed {
        op: "watch",
        path: String::new(),
        reason: "the xenstore connection ended".into(),
    })
}

/// Serve the device at `backend` until it is removed or `shutdown` is raised.
///
/// `serve` is called once per connection of the frontend with the mapped rings and a stop
/// signal; it returns when the session ends (`Err(reason)` if the guest broke the protocol)
/// or promptly after the stop signal, having dropped the rings. Errors in the frontend's
/// setup or session disconnect the device (logged, reported in xenstore) and wait for the
/// frontend to start over; only xenstore failures and bad toolstack nodes end the loop early.
pub async fn run_device<G, E, S, F>(
    xs: &Xenstore,
    backend: &str,
    grants: &G,
    events: &E,
    limits: &BackendLimits,
    mut shutdown: watch::Receiver<bool>,
    mut serve: S,
) -> Result<DeviceEnd, DeviceError>
where
    G: GrantMapper,
    E: EventChannels,
    S: FnMut(&Device, Vec<MappedRing<G, E>>, watch::Receiver<bool>) -> F,
    F: Future<Output = Result<(), String>>,
{
    let device = Device::probe(xs, backend).await?;
    let span = tracing::info_span!("device", domid = device.domid, devid = device.devid);
    tracing::Instrument::instrument(
        device_loop(
            xs,
            &device,
            grants,
            events,
            limits,
            &mut shutdown,
            &mut serve,
        ),
        span,
    )
    .await
}

/// [`run_device`] once the device is known.
async fn device_loop<G, E, S, F>(
    xs: &Xenstore,
    device: &Device,
    grants: &G,
    events: &E,
    limits: &BackendLimits,
    shutdown: &mut watch::Receiver<bool>,
    serve: &mut S,
) -> Result<DeviceEnd, DeviceError>
where
    G: GrantMapper,
    E: EventChannels,
    S: FnMut(&Device, Vec<MappedRing<G, E>>, watch::Receiver<bool>) -> F,
    F: Future<Output = Result<(), String>>,
{
    let mut watches = Watches::new(xs, device).await?;
    loop {
        // A device whose frontend directory is gone is being removed: never announce it again.
        if device.ends(xs).await?.removed() {
            return removed(xs, device).await;
        }
        // --- InitWait, then wait for the frontend's rings.
        device.announce(xs, limits).await?;
        let ends = loop {
            let ends = device.ends(xs).await?;
            if ends.removed() {
                return removed(xs, device).await;
            }
            if matches!(
                ends.frontend,
                XenbusState::Initialised | XenbusState::Connected
            ) || ends.frontend.is_closing()
            {
                break ends;
            }
            tokio::select! {
                ok = watches.changed() => if !ok { return Err(lost()) },
                _ = shutdown.changed() => return Ok(DeviceEnd::Shutdown),
            }
        };
        let outcome = if ends.frontend.is_closing() {
            Err("the frontend closed before connecting".to_owned())
        } else {
            connect_and_serve(
                xs,
                device,
                grants,
                events,
                limits,
                &mut watches,
                shutdown,
                serve,
            )
            .await?
        };
        match outcome {
            Ok(Served::Removed) => return removed(xs, device).await,
            Ok(Served::Shutdown) => {
                device.set_state(xs, XenbusState::Closing).await?;
                return Ok(DeviceEnd::Shutdown);
            }
            Ok(Served::FrontendClosing) => {
                tracing::info!("frontend closing; disconnected");
            }
            Err(reason) => {
                tracing::warn!(%reason, "disconnecting the device");
                device.report_error(xs, &reason).await?;
            }
        }
        // --- Closing until the frontend is Closed (or gone), then Closed.
        device.set_state(xs, XenbusState::Closing).await?;
        loop {
            let ends = device.ends(xs).await?;
            if ends.removed() {
                return removed(xs, device).await;
            }
            if matches!(
                ends.frontend,
                XenbusState::Closed | XenbusState::Initialising | XenbusState::Unknown
            ) {
                break;
            }
            tokio::select! {
                ok = watches.changed() => if !ok { return Err(lost()) },
                _ = shutdown.changed() => return Ok(DeviceEnd::Shutdown),
            }
        }
        device.set_state(xs, XenbusState::Closed).await?;
        // --- The frontend may come back (driver reloaded): wait for it to initialise again.
        loop {
            let ends = device.ends(xs).await?;
            if ends.removed() {
                return removed(xs, device).await;
            }
            if ends.frontend == XenbusState::Initialising {
                break;
            }
            tokio::select! {
                ok = watches.changed() => if !ok { return Err(lost()) },
                _ = shutdown.changed() => return Ok(DeviceEnd::Shutdown),
            }
        }
    }
}

/// The device is going away: the toolstack removed the frontend's directory or the backend's.
/// `xl destroy` (libxl's forced removal) removes the frontend's first, writes `online=0` and
/// Closing, and waits up to 10 s for the backend to report Closed before removing the backend's
/// directory and the domain — as Linux's backends and xen-9pfsd do, say Closed (once, and only
/// while the backend directory exists): everything is unmapped and unbound by now.
async fn removed(xs: &Xenstore, device: &Device) -> Result<DeviceEnd, DeviceError> {
    let state = xs
        .try_read_string(&format!("{}/state", device.backend))
        .await?;
    if state.is_some_and(|s| XenbusState::parse(&s) != XenbusState::Closed) {
        device.set_state(xs, XenbusState::Closed).await?;
    }
    Ok(DeviceEnd::Removed)
}

/// How one connection of the frontend ended, when the device itself is fine.
enum Served {
    Removed,
    Shutdown,
    FrontendClosing,
}

/// Map, go Connected, serve, and stop serving at the first sign of the end. The outer
/// `Result` is for xenstore failures; the inner `Err` is a disconnect reason.
#[allow(clippy::too_many_arguments)]
async fn connect_and_serve<G, E, S, F>(
    xs: &Xenstore,
    device: &Device,
    grants: &G,
    events: &E,
    limits: &BackendLimits,
    watches: &mut Watches,
    shutdown: &mut watch::Receiver<bool>,
    serve: &mut S,
) -> Result<Result<Served, String>, DeviceError>
where
    G: GrantMapper,
    E: EventChannels,
    S: FnMut(&Device, Vec<MappedRing<G, E>>, watch::Receiver<bool>) -> F,
    F: Future<Output = Result<(), String>>,
{
    let refs = match device.read_rings(xs, limits).await {
        Ok(refs) => refs,
        Err(DeviceError::Frontend { reason, .. }) => return Ok(Err(reason)),
        Err(e) => return Err(e),
    };
    let rings = match device.map(&refs, grants, events, limits) {
        Ok(rings) => rings,
        Err(DeviceError::Frontend { reason, .. }) => return Ok(Err(reason)),
        Err(e) => return Err(e),
    };
    tracing::info!(rings = rings.len(), "connected");
    let (stop_tx, stop_rx) = watch::channel(false);
    let session = serve(device, rings, stop_rx);
    tokio::pin!(session);
    device.set_state(xs, XenbusState::Connected).await?;
    let why = loop {
        let ends = device.ends(xs).await?;
        if ends.removed() {
            break Ok(Served::Removed);
        }
        if ends.frontend.is_closing() {
            break Ok(Served::FrontendClosing);
        }
        tokio::select! {
            ended = &mut session => {
                return Ok(match ended {
                    Ok(()) => Ok(Served::FrontendClosing),
                    Err(reason) => Err(reason),
                });
            }
            ok = watches.changed() => if !ok { return Err(lost()) },
            _ = shutdown.changed() => break Ok(Served::Shutdown),
        }
    };
    let _ = stop_tx.send(true);
    let _ = session.await;
    Ok(why)
}
