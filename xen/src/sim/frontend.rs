//! A simulated 9pfs frontend: sets a ring up the way Linux's `trans_xen.c` does and speaks the
//! ring protocol from the guest's side.
//!
//! Setup (`xen_9pfs_front_alloc_dataring`): grant a zeroed intf page, grant `2^order` data
//! pages, write their refs and `ring_order` into the intf page, allocate an unbound event
//! channel for the backend. What Linux then writes to xenstore (`ring-ref<N>`,
//! `event-channel-<N>`) is [`SimFrontend::intf_ref`] and [`SimFrontend::port`]. Knobs let tests
//! play a hostile guest: rewrite any intf word, the order, or a data ref.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{BACKEND_DOMID, FrontendPages, SimEventTable, SimGrantTable};
use crate::evtchn::SimEventChannel;
use crate::ring::{
    IN_CONS, IN_PROD, MAX_RING_ORDER, MIN_MESSAGE, OUT_CONS, OUT_PROD, PAGE_SIZE, REFS, RING_ORDER,
    RingError, RingMemory, copy_from_ring, put_message, ring_size, take_message, word_at,
};

/// The frontend's own mapping of its ring.
struct FrontendMemory {
    intf: FrontendPages,
    data: FrontendPages,
}

// SAFETY: `intf` is one page-aligned page and `data` `data.len()` bytes, both mapped read-write
// for as long as `self` holds them (see `FrontendPages`).
unsafe impl RingMemory for FrontendMemory {
    fn intf(&self) -> *mut u8 {
        self.intf.as_ptr()
    }
    fn data(&self) -> *mut u8 {
        self.data.as_ptr()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The guest's side of a simulated ring.
pub struct SimFrontend {
    domid: u16,
    mem: FrontendMemory,
    intf_ref: u32,
    data_refs: Vec<u32>,
    order: u32,
    size: usize,
    port: u32,
    events: SimEventChannel,
    grants: SimGrantTable,
    event_table: SimEventTable,
}

impl SimFrontend {
    /// Domain `domid` sets up a ring of `order` (at most [`MAX_RING_ORDER`]; 0 is allowed here,
    /// for testing backends that refuse it) with pages from `grants` and a port from `events`.
    pub fn new(
        grants: &SimGrantTable,
        events: &SimEventTable,
        domid: u16,
        order: u32,
    ) -> SimFrontend {
        assert!(order <= MAX_RING_ORDER, "ring order {order}");
        let (intf_refs, intf) = grants.grant_pages(domid, 1);
        let (data_refs, data) = grants.grant_pages(domid, 1 << order);
        let (port, events_end) = events.alloc_unbound(domid, BACKEND_DOMID);
        let fe = SimFrontend {
            domid,
            mem: FrontendMemory { intf, data },
            intf_ref: intf_refs[0],
            data_refs,
            order,
            size: ring_size(order),
            port,
            events: events_end,
            grants: grants.clone(),
            event_table: events.clone(),
        };
        for (i, r) in fe.data_refs.iter().enumerate() {
            fe.poke_index(REFS + 4 * i, *r);
        }
        // Linux writes the order after the refs; the backend maps only after xenstore says so.
        fe.poke_index(RING_ORDER, order);
        fe
    }

    /// The frontend's domain.
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// The intf page's grant ref (what Linux writes to `ring-ref<N>`).
    pub fn intf_ref(&self) -> u32 {
        self.intf_ref
    }

    /// The data pages' grant refs, as granted (the intf page may since have been corrupted).
    pub fn data_refs(&self) -> &[u32] {
        &self.data_refs
    }

    /// The unbound port allocated for the backend (what Linux writes to `event-channel-<N>`).
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The frontend's end of the event channel.
    pub fn events(&self) -> &SimEventChannel {
        &self.events
    }

    /// The ring order the frontend set up.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// The grant table holding the ring's pages.
    pub fn grant_table(&self) -> &SimGrantTable {
        &self.grants
    }

    /// The event channel table holding the port.
    pub fn event_table(&self) -> &SimEventTable {
        &self.event_table
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
        // SAFETY: the intf page is one page-aligned, read-write page alive while `self` is;
        // `word_at` checks the offset.
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
    /// written), then publish `publish` of them.
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
