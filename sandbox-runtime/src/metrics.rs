//! The worker's Prometheus metrics (its own registry, served on `/metrics`).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    pub instances: IntGauge,
    pub process_starts: IntCounterVec,
    pub crashes: IntCounter,
    /// Instances released because their owner gateway's lease expired.
    pub lease_releases: IntCounter,
    pub oom_kills: IntCounter,
    pub memory_capacity_bytes: IntGauge,
    pub memory_used_bytes: IntGauge,
    pub memory_limit: IntGaugeVec,
    pub egress_bytes: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let instances = IntGauge::new(
            "fngate_sandbox_instances",
            "Function instances alive on this worker.",
        )
        .unwrap();
        let process_starts = IntCounterVec::new(
            Opts::new(
                "fngate_sandbox_process_starts_total",
                "Instance process starts by result.",
            ),
            &["result"],
        )
        .unwrap();
        let crashes = IntCounter::new(
            "fngate_sandbox_instance_crashes_total",
            "Instances that exited without being released.",
        )
        .unwrap();
        let lease_releases = IntCounter::new(
            "fngate_sandbox_lease_releases_total",
            "Instances released because the gateway that owned them stopped heartbeating (fleet mode).",
        )
        .unwrap();
        let oom_kills = IntCounter::new(
            "fngate_sandbox_instance_oom_kills_total",
            "Instances killed for exceeding their memory limit.",
        )
        .unwrap();
        let memory_capacity_bytes = IntGauge::new(
            "fngate_sandbox_memory_capacity_bytes",
            "Memory this worker offers to instances.",
        )
        .unwrap();
        let memory_used_bytes = IntGauge::new(
            "fngate_sandbox_memory_used_bytes",
            "Memory reserved by live instances.",
        )
        .unwrap();
        let memory_limit = IntGaugeVec::new(
            Opts::new(
                "fngate_sandbox_memory_limit_info",
                "How instance memory sizes are enforced (1 for the mechanism in use).",
            ),
            &["mechanism"],
        )
        .unwrap();
        let egress_bytes = IntCounterVec::new(
            Opts::new(
                "fngate_egress_bytes_total",
                "Bytes isolated instances exchanged outside (IP packets, headers included) by function, network (internet or a VPC id) and direction (out: sent by the instance, in: received).",
            ),
            &["function", "network", "direction"],
        )
        .unwrap();
        for m in [
            Box::new(instances.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(process_starts.clone()),
            Box::new(crashes.clone()),
            Box::new(lease_releases.clone()),
            Box::new(oom_kills.clone()),
            Box::new(memory_capacity_bytes.clone()),
            Box::new(memory_used_bytes.clone()),
            Box::new(memory_limit.clone()),
            Box::new(egress_bytes.clone()),
        ] {
            registry.register(m).unwrap();
        }
        Self {
            registry,
            instances,
            process_starts,
            crashes,
            lease_releases,
            oom_kills,
            memory_capacity_bytes,
            memory_used_bytes,
            memory_limit,
            egress_bytes,
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
