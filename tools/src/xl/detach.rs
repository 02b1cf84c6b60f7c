//! `detach`: retire a device the way libxl's device removal does.
//!
//! 1. In one transaction: backend `online = 0` and, unless it is already Closed, backend
//!    `state = 5` (Closing) — the signal a Linux frontend answers by closing (it does so even
//!    with the share mounted). A missing backend directory skips this step, as in libxl.
//! 2. Wait (bounded) until the frontend is Closed or its directory is gone. A frontend that
//!    never got past Initialising has granted nothing, so there is nothing to wait for.
//! 3. In one transaction: remove the frontend directory, the backend directory, libxl's record
//!    and the error reports, pruning parents left empty (`libxl__xs_path_cleanup`).
//!
//! On timeout libxl removes the device anyway; `envoy-xl` instead stops with the device left
//! Closing and says which state the guest is in: removing the backend under a guest that still
//! has the rings can leave its processes hung in the 9p client, so that is the admin's call
//! (`--force` skips steps 1 and 2).
//!
//! Which backend belongs to a device is taken from libxl's record (writable by dom0 only). A
//! device without one (made by another toolstack) is accepted through the frontend's `backend`
//! node only if that names a 9pfs backend directory of this very device whose `frontend` node
//! points back, so a guest cannot steer a removal to somebody else's nodes.

use std::time::Duration;

use envoy_xen::xenbus::XenbusState;
use envoy_xen::xenstore::{Transaction, Xenstore};
use tokio::time::Instant;

use super::attach::seconds;
use super::{
    DevicePaths, Domain, Ends, Kind, XlError, devids_under, frontend_path, home, in_transaction,
    libxl_path, printable, read_only, read_state, remove_and_prune,
};

/// Which device of a guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The device whose frontend has this tag.
    Tag(String),
    /// The device with this index.
    Devid(u32),
}

impl Selector {
    fn describe(&self) -> String {
        match self {
            Selector::Tag(t) => format!("with tag {:?}", printable(t)),
            Selector::Devid(n) => n.to_string(),
        }
    }
}

/// Every device index the guest has a frontend directory or a libxl record for.
pub(super) async fn devids_of(tx: &Transaction, domid: u32) -> Result<Vec<u32>, XlError> {
    let mut all = devids_under(tx, &format!("{}/device/9pfs", home(domid))).await?;
    all.extend(devids_under(tx, &format!("/libxl/{domid}/device/9pfs")).await?);
    all.sort_unstable();
    all.dedup();
    Ok(all)
}

/// Where device `devid` of `domid` has its backend (see the module documentation for which
/// sources are trusted); `None` if no trustworthy backend directory is known.
pub(super) async fn locate(
    tx: &Transaction,
    domid: u32,
    devid: u32,
) -> Result<Option<DevicePaths>, XlError> {
    let frontend = frontend_path(domid, devid);
    let record = format!("{}/backend", libxl_path(domid, devid));
    if let Some(p) = tx.try_read_string(&record).await?
        && let Some(paths) = DevicePaths::parse_backend(&p, domid, devid)
    {
        return Ok(Some(paths));
    }
    let points_back = async |paths: &DevicePaths| -> Result<bool, XlError> {
        let back = tx
            .try_read_string(&format!("{}/frontend", paths.backend()))
            .await?;
        Ok(back.as_deref() == Some(frontend.as_str()))
    };
    if let Some(p) = tx.try_read_string(&format!("{frontend}/backend")).await?
        && let Some(paths) = DevicePaths::parse_backend(&p, domid, devid)
        && points_back(&paths).await?
    {
        return Ok(Some(paths));
    }
    // No record and no usable pointer: a dom0 backend of either kind that names this frontend.
    for kind in Kind::ALL {
        let paths = DevicePaths {
            domid,
            devid,
            backend_domid: 0,
            kind,
        };
        if points_back(&paths).await? {
            return Ok(Some(paths));
        }
    }
    Ok(None)
}

/// Find the device `which` of `domain` and its backend.
pub async fn find_device(
    xs: &Xenstore,
    domain: &Domain,
    which: &Selector,
) -> Result<DevicePaths, XlError> {
    let d = domain.domid;
    let not_found = || XlError::NoDevice {
        domain: domain.to_string(),
        what: which.describe(),
    };
    read_only(xs, async |tx| {
        let devids = devids_of(tx, d).await?;
        let devid = match which {
            Selector::Devid(n) => *devids.iter().find(|&&x| x == *n).ok_or_else(not_found)?,
            Selector::Tag(tag) => {
                let mut matching = Vec::new();
                for &n in &devids {
                    let t = tx
                        .try_read_string(&format!("{}/tag", frontend_path(d, n)))
                        .await?;
                    if t.as_deref() == Some(tag.as_str()) {
                        matching.push(n);
                    }
                }
                match matching.as_slice() {
                    [] => return Err(not_found()),
                    [n] => *n,
                    _ => {
                        return Err(XlError::Invalid(format!(
                            "{domain} has several 9pfs devices {} ({matching:?}): use --devid",
                            which.describe()
                        )));
                    }
                }
            }
        };
        locate(tx, d, devid).await?.ok_or_else(|| {
            XlError::Invalid(format!(
                "9pfs device {devid} of {domain} has no backend directory envoy-xl can trust \
                 (no /libxl record, and the frontend's backend node does not name a 9pfs backend \
                 of this device that points back); remove its nodes with xenstore-rm"
            ))
        })
    })
    .await
}

/// Step 1: tell both ends the device is going (backend `online = 0`, `state = Closing`).
/// Returns the frontend's state at that moment; `None` if the backend directory is already
/// gone (nothing was written then).
pub async fn begin_close(
    xs: &Xenstore,
    paths: &DevicePaths,
) -> Result<Option<Option<XenbusState>>, XlError> {
    let be = paths.backend();
    in_transaction(xs, async |tx| {
        let Some(state) = read_state(tx, &be).await? else {
            return Ok(None);
        };
        tx.write(&format!("{be}/online"), "0").await?;
        if state != XenbusState::Closed {
            tx.write(&format!("{be}/state"), XenbusState::Closing.as_node())
                .await?;
        }
        Ok(Some(read_state(tx, &paths.frontend()).await?))
    })
    .await
}

/// A frontend in this state holds nothing the backend could still be using.
fn frontend_done(state: Option<XenbusState>) -> bool {
    matches!(
        state,
        None | Some(XenbusState::Closed | XenbusState::Initialising | XenbusState::Unknown)
    )
}

/// Step 2: wait until the frontend is Closed, gone, or back at Initialising, for at most
/// `timeout`.
pub async fn wait_closed(
    xs: &Xenstore,
    domain: &Domain,
    paths: &DevicePaths,
    timeout: Duration,
) -> Result<(), XlError> {
    let mut watch = xs.watch(&paths.frontend()).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let ends = Ends::read(xs, paths).await?;
        if frontend_done(ends.frontend) {
            return Ok(());
        }
        tokio::select! {
            e = watch.next() => if e.is_none() {
                return Err(XlError::Stuck(format!(
                    "the xenstore connection ended while waiting for 9pfs device {} of {domain} to close",
                    paths.devid
                )));
            },
            _ = tokio::time::sleep_until(deadline) => {
                let ends = Ends::read(xs, paths).await?;
                if frontend_done(ends.frontend) {
                    return Ok(());
                }
                let errors = match ends.errors() {
                    e if e.is_empty() => e,
                    e => format!("; {e}"),
                };
                return Err(XlError::Stuck(format!(
                    "timed out after {} waiting for 9pfs device {} of {domain} to close: the \
                     guest's frontend is still at {} (is the guest running?){errors}; the device \
                     is left Closing, `envoy-xl detach --force` removes it anyway",
                    seconds(timeout),
                    paths.devid,
                    ends.frontend.map_or("gone".to_owned(), |s| s.to_string()),
                )));
            }
        }
    }
}

/// Step 3: remove the frontend and backend directories, libxl's record and the error reports
/// in one transaction, pruning parents left empty.
pub async fn remove_device(xs: &Xenstore, paths: &DevicePaths) -> Result<(), XlError> {
    let (d, b) = (paths.domid, paths.backend_domid);
    in_transaction(xs, async |tx| {
        remove_and_prune(tx, &paths.frontend(), &format!("{}/device", home(d))).await?;
        remove_and_prune(tx, &paths.backend(), &format!("{}/backend", home(b))).await?;
        remove_and_prune(tx, &paths.libxl(), "/libxl").await?;
        remove_and_prune(tx, &paths.backend_error_dir(), &home(b)).await?;
        remove_and_prune(tx, &paths.frontend_error_dir(), &home(d)).await?;
        Ok(())
    })
    .await
}

/// Detach device `which` of `domain`: steps 1–3 of the module documentation, waiting at most
/// `wait` for the guest; `None` (`--force`) removes at once. Returns the device removed.
pub async fn detach(
    xs: &Xenstore,
    domain: &Domain,
    which: &Selector,
    wait: Option<Duration>,
) -> Result<DevicePaths, XlError> {
    let paths = find_device(xs, domain, which).await?;
    if let Some(timeout) = wait
        && let Some(frontend) = begin_close(xs, &paths).await?
        && !frontend_done(frontend)
    {
        wait_closed(xs, domain, &paths, timeout).await?;
    }
    remove_device(xs, &paths).await?;
    Ok(paths)
}
