//! Frame boundaries over a byte stream: the framing shared by TCP, unix sockets and descriptors.
//!
//! Receiving keeps one [`BytesMut`] read buffer per connection. The size field is validated as
//! soon as its four bytes are in, before any space is reserved for the frame, so a hostile
//! length never causes an allocation. Space is reserved in big chunks (at least 64 KiB, or the
//! rest of the frame), so most reads allocate nothing and one read often brings in many frames;
//! frames are handed out with `split_to(..).freeze()`, i.e. as zero-copy slices of that buffer.
//!
//! Sending gathers queued frames into vectored writes of up to 64 slices, resuming correctly
//! after partial writes, without copying frame bytes.

use std::io::{self, IoSlice};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{DEFAULT_MAX_FRAME, FrameRx, FrameTx};
use crate::{Result, TransportError};

/// How much to reserve at a time when the read buffer runs out of room.
const CHUNK: usize = 64 * 1024;

/// Below this much free room (and with no frame size known yet), reserve a new chunk rather than
/// issue a tiny read.
const MIN_READ: usize = 4 * 1024;

/// The most slices handed to one vectored write.
const MAX_IOV: usize = 64;

/// The receiving half of a byte-stream channel.
#[derive(Debug)]
pub struct StreamRx<R> {
    io: R,
    buf: BytesMut,
    max: u32,
}

impl<R: AsyncRead + Unpin + Send + 'static> StreamRx<R> {
    /// Frames read from `io`, with the maximum frame size at [`DEFAULT_MAX_FRAME`].
    pub fn new(io: R) -> Self {
        StreamRx {
            io,
            buf: BytesMut::new(),
            max: DEFAULT_MAX_FRAME,
        }
    }
}

impl<R> StreamRx<R> {
    /// The maximum frame size now accepted.
    pub fn max_frame(&self) -> u32 {
        self.max
    }

    /// The capacity of the read buffer (bytes buffered plus free room); for tests and metrics.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.io
    }

    /// The size of the frame at the front of the buffer, validated, if its size field is in.
    fn front_size(&self) -> Result<Option<usize>> {
        crate::frame::frame_size(&self.buf, self.max)
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> FrameRx for StreamRx<R> {
    /// Cancel-safe: everything read so far stays in the buffer.
    async fn recv(&mut self) -> Result<Option<Bytes>> {
        loop {
            let room = self.buf.capacity() - self.buf.len();
            match self.front_size()? {
                Some(size) if self.buf.len() >= size => {
                    return Ok(Some(self.buf.split_to(size).freeze()));
                }
                Some(size) => {
                    let need = size - self.buf.len();
                    if room < need {
                        self.buf.reserve(need.max(CHUNK));
                    }
                }
                None if room < MIN_READ => self.buf.reserve(CHUNK),
                None => {}
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(TransportError::UnexpectedEof {
                        buffered: self.buf.len(),
                    })
                };
            }
        }
    }

    fn set_max_frame(&mut self, max: u32) {
        self.max = max;
    }
}

/// The sending half of a byte-stream channel.
#[derive(Debug)]
pub struct StreamTx<W> {
    io: W,
}

impl<W: AsyncWrite + Unpin + Send + 'static> StreamTx<W> {
    /// Frames written to `io`.
    pub fn new(io: W) -> Self {
        StreamTx { io }
    }
}

impl<W> StreamTx<W> {
    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.io
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> StreamTx<W> {
    async fn write_all_frames(&mut self, frames: &[Bytes]) -> io::Result<()> {
        // The first frame not yet completely written, and how much of it is.
        let mut first = 0;
        let mut offset = 0;
        while first < frames.len() {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut count = 0;
            for (i, frame) in frames[first..].iter().enumerate() {
                let part = if i == 0 { &frame[offset..] } else { &frame[..] };
                if part.is_empty() {
                    continue;
                }
                slices[count] = IoSlice::new(part);
                count += 1;
                if count == MAX_IOV {
                    break;
                }
            }
            if count == 0 {
                break; // only empty frames left
            }
            let mut written = self.io.write_vectored(&slices[..count]).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while written > 0 && first < frames.len() {
                let left = frames[first].len() - offset;
                if written < left {
                    offset += written;
                    written = 0;
                } else {
                    written -= left;
                    first += 1;
                    offset = 0;
                }
            }
            // Skip frames that are now complete or empty.
            while first < frames.len() && frames[first].len() == offset {
                first += 1;
                offset = 0;
            }
        }
        self.io.flush().await
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> FrameTx for StreamTx<W> {
    async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<()> {
        let result = self.write_all_frames(frames).await;
        frames.clear();
        Ok(result?)
    }

    async fn close(&mut self) -> Result<()> {
        Ok(self.io.shutdown().await?)
    }
}
