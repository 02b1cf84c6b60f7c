//! [`XsError`]: every way a xenstore call can fail, each message naming the operation and the
//! path (`xenstore read /local/domain/1/x: ENOENT`) so a log line says what was attempted.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Paths longer than this are shortened in messages (a 3 KiB path helps nobody in a log).
const SHOWN_PATH_MAX: usize = 160;

/// A xenstore call failed.
#[derive(Debug, thiserror::Error)]
pub enum XsError {
    /// xenstored refused the request with an errno (`ENOENT`, `EACCES`, `EAGAIN`, ...).
    #[error("xenstore {op} {path}: {name}")]
    Refused {
        /// The operation (`read`, `write`, `commit`, ...).
        op: &'static str,
        /// The path it was about (possibly shortened).
        path: String,
        /// The Linux errno for `name`.
        errno: i32,
        /// The error name xenstored sent.
        name: &'static str,
    },
    /// Refused by this client before anything was sent: a path or value over the protocol's
    /// limits, or a NUL inside a string field.
    #[error("xenstore {op} {path}: {reason} (not sent)")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// The path (possibly shortened).
        path: String,
        /// `E2BIG` for sizes, `EINVAL` otherwise.
        errno: i32,
        /// What was wrong.
        reason: String,
    },
    /// The connection to xenstored is gone (or went away while the request was in flight).
    #[error("xenstore {op} {path}: connection closed: {reason}")]
    Closed {
        /// The operation.
        op: &'static str,
        /// The path (possibly shortened).
        path: String,
        /// Why the connection ended.
        reason: Arc<str>,
    },
    /// xenstored answered something this client cannot make sense of (wrong reply type, an
    /// unknown error name, a malformed list). The connection stays up.
    #[error("xenstore {op} {path}: bad reply: {detail}")]
    BadReply {
        /// The operation.
        op: &'static str,
        /// The path (possibly shortened).
        path: String,
        /// What was wrong with the reply.
        detail: String,
    },
    /// The value is not UTF-8 (from the `*_string` readers; [`crate::xenstore::Xenstore::read`]
    /// returns raw bytes).
    #[error("xenstore {op} {path}: value is not UTF-8")]
    NotUtf8 {
        /// The operation.
        op: &'static str,
        /// The path (possibly shortened).
        path: String,
    },
    /// Opening the connection failed.
    #[error("xenstore: cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket or device tried.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

impl XsError {
    /// The errno this error stands for: xenstored's for [`XsError::Refused`], `E2BIG`/`EINVAL`
    /// for [`XsError::Invalid`]; `None` for connection and protocol failures.
    pub fn errno(&self) -> Option<i32> {
        match self {
            XsError::Refused { errno, .. } | XsError::Invalid { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// xenstored said the node does not exist.
    pub fn is_enoent(&self) -> bool {
        matches!(self, XsError::Refused { errno, .. } if *errno == libc::ENOENT)
    }

    /// xenstored said "try again": a transaction commit lost a conflict.
    pub fn is_again(&self) -> bool {
        matches!(self, XsError::Refused { errno, .. } if *errno == libc::EAGAIN)
    }

    /// The connection is gone.
    pub fn is_closed(&self) -> bool {
        matches!(self, XsError::Closed { .. })
    }
}

/// A path as shown in error messages: shortened past [`SHOWN_PATH_MAX`] bytes.
pub(crate) fn shown(path: &str) -> String {
    if path.len() <= SHOWN_PATH_MAX {
        return path.to_string();
    }
    let mut end = SHOWN_PATH_MAX;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &path[..end], path.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_operation_and_path() {
        let e = XsError::Refused {
            op: "read",
            path: "/local/domain/1/x".into(),
            errno: libc::ENOENT,
            name: "ENOENT",
        };
        assert_eq!(e.to_string(), "xenstore read /local/domain/1/x: ENOENT");
        assert!(e.is_enoent() && !e.is_again() && e.errno() == Some(libc::ENOENT));
        let long = shown(&"/x".repeat(2000));
        assert!(long.len() < 200 && long.ends_with("(4000 bytes)"), "{long}");
    }
}
