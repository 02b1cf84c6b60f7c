//! The export's tree of walked names: what an unopened fid points at, without a descriptor.
//!
//! A node is a (parent, name) pair, resolved to a descriptor only for the duration of an
//! operation (so a guest that walks a million files costs memory, not descriptors). Every node
//! that is alive is registered in its parent's child map, so a rename or unlink done through this
//! export updates every fid naming the object: after `mv a b`, a fid walked to `a` names `b`.
//! Changes made behind the export's back (on the host) are not seen; paths then fail with ENOENT.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

/// A walked location in the export. Cheap to clone.
#[derive(Clone)]
pub struct Node(Arc<NodeInner>);

struct NodeInner {
    /// Where the node is now. `std::sync` locks: never held across an await or a syscall.
    place: RwLock<Place>,
    /// Live children by name (weak: a child lives as long as some fid holds it).
    children: Mutex<HashMap<String, Weak<NodeInner>>>,
}

#[derive(Clone)]
struct Place {
    /// `None` for the root, and for nodes whose entry was removed (then `gone`).
    parent: Option<Node>,
    name: String,
    gone: bool,
}

/// Where a node is, for resolving it: the parent's path and the final name.
pub enum Location {
    /// The export root.
    Root,
    /// `dir_path` (relative to the root, "" for the root itself) and the entry `name` in it.
    Entry {
        /// Path of the parent directory relative to the export root (no leading slash).
        dir_path: String,
        /// The final element.
        name: String,
    },
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

    /// How to reach the node: its parent's path plus its name.
    pub fn location(&self) -> Result<Location, nix::errno::Errno> {
        if self.is_gone() {
            return Err(nix::errno::Errno::ENOENT);
        }
        if self.is_root() {
            return Ok(Location::Root);
        }
        let parent = self.parent();
        let dir_path = parent.path()?;
        Ok(Location::Entry {
            dir_path,
            name: self.name(),
        })
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
    fn rename_over_existing_forgets_target() {
        let root = Node::new_root();
        let x = root.child("x");
        let y = root.child("y");
        root.move_child("x", &root, "y");
        assert_eq!(x.path().unwrap(), "y");
        assert!(y.is_gone());
    }
}
