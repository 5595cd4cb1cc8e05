//! The reaper: one background task that keeps each function's instance set
//! in shape, off the invocation path.
//!
//! Every tick it:
//! - releases on-demand instances idle longer than `idle_timeout` (never
//!   below `min_instances`);
//! - drains instances older than `max_instance_lifetime` (no new work; released
//!   when their last invocation ends) and lets replacements start on demand;
//! - starts instances up to `min_instances` (provisioned instances);
//! - every few ticks, asks each worker which instances have exited, so a crash
//!   is noticed even when no invocation touches the instance (in a task of
//!   its own, one at a time: a worker that does not answer delays only that);
//! - every ~10 s, evicts idle per-caller rate-limiter keys.
//!
//! Whether an instance is idle is decided under its function's lock
//! ([`Scheduler::reclaim_if_unused`]), where slots are reserved: an
//! invocation is never routed to an instance the reaper is taking away.

use super::pick::Phase;
use super::{FunctionPool, Scheduler};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the reaper looks: a quarter of the shortest idle timeout,
/// between 50 ms and 1 s.
pub fn tick_for(sched: &Scheduler) -> Duration {
    (sched.functions().values())
        .map(|p| p.cfg.idle_timeout / 4)
        .min()
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
}

pub fn spawn(sched: &Arc<Scheduler>) {
    let this = sched.clone();
    sched.tasks().spawn(async move {
        let syncing = Arc::new(AtomicBool::new(false));
        let (mut since_sync, mut since_evict) = (Duration::ZERO, Duration::ZERO);
        loop {
            // Looked at every time: a reload may change the functions.
            let tick = tick_for(&this);
            tokio::select! {
                _ = this.closing().cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            for pool in this.functions().values() {
                sweep(&this, pool);
            }
            retire(&this);
            this.publish_worker_memory();
            since_sync += tick;
            since_evict += tick;
            if since_sync >= Duration::from_secs(2) && !syncing.swap(true, Ordering::AcqRel) {
                since_sync = Duration::ZERO;
                let (sched, syncing) = (this.clone(), syncing.clone());
                this.tasks().spawn(async move {
                    sync_exits(&sched).await;
                    syncing.store(false, Ordering::Release);
                });
            }
            // Forget idle callers now and then, so per-caller limiter memory
            // follows the active caller set, not every address ever seen.
            if since_evict >= Duration::from_secs(10) {
                since_evict = Duration::ZERO;
                this.limits().evict_idle();
                for pool in this.functions().values() {
                    pool.limits.evict_idle();
                }
            }
        }
    });
}

pub(super) fn sweep(sched: &Arc<Scheduler>, pool: &Arc<FunctionPool>) {
    let now = sched.now_ms();
    let idle_ms = pool.cfg.idle_timeout.as_millis() as u64;
    let mut live = 0u32;
    for inst in pool.snapshot() {
        match inst.phase() {
            Phase::Ready => {
                if inst.created.elapsed() >= sched.max_lifetime {
                    tracing::info!(function = %pool.cfg.name, instance = %inst.id, "instance reached its maximum lifetime; draining");
                    sched.drain(pool, &inst, "max lifetime");
                    continue;
                }
                let idle =
                    inst.in_flight() == 0 && now.saturating_sub(inst.last_used_ms()) >= idle_ms;
                // Re-checked under the lock: a call may have taken it meanwhile.
                if !(idle
                    && live >= pool.cfg.min_instances
                    && sched.reclaim_if_unused(pool, &inst, "idle"))
                {
                    live += 1;
                }
            }
            Phase::Starting => live += 1,
            Phase::Draining => {
                sched.reclaim_if_unused(pool, &inst, "drained");
            }
            Phase::Gone => {}
        }
    }
    provision(sched, pool, pool.cfg.min_instances.saturating_sub(live));
}

/// Starts up to `n` instances of `pool` ahead of demand, and returns them.
/// Provisioned instances count against the scale-out limits too; a start
/// refused is retried on a later tick.
pub(super) fn provision(
    sched: &Arc<Scheduler>,
    pool: &Arc<FunctionPool>,
    n: u32,
) -> Vec<Arc<super::Instance>> {
    let mut started = Vec::new();
    for _ in 0..n {
        if sched.closing().is_cancelled() || sched.limits().admit_start(Default::default()).is_err()
        {
            break;
        }
        let inst = sched.new_instance(pool);
        pool.state.instances.lock().unwrap().push(inst.clone());
        sched.spawn_start(pool.clone(), inst.clone());
        started.push(inst);
    }
    started
}

/// The pools a reload retired: no new work for their instances, each
/// released when its last call ends; a pool with none left is forgotten.
fn retire(sched: &Arc<Scheduler>) {
    let retired: Vec<_> = sched.retired.lock().unwrap().clone();
    for pool in &retired {
        for inst in pool.snapshot() {
            sched.drain(pool, &inst, "config changed");
        }
    }
    if !retired.is_empty() {
        (sched.retired.lock().unwrap()).retain(|p| !p.snapshot().is_empty());
    }
}

/// Reclaims instances whose process has exited on their worker.
async fn sync_exits(sched: &Arc<Scheduler>) {
    for worker in sched.workers().iter() {
        // In a fleet, workers are shared: their memory changes under us.
        if sched.sharing().in_fleet() {
            worker.refresh_capacity().await;
        }
        let Ok(list) = worker.list().await else {
            continue;
        };
        let exited: HashSet<&str> = list
            .iter()
            .filter(|i| i.exit.is_some())
            .map(|i| i.instance_id.as_str())
            .collect();
        if exited.is_empty() {
            continue;
        }
        for pool in sched.all_pools() {
            for inst in pool.snapshot() {
                if exited.contains(&*inst.id) {
                    tracing::warn!(function = %pool.cfg.name, instance = %inst.id, "instance exited while idle; removing");
                    sched.reclaim(&pool, &inst, "exited");
                }
            }
        }
    }
}
