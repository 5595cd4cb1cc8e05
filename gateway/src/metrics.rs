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
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Maps a caller's network to its index in [`FunctionMetrics::by_network`].
pub struct NetworkIndex {
    names: Vec<String>,
}

impl NetworkIndex {
    pub fn new(vpcs: &crate::ingress::VpcTable) -> Self {
        let mut names = vec!["internet".to_string()];
        names.extend(
            (0..vpcs.len()).map(|i| vpcs.name(crate::ingress::VpcId(i as u16)).to_string()),
        );
        names.push("internal".into());
        NetworkIndex { names }
    }

    pub fn of(&self, origin: &crate::ingress::Origin) -> usize {
        use crate::ingress::{Network, Origin};
        match origin {
            Origin::Client(c) => match c.network {
                Network::Internet => 0,
                Network::Vpc(v) => 1 + v.0 as usize,
            },
            Origin::Internal => self.names.len() - 1,
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
    pub open_connections: IntGauge,
    pub tls_handshake_failures: IntCounter,
    denials: IntCounterVec,
    throttles: IntCounterVec,
    in_flight: IntGaugeVec,
    pub live_instances: IntGauge,
    /// Isolated instances' egress, added at each instance's release.
    pub instance_egress: IntCounterVec,
    /// Indexed like [`crate::connection::proxy::Reject::ALL`].
    pub proxy_rejections: Vec<IntCounter>,
    /// The gateway-wide asynchronous queue's metrics.
    pub asynchronous: AsyncMetrics,
    async_results: IntCounterVec,
    async_retries: IntCounterVec,
    auth_failures: IntCounterVec,
    pub refused_body: crate::pipeline::body::DrainMetrics,
    /// Indexed like [`crate::connection::linger::Lingered::ALL`].
    pub lingering_closes: Vec<IntCounter>,
    pub usage_log_write_errors: IntCounter,
    pub http2_idle_closes: IntCounter,
    /// `[ok, error]`.
    pub tls_reloads: [IntCounter; 2],
    pub connections_refused: IntCounter,
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
        let invocations = IntCounterVec::new(
            Opts::new(
                "fngate_invocations_total",
                "Invocation requests by function, caller network, API door and outcome.",
            ),
            &["function", "network", "api", "outcome"],
        )
        .unwrap();
        let traffic = IntCounterVec::new(
            Opts::new(
                "fngate_traffic_bytes_total",
                "HTTP body bytes by function, caller network and direction (in: request, out: response).",
            ),
            &["function", "network", "direction"],
        )
        .unwrap();
        let cold_starts = IntCounterVec::new(
            Opts::new(
                "fngate_cold_starts_total",
                "Invocations that waited for an instance to start.",
            ),
            &["function"],
        )
        .unwrap();
        let releases = IntCounterVec::new(
            Opts::new(
                "fngate_instance_releases_total",
                "Instances taken out of service, by function and reason.",
            ),
            &["function", "reason"],
        )
        .unwrap();
        let worker_memory = IntGaugeVec::new(
            Opts::new(
                "fngate_worker_memory_bytes",
                "Sandbox worker memory as the gateway accounts it: capacity and reserved.",
            ),
            &["worker", "kind"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "fngate_invocation_duration_seconds",
                "Time from request head to response, in seconds.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            &["function"],
        )
        .unwrap();
        let instances = IntGaugeVec::new(
            Opts::new("fngate_instances", "Function instances by state."),
            &["function", "state"],
        )
        .unwrap();
        let instance_starts = IntCounterVec::new(
            Opts::new("fngate_instance_starts_total", "Instance starts by result."),
            &["function", "result"],
        )
        .unwrap();
        let cold_start_seconds = HistogramVec::new(
            HistogramOpts::new(
                "fngate_cold_start_duration_seconds",
                "Time to start an instance until it accepts, in seconds.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["function"],
        )
        .unwrap();
        let open_connections = IntGauge::new(
            "fngate_open_connections",
            "Client connections currently open.",
        )
        .unwrap();
        let tls_handshake_failures = IntCounter::new(
            "fngate_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
        )
        .unwrap();
        let denials = IntCounterVec::new(
            Opts::new(
                "fngate_ingress_denials_total",
                "Invocations refused by ingress policy, by function and reason.",
            ),
            &["function", "reason"],
        )
        .unwrap();
        let proxy = IntCounterVec::new(
            Opts::new(
                "fngate_proxy_protocol_rejections_total",
                "Connections closed for a PROXY protocol problem, by reason.",
            ),
            &["reason"],
        )
        .unwrap();
        let throttles = IntCounterVec::new(
            Opts::new(
                "fngate_throttles_total",
                "Invocations refused with 429 by a throttling limit, by function and limit.",
            ),
            &["function", "limit"],
        )
        .unwrap();
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "fngate_invocations_in_flight",
                "Invocations admitted and not yet answered, by function.",
            ),
            &["function"],
        )
        .unwrap();
        let live_instances = IntGauge::new(
            "fngate_instances_live",
            "Instances counted against gateway.max_instances.",
        )
        .unwrap();
        let instance_egress = IntCounterVec::new(
            Opts::new(
                "fngate_instance_egress_bytes_total",
                "What isolated instances exchanged outside in their lifetime (the worker's counters at release; IP bytes), by function, network (internet or a VPC id) and direction (out: sent by the instance). Workers count the same live as fngate_egress_bytes_total.",
            ),
            &["function", "network", "direction"],
        )
        .unwrap();
        let asynchronous = AsyncMetrics::new();
        let async_results = IntCounterVec::new(
            Opts::new(
                "fngate_async_results_total",
                "Asynchronous invocations done, by function and result (succeeded, failed, expired, stopped).",
            ),
            &["function", "result"],
        )
        .unwrap();
        let async_retries = IntCounterVec::new(
            Opts::new(
                "fngate_async_retries_total",
                "Retries of asynchronous invocations, by function and reason.",
            ),
            &["function", "reason"],
        )
        .unwrap();
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "fngate_auth_failures_total",
                "Invocations refused for their credentials (signature or function key), by function, API door and reason.",
            ),
            &["function", "api", "reason"],
        )
        .unwrap();
        let drains = IntCounterVec::new(
            Opts::new(
                "fngate_refused_body_drains_total",
                "Unread bodies of refused requests, by how they ended (complete: read and dropped, the connection kept; too_large, timeout: the HTTP/1.1 connection closed, or the HTTP/2 stream reset with NO_ERROR, after the answer; not_sent: an Expect: 100-continue client never sent it).",
            ),
            &["result"],
        )
        .unwrap();
        let drained_bytes = IntCounter::new(
            "fngate_refused_body_drained_bytes_total",
            "Bytes of refused requests' bodies read and dropped so their clients get the answer.",
        )
        .unwrap();
        let refused_body = crate::pipeline::body::DrainMetrics {
            drains: crate::pipeline::body::Drain::ALL
                .iter()
                .map(|d| drains.with_label_values(&[d.as_str()]))
                .collect(),
            bytes: drained_bytes.clone(),
        };
        let lingering = IntCounterVec::new(
            Opts::new(
                "fngate_lingering_closes_total",
                "Connections that ended with the client's bytes unread (a request head over max_header_bytes, say), read and dropped before the close so the client gets its answer, by how the drain ended (complete: the client closed; too_large, timeout: past the drain bounds).",
            ),
            &["result"],
        )
        .unwrap();
        let lingering_closes = crate::connection::linger::Lingered::ALL
            .iter()
            .map(|l| lingering.with_label_values(&[l.as_str()]))
            .collect();
        let usage_log_write_errors = IntCounter::new(
            "fngate_usage_log_write_errors_total",
            "Failed writes to the usage log (each retried; no record is dropped).",
        )
        .unwrap();
        let http2_idle_closes = IntCounter::new(
            "fngate_http2_idle_closes_total",
            "HTTP/2 connections closed (GOAWAY) after http2_idle_timeout_ms with no stream in flight.",
        )
        .unwrap();
        let tls_reloads_vec = IntCounterVec::new(
            Opts::new(
                "fngate_tls_certificate_reloads_total",
                "Reloads of the configured TLS certificate (SIGHUP or a file change), by result.",
            ),
            &["result"],
        )
        .unwrap();
        let tls_reloads = ["ok", "error"].map(|r| tls_reloads_vec.with_label_values(&[r]));
        let connections_refused = IntCounter::new(
            "fngate_connections_refused_total",
            "Connections refused (reset at once) because max_connections were open.",
        )
        .unwrap();
        let proxy_rejections = crate::connection::proxy::Reject::ALL
            .iter()
            .map(|r| proxy.with_label_values(&[r.as_str()]))
            .collect();
        for c in [
            Box::new(denials.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(throttles.clone()),
            Box::new(in_flight.clone()),
            Box::new(live_instances.clone()),
            Box::new(instance_egress.clone()),
            Box::new(proxy),
            Box::new(invocations.clone()),
            Box::new(traffic.clone()),
            Box::new(cold_starts.clone()),
            Box::new(releases.clone()),
            Box::new(worker_memory.clone()),
            Box::new(duration.clone()),
            Box::new(instances.clone()),
            Box::new(instance_starts.clone()),
            Box::new(cold_start_seconds.clone()),
            Box::new(open_connections.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(async_results.clone()),
            Box::new(async_retries.clone()),
            Box::new(auth_failures.clone()),
            Box::new(drains),
            Box::new(drained_bytes),
            Box::new(lingering),
            Box::new(usage_log_write_errors.clone()),
            Box::new(http2_idle_closes.clone()),
            Box::new(tls_reloads_vec),
            Box::new(connections_refused.clone()),
        ] {
            registry.register(c).unwrap();
        }
        asynchronous.register(&registry);
        Self {
            registry,
            embedded_worker: std::sync::OnceLock::new(),
            invocations,
            traffic,
            cold_starts,
            releases,
            worker_memory,
            duration,
            instances,
            instance_starts,
            cold_start_seconds,
            open_connections,
            tls_handshake_failures,
            denials,
            throttles,
            in_flight,
            live_instances,
            instance_egress,
            proxy_rejections,
            asynchronous,
            async_results,
            async_retries,
            auth_failures,
            refused_body,
            lingering_closes,
            usage_log_write_errors,
            http2_idle_closes,
            tls_reloads,
            connections_refused,
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

/// The asynchronous queue, gateway-wide (see [`crate::asynchronous`]).
#[derive(Clone)]
pub struct AsyncMetrics {
    pub queued: IntGauge,
    pub queued_bytes: IntGauge,
    pub oldest_age: prometheus::Gauge,
    pub enqueue_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub dispatch_delay: Histogram,
    /// `[delivered, retried, dropped]`.
    pub destinations: [IntCounter; 3],
    pub destinations_pending: IntGauge,
    destinations_vec: IntCounterVec,
}

impl AsyncMetrics {
    fn new() -> Self {
        let gauge = |n: &str, h: &str| IntGauge::new(n, h).unwrap();
        let hist = |n: &str, h: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(n, h).buckets(buckets)).unwrap()
        };
        let destinations_vec = IntCounterVec::new(
            Opts::new(
                "fngate_async_destination_deliveries_total",
                "Destination records by result: delivered (2xx), retried (a failed attempt), dropped (past async_destination_max_age_s).",
            ),
            &["result"],
        )
        .unwrap();
        let fast = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        AsyncMetrics {
            queued: gauge(
                "fngate_async_queued",
                "Asynchronous invocations accepted and not yet done (waiting, retrying or running), in the task store.",
            ),
            queued_bytes: gauge(
                "fngate_async_queued_bytes",
                "Payload bytes of the asynchronous invocations not yet done.",
            ),
            oldest_age: prometheus::Gauge::new(
                "fngate_async_oldest_task_age_seconds",
                "Age of the oldest asynchronous invocation not yet done (0 when none).",
            )
            .unwrap(),
            enqueue_seconds: hist(
                "fngate_async_enqueue_seconds",
                "From a 202's request to its task committed in the store (the caller waits for it).",
                fast.clone(),
            ),
            commit_seconds: hist(
                "fngate_async_store_commit_seconds",
                "One commit of the task store (a batch of changes).",
                fast,
            ),
            dispatch_delay: hist(
                "fngate_async_dispatch_delay_seconds",
                "From a task being due to its attempt starting.",
                vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0,
                ],
            ),
            destinations: ["delivered", "retried", "dropped"]
                .map(|r| destinations_vec.with_label_values(&[r])),
            destinations_pending: gauge(
                "fngate_async_destination_pending",
                "Destination records not yet delivered.",
            ),
            destinations_vec,
        }
    }

    fn register(&self, registry: &Registry) {
        for c in [
            Box::new(self.queued.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.queued_bytes.clone()),
            Box::new(self.oldest_age.clone()),
            Box::new(self.enqueue_seconds.clone()),
            Box::new(self.commit_seconds.clone()),
            Box::new(self.dispatch_delay.clone()),
            Box::new(self.destinations_vec.clone()),
            Box::new(self.destinations_pending.clone()),
        ] {
            registry.register(c).unwrap();
        }
    }
}
