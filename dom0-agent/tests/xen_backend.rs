//! envoyd's Xen backend mode against the real C xenstored (host shim) with simulated grants and
//! event channels: it finds devices that existed before it started and devices added later,
//! serves each device's own `path` to a 9P client behind a model of Linux's frontend, keeps
//! guests confined to their shares, honours `envoy-read-only`, releases everything when a
//! device is removed, and announces itself as xen-9pfsd when asked.

#[path = "../../xen/tests/support/mod.rs"]
mod support;

use envoy::ServerConfig;
use envoy_dom0_agent::xen::XenBackend;
use envoy_protocol::Dialect;
use envoy_protocol::consts::{P9_DOTL_CREATE, P9_DOTL_RDONLY, P9_DOTL_RDWR};
use envoy_tools::client::{Client, ClientError};
use envoy_xen::sim::linux::LinuxFrontend;
use std::path::Path;
use std::time::Duration;
use support::xl::*;

/// The simulated host plus envoyd's Xen backend running on it.
struct Host {
    sim: SimXenHost,
    backend: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl std::ops::Deref for Host {
    type Target = SimXenHost;
    fn deref(&self) -> &SimXenHost {
        &self.sim
    }
}

async fn host() -> Host {
    Host {
        sim: SimXenHost::start().await,
        backend: None,
    }
}

impl Host {
    fn start_envoyd(&mut self, announce_9pfsd: bool) {
        let backend = XenBackend::new(
            self.xs.clone(),
            self.grants.clone(),
            self.events.clone(),
            ServerConfig::default(),
            announce_9pfsd,
        );
        self.backend = Some(tokio::spawn(backend.run(self.stop.subscribe())));
    }

    /// The guest `domid` connects device `devid` like Linux and mounts it: a 9P client.
    /// (`kind`: the device's backend kind, `9pfs` or `xen_9pfs`.)
    async fn guest_mounts(&self, kind: &str, domid: u16, devid: u32) -> (Client, LinuxFrontend) {
        let b = backend_path_of(kind, domid, devid);
        wait_for(&self.xs, &format!("{b}/state"), "2").await;
        let rings = frontend_publishes(&self.xs, &self.grants, &self.events, domid, devid, 9).await;
        wait_for(&self.xs, &format!("{b}/state"), "4").await;
        self.xs
            .write(&format!("{}/state", frontend_path(domid, devid)), "4")
            .await
            .unwrap();
        let (stream, frontend) = LinuxFrontend::spawn(rings, 1 << 20).unwrap();
        let c = Client::over_stream(stream, Dialect::P9P2000L, 512 * 1024)
            .await
            .unwrap();
        c.attach(0, "root", "", 0).await.unwrap();
        (c, frontend)
    }
}

async fn read_file(c: &Client, name: &str) -> Result<Vec<u8>, ClientError> {
    c.walk(0, 10, &[name]).await?;
    c.lopen(10, P9_DOTL_RDONLY).await?;
    let data = c.read(10, 0, 4096).await;
    c.clunk(10).await?;
    Ok(data?.to_vec())
}

fn share(root: &Path, name: &str, content: &str) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello"), content).unwrap();
    dir.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_each_guest_its_own_share_and_lets_go_on_removal() {
    let mut h = host().await;
    let tmp = tempfile::tempdir().unwrap();
    let a = share(tmp.path(), "a", "guest a's file");
    let b = share(tmp.path(), "b", "guest b's file");
    // Guest 3's device exists before envoyd starts; guest 4's comes later (xen_9pfs kind).
    toolstack_creates_share(&h.xs, 3, 0, &a, "share").await;
    h.start_envoyd(false);
    let (c3, _f3) = h.guest_mounts("9pfs", 3, 0).await;
    toolstack_creates_kind(&h.xs, "xen_9pfs", 4, 0, &b, "share").await;
    let (c4, _f4) = h.guest_mounts("xen_9pfs", 4, 0).await;

    assert_eq!(read_file(&c3, "hello").await.unwrap(), b"guest a's file");
    assert_eq!(read_file(&c4, "hello").await.unwrap(), b"guest b's file");
    // Confinement: ".." at a share's root stays there, so the sibling share is out of reach
    // (a walk that stops early answers the elements it did walk: fewer than asked).
    for (c, other) in [(&c3, "b"), (&c4, "a")] {
        let walked = c
            .walk(0, 12, &["..", other, "hello"])
            .await
            .map(|q| q.len());
        assert!(
            matches!(walked, Ok(n) if n < 3) || walked.is_err(),
            "{walked:?}"
        );
    }
    // A write by guest 3 lands in share a only.
    c3.walk(0, 20, &[]).await.unwrap();
    c3.lcreate(20, "from-3", P9_DOTL_CREATE | P9_DOTL_RDWR, 0o644, 0)
        .await
        .unwrap();
    c3.write(20, 0, b"written by 3").await.unwrap();
    c3.clunk(20).await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&a).join("from-3")).unwrap(),
        b"written by 3"
    );
    assert!(!Path::new(&b).join("from-3").exists());
    assert!(read_file(&c4, "from-3").await.is_err());
    assert_eq!(
        h.grants.live_mappings(),
        8,
        "2 guests x 2 rings x (intf + data)"
    );

    // xl destroy of guest 3: its rings go, guest 4 keeps working.
    toolstack_destroys(&h.xs, 3, 0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.grants.live_mappings() != 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "guest 3's rings stay mapped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.events.bound_ports(), 2);
    assert_eq!(read_file(&c4, "hello").await.unwrap(), b"guest b's file");

    // Shutdown: guest 4 is told (Closing) and everything is released.
    h.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.backend.take().unwrap())
        .await
        .expect("envoyd's Xen backend stops")
        .unwrap()
        .unwrap();
    assert_eq!(
        h.xs.read_string(&format!("{}/state", backend_path_of("xen_9pfs", 4, 0)))
            .await
            .unwrap(),
        "5"
    );
    assert_eq!(h.grants.live_mappings(), 0);
    assert_eq!(h.events.bound_ports(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_devices_and_the_xen_9pfsd_announcement() {
    let mut h = host().await;
    let tmp = tempfile::tempdir().unwrap();
    let a = share(tmp.path(), "ro", "read me");
    toolstack_creates_kind(&h.xs, "xen_9pfs", 5, 0, &a, "share").await;
    h.xs.write(
        &format!("{}/envoy-read-only", backend_path_of("xen_9pfs", 5, 0)),
        "1",
    )
    .await
    .unwrap();
    // Guest 6's type=qemu device is its QEMU's: xen-9pfsd leaves it alone.
    toolstack_creates_share(&h.xs, 6, 0, &a, "share").await;
    h.start_envoyd(true);
    wait_for(&h.xs, "/local/domain/0/libxl/xen-9pfs/state", "running").await;
    assert_eq!(
        h.xs.read_string("/local/domain/0/libxl/xen-9pfs/pid")
            .await
            .unwrap(),
        std::process::id().to_string()
    );
    let (c, _f) = h.guest_mounts("xen_9pfs", 5, 0).await;
    assert_eq!(
        h.xs.read_string(&format!("{}/state", backend_path(6, 0)))
            .await
            .unwrap(),
        "1",
        "a type=qemu device left to the device model"
    );
    assert_eq!(read_file(&c, "hello").await.unwrap(), b"read me");
    c.walk(0, 20, &[]).await.unwrap();
    let refused = c
        .lcreate(20, "nope", P9_DOTL_CREATE | P9_DOTL_RDWR, 0o644, 0)
        .await;
    assert!(
        matches!(refused, Err(ClientError::Remote { errno, .. }) if errno == libc::EROFS as u32),
        "{refused:?}"
    );
    h.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.backend.take().unwrap())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        h.xs.try_read_string("/local/domain/0/libxl/xen-9pfs/state")
            .await
            .unwrap()
            .is_none(),
        "the announcement is withdrawn at shutdown"
    );
}

/// libxl 4.20 adds a guest's p9 devices concurrently and spawns xen-9pfsd for every one that
/// sees no `libxl/xen-9pfs/state` yet: a second daemon must leave the first one's claim and
/// devices alone and end at once, successfully (as xen-9pfsd does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_xen_9pfsd_leaves_at_once() {
    let mut h = host().await;
    let tmp = tempfile::tempdir().unwrap();
    let a = share(tmp.path(), "a", "served by the first");
    toolstack_creates_kind(&h.xs, "xen_9pfs", 5, 0, &a, "share").await;
    h.xs.write("/local/domain/0/libxl/xen-9pfs/pid", "4242")
        .await
        .unwrap();
    h.xs.write("/local/domain/0/libxl/xen-9pfs/state", "running")
        .await
        .unwrap();
    h.start_envoyd(true);
    tokio::time::timeout(Duration::from_secs(10), h.backend.take().unwrap())
        .await
        .expect("the second daemon ends by itself")
        .unwrap()
        .unwrap();
    assert_eq!(
        h.xs.read_string("/local/domain/0/libxl/xen-9pfs/pid")
            .await
            .unwrap(),
        "4242",
        "the first daemon's claim stays"
    );
    assert_eq!(
        h.xs.read_string("/local/domain/0/libxl/xen-9pfs/state")
            .await
            .unwrap(),
        "running"
    );
    assert_eq!(
        h.xs.read_string(&format!("{}/state", backend_path_of("xen_9pfs", 5, 0)))
            .await
            .unwrap(),
        "1",
        "the device was left to the first daemon"
    );
}
