//! The `image` backend: Envoy file systems on the object layer.
//!
//! An image's state is a tree of immutable, content-addressed objects, so a snapshot is a root
//! id and a fork is a new image starting from one. The pieces: [`objects`] (what the
//! backend needs of the object layer), [`btree`] (the copy-on-write tree every part of an
//! image — inode table, directories, block maps — is made of), [`inode`] (what the trees
//! hold), [`engine`] (one image's working copy: per-block copy on write, commit to a root) and
//! [`fs`] (an image served through the `FileSystem` trait: the owner's write path — syncs
//! append to the write-ahead log of [`wal`], batch commits fold it into new roots — with
//! [`locks`] for its byte-range locks) and
//! [`catalog`] (images and their snapshots as records; snapshot = commit + one record, fork =
//! a new image record naming a snapshot's root) and [`namespace`] (the 2006 interface: every
//! image a directory with `current`, numbered snapshots and a `snapshot` link; `ln -s`
//! snapshots and forks). Administration: [`registry`] (one owner per image in envoyd, shared
//! by 9P sessions and admin operations), [`walk`] (every object a root reaches), [`usage`]
//! (`list` and `du` figures), [`check`] (an image's integrity), [`admin`] (the operations of
//! `envoy-xl image` and `envoy-xl check`) and [`control`] (the admin socket they travel on).

pub mod admin;
pub mod block;
pub mod btree;
pub mod cache;
pub mod catalog;
pub mod check;
pub mod control;
pub mod engine;
pub mod fs;
pub mod inode;
pub mod locks;
pub mod namespace;
pub mod objects;
pub mod registry;
pub mod usage;
pub mod wal;
pub mod walk;

/// A local store in a temporary directory, for the image modules' unit tests.
#[cfg(test)]
fn test_store() -> (
    tempfile::TempDir,
    std::sync::Arc<envoy_objstore::LocalStore>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = envoy_objstore::LocalStore::open(dir.path(), Default::default()).expect("store");
    (dir, std::sync::Arc::new(store))
}
