//! `envoy-9p`: a small 9P client for poking at a running server.
//!
//! ```text
//! envoy-9p [--tcp ADDR | --unix PATH] [--dialect L|u|base] [--msize N] [--aname A] COMMAND
//!   ls [-l] PATH | cat PATH | put PATH (data on stdin) | stat PATH | mkdir PATH | rm PATH
//!   | import DIR PATH (copy a local tree in: directories, files, symlinks)
//! ```
//!
//! It attaches as the calling user (numeric id from the process; name from `$USER` or
//! `/etc/passwd`) unless `--uname`/`--uid` say otherwise.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use envoy_protocol::consts::*;
use envoy_protocol::{Dialect, Qid, Rgetattr, Stat};
use envoy_tools::client::{Client, ClientError};
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The fid of the attached root; operations use the fids after it.
const ROOT: u32 = 0;
const FID: u32 = 1;
const FID2: u32 = 2;

#[derive(Parser)]
#[command(
    name = "envoy-9p",
    version,
    about = "A small 9P client: list, read, write and remove files on a 9P server"
)]
struct Args {
    /// Server TCP address [default: 127.0.0.1:5640]
    #[arg(long, value_name = "ADDR", conflicts_with = "unix")]
    tcp: Option<String>,
    /// Server unix socket
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Protocol dialect: L (9P2000.L), u (9P2000.u) or base (9P2000)
    #[arg(long, default_value = "L", value_parser = parse_dialect)]
    dialect: Dialect,
    /// Largest message size to propose
    #[arg(long, default_value_t = 1 << 20)]
    msize: u32,
    /// The tree to attach to
    #[arg(long, default_value = "")]
    aname: String,
    /// User name to attach as [default: $USER, else the uid's name]
    #[arg(long)]
    uname: Option<String>,
    /// Numeric uid to attach as (9P2000.u/.L) [default: the caller's]
    #[arg(long)]
    uid: Option<u32>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List a directory (or show a file)
    Ls {
        /// Long format: mode, links, owner, size
        #[arg(short = 'l')]
        long: bool,
        path: String,
    },
    /// Write a file's contents to stdout
    Cat { path: String },
    /// Write stdin to a file, creating or truncating it
    Put { path: String },
    /// Show a file's attributes
    Stat { path: String },
    /// Create a directory
    Mkdir { path: String },
    /// Remove a file or an empty directory
    Rm { path: String },
    /// Copy the local directory tree DIR into the existing directory PATH: directories,
    /// regular files and symlinks (9P2000.L), e.g. to seed an Envoy image
    Import { dir: PathBuf, path: String },
}

fn parse_dialect(s: &str) -> Result<Dialect, String> {
    match s {
        "L" | "l" | "9P2000.L" => Ok(Dialect::P9P2000L),
        "u" | "9P2000.u" => Ok(Dialect::P9P2000U),
        "base" | "9P2000" => Ok(Dialect::P9P2000),
        _ => Err(format!("unknown dialect {s:?} (expected L, u or base)")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (client, target) = match (&args.unix, &args.tcp) {
        (Some(path), _) => (
            Client::connect_unix(path, args.dialect, args.msize).await,
            path.display().to_string(),
        ),
        (None, tcp) => {
            let addr = tcp.as_deref().unwrap_or("127.0.0.1:5640");
            (
                Client::connect_tcp(addr, args.dialect, args.msize).await,
                addr.to_owned(),
            )
        }
    };
    let c = client.with_context(|| format!("connecting to {target} with {}", args.dialect))?;
    let uid = args
        .uid
        .unwrap_or_else(|| rustix::process::geteuid().as_raw());
    let uname = args.uname.clone().unwrap_or_else(|| user_name(uid));
    let n_uname = if c.dialect().extended() {
        uid
    } else {
        NONUNAME
    };
    c.attach(ROOT, &uname, &args.aname, n_uname)
        .await
        .with_context(|| format!("attaching to {:?} as {uname:?} (uid {uid})", args.aname))?;
    let session = Session {
        c,
        gid: rustix::process::getegid().as_raw(),
    };
    let result = session.run(args.cmd).await;
    session.c.close().await;
    result
}

struct Session {
    c: Client,
    gid: u32,
}

/// The name 9P2000 (which has no numeric ids) attaches as: `$USER`, else the name of
/// `uid` in `/etc/passwd`, else the number.
fn user_name(uid: u32) -> String {
    if let Ok(user) = std::env::var("USER") {
        return user;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2].parse() == Ok(uid))
        .map(|f| f[0].to_owned())
        .unwrap_or_else(|| uid.to_string())
}

/// Path components, without empty and `.` ones.
fn components(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

/// The parent directory and last component of `path`.
fn split_parent(path: &str) -> Result<(String, String)> {
    let mut parts = components(path);
    let Some(name) = parts.pop() else {
        bail!("{path:?} names the root, not an entry in a directory")
    };
    Ok((parts.join("/"), name.to_owned()))
}

impl Session {
    fn dotl(&self) -> bool {
        self.c.dialect() == Dialect::P9P2000L
    }

    async fn run(&self, cmd: Cmd) -> Result<()> {
        match cmd {
            Cmd::Ls { long, path } => self.ls(&path, long).await,
            Cmd::Cat { path } => self.cat(&path).await,
            Cmd::Put { path } => self.put(&path).await,
            Cmd::Stat { path } => self.stat(&path).await,
            Cmd::Mkdir { path } => self.mkdir(&path).await,
            Cmd::Rm { path } => self.rm(&path).await,
            Cmd::Import { dir, path } => self.import(&dir, &path).await,
        }
    }

    /// Walk `fid` to `path` from the root.
    async fn walk(&self, fid: u32, path: &str) -> Result<Qid> {
        let qids = self
            .c
            .walk_path(ROOT, fid, path)
            .await
            .with_context(|| format!("walking to {path:?}"))?;
        Ok(qids.last().copied().unwrap_or_default())
    }

    /// Open `fid` for reading.
    async fn open_read(&self, fid: u32, path: &str) -> Result<()> {
        let r = if self.dotl() {
            self.c.lopen(fid, P9_DOTL_RDONLY).await
        } else {
            self.c.open(fid, OREAD).await
        };
        r.with_context(|| format!("opening {path:?}"))?;
        Ok(())
    }

    async fn ls(&self, path: &str, long: bool) -> Result<()> {
        let qid = self.walk(FID, path).await?;
        if qid.ty & QTDIR == 0 && !components(path).is_empty() {
            let line = if self.dotl() {
                let a = self
                    .c
                    .getattr(FID, GETATTR_BASIC)
                    .await
                    .with_context(|| format!("getattr {path:?}"))?;
                if long {
                    long_line_l(&a, path)
                } else {
                    path.to_owned()
                }
            } else {
                let s = self
                    .c
                    .stat(FID)
                    .await
                    .with_context(|| format!("stat {path:?}"))?;
                if long {
                    long_line_u(&s, path)
                } else {
                    path.to_owned()
                }
            };
            println!("{line}");
            return Ok(());
        }
        self.open_read(FID, path).await?;
        let mut lines = Vec::new();
        if self.dotl() {
            let entries = self
                .c
                .readdir(FID)
                .await
                .with_context(|| format!("reading directory {path:?}"))?;
            for e in entries.iter().filter(|e| e.name != "." && e.name != "..") {
                if long {
                    self.c
                        .walk(FID, FID2, &[&e.name])
                        .await
                        .with_context(|| format!("walking to {:?}", e.name))?;
                    let a = self.c.getattr(FID2, GETATTR_BASIC).await;
                    self.c.clunk(FID2).await?;
                    let a = a.with_context(|| format!("getattr {:?}", e.name))?;
                    lines.push((e.name.clone(), long_line_l(&a, &e.name)));
                } else {
                    let slash = if e.qid.ty & QTDIR != 0 { "/" } else { "" };
                    lines.push((e.name.clone(), format!("{}{slash}", e.name)));
                }
            }
        } else {
            let stats = self
                .c
                .read_dir_stats(FID)
                .await
                .with_context(|| format!("reading directory {path:?}"))?;
            for s in stats {
                let line = if long {
                    long_line_u(&s, &s.name)
                } else {
                    format!("{}{}", s.name, if s.mode & DMDIR != 0 { "/" } else { "" })
                };
                lines.push((s.name, line));
            }
        }
        lines.sort();
        let mut out = String::new();
        for (_, line) in lines {
            out.push_str(&line);
            out.push('\n');
        }
        tokio::io::stdout().write_all(out.as_bytes()).await?;
        Ok(())
    }

    async fn cat(&self, path: &str) -> Result<()> {
        self.walk(FID, path).await?;
        self.open_read(FID, path).await?;
        let mut stdout = tokio::io::stdout();
        let mut offset = 0u64;
        loop {
            let data = self
                .c
                .read_chunk(FID, offset, self.c.max_io())
                .await
                .with_context(|| format!("reading {path:?}"))?;
            if data.is_empty() {
                break;
            }
            offset += data.len() as u64;
            stdout.write_all(&data).await.context("writing stdout")?;
        }
        stdout.flush().await?;
        Ok(())
    }

    async fn put(&self, path: &str) -> Result<()> {
        self.put_from(tokio::io::stdin(), path).await
    }

    /// Write everything `input` gives to the file `path`, creating or truncating it.
    async fn put_from(
        &self,
        mut input: impl tokio::io::AsyncRead + Unpin,
        path: &str,
    ) -> Result<()> {
        let (parent, name) = split_parent(path)?;
        self.walk(FID, &parent).await?;
        // Open the file if it exists, else create it.
        let fid = match self.c.walk(FID, FID2, &[&name]).await {
            Ok(q) if q.len() == 1 => {
                let r = if self.dotl() {
                    self.c.lopen(FID2, P9_DOTL_WRONLY | P9_DOTL_TRUNC).await
                } else {
                    self.c.open(FID2, OWRITE | OTRUNC).await
                };
                r.with_context(|| format!("opening {path:?} for writing"))?;
                FID2
            }
            Ok(_) | Err(ClientError::Remote { .. }) => {
                let r = if self.dotl() {
                    let flags = P9_DOTL_WRONLY | P9_DOTL_CREATE | P9_DOTL_TRUNC;
                    self.c.lcreate(FID, &name, flags, 0o644, self.gid).await
                } else {
                    self.c.create(FID, &name, 0o644, OWRITE | OTRUNC, "").await
                };
                r.with_context(|| format!("creating {path:?}"))?;
                FID
            }
            Err(e) => return Err(e).with_context(|| format!("walking to {path:?}")),
        };
        let mut buf = vec![0u8; self.c.max_io() as usize];
        let mut offset = 0u64;
        loop {
            let n = input.read(&mut buf).await.context("reading the input")?;
            if n == 0 {
                break;
            }
            let written = self
                .c
                .write_bytes(fid, offset, Bytes::copy_from_slice(&buf[..n]))
                .await
                .with_context(|| format!("writing {path:?} at offset {offset}"))?;
            if written < n {
                bail!(
                    "the server accepted only {written} of {n} bytes at offset {offset} of {path:?}"
                );
            }
            offset += n as u64;
        }
        // Close it: a server may make the file durable only then (images commit on close).
        self.c
            .clunk(fid)
            .await
            .with_context(|| format!("closing {path:?}"))?;
        if fid == FID2 {
            let _ = self.c.clunk(FID).await; // the parent directory
        }
        Ok(())
    }

    async fn stat(&self, path: &str) -> Result<()> {
        self.walk(FID, path).await?;
        if self.dotl() {
            let a = self
                .c
                .getattr(FID, GETATTR_ALL)
                .await
                .with_context(|| format!("getattr {path:?}"))?;
            println!("  path: {path}");
            println!(
                "   qid: type {:#04x} version {} path {:#x}",
                a.qid.ty, a.qid.version, a.qid.path
            );
            println!("  mode: {} ({:o})", mode_string_l(a.mode), a.mode);
            println!(
                " owner: uid {} gid {}  links {}  rdev {:#x}",
                a.uid, a.gid, a.nlink, a.rdev
            );
            println!(
                "  size: {}  blocks {}  blksize {}",
                a.size, a.blocks, a.blksize
            );
            println!(" atime: {}.{:09}", a.atime_sec, a.atime_nsec);
            println!(" mtime: {}.{:09}", a.mtime_sec, a.mtime_nsec);
            println!(" ctime: {}.{:09}", a.ctime_sec, a.ctime_nsec);
            if a.valid & GETATTR_BTIME != 0 {
                println!(" btime: {}.{:09}", a.btime_sec, a.btime_nsec);
            }
            println!(" valid: {:#x}", a.valid);
        } else {
            let s = self
                .c
                .stat(FID)
                .await
                .with_context(|| format!("stat {path:?}"))?;
            println!("  name: {}", s.name);
            println!(
                "   qid: type {:#04x} version {} path {:#x}",
                s.qid.ty, s.qid.version, s.qid.path
            );
            println!("  mode: {} ({:#010x})", mode_string_u(s.mode), s.mode);
            println!("  size: {}", s.length);
            println!(" owner: {} group {} modified by {}", s.uid, s.gid, s.muid);
            println!(" atime: {}  mtime: {}", s.atime, s.mtime);
            if self.c.dialect().extended() {
                println!("   ids: uid {} gid {} muid {}", s.n_uid, s.n_gid, s.n_muid);
                if !s.extension.is_empty() {
                    println!("   ext: {}", s.extension);
                }
            }
        }
        Ok(())
    }

    async fn mkdir(&self, path: &str) -> Result<()> {
        let (parent, name) = split_parent(path)?;
        self.walk(FID, &parent).await?;
        if self.dotl() {
            self.c
                .mkdir(FID, &name, 0o755, self.gid)
                .await
                .with_context(|| format!("mkdir {path:?}"))?;
        } else {
            self.c
                .create(FID, &name, DMDIR | 0o755, OREAD, "")
                .await
                .with_context(|| format!("mkdir {path:?}"))?;
        }
        Ok(())
    }

    /// Clunk the working fids (errors ignored: a fid may not be in use).
    async fn release(&self) {
        let _ = self.c.clunk(FID2).await;
        let _ = self.c.clunk(FID).await;
    }

    async fn import(&self, dir: &std::path::Path, path: &str) -> Result<()> {
        if !self.dotl() {
            bail!("import needs 9P2000.L (--dialect L)");
        }
        let base = components(path).join("/");
        let mut todo = vec![(dir.to_owned(), base)];
        let mut copied = 0u64;
        while let Some((local, remote)) = todo.pop() {
            let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(&local)
                .with_context(|| format!("reading {}", local.display()))?
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("reading {}", local.display()))?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = e
                    .file_name()
                    .into_string()
                    .map_err(|n| anyhow::anyhow!("{n:?} in {} is not UTF-8", local.display()))?;
                let target = if remote.is_empty() {
                    name.clone()
                } else {
                    format!("{remote}/{name}")
                };
                let kind = e.file_type()?;
                if kind.is_dir() {
                    self.mkdir(&target).await?;
                    self.release().await;
                    todo.push((e.path(), target));
                } else if kind.is_symlink() {
                    let to = std::fs::read_link(e.path())?;
                    let to = to.to_str().context("a symlink target that is not UTF-8")?;
                    self.walk(FID, &remote).await?;
                    self.c
                        .symlink(FID, &name, to, self.gid)
                        .await
                        .with_context(|| format!("symlink {target:?}"))?;
                    self.release().await;
                } else if kind.is_file() {
                    let f = tokio::fs::File::open(e.path())
                        .await
                        .with_context(|| format!("opening {}", e.path().display()))?;
                    self.put_from(f, &target).await?;
                } else {
                    eprintln!(
                        "envoy-9p: skipping {} (not a file, directory or symlink)",
                        e.path().display()
                    );
                    continue;
                }
                copied += 1;
            }
        }
        eprintln!(
            "envoy-9p: imported {copied} entries from {} into {path:?}",
            dir.display()
        );
        Ok(())
    }

    async fn rm(&self, path: &str) -> Result<()> {
        if components(path).is_empty() {
            bail!("refusing to remove the root");
        }
        self.walk(FID, path).await?;
        self.c
            .remove(FID)
            .await
            .with_context(|| format!("removing {path:?}"))?;
        Ok(())
    }
}

/// `ls -l` line from 9P2000.L attributes.
fn long_line_l(a: &Rgetattr, name: &str) -> String {
    format!(
        "{} {:>3} {:>5} {:>5} {:>10} {name}",
        mode_string_l(a.mode),
        a.nlink,
        a.uid,
        a.gid,
        a.size
    )
}

/// `ls -l` line from a 9P2000/.u stat.
fn long_line_u(s: &Stat, name: &str) -> String {
    format!(
        "{} {:>8} {:>8} {:>10} {name}",
        mode_string_u(s.mode),
        s.uid,
        s.gid,
        s.length
    )
}

/// `drwxr-xr-x` for a Linux `st_mode`.
fn mode_string_l(mode: u32) -> String {
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '-',
    };
    format!("{kind}{}", rwx(mode))
}

/// `drwxr-xr-x` for a 9P `DM*` mode.
fn mode_string_u(mode: u32) -> String {
    let kind = if mode & DMDIR != 0 {
        'd'
    } else if mode & DMSYMLINK != 0 {
        'l'
    } else if mode & DMDEVICE != 0 {
        'c'
    } else if mode & DMNAMEDPIPE != 0 {
        'p'
    } else if mode & DMSOCKET != 0 {
        's'
    } else {
        '-'
    };
    format!("{kind}{}", rwx(mode))
}

fn rwx(mode: u32) -> String {
    (0..9)
        .map(|i| {
            let bit = 1 << (8 - i);
            if mode & bit == 0 {
                '-'
            } else {
                ['r', 'w', 'x'][i % 3]
            }
        })
        .collect()
}
