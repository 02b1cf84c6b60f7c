//! A small cache of whole objects already verified against their ids.
//!
//! Serving a large object in ranges (a 9P client reading a 4 MiB block 512 KiB at a time)
//! would otherwise read and re-hash the whole object for every range. Entries are verified
//! content, so a hit needs no check; the cache is bounded by bytes and entries and evicts the
//! least recently used. Linear scans are fine at this size.

use std::sync::Mutex;

use bytes::Bytes;

use crate::ObjectId;

/// Most entries kept.
const MAX_ENTRIES: usize = 64;

/// Verified objects, most recently used last.
#[derive(Debug)]
pub(crate) struct VerifiedCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: Vec<(ObjectId, Bytes)>,
    bytes: usize,
}

impl VerifiedCache {
    /// A cache holding at most `max_bytes` of content.
    pub fn new(max_bytes: usize) -> VerifiedCache {
        VerifiedCache {
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The object, if cached (and mark it recently used).
    pub fn get(&self, id: &ObjectId) -> Option<Bytes> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let i = g.entries.iter().position(|(k, _)| k == id)?;
        let e = g.entries.remove(i);
        let data = e.1.clone();
        g.entries.push(e);
        Some(data)
    }

    /// Remember a verified object.
    pub fn insert(&self, id: ObjectId, data: Bytes) {
        if data.len() > self.max_bytes / 2 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.entries.iter().any(|(k, _)| *k == id) {
            return;
        }
        g.bytes += data.len();
        g.entries.push((id, data));
        while g.bytes > self.max_bytes || g.entries.len() > MAX_ENTRIES {
            let (_, old) = g.entries.remove(0);
            g.bytes -= old.len();
        }
    }

    /// Forget an object (deleted or quarantined).
    pub fn remove(&self, id: &ObjectId) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = g.entries.iter().position(|(k, _)| k == id) {
            let (_, old) = g.entries.remove(i);
            g.bytes -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_bytes_least_recently_used_goes_first() {
        let c = VerifiedCache::new(100);
        let a = ObjectId::of(b"a");
        let b = ObjectId::of(b"b");
        let d = ObjectId::of(b"d");
        c.insert(a, Bytes::from(vec![0; 40]));
        c.insert(b, Bytes::from(vec![0; 40]));
        assert!(c.get(&a).is_some()); // a is now the most recent
        c.insert(d, Bytes::from(vec![0; 40])); // 120 > 100: b goes
        assert!(c.get(&b).is_none());
        assert!(c.get(&a).is_some());
        assert!(c.get(&d).is_some());
        c.remove(&a);
        assert!(c.get(&a).is_none());
        // Too big for the cache: not kept.
        c.insert(b, Bytes::from(vec![0; 60]));
        assert!(c.get(&b).is_none());
    }
}
