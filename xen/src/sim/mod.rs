//! Simulated Xen for fast tests: grant table, event channels and a 9pfs frontend in this
//! process.
//!
//! [`SimGrantTable`] and [`SimEventTable`] implement the same traits as `/dev/xen/gntdev` and
//! `/dev/xen/evtchn` ([`GrantMapper`](crate::grant::GrantMapper),
//! [`EventChannels`](crate::evtchn::EventChannels)), with the hypervisor's refusals (refs not
//! granted to us, ports not allocated for us) and leak counters for teardown tests; their
//! [`SimGntAlloc`] and [`SimPortAllocator`] are the frontend's side, as `/dev/xen/gntalloc` and
//! `/dev/xen/evtchn` are to a guest ([`GrantSharer`](crate::grant::GrantSharer),
//! [`UnboundPorts`](crate::evtchn::UnboundPorts)). [`SimFrontend`] is the
//! [`FrontendRing`](crate::frontend::FrontendRing) over them: it sets a ring up the way Linux's
//! `trans_xen.c` does and speaks the ring protocol from the guest's side, so the backend's code
//! runs unchanged on top: the same [`map_ring`] and [`Ring`]. It never replaces the real-Xen
//! test.

mod events;
mod frontend;
mod grants;
pub mod linux;

pub use events::{BACKEND_DOMID, SimBoundPort, SimEventTable, SimLocalPort, SimPortAllocator};
pub use frontend::SimFrontend;
pub use grants::{FrontendPages, SimGntAlloc, SimGrantTable, SimMapping, SimSharedPages};

use crate::ring::{MAX_RING_ORDER, MapRingError, Ring, RingPages, map_ring};

/// The backend's view of a simulated ring.
pub type SimRing = Ring<RingPages<SimMapping>>;

/// The domain [`ring_pair`]'s frontend runs in.
pub const FRONTEND_DOMID: u16 = 7;

/// A backend ring of `order` mapped (with [`map_ring`]) from a new [`SimFrontend`] in domain
/// [`FRONTEND_DOMID`], over fresh grant and event tables (reachable through the frontend).
pub fn ring_pair(order: u32) -> Result<(SimRing, SimFrontend), MapRingError> {
    let fe = SimFrontend::new(
        &SimGrantTable::new(),
        &SimEventTable::new(),
        FRONTEND_DOMID,
        order,
    );
    let ring = map_ring(
        fe.grant_table(),
        FRONTEND_DOMID,
        fe.intf_ref(),
        MAX_RING_ORDER,
    )?;
    Ok((ring, fe))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evtchn::{EventChannel, EventChannels};
    use crate::grant::{GrantError, GrantMapper, GrantMapping};
    use crate::ring::{IN_CONS, IN_PROD, OUT_CONS, OUT_PROD, PAGE_SIZE, RingError, RingMemory};
    use bytes::Bytes;
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
        let fe = SimFrontend::new(&SimGrantTable::new(), &SimEventTable::new(), 3, 1);
        fe.set_ring_order(12);
        assert!(matches!(
            map_ring(fe.grant_table(), 3, fe.intf_ref(), MAX_RING_ORDER),
            Err(MapRingError::Ring {
                error: RingError::BadOrder { order: 12, max: 9 },
                ..
            })
        ));
    }

    /// A frontend of `order` in domain 3 over fresh tables.
    fn frontend(order: u32) -> SimFrontend {
        SimFrontend::new(&SimGrantTable::new(), &SimEventTable::new(), 3, order)
    }

    #[test]
    fn the_frontend_sets_up_like_linux() {
        let fe = frontend(2);
        // The intf page is granted first, then the data pages, with irregular refs.
        assert_eq!((fe.intf_ref(), fe.data_refs()), (8, &[9, 11, 12, 14][..]));
        let intf = fe.grant_table().map(3, &[fe.intf_ref()]).unwrap();
        let word = |at: usize| {
            // SAFETY: `intf` is a live, page-aligned mapping of one page; `at` is inside it.
            unsafe { intf.as_ptr().add(at).cast::<u32>().read_volatile() }
        };
        assert_eq!(word(crate::ring::RING_ORDER), 2);
        let refs: Vec<u32> = (0..4).map(|i| word(crate::ring::REFS + 4 * i)).collect();
        assert_eq!(refs, fe.data_refs());
        let port = fe.event_table().bind_interdomain(3, fe.port()).unwrap();
        fe.events().notify().unwrap();
        assert!(
            port.ack().unwrap(),
            "the frontend's port reaches the backend"
        );
    }

    #[test]
    fn orders_above_the_maximum_or_zero_are_refused_before_mapping_data() {
        let fe = frontend(3);
        let refused = |max| match map_ring(fe.grant_table(), 3, fe.intf_ref(), max) {
            Err(MapRingError::Ring {
                error: RingError::BadOrder { order, max },
                domid: 3,
                intf_ref,
            }) => {
                assert_eq!(intf_ref, fe.intf_ref());
                assert_eq!(fe.grant_table().live_mappings(), 0, "intf page unmapped");
                (order, max)
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("mapped with max {max}"),
        };
        assert_eq!(refused(2), (3, 2));
        // Revoking every data page proves the refusal came before any data page was mapped:
        // the error is still the order, not a refused grant.
        for r in fe.data_refs() {
            fe.grant_table().revoke(*r);
        }
        assert_eq!(refused(2), (3, 2));
        fe.set_ring_order(0);
        assert_eq!(refused(9), (0, 9));
        fe.set_ring_order(10);
        assert_eq!(
            refused(12),
            (10, 9),
            "max_order is capped at MAX_RING_ORDER"
        );
        let msg = map_ring(fe.grant_table(), 3, fe.intf_ref(), 9)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            msg,
            "9pfs ring at grant ref 8 of domain 3: ring order 10 is outside the accepted 1..=9"
        );
    }

    #[test]
    fn a_corrupted_data_ref_is_refused_and_nothing_stays_mapped() {
        let fe = frontend(2);
        fe.set_data_ref(2, 4242);
        match map_ring(fe.grant_table(), 3, fe.intf_ref(), 9) {
            Err(MapRingError::Data { refs, error, .. }) => {
                assert_eq!(refs.count(), 4);
                assert!(matches!(
                    error,
                    GrantError::Denied {
                        grant_ref: 4242,
                        ..
                    }
                ));
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("mapped a corrupted ref"),
        }
        assert_eq!(fe.grant_table().live_mappings(), 0);
        // Another domain's page is as bad as a bogus ref.
        let other = SimFrontend::new(fe.grant_table(), fe.event_table(), 4, 1);
        fe.set_data_ref(2, other.data_refs()[0]);
        let msg = map_ring(fe.grant_table(), 3, fe.intf_ref(), 9)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            msg,
            format!(
                "9pfs ring at grant ref 8 of domain 3: data pages: domain 3, grant ref {}: granted by domain 4, not domain 3",
                other.data_refs()[0]
            )
        );
        // And a wrong intf ref.
        assert!(matches!(
            map_ring(fe.grant_table(), 4, fe.intf_ref(), 9),
            Err(MapRingError::Intf {
                domid: 4,
                intf_ref: 8,
                ..
            })
        ));
        assert_eq!(fe.grant_table().live_mappings(), 0);
    }

    #[test]
    fn a_frontend_changing_the_order_later_changes_nothing() {
        let (mut ring, fe) = ring_pair(1).unwrap();
        assert_eq!((ring.order(), ring.size()), (1, 4096));
        assert_eq!(ring.memory().data_len(), 2 * 4096);
        fe.set_ring_order(9);
        // Claim 1 MiB queued: judged against the 4 KiB ring actually mapped.
        fe.poke_index(OUT_PROD, 1 << 20);
        assert!(matches!(
            ring.read_request(1 << 20),
            Err(RingError::Corrupt { size: 4096, .. })
        ));
        assert_eq!(ring.size(), 4096);
        // A response larger than the real ring is refused, not written past the mapping.
        assert!(matches!(
            ring.write_response(&message(8000, 1, 0)),
            Err(RingError::ResponseTooLarge { size: 4096, .. })
        ));
    }

    #[test]
    fn receive_after_header_trusts_the_header_like_linux() {
        let (mut ring, fe) = ring_pair(1).unwrap();
        assert_eq!(fe.receive_after_header(8192), Ok(None));
        let resp = message(100, 4, 0x5a);
        assert!(ring.write_response(&resp).unwrap());
        // Pretend only the header was published: `receive` waits, Linux's way reads on.
        fe.poke_index(IN_PROD, 7);
        assert_eq!(fe.receive(8192), Ok(None));
        assert_eq!(
            fe.receive_after_header(8192).unwrap().as_deref(),
            Some(&resp[..])
        );
        fe.poke_index(IN_PROD, 100);
        assert_eq!(
            fe.receive_after_header(8192),
            Ok(None),
            "in_cons moved past it"
        );
        assert!(ring.write_response(&message(300, 5, 0)).unwrap());
        assert!(matches!(
            fe.receive_after_header(200),
            Err(RingError::BadMessageSize { size: 300, .. })
        ));
    }

    #[test]
    fn teardown_leaves_nothing_mapped_or_bound() {
        let grants = SimGrantTable::new();
        let events = SimEventTable::new();
        let fes: Vec<SimFrontend> = (0..3)
            .map(|_| SimFrontend::new(&grants, &events, 3, 2))
            .collect();
        let rings: Vec<_> = fes
            .iter()
            .map(|fe| {
                (
                    map_ring(&grants, 3, fe.intf_ref(), 9).unwrap(),
                    events.bind_interdomain(3, fe.port()).unwrap(),
                )
            })
            .collect();
        assert_eq!((grants.live_mappings(), events.bound_ports()), (6, 3));
        drop(rings);
        assert_eq!((grants.live_mappings(), events.bound_ports()), (0, 0));
    }

    #[test]
    fn data_pages_are_laid_out_in_ref_order() {
        // The backend's contiguous data area follows the intf page's ref list; a message
        // spanning every page of an order-3 ring arrives intact.
        let (mut ring, fe) = ring_pair(3).unwrap();
        assert_eq!(ring.memory().data_mapping().len(), 8 * PAGE_SIZE);
        let req: Vec<u8> = {
            let mut m = message(16384, 9, 0);
            for (i, b) in m.iter_mut().enumerate().skip(7) {
                *b = (i % 251) as u8;
            }
            m
        };
        assert!(fe.send(&req).unwrap());
        assert_eq!(
            ring.read_request(1 << 20).unwrap().as_deref(),
            Some(&req[..])
        );
        assert!(ring.write_response(&req).unwrap());
        assert_eq!(fe.receive(1 << 20).unwrap(), Some(Bytes::from(req)));
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
