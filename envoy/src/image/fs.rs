//! One image served through the [`FileSystem`] trait: the engine behind a lock, Unix
//! permission checks, and the owner's write path that makes changes durable.
//!
//! The image's record `image/NAME` names its last committed root and, while there are changes
//! since, the head of its write-ahead log ([`super::wal`]). fsync, the clunk of a written file
//! and wstat-sync append the changes made since the last flush to the log — one small object
//! and one record update, durable on the object layer's replicas before the reply — and
//! concurrent syncs share one flush. Commits of a new root happen in batches, on the image's
//! committer thread: every [`COMMIT_INTERVAL`] while there are changes and whenever more than
//! [`COMMIT_BYTES`] of file data are dirty (writers go on meanwhile; past [`DIRTY_LIMIT`] they
//! wait, so memory stays bounded); and in the caller when the log grows past [`LOG_ENTRIES`]
//! entries or the changes are too large to log, and for a snapshot. A crash leaves the image at its
//! last commit plus its log, which opening replays. An image opened read-only (a snapshot)
//! refuses every change with EROFS.
//!
//! Walked names are a [`crate::nametree`] (renames and removals through the image reach every
//! fid naming the object); byte-range locks live in memory ([`super::locks`]); guests get the
//! `user.*` extended attributes only (the image enforces no ACLs, and has no `trusted.*` or
//! `security.*` of its own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_objstore::{ObjectId, StoreError};
use envoy_protocol::Qid;

use super::block::{BlockWrite, Pins};
use super::engine::{BLOCK, Engine, NewNode, ROOT_INO};
use super::inode::{Content, Inode};
use super::locks::{LockOwner, LockTable};
use super::objects::Objects;
use super::wal::{self, AttrChange, LogEntry};
use crate::nametree::Node;
use crate::vfs::{
    Attr, Creds, DirEntry, Errno, FileSystem, Lock, LockStatus, NodeKind, Result, SetAttr, SetTime,
    StatFs,
};

/// Dirty file data past which the batch committer commits (in the background: writers go on).
pub const COMMIT_BYTES: usize = 64 << 20;
/// Dirty file data (or request frames held by dirty blocks, if more) past which a writer
/// waits for a commit itself (memory stays bounded when writes outrun the store).
pub const DIRTY_LIMIT: usize = 3 * COMMIT_BYTES;
/// A commit stores the blocks dirtied while it stored the previous ones, without the owner's
/// lock, until no more than this is left for the part under the lock (or a few rounds pass).
const COMMIT_TAIL: usize = 4 << 20;
/// How long changes stay in the log (and memory) before a batch commit folds them into a root.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(5);
/// Log entries past which a sync commits instead (bounds the replay at open).
pub const LOG_ENTRIES: usize = 1024;
/// Dirty file data up to which a commit stores the blocks itself, with its nodes: one durable
/// write instead of two (a flush first, then the nodes), for the hashing of a few blocks under
/// the state lock.
const FLUSH_ALONE: usize = 4 * BLOCK;

/// The record naming an image's current root.
pub fn record_name(image: &str) -> String {
    format!("image/{image}")
}

struct State {
    engine: Engine,
    /// The root of the last commit (`None` until a new image's first).
    root: Option<ObjectId>,
    /// The write-ahead log's head (changes since `root` made durable by syncs).
    head: Option<ObjectId>,
    /// Entries in the log.
    log_len: usize,
    /// The record's version.
    version: u64,
    /// Changed since the last commit.
    dirty: bool,
    /// When the oldest change not committed was made.
    since: Option<Instant>,
}

impl State {
    /// The engine was changed: the image is dirty from now (if it was not already).
    fn changed(&mut self) {
        if !self.dirty {
            self.dirty = true;
            self.since = Some(Instant::now());
        }
    }
}

struct Shared {
    store: Arc<dyn Objects>,
    record: String,
    state: Mutex<State>,
    /// Held by whoever writes the record (a log flush or a commit), so that they happen one
    /// at a time and in order; taken before `state`, never after.
    flush: Mutex<()>,
    /// Wakes the committer thread early (dirty data past [`COMMIT_BYTES`]).
    kick: Option<std::sync::mpsc::SyncSender<()>>,
    /// The engine's count of request frames held by blocks, for writers cutting theirs.
    pins: Pins,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flushing(&self) -> MutexGuard<'_, ()> {
        self.flush.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commit now: the engine's changes into a new root, the record pointed at it.
    fn commit(&self) -> Result<()> {
        let _f = self.flushing();
        self.commit_flushing()
    }

    /// Commit, the flush lock held. The state lock is held only to fold the changes into a
    /// new root (the few blocks dirtied since the flushes, the tree nodes): the dirty blocks
    /// are stored before, the new objects and the record written after, without it —
    /// changes go on meanwhile, into the next commit.
    fn commit_flushing(&self) -> Result<()> {
        self.flush_blocks()?;
        // Writes went on meanwhile: store what they dirtied too, still without the lock.
        for _ in 0..3 {
            if self.lock().engine.dirty_bytes() <= COMMIT_TAIL {
                break;
            }
            self.flush_blocks()?;
        }
        let mut st = self.lock();
        if !st.dirty {
            return Ok(());
        }
        let (root, batch) = st.engine.prepare_commit()?;
        let (version, since) = (st.version, st.since);
        // Changes from now on make the image dirty again.
        st.dirty = false;
        st.since = None;
        drop(st);
        let stored = self.store.put_many(batch.clone());
        let was_stored = stored.is_ok();
        let outcome = stored.and_then(|()| {
            let (value, refs) = wal::record_value(&root, None);
            self.store.cas(&self.record, version, value, refs)
        });
        let mut st = self.lock();
        st.engine.commit_stored(batch, was_stored);
        match outcome.or_else(|e| self.recorded_anyway(&root).ok_or(e)) {
            // Changes made meanwhile keep the image dirty (for the next commit).
            Ok(version) => {
                recorded(&mut st, root, version);
                Ok(())
            }
            Err(e) => {
                tracing::error!(record = %self.record, error = %e, "image: cannot commit");
                // Still in the engine: the next sync or commit commits them (and the blocks).
                st.engine.lose_journal();
                st.dirty = true;
                st.since = since.or(st.since);
                Err(Errno::EIO)
            }
        }
    }

    /// After a failed record write: the record's version if it names `root` (and no log)
    /// anyway (the write happened, the answer was lost: a cluster's quorum, say).
    fn recorded_anyway(&self, root: &ObjectId) -> Option<u64> {
        match self.store.record(&self.record) {
            Ok(Some(rec))
                if super::catalog::root_of(&rec.value) == Ok(*root)
                    && wal::head_of(&rec.value).is_none() =>
            {
                Some(rec.version)
            }
            _ => None,
        }
    }

    /// Store the dirty blocks without the state lock (the flush lock held; blocks written in
    /// part are hashed here, whole ones were by their writers), unless they are few
    /// ([`FLUSH_ALONE`]): those the commit stores.
    fn flush_blocks(&self) -> Result<()> {
        let blocks = {
            let mut st = self.lock();
            if st.engine.dirty_bytes() <= FLUSH_ALONE {
                return Ok(());
            }
            st.engine.start_flush()
        };
        if !blocks.is_empty() {
            let (keys, objects): (Vec<_>, Vec<_>) = blocks
                .into_iter()
                .map(|(k, b)| (k, b.into_object()))
                .unzip();
            let ids: Vec<ObjectId> = objects.iter().map(|o| o.id()).collect();
            let stored = self.store.put_many(objects);
            let mut st = self.lock();
            match stored {
                Ok(()) => st
                    .engine
                    .finish_flush(keys.into_iter().zip(ids).collect())?,
                Err(e) => {
                    st.engine.abort_flush();
                    tracing::error!(record = %self.record, error = %e, "image: cannot store blocks");
                    return Err(Errno::EIO);
                }
            }
        }
        Ok(())
    }

    /// Make every change made so far durable: one log entry with the changes since the last
    /// flush (shared by every sync waiting meanwhile), or a commit when they cannot be logged.
    fn sync(&self) -> Result<()> {
        let _f = self.flushing();
        let mut st = self.lock();
        if !st.engine.unlogged() {
            // Nothing new, or a flush that finished while we waited took our changes.
            return Ok(());
        }
        let (Some(base), true) = (st.root, st.log_len < LOG_ENTRIES) else {
            drop(st);
            return self.commit_flushing();
        };
        let Some(ops) = st.engine.take_journal() else {
            drop(st);
            return self.commit_flushing();
        };
        let entry = LogEntry {
            base,
            prev: st.head,
            ops,
        };
        let version = st.version;
        // The entry is written without the state lock: reads and writes go on meanwhile
        // (their changes go to the next flush); the flush lock keeps record writers in order.
        drop(st);
        let (data, refs) = entry.encode();
        let written = self.store.put(data, refs).and_then(|head| {
            let (value, refs) = wal::record_value(&base, Some(&head));
            let version = self.store.cas(&self.record, version, value, refs)?;
            Ok((head, version))
        });
        let mut st = self.lock();
        match written {
            Ok((head, version)) => {
                st.head = Some(head);
                st.version = version;
                st.log_len += 1;
                Ok(())
            }
            Err(e) => {
                tracing::error!(record = %self.record, error = %e, "image: cannot log changes");
                // They are still in the engine: the next sync commits them.
                st.engine.lose_journal();
                Err(Errno::EIO)
            }
        }
    }

    /// The batch committer's work: commit if changes are older than `interval` or more than
    /// [`COMMIT_BYTES`] of data are dirty.
    fn commit_if_due(&self, interval: Duration) {
        let due = {
            let st = self.lock();
            st.dirty
                && (st.since.is_some_and(|t| t.elapsed() >= interval)
                    || st.engine.dirty_bytes() > COMMIT_BYTES)
        };
        if due && let Err(e) = self.commit() {
            tracing::error!(record = %self.record, errno = %e, "image: batch commit failed");
        }
    }
}

impl Drop for Shared {
    /// The last user is gone (envoyd stopping): commit what is left (nobody else can hold
    /// the flush lock now).
    fn drop(&mut self) {
        if let Err(e) = self.commit_flushing() {
            tracing::error!(record = %self.record, errno = %e, "image: final commit failed");
        }
    }
}

/// The image's record is at `version` and names `root`, with no log.
fn recorded(st: &mut State, root: ObjectId, version: u64) {
    st.root = Some(root);
    st.head = None;
    st.log_len = 0;
    st.version = version;
}

/// The engine's changes are in `root`, recorded as the image's record `version` (and none
/// came since: the state lock was held throughout).
fn committed(st: &mut State, root: ObjectId, version: u64) {
    recorded(st, root, version);
    st.dirty = false;
    st.since = None;
}

/// Read the log whose head is `head` back to its first entry: the entries, oldest first.
fn read_log(store: &dyn Objects, root: &ObjectId, head: ObjectId) -> Result<Vec<LogEntry>> {
    let mut entries = Vec::new();
    let mut next = Some(head);
    while let Some(id) = next {
        let data = store.get(&id).map_err(|e| {
            tracing::error!(log = %id, error = %e, "image: cannot read the write-ahead log");
            Errno::EIO
        })?;
        let entry = LogEntry::decode(data)
            .filter(|e| e.base == *root)
            .ok_or_else(|| {
                tracing::error!(log = %id, %root, "image: not a log entry of this root");
                Errno::EIO
            })?;
        next = entry.prev;
        entries.push(entry);
        if entries.len() > LOG_ENTRIES + 1 {
            tracing::error!(log = %head, "image: write-ahead log longer than it may be");
            return Err(Errno::EIO);
        }
    }
    entries.reverse();
    Ok(entries)
}

/// Starts the thread that commits an image's changes every [`COMMIT_INTERVAL`], and when
/// kicked (dirty data past [`COMMIT_BYTES`]), until the image is dropped; the sender that
/// kicks it, `None` if it could not start (then writers commit themselves).
fn spawn_committer(shared: Weak<Shared>) -> Option<std::sync::mpsc::SyncSender<()>> {
    use std::sync::mpsc::{RecvTimeoutError, sync_channel};
    let tick = COMMIT_INTERVAL / 5;
    let (kick, kicked) = sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("image-commit".into())
        .spawn(move || {
            loop {
                // Waits without holding the image: dropping it (and so the sender) ends this.
                match kicked.recv_timeout(tick) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.commit_if_due(COMMIT_INTERVAL);
            }
        });
    match spawned {
        Ok(_) => Some(kick),
        Err(e) => {
            tracing::error!(error = %e, "image: cannot start the batch committer; writers commit");
            None
        }
    }
}

/// An image served over 9P (see the module docs).
pub struct ImageFs {
    shared: Arc<Shared>,
    read_only: bool,
    /// The root of the walked names.
    tree: ImageNode,
    locks: Arc<LockTable>,
}

/// A walked location: an inode under a name in the tree of walked names (for `..` and names).
#[derive(Clone, Debug)]
pub struct ImageNode(Node<u64>);

impl ImageNode {
    fn ino(&self) -> u64 {
        *self.0.data()
    }

    /// Entry `name`, inode `ino`, of this directory.
    fn child(&self, ino: u64, name: &str) -> ImageNode {
        ImageNode(self.0.child_where(name, |i| *i == ino, || ino))
    }

    fn parent(&self) -> ImageNode {
        ImageNode(self.0.parent())
    }
}

/// An open file or directory of an image.
pub struct ImageFile {
    ino: u64,
    readable: bool,
    writable: bool,
    append: bool,
    written: AtomicBool,
    shared: Arc<Shared>,
    locks: LockOwner,
}

/// Whether open `flags` ask to read and to write.
fn access(flags: i32) -> (bool, bool) {
    let acc = flags & libc::O_ACCMODE;
    (
        acc == libc::O_RDONLY || acc == libc::O_RDWR,
        acc == libc::O_WRONLY || acc == libc::O_RDWR,
    )
}

impl ImageFile {
    /// A handle on `ino` with the access `flags` ask for; `written` if it changed the file
    /// already (created or truncated). The engine counts it open (`Engine::opened`).
    fn new(ino: u64, flags: i32, written: bool, fs: &ImageFs) -> ImageFile {
        let (readable, writable) = access(flags);
        ImageFile {
            ino,
            readable,
            writable,
            append: flags & libc::O_APPEND != 0,
            written: AtomicBool::new(written),
            shared: fs.shared.clone(),
            locks: fs.locks.owner(ino),
        }
    }
}

impl Drop for ImageFile {
    /// A written file is synced when it is closed (clunk): close after write is durable.
    /// An unlinked file goes at its last close.
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            match st.engine.closed(self.ino) {
                Ok(true) => st.changed(),
                Ok(false) => {}
                Err(e) => tracing::error!(ino = self.ino, errno = %e, "image: close failed"),
            }
        }
        if self.written.load(Ordering::Acquire)
            && let Err(e) = self.shared.sync()
        {
            tracing::error!(ino = self.ino, errno = %e, "image: sync at close failed");
        }
    }
}

fn qid(ino: u64, node: &Inode) -> Qid {
    let ty = match node.mode & libc::S_IFMT {
        libc::S_IFDIR => envoy_protocol::consts::QTDIR,
        libc::S_IFLNK => envoy_protocol::consts::QTSYMLINK,
        _ => 0,
    };
    Qid {
        ty,
        version: node.version as u32,
        path: ino,
    }
}

const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;

/// Unix permission check of `want` (R/W/X bits) on `node` for `creds`.
fn may(creds: &Creds, node: &Inode, want: u32) -> Result<()> {
    if creds.uid == 0 {
        // Root may do anything but execute a file nobody may execute.
        let is_dir = node.mode & libc::S_IFMT == libc::S_IFDIR;
        if want & X != 0 && !is_dir && node.mode & 0o111 == 0 {
            return Err(Errno::EACCES);
        }
        return Ok(());
    }
    let bits = if creds.uid == node.uid {
        node.mode >> 6
    } else if creds.in_group(node.gid) {
        node.mode >> 3
    } else {
        node.mode
    } & 7;
    if bits & want == want {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

fn time_of(t: SetTime) -> (u64, u32) {
    match t {
        SetTime::At(s, ns) => (s, ns as u32),
        SetTime::Now => {
            let d = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            (d.as_secs(), d.subsec_nanos())
        }
    }
}

impl ImageFs {
    /// Create image `name` (an empty root directory owned by `uid`/`gid`); fails with
    /// EEXIST if it exists.
    pub fn create(store: Arc<dyn Objects>, name: &str, uid: u32, gid: u32) -> Result<ImageFs> {
        let record = record_name(name);
        if store.record(&record).map_err(|_| Errno::EIO)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let engine = Engine::format(store.clone(), uid, gid, 0o755)?;
        let fs = ImageFs::serve(store, record, engine, None, 0, false);
        fs.shared.commit()?;
        Ok(fs)
    }

    /// Serve image `name` from its last commit and log (ENOENT if there is none).
    pub fn open(store: Arc<dyn Objects>, name: &str, read_only: bool) -> Result<ImageFs> {
        let record = record_name(name);
        let rec = store
            .record(&record)
            .map_err(|_| Errno::EIO)?
            .ok_or(Errno::ENOENT)?;
        let root = super::catalog::root_of(&rec.value)?;
        let mut engine = Engine::open(store.clone(), &root)?;
        let head = wal::head_of(&rec.value);
        let mut log_len = 0;
        if let Some(head) = head {
            let log = read_log(&*store, &root, head)?;
            log_len = log.len();
            for entry in &log {
                engine.replay(&entry.ops)?;
            }
            tracing::info!(%record, entries = log_len, "image: replayed the write-ahead log");
        }
        let fs = ImageFs::serve(store, record, engine, Some(root), rec.version, read_only);
        if head.is_some() {
            let mut st = fs.shared.lock();
            st.head = head;
            st.log_len = log_len;
            st.changed();
        }
        Ok(fs)
    }

    /// Serve `engine`, whose last commit is `root`, recorded as `record` at `version`.
    fn serve(
        store: Arc<dyn Objects>,
        record: String,
        engine: Engine,
        root: Option<ObjectId>,
        version: u64,
        read_only: bool,
    ) -> ImageFs {
        let shared = Arc::new_cyclic(|weak| Shared {
            kick: if read_only {
                None
            } else {
                spawn_committer(weak.clone())
            },
            store,
            record,
            pins: engine.pins(),
            state: Mutex::new(State {
                engine,
                dirty: root.is_none(),
                root,
                head: None,
                log_len: 0,
                version,
                since: None,
            }),
            flush: Mutex::new(()),
        });
        ImageFs {
            shared,
            read_only,
            tree: ImageNode(Node::new_root(ROOT_INO)),
            locks: Arc::default(),
        }
    }

    /// Take snapshot `n`: commit what is dirty, then record the root as `image/NAME@N`
    /// (EEXIST if N is taken). Costs one commit and one record, whatever the image's size.
    pub fn snapshot(&self, n: u64) -> Result<ObjectId> {
        self.writable()?;
        let sh = &*self.shared;
        let image = sh.record.trim_start_matches("image/");
        let snap = super::catalog::snapshot_record(image, n);
        let _f = sh.flushing();
        if sh.store.record(&snap).map_err(|_| Errno::EIO)?.is_some() {
            return Err(Errno::EEXIST);
        }
        sh.flush_blocks()?;
        let mut st = sh.lock();
        if !st.dirty {
            let root = st.root.ok_or(Errno::EIO)?;
            drop(st);
            super::catalog::record_snapshot(&*sh.store, image, n, &root)?;
            return Ok(root);
        }
        // Commit, and write the image's record and the snapshot's together (one sync on a
        // single store).
        let root = st.engine.commit()?;
        let (value, refs) = wal::record_value(&root, None);
        let writes = vec![
            (sh.record.clone(), st.version, value, refs),
            (snap.clone(), 0, Bytes::copy_from_slice(&root.0), vec![root]),
        ];
        match sh.store.cas_many(writes) {
            Ok(versions) => {
                committed(&mut st, root, versions[0]);
                Ok(root)
            }
            Err(e) => {
                // The root is stored; whether the image's record moved depends on the store.
                match sh.recorded_anyway(&root) {
                    Some(version) => committed(&mut st, root, version),
                    // Not recorded: the next sync commits again.
                    None => st.engine.lose_journal(),
                }
                match e {
                    StoreError::Conflict { name, .. } if name == snap => Err(Errno::EEXIST),
                    e => {
                        tracing::error!(record = %snap, error = %e, "image: cannot record the snapshot");
                        Err(Errno::EIO)
                    }
                }
            }
        }
    }

    /// Serve snapshot `n` of image `name`, read-only.
    pub fn open_snapshot(store: Arc<dyn Objects>, name: &str, n: u64) -> Result<ImageFs> {
        let root = super::catalog::snapshot_root(&*store, name, n)?;
        let engine = Engine::open(store.clone(), &root)?;
        let record = super::catalog::snapshot_record(name, n);
        Ok(ImageFs::serve(store, record, engine, Some(root), 1, true))
    }

    /// Make every change durable (what fsync does): a log entry, or a commit.
    pub fn sync(&self) -> Result<()> {
        self.shared.sync()
    }

    /// Commit now: fold the changes and the log into a new root.
    pub fn commit(&self) -> Result<()> {
        self.shared.commit()
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Run a change under the lock, marking the image dirty.
    fn change<T>(&self, f: impl FnOnce(&mut Engine) -> Result<T>) -> Result<T> {
        self.writable()?;
        let mut st = self.shared.lock();
        let out = f(&mut st.engine);
        if st.engine.unlogged() {
            st.changed();
        }
        let dirty = st.engine.dirty_bytes();
        // Frames held by blocks written without a copy count against the limit too.
        let held = dirty.max(st.engine.pinned_bytes());
        drop(st);
        if dirty > COMMIT_BYTES || held > DIRTY_LIMIT {
            match &self.shared.kick {
                // The committer stores it while writes go on; past the limit, wait for it.
                Some(kick) if held <= DIRTY_LIMIT => {
                    let _ = kick.try_send(());
                }
                _ => self.shared.commit()?,
            }
        }
        out
    }

    /// Create `name` in `dir` as `new` says; with `open`, the engine counts it open (for the
    /// handle a create returns).
    /// Change an extended attribute of `node` with `f`, once the name is one an image holds
    /// (EOPNOTSUPP), the node may carry `user.*` attributes (EPERM) and `creds` may write it.
    fn change_xattr(
        &self,
        creds: &Creds,
        node: &ImageNode,
        name: &str,
        f: impl FnOnce(&mut Engine) -> Result<()>,
    ) -> Result<()> {
        if !xattr_allowed(name) {
            self.writable()?;
            return Err(Errno::EOPNOTSUPP);
        }
        self.change(|e| {
            let n = e.inode(node.ino())?;
            if !holds_user_xattrs(&n) {
                return Err(Errno::EPERM);
            }
            may(creds, &n, W)?;
            f(e)
        })
    }

    fn make(
        &self,
        creds: &Creds,
        dir: &ImageNode,
        name: &str,
        new: NewNode<'_>,
        open: bool,
    ) -> Result<(u64, Inode)> {
        self.change(|e| {
            let parent = e.inode(dir.ino())?;
            may(creds, &parent, W | X)?;
            let ino = e.create(dir.ino(), name, &new)?;
            if open {
                e.opened(ino);
            }
            Ok((ino, e.inode(ino)?))
        })
    }
}

/// The group of a new node: the one the client asked for if the user may choose it (root, or
/// a member), else the user's own (as the export's credential switch decides).
fn new_gid(creds: &Creds, asked: Option<u32>) -> u32 {
    asked
        .filter(|g| creds.uid == 0 || creds.in_group(*g))
        .unwrap_or(creds.gid)
}

/// Only `user.*` attributes reach an image (see the module docs).
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.")
}

/// Whether `node` may carry `user.*` attributes: regular files and directories only (as
/// Linux: a symlink's or a device's permission bits say nothing about its owner's data).
fn holds_user_xattrs(node: &Inode) -> bool {
    matches!(node.mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

fn attr(ino: u64, n: &Inode) -> Attr {
    let t = |i: usize| (n.times[i].0, u64::from(n.times[i].1));
    Attr {
        qid: qid(ino, n),
        mode: n.mode,
        uid: n.uid,
        gid: n.gid,
        nlink: u64::from(n.nlink),
        rdev: n.rdev,
        size: n.size,
        blksize: BLOCK as u64,
        blocks: n.size.div_ceil(512),
        atime: t(0),
        mtime: t(1),
        ctime: t(2),
        btime: None,
    }
}

impl FileSystem for ImageFs {
    type Node = ImageNode;
    type File = ImageFile;

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn attach(&self, _creds: &Creds, aname: &str) -> Result<(ImageNode, Qid)> {
        if !aname.trim_matches('/').is_empty() {
            return Err(Errno::ENOENT);
        }
        let mut st = self.shared.lock();
        let root = st.engine.inode(ROOT_INO)?;
        Ok((self.tree.clone(), qid(ROOT_INO, &root)))
    }

    fn walk(
        &self,
        creds: &Creds,
        from: &ImageNode,
        names: &[String],
    ) -> (Vec<(ImageNode, Qid)>, Option<Errno>) {
        let mut st = self.shared.lock();
        let mut out = Vec::with_capacity(names.len());
        let mut cur = from.clone();
        for name in names {
            let step = (|| -> Result<ImageNode> {
                let here = st.engine.inode(cur.ino())?;
                if here.mode & libc::S_IFMT != libc::S_IFDIR {
                    return Err(Errno::ENOTDIR);
                }
                may(creds, &here, X)?;
                match name.as_str() {
                    "." => Ok(cur.clone()),
                    ".." => Ok(cur.parent()),
                    n if n.is_empty() || n.contains('/') => Err(Errno::EINVAL),
                    n => {
                        let e = st.engine.lookup(cur.ino(), n)?.ok_or(Errno::ENOENT)?;
                        Ok(cur.child(e.ino, n))
                    }
                }
            })();
            match step.and_then(|next| Ok((st.engine.inode(next.ino())?, next))) {
                Ok((node, next)) => {
                    out.push((next.clone(), qid(next.ino(), &node)));
                    cur = next;
                }
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    fn name(&self, node: &ImageNode) -> String {
        if node.0.is_root() {
            "/".to_owned()
        } else {
            node.0.name()
        }
    }

    fn getattr(&self, _creds: &Creds, node: &ImageNode, _file: Option<&ImageFile>) -> Result<Attr> {
        let mut st = self.shared.lock();
        let n = st.engine.inode(node.ino())?;
        Ok(attr(node.ino(), &n))
    }

    fn setattr(
        &self,
        creds: &Creds,
        node: &ImageNode,
        _file: Option<&ImageFile>,
        set: &SetAttr,
    ) -> Result<()> {
        let ino = node.ino();
        self.change(|e| {
            let n = e.inode(ino)?;
            let owner = creds.uid == 0 || creds.uid == n.uid;
            if set.mode.is_some() && !owner {
                return Err(Errno::EPERM);
            }
            if let Some(uid) = set.uid
                && uid != n.uid
                && creds.uid != 0
            {
                return Err(Errno::EPERM);
            }
            if let Some(gid) = set.gid
                && gid != n.gid
                && !(creds.uid == 0 || (owner && creds.in_group(gid)))
            {
                return Err(Errno::EPERM);
            }
            let explicit_time = matches!(set.atime, Some(SetTime::At(..)))
                || matches!(set.mtime, Some(SetTime::At(..)));
            if explicit_time && !owner {
                return Err(Errno::EPERM);
            }
            if (set.atime.is_some() || set.mtime.is_some()) && !owner {
                may(creds, &n, W)?;
            }
            if let Some(size) = set.size {
                if n.mode & libc::S_IFMT == libc::S_IFDIR {
                    return Err(Errno::EISDIR);
                }
                may(creds, &n, W)?;
                e.truncate(ino, size)?;
            }
            let change = AttrChange {
                mode: set.mode,
                uid: set.uid,
                gid: set.gid,
                atime: set.atime.map(time_of),
                mtime: set.mtime.map(time_of),
            };
            e.set_attr(ino, &change)?;
            Ok(())
        })
    }

    fn open(&self, creds: &Creds, node: &ImageNode, flags: i32) -> Result<(ImageFile, Qid)> {
        let ino = node.ino();
        let (readable, writable) = access(flags);
        let truncate = flags & libc::O_TRUNC != 0;
        if (writable || truncate) && self.read_only {
            return Err(Errno::EROFS);
        }
        let mut st = self.shared.lock();
        let n = st.engine.inode(ino)?;
        match n.mode & libc::S_IFMT {
            libc::S_IFDIR if writable || truncate => return Err(Errno::EISDIR),
            libc::S_IFDIR | libc::S_IFREG => {}
            libc::S_IFLNK => return Err(Errno::ELOOP),
            // Devices, fifos and sockets are names in an image, nothing to open behind them.
            _ => return Err(Errno::ENXIO),
        }
        let mut want = 0;
        if readable {
            want |= R;
        }
        if writable || truncate {
            want |= W;
        }
        may(creds, &n, want)?;
        if truncate && n.size > 0 {
            st.engine.truncate(ino, 0)?;
            st.changed();
        }
        let q = qid(ino, &st.engine.inode(ino)?);
        st.engine.opened(ino);
        Ok((ImageFile::new(ino, flags, truncate, self), q))
    }

    fn create(
        &self,
        creds: &Creds,
        dir: &ImageNode,
        name: &str,
        flags: i32,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<(ImageNode, ImageFile, Qid)> {
        let new = NewNode::new(
            libc::S_IFREG | (mode & 0o7777),
            creds.uid,
            new_gid(creds, gid),
        );
        let (ino, n) = self.make(creds, dir, name, new, true)?;
        let file = ImageFile::new(ino, flags, true, self);
        Ok((dir.child(ino, name), file, qid(ino, &n)))
    }

    fn mkdir(
        &self,
        creds: &Creds,
        dir: &ImageNode,
        name: &str,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<Qid> {
        let new = NewNode::new(
            libc::S_IFDIR | (mode & 0o7777),
            creds.uid,
            new_gid(creds, gid),
        );
        let (ino, n) = self.make(creds, dir, name, new, false)?;
        Ok(qid(ino, &n))
    }

    fn symlink(
        &self,
        creds: &Creds,
        dir: &ImageNode,
        name: &str,
        target: &str,
        gid: Option<u32>,
    ) -> Result<Qid> {
        let new = NewNode {
            target: Some(target),
            ..NewNode::new(0o777, creds.uid, new_gid(creds, gid))
        };
        let (ino, n) = self.make(creds, dir, name, new, false)?;
        Ok(qid(ino, &n))
    }

    fn mknod(
        &self,
        creds: &Creds,
        dir: &ImageNode,
        name: &str,
        kind: NodeKind,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<Qid> {
        let (ty, rdev) = match kind {
            NodeKind::Regular => (libc::S_IFREG, 0),
            NodeKind::Fifo => (libc::S_IFIFO, 0),
            NodeKind::Socket => (libc::S_IFSOCK, 0),
            NodeKind::CharDevice(d) => (libc::S_IFCHR, d),
            NodeKind::BlockDevice(d) => (libc::S_IFBLK, d),
        };
        let new = NewNode {
            rdev,
            ..NewNode::new(ty | (mode & 0o7777), creds.uid, new_gid(creds, gid))
        };
        let (ino, n) = self.make(creds, dir, name, new, false)?;
        Ok(qid(ino, &n))
    }

    fn link(&self, creds: &Creds, dir: &ImageNode, name: &str, target: &ImageNode) -> Result<()> {
        self.change(|e| {
            may(creds, &e.inode(dir.ino())?, W | X)?;
            e.link(dir.ino(), name, target.ino())
        })
    }

    fn readlink(&self, _creds: &Creds, node: &ImageNode) -> Result<String> {
        let mut st = self.shared.lock();
        match st.engine.inode(node.ino())?.content {
            Content::Target(t) => Ok(t),
            _ => Err(Errno::EINVAL),
        }
    }

    fn rename(
        &self,
        creds: &Creds,
        from_dir: &ImageNode,
        from_name: &str,
        to_dir: &ImageNode,
        to_name: &str,
    ) -> Result<()> {
        self.change(|e| {
            may(creds, &e.inode(from_dir.ino())?, W | X)?;
            may(creds, &e.inode(to_dir.ino())?, W | X)?;
            if e.rename(from_dir.ino(), from_name, to_dir.ino(), to_name)? {
                from_dir.0.move_child(from_name, &to_dir.0, to_name);
            }
            Ok(())
        })
    }

    fn rename_node(
        &self,
        creds: &Creds,
        node: &ImageNode,
        to_dir: Option<&ImageNode>,
        to_name: &str,
    ) -> Result<()> {
        if node.0.is_root() {
            return Err(Errno::EBUSY);
        }
        if node.0.is_gone() {
            return Err(Errno::ENOENT);
        }
        let from_dir = node.parent();
        let to = to_dir.cloned().unwrap_or_else(|| from_dir.clone());
        self.rename(creds, &from_dir, &node.0.name(), &to, to_name)
    }

    fn unlink(&self, creds: &Creds, dir: &ImageNode, name: &str, dir_only: bool) -> Result<()> {
        self.change(|e| {
            may(creds, &e.inode(dir.ino())?, W | X)?;
            e.unlink(dir.ino(), name, dir_only)?;
            dir.0.forget_child(name);
            Ok(())
        })
    }

    fn remove(&self, creds: &Creds, node: &ImageNode) -> Result<()> {
        if node.0.is_root() {
            return Err(Errno::EBUSY);
        }
        if node.0.is_gone() {
            return Err(Errno::ENOENT);
        }
        let is_dir =
            self.shared.lock().engine.inode(node.ino())?.mode & libc::S_IFMT == libc::S_IFDIR;
        self.unlink(creds, &node.parent(), &node.0.name(), is_dir)
    }

    fn read(&self, _creds: &Creds, file: &ImageFile, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if !file.readable {
            return Err(Errno::EBADF);
        }
        // Planned under the lock; the blocks are fetched and verified without it.
        let plan = self
            .shared
            .lock()
            .engine
            .read_plan(file.ino, offset, buf.len())?;
        plan.fill(&*self.shared.store, buf)
    }

    fn write(&self, _creds: &Creds, file: &ImageFile, offset: u64, data: &Bytes) -> Result<usize> {
        if !file.writable {
            return Err(Errno::EBADF);
        }
        let n = if file.append {
            // Where the data goes is known only under the lock: cut and hashed there.
            self.change(|e| {
                let at = e.inode(file.ino)?.size;
                e.write(file.ino, at, data)
            })?
        } else {
            // Hashing is most of a write's cost: done before the lock, in parallel with the
            // other writers (see `super::block`).
            self.writable()?;
            let w = BlockWrite::cut(offset, data, &self.shared.pins);
            self.change(|e| e.write_cut(file.ino, &w))?
        };
        file.written.store(true, Ordering::Release);
        Ok(n)
    }

    fn readdir(
        &self,
        _creds: &Creds,
        dir: &ImageFile,
        cookie: u64,
        sink: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        let mut st = self.shared.lock();
        let me = st.engine.inode(dir.ino)?;
        // "." and ".." first (cookies 0 and 1), then the entries by key.
        if cookie == 0
            && !sink(DirEntry {
                qid: qid(dir.ino, &me),
                next: 1,
                kind: libc::DT_DIR,
                name: ".".into(),
            })
        {
            return Ok(());
        }
        if cookie <= 1
            && !sink(DirEntry {
                qid: Qid {
                    ty: envoy_protocol::consts::QTDIR,
                    version: 0,
                    path: dir.ino,
                },
                next: 2,
                kind: libc::DT_DIR,
                name: "..".into(),
            })
        {
            return Ok(());
        }
        let mut entries = Vec::new();
        st.engine.readdir(dir.ino, cookie.max(2), |e| {
            entries.push(e.clone());
            entries.len() < 512
        })?;
        for e in entries {
            let kind = match e.kind {
                libc::S_IFDIR => libc::DT_DIR,
                libc::S_IFLNK => libc::DT_LNK,
                libc::S_IFREG => libc::DT_REG,
                libc::S_IFIFO => libc::DT_FIFO,
                libc::S_IFSOCK => libc::DT_SOCK,
                libc::S_IFCHR => libc::DT_CHR,
                libc::S_IFBLK => libc::DT_BLK,
                _ => libc::DT_UNKNOWN,
            };
            let q = Qid {
                ty: if e.kind == libc::S_IFDIR {
                    envoy_protocol::consts::QTDIR
                } else if e.kind == libc::S_IFLNK {
                    envoy_protocol::consts::QTSYMLINK
                } else {
                    0
                },
                version: 0,
                path: e.ino,
            };
            let next = Engine::cookie_of(&e.name) + 1;
            if !sink(DirEntry {
                qid: q,
                next,
                kind,
                name: e.name,
            }) {
                break;
            }
        }
        Ok(())
    }

    fn fsync(&self, _creds: &Creds, _file: &ImageFile, _datasync: bool) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.sync()
    }

    /// Whole blocks: a write that covers them is stored without a copy, hashed by its writer.
    fn io_unit(&self) -> u32 {
        BLOCK as u32
    }

    fn statfs(&self, _creds: &Creds, _node: &ImageNode) -> Result<StatFs> {
        Ok(ImageFs::statfs_figures())
    }

    fn getxattr(&self, creds: &Creds, node: &ImageNode, name: &str) -> Result<Vec<u8>> {
        if !xattr_allowed(name) {
            return Err(Errno::ENODATA);
        }
        let mut st = self.shared.lock();
        let n = st.engine.inode(node.ino())?;
        if !holds_user_xattrs(&n) {
            return Err(Errno::ENODATA);
        }
        may(creds, &n, R)?;
        Ok(st.engine.xattr(node.ino(), name)?.to_vec())
    }

    fn listxattr(&self, _creds: &Creds, node: &ImageNode) -> Result<Vec<u8>> {
        let mut st = self.shared.lock();
        let mut out = Vec::new();
        for name in st.engine.xattrs(node.ino())? {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    fn setxattr(
        &self,
        creds: &Creds,
        node: &ImageNode,
        name: &str,
        value: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.change_xattr(creds, node, name, |e| {
            e.set_xattr(node.ino(), name, value, flags)
        })
    }

    fn removexattr(&self, creds: &Creds, node: &ImageNode, name: &str) -> Result<()> {
        self.change_xattr(creds, node, name, |e| e.remove_xattr(node.ino(), name))
    }

    fn lock(&self, _creds: &Creds, file: &ImageFile, lock: &Lock) -> Result<LockStatus> {
        // As fcntl(2): a read lock needs a file open for reading, a write lock one for writing.
        let allowed = match lock.kind {
            crate::vfs::LockKind::Read => file.readable,
            crate::vfs::LockKind::Write => file.writable,
            crate::vfs::LockKind::Unlock => true,
        };
        if !allowed {
            return Err(Errno::EBADF);
        }
        file.locks.set(lock)
    }

    fn getlock(&self, _creds: &Creds, file: &ImageFile, lock: &Lock) -> Result<Lock> {
        file.locks.conflict(lock)
    }
}

impl ImageFs {
    /// What statfs reports (the object layer's capacity is not per image: generous figures).
    pub fn statfs_figures() -> StatFs {
        StatFs {
            fs_type: 0x0102_1997, // V9FS_MAGIC
            bsize: BLOCK as u32,
            blocks: 1 << 30,
            bfree: 1 << 29,
            bavail: 1 << 29,
            files: 1 << 32,
            ffree: 1 << 31,
            fsid: 0,
            namelen: 255,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_store as store;
    use envoy_objstore::PutObject;

    fn root(fs: &ImageFs) -> ImageNode {
        fs.attach(&Creds::root(), "").unwrap().0
    }

    fn write_file(fs: &ImageFs, name: &str, data: &[u8]) -> ImageFile {
        let (_, f, _) = fs
            .create(&Creds::root(), &root(fs), name, libc::O_RDWR, 0o644, None)
            .unwrap();
        fs.write(&Creds::root(), &f, 0, &bytes::Bytes::copy_from_slice(data))
            .unwrap();
        f
    }

    fn read_file(fs: &ImageFs, name: &str) -> Vec<u8> {
        let (nodes, err) = fs.walk(&Creds::root(), &root(fs), &[name.to_owned()]);
        assert_eq!(err, None, "walk {name}");
        let (f, _) = fs
            .open(&Creds::root(), &nodes[0].0, libc::O_RDONLY)
            .unwrap();
        let mut buf = vec![0; 1 << 20];
        let n = fs.read(&Creds::root(), &f, 0, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// The owner dies without committing (a crash: no final commit runs).
    fn crash(fs: ImageFs) {
        std::mem::forget(fs);
    }

    /// A sync writes one log entry, not a commit; a crash after it loses nothing synced, and
    /// the reopened image replays the log (and keeps extending it).
    #[test]
    fn synced_changes_survive_a_crash_through_the_log() {
        let (_d, s) = store();
        let fs = ImageFs::create(s.clone(), "vm", 0, 0).unwrap();
        let committed = s.record("image/vm").unwrap().unwrap();
        let f = write_file(&fs, "a", b"first");
        fs.fsync(&Creds::root(), &f, false).unwrap();
        let rec = s.record("image/vm").unwrap().unwrap();
        assert_eq!(rec.value.len(), 64, "the record names a log head");
        assert_eq!(
            rec.value[..32],
            committed.value[..],
            "and the same root: no commit"
        );
        // A second sync with nothing new writes nothing.
        fs.fsync(&Creds::root(), &f, false).unwrap();
        assert_eq!(s.record("image/vm").unwrap().unwrap().version, rec.version);
        fs.write(
            &Creds::root(),
            &f,
            5,
            &bytes::Bytes::copy_from_slice(b" second"),
        )
        .unwrap();
        fs.mkdir(&Creds::root(), &root(&fs), "dir", 0o700, None)
            .unwrap();
        fs.sync().unwrap();
        // Written after the last sync: may be lost, and is.
        fs.write(
            &Creds::root(),
            &f,
            0,
            &bytes::Bytes::copy_from_slice(b"FIRST"),
        )
        .unwrap();
        std::mem::forget(f); // (closing it would sync)
        crash(fs);

        let fs = ImageFs::open(s.clone(), "vm", false).unwrap();
        assert_eq!(read_file(&fs, "a"), b"first second");
        let (nodes, err) = fs.walk(&Creds::root(), &root(&fs), &["dir".into()]);
        assert_eq!(err, None);
        let dir = fs.getattr(&Creds::root(), &nodes[0].0, None).unwrap();
        assert_eq!(dir.mode, libc::S_IFDIR | 0o700);
        // The replayed image goes on logging on top of the same chain.
        let g = write_file(&fs, "b", b"after replay");
        drop(g);
        crash(fs);
        let fs = ImageFs::open(s.clone(), "vm", false).unwrap();
        assert_eq!(read_file(&fs, "b"), b"after replay");
        assert_eq!(read_file(&fs, "a"), b"first second");
        // A commit folds the log into a new root; the record drops the head.
        fs.commit().unwrap();
        let rec = s.record("image/vm").unwrap().unwrap();
        assert_eq!(rec.value.len(), 32);
        assert_ne!(rec.value[..], committed.value[..32]);
        crash(fs);
        let fs = ImageFs::open(s, "vm", false).unwrap();
        assert_eq!(read_file(&fs, "b"), b"after replay");
    }

    /// Many threads writing and syncing at once: every sync returns only once its own
    /// writes are durable, and the flushes are shared (fewer log entries than syncs).
    #[test]
    fn concurrent_syncs_share_flushes_and_lose_nothing() {
        let (_d, s) = store();
        let fs = Arc::new(ImageFs::create(s.clone(), "vm", 0, 0).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let fs = fs.clone();
                std::thread::spawn(move || {
                    let f = write_file(&fs, &format!("t{t}"), b"");
                    for i in 0..25u64 {
                        let piece = format!("{t}:{i};");
                        let size = {
                            let mut st = fs.shared.lock();
                            st.engine.inode(f.ino).unwrap().size
                        };
                        fs.write(
                            &Creds::root(),
                            &f,
                            size,
                            &bytes::Bytes::copy_from_slice(piece.as_bytes()),
                        )
                        .unwrap();
                        fs.fsync(&Creds::root(), &f, false).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let entries = fs.shared.lock().log_len;
        assert!(entries <= 200, "{entries} entries for 200 syncs");
        let fs = Arc::into_inner(fs).unwrap();
        crash(fs);
        let fs = ImageFs::open(s, "vm", false).unwrap();
        for t in 0..8 {
            let want: String = (0..25).map(|i| format!("{t}:{i};")).collect();
            assert_eq!(read_file(&fs, &format!("t{t}")), want.as_bytes());
        }
    }

    /// A store whose `put_many` waits until the gate opens (a slow store, held still).
    struct Gated {
        inner: Arc<envoy_objstore::LocalStore>,
        open: Mutex<bool>,
        opened: std::sync::Condvar,
    }

    impl Objects for Gated {
        fn put(
            &self,
            data: Bytes,
            refs: Vec<ObjectId>,
        ) -> std::result::Result<ObjectId, StoreError> {
            Objects::put(&*self.inner, data, refs)
        }
        fn put_many(&self, objects: Vec<PutObject>) -> std::result::Result<(), StoreError> {
            let g = self.open.lock().unwrap();
            drop(self.opened.wait_while(g, |open| !*open).unwrap());
            Objects::put_many(&*self.inner, objects)
        }
        fn get(&self, id: &ObjectId) -> std::result::Result<Bytes, StoreError> {
            Objects::get(&*self.inner, id)
        }
        fn size(&self, id: &ObjectId) -> std::result::Result<u64, StoreError> {
            Objects::size(&*self.inner, id)
        }
        fn record(
            &self,
            name: &str,
        ) -> std::result::Result<Option<envoy_objstore::Record>, StoreError> {
            Objects::record(&*self.inner, name)
        }
        fn records(&self) -> std::result::Result<Vec<(String, Bytes)>, StoreError> {
            Objects::records(&*self.inner)
        }
        fn cas_many(
            &self,
            writes: Vec<crate::image::objects::RecordWrite>,
        ) -> std::result::Result<Vec<u64>, StoreError> {
            self.inner.cas_many(writes)
        }
        fn delete_record(&self, name: &str, expected: u64) -> std::result::Result<u64, StoreError> {
            Objects::delete_record(&*self.inner, name, expected)
        }
    }

    /// Writes past COMMIT_BYTES are committed by the committer thread while the writer goes
    /// on (the store held still proves it: a writer committing itself would wait for it);
    /// past DIRTY_LIMIT the writer waits; what was committed survives a crash without a sync.
    #[test]
    fn dirty_data_past_the_limit_commits_in_the_background() {
        let (_d, s) = store();
        let gated = Arc::new(Gated {
            inner: s.clone(),
            open: Mutex::new(true),
            opened: std::sync::Condvar::new(),
        });
        let fs = Arc::new(ImageFs::create(gated.clone(), "vm", 0, 0).unwrap());
        let first = s.record("image/vm").unwrap().unwrap();
        *gated.open.lock().unwrap() = false;
        // Whatever happens, the store opens again (a failed assertion must not hang).
        struct Opens(Arc<Gated>);
        impl Drop for Opens {
            fn drop(&mut self) {
                *self.0.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
                self.0.opened.notify_all();
            }
        }
        let opens = Opens(gated.clone());
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        let f = Arc::new(write_file(&fs, "big", &chunk));
        let write = |from: usize, to: usize| {
            let (fs, f, chunk) = (fs.clone(), f.clone(), chunk.clone());
            let (done_tx, done) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for i in from..to {
                    fs.write(
                        &Creds::root(),
                        &f,
                        (i << 20) as u64,
                        &bytes::Bytes::copy_from_slice(&chunk),
                    )
                    .unwrap();
                }
                // The image's handles go before the answer (the test then takes the image).
                drop((fs, f));
                let _ = done_tx.send(());
            });
            done
        };
        let mib = COMMIT_BYTES >> 20;
        write(1, mib + 8)
            .recv_timeout(Duration::from_secs(20))
            .expect("a writer past COMMIT_BYTES waited for the commit");
        // The committer holds what was dirty at its kick: the limit counts what came after.
        let blocked = write(mib + 8, mib + (DIRTY_LIMIT >> 20) + 16);
        assert!(
            blocked.recv_timeout(Duration::from_millis(500)).is_err(),
            "writers past DIRTY_LIMIT went on while nothing could be stored"
        );
        drop(opens);
        blocked
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer did not go on once the store did");
        assert!(s.record("image/vm").unwrap().unwrap().version > first.version);
        drop(f);
        // The committer holds the image while it commits: wait for it to let go (bounded).
        let mut fs = fs;
        let deadline = Instant::now() + Duration::from_secs(10);
        let fs = loop {
            match Arc::try_unwrap(fs) {
                Ok(fs) => break fs,
                Err(again) if Instant::now() < deadline => {
                    fs = again;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => panic!("the image is still held after 10 s"),
            }
        };
        crash(fs);
        let fs = ImageFs::open(s, "vm", false).unwrap();
        let node = fs.walk(&Creds::root(), &root(&fs), &["big".to_owned()]).0;
        let size = fs.getattr(&Creds::root(), &node[0].0, None).unwrap().size;
        assert!(size > COMMIT_BYTES as u64, "committed only {size} bytes");
        assert_eq!(read_file(&fs, "big"), chunk, "the first MiB");
    }

    /// Large changes are committed, not logged; the log stays bounded by LOG_ENTRIES.
    #[test]
    fn big_changes_commit_and_the_log_is_bounded() {
        let (_d, s) = store();
        let fs = ImageFs::create(s.clone(), "vm", 0, 0).unwrap();
        let f = write_file(&fs, "big", &vec![3u8; 2 << 20]);
        fs.fsync(&Creds::root(), &f, false).unwrap();
        assert_eq!(s.record("image/vm").unwrap().unwrap().value.len(), 32);
        for i in 0..LOG_ENTRIES + 3 {
            fs.write(
                &Creds::root(),
                &f,
                i as u64,
                &bytes::Bytes::copy_from_slice(b"x"),
            )
            .unwrap();
            fs.fsync(&Creds::root(), &f, false).unwrap();
            assert!(fs.shared.lock().log_len <= LOG_ENTRIES);
        }
        drop(f);
        crash(fs);
        let fs = ImageFs::open(s, "vm", false).unwrap();
        let data = read_file(&fs, "big");
        assert_eq!(data.len(), 1 << 20, "read_file reads 1 MiB");
        assert!(data[..LOG_ENTRIES + 3].iter().all(|&b| b == b'x'));
        assert_eq!(data[LOG_ENTRIES + 3], 3);
    }
}
