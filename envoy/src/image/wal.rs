//! The owner's write-ahead log: the changes made since an image's last commit, as a chain of
//! log objects in the object layer, so that an fsync costs one small object and one record
//! update instead of a commit of every changed tree node.
//!
//! The engine records each change it makes as an [`Op`] (with the time it used, so a replay
//! reproduces the same attributes). [`LogEntry`] is one object: the ops of one flush, the root
//! they apply to and the previous entry of the chain; the image's record names the root and
//! the chain's head, and refers to both, so GC keeps the chain alive exactly as long as it is
//! needed. A commit folds everything into a new root and the record drops the head. On open,
//! the chain is read back from the head and replayed, oldest first, onto the root.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_objstore::ObjectId;

const MAGIC: &[u8; 8] = b"ENVOYWAL";

/// One change to an image, as the engine applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new node `ino` named `name` in `dir`.
    Create {
        /// Directory.
        dir: u64,
        /// Name.
        name: String,
        /// The inode number it got (a replay must give it the same one).
        ino: u64,
        /// Type and permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Device number.
        rdev: u64,
        /// A symlink's target.
        target: Option<String>,
    },
    /// A hard link `name` in `dir` to `ino`.
    Link {
        /// Directory.
        dir: u64,
        /// Name.
        name: String,
        /// The inode linked.
        ino: u64,
    },
    /// `name` removed from `dir`.
    Unlink {
        /// Directory.
        dir: u64,
        /// Name.
        name: String,
        /// It was a directory.
        rmdir: bool,
    },
    /// `oname` in `odir` moved to `nname` in `ndir`.
    Rename {
        /// Old directory.
        odir: u64,
        /// Old name.
        oname: String,
        /// New directory.
        ndir: u64,
        /// New name.
        nname: String,
    },
    /// `data` written into `ino` at `offset`.
    Write {
        /// File.
        ino: u64,
        /// Where.
        offset: u64,
        /// What.
        data: Bytes,
    },
    /// `ino`'s size set.
    Truncate {
        /// File.
        ino: u64,
        /// New size.
        size: u64,
    },
    /// Extended attribute `name` of `ino` set (as setxattr(2) with `flags`).
    SetXattr {
        /// The inode.
        ino: u64,
        /// Its name.
        name: String,
        /// Its value.
        value: Bytes,
        /// XATTR_CREATE / XATTR_REPLACE.
        flags: u32,
    },
    /// Extended attribute `name` of `ino` removed.
    RemoveXattr {
        /// The inode.
        ino: u64,
        /// Its name.
        name: String,
    },
    /// Attributes of `ino` changed.
    SetAttr {
        /// The inode.
        ino: u64,
        /// What changed.
        change: AttrChange,
    },
}

/// An attribute change (absolute values; `None`: unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrChange {
    /// Permission bits.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Access time.
    pub atime: Option<(u64, u32)>,
    /// Modification time.
    pub mtime: Option<(u64, u32)>,
}

/// An op and the time the engine stamped it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// Seconds and nanoseconds since the epoch.
    pub at: (u64, u32),
    /// The change.
    pub op: Op,
}

/// One object of the log chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The committed root the chain applies to.
    pub base: ObjectId,
    /// The entry before this one (`None`: the first after `base`).
    pub prev: Option<ObjectId>,
    /// The ops, oldest first.
    pub ops: Vec<Logged>,
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32_le(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn put_opt_u32(b: &mut BytesMut, v: Option<u32>) {
    match v {
        Some(v) => {
            b.put_u8(1);
            b.put_u32_le(v);
        }
        None => b.put_u8(0),
    }
}

fn put_opt_time(b: &mut BytesMut, v: Option<(u64, u32)>) {
    match v {
        Some((s, ns)) => {
            b.put_u8(1);
            b.put_u64_le(s);
            b.put_u32_le(ns);
        }
        None => b.put_u8(0),
    }
}

/// A bounds-checked reader over an entry (every get says `None` when the bytes run out).
struct Reader(Bytes);

impl Reader {
    fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    fn u32(&mut self) -> Option<u32> {
        (self.0.remaining() >= 4).then(|| self.0.get_u32_le())
    }
    fn u64(&mut self) -> Option<u64> {
        (self.0.remaining() >= 8).then(|| self.0.get_u64_le())
    }
    fn bytes(&mut self, n: usize) -> Option<Bytes> {
        (self.0.remaining() >= n).then(|| self.0.split_to(n))
    }
    fn id(&mut self) -> Option<ObjectId> {
        ObjectId::try_from_slice(&self.bytes(32)?)
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }
    fn opt_u32(&mut self) -> Option<Option<u32>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u32()?)),
            _ => None,
        }
    }
    fn opt_time(&mut self) -> Option<Option<(u64, u32)>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some((self.u64()?, self.u32()?))),
            _ => None,
        }
    }
}

impl Op {
    /// Bytes it takes in an entry (about; for the log's bounds).
    pub fn size(&self) -> usize {
        64 + match self {
            Op::Create { name, target, .. } => name.len() + target.as_ref().map_or(0, String::len),
            Op::Link { name, .. } | Op::Unlink { name, .. } => name.len(),
            Op::Rename { oname, nname, .. } => oname.len() + nname.len(),
            Op::Write { data, .. } => data.len(),
            Op::SetXattr { name, value, .. } => name.len() + value.len(),
            Op::RemoveXattr { name, .. } => name.len(),
            Op::Truncate { .. } | Op::SetAttr { .. } => 0,
        }
    }

    fn encode(&self, b: &mut BytesMut) {
        match self {
            Op::Create {
                dir,
                name,
                ino,
                mode,
                uid,
                gid,
                rdev,
                target,
            } => {
                b.put_u8(1);
                b.put_u64_le(*dir);
                put_str(b, name);
                b.put_u64_le(*ino);
                b.put_u32_le(*mode);
                b.put_u32_le(*uid);
                b.put_u32_le(*gid);
                b.put_u64_le(*rdev);
                match target {
                    Some(t) => {
                        b.put_u8(1);
                        put_str(b, t);
                    }
                    None => b.put_u8(0),
                }
            }
            Op::Link { dir, name, ino } => {
                b.put_u8(2);
                b.put_u64_le(*dir);
                put_str(b, name);
                b.put_u64_le(*ino);
            }
            Op::Unlink { dir, name, rmdir } => {
                b.put_u8(3);
                b.put_u64_le(*dir);
                put_str(b, name);
                b.put_u8(u8::from(*rmdir));
            }
            Op::Rename {
                odir,
                oname,
                ndir,
                nname,
            } => {
                b.put_u8(4);
                b.put_u64_le(*odir);
                put_str(b, oname);
                b.put_u64_le(*ndir);
                put_str(b, nname);
            }
            Op::Write { ino, offset, data } => {
                b.put_u8(5);
                b.put_u64_le(*ino);
                b.put_u64_le(*offset);
                b.put_u32_le(data.len() as u32);
                b.put_slice(data);
            }
            Op::Truncate { ino, size } => {
                b.put_u8(6);
                b.put_u64_le(*ino);
                b.put_u64_le(*size);
            }
            Op::SetXattr {
                ino,
                name,
                value,
                flags,
            } => {
                b.put_u8(8);
                b.put_u64_le(*ino);
                put_str(b, name);
                b.put_u32_le(value.len() as u32);
                b.put_slice(value);
                b.put_u32_le(*flags);
            }
            Op::RemoveXattr { ino, name } => {
                b.put_u8(9);
                b.put_u64_le(*ino);
                put_str(b, name);
            }
            Op::SetAttr { ino, change } => {
                b.put_u8(7);
                b.put_u64_le(*ino);
                put_opt_u32(b, change.mode);
                put_opt_u32(b, change.uid);
                put_opt_u32(b, change.gid);
                put_opt_time(b, change.atime);
                put_opt_time(b, change.mtime);
            }
        }
    }

    fn decode(r: &mut Reader) -> Option<Op> {
        Some(match r.u8()? {
            1 => Op::Create {
                dir: r.u64()?,
                name: r.str()?,
                ino: r.u64()?,
                mode: r.u32()?,
                uid: r.u32()?,
                gid: r.u32()?,
                rdev: r.u64()?,
                target: match r.u8()? {
                    0 => None,
                    1 => Some(r.str()?),
                    _ => return None,
                },
            },
            2 => Op::Link {
                dir: r.u64()?,
                name: r.str()?,
                ino: r.u64()?,
            },
            3 => Op::Unlink {
                dir: r.u64()?,
                name: r.str()?,
                rmdir: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
            },
            4 => Op::Rename {
                odir: r.u64()?,
                oname: r.str()?,
                ndir: r.u64()?,
                nname: r.str()?,
            },
            5 => {
                let ino = r.u64()?;
                let offset = r.u64()?;
                let n = r.u32()? as usize;
                Op::Write {
                    ino,
                    offset,
                    data: r.bytes(n)?,
                }
            }
            6 => Op::Truncate {
                ino: r.u64()?,
                size: r.u64()?,
            },
            7 => Op::SetAttr {
                ino: r.u64()?,
                change: AttrChange {
                    mode: r.opt_u32()?,
                    uid: r.opt_u32()?,
                    gid: r.opt_u32()?,
                    atime: r.opt_time()?,
                    mtime: r.opt_time()?,
                },
            },
            8 => {
                let ino = r.u64()?;
                let name = r.str()?;
                let n = r.u32()? as usize;
                Op::SetXattr {
                    ino,
                    name,
                    value: r.bytes(n)?,
                    flags: r.u32()?,
                }
            }
            9 => Op::RemoveXattr {
                ino: r.u64()?,
                name: r.str()?,
            },
            _ => return None,
        })
    }
}

impl LogEntry {
    /// The entry as an object, and the objects it refers to (its base and the previous entry).
    pub fn encode(&self) -> (Bytes, Vec<ObjectId>) {
        let size: usize = self.ops.iter().map(|l| l.op.size()).sum();
        let mut b = BytesMut::with_capacity(8 + 32 + 33 + 4 + size);
        b.put_slice(MAGIC);
        b.put_slice(&self.base.0);
        let mut refs = vec![self.base];
        match &self.prev {
            Some(p) => {
                b.put_u8(1);
                b.put_slice(&p.0);
                refs.push(*p);
            }
            None => b.put_u8(0),
        }
        b.put_u32_le(self.ops.len() as u32);
        for l in &self.ops {
            b.put_u64_le(l.at.0);
            b.put_u32_le(l.at.1);
            l.op.encode(&mut b);
        }
        (b.freeze(), refs)
    }

    /// Decode an entry (`None` if it is not one, or malformed).
    pub fn decode(data: Bytes) -> Option<LogEntry> {
        let mut r = Reader(data);
        if &r.bytes(8)?[..] != MAGIC {
            return None;
        }
        let base = r.id()?;
        let prev = match r.u8()? {
            0 => None,
            1 => Some(r.id()?),
            _ => return None,
        };
        let n = r.u32()? as usize;
        // Every op takes at least 13 bytes: a count past what is left is malformed.
        if n > r.0.remaining() / 13 {
            return None;
        }
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let at = (r.u64()?, r.u32()?);
            ops.push(Logged {
                at,
                op: Op::decode(&mut r)?,
            });
        }
        if r.0.has_remaining() {
            return None;
        }
        Some(LogEntry { base, prev, ops })
    }
}

/// An image record's value: the root, and the log's head while there is a log.
pub fn record_value(root: &ObjectId, head: Option<&ObjectId>) -> (Bytes, Vec<ObjectId>) {
    let mut b = BytesMut::with_capacity(64);
    b.put_slice(&root.0);
    let mut refs = vec![*root];
    if let Some(h) = head {
        b.put_slice(&h.0);
        refs.push(*h);
    }
    (b.freeze(), refs)
}

/// The log head an image record's value names, if any.
pub fn head_of(value: &[u8]) -> Option<ObjectId> {
    value.get(32..64).and_then(ObjectId::try_from_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LogEntry {
        let at = (1_700_000_000, 123);
        let ops = vec![
            Op::Create {
                dir: 1,
                name: "f".into(),
                ino: 7,
                mode: libc::S_IFREG | 0o644,
                uid: 1000,
                gid: 100,
                rdev: 0,
                target: None,
            },
            Op::Create {
                dir: 1,
                name: "l".into(),
                ino: 8,
                mode: 0o777,
                uid: 0,
                gid: 0,
                rdev: 0,
                target: Some("f".into()),
            },
            Op::Link {
                dir: 1,
                name: "g".into(),
                ino: 7,
            },
            Op::Unlink {
                dir: 1,
                name: "g".into(),
                rmdir: false,
            },
            Op::Rename {
                odir: 1,
                oname: "f".into(),
                ndir: 1,
                nname: "h".into(),
            },
            Op::Write {
                ino: 7,
                offset: 65_530,
                data: Bytes::from_static(b"hello world"),
            },
            Op::Truncate { ino: 7, size: 3 },
            Op::SetXattr {
                ino: 7,
                name: "user.x".into(),
                value: Bytes::from_static(b"v"),
                flags: 1,
            },
            Op::RemoveXattr {
                ino: 7,
                name: "user.x".into(),
            },
            Op::SetAttr {
                ino: 7,
                change: AttrChange {
                    mode: Some(0o600),
                    uid: None,
                    gid: Some(5),
                    atime: Some((1, 2)),
                    mtime: None,
                },
            },
        ];
        LogEntry {
            base: ObjectId::of(b"root"),
            prev: Some(ObjectId::of(b"prev")),
            ops: ops.into_iter().map(|op| Logged { at, op }).collect(),
        }
    }

    #[test]
    fn entries_round_trip_and_refer_to_base_and_prev() {
        let e = sample();
        let (data, refs) = e.encode();
        assert_eq!(refs, vec![ObjectId::of(b"root"), ObjectId::of(b"prev")]);
        assert_eq!(LogEntry::decode(data), Some(e));
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let (data, _) = sample().encode();
        for n in 0..data.len() {
            assert_eq!(LogEntry::decode(data.slice(..n)), None, "cut at {n}");
        }
        let mut longer = data.to_vec();
        longer.push(0);
        assert_eq!(LogEntry::decode(Bytes::from(longer)), None);
    }

    #[test]
    fn record_values_carry_the_head_only_while_there_is_a_log() {
        let root = ObjectId::of(b"r");
        let head = ObjectId::of(b"h");
        let (v, refs) = record_value(&root, None);
        assert_eq!((v.len(), refs.len(), head_of(&v)), (32, 1, None));
        let (v, refs) = record_value(&root, Some(&head));
        assert_eq!(
            (v.len(), refs, head_of(&v)),
            (64, vec![root, head], Some(head))
        );
        assert_eq!(super::super::catalog::root_of(&v), Ok(root));
    }
}
