//! Reply buffers reused across requests, so large reads do not allocate an msize buffer each.
//!
//! A handler takes a [`PooledBuf`], reads file data straight into it after the reply header, and
//! freezes it into the `Bytes` the transport writes. When the last holder of that `Bytes` drops
//! it (the socket writer, or a Xen ring task once the reply is in the ring) a large buffer goes
//! back to its pool: no allocation, zero-filling or page faults per read. One pool per
//! connection (no global lock); the pool is bounded in count.

use bytes::{Bytes, BytesMut};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

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
    pub fn new(max_buffers: usize) -> Arc<BufPool> {
        Arc::new(BufPool {
            free: Mutex::new(Vec::new()),
            max_buffers,
        })
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn take(self: &Arc<Self>, capacity: usize) -> PooledBuf {
        let mut buf = self.take_dirty(capacity);
        buf.clear();
        buf
    }

    /// A buffer of exactly `len` bytes whose contents are unspecified (old reply bytes or
    /// zeros): for replies the caller overwrites entirely, so no time goes to clearing memory
    /// once the pool is warm.
    pub fn take_filled(self: &Arc<Self>, len: usize) -> PooledBuf {
        let mut buf = self.take_dirty(len);
        if buf.len() < len {
            buf.resize(len, 0);
        } else {
            buf.truncate(len);
        }
        buf
    }

    /// Like [`take_filled`](Self::take_filled), but only an idle buffer that already holds
    /// `len` bytes (nothing to allocate or clear): `None` when the pool has none, and the
    /// caller may size its request more carefully before taking a buffer that costs something.
    pub fn take_warm(self: &Arc<Self>, len: usize) -> Option<PooledBuf> {
        let mut buf = self.reuse(len, |b| b.len() >= len)?;
        buf.truncate(len);
        Some(PooledBuf {
            buf,
            pool: self.clone(),
        })
    }

    fn take_dirty(self: &Arc<Self>, capacity: usize) -> PooledBuf {
        PooledBuf {
            buf: self
                .reuse(capacity, |b| b.capacity() >= capacity)
                .unwrap_or_else(|| BytesMut::with_capacity(capacity)),
            pool: self.clone(),
        }
    }

    /// An idle buffer of at least `size` bytes that `fits`, if the pool has one.
    fn reuse(&self, size: usize, fits: impl Fn(&BytesMut) -> bool) -> Option<BytesMut> {
        if size < RECYCLE_MIN {
            return None;
        }
        let mut free = self.free.lock().unwrap();
        let pos = free.iter().rposition(fits)?;
        Some(free.swap_remove(pos))
    }

    /// Keep `buf` for a later request if it is large and there is room.
    fn put(&self, buf: BytesMut) {
        if buf.capacity() < RECYCLE_MIN {
            return;
        }
        let mut free = self.free.lock().unwrap();
        if free.len() < self.max_buffers {
            free.push(buf);
        }
    }

    /// Idle buffers (for tests).
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

/// A buffer taken from a [`BufPool`]; it returns there when dropped, or — after
/// [`PooledBuf::freeze`] — when the last `Bytes` sharing it is dropped.
pub struct PooledBuf {
    buf: BytesMut,
    pool: Arc<BufPool>,
}

impl PooledBuf {
    /// The filled buffer as `Bytes`, still owned by the pool.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl Deref for PooledBuf {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.buf
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_come_back_when_the_last_holder_drops_them() {
        let pool = BufPool::new(4);
        let mut b = pool.take(64 * 1024);
        b.extend_from_slice(&[7u8; 40 * 1024]);
        let ptr = b.as_ptr();
        let sent = b.freeze();
        let held_by_a_ring = sent.slice(10..20);
        drop(sent);
        assert_eq!(pool.idle(), 0, "still shared");
        drop(held_by_a_ring);
        assert_eq!(pool.idle(), 1);
        let again = pool.take(50 * 1024);
        assert_eq!(again.as_ptr(), ptr, "the same allocation comes back");
        assert!(again.is_empty());
        assert_eq!(pool.idle(), 0);
        drop(again);
        let filled = pool.take_filled(48 * 1024);
        assert_eq!((filled.len(), filled.as_ptr()), (48 * 1024, ptr));
        drop(filled);
        assert!(
            pool.take_warm(60 * 1024).is_none(),
            "it holds 48 KiB, not 60"
        );
        let warm = pool.take_warm(20 * 1024).expect("the idle buffer");
        assert_eq!((warm.len(), warm.as_ptr()), (20 * 1024, ptr));
        assert!(pool.take_warm(20 * 1024).is_none(), "taken");
    }

    #[test]
    fn small_buffers_and_a_full_pool_are_not_kept() {
        let pool = BufPool::new(1);
        drop(pool.take(1024).freeze());
        assert_eq!(pool.idle(), 0);
        let (a, b) = (pool.take(64 * 1024), pool.take(64 * 1024));
        drop(a);
        drop(b);
        assert_eq!(pool.idle(), 1);
    }
}
