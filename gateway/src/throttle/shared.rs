//! The seam between this process's limiters and a fleet's shared count
//! (`rate_limits = "redis"`): the scheduler and the pipeline are built
//! with a [`Sharing`] that `run` decides once, and never ask which mode
//! they are in. Alone, or in a fleet with `split` limits, there is no
//! shared count and every limit is this process's own.

use super::{FunctionLimits, GatewayLimits, Throttled};
use crate::auth::KeyId;
use crate::ingress::Caller;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A future the shared count answers with (boxed: only the fleet path
/// pays for it; alone, nothing is boxed).
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the fleet's count says of a start.
#[derive(Debug)]
pub enum StartCheck {
    Admitted,
    Refused(Throttled),
    /// The count did not answer in time: this gateway's split share decides.
    Unavailable,
}

/// A call's rates to check: on which function, for which caller.
#[derive(Clone, Copy)]
pub struct RateCheck<'a> {
    pub function: &'a Arc<str>,
    /// The function's own (split) limiters, the fallback.
    pub limits: &'a FunctionLimits,
    pub gw: &'a GatewayLimits,
    pub caller: Option<&'a Caller>,
    pub key: Option<KeyId>,
}

/// A cold start to count: `member`'s entry, leased for `lease`.
#[derive(Clone, Copy)]
pub struct StartRequest<'a> {
    pub gw: &'a GatewayLimits,
    pub member: &'a str,
    pub lease: Duration,
    /// What a refusal by `max_instances` tells its caller to wait.
    pub retry_hint: Duration,
}

/// Limits counted across the fleet.
pub trait SharedCount: Send + Sync {
    /// The caller, gateway-caller and function rates of a call, on the
    /// shared state (falling back to the split share when it cannot answer).
    fn check_rates<'a>(&'a self, call: RateCheck<'a>) -> Answer<'a, Result<(), Throttled>>;

    /// A cold start under the fleet's `max_instances` and start rate.
    fn admit_start<'a>(&'a self, start: StartRequest<'a>) -> Answer<'a, StartCheck>;

    /// `member` is gone: out of the count (else its lease lapses).
    fn release(self: Arc<Self>, member: String) -> Answer<'static, ()>;
}

/// How this gateway shares its limits, decided once by `run`.
#[derive(Clone, Default)]
pub struct Sharing {
    /// In a fleet: the id instances started here carry as their owner.
    /// `None`: a gateway alone.
    pub owner: Option<String>,
    /// `redis` limits: the fleet's count, and the lease its entries carry.
    pub count: Option<(Arc<dyn SharedCount>, Duration)>,
}

impl Sharing {
    /// A gateway alone: every limit is its own.
    pub fn alone() -> Self {
        Self::default()
    }

    pub fn in_fleet(&self) -> bool {
        self.owner.is_some()
    }

    pub fn count(&self) -> Option<&Arc<dyn SharedCount>> {
        self.count.as_ref().map(|(c, _)| c)
    }
}
