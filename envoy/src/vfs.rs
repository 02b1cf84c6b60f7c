//! The one file-system interface every backend implements.
//!
//! The 9P session (`crate::session`) translates the three dialects onto this trait; backends
//! (`crate::export` today, Envoy images later, territories and caches as wrappers) implement it.
//! The shape follows Linux and 9P2000.L: a backend hands out *nodes* (walked locations, the state
//! behind an unopened fid) and *files* (open handles). Calls are synchronous and may block: the
//! server runs them on its worker threads. Errors are plain errnos, the currency of every 9P dialect.

use bytes::Bytes;
use envoy_protocol::Qid;
use std::sync::Arc;

pub use nix::errno::Errno;

/// Largest extended attribute value or name list (Linux `XATTR_SIZE_MAX`).
pub const XATTR_SIZE_MAX: usize = 65536;

/// Result of a backend call: a value or the errno the client will see.
pub type Result<T> = std::result::Result<T, Errno>;

/// Who performs an operation: the identity attached to a fid.
///
/// Identity comes from the attach (`n_uname`, else `uname` looked up in the passwd database); the
/// transport decides whether an attach name is believed at all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Creds {
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (including the primary group).
    pub groups: Arc<[u32]>,
}

impl Creds {
    /// The superuser.
    pub fn root() -> Creds {
        Creds {
            uid: 0,
            gid: 0,
            groups: Arc::from(vec![0]),
        }
    }

    /// Whether `gid` is one of this user's groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Attributes of a node, as 9P2000.L `Rgetattr` carries them (9P2000/.u stats derive from it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    /// The node's qid (unique across the export, version changes on modification).
    pub qid: Qid,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard link count.
    pub nlink: u64,
    /// Device number for block/char devices (Linux `dev_t` encoding).
    pub rdev: u64,
    /// Size in bytes.
    pub size: u64,
    /// Preferred I/O block size.
    pub blksize: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Last access (seconds, nanoseconds).
    pub atime: (u64, u64),
    /// Last modification.
    pub mtime: (u64, u64),
    /// Last status change.
    pub ctime: (u64, u64),
    /// Creation time, if the file system records it.
    pub btime: Option<(u64, u64)>,
}

impl Attr {
    /// The file type bits of `mode`.
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }
}

/// A time to set: the server's clock or an explicit value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The current time on the server.
    Now,
    /// Seconds and nanoseconds since the epoch.
    At(u64, u64),
}

/// Attribute changes (9P2000.L `Tsetattr`, and 9P2000/.u `Twstat` translated to it). `None` leaves a
/// field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (file type bits are ignored).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

impl SetAttr {
    /// Whether nothing is to change.
    pub fn is_empty(&self) -> bool {
        *self == SetAttr::default()
    }
}

/// One directory entry as produced by [`FileSystem::readdir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's qid (type and path; version may be 0).
    pub qid: Qid,
    /// The cookie to pass to `readdir` to continue *after* this entry.
    pub next: u64,
    /// `DT_*` type of the entry.
    pub kind: u8,
    /// The entry's name.
    pub name: String,
}

/// File-system statistics (9P2000.L `Rstatfs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    /// File system type magic.
    pub fs_type: u32,
    /// Block size.
    pub bsize: u32,
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// File system id.
    pub fsid: u64,
    /// Longest name.
    pub namelen: u32,
}

/// Kind of a byte-range lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// Shared (read) lock.
    Read,
    /// Exclusive (write) lock.
    Write,
    /// No lock / release.
    Unlock,
}

/// A POSIX byte-range lock request or description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lock {
    /// Lock kind.
    pub kind: LockKind,
    /// First byte.
    pub start: u64,
    /// Length in bytes; 0 means "to the end of the file".
    pub length: u64,
}

/// Outcome of a lock request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockStatus {
    /// The lock was taken (or released).
    Granted,
    /// A conflicting lock is held; the client retries.
    Blocked,
}

/// A special file to create with [`FileSystem::mknod`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular, empty file.
    Regular,
    /// A named pipe.
    Fifo,
    /// A unix-domain socket node.
    Socket,
    /// A character device with this `dev_t`.
    CharDevice(u64),
    /// A block device with this `dev_t`.
    BlockDevice(u64),
}

/// A file-system backend. Every method defaults to `EOPNOTSUPP`, so a backend implements what it
/// supports.
///
/// Lifetimes: a `Node` is held by each fid that names it and dropped at clunk; it must stay cheap
/// (no open descriptor per node). A `File` is an open handle, created by `open`/`create` and
/// released when dropped (at clunk). Nodes of entries that are renamed, by this backend, keep
/// naming the same object; nodes of removed entries fail with `ENOENT` unless opened.
pub trait FileSystem: Send + Sync + 'static {
    /// A walked location (the state behind an unopened fid). Cloning is cheap.
    type Node: Clone + Send + Sync + 'static;
    /// An open handle.
    type File: Send + Sync + 'static;

    /// Whether the backend refuses every modification (`EROFS`).
    fn read_only(&self) -> bool {
        false
    }

    /// The root node for an attach with attach name `aname`.
    fn attach(&self, creds: &Creds, aname: &str) -> Result<(Self::Node, Qid)>;

    /// Walk `names` one by one from `from`. Returns the nodes reached; fewer than `names.len()`
    /// entries means the walk stopped early, and then the error says why. `".."` at the root stays
    /// at the root.
    fn walk(
        &self,
        creds: &Creds,
        from: &Self::Node,
        names: &[String],
    ) -> (Vec<(Self::Node, Qid)>, Option<Errno>);

    /// The node's last path element (`"/"` for the root).
    fn name(&self, node: &Self::Node) -> String;

    /// Attributes; through the open handle when there is one (open-then-unlink keeps working).
    fn getattr(&self, creds: &Creds, node: &Self::Node, file: Option<&Self::File>) -> Result<Attr>;

    /// Change attributes.
    fn setattr(
        &self,
        _creds: &Creds,
        _node: &Self::Node,
        _file: Option<&Self::File>,
        _set: &SetAttr,
    ) -> Result<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Open `node` with host `O_*` flags (access mode, `O_TRUNC`, `O_APPEND`, `O_SYNC`, ...).
    fn open(&self, creds: &Creds, node: &Self::Node, flags: i32) -> Result<(Self::File, Qid)>;

    /// Create and open a regular file `name` in directory `dir`.
    fn create(
        &self,
        _creds: &Creds,
        _dir: &Self::Node,
        _name: &str,
        _flags: i32,
        _mode: u32,
        _gid: Option<u32>,
    ) -> Result<(Self::Node, Self::File, Qid)> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Create a directory.
    fn mkdir(
        &self,
        _creds: &Creds,
        _dir: &Self::Node,
        _name: &str,
        _mode: u32,
        _gid: Option<u32>,
    ) -> Result<Qid> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Create a symbolic link `name` → `target`.
    fn symlink(
        &self,
        _creds: &Creds,
        _dir: &Self::Node,
        _name: &str,
        _target: &str,
        _gid: Option<u32>,
    ) -> Result<Qid> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Create a special file.
    fn mknod(
        &self,
        _creds: &Creds,
        _dir: &Self::Node,
        _name: &str,
        _kind: NodeKind,
        _mode: u32,
        _gid: Option<u32>,
    ) -> Result<Qid> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Make `name` in `dir` a hard link to `target`.
    fn link(
        &self,
        _creds: &Creds,
        _dir: &Self::Node,
        _name: &str,
        _target: &Self::Node,
    ) -> Result<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Read a symbolic link.
    fn readlink(&self, _creds: &Creds, _node: &Self::Node) -> Result<String> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Rename `from_dir/from_name` to `to_dir/to_name`, replacing a compatible target.
    fn rename(
        &self,
        _creds: &Creds,
        _from_dir: &Self::Node,
        _from_name: &str,
        _to_dir: &Self::Node,
        _to_name: &str,
    ) -> Result<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Rename the object `node` names to `to_dir/to_name` (`None`: within its own directory).
    fn rename_node(
        &self,
        _creds: &Creds,
        _node: &Self::Node,
        _to_dir: Option<&Self::Node>,
        _to_name: &str,
    ) -> Result<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Remove `name` from `dir` (`rmdir` semantics when `dir_only`).
    fn unlink(
        &self,
        _creds: &Creds,
        _dir: &Self::Node,
        _name: &str,
        _dir_only: bool,
    ) -> Result<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Remove the object `node` names (a file, or an empty directory).
    fn remove(&self, _creds: &Creds, _node: &Self::Node) -> Result<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Read at `offset` into `buf`; returns the byte count (0 at end of file).
    fn read(&self, creds: &Creds, file: &Self::File, offset: u64, buf: &mut [u8]) -> Result<usize>;

    /// At most how many bytes a read of `count` at `offset` can return, to size the reply buffer
    /// (a regular file's remaining length). Returning `count` is always correct.
    fn read_size_hint(&self, _file: &Self::File, _offset: u64, count: usize) -> usize {
        count
    }

    /// Write `data` at `offset`; returns the byte count. `data` is a slice of the request
    /// frame: a backend may keep it (no copy) instead of copying out of it.
    fn write(
        &self,
        _creds: &Creds,
        _file: &Self::File,
        _offset: u64,
        _data: &Bytes,
    ) -> Result<usize> {
        Err(Errno::EOPNOTSUPP)
    }

    /// List an open directory from `cookie` (0 = start), calling `sink` per entry until it returns
    /// `false` or the directory ends. Cookies are stable across calls.
    fn readdir(
        &self,
        creds: &Creds,
        dir: &Self::File,
        cookie: u64,
        sink: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()>;

    /// Flush file data (and metadata unless `datasync`) to stable storage.
    fn fsync(&self, _creds: &Creds, _file: &Self::File, _datasync: bool) -> Result<()> {
        Ok(())
    }

    /// The block size reads and writes work best in whole multiples of, 0 for none: opens
    /// answer with an iounit of as many whole blocks as one message carries
    /// ([`crate::session::Protocol::iounit`]), so clients send aligned requests.
    fn io_unit(&self) -> u32 {
        0
    }

    /// File-system statistics.
    fn statfs(&self, _creds: &Creds, _node: &Self::Node) -> Result<StatFs> {
        Err(Errno::EOPNOTSUPP)
    }

    /// The value of extended attribute `name`.
    fn getxattr(&self, _creds: &Creds, _node: &Self::Node, _name: &str) -> Result<Vec<u8>> {
        Err(Errno::EOPNOTSUPP)
    }

    /// All extended attribute names, each NUL-terminated.
    fn listxattr(&self, _creds: &Creds, _node: &Self::Node) -> Result<Vec<u8>> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Set extended attribute `name` (`flags`: `XATTR_CREATE`/`XATTR_REPLACE`).
    fn setxattr(
        &self,
        _creds: &Creds,
        _node: &Self::Node,
        _name: &str,
        _value: &[u8],
        _flags: u32,
    ) -> Result<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Remove extended attribute `name`.
    fn removexattr(&self, _creds: &Creds, _node: &Self::Node, _name: &str) -> Result<()> {
        Err(Errno::EOPNOTSUPP)
    }

    /// Take or release a byte-range lock on an open file, never waiting.
    fn lock(&self, _creds: &Creds, _file: &Self::File, _lock: &Lock) -> Result<LockStatus> {
        Err(Errno::EOPNOTSUPP)
    }

    /// The first lock that would conflict with `lock`, or `lock` with kind `Unlock` if none.
    fn getlock(&self, _creds: &Creds, _file: &Self::File, _lock: &Lock) -> Result<Lock> {
        Err(Errno::EOPNOTSUPP)
    }
}
