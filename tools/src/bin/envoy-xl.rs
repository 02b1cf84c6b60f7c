//! `envoy-xl`: hot-plug 9pfs shares into running Xen guests, the way `xl` would create them at
//! boot from `p9 = [ ... ]` — which xl itself cannot do for a running guest.
//!
//! ```text
//! envoy-xl attach DOMAIN --tag TAG --path DIR [--ro] [--devid N] [--backend-domain DOM]
//!                 [--kind 9pfs|xen_9pfs] [--max-files N --max-open-files N --max-space MIB
//!                 --auto-delete] [--timeout SECS | --no-wait]
//! envoy-xl detach DOMAIN (--tag TAG | --devid N) [--timeout SECS | --force]
//! envoy-xl list [DOMAIN]
//! envoy-xl storage [--endpoint EP] status [--json] | scrub [--wait] | repair [--wait]
//!                  | gc [--grace SECS] | reload | replicas ID
//! envoy-xl image [--socket PATH] create NAME [--uid N --gid N] | list [--json]
//!                | snapshot NAME [N] | fork NAME@N NEW | rm NAME[@N] | du [NAME] [--json]
//! envoy-xl check [--socket PATH] IMAGE [--json]
//! ```
//!
//! The work is in [`envoy_tools::xl`]; this file parses the command line, connects to xenstore
//! (`XENSTORED_PATH`, else xenstored's socket, else `/dev/xen/xenbus`), prints one line of
//! outcome and exits 0, or prints one line of error and exits 1 (usage errors too).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use envoy::image::admin::{Outcome, Request};
use envoy::image::control;
use envoy_objstore::wire::AdminOp;
use envoy_objstore::{ObjectId, StorageClient};
use envoy_tools::xl::{
    self, AttachSpec, Domain, Kind, Quota, Selector, XlError, escape_controls, resolve_domain,
};
use envoy_tools::{image, storage};
use envoy_transport::Endpoint;
use envoy_xen::xenstore::Xenstore;

const AFTER_HELP: &str = "\
DOMAIN is a domain id or a domain name (as `xl list` shows it).
xenstore is reached through $XENSTORED_PATH if set, else xenstored's socket, else /dev/xen/xenbus.
Exit status: 0 on success, 1 on any failure (the reason is printed on one line).";

const ATTACH_HELP: &str = "\
Example: envoy-xl attach guest1 --tag share --path /srv/guest1
then in the guest: mount -t 9p -o trans=xen,version=9p2000.L share /mnt
(the guest needs the 9pnet_xen module; a backend such as `envoyd --xen` must serve the device).

DOMAIN is a domain id or a domain name (as `xl list` shows it).
xenstore is reached through $XENSTORED_PATH if set, else xenstored's socket, else /dev/xen/xenbus.
Exit status: 0 on success, 1 on any failure (the reason is printed on one line).";

#[derive(Parser)]
#[command(
    name = "envoy-xl",
    version,
    about = "Hot-plug 9pfs shares into running Xen guests (xl's p9 devices, without a reboot); the object layer's status and maintenance; Envoy images",
    long_about = "Hot-plug 9pfs shares into running Xen guests.\n\n\
        `attach` creates the xenstore nodes libxl writes for `p9 = [ \"tag=T,path=P\" ]`; a \
        9pfs backend (envoyd --xen, QEMU or xen-9pfsd) serves the share and the guest mounts it \
        with `mount -t 9p -o trans=xen,version=9p2000.L T /mnt`. `detach` closes and removes a \
        device like `xl` does; `list` shows every device and both ends' states. `storage` shows \
        the object layer (per-host usage, replica health, scrub progress) through the local \
        envoyd and starts scrubs, re-replication and GC. `image` creates, lists, snapshots, \
        forks and removes Envoy images and shows the space they take; `check` verifies one.",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Give a running guest a 9pfs share, and wait until its frontend is connected
    #[command(after_help = ATTACH_HELP)]
    Attach(AttachArgs),
    /// Close and remove a guest's 9pfs device
    #[command(after_help = AFTER_HELP)]
    Detach(DetachArgs),
    /// List 9pfs devices: guest, index, backend kind, tag, path, both ends' states, errors
    #[command(after_help = AFTER_HELP)]
    List {
        /// Only this guest's devices
        domain: Option<String>,
    },
    /// The object layer: per-host usage, replica health, scrub, re-replication and GC
    Storage(StorageArgs),
    /// Envoy images: create, list, snapshot, fork, remove, space used
    Image(ImageArgs),
    /// Verify an image (its current state and every snapshot): every object present and
    /// intact, sizes, directory entries and link counts consistent. Exit 1 on any problem
    Check {
        /// The image
        image: String,
        /// Machine-readable output (the report; the exit status still says whether it passed)
        #[arg(long)]
        json: bool,
        /// envoyd's image admin socket [default: DATA_DIR/images.sock]
        #[arg(long, value_name = "PATH")]
        socket: Option<std::path::PathBuf>,
    },
}

#[derive(Args)]
struct ImageArgs {
    /// envoyd's image admin socket [default: DATA_DIR/images.sock]
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<std::path::PathBuf>,
    #[command(subcommand)]
    action: ImageAction,
}

#[derive(Subcommand)]
enum ImageAction {
    /// Create an empty image
    Create {
        /// Its name (no '/' or '@')
        name: String,
        /// Owner of its root directory
        #[arg(long, default_value_t = 0)]
        uid: u32,
        /// Group of its root directory
        #[arg(long, default_value_t = 0)]
        gid: u32,
    },
    /// Every image: snapshots, files, logical size, current root
    List {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Snapshot an image's current state (what clients wrote and did not sync included)
    Snapshot {
        /// The image
        name: String,
        /// The snapshot's number [default: one past the highest]
        n: Option<u64>,
    },
    /// A new image starting from a snapshot
    Fork {
        /// The snapshot: IMAGE@N
        source: String,
        /// The new image
        new: String,
    },
    /// Delete an image with all its snapshots (IMAGE), or one snapshot (IMAGE@N); refused
    /// while a 9P client uses it. Its unshared space is reclaimed by `envoy-xl storage gc`
    Rm {
        /// IMAGE or IMAGE@N
        target: String,
    },
    /// Space per image and snapshot: logical, referenced, unique (freed by rm + gc), shared
    Du {
        /// Only this image
        name: Option<String>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct StorageArgs {
    /// The envoyd to ask: a storage endpoint [default: the local admin socket,
    /// DATA_DIR/storage.sock]
    #[arg(long, value_name = "ENDPOINT", global = true)]
    endpoint: Option<String>,
    #[command(subcommand)]
    action: StorageAction,
}

#[derive(Subcommand)]
enum StorageAction {
    /// Every host: state, objects, space, bad copies, scrub and replica health
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every object on the host; bad copies are replaced from replicas
    Scrub {
        /// Wait for it, showing progress
        #[arg(long)]
        wait: bool,
    },
    /// Bring every object the host holds back to R copies on live hosts
    Repair {
        /// Wait for the pass to finish
        #[arg(long)]
        wait: bool,
    },
    /// Delete objects no record reaches, across the cluster, and reclaim their space
    Gc {
        /// Spare objects written in the last SECS seconds (writers reference new objects
        /// from records within this time)
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        grace: u64,
    },
    /// Re-read the membership file (as SIGHUP does)
    Reload,
    /// Which hosts hold a copy of an object
    Replicas {
        /// The object id (64 hex digits)
        id: String,
    },
}

#[derive(Args)]
struct AttachArgs {
    /// The guest (domain id or name)
    domain: String,
    /// The name the guest mounts the share by
    #[arg(long)]
    tag: String,
    /// The directory to share: an absolute path in the backend domain (checked on this host
    /// when the backend is this domain)
    #[arg(long)]
    path: String,
    /// Share read-only (envoyd refuses every change; other backends ignore this)
    #[arg(long)]
    ro: bool,
    /// Device index [default: the lowest free one]
    #[arg(long, value_name = "N")]
    devid: Option<u32>,
    /// The domain serving the share (id or name)
    #[arg(long, value_name = "DOMAIN", default_value = "0")]
    backend_domain: String,
    /// Backend kind: 9pfs (xl type=qemu) or xen_9pfs (xl type=xen_9pfsd); envoyd serves both
    #[arg(long, default_value = "9pfs", value_parser = parse_kind)]
    kind: Kind,
    /// xen_9pfs only: most files the guest may create (0: no limit)
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_files: u64,
    /// xen_9pfs only: most files open at once (0: no limit)
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_open_files: u64,
    /// xen_9pfs only: most space used, MiB (0: no limit)
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    max_space: u64,
    /// xen_9pfs only: delete the oldest files when --max-space is reached
    #[arg(long)]
    auto_delete: bool,
    /// How long to wait for the guest to connect (seconds, or e.g. 500ms)
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = xl::parse_timeout)]
    timeout: Duration,
    /// Write the device and return without waiting for the guest
    #[arg(long, conflicts_with = "timeout")]
    no_wait: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["tag", "devid"])))]
struct DetachArgs {
    /// The guest (domain id or name)
    domain: String,
    /// The device with this tag
    #[arg(long)]
    tag: Option<String>,
    /// The device with this index
    #[arg(long, value_name = "N")]
    devid: Option<u32>,
    /// How long to wait for the guest to close the device (seconds, or e.g. 500ms)
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = xl::parse_timeout)]
    timeout: Duration,
    /// Remove the device at once, without asking the guest to close it first
    #[arg(long, conflicts_with = "timeout")]
    force: bool,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli: Cli = match envoy_tools::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("envoy-xl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined with ": ", control characters escaped.
            eprintln!("envoy-xl: {}", escape_controls(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let cmd = match cli.cmd {
        Cmd::Storage(args) => return storage(args).await,
        Cmd::Image(args) => return image(args).await,
        Cmd::Check {
            image,
            json,
            socket,
        } => return check(image, json, socket).await,
        cmd => cmd,
    };
    let xs = Xenstore::open()
        .await
        .context("cannot reach xenstore (is xenstored running? XENSTORED_PATH names its socket)")?;
    match cmd {
        Cmd::Attach(a) => attach(&xs, a).await,
        Cmd::Detach(d) => detach(&xs, d).await,
        Cmd::List { domain } => {
            let domain = match domain {
                Some(d) => Some(resolve(&xs, &d).await?),
                None => None,
            };
            let devices = xl::list(&xs, domain.as_ref())
                .await
                .context("cannot list 9pfs devices")?;
            print!("{}", xl::format_table(&devices));
            Ok(())
        }
        Cmd::Storage(_) | Cmd::Image(_) | Cmd::Check { .. } => unreachable!("handled above"),
    }
}

/// Ask envoyd's image service (at `socket`, default `DATA_DIR/images.sock`) for `request`.
async fn ask(socket: Option<std::path::PathBuf>, request: Request) -> Result<Outcome> {
    let path =
        socket.unwrap_or_else(|| envoy::paths::image_socket(&envoy::paths::default_data_dir()));
    let mut client = control::Client::connect(&path).await.with_context(|| {
        format!(
            "cannot reach envoyd's image service at unix:{} (is envoyd running with --storage or --cluster?)",
            path.display()
        )
    })?;
    let reply = client
        .call(&request)
        .await
        .with_context(|| format!("envoyd's image service at unix:{}", path.display()))?;
    Ok(reply?)
}

async fn image(args: ImageArgs) -> Result<()> {
    let (request, json) = match args.action {
        ImageAction::Create { name, uid, gid } => (Request::Create { name, uid, gid }, false),
        ImageAction::List { json } => (Request::List, json),
        ImageAction::Snapshot { name, n } => (Request::Snapshot { name, n }, false),
        ImageAction::Fork { source, new } => (Request::Fork { source, new }, false),
        ImageAction::Rm { target } => (Request::Rm { target }, false),
        ImageAction::Du { name, json } => (Request::Du { name }, json),
    };
    let outcome = ask(args.socket, request).await?;
    if json {
        println!("{:#}", serde_json::to_value(&outcome)?);
    } else {
        println!("{}", image::describe(&outcome));
    }
    Ok(())
}

async fn check(name: String, json: bool, socket: Option<std::path::PathBuf>) -> Result<()> {
    let Outcome::Checked { report } = ask(socket, Request::Check { name }).await? else {
        anyhow::bail!("envoyd answered check with something else");
    };
    if json {
        println!("{:#}", serde_json::to_value(&report)?);
    } else {
        print!("{}", image::format_check(&report));
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        // The problems are printed; the error is the exit status (and a last line).
        anyhow::bail!(
            "image {} failed its check: {} problems",
            report.image,
            report.problems.len()
        )
    }
}

async fn storage(args: StorageArgs) -> Result<()> {
    let endpoint: Endpoint = match &args.endpoint {
        Some(e) => e.parse().with_context(|| format!("bad --endpoint {e:?}"))?,
        None => Endpoint::Unix(envoy::paths::storage_socket(
            &envoy::paths::default_data_dir(),
        )),
    };
    let client = StorageClient::connect(&endpoint)
        .await
        .with_context(|| format!("cannot reach envoyd's storage service at {endpoint} (is envoyd running with --storage or --cluster?)"))?;
    match args.action {
        StorageAction::Status { json } => {
            let (replicas, hosts) = client.cluster().await?;
            if json {
                println!("{:#}", storage::status_json(replicas, &hosts));
            } else {
                print!("{}", storage::format_status(replicas, &hosts));
            }
        }
        StorageAction::Scrub { wait: false } => {
            println!("{}", client.admin(AdminOp::Scrub, 0).await?);
        }
        StorageAction::Scrub { wait: true } => scrub_with_progress(&client).await?,
        StorageAction::Repair { wait } => {
            println!("{}", client.admin(AdminOp::Repair, u64::from(wait)).await?);
        }
        StorageAction::Gc { grace } => println!("{}", client.admin(AdminOp::Gc, grace).await?),
        StorageAction::Reload => println!("{}", client.admin(AdminOp::Reload, 0).await?),
        StorageAction::Replicas { id } => {
            let id: ObjectId = id.parse()?;
            let hosts = client.replicas(&id).await?;
            println!("{id}: {} copies: {}", hosts.len(), hosts.join(" "));
        }
    }
    Ok(())
}

/// Start a scrub and follow it: a progress bar on a terminal, one line at the end.
async fn scrub_with_progress(client: &StorageClient) -> Result<()> {
    let before = client.stats().await?.maintenance.scrubs_done;
    client.admin(AdminOp::Scrub, 0).await?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "scrub {bar:40} {pos}/{len} objects, {msg} ({eta} left)",
        )
        .map_err(|e| anyhow::anyhow!("progress style: {e}"))?,
    );
    let done = loop {
        let s = client.stats().await?;
        let m = &s.maintenance;
        bar.set_length(m.scrub_total);
        bar.set_position(m.scrub_checked);
        bar.set_message(format!(
            "{} checked, {} corrupt",
            storage::human_bytes(m.scrub_bytes),
            m.scrub_corrupt
        ));
        if m.scrubs_done > before && !m.scrub_running {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    let m = done.maintenance;
    println!(
        "scrub of {} done: {} objects ({}) checked, {} corrupt, {} repaired from replicas",
        done.host,
        m.scrub_checked,
        storage::human_bytes(m.scrub_bytes),
        m.scrub_corrupt,
        m.scrub_repaired
    );
    Ok(())
}

async fn resolve(xs: &Xenstore, spec: &str) -> Result<Domain> {
    Ok(resolve_domain(xs, spec).await?)
}

async fn attach(xs: &Xenstore, a: AttachArgs) -> Result<()> {
    let domain = resolve(xs, &a.domain).await?;
    let backend = resolve(xs, &a.backend_domain)
        .await
        .context("bad --backend-domain")?;
    let spec = AttachSpec {
        tag: a.tag,
        path: a.path,
        read_only: a.ro,
        devid: a.devid,
        backend_domid: backend.domid,
        kind: a.kind,
        quota: Quota {
            max_space_mib: a.max_space,
            max_files: a.max_files,
            max_open_files: a.max_open_files,
            auto_delete: a.auto_delete,
        },
    };
    spec.validate()?;
    // The path lives in the backend domain: check it here only if that is where we run.
    if backend.domid == xl::own_domid(xs).await? {
        xl::check_local_directory(&spec.path)?;
    }
    let paths = xl::attach(xs, &domain, &spec).await.map_err(|e| match e {
        XlError::Xenstore(_) => anyhow::Error::new(e).context(format!("cannot attach to {domain}")),
        e => e.into(),
    })?;
    let mount = format!(
        "mount -t 9p -o trans=xen,version=9p2000.L {} /mnt",
        spec.tag
    );
    let device = format!(
        "{domain}: 9pfs device {} (tag {}, {} backend in domain {})",
        paths.devid, spec.tag, spec.kind, paths.backend_domid
    );
    if a.no_wait {
        println!("{device} created; in the guest run: {mount}");
        return Ok(());
    }
    xl::wait_connected(xs, &domain, &paths, a.timeout).await?;
    println!("{device} connected; in the guest run: {mount}");
    Ok(())
}

async fn detach(xs: &Xenstore, d: DetachArgs) -> Result<()> {
    let domain = resolve(xs, &d.domain).await?;
    let which = match (d.tag, d.devid) {
        (_, Some(n)) => Selector::Devid(n),
        (Some(t), None) => Selector::Tag(t),
        (None, None) => unreachable!("clap requires --tag or --devid"),
    };
    let wait = (!d.force).then_some(d.timeout);
    let paths = xl::detach(xs, &domain, &which, wait).await?;
    println!(
        "{domain}: 9pfs device {} removed{}",
        paths.devid,
        if d.force {
            " (--force: without waiting for the guest)"
        } else {
            ""
        }
    );
    Ok(())
}
