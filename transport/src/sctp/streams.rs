//! Which SCTP stream each frame travels on.
//!
//! SCTP orders messages within a stream, not across streams, so requests spread over streams
//! do not wait behind one another when a packet is lost. A client puts a request on stream
//! `tag mod streams`; a server answers on the stream the request came on. Two rules keep 9P's
//! ordering guarantees: a Tflush goes on the stream of the request it flushes, so it arrives
//! after that request and its Rflush arrives after that request's reply (both on the one
//! stream, in the order the server sent them); Tversion (tag NOTAG) goes on stream 0 like
//! everything before the session is set up.

use std::sync::atomic::{AtomicU8, Ordering};

/// `Tflush`'s message type in every 9P dialect.
const TFLUSH: u8 = 108;
/// The tag of Tversion/Rversion.
const NOTAG: u16 = 0xffff;

/// Streams Envoy asks for in each direction at association setup. A server can then answer
/// up to this many requests independently of one another; 16 is well above the requests a
/// loss-free path keeps in flight per round trip, and the table below holds stream numbers
/// in a byte.
pub const STREAMS: u16 = 16;

/// The tag field of a frame (`size[4] type[1] tag[2]`), if it is long enough to have one.
fn tag(frame: &[u8]) -> Option<u16> {
    frame.get(5..7).map(|t| u16::from_le_bytes([t[0], t[1]]))
}

/// The stream a client sends `frame` on, with `streams` outbound streams negotiated.
pub fn request_stream(frame: &[u8], streams: u16) -> u16 {
    if streams <= 1 {
        return 0;
    }
    let key = match (frame.get(4), frame.get(7..9)) {
        (Some(&TFLUSH), Some(old)) => Some(u16::from_le_bytes([old[0], old[1]])),
        _ => tag(frame),
    };
    match key {
        Some(NOTAG) | None => 0,
        Some(t) => t % streams,
    }
}

/// The stream each outstanding request arrived on, by tag, so its reply goes back on it.
/// One byte per possible tag (64 KiB per association), written by the receiving half and
/// read by the sending half without a lock.
#[derive(Debug)]
pub struct ReplyStreams {
    by_tag: Box<[AtomicU8]>,
}

impl Default for ReplyStreams {
    fn default() -> Self {
        ReplyStreams {
            by_tag: (0..=u16::MAX).map(|_| AtomicU8::new(0)).collect(),
        }
    }
}

impl ReplyStreams {
    /// Note that the request in `frame` arrived on `stream` (stream numbers are below
    /// [`STREAMS`], which the association's INIT guarantees for what a peer sends us).
    pub fn record(&self, frame: &[u8], stream: u16) {
        if let Some(t) = tag(frame) {
            let s = u8::try_from(stream).unwrap_or(0);
            self.by_tag[usize::from(t)].store(s, Ordering::Relaxed);
        }
    }

    /// The stream for the reply `frame` (that of the request with the same tag); never at or
    /// above `streams`, the outbound streams negotiated.
    pub fn reply_stream(&self, frame: &[u8], streams: u16) -> u16 {
        match tag(frame) {
            Some(t) => {
                let s = u16::from(self.by_tag[usize::from(t)].load(Ordering::Relaxed));
                if s < streams { s } else { 0 }
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u8, tag: u16, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&((7 + body.len()) as u32).to_le_bytes());
        f.push(ty);
        f.extend_from_slice(&tag.to_le_bytes());
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn requests_spread_over_streams_by_tag() {
        let streams: Vec<u16> = (0..32)
            .map(|t| request_stream(&msg(110, t, &[]), 16))
            .collect();
        assert_eq!(&streams[..16], &(0..16).collect::<Vec<_>>()[..]);
        assert_eq!(&streams[16..], &(0..16).collect::<Vec<_>>()[..]);
        // With one stream (or none negotiated) everything is on stream 0.
        assert_eq!(request_stream(&msg(110, 5, &[]), 1), 0);
        assert_eq!(request_stream(&msg(110, 5, &[]), 0), 0);
    }

    #[test]
    fn a_flush_travels_with_the_request_it_flushes() {
        // Tflush tag 40, oldtag 3: stream of tag 3.
        let flush = msg(TFLUSH, 40, &3u16.to_le_bytes());
        assert_eq!(request_stream(&flush, 16), 3);
        assert_eq!(
            request_stream(&flush, 16),
            request_stream(&msg(116, 3, &[]), 16)
        );
        // A Tflush too short to name its oldtag falls back to its own tag.
        assert_eq!(request_stream(&msg(TFLUSH, 40, &[]), 16), 40 % 16);
    }

    #[test]
    fn version_and_runt_frames_go_on_stream_zero() {
        assert_eq!(request_stream(&msg(100, NOTAG, b"xxxx"), 16), 0);
        assert_eq!(request_stream(&[1, 2, 3], 16), 0);
    }

    #[test]
    fn replies_go_back_on_the_request_stream() {
        let table = ReplyStreams::default();
        table.record(&msg(110, 9, &[]), 5);
        table.record(&msg(TFLUSH, 12, &9u16.to_le_bytes()), 5);
        table.record(&msg(110, 10, &[]), 0);
        assert_eq!(table.reply_stream(&msg(111, 9, &[]), 16), 5);
        assert_eq!(table.reply_stream(&msg(109, 12, &[]), 16), 5);
        assert_eq!(table.reply_stream(&msg(111, 10, &[]), 16), 0);
        // A tag the table has never seen, and a stream the reply direction lacks: stream 0.
        assert_eq!(table.reply_stream(&msg(111, 77, &[]), 16), 0);
        assert_eq!(table.reply_stream(&msg(111, 9, &[]), 4), 0);
        // Tags reused later take their new stream.
        table.record(&msg(110, 9, &[]), 2);
        assert_eq!(table.reply_stream(&msg(111, 9, &[]), 16), 2);
    }
}
