//! The functions this gateway serves, as a registry: each [`Function`] is
//! its configuration with what is built from it once (its limiters, its
//! metric handles, its name as a header), shared by every layer above
//! that needs the function and not its instances (the scheduler keeps
//! those, in a pool per function that holds its `Function`).
//!
//! The registry is one immutable map, built whole from a configuration:
//! what changes a function is a new registry, never an edit in place. A
//! reload builds the next one from the running one ([`Functions::renewed`]),
//! so a function keeps its limiter state across it
//! ([`crate::throttle::FunctionLimits::renewed`]).

use crate::config::FunctionConfig;
use crate::metrics::{FunctionMetrics, Metrics, NetworkIndex};
use crate::throttle::FunctionLimits;
use std::collections::HashMap;
use std::sync::Arc;

/// One function: its configuration, limiters and metric handles.
pub struct Function {
    pub cfg: Arc<FunctionConfig>,
    /// Shared with the function of the same name before a reload that
    /// left its throttle settings as they were.
    pub limits: Arc<FunctionLimits>,
    /// Shared with the function of the same name before a reload, while
    /// the networks (the series it counts by) are the same.
    pub metrics: Arc<FunctionMetrics>,
    /// The function name as a header value (instance calls), built once.
    pub name_header: http::HeaderValue,
}

impl Function {
    pub fn new(cfg: Arc<FunctionConfig>, metrics: &Metrics, networks: &NetworkIndex) -> Self {
        let t = &cfg.throttle;
        let limits = FunctionLimits::new(
            t.rate,
            t.caller_rate,
            t.max_concurrency,
            t.queue_timeout,
            t.queue_max,
        );
        Function {
            limits: Arc::new(limits),
            metrics: Arc::new(metrics.function(&cfg.name, networks)),
            // Validated names are ASCII letters, digits, '_' and '-'.
            name_header: http::HeaderValue::from_str(&cfg.name).expect("validated name"),
            cfg,
        }
    }

    /// `cfg` as the reload of `old` (the function of its name until now):
    /// the same limiters when its throttle settings are unchanged, else
    /// new ones that start from the old ones' state.
    pub fn renewed(
        old: &Function,
        cfg: Arc<FunctionConfig>,
        metrics: &Metrics,
        networks: &NetworkIndex,
    ) -> Self {
        let t = &cfg.throttle;
        let limits = if *t == old.cfg.throttle {
            old.limits.clone()
        } else {
            Arc::new(old.limits.renewed(
                t.rate,
                t.caller_rate,
                t.max_concurrency,
                t.queue_timeout,
                t.queue_max,
            ))
        };
        // The VPC table only grows (`VpcTable::seeded`): as many networks
        // is the same networks.
        let metrics = match old.metrics.by_network.len() == networks.len() {
            true => old.metrics.clone(),
            false => Arc::new(metrics.function(&cfg.name, networks)),
        };
        Function {
            limits,
            metrics,
            name_header: old.name_header.clone(),
            cfg,
        }
    }
}

/// Every function, by name.
#[derive(Default, Clone)]
pub struct Functions {
    by_name: HashMap<Arc<str>, Arc<Function>>,
}

impl Functions {
    pub fn new(
        configs: &[Arc<FunctionConfig>],
        metrics: &Metrics,
        networks: &NetworkIndex,
    ) -> Self {
        Functions::default().renewed(configs, metrics, networks)
    }

    /// The registry of `configs` that follows this one: a function of a
    /// name served until now is [`Function::renewed`] from it.
    pub fn renewed(
        &self,
        configs: &[Arc<FunctionConfig>],
        metrics: &Metrics,
        networks: &NetworkIndex,
    ) -> Self {
        let by_name = (configs.iter())
            .map(|c| {
                let f = match self.by_name.get(&c.name) {
                    Some(old) => Function::renewed(old, c.clone(), metrics, networks),
                    None => Function::new(c.clone(), metrics, networks),
                };
                (c.name.clone(), Arc::new(f))
            })
            .collect();
        Functions { by_name }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Function>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Function>> {
        self.by_name.values()
    }
}
