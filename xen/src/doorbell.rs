//! Awaiting an event channel: how the ring code sleeps until the other end rings.
//!
//! [`Doorbell`] registers a duplicate of an [`EventChannel`]'s pending descriptor with tokio's
//! reactor (a duplicate it owns, so the registration can never outlive or confuse the
//! channel's own descriptor). The discipline is "ack, look, sleep": consume the pending
//! notification with [`EventChannel::ack`], scan the ring, and only then await
//! [`Doorbell::rung`] — a ring that arrives after the ack makes the descriptor readable again,
//! so no wakeup is lost.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::evtchn::EventChannel;

/// Readiness of one event channel, for tokio.
pub struct Doorbell {
    ready: AsyncFd<OwnedFd>,
}

impl Doorbell {
    /// Watch `events` from the current tokio runtime.
    pub fn new<E: EventChannel + ?Sized>(events: &E) -> io::Result<Doorbell> {
        // SAFETY: `EventChannel::pending_fd` returns a descriptor that stays open while the
        // channel lives; `events` is borrowed for this whole statement, and we only duplicate it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(events.pending_fd()) };
        let owned = rustix::io::fcntl_dupfd_cloexec(borrowed, 0)?;
        // SAFETY: `owned` is a valid open descriptor that the AsyncFd takes ownership of, so it
        // stays open and refers to the same file description until the AsyncFd is dropped.
        let ready = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Doorbell { ready })
    }

    /// Wait until the other end has rung since the channel was last acked (returns at once if
    /// it already has). Cancel-safe.
    pub async fn rung(&self) -> io::Result<()> {
        let mut guard = self.ready.readable().await?;
        // Forget only the readiness tokio saw; a newer ring is kept by the reactor, and the
        // caller's next `ack` drains the channel itself.
        guard.clear_ready();
        Ok(())
    }
}
