//! Envoy's operator and test tools.
//!
//! - [`client`]: an async 9P client (all three dialects, many requests in flight) used by
//!   the integration tests, the `envoy-9p` debug command and benchmarks.
//! - [`xl`]: hot-plugging 9pfs shares into running Xen guests through xenstore, as libxl
//!   writes them (the `envoy-xl` command).
//!
//! The binaries live in `src/bin/`: `envoy-9p` lists, reads, writes and removes files on a
//! running server from the command line; `envoy-xl` attaches, detaches and lists Xen 9pfs
//! devices.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod xl;
