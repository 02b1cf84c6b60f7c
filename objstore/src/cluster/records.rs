//! Mutable records across the cluster: the newest of the replicas' copies wins (and is
//! copied to stale ones); compare-and-set and delete write the next version to a majority.
//!
//! A deletion is a version too — a tombstone — so the same newest-wins rule that updates a
//! stale replica also deletes its copy: a replica that was down during a delete cannot bring
//! the record back when it returns.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{Cluster, Host, blocking, quorum, record_key};
use crate::local::Record;
use crate::{ObjectId, Result, StoreError};

/// The version a write must expect of `copy` (0: absent or deleted), and the version the
/// write gets (one past the copy's, a tombstone's included).
fn versions(copy: Option<&Record>) -> (u64, u64) {
    let current = copy.filter(|r| !r.deleted).map_or(0, |r| r.version);
    (current, copy.map_or(0, |r| r.version) + 1)
}

impl Cluster {
    /// The newest live copy of a record among its replicas (stale replicas are brought up to
    /// it); `None` if absent or deleted.
    pub async fn record(&self, name: &str) -> Result<Option<Record>> {
        Ok(self.newest(name).await?.filter(|r| !r.deleted))
    }

    /// The newest copy of a record among its replicas, a tombstone included; stale replicas
    /// are brought up to it.
    async fn newest(&self, name: &str) -> Result<Option<Record>> {
        let placement = self.placement(&record_key(name));
        let r = self.replicas().min(placement.len());
        let mut copies: Vec<(Host, Option<Record>)> = Vec::new();
        let mut failures = Vec::new();
        for host in placement.into_iter().take(r) {
            match self.record_on(&host, name).await {
                Ok(rec) => copies.push((host, rec)),
                Err(e) => failures.push(format!("{}: {e}", self.name(&host))),
            }
        }
        if copies.is_empty() {
            return Err(StoreError::Quorum {
                op: format!("read record {name:?}"),
                acks: 0,
                needed: 1,
                failures: failures.join("; "),
            });
        }
        let newest = copies
            .iter()
            .filter_map(|(_, r)| r.clone())
            .max_by_key(|r| r.version);
        if let Some(newest) = &newest {
            for (host, rec) in &copies {
                if rec.as_ref().is_none_or(|r| r.version < newest.version) {
                    let _ = self.store_record_on(host, name, newest.clone()).await;
                }
            }
        }
        Ok(newest)
    }

    /// Compare-and-set a record on its replicas: written if the newest copy is at `expected`
    /// (0: absent or deleted). Succeeds on a majority; returns the new version.
    pub async fn cas_record(
        &self,
        name: &str,
        expected: u64,
        value: Bytes,
        refs: Vec<ObjectId>,
    ) -> Result<u64> {
        let (current, next) = versions(self.newest(name).await?.as_ref());
        if current != expected {
            return Err(StoreError::Conflict {
                name: name.into(),
                expected,
                current,
            });
        }
        let record = Record {
            version: next,
            value,
            refs,
            deleted: false,
        };
        self.write_record(name, record, expected).await
    }

    /// Delete a record at version `expected` on its replicas: a tombstone is written to every
    /// replica (each stores it only if newer). Succeeds on a majority; returns the tombstone's
    /// version. `Conflict` if the newest copy is not at `expected` (a missing record is at 0).
    pub async fn delete_record(&self, name: &str, expected: u64) -> Result<u64> {
        let (current, next) = versions(self.newest(name).await?.as_ref());
        if current != expected || current == 0 {
            return Err(StoreError::Conflict {
                name: name.into(),
                expected,
                current,
            });
        }
        self.write_record(name, Record::tombstone(next), expected)
            .await
    }

    /// Store `record` on the record's R replicas; a majority must take it.
    async fn write_record(&self, name: &str, record: Record, expected: u64) -> Result<u64> {
        let placement = self.placement(&record_key(name));
        let r = self.replicas().min(placement.len());
        let mut acks = 0;
        let mut failures = Vec::new();
        for host in placement.into_iter().take(r) {
            match self.store_record_on(&host, name, record.clone()).await {
                Ok(true) => acks += 1,
                Ok(false) => {
                    return Err(StoreError::Conflict {
                        name: name.into(),
                        expected,
                        current: expected + 1,
                    });
                }
                Err(e) => failures.push(format!("{}: {e}", self.name(&host))),
            }
        }
        if acks >= quorum(r) {
            Ok(record.version)
        } else {
            Err(StoreError::Quorum {
                op: format!(
                    "{} record {name:?}",
                    if record.deleted { "delete" } else { "write" }
                ),
                acks,
                needed: quorum(r),
                failures: failures.join("; "),
            })
        }
    }

    /// A host's copy of a record, a tombstone included.
    async fn record_on(&self, host: &Host, name: &str) -> Result<Option<Record>> {
        match host {
            Host::Me => {
                let (local, name) = (self.local.clone(), name.to_owned());
                blocking(move || local.record_copy(&name)).await
            }
            Host::Peer(p) => {
                let name = name.to_owned();
                self.on_peer(p, |c| async move { c.record(&name, 0).await })
                    .await
            }
        }
    }

    pub(super) async fn store_record_on(
        &self,
        host: &Host,
        name: &str,
        record: Record,
    ) -> Result<bool> {
        match host {
            Host::Me => {
                let (local, name) = (self.local.clone(), name.to_owned());
                blocking(move || local.store_record(&name, record)).await
            }
            Host::Peer(p) => {
                let name = name.to_owned();
                self.on_peer(p, |c| async move { c.store_record(&name, record).await })
                    .await
            }
        }
    }

    /// Every copy of every record a host holds, tombstones included.
    pub(super) async fn record_copies_on(&self, host: &Host) -> Result<Vec<(String, Record)>> {
        match host {
            Host::Me => {
                let local = self.local.clone();
                blocking(move || local.record_copies()).await
            }
            Host::Peer(p) => self.on_peer(p, |c| async move { c.records().await }).await,
        }
    }

    /// The newest version of every record in `copies` (each host's), tombstones included;
    /// every host holding an older copy is brought up to it (so a tombstone reaches a replica
    /// that missed the delete).
    pub(super) async fn reconcile(
        &self,
        copies: Vec<(Host, Vec<(String, Record)>)>,
    ) -> BTreeMap<String, Record> {
        let mut newest: BTreeMap<String, Record> = BTreeMap::new();
        for (_, records) in &copies {
            for (name, r) in records {
                if newest.get(name).is_none_or(|have| have.version < r.version) {
                    newest.insert(name.clone(), r.clone());
                }
            }
        }
        for (host, records) in &copies {
            for (name, r) in records {
                if let Some(n) = newest.get(name)
                    && n.version > r.version
                {
                    let _ = self.store_record_on(host, name, n.clone()).await;
                }
            }
        }
        newest
    }

    /// Every live record on every live host, the newest copy of each (hosts that do not
    /// answer are skipped: their records have copies elsewhere). A record deleted on any
    /// host is left out, whatever older copies others hold.
    pub async fn all_records(&self) -> Result<Vec<(String, Record)>> {
        let mut copies = vec![(Host::Me, self.record_copies_on(&Host::Me).await?)];
        for peer in self.peers() {
            let host = Host::Peer(peer);
            if let Ok(records) = self.record_copies_on(&host).await {
                copies.push((host, records));
            }
        }
        Ok(self
            .reconcile(copies)
            .await
            .into_iter()
            .filter(|(_, r)| !r.deleted)
            .collect())
    }
}
