//! `attach`: create a 9pfs device for a running guest, and follow its handshake to Connected.
//!
//! The nodes and permissions are libxl's (see the module documentation of [`crate::xl`]), plus
//! three backend features and, with `--ro`, [`READ_ONLY_NODE`]:
//!
//! - `versions = 1`, `max-rings = 8`, `max-ring-page-order = 9` (envoyd's
//!   [`BackendLimits`]) are normally the backend's to publish when it goes to InitWait. Linux
//!   frontends older than the early-2023 change "9p/xen: fix connection sequence" (Linux 6.3,
//!   backported to stable kernels) read them in their *probe*, which runs as soon as the
//!   frontend directory appears, and fail the device if they are missing (no `versions`
//!   containing 1, fewer than 2 rings, too small an order) — under libxl that works only when
//!   the backend happens to be quicker than the guest. Writing them in
//!   the same transaction as the frontend directory makes them present at probe time whatever
//!   backend runs; the backend rewrites the same values with InitWait, and newer frontends read
//!   them only then.
//!
//! The devid defaults to the lowest index free in all three places a 9pfs device of this guest
//! can live (its `device/9pfs/`, the backend domain's `backend/<kind>/<domid>/` of both kinds,
//! `/libxl/<domid>/device/9pfs/`), so a half-removed device is never reused by accident.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use envoy_xen::device::BackendLimits;
use envoy_xen::xenbus::XenbusState;
use envoy_xen::xenstore::{Access, Perm, Xenstore};
use tokio::time::Instant;

use super::{
    DevicePaths, Domain, Ends, Kind, READ_ONLY_NODE, XlError, devids_under, domain_exists,
    frontend_path, home, in_transaction, libxl_path, printable, remove_and_prune,
};

/// The quota nodes of a `xen_9pfs` device (xl's `max-space`, `max-files`, `max-open-files`,
/// `auto-delete`; 0 means unlimited). libxl refuses them for `type=qemu`, and so does
/// [`AttachSpec::validate`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// `max-space`, MiB.
    pub max_space_mib: u64,
    /// `max-files`.
    pub max_files: u64,
    /// `max-open-files`.
    pub max_open_files: u64,
    /// `auto-delete`: remove the oldest files when `max-space` is reached.
    pub auto_delete: bool,
}

impl Quota {
    fn is_set(&self) -> bool {
        *self != Quota::default()
    }
}

/// What to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachSpec {
    /// The mount tag the guest names (`mount -t 9p ... TAG /mnt`).
    pub tag: String,
    /// The directory to share, an absolute path in the backend domain.
    pub path: String,
    /// Serve it read-only ([`READ_ONLY_NODE`], honoured by envoyd).
    pub read_only: bool,
    /// The device index; `None`: the lowest free one.
    pub devid: Option<u32>,
    /// The domain serving it (dom0 by default).
    pub backend_domid: u32,
    /// The backend kind.
    pub kind: Kind,
    /// Quotas (`xen_9pfs` only).
    pub quota: Quota,
}

impl AttachSpec {
    /// Check everything that needs neither xenstore nor the file system.
    pub fn validate(&self) -> Result<(), XlError> {
        let invalid = |m: String| Err(XlError::Invalid(m));
        if self.tag.is_empty() {
            return invalid("the tag is empty: give --tag, the name the guest mounts".into());
        }
        if self
            .tag
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return invalid(format!(
                "tag {:?} contains spaces or control characters: the guest could not name it in mount",
                printable(&self.tag)
            ));
        }
        if self.tag.len() > 255 {
            return invalid(format!(
                "the tag is {} bytes long, at most 255 are allowed",
                self.tag.len()
            ));
        }
        if !self.path.starts_with('/') {
            return invalid(format!(
                "path {:?} is not absolute: give the directory to share as an absolute path",
                printable(&self.path)
            ));
        }
        if self.kind == Kind::Qemu && self.quota.is_set() {
            return invalid(
                "--max-space, --max-files, --max-open-files and --auto-delete need --kind xen_9pfs \
                 (libxl refuses them for type=qemu too)"
                    .into(),
            );
        }
        if let Some(devid) = self.devid.filter(|&d| d > i32::MAX as u32) {
            return invalid(format!(
                "device index {devid} is out of range (at most {})",
                i32::MAX
            ));
        }
        Ok(())
    }

    /// The backend entries after `frontend`, in libxl's order: the part libxl also copies into
    /// its `/libxl` record.
    fn toolstack_entries(&self, domid: u32) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("frontend-id", domid.to_string()),
            ("online", "1".to_owned()),
            ("state", XenbusState::Initialising.as_node()),
            ("path", self.path.clone()),
            ("security_model", "none".to_owned()),
        ];
        if self.kind == Kind::Xen9pfsd {
            v.extend([
                ("max-space", self.quota.max_space_mib.to_string()),
                ("max-files", self.quota.max_files.to_string()),
                ("max-open-files", self.quota.max_open_files.to_string()),
                ("auto-delete", u8::from(self.quota.auto_delete).to_string()),
            ]);
        }
        if self.read_only {
            v.push((READ_ONLY_NODE, "1".to_owned()));
        }
        v
    }
}

/// Check, on this host, that `path` is an existing directory (for a backend in this domain).
pub fn check_local_directory(path: &str) -> Result<(), XlError> {
    match std::fs::metadata(Path::new(path)) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(XlError::Invalid(format!(
            "path {:?} is not a directory",
            printable(path)
        ))),
        Err(e) => Err(XlError::Invalid(format!(
            "path {:?} cannot be shared: {e}",
            printable(path)
        ))),
    }
}

/// Create the device: check, choose the devid and write every node in one transaction
/// (retried on conflict). Any refusal leaves xenstore untouched. A guest is never its own
/// backend here (that is a test setup: see [`create`]).
pub async fn attach(
    xs: &Xenstore,
    domain: &Domain,
    spec: &AttachSpec,
) -> Result<DevicePaths, XlError> {
    spec.validate()?;
    if domain.domid == spec.backend_domid {
        return Err(XlError::Invalid(format!(
            "{domain} cannot be its own 9pfs backend"
        )));
    }
    create(xs, domain, spec).await
}

/// [`attach`] without its refusal of a domain serving itself: what `envoy-xen-frontend
/// --create` uses to play a frontend in the backend's own domain.
pub async fn create(
    xs: &Xenstore,
    domain: &Domain,
    spec: &AttachSpec,
) -> Result<DevicePaths, XlError> {
    spec.validate()?;
    let (d, b) = (domain.domid, spec.backend_domid);
    let limits = BackendLimits::default();
    in_transaction(xs, async |tx| {
        if !domain_exists(tx, d).await? {
            return Err(XlError::NoDomain(d.to_string()));
        }
        if !domain_exists(tx, b).await? {
            return Err(XlError::Invalid(format!(
                "backend domain {b} does not exist"
            )));
        }
        // Every index in use, with a node that shows it.
        let frontends = format!("{}/device/9pfs", home(d));
        let mut used = BTreeMap::new();
        for kind in Kind::ALL {
            let dir = format!("{}/backend/{kind}/{d}", home(b));
            for n in devids_under(tx, &dir).await? {
                used.insert(n, format!("{dir}/{n}"));
            }
        }
        for n in devids_under(tx, &format!("/libxl/{d}/device/9pfs")).await? {
            used.insert(n, libxl_path(d, n));
        }
        for n in devids_under(tx, &frontends).await? {
            let f = frontend_path(d, n);
            if tx.try_read_string(&format!("{f}/tag")).await?.as_deref() == Some(&spec.tag) {
                return Err(XlError::TagInUse {
                    domain: domain.to_string(),
                    tag: format!("{:?}", printable(&spec.tag)),
                    devid: n,
                });
            }
            used.insert(n, f);
        }
        let devid = match spec.devid {
            Some(n) => {
                if let Some(path) = used.get(&n) {
                    return Err(XlError::DevidInUse {
                        domain: domain.to_string(),
                        devid: n,
                        path: path.clone(),
                    });
                }
                n
            }
            None => (0..)
                .find(|n| !used.contains_key(n))
                .expect("fewer than 2^32 devices"),
        };
        let paths = DevicePaths {
            domid: d,
            devid,
            backend_domid: b,
            kind: spec.kind,
        };
        let (fe, be, lx) = (paths.frontend(), paths.backend(), paths.libxl());
        let toolstack = spec.toolstack_entries(d);

        // libxl's record first (libxl__device_generic_add's order).
        tx.write(&format!("{lx}/frontend"), &fe).await?;
        tx.write(&format!("{lx}/backend"), &be).await?;

        // The frontend: owned by the guest, readable by the backend; the nodes inherit it.
        tx.mkdir(&fe).await?;
        tx.set_perms(
            &fe,
            &[Perm::new(d, Access::None), Perm::new(b, Access::Read)],
        )
        .await?;
        tx.write(&format!("{fe}/backend"), &be).await?;
        tx.write(&format!("{fe}/backend-id"), b.to_string()).await?;
        tx.write(&format!("{fe}/state"), XenbusState::Initialising.as_node())
            .await?;
        tx.write(&format!("{fe}/tag"), &spec.tag).await?;

        // The backend: owned by the backend domain, readable by the guest.
        tx.mkdir(&be).await?;
        tx.set_perms(
            &be,
            &[Perm::new(b, Access::None), Perm::new(d, Access::Read)],
        )
        .await?;
        tx.write(&format!("{be}/frontend"), &fe).await?;
        for (key, value) in &toolstack {
            tx.write(&format!("{be}/{key}"), value).await?;
        }
        // Present at probe time for old Linux frontends (see the module documentation).
        tx.write(&format!("{be}/versions"), "1").await?;
        tx.write(&format!("{be}/max-rings"), limits.max_rings.to_string())
            .await?;
        tx.write(
            &format!("{be}/max-ring-page-order"),
            limits.max_ring_order.to_string(),
        )
        .await?;

        // libxl's copy of the toolstack's backend entries ("so we need not trust the backend").
        for (key, value) in &toolstack {
            tx.write(&format!("{lx}/{key}"), value).await?;
        }
        // A stale error report of an earlier device at these paths would be misleading.
        remove_and_prune(tx, &paths.backend_error_dir(), &home(b)).await?;
        Ok(paths)
    })
    .await
}

/// Wait until the guest's frontend is Connected, for at most `timeout`. Fails at once if
/// either end gives up (Closing, Closed, directory removed), and on timeout says which side is
/// stuck at which state, with the error nodes' texts.
pub async fn wait_connected(
    xs: &Xenstore,
    domain: &Domain,
    paths: &DevicePaths,
    timeout: Duration,
) -> Result<(), XlError> {
    let mut backend = xs.watch(&paths.backend()).await?;
    let mut frontend = xs.watch(&paths.frontend()).await?;
    let deadline = Instant::now() + timeout;
    let what = format!("9pfs device {} of {domain}", paths.devid);
    loop {
        let ends = Ends::read(xs, paths).await?;
        if ends.frontend == Some(XenbusState::Connected) {
            return Ok(());
        }
        if ends.gave_up() {
            return Err(XlError::Stuck(format!(
                "{what} did not connect: {}",
                ends.connect_problem(paths)
            )));
        }
        let lost = tokio::select! {
            e = backend.next() => e.is_none(),
            e = frontend.next() => e.is_none(),
            _ = tokio::time::sleep_until(deadline) => {
                let ends = Ends::read(xs, paths).await?;
                if ends.frontend == Some(XenbusState::Connected) {
                    return Ok(());
                }
                return Err(XlError::Stuck(format!(
                    "timed out after {} waiting for {what} to connect: {}; the device stays \
                     configured (envoy-xl detach removes it)",
                    seconds(timeout),
                    ends.connect_problem(paths)
                )));
            }
        };
        if lost {
            return Err(XlError::Stuck(format!(
                "the xenstore connection ended while waiting for {what}"
            )));
        }
    }
}

/// `1s`, `1.5s`.
pub(super) fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AttachSpec {
        AttachSpec {
            tag: "share".into(),
            path: "/srv".into(),
            read_only: false,
            devid: None,
            backend_domid: 0,
            kind: Kind::Qemu,
            quota: Quota::default(),
        }
    }

    #[test]
    fn validation() {
        assert!(spec().validate().is_ok());
        let refused = |s: AttachSpec, want: &str| {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        refused(
            AttachSpec {
                tag: "".into(),
                ..spec()
            },
            "tag is empty",
        );
        refused(
            AttachSpec {
                tag: "a b".into(),
                ..spec()
            },
            "spaces",
        );
        refused(
            AttachSpec {
                tag: "a\n".into(),
                ..spec()
            },
            "\"a\\\\n\"",
        );
        refused(
            AttachSpec {
                path: "srv".into(),
                ..spec()
            },
            "not absolute",
        );
        let quota = Quota {
            max_files: 3,
            ..Quota::default()
        };
        refused(AttachSpec { quota, ..spec() }, "need --kind xen_9pfs");
        assert!(
            AttachSpec {
                quota,
                kind: Kind::Xen9pfsd,
                ..spec()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn toolstack_entries_follow_libxl() {
        let keys = |s: &AttachSpec| -> Vec<&str> {
            s.toolstack_entries(5).iter().map(|(k, _)| *k).collect()
        };
        assert_eq!(
            keys(&spec()),
            ["frontend-id", "online", "state", "path", "security_model"]
        );
        let x = AttachSpec {
            kind: Kind::Xen9pfsd,
            read_only: true,
            ..spec()
        };
        assert_eq!(
            keys(&x),
            [
                "frontend-id",
                "online",
                "state",
                "path",
                "security_model",
                "max-space",
                "max-files",
                "max-open-files",
                "auto-delete",
                READ_ONLY_NODE
            ]
        );
    }

    #[test]
    fn local_directory_check() {
        assert!(check_local_directory("/").is_ok());
        let e = check_local_directory("/nonexistent-envoy-xl").unwrap_err();
        assert!(e.to_string().contains("cannot be shared"), "{e}");
        let e = check_local_directory("/proc/self/status").unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
