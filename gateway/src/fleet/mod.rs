//! Fleet mode (`[fleet]`): several gateways as one service, on NATS
//! JetStream. Absent, nothing here runs and nothing is connected to.
//!
//! ```text
//!  gateway A ─┐                       ┌─ KV <fleet>_gateways   heartbeats (max_age = member TTL)
//!  gateway B ─┼── NATS (JetStream) ───┤
//!  gateway C ─┘                       └─ ...
//! ```
//!
//! - [`membership`]: each gateway puts its entry into a key-value bucket
//!   every `heartbeat_ms`; the bucket's `max_age` is the member TTL, so an
//!   entry not refreshed ages out of the server too. Every gateway watches
//!   the bucket and counts the members heard from within the TTL: the live
//!   count. A graceful stop deletes the entry (the others see it at once); a
//!   killed gateway is counted out one TTL after its last heartbeat.
//! - Limits (`rate_limits = "split"`): every rate and scale-out limit is
//!   divided by the live count ([`crate::scheduler::Scheduler::split_limits`]),
//!   so the fleet admits about what one gateway would, with no per-request
//!   round trip. The bound is in the README ("Running a fleet").
//!
//! Engine trouble never stops the request path: a gateway that cannot reach
//! NATS keeps its last view of the fleet, says so on `/readyz` and in
//! `fngate_fleet_heartbeat_age_seconds`, and serves.

pub mod exact;
pub mod membership;
pub mod queue;

use crate::config::fleet::{FleetConfig, NatsAuth};
use prometheus::{Histogram, HistogramOpts, IntGauge, Registry};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Engine(#[from] sandbox_runtime::fleet::EngineError),
    #[error("NATS JetStream: cannot open {what}: {source}")]
    JetStream {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "gateway.max_async_body_bytes ({body}) does not fit NATS's max_payload ({max_payload}) with the task record"
    )]
    PayloadTooLarge { body: u64, max_payload: u64 },
    #[error("Redis: fleet.redis_url: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The fleet's metrics (registered only in fleet mode).
pub struct FleetMetrics {
    pub live_gateways: IntGauge,
    /// Seconds since this gateway's last acknowledged heartbeat.
    pub heartbeat_age: prometheus::Gauge,
    pub engine_rtt: Histogram,
    pub share: IntGauge,
    /// Workers this gateway places on (configured and discovered).
    pub workers: IntGauge,
}

impl FleetMetrics {
    fn new(registry: &Registry) -> Self {
        let m = FleetMetrics {
            live_gateways: IntGauge::new(
                "fngate_fleet_live_gateways",
                "Gateways heard from within the member TTL, this one included",
            )
            .unwrap(),
            heartbeat_age: prometheus::Gauge::new(
                "fngate_fleet_heartbeat_age_seconds",
                "Time since this gateway's last heartbeat the engine acknowledged",
            )
            .unwrap(),
            engine_rtt: Histogram::with_opts(
                HistogramOpts::new(
                    "fngate_fleet_engine_rtt_seconds",
                    "Round trip of one engine request (a heartbeat put)",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )
            .unwrap(),
            share: IntGauge::new(
                "fngate_fleet_limit_share",
                "Gateways the configured limits are divided by (split limits)",
            )
            .unwrap(),
            workers: IntGauge::new(
                "fngate_fleet_workers",
                "Workers this gateway places instances on, configured and learned from the fleet",
            )
            .unwrap(),
        };
        registry.register(Box::new(m.workers.clone())).unwrap();
        registry
            .register(Box::new(m.live_gateways.clone()))
            .unwrap();
        registry
            .register(Box::new(m.heartbeat_age.clone()))
            .unwrap();
        registry.register(Box::new(m.engine_rtt.clone())).unwrap();
        registry.register(Box::new(m.share.clone())).unwrap();
        m
    }
}

/// A gateway's connection to its fleet.
pub struct Fleet {
    pub cfg: FleetConfig,
    pub client: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    pub metrics: FleetMetrics,
    /// When this process joined (its incarnation, with its id).
    pub started_unix_ms: u64,
    live: AtomicU32,
    /// Wall-clock ms of the last heartbeat the engine acknowledged.
    last_heartbeat_ms: AtomicU64,
}

impl Fleet {
    /// Connects, retrying until `connect_timeout`; the client reconnects by
    /// itself afterwards.
    pub async fn connect(cfg: FleetConfig, registry: &Registry) -> Result<Arc<Fleet>, FleetError> {
        let mut opts = async_nats::ConnectOptions::new();
        match &cfg.auth {
            NatsAuth::None => {}
            NatsAuth::Token(t) => {
                opts = opts.token(String::from_utf8_lossy(t.expose()).into_owned());
            }
            NatsAuth::UserPassword { user, password } => {
                opts = opts.user_and_password(
                    user.clone(),
                    String::from_utf8_lossy(password.expose()).into_owned(),
                );
            }
        }
        let client = sandbox_runtime::fleet::connect(
            &cfg.nats_urls,
            format!("fngate {}/{}", cfg.name, cfg.id),
            cfg.engine_timeout,
            opts,
            cfg.connect_timeout,
        )
        .await?;
        let jetstream = async_nats::jetstream::new(client.clone());
        let metrics = FleetMetrics::new(registry);
        metrics.live_gateways.set(1);
        metrics.share.set(1);
        Ok(Arc::new(Fleet {
            cfg,
            client,
            jetstream,
            metrics,
            started_unix_ms: crate::asynchronous::now_ms(),
            live: AtomicU32::new(1),
            last_heartbeat_ms: AtomicU64::new(0),
        }))
    }

    /// A stream or bucket name scoped to this fleet.
    pub fn scoped(&self, what: &str) -> String {
        format!("{}_{what}", self.cfg.name)
    }

    /// A key-value bucket scoped to this fleet, created when missing.
    pub async fn bucket(
        &self,
        what: &str,
        history: i64,
        max_age: Duration,
        storage: async_nats::jetstream::stream::StorageType,
    ) -> Result<async_nats::jetstream::kv::Store, FleetError> {
        sandbox_runtime::fleet::bucket(
            &self.jetstream,
            &self.scoped(what),
            history,
            max_age,
            storage,
            self.cfg.replicas,
        )
        .await
        .map_err(FleetError::Engine)
    }

    /// Gateways live in the fleet, this one included (at least 1).
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Acquire)
    }

    /// Why this gateway should not be sent traffic, if it should not.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Some("not connected to NATS");
        }
        let last = self.last_heartbeat_ms.load(Ordering::Acquire);
        let now = crate::asynchronous::now_ms();
        if last == 0 || now.saturating_sub(last) > self.cfg.member_ttl.as_millis() as u64 {
            return Some(
                "the fleet has not seen a heartbeat from this gateway within the member TTL",
            );
        }
        None
    }
}
