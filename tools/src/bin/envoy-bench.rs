//! `envoy-bench`: a 9P load generator and the performance baseline tools.
//!
//! ```text
//! envoy-bench --tcp ADDR | --sctp ADDR[,ADDR...]:PORT | --unix PATH
//!             | --xen-sim DIR [--rings 2] [--one-request-per-ring] [--read-delay-us US]
//!             --workload W  [--dialect L|u] [--aname A]
//!             [--conns N] [--depth M] [--seconds S] [--count C] [--msize B]
//!             [--file NAME | --tree DIR] [--server-pid PID] [--verify] [--json]
//! envoy-bench prepare DIR [--meta-files 10000] [--small-files 1000] [--big-mib 1024]
//! envoy-bench loopback [--seconds S] [--bufsize 1048576] [--json]
//! envoy-bench objstore (--dir DIR | --endpoint EP [--replicated]) [--size 4194304]
//!             [--count 256] [--jobs 4] [--drop-caches] [--verify] [--json]
//! ```
//!
//! Workloads: `metadata` (walk + getattr/stat + clunk of random files of a tree),
//! `create` (create + clunk + unlinkat/remove of fresh names), `smallread` (walk + open +
//! read whole + clunk of small files), `seqread` / `seqwrite` (msize − 24 bytes per
//! request, sequential), `randread` (random 4 KiB reads of one file opened once per
//! connection). N connections each keep M requests in flight; a run ends after S seconds
//! or C operations. Reports ops/s, MB/s (10^6 bytes), p50/p99 latency per operation, and
//! the server's CPU seconds (from `/proc/PID/stat`) with CPU s/GiB for data workloads.
//! `tools/bench/compare.sh` drives it against envoyd and diod; see `docs/benchmarks.md`.

#[path = "../bench/mod.rs"]
mod bench;

use anyhow::{Context, Result, bail};
use bench::run::{Config, Target, Workload};
use clap::{Args, Parser, Subcommand};
use envoy_protocol::Dialect;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "envoy-bench",
    version,
    about = "9P load generator: N connections x M requests in flight; the loopback ceiling",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Server TCP address
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with_all = ["unix", "sctp"],
        required_unless_present_any = ["unix", "xen_sim", "sctp"]
    )]
    tcp: Option<String>,
    /// Server SCTP addresses (one association per connection, multi-homed when several)
    #[arg(long, value_name = "ADDR[,ADDR...]:PORT", conflicts_with = "unix")]
    sctp: Option<String>,
    /// Server unix socket
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Serve DIR in this process over simulated Xen 9pfs rings (2 rings of order 9 per
    /// connection, a model of Linux's frontend) and measure that
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tcp", "unix", "sctp"])]
    xen_sim: Option<PathBuf>,
    /// With --xen-sim: take a ring's next request only after answering the previous one (how
    /// QEMU's and xen-9pfsd's backends work), for comparison
    #[arg(long, requires = "xen_sim")]
    one_request_per_ring: bool,
    /// With --xen-sim: rings per device (Linux uses 2)
    #[arg(long, requires = "xen_sim", default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=8))]
    rings: u8,
    /// With --xen-sim: delay every file read by this many microseconds in the server, a model
    /// of storage whose latency is not this machine's CPU (a disk, a remote owner)
    #[arg(long, requires = "xen_sim", value_name = "US")]
    read_delay_us: Option<u64>,
    /// Protocol dialect: L (9P2000.L) or u (9P2000.u)
    #[arg(long, default_value = "L", value_parser = parse_dialect)]
    dialect: Dialect,
    /// Attach name (diod: its export path; envoyd: empty or its export path)
    #[arg(long, default_value = "")]
    aname: String,
    /// User name to attach as [default: $USER, else root for uid 0]
    #[arg(long)]
    uname: Option<String>,
    /// Numeric uid to attach as [default: the caller's]
    #[arg(long)]
    uid: Option<u32>,
    /// What each operation does
    #[arg(long, value_enum, required = true)]
    workload: Option<Workload>,
    /// Connections
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Requests in flight per connection
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Run for this long (seconds)
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// ... or until this many operations completed
    #[arg(long, default_value_t = 100_000_000)]
    count: u64,
    /// msize to propose
    #[arg(long, default_value_t = 1 << 20)]
    msize: u32,
    /// Bytes per seqread/seqwrite/smallread request [default: msize - 24]
    #[arg(long)]
    io: Option<u32>,
    /// Bytes per randread request
    #[arg(long, default_value_t = 4096)]
    block: u32,
    /// File read by seqread/randread, relative to the export [default: big]
    #[arg(long, conflicts_with = "tree")]
    file: Option<String>,
    /// Directory for metadata (default meta), smallread (small), create and seqwrite (scratch)
    #[arg(long)]
    tree: Option<String>,
    /// Server process whose CPU time (utime + stime) to report
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Check every byte read against the `prepare` pattern (costs client CPU)
    #[arg(long)]
    verify: bool,
    /// Seed for picking files and offsets
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// seqwrite: each connection's file wraps around after this many MiB
    #[arg(long, default_value_t = 256)]
    write_mib: u64,
    /// Client runtime threads [default: one per CPU]
    #[arg(long)]
    threads: Option<usize>,
    /// Label copied into the report (e.g. the server's name)
    #[arg(long, default_value = "")]
    label: String,
    /// Print one JSON object per run instead of a line of text
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the file tree the workloads use (meta/, small/, big, scratch/)
    Prepare {
        /// Directory to fill (the server's export)
        dir: PathBuf,
        /// Files under meta/
        #[arg(long, default_value_t = 10_000)]
        meta_files: u32,
        /// Files per meta/dNNN directory
        #[arg(long, default_value_t = 100)]
        per_dir: u32,
        /// Files under small/
        #[arg(long, default_value_t = 1000)]
        small_files: u32,
        /// Size of each small/ file in bytes
        #[arg(long, default_value_t = 4096)]
        small_size: u32,
        /// Size of big in MiB
        #[arg(long, default_value_t = 1024)]
        big_mib: u64,
    },
    /// Measure raw TCP bandwidth over 127.0.0.1 between two processes (the ceiling)
    Loopback {
        /// Measure for this long (seconds)
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Bytes per read/write call
        #[arg(long, default_value_t = 1 << 20)]
        bufsize: usize,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
        /// (internal) be the sender, connecting to ADDR
        #[arg(long, hide = true, value_name = "ADDR")]
        send_to: Option<String>,
    },
    /// Object-layer put/get throughput: a local store (--dir) or a storage service (--endpoint)
    Objstore {
        /// A local store in this directory (through the library, no network)
        #[arg(long, value_name = "DIR", required_unless_present = "endpoint")]
        dir: Option<PathBuf>,
        /// A storage service (e.g. tcp:127.0.0.1:5650)
        #[arg(long, value_name = "ENDPOINT", conflicts_with = "dir")]
        endpoint: Option<String>,
        /// Replicated puts and gets (the cluster places R copies)
        #[arg(long, requires = "endpoint")]
        replicated: bool,
        /// Bytes per object
        #[arg(long, default_value_t = 4 << 20)]
        size: usize,
        /// Objects
        #[arg(long, default_value_t = 256)]
        count: usize,
        /// Puts/gets in flight
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// Drop the page cache between puts and gets (root)
        #[arg(long)]
        drop_caches: bool,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
        /// Re-hash every object read (inside the timed loop)
        #[arg(long)]
        verify: bool,
    },
    /// What Envoy images cost: snapshot/fork latency by image size, space of forks
    #[command(subcommand)]
    Image(ImageCmd),
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build an image of FILES files of FILE_KIB each in a local store at DIR and time
    /// snapshots (after a 4 KiB write, and of an unchanged image), forks and a fork's first open
    Snapshot {
        /// A local store in this directory (created)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Files in the image
        #[arg(long, default_value_t = 1000)]
        files: usize,
        /// KiB per file
        #[arg(long, default_value_t = 4)]
        file_kib: usize,
        /// Snapshots and forks timed
        #[arg(long, default_value_t = 50)]
        reps: usize,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Build a base image of BASE_MIB, fork it FORKS times, rewrite CHANGE_PCT % of every
    /// fork in WRITE_KIB writes, and report the store's bytes
    Space {
        /// A local store in this directory (created)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The base image's size in MiB (64 MiB files)
        #[arg(long, default_value_t = 1024)]
        base_mib: usize,
        /// Forks
        #[arg(long, default_value_t = 10)]
        forks: usize,
        /// Percent of each fork rewritten
        #[arg(long, default_value_t = 1.0)]
        change_pct: f64,
        /// KiB per write of the change (64: whole blocks; 4: small scattered writes)
        #[arg(long, default_value_t = 64)]
        write_kib: usize,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
}

fn parse_dialect(s: &str) -> Result<Dialect, String> {
    match s {
        "L" | "l" | "9P2000.L" => Ok(Dialect::P9P2000L),
        "u" | "9P2000.u" => Ok(Dialect::P9P2000U),
        _ => Err(format!("unknown dialect {s:?} (expected L or u)")),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Prepare {
            dir,
            meta_files,
            per_dir,
            small_files,
            small_size,
            big_mib,
        }) => bench::prepare::prepare(
            &dir,
            &bench::prepare::Layout {
                meta_files,
                per_dir,
                small_files,
                small_size,
                big_mib,
            },
        ),
        Some(Cmd::Loopback {
            seconds,
            bufsize,
            json,
            send_to,
        }) => {
            if !(seconds > 0.0 && seconds <= 3600.0) || bufsize == 0 || bufsize > 64 << 20 {
                bail!("--seconds must be in (0, 3600] and --bufsize in 1..=64 MiB");
            }
            match send_to {
                Some(addr) => bench::loopback::send(&addr, seconds, bufsize),
                None => bench::loopback::measure(seconds, bufsize, json),
            }
        }
        Some(Cmd::Objstore {
            dir,
            endpoint,
            replicated,
            size,
            count,
            jobs,
            drop_caches,
            json,
            verify,
        }) => {
            let target = match (dir, endpoint) {
                (Some(d), _) => bench::objstore::ObjTarget::Local(d),
                (None, Some(e)) => bench::objstore::ObjTarget::Remote(
                    e.parse().with_context(|| format!("bad --endpoint {e:?}"))?,
                    replicated,
                ),
                (None, None) => bail!("--dir or --endpoint is required"),
            };
            bench::objstore::run(bench::objstore::ObjBench {
                target,
                size,
                count,
                jobs,
                drop_caches,
                json,
                verify,
            })
        }
        Some(Cmd::Image(ImageCmd::Snapshot {
            dir,
            files,
            file_kib,
            reps,
            json,
        })) => bench::image::snapshot(
            dir,
            bench::image::Shape {
                files,
                file_bytes: file_kib << 10,
            },
            reps,
            json,
        ),
        Some(Cmd::Image(ImageCmd::Space {
            dir,
            base_mib,
            forks,
            change_pct,
            write_kib,
            json,
        })) => bench::image::space(
            dir,
            bench::image::Space {
                base_mib,
                forks,
                change_pct,
                write_bytes: write_kib << 10,
            },
            json,
        ),
        None => run(cli.run),
    }
}

fn run(a: RunArgs) -> Result<()> {
    let workload = a.workload.context("--workload is required")?;
    let target = match (a.tcp, a.sctp, a.unix, a.xen_sim) {
        (Some(addr), None, None, None) => Target::Tcp(addr),
        (None, Some(addrs), None, None) => Target::Sctp(
            format!("sctp:{addrs}")
                .parse()
                .with_context(|| format!("bad --sctp {addrs:?}"))?,
        ),
        (None, None, Some(path), None) => Target::Unix(path),
        (None, None, None, Some(dir)) => {
            Target::XenSim(std::sync::Arc::new(bench::xensim::XenSim::new(
                &dir,
                a.rings.into(),
                a.one_request_per_ring,
                a.read_delay_us.map(std::time::Duration::from_micros),
            )?))
        }
        _ => bail!(
            "give exactly one of --tcp ADDR, --sctp ADDRS:PORT, --unix PATH and --xen-sim DIR"
        ),
    };
    let uid = a.uid.unwrap_or_else(|| rustix::process::geteuid().as_raw());
    let uname = a.uname.unwrap_or_else(|| match std::env::var("USER") {
        Ok(u) if !u.is_empty() => u,
        _ if uid == 0 => "root".to_owned(),
        _ => uid.to_string(),
    });
    let cfg = Config {
        target,
        dialect: a.dialect,
        aname: a.aname,
        uname,
        uid,
        gid: rustix::process::getegid().as_raw(),
        workload,
        conns: a.conns,
        depth: a.depth,
        seconds: a.seconds,
        count: a.count,
        msize: a.msize,
        io: a.io,
        block: a.block,
        path: a
            .file
            .or(a.tree)
            .unwrap_or_else(|| workload.default_path().to_owned()),
        server_pid: a.server_pid,
        verify: a.verify,
        seed: a.seed,
        write_bytes: a.write_mib.saturating_mul(1 << 20),
        label: a.label,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("starting the runtime")?;
    let outcome = rt.block_on(bench::run::run(cfg.clone()))?;
    if a.json {
        println!("{}", outcome.json(&cfg));
    } else {
        println!("{}", outcome.text(&cfg));
    }
    Ok(())
}
