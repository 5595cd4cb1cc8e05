//! The asynchronous queue's metric families, gateway-wide.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
    /// The families, registered in `registry`.
    pub fn new(registry: &Registry) -> Self {
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
        let m = AsyncMetrics {
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
        };
        m.register(registry);
        m
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
