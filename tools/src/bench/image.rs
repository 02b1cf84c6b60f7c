//! `envoy-bench image`: what images cost, through the image library on a local store.
//!
//! `snapshot` builds an image of a given shape (many small files, or much data) and times
//! what an admin or a guest waits for: a snapshot after a small change (the commit of that
//! change plus one record), a fork of it (one record) and the fork's first open — none of
//! which should depend on the image's size. `space` builds a base image, forks it N times,
//! changes a share of every fork, and reports the store's bytes: identical blocks are stored
//! once, so the forks should cost about what they changed; then it deletes the forks and
//! collects garbage, and the space should come back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use envoy::image::engine::{BLOCK, Engine, NewNode, ROOT_INO};
use envoy::image::fs::{ImageFs, record_name};
use envoy::image::objects::Objects;
use envoy::image::{catalog, wal};
use envoy::vfs::{Creds, FileSystem};
use envoy_objstore::{LocalStore, StoreOptions};

/// Files per directory when an image is built.
const PER_DIR: usize = 1000;

/// The shape of an image to build.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Files.
    pub files: usize,
    /// Bytes per file.
    pub file_bytes: usize,
}

impl Shape {
    fn bytes(&self) -> u64 {
        self.files as u64 * self.file_bytes as u64
    }
}

/// A deterministic, incompressible byte stream (distinct per seed).
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Noise {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn errno(what: &str) -> impl FnOnce(envoy::vfs::Errno) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e}")
}

/// The path of file `i` of a built image.
fn file_path(i: usize) -> [String; 2] {
    [format!("d{:04}", i / PER_DIR), format!("f{i:07}")]
}

/// Build image `name` of `shape` straight through the engine (a bulk load: one commit at the
/// end and whenever 256 MiB are dirty), and record it.
fn build(store: &Arc<dyn Objects>, name: &str, shape: Shape, seed: u64) -> Result<()> {
    let mut e = Engine::format(store.clone(), 0, 0, 0o755).map_err(errno("format"))?;
    let mut dir = ROOT_INO;
    let mut piece = vec![0u8; BLOCK * 16];
    for i in 0..shape.files {
        let [d, f] = file_path(i);
        if i % PER_DIR == 0 {
            dir = e
                .create(ROOT_INO, &d, &NewNode::new(libc::S_IFDIR | 0o755, 0, 0))
                .map_err(errno("mkdir"))?;
        }
        let ino = e
            .create(dir, &f, &NewNode::new(libc::S_IFREG | 0o644, 0, 0))
            .map_err(errno("create"))?;
        let mut noise = Noise::new(seed ^ (i as u64 + 1));
        let mut at = 0;
        while at < shape.file_bytes {
            let n = piece.len().min(shape.file_bytes - at);
            noise.fill(&mut piece[..n]);
            e.write(ino, at as u64, &bytes::Bytes::copy_from_slice(&piece[..n]))
                .map_err(errno("write"))?;
            at += n;
        }
        if e.dirty_bytes() >= 256 << 20 {
            e.commit().map_err(errno("commit"))?;
        }
    }
    let root = e.commit().map_err(errno("commit"))?;
    let (value, refs) = wal::record_value(&root, None);
    store
        .cas(&record_name(name), 0, value, refs)
        .with_context(|| format!("record image {name}"))?;
    Ok(())
}

/// Let the disk finish writing back what the build left in the page cache, so that the
/// timings measure the operation, not the build's writeback.
fn settle() {
    rustix::fs::sync();
    std::thread::sleep(Duration::from_secs(2));
}

/// Milliseconds of a duration.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median, 90th percentile and maximum of `v` (ms).
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.9), at(1.0))
}

fn open_store(dir: &PathBuf) -> Result<Arc<LocalStore>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(Arc::new(
        LocalStore::open(dir, StoreOptions::default())
            .with_context(|| format!("open a store in {}", dir.display()))?,
    ))
}

/// Walk `fs` from its root to `path`.
fn walk(fs: &ImageFs, path: &[String]) -> Result<envoy::image::fs::ImageNode> {
    let (root, _) = fs.attach(&Creds::root(), "").map_err(errno("attach"))?;
    let (nodes, err) = fs.walk(&Creds::root(), &root, path);
    if let Some(e) = err {
        return Err(anyhow!("walk {path:?}: {e}"));
    }
    Ok(nodes.last().map(|n| n.0.clone()).unwrap_or(root))
}

/// `envoy-bench image snapshot`.
pub fn snapshot(dir: PathBuf, shape: Shape, reps: usize, json: bool) -> Result<()> {
    let local = open_store(&dir)?;
    let store: Arc<dyn Objects> = local.clone();
    let t = Instant::now();
    build(&store, "bench", shape, 1)?;
    let built = t.elapsed();
    settle();
    let stats = local.stats()?;
    let fs = ImageFs::open(store.clone(), "bench", false).map_err(errno("open"))?;
    let node = walk(&fs, &file_path(0))?;
    let (file, _) = fs
        .open(&Creds::root(), &node, libc::O_RDWR)
        .map_err(errno("open file"))?;
    let (mut snap, mut idle, mut fork, mut first) = (vec![], vec![], vec![], vec![]);
    let mut change = vec![0u8; 4096];
    let mut noise = Noise::new(99);
    for n in 1..=reps as u64 {
        // A small change, then a snapshot: the commit of the change plus the record.
        noise.fill(&mut change);
        let at = (n * 4096) % shape.file_bytes.max(4096) as u64;
        fs.write(
            &Creds::root(),
            &file,
            at,
            &bytes::Bytes::copy_from_slice(&change),
        )
        .map_err(errno("write"))?;
        let t = Instant::now();
        fs.snapshot(2 * n).map_err(errno("snapshot"))?;
        snap.push(ms(t.elapsed()));
        // A snapshot of an unchanged image: the record alone.
        let t = Instant::now();
        fs.snapshot(2 * n + 1).map_err(errno("snapshot"))?;
        idle.push(ms(t.elapsed()));
        // A fork of it: one record; then its first open (root, inode table) and attach.
        let new = format!("fork{n}");
        let t = Instant::now();
        catalog::fork(&*store, "bench", 2 * n, &new).map_err(errno("fork"))?;
        fork.push(ms(t.elapsed()));
        let t = Instant::now();
        let forked = ImageFs::open(store.clone(), &new, false).map_err(errno("open fork"))?;
        let (root, _) = forked
            .attach(&Creds::root(), "")
            .map_err(errno("attach fork"))?;
        forked
            .getattr(&Creds::root(), &root, None)
            .map_err(errno("getattr"))?;
        first.push(ms(t.elapsed()));
    }
    drop(file);
    let rows = [
        ("snapshot after a 4 KiB write", &mut snap),
        ("snapshot of an unchanged image", &mut idle),
        ("fork (record)", &mut fork),
        ("fork: first open + attach", &mut first),
    ];
    let mut out = Vec::new();
    for (what, v) in rows {
        let (p50, p90, max) = spread(v);
        out.push(serde_json::json!({"op": what, "p50_ms": p50, "p90_ms": p90, "max_ms": max}));
    }
    let report = serde_json::json!({
        "files": shape.files,
        "file_bytes": shape.file_bytes,
        "bytes": shape.bytes(),
        "objects": stats.objects,
        "stored_bytes": stats.bytes,
        "build_s": built.as_secs_f64(),
        "reps": reps,
        "latency": out,
    });
    if json {
        println!("{report}");
    } else {
        println!(
            "image of {} files x {} B ({:.2} GiB; {} objects, built in {:.1} s), {reps} reps:",
            shape.files,
            shape.file_bytes,
            shape.bytes() as f64 / f64::from(1u32 << 30),
            stats.objects,
            built.as_secs_f64()
        );
        for r in out {
            println!(
                "  {:<34} p50 {:>7.3} ms  p90 {:>7.3} ms  max {:>7.3} ms",
                r["op"].as_str().unwrap_or(""),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p90_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

/// What `envoy-bench image space` does.
#[derive(Clone, Copy, Debug)]
pub struct Space {
    /// The base image's size, MiB (in 64 MiB files).
    pub base_mib: usize,
    /// Forks of it.
    pub forks: usize,
    /// Share of the image each fork rewrites, percent.
    pub change_pct: f64,
    /// Bytes per write of the change (64 KiB: whole blocks; 4 KiB: scattered small writes).
    pub write_bytes: usize,
}

/// `envoy-bench image space`.
pub fn space(dir: PathBuf, spec: Space, json: bool) -> Result<()> {
    let local = open_store(&dir)?;
    let store: Arc<dyn Objects> = local.clone();
    let file_bytes = 64 << 20;
    let shape = Shape {
        files: (spec.base_mib << 20).div_ceil(file_bytes),
        file_bytes,
    };
    build(&store, "base", shape, 7)?;
    let base = ImageFs::open(store.clone(), "base", false).map_err(errno("open"))?;
    base.snapshot(1).map_err(errno("snapshot"))?;
    drop(base);
    let base_stored = local.stats()?.bytes;
    let writes =
        ((shape.bytes() as f64 * spec.change_pct / 100.0) / spec.write_bytes as f64).ceil() as u64;
    let mut noise = Noise::new(1234);
    let mut data = vec![0u8; spec.write_bytes];
    for i in 0..spec.forks {
        let name = format!("fork{i}");
        catalog::fork(&*store, "base", 1, &name).map_err(errno("fork"))?;
        let fs = ImageFs::open(store.clone(), &name, false).map_err(errno("open fork"))?;
        let files = (0..shape.files)
            .map(|f| {
                let node = walk(&fs, &file_path(f))?;
                let (file, _) = fs
                    .open(&Creds::root(), &node, libc::O_RDWR)
                    .map_err(errno("open file"))?;
                Ok(file)
            })
            .collect::<Result<Vec<_>>>()?;
        let slots = (file_bytes / spec.write_bytes) as u64;
        for _ in 0..writes {
            let x = noise.next();
            let file = &files[(x % shape.files as u64) as usize];
            let at = ((x >> 20) % slots) * spec.write_bytes as u64;
            noise.fill(&mut data);
            fs.write(
                &Creds::root(),
                file,
                at,
                &bytes::Bytes::copy_from_slice(&data),
            )
            .map_err(errno("write"))?;
        }
        // One commit for the fork (closing the files afterwards finds nothing to sync).
        fs.commit().map_err(errno("commit"))?;
        drop(files);
    }
    let forked_stored = local.stats()?.bytes;
    // Delete the forks (their records), collect garbage, compact: the space comes back.
    for i in 0..spec.forks {
        let name = record_name(&format!("fork{i}"));
        let rec = store
            .record(&name)?
            .with_context(|| format!("record {name}"))?;
        store.delete_record(&name, rec.version)?;
    }
    // GC spares objects stamped in the current second (its grace has whole seconds).
    std::thread::sleep(Duration::from_millis(1100));
    let t = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cluster = envoy_objstore::Cluster::single("bench".into(), local.clone());
    let deleted = runtime.block_on(cluster.gc(Duration::ZERO))?;
    local.compact()?;
    let gc_time = t.elapsed();
    let after = local.stats()?;
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let report = serde_json::json!({
        "base_bytes": shape.bytes(),
        "forks": spec.forks,
        "change_pct": spec.change_pct,
        "write_bytes": spec.write_bytes,
        "stored_base": base_stored,
        "stored_with_forks": forked_stored,
        "per_fork": (forked_stored - base_stored) / spec.forks.max(1) as u64,
        "gc_deleted_objects": deleted,
        "gc_s": gc_time.as_secs_f64(),
        "stored_after_gc": after.bytes,
        "disk_after_gc": after.disk_bytes,
    });
    if json {
        println!("{report}");
    } else {
        println!(
            "base {:.3} GiB stored as {:.3} GiB; with {} forks each rewriting {}% in {} KiB \
             writes: {:.3} GiB ({:.1} MiB per fork)",
            gib(shape.bytes()),
            gib(base_stored),
            spec.forks,
            spec.change_pct,
            spec.write_bytes >> 10,
            gib(forked_stored),
            (forked_stored - base_stored) as f64 / spec.forks.max(1) as f64 / f64::from(1u32 << 20)
        );
        println!(
            "forks deleted + GC ({deleted} objects, {:.1} s) + compaction: {:.3} GiB stored, \
             {:.3} GiB of segment files",
            gc_time.as_secs_f64(),
            gib(after.bytes),
            gib(after.disk_bytes)
        );
    }
    Ok(())
}
