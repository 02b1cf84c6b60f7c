//! `envoy-xl`'s library: hot-plug 9pfs shares into running Xen guests by writing xenstore the
//! way libxl does, so that any 9pfs backend (envoyd, QEMU, xen-9pfsd) and any Linux 9pfs
//! frontend see exactly what `xl create` with `p9 = [ ... ]` would have produced.
//!
//! Why a tool of our own: xl can create 9pfs devices only at domain creation (there is no
//! `xl p9-attach`), and restarting a guest to give it a share is what an admin wants to avoid.
//!
//! The device model, as libxl 4.17–4.20 writes it (`libxl_device.c`, `libxl_9pfs.c`):
//!
//! - frontend directory `/local/domain/<domid>/device/9pfs/<devid>/` — `backend`, `backend-id`,
//!   `state = 1`, `tag` — owned by the guest, readable by the backend domain `(n<domid>,r<bdom>)`;
//! - backend directory `/local/domain/<bdom>/backend/<kind>/<domid>/<devid>/` — `frontend`,
//!   `frontend-id`, `online = 1`, `state = 1`, `path`, `security_model = none` (+ `max-space`,
//!   `max-files`, `max-open-files`, `auto-delete` for `xen_9pfs`) — owned by the backend domain,
//!   readable by the guest `(n<bdom>,r<domid>)`; `<kind>` is `9pfs` (xl `type=qemu`) or
//!   `xen_9pfs` (xl `type=xen_9pfsd`);
//! - libxl's own record `/libxl/<domid>/device/9pfs/<devid>/` — `frontend`, `backend` and a
//!   copy of the backend entries — which only dom0 can write: it is what `detach` and `list`
//!   trust to find a device's backend, never the guest-writable frontend directory alone.
//!
//! All of it is written in one transaction, after checks made in the same transaction (the
//! domain exists, the tag and device index are free), so a refused attach writes nothing and
//! two concurrent attaches cannot both take a device index. [`attach`] does that and
//! [`wait_connected`] follows the handshake; [`detach`] retires a device like libxl's removal
//! (backend `online = 0`, `state = Closing`, wait for the frontend to close, then remove the
//! three directories in one transaction); [`list`] shows every device with both ends' states.
//!
//! Everything read from a guest's directory (tag, state, error text) is untrusted: it is parsed
//! strictly and shown through [`printable`], so a guest cannot forge terminal output.

mod attach;
mod detach;
mod list;

pub use attach::{AttachSpec, Quota, attach, check_local_directory, create, wait_connected};
pub use detach::{Selector, begin_close, detach, find_device, remove_device, wait_closed};
pub use list::{DeviceInfo, format_table, list};

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use envoy_xen::xenbus::XenbusState;
use envoy_xen::xenstore::{TRANSACTION_ATTEMPTS, Transaction, Xenstore, XsError};

/// The first domain id Xen reserves (`DOMID_FIRST_RESERVED`): real domains are below it.
pub const DOMID_LIMIT: u32 = 0x7ff0;

/// The backend-directory node `envoy-xl attach --ro` writes; envoyd serves such shares
/// read-only. Other backends ignore it (they serve read-write).
pub const READ_ONLY_NODE: &str = "envoy-read-only";

/// Which backend serves a device: the backend directory's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `backend/9pfs`: xl's `type=qemu` (served by QEMU, or by envoyd).
    Qemu,
    /// `backend/xen_9pfs`: xl's `type=xen_9pfsd` (served by xen-9pfsd, or by envoyd); the only
    /// kind with quota nodes.
    Xen9pfsd,
}

impl Kind {
    /// Both kinds, in the order devices are searched.
    pub const ALL: [Kind; 2] = [Kind::Qemu, Kind::Xen9pfsd];

    /// The directory name under `backend/`.
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Qemu => "9pfs",
            Kind::Xen9pfsd => "xen_9pfs",
        }
    }

    /// The kind whose backend directory is named `dir`.
    pub fn from_dir(dir: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.dir() == dir)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir())
    }
}

impl FromStr for Kind {
    type Err = String;

    /// The directory names, or xl's `type=` names (`qemu`, `xen_9pfsd`).
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "9pfs" | "qemu" => Ok(Kind::Qemu),
            "xen_9pfs" | "xen_9pfsd" => Ok(Kind::Xen9pfsd),
            _ => Err(format!(
                "unknown backend kind {:?}: use 9pfs (xl type=qemu) or xen_9pfs (xl type=xen_9pfsd)",
                printable(s)
            )),
        }
    }
}

/// A domain, as named on the command line and found in xenstore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// The domain id.
    pub domid: u32,
    /// Its `name` node, if any.
    pub name: Option<String>,
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{} (domain {})", printable(n), self.domid),
            None => write!(f, "domain {}", self.domid),
        }
    }
}

/// Where one 9pfs device lives in xenstore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicePaths {
    /// The guest.
    pub domid: u32,
    /// The device index (the same in the frontend and backend paths, as libxl makes it).
    pub devid: u32,
    /// The domain serving it.
    pub backend_domid: u32,
    /// The backend directory's kind.
    pub kind: Kind,
}

impl DevicePaths {
    /// `/local/domain/<domid>/device/9pfs/<devid>`.
    pub fn frontend(&self) -> String {
        frontend_path(self.domid, self.devid)
    }

    /// `/local/domain/<bdom>/backend/<kind>/<domid>/<devid>`.
    pub fn backend(&self) -> String {
        format!(
            "/local/domain/{}/backend/{}/{}/{}",
            self.backend_domid, self.kind, self.domid, self.devid
        )
    }

    /// libxl's record, `/libxl/<domid>/device/9pfs/<devid>`.
    pub fn libxl(&self) -> String {
        libxl_path(self.domid, self.devid)
    }

    /// Where a backend reports why it gave up (Linux's `xenbus_dev_fatal`, envoyd):
    /// `/local/domain/<bdom>/error/backend/<kind>/<domid>/<devid>` (the text is in `error` below).
    pub fn backend_error_dir(&self) -> String {
        format!(
            "/local/domain/{}/error/backend/{}/{}/{}",
            self.backend_domid, self.kind, self.domid, self.devid
        )
    }

    /// Where the guest's frontend reports errors: `/local/domain/<domid>/error/device/9pfs/<devid>`.
    pub fn frontend_error_dir(&self) -> String {
        format!(
            "/local/domain/{}/error/device/9pfs/{}",
            self.domid, self.devid
        )
    }

    /// Parse a backend directory path, accepting it only if it is a 9pfs backend directory of
    /// device `devid` of guest `domid`.
    pub fn parse_backend(path: &str, domid: u32, devid: u32) -> Option<DevicePaths> {
        let rest = path.strip_prefix("/local/domain/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [bdom, "backend", kind, d, n] = parts.as_slice() else {
            return None;
        };
        let paths = DevicePaths {
            domid: parse_id(d)?,
            devid: parse_id(n)?,
            backend_domid: parse_id(bdom)?,
            kind: Kind::from_dir(kind)?,
        };
        (paths.domid == domid && paths.devid == devid).then_some(paths)
    }
}

/// `/local/domain/<domid>/device/9pfs/<devid>`.
pub fn frontend_path(domid: u32, devid: u32) -> String {
    format!("/local/domain/{domid}/device/9pfs/{devid}")
}

/// `/libxl/<domid>/device/9pfs/<devid>`.
pub fn libxl_path(domid: u32, devid: u32) -> String {
    format!("/libxl/{domid}/device/9pfs/{devid}")
}

/// A domain's home, `/local/domain/<domid>`.
pub fn home(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// A canonical decimal id (`0`, `17`; not `017`, `+1`, ` 1`), as xenstore paths spell them.
fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Why an `envoy-xl` operation failed. Messages are one line and name the domain and device.
#[derive(Debug, thiserror::Error)]
pub enum XlError {
    /// No such domain in xenstore.
    #[error(
        "no domain {0}: not a domain id with a /local/domain/<id> directory, nor any domain's name"
    )]
    NoDomain(String),
    /// A name matching several domains.
    #[error("domain name {name} is ambiguous: domains {domids:?} have it; give the domain id")]
    AmbiguousName {
        /// The name as given.
        name: String,
        /// The domains carrying it.
        domids: Vec<u32>,
    },
    /// Refused input (bad path, tag, option combination, ...). Nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The guest already has a device with this tag. Nothing was written.
    #[error("{domain} already has a 9pfs device with tag {tag} (device {devid})")]
    TagInUse {
        /// The guest.
        domain: String,
        /// The tag.
        tag: String,
        /// The device using it.
        devid: u32,
    },
    /// The requested device index is taken. Nothing was written.
    #[error("{domain} already has 9pfs device {devid} ({path} exists)")]
    DevidInUse {
        /// The guest.
        domain: String,
        /// The index.
        devid: u32,
        /// A node proving it.
        path: String,
    },
    /// No device matches.
    #[error("{domain} has no 9pfs device {what}")]
    NoDevice {
        /// The guest.
        domain: String,
        /// What was looked for (`with tag "x"`, `3`).
        what: String,
    },
    /// The handshake did not reach the wanted state in time, or failed; the text says which
    /// side stopped where.
    #[error("{0}")]
    Stuck(String),
    /// A xenstore call failed.
    #[error(transparent)]
    Xenstore(#[from] XsError),
}

/// A guest-written text (tag, error report, ...) shown safely: control characters escaped,
/// cut after 200 characters.
pub fn printable(s: &str) -> String {
    let mut cut: String = s.chars().take(200).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    escape_controls(&cut)
}

/// `s` with control characters (newlines, escape sequences) escaped, so it prints as one
/// harmless line.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// A state as `list` shows it: its name, or `-` when the node is missing.
pub fn state_name(state: Option<XenbusState>) -> String {
    match state {
        Some(s) => format!("{s:?}"),
        None => "-".to_owned(),
    }
}

/// A state node's value; `None` when the node is missing.
async fn read_state(tx: &Transaction, dir: &str) -> Result<Option<XenbusState>, XsError> {
    Ok(tx
        .try_read_string(&format!("{dir}/state"))
        .await?
        .map(|s| XenbusState::parse(&s)))
}

/// Both ends of a device at one moment (read in one transaction), with the error reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ends {
    /// The backend's state; `None`: no backend `state` node.
    pub backend: Option<XenbusState>,
    /// The frontend's state; `None`: no frontend `state` node.
    pub frontend: Option<XenbusState>,
    /// The backend's error report (`error/backend/.../error` in the backend domain).
    pub backend_error: Option<String>,
    /// The frontend's error report (`error/device/9pfs/<devid>/error` in the guest).
    pub frontend_error: Option<String>,
}

impl Ends {
    /// Read both ends of `paths`.
    pub async fn read(xs: &Xenstore, paths: &DevicePaths) -> Result<Ends, XlError> {
        read_only(xs, async |tx| Ends::read_in(tx, paths).await).await
    }

    async fn read_in(tx: &Transaction, paths: &DevicePaths) -> Result<Ends, XlError> {
        Ok(Ends {
            backend: read_state(tx, &paths.backend()).await?,
            frontend: read_state(tx, &paths.frontend()).await?,
            backend_error: read_error(tx, &paths.backend_error_dir()).await?,
            frontend_error: read_error(tx, &paths.frontend_error_dir()).await?,
        })
    }

    /// Either end closed or vanished: the device will not connect without help.
    pub fn gave_up(&self) -> bool {
        match (self.backend, self.frontend) {
            (Some(b), Some(f)) => b.is_closing() || f.is_closing(),
            _ => true,
        }
    }

    /// The error reports, one line: `backend error: ...; frontend error: ...`, or empty.
    pub fn errors(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = &self.backend_error {
            parts.push(format!("backend error: {}", printable(e)));
        }
        if let Some(e) = &self.frontend_error {
            parts.push(format!("frontend error: {}", printable(e)));
        }
        parts.join("; ")
    }

    /// Why the device is not Connected: which side is stuck at which state, and the errors.
    pub fn connect_problem(&self, paths: &DevicePaths) -> String {
        use XenbusState::*;
        let shown = |s: XenbusState| format!("{s}");
        let why = match (self.backend, self.frontend) {
            (None, _) => format!("the backend directory {} is gone", paths.backend()),
            (_, None) => format!("the frontend directory {} is gone", paths.frontend()),
            (Some(b), Some(_)) if b.is_closing() => {
                format!("the backend gave up (it is at {})", shown(b))
            }
            (Some(_), Some(f)) if f.is_closing() => {
                format!("the guest's frontend gave up (it is at {})", shown(f))
            }
            (Some(b @ (Unknown | Initialising)), Some(f)) => format!(
                "the backend is stuck at {}: no backend has taken the device (is `envoyd --xen` \
                 running in domain {}? it serves backend/{}), frontend at {}",
                shown(b),
                paths.backend_domid,
                paths.kind,
                shown(f)
            ),
            (Some(InitWait), Some(f @ (Unknown | Initialising | InitWait))) => format!(
                "the guest's frontend is stuck at {}: it has not published its rings (is the \
                 guest up, with the 9pnet_xen module loaded?), backend at InitWait (2)",
                shown(f)
            ),
            (Some(b), Some(Initialised)) => format!(
                "the backend is stuck at {}: it has not connected the rings the guest published \
                 (frontend at Initialised (3))",
                shown(b)
            ),
            (Some(Connected), Some(f)) => format!(
                "the guest's frontend is stuck at {} after the backend connected",
                shown(f)
            ),
            (Some(b), Some(f)) => format!("backend at {}, frontend at {}", shown(b), shown(f)),
        };
        match self.errors() {
            e if e.is_empty() => why,
            e => format!("{why}; {e}"),
        }
    }
}

/// The children of `path`; empty when it does not exist.
async fn children(tx: &Transaction, path: &str) -> Result<Vec<String>, XsError> {
    match tx.directory(path).await {
        Ok(names) => Ok(names),
        Err(e) if e.is_enoent() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The device indexes among `path`'s children (other names are ignored).
async fn devids_under(tx: &Transaction, path: &str) -> Result<Vec<u32>, XsError> {
    Ok(children(tx, path)
        .await?
        .iter()
        .filter_map(|n| parse_id(n))
        .collect())
}

/// The `error` text under an error directory, if any.
async fn read_error(tx: &Transaction, dir: &str) -> Result<Option<String>, XsError> {
    tx.try_read_string(&format!("{dir}/error")).await
}

/// Whether `domid` exists: it has a `/local/domain/<domid>` directory. Domain 0 always
/// exists (its directory is written by `xen-init-dom0`, which a bare xenstored lacks).
async fn domain_exists(tx: &Transaction, domid: u32) -> Result<bool, XsError> {
    Ok(domid == 0 || tx.try_read_string(&home(domid)).await?.is_some())
}

/// Resolve a command-line domain: a domain id (with a `/local/domain/<id>` directory; 0 always
/// exists) or a domain name (the `name` node of exactly one `/local/domain/*`).
pub async fn resolve_domain(xs: &Xenstore, spec: &str) -> Result<Domain, XlError> {
    read_only(xs, async |tx| {
        if let Some(domid) = parse_id(spec).filter(|&d| d < DOMID_LIMIT) {
            if !domain_exists(tx, domid).await? {
                return Err(XlError::NoDomain(spec.to_owned()));
            }
            let name = tx.try_read_string(&format!("{}/name", home(domid))).await?;
            return Ok(Domain { domid, name });
        }
        let mut found = Vec::new();
        for id in children(tx, "/local/domain").await? {
            let Some(domid) = parse_id(&id) else { continue };
            let name = tx.try_read_string(&format!("{}/name", home(domid))).await?;
            if name.as_deref() == Some(spec) {
                found.push(domid);
            }
        }
        match found.as_slice() {
            [] => Err(XlError::NoDomain(format!("{:?}", printable(spec)))),
            [domid] => Ok(Domain {
                domid: *domid,
                name: Some(spec.to_owned()),
            }),
            _ => Err(XlError::AmbiguousName {
                name: format!("{:?}", printable(spec)),
                domids: found,
            }),
        }
    })
    .await
}

/// The id of the domain this tool runs in: xenstore's `domid` relative to our connection's
/// home (what a guest or driver domain sees); dom0 when absent (dom0 has no such node on some
/// hosts).
pub async fn own_domid(xs: &Xenstore) -> Result<u32, XlError> {
    match xs.try_read_string("domid").await {
        Ok(Some(d)) => parse_id(d.trim())
            .ok_or_else(|| XlError::Invalid(format!("xenstore's domid {d:?} is not a domain id"))),
        Ok(None) => Ok(0),
        // A privileged socket connection has no home: relative paths are refused.
        Err(XsError::Refused { .. }) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Run `body` in a transaction and commit; if the commit loses a conflict (`EAGAIN`), run it
/// again from the start in a fresh transaction (up to [`TRANSACTION_ATTEMPTS`] times). An error
/// from `body` aborts the transaction: nothing it wrote becomes visible.
async fn in_transaction<T>(
    xs: &Xenstore,
    mut body: impl AsyncFnMut(&Transaction) -> Result<T, XlError>,
) -> Result<T, XlError> {
    let mut attempt = 1u32;
    loop {
        let tx = xs.transaction_start().await?;
        let value = match body(&tx).await {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.abort().await;
                return Err(e);
            }
        };
        match tx.commit().await {
            Ok(()) => return Ok(value),
            Err(e) if e.is_again() && attempt < TRANSACTION_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(50)))).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Run `body` on a consistent snapshot (a transaction that is aborted afterwards).
async fn read_only<T>(
    xs: &Xenstore,
    body: impl AsyncFnOnce(&Transaction) -> Result<T, XlError>,
) -> Result<T, XlError> {
    let tx = xs.transaction_start().await?;
    let outcome = body(&tx).await;
    let _ = tx.abort().await;
    outcome
}

/// Remove `path` and then each parent that became empty (no value, no children), stopping
/// before `floor` — the way libxl cleans a device path (`libxl__xs_path_cleanup`), except that
/// it never climbs to `floor` (a domain's `device/` or `backend/` directory, `/libxl`, a
/// domain's home for its `error/` reports).
async fn remove_and_prune(tx: &Transaction, path: &str, floor: &str) -> Result<(), XsError> {
    debug_assert!(path.starts_with(floor));
    match tx.rm(path).await {
        Ok(()) => {}
        Err(e) if e.is_enoent() => {}
        Err(e) => return Err(e),
    }
    let mut dir = path;
    while let Some((parent, _)) = dir.rsplit_once('/') {
        if parent.len() <= floor.len() {
            break;
        }
        match tx.try_read_string(parent).await? {
            Some(v) if v.is_empty() => {}
            _ => break,
        }
        if !children(tx, parent).await?.is_empty() {
            break;
        }
        tx.rm(parent).await?;
        dir = parent;
    }
    Ok(())
}

/// Parse a `--timeout`: seconds (`30`, `1.5`, `2s`) or milliseconds (`500ms`).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad timeout {s:?}: give seconds (30, 1.5, 2s) or milliseconds (500ms)");
    let (number, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (s.strip_suffix('s').unwrap_or(s), 1.0)
    };
    let v: f64 = number.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_match_the_backend() {
        let dirs: Vec<&str> = Kind::ALL.iter().map(|k| k.dir()).collect();
        assert_eq!(dirs, envoy_xen::device::BACKEND_KINDS);
        for (text, kind) in [
            ("9pfs", Kind::Qemu),
            ("qemu", Kind::Qemu),
            ("xen_9pfs", Kind::Xen9pfsd),
            ("xen_9pfsd", Kind::Xen9pfsd),
        ] {
            assert_eq!(text.parse::<Kind>(), Ok(kind));
        }
        let e = "virtio".parse::<Kind>().unwrap_err();
        assert!(e.contains("unknown backend kind \"virtio\""), "{e}");
    }

    #[test]
    fn backend_paths_are_parsed_strictly() {
        let p = DevicePaths {
            domid: 5,
            devid: 2,
            backend_domid: 0,
            kind: Kind::Xen9pfsd,
        };
        assert_eq!(p.backend(), "/local/domain/0/backend/xen_9pfs/5/2");
        assert_eq!(DevicePaths::parse_backend(&p.backend(), 5, 2), Some(p));
        for bad in [
            "/local/domain/0/backend/xen_9pfs/5/2/",
            "/local/domain/0/backend/vbd/5/2",
            "/local/domain/0/backend/9pfs/6/2",
            "/local/domain/0/backend/9pfs/5/3",
            "/local/domain/0/backend/9pfs/5/02",
            "/local/domain/0/../backend/9pfs/5/2",
            "/local/domain/x/backend/9pfs/5/2",
            "local/domain/0/backend/9pfs/5/2",
        ] {
            assert_eq!(DevicePaths::parse_backend(bad, 5, 2), None, "{bad}");
        }
        assert_eq!(
            p.backend_error_dir(),
            "/local/domain/0/error/backend/xen_9pfs/5/2"
        );
        assert_eq!(p.libxl(), "/libxl/5/device/9pfs/2");
        assert_eq!(p.frontend(), "/local/domain/5/device/9pfs/2");
    }

    #[test]
    fn ids_timeouts_and_printing() {
        assert_eq!(parse_id("0"), Some(0));
        assert_eq!(parse_id("17"), Some(17));
        for bad in ["", "017", "+1", " 1", "1a", "99999999999"] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "-1", "x", "nan", "1e9"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
        assert_eq!(printable("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(printable(&"x".repeat(300)).chars().count(), 201);
        assert_eq!(state_name(None), "-");
        assert_eq!(state_name(Some(XenbusState::InitWait)), "InitWait");
    }
}
