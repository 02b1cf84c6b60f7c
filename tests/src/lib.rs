//! Shared harness for Envoy's whole-system tests: a real server on a temporary file system.
//!
//! [`TestServer`] runs a backend behind the real transport on loopback (TCP port 0 or a unix
//! socket in a temporary directory) or over simulated Xen 9pfs rings driven by a model of
//! Linux's frontend, inside the test process. It stops when dropped.
//!
//! Two backends serve the same protocol suites: the export (a host directory, the default) and
//! the image (`ENVOY_TEST_BACKEND=image`: an [`ImageFs`] on a local object store in the
//! temporary directory). Tests prepare and check state through [`TestServer::host`], the
//! backend as the host sees it (module [`host`]), so one suite holds both to the same outcomes.
//!
//! `ENVOY_TEST_MEDIUM=xen-sim` makes [`TestServer::start`] serve over simulated Xen rings, and
//! `ENVOY_TEST_MEDIUM=sctp` over kernel SCTP on 127.0.0.1 (the README's test command runs the
//! protocol suites over TCP and simulated rings on the host, with both backends, and over SCTP
//! in the Linux guest, whose kernel has SCTP).

#![forbid(unsafe_code)]

pub mod host;
pub mod xen;

pub use host::{Host, HostMeta};

use envoy::image::fs::ImageFs;
use envoy::vfs::FileSystem;
use envoy::{ExportFs, Server, ServerConfig};
use envoy_objstore::{LocalStore, StoreOptions};
use envoy_protocol::Dialect;
use envoy_tools::client::Client;
use envoy_transport::{Endpoint, Listener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// The name of the image a [`Backend::Image`] server serves.
pub const IMAGE: &str = "test";

/// A running server on a temporary export directory or image.
pub struct TestServer {
    /// The temporary directory holding `export/` or the image's `store/`, and `outside/` (for
    /// escape tests).
    pub dir: tempfile::TempDir,
    /// Where the server listens (for [`Medium::XenSim`]: nowhere, see [`TestServer::medium`]).
    pub endpoint: Endpoint,
    medium: Medium,
    served: Served,
    xen: xen::SimHost,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The server, by backend.
enum Served {
    Export(Arc<Server<ExportFs>>),
    Image(Arc<Server<ImageFs>>),
}

/// How clients reach a [`TestServer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Medium {
    /// TCP on 127.0.0.1.
    Tcp,
    /// A unix socket in the temporary directory.
    Unix,
    /// Kernel SCTP on 127.0.0.1 (needs a kernel with SCTP: the Linux guest of tests/vm).
    Sctp,
    /// A simulated Xen 9pfs device per client: two rings of order 9 (Linux's choice), mapped
    /// through the simulated grant table and served by the ring transport, with a model of
    /// Linux's frontend between the rings and the client.
    XenSim,
}

impl Medium {
    /// The medium chosen by `ENVOY_TEST_MEDIUM` (`tcp`, `unix`, `sctp`, `xen-sim`; default TCP).
    pub fn from_env() -> Medium {
        match std::env::var("ENVOY_TEST_MEDIUM").as_deref() {
            Ok("xen-sim") => Medium::XenSim,
            Ok("unix") => Medium::Unix,
            Ok("sctp") => Medium::Sctp,
            Ok("tcp") | Ok("") | Err(_) => Medium::Tcp,
            Ok(other) => panic!("ENVOY_TEST_MEDIUM={other}: expected tcp, unix, sctp or xen-sim"),
        }
    }
}

/// What a [`TestServer`] serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A host directory (`envoy::ExportFs`).
    Export,
    /// An image on a local object store (`envoy::image::fs::ImageFs`).
    Image,
}

impl Backend {
    /// The backend chosen by `ENVOY_TEST_BACKEND` (`export`, `image`; default export).
    pub fn from_env() -> Backend {
        match std::env::var("ENVOY_TEST_BACKEND").as_deref() {
            Ok("image") => Backend::Image,
            Ok("export") | Ok("") | Err(_) => Backend::Export,
            Ok(other) => panic!("ENVOY_TEST_BACKEND={other}: expected export or image"),
        }
    }
}

/// Options for [`TestServer::start_with`].
#[derive(Clone, Default)]
pub struct Options {
    /// Serve read-only.
    pub read_only: bool,
    /// The medium (default: [`Medium::from_env`]).
    pub medium: Option<Medium>,
    /// The backend (default: [`Backend::from_env`]).
    pub backend: Option<Backend>,
    /// Server configuration (defaults if None).
    pub config: Option<ServerConfig>,
    /// Prepares the file system before it is served (how a read-only server gets content: a
    /// read-only image serves its last commit).
    pub prepare: Option<fn(&Host)>,
}

impl TestServer {
    /// A read-write server over TCP on 127.0.0.1 with default limits.
    pub async fn start() -> TestServer {
        Self::start_with(Options::default()).await
    }

    /// A server with `opts`. With `ENVOY_TEST_LOG=FILTER` (e.g. `debug`), the server logs to
    /// stderr, which libtest shows for failed tests.
    pub async fn start_with(opts: Options) -> TestServer {
        if let Ok(filter) = std::env::var("ENVOY_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        let config = opts.config.clone().unwrap_or_default();
        let served = match opts.backend.unwrap_or_else(Backend::from_env) {
            Backend::Export => Served::Export(Server::new(
                Arc::new(Self::export_fs(dir.path(), &opts)),
                config,
            )),
            Backend::Image => Served::Image(Server::new(
                Arc::new(Self::image_fs(dir.path(), &opts)),
                config,
            )),
        };
        let medium = opts.medium.unwrap_or_else(Medium::from_env);
        let ep: Endpoint = match medium {
            Medium::Unix => Endpoint::Unix(dir.path().join("envoy.sock")),
            Medium::Sctp => "sctp:127.0.0.1:0".parse().unwrap(),
            Medium::Tcp | Medium::XenSim => "tcp:127.0.0.1:0".parse().unwrap(),
        };
        // A listener even for XenSim, so `raw()` keeps working for hand-made frames.
        let listener = envoy_transport::bind(&ep).await.expect("bind");
        let endpoint = listener.local_endpoint();
        let (stop, stop_rx) = watch::channel(false);
        let task = match &served {
            Served::Export(s) => spawn_serving(s.clone(), listener, stop_rx),
            Served::Image(s) => spawn_serving(s.clone(), listener, stop_rx),
        };
        TestServer {
            dir,
            endpoint,
            medium,
            served,
            xen: xen::SimHost::new(),
            stop,
            task: Some(task),
        }
    }

    /// `dir/export`, mode 0755, prepared and exported.
    fn export_fs(dir: &Path, opts: &Options) -> ExportFs {
        let export = dir.join("export");
        std::fs::create_dir(&export).unwrap();
        // ExportFs sets the process umask to 0, so state the modes the tests rely on.
        std::fs::set_permissions(&export, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let fs = ExportFs::new(&export, opts.read_only).expect("export");
        if let Some(prepare) = opts.prepare {
            prepare(&Host::dir(export));
        }
        fs
    }

    /// Image [`IMAGE`] (root directory 0755 root) in a store in `dir/store`, prepared; a
    /// read-only server serves its last commit, opened read-only.
    fn image_fs(dir: &Path, opts: &Options) -> ImageFs {
        let path = dir.join("store");
        std::fs::create_dir(&path).unwrap();
        let store = Arc::new(LocalStore::open(&path, StoreOptions::default()).expect("store"));
        let fs = ImageFs::create(store.clone(), IMAGE, 0, 0).expect("image");
        let Some(prepare) = opts.prepare else {
            assert!(
                !opts.read_only,
                "a read-only image is prepared before it is served"
            );
            return fs;
        };
        let fs = Arc::new(fs);
        prepare(&Host::image(fs.clone()));
        if !opts.read_only {
            return Arc::into_inner(fs).expect("the prepared image is not held");
        }
        fs.sync().expect("commit the prepared image");
        drop(fs);
        ImageFs::open(store, IMAGE, true).expect("open the image read-only")
    }

    /// The backend served.
    pub fn backend(&self) -> Backend {
        match self.served {
            Served::Export(_) => Backend::Export,
            Served::Image(_) => Backend::Image,
        }
    }

    /// The served file system as the host sees it.
    pub fn host(&self) -> Host {
        match &self.served {
            Served::Export(s) => Host::dir(s.fs().root_path().to_owned()),
            Served::Image(s) => Host::image(s.fs().clone()),
        }
    }

    /// A directory beside the export (or the image's store) that nothing may reach through the
    /// server.
    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// The medium clients use.
    pub fn medium(&self) -> Medium {
        self.medium
    }

    /// The simulated Xen host (grant table, event channels) behind [`Medium::XenSim`] clients.
    pub fn xen(&self) -> &xen::SimHost {
        &self.xen
    }

    /// A connected client with `dialect` and `msize`.
    pub async fn client(&self, dialect: Dialect, msize: u32) -> Client {
        if self.medium == Medium::XenSim {
            let stop = self.stop.subscribe();
            let stream = match &self.served {
                Served::Export(s) => self.xen.connect(s.clone(), stop).await,
                Served::Image(s) => self.xen.connect(s.clone(), stop).await,
            };
            return Client::over_stream(stream, dialect, msize)
                .await
                .expect("version over the Xen rings");
        }
        match &self.endpoint {
            Endpoint::Tcp(addr) => Client::connect_tcp(*addr, dialect, msize)
                .await
                .expect("connect"),
            Endpoint::Unix(path) => Client::connect_unix(path, dialect, msize)
                .await
                .expect("connect"),
            ep @ Endpoint::Sctp(_) => Client::connect(ep, dialect, msize).await.expect("connect"),
            other => panic!("unexpected endpoint {other}"),
        }
    }

    /// A connected client whose fid 1 is attached to the root as root.
    pub async fn attached(&self, dialect: Dialect, msize: u32) -> Client {
        let c = self.client(dialect, msize).await;
        let attach = envoy_protocol::Tattach {
            fid: 1,
            afid: envoy_protocol::consts::NOFID,
            uname: "root".into(),
            aname: String::new(),
            n_uname: 0,
        };
        let r = c
            .rpc(envoy_protocol::Fcall::Tattach(attach))
            .await
            .expect("attach");
        assert!(matches!(r, envoy_protocol::Fcall::Rattach(_)), "{r:?}");
        c
    }

    /// A raw TCP connection (for hand-made frames).
    pub async fn raw(&self) -> tokio::net::TcpStream {
        match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                s.set_nodelay(true).unwrap();
                s
            }
            other => panic!("raw connections are TCP only, not {other}"),
        }
    }

    /// A raw SCTP association to an SCTP server, as a byte stream each of whose writes is one
    /// SCTP message (tokio's `TcpStream` drives any connected stream socket; SCTP's one-to-one
    /// sockets are such). For hand-made and malformed messages.
    pub async fn raw_sctp(&self) -> tokio::net::TcpStream {
        let Endpoint::Sctp(addrs) = &self.endpoint else {
            panic!("raw_sctp needs an SCTP server, not {}", self.endpoint);
        };
        let (fd, _) = envoy_transport::sctp::associate(addrs)
            .await
            .expect("sctp association");
        tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd)).expect("register")
    }

    /// Stop the server and wait for it.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Serve `listener` until `stop`.
fn spawn_serving<F: FileSystem, L: Listener + Send + 'static>(
    server: Arc<Server<F>>,
    listener: L,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = envoy::serve_listener(server, listener, stop).await;
    })
}

/// Every (relative path, content or link target) under `root`, for before/after comparisons.
pub fn snapshot_tree(root: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let desc = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &p, out);
                format!(
                    "dir mode {:o}",
                    std::os::unix::fs::PermissionsExt::mode(&meta.permissions())
                )
            } else {
                let bytes = std::fs::read(&p).unwrap();
                format!(
                    "file mode {:o} len {} data {:?}",
                    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()),
                    bytes.len(),
                    bytes
                )
            };
            out.push((rel, desc));
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// A byte stream a 9P client can talk over.
pub trait ByteStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// A hand-driven 9P connection: exact frames out, decoded frames in, for ordering and
/// bad-input tests.
pub struct RawConn {
    stream: Box<dyn ByteStream>,
    buf: Vec<u8>,
    /// Dialect used to encode and decode.
    pub dialect: Dialect,
}

impl RawConn {
    /// Wrap a connected stream (TCP, or the client end of a simulated Xen device).
    pub fn new(stream: impl ByteStream, dialect: Dialect) -> RawConn {
        RawConn {
            stream: Box::new(stream),
            buf: Vec::new(),
            dialect,
        }
    }

    /// Send one message.
    pub async fn send(&mut self, tag: u16, msg: &envoy_protocol::Fcall) -> std::io::Result<()> {
        let mut b = bytes::BytesMut::new();
        msg.encode(tag, self.dialect, &mut b);
        self.send_bytes(&b).await
    }

    /// Send raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await
    }

    /// Negotiate `version`/`msize` and attach fid 1 as root (n_uname 0).
    pub async fn handshake(&mut self, msize: u32) {
        use envoy_protocol::*;
        let v = Fcall::Tversion(Tversion {
            msize,
            version: self.dialect.as_str().into(),
        });
        self.send(consts::NOTAG, &v).await.unwrap();
        let (_, r) = self.recv().await.expect("Rversion");
        assert!(matches!(r, Fcall::Rversion(_)), "{r:?}");
        let a = Tattach {
            fid: 1,
            afid: consts::NOFID,
            uname: "root".into(),
            aname: String::new(),
            n_uname: 0,
        };
        self.send(1, &Fcall::Tattach(a)).await.unwrap();
        let (_, r) = self.recv().await.expect("Rattach");
        assert!(matches!(r, Fcall::Rattach(_)), "{r:?}");
    }

    /// The next whole frame's bytes, or None on EOF / after 10 s of silence.
    pub async fn recv_frame(&mut self) -> Option<Vec<u8>> {
        self.recv_frame_within(std::time::Duration::from_secs(10))
            .await
    }

    /// The next whole frame, or None on EOF or when `wait` passes.
    pub async fn recv_frame_within(&mut self, wait: std::time::Duration) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 4 {
                let size = u32::from_le_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= size {
                    let rest = self.buf.split_off(size);
                    return Some(std::mem::replace(&mut self.buf, rest));
                }
            }
            let mut chunk = [0u8; 65536];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next decoded reply (tag, message).
    pub async fn recv(&mut self) -> Option<(u16, envoy_protocol::Fcall)> {
        let frame = self.recv_frame().await?;
        Some(
            envoy_protocol::decode(bytes::Bytes::from(frame), self.dialect)
                .expect("server sent a valid frame"),
        )
    }

    /// True when the server has closed the connection (EOF within `wait`).
    pub async fn closed_within(&mut self, wait: std::time::Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Run `m`, which must succeed; its reply.
pub async fn ok(c: &Client, m: envoy_protocol::Fcall) -> envoy_protocol::Fcall {
    let desc = format!("{m:?}");
    c.rpc(m).await.unwrap_or_else(|e| panic!("{desc}: {e}"))
}

/// Run `m`, which must fail with an error reply; its errno and text.
pub async fn err(c: &Client, m: envoy_protocol::Fcall) -> (u32, String) {
    let desc = format!("{m:?}");
    match c.rpc(m).await {
        Err(envoy_tools::client::ClientError::Remote { errno, ename }) => (errno, ename),
        other => panic!("{desc}: expected an error, got {other:?}"),
    }
}

/// Run `m`, which must fail; its errno.
pub async fn errno(c: &Client, m: envoy_protocol::Fcall) -> u32 {
    err(c, m).await.0
}

/// A Twalk message.
pub fn twalk(fid: u32, newfid: u32, names: &[&str]) -> envoy_protocol::Fcall {
    envoy_protocol::Fcall::Twalk(envoy_protocol::Twalk {
        fid,
        newfid,
        wnames: names.iter().map(|s| s.to_string()).collect(),
    })
}
