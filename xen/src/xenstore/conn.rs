//! One connection to xenstored: pipelined requests matched to replies by `req_id`, and watch
//! events routed to their watches by token.
//!
//! At most [`MAX_IN_FLIGHT`] requests are in flight; more callers wait for a slot. A writer task
//! owns the write side and sends messages in submission order (batched on sockets, one per
//! write on the device). A reader task owns the read side: it reads whole messages
//! (refusing any `len` over 4096 before allocating), hands each reply to the request waiting on
//! that `req_id`, and pushes each watch event into its watch's bounded queue without ever
//! waiting for the watcher, so a slow watcher cannot stall replies. Anything that breaks the
//! framing (an oversized length, a reply to no request, a malformed event) or the end of the
//! stream closes the connection: every request in flight, and every later one, fails with
//! [`XsError::Closed`] carrying the reason. The routing state sits under one short-held mutex,
//! never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, BufReader};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::error::XsError;
use super::transport::{Reader, Writer};
use super::watch::WatchQueue;
use super::wire::{self, HEADER_LEN, Header, MsgType, PAYLOAD_MAX};

/// Bytes the socket writer gathers into one write when several messages are queued.
const WRITE_BATCH: usize = 64 * 1024;
/// Requests one connection keeps in flight; further callers wait for a slot. xenstored answers
/// a connection's requests one at a time anyway; this bounds the queued memory (4 KiB each).
pub const MAX_IN_FLIGHT: usize = 1024;

/// A reply as received.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The raw message type.
    pub ty: u32,
    /// The payload (at most 4096 bytes).
    pub payload: Vec<u8>,
}

/// Who is waiting for a reply.
enum Pending {
    /// A caller; if it went away, the reply is dropped (but see `TransactionStart`).
    Caller(oneshot::Sender<Reply>),
    /// A fire-and-forget request (unwatch, abort from a destructor): the reply is discarded.
    Ignore,
}

struct State {
    pending: HashMap<u32, Pending>,
    watches: HashMap<String, Arc<WatchQueue>>,
    next_req_id: u32,
    next_token: u64,
    closed: Option<Arc<str>>,
}

impl State {
    /// Give `waiter` a request id; `None` once closed. Skips 0 (the id of watch events) and ids
    /// still in flight after a wrap.
    fn register(&mut self, waiter: Pending) -> Option<u32> {
        if self.closed.is_some() {
            return None;
        }
        let mut id = self.next_req_id;
        while id == 0 || self.pending.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_req_id = id.wrapping_add(1);
        self.pending.insert(id, waiter);
        Some(id)
    }
}

/// State shared by the handle, the reader task and the writer task.
struct Shared {
    state: Mutex<State>,
    /// Flips to true once the connection is closed (stops the writer).
    closed_tx: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps inconsistent (each critical
        // section is a single insert/remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Close once: remember why, fail every waiting request (dropping its sender), end every
    /// watch's stream, stop the writer.
    fn close(&self, reason: &str) {
        let (pending, watches) = {
            let mut st = self.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(Arc::from(reason));
            (
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.watches),
            )
        };
        drop(pending);
        for q in watches.values() {
            q.close();
        }
        self.closed_tx.send_replace(true);
    }
}

/// A live connection. Dropping it stops both tasks and closes the descriptor.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    reader: JoinHandle<()>,
    watch_capacity: usize,
    in_flight: Semaphore,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.close("client dropped");
        self.reader.abort();
    }
}

impl Conn {
    /// Start the reader and writer tasks (needs a tokio runtime).
    pub(crate) fn start(reader: Reader, writer: Writer, watch_capacity: usize) -> Conn {
        let (closed_tx, closed_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: HashMap::new(),
                watches: HashMap::new(),
                next_req_id: 1,
                next_token: 1,
                closed: None,
            }),
            closed_tx,
        });
        let (out, out_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(shared.clone(), writer, out_rx, closed_rx));
        let reader = tokio::spawn(read_loop(shared.clone(), reader, out.clone()));
        Conn {
            shared,
            out,
            reader,
            watch_capacity,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// Why the connection closed, if it has.
    pub(crate) fn closed_reason(&self) -> Option<Arc<str>> {
        self.shared.lock().closed.clone()
    }

    fn closed_error(&self, op: &'static str, path: &str) -> XsError {
        let reason = self
            .closed_reason()
            .unwrap_or_else(|| Arc::from("writer stopped"));
        XsError::Closed {
            op,
            path: super::error::shown(path),
            reason,
        }
    }

    /// Send one request and wait for its reply. `ERROR` replies become [`XsError::Refused`];
    /// a reply of another type than the request's is [`XsError::BadReply`].
    pub(crate) async fn call(
        &self,
        op: &'static str,
        path: &str,
        ty: MsgType,
        tx_id: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, XsError> {
        // The semaphore is never closed, so acquiring only waits.
        let _slot = self.in_flight.acquire().await;
        let (tx, rx) = oneshot::channel();
        self.submit(ty, tx_id, payload, Pending::Caller(tx))
            .map_err(|()| self.closed_error(op, path))?;
        let reply = rx.await.map_err(|_| self.closed_error(op, path))?;
        check_reply(op, path, ty, reply)
    }

    /// Send a request whose reply nobody waits for (from destructors). Does nothing once closed.
    pub(crate) fn send_and_forget(&self, ty: MsgType, tx_id: u32, payload: &[u8]) {
        let _ = self.submit(ty, tx_id, payload, Pending::Ignore);
    }

    fn submit(&self, ty: MsgType, tx_id: u32, payload: &[u8], waiter: Pending) -> Result<(), ()> {
        let req_id = self.shared.lock().register(waiter).ok_or(())?;
        let msg = wire::encode_message(ty, req_id, tx_id, payload);
        if self.out.send(msg).is_err() {
            self.shared.lock().pending.remove(&req_id);
            return Err(());
        }
        Ok(())
    }

    /// Register a watch queue under a fresh token (before the `WATCH` request goes out, so the
    /// initial event cannot arrive unrouted). `None` once closed.
    pub(crate) fn add_watch(&self) -> Option<(String, Arc<WatchQueue>)> {
        let mut st = self.shared.lock();
        if st.closed.is_some() {
            return None;
        }
        let token = format!("envoy-{}", st.next_token);
        st.next_token += 1;
        let q = Arc::new(WatchQueue::new(self.watch_capacity));
        st.watches.insert(token.clone(), q.clone());
        Some((token, q))
    }

    /// Stop routing events for `token` (later events for it are ignored).
    pub(crate) fn remove_watch(&self, token: &str) {
        self.shared.lock().watches.remove(token);
    }
}

/// Turn a raw reply into the payload or an error.
fn check_reply(
    op: &'static str,
    path: &str,
    ty: MsgType,
    reply: Reply,
) -> Result<Vec<u8>, XsError> {
    if reply.ty == MsgType::Error as u32 {
        return Err(match wire::parse_error(&reply.payload) {
            Some((errno, name)) => XsError::Refused {
                op,
                path: super::error::shown(path),
                errno,
                name,
            },
            None => XsError::BadReply {
                op,
                path: super::error::shown(path),
                detail: format!(
                    "unknown error {:?}",
                    String::from_utf8_lossy(&reply.payload[..reply.payload.len().min(64)])
                ),
            },
        });
    }
    if reply.ty != ty as u32 {
        return Err(XsError::BadReply {
            op,
            path: super::error::shown(path),
            detail: format!("reply type {} to a request of type {}", reply.ty, ty as u32),
        });
    }
    Ok(reply.payload)
}

async fn write_loop(
    shared: Arc<Shared>,
    mut writer: Writer,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    mut closed: watch::Receiver<bool>,
) {
    let mut batch = Vec::new();
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = closed.wait_for(|c| *c) => return,
        };
        let result = if writer.batches() {
            batch.clear();
            batch.extend_from_slice(&msg);
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.extend_from_slice(&m),
                    Err(_) => break,
                }
            }
            writer.write_all(&batch).await
        } else {
            writer.write_all(&msg).await
        };
        if let Err(e) = result {
            shared.close(&format!("write to xenstored failed: {e}"));
            return;
        }
    }
}

async fn read_loop(shared: Arc<Shared>, reader: Reader, out: mpsc::UnboundedSender<Vec<u8>>) {
    let reason = read_messages(&shared, reader, &out).await;
    shared.close(&reason);
}

/// Read and dispatch until the stream ends or breaks the protocol; returns why it stopped.
async fn read_messages(
    shared: &Shared,
    reader: Reader,
    out: &mpsc::UnboundedSender<Vec<u8>>,
) -> String {
    let mut reader = BufReader::with_capacity(2 * (HEADER_LEN + PAYLOAD_MAX), reader);
    let mut hdr = [0u8; HEADER_LEN];
    loop {
        // End of stream at a message boundary is a plain close; inside one it is a cut reply.
        match reader.read(&mut hdr).await {
            Ok(0) => return "xenstored closed the connection".into(),
            Ok(n) if n < HEADER_LEN => {
                if let Err(e) = reader.read_exact(&mut hdr[n..]).await {
                    return cut_short("header", e);
                }
            }
            Ok(_) => {}
            Err(e) => return format!("read from xenstored failed: {e}"),
        }
        let h = Header::decode(&hdr);
        if h.len as usize > PAYLOAD_MAX {
            return format!(
                "protocol error: message (type {}, req_id {}) claims {} payload bytes, the limit is {PAYLOAD_MAX}",
                h.ty, h.req_id, h.len
            );
        }
        let mut payload = vec![0u8; h.len as usize];
        if let Err(e) = reader.read_exact(&mut payload).await {
            return cut_short("payload", e);
        }
        if h.ty == MsgType::WatchEvent as u32 {
            let Some((path, token)) = wire::parse_watch_event(&payload) else {
                return "protocol error: malformed watch event".into();
            };
            let queue = {
                let st = shared.lock();
                std::str::from_utf8(token)
                    .ok()
                    .and_then(|t| st.watches.get(t).cloned())
            };
            // Unknown tokens are events for a watch just dropped (its UNWATCH may still be in
            // flight): ignored.
            if let Some(q) = queue {
                q.push(String::from_utf8_lossy(path).into_owned());
            }
            continue;
        }
        let waiter = shared.lock().pending.remove(&h.req_id);
        match waiter {
            None => {
                return format!(
                    "protocol error: reply (type {}) for unknown request id {}",
                    h.ty, h.req_id
                );
            }
            Some(Pending::Ignore) => {}
            Some(Pending::Caller(tx)) => {
                let ty = h.ty;
                if let Err(reply) = tx.send(Reply { ty, payload }) {
                    // The caller gave up. A transaction it started would otherwise stay open
                    // on xenstored until the connection ends: abort it.
                    abort_orphan_transaction(shared, out, reply);
                }
            }
        }
    }
}

fn cut_short(what: &str, e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        format!("xenstored closed the connection in the middle of a message {what}")
    } else {
        format!("read from xenstored failed: {e}")
    }
}

fn abort_orphan_transaction(shared: &Shared, out: &mpsc::UnboundedSender<Vec<u8>>, reply: Reply) {
    if reply.ty != MsgType::TransactionStart as u32 {
        return;
    }
    let Some(tx_id) = std::str::from_utf8(wire::reply_string(&reply.payload))
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    else {
        return;
    };
    let Some(req_id) = shared.lock().register(Pending::Ignore) else {
        return;
    };
    let _ = out.send(wire::encode_message(
        MsgType::TransactionEnd,
        req_id,
        tx_id,
        b"F\0",
    ));
}
