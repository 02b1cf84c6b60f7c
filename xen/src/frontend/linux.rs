//! A model of Linux's 9pfs frontend (`net/9p/trans_xen.c`) over [`FrontendRing`]s, so that a
//! 9P client can drive a backend through shared rings: simulated ones in tests without Xen,
//! real ones (gntalloc, evtchn) in `envoy-xen-frontend`.
//!
//! The client speaks 9P over a byte stream ([`LinuxFrontend::spawn`] returns its end). Like
//! Linux, the model puts each request whole into ring `tag % num_rings` (waiting while the
//! ring has no room for all of it), rings the backend after publishing, and on each event
//! takes responses once their 7-byte header is visible — then reads `size` bytes **without
//! re-checking** that they were all published, exactly as `p9_xen_response` does. A backend
//! that published part of a response would hand the client garbage, which tests then see.
//! When fewer than 7 bytes are queued it rings the backend (so a backend waiting for room
//! wakes up), as Linux does.

use std::collections::VecDeque;
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::doorbell::Doorbell;
use crate::evtchn::EventChannel;
use crate::frontend::FrontendRing;
use crate::grant::SharedGrants;

/// Bytes buffered in each direction of the client's stream.
const STREAM_BUFFER: usize = 4 << 20;

/// The running model: one task per ring plus the stream pumps. Dropping it stops them.
pub struct LinuxFrontend {
    tasks: JoinSet<io::Result<()>>,
}

impl LinuxFrontend {
    /// Drive `rings` (set up by [`FrontendRing::setup`] or `SimFrontend::new`; the backend
    /// must map them) for a client that speaks 9P over the returned stream, accepting
    /// responses of up to `max_frame` bytes. Must be called inside a tokio runtime.
    pub fn spawn<S, P>(
        rings: Vec<FrontendRing<S, P>>,
        max_frame: u32,
    ) -> io::Result<(DuplexStream, Self)>
    where
        S: SharedGrants,
        P: EventChannel + 'static,
    {
        assert!(!rings.is_empty(), "a 9pfs device has at least one ring");
        let (client, ours) = tokio::io::duplex(STREAM_BUFFER);
        let (mut reader, writer) = tokio::io::split(ours);
        let (resp_tx, resp_rx) = mpsc::unbounded_channel::<Bytes>();
        let mut tasks = JoinSet::new();
        let mut ring_senders = Vec::with_capacity(rings.len());
        for fe in rings {
            let (req_tx, req_rx) = mpsc::unbounded_channel::<Bytes>();
            ring_senders.push(req_tx);
            let bell = Doorbell::new(fe.events())?;
            tasks.spawn(ring_loop(fe, bell, req_rx, resp_tx.clone(), max_frame));
        }
        drop(resp_tx);
        // Client → rings: split the stream into frames and pick the ring by tag.
        tasks.spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                while buf.len() >= 4 {
                    let size = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
                    if !(7..=max_frame as usize).contains(&size) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("client frame of {size} bytes"),
                        ));
                    }
                    if buf.len() < size {
                        break;
                    }
                    let frame = buf.split_to(size).freeze();
                    let tag = u16::from_le_bytes([frame[5], frame[6]]);
                    let ring = tag as usize % ring_senders.len();
                    if ring_senders[ring].send(frame).is_err() {
                        return Ok(());
                    }
                }
                if reader.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
        });
        // Rings → client.
        tasks.spawn(async move {
            let mut writer = writer;
            let mut resp_rx = resp_rx;
            while let Some(mut frame) = resp_rx.recv().await {
                while frame.has_remaining() {
                    writer.write_all_buf(&mut frame).await?;
                }
            }
            writer.shutdown().await
        });
        Ok((client, LinuxFrontend { tasks }))
    }

    /// Wait for the first task to fail or all to end; `Err` says why the model stopped.
    pub async fn join(&mut self) -> io::Result<()> {
        while let Some(done) = self.tasks.join_next().await {
            match done {
                Ok(Err(e)) => return Err(e),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => {}
            }
        }
        Ok(())
    }
}

async fn ring_loop<S: SharedGrants, P: EventChannel>(
    fe: FrontendRing<S, P>,
    bell: Doorbell,
    mut requests: mpsc::UnboundedReceiver<Bytes>,
    responses: mpsc::UnboundedSender<Bytes>,
    max_frame: u32,
) -> io::Result<()> {
    let ring_err = |e: crate::ring::RingError| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut waiting: VecDeque<Bytes> = VecDeque::new();
    let mut open = true;
    loop {
        fe.events().ack()?;
        // p9_xen_response: take responses while a header is there; ring when below one.
        let mut ring;
        loop {
            match fe.receive_after_header(max_frame).map_err(ring_err)? {
                Some(resp) => {
                    if responses.send(resp).is_err() {
                        return Ok(());
                    }
                }
                None => {
                    ring = true;
                    break;
                }
            }
        }
        // p9_xen_request: each request whole, when it fits.
        while let Some(req) = waiting.front() {
            if !fe.send(req).map_err(ring_err)? {
                break;
            }
            waiting.pop_front();
            ring = true;
        }
        if ring {
            fe.events().notify()?;
        }
        if !open && waiting.is_empty() {
            return Ok(());
        }
        tokio::select! {
            rung = bell.rung() => rung?,
            req = requests.recv(), if open => match req {
                Some(req) => {
                    waiting.push_back(req);
                    while let Ok(req) = requests.try_recv() {
                        waiting.push_back(req);
                    }
                }
                None => open = false,
            },
        }
    }
}
