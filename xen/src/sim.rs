//! A simulated 9pfs ring: shared pages in this process and a frontend that follows the same
//! protocol as Linux's `trans_xen.c` (whole requests into `out`, whole responses from `in`).
//!
//! For fast tests of the ring discipline without Xen; it never replaces the real-Xen test.

use crate::ring::{
    IN_CONS, IN_PROD, OUT_CONS, OUT_PROD, PAGE_SIZE, RING_ORDER, Ring, RingError, RingMemory,
    index, put_message, ring_size, take_message,
};
use bytes::Bytes;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Zeroed, page-aligned memory standing in for granted guest pages.
pub struct SimPages {
    intf: *mut u8,
    data: *mut u8,
    data_len: usize,
}

// SAFETY: the pages are plain heap memory owned by this struct until drop; concurrent access
// from several threads goes through atomics (indexes) and ring-ordered copies (data), exactly as
// for real shared guest memory.
unsafe impl Send for SimPages {}
// SAFETY: see `Send`: no `&mut` to the memory is ever handed out.
unsafe impl Sync for SimPages {}

impl SimPages {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, PAGE_SIZE).expect("page layout")
    }

    /// An intf page announcing `order` and `2^order` data pages.
    pub fn allocate(order: u32) -> SimMemory {
        let data_len = 2 * ring_size(order);
        // SAFETY: both layouts have non-zero size; the results are checked for null below.
        let (intf, data) = unsafe {
            (
                alloc_zeroed(Self::layout(PAGE_SIZE)),
                alloc_zeroed(Self::layout(data_len)),
            )
        };
        assert!(
            !intf.is_null() && !data.is_null(),
            "out of memory for simulated ring pages"
        );
        let mem = SimMemory(Arc::new(SimPages {
            intf,
            data,
            data_len,
        }));
        index(&mem, RING_ORDER).store(order, Ordering::Release);
        mem
    }
}

impl Drop for SimPages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly these layouts, freed once (we own them).
        unsafe {
            dealloc(self.intf, Self::layout(PAGE_SIZE));
            dealloc(self.data, Self::layout(self.data_len));
        }
    }
}

/// A handle on simulated shared pages; clones share them (backend and frontend).
#[derive(Clone)]
pub struct SimMemory(Arc<SimPages>);

// SAFETY: `intf` is a page-aligned PAGE_SIZE allocation and `data` a `data_len` allocation, both
// alive while any clone of this handle is.
unsafe impl RingMemory for SimMemory {
    fn intf(&self) -> *mut u8 {
        self.0.intf
    }
    fn data(&self) -> *mut u8 {
        self.0.data
    }
    fn data_len(&self) -> usize {
        self.0.data_len
    }
}

/// The guest's side of a simulated ring.
pub struct SimFrontend {
    mem: SimMemory,
    size: usize,
}

impl SimFrontend {
    /// Queue one whole request in `out`; `false` when it does not fit yet (Linux waits).
    pub fn send(&self, msg: &[u8]) -> Result<bool, RingError> {
        put_message(&self.mem, self.size, self.size, OUT_CONS, OUT_PROD, msg)
    }

    /// Take one whole response from `in`, if complete.
    pub fn receive(&self, max: u32) -> Result<Option<Bytes>, RingError> {
        take_message(&self.mem, 0, self.size, IN_CONS, IN_PROD, max)
    }

    /// Overwrite a shared index (to play a hostile frontend).
    pub fn poke_index(&self, offset: usize, value: u32) {
        index(&self.mem, offset).store(value, Ordering::Release);
    }

    /// Write raw bytes into the `out` ring without publishing them (a request still being
    /// written), then publish `publish` of them.
    pub fn send_partial(&self, msg: &[u8], publish: usize) {
        let prod = index(&self.mem, OUT_PROD).load(Ordering::Relaxed);
        let start = prod as usize & (self.size - 1);
        for (i, b) in msg.iter().enumerate() {
            let at = self.size + ((start + i) & (self.size - 1));
            // SAFETY: `at` is inside the `out` half of the data area (`size..2*size`).
            unsafe { self.mem.data().add(at).write(*b) };
        }
        index(&self.mem, OUT_PROD).store(prod.wrapping_add(publish as u32), Ordering::Release);
    }
}

/// A backend ring and its simulated frontend over shared pages of `order`.
pub fn ring_pair(order: u32) -> Result<(Ring<SimMemory>, SimFrontend), RingError> {
    let mem = SimPages::allocate(order);
    let ring = Ring::new(mem.clone())?;
    let size = ring.size();
    Ok((ring, SimFrontend { mem, size }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(len: usize, tag: u16, fill: u8) -> Vec<u8> {
        let mut m = vec![fill; len];
        m[..4].copy_from_slice(&(len as u32).to_le_bytes());
        m[4] = 117;
        m[5..7].copy_from_slice(&tag.to_le_bytes());
        m
    }

    #[test]
    fn whole_messages_only() {
        let (mut ring, fe) = ring_pair(1).unwrap();
        let req = message(100, 1, 0xab);
        fe.send_partial(&req, 50);
        assert_eq!(
            ring.read_request(8192),
            Ok(None),
            "half a request is not a request"
        );
        fe.send_partial(&req[50..], 0);
        fe.poke_index(OUT_PROD, 100);
        assert_eq!(ring.read_request(8192).unwrap().as_deref(), Some(&req[..]));
        assert_eq!(ring.read_request(8192), Ok(None));
    }

    #[test]
    fn backpressure_when_in_is_full() {
        let (mut ring, fe) = ring_pair(1).unwrap();
        let big = message(3000, 2, 1);
        assert_eq!(ring.write_response(&big), Ok(true));
        assert_eq!(ring.write_response(&big), Ok(false), "only 1096 bytes free");
        assert_eq!(fe.receive(8192).unwrap().as_deref(), Some(&big[..]));
        assert_eq!(ring.write_response(&big), Ok(true), "space came back");
        assert_eq!(
            ring.write_response(&message(5000, 3, 0)),
            Err(RingError::ResponseTooLarge {
                len: 5000,
                size: 4096
            })
        );
    }

    #[test]
    fn hostile_frontends_are_refused() {
        let (mut ring, fe) = ring_pair(1).unwrap();
        fe.send_partial(&[3, 0, 0, 0, 0, 0, 0], 7);
        assert!(matches!(
            ring.read_request(8192),
            Err(RingError::BadMessageSize { size: 3, .. })
        ));
        let (mut ring, fe) = ring_pair(1).unwrap();
        fe.send(&message(2000, 1, 0)).unwrap();
        assert!(
            matches!(
                ring.read_request(1000),
                Err(RingError::BadMessageSize { size: 2000, .. })
            ),
            "above msize"
        );
        let (mut ring, fe) = ring_pair(1).unwrap();
        fe.poke_index(OUT_PROD, 10_000);
        assert!(matches!(
            ring.read_request(8192),
            Err(RingError::Corrupt { queued: 10_000, .. })
        ));
        let mem = SimPages::allocate(12);
        assert!(matches!(
            Ring::new(mem),
            Err(RingError::BadOrder { order: 12 })
        ));
    }

    #[test]
    fn indexes_wrap_around_u32() {
        let (mut ring, fe) = ring_pair(1).unwrap();
        let near = u32::MAX - 10;
        for off in [IN_CONS, IN_PROD, OUT_CONS, OUT_PROD] {
            fe.poke_index(off, near);
        }
        for i in 0..50u16 {
            let req = message(7 + (i as usize * 37) % 900, i, i as u8);
            assert!(fe.send(&req).unwrap());
            assert_eq!(ring.read_request(8192).unwrap().as_deref(), Some(&req[..]));
            assert!(ring.write_response(&req).unwrap());
            assert_eq!(fe.receive(8192).unwrap().as_deref(), Some(&req[..]));
        }
    }

    #[test]
    fn two_threads_many_messages() {
        let (mut ring, fe) = ring_pair(2).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        const N: u16 = 5000;
        let backend = std::thread::spawn(move || {
            let mut served = 0;
            while served < N && std::time::Instant::now() < deadline {
                match ring.read_request(65536).unwrap() {
                    Some(req) => {
                        while !ring.write_response(&req).unwrap() {
                            assert!(
                                std::time::Instant::now() < deadline,
                                "frontend never drained"
                            );
                            std::thread::yield_now();
                        }
                        served += 1;
                    }
                    None => std::thread::yield_now(),
                }
            }
            served
        });
        let (mut sent, mut got) = (0u16, 0u16);
        while got < N && std::time::Instant::now() < deadline {
            if sent < N
                && fe
                    .send(&message(7 + (sent as usize * 131) % 3000, sent, sent as u8))
                    .unwrap()
            {
                sent += 1;
            }
            if let Some(resp) = fe.receive(65536).unwrap() {
                assert_eq!(
                    resp,
                    Bytes::from(message(7 + (got as usize * 131) % 3000, got, got as u8)),
                    "in order, intact"
                );
                got += 1;
            }
        }
        assert_eq!((backend.join().unwrap(), got), (N, N));
    }

    proptest! {
        #[test]
        fn any_sizes_round_trip(sizes in proptest::collection::vec(7usize..4096, 1..60)) {
            let (mut ring, fe) = ring_pair(1).unwrap();
            for (i, len) in sizes.iter().enumerate() {
                let req = message(*len, i as u16, i as u8);
                prop_assert!(fe.send(&req).unwrap());
                prop_assert_eq!(ring.read_request(8192).unwrap(), Some(Bytes::from(req.clone())));
                prop_assert!(ring.write_response(&req).unwrap());
                prop_assert_eq!(fe.receive(8192).unwrap(), Some(Bytes::from(req)));
            }
        }
    }
}
