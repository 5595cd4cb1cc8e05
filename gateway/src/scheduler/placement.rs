//! Placement: which worker a new instance goes to.
//!
//! Best fit: the worker with the least free memory that still fits the
//! function's `memory_mb`, so large holes stay free for large functions.
//! Memory is reserved in the gateway's view before the worker is asked; a
//! worker that refuses (another gateway took the memory) or does not answer
//! in time is skipped. A start the gateway gave up on may still happen on a
//! slow worker: it is released there in the background.

use super::{Instance, Scheduler};
use crate::config::FunctionConfig;
use crate::error::InvokeError;
use crate::workers::{Worker, WorkerError};
use sandbox_runtime::api::{ApiErrorCode, CreateInstance, InstanceInfo};
use std::sync::Arc;

/// Index of the best-fit worker among `free_mb`, or `None` when none fits.
pub fn best_fit(free_mb: impl IntoIterator<Item = u64>, want: u64) -> Option<usize> {
    free_mb
        .into_iter()
        .enumerate()
        .filter(|(_, free)| *free >= want)
        .min_by_key(|(i, free)| (*free, *i))
        .map(|(i, _)| i)
}

pub(super) async fn start_on_best_fit(
    sched: &Scheduler,
    f: &FunctionConfig,
    inst: &Instance,
) -> Result<(Arc<Worker>, InstanceInfo), InvokeError> {
    let want = u64::from(f.memory_mb);
    // One view of the workers for this placement (the fleet may change it).
    let workers = sched.workers();
    let mut skip = vec![false; workers.len()];
    let mut unanswered = false;
    // In a fleet, a worker that looks full may have been freed by others
    // (or for a dead gateway): ask the workers once before refusing.
    let mut refreshed = !sched.sharing().in_fleet();
    loop {
        let free = workers
            .iter()
            .zip(&skip)
            .map(|(w, s)| if *s { 0 } else { w.free_mb() });
        let Some(i) = best_fit(free, want) else {
            if !refreshed {
                refreshed = true;
                futures_util::future::join_all(workers.iter().map(|w| w.refresh_capacity())).await;
                continue;
            }
            return Err(if unanswered {
                InvokeError::WorkerUnavailable
            } else {
                InvokeError::NoCapacity {
                    memory_mb: f.memory_mb,
                }
            });
        };
        let worker = &workers[i];
        if !worker.try_reserve(want) {
            continue; // Raced with another start; look again.
        }
        let req = CreateInstance {
            instance_id: inst.id.to_string(),
            function: f.name.to_string(),
            command: f.command.clone(),
            env: f.env.clone(),
            memory_mb: f.memory_mb,
            start_timeout_ms: sched.start_timeout.as_millis() as u64,
            egress: f.egress.clone(),
            writable_paths: f.writable_paths.clone(),
            readable_paths: f.readable_paths.clone(),
            disk_mb: f.disk_mb,
            owner: sched.owner().map(str::to_string),
        };
        match worker.create(&req).await {
            Ok(info) => return Ok((worker.clone(), info)),
            Err(e) => {
                worker.unreserve(want);
                match e {
                    WorkerError::Api {
                        error: Some(api), ..
                    } if api.code == ApiErrorCode::StartFailed => {
                        return Err(InvokeError::InstanceStartFailed {
                            message: api.message.into(),
                            stderr_tail: api.stderr_tail.into(),
                        });
                    }
                    WorkerError::Timeout { .. } | WorkerError::Transport { .. } => {
                        tracing::warn!(worker = %worker.url, error = %e, "worker did not start an instance; trying another");
                        unanswered = true;
                        skip[i] = true;
                        // It may still start there: release it when it does.
                        let (w, id) = (worker.clone(), inst.id.clone());
                        sched.tasks.spawn(async move {
                            let _ = w.release(&id).await;
                        });
                    }
                    other => {
                        tracing::warn!(worker = %worker.url, error = %other, "worker refused an instance; trying another");
                        skip[i] = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::best_fit;

    #[test]
    fn best_fit_picks_the_tightest_worker_that_fits() {
        assert_eq!(best_fit([1024, 256, 512], 128), Some(1));
        assert_eq!(best_fit([1024, 100, 512], 128), Some(2));
        assert_eq!(best_fit([100, 100], 128), None);
        assert_eq!(best_fit([], 128), None);
        assert_eq!(best_fit([128, 128], 128), Some(0));
    }
}
