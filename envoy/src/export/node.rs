//! The export's walked names (the shared [`crate::nametree`], each node able to hold its
//! directory's descriptor): what an unopened fid points at, without a descriptor.
//!
//! A node is resolved to a descriptor only for the duration of an operation (so a guest that
//! walks a million files costs memory, not descriptors), except for a bounded number of
//! directories whose descriptors [`DirCache`] keeps. Renames and unlinks done through this export
//! update every fid naming the object; changes made behind the export's back (on the host) are
//! not seen, and paths then fail with ENOENT.

use crate::nametree::{self, NodeData, WeakNode};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

/// A walked location in the export. Cheap to clone.
pub type Node = nametree::Node<DirSlot>;

/// For directories: a confined `O_PATH` descriptor, while [`DirCache`] keeps one.
#[derive(Default)]
pub struct DirSlot(Mutex<Option<Arc<OwnedFd>>>);

impl NodeData for DirSlot {
    /// A removed directory loses its descriptor.
    fn forgotten(&self) {
        self.0.lock().unwrap().take();
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
    order: Mutex<VecDeque<WeakNode<DirSlot>>>,
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
        node.data().0.lock().unwrap().clone()
    }

    /// Keep `fd` as `node`'s descriptor (evicting the oldest when full); returns the one kept.
    pub fn insert(&self, node: &Node, fd: OwnedFd) -> Arc<OwnedFd> {
        let fd = Arc::new(fd);
        {
            let mut slot = node.data().0.lock().unwrap();
            if let Some(existing) = slot.as_ref() {
                return existing.clone();
            }
            *slot = Some(fd.clone());
        }
        let mut order = self.order.lock().unwrap();
        order.push_back(node.downgrade());
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front().and_then(|w| w.upgrade()) {
                old.data().0.lock().unwrap().take();
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
            .filter(|w| {
                w.upgrade()
                    .is_some_and(|n| n.data().0.lock().unwrap().is_some())
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_cache_is_bounded_and_follows_removal() {
        let cache = DirCache::new(2);
        let root = Node::new_root(DirSlot::default());
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
}
