//! envoy-dm: the "device model" libxl 4.17 insists on for a PV guest with a `p9` device.
//!
//! libxl (since 47bc2c29, "start pvqemu when 9pfs is requested") spawns QEMU for any PV guest
//! with a 9pfs device, waits for `/local/domain/0/device-model/<domid>/state = running`, then
//! talks QMP to it (`qmp_capabilities`, `query-chardev`); without an answer it destroys the
//! domain. envoyd serves the 9pfs backend itself, so for guests whose only device-model need
//! is 9pfs this process stands in for QEMU: it serves libxl's QMP sockets, writes the state
//! node, and waits until libxl kills it (`xl destroy`: SIGHUP) or the domain disappears
//! (`@releaseDomain`, `/local/domain/<domid>` removed). Guests that need a real device model
//! (HVM, vfb, qdisk disks, channels) are refused with the xl setting to remove.
//!
//! Its stderr is libxl's `/var/log/xen/qemu-dm-<name>.log`: every option ignored and every QMP
//! command is logged there.

pub mod args;
pub mod qmp;

use anyhow::{Context, Result, bail};
use args::DmArgs;
use envoy_xen::xenstore::Xenstore;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// Backend kinds in dom0 that only QEMU serves (`/local/domain/0/backend/<kind>/<domid>`), with
/// what to remove from the xl config. libxl writes them before it spawns the device model.
const QEMU_BACKENDS: &[(&str, &str, &str)] = &[
    (
        "qdisk",
        "a disk with the QEMU (qdisk) backend",
        "give it backendtype=phy (dom0's blkback) or remove it from disk = [...]",
    ),
    (
        "vfb",
        "a virtual frame buffer (vfb)",
        "remove vfb = [...] (and vnc/sdl settings)",
    ),
    (
        "vkbd",
        "a virtual keyboard (vkb) served by QEMU",
        "remove vkb = [...] and vfb = [...]",
    ),
    (
        "qusb",
        "a QEMU USB controller",
        "remove usbctrl = [...] and usbdev = [...]",
    ),
    (
        "qnic",
        "a QEMU-emulated network interface",
        "use a vif with the netback backend",
    ),
];

/// The guest needs a real device model (the message says what to remove from its config).
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Why the device model stops.
#[derive(Debug)]
pub enum Ending {
    /// SIGHUP/SIGTERM/SIGINT (libxl kills its device model on destroy).
    Signal(&'static str),
    /// `/local/domain/<domid>` is gone.
    DomainGone,
    /// A QMP `quit`.
    Quit,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Signal(s) => write!(f, "killed by {s}"),
            Ending::DomainGone => f.write_str("the domain is gone"),
            Ending::Quit => f.write_str("QMP quit"),
        }
    }
}

fn log(domid: u32, msg: impl std::fmt::Display) {
    eprintln!("envoy-dm[{domid}]: {msg}");
}

/// Checks that need xenstore: the domain exists and has no device that only QEMU serves.
pub async fn check_domain(xs: &Xenstore, domid: u32) -> Result<Option<String>> {
    let home = format!("/local/domain/{domid}");
    if xs.try_read_string(&home).await?.is_none() {
        bail!("domain {domid} does not exist ({home} is missing)");
    }
    for (kind, what, fix) in QEMU_BACKENDS {
        let path = format!("/local/domain/0/backend/{kind}/{domid}");
        match xs.directory(&path).await {
            Ok(devs) if !devs.is_empty() => {
                return Ok(Some(
                    args::ArgsError::NeedsQemu {
                        what: format!("{what} ({path})"),
                        fix: fix.to_string(),
                    }
                    .to_string(),
                ));
            }
            Ok(_) => {}
            Err(e) if e.is_enoent() => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Consoles QEMU serves (libxl's "ioemu" console backend, used for channels and vfb guests).
    let mut consoles = vec![format!("{home}/console/type")];
    if let Ok(devs) = xs.directory(&format!("{home}/device/console")).await {
        consoles.extend(
            devs.iter()
                .map(|d| format!("{home}/device/console/{d}/type")),
        );
    }
    for c in consoles {
        if xs.try_read_string(&c).await?.as_deref() == Some("ioemu") {
            return Ok(Some(
                args::ArgsError::NeedsQemu {
                    what: format!("a console served by QEMU ({c} = ioemu)"),
                    fix: "remove channel = [...] and vfb = [...]".to_string(),
                }
                .to_string(),
            ));
        }
    }
    Ok(None)
}

/// Bind the QMP sockets (replacing stale socket files; refusing to replace anything else).
fn bind(path: &Path) -> Result<UnixListener> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            bail!("{} exists and is not a socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))
}

/// Serve one QMP connection: greeting, then one reply per command line.
async fn serve_qmp(domid: u32, id: String, mut s: UnixStream, quit: mpsc::Sender<()>) {
    if let Err(e) = s.write_all(qmp::GREETING.as_bytes()).await {
        log(domid, format!("qmp {id}: greeting: {e}"));
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                log(domid, format!("qmp {id}: read: {e}"));
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let reply = qmp::answer(text);
            log(
                domid,
                format!("qmp {id}: {text} -> {}", reply.line.trim_end()),
            );
            if let Err(e) = s.write_all(reply.line.as_bytes()).await {
                log(domid, format!("qmp {id}: write: {e}"));
                return;
            }
            if reply.quit {
                let _ = quit.send(()).await;
                return;
            }
        }
        if buf.len() > qmp::MAX_COMMAND {
            log(
                domid,
                format!("qmp {id}: command over {} bytes; closing", qmp::MAX_COMMAND),
            );
            return;
        }
    }
}

/// Resolves when `/local/domain/<domid>` no longer exists.
async fn domain_gone(xs: &Xenstore, domid: u32) -> Result<()> {
    let home = format!("/local/domain/{domid}");
    let mut released = xs.watch("@releaseDomain").await?;
    let mut changed = xs.watch(&home).await?;
    loop {
        if xs.try_read_string(&home).await?.is_none() {
            return Ok(());
        }
        tokio::select! {
            e = released.next() => if e.is_none() { bail!("xenstore connection closed") },
            e = changed.next() => if e.is_none() { bail!("xenstore connection closed") },
        }
    }
}

/// Run the device model until it is killed, asked to quit, or the domain disappears.
pub async fn run(a: DmArgs) -> Result<Ending> {
    let domid = a.domid;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let xs = Xenstore::open()
        .await
        .context("connecting to xenstore (is this dom0 with xenstored running?)")?;
    if let Some(refusal) = check_domain(&xs, domid).await? {
        return Err(Refused(refusal).into());
    }
    let mut listeners = Vec::new();
    for (id, path) in &a.qmp {
        listeners.push((id.clone(), path.clone(), bind(path)?));
    }
    let (quit_tx, mut quit_rx) = mpsc::channel(1);
    let mut paths: Vec<PathBuf> = Vec::new();
    for (id, path, l) in listeners {
        log(domid, format!("qmp {id} on {}", path.display()));
        paths.push(path);
        let quit_tx = quit_tx.clone();
        tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(serve_qmp(domid, id.clone(), s, quit_tx.clone()));
                    }
                    Err(e) => {
                        log(domid, format!("qmp {id}: accept: {e}"));
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    let dm_dir = format!("/local/domain/0/device-model/{domid}");
    xs.write(&format!("{dm_dir}/state"), "running")
        .await
        .context("writing the device-model state")?;
    log(domid, format!("{dm_dir}/state = running"));

    let ending = tokio::select! {
        _ = hup.recv() => Ending::Signal("SIGHUP"),
        _ = term.recv() => Ending::Signal("SIGTERM"),
        _ = int.recv() => Ending::Signal("SIGINT"),
        _ = quit_rx.recv() => Ending::Quit,
        r = domain_gone(&xs, domid) => { r?; Ending::DomainGone }
    };
    log(domid, format!("stopping: {ending}"));
    match xs.rm(&dm_dir).await {
        Ok(()) => {}
        Err(e) if e.is_enoent() => {}
        Err(e) => log(domid, format!("removing {dm_dir}: {e}")),
    }
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
    Ok(ending)
}
