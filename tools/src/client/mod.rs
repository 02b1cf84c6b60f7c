//! An async 9P client over any transport channel (TCP, SCTP, unix socket, descriptors) or
//! byte stream (an in-memory duplex).
//!
//! [`Client`] negotiates the version when it connects, then lets any number of requests be
//! in flight at once: each gets a free tag, its frame is queued to a writer task, and a
//! reader task hands each reply to the waiting request by tag. Error replies (Rlerror,
//! Rerror) become [`ClientError::Remote`]. On top of [`Client::rpc`] sit thin helpers, one
//! per operation (`walk`, `lopen`, `read`, ...), that also loop where 9P needs it (reads and
//! writes larger than the msize, whole-directory reads).
//!
//! Envoy's integration tests and tools use it; it shares the codec and the transport's
//! framing with the server, not its session logic.
//!
//! ```no_run
//! # async fn demo() -> Result<(), envoy_tools::client::ClientError> {
//! use envoy_protocol::{Dialect, consts::NOFID};
//! use envoy_tools::client::Client;
//!
//! let c = Client::connect_tcp("127.0.0.1:5640", Dialect::P9P2000L, 1 << 20).await?;
//! c.attach(0, "root", "", 0).await?;
//! c.walk(0, 1, &["etc", "hostname"]).await?;
//! c.lopen(1, envoy_protocol::consts::P9_DOTL_RDONLY).await?;
//! let data = c.read(1, 0, 4096).await?;
//! c.clunk(1).await?;
//! # let _ = (data, NOFID); Ok(()) }
//! ```
//!
//! Dropping the client closes the connection: queued frames are still written, then the
//! write side is shut down and the reader stops; requests still waiting fail with
//! [`ClientError::Closed`].

mod error;
mod ops;
#[cfg(test)]
mod tests;

pub use error::ClientError;

use bytes::{Bytes, BytesMut};
use envoy_protocol::consts::{IOHDRSZ, NOTAG, VERSION_UNKNOWN};
use envoy_protocol::{Dialect, Fcall, Tflush, Tversion};
use envoy_transport::{Endpoint, FrameRx, FrameTx, StreamRx, StreamTx};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Result of a client call.
pub type Result<T> = std::result::Result<T, ClientError>;

/// Tags available for requests: every u16 but NOTAG.
const TAGS: usize = NOTAG as usize;
/// Frames queued for the writer before senders wait.
const WRITE_QUEUE: usize = 1024;
/// At most this many queued frames are handed to the transport at once.
const WRITE_BATCH: usize = 64;

/// A connected 9P client. Cheap to share by reference: every method takes `&self`.
pub struct Client {
    shared: Arc<Shared>,
    msize: u32,
    dialect: Dialect,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

/// State shared by the client handle and its reader and writer tasks.
struct Shared {
    dialect: Dialect,
    /// Frames for the writer task.
    frames: mpsc::Sender<Bytes>,
    /// One permit per tag in use, so requests wait (rather than fail) when all 65535 tags
    /// are taken.
    tags: Arc<Semaphore>,
    /// Pending requests by tag. A `std` mutex: it is never held across an `.await` and
    /// the critical sections are a few map operations.
    state: Mutex<State>,
    /// Replies whose tag no request was waiting for.
    unsolicited: AtomicU64,
}

#[derive(Default)]
struct State {
    pending: HashMap<u16, Waiter>,
    /// Tags returned by completed requests, reused first.
    free: Vec<u16>,
    /// The lowest tag never handed out yet.
    fresh: u16,
    /// Set once the connection is unusable.
    closed: bool,
}

/// A request waiting for its reply.
struct Waiter {
    reply: oneshot::Sender<Result<Fcall>>,
    /// For a Tflush: the tag it flushes.
    flush_of: Option<u16>,
    /// Returned to the semaphore when the waiter is dropped (after its tag is freed).
    _permit: OwnedSemaphorePermit,
}

impl State {
    fn take_tag(&mut self) -> u16 {
        if let Some(tag) = self.free.pop() {
            return tag;
        }
        let tag = self.fresh;
        // The semaphore guarantees fewer than TAGS tags are in use, so a fresh one exists
        // whenever the free list is empty.
        debug_assert!(tag != NOTAG);
        self.fresh += 1;
        tag
    }

    /// Remove the waiter for `tag` and free the tag.
    fn finish(&mut self, tag: u16) -> Option<Waiter> {
        let w = self.pending.remove(&tag)?;
        self.free.push(tag);
        Some(w)
    }
}

/// A request that has been sent and not yet answered (see [`Client::start`]).
#[must_use = "the reply is only observed by awaiting `wait`"]
pub struct PendingReply {
    tag: u16,
    rx: oneshot::Receiver<Result<Fcall>>,
}

impl PendingReply {
    /// The tag the request went out with (what a Tflush names).
    pub fn tag(&self) -> u16 {
        self.tag
    }

    /// Wait for the reply. Error replies become [`ClientError::Remote`].
    pub async fn wait(self) -> Result<Fcall> {
        self.rx.await.unwrap_or(Err(ClientError::Closed))
    }
}

impl Client {
    /// Connect over TCP (with `TCP_NODELAY`) and negotiate `dialect` and `msize`.
    pub async fn connect_tcp(
        addr: impl tokio::net::ToSocketAddrs,
        dialect: Dialect,
        msize: u32,
    ) -> Result<Client> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Client::over_stream(stream, dialect, msize).await
    }

    /// Connect to a unix socket and negotiate `dialect` and `msize`.
    pub async fn connect_unix(
        path: impl AsRef<Path>,
        dialect: Dialect,
        msize: u32,
    ) -> Result<Client> {
        let stream = tokio::net::UnixStream::connect(path).await?;
        Client::over_stream(stream, dialect, msize).await
    }

    /// Connect to any transport endpoint (`tcp:`, `sctp:`, `unix:`, `fd:`) and negotiate
    /// `dialect` and `msize`.
    pub async fn connect(ep: &Endpoint, dialect: Dialect, msize: u32) -> Result<Client> {
        let c = envoy_transport::connect(ep).await?;
        Client::over_channel(c.rx, c.tx, dialect, msize).await
    }

    /// Speak 9P over an already connected byte stream (see [`Client::over_channel`]).
    pub async fn over_stream<S>(stream: S, dialect: Dialect, msize: u32) -> Result<Client>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        Client::over_channel(StreamRx::new(rd), StreamTx::new(wr), dialect, msize).await
    }

    /// Speak 9P over a transport channel: send Tversion proposing `dialect` and `msize`, and
    /// start the reader and writer tasks (so this needs a tokio runtime).
    ///
    /// The server may lower the msize and may answer an older dialect (9P2000 for
    /// 9P2000.u); [`Client::msize`] and [`Client::dialect`] give what was agreed. An answer
    /// of "unknown", or of a version this client does not know, is
    /// [`ClientError::VersionRejected`].
    pub async fn over_channel<R: FrameRx, T: FrameTx>(
        mut rx: R,
        mut tx: T,
        dialect: Dialect,
        msize: u32,
    ) -> Result<Client> {
        let mut out = BytesMut::new();
        let version = Tversion {
            msize,
            version: dialect.as_str().to_owned(),
        };
        Fcall::Tversion(version).encode(NOTAG, dialect, &mut out);
        tx.send(&mut vec![out.freeze()]).await?;

        rx.set_max_frame(msize.max(8192));
        let frame = rx.recv().await?.ok_or(ClientError::Closed)?;
        let (tag, reply) = envoy_protocol::decode(frame, dialect)?;
        let reply = into_result(reply)?;
        let Fcall::Rversion(rv) = reply else {
            return Err(ClientError::UnexpectedReply {
                request: "Tversion",
                reply: Box::new(reply),
            });
        };
        if tag != NOTAG {
            return Err(ClientError::VersionRejected(format!(
                "Rversion with tag {tag}, not NOTAG"
            )));
        }
        if rv.version == VERSION_UNKNOWN {
            return Err(ClientError::VersionRejected(rv.version));
        }
        let agreed = Dialect::from_version(&rv.version)
            .ok_or_else(|| ClientError::VersionRejected(rv.version.clone()))?;
        let msize = rv.msize.min(msize);
        if msize <= IOHDRSZ {
            return Err(ClientError::VersionRejected(format!(
                "msize {msize} leaves no room for data"
            )));
        }
        rx.set_max_frame(msize);

        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        let shared = Arc::new(Shared {
            dialect: agreed,
            frames,
            tags: Arc::new(Semaphore::new(TAGS)),
            state: Mutex::new(State::default()),
            unsolicited: AtomicU64::new(0),
        });
        let writer = tokio::spawn(write_loop(tx, queue, Arc::downgrade(&shared)));
        let reader = tokio::spawn(read_loop(rx, shared.clone()));
        Ok(Client {
            shared,
            msize,
            dialect: agreed,
            reader,
            writer: Some(writer),
        })
    }

    /// The negotiated msize.
    pub fn msize(&self) -> u32 {
        self.msize
    }

    /// The negotiated dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The most data one Tread/Twrite/Treaddir can carry: msize − IOHDRSZ.
    pub fn max_io(&self) -> u32 {
        self.msize - IOHDRSZ
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared
            .state
            .lock()
            .expect("client state lock")
            .pending
            .len()
    }

    /// Replies that arrived with a tag no request was waiting for (answers to
    /// [`send_raw`](Client::send_raw) frames, or server bugs).
    pub fn unsolicited_replies(&self) -> u64 {
        self.shared.unsolicited.load(Ordering::Relaxed)
    }

    /// Send `msg` and wait for its reply; Rlerror/Rerror become [`ClientError::Remote`].
    pub async fn rpc(&self, msg: impl Into<Fcall>) -> Result<Fcall> {
        self.start(msg).await?.wait().await
    }

    /// Send `msg` and return its tag with the reply (for tests that care which tag a
    /// request used).
    pub async fn rpc_tagged(&self, msg: impl Into<Fcall>) -> Result<(u16, Fcall)> {
        let pending = self.start(msg).await?;
        let tag = pending.tag();
        Ok((tag, pending.wait().await?))
    }

    /// Send `msg` without waiting for the reply, e.g. to flush it or to have many
    /// requests in flight from one task.
    pub async fn start(&self, msg: impl Into<Fcall>) -> Result<PendingReply> {
        let msg = msg.into();
        let flush_of = match &msg {
            Fcall::Tflush(Tflush { oldtag }) => Some(*oldtag),
            _ => None,
        };
        let dialect = self.shared.dialect;
        self.send_with_tag(flush_of, |tag| {
            let mut buf = BytesMut::with_capacity(msg.encoded_len(dialect));
            msg.encode(tag, dialect, &mut buf);
            buf.freeze()
        })
        .await
    }

    /// Send a hand-made frame of at least 7 bytes, with its tag field (bytes 5..7)
    /// replaced by a free tag, and wait for the reply. For tests of malformed requests.
    pub async fn rpc_raw(&self, frame: &[u8]) -> Result<Fcall> {
        if frame.len() < 7 {
            let e = std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a frame needs 7 bytes to carry a tag",
            );
            return Err(e.into());
        }
        let pending = self
            .send_with_tag(None, |tag| {
                let mut f = BytesMut::from(frame);
                f[5..7].copy_from_slice(&tag.to_le_bytes());
                f.freeze()
            })
            .await?;
        pending.wait().await
    }

    /// Write `bytes` to the stream exactly as given, without registering a reply. A reply
    /// that comes back is counted in [`unsolicited_replies`](Client::unsolicited_replies);
    /// if its tag collides with a pending request, that request receives it.
    pub async fn send_raw(&self, bytes: Bytes) -> Result<()> {
        if self.shared.state.lock().expect("client state lock").closed {
            return Err(ClientError::Closed);
        }
        self.shared
            .frames
            .send(bytes)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Allocate a tag, register a waiter, and queue the frame `make(tag)`.
    async fn send_with_tag(
        &self,
        flush_of: Option<u16>,
        make: impl FnOnce(u16) -> Bytes,
    ) -> Result<PendingReply> {
        let permit = self
            .shared
            .tags
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed)?;
        let (reply, rx) = oneshot::channel();
        let tag = {
            let mut st = self.shared.state.lock().expect("client state lock");
            if st.closed {
                return Err(ClientError::Closed);
            }
            let tag = st.take_tag();
            st.pending.insert(
                tag,
                Waiter {
                    reply,
                    flush_of,
                    _permit: permit,
                },
            );
            tag
        };
        if self.shared.frames.send(make(tag)).await.is_err() {
            self.shared
                .state
                .lock()
                .expect("client state lock")
                .finish(tag);
            return Err(ClientError::Closed);
        }
        Ok(PendingReply { tag, rx })
    }

    /// Close the connection and wait until queued frames are written and the write side
    /// is shut down.
    pub async fn close(mut self) {
        let writer = self.writer.take();
        drop(self);
        if let Some(w) = writer {
            let _ = w.await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
        self.shared.close();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("dialect", &self.dialect)
            .field("msize", &self.msize)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Mark the connection closed and fail every waiting request.
    fn close(&self) {
        let waiters: Vec<Waiter> = {
            let mut st = self.state.lock().expect("client state lock");
            st.closed = true;
            st.pending.drain().map(|(_, w)| w).collect()
        };
        self.tags.close();
        for w in waiters {
            let _ = w.reply.send(Err(ClientError::Closed));
        }
    }

    /// Hand one received frame to the request waiting for its tag.
    fn deliver(&self, frame: Bytes) {
        let tag = u16::from_le_bytes([frame[5], frame[6]]);
        let result = envoy_protocol::decode(frame, self.dialect)
            .map_err(ClientError::from)
            .and_then(|(_, m)| into_result(m));
        let (waiter, flushed) = {
            let mut st = self.state.lock().expect("client state lock");
            let Some(waiter) = st.finish(tag) else {
                drop(st);
                self.unsolicited.fetch_add(1, Ordering::Relaxed);
                return;
            };
            // An Rflush means the flushed request gets no reply: release it too.
            let flushed = match (waiter.flush_of, &result) {
                (Some(old), Ok(Fcall::Rflush(_))) => st.finish(old),
                _ => None,
            };
            (waiter, flushed)
        };
        if let Some(f) = flushed {
            let _ = f.reply.send(Err(ClientError::Flushed));
        }
        let _ = waiter.reply.send(result);
    }
}

/// Error replies as errors.
fn into_result(msg: Fcall) -> Result<Fcall> {
    match msg {
        Fcall::Rlerror(e) => Err(ClientError::Remote {
            errno: e.ecode,
            ename: error::errno_text(e.ecode),
        }),
        Fcall::Rerror(e) => Err(ClientError::Remote {
            errno: e.errno,
            ename: e.ename,
        }),
        m => Ok(m),
    }
}

/// Receive replies until the channel ends or breaks, then fail whatever is still waiting.
async fn read_loop<R: FrameRx>(mut rx: R, shared: Arc<Shared>) {
    while let Ok(Some(frame)) = rx.recv().await {
        shared.deliver(frame);
    }
    shared.close();
}

/// Send queued frames, handing whatever is queued (up to [`WRITE_BATCH`] frames) to the
/// transport at once, until every sender is gone; then close the sending direction.
async fn write_loop<T: FrameTx>(mut tx: T, mut queue: mpsc::Receiver<Bytes>, shared: Weak<Shared>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if tx.send(&mut batch).await.is_err() {
            if let Some(s) = shared.upgrade() {
                s.close();
            }
            return;
        }
    }
    let _ = tx.close().await;
}
