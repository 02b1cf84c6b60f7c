//! Why a frame could not be decoded, and the errno a server answers with.

use crate::dialect::Dialect;

/// Linux errno values used by [`DecodeError::errno`] (asm-generic/errno*.h).
const EINVAL: u32 = 22;
const EPROTO: u32 = 71;
const EBADMSG: u32 = 74;
const EILSEQ: u32 = 84;
const EOPNOTSUPP: u32 = 95;

/// A malformed or unsupported 9P message.
///
/// Decoding is strict: anything that would not re-encode to the same bytes is an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is shorter than the 7-byte `size[4] type[1] tag[2]` header.
    #[error("frame shorter than the 7-byte message header")]
    FrameTooShort,
    /// The header's size field disagrees with the length of the frame.
    #[error("message size field says {declared} bytes but the frame has {actual}")]
    SizeMismatch {
        /// The size field.
        declared: u32,
        /// The frame's length.
        actual: usize,
    },
    /// The message body ended before all its fields were read.
    #[error("message truncated")]
    Truncated,
    /// Bytes were left over after the last field.
    #[error("trailing bytes after the message ({0})")]
    TrailingBytes(usize),
    /// No 9P message has this type number.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The message type exists but not in the negotiated dialect.
    #[error("message type {ty} is not part of {dialect}")]
    NotInDialect {
        /// The type number.
        ty: u8,
        /// The dialect the frame was decoded in.
        dialect: Dialect,
    },
    /// A string is not valid UTF-8.
    #[error("string is not valid utf-8")]
    InvalidUtf8,
    /// A string contains a NUL byte.
    #[error("string contains a nul byte")]
    NulInString,
    /// A Twalk/Rwalk lists more than MAXWELEM (16) elements.
    #[error("too many walk elements ({0}, at most 16)")]
    TooManyWalkElements(u16),
    /// A stat structure's size fields disagree with its contents.
    #[error("malformed stat: {0}")]
    BadStat(&'static str),
    /// A data count (Rread, Twrite, Rreaddir) disagrees with the bytes present.
    #[error("data count says {declared} bytes but {actual} are present")]
    BadCount {
        /// The count field.
        declared: u32,
        /// The bytes remaining in the message.
        actual: usize,
    },
}

impl DecodeError {
    /// The Linux errno a server should reply with (in Rlerror, or Rerror's `errno`).
    ///
    /// Framing errors are `EPROTO`, bodies that do not parse are `EBADMSG`, unknown or
    /// foreign message types are `EOPNOTSUPP`, bad UTF-8 is `EILSEQ` and NUL bytes or too
    /// many walk elements are `EINVAL`.
    pub fn errno(&self) -> u32 {
        match self {
            DecodeError::FrameTooShort | DecodeError::SizeMismatch { .. } => EPROTO,
            DecodeError::Truncated
            | DecodeError::TrailingBytes(_)
            | DecodeError::BadStat(_)
            | DecodeError::BadCount { .. } => EBADMSG,
            DecodeError::UnknownType(_) | DecodeError::NotInDialect { .. } => EOPNOTSUPP,
            DecodeError::InvalidUtf8 => EILSEQ,
            DecodeError::NulInString | DecodeError::TooManyWalkElements(_) => EINVAL,
        }
    }
}
