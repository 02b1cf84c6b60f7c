//! What the image backend needs of the object layer: put and get immutable objects, and read,
//! compare-and-set and delete the records that name images' roots.
//!
//! A trait, so that an image runs on one host's store (`LocalStore`, synchronous) or on the
//! replicated cluster (behind an async runtime) without knowing which.

use std::sync::Arc;

use bytes::Bytes;
use envoy_objstore::{Cluster, LocalStore, ObjectId, PutObject, Record, StoreError};

/// A compare-and-set of [`Objects::cas_many`]: record name, expected version, value, refs.
pub type RecordWrite = (String, u64, Bytes, Vec<ObjectId>);

/// Immutable, content-addressed objects.
pub trait Objects: Send + Sync {
    /// Store `data` (which refers to `refs`); returns its id once durable.
    fn put(&self, data: Bytes, refs: Vec<ObjectId>) -> Result<ObjectId, StoreError>;
    /// Store many objects (a commit's blocks and nodes), all durable on return; as fast as
    /// the store allows (one group commit locally, many in flight on the cluster).
    fn put_many(&self, objects: Vec<PutObject>) -> Result<(), StoreError>;
    /// The object's content, verified.
    fn get(&self, id: &ObjectId) -> Result<Bytes, StoreError>;
    /// The object's content as stored, verified now: never from a cache (what a check of the
    /// store needs).
    fn get_stored(&self, id: &ObjectId) -> Result<Bytes, StoreError> {
        self.get(id)
    }
    /// The object's size, without reading it where the store can tell (`NotFound` if it is
    /// missing).
    fn size(&self, id: &ObjectId) -> Result<u64, StoreError>;
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
    ) -> Result<u64, StoreError> {
        self.cas_many(vec![(name.to_owned(), expected, value, refs)])?
            .pop()
            .ok_or_else(|| StoreError::Refused("compare-and-set gave no answer".to_owned()))
    }
    /// Several compare-and-sets (name, expected version, value, refs) at once, durable on
    /// return; the new versions. One transaction on a single store (all or none); on the
    /// cluster, whose records live on different hosts, they go out together and each stands
    /// alone.
    fn cas_many(&self, writes: Vec<RecordWrite>) -> Result<Vec<u64>, StoreError>;
    /// Delete the record if it is at version `expected` (compare-and-set); durable on return.
    /// A deleted record reads as absent everywhere, and a stale replica cannot bring it back.
    fn delete_record(&self, name: &str, expected: u64) -> Result<u64, StoreError>;
}

impl Objects for LocalStore {
    fn put(&self, data: Bytes, refs: Vec<ObjectId>) -> Result<ObjectId, StoreError> {
        let object = PutObject::new(data, refs);
        let id = object.id();
        LocalStore::put(self, object)?;
        Ok(id)
    }

    fn put_many(&self, objects: Vec<PutObject>) -> Result<(), StoreError> {
        LocalStore::put_many(self, objects)
            .into_iter()
            .try_for_each(|r| r.map(drop))
    }

    fn get(&self, id: &ObjectId) -> Result<Bytes, StoreError> {
        LocalStore::get(self, id)
    }

    fn size(&self, id: &ObjectId) -> Result<u64, StoreError> {
        Ok(self.info(id)?.ok_or(StoreError::NotFound(*id))?.size)
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

    fn cas_many(&self, writes: Vec<RecordWrite>) -> Result<Vec<u64>, StoreError> {
        self.cas_records(writes)
    }

    fn delete_record(&self, name: &str, expected: u64) -> Result<u64, StoreError> {
        LocalStore::delete_record(self, name, expected)
    }
}

/// Objects a commit keeps in flight to each peer at once.
const PUTS_IN_FLIGHT: usize = 32;

/// The replicated cluster as an image's object layer: every put is on R hosts (a quorum)
/// before it returns, reads fail over between replicas, records are replicated. The cluster
/// is async; the image backend is called on the server's worker threads (and sometimes on
/// the runtime's), so each call blocks on the runtime it was given.
pub struct ClusterObjects {
    cluster: Arc<Cluster>,
    runtime: tokio::runtime::Handle,
}

impl ClusterObjects {
    /// Objects through `cluster`, driven on `runtime` (a multi-threaded runtime).
    pub fn new(cluster: Arc<Cluster>, runtime: tokio::runtime::Handle) -> ClusterObjects {
        ClusterObjects { cluster, runtime }
    }

    fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        if tokio::runtime::Handle::try_current().is_ok() {
            // On one of the runtime's own threads: let it run other tasks meanwhile.
            tokio::task::block_in_place(|| self.runtime.block_on(f))
        } else {
            self.runtime.block_on(f)
        }
    }
}

impl Objects for ClusterObjects {
    fn put(&self, data: Bytes, refs: Vec<ObjectId>) -> Result<ObjectId, StoreError> {
        let object = PutObject::new(data, refs);
        let id = object.id();
        self.run(self.cluster.put(object))?;
        Ok(id)
    }

    fn put_many(&self, objects: Vec<PutObject>) -> Result<(), StoreError> {
        self.run(self.cluster.put_many(objects, PUTS_IN_FLIGHT))
    }

    fn get(&self, id: &ObjectId) -> Result<Bytes, StoreError> {
        // A worker thread reads this host's copy itself (verified, as the cluster would):
        // no hop through the runtime and its blocking pool for every block. A copy missing or
        // failing here takes the cluster's path (other replicas, repair, quarantine).
        if tokio::runtime::Handle::try_current().is_err()
            && let Ok(data) = self.cluster.local().get(id)
        {
            return Ok(data);
        }
        self.run(self.cluster.get(id, 0, u64::MAX)).map(|(_, b)| b)
    }

    fn size(&self, id: &ObjectId) -> Result<u64, StoreError> {
        // This host's index when it holds a copy; else an empty read from a replica.
        match self.cluster.local().info(id)? {
            Some(info) => Ok(info.size),
            None => self.run(self.cluster.get(id, 0, 0)).map(|(size, _)| size),
        }
    }

    fn record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        self.run(self.cluster.record(name))
    }

    fn records(&self) -> Result<Vec<(String, Bytes)>, StoreError> {
        Ok(self
            .run(self.cluster.all_records())?
            .into_iter()
            .map(|(n, r)| (n, r.value))
            .collect())
    }

    fn cas_many(&self, writes: Vec<RecordWrite>) -> Result<Vec<u64>, StoreError> {
        self.run(async {
            let mut running = tokio::task::JoinSet::new();
            for (i, (name, expected, value, refs)) in writes.into_iter().enumerate() {
                let cluster = self.cluster.clone();
                running.spawn(async move {
                    (i, cluster.cas_record(&name, expected, value, refs).await)
                });
            }
            let mut versions = vec![0; running.len()];
            while let Some(done) = running.join_next().await {
                let (i, r) =
                    done.map_err(|e| StoreError::Refused(format!("record task failed: {e}")))?;
                versions[i] = r?;
            }
            Ok(versions)
        })
    }

    fn delete_record(&self, name: &str, expected: u64) -> Result<u64, StoreError> {
        self.run(self.cluster.delete_record(name, expected))
    }
}
