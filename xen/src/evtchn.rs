//! Event channels: the doorbell each side rings after publishing ring indexes.
//!
//! [`EventChannel`] is one bound port: `notify` the other end, a descriptor readable while a
//! notification is pending (for tokio's `AsyncFd`), `ack` to consume. [`EventChannels`] binds
//! the port a frontend allocated for us (the backend's side); [`UnboundPorts`] allocates such a
//! port for a backend to bind (the frontend's side). Implementations: [`EvtchnDev`], Linux's
//! `/dev/xen/evtchn`, opened once per port so that each port has its own pollable descriptor;
//! `sim::SimEventTable` with [`SimEventChannel`]s, pairs of eventfds, for tests.
//!
//! The ioctl structures and numbers are in [`abi`], pinned against the C header by
//! `tests/ioctl_abi.rs`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::grant::{RawIoctl, open_hint, os_text};

/// One end of an event channel.
pub trait EventChannel: Send + Sync {
    /// Ring the other end.
    fn notify(&self) -> io::Result<()>;
    /// A descriptor that is readable while a notification from the other end is pending.
    fn pending_fd(&self) -> RawFd;
    /// Consume pending notifications; `true` if there were any.
    fn ack(&self) -> io::Result<bool>;
}

/// Binds event channels to ports other domains allocated for us.
pub trait EventChannels: Send + Sync + 'static {
    /// A bound port; dropping it unbinds.
    type Port: EventChannel + 'static;
    /// Bind a local port to `remote_port` of domain `domid` (the frontend allocated it unbound
    /// for us).
    fn bind_interdomain(&self, domid: u16, remote_port: u32) -> Result<Self::Port, EvtchnError>;
}

/// Allocates ports of ours, unbound, for another domain to bind: the frontend's side.
pub trait UnboundPorts: Send + Sync + 'static {
    /// Our end of a port; dropping it closes the port.
    type Port: EventChannel + 'static;
    /// Allocate a port that domain `remote_domid` may bind (`EVTCHNOP_alloc_unbound`): its
    /// number (what a frontend publishes in `event-channel-<N>`) and our end.
    fn alloc_unbound_port(&self, remote_domid: u16) -> Result<(u32, Self::Port), EvtchnError>;
}

/// Why an event channel could not be bound. Each message names the device or table, the domain
/// and the port.
#[derive(Debug, thiserror::Error)]
pub enum EvtchnError {
    /// The event channel device could not be opened.
    #[error(
        "open {}: {}{}",
        .path.display(),
        os_text(.error),
        open_hint("xen-evtchn", .error)
    )]
    Open {
        /// The device path.
        path: PathBuf,
        /// The failure.
        error: io::Error,
    },
    /// `IOCTL_EVTCHN_BIND_INTERDOMAIN` failed.
    #[error(
        "{}: binding port {remote_port} of domain {domid}: {}{}",
        .path.display(),
        os_text(.error),
        bind_hint(.error)
    )]
    Bind {
        /// The device path.
        path: PathBuf,
        /// The remote domain.
        domid: u16,
        /// The remote port.
        remote_port: u32,
        /// The failure.
        error: io::Error,
    },
    /// `IOCTL_EVTCHN_BIND_UNBOUND_PORT` failed.
    #[error(
        "{}: allocating a port for domain {remote_domid}: {}",
        .path.display(),
        os_text(.error)
    )]
    Alloc {
        /// The device path.
        path: PathBuf,
        /// The domain the port was for.
        remote_domid: u16,
        /// The failure.
        error: io::Error,
    },
    /// The remote domain has no such port (simulation; Xen answers `EINVAL`).
    #[error("domain {domid} has no event channel port {remote_port}")]
    NoSuchPort {
        /// The remote domain.
        domid: u16,
        /// The remote port.
        remote_port: u32,
    },
    /// The port was allocated for another domain than us (simulation; Xen answers `EINVAL`).
    #[error(
        "port {remote_port} of domain {domid} was allocated for domain {allocated_for}, not for us (domain {us})"
    )]
    NotForUs {
        /// The remote domain.
        domid: u16,
        /// The remote port.
        remote_port: u32,
        /// The domain the port expects.
        allocated_for: u16,
        /// Our domain.
        us: u16,
    },
    /// The port is already bound (simulation; Xen answers `EINVAL`, the port is no longer
    /// unbound).
    #[error("port {remote_port} of domain {domid} is already bound")]
    AlreadyBound {
        /// The remote domain.
        domid: u16,
        /// The remote port.
        remote_port: u32,
    },
}

fn bind_hint(error: &io::Error) -> &'static str {
    match rustix::io::Errno::from_io_error(error) {
        Some(rustix::io::Errno::INVAL) => {
            " (is the port allocated unbound for us, and not already bound?)"
        }
        _ => "",
    }
}

impl From<EvtchnError> for io::Error {
    fn from(e: EvtchnError) -> io::Error {
        let kind = match &e {
            EvtchnError::Open { error, .. }
            | EvtchnError::Bind { error, .. }
            | EvtchnError::Alloc { error, .. } => error.kind(),
            EvtchnError::NoSuchPort { .. } => io::ErrorKind::NotFound,
            EvtchnError::NotForUs { .. } => io::ErrorKind::PermissionDenied,
            EvtchnError::AlreadyBound { .. } => io::ErrorKind::AlreadyExists,
        };
        io::Error::new(kind, e.to_string())
    }
}

/// Linux's evtchn ioctl ABI (`include/uapi/xen/evtchn.h`; `/usr/include/xen/sys/evtchn.h`
/// from libxen-dev), checked against the C header by `tests/ioctl_abi.rs`.
pub mod abi {
    use rustix::ioctl::{Direction, Opcode, opcode};
    use std::ffi::c_uint;

    /// `struct ioctl_evtchn_bind_interdomain`.
    #[repr(C)]
    pub struct BindInterdomain {
        /// The remote domain.
        pub remote_domain: c_uint,
        /// The remote domain's port.
        pub remote_port: c_uint,
    }

    /// `struct ioctl_evtchn_bind_unbound_port`.
    #[repr(C)]
    pub struct BindUnboundPort {
        /// The domain that may bind the port.
        pub remote_domain: c_uint,
    }

    /// `struct ioctl_evtchn_unbind`.
    #[repr(C)]
    pub struct Unbind {
        /// The local port.
        pub port: c_uint,
    }

    /// `struct ioctl_evtchn_notify`.
    #[repr(C)]
    pub struct Notify {
        /// The local port.
        pub port: c_uint,
    }

    /// `_IOC(_IOC_NONE, 'E', 1, sizeof(struct ioctl_evtchn_bind_interdomain))`; returns the
    /// local port.
    pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: Opcode =
        opcode::from_components(Direction::None, b'E', 1, size_of::<BindInterdomain>());
    /// `_IOC(_IOC_NONE, 'E', 2, sizeof(struct ioctl_evtchn_bind_unbound_port))`; returns the
    /// local port.
    pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: Opcode =
        opcode::from_components(Direction::None, b'E', 2, size_of::<BindUnboundPort>());
    /// `_IOC(_IOC_NONE, 'E', 3, sizeof(struct ioctl_evtchn_unbind))`.
    pub const IOCTL_EVTCHN_UNBIND: Opcode =
        opcode::from_components(Direction::None, b'E', 3, size_of::<Unbind>());
    /// `_IOC(_IOC_NONE, 'E', 4, sizeof(struct ioctl_evtchn_notify))`.
    pub const IOCTL_EVTCHN_NOTIFY: Opcode =
        opcode::from_components(Direction::None, b'E', 4, size_of::<Notify>());
}

/// Linux's event channel device, `/dev/xen/evtchn`.
///
/// Every open of the device is an independent set of ports with its own queue of pending
/// ports, so each [`bind_interdomain`](EventChannels::bind_interdomain) and
/// [`alloc_unbound`](Self::alloc_unbound) opens it anew: each port gets a descriptor that is
/// readable exactly when *that* port is pending.
#[derive(Debug)]
pub struct EvtchnDev {
    path: PathBuf,
}

impl EvtchnDev {
    /// Where Linux puts the device.
    pub const PATH: &'static str = "/dev/xen/evtchn";

    /// Check that [`Self::PATH`] can be opened.
    pub fn open() -> Result<EvtchnDev, EvtchnError> {
        EvtchnDev::open_path(Self::PATH)
    }

    /// Check that the event channel device at `path` can be opened (each bind opens it again).
    pub fn open_path(path: impl AsRef<Path>) -> Result<EvtchnDev, EvtchnError> {
        let dev = EvtchnDev {
            path: path.as_ref().to_path_buf(),
        };
        dev.open_fd()?;
        Ok(dev)
    }

    /// The device's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Allocate a port of ours, unbound, that domain `remote_domid` may bind
    /// (`IOCTL_EVTCHN_BIND_UNBOUND_PORT`), on its own open of the device. The port number is
    /// [`EvtchnPort::local_port`]; once the other domain binds it, notifications flow both
    /// ways as for [`bind_interdomain`](EventChannels::bind_interdomain).
    pub fn alloc_unbound(&self, remote_domid: u16) -> Result<EvtchnPort, EvtchnError> {
        let fd = self.open_fd()?;
        let mut arg = abi::BindUnboundPort {
            remote_domain: remote_domid.into(),
        };
        // SAFETY: the opcode is evtchn's BIND_UNBOUND_PORT, whose argument is exactly this
        // `#[repr(C)]` struct (pinned by tests/ioctl_abi.rs); the kernel only reads it, and it
        // lives across the call.
        let local = unsafe {
            rustix::ioctl::ioctl(
                &fd,
                RawIoctl {
                    opcode: abi::IOCTL_EVTCHN_BIND_UNBOUND_PORT,
                    arg: (&raw mut arg).cast(),
                },
            )
        }
        .map_err(|e| EvtchnError::Alloc {
            path: self.path.clone(),
            remote_domid,
            error: e.into(),
        })?;
        Ok(EvtchnPort {
            fd,
            local_port: local as u32,
            domid: remote_domid,
            remote_port: None,
        })
    }

    fn open_fd(&self) -> Result<OwnedFd, EvtchnError> {
        use rustix::fs::{Mode, OFlags};
        rustix::fs::open(
            &self.path,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| EvtchnError::Open {
            path: self.path.clone(),
            error: e.into(),
        })
    }
}

impl EventChannels for EvtchnDev {
    type Port = EvtchnPort;

    fn bind_interdomain(&self, domid: u16, remote_port: u32) -> Result<EvtchnPort, EvtchnError> {
        let fd = self.open_fd()?;
        let mut arg = abi::BindInterdomain {
            remote_domain: domid.into(),
            remote_port,
        };
        // SAFETY: the opcode is evtchn's BIND_INTERDOMAIN, whose argument is exactly this
        // `#[repr(C)]` struct (pinned by tests/ioctl_abi.rs); the kernel only reads it, and it
        // lives across the call.
        let local = unsafe {
            rustix::ioctl::ioctl(
                &fd,
                RawIoctl {
                    opcode: abi::IOCTL_EVTCHN_BIND_INTERDOMAIN,
                    arg: (&raw mut arg).cast(),
                },
            )
        }
        .map_err(|e| EvtchnError::Bind {
            path: self.path.clone(),
            domid,
            remote_port,
            error: e.into(),
        })?;
        Ok(EvtchnPort {
            fd,
            local_port: local as u32,
            domid,
            remote_port: Some(remote_port),
        })
    }
}

impl UnboundPorts for EvtchnDev {
    type Port = EvtchnPort;

    fn alloc_unbound_port(&self, remote_domid: u16) -> Result<(u32, EvtchnPort), EvtchnError> {
        let port = self.alloc_unbound(remote_domid)?;
        Ok((port.local_port(), port))
    }
}

/// A port bound or allocated through [`EvtchnDev`], on its own open of the device. Dropping it
/// unbinds (closes) the port and closes the descriptor.
#[derive(Debug)]
pub struct EvtchnPort {
    fd: OwnedFd,
    local_port: u32,
    domid: u16,
    remote_port: Option<u32>,
}

impl EvtchnPort {
    /// Our local port number.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// The remote domain and its port: `None` for a port we allocated unbound (the remote
    /// domain picks its own port when it binds ours).
    pub fn remote(&self) -> (u16, Option<u32>) {
        (self.domid, self.remote_port)
    }

    /// Issue a port ioctl whose argument is `struct { unsigned int port; }` with our port.
    fn port_ioctl(&self, opcode: rustix::ioctl::Opcode) -> io::Result<()> {
        let mut arg = abi::Notify {
            port: self.local_port,
        };
        // SAFETY: callers pass NOTIFY or UNBIND, whose arguments are both a `#[repr(C)]`
        // struct holding one `unsigned int` port (pinned by tests/ioctl_abi.rs), which
        // `abi::Notify` is; the kernel only reads it, and it lives across the call.
        unsafe {
            rustix::ioctl::ioctl(
                &self.fd,
                RawIoctl {
                    opcode,
                    arg: (&raw mut arg).cast(),
                },
            )
        }?;
        Ok(())
    }
}

impl EventChannel for EvtchnPort {
    fn notify(&self) -> io::Result<()> {
        self.port_ioctl(abi::IOCTL_EVTCHN_NOTIFY)
    }

    fn pending_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn ack(&self) -> io::Result<bool> {
        // Pending ports are queued as u32s and stay masked until written back. This descriptor
        // has one port, masked while queued, so one slot would do; a few spare cost nothing.
        let mut ports = [0u8; 4 * 8];
        let n = match rustix::io::read(&self.fd, &mut ports) {
            Ok(n) => n - n % 4,
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if n > 0 {
            // Unmask: the next notification queues the port again.
            rustix::io::write(&self.fd, &ports[..n])?;
        }
        Ok(n > 0)
    }
}

impl Drop for EvtchnPort {
    fn drop(&mut self) {
        // Closing the descriptor unbinds too; unbinding first makes it explicit and immediate.
        let _ = self.port_ioctl(abi::IOCTL_EVTCHN_UNBIND);
    }
}

/// A simulated event channel end: rings the peer's eventfd, waits on its own. Clones are the
/// same end.
#[derive(Clone, Debug)]
pub struct SimEventChannel {
    mine: Arc<OwnedFd>,
    peer: Arc<OwnedFd>,
}

fn eventfd() -> io::Result<Arc<OwnedFd>> {
    use rustix::event::{EventfdFlags, eventfd};
    Ok(Arc::new(eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?))
}

impl SimEventChannel {
    /// The end that waits on `mine` and rings `peer`.
    pub(crate) fn from_fds(mine: Arc<OwnedFd>, peer: Arc<OwnedFd>) -> SimEventChannel {
        SimEventChannel { mine, peer }
    }
}

pub(crate) fn eventfd_pair() -> io::Result<(Arc<OwnedFd>, Arc<OwnedFd>)> {
    Ok((eventfd()?, eventfd()?))
}

/// Two connected ends (backend, frontend).
pub fn sim_pair() -> io::Result<(SimEventChannel, SimEventChannel)> {
    let (a, b) = (eventfd()?, eventfd()?);
    Ok((
        SimEventChannel {
            mine: a.clone(),
            peer: b.clone(),
        },
        SimEventChannel { mine: b, peer: a },
    ))
}

impl EventChannel for SimEventChannel {
    fn notify(&self) -> io::Result<()> {
        match rustix::io::write(self.peer.as_fd(), &1u64.to_ne_bytes()) {
            // The counter is saturated: the peer has a notification pending anyway.
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn pending_fd(&self) -> RawFd {
        self.mine.as_raw_fd()
    }

    fn ack(&self) -> io::Result<bool> {
        let mut count = [0u8; 8];
        match rustix::io::read(self.mine.as_fd(), &mut count) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::AGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        use rustix::event::{PollFd, PollFlags, poll};
        // SAFETY: `fd` belongs to a channel the caller holds, so it stays open for this call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let mut fds = [PollFd::new(&borrowed, PollFlags::IN)];
        poll(
            &mut fds,
            Some(&rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        )
        .unwrap()
            == 1
    }

    #[test]
    fn a_missing_device_says_what_to_check() {
        let err = EvtchnDev::open_path("/nonexistent/xen/evtchn").unwrap_err();
        assert_eq!(
            err.to_string(),
            "open /nonexistent/xen/evtchn: No such file or directory (is this a Xen dom0 with the xen-evtchn module loaded?)"
        );
        if !Path::new(EvtchnDev::PATH).exists() {
            let err = EvtchnDev::open().unwrap_err().to_string();
            assert!(
                err.starts_with("open /dev/xen/evtchn: ") && err.contains("xen-evtchn module"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_failing_bind_names_the_domain_and_port() {
        // /dev/null opens but refuses evtchn's ioctl (ENOTTY).
        let dev = EvtchnDev::open_path("/dev/null").unwrap();
        let err = dev.bind_interdomain(7, 12).unwrap_err();
        assert!(matches!(
            err,
            EvtchnError::Bind {
                domid: 7,
                remote_port: 12,
                ..
            }
        ));
        assert!(
            err.to_string()
                .starts_with("/dev/null: binding port 12 of domain 7: "),
            "{err}"
        );
    }

    #[test]
    fn a_failing_alloc_names_the_domain() {
        // /dev/null opens but refuses evtchn's ioctl (ENOTTY).
        let dev = EvtchnDev::open_path("/dev/null").unwrap();
        let err = dev.alloc_unbound(4).unwrap_err();
        assert!(matches!(
            err,
            EvtchnError::Alloc {
                remote_domid: 4,
                ..
            }
        ));
        assert!(
            err.to_string()
                .starts_with("/dev/null: allocating a port for domain 4: "),
            "{err}"
        );
        assert!(matches!(
            dev.alloc_unbound_port(4),
            Err(EvtchnError::Alloc { .. })
        ));
    }

    #[test]
    fn notifications_reach_only_the_peer_and_coalesce() {
        let (backend, frontend) = sim_pair().unwrap();
        assert!(!readable(backend.pending_fd()) && !readable(frontend.pending_fd()));
        backend.notify().unwrap();
        backend.notify().unwrap();
        assert!(readable(frontend.pending_fd()), "the frontend was rung");
        assert!(!readable(backend.pending_fd()), "not the ringer");
        assert!(frontend.ack().unwrap());
        assert!(
            !frontend.ack().unwrap(),
            "two rings before an ack are one event"
        );
        assert!(!readable(frontend.pending_fd()));
        frontend.notify().unwrap();
        assert!(backend.ack().unwrap());
    }
}
