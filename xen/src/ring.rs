//! The Xen 9pfs data ring: `struct xen_9pfs_data_intf` and its two byte streams.
//!
//! Layout (Xen `xen/include/public/io/9pfs.h` and `io/ring.h`, `DEFINE_XEN_FLEX_RING_AND_INTF`):
//! one 4 KiB "intf" page holds the free-running `u32` indexes `in_cons` (offset 0), `in_prod` (4),
//! `out_cons` (64), `out_prod` (68), then `ring_order` (128) and the data pages' grant refs (132).
//! The `2^ring_order` data pages hold two rings of `1 << (ring_order + 11)` bytes each: `in`
//! first (responses, backend → frontend), then `out` (requests, frontend → backend); "in" and
//! "out" are named from the frontend's side. Messages are raw 9P bytes and may wrap.
//!
//! Discipline (docs/misc/9pfs.pandoc): a consumer reads `prod` with acquire ordering, copies, then
//! publishes `cons` with release ordering; a producer copies the **whole** message, then publishes
//! `prod` with release ordering (the write barrier before the index). Linux reads `h.size` bytes
//! as soon as it sees a header, so a response is never published in parts.
//!
//! [`map_ring`] maps a frontend's ring from its grant refs: the intf page, then the data pages
//! it lists, reading `ring_order` and the refs once — the frontend can rewrite them at any time,
//! so the ring's size never depends on a second look.

use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU32, Ordering, fence};

use crate::grant::{GrantError, GrantMapper, GrantMapping, RefList};

/// Size of a Xen page (always 4 KiB, whatever the guest's page size).
pub const PAGE_SIZE: usize = 4096;
/// Largest `ring_order`: 512 grant refs must fit in the intf page.
pub const MAX_RING_ORDER: u32 = 9;
/// Offset of `in_cons` in the intf page.
pub const IN_CONS: usize = 0;
/// Offset of `in_prod`.
pub const IN_PROD: usize = 4;
/// Offset of `out_cons`.
pub const OUT_CONS: usize = 64;
/// Offset of `out_prod`.
pub const OUT_PROD: usize = 68;
/// Offset of `ring_order`.
pub const RING_ORDER: usize = 128;
/// Offset of `ref[0]`, the first data page's grant reference.
pub const REFS: usize = 132;
/// Smallest 9P message (`size[4] type[1] tag[2]`).
pub const MIN_MESSAGE: u32 = 7;

// The grant refs of the largest ring (512) fit in the intf page.
const _: () = assert!(REFS + 4 * (1 << MAX_RING_ORDER) <= PAGE_SIZE);

/// Bytes in each direction for `order` (`XEN_FLEX_RING_SIZE`).
pub const fn ring_size(order: u32) -> usize {
    1 << (order as usize + 12 - 1)
}

/// Memory shared with a frontend: the intf page and the contiguous data pages.
///
/// # Safety
/// Implementors guarantee that `intf()` points to at least [`PAGE_SIZE`] bytes and `data()` to at
/// least `data_len()` bytes, both valid for reads and writes for the implementor's whole
/// lifetime, with `intf()` 4-byte aligned. The other side may write the memory at any time; the
/// ring only ever touches it through atomics (indexes) and byte copies (data) ordered by them.
pub unsafe trait RingMemory: Send {
    /// The intf page.
    fn intf(&self) -> *mut u8;
    /// The data pages.
    fn data(&self) -> *mut u8;
    /// Length of the data area in bytes.
    fn data_len(&self) -> usize;
}

/// Errors of a ring.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// The intf page announces a ring order the backend does not accept.
    #[error("ring order {order} is outside the accepted 1..={max}")]
    BadOrder {
        /// The order found.
        order: u32,
        /// The largest order accepted.
        max: u32,
    },
    /// The mapped data area is smaller than the ring order requires.
    #[error("ring order {order} needs {needed} bytes of data pages, {mapped} are mapped")]
    DataTooSmall {
        /// The order.
        order: u32,
        /// Bytes needed.
        needed: usize,
        /// Bytes mapped.
        mapped: usize,
    },
    /// The frontend's indexes claim more queued bytes than the ring holds.
    #[error("ring indexes are inconsistent: {queued} bytes queued in a {size}-byte ring")]
    Corrupt {
        /// Bytes the indexes claim.
        queued: u32,
        /// The ring's size.
        size: usize,
    },
    /// A request's size field is below the 9P header or above the negotiated maximum.
    #[error("request of {size} bytes outside {MIN_MESSAGE}..={max}")]
    BadMessageSize {
        /// The size field.
        size: u32,
        /// The maximum accepted.
        max: u32,
    },
    /// A response larger than the whole ring can never be sent.
    #[error("response of {len} bytes cannot fit a {size}-byte ring")]
    ResponseTooLarge {
        /// The response's length.
        len: usize,
        /// The ring's size.
        size: usize,
    },
}

/// One side's view of a ring pair.
pub struct Ring<M: RingMemory> {
    mem: M,
    order: u32,
    size: usize,
}

impl<M: RingMemory> Ring<M> {
    /// The backend's view of the ring in `mem`, whose intf page announces the order (read
    /// once, here).
    pub fn new(mem: M) -> Result<Ring<M>, RingError> {
        let order = index(&mem, RING_ORDER).load(Ordering::Acquire);
        Ring::with_order(mem, order)
    }

    /// The ring of `order` in `mem`, without looking at the intf page's `ring_order` (the
    /// caller read it once, and the frontend may have changed it since). The ring's size comes
    /// from `order` for the ring's whole life.
    pub fn with_order(mem: M, order: u32) -> Result<Ring<M>, RingError> {
        if order > MAX_RING_ORDER || order == 0 {
            return Err(RingError::BadOrder {
                order,
                max: MAX_RING_ORDER,
            });
        }
        let size = ring_size(order);
        if mem.data_len() < 2 * size {
            return Err(RingError::DataTooSmall {
                order,
                needed: 2 * size,
                mapped: mem.data_len(),
            });
        }
        Ok(Ring { mem, order, size })
    }

    /// The ring order the ring was built with.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// Bytes per direction.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The shared memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Take the next whole request from the `out` ring, if one is complete. `max` bounds the
    /// size field (the negotiated msize); a size outside `7..=max` is an error (the caller ends
    /// the connection). A partly written request stays queued.
    pub fn read_request(&mut self, max: u32) -> Result<Option<Bytes>, RingError> {
        let base = self.size;
        take_message(&self.mem, base, self.size, OUT_CONS, OUT_PROD, max)
    }

    /// Append one whole response to the `in` ring and publish it; `false` (nothing written) when
    /// it does not fit yet — retry after the frontend consumes.
    pub fn write_response(&mut self, msg: &[u8]) -> Result<bool, RingError> {
        put_message(&self.mem, 0, self.size, IN_CONS, IN_PROD, msg)
    }
}

/// The `u32` index at `offset` of the intf page.
pub(crate) fn index<M: RingMemory>(mem: &M, offset: usize) -> &AtomicU32 {
    // SAFETY: `RingMemory` guarantees the intf page is valid, 4-byte aligned and PAGE_SIZE long
    // for the lifetime of `mem`, which bounds the returned reference's.
    unsafe { word_at(mem.intf(), offset) }
}

/// The `u32` at `offset` of an intf page, as an atomic (the other side writes it concurrently).
///
/// # Safety
/// `page` must be 4-byte aligned and valid for reads and writes of [`PAGE_SIZE`] bytes for `'a`.
pub(crate) unsafe fn word_at<'a>(page: *mut u8, offset: usize) -> &'a AtomicU32 {
    assert!(
        offset.is_multiple_of(4) && offset + 4 <= PAGE_SIZE,
        "intf offset {offset}"
    );
    // SAFETY: the caller vouches for `page` over `'a`; `offset` is a 4-byte aligned word inside
    // it (asserted). AtomicU32 has the size and alignment of u32, and all accesses to shared
    // words go through atomics, so no non-atomic access races with this one.
    unsafe { &*(page.add(offset) as *const AtomicU32) }
}

/// A ring's pages: the intf page and the data pages, as the backend mapped them from the
/// frontend's grants (`map_ring`) or as the frontend shared them (`frontend::FrontendRing`).
#[derive(Debug)]
pub struct RingPages<M: GrantMapping> {
    intf: M,
    data: M,
}

impl<M: GrantMapping> RingPages<M> {
    /// The pages of a ring. The caller has checked that `intf` is at least `PAGE_SIZE` bytes
    /// (the safety of [`RingMemory`] for this type rests on it).
    pub(crate) fn new(intf: M, data: M) -> Self {
        assert!(
            intf.len() >= PAGE_SIZE,
            "an intf mapping of {} bytes",
            intf.len()
        );
        RingPages { intf, data }
    }

    /// The intf page's mapping.
    pub fn intf_mapping(&self) -> &M {
        &self.intf
    }

    /// The data pages' mapping.
    pub fn data_mapping(&self) -> &M {
        &self.data
    }
}

// SAFETY: `RingPages::new`, the only constructor, asserts that the intf mapping is at least
// PAGE_SIZE bytes; `GrantMapping` guarantees both mappings are page-aligned (so 4-byte aligned) and valid
// for reads and writes of `len()` bytes until dropped, which happens only with `self`.
unsafe impl<M: GrantMapping> RingMemory for RingPages<M> {
    fn intf(&self) -> *mut u8 {
        self.intf.as_ptr()
    }
    fn data(&self) -> *mut u8 {
        self.data.as_ptr()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Why a frontend's ring could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MapRingError {
    /// The intf page could not be mapped.
    #[error("9pfs ring at grant ref {intf_ref} of domain {domid}: intf page: {error}")]
    Intf {
        /// The frontend's domain.
        domid: u16,
        /// The intf page's grant ref.
        intf_ref: u32,
        /// The failure.
        error: GrantError,
    },
    /// The intf page announces a ring we refuse (bad order); nothing else was mapped.
    #[error("9pfs ring at grant ref {intf_ref} of domain {domid}: {error}")]
    Ring {
        /// The frontend's domain.
        domid: u16,
        /// The intf page's grant ref.
        intf_ref: u32,
        /// The failure.
        error: RingError,
    },
    /// The data pages the intf page lists could not be mapped.
    #[error("9pfs ring at grant ref {intf_ref} of domain {domid}: data pages: {error}")]
    Data {
        /// The frontend's domain.
        domid: u16,
        /// The intf page's grant ref.
        intf_ref: u32,
        /// The data pages' refs, as read from the intf page.
        refs: RefList,
        /// The failure.
        error: GrantError,
    },
}

/// Map the ring whose intf page is `intf_ref` of domain `domid`, accepting orders up to
/// `max_order` (itself capped at [`MAX_RING_ORDER`]).
///
/// Maps the intf page, reads `ring_order` once and refuses 0 or more than `max_order` before
/// mapping anything else, copies the `2^order` data refs out of the intf page once, maps the
/// data pages, and builds the [`Ring`] with the order it read. On any error everything mapped
/// so far is unmapped.
pub fn map_ring<G: GrantMapper>(
    grants: &G,
    domid: u16,
    intf_ref: u32,
    max_order: u32,
) -> Result<Ring<RingPages<G::Mapping>>, MapRingError> {
    let max = max_order.min(MAX_RING_ORDER);
    let intf = grants
        .map(domid, &[intf_ref])
        .map_err(|error| MapRingError::Intf {
            domid,
            intf_ref,
            error,
        })?;
    assert!(
        intf.len() >= PAGE_SIZE,
        "grant mapper returned {} bytes for one page",
        intf.len()
    );
    // SAFETY: `intf` is a page-aligned mapping of at least PAGE_SIZE bytes (asserted), valid
    // until it is dropped; every word reference below is used only while `intf` is alive.
    let word = |offset| unsafe { word_at(intf.as_ptr(), offset) };
    // Acquire: pairs with the frontend's write of the order and refs before it published the
    // ring in xenstore (and costs nothing if it did not).
    let order = word(RING_ORDER).load(Ordering::Acquire);
    if order == 0 || order > max {
        return Err(MapRingError::Ring {
            domid,
            intf_ref,
            error: RingError::BadOrder { order, max },
        });
    }
    let refs: Vec<u32> = (0..1usize << order)
        .map(|i| word(REFS + 4 * i).load(Ordering::Relaxed))
        .collect();
    let data = grants
        .map(domid, &refs)
        .map_err(|error| MapRingError::Data {
            domid,
            intf_ref,
            refs: RefList::new(&refs),
            error,
        })?;
    Ring::with_order(RingPages::new(intf, data), order).map_err(|error| MapRingError::Ring {
        domid,
        intf_ref,
        error,
    })
}

/// Copy `out.len()` bytes starting at free-running index `idx` of the ring at `base`.
pub(crate) fn copy_from_ring<M: RingMemory>(
    mem: &M,
    base: usize,
    size: usize,
    idx: u32,
    out: &mut [u8],
) {
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout; the callee only writes.
    let out = unsafe { &mut *(out as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    copy_from_ring_uninit(mem, base, size, idx, out)
}

/// [`copy_from_ring`] into memory that need not be initialised; all of `out` is written.
pub(crate) fn copy_from_ring_uninit<M: RingMemory>(
    mem: &M,
    base: usize,
    size: usize,
    idx: u32,
    out: &mut [std::mem::MaybeUninit<u8>],
) {
    let out_ptr = out.as_mut_ptr().cast::<u8>();
    let start = idx as usize & (size - 1);
    let first = out.len().min(size - start);
    // SAFETY: `base + size <= data_len` (checked by the ring's constructor or the simulation);
    // `start < size` and `first <= size - start`, so both copies stay inside this ring's half of
    // the data area; `out` is a distinct, writable Rust buffer. The consumer's acquire load of
    // `prod` orders these reads after the producer's writes.
    unsafe {
        std::ptr::copy_nonoverlapping(mem.data().add(base + start), out_ptr, first);
        std::ptr::copy_nonoverlapping(mem.data().add(base), out_ptr.add(first), out.len() - first);
    }
}

/// Copy `bytes` into the ring at `base` from free-running index `idx`.
fn copy_to_ring<M: RingMemory>(mem: &M, base: usize, size: usize, idx: u32, bytes: &[u8]) {
    let start = idx as usize & (size - 1);
    let first = bytes.len().min(size - start);
    // SAFETY: as in `copy_from_ring`, both destination ranges lie inside this ring's half of the
    // data area, which the producer owns between `prod` and `cons + size`; the release store of
    // `prod` afterwards publishes the bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), mem.data().add(base + start), first);
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr().add(first),
            mem.data().add(base),
            bytes.len() - first,
        );
    }
}

/// Consumer side: take one whole message from the ring at `base` (indexes at `cons`/`prod`).
pub(crate) fn take_message<M: RingMemory>(
    mem: &M,
    base: usize,
    size: usize,
    cons_off: usize,
    prod_off: usize,
    max: u32,
) -> Result<Option<Bytes>, RingError> {
    let cons = index(mem, cons_off).load(Ordering::Relaxed);
    // Acquire: the bytes up to `prod` are visible before we read them.
    let prod = index(mem, prod_off).load(Ordering::Acquire);
    let queued = prod.wrapping_sub(cons);
    if queued as usize > size {
        return Err(RingError::Corrupt { queued, size });
    }
    if queued < 4 {
        return Ok(None);
    }
    let mut head = [0u8; 4];
    copy_from_ring(mem, base, size, cons, &mut head);
    let len = u32::from_le_bytes(head);
    if !(MIN_MESSAGE..=max).contains(&len) || len as usize > size {
        return Err(RingError::BadMessageSize {
            size: len,
            max: max.min(size as u32),
        });
    }
    if queued < len {
        return Ok(None);
    }
    // Not zero-filled first: the copy writes every byte (a Twrite is an msize of them).
    let mut msg = BytesMut::with_capacity(len as usize);
    copy_from_ring_uninit(
        mem,
        base,
        size,
        cons,
        &mut msg.spare_capacity_mut()[..len as usize],
    );
    // SAFETY: the copy above initialised the first `len` bytes of the spare capacity.
    unsafe { msg.set_len(len as usize) };
    // Release: our reads of the bytes finish before the producer may reuse them.
    index(mem, cons_off).store(cons.wrapping_add(len), Ordering::Release);
    Ok(Some(msg.freeze()))
}

/// Producer side: append `msg` whole to the ring at `base`, or report that it does not fit.
pub(crate) fn put_message<M: RingMemory>(
    mem: &M,
    base: usize,
    size: usize,
    cons_off: usize,
    prod_off: usize,
    msg: &[u8],
) -> Result<bool, RingError> {
    if msg.len() > size {
        return Err(RingError::ResponseTooLarge {
            len: msg.len(),
            size,
        });
    }
    let prod = index(mem, prod_off).load(Ordering::Relaxed);
    // Acquire: the consumer's reads of the space we are about to reuse are finished.
    let cons = index(mem, cons_off).load(Ordering::Acquire);
    let queued = prod.wrapping_sub(cons);
    if queued as usize > size {
        return Err(RingError::Corrupt { queued, size });
    }
    if size - (queued as usize) < msg.len() {
        return Ok(false);
    }
    copy_to_ring(mem, base, size, prod, msg);
    // The write barrier before the index (Xen's `virt_wmb()`): the whole message is in place
    // before the consumer can see the new `prod`.
    fence(Ordering::Release);
    index(mem, prod_off).store(prod.wrapping_add(msg.len() as u32), Ordering::Release);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_xen_header() {
        // Offsets of struct xen_9pfs_data_intf (two 56-byte pads; ring.h, not the pandoc diagram).
        assert_eq!(
            (IN_CONS, IN_PROD, OUT_CONS, OUT_PROD, RING_ORDER, REFS),
            (0, 4, 64, 68, 128, 132)
        );
        assert_eq!(ring_size(9), 1 << 20, "order 9: 1 MiB per direction");
        assert_eq!(ring_size(1), 4096);
    }
}
