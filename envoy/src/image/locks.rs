//! POSIX byte-range locks on an image's files, held in memory (locks are about the processes
//! of the moment, not the image's content: nothing is stored).
//!
//! Semantics of Linux's open-file-description locks (`F_OFD_SETLK`/`F_OFD_GETLK`, what the
//! export backend uses): each open file is an owner; locks of different owners conflict when
//! they overlap and one is a write lock; an owner's new lock replaces its own locks on the
//! range (splitting them, merging with adjacent ones of the same kind); every lock of an owner
//! goes when it is dropped (the file's clunk).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::vfs::{Errno, Lock, LockKind, LockStatus, Result};

/// The locks of one image (see the module docs).
#[derive(Debug, Default)]
pub struct LockTable {
    /// Held locks by inode.
    held: Mutex<HashMap<u64, Vec<Held>>>,
    next_owner: AtomicU64,
}

/// One held lock: `[start, end)`, `end` `u64::MAX` meaning "to the end of the file".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    owner: u64,
    write: bool,
    start: u64,
    end: u64,
}

impl Held {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }

    fn as_lock(&self) -> Lock {
        Lock {
            kind: if self.write {
                LockKind::Write
            } else {
                LockKind::Read
            },
            start: self.start,
            length: if self.end == u64::MAX {
                0
            } else {
                self.end - self.start
            },
        }
    }
}

/// The byte range `[start, end)` a lock request names, checked as fcntl(2) checks it: EINVAL
/// for a start or length past `i64::MAX`, EOVERFLOW for a range ending past it.
fn range(lock: &Lock) -> Result<(u64, u64)> {
    const MAX: u64 = i64::MAX as u64;
    if lock.start > MAX || lock.length > MAX {
        return Err(Errno::EINVAL);
    }
    if lock.length == 0 {
        return Ok((lock.start, u64::MAX));
    }
    let end = lock.start + lock.length;
    if end - 1 > MAX {
        return Err(Errno::EOVERFLOW);
    }
    Ok((lock.start, end))
}

impl LockTable {
    /// A new owner of locks on inode `ino`: one per open file.
    pub fn owner(self: &Arc<Self>, ino: u64) -> LockOwner {
        LockOwner {
            table: self.clone(),
            ino,
            id: self.next_owner.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Held>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The locks one open file holds on its inode; dropping it releases them.
#[derive(Debug)]
pub struct LockOwner {
    table: Arc<LockTable>,
    ino: u64,
    id: u64,
}

impl LockOwner {
    /// Take `lock` (or release the range, for `Unlock`) without waiting: `Blocked` if another
    /// owner holds a conflicting lock.
    pub fn set(&self, lock: &Lock) -> Result<LockStatus> {
        let (start, end) = range(lock)?;
        let write = lock.kind == LockKind::Write;
        let mut all = self.table.held();
        let list = all.remove(&self.ino).unwrap_or_default();
        if lock.kind != LockKind::Unlock
            && list
                .iter()
                .any(|h| h.owner != self.id && h.overlaps(start, end) && (h.write || write))
        {
            all.insert(self.ino, list);
            return Ok(LockStatus::Blocked);
        }
        // Carve the range out of this owner's locks.
        let mut kept = Vec::with_capacity(list.len() + 1);
        for h in list {
            if h.owner != self.id || !h.overlaps(start, end) {
                kept.push(h);
                continue;
            }
            if h.start < start {
                kept.push(Held { end: start, ..h });
            }
            if h.end > end {
                kept.push(Held { start: end, ..h });
            }
        }
        if lock.kind != LockKind::Unlock {
            // Merge with this owner's adjacent locks of the same kind.
            let (mut start, mut end) = (start, end);
            kept.retain(|h| {
                let adjacent =
                    h.owner == self.id && h.write == write && (h.end == start || h.start == end);
                if adjacent {
                    start = start.min(h.start);
                    end = end.max(h.end);
                }
                !adjacent
            });
            kept.push(Held {
                owner: self.id,
                write,
                start,
                end,
            });
        }
        if !kept.is_empty() {
            kept.sort_by_key(|h| (h.start, h.owner));
            all.insert(self.ino, kept);
        }
        Ok(LockStatus::Granted)
    }

    /// The first lock of another owner that conflicts with `lock` (lowest start first), or
    /// `lock` as `Unlock` if none does. EINVAL for an `Unlock` query, as fcntl(2).
    pub fn conflict(&self, lock: &Lock) -> Result<Lock> {
        if lock.kind == LockKind::Unlock {
            return Err(Errno::EINVAL);
        }
        let (start, end) = range(lock)?;
        let write = lock.kind == LockKind::Write;
        let all = self.table.held();
        let first = all.get(&self.ino).and_then(|list| {
            list.iter()
                .find(|h| h.owner != self.id && h.overlaps(start, end) && (h.write || write))
        });
        Ok(match first {
            Some(h) => h.as_lock(),
            None => Lock {
                kind: LockKind::Unlock,
                ..*lock
            },
        })
    }
}

impl Drop for LockOwner {
    fn drop(&mut self) {
        let mut all = self.table.held();
        if let Some(list) = all.get_mut(&self.ino) {
            list.retain(|h| h.owner != self.id);
            if list.is_empty() {
                all.remove(&self.ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(kind: LockKind, start: u64, length: u64) -> Lock {
        Lock {
            kind,
            start,
            length,
        }
    }

    use LockKind::{Read, Unlock, Write};

    #[test]
    fn owners_conflict_only_on_overlapping_writes() {
        let t = Arc::new(LockTable::default());
        let (a, b) = (t.owner(1), t.owner(1));
        let other_file = t.owner(2);
        assert_eq!(a.set(&lock(Write, 0, 5)), Ok(LockStatus::Granted));
        assert_eq!(b.set(&lock(Read, 4, 1)), Ok(LockStatus::Blocked));
        assert_eq!(
            b.set(&lock(Write, 5, 5)),
            Ok(LockStatus::Granted),
            "disjoint"
        );
        assert_eq!(other_file.set(&lock(Write, 0, 0)), Ok(LockStatus::Granted));
        assert_eq!(b.conflict(&lock(Read, 0, 0)), Ok(lock(Write, 0, 5)));
        assert_eq!(a.conflict(&lock(Read, 0, 0)), Ok(lock(Write, 5, 5)));
        assert_eq!(a.conflict(&lock(Read, 1, 2)), Ok(lock(Unlock, 1, 2)));
        // Read locks share.
        let (r1, r2) = (t.owner(3), t.owner(3));
        assert_eq!(r1.set(&lock(Read, 0, 0)), Ok(LockStatus::Granted));
        assert_eq!(r2.set(&lock(Read, 10, 10)), Ok(LockStatus::Granted));
        assert_eq!(r2.set(&lock(Write, 10, 10)), Ok(LockStatus::Blocked));
        assert_eq!(r2.conflict(&lock(Write, 0, 1)), Ok(lock(Read, 0, 0)));
    }

    #[test]
    fn unlock_splits_and_relock_merges() {
        let t = Arc::new(LockTable::default());
        let (a, b) = (t.owner(1), t.owner(1));
        a.set(&lock(Write, 0, 10)).unwrap();
        a.set(&lock(Unlock, 3, 2)).unwrap();
        assert_eq!(
            b.set(&lock(Write, 3, 2)),
            Ok(LockStatus::Granted),
            "the hole"
        );
        assert_eq!(b.set(&lock(Write, 2, 1)), Ok(LockStatus::Blocked));
        assert_eq!(b.conflict(&lock(Read, 5, 0)), Ok(lock(Write, 5, 5)));
        b.set(&lock(Unlock, 0, 0)).unwrap();
        // Adjacent ranges of one kind merge; a read lock inside a write lock splits it.
        a.set(&lock(Write, 3, 2)).unwrap();
        assert_eq!(b.conflict(&lock(Read, 0, 0)), Ok(lock(Write, 0, 10)));
        a.set(&lock(Read, 4, 1)).unwrap();
        assert_eq!(b.set(&lock(Read, 4, 1)), Ok(LockStatus::Granted));
        assert_eq!(b.conflict(&lock(Read, 0, 0)), Ok(lock(Write, 0, 4)));
        assert_eq!(b.conflict(&lock(Read, 5, 0)), Ok(lock(Write, 5, 5)));
    }

    #[test]
    fn dropping_an_owner_releases_its_locks() {
        let t = Arc::new(LockTable::default());
        let b = t.owner(1);
        {
            let a = t.owner(1);
            a.set(&lock(Write, 0, 0)).unwrap();
            assert_eq!(b.set(&lock(Read, 100, 1)), Ok(LockStatus::Blocked));
        }
        assert_eq!(b.set(&lock(Write, 100, 1)), Ok(LockStatus::Granted));
        drop(b);
        assert!(t.held().is_empty());
    }

    #[test]
    fn ranges_are_checked_like_fcntl() {
        let t = Arc::new(LockTable::default());
        let a = t.owner(1);
        let max = i64::MAX as u64;
        assert_eq!(a.set(&lock(Write, max + 1, 1)), Err(Errno::EINVAL));
        assert_eq!(a.set(&lock(Write, 0, max + 1)), Err(Errno::EINVAL));
        assert_eq!(a.set(&lock(Write, max, 2)), Err(Errno::EOVERFLOW));
        assert_eq!(a.set(&lock(Write, max, 1)), Ok(LockStatus::Granted));
        assert_eq!(a.conflict(&lock(Unlock, 0, 0)), Err(Errno::EINVAL));
    }
}
