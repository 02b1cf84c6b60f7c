//! One measured run: N connections × M requests in flight against a 9P server.
//!
//! Each connection gets M *lanes*, tasks that each run one operation at a time (a walk +
//! getattr + clunk, one read, ...), so every connection keeps M requests in flight. Lanes
//! stop at the deadline or when the run's operation budget is spent, whichever comes
//! first; the first error stops every lane and fails the run.

use super::hist::Histogram;
use super::util::{Json, Rng, check_pattern, fill_pattern, json_object, process_cpu_seconds};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use envoy_protocol::Dialect;
use envoy_protocol::consts::*;
use envoy_tools::client::Client;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The attached root of every connection.
const ROOT: u32 = 0;
/// The open file of seqread/randread/seqwrite.
const FILE: u32 = 1;
/// The directory create and seqwrite work in.
const DIR: u32 = 2;
/// Used while listing the tree.
const LIST: u32 = 3;
/// Linux EOPNOTSUPP.
const EOPNOTSUPP: u32 = 95;
/// Lane `l` uses fids `LANE_FIDS + 4 l ..`.
const LANE_FIDS: u32 = 16;

/// Limits on listing the tree, so a wrong `--tree` cannot run away.
const MAX_DIRS: usize = 100_000;
const MAX_FILES: usize = 2_000_000;
/// Most reads of one file in `smallread` ("small").
const MAX_READS_PER_FILE: u32 = 4096;
/// Time allowed beyond `--seconds` for the last requests to come back.
const GRACE: Duration = Duration::from_secs(30);

/// Where the server listens.
#[derive(Clone, Debug)]
pub enum Target {
    /// A TCP address.
    Tcp(String),
    /// An SCTP association to these addresses (`ADDR[,ADDR...]:PORT`).
    Sctp(envoy_transport::Endpoint),
    /// A unix socket path.
    Unix(PathBuf),
    /// The server in this process over simulated Xen rings.
    XenSim(std::sync::Arc<super::xensim::XenSim>),
}

impl Target {
    fn transport(&self) -> &'static str {
        match self {
            Target::Tcp(_) => "tcp",
            Target::Sctp(_) => "sctp",
            Target::Unix(_) => "unix",
            Target::XenSim(_) => "xen-sim",
        }
    }
}

/// What each operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// walk + getattr (.L) / stat (.u) + clunk of a random file of the tree.
    Metadata,
    /// create + clunk + unlinkat (.L; walk + remove where the server lacks Tunlinkat) /
    /// walk + remove (.u) of a fresh name.
    Create,
    /// walk + open + read all + clunk of a random (small) file of the tree.
    Smallread,
    /// Sequential reads of `count = msize − 24` from one big file.
    Seqread,
    /// Sequential writes of `count = msize − 24` to a new file per connection.
    Seqwrite,
    /// Random block reads (4 KiB) of one big file, opened once per connection.
    Randread,
}

impl Workload {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Metadata => "metadata",
            Workload::Create => "create",
            Workload::Smallread => "smallread",
            Workload::Seqread => "seqread",
            Workload::Seqwrite => "seqwrite",
            Workload::Randread => "randread",
        }
    }

    /// The `--tree`/`--file` used when none is given (the `prepare` layout).
    pub fn default_path(self) -> &'static str {
        match self {
            Workload::Metadata => "meta",
            Workload::Smallread => "small",
            Workload::Create | Workload::Seqwrite => "scratch",
            Workload::Seqread | Workload::Randread => "big",
        }
    }

    fn lists_tree(self) -> bool {
        matches!(self, Workload::Metadata | Workload::Smallread)
    }

    fn reads_file(self) -> bool {
        matches!(self, Workload::Seqread | Workload::Randread)
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server.
    pub target: Target,
    /// 9P2000.L or 9P2000.u.
    pub dialect: Dialect,
    /// Attach name (diod wants its export path).
    pub aname: String,
    /// User name to attach as.
    pub uname: String,
    /// Numeric uid to attach as.
    pub uid: u32,
    /// Group for created files (.L).
    pub gid: u32,
    /// The workload.
    pub workload: Workload,
    /// Connections.
    pub conns: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Run length.
    pub seconds: f64,
    /// Most operations in the whole run.
    pub count: u64,
    /// msize to propose.
    pub msize: u32,
    /// Bytes per seqread/seqwrite/smallread request (default: negotiated msize − 24).
    pub io: Option<u32>,
    /// Bytes per randread request.
    pub block: u32,
    /// The directory (metadata, smallread, create, seqwrite) or file (seqread, randread),
    /// relative to the export.
    pub path: String,
    /// Server process whose CPU time to report.
    pub server_pid: Option<u32>,
    /// Check every read against the `prepare` pattern.
    pub verify: bool,
    /// PRNG seed (files and offsets picked are the same for the same seed).
    pub seed: u64,
    /// Each seqwrite file wraps around after this many bytes.
    pub write_bytes: u64,
    /// Free-form label copied into the report (e.g. the server's name).
    pub label: String,
}

/// What a run measured.
pub struct Outcome {
    /// Operations completed.
    pub ops: u64,
    /// 9P requests answered.
    pub rpcs: u64,
    /// Data bytes read or written.
    pub bytes: u64,
    /// Wall time from the first request to the last reply.
    pub elapsed: f64,
    /// Latency of each operation.
    pub hist: Histogram,
    /// Server CPU seconds (user + system) over the run, if `--server-pid` was given.
    pub server_cpu: Option<f64>,
    /// This process's CPU seconds over the run.
    pub client_cpu: f64,
    /// CPU seconds the whole machine was busy over the run.
    pub machine_busy: f64,
    /// The negotiated msize.
    pub msize: u32,
    /// Bytes per data request (0 for metadata workloads).
    pub io: u32,
}

/// One connection and what its lanes share.
struct Conn {
    c: Client,
    idx: usize,
    /// Size of the file read, or the wrap-around size of the file written.
    file_size: u64,
    /// Bytes per data request.
    io: u32,
    /// Data requests that fit in `file_size`.
    chunks: u64,
    /// The next sequential chunk (seqread, seqwrite).
    cursor: AtomicU64,
    /// Where this connection's sequential pass starts (connections spread over the file).
    first_chunk: u64,
    /// The seqwrite file, to remove at the end.
    written: Option<String>,
    /// The server answered Tunlinkat with EOPNOTSUPP (diod): remove with walk + Tremove.
    no_unlinkat: AtomicBool,
}

/// State shared by all lanes of a run.
struct Shared {
    cfg: Config,
    deadline: Instant,
    issued: AtomicU64,
    stop: AtomicBool,
    paths: Vec<String>,
    write_buf: Bytes,
}

#[derive(Default)]
struct LaneStats {
    ops: u64,
    rpcs: u64,
    bytes: u64,
    hist: Histogram,
}

async fn connect(cfg: &Config) -> Result<Client> {
    let c = match &cfg.target {
        Target::Tcp(addr) => Client::connect_tcp(addr.as_str(), cfg.dialect, cfg.msize).await,
        Target::Sctp(ep) => Client::connect(ep, cfg.dialect, cfg.msize).await,
        Target::Unix(path) => Client::connect_unix(path, cfg.dialect, cfg.msize).await,
        Target::XenSim(host) => Client::over_stream(host.connect()?, cfg.dialect, cfg.msize).await,
    };
    let c = c.with_context(|| format!("connecting to {:?} with {}", cfg.target, cfg.dialect))?;
    if c.dialect() != cfg.dialect {
        bail!("the server answered {} to {}", c.dialect(), cfg.dialect);
    }
    let n_uname = if c.dialect().extended() {
        cfg.uid
    } else {
        NONUNAME
    };
    c.attach(ROOT, &cfg.uname, &cfg.aname, n_uname)
        .await
        .with_context(|| {
            format!(
                "attaching to {:?} as {:?} (uid {})",
                cfg.aname, cfg.uname, cfg.uid
            )
        })?;
    Ok(c)
}

fn is_dotl(c: &Client) -> bool {
    c.dialect() == Dialect::P9P2000L
}

/// Open `fid` read-only in either dialect.
async fn open_read(c: &Client, fid: u32) -> Result<()> {
    if is_dotl(c) {
        c.lopen(fid, P9_DOTL_RDONLY).await?;
    } else {
        c.open(fid, OREAD).await?;
    }
    Ok(())
}

/// Every regular file below `tree`, as paths relative to the root, sorted (so the same
/// seed picks the same files on every server).
async fn list_files(c: &Client, tree: &str) -> Result<Vec<String>> {
    let mut dirs = vec![tree.trim_matches('/').to_owned()];
    let mut files = Vec::new();
    let mut seen_dirs = 0usize;
    while let Some(dir) = dirs.pop() {
        seen_dirs += 1;
        if seen_dirs > MAX_DIRS {
            bail!("more than {MAX_DIRS} directories under {tree:?}");
        }
        c.walk_path(ROOT, LIST, &dir)
            .await
            .with_context(|| format!("walking to {dir:?}"))?;
        open_read(c, LIST)
            .await
            .with_context(|| format!("opening directory {dir:?}"))?;
        let entries: Vec<(String, u8)> = if is_dotl(c) {
            c.readdir(LIST)
                .await?
                .into_iter()
                .map(|e| (e.name, e.qid.ty))
                .collect()
        } else {
            c.read_dir_stats(LIST)
                .await?
                .into_iter()
                .map(|s| (s.name, s.qid.ty))
                .collect()
        };
        c.clunk(LIST).await?;
        for (name, ty) in entries {
            if name == "." || name == ".." {
                continue;
            }
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if ty & QTDIR != 0 {
                dirs.push(path);
            } else if ty & (QTSYMLINK | QTLINK | QTAUTH | QTMOUNT) == 0 {
                files.push(path);
                if files.len() > MAX_FILES {
                    bail!("more than {MAX_FILES} files under {tree:?}");
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Per-connection preparation: open the big file, or make the seqwrite file.
async fn setup(cfg: &Config, c: Client, idx: usize) -> Result<Conn> {
    let mut conn = Conn {
        c,
        idx,
        file_size: 0,
        io: 0,
        chunks: 0,
        cursor: AtomicU64::new(0),
        first_chunk: 0,
        written: None,
        no_unlinkat: AtomicBool::new(false),
    };
    let c = &conn.c;
    let max_io = c.max_io();
    let io = cfg.io.unwrap_or(max_io).min(max_io);
    if io == 0 || cfg.block == 0 || cfg.block > max_io {
        bail!(
            "request size must be 1..={max_io} bytes (msize {})",
            c.msize()
        );
    }
    match cfg.workload {
        Workload::Seqread | Workload::Randread => {
            c.walk_path(ROOT, FILE, &cfg.path)
                .await
                .with_context(|| format!("walking to {:?}", cfg.path))?;
            conn.file_size = if is_dotl(c) {
                c.getattr(FILE, GETATTR_SIZE).await?.size
            } else {
                c.stat(FILE).await?.length
            };
            open_read(c, FILE)
                .await
                .with_context(|| format!("opening {:?}", cfg.path))?;
            conn.io = if cfg.workload == Workload::Seqread {
                io
            } else {
                cfg.block
            };
            if conn.file_size < u64::from(conn.io) {
                bail!(
                    "{:?} has {} bytes; the workload needs at least {}",
                    cfg.path,
                    conn.file_size,
                    conn.io
                );
            }
            conn.chunks = conn.file_size.div_ceil(u64::from(conn.io));
            conn.first_chunk = conn.chunks * idx as u64 / cfg.conns as u64;
        }
        Workload::Seqwrite => {
            let name = format!("seqwrite-{}-{idx}", std::process::id());
            c.walk_path(ROOT, DIR, &cfg.path)
                .await
                .with_context(|| format!("walking to {:?}", cfg.path))?;
            c.walk(DIR, FILE, &[]).await?;
            if is_dotl(c) {
                let flags = P9_DOTL_RDWR | P9_DOTL_CREATE | P9_DOTL_TRUNC;
                c.lcreate(FILE, &name, flags, 0o644, cfg.gid).await
            } else {
                c.create(FILE, &name, 0o644, ORDWR | OTRUNC, "").await
            }
            .with_context(|| format!("creating {}/{name}", cfg.path))?;
            conn.written = Some(name);
            conn.io = io;
            conn.chunks = (cfg.write_bytes / u64::from(io)).max(1);
            conn.file_size = conn.chunks * u64::from(io);
        }
        Workload::Create => {
            c.walk_path(ROOT, DIR, &cfg.path)
                .await
                .with_context(|| format!("walking to {:?}", cfg.path))?;
        }
        Workload::Smallread => conn.io = io,
        Workload::Metadata => {}
    }
    Ok(conn)
}

/// Undo `setup`: remove the seqwrite file, clunk what is left.
async fn teardown(cfg: &Config, conn: &Conn) -> Result<()> {
    let c = &conn.c;
    if conn.written.is_some() {
        // Tremove works in every dialect (diod has no Tunlinkat); it clunks FILE.
        c.remove(FILE).await?;
    } else if cfg.workload.reads_file() {
        c.clunk(FILE).await?;
    }
    if matches!(cfg.workload, Workload::Create | Workload::Seqwrite) {
        c.clunk(DIR).await?;
    }
    c.clunk(ROOT).await?;
    Ok(())
}

/// One operation; returns (data bytes, requests sent).
async fn one_op(
    sh: &Shared,
    conn: &Conn,
    lane: usize,
    seq: u64,
    rng: &mut Rng,
) -> Result<(u64, u64)> {
    let c = &conn.c;
    let f0 = LANE_FIDS + 4 * lane as u32;
    let dotl = is_dotl(c);
    match sh.cfg.workload {
        Workload::Metadata => {
            let path = &sh.paths[rng.below(sh.paths.len() as u64) as usize];
            c.walk_path(ROOT, f0, path)
                .await
                .with_context(|| format!("walking to {path:?}"))?;
            if dotl {
                c.getattr(f0, GETATTR_BASIC).await?;
            } else {
                c.stat(f0).await?;
            }
            c.clunk(f0).await?;
            Ok((0, 3))
        }
        Workload::Create => {
            let name = format!("c{}-{}-{lane}-{seq}", std::process::id(), conn.idx);
            c.walk(DIR, f0, &[]).await?;
            if dotl {
                let flags = P9_DOTL_RDWR | P9_DOTL_CREATE | P9_DOTL_EXCL;
                c.lcreate(f0, &name, flags, 0o644, sh.cfg.gid)
                    .await
                    .with_context(|| format!("creating {name:?}"))?;
                c.clunk(f0).await?;
                if !conn.no_unlinkat.load(Ordering::Relaxed) {
                    match c.unlinkat(DIR, &name, 0).await {
                        Ok(()) => return Ok((0, 4)),
                        // As Linux does: a server without Tunlinkat gets walk + Tremove.
                        Err(e) if e.errno() == Some(EOPNOTSUPP) => {
                            conn.no_unlinkat.store(true, Ordering::Relaxed);
                        }
                        Err(e) => {
                            return Err(
                                anyhow::Error::from(e).context(format!("removing {name:?}"))
                            );
                        }
                    }
                }
                c.walk(DIR, f0, &[&name]).await?;
                c.remove(f0)
                    .await
                    .with_context(|| format!("removing {name:?}"))?;
                Ok((0, 5))
            } else {
                c.create(f0, &name, 0o644, ORDWR, "")
                    .await
                    .with_context(|| format!("creating {name:?}"))?;
                c.clunk(f0).await?;
                c.walk(DIR, f0, &[&name]).await?;
                c.remove(f0)
                    .await
                    .with_context(|| format!("removing {name:?}"))?;
                Ok((0, 5))
            }
        }
        Workload::Smallread => {
            let path = &sh.paths[rng.below(sh.paths.len() as u64) as usize];
            c.walk_path(ROOT, f0, path)
                .await
                .with_context(|| format!("walking to {path:?}"))?;
            open_read(c, f0)
                .await
                .with_context(|| format!("opening {path:?}"))?;
            let max = conn.io;
            let mut offset = 0u64;
            let mut reads = 0u32;
            loop {
                if reads == MAX_READS_PER_FILE {
                    bail!("{path:?} is not small: still data after {reads} reads");
                }
                let data = c.read_chunk(f0, offset, max).await?;
                reads += 1;
                if sh.cfg.verify {
                    check_pattern(&data, offset).with_context(|| format!("reading {path:?}"))?;
                }
                offset += data.len() as u64;
                if data.len() < max as usize {
                    break;
                }
            }
            c.clunk(f0).await?;
            Ok((offset, 3 + u64::from(reads)))
        }
        Workload::Seqread | Workload::Randread => {
            let io = u64::from(conn.io);
            let chunk = if sh.cfg.workload == Workload::Seqread {
                (conn.first_chunk + conn.cursor.fetch_add(1, Ordering::Relaxed)) % conn.chunks
            } else {
                rng.below(conn.file_size / io)
            };
            let offset = chunk * io;
            let want = io.min(conn.file_size - offset);
            let data = c.read_chunk(FILE, offset, want as u32).await?;
            if data.len() as u64 != want {
                bail!(
                    "read of {want} bytes at {offset} returned {} (file changed?)",
                    data.len()
                );
            }
            if sh.cfg.verify {
                check_pattern(&data, offset)?;
            }
            Ok((want, 1))
        }
        Workload::Seqwrite => {
            let chunk = conn.cursor.fetch_add(1, Ordering::Relaxed) % conn.chunks;
            let offset = chunk * u64::from(conn.io);
            let data = sh.write_buf.slice(..conn.io as usize);
            let n = c.write_chunk(FILE, offset, data).await?;
            if n != conn.io {
                bail!("write of {} bytes at {offset} wrote {n}", conn.io);
            }
            Ok((u64::from(n), 1))
        }
    }
}

async fn lane(sh: Arc<Shared>, conn: Arc<Conn>, lane: usize) -> Result<LaneStats> {
    let mut st = LaneStats::default();
    let seed = sh.cfg.seed ^ ((conn.idx as u64) << 32) ^ lane as u64;
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut seq = 0u64;
    loop {
        if sh.stop.load(Ordering::Relaxed) || Instant::now() >= sh.deadline {
            break;
        }
        if sh.issued.fetch_add(1, Ordering::Relaxed) >= sh.cfg.count {
            break;
        }
        let t0 = Instant::now();
        match one_op(&sh, &conn, lane, seq, &mut rng).await {
            Ok((bytes, rpcs)) => {
                st.hist.record(t0.elapsed());
                st.ops += 1;
                st.rpcs += rpcs;
                st.bytes += bytes;
            }
            Err(e) => {
                sh.stop.store(true, Ordering::Relaxed);
                return Err(e.context(format!(
                    "{} on connection {} lane {lane}",
                    sh.cfg.workload.name(),
                    conn.idx
                )));
            }
        }
        seq += 1;
    }
    Ok(st)
}

fn server_cpu(cfg: &Config) -> Result<Option<f64>> {
    cfg.server_pid.map(process_cpu_seconds).transpose()
}

/// Run the workload described by `cfg`.
pub async fn run(cfg: Config) -> Result<Outcome> {
    if cfg.conns == 0 || cfg.depth == 0 || cfg.depth > 16_384 {
        bail!("--conns must be at least 1 and --depth 1..=16384");
    }
    if !(cfg.seconds > 0.0 && cfg.seconds <= 86_400.0) {
        bail!("--seconds must be in (0, 86400]");
    }
    let mut clients = Vec::with_capacity(cfg.conns);
    for _ in 0..cfg.conns {
        clients.push(connect(&cfg).await?);
    }
    let msize = clients[0].msize();
    let paths = if cfg.workload.lists_tree() {
        let paths = list_files(&clients[0], &cfg.path)
            .await
            .with_context(|| format!("listing {:?}", cfg.path))?;
        if paths.is_empty() {
            bail!("no regular files under {:?}", cfg.path);
        }
        paths
    } else {
        Vec::new()
    };
    let mut conns = Vec::with_capacity(cfg.conns);
    for (idx, c) in clients.into_iter().enumerate() {
        conns.push(Arc::new(setup(&cfg, c, idx).await?));
    }
    let io = conns[0].io;
    let mut write_buf = vec![0u8; conns[0].io as usize];
    fill_pattern(&mut write_buf, 0);

    let seconds = cfg.seconds;
    let cpu0 = server_cpu(&cfg)?;
    let client0 = super::util::self_cpu_seconds()?;
    let busy0 = super::util::machine_busy_seconds()?;
    let t0 = Instant::now();
    let sh = Arc::new(Shared {
        cfg,
        deadline: t0 + Duration::from_secs_f64(seconds),
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        paths,
        write_buf: Bytes::from(write_buf),
    });
    let mut lanes = tokio::task::JoinSet::new();
    for conn in &conns {
        for l in 0..sh.cfg.depth {
            lanes.spawn(lane(sh.clone(), conn.clone(), l));
        }
    }
    let mut total = LaneStats::default();
    let mut first_err: Option<anyhow::Error> = None;
    let collect = async {
        while let Some(joined) = lanes.join_next().await {
            match joined {
                Ok(Ok(st)) => {
                    total.ops += st.ops;
                    total.rpcs += st.rpcs;
                    total.bytes += st.bytes;
                    total.hist.merge(&st.hist);
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    sh.stop.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(anyhow::anyhow!("a lane panicked: {e}"));
                }
            }
        }
    };
    let timed_out = tokio::time::timeout(Duration::from_secs_f64(seconds) + GRACE, collect)
        .await
        .is_err();
    let elapsed = t0.elapsed().as_secs_f64();
    let client_cpu = super::util::self_cpu_seconds()? - client0;
    let machine_busy = super::util::machine_busy_seconds()? - busy0;
    let cpu1 = server_cpu(&sh.cfg).context("the server process is gone after the run")?;
    if timed_out {
        lanes.abort_all();
        bail!(
            "{}: requests still unanswered {GRACE:?} after the {seconds} s run ended",
            sh.cfg.workload.name()
        );
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    for conn in &conns {
        teardown(&sh.cfg, conn)
            .await
            .with_context(|| format!("cleaning up connection {}", conn.idx))?;
    }
    if total.ops == 0 {
        bail!("{}: no operation completed", sh.cfg.workload.name());
    }
    Ok(Outcome {
        ops: total.ops,
        rpcs: total.rpcs,
        bytes: total.bytes,
        elapsed,
        hist: total.hist,
        server_cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
        client_cpu,
        machine_busy,
        msize,
        io: if sh.cfg.workload.reads_file() || sh.cfg.workload == Workload::Seqwrite {
            io
        } else {
            0
        },
    })
}

impl Outcome {
    fn per_s(&self, n: u64) -> f64 {
        n as f64 / self.elapsed
    }

    fn cpu_per_gib(&self) -> Option<f64> {
        let gib = self.bytes as f64 / f64::from(1u32 << 30);
        self.server_cpu.filter(|_| gib > 0.0).map(|s| s / gib)
    }

    /// Machine CPU time spent neither by the server nor by this client: other processes
    /// (noise) plus interrupt work the kernel charges to no process. Only meaningful with
    /// `--server-pid`.
    fn other_cpu(&self) -> Option<f64> {
        self.server_cpu
            .map(|s| (self.machine_busy - s - self.client_cpu).max(0.0))
    }

    fn cpu_us_per_op(&self) -> Option<f64> {
        self.server_cpu.map(|s| s * 1e6 / self.ops as f64)
    }

    /// The report as one JSON object on one line.
    pub fn json(&self, cfg: &Config) -> String {
        json_object(vec![
            ("label", Json::from(cfg.label.as_str())),
            ("workload", Json::from(cfg.workload.name())),
            ("dialect", Json::from(cfg.dialect.as_str())),
            ("transport", Json::from(cfg.target.transport())),
            ("conns", Json::Int(cfg.conns as u64)),
            ("depth", Json::Int(cfg.depth as u64)),
            ("msize", Json::Int(u64::from(self.msize))),
            ("io", Json::Int(u64::from(self.io))),
            ("seconds", Json::Num(self.elapsed)),
            ("ops", Json::Int(self.ops)),
            ("rpcs", Json::Int(self.rpcs)),
            ("bytes", Json::Int(self.bytes)),
            ("ops_per_s", Json::Num(self.per_s(self.ops))),
            ("rpcs_per_s", Json::Num(self.per_s(self.rpcs))),
            (
                "mb_per_s",
                Json::Num(self.bytes as f64 / self.elapsed / 1e6),
            ),
            ("p50_us", Json::Num(self.hist.quantile(0.50) as f64 / 1e3)),
            ("p99_us", Json::Num(self.hist.quantile(0.99) as f64 / 1e3)),
            ("server_cpu_s", Json::from(self.server_cpu)),
            ("server_cpu_s_per_gib", Json::from(self.cpu_per_gib())),
            ("server_cpu_us_per_op", Json::from(self.cpu_us_per_op())),
            ("client_cpu_s", Json::Num(self.client_cpu)),
            ("machine_busy_s", Json::Num(self.machine_busy)),
            ("other_cpu_s", Json::from(self.other_cpu())),
        ])
    }

    /// The report as one human-readable line.
    pub fn text(&self, cfg: &Config) -> String {
        let mut s = format!(
            "{:<9} {} {:<4} {}x{:<3} {:>10.0} ops/s {:>9.1} MB/s  p50 {:>8.1} us  p99 {:>8.1} us",
            cfg.workload.name(),
            cfg.dialect,
            cfg.target.transport(),
            cfg.conns,
            cfg.depth,
            self.per_s(self.ops),
            self.bytes as f64 / self.elapsed / 1e6,
            self.hist.quantile(0.50) as f64 / 1e3,
            self.hist.quantile(0.99) as f64 / 1e3,
        );
        if let Some(cpu) = self.server_cpu {
            s += &format!("  server {cpu:.2} CPU s");
            if let Some(g) = self.cpu_per_gib() {
                s += &format!(" ({g:.2} s/GiB)");
            } else if let Some(u) = self.cpu_us_per_op() {
                s += &format!(" ({u:.1} us/op)");
            }
        }
        s += &format!("  client {:.2} CPU s", self.client_cpu);
        if let Some(o) = self.other_cpu() {
            s += &format!("  other {o:.2} CPU s");
        }
        s += &format!(
            "  [{} ops in {:.2} s, msize {}]",
            self.ops, self.elapsed, self.msize
        );
        if !cfg.label.is_empty() {
            s = format!("{}: {s}", cfg.label);
        }
        s
    }
}
