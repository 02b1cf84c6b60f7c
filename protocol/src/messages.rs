//! Every 9P message, described once.
//!
//! The `messages!` table below lists each message's type number, name and fields in
//! wire order. From it come the message structs, the [`Fcall`] enum, and each message's
//! encoding, decoding, encoded length and type number: nothing per message is written by
//! hand. A field is encoded by the [`WireFormat`] impl of its type, except:
//!
//! - `[ext = DEFAULT]`: a 9P2000.u extension field, on the wire only when
//!   [`Dialect::extended`]; decoding 9P2000 yields `DEFAULT`.
//! - `[via = CODEC]`: encoded by `CODEC` instead (the `n[2] stat[n]` of Rstat/Twstat).
//!
//! Layouts are those of protocol.md §A1, taken from the Plan 9 manual section 5, the
//! 9P2000.u draft and diod `protocol.md`.

use crate::consts::{self, NONUNAME};
use crate::dialect::Dialect;
use crate::error::DecodeError;
use crate::qid::Qid;
use crate::stat::{CountedStat, Stat};
use crate::wire::WireFormat;
use bytes::{Bytes, BytesMut};

/// One field operation, chosen by the field's `[...]` options.
macro_rules! field {
    (len $v:expr, $d:ident, []) => {
        WireFormat::encoded_len($v, $d)
    };
    (len $v:expr, $d:ident, [ext = $def:expr]) => {
        if $d.extended() {
            WireFormat::encoded_len($v, $d)
        } else {
            0
        }
    };
    (len $v:expr, $d:ident, [via = $codec:ty]) => {
        <$codec>::encoded_len($v, $d)
    };

    (enc $v:expr, $buf:ident, $d:ident, []) => {
        WireFormat::encode($v, $buf, $d)
    };
    (enc $v:expr, $buf:ident, $d:ident, [ext = $def:expr]) => {
        if $d.extended() {
            WireFormat::encode($v, $buf, $d)
        }
    };
    (enc $v:expr, $buf:ident, $d:ident, [via = $codec:ty]) => {
        <$codec>::encode($v, $buf, $d)
    };

    (dec $t:ty, $buf:ident, $d:ident, []) => {
        <$t as WireFormat>::decode($buf, $d)?
    };
    (dec $t:ty, $buf:ident, $d:ident, [ext = $def:expr]) => {
        if $d.extended() {
            <$t as WireFormat>::decode($buf, $d)?
        } else {
            $def
        }
    };
    (dec $t:ty, $buf:ident, $d:ident, [via = $codec:ty]) => {
        <$codec>::decode($buf, $d)?
    };
}

macro_rules! messages {
    ($(
        $(#[$meta:meta])*
        $ty:ident => $name:ident {
            $(
                $(#[$fmeta:meta])*
                $field:ident : $fty:ty $([$($opt:tt)*])?
            ),* $(,)?
        }
    )*) => {
        $(
            $(#[$meta])*
            #[derive(Clone, Debug, PartialEq, Eq)]
            pub struct $name {
                $( $(#[$fmeta])* pub $field: $fty, )*
            }

            impl $name {
                #[doc = concat!("The type number of ", stringify!($name), " (`consts::", stringify!($ty), "`).")]
                pub const TYPE: u8 = consts::$ty;
            }

            impl WireFormat for $name {
                fn encoded_len(&self, d: Dialect) -> usize {
                    let _ = d;
                    0 $( + field!(len &self.$field, d, [$($($opt)*)?]) )*
                }
                fn encode(&self, buf: &mut BytesMut, d: Dialect) {
                    let _ = (&buf, d);
                    $( field!(enc &self.$field, buf, d, [$($($opt)*)?]); )*
                }
                fn decode(buf: &mut Bytes, d: Dialect) -> Result<Self, DecodeError> {
                    let _ = (&buf, d);
                    Ok($name { $( $field: field!(dec $fty, buf, d, [$($($opt)*)?]), )* })
                }
            }

            impl From<$name> for Fcall {
                fn from(m: $name) -> Fcall {
                    Fcall::$name(m)
                }
            }
        )*

        /// Any 9P message: one variant per message, named like its struct.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Fcall {
            $(
                #[doc = concat!("A [`", stringify!($name), "`].")]
                $name($name),
            )*
        }

        impl Fcall {
            /// The message's type number.
            pub fn ty(&self) -> u8 {
                match self { $( Fcall::$name(_) => $name::TYPE, )* }
            }

            /// The message's name, e.g. `"Twalk"`.
            pub fn name(&self) -> &'static str {
                match self { $( Fcall::$name(_) => stringify!($name), )* }
            }

            /// Length of the body (everything after `size[4] type[1] tag[2]`).
            pub(crate) fn body_len(&self, d: Dialect) -> usize {
                match self { $( Fcall::$name(m) => m.encoded_len(d), )* }
            }

            /// Append the body.
            pub(crate) fn encode_body(&self, buf: &mut BytesMut, d: Dialect) {
                match self { $( Fcall::$name(m) => m.encode(buf, d), )* }
            }

            /// Decode the body of a message of type `ty`; `None` if no message has it.
            pub(crate) fn decode_body(ty: u8, buf: &mut Bytes, d: Dialect) -> Option<Result<Fcall, DecodeError>> {
                Some(match ty {
                    $( $name::TYPE => $name::decode(buf, d).map(Fcall::$name), )*
                    _ => return None,
                })
            }
        }

        /// Whether some message has type number `ty`.
        pub(crate) fn is_known_type(ty: u8) -> bool {
            matches!(ty, $( $name::TYPE )|*)
        }

        /// Test-only: a proptest strategy for every message, arbitrary in the fields that
        /// dialect `d` puts on the wire and default in the others.
        #[cfg(test)]
        pub(crate) fn arbitrary_messages(d: Dialect) -> Vec<(u8, proptest::strategy::BoxedStrategy<Fcall>)> {
            use proptest::strategy::Strategy;
            vec![ $(
                (
                    $name::TYPE,
                    arb_nested!(d; $( [$fty; $($($opt)*)?] )*)
                        .prop_map(|arb_pattern!($($field)*)| Fcall::$name($name { $($field),* }))
                        .boxed(),
                ),
            )* ]
        }
    };
}

/// Test-only: nest field strategies as `(a, (b, (c, Just(()))))`, since tuples of
/// strategies stop at twelve elements.
#[cfg(test)]
macro_rules! arb_nested {
    ($d:ident;) => { proptest::strategy::Just(()) };
    ($d:ident; [$t:ty; ext = $def:expr] $($rest:tt)*) => {
        (
            if $d.extended() {
                crate::proptests::arb::<$t>($d)
            } else {
                proptest::strategy::Strategy::boxed(proptest::strategy::Just($def))
            },
            arb_nested!($d; $($rest)*),
        )
    };
    ($d:ident; [$t:ty; $($opt:tt)*] $($rest:tt)*) => {
        (crate::proptests::arb::<$t>($d), arb_nested!($d; $($rest)*))
    };
}

/// Test-only: the pattern matching [`arb_nested!`]'s value.
#[cfg(test)]
macro_rules! arb_pattern {
    () => { () };
    ($f:ident $($rest:ident)*) => { ($f, arb_pattern!($($rest)*)) };
}

messages! {
    // ----------------------------------------------------------------- 9P2000.L ---------

    /// 9P2000.L error reply: `ecode[4]`.
    RLERROR => Rlerror {
        /// Linux errno.
        ecode: u32,
    }
    /// 9P2000.L: file system statistics of the file system holding `fid`: `fid[4]`.
    TSTATFS => Tstatfs {
        /// Any fid on the file system.
        fid: u32,
    }
    /// 9P2000.L statfs reply: `type[4] bsize[4] blocks[8] bfree[8] bavail[8] files[8]
    /// ffree[8] fsid[8] namelen[4]` (the fields of `statfs(2)`).
    RSTATFS => Rstatfs {
        /// File system type (`f_type`).
        ty: u32,
        /// Optimal transfer block size.
        bsize: u32,
        /// Total data blocks.
        blocks: u64,
        /// Free blocks.
        bfree: u64,
        /// Free blocks available to unprivileged users.
        bavail: u64,
        /// Total file nodes.
        files: u64,
        /// Free file nodes.
        ffree: u64,
        /// File system id.
        fsid: u64,
        /// Maximum file name length.
        namelen: u32,
    }
    /// 9P2000.L: open `fid`: `fid[4] flags[4]`.
    TLOPEN => Tlopen {
        /// The fid to open.
        fid: u32,
        /// `P9_DOTL_*` open flags.
        flags: u32,
    }
    /// 9P2000.L lopen reply: `qid[13] iounit[4]`.
    RLOPEN => Rlopen {
        /// The opened file's qid.
        qid: Qid,
        /// Largest I/O that is atomic, or 0 for "msize - IOHDRSZ".
        iounit: u32,
    }
    /// 9P2000.L: create and open a regular file: `fid[4] name[s] flags[4] mode[4] gid[4]`.
    /// Afterwards `fid` stands for the new file.
    TLCREATE => Tlcreate {
        /// The directory to create in; becomes the new file.
        fid: u32,
        /// Name of the new file.
        name: String,
        /// `P9_DOTL_*` open flags.
        flags: u32,
        /// Permission bits.
        mode: u32,
        /// Effective gid of the caller.
        gid: u32,
    }
    /// 9P2000.L lcreate reply: `qid[13] iounit[4]`.
    RLCREATE => Rlcreate {
        /// The new file's qid.
        qid: Qid,
        /// Largest atomic I/O, or 0.
        iounit: u32,
    }
    /// 9P2000.L: create a symlink: `fid[4] name[s] symtgt[s] gid[4]`.
    TSYMLINK => Tsymlink {
        /// The directory to create in.
        fid: u32,
        /// Name of the link.
        name: String,
        /// Link target.
        symtgt: String,
        /// Effective gid of the caller.
        gid: u32,
    }
    /// 9P2000.L symlink reply: `qid[13]`.
    RSYMLINK => Rsymlink {
        /// The link's qid.
        qid: Qid,
    }
    /// 9P2000.L: create a device node, fifo or socket: `dfid[4] name[s] mode[4] major[4]
    /// minor[4] gid[4]`.
    TMKNOD => Tmknod {
        /// The directory to create in.
        dfid: u32,
        /// Name of the node.
        name: String,
        /// Type and permission bits (`S_IF*` | mode).
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
        /// Effective gid of the caller.
        gid: u32,
    }
    /// 9P2000.L mknod reply: `qid[13]`.
    RMKNOD => Rmknod {
        /// The node's qid.
        qid: Qid,
    }
    /// 9P2000.L: move the file `fid` to `name` in directory `dfid`: `fid[4] dfid[4] name[s]`.
    TRENAME => Trename {
        /// The file to rename.
        fid: u32,
        /// The target directory.
        dfid: u32,
        /// The new name.
        name: String,
    }
    /// 9P2000.L rename reply (empty).
    RRENAME => Rrename {}
    /// 9P2000.L: read a symlink: `fid[4]`.
    TREADLINK => Treadlink {
        /// The symlink.
        fid: u32,
    }
    /// 9P2000.L readlink reply: `target[s]`.
    RREADLINK => Rreadlink {
        /// The link's contents.
        target: String,
    }
    /// 9P2000.L: get attributes: `fid[4] request_mask[8]`.
    TGETATTR => Tgetattr {
        /// The file.
        fid: u32,
        /// `GETATTR_*` bits of the fields wanted.
        request_mask: u64,
    }
    /// 9P2000.L getattr reply: `valid[8] qid[13] mode[4] uid[4] gid[4] nlink[8] rdev[8]
    /// size[8] blksize[8] blocks[8] atime_sec[8] atime_nsec[8] mtime_sec[8] mtime_nsec[8]
    /// ctime_sec[8] ctime_nsec[8] btime_sec[8] btime_nsec[8] gen[8] data_version[8]`.
    RGETATTR => Rgetattr {
        /// `GETATTR_*` bits of the fields that are valid.
        valid: u64,
        /// The file's qid (its path is the inode number).
        qid: Qid,
        /// Type and permission bits (`st_mode`).
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Number of hard links.
        nlink: u64,
        /// Device id, for device nodes.
        rdev: u64,
        /// Size in bytes.
        size: u64,
        /// Preferred I/O block size.
        blksize: u64,
        /// Number of 512-byte blocks allocated.
        blocks: u64,
        /// Last access, seconds.
        atime_sec: u64,
        /// Last access, nanoseconds.
        atime_nsec: u64,
        /// Last modification, seconds.
        mtime_sec: u64,
        /// Last modification, nanoseconds.
        mtime_nsec: u64,
        /// Last status change, seconds.
        ctime_sec: u64,
        /// Last status change, nanoseconds.
        ctime_nsec: u64,
        /// Creation, seconds (reserved).
        btime_sec: u64,
        /// Creation, nanoseconds (reserved).
        btime_nsec: u64,
        /// Inode generation (reserved). A raw identifier: `gen` is a keyword in Rust 2024.
        r#gen: u64,
        /// Data version (reserved).
        data_version: u64,
    }
    /// 9P2000.L: set attributes: `fid[4] valid[4] mode[4] uid[4] gid[4] size[8]
    /// atime_sec[8] atime_nsec[8] mtime_sec[8] mtime_nsec[8]`.
    TSETATTR => Tsetattr {
        /// The file.
        fid: u32,
        /// `SETATTR_*` bits of the fields to set.
        valid: u32,
        /// New permission bits.
        mode: u32,
        /// New owner.
        uid: u32,
        /// New group.
        gid: u32,
        /// New size (truncate).
        size: u64,
        /// New access time, seconds (with `SETATTR_ATIME_SET`).
        atime_sec: u64,
        /// New access time, nanoseconds.
        atime_nsec: u64,
        /// New modification time, seconds (with `SETATTR_MTIME_SET`).
        mtime_sec: u64,
        /// New modification time, nanoseconds.
        mtime_nsec: u64,
    }
    /// 9P2000.L setattr reply (empty).
    RSETATTR => Rsetattr {}
    /// 9P2000.L: open extended attribute `name` of `fid` for reading as `newfid`:
    /// `fid[4] newfid[4] name[s]` (an empty name lists all attributes).
    TXATTRWALK => Txattrwalk {
        /// The file.
        fid: u32,
        /// The fid to read the value (or list) from.
        newfid: u32,
        /// Attribute name, or empty for the list.
        name: String,
    }
    /// 9P2000.L xattrwalk reply: `size[8]`.
    RXATTRWALK => Rxattrwalk {
        /// Size of the value (or list).
        size: u64,
    }
    /// 9P2000.L: turn `fid` into a handle for writing attribute `name`: `fid[4] name[s]
    /// attr_size[8] flags[4]`. The value is set when the fid is clunked.
    TXATTRCREATE => Txattrcreate {
        /// The file; becomes the attribute handle.
        fid: u32,
        /// Attribute name.
        name: String,
        /// Exact size of the value that will be written.
        attr_size: u64,
        /// `XATTR_CREATE` / `XATTR_REPLACE`.
        flags: u32,
    }
    /// 9P2000.L xattrcreate reply (empty).
    RXATTRCREATE => Rxattrcreate {}
    /// 9P2000.L: read directory entries: `fid[4] offset[8] count[4]`.
    TREADDIR => Treaddir {
        /// The open directory.
        fid: u32,
        /// 0, or the offset of the last entry returned so far.
        offset: u64,
        /// Maximum bytes of entries to return.
        count: u32,
    }
    /// 9P2000.L readdir reply: `count[4] data[count]`, packed [`Dirent`](crate::Dirent)s.
    RREADDIR => Rreaddir {
        /// The entries (a slice of the received frame when decoded).
        data: Bytes,
    }
    /// 9P2000.L: flush a file to stable storage: `fid[4] datasync[4]`.
    TFSYNC => Tfsync {
        /// The open file.
        fid: u32,
        /// Nonzero for `fdatasync` semantics.
        datasync: u32,
    }
    /// 9P2000.L fsync reply (empty).
    RFSYNC => Rfsync {}
    /// 9P2000.L: acquire or release a POSIX record lock: `fid[4] type[1] flags[4] start[8]
    /// length[8] proc_id[4] client_id[s]`.
    TLOCK => Tlock {
        /// The open file.
        fid: u32,
        /// `LOCK_TYPE_*`.
        ty: u8,
        /// `LOCK_FLAG_*`.
        flags: u32,
        /// First byte of the range.
        start: u64,
        /// Length of the range (0 = to the end).
        length: u64,
        /// Process id of the lock owner.
        proc_id: u32,
        /// Client identity (the Linux client sends its nodename).
        client_id: String,
    }
    /// 9P2000.L lock reply: `status[1]`.
    RLOCK => Rlock {
        /// `LOCK_STATUS_*`.
        status: u8,
    }
    /// 9P2000.L: test for a conflicting lock: `fid[4] type[1] start[8] length[8]
    /// proc_id[4] client_id[s]`.
    TGETLOCK => Tgetlock {
        /// The open file.
        fid: u32,
        /// `LOCK_TYPE_*` of the lock that would be taken.
        ty: u8,
        /// First byte of the range.
        start: u64,
        /// Length of the range.
        length: u64,
        /// Process id of the would-be owner.
        proc_id: u32,
        /// Client identity.
        client_id: String,
    }
    /// 9P2000.L getlock reply: the conflicting lock, or the request with type UNLCK:
    /// `type[1] start[8] length[8] proc_id[4] client_id[s]`.
    RGETLOCK => Rgetlock {
        /// `LOCK_TYPE_*`.
        ty: u8,
        /// First byte of the range.
        start: u64,
        /// Length of the range.
        length: u64,
        /// Process id of the holder.
        proc_id: u32,
        /// Client identity of the holder.
        client_id: String,
    }
    /// 9P2000.L: hard-link `fid` as `name` in `dfid`: `dfid[4] fid[4] name[s]`.
    TLINK => Tlink {
        /// The directory to link in.
        dfid: u32,
        /// The link target.
        fid: u32,
        /// Name of the new link.
        name: String,
    }
    /// 9P2000.L link reply (empty).
    RLINK => Rlink {}
    /// 9P2000.L: create a directory: `dfid[4] name[s] mode[4] gid[4]`.
    TMKDIR => Tmkdir {
        /// The parent directory.
        dfid: u32,
        /// Name of the new directory.
        name: String,
        /// Permission bits.
        mode: u32,
        /// Effective gid of the caller.
        gid: u32,
    }
    /// 9P2000.L mkdir reply: `qid[13]`.
    RMKDIR => Rmkdir {
        /// The new directory's qid.
        qid: Qid,
    }
    /// 9P2000.L: rename by name: `olddirfid[4] oldname[s] newdirfid[4] newname[s]`.
    TRENAMEAT => Trenameat {
        /// The source directory.
        olddirfid: u32,
        /// The source name.
        oldname: String,
        /// The target directory.
        newdirfid: u32,
        /// The target name.
        newname: String,
    }
    /// 9P2000.L renameat reply (empty).
    RRENAMEAT => Rrenameat {}
    /// 9P2000.L: unlink by name: `dirfd[4] name[s] flags[4]`.
    TUNLINKAT => Tunlinkat {
        /// The directory.
        dirfd: u32,
        /// The name to remove.
        name: String,
        /// `AT_REMOVEDIR` to remove a directory.
        flags: u32,
    }
    /// 9P2000.L unlinkat reply (empty).
    RUNLINKAT => Runlinkat {}

    // ----------------------------------------------------------- 9P2000 and .u ---------

    /// Negotiate protocol version and message size (version(5)): `msize[4] version[s]`.
    /// Sent with tag NOTAG.
    TVERSION => Tversion {
        /// Largest message the client will send or accept, size field included.
        msize: u32,
        /// The proposed version, e.g. `"9P2000.L"`.
        version: String,
    }
    /// Version reply: `msize[4] version[s]`.
    RVERSION => Rversion {
        /// The negotiated msize (at most the client's).
        msize: u32,
        /// The agreed version, or `"unknown"`.
        version: String,
    }
    /// Start authentication (attach(5)): `afid[4] uname[s] aname[s]`, plus `n_uname[4]`
    /// in 9P2000.u/.L.
    TAUTH => Tauth {
        /// The fid to carry the authentication conversation.
        afid: u32,
        /// User name.
        uname: String,
        /// The file tree to attach to.
        aname: String,
        /// Numeric user, preferred over `uname` unless NONUNAME (9P2000.u/.L).
        n_uname: u32 [ext = NONUNAME],
    }
    /// Auth reply: `aqid[13]`.
    RAUTH => Rauth {
        /// Qid of the authentication file.
        aqid: Qid,
    }
    /// Attach to a file tree (attach(5)): `fid[4] afid[4] uname[s] aname[s]`, plus
    /// `n_uname[4]` in 9P2000.u/.L.
    TATTACH => Tattach {
        /// The fid that will stand for the root.
        fid: u32,
        /// The authentication fid, or NOFID.
        afid: u32,
        /// User name.
        uname: String,
        /// The file tree to attach to.
        aname: String,
        /// Numeric user, preferred over `uname` unless NONUNAME (9P2000.u/.L).
        n_uname: u32 [ext = NONUNAME],
    }
    /// Attach reply: `qid[13]`.
    RATTACH => Rattach {
        /// Qid of the root.
        qid: Qid,
    }
    /// Error reply (error(5)): `ename[s]`, plus `errno[4]` in 9P2000.u.
    RERROR => Rerror {
        /// Error text.
        ename: String,
        /// Unix errno (9P2000.u); 0 when decoded from 9P2000.
        errno: u32 [ext = 0],
    }
    /// Abort request `oldtag` (flush(5)): `oldtag[2]`.
    TFLUSH => Tflush {
        /// Tag of the request to abort.
        oldtag: u16,
    }
    /// Flush reply (empty).
    RFLUSH => Rflush {}
    /// Walk from `fid` along `wnames`, giving `newfid` (walk(5)): `fid[4] newfid[4]
    /// nwname[2] nwname*(wname[s])`.
    TWALK => Twalk {
        /// The starting point.
        fid: u32,
        /// The fid for the result (may equal `fid`).
        newfid: u32,
        /// Path elements, at most MAXWELEM; none clones the fid.
        wnames: Vec<String>,
    }
    /// Walk reply: `nwqid[2] nwqid*(qid[13])`.
    RWALK => Rwalk {
        /// Qids of the elements walked (fewer than asked if the walk stopped early).
        wqids: Vec<Qid>,
    }
    /// Open `fid` (open(5)): `fid[4] mode[1]`.
    TOPEN => Topen {
        /// The fid to open.
        fid: u32,
        /// `OREAD`.. `OEXEC`, with `OTRUNC`, `ORCLOSE`, `OAPPEND`.
        mode: u8,
    }
    /// Open reply: `qid[13] iounit[4]`.
    ROPEN => Ropen {
        /// The opened file's qid.
        qid: Qid,
        /// Largest atomic I/O, or 0.
        iounit: u32,
    }
    /// Create and open a file in directory `fid` (open(5)): `fid[4] name[s] perm[4]
    /// mode[1]`, plus `extension[s]` in 9P2000.u.
    TCREATE => Tcreate {
        /// The directory; becomes the new file.
        fid: u32,
        /// Name of the new file.
        name: String,
        /// Permissions and `DM*` bits.
        perm: u32,
        /// Open mode.
        mode: u8,
        /// 9P2000.u: symlink target, device spec or hard-link fid for special files.
        extension: String [ext = String::new()],
    }
    /// Create reply: `qid[13] iounit[4]`.
    RCREATE => Rcreate {
        /// The new file's qid.
        qid: Qid,
        /// Largest atomic I/O, or 0.
        iounit: u32,
    }
    /// Read (read(5)): `fid[4] offset[8] count[4]`.
    TREAD => Tread {
        /// The open file.
        fid: u32,
        /// Where to start.
        offset: u64,
        /// Maximum bytes to return.
        count: u32,
    }
    /// Read reply: `count[4] data[count]`.
    RREAD => Rread {
        /// The bytes read (a slice of the received frame when decoded).
        data: Bytes,
    }
    /// Write (read(5)): `fid[4] offset[8] count[4] data[count]`.
    TWRITE => Twrite {
        /// The open file.
        fid: u32,
        /// Where to start.
        offset: u64,
        /// The bytes to write (a slice of the received frame when decoded).
        data: Bytes,
    }
    /// Write reply: `count[4]`.
    RWRITE => Rwrite {
        /// Bytes written.
        count: u32,
    }
    /// Forget a fid (clunk(5)): `fid[4]`.
    TCLUNK => Tclunk {
        /// The fid.
        fid: u32,
    }
    /// Clunk reply (empty).
    RCLUNK => Rclunk {}
    /// Remove the file and clunk the fid (remove(5)): `fid[4]`.
    TREMOVE => Tremove {
        /// The fid.
        fid: u32,
    }
    /// Remove reply (empty).
    RREMOVE => Rremove {}
    /// Get a file's stat (stat(5)): `fid[4]`.
    TSTAT => Tstat {
        /// The file.
        fid: u32,
    }
    /// Stat reply: `n[2] stat[n]`.
    RSTAT => Rstat {
        /// The file's metadata.
        stat: Stat [via = CountedStat],
    }
    /// Change a file's stat (stat(5)): `fid[4] n[2] stat[n]`.
    TWSTAT => Twstat {
        /// The file.
        fid: u32,
        /// New values; "don't touch" ([`Stat::dont_touch`]) in the fields to keep.
        stat: Stat [via = CountedStat],
    }
    /// Wstat reply (empty).
    RWSTAT => Rwstat {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_numbers_follow_the_table() {
        assert_eq!(Tversion::TYPE, 100);
        assert_eq!(Rerror::TYPE, 107);
        assert_eq!(Rlerror::TYPE, 7);
        assert_eq!(Tunlinkat::TYPE, 76);
        assert_eq!(Fcall::from(Rwstat {}).ty(), 127);
        assert_eq!(Fcall::from(Tclunk { fid: 1 }).name(), "Tclunk");
        let known: Vec<u8> = (0..=255).filter(|&t| is_known_type(t)).collect();
        assert_eq!(known.len(), 39 + 27);
        assert!(!is_known_type(consts::TERROR));
        assert!(!is_known_type(consts::TLERROR));
        // Every R-message is its T-message plus one.
        for t in known.iter().filter(|&&t| t % 2 == 0) {
            assert!(known.contains(&(t + 1)), "no reply for {t}");
        }
    }
}
