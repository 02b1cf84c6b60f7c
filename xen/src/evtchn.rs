//! Event channels: the doorbell each side rings after publishing ring indexes.
//!
//! One trait, two implementations: the real one (`/dev/xen/evtchn`: bind an interdomain port,
//! `notify`, read pending ports, write to unmask; to come with the grant mapping) and
//! [`SimEventChannel`], a pair of eventfds for tests. Both expose a descriptor that becomes
//! readable when the other side has rung, so the transport can wait on it with tokio's `AsyncFd`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// One end of an event channel.
pub trait EventChannel: Send + Sync {
    /// Ring the other end.
    fn notify(&self) -> io::Result<()>;
    /// A descriptor that is readable while a notification from the other end is pending.
    fn pending_fd(&self) -> RawFd;
    /// Consume pending notifications; `true` if there were any.
    fn ack(&self) -> io::Result<bool>;
}

/// A simulated event channel end: rings the peer's eventfd, waits on its own.
pub struct SimEventChannel {
    mine: Arc<OwnedFd>,
    peer: Arc<OwnedFd>,
}

fn eventfd() -> io::Result<Arc<OwnedFd>> {
    use rustix::event::{EventfdFlags, eventfd};
    Ok(Arc::new(eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?))
}

/// Two connected ends (backend, frontend).
pub fn sim_pair() -> io::Result<(SimEventChannel, SimEventChannel)> {
    let (a, b) = (eventfd()?, eventfd()?);
    Ok((
        SimEventChannel {
            mine: a.clone(),
            peer: b.clone(),
        },
        SimEventChannel { mine: b, peer: a },
    ))
}

impl EventChannel for SimEventChannel {
    fn notify(&self) -> io::Result<()> {
        match rustix::io::write(self.peer.as_fd(), &1u64.to_ne_bytes()) {
            // The counter is saturated: the peer has a notification pending anyway.
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn pending_fd(&self) -> RawFd {
        self.mine.as_raw_fd()
    }

    fn ack(&self) -> io::Result<bool> {
        let mut count = [0u8; 8];
        match rustix::io::read(self.mine.as_fd(), &mut count) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::AGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        use rustix::event::{PollFd, PollFlags, poll};
        // SAFETY: `fd` belongs to a channel the caller holds, so it stays open for this call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let mut fds = [PollFd::new(&borrowed, PollFlags::IN)];
        poll(
            &mut fds,
            Some(&rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        )
        .unwrap()
            == 1
    }

    #[test]
    fn notifications_reach_only_the_peer_and_coalesce() {
        let (backend, frontend) = sim_pair().unwrap();
        assert!(!readable(backend.pending_fd()) && !readable(frontend.pending_fd()));
        backend.notify().unwrap();
        backend.notify().unwrap();
        assert!(readable(frontend.pending_fd()), "the frontend was rung");
        assert!(!readable(backend.pending_fd()), "not the ringer");
        assert!(frontend.ack().unwrap());
        assert!(
            !frontend.ack().unwrap(),
            "two rings before an ack are one event"
        );
        assert!(!readable(frontend.pending_fd()));
        frontend.notify().unwrap();
        assert!(backend.ack().unwrap());
    }
}
