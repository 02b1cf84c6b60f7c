//! Serving one connection: many requests in flight, replies in any order, correct flush.
//!
//! The reader task takes whole frames from the transport, decodes them, and starts each request
//! on the server's worker threads (backends block; see `crate::workers`). A semaphore caps requests in flight per connection;
//! when it is exhausted the reader stops reading, which pushes back on the client and bounds
//! memory to `max_in_flight × msize`. Replies go through one channel to the writer task, which
//! gathers them into vectored writes.
//!
//! Flush: the in-flight table maps tags to requests. A request's reply is queued and its tag
//! retired under the table's lock, and Rflush is queued only after the flushed request's reply
//! (if it ran) — so the reply to a flushed request always precedes the Rflush. A request flushed
//! before it started is dropped without a reply.
//!
//! Tversion is handled by the reader alone: it waits for every request in flight, drops all fids,
//! and then answers, so a new Tversion resets the session. Frames larger than msize, broken
//! framing and duplicate tags end the connection; every other malformed request gets an error
//! reply and the connection goes on.

use crate::bufpool::BufPool;
use crate::session::{Protocol, Session, SessionLimits, encode, error_reply};
use crate::vfs::{Errno, FileSystem};
use crate::workers::Workers;
use bytes::Bytes;
use envoy_protocol::consts::{TFLUSH, TVERSION};
use envoy_protocol::{Dialect, Fcall, Rflush};
use envoy_transport::xen::{XenDevice, XenRx, XenTx};
use envoy_transport::{Channel, FrameRx, FrameTx, Listener};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{Instrument, debug, debug_span, trace, warn};

/// Server-wide settings, applied to every connection.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Per-session limits (msize, fids).
    pub session: SessionLimits,
    /// Requests a connection may have in flight before the server stops reading from it.
    pub max_in_flight: usize,
    /// Threads running requests (shared by all connections); 0 picks a default.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            session: SessionLimits::default(),
            max_in_flight: 64,
            workers: 0,
        }
    }
}

/// A 9P server for one backend. Cheap to share; serves any number of connections.
pub struct Server<F: FileSystem> {
    fs: Arc<F>,
    config: ServerConfig,
    workers: Workers,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client closed it.
    Closed,
    /// The server was shut down.
    Shutdown,
    /// The client broke the protocol or the transport failed (the reason).
    Failed(String),
}

impl<F: FileSystem> Server<F> {
    /// A server for `fs`, with its worker threads started.
    ///
    /// # Panics
    /// If the operating system refuses to start threads.
    pub fn new(fs: Arc<F>, config: ServerConfig) -> Arc<Server<F>> {
        let count = if config.workers == 0 {
            crate::workers::default_count()
        } else {
            config.workers
        };
        let workers = Workers::new(count).expect("cannot start worker threads");
        Arc::new(Server {
            fs,
            config,
            workers,
        })
    }

    /// The backend.
    pub fn fs(&self) -> &Arc<F> {
        &self.fs
    }

    /// Serve one connection until the client leaves, it fails, or `shutdown` becomes true.
    pub async fn serve<R: FrameRx, T: FrameTx>(
        self: Arc<Self>,
        channel: Channel<R, T>,
        shutdown: watch::Receiver<bool>,
    ) -> Ended {
        let peer = channel.peer.to_string();
        let span = debug_span!("conn", %peer);
        self.serve_inner(channel, shutdown).instrument(span).await
    }

    /// Serve one connection of a Xen 9pfs device (the channel and ring tasks from
    /// `envoy_transport::xen::xen_channel`) until the session ends, a ring stops, or `stop` is
    /// raised; then stop the rings, so that every mapping is gone when this returns. `Err`
    /// carries the reason the guest broke the protocol (the device is to be disconnected).
    pub async fn serve_xen(
        self: Arc<Self>,
        channel: Channel<XenRx, XenTx>,
        mut rings: XenDevice,
        stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let serving = self.serve(channel, stop);
        tokio::pin!(serving);
        let ended = tokio::select! {
            ended = &mut serving => ended,
            // A ring failed or stopped: the server sees it on its channel and ends too.
            _ = rings.stopped() => serving.await,
        };
        rings.stop().await;
        match ended {
            Ended::Failed(reason) => Err(reason),
            _ => Ok(()),
        }
    }

    async fn serve_inner<R: FrameRx, T: FrameTx>(
        self: Arc<Self>,
        channel: Channel<R, T>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Ended {
        let Channel { mut rx, tx, .. } = channel;
        let pool = BufPool::new(self.config.max_in_flight.min(32));
        let (reply_tx, reply_rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            session: Session::new(self.fs.clone(), self.config.session.clone(), pool.clone()),
            in_flight: Mutex::new(HashMap::new()),
            replies: reply_tx,
        });
        let writer = tokio::spawn(write_replies(tx, reply_rx).in_current_span());
        let slots = Arc::new(Semaphore::new(self.config.max_in_flight));
        let mut proto: Option<Protocol> = None;
        let ended = loop {
            if *shutdown.borrow() {
                break Ended::Shutdown;
            }
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("never closed"),
                _ = shutdown.changed() => break Ended::Shutdown,
            };
            let frame = tokio::select! {
                f = rx.recv() => f,
                _ = shutdown.changed() => break Ended::Shutdown,
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => break Ended::Closed,
                Err(e) => break Ended::Failed(e.to_string()),
            };
            let Some(header) = envoy_protocol::peek_header(&frame) else {
                break Ended::Failed("frame shorter than a 9P header".into());
            };
            let tag = header.tag;
            if header.ty == TVERSION {
                drop(permit);
                // Abort: requests not yet started are dropped, running ones finish.
                conn.cancel_all();
                let all = slots
                    .acquire_many(self.config.max_in_flight as u32)
                    .await
                    .expect("never closed");
                drop(all);
                let msg = match envoy_protocol::decode(frame, Dialect::P9P2000) {
                    Ok((_, Fcall::Tversion(v))) => v,
                    _ => {
                        conn.send(error_reply(
                            tag,
                            Dialect::P9P2000,
                            Errno::EPROTO,
                            Some("malformed Tversion"),
                        ));
                        continue;
                    }
                };
                let msize = rx
                    .medium_max_frame()
                    .map_or(msg.msize, |m| msg.msize.min(m));
                let (negotiated, reply) = conn.session.version(tag, msize, &msg.version);
                debug!(msize = msg.msize, version = %msg.version, ?negotiated, "version");
                proto = negotiated;
                if let Some(p) = proto {
                    rx.set_max_frame(p.msize);
                }
                conn.send(reply);
                continue;
            }
            let Some(p) = proto else {
                conn.send(error_reply(
                    tag,
                    Dialect::P9P2000,
                    Errno::EPROTO,
                    Some("Tversion must come first"),
                ));
                continue;
            };
            let msg = match envoy_protocol::decode(frame, p.dialect) {
                Ok((_, m)) => m,
                Err(e) => {
                    debug!(%e, tag, "malformed request");
                    conn.send(error_reply(
                        tag,
                        p.dialect,
                        Errno::from_raw(e.errno() as i32),
                        Some(&e.to_string()),
                    ));
                    continue;
                }
            };
            if header.ty == TFLUSH {
                let Fcall::Tflush(f) = msg else {
                    unreachable!("decoded by type")
                };
                if let Err(reason) = conn.flush(tag, f.oldtag, p.dialect) {
                    break Ended::Failed(reason);
                }
                continue;
            }
            if !conn.start(tag) {
                break Ended::Failed(format!("tag {tag} reused while in flight"));
            }
            let conn = conn.clone();
            let span = debug_span!("req", tag, ty = header.ty);
            self.workers.run(Box::new(move || {
                let _enter = span.enter();
                let _permit = permit;
                if conn.cancelled(tag) {
                    conn.finish(tag, None, p.dialect);
                    return;
                }
                trace!(request = ?msg);
                let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    conn.session.handle(tag, msg, p)
                }))
                .unwrap_or_else(|_| {
                    warn!(tag, "request handler panicked");
                    error_reply(tag, p.dialect, Errno::EIO, None)
                });
                if tracing::enabled!(tracing::Level::DEBUG) {
                    log_reply(&reply, p.dialect);
                }
                conn.finish(tag, Some(reply), p.dialect);
            }));
        };
        if let Ended::Failed(reason) = &ended {
            warn!(%reason, "closing connection");
            // A broken client gets no more replies: close the sending side now (dropping it
            // shuts the socket down) instead of after the requests still running.
            writer.abort();
        }
        // Let running requests finish (their replies may still be written), then end the writer.
        conn.cancel_all();
        let _ = slots.acquire_many(self.config.max_in_flight as u32).await;
        conn.session.close();
        drop(conn);
        let _ = writer.await;
        ended
    }
}

/// One debug event per reply: its type and, for errors, the errno.
fn log_reply(reply: &Bytes, dialect: Dialect) {
    let Some(h) = envoy_protocol::peek_header(reply) else {
        return;
    };
    if h.ty == envoy_protocol::consts::RLERROR || h.ty == envoy_protocol::consts::RERROR {
        match envoy_protocol::decode(reply.clone(), dialect) {
            Ok((_, Fcall::Rlerror(e))) => debug!(errno = e.ecode, "failed"),
            Ok((_, Fcall::Rerror(e))) => debug!(errno = e.errno, ename = %e.ename, "failed"),
            _ => debug!("failed"),
        }
    } else {
        debug!(reply_type = h.ty, bytes = reply.len(), "done");
    }
}

/// Shared state of one connection.
struct Conn<F: FileSystem> {
    session: Session<F>,
    /// Tags in flight. `std::sync::Mutex`: short critical sections, never across an await.
    in_flight: Mutex<HashMap<u16, InFlight>>,
    replies: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct InFlight {
    /// Flushed (or aborted by Tversion): if not started yet, it never will be.
    cancelled: bool,
    /// Tags of Tflush requests waiting for this request.
    flushes: Vec<u16>,
    /// This entry is itself a Tflush (only holds its tag).
    is_flush: bool,
}

impl<F: FileSystem> Conn<F> {
    fn send(&self, reply: Bytes) {
        // The writer only goes away after every sender is gone.
        let _ = self.replies.send(reply);
    }

    /// Register a request; false if the tag is already in flight.
    fn start(&self, tag: u16) -> bool {
        let mut t = self.in_flight.lock().unwrap();
        if t.contains_key(&tag) {
            return false;
        }
        t.insert(tag, InFlight::default());
        true
    }

    fn cancelled(&self, tag: u16) -> bool {
        self.in_flight
            .lock()
            .unwrap()
            .get(&tag)
            .is_some_and(|e| e.cancelled)
    }

    fn cancel_all(&self) {
        for e in self.in_flight.lock().unwrap().values_mut() {
            e.cancelled = true;
        }
    }

    /// A request is done: queue its reply (if any), then the Rflush of every flush waiting on it.
    fn finish(&self, tag: u16, reply: Option<Bytes>, dialect: Dialect) {
        let mut t = self.in_flight.lock().unwrap();
        let entry = t.remove(&tag).unwrap_or_default();
        if let Some(r) = reply {
            self.send(r);
        }
        for ftag in entry.flushes {
            t.remove(&ftag);
            self.send(encode(ftag, dialect, &Fcall::Rflush(Rflush {})));
        }
    }

    /// Tflush(oldtag) with tag `tag`.
    fn flush(&self, tag: u16, oldtag: u16, dialect: Dialect) -> Result<(), String> {
        let mut t = self.in_flight.lock().unwrap();
        if t.contains_key(&tag) {
            return Err(format!("flush tag {tag} reused while in flight"));
        }
        match t.get_mut(&oldtag) {
            Some(old) if !old.is_flush && oldtag != tag => {
                old.cancelled = true;
                old.flushes.push(tag);
                t.insert(
                    tag,
                    InFlight {
                        is_flush: true,
                        ..Default::default()
                    },
                );
            }
            _ => self.send(encode(tag, dialect, &Fcall::Rflush(Rflush {}))),
        }
        Ok(())
    }
}

/// The writer task: gather queued replies into vectored writes. (Pooled reply buffers go back
/// to their pool when the transport drops them.)
async fn write_replies<T: FrameTx>(mut tx: T, mut replies: mpsc::UnboundedReceiver<Bytes>) {
    let mut batch = Vec::with_capacity(64);
    loop {
        if replies.recv_many(&mut batch, 64).await == 0 {
            break;
        }
        if let Err(e) = tx.send(&mut batch).await {
            debug!(%e, "reply write failed; dropping the rest");
            batch.clear();
            // Keep draining so senders never block on a dead peer (they do not: unbounded), and
            // so the connection task can finish.
            while replies.recv().await.is_some() {}
            break;
        }
    }
    let _ = tx.close().await;
}

/// Accept connections from `listener` and serve each on its own task until `shutdown` becomes
/// true; then stop accepting and wait for the connections to end.
pub async fn serve_listener<F: FileSystem, L: Listener>(
    server: Arc<Server<F>>,
    mut listener: L,
    mut shutdown: watch::Receiver<bool>,
) -> envoy_transport::Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(channel) => {
                    debug!(peer = %channel.peer, "accepted");
                    connections.spawn(server.clone().serve(channel, shutdown.clone()));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(%e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}
