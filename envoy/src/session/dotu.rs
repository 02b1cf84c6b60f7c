//! The 9P2000 and 9P2000.u operations: stat records, wstat, create with the .u special-file
//! extensions (symlinks, devices, fifos, sockets and Linux's `DMLINK` hard link), and directory
//! reads as streams of stat records.

use super::dotl::open_state;
use super::fid::{DirStream, Fid};
use super::{Protocol, Reply, Session, finish_data_reply, user};
use crate::vfs::{Attr, Errno, FileSystem, NodeKind, Result, SetAttr, SetTime};
use bytes::{BufMut, Bytes, BytesMut};
use envoy_protocol::consts::*;
use envoy_protocol::*;

/// Host open flags for a 9P2000 open mode.
fn host_flags(mode: u8) -> i32 {
    let mut flags = match mode & 3 {
        OWRITE => libc::O_WRONLY,
        ORDWR => libc::O_RDWR,
        _ => libc::O_RDONLY,
    };
    if mode & OTRUNC != 0 {
        flags |= libc::O_TRUNC;
    }
    if mode & OAPPEND != 0 {
        flags |= libc::O_APPEND;
    }
    flags
}

/// The 9P2000 mode word of a host `st_mode` (the .u bits only in .u).
fn dm_mode(mode: u32, dotu: bool) -> u32 {
    let mut dm = mode & 0o777;
    match mode & libc::S_IFMT {
        libc::S_IFDIR => dm |= DMDIR,
        libc::S_IFLNK if dotu => dm |= DMSYMLINK,
        libc::S_IFSOCK if dotu => dm |= DMSOCKET,
        libc::S_IFIFO if dotu => dm |= DMNAMEDPIPE,
        libc::S_IFBLK | libc::S_IFCHR if dotu => dm |= DMDEVICE,
        _ => {}
    }
    if dotu {
        if mode & libc::S_ISUID != 0 {
            dm |= DMSETUID;
        }
        if mode & libc::S_ISGID != 0 {
            dm |= DMSETGID;
        }
        if mode & libc::S_ISVTX != 0 {
            dm |= DMSETVTX;
        }
    }
    dm
}

/// Host permission bits (with setuid/setgid/sticky) of a 9P2000.u mode word.
fn host_perm(dm: u32) -> u32 {
    let mut perm = dm & 0o777;
    if dm & DMSETUID != 0 {
        perm |= libc::S_ISUID;
    }
    if dm & DMSETGID != 0 {
        perm |= libc::S_ISGID;
    }
    if dm & DMSETVTX != 0 {
        perm |= libc::S_ISVTX;
    }
    perm
}

/// Parse a .u device extension: `"b MAJOR MINOR"` or `"c MAJOR MINOR"`.
fn parse_device(ext: &str) -> Result<NodeKind> {
    let mut it = ext.split_whitespace();
    let (kind, major, minor) = (it.next(), it.next(), it.next());
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok()).ok_or(Errno::EINVAL);
    let dev = rustix::fs::makedev(num(major)?, num(minor)?);
    match (kind, it.next()) {
        (Some("b"), None) => Ok(NodeKind::BlockDevice(dev)),
        (Some("c"), None) => Ok(NodeKind::CharDevice(dev)),
        _ => Err(Errno::EINVAL),
    }
}

impl<F: FileSystem> Session<F> {
    pub(super) fn open(&self, m: Topen, p: Protocol) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        fid.plain()?;
        if fid.open.get().is_some() {
            return Err(Errno::EBADF);
        }
        let flags = host_flags(m.mode);
        let (file, qid) = self.fs.open(&fid.creds, &fid.node, flags)?;
        let open = open_state(file, flags, qid, m.mode & ORCLOSE != 0);
        fid.open.set(open).map_err(|_| Errno::EBADF)?;
        Ok(Fcall::Ropen(Ropen {
            qid,
            iounit: self.iounit(p),
        }))
    }

    pub(super) fn create(&self, m: Tcreate, p: Protocol) -> Result<Fcall> {
        let dir = self.unopened_dir(m.fid)?;
        let (creds, dnode) = (&dir.creds, &dir.node);
        let dotu = p.dialect == Dialect::P9P2000U;
        let perm = if dotu {
            host_perm(m.perm)
        } else {
            m.perm & 0o777
        };
        let make_node = |kind: NodeKind| self.fs.mknod(creds, dnode, &m.name, kind, perm, None);
        // Make the special kinds first; each is then walked to once, for its node and qid.
        let special = if m.perm & DMDIR != 0 {
            self.fs.mkdir(creds, dnode, &m.name, perm, None)?;
            true
        } else if dotu && m.perm & DMSYMLINK != 0 {
            self.fs.symlink(creds, dnode, &m.name, &m.extension, None)?;
            true
        } else if dotu && m.perm & DMLINK != 0 {
            // Linux sends the target's fid number; only this session's fids are looked at.
            let target_fid: u32 = m.extension.trim().parse().map_err(|_| Errno::EINVAL)?;
            let target = self.fids.get(target_fid)?;
            target.plain()?;
            self.fs.link(creds, dnode, &m.name, &target.node)?;
            true
        } else if dotu && m.perm & DMDEVICE != 0 {
            make_node(parse_device(&m.extension)?)?;
            true
        } else if dotu && m.perm & DMNAMEDPIPE != 0 {
            make_node(NodeKind::Fifo)?;
            true
        } else if dotu && m.perm & DMSOCKET != 0 {
            make_node(NodeKind::Socket)?;
            true
        } else {
            false
        };
        let qid = if special {
            // Not a regular file: walk to it once for the fid's node and qid; directories are
            // opened, the other kinds stay unopened.
            let (mut steps, err) = self.fs.walk(creds, dnode, std::slice::from_ref(&m.name));
            let (node, qid) = steps.pop().ok_or(err.unwrap_or(Errno::ENOENT))?;
            let fid = if qid.ty & QTDIR != 0 {
                let (file, qid) = self.fs.open(creds, &node, libc::O_RDONLY)?;
                Fid::opened(
                    node,
                    creds.clone(),
                    open_state(file, libc::O_RDONLY, qid, false),
                )
            } else {
                Fid::new(node, creds.clone())
            };
            self.fids.replace(m.fid, fid);
            qid
        } else {
            let flags = host_flags(m.mode);
            let (node, file, qid) = self.fs.create(creds, dnode, &m.name, flags, perm, None)?;
            let open = open_state(file, flags, qid, m.mode & ORCLOSE != 0);
            self.fids
                .replace(m.fid, Fid::opened(node, creds.clone(), open));
            qid
        };
        Ok(Fcall::Rcreate(Rcreate {
            qid,
            iounit: self.iounit(p),
        }))
    }

    pub(super) fn stat(&self, m: Tstat, p: Protocol) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        fid.plain()?;
        let attr = self.fs.getattr(&fid.creds, &fid.node, fid.file())?;
        let stat = self.stat_record(&fid, &fid.node, self.fs.name(&fid.node), &attr, p.dialect)?;
        Ok(Fcall::Rstat(Rstat { stat }))
    }

    /// A stat record for `node` (named `name`) with attributes `attr`.
    fn stat_record(
        &self,
        fid: &Fid<F>,
        node: &F::Node,
        name: String,
        a: &Attr,
        d: Dialect,
    ) -> Result<Stat> {
        let dotu = d == Dialect::P9P2000U;
        let extension = if !dotu {
            String::new()
        } else {
            match a.file_type() {
                libc::S_IFLNK => self.fs.readlink(&fid.creds, node)?,
                t @ (libc::S_IFBLK | libc::S_IFCHR) => {
                    let kind = if t == libc::S_IFBLK { 'b' } else { 'c' };
                    format!(
                        "{kind} {} {}",
                        rustix::fs::major(a.rdev),
                        rustix::fs::minor(a.rdev)
                    )
                }
                // 9P2000.u stats have no link count; Linux's v9fs reads it from here.
                libc::S_IFREG | libc::S_IFDIR => format!("HARDLINKCOUNT {}", a.nlink),
                _ => String::new(),
            }
        };
        Ok(Stat {
            ty: 0,
            dev: 0,
            qid: a.qid,
            mode: dm_mode(a.mode, dotu),
            atime: a.atime.0 as u32,
            mtime: a.mtime.0 as u32,
            length: if a.is_dir() { 0 } else { a.size },
            name,
            uid: a.uid.to_string(),
            gid: a.gid.to_string(),
            muid: String::new(),
            extension,
            n_uid: a.uid,
            n_gid: a.gid,
            n_muid: NONUNAME,
        })
    }

    pub(super) fn wstat(&self, m: Twstat, p: Protocol) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        fid.plain()?;
        let s = &m.stat;
        let dotu = p.dialect == Dialect::P9P2000U;
        let mut set = SetAttr::default();
        if s.mode != u32::MAX {
            let attr = self.fs.getattr(&fid.creds, &fid.node, fid.file())?;
            if (s.mode & DMDIR != 0) != attr.is_dir() {
                return Err(Errno::EINVAL);
            }
            set.mode = Some(if dotu {
                host_perm(s.mode)
            } else {
                s.mode & 0o777
            });
        }
        if s.mtime != u32::MAX {
            set.mtime = Some(SetTime::At(u64::from(s.mtime), 0));
        }
        if s.atime != u32::MAX {
            set.atime = Some(SetTime::At(u64::from(s.atime), 0));
        }
        if s.length != u64::MAX {
            set.size = Some(s.length);
        }
        set.uid = if dotu && s.n_uid != NONUNAME {
            Some(s.n_uid)
        } else if !s.uid.is_empty() {
            Some(user::user_id(&s.uid).ok_or(Errno::EINVAL)?)
        } else {
            None
        };
        set.gid = if dotu && s.n_gid != NONUNAME {
            Some(s.n_gid)
        } else if !s.gid.is_empty() {
            Some(user::group_id(&s.gid).ok_or(Errno::EINVAL)?)
        } else {
            None
        };
        let rename = !s.name.is_empty() && s.name != self.fs.name(&fid.node);
        if set.is_empty() && !rename {
            // All "don't touch": a request to commit the file to stable storage (stat(5)).
            if let Some(open) = fid.open.get() {
                self.fs.fsync(&fid.creds, &open.file, false)?;
            }
            return Ok(Fcall::Rwstat(Rwstat {}));
        }
        if !set.is_empty() {
            self.fs.setattr(&fid.creds, &fid.node, fid.file(), &set)?;
        }
        if rename {
            self.fs.rename_node(&fid.creds, &fid.node, None, &s.name)?;
        }
        Ok(Fcall::Rwstat(Rwstat {}))
    }

    /// A 9P2000/.u directory read: whole stat records from where the previous read ended.
    pub(super) fn read_dir_stats(
        &self,
        tag: u16,
        fid: &Fid<F>,
        offset: u64,
        room: usize,
        p: Protocol,
    ) -> Result<Reply> {
        let open = fid.opened_state()?;
        let mut stream = open.dir_stream.lock().unwrap();
        if offset == 0 {
            *stream = DirStream::default();
        } else if offset != stream.offset {
            return Err(Errno::EINVAL);
        }
        let head = DATA_REPLY_HEADER_LEN;
        let mut buf = self.pool.take(head + room);
        buf.put_bytes(0, head);
        if let Some(pending) = stream.pending.take() {
            if pending.len() > room {
                // Too small for the next record: an empty reply, the record stays pending. Linux
                // fills its buffer with several reads and then asks again with a full buffer at
                // this same offset (QEMU answers the same way).
                stream.pending = Some(pending);
                return Ok(Reply::Encoded(finish_data_reply(buf, RREAD, tag, 0)));
            }
            buf.extend_from_slice(&pending);
        }
        'fill: loop {
            // Names first (the backend's directory cursor is held while listing), stats after.
            let mut batch = Vec::with_capacity(64);
            self.fs
                .readdir(&fid.creds, &open.file, stream.cookie, &mut |e| {
                    batch.push(e);
                    batch.len() < 64
                })?;
            if batch.is_empty() {
                break;
            }
            for e in batch {
                stream.cookie = e.next;
                if e.name == "." || e.name == ".." {
                    continue;
                }
                let record = match self.entry_stat(fid, &e.name, p.dialect) {
                    Ok(r) => r,
                    // Gone between listing and stat: skip it, as a later listing would.
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e),
                };
                if buf.len() - head + record.len() > room {
                    stream.pending = Some(record);
                    break 'fill;
                }
                buf.extend_from_slice(&record);
            }
        }
        let n = buf.len() - head;
        stream.offset += n as u64;
        Ok(Reply::Encoded(finish_data_reply(buf, RREAD, tag, n)))
    }

    fn entry_stat(&self, dir: &Fid<F>, name: &str, d: Dialect) -> Result<Bytes> {
        let (mut steps, err) = self.fs.walk(&dir.creds, &dir.node, &[name.to_owned()]);
        let (node, _) = steps.pop().ok_or(err.unwrap_or(Errno::ENOENT))?;
        let attr = self.fs.getattr(&dir.creds, &node, None)?;
        let stat = self.stat_record(dir, &node, name.to_owned(), &attr, d)?;
        let mut b = BytesMut::with_capacity(stat.encoded_len(d));
        stat.encode(&mut b, d);
        Ok(b.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_words() {
        assert_eq!(dm_mode(libc::S_IFDIR | 0o755, true), DMDIR | 0o755);
        assert_eq!(dm_mode(libc::S_IFLNK | 0o777, true), DMSYMLINK | 0o777);
        assert_eq!(dm_mode(libc::S_IFLNK | 0o777, false), 0o777);
        assert_eq!(
            dm_mode(libc::S_IFREG | libc::S_ISUID | 0o755, true),
            DMSETUID | 0o755
        );
        assert_eq!(
            host_perm(DMSETGID | DMSETVTX | 0o644),
            libc::S_ISGID | libc::S_ISVTX | 0o644
        );
    }

    #[test]
    fn devices_parse() {
        assert_eq!(
            parse_device("c 1 3"),
            Ok(NodeKind::CharDevice(rustix::fs::makedev(1, 3)))
        );
        assert_eq!(
            parse_device("b 8 0"),
            Ok(NodeKind::BlockDevice(rustix::fs::makedev(8, 0)))
        );
        assert_eq!(parse_device("x 1 2"), Err(Errno::EINVAL));
        assert_eq!(parse_device("c 1"), Err(Errno::EINVAL));
    }

    #[test]
    fn open_modes() {
        assert_eq!(host_flags(OREAD), libc::O_RDONLY);
        assert_eq!(host_flags(ORDWR | OTRUNC), libc::O_RDWR | libc::O_TRUNC);
        assert_eq!(host_flags(OEXEC), libc::O_RDONLY);
    }
}
