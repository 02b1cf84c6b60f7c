//! Endpoint strings: parsing, printing, and one-line rejections naming the bad part; peer
//! display.

use std::net::SocketAddr;
use std::path::PathBuf;

use envoy_transport::{Endpoint, Peer, TransportError};

#[test]
fn parses_and_round_trips() {
    let cases = [
        (
            "tcp:127.0.0.1:5640",
            Endpoint::Tcp("127.0.0.1:5640".parse::<SocketAddr>().unwrap()),
        ),
        (
            "tcp:[::1]:5640",
            Endpoint::Tcp("[::1]:5640".parse::<SocketAddr>().unwrap()),
        ),
        (
            "tcp:0.0.0.0:0",
            Endpoint::Tcp("0.0.0.0:0".parse::<SocketAddr>().unwrap()),
        ),
        (
            "unix:/run/envoy.sock",
            Endpoint::Unix(PathBuf::from("/run/envoy.sock")),
        ),
        (
            "unix:relative/envoy.sock",
            Endpoint::Unix(PathBuf::from("relative/envoy.sock")),
        ),
        (
            "sctp:127.0.0.1:5640",
            Endpoint::Sctp(vec!["127.0.0.1:5640".parse().unwrap()]),
        ),
        (
            "sctp:10.0.1.1,10.0.2.1:0",
            Endpoint::Sctp(vec![
                "10.0.1.1:0".parse().unwrap(),
                "10.0.2.1:0".parse().unwrap(),
            ]),
        ),
        (
            "sctp:[::1],127.0.0.1,[fd00::2]:9",
            Endpoint::Sctp(vec![
                "[::1]:9".parse().unwrap(),
                "127.0.0.1:9".parse().unwrap(),
                "[fd00::2]:9".parse().unwrap(),
            ]),
        ),
        ("fd:3,4", Endpoint::Fd { read: 3, write: 4 }),
        ("fd:3", Endpoint::Fd { read: 3, write: 3 }),
        ("fd:0,1", Endpoint::Fd { read: 0, write: 1 }),
    ];
    for (text, want) in cases {
        let got: Endpoint = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(got, want, "{text}");
        assert_eq!(got.to_string(), text, "display of {text}");
        assert_eq!(got.to_string().parse::<Endpoint>().unwrap(), got);
    }
    // Equal descriptors print in the short form, which parses back to the same value.
    assert_eq!(Endpoint::Fd { read: 5, write: 5 }.to_string(), "fd:5");
    assert_eq!(
        "fd:5,5".parse::<Endpoint>().unwrap(),
        Endpoint::Fd { read: 5, write: 5 }
    );
}

#[test]
fn rejects_bad_strings_naming_the_bad_part() {
    let cases = [
        ("tcp:nohost", "nohost"),
        ("tcp:1.2.3.4", "1.2.3.4"),
        ("tcp:localhost:5640", "localhost:5640"),
        ("udp:1.2.3.4:5", "udp"),
        ("sctp:1.2.3.4", "no :PORT"),
        ("sctp:1.2.3.4:99999", "\"99999\""),
        ("sctp:1.2.3.4,:5", "\"\""),
        ("sctp:::1:5", "\"::1\""),
        ("sctp:host.example:5", "\"host.example\""),
        ("sctp:10.0.0.1,10.0.0.1:5", "twice"),
        ("fd:x", "\"x\""),
        ("fd:3,y", "\"y\""),
        ("fd:-1", "\"-1\""),
        ("fd:", "\"\""),
        ("unix:", "empty path"),
        ("nocolon", "prefix"),
        ("", "prefix"),
    ];
    for (text, needle) in cases {
        match text.parse::<Endpoint>() {
            Err(e @ TransportError::BadEndpoint(_)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(needle),
                    "{text:?}: {msg:?} should mention {needle:?}"
                );
                assert!(!msg.contains('\n'), "{text:?}: message must be one line");
                assert!(msg.starts_with("bad endpoint: "), "{msg}");
            }
            other => panic!("{text:?} should be rejected, got {other:?}"),
        }
    }
}

#[test]
fn peers_display() {
    assert_eq!(
        Peer::Tcp("[::1]:7".parse().unwrap()).to_string(),
        "tcp:[::1]:7"
    );
    assert_eq!(
        Peer::Unix {
            pid: Some(12),
            uid: Some(1000),
            gid: Some(100)
        }
        .to_string(),
        "unix:pid=12,uid=1000,gid=100"
    );
    assert_eq!(
        Peer::Unix {
            pid: None,
            uid: Some(0),
            gid: None
        }
        .to_string(),
        "unix:pid=?,uid=0,gid=?"
    );
    assert_eq!(Peer::Fd { read: 3, write: 4 }.to_string(), "fd:3,4");
    assert_eq!(
        Peer::Sctp("10.0.0.1:5640".parse().unwrap()).to_string(),
        "sctp:10.0.0.1:5640"
    );
}

#[test]
fn error_messages_are_lowercase() {
    let errors = [
        TransportError::FrameTooLarge { size: 9, max: 8 },
        TransportError::FrameTooShort { size: 3 },
        TransportError::UnexpectedEof { buffered: 2 },
        TransportError::BadEndpoint("x".into()),
        TransportError::UnsupportedFd {
            fd: 3,
            kind: "a directory",
        },
        TransportError::Io(std::io::Error::other("boom")),
        TransportError::MessageMismatch {
            size: Some(100),
            message: 60,
        },
        TransportError::MessageMismatch {
            size: None,
            message: 2,
        },
        TransportError::SctpUnavailable(std::io::Error::from_raw_os_error(93)),
    ];
    for e in errors {
        let msg = e.to_string();
        assert!(msg.chars().next().unwrap().is_lowercase(), "{msg}");
    }
}

/// On a kernel without SCTP (these machines), binding or connecting fails with the error that
/// says so and what to do, not with a bare errno; where the kernel has SCTP, binding works.
/// The SCTP transport's own tests need kernel SCTP and run in the Linux guest (tests/vm).
#[tokio::test]
async fn sctp_without_kernel_support_says_so() {
    let ep: Endpoint = "sctp:127.0.0.1:0".parse().unwrap();
    let kernel_has_sctp = std::path::Path::new("/proc/net/sctp").exists();
    match envoy_transport::bind(&ep).await {
        Ok(l) => assert!(
            kernel_has_sctp,
            "bound {} without /proc/net/sctp",
            envoy_transport::Listener::local_endpoint(&l)
        ),
        Err(e @ TransportError::SctpUnavailable(_)) => {
            assert!(!kernel_has_sctp, "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains("modprobe sctp") && msg.contains("tcp:"),
                "{msg}"
            );
            match envoy_transport::connect(&ep).await {
                Err(TransportError::SctpUnavailable(_)) => {}
                other => panic!("connect: {other:?}"),
            }
        }
        Err(e) => panic!("unexpected error: {e:?}"),
    }
}
