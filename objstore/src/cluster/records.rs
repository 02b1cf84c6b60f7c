//! Mutable records across the cluster: the newest of the replicas' copies wins (and is
//! copied to stale ones); compare-and-set writes the next version to a majority.

use bytes::Bytes;

use super::{Cluster, Host, blocking, quorum, record_key};
use crate::local::Record;
use crate::{ObjectId, Result, StoreError};

impl Cluster {
    /// The newest copy of a record among its replicas (stale replicas are brought up to it).
    pub async fn record(&self, name: &str) -> Result<Option<Record>> {
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

    /// Compare-and-set a record on its replicas: version `expected + 1` if the newest copy is
    /// at `expected` (0: absent). Succeeds on a majority.
    pub async fn cas_record(
        &self,
        name: &str,
        expected: u64,
        value: Bytes,
        refs: Vec<ObjectId>,
    ) -> Result<u64> {
        let current = self.record(name).await?.map_or(0, |r| r.version);
        if current != expected {
            return Err(StoreError::Conflict {
                name: name.into(),
                expected,
                current,
            });
        }
        let record = Record {
            version: expected + 1,
            value,
            refs,
        };
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
                op: format!("write record {name:?}"),
                acks,
                needed: quorum(r),
                failures: failures.join("; "),
            })
        }
    }

    async fn record_on(&self, host: &Host, name: &str) -> Result<Option<Record>> {
        match host {
            Host::Me => {
                let (local, name) = (self.local.clone(), name.to_owned());
                blocking(move || local.record(&name)).await
            }
            Host::Peer(p) => {
                let name = name.to_owned();
                self.on_peer(p, |c| async move { c.record(&name, 0).await })
                    .await
            }
        }
    }

    async fn store_record_on(&self, host: &Host, name: &str, record: Record) -> Result<bool> {
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

    /// Every record on every live host, the newest copy of each (hosts that do not answer
    /// are skipped: their records have copies elsewhere).
    pub async fn all_records(&self) -> Result<Vec<(String, Record)>> {
        let local = self.local.clone();
        let mut all: std::collections::BTreeMap<String, Record> = blocking(move || local.records())
            .await?
            .into_iter()
            .collect();
        for peer in self.peers() {
            let Ok(records) = self
                .on_peer(&peer, |c| async move { c.records().await })
                .await
            else {
                continue;
            };
            for (name, r) in records {
                match all.get(&name) {
                    Some(have) if have.version >= r.version => {}
                    _ => {
                        all.insert(name, r);
                    }
                }
            }
        }
        Ok(all.into_iter().collect())
    }
}
