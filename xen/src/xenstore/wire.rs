//! The xenstore wire format (Xen's `xen/include/public/io/xs_wire.h`): message types, the
//! 16-byte header, payload builders and reply parsers, the errno-name table and the size limits.
//!
//! Pure functions with no I/O, so every rule about bytes on the wire lives in one place and is
//! unit-tested here. Facts checked against the C xenstored of Xen 4.17 (`xenstored_core.c`):
//! requests carry NUL-terminated strings except `WRITE`, whose value follows the path's NUL
//! unterminated (binary values are fine); `READ` replies are the raw value; `DIRECTORY` replies
//! are NUL-terminated names; `GET_PERMS` replies are NUL-terminated permission strings; acks are
//! `"OK\0"`; errors are type `ERROR` with a NUL-terminated errno name.

/// Bytes in a message header: `type`, `req_id`, `tx_id`, `len`, each a little-endian `u32`.
pub const HEADER_LEN: usize = 16;
/// Largest payload either side may send (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`). xenstored applies a tighter limit of its own
/// (2048 bytes below `/local/domain/<id>/`, `XENSTORE_REL_PATH_MAX`) and answers `EINVAL`.
pub const ABS_PATH_MAX: usize = 3072;

/// Message types (`enum xsd_sockmsg_type`).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MsgType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl MsgType {
    /// The type with this number, if it is one.
    pub fn from_u32(v: u32) -> Option<MsgType> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// A message header (`struct xsd_sockmsg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// A [`MsgType`] number (kept raw: replies may carry anything).
    pub ty: u32,
    /// Echoed by xenstored in the reply; 0 in watch events.
    pub req_id: u32,
    /// Transaction id, 0 outside transactions.
    pub tx_id: u32,
    /// Payload bytes that follow.
    pub len: u32,
}

impl Header {
    /// The 16 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.ty.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parse 16 wire bytes (any values; the caller checks `len`).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            ty: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }
}

/// One whole message (header then payload) as a single buffer, so it can be handed to one
/// `write` (the xenbus device wants whole messages). The caller has checked the payload size.
pub fn encode_message(ty: MsgType, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() <= PAYLOAD_MAX);
    let header = Header {
        ty: ty as u32,
        req_id,
        tx_id,
        len: payload.len() as u32,
    };
    let mut msg = Vec::with_capacity(HEADER_LEN + payload.len());
    msg.extend_from_slice(&header.encode());
    msg.extend_from_slice(payload);
    msg
}

/// Why a request cannot be put on the wire (nothing is sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A path over [`ABS_PATH_MAX`] or a payload over [`PAYLOAD_MAX`]; maps to `E2BIG`.
    TooLong(String),
    /// A NUL byte inside a string field; maps to `EINVAL`.
    Nul(String),
}

/// Check one string field (a path, a token): no NUL inside, at most [`ABS_PATH_MAX`] bytes.
pub fn check_path(path: &str) -> Result<(), Refusal> {
    if path.len() > ABS_PATH_MAX {
        return Err(Refusal::TooLong(format!(
            "path is {} bytes, the limit is {ABS_PATH_MAX}",
            path.len()
        )));
    }
    if path.as_bytes().contains(&0) {
        return Err(Refusal::Nul("path contains a NUL byte".into()));
    }
    Ok(())
}

/// Build a payload of NUL-terminated strings (`terminate_last = false` leaves the last field raw,
/// as `WRITE` wants for its value), refusing anything over [`PAYLOAD_MAX`].
pub fn strings_payload(fields: &[&[u8]], terminate_last: bool) -> Result<Vec<u8>, Refusal> {
    let total: usize = fields.iter().map(|f| f.len() + 1).sum::<usize>()
        - usize::from(!terminate_last && !fields.is_empty());
    if total > PAYLOAD_MAX {
        return Err(Refusal::TooLong(format!(
            "request payload would be {total} bytes, the limit is {PAYLOAD_MAX}"
        )));
    }
    let mut p = Vec::with_capacity(total);
    for (i, f) in fields.iter().enumerate() {
        p.extend_from_slice(f);
        if terminate_last || i + 1 < fields.len() {
            p.push(0);
        }
    }
    Ok(p)
}

/// The largest value `WRITE` can carry for `path` (`PAYLOAD_MAX - path - NUL`).
pub fn max_value_len(path: &str) -> usize {
    PAYLOAD_MAX.saturating_sub(path.len() + 1)
}

/// A reply's single string: the bytes up to a trailing NUL (xenstored NUL-terminates strings it
/// returns, except `READ` values, which are returned raw and never passed here).
pub fn reply_string(payload: &[u8]) -> &[u8] {
    payload.strip_suffix(&[0]).unwrap_or(payload)
}

/// Split a list reply (`DIRECTORY`, `GET_PERMS`): NUL-terminated strings; an empty payload is an
/// empty list. A missing final NUL is tolerated.
pub fn split_list(payload: &[u8]) -> Vec<&[u8]> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    if payload.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == 0).collect()
}

/// One `DIRECTORY_PART` reply: the node's generation, the names in this chunk, and whether this
/// was the last chunk (xenstored appends an empty string when the list is complete).
#[derive(Debug, PartialEq, Eq)]
pub struct DirectoryPart<'a> {
    /// The node's generation; a change between chunks means the list changed: start again.
    pub generation: &'a [u8],
    /// Names in this chunk.
    pub names: Vec<&'a [u8]>,
    /// Bytes of the child list this chunk covered (the next offset is this much further).
    pub consumed: usize,
    /// The list is complete.
    pub done: bool,
}

/// Parse a `DIRECTORY_PART` reply: `generation\0` then names each `\0`-terminated, then one more
/// `\0` when the list is complete. `None` if it does not have that shape.
pub fn parse_directory_part(payload: &[u8]) -> Option<DirectoryPart<'_>> {
    let nul = payload.iter().position(|&b| b == 0)?;
    let generation = &payload[..nul];
    let rest = &payload[nul + 1..];
    if rest.is_empty() {
        return None;
    }
    if rest == [0] {
        return Some(DirectoryPart {
            generation,
            names: Vec::new(),
            consumed: 0,
            done: true,
        });
    }
    let (body, done) = match rest.strip_suffix(&[0, 0]) {
        Some(b) => (b, true),
        None => (rest.strip_suffix(&[0])?, false),
    };
    let names: Vec<&[u8]> = body.split(|&b| b == 0).collect();
    if names.iter().any(|n| n.is_empty()) {
        return None;
    }
    Some(DirectoryPart {
        generation,
        names,
        consumed: body.len() + 1,
        done,
    })
}

/// Parse a watch event payload: `path\0token\0`.
pub fn parse_watch_event(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = payload.strip_suffix(&[0])?;
    let nul = body.iter().position(|&b| b == 0)?;
    let (path, token) = (&body[..nul], &body[nul + 1..]);
    if token.contains(&0) {
        return None;
    }
    Some((path, token))
}

/// xenstored's error names and the Linux errno for each (`xsd_errors[]`, plus `EQUOTA`, which
/// oxenstored sends for quota refusals, mapped to `EDQUOT`).
const ERRORS: &[(&str, i32)] = &[
    ("EINVAL", libc::EINVAL),
    ("EACCES", libc::EACCES),
    ("EEXIST", libc::EEXIST),
    ("EISDIR", libc::EISDIR),
    ("ENOENT", libc::ENOENT),
    ("ENOMEM", libc::ENOMEM),
    ("ENOSPC", libc::ENOSPC),
    ("EIO", libc::EIO),
    ("ENOTEMPTY", libc::ENOTEMPTY),
    ("ENOSYS", libc::ENOSYS),
    ("EROFS", libc::EROFS),
    ("EBUSY", libc::EBUSY),
    ("EAGAIN", libc::EAGAIN),
    ("EISCONN", libc::EISCONN),
    ("E2BIG", libc::E2BIG),
    ("EPERM", libc::EPERM),
    ("EQUOTA", libc::EDQUOT),
];

/// The errno named by an `ERROR` reply (`"ENOENT\0"`), with the name as a static string.
pub fn parse_error(payload: &[u8]) -> Option<(i32, &'static str)> {
    let name = reply_string(payload);
    ERRORS
        .iter()
        .find(|(n, _)| n.as_bytes() == name)
        .map(|&(n, e)| (e, n))
}

/// The error name for an errno, if xenstored has one (used for messages).
pub fn error_name(errno: i32) -> Option<&'static str> {
    ERRORS.iter().find(|(_, e)| *e == errno).map(|&(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_is_little_endian() {
        let h = Header {
            ty: 2,
            req_id: 0x0102_0304,
            tx_id: 7,
            len: 4096,
        };
        let b = h.encode();
        assert_eq!(&b[..8], &[2, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(&b[12..], &[0, 16, 0, 0]);
        assert_eq!(Header::decode(&b), h);
    }

    #[test]
    fn message_types_round_trip() {
        for v in 0..64 {
            if let Some(t) = MsgType::from_u32(v) {
                assert_eq!(t as u32, v);
            }
        }
        assert_eq!(MsgType::from_u32(20), None);
        assert_eq!(MsgType::from_u32(22), Some(MsgType::DirectoryPart));
    }

    #[test]
    fn payloads() {
        assert_eq!(strings_payload(&[b"/a"], true).unwrap(), b"/a\0");
        assert_eq!(
            strings_payload(&[b"/a", b"v\0x"], false).unwrap(),
            b"/a\0v\0x"
        );
        assert_eq!(strings_payload(&[b"/a", b""], false).unwrap(), b"/a\0");
        let path = "/".to_string() + &"p".repeat(99);
        let v = vec![7u8; max_value_len(&path)];
        assert_eq!(
            strings_payload(&[path.as_bytes(), &v], false)
                .unwrap()
                .len(),
            PAYLOAD_MAX
        );
        let v = vec![7u8; max_value_len(&path) + 1];
        assert!(matches!(
            strings_payload(&[path.as_bytes(), &v], false),
            Err(Refusal::TooLong(_))
        ));
    }

    #[test]
    fn paths() {
        assert!(check_path(&"a".repeat(ABS_PATH_MAX)).is_ok());
        assert!(matches!(
            check_path(&"a".repeat(ABS_PATH_MAX + 1)),
            Err(Refusal::TooLong(_))
        ));
        assert!(matches!(check_path("/a\0b"), Err(Refusal::Nul(_))));
    }

    #[test]
    fn lists() {
        assert!(split_list(b"").is_empty());
        assert_eq!(split_list(b"a\0bc\0"), vec![&b"a"[..], b"bc"]);
        assert_eq!(split_list(b"a\0bc"), vec![&b"a"[..], b"bc"]);
        assert_eq!(reply_string(b"/local/domain/3\0"), b"/local/domain/3");
    }

    #[test]
    fn directory_parts() {
        let p = parse_directory_part(b"17\0a\0bb\0").unwrap();
        assert_eq!(
            (p.generation, p.names.clone(), p.consumed, p.done),
            (&b"17"[..], vec![&b"a"[..], b"bb"], 5, false)
        );
        let p = parse_directory_part(b"17\0c\0\0").unwrap();
        assert_eq!((p.names, p.consumed, p.done), (vec![&b"c"[..]], 2, true));
        let p = parse_directory_part(b"17\0\0").unwrap();
        assert!(p.done && p.names.is_empty());
        assert!(parse_directory_part(b"17").is_none());
        assert!(parse_directory_part(b"17\0").is_none());
        assert!(parse_directory_part(b"17\0a\0\0\0").is_none());
    }

    #[test]
    fn watch_events() {
        assert_eq!(
            parse_watch_event(b"/a/b\0tok\0"),
            Some((&b"/a/b"[..], &b"tok"[..]))
        );
        assert_eq!(parse_watch_event(b"/a/b\0tok"), None);
        assert_eq!(parse_watch_event(b"/a/b\0"), None);
        assert_eq!(parse_watch_event(b""), None);
        assert_eq!(parse_watch_event(b"/a\0t\0x\0"), None);
    }

    #[test]
    fn errors() {
        assert_eq!(parse_error(b"ENOENT\0"), Some((libc::ENOENT, "ENOENT")));
        assert_eq!(parse_error(b"EQUOTA\0"), Some((libc::EDQUOT, "EQUOTA")));
        assert_eq!(parse_error(b"EAGAIN"), Some((libc::EAGAIN, "EAGAIN")));
        assert_eq!(parse_error(b"EWHAT\0"), None);
        assert_eq!(parse_error(b"\xff\0"), None);
        assert_eq!(error_name(libc::EACCES), Some("EACCES"));
    }
}
