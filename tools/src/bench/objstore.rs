//! `envoy-bench objstore`: put and get throughput of the object layer, either straight on a
//! local store (the library, no network) or through a storage service (`tcp:…`), optionally
//! replicated. `tools/bench/objstore.sh` runs it beside `fio` on the same disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use envoy_objstore::wire::REPLICATED;
use envoy_objstore::{LocalStore, ObjectId, PutObject, StorageClient, StoreOptions};
use envoy_transport::Endpoint;

/// Where the objects go.
pub enum ObjTarget {
    /// A local store in this directory, driven through the library.
    Local(PathBuf),
    /// A storage service; `true`: replicated puts/gets (the cluster's R copies).
    Remote(Endpoint, bool),
}

/// One benchmark run.
pub struct ObjBench {
    /// Where.
    pub target: ObjTarget,
    /// Bytes per object.
    pub size: usize,
    /// Objects.
    pub count: usize,
    /// Concurrent puts/gets.
    pub jobs: usize,
    /// Drop the page cache between the put and get phases (root only), so reads hit the disk.
    pub drop_caches: bool,
    /// One JSON object instead of text.
    pub json: bool,
    /// Re-hash what every get returns (the store verifies anyway; this checks the bench
    /// path end to end, at the cost of a second hash inside the timed loop).
    pub verify: bool,
}

/// Distinct, incompressible objects (made before timing starts).
fn objects(size: usize, count: usize) -> Vec<PutObject> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (0..count)
        .map(|i| {
            let mut x = (stamp ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
            let mut v = Vec::with_capacity(size + 8);
            while v.len() < size {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.extend_from_slice(&x.to_le_bytes());
            }
            v.truncate(size);
            PutObject::new(Bytes::from(v), Vec::new())
        })
        .collect()
}

fn drop_caches() -> Result<()> {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("--drop-caches needs root (writing /proc/sys/vm/drop_caches)")
}

struct Phase {
    name: &'static str,
    seconds: f64,
}

/// Run the benchmark and print its figures.
pub fn run(b: ObjBench) -> Result<()> {
    if b.size == 0 || b.count == 0 || b.jobs == 0 {
        bail!("--size, --count and --jobs must be positive");
    }
    let objs = Arc::new(objects(b.size, b.count));
    let (put, get) = match &b.target {
        ObjTarget::Local(dir) => {
            std::fs::create_dir_all(dir)?;
            let store = Arc::new(
                LocalStore::open(dir, StoreOptions::default())
                    .with_context(|| format!("cannot open a store in {}", dir.display()))?,
            );
            let put = threads(b.jobs, b.count, {
                let (store, objs) = (store.clone(), objs.clone());
                move |i| store.put(objs[i].clone()).map(|_| ()).map_err(Into::into)
            })?;
            if b.drop_caches {
                drop_caches()?;
            }
            let verify = b.verify;
            let get = threads(b.jobs, b.count, {
                let (store, objs) = (store.clone(), objs.clone());
                move |i| {
                    let data = store.get(&objs[i].id())?;
                    check(&objs[i], &data, verify)
                }
            })?;
            (put, get)
        }
        ObjTarget::Remote(endpoint, replicated) => {
            let flags = if *replicated { REPLICATED } else { 0 };
            let verify = b.verify;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = StorageClient::connect(endpoint).await?;
                let put =
                    tasks(
                        &client,
                        b.jobs,
                        b.count,
                        objs.clone(),
                        move |c, o| async move {
                            c.put(&o, flags).await.map(|_| ()).map_err(Into::into)
                        },
                    )
                    .await?;
                if b.drop_caches {
                    drop_caches()?;
                }
                let get = tasks(
                    &client,
                    b.jobs,
                    b.count,
                    objs.clone(),
                    move |c, o| async move {
                        let data = c.get_object(&o.id(), flags).await?;
                        check(&o, &data, verify)
                    },
                )
                .await?;
                anyhow::Ok((put, get))
            })?
        }
    };
    report(
        &b,
        &[
            Phase {
                name: "put",
                seconds: put,
            },
            Phase {
                name: "get",
                seconds: get,
            },
        ],
    );
    Ok(())
}

/// Every get must return the object's size; with `verify`, its exact content.
fn check(object: &PutObject, data: &Bytes, verify: bool) -> Result<()> {
    if data.len() != object.data().len() || (verify && ObjectId::of(data) != object.id()) {
        bail!("object {} read back wrong", object.id());
    }
    Ok(())
}

/// Run `f(i)` for every index on `jobs` threads; the elapsed seconds.
fn threads(
    jobs: usize,
    count: usize,
    f: impl Fn(usize) -> Result<()> + Send + Sync + 'static,
) -> Result<f64> {
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..jobs)
        .map(|_| {
            let (f, next) = (f.clone(), next.clone());
            std::thread::spawn(move || -> Result<()> {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        return Ok(());
                    }
                    f(i)?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a bench thread panicked"))??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Run `f(client, object)` for every object with `jobs` in flight; the elapsed seconds.
async fn tasks<F, Fut>(
    client: &StorageClient,
    jobs: usize,
    count: usize,
    objs: Arc<Vec<PutObject>>,
    f: F,
) -> Result<f64>
where
    F: Fn(StorageClient, PutObject) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..jobs {
        let (client, next, objs, f) = (client.clone(), next.clone(), objs.clone(), f.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                f(client.clone(), objs[i].clone()).await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn report(b: &ObjBench, phases: &[Phase]) {
    let bytes = (b.size * b.count) as f64;
    let target = match &b.target {
        ObjTarget::Local(d) => format!("local {}", d.display()),
        ObjTarget::Remote(e, r) => format!("{e}{}", if *r { " replicated" } else { "" }),
    };
    if b.json {
        let p: Vec<String> = phases
            .iter()
            .map(|p| {
                format!(
                    "\"{}\":{{\"seconds\":{:.4},\"mb_s\":{:.1},\"ops_s\":{:.0}}}",
                    p.name,
                    p.seconds,
                    bytes / p.seconds / 1e6,
                    b.count as f64 / p.seconds
                )
            })
            .collect();
        println!(
            "{{\"target\":\"{target}\",\"size\":{},\"count\":{},\"jobs\":{},{}}}",
            b.size,
            b.count,
            b.jobs,
            p.join(",")
        );
        return;
    }
    for p in phases {
        println!(
            "{target}: {} {} x {} B, {} in flight: {:.1} MB/s, {:.0} ops/s ({:.2} s)",
            p.name,
            b.count,
            b.size,
            b.jobs,
            bytes / p.seconds / 1e6,
            b.count as f64 / p.seconds,
            p.seconds
        );
    }
}
