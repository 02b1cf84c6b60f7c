//! A copy-on-write B+tree of `u64 → bytes` stored as immutable objects: the one structure an
//! image is made of (its inode table, each directory, each file's block map).
//!
//! Nodes are loaded from the object layer on first use and changed in memory; [`Tree::commit`]
//! writes the changed nodes bottom-up (each named by its hash, so unchanged subtrees keep their
//! ids and are shared with every snapshot that has them) and returns the new root's id. A
//! snapshot of any tree is therefore just its root id. Leaves split when they pass
//! [`MAX_NODE`] bytes; an emptied leaf leaves its parent (no merging of underfull nodes: the
//! trees here shrink rarely, and a later split costs nothing extra).
//!
//! Encoding (little-endian): a leaf is `0u8 n[4] n × (key[8] vlen[4] value)`, an inner node
//! `1u8 n[4] n × (min_key[8] child[32])`. An inner node's object refers to its children; a
//! leaf refers to what its values name (the caller says how to find them), so that GC's mark
//! follows a tree from its root to every block.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_objstore::{ObjectId, PutObject, StoreError};

use super::objects::Objects;

/// A node is split once its encoding passes this many bytes.
pub const MAX_NODE: usize = 16 * 1024;

/// How a leaf's values name other objects (for GC): appends the ids a value refers to.
pub type ValueRefs = fn(&[u8], &mut Vec<ObjectId>);

/// Values that refer to nothing.
pub fn no_refs(_: &[u8], _: &mut Vec<ObjectId>) {}

#[derive(Debug)]
enum Link {
    Stored(ObjectId),
    Loaded(Box<Mem>),
}

#[derive(Debug)]
enum Kind {
    Leaf(Vec<(u64, Bytes)>),
    Inner(Vec<(u64, Link)>),
}

/// A node in memory; `id` is its object while it is unchanged since loaded or committed.
#[derive(Debug)]
struct Mem {
    kind: Kind,
    id: Option<ObjectId>,
}

/// A tree (see the module docs).
#[derive(Debug)]
pub struct Tree {
    root: Mem,
    refs: ValueRefs,
}

fn corrupt(id: &ObjectId, what: &str) -> StoreError {
    StoreError::Corrupt {
        id: *id,
        detail: format!("not a tree node: {what}"),
    }
}

fn decode(id: &ObjectId, mut b: Bytes) -> Result<Mem, StoreError> {
    if b.remaining() < 5 {
        return Err(corrupt(id, "too short"));
    }
    let tag = b.get_u8();
    let n = b.get_u32_le() as usize;
    let kind = match tag {
        0 => {
            if n > b.remaining() / 12 {
                return Err(corrupt(id, "leaf count"));
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                if b.remaining() < 12 {
                    return Err(corrupt(id, "leaf entry"));
                }
                let key = b.get_u64_le();
                let len = b.get_u32_le() as usize;
                if b.remaining() < len {
                    return Err(corrupt(id, "leaf value"));
                }
                v.push((key, b.split_to(len)));
            }
            Kind::Leaf(v)
        }
        1 => {
            if n == 0 || n > b.remaining() / 40 {
                return Err(corrupt(id, "inner count"));
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let key = b.get_u64_le();
                let mut c = [0u8; 32];
                b.copy_to_slice(&mut c);
                v.push((key, Link::Stored(ObjectId(c))));
            }
            Kind::Inner(v)
        }
        _ => return Err(corrupt(id, "node tag")),
    };
    if b.has_remaining() {
        return Err(corrupt(id, "trailing bytes"));
    }
    Ok(Mem {
        kind,
        id: Some(*id),
    })
}

impl Mem {
    fn empty_leaf() -> Mem {
        Mem {
            kind: Kind::Leaf(Vec::new()),
            id: None,
        }
    }

    fn encoded_len(&self) -> usize {
        5 + match &self.kind {
            Kind::Leaf(v) => v.iter().map(|(_, val)| 12 + val.len()).sum::<usize>(),
            Kind::Inner(v) => v.len() * 40,
        }
    }

    fn min_key(&self) -> u64 {
        match &self.kind {
            Kind::Leaf(v) => v.first().map_or(0, |e| e.0),
            Kind::Inner(v) => v.first().map_or(0, |e| e.0),
        }
    }
}

/// The loaded node behind a link (loading it if needed).
fn load<'a>(link: &'a mut Link, store: &dyn Objects) -> Result<&'a mut Mem, StoreError> {
    if let Link::Stored(id) = link {
        let id = *id;
        let mem = decode(&id, store.get(&id)?)?;
        *link = Link::Loaded(Box::new(mem));
    }
    match link {
        Link::Loaded(m) => Ok(m),
        Link::Stored(_) => unreachable!("loaded above"),
    }
}

/// Index of the child of an inner node that covers `key`.
fn child_for(entries: &[(u64, Link)], key: u64) -> usize {
    entries
        .partition_point(|(k, _)| *k <= key)
        .saturating_sub(1)
}

/// Split an over-full node in two by bytes; returns the right half.
fn split(node: &mut Mem) -> Option<Mem> {
    if node.encoded_len() <= MAX_NODE {
        return None;
    }
    let right = match &mut node.kind {
        Kind::Leaf(v) if v.len() > 1 => {
            let half = node_half(v.iter().map(|(_, val)| 12 + val.len()));
            Kind::Leaf(v.split_off(half))
        }
        Kind::Inner(v) if v.len() > 1 => {
            let half = v.len() / 2;
            Kind::Inner(v.split_off(half))
        }
        _ => return None,
    };
    Some(Mem {
        kind: right,
        id: None,
    })
}

/// The index at which the running total of `sizes` (two or more) passes half of their sum,
/// leaving at least one on each side (a big last value would otherwise leave the right half
/// empty).
fn node_half(sizes: impl ExactSizeIterator<Item = usize> + Clone) -> usize {
    let last = sizes.len() - 1;
    let total: usize = sizes.clone().sum();
    let mut acc = 0;
    for (i, s) in sizes.enumerate() {
        acc += s;
        if acc * 2 >= total {
            return (i + 1).clamp(1, last);
        }
    }
    last
}

fn insert(
    node: &mut Mem,
    key: u64,
    value: Bytes,
    store: &dyn Objects,
) -> Result<(Option<Bytes>, Option<Mem>), StoreError> {
    node.id = None;
    let old = match &mut node.kind {
        Kind::Leaf(v) => match v.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => Some(std::mem::replace(&mut v[i].1, value)),
            Err(i) => {
                v.insert(i, (key, value));
                None
            }
        },
        Kind::Inner(v) => {
            let i = child_for(v, key);
            if key < v[i].0 {
                v[i].0 = key;
            }
            let child = load(&mut v[i].1, store)?;
            let (old, right) = insert(child, key, value, store)?;
            if let Some(right) = right {
                v.insert(i + 1, (right.min_key(), Link::Loaded(Box::new(right))));
            }
            old
        }
    };
    Ok((old, split(node)))
}

/// Remove `key`; returns the old value and whether the node is now empty.
fn remove(node: &mut Mem, key: u64, store: &dyn Objects) -> Result<Option<Bytes>, StoreError> {
    let old = match &mut node.kind {
        Kind::Leaf(v) => match v.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => Some(v.remove(i).1),
            Err(_) => None,
        },
        Kind::Inner(v) => {
            let i = child_for(v, key);
            let child = load(&mut v[i].1, store)?;
            let old = remove(child, key, store)?;
            if old.is_some() {
                let empty = match &child.kind {
                    Kind::Leaf(l) => l.is_empty(),
                    Kind::Inner(c) => c.is_empty(),
                };
                // A pivot stays a valid lower bound when its child loses keys; only an
                // emptied child goes.
                if empty {
                    v.remove(i);
                }
            }
            old
        }
    };
    if old.is_some() {
        node.id = None;
    }
    Ok(old)
}

fn get(node: &mut Mem, key: u64, store: &dyn Objects) -> Result<Option<Bytes>, StoreError> {
    match &mut node.kind {
        Kind::Leaf(v) => Ok(v
            .binary_search_by_key(&key, |e| e.0)
            .ok()
            .map(|i| v[i].1.clone())),
        Kind::Inner(v) => {
            if v.is_empty() {
                return Ok(None);
            }
            let i = child_for(v, key);
            get(load(&mut v[i].1, store)?, key, store)
        }
    }
}

/// Visit entries with keys ≥ `from` in order until `f` returns false; false if stopped.
fn scan(
    node: &mut Mem,
    from: u64,
    store: &dyn Objects,
    f: &mut dyn FnMut(u64, &Bytes) -> bool,
) -> Result<bool, StoreError> {
    match &mut node.kind {
        Kind::Leaf(v) => {
            let start = v.partition_point(|e| e.0 < from);
            for (k, val) in &v[start..] {
                if !f(*k, val) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Kind::Inner(v) => {
            if v.is_empty() {
                return Ok(true);
            }
            let start = child_for(v, from);
            for (_, link) in &mut v[start..] {
                if !scan(load(link, store)?, from, store, f)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

/// Encode every changed node into `batch`, children before parents; the node's id.
fn commit(node: &mut Mem, batch: &mut Vec<PutObject>, refs: ValueRefs) -> ObjectId {
    if let Some(id) = node.id {
        return id;
    }
    let mut out = BytesMut::with_capacity(node.encoded_len());
    let mut ids = Vec::new();
    match &mut node.kind {
        Kind::Leaf(v) => {
            out.put_u8(0);
            out.put_u32_le(v.len() as u32);
            for (k, val) in v.iter() {
                out.put_u64_le(*k);
                out.put_u32_le(val.len() as u32);
                out.put_slice(val);
                refs(val, &mut ids);
            }
        }
        Kind::Inner(v) => {
            out.put_u8(1);
            out.put_u32_le(v.len() as u32);
            for (k, link) in v.iter_mut() {
                let id = match link {
                    Link::Stored(id) => *id,
                    Link::Loaded(m) => commit(m, batch, refs),
                };
                out.put_u64_le(*k);
                out.put_slice(&id.0);
                ids.push(id);
            }
        }
    }
    let object = PutObject::new(out.freeze(), ids);
    let id = object.id();
    batch.push(object);
    node.id = Some(id);
    id
}

/// Forget loaded, unchanged subtrees (they are reloaded on use): bounds memory.
fn unload(node: &mut Mem) {
    if let Kind::Inner(v) = &mut node.kind {
        for (_, link) in v.iter_mut() {
            if let Link::Loaded(m) = link {
                match m.id {
                    Some(id) => *link = Link::Stored(id),
                    None => unload(m),
                }
            }
        }
    }
}

/// One stored node as a walker sees it (`du`, `check`): every object of a tree, not only its
/// values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A leaf's entries, in key order.
    Leaf(Vec<(u64, Bytes)>),
    /// An inner node's children, each with the lowest key it may hold.
    Inner(Vec<(u64, ObjectId)>),
}

impl Node {
    /// Decode the content of node object `id` (`Corrupt` if it is not a tree node).
    pub fn decode(id: &ObjectId, data: Bytes) -> Result<Node, StoreError> {
        Ok(match decode(id, data)?.kind {
            Kind::Leaf(v) => Node::Leaf(v),
            Kind::Inner(v) => Node::Inner(
                v.into_iter()
                    .map(|(k, link)| match link {
                        Link::Stored(child) => (k, child),
                        Link::Loaded(_) => unreachable!("a decoded node links to stored children"),
                    })
                    .collect(),
            ),
        })
    }
}

impl Tree {
    /// An empty tree whose values name objects as `refs` says.
    pub fn new(refs: ValueRefs) -> Tree {
        Tree {
            root: Mem::empty_leaf(),
            refs,
        }
    }

    /// The tree whose root is the object `id`.
    pub fn open(store: &dyn Objects, id: &ObjectId, refs: ValueRefs) -> Result<Tree, StoreError> {
        Ok(Tree {
            root: decode(id, store.get(id)?)?,
            refs,
        })
    }

    /// The value at `key`.
    pub fn get(&mut self, store: &dyn Objects, key: u64) -> Result<Option<Bytes>, StoreError> {
        get(&mut self.root, key, store)
    }

    /// Set `key` to `value`; returns the old value.
    pub fn insert(
        &mut self,
        store: &dyn Objects,
        key: u64,
        value: Bytes,
    ) -> Result<Option<Bytes>, StoreError> {
        let (old, right) = insert(&mut self.root, key, value, store)?;
        if let Some(right) = right {
            let left = std::mem::replace(&mut self.root, Mem::empty_leaf());
            self.root = Mem {
                kind: Kind::Inner(vec![
                    (left.min_key().min(key), Link::Loaded(Box::new(left))),
                    (right.min_key(), Link::Loaded(Box::new(right))),
                ]),
                id: None,
            };
        }
        Ok(old)
    }

    /// Remove `key`; returns its value.
    pub fn remove(&mut self, store: &dyn Objects, key: u64) -> Result<Option<Bytes>, StoreError> {
        let old = remove(&mut self.root, key, store)?;
        // A root with one child gives way to it.
        while let Kind::Inner(v) = &mut self.root.kind {
            match v.len() {
                0 => self.root = Mem::empty_leaf(),
                1 => {
                    let (_, mut link) = v.pop().expect("one child");
                    load(&mut link, store)?;
                    let Link::Loaded(child) = link else {
                        unreachable!("loaded above")
                    };
                    self.root = *child;
                }
                _ => break,
            }
        }
        Ok(old)
    }

    /// Visit the entries with keys ≥ `from`, in key order, until `f` returns false.
    pub fn scan(
        &mut self,
        store: &dyn Objects,
        from: u64,
        mut f: impl FnMut(u64, &Bytes) -> bool,
    ) -> Result<(), StoreError> {
        scan(&mut self.root, from, store, &mut f).map(|_| ())
    }

    /// Whether nothing changed since it was opened or last committed.
    pub fn is_clean(&self) -> bool {
        self.root.id.is_some()
    }

    /// Write every changed node; the root's id (a snapshot of the whole tree).
    pub fn commit(&mut self, store: &dyn Objects) -> Result<ObjectId, StoreError> {
        let mut batch = Vec::new();
        let id = self.commit_into(&mut batch);
        store.put_many(batch)?;
        Ok(id)
    }

    /// Every changed node as an object to store, into `batch` (children before parents: the
    /// ids are their hashes, known before anything is stored); the root's id. The tree counts
    /// as committed from here on: the caller must store the batch before it [`Tree::unload`]s
    /// or names the root anywhere durable.
    pub fn commit_into(&mut self, batch: &mut Vec<PutObject>) -> ObjectId {
        commit(&mut self.root, batch, self.refs)
    }

    /// Drop unchanged subtrees from memory (they are read again when needed).
    pub fn unload(&mut self) {
        unload(&mut self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_objstore::LocalStore;
    use std::collections::BTreeMap;

    /// The image modules' test store, as the `&dyn Objects` trees take.
    fn store() -> (tempfile::TempDir, LocalStore) {
        let (dir, s) = crate::image::test_store();
        (dir, std::sync::Arc::into_inner(s).expect("only owner"))
    }

    fn val(k: u64, len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (k as usize * 31 + i) as u8)
                .collect::<Vec<u8>>(),
        )
    }

    /// The tree agrees with a `BTreeMap` through inserts, overwrites, removes, commits and
    /// reopening from the committed root; snapshots taken on the way still read as they were.
    #[test]
    fn tree_matches_a_map_through_changes_commits_and_snapshots() {
        let (_d, s) = store();
        let mut t = Tree::new(no_refs);
        let mut model = BTreeMap::new();
        let mut snapshots = Vec::new();
        let mut x = 12345u64;
        for round in 0..6u64 {
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = x % 5000;
                if x.is_multiple_of(5) {
                    assert_eq!(t.remove(&s, key).unwrap(), model.remove(&key));
                } else {
                    let v = val(key ^ round, (x % 200) as usize);
                    assert_eq!(t.insert(&s, key, v.clone()).unwrap(), model.insert(key, v));
                }
            }
            let id = t.commit(&s).unwrap();
            assert!(t.is_clean());
            snapshots.push((id, model.clone()));
            t.unload();
            if round % 2 == 1 {
                t = Tree::open(&s, &id, no_refs).unwrap();
            }
        }
        for (id, m) in snapshots {
            let mut old = Tree::open(&s, &id, no_refs).unwrap();
            let mut seen = Vec::new();
            old.scan(&s, 0, |k, v| {
                seen.push((k, v.clone()));
                true
            })
            .unwrap();
            let want: Vec<(u64, Bytes)> = m.into_iter().collect();
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn big_trees_split_and_scans_start_anywhere() {
        let (_d, s) = store();
        let mut t = Tree::new(no_refs);
        for k in 0..20_000u64 {
            t.insert(&s, k * 3, val(k, 40)).unwrap();
        }
        let id = t.commit(&s).unwrap();
        let mut t = Tree::open(&s, &id, no_refs).unwrap();
        assert!(
            matches!(t.root.kind, Kind::Inner(_)),
            "20,000 entries need inner nodes"
        );
        let mut got = Vec::new();
        t.scan(&s, 30_001, |k, _| {
            got.push(k);
            got.len() < 3
        })
        .unwrap();
        assert_eq!(got, vec![30_003, 30_006, 30_009]);
        assert_eq!(t.get(&s, 59_997).unwrap(), Some(val(19_999, 40)));
        assert_eq!(t.get(&s, 59_998).unwrap(), None);
        // Removing everything leaves an empty tree.
        for k in 0..20_000u64 {
            assert!(t.remove(&s, k * 3).unwrap().is_some());
        }
        let mut n = 0;
        t.scan(&s, 0, |_, _| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn one_change_rewrites_one_path_and_shares_the_rest() {
        let (_d, s) = store();
        let mut t = Tree::new(no_refs);
        for k in 0..20_000u64 {
            t.insert(&s, k, val(k, 40)).unwrap();
        }
        t.commit(&s).unwrap();
        let before = s.stats().unwrap().objects;
        t.insert(&s, 777, val(1, 40)).unwrap();
        t.commit(&s).unwrap();
        let written = s.stats().unwrap().objects - before;
        assert!(
            (1..=3).contains(&written),
            "one change wrote {written} nodes (a path, not the tree)"
        );
    }

    /// Values bigger than a node (up to 64 KiB: an inode with extended attributes) split
    /// leaves wherever they fall, first, last or alone.
    #[test]
    fn values_bigger_than_a_node_split_leaves_anywhere() {
        let (_d, s) = store();
        let mut t = Tree::new(no_refs);
        let mut model = BTreeMap::new();
        for k in [2u64, 3, 6, 5, 1, 9, 8, 7, 4] {
            let len = if k % 2 == 1 { 3 * MAX_NODE } else { 100 };
            t.insert(&s, k, val(k, len)).unwrap();
            model.insert(k, val(k, len));
            for (k, v) in &model {
                assert_eq!(t.get(&s, *k).unwrap().as_ref(), Some(v), "key {k}");
            }
        }
        let id = t.commit(&s).unwrap();
        let mut t = Tree::open(&s, &id, no_refs).unwrap();
        let mut seen = Vec::new();
        t.scan(&s, 0, |k, v| {
            seen.push((k, v.clone()));
            true
        })
        .unwrap();
        assert_eq!(seen, model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_damaged_node_is_an_error_not_a_panic() {
        let (_d, s) = store();
        let id = Objects::put(&s, Bytes::from_static(&[1, 200, 0, 0, 0, 9]), vec![]).unwrap();
        assert!(Tree::open(&s, &id, no_refs).is_err());
        let id = Objects::put(&s, Bytes::from_static(&[7]), vec![]).unwrap();
        assert!(Tree::open(&s, &id, no_refs).is_err());
    }
}
