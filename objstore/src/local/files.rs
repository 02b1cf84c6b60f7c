//! Segment files on disk: their names, a map of open handles shared by readers and the
//! writer, positional vectored writes, directory syncs and free-space figures.
//!
//! Readers open segments lazily and keep them open (one descriptor per segment), so a read
//! is one `pread`; compaction takes a segment out of the map before unlinking it, and a reader
//! still holding its handle finishes from the unlinked file.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::{Result, StoreError};

/// Most iovecs one `pwritev` takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// The directory of the segment files, under the store's directory.
pub(crate) fn segments_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

/// The file of segment `seq`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    segments_dir(dir).join(format!("{seq:016x}.seg"))
}

/// The sequence number of a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The segment files present, by sequence number.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let sdir = segments_dir(dir);
    let rd = std::fs::read_dir(&sdir)
        .map_err(|e| StoreError::io(format!("list segment directory {}", sdir.display()), e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry
            .map_err(|e| StoreError::io(format!("list segment directory {}", sdir.display()), e))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// fsync a directory, so that files created or removed in it stay so after a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("sync directory {}", dir.display()), e))
}

/// (total, free for unprivileged use) bytes of the file system holding `dir`.
pub(crate) fn fs_space(dir: &Path) -> Result<(u64, u64)> {
    let s = rustix::fs::statvfs(dir).map_err(|e| {
        StoreError::io(
            format!("statvfs {} (free space)", dir.display()),
            io::Error::from(e),
        )
    })?;
    Ok((
        s.f_blocks.saturating_mul(s.f_frsize),
        s.f_bavail.saturating_mul(s.f_frsize),
    ))
}

/// Write all of `bufs` at `offset` with as few `pwritev` calls as the kernel allows.
pub(crate) fn pwrite_all_vectored(
    file: &File,
    mut bufs: &mut [IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = bufs.len().min(IOV_MAX);
        let written = match rustix::io::pwritev(file, &bufs[..n], offset) {
            Ok(w) => w,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        offset += written as u64;
        IoSlice::advance_slices(&mut bufs, written);
    }
    Ok(())
}

/// Whether an I/O error means the disk is full.
pub(crate) fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT)
}

/// Open segment files, shared by readers (and the writer for its active segment).
#[derive(Debug, Default)]
pub(crate) struct SegmentFiles {
    inner: RwLock<FilesInner>,
}

#[derive(Debug, Default)]
struct FilesInner {
    open: HashMap<u64, Arc<File>>,
    /// Segments removed by compaction: never reopened or re-added.
    removed: HashSet<u64>,
}

/// Why a segment could not be had.
pub(crate) enum OpenError {
    /// The file does not exist (removed, or lost).
    Missing,
    /// Another I/O error.
    Io(io::Error),
}

impl SegmentFiles {
    /// The open file of segment `seq`, opening it read-only if needed.
    pub fn get(&self, dir: &Path, seq: u64) -> Result<Arc<File>, OpenError> {
        {
            let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = g.open.get(&seq) {
                return Ok(f.clone());
            }
            if g.removed.contains(&seq) {
                return Err(OpenError::Missing);
            }
        }
        let file = match File::open(segment_path(dir, seq)) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OpenError::Missing),
            Err(e) => return Err(OpenError::Io(e)),
        };
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if g.removed.contains(&seq) {
            return Err(OpenError::Missing);
        }
        Ok(g.open.entry(seq).or_insert(file).clone())
    }

    /// Register the writer's handle of a new segment.
    pub fn insert(&self, seq: u64, file: Arc<File>) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        g.open.insert(seq, file);
    }

    /// Forget a segment that is being removed; later `get`s see it missing.
    pub fn remove(&self, seq: u64) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        g.open.remove(&seq);
        g.removed.insert(seq);
    }
}

/// Create segment `seq` with its file header, durably (file and directory synced).
pub(crate) fn create_segment(dir: &Path, seq: u64) -> Result<File> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| StoreError::io(format!("create segment {}", path.display()), e))?;
    let header = super::format::file_header();
    let r =
        std::os::unix::fs::FileExt::write_all_at(&file, &header, 0).and_then(|()| file.sync_data());
    if let Err(e) = r {
        // Leave no headerless file behind.
        let _ = std::fs::remove_file(&path);
        return Err(StoreError::io(
            format!("write header of segment {}", path.display()),
            e,
        ));
    }
    sync_dir(&segments_dir(dir))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names() {
        assert_eq!(
            segment_path(Path::new("/s"), 0x1f),
            PathBuf::from("/s/segments/000000000000001f.seg")
        );
        assert_eq!(parse_segment_name("000000000000001f.seg"), Some(0x1f));
        assert_eq!(parse_segment_name("1f.seg"), None);
        assert_eq!(parse_segment_name("000000000000001f.tmp"), None);
        assert_eq!(parse_segment_name("00000000000000zz.seg"), None);
    }

    #[test]
    fn vectored_write_writes_everything_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .expect("open");
        // More pieces than one pwritev takes, some empty.
        let pieces: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize])
            .collect();
        let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        pwrite_all_vectored(&f, &mut slices, 10).expect("write");
        let got = std::fs::read(dir.path().join("f")).expect("read");
        let want: Vec<u8> = std::iter::repeat_n(0u8, 10)
            .chain(pieces.concat())
            .collect();
        assert_eq!(got, want);
    }
}
