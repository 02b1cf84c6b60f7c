//! Pre-connected descriptor pairs: pipes, FIFOs, socketpairs, character devices, or a socket
//! handed over by a parent process (Linux's `trans=fd`, `envoyd --listen fd:3,4`).
//!
//! Each descriptor is made non-blocking and close-on-exec and driven by tokio with the wrapper
//! that fits its kind: a stream socket as a tokio `UnixStream`/`TcpStream` (so closing the
//! sending direction is a real `shutdown`), anything else pollable (pipe, FIFO, character
//! device) as a tokio pipe end. When one descriptor serves both ways it is duplicated, so each
//! direction owns and registers its own descriptor.
//!
//! Claiming inherited descriptors by number (the `fd:` endpoint) needs `unsafe` (turning a raw
//! number into an owner); that is confined to [`claim_raw_fds`].

use std::collections::BTreeSet;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
};
use nix::sys::stat::{SFlag, fstat};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;
use tokio::net::{TcpStream, UnixStream};
use tracing::debug;

use crate::frame::{Channel, Listener, Peer};
use crate::stream::{StreamRx, StreamTx};
use crate::{Endpoint, Result, TransportError};

/// The receiving half of a descriptor channel.
pub type FdRx = StreamRx<FdReader>;
/// The sending half of a descriptor channel.
pub type FdTx = StreamTx<FdWriter>;

/// How a descriptor is driven.
#[derive(Clone, Copy, Debug)]
enum Kind {
    UnixSocket,
    TcpSocket,
    Pipe,
}

fn classify(fd: &OwnedFd) -> Result<Kind> {
    let unsupported = |kind| TransportError::UnsupportedFd {
        fd: fd.as_raw_fd(),
        kind,
    };
    let st = fstat(fd).map_err(io::Error::from)?;
    let format = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if format == SFlag::S_IFSOCK {
        if getsockopt(fd, sockopt::SockType).map_err(io::Error::from)? != SockType::Stream {
            return Err(unsupported("a socket that is not a stream socket"));
        }
        let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(io::Error::from)?;
        match addr.family() {
            Some(AddressFamily::Unix) => Ok(Kind::UnixSocket),
            Some(AddressFamily::Inet | AddressFamily::Inet6) => Ok(Kind::TcpSocket),
            _ => Err(unsupported("a socket of an unsupported address family")),
        }
    } else if format == SFlag::S_IFIFO || format == SFlag::S_IFCHR {
        Ok(Kind::Pipe)
    } else if format == SFlag::S_IFREG {
        Err(unsupported("a regular file"))
    } else if format == SFlag::S_IFDIR {
        Err(unsupported("a directory"))
    } else if format == SFlag::S_IFBLK {
        Err(unsupported("a block device"))
    } else {
        Err(unsupported("of an unknown kind"))
    }
}

/// Non-blocking (tokio needs it) and close-on-exec (children must not inherit the connection).
fn prepare(fd: &OwnedFd) -> Result<Kind> {
    let kind = classify(fd)?;
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    }
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    Ok(kind)
}

#[derive(Debug)]
enum ReadEnd {
    Unix(UnixStream),
    Tcp(TcpStream),
    Pipe(pipe::Receiver),
}

/// The reading descriptor of a descriptor channel, driven by tokio.
#[derive(Debug)]
pub struct FdReader(ReadEnd);

#[derive(Debug)]
enum WriteEnd {
    Unix(UnixStream),
    Tcp(TcpStream),
    Pipe(pipe::Sender),
    /// After `shutdown`: the descriptor is closed.
    Closed,
}

/// The writing descriptor of a descriptor channel, driven by tokio. Shutting it down shuts a
/// socket's sending direction and closes the descriptor.
#[derive(Debug)]
pub struct FdWriter(WriteEnd);

impl FdReader {
    fn new(fd: OwnedFd) -> Result<FdReader> {
        Ok(FdReader(match prepare(&fd)? {
            Kind::UnixSocket => ReadEnd::Unix(UnixStream::from_std(fd.into())?),
            Kind::TcpSocket => ReadEnd::Tcp(TcpStream::from_std(fd.into())?),
            Kind::Pipe => ReadEnd::Pipe(pipe::Receiver::from_owned_fd_unchecked(fd)?),
        }))
    }
}

impl FdWriter {
    fn new(fd: OwnedFd) -> Result<FdWriter> {
        Ok(FdWriter(match prepare(&fd)? {
            Kind::UnixSocket => WriteEnd::Unix(UnixStream::from_std(fd.into())?),
            Kind::TcpSocket => {
                let s = TcpStream::from_std(fd.into())?;
                if let Err(e) = s.set_nodelay(true) {
                    debug!(%e, "cannot set TCP_NODELAY on a passed socket");
                }
                WriteEnd::Tcp(s)
            }
            Kind::Pipe => WriteEnd::Pipe(pipe::Sender::from_owned_fd_unchecked(fd)?),
        }))
    }
}

impl AsyncRead for FdReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.0 {
            ReadEnd::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ReadEnd::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadEnd::Pipe(p) => Pin::new(p).poll_read(cx, buf),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "descriptor channel already closed for sending",
    )
}

impl AsyncWrite for FdWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            WriteEnd::Unix(s) => Pin::new(s).poll_write(cx, buf),
            WriteEnd::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            WriteEnd::Pipe(p) => Pin::new(p).poll_write(cx, buf),
            WriteEnd::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            WriteEnd::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WriteEnd::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WriteEnd::Pipe(p) => Pin::new(p).poll_write_vectored(cx, bufs),
            WriteEnd::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            WriteEnd::Unix(s) => Pin::new(s).poll_flush(cx),
            WriteEnd::Tcp(s) => Pin::new(s).poll_flush(cx),
            WriteEnd::Pipe(p) => Pin::new(p).poll_flush(cx),
            WriteEnd::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = match &mut self.0 {
            WriteEnd::Unix(s) => Pin::new(s).poll_shutdown(cx),
            WriteEnd::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WriteEnd::Pipe(p) => Pin::new(p).poll_shutdown(cx),
            WriteEnd::Closed => return Poll::Ready(Ok(())),
        };
        if result.is_ready() {
            // Closing our descriptor is what ends a pipe; a socket was shut down above (its
            // reading side may still be open through another descriptor).
            self.0 = WriteEnd::Closed;
        }
        result
    }
}

fn fd_channel_with_peer(read: OwnedFd, write: OwnedFd, peer: Peer) -> Result<Channel<FdRx, FdTx>> {
    let rx = StreamRx::new(FdReader::new(read)?);
    let tx = StreamTx::new(FdWriter::new(write)?);
    Ok(Channel { rx, tx, peer })
}

/// A channel over a pre-connected descriptor pair: frames are read from `read` and written to
/// `write` (e.g. the two ends of two pipes, or two duplicates of one socket). Both are set
/// non-blocking and close-on-exec; note that `O_NONBLOCK` belongs to the open file description,
/// so a process sharing it sees the change too.
///
/// Must be called inside a tokio runtime. Fails with [`TransportError::UnsupportedFd`] for a
/// descriptor that is not a stream socket, pipe, FIFO or character device.
pub fn fd_channel(read: OwnedFd, write: OwnedFd) -> Result<Channel<FdRx, FdTx>> {
    let peer = Peer::Fd {
        read: read.as_raw_fd(),
        write: write.as_raw_fd(),
    };
    fd_channel_with_peer(read, write, peer)
}

/// A channel over one descriptor used both ways (a socket, or a read-write character device):
/// it is duplicated so that each direction has its own. See [`fd_channel`].
pub fn fd_channel_shared(fd: OwnedFd) -> Result<Channel<FdRx, FdTx>> {
    let n = fd.as_raw_fd();
    let write = fd.try_clone()?;
    fd_channel_with_peer(fd, write, Peer::Fd { read: n, write: n })
}

/// Descriptor numbers already claimed through [`claim_raw_fds`]; never released, because once
/// claimed the number may be closed and reused for something this crate does not own.
static CLAIMED: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Take ownership of inherited descriptors named by number (an `fd:` endpoint). Each number can
/// be claimed once per process; each must be open. Both are checked before either is claimed.
#[allow(unsafe_code)]
fn claim_raw_fds(numbers: &[RawFd]) -> Result<Vec<OwnedFd>> {
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    for &n in numbers {
        if n < 0 {
            return Err(TransportError::BadEndpoint(format!(
                "descriptor {n} is negative"
            )));
        }
        if claimed.contains(&n) {
            return Err(TransportError::BadEndpoint(format!(
                "descriptor {n} is already in use by this transport"
            )));
        }
        // SAFETY: F_GETFD only reads the descriptor flags; on a number that is not an open
        // descriptor it fails with EBADF and touches nothing.
        if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
            return Err(TransportError::BadEndpoint(format!(
                "descriptor {n} is not open"
            )));
        }
    }
    let mut owned = Vec::with_capacity(numbers.len());
    for &n in numbers {
        if claimed.insert(n) {
            // SAFETY: `n` is an open descriptor (checked above). An `fd:` endpoint hands the
            // descriptor to the transport (it is inherited from the parent, not owned by
            // anything else in this process), and the CLAIMED set guarantees this crate creates
            // at most one owner for it; duplicates in `numbers` are skipped by `insert`.
            owned.push(unsafe { OwnedFd::from_raw_fd(n) });
        }
    }
    Ok(owned)
}

/// A channel over the inherited descriptors of an `fd:` endpoint.
pub(crate) fn fd_endpoint_channel(read: RawFd, write: RawFd) -> Result<Channel<FdRx, FdTx>> {
    let peer = Peer::Fd { read, write };
    let mut fds = claim_raw_fds(&[read, write])?;
    if read == write {
        let fd = fds.pop().expect("one claimed descriptor");
        let dup = fd.try_clone()?;
        fd_channel_with_peer(fd, dup, peer)
    } else {
        let w = fds.pop().expect("write descriptor");
        let r = fds.pop().expect("read descriptor");
        fd_channel_with_peer(r, w, peer)
    }
}

/// A "listener" over one pre-connected descriptor pair: the first [`Listener::accept`] yields
/// its channel, later ones wait forever (so an accept loop over several listeners keeps
/// serving the others rather than spinning on an error).
#[derive(Debug)]
pub struct FdListener {
    channel: Option<Channel<FdRx, FdTx>>,
    endpoint: Endpoint,
}

impl FdListener {
    /// A listener yielding the channel over `read` and `write` once (see [`fd_channel`]).
    pub fn new(read: OwnedFd, write: OwnedFd) -> Result<FdListener> {
        let endpoint = Endpoint::Fd {
            read: read.as_raw_fd(),
            write: write.as_raw_fd(),
        };
        Ok(FdListener {
            channel: Some(fd_channel(read, write)?),
            endpoint,
        })
    }

    /// Take ownership of the inherited descriptors `read` and `write` (equal: one descriptor
    /// both ways). Each number can be claimed once per process; it must be open, and nothing
    /// else in the process may use it afterwards.
    pub fn from_raw(read: RawFd, write: RawFd) -> Result<FdListener> {
        let channel = fd_endpoint_channel(read, write)?;
        Ok(FdListener {
            channel: Some(channel),
            endpoint: Endpoint::Fd { read, write },
        })
    }

    /// Whether the one channel has been handed out.
    pub fn is_exhausted(&self) -> bool {
        self.channel.is_none()
    }
}

impl Listener for FdListener {
    type Rx = FdRx;
    type Tx = FdTx;

    async fn accept(&mut self) -> Result<Channel<FdRx, FdTx>> {
        match self.channel.take() {
            Some(channel) => Ok(channel),
            None => std::future::pending().await,
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
}
