//! `envoy-mount`: mount an Envoy export over SCTP (or TCP, or a unix socket) with the Linux
//! kernel's 9P client.
//!
//! ```text
//! envoy-mount [-o OPTIONS] [--dry-run] ENDPOINT MOUNTPOINT
//! envoy-mount -o version=9p2000.L,msize=524288 sctp:10.0.1.1,10.0.2.1:5640 /mnt/envoy
//! ```
//!
//! Linux's 9P client has no SCTP transport, but with `trans=fd` it uses a connected
//! descriptor it is given. Like `mount.diod`, this opens the connection (an SCTP association,
//! multi-homed when the endpoint lists several addresses, with Envoy's socket settings:
//! `SCTP_NODELAY`, streams, buffers that hold the largest message), leaves the descriptor
//! open across `exec`, and execs `mount -t 9p -o trans=fd,rfdno=N,wfdno=N,OPTIONS ENDPOINT
//! MOUNTPOINT`. The kernel keeps the association after `mount` exits; it ends at unmount.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;
use envoy_transport::Endpoint;

#[derive(Parser)]
#[command(
    name = "envoy-mount",
    version,
    about = "Mount an Envoy export over SCTP (or TCP, unix) with the kernel's 9P client (trans=fd)"
)]
struct Args {
    /// 9P mount options passed on (version=, msize=, aname=, cache=, ...); trans, rfdno and
    /// wfdno are set by envoy-mount
    #[arg(short = 'o', value_name = "OPTIONS", default_value = "")]
    options: String,
    /// The mount program to exec
    #[arg(long, value_name = "PROGRAM", default_value = "mount")]
    mount_program: PathBuf,
    /// Connect, print the mount command, and exit without mounting
    #[arg(long)]
    dry_run: bool,
    /// sctp:ADDR[,ADDR...]:PORT, tcp:ADDR:PORT or unix:PATH
    endpoint: String,
    /// Where to mount
    mountpoint: PathBuf,
}

/// Open the connection the kernel will use.
async fn open(ep: &Endpoint) -> Result<OwnedFd> {
    Ok(match ep {
        Endpoint::Sctp(addrs) => envoy_transport::sctp::associate(addrs).await?.0,
        Endpoint::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            s.into_std()?.into()
        }
        Endpoint::Unix(path) => tokio::net::UnixStream::connect(path)
            .await?
            .into_std()?
            .into(),
        Endpoint::Fd { .. } => {
            bail!("an fd: endpoint is already a descriptor: use mount -t 9p -o trans=fd directly")
        }
    })
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("envoy-mount: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let ep: Endpoint = args
        .endpoint
        .parse()
        .with_context(|| format!("bad endpoint {:?}", args.endpoint))?;
    for opt in args.options.split(',').filter(|o| !o.is_empty()) {
        let name = opt.split('=').next().unwrap_or(opt);
        if matches!(name, "trans" | "rfdno" | "wfdno" | "port") {
            bail!("option {opt:?} is set by envoy-mount; leave it out");
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start the I/O runtime")?;
    let fd = runtime
        .block_on(open(&ep))
        .with_context(|| format!("cannot connect to {ep}"))?;
    drop(runtime);
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty())
        .context("cannot pass the descriptor to mount")?;
    let n = fd.as_raw_fd();
    let mut options = format!("trans=fd,rfdno={n},wfdno={n}");
    if !args.options.is_empty() {
        options.push(',');
        options.push_str(&args.options);
    }
    let mut cmd = Command::new(&args.mount_program);
    cmd.args(["-t", "9p", "-o", &options])
        .arg(ep.to_string())
        .arg(&args.mountpoint);
    if args.dry_run {
        println!("{cmd:?}");
        return Ok(());
    }
    // exec only returns on failure; the descriptor (kept open by `fd`) is the mount's.
    let err = cmd.exec();
    drop(fd);
    Err(err).with_context(|| format!("cannot run {}", args.mount_program.display()))
}
