//! `envoy-xen-frontend` without Xen: its library (`envoy_tools::xenfront::run`) plays each mode
//! from "dom0" against envoyd's device loop (`envoy_xen::device::run_device` serving the share
//! with the real server through the ring transport) over Debian's real C xenstored on this host
//! (the fakexen shim of `xen/tests/support/`), with the simulated grant and event tables
//! standing in for gntalloc/gntdev and evtchn. A second guest's device stays connected and
//! readable through every hostile run. The built binary is checked for its help and for its
//! failure where there is no Xen.
//!
//! Needs `xen-utils-4.17 xenstore-utils libxen-dev gcc` (and coreutils' md5sum); without them
//! these tests fail and say so.

#[path = "../../xen/tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy::{ExportFs, Server, ServerConfig};
use envoy_protocol::Dialect;
use envoy_protocol::consts::P9_DOTL_RDONLY;
use envoy_tools::client::Client;
use envoy_tools::xenfront::{self, CreateSpec, DeviceChoice, Mode, Options, Verdict};
use envoy_tools::xl::Kind;
use envoy_transport::Peer;
use envoy_transport::xen::{XenOptions, XenRing, xen_channel};
use envoy_xen::device::{BackendLimits, Device, DeviceEnd, MappedRing, run_device};
use envoy_xen::sim::linux::LinuxFrontend;
use envoy_xen::sim::{SimEventTable, SimGrantTable};
use envoy_xen::xenstore::Xenstore;
use support::HostXenstored;
use support::xl::{frontend_publishes, toolstack_creates_share, wait_for};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const FRONTEND: &str = env!("CARGO_BIN_EXE_envoy-xen-frontend");
/// Where envoyd (here: the test's supervisor) finds dom0's 9pfs devices.
const BACKENDS: &str = "/local/domain/0/backend/9pfs";
/// Bound on anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(15);
/// The file the good mode reads: 100,000 bytes, several Treads at order 4's msize.
const FILE: &str = "dir/hello.bin";

/// How the supervisor's devices ended, by backend path.
type Ends = Arc<Mutex<Vec<(String, Result<DeviceEnd, String>)>>>;

/// A host xenstored, simulated grants and ports, a share, and envoyd's part: a supervisor
/// running `run_device` for every device under `backend/9pfs`.
struct Rig {
    _daemon: HostXenstored,
    xs: Xenstore,
    grants: SimGrantTable,
    events: SimEventTable,
    share: tempfile::TempDir,
    stop: watch::Sender<bool>,
    supervisor: Option<JoinHandle<()>>,
    ends: Ends,
}

impl Rig {
    /// `lax`: the backend maps the rings but never looks at them (a backend that would not
    /// notice a hostile frontend).
    async fn start(lax: bool) -> Rig {
        let daemon = HostXenstored::start();
        let xs = Xenstore::connect_socket(daemon.socket_path())
            .await
            .unwrap();
        let share = tempfile::tempdir().unwrap();
        std::fs::create_dir(share.path().join("dir")).unwrap();
        let content: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(share.path().join(FILE), content).unwrap();
        let (grants, events) = (SimGrantTable::new(), SimEventTable::new());
        let (stop, stopped) = watch::channel(false);
        let ends = Ends::default();
        let backend_xs = Xenstore::connect_socket(daemon.socket_path())
            .await
            .unwrap();
        let supervisor = tokio::spawn(supervise(
            backend_xs,
            grants.clone(),
            events.clone(),
            lax,
            stopped,
            ends.clone(),
        ));
        Rig {
            _daemon: daemon,
            xs,
            grants,
            events,
            share,
            stop,
            supervisor: Some(supervisor),
            ends,
        }
    }

    fn share(&self) -> &str {
        self.share.path().to_str().unwrap()
    }

    /// Options for `mode` on a device the run creates with index `devid`.
    fn create(&self, mode: Mode, devid: u32) -> Options {
        let mut o = Options::new(
            mode,
            DeviceChoice::Create(CreateSpec {
                devid: Some(devid),
                tag: format!("fe{devid}"),
                path: self.share().to_owned(),
                backend_domid: 0,
                kind: Kind::Qemu,
            }),
        );
        o.file = Some(FILE.into());
        o.timeout = Duration::from_secs(10);
        o
    }

    /// Run the frontend library as dom0 over the simulated tables.
    async fn run(&self, opts: &Options) -> Result<Verdict, String> {
        let progress = |line: &str| eprintln!("frontend: {line}");
        tokio::time::timeout(
            PATIENCE * 3,
            xenfront::run(
                &self.xs,
                &self.grants.granter(0),
                &self.events.allocator(0),
                opts,
                &progress,
            ),
        )
        .await
        .expect("every wait of the frontend is bounded")
        .map_err(|e| e.to_string())
    }

    /// Nothing of dom0's frontend is left: grants, ports, and the backend's mappings of them.
    async fn assert_released(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let now = (
                self.grants.active_grants(0),
                self.events.open_ports(0),
                self.grants.live_mappings(),
                self.events.bound_ports(),
            );
            if now == (0, 0, self.bystander_mappings(), self.bystander_ports()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "left behind (grants, ports, mappings, bound ports): {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The bystander guest (domain 5) keeps its 2 rings mapped while it is connected.
    fn bystander_mappings(&self) -> usize {
        if self.grants.active_grants(5) > 0 {
            4
        } else {
            0
        }
    }

    fn bystander_ports(&self) -> usize {
        if self.events.open_ports(5) > 0 { 2 } else { 0 }
    }

    /// How the device at `backend` ended, once it has.
    async fn device_end(&self, backend: &str) -> Result<DeviceEnd, String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            {
                let mut ends = self.ends.lock().unwrap();
                if let Some(i) = ends.iter().position(|(b, _)| b == backend) {
                    return ends.remove(i).1;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the device loop of {backend} did not end"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(s) = self.supervisor.take() {
            tokio::time::timeout(PATIENCE, s)
                .await
                .expect("the supervisor stops")
                .unwrap();
        }
    }
}

/// envoyd's part: every device directory under [`BACKENDS`] gets a `run_device` task.
async fn supervise(
    xs: Xenstore,
    grants: SimGrantTable,
    events: SimEventTable,
    lax: bool,
    mut stop: watch::Receiver<bool>,
    ends: Ends,
) {
    let mut watch = xs.watch(BACKENDS).await.unwrap();
    let mut started = HashSet::new();
    let mut tasks = Vec::new();
    loop {
        let guests = xs.directory(BACKENDS).await.unwrap_or_default();
        for guest in guests {
            let dir = format!("{BACKENDS}/{guest}");
            for devid in xs.directory(&dir).await.unwrap_or_default() {
                let backend = format!("{dir}/{devid}");
                if !started.insert(backend.clone()) {
                    continue;
                }
                let (xs, grants, events) = (xs.clone(), grants.clone(), events.clone());
                let (stop, ends) = (stop.clone(), ends.clone());
                tasks.push(tokio::spawn(async move {
                    let end = run_device(
                        &xs,
                        &backend,
                        &grants,
                        &events,
                        &BackendLimits::default(),
                        stop,
                        |device, rings, stop| serve(device, rings, stop, lax),
                    )
                    .await
                    .map_err(|e| e.to_string());
                    ends.lock().unwrap().push((backend, end));
                }));
            }
        }
        tokio::select! {
            event = watch.next() => if event.is_none() { break },
            _ = stop.changed() => break,
        }
    }
    for t in tasks {
        let _ = tokio::time::timeout(PATIENCE, t).await;
    }
}

/// envoyd's session for one connection: the export of the device's path through the rings.
fn serve(
    device: &Device,
    rings: Vec<MappedRing<SimGrantTable, SimEventTable>>,
    mut stop: watch::Receiver<bool>,
    lax: bool,
) -> impl Future<Output = Result<(), String>> + Send + use<> {
    let path = device.config.path.clone();
    let peer = Peer::Xen {
        domid: device.domid,
        devid: device.devid,
    };
    async move {
        if lax {
            let _ = stop.changed().await;
            drop(rings);
            return Ok(());
        }
        let fs = ExportFs::new(Path::new(&path), false).map_err(|e| e.to_string())?;
        let rings = rings
            .into_iter()
            .map(|r| XenRing {
                ring: r.ring,
                events: r.port,
            })
            .collect();
        let (channel, ring_tasks) =
            xen_channel(rings, peer, XenOptions::default()).map_err(|e| e.to_string())?;
        let server = Server::new(Arc::new(fs), ServerConfig::default());
        server.serve_xen(channel, ring_tasks, stop).await
    }
}

/// The md5 of the share's file, by coreutils (independent of the tool's own md5).
fn md5sum(path: &Path) -> String {
    let out = Command::new("md5sum")
        .arg(path)
        .output()
        .expect("md5sum (coreutils) runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()[..32].to_owned()
}

/// Another guest (domain 5) with its own device, connected like Linux and reading the file.
struct Bystander {
    client: Client,
    _model: LinuxFrontend,
}

impl Bystander {
    async fn connect(rig: &Rig) -> Bystander {
        let xs = &rig.xs;
        toolstack_creates_share(xs, 5, 0, rig.share(), "other").await;
        wait_for(xs, "/local/domain/0/backend/9pfs/5/0/state", "2").await;
        let rings = frontend_publishes(xs, &rig.grants, &rig.events, 5, 0, 4).await;
        wait_for(xs, "/local/domain/0/backend/9pfs/5/0/state", "4").await;
        xs.write("/local/domain/5/device/9pfs/0/state", "4")
            .await
            .unwrap();
        let (stream, model) = LinuxFrontend::spawn(rings, 16384).unwrap();
        let client = Client::over_stream(stream, Dialect::P9P2000L, 16384)
            .await
            .unwrap();
        client.attach(0, "root", "", 0).await.unwrap();
        let b = Bystander {
            client,
            _model: model,
        };
        b.reads_the_file(rig).await;
        b
    }

    /// Read the whole file through its own rings; it must be intact.
    async fn reads_the_file(&self, rig: &Rig) {
        let c = &self.client;
        let read = async {
            c.walk_path(0, 1, FILE).await.unwrap();
            c.lopen(1, P9_DOTL_RDONLY).await.unwrap();
            let data = c.read(1, 0, 1 << 20).await.unwrap();
            c.clunk(1).await.unwrap();
            data
        };
        let data = tokio::time::timeout(PATIENCE, read)
            .await
            .expect("the other guest is still served");
        assert_eq!(data, std::fs::read(rig.share.path().join(FILE)).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn good_mode_reads_the_file_and_closes_cleanly() {
    let rig = Rig::start(false).await;
    let mut opts = rig.create(Mode::Good, 0);
    opts.expect_md5 = Some(md5sum(&rig.share.path().join(FILE)));
    let verdict = rig.run(&opts).await.unwrap();
    assert!(verdict.passed, "{verdict}");
    assert_eq!(
        verdict.to_string(),
        format!(
            "ENVOY-FE: PASS good ({FILE}: len=100000 md5={})",
            opts.expect_md5.as_deref().unwrap()
        )
    );
    // The created device is gone, the backend's loop ended on its removal, nothing leaks.
    assert_eq!(
        rig.device_end("/local/domain/0/backend/9pfs/0/0").await,
        Ok(DeviceEnd::Removed)
    );
    for gone in [
        "/local/domain/0/device/9pfs/0",
        "/local/domain/0/backend/9pfs/0/0",
        "/local/domain/0/error",
    ] {
        assert_eq!(rig.xs.try_read_string(gone).await.unwrap(), None, "{gone}");
    }
    rig.assert_released().await;

    // A wrong expectation is a failure, not a pass.
    let mut opts = rig.create(Mode::Good, 1);
    opts.expect_md5 = Some("0".repeat(32));
    let verdict = rig.run(&opts).await.unwrap();
    assert!(!verdict.passed);
    assert!(
        verdict.to_string().starts_with("ENVOY-FE: FAIL good: ")
            && verdict
                .detail
                .ends_with(&format!("expected md5 {}", "0".repeat(32))),
        "{verdict}"
    );
    // A missing file is an error naming the walk.
    let mut opts = rig.create(Mode::Good, 2);
    opts.file = Some("nope.txt".into());
    let err = rig.run(&opts).await.unwrap_err();
    assert!(err.contains("Twalk to \"nope.txt\""), "{err}");
    rig.assert_released().await;
    rig.shutdown().await;
}

/// Run hostile `mode` with a bystander guest connected; the backend must disconnect only the
/// hostile device, with a reason containing each of `reasons`.
async fn hostile(mode: Mode, reasons: &[&str]) {
    let rig = Rig::start(false).await;
    let bystander = Bystander::connect(&rig).await;
    let verdict = rig.run(&rig.create(mode, 7)).await.unwrap();
    assert!(verdict.passed, "{verdict}");
    let line = verdict.to_string();
    assert!(
        line.starts_with(&format!("ENVOY-FE: PASS {mode} (backend Closing: ")),
        "{line}"
    );
    for reason in reasons {
        assert!(line.contains(reason), "{reason:?} missing from {line}");
    }
    assert_eq!(
        rig.device_end("/local/domain/0/backend/9pfs/0/7").await,
        Ok(DeviceEnd::Removed)
    );
    // Removed with its error report and the directories that emptied.
    for gone in [
        "/local/domain/0/device/9pfs",
        "/local/domain/0/backend/9pfs/0",
        "/local/domain/0/error",
    ] {
        assert_eq!(rig.xs.try_read_string(gone).await.unwrap(), None, "{gone}");
    }
    rig.assert_released().await;
    // The other guest never noticed.
    bystander.reads_the_file(&rig).await;
    assert_eq!(
        rig.xs
            .try_read_string("/local/domain/0/backend/9pfs/5/0/state")
            .await
            .unwrap()
            .as_deref(),
        Some("4")
    );
    assert_eq!(
        rig.xs
            .try_read_string("/local/domain/0/error/backend/9pfs/5/0/error")
            .await
            .unwrap(),
        None
    );
    // And a correct frontend is served right after.
    let verdict = rig.run(&rig.create(Mode::Good, 8)).await.unwrap();
    assert!(verdict.passed, "{verdict}");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_order_is_disconnected() {
    hostile(
        Mode::BadOrder,
        &[
            "(backend Closing: ring 0: 9pfs ring at grant ref ",
            " of domain 0: ring order 12 is outside the accepted 1..=9)",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bogus_ref_is_disconnected() {
    hostile(
        Mode::BogusRef,
        &[
            "(backend Closing: ring 1: 9pfs ring at grant ref 268435440 of domain 0: intf page: \
           domain 0, grant ref 268435440: domain 0 has not granted it)",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_indexes_are_disconnected() {
    hostile(
        Mode::BadIndexes,
        &["ring indexes are inconsistent: 1073741824 bytes queued in a 32768-byte ring"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_requests_are_disconnected() {
    hostile(Mode::Oversize, &["request of 65536 bytes outside 7..="]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_existing_device_is_found_by_tag_and_restarted_after_each_run() {
    let rig = Rig::start(false).await;
    // What `envoy-xl attach` (or libxl) leaves for dom0 as the guest: device 3, tag "mine".
    toolstack_creates_share(&rig.xs, 0, 3, rig.share(), "mine").await;
    let existing = |mode| {
        let mut o = Options::new(
            mode,
            DeviceChoice::Existing {
                devid: None,
                tag: Some("mine".into()),
            },
        );
        o.file = Some(FILE.into());
        o.timeout = Duration::from_secs(10);
        o
    };
    // Hostile, hostile again, then good: each run restarts the device the last one left
    // Closed, as a reloaded driver would.
    for mode in [Mode::BadIndexes, Mode::Oversize, Mode::Good] {
        let verdict = rig.run(&existing(mode)).await.unwrap();
        assert!(verdict.passed, "{verdict}");
        rig.assert_released().await;
    }
    // The device is left in place (not ours to remove), closed.
    let be = "/local/domain/0/backend/9pfs/0/3";
    assert_eq!(
        rig.xs
            .try_read_string(&format!("{be}/state"))
            .await
            .unwrap()
            .as_deref(),
        Some("6")
    );
    // Several devices and no choice: refused.
    toolstack_creates_share(&rig.xs, 0, 4, rig.share(), "yours").await;
    let mut o = existing(Mode::Good);
    o.device = DeviceChoice::Existing {
        devid: None,
        tag: None,
    };
    let err = rig.run(&o).await.unwrap_err();
    assert!(err.contains("choose one with --devid or --tag"), "{err}");
    o.device = DeviceChoice::Existing {
        devid: Some(9),
        tag: None,
    };
    let err = rig.run(&o).await.unwrap_err();
    assert_eq!(err, "/local/domain/0/device/9pfs/9 does not exist");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_that_does_not_notice_fails_the_run() {
    let rig = Rig::start(true).await;
    let mut opts = rig.create(Mode::BadIndexes, 0);
    opts.timeout = Duration::from_millis(700);
    let verdict = rig.run(&opts).await.unwrap();
    assert!(!verdict.passed);
    assert!(
        verdict.to_string().starts_with(
            "ENVOY-FE: FAIL bad-indexes: no disconnect by the backend within 700ms: the backend is at Connected (4)"
        ),
        "{verdict}"
    );
    rig.assert_released().await;
    // A bad order is refused at mapping, lax session or not.
    let verdict = rig.run(&rig.create(Mode::BadOrder, 1)).await.unwrap();
    assert!(verdict.passed, "{verdict}");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_backend_is_a_bounded_failure() {
    let rig = Rig::start(false).await;
    // The supervisor serves backend/9pfs only: nobody serves a xen_9pfs device.
    let mut opts = rig.create(Mode::Good, 0);
    if let DeviceChoice::Create(c) = &mut opts.device {
        c.kind = Kind::Xen9pfsd;
    }
    opts.timeout = Duration::from_millis(500);
    let err = rig.run(&opts).await.unwrap_err();
    assert!(
        err.starts_with(
            "the backend did not reach InitWait (2) within 500ms: it is at Initialising (1)"
        ),
        "{err}"
    );
    assert_eq!(
        rig.xs
            .try_read_string("/local/domain/0/backend/xen_9pfs/0/0")
            .await
            .unwrap(),
        None,
        "the created device is removed"
    );
    rig.assert_released().await;
    rig.shutdown().await;
}

// ---- the binary -------------------------------------------------------------------------------

fn run_binary(args: &[&str], xenstored: &str) -> (Option<i32>, String, String) {
    let out = Command::new(FRONTEND)
        .args(args)
        .env("XENSTORED_PATH", xenstored)
        .output()
        .expect("run envoy-xen-frontend");
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn help_names_the_modes_and_the_modules() {
    let (code, stdout, _) = run_binary(&["--help"], "/nonexistent");
    assert_eq!(code, Some(0));
    for want in [
        "--mode",
        "--create",
        "good ",
        "bad-order ",
        "bogus-ref ",
        "bad-indexes ",
        "oversize ",
        "xen-gntalloc and xen-evtchn",
        "ENVOY-FE: PASS",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
}

#[test]
fn usage_errors_fail() {
    let (code, _, stderr) = run_binary(&["--mode", "bad-order", "--path", "/srv"], "/nonexistent");
    assert_eq!(code, Some(1), "{stderr}");
    let (code, stdout, _) = run_binary(&["--mode", "good", "--create", "--path", "/srv"], "/x");
    assert_eq!(code, Some(1));
    assert_eq!(
        stdout,
        "ENVOY-FE: FAIL good: --mode good needs --file, the file to read\n"
    );
    let (code, _, stderr) = run_binary(&["--mode", "sneaky"], "/nonexistent");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("unknown mode \"sneaky\""), "{stderr}");
}

#[test]
fn without_xen_it_says_what_is_missing() {
    if Path::new("/dev/xen/gntalloc").exists() {
        eprintln!("this host has /dev/xen/gntalloc: the no-Xen failure cannot be observed here");
        return;
    }
    let (code, stdout, stderr) = run_binary(
        &["--mode", "bad-order", "--create", "--path", "/srv"],
        "/nonexistent/socket",
    );
    assert_eq!(code, Some(1));
    let why = "open /dev/xen/gntalloc: No such file or directory (is this a Xen domain with the \
               xen-gntalloc module loaded?)";
    assert_eq!(stdout, format!("ENVOY-FE: FAIL bad-order: {why}\n"));
    assert_eq!(stderr, format!("envoy-xen-frontend: {why}\n"));
}
