//! What can go wrong on the client side of a 9P conversation.

use envoy_protocol::{DecodeError, Fcall};

/// A failed client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, reading or writing the stream failed.
    #[error("i/o error: {0}")]
    Io(std::io::Error),
    /// The transport failed other than by an I/O error: a framing violation by the server,
    /// a bad endpoint, a kernel without SCTP.
    #[error("transport: {0}")]
    Transport(envoy_transport::TransportError),
    /// The server sent a frame that does not decode.
    #[error("malformed reply: {0}")]
    Decode(DecodeError),
    /// The server answered with Rlerror (9P2000.L) or Rerror (9P2000, 9P2000.u).
    ///
    /// For Rlerror `ename` is the errno's text; for a 9P2000 Rerror, which carries no
    /// number, `errno` is 0.
    #[error("server error: {ename} (errno {errno})")]
    Remote {
        /// The Linux errno.
        errno: u32,
        /// The error text.
        ename: String,
    },
    /// The reply was a valid message of the wrong kind.
    #[error("unexpected {} in reply to {request}", reply.name())]
    UnexpectedReply {
        /// Name of the request, e.g. `"Twalk"`.
        request: &'static str,
        /// What came back.
        reply: Box<Fcall>,
    },
    /// A walk stopped before its last element (Rwalk with fewer qids than names).
    #[error("walk stopped after {walked} of {requested} elements")]
    WalkIncomplete {
        /// Elements walked.
        walked: usize,
        /// Elements asked for.
        requested: usize,
    },
    /// The request was flushed (Rflush arrived before its reply).
    #[error("request flushed")]
    Flushed,
    /// The connection is closed (by the server, an I/O error, or dropping the client).
    #[error("connection closed")]
    Closed,
    /// Version negotiation failed: the server answered "unknown", a version this client
    /// does not speak, or an unusable msize.
    #[error("version rejected: {0}")]
    VersionRejected(String),
}

// Written out rather than `#[from]`, which would also make the inner error the `source`
// and have it printed twice in error chains: the message already includes it.
impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> ClientError {
        ClientError::Io(e)
    }
}

impl From<envoy_transport::TransportError> for ClientError {
    fn from(e: envoy_transport::TransportError) -> ClientError {
        match e {
            envoy_transport::TransportError::Io(e) => ClientError::Io(e),
            e => ClientError::Transport(e),
        }
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> ClientError {
        ClientError::Decode(e)
    }
}

impl ClientError {
    /// The errno of a [`Remote`](ClientError::Remote) error.
    pub fn errno(&self) -> Option<u32> {
        match self {
            ClientError::Remote { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The text of a Linux errno, as `strerror` would give it.
pub(crate) fn errno_text(errno: u32) -> String {
    let text = i32::try_from(errno).map(|e| std::io::Error::from_raw_os_error(e).to_string());
    match text {
        // std appends " (os error N)"; the errno is reported separately.
        Ok(t) => t.split(" (os error").next().unwrap_or(&t).to_owned(),
        Err(_) => format!("errno {errno}"),
    }
}
