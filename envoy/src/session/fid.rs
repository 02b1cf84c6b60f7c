//! Fids: the client's handles, each naming a node and perhaps an open file or an xattr buffer.
//!
//! A fid is immutable once made except for its one-time open; operations that turn a fid into
//! something else (`Tlcreate`, `Tcreate`, `Txattrcreate`) replace it in the table. Requests hold
//! an `Arc` to the fid they use, so a clunk racing an operation only ends the fid when both are
//! done, and reads on one fid run in parallel (no lock around the open file).

use crate::vfs::{Creds, Errno, FileSystem, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One client fid.
pub(crate) struct Fid<F: FileSystem> {
    pub node: F::Node,
    pub creds: Creds,
    pub open: OnceLock<Open<F>>,
    pub xattr: Option<Xattr>,
}

impl<F: FileSystem> Fid<F> {
    pub fn new(node: F::Node, creds: Creds) -> Fid<F> {
        Fid {
            node,
            creds,
            open: OnceLock::new(),
            xattr: None,
        }
    }

    /// A fid that is already open on `file`.
    pub fn opened(node: F::Node, creds: Creds, open: Open<F>) -> Fid<F> {
        let fid = Fid::new(node, creds);
        let _ = fid.open.set(open);
        fid
    }

    /// The open state, or EBADF if the fid is not open.
    pub fn opened_state(&self) -> Result<&Open<F>> {
        self.open.get().ok_or(Errno::EBADF)
    }

    /// The open file, if any (for getattr/setattr through the handle).
    pub fn file(&self) -> Option<&F::File> {
        self.open.get().map(|o| &o.file)
    }

    /// EBADF unless this is a plain (non-xattr) fid.
    pub fn plain(&self) -> Result<()> {
        if self.xattr.is_some() {
            Err(Errno::EBADF)
        } else {
            Ok(())
        }
    }
}

/// What an open fid carries.
pub(crate) struct Open<F: FileSystem> {
    pub file: F::File,
    /// Host access mode (`O_RDONLY`/`O_WRONLY`/`O_RDWR`).
    pub access: i32,
    pub is_dir: bool,
    /// 9P2000 `ORCLOSE`: remove the file at clunk.
    pub remove_on_clunk: bool,
    /// 9P2000/.u directory reads: where the byte stream of stat records stands.
    pub dir_stream: Mutex<DirStream>,
}

/// Position of a 9P2000/.u directory read (offsets are byte offsets into the stream of stats).
#[derive(Default)]
pub(crate) struct DirStream {
    /// Byte offset the next read must ask for (or 0 to restart).
    pub offset: u64,
    /// Backend cookie of the next entry to encode.
    pub cookie: u64,
    /// An encoded stat that did not fit in the previous reply.
    pub pending: Option<Bytes>,
}

/// Extended-attribute fids.
pub(crate) enum Xattr {
    /// Made by `Txattrwalk`: the value (or the name list) to read.
    Read(Bytes),
    /// Made by `Txattrcreate`: the value being written, applied at clunk.
    Write(Mutex<XattrWrite>),
}

/// A value being written through an xattr fid.
pub(crate) struct XattrWrite {
    pub name: String,
    pub size: usize,
    pub flags: u32,
    pub value: Vec<u8>,
}

/// The fid table of one session. `std::sync::Mutex`: held for map operations only.
pub(crate) struct FidTable<F: FileSystem> {
    fids: Mutex<HashMap<u32, Arc<Fid<F>>>>,
    max: usize,
}

impl<F: FileSystem> FidTable<F> {
    pub fn new(max: usize) -> Self {
        FidTable {
            fids: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// The fid, or EBADF.
    pub fn get(&self, fid: u32) -> Result<Arc<Fid<F>>> {
        self.fids
            .lock()
            .unwrap()
            .get(&fid)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// Add a new fid; EBADF if the number is taken, EMFILE past the per-session limit.
    pub fn insert(&self, fid: u32, value: Fid<F>) -> Result<()> {
        if fid == envoy_protocol::consts::NOFID {
            return Err(Errno::EBADF);
        }
        let mut fids = self.fids.lock().unwrap();
        if fids.contains_key(&fid) {
            return Err(Errno::EBADF);
        }
        if fids.len() >= self.max {
            return Err(Errno::EMFILE);
        }
        fids.insert(fid, Arc::new(value));
        Ok(())
    }

    /// Replace an existing fid (the fid became something else).
    pub fn replace(&self, fid: u32, value: Fid<F>) {
        self.fids.lock().unwrap().insert(fid, Arc::new(value));
    }

    /// Remove a fid, returning it.
    pub fn remove(&self, fid: u32) -> Result<Arc<Fid<F>>> {
        self.fids.lock().unwrap().remove(&fid).ok_or(Errno::EBADF)
    }

    /// Forget every fid (a new Tversion, or the end of the connection).
    pub fn clear(&self) {
        let old = std::mem::take(&mut *self.fids.lock().unwrap());
        drop(old);
    }

    /// Number of fids in use.
    pub fn len(&self) -> usize {
        self.fids.lock().unwrap().len()
    }
}
