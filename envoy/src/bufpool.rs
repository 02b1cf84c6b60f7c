//! Reply buffers reused across requests, so large reads do not allocate an msize buffer each.
//!
//! A handler takes a buffer, reads file data straight into it after the reply header, and
//! freezes it into the `Bytes` the transport writes. When the writer is done with a large reply
//! it hands the `Bytes` back; if nobody else holds it, its allocation returns to the pool.
//! One pool per connection (no global lock); the pool is bounded in count.

use bytes::{Bytes, BytesMut};
use std::sync::Mutex;

/// Replies at least this large are worth recycling.
pub const RECYCLE_MIN: usize = 16 * 1024;

/// A small stack of reusable buffers.
pub struct BufPool {
    /// `std::sync::Mutex`: held for a push or a pop only.
    free: Mutex<Vec<BytesMut>>,
    max_buffers: usize,
}

impl BufPool {
    /// A pool keeping at most `max_buffers` idle buffers.
    pub fn new(max_buffers: usize) -> BufPool {
        BufPool {
            free: Mutex::new(Vec::new()),
            max_buffers,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn take(&self, capacity: usize) -> BytesMut {
        let mut buf = self.take_dirty(capacity);
        buf.clear();
        buf
    }

    /// A buffer of exactly `len` bytes whose contents are unspecified (old reply bytes or
    /// zeros): for replies the caller overwrites entirely, so no time goes to clearing memory.
    pub fn take_filled(&self, len: usize) -> BytesMut {
        let mut buf = self.take_dirty(len);
        if buf.len() < len {
            buf.resize(len, 0);
        } else {
            buf.truncate(len);
        }
        buf
    }

    fn take_dirty(&self, capacity: usize) -> BytesMut {
        if capacity >= RECYCLE_MIN {
            let mut free = self.free.lock().unwrap();
            if let Some(pos) = free.iter().rposition(|b| b.capacity() >= capacity) {
                return free.swap_remove(pos);
            }
        }
        BytesMut::with_capacity(capacity)
    }

    /// Return a sent reply; kept only if it is large and no longer shared.
    pub fn give_back(&self, sent: Bytes) {
        if sent.len() < RECYCLE_MIN {
            return;
        }
        if let Ok(buf) = sent.try_into_mut() {
            let mut free = self.free.lock().unwrap();
            if free.len() < self.max_buffers {
                free.push(buf);
            }
        }
    }

    /// Idle buffers (for tests).
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_reused() {
        let pool = BufPool::new(4);
        let mut b = pool.take(64 * 1024);
        b.extend_from_slice(&[7u8; 40 * 1024]);
        let ptr = b.as_ptr();
        pool.give_back(b.freeze());
        assert_eq!(pool.idle(), 1);
        let again = pool.take(50 * 1024);
        assert_eq!(again.as_ptr(), ptr, "the same allocation comes back");
        assert!(again.is_empty());
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn shared_or_small_buffers_are_dropped() {
        let pool = BufPool::new(4);
        let mut b = pool.take(64 * 1024);
        b.extend_from_slice(&[1u8; 32 * 1024]);
        let frozen = b.freeze();
        let _other = frozen.clone();
        pool.give_back(frozen);
        pool.give_back(Bytes::from_static(b"tiny"));
        assert_eq!(pool.idle(), 0);
    }
}
