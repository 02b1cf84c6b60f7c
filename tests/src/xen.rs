//! A simulated Xen host for tests: one grant table and one event-channel table shared by
//! every simulated 9pfs device, and [`SimHost::connect`], which gives a 9P client a fresh
//! device (two rings of order 9, as Linux sets up) served by a real [`Server`].

use envoy::Server;
use envoy::vfs::FileSystem;
use envoy_transport::xen::{SimDevice, XenOptions};
use envoy_xen::sim::{SimEventTable, SimGrantTable};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use tokio::sync::watch;

/// The simulated hypervisor state shared by a test's devices.
pub struct SimHost {
    /// Granted pages and backend mappings.
    pub grants: SimGrantTable,
    /// Event channels.
    pub events: SimEventTable,
    next_domid: AtomicU16,
}

impl Default for SimHost {
    fn default() -> Self {
        Self::new()
    }
}

impl SimHost {
    /// An empty host.
    pub fn new() -> SimHost {
        SimHost {
            grants: SimGrantTable::new(),
            events: SimEventTable::new(),
            next_domid: AtomicU16::new(1),
        }
    }

    /// A new guest's device served by `server` until the client's stream closes or `stop`
    /// is raised; returns the client's end of the guest model.
    pub async fn connect<F: FileSystem>(
        &self,
        server: Arc<Server<F>>,
        stop: watch::Receiver<bool>,
    ) -> tokio::io::DuplexStream {
        let domid = self.next_domid.fetch_add(1, Ordering::Relaxed);
        SimDevice::new(
            &self.grants,
            &self.events,
            domid,
            2,
            9,
            XenOptions::default(),
        )
        .expect("simulated device")
        .spawn(|channel| server.serve(channel, stop))
    }
}
