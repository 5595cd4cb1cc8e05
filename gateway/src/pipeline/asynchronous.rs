//! Asynchronous invocations (FC's `Async`, Lambda's `Event`).
//!
//! The caller passes stages 1-7 as for a synchronous call (ingress,
//! credentials and rate limits apply when it calls), then gets 202 with its
//! request id at once.
//! The invocation then runs in its own task, as the gateway's own call
//! (`Origin::Internal`: counted under the `internal` network, with no traffic,
//! since no client reads its answer), through the function's concurrency
//! limit and stages 8-9. As in Function Compute:
//! - a function error (timeout, crash, invalid answer) is retried up to the
//!   function's `async_max_retries` times;
//! - throttling and gateway errors are retried with binary exponential
//!   backoff, without a count;
//! - an invocation not done within `async_max_event_age_s` of its acceptance
//!   is dropped (`expired`).
//!
//! Retry delays start at `async_retry_base_ms` and double, up to
//! [`MAX_DELAY`]. Every attempt is one invocation in the metrics and the usage
//! log, under the accepted request's id, which the function also receives.
//!
//! Bounds: at most `max_async_queued` invocations accepted and not done
//! (beyond: 429 `ResourceThrottled`), each payload at most
//! `max_async_body_bytes`. The queue is in memory: a graceful stop lets
//! running attempts finish and drops waiting retries (`dropped`); a crash
//! loses what was queued. Durable, at-least-once delivery across gateway
//! restarts is not built.

use super::{Ctx, Done, Pipeline};
use crate::api::Api;
use crate::config::AsyncLimits;
use crate::error::{InvokeError, Outcome};
use crate::ingress::Origin;
use crate::metrics::GaugeGuard;
use crate::scheduler::FunctionPool;
use crate::throttle::{LimitKind, Throttled};
use bytes::Bytes;
use http::HeaderValue;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// How an accepted invocation ended, as counted in `fngate_async_results_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncResult {
    Succeeded,
    /// Still a function error after its last retry.
    Failed,
    /// Not done within the function's `async_max_event_age_s`.
    Expired,
    /// Waiting for a retry when the gateway stopped.
    Dropped,
}

impl AsyncResult {
    pub const ALL: [AsyncResult; 4] = [
        AsyncResult::Succeeded,
        AsyncResult::Failed,
        AsyncResult::Expired,
        AsyncResult::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AsyncResult::Succeeded => "succeeded",
            AsyncResult::Failed => "failed",
            AsyncResult::Expired => "expired",
            AsyncResult::Dropped => "dropped",
        }
    }
}

/// Why an attempt is retried, as counted in `fngate_async_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    FunctionError,
    Throttled,
    Error,
}

impl RetryReason {
    pub const ALL: [RetryReason; 3] = [
        RetryReason::FunctionError,
        RetryReason::Throttled,
        RetryReason::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::FunctionError => "function_error",
            RetryReason::Throttled => "throttled",
            RetryReason::Error => "error",
        }
    }
}

/// What is kept of an accepted invocation until it is done.
pub struct Job {
    pub pool: Arc<FunctionPool>,
    /// The door it came through: its attempts are counted under it.
    pub api: Api,
    pub payload: Bytes,
    pub content_type: Option<HeaderValue>,
    pub request_id: HeaderValue,
    pub qualifier: Option<Arc<str>>,
    pub accepted: Instant,
}

pub struct AsyncQueue {
    pub limits: AsyncLimits,
    slots: Arc<Semaphore>,
    dropped: std::sync::atomic::AtomicU64,
    tasks: TaskTracker,
    stop: CancellationToken,
    queued: prometheus::IntGauge,
}

impl AsyncQueue {
    pub fn new(limits: AsyncLimits, queued: prometheus::IntGauge) -> Self {
        AsyncQueue {
            slots: Arc::new(Semaphore::new(limits.max_queued as usize)),
            dropped: Default::default(),
            limits,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            queued,
        }
    }

    /// On graceful stop: accepts no more and drops waiting retries at once;
    /// running attempts go on (see [`AsyncQueue::wait`]).
    pub fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
    }

    /// Resolves when every accepted invocation is done (after [`AsyncQueue::stop`]).
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }

    /// Invocations that ended dropped (waiting, or stopped with the gateway).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What an invocation's attempts so far were refused for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Retries after a function error.
    pub retries: u32,
    /// Waits after throttling or a gateway error.
    pub backoffs: u32,
}

/// After an attempt: done, or another attempt after a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Done(AsyncResult),
    Retry {
        reason: RetryReason,
        after: Duration,
    },
}

/// Function Compute's retry rule, pure: after an attempt that ended with
/// `error` (`None`: success), given what came before (`tally`, updated) and
/// the time `left` before the event's maximum age.
/// - a function error is retried up to `max_retries` times;
/// - throttling and gateway errors are retried with binary exponential
///   backoff from `base`, without a count;
/// - a wait that would outlast `left` ends the invocation as expired;
/// - a stopping gateway ends it as dropped.
pub fn next(
    error: Option<&InvokeError>,
    tally: &mut Tally,
    policy: &crate::config::AsyncPolicy,
    base: Duration,
    left: Duration,
) -> Next {
    let Some(e) = error else {
        return Next::Done(AsyncResult::Succeeded);
    };
    let (reason, after) = match e.outcome() {
        Outcome::FunctionError if tally.retries >= policy.max_retries => {
            return Next::Done(AsyncResult::Failed);
        }
        Outcome::FunctionError => {
            tally.retries += 1;
            (RetryReason::FunctionError, backoff(base, tally.retries - 1))
        }
        Outcome::Throttled => {
            tally.backoffs += 1;
            (RetryReason::Throttled, backoff(base, tally.backoffs - 1))
        }
        _ if matches!(e, InvokeError::ShuttingDown) => return Next::Done(AsyncResult::Dropped),
        _ => {
            tally.backoffs += 1;
            (RetryReason::Error, backoff(base, tally.backoffs - 1))
        }
    };
    if after > left {
        return Next::Done(AsyncResult::Expired);
    }
    Next::Retry { reason, after }
}

/// The wait before the attempt after `n` earlier waits of the same kind.
pub fn backoff(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1 << n.min(16)).min(MAX_DELAY)
}

impl Pipeline {
    /// Queues `job`, or says why not (the queue is full, or the gateway is
    /// stopping).
    pub(super) fn enqueue(self: &Arc<Self>, job: Job) -> Result<(), InvokeError> {
        let q = &self.asynchronous;
        if q.stop.is_cancelled() {
            return Err(InvokeError::ShuttingDown);
        }
        let Ok(slot) = q.slots.clone().try_acquire_owned() else {
            job.pool.metrics.throttles[LimitKind::AsyncQueue as usize].inc();
            return Err(InvokeError::Throttled(Throttled {
                limit: LimitKind::AsyncQueue,
                retry_after: job.pool.limits.retry_hint(),
            }));
        };
        q.queued.inc();
        let p = self.clone();
        q.tasks.spawn(async move {
            let result = p.run_async(&job).await;
            job.pool.metrics.async_results[result as usize].inc();
            if result == AsyncResult::Dropped {
                p.asynchronous
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            p.asynchronous.queued.dec();
            drop(slot);
        });
        Ok(())
    }

    async fn run_async(&self, job: &Job) -> AsyncResult {
        let policy = &job.pool.cfg.asynchronous;
        let base = self.asynchronous.limits.retry_base;
        let deadline = job.accepted + policy.max_event_age;
        let mut tally = Tally::default();
        loop {
            let outcome = self.attempt_async(job).await;
            let left = deadline.saturating_duration_since(Instant::now());
            let (reason, delay) = match next(outcome.as_ref().err(), &mut tally, policy, base, left)
            {
                Next::Done(result) => return result,
                Next::Retry { reason, after } => (reason, after),
            };
            job.pool.metrics.async_retries[reason as usize].inc();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.asynchronous.stop.cancelled() => return AsyncResult::Dropped,
            }
        }
    }

    /// One attempt: the function's concurrency limit, then stages 8-9, then
    /// [`Pipeline::account`] like any invocation (with the status the door
    /// would have answered, though no client reads it).
    async fn attempt_async(&self, job: &Job) -> Result<(), InvokeError> {
        let dialect = self.dialects.get(job.api);
        let ctx = Ctx {
            dialect,
            request_id: job.request_id.clone(),
            origin: Origin::Internal,
            started: Instant::now(),
            wall: SystemTime::now(),
        };
        let pool = &job.pool;
        let done = |outcome, ran| Done {
            pool: Some(pool),
            function: &pool.cfg.name,
            qualifier: job.qualifier.as_deref(),
            outcome,
            bytes_in: 0,
            ran,
            key: None,
        };
        let _permit = match self
            .throttle(pool, &Origin::Internal, crate::api::Kind::Sync, None)
            .await
        {
            Ok(p) => p,
            Err(t) => {
                let e = InvokeError::Throttled(t);
                let status = dialect.status(&e);
                self.account(&ctx, job.api, done(Outcome::Throttled, None), status, 0)
                    .await;
                return Err(e);
            }
        };
        let _in_flight = GaugeGuard::new(&pool.metrics.in_flight);
        let call = super::forward::Call::event(job.content_type.as_ref());
        let result =
            super::forward::call(self, pool, &call, job.payload.clone(), &ctx.request_id).await;
        let (outcome, ran, status, err) = match result {
            Ok((answer, ran)) => {
                pool.limits.record_duration(ctx.started.elapsed());
                let status = dialect.success_status(answer.status);
                (Outcome::Success, Some(ran), status, None)
            }
            Err((e, ran)) => {
                if let InvokeError::Throttled(t) = &e {
                    pool.metrics.throttles[t.limit as usize].inc();
                }
                tracing::info!(function = %pool.cfg.name, request_id = ?ctx.request_id, error = %e, "asynchronous attempt failed");
                (e.outcome(), ran, dialect.status(&e), Some(e))
            }
        };
        self.account(&ctx, job.api, done(outcome, ran), status, 0)
            .await;
        err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_retries: u32) -> crate::config::AsyncPolicy {
        crate::config::AsyncPolicy {
            max_retries,
            max_event_age: Duration::from_secs(3600),
        }
    }

    fn crash() -> InvokeError {
        InvokeError::InstanceCrashed {
            detail: "exited".into(),
        }
    }

    fn throttled() -> InvokeError {
        InvokeError::Throttled(Throttled {
            limit: LimitKind::FunctionConcurrency,
            retry_after: Duration::from_millis(1),
        })
    }

    #[test]
    fn function_errors_are_retried_up_to_the_limit() {
        let (base, left) = (Duration::from_secs(1), Duration::from_secs(3600));
        let mut t = Tally::default();
        let p = policy(3);
        let waits: Vec<Next> = (0..4)
            .map(|_| next(Some(&crash()), &mut t, &p, base, left))
            .collect();
        assert_eq!(
            waits,
            [1, 2, 4]
                .map(|s| Next::Retry {
                    reason: RetryReason::FunctionError,
                    after: Duration::from_secs(s)
                })
                .into_iter()
                .chain([Next::Done(AsyncResult::Failed)])
                .collect::<Vec<_>>()
        );
        assert_eq!(
            next(None, &mut t, &p, base, left),
            Next::Done(AsyncResult::Succeeded)
        );
        // No retries at all when so configured.
        let mut t = Tally::default();
        assert_eq!(
            next(Some(&crash()), &mut t, &policy(0), base, left),
            Next::Done(AsyncResult::Failed)
        );
    }

    #[test]
    fn throttling_and_gateway_errors_back_off_until_the_event_ages_out() {
        let base = Duration::from_secs(1);
        let mut t = Tally::default();
        let p = policy(0);
        // Not counted against max_retries: it is 0 here.
        let r = next(
            Some(&throttled()),
            &mut t,
            &p,
            base,
            Duration::from_secs(100),
        );
        assert_eq!(
            r,
            Next::Retry {
                reason: RetryReason::Throttled,
                after: base
            }
        );
        let r = next(
            Some(&InvokeError::internal("x")),
            &mut t,
            &p,
            base,
            Duration::from_secs(100),
        );
        assert_eq!(
            r,
            Next::Retry {
                reason: RetryReason::Error,
                after: 2 * base
            }
        );
        // The next wait (4 s) would outlast what is left of the event's age.
        let r = next(Some(&throttled()), &mut t, &p, base, Duration::from_secs(3));
        assert_eq!(r, Next::Done(AsyncResult::Expired));
        // A function error and a throttle keep separate counts.
        let mut t = Tally::default();
        next(
            Some(&throttled()),
            &mut t,
            &policy(2),
            base,
            Duration::from_secs(100),
        );
        let r = next(
            Some(&crash()),
            &mut t,
            &policy(2),
            base,
            Duration::from_secs(100),
        );
        assert_eq!(
            r,
            Next::Retry {
                reason: RetryReason::FunctionError,
                after: base
            }
        );
    }

    #[test]
    fn a_stopping_gateway_drops_what_is_left() {
        let mut t = Tally::default();
        let r = next(
            Some(&InvokeError::ShuttingDown),
            &mut t,
            &policy(3),
            Duration::from_secs(1),
            Duration::from_secs(100),
        );
        assert_eq!(r, Next::Done(AsyncResult::Dropped));
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let base = Duration::from_secs(1);
        let waits: Vec<_> = (0..5).map(|n| backoff(base, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(backoff(base, 9), MAX_DELAY);
        assert_eq!(backoff(base, u32::MAX), MAX_DELAY);
    }
}
