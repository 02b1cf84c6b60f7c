//! The 9P wire format, in its three dialects: 9P2000, 9P2000.u and 9P2000.L.
//!
//! This crate turns bytes into messages and messages into bytes, and does nothing else: no
//! I/O, no async, no file system. Envoy's server, its client library and its fuzzers all
//! share it, so there is exactly one description of the protocol.
//!
//! - [`decode`] takes one whole frame and returns its tag and an [`Fcall`]; it is strict
//!   (sizes, counts, UTF-8, dialect membership, no trailing bytes) so that anything it
//!   accepts re-encodes to the same bytes, and it never allocates more than the frame
//!   justifies. Data payloads are zero-copy slices of the frame.
//! - [`Fcall::encode`] appends a whole message; [`encode_data_reply_header`] lets a server
//!   read file data straight into its reply buffer.
//! - [`peek_header`] frames a byte stream.
//! - [`Stat`], [`Dirent`], [`decode_stats`] and [`decode_dirents`] handle the records
//!   inside directory reads.
//! - [`consts`] has the numbers: message types, `QT*`, `DM*`, open modes and flags.
//!
//! Every message is one struct named as in the protocol (`Twalk`, `Rlerror`, ...) with the
//! fields of its wire layout, all generated from a single table in the `messages` module.
//! Fields that only 9P2000.u and .L carry (`n_uname`, Rerror's `errno`, Tcreate's
//! `extension`, the stat's tail) are left out when encoding 9P2000 and take their defaults
//! when decoding it.
//!
//! ```
//! use bytes::BytesMut;
//! use envoy_protocol::{Dialect, Fcall, Tclunk, decode};
//!
//! let mut buf = BytesMut::new();
//! Fcall::from(Tclunk { fid: 7 }).encode(1, Dialect::P9P2000L, &mut buf);
//! assert_eq!(&buf[..], &[11, 0, 0, 0, 120, 1, 0, 7, 0, 0, 0]);
//! let (tag, msg) = decode(buf.freeze(), Dialect::P9P2000L).unwrap();
//! assert_eq!((tag, msg), (1, Fcall::Tclunk(Tclunk { fid: 7 })));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod consts;
mod dialect;
mod dirent;
mod error;
mod frame;
pub mod fuzzing;
mod messages;
#[cfg(test)]
mod proptests;
mod qid;
mod stat;
mod wire;

pub use dialect::Dialect;
pub use dirent::{Dirent, DirentIter, decode_dirents};
pub use error::DecodeError;
pub use frame::{DATA_REPLY_HEADER_LEN, Header, decode, encode_data_reply_header, peek_header};
pub use messages::*;
pub use qid::Qid;
pub use stat::{Stat, decode_stats};
