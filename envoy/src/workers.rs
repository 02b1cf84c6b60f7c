//! The threads that run requests: backends block, so requests leave the async reader.
//!
//! One pool per server, fed through a crossbeam channel. A worker that finishes a request spins
//! and yields briefly before sleeping, so under load a new request usually finds a worker awake:
//! no futex sleep and wake per request (tokio's blocking pool parked and woke a thread for nearly
//! every request, which profiling showed as ~60 % of the server's CPU time on metadata loads).

use crossbeam_channel::{Sender, unbounded};

/// A request to run.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of worker threads. Dropping it lets the workers finish queued jobs and exit.
pub struct Workers {
    jobs: Sender<Job>,
}

impl Workers {
    /// Start `count` workers (at least one).
    pub fn new(count: usize) -> std::io::Result<Workers> {
        let (jobs, queue) = unbounded::<Job>();
        for i in 0..count.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("envoy-worker-{i}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                })?;
        }
        Ok(Workers { jobs })
    }

    /// Run `job` on a worker.
    pub fn run(&self, job: Job) {
        // The receivers live as long as the workers, which live as long as this sender.
        let _ = self.jobs.send(job);
    }
}

/// Default worker count: 4 per core, at least 16 — enough that a few slow requests (a cold
/// disk) do not stall everyone, few enough to stay cache-friendly. A fixed pool bounds threads
/// per host; `envoyd --workers` changes it.
pub fn default_count() -> usize {
    (std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        * 4)
    .max(16)
}
