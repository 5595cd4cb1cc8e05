//! A reload's new functions, put in place under calls in flight.
//!
//! A function whose instance shape (what a worker starts an instance from:
//! [`crate::config::FunctionConfig::shape_differs`]) is unchanged keeps its
//! instances: its new version is a new [`FunctionPool`] over the same
//! [`super::PoolState`]. A new shape gets a new pool, whose `min_instances`
//! start before the swap; the old pool is retired, as is a removed
//! function's: its instances finish their calls and are released by the
//! reaper, never cut mid-call.

use super::{FunctionPool, Pools, Scheduler, StartState, zero_egress};
use crate::functions::Functions;
use std::sync::Arc;

/// The pools a reload installs, and what it changes.
pub struct Plan {
    pools: Pools,
    /// New pools of functions that were served with another shape.
    fresh: Vec<Arc<FunctionPool>>,
    retire: Vec<Arc<FunctionPool>>,
    pub added: Vec<Arc<str>>,
    pub removed: Vec<Arc<str>>,
    /// New instance shape: new instances.
    pub reshaped: Vec<Arc<str>>,
}

impl Scheduler {
    /// What installing `functions` over the pools served now would do.
    pub fn plan(&self, functions: &Functions) -> Plan {
        let current = self.functions.load();
        let mut plan = Plan {
            pools: Pools::with_capacity(functions.len()),
            fresh: Vec::new(),
            retire: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
            reshaped: Vec::new(),
        };
        for f in functions.iter() {
            let name = &f.cfg.name;
            let pool = match current.get(name) {
                Some(old) if !old.cfg.shape_differs(&f.cfg) => old.with(f.clone()),
                Some(old) => {
                    plan.retire.push(old.clone());
                    plan.reshaped.push(name.clone());
                    let fresh = Arc::new(FunctionPool::new(f.clone()));
                    plan.fresh.push(fresh.clone());
                    plan.pools.insert(name.clone(), fresh);
                    continue;
                }
                None => {
                    zero_egress(&self.instance_egress, &f.cfg);
                    plan.added.push(name.clone());
                    FunctionPool::new(f.clone())
                }
            };
            plan.pools.insert(name.clone(), Arc::new(pool));
        }
        for (name, old) in current.iter() {
            if functions.get(name).is_none() {
                plan.removed.push(name.clone());
                plan.retire.push(old.clone());
            }
        }
        plan.added.sort();
        plan.removed.sort();
        plan.reshaped.sort();
        plan
    }

    /// Starts the `min_instances` of the plan's new shapes and waits until
    /// each has started or failed (bounded as a caller's wait is): the old
    /// shape's instances serve until then.
    pub async fn prewarm(self: &Arc<Self>, plan: &Plan) {
        let mut starting = Vec::new();
        for pool in &plan.fresh {
            starting.extend(super::reaper::provision(self, pool, pool.cfg.min_instances));
        }
        let bound = self.start_timeout + self.worker_timeout * 2;
        let _ = tokio::time::timeout(bound, async {
            for inst in starting {
                let mut rx = inst.started.subscribe();
                let _ = rx.wait_for(|s| !matches!(s, StartState::Pending)).await;
            }
        })
        .await;
    }

    /// Serves the plan's pools from the next lookup on; the pools it
    /// replaced or removed are retired.
    pub fn install(&self, plan: Plan) {
        self.functions.store(Arc::new(plan.pools));
        self.retired.lock().unwrap().extend(plan.retire);
    }
}
