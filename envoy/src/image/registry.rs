//! One owner per image inside envoyd: the open [`ImageFs`] of every image and snapshot that is
//! served or administered.
//!
//! Everything that touches an image's live state goes through its one owner — `--image`, the
//! namespace of `--images` (and its attach names) and the admin operations of `envoy-xl
//! image` — so a snapshot taken from the command line commits what 9P clients wrote but did
//! not sync, and an image cannot be deleted while a client holds a file in it: whoever uses a
//! tree holds its `Arc`, and a tree the registry alone holds is idle. Idle owners are closed
//! (committing anything dirty) before admin operations, so those start from the record, not
//! from an old view.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use envoy_objstore::{ObjectId, StoreError};
use nix::errno::Errno;

use super::catalog::{self, ImageInfo, valid_name};
use super::fs::{ImageFs, record_name};
use super::objects::Objects;
use crate::vfs::FileSystem;

/// An image's current state (`snapshot: None`) or one of its snapshots: `NAME` or `NAME@N`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tree {
    /// The image.
    pub image: String,
    /// The snapshot, if not the current state.
    pub snapshot: Option<u64>,
}

impl Tree {
    /// The current state of `image`.
    pub fn current(image: &str) -> Tree {
        Tree {
            image: image.to_owned(),
            snapshot: None,
        }
    }

    /// Snapshot `n` of `image`.
    pub fn snapshot(image: &str, n: u64) -> Tree {
        Tree {
            image: image.to_owned(),
            snapshot: Some(n),
        }
    }

    /// The record naming its root.
    pub fn record(&self) -> String {
        match self.snapshot {
            None => record_name(&self.image),
            Some(n) => catalog::snapshot_record(&self.image, n),
        }
    }
}

impl std::fmt::Display for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.snapshot {
            None => write!(f, "{}", self.image),
            Some(n) => write!(f, "{}@{n}", self.image),
        }
    }
}

impl std::str::FromStr for Tree {
    type Err = Errno;

    /// `NAME` or `NAME@N` (EINVAL otherwise).
    fn from_str(s: &str) -> Result<Tree, Errno> {
        let (image, snapshot) = match s.split_once('@') {
            None => (s, None),
            Some((image, n)) => (image, Some(n.parse().map_err(|_| Errno::EINVAL)?)),
        };
        if !valid_name(image) {
            return Err(Errno::EINVAL);
        }
        Ok(Tree {
            image: image.to_owned(),
            snapshot,
        })
    }
}

/// The registry (see the module docs).
pub struct Images {
    store: Arc<dyn Objects>,
    open: Mutex<HashMap<Tree, Arc<ImageFs>>>,
}

fn eio(e: StoreError) -> Errno {
    tracing::error!(error = %e, "images: object layer failed");
    Errno::EIO
}

/// Whether anyone but the registry holds `fs`.
fn in_use(fs: &Arc<ImageFs>) -> bool {
    Arc::strong_count(fs) > 1
}

impl Images {
    /// The images of `store`, none open yet.
    pub fn new(store: Arc<dyn Objects>) -> Images {
        Images {
            store,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The object layer they live in.
    pub fn store(&self) -> &Arc<dyn Objects> {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Tree, Arc<ImageFs>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Close the owners nobody uses (a dirty one commits as it goes).
    fn close_idle(open: &mut HashMap<Tree, Arc<ImageFs>>) {
        open.retain(|_, fs| in_use(fs));
    }

    /// The owner of `tree`: opened on first use (a snapshot read-only), shared after. ENOENT
    /// if the image or snapshot does not exist.
    pub fn open(&self, tree: &Tree) -> Result<Arc<ImageFs>, Errno> {
        if !valid_name(&tree.image) {
            return Err(Errno::ENOENT);
        }
        let mut open = self.lock();
        if let Some(fs) = open.get(tree) {
            return Ok(fs.clone());
        }
        let fs = Arc::new(match tree.snapshot {
            None => ImageFs::open(self.store.clone(), &tree.image, false)?,
            Some(n) => ImageFs::open_snapshot(self.store.clone(), &tree.image, n)?,
        });
        open.insert(tree.clone(), fs.clone());
        Ok(fs)
    }

    /// Create image `name`: an empty root directory owned by `uid`/`gid`, mode 0755. EEXIST if
    /// it exists, EINVAL for a name [`valid_name`] refuses.
    pub fn create(&self, name: &str, uid: u32, gid: u32) -> Result<Arc<ImageFs>, Errno> {
        if !valid_name(name) {
            return Err(Errno::EINVAL);
        }
        let mut open = self.lock();
        Self::close_idle(&mut open);
        let fs = Arc::new(ImageFs::create(self.store.clone(), name, uid, gid)?);
        open.insert(Tree::current(name), fs.clone());
        Ok(fs)
    }

    /// Commit the open images — every one, or only `image` — (their write-ahead logs folded
    /// into new roots), so that the records, which list, du and check read, name everything
    /// written so far.
    pub fn settle(&self, image: Option<&str>) -> Result<(), Errno> {
        let open: Vec<Arc<ImageFs>> = self
            .lock()
            .iter()
            .filter(|(t, fs)| {
                t.snapshot.is_none() && image.is_none_or(|i| t.image == i) && !fs.read_only()
            })
            .map(|(_, fs)| fs.clone())
            .collect();
        open.iter().try_for_each(|fs| fs.commit())
    }

    /// Every image and its snapshots, from the records.
    pub fn catalog(&self) -> Result<Vec<ImageInfo>, Errno> {
        Ok(catalog::images(&self.store.records().map_err(eio)?))
    }

    /// One image and its snapshots (ENOENT if it does not exist).
    pub fn info(&self, name: &str) -> Result<ImageInfo, Errno> {
        self.catalog()?
            .into_iter()
            .find(|i| i.name == name)
            .ok_or(Errno::ENOENT)
    }

    /// Take snapshot `n` of image `name` — the next number after its highest if `None` —
    /// through its owner, so that what clients wrote and did not sync is in it. Returns the
    /// number and the root. EEXIST if `n` is taken, ENOENT if the image does not exist.
    pub fn snapshot(&self, name: &str, n: Option<u64>) -> Result<(u64, ObjectId), Errno> {
        {
            let mut open = self.lock();
            Self::close_idle(&mut open);
        }
        let fs = self.open(&Tree::current(name))?;
        // A number chosen here can be taken meanwhile (through the namespace): try the next.
        for _ in 0..16 {
            let number = match n {
                Some(n) => n,
                None => self
                    .info(name)?
                    .snapshots
                    .keys()
                    .next_back()
                    .map_or(1, |last| last + 1),
            };
            match fs.snapshot(number) {
                Err(Errno::EEXIST) if n.is_none() => continue,
                Err(e) => return Err(e),
                Ok(root) => return Ok((number, root)),
            }
        }
        Err(Errno::EEXIST)
    }

    /// Fork snapshot `n` of `name` as the new image `new` (ENOENT if the snapshot does not
    /// exist, EEXIST if `new` does, EINVAL for a bad name).
    pub fn fork(&self, name: &str, n: u64, new: &str) -> Result<(), Errno> {
        catalog::fork(&*self.store, name, n, new)
    }

    /// Delete `tree`: an image with every snapshot, or one snapshot. Its records go (deleted
    /// on every replica); the objects only it reached are left to GC. EBUSY if any of the
    /// trees going is in use (a 9P client holds a file in it, or envoyd serves it with
    /// `--image`); ENOENT if it does not exist. Returns the trees deleted.
    pub fn remove(&self, tree: &Tree) -> Result<Vec<Tree>, Errno> {
        let mut open = self.lock();
        let info = self.info(&tree.image)?;
        let going: Vec<Tree> = match tree.snapshot {
            Some(n) if !info.snapshots.contains_key(&n) => return Err(Errno::ENOENT),
            Some(_) => vec![tree.clone()],
            None => info
                .snapshots
                .keys()
                .map(|n| Tree::snapshot(&tree.image, *n))
                .chain([Tree::current(&tree.image)])
                .collect(),
        };
        if going.iter().any(|t| open.get(t).is_some_and(in_use)) {
            return Err(Errno::EBUSY);
        }
        // Close them, committing a dirty current state, so its record's version is final.
        for t in &going {
            if let Some(fs) = open.remove(t)
                && !fs.read_only()
            {
                fs.commit()?;
            }
        }
        // Snapshots first: an interrupted delete leaves an image with fewer snapshots.
        for t in &going {
            let name = t.record();
            let Some(rec) = self.store.record(&name).map_err(eio)? else {
                continue;
            };
            match self.store.delete_record(&name, rec.version) {
                Ok(_) => {}
                // Written meanwhile: someone else (another host?) serves it.
                Err(StoreError::Conflict { .. }) => return Err(Errno::EBUSY),
                Err(e) => return Err(eio(e)),
            }
        }
        Ok(going)
    }
}
