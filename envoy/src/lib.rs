//! Envoy's 9P server: sessions, the file-system interface, and its backends.
//!
//! Layers, top down: [`server`] runs connections (many requests in flight, flush, version
//! resets) over any `envoy_transport` channel; [`session`] gives each 9P2000 / 9P2000.u /
//! 9P2000.L request its meaning against a [`vfs::FileSystem`]; [`export`] is the backend that
//! serves a host directory, confined. The wire format is `envoy_protocol`'s.
//!
//! Entry points: [`ExportFs::new`], [`Server::new`], [`Server::serve`], [`serve_listener`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bufpool;
pub mod export;
pub mod image;
pub mod nametree;
pub mod paths;
pub mod server;
pub mod session;
pub mod vfs;
pub mod workers;

pub use export::ExportFs;
pub use server::{Ended, Server, ServerConfig, serve_listener};
pub use session::SessionLimits;
