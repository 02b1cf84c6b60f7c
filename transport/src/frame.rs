//! The medium-independent contract: frames, the two halves of a channel, listeners, peers.
//!
//! A frame is one whole message, `size[4] type[1] tag[2] body`, with `size` little-endian and
//! counting itself. The traits here say nothing about how a medium carries frames (a byte
//! stream, SCTP messages, a shared-memory ring), only that whole frames go in and come out in
//! order.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::{Endpoint, Result};

/// The smallest valid frame: the header `size[4] type[1] tag[2]` with an empty body.
pub const MIN_FRAME: u32 = 7;

/// The maximum frame size a receiver accepts until [`FrameRx::set_max_frame`] is called:
/// 64 KiB, enough for any version negotiation.
pub const DEFAULT_MAX_FRAME: u32 = 64 * 1024;

/// The size field of the frame starting at `head`, validated against [`MIN_FRAME`] and `max`;
/// `None` until its four bytes are in. Shared by every receiver, so that a hostile size is
/// refused the same way (and before anything is reserved for it) on every medium.
pub(crate) fn frame_size(head: &[u8], max: u32) -> Result<Option<usize>> {
    let Some(&[a, b, c, d]) = head.get(..4) else {
        return Ok(None);
    };
    let size = u32::from_le_bytes([a, b, c, d]);
    if size > max {
        return Err(crate::TransportError::FrameTooLarge { size, max });
    }
    if size < MIN_FRAME {
        return Err(crate::TransportError::FrameTooShort { size });
    }
    Ok(Some(size as usize))
}

/// Who is at the other end of a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP peer at this address.
    Tcp(SocketAddr),
    /// An SCTP peer, by its primary address (it may have others).
    Sctp(SocketAddr),
    /// A unix-socket peer with the credentials the kernel reported (`SO_PEERCRED`), where known.
    Unix {
        /// The peer's process id.
        pid: Option<i32>,
        /// The peer's user id.
        uid: Option<u32>,
        /// The peer's group id.
        gid: Option<u32>,
    },
    /// A pre-connected descriptor pair (as numbered when handed over).
    Fd {
        /// The descriptor frames are read from.
        read: i32,
        /// The descriptor frames are written to.
        write: i32,
    },
    /// A Xen guest's 9pfs device, served over shared rings.
    Xen {
        /// The guest's domain id.
        domid: u16,
        /// The device's index under the guest's `device/9pfs/`.
        devid: u32,
    },
}

impl fmt::Display for Peer {
    /// `tcp:127.0.0.1:40000`, `unix:pid=12,uid=1000,gid=1000` (`?` where unknown), `fd:3,4`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn opt<T: fmt::Display>(v: &Option<T>) -> String {
            v.as_ref().map_or_else(|| "?".to_owned(), T::to_string)
        }
        match self {
            Peer::Tcp(addr) => write!(f, "tcp:{addr}"),
            Peer::Sctp(addr) => write!(f, "sctp:{addr}"),
            Peer::Unix { pid, uid, gid } => {
                write!(f, "unix:pid={},uid={},gid={}", opt(pid), opt(uid), opt(gid))
            }
            Peer::Fd { read, write } => write!(f, "fd:{read},{write}"),
            Peer::Xen { domid, devid } => write!(f, "xen:dom{domid}/9pfs-{devid}"),
        }
    }
}

/// The receiving half of a channel: yields whole frames.
pub trait FrameRx: Send + 'static {
    /// The next whole frame (including its `size[4]` header), or `Ok(None)` on a clean end of
    /// input at a frame boundary.
    ///
    /// A frame whose size field exceeds the current maximum, or is smaller than [`MIN_FRAME`],
    /// is an error; so is the input ending inside a frame. After an error the caller should
    /// close the connection.
    ///
    /// Implementations should be cancel-safe (dropping the future loses no data) so that callers
    /// can `select!` on it; [`crate::StreamRx`] is.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Bytes>>> + Send;

    /// Change the maximum accepted frame size (the server calls this after msize negotiation).
    fn set_max_frame(&mut self, max: u32);

    /// The largest frame the medium can ever carry, if it has such a limit (a Xen ring holds
    /// at most its own size). The server never negotiates an msize above it.
    fn medium_max_frame(&self) -> Option<u32> {
        None
    }
}

/// The sending half of a channel.
pub trait FrameTx: Send + 'static {
    /// Write every frame in `frames` in order (gathered with vectored writes where the medium
    /// allows), then drain the `Vec` (its capacity is kept for reuse). On error the connection
    /// is unusable and the `Vec` is drained too.
    ///
    /// Not cancel-safe: dropping the future may leave a frame half-written.
    fn send(&mut self, frames: &mut Vec<Bytes>) -> impl Future<Output = Result<()>> + Send;

    /// Flush and close the sending direction (the peer then sees a clean end of input).
    fn close(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// One connection: both halves and who is at the other end.
#[derive(Debug)]
pub struct Channel<R, T> {
    /// The receiving half.
    pub rx: R,
    /// The sending half.
    pub tx: T,
    /// The other end.
    pub peer: Peer,
}

/// A source of channels (a listening socket, or a pre-connected descriptor pair).
pub trait Listener: Send + 'static {
    /// The receiving half of the channels it yields.
    type Rx: FrameRx;
    /// The sending half of the channels it yields.
    type Tx: FrameTx;

    /// Wait for the next connection.
    fn accept(&mut self) -> impl Future<Output = Result<Channel<Self::Rx, Self::Tx>>> + Send;

    /// Where it listens, as really bound (e.g. with the chosen port when bound to port 0).
    fn local_endpoint(&self) -> Endpoint;
}
