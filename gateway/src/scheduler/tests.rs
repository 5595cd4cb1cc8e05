//! The scheduler against a fake worker (no processes, tokio's paused clock
//! where the scheduler's own timers decide): reservation and routing, the
//! reaper's idle decision under the lock, drains after a timeout, waiters
//! woken by any release, a stuck worker's bounded cost, exact gauges.

use super::*;
use crate::throttle::{LimitKind, Throttled};
use crate::workers::WorkerTimeouts;
use crate::workers::fake::Fake;
use std::path::Path;

const TIMES: Times = Times {
    start_timeout: Duration::from_secs(30),
    worker_timeout: Duration::from_secs(5),
    max_lifetime: Duration::from_secs(3600),
};

/// A scheduler over one fake worker, for the functions in `toml`.
async fn scheduler(gateway: &str, toml: &str, fake: Arc<Fake>) -> (Arc<Scheduler>, Metrics) {
    scheduler_with(gateway, toml, fake, Default::default()).await
}

async fn scheduler_with(
    gateway: &str,
    toml: &str,
    fake: Arc<Fake>,
    outside: Outside,
) -> (Arc<Scheduler>, Metrics) {
    let cfg =
        crate::config::Config::parse(&format!("[gateway]\n{gateway}\n{toml}"), Path::new("/"))
            .unwrap();
    let metrics = Metrics::new();
    let networks = crate::metrics::NetworkIndex::new(&cfg.ingress.vpcs);
    let timeouts = WorkerTimeouts {
        call: TIMES.worker_timeout,
        start: TIMES.start_timeout,
    };
    let worker = Worker::with_api("fake".into(), Box::new(fake), timeouts)
        .await
        .unwrap();
    let s = Scheduler::new(
        &crate::functions::Functions::new(&cfg.functions, &metrics, &networks),
        vec![Arc::new(worker)],
        &metrics,
        &cfg.gateway.throttle,
        TIMES,
        outside,
    );
    (s, metrics)
}

fn function(name: &str, extra: &str) -> String {
    format!("[[functions]]\nname = \"{name}\"\ncommand = [\"x\"]\n{extra}\n")
}

/// The per-state gauges equal a recount of the instances by state.
fn assert_gauges_exact(pool: &FunctionPool) {
    let list = pool.snapshot();
    let count = |p: Phase| list.iter().filter(|i| i.phase() == p).count() as i64;
    assert_eq!(
        pool.metrics.starting.get(),
        count(Phase::Starting),
        "starting"
    );
    assert_eq!(pool.metrics.ready.get(), count(Phase::Ready), "ready");
    assert_eq!(
        pool.metrics.draining.get(),
        count(Phase::Draining),
        "draining"
    );
}

#[tokio::test]
async fn concurrent_calls_fill_an_instance_before_a_second_starts() {
    let fake = Arc::new(Fake::default());
    let (s, _m) = scheduler("", &function("f", "instance_concurrency = 2"), fake.clone()).await;
    let pool = s.function("f").unwrap().clone();
    let a = s.acquire(&pool).await.unwrap();
    assert!(a.cold);
    let b = s.acquire(&pool).await.unwrap();
    assert!(Arc::ptr_eq(&a.instance, &b.instance) && !b.cold);
    let c = s.acquire(&pool).await.unwrap();
    assert!(!Arc::ptr_eq(&a.instance, &c.instance));
    assert_eq!(fake.created.lock().unwrap().len(), 2);
    assert_gauges_exact(&pool);
}

#[tokio::test]
async fn the_reaper_never_takes_an_instance_a_call_has_reserved() {
    let fake = Arc::new(Fake::default());
    let (s, _m) = scheduler("", &function("f", ""), fake.clone()).await;
    let pool = s.function("f").unwrap().clone();
    let inst = s.acquire(&pool).await.unwrap().instance.clone();
    // The reaper found it idle; before it acts, a call reserves it.
    assert_eq!(inst.in_flight(), 0);
    let slot = s.acquire(&pool).await.unwrap();
    assert!(Arc::ptr_eq(&slot.instance, &inst));
    // Decided under the lock: the reservation wins.
    assert!(!s.reclaim_if_unused(&pool, &inst, "idle"));
    assert_eq!(inst.phase(), Phase::Ready);
    assert!(fake.released.lock().unwrap().is_empty());
    drop(slot);
    assert!(s.reclaim_if_unused(&pool, &inst, "idle"));
    assert_eq!(inst.phase(), Phase::Gone);
    assert_gauges_exact(&pool);
}

#[tokio::test]
async fn a_timeout_drains_a_busy_instance_instead_of_killing_its_other_calls() {
    let fake = Arc::new(Fake::default());
    let (s, _m) = scheduler("", &function("f", "instance_concurrency = 2"), fake.clone()).await;
    let pool = s.function("f").unwrap().clone();
    let timed_out = s.acquire(&pool).await.unwrap();
    let other = s.acquire(&pool).await.unwrap();
    let inst = timed_out.instance.clone();
    s.timed_out(&pool, &inst);
    // Not killed: the other call runs on; no new call lands there.
    assert_eq!(inst.phase(), Phase::Draining);
    assert!(fake.released.lock().unwrap().is_empty());
    let next = s.acquire(&pool).await.unwrap();
    assert!(!Arc::ptr_eq(&next.instance, &inst));
    drop(timed_out);
    reaper::sweep(&s, &pool);
    assert_eq!(inst.phase(), Phase::Draining, "one call still runs there");
    drop(other);
    reaper::sweep(&s, &pool);
    assert_eq!(inst.phase(), Phase::Gone);
    assert_gauges_exact(&pool);
    // Alone on its instance, a timed-out call's instance goes at once.
    let alone = next.instance.clone();
    s.timed_out(&pool, &alone);
    assert_eq!(alone.phase(), Phase::Gone);
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_max_instances_gets_what_another_function_frees() {
    let fake = Arc::new(Fake::default());
    let toml = function("a", "") + &function("b", "queue_timeout_ms = 10000");
    let (s, _m) = scheduler("max_instances = 1", &toml, fake.clone()).await;
    let (a, b) = (
        s.function("a").unwrap().clone(),
        s.function("b").unwrap().clone(),
    );
    let held = s.acquire(&a).await.unwrap();
    let waiter = tokio::spawn({
        let (s, b) = (s.clone(), b.clone());
        async move {
            s.acquire(&b)
                .await
                .map(|slot| slot.instance.function.clone())
        }
    });
    while s.gone_waiters.load(Ordering::Acquire) == 0 {
        tokio::task::yield_now().await;
    }
    // Function a's instance goes: b's waiter must not sleep out its 10 s.
    let inst = held.instance.clone();
    drop(held);
    s.reclaim(&a, &inst, "idle");
    let got = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("woken by the release, not by its deadline")
        .unwrap()
        .unwrap();
    assert_eq!(&*got, "b");
}

#[tokio::test(start_paused = true)]
async fn a_stuck_worker_costs_a_bounded_time_and_a_clear_error() {
    let fake = Arc::new(Fake::default());
    fake.hang.store(true, Ordering::Release);
    let (s, _m) = scheduler("", &function("f", ""), fake.clone()).await;
    let pool = s.function("f").unwrap().clone();
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(120), s.acquire(&pool))
        .await
        .expect("bounded");
    assert!(
        matches!(r, Err(InvokeError::WorkerUnavailable)),
        "{:?}",
        r.err()
    );
    // The start's own bound: the worker's start timeout plus a call's.
    assert!(t0.elapsed() <= TIMES.start_timeout + TIMES.worker_timeout * 2);
    // What it may still start there is released (in a task of its own).
    while fake.released.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    assert_eq!(fake.released.lock().unwrap().len(), 1);
    assert_gauges_exact(&pool);
}

#[tokio::test(start_paused = true)]
async fn asking_a_stuck_worker_how_an_instance_ended_stays_within_the_call() {
    let fake = Arc::new(Fake::default());
    let (s, _m) = scheduler("", &function("f", ""), fake.clone()).await;
    let pool = s.function("f").unwrap().clone();
    let inst = s.acquire(&pool).await.unwrap().instance.clone();
    // Now the worker stops answering.
    fake.hang.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(2);
    let exit = s.exit_of(&pool, &inst, deadline).await;
    assert_eq!(exit, None, "unknown, not a guess");
    assert!(Instant::now() <= deadline);
    // The instance stays for the reaper to settle; nothing was released.
    assert_eq!(inst.phase(), Phase::Ready);
}

#[test]
fn start_rate_waits_end_when_the_limiter_says() {
    // With the start-rate limit, a waiter sleeps until the limiter's time,
    // not until its own deadline.
    let now = Instant::now();
    let deadline = now + Duration::from_secs(100);
    let t = crate::throttle::Throttled {
        limit: crate::throttle::LimitKind::InstanceStartRate,
        retry_after: Duration::from_secs(1),
    };
    assert_eq!(
        wake_at(&t, now, deadline, None),
        now + Duration::from_secs(1)
    );
    let poll = Some(Duration::from_millis(100));
    assert_eq!(
        wake_at(&t, now, deadline, poll),
        now + Duration::from_secs(1)
    );
    let t = crate::throttle::Throttled {
        limit: crate::throttle::LimitKind::MaxInstances,
        ..t
    };
    assert_eq!(wake_at(&t, now, deadline, None), deadline);
    // On the fleet's count, others' releases wake nobody here: poll.
    assert_eq!(
        wake_at(&t, now, deadline, poll),
        now + Duration::from_millis(100)
    );
    let soon = now + Duration::from_millis(50);
    assert_eq!(wake_at(&t, now, soon, poll), soon);
}

/// The fleet's count, faked: it refuses every start, and counts releases.
struct RefusingCount {
    asked: std::sync::atomic::AtomicUsize,
}

impl crate::throttle::shared::SharedCount for RefusingCount {
    fn check_rates<'a>(
        &'a self,
        _: crate::throttle::shared::RateCheck<'a>,
    ) -> crate::throttle::shared::Answer<'a, Result<(), Throttled>> {
        Box::pin(async { Ok(()) })
    }

    fn admit_start<'a>(
        &'a self,
        start: crate::throttle::shared::StartRequest<'a>,
    ) -> crate::throttle::shared::Answer<'a, crate::throttle::shared::StartCheck> {
        assert!(start.member.starts_with("gw-a/"), "{}", start.member);
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            crate::throttle::shared::StartCheck::Refused(Throttled {
                limit: LimitKind::MaxInstances,
                retry_after: start.retry_hint,
            })
        })
    }

    fn release(self: Arc<Self>, _: String) -> crate::throttle::shared::Answer<'static, ()> {
        Box::pin(async {})
    }
}

#[tokio::test(start_paused = true)]
async fn a_start_the_fleets_count_refuses_never_reaches_a_worker() {
    let count = Arc::new(RefusingCount {
        asked: Default::default(),
    });
    let outside = Outside {
        sharing: crate::throttle::shared::Sharing {
            owner: Some("gw-a".into()),
            count: Some((count.clone(), Duration::from_secs(10))),
        },
        usage: Default::default(),
    };
    let fake = Arc::new(Fake::default());
    let (s, _m) = scheduler_with("", &function("f", ""), fake.clone(), outside).await;
    let pool = s.function("f").unwrap().clone();
    let err = s.acquire(&pool).await.err().expect("refused");
    assert_eq!(err.throttle(), Some(LimitKind::MaxInstances), "{err}");
    assert!(count.asked.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(fake.created.lock().unwrap().is_empty());
    assert!(pool.snapshot().is_empty());
}
