//! Envoy's object layer: immutable, content-addressed objects on every host's own disks,
//! replicated across hosts.
//!
//! - [`ObjectId`]: an object's name, the BLAKE3 hash of its content.
//! - [`local`]: one host's store (segment log + redb index, verified reads, mutable records).
//! - [`wire`]: the storage dialect, framed like 9P, spoken between hosts and by tools.
//! - [`service`]: serves a store (and the cluster's replicated operations) on transport
//!   channels.
//! - [`client`]: one connection to a storage service, many requests in flight.
//! - [`cluster`]: placement by rendezvous hashing, quorum writes, reads with failover and
//!   repair, re-replication, scrub and GC across a static list of hosts.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod cluster;
mod error;
mod id;
pub mod local;
pub mod service;
pub mod wire;

pub use client::StorageClient;
pub use cluster::{Cluster, ClusterOptions, HostSpec, Membership};
pub use error::{ErrorCode, Result, StoreError};
pub use id::{BadObjectId, ObjectId};
pub use local::{
    CompactReport, LocalStats, LocalStore, ObjectInfo, PutObject, PutOutcome, Record,
    ScrubProgress, StoreOptions,
};
pub use service::{ServiceConfig, StorageService};
