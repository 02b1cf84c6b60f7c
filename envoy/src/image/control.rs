//! envoyd's image admin socket (`DATA_DIR/images.sock`): the requests of [`super::admin`],
//! one per frame, answered in order.
//!
//! Frames are those of every Envoy dialect (`size[4] type[1] tag[2] body`, little-endian,
//! `size` counting itself), so the transport's unix sockets carry them unchanged; the body is
//! JSON — a local admin socket is not a hot path, and JSON keeps the protocol readable and
//! the `--json` output of `envoy-xl` the very reply. A request is type [`TIMAGE`] with an
//! [`admin::Request`]; its reply is type [`RIMAGE`] with the same tag and
//! `{"Ok": Outcome}` or `{"Err": AdminError}`. Only root and envoyd's own user may connect
//! (the kernel's peer credentials say who the caller is).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_transport::{AnyRx, AnyTx, Channel, Endpoint, FrameRx, FrameTx, Listener, Peer};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::admin::{self, AdminError, Outcome, Request};
use super::registry::Images;

/// Frame type of a request.
pub const TIMAGE: u8 = 200;
/// Frame type of a reply.
pub const RIMAGE: u8 = 201;
/// Largest request envoyd reads.
const MAX_REQUEST: u32 = 1 << 20;
/// Largest reply a client reads (a `check` of a badly damaged image lists many problems).
const MAX_REPLY: u32 = 64 << 20;

/// A failure of the admin socket itself (not of the operation asked for).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Connecting or talking to envoyd failed (the transport's message: it carries its cause).
    #[error("{0}")]
    Transport(String),
    /// envoyd closed the connection without answering.
    #[error("envoyd closed the connection without answering")]
    Closed,
    /// A frame that is not a reply to the request.
    #[error("bad reply from envoyd: {0}")]
    BadReply(String),
}

fn frame(ty: u8, tag: u16, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(7 + body.len());
    b.put_u32_le((7 + body.len()) as u32);
    b.put_u8(ty);
    b.put_u16_le(tag);
    b.put_slice(body);
    b.freeze()
}

/// A frame's type, tag and body (the transport has checked its size).
fn parts(f: &Bytes) -> (u8, u16, Bytes) {
    (f[4], u16::from_le_bytes([f[5], f[6]]), f.slice(7..))
}

/// Whether `peer` may administer images: root, or the user envoyd runs as.
fn allowed(peer: &Peer) -> bool {
    match peer {
        Peer::Unix { uid: Some(uid), .. } => {
            *uid == 0 || *uid == rustix::process::geteuid().as_raw()
        }
        _ => false,
    }
}

/// Serve `listener` (a unix socket) until `stop`: each connection's requests run one at a
/// time off the async threads, against `images`.
pub async fn serve<L: Listener>(
    images: Arc<Images>,
    mut listener: L,
    mut stop: watch::Receiver<bool>,
) -> envoy_transport::Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(channel) => {
                    connections.spawn(connection(images.clone(), channel));
                }
                Err(e) => {
                    warn!(%e, "image admin socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    connections.abort_all();
    Ok(())
}

async fn connection<R: FrameRx, T: FrameTx>(images: Arc<Images>, channel: Channel<R, T>) {
    let Channel {
        mut rx,
        mut tx,
        peer,
    } = channel;
    rx.set_max_frame(MAX_REQUEST);
    let permitted = allowed(&peer);
    loop {
        let f = match rx.recv().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                debug!(%peer, %e, "image admin socket: connection ended");
                break;
            }
        };
        let (ty, tag, body) = parts(&f);
        let result: Result<Outcome, AdminError> = if !permitted {
            Err(AdminError::Denied {
                who: peer.to_string(),
            })
        } else if ty != TIMAGE {
            Err(AdminError::Protocol {
                message: format!("frame type {ty}, not {TIMAGE}"),
            })
        } else {
            match serde_json::from_slice::<Request>(&body) {
                Err(e) => Err(AdminError::Protocol {
                    message: e.to_string(),
                }),
                Ok(request) => {
                    debug!(%peer, ?request, "image admin request");
                    let images = images.clone();
                    tokio::task::spawn_blocking(move || admin::run(&images, request))
                        .await
                        .unwrap_or_else(|e| {
                            Err(AdminError::Failed {
                                what: "the request".into(),
                                errno: format!("task failed: {e}"),
                            })
                        })
                }
            }
        };
        let body = encode_reply(&result);
        if tx.send(&mut vec![frame(RIMAGE, tag, &body)]).await.is_err() {
            break;
        }
    }
}

fn transport(e: envoy_transport::TransportError) -> ControlError {
    ControlError::Transport(e.to_string())
}

/// A connection to envoyd's image admin socket.
pub struct Client {
    channel: Channel<AnyRx, AnyTx>,
    tag: u16,
}

impl Client {
    /// Connect to the socket at `path`.
    pub async fn connect(path: &std::path::Path) -> Result<Client, ControlError> {
        let mut channel = envoy_transport::connect(&Endpoint::Unix(path.to_owned()))
            .await
            .map_err(transport)?;
        channel.rx.set_max_frame(MAX_REPLY);
        Ok(Client { channel, tag: 0 })
    }

    /// Ask for `request`; the operation's outcome, or why it failed.
    pub async fn call(
        &mut self,
        request: &Request,
    ) -> Result<Result<Outcome, AdminError>, ControlError> {
        self.tag = self.tag.wrapping_add(1);
        let body = serde_json::to_vec(request)
            .map_err(|e| ControlError::BadReply(format!("cannot encode the request: {e}")))?;
        self.channel
            .tx
            .send(&mut vec![frame(TIMAGE, self.tag, &body)])
            .await
            .map_err(transport)?;
        let f = self
            .channel
            .rx
            .recv()
            .await
            .map_err(transport)?
            .ok_or(ControlError::Closed)?;
        let (ty, tag, body) = parts(&f);
        if ty != RIMAGE || tag != self.tag {
            return Err(ControlError::BadReply(format!(
                "frame type {ty} tag {tag} to request tag {}",
                self.tag
            )));
        }
        decode_reply(&body)
    }
}

/// A reply's body: `{"Ok": outcome}` or `{"Err": error}`.
pub fn encode_reply(result: &Result<Outcome, AdminError>) -> Vec<u8> {
    serde_json::to_vec(result).unwrap_or_else(|e| {
        format!(r#"{{"Err":{{"error":"protocol","message":"cannot encode the reply: {e}"}}}}"#)
            .into_bytes()
    })
}

/// The outcome or error a reply's body carries.
pub fn decode_reply(body: &[u8]) -> Result<Result<Outcome, AdminError>, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::BadReply(e.to_string()))
}
