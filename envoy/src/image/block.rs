//! File blocks written since the last commit.
//!
//! A write that covers whole blocks cuts them out of the request's frame without a copy and
//! hashes them before the owner's lock is taken ([`BlockWrite::cut`]): on the writer's thread,
//! in parallel with the other writers, instead of in the commit — which would otherwise spend
//! most of its time hashing, one block after the other, while writers wait for it. A block
//! written in part is a buffer of its own, hashed when it is stored. A frame stays in memory
//! while any block cut from it does, so the frames held are counted ([`Pins`]) and memory
//! limits see them.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use envoy_objstore::PutObject;

use super::engine::BLOCK;

/// The bytes of request frames that blocks point into, wherever those blocks are now (dirty,
/// being stored, in a batch kept for a retry): counted until the last such block drops.
/// Shared by an image's engine and its writers (who cut blocks before taking its lock).
#[derive(Clone, Debug, Default)]
pub struct Pins(Arc<AtomicUsize>);

impl Pins {
    /// The bytes held now.
    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One frame's bytes in [`Pins`], until the last block cut from it drops.
#[derive(Debug)]
struct FrameCharge {
    bytes: usize,
    pins: Pins,
}

impl FrameCharge {
    fn new(bytes: usize, pins: &Pins) -> Arc<FrameCharge> {
        pins.0.fetch_add(bytes, Ordering::Relaxed);
        Arc::new(FrameCharge {
            bytes,
            pins: pins.clone(),
        })
    }
}

impl Drop for FrameCharge {
    fn drop(&mut self) {
        self.pins.0.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A block that is a slice of a request frame, with that frame's charge.
struct Pinned {
    data: Bytes,
    _charge: Arc<FrameCharge>,
}

impl AsRef<[u8]> for Pinned {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// A block written since the last commit.
#[derive(Clone, Debug)]
pub enum Dirty {
    /// Written whole: a slice of the request that wrote it, hashed by that writer.
    Whole(PutObject),
    /// Written in part (or cut short by a truncate): a buffer of its own, hashed when stored.
    Part(Bytes),
}

impl Dirty {
    /// The block's bytes.
    pub fn data(&self) -> &Bytes {
        match self {
            Dirty::Whole(o) => o.data(),
            Dirty::Part(b) => b,
        }
    }

    /// The object to store (hashing the block now if its writer did not).
    pub fn into_object(self) -> PutObject {
        match self {
            Dirty::Whole(o) => o,
            Dirty::Part(b) => PutObject::new(b, Vec::new()),
        }
    }

    /// The bytes as a buffer to change in part: the block's own if nothing else holds it (the
    /// usual case for a block written in part), else a copy.
    pub fn into_mut(self) -> BytesMut {
        match self {
            Dirty::Whole(o) => BytesMut::from(&o.data()[..]),
            Dirty::Part(b) => b.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..])),
        }
    }
}

/// The pieces of an access (write or read) of `len` bytes at `offset`, one per block touched:
/// (block index, where in the block the piece starts, range of the access's bytes). A piece
/// of [`BLOCK`] bytes is a whole block.
pub fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, Range<usize>)> {
    let mut done = 0;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let pos = offset + done as u64;
        let within = (pos % BLOCK as u64) as usize;
        let take = (BLOCK - within).min(len - done);
        let piece = (pos / BLOCK as u64, within, done..done + take);
        done += take;
        Some(piece)
    })
}

/// A write's data with its whole blocks cut out and hashed ([`BlockWrite::cut`]), ready for
/// [`super::engine::Engine::write_cut`].
#[derive(Debug)]
pub struct BlockWrite {
    offset: u64,
    data: Bytes,
    /// The whole blocks among [`pieces`], in order.
    whole: Vec<PutObject>,
}

impl BlockWrite {
    /// Cut `data`, to be written at `offset`: each whole block a slice of it (the frame
    /// charged to `pins` while any is held), hashed here.
    pub fn cut(offset: u64, data: &Bytes, pins: &Pins) -> BlockWrite {
        let mut whole = Vec::new();
        let mut charge = None;
        for (_, _, range) in pieces(offset, data.len()) {
            if range.len() == BLOCK {
                let charge = charge.get_or_insert_with(|| FrameCharge::new(data.len(), pins));
                let block = Bytes::from_owner(Pinned {
                    data: data.slice(range),
                    _charge: charge.clone(),
                });
                whole.push(PutObject::new(block, Vec::new()));
            }
        }
        BlockWrite {
            offset,
            data: data.clone(),
            whole,
        }
    }

    /// Where the data goes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The data.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The whole blocks, in the order [`pieces`] gives them.
    pub fn whole(&self) -> &[PutObject] {
        &self.whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_objstore::ObjectId;

    #[test]
    fn pieces_cover_the_write_block_by_block() {
        let b = BLOCK as u64;
        let p: Vec<_> = pieces(b - 10, BLOCK + 30).collect();
        assert_eq!(
            p,
            vec![
                (0, BLOCK - 10, 0..10),
                (1, 0, 10..10 + BLOCK),
                (2, 0, 10 + BLOCK..30 + BLOCK)
            ]
        );
        assert_eq!(pieces(5, 0).count(), 0);
        assert_eq!(pieces(2 * b + 3, 1).collect::<Vec<_>>(), vec![(2, 3, 0..1)]);
    }

    #[test]
    fn whole_blocks_are_slices_hashed_and_charged() {
        let pins = Pins::default();
        let frame = Bytes::from((0..3 * BLOCK).map(|i| (i / 7) as u8).collect::<Vec<u8>>());
        // Offset 100: two whole blocks (indexes 1 and 2), partial pieces either side.
        let w = BlockWrite::cut(BLOCK as u64 - 100, &frame, &pins);
        assert_eq!(w.whole().len(), 2);
        for (o, at) in w.whole().iter().zip([100, 100 + BLOCK]) {
            assert_eq!(o.data().as_ptr(), frame[at..].as_ptr(), "a slice, no copy");
            assert_eq!(o.id(), ObjectId::of(&frame[at..at + BLOCK]));
        }
        assert_eq!(pins.bytes(), frame.len());
        let kept = Dirty::Whole(w.whole()[0].clone());
        drop(w);
        assert_eq!(pins.bytes(), frame.len(), "one block still holds the frame");
        let copy = kept.clone().into_mut();
        assert_eq!(&copy[..], &kept.data()[..]);
        drop(kept);
        assert_eq!(pins.bytes(), 0);
        // Nothing whole: nothing charged, nothing hashed.
        let w = BlockWrite::cut(1, &frame.slice(..BLOCK), &pins);
        assert!(w.whole().is_empty());
        assert_eq!(pins.bytes(), 0);
    }

    #[test]
    fn a_part_is_hashed_when_stored_and_changed_in_place() {
        let part = Dirty::Part(Bytes::from(vec![3u8; 100]));
        let id = part.clone().into_object().id();
        assert_eq!(id, ObjectId::of(&[3u8; 100]));
        let b = Bytes::from(vec![4u8; 10]);
        let ptr = b.as_ptr();
        assert_eq!(
            Dirty::Part(b).into_mut().as_ptr(),
            ptr,
            "unshared: its own buffer"
        );
    }
}
