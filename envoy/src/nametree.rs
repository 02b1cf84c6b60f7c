//! The tree of walked names behind unopened fids, shared by the backends.
//!
//! A node is a (parent, name) pair plus whatever the backend keeps on it (`T`: the export a
//! cached directory descriptor, an image the inode number). Every node that is alive is
//! registered in its parent's child map, so a rename or unlink done through the backend updates
//! every fid naming the object: after `mv a b`, a fid walked to `a` names `b`, and `..` from it
//! is `b`'s directory. Changes made behind the backend's back are not seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

/// What a backend keeps on each node.
pub trait NodeData: Send + Sync + 'static {
    /// The node's entry was removed (or replaced by a rename): drop what names it.
    fn forgotten(&self) {}
}

impl NodeData for u64 {}

/// A walked location. Cheap to clone.
pub struct Node<T: NodeData>(Arc<NodeInner<T>>);

/// A node that does not keep its object alive.
pub struct WeakNode<T: NodeData>(Weak<NodeInner<T>>);

struct NodeInner<T: NodeData> {
    /// Where the node is now. `std::sync` locks: never held across an await or a syscall.
    place: RwLock<Place<T>>,
    /// Live children by name (weak: a child lives as long as some fid holds it).
    children: Mutex<HashMap<String, Weak<NodeInner<T>>>>,
    data: T,
}

struct Place<T: NodeData> {
    /// `None` for the root, and for nodes whose entry was removed (then `gone`).
    parent: Option<Node<T>>,
    name: String,
    gone: bool,
}

impl<T: NodeData> Clone for Node<T> {
    fn clone(&self) -> Self {
        Node(self.0.clone())
    }
}

impl<T: NodeData + std::fmt::Debug> std::fmt::Debug for Node<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("path", &self.path())
            .field("data", &self.0.data)
            .finish()
    }
}

impl<T: NodeData> Node<T> {
    /// A new tree: its root.
    pub fn new_root(data: T) -> Node<T> {
        Node(Arc::new(NodeInner {
            place: RwLock::new(Place {
                parent: None,
                name: String::new(),
                gone: false,
            }),
            children: Mutex::new(HashMap::new()),
            data,
        }))
    }

    /// What the backend keeps on this node.
    pub fn data(&self) -> &T {
        &self.0.data
    }

    /// A weak reference.
    pub fn downgrade(&self) -> WeakNode<T> {
        WeakNode(Arc::downgrade(&self.0))
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        let p = self.0.place.read().unwrap();
        p.parent.is_none() && !p.gone
    }

    /// Whether the object's entry was removed through the backend.
    pub fn is_gone(&self) -> bool {
        self.0.place.read().unwrap().gone
    }

    /// The parent (the root, and a removed node, are their own parent).
    pub fn parent(&self) -> Node<T> {
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

    /// The live child `name` if `matches` accepts its data, else a new one made by `make`,
    /// registered so renames reach it.
    pub fn child_where(
        &self,
        name: &str,
        matches: impl FnOnce(&T) -> bool,
        make: impl FnOnce() -> T,
    ) -> Node<T> {
        let mut children = self.0.children.lock().unwrap();
        if let Some(existing) = children.get(name).and_then(Weak::upgrade)
            && matches(&existing.data)
        {
            return Node(existing);
        }
        let node = Node(Arc::new(NodeInner {
            place: RwLock::new(Place {
                parent: Some(self.clone()),
                name: name.to_owned(),
                gone: false,
            }),
            children: Mutex::new(HashMap::new()),
            data: make(),
        }));
        children.insert(name.to_owned(), Arc::downgrade(&node.0));
        node
    }

    /// Path from the root ("" for the root itself), or ENOENT if the node was removed.
    pub fn path(&self) -> Result<String, nix::errno::Errno> {
        let mut parts = Vec::new();
        let mut cur = self.clone();
        loop {
            let (parent, name) = {
                let place = cur.0.place.read().unwrap();
                if place.gone {
                    return Err(nix::errno::Errno::ENOENT);
                }
                (place.parent.clone(), place.name.clone())
            };
            match parent {
                None => break,
                Some(parent) => {
                    parts.push(name);
                    cur = parent;
                }
            }
        }
        parts.reverse();
        Ok(parts.join("/"))
    }

    /// Record that `self/name` was removed: a node still naming it is now gone.
    pub fn forget_child(&self, name: &str) {
        let removed = self
            .0
            .children
            .lock()
            .unwrap()
            .remove(name)
            .and_then(|w| w.upgrade());
        if let Some(inner) = removed {
            inner.data.forgotten();
            let mut p = inner.place.write().unwrap();
            p.parent = None;
            p.gone = true;
        }
    }

    /// Record that `self/from` moved to `to_dir/to`: the moved node follows; a node naming the
    /// replaced target (if any) is forgotten.
    pub fn move_child(&self, from: &str, to_dir: &Node<T>, to: &str) {
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

    /// Whether two handles name the same node.
    pub fn same(&self, other: &Node<T>) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T: NodeData + Default> Node<T> {
    /// The child `name`, registered so renames reach it.
    pub fn child(&self, name: &str) -> Node<T> {
        self.child_where(name, |_| true, T::default)
    }
}

impl<T: NodeData> WeakNode<T> {
    /// The node, if some fid still holds it.
    pub fn upgrade(&self) -> Option<Node<T>> {
        self.0.upgrade().map(Node)
    }
}

impl<T: NodeData> Drop for NodeInner<T> {
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

    type N = Node<u64>;

    #[test]
    fn paths_follow_renames_and_removals() {
        let root = N::new_root(0);
        let a = root.child("a");
        let b = a.child("b");
        assert_eq!(b.path().unwrap(), "a/b");
        assert!(a.child("b").same(&b), "a live child is shared");
        let z = root.child("z");
        root.move_child("a", &z, "y");
        assert_eq!(b.path().unwrap(), "z/y/b");
        assert!(b.parent().parent().same(&z));
        z.forget_child("y");
        assert_eq!(b.path(), Err(nix::errno::Errno::ENOENT));
        assert_eq!(root.path().unwrap(), "");
        assert!(root.parent().is_root());
    }

    #[test]
    fn dropped_children_are_unregistered() {
        let root = N::new_root(0);
        {
            let _c = root.child("c");
            assert_eq!(root.0.children.lock().unwrap().len(), 1);
        }
        assert_eq!(root.0.children.lock().unwrap().len(), 0);
    }

    #[test]
    fn rename_over_existing_forgets_target() {
        let root = N::new_root(0);
        let x = root.child("x");
        let y = root.child("y");
        root.move_child("x", &root, "y");
        assert_eq!(x.path().unwrap(), "y");
        assert!(y.is_gone());
    }

    /// A registered child whose data does not match is replaced, not reused.
    #[test]
    fn child_where_checks_the_data() {
        let root = N::new_root(1);
        let a = root.child_where("a", |_| true, || 7);
        assert!(root.child_where("a", |d| *d == 7, || 7).same(&a));
        let b = root.child_where("a", |d| *d == 8, || 8);
        assert!(!b.same(&a));
        assert_eq!(*b.data(), 8);
        assert!(root.child_where("a", |d| *d == 8, || 8).same(&b));
    }
}
