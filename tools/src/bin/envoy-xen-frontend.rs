//! `envoy-xen-frontend`: play a 9pfs frontend — correct or hostile — in this Xen domain
//! (normally dom0) against a real 9pfs backend, through `/dev/xen/gntalloc` and
//! `/dev/xen/evtchn`. A test and diagnostic tool: does the backend serve a correct frontend,
//! and does it disconnect a broken one (state Closing, reason in `error/<backend>/error`)
//! while everything else keeps running?
//!
//! ```text
//! envoy-xen-frontend --mode good --file NAME [DEVICE] [--rings N] [--order N] [--expect-md5 HEX]
//! envoy-xen-frontend --mode bad-order|bogus-ref|bad-indexes|oversize [DEVICE]
//! DEVICE: [--devid N | --tag T]                       an existing device of this domain
//!       | --create --path DIR [--tag T] [--devid N] [--backend-domain D] [--kind 9pfs|xen_9pfs]
//! ```
//!
//! The work is in [`envoy_tools::xenfront`]; this file parses the command line, opens the
//! devices and xenstore (`XENSTORED_PATH`, else xenstored's socket, else `/dev/xen/xenbus`),
//! prints progress on stderr and one `ENVOY-FE: PASS ...` or `ENVOY-FE: FAIL ...` line on
//! stdout, and exits 0 or 1 accordingly.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use envoy_tools::xenfront::{self, CreateSpec, DeviceChoice, Mode, Options, Verdict};
use envoy_tools::xl::{self, Kind, escape_controls};
use envoy_xen::evtchn::EvtchnDev;
use envoy_xen::grant::GntAlloc;
use envoy_xen::xenstore::Xenstore;

const AFTER_HELP: &str = "\
Modes:
  good         Linux's handshake, then Tversion, Tattach, Twalk, Tlopen and Tread of --file through
               the rings; prints its length and md5; then closes (Closing, Closed)
  bad-order    a valid setup in xenstore, but ring 0's intf page announces ring_order 12
  bogus-ref    ring 1's ring-ref is a grant never made
  bad-indexes  once connected, ring 0's out_prod claims 1 GiB of requests
  oversize     once connected, a request on ring 0 whose 9P size exceeds the ring
A hostile mode passes when the backend goes Closing (5) with a reason in
/local/domain/<backend>/error/backend/<kind>/<me>/<devid>/error within --timeout.

The device: an existing one of this domain (/local/domain/<me>/device/9pfs/<devid>, e.g. made by
`envoy-xl attach` for a guest), chosen by --devid or --tag or the only one; or, with --create,
one this tool writes as libxl would (needs dom0) and removes at the end.

Needs the xen-gntalloc and xen-evtchn modules (/dev/xen/gntalloc, /dev/xen/evtchn) and root.
This domain must not run the kernel's own 9pfs frontend (9pnet_xen): it would take the device.
gntalloc allows 1024 grants in all by default: 2 rings of order 4 use 34.
xenstore is reached through $XENSTORED_PATH if set, else xenstored's socket, else /dev/xen/xenbus.

Example (dom0, envoyd --xen running):
  envoy-xen-frontend --create --path /srv/share --mode good --file hello.txt
  envoy-xen-frontend --create --path /srv/share --mode bad-order

Exit status: 0 when the line printed is ENVOY-FE: PASS, 1 otherwise (usage errors too).";

#[derive(Parser)]
#[command(
    name = "envoy-xen-frontend",
    version,
    about = "Play a 9pfs frontend (correct or hostile) in this Xen domain against a real backend",
    after_help = AFTER_HELP
)]
struct Cli {
    /// What to do: good, bad-order, bogus-ref, bad-indexes or oversize
    #[arg(long, value_parser = parse_mode)]
    mode: Mode,
    /// good: the file to read, relative to the share's root
    #[arg(long, value_name = "NAME")]
    file: Option<String>,
    /// good: fail unless the file's md5 is this (32 hex digits)
    #[arg(long, value_name = "HEX")]
    expect_md5: Option<String>,
    /// The device index [default: the only device, or the lowest free one with --create]
    #[arg(long, value_name = "N")]
    devid: Option<u32>,
    /// The device's tag (with --create: the tag to give it)
    #[arg(long, value_name = "T")]
    tag: Option<String>,
    /// Create the device first (as libxl would; needs dom0), and remove it at the end
    #[arg(long, requires = "path")]
    create: bool,
    /// With --create: the directory the backend shares (in the backend's domain)
    #[arg(long, value_name = "DIR", requires = "create")]
    path: Option<String>,
    /// With --create: the backend's domain id
    #[arg(long, value_name = "D", default_value_t = 0, requires = "create")]
    backend_domain: u16,
    /// With --create: 9pfs (xl type=qemu) or xen_9pfs (xl type=xen_9pfsd)
    #[arg(long, default_value = "9pfs", value_parser = parse_kind, requires = "create")]
    kind: Kind,
    /// Rings to publish
    #[arg(long, value_name = "N", default_value_t = 2)]
    rings: u32,
    /// Their order (1..=9; data pages per ring: 2^order)
    #[arg(long, value_name = "N", default_value_t = 4)]
    order: u32,
    /// Bound on each wait (seconds, or e.g. 500ms)
    #[arg(long, value_name = "SECS", default_value = "20", value_parser = xl::parse_timeout)]
    timeout: Duration,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
}

impl Cli {
    fn options(&self) -> Options {
        let device = if self.create {
            DeviceChoice::Create(CreateSpec {
                devid: self.devid,
                tag: self
                    .tag
                    .clone()
                    .unwrap_or_else(|| format!("envoy-fe-{}", self.mode)),
                path: self.path.clone().unwrap_or_default(),
                backend_domid: self.backend_domain,
                kind: self.kind,
            })
        } else {
            DeviceChoice::Existing {
                devid: self.devid,
                tag: self.tag.clone(),
            }
        };
        Options {
            file: self.file.clone(),
            expect_md5: self.expect_md5.clone(),
            rings: self.rings,
            order: self.order,
            timeout: self.timeout,
            ..Options::new(self.mode, device)
        }
    }
}

fn main() -> ExitCode {
    let cli: Cli = match envoy_tools::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let opts = cli.options();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(cli.mode, &format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(&opts)) {
        Ok(verdict) => {
            println!("{verdict}");
            if verdict.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(cli.mode, &e),
    }
}

/// Report a run that could not judge the backend: the reason on stderr and a FAIL line.
fn fail(mode: Mode, why: &str) -> ExitCode {
    let why = escape_controls(why);
    eprintln!("envoy-xen-frontend: {why}");
    println!(
        "{}",
        Verdict {
            mode,
            passed: false,
            detail: why,
        }
    );
    ExitCode::FAILURE
}

async fn run(opts: &Options) -> Result<Verdict, String> {
    opts.validate().map_err(|e| e.to_string())?;
    let grants = GntAlloc::open().map_err(|e| e.to_string())?;
    let events = EvtchnDev::open().map_err(|e| e.to_string())?;
    let xs = Xenstore::open().await.map_err(|e| {
        format!(
            "cannot reach xenstore: {e} (is xenstored running? XENSTORED_PATH names its socket)"
        )
    })?;
    let progress = |line: &str| eprintln!("envoy-xen-frontend: {}", escape_controls(line));
    xenfront::run(&xs, &grants, &events, opts, &progress)
        .await
        .map_err(|e| e.to_string())
}
