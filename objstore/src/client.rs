//! A connection to one storage service: many requests in flight, each with its own tag.
//!
//! One task reads replies and completes the waiting calls by tag; one task writes request
//! frames, gathering whatever is queued into one send. A [`StorageClient`] is cheap to clone
//! and every clone shares the connection. When the connection fails, every call in flight
//! and every later call fails with [`StoreError::Peer`] naming the peer: callers (the
//! cluster) reconnect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use envoy_transport::{Endpoint, FrameRx, FrameTx};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::local::{ObjectInfo, PutObject, PutOutcome, Record};
use crate::wire::{
    self, About, AdminOp, HEADER_ROOM, HostStats, HostView, MAX_IDS, NOTAG, Reply, Request,
    RequestType,
};
use crate::{ObjectId, Result, StoreError};

/// Requests one connection keeps in flight at most.
const MAX_IN_FLIGHT: usize = 64;

type Waiter = oneshot::Sender<Result<Reply>>;

struct Pending {
    next_tag: u16,
    waiting: HashMap<u16, (RequestType, Waiter)>,
}

struct Inner {
    peer: String,
    msize: u32,
    frames: mpsc::UnboundedSender<Bytes>,
    pending: Mutex<Pending>,
    closed: AtomicBool,
    slots: Semaphore,
}

/// One connection to a storage service (see the module docs).
#[derive(Clone)]
pub struct StorageClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StorageClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageClient")
            .field("peer", &self.inner.peer)
            .field("msize", &self.inner.msize)
            .finish()
    }
}

fn peer_error(peer: &str, message: impl Into<String>) -> StoreError {
    StoreError::Peer {
        peer: peer.to_owned(),
        message: message.into(),
    }
}

impl StorageClient {
    /// Connect to the storage service at `endpoint` and open the dialect.
    pub async fn connect(endpoint: &Endpoint) -> Result<StorageClient> {
        let peer = endpoint.to_string();
        let channel = envoy_transport::connect(endpoint)
            .await
            .map_err(|e| peer_error(&peer, format!("cannot connect: {e}")))?;
        StorageClient::over_channel(channel.rx, channel.tx, peer).await
    }

    /// Open the dialect over an established channel (`peer` names it in errors).
    pub async fn over_channel<R: FrameRx, T: FrameTx>(
        mut rx: R,
        mut tx: T,
        peer: String,
    ) -> Result<StorageClient> {
        // Tversion, by hand: nothing else is in flight yet.
        let mut frames = vec![
            Request::Version {
                msize: wire::MAX_MSIZE,
                version: wire::VERSION.into(),
            }
            .encode(NOTAG),
        ];
        tx.send(&mut frames)
            .await
            .map_err(|e| peer_error(&peer, format!("sending Tversion: {e}")))?;
        let frame = rx
            .recv()
            .await
            .map_err(|e| peer_error(&peer, format!("reading Rversion: {e}")))?
            .ok_or_else(|| peer_error(&peer, "closed the connection at Tversion"))?;
        let (_, reply) = Reply::decode(
            frame,
            RequestType::of(&Request::Version {
                msize: 0,
                version: String::new(),
            }),
        )?;
        let msize = match reply {
            Reply::Version { msize, version } if version == wire::VERSION => msize,
            Reply::Version { version, .. } => {
                return Err(peer_error(
                    &peer,
                    format!("does not speak {} (answered {version:?})", wire::VERSION),
                ));
            }
            Reply::Error { message, .. } => return Err(peer_error(&peer, message)),
            other => return Err(peer_error(&peer, format!("answered {other:?} to Tversion"))),
        };
        if !(wire::MIN_MSIZE..=wire::MAX_MSIZE).contains(&msize) {
            return Err(peer_error(&peer, format!("offered msize {msize}")));
        }
        rx.set_max_frame(msize);
        let (frames_tx, frames_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            peer,
            msize,
            frames: frames_tx,
            pending: Mutex::new(Pending {
                next_tag: 0,
                waiting: HashMap::new(),
            }),
            closed: AtomicBool::new(false),
            slots: Semaphore::new(MAX_IN_FLIGHT),
        });
        tokio::spawn(write_frames(tx, frames_rx, inner.clone()));
        tokio::spawn(read_replies(rx, inner.clone()));
        Ok(StorageClient { inner })
    }

    /// The peer, as named in errors.
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    /// The frame size settled on.
    pub fn msize(&self) -> u32 {
        self.inner.msize
    }

    /// Whether the connection has failed (a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Send `request` and wait for its reply; an `Rerror` becomes the error it stands for.
    pub async fn call(&self, request: Request, about: About<'_>) -> Result<Reply> {
        let reply = self.start(request).await?.await;
        match reply {
            Ok(Ok(Reply::Error {
                code,
                version,
                message,
            })) => Err(wire::error_from_reply(code, version, message, about)),
            Ok(r) => r,
            Err(_) => Err(peer_error(&self.inner.peer, "connection lost")),
        }
    }

    /// Queue `request`; the receiver completes with its reply.
    async fn start(&self, request: Request) -> Result<oneshot::Receiver<Result<Reply>>> {
        let inner = &self.inner;
        let permit = inner
            .slots
            .acquire()
            .await
            .map_err(|_| peer_error(&inner.peer, "connection closed"))?;
        permit.forget(); // given back by the reader when the reply arrives
        let (done, wait) = oneshot::channel();
        let tag = {
            let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            if inner.closed.load(Ordering::Acquire) {
                inner.slots.add_permits(1);
                return Err(peer_error(&inner.peer, "connection lost"));
            }
            let mut tag = p.next_tag;
            while tag == NOTAG || p.waiting.contains_key(&tag) {
                tag = tag.wrapping_add(1);
            }
            p.next_tag = tag.wrapping_add(1);
            p.waiting.insert(tag, (RequestType::of(&request), done));
            tag
        };
        if inner.frames.send(request.encode(tag)).is_err() {
            fail_all(inner, "connection lost");
        }
        Ok(wait)
    }

    /// Store an object (as pieces if it does not fit one frame). `flags`: 0 or
    /// [`wire::REPLICATED`]. Returns the outcome and the copies now held.
    pub async fn put(&self, object: &PutObject, flags: u8) -> Result<(PutOutcome, u8)> {
        let about = About::Object(&object.id);
        let total = object.data.len() as u64;
        let piece = (self.inner.msize - HEADER_ROOM) as usize;
        if object.data.len() <= piece {
            let reply = self
                .call(
                    Request::Put {
                        flags,
                        id: object.id,
                        total,
                        offset: 0,
                        refs: object.refs.clone(),
                        data: object.data.clone(),
                    },
                    about,
                )
                .await?;
            return put_reply(reply, &self.inner.peer);
        }
        // Pieces go out in order on this connection: queue them all, then collect.
        let mut waits = Vec::new();
        let mut offset = 0usize;
        while offset < object.data.len() {
            let end = (offset + piece).min(object.data.len());
            waits.push(
                self.start(Request::Put {
                    flags,
                    id: object.id,
                    total,
                    offset: offset as u64,
                    refs: if offset == 0 {
                        object.refs.clone()
                    } else {
                        Vec::new()
                    },
                    data: object.data.slice(offset..end),
                })
                .await?,
            );
            offset = end;
        }
        let mut last = None;
        for wait in waits {
            let reply = match wait.await {
                Ok(Ok(Reply::Error {
                    code,
                    version,
                    message,
                })) => return Err(wire::error_from_reply(code, version, message, about)),
                Ok(r) => r?,
                Err(_) => return Err(peer_error(&self.inner.peer, "connection lost")),
            };
            last = Some(reply);
        }
        put_reply(
            last.ok_or_else(|| peer_error(&self.inner.peer, "no reply to put"))?,
            &self.inner.peer,
        )
    }

    /// `count` bytes at `offset` of an object, and its size.
    pub async fn get(
        &self,
        id: &ObjectId,
        offset: u64,
        count: u32,
        flags: u8,
    ) -> Result<(u64, Bytes)> {
        let count = count.min(self.inner.msize - HEADER_ROOM);
        match self
            .call(
                Request::Get {
                    flags,
                    id: *id,
                    offset,
                    count,
                },
                About::Object(id),
            )
            .await?
        {
            Reply::Get { total, data } => Ok((total, data)),
            other => Err(unexpected(&self.inner.peer, &other)),
        }
    }

    /// A whole object: the first piece tells its size, the rest are read in parallel.
    pub async fn get_object(&self, id: &ObjectId, flags: u8) -> Result<Bytes> {
        let piece = self.inner.msize - HEADER_ROOM;
        let (total, first) = self.get(id, 0, piece, flags).await?;
        if first.len() as u64 >= total {
            return Ok(first);
        }
        let mut out = bytes::BytesMut::with_capacity(total as usize);
        out.extend_from_slice(&first);
        let mut offsets = Vec::new();
        let mut at = first.len() as u64;
        while at < total {
            offsets.push(at);
            at += u64::from(piece);
        }
        // Queue every piece before waiting for any: they are in flight together.
        let mut waits = Vec::with_capacity(offsets.len());
        for &offset in &offsets {
            let request = Request::Get {
                flags,
                id: *id,
                offset,
                count: piece,
            };
            waits.push((offset, self.start(request).await?));
        }
        for (offset, wait) in waits {
            let reply = wait
                .await
                .map_err(|_| peer_error(&self.inner.peer, "connection lost"))??;
            let (t, data) = match reply {
                Reply::Get { total, data } => (total, data),
                Reply::Error {
                    code,
                    version,
                    message,
                } => {
                    return Err(wire::error_from_reply(
                        code,
                        version,
                        message,
                        About::Object(id),
                    ));
                }
                other => return Err(unexpected(&self.inner.peer, &other)),
            };
            if t != total || out.len() as u64 != offset {
                return Err(peer_error(
                    &self.inner.peer,
                    format!("object {id} changed size while being read"),
                ));
            }
            out.extend_from_slice(&data);
        }
        if out.len() as u64 != total {
            return Err(peer_error(&self.inner.peer, format!("short read of {id}")));
        }
        Ok(out.freeze())
    }

    /// Which of `ids` the host stores.
    pub async fn has(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IDS) {
            match self
                .call(
                    Request::Has {
                        ids: chunk.to_vec(),
                    },
                    About::Nothing,
                )
                .await?
            {
                Reply::Has { present } if present.len() == chunk.len() => out.extend(present),
                other => return Err(unexpected(&self.inner.peer, &other)),
            }
        }
        Ok(out)
    }

    /// A page of the host's objects after `after`.
    pub async fn list(&self, after: Option<ObjectId>, max: u32) -> Result<(Vec<ObjectInfo>, bool)> {
        match self
            .call(Request::List { after, max }, About::Nothing)
            .await?
        {
            Reply::List { objects, more } => Ok((objects, more)),
            other => Err(unexpected(&self.inner.peer, &other)),
        }
    }

    /// Every object the host stores (all pages).
    pub async fn list_all(&self) -> Result<Vec<ObjectInfo>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = self.list(after, 8192).await?;
            after = page.last().map(|o| o.id);
            all.extend(page);
            if !more || after.is_none() {
                return Ok(all);
            }
        }
    }

    /// The references of `ids` as stored on the host.
    pub async fn refs(&self, ids: &[ObjectId]) -> Result<Vec<Vec<ObjectId>>> {
        let mut out = Vec::with_capacity(ids.len());
        // Keep each reply well inside a frame: up to 32 ids per entry is 1 KiB, so 1024 entries.
        for chunk in ids.chunks(1024) {
            match self
                .call(
                    Request::Refs {
                        ids: chunk.to_vec(),
                    },
                    About::Nothing,
                )
                .await?
            {
                Reply::Refs { refs } if refs.len() == chunk.len() => out.extend(refs),
                other => return Err(unexpected(&self.inner.peer, &other)),
            }
        }
        Ok(out)
    }

    /// GC's sweep on the host: returns how many were dropped.
    pub async fn delete(&self, ids: &[ObjectId], cutoff: u64) -> Result<u64> {
        let mut deleted = 0;
        for chunk in ids.chunks(MAX_IDS) {
            match self
                .call(
                    Request::Delete {
                        cutoff,
                        ids: chunk.to_vec(),
                    },
                    About::Nothing,
                )
                .await?
            {
                Reply::Delete { deleted: n } => deleted += n,
                other => return Err(unexpected(&self.inner.peer, &other)),
            }
        }
        Ok(deleted)
    }

    /// A record: with [`REPLICATED`](crate::wire::REPLICATED) the cluster's newest live
    /// version, without it the host's own copy (a tombstone included).
    pub async fn record(&self, name: &str, flags: u8) -> Result<Option<Record>> {
        match self
            .call(
                Request::Record {
                    flags,
                    name: name.into(),
                },
                About::Record(name),
            )
            .await?
        {
            Reply::Record { record } => Ok(record),
            other => Err(unexpected(&self.inner.peer, &other)),
        }
    }

    /// Compare-and-set a record; returns the new version.
    pub async fn cas(
        &self,
        name: &str,
        expected: u64,
        value: Bytes,
        refs: Vec<ObjectId>,
        flags: u8,
    ) -> Result<u64> {
        match self
            .call(
                Request::Cas {
                    flags,
                    name: name.into(),
                    expected,
                    refs,
                    value,
                },
                About::Record(name),
            )
            .await
        {
            Ok(Reply::Cas { version }) => Ok(version),
            Ok(other) => Err(unexpected(&self.inner.peer, &other)),
            Err(e) => Err(with_expected(e, expected)),
        }
    }

    /// Delete a record at version `expected` (compare-and-set); returns its tombstone's
    /// version.
    pub async fn delete_record(&self, name: &str, expected: u64, flags: u8) -> Result<u64> {
        match self
            .call(
                Request::DeleteRecord {
                    flags,
                    name: name.into(),
                    expected,
                },
                About::Record(name),
            )
            .await
        {
            Ok(Reply::DeleteRecord { version }) => Ok(version),
            Ok(other) => Err(unexpected(&self.inner.peer, &other)),
            Err(e) => Err(with_expected(e, expected)),
        }
    }

    /// Store a record on the host if newer than its copy.
    pub async fn store_record(&self, name: &str, record: Record) -> Result<bool> {
        match self
            .call(
                Request::StoreRecord {
                    name: name.into(),
                    record,
                },
                About::Record(name),
            )
            .await?
        {
            Reply::StoreRecord { stored } => Ok(stored),
            other => Err(unexpected(&self.inner.peer, &other)),
        }
    }

    /// Every record the host stores, tombstones included.
    pub async fn records(&self) -> Result<Vec<(String, Record)>> {
        let mut all: Vec<(String, Record)> = Vec::new();
        loop {
            let after = all.last().map(|(n, _)| n.clone()).unwrap_or_default();
            match self
                .call(Request::Records { after, max: 1024 }, About::Nothing)
                .await?
            {
                Reply::Records { records, more } => {
                    let empty = records.is_empty();
                    all.extend(records);
                    if !more || empty {
                        return Ok(all);
                    }
                }
                other => return Err(unexpected(&self.inner.peer, &other)),
            }
        }
    }

    /// The host's usage and maintenance progress.
    pub async fn stats(&self) -> Result<HostStats> {
        match self.call(Request::Stats, About::Nothing).await? {
            Reply::Stats(s) => Ok(s),
            other => Err(unexpected(&self.inner.peer, &other)),
        }
    }

    /// The cluster as the host sees it: replicas per object and every host's view.
    pub async fn cluster(&self) -> Result<(u8, Vec<HostView>)> {
        match self.call(Request::Cluster, About::Nothing).await? {
            Reply::Cluster { replicas, hosts } => Ok((replicas, hosts)),
            other => Err(unexpected(&self.inner.peer, &other)),
        }
    }

    /// Start maintenance work on the host.
    pub async fn admin(&self, op: AdminOp, arg: u64) -> Result<String> {
        match self
            .call(Request::Admin { op, arg }, About::Nothing)
            .await?
        {
            Reply::Admin { message } => Ok(message),
            other => Err(unexpected(&self.inner.peer, &other)),
        }
    }

    /// The live hosts holding a copy of `id`.
    pub async fn replicas(&self, id: &ObjectId) -> Result<Vec<String>> {
        match self
            .call(Request::Replicas { id: *id }, About::Object(id))
            .await?
        {
            Reply::Replicas { hosts } => Ok(hosts),
            other => Err(unexpected(&self.inner.peer, &other)),
        }
    }
}

fn put_reply(reply: Reply, peer: &str) -> Result<(PutOutcome, u8)> {
    match reply {
        Reply::Put { outcome, copies } => Ok((outcome, copies)),
        other => Err(unexpected(peer, &other)),
    }
}

/// A conflict as the caller asked: the wire's Rerror carries the record's current version,
/// not the version the caller expected.
fn with_expected(e: StoreError, expected: u64) -> StoreError {
    match e {
        StoreError::Conflict { name, current, .. } => StoreError::Conflict {
            name,
            expected,
            current,
        },
        e => e,
    }
}

fn unexpected(peer: &str, reply: &Reply) -> StoreError {
    StoreError::Protocol(format!("{peer} sent an unexpected reply: {reply:?}"))
}

/// Fail every waiting call and refuse new ones.
fn fail_all(inner: &Inner, why: &str) {
    inner.closed.store(true, Ordering::Release);
    let waiting = {
        let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut p.waiting)
    };
    for (_, (_, done)) in waiting {
        let _ = done.send(Err(peer_error(&inner.peer, why)));
    }
    inner.slots.close();
}

async fn write_frames<T: FrameTx>(
    mut tx: T,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    inner: Arc<Inner>,
) {
    let mut batch = Vec::new();
    while let Some(frame) = frames.recv().await {
        batch.push(frame);
        while batch.len() < 64 {
            match frames.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        if let Err(e) = tx.send(&mut batch).await {
            fail_all(&inner, &format!("sending: {e}"));
            return;
        }
    }
    let _ = tx.close().await;
}

async fn read_replies<R: FrameRx>(mut rx: R, inner: Arc<Inner>) {
    let why = loop {
        let frame = match rx.recv().await {
            Ok(Some(f)) => f,
            Ok(None) => break "closed the connection".to_owned(),
            Err(e) => break format!("receiving: {e}"),
        };
        let Some(tag) = wire::peek_tag(&frame) else {
            break "sent a runt frame".to_owned();
        };
        let waiter = {
            let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.waiting.remove(&tag)
        };
        let Some((ty, done)) = waiter else {
            break format!("answered tag {tag}, which is not in flight");
        };
        inner.slots.add_permits(1);
        match Reply::decode(frame, ty) {
            Ok((_, reply)) => {
                let _ = done.send(Ok(reply));
            }
            Err(e) => {
                let _ = done.send(Err(e));
                break "sent a malformed reply".to_owned();
            }
        }
    };
    fail_all(&inner, &why);
}
