//! Watches: a stream of "this path changed" events for a subtree.
//!
//! xenstored fires a watch once right after registering it (with the watched path itself), then
//! once per change at or below the path — a write, mkdir, rm or set_perms — naming the node that
//! changed (never the value; read it). `rm` of a subtree fires for the removed node. xenstored may
//! merge an event with an identical one still waiting to be sent.
//!
//! Each watch has its own bounded queue filled by the connection's reader, which never waits:
//! when a watcher falls [`WATCH_QUEUE_CAPACITY`] events behind, further events are dropped and
//! the watcher gets one [`WatchEvent::Overflowed`] after the events still queued, meaning "rescan
//! what you watch". Dropping a [`Watch`] sends `UNWATCH` without waiting for the answer.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::Xenstore;
use super::wire::MsgType;

/// Events a watch holds before it overflows.
pub const WATCH_QUEUE_CAPACITY: usize = 4096;

/// What a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// This node (at or below the watched path) changed, or — the first event — the watch was
    /// registered (then it is the watched path itself).
    Changed(String),
    /// Events were dropped because the watcher fell behind: rescan the watched subtree.
    Overflowed,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<String>,
    overflowed: bool,
    closed: bool,
}

/// The per-watch queue between the reader task and [`Watch::next`].
pub(crate) struct WatchQueue {
    state: Mutex<QueueState>,
    notify: Notify,
    capacity: usize,
}

impl WatchQueue {
    pub(crate) fn new(capacity: usize) -> WatchQueue {
        WatchQueue {
            state: Mutex::default(),
            notify: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue an event; never blocks. While an overflow is pending (not yet seen by the watcher),
    /// new events are dropped too: the rescan the watcher will do covers them.
    pub(crate) fn push(&self, path: String) {
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            if st.overflowed || st.events.len() >= self.capacity {
                st.overflowed = true;
            } else {
                st.events.push_back(path);
            }
        }
        self.notify.notify_one();
    }

    /// The connection ended: the watcher gets what is queued, then `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// Next event if one is ready; `Err(())` when closed and drained.
    fn try_pop(&self) -> Result<Option<WatchEvent>, ()> {
        let mut st = self.lock();
        if let Some(p) = st.events.pop_front() {
            return Ok(Some(WatchEvent::Changed(p)));
        }
        if st.overflowed {
            st.overflowed = false;
            return Ok(Some(WatchEvent::Overflowed));
        }
        if st.closed { Err(()) } else { Ok(None) }
    }
}

/// A registered watch; see the module documentation for what it reports.
pub struct Watch {
    pub(crate) client: Xenstore,
    pub(crate) path: String,
    pub(crate) token: String,
    pub(crate) queue: std::sync::Arc<WatchQueue>,
}

impl Watch {
    /// The next event; `None` once the connection is gone (after any events still queued).
    pub async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            match self.queue.try_pop() {
                Ok(Some(e)) => return Some(e),
                Err(()) => return None,
                // One consumer: `notify_one` stores a permit if it fires before we wait.
                Ok(None) => self.queue.notify.notified().await,
            }
        }
    }

    /// The next event if one is already queued (never waits).
    pub fn try_next(&mut self) -> Option<WatchEvent> {
        self.queue.try_pop().ok().flatten()
    }

    /// The watched path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The token this watch was registered with (unique on its connection).
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("path", &self.path)
            .field("token", &self.token)
            .finish()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        unwatch(&self.client, &self.path, &self.token);
    }
}

/// Stop routing and tell xenstored, without waiting.
pub(crate) fn unwatch(client: &Xenstore, path: &str, token: &str) {
    client.conn.remove_watch(token);
    if let Ok(payload) = super::wire::strings_payload(&[path.as_bytes(), token.as_bytes()], true) {
        client.conn.send_and_forget(MsgType::Unwatch, 0, &payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_is_reported_once_after_queued_events() {
        let q = WatchQueue::new(2);
        for p in ["a", "b", "c", "d"] {
            q.push(p.into());
        }
        assert_eq!(q.try_pop(), Ok(Some(WatchEvent::Changed("a".into()))));
        q.push("e".into()); // still overflowed: dropped
        assert_eq!(q.try_pop(), Ok(Some(WatchEvent::Changed("b".into()))));
        assert_eq!(q.try_pop(), Ok(Some(WatchEvent::Overflowed)));
        assert_eq!(q.try_pop(), Ok(None));
        q.push("f".into());
        q.close();
        q.push("g".into());
        assert_eq!(q.try_pop(), Ok(Some(WatchEvent::Changed("f".into()))));
        assert_eq!(q.try_pop(), Err(()));
    }
}
