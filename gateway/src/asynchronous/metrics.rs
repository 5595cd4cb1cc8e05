//! The asynchronous queue's metric families, gateway-wide.

use crate::families::Families;
use prometheus::{Histogram, IntCounter, IntGauge, Registry};

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
}

/// Buckets for what takes about a commit.
const FAST: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl AsyncMetrics {
    /// The families, registered in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let f = Families(registry);
        let destinations = f.counters(
            "fngate_async_destination_deliveries_total",
            "Destination records by result: delivered (2xx), retried (a failed attempt), dropped (past async_destination_max_age_s).",
            &["result"],
        );
        AsyncMetrics {
            queued: f.gauge(
                "fngate_async_queued",
                "Asynchronous invocations accepted and not yet done (waiting, retrying or running), in the task store.",
            ),
            queued_bytes: f.gauge(
                "fngate_async_queued_bytes",
                "Payload bytes of the asynchronous invocations not yet done.",
            ),
            oldest_age: f.float_gauge(
                "fngate_async_oldest_task_age_seconds",
                "Age of the oldest asynchronous invocation not yet done (0 when none).",
            ),
            enqueue_seconds: f.histogram(
                "fngate_async_enqueue_seconds",
                "From a 202's request to its task committed in the store (the caller waits for it).",
                FAST,
            ),
            commit_seconds: f.histogram(
                "fngate_async_store_commit_seconds",
                "One commit of the task store (a batch of changes).",
                FAST,
            ),
            dispatch_delay: f.histogram(
                "fngate_async_dispatch_delay_seconds",
                "From a task being due to its attempt starting.",
                &[
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0,
                ],
            ),
            destinations: ["delivered", "retried", "dropped"]
                .map(|r| destinations.with_label_values(&[r])),
            destinations_pending: f.gauge(
                "fngate_async_destination_pending",
                "Destination records not yet delivered.",
            ),
        }
    }
}
