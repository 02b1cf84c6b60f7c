//! Numeric constants of the 9P wire protocol.
//!
//! Values and names follow Linux `include/net/9p/9p.h` (spelled without the `P9_` prefix,
//! except for the `P9_DOTL_*` open flags whose bare names would collide with host `O_*`
//! names), diod `src/libnpfs/protocol.h` for 9P2000.L, and the Plan 9 `fcall.h` /
//! `intro(5)` manual pages for the base protocol. Each group says where it comes from.

// ---------------------------------------------------------------------------------------
// Message types. Linux `enum p9_msg_t` (include/net/9p/9p.h); diod protocol.h agrees.
// An R-message is always its T-message plus one.
// ---------------------------------------------------------------------------------------

/// 9P2000.L: invalid (there is no Tlerror; the number is reserved).
pub const TLERROR: u8 = 6;
/// 9P2000.L: error reply carrying a Linux errno.
pub const RLERROR: u8 = 7;
/// 9P2000.L: file system statistics request.
pub const TSTATFS: u8 = 8;
/// 9P2000.L: file system statistics reply.
pub const RSTATFS: u8 = 9;
/// 9P2000.L: open request.
pub const TLOPEN: u8 = 12;
/// 9P2000.L: open reply.
pub const RLOPEN: u8 = 13;
/// 9P2000.L: create-regular-file request.
pub const TLCREATE: u8 = 14;
/// 9P2000.L: create-regular-file reply.
pub const RLCREATE: u8 = 15;
/// 9P2000.L: create-symlink request.
pub const TSYMLINK: u8 = 16;
/// 9P2000.L: create-symlink reply.
pub const RSYMLINK: u8 = 17;
/// 9P2000.L: create-device-node request.
pub const TMKNOD: u8 = 18;
/// 9P2000.L: create-device-node reply.
pub const RMKNOD: u8 = 19;
/// 9P2000.L: rename-by-fid request.
pub const TRENAME: u8 = 20;
/// 9P2000.L: rename-by-fid reply.
pub const RRENAME: u8 = 21;
/// 9P2000.L: read-symlink request.
pub const TREADLINK: u8 = 22;
/// 9P2000.L: read-symlink reply.
pub const RREADLINK: u8 = 23;
/// 9P2000.L: get-attributes request.
pub const TGETATTR: u8 = 24;
/// 9P2000.L: get-attributes reply.
pub const RGETATTR: u8 = 25;
/// 9P2000.L: set-attributes request.
pub const TSETATTR: u8 = 26;
/// 9P2000.L: set-attributes reply.
pub const RSETATTR: u8 = 27;
/// 9P2000.L: prepare-to-read-xattr request.
pub const TXATTRWALK: u8 = 30;
/// 9P2000.L: prepare-to-read-xattr reply.
pub const RXATTRWALK: u8 = 31;
/// 9P2000.L: prepare-to-write-xattr request.
pub const TXATTRCREATE: u8 = 32;
/// 9P2000.L: prepare-to-write-xattr reply.
pub const RXATTRCREATE: u8 = 33;
/// 9P2000.L: read-directory request.
pub const TREADDIR: u8 = 40;
/// 9P2000.L: read-directory reply.
pub const RREADDIR: u8 = 41;
/// 9P2000.L: fsync request.
pub const TFSYNC: u8 = 50;
/// 9P2000.L: fsync reply.
pub const RFSYNC: u8 = 51;
/// 9P2000.L: POSIX record lock request.
pub const TLOCK: u8 = 52;
/// 9P2000.L: POSIX record lock reply.
pub const RLOCK: u8 = 53;
/// 9P2000.L: test-for-lock request.
pub const TGETLOCK: u8 = 54;
/// 9P2000.L: test-for-lock reply.
pub const RGETLOCK: u8 = 55;
/// 9P2000.L: hard-link request.
pub const TLINK: u8 = 70;
/// 9P2000.L: hard-link reply.
pub const RLINK: u8 = 71;
/// 9P2000.L: mkdir request.
pub const TMKDIR: u8 = 72;
/// 9P2000.L: mkdir reply.
pub const RMKDIR: u8 = 73;
/// 9P2000.L: rename-by-name request.
pub const TRENAMEAT: u8 = 74;
/// 9P2000.L: rename-by-name reply.
pub const RRENAMEAT: u8 = 75;
/// 9P2000.L: unlink-by-name request.
pub const TUNLINKAT: u8 = 76;
/// 9P2000.L: unlink-by-name reply.
pub const RUNLINKAT: u8 = 77;
/// Version negotiation request.
pub const TVERSION: u8 = 100;
/// Version negotiation reply.
pub const RVERSION: u8 = 101;
/// Authentication request.
pub const TAUTH: u8 = 102;
/// Authentication reply.
pub const RAUTH: u8 = 103;
/// Attach request.
pub const TATTACH: u8 = 104;
/// Attach reply.
pub const RATTACH: u8 = 105;
/// Invalid: there is no Terror (the number is reserved).
pub const TERROR: u8 = 106;
/// Error reply (9P2000 and 9P2000.u).
pub const RERROR: u8 = 107;
/// Flush request.
pub const TFLUSH: u8 = 108;
/// Flush reply.
pub const RFLUSH: u8 = 109;
/// Walk request.
pub const TWALK: u8 = 110;
/// Walk reply.
pub const RWALK: u8 = 111;
/// Open request (9P2000 and 9P2000.u).
pub const TOPEN: u8 = 112;
/// Open reply.
pub const ROPEN: u8 = 113;
/// Create request (9P2000 and 9P2000.u).
pub const TCREATE: u8 = 114;
/// Create reply.
pub const RCREATE: u8 = 115;
/// Read request.
pub const TREAD: u8 = 116;
/// Read reply.
pub const RREAD: u8 = 117;
/// Write request.
pub const TWRITE: u8 = 118;
/// Write reply.
pub const RWRITE: u8 = 119;
/// Clunk request.
pub const TCLUNK: u8 = 120;
/// Clunk reply.
pub const RCLUNK: u8 = 121;
/// Remove request.
pub const TREMOVE: u8 = 122;
/// Remove reply.
pub const RREMOVE: u8 = 123;
/// Stat request (9P2000 and 9P2000.u).
pub const TSTAT: u8 = 124;
/// Stat reply.
pub const RSTAT: u8 = 125;
/// Wstat request (9P2000 and 9P2000.u).
pub const TWSTAT: u8 = 126;
/// Wstat reply.
pub const RWSTAT: u8 = 127;

// ---------------------------------------------------------------------------------------
// Special values (intro(5), version(5), walk(5); Linux 9p.h P9_NOTAG/P9_NOFID/P9_MAXWELEM,
// diod protocol.h P9_NONUNAME; Linux net/9p/client.c P9_IOHDRSZ).
// ---------------------------------------------------------------------------------------

/// The tag of a Tversion (no other message may use it).
pub const NOTAG: u16 = 0xFFFF;
/// "No fid", e.g. the afid of an attach without authentication.
pub const NOFID: u32 = !0;
/// "No numeric user" in the n_uname field of Tauth/Tattach (9P2000.u, .L).
pub const NONUNAME: u32 = !0;
/// Maximum number of path elements in one Twalk / qids in one Rwalk.
pub const MAXWELEM: usize = 16;
/// Room for the Tread/Twrite/Rread header: the data payload of one message is at most
/// `msize - IOHDRSZ` (what the Linux client uses when iounit is 0).
pub const IOHDRSZ: u32 = 24;
/// Size of the common message header: `size[4] type[1] tag[2]`.
pub const HEADER_LEN: usize = 7;

// ---------------------------------------------------------------------------------------
// Version strings (version(5), 9p2000.u draft, diod protocol.md).
// ---------------------------------------------------------------------------------------

/// Version string of the base protocol.
pub const VERSION_9P2000: &str = "9P2000";
/// Version string of the Unix extension.
pub const VERSION_9P2000_U: &str = "9P2000.u";
/// Version string of the Linux variant.
pub const VERSION_9P2000_L: &str = "9P2000.L";
/// The Rversion string a server sends when it understands none of the proposal.
pub const VERSION_UNKNOWN: &str = "unknown";

// ---------------------------------------------------------------------------------------
// Qid types: the high byte of a file's mode (intro(5); Linux `enum p9_qid_t`).
// ---------------------------------------------------------------------------------------

/// Directory.
pub const QTDIR: u8 = 0x80;
/// Append-only file.
pub const QTAPPEND: u8 = 0x40;
/// Exclusive-use file.
pub const QTEXCL: u8 = 0x20;
/// Mounted channel.
pub const QTMOUNT: u8 = 0x10;
/// Authentication file.
pub const QTAUTH: u8 = 0x08;
/// Non-backed-up (temporary) file.
pub const QTTMP: u8 = 0x04;
/// Symbolic link (9P2000.u).
pub const QTSYMLINK: u8 = 0x02;
/// Hard link (9P2000.u).
pub const QTLINK: u8 = 0x01;
/// Plain file.
pub const QTFILE: u8 = 0x00;

// ---------------------------------------------------------------------------------------
// Stat mode bits (stat(5); 9P2000.u draft; Linux `P9_DM*` in 9p.h).
// ---------------------------------------------------------------------------------------

/// Directory.
pub const DMDIR: u32 = 0x8000_0000;
/// Append-only file.
pub const DMAPPEND: u32 = 0x4000_0000;
/// Exclusive-use file.
pub const DMEXCL: u32 = 0x2000_0000;
/// Mounted channel.
pub const DMMOUNT: u32 = 0x1000_0000;
/// Authentication file.
pub const DMAUTH: u32 = 0x0800_0000;
/// Non-backed-up (temporary) file.
pub const DMTMP: u32 = 0x0400_0000;
/// 9P2000.u: symbolic link (Tcreate extension = the target).
pub const DMSYMLINK: u32 = 0x0200_0000;
/// 9P2000.u: hard link (Linux sends the target's fid number as the extension).
pub const DMLINK: u32 = 0x0100_0000;
/// 9P2000.u: device node (extension `"b MAJ MIN"` or `"c MAJ MIN"`).
pub const DMDEVICE: u32 = 0x0080_0000;
/// 9P2000.u: named pipe.
pub const DMNAMEDPIPE: u32 = 0x0020_0000;
/// 9P2000.u: socket.
pub const DMSOCKET: u32 = 0x0010_0000;
/// 9P2000.u: set-user-id on execution.
pub const DMSETUID: u32 = 0x0008_0000;
/// 9P2000.u: set-group-id on execution.
pub const DMSETGID: u32 = 0x0004_0000;
/// 9P2000.u: sticky bit.
pub const DMSETVTX: u32 = 0x0001_0000;
/// Read permission (one bit of each rwx triple).
pub const DMREAD: u32 = 0x4;
/// Write permission (one bit of each rwx triple).
pub const DMWRITE: u32 = 0x2;
/// Execute permission (one bit of each rwx triple).
pub const DMEXEC: u32 = 0x1;

// ---------------------------------------------------------------------------------------
// Topen/Tcreate modes (open(5); Linux `enum p9_open_mode_t`).
// ---------------------------------------------------------------------------------------

/// Open for reading.
pub const OREAD: u8 = 0;
/// Open for writing.
pub const OWRITE: u8 = 1;
/// Open for reading and writing.
pub const ORDWR: u8 = 2;
/// Open for execution.
pub const OEXEC: u8 = 3;
/// Truncate on open.
pub const OTRUNC: u8 = 0x10;
/// Close on exec (Plan 9).
pub const OREXEC: u8 = 0x20;
/// Remove the file when the fid is clunked.
pub const ORCLOSE: u8 = 0x40;
/// Linux: append mode.
pub const OAPPEND: u8 = 0x80;
/// Linux: exclusive create. Note: does not fit the `mode[1]` field of Topen/Tcreate; Linux
/// uses it only in its internal mode word.
pub const OEXCL: u32 = 0x1000;

// ---------------------------------------------------------------------------------------
// 9P2000.L Tlopen/Tlcreate flags (Linux 9p.h `P9_DOTL_*`, octal; diod protocol.h). They are
// not host `O_*` values and must be translated bit by bit.
// ---------------------------------------------------------------------------------------

/// Read only.
pub const P9_DOTL_RDONLY: u32 = 0o0;
/// Write only.
pub const P9_DOTL_WRONLY: u32 = 0o1;
/// Read and write.
pub const P9_DOTL_RDWR: u32 = 0o2;
/// No access (open for ioctl-like use).
pub const P9_DOTL_NOACCESS: u32 = 0o3;
/// Create if missing.
pub const P9_DOTL_CREATE: u32 = 0o100;
/// With CREATE: fail if it exists.
pub const P9_DOTL_EXCL: u32 = 0o200;
/// Do not become the controlling terminal.
pub const P9_DOTL_NOCTTY: u32 = 0o400;
/// Truncate on open.
pub const P9_DOTL_TRUNC: u32 = 0o1000;
/// Append mode.
pub const P9_DOTL_APPEND: u32 = 0o2000;
/// Non-blocking I/O.
pub const P9_DOTL_NONBLOCK: u32 = 0o4000;
/// Synchronized data writes.
pub const P9_DOTL_DSYNC: u32 = 0o10000;
/// Signal-driven I/O.
pub const P9_DOTL_FASYNC: u32 = 0o20000;
/// Direct I/O.
pub const P9_DOTL_DIRECT: u32 = 0o40000;
/// Large file.
pub const P9_DOTL_LARGEFILE: u32 = 0o100000;
/// Must be a directory.
pub const P9_DOTL_DIRECTORY: u32 = 0o200000;
/// Do not follow a final symlink.
pub const P9_DOTL_NOFOLLOW: u32 = 0o400000;
/// Do not update atime.
pub const P9_DOTL_NOATIME: u32 = 0o1000000;
/// Close on exec.
pub const P9_DOTL_CLOEXEC: u32 = 0o2000000;
/// Synchronized writes.
pub const P9_DOTL_SYNC: u32 = 0o4000000;

// ---------------------------------------------------------------------------------------
// Tgetattr request_mask / Rgetattr valid (diod protocol.md; Linux 9p.h `P9_GETATTR_*`).
// ---------------------------------------------------------------------------------------

/// mode is requested/valid.
pub const GETATTR_MODE: u64 = 0x0000_0001;
/// nlink is requested/valid.
pub const GETATTR_NLINK: u64 = 0x0000_0002;
/// uid is requested/valid.
pub const GETATTR_UID: u64 = 0x0000_0004;
/// gid is requested/valid.
pub const GETATTR_GID: u64 = 0x0000_0008;
/// rdev is requested/valid.
pub const GETATTR_RDEV: u64 = 0x0000_0010;
/// atime is requested/valid.
pub const GETATTR_ATIME: u64 = 0x0000_0020;
/// mtime is requested/valid.
pub const GETATTR_MTIME: u64 = 0x0000_0040;
/// ctime is requested/valid.
pub const GETATTR_CTIME: u64 = 0x0000_0080;
/// The inode number (qid.path) is requested/valid.
pub const GETATTR_INO: u64 = 0x0000_0100;
/// size is requested/valid.
pub const GETATTR_SIZE: u64 = 0x0000_0200;
/// blocks is requested/valid.
pub const GETATTR_BLOCKS: u64 = 0x0000_0400;
/// btime is requested/valid.
pub const GETATTR_BTIME: u64 = 0x0000_0800;
/// gen is requested/valid.
pub const GETATTR_GEN: u64 = 0x0000_1000;
/// data_version is requested/valid.
pub const GETATTR_DATA_VERSION: u64 = 0x0000_2000;
/// Every field up to and including BLOCKS (what `stat(2)` returns).
pub const GETATTR_BASIC: u64 = 0x0000_07ff;
/// Every field.
pub const GETATTR_ALL: u64 = 0x0000_3fff;

// ---------------------------------------------------------------------------------------
// Tsetattr valid bits (diod protocol.md; Linux 9p.h `P9_ATTR_*`).
// ---------------------------------------------------------------------------------------

/// Set mode.
pub const SETATTR_MODE: u32 = 0x0000_0001;
/// Set uid.
pub const SETATTR_UID: u32 = 0x0000_0002;
/// Set gid.
pub const SETATTR_GID: u32 = 0x0000_0004;
/// Set size (truncate).
pub const SETATTR_SIZE: u32 = 0x0000_0008;
/// Set atime (to the server's current time unless ATIME_SET).
pub const SETATTR_ATIME: u32 = 0x0000_0010;
/// Set mtime (to the server's current time unless MTIME_SET).
pub const SETATTR_MTIME: u32 = 0x0000_0020;
/// Update ctime.
pub const SETATTR_CTIME: u32 = 0x0000_0040;
/// atime_sec/atime_nsec carry the value to set.
pub const SETATTR_ATIME_SET: u32 = 0x0000_0080;
/// mtime_sec/mtime_nsec carry the value to set.
pub const SETATTR_MTIME_SET: u32 = 0x0000_0100;

// ---------------------------------------------------------------------------------------
// Tlock/Tgetlock (diod protocol.md; Linux 9p.h `P9_LOCK_*`).
// ---------------------------------------------------------------------------------------

/// Lock type: shared (read) lock.
pub const LOCK_TYPE_RDLCK: u8 = 0;
/// Lock type: exclusive (write) lock.
pub const LOCK_TYPE_WRLCK: u8 = 1;
/// Lock type: unlock.
pub const LOCK_TYPE_UNLCK: u8 = 2;
/// Lock flag: blocking request (the client retries while BLOCKED).
pub const LOCK_FLAG_BLOCK: u32 = 1;
/// Lock flag: reclaim (reserved).
pub const LOCK_FLAG_RECLAIM: u32 = 2;
/// Rlock status: the lock was granted.
pub const LOCK_STATUS_SUCCESS: u8 = 0;
/// Rlock status: the lock is held by someone else; retry.
pub const LOCK_STATUS_BLOCKED: u8 = 1;
/// Rlock status: error.
pub const LOCK_STATUS_ERROR: u8 = 2;
/// Rlock status: the server is in its grace period.
pub const LOCK_STATUS_GRACE: u8 = 3;
/// Linux's spelling (`P9_LOCK_SUCCESS`) of [`LOCK_STATUS_SUCCESS`].
pub const LOCK_SUCCESS: u8 = LOCK_STATUS_SUCCESS;
/// Linux's spelling (`P9_LOCK_BLOCKED`) of [`LOCK_STATUS_BLOCKED`].
pub const LOCK_BLOCKED: u8 = LOCK_STATUS_BLOCKED;
/// Linux's spelling (`P9_LOCK_ERROR`) of [`LOCK_STATUS_ERROR`].
pub const LOCK_ERROR: u8 = LOCK_STATUS_ERROR;
/// Linux's spelling (`P9_LOCK_GRACE`) of [`LOCK_STATUS_GRACE`].
pub const LOCK_GRACE: u8 = LOCK_STATUS_GRACE;

// ---------------------------------------------------------------------------------------
// Tunlinkat flags (Linux 9p.h `P9_DOTL_AT_REMOVEDIR`) and Txattrcreate flags (Linux
// include/uapi/linux/xattr.h, passed through unchanged by the 9P client).
// ---------------------------------------------------------------------------------------

/// Tunlinkat: remove a directory (like `rmdir`).
pub const AT_REMOVEDIR: u32 = 0x200;
/// Txattrcreate: fail if the attribute already exists.
pub const XATTR_CREATE: u32 = 0x1;
/// Txattrcreate: fail if the attribute does not exist.
pub const XATTR_REPLACE: u32 = 0x2;
