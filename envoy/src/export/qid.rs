//! Qids for host files: unique paths even when the export spans several host file systems.
//!
//! `qid.path` must identify a file within the whole export, but `st_ino` is only unique per
//! device. Each device met under the export gets a small index (the root's is 0), and the path is
//! `index << 48 | ino`. An inode number too wide for 48 bits gets a path from a counter in a
//! reserved index instead, remembered per (device, inode). `qid.version` folds the modification
//! time, so it changes when the file does.

use envoy_protocol::Qid;
use envoy_protocol::consts::{QTDIR, QTFILE, QTSYMLINK};
use std::collections::HashMap;
use std::sync::Mutex;

const INO_BITS: u32 = 48;
const INO_MASK: u64 = (1 << INO_BITS) - 1;
/// The device index reserved for remapped wide inode numbers.
const WIDE_INDEX: u64 = 0xFFFF;

/// Per-export qid path allocator.
pub struct QidMap {
    root_dev: u64,
    /// Only touched for devices other than the root's, and for wide inodes (rare).
    state: Mutex<MapState>,
}

#[derive(Default)]
struct MapState {
    devices: HashMap<u64, u64>,
    wide: HashMap<(u64, u64), u64>,
}

impl QidMap {
    /// A map whose index 0 is `root_dev`.
    pub fn new(root_dev: u64) -> QidMap {
        QidMap {
            root_dev,
            state: Mutex::new(MapState::default()),
        }
    }

    /// The qid path of (dev, ino).
    pub fn path(&self, dev: u64, ino: u64) -> u64 {
        if dev == self.root_dev && ino <= INO_MASK {
            return ino;
        }
        let mut state = self.state.lock().unwrap();
        if ino <= INO_MASK {
            let next = state.devices.len() as u64 + 1;
            let index = *state.devices.entry(dev).or_insert(next);
            if index < WIDE_INDEX {
                return (index << INO_BITS) | ino;
            }
        }
        let next = state.wide.len() as u64;
        let n = *state.wide.entry((dev, ino)).or_insert(next);
        (WIDE_INDEX << INO_BITS) | (n & INO_MASK)
    }

    /// A whole qid for a file of type `mode` (`st_mode`) with the given identity and mtime.
    pub fn qid(&self, mode: u32, dev: u64, ino: u64, mtime: (u64, u64)) -> Qid {
        Qid {
            ty: qid_type(mode),
            version: version(mtime),
            path: self.path(dev, ino),
        }
    }
}

/// The qid type bits for a host `st_mode`.
pub fn qid_type(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => QTDIR,
        libc::S_IFLNK => QTSYMLINK,
        _ => QTFILE,
    }
}

/// The qid type for a `DT_*` directory-entry type.
pub fn qid_type_of_dt(dt: u8) -> u8 {
    match dt {
        libc::DT_DIR => QTDIR,
        libc::DT_LNK => QTSYMLINK,
        _ => QTFILE,
    }
}

fn version((sec, nsec): (u64, u64)) -> u32 {
    (sec as u32).wrapping_mul(0x9E37_79B9) ^ (nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_devices_never_collide() {
        let map = QidMap::new(10);
        let a = map.path(10, 5);
        let b = map.path(11, 5);
        let c = map.path(12, 5);
        assert_eq!(a, 5);
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_eq!(map.path(11, 5), b, "stable");
        let w1 = map.path(10, 1 << 50);
        let w2 = map.path(11, 1 << 50);
        assert_ne!(w1, w2);
        assert_eq!(map.path(10, 1 << 50), w1);
        assert!(![a, b, c].contains(&w1));
    }

    #[test]
    fn version_tracks_mtime() {
        assert_ne!(version((100, 1)), version((100, 2)));
        assert_ne!(version((100, 0)), version((101, 0)));
    }
}
