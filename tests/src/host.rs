//! The served file system as the host sees it, beside the protocol: tests prepare state and
//! check outcomes through [`Host`] whatever the backend.
//!
//! For the export backend it is `std::fs` on the exported directory (what a host administrator
//! sees). For the image backend it is the very [`ImageFs`] the server serves, called in-process
//! through the `FileSystem` trait as root; its changes are what a client sees next, and every
//! file written through it is committed when its handle closes, as a client's would be.
//! Paths are relative to the export's root (`""` is the root); symlinks are never followed.

use envoy::image::fs::{ImageFs, ImageNode};
use envoy::vfs::{Attr, Creds, Errno, FileSystem, NodeKind, SetAttr};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

/// A host-side view of a test server's file system (see the module docs).
#[derive(Clone)]
pub struct Host(View);

#[derive(Clone)]
enum View {
    /// The exported host directory.
    Dir(PathBuf),
    /// The served image.
    Image(Arc<ImageFs>),
}

/// What the host knows of one entry (`lstat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMeta {
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links.
    pub nlink: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Device number of a device node.
    pub rdev: u64,
    /// Last access (seconds, nanoseconds).
    pub atime: (i64, i64),
    /// Last modification (seconds, nanoseconds).
    pub mtime: (i64, i64),
}

impl HostMeta {
    /// The permission bits (`mode & 07777`).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    fn is(&self, ty: u32) -> bool {
        self.mode & libc::S_IFMT == ty
    }

    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.is(libc::S_IFREG)
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.is(libc::S_IFDIR)
    }

    /// A symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.is(libc::S_IFLNK)
    }

    /// A named pipe.
    pub fn is_fifo(&self) -> bool {
        self.is(libc::S_IFIFO)
    }

    /// A unix-domain socket node.
    pub fn is_socket(&self) -> bool {
        self.is(libc::S_IFSOCK)
    }

    /// A character device.
    pub fn is_char_device(&self) -> bool {
        self.is(libc::S_IFCHR)
    }

    /// A block device.
    pub fn is_block_device(&self) -> bool {
        self.is(libc::S_IFBLK)
    }
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A path's elements.
fn elements(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Host {
    /// The view of an exported directory.
    pub fn dir(root: PathBuf) -> Host {
        Host(View::Dir(root))
    }

    /// The view of a served image.
    pub fn image(fs: Arc<ImageFs>) -> Host {
        Host(View::Image(fs))
    }

    /// The host path of `path` in an exported directory (`None` for an image: it has no host
    /// paths).
    pub fn dir_path(&self, path: &str) -> Option<PathBuf> {
        match &self.0 {
            View::Dir(root) => Some(root.join(path)),
            View::Image(_) => None,
        }
    }

    /// The content of file `path`.
    pub fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        match &self.0 {
            View::Dir(root) => std::fs::read(root.join(path)),
            View::Image(fs) => {
                let (file, _) = fs.open(&root(), &image_node(fs, path)?, libc::O_RDONLY)?;
                let mut out = Vec::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = fs.read(&root(), &file, out.len() as u64, &mut buf)?;
                    if n == 0 {
                        return Ok(out);
                    }
                    out.extend_from_slice(&buf[..n]);
                }
            }
        }
    }

    /// Make `path` a file holding `data` (created mode 0666, as `std::fs::write` under the
    /// export's umask 0; truncated first if it exists). In an image, a new empty file is made
    /// with mknod: no handle, so no commit at its close (thousands of entries are prepared
    /// quickly); data is written through a handle, committed when it closes.
    pub fn write(&self, path: &str, data: impl AsRef<[u8]>) -> io::Result<()> {
        let data = data.as_ref();
        match &self.0 {
            View::Dir(root) => std::fs::write(root.join(path), data),
            View::Image(fs) => {
                let (dir, name) = image_parent(fs, path)?;
                let file = match image_walk(fs, &dir, &name) {
                    Ok(node) => fs.open(&root(), &node, libc::O_WRONLY | libc::O_TRUNC)?.0,
                    Err(Errno::ENOENT) if data.is_empty() => {
                        fs.mknod(&root(), &dir, &name, NodeKind::Regular, 0o666, None)?;
                        return Ok(());
                    }
                    Err(Errno::ENOENT) => {
                        fs.create(&root(), &dir, &name, libc::O_WRONLY, 0o666, None)?
                            .1
                    }
                    Err(e) => return Err(io_err(e)),
                };
                let data = bytes::Bytes::copy_from_slice(data);
                let mut done = 0;
                while done < data.len() {
                    done += fs.write(&root(), &file, done as u64, &data.slice(done..))?;
                }
                Ok(())
            }
        }
    }

    /// Make directory `path` (mode 0777, as `std::fs::create_dir` under umask 0).
    pub fn create_dir(&self, path: &str) -> io::Result<()> {
        match &self.0 {
            View::Dir(root) => std::fs::create_dir(root.join(path)),
            View::Image(fs) => {
                let (dir, name) = image_parent(fs, path)?;
                fs.mkdir(&root(), &dir, &name, 0o777, None)?;
                Ok(())
            }
        }
    }

    /// Make `path` a symbolic link to `target`.
    pub fn symlink(&self, target: &str, path: &str) -> io::Result<()> {
        match &self.0 {
            View::Dir(root) => std::os::unix::fs::symlink(target, root.join(path)),
            View::Image(fs) => {
                let (dir, name) = image_parent(fs, path)?;
                fs.symlink(&root(), &dir, &name, target, None)?;
                Ok(())
            }
        }
    }

    /// The target of symbolic link `path`.
    pub fn read_link(&self, path: &str) -> io::Result<String> {
        match &self.0 {
            View::Dir(root) => std::fs::read_link(root.join(path))?
                .into_os_string()
                .into_string()
                .map_err(|_| io_err(Errno::EILSEQ)),
            View::Image(fs) => Ok(fs.readlink(&root(), &image_node(fs, path)?)?),
        }
    }

    /// Move `from` to `to` (replacing a compatible `to`).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        match &self.0 {
            View::Dir(root) => std::fs::rename(root.join(from), root.join(to)),
            View::Image(fs) => {
                let (fdir, fname) = image_parent(fs, from)?;
                let (tdir, tname) = image_parent(fs, to)?;
                Ok(fs.rename(&root(), &fdir, &fname, &tdir, &tname)?)
            }
        }
    }

    /// Remove file (or symlink, or empty directory) `path`.
    pub fn remove(&self, path: &str) -> io::Result<()> {
        match &self.0 {
            View::Dir(root) if self.is_dir(path) => std::fs::remove_dir(root.join(path)),
            View::Dir(root) => std::fs::remove_file(root.join(path)),
            View::Image(fs) => {
                let is_dir = self.is_dir(path);
                let (dir, name) = image_parent(fs, path)?;
                Ok(fs.unlink(&root(), &dir, &name, is_dir)?)
            }
        }
    }

    /// Set the permission bits of `path`.
    pub fn set_mode(&self, path: &str, mode: u32) -> io::Result<()> {
        match &self.0 {
            View::Dir(root) => {
                std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(mode))
            }
            View::Image(fs) => image_setattr(
                fs,
                path,
                SetAttr {
                    mode: Some(mode),
                    ..SetAttr::default()
                },
            ),
        }
    }

    /// Set the owner and group of `path` (not following a symlink).
    pub fn chown(&self, path: &str, uid: u32, gid: u32) -> io::Result<()> {
        match &self.0 {
            View::Dir(root) => std::os::unix::fs::lchown(root.join(path), Some(uid), Some(gid)),
            View::Image(fs) => image_setattr(
                fs,
                path,
                SetAttr {
                    uid: Some(uid),
                    gid: Some(gid),
                    ..SetAttr::default()
                },
            ),
        }
    }

    /// The attributes of `path` itself (a symlink is not followed).
    pub fn metadata(&self, path: &str) -> io::Result<HostMeta> {
        match &self.0 {
            View::Dir(root) => {
                let m = std::fs::symlink_metadata(root.join(path))?;
                Ok(HostMeta {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    nlink: m.nlink(),
                    ino: m.ino(),
                    size: m.size(),
                    rdev: m.rdev(),
                    atime: (m.atime(), m.atime_nsec()),
                    mtime: (m.mtime(), m.mtime_nsec()),
                })
            }
            View::Image(fs) => {
                let a: Attr = fs.getattr(&root(), &image_node(fs, path)?, None)?;
                let t = |(s, ns): (u64, u64)| (s as i64, ns as i64);
                Ok(HostMeta {
                    mode: a.mode,
                    uid: a.uid,
                    gid: a.gid,
                    nlink: a.nlink,
                    ino: a.qid.path,
                    size: a.size,
                    rdev: a.rdev,
                    atime: t(a.atime),
                    mtime: t(a.mtime),
                })
            }
        }
    }

    /// Whether `path` names an entry (a dangling symlink counts). Panics on errors other
    /// than a missing entry or directory (they are the test's to see, not "absent").
    pub fn exists(&self, path: &str) -> bool {
        match self.metadata(path) {
            Ok(_) => true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => false,
            Err(e) => panic!("{path}: {e}"),
        }
    }

    /// Whether `path` is a directory.
    pub fn is_dir(&self, path: &str) -> bool {
        self.metadata(path).is_ok_and(|m| m.is_dir())
    }

    /// The names in directory `path` (without `.` and `..`), sorted.
    pub fn list_dir(&self, path: &str) -> io::Result<Vec<String>> {
        let mut names = match &self.0 {
            View::Dir(root) => std::fs::read_dir(root.join(path))?
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .collect::<io::Result<Vec<_>>>()?,
            View::Image(fs) => {
                let (dir, _) = fs.open(
                    &root(),
                    &image_node(fs, path)?,
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )?;
                let mut names = Vec::new();
                let mut cookie = 0;
                loop {
                    let mut seen = 0;
                    fs.readdir(&root(), &dir, cookie, &mut |e| {
                        seen += 1;
                        cookie = e.next;
                        if e.name != "." && e.name != ".." {
                            names.push(e.name);
                        }
                        true
                    })?;
                    if seen == 0 {
                        break names;
                    }
                }
            }
        };
        names.sort();
        Ok(names)
    }
}

fn root() -> Creds {
    Creds::root()
}

/// The image's node for `path`.
fn image_node(fs: &ImageFs, path: &str) -> Result<ImageNode, Errno> {
    let (top, _) = fs.attach(&root(), "")?;
    let (steps, err) = fs.walk(&root(), &top, &elements(path));
    match err {
        Some(e) => Err(e),
        None => Ok(steps.into_iter().last().map_or(top, |(n, _)| n)),
    }
}

/// The entry `name` of directory `dir`.
fn image_walk(fs: &ImageFs, dir: &ImageNode, name: &str) -> Result<ImageNode, Errno> {
    let (mut steps, err) = fs.walk(&root(), dir, &[name.to_owned()]);
    match (steps.pop(), err) {
        (Some((n, _)), None) => Ok(n),
        (_, e) => Err(e.unwrap_or(Errno::ENOENT)),
    }
}

/// The directory holding `path`, and its last element.
fn image_parent(fs: &ImageFs, path: &str) -> Result<(ImageNode, String), Errno> {
    let mut names = elements(path);
    let name = names.pop().ok_or(Errno::EBUSY)?;
    Ok((image_node(fs, &names.join("/"))?, name))
}

fn image_setattr(fs: &ImageFs, path: &str, set: SetAttr) -> io::Result<()> {
    Ok(fs.setattr(&root(), &image_node(fs, path)?, None, &set)?)
}
