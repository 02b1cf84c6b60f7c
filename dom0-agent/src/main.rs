//! `envoyd`: the Envoy agent of one host's admin VM.
//!
//! It serves host directories (the `export` backend) over TCP, unix sockets and descriptor
//! pairs, and — with `--xen`, in a Xen dom0 — every 9pfs device xl gives a guest
//! (`p9 = [...]`) over the device's shared rings. With no arguments it serves
//! `DATA_DIR/export` on 127.0.0.1:5640 and prints the Linux mount command. Started under the
//! name `xen-9pfsd` (how libxl ≥ 4.19 starts the backend of `type=xen_9pfsd` devices) it
//! behaves as `envoyd --xen --xen-9pfsd`. With `--storage` / `--cluster` it also runs this
//! host's storage service (the object layer; see `envoy_dom0_agent::storage`) and the image
//! admin socket (`DATA_DIR/images.sock`, for `envoy-xl image` and `envoy-xl check`), every
//! image reached through one registry: one owner per image, shared by `--image`, `--images`
//! and the admin operations.

use anyhow::{Context, Result, bail};
use clap::Parser;
use envoy::image::fs::ImageFs;
use envoy::image::registry::{Images, Tree};
use envoy::vfs::FileSystem;
use envoy::{ExportFs, Server, ServerConfig, SessionLimits};
use envoy_transport::{Endpoint, Listener};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{info, warn};

/// Default TCP endpoint when none is given.
const DEFAULT_LISTEN: &str = "tcp:127.0.0.1:5640";

#[derive(Parser, Debug)]
#[command(
    name = "envoyd",
    version,
    about = "Envoy agent: serves file systems to guests over 9P"
)]
struct Args {
    /// Serve the Xen 9pfs devices whose backend is this domain (xl `p9 = [...]`), each
    /// device's `path` over its shared rings. Without --listen/--export, nothing else.
    #[arg(long)]
    xen: bool,
    /// With --xen: play xen-9pfsd (Xen >= 4.19): tell libxl that it runs
    /// (`libxl/xen-9pfs/state = running`) and serve only `type=xen_9pfsd` devices, leaving
    /// `type=qemu` ones to the guests' QEMU device models.
    #[arg(long, requires = "xen")]
    xen_9pfsd: bool,
    /// Host directory to serve (default: DATA_DIR/export, created if missing).
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    export: Option<PathBuf>,
    /// Serve the Envoy image NAME from this host's object store instead of a directory
    /// (created, empty, if it does not exist; needs --storage or --cluster).
    #[arg(long, value_name = "NAME", conflicts_with = "images")]
    image: Option<String>,
    /// Serve every Envoy image of this host's object store as one tree: /NAME/current,
    /// /NAME/N (snapshots), /NAME/snapshot; `ln -s current N` snapshots, `mkdir /NEW` +
    /// `ln -s /img/NAME/N /NEW/current` forks. A client attaching with aname NAME,
    /// NAME/current or NAME/N is served that image (or snapshot, read-only) as its whole tree
    /// (needs --storage or --cluster).
    #[arg(long, conflicts_with = "export")]
    images: bool,
    /// Where to listen: tcp:HOST:PORT, sctp:ADDR[,ADDR...]:PORT, unix:PATH or fd:R,W
    /// (repeatable).
    #[arg(long = "listen", value_name = "ENDPOINT")]
    listen: Vec<String>,
    /// Refuse every modification (EROFS).
    #[arg(long)]
    read_only: bool,
    /// Local state directory (default: /var/lib/envoy as root, else $XDG_DATA_HOME/envoy).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Largest msize offered to clients, in bytes (4096 ..= 1048576).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(4096..=1_048_576))]
    max_msize: u32,
    /// Most fids one client connection may hold.
    #[arg(long, default_value_t = 65536)]
    max_fids: usize,
    /// Requests one connection may have in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65535))]
    max_in_flight: u32,
    /// Test harnesses only: corrupt one byte of every read reply (proves suites detect it).
    #[arg(long, hide = true)]
    debug_corrupt_reads: bool,
    /// Benchmarks only: delay every file read by this many microseconds (models slow storage).
    #[arg(long, hide = true, value_name = "US")]
    debug_read_delay_us: Option<u64>,
    /// Threads running requests, shared by all connections (0: 4 per core, at least 16).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Serve this host's object store (the storage dialect) here, for the other hosts and
    /// tools (repeatable; default with --cluster: this host's endpoint in the file).
    #[arg(long = "storage", value_name = "ENDPOINT")]
    storage: Vec<String>,
    /// Join the storage cluster described by this membership file (TOML; re-read on SIGHUP).
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// This host's name in the membership (default: the machine's host name).
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// The object store's directory (default: DATA_DIR/objects).
    #[arg(long, value_name = "DIR")]
    storage_dir: Option<PathBuf>,
    /// Free space the object store leaves on its file system, MiB (default 64).
    #[arg(long, value_name = "MIB")]
    storage_reserve_mib: Option<u64>,
    /// Memory for verified image blocks, MiB, shared by every image served (0: none). Hot
    /// reads are served from it without the store or a hash.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    image_cache_mib: u64,
    /// Log more (-v: debug, -vv: trace; RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// glibc hands freed memory back to the kernel as soon as a heap's free top passes a few
/// MiB, and envoyd allocates and frees MiB-sized buffers all the time (request frames, image
/// blocks, cached objects): each new buffer then faults its pages in again, zeroed — a third
/// of envoyd's CPU when streaming writes into an image (measured, docs/benchmarks.md). Keep up
/// to 64 MiB free at the top of a heap (a thread arena's heap is at most that big anyway),
/// and take buffers up to 8 MiB from the heaps (not mmap).
fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; it is called before envoyd allocates
    // much, with valid parameter numbers and values.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn mount_hint(ep: &Endpoint, msize: u32) -> Option<String> {
    match ep {
        Endpoint::Tcp(addr) => Some(format!(
            "mount -t 9p -o trans=tcp,port={},version=9p2000.L,msize={msize} {} /mnt",
            addr.port(),
            addr.ip()
        )),
        Endpoint::Unix(path) => Some(format!(
            "mount -t 9p -o trans=unix,version=9p2000.L,msize={msize} {} /mnt",
            path.display()
        )),
        // Linux has no SCTP transport: envoy-mount hands it the association as trans=fd.
        Endpoint::Sctp(_) => Some(format!(
            "envoy-mount -o version=9p2000.L,msize={msize} {ep} /mnt"
        )),
        _ => None,
    }
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new("xen-9pfsd")) {
        // libxl starts the backend of type=xen_9pfsd devices under this name, with no options.
        args.xen = true;
        args.xen_9pfsd = true;
    }
    init_logging(args.verbose);
    keep_freed_memory();
    if let Err(e) = run(args).await {
        eprintln!("envoyd: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let config = server_config(&args);
    if args.debug_corrupt_reads {
        tracing::warn!("--debug-corrupt-reads: every read reply is corrupted on purpose");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if args.xen {
        let xs = envoy_xen::xenstore::Xenstore::open()
            .await
            .context("--xen needs xenstore (is this a Xen dom0 with xenstored running?)")?;
        let grants = envoy_xen::grant::GntDev::open()?;
        let events = envoy_xen::evtchn::EvtchnDev::open()?;
        let backend = envoy_dom0_agent::xen::XenBackend::new(
            xs,
            grants,
            events,
            config.clone(),
            args.xen_9pfsd,
        );
        println!("envoyd: serving Xen 9pfs devices (xl p9 = [...])");
        tasks.spawn(backend.run(stop_rx.clone()));
    }
    let storage = !args.storage.is_empty() || args.cluster.is_some();
    let mut images = None;
    if storage {
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(envoy::paths::default_data_dir);
        let setup = envoy_dom0_agent::storage::StorageSetup {
            host: args
                .host
                .clone()
                .unwrap_or_else(envoy_dom0_agent::storage::hostname),
            cluster_file: args.cluster.clone(),
            listen: args
                .storage
                .iter()
                .map(|s| {
                    s.parse::<Endpoint>()
                        .with_context(|| format!("bad --storage {s:?}"))
                })
                .collect::<Result<_>>()?,
            dir: args
                .storage_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("objects")),
            admin_socket: envoy::paths::storage_socket(&data_dir),
            reserve: args.storage_reserve_mib.map(|m| m << 20),
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let store = envoy_dom0_agent::storage::start(setup, &stop_rx, &mut tasks).await?;
        let registry = Arc::new(Images::new(image_objects(store, args.image_cache_mib)));
        serve_image_admin(&registry, &data_dir, &stop_rx, &mut tasks).await?;
        images = Some(registry);
    }
    // Without an explicit export, a storage-only or Xen-only envoyd serves no default export.
    if args.images {
        let images = images.context(
            "--images needs this host's object store: add --storage ENDPOINT or --cluster FILE",
        )?;
        let fs = Arc::new(envoy::image::namespace::NamespaceFs::new(images));
        serve_fs(
            &args,
            fs,
            "the image namespace",
            config,
            &stop_tx,
            &stop_rx,
            &mut tasks,
        )
        .await?;
    } else if let Some(name) = &args.image {
        let images = images.context(
            "--image needs this host's object store: add --storage ENDPOINT or --cluster FILE",
        )?;
        let fs = open_image(&images, name).await?;
        let what = format!("image {name}");
        serve_fs(&args, fs, &what, config, &stop_tx, &stop_rx, &mut tasks).await?;
    } else if !args.listen.is_empty() || args.export.is_some() || (!args.xen && !storage) {
        let export = export_dir(&args)?;
        let fs = Arc::new(
            ExportFs::new(&export, args.read_only)
                .with_context(|| format!("cannot export {}", export.display()))?,
        );
        let what = export.display().to_string();
        serve_fs(&args, fs, &what, config, &stop_tx, &stop_rx, &mut tasks).await?;
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stop_watch = stop_rx.clone();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted; shutting down"),
        _ = sigterm.recv() => info!("terminated; shutting down"),
        _ = stop_watch.changed() => info!("connection ended; shutting down"),
        Some(r) = tasks.join_next() => {
            // A service ended on its own: that is an error (they run until shutdown).
            r.context("service task")??;
            info!("service ended; shutting down");
        }
    }
    let _ = stop_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        r.context("service task")??;
    }
    Ok(())
}

/// The server configuration from the command line.
fn server_config(args: &Args) -> ServerConfig {
    ServerConfig {
        session: SessionLimits {
            max_msize: args.max_msize,
            max_fids: args.max_fids,
            debug_corrupt_reads: args.debug_corrupt_reads,
            debug_read_delay: args
                .debug_read_delay_us
                .map(std::time::Duration::from_micros),
        },
        max_in_flight: args.max_in_flight as usize,
        workers: args.workers,
    }
}

/// Images' objects through the cluster (replicated, R copies, when there are peers), with
/// `cache_mib` of verified objects kept in memory.
fn image_objects(
    cluster: Arc<envoy_objstore::Cluster>,
    cache_mib: u64,
) -> Arc<dyn envoy::image::objects::Objects> {
    let objects = Arc::new(envoy::image::objects::ClusterObjects::new(
        cluster,
        tokio::runtime::Handle::current(),
    ));
    if cache_mib == 0 {
        return objects;
    }
    Arc::new(envoy::image::cache::CachedObjects::new(
        objects,
        cache_mib << 20,
    ))
}

/// Image `name`'s owner, the image created (empty, root-owned) if it does not exist. While
/// the object layer cannot answer (EIO: the cluster's peers starting together with this host),
/// it is retried for a minute.
async fn open_image(images: &Images, name: &str) -> Result<Arc<ImageFs>> {
    use envoy::vfs::Errno;
    if !envoy::image::catalog::valid_name(name) {
        bail!("bad --image {name:?}: not a valid image name (no '/' or '@', not . or ..)");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let opened = match images.open(&Tree::current(name)) {
            Err(Errno::ENOENT) => images.create(name, 0, 0).inspect(|_| {
                println!("envoyd: image {name} does not exist: created it, empty");
            }),
            r => r,
        };
        match opened {
            Err(Errno::EIO) if std::time::Instant::now() < deadline => {
                warn!(image = %name, "the object layer cannot serve the image yet (peers starting?); retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => bail!("cannot open image {name}: {e} (see the log above)"),
            Ok(fs) => return Ok(fs),
        }
    }
}

/// The image admin socket (`DATA_DIR/images.sock`) for `envoy-xl image` and `envoy-xl check`.
async fn serve_image_admin(
    images: &Arc<Images>,
    data_dir: &std::path::Path,
    stop: &watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<Result<()>>,
) -> Result<()> {
    let path = envoy::paths::image_socket(data_dir);
    let listener = envoy_transport::UnixListener::bind(&path)
        .await
        .with_context(|| format!("cannot serve the image admin socket {}", path.display()))?;
    info!(socket = %path.display(), "image admin");
    println!("envoyd: image admin on unix:{}", path.display());
    let serving = envoy::image::control::serve(images.clone(), listener, stop.clone());
    tasks.spawn(async move { Ok(serving.await?) });
    Ok(())
}

/// The export directory: --export, else DATA_DIR/export (created).
fn export_dir(args: &Args) -> Result<PathBuf> {
    let export = match &args.export {
        Some(dir) => dir.clone(),
        None => {
            let dir = args
                .data_dir
                .clone()
                .unwrap_or_else(envoy::paths::default_data_dir)
                .join("export");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir
        }
    };
    if !export.is_dir() {
        bail!("cannot export {}: not a directory", export.display());
    }
    Ok(export)
}

/// Serve `fs` (named `what` in messages) on the --listen endpoints (or the default one).
async fn serve_fs<F: FileSystem>(
    args: &Args,
    fs: Arc<F>,
    what: &str,
    config: ServerConfig,
    stop_tx: &watch::Sender<bool>,
    stop_rx: &watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<Result<()>>,
) -> Result<()> {
    let endpoints: Vec<Endpoint> = if args.listen.is_empty() {
        vec![DEFAULT_LISTEN.to_owned()]
    } else {
        args.listen.clone()
    }
    .iter()
    .map(|s| {
        s.parse::<Endpoint>()
            .with_context(|| format!("bad --listen {s:?}"))
    })
    .collect::<Result<_>>()?;
    let server = Server::new(fs, config);
    for ep in &endpoints {
        let mut listener = envoy_transport::bind(ep)
            .await
            .with_context(|| format!("cannot listen on {ep}"))?;
        let bound = listener.local_endpoint();
        info!(serving = %what, listen = %bound, read_only = args.read_only, "serving");
        println!("envoyd: serving {what} on {bound}");
        if let Some(hint) = mount_hint(&bound, args.max_msize) {
            println!("  mount from Linux: {hint}");
        }
        if matches!(bound, Endpoint::Fd { .. }) {
            // A descriptor pair is one connection: serve it, then stop everything.
            let server = server.clone();
            let (stop_rx, stop_tx) = (stop_rx.clone(), stop_tx.clone());
            tasks.spawn(async move {
                let channel = listener.accept().await?;
                server.serve(channel, stop_rx).await;
                let _ = stop_tx.send(true);
                Ok(())
            });
        } else {
            let serving = envoy::serve_listener(server.clone(), listener, stop_rx.clone());
            tasks.spawn(async move { Ok(serving.await?) });
        }
    }
    Ok(())
}
