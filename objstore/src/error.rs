//! The object layer's errors: one enum for the local store, the storage dialect and the
//! cluster, each variant saying what went wrong and, where there is one, what to do.
//!
//! Every error also has a wire [`ErrorCode`], so that a peer's refusal keeps its class (a
//! missing or corrupt object arrives as the same variant; other classes as
//! [`StoreError::Remote`] carrying the code) and callers can tell a missing object from a
//! corrupt one from a full disk without parsing text.

use std::path::PathBuf;

use crate::ObjectId;

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What went wrong in the object layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such object (here, or on any replica for cluster reads).
    #[error("object {0} not found")]
    NotFound(ObjectId),
    /// The stored bytes do not hash to the object's id: never served.
    #[error("object {id} is corrupt ({detail}); no good copy was served")]
    Corrupt {
        /// The object asked for.
        id: ObjectId,
        /// Where the bad copy is and what it hashed to.
        detail: String,
    },
    /// A put whose content does not hash to the id it claims: refused.
    #[error("refused: content hashes to {actual}, not to the claimed id {claimed}")]
    HashMismatch {
        /// The id the writer claimed.
        claimed: ObjectId,
        /// What the content really hashes to.
        actual: ObjectId,
    },
    /// The disk (or its reserve) is full: nothing was written; retry when space returns.
    #[error(
        "no space for {needed} more bytes in {dir} ({free} bytes free, {reserve} kept in reserve): free space or add a disk; nothing was written"
    )]
    NoSpace {
        /// The store's directory.
        dir: PathBuf,
        /// Bytes the operation needed.
        needed: u64,
        /// Bytes free on the file system.
        free: u64,
        /// Bytes the store keeps free for its index.
        reserve: u64,
    },
    /// An object above the size limit.
    #[error("object of {size} bytes exceeds the {max}-byte object limit")]
    TooLarge {
        /// The object's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A compare-and-set found another version.
    #[error("record {name:?} is at version {current}, not the expected {expected}")]
    Conflict {
        /// The record.
        name: String,
        /// The version the writer expected.
        expected: u64,
        /// The version it is at.
        current: u64,
    },
    /// A range outside the object.
    #[error("range {offset}+{count} is outside object {id} ({size} bytes)")]
    BadRange {
        /// The object.
        id: ObjectId,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        count: u64,
        /// The object's size.
        size: u64,
    },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (and to which file).
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The index (redb) failed.
    #[error("index {path}: {message}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// redb's message.
        message: String,
    },
    /// The directory is not a store this version understands, or its files are damaged
    /// beyond what recovery repairs.
    #[error("store {dir}: {message}")]
    Format {
        /// The store's directory.
        dir: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A malformed request or reply in the storage dialect.
    #[error("bad storage message: {0}")]
    Protocol(String),
    /// A transport failure talking to a peer.
    #[error("storage peer {peer}: {message}")]
    Peer {
        /// The peer (host name or endpoint).
        peer: String,
        /// What failed.
        message: String,
    },
    /// Not enough replicas answered.
    #[error("{op}: only {acks} of the {needed} replicas needed succeeded ({failures})")]
    Quorum {
        /// The operation and object.
        op: String,
        /// Replicas that succeeded.
        acks: usize,
        /// Replicas needed.
        needed: usize,
        /// Why the others failed, per host.
        failures: String,
    },
    /// Something the store refuses for another reason (named in the message).
    #[error("{0}")]
    Refused(String),
    /// A peer's error of a class without a richer variant here (a full disk, a bad range…).
    #[error("{message}")]
    Remote {
        /// Its class.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
}

/// The error classes carried by the storage dialect's `Rerror`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// [`StoreError::NotFound`].
    NotFound = 1,
    /// [`StoreError::Corrupt`].
    Corrupt = 2,
    /// [`StoreError::HashMismatch`].
    HashMismatch = 3,
    /// [`StoreError::NoSpace`].
    NoSpace = 4,
    /// [`StoreError::TooLarge`].
    TooLarge = 5,
    /// [`StoreError::Conflict`].
    Conflict = 6,
    /// [`StoreError::BadRange`].
    BadRange = 7,
    /// [`StoreError::Protocol`].
    Protocol = 8,
    /// [`StoreError::Quorum`] and [`StoreError::Peer`]: replicas unreachable.
    Unavailable = 9,
    /// Anything else (I/O, index, format, refused).
    Other = 10,
}

impl ErrorCode {
    /// The code from its wire byte (unknown bytes are [`ErrorCode::Other`]).
    pub fn from_u8(b: u8) -> ErrorCode {
        match b {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::Corrupt,
            3 => ErrorCode::HashMismatch,
            4 => ErrorCode::NoSpace,
            5 => ErrorCode::TooLarge,
            6 => ErrorCode::Conflict,
            7 => ErrorCode::BadRange,
            8 => ErrorCode::Protocol,
            9 => ErrorCode::Unavailable,
            _ => ErrorCode::Other,
        }
    }
}

impl StoreError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// The wire class of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::Corrupt { .. } => ErrorCode::Corrupt,
            StoreError::HashMismatch { .. } => ErrorCode::HashMismatch,
            StoreError::NoSpace { .. } => ErrorCode::NoSpace,
            StoreError::TooLarge { .. } => ErrorCode::TooLarge,
            StoreError::Conflict { .. } => ErrorCode::Conflict,
            StoreError::BadRange { .. } => ErrorCode::BadRange,
            StoreError::Protocol(_) => ErrorCode::Protocol,
            StoreError::Quorum { .. } | StoreError::Peer { .. } => ErrorCode::Unavailable,
            StoreError::Io { .. }
            | StoreError::Index { .. }
            | StoreError::Format { .. }
            | StoreError::Refused(_) => ErrorCode::Other,
            StoreError::Remote { code, .. } => *code,
        }
    }

    /// A record version carried with the error (the current version of a [`Conflict`]).
    ///
    /// [`Conflict`]: StoreError::Conflict
    pub fn version(&self) -> u64 {
        match self {
            StoreError::Conflict { current, .. } => *current,
            _ => 0,
        }
    }
}
