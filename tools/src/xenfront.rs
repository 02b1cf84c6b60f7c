//! `envoy-xen-frontend`'s library: play a 9pfs frontend — correct or hostile — against a real
//! 9pfs backend, from a program in the frontend's domain (normally dom0, sharing with itself).
//!
//! [`run`] drives one device's xenbus handshake from the frontend's side with the frontend
//! primitives of `envoy-xen` ([`GrantSharer`], [`UnboundPorts`], [`FrontendRing`]): over
//! `/dev/xen/gntalloc` and `/dev/xen/evtchn` in a Xen domain, over the simulated tables in tests
//! (where `envoy_xen::device::run_device` plays the backend). What happens depends on the
//! [`Mode`]:
//!
//! - [`Mode::Good`]: Linux's handshake (wait for the backend's InitWait, publish the rings and
//!   go Initialised, wait for Connected, go Connected), then 9P through the rings with the
//!   project's client — Tversion, Tattach, Twalk, Tlopen, Tread of a file — and a clean close
//!   (Closing, wait for the backend's Closing, Closed, wait for the backend's Closed).
//! - [`Mode::BadOrder`]: a valid xenstore setup whose intf page announces `ring_order` 12.
//! - [`Mode::BogusRef`]: ring 1's `ring-ref` is a grant never made.
//! - [`Mode::BadIndexes`]: after connecting, `out_prod` claims 1 GiB of requests.
//! - [`Mode::Oversize`]: after connecting, a request whose 9P size field exceeds the ring.
//!
//! A hostile mode passes when the backend disconnects the device: state Closing (5) with the
//! reason in `error/<backend path>/error`, within the timeout. Every wait is bounded; grants
//! and ports are released, and a device created with [`DeviceChoice::Create`] is removed,
//! whatever the outcome.
//!
//! The device is one whose backend directory exists (created by a toolstack, e.g.
//! `envoy-xl attach`), found under `/local/domain/<me>/device/9pfs/`, or one this module creates
//! the way libxl would (frontend `/local/domain/<me>/device/9pfs/<devid>`, backend
//! `/local/domain/<backend>/backend/<kind>/<me>/<devid>`; this needs write access to the
//! backend domain's tree, i.e. dom0).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use envoy_protocol::Dialect;
use envoy_protocol::consts::P9_DOTL_RDONLY;
use envoy_xen::evtchn::{EventChannel, UnboundPorts};
use envoy_xen::frontend::linux::LinuxFrontend;
use envoy_xen::frontend::{FrontendError, FrontendRing};
use envoy_xen::grant::{GrantSharer, SharedGrants};
use envoy_xen::ring::{MAX_RING_ORDER, OUT_CONS, OUT_PROD, ring_size};
use envoy_xen::xenbus::XenbusState;
use envoy_xen::xenstore::{Watch, Xenstore, XsError};
use md5::{Digest, Md5};
use tokio::time::Instant;

use crate::client::Client;
use crate::xl::{self, Kind, escape_controls, own_domid};

/// The `ring_order` [`Mode::BadOrder`] writes into the intf page (above the protocol's 9).
pub const BAD_ORDER: u32 = 12;
/// The `ring-ref` [`Mode::BogusRef`] publishes: far beyond any grant table (Xen's default is
/// 64 frames of 512 entries), so no domain can have granted it.
pub const BOGUS_REF: u32 = 0x0fff_fff0;
/// What [`Mode::BadIndexes`] claims is queued in `out`: 1 GiB.
pub const BAD_QUEUED: u32 = 1 << 30;
/// The most [`Mode::Good`] reads of its file.
pub const MAX_READ: usize = 1 << 30;

/// What the frontend does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A correct frontend reading a file.
    Good,
    /// `ring_order` 12 in the intf page.
    BadOrder,
    /// A `ring-ref` of a grant never made.
    BogusRef,
    /// `out_prod` claiming 1 GiB after connecting.
    BadIndexes,
    /// A 9P size field larger than the ring after connecting.
    Oversize,
}

impl Mode {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [Mode; 5] = [
        Mode::Good,
        Mode::BadOrder,
        Mode::BogusRef,
        Mode::BadIndexes,
        Mode::Oversize,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Good => "good",
            Mode::BadOrder => "bad-order",
            Mode::BogusRef => "bogus-ref",
            Mode::BadIndexes => "bad-indexes",
            Mode::Oversize => "oversize",
        }
    }

    /// Whether the backend must disconnect the device.
    pub fn is_hostile(self) -> bool {
        self != Mode::Good
    }

    /// Whether the backend must refuse the rings before connecting.
    fn refused_at_setup(self) -> bool {
        matches!(self, Mode::BadOrder | Mode::BogusRef)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mode {s:?}: one of {}", names.join(", "))
            })
    }
}

/// A device to create, as libxl would for `p9 = [ "tag=T,path=P" ]` of this domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateSpec {
    /// The device index (default: the lowest free one).
    pub devid: Option<u32>,
    /// The frontend's `tag`.
    pub tag: String,
    /// The backend's `path`: the directory to share, in the backend's domain.
    pub path: String,
    /// The backend's domain.
    pub backend_domid: u16,
    /// The backend directory's kind.
    pub kind: Kind,
}

/// Which device to play the frontend of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// An existing device of this domain: by index, by tag, or the only one.
    Existing {
        /// Its index.
        devid: Option<u32>,
        /// Its tag.
        tag: Option<String>,
    },
    /// Create the device first, and remove it at the end.
    Create(CreateSpec),
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Correct or hostile, and how.
    pub mode: Mode,
    /// The device.
    pub device: DeviceChoice,
    /// Rings to publish (Linux uses 2).
    pub rings: u32,
    /// Their order.
    pub order: u32,
    /// [`Mode::Good`]: the file to read, relative to the share's root.
    pub file: Option<String>,
    /// [`Mode::Good`]: the md5 (hex) the file's bytes must have.
    pub expect_md5: Option<String>,
    /// Bound on each wait (for the backend, for 9P replies).
    pub timeout: Duration,
}

impl Options {
    /// Defaults for `mode` on `device`: 2 rings of order 4 (34 grants: gntalloc allows 1,024
    /// in all by default), 20 s per wait.
    pub fn new(mode: Mode, device: DeviceChoice) -> Options {
        Options {
            mode,
            device,
            rings: 2,
            order: 4,
            file: None,
            expect_md5: None,
            timeout: Duration::from_secs(20),
        }
    }

    /// Refuse contradictory or impossible options.
    pub fn validate(&self) -> Result<(), FrontError> {
        let bad = |m: String| Err(FrontError::Invalid(m));
        if self.rings == 0 || self.rings > 64 {
            return bad(format!("--rings {} is outside 1..=64", self.rings));
        }
        if self.mode == Mode::BogusRef && self.rings < 2 {
            return bad("bogus-ref corrupts ring 1: give --rings 2 or more".into());
        }
        if self.order == 0 || self.order > MAX_RING_ORDER {
            return bad(format!(
                "--order {} is outside 1..={MAX_RING_ORDER}",
                self.order
            ));
        }
        match (&self.mode, &self.file) {
            (Mode::Good, None) => return bad("--mode good needs --file, the file to read".into()),
            (Mode::Good, Some(f)) if f.split('/').any(|c| c == "..") => {
                return bad(format!("--file {f:?} must stay inside the share"));
            }
            _ => {}
        }
        if let Some(m) = &self.expect_md5
            && (m.len() != 32 || !m.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad(format!("--expect-md5 {m:?} is not 32 hex digits"));
        }
        if let DeviceChoice::Create(c) = &self.device {
            if !c.path.starts_with('/') {
                return bad(format!("--path {:?} is not absolute", c.path));
            }
            if c.tag.is_empty() || c.tag.chars().any(|ch| ch.is_control() || ch == ' ') {
                return bad(format!("--tag {:?} is empty or has spaces", c.tag));
            }
        }
        Ok(())
    }
}

/// The outcome of a run that got as far as judging the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The mode run.
    pub mode: Mode,
    /// Whether the backend did what it must.
    pub passed: bool,
    /// What happened: the file's length and md5, or the backend's reason for disconnecting,
    /// or what went wrong.
    pub detail: String,
}

impl fmt::Display for Verdict {
    /// `ENVOY-FE: PASS good (file: len=N md5=HEX)`, `ENVOY-FE: PASS bad-order (backend
    /// Closing: REASON)`, `ENVOY-FE: FAIL MODE: WHY` — one line, control characters escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = escape_controls(&self.detail);
        if self.passed {
            write!(f, "ENVOY-FE: PASS {} ({detail})", self.mode)
        } else {
            write!(f, "ENVOY-FE: FAIL {}: {detail}", self.mode)
        }
    }
}

/// Why a run could not judge the backend (each is a failure of the run).
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// Contradictory or impossible options.
    #[error("{0}")]
    Invalid(String),
    /// Talking to xenstore failed.
    #[error(transparent)]
    Xenstore(#[from] XsError),
    /// The device is missing, ambiguous or malformed.
    #[error("{0}")]
    Device(String),
    /// Setting up a ring failed (grants, event channels).
    #[error("setting up a ring: {0}")]
    Ring(#[from] FrontendError),
    /// The backend did not get where it had to within the timeout, or misbehaved.
    #[error("{0}")]
    Backend(String),
    /// 9P through the rings failed.
    #[error("9P through the rings: {0}")]
    NineP(String),
}

/// The nodes of the device being played.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePaths {
    /// The frontend directory.
    pub frontend: String,
    /// The backend directory.
    pub backend: String,
    /// The backend's domain.
    pub backend_domid: u16,
    /// Where the backend reports why it disconnected (`xenbus_dev_fatal`'s node).
    pub error_node: String,
}

impl DevicePaths {
    fn new(frontend: String, backend: String, backend_domid: u16) -> DevicePaths {
        let home = backend.split("/backend/").next().unwrap_or_default();
        let error_node = format!("{home}/error{}/error", &backend[home.len()..]);
        DevicePaths {
            frontend,
            backend,
            backend_domid,
            error_node,
        }
    }
}

/// Progress reports, one line each (the binary prints them to stderr).
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// Play `opts.mode` against the backend of the chosen device, with pages from `grants` and
/// ports from `events` (both of this domain), and judge it.
///
/// `Ok` carries the verdict once the backend was seen to act (or not) on what the frontend
/// did; `Err` means the run could not get that far (no device, no backend, xenstore or grant
/// failures, timeouts of the good mode). Either way, grants and ports are released and a
/// created device is removed before this returns.
pub async fn run<G: GrantSharer, E: UnboundPorts>(
    xs: &Xenstore,
    grants: &G,
    events: &E,
    opts: &Options,
    progress: Progress<'_>,
) -> Result<Verdict, FrontError> {
    opts.validate()?;
    let me = u16::try_from(
        own_domid(xs)
            .await
            .map_err(|e| FrontError::Device(e.to_string()))?,
    )
    .map_err(|_| FrontError::Device("this domain's id is out of range".into()))?;
    let (paths, created) = match &opts.device {
        DeviceChoice::Existing { devid, tag } => {
            (find_device(xs, me, *devid, tag.as_deref()).await?, None)
        }
        DeviceChoice::Create(spec) => {
            let (paths, made) = create_device(xs, me, spec).await?;
            (paths, Some(made))
        }
    };
    progress(&format!(
        "domain {me}: frontend {} of backend {} (domain {})",
        paths.frontend, paths.backend, paths.backend_domid
    ));
    let outcome = async {
        let mut dev = Dev::new(xs, &paths, opts.timeout).await?;
        dev.play(grants, events, opts, progress).await
    }
    .await;
    if let Some(made) = created {
        let removed = xl::remove_device(xs, &made).await;
        progress("removed the device");
        if let (Ok(_), Err(e)) = (&outcome, removed) {
            return Err(FrontError::Device(e.to_string()));
        }
    }
    outcome
}

/// The device of domain `me` chosen by index, by tag, or the only one.
async fn find_device(
    xs: &Xenstore,
    me: u16,
    devid: Option<u32>,
    tag: Option<&str>,
) -> Result<DevicePaths, FrontError> {
    let dir = format!("/local/domain/{me}/device/9pfs");
    let mut ids: Vec<u32> = match xs.directory(&dir).await {
        Ok(names) => names.iter().filter_map(|n| n.parse().ok()).collect(),
        Err(e) if e.is_enoent() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    ids.sort_unstable();
    let chosen = match (devid, tag) {
        (Some(n), _) => ids
            .contains(&n)
            .then_some(n)
            .ok_or_else(|| FrontError::Device(format!("{dir}/{n} does not exist")))?,
        (None, Some(t)) => {
            let mut found = None;
            for n in &ids {
                if xs
                    .try_read_string(&format!("{dir}/{n}/tag"))
                    .await?
                    .as_deref()
                    == Some(t)
                {
                    found = Some(*n);
                }
            }
            found
                .ok_or_else(|| FrontError::Device(format!("no device under {dir} has tag {t:?}")))?
        }
        (None, None) => match ids.as_slice() {
            [n] => *n,
            [] => {
                return Err(FrontError::Device(format!(
                    "no 9pfs device under {dir}: attach one (envoy-xl attach) or use --create"
                )));
            }
            _ => {
                return Err(FrontError::Device(format!(
                    "several 9pfs devices under {dir} ({ids:?}): choose one with --devid or --tag"
                )));
            }
        },
    };
    let frontend = format!("{dir}/{chosen}");
    let node = |k: &str| format!("{frontend}/{k}");
    let backend = xs
        .try_read_string(&node("backend"))
        .await?
        .ok_or_else(|| FrontError::Device(format!("{frontend} has no backend node")))?;
    let backend_domid = xs
        .try_read_string(&node("backend-id"))
        .await?
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| FrontError::Device(format!("{frontend} has no usable backend-id")))?;
    if xs
        .try_read_string(&format!("{backend}/state"))
        .await?
        .is_none()
    {
        return Err(FrontError::Device(format!(
            "the backend directory {backend} (from {frontend}/backend) has no state"
        )));
    }
    Ok(DevicePaths::new(frontend, backend, backend_domid))
}

/// Write the device's nodes exactly as `envoy-xl attach` (and libxl) does, in one transaction;
/// an index in use is refused.
async fn create_device(
    xs: &Xenstore,
    me: u16,
    spec: &CreateSpec,
) -> Result<(DevicePaths, xl::DevicePaths), FrontError> {
    let domain = xl::Domain {
        domid: u32::from(me),
        name: None,
    };
    let attach = xl::AttachSpec {
        tag: spec.tag.clone(),
        path: spec.path.clone(),
        read_only: false,
        devid: spec.devid,
        backend_domid: u32::from(spec.backend_domid),
        kind: spec.kind,
        quota: xl::Quota::default(),
    };
    let made = xl::create(xs, &domain, &attach)
        .await
        .map_err(|e| FrontError::Device(e.to_string()))?;
    let paths = DevicePaths::new(made.frontend(), made.backend(), spec.backend_domid);
    Ok((paths, made))
}

/// One device's two ends, watched.
struct Dev<'a> {
    xs: &'a Xenstore,
    paths: &'a DevicePaths,
    watch: Watch,
    timeout: Duration,
}

/// The backend's state after Initialised, as far as a mode cares.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Connected,
    Disconnected(XenbusState),
}

impl<'a> Dev<'a> {
    async fn new(
        xs: &'a Xenstore,
        paths: &'a DevicePaths,
        timeout: Duration,
    ) -> Result<Self, XsError> {
        Ok(Dev {
            xs,
            paths,
            watch: xs.watch(&paths.backend).await?,
            timeout,
        })
    }

    async fn read(&self, path: &str) -> Result<Option<String>, XsError> {
        self.xs.try_read_string(path).await
    }

    async fn backend_state(&self) -> Result<Option<XenbusState>, XsError> {
        Ok(self
            .read(&format!("{}/state", self.paths.backend))
            .await?
            .map(|s| XenbusState::parse(&s)))
    }

    async fn frontend_state(&self) -> Result<XenbusState, XsError> {
        Ok(self
            .read(&format!("{}/state", self.paths.frontend))
            .await?
            .map_or(XenbusState::Unknown, |s| XenbusState::parse(&s)))
    }

    async fn set_state(&self, state: XenbusState, progress: Progress<'_>) -> Result<(), XsError> {
        progress(&format!("frontend -> {state}"));
        self.xs
            .write(&format!("{}/state", self.paths.frontend), state.as_node())
            .await
    }

    async fn backend_error(&self) -> Result<Option<String>, XsError> {
        self.read(&self.paths.error_node).await
    }

    /// " (backend error: ...)" when there is one.
    async fn error_suffix(&self) -> String {
        match self.backend_error().await {
            Ok(Some(e)) => format!(" (backend error: {e})"),
            _ => String::new(),
        }
    }

    /// Wait (bounded) until the backend's state satisfies `accept`.
    async fn wait_backend(
        &mut self,
        what: &str,
        accept: impl Fn(XenbusState) -> bool,
    ) -> Result<XenbusState, FrontError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let Some(state) = self.backend_state().await? else {
                return Err(FrontError::Device(format!(
                    "the backend directory {} was removed while waiting for {what}",
                    self.paths.backend
                )));
            };
            if accept(state) {
                return Ok(state);
            }
            match tokio::time::timeout_at(deadline, self.watch.next()).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(FrontError::Backend(format!(
                        "the xenstore connection ended while waiting for {what}"
                    )));
                }
                Err(_) => {
                    return Err(FrontError::Backend(format!(
                        "no {what} within {:?}: the backend is at {state}{}",
                        self.timeout,
                        self.error_suffix().await
                    )));
                }
            }
        }
    }

    /// Bring both ends to a fresh handshake: the backend at InitWait, the frontend at
    /// Initialising — closing a connection a previous run left behind, or restarting a device
    /// the backend closed (as a reloaded Linux driver does).
    async fn fresh_start(&mut self, progress: Progress<'_>) -> Result<(), FrontError> {
        use XenbusState::*;
        let deadline = Instant::now() + self.timeout;
        loop {
            let backend = self.backend_state().await?.unwrap_or(Unknown);
            let frontend = self.frontend_state().await?;
            let want = match backend {
                InitWait => Initialising,
                Connected => Closing,
                Closing => Closed,
                _ => Initialising,
            };
            if frontend != want {
                self.set_state(want, progress).await?;
            }
            if backend == InitWait {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, self.watch.next()).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(FrontError::Backend("the xenstore connection ended".into()));
                }
                Err(_) => {
                    return Err(FrontError::Backend(format!(
                        "the backend did not reach InitWait (2) within {:?}: it is at {backend}{} \
                         (is a 9pfs backend such as envoyd --xen serving domain {}?)",
                        self.timeout,
                        self.error_suffix().await,
                        self.paths.backend_domid
                    )));
                }
            }
        }
    }

    /// The backend's offer: (max-rings, max-ring-page-order), after checking `versions`.
    async fn features(&self) -> Result<(u32, u32), FrontError> {
        let b = &self.paths.backend;
        let versions = self
            .read(&format!("{b}/versions"))
            .await?
            .unwrap_or_default();
        if !versions.split(',').any(|v| v.trim() == "1") {
            return Err(FrontError::Backend(format!(
                "the backend offers versions {versions:?}, not 1"
            )));
        }
        let number = async |key: &str| -> Result<u32, FrontError> {
            let text = self.read(&format!("{b}/{key}")).await?.unwrap_or_default();
            text.trim()
                .parse()
                .map_err(|_| FrontError::Backend(format!("the backend's {key} is {text:?}")))
        };
        Ok((
            number("max-rings").await?,
            number("max-ring-page-order").await?,
        ))
    }

    /// Publish the rings and go Initialised, in one transaction (as Linux does).
    async fn publish(&self, refs: &[(u32, u32)], progress: Progress<'_>) -> Result<(), XsError> {
        let f = self.paths.frontend.clone();
        progress(&format!(
            "publishing {} rings (ring-ref, event-channel: {refs:?}), frontend -> Initialised (3)",
            refs.len()
        ));
        self.xs
            .transaction(async |tx| {
                tx.write(&format!("{f}/version"), "1").await?;
                tx.write(&format!("{f}/num-rings"), refs.len().to_string())
                    .await?;
                for (n, (intf_ref, port)) in refs.iter().enumerate() {
                    tx.write(&format!("{f}/ring-ref{n}"), intf_ref.to_string())
                        .await?;
                    tx.write(&format!("{f}/event-channel-{n}"), port.to_string())
                        .await?;
                }
                tx.write(&format!("{f}/state"), XenbusState::Initialised.as_node())
                    .await
            })
            .await
    }

    /// Wait for the backend to connect the rings or to give up on them.
    async fn answer(&mut self) -> Result<Answer, FrontError> {
        let state = self
            .wait_backend("answer to the published rings", |s| {
                s == XenbusState::Connected || s.is_closing()
            })
            .await?;
        Ok(if state == XenbusState::Connected {
            Answer::Connected
        } else {
            Answer::Disconnected(state)
        })
    }

    /// The verdict of a hostile mode once the backend left Connected or refused: Closing (or
    /// Closed) with a reason is a pass.
    async fn disconnect_verdict(&self, mode: Mode, state: XenbusState) -> Result<Verdict, XsError> {
        Ok(match self.backend_error().await? {
            Some(reason) if !reason.trim().is_empty() => Verdict {
                mode,
                passed: true,
                detail: format!("backend {}: {reason}", state_name(state)),
            },
            _ => Verdict {
                mode,
                passed: false,
                detail: format!(
                    "the backend went {state} without a reason in {}",
                    self.paths.error_node
                ),
            },
        })
    }

    /// Close like Linux's frontend: Closing while the backend is connected, then Closed once
    /// it is closing; wait for the backend's Closed.
    async fn close(&mut self, progress: Progress<'_>) -> Result<(), FrontError> {
        if self.backend_state().await? == Some(XenbusState::Connected) {
            self.set_state(XenbusState::Closing, progress).await?;
            self.wait_backend("Closing (5) from the backend", XenbusState::is_closing)
                .await?;
        }
        self.set_state(XenbusState::Closed, progress).await?;
        self.wait_backend("Closed (6) from the backend", |s| s == XenbusState::Closed)
            .await?;
        progress("backend Closed (6)");
        Ok(())
    }

    /// The whole run on this device.
    async fn play<G: GrantSharer, E: UnboundPorts>(
        &mut self,
        grants: &G,
        events: &E,
        opts: &Options,
        progress: Progress<'_>,
    ) -> Result<Verdict, FrontError> {
        let mode = opts.mode;
        // A stale report from an earlier run must not pass for this one's (dom0 may remove
        // it; elsewhere this fails harmlessly).
        let _ = self.xs.rm(&self.paths.error_node).await;
        self.fresh_start(progress).await?;
        let (max_rings, max_order) = self.features().await?;
        progress(&format!(
            "backend InitWait (2): max-rings {max_rings}, max-ring-page-order {max_order}"
        ));
        if opts.rings > max_rings || opts.order > max_order {
            return Err(FrontError::Backend(format!(
                "the backend offers at most {max_rings} rings of order {max_order}; asked for \
                 {} of order {} (see --rings, --order)",
                opts.rings, opts.order
            )));
        }
        let rings = (0..opts.rings)
            .map(|_| FrontendRing::setup(grants, events, self.paths.backend_domid, opts.order))
            .collect::<Result<Vec<_>, _>>()?;
        let mut refs: Vec<(u32, u32)> = rings.iter().map(|r| (r.intf_ref(), r.port())).collect();
        match mode {
            Mode::BadOrder => {
                progress(&format!("ring 0's intf page: ring_order {BAD_ORDER}"));
                rings[0].set_ring_order(BAD_ORDER);
            }
            Mode::BogusRef => {
                progress(&format!("ring 1's ring-ref: {BOGUS_REF} (never granted)"));
                refs[1].0 = BOGUS_REF;
            }
            _ => {}
        }
        self.publish(&refs, progress).await?;
        let answer = self.answer().await?;
        progress(&format!("backend answered: {answer:?}"));
        let verdict = match (mode, answer) {
            (m, Answer::Disconnected(state)) if m.refused_at_setup() => {
                self.disconnect_verdict(m, state).await?
            }
            (m, Answer::Connected) if m.refused_at_setup() => Verdict {
                mode: m,
                passed: false,
                detail: match m {
                    Mode::BadOrder => format!(
                        "the backend connected a ring whose intf page announces order {BAD_ORDER}"
                    ),
                    _ => format!("the backend connected ring-ref {BOGUS_REF}, never granted"),
                },
            },
            (_, Answer::Disconnected(state)) => {
                return Err(FrontError::Backend(format!(
                    "the backend refused a valid setup ({} rings of order {}): it went {state}{}",
                    opts.rings,
                    opts.order,
                    self.error_suffix().await
                )));
            }
            (Mode::Good, Answer::Connected) => {
                self.set_state(XenbusState::Connected, progress).await?;
                return self.good(rings, opts, progress).await;
            }
            (m, Answer::Connected) => {
                self.set_state(XenbusState::Connected, progress).await?;
                self.corrupt(m, &rings, progress)?;
                match self
                    .wait_backend("disconnect by the backend", XenbusState::is_closing)
                    .await
                {
                    Ok(state) => self.disconnect_verdict(m, state).await?,
                    Err(FrontError::Backend(why)) => Verdict {
                        mode: m,
                        passed: false,
                        detail: why,
                    },
                    Err(e) => return Err(e),
                }
            }
        };
        // Hostile modes end here: answer the backend's Closing, then let the rings go.
        if let Err(e) = self.close(progress).await
            && verdict.passed
        {
            return Ok(Verdict {
                mode,
                passed: false,
                detail: format!("{}, but then: {e}", verdict.detail),
            });
        }
        drop(rings);
        Ok(verdict)
    }

    /// Break the protocol on ring 0 of a connected device, and ring the backend.
    fn corrupt<S: SharedGrants, P: EventChannel>(
        &self,
        mode: Mode,
        rings: &[FrontendRing<S, P>],
        progress: Progress<'_>,
    ) -> Result<(), FrontError> {
        let ring = &rings[0];
        match mode {
            Mode::BadIndexes => {
                let cons = ring.peek_index(OUT_CONS);
                progress(&format!(
                    "ring 0: out_prod = out_cons + {BAD_QUEUED} ({} bytes per direction)",
                    ring.size()
                ));
                ring.poke_index(OUT_PROD, cons.wrapping_add(BAD_QUEUED));
            }
            Mode::Oversize => {
                let claimed = 2 * ring.size() as u32;
                progress(&format!(
                    "ring 0: a request header claiming {claimed} bytes in a {}-byte ring",
                    ring.size()
                ));
                let mut header = [0u8; 7];
                header[..4].copy_from_slice(&claimed.to_le_bytes());
                header[4] = 100; // Tversion
                header[5..7].copy_from_slice(&u16::MAX.to_le_bytes());
                ring.send_partial(&header, header.len());
            }
            _ => unreachable!("only modes that corrupt a connected ring"),
        }
        ring.events()
            .notify()
            .map_err(|e| FrontError::Backend(format!("notifying the backend: {e}")))
    }

    /// The good mode once connected: read the file, close, judge.
    async fn good<S: SharedGrants, P: EventChannel + 'static>(
        &mut self,
        rings: Vec<FrontendRing<S, P>>,
        opts: &Options,
        progress: Progress<'_>,
    ) -> Result<Verdict, FrontError> {
        let file = opts
            .file
            .as_deref()
            .expect("validated: good mode has a file");
        // Linux's msize for a ring: half of it, so a reply never waits for the whole ring.
        let msize = (ring_size(opts.order) / 2) as u32;
        let (stream, mut model) = LinuxFrontend::spawn(rings, msize)
            .map_err(|e| FrontError::NineP(format!("starting the ring tasks: {e}")))?;
        let read =
            tokio::time::timeout(opts.timeout, read_file(stream, msize, file, progress)).await;
        let read = match read {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", opts.timeout)),
        };
        let data = match read {
            Ok(data) => data,
            Err(e) => {
                let why = format!("{e}{}", self.error_suffix().await);
                let _ = self.close(progress).await;
                return Err(FrontError::NineP(why));
            }
        };
        // Close while the rings are still shared, as Linux does; then let them go.
        self.close(progress).await?;
        if tokio::time::timeout(opts.timeout, model.join())
            .await
            .is_err()
        {
            return Err(FrontError::NineP("the ring tasks did not stop".into()));
        }
        drop(model);
        if let Some(reason) = self.backend_error().await? {
            return Ok(Verdict {
                mode: Mode::Good,
                passed: false,
                detail: format!("the backend reported an error: {reason}"),
            });
        }
        let md5 = hex(&Md5::digest(&data));
        let detail = format!("{file}: len={} md5={md5}", data.len());
        Ok(match &opts.expect_md5 {
            Some(want) if !want.eq_ignore_ascii_case(&md5) => Verdict {
                mode: Mode::Good,
                passed: false,
                detail: format!("{detail}, expected md5 {want}"),
            },
            _ => Verdict {
                mode: Mode::Good,
                passed: true,
                detail,
            },
        })
    }
}

/// Tversion, Tattach, Twalk, Tlopen, Tread (until end of file), Tclunk.
async fn read_file(
    stream: tokio::io::DuplexStream,
    msize: u32,
    file: &str,
    progress: Progress<'_>,
) -> Result<Vec<u8>, String> {
    let client = Client::over_stream(stream, Dialect::P9P2000L, msize)
        .await
        .map_err(|e| format!("Tversion: {e}"))?;
    progress(&format!("Rversion: msize {}", client.msize()));
    client
        .attach(0, "root", "", 0)
        .await
        .map_err(|e| format!("Tattach: {e}"))?;
    client
        .walk_path(0, 1, file)
        .await
        .map_err(|e| format!("Twalk to {file:?}: {e}"))?;
    client
        .lopen(1, P9_DOTL_RDONLY)
        .await
        .map_err(|e| format!("Tlopen of {file:?}: {e}"))?;
    let data = client
        .read(1, 0, MAX_READ)
        .await
        .map_err(|e| format!("Tread of {file:?}: {e}"))?;
    progress(&format!("read {} bytes of {file}", data.len()));
    for fid in [1, 0] {
        client
            .clunk(fid)
            .await
            .map_err(|e| format!("Tclunk: {e}"))?;
    }
    client.close().await;
    Ok(data.to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// "Closing" for Closing (5), "Closed" for Closed (6).
fn state_name(state: XenbusState) -> String {
    format!("{state:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>(), Ok(m));
            assert_eq!(m.is_hostile(), m != Mode::Good);
        }
        assert_eq!(
            "nice".parse::<Mode>().unwrap_err(),
            "unknown mode \"nice\": one of good, bad-order, bogus-ref, bad-indexes, oversize"
        );
    }

    #[test]
    fn verdicts_are_one_line() {
        let v = Verdict {
            mode: Mode::BadOrder,
            passed: true,
            detail: "backend Closing: ring 0: order 12\nforged".into(),
        };
        assert_eq!(
            v.to_string(),
            "ENVOY-FE: PASS bad-order (backend Closing: ring 0: order 12\\nforged)"
        );
        let v = Verdict {
            mode: Mode::Oversize,
            passed: false,
            detail: "no disconnect".into(),
        };
        assert_eq!(v.to_string(), "ENVOY-FE: FAIL oversize: no disconnect");
    }

    #[test]
    fn error_nodes_are_where_the_backend_writes_them() {
        let p = DevicePaths::new(
            "/local/domain/0/device/9pfs/3".into(),
            "/local/domain/0/backend/9pfs/0/3".into(),
            0,
        );
        assert_eq!(p.error_node, "/local/domain/0/error/backend/9pfs/0/3/error");
    }

    #[test]
    fn options_are_checked() {
        let create = |path: &str| {
            DeviceChoice::Create(CreateSpec {
                devid: None,
                tag: "t".into(),
                path: path.into(),
                backend_domid: 0,
                kind: Kind::Qemu,
            })
        };
        let mut o = Options::new(Mode::Good, create("/srv"));
        assert!(o.validate().unwrap_err().to_string().contains("--file"));
        o.file = Some("a/../../etc/passwd".into());
        assert!(o.validate().is_err());
        o.file = Some("dir/file".into());
        o.validate().unwrap();
        o.expect_md5 = Some("xyz".into());
        assert!(o.validate().is_err());
        let mut o = Options::new(Mode::BogusRef, create("srv"));
        assert!(o.validate().unwrap_err().to_string().contains("absolute"));
        o.device = create("/srv");
        o.rings = 1;
        assert!(o.validate().unwrap_err().to_string().contains("ring 1"));
        o.rings = 2;
        o.order = 10;
        assert!(o.validate().is_err());
        assert_eq!(
            hex(&Md5::digest(b"abc")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }
}
