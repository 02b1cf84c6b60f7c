//! A xenstore client: the key-value store through which Xen domains and the toolstack
//! describe devices (`/local/domain/<id>/...`), speaking xenstored's wire protocol over its unix
//! socket or the xenbus device.
//!
//! One [`Xenstore`] is one connection, cheap to clone and safe to share: many requests may be in
//! flight at once (pipelined, matched to replies by request id; past [`MAX_IN_FLIGHT`] callers
//! wait for a slot), each call naming its operation and path in its error. [`Transaction`]s give all-or-nothing updates,
//! [`Xenstore::transaction`] retries them on conflict, and [`Watch`]es deliver change events
//! through per-watch bounded queues so a slow watcher never stalls the connection.
//!
//! Limits are enforced on both sides: requests whose paths exceed 3072 bytes or whose payload
//! exceeds 4096 bytes are refused before anything is sent ([`XsError::Invalid`]); replies
//! claiming more than 4096 bytes close the connection. Modules: [`wire`] (the byte format),
//! `conn` (the reader/writer tasks), `transport` (socket and device), [`watch`],
//! `transaction`, `perms`, `error`.

mod conn;
mod error;
mod perms;
mod transaction;
mod transport;
pub mod watch;
pub mod wire;

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use conn::MAX_IN_FLIGHT;
pub use error::XsError;
pub use perms::{Access, BadPerm, Perm};
pub use transaction::{TRANSACTION_ATTEMPTS, Transaction};
pub use watch::{WATCH_QUEUE_CAPACITY, Watch, WatchEvent};

use conn::Conn;
use error::shown;
use wire::{MsgType, Refusal};

/// The xenbus device of a Linux domain (dom0 without a local xenstored, or a guest).
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";
/// xenstored's run directory when `XENSTORED_RUNDIR` is unset; its socket is `socket` in it.
pub const DEFAULT_RUNDIR: &str = "/var/run/xenstored";

/// How long [`Xenstore::connect_socket`] retries while xenstored's listen queue is full.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// Restarts of a chunked directory listing whose node changed under it.
const DIRECTORY_RESTARTS: usize = 8;
/// Chunks of one chunked directory listing (each carries at least one name, up to 4 KiB).
const DIRECTORY_CHUNKS_MAX: usize = 4096;

/// A connection to xenstored. Clones share the connection; it closes when the last clone,
/// [`Watch`] and [`Transaction`] are gone.
#[derive(Clone)]
pub struct Xenstore {
    pub(crate) conn: Arc<Conn>,
}

impl std::fmt::Debug for Xenstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xenstore")
            .field("closed", &self.conn.closed_reason())
            .finish()
    }
}

impl Xenstore {
    /// Connect the way libxenstore does: `$XENSTORED_PATH` if set (a socket, or else a device),
    /// otherwise `${XENSTORED_RUNDIR:-/var/run/xenstored}/socket` if it exists, otherwise the
    /// xenbus device [`XENBUS_DEVICE`].
    pub async fn open() -> Result<Xenstore, XsError> {
        if let Some(p) = std::env::var_os("XENSTORED_PATH").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            return match std::fs::metadata(&p) {
                Ok(m) if !m.file_type().is_socket() => Xenstore::connect_device(&p).await,
                _ => Xenstore::connect_socket(&p).await,
            };
        }
        let rundir = std::env::var_os("XENSTORED_RUNDIR")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| OsString::from(DEFAULT_RUNDIR));
        let socket = Path::new(&rundir).join("socket");
        if socket.exists() {
            return Xenstore::connect_socket(&socket).await;
        }
        Xenstore::connect_device(Path::new(XENBUS_DEVICE)).await
    }

    /// Connect to xenstored's unix socket. xenstored listens with a backlog of one and accepts
    /// one connection per turn of its loop, so a non-blocking connect may find the queue full
    /// (`EAGAIN`): that is retried with backoff for up to [`CONNECT_PATIENCE`].
    pub async fn connect_socket(path: &Path) -> Result<Xenstore, XsError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(1);
        let stream = loop {
            match tokio::net::UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && started.elapsed() < CONNECT_PATIENCE =>
                {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(XsError::Connect {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        };
        let (r, w) = transport::socket(stream);
        Ok(Xenstore::start(r, w))
    }

    /// Open the xenbus device (`/dev/xen/xenbus`): the same protocol, one message per write.
    pub async fn connect_device(path: &Path) -> Result<Xenstore, XsError> {
        let connect_err = |source: std::io::Error| XsError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let fd = rustix::fs::open(
            path,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| connect_err(e.into()))?;
        let (r, w) = transport::device(fd).map_err(connect_err)?;
        Ok(Xenstore::start(r, w))
    }

    /// Speak the protocol over an already open descriptor the way the xenbus device is driven
    /// (non-blocking, one whole message per write). Used by [`Xenstore::connect_device`]; also
    /// lets that path be tested over a socket.
    pub async fn from_device_fd(fd: OwnedFd) -> Result<Xenstore, XsError> {
        let (r, w) = transport::device(fd).map_err(|source| XsError::Connect {
            path: PathBuf::from("(descriptor)"),
            source,
        })?;
        Ok(Xenstore::start(r, w))
    }

    fn start(r: transport::Reader, w: transport::Writer) -> Xenstore {
        Xenstore {
            conn: Arc::new(Conn::start(r, w, WATCH_QUEUE_CAPACITY)),
        }
    }

    /// Why the connection closed, or `None` while it is up.
    pub fn closed_reason(&self) -> Option<String> {
        self.conn.closed_reason().map(|r| r.to_string())
    }

    /// Read a node's value (raw bytes: values may be binary).
    pub async fn read(&self, path: &str) -> Result<Vec<u8>, XsError> {
        self.read_in(0, path).await
    }

    /// Read a node's value as UTF-8.
    pub async fn read_string(&self, path: &str) -> Result<String, XsError> {
        self.read_string_in(0, path).await
    }

    /// Read a node's value as UTF-8; `None` if the node does not exist (`ENOENT`).
    pub async fn try_read_string(&self, path: &str) -> Result<Option<String>, XsError> {
        self.try_read_string_in(0, path).await
    }

    /// Write a node's value, creating it and any missing parents. At most
    /// `4096 - path.len() - 1` bytes.
    pub async fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<(), XsError> {
        self.write_in(0, path, value.as_ref()).await
    }

    /// Create a node with an empty value if it does not exist (and missing parents).
    pub async fn mkdir(&self, path: &str) -> Result<(), XsError> {
        self.mkdir_in(0, path).await
    }

    /// Remove a node and everything below it. Removing a missing node whose parent exists
    /// succeeds; `ENOENT` if the parent is missing too.
    pub async fn rm(&self, path: &str) -> Result<(), XsError> {
        self.rm_in(0, path).await
    }

    /// The names (not paths) of a node's children, in xenstored's order. Lists over 4 KiB are
    /// fetched in chunks (`DIRECTORY_PART`), restarting if the node changes meanwhile.
    pub async fn directory(&self, path: &str) -> Result<Vec<String>, XsError> {
        self.directory_in(0, path).await
    }

    /// A node's permissions: the owner first (whose access is also the default for domains not
    /// listed), then explicit entries.
    pub async fn get_perms(&self, path: &str) -> Result<Vec<Perm>, XsError> {
        self.get_perms_in(0, path).await
    }

    /// Replace a node's permissions (owner first). xenstored refuses an empty list (`EINVAL`).
    pub async fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        self.set_perms_in(0, path, perms).await
    }

    /// The home path of a domain (`/local/domain/<domid>`), as xenstored reports it.
    pub async fn get_domain_path(&self, domid: u32) -> Result<String, XsError> {
        let what = domid.to_string();
        let payload = strings(&[what.as_bytes()], true, "get_domain_path", &what)?;
        let reply = self
            .conn
            .call(
                "get_domain_path",
                &what,
                MsgType::GetDomainPath,
                0,
                &payload,
            )
            .await?;
        utf8(reply_str(&reply), "get_domain_path", &what)
    }

    /// Register a watch on `path` (and everything below it) under a token unique to this
    /// connection. xenstored fires it once straight away, with `path` itself.
    pub async fn watch(&self, path: &str) -> Result<Watch, XsError> {
        check(path, "watch", path)?;
        let Some((token, queue)) = self.conn.add_watch() else {
            return Err(XsError::Closed {
                op: "watch",
                path: shown(path),
                reason: Arc::from(self.closed_reason().unwrap_or_default()),
            });
        };
        // Routing is set up before the request leaves, so the initial event is never lost. If
        // this future is dropped before the answer, the guard unwatches.
        let mut guard = WatchGuard {
            client: self,
            path,
            token: &token,
            armed: true,
        };
        let result = match strings(&[path.as_bytes(), token.as_bytes()], true, "watch", path) {
            Ok(payload) => {
                self.conn
                    .call("watch", path, MsgType::Watch, 0, &payload)
                    .await
            }
            Err(e) => Err(e),
        };
        guard.armed = false;
        drop(guard);
        match result {
            Ok(_) => Ok(Watch {
                client: self.clone(),
                path: path.to_string(),
                token,
                queue,
            }),
            Err(e) => {
                // Not registered: nothing to unwatch.
                self.conn.remove_watch(&token);
                Err(e)
            }
        }
    }

    /// Tell xenstored that domain `domid` exists and how to reach it: `gfn` is the frame of its
    /// xenstore ring page (xenstored maps the grant reserved for it), `port` the event channel
    /// in the domain. Toolstack-only (dom0).
    pub async fn introduce(&self, domid: u32, gfn: u64, port: u32) -> Result<(), XsError> {
        let (d, g, p) = (domid.to_string(), gfn.to_string(), port.to_string());
        let payload = strings(
            &[d.as_bytes(), g.as_bytes(), p.as_bytes()],
            true,
            "introduce",
            &d,
        )?;
        self.conn
            .call("introduce", &d, MsgType::Introduce, 0, &payload)
            .await?;
        Ok(())
    }

    /// Tell xenstored that domain `domid` is gone (fires `@releaseDomain`). Toolstack-only.
    pub async fn release(&self, domid: u32) -> Result<(), XsError> {
        let d = domid.to_string();
        let payload = strings(&[d.as_bytes()], true, "release", &d)?;
        self.conn
            .call("release", &d, MsgType::Release, 0, &payload)
            .await?;
        Ok(())
    }

    /// Whether xenstored has a connection for domain `domid`.
    pub async fn is_domain_introduced(&self, domid: u32) -> Result<bool, XsError> {
        let d = domid.to_string();
        let payload = strings(&[d.as_bytes()], true, "is_domain_introduced", &d)?;
        let reply = self
            .conn
            .call(
                "is_domain_introduced",
                &d,
                MsgType::IsDomainIntroduced,
                0,
                &payload,
            )
            .await?;
        match reply_str(&reply) {
            b"T" => Ok(true),
            b"F" => Ok(false),
            other => Err(XsError::BadReply {
                op: "is_domain_introduced",
                path: d,
                detail: format!("answer {:?}", String::from_utf8_lossy(other)),
            }),
        }
    }

    // ---- the operations, with a transaction id (0: none) ----------------------------------

    pub(crate) async fn read_in(&self, tx: u32, path: &str) -> Result<Vec<u8>, XsError> {
        let payload = one_path("read", path)?;
        self.conn
            .call("read", path, MsgType::Read, tx, &payload)
            .await
    }

    pub(crate) async fn read_string_in(&self, tx: u32, path: &str) -> Result<String, XsError> {
        let v = self.read_in(tx, path).await?;
        String::from_utf8(v).map_err(|_| XsError::NotUtf8 {
            op: "read",
            path: shown(path),
        })
    }

    pub(crate) async fn try_read_string_in(
        &self,
        tx: u32,
        path: &str,
    ) -> Result<Option<String>, XsError> {
        match self.read_string_in(tx, path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_enoent() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn write_in(&self, tx: u32, path: &str, value: &[u8]) -> Result<(), XsError> {
        check(path, "write", path)?;
        let payload = strings(&[path.as_bytes(), value], false, "write", path)?;
        self.conn
            .call("write", path, MsgType::Write, tx, &payload)
            .await?;
        Ok(())
    }

    pub(crate) async fn mkdir_in(&self, tx: u32, path: &str) -> Result<(), XsError> {
        let payload = one_path("mkdir", path)?;
        self.conn
            .call("mkdir", path, MsgType::Mkdir, tx, &payload)
            .await?;
        Ok(())
    }

    pub(crate) async fn rm_in(&self, tx: u32, path: &str) -> Result<(), XsError> {
        let payload = one_path("rm", path)?;
        self.conn
            .call("rm", path, MsgType::Rm, tx, &payload)
            .await?;
        Ok(())
    }

    pub(crate) async fn directory_in(&self, tx: u32, path: &str) -> Result<Vec<String>, XsError> {
        let payload = one_path("directory", path)?;
        match self
            .conn
            .call("directory", path, MsgType::Directory, tx, &payload)
            .await
        {
            Ok(reply) => wire::split_list(&reply)
                .into_iter()
                .map(|n| utf8(n, "directory", path))
                .collect(),
            Err(XsError::Refused { errno, .. }) if errno == libc::E2BIG => {
                self.directory_parts(tx, path).await
            }
            Err(e) => Err(e),
        }
    }

    async fn directory_parts(&self, tx: u32, path: &str) -> Result<Vec<String>, XsError> {
        let bad = |detail: String| XsError::BadReply {
            op: "directory",
            path: shown(path),
            detail,
        };
        'restart: for _ in 0..DIRECTORY_RESTARTS {
            let mut names = Vec::new();
            let mut offset = 0usize;
            let mut generation: Option<Vec<u8>> = None;
            for _ in 0..DIRECTORY_CHUNKS_MAX {
                let off = offset.to_string();
                let payload = strings(&[path.as_bytes(), off.as_bytes()], true, "directory", path)?;
                let reply = self
                    .conn
                    .call("directory", path, MsgType::DirectoryPart, tx, &payload)
                    .await?;
                let part = wire::parse_directory_part(&reply)
                    .ok_or_else(|| bad("malformed DIRECTORY_PART reply".into()))?;
                match &generation {
                    Some(g) if g.as_slice() != part.generation => continue 'restart,
                    _ => generation = Some(part.generation.to_vec()),
                }
                for n in &part.names {
                    names.push(utf8(n, "directory", path)?);
                }
                if part.done {
                    return Ok(names);
                }
                if part.consumed == 0 {
                    return Err(bad("DIRECTORY_PART made no progress".into()));
                }
                offset += part.consumed;
            }
            return Err(bad(format!(
                "more than {DIRECTORY_CHUNKS_MAX} DIRECTORY_PART chunks"
            )));
        }
        Err(bad(format!(
            "the node changed during {DIRECTORY_RESTARTS} chunked listings"
        )))
    }

    pub(crate) async fn get_perms_in(&self, tx: u32, path: &str) -> Result<Vec<Perm>, XsError> {
        let payload = one_path("get_perms", path)?;
        let reply = self
            .conn
            .call("get_perms", path, MsgType::GetPerms, tx, &payload)
            .await?;
        wire::split_list(&reply)
            .into_iter()
            .map(|s| {
                std::str::from_utf8(s)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| XsError::BadReply {
                        op: "get_perms",
                        path: shown(path),
                        detail: format!("permission {:?}", String::from_utf8_lossy(s)),
                    })
            })
            .collect()
    }

    pub(crate) async fn set_perms_in(
        &self,
        tx: u32,
        path: &str,
        perms: &[Perm],
    ) -> Result<(), XsError> {
        check(path, "set_perms", path)?;
        let texts: Vec<String> = perms.iter().map(Perm::to_string).collect();
        let mut fields: Vec<&[u8]> = vec![path.as_bytes()];
        fields.extend(texts.iter().map(|t| t.as_bytes()));
        let payload = strings(&fields, true, "set_perms", path)?;
        self.conn
            .call("set_perms", path, MsgType::SetPerms, tx, &payload)
            .await?;
        Ok(())
    }
}

/// Unwatches if `watch()` is abandoned between sending `WATCH` and its answer.
struct WatchGuard<'a> {
    client: &'a Xenstore,
    path: &'a str,
    token: &'a str,
    armed: bool,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            watch::unwatch(self.client, self.path, self.token);
        }
    }
}

fn invalid(op: &'static str, path: &str, r: Refusal) -> XsError {
    let (errno, reason) = match r {
        Refusal::TooLong(s) => (libc::E2BIG, s),
        Refusal::Nul(s) => (libc::EINVAL, s),
    };
    XsError::Invalid {
        op,
        path: shown(path),
        errno,
        reason,
    }
}

fn check(path: &str, op: &'static str, shown_path: &str) -> Result<(), XsError> {
    wire::check_path(path).map_err(|r| invalid(op, shown_path, r))
}

fn strings(
    fields: &[&[u8]],
    terminate_last: bool,
    op: &'static str,
    path: &str,
) -> Result<Vec<u8>, XsError> {
    wire::strings_payload(fields, terminate_last).map_err(|r| invalid(op, path, r))
}

fn one_path(op: &'static str, path: &str) -> Result<Vec<u8>, XsError> {
    check(path, op, path)?;
    strings(&[path.as_bytes()], true, op, path)
}

fn reply_str(reply: &[u8]) -> &[u8] {
    wire::reply_string(reply)
}

fn utf8(bytes: &[u8], op: &'static str, path: &str) -> Result<String, XsError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| XsError::BadReply {
        op,
        path: shown(path),
        detail: format!("not UTF-8: {:?}", String::from_utf8_lossy(bytes)),
    })
}
