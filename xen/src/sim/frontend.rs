//! A simulated 9pfs frontend: a [`FrontendRing`] over the simulated grant and event tables,
//! set up the way Linux's `trans_xen.c` does (see [`crate::frontend`]).
//!
//! [`SimFrontend::new`] shares the pages through the table's [`SimGntAlloc`] of the guest's
//! domain and allocates the port through its [`SimPortAllocator`], so the simulated and the
//! real frontend (gntalloc, evtchn) share all ring code. What Linux then writes to xenstore
//! (`ring-ref<N>`, `event-channel-<N>`) is [`FrontendRing::intf_ref`] and
//! [`FrontendRing::port`]; the knobs to play a hostile guest are [`FrontendRing`]'s.
//!
//! [`SimGntAlloc`]: super::SimGntAlloc
//! [`SimPortAllocator`]: super::SimPortAllocator

use super::{BACKEND_DOMID, SimEventTable, SimGrantTable, SimLocalPort, SimSharedPages};
use crate::frontend::FrontendRing;

/// The guest's side of a simulated ring.
pub type SimFrontend = FrontendRing<SimSharedPages, SimLocalPort>;

impl SimFrontend {
    /// Domain `domid` sets up a ring of `order` (at most
    /// [`MAX_RING_ORDER`](crate::ring::MAX_RING_ORDER); 0 is allowed here, for testing
    /// backends that refuse it) for the backend ([`BACKEND_DOMID`]) with pages from `grants`
    /// and a port from `events`. Panics on a bad order (a simulation has no other failure).
    pub fn new(
        grants: &SimGrantTable,
        events: &SimEventTable,
        domid: u16,
        order: u32,
    ) -> SimFrontend {
        FrontendRing::setup(
            &grants.granter(domid),
            &events.allocator(domid),
            BACKEND_DOMID,
            order,
        )
        .unwrap_or_else(|e| panic!("simulated frontend of domain {domid}: {e}"))
    }

    /// The frontend's domain.
    pub fn domid(&self) -> u16 {
        self.intf_pages().granter()
    }

    /// The grant table holding the ring's pages.
    pub fn grant_table(&self) -> &SimGrantTable {
        self.intf_pages().table()
    }

    /// The event channel table holding the port.
    pub fn event_table(&self) -> &SimEventTable {
        self.events().table()
    }
}
