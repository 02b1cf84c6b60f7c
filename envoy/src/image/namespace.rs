//! The 2006 namespace over the image catalog: one tree in which every image is a directory.
//!
//! ```text
//! /                      every image (and directories made for new ones)
//! /NAME/current/...      the live image, read-write
//! /NAME/N/...            snapshot N, read-only (EROFS)
//! /NAME/snapshot         a symlink to the latest snapshot's number
//! ```
//!
//! From a shell: `ln -s current N` in `/NAME` takes snapshot N; `mkdir /NEW` then
//! `ln -s /img/NAME/N /NEW/current` forks snapshot N of NAME as NEW (the target's last two
//! components name the image and the snapshot, so any mount point works). Every other change
//! to an image directory — its reserved names above all — is refused with EPERM; forking a
//! missing snapshot is ENOENT. Below `current` and `N` the image's own [`ImageFs`] serves —
//! its one owner in envoyd's [`Images`] registry, shared with the admin operations.
//!
//! An attach name roots a session inside one tree instead of at `/`: `NAME` or
//! `NAME/current` (the live image), `NAME/N` (a snapshot, read-only); an unknown one is
//! ENOENT. Such a session stays inside: `..` at its root is its root.

use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use envoy_protocol::Qid;

use super::catalog::{self, valid_name};
use super::fs::{ImageFile, ImageFs, ImageNode};
use super::registry::{Images, Tree};
use crate::vfs::{Attr, Creds, DirEntry, Errno, FileSystem, NodeKind, Result, SetAttr, StatFs};

/// A location inside an image's current state or a snapshot.
#[derive(Clone)]
pub struct Inside {
    tree: Tree,
    /// The tree's owner, held: a tree with a fid in it is in use (it cannot be deleted).
    fs: Arc<ImageFs>,
    node: ImageNode,
    /// The session was attached to this tree: `..` at its root stays there.
    confined: bool,
}

impl std::fmt::Debug for Inside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inside")
            .field("tree", &self.tree)
            .field("node", &self.node)
            .field("confined", &self.confined)
            .finish()
    }
}

impl Inside {
    /// The same tree at `node`.
    fn at(&self, node: ImageNode) -> NsNode {
        NsNode::In(Inside {
            node,
            ..self.clone()
        })
    }

    /// Whether both are in the same tree.
    fn same_tree(&self, other: &Inside) -> bool {
        Arc::ptr_eq(&self.fs, &other.fs)
    }
}

/// A location in the namespace.
#[derive(Clone, Debug)]
pub enum NsNode {
    /// `/`.
    Top,
    /// `/NAME`.
    ImageDir(String),
    /// `/NAME/snapshot`.
    Latest(String),
    /// Inside `/NAME/current` or `/NAME/N`.
    In(Inside),
}

/// An open file of the namespace.
pub enum NsFile {
    /// `/` or `/NAME` opened for reading (listing).
    Listing(NsNode),
    /// A file or directory of an image.
    In(Arc<ImageFs>, ImageFile),
}

/// The namespace (see the module docs).
pub struct NamespaceFs {
    images: Arc<Images>,
    /// Directories made for images that do not exist yet (until `current` is linked).
    pending: Mutex<BTreeSet<String>>,
}

fn dir_qid(path: u64) -> Qid {
    Qid {
        ty: envoy_protocol::consts::QTDIR,
        version: 0,
        path,
    }
}

/// Qid paths of the namespace's own directories, out of the images' inode range.
fn synthetic(name: &str, salt: u64) -> u64 {
    let h = blake3::hash(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) | (1 << 63)) ^ salt
}

fn dir_attr(qid: Qid) -> Attr {
    Attr {
        qid,
        mode: libc::S_IFDIR | 0o755,
        nlink: 2,
        blksize: 4096,
        ..Attr::default()
    }
}

impl NamespaceFs {
    /// The namespace of the images in `images` (whose owners it shares).
    pub fn new(images: Arc<Images>) -> NamespaceFs {
        NamespaceFs {
            images,
            pending: Mutex::new(BTreeSet::new()),
        }
    }

    fn images(&self) -> Result<Vec<catalog::ImageInfo>> {
        self.images.catalog()
    }

    fn image(&self, name: &str) -> Result<Option<catalog::ImageInfo>> {
        Ok(self.images()?.into_iter().find(|i| i.name == name))
    }

    /// The root of `tree`, held (`confined`: a session attached there).
    fn enter(&self, tree: Tree, confined: bool) -> Result<(NsNode, Qid)> {
        let fs = self.images.open(&tree)?;
        let (node, qid) = fs.attach(&Creds::root(), "")?;
        Ok((
            NsNode::In(Inside {
                tree,
                fs,
                node,
                confined,
            }),
            qid,
        ))
    }

    /// What a name in `/NAME` leads to.
    fn in_image_dir(&self, image: &str, name: &str) -> Result<NsNode> {
        let info = self.image(image)?.ok_or(Errno::ENOENT)?;
        let tree = match name {
            "current" => Tree::current(image),
            "snapshot" if !info.snapshots.is_empty() => return Ok(NsNode::Latest(image.into())),
            n => match n.parse::<u64>() {
                Ok(n) if info.snapshots.contains_key(&n) => Tree::snapshot(image, n),
                _ => return Err(Errno::ENOENT),
            },
        };
        Ok(self.enter(tree, false)?.0)
    }

    fn qid_of(&self, creds: &Creds, node: &NsNode) -> Result<Qid> {
        Ok(self.getattr(creds, node, None)?.qid)
    }

    /// `ln -s TARGET NAME` in an image directory: a snapshot or a fork.
    fn link_in_image_dir(&self, image: &str, name: &str, target: &str) -> Result<Qid> {
        if name == "current" {
            // Fork: TARGET's last two components are the source image and snapshot.
            let mut parts = target.trim_end_matches('/').rsplit('/');
            let n = parts
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or(Errno::EINVAL)?;
            let source = parts
                .next()
                .filter(|s| valid_name(s))
                .ok_or(Errno::EINVAL)?;
            if self.image(image)?.is_some() {
                return Err(Errno::EEXIST);
            }
            self.images.fork(source, n, image)?;
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(image);
            return self.qid_of(&Creds::root(), &NsNode::ImageDir(image.into()));
        }
        // Snapshot: `ln -s current N`.
        let n = name.parse::<u64>().map_err(|_| Errno::EPERM)?;
        if target.trim_end_matches('/') != "current" {
            return Err(Errno::EPERM);
        }
        self.images.snapshot(image, Some(n))?;
        Ok(dir_qid(synthetic(image, n)))
    }
}

/// The image's own handle behind a namespace file, if it is one.
fn image_file(file: Option<&NsFile>) -> Option<&ImageFile> {
    match file {
        Some(NsFile::In(_, f)) => Some(f),
        _ => None,
    }
}

impl FileSystem for NamespaceFs {
    type Node = NsNode;
    type File = NsFile;

    fn attach(&self, _creds: &Creds, aname: &str) -> Result<(NsNode, Qid)> {
        let path = aname.trim_matches('/');
        if path.is_empty() {
            return Ok((NsNode::Top, dir_qid(synthetic("/", 0))));
        }
        let (image, which) = path.split_once('/').unwrap_or((path, "current"));
        if !valid_name(image) {
            return Err(Errno::ENOENT);
        }
        let tree = match which {
            "current" => Tree::current(image),
            n => Tree::snapshot(image, n.parse().map_err(|_| Errno::ENOENT)?),
        };
        self.enter(tree, true)
    }

    fn walk(
        &self,
        creds: &Creds,
        from: &NsNode,
        names: &[String],
    ) -> (Vec<(NsNode, Qid)>, Option<Errno>) {
        let mut out = Vec::new();
        let mut cur = from.clone();
        for (i, name) in names.iter().enumerate() {
            let next = match (&cur, name.as_str()) {
                (_, ".") => Ok(cur.clone()),
                (NsNode::Top, "..") => Ok(NsNode::Top),
                (NsNode::ImageDir(_), "..") => Ok(NsNode::Top),
                (NsNode::Top, n) => {
                    let pending = self
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(n);
                    match self.image(n) {
                        Ok(Some(_)) => Ok(NsNode::ImageDir(n.into())),
                        Ok(None) if pending => Ok(NsNode::ImageDir(n.into())),
                        Ok(None) => Err(Errno::ENOENT),
                        Err(e) => Err(e),
                    }
                }
                (NsNode::ImageDir(image), n) => self.in_image_dir(image, n),
                (NsNode::Latest(_), _) => Err(Errno::ENOTDIR),
                (NsNode::In(inside), _) => {
                    // The rest of the walk happens inside the image. ".." from its root
                    // leaves it, to the image directory — unless the session was attached
                    // there.
                    let at_root = inside.fs.name(&inside.node) == "/";
                    if name == ".." && at_root && !inside.confined {
                        Ok(NsNode::ImageDir(inside.tree.image.clone()))
                    } else {
                        let (steps, err) = inside.fs.walk(creds, &inside.node, &names[i..i + 1]);
                        match (steps.into_iter().next(), err) {
                            (Some((n, q)), _) => {
                                let next = inside.at(n);
                                out.push((next.clone(), q));
                                cur = next;
                                continue;
                            }
                            (None, e) => Err(e.unwrap_or(Errno::ENOENT)),
                        }
                    }
                }
            };
            match next.and_then(|n| Ok((self.qid_of(creds, &n)?, n))) {
                Ok((q, n)) => {
                    out.push((n.clone(), q));
                    cur = n;
                }
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    fn name(&self, node: &NsNode) -> String {
        match node {
            NsNode::Top => "/".into(),
            NsNode::ImageDir(n) => n.clone(),
            NsNode::Latest(_) => "snapshot".into(),
            NsNode::In(i) => match i.fs.name(&i.node) {
                n if n != "/" => n,
                _ => i
                    .tree
                    .snapshot
                    .map_or_else(|| "current".into(), |s| s.to_string()),
            },
        }
    }

    fn getattr(&self, creds: &Creds, node: &NsNode, file: Option<&NsFile>) -> Result<Attr> {
        match node {
            NsNode::Top => Ok(dir_attr(dir_qid(synthetic("/", 0)))),
            NsNode::ImageDir(n) => Ok(dir_attr(dir_qid(synthetic(n, u64::MAX)))),
            NsNode::Latest(n) => {
                let latest = self
                    .image(n)?
                    .and_then(|i| i.snapshots.keys().next_back().copied());
                let target = latest.ok_or(Errno::ENOENT)?.to_string();
                Ok(Attr {
                    qid: Qid {
                        ty: envoy_protocol::consts::QTSYMLINK,
                        version: 0,
                        path: synthetic(n, 1),
                    },
                    mode: libc::S_IFLNK | 0o777,
                    nlink: 1,
                    size: target.len() as u64,
                    blksize: 4096,
                    ..Attr::default()
                })
            }
            NsNode::In(i) => i.fs.getattr(creds, &i.node, image_file(file)),
        }
    }

    fn setattr(
        &self,
        creds: &Creds,
        node: &NsNode,
        file: Option<&NsFile>,
        set: &SetAttr,
    ) -> Result<()> {
        match node {
            NsNode::In(i) => i.fs.setattr(creds, &i.node, image_file(file), set),
            _ => Err(Errno::EPERM),
        }
    }

    fn open(&self, creds: &Creds, node: &NsNode, flags: i32) -> Result<(NsFile, Qid)> {
        match node {
            NsNode::In(i) => {
                let (f, q) = i.fs.open(creds, &i.node, flags)?;
                Ok((NsFile::In(i.fs.clone(), f), q))
            }
            NsNode::Latest(_) => Err(Errno::ELOOP),
            _ if flags & libc::O_ACCMODE != libc::O_RDONLY => Err(Errno::EISDIR),
            other => Ok((NsFile::Listing(other.clone()), self.qid_of(creds, other)?)),
        }
    }

    fn create(
        &self,
        creds: &Creds,
        dir: &NsNode,
        name: &str,
        flags: i32,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<(NsNode, NsFile, Qid)> {
        match dir {
            NsNode::In(i) => {
                let (node, f, q) = i.fs.create(creds, &i.node, name, flags, mode, gid)?;
                Ok((i.at(node), NsFile::In(i.fs.clone(), f), q))
            }
            _ => Err(Errno::EPERM),
        }
    }

    fn mkdir(
        &self,
        creds: &Creds,
        dir: &NsNode,
        name: &str,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<Qid> {
        match dir {
            NsNode::In(i) => i.fs.mkdir(creds, &i.node, name, mode, gid),
            NsNode::Top => {
                if !valid_name(name) {
                    return Err(Errno::EINVAL);
                }
                if self.image(name)?.is_some() {
                    return Err(Errno::EEXIST);
                }
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_owned());
                Ok(dir_qid(synthetic(name, u64::MAX)))
            }
            _ => Err(Errno::EPERM),
        }
    }

    fn symlink(
        &self,
        creds: &Creds,
        dir: &NsNode,
        name: &str,
        target: &str,
        gid: Option<u32>,
    ) -> Result<Qid> {
        match dir {
            NsNode::In(i) => i.fs.symlink(creds, &i.node, name, target, gid),
            NsNode::ImageDir(image) => self.link_in_image_dir(image, name, target),
            _ => Err(Errno::EPERM),
        }
    }

    fn mknod(
        &self,
        creds: &Creds,
        dir: &NsNode,
        name: &str,
        kind: NodeKind,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<Qid> {
        match dir {
            NsNode::In(i) => i.fs.mknod(creds, &i.node, name, kind, mode, gid),
            _ => Err(Errno::EPERM),
        }
    }

    fn link(&self, creds: &Creds, dir: &NsNode, name: &str, target: &NsNode) -> Result<()> {
        match (dir, target) {
            (NsNode::In(d), NsNode::In(t)) if d.same_tree(t) => {
                d.fs.link(creds, &d.node, name, &t.node)
            }
            (NsNode::In(..), NsNode::In(..)) => Err(Errno::EXDEV),
            _ => Err(Errno::EPERM),
        }
    }

    fn readlink(&self, creds: &Creds, node: &NsNode) -> Result<String> {
        match node {
            NsNode::Latest(n) => self
                .image(n)?
                .and_then(|i| i.snapshots.keys().next_back().map(u64::to_string))
                .ok_or(Errno::ENOENT),
            NsNode::In(i) => i.fs.readlink(creds, &i.node),
            _ => Err(Errno::EINVAL),
        }
    }

    fn rename(
        &self,
        creds: &Creds,
        from_dir: &NsNode,
        from_name: &str,
        to_dir: &NsNode,
        to_name: &str,
    ) -> Result<()> {
        match (from_dir, to_dir) {
            (NsNode::In(a), NsNode::In(b)) if a.same_tree(b) => {
                a.fs.rename(creds, &a.node, from_name, &b.node, to_name)
            }
            (NsNode::In(..), NsNode::In(..)) => Err(Errno::EXDEV),
            _ => Err(Errno::EPERM),
        }
    }

    fn rename_node(
        &self,
        creds: &Creds,
        node: &NsNode,
        to_dir: Option<&NsNode>,
        to_name: &str,
    ) -> Result<()> {
        match (node, to_dir) {
            (NsNode::In(n), None) => n.fs.rename_node(creds, &n.node, None, to_name),
            (NsNode::In(n), Some(NsNode::In(d))) if n.same_tree(d) => {
                n.fs.rename_node(creds, &n.node, Some(&d.node), to_name)
            }
            _ => Err(Errno::EPERM),
        }
    }

    fn unlink(&self, creds: &Creds, dir: &NsNode, name: &str, dir_only: bool) -> Result<()> {
        match dir {
            NsNode::In(i) => i.fs.unlink(creds, &i.node, name, dir_only),
            NsNode::Top => {
                // An empty directory made for a fork that never happened may go.
                if self
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(name)
                {
                    Ok(())
                } else {
                    Err(Errno::EPERM)
                }
            }
            _ => Err(Errno::EPERM),
        }
    }

    fn remove(&self, creds: &Creds, node: &NsNode) -> Result<()> {
        match node {
            NsNode::In(i) => i.fs.remove(creds, &i.node),
            _ => Err(Errno::EPERM),
        }
    }

    /// Every file here is an image's: its blocks (see [`ImageFs`]).
    fn io_unit(&self) -> u32 {
        super::engine::BLOCK as u32
    }

    fn read(&self, creds: &Creds, file: &NsFile, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match file {
            NsFile::In(fs, f) => fs.read(creds, f, offset, buf),
            NsFile::Listing(_) => Err(Errno::EISDIR),
        }
    }

    fn write(&self, creds: &Creds, file: &NsFile, offset: u64, data: &Bytes) -> Result<usize> {
        match file {
            NsFile::In(fs, f) => fs.write(creds, f, offset, data),
            NsFile::Listing(_) => Err(Errno::EISDIR),
        }
    }

    fn readdir(
        &self,
        creds: &Creds,
        dir: &NsFile,
        cookie: u64,
        sink: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        let listing = match dir {
            NsFile::In(fs, f) => return fs.readdir(creds, f, cookie, sink),
            NsFile::Listing(node) => node,
        };
        // A small, synthetic directory: list it whole, resume by position.
        let mut entries: Vec<(String, u8, Qid)> = vec![
            (".".into(), libc::DT_DIR, dir_qid(0)),
            ("..".into(), libc::DT_DIR, dir_qid(0)),
        ];
        match listing {
            NsNode::Top => {
                let mut names: BTreeSet<String> =
                    self.images()?.into_iter().map(|i| i.name).collect();
                names.extend(
                    self.pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .cloned(),
                );
                for n in names {
                    let q = dir_qid(synthetic(&n, u64::MAX));
                    entries.push((n, libc::DT_DIR, q));
                }
            }
            NsNode::ImageDir(image) => {
                if let Some(info) = self.image(image)? {
                    entries.push(("current".into(), libc::DT_DIR, dir_qid(synthetic(image, 0))));
                    for n in info.snapshots.keys() {
                        entries.push((n.to_string(), libc::DT_DIR, dir_qid(synthetic(image, *n))));
                    }
                    if !info.snapshots.is_empty() {
                        let q = Qid {
                            ty: envoy_protocol::consts::QTSYMLINK,
                            version: 0,
                            path: synthetic(image, 1),
                        };
                        entries.push(("snapshot".into(), libc::DT_LNK, q));
                    }
                }
            }
            _ => return Err(Errno::ENOTDIR),
        }
        for (i, (name, kind, qid)) in entries.into_iter().enumerate().skip(cookie as usize) {
            if !sink(DirEntry {
                qid,
                next: i as u64 + 1,
                kind,
                name,
            }) {
                break;
            }
        }
        Ok(())
    }

    fn fsync(&self, creds: &Creds, file: &NsFile, datasync: bool) -> Result<()> {
        match file {
            NsFile::In(fs, f) => fs.fsync(creds, f, datasync),
            NsFile::Listing(_) => Ok(()),
        }
    }

    fn statfs(&self, creds: &Creds, node: &NsNode) -> Result<StatFs> {
        match node {
            NsNode::In(i) => i.fs.statfs(creds, &i.node),
            _ => {
                let fs = ImageFs::statfs_figures();
                Ok(fs)
            }
        }
    }
}
