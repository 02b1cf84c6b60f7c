//! What the image backend needs of the object layer: put and get immutable objects, and read
//! and compare-and-set the records that name images' roots.
//!
//! A trait, so that an image runs on one host's store (`LocalStore`, synchronous) or on the
//! replicated cluster (behind an async runtime) without knowing which.

use bytes::Bytes;
use envoy_objstore::{LocalStore, ObjectId, PutObject, Record, StoreError};

/// Immutable, content-addressed objects.
pub trait Objects: Send + Sync {
    /// Store `data` (which refers to `refs`); returns its id once durable.
    fn put(&self, data: Bytes, refs: Vec<ObjectId>) -> Result<ObjectId, StoreError>;
    /// The object's content, verified.
    fn get(&self, id: &ObjectId) -> Result<Bytes, StoreError>;
    /// A record, if it exists.
    fn record(&self, name: &str) -> Result<Option<Record>, StoreError>;
    /// Every record's name and value (the image catalog is read from them).
    fn records(&self) -> Result<Vec<(String, Bytes)>, StoreError>;
    /// Write `value` (keeping `refs` alive) as version `expected + 1` if the record is at
    /// `expected` (0: absent); durable on return.
    fn cas(
        &self,
        name: &str,
        expected: u64,
        value: Bytes,
        refs: Vec<ObjectId>,
    ) -> Result<u64, StoreError>;
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

    fn record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        LocalStore::record(self, name)
    }

    fn records(&self) -> Result<Vec<(String, Bytes)>, StoreError> {
        Ok(LocalStore::records(self)?
            .into_iter()
            .map(|(n, r)| (n, r.value))
            .collect())
    }

    fn cas(
        &self,
        name: &str,
        expected: u64,
        value: Bytes,
        refs: Vec<ObjectId>,
    ) -> Result<u64, StoreError> {
        self.cas_record(name, expected, value, refs)
    }
}
