//! The export's tree of walked names: what an unopened fid points at, without a descriptor.
//!
//! A node is a (parent, name) pair, resolved to a descriptor only for the duration of an
//! operation (so a guest that walks a million files costs memory, not descriptors), except for
//! a bounded number of directories whose descriptors [`DirCache`] keeps. Every node
//! that is alive is registered in its parent's child map, so a rename or unlink done through this
//! export updates every fid naming the object: after `mv a b`, a fid walked to `a` names `b`.
//! Changes made behind the export's back (on the host) are not seen; paths then fail with ENOENT.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, RwLock, Weak};

/// A walked location in the export. Cheap to clone.
#[derive(Clone)]
pub struct Node(Arc<NodeInner>);

struct NodeInner {
    /// Where the node is now. `std::sync` locks: never held across an await or a syscall.
    place: RwLock<Place>,
    /// Live children by name (weak: a child lives as long as some fid holds it).
    children: Mutex<HashMap<String, Weak<NodeInner>>>,
    /// For directories: a confined `O_PATH` descriptor, while [`DirCache`] keeps one.
    dir: Mutex<Option<Arc<OwnedFd>>>,
}

#[derive(Clone)]
struct Place {
    /// `None` for the root, and for nodes whose entry was removed (then `gone`).
    parent: Option<Node>,
    name: String,
    gone: bool,
}

impl Node {
    /// A new tree: its root.
    pub fn new_root() -> Node {
        Node(Arc::new(NodeInner {
            place: RwLock::new(Place {
                parent: None,
                name: String::new(),
                gone: false,
            }),
            children: Mutex::new(HashMap::new()),
            dir: Mutex::new(None),
        }))
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        let p = self.0.place.read().unwrap();
        p.parent.is_none() && !p.gone
    }

    /// Whether the object was removed through this export.
    pub fn is_gone(&self) -> bool {
        self.0.place.read().unwrap().gone
    }

    /// The parent (the root is its own parent).
    pub fn parent(&self) -> Node {
        self.0
            .place
            .read()
            .unwrap()
            .parent
            .clone()
            .unwrap_or_else(|| self.clone())
    }

    /// The final name ("" for the root).
    pub fn name(&self) -> String {
        self.0.place.read().unwrap().name.clone()
    }

    /// The child `name`, registered so renames reach it.
    pub fn child(&self, name: &str) -> Node {
        let mut children = self.0.children.lock().unwrap();
        if let Some(existing) = children.get(name).and_then(Weak::upgrade) {
            return Node(existing);
        }
        let node = Node(Arc::new(NodeInner {
            place: RwLock::new(Place {
                parent: Some(self.clone()),
                name: name.to_owned(),
                gone: false,
            }),
            children: Mutex::new(HashMap::new()),
            dir: Mutex::new(None),
        }));
        children.insert(name.to_owned(), Arc::downgrade(&node.0));
        node
    }

    /// Path from the root ("" for the root itself), or ENOENT if the node was removed.
    pub fn path(&self) -> Result<String, nix::errno::Errno> {
        let mut parts = Vec::new();
        let mut cur = self.clone();
        loop {
            let place = cur.0.place.read().unwrap().clone();
            if place.gone {
                return Err(nix::errno::Errno::ENOENT);
            }
            match place.parent {
                None => break,
                Some(parent) => {
                    parts.push(place.name);
                    cur = parent;
                }
            }
        }
        parts.reverse();
        Ok(parts.join("/"))
    }

    /// Record that `dir/name` was removed: a node still naming it now fails with ENOENT.
    pub fn forget_child(&self, name: &str) {
        let removed = self
            .0
            .children
            .lock()
            .unwrap()
            .remove(name)
            .and_then(|w| w.upgrade());
        if let Some(inner) = removed {
            inner.dir.lock().unwrap().take();
            let mut p = inner.place.write().unwrap();
            p.parent = None;
            p.gone = true;
        }
    }

    /// Record that `self/from` moved to `to_dir/to`: the moved node follows; a node naming the
    /// replaced target (if any) is forgotten.
    pub fn move_child(&self, from: &str, to_dir: &Node, to: &str) {
        let moving = self
            .0
            .children
            .lock()
            .unwrap()
            .remove(from)
            .and_then(|w| w.upgrade());
        to_dir.forget_child(to);
        if let Some(inner) = moving {
            {
                let mut p = inner.place.write().unwrap();
                p.parent = Some(to_dir.clone());
                p.name = to.to_owned();
            }
            to_dir
                .0
                .children
                .lock()
                .unwrap()
                .insert(to.to_owned(), Arc::downgrade(&inner));
        }
    }
}

/// A bounded set of directory descriptors kept on their nodes, so that resolving an entry is one
/// system call relative to its directory instead of a walk from the root. Only directories are
/// cached and at most `capacity` at once (oldest evicted first): descriptor use stays bounded
/// however many nodes fids hold. An `O_PATH` descriptor carries no access rights; every lookup
/// through it is checked against the current caller. A directory renamed through the export keeps
/// its descriptor (it names the same directory); a removed one loses it.
pub struct DirCache {
    /// Nodes holding a descriptor, oldest first. Locked only when a descriptor is added.
    order: Mutex<VecDeque<Weak<NodeInner>>>,
    capacity: usize,
}

impl DirCache {
    /// A cache of at most `capacity` directory descriptors.
    pub fn new(capacity: usize) -> DirCache {
        DirCache {
            order: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
        }
    }

    /// The cached descriptor of directory `node`, if any.
    pub fn get(&self, node: &Node) -> Option<Arc<OwnedFd>> {
        node.0.dir.lock().unwrap().clone()
    }

    /// Keep `fd` as `node`'s descriptor (evicting the oldest when full); returns the one kept.
    pub fn insert(&self, node: &Node, fd: OwnedFd) -> Arc<OwnedFd> {
        let fd = Arc::new(fd);
        {
            let mut slot = node.0.dir.lock().unwrap();
            if let Some(existing) = slot.as_ref() {
                return existing.clone();
            }
            *slot = Some(fd.clone());
        }
        let mut order = self.order.lock().unwrap();
        order.push_back(Arc::downgrade(&node.0));
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front().and_then(|w| w.upgrade()) {
                old.dir.lock().unwrap().take();
            }
        }
        fd
    }

    /// Descriptors held now (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.upgrade().is_some_and(|n| n.dir.lock().unwrap().is_some()))
            .count()
    }
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        // Unregister from the parent, unless the slot already holds a newer node of that name.
        let place = match self.place.get_mut() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(parent) = place.parent.take() {
            let mut children = parent.0.children.lock().unwrap_or_else(|e| e.into_inner());
            if children
                .get(&place.name)
                .is_some_and(|w| w.strong_count() == 0)
            {
                children.remove(&place.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_and_removals() {
        let root = Node::new_root();
        let a = root.child("a");
        let b = a.child("b");
        assert_eq!(b.path().unwrap(), "a/b");
        assert!(Arc::ptr_eq(&a.child("b").0, &b.0), "a live child is shared");
        let z = root.child("z");
        root.move_child("a", &z, "y");
        assert_eq!(b.path().unwrap(), "z/y/b");
        z.forget_child("y");
        assert_eq!(b.path(), Err(nix::errno::Errno::ENOENT));
        assert_eq!(root.path().unwrap(), "");
        assert!(root.parent().is_root());
    }

    #[test]
    fn dropped_children_are_unregistered() {
        let root = Node::new_root();
        {
            let _c = root.child("c");
            assert_eq!(root.0.children.lock().unwrap().len(), 1);
        }
        assert_eq!(root.0.children.lock().unwrap().len(), 0);
    }

    #[test]
    fn dir_cache_is_bounded_and_follows_removal() {
        let cache = DirCache::new(2);
        let root = Node::new_root();
        let nodes: Vec<Node> = (0..4).map(|i| root.child(&format!("d{i}"))).collect();
        for n in &nodes {
            cache.insert(
                n,
                rustix::fs::open("/", rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap(),
            );
        }
        assert_eq!(cache.len(), 2, "bounded");
        assert!(
            cache.get(&nodes[0]).is_none() && cache.get(&nodes[3]).is_some(),
            "oldest evicted"
        );
        root.forget_child("d3");
        assert!(
            cache.get(&nodes[3]).is_none(),
            "removed directories drop their descriptor"
        );
    }

    #[test]
    fn rename_over_existing_forgets_target() {
        let root = Node::new_root();
        let x = root.child("x");
        let y = root.child("y");
        root.move_child("x", &root, "y");
        assert_eq!(x.path().unwrap(), "y");
        assert!(y.is_gone());
    }
}
