//! Gateway metrics: one registry, created in `run` and passed to the stages
//! that own each metric. Label handles are resolved once per function (see
//! [`FunctionMetrics`]) so the hot path touches atomics only.

use crate::error::Outcome;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct Metrics {
    pub registry: Registry,
    invocations: IntCounterVec,
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
    /// Indexed like [`crate::connection::proxy::Reject::ALL`].
    pub proxy_rejections: Vec<IntCounter>,
}

/// Cached handles for one function.
pub struct FunctionMetrics {
    pub invocations: [IntCounter; Outcome::ALL.len()],
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
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let invocations = IntCounterVec::new(
            Opts::new(
                "fngate_invocations_total",
                "Invocations by function and outcome.",
            ),
            &["function", "outcome"],
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
        let proxy_rejections = crate::connection::proxy::Reject::ALL
            .iter()
            .map(|r| proxy.with_label_values(&[r.as_str()]))
            .collect();
        for c in [
            Box::new(denials.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(throttles.clone()),
            Box::new(in_flight.clone()),
            Box::new(live_instances.clone()),
            Box::new(proxy),
            Box::new(invocations.clone()),
            Box::new(duration.clone()),
            Box::new(instances.clone()),
            Box::new(instance_starts.clone()),
            Box::new(cold_start_seconds.clone()),
            Box::new(open_connections.clone()),
            Box::new(tls_handshake_failures.clone()),
        ] {
            registry.register(c).unwrap();
        }
        Self {
            registry,
            invocations,
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
            proxy_rejections,
        }
    }

    /// Handles for `function`. Call once per configured function (the label
    /// set stays bounded: unknown names are counted under `(unknown)`).
    pub fn function(&self, function: &str) -> FunctionMetrics {
        let inv = |o: Outcome| self.invocations.with_label_values(&[function, o.as_str()]);
        let state = |s: &str| self.instances.with_label_values(&[function, s]);
        FunctionMetrics {
            invocations: Outcome::ALL.map(inv),
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
        }
    }

    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
