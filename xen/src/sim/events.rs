//! A simulated event channel table: frontends allocate unbound ports, the backend binds them.
//!
//! Each allocated port is a pair of eventfds; [`SimEventTable::alloc_unbound`] (or the
//! [`UnboundPorts`] of [`SimEventTable::allocator`], as `/dev/xen/evtchn` does) hands the
//! frontend its end and keeps the backend's until [`EventChannels::bind_interdomain`] claims it.
//! Like Xen, binding checks that the port exists in that domain, was allocated for us and is
//! not bound already; dropping the backend end unbinds it (the frontend may be bound again, as
//! after a backend restart).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::evtchn::{
    EventChannel, EventChannels, EvtchnError, SimEventChannel, UnboundPorts, eventfd_pair,
};

/// Our domain: the simulated backend runs in dom0.
pub const BACKEND_DOMID: u16 = 0;
/// The first port handed out (a Linux guest's first ports go to timers, IPIs and xenstore).
const FIRST_PORT: u32 = 5;
/// The first local port the backend gets.
const FIRST_LOCAL_PORT: u32 = 40;

/// A simulated event channel table, with the backend in [`BACKEND_DOMID`]; clones share it.
#[derive(Clone, Default)]
pub struct SimEventTable(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// By (owner domain, port). Numbers are unique across domains, so that a test naming the
    /// wrong domain fails rather than finding a namesake.
    ports: HashMap<(u16, u32), Port>,
    allocated: u32,
    bound_locally: u32,
    bound: usize,
}

struct Port {
    remote: u16,
    backend: Arc<OwnedFd>,
    frontend: Arc<OwnedFd>,
    bound: bool,
}

impl SimEventTable {
    /// An empty table.
    pub fn new() -> SimEventTable {
        SimEventTable::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.0)
    }

    /// Domain `owner_domid` allocates an unbound port for `remote_domid`
    /// (`EVTCHNOP_alloc_unbound`): the port number and the owner's end. Panics if eventfds
    /// cannot be created.
    pub fn alloc_unbound(&self, owner_domid: u16, remote_domid: u16) -> (u32, SimEventChannel) {
        let (backend, frontend) =
            eventfd_pair().unwrap_or_else(|e| panic!("eventfds for a simulated port: {e}"));
        let mut state = self.state();
        let port = FIRST_PORT + state.allocated;
        state.allocated += 1;
        state.ports.insert(
            (owner_domid, port),
            Port {
                remote: remote_domid,
                backend: backend.clone(),
                frontend: frontend.clone(),
                bound: false,
            },
        );
        (port, SimEventChannel::from_fds(frontend, backend))
    }

    /// Ports the backend has bound and not dropped (for leak checks).
    pub fn bound_ports(&self) -> usize {
        self.state().bound
    }

    /// Ports domain `owner_domid` allocated and has not closed (for leak checks of a
    /// frontend; ports from [`alloc_unbound`](Self::alloc_unbound) are never closed).
    pub fn open_ports(&self, owner_domid: u16) -> usize {
        self.state()
            .ports
            .keys()
            .filter(|(owner, _)| *owner == owner_domid)
            .count()
    }

    /// Domain `domid`'s port allocator over this table: what `/dev/xen/evtchn` is to a program
    /// in that domain.
    pub fn allocator(&self, domid: u16) -> SimPortAllocator {
        SimPortAllocator {
            table: self.clone(),
            domid,
        }
    }
}

/// One domain's [`UnboundPorts`] over a [`SimEventTable`] (see [`SimEventTable::allocator`]).
#[derive(Clone, Debug)]
pub struct SimPortAllocator {
    table: SimEventTable,
    domid: u16,
}

impl UnboundPorts for SimPortAllocator {
    type Port = SimLocalPort;

    fn alloc_unbound_port(&self, remote_domid: u16) -> Result<(u32, SimLocalPort), EvtchnError> {
        let (port, chan) = self.table.alloc_unbound(self.domid, remote_domid);
        Ok((
            port,
            SimLocalPort {
                chan,
                key: (self.domid, port),
                table: self.table.clone(),
            },
        ))
    }
}

/// A frontend's end of a port from [`SimPortAllocator`]; dropping it closes the port
/// (`EVTCHNOP_close`): the backend can no longer bind it, and a bound backend end rings
/// nobody.
pub struct SimLocalPort {
    chan: SimEventChannel,
    key: (u16, u32),
    table: SimEventTable,
}

impl SimLocalPort {
    /// The port number.
    pub fn port(&self) -> u32 {
        self.key.1
    }

    /// The table the port is in.
    pub fn table(&self) -> &SimEventTable {
        &self.table
    }
}

impl EventChannel for SimLocalPort {
    fn notify(&self) -> std::io::Result<()> {
        self.chan.notify()
    }

    fn pending_fd(&self) -> std::os::fd::RawFd {
        self.chan.pending_fd()
    }

    fn ack(&self) -> std::io::Result<bool> {
        self.chan.ack()
    }
}

impl Drop for SimLocalPort {
    fn drop(&mut self) {
        self.table.state().ports.remove(&self.key);
    }
}

impl std::fmt::Debug for SimLocalPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimLocalPort")
            .field("port", &self.key)
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventChannels for SimEventTable {
    type Port = SimBoundPort;

    fn bind_interdomain(&self, domid: u16, remote_port: u32) -> Result<SimBoundPort, EvtchnError> {
        let mut state = self.state();
        let Some(port) = state.ports.get_mut(&(domid, remote_port)) else {
            return Err(EvtchnError::NoSuchPort { domid, remote_port });
        };
        if port.remote != BACKEND_DOMID {
            return Err(EvtchnError::NotForUs {
                domid,
                remote_port,
                allocated_for: port.remote,
                us: BACKEND_DOMID,
            });
        }
        if port.bound {
            return Err(EvtchnError::AlreadyBound { domid, remote_port });
        }
        port.bound = true;
        let chan = SimEventChannel::from_fds(port.backend.clone(), port.frontend.clone());
        let local_port = FIRST_LOCAL_PORT + state.bound_locally;
        state.bound_locally += 1;
        state.bound += 1;
        Ok(SimBoundPort {
            chan,
            local_port,
            key: (domid, remote_port),
            table: self.0.clone(),
        })
    }
}

/// The backend's end of a simulated port; dropping it unbinds.
pub struct SimBoundPort {
    chan: SimEventChannel,
    local_port: u32,
    key: (u16, u32),
    table: Arc<Mutex<State>>,
}

impl SimBoundPort {
    /// Our local port number.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// The remote domain and its port.
    pub fn remote(&self) -> (u16, u32) {
        self.key
    }
}

impl std::fmt::Debug for SimBoundPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBoundPort")
            .field("local_port", &self.local_port)
            .field("remote", &self.key)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SimEventTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimEventTable")
            .field("bound_ports", &self.bound_ports())
            .finish_non_exhaustive()
    }
}

impl EventChannel for SimBoundPort {
    fn notify(&self) -> std::io::Result<()> {
        self.chan.notify()
    }

    fn pending_fd(&self) -> std::os::fd::RawFd {
        self.chan.pending_fd()
    }

    fn ack(&self) -> std::io::Result<bool> {
        self.chan.ack()
    }
}

impl Drop for SimBoundPort {
    fn drop(&mut self) {
        let mut state = lock(&self.table);
        if let Some(port) = state.ports.get_mut(&self.key) {
            port.bound = false;
        }
        state.bound -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(chan: &impl EventChannel) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        // SAFETY: the descriptor belongs to `chan`, which is borrowed for this whole call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(chan.pending_fd()) };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        poll(&mut fds, Some(&Timespec::default())).unwrap() == 1
    }

    #[test]
    fn notifications_flow_both_ways_once_bound() {
        let table = SimEventTable::new();
        let (port, frontend) = table.alloc_unbound(7, BACKEND_DOMID);
        assert_eq!(port, FIRST_PORT);
        let backend = table.bind_interdomain(7, port).unwrap();
        assert_eq!((backend.remote(), table.bound_ports()), ((7, port), 1));
        assert!(!readable(&backend) && !readable(&frontend));
        frontend.notify().unwrap();
        assert!(readable(&backend) && !readable(&frontend));
        assert!(backend.ack().unwrap());
        assert!(!backend.ack().unwrap() && !readable(&backend));
        backend.notify().unwrap();
        assert!(readable(&frontend) && !readable(&backend));
        assert!(frontend.ack().unwrap());
        drop(backend);
        assert_eq!(table.bound_ports(), 0);
    }

    #[test]
    fn bad_binds_are_refused_and_nothing_leaks() {
        let table = SimEventTable::new();
        let (port, _fe) = table.alloc_unbound(7, BACKEND_DOMID);
        let (other, _fo) = table.alloc_unbound(8, 3);
        let err = |domid, p| table.bind_interdomain(domid, p).err().unwrap();
        assert!(matches!(
            err(7, 999),
            EvtchnError::NoSuchPort {
                domid: 7,
                remote_port: 999
            }
        ));
        assert!(
            matches!(err(8, port), EvtchnError::NoSuchPort { domid: 8, .. }),
            "a port belongs to its domain"
        );
        assert_eq!(
            err(8, other).to_string(),
            format!("port {other} of domain 8 was allocated for domain 3, not for us (domain 0)")
        );
        let first = table.bind_interdomain(7, port).unwrap();
        assert!(matches!(
            err(7, port),
            EvtchnError::AlreadyBound { domid: 7, .. }
        ));
        assert_eq!(table.bound_ports(), 1);
        drop(first);
        assert_eq!(table.bound_ports(), 0);
        let again = table.bind_interdomain(7, port).unwrap();
        assert_eq!(table.bound_ports(), 1, "rebinding after an unbind works");
        drop(again);
        assert_eq!(table.bound_ports(), 0);
    }

    #[test]
    fn allocated_ports_close_on_drop() {
        let table = SimEventTable::new();
        let (port, fe) = table
            .allocator(7)
            .alloc_unbound_port(BACKEND_DOMID)
            .unwrap();
        assert_eq!((fe.port(), table.open_ports(7)), (port, 1));
        let be = table.bind_interdomain(7, port).unwrap();
        fe.notify().unwrap();
        assert!(readable(&be));
        drop(fe);
        assert_eq!(table.open_ports(7), 0);
        drop(be);
        assert!(matches!(
            table.bind_interdomain(7, port),
            Err(EvtchnError::NoSuchPort { .. })
        ));
        assert_eq!(table.bound_ports(), 0);
    }
}
