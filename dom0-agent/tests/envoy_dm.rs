//! `envoy-dm` against Debian's real C xenstored (run on this host under the fakexen shim, see
//! `xen/tests/support`), driven the way libxl 4.17 drives its PV device model: the same command
//! line, the same QMP exchange, the same state node, then destroy.
//!
//! Needs `xen-utils-4.17 xenstore-utils libxen-dev gcc`; without them these tests fail and say so.

#[path = "../../xen/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::HostXenstored;

/// Bound on every wait.
const STEP: Duration = Duration::from_secs(20);

/// libxl 4.17's arguments for a PV guest's device model (`xl -vvv create` shows them).
fn libxl_args(domid: u32, dir: &Path) -> Vec<String> {
    let cmd = dir.join(format!("qmp-libxl-{domid}"));
    let stat = dir.join(format!("qmp-libxenstat-{domid}"));
    let mut a: Vec<String> = vec![
        "-xen-domid".into(),
        domid.to_string(),
        "-no-shutdown".into(),
    ];
    for (id, p) in [("libxl-cmd", &cmd), ("libxenstat-cmd", &stat)] {
        a.push("-chardev".into());
        a.push(format!(
            "socket,id={id},path={},server=on,wait=off",
            p.display()
        ));
        a.push("-mon".into());
        a.push(format!("chardev={id},mode=control"));
    }
    a.extend(
        "-nodefaults -no-user-config -xen-attach -name domu -vnc none -display none -nographic \
         -machine xenpv -m 128"
            .split_whitespace()
            .map(String::from),
    );
    a
}

struct Dm {
    child: Child,
    log: PathBuf,
}

impl Dm {
    fn start(d: &HostXenstored, args: &[String], log: PathBuf) -> Dm {
        let child = Command::new(env!("CARGO_BIN_EXE_envoy-dm"))
            .args(args)
            .env("XENSTORED_PATH", d.socket_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn envoy-dm");
        Dm { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, waiting at most STEP.
    fn wait(&mut self) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t.elapsed() < STEP, "envoy-dm did not exit: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_node(d: &HostXenstored, path: &str) -> Option<String> {
    let out = d.tool("xenstore-read").arg(path).output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn wait_node(d: &HostXenstored, dm: &mut Dm, path: &str, want: Option<&str>) {
    let t = Instant::now();
    loop {
        let have = read_node(d, path);
        if have.as_deref() == want {
            return;
        }
        if let Some(s) = dm.child.try_wait().unwrap() {
            panic!(
                "envoy-dm exited ({s}) while waiting for {path} = {want:?}: {}",
                dm.log()
            );
        }
        assert!(
            t.elapsed() < STEP,
            "{path} is {have:?}, want {want:?}: {}",
            dm.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A QMP client as libxl's: read the greeting, then one command per line.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> (Qmp, String) {
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        s.set_read_timeout(Some(STEP)).unwrap();
        let mut q = Qmp {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let greeting = q.line();
        (q, greeting)
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("QMP reply");
        assert!(l.ends_with("\r\n"), "QMP lines end with CRLF: {l:?}");
        l.trim_end().to_string()
    }

    fn call(&mut self, cmd: &str) -> String {
        self.w.write_all(cmd.as_bytes()).unwrap();
        self.w.write_all(b"\r\n").unwrap();
        self.line()
    }
}

#[test]
fn plays_libxls_device_model_until_the_domain_is_gone() {
    let d = HostXenstored::start();
    let tmp = tempfile::tempdir().unwrap();
    let domid = 5;
    // What libxl has written by the time it spawns the device model: the domain and its p9.
    d.run_tool("xenstore-write", &["/local/domain/5/name", "domu"]);
    d.run_tool(
        "xenstore-write",
        &["/local/domain/0/backend/9pfs/5/0/state", "1"],
    );
    let mut dm = Dm::start(
        &d,
        &libxl_args(domid, tmp.path()),
        tmp.path().join("dm.log"),
    );
    wait_node(
        &d,
        &mut dm,
        "/local/domain/0/device-model/5/state",
        Some("running"),
    );

    // libxl 4.17 (libxl_qmp.c) sends these, with yajl's compact JSON and numeric ids.
    let (mut q, greeting) = Qmp::connect(&tmp.path().join("qmp-libxl-5"));
    assert!(
        greeting.starts_with("{\"QMP\": {\"version\": {\"qemu\": {"),
        "{greeting}"
    );
    assert!(greeting.contains("\"capabilities\": []"), "{greeting}");
    assert_eq!(
        q.call("{\"execute\":\"qmp_capabilities\",\"id\":1}"),
        "{\"return\": {}, \"id\": 1}"
    );
    assert_eq!(
        q.call("{\"execute\":\"query-chardev\",\"id\":2}"),
        "{\"return\": [], \"id\": 2}"
    );
    let status = q.call("{\"execute\":\"query-status\",\"id\":3}");
    assert!(status.contains("\"status\": \"running\"") && status.ends_with("\"id\": 3}"));
    assert_eq!(
        q.call("{\"execute\":\"xen-set-global-dirty-log\",\"arguments\":{\"enable\":true},\"id\":\"a\"}"),
        "{\"return\": {}, \"id\": \"a\"}"
    );
    assert!(q.call("not json").starts_with("{\"error\": "));
    // A second connection meanwhile (libxl opens one per operation), and libxenstat's socket.
    let (mut q2, _) = Qmp::connect(&tmp.path().join("qmp-libxenstat-5"));
    assert_eq!(
        q2.call("{\"execute\":\"qmp_capabilities\",\"id\":1}"),
        "{\"return\": {}, \"id\": 1}"
    );
    drop(q2);
    let log = dm.log();
    assert!(
        log.contains("qmp_capabilities") && log.contains("query-chardev"),
        "{log}"
    );

    // Other domains' changes do not stop it; its own domain's removal does.
    d.run_tool(
        "xenstore-write",
        &["/local/domain/5/memory/target", "131072"],
    );
    d.run_tool("xenstore-write", &["/local/domain/6/name", "other"]);
    d.run_tool("xenstore-rm", &["/local/domain/6"]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(dm.child.try_wait().unwrap().is_none(), "{}", dm.log());
    d.run_tool("xenstore-rm", &["/local/domain/5"]);
    let st = dm.wait();
    assert!(st.success(), "{st}: {}", dm.log());
    assert_eq!(read_node(&d, "/local/domain/0/device-model/5"), None);
    assert!(!tmp.path().join("qmp-libxl-5").exists());
    assert!(dm.log().contains("the domain is gone"), "{}", dm.log());
    drop(q);
}

#[test]
fn exits_cleanly_when_libxl_kills_it() {
    let d = HostXenstored::start();
    let tmp = tempfile::tempdir().unwrap();
    d.run_tool("xenstore-write", &["/local/domain/9/name", "domu"]);
    for sig in [libc::SIGHUP, libc::SIGTERM] {
        let mut dm = Dm::start(&d, &libxl_args(9, tmp.path()), tmp.path().join("dm.log"));
        wait_node(
            &d,
            &mut dm,
            "/local/domain/0/device-model/9/state",
            Some("running"),
        );
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(dm.child.id() as i32, sig) }, 0);
        let st = dm.wait();
        assert!(st.success(), "signal {sig}: {st}: {}", dm.log());
        assert_eq!(read_node(&d, "/local/domain/0/device-model/9/state"), None);
    }
}

#[test]
fn refuses_guests_that_need_qemu() {
    let d = HostXenstored::start();
    let tmp = tempfile::tempdir().unwrap();
    d.run_tool("xenstore-write", &["/local/domain/3/name", "hvm"]);
    // An HVM guest's command line.
    let mut args = libxl_args(3, tmp.path());
    let m = args.iter().position(|a| a == "xenpv").unwrap();
    args[m] = "xenfv".into();
    let mut dm = Dm::start(&d, &args, tmp.path().join("hvm.log"));
    assert_eq!(dm.wait().code(), Some(2), "{}", dm.log());
    assert!(
        dm.log().contains("remove device_model_override"),
        "{}",
        dm.log()
    );
    // A PV guest with a vfb: libxl wrote its backend before spawning the device model.
    d.run_tool(
        "xenstore-write",
        &["/local/domain/0/backend/vfb/3/0/state", "1"],
    );
    let mut dm = Dm::start(&d, &libxl_args(3, tmp.path()), tmp.path().join("vfb.log"));
    assert_eq!(dm.wait().code(), Some(2), "{}", dm.log());
    assert!(dm.log().contains("remove vfb = [...]"), "{}", dm.log());
    assert_eq!(read_node(&d, "/local/domain/0/device-model/3/state"), None);
    // No such domain.
    let mut dm = Dm::start(&d, &libxl_args(4, tmp.path()), tmp.path().join("none.log"));
    assert_eq!(dm.wait().code(), Some(1), "{}", dm.log());
    assert!(dm.log().contains("domain 4 does not exist"), "{}", dm.log());
}
