//! The invocation pipeline: every HTTPS request runs these stages, in order.
//!
//! | # | stage | where | rejects with |
//! |---|---|---|---|
//! | 1 | decode the cloud API request head | [`crate::api::fc::decode`] | 404 `PathNotSupported`, 405 |
//! | 2 | look up the function | [`Pipeline::handle`] | 404 `FunctionNotFound` |
//! | 3 | ingress policy: VPC bindings, then access rules | [`crate::ingress::policy::IngressPolicy::check`] | 403 `AccessDenied` |
//! | 4 | throttling: caller, gateway-caller and function rates, then concurrency (may queue) | [`crate::throttle`] | 429 `ResourceThrottled` |
//! | 5 | read the payload, bounded in size and time | [`body::read`] | 400 `EntityTooLarge`, 408 |
//! | 6 | reserve an instance slot (bin-pack; may start one) | [`crate::scheduler::Scheduler::acquire`] | 412 `CAExited`, 429 `ResourceExhausted` |
//! | 7 | call the instance, bounded by the function timeout | [`forward::call`] | 200 + `x-fc-error-type` |
//! | 8 | render the answer in the caller's dialect | [`crate::api::fc`] | |
//!
//! Stages 1-4 look at the request head only: a request refused there costs
//! no body read, no instance and no scheduler work.
//!
//! An asynchronous invocation leaves after stage 5 with 202; stages 6-7 run
//! later, with retries ([`asynchronous`]).

pub mod asynchronous;
pub mod body;
pub mod forward;

use crate::api::{InvocationType, fc};
use crate::config::{AsyncLimits, Limits};
use crate::error::{InvokeError, Outcome};
use crate::ids::IdGen;
use crate::ingress::policy::Denial;
use crate::ingress::{Network, Origin, VpcTable};
use crate::metering::usage_log::UsageLog;
use crate::metering::{UsageRecord, billed_gb_s, unix_ms};
use crate::metrics::{FunctionMetrics, GaugeGuard, Metrics, NetworkIndex};
use crate::scheduler::{FunctionPool, Scheduler};
use bytes::Bytes;
use forward::Ran;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

pub type ResponseBody = Full<Bytes>;

pub struct Pipeline {
    pub scheduler: Arc<Scheduler>,
    pub limits: Limits,
    pub ids: IdGen,
    pub vpcs: VpcTable,
    networks: NetworkIndex,
    unknown: FunctionMetrics,
    usage: Option<UsageLog>,
    pub asynchronous: asynchronous::AsyncQueue,
}

/// What every stage's answer needs about the request itself.
struct Ctx<'a> {
    headers: &'a http::HeaderMap,
    request_id: HeaderValue,
    origin: Origin,
    started: Instant,
    wall: SystemTime,
}

/// What [`Pipeline::finish`] needs to know about how a request went.
struct Done<'a> {
    pool: Option<&'a Arc<FunctionPool>>,
    function: &'a str,
    qualifier: Option<&'a str>,
    outcome: Outcome,
    bytes_in: u64,
    ran: Option<Ran>,
}

impl Pipeline {
    pub fn new(
        scheduler: Arc<Scheduler>,
        limits: Limits,
        async_limits: AsyncLimits,
        vpcs: VpcTable,
        metrics: &Metrics,
        usage: Option<UsageLog>,
    ) -> Self {
        let networks = NetworkIndex::new(&vpcs);
        Pipeline {
            asynchronous: asynchronous::AsyncQueue::new(async_limits, metrics.async_queued.clone()),
            unknown: metrics.function("(unknown)", &networks),
            networks,
            scheduler,
            limits,
            ids: IdGen::new(),
            vpcs,
            usage,
        }
    }

    /// One request, start to answer. Shaped as hyper's service future (owns
    /// its pipeline, never fails) so the connection boxes it without a
    /// wrapper future and its copy.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        origin: Origin,
    ) -> Result<Response<ResponseBody>, std::convert::Infallible> {
        let (parts, body) = req.into_parts();
        let ctx = Ctx {
            headers: &parts.headers,
            request_id: self.ids.request_id(),
            origin,
            started: Instant::now(),
            wall: SystemTime::now(),
        };
        let declared = body::declared_length(&parts.headers);
        let refused = |function, qualifier, pool, outcome| Done {
            pool,
            function,
            qualifier,
            outcome,
            bytes_in: declared.unwrap_or(0),
            ran: None,
        };

        // 1-2: decode and look up, from the head alone.
        let (inv, pool) = match fc::decode(&parts.method, &parts.uri) {
            Ok(inv) => match self.scheduler.function(inv.function) {
                Some(pool) => (inv, pool.clone()),
                None => {
                    let e = InvokeError::FunctionNotFound {
                        name: inv.function.to_string(),
                    };
                    let done = refused(inv.function, inv.qualifier, None, e.outcome());
                    return Ok(self.refuse(&ctx, done, e, body).await);
                }
            },
            Err(e) => {
                let done = refused("(unknown)", None, None, e.outcome());
                return Ok(self.refuse(&ctx, done, e, body).await);
            }
        };

        // 3: ingress policy, from the head and the connection alone.
        if let Err(denial) = pool.cfg.ingress.check(&ctx.origin, &self.vpcs) {
            match &denial {
                Denial::VpcBinding { .. } => pool.metrics.denied_vpc_binding.inc(),
                Denial::Rule { .. } | Denial::ImplicitDeny => pool.metrics.denied_access_rule.inc(),
            }
            let done = refused(inv.function, inv.qualifier, Some(&pool), Outcome::Denied);
            let e = InvokeError::AccessDenied(denial);
            return Ok(self.refuse(&ctx, done, e, body).await);
        }

        let kind = match fc::invocation_type(&parts.headers) {
            Ok(k) => k,
            Err(e) => {
                let done = refused(inv.function, inv.qualifier, Some(&pool), e.outcome());
                return Ok(self.refuse(&ctx, done, e, body).await);
            }
        };

        // 4: throttling, still from the head.
        let caller = match &ctx.origin {
            Origin::Client(c) => Some(c),
            Origin::Internal => None,
        };
        // An asynchronous call meets the concurrency limit when it runs.
        let admitted = match pool.limits.check_rates(self.scheduler.limits(), caller) {
            Ok(()) if kind == InvocationType::Async => Ok(None),
            Ok(()) => pool.limits.admit().await,
            Err(t) => Err(t),
        };
        let _permit = match admitted {
            Ok(p) => p,
            Err(t) => {
                pool.metrics.throttles[t.limit as usize].inc();
                let done = refused(inv.function, inv.qualifier, Some(&pool), Outcome::Throttled);
                let e = InvokeError::Throttled(t);
                return Ok(self.refuse(&ctx, done, e, body).await);
            }
        };
        // A guard, not inc/dec: hyper drops this future when the client goes away.
        let _in_flight = GaugeGuard::new(&pool.metrics.in_flight);

        // 5: the payload.
        let limit = match kind {
            InvocationType::Sync => self.limits.max_body_bytes,
            InvocationType::Async => self.asynchronous.limits.max_body_bytes,
        };
        let tasks = self.scheduler.tasks();
        let payload = match body::read(body, &parts.headers, limit, &self.limits, tasks).await {
            Ok(p) => p,
            Err(e) => {
                let done = refused(inv.function, inv.qualifier, Some(&pool), e.outcome());
                let resp = error_response(&e, ctx.request_id.clone(), None);
                return Ok(self.finish(&ctx, done, resp).await);
            }
        };
        let bytes_in = payload.len() as u64;
        let content_type = parts.headers.get(http::header::CONTENT_TYPE);
        let done = |outcome, ran| Done {
            pool: Some(&pool),
            function: inv.function,
            qualifier: inv.qualifier,
            outcome,
            bytes_in,
            ran,
        };

        if kind == InvocationType::Async {
            let job = asynchronous::Job {
                pool: pool.clone(),
                payload,
                content_type: content_type.cloned(),
                request_id: ctx.request_id.clone(),
                qualifier: inv.qualifier.map(Arc::from),
                accepted: ctx.started,
            };
            let (outcome, resp) = match self.enqueue(job) {
                Ok(()) => {
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = http::StatusCode::ACCEPTED;
                    resp.headers_mut()
                        .insert(fc::REQUEST_ID, ctx.request_id.clone());
                    (Outcome::Accepted, resp)
                }
                Err(e) => {
                    if let InvokeError::Throttled(t) = &e {
                        pool.metrics.throttles[t.limit as usize].inc();
                    }
                    (
                        e.outcome(),
                        error_response(&e, ctx.request_id.clone(), None),
                    )
                }
            };
            return Ok(self.finish(&ctx, done(outcome, None), resp).await);
        }

        // 6-7: an instance slot, and the call.
        let result = forward::call(&self, &pool, content_type, payload, &ctx.request_id).await;
        let (outcome, ran, resp, _) = self.answer(&ctx, &pool, result);
        Ok(self.finish(&ctx, done(outcome, ran), resp).await)
    }

    /// The answer to a call that reached stage 6, and its error if it failed.
    fn answer(
        &self,
        ctx: &Ctx<'_>,
        pool: &FunctionPool,
        result: Result<(Response<ResponseBody>, Ran), (InvokeError, Option<Ran>)>,
    ) -> (
        Outcome,
        Option<Ran>,
        Response<ResponseBody>,
        Option<InvokeError>,
    ) {
        match result {
            Ok((mut resp, ran)) => {
                resp.headers_mut()
                    .insert(fc::REQUEST_ID, ctx.request_id.clone());
                pool.limits.record_duration(ctx.started.elapsed());
                (Outcome::Success, Some(ran), resp, None)
            }
            Err((e, ran)) => {
                if let InvokeError::Throttled(t) = &e {
                    pool.metrics.throttles[t.limit as usize].inc();
                }
                let outcome = e.outcome();
                if !matches!(outcome, Outcome::ClientError | Outcome::Throttled) {
                    tracing::info!(function = %pool.cfg.name, request_id = ?ctx.request_id, error = %e, "invocation failed");
                }
                let id = ran.as_ref().map(|r| r.instance_id.clone());
                let resp = error_response(&e, ctx.request_id.clone(), id);
                (outcome, ran, resp, Some(e))
            }
        }
    }

    /// Answers a request refused from its head (stages 1-4): drains its
    /// unread body in the background and renders the error.
    async fn refuse(
        &self,
        ctx: &Ctx<'_>,
        done: Done<'_>,
        err: InvokeError,
        body: Incoming,
    ) -> Response<ResponseBody> {
        body::discard(body, ctx.headers, &self.limits, self.scheduler.tasks());
        let resp = error_response(&err, ctx.request_id.clone(), None);
        self.finish(ctx, done, resp).await
    }

    /// Counts the request and writes its usage record: the one place.
    async fn finish(
        &self,
        ctx: &Ctx<'_>,
        done: Done<'_>,
        resp: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        let (origin, wall) = (ctx.origin, ctx.wall);
        let elapsed = ctx.started.elapsed();
        // An internal call's answer reaches no client: it is not traffic.
        let bytes_out = match origin {
            Origin::Client(_) => resp.body().size_hint().exact().unwrap_or(0),
            Origin::Internal => 0,
        };
        let net = self.networks.of(&origin);
        let m = done.pool.map(|p| &p.metrics).unwrap_or(&self.unknown);
        let by_net = &m.by_network[net];
        by_net.invocations[done.outcome.index()].inc();
        by_net.bytes_in.inc_by(done.bytes_in);
        by_net.bytes_out.inc_by(bytes_out);
        if done.pool.is_some() {
            m.duration.observe(elapsed.as_secs_f64());
        }
        if done.ran.as_ref().is_some_and(|r| r.cold) {
            m.cold_starts.inc();
        }
        if let Some(usage) = &self.usage {
            let memory_mb = done.pool.map(|p| p.cfg.memory_mb).unwrap_or(0);
            let (network, vpc_id) = match origin {
                Origin::Client(c) => match c.network {
                    Network::Internet => ("internet", None),
                    Network::Vpc(v) => ("vpc", Some(self.vpcs.name(v).to_string())),
                },
                Origin::Internal => ("internal", None),
            };
            let request_id = resp
                .headers()
                .get(fc::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            // Built in its box: it travels to the writer thread as is.
            let record = Box::new(UsageRecord {
                request_id,
                function: done.function.to_string(),
                qualifier: done.qualifier.map(str::to_string),
                network: network.into(),
                vpc_id,
                bytes_in: done.bytes_in,
                bytes_out,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                memory_mb,
                billed_gb_s: if done.ran.is_some() {
                    billed_gb_s(memory_mb, elapsed)
                } else {
                    0.0
                },
                instance_id: done
                    .ran
                    .as_ref()
                    .and_then(|r| r.instance_id.to_str().ok())
                    .map(str::to_string),
                cold_start: done.ran.as_ref().is_some_and(|r| r.cold),
                status: resp.status().as_u16(),
                outcome: done.outcome.as_str().into(),
                start_unix_ms: unix_ms(wall),
                end_unix_ms: unix_ms(wall + elapsed),
            });
            usage.record(record).await;
        }
        resp
    }
}

pub fn error_response(
    err: &InvokeError,
    request_id: HeaderValue,
    instance: Option<HeaderValue>,
) -> Response<ResponseBody> {
    let r = fc::render_error(err, request_id.to_str().unwrap_or_default());
    let mut resp = Response::new(Full::new(r.body));
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(t) = r.error_type {
        h.insert(fc::ERROR_TYPE, t);
    }
    if let Some(i) = instance {
        h.insert(fc::INSTANCE_ID, i);
    }
    if let Some(wait) = r.retry_after {
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(crate::throttle::retry_after_secs(wait)),
        );
        h.insert(
            "x-acs-retry-after",
            HeaderValue::from(wait.as_millis().max(1) as u64),
        );
    }
    h.insert(fc::REQUEST_ID, request_id);
    resp
}
