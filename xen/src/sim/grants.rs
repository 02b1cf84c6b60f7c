//! A simulated grant table: guest pages in a memfd, mapped the way gntdev maps them.
//!
//! The frontend grants pages ([`SimGrantTable::grant_pages`], or through the [`GrantSharer`]
//! of [`SimGrantTable::granter`], as gntalloc does); each gets a ref and a page of the memfd,
//! laid out out of order (a grant's pages are stored in reverse) so that, as with real guest
//! memory, pages with neighbouring refs are not neighbours in memory. The backend's
//! [`GrantMapper`] maps each ref's page with `MAP_FIXED` at consecutive addresses of a reserved
//! `PROT_NONE` region: non-contiguous guest pages, contiguous backend view — what gntdev does.
//! Refs never granted, granted by another domain or to another domain than the backend's,
//! granted read-only, or revoked are refused, like the hypervisor.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustix::mm::{MapFlags, ProtFlags};

use super::BACKEND_DOMID;
use crate::grant::{GrantError, GrantMapper, GrantMapping, GrantSharer, RefList, SharedGrants};
use crate::ring::PAGE_SIZE;

/// The first ref handed out (Linux reserves refs 0..8 for the toolstack).
const FIRST_REF: u32 = 8;
/// The name of the memfd, also used as the "device" in error messages.
const NAME: &str = "envoy-sim-grants";

/// A simulated grant table; clones share it.
#[derive(Clone)]
pub struct SimGrantTable(Arc<Table>);

struct Table {
    memfd: OwnedFd,
    state: Mutex<State>,
    live: AtomicUsize,
}

#[derive(Default)]
struct State {
    /// Pages in the memfd.
    pages: u64,
    grants: HashMap<u32, Grant>,
    /// Refs handed out so far (drives the spacing of ref numbers).
    handed_out: u32,
    next_ref: u32,
}

struct Grant {
    granter: u16,
    /// The domain allowed to map the page.
    grantee: u16,
    writable: bool,
    /// Page index in the memfd.
    page: u64,
    revoked: bool,
}

impl Default for SimGrantTable {
    fn default() -> Self {
        SimGrantTable::new()
    }
}

impl SimGrantTable {
    /// An empty table. Panics if the memfd cannot be created (a simulation has no use for a
    /// half-working table).
    pub fn new() -> SimGrantTable {
        assert_eq!(
            rustix::param::page_size(),
            PAGE_SIZE,
            "the grant simulation maps 4 KiB pages with MAP_FIXED"
        );
        let memfd = rustix::fs::memfd_create(NAME, rustix::fs::MemfdFlags::CLOEXEC)
            .unwrap_or_else(|e| panic!("memfd_create for the simulated grant table: {e}"));
        SimGrantTable(Arc::new(Table {
            memfd,
            state: Mutex::new(State {
                next_ref: FIRST_REF,
                ..State::default()
            }),
            live: AtomicUsize::new(0),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The frontend of domain `granter_domid` grants `count` new zeroed pages: their refs, in
    /// order, and a contiguous mapping of them for the frontend's own use. Refs are spaced
    /// irregularly (8, 9, 11, 12, 14, …) so that code confusing refs with indexes fails.
    /// The pages are granted read-write to the backend ([`BACKEND_DOMID`]).
    /// Panics if `count` is 0 or the memfd cannot grow.
    pub fn grant_pages(&self, granter_domid: u16, count: usize) -> (Vec<u32>, FrontendPages) {
        self.grant(granter_domid, BACKEND_DOMID, count, true)
    }

    /// [`grant_pages`](Self::grant_pages) to any domain, read-only or not.
    fn grant(
        &self,
        granter_domid: u16,
        grantee: u16,
        count: usize,
        writable: bool,
    ) -> (Vec<u32>, FrontendPages) {
        assert!(count > 0, "granting no pages");
        let mut state = self.state();
        let first = state.pages;
        let total = first + count as u64;
        rustix::fs::ftruncate(&self.0.memfd, total * PAGE_SIZE as u64)
            .unwrap_or_else(|e| panic!("growing the simulated grant table to {total} pages: {e}"));
        state.pages = total;
        let mut refs = Vec::with_capacity(count);
        let mut pages = Vec::with_capacity(count);
        for i in 0..count {
            let r = state.next_ref;
            state.next_ref += if state.handed_out.is_multiple_of(2) {
                1
            } else {
                2
            };
            state.handed_out += 1;
            // Reverse order in the memfd: ref i's page is not next to ref i+1's.
            let page = first + (count - 1 - i) as u64;
            state.grants.insert(
                r,
                Grant {
                    granter: granter_domid,
                    grantee,
                    writable,
                    page,
                    revoked: false,
                },
            );
            refs.push(r);
            pages.push(page);
        }
        drop(state);
        let ptr = map_pages(&self.0.memfd, &pages)
            .unwrap_or_else(|e| panic!("mapping simulated granted pages for the frontend: {e}"));
        (
            refs,
            FrontendPages {
                ptr,
                len: count * PAGE_SIZE,
            },
        )
    }

    /// The frontend ends access through `grant_ref` (`gnttab_end_foreign_access`): later maps
    /// fail; existing mappings stay valid, as with Xen. `false` if the ref was never granted.
    pub fn revoke(&self, grant_ref: u32) -> bool {
        match self.state().grants.get_mut(&grant_ref) {
            Some(g) => {
                g.revoked = true;
                true
            }
            None => false,
        }
    }

    /// Backend mappings currently alive (for leak checks).
    pub fn live_mappings(&self) -> usize {
        self.0.live.load(Ordering::SeqCst)
    }

    /// Grants made by `granter_domid` and not revoked (for leak checks of a frontend).
    pub fn active_grants(&self, granter_domid: u16) -> usize {
        self.state()
            .grants
            .values()
            .filter(|g| g.granter == granter_domid && !g.revoked)
            .count()
    }

    /// Domain `domid`'s grant allocator over this table: what `/dev/xen/gntalloc` is to a
    /// program in that domain.
    pub fn granter(&self, domid: u16) -> SimGntAlloc {
        SimGntAlloc {
            table: self.clone(),
            domid,
        }
    }
}

/// One domain's [`GrantSharer`] over a [`SimGrantTable`] (see [`SimGrantTable::granter`]).
#[derive(Clone, Debug)]
pub struct SimGntAlloc {
    table: SimGrantTable,
    domid: u16,
}

impl SimGntAlloc {
    /// The granting domain.
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// The table the grants go to.
    pub fn table(&self) -> &SimGrantTable {
        &self.table
    }
}

impl GrantSharer for SimGntAlloc {
    type Shared = SimSharedPages;

    fn share(
        &self,
        to_domid: u16,
        pages: usize,
        writable: bool,
    ) -> Result<SimSharedPages, GrantError> {
        if pages == 0 {
            return Err(GrantError::NoPages { domid: to_domid });
        }
        let (refs, pages) = self.table.grant(self.domid, to_domid, pages, writable);
        Ok(SimSharedPages {
            refs,
            pages,
            table: self.table.clone(),
            granter: self.domid,
        })
    }
}

/// Pages shared through [`SimGntAlloc`]; dropping them revokes the grants, as gntalloc's
/// deallocation ends them (the backend's existing mappings stay valid, as with Xen).
#[derive(Debug)]
pub struct SimSharedPages {
    refs: Vec<u32>,
    pages: FrontendPages,
    table: SimGrantTable,
    granter: u16,
}

impl SimSharedPages {
    /// The table the pages are granted in.
    pub fn table(&self) -> &SimGrantTable {
        &self.table
    }

    /// The granting domain.
    pub fn granter(&self) -> u16 {
        self.granter
    }
}

// SAFETY: `FrontendPages` is page-aligned and valid for reads and writes of its length until
// dropped, which happens only with `self`; the fields never change.
unsafe impl GrantMapping for SimSharedPages {
    fn as_ptr(&self) -> *mut u8 {
        self.pages.as_ptr()
    }
    fn len(&self) -> usize {
        self.pages.len()
    }
}

// SAFETY: `grant` returns one ref per page, ref `i` for the `i`-th page of the frontend's
// mapping; `refs` never changes.
unsafe impl SharedGrants for SimSharedPages {
    fn refs(&self) -> &[u32] {
        &self.refs
    }
}

impl Drop for SimSharedPages {
    fn drop(&mut self) {
        for r in &self.refs {
            self.table.revoke(*r);
        }
    }
}

/// Reserve `pages.len()` pages of address space and map memfd page `pages[i]` at the i-th.
fn map_pages(memfd: &OwnedFd, pages: &[u64]) -> io::Result<NonNull<u8>> {
    let len = pages.len() * PAGE_SIZE;
    // SAFETY: a new private PROT_NONE reservation at an address the kernel chooses (no
    // MAP_FIXED), so it replaces nothing; we own it until it is unmapped below or by the caller.
    let base = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }?;
    for (i, page) in pages.iter().enumerate() {
        // SAFETY: `base + i * PAGE_SIZE .. + PAGE_SIZE` lies inside the reservation made above,
        // which nothing else uses (no references into it exist yet), so MAP_FIXED replaces only
        // memory we own. `page` is inside the memfd (it grew before the ref was recorded).
        let mapped = unsafe {
            rustix::mm::mmap(
                base.cast::<u8>().add(i * PAGE_SIZE).cast(),
                PAGE_SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED,
                memfd,
                page * PAGE_SIZE as u64,
            )
        };
        if let Err(e) = mapped {
            // SAFETY: exactly the reservation made above, which nobody else refers to.
            let _ = unsafe { rustix::mm::munmap(base, len) };
            return Err(e.into());
        }
    }
    Ok(NonNull::new(base.cast()).expect("mmap does not return null"))
}

/// A contiguous mapping of pages the frontend granted, for the frontend's own use. The
/// backend may write them at any time: access them through raw pointers and atomics only.
#[derive(Debug)]
pub struct FrontendPages {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an owned process-wide mapping with no thread affinity; only raw pointers escape.
unsafe impl Send for FrontendPages {}
// SAFETY: `&FrontendPages` exposes only the pointer and length, which never change.
unsafe impl Sync for FrontendPages {}

impl FrontendPages {
    /// Start of the pages (page-aligned, valid for reads and writes of [`len`](Self::len)
    /// bytes while `self` lives).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (at least one page is granted).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for FrontendPages {
    fn drop(&mut self) {
        // SAFETY: exactly the region `map_pages` returned, unmapped once; pointers handed out
        // by `as_ptr` are only valid while `self` lives.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Pages mapped by the backend through [`SimGrantTable`]; dropping unmaps them.
pub struct SimMapping {
    ptr: NonNull<u8>,
    len: usize,
    table: Arc<Table>,
}

// SAFETY: as for `FrontendPages`: an owned mapping, only raw pointers escape.
unsafe impl Send for SimMapping {}
// SAFETY: `&SimMapping` exposes only the pointer and length, which never change.
unsafe impl Sync for SimMapping {}

// SAFETY: `ptr` comes from `map_pages`: page-aligned, `len` bytes mapped read-write, unmapped
// only by our `Drop`; the fields never change.
unsafe impl GrantMapping for SimMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SimMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the region `map_pages` returned, unmapped once; the `GrantMapping`
        // contract ends every use of the pointer with the mapping's life.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        self.table.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for SimMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMapping")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SimGrantTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("SimGrantTable")
            .field("grants", &state.grants.len())
            .field("live_mappings", &self.live_mappings())
            .finish_non_exhaustive()
    }
}

impl GrantMapper for SimGrantTable {
    type Mapping = SimMapping;

    fn map(&self, domid: u16, refs: &[u32]) -> Result<SimMapping, GrantError> {
        if refs.is_empty() {
            return Err(GrantError::NoRefs { domid });
        }
        let pages = {
            let state = self.state();
            refs.iter()
                .map(|&r| {
                    let denied = |reason: String| GrantError::Denied {
                        domid,
                        grant_ref: r,
                        reason,
                    };
                    match state.grants.get(&r) {
                        None => Err(denied(format!("domain {domid} has not granted it"))),
                        Some(g) if g.granter != domid => Err(denied(format!(
                            "granted by domain {}, not domain {domid}",
                            g.granter
                        ))),
                        Some(g) if g.revoked => {
                            Err(denied("the frontend has revoked access".into()))
                        }
                        Some(g) if g.grantee != BACKEND_DOMID => Err(denied(format!(
                            "granted to domain {}, not to us (domain {BACKEND_DOMID})",
                            g.grantee
                        ))),
                        Some(g) if !g.writable => Err(denied(
                            "granted read-only, and rings are mapped read-write".into(),
                        )),
                        Some(g) => Ok(g.page),
                    }
                })
                .collect::<Result<Vec<u64>, GrantError>>()?
        };
        let ptr = map_pages(&self.0.memfd, &pages).map_err(|error| GrantError::Map {
            path: PathBuf::from(format!("memfd:{NAME}")),
            domid,
            refs: RefList::new(refs),
            error,
        })?;
        self.0.live.fetch_add(1, Ordering::SeqCst);
        Ok(SimMapping {
            ptr,
            len: pages.len() * PAGE_SIZE,
            table: self.0.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(base: *mut u8, at: usize) -> u8 {
        // SAFETY: callers pass a live mapping and an offset inside it.
        unsafe { base.add(at).read_volatile() }
    }

    fn write(base: *mut u8, at: usize, v: u8) {
        // SAFETY: callers pass a live mapping and an offset inside it.
        unsafe { base.add(at).write_volatile(v) }
    }

    #[test]
    fn refs_are_irregular_and_not_indexes() {
        let table = SimGrantTable::new();
        let (a, _pa) = table.grant_pages(3, 3);
        let (b, _pb) = table.grant_pages(3, 2);
        assert_eq!(a, [8, 9, 11]);
        assert_eq!(b, [12, 14]);
    }

    #[test]
    fn both_sides_see_the_same_bytes_across_scattered_pages() {
        let table = SimGrantTable::new();
        let (refs, fe) = table.grant_pages(5, 4);
        assert_eq!(fe.len(), 4 * PAGE_SIZE);
        let be = table.map(5, &refs).unwrap();
        assert_eq!(
            (be.len(), be.as_ptr() as usize % PAGE_SIZE),
            (4 * PAGE_SIZE, 0)
        );
        for page in 0..4 {
            write(fe.as_ptr(), page * PAGE_SIZE + 17, 0xa0 + page as u8);
            write(be.as_ptr(), page * PAGE_SIZE + 4095, 0xb0 + page as u8);
        }
        for page in 0..4 {
            assert_eq!(read(be.as_ptr(), page * PAGE_SIZE + 17), 0xa0 + page as u8);
            assert_eq!(
                read(fe.as_ptr(), page * PAGE_SIZE + 4095),
                0xb0 + page as u8
            );
        }
        // In another order, the backend's view follows the refs, not the frontend's layout.
        let reversed: Vec<u32> = refs.iter().rev().copied().collect();
        let back = table.map(5, &reversed).unwrap();
        for page in 0..4 {
            assert_eq!(
                read(back.as_ptr(), (3 - page) * PAGE_SIZE + 17),
                0xa0 + page as u8
            );
        }
        assert_eq!(table.live_mappings(), 2);
        drop((be, back));
        assert_eq!(table.live_mappings(), 0);
    }

    #[test]
    fn bogus_foreign_and_revoked_refs_are_refused() {
        let table = SimGrantTable::new();
        let (refs, fe) = table.grant_pages(5, 2);
        let (other, _) = table.grant_pages(6, 1);
        let refused = |domid, r: &[u32]| match table.map(domid, r) {
            Err(GrantError::Denied {
                grant_ref, reason, ..
            }) => (grant_ref, reason),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("{r:?} of domain {domid} mapped"),
        };
        assert_eq!(
            refused(5, &[refs[0], 1000]),
            (1000, "domain 5 has not granted it".into())
        );
        assert_eq!(
            refused(5, &[other[0]]),
            (other[0], "granted by domain 6, not domain 5".into())
        );
        assert_eq!(refused(6, &refs[..1]).0, refs[0]);
        assert!(matches!(
            table.map(5, &[]),
            Err(GrantError::NoRefs { domid: 5 })
        ));

        let kept = table.map(5, &refs).unwrap();
        assert!(table.revoke(refs[1]));
        assert!(!table.revoke(999));
        assert_eq!(
            refused(5, &refs),
            (refs[1], "the frontend has revoked access".into())
        );
        write(fe.as_ptr(), PAGE_SIZE, 42);
        assert_eq!(
            read(kept.as_ptr(), PAGE_SIZE),
            42,
            "existing mappings stay valid"
        );
        assert_eq!(
            table.live_mappings(),
            1,
            "refused maps leave nothing mapped"
        );
        drop(kept);
        assert_eq!(table.live_mappings(), 0);
        let msg = table.map(5, &[77]).err().unwrap().to_string();
        assert_eq!(msg, "domain 5, grant ref 77: domain 5 has not granted it");
    }

    #[test]
    fn shared_pages_are_refused_to_others_and_revoked_on_drop() {
        let table = SimGrantTable::new();
        let dom5 = table.granter(5);
        let ours = dom5.share(BACKEND_DOMID, 2, true).unwrap();
        assert_eq!((ours.refs().len(), ours.len()), (2, 2 * PAGE_SIZE));
        let theirs = dom5.share(9, 1, true).unwrap();
        let readonly = dom5.share(BACKEND_DOMID, 1, false).unwrap();
        assert_eq!(table.active_grants(5), 4);
        let mapped = table.map(5, ours.refs()).unwrap();
        write(ours.as_ptr(), PAGE_SIZE + 3, 7);
        assert_eq!(read(mapped.as_ptr(), PAGE_SIZE + 3), 7);
        let reason = |r: &[u32]| match table.map(5, r) {
            Err(GrantError::Denied { reason, .. }) => reason,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            reason(theirs.refs()),
            "granted to domain 9, not to us (domain 0)"
        );
        assert_eq!(
            reason(readonly.refs()),
            "granted read-only, and rings are mapped read-write"
        );
        let refs = ours.refs().to_vec();
        drop((ours, theirs, readonly));
        assert_eq!(table.active_grants(5), 0, "deallocation ends the grants");
        assert_eq!(reason(&refs), "the frontend has revoked access");
        assert_eq!(table.live_mappings(), 1, "the backend's mapping stays");
        assert!(matches!(
            dom5.share(0, 0, true),
            Err(GrantError::NoPages { domid: 0 })
        ));
    }
}
