//! Endpoint addresses as written on command lines and in configuration.
//!
//! `tcp:127.0.0.1:5640`, `tcp:[::1]:5640`, `sctp:10.0.0.1,10.0.1.1:5640` (one port, one or more
//! addresses: multi-homing; IPv6 in brackets), `unix:/run/envoy.sock`, `fd:3,4` (read from 3,
//! write to 4) and `fd:3` (one descriptor both ways). Parsing and printing round-trip, and a
//! parse error is one line naming the part that is wrong.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;

use crate::TransportError;

/// Where to listen or connect.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A TCP address (numeric; no name resolution).
    Tcp(SocketAddr),
    /// An SCTP association's addresses at one end (all with the same port; numeric).
    Sctp(Vec<SocketAddr>),
    /// A unix-domain stream socket at this path.
    Unix(PathBuf),
    /// A pre-connected pair of inherited descriptors (equal numbers: one descriptor both ways).
    Fd {
        /// The descriptor to read frames from.
        read: RawFd,
        /// The descriptor to write frames to.
        write: RawFd,
    },
}

fn bad(msg: String) -> TransportError {
    TransportError::BadEndpoint(msg)
}

fn parse_fd(s: &str, which: &str, whole: &str) -> Result<RawFd, TransportError> {
    match s.parse::<RawFd>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(bad(format!(
            "{which} descriptor {s:?} in {whole:?} is not a non-negative integer (expected fd:READ,WRITE or fd:FD)"
        ))),
    }
}

/// `ADDR[,ADDR…]:PORT`, IPv6 addresses in brackets.
fn parse_sctp(rest: &str, whole: &str) -> Result<Endpoint, TransportError> {
    let usage = "expected sctp:ADDR[,ADDR...]:PORT, IPv6 in brackets";
    let Some((list, port)) = rest.rsplit_once(':') else {
        return Err(bad(format!(
            "sctp endpoint {whole:?} has no :PORT ({usage})"
        )));
    };
    let port: u16 = port.parse().map_err(|_| {
        bad(format!(
            "port {port:?} in {whole:?} is not a number 0-65535 ({usage})"
        ))
    })?;
    let mut addrs = Vec::new();
    for a in list.split(',') {
        let ip = a
            .strip_prefix('[')
            .and_then(|v6| v6.strip_suffix(']'))
            .map_or_else(|| a.parse::<std::net::Ipv4Addr>().map(IpAddr::V4).ok(), |v6| v6.parse().map(IpAddr::V6).ok())
            .ok_or_else(|| bad(format!("address {a:?} in {whole:?} is not an IPv4 address or a bracketed IPv6 address ({usage}; names are not resolved)")))?;
        let addr = SocketAddr::new(ip, port);
        if addrs.contains(&addr) {
            return Err(bad(format!("address {a:?} appears twice in {whole:?}")));
        }
        addrs.push(addr);
    }
    Ok(Endpoint::Sctp(addrs))
}

impl FromStr for Endpoint {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((scheme, rest)) = s.split_once(':') else {
            return Err(bad(format!(
                "{s:?} has no transport prefix (expected tcp:ADDR:PORT, sctp:ADDR[,ADDR...]:PORT, unix:PATH or fd:READ[,WRITE])"
            )));
        };
        match scheme {
            "tcp" => rest.parse::<SocketAddr>().map(Endpoint::Tcp).map_err(|_| {
                bad(format!(
                    "tcp address {rest:?} in {s:?} is not IP:PORT or [IPv6]:PORT (names are not resolved)"
                ))
            }),
            "sctp" => parse_sctp(rest, s),
            "unix" if rest.is_empty() => Err(bad(format!("unix endpoint {s:?} has an empty path"))),
            "unix" if rest.contains('\0') => Err(bad(format!("unix path in {s:?} contains a NUL byte"))),
            "unix" => Ok(Endpoint::Unix(PathBuf::from(rest))),
            "fd" => {
                let (r, w) = match rest.split_once(',') {
                    Some((r, w)) => (parse_fd(r, "read", s)?, parse_fd(w, "write", s)?),
                    None => {
                        let fd = parse_fd(rest, "the", s)?;
                        (fd, fd)
                    }
                };
                Ok(Endpoint::Fd { read: r, write: w })
            }
            other => Err(bad(format!(
                "unknown transport {other:?} in {s:?} (expected tcp, sctp, unix or fd)"
            ))),
        }
    }
}

impl fmt::Display for Endpoint {
    /// The form [`FromStr`] accepts; `fd:N` when both descriptors are the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "tcp:{addr}"),
            Endpoint::Sctp(addrs) => {
                f.write_str("sctp:")?;
                for (i, a) in addrs.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    match a.ip() {
                        IpAddr::V4(ip) => write!(f, "{sep}{ip}")?,
                        IpAddr::V6(ip) => write!(f, "{sep}[{ip}]")?,
                    }
                }
                write!(f, ":{}", addrs.first().map_or(0, SocketAddr::port))
            }
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Fd { read, write } if read == write => write!(f, "fd:{read}"),
            Endpoint::Fd { read, write } => write!(f, "fd:{read},{write}"),
        }
    }
}
