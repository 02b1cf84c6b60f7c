//! Whole messages out of SCTP reads: one SCTP message carries exactly one frame.
//!
//! A read returns at most one message, possibly only part of it (the kernel delivers a
//! message larger than the buffer in pieces and marks the last with `MSG_EOR`). The frame's
//! own `size[4]` must then agree with where the message ended: a message that ends before its
//! size field says is truncated, one that goes on past it carries something else. Either is a
//! broken peer, and so is a size field outside [`MIN_FRAME`](crate::MIN_FRAME) .. max.
//!
//! Buffering follows [`crate::StreamRx`]: one `BytesMut` per association, reads into its spare
//! room (at least 4 KiB, reserved 64 KiB at a time), frames handed out as zero-copy slices.
//! Once a message's size field is in, the next read asks for exactly the rest of the frame,
//! so no read ever straddles two messages' worth of buffer and a hostile size allocates
//! nothing.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};

use crate::frame::DEFAULT_MAX_FRAME;
use crate::{Result, TransportError};

/// How much to reserve at a time when the buffer runs out of room.
const CHUNK: usize = 64 * 1024;
/// Below this much free room (with no size known yet), reserve a new chunk.
const MIN_READ: usize = 4 * 1024;

/// Reassembles frames from the pieces of SCTP messages.
#[derive(Debug)]
pub(crate) struct Reassembly {
    /// The current message's bytes so far (nothing else: frames leave as soon as complete).
    buf: BytesMut,
    /// The stream the current message arrives on.
    stream: u16,
    max: u32,
}

impl Default for Reassembly {
    fn default() -> Self {
        Reassembly {
            buf: BytesMut::new(),
            stream: 0,
            max: DEFAULT_MAX_FRAME,
        }
    }
}

impl Reassembly {
    pub(crate) fn set_max_frame(&mut self, max: u32) {
        self.max = max;
    }

    /// The current message's frame size, validated, once its size field is in.
    fn frame_size(&self) -> Result<Option<usize>> {
        crate::frame::frame_size(&self.buf, self.max)
    }

    /// Where the next read must go: at most the rest of the current frame once its size is
    /// known, otherwise at most `max` bytes in all.
    pub(crate) fn window(&mut self) -> Result<&mut [MaybeUninit<u8>]> {
        let have = self.buf.len();
        let room = self.buf.capacity() - have;
        let want = match self.frame_size()? {
            Some(size) => {
                if room < size - have {
                    self.buf.reserve((size - have).max(CHUNK));
                }
                size - have
            }
            None => {
                if room < MIN_READ {
                    self.buf.reserve(CHUNK);
                }
                self.max as usize - have
            }
        };
        let spare = self.buf.spare_capacity_mut();
        let n = spare.len().min(want);
        Ok(&mut spare[..n])
    }

    /// Account for `len` bytes a read put at the start of [`Reassembly::window`], which ended
    /// the message if `eor`. Returns the frame and its stream when the message is complete.
    pub(crate) fn filled(
        &mut self,
        len: usize,
        eor: bool,
        stream: Option<u16>,
    ) -> Result<Option<(Bytes, u16)>> {
        let spare = self.buf.capacity() - self.buf.len();
        assert!(len <= spare, "a read cannot fill more than the window");
        if self.buf.is_empty() {
            self.stream = stream.unwrap_or(0);
        }
        advance_initialised(&mut self.buf, len);
        let size = self.frame_size()?;
        let have = self.buf.len();
        match (size, eor) {
            (Some(size), true) if have == size => {
                Ok(Some((self.buf.split_to(size).freeze(), self.stream)))
            }
            (size, true) => Err(TransportError::MessageMismatch {
                size: size.map(|s| s as u32),
                message: have,
            }),
            // The whole frame is in but the message goes on.
            (Some(size), false) if have >= size => Err(TransportError::MessageMismatch {
                size: Some(size as u32),
                message: have + 1,
            }),
            // A message that reached the maximum without its size field cannot happen
            // (4 bytes are always less than the maximum); otherwise wait for more.
            _ => Ok(None),
        }
    }

    /// The peer ended the association: fine between messages, not inside one.
    pub(crate) fn end_of_input(&self) -> Result<Option<(Bytes, u16)>> {
        if self.buf.is_empty() {
            Ok(None)
        } else {
            Err(TransportError::UnexpectedEof {
                buffered: self.buf.len(),
            })
        }
    }

    /// Capacity of the buffer (for tests: reuse instead of allocation).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Extend `buf` over the first `len` bytes of its spare room, which a read has initialised.
#[allow(unsafe_code)]
fn advance_initialised(buf: &mut BytesMut, len: usize) {
    use bytes::BufMut;
    // SAFETY: `advance_mut` requires the bytes to be initialised: the read (recvmsg, or a
    // test's copy) wrote these `len` bytes at the start of the spare capacity, and `filled`
    // checked that `len` does not exceed it.
    unsafe { buf.advance_mut(len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(size: u32, fill: u8) -> Vec<u8> {
        let mut f = size.to_le_bytes().to_vec();
        f.resize(size as usize, fill);
        f
    }

    /// One read of (at most the window's worth of) `data`; returns how much it took.
    fn read_into(r: &mut Reassembly, data: &[u8]) -> usize {
        let w = r.window().unwrap();
        let n = w.len().min(data.len());
        for (dst, src) in w.iter_mut().zip(&data[..n]) {
            dst.write(*src);
        }
        n
    }

    /// Deliver `data` as reads of at most `piece` bytes (and at most the window), the last
    /// marked end-of-record; returns what the last read produced.
    fn deliver(
        r: &mut Reassembly,
        data: &[u8],
        piece: usize,
        stream: u16,
    ) -> Result<Option<(Bytes, u16)>> {
        let mut at = 0usize;
        loop {
            r.window()?; // a refused size field is the result

            let n = read_into(r, &data[at..at.saturating_add(piece).min(data.len())]);
            at += n;
            let out = r.filled(n, at == data.len(), Some(stream))?;
            if out.is_some() || at == data.len() {
                return Ok(out);
            }
            assert!(n > 0, "window closed before the message ended");
        }
    }

    #[test]
    fn a_message_read_in_pieces_is_one_frame_with_its_stream() {
        let mut r = Reassembly::default();
        r.set_max_frame(1 << 20);
        let f = frame(300_000, 0xab);
        let (got, stream) = deliver(&mut r, &f, 4096, 7).unwrap().unwrap();
        assert_eq!(&got[..], &f[..]);
        assert_eq!(stream, 7);
        // And the next one, whole, on another stream.
        let g = frame(20, 1);
        let (got, stream) = deliver(&mut r, &g, usize::MAX, 2).unwrap().unwrap();
        assert_eq!(&got[..], &g[..]);
        assert_eq!(stream, 2);
    }

    #[test]
    fn the_window_stops_at_the_end_of_the_frame() {
        let mut r = Reassembly::default();
        assert_eq!(read_into(&mut r, &frame(100, 0)[..10]), 10);
        assert!(r.filled(10, false, Some(0)).unwrap().is_none());
        assert_eq!(r.window().unwrap().len(), 90);
    }

    #[test]
    fn a_message_shorter_than_its_frame_is_an_error() {
        let mut r = Reassembly::default();
        let mut f = frame(100, 0);
        f.truncate(60);
        match deliver(&mut r, &f, usize::MAX, 0) {
            Err(TransportError::MessageMismatch {
                size: Some(100),
                message: 60,
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_longer_than_its_frame_is_an_error() {
        let mut r = Reassembly::default();
        let mut f = frame(100, 0);
        f.extend_from_slice(&frame(10, 0));
        // The window ends at 100 bytes, so the read stops there without end-of-record.
        match deliver(&mut r, &f, usize::MAX, 0) {
            Err(TransportError::MessageMismatch {
                size: Some(100), ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_too_short_for_a_size_field_is_an_error() {
        let mut r = Reassembly::default();
        match deliver(&mut r, &[1, 0], usize::MAX, 0) {
            Err(TransportError::MessageMismatch {
                size: None,
                message: 2,
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_sizes_are_refused_before_anything_is_reserved() {
        let mut r = Reassembly::default();
        r.set_max_frame(8192);
        let mut head = u32::MAX.to_le_bytes().to_vec();
        head.extend_from_slice(&[0; 3]);
        match deliver(&mut r, &head, 4, 0) {
            Err(TransportError::FrameTooLarge { size, max: 8192 }) => assert_eq!(size, u32::MAX),
            other => panic!("{other:?}"),
        }
        assert!(r.capacity() <= CHUNK);
        let mut r = Reassembly::default();
        match deliver(&mut r, &[0, 0, 0, 0], 4, 0) {
            Err(TransportError::FrameTooShort { size: 0 }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn end_of_input_between_messages_is_clean_inside_one_is_not() {
        let mut r = Reassembly::default();
        assert!(r.end_of_input().unwrap().is_none());
        assert_eq!(read_into(&mut r, &frame(50, 0)[..20]), 20);
        r.filled(20, false, None).unwrap();
        assert!(matches!(
            r.end_of_input(),
            Err(TransportError::UnexpectedEof { buffered: 20 })
        ));
    }

    #[test]
    fn the_buffer_is_reused_once_frames_are_dropped() {
        let mut r = Reassembly::default();
        r.set_max_frame(1 << 20);
        let f = frame(200_000, 3);
        let (got, _) = deliver(&mut r, &f, usize::MAX, 0).unwrap().unwrap();
        let base = got.as_ptr() as usize;
        drop(got);
        // 100 small messages land in the big frame's allocation: nothing is allocated for them.
        for _ in 0..100 {
            let (got, _) = deliver(&mut r, &frame(100, 9), usize::MAX, 0)
                .unwrap()
                .unwrap();
            let at = got.as_ptr() as usize;
            assert!(
                (base..base + 200_000).contains(&at),
                "frame outside the first buffer"
            );
        }
    }
}
