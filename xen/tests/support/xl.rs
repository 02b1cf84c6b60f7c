//! What the toolstack and a Linux frontend write to xenstore for a 9pfs device, for tests that
//! play both around a real backend: libxl's nodes (`toolstack_creates`), the frontend's ring
//! publication (`frontend_publishes`, over simulated rings), and a bounded wait for a node.
#![allow(dead_code)] // each test binary uses its own subset

use envoy_xen::sim::{SimEventTable, SimFrontend, SimGrantTable};
use envoy_xen::xenstore::Xenstore;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::HostXenstored;

/// A simulated Xen host for backend tests: the real xenstored (under the shim), a client of
/// it, simulated grants and event channels, and a stop signal for the backend under test.
pub struct SimXenHost {
    /// The daemon (stopped on drop).
    pub daemon: HostXenstored,
    /// A connection to it.
    pub xs: Xenstore,
    /// Granted pages and backend mappings.
    pub grants: SimGrantTable,
    /// Event channels.
    pub events: SimEventTable,
    /// Raise to stop the backend under test.
    pub stop: watch::Sender<bool>,
}

impl SimXenHost {
    /// Start xenstored and connect.
    pub async fn start() -> SimXenHost {
        let daemon = HostXenstored::start();
        let xs = Xenstore::connect_socket(daemon.socket_path())
            .await
            .unwrap();
        SimXenHost {
            daemon,
            xs,
            grants: SimGrantTable::new(),
            events: SimEventTable::new(),
            stop: watch::channel(false).0,
        }
    }
}

pub fn backend_path(domid: u16, devid: u32) -> String {
    backend_path_of("9pfs", domid, devid)
}

/// The backend directory of a device of backend kind `kind` (`9pfs` or `xen_9pfs`).
pub fn backend_path_of(kind: &str, domid: u16, devid: u32) -> String {
    format!("/local/domain/0/backend/{kind}/{domid}/{devid}")
}

pub fn frontend_path(domid: u16, devid: u32) -> String {
    format!("/local/domain/{domid}/device/9pfs/{devid}")
}

/// What libxl writes for `p9 = [ 'tag=share, path=/srv, security_model=none' ]`.
pub async fn toolstack_creates(xs: &Xenstore, domid: u16, devid: u32) {
    toolstack_creates_share(xs, domid, devid, "/srv", "share").await
}

/// What libxl writes for `p9 = [ 'tag=TAG, path=PATH, security_model=none' ]`.
pub async fn toolstack_creates_share(xs: &Xenstore, domid: u16, devid: u32, path: &str, tag: &str) {
    toolstack_creates_kind(xs, "9pfs", domid, devid, path, tag).await
}

/// The same for a device of backend kind `kind` (`xen_9pfs`: xl's `type=xen_9pfsd`).
pub async fn toolstack_creates_kind(
    xs: &Xenstore,
    kind: &str,
    domid: u16,
    devid: u32,
    path: &str,
    tag: &str,
) {
    let (b, f) = (
        backend_path_of(kind, domid, devid),
        frontend_path(domid, devid),
    );
    xs.transaction(async |tx| {
        tx.write(&format!("{b}/frontend"), &f).await?;
        tx.write(&format!("{b}/frontend-id"), domid.to_string())
            .await?;
        tx.write(&format!("{b}/online"), "1").await?;
        tx.write(&format!("{b}/state"), "1").await?;
        tx.write(&format!("{b}/path"), path).await?;
        tx.write(&format!("{b}/security_model"), "none").await?;
        tx.write(&format!("{b}/max-files"), "100").await?;
        tx.write(&format!("{f}/backend"), &b).await?;
        tx.write(&format!("{f}/backend-id"), "0").await?;
        tx.write(&format!("{f}/state"), "1").await?;
        tx.write(&format!("{f}/tag"), tag).await?;
        Ok(())
    })
    .await
    .unwrap();
}

pub async fn toolstack_destroys(xs: &Xenstore, domid: u16, devid: u32) {
    xs.rm(&backend_path(domid, devid)).await.unwrap();
    xs.rm(&frontend_path(domid, devid)).await.unwrap();
}

/// Wait (bounded) until `path` reads `want`.
pub async fn wait_for(xs: &Xenstore, path: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = xs.try_read_string(path).await.unwrap();
        if now.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} is {now:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The guest side: set up 2 rings like Linux and publish them, then go Initialised.
pub async fn frontend_publishes(
    xs: &Xenstore,
    grants: &SimGrantTable,
    events: &SimEventTable,
    domid: u16,
    devid: u32,
    order: u32,
) -> Vec<SimFrontend> {
    frontend_publishes_with(xs, grants, events, domid, devid, order, |_| {}, None).await
}

/// The same, with the rings tampered with by `tweak` and ring 1's published grant ref
/// replaced by `ref1`, before anything is published (a hostile guest).
#[allow(clippy::too_many_arguments)]
pub async fn frontend_publishes_with(
    xs: &Xenstore,
    grants: &SimGrantTable,
    events: &SimEventTable,
    domid: u16,
    devid: u32,
    order: u32,
    tweak: impl FnOnce(&[SimFrontend]),
    ref1: Option<u32>,
) -> Vec<SimFrontend> {
    let f = frontend_path(domid, devid);
    let rings: Vec<_> = (0..2)
        .map(|_| SimFrontend::new(grants, events, domid, order))
        .collect();
    tweak(&rings);
    xs.transaction(async |tx| {
        tx.write(&format!("{f}/version"), "1").await?;
        tx.write(&format!("{f}/num-rings"), "2").await?;
        for (n, r) in rings.iter().enumerate() {
            let intf_ref = match (n, ref1) {
                (1, Some(bogus)) => bogus,
                _ => r.intf_ref(),
            };
            tx.write(&format!("{f}/ring-ref{n}"), intf_ref.to_string())
                .await?;
            tx.write(&format!("{f}/event-channel-{n}"), r.port().to_string())
                .await?;
        }
        tx.write(&format!("{f}/state"), "3").await?;
        Ok(())
    })
    .await
    .unwrap();
    rings
}
