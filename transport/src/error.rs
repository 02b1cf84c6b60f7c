//! The transport's error type.
//!
//! One enum for every medium, so that the server can treat any failure the same way (log it and
//! close the connection) while still telling framing violations apart from I/O failures.

/// Everything that can go wrong while binding, connecting, receiving or sending.
#[derive(thiserror::Error, Debug)]
pub enum TransportError {
    /// The operating system reported an I/O error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame's size field exceeds the current maximum (see [`crate::FrameRx::set_max_frame`]).
    /// Nothing was allocated for it; the connection should be closed.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The size field as received.
        size: u32,
        /// The maximum in force.
        max: u32,
    },
    /// A frame's size field is smaller than the 7-byte header `size[4] type[1] tag[2]`.
    #[error("frame of {size} bytes is shorter than the 7-byte header")]
    FrameTooShort {
        /// The size field as received.
        size: u32,
    },
    /// The peer closed its sending direction in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes of it received)")]
    UnexpectedEof {
        /// How many bytes of the incomplete frame had arrived.
        buffered: usize,
    },
    /// An SCTP message did not hold exactly one frame: it ended before the frame its size
    /// field announced (`size` is `None` when it ended before the size field), or went on
    /// after it. The association should be closed.
    #[error("{}", mismatch(*size, *message))]
    MessageMismatch {
        /// The frame's size field, if the message got that far.
        size: Option<u32>,
        /// How long the message was (at least; a longer one is cut where its frame ends + 1).
        message: usize,
    },
    /// The kernel has no SCTP (socket creation failed with the error inside).
    #[error(
        "this kernel has no SCTP ({0}): load it with `modprobe sctp` (Debian kernels ship it as a module), or use a tcp: endpoint"
    )]
    SctpUnavailable(std::io::Error),
    /// A Xen guest broke the shared-ring protocol (the device is disconnected).
    #[error("xen ring: {0}")]
    Ring(#[from] envoy_xen::ring::RingError),
    /// An endpoint string or endpoint could not be used; the message names the bad part.
    #[error("bad endpoint: {0}")]
    BadEndpoint(String),
    /// A descriptor handed to the fd transport is of a kind it cannot drive.
    #[error(
        "descriptor {fd} is {kind}; expected a stream socket, a pipe, a FIFO or a character device"
    )]
    UnsupportedFd {
        /// The descriptor number.
        fd: i32,
        /// What it is instead (e.g. "a regular file").
        kind: &'static str,
    },
}

fn mismatch(size: Option<u32>, message: usize) -> String {
    match size {
        Some(size) if message > size as usize => format!(
            "an SCTP message goes on past the {size}-byte frame it carries (a message must hold exactly one frame)"
        ),
        Some(size) => format!(
            "an SCTP message ended after {message} bytes, inside a {size}-byte frame (truncated)"
        ),
        None => format!("an SCTP message of {message} bytes is too short to hold a frame"),
    }
}

/// The transport's result type.
pub type Result<T> = std::result::Result<T, TransportError>;
