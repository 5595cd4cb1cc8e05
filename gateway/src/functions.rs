//! The functions this gateway serves, as a registry: each [`Function`] is
//! its configuration with what is built from it once (its limiters, its
//! metric handles, its name as a header), shared by every layer above
//! that needs the function and not its instances (the scheduler keeps
//! those, in a pool per function that holds its `Function`).
//!
//! The registry is one immutable map, built whole from a configuration:
//! what changes a function is a new registry, never an edit in place.

use crate::config::FunctionConfig;
use crate::metrics::{FunctionMetrics, Metrics, NetworkIndex};
use crate::throttle::FunctionLimits;
use std::collections::HashMap;
use std::sync::Arc;

/// One function: its configuration, limiters and metric handles.
pub struct Function {
    pub cfg: Arc<FunctionConfig>,
    pub limits: FunctionLimits,
    pub metrics: FunctionMetrics,
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
            limits,
            metrics: metrics.function(&cfg.name, networks),
            // Validated names are ASCII letters, digits, '_' and '-'.
            name_header: http::HeaderValue::from_str(&cfg.name).expect("validated name"),
            cfg,
        }
    }
}

/// Every function, by name.
#[derive(Default)]
pub struct Functions {
    by_name: HashMap<Arc<str>, Arc<Function>>,
}

impl Functions {
    pub fn new(
        configs: &[Arc<FunctionConfig>],
        metrics: &Metrics,
        networks: &NetworkIndex,
    ) -> Self {
        let by_name = (configs.iter())
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(Function::new(c.clone(), metrics, networks)),
                )
            })
            .collect();
        Functions { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Function>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Function>> {
        self.by_name.values()
    }
}
