//! Inodes and directory entries as stored in an image's trees.
//!
//! An inode is a value in the image's inode table (key: inode number). Its content is a tree
//! root for files (block map) and directories (entries), the target for symlinks; its
//! extended attributes are stored with it (bounded by [`XATTR_BYTES_MAX`], so an inode stays a
//! small value). Directory
//! entries are keyed by a 64-bit hash of the name; a value holds every entry whose name has
//! that hash (collisions are rare and kept together).

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_objstore::ObjectId;

/// At most this many bytes of extended attributes (names plus values) per inode.
pub const XATTR_BYTES_MAX: usize = 64 * 1024;
/// The longest extended attribute name (Linux `XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;

/// The content tag's flag saying extended attributes follow it (an inode without any encodes
/// as before they existed).
const HAS_XATTRS: u8 = 0x80;

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
    /// Extended attributes by name.
    pub xattrs: BTreeMap<String, Bytes>,
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
        let tag = match &self.content {
            Content::Empty => 0,
            Content::Tree(_) => 1,
            Content::Target(_) => 2,
        };
        if self.xattrs.is_empty() {
            b.put_u8(tag);
        } else {
            // Names are at most XATTR_NAME_MAX bytes, values at most XATTR_BYTES_MAX (the
            // engine refuses more), so the lengths fit.
            b.put_u8(tag | HAS_XATTRS);
            b.put_u16_le(self.xattrs.len() as u16);
            for (name, value) in &self.xattrs {
                b.put_u8(name.len() as u8);
                b.put_slice(name.as_bytes());
                b.put_u32_le(value.len() as u32);
                b.put_slice(value);
            }
        }
        match &self.content {
            Content::Empty => {}
            Content::Tree(id) => b.put_slice(&id.0),
            Content::Target(t) => b.put_slice(t.as_bytes()),
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
        let tag = b.get_u8();
        let mut xattrs = BTreeMap::new();
        if tag & HAS_XATTRS != 0 {
            if b.remaining() < 2 {
                return None;
            }
            for _ in 0..b.get_u16_le() {
                let n = usize::from(*b.first()?);
                if b.remaining() < 1 + n + 4 {
                    return None;
                }
                b.advance(1);
                let name = String::from_utf8(b.split_to(n).to_vec()).ok()?;
                let len = b.get_u32_le() as usize;
                if b.remaining() < len {
                    return None;
                }
                xattrs.insert(name, b.split_to(len));
            }
        }
        let content = match tag & !HAS_XATTRS {
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
            xattrs,
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
                xattrs: BTreeMap::new(),
            };
            assert_eq!(Inode::decode(i.encode()), Some(i.clone()));
            // With extended attributes: an empty value, a binary one, a long name.
            let mut x = i.clone();
            x.xattrs.insert("user.empty".into(), Bytes::new());
            x.xattrs
                .insert("user.bin".into(), Bytes::from_static(&[0, 255, 1]));
            x.xattrs.insert(
                "user.".to_owned() + &"n".repeat(250),
                Bytes::from(vec![7; 1000]),
            );
            let encoded = x.encode();
            assert_eq!(Inode::decode(encoded.clone()).as_ref(), Some(&x));
            // Every truncation before a symlink's target (which runs to the end) is refused,
            // never misread.
            let target = match &x.content {
                Content::Target(t) => t.len(),
                _ => 0,
            };
            for cut in 0..encoded.len() - target {
                assert_eq!(Inode::decode(encoded.slice(..cut)), None, "cut at {cut}");
            }
        }
        // An inode without attributes encodes as before they existed (stored images stay
        // readable, and unchanged inodes keep their bytes).
        let plain = Inode {
            mode: 0o100644,
            uid: 0,
            gid: 0,
            nlink: 1,
            rdev: 0,
            size: 0,
            times: [(0, 0); 3],
            version: 1,
            content: Content::Empty,
            xattrs: BTreeMap::new(),
        };
        assert_eq!(plain.encode().len(), 4 * 4 + 8 * 2 + 12 * 3 + 8 + 1);
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
