//! SCTP: one-to-one associations carrying one frame per message, spread over streams.
//!
//! SCTP keeps message boundaries (a 9P frame is one SCTP message, read whole and checked
//! against its size field), orders messages per stream rather than per connection
//! (independent requests do not queue behind a lost packet: see [`request_stream`] and
//! [`ReplyStreams`]), and binds an association to several
//! addresses at each end, so it survives the loss of a path (multi-homing). Every socket gets
//! `SCTP_NODELAY`, [`STREAMS`] streams asked for each way at INIT (the peer may grant fewer;
//! the negotiated counts are read back), and buffers sized so that the largest message fits:
//! SCTP sends a message whole or not at all.
//!
//! The kernel's SCTP is used through a thin layer of system calls (module `sys`); on a kernel without it, binding or connecting
//! fails with [`TransportError::SctpUnavailable`], which says what to do.

mod message;
mod streams;
mod sys;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracing::debug;

use crate::frame::{Channel, FrameRx, FrameTx, Listener, Peer};
use crate::{Endpoint, Result, TransportError};

use message::Reassembly;
pub use streams::{ReplyStreams, STREAMS, request_stream};

/// Send and receive buffer of every association: several of the largest messages (msize up
/// to 1 MiB) with room to spare. Needs `CAP_NET_ADMIN` to exceed `net.core.[rw]mem_max`;
/// without it the kernel's maximum is used.
const BUFFER: usize = 4 << 20;

/// What a half waits for. An association the peer aborts (an ABORT chunk) only raises
/// `EPOLLERR` on a one-to-one socket, which tokio reports as neither readable nor writable:
/// without `ERROR` a half would wait forever instead of reading the `ECONNRESET`.
const READ: Interest = Interest::READABLE.add(Interest::ERROR);
const WRITE: Interest = Interest::WRITABLE.add(Interest::ERROR);

/// Pending associations a listener queues.
const BACKLOG: i32 = 128;

/// A one-to-one SCTP socket set up the way every Envoy association is.
fn new_socket(addrs: &[SocketAddr]) -> Result<OwnedFd> {
    let ipv6 = addrs.iter().any(SocketAddr::is_ipv6);
    let fd = sys::socket(ipv6).map_err(|e| match e.raw_os_error() {
        Some(libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT | libc::EAFNOSUPPORT) => {
            TransportError::SctpUnavailable(e)
        }
        _ => TransportError::Io(e),
    })?;
    sys::set_init(&fd, STREAMS)?;
    sys::set_nodelay(&fd)?;
    sys::set_recv_rcvinfo(&fd)?;
    sys::set_buffers(&fd, BUFFER)?;
    Ok(fd)
}

/// The receiving half of an SCTP association.
#[derive(Debug)]
pub struct SctpRx {
    fd: Arc<AsyncFd<OwnedFd>>,
    messages: Reassembly,
    /// On a server: where requests arrived, for the replies.
    replies: Option<Arc<ReplyStreams>>,
}

/// The sending half of an SCTP association.
#[derive(Debug)]
pub struct SctpTx {
    fd: Arc<AsyncFd<OwnedFd>>,
    /// Outbound streams negotiated.
    streams: u16,
    /// On a server: answer on the request's stream. On a client: spread by tag.
    replies: Option<Arc<ReplyStreams>>,
}

impl SctpTx {
    /// The outbound streams the association negotiated.
    pub fn streams(&self) -> u16 {
        self.streams
    }
}

fn channel(fd: OwnedFd, peer: SocketAddr, server: bool) -> Result<Channel<SctpRx, SctpTx>> {
    let (inbound, outbound) = sys::stream_counts(&fd)?;
    debug!(%peer, inbound, outbound, server, "sctp association up");
    let fd = Arc::new(sys::register(fd)?);
    let replies = server.then(|| Arc::new(ReplyStreams::default()));
    Ok(Channel {
        rx: SctpRx {
            fd: fd.clone(),
            messages: Reassembly::default(),
            replies: replies.clone(),
        },
        tx: SctpTx {
            fd,
            streams: outbound,
            replies,
        },
        peer: Peer::Sctp(peer),
    })
}

impl SctpRx {
    /// The next whole frame and the stream it came on (what [`FrameRx::recv`] gives, plus the
    /// stream). Cancel-safe.
    pub async fn recv_with_stream(&mut self) -> Result<Option<(Bytes, u16)>> {
        loop {
            let mut ready = self.fd.ready(READ).await?;
            let window = self.messages.window()?;
            let got = match ready.try_io(|fd| sys::recv(fd.get_ref(), window)) {
                Ok(got) => got?,
                Err(_would_block) => continue,
            };
            if got.notification {
                // Not subscribed to any, but never mistake one for data.
                continue;
            }
            let frame = if got.len == 0 {
                self.messages.end_of_input()?
            } else {
                match self.messages.filled(got.len, got.eor, got.stream)? {
                    Some(f) => Some(f),
                    None => continue,
                }
            };
            if let (Some(r), Some((frame, stream))) = (&self.replies, &frame) {
                r.record(frame, *stream);
            }
            return Ok(frame);
        }
    }
}

impl FrameRx for SctpRx {
    /// Cancel-safe: a read lands in the reassembly buffer before anything else can wait.
    async fn recv(&mut self) -> Result<Option<Bytes>> {
        Ok(self.recv_with_stream().await?.map(|(frame, _)| frame))
    }

    fn set_max_frame(&mut self, max: u32) {
        self.messages.set_max_frame(max);
    }
}

impl FrameTx for SctpTx {
    /// Each frame is one message, on its stream; up to 64 go out in one `sendmmsg`.
    async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<()> {
        let result = self.send_all(frames).await;
        frames.clear();
        result
    }

    /// SCTP has no half-close: this ends the association gracefully (queued messages are
    /// still delivered), after which neither side can send.
    async fn close(&mut self) -> Result<()> {
        match sys::shutdown_write(self.fd.get_ref()) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            other => Ok(other?),
        }
    }
}

impl SctpTx {
    async fn send_all(&mut self, frames: &[Bytes]) -> Result<()> {
        self.send_with(frames, |tx, frame| match &tx.replies {
            Some(r) => r.reply_stream(frame, tx.streams),
            None => request_stream(frame, tx.streams),
        })
        .await
    }

    /// Send `frame` as one message on `stream`, whatever the usual assignment would be (for
    /// tests of a server's stream handling). A stream the association lacks is an error.
    pub async fn send_on_stream(&mut self, stream: u16, frame: Bytes) -> Result<()> {
        self.send_with(&[frame], |_, _| stream).await
    }

    async fn send_with(
        &mut self,
        frames: &[Bytes],
        stream: impl Fn(&Self, &[u8]) -> u16,
    ) -> Result<()> {
        let mut done = 0;
        while done < frames.len() {
            let mut batch: [(u16, &[u8]); sys::SEND_BATCH] = [(0, &[]); sys::SEND_BATCH];
            let n = (frames.len() - done).min(sys::SEND_BATCH);
            for (slot, frame) in batch.iter_mut().zip(&frames[done..done + n]) {
                *slot = (stream(self, frame), &frame[..]);
            }
            let mut ready = self.fd.ready(WRITE).await?;
            match ready.try_io(|fd| sys::send(fd.get_ref(), &batch[..n])) {
                Ok(sent) => done += sent?,
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// A listening SCTP socket bound to one or more local addresses.
#[derive(Debug)]
pub struct SctpListener {
    fd: AsyncFd<OwnedFd>,
    local: Vec<SocketAddr>,
}

impl SctpListener {
    /// Listen on every address in `addrs` (one port for all; port 0 picks a free one).
    /// Must be called inside a tokio runtime.
    pub fn bind(addrs: &[SocketAddr]) -> Result<SctpListener> {
        if addrs.is_empty() {
            return Err(TransportError::BadEndpoint(
                "an sctp endpoint needs at least one address".into(),
            ));
        }
        let fd = new_socket(addrs)?;
        sys::bind_all(&fd, addrs)?;
        sys::listen(&fd, BACKLOG)?;
        let port = sys::local_addr(&fd)?.port();
        let local = addrs
            .iter()
            .map(|a| SocketAddr::new(a.ip(), port))
            .collect();
        debug!(?local, "sctp listening");
        Ok(SctpListener {
            fd: sys::register(fd)?,
            local,
        })
    }

    /// The addresses listened on, with the port really bound.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }
}

impl Listener for SctpListener {
    type Rx = SctpRx;
    type Tx = SctpTx;

    /// Associations that died before they could be set up are skipped.
    async fn accept(&mut self) -> Result<Channel<SctpRx, SctpTx>> {
        loop {
            let mut ready = self.fd.readable().await?;
            let (fd, peer) = match ready.try_io(|fd| sys::accept(fd.get_ref())) {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(e))
                    if crate::tcp::is_abandoned(&e) || e.raw_os_error() == Some(libc::ENOTCONN) =>
                {
                    debug!(%e, "sctp association gone before accept");
                    continue;
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            };
            match sys::set_nodelay(&fd)
                .and_then(|()| sys::set_recv_rcvinfo(&fd))
                .map_err(TransportError::from)
                .and_then(|()| channel(fd, peer, true))
            {
                Ok(c) => return Ok(c),
                Err(e) => debug!(%e, %peer, "sctp association unusable after accept"),
            }
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        Endpoint::Sctp(self.local.clone())
    }
}

/// Open an association to a peer reachable at any of `addrs` and wait until it is up;
/// returns the socket (non-blocking, close-on-exec) and the peer's primary address. For
/// handing the association to another user, such as the kernel's `trans=fd`.
pub async fn associate(addrs: &[SocketAddr]) -> Result<(OwnedFd, SocketAddr)> {
    if addrs.is_empty() {
        return Err(TransportError::BadEndpoint(
            "an sctp endpoint needs at least one address".into(),
        ));
    }
    let fd = new_socket(addrs)?;
    sys::connectx(&fd, addrs)?;
    let fd = sys::register(fd)?;
    let peer = loop {
        let mut ready = fd.ready(WRITE).await?;
        if let Some(e) = sys::take_error(fd.get_ref())? {
            return Err(e.into());
        }
        match sys::peer_addr(fd.get_ref()) {
            Ok(peer) => break peer,
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => ready.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    };
    Ok((fd.into_inner(), peer))
}

/// Connect as a client: requests are spread over the streams by tag.
pub(crate) async fn sctp_connect(addrs: &[SocketAddr]) -> Result<Channel<SctpRx, SctpTx>> {
    let (fd, peer) = associate(addrs).await?;
    channel(fd, peer, false)
}
