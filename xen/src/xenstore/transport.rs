//! The two byte pipes to xenstored: its unix socket, and the xenbus device
//! (`/dev/xen/xenbus`, the kernel relaying to xenstored in another domain or over the ring).
//!
//! Both carry the same messages. The device differs in two ways this module hides: it wants a
//! whole message per `write` (so messages are never coalesced or split here, and a short write
//! continues with the rest), and its `poll` only ever reports readability (so writes are simply
//! retried after a short sleep if they would block, which the Linux driver never makes them do).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::unix::OwnedWriteHalf;

/// How long a device write may keep saying "would block" before the connection is declared
/// broken.
const DEVICE_WRITE_PATIENCE: Duration = Duration::from_secs(10);

/// The read side, for the connection's reader task.
pub(crate) type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// The write side, owned by the connection's writer task.
pub(crate) enum Writer {
    /// A stream socket: messages may be batched into one write.
    Socket(OwnedWriteHalf),
    /// A message-oriented descriptor: one write per message.
    Device(Arc<AsyncFd<OwnedFd>>),
}

impl Writer {
    /// True if several messages may go out in one write.
    pub(crate) fn batches(&self) -> bool {
        matches!(self, Writer::Socket(_))
    }

    /// Write `buf` completely (one message, or a batch for sockets).
    pub(crate) async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Writer::Socket(w) => w.write_all(buf).await,
            Writer::Device(fd) => device_write(fd, buf).await,
        }
    }
}

async fn device_write(fd: &AsyncFd<OwnedFd>, buf: &[u8]) -> io::Result<()> {
    let mut off = 0;
    let mut blocked_since: Option<Instant> = None;
    while off < buf.len() {
        match rustix::io::write(fd.get_ref().as_fd(), &buf[off..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "device took no bytes",
                ));
            }
            Ok(n) => {
                off += n;
                blocked_since = None;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > DEVICE_WRITE_PATIENCE {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "device write blocked for 10 s",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads from a non-blocking message descriptor through tokio's readiness.
struct DeviceReader(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for DeviceReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                rustix::io::read(fd.get_ref().as_fd(), &mut *unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Split a connected unix socket.
pub(crate) fn socket(stream: tokio::net::UnixStream) -> (Reader, Writer) {
    let (r, w) = stream.into_split();
    (Box::pin(r), Writer::Socket(w))
}

/// Wrap a message descriptor (the xenbus device); made non-blocking here. Needs a tokio runtime.
pub(crate) fn device(fd: OwnedFd) -> io::Result<(Reader, Writer)> {
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    // SAFETY: the AsyncFd takes ownership of `fd` (an OwnedFd), so the descriptor stays open
    // and names the same open file description until the AsyncFd is dropped, and `as_raw_fd`
    // always returns that descriptor.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
    let fd = Arc::new(fd);
    Ok((Box::pin(DeviceReader(fd.clone())), Writer::Device(fd)))
}
