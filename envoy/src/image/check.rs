//! `check`: is an image whole? Every object its current root and its snapshots' roots reach
//! is read (so hash-checked by the object layer), and the structure the objects make is
//! checked against itself: each file's size against its block map, each directory's entries
//! against the inodes they name, each link count against the entries naming the inode
//! (directories: 2 + subdirectories), and every inode reachable from the root directory.
//!
//! Problems are reported, never repaired, each with the tree (`NAME` or `NAME@N`), the path
//! (or inode) it concerns and the object involved, so that a missing or corrupt block names
//! the file that loses data.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use envoy_objstore::ObjectId;
use serde::{Deserialize, Serialize};

use super::catalog::ImageInfo;
use super::engine::{BLOCK, ROOT_INO};
use super::inode::{self, Content};
use super::objects::Objects;
use super::walk::{Depth, Part, Walk, Walker};

/// One thing wrong with an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The tree it was found in: `NAME` (the current state) or `NAME@N` (a snapshot).
    pub tree: String,
    /// The path of the file or directory concerned, when one is known.
    pub path: Option<String>,
    /// The inode concerned, if any.
    pub ino: Option<u64>,
    /// The object concerned, if any.
    #[serde(with = "hex_id")]
    pub object: Option<ObjectId>,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.tree)?;
        match (&self.path, self.ino) {
            (Some(p), Some(ino)) => write!(f, "{p} (inode {ino}): ")?,
            (Some(p), None) => write!(f, "{p}: ")?,
            (None, Some(ino)) => write!(f, "inode {ino}: ")?,
            (None, None) => {}
        }
        write!(f, "{}", self.what)?;
        if let Some(id) = &self.object {
            write!(f, " [object {id}]")?;
        }
        Ok(())
    }
}

/// What `check` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The image.
    pub image: String,
    /// The trees checked: `NAME`, then `NAME@N` for each snapshot.
    pub trees: Vec<String>,
    /// Distinct objects read and verified.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Inodes checked (summed over the trees).
    pub inodes: u64,
    /// Everything wrong; empty if the image is whole.
    pub problems: Vec<Problem>,
}

/// Check `info`'s current root and every snapshot's.
pub fn check(store: &dyn Objects, info: &ImageInfo) -> Report {
    let mut report = Report {
        image: info.name.clone(),
        ..Report::default()
    };
    let trees = std::iter::once((info.name.clone(), info.root)).chain(
        info.snapshots
            .iter()
            .map(|(n, root)| (format!("{}@{n}", info.name), *root)),
    );
    let mut walker = Walker::new(store, Depth::Verify);
    let mut counted: HashSet<ObjectId> = HashSet::new();
    for (tree, root) in trees {
        let walk = walker.walk(&root);
        for o in &walk.objects {
            if let Some(size) = o.size
                && counted.insert(o.id)
            {
                report.objects += 1;
                report.bytes += size;
            }
        }
        report.inodes += walk.inodes.len() as u64;
        report.problems.extend(Judge::new(&tree, &walk).problems());
        report.trees.push(tree);
    }
    report
}

/// The checks of one walked tree.
struct Judge<'a> {
    tree: &'a str,
    walk: &'a Walk,
    /// A path to each inode reachable from the root directory.
    paths: HashMap<u64, String>,
    out: Vec<Problem>,
}

fn type_name(kind: u32) -> &'static str {
    match kind {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "unknown type",
    }
}

impl<'a> Judge<'a> {
    fn new(tree: &'a str, walk: &'a Walk) -> Judge<'a> {
        // Breadth first from the root directory: the shortest path to each inode.
        let mut paths = HashMap::new();
        paths.insert(ROOT_INO, "/".to_owned());
        let mut queue = VecDeque::from([ROOT_INO]);
        while let Some(dir) = queue.pop_front() {
            let base = paths[&dir].clone();
            for (_, e) in walk.entries.get(&dir).into_iter().flatten() {
                if paths.contains_key(&e.ino) || !walk.inodes.contains_key(&e.ino) {
                    continue;
                }
                let p = if base == "/" {
                    format!("/{}", e.name)
                } else {
                    format!("{base}/{}", e.name)
                };
                paths.insert(e.ino, p);
                if walk.inodes[&e.ino].mode & libc::S_IFMT == libc::S_IFDIR {
                    queue.push_back(e.ino);
                }
            }
        }
        Judge {
            tree,
            walk,
            paths,
            out: Vec::new(),
        }
    }

    fn report(&mut self, ino: Option<u64>, object: Option<ObjectId>, what: String) {
        let path = ino.and_then(|i| self.paths.get(&i).cloned());
        self.out.push(Problem {
            tree: self.tree.to_owned(),
            path,
            ino,
            object,
            what,
        });
    }

    fn problems(mut self) -> Vec<Problem> {
        let w = self.walk;
        // Objects that could not be used, where each was reached.
        for (id, part, fault) in &w.faults {
            let (ino, what) = match part {
                Part::Root => (None, format!("root object {fault}")),
                Part::InodeTable => (None, format!("inode table node {fault}")),
                Part::Tree { ino } => (Some(*ino), format!("tree node {fault}")),
                Part::Block { ino, index } => (Some(*ino), format!("block {index} {fault}")),
            };
            self.report(ino, Some(*id), what);
        }
        for (part, what) in &w.malformed {
            let ino = match part {
                Part::Tree { ino } | Part::Block { ino, .. } => Some(*ino),
                _ => None,
            };
            self.report(ino, None, what.clone());
        }
        // Link counts and orphans need every directory: with one missing, they would be
        // wrong for reasons already reported.
        let complete = !w.faults.iter().any(|(_, part, _)| match part {
            Part::Root | Part::InodeTable => true,
            Part::Tree { ino } => w
                .inodes
                .get(ino)
                .is_some_and(|n| n.mode & libc::S_IFMT == libc::S_IFDIR),
            Part::Block { .. } => false,
        });
        if w.inodes.is_empty() {
            return self.out;
        }
        match w.inodes.get(&ROOT_INO) {
            None => self.report(None, None, "no root directory (inode 1)".into()),
            Some(n) if n.mode & libc::S_IFMT != libc::S_IFDIR => {
                self.report(Some(ROOT_INO), None, "the root is not a directory".into())
            }
            Some(_) => {}
        }
        let sizes: HashMap<ObjectId, u64> = w
            .objects
            .iter()
            .filter_map(|o| o.size.map(|s| (o.id, s)))
            .collect();
        let mut named: BTreeMap<u64, u32> = BTreeMap::new();
        for (ino, n) in &w.inodes {
            let ino = *ino;
            if ino >= w.next_ino {
                self.report(
                    Some(ino),
                    None,
                    format!(
                        "inode number not below the root's next inode number {}",
                        w.next_ino
                    ),
                );
            }
            let kind = n.mode & libc::S_IFMT;
            match (&n.content, kind) {
                (Content::Target(t), libc::S_IFLNK) => {
                    if n.size != t.len() as u64 {
                        self.report(
                            Some(ino),
                            None,
                            format!(
                                "symlink size {} but its target has {} bytes",
                                n.size,
                                t.len()
                            ),
                        );
                    }
                }
                (_, libc::S_IFLNK) => {
                    self.report(Some(ino), None, "a symlink without a target".into())
                }
                (Content::Empty, _) | (Content::Tree(_), libc::S_IFREG | libc::S_IFDIR) => {}
                (c, _) => {
                    let c = match c {
                        Content::Tree(_) => "a tree",
                        _ => "a symlink target",
                    };
                    self.report(
                        Some(ino),
                        None,
                        format!("a {} holding {c}", type_name(kind)),
                    )
                }
            }
            if kind == libc::S_IFREG {
                for (index, id) in w.blocks.get(&ino).into_iter().flatten() {
                    let start = index.saturating_mul(BLOCK as u64);
                    if start >= n.size {
                        self.report(
                            Some(ino),
                            Some(*id),
                            format!(
                                "block {index} lies past the end of the file ({} bytes)",
                                n.size
                            ),
                        );
                    } else if let Some(len) = sizes.get(id)
                        && *len > (n.size - start).min(BLOCK as u64)
                    {
                        self.report(
                            Some(ino),
                            Some(*id),
                            format!(
                                "block {index} holds {len} bytes, more than the file's {} there",
                                (n.size - start).min(BLOCK as u64)
                            ),
                        );
                    }
                }
            }
            if kind == libc::S_IFDIR {
                let entries = w.entries.get(&ino).map_or(&[][..], |v| &v[..]);
                let mut names = HashSet::new();
                let mut subdirs = 0u64;
                for (key, e) in entries {
                    if e.name.is_empty() || e.name == "." || e.name == ".." || e.name.contains('/')
                    {
                        self.report(Some(ino), None, format!("an entry named {:?}", e.name));
                    }
                    if inode::name_key(&e.name) != *key {
                        self.report(
                            Some(ino),
                            None,
                            format!("entry {:?} is stored under another name's key", e.name),
                        );
                    }
                    if !names.insert(e.name.as_str()) {
                        self.report(Some(ino), None, format!("entry {:?} appears twice", e.name));
                    }
                    let Some(target) = w.inodes.get(&e.ino) else {
                        self.report(
                            Some(ino),
                            None,
                            format!(
                                "entry {:?} names inode {}, which does not exist",
                                e.name, e.ino
                            ),
                        );
                        continue;
                    };
                    let tkind = target.mode & libc::S_IFMT;
                    if tkind != e.kind {
                        self.report(
                            Some(ino),
                            None,
                            format!(
                                "entry {:?} says {} but inode {} is a {}",
                                e.name,
                                type_name(e.kind),
                                e.ino,
                                type_name(tkind)
                            ),
                        );
                    }
                    if tkind == libc::S_IFDIR {
                        subdirs += 1;
                    }
                    *named.entry(e.ino).or_default() += 1;
                }
                if complete && n.size != entries.len() as u64 {
                    self.report(
                        Some(ino),
                        None,
                        format!("directory size {} but {} entries", n.size, entries.len()),
                    );
                }
                if complete && u64::from(n.nlink) != 2 + subdirs {
                    self.report(
                        Some(ino),
                        None,
                        format!(
                            "link count {} but it has {subdirs} subdirectories (expected {})",
                            n.nlink,
                            2 + subdirs
                        ),
                    );
                }
            }
        }
        if !complete {
            self.report(
                None,
                None,
                "link counts and orphans not checked: directory data is missing (above)".into(),
            );
            return self.out;
        }
        for (ino, n) in &w.inodes {
            let ino = *ino;
            let names = named.get(&ino).copied().unwrap_or(0);
            if n.mode & libc::S_IFMT == libc::S_IFDIR {
                let want = u32::from(ino != ROOT_INO);
                if names != want {
                    self.report(
                        Some(ino),
                        None,
                        format!("directory named by {names} entries (expected {want})"),
                    );
                }
            } else if n.nlink != names {
                self.report(
                    Some(ino),
                    None,
                    format!("link count {} but {names} entries name it", n.nlink),
                );
            }
            if !self.paths.contains_key(&ino) {
                self.report(
                    Some(ino),
                    None,
                    "orphan: not reachable from the root directory".into(),
                );
            }
        }
        self.out
    }
}

/// An optional object id as its hex string (JSON has no 32-byte arrays).
mod hex_id {
    use envoy_objstore::ObjectId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<ObjectId>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.serialize_some(&id.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ObjectId>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}
