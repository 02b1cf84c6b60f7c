//! Helpers shared by the transport tests: building frames and pushing traffic both ways.

#![allow(dead_code)]

use bytes::{BufMut, Bytes, BytesMut};
use envoy_transport::{Channel, FrameRx, FrameTx};

/// One mebibyte.
pub const MIB: u32 = 1 << 20;

/// A frame of `total` bytes (header included) whose body is a pattern derived from `tag`.
pub fn frame(ty: u8, tag: u16, total: usize) -> Bytes {
    assert!(total >= 7);
    let mut b = BytesMut::with_capacity(total);
    b.put_u32_le(total as u32);
    b.put_u8(ty);
    b.put_u16_le(tag);
    for i in 0..total - 7 {
        b.put_u8((i as u8).wrapping_mul(31).wrapping_add(tag as u8));
    }
    b.freeze()
}

/// A deterministic mix of sizes: mostly small, some medium, a few of exactly 1 MiB.
pub fn mixed_sizes(n: usize) -> Vec<usize> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match i % 10 {
                3 if i % 30 == 3 => MIB as usize,
                5 => 7 + (x % 300_000) as usize,
                7 => 7 + (x % 70_000) as usize,
                _ => 7 + (x % 200) as usize,
            }
        })
        .collect()
}

/// The frames `mixed_sizes(n)` describes, tagged by index.
pub fn mixed_frames(n: usize, ty: u8) -> Vec<Bytes> {
    mixed_sizes(n)
        .into_iter()
        .enumerate()
        .map(|(i, size)| frame(ty, i as u16, size))
        .collect()
}

/// Send `frames` in batches of varying length, then close.
pub async fn send_all<T: FrameTx>(mut tx: T, frames: Vec<Bytes>) -> T {
    let mut batch = Vec::new();
    let mut n = 1;
    let mut it = frames.into_iter().peekable();
    while it.peek().is_some() {
        batch.extend(it.by_ref().take(n));
        tx.send(&mut batch).await.expect("send");
        assert!(batch.is_empty(), "send must drain the vec");
        n = n % 7 + 1;
    }
    tx.close().await.expect("close");
    tx
}

/// Receive until clean EOF, checking every frame against `expected` in order.
pub async fn recv_all<R: FrameRx>(mut rx: R, expected: Vec<Bytes>) -> R {
    for (i, want) in expected.iter().enumerate() {
        let got = rx
            .recv()
            .await
            .expect("recv")
            .unwrap_or_else(|| panic!("EOF before frame {i}"));
        assert_eq!(got.len(), want.len(), "frame {i} length");
        assert!(got == *want, "frame {i} contents differ");
    }
    assert!(
        rx.recv().await.expect("recv at end").is_none(),
        "expected clean EOF"
    );
    rx
}

/// Mixed traffic (including 1 MiB frames) both ways at once over two connected channels, each
/// direction closed at the end and seen as a clean EOF.
pub async fn exchange<R1, T1, R2, T2>(a: Channel<R1, T1>, b: Channel<R2, T2>)
where
    R1: FrameRx,
    T1: FrameTx,
    R2: FrameRx,
    T2: FrameTx,
{
    let (mut arx, atx) = (a.rx, a.tx);
    let (mut brx, btx) = (b.rx, b.tx);
    arx.set_max_frame(MIB + 64);
    brx.set_max_frame(MIB + 64);
    let a_to_b = mixed_frames(90, 1);
    let b_to_a = mixed_frames(60, 2);
    assert!(a_to_b.iter().filter(|f| f.len() == MIB as usize).count() >= 3);
    let s1 = tokio::spawn(send_all(atx, a_to_b.clone()));
    let s2 = tokio::spawn(send_all(btx, b_to_a.clone()));
    let r1 = tokio::spawn(recv_all(brx, a_to_b));
    let r2 = tokio::spawn(recv_all(arx, b_to_a));
    for t in [
        s1.await.map(drop),
        s2.await.map(drop),
        r1.await.map(drop),
        r2.await.map(drop),
    ] {
        t.expect("task");
    }
}
