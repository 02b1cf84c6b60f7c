//! Unix-domain stream sockets: a listener reporting each peer's kernel credentials, and a
//! client connector.
//!
//! Binding replaces a stale socket file left by a previous run, but only when it is a socket
//! and nothing answers on it; any other file, or a live socket, is an error and left alone. The
//! listener removes its socket file when dropped (if the file is still the one it created).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tracing::{debug, warn};

use crate::frame::{Channel, Listener, Peer};
use crate::stream::{StreamRx, StreamTx};
use crate::tcp::is_abandoned;
use crate::{Endpoint, Result, TransportError};

/// The receiving half of a unix-socket channel.
pub type UnixRx = StreamRx<OwnedReadHalf>;
/// The sending half of a unix-socket channel.
pub type UnixTx = StreamTx<OwnedWriteHalf>;

/// A listening unix-domain stream socket.
#[derive(Debug)]
pub struct UnixListener {
    inner: tokio::net::UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we created, to remove only that file on drop.
    file_id: Option<(u64, u64)>,
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Remove `path` if it is a socket nobody listens on; fail if it is anything else in use.
async fn clear_stale(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !meta.file_type().is_socket() {
        return Err(TransportError::BadEndpoint(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        )));
    }
    // Non-blocking, so a live server with a full backlog cannot hang us (that is an error).
    match UnixStream::connect(path).await {
        Ok(_) => Err(TransportError::Io(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is a live socket: another server is listening on it",
                path.display()
            ),
        ))),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            debug!(path = %path.display(), "removing stale socket");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        }
        Err(e) => Err(TransportError::Io(io::Error::new(
            e.kind(),
            format!(
                "cannot tell whether socket {} is in use: {e}",
                path.display()
            ),
        ))),
    }
}

impl UnixListener {
    /// Listen at `path`, replacing a stale socket file (see the module documentation).
    pub async fn bind(path: impl AsRef<Path>) -> Result<UnixListener> {
        let path = path.as_ref().to_path_buf();
        clear_stale(&path).await?;
        let inner = tokio::net::UnixListener::bind(&path)?;
        debug!(path = %path.display(), "unix listening");
        Ok(UnixListener {
            inner,
            file_id: file_id(&path),
            path,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        if self.file_id.is_some()
            && file_id(&self.path) == self.file_id
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            warn!(path = %self.path.display(), %e, "cannot remove socket file");
        }
    }
}

/// The peer's credentials as the kernel reports them (all unknown if it will not say).
fn peer_of(stream: &UnixStream) -> Peer {
    match stream.peer_cred() {
        Ok(c) => Peer::Unix {
            pid: c.pid(),
            uid: Some(c.uid()),
            gid: Some(c.gid()),
        },
        Err(e) => {
            debug!(%e, "no peer credentials");
            Peer::Unix {
                pid: None,
                uid: None,
                gid: None,
            }
        }
    }
}

fn unix_channel(stream: UnixStream) -> Channel<UnixRx, UnixTx> {
    let peer = peer_of(&stream);
    let (r, w) = stream.into_split();
    Channel {
        rx: StreamRx::new(r),
        tx: StreamTx::new(w),
        peer,
    }
}

/// Connect to a unix-socket server; the peer is the server process.
pub(crate) async fn unix_connect(path: &Path) -> Result<Channel<UnixRx, UnixTx>> {
    Ok(unix_channel(UnixStream::connect(path).await?))
}

impl Listener for UnixListener {
    type Rx = UnixRx;
    type Tx = UnixTx;

    /// Connections the peer abandoned before they were accepted are skipped; other errors are
    /// returned.
    async fn accept(&mut self) -> Result<Channel<UnixRx, UnixTx>> {
        loop {
            match self.inner.accept().await {
                Ok((stream, _)) => return Ok(unix_channel(stream)),
                Err(e) if is_abandoned(&e) => debug!(%e, "unix connection abandoned before accept"),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.path.clone())
    }
}
