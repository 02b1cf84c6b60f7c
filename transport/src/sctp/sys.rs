//! The kernel SCTP socket calls Envoy needs, as safe functions over `OwnedFd`.
//!
//! libc has the SCTP structures but no wrappers, and nix has neither; the few calls used here
//! (RFC 6458's `sctp_bindx`, `sctp_connectx`, ancillary `SCTP_SNDINFO`/`SCTP_RCVINFO`) are
//! socket options and `sendmmsg`/`recvmsg` with control messages, so a thin layer is enough
//! (see docs/dependencies.md for why not the `sctp-rs` crate). All `unsafe` of the SCTP
//! transport is here; every block passes the kernel pointers to memory it owns, sized as
//! the kernel expects.

#![allow(unsafe_code)]

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage};
use tokio::io::unix::AsyncFd;

/// `SOL_SCTP` (the socket-option level; equal to `IPPROTO_SCTP` on Linux).
const SOL_SCTP: libc::c_int = libc::IPPROTO_SCTP;
/// `sctp_bindx(…, SCTP_BINDX_ADD_ADDR)`: add local addresses to a bound socket.
const SCTP_SOCKOPT_BINDX_ADD: libc::c_int = 100;
/// `sctp_connectx`: connect to a peer known by several addresses.
const SCTP_SOCKOPT_CONNECTX: libc::c_int = 110;
/// Set in `msg_flags` when the data is an event notification, not a message.
const MSG_NOTIFICATION: libc::c_int = 0x8000;
/// `struct sctp_status` is 176 bytes on Linux; the kernel refuses a shorter buffer.
const SCTP_STATUS_LEN: usize = 176;
/// Offsets of `sstat_instrms` and `sstat_outstrms` in `struct sctp_status`.
const SSTAT_INSTRMS: usize = 16;
const SSTAT_OUTSTRMS: usize = 18;

/// Messages handed to one `sendmmsg`.
pub(crate) const SEND_BATCH: usize = 64;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A new one-to-one (`SOCK_STREAM`) SCTP socket, non-blocking and close-on-exec. On a kernel
/// without SCTP this is the call that fails, with `EPROTONOSUPPORT`.
pub(crate) fn socket(ipv6: bool) -> io::Result<OwnedFd> {
    let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    let ty = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket() takes no pointers; a non-negative result is a new descriptor that
    // nothing else owns.
    let fd = cvt(unsafe { libc::socket(family, ty, libc::IPPROTO_SCTP) })?;
    // SAFETY: `fd` was just returned by socket() and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Set a socket option whose value is the plain-data `value`.
fn setsockopt<T: Copy>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a valid `T` for the duration of the call and the length passed is its
    // size; the kernel only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Set a socket option whose value is the byte string `value` (packed address lists).
fn setsockopt_bytes(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<libc::c_int> {
    // SAFETY: the pointer and length describe `value`, which outlives the call; the kernel
    // only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    })
}

/// Streams to ask for at association setup (`SCTP_INITMSG`): the peer may lower them.
pub(crate) fn set_init(fd: &OwnedFd, streams: u16) -> io::Result<()> {
    let init = libc::sctp_initmsg {
        sinit_num_ostreams: streams,
        sinit_max_instreams: streams,
        sinit_max_attempts: 0,
        sinit_max_init_timeo: 0,
    };
    setsockopt(fd, SOL_SCTP, libc::SCTP_INITMSG, &init)
}

/// Send each message as soon as possible (no bundling delay; SCTP's Nagle).
pub(crate) fn set_nodelay(fd: &OwnedFd) -> io::Result<()> {
    setsockopt(fd, SOL_SCTP, libc::SCTP_NODELAY, &1 as &libc::c_int)
}

/// Have `recvmsg` report each message's stream (`SCTP_RCVINFO` ancillary data).
pub(crate) fn set_recv_rcvinfo(fd: &OwnedFd) -> io::Result<()> {
    setsockopt(fd, SOL_SCTP, libc::SCTP_RECVRCVINFO, &1 as &libc::c_int)
}

/// Size the socket's send and receive buffers. SCTP sends a message whole or not at all, and
/// the kernel waits for room for all of it, so the buffers must hold the largest message
/// with room to spare. Uses the `…FORCE` options where permitted (root, `CAP_NET_ADMIN`:
/// not capped by `net.core.[rw]mem_max`), the plain ones otherwise.
pub(crate) fn set_buffers(fd: &OwnedFd, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        if setsockopt(fd, libc::SOL_SOCKET, force, &v).is_err() {
            setsockopt(fd, libc::SOL_SOCKET, plain, &v)?;
        }
    }
    Ok(())
}

/// Addresses packed back to back as `sctp_bindx`/`sctp_connectx` take them: each a
/// `sockaddr_in` or `sockaddr_in6` of its own size.
fn pack(addrs: &[SocketAddr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(addrs.len() * size_of::<libc::sockaddr_in6>());
    for a in addrs {
        match a {
            SocketAddr::V4(v4) => push_addr(&mut out, &SockaddrIn::from(*v4)),
            SocketAddr::V6(v6) => push_addr(&mut out, &SockaddrIn6::from(*v6)),
        }
    }
    out
}

fn push_addr(out: &mut Vec<u8>, addr: &impl SockaddrLike) {
    // SAFETY: `as_ptr`/`len` describe the initialised socket address `addr`, which outlives
    // this borrow.
    let bytes =
        unsafe { std::slice::from_raw_parts(addr.as_ptr().cast::<u8>(), addr.len() as usize) };
    out.extend_from_slice(bytes);
}

/// Hand a socket to tokio's reactor.
pub(crate) fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor that only its owner closes; the `AsyncFd`
    // becomes that owner, so it stays open and the same for the `AsyncFd`'s lifetime.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

/// Bind to every address in `addrs` (all with the same port; port 0 picks one for all):
/// `bind` for the first, `sctp_bindx` for the others (multi-homing).
pub(crate) fn bind_all(fd: &OwnedFd, addrs: &[SocketAddr]) -> io::Result<()> {
    let (first, rest) = addrs
        .split_first()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    nix::sys::socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(*first))
        .map_err(io::Error::from)?;
    if rest.is_empty() {
        return Ok(());
    }
    // The others take the port the first one got.
    let port = local_addr(fd)?.port();
    let rest: Vec<SocketAddr> = rest.iter().map(|a| SocketAddr::new(a.ip(), port)).collect();
    setsockopt_bytes(fd, SOL_SCTP, SCTP_SOCKOPT_BINDX_ADD, &pack(&rest)).map(drop)
}

/// Start an association to a peer reachable at any of `addrs` (`sctp_connectx`). The socket
/// is non-blocking, so this normally returns `EINPROGRESS`: wait until it is writable, then
/// read [`take_error`].
pub(crate) fn connectx(fd: &OwnedFd, addrs: &[SocketAddr]) -> io::Result<()> {
    match setsockopt_bytes(fd, SOL_SCTP, SCTP_SOCKOPT_CONNECTX, &pack(addrs)) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The pending error of a socket (`SO_ERROR`), e.g. how a non-blocking connect ended.
pub(crate) fn take_error(fd: &OwnedFd) -> io::Result<Option<io::Error>> {
    let err = nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::SocketError)
        .map_err(io::Error::from)?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

pub(crate) fn listen(fd: &OwnedFd, backlog: i32) -> io::Result<()> {
    let backlog = nix::sys::socket::Backlog::new(backlog).map_err(io::Error::from)?;
    nix::sys::socket::listen(fd, backlog).map_err(io::Error::from)
}

/// Accept one association (a new one-to-one socket, non-blocking, close-on-exec).
pub(crate) fn accept(fd: &OwnedFd) -> io::Result<(OwnedFd, SocketAddr)> {
    let flags =
        nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC;
    let new = nix::sys::socket::accept4(fd.as_raw_fd(), flags).map_err(io::Error::from)?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let new = unsafe { OwnedFd::from_raw_fd(new) };
    let peer = peer_addr(&new)?;
    Ok((new, peer))
}

fn to_std(addr: &SockaddrStorage) -> io::Result<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Ok(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    if let Some(v6) = addr.as_sockaddr_in6() {
        return Ok(SocketAddr::V6(SocketAddrV6::from(*v6)));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "SCTP socket with a non-IP address",
    ))
}

/// The (first) local address.
pub(crate) fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    to_std(
        &nix::sys::socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())
            .map_err(io::Error::from)?,
    )
}

/// The peer's primary address.
pub(crate) fn peer_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    to_std(
        &nix::sys::socket::getpeername::<SockaddrStorage>(fd.as_raw_fd())
            .map_err(io::Error::from)?,
    )
}

/// The association's inbound and outbound stream counts as negotiated at INIT.
pub(crate) fn stream_counts(fd: &OwnedFd) -> io::Result<(u16, u16)> {
    let mut status = [0u8; SCTP_STATUS_LEN];
    let mut len = SCTP_STATUS_LEN as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `status`, which is that long, and
    // updates `len`; sstat_assoc_id (the first field, zero) selects the one association of
    // a one-to-one socket.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_SCTP,
            libc::SCTP_STATUS,
            status.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    let at = |o: usize| u16::from_ne_bytes([status[o], status[o + 1]]);
    Ok((at(SSTAT_INSTRMS), at(SSTAT_OUTSTRMS)))
}

/// Shut the sending direction: SCTP has no half-close, so this ends the association
/// gracefully once queued data is acknowledged.
pub(crate) fn shutdown_write(fd: &OwnedFd) -> io::Result<()> {
    nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write)
        .map_err(io::Error::from)
}

/// What one `recvmsg` brought in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    /// Bytes written into the buffer (0 with `notification == false`: the peer shut down).
    pub len: usize,
    /// The message ended with these bytes (`MSG_EOR`).
    pub eor: bool,
    /// The stream it came on, when the kernel said.
    pub stream: Option<u16>,
    /// An event notification, not data.
    pub notification: bool,
}

/// Control-message space for one `sctp_rcvinfo` or `sctp_sndinfo`, 8-byte aligned like
/// `struct cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; 64]);

/// Receive (part of) the next message into `buf`.
pub(crate) fn recv(fd: &OwnedFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = Cmsg([0; 64]);
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    // SAFETY: the iovec points to `buf` (writable, `iov_len` long; the kernel writes at most
    // that many bytes and never reads them), the control buffer to `control`; all outlive
    // the call.
    let len = cvt_size(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) })?;
    let mut stream = None;
    // SAFETY: `msg` was filled by recvmsg: msg_control/msg_controllen describe the part of
    // `control` the kernel wrote, which the CMSG macros walk without leaving it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_SCTP
                && (*c).cmsg_type == libc::SCTP_RCVINFO
                && (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(size_of::<libc::sctp_rcvinfo>() as u32) as usize
            {
                let info: libc::sctp_rcvinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stream = Some(info.rcv_sid);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received {
        len,
        eor: msg.msg_flags & libc::MSG_EOR != 0,
        stream,
        notification: msg.msg_flags & MSG_NOTIFICATION != 0,
    })
}

/// Send each `(stream, message)` as one SCTP message on its stream, up to [`SEND_BATCH`] in
/// one `sendmmsg`. Returns how many were sent (at least one, or an error such as
/// `WouldBlock` when none could be).
pub(crate) fn send(fd: &OwnedFd, messages: &[(u16, &[u8])]) -> io::Result<usize> {
    let n = messages.len().min(SEND_BATCH);
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; SEND_BATCH];
    let mut controls = [Cmsg([0; 64]); SEND_BATCH];
    // SAFETY: mmsghdr is plain data; zeroed is a valid empty header.
    let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
    let (space, len) = unsafe {
        let s = size_of::<libc::sctp_sndinfo>() as u32;
        (libc::CMSG_SPACE(s) as usize, libc::CMSG_LEN(s) as usize)
    };
    for (i, (stream, data)) in messages[..n].iter().enumerate() {
        iovs[i] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = controls[i].0.as_mut_ptr().cast();
        h.msg_controllen = space;
        let info = libc::sctp_sndinfo {
            snd_sid: *stream,
            snd_flags: 0,
            snd_ppid: 0,
            snd_context: 0,
            snd_assoc_id: 0,
        };
        // SAFETY: `h` describes `controls[i]` (64 bytes, more than CMSG_SPACE of an
        // sctp_sndinfo), so the first header and its data lie inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(h);
            (*c).cmsg_level = libc::IPPROTO_SCTP;
            (*c).cmsg_type = libc::SCTP_SNDINFO;
            (*c).cmsg_len = len;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
        }
    }
    // SAFETY: the first `n` headers point to iovecs and control buffers on this stack frame
    // and to the callers' message bytes, all alive for the call; the kernel only reads them
    // (and writes each header's msg_len).
    let sent = cvt(unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_NOSIGNAL,
        )
    })?;
    Ok(sent as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_addresses_have_their_own_sizes() {
        let v4: SocketAddr = "10.0.0.1:5640".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:5640".parse().unwrap();
        let p = pack(&[v4, v6, v4]);
        assert_eq!(
            p.len(),
            2 * size_of::<libc::sockaddr_in>() + size_of::<libc::sockaddr_in6>()
        );
        // sa_family of each, in order.
        let fam = |at: usize| u16::from_ne_bytes([p[at], p[at + 1]]) as i32;
        assert_eq!(fam(0), libc::AF_INET);
        assert_eq!(fam(size_of::<libc::sockaddr_in>()), libc::AF_INET6);
        // The port is in network order right after the family.
        assert_eq!(&p[2..4], &5640u16.to_be_bytes());
    }

    #[test]
    fn status_offsets_match_the_kernel_layout() {
        // struct sctp_status: assoc_id s32, state s32, rwnd u32, unackdata u16, penddata u16,
        // instrms u16, outstrms u16, fragmentation_point u32, then the packed, 4-aligned
        // struct sctp_paddrinfo (assoc_id, sockaddr_storage, state, cwnd, srtt, rto, mtu).
        assert_eq!(SSTAT_INSTRMS, 4 + 4 + 4 + 2 + 2);
        assert_eq!(SSTAT_OUTSTRMS, SSTAT_INSTRMS + 2);
        let paddrinfo = 4 + size_of::<libc::sockaddr_storage>() + 5 * 4;
        assert_eq!(SCTP_STATUS_LEN, SSTAT_OUTSTRMS + 2 + 4 + paddrinfo);
    }
}
