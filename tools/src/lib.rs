//! Envoy's operator and test tools.
//!
//! - [`client`]: an async 9P client (all three dialects, many requests in flight) used by
//!   the integration tests, the `envoy-9p` debug command and benchmarks.
//!
//! The binaries live in `src/bin/`: `envoy-9p` lists, reads, writes and removes files on a
//! running server from the command line.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
