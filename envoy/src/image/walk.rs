//! Every object an image root reaches, found by following the image's own structure: the root
//! object, the inode table's nodes, each directory's and file's tree nodes, each file's blocks.
//!
//! One walker serves `du` (which objects, how big, shared with which roots) and `check` (is
//! each one there and intact, does the structure hold together): it records what it reached
//! and what it could not use, and judges nothing itself. A [`Walker`] remembers every object it
//! has read or sized, so walking an image's current root and all its snapshots reads each
//! shared block once.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use envoy_objstore::{ObjectId, StoreError};

use super::btree::Node;
use super::engine::decode_root;
use super::inode::{self, Content, Entry, Inode};
use super::objects::Objects;

/// What an object is to the image that reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// The root object.
    Root,
    /// A node of the inode table.
    InodeTable,
    /// A node of an inode's tree: a directory's entries or a file's block map.
    Tree {
        /// The inode.
        ino: u64,
    },
    /// A data block of a file.
    Block {
        /// The file.
        ino: u64,
        /// The block's index in it.
        index: u64,
    },
}

/// How much of an image to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// The root and the inode table: every inode's attributes (sizes, counts), nothing below.
    Inodes,
    /// Every tree; data blocks are sized, not read (`du`).
    Sizes,
    /// Every object read, so hash-checked by the store (`check`).
    Verify,
}

/// Why an object reached could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No copy of it exists.
    Missing,
    /// Its stored bytes do not hash to its id (the store says where and how).
    Corrupt(String),
    /// The object layer could not answer (hosts down, I/O errors).
    Unreadable(String),
    /// Its content is not what its place in the image needs (not a root, not a tree node).
    Malformed(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Missing => write!(f, "missing"),
            Fault::Corrupt(d) => write!(f, "corrupt ({d})"),
            Fault::Unreadable(d) => write!(f, "unreadable ({d})"),
            Fault::Malformed(d) => write!(f, "malformed ({d})"),
        }
    }
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Fault {
        match e {
            StoreError::NotFound(_) => Fault::Missing,
            StoreError::Corrupt { detail, .. } => Fault::Corrupt(detail),
            other => Fault::Unreadable(other.to_string()),
        }
    }
}

/// One object a root reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reached {
    /// The object.
    pub id: ObjectId,
    /// Where it was first reached.
    pub part: Part,
    /// Its size (`None` if it could not be read or sized).
    pub size: Option<u64>,
}

/// What one root reaches.
#[derive(Debug, Default)]
pub struct Walk {
    /// The next inode number the root records (every inode's number is below it).
    pub next_ino: u64,
    /// The inode table.
    pub inodes: BTreeMap<u64, Inode>,
    /// Directory entries by directory, each with the tree key it is stored under.
    pub entries: BTreeMap<u64, Vec<(u64, Entry)>>,
    /// Block maps by file: block index and block id, in index order.
    pub blocks: BTreeMap<u64, Vec<(u64, ObjectId)>>,
    /// Every object reached, once, in the order reached.
    pub objects: Vec<Reached>,
    /// Every reference to an object that could not be used (one per place it is reached).
    pub faults: Vec<(ObjectId, Part, Fault)>,
    /// Values and tree shapes that are wrong: where, and what.
    pub malformed: Vec<(Part, String)>,
}

impl Walk {
    fn note(&mut self, seen: &mut HashSet<ObjectId>, id: ObjectId, part: Part, size: Option<u64>) {
        if seen.insert(id) {
            self.objects.push(Reached { id, part, size });
        }
    }
}

/// Walks roots (see the module docs).
pub struct Walker<'a> {
    store: &'a dyn Objects,
    depth: Depth,
    /// Every object read or sized so far: its size, or why it could not be.
    known: HashMap<ObjectId, Result<u64, Fault>>,
}

impl<'a> Walker<'a> {
    /// A walker reading `store` as deep as `depth` says.
    pub fn new(store: &'a dyn Objects, depth: Depth) -> Walker<'a> {
        Walker {
            store,
            depth,
            known: HashMap::new(),
        }
    }

    /// Everything `root` reaches.
    pub fn walk(&mut self, root: &ObjectId) -> Walk {
        let mut w = Walk::default();
        let mut seen = HashSet::new();
        let Some(data) = self.read(*root, Part::Root, &mut w, &mut seen) else {
            return w;
        };
        let Some((table, next_ino)) = decode_root(&data) else {
            w.faults.push((
                *root,
                Part::Root,
                Fault::Malformed("not an image root".into()),
            ));
            return w;
        };
        w.next_ino = next_ino;
        self.tree(
            table,
            Part::InodeTable,
            &mut w,
            &mut seen,
            &mut |w, ino, v| match Inode::decode(v.clone()) {
                Some(node) => {
                    w.inodes.insert(ino, node);
                }
                None => w
                    .malformed
                    .push((Part::InodeTable, format!("inode {ino} does not decode"))),
            },
        );
        if self.depth == Depth::Inodes {
            return w;
        }
        let trees: Vec<(u64, u32, ObjectId)> = w
            .inodes
            .iter()
            .filter_map(|(ino, n)| match n.content {
                Content::Tree(id) => Some((*ino, n.mode & libc::S_IFMT, id)),
                _ => None,
            })
            .collect();
        for (ino, kind, id) in trees {
            let part = Part::Tree { ino };
            match kind {
                libc::S_IFDIR => self.tree(id, part, &mut w, &mut seen, &mut |w, key, v| {
                    match inode::decode_entries(v.clone()) {
                        Some(list) => w
                            .entries
                            .entry(ino)
                            .or_default()
                            .extend(list.into_iter().map(|e| (key, e))),
                        None => w.malformed.push((
                            part,
                            format!("directory entries at key {key:#x} do not decode"),
                        )),
                    }
                }),
                libc::S_IFREG => self.tree(id, part, &mut w, &mut seen, &mut |w, index, v| {
                    match ObjectId::try_from_slice(v) {
                        Some(block) => w.blocks.entry(ino).or_default().push((index, block)),
                        None => w
                            .malformed
                            .push((part, format!("block {index} is not an object id"))),
                    }
                }),
                _ => w.malformed.push((
                    part,
                    "a tree under an inode that is not a file or directory".into(),
                )),
            }
        }
        let blocks: Vec<(u64, u64, ObjectId)> = w
            .blocks
            .iter()
            .flat_map(|(ino, list)| list.iter().map(|(index, id)| (*ino, *index, *id)))
            .collect();
        for (ino, index, id) in blocks {
            self.block(id, Part::Block { ino, index }, &mut w, &mut seen);
        }
        w
    }

    /// An object's content: the stored copy when verifying (a cache must not hide a bad
    /// one), else as the store serves it.
    fn fetch(&self, id: &ObjectId) -> Result<Bytes, StoreError> {
        match self.depth {
            Depth::Verify => self.store.get_stored(id),
            _ => self.store.get(id),
        }
    }

    /// An object's content (read, so verified), noting it and any fault.
    fn read(
        &mut self,
        id: ObjectId,
        part: Part,
        w: &mut Walk,
        seen: &mut HashSet<ObjectId>,
    ) -> Option<Bytes> {
        if let Some(Err(fault)) = self.known.get(&id) {
            w.faults.push((id, part, fault.clone()));
            w.note(seen, id, part, None);
            return None;
        }
        match self.fetch(&id) {
            Ok(data) => {
                self.known.insert(id, Ok(data.len() as u64));
                w.note(seen, id, part, Some(data.len() as u64));
                Some(data)
            }
            Err(e) => {
                let fault = Fault::from(e);
                self.known.insert(id, Err(fault.clone()));
                w.faults.push((id, part, fault));
                w.note(seen, id, part, None);
                None
            }
        }
    }

    /// A data block: read (`Verify`) or sized (`Sizes`), once per walker.
    fn block(&mut self, id: ObjectId, part: Part, w: &mut Walk, seen: &mut HashSet<ObjectId>) {
        let known = match self.known.get(&id) {
            Some(k) => k.clone(),
            None => {
                let got = match self.depth {
                    Depth::Verify => self.fetch(&id).map(|d| d.len() as u64),
                    _ => self.store.size(&id),
                };
                let k = got.map_err(Fault::from);
                self.known.insert(id, k.clone());
                k
            }
        };
        match known {
            Ok(size) => w.note(seen, id, part, Some(size)),
            Err(fault) => {
                w.faults.push((id, part, fault));
                w.note(seen, id, part, None);
            }
        }
    }

    /// Every node of the tree rooted at `id`, calling `value` for each leaf entry; keys out of
    /// order or outside their parent's range are noted as malformed.
    fn tree(
        &mut self,
        id: ObjectId,
        part: Part,
        w: &mut Walk,
        seen: &mut HashSet<ObjectId>,
        value: &mut dyn FnMut(&mut Walk, u64, &Bytes),
    ) {
        // (node, lowest key allowed, first key not allowed)
        let mut stack = vec![(id, 0u64, None::<u64>)];
        while let Some((node_id, lo, hi)) = stack.pop() {
            let Some(data) = self.read(node_id, part, w, seen) else {
                continue;
            };
            let node = match Node::decode(&node_id, data) {
                Ok(n) => n,
                Err(e) => {
                    let fault = Fault::Malformed(e.to_string());
                    self.known.insert(node_id, Err(fault.clone()));
                    w.faults.push((node_id, part, fault));
                    continue;
                }
            };
            let in_range = |k: u64| k >= lo && hi.is_none_or(|h| k < h);
            match node {
                Node::Leaf(entries) => {
                    let mut last = None;
                    for (k, v) in &entries {
                        if !in_range(*k) || last.is_some_and(|l| l >= *k) {
                            w.malformed.push((
                                part,
                                format!("key {k:#x} out of order in tree node {node_id}"),
                            ));
                        }
                        last = Some(*k);
                        value(w, *k, v);
                    }
                }
                Node::Inner(children) => {
                    for (i, (k, child)) in children.iter().enumerate().rev() {
                        let next = children.get(i + 1).map(|c| c.0).or(hi);
                        if !in_range(*k) || next.is_some_and(|n| n <= *k) {
                            w.malformed.push((
                                part,
                                format!("key {k:#x} out of order in tree node {node_id}"),
                            ));
                        }
                        stack.push((*child, *k.max(&lo), next));
                    }
                }
            }
        }
    }
}
