//! The 9pfs backend's xenbus state machine against the real C xenstored (with the fakexen
//! shim) and simulated grants/event channels: a frontend written the way Linux's
//! `trans_xen.c` behaves writes its nodes, the backend maps, connects, serves (an echo here; the
//! real server runs over the same rings in the workspace tests), closes, reconnects, and
//! disconnects hostile frontends with a reason while other devices keep working.

mod support;

use envoy_xen::device::{BackendLimits, DeviceEnd, MappedRing, run_device};
use envoy_xen::doorbell::Doorbell;
use envoy_xen::evtchn::EventChannel;
use envoy_xen::ring::OUT_PROD;
use envoy_xen::sim::{SimEventTable, SimFrontend, SimGrantTable};
use std::time::{Duration, Instant};
use support::xl::*;
use tokio::sync::watch;

type Rings = Vec<MappedRing<SimGrantTable, SimEventTable>>;

/// The backend's session for these tests: echo every request back (type + 1) until stopped.
async fn echo(rings: Rings, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let bells: Vec<Doorbell> = rings
        .iter()
        .map(|r| Doorbell::new(&r.port).unwrap())
        .collect();
    let mut rings = rings;
    loop {
        for r in rings.iter_mut() {
            r.port.ack().map_err(|e| e.to_string())?;
            let mut rang = false;
            while let Some(req) = r.ring.read_request(65536).map_err(|e| e.to_string())? {
                let mut reply = req.to_vec();
                reply[4] += 1;
                assert!(r.ring.write_response(&reply).map_err(|e| e.to_string())?);
                rang = true;
            }
            if rang {
                r.port.notify().map_err(|e| e.to_string())?;
            }
        }
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = bells[0].rung() => {}
            _ = bells[1].rung() => {}
        }
    }
}

/// One request through ring `r` of the guest, answered by the echo.
async fn round_trip(rings: &[SimFrontend], r: usize, tag: u16) {
    let mut req = vec![0u8; 32];
    req[..4].copy_from_slice(&32u32.to_le_bytes());
    req[4] = 100;
    req[5..7].copy_from_slice(&tag.to_le_bytes());
    assert!(rings[r].send(&req).unwrap());
    rings[r].events().notify().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(reply) = rings[r].receive(65536).unwrap() {
            assert_eq!(reply[4], 101);
            assert_eq!(&reply[5..7], &tag.to_le_bytes());
            return;
        }
        assert!(Instant::now() < deadline, "no echo on ring {r}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

type Host = SimXenHost;

async fn host() -> Host {
    SimXenHost::start().await
}

impl Host {
    /// Run the backend of device (domid, devid) on a task.
    fn backend(&self, domid: u16, devid: u32) -> tokio::task::JoinHandle<DeviceEnd> {
        let (xs, grants, events) = (self.xs.clone(), self.grants.clone(), self.events.clone());
        let stop = self.stop.subscribe();
        tokio::spawn(async move {
            run_device(
                &xs,
                &backend_path(domid, devid),
                &grants,
                &events,
                &BackendLimits::default(),
                stop,
                |_, rings, stop| echo(rings, stop),
            )
            .await
            .expect("the device loop ends cleanly")
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_serve_close_reconnect_and_removal() {
    let h = host().await;
    let (domid, devid) = (3, 0);
    let (b, f) = (backend_path(domid, devid), frontend_path(domid, devid));
    toolstack_creates(&h.xs, domid, devid).await;
    let backend = h.backend(domid, devid);
    // InitWait comes with the features (libxl 4.20 waits for it).
    wait_for(&h.xs, &format!("{b}/state"), "2").await;
    for (key, want) in [
        ("versions", "1"),
        ("max-rings", "8"),
        ("max-ring-page-order", "9"),
    ] {
        assert_eq!(h.xs.read_string(&format!("{b}/{key}")).await.unwrap(), want);
    }
    let rings = frontend_publishes(&h.xs, &h.grants, &h.events, domid, devid, 9).await;
    wait_for(&h.xs, &format!("{b}/state"), "4").await;
    h.xs.write(&format!("{f}/state"), "4").await.unwrap();
    assert_eq!(
        h.grants.live_mappings(),
        4,
        "intf + data for each of 2 rings"
    );
    assert_eq!(h.events.bound_ports(), 2);
    round_trip(&rings, 0, 1).await;
    round_trip(&rings, 1, 2).await;

    // The guest unloads its driver: Closing → the backend lets go of everything → Closed.
    h.xs.write(&format!("{f}/state"), "5").await.unwrap();
    wait_for(&h.xs, &format!("{b}/state"), "5").await;
    assert_eq!(h.grants.live_mappings(), 0, "rings unmapped at Closing");
    assert_eq!(h.events.bound_ports(), 0, "ports unbound at Closing");
    h.xs.write(&format!("{f}/state"), "6").await.unwrap();
    wait_for(&h.xs, &format!("{b}/state"), "6").await;
    drop(rings);

    // ... and loads it again: a fresh handshake on the same device.
    h.xs.write(&format!("{f}/state"), "1").await.unwrap();
    wait_for(&h.xs, &format!("{b}/state"), "2").await;
    let rings = frontend_publishes(&h.xs, &h.grants, &h.events, domid, devid, 4).await;
    wait_for(&h.xs, &format!("{b}/state"), "4").await;
    round_trip(&rings, 1, 7).await;

    // xl destroy: both directories go; the backend ends and nothing stays mapped or bound.
    toolstack_destroys(&h.xs, domid, devid).await;
    let end = tokio::time::timeout(Duration::from_secs(10), backend)
        .await
        .expect("the backend notices the removal")
        .unwrap();
    assert_eq!(end, DeviceEnd::Removed);
    assert_eq!(h.grants.live_mappings(), 0);
    assert_eq!(h.events.bound_ports(), 0);
    assert!(
        h.xs.try_read_string(&format!("{b}/state"))
            .await
            .unwrap()
            .is_none(),
        "a removed device is not recreated by a late state write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xl_destroy_gets_closed_once_everything_is_released() {
    // libxl's forced removal (xl destroy, the guest paused): the frontend's directory goes and
    // the backend is asked to close in one transaction; libxl then waits (10 s at most) for the
    // backend to say Closed before it removes the backend's directory and the domain.
    let h = host().await;
    let (domid, devid) = (7, 0);
    let (b, f) = (backend_path(domid, devid), frontend_path(domid, devid));
    toolstack_creates(&h.xs, domid, devid).await;
    let backend = h.backend(domid, devid);
    let rings = frontend_publishes(&h.xs, &h.grants, &h.events, domid, devid, 4).await;
    wait_for(&h.xs, &format!("{b}/state"), "4").await;
    h.xs.write(&format!("{f}/state"), "4").await.unwrap();
    round_trip(&rings, 0, 1).await;
    h.xs.transaction(async |tx| {
        tx.rm(&f).await?;
        tx.write(&format!("{b}/online"), "0").await?;
        tx.write(&format!("{b}/state"), "5").await
    })
    .await
    .unwrap();
    wait_for(&h.xs, &format!("{b}/state"), "6").await;
    assert_eq!(h.grants.live_mappings(), 0, "unmapped before Closed");
    assert_eq!(h.events.bound_ports(), 0, "unbound before Closed");
    let end = tokio::time::timeout(Duration::from_secs(10), backend)
        .await
        .expect("the backend ends")
        .unwrap();
    assert_eq!(end, DeviceEnd::Removed);
    // A backend started for the dying device (envoyd rescans on every change) never announces it.
    let again = h.backend(domid, devid);
    let end = tokio::time::timeout(Duration::from_secs(10), again)
        .await
        .expect("a second backend ends at once")
        .unwrap();
    assert_eq!(end, DeviceEnd::Removed);
    assert_eq!(h.xs.read_string(&format!("{b}/state")).await.unwrap(), "6");
    h.xs.rm(&b).await.unwrap();
    drop(rings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_frontend_already_initialised_is_connected() {
    // Old Linux frontends set up in probe(): the rings are published before the backend runs.
    let h = host().await;
    toolstack_creates(&h.xs, 4, 0).await;
    let rings = frontend_publishes(&h.xs, &h.grants, &h.events, 4, 0, 9).await;
    let backend = h.backend(4, 0);
    wait_for(&h.xs, &format!("{}/state", backend_path(4, 0)), "4").await;
    round_trip(&rings, 0, 3).await;
    h.stop.send(true).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), backend)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, DeviceEnd::Shutdown);
    assert_eq!(h.grants.live_mappings(), 0);
}

/// A hostile frontend on device (5, 0) while a good one on (6, 0) keeps working.
async fn hostile(poison: impl AsyncFnOnce(&Host, &str), reason_has: &str) {
    let h = host().await;
    let (bad_b, bad_f) = (backend_path(5, 0), frontend_path(5, 0));
    toolstack_creates(&h.xs, 5, 0).await;
    toolstack_creates(&h.xs, 6, 0).await;
    let bad = h.backend(5, 0);
    let good = h.backend(6, 0);
    wait_for(&h.xs, &format!("{bad_b}/state"), "2").await;
    wait_for(&h.xs, &format!("{}/state", backend_path(6, 0)), "2").await;
    let good_rings = frontend_publishes(&h.xs, &h.grants, &h.events, 6, 0, 9).await;
    wait_for(&h.xs, &format!("{}/state", backend_path(6, 0)), "4").await;
    round_trip(&good_rings, 0, 1).await;

    poison(&h, &bad_f).await;
    wait_for(&h.xs, &format!("{bad_b}/state"), "5").await;
    let error =
        h.xs.read_string(&format!("/local/domain/0/error{}/error", &bad_b[15..]))
            .await
            .expect("the reason is recorded under error/");
    assert!(
        error.contains(reason_has),
        "reason {error:?} should mention {reason_has:?}"
    );
    assert_eq!(
        h.grants.live_mappings(),
        4,
        "only the good device's rings stay mapped"
    );
    // The good device is untouched; the bad one's backend is still there for a fresh start.
    round_trip(&good_rings, 1, 2).await;
    assert!(!bad.is_finished() && !good.is_finished());
    toolstack_destroys(&h.xs, 5, 0).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), bad)
            .await
            .unwrap()
            .unwrap(),
        DeviceEnd::Removed
    );
    round_trip(&good_rings, 0, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_order_above_the_maximum_disconnects() {
    hostile(
        async |h, _| {
            // Ring 1's intf page claims order 10.
            let _rings = frontend_publishes_with(
                &h.xs,
                &h.grants,
                &h.events,
                5,
                0,
                2,
                |r| r[1].set_ring_order(10),
                None,
            )
            .await;
            // (The rings must outlive the mapping attempt.)
            wait_for(&h.xs, &format!("{}/state", backend_path(5, 0)), "5").await;
        },
        "ring order 10",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bogus_grant_ref_disconnects() {
    hostile(
        async |h, _| {
            let _rings = frontend_publishes_with(
                &h.xs,
                &h.grants,
                &h.events,
                5,
                0,
                2,
                |_| {},
                Some(987_654),
            )
            .await;
            wait_for(&h.xs, &format!("{}/state", backend_path(5, 0)), "5").await;
        },
        "987654",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_rings_or_a_wrong_version_disconnects() {
    hostile(
        async |h, f| {
            h.xs.transaction(async |tx| {
                tx.write(&format!("{f}/version"), "1").await?;
                tx.write(&format!("{f}/num-rings"), "4096").await?;
                tx.write(&format!("{f}/state"), "3").await?;
                Ok(())
            })
            .await
            .unwrap();
        },
        "num-rings = 4096",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_claiming_more_than_the_ring_disconnect_in_session() {
    // A session error (here from the echo's ring read) disconnects the device the same way.
    hostile(
        async |h, f| {
            let rings = frontend_publishes(&h.xs, &h.grants, &h.events, 5, 0, 2).await;
            wait_for(&h.xs, &format!("{}/state", backend_path(5, 0)), "4").await;
            rings[0].poke_index(OUT_PROD, 1 << 30);
            rings[0].events().notify().unwrap();
            wait_for(&h.xs, &format!("{}/state", backend_path(5, 0)), "5").await;
            let _ = f;
        },
        "inconsistent",
    )
    .await;
}
