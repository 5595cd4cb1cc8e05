//! Scheduling: which instance serves an invocation, where new instances go,
//! and when instances are released.
//!
//! - [`pick`]: the bin-pack routing rule (pure).
//! - this module: [`Scheduler`], per-function [`FunctionPool`]s, [`Slot`]s.
//! - [`placement`]: best-fit choice of a worker for a new instance.
//! - [`reaper`]: idle release, max lifetime, `min_instances`, crash sync.
//!
//! Locking: each function has its own mutex over its instance list, held
//! only to pick-and-reserve or to add/remove an instance, never across an
//! `.await`. Nothing is shared by all functions on the invocation path.

mod install;
pub mod pick;
pub mod placement;
pub mod reaper;

use crate::config::GatewayThrottle;
use crate::error::InvokeError;
pub use crate::functions::{Function, Functions};
use crate::ids::IdGen;
use crate::metrics::Metrics;
use crate::throttle::GatewayLimits;
use crate::throttle::shared::{Sharing, StartCheck, StartRequest};
use crate::workers::Worker;
pub use install::Plan;
use pick::{Choice, Phase};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The pools of the functions served, by name: swapped whole by a reload.
pub type Pools = HashMap<Arc<str>, Arc<FunctionPool>>;

pub struct Scheduler {
    functions: arc_swap::ArcSwap<Pools>,
    /// Pools a reload replaced (a new instance shape) or removed: their
    /// instances finish what they run and are released ([`reaper`]).
    retired: Mutex<Vec<Arc<FunctionPool>>>,
    limits: GatewayLimits,
    /// Callers of any function waiting while `max_instances` bites; only
    /// then does a reclaim notify `gone`.
    gone_waiters: AtomicUsize,
    gone: Notify,
    live_gauge: prometheus::IntGauge,
    instance_egress: prometheus::IntCounterVec,
    /// Where released instances' lifetime records go (`[usage]`).
    usage: Arc<crate::metering::usage_log::LiveLog>,
    worker_memory: prometheus::IntGaugeVec,
    /// Swapped whole when a worker joins or leaves the fleet.
    workers: arc_swap::ArcSwap<Vec<Arc<Worker>>>,
    /// Alone or in a fleet, and whether starts meet the fleet's count.
    sharing: Sharing,
    ids: IdGen,
    start_timeout: Duration,
    worker_timeout: Duration,
    max_lifetime: Duration,
    epoch: Instant,
    closing: CancellationToken,
    /// Cancelled when the gateway begins to drain: starts in progress end
    /// (their callers get 503 at once) and no new one begins, so a stop
    /// never waits for a start (warm instances serve the drain).
    no_starts: CancellationToken,
    tasks: TaskTracker,
}

/// What the scheduler is told of the world around it, decided once by `run`.
#[derive(Clone, Default)]
pub struct Outside {
    /// Alone, or in a fleet (and on its shared count or not).
    pub sharing: Sharing,
    /// `[usage]`: where released instances' lifetime records go.
    pub usage: Arc<crate::metering::usage_log::LiveLog>,
}

/// The scheduler's time bounds.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// `instance_start_timeout_ms`.
    pub start_timeout: Duration,
    /// `worker_timeout_ms`.
    pub worker_timeout: Duration,
    /// `max_instance_lifetime_s`.
    pub max_lifetime: Duration,
}

/// When a caller refused a start by `t` looks again, at the latest: the
/// start-rate limiter knows when the next start may go; for the instance
/// limit a release here wakes it, else its deadline; on the fleet's count
/// (`fleet_poll`) others' releases wake nobody here, so it looks again soon.
fn wake_at(
    t: &crate::throttle::Throttled,
    now: Instant,
    deadline: Instant,
    fleet_poll: Option<Duration>,
) -> Instant {
    use crate::throttle::LimitKind;
    match (t.limit, fleet_poll) {
        (LimitKind::InstanceStartRate, _) => (now + t.retry_after).min(deadline),
        (LimitKind::MaxInstances, Some(poll)) => (now + poll).min(deadline),
        _ => deadline,
    }
}

/// How often a caller waiting on the fleet's `max_instances` asks again.
const FLEET_POLL: Duration = Duration::from_millis(100);

/// One function's instances (and what waits for them). It reads as its
/// [`Function`] (`Deref`): a pool is the function as the scheduler holds it.
/// A reload that changes only the function's policy makes a new pool of
/// the new `Function` over the same [`PoolState`]: a call keeps the version
/// it started with, and both versions route onto the same instances.
pub struct FunctionPool {
    pub function: Arc<Function>,
    state: Arc<PoolState>,
}

/// The instances of one function's shape, and who waits for them.
#[derive(Default)]
struct PoolState {
    /// Callers waiting (up to `queue_timeout_ms`) for a slot while a
    /// scale-out limit bites; only then do freed slots notify.
    waiting: AtomicUsize,
    freed: Notify,
    instances: Mutex<Vec<Arc<Instance>>>,
}

impl std::ops::Deref for FunctionPool {
    type Target = Function;

    fn deref(&self) -> &Function {
        &self.function
    }
}

/// The gateway's view of one instance.
pub struct Instance {
    pub id: Arc<str>,
    /// The instance id as a header value, built once.
    pub id_header: http::HeaderValue,
    pub function: Arc<str>,
    pub memory_mb: u32,
    pub created: Instant,
    pub created_unix: u64,
    worker: OnceLock<Arc<Worker>>,
    host_header: OnceLock<http::HeaderValue>,
    pub upstream: crate::upstream::UpstreamPool,
    phase: AtomicU8,
    in_flight: AtomicU32,
    last_used_ms: AtomicU64,
    reclaimed: AtomicBool,
    /// In the fleet's count (`redis` limits): only then is its entry renewed
    /// or removed, so a start still being decided is never added behind
    /// the check's back.
    counted: AtomicBool,
    started: watch::Sender<StartState>,
}

#[derive(Clone)]
enum StartState {
    Pending,
    Ready,
    Failed(InvokeError),
}

/// The right to run one invocation on one instance. Dropping it frees the
/// slot; hold it until the function's response has been read in full.
pub struct Slot {
    pub instance: Arc<Instance>,
    pool: Arc<FunctionPool>,
    /// The instance was started for (or while) this invocation.
    pub cold: bool,
    epoch: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.instance
            .last_used_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.instance.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.pool.state.waiting.load(Ordering::Acquire) > 0 {
            self.pool.state.freed.notify_waiters();
        }
    }
}

fn phase_from(v: u8) -> Phase {
    match v {
        0 => Phase::Starting,
        1 => Phase::Ready,
        2 => Phase::Draining,
        _ => Phase::Gone,
    }
}

fn phase_to(p: Phase) -> u8 {
    match p {
        Phase::Starting => 0,
        Phase::Ready => 1,
        Phase::Draining => 2,
        Phase::Gone => 3,
    }
}

impl Instance {
    pub fn phase(&self) -> Phase {
        phase_from(self.phase.load(Ordering::Acquire))
    }
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
    /// `host:port` of the instance, for the `Host` header of calls to it.
    pub fn host_header(&self) -> Option<&http::HeaderValue> {
        self.host_header.get()
    }
    pub fn worker(&self) -> Option<&Arc<Worker>> {
        self.worker.get()
    }
    pub fn last_used_ms(&self) -> u64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }
}

impl FunctionPool {
    /// Moves `inst` to `to`, keeping the per-state gauges exact.
    fn set_phase(&self, inst: &Instance, to: Phase) -> Phase {
        let from = phase_from(inst.phase.swap(phase_to(to), Ordering::AcqRel));
        if from != to {
            if let Some(g) = self.gauge(from) {
                g.dec();
            }
            if let Some(g) = self.gauge(to) {
                g.inc();
            }
        }
        from
    }

    fn gauge(&self, p: Phase) -> Option<&prometheus::IntGauge> {
        match p {
            Phase::Starting => Some(&self.metrics.starting),
            Phase::Ready => Some(&self.metrics.ready),
            Phase::Draining => Some(&self.metrics.draining),
            Phase::Gone => None,
        }
    }

    pub fn snapshot(&self) -> Vec<Arc<Instance>> {
        self.state.instances.lock().unwrap().clone()
    }

    /// A version of this pool for `function`, on the same instances.
    fn with(&self, function: Arc<Function>) -> FunctionPool {
        FunctionPool {
            function,
            state: self.state.clone(),
        }
    }

    fn new(function: Arc<Function>) -> FunctionPool {
        FunctionPool {
            function,
            state: Default::default(),
        }
    }
}

impl Scheduler {
    pub fn new(
        functions: &Functions,
        workers: Vec<Arc<Worker>>,
        metrics: &Metrics,
        throttle: &GatewayThrottle,
        times: Times,
        outside: Outside,
    ) -> Arc<Scheduler> {
        let limits = GatewayLimits::new(
            throttle.caller_key,
            throttle.caller_rate,
            throttle.max_instances,
            throttle.max_instance_starts_per_minute,
        );
        if outside.sharing.count.is_some() {
            // Starts are admitted by the fleet's count, the split share its fallback.
            limits.set_exact_starts();
        }
        let scheduler = Arc::new(Scheduler {
            functions: Default::default(),
            retired: Mutex::new(Vec::new()),
            limits,
            gone_waiters: AtomicUsize::new(0),
            gone: Notify::new(),
            live_gauge: metrics.live_instances.clone(),
            instance_egress: metrics.instance_egress.clone(),
            usage: outside.usage,
            worker_memory: metrics.worker_memory.clone(),
            workers: arc_swap::ArcSwap::from_pointee(workers),
            sharing: outside.sharing,
            ids: IdGen::new(),
            start_timeout: times.start_timeout,
            worker_timeout: times.worker_timeout,
            max_lifetime: times.max_lifetime,
            epoch: Instant::now(),
            closing: CancellationToken::new(),
            no_starts: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        // At start, every function is one a reload would add.
        scheduler.install(scheduler.plan(functions));
        scheduler
    }

    pub fn function(&self, name: &str) -> Option<Arc<FunctionPool>> {
        self.functions.load().get(name).cloned()
    }

    /// The pools of the functions served now.
    pub fn functions(&self) -> Arc<Pools> {
        self.functions.load_full()
    }

    /// Every pool with instances: those served now and those a reload retired.
    pub fn all_pools(&self) -> Vec<Arc<FunctionPool>> {
        let mut all: Vec<_> = self.functions.load().values().cloned().collect();
        all.extend(self.retired.lock().unwrap().iter().cloned());
        all
    }

    pub fn limits(&self) -> &GatewayLimits {
        &self.limits
    }

    /// Fleet mode, `split` limits: this gateway's part of every rate and
    /// scale-out limit when `n` gateways are live.
    pub fn split_limits(&self, n: u32) {
        if self.limits.split(n) {
            for p in self.functions.load().values() {
                p.limits.split(n);
            }
            // A larger share of `max_instances` may admit a waiting start.
            self.gone.notify_waiters();
        }
    }

    pub fn workers(&self) -> Arc<Vec<Arc<Worker>>> {
        self.workers.load_full()
    }

    /// A worker learned from the fleet; `false` when one with its URL is known.
    pub fn add_worker(&self, worker: Arc<Worker>) -> bool {
        let mut added = false;
        self.workers.rcu(|list| {
            added = !list.iter().any(|w| w.url == worker.url);
            let mut next = (**list).clone();
            if added {
                next.push(worker.clone());
            }
            next
        });
        added
    }

    /// A worker gone from the fleet: no more placements there (instances on
    /// it keep their handle until they are reclaimed).
    pub fn remove_worker(&self, url: &str) -> bool {
        let mut removed = false;
        self.workers.rcu(|list| {
            removed = list.iter().any(|w| w.url == url);
            list.iter()
                .filter(|w| w.url != url)
                .cloned()
                .collect::<Vec<_>>()
        });
        removed
    }

    /// How this gateway shares its limits with a fleet (if it is in one).
    pub fn sharing(&self) -> &Sharing {
        &self.sharing
    }

    pub(crate) fn owner(&self) -> Option<&str> {
        self.sharing.owner.as_deref()
    }

    /// `inst`'s entry in the fleet's count.
    fn member(&self, inst: &Instance) -> String {
        format!("{}/{}", self.owner().unwrap_or(""), inst.id)
    }

    /// The fleet-count entries of the instances this gateway holds.
    pub fn members(&self) -> Vec<String> {
        (self.all_pools().iter())
            .flat_map(|p| p.snapshot())
            .filter(|i| i.counted.load(Ordering::Acquire) && !i.reclaimed.load(Ordering::Acquire))
            .map(|i| self.member(&i))
            .collect()
    }

    /// `redis` limits: the fleet's count admits a start that
    /// [`GatewayLimits::admit_start`] let through here; when Redis cannot
    /// answer, this gateway's split share does.
    async fn admit_in_fleet(
        &self,
        pool: &FunctionPool,
        inst: &Instance,
    ) -> Result<(), crate::throttle::Throttled> {
        let Some((exact, lease)) = &self.sharing.count else {
            return Ok(());
        };
        let hint = pool.limits.retry_hint();
        let member = self.member(inst);
        let start = StartRequest {
            gw: &self.limits,
            member: &member,
            lease: *lease,
            retry_hint: hint,
        };
        let admitted = match exact.admit_start(start).await {
            StartCheck::Admitted => Ok(()),
            StartCheck::Refused(t) => Err(t),
            // Admitted here: the next renewal adds it to the count.
            StartCheck::Unavailable => self.limits.fallback_start(hint),
        };
        if admitted.is_ok() {
            inst.counted.store(true, Ordering::Release);
        }
        admitted
    }

    /// Publishes each worker's memory capacity and reservation (reaper tick).
    pub fn publish_worker_memory(&self) {
        for w in self.workers.load().iter() {
            let mib = 1024 * 1024;
            self.worker_memory
                .with_label_values(&[&w.url, "capacity"])
                .set((w.memory_mb_total * mib) as i64);
            self.worker_memory
                .with_label_values(&[&w.url, "reserved"])
                .set((w.used_mb() * mib) as i64);
        }
    }

    /// Converts a time on the scheduler's millisecond clock to Unix seconds.
    pub fn unix_of_ms(&self, ms: u64) -> u64 {
        let ago_s = self.now_ms().saturating_sub(ms) / 1000;
        sandbox_runtime::instance::unix_now().saturating_sub(ago_s)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Reserves a slot on an instance of `pool`, starting one if needed.
    /// When a scale-out limit forbids a start, waits up to the function's
    /// `queue_timeout_ms` for a way on: a slot freed on one of its instances,
    /// an instance of any function gone (`max_instances`), or the time the
    /// start-rate limiter names.
    pub async fn acquire(self: &Arc<Self>, pool: &Arc<FunctionPool>) -> Result<Slot, InvokeError> {
        let deadline = Instant::now() + pool.limits.queue_timeout;
        let poll = self.sharing.count.as_ref().map(|_| FLEET_POLL);
        // A start the fleet's count refused (it comes back from the start,
        // not from `try_acquire`): wait before asking again.
        let mut refused = None;
        loop {
            if self.closing.is_cancelled() {
                return Err(InvokeError::ShuttingDown);
            }
            // Registered before looking, so a release in between still wakes us.
            let freed = pool.state.freed.notified();
            let gone = self.gone.notified();
            tokio::pin!(freed, gone);
            let (throttled, recheck) = match refused.take() {
                Some(t) => (t, false),
                None => match self.try_acquire(pool) {
                    Ok(slot) => match self.wait_started(slot).await {
                        Err(InvokeError::Throttled(t)) => (t, false),
                        r => return r,
                    },
                    Err(t) => (t, true),
                },
            };
            if Instant::now() >= deadline {
                return Err(InvokeError::Throttled(throttled));
            }
            pool.state.waiting.fetch_add(1, Ordering::AcqRel);
            self.gone_waiters.fetch_add(1, Ordering::AcqRel);
            freed.as_mut().enable();
            gone.as_mut().enable();
            // Re-check after enabling: something may have freed before we registered.
            let r = match recheck.then(|| self.try_acquire(pool)) {
                Some(Ok(slot)) => Some(slot),
                looked => {
                    let t = match looked {
                        Some(Err(t)) => t,
                        _ => throttled,
                    };
                    let wake = wake_at(&t, Instant::now(), deadline, poll);
                    tokio::select! {
                        _ = &mut freed => {}
                        _ = &mut gone => {}
                        _ = tokio::time::sleep_until(wake) => {}
                    }
                    None
                }
            };
            pool.state.waiting.fetch_sub(1, Ordering::AcqRel);
            self.gone_waiters.fetch_sub(1, Ordering::AcqRel);
            if let Some(slot) = r {
                match self.wait_started(slot).await {
                    Err(InvokeError::Throttled(t)) => refused = Some(t),
                    r => return r,
                }
            }
        }
    }

    /// Picks and reserves under the function's lock; starts an instance if
    /// the gateway's scale-out limits allow.
    fn try_acquire(
        self: &Arc<Self>,
        pool: &Arc<FunctionPool>,
    ) -> Result<Slot, crate::throttle::Throttled> {
        let conc = pool.cfg.instance_concurrency;
        let (instance, choice) = {
            let mut list = pool.state.instances.lock().unwrap();
            let choice = pick::pick(list.iter().map(|i| (i.phase(), i.in_flight())), conc);
            let instance = match choice {
                Choice::Use(i) | Choice::Wait(i) => list[i].clone(),
                Choice::Start => {
                    self.limits.admit_start(pool.limits.retry_hint())?;
                    let inst = self.new_instance(pool);
                    list.push(inst.clone());
                    inst
                }
            };
            // Reserved under the lock, so concurrent pickers see it.
            instance.in_flight.fetch_add(1, Ordering::AcqRel);
            (instance, choice)
        };
        let slot = Slot {
            instance,
            pool: pool.clone(),
            cold: !matches!(choice, Choice::Use(_)),
            epoch: self.epoch,
        };
        if choice == Choice::Start {
            self.spawn_start(pool.clone(), slot.instance.clone());
        }
        Ok(slot)
    }

    async fn wait_started(&self, slot: Slot) -> Result<Slot, InvokeError> {
        if slot.cold {
            let mut rx = slot.instance.started.subscribe();
            // The start itself is bounded (placement's worker calls); this
            // bound keeps a caller from waiting past it whatever happens.
            let bound = self.start_timeout + self.worker_timeout * 2;
            let wait = rx.wait_for(|s| !matches!(s, StartState::Pending));
            let state = match tokio::time::timeout(bound, wait).await {
                Ok(Ok(s)) => s.clone(),
                Ok(Err(_)) => StartState::Failed(InvokeError::ShuttingDown),
                Err(_) => StartState::Failed(InvokeError::WorkerUnavailable),
            };
            if let StartState::Failed(e) = state {
                return Err(e);
            }
        }
        Ok(slot)
    }

    /// A new instance in `Starting`; the caller has passed `admit_start`.
    fn new_instance(&self, pool: &FunctionPool) -> Arc<Instance> {
        self.live_gauge.set(i64::from(self.limits.live_instances()));
        let id = self.ids.instance_id();
        let inst = Arc::new(Instance {
            id_header: http::HeaderValue::from_str(&id).expect("ids are hex and '-'"),
            id: id.into(),
            function: pool.cfg.name.clone(),
            memory_mb: pool.cfg.memory_mb,
            created: Instant::now(),
            created_unix: sandbox_runtime::instance::unix_now(),
            worker: OnceLock::new(),
            host_header: OnceLock::new(),
            upstream: Default::default(),
            // Not yet counted: `set_phase` below moves it (and its gauge) on.
            phase: AtomicU8::new(phase_to(Phase::Gone)),
            in_flight: AtomicU32::new(0),
            last_used_ms: AtomicU64::new(self.now_ms()),
            reclaimed: AtomicBool::new(false),
            counted: AtomicBool::new(false),
            started: watch::channel(StartState::Pending).0,
        });
        pool.set_phase(&inst, Phase::Starting);
        inst
    }

    /// Starts `inst` in a task of its own, so that a caller going away does
    /// not abandon the start others are waiting for.
    fn spawn_start(self: &Arc<Self>, pool: Arc<FunctionPool>, inst: Arc<Instance>) {
        let this = self.clone();
        self.tasks.spawn(async move {
            let t0 = Instant::now();
            if this.no_starts.is_cancelled() {
                this.fail_start(&pool, &inst, InvokeError::ShuttingDown);
                return;
            }
            if let Err(t) = this.admit_in_fleet(&pool, &inst).await {
                this.unstart(&pool, &inst, t);
                return;
            }
            // Cancelled at a stop: the worker's request is dropped, and the
            // worker drops the start with it (its process is killed).
            let placed = tokio::select! {
                r = placement::start_on_best_fit(&this, &pool.cfg, &inst) => r,
                _ = this.no_starts.cancelled() => Err(InvokeError::ShuttingDown),
            };
            match placed {
                Ok((worker, info)) => {
                    let _ = inst.worker.set(worker);
                    match info.address.parse() {
                        Ok(addr) => inst.upstream.set_addr(addr),
                        Err(e) => {
                            this.fail_start(&pool, &inst, InvokeError::internal(e));
                            return;
                        }
                    }
                    match http::HeaderValue::from_str(&info.address) {
                        Ok(h) => {
                            let _ = inst.host_header.set(h);
                        }
                        Err(e) => {
                            this.fail_start(&pool, &inst, InvokeError::internal(e));
                            return;
                        }
                    }
                    pool.metrics.starts_ok.inc();
                    pool.metrics.cold_start.observe(t0.elapsed().as_secs_f64());
                    inst.last_used_ms.store(this.now_ms(), Ordering::Relaxed);
                    if this.closing.is_cancelled() {
                        this.fail_start(&pool, &inst, InvokeError::ShuttingDown);
                        return;
                    }
                    pool.set_phase(&inst, Phase::Ready);
                    tracing::info!(function = %pool.cfg.name, instance = %inst.id, address = %info.address, elapsed_ms = t0.elapsed().as_millis() as u64, "instance ready");
                    inst.started.send_replace(StartState::Ready);
                }
                Err(e) => {
                    pool.metrics.starts_failed.inc();
                    tracing::warn!(function = %pool.cfg.name, instance = %inst.id, error = %e, "instance start failed");
                    this.fail_start(&pool, &inst, e);
                }
            }
        });
    }

    /// A start the fleet's count refused: the instance never was. Unlike
    /// a reclaim, nothing is released and nobody waiting for capacity is
    /// woken (none was freed); its callers get the refusal.
    fn unstart(&self, pool: &FunctionPool, inst: &Arc<Instance>, t: crate::throttle::Throttled) {
        if !inst.reclaimed.swap(true, Ordering::AcqRel) {
            pool.state
                .instances
                .lock()
                .unwrap()
                .retain(|i| !Arc::ptr_eq(i, inst));
            pool.set_phase(inst, Phase::Gone);
            self.limits.instance_gone();
            self.live_gauge.set(i64::from(self.limits.live_instances()));
        }
        inst.started
            .send_replace(StartState::Failed(InvokeError::Throttled(t)));
    }

    fn fail_start(&self, pool: &FunctionPool, inst: &Arc<Instance>, e: InvokeError) {
        self.reclaim(pool, inst, "start failed");
        inst.started.send_replace(StartState::Failed(e));
    }

    /// Takes `inst` out of service at once and releases it on its worker.
    /// Idempotent. Used for timeouts, crashes, idle release and drain.
    pub fn reclaim(&self, pool: &FunctionPool, inst: &Arc<Instance>, why: &'static str) {
        if inst.reclaimed.swap(true, Ordering::AcqRel) {
            return;
        }
        pool.state
            .instances
            .lock()
            .unwrap()
            .retain(|i| !Arc::ptr_eq(i, inst));
        pool.set_phase(inst, Phase::Gone);
        pool.metrics.released(why);
        self.uncount(inst);
        if let Some(worker) = inst.worker.get().cloned() {
            self.release_on(worker, inst, why);
        }
    }

    /// Out of the scale-out limits (here, and in the fleet's count when it
    /// was counted there): a start waiting on them may go.
    fn uncount(&self, inst: &Instance) {
        self.limits.instance_gone();
        self.live_gauge.set(i64::from(self.limits.live_instances()));
        if self.gone_waiters.load(Ordering::Acquire) > 0 {
            self.gone.notify_waiters();
        }
        if let Some(count) = self.sharing.count()
            && inst.counted.load(Ordering::Acquire)
        {
            self.tasks.spawn(count.clone().release(self.member(inst)));
        }
    }

    /// Releases `inst` on `worker` in the background, then accounts for
    /// its lifetime: its egress, its usage record, the worker's memory.
    fn release_on(&self, worker: Arc<Worker>, inst: &Instance, why: &'static str) {
        let id = inst.id.clone();
        let mb = u64::from(inst.memory_mb);
        let egress = self.instance_egress.clone();
        let usage = self.usage.get();
        let lived = inst.created.elapsed();
        tracing::info!(function = %inst.function, instance = %id, reason = why, "releasing instance");
        self.tasks.spawn(async move {
            match worker.release(&id).await {
                Ok(info) => {
                    // Its lifetime's egress, as the worker counted it.
                    for e in &info.egress {
                        egress
                            .with_label_values(&[&info.function, &e.network, &e.direction])
                            .inc_by(e.bytes);
                    }
                    if let Some(log) = usage {
                        let record = instance_record(info, &worker.url, lived, why);
                        log.instance(Box::new(record)).await;
                    }
                }
                Err(e) => tracing::debug!(instance = %id, error = %e, "release"),
            }
            worker.unreserve(mb);
        });
    }

    /// Asks the instance's worker why a call to it failed: `Some(exit)` when
    /// the process has ended (the instance is then reclaimed). Bounded by
    /// `deadline` (the invocation's own): a worker that does not say in time
    /// leaves the instance to the reaper and the cause unknown (`None`).
    pub async fn exit_of(
        &self,
        pool: &FunctionPool,
        inst: &Arc<Instance>,
        deadline: Instant,
    ) -> Option<String> {
        let worker = inst.worker.get()?.clone();
        // A broken connection usually means the process is exiting right now.
        let ask = worker.instance(&inst.id, Duration::from_millis(500));
        let info = match tokio::time::timeout_at(deadline, ask).await {
            Err(_) => return None,
            Ok(info) => info,
        };
        match info {
            Ok(info) if info.exit.is_none() => None,
            Ok(info) => {
                self.reclaim(pool, inst, "exited");
                info.exit.map(|e| e.to_string())
            }
            // The worker no longer knows it: it is gone.
            Err(crate::workers::WorkerError::Api { status, .. })
                if status == http::StatusCode::NOT_FOUND =>
            {
                self.reclaim(pool, inst, "unknown to its worker");
                Some("is no longer running".into())
            }
            // It did not say (unreachable, timed out): unknown.
            Err(_) => None,
        }
    }

    /// After an invocation timed out on `inst`: no more work for it, and it
    /// is reclaimed now, or when its other invocations in flight end (each
    /// bounded by its own timeout), so they are not killed with it.
    pub fn timed_out(&self, pool: &FunctionPool, inst: &Arc<Instance>) {
        self.abandon(pool, inst, "timeout");
    }

    /// Like [`Scheduler::timed_out`], for another reason (an asynchronous
    /// task stopped while it ran on `inst`).
    pub fn abandon(&self, pool: &FunctionPool, inst: &Arc<Instance>, why: &'static str) {
        {
            let _list = pool.state.instances.lock().unwrap();
            // The caller's own slot is still held: more than one is someone else.
            if inst.in_flight() > 1 && inst.phase() != Phase::Gone {
                pool.set_phase(inst, Phase::Draining);
                tracing::info!(function = %pool.cfg.name, instance = %inst.id, in_flight = inst.in_flight() - 1, reason = why, "invocation ended early; draining the instance's other invocations");
                return;
            }
        }
        self.reclaim(pool, inst, why);
    }

    /// Reclaims `inst` if it is still idle (`Ready`, nothing in flight), or
    /// `Draining` with nothing in flight: checked under the function's lock,
    /// where slots are reserved, so no invocation can be routed to it in
    /// between. Returns whether it was reclaimed.
    pub(crate) fn reclaim_if_unused(
        &self,
        pool: &FunctionPool,
        inst: &Arc<Instance>,
        why: &'static str,
    ) -> bool {
        {
            let _list = pool.state.instances.lock().unwrap();
            let unused =
                matches!(inst.phase(), Phase::Ready | Phase::Draining) && inst.in_flight() == 0;
            if !unused {
                return false;
            }
            // Pickers see this before the lock is released: none will choose it.
            pool.set_phase(inst, Phase::Draining);
        }
        self.reclaim(pool, inst, why);
        true
    }

    /// Takes `inst` out of routing (under the function's lock, so no new
    /// slot lands on it) and reclaims it at once if nothing is in flight.
    pub(crate) fn drain(&self, pool: &FunctionPool, inst: &Arc<Instance>, why: &'static str) {
        {
            let _list = pool.state.instances.lock().unwrap();
            if inst.phase() == Phase::Gone {
                return;
            }
            pool.set_phase(inst, Phase::Draining);
        }
        self.reclaim_if_unused(pool, inst, why);
    }

    /// The instance's output, from its worker: with `from`, what it wrote
    /// since that offset (the last [`sandbox_runtime::api::LOG_MAX_BYTES`]
    /// at most), else nothing; and the offset its output has reached. Best
    /// effort and bounded in time: `None` when the worker cannot say.
    pub async fn instance_log(
        &self,
        inst: &Instance,
        from: Option<u64>,
    ) -> Option<(u64, bytes::Bytes)> {
        let worker = inst.worker.get()?;
        match tokio::time::timeout(Duration::from_secs(2), worker.log(&inst.id, from)).await {
            Ok(Ok(log)) => Some(log),
            Ok(Err(e)) => {
                tracing::debug!(instance = %inst.id, error = %e, "instance log");
                None
            }
            Err(_) => None,
        }
    }

    /// The gateway drains: starts in progress are cancelled, none begins.
    pub fn stop_starts(&self) {
        self.no_starts.cancel();
    }

    /// Stops starting instances and releases all of them.
    pub async fn shutdown(&self) {
        self.stop_starts();
        self.closing.cancel();
        for pool in self.all_pools() {
            for inst in pool.snapshot() {
                self.reclaim(&pool, &inst, "shutdown");
            }
        }
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
    }

    /// `instance_start_timeout_ms`.
    pub fn start_timeout(&self) -> Duration {
        self.start_timeout
    }

    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }
}

/// The egress series of `f`'s instances, at zero up front (see the
/// metrics invariant).
fn zero_egress(egress: &prometheus::IntCounterVec, f: &crate::config::FunctionConfig) {
    let own_vpc = f.egress.vpc_id.iter().map(String::as_str);
    for network in std::iter::once("internet").chain(own_vpc) {
        for direction in ["in", "out"] {
            egress.with_label_values(&[&*f.name, network, direction]);
        }
    }
}

/// A released instance's lifetime, as the usage log keeps it.
fn instance_record(
    info: sandbox_runtime::api::InstanceInfo,
    worker: &str,
    lived: Duration,
    why: &'static str,
) -> crate::metering::InstanceRecord {
    let end = crate::metering::unix_ms(std::time::SystemTime::now());
    crate::metering::InstanceRecord {
        record: crate::metering::INSTANCE_RECORD.into(),
        function: info.function,
        instance_id: info.instance_id,
        worker: worker.to_string(),
        memory_mb: info.memory_mb,
        start_unix_ms: end.saturating_sub(lived.as_millis() as u64),
        end_unix_ms: end,
        reason: why.into(),
        egress: info.egress,
    }
}

#[cfg(test)]
mod tests;
