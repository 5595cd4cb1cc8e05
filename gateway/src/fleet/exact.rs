//! Exact fleet-wide rates (`rate_limits = "redis"`): one Redis round trip
//! per call, running GCRA for every rate the call meets in one script.
//!
//! - The script is governor's GCRA (state: the theoretical arrival time
//!   `tat`, `now` when absent; emission interval `T`, tolerance
//!   `τ = T × (burst − 1)`; a call at `now` is admitted when
//!   `now ≥ tat − τ`, then `tat = max(tat, now) + T`: a fresh key admits
//!   exactly `burst` at once, as governor's limiters do), on
//!   Redis's clock, so gateways' clocks do not matter. All of a call's keys
//!   (the caller's rate on the function, the caller's gateway-wide rate, the
//!   function's rate) are checked together and updated only if all admit:
//!   a call refused by one spends none of the others.
//! - A denial is remembered here until its retry time: a flood of
//!   throttled calls is answered locally without a round trip.
//! - Redis unreachable, failing, or slower than `redis_timeout_ms`: the
//!   call is checked against this gateway's split limits instead, counted in
//!   `fngate_fleet_limit_fallbacks_total{reason}`, and Redis is not asked
//!   again for a second (no per-call wait while it is down).
//! - Scale-out (`max_instances`, the start rate) is the fleet's too, one
//!   round trip per cold start: the fleet's instances are a sorted set
//!   whose members (`<owner>/<instance>`) carry a lease end as their score.
//!   A start prunes lapsed leases, counts, checks the start rate's GCRA and
//!   adds itself, in one script; a release removes its member; every
//!   gateway renews its members' leases each heartbeat, for `member_ttl`.
//!   A killed gateway's instances leave the count when their lease lapses,
//!   as its workers release them. Renewal adds a member that is missing
//!   (started while Redis could not answer, or after Redis lost its data),
//!   so the count recovers with Redis.
//! - `max_concurrency` stays split: exact would cost two round trips a call.

use crate::throttle::shared::{Answer, RateCheck, SharedCount, StartCheck, StartRequest};
use crate::throttle::{CallerKey, LimitKind, Throttled};
use dashmap::DashMap;
use governor::Quota;
use prometheus::{Histogram, IntCounter, IntCounterVec, Registry};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// KEYS: the limiter keys; ARGV: `T` and `τ` (µs) for each. Returns
/// `{0, 0}` when admitted, else `{index of the refusing key, wait µs}`.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next_tat = {}
local refused, wait = 0, 0
for i = 1, #KEYS do
  local T, tau = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local earliest = tat - tau
  if now < earliest then
    if earliest - now > wait then refused, wait = i, earliest - now end
  end
  next_tat[i] = tat + T
end
if refused > 0 then return {refused, wait} end
for i = 1, #KEYS do
  local ttl = math.ceil((next_tat[i] - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%d', next_tat[i]), 'PX', ttl)
end
return {0, 0}
";

/// KEYS: the fleet's instances (sorted set), the start rate's GCRA key;
/// ARGV: `max_instances`, `T` and `τ` (µs) of the start rate, the lease
/// (ms), the member. Returns `{0, 0}` when admitted, `{1, 0}` at
/// `max_instances`, `{2, wait µs}` over the start rate.
const START: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZSCORE', KEYS[1], ARGV[5]) then return {0, 0} end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return {1, 0} end
local T, tau = tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[2]) or now)
if tat < now then tat = now end
if now < tat - tau then return {2, tat - tau - now} end
local ttl = math.ceil((tat + T - now) / 1000) + 1
redis.call('SET', KEYS[2], string.format('%d', tat + T), 'PX', ttl)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[4]), ARGV[5])
return {0, 0}
";

/// KEYS: the fleet's instances; ARGV: the lease (ms), then the members.
const RENEW: &str = r"
local t = redis.call('TIME')
local lease_end = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], lease_end, ARGV[i]) end
return #ARGV - 1
";

/// After a failure, Redis is left alone this long.
const BACKOFF: Duration = Duration::from_secs(1);
/// Remembered denials beyond this many are swept.
const DENIALS_MAX: usize = 100_000;

pub struct ExactLimits {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    start: redis::Script,
    renew: redis::Script,
    /// `fngate:{<fleet>}:` — one hash slot per fleet.
    prefix: String,
    /// The sorted set of the fleet's instances.
    instances_key: String,
    timeout: Duration,
    denials: DashMap<Limited, Instant>,
    epoch: Instant,
    /// µs since `epoch` before which Redis is not asked.
    down_until_us: AtomicU64,
    fallbacks: IntCounterVec,
    cached_denials: IntCounter,
    rtt: Histogram,
}

/// governor's GCRA tolerance, in µs: `T × (burst − 1)`.
fn tolerance(q: Quota) -> u64 {
    micros(q.replenish_interval()) * u64::from(q.burst_size().get() - 1)
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// One rate limit's state on Redis, and the key of its cached denial.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Limited {
    /// A function's per-caller rate.
    Caller(Arc<str>, CallerKey),
    /// The gateway's per-caller rate (every function).
    GatewayCaller(CallerKey),
    /// A function's rate.
    Function(Arc<str>),
}

impl Limited {
    fn kind(&self) -> LimitKind {
        match self {
            Limited::Caller(..) => LimitKind::CallerRate,
            Limited::GatewayCaller(_) => LimitKind::GatewayCallerRate,
            Limited::Function(_) => LimitKind::FunctionRate,
        }
    }

    /// `prefix` is the fleet's, `fngate:{<fleet>}:`.
    fn redis_key(&self, prefix: &str) -> String {
        match self {
            Limited::Caller(f, who) => format!("{prefix}c:{f}:{}", CallerId(*who)),
            Limited::GatewayCaller(who) => format!("{prefix}g:{}", CallerId(*who)),
            Limited::Function(f) => format!("{prefix}f:{f}"),
        }
    }
}

struct CallerId(CallerKey);

impl std::fmt::Display for CallerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            CallerKey::Ip(ip) => write!(f, "ip:{ip}"),
            // Indices into tables built from the configuration every
            // member of a fleet shares.
            CallerKey::Vpc(v) => write!(f, "vpc:{}", v.0),
            CallerKey::AccessKey(k) => write!(f, "key:{}", k.0),
        }
    }
}

impl ExactLimits {
    pub fn new(
        url: &str,
        fleet: &str,
        timeout: Duration,
        registry: &Registry,
    ) -> Result<ExactLimits, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        // Lazily: a gateway starts (on split limits) while Redis is down.
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)?;
        let f = crate::families::Families(registry);
        let fallbacks = f.counters(
            "fngate_fleet_limit_fallbacks_total",
            "Calls checked against this gateway's split limits because Redis was unreachable, failing or slow",
            &["reason"],
        );
        for reason in ["timeout", "error", "unavailable"] {
            fallbacks.with_label_values(&[reason]);
        }
        let cached_denials = f.counter(
            "fngate_fleet_limit_cached_denials_total",
            "Calls refused from the local cache of Redis denials, with no round trip",
        );
        let rtt = f.histogram(
            "fngate_fleet_redis_rtt_seconds",
            "Round trip of one rate check on Redis",
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
            ],
        );
        Ok(ExactLimits {
            conn,
            script: redis::Script::new(GCRA),
            start: redis::Script::new(START),
            renew: redis::Script::new(RENEW),
            prefix: format!("fngate:{{{fleet}}}:"),
            instances_key: format!("fngate:{{{fleet}}}:instances"),
            timeout,
            denials: DashMap::new(),
            epoch: Instant::now(),
            down_until_us: AtomicU64::new(0),
            fallbacks,
            cached_denials,
            rtt,
        })
    }

    /// Stages 4.1-4.3 on the fleet's shared state; the split limits when
    /// Redis cannot answer in time.
    pub async fn check_rates(&self, call: RateCheck<'_>) -> Result<(), Throttled> {
        let RateCheck {
            function,
            limits: own,
            gw,
            caller,
            key: access_key,
        } = call;
        let (rate, caller_rate) = own.quotas();
        let who = caller.map(|c| gw.keying.key(c, access_key));
        // In the order the script checks them (and answers an index into).
        let checked = [
            who.zip(caller_rate)
                .map(|(w, q)| (Limited::Caller(function.clone(), w), q)),
            who.zip(gw.caller_quota())
                .map(|(w, q)| (Limited::GatewayCaller(w), q)),
            rate.map(|q| (Limited::Function(function.clone()), q)),
        ];
        let limits = checked.iter().flatten();
        if limits.clone().next().is_none() {
            return Ok(());
        }
        // A flood of refused calls is answered here, with no round trip
        // and no allocation.
        let now = Instant::now();
        for (limited, _) in limits.clone() {
            if let Some(until) = self.denials.get(limited).map(|u| *u)
                && until > now
            {
                self.cached_denials.inc();
                return Err(Throttled {
                    limit: limited.kind(),
                    retry_after: until - now,
                });
            }
        }
        let since = micros(now.duration_since(self.epoch));
        if since < self.down_until_us.load(Ordering::Relaxed) {
            self.fallbacks.with_label_values(&["unavailable"]).inc();
            return own.check_rates(gw, caller, access_key);
        }
        let mut call = self.script.prepare_invoke();
        for (limited, q) in limits.clone() {
            let t = micros(q.replenish_interval());
            call.key(limited.redis_key(&self.prefix))
                .arg(t)
                .arg(tolerance(*q));
        }
        let mut conn = self.conn.clone();
        let answer: Result<Result<(i64, i64), redis::RedisError>, _> =
            tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await;
        match answer {
            Ok(Ok((0, _))) => {
                self.rtt.observe(now.elapsed().as_secs_f64());
                Ok(())
            }
            Ok(Ok((i, wait_us))) => {
                self.rtt.observe(now.elapsed().as_secs_f64());
                let count = limits.clone().count();
                let (limited, _) = limits
                    .clone()
                    .nth((i as usize).clamp(1, count) - 1)
                    .expect("an index within the keys sent");
                let retry_after = Duration::from_micros(wait_us.max(0) as u64);
                if self.denials.len() >= DENIALS_MAX {
                    let now = Instant::now();
                    self.denials.retain(|_, until| *until > now);
                }
                self.denials.insert(limited.clone(), now + retry_after);
                Err(Throttled {
                    limit: limited.kind(),
                    retry_after,
                })
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis rate check failed; split limits for a second");
                self.fall_back(since, "error");
                own.check_rates(gw, caller, access_key)
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.timeout.as_millis() as u64,
                    "Redis rate check timed out; split limits for a second"
                );
                self.fall_back(since, "timeout");
                own.check_rates(gw, caller, access_key)
            }
        }
    }

    /// Whether Redis is being left alone after a failure.
    fn resting(&self) -> Option<u64> {
        let since = micros(self.epoch.elapsed());
        (since < self.down_until_us.load(Ordering::Relaxed)).then_some(since)
    }

    /// A cold start on the fleet's count: under the fleet's
    /// `max_instances` and start rate, `member` is added with a lease of
    /// `lease`. Idempotent for one member.
    pub async fn admit_start(&self, start: StartRequest<'_>) -> StartCheck {
        let StartRequest {
            gw,
            member,
            lease,
            retry_hint,
        } = start;
        if self.resting().is_some() {
            self.fallbacks.with_label_values(&["unavailable"]).inc();
            return StartCheck::Unavailable;
        }
        let (max, quota) = gw.fleet_start_limits();
        let t = micros(quota.replenish_interval());
        let mut call = self.start.prepare_invoke();
        call.key(&self.instances_key)
            .key(format!("{}starts", self.prefix))
            .arg(max)
            .arg(t)
            .arg(tolerance(quota))
            .arg(lease.as_millis() as u64)
            .arg(member);
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let answer: Result<Result<(i64, i64), redis::RedisError>, _> =
            tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await;
        let since = micros(self.epoch.elapsed());
        match answer {
            Ok(Ok((code, wait_us))) => {
                self.rtt.observe(started.elapsed().as_secs_f64());
                match code {
                    0 => StartCheck::Admitted,
                    1 => StartCheck::Refused(Throttled {
                        limit: LimitKind::MaxInstances,
                        retry_after: retry_hint,
                    }),
                    _ => StartCheck::Refused(Throttled {
                        limit: LimitKind::InstanceStartRate,
                        retry_after: Duration::from_micros(wait_us.max(0) as u64),
                    }),
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis start check failed; split limits for a second");
                self.fall_back(since, "error");
                StartCheck::Unavailable
            }
            Err(_) => {
                tracing::warn!("Redis start check timed out; split limits for a second");
                self.fall_back(since, "timeout");
                StartCheck::Unavailable
            }
        }
    }

    /// An instance gone: out of the fleet's count. Failing that, its lease
    /// lapses, for it is renewed no more.
    pub async fn release(&self, member: &str) {
        if self.resting().is_some() {
            return;
        }
        let mut conn = self.conn.clone();
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(&self.instances_key).arg(member);
        let sent = zrem.query_async::<i64>(&mut conn);
        if let Ok(Err(e)) = tokio::time::timeout(self.timeout, sent).await {
            tracing::debug!(error = %e, member, "Redis release");
        }
    }

    /// Renews the leases of this gateway's instances (and adds any that
    /// are missing). Bounded by `bound`, not the per-call timeout: it is
    /// off the request path.
    pub async fn renew(&self, members: &[String], lease: Duration, bound: Duration) {
        if members.is_empty() || self.resting().is_some() {
            return;
        }
        let mut call = self.renew.prepare_invoke();
        call.key(&self.instances_key).arg(lease.as_millis() as u64);
        for m in members {
            call.arg(m);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(bound, call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis: renewing the instances' leases failed")
            }
            Err(_) => tracing::warn!("Redis: renewing the instances' leases timed out"),
        }
    }

    fn fall_back(&self, since_us: u64, reason: &str) {
        self.fallbacks.with_label_values(&[reason]).inc();
        self.down_until_us
            .store(since_us + micros(BACKOFF), Ordering::Relaxed);
    }
}

impl SharedCount for ExactLimits {
    fn check_rates<'a>(&'a self, call: RateCheck<'a>) -> Answer<'a, Result<(), Throttled>> {
        Box::pin(ExactLimits::check_rates(self, call))
    }

    fn admit_start<'a>(&'a self, start: StartRequest<'a>) -> Answer<'a, StartCheck> {
        Box::pin(ExactLimits::admit_start(self, start))
    }

    fn release(self: Arc<Self>, member: String) -> Answer<'static, ()> {
        Box::pin(async move { ExactLimits::release(&self, &member).await })
    }
}

/// Renews the leases of this gateway's instances in the fleet's count
/// every `every` until `stop` (then the instances' own releases remove them).
pub async fn keep_leases(
    exact: std::sync::Arc<ExactLimits>,
    sched: std::sync::Arc<crate::scheduler::Scheduler>,
    every: Duration,
    lease: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A renewal slower than a tick would only pile up behind itself.
        exact.renew(&sched.members(), lease, every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyId;
    use crate::ingress::VpcId;

    /// Every member of a fleet must name a limit's state the same way, in
    /// the fleet's one hash slot.
    #[test]
    fn redis_keys_name_each_limit_in_the_fleets_slot() {
        let p = "fngate:{f1}:";
        let f: Arc<str> = "echo".into();
        let ip = CallerKey::Ip("127.0.0.9".parse().unwrap());
        let cases = [
            (Limited::Function(f.clone()), "fngate:{f1}:f:echo"),
            (
                Limited::Caller(f.clone(), ip),
                "fngate:{f1}:c:echo:ip:127.0.0.9",
            ),
            (
                Limited::Caller(f, CallerKey::Vpc(VpcId(3))),
                "fngate:{f1}:c:echo:vpc:3",
            ),
            (
                Limited::GatewayCaller(CallerKey::AccessKey(KeyId(2))),
                "fngate:{f1}:g:key:2",
            ),
        ];
        for (limited, key) in cases {
            assert_eq!(limited.redis_key(p), key);
        }
        assert_eq!(
            Limited::GatewayCaller(ip).kind(),
            LimitKind::GatewayCallerRate
        );
    }
}
