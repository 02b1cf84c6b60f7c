//! The 9P2000.L operations: Linux semantics, errnos straight from the backend.

use super::fid::{DirStream, Fid, Open, Xattr, XattrWrite};
use super::{Protocol, Reply, Session, finish_data_reply};
use crate::vfs::{
    Attr, Errno, FileSystem, Lock, LockKind, LockStatus, NodeKind, Result, SetAttr, SetTime,
    XATTR_SIZE_MAX,
};
use bytes::{BufMut, Bytes};
use envoy_protocol::consts::*;
use envoy_protocol::*;
use std::sync::Mutex;

/// `P9_DOTL_*` open flags and the host flags they stand for (the numbers differ by
/// architecture, so translate bit by bit, as QEMU's `dotl_to_open_flags` does).
const DOTL_FLAGS: &[(u32, i32)] = &[
    (P9_DOTL_CREATE, libc::O_CREAT),
    (P9_DOTL_EXCL, libc::O_EXCL),
    (P9_DOTL_NOCTTY, libc::O_NOCTTY),
    (P9_DOTL_TRUNC, libc::O_TRUNC),
    (P9_DOTL_APPEND, libc::O_APPEND),
    (P9_DOTL_NONBLOCK, libc::O_NONBLOCK),
    (P9_DOTL_DSYNC, libc::O_DSYNC),
    (P9_DOTL_FASYNC, libc::O_ASYNC),
    (P9_DOTL_DIRECT, libc::O_DIRECT),
    (P9_DOTL_LARGEFILE, libc::O_LARGEFILE),
    (P9_DOTL_DIRECTORY, libc::O_DIRECTORY),
    (P9_DOTL_NOFOLLOW, libc::O_NOFOLLOW),
    (P9_DOTL_NOATIME, libc::O_NOATIME),
    (P9_DOTL_CLOEXEC, libc::O_CLOEXEC),
    (P9_DOTL_SYNC, libc::O_SYNC),
];

/// Host open flags for `P9_DOTL_*` flags. Hints the server does not honour are dropped:
/// `O_ASYNC` (no signals to a remote client), `O_NOCTTY`.
pub(super) fn host_flags(dotl: u32) -> i32 {
    let access = match dotl & 3 {
        P9_DOTL_WRONLY => libc::O_WRONLY,
        P9_DOTL_RDWR => libc::O_RDWR,
        _ => libc::O_RDONLY,
    };
    let mut flags = access;
    for &(p9, host) in DOTL_FLAGS {
        if dotl & p9 != 0 {
            flags |= host;
        }
    }
    flags & !(libc::O_ASYNC | libc::O_NOCTTY)
}

/// The open state for a freshly opened file.
pub(super) fn open_state<F: FileSystem>(
    file: F::File,
    flags: i32,
    qid: Qid,
    remove_on_clunk: bool,
) -> Open<F> {
    Open {
        file,
        access: flags & libc::O_ACCMODE,
        is_dir: qid.ty & QTDIR != 0,
        remove_on_clunk,
        dir_stream: Mutex::new(DirStream::default()),
    }
}

impl<F: FileSystem> Session<F> {
    pub(super) fn statfs(&self, m: Tstatfs) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        let s = self.fs.statfs(&fid.creds, &fid.node)?;
        Ok(Fcall::Rstatfs(Rstatfs {
            ty: s.fs_type,
            bsize: s.bsize,
            blocks: s.blocks,
            bfree: s.bfree,
            bavail: s.bavail,
            files: s.files,
            ffree: s.ffree,
            fsid: s.fsid,
            namelen: s.namelen,
        }))
    }

    pub(super) fn lopen(&self, m: Tlopen, p: Protocol) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        fid.plain()?;
        if fid.open.get().is_some() {
            return Err(Errno::EBADF);
        }
        let flags = host_flags(m.flags);
        let (file, qid) = self.fs.open(&fid.creds, &fid.node, flags)?;
        fid.open
            .set(open_state(file, flags, qid, false))
            .map_err(|_| Errno::EBADF)?;
        Ok(Fcall::Rlopen(Rlopen {
            qid,
            iounit: self.iounit(p),
        }))
    }

    pub(super) fn lcreate(&self, m: Tlcreate, p: Protocol) -> Result<Fcall> {
        let dir = self.unopened_dir(m.fid)?;
        let flags = host_flags(m.flags);
        let (node, file, qid) =
            self.fs
                .create(&dir.creds, &dir.node, &m.name, flags, m.mode, Some(m.gid))?;
        self.fids.replace(
            m.fid,
            Fid::opened(node, dir.creds.clone(), open_state(file, flags, qid, false)),
        );
        Ok(Fcall::Rlcreate(Rlcreate {
            qid,
            iounit: self.iounit(p),
        }))
    }

    /// A fid naming a directory, not open: the starting point of a create.
    pub(super) fn unopened_dir(&self, fid: u32) -> Result<std::sync::Arc<Fid<F>>> {
        let dir = self.fids.get(fid)?;
        dir.plain()?;
        if dir.open.get().is_some() {
            return Err(Errno::EBADF);
        }
        Ok(dir)
    }

    pub(super) fn symlink(&self, m: Tsymlink) -> Result<Fcall> {
        let dir = self.fids.get(m.fid)?;
        dir.plain()?;
        let qid = self
            .fs
            .symlink(&dir.creds, &dir.node, &m.name, &m.symtgt, Some(m.gid))?;
        Ok(Fcall::Rsymlink(Rsymlink { qid }))
    }

    pub(super) fn mknod(&self, m: Tmknod) -> Result<Fcall> {
        let dir = self.fids.get(m.dfid)?;
        dir.plain()?;
        let dev = rustix::fs::makedev(m.major, m.minor);
        let kind = match m.mode & libc::S_IFMT {
            0 | libc::S_IFREG => NodeKind::Regular,
            libc::S_IFIFO => NodeKind::Fifo,
            libc::S_IFSOCK => NodeKind::Socket,
            libc::S_IFCHR => NodeKind::CharDevice(dev),
            libc::S_IFBLK => NodeKind::BlockDevice(dev),
            _ => return Err(Errno::EINVAL),
        };
        let qid = self.fs.mknod(
            &dir.creds,
            &dir.node,
            &m.name,
            kind,
            m.mode & 0o7777,
            Some(m.gid),
        )?;
        Ok(Fcall::Rmknod(Rmknod { qid }))
    }

    pub(super) fn rename(&self, m: Trename) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        let dir = self.fids.get(m.dfid)?;
        fid.plain()?;
        dir.plain()?;
        self.fs
            .rename_node(&fid.creds, &fid.node, Some(&dir.node), &m.name)?;
        Ok(Fcall::Rrename(Rrename {}))
    }

    pub(super) fn readlink(&self, m: Treadlink) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        fid.plain()?;
        let target = self.fs.readlink(&fid.creds, &fid.node)?;
        Ok(Fcall::Rreadlink(Rreadlink { target }))
    }

    pub(super) fn getattr(&self, m: Tgetattr) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        fid.plain()?;
        let a = self.fs.getattr(&fid.creds, &fid.node, fid.file())?;
        Ok(Fcall::Rgetattr(rgetattr(&a)))
    }

    pub(super) fn setattr(&self, m: Tsetattr) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        fid.plain()?;
        let v = m.valid;
        let time = |set: u32, sec: u64, nsec: u64| {
            if v & set != 0 {
                SetTime::At(sec, nsec)
            } else {
                SetTime::Now
            }
        };
        let set = SetAttr {
            mode: (v & SETATTR_MODE != 0).then_some(m.mode),
            uid: (v & SETATTR_UID != 0).then_some(m.uid),
            gid: (v & SETATTR_GID != 0).then_some(m.gid),
            size: (v & SETATTR_SIZE != 0).then_some(m.size),
            atime: (v & SETATTR_ATIME != 0)
                .then(|| time(SETATTR_ATIME_SET, m.atime_sec, m.atime_nsec)),
            mtime: (v & SETATTR_MTIME != 0)
                .then(|| time(SETATTR_MTIME_SET, m.mtime_sec, m.mtime_nsec)),
        };
        if !set.is_empty() {
            self.fs.setattr(&fid.creds, &fid.node, fid.file(), &set)?;
        }
        Ok(Fcall::Rsetattr(Rsetattr {}))
    }

    pub(super) fn xattrwalk(&self, m: Txattrwalk) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        fid.plain()?;
        let value = if m.name.is_empty() {
            self.fs.listxattr(&fid.creds, &fid.node)?
        } else {
            self.fs.getxattr(&fid.creds, &fid.node, &m.name)?
        };
        let size = value.len() as u64;
        let mut x = Fid::new(fid.node.clone(), fid.creds.clone());
        x.xattr = Some(Xattr::Read(Bytes::from(value)));
        if m.newfid == m.fid {
            self.fids.replace(m.fid, x);
        } else {
            self.fids.insert(m.newfid, x)?;
        }
        Ok(Fcall::Rxattrwalk(Rxattrwalk { size }))
    }

    pub(super) fn xattrcreate(&self, m: Txattrcreate) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        fid.plain()?;
        if self.fs.read_only() {
            return Err(Errno::EROFS);
        }
        let size = usize::try_from(m.attr_size)
            .ok()
            .filter(|s| *s <= XATTR_SIZE_MAX)
            .ok_or(Errno::E2BIG)?;
        let mut x = Fid::new(fid.node.clone(), fid.creds.clone());
        x.xattr = Some(Xattr::Write(Mutex::new(XattrWrite {
            name: m.name,
            size,
            flags: m.flags,
            value: Vec::with_capacity(size),
        })));
        self.fids.replace(m.fid, x);
        Ok(Fcall::Rxattrcreate(Rxattrcreate {}))
    }

    pub(super) fn readdir(&self, tag: u16, m: Treaddir, p: Protocol) -> Result<Reply> {
        let fid = self.fids.get(m.fid)?;
        let open = fid.opened_state()?;
        if !open.is_dir {
            return Err(Errno::ENOTDIR);
        }
        let room = m.count.min(p.max_data()) as usize;
        let head = DATA_REPLY_HEADER_LEN;
        let mut buf = self.pool.take(head + room);
        buf.put_bytes(0, head);
        self.fs
            .readdir(&fid.creds, &open.file, m.offset, &mut |e| {
                let d = Dirent {
                    qid: e.qid,
                    offset: e.next,
                    ty: e.kind,
                    name: e.name,
                };
                if buf.len() - head + d.encoded_len() > room {
                    return false;
                }
                d.encode(&mut buf);
                true
            })?;
        let n = buf.len() - head;
        Ok(Reply::Encoded(finish_data_reply(buf, RREADDIR, tag, n)))
    }

    pub(super) fn fsync(&self, m: Tfsync) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        let open = fid.opened_state()?;
        self.fs.fsync(&fid.creds, &open.file, m.datasync != 0)?;
        Ok(Fcall::Rfsync(Rfsync {}))
    }

    pub(super) fn lock(&self, m: Tlock) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        let open = fid.opened_state()?;
        let lock = Lock {
            kind: lock_kind(m.ty)?,
            start: m.start,
            length: m.length,
        };
        let status = match self.fs.lock(&fid.creds, &open.file, &lock)? {
            LockStatus::Granted => LOCK_SUCCESS,
            LockStatus::Blocked => LOCK_BLOCKED,
        };
        Ok(Fcall::Rlock(Rlock { status }))
    }

    pub(super) fn getlock(&self, m: Tgetlock) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        let open = fid.opened_state()?;
        let want = Lock {
            kind: lock_kind(m.ty)?,
            start: m.start,
            length: m.length,
        };
        let held = self.fs.getlock(&fid.creds, &open.file, &want)?;
        let ty = match held.kind {
            LockKind::Read => LOCK_TYPE_RDLCK,
            LockKind::Write => LOCK_TYPE_WRLCK,
            LockKind::Unlock => LOCK_TYPE_UNLCK,
        };
        Ok(Fcall::Rgetlock(Rgetlock {
            ty,
            start: held.start,
            length: held.length,
            proc_id: m.proc_id,
            client_id: m.client_id,
        }))
    }

    pub(super) fn link(&self, m: Tlink) -> Result<Fcall> {
        let dir = self.fids.get(m.dfid)?;
        let target = self.fids.get(m.fid)?;
        dir.plain()?;
        target.plain()?;
        self.fs.link(&dir.creds, &dir.node, &m.name, &target.node)?;
        Ok(Fcall::Rlink(Rlink {}))
    }

    pub(super) fn mkdir(&self, m: Tmkdir) -> Result<Fcall> {
        let dir = self.fids.get(m.dfid)?;
        dir.plain()?;
        let qid = self
            .fs
            .mkdir(&dir.creds, &dir.node, &m.name, m.mode, Some(m.gid))?;
        Ok(Fcall::Rmkdir(Rmkdir { qid }))
    }

    pub(super) fn renameat(&self, m: Trenameat) -> Result<Fcall> {
        let from = self.fids.get(m.olddirfid)?;
        let to = self.fids.get(m.newdirfid)?;
        from.plain()?;
        to.plain()?;
        self.fs
            .rename(&from.creds, &from.node, &m.oldname, &to.node, &m.newname)?;
        Ok(Fcall::Rrenameat(Rrenameat {}))
    }

    pub(super) fn unlinkat(&self, m: Tunlinkat) -> Result<Fcall> {
        let dir = self.fids.get(m.dirfd)?;
        dir.plain()?;
        self.fs
            .unlink(&dir.creds, &dir.node, &m.name, m.flags & AT_REMOVEDIR != 0)?;
        Ok(Fcall::Runlinkat(Runlinkat {}))
    }
}

fn lock_kind(ty: u8) -> Result<LockKind> {
    match ty {
        LOCK_TYPE_RDLCK => Ok(LockKind::Read),
        LOCK_TYPE_WRLCK => Ok(LockKind::Write),
        LOCK_TYPE_UNLCK => Ok(LockKind::Unlock),
        _ => Err(Errno::EINVAL),
    }
}

fn rgetattr(a: &Attr) -> Rgetattr {
    let (btime_sec, btime_nsec) = a.btime.unwrap_or((0, 0));
    Rgetattr {
        valid: GETATTR_BASIC | if a.btime.is_some() { GETATTR_BTIME } else { 0 },
        qid: a.qid,
        mode: a.mode,
        uid: a.uid,
        gid: a.gid,
        nlink: a.nlink,
        rdev: a.rdev,
        size: a.size,
        blksize: a.blksize,
        blocks: a.blocks,
        atime_sec: a.atime.0,
        atime_nsec: a.atime.1,
        mtime_sec: a.mtime.0,
        mtime_nsec: a.mtime.1,
        ctime_sec: a.ctime.0,
        ctime_nsec: a.ctime.1,
        btime_sec,
        btime_nsec,
        r#gen: 0,
        data_version: 0,
    }
}
