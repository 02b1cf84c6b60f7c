//! Medium-independent entry points: [`bind`] and [`connect`] take an [`Endpoint`] and return
//! enums over the concrete media.
//!
//! Enums rather than trait objects: the traits use `impl Future` returns (not object-safe), and
//! a `match` per call costs nothing next to a system call. A daemon can keep listeners of
//! different kinds in one collection and serve them with one generic function.

use bytes::Bytes;

use crate::fd::{FdListener, FdRx, FdTx, fd_endpoint_channel};
use crate::frame::{Channel, FrameRx, FrameTx, Listener};
use crate::sctp::{SctpListener, SctpRx, SctpTx, sctp_connect};
use crate::tcp::{TcpListener, TcpRx, TcpTx, tcp_connect};
use crate::unix::{UnixListener, UnixRx, UnixTx, unix_connect};
use crate::{Endpoint, Result};

/// The receiving half of a channel of any medium.
#[derive(Debug)]
pub enum AnyRx {
    /// TCP.
    Tcp(TcpRx),
    /// SCTP.
    Sctp(SctpRx),
    /// Unix-domain socket.
    Unix(UnixRx),
    /// Descriptor pair.
    Fd(FdRx),
}

/// The sending half of a channel of any medium.
#[derive(Debug)]
pub enum AnyTx {
    /// TCP.
    Tcp(TcpTx),
    /// SCTP.
    Sctp(SctpTx),
    /// Unix-domain socket.
    Unix(UnixTx),
    /// Descriptor pair.
    Fd(FdTx),
}

/// A listener of any medium.
#[derive(Debug)]
pub enum AnyListener {
    /// TCP.
    Tcp(TcpListener),
    /// SCTP.
    Sctp(SctpListener),
    /// Unix-domain socket.
    Unix(UnixListener),
    /// Descriptor pair (yields one channel).
    Fd(FdListener),
}

impl FrameRx for AnyRx {
    async fn recv(&mut self) -> Result<Option<Bytes>> {
        match self {
            AnyRx::Tcp(rx) => rx.recv().await,
            AnyRx::Sctp(rx) => rx.recv().await,
            AnyRx::Unix(rx) => rx.recv().await,
            AnyRx::Fd(rx) => rx.recv().await,
        }
    }

    fn set_max_frame(&mut self, max: u32) {
        match self {
            AnyRx::Tcp(rx) => rx.set_max_frame(max),
            AnyRx::Sctp(rx) => rx.set_max_frame(max),
            AnyRx::Unix(rx) => rx.set_max_frame(max),
            AnyRx::Fd(rx) => rx.set_max_frame(max),
        }
    }
}

impl FrameTx for AnyTx {
    async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<()> {
        match self {
            AnyTx::Tcp(tx) => tx.send(frames).await,
            AnyTx::Sctp(tx) => tx.send(frames).await,
            AnyTx::Unix(tx) => tx.send(frames).await,
            AnyTx::Fd(tx) => tx.send(frames).await,
        }
    }

    async fn close(&mut self) -> Result<()> {
        match self {
            AnyTx::Tcp(tx) => tx.close().await,
            AnyTx::Sctp(tx) => tx.close().await,
            AnyTx::Unix(tx) => tx.close().await,
            AnyTx::Fd(tx) => tx.close().await,
        }
    }
}

impl From<Channel<TcpRx, TcpTx>> for Channel<AnyRx, AnyTx> {
    fn from(c: Channel<TcpRx, TcpTx>) -> Self {
        Channel {
            rx: AnyRx::Tcp(c.rx),
            tx: AnyTx::Tcp(c.tx),
            peer: c.peer,
        }
    }
}

impl From<Channel<SctpRx, SctpTx>> for Channel<AnyRx, AnyTx> {
    fn from(c: Channel<SctpRx, SctpTx>) -> Self {
        Channel {
            rx: AnyRx::Sctp(c.rx),
            tx: AnyTx::Sctp(c.tx),
            peer: c.peer,
        }
    }
}

impl From<Channel<UnixRx, UnixTx>> for Channel<AnyRx, AnyTx> {
    fn from(c: Channel<UnixRx, UnixTx>) -> Self {
        Channel {
            rx: AnyRx::Unix(c.rx),
            tx: AnyTx::Unix(c.tx),
            peer: c.peer,
        }
    }
}

impl From<Channel<FdRx, FdTx>> for Channel<AnyRx, AnyTx> {
    fn from(c: Channel<FdRx, FdTx>) -> Self {
        Channel {
            rx: AnyRx::Fd(c.rx),
            tx: AnyTx::Fd(c.tx),
            peer: c.peer,
        }
    }
}

impl AnyListener {
    /// Whether this listener yields a single channel (a descriptor pair) rather than
    /// accepting connections indefinitely.
    pub fn is_one_shot(&self) -> bool {
        matches!(self, AnyListener::Fd(_))
    }
}

impl Listener for AnyListener {
    type Rx = AnyRx;
    type Tx = AnyTx;

    async fn accept(&mut self) -> Result<Channel<AnyRx, AnyTx>> {
        Ok(match self {
            AnyListener::Tcp(l) => l.accept().await?.into(),
            AnyListener::Sctp(l) => l.accept().await?.into(),
            AnyListener::Unix(l) => l.accept().await?.into(),
            AnyListener::Fd(l) => l.accept().await?.into(),
        })
    }

    fn local_endpoint(&self) -> Endpoint {
        match self {
            AnyListener::Tcp(l) => l.local_endpoint(),
            AnyListener::Sctp(l) => l.local_endpoint(),
            AnyListener::Unix(l) => l.local_endpoint(),
            AnyListener::Fd(l) => l.local_endpoint(),
        }
    }
}

/// Listen on `ep`. For `fd:` the inherited descriptors are claimed (see
/// [`FdListener::from_raw`]) and the listener yields their one channel.
pub async fn bind(ep: &Endpoint) -> Result<AnyListener> {
    Ok(match ep {
        Endpoint::Tcp(addr) => AnyListener::Tcp(TcpListener::bind(*addr).await?),
        Endpoint::Sctp(addrs) => AnyListener::Sctp(SctpListener::bind(addrs)?),
        Endpoint::Unix(path) => AnyListener::Unix(UnixListener::bind(path).await?),
        Endpoint::Fd { read, write } => AnyListener::Fd(FdListener::from_raw(*read, *write)?),
    })
}

/// Connect to a server at `ep` (for `fd:`, claim the inherited descriptors as the connection).
pub async fn connect(ep: &Endpoint) -> Result<Channel<AnyRx, AnyTx>> {
    Ok(match ep {
        Endpoint::Tcp(addr) => tcp_connect(*addr).await?.into(),
        Endpoint::Sctp(addrs) => sctp_connect(addrs).await?.into(),
        Endpoint::Unix(path) => unix_connect(path).await?.into(),
        Endpoint::Fd { read, write } => fd_endpoint_channel(*read, *write)?.into(),
    })
}
