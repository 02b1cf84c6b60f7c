//! Verified objects kept in envoyd's memory, shared by every image it serves.
//!
//! Objects are immutable and named by their hash, so content that was verified once (read
//! from the store and hashed) can be served again without the store or the hash: hot reads
//! cost what the export's page cache costs them, and a base image shared by many guests'
//! forks is cached once. Bounded by bytes; the policy is scan resistant (a guest streaming a
//! big file does not flush everyone's hot blocks). Writes do not fill it (see `put_many`).
//!
//! Checks of what is *stored* ([`Objects::get_stored`]: `envoy-xl check`) bypass it.

use std::sync::Arc;

use bytes::Bytes;
use envoy_objstore::{ObjectId, PutObject, Record, StoreError};

use super::objects::{Objects, RecordWrite};

/// Objects larger than this are not cached (blocks and tree nodes are far smaller).
const MAX_CACHED: usize = 1 << 20;

/// Assumed size of an average cached object, to size the cache's table.
const TYPICAL: u64 = 64 << 10;

/// An entry's weight: its bytes (at least one, as quick_cache ignores weightless entries
/// when evicting).
#[derive(Clone, Copy, Debug)]
struct ByLength;

impl quick_cache::Weighter<ObjectId, Bytes> for ByLength {
    fn weight(&self, _id: &ObjectId, data: &Bytes) -> u64 {
        data.len().max(1) as u64
    }
}

/// An object layer with a cache of verified objects in front (see the module docs).
pub struct CachedObjects {
    inner: Arc<dyn Objects>,
    cache: quick_cache::sync::Cache<ObjectId, Bytes, ByLength>,
}

impl CachedObjects {
    /// `inner` with up to `bytes` of its objects kept in memory.
    pub fn new(inner: Arc<dyn Objects>, bytes: u64) -> CachedObjects {
        let items = (bytes / TYPICAL).max(16) as usize;
        CachedObjects {
            inner,
            cache: quick_cache::sync::Cache::with_weighter(items, bytes.max(1), ByLength),
        }
    }

    /// Bytes of objects held.
    pub fn cached_bytes(&self) -> u64 {
        self.cache.weight()
    }

    fn keep(&self, id: ObjectId, data: &Bytes) {
        if data.len() <= MAX_CACHED {
            self.cache.insert(id, data.clone());
        }
    }
}

impl Objects for CachedObjects {
    // What is written is not kept: an image's blocks may be slices of request frames, which
    // the cache would hold (and weigh at their length, not the frame's). Reads fill it.
    fn put(&self, data: Bytes, refs: Vec<ObjectId>) -> Result<ObjectId, StoreError> {
        self.inner.put(data, refs)
    }

    fn put_many(&self, objects: Vec<PutObject>) -> Result<(), StoreError> {
        self.inner.put_many(objects)
    }

    fn get(&self, id: &ObjectId) -> Result<Bytes, StoreError> {
        if let Some(data) = self.cache.get(id) {
            return Ok(data);
        }
        let data = self.inner.get(id)?;
        self.keep(*id, &data);
        Ok(data)
    }

    fn get_stored(&self, id: &ObjectId) -> Result<Bytes, StoreError> {
        self.inner.get_stored(id)
    }

    fn size(&self, id: &ObjectId) -> Result<u64, StoreError> {
        self.inner.size(id)
    }

    fn record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        self.inner.record(name)
    }

    fn records(&self) -> Result<Vec<(String, Bytes)>, StoreError> {
        self.inner.records()
    }

    fn cas_many(&self, writes: Vec<RecordWrite>) -> Result<Vec<u64>, StoreError> {
        self.inner.cas_many(writes)
    }

    fn delete_record(&self, name: &str, expected: u64) -> Result<u64, StoreError> {
        self.inner.delete_record(name, expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_skip_the_store_and_checks_do_not() {
        let (dir, local) = super::super::test_store();
        let cached = CachedObjects::new(local.clone(), 1 << 20);
        let data = Bytes::from(vec![7u8; 4096]);
        let id = cached.put(data.clone(), Vec::new()).unwrap();
        assert_eq!(cached.cached_bytes(), 0, "writes are not kept");
        assert_eq!(cached.get(&id).unwrap(), data);
        assert_eq!(cached.cached_bytes(), 4096, "reads are");
        // Corrupt the stored copy behind the cache's back (flip a byte of its segment).
        let mut flipped = false;
        for entry in walk_files(dir.path()) {
            let mut bytes = std::fs::read(&entry).unwrap();
            if let Some(at) = bytes.windows(4096).position(|w| w == &data[..]) {
                bytes[at + 100] ^= 1;
                std::fs::write(&entry, bytes).unwrap();
                flipped = true;
            }
        }
        assert!(flipped, "the object's bytes were not found in the store");
        // The cache serves the verified content; a check of the stored copy sees the damage.
        assert_eq!(cached.get(&id).unwrap(), data);
        assert!(matches!(
            cached.get_stored(&id),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn bounded_by_bytes() {
        let (_dir, local) = super::super::test_store();
        let cached = CachedObjects::new(local, 256 << 10);
        for i in 0..64u8 {
            let id = cached
                .put(Bytes::from(vec![i; 16 << 10]), Vec::new())
                .unwrap();
            cached.get(&id).unwrap();
        }
        assert!(
            cached.cached_bytes() <= 256 << 10,
            "{}",
            cached.cached_bytes()
        );
        // Objects too big to cache are stored and read, never held.
        let big = Bytes::from(vec![1u8; MAX_CACHED + 1]);
        let id = cached.put(big.clone(), Vec::new()).unwrap();
        assert_eq!(cached.get(&id).unwrap(), big);
        assert!(cached.cached_bytes() <= 256 << 10);
    }

    fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
