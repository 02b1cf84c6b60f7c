//! Frames over the real media: TCP on loopback, unix sockets in a temporary directory, and
//! descriptor pairs (socketpairs and pipes), through both the concrete types and the
//! `Endpoint`-driven `bind` / `connect`.

mod common;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::Duration;

use common::{exchange, frame};
use envoy_transport::{
    AnyListener, Endpoint, FrameRx, FrameTx, Listener, Peer, TransportError, UnixListener, bind,
    connect, fd_channel, fd_channel_shared,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_round_trip() {
    let mut listener = bind(&"tcp:127.0.0.1:0".parse().unwrap()).await.unwrap();
    assert!(!listener.is_one_shot());
    let ep = listener.local_endpoint();
    let Endpoint::Tcp(addr) = ep else {
        panic!("not tcp: {ep}")
    };
    assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(addr.port(), 0, "local_endpoint must report the real port");

    let (server, client) = tokio::join!(listener.accept(), connect(&ep));
    let (server, client) = (server.unwrap(), client.unwrap());
    match &server.peer {
        Peer::Tcp(p) => assert!(p.ip().is_loopback()),
        other => panic!("peer {other:?}"),
    }
    assert_eq!(client.peer, Peer::Tcp(addr));
    assert!(server.peer.to_string().starts_with("tcp:127.0.0.1:"));
    match &server.tx {
        envoy_transport::AnyTx::Tcp(tx) => assert!(
            tx.get_ref().as_ref().nodelay().unwrap(),
            "TCP_NODELAY on accept"
        ),
        _ => panic!("not a tcp channel"),
    }
    exchange(server, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unix_round_trip_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.sock");
    let ep = Endpoint::Unix(path.clone());
    let mut listener = bind(&ep).await.unwrap();
    assert_eq!(listener.local_endpoint(), ep);

    let (server, client) = tokio::join!(listener.accept(), connect(&ep));
    let (server, client) = (server.unwrap(), client.unwrap());
    let me = Peer::Unix {
        pid: Some(std::process::id() as i32),
        uid: Some(nix::unistd::getuid().as_raw()),
        gid: Some(nix::unistd::getgid().as_raw()),
    };
    assert_eq!(server.peer, me, "server sees our credentials");
    assert_eq!(client.peer, me, "client sees the server's (also ours)");
    exchange(server, client).await;

    drop(listener);
    assert!(
        !path.exists(),
        "dropping the listener removes its socket file"
    );
}

#[tokio::test]
async fn unix_replaces_only_stale_sockets() {
    let dir = tempfile::tempdir().unwrap();

    // A stale socket (its listener is gone, the file stayed): replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut l = UnixListener::bind(&stale)
        .await
        .expect("stale socket replaced");
    let (a, c) = tokio::join!(l.accept(), tokio::net::UnixStream::connect(&stale));
    a.unwrap();
    c.unwrap();

    // A live socket: refused, and the live one keeps working.
    match UnixListener::bind(&stale).await {
        Err(TransportError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        other => panic!("expected AddrInUse, got {other:?}"),
    }
    let (a, c) = tokio::join!(l.accept(), tokio::net::UnixStream::connect(&stale));
    a.expect("live listener still accepts");
    c.unwrap();

    // Not a socket: refused and untouched.
    let file = dir.path().join("precious");
    std::fs::write(&file, b"keep me").unwrap();
    match bind(&Endpoint::Unix(file.clone())).await {
        Err(TransportError::BadEndpoint(msg)) => assert!(msg.contains("not a socket"), "{msg}"),
        other => panic!("expected BadEndpoint, got {other:?}"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    let (a, b) = StdUnixStream::pair().unwrap();
    (a.into(), b.into())
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fd_socketpair_round_trip() {
    let (a, b) = socketpair();
    let b2 = b.try_clone().unwrap();
    let a_num = a.as_raw_fd();
    let one = fd_channel_shared(a).unwrap();
    assert_eq!(
        one.peer,
        Peer::Fd {
            read: a_num,
            write: a_num
        }
    );
    let two = fd_channel(b, b2).unwrap();
    exchange(one, two).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fd_pipe_pair_round_trip() {
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    let (r1n, w2n) = (r1.as_raw_fd(), w2.as_raw_fd());
    let one = fd_channel(r1, w2).unwrap();
    assert_eq!(
        one.peer,
        Peer::Fd {
            read: r1n,
            write: w2n
        }
    );
    assert_eq!(one.peer.to_string(), format!("fd:{r1n},{w2n}"));
    let two = fd_channel(r2, w1).unwrap();
    exchange(one, two).await;
}

#[tokio::test]
async fn fd_socket_close_is_a_half_close() {
    // One socket both ways: closing our sending direction must not close our receiving one.
    let (a, b) = socketpair();
    let mut one = fd_channel_shared(a).unwrap();
    let mut two = fd_channel_shared(b).unwrap();
    one.tx.close().await.unwrap();
    assert!(two.rx.recv().await.unwrap().is_none(), "peer sees EOF");
    let f = frame(100, 1, 30);
    two.tx.send(&mut vec![f.clone()]).await.unwrap();
    assert_eq!(
        one.rx.recv().await.unwrap().unwrap(),
        f,
        "our receiving side still works"
    );
    assert!(
        one.tx.send(&mut vec![f]).await.is_err(),
        "sending after close fails"
    );
}

#[tokio::test]
async fn fd_rejects_regular_files() {
    let file: OwnedFd = tempfile::tempfile().unwrap().into();
    match fd_channel_shared(file) {
        Err(TransportError::UnsupportedFd { kind, .. }) => assert_eq!(kind, "a regular file"),
        other => panic!("expected UnsupportedFd, got {other:?}"),
    }
}

#[tokio::test]
async fn fd_endpoint_listener_yields_one_channel() {
    let (a, b) = socketpair();
    let n = a.into_raw_fd(); // handed over, as a parent process would
    let ep: Endpoint = format!("fd:{n}").parse().unwrap();
    let mut listener = bind(&ep).await.unwrap();
    assert!(matches!(listener, AnyListener::Fd(_)));
    assert!(listener.is_one_shot());
    assert_eq!(
        listener.local_endpoint(),
        Endpoint::Fd { read: n, write: n }
    );
    assert_eq!(listener.local_endpoint().to_string(), format!("fd:{n}"));

    let server = listener.accept().await.unwrap();
    assert_eq!(server.peer, Peer::Fd { read: n, write: n });
    let second = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
    assert!(second.is_err(), "a second accept must wait forever");

    // The same number cannot be claimed twice.
    match bind(&ep).await {
        Err(TransportError::BadEndpoint(msg)) => assert!(msg.contains("already"), "{msg}"),
        other => panic!("expected BadEndpoint, got {other:?}"),
    }
    let client = fd_channel_shared(b).unwrap();
    exchange(server, client).await;
}

#[tokio::test]
async fn fd_endpoint_connect_over_pipes() {
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    let (read, write) = (r1.into_raw_fd(), w2.into_raw_fd());
    let ours = connect(&Endpoint::Fd { read, write }).await.unwrap();
    assert_eq!(ours.peer, Peer::Fd { read, write });
    let theirs = fd_channel(r2, w1).unwrap();
    exchange(ours, theirs).await;
}

#[tokio::test]
async fn fd_endpoint_rejects_closed_descriptors() {
    match bind(&"fd:999999".parse().unwrap()).await {
        Err(TransportError::BadEndpoint(msg)) => assert!(msg.contains("not open"), "{msg}"),
        other => panic!("expected BadEndpoint, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_frame_over_tcp_fails_the_receiver() {
    let mut listener = bind(&"tcp:127.0.0.1:0".parse().unwrap()).await.unwrap();
    let ep = listener.local_endpoint();
    let (server, client) = tokio::join!(listener.accept(), connect(&ep));
    let (mut server, mut client) = (server.unwrap(), client.unwrap());
    let big = frame(100, 1, 70_000);
    let sender = tokio::spawn(async move {
        let _ = client.tx.send(&mut vec![big]).await;
        client
    });
    match server.rx.recv().await {
        Err(TransportError::FrameTooLarge {
            size: 70_000,
            max: 65_536,
        }) => {}
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    drop(server);
    sender.await.unwrap();
}

#[tokio::test]
async fn fd_listener_from_owned_pipes() {
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    let (rn, wn) = (r1.as_raw_fd(), w2.as_raw_fd());
    let mut listener = envoy_transport::FdListener::new(r1, w2).unwrap();
    assert!(!listener.is_exhausted());
    assert_eq!(
        listener.local_endpoint(),
        Endpoint::Fd {
            read: rn,
            write: wn
        }
    );
    let server = listener.accept().await.unwrap();
    assert!(listener.is_exhausted());
    let second = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
    assert!(second.is_err(), "a second accept must wait forever");
    exchange(server, fd_channel(r2, w1).unwrap()).await;
}
