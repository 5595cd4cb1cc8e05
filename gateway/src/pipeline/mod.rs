//! The invocation pipeline: every HTTPS request runs these stages, in order,
//! whichever cloud's API it speaks.
//!
//! | # | stage | function | refuses with (FC door; each dialect renders its own) |
//! |---|---|---|---|
//! | 0 | an HTTP/2 header list within `max_header_bytes` | `Pipeline::decode` | 431 `RequestHeaderFieldsTooLarge` |
//! | 1 | pick the dialect by path prefix; decode the request head | `Pipeline::decode` ([`crate::api::Dialect::decode`]) | 404 `PathNotSupported`, 405, 400 |
//! | 2 | look up the function | `Pipeline::lookup` | 404 `FunctionNotFound` |
//! | 3 | ingress policy: VPC bindings, then access rules | `Pipeline::ingress` ([`crate::ingress::policy::IngressPolicy::check`]) | 403 `AccessDenied` |
//! | 4 | credentials: signature or function key, from the head | `Pipeline::authenticate` ([`crate::api::Dialect::authenticate`]) | 403 `SignatureNotMatch`, ... |
//! | 5 | throttling: caller, gateway-caller and function rates, then concurrency (may queue) | `Pipeline::throttle` ([`crate::throttle`]) | 429 `ResourceThrottled` |
//! | 6 | read the payload, bounded in size and time (hashed when a signature covers it) | `Pipeline::payload` ([`crate::body::read`]) | 400 `EntityTooLarge`, 408 |
//! | 7 | the rest of the signature, over the payload's hash | `Pipeline::verify_payload` | 403 `SignatureNotMatch` |
//! | 8 | reserve an instance slot (bin-pack; may start one) | [`crate::scheduler::Scheduler::acquire`] | 412 `CAExited`, 429 `ResourceExhausted` |
//! | 9 | call the instance (or the backends), bounded by the function timeout | `Pipeline::execute` ([`crate::execute::Execute`]) | 200 + `x-fc-error-type` |
//! | 10 | render the answer in the caller's dialect | `Pipeline::answer` ([`crate::api::Dialect`]) | |
//!
//! Stages 0-7 are functions in `stages.rs` that return what the next needs
//! or the error that refuses the request; `Pipeline::refused` is the one
//! place a refusal is rendered, its unread body dealt with, and counted
//! (through `Pipeline::account`, which counts every request once).
//! `Pipeline::execute` serves a call that runs now and a task's attempt
//! alike.
//!
//! Stages 1-5 look at the request head only: a request refused there costs
//! no body read, no instance and no scheduler work. One exception keeps a
//! promise: when callers are keyed by access key and only the payload can
//! prove the key (Lambda's signature covers a hash botocore does not send),
//! stage 5 runs after stage 7, so a forged request never spends a key's
//! budget. FC's signature covers a declared hash and proves its key from the
//! head.
//!
//! An asynchronous invocation leaves after stage 7 with 202 once its task
//! is committed to the store, and stages 8-9 run later, with retries,
//! through [`Pipeline::attempt`] ([`crate::asynchronous`]); a dry run leaves
//! there too, having run nothing. A task API call (FC's `async-tasks`)
//! passes stages 1-4 and is answered from the store: the same ingress
//! policy and credentials guard it as the function's invocations.

mod finish;
mod stages;
mod tasks;

use crate::api::{Dialect, Dialects, Invocation, Kind, Ran, Reply, ResponseBody};
use crate::auth::{GatewayAuth, KeyId};
use crate::body;
use crate::config::{Config, Limits};
use crate::error::{InvokeError, Outcome};
use crate::execute::{Call, Execute, Executor};
use crate::functions::Function;
use crate::ids::IdGen;
use crate::ingress::{Origin, VpcTable};
use crate::metering::usage_log::LiveLog;
use crate::metrics::{FunctionMetrics, Metrics, NetworkIndex};
use crate::scheduler::{FunctionPool, Scheduler};
use crate::throttle::{LimitKind, Throttled};
use finish::{Done, Refusal};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

/// fngate's own answer header: the invocation waited for its instance to start.
pub const COLD_START: &str = "x-fngate-cold-start";

/// `E`: where calls run (stage 9); a fake in unit tests.
pub struct Pipeline<E = Executor> {
    pub scheduler: Arc<Scheduler>,
    pub limits: Limits,
    pub ids: IdGen,
    pub dialects: Dialects,
    /// Swapped whole by a reload; a request reads the version it began with.
    settings: arc_swap::ArcSwap<Settings>,
    usage: Arc<LiveLog>,
    drains: body::DrainMetrics,
    /// The drains of refused requests' unread bodies (bounded each; a stop
    /// does not wait for them: their answers are sent).
    drain_tasks: tokio_util::task::TaskTracker,
    pub asynchronous: Arc<crate::asynchronous::AsyncQueue>,
    executor: E,
}

/// What the pipeline reads of the configuration besides the functions
/// (which it finds in the scheduler's registry).
pub struct Settings {
    pub vpcs: VpcTable,
    pub auth: GatewayAuth,
    networks: NetworkIndex,
    /// Requests for no function served.
    unknown: FunctionMetrics,
}

impl Settings {
    pub fn new(config: &Config, metrics: &Metrics) -> Settings {
        let vpcs = config.ingress.vpcs.clone();
        let networks = NetworkIndex::new(&vpcs);
        Settings {
            unknown: metrics.function("(unknown)", &networks),
            networks,
            vpcs,
            auth: config.auth.clone(),
        }
    }
}

/// How one asynchronous attempt went (see [`Pipeline::attempt`]).
pub struct AttemptOutcome {
    /// `None`: the function answered.
    pub error: Option<InvokeError>,
    /// What the task's door answers (or would have answered).
    pub status: u16,
    /// The function's answer, or its error as the function's error body.
    pub body: bytes::Bytes,
    /// `Unhandled` when the function failed.
    pub function_error: Option<&'static str>,
    pub instance_id: Option<String>,
}

/// What every stage's answer needs about the request itself.
struct Ctx<'a> {
    dialect: &'a dyn Dialect,
    settings: Arc<Settings>,
    request_id: HeaderValue,
    origin: Origin,
    started: Instant,
    wall: SystemTime,
}

impl Ctx<'_> {
    /// What the dialect answers with: the request, the function (`None`: not
    /// found) and the instance the call ran on, if it did.
    fn reply<'a>(&'a self, pool: Option<&Function>, ran: Option<&'a Ran>) -> Reply<'a> {
        Reply {
            request_id: &self.request_id,
            ran,
            memory_mb: pool.map_or(0, |p| p.cfg.memory_mb),
            started: self.started,
            task_id: None,
        }
    }
}

impl<E: Execute> Pipeline<E> {
    pub fn new(
        scheduler: Arc<Scheduler>,
        config: &Config,
        metrics: &Metrics,
        usage: Arc<LiveLog>,
        asynchronous: Arc<crate::asynchronous::AsyncQueue>,
        executor: E,
    ) -> Self {
        Pipeline {
            asynchronous,
            settings: arc_swap::ArcSwap::from_pointee(Settings::new(config, metrics)),
            scheduler,
            limits: config.gateway.limits.clone(),
            ids: IdGen::new(),
            dialects: Dialects {
                fc: crate::api::fc::Fc,
                lambda: crate::api::lambda::Lambda::new(config.lambda.clone()),
                azure: crate::api::azure::Azure,
            },
            usage,
            drains: body::DrainMetrics::new(&metrics.registry),
            drain_tasks: Default::default(),
            executor,
        }
    }

    /// Where calls run.
    pub fn executor(&self) -> &E {
        &self.executor
    }

    /// The settings requests read now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// A reload's settings, read by requests that begin from now on.
    pub fn set_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// One request, start to answer. Shaped as hyper's service future (owns
    /// its pipeline, never fails) so the connection boxes it without a
    /// wrapper future and its copy.
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        origin: Origin,
    ) -> impl Future<Output = Result<Response<ResponseBody>, std::convert::Infallible>> {
        // Split here, so the future holds the parts, not the request too.
        let (parts, body) = req.into_parts();
        self.serve(parts, body, origin)
    }

    async fn serve(
        self: Arc<Self>,
        parts: http::request::Parts,
        body: Incoming,
        origin: Origin,
    ) -> Result<Response<ResponseBody>, std::convert::Infallible> {
        let mut ctx = Ctx {
            dialect: self.dialects.select(parts.uri.path()),
            settings: self.settings.load_full(),
            request_id: self.ids.request_id(),
            origin,
            started: Instant::now(),
            wall: SystemTime::now(),
        };
        // The body until stage 6 reads it, and what a failed read left.
        let mut body = Some(body);
        let answered = match self.decode(&ctx, &parts) {
            Ok(inv) => match self.invoke(&mut ctx, &parts, &inv, &mut body).await {
                Ok(resp) => return Ok(resp),
                Err(r) => self.refused(&ctx, Some(&inv), r, &parts, body),
            },
            Err(e) => self.refused(&ctx, None, e.into(), &parts, body),
        };
        Ok(answered.await)
    }

    /// The stages, in order, of a request decoded at stage 1 (see the
    /// module's table). Every refusal goes back to [`Pipeline::refused`].
    async fn invoke(
        &self,
        ctx: &mut Ctx<'_>,
        parts: &http::request::Parts,
        inv: &Invocation<'_>,
        body: &mut Option<Incoming>,
    ) -> Result<Response<ResponseBody>, Refusal> {
        let pool = self.lookup(ctx, parts, inv)?;
        let refusal = |e| Refusal::of(&pool, e);
        self.ingress(ctx, &pool).map_err(refusal)?;
        let authn = self.authenticate(ctx, parts, &pool).map_err(refusal)?;
        if let Some(op) = &inv.task_op {
            // Boxed, as are the other paths rarer than a call: the request's
            // future (moved into hyper's box when it starts) is only as large
            // as the common path needs.
            let declared = body::declared_length(&parts.headers).unwrap_or(0);
            let done = Done::new(&pool, inv, Outcome::TaskApi, declared, None);
            let body = body.take();
            return Ok(Box::pin(self.task_api(ctx, done, op, parts, body)).await);
        }
        let deferred = self.throttle_after_payload(&authn);
        let mut admitted = None;
        if !deferred {
            admitted = self
                .throttle(&pool, &ctx.origin, inv.kind, authn.proven_key())
                .await
                .map_err(refusal)?;
        }
        let hashed = authn.needs_payload_hash();
        let (payload, hash) = self
            .payload(parts, inv.kind, hashed, body)
            .await
            .map_err(refusal)?;
        let read = payload.len() as u64;
        let key = (self.verify_payload(ctx, &pool, authn, hash))
            .map_err(|e| refusal(e).after_read(read, None))?;
        if deferred {
            admitted = (self.throttle(&pool, &ctx.origin, inv.kind, key).await)
                .map_err(|e| refusal(e).after_read(read, key))?;
        }
        let content_type = parts.headers.get(http::header::CONTENT_TYPE);
        Ok(match inv.kind {
            Kind::TaskApi => {
                let e = InvokeError::internal("a task API call reached stage 8");
                return Err(refusal(e).after_read(read, key));
            }
            Kind::DryRun => {
                let done = Done::new(&pool, inv, Outcome::DryRun, read, key);
                let resp = ctx
                    .dialect
                    .accepted(Kind::DryRun, &ctx.reply(Some(&pool), None));
                self.finish(ctx, done, resp).await
            }
            Kind::Async => {
                let accept = self.accept(ctx, &pool, inv, content_type, key, payload);
                Box::pin(accept).await
            }
            Kind::Sync => {
                let call = Call {
                    trigger: &inv.trigger,
                    method: &parts.method,
                    uri: &parts.uri,
                    headers: &parts.headers,
                    content_type,
                    client_context: inv.client_context,
                    caller_ip: match ctx.origin {
                        Origin::Client(c) => Some(c.ip),
                        Origin::Internal => None,
                    },
                    log_tail: inv.log_tail,
                    stop: None,
                };
                let (result, legs) = self.execute(ctx, &pool, &call, payload).await;
                drop(admitted);
                let throttle = result.as_ref().err().and_then(|(e, _)| e.throttle());
                let (outcome, ran, resp) = self.answer(ctx, &pool, result);
                let mut done = Done::new(&pool, inv, outcome, read, key);
                done.ran = ran;
                done.legs = legs;
                done.throttle = throttle;
                self.finish(ctx, done, resp).await
            }
        })
    }

    /// An asynchronous call, past stage 7: 202 once its task is committed.
    async fn accept(
        &self,
        ctx: &mut Ctx<'_>,
        pool: &Arc<FunctionPool>,
        inv: &Invocation<'_>,
        content_type: Option<&HeaderValue>,
        key: Option<KeyId>,
        payload: bytes::Bytes,
    ) -> Response<ResponseBody> {
        let read = payload.len() as u64;
        let task = self.task_record(ctx, inv, pool, content_type, key, payload.len());
        let task_id = inv.task_id.unwrap_or(task.id.as_str()).to_string();
        let err = match self.asynchronous.submit(task, payload).await {
            Ok(crate::asynchronous::Submitted::New) => None,
            Ok(crate::asynchronous::Submitted::Known { request_id }) => {
                // Answered as the first submission was.
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    ctx.request_id = v;
                }
                None
            }
            Err(crate::asynchronous::store::StoreError::Full(what)) => {
                tracing::debug!(function = %pool.cfg.name, bound = what, "asynchronous task store full");
                Some(InvokeError::Throttled(Throttled {
                    limit: LimitKind::AsyncQueue,
                    retry_after: pool.limits.retry_hint(),
                }))
            }
            Err(e) => Some(e.into()),
        };
        if let Some(e) = &err {
            self.log_failure(ctx, pool, e);
        }
        let outcome = err.as_ref().map_or(Outcome::Accepted, InvokeError::outcome);
        let mut done = Done::new(pool, inv, outcome, read, key);
        done.throttle = err.as_ref().and_then(InvokeError::throttle);
        let resp = match err {
            None => {
                let mut reply = ctx.reply(Some(pool), None);
                reply.task_id = Some(&task_id);
                ctx.dialect.accepted(Kind::Async, &reply)
            }
            Some(e) => self.error(ctx, &done, &e),
        };
        self.finish(ctx, done, resp).await
    }

    /// Stages 8-9, for a call that runs now and a task's attempt alike: the
    /// executor, then the time it took (for the retry hint) and a failure
    /// logged once, with what its caller is not told.
    async fn execute(
        &self,
        ctx: &Ctx<'_>,
        pool: &Arc<FunctionPool>,
        call: &Call<'_>,
        payload: bytes::Bytes,
    ) -> (
        Result<(crate::api::FunctionAnswer, Ran), crate::execute::Failed>,
        Vec<crate::metering::Leg>,
    ) {
        let (result, legs) = (self.executor)
            .execute(pool, call, payload, &ctx.request_id)
            .await;
        match &result {
            Ok(_) => pool.limits.record_duration(ctx.started.elapsed()),
            Err((e, _)) => self.log_failure(ctx, pool, e),
        }
        (result, legs)
    }
}

#[cfg(test)]
mod tests;
