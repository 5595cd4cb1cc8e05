//! Asynchronous invocations (FC's `Async`, Lambda's `Event`): accepted
//! durably, run at least once, retried by Function Compute's rules, and
//! their outcome sent to a destination.
//!
//! ```text
//! pipeline (stages 1-7) ──submit──▶ TaskStore ◀──lease / update── dispatcher ──▶ Pipeline::attempt (8-9)
//!        202 after the commit          │                                     
//!                                      └── destination records ──▶ deliverer ──▶ on_success / on_failure
//! ```
//!
//! - [`task`]: the record of one task, plain serializable data (wall-clock
//!   times, counters, state, history).
//! - [`policy`]: the retry rule, pure (`outcome × record → done | retry at`).
//! - [`store`]: the [`store::TaskStore`] seam; [`embedded`] is the default
//!   implementation (redb, group commit), in a file or in memory.
//! - [`crate::dispatch`] (above the pipeline): leases due tasks, per
//!   function up to its `async_max_concurrency`, and runs one attempt each
//!   through [`crate::pipeline::Pipeline::attempt`].
//! - `deliver`: the deliverer, which needs only the queue.
//! - [`destination`]: the destination record and its delivery.
//!
//! Promises:
//! - the caller gets 202 only once its task is committed (fsync'd): a crash
//!   after that does not lose it;
//! - a task is attempted at least once: a lease not completed (the gateway
//!   died, or the attempt outlived its lease) makes it due again, and on
//!   start every task leased by the previous process is due at once. Every
//!   attempt carries the accepting request's id, so a function can
//!   deduplicate;
//! - a graceful stop lets running attempts finish (within the drain) and
//!   leaves waiting tasks in the store;
//! - a caller-chosen task id (`x-fc-async-task-id`) already known is not
//!   run again: the second submission gets 202 with the first one's
//!   request id.
//!
//! Bounds: `max_async_queued` tasks and `max_async_queued_bytes` payload
//! bytes not done (beyond: 429 `ResourceThrottled`, limit `async_queue`),
//! each payload at most `max_async_body_bytes`; done tasks are kept for
//! `async_retention_s`, then deleted.

mod deliver;
pub mod destination;
pub mod embedded;
mod metrics;
pub mod policy;
pub mod store;
pub mod task;

use crate::config::{AsyncLimits, AsyncStoreKind};
use bytes::Bytes;
pub use metrics::AsyncMetrics;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;
use store::{Appended, StoreError, TaskStore};
use task::TaskRecord;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The dispatcher and the deliverer look at the store at least this often
/// (metrics, purge, and leases that expired without a wake-up).
pub(crate) const IDLE_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    crate::metering::unix_ms(SystemTime::now())
}

/// The asynchronous side of a gateway: its store, and what the dispatcher
/// shares with the pipeline.
pub struct AsyncQueue {
    /// Swapped by a reload (retries, retention, destinations' age, the
    /// payload bound); the store's bounds, kind and path, and the
    /// destinations' trust, are the ones it opened with.
    limits: arc_swap::ArcSwap<AsyncLimits>,
    pub store: Arc<dyn TaskStore>,
    pub metrics: AsyncMetrics,
    /// Something became due or a slot freed: the dispatcher looks again.
    pub(crate) wake: Notify,
    /// Destination records were written.
    pub(crate) deliveries: Notify,
    /// Graceful stop: no more submissions, no more leases.
    pub(crate) stop: CancellationToken,
    pub(crate) attempts: TaskTracker,
    /// Running attempts by task key, to stop them.
    pub(crate) running: std::sync::Mutex<HashMap<String, CancellationToken>>,
    /// Per function, swapped whole by a reload.
    pub(crate) functions: arc_swap::ArcSwap<HashMap<Arc<str>, Arc<PerFunction>>>,
    /// Functions a reload removed whose tasks are still in the store: the
    /// dispatcher ends them `Invalid`, counting each on the handle given.
    pub(crate) removed: std::sync::Mutex<Vec<Removed>>,
    pub(crate) client: destination::Client,
}

/// A function a reload removed, until its tasks have ended.
#[derive(Clone)]
pub(crate) struct Removed {
    pub(crate) function: Arc<str>,
    /// Its `fngate_async_results_total{result="invalid"}`.
    pub(crate) invalid: prometheus::IntCounter,
    /// Looked after for a while even with no task left: a call that found
    /// the function just before the reload may still commit one.
    pub(crate) since: std::time::Instant,
}

/// One function's `async_max_concurrency` slots, and what the dispatcher
/// knows of its due tasks (so an idle function costs it neither a read nor
/// a commit).
pub(crate) struct PerFunction {
    pub(crate) slots: crate::throttle::Concurrency,
    pub(crate) hint: DueHint,
}

/// When a function's next task is due, as its last lease said (only the
/// dispatcher writes it), and whether a task became due since (set after
/// each commit that schedules one; the dispatcher clears it before it
/// leases, so a commit during a lease makes it look again).
pub(crate) struct DueHint {
    pub(crate) next_ms: std::sync::atomic::AtomicU64,
    pub(crate) changed: std::sync::atomic::AtomicBool,
}

impl Default for DueHint {
    fn default() -> Self {
        // Unknown at start: look at once.
        DueHint {
            next_ms: std::sync::atomic::AtomicU64::new(0),
            changed: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

/// What a submission did.
#[derive(Debug)]
pub enum Submitted {
    New,
    /// The task id was known: its first submission's request id.
    Known {
        request_id: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("async_destination_ca_file: {0}")]
    CaFile(#[from] crate::backend::client::TrustError),
}

impl AsyncQueue {
    /// `store`: a broker-backed store (fleet mode); `None` opens the
    /// embedded one `limits` describe.
    pub fn open<'a>(
        limits: AsyncLimits,
        functions: impl Iterator<Item = (&'a Arc<str>, u32)>,
        metrics: AsyncMetrics,
        store: Option<Arc<dyn TaskStore>>,
    ) -> Result<Self, OpenError> {
        let store = match store {
            Some(s) => s,
            None => {
                let bounds = embedded::Bounds {
                    max_tasks: limits.max_queued.into(),
                    max_bytes: limits.max_queued_bytes,
                };
                let path = match limits.store {
                    AsyncStoreKind::Embedded => Some(limits.store_path.as_path()),
                    AsyncStoreKind::Memory => None,
                };
                Arc::new(embedded::Embedded::open(
                    path,
                    bounds,
                    metrics.commit_seconds.clone(),
                )?)
            }
        };
        let ca = (limits.destination_ca_file.as_deref())
            .map(crate::backend::client::read_ca_file)
            .transpose()?;
        let client = destination::client(ca.as_deref())?;
        let q = AsyncQueue {
            functions: Default::default(),
            removed: Default::default(),
            limits: arc_swap::ArcSwap::from_pointee(limits),
            store,
            metrics,
            wake: Notify::new(),
            deliveries: Notify::new(),
            stop: CancellationToken::new(),
            attempts: TaskTracker::new(),
            running: Default::default(),
            client,
        };
        q.set_functions(functions);
        q.publish_depth();
        Ok(q)
    }

    /// The functions served, with their `async_max_concurrency` (at open
    /// and at each reload): a function kept keeps its slots, resized if
    /// its concurrency changed, and what is known of its due tasks.
    pub fn set_functions<'a>(&self, functions: impl Iterator<Item = (&'a Arc<str>, u32)>) {
        let old = self.functions.load();
        let next: HashMap<Arc<str>, Arc<PerFunction>> = functions
            .map(|(name, n)| {
                let f = match old.get(name) {
                    Some(f) if f.slots.configured() == n => f.clone(),
                    Some(f) => Arc::new(PerFunction {
                        slots: f.slots.resized(n),
                        hint: Default::default(),
                    }),
                    None => Arc::new(PerFunction {
                        slots: crate::throttle::Concurrency::new(n),
                        hint: Default::default(),
                    }),
                };
                (name.clone(), f)
            })
            .collect();
        // A function served again keeps its tasks.
        (self.removed.lock().unwrap()).retain(|r| !next.contains_key(&r.function));
        self.functions.store(Arc::new(next));
        self.wake.notify_one();
    }

    pub fn limits(&self) -> arc_swap::Guard<Arc<AsyncLimits>> {
        self.limits.load()
    }

    /// A reload's asynchronous settings.
    pub fn set_limits(&self, limits: AsyncLimits) {
        self.limits.store(Arc::new(limits));
    }

    /// A reload removed `function`: its tasks still in the store end
    /// `Invalid` (counted on `invalid`), as the dispatcher finds them.
    pub fn removed(&self, function: Arc<str>, invalid: prometheus::IntCounter) {
        let since = std::time::Instant::now();
        (self.removed.lock().unwrap()).push(Removed {
            function,
            invalid,
            since,
        });
        self.wake.notify_one();
    }

    /// Commits `task` (the caller may then be told 202).
    pub async fn submit(&self, task: TaskRecord, payload: Bytes) -> Result<Submitted, StoreError> {
        if self.stop.is_cancelled() {
            return Err(StoreError::Closed);
        }
        let started = std::time::Instant::now();
        let function = task.function.clone();
        let appended = self.store.append(task, payload).await;
        self.metrics
            .enqueue_seconds
            .observe(started.elapsed().as_secs_f64());
        match appended? {
            Appended::New => {
                self.scheduled(&function);
                self.publish_depth();
                Ok(Submitted::New)
            }
            Appended::Known(t) => Ok(Submitted::Known {
                request_id: t.request_id,
            }),
        }
    }

    /// A commit scheduled a task of `function`: the dispatcher looks again.
    pub(crate) fn scheduled(&self, function: &str) {
        if let Some(f) = self.functions.load().get(function) {
            f.hint
                .changed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// Kills the running attempt of `function`'s task `id`, if there is one here.
    pub fn kill(&self, function: &str, id: &str) {
        let key = task::task_key(function, id);
        if let Some(token) = self.running.lock().unwrap().get(&key) {
            token.cancel();
        }
    }

    /// On graceful stop: no more submissions or leases; running attempts
    /// go on (see [`AsyncQueue::wait`]); waiting tasks stay in the store.
    pub fn stop(&self) {
        self.stop.cancel();
        self.attempts.close();
    }

    /// Resolves when every running attempt has ended (after [`AsyncQueue::stop`]).
    pub async fn wait(&self) {
        self.attempts.wait().await;
    }

    /// Attempts still running (at the end of a drain: their tasks stay
    /// leased in the store and run again after the next start).
    pub fn running(&self) -> usize {
        self.running.lock().unwrap().len()
    }

    pub(crate) fn publish_depth(&self) {
        let d = self.store.depth();
        self.metrics.queued.set(d.tasks as i64);
        self.metrics.queued_bytes.set(d.bytes as i64);
        self.metrics.destinations_pending.set(d.deliveries as i64);
        let age = d
            .oldest_accepted_ms
            .map_or(0.0, |t| now_ms().saturating_sub(t) as f64 / 1000.0);
        self.metrics.oldest_age.set(age);
    }
}
