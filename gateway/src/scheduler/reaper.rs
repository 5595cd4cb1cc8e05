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
    sched
        .functions()
        .map(|p| p.cfg.idle_timeout / 4)
        .min()
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
}

pub fn spawn(sched: &Arc<Scheduler>) {
    let this = sched.clone();
    let tick = tick_for(sched);
    sched.tasks().spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sync_every = (Duration::from_secs(2).as_millis() / tick.as_millis()).max(1) as u64;
        let syncing = Arc::new(AtomicBool::new(false));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = this.closing().cancelled() => return,
                _ = interval.tick() => {}
            }
            for pool in this.functions() {
                sweep(&this, pool);
            }
            this.publish_worker_memory();
            n += 1;
            if n.is_multiple_of(sync_every) && !syncing.swap(true, Ordering::AcqRel) {
                let (sched, syncing) = (this.clone(), syncing.clone());
                this.tasks().spawn(async move {
                    sync_exits(&sched).await;
                    syncing.store(false, Ordering::Release);
                });
            }
            // Forget idle callers now and then, so per-caller limiter memory
            // follows the active caller set, not every address ever seen.
            if n.is_multiple_of(sync_every * 5) {
                this.limits().evict_idle();
                for pool in this.functions() {
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
    for _ in live..pool.cfg.min_instances {
        if sched.closing().is_cancelled() {
            return;
        }
        // Provisioned instances count against the scale-out limits too; a
        // refused start is retried on a later tick.
        if sched.limits().admit_start(Default::default()).is_err() {
            return;
        }
        let inst = sched.new_instance(pool);
        pool.instances.lock().unwrap().push(inst.clone());
        sched.spawn_start(pool.clone(), inst);
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
        for pool in sched.functions() {
            for inst in pool.snapshot() {
                if exited.contains(&*inst.id) {
                    tracing::warn!(function = %pool.cfg.name, instance = %inst.id, "instance exited while idle; removing");
                    sched.reclaim(pool, &inst, "exited");
                }
            }
        }
    }
}
