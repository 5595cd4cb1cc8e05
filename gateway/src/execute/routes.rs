//! Where a call runs: a function's backends (stage 9 for functions that
//! have `[[functions.backends]]`).
//!
//! A function runs on fngate's own sandbox workers, in a cloud (Lambda, FC,
//! an Azure HTTP trigger, any HTTPS URL), or on several of them: each call
//! picks one backend by `weight`, then tries the `fallback` backends in
//! order, but only while no backend can have run it:
//! - a cloud backend that could not be reached (connect or TLS failure), or
//!   that answered with its own throttling or capacity error
//!   (see [`cloud`]);
//! - the sandbox when it could not place the call (scale-out limits, no
//!   capacity, no worker, the instance did not start);
//! - a backend at its own `max_concurrency` (the call is not sent; this is
//!   not held against its health).
//!
//! A call that may have run (the payload was sent and no throttling answer
//! came back, a timeout included) is never sent again.
//!
//! **Outlier ejection**: `backend_eject_after_failures` consecutive
//! failures of a backend (unreachable, throttled, timed out, an error of
//! its own; not its function's errors) take it out of the choice for
//! `backend_eject_ms`; after that, one call probes it: success brings it
//! back, failure keeps it out for another period. When every candidate is
//! out, the chosen one is tried anyway (a gateway that refuses everything
//! helps nobody).
//!
//! Every attempt is a [`Leg`] in the usage record, and counted in
//! `fngate_backend_requests_total{function,backend,outcome}`.

use super::cloud;
use crate::backend::client;

use super::{Call, Executor, Failed};
use crate::api::{FunctionAnswer, Ran};
use crate::config::backends::BackendConfig;
use crate::config::{BackendSettings, FunctionConfig};
use crate::error::InvokeError;
use crate::ingress::VpcTable;
pub use crate::metering::Leg;
use crate::scheduler::FunctionPool;
use bytes::Bytes;
use http::HeaderValue;
use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// How one attempt on a backend ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegOutcome {
    Success,
    /// The backend ran the function, which failed.
    FunctionError,
    /// The backend's own throttling or capacity answer.
    Throttled,
    /// Its `max_concurrency` was reached: not sent, not a failure.
    Limited,
    /// Connect or TLS failure: nothing reached the backend.
    ConnectError,
    Timeout,
    /// Any other failure of the backend (its own error answer, a broken
    /// answer, refused credentials).
    Error,
}

impl LegOutcome {
    pub const ALL: [LegOutcome; 7] = [
        LegOutcome::Success,
        LegOutcome::FunctionError,
        LegOutcome::Throttled,
        LegOutcome::Limited,
        LegOutcome::ConnectError,
        LegOutcome::Timeout,
        LegOutcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LegOutcome::Success => "success",
            LegOutcome::FunctionError => "function_error",
            LegOutcome::Throttled => "throttled",
            LegOutcome::Limited => "limited",
            LegOutcome::ConnectError => "connect_error",
            LegOutcome::Timeout => "timeout",
            LegOutcome::Error => "error",
        }
    }

    /// Whether it counts against the backend's health.
    fn is_failure(self) -> bool {
        !matches!(
            self,
            LegOutcome::Success | LegOutcome::FunctionError | LegOutcome::Limited
        )
    }
}

/// The backend metric families, registered once.
#[derive(Clone)]
pub struct BackendFamilies {
    requests: IntCounterVec,
    duration: HistogramVec,
    bytes: IntCounterVec,
    ejections: IntCounterVec,
    ejected: IntGaugeVec,
}

impl BackendFamilies {
    pub fn new(registry: &Registry) -> Self {
        let f = crate::families::Families(registry);
        let requests = f.counters(
            "fngate_backend_requests_total",
            "Attempts on a function's backends, by function, backend and outcome (success, function_error, throttled, limited: its max_concurrency was reached, connect_error, timeout, error).",
            &["function", "backend", "outcome"],
        );
        let duration = f.histograms(
            "fngate_backend_request_duration_seconds",
            "Time of one attempt on a backend, from sending to the answer's last byte, in seconds.",
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ],
            &["function", "backend"],
        );
        let bytes = f.counters(
            "fngate_backend_traffic_bytes_total",
            "Body bytes between the gateway and a function's backends, by the backend's network and direction (out: to the backend).",
            &["function", "backend", "network", "direction"],
        );
        let ejections = f.counters(
            "fngate_backend_ejections_total",
            "Times a backend was taken out of rotation after consecutive failures.",
            &["function", "backend"],
        );
        let ejected = f.gauges(
            "fngate_backend_ejected",
            "1 while a backend is out of rotation (probed once per cool-down).",
            &["function", "backend"],
        );
        BackendFamilies {
            requests,
            duration,
            bytes,
            ejections,
            ejected,
        }
    }
}

/// One backend's cached metric handles.
struct BackendMetrics {
    requests: [IntCounter; LegOutcome::ALL.len()],
    duration: Histogram,
    bytes_out: IntCounter,
    bytes_in: IntCounter,
    ejections: IntCounter,
    ejected: IntGauge,
}

/// Milliseconds on a process-wide monotonic clock (0 is never a time).
fn now_ms() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

/// A backend's health: consecutive failures and, when ejected, until when.
#[derive(Default)]
struct Health {
    failures: AtomicU32,
    /// 0: in rotation.
    ejected_until: AtomicU64,
}

pub struct Backend {
    pub cfg: BackendConfig,
    /// `None` for the sandbox.
    target: Option<cloud::Target>,
    health: Health,
    metrics: BackendMetrics,
    network: (&'static str, Option<String>),
    /// `max_concurrency`'s permits.
    limit: Option<Arc<tokio::sync::Semaphore>>,
}

impl Backend {
    pub fn is_ejected(&self) -> bool {
        self.health.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// Whether the choice may take it now. Once its cool-down has passed,
    /// exactly one caller wins the probe (and pushes the next one out).
    fn available(&self, eject_for_ms: u64) -> bool {
        let until = self.health.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = now_ms();
        now >= until
            && self
                .health
                .ejected_until
                .compare_exchange(
                    until,
                    now + eject_for_ms,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn record(&self, function: &str, outcome: LegOutcome, settings: &BackendSettings) {
        self.metrics.requests[outcome as usize].inc();
        if outcome == LegOutcome::Limited {
            return;
        }
        if !outcome.is_failure() {
            self.health.failures.store(0, Ordering::Relaxed);
            if self.health.ejected_until.swap(0, Ordering::AcqRel) != 0 {
                self.metrics.ejected.set(0);
                tracing::info!(function, backend = %self.cfg.name, "backend back in rotation");
            }
            return;
        }
        let n = self.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= settings.eject_after_failures {
            let until = now_ms() + settings.eject_for.as_millis() as u64;
            if self.health.ejected_until.swap(until, Ordering::AcqRel) == 0 {
                self.metrics.ejections.inc();
                self.metrics.ejected.set(1);
                tracing::warn!(function, backend = %self.cfg.name, failures = n, "backend ejected");
            }
        }
    }

    /// One attempt, as the usage record keeps it.
    fn leg(
        &self,
        outcome: LegOutcome,
        bytes_out: u64,
        bytes_in: u64,
        took: std::time::Duration,
    ) -> Leg {
        Leg {
            backend: self.cfg.name.to_string(),
            kind: self.cfg.kind.as_str().into(),
            network: self.network.0.into(),
            vpc_id: self.network.1.clone(),
            bytes_out,
            bytes_in,
            duration_ms: took.as_secs_f64() * 1000.0,
            outcome: outcome.as_str().into(),
        }
    }

    /// What `/admin/functions` shows of it.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "name": &*self.cfg.name,
            "kind": self.cfg.kind.as_str(),
            "weight": self.cfg.weight,
            "fallback": self.cfg.fallback,
            "network": self.network.1.as_deref().unwrap_or(self.network.0),
            "ejected": self.is_ejected(),
            "consecutive_failures": self.health.failures.load(Ordering::Relaxed),
            "max_concurrency": self.cfg.max_concurrency,
            "in_flight": self.limit.as_ref().map(|s| {
                self.cfg.max_concurrency.unwrap_or(0) as usize - s.available_permits()
            }),
        })
    }
}

/// A function's backends and how calls are dealt among them.
pub struct Routes {
    pub backends: Box<[Backend]>,
    /// The weighted backends: (weight, index).
    weights: Box<[(u32, usize)]>,
    /// Fallback backends, in their order.
    fallbacks: Box<[usize]>,
    settings: BackendSettings,
}

impl Routes {
    /// `None` when the function has no backends (the sandbox only); `Err`
    /// when a backend cannot be called (see [`cloud::Target::new`]).
    pub fn new(
        f: &FunctionConfig,
        settings: &BackendSettings,
        outbound: &client::Outbound,
        families: &BackendFamilies,
        vpcs: &VpcTable,
    ) -> Result<Option<Routes>, cloud::Unusable> {
        if f.backends.is_empty() {
            return Ok(None);
        }
        let backends: Box<[Backend]> = f
            .backends
            .iter()
            .map(|b| {
                let labels = [&*f.name, &*b.name];
                let network = match b.network {
                    None => ("internet", None),
                    Some(v) => ("vpc", Some(vpcs.name(v).to_string())),
                };
                let net_label = network.1.as_deref().unwrap_or("internet");
                let bytes = |dir| {
                    families
                        .bytes
                        .with_label_values(&[&*f.name, &*b.name, net_label, dir])
                };
                Ok(Backend {
                    target: cloud::Target::new(b, outbound, settings.max_idle_per_host)?,
                    health: Health::default(),
                    metrics: BackendMetrics {
                        requests: LegOutcome::ALL.map(|o| {
                            families
                                .requests
                                .with_label_values(&[&*f.name, &*b.name, o.as_str()])
                        }),
                        duration: families.duration.with_label_values(&labels),
                        bytes_out: bytes("out"),
                        bytes_in: bytes("in"),
                        ejections: families.ejections.with_label_values(&labels),
                        ejected: families.ejected.with_label_values(&labels),
                    },
                    network,
                    limit: b
                        .max_concurrency
                        .map(|n| Arc::new(tokio::sync::Semaphore::new(n as usize))),
                    cfg: b.clone(),
                })
            })
            .collect::<Result<_, cloud::Unusable>>()?;
        let weights = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.cfg.weight > 0)
            .map(|(i, b)| (b.cfg.weight, i))
            .collect();
        let mut fallbacks: Vec<usize> = (0..backends.len())
            .filter(|&i| backends[i].cfg.fallback.is_some())
            .collect();
        fallbacks.sort_by_key(|&i| backends[i].cfg.fallback);
        Ok(Some(Routes {
            backends,
            weights,
            fallbacks: fallbacks.into(),
            settings: settings.clone(),
        }))
    }

    /// The backends to try, in order: one chosen by weight among those in
    /// rotation, then the fallbacks in rotation.
    fn plan(&self) -> Vec<usize> {
        let eject_for = self.settings.eject_for.as_millis() as u64;
        let mut plan = Vec::with_capacity(1 + self.fallbacks.len());
        // An ejected draw is redrawn among the rest, so its share spreads
        // over them in proportion to their weights.
        let mut candidates = self.weights.to_vec();
        let mut first = None;
        while !candidates.is_empty() {
            let total = candidates.iter().map(|c| c.0).sum();
            let mut r = random_below(total);
            let pos = candidates
                .iter()
                .position(|&(w, _)| match r < w {
                    true => true,
                    false => {
                        r -= w;
                        false
                    }
                })
                .unwrap_or(0);
            let (_, i) = candidates.swap_remove(pos);
            first.get_or_insert(i);
            if self.backends[i].available(eject_for) {
                plan.push(i);
                break;
            }
        }
        for &i in self.fallbacks.iter() {
            if !plan.contains(&i) && self.backends[i].available(eject_for) {
                plan.push(i);
            }
        }
        if plan.is_empty()
            && let Some(i) = first
        {
            plan.push(i);
        }
        plan
    }
}

/// Every function's routes, by name (only functions with backends).
pub type RouteTable = Arc<std::collections::HashMap<Arc<str>, Routes>>;

/// Why the backends could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error(transparent)]
    Trust(#[from] client::TrustError),
    #[error("function {function:?}: {source}")]
    Unusable {
        function: String,
        #[source]
        source: cloud::Unusable,
    },
}

/// Builds every function's routes, at start and at each reload, with one
/// outbound client (its connection pools outlive a reload) and one set of
/// metric families.
pub struct Builder {
    settings: crate::config::BackendSettings,
    families: BackendFamilies,
    /// Made when a function first has backends.
    outbound: std::sync::OnceLock<client::Outbound>,
}

impl Builder {
    pub fn new(settings: &crate::config::BackendSettings, registry: &Registry) -> Builder {
        Builder {
            settings: settings.clone(),
            families: BackendFamilies::new(registry),
            outbound: std::sync::OnceLock::new(),
        }
    }

    /// The routes of every function of `config` that has backends.
    pub fn table(&self, config: &crate::config::Config) -> Result<RouteTable, RoutesError> {
        let mut out = std::collections::HashMap::new();
        if !config.functions.iter().any(|f| !f.backends.is_empty()) {
            return Ok(Arc::new(out));
        }
        let outbound = match self.outbound.get() {
            Some(o) => o,
            None => {
                let o = client::Outbound::new(self.settings.ca_file.as_deref())?;
                self.outbound.get_or_init(|| o)
            }
        };
        for f in &config.functions {
            let routes = Routes::new(
                f,
                &self.settings,
                outbound,
                &self.families,
                &config.ingress.vpcs,
            )
            .map_err(|source| RoutesError::Unusable {
                function: f.name.to_string(),
                source,
            })?;
            if let Some(r) = routes {
                out.insert(f.name.clone(), r);
            }
        }
        Ok(Arc::new(out))
    }
}

/// Sandbox errors that mean the call never ran (it may go to a fallback).
fn sandbox_not_run(e: &InvokeError) -> bool {
    matches!(
        e,
        InvokeError::Throttled(_)
            | InvokeError::NoCapacity { .. }
            | InvokeError::WorkerUnavailable
            | InvokeError::InstanceStartFailed { .. }
    )
}

/// Runs `call` on `routes`' backends (see the module's rules). Returns the
/// outcome and every attempt on a cloud backend.
pub async fn call(
    p: &Executor,
    pool: &Arc<FunctionPool>,
    routes: &Routes,
    call: &Call<'_>,
    payload: Bytes,
    request_id: &HeaderValue,
) -> (Result<(FunctionAnswer, Ran), Failed>, Vec<Leg>) {
    let plan = routes.plan();
    // The legs are for the usage record only.
    let keep_legs = p.usage.is_on();
    let mut legs = Vec::new();
    let mut last = None;
    for (n, &i) in plan.iter().enumerate() {
        let b = &routes.backends[i];
        let more = n + 1 < plan.len();
        // Held until the call is done (sandbox or cloud).
        let _permit = match &b.limit {
            None => None,
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    b.record(&pool.cfg.name, LegOutcome::Limited, &routes.settings);
                    if keep_legs {
                        legs.push(b.leg(LegOutcome::Limited, 0, 0, std::time::Duration::ZERO));
                    }
                    last = Some(Err((
                        InvokeError::BackendThrottled {
                            backend: b.cfg.name.clone(),
                            retry_after: None,
                        },
                        None,
                    )));
                    continue;
                }
            },
        };
        let Some(target) = &b.target else {
            let r = p
                .sandbox
                .call(pool, call, payload.clone(), request_id)
                .await;
            match &r {
                Err((e, _)) if sandbox_not_run(e) && more => {
                    tracing::debug!(function = %pool.cfg.name, backend = %b.cfg.name, error = %e, "sandbox could not run the call; next backend");
                    last = Some(r);
                    continue;
                }
                _ => return (r, legs),
            }
        };
        let timeout = b.cfg.timeout.unwrap_or(pool.cfg.timeout);
        let started = Instant::now();
        let result = target
            .invoke(
                &b.cfg,
                call,
                &payload,
                request_id,
                timeout,
                p.sandbox.max_response_bytes,
            )
            .await;
        let elapsed = started.elapsed();
        let (outcome, bytes_in, sent) = match &result {
            Ok(a) => (a.outcome, a.answer.body.len() as u64, true),
            Err(f) => (f.outcome, 0, f.outcome != LegOutcome::ConnectError),
        };
        let bytes_out = if sent { payload.len() as u64 } else { 0 };
        b.metrics.duration.observe(elapsed.as_secs_f64());
        b.metrics.bytes_out.inc_by(bytes_out);
        b.metrics.bytes_in.inc_by(bytes_in);
        b.record(&pool.cfg.name, outcome, &routes.settings);
        if keep_legs {
            legs.push(b.leg(outcome, bytes_out, bytes_in, elapsed));
        }
        let ran = Ran {
            instance_id: target.name_header.clone(),
            cold: false,
            log: None,
        };
        match result {
            Ok(a) => return (Ok((a.answer, ran)), legs),
            Err(f) if f.retryable && more => {
                tracing::debug!(function = %pool.cfg.name, backend = %b.cfg.name, error = %f.error, "backend did not run the call; next backend");
                last = Some(Err((f.error, None)));
            }
            Err(f) => {
                let ran = (!f.retryable).then_some(ran);
                return (Err((f.error, ran)), legs);
            }
        }
    }
    let r = match last {
        Some(r) => r,
        None => Err((InvokeError::internal("no backend to call"), None)),
    };
    (r, legs)
}

/// Thread-local xorshift64*: weighted choice needs no cryptographic
/// randomness, and a shared generator would be a contended atomic.
fn random_below(n: u32) -> u32 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
            u64::from_le_bytes(seed) | 1
        });
    }
    if n == 0 {
        return 0;
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) * u64::from(n)) >> 32) as u32
    })
}

#[cfg(test)]
mod tests;
