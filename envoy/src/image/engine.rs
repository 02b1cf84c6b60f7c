//! The owner's working copy of one image: inodes, directories and file blocks changed in
//! memory, committed to the object layer as a new root.
//!
//! Files are maps of [`BLOCK`]-byte blocks; a write changes only the blocks it touches (copy on
//! write per block, never per file), and a block is stored once however many files and images
//! hold it (its id is its hash). [`Engine::commit`] writes the changed blocks, then the changed
//! tree nodes bottom-up, then the root object, and returns the root's id: that id *is* a
//! snapshot, and [`Engine::open`] on it is a fork.
//!
//! Extended attributes live in their inode ([`Engine::set_xattr`]). An inode whose last link
//! goes while a handle has it open ([`Engine::opened`]) stays, with no links, until the last
//! handle closes ([`Engine::closed`]); a commit in between records it (a crash then leaves it
//! unreachable: its space is lost, not other data).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_objstore::{ObjectId, PutObject, StoreError};
use nix::errno::Errno;

use super::block::{BlockWrite, Dirty, Pins, pieces};
use super::btree::{Tree, no_refs};
use super::inode::{self, Content, Entry, Inode, XATTR_BYTES_MAX, XATTR_NAME_MAX};
use super::objects::Objects;
use super::wal::{AttrChange, Logged, Op};
use crate::vfs::XATTR_SIZE_MAX;

/// Bytes per file block.
pub const BLOCK: usize = 64 * 1024;
/// Bytes of ops the journal holds at most; past it, the journal is dropped and only a commit
/// can make the changes durable (a log entry that large would cost what a commit costs).
pub const JOURNAL_BYTES: usize = 1 << 20;
/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
const ROOT_MAGIC: &[u8; 8] = b"ENVOYIMG";

/// A result with the errno a client will see.
pub type Result<T> = std::result::Result<T, Errno>;

/// The block id a file's block map holds (EIO if the value is not one).
fn block_id(v: &[u8]) -> Result<ObjectId> {
    Ok(ObjectId(<[u8; 32]>::try_from(v).map_err(|_| Errno::EIO)?))
}

/// An object-layer failure as the client sees it: EIO (logged with its cause).
fn eio(e: StoreError) -> Errno {
    tracing::error!(error = %e, "image: object layer failed");
    Errno::EIO
}

/// Refuse names that cannot be a directory entry: EINVAL for an empty name or one with a `/`
/// or NUL, EEXIST for `.` and `..` (what mkdir(2) says), ENAMETOOLONG past 255 bytes.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '\0']) {
        return Err(Errno::EINVAL);
    }
    if name == "." || name == ".." {
        return Err(Errno::EEXIST);
    }
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
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
    /// A block written whole is a slice of the request that wrote it, hashed by its writer
    /// (see [`super::block`]); one written in part is a buffer of its own.
    dirty: BTreeMap<(u64, u64), Dirty>,
    /// Bytes of request frames that blocks point into (see [`Engine::pinned_bytes`]).
    pins: Pins,
    /// Blocks being stored outside the owner's lock (see [`Engine::start_flush`]): still
    /// read from here until [`Engine::finish_flush`] puts them in their files' maps.
    flushing: BTreeMap<(u64, u64), Dirty>,
    /// Objects of a commit whose store failed: stored again by the next commit.
    unsaved: Vec<PutObject>,
    /// Blocks of a commit being stored (or whose store failed), by id: in their files' maps
    /// already, read from here until the store has them (see [`Engine::prepare_commit`]).
    pending: HashMap<ObjectId, Bytes>,
    /// Changes not yet in the write-ahead log (see [`Engine::take_journal`]).
    journal: Journal,
    /// The time of the change being made (a replay sets it from the log).
    at: (u64, u32),
    /// Replaying: the time to stamp the next change with.
    clock: Option<(u64, u32)>,
    /// Handles open on each inode (an unlinked inode stays while it has some).
    open: HashMap<u64, usize>,
    /// Inodes that lost their last link during a replay (freed at its end).
    orphans: Vec<u64>,
}

/// The changes made since the journal was last taken, for the write-ahead log.
#[derive(Debug, Default)]
struct Journal {
    ops: Vec<Logged>,
    bytes: usize,
    /// Changes were made that the ops do not describe (too many bytes, or a failure part way
    /// through a change): only a commit can make them durable.
    lost: bool,
    /// Replaying a log: changes are not journaled again.
    off: bool,
}

/// Where a block of a read comes from (see [`Engine::read_plan`]).
#[derive(Debug)]
enum BlockSource {
    /// In memory: its bytes (as many as it holds; past them the file reads zeros).
    Here(Bytes),
    /// Stored: its id.
    Stored(ObjectId),
    /// Never written: zeros.
    Hole,
}

/// A read, planned under the owner's lock and carried out without it.
#[derive(Debug)]
pub struct ReadPlan {
    offset: u64,
    n: usize,
    blocks: Vec<BlockSource>,
}

impl ReadPlan {
    /// Fetch the stored blocks (each verified against its id: a block that fails is EIO for
    /// this range, never wrong bytes) and copy the read into `buf`; bytes read.
    pub fn fill(self, store: &dyn Objects, buf: &mut [u8]) -> Result<usize> {
        for (source, (_, within, range)) in self.blocks.into_iter().zip(pieces(self.offset, self.n))
        {
            let take = range.len();
            let stored;
            let block: &[u8] = match &source {
                BlockSource::Here(b) => b,
                BlockSource::Stored(id) => {
                    stored = store.get(id).map_err(eio)?;
                    &stored
                }
                BlockSource::Hole => &[],
            };
            let out = &mut buf[range];
            // Past the block's bytes (a file extended by truncate) reads as zeros.
            let have = block.len().saturating_sub(within).min(take);
            if have > 0 {
                out[..have].copy_from_slice(&block[within..within + have]);
            }
            out[have..].fill(0);
        }
        Ok(self.n)
    }
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
            pins: Pins::default(),
            flushing: BTreeMap::new(),
            unsaved: Vec::new(),
            pending: HashMap::new(),
            journal: Journal::default(),
            at: now(),
            clock: None,
            open: HashMap::new(),
            orphans: Vec::new(),
        };
        let t = e.at;
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
            xattrs: BTreeMap::new(),
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
            pins: Pins::default(),
            flushing: BTreeMap::new(),
            unsaved: Vec::new(),
            pending: HashMap::new(),
            journal: Journal::default(),
            at: now(),
            clock: None,
            open: HashMap::new(),
            orphans: Vec::new(),
        })
    }

    /// Commit: every change into a new root, stored (one batch); its id. The owner's write
    /// path does the same in steps ([`Engine::prepare_commit`]) to store without its lock.
    pub fn commit(&mut self) -> Result<ObjectId> {
        let (root, batch) = self.prepare_commit()?;
        let stored = self.store.put_many(batch.clone());
        self.commit_stored(batch, stored.is_ok());
        stored.map_err(eio)?;
        Ok(root)
    }

    /// Fold every change into a new root: the dirty blocks into their files' maps, changed
    /// trees into new nodes, the inode table into the root. Returns the root's id and the
    /// objects to store (blocks, nodes, root) — the caller stores them, then reports with
    /// [`Engine::commit_stored`]. Meanwhile the engine goes on from the new root (changes
    /// made now belong to the next commit), its new blocks read from memory. One commit at
    /// a time: the next is prepared only once this one is reported.
    pub fn prepare_commit(&mut self) -> Result<(ObjectId, Vec<PutObject>)> {
        // Blocks of a flush that never finished are stored below, with the rest.
        self.abort_flush();
        let mut batch = std::mem::take(&mut self.unsaved);
        // Blocks into their files' maps.
        let dirty = std::mem::take(&mut self.dirty);
        for ((ino, index), data) in dirty {
            let block = data.into_object();
            let id = block.id();
            self.pending.insert(id, block.data().clone());
            batch.push(block);
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
            let Some(tree) = self.trees.get_mut(&ino) else {
                continue;
            };
            let id = tree.commit_into(&mut batch);
            let mut node = self.inode(ino)?;
            node.content = Content::Tree(id);
            self.put_inode(ino, &node)?;
        }
        let table = self.inodes.commit_into(&mut batch);
        let mut root = BytesMut::with_capacity(48);
        root.put_slice(ROOT_MAGIC);
        root.put_slice(&table.0);
        root.put_u64_le(self.next_ino);
        let root = PutObject::new(root.freeze(), vec![table]);
        let id = root.id();
        batch.push(root);
        // Everything is in the root now: the journal starts afresh.
        self.journal = Journal {
            off: self.journal.off,
            ..Journal::default()
        };
        Ok((id, batch))
    }

    /// The objects of [`Engine::prepare_commit`] were stored (`true`) or not. Stored: what
    /// is unchanged can leave memory (it is read again when needed). Not: the next commit
    /// stores them with its own, and until then only a commit (not a log entry, whose base
    /// would lack them) makes changes durable.
    pub fn commit_stored(&mut self, batch: Vec<PutObject>, stored: bool) {
        if stored {
            self.pending.clear();
            self.inodes.unload();
            for tree in self.trees.values_mut() {
                tree.unload();
            }
        } else {
            self.unsaved = batch;
            self.lose_journal();
        }
    }

    /// Take the dirty blocks out to be stored without the owner's lock (hashing and writing
    /// a commit's data is most of its cost; changes go on meanwhile). They stay readable
    /// here; [`Engine::finish_flush`] with their ids puts them in their files' maps, or
    /// [`Engine::abort_flush`] makes them dirty again.
    pub fn start_flush(&mut self) -> Vec<((u64, u64), Dirty)> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut out = Vec::with_capacity(dirty.len());
        for (k, b) in dirty {
            out.push((k, b.clone()));
            self.flushing.insert(k, b);
        }
        out
    }

    /// The blocks of [`Engine::start_flush`] are stored, as `ids`: each that was not
    /// truncated or unlinked meanwhile goes into its file's map (one written again meanwhile
    /// is dirty, and its newer content wins at the next commit).
    pub fn finish_flush(&mut self, ids: Vec<((u64, u64), ObjectId)>) -> Result<()> {
        let store = self.store.clone();
        for ((ino, index), id) in ids {
            if self.flushing.remove(&(ino, index)).is_none() {
                continue;
            }
            self.tree(ino)?
                .insert(&*store, index, Bytes::copy_from_slice(&id.0))
                .map_err(eio)?;
        }
        Ok(())
    }

    /// Storing the blocks of [`Engine::start_flush`] failed: they are dirty again (unless
    /// written again meanwhile).
    pub fn abort_flush(&mut self) {
        for (k, b) in std::mem::take(&mut self.flushing) {
            self.dirty.entry(k).or_insert(b);
        }
    }

    /// Bytes of file data changed since the last commit (callers commit past a limit).
    pub fn dirty_bytes(&self) -> usize {
        self.dirty.len() * BLOCK
    }

    /// Bytes of request frames held by blocks written without a copy. Usually about what
    /// those blocks hold; more when most blocks of a request were overwritten or truncated
    /// away and a few still hold its frame — so memory limits count this too.
    pub fn pinned_bytes(&self) -> usize {
        self.pins.bytes()
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

    /// Overwrite inode `ino` as `f` says, outside every rule (no journal, no checks): for
    /// tests that plant the damage `check` must find.
    #[doc(hidden)]
    pub fn tamper(&mut self, ino: u64, f: impl FnOnce(&mut Inode)) -> Result<Inode> {
        self.update(ino, f)
    }

    /// Change an inode's attributes (its version and change time move on).
    fn update(&mut self, ino: u64, f: impl FnOnce(&mut Inode)) -> Result<Inode> {
        let mut node = self.inode(ino)?;
        f(&mut node);
        node.version += 1;
        node.times[2] = self.at;
        self.put_inode(ino, &node)?;
        Ok(node)
    }

    /// The value of extended attribute `name` of `ino` (ENODATA if it has none).
    pub fn xattr(&mut self, ino: u64, name: &str) -> Result<Bytes> {
        self.inode(ino)?.xattrs.remove(name).ok_or(Errno::ENODATA)
    }

    /// The names of `ino`'s extended attributes, in order.
    pub fn xattrs(&mut self, ino: u64) -> Result<Vec<String>> {
        Ok(self.inode(ino)?.xattrs.into_keys().collect())
    }

    /// Set extended attribute `name` of `ino` to `value`, as setxattr(2) does: `flags`
    /// `XATTR_CREATE` fails with EEXIST if it exists, `XATTR_REPLACE` with ENODATA if not; a
    /// name must be 1 to 255 bytes (ERANGE), a value at most `XATTR_SIZE_MAX` (E2BIG), and all
    /// of an inode's attributes at most [`XATTR_BYTES_MAX`] bytes (ENOSPC).
    pub fn set_xattr(&mut self, ino: u64, name: &str, value: &[u8], flags: u32) -> Result<()> {
        self.logged(
            |e| e.do_set_xattr(ino, name, value, flags),
            |_| Op::SetXattr {
                ino,
                name: name.to_owned(),
                value: Bytes::copy_from_slice(value),
                flags,
            },
        )
    }

    fn do_set_xattr(&mut self, ino: u64, name: &str, value: &[u8], flags: u32) -> Result<()> {
        if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) as u32 != 0 {
            return Err(Errno::EINVAL);
        }
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(Errno::ERANGE);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(Errno::E2BIG);
        }
        let node = self.inode(ino)?;
        let exists = node.xattrs.contains_key(name);
        if exists && flags & libc::XATTR_CREATE as u32 != 0 {
            return Err(Errno::EEXIST);
        }
        if !exists && flags & libc::XATTR_REPLACE as u32 != 0 {
            return Err(Errno::ENODATA);
        }
        let others: usize = node
            .xattrs
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(n, v)| n.len() + v.len())
            .sum();
        if others + name.len() + value.len() > XATTR_BYTES_MAX {
            return Err(Errno::ENOSPC);
        }
        let value = Bytes::copy_from_slice(value);
        self.update(ino, |n| {
            n.xattrs.insert(name.to_owned(), value);
        })?;
        Ok(())
    }

    /// Remove extended attribute `name` of `ino` (ENODATA if it has none).
    pub fn remove_xattr(&mut self, ino: u64, name: &str) -> Result<()> {
        self.logged(
            |e| e.do_remove_xattr(ino, name),
            |_| Op::RemoveXattr {
                ino,
                name: name.to_owned(),
            },
        )
    }

    fn do_remove_xattr(&mut self, ino: u64, name: &str) -> Result<()> {
        if !self.inode(ino)?.xattrs.contains_key(name) {
            return Err(Errno::ENODATA);
        }
        self.update(ino, |n| {
            n.xattrs.remove(name);
        })?;
        Ok(())
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

    /// Add `name → ino` to directory `dir` (EEXIST if taken).
    fn add_entry(&mut self, dir: u64, name: &str, ino: u64, kind: u32) -> Result<()> {
        self.dir(dir)?;
        check_name(name)?;
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
        let at = self.at;
        self.update(dir, |d| {
            d.size += 1;
            d.times[1] = at;
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
        let at = self.at;
        self.update(dir, |d| {
            d.size = d.size.saturating_sub(1);
            d.times[1] = at;
            if is_dir {
                d.nlink = d.nlink.saturating_sub(1);
            }
        })?;
        Ok(e)
    }

    /// Create `name` in `dir` as `new` says. Returns the new inode number.
    pub fn create(&mut self, dir: u64, name: &str, new: &NewNode<'_>) -> Result<u64> {
        self.logged(
            |e| e.do_create(dir, name, new),
            |ino| Op::Create {
                dir,
                name: name.to_owned(),
                ino: *ino,
                mode: new.mode,
                uid: new.uid,
                gid: new.gid,
                rdev: new.rdev,
                target: new.target.map(str::to_owned),
            },
        )
    }

    fn do_create(&mut self, dir: u64, name: &str, new: &NewNode<'_>) -> Result<u64> {
        let NewNode {
            mode,
            uid,
            gid,
            rdev,
            target,
        } = *new;
        self.dir(dir)?;
        check_name(name)?;
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
        let t = self.at;
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
            xattrs: BTreeMap::new(),
        };
        self.put_inode(ino, &node)?;
        self.add_entry(dir, name, ino, kind)?;
        Ok(ino)
    }

    /// A hard link `name` in `dir` to the non-directory `ino` (ENOENT once it has no links).
    pub fn link(&mut self, dir: u64, name: &str, ino: u64) -> Result<()> {
        self.logged(
            |e| e.do_link(dir, name, ino),
            |_| Op::Link {
                dir,
                name: name.to_owned(),
                ino,
            },
        )
    }

    fn do_link(&mut self, dir: u64, name: &str, ino: u64) -> Result<()> {
        let node = self.inode(ino)?;
        if node.mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Errno::EPERM);
        }
        if node.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        self.add_entry(dir, name, ino, node.mode & libc::S_IFMT)?;
        self.update(ino, |n| n.nlink += 1)?;
        Ok(())
    }

    /// Remove `name` from `dir` (`rmdir`: it must be an empty directory; otherwise it must
    /// not be one). The inode goes with its last link, or at its last close if it is open.
    pub fn unlink(&mut self, dir: u64, name: &str, rmdir: bool) -> Result<()> {
        self.logged(
            |e| e.do_unlink(dir, name, rmdir),
            |_| Op::Unlink {
                dir,
                name: name.to_owned(),
                rmdir,
            },
        )
    }

    fn do_unlink(&mut self, dir: u64, name: &str, rmdir: bool) -> Result<()> {
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
        // A removed directory has no links left (its "." goes with it).
        let node = self.update(e.ino, |n| {
            n.nlink = if is_dir { 0 } else { n.nlink.saturating_sub(1) }
        })?;
        if node.nlink == 0 && self.journal.off {
            // Replaying: later ops may still use it (it was open then); see `replay`.
            self.orphans.push(e.ino);
        } else if node.nlink == 0 && !self.open.contains_key(&e.ino) {
            self.forget(e.ino)?;
        }
        Ok(())
    }

    /// A handle on `ino` was opened: the inode stays while any is.
    pub fn opened(&mut self, ino: u64) {
        *self.open.entry(ino).or_default() += 1;
    }

    /// A handle on `ino` was closed. At the last, an inode without links goes; returns whether
    /// it did (a change to commit).
    pub fn closed(&mut self, ino: u64) -> Result<bool> {
        let Some(count) = self.open.get_mut(&ino) else {
            return Ok(false);
        };
        *count -= 1;
        if *count > 0 {
            return Ok(false);
        }
        self.open.remove(&ino);
        match self.inode(ino) {
            Ok(node) if node.nlink == 0 => self.forget(ino).map(|()| true),
            Ok(_) | Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn forget(&mut self, ino: u64) -> Result<()> {
        let store = self.store.clone();
        self.inodes.remove(&*store, ino).map_err(eio)?;
        self.trees.remove(&ino);
        self.drop_blocks(ino, 0);
        Ok(())
    }

    /// Forget the unstored blocks of `ino` from block `from` on (dirty, or being flushed:
    /// a flush finishing later must not bring them back).
    fn drop_blocks(&mut self, ino: u64, from: u64) {
        let range = (ino, from)..=(ino, u64::MAX);
        let gone: Vec<(u64, u64)> = self.dirty.range(range.clone()).map(|(k, _)| *k).collect();
        for k in gone {
            self.dirty.remove(&k);
        }
        let gone: Vec<(u64, u64)> = self.flushing.range(range).map(|(k, _)| *k).collect();
        for k in gone {
            self.flushing.remove(&k);
        }
    }

    /// Move `oname` in `odir` to `nname` in `ndir`, replacing a compatible target as
    /// rename(2) does: a directory only an empty directory (ENOTDIR, ENOTEMPTY), anything else
    /// only a non-directory (EISDIR); a name for the same inode stays as it is. Returns
    /// whether anything moved.
    pub fn rename(&mut self, odir: u64, oname: &str, ndir: u64, nname: &str) -> Result<bool> {
        self.logged(
            |e| e.do_rename(odir, oname, ndir, nname),
            |_| Op::Rename {
                odir,
                oname: oname.to_owned(),
                ndir,
                nname: nname.to_owned(),
            },
        )
    }

    fn do_rename(&mut self, odir: u64, oname: &str, ndir: u64, nname: &str) -> Result<bool> {
        let e = self.lookup(odir, oname)?.ok_or(Errno::ENOENT)?;
        self.dir(ndir)?;
        check_name(nname).map_err(|_| Errno::EINVAL)?;
        if odir == ndir && oname == nname {
            return Ok(false);
        }
        let moving_dir = e.kind == libc::S_IFDIR;
        if moving_dir && self.is_within(ndir, e.ino)? {
            return Err(Errno::EINVAL);
        }
        if let Some(old) = self.lookup(ndir, nname)? {
            if old.ino == e.ino {
                return Ok(false);
            }
            match (moving_dir, old.kind == libc::S_IFDIR) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (replacing_dir, _) => self.do_unlink(ndir, nname, replacing_dir)?,
            }
        }
        self.drop_entry(odir, oname)?;
        self.add_entry(ndir, nname, e.ino, e.kind)?;
        Ok(true)
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
        let store = self.store.clone();
        self.read_plan(ino, offset, buf.len())?.fill(&*store, buf)
    }

    /// What a read of `len` bytes of `ino` at `offset` needs: for each block, its bytes if
    /// they are in memory (dirty, or being flushed), else its id. The owner's lock is needed
    /// only for this; [`ReadPlan::fill`] fetches and verifies stored blocks without it, so
    /// reads run in parallel.
    pub fn read_plan(&mut self, ino: u64, offset: u64, len: usize) -> Result<ReadPlan> {
        let node = self.inode(ino)?;
        if node.mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Errno::EISDIR);
        }
        let n = if offset >= node.size {
            0
        } else {
            ((node.size - offset) as usize).min(len)
        };
        let mut blocks = Vec::new();
        if n > 0 {
            let (first, last) = (
                offset / BLOCK as u64,
                (offset + n as u64 - 1) / BLOCK as u64,
            );
            for index in first..=last {
                blocks.push(self.source(ino, index)?);
            }
        }
        Ok(ReadPlan { offset, n, blocks })
    }

    /// Where a block's current content is: in memory (dirty, being flushed, or in a commit
    /// being stored), in the store, or nowhere (a hole).
    fn source(&mut self, ino: u64, index: u64) -> Result<BlockSource> {
        if let Some(b) = self.dirty.get(&(ino, index)) {
            return Ok(BlockSource::Here(b.data().clone()));
        }
        if let Some(b) = self.flushing.get(&(ino, index)) {
            return Ok(BlockSource::Here(b.data().clone()));
        }
        let store = self.store.clone();
        let Some(v) = self.tree(ino)?.get(&*store, index).map_err(eio)? else {
            return Ok(BlockSource::Hole);
        };
        let id = block_id(&v)?;
        Ok(match self.pending.get(&id) {
            Some(b) => BlockSource::Here(b.clone()),
            None => BlockSource::Stored(id),
        })
    }

    /// A block's current content (dirty or stored), `None` for a hole.
    fn block(&mut self, ino: u64, index: u64) -> Result<Option<Bytes>> {
        match self.source(ino, index)? {
            BlockSource::Here(b) => Ok(Some(b)),
            BlockSource::Hole => Ok(None),
            // A block that fails its hash is EIO for this range, never wrong bytes.
            BlockSource::Stored(id) => self.store.get(&id).map(Some).map_err(eio),
        }
    }

    /// Write `data` into file `ino` at `offset`; bytes written. Only the blocks touched change.
    /// Whole blocks are hashed here, under the owner's lock: writers that can, cut and hash
    /// first ([`BlockWrite::cut`] with [`Engine::pins`]) and call [`Engine::write_cut`].
    pub fn write(&mut self, ino: u64, offset: u64, data: &Bytes) -> Result<usize> {
        let w = BlockWrite::cut(offset, data, &self.pins);
        self.write_cut(ino, &w)
    }

    /// Write a cut write's data into file `ino`; bytes written.
    pub fn write_cut(&mut self, ino: u64, w: &BlockWrite) -> Result<usize> {
        self.logged(
            |e| e.do_write(ino, w),
            |_| Op::Write {
                ino,
                offset: w.offset(),
                data: w.data().clone(),
            },
        )
    }

    /// What writers charge the request frames their blocks hold to ([`BlockWrite::cut`]).
    pub fn pins(&self) -> Pins {
        self.pins.clone()
    }

    fn do_write(&mut self, ino: u64, w: &BlockWrite) -> Result<usize> {
        let node = self.inode(ino)?;
        if node.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EINVAL);
        }
        let (offset, data) = (w.offset(), w.data());
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        let mut whole = w.whole().iter();
        for (index, within, range) in pieces(offset, data.len()) {
            if range.len() == BLOCK {
                // Cut for this very offset: one object per whole piece.
                let block = whole.next().ok_or(Errno::EIO)?;
                self.dirty.insert((ino, index), Dirty::Whole(block.clone()));
                continue;
            }
            let mut block = match self.dirty.remove(&(ino, index)) {
                // Written in part before (the usual case): changed in place.
                Some(b) => b.into_mut(),
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
            if block.len() < within {
                block.resize(within, 0);
            }
            // Overwrite what the block holds, append the rest (no zeroing of bytes written).
            let src = &data[range];
            let over = block.len().min(within + src.len()) - within;
            block[within..within + over].copy_from_slice(&src[..over]);
            block.extend_from_slice(&src[over..]);
            self.dirty.insert((ino, index), Dirty::Part(block.freeze()));
        }
        let t = self.at;
        self.update(ino, |n| {
            n.size = n.size.max(end);
            n.times[1] = t;
        })?;
        Ok(data.len())
    }

    /// Set file `ino`'s size: blocks past it are dropped, a partial last block is cut.
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<()> {
        self.logged(|e| e.do_truncate(ino, size), |_| Op::Truncate { ino, size })
    }

    fn do_truncate(&mut self, ino: u64, size: u64) -> Result<()> {
        let node = self.inode(ino)?;
        if node.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EINVAL);
        }
        if size < node.size {
            let first_gone = size.div_ceil(BLOCK as u64);
            self.drop_blocks(ino, first_gone);
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
                    let b = Bytes::copy_from_slice(&b[..within.min(b.len())]);
                    self.dirty.insert((ino, index), Dirty::Part(b));
                }
            }
        }
        let t = self.at;
        self.update(ino, |n| {
            n.size = size;
            n.times[1] = t;
        })?;
        Ok(())
    }

    /// Change `ino`'s attributes as `change` says.
    pub fn set_attr(&mut self, ino: u64, change: &AttrChange) -> Result<Inode> {
        let c = *change;
        self.logged(
            |e| {
                e.update(ino, |n| {
                    if let Some(m) = c.mode {
                        n.mode = (n.mode & libc::S_IFMT) | (m & 0o7777);
                    }
                    if let Some(u) = c.uid {
                        n.uid = u;
                    }
                    if let Some(g) = c.gid {
                        n.gid = g;
                    }
                    if let Some(t) = c.atime {
                        n.times[0] = t;
                    }
                    if let Some(t) = c.mtime {
                        n.times[1] = t;
                    }
                })
            },
            |_| Op::SetAttr { ino, change: c },
        )
    }

    /// The time the change about to be made carries.
    fn begin(&mut self) {
        self.at = self.clock.unwrap_or_else(now);
    }

    /// Make a change with `f` at this moment's time, and journal it as `op` says.
    fn logged<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
        op: impl FnOnce(&T) -> Op,
    ) -> Result<T> {
        self.begin();
        let r = f(self);
        self.log_change(&r, op);
        r
    }

    /// Journal a change that returned `r`. Errors other than EIO are refusals made before
    /// anything changed; after an EIO the state may be half changed, which no op describes.
    fn log_change<T>(&mut self, r: &Result<T>, op: impl FnOnce(&T) -> Op) {
        let j = &mut self.journal;
        if j.off || j.lost {
            return;
        }
        match r {
            Ok(v) => {
                let op = op(v);
                j.bytes += op.size();
                if j.bytes > JOURNAL_BYTES {
                    j.ops = Vec::new();
                    j.lost = true;
                } else {
                    j.ops.push(Logged { at: self.at, op });
                }
            }
            Err(Errno::EIO) => {
                j.ops = Vec::new();
                j.lost = true;
            }
            Err(_) => {}
        }
    }

    /// Whether changes were made since the journal was last taken or the last commit.
    pub fn unlogged(&self) -> bool {
        self.journal.lost || !self.journal.ops.is_empty()
    }

    /// The changes made since the last call (or commit), oldest first, for a log entry;
    /// `None` if they cannot be described by ops (then only a commit makes them durable).
    pub fn take_journal(&mut self) -> Option<Vec<Logged>> {
        if self.journal.lost {
            return None;
        }
        self.journal.bytes = 0;
        Some(std::mem::take(&mut self.journal.ops))
    }

    /// Give up on the journal (a log entry holding its ops failed): the changes are still
    /// here, and the next sync must commit them.
    pub fn lose_journal(&mut self) {
        self.journal.ops = Vec::new();
        self.journal.lost = true;
    }

    /// Apply logged changes (a log replayed onto the root it was written against): each is
    /// made exactly as it was, with its time and, for a new node, its inode number.
    pub fn replay(&mut self, ops: &[Logged]) -> Result<()> {
        let off = std::mem::replace(&mut self.journal.off, true);
        let r = ops.iter().try_for_each(|l| self.apply(l));
        self.journal.off = off;
        self.clock = None;
        r?;
        // An inode unlinked while open was freed at its last close, which is not logged:
        // nothing is open after a replay, so every inode left without links goes now.
        for ino in std::mem::take(&mut self.orphans) {
            match self.inode(ino) {
                Ok(node) if node.nlink == 0 && !self.open.contains_key(&ino) => self.forget(ino)?,
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn apply(&mut self, l: &Logged) -> Result<()> {
        self.clock = Some(l.at);
        let diverged = |what: &str| {
            tracing::error!(op = ?l.op, "image: log replay diverged: {what}");
            Errno::EIO
        };
        match &l.op {
            Op::Create {
                dir,
                name,
                ino,
                mode,
                uid,
                gid,
                rdev,
                target,
            } => {
                let new = NewNode {
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                    rdev: *rdev,
                    target: target.as_deref(),
                };
                let got = self
                    .create(*dir, name, &new)
                    .map_err(|_| diverged("create"))?;
                if got != *ino {
                    return Err(diverged("inode number"));
                }
            }
            Op::Link { dir, name, ino } => {
                self.link(*dir, name, *ino).map_err(|_| diverged("link"))?
            }
            Op::Unlink { dir, name, rmdir } => self
                .unlink(*dir, name, *rmdir)
                .map_err(|_| diverged("unlink"))?,
            Op::Rename {
                odir,
                oname,
                ndir,
                nname,
            } => {
                self.rename(*odir, oname, *ndir, nname)
                    .map_err(|_| diverged("rename"))?;
            }
            Op::SetXattr {
                ino,
                name,
                value,
                flags,
            } => self
                .set_xattr(*ino, name, value, *flags)
                .map_err(|_| diverged("setxattr"))?,
            Op::RemoveXattr { ino, name } => self
                .remove_xattr(*ino, name)
                .map_err(|_| diverged("removexattr"))?,
            Op::Write { ino, offset, data } => {
                self.write(*ino, *offset, data)
                    .map_err(|_| diverged("write"))?;
            }
            Op::Truncate { ino, size } => self
                .truncate(*ino, *size)
                .map_err(|_| diverged("truncate"))?,
            Op::SetAttr { ino, change } => {
                self.set_attr(*ino, change)
                    .map_err(|_| diverged("setattr"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_store as store;

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
        let mut flight = Vec::new();
        let mut commit = None;
        for step in 0..300u64 {
            // Blocks taken out for storing while writes and truncates go on; commits whose
            // objects are stored later (or fail to be, then go with the next commit).
            match step % 30 {
                5 => flight = e.start_flush(),
                15 => {
                    let ids = std::mem::take(&mut flight)
                        .into_iter()
                        .map(|(k, b)| (k, Objects::put(&*s, b.data().clone(), Vec::new()).unwrap()))
                        .collect();
                    e.finish_flush(ids).unwrap();
                }
                17 => commit = Some(e.prepare_commit().unwrap()),
                22 => flight = e.start_flush(),
                25 if commit.is_some() => {
                    let (_, batch) = commit.take().unwrap();
                    if step % 60 < 30 {
                        e.commit_stored(batch, false);
                    } else {
                        Objects::put_many(&*s, batch.clone()).unwrap();
                        e.commit_stored(batch, true);
                    }
                }
                27 => e.abort_flush(),
                _ => {}
            }
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
                e.write(ino, off, &bytes::Bytes::copy_from_slice(&data))
                    .unwrap();
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            assert_eq!(read_all(&mut e, ino), model, "step {step}");
            if step % 50 == 49 {
                // One commit at a time (the owner's flush lock sees to it in the backend).
                if let Some((_, batch)) = commit.take() {
                    e.commit_stored(batch, false);
                }
                let root = e.commit().unwrap();
                e = Engine::open(s.clone(), &root).unwrap();
                assert_eq!(read_all(&mut e, ino), model, "after reopen at {step}");
            }
        }
    }

    /// Everything in an image, by path: attributes (times and versions included) and content.
    fn dump(e: &mut Engine) -> Vec<(String, Inode, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), ROOT_INO)];
        while let Some((path, ino)) = stack.pop() {
            let mut node = e.inode(ino).unwrap();
            let content = match node.mode & libc::S_IFMT {
                libc::S_IFREG => read_all(e, ino),
                libc::S_IFDIR => {
                    let mut names = Vec::new();
                    e.readdir(ino, 0, |en| {
                        names.push((en.name.clone(), en.ino));
                        true
                    })
                    .unwrap();
                    for (n, i) in names {
                        stack.push((format!("{path}/{n}"), i));
                    }
                    Vec::new()
                }
                _ => Vec::new(),
            };
            // Tree ids differ between a committed and a replayed copy until both commit.
            node.content = match node.content {
                Content::Tree(_) => Content::Empty,
                c => c,
            };
            out.push((path, node, content));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The journal describes every change exactly: replaying the ops taken from it onto the
    /// root they started from gives the same image, times, inode numbers and all; and a
    /// journal that overflowed says so instead of handing out a partial log.
    #[test]
    fn a_replayed_journal_reproduces_the_image() {
        let (_d, s) = store();
        let mut e = Engine::format(s.clone(), 0, 0, 0o755).unwrap();
        let d = e
            .create(ROOT_INO, "d", &NewNode::new(libc::S_IFDIR | 0o755, 0, 0))
            .unwrap();
        let f = file(&mut e, "f");
        e.write(f, 0, &bytes::Bytes::copy_from_slice(&vec![7u8; 3 * BLOCK]))
            .unwrap();
        let base = e.commit().unwrap();
        assert!(!e.unlogged());
        let mut log = Vec::new();
        let mut x = 7u64;
        let mut files = vec![(ROOT_INO, "f".to_string())];
        for step in 0..400u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (dir, name) = files[(x % files.len() as u64) as usize].clone();
            let ino = e.lookup(dir, &name).unwrap().map(|en| en.ino);
            let _ = match (x >> 8) % 8 {
                0 => {
                    let name = format!("n{step}");
                    let dir = if x & 1 == 0 { ROOT_INO } else { d };
                    let r = e.create(dir, &name, &NewNode::new(libc::S_IFREG | 0o640, 5, 6));
                    if r.is_ok() {
                        files.push((dir, name));
                    }
                    r.map(drop)
                }
                1 => e.link(d, &format!("l{step}"), ino.unwrap()),
                2 if files.len() > 2 => {
                    files.retain(|f| *f != (dir, name.clone()));
                    e.unlink(dir, &name, false)
                }
                3 => {
                    let nname = format!("r{step}");
                    let r = e.rename(dir, &name, d, &nname);
                    files.retain(|f| *f != (dir, name.clone()));
                    files.push((d, nname));
                    r.map(drop)
                }
                4 => e.truncate(ino.unwrap(), (x >> 16) % (2 * BLOCK as u64)),
                5 => e
                    .set_attr(
                        ino.unwrap(),
                        &AttrChange {
                            mode: Some(0o600),
                            mtime: Some((x >> 40, 9)),
                            ..AttrChange::default()
                        },
                    )
                    .map(drop),
                _ => e
                    .write(
                        ino.unwrap(),
                        (x >> 12) % (3 * BLOCK as u64),
                        &bytes::Bytes::copy_from_slice(&[step as u8; 5000]),
                    )
                    .map(drop),
            };
            // Failed ops (EEXIST, ...) change nothing and log nothing.
            e.create(ROOT_INO, "d", &NewNode::new(libc::S_IFREG, 0, 0))
                .unwrap_err();
            if step % 37 == 0 {
                log.extend(e.take_journal().expect("journal kept"));
            }
        }
        log.extend(e.take_journal().expect("journal kept"));
        assert!(log.len() > 300, "only {} ops succeeded", log.len());
        let mut replayed = Engine::open(s.clone(), &base).unwrap();
        replayed.replay(&log).unwrap();
        assert_eq!(dump(&mut replayed), dump(&mut e));
        // A replay on the wrong base diverges loudly instead of making something up.
        let mut fresh = Engine::format(s.clone(), 0, 0, 0o755).unwrap();
        assert_eq!(fresh.replay(&log), Err(Errno::EIO));
        // Past JOURNAL_BYTES the journal gives up: only a commit can save the changes.
        e.write(
            f,
            0,
            &bytes::Bytes::copy_from_slice(&vec![1u8; JOURNAL_BYTES + 1]),
        )
        .unwrap();
        assert!(e.unlogged());
        assert_eq!(e.take_journal(), None);
        e.commit().unwrap();
        assert!(!e.unlogged());
        assert_eq!(e.take_journal(), Some(Vec::new()));
    }

    /// Extended attributes and files unlinked while open replay too: the write to the open,
    /// unlinked file replays, and the inode is gone after the replay as after the last close.
    #[test]
    fn xattrs_and_unlinked_open_files_replay() {
        let (_d, s) = store();
        let mut e = Engine::format(s.clone(), 0, 0, 0o755).unwrap();
        let base = e.commit().unwrap();
        let f = file(&mut e, "f");
        e.set_xattr(f, "user.a", b"1", 0).unwrap();
        e.set_xattr(f, "user.b", b"2", 0).unwrap();
        e.remove_xattr(f, "user.a").unwrap();
        let g = file(&mut e, "g");
        e.opened(g);
        e.unlink(ROOT_INO, "g", false).unwrap();
        e.write(g, 0, &bytes::Bytes::copy_from_slice(b"still open"))
            .unwrap();
        assert_eq!(e.closed(g), Ok(true));
        let log = e.take_journal().unwrap();
        let mut replayed = Engine::open(s, &base).unwrap();
        replayed.replay(&log).unwrap();
        assert_eq!(dump(&mut replayed), dump(&mut e));
        assert_eq!(replayed.inode(g), Err(Errno::ENOENT));
        assert_eq!(replayed.xattrs(f).unwrap(), ["user.b"]);
    }

    /// A committed root is a snapshot: later changes do not show in it; an engine opened on it
    /// (a fork) diverges independently.
    #[test]
    fn snapshots_stay_as_they_were_and_forks_diverge() {
        let (_d, s) = store();
        let mut e = Engine::format(s.clone(), 0, 0, 0o755).unwrap();
        let ino = file(&mut e, "f");
        e.write(ino, 0, &bytes::Bytes::copy_from_slice(b"version one"))
            .unwrap();
        let snap = e.commit().unwrap();
        e.write(ino, 0, &bytes::Bytes::copy_from_slice(b"VERSION TWO!"))
            .unwrap();
        file(&mut e, "g");
        let current = e.commit().unwrap();
        let mut old = Engine::open(s.clone(), &snap).unwrap();
        assert_eq!(read_all(&mut old, ino), b"version one");
        assert!(old.lookup(ROOT_INO, "g").unwrap().is_none());
        // Fork the snapshot and change it: neither the snapshot nor current see it.
        let mut fork = Engine::open(s.clone(), &snap).unwrap();
        fork.write(ino, 8, &bytes::Bytes::copy_from_slice(b"FORK"))
            .unwrap();
        let forked = fork.commit().unwrap();
        assert_eq!(read_all(&mut fork, ino), b"version FORK");
        let mut again = Engine::open(s.clone(), &snap).unwrap();
        assert_eq!(read_all(&mut again, ino), b"version one");
        let mut cur = Engine::open(s.clone(), &current).unwrap();
        assert_eq!(read_all(&mut cur, ino), b"VERSION TWO!");
        assert_ne!(forked, current);
    }

    /// Whole blocks are written without a copy (slices of the request), and the request's
    /// frame is counted for as long as any of them holds it — also when most of them are gone
    /// (truncated) and the dirty data alone would look small; a commit lets it go.
    #[test]
    fn whole_blocks_keep_the_request_and_count_it() {
        let (_d, s) = store();
        let mut e = Engine::format(s, 0, 0, 0o755).unwrap();
        let ino = file(&mut e, "f");
        let frame = Bytes::from((0..16 * BLOCK + 10).map(|i| i as u8).collect::<Vec<u8>>());
        e.write(ino, 0, &frame).unwrap();
        assert_eq!(e.pinned_bytes(), frame.len());
        let mut buf = vec![0; BLOCK];
        let plan = e.read_plan(ino, 3 * BLOCK as u64, BLOCK).unwrap();
        match &plan.blocks[..] {
            [BlockSource::Here(b)] => assert_eq!(
                b.as_ptr(),
                frame[3 * BLOCK..].as_ptr(),
                "a whole block is a slice of the request"
            ),
            other => panic!("block 3 is not in memory: {other:?}"),
        }
        plan.fill(&*e.store.clone(), &mut buf).unwrap();
        assert!(buf[..] == frame[3 * BLOCK..4 * BLOCK]);
        // One block left of the sixteen: small dirty data, the whole frame still held.
        e.truncate(ino, BLOCK as u64).unwrap();
        assert_eq!(e.dirty_bytes(), BLOCK);
        assert_eq!(e.pinned_bytes(), frame.len());
        drop(frame);
        e.commit().unwrap();
        assert_eq!(e.pinned_bytes(), 0, "stored: the frame is let go");
        assert_eq!(
            read_all(&mut e, ino),
            (0..BLOCK).map(|i| i as u8).collect::<Vec<_>>()
        );
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
        e.write(a, 0, &bytes::Bytes::copy_from_slice(&data))
            .unwrap();
        e.commit().unwrap();
        let after_a = s.stats().unwrap();
        let b = file(&mut e, "b");
        e.write(b, 0, &bytes::Bytes::copy_from_slice(&data))
            .unwrap();
        e.commit().unwrap();
        let after_b = s.stats().unwrap();
        assert!(
            after_b.bytes - after_a.bytes < 64 * 1024,
            "a copy of 4 MiB added {} bytes",
            after_b.bytes - after_a.bytes
        );
        e.write(
            a,
            10 * BLOCK as u64 + 5,
            &bytes::Bytes::copy_from_slice(b"x"),
        )
        .unwrap();
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

    /// setxattr(2)'s rules and the per-inode bound; attributes are part of the committed inode.
    #[test]
    fn xattrs_follow_setxattr_rules_and_survive_commit() {
        let (_d, s) = store();
        let mut e = Engine::format(s.clone(), 0, 0, 0o755).unwrap();
        let ino = file(&mut e, "f");
        let (create, replace) = (libc::XATTR_CREATE as u32, libc::XATTR_REPLACE as u32);
        e.set_xattr(ino, "user.a", b"1", 0).unwrap();
        assert_eq!(e.set_xattr(ino, "user.a", b"2", create), Err(Errno::EEXIST));
        assert_eq!(
            e.set_xattr(ino, "user.b", b"2", replace),
            Err(Errno::ENODATA)
        );
        assert_eq!(e.set_xattr(ino, "user.a", b"2", 4), Err(Errno::EINVAL));
        assert_eq!(e.set_xattr(ino, "", b"2", 0), Err(Errno::ERANGE));
        let long = "u".repeat(XATTR_NAME_MAX + 1);
        assert_eq!(e.set_xattr(ino, &long, b"2", 0), Err(Errno::ERANGE));
        let huge = vec![0u8; XATTR_SIZE_MAX + 1];
        assert_eq!(e.set_xattr(ino, "user.h", &huge, 0), Err(Errno::E2BIG));
        // The bound counts every attribute's name and value once.
        let big = vec![7u8; 60_000];
        e.set_xattr(ino, "user.big", &big, 0).unwrap();
        assert_eq!(
            e.set_xattr(ino, "user.more", &[0; 6000], 0),
            Err(Errno::ENOSPC)
        );
        e.set_xattr(ino, "user.big", &big, replace).unwrap();
        let version = e.inode(ino).unwrap().version;
        e.set_xattr(ino, "user.a", b"one", replace).unwrap();
        assert!(
            e.inode(ino).unwrap().version > version,
            "a change moves the version"
        );
        let root = e.commit().unwrap();
        let mut e = Engine::open(s, &root).unwrap();
        assert_eq!(e.xattr(ino, "user.a").unwrap(), &b"one"[..]);
        assert_eq!(e.xattr(ino, "user.big").unwrap(), &big[..]);
        assert_eq!(e.xattrs(ino).unwrap(), ["user.a", "user.big"]);
        assert_eq!(e.xattr(ino, "user.b"), Err(Errno::ENODATA));
        e.remove_xattr(ino, "user.big").unwrap();
        assert_eq!(e.remove_xattr(ino, "user.big"), Err(Errno::ENODATA));
        assert_eq!(e.xattrs(ino).unwrap(), ["user.a"]);
    }

    /// An inode unlinked while open stays readable and writable until its last close.
    #[test]
    fn an_unlinked_open_file_lives_until_its_last_close() {
        let (_d, s) = store();
        let mut e = Engine::format(s, 0, 0, 0o755).unwrap();
        let ino = file(&mut e, "f");
        e.write(ino, 0, &bytes::Bytes::copy_from_slice(b"data"))
            .unwrap();
        e.opened(ino);
        e.opened(ino);
        e.unlink(ROOT_INO, "f", false).unwrap();
        assert!(e.lookup(ROOT_INO, "f").unwrap().is_none());
        assert_eq!(e.inode(ino).unwrap().nlink, 0);
        assert_eq!(e.link(ROOT_INO, "back", ino), Err(Errno::ENOENT));
        e.write(ino, 4, &bytes::Bytes::copy_from_slice(b"!"))
            .unwrap();
        assert_eq!(e.closed(ino), Ok(false));
        assert_eq!(read_all(&mut e, ino), b"data!");
        assert_eq!(e.closed(ino), Ok(true), "the last close frees it");
        assert_eq!(e.inode(ino), Err(Errno::ENOENT));
        // Not open: the last unlink frees it at once.
        let other = file(&mut e, "g");
        e.unlink(ROOT_INO, "g", false).unwrap();
        assert_eq!(e.inode(other), Err(Errno::ENOENT));
    }

    /// rename(2)'s errnos for incompatible targets; a rename onto another name of the same
    /// inode changes nothing.
    #[test]
    fn rename_refuses_incompatible_targets() {
        let (_d, s) = store();
        let mut e = Engine::format(s, 0, 0, 0o755).unwrap();
        let dir = |e: &mut Engine, name| {
            e.create(ROOT_INO, name, &NewNode::new(libc::S_IFDIR | 0o755, 0, 0))
                .unwrap()
        };
        let d = dir(&mut e, "d");
        let full = dir(&mut e, "full");
        e.create(full, "x", &NewNode::new(libc::S_IFREG, 0, 0))
            .unwrap();
        let f = file(&mut e, "f");
        assert_eq!(e.rename(ROOT_INO, "f", ROOT_INO, "d"), Err(Errno::EISDIR));
        assert_eq!(e.rename(ROOT_INO, "d", ROOT_INO, "f"), Err(Errno::ENOTDIR));
        assert_eq!(
            e.rename(ROOT_INO, "d", ROOT_INO, "full"),
            Err(Errno::ENOTEMPTY)
        );
        assert_eq!(e.rename(ROOT_INO, "f", f, "x"), Err(Errno::ENOTDIR));
        for bad in ["", ".", "..", "a/b"] {
            assert_eq!(
                e.rename(ROOT_INO, "f", d, bad),
                Err(Errno::EINVAL),
                "{bad:?}"
            );
        }
        e.link(ROOT_INO, "hard", f).unwrap();
        assert_eq!(e.rename(ROOT_INO, "f", ROOT_INO, "hard"), Ok(false));
        assert_eq!(e.lookup(ROOT_INO, "f").unwrap().map(|x| x.ino), Some(f));
        assert_eq!(e.inode(f).unwrap().nlink, 2);
        // An empty directory is replaced by a directory; the parent's link count follows.
        let links = e.inode(ROOT_INO).unwrap().nlink;
        assert_eq!(e.rename(ROOT_INO, "full", ROOT_INO, "d"), Ok(true));
        assert_eq!(e.inode(d), Err(Errno::ENOENT));
        assert_eq!(e.lookup(ROOT_INO, "d").unwrap().map(|x| x.ino), Some(full));
        assert_eq!(e.inode(ROOT_INO).unwrap().nlink, links - 1);
        assert_eq!(e.link(f, "x", f), Err(Errno::ENOTDIR));
    }

    /// A stored block that fails its hash reads as EIO, never as other bytes.
    #[test]
    fn a_corrupt_block_is_eio() {
        let (dir, s) = store();
        let mut e = Engine::format(s.clone(), 0, 0, 0o755).unwrap();
        let ino = file(&mut e, "f");
        let data = vec![0x5Au8; BLOCK];
        e.write(ino, 0, &bytes::Bytes::copy_from_slice(&data))
            .unwrap();
        e.write(
            ino,
            BLOCK as u64,
            &bytes::Bytes::copy_from_slice(&[0x11u8; 100]),
        )
        .unwrap();
        let root = e.commit().unwrap();
        drop(e);
        let id = ObjectId::of(&data);
        let (path, offset) = s.locate(&id).unwrap().unwrap();
        drop(s);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offset as usize + 3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let s = Arc::new(envoy_objstore::LocalStore::open(dir.path(), Default::default()).unwrap());
        let mut e = Engine::open(s, &root).unwrap();
        let mut buf = vec![0u8; 100];
        assert_eq!(e.read(ino, 0, &mut buf), Err(Errno::EIO));
        // The other block is still readable.
        assert_eq!(e.read(ino, BLOCK as u64, &mut buf), Ok(100));
        assert_eq!(buf, vec![0x11u8; 100]);
    }
}
