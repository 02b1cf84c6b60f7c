//! Frames over a Xen 9pfs device's shared rings.
//!
//! A device has several rings (Linux uses two, and picks `tag % num_rings` for each request);
//! each has its own event channel. One tokio task per ring owns the [`Ring`] and its event
//! channel: it takes whole requests out of the `out` ring, remembers which ring each tag came
//! in on, and writes each reply whole into the `in` ring of that ring, holding replies back
//! (in order) while the guest has not made room. Requests from all rings meet in one bounded
//! queue read by [`XenRx`]; [`XenTx`] routes replies to the ring tasks. Many requests are in
//! flight per ring, unlike QEMU's and xen-9pfsd's backends, which handle one at a time.
//!
//! Backpressure runs both ways: when the server stops taking requests (its in-flight limit),
//! the ring tasks leave requests in the rings, so the guest waits for space; when the guest
//! stops consuming replies, they queue in the ring task (bounded by the server's in-flight
//! limit, since each reply answers a request the server took).
//!
//! Replies on different rings are independent, except for two that promise something about
//! the others: an Rflush says the flushed request's reply (if any) came first, and an Rversion
//! that every earlier reply did. [`XenTx`] therefore publishes those only once every reply it
//! handed to another ring earlier is in that ring.
//!
//! A hostile guest (indexes claiming more than the ring holds, a size field outside
//! `7..=msize` or larger than the ring) ends the channel: [`XenRx::recv`] returns the error,
//! the server logs it and closes, and dropping the channel's halves stops every ring task,
//! which drops (unmaps, unbinds) the rings and event channels.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use envoy_xen::doorbell::Doorbell;
use envoy_xen::evtchn::EventChannel;
use envoy_xen::ring::{Ring, RingMemory};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::frame::{Channel, DEFAULT_MAX_FRAME, FrameRx, FrameTx, Peer};
use crate::{Result, TransportError};

/// Message types of the replies that order other rings' replies (9P: Tflush + 1, Tversion + 1).
const RFLUSH: u8 = 109;
const RVERSION: u8 = 101;

/// Requests taken out of the rings and not yet received by the server, for all rings together.
const REQUEST_QUEUE: usize = 64;
/// Most rings a device may have (the ring index is stored in a byte per tag).
pub const MAX_RINGS: usize = 64;

/// How the ring tasks take requests.
#[derive(Clone, Copy, Debug, Default)]
pub struct XenOptions {
    /// Take the next request from a ring only after the reply to the previous one is written,
    /// as QEMU's and xen-9pfsd's backends do. For comparisons only (benchmarks): it defeats the
    /// point of tags, and a request flushed from another ring would stall its ring.
    pub one_request_per_ring: bool,
}

/// One ring of a device and its event channel, ready to serve.
pub struct XenRing<M: RingMemory, E: EventChannel> {
    /// The mapped ring.
    pub ring: Ring<M>,
    /// Its bound event channel.
    pub events: E,
}

/// Which ring each tag's request came in on (a byte per tag, so no lock on the data path).
struct TagRings(Box<[AtomicU8]>);

impl TagRings {
    fn new() -> TagRings {
        TagRings((0..=u16::MAX as usize).map(|_| AtomicU8::new(0)).collect())
    }

    fn set(&self, tag: u16, ring: usize) {
        self.0[tag as usize].store(ring as u8, Ordering::Relaxed);
    }

    fn get(&self, tag: u16) -> usize {
        self.0[tag as usize].load(Ordering::Relaxed) as usize
    }
}

/// The receiving half of a Xen device channel: requests from all its rings.
pub struct XenRx {
    requests: mpsc::Receiver<Result<Bytes>>,
    max_frame: Arc<AtomicU32>,
    medium_max: u32,
}

/// The ring tasks of a device being served. They end by themselves when the server drops the
/// receiving half or a ring fails; [`XenDevice::stop`] ends them at once (the guest is going
/// away), and dropping this handle does too. Each task owns its ring and event channel, so
/// once they have ended every mapping is gone and every port unbound.
pub struct XenDevice {
    tasks: JoinSet<()>,
}

impl XenDevice {
    /// Stop every ring task and wait until their rings are unmapped.
    pub async fn stop(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Wait until every ring task has ended by itself.
    pub async fn stopped(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The sending half: routes each reply to the ring its request came in on.
pub struct XenTx {
    rings: Vec<mpsc::UnboundedSender<Bytes>>,
    tags: Arc<TagRings>,
    /// Replies handed to each ring so far.
    sent: Vec<u64>,
    published: Arc<Published>,
}

/// How many replies each ring task has written into its ring (`u64::MAX` once it stopped),
/// and a wakeup for a sender waiting on them.
struct Published {
    counts: Box<[AtomicU64]>,
    progress: Notify,
}

impl Published {
    fn advance(&self, ring: usize, to: u64) {
        self.counts[ring].store(to, Ordering::Release);
        self.progress.notify_waiters();
    }

    /// Wait until every ring but `except` has written the replies `sent` counts.
    async fn wait_for(&self, sent: &[u64], except: usize) {
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let behind = sent
                .iter()
                .enumerate()
                .any(|(r, &n)| r != except && self.counts[r].load(Ordering::Acquire) < n);
            if !behind {
                return;
            }
            progress.await;
        }
    }
}

impl std::fmt::Debug for XenRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenRx").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for XenTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenTx")
            .field("rings", &self.rings.len())
            .finish_non_exhaustive()
    }
}

/// Serve `rings` (at least one, at most [`MAX_RINGS`]) as one channel to `peer`. Spawns one
/// task per ring, so it must be called inside a tokio runtime. The rings stay mapped until
/// their tasks end (see [`XenDevice`]).
pub fn xen_channel<M, E>(
    rings: Vec<XenRing<M, E>>,
    peer: Peer,
    options: XenOptions,
) -> Result<(Channel<XenRx, XenTx>, XenDevice)>
where
    M: RingMemory + 'static,
    E: EventChannel + 'static,
{
    if rings.is_empty() || rings.len() > MAX_RINGS {
        return Err(TransportError::BadEndpoint(format!(
            "a Xen device needs 1..={MAX_RINGS} rings, not {}",
            rings.len()
        )));
    }
    // A reply must fit the ring whole, so no frame may exceed the smallest ring.
    let medium_max = rings
        .iter()
        .map(|r| r.ring.size())
        .min()
        .unwrap_or(0)
        .min(u32::MAX as usize) as u32;
    let max_frame = Arc::new(AtomicU32::new(DEFAULT_MAX_FRAME.min(medium_max)));
    let tags = Arc::new(TagRings::new());
    let published = Arc::new(Published {
        counts: (0..rings.len()).map(|_| AtomicU64::new(0)).collect(),
        progress: Notify::new(),
    });
    let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE);
    let mut senders = Vec::with_capacity(rings.len());
    let mut tasks = JoinSet::new();
    for (index, ring) in rings.into_iter().enumerate() {
        let (reply_tx, reply_rx) = mpsc::unbounded_channel();
        senders.push(reply_tx);
        let task = RingTask {
            index,
            ring: ring.ring,
            events: ring.events,
            requests: req_tx.clone(),
            replies: reply_rx,
            tags: tags.clone(),
            published: published.clone(),
            max_frame: max_frame.clone(),
            one_at_a_time: options.one_request_per_ring,
        };
        let span = tracing::debug_span!("ring", index);
        tasks.spawn(tracing::Instrument::instrument(task.run(), span));
    }
    let channel = Channel {
        rx: XenRx {
            requests: req_rx,
            max_frame,
            medium_max,
        },
        tx: XenTx {
            sent: vec![0; senders.len()],
            rings: senders,
            tags,
            published,
        },
        peer,
    };
    Ok((channel, XenDevice { tasks }))
}

impl FrameRx for XenRx {
    async fn recv(&mut self) -> Result<Option<Bytes>> {
        self.requests.recv().await.transpose()
    }

    fn set_max_frame(&mut self, max: u32) {
        self.max_frame
            .store(max.min(self.medium_max), Ordering::Relaxed);
    }

    fn medium_max_frame(&self) -> Option<u32> {
        Some(self.medium_max)
    }
}

impl FrameTx for XenTx {
    async fn send(&mut self, frames: &mut Vec<Bytes>) -> Result<()> {
        for frame in frames.drain(..) {
            let tag = u16::from_le_bytes([
                *frame.get(5).unwrap_or(&0xff),
                *frame.get(6).unwrap_or(&0xff),
            ]);
            let ring = self.tags.get(tag).min(self.rings.len() - 1);
            if matches!(frame.get(4), Some(&RFLUSH | &RVERSION)) {
                self.published.wait_for(&self.sent, ring).await;
            }
            self.sent[ring] += 1;
            if self.rings[ring].send(frame).is_err() {
                return Err(TransportError::Io(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    format!("ring {ring} of the Xen device has stopped"),
                )));
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        self.rings.clear();
        Ok(())
    }
}

/// One ring's pump between the guest and the channel.
struct RingTask<M: RingMemory, E: EventChannel> {
    index: usize,
    ring: Ring<M>,
    events: E,
    requests: mpsc::Sender<Result<Bytes>>,
    replies: mpsc::UnboundedReceiver<Bytes>,
    tags: Arc<TagRings>,
    published: Arc<Published>,
    max_frame: Arc<AtomicU32>,
    one_at_a_time: bool,
}

impl<M: RingMemory, E: EventChannel> RingTask<M, E> {
    async fn run(mut self) {
        let result = match Doorbell::new(&self.events) {
            Ok(bell) => self.pump(&bell).await,
            Err(e) => Err(e.into()),
        };
        // Nothing more will be written here: nobody may wait for it.
        self.published.advance(self.index, u64::MAX);
        if let Err(e) = result {
            tracing::debug!(%e, "ring stopped");
            // Tell the server why (it may already be gone).
            let _ = self.requests.try_send(Err(e));
        }
    }

    async fn pump(&mut self, bell: &Doorbell) -> Result<()> {
        // Replies that did not fit yet, in order.
        let mut held: std::collections::VecDeque<Bytes> = Default::default();
        // Requests taken and not yet answered (only tracked for `one_at_a_time`).
        let mut unanswered = 0usize;
        let mut written = 0u64;
        // The guest may have rung before the task started.
        let mut doorbell = true;
        loop {
            // Consume the doorbell before looking, so a ring after this point is not lost. Only
            // when it rang: a wake for replies leaves it alone (on real Xen an ack reads
            // /dev/xen/evtchn, a syscall per reply for nothing); a ring that came meanwhile keeps
            // the descriptor readable, so the select below sees it.
            if std::mem::take(&mut doorbell) {
                self.events.ack()?;
            }
            let mut rang = false;
            while let Ok(reply) = self.replies.try_recv() {
                held.push_back(reply);
            }
            while let Some(reply) = held.front() {
                if !self.ring.write_response(reply)? {
                    break;
                }
                held.pop_front();
                unanswered = unanswered.saturating_sub(1);
                written += 1;
                rang = true;
            }
            if rang {
                self.published.advance(self.index, written);
            }
            let mut queue_full = false;
            while !(self.one_at_a_time && unanswered > 0) {
                let Ok(slot) = self.requests.try_reserve() else {
                    queue_full = true;
                    break;
                };
                let max = self.max_frame.load(Ordering::Relaxed);
                match self.ring.read_request(max)? {
                    Some(frame) => {
                        self.tags
                            .set(u16::from_le_bytes([frame[5], frame[6]]), self.index);
                        slot.send(Ok(frame));
                        unanswered += 1;
                        // Room was made in `out`: a guest waiting for it needs the doorbell.
                        rang = true;
                    }
                    None => break,
                }
            }
            if rang {
                self.events.notify()?;
            }
            tokio::select! {
                rung = bell.rung() => {
                    rung?;
                    doorbell = true;
                }
                reply = self.replies.recv() => match reply {
                    Some(reply) => held.push_back(reply),
                    // The sending half is gone: nothing more will be answered.
                    None => return Ok(()),
                },
                slot = self.requests.reserve(), if queue_full => {
                    // The server took requests: there is room again.
                    drop(slot.map_err(|_| closed())?);
                }
                _ = self.requests.closed() => return Ok(()),
            }
        }
    }
}

fn closed() -> TransportError {
    TransportError::Io(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the server stopped reading the Xen device",
    ))
}

/// A whole simulated device for tests and benchmarks: the guest side set up like Linux
/// (`rings` rings of `order`, tag % rings), the backend side mapped through the simulated
/// grant table and served by [`xen_channel`], and a byte stream on which a 9P client talks
/// to the guest side. Keep the [`LinuxFrontend`](envoy_xen::sim::linux::LinuxFrontend) alive
/// as long as the stream is used.
pub struct SimDevice {
    /// The backend's channel (hand it to the server).
    pub channel: Channel<XenRx, XenTx>,
    /// The backend's ring tasks.
    pub device: XenDevice,
    /// The client's end.
    pub stream: tokio::io::DuplexStream,
    /// The guest model.
    pub frontend: envoy_xen::sim::linux::LinuxFrontend,
}

impl SimDevice {
    /// Set up a device of guest `domid` on the simulated host `(grants, events)`.
    pub fn new(
        grants: &envoy_xen::sim::SimGrantTable,
        events: &envoy_xen::sim::SimEventTable,
        domid: u16,
        rings: usize,
        order: u32,
        options: XenOptions,
    ) -> Result<SimDevice> {
        use envoy_xen::evtchn::EventChannels;
        let guest: Vec<_> = (0..rings)
            .map(|_| envoy_xen::sim::SimFrontend::new(grants, events, domid, order))
            .collect();
        let mut backend = Vec::with_capacity(rings);
        for fe in &guest {
            let ring = envoy_xen::ring::map_ring(grants, domid, fe.intf_ref(), order)
                .map_err(|e| TransportError::Io(std::io::Error::other(e.to_string())))?;
            let events = events
                .bind_interdomain(domid, fe.port())
                .map_err(std::io::Error::from)?;
            backend.push(XenRing { ring, events });
        }
        let (channel, device) = xen_channel(backend, Peer::Xen { domid, devid: 0 }, options)?;
        let max = envoy_xen::ring::ring_size(order) as u32;
        let (stream, frontend) = envoy_xen::sim::linux::LinuxFrontend::spawn(guest, max)?;
        Ok(SimDevice {
            channel,
            device,
            stream,
            frontend,
        })
    }

    /// Run the session `serve` makes of the backend channel on its own task, supervised the
    /// way a real device is: when the server lets go of the channel (session over, or the
    /// guest broke the protocol) the rings stop and the guest model goes away, so the client
    /// sees its stream end; when the client leaves, the rings stop and so does the session.
    /// Returns the client's stream.
    pub fn spawn<F>(self, serve: impl FnOnce(Channel<XenRx, XenTx>) -> F) -> tokio::io::DuplexStream
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send,
    {
        let SimDevice {
            channel,
            mut device,
            stream,
            mut frontend,
        } = self;
        let serving = tokio::spawn(serve(channel));
        tokio::spawn(async move {
            tokio::select! {
                _ = device.stopped() => {}
                _ = frontend.join() => device.stop().await,
            }
            drop(frontend);
            let _ = serving.await;
        });
        stream
    }
}
