//! The byte-stream framing, exercised over in-memory readers and writers.

mod common;

use std::io::{self, Cursor, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use common::{MIB, frame, mixed_frames, recv_all, send_all};
use envoy_transport::{DEFAULT_MAX_FRAME, FrameRx, FrameTx, StreamRx, StreamTx, TransportError};
use tokio::io::AsyncWrite;

fn rx_over(bytes: Vec<u8>) -> StreamRx<Cursor<Vec<u8>>> {
    StreamRx::new(Cursor::new(bytes))
}

fn header(size: u32) -> Vec<u8> {
    let mut v = size.to_le_bytes().to_vec();
    v.extend_from_slice(&[100, 1, 0]);
    v
}

#[tokio::test]
async fn clean_eof_at_boundary_is_none() {
    let mut rx = rx_over(Vec::new());
    assert!(rx.recv().await.unwrap().is_none());

    let f = frame(100, 7, 20);
    let mut rx = rx_over(f.to_vec());
    assert_eq!(rx.recv().await.unwrap().unwrap(), f);
    assert!(rx.recv().await.unwrap().is_none());
    assert!(rx.recv().await.unwrap().is_none(), "EOF stays EOF");
}

#[tokio::test]
async fn header_only_frame_is_valid() {
    let f = frame(101, 0xffff, 7);
    let mut rx = rx_over(f.to_vec());
    assert_eq!(rx.recv().await.unwrap().unwrap(), f);
}

#[tokio::test]
async fn eof_mid_frame_is_error() {
    let mut data = header(20);
    data.extend_from_slice(&[0; 3]);
    let mut rx = rx_over(data);
    match rx.recv().await {
        Err(TransportError::UnexpectedEof { buffered: 10 }) => {}
        other => panic!("expected UnexpectedEof with 10 bytes, got {other:?}"),
    }
}

#[tokio::test]
async fn eof_mid_size_field_is_error() {
    let mut data = frame(100, 1, 9).to_vec();
    data.extend_from_slice(&[9, 0]);
    let mut rx = rx_over(data);
    assert!(rx.recv().await.unwrap().is_some());
    match rx.recv().await {
        Err(TransportError::UnexpectedEof { buffered: 2 }) => {}
        other => panic!("expected UnexpectedEof with 2 bytes, got {other:?}"),
    }
}

#[tokio::test]
async fn too_short_is_error() {
    for size in [0u32, 1, 4, 6] {
        let mut data = header(size);
        data.extend_from_slice(&[0; 16]);
        match rx_over(data).recv().await {
            Err(TransportError::FrameTooShort { size: s }) if s == size => {}
            other => panic!("size {size}: expected FrameTooShort, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn too_large_is_error_without_allocating() {
    // A hostile size field followed by plenty of data: rejected, and the read buffer never
    // grows towards the claimed size.
    for size in [DEFAULT_MAX_FRAME + 1, 100 * MIB, u32::MAX] {
        let mut data = header(size);
        data.resize(512 * 1024, 0xaa);
        let mut rx = rx_over(data);
        match rx.recv().await {
            Err(TransportError::FrameTooLarge { size: s, max }) => {
                assert_eq!((s, max), (size, DEFAULT_MAX_FRAME));
            }
            other => panic!("size {size}: expected FrameTooLarge, got {other:?}"),
        }
        assert!(
            rx.buffer_capacity() <= 128 * 1024,
            "buffer grew to {}",
            rx.buffer_capacity()
        );
    }
}

#[tokio::test]
async fn too_large_after_small_frames_does_not_allocate() {
    let mut data = Vec::new();
    for tag in 0..50 {
        data.extend_from_slice(&frame(100, tag, 100));
    }
    data.extend_from_slice(&header(3 * MIB));
    data.resize(data.len() + 2 * MIB as usize, 0x55);
    let mut rx = rx_over(data);
    rx.set_max_frame(MIB);
    for _ in 0..50 {
        rx.recv().await.unwrap().unwrap();
    }
    assert!(
        matches!(rx.recv().await, Err(TransportError::FrameTooLarge { size, max }) if size == 3 * MIB && max == MIB)
    );
    assert!(
        rx.buffer_capacity() <= 256 * 1024,
        "buffer grew to {}",
        rx.buffer_capacity()
    );
}

#[tokio::test]
async fn set_max_frame_raises_the_limit() {
    let big = frame(100, 1, DEFAULT_MAX_FRAME as usize + 1);
    assert!(matches!(
        rx_over(big.to_vec()).recv().await,
        Err(TransportError::FrameTooLarge { .. })
    ));
    let mut rx = rx_over(big.to_vec());
    rx.set_max_frame(DEFAULT_MAX_FRAME + 1);
    assert_eq!(rx.max_frame(), DEFAULT_MAX_FRAME + 1);
    assert_eq!(rx.recv().await.unwrap().unwrap(), big);
}

#[tokio::test]
async fn frames_are_zero_copy_slices_of_one_buffer() {
    let (f1, f2) = (frame(100, 1, 50), frame(100, 2, 70));
    let mut data = f1.to_vec();
    data.extend_from_slice(&f2);
    let mut rx = rx_over(data);
    let g1 = rx.recv().await.unwrap().unwrap();
    let g2 = rx.recv().await.unwrap().unwrap();
    assert_eq!((&g1, &g2), (&f1, &f2));
    assert_eq!(
        g2.as_ptr(),
        g1.as_ptr().wrapping_add(g1.len()),
        "frames should share the read buffer"
    );
}

#[tokio::test]
async fn mixed_sizes_including_1mib_frames() {
    let frames = mixed_frames(120, 3);
    let data: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
    let mut rx = rx_over(data);
    rx.set_max_frame(MIB + 1);
    recv_all(rx, frames).await;
}

#[tokio::test]
async fn trickled_bytes_reassemble() {
    // A one-byte pipe: every read and every write moves a single byte.
    let (r, w) = tokio::io::duplex(1);
    let frames: Vec<Bytes> = (0..40)
        .map(|i| frame(100, i, 7 + (i as usize * 37) % 300))
        .collect();
    let sender = tokio::spawn(send_all(StreamTx::new(w), frames.clone()));
    recv_all(StreamRx::new(r), frames).await;
    sender.await.unwrap();
}

/// A writer that records everything, takes at most `limit` bytes per call, returns `Pending`
/// every other call, and counts its calls.
struct Stingy {
    out: Vec<u8>,
    limit: usize,
    calls: usize,
    pend: bool,
    flip: bool,
}

impl Stingy {
    fn new(limit: usize, pend: bool) -> Stingy {
        Stingy {
            out: Vec::new(),
            limit,
            calls: 0,
            pend,
            flip: false,
        }
    }
}

impl AsyncWrite for Stingy {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.flip = !this.flip;
        if this.pend && this.flip {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.calls += 1;
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(this.limit - n);
            this.out.extend_from_slice(&b[..take]);
            n += take;
            if n == this.limit {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn concat(frames: &[Bytes]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.iter().copied()).collect()
}

#[tokio::test]
async fn partial_writes_resume_correctly() {
    let frames: Vec<Bytes> = (0..200)
        .map(|i| frame(100, i, 7 + (i as usize * 13) % 90))
        .collect();
    let expected = concat(&frames);
    for limit in [1, 3, 7, 64, 1000] {
        let mut tx = StreamTx::new(Stingy::new(limit, true));
        let mut batch = frames.clone();
        tx.send(&mut batch).await.unwrap();
        assert!(batch.is_empty());
        assert!(
            tx.get_ref().out == expected,
            "limit {limit}: output differs"
        );
    }
}

#[tokio::test]
async fn thousand_small_frames_are_gathered_in_order() {
    let frames: Vec<Bytes> = (0..1000)
        .map(|i| frame(100, i, 7 + (i as usize % 23)))
        .collect();
    let mut tx = StreamTx::new(Stingy::new(usize::MAX, false));
    let mut batch = frames.clone();
    tx.send(&mut batch).await.unwrap();
    assert!(batch.is_empty());
    let w = tx.get_ref();
    assert!(w.out == concat(&frames), "output differs");
    // At most 64 slices per call: 1000 frames take 16 calls; far fewer than one per frame.
    assert!(w.calls <= 16, "{} write calls for 1000 frames", w.calls);
    // And they parse back, in order.
    recv_all(rx_over(w.out.clone()), frames).await;
}

#[tokio::test]
async fn empty_frames_in_the_batch_are_skipped() {
    let f = frame(100, 1, 10);
    let mut tx = StreamTx::new(Stingy::new(4, false));
    let mut batch = vec![
        Bytes::new(),
        f.clone(),
        Bytes::new(),
        f.clone(),
        Bytes::new(),
    ];
    tx.send(&mut batch).await.unwrap();
    assert!(tx.get_ref().out == concat(&[f.clone(), f]));
    let mut empty = vec![Bytes::new()];
    tx.send(&mut empty).await.unwrap();
}

#[tokio::test]
async fn rx_cancelled_mid_frame_loses_nothing() {
    let (r, mut w) = tokio::io::duplex(64);
    let f = frame(100, 9, 40);
    let mut rx = StreamRx::new(r);
    use tokio::io::AsyncWriteExt;
    w.write_all(&f[..15]).await.unwrap();
    // Start a receive, let it read part of the frame, then cancel it.
    let t = tokio::time::timeout(std::time::Duration::from_millis(50), rx.recv()).await;
    assert!(t.is_err(), "no frame should be complete yet");
    w.write_all(&f[15..]).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().unwrap(), f);
}

#[test]
fn frame_helper_is_consistent() {
    let f = frame(5, 0x0102, 9);
    let mut want = BytesMut::new();
    want.put_u32_le(9);
    want.put_u8(5);
    want.put_u16_le(0x0102);
    assert_eq!(&f[..7], &want[..]);
}
