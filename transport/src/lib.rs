//! Envoy's transport layer: framed, bidirectional message channels with a peer identity.
//!
//! Every dialect Envoy speaks (9P2000 and its variants, and the later envoy↔envoy and storage
//! dialects) frames a message as `size[4] type[1] tag[2] body`, with `size` little-endian and
//! counting itself. This crate moves such whole frames and knows nothing else about them: the
//! protocol crate decodes them, the server decides what to do with them.
//!
//! The pieces:
//!
//! - [`FrameRx`] / [`FrameTx`]: the receiving and sending halves of a connection. They are
//!   traits so that media other than byte streams (SCTP, Xen shared rings) implement them
//!   without the server changing.
//! - [`Listener`]: yields [`Channel`]s (both halves plus the [`Peer`] they lead to).
//! - [`StreamRx`] / [`StreamTx`]: the framing over any byte stream, shared by TCP, unix sockets
//!   and descriptor pairs. Receiving is zero-copy (frames are slices of one read buffer) and
//!   never allocates in proportion to a length it has not validated; sending gathers many frames
//!   into vectored writes.
//! - [`TcpListener`], [`UnixListener`], [`FdListener`] / [`fd_channel`]: the byte-stream media.
//! - [`SctpListener`] ([`sctp`]): kernel SCTP, one frame per message, requests spread over
//!   streams, multi-homed.
//! - [`Endpoint`] (`tcp:127.0.0.1:5640`, `sctp:10.0.0.1,10.0.1.1:5640`, `unix:/run/envoy.sock`,
//!   `fd:3,4`), [`bind`] and
//!   [`connect`], which hide the medium behind the [`AnyListener`] / [`AnyRx`] / [`AnyTx`] enums
//!   so that a daemon can hold listeners of several kinds uniformly (static dispatch).
//!
//! All I/O runs on tokio; constructors that register descriptors must be called inside a tokio
//! runtime.

#![deny(unsafe_code)]
#![deny(missing_docs)]

mod any;
mod endpoint;
mod error;
mod fd;
mod frame;
pub mod sctp;
mod stream;
mod tcp;
mod unix;
pub mod xen;

pub use any::{AnyListener, AnyRx, AnyTx, bind, connect};
pub use endpoint::Endpoint;
pub use error::{Result, TransportError};
pub use fd::{FdListener, FdReader, FdRx, FdTx, FdWriter, fd_channel, fd_channel_shared};
pub use frame::{Channel, DEFAULT_MAX_FRAME, FrameRx, FrameTx, Listener, MIN_FRAME, Peer};
pub use sctp::{SctpListener, SctpRx, SctpTx};
pub use stream::{StreamRx, StreamTx};
pub use tcp::{TcpListener, TcpRx, TcpTx};
pub use unix::{UnixListener, UnixRx, UnixTx};
