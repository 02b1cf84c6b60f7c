//! Grant mapping: seeing pages a guest has granted us, contiguously, in our address space.
//!
//! A 9pfs frontend shares its ring by *granting* pages and publishing the grant references
//! (`u32`s) in xenstore and in the ring's intf page. [`GrantMapper`] turns `(domid, refs)` into a
//! [`GrantMapping`] that unmaps on drop. Two implementations share the trait: [`GntDev`], Linux's
//! `/dev/xen/gntdev` (register the refs with `IOCTL_GNTDEV_MAP_GRANT_REF`, `mmap` the returned
//! offset; the hypervisor checks the grants at `mmap` time), and `sim::SimGrantTable`, a memfd
//! standing in for guest memory, for tests without Xen.
//!
//! The ioctl structures and numbers are in [`abi`], pinned against the C header by
//! `tests/ioctl_abi.rs`.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use rustix::mm::{MapFlags, ProtFlags};

use crate::ring::PAGE_SIZE;

/// Maps pages granted by other domains.
pub trait GrantMapper: Send + Sync + 'static {
    /// A mapping; dropping it unmaps the pages.
    type Mapping: GrantMapping;
    /// Map the pages `refs` granted by domain `domid`, read-write, contiguously in our address
    /// space, in the order given.
    fn map(&self, domid: u16, refs: &[u32]) -> Result<Self::Mapping, GrantError>;
}

/// Granted pages mapped into our address space.
///
/// # Safety
/// Implementors guarantee that [`as_ptr`](Self::as_ptr) is page-aligned and valid for reads and
/// writes of [`len`](Self::len) bytes until the mapping is dropped (which unmaps it), and that
/// both return the same values for the mapping's whole life. The granting domain may write the
/// memory at any time, so users touch it only through raw pointers and atomics, never through
/// Rust references to its bytes.
pub unsafe trait GrantMapping: Send + Sync + 'static {
    /// Start of the mapped pages.
    fn as_ptr(&self) -> *mut u8;
    /// Length in bytes (a multiple of [`PAGE_SIZE`]).
    fn len(&self) -> usize;
    /// Whether no bytes are mapped (never, for a successful map of at least one ref).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Grant refs named in an error message: how many, and the first few.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefList {
    count: usize,
    first: Vec<u32>,
}

impl RefList {
    const SHOWN: usize = 4;

    /// Summarise `refs`.
    pub fn new(refs: &[u32]) -> RefList {
        RefList {
            count: refs.len(),
            first: refs.iter().take(Self::SHOWN).copied().collect(),
        }
    }

    /// How many refs there were.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The first few refs.
    pub fn first(&self) -> &[u32] {
        &self.first
    }
}

impl fmt::Display for RefList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.count {
            1 => write!(f, "grant ref {}", self.first[0]),
            n => {
                write!(f, "{n} grant refs (")?;
                for (i, r) in self.first.iter().enumerate() {
                    write!(f, "{}{r}", if i == 0 { "" } else { ", " })?;
                }
                if n > self.first.len() {
                    write!(f, ", …")?;
                }
                write!(f, ")")
            }
        }
    }
}

/// Why granted pages could not be mapped. Each message names the device, the domain and the
/// refs involved.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The grant device could not be opened.
    #[error("open {}: {}{}", .path.display(), os_text(.error), open_hint("xen-gntdev", .error))]
    Open {
        /// The device path.
        path: PathBuf,
        /// The failure.
        error: io::Error,
    },
    /// Grant mapping assumes 4 KiB pages (Xen's page size) and this kernel's differ.
    #[error(
        "this kernel uses {page_size}-byte pages; grant mapping here needs {PAGE_SIZE}-byte pages"
    )]
    PageSize {
        /// The kernel's page size.
        page_size: usize,
    },
    /// Nothing to map.
    #[error("domain {domid}: asked to map an empty list of grant refs")]
    NoRefs {
        /// The granting domain.
        domid: u16,
    },
    /// `IOCTL_GNTDEV_MAP_GRANT_REF` failed (before the hypervisor looked at the grants).
    #[error(
        "{}: IOCTL_GNTDEV_MAP_GRANT_REF for {refs} of domain {domid}: {}",
        .path.display(),
        os_text(.error)
    )]
    Register {
        /// The device path.
        path: PathBuf,
        /// The granting domain.
        domid: u16,
        /// The refs.
        refs: RefList,
        /// The failure.
        error: io::Error,
    },
    /// Mapping the pages failed: with gntdev this is where the hypervisor refuses refs that are
    /// not granted to us.
    #[error(
        "{}: mapping {refs} of domain {domid}: {} (has domain {domid} granted them to us?)",
        .path.display(),
        os_text(.error)
    )]
    Map {
        /// The device path (or the simulation's name).
        path: PathBuf,
        /// The granting domain.
        domid: u16,
        /// The refs.
        refs: RefList,
        /// The failure.
        error: io::Error,
    },
    /// The grant table refuses one ref (the simulation's equivalent of the hypervisor's
    /// `GNTST_bad_gntref` / `GNTST_permission_denied`).
    #[error("domain {domid}, grant ref {grant_ref}: {reason}")]
    Denied {
        /// The domain we asked for.
        domid: u16,
        /// The ref refused.
        grant_ref: u32,
        /// Why.
        reason: String,
    },
}

/// An I/O error's text without std's " (os error N)" suffix: "No such file or directory".
pub(crate) fn os_text(error: &io::Error) -> String {
    let text = error.to_string();
    match error.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&text)
            .to_string(),
        None => text,
    }
}

/// A hint after an `open` failure of a `/dev/xen` device served by kernel module `module`.
pub(crate) fn open_hint(module: &str, error: &io::Error) -> String {
    match rustix::io::Errno::from_io_error(error) {
        Some(rustix::io::Errno::NOENT | rustix::io::Errno::NODEV | rustix::io::Errno::NXIO) => {
            format!(" (is this a Xen dom0 with the {module} module loaded?)")
        }
        Some(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => {
            " (the backend must run as root, or with read-write access to the device)".into()
        }
        _ => String::new(),
    }
}

/// Linux's gntdev ioctl ABI (`include/uapi/xen/gntdev.h`; `/usr/include/xen/sys/gntdev.h`
/// from libxen-dev), checked against the C header by `tests/ioctl_abi.rs`.
pub mod abi {
    use rustix::ioctl::{Direction, Opcode, opcode};

    /// `struct ioctl_gntdev_grant_ref`.
    #[repr(C)]
    pub struct GrantRef {
        /// The granting domain.
        pub domid: u32,
        /// The grant reference.
        pub gref: u32,
    }

    /// `struct ioctl_gntdev_map_grant_ref`, declared with one ref; the real argument carries
    /// `count` refs (a variable-length struct), but the ioctl number uses this size.
    #[repr(C)]
    pub struct MapGrantRef {
        /// In: number of refs.
        pub count: u32,
        /// Padding.
        pub pad: u32,
        /// Out: the offset to `mmap`.
        pub index: u64,
        /// In: the refs (`count` of them).
        pub refs: [GrantRef; 1],
    }

    /// `struct ioctl_gntdev_unmap_grant_ref`.
    #[repr(C)]
    pub struct UnmapGrantRef {
        /// The offset `IOCTL_GNTDEV_MAP_GRANT_REF` returned.
        pub index: u64,
        /// Number of pages.
        pub count: u32,
        /// Padding.
        pub pad: u32,
    }

    /// `_IOC(_IOC_NONE, 'G', 0, sizeof(struct ioctl_gntdev_map_grant_ref))`.
    pub const IOCTL_GNTDEV_MAP_GRANT_REF: Opcode =
        opcode::from_components(Direction::None, b'G', 0, size_of::<MapGrantRef>());
    /// `_IOC(_IOC_NONE, 'G', 1, sizeof(struct ioctl_gntdev_unmap_grant_ref))`.
    pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: Opcode =
        opcode::from_components(Direction::None, b'G', 1, size_of::<UnmapGrantRef>());
}

/// An ioctl whose argument is a raw pointer and whose result is the syscall's return value.
pub(crate) struct RawIoctl {
    pub(crate) opcode: rustix::ioctl::Opcode,
    pub(crate) arg: *mut std::ffi::c_void,
}

// SAFETY: `ioctl` passes `arg` through unchanged and returns the syscall's non-negative return
// value; every caller argues that its opcode and argument match the driver's ABI. We claim
// mutation (`IS_MUTATING`) because the drivers may write through `arg`.
unsafe impl rustix::ioctl::Ioctl for RawIoctl {
    type Output = rustix::ioctl::IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> rustix::ioctl::Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        self.arg
    }

    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<Self::Output> {
        Ok(out)
    }
}

/// Linux's grant device, `/dev/xen/gntdev`.
#[derive(Debug)]
pub struct GntDev {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

impl GntDev {
    /// Where Linux puts the device.
    pub const PATH: &'static str = "/dev/xen/gntdev";

    /// Open [`Self::PATH`].
    pub fn open() -> Result<GntDev, GrantError> {
        GntDev::open_path(Self::PATH)
    }

    /// Open the grant device at `path`.
    pub fn open_path(path: impl AsRef<Path>) -> Result<GntDev, GrantError> {
        let path = path.as_ref().to_path_buf();
        let page_size = rustix::param::page_size();
        if page_size != PAGE_SIZE {
            return Err(GrantError::PageSize { page_size });
        }
        let fd = rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| GrantError::Open {
            path: path.clone(),
            error: e.into(),
        })?;
        Ok(GntDev {
            fd: Arc::new(fd),
            path,
        })
    }

    /// The device's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Release the gntdev slots `index..index + count` pages (after `munmap`, or when `mmap` failed).
fn unregister(fd: &OwnedFd, index: u64, count: usize) -> io::Result<()> {
    let mut arg = abi::UnmapGrantRef {
        index,
        count: count as u32,
        pad: 0,
    };
    // SAFETY: the opcode is gntdev's UNMAP_GRANT_REF, whose argument is exactly this
    // `#[repr(C)]` struct (layout pinned by tests/ioctl_abi.rs); `arg` lives across the call.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            RawIoctl {
                opcode: abi::IOCTL_GNTDEV_UNMAP_GRANT_REF,
                arg: (&raw mut arg).cast(),
            },
        )
    }?;
    Ok(())
}

impl GrantMapper for GntDev {
    type Mapping = GntDevMapping;

    fn map(&self, domid: u16, refs: &[u32]) -> Result<GntDevMapping, GrantError> {
        use std::mem::offset_of;
        if refs.is_empty() {
            return Err(GrantError::NoRefs { domid });
        }
        let count = refs.len();
        // The variable-length argument: the header, then `count` refs (at least one, so the
        // buffer is at least the `sizeof` the kernel copies first).
        let refs_at = offset_of!(abi::MapGrantRef, refs);
        let one = size_of::<abi::GrantRef>();
        let mut arg = vec![0u8; refs_at + count * one];
        let put =
            |arg: &mut [u8], at: usize, v: u32| arg[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        put(&mut arg, offset_of!(abi::MapGrantRef, count), count as u32);
        for (i, r) in refs.iter().enumerate() {
            put(
                &mut arg,
                refs_at + i * one + offset_of!(abi::GrantRef, domid),
                domid.into(),
            );
            put(
                &mut arg,
                refs_at + i * one + offset_of!(abi::GrantRef, gref),
                *r,
            );
        }
        // SAFETY: the opcode is gntdev's MAP_GRANT_REF; `arg` is laid out as its variable-length
        // struct with `count` refs (offsets from the `#[repr(C)]` mirror pinned by
        // tests/ioctl_abi.rs) and is at least `size_of::<MapGrantRef>()` long since count >= 1.
        // The kernel reads the header and `count` refs and writes `index` — all inside `arg`,
        // which lives across the call. It has no alignment requirement (copy_from_user).
        unsafe {
            rustix::ioctl::ioctl(
                &*self.fd,
                RawIoctl {
                    opcode: abi::IOCTL_GNTDEV_MAP_GRANT_REF,
                    arg: arg.as_mut_ptr().cast(),
                },
            )
        }
        .map_err(|e| GrantError::Register {
            path: self.path.clone(),
            domid,
            refs: RefList::new(refs),
            error: e.into(),
        })?;
        let at = offset_of!(abi::MapGrantRef, index);
        let index = u64::from_ne_bytes(arg[at..at + 8].try_into().expect("8 bytes"));
        let len = count * PAGE_SIZE;
        // SAFETY: a new shared mapping at an address the kernel chooses (no MAP_FIXED), so it
        // replaces nothing we own; `index` is the offset gntdev just reserved for these refs.
        let mapped = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &*self.fd,
                index,
            )
        };
        match mapped {
            Ok(ptr) => Ok(GntDevMapping {
                fd: self.fd.clone(),
                ptr: NonNull::new(ptr.cast()).expect("mmap does not return null"),
                count,
                index,
            }),
            Err(e) => {
                // Give the slots back; nothing else refers to them.
                let _ = unregister(&self.fd, index, count);
                Err(GrantError::Map {
                    path: self.path.clone(),
                    domid,
                    refs: RefList::new(refs),
                    error: e.into(),
                })
            }
        }
    }
}

/// Pages mapped through [`GntDev`]; dropping unmaps them and releases the gntdev slots.
#[derive(Debug)]
pub struct GntDevMapping {
    fd: Arc<OwnedFd>,
    ptr: NonNull<u8>,
    count: usize,
    index: u64,
}

// SAFETY: the mapping is process-wide memory owned by this value until drop; nothing about it
// is tied to a thread, and it hands out only raw pointers (shared-memory discipline is the
// user's, as for any `GrantMapping`).
unsafe impl Send for GntDevMapping {}
// SAFETY: `&GntDevMapping` only exposes the pointer and length, which never change.
unsafe impl Sync for GntDevMapping {}

// SAFETY: `ptr` is the start of a successful `mmap` of `count` pages (page-aligned, PROT_READ |
// PROT_WRITE), unmapped only by our `Drop`; the fields never change.
unsafe impl GrantMapping for GntDevMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.count * PAGE_SIZE
    }
}

impl Drop for GntDevMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range our `mmap` returned, unmapped once; the `GrantMapping`
        // contract ends every use of the pointer with the mapping's life.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len()) };
        let _ = unregister(&self.fd, self.index, self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_says_what_to_check() {
        let err = GntDev::open_path("/nonexistent/xen/gntdev").unwrap_err();
        assert_eq!(
            err.to_string(),
            "open /nonexistent/xen/gntdev: No such file or directory (is this a Xen dom0 with the xen-gntdev module loaded?)"
        );
        if !Path::new(GntDev::PATH).exists() {
            let err = GntDev::open().unwrap_err().to_string();
            assert!(
                err.starts_with("open /dev/xen/gntdev: ") && err.contains("xen-gntdev module"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_failing_ioctl_names_the_domain_and_refs() {
        // /dev/null accepts the open but not gntdev's ioctl (ENOTTY).
        let dev = GntDev::open_path("/dev/null").unwrap();
        let err = dev.map(7, &[8, 9, 11, 12, 14, 15]).unwrap_err();
        assert!(matches!(&err, GrantError::Register { domid: 7, refs, .. } if refs.count() == 6));
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "/dev/null: IOCTL_GNTDEV_MAP_GRANT_REF for 6 grant refs (8, 9, 11, 12, …) of domain 7: "
            ),
            "{msg}"
        );
        assert!(matches!(
            dev.map(7, &[]),
            Err(GrantError::NoRefs { domid: 7 })
        ));
        assert_eq!(RefList::new(&[42]).to_string(), "grant ref 42");
        assert_eq!(RefList::new(&[1, 2]).to_string(), "2 grant refs (1, 2)");
    }
}
