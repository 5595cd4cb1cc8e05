//! What a configuration reload keeps of a function's limits: a reload is
//! never a way around a limit.
//!
//! - A limit left as it was keeps its limiter: the same bucket, the same
//!   semaphore (the parts of [`FunctionLimits`] are shared).
//! - A changed rate starts with the tokens the old bucket had left, capped
//!   by the new burst: the old bucket is emptied (which counts what it held)
//!   and the new one, full when made, gives up the difference.
//! - A changed per-caller rate does the same for each caller, at the
//!   caller's first call after the reload (the old limiter cannot be
//!   listed), until every old bucket would have refilled anyway.
//! - A changed concurrency resizes the same semaphore: calls in flight keep
//!   their permits and count against the new bound (one lowered below them
//!   is owed, as when a fleet's share shrinks).
//! - A limit the old configuration did not have starts full: nothing was
//!   bounded before it.

use super::{
    CallerKey, Concurrency, Direct, FunctionLimits, KeyedLimiter, Shared, direct, split_quota,
};
use governor::Quota;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Takes every token `take` can get, up to `burst`: powers of two, largest
/// first (the binary digits of what the bucket holds), in O(log burst).
fn take_all(burst: u32, mut take: impl FnMut(NonZeroU32) -> bool) -> u32 {
    let mut got = 0u32;
    let mut k = match burst {
        0 => return 0,
        b => 1u32 << (31 - b.leading_zeros()),
    };
    while k > 0 {
        if got + k <= burst && take(NonZeroU32::new(k).expect("k > 0")) {
            got += k;
        }
        k >>= 1;
    }
    got
}

/// Leaves `left` tokens (at most `burst`) in a full bucket of `burst`.
fn leave(burst: u32, left: u32, take: impl FnOnce(NonZeroU32) -> bool) {
    if let Some(n) = NonZeroU32::new(burst - left.min(burst)) {
        take(n);
    }
}

fn burst(q: Quota, share: u32) -> u32 {
    split_quota(q, share).burst_size().get()
}

fn take_direct(l: &Direct, n: NonZeroU32) -> bool {
    matches!(l.check_n(n), Ok(Ok(())))
}

/// The callers of a per-caller rate a reload changed.
pub(super) struct Callers {
    old: Arc<KeyedLimiter>,
    old_burst: u32,
    new_burst: u32,
    moved: dashmap::DashMap<CallerKey, ()>,
    /// When every old bucket is full again: nothing is left to carry.
    until: Instant,
    over: AtomicBool,
}

impl Callers {
    /// At `key`'s first call after the reload: its bucket in `new` keeps
    /// what it had left in the old one.
    pub(super) fn move_over(&self, key: &CallerKey, new: &KeyedLimiter) {
        if self.over.load(Ordering::Relaxed) {
            return;
        }
        if Instant::now() >= self.until {
            self.over.store(true, Ordering::Relaxed);
            self.moved.clear();
            self.moved.shrink_to_fit();
            return;
        }
        if self.moved.insert(*key, ()).is_some() {
            return;
        }
        let left = take_all(self.old_burst, |n| self.old.take(key, n));
        leave(self.new_burst, left, |n| new.take(key, n));
    }
}

impl FunctionLimits {
    /// These limits as a reload makes them for new settings, `share`
    /// gateways splitting them (1 alone): see the module.
    pub fn renewed(
        &self,
        rate: Option<Quota>,
        caller_rate: Option<Quota>,
        max_concurrency: Option<u32>,
        queue_timeout: Duration,
        queue_max: usize,
    ) -> FunctionLimits {
        let share = self.share.load(Ordering::Relaxed).max(1);
        let rate = match (rate, &self.rate) {
            (None, _) => None,
            (Some(q), Some(old)) if old.quota == q => Some(old.clone()),
            (Some(q), old) => {
                let new = Shared::new(q, direct);
                new.split(share);
                if let Some(old) = old {
                    let left = take_all(burst(old.quota, share), |n| {
                        take_direct(&old.limiter.load(), n)
                    });
                    leave(burst(q, share), left, |n| {
                        take_direct(&new.limiter.load(), n)
                    });
                }
                Some(Arc::new(new))
            }
        };
        let (caller_rate, carried) = match (caller_rate, &self.caller_rate) {
            (None, _) => (None, None),
            (Some(q), Some(old)) if old.quota == q => (Some(old.clone()), self.carried.clone()),
            (Some(q), old) => {
                let new = Shared::new(q, KeyedLimiter::new);
                new.split(share);
                let carried = old.as_ref().map(|old| {
                    let old_q = split_quota(old.quota, share);
                    let refill = old_q.replenish_interval() * old_q.burst_size().get();
                    Arc::new(Callers {
                        old: old.limiter.load_full(),
                        old_burst: old_q.burst_size().get(),
                        new_burst: burst(q, share),
                        moved: Default::default(),
                        until: Instant::now() + refill,
                        over: AtomicBool::new(false),
                    })
                });
                (Some(Arc::new(new)), carried)
            }
        };
        let concurrency = max_concurrency.map(|n| {
            let c = match &self.concurrency {
                Some(old) => Concurrency {
                    configured: n,
                    inner: old.inner.clone(),
                },
                None => Concurrency::new(n),
            };
            c.split(share);
            c
        });
        FunctionLimits {
            rate,
            caller_rate,
            carried,
            concurrency,
            queue_timeout,
            queue_max,
            queued: AtomicUsize::new(0),
            avg_duration_us: AtomicU64::new(self.avg_duration_us.load(Ordering::Relaxed)),
            share: std::sync::atomic::AtomicU32::new(share),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_all_counts_what_a_bucket_holds() {
        for held in [0u32, 1, 2, 3, 5, 7, 8, 100, 1000] {
            for burst in [held, held + 1, 1000] {
                let mut left = held;
                let got = take_all(burst, |n| {
                    let ok = n.get() <= left;
                    if ok {
                        left -= n.get();
                    }
                    ok
                });
                assert_eq!((got, left), (held, 0), "held {held}, burst {burst}");
            }
        }
    }

    fn per_second(n: u32) -> Quota {
        Quota::per_second(NonZeroU32::new(n).unwrap())
    }

    fn limits(rate: Option<Quota>, conc: Option<u32>) -> FunctionLimits {
        FunctionLimits::new(rate, rate, conc, Duration::ZERO, 0)
    }

    /// Calls `l` admits, one after another, up to 100.
    fn spend(l: &FunctionLimits) -> u32 {
        (0..100).take_while(|_| spend_one(l)).count() as u32
    }

    #[test]
    fn a_reload_keeps_an_unchanged_rate_and_carries_a_changed_one() {
        // Burst 5 per second: spent, then renewed unchanged, still spent.
        let old = limits(Some(per_second(5)), None);
        assert_eq!(spend(&old), 5);
        let same = old.renewed(
            Some(per_second(5)),
            Some(per_second(5)),
            None,
            Duration::ZERO,
            0,
        );
        assert_eq!(spend(&same), 0, "an unchanged limit was refilled");
        // A raised limit starts from what was left (nothing), not full.
        let raised = same.renewed(
            Some(per_second(50)),
            Some(per_second(50)),
            None,
            Duration::ZERO,
            0,
        );
        assert!(spend(&raised) <= 1, "a raised limit was refilled");
        // Two of a fresh burst of 5 spent; lowered to 2: nothing left.
        let fresh = limits(Some(per_second(5)), None);
        assert_eq!(
            (0..2).filter(|_| spend_one(&fresh)).count(),
            2,
            "a fresh bucket admits"
        );
        let lowered = fresh.renewed(
            Some(per_second(2)),
            Some(per_second(2)),
            None,
            Duration::ZERO,
            0,
        );
        assert_eq!(
            spend(&lowered),
            2,
            "three left, capped at the new burst of 2"
        );
    }

    fn spend_one(l: &FunctionLimits) -> bool {
        let gw = crate::throttle::GatewayLimits::new(Default::default(), None, 1000, 0);
        let caller = crate::ingress::Caller {
            ip: "127.0.0.1".parse().unwrap(),
            network: crate::ingress::Network::Internet,
        };
        l.check_rates(&gw, Some(&caller), None).is_ok()
    }

    #[tokio::test]
    async fn a_changed_concurrency_keeps_the_calls_in_flight() {
        let old = limits(None, Some(2));
        let a = old.admit().await.unwrap();
        let _b = old.admit().await.unwrap();
        let renewed = old.renewed(None, None, Some(3), Duration::ZERO, 0);
        let _c = renewed.admit().await.expect("a third slot");
        assert!(
            renewed.admit().await.is_err(),
            "the two in flight still count"
        );
        drop(a);
        assert!(renewed.admit().await.is_ok(), "a slot freed by an old call");
    }
}
