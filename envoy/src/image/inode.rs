//! Inodes and directory entries as stored in an image's trees.
//!
//! An inode is a value in the image's inode table (key: inode number). Its content is a tree
//! root for files (block map) and directories (entries), the target for symlinks. Directory
//! entries are keyed by a 64-bit hash of the name; a value holds every entry whose name has
//! that hash (collisions are rare and kept together).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_objstore::ObjectId;

/// What an inode holds besides its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Nothing yet (an empty file or directory, a device, a fifo).
    Empty,
    /// The root of its tree (block map or directory entries).
    Tree(ObjectId),
    /// A symlink's target.
    Target(String),
}

/// One inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Links to it.
    pub nlink: u32,
    /// Device number (devices only).
    pub rdev: u64,
    /// Size in bytes.
    pub size: u64,
    /// Access, modification, change times (seconds, nanoseconds).
    pub times: [(u64, u32); 3],
    /// Bumped on every change (the qid version).
    pub version: u64,
    /// Its content.
    pub content: Content,
}

impl Inode {
    /// Encode as an inode-table value.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(96);
        b.put_u32_le(self.mode);
        b.put_u32_le(self.uid);
        b.put_u32_le(self.gid);
        b.put_u32_le(self.nlink);
        b.put_u64_le(self.rdev);
        b.put_u64_le(self.size);
        for (s, ns) in self.times {
            b.put_u64_le(s);
            b.put_u32_le(ns);
        }
        b.put_u64_le(self.version);
        match &self.content {
            Content::Empty => b.put_u8(0),
            Content::Tree(id) => {
                b.put_u8(1);
                b.put_slice(&id.0);
            }
            Content::Target(t) => {
                b.put_u8(2);
                b.put_slice(t.as_bytes());
            }
        }
        b.freeze()
    }

    /// Decode an inode-table value (`None` if malformed).
    pub fn decode(mut b: Bytes) -> Option<Inode> {
        if b.remaining() < 4 * 4 + 8 * 2 + 12 * 3 + 8 + 1 {
            return None;
        }
        let mode = b.get_u32_le();
        let uid = b.get_u32_le();
        let gid = b.get_u32_le();
        let nlink = b.get_u32_le();
        let rdev = b.get_u64_le();
        let size = b.get_u64_le();
        let mut times = [(0, 0); 3];
        for t in &mut times {
            *t = (b.get_u64_le(), b.get_u32_le());
        }
        let version = b.get_u64_le();
        let content = match b.get_u8() {
            0 if !b.has_remaining() => Content::Empty,
            1 if b.remaining() == 32 => {
                let mut id = [0u8; 32];
                b.copy_to_slice(&mut id);
                Content::Tree(ObjectId(id))
            }
            2 => Content::Target(String::from_utf8(b.to_vec()).ok()?),
            _ => return None,
        };
        Some(Inode {
            mode,
            uid,
            gid,
            nlink,
            rdev,
            size,
            times,
            version,
            content,
        })
    }

    /// The tree it refers to, for GC (an inode-table leaf refers to its inodes' trees).
    pub fn value_refs(value: &[u8], out: &mut Vec<ObjectId>) {
        if let Some(Inode {
            content: Content::Tree(id),
            ..
        }) = Inode::decode(Bytes::copy_from_slice(value))
        {
            out.push(id);
        }
    }
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// The inode it names.
    pub ino: u64,
    /// The inode's type bits (`S_IFMT` part of the mode), for readdir.
    pub kind: u32,
}

/// The directory-tree key of a name.
pub fn name_key(name: &str) -> u64 {
    let h = blake3::hash(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    // Keys 0 and 1 are left free (the readdir cookies of "." and "..").
    u64::from_le_bytes(b).max(2)
}

/// Encode the entries sharing one key.
pub fn encode_entries(entries: &[Entry]) -> Bytes {
    let mut b = BytesMut::new();
    for e in entries {
        b.put_u16_le(e.name.len() as u16);
        b.put_slice(e.name.as_bytes());
        b.put_u64_le(e.ino);
        b.put_u32_le(e.kind);
    }
    b.freeze()
}

/// Decode the entries sharing one key (`None` if malformed).
pub fn decode_entries(mut b: Bytes) -> Option<Vec<Entry>> {
    let mut out = Vec::new();
    while b.has_remaining() {
        if b.remaining() < 2 {
            return None;
        }
        let n = usize::from(b.get_u16_le());
        if b.remaining() < n + 12 {
            return None;
        }
        let name = String::from_utf8(b.split_to(n).to_vec()).ok()?;
        let ino = b.get_u64_le();
        let kind = b.get_u32_le();
        out.push(Entry { name, ino, kind });
    }
    Some(out)
}

/// A block-map value: the data block's id (the leaf refers to it).
pub fn block_refs(value: &[u8], out: &mut Vec<ObjectId>) {
    if let Ok(id) = <[u8; 32]>::try_from(value) {
        out.push(ObjectId(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_and_entries_round_trip() {
        for content in [
            Content::Empty,
            Content::Tree(ObjectId([3; 32])),
            Content::Target("../x y".into()),
        ] {
            let i = Inode {
                mode: 0o100644,
                uid: 1,
                gid: 2,
                nlink: 3,
                rdev: 4,
                size: 5,
                times: [(6, 7), (8, 9), (10, 11)],
                version: 12,
                content,
            };
            assert_eq!(Inode::decode(i.encode()), Some(i));
        }
        assert_eq!(Inode::decode(Bytes::from_static(b"short")), None);
        let e = vec![
            Entry {
                name: "a".into(),
                ino: 5,
                kind: 0o040000,
            },
            Entry {
                name: "ü".into(),
                ino: 6,
                kind: 0o100000,
            },
        ];
        assert_eq!(decode_entries(encode_entries(&e)), Some(e));
        assert_eq!(decode_entries(Bytes::from_static(&[9, 0, b'a'])), None);
        assert!(name_key("") >= 2 && name_key("a") != name_key("b"));
    }
}
