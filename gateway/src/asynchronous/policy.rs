//! Function Compute's retry rule for asynchronous invocations, pure: no
//! clock, no store, no randomness of its own (the jitter is an input), so
//! every sequence is a unit test.

use super::task::{TaskRecord, TaskState};
use crate::config::AsyncPolicy;
use crate::error::{InvokeError, Outcome};
use std::time::Duration;

/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

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

/// After an attempt: done in a final state, another attempt at a time, or
/// back to the queue at once without counting (the gateway was stopping:
/// the attempt never had its chance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Done(TaskState),
    Retry { reason: RetryReason, at_ms: u64 },
    Requeue,
}

/// The rule, applied to the attempt that ended at `now_ms` with `error`
/// (`None`: success). Updates the record's counters.
/// - a function error is retried up to `max_retries` times, waits doubling
///   from `base`;
/// - throttling and gateway errors are retried with binary exponential
///   backoff from `base` and jitter (the wait is drawn in its upper half by
///   `jitter` in `[0, 1)`), without a count;
/// - a retry due after the event's maximum age ends the task as expired;
/// - a stopping gateway puts it back as it was.
pub fn next(
    error: Option<&InvokeError>,
    task: &mut TaskRecord,
    policy: &AsyncPolicy,
    base: Duration,
    now_ms: u64,
    jitter: f64,
) -> Next {
    let Some(e) = error else {
        return Next::Done(TaskState::Succeeded);
    };
    let (reason, after) = match e.outcome() {
        Outcome::FunctionError if task.retries >= policy.max_retries => {
            return Next::Done(TaskState::Failed);
        }
        Outcome::FunctionError => {
            task.retries += 1;
            (RetryReason::FunctionError, backoff(base, task.retries - 1))
        }
        _ if matches!(e, InvokeError::ShuttingDown) => return Next::Requeue,
        _ if matches!(e, InvokeError::AsyncTaskStopped) => return Next::Done(TaskState::Stopped),
        outcome => {
            task.backoffs += 1;
            let full = backoff(base, task.backoffs - 1);
            let reason = match outcome {
                Outcome::Throttled => RetryReason::Throttled,
                _ => RetryReason::Error,
            };
            (reason, full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
        }
    };
    let at_ms = now_ms.saturating_add(after.as_millis() as u64);
    let deadline = task
        .accepted_ms
        .saturating_add(policy.max_event_age.as_millis() as u64);
    if at_ms > deadline {
        return Next::Done(TaskState::Expired);
    }
    Next::Retry { reason, at_ms }
}

/// The full wait before the attempt after `n` earlier waits of the same kind.
pub fn backoff(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1 << n.min(16)).min(MAX_DELAY)
}

/// A jitter in `[0, 1)` that differs between tasks and attempts without a
/// random number generator: tasks throttled together spread out.
pub fn jitter(id: &str, attempt: u32) -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write(id.as_bytes());
    h.write_u32(attempt);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throttle::{LimitKind, Throttled};

    fn policy(max_retries: u32, age_s: u64) -> AsyncPolicy {
        AsyncPolicy {
            max_retries,
            max_event_age: Duration::from_secs(age_s),
            max_concurrency: 1,
            on_success: None,
            on_failure: None,
        }
    }

    fn task() -> TaskRecord {
        serde_json::from_str(
            r#"{"id":"t","request_id":"r","function":"f","api":"fc","caller":{"network":"internet"},
                "payload_bytes":0,"accepted_ms":0,"due_ms":0,"state":"Running","attempts":1,
                "retries":0,"backoffs":0,"events":[]}"#,
        )
        .unwrap()
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

    const S: u64 = 1000;

    #[test]
    fn function_errors_are_retried_up_to_the_limit() {
        let base = Duration::from_secs(1);
        let mut t = task();
        let p = policy(3, 3600);
        let waits: Vec<Next> = (0..4)
            .map(|_| next(Some(&crash()), &mut t, &p, base, 10 * S, 0.0))
            .collect();
        let retry = |s| Next::Retry {
            reason: RetryReason::FunctionError,
            at_ms: 10 * S + s * S,
        };
        assert_eq!(
            waits,
            [retry(1), retry(2), retry(4), Next::Done(TaskState::Failed)]
        );
        assert_eq!(t.retries, 3);
        assert_eq!(
            next(None, &mut t, &p, base, 0, 0.0),
            Next::Done(TaskState::Succeeded)
        );
        // No retries at all when so configured.
        let mut t = task();
        assert_eq!(
            next(Some(&crash()), &mut t, &policy(0, 3600), base, 0, 0.0),
            Next::Done(TaskState::Failed)
        );
    }

    #[test]
    fn throttling_and_gateway_errors_back_off_with_jitter_until_the_event_ages_out() {
        let base = Duration::from_secs(1);
        let mut t = task();
        let p = policy(0, 100);
        // Not counted against max_retries: it is 0 here. No jitter: half the wait.
        let r = next(Some(&throttled()), &mut t, &p, base, 0, 0.0);
        assert_eq!(
            r,
            Next::Retry {
                reason: RetryReason::Throttled,
                at_ms: 500
            }
        );
        // Full jitter draws the whole wait (2 s the second time).
        let r = next(Some(&InvokeError::internal("x")), &mut t, &p, base, 0, 1.0);
        assert_eq!(
            r,
            Next::Retry {
                reason: RetryReason::Error,
                at_ms: 2000
            }
        );
        // The next wait (2-4 s) would end after the event's 100 s age.
        let r = next(Some(&throttled()), &mut t, &p, base, 99 * S, 0.0);
        assert_eq!(r, Next::Done(TaskState::Expired));
        // A function error and a throttle keep separate counts.
        let mut t = task();
        next(Some(&throttled()), &mut t, &policy(2, 100), base, 0, 0.0);
        let r = next(Some(&crash()), &mut t, &policy(2, 100), base, 0, 0.0);
        assert_eq!(
            r,
            Next::Retry {
                reason: RetryReason::FunctionError,
                at_ms: S
            }
        );
    }

    #[test]
    fn a_stopping_gateway_requeues_and_a_stop_ends_the_task() {
        let mut t = task();
        let p = policy(3, 100);
        let r = next(
            Some(&InvokeError::ShuttingDown),
            &mut t,
            &p,
            Duration::from_secs(1),
            0,
            0.0,
        );
        assert_eq!(r, Next::Requeue);
        assert_eq!((t.retries, t.backoffs), (0, 0));
        let r = next(
            Some(&InvokeError::AsyncTaskStopped),
            &mut t,
            &p,
            Duration::from_secs(1),
            0,
            0.0,
        );
        assert_eq!(r, Next::Done(TaskState::Stopped));
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let base = Duration::from_secs(1);
        let waits: Vec<_> = (0..5).map(|n| backoff(base, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(backoff(base, 9), MAX_DELAY);
        assert_eq!(backoff(base, u32::MAX), MAX_DELAY);
    }

    #[test]
    fn jitter_is_in_range() {
        for n in 0..100 {
            let j = jitter("task", n);
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
