//! The frontend's side of a 9pfs ring, over any grant sharer and port allocator.
//!
//! [`FrontendRing::setup`] sets a ring up the way Linux's `trans_xen.c`
//! (`xen_9pfs_front_alloc_dataring`) does: share a zeroed intf page and `2^order` data pages
//! with the backend, write the data pages' refs and then `ring_order` into the intf page, and
//! allocate an unbound event channel port for the backend. What a frontend then publishes in
//! xenstore (`ring-ref<N>`, `event-channel-<N>`) is [`FrontendRing::intf_ref`] and
//! [`FrontendRing::port`]. It speaks the ring protocol from the guest's side with the same
//! producer/consumer code as the backend's [`Ring`](crate::ring::Ring), and has knobs to play a
//! hostile guest: rewrite any intf word, the order, or a data ref; publish part of a request.
//!
//! One implementation serves both worlds: over [`GntAlloc`](crate::grant::GntAlloc) and
//! [`EvtchnDev`](crate::evtchn::EvtchnDev) it is a real frontend (`envoy-xen-frontend` runs it
//! in dom0 against a real backend); over the simulation's `SimGntAlloc` / `SimPortAllocator`
//! it is [`SimFrontend`](crate::sim::SimFrontend). [`linux::LinuxFrontend`] drives a set of
//! rings the way Linux's 9p transport does, behind a byte stream for a 9P client.

pub mod linux;

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::evtchn::{EventChannel, EvtchnError, UnboundPorts};
use crate::grant::{GrantError, GrantSharer, SharedGrants};
use crate::ring::{
    IN_CONS, IN_PROD, MAX_RING_ORDER, MIN_MESSAGE, OUT_CONS, OUT_PROD, PAGE_SIZE, REFS, RING_ORDER,
    RingError, RingMemory, RingPages, copy_from_ring, put_message, ring_size, take_message,
    word_at,
};

/// Why a ring could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The order is above what the intf page can describe.
    #[error("ring order {order} is above the largest, {MAX_RING_ORDER}")]
    Order {
        /// The order asked for.
        order: u32,
    },
    /// Sharing the pages failed.
    #[error("sharing the ring's {what}: {error}")]
    Grant {
        /// "intf page" or "data pages".
        what: &'static str,
        /// The failure.
        error: GrantError,
    },
    /// Allocating the event channel failed.
    #[error("allocating the ring's event channel: {0}")]
    Evtchn(#[from] EvtchnError),
}

/// The guest's side of one 9pfs ring: the pages it shared and the port it allocated. Dropping
/// it ends the grants and closes the port.
pub struct FrontendRing<S: SharedGrants, P: EventChannel> {
    mem: RingPages<S>,
    order: u32,
    size: usize,
    port: u32,
    events: P,
    backend_domid: u16,
}

impl<S: SharedGrants, P: EventChannel> FrontendRing<S, P> {
    /// Set up a ring of `order` (at most [`MAX_RING_ORDER`]; 0 is allowed, for testing backends
    /// that refuse it) for the backend in `backend_domid`, with pages from `grants` and a port
    /// from `events`, as Linux does. Anything allocated before a failure is released.
    pub fn setup<G, E>(
        grants: &G,
        events: &E,
        backend_domid: u16,
        order: u32,
    ) -> Result<Self, FrontendError>
    where
        G: GrantSharer<Shared = S>,
        E: UnboundPorts<Port = P>,
    {
        if order > MAX_RING_ORDER {
            return Err(FrontendError::Order { order });
        }
        let share = |what, pages| {
            let shared = grants
                .share(backend_domid, pages, true)
                .map_err(|error| FrontendError::Grant { what, error })?;
            assert!(
                shared.refs().len() == pages && shared.len() == pages * PAGE_SIZE,
                "a grant sharer returned {} refs and {} bytes for {pages} pages",
                shared.refs().len(),
                shared.len()
            );
            Ok::<S, FrontendError>(shared)
        };
        let intf = share("intf page", 1)?;
        let data = share("data pages", 1 << order)?;
        let (port, events) = events.alloc_unbound_port(backend_domid)?;
        let ring = FrontendRing {
            mem: RingPages::new(intf, data),
            order,
            size: ring_size(order),
            port,
            events,
            backend_domid,
        };
        // Fresh pages are zeroed; say so anyway, then the refs, then the order (Linux's order;
        // the backend reads them only after xenstore says the ring is there).
        for at in [IN_CONS, IN_PROD, OUT_CONS, OUT_PROD] {
            ring.poke_index(at, 0);
        }
        for (i, r) in ring.mem.data_mapping().refs().iter().enumerate() {
            ring.poke_index(REFS + 4 * i, *r);
        }
        ring.poke_index(RING_ORDER, order);
        Ok(ring)
    }

    /// The intf page's grant ref (what Linux writes to `ring-ref<N>`).
    pub fn intf_ref(&self) -> u32 {
        self.mem.intf_mapping().refs()[0]
    }

    /// The data pages' grant refs, as granted (the intf page may since have been corrupted).
    pub fn data_refs(&self) -> &[u32] {
        self.mem.data_mapping().refs()
    }

    /// The unbound port allocated for the backend (what Linux writes to `event-channel-<N>`).
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The frontend's end of the event channel.
    pub fn events(&self) -> &P {
        &self.events
    }

    /// The backend's domain, which the pages and the port are for.
    pub fn backend_domid(&self) -> u16 {
        self.backend_domid
    }

    /// The ring order the frontend set up.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// Bytes per direction.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The intf page as shared.
    pub fn intf_pages(&self) -> &S {
        self.mem.intf_mapping()
    }

    /// The data pages as shared.
    pub fn data_pages(&self) -> &S {
        self.mem.data_mapping()
    }

    /// Queue one whole request in `out`; `false` when it does not fit yet (Linux waits).
    pub fn send(&self, msg: &[u8]) -> Result<bool, RingError> {
        put_message(&self.mem, self.size, self.size, OUT_CONS, OUT_PROD, msg)
    }

    /// Take one whole response from `in`, if complete.
    pub fn receive(&self, max: u32) -> Result<Option<Bytes>, RingError> {
        take_message(&self.mem, 0, self.size, IN_CONS, IN_PROD, max)
    }

    /// Take one response the way Linux's `p9_xen_response` does: once the 7-byte header is
    /// visible, read `size` bytes **without checking that they were all published**, and move
    /// `in_cons` past them. A backend that published part of a response hands out garbage here,
    /// as it would to Linux. `None` while fewer than 7 bytes are queued; a size outside
    /// `7..=max` (or beyond the ring) is an error (Linux fails the request).
    pub fn receive_after_header(&self, max: u32) -> Result<Option<Bytes>, RingError> {
        // SAFETY: as in `poke_index`.
        let (cons_at, prod_at) = unsafe {
            (
                word_at(self.mem.intf(), IN_CONS),
                word_at(self.mem.intf(), IN_PROD),
            )
        };
        let cons = cons_at.load(Ordering::Relaxed);
        let prod = prod_at.load(Ordering::Acquire);
        let queued = prod.wrapping_sub(cons);
        if queued as usize > self.size {
            return Err(RingError::Corrupt {
                queued,
                size: self.size,
            });
        }
        if queued < MIN_MESSAGE {
            return Ok(None);
        }
        let mut head = [0u8; 4];
        copy_from_ring(&self.mem, 0, self.size, cons, &mut head);
        let len = u32::from_le_bytes(head);
        if !(MIN_MESSAGE..=max).contains(&len) || len as usize > self.size {
            return Err(RingError::BadMessageSize {
                size: len,
                max: max.min(self.size as u32),
            });
        }
        let mut msg = vec![0u8; len as usize];
        copy_from_ring(&self.mem, 0, self.size, cons, &mut msg);
        cons_at.store(cons.wrapping_add(len), Ordering::Release);
        Ok(Some(Bytes::from(msg)))
    }

    /// Overwrite any 4-byte-aligned word of the intf page (to play a hostile frontend).
    pub fn poke_index(&self, offset: usize, value: u32) {
        // SAFETY: the intf page is one page-aligned, read-write page alive while `self` is
        // (checked at setup, guaranteed by `SharedGrants`); `word_at` checks the offset.
        unsafe { word_at(self.mem.intf(), offset) }.store(value, Ordering::Release);
    }

    /// Read any 4-byte-aligned word of the intf page (an index, the order, a ref).
    pub fn peek_index(&self, offset: usize) -> u32 {
        // SAFETY: as in `poke_index`.
        unsafe { word_at(self.mem.intf(), offset) }.load(Ordering::Acquire)
    }

    /// Bytes free in the `out` ring (requests).
    pub fn out_free(&self) -> usize {
        let queued = self
            .peek_index(OUT_PROD)
            .wrapping_sub(self.peek_index(OUT_CONS)) as usize;
        self.size.saturating_sub(queued)
    }

    /// Bytes queued in the `in` ring (responses not yet taken).
    pub fn in_queued(&self) -> usize {
        self.peek_index(IN_PROD)
            .wrapping_sub(self.peek_index(IN_CONS)) as usize
    }

    /// Write a different `ring_order` into the intf page.
    pub fn set_ring_order(&self, order: u32) {
        self.poke_index(RING_ORDER, order);
    }

    /// Replace data ref `i` in the intf page.
    pub fn set_data_ref(&self, i: usize, grant_ref: u32) {
        assert!(
            REFS + 4 * i < PAGE_SIZE,
            "data ref {i} is outside the intf page"
        );
        self.poke_index(REFS + 4 * i, grant_ref);
    }

    /// Write raw bytes into the `out` ring without publishing them (a request still being
    /// written), then publish `publish` of them. Neither length is checked against the ring:
    /// a hostile frontend may claim anything.
    pub fn send_partial(&self, msg: &[u8], publish: usize) {
        // SAFETY: as in `poke_index`.
        let out_prod = unsafe { word_at(self.mem.intf(), OUT_PROD) };
        let prod = out_prod.load(Ordering::Relaxed);
        let start = prod as usize & (self.size - 1);
        for (i, b) in msg.iter().enumerate() {
            let at = self.size + ((start + i) & (self.size - 1));
            // SAFETY: `at` is inside the `out` half of the data area (`size..2*size`), which
            // is mapped read-write while `self` lives.
            unsafe { self.mem.data().add(at).write_volatile(*b) };
        }
        out_prod.store(prod.wrapping_add(publish as u32), Ordering::Release);
    }
}

impl<S: SharedGrants, P: EventChannel> std::fmt::Debug for FrontendRing<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontendRing")
            .field("intf_ref", &self.intf_ref())
            .field("order", &self.order)
            .field("port", &self.port)
            .field("backend_domid", &self.backend_domid)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evtchn::EventChannels;
    use crate::ring::map_ring;
    use crate::sim::{BACKEND_DOMID, SimEventTable, SimGrantTable, SimLocalPort, SimSharedPages};

    type Front = FrontendRing<SimSharedPages, SimLocalPort>;

    fn setup(grants: &SimGrantTable, events: &SimEventTable, order: u32) -> Front {
        FrontendRing::setup(
            &grants.granter(6),
            &events.allocator(6),
            BACKEND_DOMID,
            order,
        )
        .unwrap()
    }

    fn message(len: usize, tag: u16) -> Vec<u8> {
        let mut m = vec![tag as u8; len];
        m[..4].copy_from_slice(&(len as u32).to_le_bytes());
        m[4] = 100;
        m[5..7].copy_from_slice(&tag.to_le_bytes());
        m
    }

    #[test]
    fn a_backend_maps_what_setup_published_and_messages_flow() {
        let (grants, events) = (SimGrantTable::new(), SimEventTable::new());
        let fe = setup(&grants, &events, 2);
        assert_eq!((fe.order(), fe.size(), fe.data_refs().len()), (2, 8192, 4));
        assert_eq!(fe.peek_index(RING_ORDER), 2);
        assert_eq!(fe.backend_domid(), BACKEND_DOMID);
        let mut ring = map_ring(&grants, 6, fe.intf_ref(), MAX_RING_ORDER).unwrap();
        let port = events.bind_interdomain(6, fe.port()).unwrap();
        let req = message(5000, 3);
        assert!(fe.send(&req).unwrap());
        fe.events().notify().unwrap();
        assert!(port.ack().unwrap());
        assert_eq!(ring.read_request(8192).unwrap().as_deref(), Some(&req[..]));
        assert_eq!(fe.out_free(), 8192);
        assert!(ring.write_response(&req).unwrap());
        assert_eq!(fe.in_queued(), 5000);
        assert_eq!(fe.receive(8192).unwrap().as_deref(), Some(&req[..]));
        assert_eq!(fe.receive_after_header(8192), Ok(None));
    }

    #[test]
    fn hostile_knobs_reach_the_backend() {
        let (grants, events) = (SimGrantTable::new(), SimEventTable::new());
        let fe = setup(&grants, &events, 1);
        fe.set_ring_order(12);
        assert!(matches!(
            map_ring(&grants, 6, fe.intf_ref(), MAX_RING_ORDER),
            Err(crate::ring::MapRingError::Ring {
                error: RingError::BadOrder { order: 12, .. },
                ..
            })
        ));
        fe.set_ring_order(1);
        fe.set_data_ref(1, 999_999);
        assert!(matches!(
            map_ring(&grants, 6, fe.intf_ref(), MAX_RING_ORDER),
            Err(crate::ring::MapRingError::Data { .. })
        ));
        fe.set_data_ref(1, fe.data_refs()[1]);
        let mut ring = map_ring(&grants, 6, fe.intf_ref(), MAX_RING_ORDER).unwrap();
        // A size field larger than the ring, header published: refused at once.
        let mut head = message(7, 1);
        head[..4].copy_from_slice(&(2 * fe.size() as u32).to_le_bytes());
        fe.send_partial(&head, 7);
        assert!(matches!(
            ring.read_request(1 << 20),
            Err(RingError::BadMessageSize { .. })
        ));
        fe.poke_index(OUT_PROD, fe.peek_index(OUT_CONS).wrapping_add(1 << 30));
        assert!(matches!(
            ring.read_request(1 << 20),
            Err(RingError::Corrupt {
                queued: 0x4000_0000,
                ..
            })
        ));
    }

    #[test]
    fn dropping_the_ring_ends_its_grants_and_closes_its_port() {
        let (grants, events) = (SimGrantTable::new(), SimEventTable::new());
        let fe = setup(&grants, &events, 3);
        assert_eq!((grants.active_grants(6), events.open_ports(6)), (9, 1));
        let intf_ref = fe.intf_ref();
        drop(fe);
        assert_eq!((grants.active_grants(6), events.open_ports(6)), (0, 0));
        assert!(map_ring(&grants, 6, intf_ref, MAX_RING_ORDER).is_err());
    }

    /// A port allocator that always fails (the device refuses).
    struct NoPorts;

    impl UnboundPorts for NoPorts {
        type Port = SimLocalPort;
        fn alloc_unbound_port(
            &self,
            remote_domid: u16,
        ) -> Result<(u32, SimLocalPort), EvtchnError> {
            Err(EvtchnError::Alloc {
                path: "/dev/xen/evtchn".into(),
                remote_domid,
                error: std::io::Error::from_raw_os_error(libc::ENOSPC),
            })
        }
    }

    #[test]
    fn a_failed_setup_releases_everything() {
        let grants = SimGrantTable::new();
        let err = FrontendRing::setup(&grants.granter(6), &NoPorts, BACKEND_DOMID, 2).unwrap_err();
        assert!(matches!(err, FrontendError::Evtchn(_)), "{err}");
        assert_eq!(
            grants.active_grants(6),
            0,
            "the shared pages were given back"
        );
        let err = FrontendRing::setup(&grants.granter(6), &NoPorts, BACKEND_DOMID, 10).unwrap_err();
        assert_eq!(err.to_string(), "ring order 10 is above the largest, 9");
    }
}
