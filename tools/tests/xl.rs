//! `envoy-xl` (the built binary) against Debian's real C xenstored run on this host (the
//! fakexen shim of `xen/tests/support/`), with a fake guest as xl leaves it (`/local/domain/5`
//! with `name = guest5`, `domid = 5`). Outcomes are read back with the project's xenstore client
//! and with Debian's `xenstore-ls -fp`; guests' frontends are simulated by tasks writing what
//! Linux's `9pnet_xen` writes, and the last test runs the backend state machine envoyd uses
//! (`run_device`, over simulated grants) against devices `envoy-xl` creates.
//!
//! Needs `xen-utils-4.17 xenstore-utils libxen-dev gcc`; without them these tests fail and say so.

#[path = "../../xen/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use envoy_xen::device::{BackendLimits, DeviceEnd, run_device};
use envoy_xen::sim::{SimEventTable, SimGrantTable};
use envoy_xen::xenstore::{Access, Perm, Xenstore};
use support::HostXenstored;
use support::xl::{frontend_publishes, wait_for};

const XL: &str = env!("CARGO_BIN_EXE_envoy-xl");
const BE0: &str = "/local/domain/0/backend/9pfs/5/0";
const FE0: &str = "/local/domain/5/device/9pfs/0";
const LX0: &str = "/libxl/5/device/9pfs/0";
/// Bound on anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(15);

/// One run of the binary.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "envoy-xl failed: {self:?}");
        self
    }

    /// Exit status 1 with a one-line `envoy-xl: ...` message containing every `want`.
    #[track_caller]
    fn refused(self, want: &[&str]) -> Run {
        assert_eq!(self.code, Some(1), "expected a failure: {self:?}");
        assert!(self.stdout.is_empty(), "{self:?}");
        assert_eq!(self.stderr.lines().count(), 1, "one line: {self:?}");
        assert!(self.stderr.starts_with("envoy-xl: "), "{self:?}");
        for w in want {
            assert!(self.stderr.contains(w), "{w:?} missing: {}", self.stderr);
        }
        self
    }
}

/// A node as `xenstore-ls -fp` shows it: value and permissions.
type Tree = BTreeMap<String, (String, String)>;

struct Host {
    daemon: HostXenstored,
    xs: Xenstore,
    share: tempfile::TempDir,
}

/// A xenstored holding what xen-init-dom0 and `xl create` leave: dom0's and guest5's `name`
/// and `domid`, the guest's home readable by it `(n0,r5)` and its `device/` owned by it `(n5)`.
async fn host() -> Host {
    let daemon = HostXenstored::start();
    let xs = Xenstore::connect_socket(daemon.socket_path())
        .await
        .unwrap();
    add_domain(&xs, 0, "Domain-0").await;
    add_domain(&xs, 5, "guest5").await;
    let share = tempfile::tempdir().unwrap();
    Host { daemon, xs, share }
}

async fn add_domain(xs: &Xenstore, domid: u32, name: &str) {
    let home = format!("/local/domain/{domid}");
    xs.write(&format!("{home}/name"), name).await.unwrap();
    xs.write(&format!("{home}/domid"), domid.to_string())
        .await
        .unwrap();
    if domid != 0 {
        let guest = [Perm::new(0, Access::None), Perm::new(domid, Access::Read)];
        xs.set_perms(&home, &guest).await.unwrap();
        xs.mkdir(&format!("{home}/device")).await.unwrap();
        xs.set_perms(&format!("{home}/device"), &[Perm::new(domid, Access::None)])
            .await
            .unwrap();
    }
}

impl Host {
    fn share(&self) -> &str {
        self.share.path().to_str().unwrap()
    }

    /// Run `envoy-xl args` against this daemon (blocking).
    fn xl(&self, args: &[&str]) -> Run {
        run_xl(self.daemon.socket_path(), args)
    }

    /// The same on a blocking thread, so simulated guests keep running meanwhile.
    async fn xl_async(&self, args: &[&str]) -> Run {
        self.xl_spawn(args).await.unwrap()
    }

    /// Start `envoy-xl args` on a blocking thread.
    fn xl_spawn(&self, args: &[&str]) -> tokio::task::JoinHandle<Run> {
        let socket = self.daemon.socket_path().to_path_buf();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_xl(&socket, &args)
        })
    }

    /// The whole store, as `xenstore-ls -fp` prints it.
    fn tree(&self) -> Tree {
        parse_ls(&self.daemon.run_tool("xenstore-ls", &["-fp"]))
    }

    async fn write(&self, path: &str, value: &str) {
        self.xs.write(path, value).await.unwrap();
    }

    async fn read(&self, path: &str) -> Option<String> {
        self.xs.try_read_string(path).await.unwrap()
    }
}

fn run_xl(socket: &Path, args: &[&str]) -> Run {
    let started = Instant::now();
    let out = Command::new(XL)
        .args(args)
        .env("XENSTORED_PATH", socket)
        .output()
        .expect("run envoy-xl");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        took: started.elapsed(),
    }
}

/// `path = "value"   (perms)` lines into a map.
fn parse_ls(text: &str) -> Tree {
    text.lines()
        .map(|line| {
            let (path, rest) = line.split_once(" = \"").expect(line);
            let (value, perms) = rest.rsplit_once("\"   (").expect(line);
            let perms = perms.strip_suffix(')').expect(line);
            (path.to_owned(), (value.to_owned(), perms.to_owned()))
        })
        .collect()
}

/// What `after` has that `before` had not (no node may change or vanish).
fn added(before: &Tree, after: &Tree) -> Tree {
    for (path, node) in before {
        assert_eq!(after.get(path), Some(node), "{path} changed or vanished");
    }
    after
        .iter()
        .filter(|(p, _)| !before.contains_key(*p))
        .map(|(p, n)| (p.clone(), n.clone()))
        .collect()
}

fn node(path: &str, value: &str, perms: &str) -> (String, (String, String)) {
    (path.to_owned(), (value.to_owned(), perms.to_owned()))
}

/// Every node of a fresh 9pfs device 0 of guest 5 served by dom0 (`kind` 9pfs).
fn expected_device(share: &str) -> Tree {
    let (be, fe) = ("n0,r5", "n5,r0");
    let mut t: Tree = [
        node(FE0, "", fe),
        node(&format!("{FE0}/backend"), BE0, fe),
        node(&format!("{FE0}/backend-id"), "0", fe),
        node(&format!("{FE0}/state"), "1", fe),
        node(&format!("{FE0}/tag"), "share", fe),
        node(BE0, "", be),
        node(&format!("{BE0}/frontend"), FE0, be),
        node(&format!("{BE0}/frontend-id"), "5", be),
        node(&format!("{BE0}/online"), "1", be),
        node(&format!("{BE0}/state"), "1", be),
        node(&format!("{BE0}/path"), share, be),
        node(&format!("{BE0}/security_model"), "none", be),
        node(&format!("{BE0}/versions"), "1", be),
        node(&format!("{BE0}/max-rings"), "8", be),
        node(&format!("{BE0}/max-ring-page-order"), "9", be),
        node(LX0, "", "n0"),
        node(&format!("{LX0}/frontend"), FE0, "n0"),
        node(&format!("{LX0}/backend"), BE0, "n0"),
        node(&format!("{LX0}/frontend-id"), "5", "n0"),
        node(&format!("{LX0}/online"), "1", "n0"),
        node(&format!("{LX0}/state"), "1", "n0"),
        node(&format!("{LX0}/path"), share, "n0"),
        node(&format!("{LX0}/security_model"), "none", "n0"),
    ]
    .into_iter()
    .collect();
    // The parents created on the way inherit their parents' permissions.
    for (p, perms) in [
        ("/local/domain/5/device/9pfs", "n5"),
        ("/local/domain/0/backend", "n0"),
        ("/local/domain/0/backend/9pfs", "n0"),
        ("/local/domain/0/backend/9pfs/5", "n0"),
        ("/libxl", "n0"),
        ("/libxl/5", "n0"),
        ("/libxl/5/device", "n0"),
        ("/libxl/5/device/9pfs", "n0"),
    ] {
        t.insert(p.to_owned(), (String::new(), perms.to_owned()));
    }
    t
}

/// Nothing of any 9pfs device is left under the guest's `device/`, dom0's `backend/` and
/// `/libxl`, nor any error report.
#[track_caller]
fn assert_no_device_nodes(tree: &Tree) {
    let leftovers: Vec<&String> = tree
        .keys()
        .filter(|p| {
            [
                "/local/domain/5/device/",
                "/local/domain/0/backend/",
                "/libxl/",
            ]
            .iter()
            .any(|prefix| p.starts_with(prefix))
                || p.contains("/error")
        })
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// Poll until `path` exists (bounded).
async fn wait_exists(xs: &Xenstore, path: &str) {
    let deadline = Instant::now() + PATIENCE;
    while xs.try_read_string(path).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "timed out waiting for {path}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- 1. attach --no-wait: the nodes, their permissions, names, devids, refusals ---------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_writes_exactly_libxls_nodes() {
    let h = host().await;
    let before = h.tree();
    let run = h
        .xl(&[
            "attach",
            "guest5",
            "--tag",
            "share",
            "--path",
            h.share(),
            "--no-wait",
        ])
        .ok();
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
    assert!(
        run.stdout
            .contains("guest5 (domain 5): 9pfs device 0 (tag share, 9pfs backend in domain 0)")
            && run.stdout.ends_with(
                "in the guest run: mount -t 9p -o trans=xen,version=9p2000.L share /mnt\n"
            ),
        "{run:?}"
    );
    // xenstore-ls: exactly these nodes appeared, with these values and permissions.
    let after = h.tree();
    assert_eq!(added(&before, &after), expected_device(h.share()));

    // The same through the client.
    let xs = &h.xs;
    assert_eq!(
        xs.get_perms(FE0).await.unwrap(),
        [Perm::new(5, Access::None), Perm::new(0, Access::Read)]
    );
    assert_eq!(
        xs.get_perms(BE0).await.unwrap(),
        [Perm::new(0, Access::None), Perm::new(5, Access::Read)]
    );
    let mut names = xs.directory(FE0).await.unwrap();
    names.sort();
    assert_eq!(names, ["backend", "backend-id", "state", "tag"]);
    let mut names = xs.directory(BE0).await.unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "frontend",
            "frontend-id",
            "max-ring-page-order",
            "max-rings",
            "online",
            "path",
            "security_model",
            "state",
            "versions"
        ]
    );
    for (key, want) in [("tag", "share"), ("backend", BE0), ("state", "1")] {
        assert_eq!(h.read(&format!("{FE0}/{key}")).await.as_deref(), Some(want));
    }
    assert_eq!(
        h.read(&format!("{BE0}/path")).await.as_deref(),
        Some(h.share())
    );
    assert_eq!(
        h.read(&format!("{LX0}/backend")).await.as_deref(),
        Some(BE0)
    );

    // A second attach with the same tag (by domid this time) is refused; nothing is written.
    let before = h.tree();
    h.xl(&[
        "attach",
        "5",
        "--tag",
        "share",
        "--path",
        h.share(),
        "--no-wait",
    ])
    .refused(&["guest5 (domain 5) already has a 9pfs device with tag \"share\" (device 0)"]);
    assert_eq!(h.tree(), before);
    // So is an explicit devid that is taken.
    h.xl(&[
        "attach",
        "5",
        "--tag",
        "other",
        "--path",
        h.share(),
        "--devid",
        "0",
        "--no-wait",
    ])
    .refused(&["already has 9pfs device 0", FE0]);
    assert_eq!(h.tree(), before);

    // The lowest free index, counting every place a device of the guest lives: a leftover
    // backend directory (index 2, another kind) is skipped.
    h.write("/local/domain/0/backend/xen_9pfs/5/2/frontend-id", "5")
        .await;
    for (tag, devid) in [("b", "1"), ("c", "3")] {
        let run = h
            .xl(&[
                "attach",
                "5",
                "--tag",
                tag,
                "--path",
                h.share(),
                "--no-wait",
            ])
            .ok();
        assert!(
            run.stdout
                .contains(&format!("9pfs device {devid} (tag {tag},")),
            "{run:?}"
        );
    }
    // After index 0 is removed, it is the lowest free one again; --devid picks any free one.
    h.xl(&["detach", "guest5", "--devid", "0", "--force"]).ok();
    let run = h
        .xl(&[
            "attach",
            "guest5",
            "--tag",
            "d",
            "--path",
            h.share(),
            "--no-wait",
        ])
        .ok();
    assert!(run.stdout.contains("9pfs device 0 (tag d,"), "{run:?}");
    let run = h
        .xl(&[
            "attach",
            "guest5",
            "--tag",
            "e",
            "--path",
            h.share(),
            "--devid",
            "17",
            "--no-wait",
        ])
        .ok();
    assert!(run.stdout.contains("9pfs device 17 (tag e,"), "{run:?}");

    // xen_9pfs with quotas and --ro: libxl's quota nodes, the read-only flag (also in libxl's
    // record, as a toolstack setting).
    let before = h.tree();
    h.xl(&[
        "attach",
        "guest5",
        "--tag",
        "q",
        "--path",
        h.share(),
        "--kind",
        "xen_9pfs",
        "--ro",
        "--max-files",
        "100",
        "--max-open-files",
        "5",
        "--max-space",
        "64",
        "--auto-delete",
        "--devid",
        "4",
        "--no-wait",
    ])
    .ok();
    let new = added(&before, &h.tree());
    let b = "/local/domain/0/backend/xen_9pfs/5/4";
    for (key, value) in [
        ("max-space", "64"),
        ("max-files", "100"),
        ("max-open-files", "5"),
        ("auto-delete", "1"),
        ("envoy-read-only", "1"),
        ("security_model", "none"),
    ] {
        let want = (value.to_owned(), "n0,r5".to_owned());
        assert_eq!(new.get(&format!("{b}/{key}")), Some(&want), "{key}");
        let want = (value.to_owned(), "n0".to_owned());
        assert_eq!(
            new.get(&format!("/libxl/5/device/9pfs/4/{key}")),
            Some(&want)
        );
    }
    assert_eq!(
        new.get("/local/domain/5/device/9pfs/4/backend"),
        Some(&(b.to_owned(), "n5,r0".to_owned()))
    );
    assert_eq!(new.keys().filter(|p| p.starts_with(b)).count(), 1 + 14);
}

// ---- 2. attach waits for the guest -----------------------------------------------------------

/// A guest's frontend as old Linux kernels probe it: as soon as its directory appears it
/// reads the backend's features (which must already be there), then goes Initialised and, when
/// the backend is Connected or `without_backend`, Connected. Returns the features it read.
async fn old_linux_frontend(xs: Xenstore, without_backend: bool) -> Vec<Option<String>> {
    wait_exists(&xs, &format!("{FE0}/state")).await;
    let backend = xs.read_string(&format!("{FE0}/backend")).await.unwrap();
    let mut features = Vec::new();
    for key in ["versions", "max-rings", "max-ring-page-order"] {
        features.push(
            xs.try_read_string(&format!("{backend}/{key}"))
                .await
                .unwrap(),
        );
    }
    xs.write(&format!("{FE0}/state"), "3").await.unwrap();
    if !without_backend {
        wait_for(&xs, &format!("{backend}/state"), "4").await;
    }
    xs.write(&format!("{FE0}/state"), "4").await.unwrap();
    features
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_waits_for_the_guest_to_connect() {
    let h = host().await;
    let guest = tokio::spawn(old_linux_frontend(h.xs.clone(), true));
    let run = h
        .xl_async(&[
            "attach",
            "guest5",
            "--tag",
            "share",
            "--path",
            h.share(),
            "--timeout",
            "20",
        ])
        .await
        .ok();
    assert_eq!(
        run.stdout,
        "guest5 (domain 5): 9pfs device 0 (tag share, 9pfs backend in domain 0) connected; in \
         the guest run: mount -t 9p -o trans=xen,version=9p2000.L share /mnt\n"
    );
    let features = guest.await.unwrap();
    assert_eq!(
        features,
        [Some("1".into()), Some("8".into()), Some("9".into())],
        "the backend's features are there when the frontend directory appears"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_says_which_side_is_stuck() {
    let h = host().await;
    // Nobody serves the device.
    let run = h
        .xl_async(&[
            "attach",
            "guest5",
            "--tag",
            "a",
            "--path",
            h.share(),
            "--timeout",
            "1",
        ])
        .await
        .refused(&[
            "timed out after 1s waiting for 9pfs device 0 of guest5 (domain 5) to connect",
            "the backend is stuck at Initialising (1)",
            "envoyd --xen",
            "frontend at Initialising (1)",
            "the device stays configured",
        ]);
    assert!(
        run.took >= Duration::from_secs(1) && run.took < Duration::from_secs(10),
        "{run:?}"
    );
    assert_eq!(h.read(&format!("{BE0}/state")).await.as_deref(), Some("1"));

    // A backend at InitWait, a guest that never answers.
    let xs = h.xs.clone();
    let backend = tokio::spawn(async move {
        let be = "/local/domain/0/backend/9pfs/5/1";
        wait_exists(&xs, &format!("{be}/state")).await;
        xs.write(&format!("{be}/state"), "2").await.unwrap();
    });
    h.xl_async(&[
        "attach",
        "guest5",
        "--tag",
        "b",
        "--path",
        h.share(),
        "--timeout",
        "1",
    ])
    .await
    .refused(&[
        "the guest's frontend is stuck at Initialising (1)",
        "9pnet_xen",
        "backend at InitWait (2)",
    ]);
    backend.await.unwrap();

    // A backend that gives up with a reason: reported at once, with the reason.
    let xs = h.xs.clone();
    let backend = tokio::spawn(async move {
        let be = "/local/domain/0/backend/9pfs/5/2";
        wait_exists(&xs, &format!("{be}/state")).await;
        xs.write(
            "/local/domain/0/error/backend/9pfs/5/2/error",
            "num-rings = 0 is outside 1..=8",
        )
        .await
        .unwrap();
        xs.write(&format!("{be}/state"), "5").await.unwrap();
    });
    let run = h
        .xl_async(&[
            "attach",
            "guest5",
            "--tag",
            "c",
            "--path",
            h.share(),
            "--timeout",
            "20",
        ])
        .await
        .refused(&[
            "9pfs device 2 of guest5 (domain 5) did not connect",
            "the backend gave up (it is at Closing (5))",
            "backend error: num-rings = 0 is outside 1..=8",
        ]);
    assert!(run.took < Duration::from_secs(10), "{run:?}");
    backend.await.unwrap();
}

// ---- 3. detach -------------------------------------------------------------------------------

/// The guest's frontend, Connected, answering the backend's Closing with Closed. Returns
/// (`online`, `state`) of the backend as it saw them.
async fn closing_frontend(xs: Xenstore) -> (Option<String>, Option<String>) {
    wait_for(&xs, &format!("{BE0}/state"), "5").await;
    let seen = (
        xs.try_read_string(&format!("{BE0}/online")).await.unwrap(),
        xs.try_read_string(&format!("{BE0}/state")).await.unwrap(),
    );
    xs.write(&format!("{FE0}/state"), "6").await.unwrap();
    seen
}

/// Attach `tag` as device 0 and mark both ends Connected, as after a handshake.
async fn connected_device(h: &Host, tag: &str) {
    h.xl(&[
        "attach",
        "guest5",
        "--tag",
        tag,
        "--path",
        h.share(),
        "--no-wait",
    ])
    .ok();
    h.write(&format!("{BE0}/state"), "4").await;
    h.write(&format!("{FE0}/state"), "4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_closes_then_removes_everything() {
    let h = host().await;
    let pristine = h.tree();

    // The guest closes when asked: online=0, state=5 were written, then everything goes.
    connected_device(&h, "share").await;
    // A stale error report goes with the device.
    h.write("/local/domain/0/error/backend/9pfs/5/0/error", "old")
        .await;
    let guest = tokio::spawn(closing_frontend(h.xs.clone()));
    let run = h
        .xl_async(&["detach", "guest5", "--tag", "share", "--timeout", "20"])
        .await
        .ok();
    assert_eq!(run.stdout, "guest5 (domain 5): 9pfs device 0 removed\n");
    assert_eq!(guest.await.unwrap(), (Some("0".into()), Some("5".into())));
    let tree = h.tree();
    assert_no_device_nodes(&tree);
    // Parents that became empty are pruned down to the guest's device/ and dom0's backend/.
    assert_eq!(
        added(&pristine, &tree).keys().collect::<Vec<_>>(),
        ["/libxl", "/local/domain/0/backend"]
    );

    // A guest that does not answer: bounded wait, a clear message, the device left Closing.
    connected_device(&h, "share").await;
    let run = h
        .xl_async(&["detach", "5", "--devid", "0", "--timeout", "1"])
        .await
        .refused(&[
            "timed out after 1s waiting for 9pfs device 0 of guest5 (domain 5) to close",
            "still at Connected (4)",
            "--force",
        ]);
    assert!(run.took >= Duration::from_secs(1), "{run:?}");
    assert_eq!(h.read(&format!("{BE0}/online")).await.as_deref(), Some("0"));
    assert_eq!(h.read(&format!("{BE0}/state")).await.as_deref(), Some("5"));
    assert_eq!(
        h.read(&format!("{FE0}/tag")).await.as_deref(),
        Some("share")
    );

    // --force removes it without asking.
    let run = h
        .xl(&["detach", "guest5", "--tag", "share", "--force"])
        .ok();
    assert!(run.stdout.contains("removed (--force"), "{run:?}");
    assert!(run.took < Duration::from_secs(5), "{run:?}");
    assert_no_device_nodes(&h.tree());

    // A device the guest never connected has nothing to close: removed without waiting.
    h.xl(&[
        "attach",
        "guest5",
        "--tag",
        "idle",
        "--path",
        h.share(),
        "--no-wait",
    ])
    .ok();
    let run = h.xl(&["detach", "guest5", "--tag", "idle"]).ok();
    assert!(run.took < Duration::from_secs(5), "{run:?}");
    assert_no_device_nodes(&h.tree());

    // Unknown devices and domains.
    let before = h.tree();
    h.xl(&["detach", "guest5", "--tag", "nope"])
        .refused(&["guest5 (domain 5) has no 9pfs device with tag \"nope\""]);
    h.xl(&["detach", "guest5", "--devid", "3"])
        .refused(&["guest5 (domain 5) has no 9pfs device 3"]);
    h.xl(&["detach", "guest9", "--tag", "share"])
        .refused(&["no domain \"guest9\""]);
    h.xl(&["detach", "9", "--tag", "share"])
        .refused(&["no domain 9"]);
    assert_eq!(h.tree(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_does_not_follow_a_guests_pointer() {
    let h = host().await;
    // Another guest's device, and guest 5's device without libxl's record whose frontend
    // (which guest 5 may write) points at it.
    add_domain(&h.xs, 7, "guest7").await;
    h.xl(&[
        "attach",
        "guest7",
        "--tag",
        "seven",
        "--path",
        h.share(),
        "--no-wait",
    ])
    .ok();
    h.xl(&[
        "attach",
        "guest5",
        "--tag",
        "five",
        "--path",
        h.share(),
        "--no-wait",
    ])
    .ok();
    h.xs.rm(LX0).await.unwrap();
    h.write(
        &format!("{FE0}/backend"),
        "/local/domain/0/backend/9pfs/7/0",
    )
    .await;
    h.xl(&["detach", "guest5", "--tag", "five", "--force"]).ok();
    // Guest 7's device is intact; guest 5's own backend directory (found because it names
    // guest 5's frontend) is gone.
    assert_eq!(
        h.read("/local/domain/0/backend/9pfs/7/0/path")
            .await
            .as_deref(),
        Some(h.share())
    );
    assert_eq!(h.read(&format!("{BE0}/state")).await, None);
    assert_eq!(h.read(&format!("{FE0}/state")).await, None);
}

// ---- 4. list ---------------------------------------------------------------------------------

fn rows(out: &str) -> Vec<Vec<String>> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "Domid", "Devid", "Kind", "Tag", "Path", "Mode", "Backend", "Frontend", "Error"
        ]
    );
    lines
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_devices_and_states() {
    let h = host().await;
    let empty = h.xl(&["list"]).ok();
    assert_eq!(rows(&empty.stdout).len(), 0);
    add_domain(&h.xs, 7, "guest7").await;
    connected_device(&h, "share").await;
    h.xl(&[
        "attach",
        "guest5",
        "--tag",
        "logs",
        "--path",
        h.share(),
        "--kind",
        "xen_9pfs",
        "--ro",
        "--no-wait",
    ])
    .ok();
    h.write("/local/domain/0/backend/xen_9pfs/5/1/state", "5")
        .await;
    h.write(
        "/local/domain/0/error/backend/xen_9pfs/5/1/error",
        "bad ring",
    )
    .await;
    h.xl(&[
        "attach",
        "guest7",
        "--tag",
        "seven",
        "--path",
        "/",
        "--no-wait",
    ])
    .ok();

    let share = h.share().to_owned();
    let want5 = vec![
        vec![
            "5",
            "0",
            "9pfs",
            "share",
            &share,
            "rw",
            "Connected",
            "Connected",
        ],
        vec![
            "5",
            "1",
            "xen_9pfs",
            "logs",
            &share,
            "ro",
            "Closing",
            "Initialising",
            "backend",
            "error:",
            "bad",
            "ring",
        ],
    ];
    let want7 = vec![
        "7",
        "0",
        "9pfs",
        "seven",
        "/",
        "rw",
        "Initialising",
        "Initialising",
    ];
    let all = rows(&h.xl(&["list"]).ok().stdout);
    let mut want = want5.clone();
    want.push(want7.clone());
    assert_eq!(all, want);
    assert_eq!(rows(&h.xl(&["list", "guest5"]).ok().stdout), want5);
    assert_eq!(rows(&h.xl(&["list", "7"]).ok().stdout), vec![want7]);
    h.xl(&["list", "guest9"]).refused(&["no domain \"guest9\""]);
}

// ---- 5. bad input ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_writes_nothing() {
    let h = host().await;
    let file = h.share.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_str().unwrap().to_owned();
    let missing = format!("{}/missing", h.share());
    let share = h.share().to_owned();
    let before = h.tree();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["attach", "9", "--tag", "t", "--path", &share],
            vec!["no domain 9"],
        ),
        (
            vec!["attach", "nosuch", "--tag", "t", "--path", &share],
            vec!["no domain \"nosuch\""],
        ),
        (
            vec!["attach", "guest5", "--tag", "t", "--path", "srv"],
            vec!["path \"srv\" is not absolute"],
        ),
        (
            vec!["attach", "guest5", "--tag", "t", "--path", &missing],
            vec!["cannot be shared", "No such file"],
        ),
        (
            vec!["attach", "guest5", "--tag", "t", "--path", &file],
            vec!["is not a directory"],
        ),
        (
            vec!["attach", "guest5", "--tag", "a b", "--path", &share],
            vec!["spaces"],
        ),
        (
            vec![
                "attach",
                "guest5",
                "--tag",
                "t",
                "--path",
                &share,
                "--max-files",
                "3",
            ],
            vec!["need --kind xen_9pfs"],
        ),
        (
            vec![
                "attach",
                "guest5",
                "--tag",
                "t",
                "--path",
                &share,
                "--backend-domain",
                "8",
            ],
            vec!["bad --backend-domain: no domain 8"],
        ),
        (
            vec![
                "attach",
                "guest5",
                "--tag",
                "t",
                "--path",
                &share,
                "--backend-domain",
                "5",
            ],
            vec!["cannot be its own 9pfs backend"],
        ),
    ];
    for (args, want) in cases {
        h.xl(&args).refused(&want);
    }
    // Usage errors (clap's own messages) fail with status 1 too.
    for args in [
        vec![
            "attach", "guest5", "--tag", "t", "--path", &share, "--kind", "virtio",
        ],
        vec!["attach", "guest5", "--path", &share],
        vec!["detach", "guest5"],
        vec!["detach", "guest5", "--tag", "t", "--devid", "1"],
        vec![
            "attach",
            "guest5",
            "--tag",
            "t",
            "--path",
            &share,
            "--timeout",
            "soon",
        ],
    ] {
        let run = h.xl(&args);
        assert_eq!(run.code, Some(1), "{args:?}: {run:?}");
    }
    let run = h.xl(&[
        "attach", "guest5", "--tag", "t", "--path", &share, "--kind", "virtio",
    ]);
    assert!(
        run.stderr.contains("unknown backend kind \"virtio\""),
        "{run:?}"
    );
    assert_eq!(h.tree(), before, "nothing was written");
    let help = h.xl(&["attach", "--help"]).ok();
    for want in [
        "--tag",
        "--path",
        "--ro",
        "--devid",
        "--backend-domain",
        "--kind",
        "--no-wait",
        "XENSTORED_PATH",
    ] {
        assert!(help.stdout.contains(want), "{want}: {}", help.stdout);
    }
}

// ---- 6. with the backend state machine envoyd runs ----------------------------------------------

/// envoyd's device loop (`run_device`, simulated grants and event channels) serves a device
/// `envoy-xl attach` created: attach returns once the simulated guest is Connected; `detach`
/// closes the session, and removing the directories ends the device loop with every mapping
/// and port released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_and_detach_with_the_real_backend_state_machine() {
    let h = host().await;
    let (grants, events) = (SimGrantTable::new(), SimEventTable::new());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);

    // The backend: start run_device when the backend directory appears (envoyd watches
    // backend/9pfs for that).
    let backend = {
        let (xs, grants, events) = (h.xs.clone(), grants.clone(), events.clone());
        tokio::spawn(async move {
            wait_exists(&xs, &format!("{BE0}/state")).await;
            run_device(
                &xs,
                BE0,
                &grants,
                &events,
                &BackendLimits::default(),
                stop,
                |_, rings, mut stop| async move {
                    let _ = stop.changed().await;
                    drop(rings);
                    Ok(())
                },
            )
            .await
        })
    };
    // envoy-xl runs on a blocking thread while this task plays the guest in Linux's order:
    // rings after InitWait, Connected after the backend.
    let attach = h.xl_spawn(&[
        "attach",
        "guest5",
        "--tag",
        "share",
        "--path",
        h.share(),
        "--timeout",
        "20",
    ]);
    let xs = &h.xs;
    wait_for(xs, &format!("{BE0}/state"), "2").await;
    let rings = frontend_publishes(xs, &grants, &events, 5, 0, 9).await;
    wait_for(xs, &format!("{BE0}/state"), "4").await;
    xs.write(&format!("{FE0}/state"), "4").await.unwrap();
    let run = attach.await.unwrap().ok();
    assert!(
        run.stdout.contains("connected; in the guest run"),
        "{run:?}"
    );
    assert_eq!(
        grants.live_mappings(),
        4,
        "2 rings mapped (intf + data each)"
    );
    assert_eq!(events.bound_ports(), 2);
    let list = rows(&h.xl(&["list", "guest5"]).ok().stdout);
    assert_eq!(list[0][6..8], ["Connected", "Connected"]);

    // detach: the guest answers the toolstack's Closing like xenbus_frontend_closed.
    let detach = h.xl_spawn(&["detach", "guest5", "--tag", "share", "--timeout", "20"]);
    wait_for(xs, &format!("{BE0}/online"), "0").await;
    wait_for(xs, &format!("{BE0}/state"), "5").await;
    xs.write(&format!("{FE0}/state"), "6").await.unwrap();
    detach.await.unwrap().ok();
    let end = tokio::time::timeout(PATIENCE, backend)
        .await
        .expect("the device loop ends when the device is removed")
        .unwrap()
        .expect("the device loop ends cleanly");
    assert_eq!(end, DeviceEnd::Removed);
    drop(rings);
    assert_eq!(grants.live_mappings(), 0);
    assert_eq!(events.bound_ports(), 0);
    assert_no_device_nodes(&h.tree());
}
