//! envoyd's real server over Xen rings with a hostile guest beside a good one: the hostile
//! device's session ends with the ring error as its logged reason, its rings are unmapped, and
//! the server and the other guest keep working.

use envoy::{Ended, ExportFs, Server, ServerConfig};
use envoy_protocol::Dialect;
use envoy_tests::xen::SimHost;
use envoy_tools::client::Client;
use envoy_transport::Peer;
use envoy_transport::xen::{XenOptions, XenRing, xen_channel};
use envoy_xen::evtchn::{EventChannel, EventChannels};
use envoy_xen::ring::{OUT_PROD, map_ring};
use envoy_xen::sim::SimFrontend;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_guest_is_disconnected_and_the_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello"), b"hello from dom0").unwrap();
    let fs = ExportFs::new(dir.path(), false).unwrap();
    let server = Server::new(Arc::new(fs), ServerConfig::default());
    let (_stop, stop_rx) = watch::channel(false);
    let host = SimHost::new();

    // A good guest, through the Linux frontend model.
    let good = Client::over_stream(
        host.connect(server.clone(), stop_rx.clone()).await,
        Dialect::P9P2000L,
        512 * 1024,
    )
    .await
    .unwrap();
    good.attach(0, "root", "", 0).await.unwrap();
    let read_hello = async |c: &Client, fid: u32| {
        c.walk(0, fid, &["hello"]).await.unwrap();
        c.lopen(fid, envoy_protocol::consts::P9_DOTL_RDONLY)
            .await
            .unwrap();
        let data = c.read(fid, 0, 100).await.unwrap();
        c.clunk(fid).await.unwrap();
        data
    };
    assert_eq!(&read_hello(&good, 1).await[..], b"hello from dom0");

    // A hostile guest: two rings mapped and served by the same server.
    let domid = 77;
    let rings: Vec<_> = (0..2)
        .map(|_| SimFrontend::new(&host.grants, &host.events, domid, 3))
        .collect();
    let mapped_before = host.grants.live_mappings();
    let backend = rings
        .iter()
        .map(|fe| XenRing {
            ring: map_ring(&host.grants, domid, fe.intf_ref(), 9).unwrap(),
            events: host.events.bind_interdomain(domid, fe.port()).unwrap(),
        })
        .collect();
    let (channel, mut device) = xen_channel(
        backend,
        Peer::Xen { domid, devid: 0 },
        XenOptions::default(),
    )
    .unwrap();
    let session = tokio::spawn(server.clone().serve(channel, stop_rx.clone()));
    assert_eq!(host.grants.live_mappings(), mapped_before + 4);
    // Its out-ring indexes claim a gigabyte of requests.
    rings[1].poke_index(OUT_PROD, 1 << 30);
    rings[1].events().notify().unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the hostile session ends")
        .unwrap();
    match ended {
        Ended::Failed(reason) => assert!(
            reason.contains("inconsistent") && reason.contains("bytes queued"),
            "reason: {reason}"
        ),
        other => panic!("expected a failed session, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(10), device.stopped())
        .await
        .expect("its ring tasks end");
    assert_eq!(
        host.grants.live_mappings(),
        mapped_before,
        "the hostile guest's rings are unmapped"
    );

    // The good guest and new guests are still served.
    assert_eq!(&read_hello(&good, 2).await[..], b"hello from dom0");
    let late = Client::over_stream(
        host.connect(server.clone(), stop_rx).await,
        Dialect::P9P2000U,
        65536,
    )
    .await
    .unwrap();
    late.attach(0, "root", "", 0).await.unwrap();
}
