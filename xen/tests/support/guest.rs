//! A test-only xenstore client that plays an unprivileged guest domain: it drives the shared
//! `struct xenstore_domain_interface` page (`xs_wire.h`: `req[1024]`, `rsp[1024]`, then the
//! `u32` indexes `req_cons`, `req_prod`, `rsp_cons`, `rsp_prod`) that the fakexen shim maps
//! into xenstored for that domain, and wakes xenstored through the shim's event FIFO.
//!
//! Synchronous and simple on purpose: one request at a time, replies found by polling the
//! ring (bounded by [`GUEST_TIMEOUT`]); watch events are skipped. Panics on anything
//! unexpected (it is test code).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long one request may take.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(10);

const PAGE: usize = 4096;
const RING: u32 = 1024;
const REQ: usize = 0;
const RSP: usize = 1024;
const REQ_CONS: usize = 2048;
const REQ_PROD: usize = 2052;
const RSP_CONS: usize = 2056;
const RSP_PROD: usize = 2060;

const XS_ERROR: u32 = 16;
const XS_WATCH_EVENT: u32 = 15;

/// The guest side of a xenstore ring.
pub struct GuestRing {
    page: NonNull<u8>,
    kick: File,
    domid: u32,
    next_req: u32,
}

// SAFETY: the mapping is owned by this value and only touched through `&mut self` or atomics.
unsafe impl Send for GuestRing {}

impl GuestRing {
    /// Create `ring-<domid>` in the shim's directory, map it, and open the event FIFO.
    pub fn create(fakexen_dir: &Path, domid: u32) -> GuestRing {
        let path = fakexen_dir.join(format!("ring-{domid}"));
        std::fs::write(&path, vec![0u8; PAGE]).expect("create the ring file");
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open the ring file");
        // SAFETY: a fresh shared mapping of a 4096-byte file we own; nothing else in this
        // process aliases it. xenstored maps the same page, which is the point; all accesses
        // below follow the ring protocol (indexes atomically, data only in the region the
        // indexes give this side).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                PAGE,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &file,
                0,
            )
        }
        .expect("mmap the ring file");
        // A non-blocking open for writing fails with ENXIO until xenstored (through the shim)
        // has the FIFO open for reading, which may lag its socket under load: retry, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let kick = loop {
            match File::options()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(fakexen_dir.join("evtchn"))
            {
                Ok(f) => break f,
                Err(e)
                    if e.raw_os_error() == Some(libc::ENXIO)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    panic!("open the shim's event FIFO (is xenstored running with the shim?): {e}")
                }
            }
        };
        GuestRing {
            page: NonNull::new(ptr.cast::<u8>()).expect("mmap returned null"),
            kick,
            domid,
            next_req: 1,
        }
    }

    /// The domain this ring belongs to.
    pub fn domid(&self) -> u32 {
        self.domid
    }

    fn index(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is one of the four index offsets, 4-byte aligned within the live
        // mapping; the page is shared with xenstored, so the indexes are only accessed
        // atomically.
        unsafe { AtomicU32::from_ptr(self.page.as_ptr().add(off).cast::<u32>()) }
    }

    fn wake(&mut self) {
        // A full FIFO already holds a wake-up: ignore EAGAIN.
        let _ = self.kick.write(&[1]);
    }

    fn send(&mut self, mut data: &[u8], deadline: Instant) {
        while !data.is_empty() {
            let cons = self.index(REQ_CONS).load(Ordering::Acquire);
            let prod = self.index(REQ_PROD).load(Ordering::Relaxed);
            let used = prod.wrapping_sub(cons);
            assert!(
                used <= RING,
                "xenstored left req indexes inconsistent: cons {cons} prod {prod}"
            );
            let free = (RING - used) as usize;
            if free == 0 {
                self.wake();
                assert!(
                    Instant::now() < deadline,
                    "xenstored does not consume the request ring"
                );
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let at = (prod % RING) as usize;
            let n = data.len().min(free).min(RING as usize - at);
            // SAFETY: [REQ + at, REQ + at + n) lies in `req` and in the free part of the ring,
            // which xenstored does not read until `req_prod` moves past it.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), self.page.as_ptr().add(REQ + at), n)
            };
            self.index(REQ_PROD)
                .store(prod.wrapping_add(n as u32), Ordering::Release);
            data = &data[n..];
        }
        self.wake();
    }

    fn recv(&mut self, out: &mut [u8], deadline: Instant) {
        let mut got = 0;
        while got < out.len() {
            let prod = self.index(RSP_PROD).load(Ordering::Acquire);
            let cons = self.index(RSP_CONS).load(Ordering::Relaxed);
            let avail = prod.wrapping_sub(cons);
            assert!(
                avail <= RING,
                "xenstored left rsp indexes inconsistent: cons {cons} prod {prod}"
            );
            if avail == 0 {
                assert!(
                    Instant::now() < deadline,
                    "no reply from xenstored on the guest ring"
                );
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let at = (cons % RING) as usize;
            let n = (out.len() - got)
                .min(avail as usize)
                .min(RING as usize - at);
            // SAFETY: [RSP + at, RSP + at + n) lies in `rsp` and in the part xenstored has
            // published (before `rsp_prod`) and will not touch until `rsp_cons` moves past it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.page.as_ptr().add(RSP + at),
                    out[got..].as_mut_ptr(),
                    n,
                )
            };
            self.index(RSP_CONS)
                .store(cons.wrapping_add(n as u32), Ordering::Release);
            got += n;
            // xenstored may be waiting for room to write more.
            self.wake();
        }
    }

    /// Send one request and return the reply `(type, payload)`, skipping watch events.
    pub fn request(&mut self, ty: u32, tx_id: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        assert!(payload.len() <= 4096);
        let deadline = Instant::now() + GUEST_TIMEOUT;
        let req_id = self.next_req;
        self.next_req += 1;
        let mut msg = Vec::with_capacity(16 + payload.len());
        for w in [ty, req_id, tx_id, payload.len() as u32] {
            msg.extend_from_slice(&w.to_le_bytes());
        }
        msg.extend_from_slice(payload);
        self.send(&msg, deadline);
        for _ in 0..10_000 {
            let mut h = [0u8; 16];
            self.recv(&mut h, deadline);
            let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
            let (rty, rid, len) = (word(0), word(4), word(12) as usize);
            assert!(len <= 4096, "reply length {len}");
            let mut body = vec![0u8; len];
            self.recv(&mut body, deadline);
            if rty == XS_WATCH_EVENT {
                continue;
            }
            assert_eq!(rid, req_id, "reply to another request");
            return (rty, body);
        }
        panic!("more than 10,000 watch events before a reply");
    }

    /// A request whose reply is a value or an `ERROR`: `Err("EACCES")` etc. for errors.
    pub fn call(&mut self, ty: u32, payload: &[u8]) -> Result<Vec<u8>, String> {
        let (rty, body) = self.request(ty, 0, payload);
        if rty == XS_ERROR {
            return Err(
                String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned(),
            );
        }
        assert_eq!(rty, ty, "reply type");
        Ok(body)
    }

    /// `XS_READ`.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, String> {
        self.call(2, &nul_terminated(&[path.as_bytes()]))
    }

    /// `XS_WRITE`.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), String> {
        let mut p = nul_terminated(&[path.as_bytes()]);
        p.extend_from_slice(value);
        self.call(11, &p).map(drop)
    }

    /// `XS_DIRECTORY`.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, String> {
        let body = self.call(1, &nul_terminated(&[path.as_bytes()]))?;
        Ok(body
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// `XS_RM`.
    pub fn rm(&mut self, path: &str) -> Result<(), String> {
        self.call(13, &nul_terminated(&[path.as_bytes()])).map(drop)
    }

    /// `XS_SET_PERMS` with permission strings (`"b5"`, `"r0"`, ...).
    pub fn set_perms(&mut self, path: &str, perms: &[&str]) -> Result<(), String> {
        let mut fields = vec![path.as_bytes()];
        fields.extend(perms.iter().map(|p| p.as_bytes()));
        self.call(14, &nul_terminated(&fields)).map(drop)
    }
}

impl Drop for GuestRing {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping created in `create`; no reference into it outlives self.
        let _ = unsafe { rustix::mm::munmap(self.page.as_ptr().cast(), PAGE) };
    }
}

fn nul_terminated(fields: &[&[u8]]) -> Vec<u8> {
    let mut p = Vec::new();
    for f in fields {
        p.extend_from_slice(f);
        p.push(0);
    }
    p
}
