//! The owner's working copy of one image: inodes, directories and file blocks changed in
//! memory, committed to the object layer as a new root.
//!
//! Files are maps of [`BLOCK`]-byte blocks; a write changes only the blocks it touches (copy on
//! write per block, never per file), and a block is stored once however many files and images
//! hold it (its id is its hash). [`Engine::commit`] writes the changed blocks, then the changed
//! tree nodes bottom-up, then the root object, and returns the root's id: that id *is* a
//! snapshot, and [`Engine::open`] on it is a fork.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_objstore::{ObjectId, StoreError};
use nix::errno::Errno;

use super::btree::{Tree, no_refs};
use super::inode::{self, Content, Entry, Inode};
use super::objects::Objects;

/// Bytes per file block.
pub const BLOCK: usize = 64 * 1024;
/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
const ROOT_MAGIC: &[u8; 8] = b"ENVOYIMG";

/// A result with the errno a client will see.
pub type Result<T> = std::result::Result<T, Errno>;

/// An object-layer failure as the client sees it: EIO (logged with its cause).
fn eio(e: StoreError) -> Errno {
    tracing::error!(error = %e, "image: object layer failed");
    Errno::EIO
}

fn now() -> (u64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

/// A root object's inode-table root and next inode number (`None` if it is not a root:
/// `ENVOYIMG`, the table's id, the next inode number, 48 bytes).
pub fn decode_root(data: &[u8]) -> Option<(ObjectId, u64)> {
    if data.len() != 48 || &data[..8] != ROOT_MAGIC {
        return None;
    }
    let table = ObjectId::try_from_slice(&data[8..40])?;
    let next_ino = u64::from_le_bytes(data[40..48].try_into().ok()?);
    Some((table, next_ino))
}

/// What to create: a file, directory, device, fifo or socket by `mode`'s type, or a symlink
/// to `target`.
#[derive(Clone, Copy, Debug)]
pub struct NewNode<'a> {
    /// Type and permission bits (the type is ignored for a symlink).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (devices only).
    pub rdev: u64,
    /// A symlink's target.
    pub target: Option<&'a str>,
}

impl NewNode<'_> {
    /// A node of `mode` owned by `uid`/`gid`.
    pub fn new(mode: u32, uid: u32, gid: u32) -> NewNode<'static> {
        NewNode {
            mode,
            uid,
            gid,
            rdev: 0,
            target: None,
        }
    }
}

/// The working copy (see the module docs). Not thread-safe by itself: the backend serializes
/// access (one owner per image).
pub struct Engine {
    store: Arc<dyn Objects>,
    inodes: Tree,
    next_ino: u64,
    /// Loaded block maps and directories, by inode.
    trees: HashMap<u64, Tree>,
    /// Blocks written since the last commit: (inode, block index) → content (≤ BLOCK bytes).
    dirty: BTreeMap<(u64, u64), BytesMut>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("next_ino", &self.next_ino)
            .field("dirty_blocks", &self.dirty.len())
            .finish()
    }
}

impl Engine {
    /// A new, empty image: a root directory owned by `uid`/`gid` with mode `mode`.
    pub fn format(store: Arc<dyn Objects>, uid: u32, gid: u32, mode: u32) -> Result<Engine> {
        let mut e = Engine {
            store,
            inodes: Tree::new(Inode::value_refs),
            next_ino: ROOT_INO + 1,
            trees: HashMap::new(),
            dirty: BTreeMap::new(),
        };
        let t = now();
        let root = Inode {
            mode: libc::S_IFDIR | (mode & 0o7777),
            uid,
            gid,
            nlink: 2,
            rdev: 0,
            size: 0,
            times: [t; 3],
            version: 1,
            content: Content::Empty,
        };
        e.put_inode(ROOT_INO, &root)?;
        Ok(e)
    }

    /// The image whose committed root is `root` (a snapshot): changes made here start a new
    /// line of history (a fork) and never touch what `root` names.
    pub fn open(store: Arc<dyn Objects>, root: &ObjectId) -> Result<Engine> {
        let data = store.get(root).map_err(eio)?;
        let Some((inodes, next_ino)) = decode_root(&data) else {
            tracing::error!(%root, "image: not an image root");
            return Err(Errno::EIO);
        };
        let inodes = Tree::open(&*store, &inodes, Inode::value_refs).map_err(eio)?;
        Ok(Engine {
            store,
            inodes,
            next_ino,
            trees: HashMap::new(),
            dirty: BTreeMap::new(),
        })
    }

    /// Write everything changed and a new root object; the root's id (durable on return).
    pub fn commit(&mut self) -> Result<ObjectId> {
        // Blocks into their files' maps.
        let dirty = std::mem::take(&mut self.dirty);
        for ((ino, index), data) in dirty {
            let id = self.store.put(data.freeze(), Vec::new()).map_err(eio)?;
            let store = self.store.clone();
            self.tree(ino)?
                .insert(&*store, index, Bytes::copy_from_slice(&id.0))
                .map_err(eio)?;
        }
        // Changed maps and directories into their inodes.
        let changed: Vec<u64> = self
            .trees
            .iter()
            .filter(|(_, t)| !t.is_clean())
            .map(|(ino, _)| *ino)
            .collect();
        for ino in changed {
            let store = self.store.clone();
            let Some(tree) = self.trees.get_mut(&ino) else {
                continue;
            };
            let id = tree.commit(&*store).map_err(eio)?;
            tree.unload();
            let mut node = self.inode(ino)?;
            node.content = Content::Tree(id);
            self.put_inode(ino, &node)?;
        }
        let store = self.store.clone();
        let table = self.inodes.commit(&*store).map_err(eio)?;
        self.inodes.unload();
        let mut root = BytesMut::with_capacity(48);
        root.put_slice(ROOT_MAGIC);
        root.put_slice(&table.0);
        root.put_u64_le(self.next_ino);
        self.store.put(root.freeze(), vec![table]).map_err(eio)
    }

    /// Bytes of file data changed since the last commit (callers commit past a limit).
    pub fn dirty_bytes(&self) -> usize {
        self.dirty.len() * BLOCK
    }

    /// An inode.
    pub fn inode(&mut self, ino: u64) -> Result<Inode> {
        let store = self.store.clone();
        let v = self
            .inodes
            .get(&*store, ino)
            .map_err(eio)?
            .ok_or(Errno::ENOENT)?;
        Inode::decode(v).ok_or_else(|| {
            tracing::error!(ino, "image: undecodable inode");
            Errno::EIO
        })
    }

    fn put_inode(&mut self, ino: u64, node: &Inode) -> Result<()> {
        let store = self.store.clone();
        self.inodes
            .insert(&*store, ino, node.encode())
            .map_err(eio)?;
        Ok(())
    }

    /// Change an inode's attributes (its version and change time move on).
    pub fn update(&mut self, ino: u64, f: impl FnOnce(&mut Inode)) -> Result<Inode> {
        let mut node = self.inode(ino)?;
        f(&mut node);
        node.version += 1;
        node.times[2] = now();
        self.put_inode(ino, &node)?;
        Ok(node)
    }

    /// The tree (block map or directory) of an inode, loaded.
    fn tree(&mut self, ino: u64) -> Result<&mut Tree> {
        if !self.trees.contains_key(&ino) {
            let node = self.inode(ino)?;
            let refs = if node.mode & libc::S_IFMT == libc::S_IFDIR {
                no_refs
            } else {
                inode::block_refs
            };
            let tree = match &node.content {
                Content::Tree(id) => Tree::open(&*self.store, id, refs).map_err(eio)?,
                _ => Tree::new(refs),
            };
            self.trees.insert(ino, tree);
        }
        self.trees.get_mut(&ino).ok_or(Errno::EIO)
    }

    fn dir(&mut self, ino: u64) -> Result<Inode> {
        let node = self.inode(ino)?;
        if node.mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        Ok(node)
    }

    fn entries(&mut self, dir: u64, key: u64) -> Result<Vec<Entry>> {
        let store = self.store.clone();
        match self.tree(dir)?.get(&*store, key).map_err(eio)? {
            Some(v) => inode::decode_entries(v).ok_or(Errno::EIO),
            None => Ok(Vec::new()),
        }
    }

    fn set_entries(&mut self, dir: u64, key: u64, entries: &[Entry]) -> Result<()> {
        let store = self.store.clone();
        let tree = self.tree(dir)?;
        if entries.is_empty() {
            tree.remove(&*store, key).map_err(eio)?;
        } else {
            tree.insert(&*store, key, inode::encode_entries(entries))
                .map_err(eio)?;
        }
        Ok(())
    }

    /// The entry `name` in directory `dir`.
    pub fn lookup(&mut self, dir: u64, name: &str) -> Result<Option<Entry>> {
        self.dir(dir)?;
        Ok(self
            .entries(dir, inode::name_key(name))?
            .into_iter()
            .find(|e| e.name == name))
    }

    /// Add `name → ino` to `dir` (EEXIST if taken).
    fn add_entry(&mut self, dir: u64, name: &str, ino: u64, kind: u32) -> Result<()> {
        let key = inode::name_key(name);
        let mut list = self.entries(dir, key)?;
        if list.iter().any(|e| e.name == name) {
            return Err(Errno::EEXIST);
        }
        list.push(Entry {
            name: name.to_owned(),
            ino,
            kind,
        });
        self.set_entries(dir, key, &list)?;
        let is_dir = kind == libc::S_IFDIR;
        self.update(dir, |d| {
            d.size += 1;
            d.times[1] = now();
            if is_dir {
                d.nlink += 1;
            }
        })?;
        Ok(())
    }

    fn drop_entry(&mut self, dir: u64, name: &str) -> Result<Entry> {
        let key = inode::name_key(name);
        let mut list = self.entries(dir, key)?;
        let i = list
            .iter()
            .position(|e| e.name == name)
            .ok_or(Errno::ENOENT)?;
        let e = list.remove(i);
        self.set_entries(dir, key, &list)?;
        let is_dir = e.kind == libc::S_IFDIR;
        self.update(dir, |d| {
            d.size = d.size.saturating_sub(1);
            d.times[1] = now();
            if is_dir {
                d.nlink = d.nlink.saturating_sub(1);
            }
        })?;
        Ok(e)
    }

    /// Create `name` in `dir` as `new` says. Returns the new inode number.
    pub fn create(&mut self, dir: u64, name: &str, new: &NewNode<'_>) -> Result<u64> {
        let NewNode {
            mode,
            uid,
            gid,
            rdev,
            target,
        } = *new;
        self.dir(dir)?;
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Errno::EINVAL);
        }
        if self.lookup(dir, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let kind = if target.is_some() {
            libc::S_IFLNK
        } else {
            mode & libc::S_IFMT
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        let t = now();
        let node = Inode {
            mode: kind | (mode & 0o7777),
            uid,
            gid,
            nlink: if kind == libc::S_IFDIR { 2 } else { 1 },
            rdev,
            size: target.map_or(0, |t| t.len() as u64),
            times: [t; 3],
            version: 1,
            content: target.map_or(Content::Empty, |t| Content::Target(t.to_owned())),
        };
        self.put_inode(ino, &node)?;
        self.add_entry(dir, name, ino, kind)?;
        Ok(ino)
    }

    /// A hard link `name` in `dir` to the non-directory `ino`.
    pub fn link(&mut self, dir: u64, name: &str, ino: u64) -> Result<()> {
        let node = self.inode(ino)?;
        if node.mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Errno::EPERM);
        }
        self.add_entry(dir, name, ino, node.mode & libc::S_IFMT)?;
        self.update(ino, |n| n.nlink += 1)?;
        Ok(())
    }

    /// Remove `name` from `dir` (`rmdir`: it must be an empty directory; otherwise it must
    /// not be one). The inode goes when its last link does.
    pub fn unlink(&mut self, dir: u64, name: &str, rmdir: bool) -> Result<()> {
        let e = self.lookup(dir, name)?.ok_or(Errno::ENOENT)?;
        let is_dir = e.kind == libc::S_IFDIR;
        if rmdir && !is_dir {
            return Err(Errno::ENOTDIR);
        }
        if !rmdir && is_dir {
            return Err(Errno::EISDIR);
        }
        if is_dir && self.inode(e.ino)?.size > 0 {
            return Err(Errno::ENOTEMPTY);
        }
        self.drop_entry(dir, name)?;
        let node = self.update(e.ino, |n| n.nlink = n.nlink.saturating_sub(1))?;
        if node.nlink == 0 || is_dir {
            self.forget(e.ino)?;
        }
        Ok(())
    }

    fn forget(&mut self, ino: u64) -> Result<()> {
        let store = self.store.clone();
        self.inodes.remove(&*store, ino).map_err(eio)?;
        self.trees.remove(&ino);
        let blocks: Vec<(u64, u64)> = self
            .dirty
            .range((ino, 0)..=(ino, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in blocks {
            self.dirty.remove(&k);
        }
        Ok(())
    }

    /// Move `oname` in `odir` to `nname` in `ndir`, replacing a compatible target.
    pub fn rename(&mut self, odir: u64, oname: &str, ndir: u64, nname: &str) -> Result<()> {
        let e = self.lookup(odir, oname)?.ok_or(Errno::ENOENT)?;
        if odir == ndir && oname == nname {
            return Ok(());
        }
        if e.kind == libc::S_IFDIR && self.is_within(ndir, e.ino)? {
            return Err(Errno::EINVAL);
        }
        if let Some(old) = self.lookup(ndir, nname)? {
            self.unlink(ndir, nname, old.kind == libc::S_IFDIR)?;
        }
        self.drop_entry(odir, oname)?;
        self.add_entry(ndir, nname, e.ino, e.kind)
    }

    /// Whether `dir` is `ancestor` or below it (walking ".." is not stored: scan upward by
    /// searching parents is costly, so directories record no parent; a rename of a directory
    /// into its own subtree is found by walking down from `ancestor`).
    fn is_within(&mut self, dir: u64, ancestor: u64) -> Result<bool> {
        if dir == ancestor {
            return Ok(true);
        }
        let mut stack = vec![ancestor];
        let mut seen = 0usize;
        while let Some(d) = stack.pop() {
            let mut subdirs = Vec::new();
            self.readdir(d, 0, |e| {
                if e.kind == libc::S_IFDIR {
                    subdirs.push(e.ino);
                }
                true
            })?;
            for s in subdirs {
                if s == dir {
                    return Ok(true);
                }
                seen += 1;
                if seen > 1_000_000 {
                    return Err(Errno::ELOOP);
                }
                stack.push(s);
            }
        }
        Ok(false)
    }

    /// Directory entries from `cookie` on (0: the start), each with the cookie of the entry
    /// after it, until `f` returns false.
    pub fn readdir(
        &mut self,
        dir: u64,
        cookie: u64,
        mut f: impl FnMut(&Entry) -> bool,
    ) -> Result<()> {
        self.dir(dir)?;
        let store = self.store.clone();
        let mut bad = false;
        self.tree(dir)?
            .scan(&*store, cookie, |_, v| {
                match inode::decode_entries(v.clone()) {
                    Some(list) => list.iter().all(&mut f),
                    None => {
                        bad = true;
                        false
                    }
                }
            })
            .map_err(eio)?;
        if bad { Err(Errno::EIO) } else { Ok(()) }
    }

    /// The readdir cookie of an entry (its key; entries sharing a key are read together).
    pub fn cookie_of(name: &str) -> u64 {
        inode::name_key(name)
    }

    /// Read file `ino` at `offset` into `buf`; bytes read (0 at or past the end). Holes read
    /// as zeros.
    pub fn read(&mut self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let node = self.inode(ino)?;
        if node.mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Errno::EISDIR);
        }
        if offset >= node.size {
            return Ok(0);
        }
        let n = ((node.size - offset) as usize).min(buf.len());
        let mut done = 0;
        while done < n {
            let pos = offset + done as u64;
            let index = pos / BLOCK as u64;
            let within = (pos % BLOCK as u64) as usize;
            let take = (BLOCK - within).min(n - done);
            let out = &mut buf[done..done + take];
            // A dirty block is read in place; a stored one is fetched (verified) once.
            let stored;
            let block: &[u8] = match self.dirty.get(&(ino, index)) {
                Some(b) => b,
                None => {
                    stored = self.block(ino, index)?.unwrap_or_default();
                    &stored
                }
            };
            let have = block.len().saturating_sub(within).min(take);
            out[..have].copy_from_slice(&block[within..within + have]);
            out[have..].fill(0);
            done += take;
        }
        Ok(n)
    }

    /// A block's current content (dirty or stored), `None` for a hole.
    fn block(&mut self, ino: u64, index: u64) -> Result<Option<Bytes>> {
        if let Some(b) = self.dirty.get(&(ino, index)) {
            return Ok(Some(Bytes::copy_from_slice(b)));
        }
        let store = self.store.clone();
        let Some(v) = self.tree(ino)?.get(&*store, index).map_err(eio)? else {
            return Ok(None);
        };
        let id = ObjectId(<[u8; 32]>::try_from(&v[..]).map_err(|_| Errno::EIO)?);
        // A block that fails its hash is EIO for this range, never wrong bytes.
        self.store.get(&id).map(Some).map_err(eio)
    }

    /// Write `data` into file `ino` at `offset`; bytes written. Only the blocks touched change.
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let node = self.inode(ino)?;
        if node.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EINVAL);
        }
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done as u64;
            let index = pos / BLOCK as u64;
            let within = (pos % BLOCK as u64) as usize;
            let take = (BLOCK - within).min(data.len() - done);
            let mut block = match self.dirty.remove(&(ino, index)) {
                Some(b) => b,
                None if within == 0 && take == BLOCK => BytesMut::with_capacity(BLOCK),
                None => match self.block(ino, index)? {
                    Some(b) => BytesMut::from(&b[..]),
                    None => BytesMut::new(),
                },
            };
            // Only the file's bytes count (anything past its old end reads as zeros).
            let old_size_in_block = node
                .size
                .saturating_sub(index * BLOCK as u64)
                .min(BLOCK as u64) as usize;
            block.truncate(old_size_in_block);
            if block.len() < within + take {
                block.resize(within + take, 0);
            }
            block[within..within + take].copy_from_slice(&data[done..done + take]);
            self.dirty.insert((ino, index), block);
            done += take;
        }
        let t = now();
        self.update(ino, |n| {
            n.size = n.size.max(end);
            n.times[1] = t;
        })?;
        Ok(data.len())
    }

    /// Set file `ino`'s size: blocks past it are dropped, a partial last block is cut.
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<()> {
        let node = self.inode(ino)?;
        if node.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EINVAL);
        }
        if size < node.size {
            let first_gone = size.div_ceil(BLOCK as u64);
            let gone: Vec<(u64, u64)> = self
                .dirty
                .range((ino, first_gone)..=(ino, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            for k in gone {
                self.dirty.remove(&k);
            }
            let store = self.store.clone();
            let mut stored = Vec::new();
            self.tree(ino)?
                .scan(&*store, first_gone, |k, _| {
                    stored.push(k);
                    true
                })
                .map_err(eio)?;
            for k in stored {
                self.tree(ino)?.remove(&*store, k).map_err(eio)?;
            }
            // Cut the last partial block so that a later extension reads zeros.
            let within = (size % BLOCK as u64) as usize;
            if within > 0 {
                let index = size / BLOCK as u64;
                if let Some(b) = self.block(ino, index)? {
                    let mut b = BytesMut::from(&b[..within.min(b.len())]);
                    b.truncate(within);
                    self.dirty.insert((ino, index), b);
                }
            }
        }
        let t = now();
        self.update(ino, |n| {
            n.size = size;
            n.times[1] = t;
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_objstore::{LocalStore, StoreOptions};

    fn store() -> (tempfile::TempDir, Arc<LocalStore>) {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
        (dir, Arc::new(s))
    }

    fn file(e: &mut Engine, name: &str) -> u64 {
        e.create(ROOT_INO, name, &NewNode::new(libc::S_IFREG | 0o644, 0, 0))
            .unwrap()
    }

    fn read_all(e: &mut Engine, ino: u64) -> Vec<u8> {
        let size = e.inode(ino).unwrap().size as usize;
        let mut buf = vec![0xAA; size + 10];
        let n = e.read(ino, 0, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// Random writes and truncates agree with a byte vector, before and after commit and
    /// reopen.
    #[test]
    fn file_contents_match_a_model_through_writes_truncates_and_commits() {
        let (_d, s) = store();
        let mut e = Engine::format(s.clone(), 0, 0, 0o755).unwrap();
        let ino = file(&mut e, "f");
        let mut model: Vec<u8> = Vec::new();
        let mut x = 99u64;
        for step in 0..300u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(7) {
                let size = x % (5 * BLOCK as u64);
                e.truncate(ino, size).unwrap();
                model.resize(size as usize, 0);
            } else {
                let off = (x >> 8) % (4 * BLOCK as u64);
                let len = ((x >> 20) % (BLOCK as u64 + 100)) as usize;
                let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ step) as u8).collect();
                e.write(ino, off, &data).unwrap();
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            assert_eq!(read_all(&mut e, ino), model, "step {step}");
            if step % 50 == 49 {
                let root = e.commit().unwrap();
                e = Engine::open(s.clone(), &root).unwrap();
                assert_eq!(read_all(&mut e, ino), model, "after reopen at {step}");
            }
        }
    }

    /// A committed root is a snapshot: later changes do not show in it; an engine opened on it
    /// (a fork) diverges independently.
    #[test]
    fn snapshots_stay_as_they_were_and_forks_diverge() {
        let (_d, s) = store();
        let mut e = Engine::format(s.clone(), 0, 0, 0o755).unwrap();
        let ino = file(&mut e, "f");
        e.write(ino, 0, b"version one").unwrap();
        let snap = e.commit().unwrap();
        e.write(ino, 0, b"VERSION TWO!").unwrap();
        file(&mut e, "g");
        let current = e.commit().unwrap();
        let mut old = Engine::open(s.clone(), &snap).unwrap();
        assert_eq!(read_all(&mut old, ino), b"version one");
        assert!(old.lookup(ROOT_INO, "g").unwrap().is_none());
        // Fork the snapshot and change it: neither the snapshot nor current see it.
        let mut fork = Engine::open(s.clone(), &snap).unwrap();
        fork.write(ino, 8, b"FORK").unwrap();
        let forked = fork.commit().unwrap();
        assert_eq!(read_all(&mut fork, ino), b"version FORK");
        let mut again = Engine::open(s.clone(), &snap).unwrap();
        assert_eq!(read_all(&mut again, ino), b"version one");
        let mut cur = Engine::open(s.clone(), &current).unwrap();
        assert_eq!(read_all(&mut cur, ino), b"VERSION TWO!");
        assert_ne!(forked, current);
    }

    /// Identical blocks are stored once; changing one block of a big file writes one block
    /// and a path of tree nodes, not the file.
    #[test]
    fn blocks_are_shared_and_changes_are_per_block() {
        let (_d, s) = store();
        let mut e = Engine::format(s.clone(), 0, 0, 0o755).unwrap();
        let data: Vec<u8> = (0..64 * BLOCK)
            .map(|i| (i % 251) as u8 ^ (i / BLOCK) as u8)
            .collect();
        let a = file(&mut e, "a");
        e.write(a, 0, &data).unwrap();
        e.commit().unwrap();
        let after_a = s.stats().unwrap();
        let b = file(&mut e, "b");
        e.write(b, 0, &data).unwrap();
        e.commit().unwrap();
        let after_b = s.stats().unwrap();
        assert!(
            after_b.bytes - after_a.bytes < 64 * 1024,
            "a copy of 4 MiB added {} bytes",
            after_b.bytes - after_a.bytes
        );
        e.write(a, 10 * BLOCK as u64 + 5, b"x").unwrap();
        e.commit().unwrap();
        let after_change = s.stats().unwrap();
        let added = after_change.bytes - after_b.bytes;
        assert!(
            (BLOCK as u64..3 * BLOCK as u64).contains(&added),
            "a one-byte change added {added} bytes"
        );
        assert_eq!(read_all(&mut e, b), data);
    }

    #[test]
    fn directories_links_and_renames() {
        let (_d, s) = store();
        let mut e = Engine::format(s.clone(), 0, 0, 0o755).unwrap();
        let d = e
            .create(ROOT_INO, "d", &NewNode::new(libc::S_IFDIR | 0o755, 0, 0))
            .unwrap();
        let f = e
            .create(d, "f", &NewNode::new(libc::S_IFREG | 0o600, 5, 6))
            .unwrap();
        let l = e
            .create(
                d,
                "l",
                &NewNode {
                    target: Some("f"),
                    ..NewNode::new(0o777, 0, 0)
                },
            )
            .unwrap();
        assert_eq!(e.inode(l).unwrap().content, Content::Target("f".into()));
        assert_eq!(
            e.create(d, "f", &NewNode::new(libc::S_IFREG, 0, 0)),
            Err(Errno::EEXIST)
        );
        assert_eq!(e.unlink(ROOT_INO, "d", true), Err(Errno::ENOTEMPTY));
        assert_eq!(e.unlink(ROOT_INO, "d", false), Err(Errno::EISDIR));
        e.link(ROOT_INO, "hard", f).unwrap();
        assert_eq!(e.inode(f).unwrap().nlink, 2);
        assert_eq!(e.link(ROOT_INO, "dirlink", d), Err(Errno::EPERM));
        // Renaming a directory into itself is refused; across directories works.
        assert_eq!(e.rename(ROOT_INO, "d", d, "x"), Err(Errno::EINVAL));
        e.rename(d, "f", ROOT_INO, "moved").unwrap();
        assert!(e.lookup(d, "f").unwrap().is_none());
        assert_eq!(e.lookup(ROOT_INO, "moved").unwrap().unwrap().ino, f);
        // Many entries: readdir sees each once, resuming from cookies.
        for i in 0..3000 {
            e.create(
                d,
                &format!("n{i}"),
                &NewNode::new(libc::S_IFREG | 0o644, 0, 0),
            )
            .unwrap();
        }
        let root = e.commit().unwrap();
        let mut e = Engine::open(s.clone(), &root).unwrap();
        let mut names = Vec::new();
        let mut cookie = 0;
        loop {
            let mut page = Vec::new();
            e.readdir(d, cookie, |en| {
                page.push(en.name.clone());
                page.len() < 100
            })
            .unwrap();
            if page.is_empty() {
                break;
            }
            cookie = Engine::cookie_of(page.last().unwrap()) + 1;
            names.extend(page);
        }
        names.sort();
        let mut want: Vec<String> = (0..3000).map(|i| format!("n{i}")).collect();
        want.push("l".into());
        want.sort();
        assert_eq!(names, want);
        assert_eq!(e.inode(d).unwrap().size, 3001);
        // Unlinking the last link drops the inode.
        e.unlink(ROOT_INO, "moved", false).unwrap();
        assert_eq!(e.inode(f).unwrap().nlink, 1);
        e.unlink(ROOT_INO, "hard", false).unwrap();
        assert_eq!(e.inode(f), Err(Errno::ENOENT));
    }

    /// A stored block that fails its hash reads as EIO, never as other bytes.
    #[test]
    fn a_corrupt_block_is_eio() {
        let (dir, s) = store();
        let mut e = Engine::format(s.clone(), 0, 0, 0o755).unwrap();
        let ino = file(&mut e, "f");
        let data = vec![0x5Au8; BLOCK];
        e.write(ino, 0, &data).unwrap();
        e.write(ino, BLOCK as u64, &[0x11u8; 100]).unwrap();
        let root = e.commit().unwrap();
        drop(e);
        let id = ObjectId::of(&data);
        let (path, offset) = s.locate(&id).unwrap().unwrap();
        drop(s);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offset as usize + 3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let s = Arc::new(LocalStore::open(dir.path(), StoreOptions::default()).unwrap());
        let mut e = Engine::open(s, &root).unwrap();
        let mut buf = vec![0u8; 100];
        assert_eq!(e.read(ino, 0, &mut buf), Err(Errno::EIO));
        // The other block is still readable.
        assert_eq!(e.read(ino, BLOCK as u64, &mut buf), Ok(100));
        assert_eq!(buf, vec![0x11u8; 100]);
    }
}
