use super::*;
use governor::clock::FakeRelativeClock;

#[test]
fn quotas_from_rates() {
    assert!(
        Rate {
            per_second: 100.0,
            burst: 50
        }
        .quota()
        .is_some()
    );
    assert!(
        Rate {
            per_second: 0.5,
            burst: 1
        }
        .quota()
        .is_some()
    );
    assert!(
        Rate {
            per_second: 0.0,
            burst: 1
        }
        .quota()
        .is_none()
    );
    assert!(
        Rate {
            per_second: -1.0,
            burst: 1
        }
        .quota()
        .is_none()
    );
    assert!(
        Rate {
            per_second: f64::NAN,
            burst: 1
        }
        .quota()
        .is_none()
    );
    assert!(
        Rate {
            per_second: 10.0,
            burst: 0
        }
        .quota()
        .is_none()
    );
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
    assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
}

#[test]
fn keyed_limiter_burst_then_earliest_admission() {
    let clock = FakeRelativeClock::default();
    let quota = Rate {
        per_second: 10.0,
        burst: 3,
    }
    .quota()
    .unwrap();
    let l = KeyedLimiter::with_clock(quota, clock.clone());
    let a = CallerKey::Ip("127.0.0.2".parse().unwrap());
    let b = CallerKey::Ip("127.0.0.3".parse().unwrap());
    for _ in 0..3 {
        assert!(l.check(&a).is_ok());
    }
    let wait = l.check(&a).unwrap_err();
    assert_eq!(wait, Duration::from_millis(100), "one cell every 100 ms");
    assert!(l.check(&b).is_ok(), "callers are independent");
    clock.advance(Duration::from_millis(100));
    assert!(l.check(&a).is_ok());
}

/// 100,000 distinct callers: memory is bounded by eviction. Once keys are idle
/// for a full burst period they are forgotten.
#[test]
fn one_hundred_thousand_keys_are_evicted_when_idle() {
    let clock = FakeRelativeClock::default();
    let quota = Rate {
        per_second: 100.0,
        burst: 10,
    }
    .quota()
    .unwrap();
    let l = KeyedLimiter::with_clock(quota, clock.clone());
    for i in 0..100_000u32 {
        let ip = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
        assert!(l.check(&CallerKey::Ip(ip)).is_ok());
    }
    assert_eq!(l.len(), 100_000);
    // Not idle long enough: a key that is still limited must be kept.
    clock.advance(Duration::from_millis(5));
    l.evict_idle();
    assert_eq!(l.len(), 100_000);
    // A full burst period (10 cells at 100/s = 100 ms) later, all are idle.
    clock.advance(Duration::from_millis(100));
    l.evict_idle();
    assert_eq!(l.len(), 0);
    // And the limiter still works.
    assert!(l.check(&CallerKey::Vpc(VpcId(0))).is_ok());
    assert_eq!(l.len(), 1);
}

#[test]
fn caller_keying() {
    let c = Caller {
        ip: "10.1.2.3".parse().unwrap(),
        network: Network::Vpc(VpcId(4)),
    };
    let i = Caller {
        ip: "10.1.2.3".parse().unwrap(),
        network: Network::Internet,
    };
    let k = Some(crate::auth::KeyId(2));
    assert_eq!(CallerKeying::SourceIp.key(&c, k), CallerKey::Ip(c.ip));
    assert_eq!(CallerKeying::Network.key(&c, k), CallerKey::Vpc(VpcId(4)));
    assert_eq!(CallerKeying::Network.key(&i, k), CallerKey::Ip(i.ip));
    // A verified key is the caller; without one, its address is.
    assert_eq!(
        CallerKeying::AccessKey.key(&i, k),
        CallerKey::AccessKey(crate::auth::KeyId(2))
    );
    assert_eq!(CallerKeying::AccessKey.key(&c, None), CallerKey::Ip(c.ip));
}

#[tokio::test]
async fn concurrency_queue_admits_in_time_and_refuses_when_full() {
    let f = FunctionLimits::new(None, None, Some(1), Duration::from_millis(200), 1);
    let first = f.admit().await.unwrap().unwrap();
    // One may wait; a second waiter is over queue_max and refused at once.
    let waiter = f.admit();
    tokio::pin!(waiter);
    assert!(futures_poll_once(&mut waiter).await.is_none());
    let refused = f.admit().await.unwrap_err();
    assert_eq!(refused.limit, LimitKind::FunctionConcurrency);
    drop(first);
    assert!(
        waiter.await.unwrap().is_some(),
        "admitted when the slot frees in time"
    );
    // Nobody frees the slot: refused after the queue timeout.
    let _held = f.admit().await.unwrap().unwrap();
    let t0 = tokio::time::Instant::now();
    assert!(f.admit().await.is_err());
    assert!(t0.elapsed() >= Duration::from_millis(190));
}

#[test]
fn scale_out_limits() {
    let g = GatewayLimits::new(CallerKeying::SourceIp, None, 2, 300);
    assert!(g.admit_start(Duration::from_millis(5)).is_ok());
    assert!(g.admit_start(Duration::from_millis(5)).is_ok());
    let t = g.admit_start(Duration::from_millis(5)).unwrap_err();
    assert_eq!(t.limit, LimitKind::MaxInstances);
    g.instance_gone();
    assert!(g.admit_start(Duration::from_millis(5)).is_ok());
    let g = GatewayLimits::new(CallerKeying::SourceIp, None, 100, 2);
    assert!(g.admit_start(Duration::ZERO).is_ok());
    assert!(g.admit_start(Duration::ZERO).is_ok());
    let t = g.admit_start(Duration::ZERO).unwrap_err();
    assert_eq!(t.limit, LimitKind::InstanceStartRate);
    assert!(
        t.retry_after > Duration::from_secs(25),
        "2/min: the next start in ~30 s"
    );
    assert_eq!(g.live_instances(), 2, "a refused start reserves nothing");
}

/// Polls a future once; `None` if it is pending.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

#[test]
fn a_split_quota_is_a_share_of_rate_and_burst_rounded_up() {
    let q =
        Quota::per_second(NonZeroU32::new(30).unwrap()).allow_burst(NonZeroU32::new(10).unwrap());
    assert_eq!(split_quota(q, 1), q);
    let third = split_quota(q, 3);
    assert_eq!(third.replenish_interval(), q.replenish_interval() * 3);
    assert_eq!(third.burst_size().get(), 4);
    // More gateways than burst: each still admits one call at once.
    assert_eq!(split_quota(q, 64).burst_size().get(), 1);
    assert_eq!(split_quota(q, 0), q);
}

#[test]
fn split_limits_admit_their_share_and_give_it_back() {
    let rate =
        Quota::per_hour(NonZeroU32::new(1).unwrap()).allow_burst(NonZeroU32::new(9).unwrap());
    let gw = GatewayLimits::new(CallerKeying::SourceIp, None, 7, 600);
    let f = FunctionLimits::new(Some(rate), None, None, Duration::ZERO, 0);
    let admitted = |f: &FunctionLimits| {
        (0..20)
            .filter(|_| f.check_rates(&gw, None, None).is_ok())
            .count()
    };
    assert!(gw.split(3));
    assert!(!gw.split(3), "the same share rebuilds nothing");
    f.split(3);
    assert_eq!(admitted(&f), 3);
    assert_eq!(gw.max_instances(), 3, "ceil(7 / 3)");
    assert!(gw.split(1));
    f.split(1);
    assert_eq!(admitted(&f), 9);
    assert_eq!(gw.max_instances(), 7);
}

#[tokio::test]
async fn split_concurrency_never_cuts_a_call_and_holds_the_new_bound_once_they_end() {
    let f = FunctionLimits::new(None, None, Some(10), Duration::ZERO, 0);
    let f = &f;
    let take = |n: usize| async move {
        let mut held = Vec::new();
        for _ in 0..n {
            match f.admit().await {
                Ok(Some(p)) => held.push(p),
                _ => break,
            }
        }
        held
    };
    let mut held = take(10).await;
    assert_eq!(held.len(), 10);
    // Three gateways: ceil(10 / 3) = 4 here, while ten calls still run.
    f.split(3);
    assert!(f.admit().await.is_err());
    held.truncate(5);
    assert!(f.admit().await.is_err(), "5 running, bound 4");
    held.truncate(3);
    let more = take(10).await;
    assert_eq!(more.len(), 1, "3 running + 1 = the bound of 4");
    drop(more);
    drop(held);
    assert_eq!(take(10).await.len(), 4);
    // Back to one gateway: owed permits are forgiven first, then added.
    let mut held = take(4).await;
    f.split(3);
    f.split(1);
    assert_eq!(take(10).await.len(), 6, "4 held + 6 = 10");
    held.clear();
    assert_eq!(take(20).await.len(), 10);
    // Shrunk, then grown before the calls ended: never above the bound.
    let held = take(10).await;
    f.split(5);
    f.split(2);
    drop(held);
    assert_eq!(take(20).await.len(), 5);
}

#[test]
fn exact_starts_are_bounded_here_by_the_fleet_total_and_fall_back_to_the_split_share() {
    let g = GatewayLimits::new(CallerKeying::SourceIp, None, 6, 3);
    g.split(3);
    g.set_exact_starts();
    // The fleet's count decides: this gateway alone may reach the total,
    // with no local start rate...
    for _ in 0..6 {
        assert!(g.admit_start(Duration::ZERO).is_ok());
    }
    assert_eq!(
        g.admit_start(Duration::ZERO).unwrap_err().limit,
        LimitKind::MaxInstances
    );
    // ...and when the count cannot answer, its split share does.
    assert_eq!(
        g.fallback_start(Duration::ZERO).unwrap_err().limit,
        LimitKind::MaxInstances
    );
    for _ in 0..4 {
        g.instance_gone();
    }
    assert!(g.fallback_start(Duration::ZERO).is_ok(), "2 of ceil(6 / 3)");
    assert_eq!(
        g.fallback_start(Duration::ZERO).unwrap_err().limit,
        LimitKind::InstanceStartRate,
        "a third of 3 starts a minute"
    );
    assert_eq!(g.fleet_start_limits().0, 6);
}
