//! Test support: the real C xenstored running on a host without Xen.
//!
//! [`HostXenstored::start`] compiles the LD_PRELOAD shim `fakexen.c` (once per test process,
//! into Cargo's per-target temporary directory), starts Debian's xenstored in a fresh temporary
//! directory with `-N -T trace.log`, waits for its socket and kills it on drop. Hypervisor calls
//! are answered by the shim (see the comment at the top of `fakexen.c`); [`guest::GuestRing`]
//! plays an unprivileged domain over a ring page shared with the daemon.
//!
//! Missing tools are a test failure, not a skip: the message names the Debian packages.
//! Reuse from another test binary with `#[path = ".../xen/tests/support/mod.rs"] mod support;`.

#![allow(dead_code)]

pub mod guest;
pub mod xl;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What to install when something is missing.
pub const PACKAGES_HINT: &str = "install the Debian packages: apt-get install -y xen-utils-4.17 \
     xenstore-utils libxen-dev gcc (Debian bookworm; on trixie xen-utils-4.20, untested)";

/// The shim's source, compiled at test time.
const SHIM_SOURCE: &str = include_str!("fakexen.c");

/// How long xenstored may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The newest `/usr/lib/xen-*/bin/xenstored` (the C daemon, as Debian installs it).
pub fn find_xenstored() -> Result<PathBuf, String> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib")
        .map_err(|e| format!("cannot list /usr/lib: {e}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let version = name.strip_prefix("xen-")?;
            let key: Vec<u32> = version
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let daemon = e.path().join("bin/xenstored");
            daemon.is_file().then_some((key, daemon))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        format!("no /usr/lib/xen-*/bin/xenstored (the C xenstored) on this host: {PACKAGES_HINT}")
    })
}

/// A Debian `xenstore-*` tool (`xenstore-read`, `xenstore-ls`, ...).
pub fn find_tool(name: &str) -> Result<PathBuf, String> {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!("{name} not found: {PACKAGES_HINT}"))
}

/// The compiled shim (built once per process; concurrent processes each build and rename).
pub fn shim() -> Result<PathBuf, String> {
    static SHIM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SHIM.get_or_init(build_shim).clone()
}

fn build_shim() -> Result<PathBuf, String> {
    let dir = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // FNV-1a of the source names the build, so an edited shim is rebuilt.
    let hash = SHIM_SOURCE.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let so = dir.join(format!("fakexen-{hash:016x}.so"));
    if so.is_file() {
        return Ok(so);
    }
    let pid = std::process::id();
    let src = dir.join(format!("fakexen-{hash:016x}-{pid}.c"));
    let tmp = dir.join(format!("fakexen-{hash:016x}-{pid}.so.tmp"));
    std::fs::write(&src, SHIM_SOURCE)
        .map_err(|e| format!("cannot write {}: {e}", src.display()))?;
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("cannot run cc ({e}): {PACKAGES_HINT}"))?;
    let _ = std::fs::remove_file(&src);
    if !out.status.success() {
        return Err(format!(
            "compiling the fakexen shim failed ({}): {}\n{PACKAGES_HINT}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&tmp, &so).map_err(|e| format!("cannot rename the shim: {e}"))?;
    Ok(so)
}

/// A running xenstored serving a unix socket in its own temporary directory.
pub struct HostXenstored {
    dir: tempfile::TempDir,
    child: Child,
    socket: PathBuf,
}

impl HostXenstored {
    /// Start xenstored; panics (failing the test) with instructions if the tools are missing.
    pub fn start() -> HostXenstored {
        HostXenstored::start_with_args(&[])
    }

    /// Start xenstored with extra command-line options (e.g. quotas).
    pub fn start_with_args(args: &[&str]) -> HostXenstored {
        HostXenstored::try_start(args)
            .unwrap_or_else(|e| panic!("cannot run a host xenstored: {e}"))
    }

    /// Start xenstored, or say why not.
    pub fn try_start(args: &[&str]) -> Result<HostXenstored, String> {
        let daemon = find_xenstored()?;
        let shim = shim()?;
        let dir = tempfile::Builder::new()
            .prefix("envoy-xenstored-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let d = dir.path();
        let run = d.join("run");
        std::fs::create_dir(&run).map_err(|e| e.to_string())?;
        // dom0's own event channel and ring page (the shim redirects /proc/xen/xsd_* here).
        std::fs::write(d.join("xsd_port"), "1\n").map_err(|e| e.to_string())?;
        std::fs::write(d.join("xsd_kva"), vec![0u8; 4096]).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(d.join("xenstored.out")).map_err(|e| e.to_string())?;
        let mut child = Command::new(&daemon)
            .args(["-N", "-T"])
            .arg(d.join("trace.log"))
            .args(args)
            .env("LD_PRELOAD", &shim)
            .env("FAKEXEN_DIR", d)
            .env("XENSTORED_RUNDIR", &run)
            .env_remove("XENSTORED_PATH")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", daemon.display()))?;
        let socket = run.join("socket");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let out = std::fs::read_to_string(d.join("xenstored.out")).unwrap_or_default();
                return Err(format!(
                    "{} exited ({status}) before serving: {out}",
                    daemon.display()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not create {} within {START_TIMEOUT:?}",
                    daemon.display(),
                    socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(HostXenstored { dir, child, socket })
    }

    /// The socket clients connect to (what `XENSTORED_PATH` should name).
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The shim's directory (`FAKEXEN_DIR`): ring files, the event FIFO, the trace.
    pub fn fakexen_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's trace so far (`-T`: every request and reply, one line each).
    pub fn trace(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("trace.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill the daemon now (clients see their connection end).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// True while the daemon runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A Debian `xenstore-*` tool aimed at this daemon (`XENSTORED_PATH` set).
    pub fn tool(&self, name: &str) -> Command {
        let path = find_tool(name).unwrap_or_else(|e| panic!("{e}"));
        let mut c = Command::new(path);
        c.env("XENSTORED_PATH", &self.socket).stdin(Stdio::null());
        c
    }

    /// Run a `xenstore-*` tool; its stdout, or a panic with its stderr.
    pub fn run_tool(&self, name: &str, args: &[&str]) -> String {
        let out = self
            .tool(name)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            out.status.success(),
            "{name} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("tool output is UTF-8")
    }

    /// Play domain `domid` over a ring page shared with the daemon; the caller then sends
    /// `XS_INTRODUCE` for it as dom0.
    pub fn guest(&self, domid: u32) -> guest::GuestRing {
        guest::GuestRing::create(self.dir.path(), domid)
    }
}

impl Drop for HostXenstored {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
