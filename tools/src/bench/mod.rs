//! The parts of `envoy-bench` (see `src/bin/envoy-bench.rs`): measured runs against a 9P
//! server, the loopback ceiling, and the tree they read.

pub mod hist;
pub mod image;
pub mod loopback;
pub mod objstore;
pub mod prepare;
pub mod run;
pub mod util;
pub mod xensim;
