//! Grants: sharing pages between domains, from both sides.
//!
//! A 9pfs frontend shares its ring by *granting* pages and publishing the grant references
//! (`u32`s) in xenstore and in the ring's intf page; the backend *maps* them.
//!
//! - Backend side: [`GrantMapper`] turns `(domid, refs)` into a [`GrantMapping`] that unmaps on
//!   drop. [`GntDev`] is Linux's `/dev/xen/gntdev` (register the refs with
//!   `IOCTL_GNTDEV_MAP_GRANT_REF`, `mmap` the returned offset; the hypervisor checks the grants
//!   at `mmap` time).
//! - Frontend side: [`GrantSharer`] allocates zeroed pages of our own, grants them to a domain
//!   and maps them for us: [`SharedGrants`] (refs and memory) ends the grants on drop.
//!   [`GntAlloc`] is Linux's `/dev/xen/gntalloc` (`IOCTL_GNTALLOC_ALLOC_GREF`, then `mmap` of
//!   the returned offset; drop = `munmap` + `IOCTL_GNTALLOC_DEALLOC_GREF`). It lets a program in
//!   any domain — dom0 included, granting to itself — play a frontend (`envoy-xen-frontend`).
//!
//! `sim::SimGrantTable` implements both sides over a memfd standing in for guest memory, for
//! tests without Xen.
//!
//! The ioctl structures and numbers are in [`abi`], pinned against the C headers by
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

/// Shares pages of our own memory with another domain: the frontend's side of a grant.
pub trait GrantSharer: Send + Sync + 'static {
    /// The shared pages; dropping them ends the grants.
    type Shared: SharedGrants;
    /// Allocate `pages` zeroed pages, grant them to domain `to_domid` (read-write if
    /// `writable`) and map them contiguously in our address space, in the order of the refs.
    fn share(
        &self,
        to_domid: u16,
        pages: usize,
        writable: bool,
    ) -> Result<Self::Shared, GrantError>;
}

/// Pages we granted to another domain, mapped in our address space.
///
/// # Safety
/// Implementors give the guarantees of [`GrantMapping`] (the other domain may write the memory
/// at any time), and [`refs`](Self::refs) holds exactly one grant ref per page of the mapping,
/// ref `i` granting page `i`, unchanged for the value's life.
pub unsafe trait SharedGrants: GrantMapping {
    /// The grant refs, one per page, in memory order.
    fn refs(&self) -> &[u32];
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
    /// The grant allocation device could not be opened.
    #[error(
        "open {}: {}{}",
        .path.display(),
        os_text(.error),
        device_hint("a Xen domain", "xen-gntalloc", "run as root", .error)
    )]
    OpenAlloc {
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
    /// Nothing to share.
    #[error("asked to share no pages with domain {domid}")]
    NoPages {
        /// The domain the pages were for.
        domid: u16,
    },
    /// `IOCTL_GNTALLOC_ALLOC_GREF` failed: no pages were allocated or granted.
    #[error(
        "{}: IOCTL_GNTALLOC_ALLOC_GREF of {count} pages for domain {domid}: {}{}",
        .path.display(),
        os_text(.error),
        alloc_hint(.error)
    )]
    Share {
        /// The device path.
        path: PathBuf,
        /// The domain the pages were for.
        domid: u16,
        /// How many pages.
        count: usize,
        /// The failure.
        error: io::Error,
    },
    /// Mapping pages we had just granted failed (the grants were ended again).
    #[error(
        "{}: mapping the {count} pages granted to domain {domid}: {}",
        .path.display(),
        os_text(.error)
    )]
    MapShared {
        /// The device path.
        path: PathBuf,
        /// The domain the pages were for.
        domid: u16,
        /// How many pages.
        count: usize,
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

/// A hint after an `open` failure of a backend's `/dev/xen` device served by kernel module
/// `module`.
pub(crate) fn open_hint(module: &str, error: &io::Error) -> String {
    device_hint("a Xen dom0", module, "the backend must run as root", error)
}

/// A hint after an `open` failure of a `/dev/xen` device served by kernel module `module`,
/// which exists in `domain` ("a Xen dom0"); `privilege` says who may open it.
pub(crate) fn device_hint(
    domain: &str,
    module: &str,
    privilege: &str,
    error: &io::Error,
) -> String {
    match rustix::io::Errno::from_io_error(error) {
        Some(rustix::io::Errno::NOENT | rustix::io::Errno::NODEV | rustix::io::Errno::NXIO) => {
            format!(" (is this {domain} with the {module} module loaded?)")
        }
        Some(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => {
            format!(" ({privilege}, or with read-write access to the device)")
        }
        _ => String::new(),
    }
}

/// A hint after `IOCTL_GNTALLOC_ALLOC_GREF` failed.
fn alloc_hint(error: &io::Error) -> &'static str {
    match rustix::io::Errno::from_io_error(error) {
        Some(rustix::io::Errno::NOSPC) => {
            " (xen-gntalloc's limit on grants in all is reached: see \
             /sys/module/xen_gntalloc/parameters/limit, 1024 by default)"
        }
        _ => "",
    }
}

/// Linux's gntdev and gntalloc ioctl ABI (`include/uapi/xen/gntdev.h`, `gntalloc.h`;
/// `/usr/include/xen/sys/` from libxen-dev), checked against the C headers by
/// `tests/ioctl_abi.rs`.
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

    /// `struct ioctl_gntalloc_alloc_gref` (`include/uapi/xen/gntalloc.h`), declared with one
    /// ref; the real argument has room for `count` refs, but the ioctl number uses this size
    /// and the kernel writes the whole header (this size) back.
    #[repr(C)]
    pub struct AllocGref {
        /// In: the domain given access.
        pub domid: u16,
        /// In: [`GNTALLOC_FLAG_WRITABLE`] or 0.
        pub flags: u16,
        /// In: number of pages.
        pub count: u32,
        /// Out: the offset to `mmap`.
        pub index: u64,
        /// Out: the grant refs (`count` of them).
        pub gref_ids: [u32; 1],
    }

    /// `struct ioctl_gntalloc_dealloc_gref`.
    #[repr(C)]
    pub struct DeallocGref {
        /// The offset `IOCTL_GNTALLOC_ALLOC_GREF` returned.
        pub index: u64,
        /// Number of pages.
        pub count: u32,
    }

    /// `GNTALLOC_FLAG_WRITABLE`: the other domain may write the pages.
    pub const GNTALLOC_FLAG_WRITABLE: u16 = 1;

    /// `_IOC(_IOC_NONE, 'G', 0, sizeof(struct ioctl_gntdev_map_grant_ref))`.
    pub const IOCTL_GNTDEV_MAP_GRANT_REF: Opcode =
        opcode::from_components(Direction::None, b'G', 0, size_of::<MapGrantRef>());
    /// `_IOC(_IOC_NONE, 'G', 1, sizeof(struct ioctl_gntdev_unmap_grant_ref))`.
    pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: Opcode =
        opcode::from_components(Direction::None, b'G', 1, size_of::<UnmapGrantRef>());
    /// `_IOC(_IOC_NONE, 'G', 5, sizeof(struct ioctl_gntalloc_alloc_gref))`.
    pub const IOCTL_GNTALLOC_ALLOC_GREF: Opcode =
        opcode::from_components(Direction::None, b'G', 5, size_of::<AllocGref>());
    /// `_IOC(_IOC_NONE, 'G', 6, sizeof(struct ioctl_gntalloc_dealloc_gref))`.
    pub const IOCTL_GNTALLOC_DEALLOC_GREF: Opcode =
        opcode::from_components(Direction::None, b'G', 6, size_of::<DeallocGref>());
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

/// Open one of Linux's grant devices read-write; the pages it deals in must be Xen's 4 KiB.
/// `opening` makes the device-specific error (each names its module).
fn open_grant_device(
    path: &Path,
    opening: impl FnOnce(PathBuf, std::io::Error) -> GrantError,
) -> Result<(Arc<OwnedFd>, PathBuf), GrantError> {
    let page_size = rustix::param::page_size();
    if page_size != PAGE_SIZE {
        return Err(GrantError::PageSize { page_size });
    }
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| opening(path.to_path_buf(), e.into()))?;
    Ok((Arc::new(fd), path.to_path_buf()))
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
        let (fd, path) = open_grant_device(path.as_ref(), |path, error| GrantError::Open {
            path,
            error,
        })?;
        Ok(GntDev { fd, path })
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

/// Linux's grant allocation device, `/dev/xen/gntalloc`: a frontend's grants from user space.
///
/// Each [`share`](Self::share) allocates zeroed kernel pages, grants them to one domain and maps
/// them into our address space; the [`SharedPages`] end the grants on drop. The module allows
/// 1,024 grants in all by default (`/sys/module/xen_gntalloc/parameters/limit`).
#[derive(Debug)]
pub struct GntAlloc {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

impl GntAlloc {
    /// Where Linux puts the device.
    pub const PATH: &'static str = "/dev/xen/gntalloc";

    /// Open [`Self::PATH`].
    pub fn open() -> Result<GntAlloc, GrantError> {
        GntAlloc::open_path(Self::PATH)
    }

    /// Open the grant allocation device at `path`.
    pub fn open_path(path: impl AsRef<Path>) -> Result<GntAlloc, GrantError> {
        let (fd, path) = open_grant_device(path.as_ref(), |path, error| GrantError::OpenAlloc {
            path,
            error,
        })?;
        Ok(GntAlloc { fd, path })
    }

    /// The device's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Allocate `pages` zeroed pages, grant them to domain `to_domid` (read-write if
    /// `writable`) and map them: `IOCTL_GNTALLOC_ALLOC_GREF`, then `mmap` of the returned
    /// offset. On a failed `mmap` the grants are released before the error returns.
    pub fn share(
        &self,
        to_domid: u16,
        pages: usize,
        writable: bool,
    ) -> Result<SharedPages, GrantError> {
        use std::mem::offset_of;
        if pages == 0 {
            return Err(GrantError::NoPages { domid: to_domid });
        }
        let share_error = |error: io::Error| GrantError::Share {
            path: self.path.clone(),
            domid: to_domid,
            count: pages,
            error,
        };
        let count = u32::try_from(pages)
            .map_err(|_| share_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // The variable-length argument: the header, then room for `count` refs — and at least
        // `size_of::<AllocGref>()` bytes, which the kernel reads and writes back whole.
        let refs_at = offset_of!(abi::AllocGref, gref_ids);
        let mut arg = vec![0u8; (refs_at + pages * 4).max(size_of::<abi::AllocGref>())];
        arg[offset_of!(abi::AllocGref, domid)..][..2].copy_from_slice(&to_domid.to_ne_bytes());
        let flags = if writable {
            abi::GNTALLOC_FLAG_WRITABLE
        } else {
            0
        };
        arg[offset_of!(abi::AllocGref, flags)..][..2].copy_from_slice(&flags.to_ne_bytes());
        arg[offset_of!(abi::AllocGref, count)..][..4].copy_from_slice(&count.to_ne_bytes());
        // SAFETY: the opcode is gntalloc's ALLOC_GREF; `arg` is laid out as its
        // variable-length struct (offsets from the `#[repr(C)]` mirror pinned by
        // tests/ioctl_abi.rs). The kernel reads `sizeof(struct)` bytes, then writes the header
        // (`sizeof(struct)` bytes) and `count` refs from `refs_at` — all inside `arg`, which is
        // at least that long and lives across the call. No alignment is needed
        // (copy_from_user/copy_to_user).
        unsafe {
            rustix::ioctl::ioctl(
                &*self.fd,
                RawIoctl {
                    opcode: abi::IOCTL_GNTALLOC_ALLOC_GREF,
                    arg: arg.as_mut_ptr().cast(),
                },
            )
        }
        .map_err(|e| share_error(e.into()))?;
        let at = offset_of!(abi::AllocGref, index);
        let index = u64::from_ne_bytes(arg[at..at + 8].try_into().expect("8 bytes"));
        let refs: Vec<u32> = (0..pages)
            .map(|i| {
                let at = refs_at + 4 * i;
                u32::from_ne_bytes(arg[at..at + 4].try_into().expect("4 bytes"))
            })
            .collect();
        let len = pages * PAGE_SIZE;
        // SAFETY: a new shared mapping at an address the kernel chooses (no MAP_FIXED), so it
        // replaces nothing we own; `index` is the offset gntalloc just assigned to these pages
        // (gntalloc requires MAP_SHARED).
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
            Ok(ptr) => Ok(SharedPages {
                fd: self.fd.clone(),
                ptr: NonNull::new(ptr.cast()).expect("mmap does not return null"),
                index,
                refs,
                domid: to_domid,
            }),
            Err(e) => {
                // End the grants; nothing else refers to them.
                let _ = dealloc(&self.fd, index, count);
                Err(GrantError::MapShared {
                    path: self.path.clone(),
                    domid: to_domid,
                    count: pages,
                    error: e.into(),
                })
            }
        }
    }
}

impl GrantSharer for GntAlloc {
    type Shared = SharedPages;

    fn share(
        &self,
        to_domid: u16,
        pages: usize,
        writable: bool,
    ) -> Result<SharedPages, GrantError> {
        GntAlloc::share(self, to_domid, pages, writable)
    }
}

/// Give gntalloc's pages `index..index + count` pages back: their grants end (at once, or when
/// the other domain unmaps them) and the pages are freed.
fn dealloc(fd: &OwnedFd, index: u64, count: u32) -> io::Result<()> {
    let mut arg = abi::DeallocGref { index, count };
    // SAFETY: the opcode is gntalloc's DEALLOC_GREF, whose argument is exactly this
    // `#[repr(C)]` struct (layout pinned by tests/ioctl_abi.rs); the kernel only reads it, and
    // it lives across the call.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            RawIoctl {
                opcode: abi::IOCTL_GNTALLOC_DEALLOC_GREF,
                arg: (&raw mut arg).cast(),
            },
        )
    }?;
    Ok(())
}

/// Pages shared through [`GntAlloc`]; dropping unmaps them and deallocates the grants.
#[derive(Debug)]
pub struct SharedPages {
    fd: Arc<OwnedFd>,
    ptr: NonNull<u8>,
    index: u64,
    refs: Vec<u32>,
    domid: u16,
}

impl SharedPages {
    /// The grant refs, one per page, in memory order.
    pub fn refs(&self) -> &[u32] {
        &self.refs
    }

    /// The domain the pages are granted to.
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// Start of the pages (page-aligned; valid for reads and writes of [`len`](Self::len)
    /// bytes while `self` lives; the other domain may write them at any time).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.refs.len() * PAGE_SIZE
    }

    /// Whether no bytes are shared (never: sharing needs at least one page).
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }
}

// SAFETY: the mapping is process-wide memory owned by this value until drop; nothing about it
// is tied to a thread, and it hands out only raw pointers.
unsafe impl Send for SharedPages {}
// SAFETY: `&SharedPages` only exposes the pointer, length and refs, which never change.
unsafe impl Sync for SharedPages {}

// SAFETY: `ptr` is the start of a successful `mmap` of `refs.len()` pages (page-aligned,
// PROT_READ | PROT_WRITE), unmapped only by our `Drop`; the fields never change.
unsafe impl GrantMapping for SharedPages {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        SharedPages::len(self)
    }
}

// SAFETY: gntalloc returned one ref per page, in the order of the pages at `index`, which is
// the order `mmap` maps them in; `refs` never changes.
unsafe impl SharedGrants for SharedPages {
    fn refs(&self) -> &[u32] {
        &self.refs
    }
}

impl Drop for SharedPages {
    fn drop(&mut self) {
        // SAFETY: exactly the range our `mmap` returned, unmapped once; the `GrantMapping`
        // contract ends every use of the pointer with the value's life.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len()) };
        let _ = dealloc(&self.fd, self.index, self.refs.len() as u32);
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

    #[test]
    fn a_missing_gntalloc_says_what_to_check() {
        let err = GntAlloc::open_path("/nonexistent/xen/gntalloc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "open /nonexistent/xen/gntalloc: No such file or directory (is this a Xen domain with the xen-gntalloc module loaded?)"
        );
        if !Path::new(GntAlloc::PATH).exists() {
            let err = GntAlloc::open().unwrap_err().to_string();
            assert!(
                err.starts_with("open /dev/xen/gntalloc: ") && err.contains("xen-gntalloc module"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_failing_alloc_names_the_domain_and_count() {
        // /dev/null accepts the open but not gntalloc's ioctl (ENOTTY).
        let dev = GntAlloc::open_path("/dev/null").unwrap();
        let err = dev.share(3, 17, true).unwrap_err();
        assert!(matches!(
            &err,
            GrantError::Share {
                domid: 3,
                count: 17,
                ..
            }
        ));
        assert!(
            err.to_string()
                .starts_with("/dev/null: IOCTL_GNTALLOC_ALLOC_GREF of 17 pages for domain 3: "),
            "{err}"
        );
        assert!(matches!(
            dev.share(3, 0, true),
            Err(GrantError::NoPages { domid: 3 })
        ));
        let full = GrantError::Share {
            path: GntAlloc::PATH.into(),
            domid: 0,
            count: 513,
            error: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(
            full.to_string()
                .ends_with("/sys/module/xen_gntalloc/parameters/limit, 1024 by default)"),
            "{full}"
        );
    }
}
