//! What the image backend needs of the object layer: put and get immutable objects.
//!
//! A trait, so that an image runs on one host's store (`LocalStore`, synchronous) or on the
//! replicated cluster (behind an async runtime) without knowing which.

use bytes::Bytes;
use envoy_objstore::{LocalStore, ObjectId, PutObject, StoreError};

/// Immutable, content-addressed objects.
pub trait Objects: Send + Sync {
    /// Store `data` (which refers to `refs`); returns its id once durable.
    fn put(&self, data: Bytes, refs: Vec<ObjectId>) -> Result<ObjectId, StoreError>;
    /// The object's content, verified.
    fn get(&self, id: &ObjectId) -> Result<Bytes, StoreError>;
}

impl Objects for LocalStore {
    fn put(&self, data: Bytes, refs: Vec<ObjectId>) -> Result<ObjectId, StoreError> {
        let object = PutObject::new(data, refs);
        let id = object.id;
        LocalStore::put(self, object)?;
        Ok(id)
    }

    fn get(&self, id: &ObjectId) -> Result<Bytes, StoreError> {
        LocalStore::get(self, id)
    }
}
