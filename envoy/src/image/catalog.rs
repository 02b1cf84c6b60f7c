//! Which images exist and what their snapshots are, as records in the object layer.
//!
//! `image/NAME` holds an image's current root (moved by every commit); `image/NAME@N` holds
//! snapshot N's root, written once. A snapshot is therefore a commit plus one record, whatever
//! the image's size; a fork is a new `image/NEW` record naming a snapshot's root. Both keep
//! their root alive for GC through the record's refs.

use std::collections::BTreeMap;

use bytes::Bytes;
use envoy_objstore::{ObjectId, StoreError};
use nix::errno::Errno;

use super::fs::record_name;
use super::objects::Objects;

/// The record of snapshot `n` of `image`.
pub fn snapshot_record(image: &str, n: u64) -> String {
    format!("image/{image}@{n}")
}

/// Whether `name` can name an image (no `/` or `@`, not empty, not `.`/`..`, ≤ 255 bytes).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '@', '\0'])
}

fn eio(e: StoreError) -> Errno {
    tracing::error!(error = %e, "image catalog: object layer failed");
    Errno::EIO
}

/// The root a record names: an image record's value is its root's id, followed (while
/// changes since that root are only in the write-ahead log) by the log's head; a snapshot
/// record's value is its root's id.
pub fn root_of(value: &[u8]) -> Result<ObjectId, Errno> {
    value
        .get(..32)
        .and_then(ObjectId::try_from_slice)
        .filter(|_| value.len() == 32 || value.len() == 64)
        .ok_or(Errno::EIO)
}

/// One image and its snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Its name.
    pub name: String,
    /// Its current root.
    pub root: ObjectId,
    /// Its snapshots: number → root, ascending.
    pub snapshots: BTreeMap<u64, ObjectId>,
}

/// Record snapshot `n` of `image` as `root` (EEXIST if N is taken).
pub fn record_snapshot(
    store: &dyn Objects,
    image: &str,
    n: u64,
    root: &ObjectId,
) -> Result<(), Errno> {
    match store.cas(
        &snapshot_record(image, n),
        0,
        Bytes::copy_from_slice(&root.0),
        vec![*root],
    ) {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => Err(Errno::EEXIST),
        Err(e) => Err(eio(e)),
    }
}

/// The root of snapshot `n` of `image` (ENOENT if there is none).
pub fn snapshot_root(store: &dyn Objects, image: &str, n: u64) -> Result<ObjectId, Errno> {
    let rec = store
        .record(&snapshot_record(image, n))
        .map_err(eio)?
        .ok_or(Errno::ENOENT)?;
    root_of(&rec.value)
}

/// Fork: a new image `new` starting from snapshot `n` of `image` (ENOENT if the snapshot is
/// missing, EEXIST if `new` exists, EINVAL for a bad name).
pub fn fork(store: &dyn Objects, image: &str, n: u64, new: &str) -> Result<(), Errno> {
    if !valid_name(new) {
        return Err(Errno::EINVAL);
    }
    let root = snapshot_root(store, image, n)?;
    match store.cas(
        &record_name(new),
        0,
        Bytes::copy_from_slice(&root.0),
        vec![root],
    ) {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => Err(Errno::EEXIST),
        Err(e) => Err(eio(e)),
    }
}

/// Every image and its snapshots, by name, from the records `list` returns.
pub fn images(records: &[(String, Bytes)]) -> Vec<ImageInfo> {
    let mut by: BTreeMap<String, ImageInfo> = BTreeMap::new();
    let mut snaps: Vec<(String, u64, ObjectId)> = Vec::new();
    for (name, value) in records {
        let Some(rest) = name.strip_prefix("image/") else {
            continue;
        };
        match rest.split_once('@') {
            None => {
                if let Ok(root) = root_of(value) {
                    by.insert(
                        rest.to_owned(),
                        ImageInfo {
                            name: rest.to_owned(),
                            root,
                            snapshots: BTreeMap::new(),
                        },
                    );
                }
            }
            Some((image, n)) => {
                if let (Ok(n), Ok(root)) = (n.parse(), root_of(value)) {
                    snaps.push((image.to_owned(), n, root));
                }
            }
        }
    }
    for (image, n, root) in snaps {
        if let Some(i) = by.get_mut(&image) {
            i.snapshots.insert(n, root);
        }
    }
    by.into_values().collect()
}
