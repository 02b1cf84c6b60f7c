//! The `--xen-sim` target: envoyd's server in this process, reached through simulated Xen 9pfs
//! rings (by default two rings of order 9 per connection, as Linux sets up, with a model of
//! Linux's frontend in between).
//!
//! It measures what the ring transport adds and what many requests in flight per ring are
//! worth: `--one-request-per-ring` makes the same server take a ring's next request only after
//! answering the previous one, as QEMU's and xen-9pfsd's backends do.

use anyhow::{Context, Result};
use envoy::{ExportFs, Server, ServerConfig};
use envoy_transport::xen::{SimDevice, XenOptions};
use envoy_xen::sim::{SimEventTable, SimGrantTable};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use tokio::io::DuplexStream;
use tokio::sync::watch;

/// A simulated Xen host serving one export.
pub struct XenSim {
    server: Arc<Server<ExportFs>>,
    rings: usize,
    grants: SimGrantTable,
    events: SimEventTable,
    options: XenOptions,
    next_domid: AtomicU16,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for XenSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenSim")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl XenSim {
    /// Serve `export` (read-write) with the default server configuration, `rings` rings per
    /// device, and every file read delayed by `read_delay` (a model of slow storage).
    pub fn new(
        export: &Path,
        rings: usize,
        one_request_per_ring: bool,
        read_delay: Option<std::time::Duration>,
    ) -> Result<XenSim> {
        let fs = ExportFs::new(export, false)
            .with_context(|| format!("exporting {}", export.display()))?;
        let mut config = ServerConfig::default();
        config.session.debug_read_delay = read_delay;
        Ok(XenSim {
            server: Server::new(Arc::new(fs), config),
            rings,
            grants: SimGrantTable::new(),
            events: SimEventTable::new(),
            options: XenOptions {
                one_request_per_ring,
            },
            next_domid: AtomicU16::new(1),
            stop: watch::channel(false).0,
        })
    }

    /// A new simulated guest device; the client's stream.
    pub fn connect(&self) -> Result<DuplexStream> {
        let domid = self.next_domid.fetch_add(1, Ordering::Relaxed);
        let device = SimDevice::new(
            &self.grants,
            &self.events,
            domid,
            self.rings,
            9,
            self.options,
        )
        .context("setting up a simulated Xen device")?;
        let server = self.server.clone();
        let stop = self.stop.subscribe();
        Ok(device.spawn(|channel| server.serve(channel, stop)))
    }
}
