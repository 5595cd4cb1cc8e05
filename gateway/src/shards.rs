//! Runtime shards: one single-threaded tokio runtime per thread, nginx-style.
//!
//! Why not tokio's multi-threaded scheduler: on the request path a
//! connection never needs another thread, and the work-stealing scheduler's
//! atomics and cross-thread wake-ups cost about 15% of the gateway's CPU per
//! request (measured on the allowed path; see loadtest/RESULTS.md). So each
//! accepted connection is handed to one shard for its whole life: its TLS,
//! its HTTP (HTTP/2 streams are spawned on the same shard), its upstream
//! connections (see [`crate::upstream`], pooled per shard).
//!
//! Shard 0 is the runtime that called [`Shards::start`]; it also runs the
//! accept loops, the admin listener, the reaper and the embedded worker.
//! Shards 1.. are threads named `fngate-shard-N`. Connections are dealt round
//! robin. State shared by all shards (scheduler, limiters, metrics) is
//! already `Sync` and lock-free or per-function locked.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

static COUNT: OnceLock<usize> = OnceLock::new();

/// The shard this thread runs (0 outside shard threads).
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// How many shards this process runs (1 until [`Shards::start`]).
pub fn count() -> usize {
    COUNT.get().copied().unwrap_or(1)
}

/// The number of shards when the configuration does not say: one per CPU
/// this process may run on (`taskset` and cgroup cpusets count).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    /// Starts `n - 1` shard threads; the calling runtime is shard 0.
    pub fn start(n: usize) -> std::io::Result<Shards> {
        let n = n.max(1);
        // The first gateway in a process sizes the per-shard pools.
        let _ = COUNT.set(n);
        let stop = CancellationToken::new();
        let mut handles = vec![Handle::current()];
        let mut threads = Vec::new();
        for i in 1..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fngate-shard-{i}"))
                    .spawn(move || {
                        CURRENT.with(|c| c.set(i));
                        rt.block_on(stop.cancelled());
                    })?,
            );
        }
        Ok(Shards {
            handles,
            next: AtomicUsize::new(0),
            stop,
            threads,
        })
    }

    /// The shard for the next connection.
    pub fn pick(&self) -> (usize, &Handle) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        (i, &self.handles[i])
    }

    /// Stops the shard threads (their remaining tasks are dropped) and waits
    /// for them off the runtime.
    pub async fn stop(self) {
        self.stop.cancel();
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_dealt_round_robin_and_tasks_run_on_their_shard() {
        let shards = Shards::start(3).unwrap();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (i, h) = shards.pick();
            let ran_on = h.spawn(async { current() }).await.unwrap();
            assert_eq!(ran_on, i);
            seen.push(i);
        }
        assert_eq!(seen, [0, 1, 2, 0, 1, 2]);
        shards.stop().await;
    }
}
