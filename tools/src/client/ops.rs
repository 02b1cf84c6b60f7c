//! One thin helper per 9P operation, on top of [`Client::rpc`].
//!
//! Each sends one request and unpacks the expected reply (anything else is
//! [`ClientError::UnexpectedReply`]), except the ones that loop: [`Client::read`] and
//! [`Client::write`] split transfers into msize-sized chunks, [`Client::readdir`] and
//! [`Client::read_dir_stats`] read a whole directory, and [`Client::walk_path`] walks paths
//! of any depth.

use super::{Client, ClientError, Result};
use bytes::{Bytes, BytesMut};
use envoy_protocol::consts::MAXWELEM;
use envoy_protocol::*;

/// Send `$req` and unpack reply variant `$reply`.
macro_rules! expect {
    ($client:expr, $req:expr, $reply:ident) => {{
        let req = Fcall::from($req);
        let request = req.name();
        match $client.rpc(req).await? {
            Fcall::$reply(r) => r,
            other => {
                return Err(ClientError::UnexpectedReply {
                    request,
                    reply: Box::new(other),
                });
            }
        }
    }};
}

impl Client {
    // ------------------------------------------------------------------ all dialects

    /// Attach `fid` to the tree `aname` as `uname` / `n_uname` (n_uname is sent only in
    /// 9P2000.u and .L; NONUNAME means "use uname"). No authentication (afid NOFID).
    pub async fn attach(&self, fid: u32, uname: &str, aname: &str, n_uname: u32) -> Result<Qid> {
        let req = Tattach {
            fid,
            afid: consts::NOFID,
            uname: uname.into(),
            aname: aname.into(),
            n_uname,
        };
        Ok(expect!(self, req, Rattach).qid)
    }

    /// One Twalk from `fid` to `newfid` (at most MAXWELEM names). Returns the qids walked,
    /// which may be fewer than `names` if the walk stopped early (then `newfid` was not
    /// created).
    pub async fn walk(&self, fid: u32, newfid: u32, names: &[&str]) -> Result<Vec<Qid>> {
        let req = Twalk {
            fid,
            newfid,
            wnames: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        Ok(expect!(self, req, Rwalk).wqids)
    }

    /// Walk `newfid` to `path` (components separated by `/`; empty and `.` components are
    /// skipped) from `fid`, in as many Twalks as it takes. A walk that stops early is
    /// [`ClientError::WalkIncomplete`] and leaves `newfid` unused.
    pub async fn walk_path(&self, fid: u32, newfid: u32, path: &str) -> Result<Vec<Qid>> {
        let names: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if names.len() <= MAXWELEM {
            let qids = self.walk(fid, newfid, &names).await?;
            if qids.len() < names.len() {
                return Err(ClientError::WalkIncomplete {
                    walked: qids.len(),
                    requested: names.len(),
                });
            }
            return Ok(qids);
        }
        let mut all = Vec::with_capacity(names.len());
        let mut from = fid;
        for chunk in names.chunks(MAXWELEM) {
            let qids = match self.walk(from, newfid, chunk).await {
                Ok(q) => q,
                Err(e) => {
                    if from == newfid && newfid != fid {
                        let _ = self.clunk(newfid).await;
                    }
                    return Err(e);
                }
            };
            let short = qids.len() < chunk.len();
            all.extend(qids);
            if short {
                if from == newfid && newfid != fid {
                    let _ = self.clunk(newfid).await;
                }
                return Err(ClientError::WalkIncomplete {
                    walked: all.len(),
                    requested: names.len(),
                });
            }
            from = newfid;
        }
        Ok(all)
    }

    /// Forget `fid`.
    pub async fn clunk(&self, fid: u32) -> Result<()> {
        expect!(self, Tclunk { fid }, Rclunk);
        Ok(())
    }

    /// Remove the file `fid` stands for (the fid is clunked either way).
    pub async fn remove(&self, fid: u32) -> Result<()> {
        expect!(self, Tremove { fid }, Rremove);
        Ok(())
    }

    /// Ask the server to abort request `oldtag` (see [`Client::start`]). When the Rflush
    /// comes first, the flushed request fails with [`ClientError::Flushed`].
    pub async fn flush(&self, oldtag: u16) -> Result<()> {
        expect!(self, Tflush { oldtag }, Rflush);
        Ok(())
    }

    /// One Tread of at most `count` bytes.
    pub async fn read_chunk(&self, fid: u32, offset: u64, count: u32) -> Result<Bytes> {
        Ok(expect!(self, Tread { fid, offset, count }, Rread).data)
    }

    /// Read up to `count` bytes from `offset`, in chunks of at most msize − IOHDRSZ, until
    /// `count` bytes arrived or a read returns nothing (end of file).
    pub async fn read(&self, fid: u32, offset: u64, count: usize) -> Result<Bytes> {
        let mut out = BytesMut::new();
        let mut first: Option<Bytes> = None;
        let mut got = 0usize;
        while got < count {
            let want = (count - got).min(self.max_io() as usize) as u32;
            let data = self.read_chunk(fid, offset + got as u64, want).await?;
            if data.is_empty() {
                break;
            }
            if data.len() > want as usize {
                let reply = Box::new(Fcall::Rread(Rread { data }));
                return Err(ClientError::UnexpectedReply {
                    request: "Tread",
                    reply,
                });
            }
            got += data.len();
            // Keep a single chunk zero-copy; concatenate only when there are several.
            match first.take() {
                None if out.is_empty() => first = Some(data),
                None => out.extend_from_slice(&data),
                Some(f) => {
                    out.extend_from_slice(&f);
                    out.extend_from_slice(&data);
                }
            }
        }
        Ok(first.unwrap_or_else(|| out.freeze()))
    }

    /// One Twrite; returns the count the server reports.
    pub async fn write_chunk(&self, fid: u32, offset: u64, data: Bytes) -> Result<u32> {
        Ok(expect!(self, Twrite { fid, offset, data }, Rwrite).count)
    }

    /// Write all of `data` at `offset`, in chunks of at most msize − IOHDRSZ. Returns the
    /// bytes written, which is less than `data.len()` only if the server stopped accepting.
    pub async fn write(&self, fid: u32, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_bytes(fid, offset, Bytes::copy_from_slice(data))
            .await
    }

    /// [`write`](Client::write) without copying `data`.
    pub async fn write_bytes(&self, fid: u32, offset: u64, data: Bytes) -> Result<usize> {
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(self.max_io() as usize);
            let count = self
                .write_chunk(fid, offset + done as u64, data.slice(done..done + n))
                .await? as usize;
            if count > n {
                let reply = Box::new(Fcall::Rwrite(Rwrite {
                    count: count as u32,
                }));
                return Err(ClientError::UnexpectedReply {
                    request: "Twrite",
                    reply,
                });
            }
            if count == 0 {
                break;
            }
            done += count;
        }
        Ok(done)
    }

    // ----------------------------------------------------------- 9P2000 and 9P2000.u

    /// Open `fid` with an `O*` mode; returns the qid and iounit.
    pub async fn open(&self, fid: u32, mode: u8) -> Result<(Qid, u32)> {
        let r = expect!(self, Topen { fid, mode }, Ropen);
        Ok((r.qid, r.iounit))
    }

    /// Create `name` in directory `fid` (which then stands for the new file, opened with
    /// `mode`); `extension` is sent only in 9P2000.u.
    pub async fn create(
        &self,
        fid: u32,
        name: &str,
        perm: u32,
        mode: u8,
        extension: &str,
    ) -> Result<(Qid, u32)> {
        let req = Tcreate {
            fid,
            name: name.into(),
            perm,
            mode,
            extension: extension.into(),
        };
        let r = expect!(self, req, Rcreate);
        Ok((r.qid, r.iounit))
    }

    /// The stat of `fid`.
    pub async fn stat(&self, fid: u32) -> Result<Stat> {
        Ok(expect!(self, Tstat { fid }, Rstat).stat)
    }

    /// Change the stat of `fid` (start from [`Stat::dont_touch`]).
    pub async fn wstat(&self, fid: u32, stat: &Stat) -> Result<()> {
        expect!(
            self,
            Twstat {
                fid,
                stat: stat.clone()
            },
            Rwstat
        );
        Ok(())
    }

    /// Every entry of the open directory `fid` (9P2000/.u: reads of packed stats, from
    /// offset 0 until a read returns nothing).
    pub async fn read_dir_stats(&self, fid: u32) -> Result<Vec<Stat>> {
        let mut all = Vec::new();
        let mut offset = 0u64;
        loop {
            let data = self.read_chunk(fid, offset, self.max_io()).await?;
            if data.is_empty() {
                return Ok(all);
            }
            offset += data.len() as u64;
            all.extend(decode_stats(data, self.dialect())?);
        }
    }

    // ------------------------------------------------------------------- 9P2000.L

    /// Open `fid` with `P9_DOTL_*` flags; returns the qid and iounit.
    pub async fn lopen(&self, fid: u32, flags: u32) -> Result<(Qid, u32)> {
        let r = expect!(self, Tlopen { fid, flags }, Rlopen);
        Ok((r.qid, r.iounit))
    }

    /// Create and open regular file `name` in directory `fid` (which then stands for it).
    pub async fn lcreate(
        &self,
        fid: u32,
        name: &str,
        flags: u32,
        mode: u32,
        gid: u32,
    ) -> Result<(Qid, u32)> {
        let req = Tlcreate {
            fid,
            name: name.into(),
            flags,
            mode,
            gid,
        };
        let r = expect!(self, req, Rlcreate);
        Ok((r.qid, r.iounit))
    }

    /// The attributes of `fid` selected by `request_mask` (`GETATTR_*`).
    pub async fn getattr(&self, fid: u32, request_mask: u64) -> Result<Rgetattr> {
        Ok(expect!(self, Tgetattr { fid, request_mask }, Rgetattr))
    }

    /// Set the attributes selected by `attr.valid` (`SETATTR_*`).
    pub async fn setattr(&self, attr: Tsetattr) -> Result<()> {
        expect!(self, attr, Rsetattr);
        Ok(())
    }

    /// One Treaddir: the raw entries after `offset`, at most `count` bytes.
    pub async fn readdir_chunk(&self, fid: u32, offset: u64, count: u32) -> Result<Bytes> {
        Ok(expect!(self, Treaddir { fid, offset, count }, Rreaddir).data)
    }

    /// Every entry of the open directory `fid`, following entry offsets until the server
    /// returns nothing.
    pub async fn readdir(&self, fid: u32) -> Result<Vec<Dirent>> {
        let mut all = Vec::new();
        let mut offset = 0u64;
        loop {
            let data = self.readdir_chunk(fid, offset, self.max_io()).await?;
            let entries = decode_dirents(data)?;
            let Some(last) = entries.last() else {
                return Ok(all);
            };
            if last.offset == offset && !all.is_empty() {
                // No progress: a server bug; stop rather than loop forever.
                return Ok(all);
            }
            offset = last.offset;
            all.extend(entries);
        }
    }

    /// Create directory `name` in `dfid`.
    pub async fn mkdir(&self, dfid: u32, name: &str, mode: u32, gid: u32) -> Result<Qid> {
        Ok(expect!(
            self,
            Tmkdir {
                dfid,
                name: name.into(),
                mode,
                gid
            },
            Rmkdir
        )
        .qid)
    }

    /// Create symlink `name` → `target` in directory `fid`.
    pub async fn symlink(&self, fid: u32, name: &str, target: &str, gid: u32) -> Result<Qid> {
        let req = Tsymlink {
            fid,
            name: name.into(),
            symtgt: target.into(),
            gid,
        };
        Ok(expect!(self, req, Rsymlink).qid)
    }

    /// Create device node, fifo or socket `name` in `dfid`.
    pub async fn mknod(
        &self,
        dfid: u32,
        name: &str,
        mode: u32,
        major: u32,
        minor: u32,
        gid: u32,
    ) -> Result<Qid> {
        let req = Tmknod {
            dfid,
            name: name.into(),
            mode,
            major,
            minor,
            gid,
        };
        Ok(expect!(self, req, Rmknod).qid)
    }

    /// The target of symlink `fid`.
    pub async fn readlink(&self, fid: u32) -> Result<String> {
        Ok(expect!(self, Treadlink { fid }, Rreadlink).target)
    }

    /// Move the file `fid` to `name` in directory `dfid`.
    pub async fn rename(&self, fid: u32, dfid: u32, name: &str) -> Result<()> {
        expect!(
            self,
            Trename {
                fid,
                dfid,
                name: name.into()
            },
            Rrename
        );
        Ok(())
    }

    /// Rename `oldname` in `olddirfid` to `newname` in `newdirfid`.
    pub async fn renameat(
        &self,
        olddirfid: u32,
        oldname: &str,
        newdirfid: u32,
        newname: &str,
    ) -> Result<()> {
        let req = Trenameat {
            olddirfid,
            oldname: oldname.into(),
            newdirfid,
            newname: newname.into(),
        };
        expect!(self, req, Rrenameat);
        Ok(())
    }

    /// Remove `name` from directory `dirfd` (`flags`: `AT_REMOVEDIR` for a directory).
    pub async fn unlinkat(&self, dirfd: u32, name: &str, flags: u32) -> Result<()> {
        expect!(
            self,
            Tunlinkat {
                dirfd,
                name: name.into(),
                flags
            },
            Runlinkat
        );
        Ok(())
    }

    /// Hard-link the file `fid` as `name` in directory `dfid`.
    pub async fn link(&self, dfid: u32, fid: u32, name: &str) -> Result<()> {
        expect!(
            self,
            Tlink {
                dfid,
                fid,
                name: name.into()
            },
            Rlink
        );
        Ok(())
    }

    /// Flush the open file `fid` to stable storage (only its data if `datasync`).
    pub async fn fsync(&self, fid: u32, datasync: bool) -> Result<()> {
        expect!(
            self,
            Tfsync {
                fid,
                datasync: u32::from(datasync)
            },
            Rfsync
        );
        Ok(())
    }

    /// File system statistics for the file system holding `fid`.
    pub async fn statfs(&self, fid: u32) -> Result<Rstatfs> {
        Ok(expect!(self, Tstatfs { fid }, Rstatfs))
    }

    /// Make `newfid` a handle for reading extended attribute `name` of `fid` (or the list
    /// of names, for an empty `name`); returns the value's size.
    pub async fn xattrwalk(&self, fid: u32, newfid: u32, name: &str) -> Result<u64> {
        Ok(expect!(
            self,
            Txattrwalk {
                fid,
                newfid,
                name: name.into()
            },
            Rxattrwalk
        )
        .size)
    }

    /// Turn `fid` into a handle for writing extended attribute `name` (`attr_size` bytes,
    /// set when the fid is clunked).
    pub async fn xattrcreate(
        &self,
        fid: u32,
        name: &str,
        attr_size: u64,
        flags: u32,
    ) -> Result<()> {
        expect!(
            self,
            Txattrcreate {
                fid,
                name: name.into(),
                attr_size,
                flags
            },
            Rxattrcreate
        );
        Ok(())
    }

    /// Take or release a POSIX record lock; returns the `LOCK_STATUS_*`.
    pub async fn lock(&self, req: Tlock) -> Result<u8> {
        Ok(expect!(self, req, Rlock).status)
    }

    /// Test for a lock conflicting with `req`.
    pub async fn getlock(&self, req: Tgetlock) -> Result<Rgetlock> {
        Ok(expect!(self, req, Rgetlock))
    }
}
