//! A 9P session: the fid table and the meaning of every request, for all three dialects.
//!
//! [`Session::handle`] takes one decoded request and returns the encoded reply; it is
//! synchronous and may block in the backend, so the server (`crate::server`) runs it on its
//! worker threads, many at a time. Operations common to the dialects live here; the 9P2000.L
//! operations in `dotl`, the 9P2000/.u ones (stat, wstat, create, directory reads) in `dotu`.
//! A failed request never ends the session: errors become `Rlerror` (.L) or `Rerror` (.u with
//! errno, 9P2000 text only) with the request's tag.

mod dotl;
mod dotu;
mod fid;
mod user;

use crate::bufpool::{BufPool, PooledBuf};
use crate::vfs::{Errno, FileSystem, Result};
use bytes::{Bytes, BytesMut};
use envoy_protocol::consts::{self, NOFID};
use envoy_protocol::{Dialect, Fcall};
use fid::{Fid, FidTable, Xattr};
use std::sync::Arc;

/// Limits of one session.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Largest msize offered (the client may ask for less).
    pub max_msize: u32,
    /// Most fids a client may hold at once (EMFILE beyond).
    pub max_fids: usize,
    /// Fault injection for test harnesses: flip one byte of every non-empty read reply, so a
    /// suite can prove it notices corrupted data. Never set in production.
    pub debug_corrupt_reads: bool,
    /// Latency injection for benchmarks: every file read first waits this long (on its worker
    /// thread, as a read from slow storage would), to model storage whose latency does not
    /// come from this machine's CPU. Never set in production.
    pub debug_read_delay: Option<std::time::Duration>,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_msize: 1 << 20,
            max_fids: 65536,
            debug_corrupt_reads: false,
            debug_read_delay: None,
        }
    }
}

/// What Tversion fixed: the dialect and the message size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// Negotiated dialect.
    pub dialect: Dialect,
    /// Negotiated msize.
    pub msize: u32,
}

impl Protocol {
    /// Most data bytes one Rread/Rreaddir may carry.
    pub fn max_data(&self) -> u32 {
        self.msize - envoy_protocol::DATA_REPLY_HEADER_LEN as u32
    }

    /// The iounit opens answer for a backend whose [`FileSystem::io_unit`] is `unit`: as many
    /// whole units as one Twrite or Rread carries, so a client (Linux v9fs splits reads and
    /// writes at the iounit) sends aligned requests; 0 — the client then uses msize − 24 —
    /// without a unit or when one does not fit.
    pub fn iounit(&self, unit: u32) -> u32 {
        let room = self.msize.saturating_sub(consts::IOHDRSZ);
        if unit == 0 || room < unit {
            0
        } else {
            room / unit * unit
        }
    }
}

/// Smallest msize accepted (QEMU's minimum too).
pub const MIN_MSIZE: u32 = 4096;

/// The state of one client connection.
pub struct Session<F: FileSystem> {
    fs: Arc<F>,
    fids: FidTable<F>,
    limits: SessionLimits,
    pool: Arc<BufPool>,
}

impl<F: FileSystem> Session<F> {
    /// The iounit an open answers: whole blocks of the backend's, as many as a message holds.
    fn iounit(&self, p: Protocol) -> u32 {
        p.iounit(self.fs.io_unit())
    }

    /// A session serving `fs`.
    pub fn new(fs: Arc<F>, limits: SessionLimits, pool: Arc<BufPool>) -> Session<F> {
        Session {
            fids: FidTable::new(limits.max_fids),
            fs,
            limits,
            pool,
        }
    }

    /// Answer Tversion (tag `tag`, normally NOTAG): the protocol to use from now on (None: "unknown" dialect) and the reply.
    /// The caller must have stopped every request in flight; all fids are dropped.
    pub fn version(&self, tag: u16, msize: u32, version: &str) -> (Option<Protocol>, Bytes) {
        self.fids.clear();
        let dialect = Dialect::from_version(version);
        let msize = msize.min(self.limits.max_msize);
        let (proto, reply) = match dialect {
            Some(d) if msize >= MIN_MSIZE => {
                let p = Protocol { dialect: d, msize };
                (
                    Some(p),
                    Fcall::Rversion(envoy_protocol::Rversion {
                        msize,
                        version: d.as_str().to_owned(),
                    }),
                )
            }
            Some(_) => {
                let text = format!("msize {msize} is below the minimum of {MIN_MSIZE}");
                (
                    None,
                    Fcall::Rerror(envoy_protocol::Rerror {
                        ename: text,
                        errno: Errno::EINVAL as u32,
                    }),
                )
            }
            None => (
                None,
                Fcall::Rversion(envoy_protocol::Rversion {
                    msize,
                    version: "unknown".to_owned(),
                }),
            ),
        };
        (proto, encode(tag, Dialect::P9P2000U, &reply))
    }

    /// Fids in use (for limits and tests).
    pub fn fid_count(&self) -> usize {
        self.fids.len()
    }

    /// Forget every fid (the connection ended).
    pub fn close(&self) {
        self.fids.clear();
    }

    /// Handle one request and return its encoded reply.
    pub fn handle(&self, tag: u16, msg: Fcall, proto: Protocol) -> Bytes {
        match self.dispatch(tag, msg, proto) {
            Ok(Reply::Msg(m)) => encode(tag, proto.dialect, &m),
            Ok(Reply::Encoded(b)) => b,
            Err(e) => self.error(tag, proto.dialect, e),
        }
    }

    /// The encoded error reply for `e` in `dialect`.
    pub fn error(&self, tag: u16, dialect: Dialect, e: Errno) -> Bytes {
        error_reply(tag, dialect, e, None)
    }

    fn dispatch(&self, tag: u16, msg: Fcall, p: Protocol) -> Result<Reply> {
        let dotl = p.dialect == Dialect::P9P2000L;
        let reply = match msg {
            Fcall::Tauth(_) => {
                return Ok(Reply::Encoded(error_reply(
                    tag,
                    p.dialect,
                    Errno::EOPNOTSUPP,
                    Some("authentication not required: attach with afid = NOFID"),
                )));
            }
            Fcall::Tattach(m) => self.attach(m, p)?,
            Fcall::Twalk(m) => self.walk(m)?,
            Fcall::Tread(m) => return self.read(tag, m, p),
            Fcall::Twrite(m) => self.write(m)?,
            Fcall::Tclunk(m) => self.clunk(m.fid)?,
            Fcall::Tremove(m) => self.remove(m.fid)?,
            // 9P2000 and 9P2000.u
            Fcall::Topen(m) if !dotl => self.open(m, p)?,
            Fcall::Tcreate(m) if !dotl => self.create(m, p)?,
            Fcall::Tstat(m) if !dotl => self.stat(m, p)?,
            Fcall::Twstat(m) if !dotl => self.wstat(m, p)?,
            // 9P2000.L
            Fcall::Tstatfs(m) if dotl => self.statfs(m)?,
            Fcall::Tlopen(m) if dotl => self.lopen(m, p)?,
            Fcall::Tlcreate(m) if dotl => self.lcreate(m, p)?,
            Fcall::Tsymlink(m) if dotl => self.symlink(m)?,
            Fcall::Tmknod(m) if dotl => self.mknod(m)?,
            Fcall::Trename(m) if dotl => self.rename(m)?,
            Fcall::Treadlink(m) if dotl => self.readlink(m)?,
            Fcall::Tgetattr(m) if dotl => self.getattr(m)?,
            Fcall::Tsetattr(m) if dotl => self.setattr(m)?,
            Fcall::Txattrwalk(m) if dotl => self.xattrwalk(m)?,
            Fcall::Txattrcreate(m) if dotl => self.xattrcreate(m)?,
            Fcall::Treaddir(m) if dotl => return self.readdir(tag, m, p),
            Fcall::Tfsync(m) if dotl => self.fsync(m)?,
            Fcall::Tlock(m) if dotl => self.lock(m)?,
            Fcall::Tgetlock(m) if dotl => self.getlock(m)?,
            Fcall::Tlink(m) if dotl => self.link(m)?,
            Fcall::Tmkdir(m) if dotl => self.mkdir(m)?,
            Fcall::Trenameat(m) if dotl => self.renameat(m)?,
            Fcall::Tunlinkat(m) if dotl => self.unlinkat(m)?,
            // Tversion and Tflush are handled by the server; R-messages are not requests.
            _ => return Err(Errno::EOPNOTSUPP),
        };
        Ok(Reply::Msg(reply))
    }

    fn attach(&self, m: envoy_protocol::Tattach, p: Protocol) -> Result<Fcall> {
        if m.afid != NOFID {
            return Err(Errno::EBADF);
        }
        let n_uname = if p.dialect.extended() {
            m.n_uname
        } else {
            consts::NONUNAME
        };
        let creds = user::resolve(&m.uname, n_uname)?;
        let (node, qid) = self.fs.attach(&creds, &m.aname)?;
        self.fids.insert(m.fid, Fid::new(node, creds))?;
        Ok(Fcall::Rattach(envoy_protocol::Rattach { qid }))
    }

    fn walk(&self, m: envoy_protocol::Twalk) -> Result<Fcall> {
        let from = self.fids.get(m.fid)?;
        from.plain()?;
        if m.newfid != m.fid && self.fids.get(m.newfid).is_ok() {
            return Err(Errno::EBADF);
        }
        if m.newfid == m.fid && from.open.get().is_some() {
            return Err(Errno::EBADF);
        }
        let (steps, err) = self.fs.walk(&from.creds, &from.node, &m.wnames);
        if steps.len() < m.wnames.len() {
            if steps.is_empty() {
                return Err(err.unwrap_or(Errno::ENOENT));
            }
            return Ok(Fcall::Rwalk(envoy_protocol::Rwalk {
                wqids: steps.into_iter().map(|(_, q)| q).collect(),
            }));
        }
        let wqids = steps.iter().map(|(_, q)| *q).collect();
        let node = steps
            .into_iter()
            .last()
            .map(|(n, _)| n)
            .unwrap_or_else(|| from.node.clone());
        let fid = Fid::new(node, from.creds.clone());
        if m.newfid == m.fid {
            self.fids.replace(m.fid, fid);
        } else {
            self.fids.insert(m.newfid, fid)?;
        }
        Ok(Fcall::Rwalk(envoy_protocol::Rwalk { wqids }))
    }

    fn read(&self, tag: u16, m: envoy_protocol::Tread, p: Protocol) -> Result<Reply> {
        let fid = self.fids.get(m.fid)?;
        let count = m.count.min(p.max_data()) as usize;
        if let Some(x) = &fid.xattr {
            return match x {
                Xattr::Read(value) => {
                    let start = usize::try_from(m.offset)
                        .unwrap_or(usize::MAX)
                        .min(value.len());
                    let end = start.saturating_add(count).min(value.len());
                    Ok(Reply::Msg(Fcall::Rread(envoy_protocol::Rread {
                        data: value.slice(start..end),
                    })))
                }
                Xattr::Write(_) => Err(Errno::EBADF),
            };
        }
        let open = fid.opened_state()?;
        if open.is_dir {
            if p.dialect == Dialect::P9P2000L {
                return Err(Errno::EISDIR);
            }
            return self.read_dir_stats(tag, &fid, m.offset, count, p);
        }
        if open.access == libc::O_WRONLY {
            return Err(Errno::EBADF);
        }
        let head = envoy_protocol::DATA_REPLY_HEADER_LEN;
        // A warm pooled buffer costs nothing to fill; only without one is it worth asking the
        // backend how much there is to read (a syscall) before preparing a buffer.
        let mut buf = match self.pool.take_warm(head + count) {
            Some(buf) => buf,
            None => self.data_reply(self.fs.read_size_hint(&open.file, m.offset, count)),
        };
        if let Some(delay) = self.limits.debug_read_delay {
            std::thread::sleep(delay);
        }
        let n = self
            .fs
            .read(&fid.creds, &open.file, m.offset, &mut buf[head..])?;
        if self.limits.debug_corrupt_reads && n > 0 {
            buf[head + n / 2] ^= 0x5a;
        }
        Ok(Reply::Encoded(finish_data_reply(
            buf,
            consts::RREAD,
            tag,
            n,
        )))
    }

    /// A pooled reply buffer sized for a header plus `count` data bytes (contents unspecified).
    fn data_reply(&self, count: usize) -> PooledBuf {
        self.pool
            .take_filled(envoy_protocol::DATA_REPLY_HEADER_LEN + count)
    }

    fn write(&self, m: envoy_protocol::Twrite) -> Result<Fcall> {
        let fid = self.fids.get(m.fid)?;
        if let Some(x) = &fid.xattr {
            let Xattr::Write(w) = x else {
                return Err(Errno::EBADF);
            };
            let mut w = w.lock().unwrap();
            if m.offset != w.value.len() as u64 {
                return Err(Errno::EINVAL);
            }
            if w.value.len() + m.data.len() > w.size {
                return Err(Errno::ENOSPC);
            }
            w.value.extend_from_slice(&m.data);
            return Ok(Fcall::Rwrite(envoy_protocol::Rwrite {
                count: m.data.len() as u32,
            }));
        }
        let open = fid.opened_state()?;
        if open.is_dir {
            return Err(Errno::EISDIR);
        }
        if open.access == libc::O_RDONLY {
            return Err(Errno::EBADF);
        }
        let n = self.fs.write(&fid.creds, &open.file, m.offset, &m.data)?;
        Ok(Fcall::Rwrite(envoy_protocol::Rwrite { count: n as u32 }))
    }

    fn clunk(&self, fid: u32) -> Result<Fcall> {
        let fid = self.fids.remove(fid)?;
        if let Some(Xattr::Write(w)) = &fid.xattr {
            let w = w.lock().unwrap();
            if w.value.len() != w.size {
                return Err(Errno::EINVAL);
            }
            // Linux removes an xattr with a zero-length create (flags XATTR_REPLACE); as QEMU.
            if w.size == 0 {
                self.fs.removexattr(&fid.creds, &fid.node, &w.name)?;
            } else {
                self.fs
                    .setxattr(&fid.creds, &fid.node, &w.name, &w.value, w.flags)?;
            }
        }
        if fid.open.get().is_some_and(|o| o.remove_on_clunk) {
            self.fs.remove(&fid.creds, &fid.node)?;
        }
        Ok(Fcall::Rclunk(envoy_protocol::Rclunk {}))
    }

    fn remove(&self, fid: u32) -> Result<Fcall> {
        // The fid is clunked even when the removal fails (remove(5)).
        let fid = self.fids.remove(fid)?;
        fid.plain()?;
        self.fs.remove(&fid.creds, &fid.node)?;
        Ok(Fcall::Rremove(envoy_protocol::Rremove {}))
    }
}

/// A handler's result: a message to encode, or a reply it encoded itself (zero-copy data).
enum Reply {
    Msg(Fcall),
    Encoded(Bytes),
}

/// Encode one message.
pub(crate) fn encode(tag: u16, dialect: Dialect, msg: &Fcall) -> Bytes {
    let mut buf = BytesMut::with_capacity(msg.encoded_len(dialect));
    msg.encode(tag, dialect, &mut buf);
    buf.freeze()
}

/// The error reply for `e`: Rlerror in .L, Rerror (text, plus errno in .u) otherwise.
pub(crate) fn error_reply(tag: u16, dialect: Dialect, e: Errno, text: Option<&str>) -> Bytes {
    let msg = match dialect {
        Dialect::P9P2000L => Fcall::Rlerror(envoy_protocol::Rlerror { ecode: e as u32 }),
        _ => Fcall::Rerror(envoy_protocol::Rerror {
            ename: text.unwrap_or(e.desc()).to_owned(),
            errno: e as u32,
        }),
    };
    encode(tag, dialect, &msg)
}

/// Write the header of a data reply (`Rread`/`Rreaddir`) of `n` bytes into the first bytes of
/// `buf`, whose data already follows the header, and trim it.
fn finish_data_reply(mut buf: PooledBuf, ty: u8, tag: u16, n: usize) -> Bytes {
    let len = envoy_protocol::DATA_REPLY_HEADER_LEN;
    buf.truncate(len + n);
    let mut head = BytesMut::with_capacity(len);
    envoy_protocol::encode_data_reply_header(&mut head, ty, tag, n as u32);
    buf[..len].copy_from_slice(&head);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iounit_is_whole_units_of_what_a_message_carries() {
        let p = |msize| Protocol {
            dialect: Dialect::P9P2000L,
            msize,
        };
        assert_eq!(p(1 << 20).iounit(65536), 15 * 65536);
        assert_eq!(p(1 << 20).iounit(0), 0, "no unit: the client's choice");
        assert_eq!(
            p(65536).iounit(65536),
            0,
            "a block does not fit beside the header"
        );
        assert_eq!(p(65536 + 24).iounit(65536), 65536);
        assert_eq!(p(8192).iounit(4096), 4096);
    }
}
