//! The Xen ring transport against simulated guests: routing by ring, many tags in flight per
//! ring, backpressure both ways, the Rflush/Rversion ordering barrier, hostile guests, and a
//! property test of random traffic across wrap-around with a guest that publishes slowly.

use bytes::Bytes;
use envoy_transport::xen::{XenDevice, XenOptions, XenRing, XenRx, XenTx, xen_channel};
use envoy_transport::{Channel, FrameRx, FrameTx, Peer, TransportError};
use envoy_xen::evtchn::{EventChannel, EventChannels};
use envoy_xen::ring::{OUT_PROD, RingError, map_ring};
use envoy_xen::sim::{SimEventTable, SimFrontend, SimGrantTable};
use std::time::{Duration, Instant};

const DOMID: u16 = 9;

struct Guest {
    grants: SimGrantTable,
    events: SimEventTable,
    rings: Vec<SimFrontend>,
}

/// A guest with `n` rings of `order`, and the backend's channel over them.
fn device(n: usize, order: u32, options: XenOptions) -> (Guest, Channel<XenRx, XenTx>, XenDevice) {
    let grants = SimGrantTable::new();
    let events = SimEventTable::new();
    attach(grants, events, DOMID, n, order, options)
}

fn attach(
    grants: SimGrantTable,
    events: SimEventTable,
    domid: u16,
    n: usize,
    order: u32,
    options: XenOptions,
) -> (Guest, Channel<XenRx, XenTx>, XenDevice) {
    let rings: Vec<_> = (0..n)
        .map(|_| SimFrontend::new(&grants, &events, domid, order))
        .collect();
    let backend = rings
        .iter()
        .map(|fe| XenRing {
            ring: map_ring(&grants, domid, fe.intf_ref(), 9).unwrap(),
            events: events.bind_interdomain(domid, fe.port()).unwrap(),
        })
        .collect();
    let (channel, dev) = xen_channel(backend, Peer::Xen { domid, devid: 0 }, options).unwrap();
    (
        Guest {
            grants,
            events,
            rings,
        },
        channel,
        dev,
    )
}

fn frame(ty: u8, tag: u16, len: usize, fill: u8) -> Vec<u8> {
    let mut m = vec![fill; len];
    m[..4].copy_from_slice(&(len as u32).to_le_bytes());
    m[4] = ty;
    m[5..7].copy_from_slice(&tag.to_le_bytes());
    m
}

fn tag_of(f: &[u8]) -> u16 {
    u16::from_le_bytes([f[5], f[6]])
}

impl Guest {
    /// Put a whole request on ring `r` and ring the backend.
    fn send(&self, r: usize, msg: &[u8]) {
        assert!(self.rings[r].send(msg).unwrap(), "request fits");
        self.rings[r].events().notify().unwrap();
    }

    /// Wait (bounded) for a response on ring `r`.
    async fn receive(&self, r: usize) -> Bytes {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = self.rings[r].receive(1 << 20).unwrap() {
                self.rings[r].events().notify().unwrap();
                return m;
            }
            assert!(Instant::now() < deadline, "no response on ring {r}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Nothing arrives on ring `r` for a while.
    async fn quiet(&self, r: usize) -> bool {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.rings[r].in_queued() == 0
    }
}

async fn recv(rx: &mut XenRx) -> Bytes {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a request within 10 s")
        .expect("no transport error")
        .expect("not the end")
}

#[tokio::test]
async fn replies_return_on_the_ring_the_request_came_in_on() {
    let (guest, Channel { mut rx, mut tx, .. }, _dev) = device(2, 1, XenOptions::default());
    // Tag 4 would be ring 0 by Linux's rule; the backend must not assume the rule.
    guest.send(1, &frame(100, 4, 19, 1));
    guest.send(0, &frame(100, 7, 23, 2));
    let mut got = [recv(&mut rx).await, recv(&mut rx).await];
    got.sort_by_key(|f| tag_of(f));
    assert_eq!(tag_of(&got[0]), 4);
    assert_eq!(tag_of(&got[1]), 7);
    tx.send(&mut vec![
        Bytes::from(frame(101, 7, 30, 3)),
        Bytes::from(frame(101, 4, 31, 4)),
    ])
    .await
    .unwrap();
    assert_eq!(guest.receive(1).await, Bytes::from(frame(101, 4, 31, 4)));
    assert_eq!(guest.receive(0).await, Bytes::from(frame(101, 7, 30, 3)));
}

#[tokio::test]
async fn many_tags_in_flight_per_ring() {
    let (guest, Channel { mut rx, mut tx, .. }, _dev) = device(2, 2, XenOptions::default());
    for tag in 0..16u16 {
        guest.send(tag as usize % 2, &frame(116, tag, 100, tag as u8));
    }
    // All sixteen reach the server before any reply exists.
    let mut tags: Vec<u16> = Vec::new();
    for _ in 0..16 {
        tags.push(tag_of(&recv(&mut rx).await));
    }
    tags.sort();
    assert_eq!(tags, (0..16).collect::<Vec<_>>());
    // Answer last-first; each ring gets its own replies in the order they were sent.
    let mut replies: Vec<Bytes> = (0..16u16)
        .rev()
        .map(|t| Bytes::from(frame(117, t, 50, t as u8)))
        .collect();
    tx.send(&mut replies).await.unwrap();
    for r in 0..2 {
        let mut order = Vec::new();
        for _ in 0..8 {
            order.push(tag_of(&guest.receive(r).await));
        }
        let want: Vec<u16> = (0..16).rev().filter(|t| *t as usize % 2 == r).collect();
        assert_eq!(order, want, "ring {r}");
    }
}

#[tokio::test]
async fn only_one_request_per_ring_when_asked() {
    let options = XenOptions {
        one_request_per_ring: true,
    };
    let (guest, Channel { mut rx, mut tx, .. }, _dev) = device(1, 1, options);
    for tag in 0..3u16 {
        guest.send(0, &frame(116, tag, 40, 0));
    }
    assert_eq!(tag_of(&recv(&mut rx).await), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err(),
        "a second request was taken before the first was answered"
    );
    tx.send(&mut vec![Bytes::from(frame(117, 0, 20, 0))])
        .await
        .unwrap();
    assert_eq!(tag_of(&recv(&mut rx).await), 1);
}

#[tokio::test]
async fn replies_wait_for_room_and_none_is_lost() {
    // Order 1: 4 KiB per direction. Five 3000-byte replies cannot all fit.
    let (guest, Channel { mut rx, mut tx, .. }, _dev) = device(1, 1, XenOptions::default());
    for tag in 0..5u16 {
        guest.send(0, &frame(116, tag, 20, 0));
        recv(&mut rx).await;
    }
    let mut replies: Vec<Bytes> = (0..5u16)
        .map(|t| Bytes::from(frame(117, t, 3000, t as u8)))
        .collect();
    tx.send(&mut replies).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        guest.rings[0].in_queued(),
        3000,
        "one reply fits, the rest wait"
    );
    for t in 0..5u16 {
        assert_eq!(
            guest.receive(0).await,
            Bytes::from(frame(117, t, 3000, t as u8))
        );
    }
}

#[tokio::test]
async fn requests_wait_in_the_ring_while_the_server_is_busy() {
    // The server never reads: the transport's queue fills, then requests stay in the ring and
    // the guest sees it full (backpressure), without anything being lost.
    let (
        guest,
        Channel {
            mut rx, tx: _tx, ..
        },
        _dev,
    ) = device(1, 4, XenOptions::default());
    let mut sent = 0u16;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if guest.rings[0].send(&frame(116, sent, 500, 0)).unwrap() {
            guest.rings[0].events().notify().unwrap();
            sent += 1;
            continue;
        }
        // Full: give the backend a chance to drain, and stop once it no longer does.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !guest.rings[0].send(&frame(116, sent, 500, 0)).unwrap() {
            break;
        }
        guest.rings[0].events().notify().unwrap();
        sent += 1;
    }
    assert!(guest.rings[0].out_free() < 500, "the out ring filled up");
    assert!(
        sent > 64,
        "the transport took a queue's worth first ({sent})"
    );
    for want in 0..sent {
        assert_eq!(tag_of(&recv(&mut rx).await), want, "in order, none lost");
    }
}

#[tokio::test]
async fn rflush_waits_until_earlier_replies_on_other_rings_are_in_their_ring() {
    let (guest, Channel { mut rx, mut tx, .. }, _dev) = device(2, 1, XenOptions::default());
    guest.send(0, &frame(116, 10, 30, 0)); // Tread, tag 10 (ring 0)
    guest.send(0, &frame(116, 12, 30, 0)); // Tread, tag 12 (ring 0)
    guest.send(1, &frame(108, 11, 9, 0)); // Tflush of tag 10, tag 11 (ring 1)
    for _ in 0..3 {
        recv(&mut rx).await;
    }
    // Ring 0 takes only one of the two big replies until the guest reads it.
    let sender = tokio::spawn(async move {
        tx.send(&mut vec![
            Bytes::from(frame(117, 12, 3000, 1)),
            Bytes::from(frame(117, 10, 3000, 2)),
            Bytes::from(frame(109, 11, 7, 0)),
        ])
        .await
        .unwrap();
        tx
    });
    assert!(
        guest.quiet(1).await,
        "Rflush published while the flushed request's reply was still held"
    );
    assert_eq!(tag_of(&guest.receive(0).await), 12);
    assert_eq!(tag_of(&guest.receive(0).await), 10);
    assert_eq!(tag_of(&guest.receive(1).await), 11, "then the Rflush");
    let _tx = tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .unwrap()
        .unwrap();
}

/// A hostile guest's device ends with the reason; a second guest on the same host keeps
/// working; once the device is stopped nothing of it stays mapped or bound.
async fn hostile(poison: impl FnOnce(&Guest), expect: impl Fn(&TransportError) -> bool) {
    let (
        bad,
        Channel {
            mut rx, tx: bad_tx, ..
        },
        mut bad_dev,
    ) = device(2, 1, XenOptions::default());
    let (
        good,
        Channel {
            rx: mut good_rx,
            tx: mut good_tx,
            ..
        },
        _good_dev,
    ) = attach(
        bad.grants.clone(),
        bad.events.clone(),
        DOMID + 1,
        2,
        1,
        XenOptions::default(),
    );
    assert_eq!(
        bad.grants.live_mappings(),
        8,
        "two devices of two rings, intf + data each"
    );
    poison(&bad);
    let err = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the device fails promptly")
        .expect_err("a transport error");
    assert!(expect(&err), "unexpected error: {err}");
    // The server ends the session: both halves go.
    drop((rx, bad_tx));
    tokio::time::timeout(Duration::from_secs(10), bad_dev.stopped())
        .await
        .expect("every ring task of the bad device ends");
    assert_eq!(
        bad.grants.live_mappings(),
        4,
        "the bad device's rings are unmapped"
    );
    assert_eq!(
        bad.events.bound_ports(),
        2,
        "and its event channels unbound"
    );
    // The other guest is unaffected.
    good.send(1, &frame(116, 3, 40, 7));
    assert_eq!(recv(&mut good_rx).await, Bytes::from(frame(116, 3, 40, 7)));
    good_tx
        .send(&mut vec![Bytes::from(frame(117, 3, 20, 1))])
        .await
        .unwrap();
    assert_eq!(good.receive(1).await, Bytes::from(frame(117, 3, 20, 1)));
}

#[tokio::test]
async fn indexes_claiming_more_than_the_ring_holds_disconnect() {
    hostile(
        |g| {
            g.rings[0].poke_index(OUT_PROD, 100_000);
            g.rings[0].events().notify().unwrap();
        },
        |e| {
            matches!(
                e,
                TransportError::Ring(RingError::Corrupt {
                    queued: 100_000,
                    ..
                })
            )
        },
    )
    .await;
}

#[tokio::test]
async fn a_size_beyond_msize_disconnects() {
    hostile(
        |g| {
            // Before Tversion the limit is 64 KiB, capped by the 4 KiB ring: 4000 is fine for
            // the ring but 70000 is above both.
            let mut m = frame(100, 0, 16, 0);
            m[..4].copy_from_slice(&70_000u32.to_le_bytes());
            g.rings[1].send_partial(&m, 16);
            g.rings[1].events().notify().unwrap();
        },
        |e| {
            matches!(
                e,
                TransportError::Ring(RingError::BadMessageSize { size: 70_000, .. })
            )
        },
    )
    .await;
}

#[tokio::test]
async fn a_size_below_the_header_disconnects() {
    hostile(
        |g| {
            g.rings[0].send_partial(&[3, 0, 0, 0, 100, 0, 0], 7);
            g.rings[0].events().notify().unwrap();
        },
        |e| {
            matches!(
                e,
                TransportError::Ring(RingError::BadMessageSize { size: 3, .. })
            )
        },
    )
    .await;
}

#[tokio::test]
async fn the_medium_limit_is_the_ring_size() {
    let (
        _guest,
        Channel {
            mut rx, tx: _tx, ..
        },
        _dev,
    ) = device(2, 3, XenOptions::default());
    assert_eq!(rx.medium_max_frame(), Some(16384));
    // Even a larger negotiated msize cannot lift the limit above the ring.
    rx.set_max_frame(1 << 20);
    assert_eq!(rx.medium_max_frame(), Some(16384));
}

#[test]
fn bad_ring_orders_and_refs_are_refused_before_serving() {
    let grants = SimGrantTable::new();
    let events = SimEventTable::new();
    let fe = SimFrontend::new(&grants, &events, DOMID, 2);
    fe.set_ring_order(10);
    assert!(
        map_ring(&grants, DOMID, fe.intf_ref(), 9).is_err(),
        "order above 9"
    );
    fe.set_ring_order(3);
    assert!(
        map_ring(&grants, DOMID, fe.intf_ref(), 2).is_err(),
        "order above the offer"
    );
    fe.set_ring_order(2);
    fe.set_data_ref(1, 999_999);
    assert!(
        map_ring(&grants, DOMID, fe.intf_ref(), 9).is_err(),
        "bogus data ref"
    );
    assert!(
        map_ring(&grants, DOMID, 424_242, 9).is_err(),
        "bogus intf ref"
    );
    assert_eq!(grants.live_mappings(), 0, "refusals leave nothing mapped");
}

mod random_traffic {
    //! Random sizes and ring choices across wrap-around (4 KiB rings), a guest that publishes
    //! each request in several steps and reads responses only now and then (so the backend
    //! keeps meeting a full `in` ring): every message arrives once, whole, in order per ring.
    use super::*;
    use proptest::prelude::*;

    async fn run(msgs: Vec<(usize, usize, usize)>, drain_every: usize) {
        let (guest, Channel { mut rx, mut tx, .. }, _dev) = device(2, 1, XenOptions::default());
        // The server: echo each request back as its reply (type + 1).
        let echo = tokio::spawn(async move {
            while let Ok(Some(f)) = rx.recv().await {
                let mut r = f.to_vec();
                r[4] += 1;
                tx.send(&mut vec![Bytes::from(r)]).await.unwrap();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut expected: [Vec<Vec<u8>>; 2] = Default::default();
        let mut got: [Vec<Bytes>; 2] = Default::default();
        let drain = |got: &mut [Vec<Bytes>; 2]| {
            for (r, fe) in guest.rings.iter().enumerate() {
                while let Some(m) = fe.receive(1 << 16).unwrap() {
                    got[r].push(m);
                }
                fe.events().notify().unwrap();
            }
        };
        for (i, (len, ring, steps)) in msgs.iter().copied().enumerate() {
            let msg = frame(116, i as u16, len, i as u8);
            let fe = &guest.rings[ring];
            while fe.out_free() < len {
                assert!(
                    Instant::now() < deadline,
                    "the backend stopped taking requests"
                );
                drain(&mut got);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            // Write it all, publish it in `steps` pieces.
            let prod = fe.peek_index(OUT_PROD);
            fe.send_partial(&msg, 0);
            for k in 1..=steps {
                let upto = if k == steps { len } else { len * k / steps };
                fe.poke_index(OUT_PROD, prod.wrapping_add(upto as u32));
                fe.events().notify().unwrap();
                tokio::task::yield_now().await;
            }
            let mut reply = msg.clone();
            reply[4] += 1;
            expected[ring].push(reply);
            if i % drain_every == 0 {
                drain(&mut got);
            }
        }
        while got[0].len() + got[1].len() < msgs.len() {
            assert!(Instant::now() < deadline, "replies missing");
            drain(&mut got);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        for r in 0..2 {
            let got: Vec<Vec<u8>> = got[r].iter().map(|b| b.to_vec()).collect();
            assert_eq!(
                got, expected[r],
                "ring {r}: every reply once, whole, in order"
            );
        }
        echo.abort();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn nothing_lost_duplicated_or_torn(
            msgs in proptest::collection::vec((7usize..=4096, 0usize..2, 1usize..4), 1..120),
            drain_every in 1usize..20,
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run(msgs, drain_every));
        }
    }
}
