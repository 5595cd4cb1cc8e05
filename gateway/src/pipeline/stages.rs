//! The stages before a call runs (0-7 of the table in [`super`]), each a
//! function that answers what the next one needs or the [`InvokeError`]
//! that refuses the request. None of them renders or counts a refusal:
//! [`super::Pipeline::refused`] does, for all of them.

use super::{Ctx, Pipeline};
use crate::api::{Invocation, Kind};
use crate::auth::{AuthLevel, AuthMode, AuthPolicy, Authn, KeyId, PayloadHasher};
use crate::error::InvokeError;
use crate::execute::Execute;
use crate::functions::Function;
use crate::ingress::Origin;
use crate::ingress::policy::Denial;
use crate::metrics::GaugeGuard;
use crate::throttle::ConcurrencyPermit;
use crate::throttle::shared::RateCheck;
use bytes::Bytes;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::SystemTime;

/// A call admitted to run: its concurrency permit (none when the function
/// has no `max_concurrency`), and its place in the in-flight gauge (a
/// guard, not inc/dec: hyper drops the request's future when the client
/// goes away).
pub(super) struct Admitted<'a> {
    _permit: Option<ConcurrencyPermit>,
    _in_flight: GaugeGuard<'a>,
}

impl<'a> Admitted<'a> {
    pub(super) fn new(f: &'a Function, permit: Option<ConcurrencyPermit>) -> Self {
        Admitted {
            _permit: permit,
            _in_flight: GaugeGuard::new(&f.metrics.in_flight),
        }
    }
}

impl<E: Execute> Pipeline<E> {
    /// Stages 0-1: an HTTP/2 header block over the bound (h2 itself refuses
    /// only far past it, see `connection::H2_HEADER_HARD_FACTOR`), then the
    /// dialect's reading of the head.
    pub(super) fn decode<'p>(
        &self,
        ctx: &Ctx<'_>,
        parts: &'p http::request::Parts,
    ) -> Result<Invocation<'p>, InvokeError> {
        if parts.version == http::Version::HTTP_2 {
            let size = crate::body::header_list_size(parts);
            let limit = self.limits.max_header_bytes;
            if size > u64::from(limit) {
                return Err(InvokeError::HeadersTooLarge { limit, size });
            }
        }
        ctx.dialect.decode(parts)
    }

    /// Stage 2: the function. A gateway that demands signatures checks them
    /// (from the head) before it says whether a function exists.
    pub(super) fn lookup(
        &self,
        ctx: &Ctx<'_>,
        parts: &http::request::Parts,
        inv: &Invocation<'_>,
    ) -> Result<Arc<crate::scheduler::FunctionPool>, InvokeError> {
        match self.scheduler.function(&inv.function) {
            Some(pool) => Ok(pool.clone()),
            None => Err(
                match ctx.dialect.authenticate(parts, &ctx.settings.policy(None)) {
                    Err(e) => e,
                    Ok(_) => InvokeError::FunctionNotFound {
                        name: inv.function.to_string(),
                    },
                },
            ),
        }
    }

    /// Stage 3: the function's ingress policy, from the head and the
    /// connection alone.
    pub(super) fn ingress(&self, ctx: &Ctx<'_>, pool: &Function) -> Result<(), InvokeError> {
        let denial = match pool.cfg.ingress.check(&ctx.origin, &ctx.settings.vpcs) {
            Ok(()) => return Ok(()),
            Err(d) => d,
        };
        match &denial {
            Denial::VpcBinding { .. } => pool.metrics.denied_vpc_binding.inc(),
            Denial::Rule { .. } | Denial::ImplicitDeny => pool.metrics.denied_access_rule.inc(),
        }
        Err(InvokeError::AccessDenied(denial))
    }

    /// Stage 4: the credentials, from the head.
    pub(super) fn authenticate(
        &self,
        ctx: &Ctx<'_>,
        parts: &http::request::Parts,
        pool: &Function,
    ) -> Result<Authn, InvokeError> {
        ctx.dialect
            .authenticate(parts, &ctx.settings.policy(Some(pool)))
            .inspect_err(|e| self.count_auth_failure(ctx, pool, e))
    }

    fn count_auth_failure(&self, ctx: &Ctx<'_>, pool: &Function, e: &InvokeError) {
        if let InvokeError::Unauthenticated(a) = e {
            pool.metrics.auth_failures[ctx.dialect.api().index()][a.index()].inc();
        }
    }

    /// Whether stage 5 waits for stage 7: callers are keyed by access key,
    /// and only the payload can prove the key (Lambda's signature covers a
    /// hash botocore does not send), so a forged request never spends a
    /// key's budget.
    pub(super) fn throttle_after_payload(&self, authn: &Authn) -> bool {
        authn.proven_key().is_none()
            && authn.needs_payload_hash()
            && self.scheduler.limits().keying.by_access_key()
    }

    /// Stage 5: the rate limits, then (for a call that runs now) a
    /// concurrency permit. An asynchronous call meets the concurrency limit
    /// when it runs; a dry run never does.
    pub(super) async fn throttle<'a>(
        &self,
        pool: &'a Function,
        origin: &Origin,
        kind: Kind,
        key: Option<KeyId>,
    ) -> Result<Option<Admitted<'a>>, InvokeError> {
        let caller = match origin {
            Origin::Client(c) => Some(c),
            Origin::Internal => None,
        };
        let gw = self.scheduler.limits();
        let rates = match self.scheduler.sharing().count() {
            Some(count) => {
                let (function, limits) = (&pool.cfg.name, &pool.limits);
                let call = RateCheck {
                    function,
                    limits,
                    gw,
                    caller,
                    key,
                };
                count.check_rates(call).await
            }
            None => pool.limits.check_rates(gw, caller, key),
        };
        rates.map_err(InvokeError::Throttled)?;
        if kind != Kind::Sync {
            return Ok(None);
        }
        let permit = pool.limits.admit().await.map_err(InvokeError::Throttled)?;
        Ok(Some(Admitted::new(pool, permit)))
    }

    /// Stage 6: the payload, bounded in size and time, hashed when a
    /// signature covers it (`hashed`). On failure, what is left of the body goes back
    /// to `body` (for the refusal to deal with).
    pub(super) async fn payload(
        &self,
        parts: &http::request::Parts,
        kind: Kind,
        hashed: bool,
        body: &mut Option<Incoming>,
    ) -> Result<(Bytes, Option<[u8; 32]>), InvokeError> {
        let Some(incoming) = body.take() else {
            return Err(InvokeError::internal("the body was read twice"));
        };
        let limit = match kind {
            Kind::Async => self.asynchronous.limits().max_body_bytes,
            Kind::Sync | Kind::DryRun | Kind::TaskApi => self.limits.max_body_bytes,
        };
        // Boxed: most requests carry no signature over their payload.
        let mut hasher = hashed.then(|| Box::new(PayloadHasher::default()));
        let timeout = self.limits.body_read_timeout;
        let read = crate::body::read(
            incoming,
            &parts.headers,
            limit,
            timeout,
            hasher.as_deref_mut(),
        );
        match read.await {
            Ok(payload) => Ok((payload, hasher.map(|h| h.finish()))),
            Err((e, rest)) => {
                *body = rest;
                Err(e)
            }
        }
    }

    /// Stage 7: the signature's payload part, over the payload's hash.
    pub(super) fn verify_payload(
        &self,
        ctx: &Ctx<'_>,
        pool: &Function,
        authn: Authn,
        hash: Option<[u8; 32]>,
    ) -> Result<Option<KeyId>, InvokeError> {
        match authn {
            Authn::Done(key) => Ok(key),
            Authn::Payload { key, check, .. } => match check(&hash.unwrap_or_default()) {
                Ok(()) => Ok(Some(key)),
                Err(a) => {
                    let e = InvokeError::Unauthenticated(a);
                    self.count_auth_failure(ctx, pool, &e);
                    Err(e)
                }
            },
        }
    }
}

impl super::Settings {
    /// What `pool`'s function demands of its callers (the gateway's default
    /// for an unknown function).
    pub(super) fn policy<'a>(&'a self, pool: Option<&'a Function>) -> AuthPolicy<'a> {
        let (mode, level, function_keys) = match pool {
            Some(p) => (p.cfg.auth, p.cfg.auth_level, &p.cfg.function_keys[..]),
            None => (self.auth.mode, AuthLevel::Anonymous, &[][..]),
        };
        AuthPolicy {
            mode,
            level,
            credentials: &self.auth.credentials,
            function_keys,
            host_keys: &self.auth.host_keys,
            max_skew: self.auth.max_skew,
            // Only a signature check reads the wall clock.
            now: match mode {
                AuthMode::Signature => SystemTime::now(),
                AuthMode::None => SystemTime::UNIX_EPOCH,
            },
        }
    }
}
