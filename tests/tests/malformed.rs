//! Guests are untrusted: at least 10,000 malformed frames, then the same server must serve a
//! well-formed client correctly, with memory bounded and no panic. Frames larger than msize and
//! tags reused while in flight close that connection only.

use bytes::{BufMut, BytesMut};
use envoy_protocol::consts::*;
use envoy_protocol::*;
use envoy_tests::{RawConn, TestServer};
use std::time::Duration;

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn frame(ty: u8, tag: u16, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32_le((7 + body.len()) as u32);
    b.put_u8(ty);
    b.put_u16_le(tag);
    b.put_slice(body);
    b.to_vec()
}

fn string(b: &mut BytesMut, s: &[u8]) {
    b.put_u16_le(s.len() as u16);
    b.put_slice(s);
}

/// One malformed (or hostile) frame of kind `kind`; each gets exactly one reply.
fn malformed(kind: u64, tag: u16, rng: &mut Rng) -> Vec<u8> {
    let mut b = BytesMut::new();
    match kind {
        // Truncated body: a well-formed walk cut short, with a size field that matches the cut.
        0 => {
            let mut full = BytesMut::new();
            Fcall::Twalk(Twalk {
                fid: 1,
                newfid: 50,
                wnames: vec!["abc".into(), "def".into()],
            })
            .encode(tag, Dialect::P9P2000L, &mut full);
            let cut = 7 + rng.below(full.len() as u64 - 8) as usize;
            let mut f = full[..cut].to_vec();
            f[..4].copy_from_slice(&(cut as u32).to_le_bytes());
            f
        }
        // A string length running past the end of the frame.
        1 => {
            b.put_u32_le(1);
            b.put_u32_le(51);
            b.put_u16_le(1);
            b.put_u16_le(60000);
            b.put_slice(b"x");
            frame(TWALK, tag, &b)
        }
        // Invalid UTF-8 in a name.
        2 => {
            b.put_u32_le(1);
            b.put_u32_le(52);
            b.put_u16_le(1);
            string(&mut b, &[0xff, 0xfe, b'a']);
            frame(TWALK, tag, &b)
        }
        // NUL inside a name.
        3 => {
            b.put_u32_le(1);
            string(&mut b, b"evil\0name");
            b.put_u32_le(0);
            b.put_u32_le(0o755);
            b.put_u32_le(0);
            frame(TMKDIR, tag, &b)
        }
        // Unknown or out-of-dialect message types.
        4 => {
            let ty = [
                0u8, 1, 2, 99, 106, 113, 150, 200, 255, TOPEN, TCREATE, TSTAT, TWSTAT,
            ][rng.below(13) as usize];
            let n = rng.below(40) as usize;
            frame(ty, tag, &rng.bytes(n))
        }
        // A walk of 17 or more names.
        5 => {
            b.put_u32_le(1);
            b.put_u32_le(53);
            let n = 17 + rng.below(100) as u16;
            b.put_u16_le(n);
            for _ in 0..n {
                string(&mut b, b"a");
            }
            frame(TWALK, tag, &b)
        }
        // Reads and writes on unopened or unknown fids.
        6 => {
            b.put_u32_le(if rng.below(2) == 0 { 1 } else { 77_777 });
            b.put_u64_le(0);
            b.put_u32_le(4096);
            frame(TREAD, tag, &b)
        }
        // Fid reuse: attach on a fid already in use.
        7 => {
            b.put_u32_le(1);
            b.put_u32_le(NOFID);
            string(&mut b, b"root");
            string(&mut b, b"");
            b.put_u32_le(0);
            frame(TATTACH, tag, &b)
        }
        // Inconsistent counts: a write whose count disagrees with its data.
        8 => {
            b.put_u32_le(1);
            b.put_u64_le(0);
            b.put_u32_le(1000);
            b.put_slice(&rng.bytes(10));
            frame(TWRITE, tag, &b)
        }
        // Trailing garbage after a valid body.
        9 => {
            b.put_u32_le(1);
            b.put_u64_le(GETATTR_ALL);
            let n = 1 + rng.below(20) as usize;
            b.put_slice(&rng.bytes(n));
            frame(TGETATTR, tag, &b)
        }
        // Random bodies for the .L request types, except version (it resets the session) and
        // flush (a random old tag could name a request of this window, which then has no reply).
        _ => {
            let types = [
                TSTATFS,
                TLOPEN,
                TLCREATE,
                TSYMLINK,
                TMKNOD,
                TRENAME,
                TREADLINK,
                TGETATTR,
                TSETATTR,
                TXATTRWALK,
                TXATTRCREATE,
                TREADDIR,
                TFSYNC,
                TLOCK,
                TGETLOCK,
                TLINK,
                TMKDIR,
                TRENAMEAT,
                TUNLINKAT,
                TAUTH,
                TATTACH,
                TWALK,
                TREAD,
                TWRITE,
                TCLUNK,
                TREMOVE,
            ];
            let ty = types[rng.below(types.len() as u64) as usize];
            let n = rng.below(64) as usize;
            let mut body = rng.bytes(n);
            // Keep fids away from the attached root so the tree stays usable.
            if body.len() >= 4 {
                body[0] |= 0x80;
            }
            frame(ty, tag, &body)
        }
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_frames_then_a_good_client() {
    let srv = TestServer::start().await;
    srv.host().write("keep", b"intact").unwrap();
    let mut c = RawConn::new(srv.raw().await, Dialect::P9P2000L);
    c.handshake(65536).await;
    let before = rss_kib();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    const FRAMES: usize = 12_000;
    let mut rd = c;
    // Send in windows and read every reply: each malformed frame gets exactly one reply.
    let mut sent = 0usize;
    let mut replies = 0usize;
    while sent < FRAMES {
        let window = 32.min(FRAMES - sent);
        let mut bytes = Vec::new();
        for i in 0..window {
            let tag = ((sent + i) % 60_000) as u16 + 2;
            bytes.extend(malformed((sent + i) as u64 % 11, tag, &mut rng));
        }
        rd.send_bytes(&bytes).await.unwrap();
        for _ in 0..window {
            let f = rd
                .recv_frame()
                .await
                .unwrap_or_else(|| panic!("no reply after {replies} replies"));
            let h = peek_header(&f).unwrap();
            assert!(
                matches!(
                    h.ty,
                    RLERROR
                        | RWALK
                        | RFLUSH
                        | RCLUNK
                        | RREMOVE
                        | RREAD
                        | RWRITE
                        | RGETATTR
                        | RLOPEN
                        | RREADDIR
                        | RSTATFS
                        | RREADLINK
                        | RSETATTR
                        | RXATTRWALK
                        | RXATTRCREATE
                        | RFSYNC
                        | RLOCK
                        | RGETLOCK
                        | RLINK
                        | RMKDIR
                        | RRENAMEAT
                        | RUNLINKAT
                        | RRENAME
                        | RSYMLINK
                        | RMKNOD
                        | RLCREATE
                        | RATTACH
                ),
                "unexpected reply type {}",
                h.ty
            );
            replies += 1;
        }
        sent += window;
    }
    assert_eq!(replies, FRAMES);
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 200 * 1024, "RSS grew by {grown} KiB");
    // The same connection still works.
    rd.send(
        7,
        &Fcall::Twalk(Twalk {
            fid: 1,
            newfid: 3,
            wnames: vec!["keep".into()],
        }),
    )
    .await
    .unwrap();
    assert!(matches!(rd.recv().await, Some((7, Fcall::Rwalk(w))) if w.wqids.len() == 1));
    rd.send(
        8,
        &Fcall::Tlopen(Tlopen {
            fid: 3,
            flags: P9_DOTL_RDONLY,
        }),
    )
    .await
    .unwrap();
    assert!(matches!(rd.recv().await, Some((8, Fcall::Rlopen(_)))));
    rd.send(
        9,
        &Fcall::Tread(Tread {
            fid: 3,
            offset: 0,
            count: 100,
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        rd.recv().await,
        Some((
            9,
            Fcall::Rread(Rread {
                data: bytes::Bytes::from_static(b"intact")
            })
        ))
    );
    // And a new, well-formed client too.
    srv.attached(Dialect::P9P2000U, 65536).await;
    assert_eq!(srv.host().read("keep").unwrap(), b"intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_only_their_connection() {
    let srv = TestServer::start().await;
    srv.host().write("f", b"ok").unwrap();
    let mut good = RawConn::new(srv.raw().await, Dialect::P9P2000L);
    good.handshake(8192).await;
    for claimed in [8193u32, 1 << 20, u32::MAX] {
        let mut bad = RawConn::new(srv.raw().await, Dialect::P9P2000L);
        bad.handshake(8192).await;
        let mut f = frame(TWRITE, 5, &[0u8; 64]);
        f[..4].copy_from_slice(&claimed.to_le_bytes());
        bad.send_bytes(&f).await.unwrap();
        assert!(
            bad.closed_within(Duration::from_secs(10)).await,
            "size {claimed} did not close the connection"
        );
    }
    // Before Tversion, the limit is small too.
    let mut early = RawConn::new(srv.raw().await, Dialect::P9P2000L);
    early
        .send_bytes(&(100u32 << 20).to_le_bytes())
        .await
        .unwrap();
    assert!(early.closed_within(Duration::from_secs(10)).await);
    // Framing errors: a size below the header, and EOF in the middle of a frame.
    let mut tiny = RawConn::new(srv.raw().await, Dialect::P9P2000L);
    tiny.send_bytes(&[3, 0, 0, 0, 0, 0, 0]).await.unwrap();
    assert!(tiny.closed_within(Duration::from_secs(10)).await);
    // The well-behaved connection was not disturbed.
    good.send(
        2,
        &Fcall::Twalk(Twalk {
            fid: 1,
            newfid: 2,
            wnames: vec!["f".into()],
        }),
    )
    .await
    .unwrap();
    assert!(matches!(good.recv().await, Some((2, Fcall::Rwalk(_)))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_version_are_refused() {
    let srv = TestServer::start().await;
    let mut c = RawConn::new(srv.raw().await, Dialect::P9P2000);
    let a = Tattach {
        fid: 1,
        afid: NOFID,
        uname: "root".into(),
        aname: String::new(),
        n_uname: 0,
    };
    c.send(1, &Fcall::Tattach(a)).await.unwrap();
    let (tag, r) = c.recv().await.unwrap();
    assert_eq!(tag, 1);
    assert!(matches!(r, Fcall::Rerror(_)), "{r:?}");
    c.handshake(8192).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_bad_connections_do_not_leak() {
    let srv = TestServer::start().await;
    let before = rss_kib();
    let mut rng = Rng(42);
    for i in 0..300u64 {
        let mut c = RawConn::new(srv.raw().await, Dialect::P9P2000L);
        c.handshake(65536).await;
        let f = malformed(i % 11, 3, &mut rng);
        // Leave mid-frame half of the time.
        let cut = if i % 2 == 0 { f.len() } else { f.len() / 2 };
        c.send_bytes(&f[..cut]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 100 * 1024, "RSS grew by {grown} KiB");
    srv.attached(Dialect::P9P2000L, 65536).await;
}
