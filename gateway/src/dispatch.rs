//! The dispatcher: leases due asynchronous tasks and runs one attempt each
//! through [`Pipeline::attempt`], on the gateway's main runtime, driven by
//! the store ([`crate::asynchronous`]).

use crate::asynchronous::destination;
use crate::asynchronous::policy::{self, Next};
use crate::asynchronous::store::{Delivery, Leased};
use crate::asynchronous::task::{TaskRecord, TaskState};
use crate::asynchronous::{IDLE_LOOK, now_ms};
use crate::functions::Function;
use crate::pipeline::{AttemptOutcome, Pipeline};
use crate::scheduler::FunctionPool;
use crate::throttle::ConcurrencyPermit;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The most tasks one lease takes (then the dispatcher looks again at once).
const LEASE_BATCH: usize = 64;
/// How often done tasks past their retention are deleted (and whenever
/// more than `max_async_retained` are kept).
const PURGE_EVERY_MS: u64 = 60_000;
/// How long a removed function's tasks are looked for after its last one.
const REMOVED_WATCH: Duration = Duration::from_secs(60);
/// How often every function is looked at, whatever its hint says.
const FULL_LOOK_MS: u64 = 10_000;

/// How long a lease lasts: the longest an attempt can take (a wait in the
/// function's concurrency queue, an instance start, then the function's
/// timeout), with room to spare. An attempt that outlives it may run twice:
/// at least once, never lost.
fn lease_ms(p: &Pipeline, pool: &Function) -> u64 {
    let d = pool.cfg.throttle.queue_timeout
        + p.scheduler.start_timeout()
        + pool.cfg.timeout
        + Duration::from_secs(60);
    d.as_millis() as u64
}

/// The dispatcher: until [`crate::asynchronous::AsyncQueue::stop`].
pub async fn dispatch(p: Arc<Pipeline>) {
    let q = &p.asynchronous;
    match q.store.recover(now_ms()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            tasks = n,
            "asynchronous tasks leased by the previous process are due again"
        ),
        Err(e) => tracing::error!(error = %e, "asynchronous task store: recovery failed"),
    }
    let (mut last_purge, mut last_full_look) = (0, 0);
    while !q.stop.is_cancelled() {
        let now = now_ms();
        let mut wake_at = now + IDLE_LOOK.as_millis() as u64;
        // The hints are lower bounds kept by this process; once in a
        // while every function is looked at all the same.
        let full_look = now.saturating_sub(last_full_look) >= FULL_LOOK_MS;
        if full_look {
            last_full_look = now;
        }
        let (pools, per_function) = (p.scheduler.functions(), q.functions.load_full());
        for pool in pools.values() {
            let name = &pool.cfg.name;
            let Some(f) = per_function.get(name) else {
                continue;
            };
            let (slots, hint) = (&f.slots, &f.hint);
            let free = slots.available().min(LEASE_BATCH);
            if free == 0 {
                // An attempt ending wakes the dispatcher.
                continue;
            }
            let changed = hint.changed.swap(false, Ordering::AcqRel);
            let known = hint.next_ms.load(Ordering::Acquire);
            if !changed && known > now && !full_look {
                wake_at = wake_at.min(known);
                continue;
            }
            let until = now + lease_ms(&p, pool);
            let (leased, next) = match q.store.lease(name, now, free, until).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "asynchronous task store: lease failed");
                    (Vec::new(), Some(now + IDLE_LOOK.as_millis() as u64))
                }
            };
            let next = next.unwrap_or(u64::MAX);
            hint.next_ms.store(next, Ordering::Release);
            wake_at = wake_at.min(next);
            for l in leased {
                let Some(permit) = slots.try_acquire() else {
                    break;
                };
                let (p2, pool) = (p.clone(), pool.clone());
                q.attempts.spawn(run(p2, pool, l, permit));
            }
        }
        if let Some(next) = invalidate_removed(q).await {
            wake_at = wake_at.min(next);
        }
        q.publish_depth();
        let depth = q.store.depth();
        let (max_retained, retention) = {
            let l = q.limits();
            (l.max_retained, l.retention)
        };
        let over =
            depth.done > max_retained + crate::asynchronous::embedded::PURGE_BATCH as u64 / 4;
        if over || now.saturating_sub(last_purge) >= PURGE_EVERY_MS {
            last_purge = now;
            let before = now.saturating_sub(retention.as_millis() as u64);
            match q.store.purge(before, max_retained).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(tasks = n, "purged done asynchronous tasks"),
                Err(e) => tracing::warn!(error = %e, "asynchronous task store: purge failed"),
            }
        }
        let wait = Duration::from_millis(wake_at.saturating_sub(now_ms()));
        if wait.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = q.wake.notified() => {}
            _ = q.stop.cancelled() => {}
        }
    }
}

/// The due tasks of functions a reload removed end `Invalid`, a lease batch
/// at a time (a task waiting for a retry ends when it falls due); a function
/// with none left is forgotten. Returns when to look again.
async fn invalidate_removed(q: &crate::asynchronous::AsyncQueue) -> Option<u64> {
    let removed: Vec<_> = q.removed.lock().unwrap().clone();
    let mut wake = None;
    for r in removed {
        let (name, invalid) = (&r.function, &r.invalid);
        let now = now_ms();
        let (leased, next) = match q.store.lease(name, now, LEASE_BATCH, now + 60_000).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "asynchronous task store: lease failed");
                continue;
            }
        };
        let n = leased.len();
        for l in leased {
            let mut task = l.task;
            let why = "its function was removed from the configuration";
            task.state = TaskState::Invalid;
            task.ended_ms = Some(now);
            task.error = Some(why.into());
            task.event(TaskState::Invalid.as_str(), now, why.into());
            match q.store.update(task, None).await {
                Ok(true) => invalid.inc(),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "asynchronous task store: update failed"),
            }
        }
        if n > 0 {
            tracing::info!(function = %name, tasks = n, "asynchronous tasks of a removed function ended Invalid");
        }
        match (n, next) {
            (LEASE_BATCH, _) => wake = Some(now),
            (_, Some(t)) => wake = Some(wake.map_or(t, |w: u64| w.min(t))),
            (_, None) if r.since.elapsed() >= REMOVED_WATCH => {
                q.removed.lock().unwrap().retain(|o| o.function != *name)
            }
            (_, None) => {}
        }
    }
    wake
}

/// One attempt of a leased task, and what the rule makes of it.
async fn run(p: Arc<Pipeline>, pool: Arc<FunctionPool>, l: Leased, permit: ConcurrencyPermit) {
    let q = &p.asynchronous;
    let Leased {
        mut task,
        payload,
        was_due_ms,
    } = l;
    let started = now_ms();
    q.metrics
        .dispatch_delay
        .observe(started.saturating_sub(was_due_ms) as f64 / 1000.0);
    let kill = CancellationToken::new();
    let key = task.key();
    q.running.lock().unwrap().insert(key.clone(), kill.clone());
    let out = p.attempt(&pool, &task, payload.clone(), &kill).await;
    q.running.lock().unwrap().remove(&key);

    let now = now_ms();
    task.status = Some(out.status);
    task.instance_id = out.instance_id.clone();
    task.error = out.error.as_ref().map(|e| e.to_string());
    let (delivery, result) = settle(&mut task, &out, &pool, &payload, q.limits().retry_base, now);
    let has_delivery = delivery.is_some();
    let again = task.state == TaskState::Enqueued;
    let function = task.function.clone();
    match q.store.update(task, delivery).await {
        Ok(true) => {
            // The depth first: whoever sees the result sees the task gone.
            q.publish_depth();
            if let Some(i) = result {
                pool.metrics.async_results[i].inc();
            }
            // Only once committed: a lease before then would not see it due.
            if again {
                q.scheduled(&function);
            }
            if has_delivery {
                q.deliveries.notify_one();
            }
        }
        Ok(false) => {}
        // The lease expires and the task runs again.
        Err(e) => tracing::error!(error = %e, "asynchronous task store: update failed"),
    }
    drop(permit);
    q.wake.notify_one();
}

/// What the retry rule makes of an attempt's outcome, written into `task`:
/// retried, enqueued again, or done (with its destination record, and the
/// index of its result to count once committed).
fn settle(
    task: &mut TaskRecord,
    out: &AttemptOutcome,
    pool: &Function,
    payload: &[u8],
    retry_base: Duration,
    now: u64,
) -> (Option<Delivery>, Option<usize>) {
    let policy = &pool.cfg.asynchronous;
    let jitter = policy::jitter(&task.id, task.attempts);
    let next = policy::next(out.error.as_ref(), task, policy, retry_base, now, jitter);
    let mut delivery = None;
    let mut result = None;
    match next {
        Next::Retry { reason, at_ms } => {
            pool.metrics.async_retries[reason as usize].inc();
            task.state = TaskState::Enqueued;
            task.due_ms = at_ms;
            let detail = format!(
                "{}: {}",
                reason.as_str(),
                task.error.as_deref().unwrap_or("")
            );
            task.event("Retrying", now, detail);
        }
        Next::Requeue => {
            task.state = TaskState::Enqueued;
            task.due_ms = now;
            task.event("Enqueued", now, "the gateway was stopping".into());
        }
        Next::Done(state) => {
            task.state = state;
            task.ended_ms = Some(now);
            task.event(state.as_str(), now, task.error.clone().unwrap_or_default());
            // Counted once committed (below): a write that fails leaves
            // the task to run again, and it must not count twice.
            if state != TaskState::Stopped {
                result = state.done_index();
            }
            let url = match state {
                TaskState::Succeeded => policy.on_success.as_ref(),
                _ => policy.on_failure.as_ref(),
            };
            if let (Some(url), Some(condition)) = (url, state.condition()) {
                let response = destination::Response {
                    status: out.status,
                    function_error: out.function_error,
                    body: &out.body,
                };
                delivery = Some(destination::record(
                    task,
                    condition,
                    &url.to_string(),
                    payload,
                    &response,
                    now,
                ));
            }
        }
    }
    (delivery, result)
}
