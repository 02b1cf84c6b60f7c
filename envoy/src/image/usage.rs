//! What images hold and what they cost: logical sizes (`list`) and the space each image and
//! snapshot references, alone or shared with others (`du`).
//!
//! Identical blocks and unchanged tree nodes are one object however many roots reach them,
//! so an image's cost is not its files' sizes: `du` walks every root in the catalog (every
//! image's current root and every snapshot's) and, per object, notes which roots and images
//! reach it. What only one image reaches is what deleting it (and a GC) gives back; what
//! only one snapshot reaches is what deleting that snapshot gives back.

use std::collections::{HashMap, HashSet};

use envoy_objstore::ObjectId;
use serde::{Deserialize, Serialize};

use super::catalog::ImageInfo;
use super::inode::Inode;
use super::objects::Objects;
use super::walk::{Depth, Walk, Walker};

/// Files and their bytes in one root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// The sum of the regular files' sizes.
    pub logical: u64,
}

impl Contents {
    fn of<'a>(inodes: impl Iterator<Item = &'a Inode>) -> Contents {
        let mut c = Contents::default();
        for n in inodes {
            match n.mode & libc::S_IFMT {
                libc::S_IFREG => {
                    c.files += 1;
                    c.logical += n.size;
                }
                libc::S_IFDIR => c.dirs += 1,
                _ => {}
            }
        }
        c
    }
}

/// The files of the tree at `root` (its inode table only is read).
pub fn contents(store: &dyn Objects, root: &ObjectId) -> Contents {
    let walk = Walker::new(store, Depth::Inodes).walk(root);
    Contents::of(walk.inodes.values())
}

/// The space one image, or one snapshot, takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The image.
    pub image: String,
    /// The snapshot (`None`: the image as a whole — its current state and every snapshot).
    pub snapshot: Option<u64>,
    /// The files of its current root (or of the snapshot).
    pub contents: Contents,
    /// Distinct objects it reaches.
    pub objects: u64,
    /// Their bytes (each object once).
    pub referenced: u64,
    /// Bytes of the objects nothing else reaches: what deleting it and a GC give back (for an
    /// image: no other image; for a snapshot: no other root, its image's current one included).
    pub unique: u64,
    /// `referenced - unique`: bytes it shares with other images or snapshots.
    pub shared: u64,
    /// Objects it reaches that could not be read or sized (see `check`); not counted above.
    pub unreadable: u64,
}

/// Which roots and images reach one object.
struct Owners {
    size: u64,
    first_root: usize,
    more_roots: bool,
    first_image: usize,
    more_images: bool,
}

/// Usage of every image in `catalog` and each of its snapshots, measured against every root
/// in `catalog`; only the images `only` names (all if `None`) are returned, each followed by
/// its snapshots.
pub fn usage(store: &dyn Objects, catalog: &[ImageInfo], only: Option<&str>) -> Vec<Usage> {
    // Every root: (image index, snapshot).
    let mut roots: Vec<(usize, Option<u64>, ObjectId)> = Vec::new();
    for (i, info) in catalog.iter().enumerate() {
        roots.push((i, None, info.root));
        for (n, root) in &info.snapshots {
            roots.push((i, Some(*n), *root));
        }
    }
    let mut walker = Walker::new(store, Depth::Sizes);
    let walks: Vec<Walk> = roots.iter().map(|(_, _, root)| walker.walk(root)).collect();
    let mut owners: HashMap<ObjectId, Owners> = HashMap::new();
    for (r, walk) in walks.iter().enumerate() {
        let image = roots[r].0;
        for o in &walk.objects {
            let Some(size) = o.size else { continue };
            let e = owners.entry(o.id).or_insert(Owners {
                size,
                first_root: r,
                more_roots: false,
                first_image: image,
                more_images: false,
            });
            e.more_roots |= e.first_root != r;
            e.more_images |= e.first_image != image;
        }
    }
    let mut out = Vec::new();
    for (i, info) in catalog.iter().enumerate() {
        if only.is_some_and(|n| n != info.name) {
            continue;
        }
        let mine: Vec<usize> = (0..roots.len()).filter(|r| roots[*r].0 == i).collect();
        // The image as a whole: every object any of its roots reaches, once.
        let mut ids: HashSet<ObjectId> = HashSet::new();
        let mut unreadable: HashSet<ObjectId> = HashSet::new();
        for r in &mine {
            for o in &walks[*r].objects {
                if o.size.is_some() {
                    ids.insert(o.id);
                } else {
                    unreadable.insert(o.id);
                }
            }
        }
        let (mut referenced, mut unique) = (0, 0);
        for id in &ids {
            let o = &owners[id];
            referenced += o.size;
            if !o.more_images {
                unique += o.size;
            }
        }
        let current = mine
            .iter()
            .find(|r| roots[**r].1.is_none())
            .map(|r| Contents::of(walks[*r].inodes.values()))
            .unwrap_or_default();
        out.push(Usage {
            image: info.name.clone(),
            snapshot: None,
            contents: current,
            objects: ids.len() as u64,
            referenced,
            unique,
            shared: referenced - unique,
            unreadable: unreadable.len() as u64,
        });
        // Each snapshot: what only its root reaches.
        for r in mine.iter().filter(|r| roots[**r].1.is_some()) {
            let walk = &walks[*r];
            let (mut referenced, mut unique, mut objects, mut unreadable) = (0, 0, 0, 0);
            for o in &walk.objects {
                if o.size.is_none() {
                    unreadable += 1;
                    continue;
                }
                let own = &owners[&o.id];
                objects += 1;
                referenced += own.size;
                if !own.more_roots {
                    unique += own.size;
                }
            }
            out.push(Usage {
                image: info.name.clone(),
                snapshot: roots[*r].1,
                contents: Contents::of(walk.inodes.values()),
                objects,
                referenced,
                unique,
                shared: referenced - unique,
                unreadable,
            });
        }
    }
    out
}
