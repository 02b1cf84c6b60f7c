//! Storage hosts as real envoyd processes on loopback, each with its own data directory, for
//! the object layer's multi-host, crash and bad-input tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_objstore::StorageClient;
use envoy_transport::Endpoint;

/// A free TCP port on 127.0.0.1 (bound, then released for the envoyd about to start).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// One envoyd running a storage service.
pub struct Host {
    /// Its name in the membership.
    pub name: String,
    /// Its storage endpoint.
    pub endpoint: Endpoint,
    /// Its data directory (its store is `DATA/objects`, its log `DATA/envoyd.log`).
    pub data: PathBuf,
    /// Extra command-line arguments it was started with.
    pub extra: Vec<String>,
    cluster_file: Option<PathBuf>,
    child: Option<Child>,
}

impl Host {
    /// Start envoyd `name` serving storage on `port`, in a cluster if `cluster_file` is given.
    pub fn start(
        name: &str,
        port: u16,
        data: &Path,
        cluster_file: Option<&Path>,
        extra: &[&str],
    ) -> Host {
        let mut h = Host {
            name: name.into(),
            endpoint: format!("tcp:127.0.0.1:{port}").parse().expect("endpoint"),
            data: data.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            cluster_file: cluster_file.map(Path::to_owned),
            child: None,
        };
        h.restart();
        h
    }

    /// The store's directory.
    pub fn store_dir(&self) -> PathBuf {
        self.data.join("objects")
    }

    /// Start (again) with the same name, data and arguments.
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.data).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.join("envoyd.log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_envoyd"));
        cmd.arg("--host")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--storage")
            .arg(self.endpoint.to_string());
        if let Some(f) = &self.cluster_file {
            cmd.arg("--cluster").arg(f);
        }
        cmd.args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start envoyd"));
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Its resident memory in KiB (from /proc), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data.join("envoyd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A client once the service answers (within 20 s).
    pub async fn client(&mut self) -> StorageClient {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match StorageClient::connect(&self.endpoint).await {
                Ok(c) => return c,
                Err(e) => {
                    if let Some(status) = self.exited() {
                        panic!(
                            "envoyd {} exited ({status}): {}",
                            self.name,
                            self.log_tail()
                        );
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "envoyd {} never answered: {e}\n{}",
                            self.name,
                            self.log_tail()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 9P2000.L client of the envoyd serving 9P on 127.0.0.1:`port`, once it answers (20 s).
pub async fn nine_p(port: u16) -> envoy_tools::client::Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        match envoy_tools::client::Client::connect_tcp(
            addr,
            envoy_protocol::Dialect::P9P2000L,
            1 << 20,
        )
        .await
        {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "no 9P server on {port}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Flip one byte of `id`'s content in a stopped host's store.
pub fn flip_byte(store_dir: &Path, id: &envoy_objstore::ObjectId) {
    let store =
        envoy_objstore::LocalStore::open(store_dir, Default::default()).expect("open store");
    let (path, offset) = store.locate(id).expect("locate").expect("object is there");
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + 7] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
}

/// Write a membership file: `replicas` and the hosts by (name, port).
pub fn write_membership(path: &Path, replicas: usize, hosts: &[(&str, u16)]) {
    let mut s = format!(
        "replicas = {replicas}\nlost_after_secs = 2\nprobe_interval_ms = 200\nrepair_interval_secs = 3600\n"
    );
    for (name, port) in hosts {
        s.push_str(&format!(
            "[[host]]\nname = \"{name}\"\nstorage = \"tcp:127.0.0.1:{port}\"\n"
        ));
    }
    std::fs::write(path, s).expect("write membership");
}

/// Hosts `a`, `b`, `c` in one cluster with R = 2 (membership file `DIR/cluster.toml`, data
/// in `DIR/NAME`), and a client of each once they answer.
pub async fn three_hosts(dir: &Path) -> (Vec<Host>, Vec<StorageClient>) {
    let file = dir.join("cluster.toml");
    let names = ["a", "b", "c"];
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let members: Vec<(&str, u16)> = names.iter().copied().zip(ports.iter().copied()).collect();
    write_membership(&file, 2, &members);
    let mut hosts: Vec<Host> = members
        .iter()
        .map(|(n, p)| Host::start(n, *p, &dir.join(n), Some(&file), &[]))
        .collect();
    let mut clients = Vec::new();
    for h in &mut hosts {
        clients.push(h.client().await);
    }
    (hosts, clients)
}

/// Deterministic test content of `len` bytes for seed `n`.
pub fn content(n: u64, len: usize) -> bytes::Bytes {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    bytes::Bytes::from(v)
}
