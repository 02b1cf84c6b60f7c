//! The qid: the server's unique identity for a file.

/// A qid, `type[1] version[4] path[8]` on the wire (13 bytes).
///
/// `path` is unique among the files of a server, `version` changes when the file does (0
/// means "do not cache"), and `ty` holds the `QT*` bits of [`consts`](crate::consts).
#[derive(Copy, Clone, Default, Debug, PartialEq, Eq, Hash)]
pub struct Qid {
    /// `QT*` type bits (the high byte of the file's mode).
    pub ty: u8,
    /// Version of the file, bumped on modification.
    pub version: u32,
    /// Unique file identity (Linux servers use the inode number).
    pub path: u64,
}

impl Qid {
    /// Encoded size of a qid.
    pub const LEN: usize = 13;
}
