//! Throttling: rate limits (GCRA, via `governor`), concurrency limits and
//! scale-out limits. A refused call gets 429 with the limit that refused it
//! and when to retry, computed from the limiter itself.
//!
//! Order (pipeline stage 4, after ingress so a denied caller spends nobody's
//! budget), narrowest first, so a caller refused by its own limit does not
//! spend the function's:
//! 1. the caller's rate on this function (`caller_rate_limit`);
//! 2. the caller's rate across the gateway (`gateway.caller_rate_limit`);
//! 3. the function's rate (`rate_limit`);
//! 4. the function's concurrency (`max_concurrency`), optionally waiting up to
//!    `queue_timeout_ms` in a bounded FIFO queue;
//! 5. on scale-out only (in the scheduler): `gateway.max_instances` and
//!    `gateway.max_instance_starts_per_minute`.
//!
//! In fleet mode (`[fleet]`, `split` limits) every rate above, the
//! concurrency and the scale-out limits are divided by the live gateways
//! ([`GatewayLimits::split`], [`FunctionLimits::split`]): each limiter is
//! rebuilt from its configured quota and swapped in, so the check stays one
//! lock-free load plus GCRA; the concurrency semaphore is resized in place.
//! With `redis` limits the rates and scale-out are the fleet's exact count
//! ([`crate::fleet::exact`]), the split ones its fallback.
//!
//! A caller is keyed by its source address, or by its VPC for VPC callers
//! when `gateway.caller_key = "network"`, or by the access key its request
//! was verified with when `gateway.caller_key = "access_key"` (callers with
//! no verified key stay keyed by address).

mod carry;
pub mod shared;

use crate::auth::KeyId;
use crate::ingress::{Caller, Network, VpcId};
use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock, QuantaClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Which limit refused a call (dialects render their own reason from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    CallerRate,
    GatewayCallerRate,
    FunctionRate,
    FunctionConcurrency,
    MaxInstances,
    InstanceStartRate,
    /// Asynchronous invocations accepted and not yet done (`max_async_queued`).
    AsyncQueue,
}

impl LimitKind {
    pub const ALL: [LimitKind; 7] = [
        LimitKind::CallerRate,
        LimitKind::GatewayCallerRate,
        LimitKind::FunctionRate,
        LimitKind::FunctionConcurrency,
        LimitKind::MaxInstances,
        LimitKind::InstanceStartRate,
        LimitKind::AsyncQueue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::CallerRate => "caller_rate",
            LimitKind::GatewayCallerRate => "gateway_caller_rate",
            LimitKind::FunctionRate => "function_rate",
            LimitKind::FunctionConcurrency => "function_concurrency",
            LimitKind::MaxInstances => "max_instances",
            LimitKind::InstanceStartRate => "instance_start_rate",
            LimitKind::AsyncQueue => "async_queue",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub limit: LimitKind,
    /// The earliest time a retry can succeed, as the limiter sees it.
    pub retry_after: Duration,
}

/// A rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// `None` when the numbers are out of range (config validation reports it).
    pub fn quota(&self) -> Option<Quota> {
        if !(self.per_second.is_finite() && self.per_second > 0.0 && self.per_second <= 1e9) {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / self.per_second);
        Quota::with_period(period)?
            .allow_burst(NonZeroU32::new(self.burst)?)
            .into()
    }
}

/// How callers are told apart for per-caller limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerKeying {
    /// Every source address is its own caller.
    #[default]
    SourceIp,
    /// A VPC is one caller; internet callers are keyed by address.
    Network,
    /// A verified access key is one caller; unsigned callers are keyed by address.
    AccessKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallerKey {
    Ip(IpAddr),
    Vpc(VpcId),
    AccessKey(KeyId),
}

impl CallerKeying {
    /// `key` is the access key the request was verified with, if any.
    pub fn key(self, c: &Caller, key: Option<KeyId>) -> CallerKey {
        match (self, c.network, key) {
            (CallerKeying::Network, Network::Vpc(v), _) => CallerKey::Vpc(v),
            (CallerKeying::AccessKey, _, Some(k)) => CallerKey::AccessKey(k),
            _ => CallerKey::Ip(c.ip),
        }
    }

    /// Whether a caller's identity depends on its verified access key.
    pub fn by_access_key(self) -> bool {
        self == CallerKeying::AccessKey
    }
}

/// A per-caller limiter whose idle keys are evicted, so a flood of distinct
/// sources cannot grow it without bound (see [`KeyedLimiter::evict_idle`]).
pub struct KeyedLimiter<C: Clock = DefaultClock> {
    inner: RateLimiter<CallerKey, DashMapStateStore<CallerKey>, C, NoOpMiddleware<C::Instant>>,
}

impl KeyedLimiter<DefaultClock> {
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, QuantaClock::default())
    }
}

impl<C: Clock> KeyedLimiter<C> {
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        KeyedLimiter {
            inner: RateLimiter::dashmap_with_clock(quota, clock),
        }
    }

    pub fn check(&self, key: &CallerKey) -> Result<(), Duration> {
        self.inner
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.inner.clock().now()))
    }

    /// Drops keys whose state is back to "full burst available" (idle long
    /// enough that forgetting them changes nothing), and returns the memory.
    pub fn evict_idle(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }

    /// Takes `n` tokens of `key`'s bucket if it holds them.
    fn take(&self, key: &CallerKey, n: NonZeroU32) -> bool {
        matches!(self.inner.check_key_n(key, n), Ok(Ok(())))
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

type Direct = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

fn check_direct(l: &Direct) -> Result<(), Duration> {
    l.check().map_err(|nu| nu.wait_time_from(l.clock().now()))
}

/// One gateway's part of a quota shared by `n` gateways: `1/n` of the rate,
/// `ceil(burst / n)` of the burst (at least one call, so a fleet larger than
/// the burst still admits; the documented bound counts that rounding).
pub fn split_quota(q: Quota, n: u32) -> Quota {
    let n = n.max(1);
    if n == 1 {
        return q;
    }
    let burst = q.burst_size().get().div_ceil(n);
    Quota::with_period(q.replenish_interval().saturating_mul(n))
        .expect("a non-zero period times n is non-zero")
        .allow_burst(NonZeroU32::new(burst).expect("ceil of a positive burst"))
}

/// A limiter built from a configured quota, rebuilt when the fleet's share
/// changes. A rebuild starts from a full burst: each membership change may
/// admit one extra (split) burst, which the fleet bound counts.
struct Shared<L> {
    quota: Quota,
    make: fn(Quota) -> L,
    limiter: ArcSwap<L>,
}

impl<L> Shared<L> {
    fn new(quota: Quota, make: fn(Quota) -> L) -> Self {
        Shared {
            quota,
            make,
            limiter: ArcSwap::from_pointee(make(quota)),
        }
    }

    fn split(&self, n: u32) {
        self.limiter
            .store(Arc::new((self.make)(split_quota(self.quota, n))));
    }
}

fn direct(q: Quota) -> Direct {
    RateLimiter::direct(q)
}

/// Gateway-wide limits.
pub struct GatewayLimits {
    pub keying: CallerKeying,
    caller_rate: Option<Shared<KeyedLimiter>>,
    /// As configured (the fleet's total), and this gateway's part of it.
    max_instances_total: u32,
    max_instances: AtomicU32,
    live_instances: AtomicU32,
    start_rate: Shared<Direct>,
    /// Live gateways the limits are divided by (1 outside a fleet).
    share: AtomicU32,
    /// Fleet mode, `redis` limits: the fleet's count decides a start (see
    /// [`crate::fleet::exact`]); here only the fleet's total bounds it.
    exact_starts: AtomicBool,
}

impl GatewayLimits {
    pub fn new(
        keying: CallerKeying,
        caller_rate: Option<Quota>,
        max_instances: u32,
        starts_per_minute: u32,
    ) -> Self {
        let per_min = NonZeroU32::new(starts_per_minute.max(1)).expect("non-zero");
        GatewayLimits {
            keying,
            caller_rate: caller_rate.map(|q| Shared::new(q, KeyedLimiter::new)),
            max_instances_total: max_instances,
            max_instances: AtomicU32::new(max_instances),
            live_instances: AtomicU32::new(0),
            start_rate: Shared::new(Quota::per_minute(per_min), direct),
            share: AtomicU32::new(1),
            exact_starts: AtomicBool::new(false),
        }
    }

    /// From now on a start is admitted by the fleet's exact count, with
    /// [`GatewayLimits::fallback_start`] when that cannot answer.
    pub fn set_exact_starts(&self) {
        self.exact_starts.store(true, Ordering::Release);
    }

    /// The fleet's `max_instances` and start quota, as configured.
    pub fn fleet_start_limits(&self) -> (u32, Quota) {
        (self.max_instances_total, self.start_rate.quota)
    }

    /// Divides the gateway-wide limits among `n` live gateways; returns
    /// whether the share changed (then the functions' limits follow).
    pub fn split(&self, n: u32) -> bool {
        let n = n.max(1);
        if self.share.swap(n, Ordering::AcqRel) == n {
            return false;
        }
        if let Some(l) = &self.caller_rate {
            l.split(n);
        }
        self.start_rate.split(n);
        self.max_instances
            .store(self.max_instances_total.div_ceil(n), Ordering::Release);
        true
    }

    /// The gateway-wide per-caller quota as configured (the fleet's).
    pub fn caller_quota(&self) -> Option<Quota> {
        self.caller_rate.as_ref().map(|l| l.quota)
    }

    /// Live gateways the limits are divided by.
    pub fn share(&self) -> u32 {
        self.share.load(Ordering::Acquire)
    }

    /// This gateway's `max_instances` (its part of the fleet's).
    pub fn max_instances(&self) -> u32 {
        self.max_instances.load(Ordering::Acquire)
    }

    /// Admits one more instance start, or says which scale-out limit bites.
    /// The caller must call [`GatewayLimits::instance_gone`] when it ends.
    pub fn admit_start(&self, retry_hint: Duration) -> Result<(), Throttled> {
        let exact = self.exact_starts.load(Ordering::Acquire);
        // Exact: no gateway alone may pass the fleet's total; the rest is
        // the fleet count's to decide, when the start goes.
        let max = match exact {
            true => self.max_instances_total,
            false => self.max_instances(),
        };
        let reserved = self
            .live_instances
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(Throttled {
                limit: LimitKind::MaxInstances,
                retry_after: retry_hint,
            });
        }
        if exact {
            return Ok(());
        }
        if let Err(wait) = check_direct(&self.start_rate.limiter.load()) {
            self.live_instances.fetch_sub(1, Ordering::AcqRel);
            return Err(Throttled {
                limit: LimitKind::InstanceStartRate,
                retry_after: wait,
            });
        }
        Ok(())
    }

    /// Exact mode when the fleet's count cannot answer: this gateway's
    /// split share decides a start [`GatewayLimits::admit_start`] already
    /// counted. On refusal the caller ends the start (`instance_gone`).
    pub fn fallback_start(&self, retry_hint: Duration) -> Result<(), Throttled> {
        if self.live_instances() > self.max_instances() {
            return Err(Throttled {
                limit: LimitKind::MaxInstances,
                retry_after: retry_hint,
            });
        }
        check_direct(&self.start_rate.limiter.load()).map_err(|wait| Throttled {
            limit: LimitKind::InstanceStartRate,
            retry_after: wait,
        })
    }

    pub fn instance_gone(&self) {
        let _ = self
            .live_instances
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn live_instances(&self) -> u32 {
        self.live_instances.load(Ordering::Acquire)
    }

    pub fn evict_idle(&self) {
        if let Some(l) = &self.caller_rate {
            l.limiter.load().evict_idle();
        }
    }
}

/// A function's `max_concurrency` (and its asynchronous attempts' slots),
/// resized when the fleet's share changes or a reload changes it.
/// Growing adds permits; shrinking forgets free ones and owes the rest,
/// which permits pay as they come back: calls in flight are never cut, and
/// the new bound holds once they end.
pub struct Concurrency {
    configured: u32,
    /// Kept across a reload that changes `configured` ([`carry`]): the
    /// permits in flight stay counted.
    inner: Arc<ConcurrencyInner>,
}

#[derive(Debug)]
struct ConcurrencyInner {
    sem: Semaphore,
    debt: AtomicUsize,
    /// Permits that exist (free or held) once the debt is paid. Resizes
    /// only: a cold-path lock, so that two resizes do not interleave.
    size: Mutex<u32>,
}

/// A call's concurrency slot, given back when dropped (at the end of the
/// response body).
#[derive(Debug)]
pub struct ConcurrencyPermit(Arc<ConcurrencyInner>);

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        let d = &self.0.debt;
        let paid = d.load(Ordering::Acquire) > 0
            && d.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
        if !paid {
            self.0.sem.add_permits(1);
        }
    }
}

impl Concurrency {
    pub fn new(n: u32) -> Self {
        Concurrency {
            configured: n,
            inner: Arc::new(ConcurrencyInner {
                sem: Semaphore::new(n as usize),
                debt: AtomicUsize::new(0),
                size: Mutex::new(n),
            }),
        }
    }

    /// This gateway's part when `n` gateways share the limit (rounded up,
    /// as the fleet bound counts).
    fn split(&self, n: u32) {
        let target = self.configured.div_ceil(n.max(1));
        let i = &self.inner;
        let mut size = i.size.lock().unwrap();
        if target > *size {
            let grow = (target - *size) as usize;
            // Owed permits are forgiven before new ones are made.
            let owed = i
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d.saturating_sub(grow))
                })
                .expect("always Some");
            i.sem.add_permits(grow - owed.min(grow));
        } else if target < *size {
            let shrink = (*size - target) as usize;
            let forgotten = i.sem.forget_permits(shrink);
            i.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        *size = target;
    }

    /// The same slots, resized to `n` (a reload): permits held stay counted.
    pub fn resized(&self, n: u32) -> Concurrency {
        let c = Concurrency {
            configured: n,
            inner: self.inner.clone(),
        };
        c.split(1);
        c
    }

    pub fn configured(&self) -> u32 {
        self.configured
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.inner.sem.available_permits()
    }

    pub fn try_acquire(&self) -> Option<ConcurrencyPermit> {
        let p = self.inner.sem.try_acquire().ok()?;
        p.forget();
        Some(ConcurrencyPermit(self.inner.clone()))
    }

    async fn acquire(&self) -> Option<ConcurrencyPermit> {
        let p = self.inner.sem.acquire().await.ok()?;
        p.forget();
        Some(ConcurrencyPermit(self.inner.clone()))
    }
}

/// One function's limits. A reload that leaves a limit as it was keeps the
/// same limiter (its parts are shared); one that changes it carries the
/// old one's state over ([`carry`]).
pub struct FunctionLimits {
    rate: Option<Arc<Shared<Direct>>>,
    caller_rate: Option<Arc<Shared<KeyedLimiter>>>,
    /// The callers of a per-caller rate changed by a reload: each keeps
    /// what it had left, moved over at its first call.
    carried: Option<Arc<carry::Callers>>,
    concurrency: Option<Concurrency>,
    pub queue_timeout: Duration,
    queue_max: usize,
    queued: AtomicUsize,
    /// Recent invocation time (EWMA, µs): the expected wait for a busy slot.
    avg_duration_us: AtomicU64,
    /// The gateways splitting these limits (1 alone).
    share: AtomicU32,
}

impl FunctionLimits {
    pub fn new(
        rate: Option<Quota>,
        caller_rate: Option<Quota>,
        max_concurrency: Option<u32>,
        queue_timeout: Duration,
        queue_max: usize,
    ) -> Self {
        FunctionLimits {
            rate: rate.map(|q| Arc::new(Shared::new(q, direct))),
            caller_rate: caller_rate.map(|q| Arc::new(Shared::new(q, KeyedLimiter::new))),
            carried: None,
            concurrency: max_concurrency.map(Concurrency::new),
            queue_timeout,
            queue_max,
            queued: AtomicUsize::new(0),
            avg_duration_us: AtomicU64::new(0),
            share: AtomicU32::new(1),
        }
    }

    /// The function's rate and per-caller rate as configured (the fleet's).
    pub fn quotas(&self) -> (Option<Quota>, Option<Quota>) {
        (
            self.rate.as_ref().map(|l| l.quota),
            self.caller_rate.as_ref().map(|l| l.quota),
        )
    }

    /// This gateway's part of the function's rates and concurrency when
    /// `n` gateways share them.
    pub fn split(&self, n: u32) {
        self.share.store(n.max(1), Ordering::Relaxed);
        if let Some(l) = &self.rate {
            l.split(n);
        }
        if let Some(l) = &self.caller_rate {
            l.split(n);
        }
        if let Some(c) = &self.concurrency {
            c.split(n);
        }
    }

    /// Stages 4.1-4.3: the rate limits, narrowest first.
    pub fn check_rates(
        &self,
        gw: &GatewayLimits,
        caller: Option<&Caller>,
        access_key: Option<KeyId>,
    ) -> Result<(), Throttled> {
        let throttled = |limit| move |retry_after| Throttled { limit, retry_after };
        if let Some(c) = caller {
            let key = gw.keying.key(c, access_key);
            if let Some(l) = &self.caller_rate {
                if let Some(carried) = &self.carried {
                    carried.move_over(&key, &l.limiter.load());
                }
                l.limiter
                    .load()
                    .check(&key)
                    .map_err(throttled(LimitKind::CallerRate))?;
            }
            if let Some(l) = &gw.caller_rate {
                l.limiter
                    .load()
                    .check(&key)
                    .map_err(throttled(LimitKind::GatewayCallerRate))?;
            }
        }
        if let Some(l) = &self.rate {
            check_direct(&l.limiter.load()).map_err(throttled(LimitKind::FunctionRate))?;
        }
        Ok(())
    }

    /// Stage 4.4: a concurrency permit (held until the response is complete),
    /// waiting up to `queue_timeout` in FIFO order when configured. Dropping the
    /// future (the client went away) leaves the queue cleanly.
    pub async fn admit(&self) -> Result<Option<ConcurrencyPermit>, Throttled> {
        let Some(c) = &self.concurrency else {
            return Ok(None);
        };
        if let Some(p) = c.try_acquire() {
            return Ok(Some(p));
        }
        let refuse = Throttled {
            limit: LimitKind::FunctionConcurrency,
            retry_after: self.retry_hint(),
        };
        if self.queue_timeout.is_zero() {
            return Err(refuse);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.queue_max {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(refuse);
        }
        let _leave = QueueSlot(&self.queued);
        match tokio::time::timeout(self.queue_timeout, c.acquire()).await {
            Ok(Some(p)) => Ok(Some(p)),
            _ => Err(refuse),
        }
    }

    /// Callers waiting for a concurrency slot.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The expected wait for a busy slot: recent invocation time, at least 1 ms.
    pub fn retry_hint(&self) -> Duration {
        Duration::from_micros(self.avg_duration_us.load(Ordering::Relaxed).max(1000))
    }

    pub fn record_duration(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.avg_duration_us.load(Ordering::Relaxed);
        // EWMA with weight 1/8; a lost update under contention is harmless.
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        self.avg_duration_us.store(new, Ordering::Relaxed);
    }

    pub fn evict_idle(&self) {
        if let Some(l) = &self.caller_rate {
            l.limiter.load().evict_idle();
        }
    }
}

struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `Retry-After` (whole seconds, rounded up, at least 1) for a wait.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

#[cfg(test)]
mod tests;
