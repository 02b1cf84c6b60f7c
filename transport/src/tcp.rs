//! TCP: a listener whose accepted sockets have `TCP_NODELAY` set, and a client connector.
//!
//! 9P is request/response with small messages; Nagle's algorithm would delay replies by up to a
//! round trip, so it is off on every connection this crate makes or accepts.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tracing::debug;

use crate::frame::{Channel, Listener, Peer};
use crate::stream::{StreamRx, StreamTx};
use crate::{Endpoint, Result};

/// The receiving half of a TCP channel.
pub type TcpRx = StreamRx<OwnedReadHalf>;
/// The sending half of a TCP channel.
pub type TcpTx = StreamTx<OwnedWriteHalf>;

/// A listening TCP socket.
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
    local: SocketAddr,
}

impl TcpListener {
    /// Listen on `addr` (port 0 picks a free port; see [`Listener::local_endpoint`]).
    pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
        let inner = tokio::net::TcpListener::bind(addr).await?;
        let local = inner.local_addr()?;
        debug!(%local, "tcp listening");
        Ok(TcpListener { inner, local })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Split a connected socket into a channel.
pub(crate) fn tcp_channel(stream: TcpStream, peer: SocketAddr) -> Result<Channel<TcpRx, TcpTx>> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    Ok(Channel {
        rx: StreamRx::new(r),
        tx: StreamTx::new(w),
        peer: Peer::Tcp(peer),
    })
}

/// Connect to a TCP server.
pub(crate) async fn tcp_connect(addr: SocketAddr) -> Result<Channel<TcpRx, TcpTx>> {
    let stream = TcpStream::connect(addr).await?;
    tcp_channel(stream, addr)
}

impl Listener for TcpListener {
    type Rx = TcpRx;
    type Tx = TcpTx;

    /// Connections the peer abandoned before they were accepted (or that died before
    /// `TCP_NODELAY` could be set) are skipped; other errors
    /// (e.g. running out of descriptors) are returned.
    async fn accept(&mut self) -> Result<Channel<TcpRx, TcpTx>> {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => match tcp_channel(stream, peer) {
                    Ok(channel) => return Ok(channel),
                    // Only a connection that already died makes setsockopt fail.
                    Err(e) => debug!(%e, %peer, "tcp connection unusable after accept"),
                },
                Err(e) if is_abandoned(&e) => debug!(%e, "tcp connection abandoned before accept"),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        Endpoint::Tcp(self.local)
    }
}

/// Errors `accept` reports for a connection that went away while queued.
pub(crate) fn is_abandoned(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
