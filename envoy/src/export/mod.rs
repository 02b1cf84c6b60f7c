//! The `export` backend: serve a host directory, confined (what xl's `path=` means today).
//!
//! Confinement: every path is resolved from the export's root descriptor with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`), one walk element at a time,
//! so neither `..`, nor a symlink (absolute or relative), nor a directory swapped for a symlink
//! behind our back leads outside. Operations then act on (parent descriptor, single name) with
//! no-follow flags, or on the exact inode through `/proc/self/fd/N` after checking it is not a
//! symlink. Devices, fifos and sockets can be created and listed but never opened, so a guest
//! cannot reach host devices through a node it made. Only `user.*` and POSIX ACL extended
//! attributes pass, so a guest cannot set file capabilities or `trusted.*` on host files.
//!
//! Descriptors: nodes are names (module `node`); only open files hold a descriptor.
//! Identity: each call runs as the fid's user (module `creds`).

mod creds;
mod node;
mod qid;

pub use creds::CredSwitch;
pub use node::Node;

/// Directory descriptors an export keeps open at most (the `node` module's `DirCache`).
pub const DIR_CACHE_CAPACITY: usize = 1024;

use crate::vfs::{
    Attr, Creds, DirEntry, Errno, FileSystem, Lock, LockKind, LockStatus, NodeKind, Result,
    SetAttr, SetTime, StatFs, XATTR_SIZE_MAX,
};
use bytes::Bytes;
use envoy_protocol::Qid;
use node::DirCache;
use qid::{QidMap, qid_type_of_dt};
use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags, Timespec, Timestamps, UTIME_NOW,
    UTIME_OMIT, XattrFlags,
};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A host directory served over 9P.
pub struct ExportFs {
    root_fd: Arc<OwnedFd>,
    /// Directory descriptors kept on their nodes (bounded).
    dirs: DirCache,
    root_path: PathBuf,
    tree: Node,
    qids: QidMap,
    read_only: bool,
    /// Inode of the root, reported for the root's `..` (which lies outside the export).
    root_ino: u64,
    /// Serialises renames and removals with the tree updates that mirror them. Not on the data
    /// path (reads, writes, walks and getattr never take it).
    namespace: Mutex<()>,
}

/// An open file or directory of an export.
pub struct ExportFile {
    fd: OwnedFd,
    /// Device of the file (for directory entries' qids).
    dev: u64,
    root: bool,
    /// `lseek` + `getdents` must not interleave between two readers of one directory handle.
    cursor: Mutex<()>,
}

impl ExportFile {
    fn new(fd: OwnedFd, dev: u64, root: bool) -> ExportFile {
        ExportFile {
            fd,
            dev,
            root,
            cursor: Mutex::new(()),
        }
    }
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

fn proc_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Refuse names that are not a single path element.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.contains('\0') {
        return Err(Errno::EINVAL);
    }
    if name == "." || name == ".." {
        return Err(Errno::EEXIST);
    }
    Ok(())
}

/// Refuse names that cannot name an existing entry of a directory.
fn check_entry(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.")
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
}

impl ExportFs {
    /// Export `root` (which must be a directory). `read_only` refuses every change with EROFS.
    ///
    /// Sets the process umask to 0: clients send the mode they want, already masked.
    pub fn new(root: &Path, read_only: bool) -> std::io::Result<ExportFs> {
        let root_fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::statx(&root_fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
        rustix::process::umask(Mode::empty());
        Ok(ExportFs {
            root_fd: Arc::new(root_fd),
            dirs: DirCache::new(DIR_CACHE_CAPACITY),
            root_path: root.canonicalize()?,
            tree: Node::new_root(node::DirSlot::default()),
            qids: QidMap::new(rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor)),
            read_only,
            root_ino: st.stx_ino,
            namespace: Mutex::new(()),
        })
    }

    /// The exported host directory.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// An `O_PATH` descriptor of the node itself (of the link, for a symlink): one confined
    /// lookup of its name in its (cached) parent directory.
    fn node_fd(&self, node: &Node) -> Result<OwnedFd> {
        match self.parent_of(node) {
            Err(Errno::EBUSY) => rustix::io::fcntl_dupfd_cloexec(&self.root_fd, 0).map_err(errno),
            Err(e) => Err(e),
            Ok((dir, name)) => rustix::fs::openat2(
                &*dir,
                name.as_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            )
            .map_err(errno),
        }
    }

    /// An `O_PATH` descriptor of a directory node (ENOTDIR otherwise), from the cache when
    /// possible; a miss resolves the node's parent the same way, then its name.
    fn dir_fd(&self, node: &Node) -> Result<Arc<OwnedFd>> {
        if node.is_root() {
            return Ok(self.root_fd.clone());
        }
        if let Some(fd) = self.dirs.get(node) {
            return Ok(fd);
        }
        let (parent, name) = self.parent_of(node)?;
        let fd = rustix::fs::openat2(
            &*parent,
            name.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(errno)?;
        Ok(self.dirs.insert(node, fd))
    }

    /// The node's parent directory descriptor and final name; EBUSY for the root.
    fn parent_of(&self, node: &Node) -> Result<(Arc<OwnedFd>, String)> {
        if node.is_gone() {
            return Err(Errno::ENOENT);
        }
        if node.is_root() {
            return Err(Errno::EBUSY);
        }
        Ok((self.dir_fd(&node.parent())?, node.name()))
    }

    /// Attributes of a node without opening it: one `statx` of its name in its parent.
    fn node_attr(&self, node: &Node) -> Result<Attr> {
        match self.parent_of(node) {
            Err(Errno::EBUSY) => self.fd_attr(&*self.root_fd),
            Err(e) => Err(e),
            Ok((dir, name)) => self.attr_of(&*dir, &name, AtFlags::empty()),
        }
    }

    fn attr_of(&self, fd: impl AsFd, name: &str, flags: AtFlags) -> Result<Attr> {
        Ok(self.host_attr(fd, name, flags)?.0)
    }

    /// Attributes and the host device of an entry, from one `statx`.
    fn host_attr(&self, fd: impl AsFd, name: &str, flags: AtFlags) -> Result<(Attr, u64)> {
        let st = rustix::fs::statx(
            fd,
            name,
            flags | AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::BASIC_STATS | StatxFlags::BTIME,
        )
        .map_err(errno)?;
        let dev = rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor);
        let ts = |t: rustix::fs::StatxTimestamp| (t.tv_sec.max(0) as u64, u64::from(t.tv_nsec));
        let mode = u32::from(st.stx_mode);
        let attr = Attr {
            qid: self.qids.qid(mode, dev, st.stx_ino, ts(st.stx_mtime)),
            mode,
            uid: st.stx_uid,
            gid: st.stx_gid,
            nlink: u64::from(st.stx_nlink),
            rdev: rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
            size: st.stx_size,
            blksize: u64::from(st.stx_blksize),
            blocks: st.stx_blocks,
            atime: ts(st.stx_atime),
            mtime: ts(st.stx_mtime),
            ctime: ts(st.stx_ctime),
            btime: (st.stx_mask & StatxFlags::BTIME.bits() != 0).then(|| ts(st.stx_btime)),
        };
        Ok((attr, dev))
    }

    fn fd_attr(&self, fd: impl AsFd) -> Result<Attr> {
        self.attr_of(fd, "", AtFlags::EMPTY_PATH)
    }

    /// The extended-attribute path of a node: the entry inside its parent's magic link (never
    /// followed), or the root's own magic link. The descriptor keeps the path valid.
    fn xattr_path(&self, node: &Node) -> Result<(Arc<OwnedFd>, String)> {
        match self.parent_of(node) {
            Err(Errno::EBUSY) => Ok((self.root_fd.clone(), proc_path(&*self.root_fd))),
            Err(e) => Err(e),
            Ok((dir, name)) => {
                let p = format!("{}/{}", proc_path(&*dir), name);
                Ok((dir, p))
            }
        }
    }

    /// Rename with the namespace lock held (so the tree mirrors the file system exactly).
    fn rename_locked(
        &self,
        creds: &Creds,
        from_dir: &Node,
        from_name: &str,
        to_dir: &Node,
        to_name: &str,
    ) -> Result<()> {
        self.writable()?;
        check_entry(from_name)?;
        check_name(to_name).map_err(|_| Errno::EINVAL)?;
        CredSwitch::enter(creds, None);
        let from = self.dir_fd(from_dir)?;
        let to = self.dir_fd(to_dir)?;
        rustix::fs::renameat(&from, from_name, &to, to_name).map_err(errno)?;
        from_dir.move_child(from_name, to_dir, to_name);
        Ok(())
    }

    /// Unlink with the namespace lock held.
    fn unlink_locked(&self, creds: &Creds, dir: &Node, name: &str, dir_only: bool) -> Result<()> {
        self.writable()?;
        check_entry(name)?;
        CredSwitch::enter(creds, None);
        let dirfd = self.dir_fd(dir)?;
        let flags = if dir_only {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&dirfd, name, flags).map_err(errno)?;
        dir.forget_child(name);
        Ok(())
    }

    fn created_qid(&self, dir: &OwnedFd, name: &str) -> Result<Qid> {
        Ok(self.attr_of(dir, name, AtFlags::empty())?.qid)
    }
}

fn timespec(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
        Some(SetTime::At(s, ns)) => Timespec {
            tv_sec: s as i64,
            tv_nsec: ns as _,
        },
    }
}

impl FileSystem for ExportFs {
    type Node = Node;
    type File = ExportFile;

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn attach(&self, creds: &Creds, aname: &str) -> Result<(Node, Qid)> {
        let aname = aname.trim_end_matches('/');
        if !(aname.is_empty() || Path::new(aname) == self.root_path) {
            return Err(Errno::ENOENT);
        }
        CredSwitch::enter(creds, None);
        let attr = self.fd_attr(&self.root_fd)?;
        Ok((self.tree.clone(), attr.qid))
    }

    fn walk(
        &self,
        creds: &Creds,
        from: &Node,
        names: &[String],
    ) -> (Vec<(Node, Qid)>, Option<Errno>) {
        CredSwitch::enter(creds, None);
        let mut out = Vec::with_capacity(names.len());
        let mut cur = from.clone();
        // Whether the element just reached is a directory (unknown for the starting node, whose
        // descriptor lookup checks it): a walk never continues through anything else.
        let mut cur_is_dir = None;
        for name in names {
            let step = (|| -> Result<(Node, Qid)> {
                if cur_is_dir == Some(false) && name != ".." {
                    return Err(Errno::ENOTDIR);
                }
                let next = match name.as_str() {
                    ".." => cur.parent(),
                    "." => cur.clone(),
                    n if n.is_empty() || n.contains('/') => return Err(Errno::EINVAL),
                    n => {
                        // A single name looked up in a confined directory descriptor, never
                        // following a symlink: it cannot lead out of the export.
                        let dir = self.dir_fd(&cur)?;
                        let attr = self.attr_of(&*dir, n, AtFlags::empty())?;
                        return Ok((cur.child(n), attr.qid));
                    }
                };
                Ok((next.clone(), self.node_attr(&next)?.qid))
            })();
            match step {
                Ok((next, qid)) => {
                    cur_is_dir = Some(qid.ty & envoy_protocol::consts::QTDIR != 0);
                    out.push((next.clone(), qid));
                    cur = next;
                }
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    fn name(&self, node: &Node) -> String {
        if node.is_root() {
            "/".to_owned()
        } else {
            node.name()
        }
    }

    fn getattr(&self, creds: &Creds, node: &Node, file: Option<&ExportFile>) -> Result<Attr> {
        CredSwitch::enter(creds, None);
        match file {
            Some(f) => self.fd_attr(&f.fd),
            None => self.node_attr(node),
        }
    }

    fn setattr(
        &self,
        creds: &Creds,
        node: &Node,
        file: Option<&ExportFile>,
        set: &SetAttr,
    ) -> Result<()> {
        self.writable()?;
        CredSwitch::enter(creds, None);
        // The exact inode: the open file when there is one (open-then-unlink), else the node.
        let owned;
        let fd = match file {
            Some(f) => f.fd.as_fd(),
            None => {
                owned = self.node_fd(node)?;
                owned.as_fd()
            }
        };
        let attr = self.fd_attr(fd)?;
        let is_link = attr.file_type() == libc::S_IFLNK;
        // Order: owner first (chown clears set-id bits, so chmod after it), then mode, then
        // size, and explicit times last (truncation would otherwise overwrite them).
        if set.uid.is_some() || set.gid.is_some() {
            rustix::fs::chownat(
                fd,
                "",
                set.uid.map(rustix::fs::Uid::from_raw),
                set.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(errno)?;
        }
        if let Some(mode) = set.mode {
            if is_link {
                return Err(Errno::EOPNOTSUPP);
            }
            rustix::fs::chmod(proc_path(&fd), Mode::from_raw_mode(mode & 0o7777)).map_err(errno)?;
        }
        if let Some(size) = set.size {
            match attr.file_type() {
                libc::S_IFREG => {}
                libc::S_IFDIR => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
            // Re-open the exact inode for writing: checks write permission like truncate(2).
            let w = rustix::fs::open(
                proc_path(&fd),
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)?;
            rustix::fs::ftruncate(&w, size).map_err(errno)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = Timestamps {
                last_access: timespec(set.atime),
                last_modification: timespec(set.mtime),
            };
            rustix::fs::utimensat(fd, "", &ts, AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW)
                .map_err(errno)?;
        }
        Ok(())
    }

    fn open(&self, creds: &Creds, node: &Node, flags: i32) -> Result<(ExportFile, Qid)> {
        CredSwitch::enter(creds, None);
        let flags = OFlags::from_bits_retain(flags as u32)
            & !(OFlags::CREATE
                | OFlags::EXCL
                | OFlags::NOCTTY
                | OFlags::PATH
                | OFlags::DIRECT
                | OFlags::NOATIME);
        let acc = flags & OFlags::RWMODE;
        if self.read_only
            && (acc != OFlags::RDONLY
                || flags.contains(OFlags::TRUNC)
                || flags.contains(OFlags::APPEND))
        {
            return Err(Errno::EROFS);
        }
        let path_fd = self.node_fd(node)?;
        let (attr, dev) = self.host_attr(&path_fd, "", AtFlags::EMPTY_PATH)?;
        match attr.file_type() {
            libc::S_IFREG | libc::S_IFDIR => {}
            libc::S_IFLNK => return Err(Errno::ELOOP),
            // Never open host devices, fifos or sockets on a guest's behalf.
            _ => return Err(Errno::ENXIO),
        }
        // The magic link reaches exactly the inode checked above.
        let fd = rustix::fs::open(proc_path(&path_fd), flags | OFlags::CLOEXEC, Mode::empty())
            .map_err(errno)?;
        let file = ExportFile::new(fd, dev, node.is_root());
        Ok((file, attr.qid))
    }

    fn create(
        &self,
        creds: &Creds,
        dir: &Node,
        name: &str,
        flags: i32,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<(Node, ExportFile, Qid)> {
        self.writable()?;
        check_name(name)?;
        CredSwitch::enter(creds, gid);
        let dirfd = self.dir_fd(dir)?;
        let flags = (OFlags::from_bits_retain(flags as u32)
            & !(OFlags::PATH | OFlags::DIRECTORY | OFlags::DIRECT))
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC;
        let fd = rustix::fs::openat2(
            &dirfd,
            name,
            flags,
            Mode::from_raw_mode(mode & 0o7777),
            RESOLVE,
        )
        .map_err(errno)?;
        let (attr, dev) = self.host_attr(&fd, "", AtFlags::EMPTY_PATH)?;
        let file = ExportFile::new(fd, dev, false);
        Ok((dir.child(name), file, attr.qid))
    }

    fn mkdir(
        &self,
        creds: &Creds,
        dir: &Node,
        name: &str,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<Qid> {
        self.writable()?;
        check_name(name)?;
        CredSwitch::enter(creds, gid);
        let dirfd = self.dir_fd(dir)?;
        rustix::fs::mkdirat(&dirfd, name, Mode::from_raw_mode(mode & 0o7777)).map_err(errno)?;
        self.created_qid(&dirfd, name)
    }

    fn symlink(
        &self,
        creds: &Creds,
        dir: &Node,
        name: &str,
        target: &str,
        gid: Option<u32>,
    ) -> Result<Qid> {
        self.writable()?;
        check_name(name)?;
        CredSwitch::enter(creds, gid);
        let dirfd = self.dir_fd(dir)?;
        rustix::fs::symlinkat(target, &dirfd, name).map_err(errno)?;
        self.created_qid(&dirfd, name)
    }

    fn mknod(
        &self,
        creds: &Creds,
        dir: &Node,
        name: &str,
        kind: NodeKind,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<Qid> {
        self.writable()?;
        check_name(name)?;
        CredSwitch::enter(creds, gid);
        let dirfd = self.dir_fd(dir)?;
        let (ft, dev) = match kind {
            NodeKind::Regular => (FileType::RegularFile, 0),
            NodeKind::Fifo => (FileType::Fifo, 0),
            NodeKind::Socket => (FileType::Socket, 0),
            NodeKind::CharDevice(d) => (FileType::CharacterDevice, d),
            NodeKind::BlockDevice(d) => (FileType::BlockDevice, d),
        };
        rustix::fs::mknodat(&dirfd, name, ft, Mode::from_raw_mode(mode & 0o7777), dev)
            .map_err(errno)?;
        self.created_qid(&dirfd, name)
    }

    fn link(&self, creds: &Creds, dir: &Node, name: &str, target: &Node) -> Result<()> {
        self.writable()?;
        check_name(name)?;
        CredSwitch::enter(creds, None);
        let dirfd = self.dir_fd(dir)?;
        let (tdir, tname) = self
            .parent_of(target)
            .map_err(|e| if e == Errno::EBUSY { Errno::EPERM } else { e })?;
        rustix::fs::linkat(&tdir, tname.as_str(), &dirfd, name, AtFlags::empty()).map_err(errno)
    }

    fn readlink(&self, creds: &Creds, node: &Node) -> Result<String> {
        CredSwitch::enter(creds, None);
        let (dir, name) = self.parent_of(node).map_err(|_| Errno::EINVAL)?;
        let target = rustix::fs::readlinkat(&dir, name.as_str(), Vec::new()).map_err(errno)?;
        target.into_string().map_err(|_| Errno::EILSEQ)
    }

    fn rename(
        &self,
        creds: &Creds,
        from_dir: &Node,
        from_name: &str,
        to_dir: &Node,
        to_name: &str,
    ) -> Result<()> {
        let _ns = self.namespace.lock().unwrap();
        self.rename_locked(creds, from_dir, from_name, to_dir, to_name)
    }

    fn rename_node(
        &self,
        creds: &Creds,
        node: &Node,
        to_dir: Option<&Node>,
        to_name: &str,
    ) -> Result<()> {
        if node.is_root() {
            return Err(Errno::EBUSY);
        }
        let _ns = self.namespace.lock().unwrap();
        let (parent, name) = (node.parent(), node.name());
        self.rename_locked(creds, &parent, &name, to_dir.unwrap_or(&parent), to_name)
    }

    fn unlink(&self, creds: &Creds, dir: &Node, name: &str, dir_only: bool) -> Result<()> {
        let _ns = self.namespace.lock().unwrap();
        self.unlink_locked(creds, dir, name, dir_only)
    }

    fn remove(&self, creds: &Creds, node: &Node) -> Result<()> {
        if node.is_root() {
            return Err(Errno::EBUSY);
        }
        let _ns = self.namespace.lock().unwrap();
        let (dir, name) = (node.parent(), node.name());
        let is_dir = {
            CredSwitch::enter(creds, None);
            self.node_attr(node)?.is_dir()
        };
        self.unlink_locked(creds, &dir, &name, is_dir)
    }

    fn read(
        &self,
        _creds: &Creds,
        file: &ExportFile,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        // The descriptor carries the access rights checked at open: no identity switch needed.
        rustix::io::pread(&file.fd, buf, offset).map_err(errno)
    }

    fn read_size_hint(&self, file: &ExportFile, offset: u64, count: usize) -> usize {
        // One fstat instead of preparing (and zero-filling) an msize buffer for a small file. A
        // file growing meanwhile gives a short read, which clients retry.
        match rustix::fs::fstat(&file.fd) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                let left = (st.st_size as u64).saturating_sub(offset);
                count.min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            _ => count,
        }
    }

    fn write(&self, _creds: &Creds, file: &ExportFile, offset: u64, data: &Bytes) -> Result<usize> {
        self.writable()?;
        rustix::io::pwrite(&file.fd, data, offset).map_err(errno)
    }

    fn readdir(
        &self,
        _creds: &Creds,
        dir: &ExportFile,
        cookie: u64,
        sink: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        let _cursor = dir.cursor.lock().unwrap();
        rustix::fs::seek(&dir.fd, rustix::fs::SeekFrom::Start(cookie)).map_err(errno)?;
        let mut buf = [MaybeUninit::<u8>::uninit(); 16 * 1024];
        let mut entries = rustix::fs::RawDir::new(&dir.fd, &mut buf);
        while let Some(entry) = entries.next() {
            let entry = entry.map_err(errno)?;
            let Ok(name) = entry.file_name().to_str() else {
                tracing::warn!(name = ?entry.file_name(), "skipping a directory entry whose name is not UTF-8");
                continue;
            };
            let dt = file_type_to_dt(entry.file_type());
            let ino = if dir.root && name == ".." {
                self.root_ino
            } else {
                entry.ino()
            };
            let qid = Qid {
                ty: qid_type_of_dt(dt),
                version: 0,
                path: self.qids.path(dir.dev, ino),
            };
            let e = DirEntry {
                qid,
                next: entry.next_entry_cookie(),
                kind: dt,
                name: name.to_owned(),
            };
            if !sink(e) {
                break;
            }
        }
        Ok(())
    }

    fn fsync(&self, _creds: &Creds, file: &ExportFile, datasync: bool) -> Result<()> {
        if datasync {
            rustix::fs::fdatasync(&file.fd).map_err(errno)
        } else {
            rustix::fs::fsync(&file.fd).map_err(errno)
        }
    }

    fn statfs(&self, creds: &Creds, node: &Node) -> Result<StatFs> {
        CredSwitch::enter(creds, None);
        let fd = self.node_fd(node)?;
        let s = rustix::fs::fstatfs(&fd).map_err(errno)?;
        let v = rustix::fs::fstatvfs(&fd).map_err(errno)?;
        Ok(StatFs {
            fs_type: s.f_type as u32,
            bsize: s.f_bsize as u32,
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            fsid: v.f_fsid,
            namelen: s.f_namelen as u32,
        })
    }

    fn getxattr(&self, creds: &Creds, node: &Node, name: &str) -> Result<Vec<u8>> {
        if !xattr_allowed(name) {
            return Err(Errno::ENODATA);
        }
        CredSwitch::enter(creds, None);
        let (_keep, path) = self.xattr_path(node)?;
        let mut buf = vec![0u8; XATTR_SIZE_MAX];
        let n = rustix::fs::lgetxattr(path.as_str(), name, &mut buf[..]).map_err(errno)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn listxattr(&self, creds: &Creds, node: &Node) -> Result<Vec<u8>> {
        CredSwitch::enter(creds, None);
        let (_keep, path) = self.xattr_path(node)?;
        let mut buf = vec![0u8; XATTR_SIZE_MAX];
        let n = rustix::fs::llistxattr(path.as_str(), &mut buf[..]).map_err(errno)?;
        let mut out = Vec::with_capacity(n);
        for name in buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
            if std::str::from_utf8(name).is_ok_and(xattr_allowed) {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    fn setxattr(
        &self,
        creds: &Creds,
        node: &Node,
        name: &str,
        value: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.writable()?;
        if !xattr_allowed(name) {
            return Err(Errno::EOPNOTSUPP);
        }
        CredSwitch::enter(creds, None);
        let (_keep, path) = self.xattr_path(node)?;
        rustix::fs::lsetxattr(
            path.as_str(),
            name,
            value,
            XattrFlags::from_bits_retain(flags),
        )
        .map_err(errno)
    }

    fn removexattr(&self, creds: &Creds, node: &Node, name: &str) -> Result<()> {
        self.writable()?;
        if !xattr_allowed(name) {
            return Err(Errno::EOPNOTSUPP);
        }
        CredSwitch::enter(creds, None);
        let (_keep, path) = self.xattr_path(node)?;
        rustix::fs::lremovexattr(path.as_str(), name).map_err(errno)
    }

    fn lock(&self, _creds: &Creds, file: &ExportFile, lock: &Lock) -> Result<LockStatus> {
        let fl = to_flock(lock)?;
        match nix::fcntl::fcntl(&file.fd, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => Ok(LockStatus::Granted),
            Err(Errno::EAGAIN | Errno::EACCES) => Ok(LockStatus::Blocked),
            Err(e) => Err(e),
        }
    }

    fn getlock(&self, _creds: &Creds, file: &ExportFile, lock: &Lock) -> Result<Lock> {
        let mut fl = to_flock(lock)?;
        nix::fcntl::fcntl(&file.fd, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut fl))?;
        let kind = match i32::from(fl.l_type) {
            libc::F_RDLCK => LockKind::Read,
            libc::F_WRLCK => LockKind::Write,
            _ => {
                return Ok(Lock {
                    kind: LockKind::Unlock,
                    ..*lock
                });
            }
        };
        Ok(Lock {
            kind,
            start: fl.l_start as u64,
            length: fl.l_len as u64,
        })
    }
}

fn to_flock(lock: &Lock) -> Result<libc::flock> {
    let l_type = match lock.kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
        LockKind::Unlock => libc::F_UNLCK,
    };
    let start = i64::try_from(lock.start).map_err(|_| Errno::EINVAL)?;
    let len = i64::try_from(lock.length).map_err(|_| Errno::EINVAL)?;
    Ok(libc::flock {
        l_type: l_type as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    })
}

fn file_type_to_dt(ft: FileType) -> u8 {
    match ft {
        FileType::RegularFile => libc::DT_REG,
        FileType::Directory => libc::DT_DIR,
        FileType::Symlink => libc::DT_LNK,
        FileType::Fifo => libc::DT_FIFO,
        FileType::Socket => libc::DT_SOCK,
        FileType::CharacterDevice => libc::DT_CHR,
        FileType::BlockDevice => libc::DT_BLK,
        FileType::Unknown => libc::DT_UNKNOWN,
    }
}
