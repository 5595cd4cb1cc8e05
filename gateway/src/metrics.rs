//! Gateway metrics: one registry, created in `run` and passed to the stages
//! that own each metric. Label handles are resolved once per function and
//! network (see [`FunctionMetrics`]) so the hot path touches atomics only.
//!
//! Label sets are bounded: `function` is a configured name or `(unknown)`;
//! `network` is `internet`, a configured VPC id, or `internal`; `api` is
//! `fc`, `lambda` or `azure`.

use crate::api::Api;
use crate::asynchronous::policy::RetryReason;
use crate::asynchronous::task::TaskState;
use crate::auth::AuthError;
use crate::error::Outcome;
use crate::families::Families;
use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

/// Maps a caller's network to its index in [`FunctionMetrics::by_network`]:
/// `internet`, `internal`, then the VPCs in their ids' order. A reload only
/// appends VPCs, so an index never moves.
pub struct NetworkIndex {
    names: Vec<String>,
}

impl NetworkIndex {
    pub fn new(vpcs: &crate::ingress::VpcTable) -> Self {
        let mut names = vec!["internet".to_string(), "internal".to_string()];
        names.extend(
            (0..vpcs.len()).map(|i| vpcs.name(crate::ingress::VpcId(i as u16)).to_string()),
        );
        NetworkIndex { names }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn of(&self, origin: &crate::ingress::Origin) -> usize {
        use crate::ingress::{Network, Origin};
        match origin {
            Origin::Client(c) => match c.network {
                Network::Internet => 0,
                Network::Vpc(v) => 2 + v.0 as usize,
            },
            Origin::Internal => 1,
        }
    }
}

/// One function's counters for callers in one network.
pub struct NetworkMetrics {
    /// Indexed by [`Api::index`], then [`Outcome::index`]. Created up front,
    /// at zero: a series born at its first increment hides that increment
    /// from Prometheus's `rate()`.
    invocations: [[IntCounter; Outcome::ALL.len()]; Api::ALL.len()],
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
}

impl NetworkMetrics {
    /// `fngate_invocations_total` for this function, network, `api` and `outcome`.
    pub fn invocations(&self, api: Api, outcome: Outcome) -> &IntCounter {
        &self.invocations[api.index()][outcome.index()]
    }
}

pub struct Metrics {
    pub registry: Registry,
    /// The embedded sandbox worker's registry, rendered after ours.
    pub embedded_worker: std::sync::OnceLock<Registry>,
    invocations: IntCounterVec,
    traffic: IntCounterVec,
    cold_starts: IntCounterVec,
    releases: IntCounterVec,
    pub worker_memory: IntGaugeVec,
    duration: HistogramVec,
    instances: IntGaugeVec,
    instance_starts: IntCounterVec,
    pub cold_start_seconds: HistogramVec,
    denials: IntCounterVec,
    throttles: IntCounterVec,
    in_flight: IntGaugeVec,
    pub live_instances: IntGauge,
    /// Isolated instances' egress, added at each instance's release.
    pub instance_egress: IntCounterVec,
    async_results: IntCounterVec,
    async_retries: IntCounterVec,
    auth_failures: IntCounterVec,
    pub usage_log_write_errors: IntCounter,
}

/// Cached handles for one function.
pub struct FunctionMetrics {
    /// Indexed by [`NetworkIndex::of`].
    pub by_network: Vec<NetworkMetrics>,
    pub cold_starts: IntCounter,
    function: String,
    releases: IntCounterVec,
    pub duration: Histogram,
    pub starting: IntGauge,
    pub ready: IntGauge,
    pub draining: IntGauge,
    pub starts_ok: IntCounter,
    pub starts_failed: IntCounter,
    pub cold_start: Histogram,
    pub denied_vpc_binding: IntCounter,
    pub denied_access_rule: IntCounter,
    /// Indexed like [`crate::throttle::LimitKind::ALL`].
    pub throttles: Vec<IntCounter>,
    pub in_flight: IntGauge,
    /// Indexed like [`TaskState::DONE`].
    pub async_results: Vec<IntCounter>,
    /// Indexed like [`RetryReason::ALL`].
    pub async_retries: Vec<IntCounter>,
    /// Indexed by [`Api::index`], then [`AuthError::index`].
    pub auth_failures: [Vec<IntCounter>; Api::ALL.len()],
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let f = Families(&registry);
        Self {
            invocations: f.counters(
                "fngate_invocations_total",
                "Invocation requests by function, caller network, API door and outcome.",
                &["function", "network", "api", "outcome"],
            ),
            traffic: f.counters(
                "fngate_traffic_bytes_total",
                "HTTP body bytes by function, caller network and direction (in: request, out: response).",
                &["function", "network", "direction"],
            ),
            cold_starts: f.counters(
                "fngate_cold_starts_total",
                "Invocations that waited for an instance to start.",
                &["function"],
            ),
            releases: f.counters(
                "fngate_instance_releases_total",
                "Instances taken out of service, by function and reason.",
                &["function", "reason"],
            ),
            worker_memory: f.gauges(
                "fngate_worker_memory_bytes",
                "Sandbox worker memory as the gateway accounts it: capacity and reserved.",
                &["worker", "kind"],
            ),
            duration: f.histograms(
                "fngate_invocation_duration_seconds",
                "Time from request head to response, in seconds.",
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,],
                &["function"],
            ),
            instances: f.gauges(
                "fngate_instances",
                "Function instances by state.",
                &["function", "state"],
            ),
            instance_starts: f.counters(
                "fngate_instance_starts_total",
                "Instance starts by result.",
                &["function", "result"],
            ),
            cold_start_seconds: f.histograms(
                "fngate_cold_start_duration_seconds",
                "Time to start an instance until it accepts, in seconds.",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,],
                &["function"],
            ),
            denials: f.counters(
                "fngate_ingress_denials_total",
                "Invocations refused by ingress policy, by function and reason.",
                &["function", "reason"],
            ),
            throttles: f.counters(
                "fngate_throttles_total",
                "Invocations refused with 429 by a throttling limit, by function and limit.",
                &["function", "limit"],
            ),
            in_flight: f.gauges(
                "fngate_invocations_in_flight",
                "Invocations admitted and not yet answered, by function.",
                &["function"],
            ),
            live_instances: f.gauge(
                "fngate_instances_live",
                "Instances counted against gateway.max_instances.",
            ),
            instance_egress: f.counters(
                "fngate_instance_egress_bytes_total",
                "What isolated instances exchanged outside in their lifetime (the worker's counters at release; IP bytes), by function, network (internet or a VPC id) and direction (out: sent by the instance). Workers count the same live as fngate_egress_bytes_total.",
                &["function", "network", "direction"],
            ),
            async_results: f.counters(
                "fngate_async_results_total",
                "Asynchronous invocations done, by function and result (succeeded, failed, expired, stopped, invalid: its function was removed by a reload).",
                &["function", "result"],
            ),
            async_retries: f.counters(
                "fngate_async_retries_total",
                "Retries of asynchronous invocations, by function and reason.",
                &["function", "reason"],
            ),
            auth_failures: f.counters(
                "fngate_auth_failures_total",
                "Invocations refused for their credentials (signature or function key), by function, API door and reason.",
                &["function", "api", "reason"],
            ),
            usage_log_write_errors: f.counter(
                "fngate_usage_log_write_errors_total",
                "Failed writes to the usage log (each retried; no record is dropped).",
            ),
            embedded_worker: std::sync::OnceLock::new(),
            // The same registry (a handle): the families are in it.
            registry: registry.clone(),
        }
    }

    /// Handles for `function`. Call once per configured function (the label
    /// set stays bounded: unknown names are counted under `(unknown)`).
    pub fn function(&self, function: &str, networks: &NetworkIndex) -> FunctionMetrics {
        let by_network = networks
            .names
            .iter()
            .map(|net| NetworkMetrics {
                invocations: Api::ALL.map(|api| {
                    Outcome::ALL.map(|o| {
                        self.invocations.with_label_values(&[
                            function,
                            net,
                            api.as_str(),
                            o.as_str(),
                        ])
                    })
                }),
                bytes_in: self.traffic.with_label_values(&[function, net, "in"]),
                bytes_out: self.traffic.with_label_values(&[function, net, "out"]),
            })
            .collect();
        let state = |s: &str| self.instances.with_label_values(&[function, s]);
        FunctionMetrics {
            by_network,
            cold_starts: self.cold_starts.with_label_values(&[function]),
            function: function.to_string(),
            releases: self.releases.clone(),
            duration: self.duration.with_label_values(&[function]),
            starting: state("starting"),
            ready: state("ready"),
            draining: state("draining"),
            starts_ok: self.instance_starts.with_label_values(&[function, "ok"]),
            starts_failed: self
                .instance_starts
                .with_label_values(&[function, "failed"]),
            cold_start: self.cold_start_seconds.with_label_values(&[function]),
            denied_vpc_binding: self.denials.with_label_values(&[function, "vpc_binding"]),
            denied_access_rule: self.denials.with_label_values(&[function, "access_rule"]),
            throttles: crate::throttle::LimitKind::ALL
                .iter()
                .map(|k| self.throttles.with_label_values(&[function, k.as_str()]))
                .collect(),
            in_flight: self.in_flight.with_label_values(&[function]),
            async_results: TaskState::DONE
                .iter()
                .map(|r| {
                    self.async_results
                        .with_label_values(&[function, r.result_label()])
                })
                .collect(),
            async_retries: RetryReason::ALL
                .iter()
                .map(|r| {
                    self.async_retries
                        .with_label_values(&[function, r.as_str()])
                })
                .collect(),
            auth_failures: Api::ALL.map(|api| {
                AuthError::REASONS
                    .iter()
                    .map(|r| {
                        self.auth_failures
                            .with_label_values(&[function, api.as_str(), r])
                    })
                    .collect()
            }),
        }
    }

    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        // The embedded worker's families (fngate_sandbox_*, egress): the same
        // names and labels a separate worker serves, on the one endpoint an
        // operator of the default setup scrapes.
        if let Some(worker) = self.embedded_worker.get() {
            families.extend(worker.gather());
        }
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }
}

impl FunctionMetrics {
    /// Counts a release; `reason` is one of a fixed set of literals.
    pub fn released(&self, reason: &'static str) {
        self.releases
            .with_label_values(&[&self.function, reason])
            .inc();
    }
}

/// Counts something in a gauge while it lasts: a guard, not inc/dec, so a
/// future dropped midway (a client gone, a task cancelled) still counts down.
pub struct GaugeGuard<'a>(&'a IntGauge);

impl<'a> GaugeGuard<'a> {
    pub fn new(g: &'a IntGauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
