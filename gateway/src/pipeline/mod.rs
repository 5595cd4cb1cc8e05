//! The invocation pipeline: every HTTPS request runs these stages, in order,
//! whichever cloud's API it speaks.
//!
//! | # | stage | where | refuses with (FC door; each dialect renders its own) |
//! |---|---|---|---|
//! | 1 | pick the dialect by path prefix; decode the request head | [`crate::api::Dialects::select`], [`crate::api::Dialect::decode`] | 404 `PathNotSupported`, 405, 400 |
//! | 2 | look up the function | [`Pipeline::handle`] | 404 `FunctionNotFound` |
//! | 3 | ingress policy: VPC bindings, then access rules | [`crate::ingress::policy::IngressPolicy::check`] | 403 `AccessDenied` |
//! | 4 | credentials: signature or function key, from the head | [`crate::api::Dialect::authenticate`] | 403 `SignatureNotMatch`, ... |
//! | 5 | throttling: caller, gateway-caller and function rates, then concurrency (may queue) | [`crate::throttle`] | 429 `ResourceThrottled` |
//! | 6 | read the payload, bounded in size and time (hashed when a signature covers it) | [`crate::body::read`] | 400 `EntityTooLarge`, 408 |
//! | 7 | the rest of the signature, over the payload's hash | [`crate::auth::Authn::Payload`] | 403 `SignatureNotMatch` |
//! | 8 | reserve an instance slot (bin-pack; may start one) | [`crate::scheduler::Scheduler::acquire`] | 412 `CAExited`, 429 `ResourceExhausted` |
//! | 9 | call the instance (or the backends), bounded by the function timeout | [`crate::execute::Execute`] | 200 + `x-fc-error-type` |
//! | 10 | render the answer in the caller's dialect | [`crate::api::Dialect`] | |
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

mod tasks;

use crate::api::{Api, Dialect, Dialects, FunctionAnswer, Kind, Ran, Reply, ResponseBody};
use crate::auth::{AuthMode, AuthPolicy, Authn, GatewayAuth, KeyId, PayloadHasher};
use crate::body;
use crate::config::{Config, Limits};
use crate::error::{InvokeError, Outcome};
use crate::execute::{Call, Execute, Executor, Failed};
use crate::ids::IdGen;
use crate::ingress::policy::Denial;
use crate::ingress::{Network, Origin, VpcTable};
use crate::metering::usage_log::UsageLog;
use crate::metering::{UsageRecord, billed_gb_s, unix_ms};
use crate::metrics::{FunctionMetrics, GaugeGuard, Metrics, NetworkIndex};
use crate::scheduler::{FunctionPool, Scheduler};
use crate::throttle::{LimitKind, Throttled};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

/// Marks a gateway-made answer's body as not to be sniffed.
fn nosniff(mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
    resp.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// fngate's own answer header: the invocation waited for its instance to start.
pub const COLD_START: &str = "x-fngate-cold-start";

/// `E`: where calls run (stage 9); a fake in unit tests.
pub struct Pipeline<E = Executor> {
    pub scheduler: Arc<Scheduler>,
    pub limits: Limits,
    pub ids: IdGen,
    pub vpcs: VpcTable,
    pub dialects: Dialects,
    pub auth: GatewayAuth,
    networks: NetworkIndex,
    unknown: FunctionMetrics,
    usage: Option<UsageLog>,
    drains: body::DrainMetrics,
    pub asynchronous: Arc<crate::asynchronous::AsyncQueue>,
    executor: E,
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
    request_id: HeaderValue,
    origin: Origin,
    started: Instant,
    wall: SystemTime,
}

impl Ctx<'_> {
    /// What the dialect answers with: the request, the function (`None`: not
    /// found) and the instance the call ran on, if it did.
    fn reply<'a>(&'a self, pool: Option<&Arc<FunctionPool>>, ran: Option<&'a Ran>) -> Reply<'a> {
        Reply {
            request_id: &self.request_id,
            ran,
            memory_mb: pool.map_or(0, |p| p.cfg.memory_mb),
            started: self.started,
            task_id: None,
        }
    }
}

/// What [`Pipeline::account`] needs to know about how a request went.
struct Done<'a> {
    pool: Option<&'a Arc<FunctionPool>>,
    function: &'a str,
    qualifier: Option<&'a str>,
    outcome: Outcome,
    bytes_in: u64,
    ran: Option<Ran>,
    key: Option<KeyId>,
    /// The attempts on cloud backends.
    legs: Vec<crate::metering::Leg>,
    /// The limit that refused it: counted in `fngate_throttles_total` by
    /// [`Pipeline::account`], the one place a call is counted, so a throttle
    /// is counted once wherever it was decided.
    throttle: Option<LimitKind>,
}

impl<E: Execute> Pipeline<E> {
    pub fn new(
        scheduler: Arc<Scheduler>,
        config: &Config,
        metrics: &Metrics,
        usage: Option<UsageLog>,
        asynchronous: Arc<crate::asynchronous::AsyncQueue>,
        executor: E,
    ) -> Self {
        let vpcs = config.ingress.vpcs.clone();
        let networks = NetworkIndex::new(&vpcs);
        let g = &config.gateway;
        Pipeline {
            asynchronous,
            unknown: metrics.function("(unknown)", &networks),
            networks,
            scheduler,
            limits: g.limits.clone(),
            ids: IdGen::new(),
            vpcs,
            dialects: Dialects {
                fc: crate::api::fc::Fc,
                lambda: crate::api::lambda::Lambda {
                    settings: config.lambda.clone(),
                },
                azure: crate::api::azure::Azure,
            },
            auth: config.auth.clone(),
            usage,
            drains: body::DrainMetrics::new(&metrics.registry),
            executor,
        }
    }

    /// What `pool`'s function demands of its callers (the gateway's default
    /// for an unknown function).
    fn policy<'a>(&'a self, pool: Option<&'a FunctionPool>) -> AuthPolicy<'a> {
        let (mode, level, function_keys) = match pool {
            Some(p) => (p.cfg.auth, p.cfg.auth_level, &p.cfg.function_keys[..]),
            None => (self.auth.mode, crate::auth::AuthLevel::Anonymous, &[][..]),
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
            key: None,
            legs: Vec::new(),
            throttle: None,
        };

        // 0: an HTTP/2 header block over the bound (h2 refuses only far past
        // it, see connection::H2_HEADER_HARD_FACTOR).
        if parts.version == http::Version::HTTP_2 {
            let size = crate::body::header_list_size(&parts);
            let limit = self.limits.max_header_bytes;
            if size > u64::from(limit) {
                let done = refused("(unknown)", None, None, Outcome::ClientError);
                let e = InvokeError::HeadersTooLarge { limit, size };
                return Ok(self.refuse(&ctx, done, e, &parts, body).await);
            }
        }

        // 1: decode, from the head alone.
        let inv = match ctx.dialect.decode(&parts) {
            Ok(inv) => inv,
            Err(e) => {
                let done = refused("(unknown)", None, None, e.outcome());
                return Ok(self.refuse(&ctx, done, e, &parts, body).await);
            }
        };
        let qualifier = inv.qualifier.as_deref();

        // 2: look up. A gateway that demands signatures checks them (from
        // the head) before it says whether a function exists.
        let Some(pool) = self.scheduler.function(&inv.function).cloned() else {
            let e = match ctx.dialect.authenticate(&parts, &self.policy(None)) {
                Err(e) => e,
                Ok(_) => InvokeError::FunctionNotFound {
                    name: inv.function.to_string(),
                },
            };
            let done = refused(&inv.function, qualifier, None, e.outcome());
            return Ok(self.refuse(&ctx, done, e, &parts, body).await);
        };

        // 3: ingress policy, from the head and the connection alone.
        if let Err(denial) = pool.cfg.ingress.check(&ctx.origin, &self.vpcs) {
            match &denial {
                Denial::VpcBinding { .. } => pool.metrics.denied_vpc_binding.inc(),
                Denial::Rule { .. } | Denial::ImplicitDeny => pool.metrics.denied_access_rule.inc(),
            }
            let done = refused(&inv.function, qualifier, Some(&pool), Outcome::Denied);
            let e = InvokeError::AccessDenied(denial);
            return Ok(self.refuse(&ctx, done, e, &parts, body).await);
        }

        // 4: credentials, from the head.
        let authn = match ctx.dialect.authenticate(&parts, &self.policy(Some(&pool))) {
            Ok(a) => a,
            Err(e) => {
                if let InvokeError::Unauthenticated(a) = &e {
                    pool.metrics.auth_failures[ctx.dialect.api().index()][a.index()].inc();
                }
                let done = refused(&inv.function, qualifier, Some(&pool), e.outcome());
                return Ok(self.refuse(&ctx, done, e, &parts, body).await);
            }
        };
        if inv.kind == Kind::TaskApi {
            let done = refused(&inv.function, qualifier, Some(&pool), Outcome::TaskApi);
            let op = inv.task_op.as_ref().expect("decoded with its op");
            // Boxed, as are the other paths rarer than a call: the request's
            // future (moved into hyper's box when it starts) is only as large
            // as the common path needs.
            return Ok(Box::pin(self.task_api(&ctx, done, op, &parts, body)).await);
        }
        let head_key = authn.proven_key();
        // Keyed by a key that only the payload can confirm: throttle after it.
        let deferred = head_key.is_none()
            && authn.needs_payload_hash()
            && self.scheduler.limits().keying.by_access_key();

        // 5: throttling, still from the head.
        let mut _permit = None;
        if !deferred {
            match self.throttle(&pool, &ctx.origin, inv.kind, head_key).await {
                Ok(p) => _permit = p,
                Err(t) => {
                    let mut done =
                        refused(&inv.function, qualifier, Some(&pool), Outcome::Throttled);
                    done.throttle = Some(t.limit);
                    let e = InvokeError::Throttled(t);
                    return Ok(self.refuse(&ctx, done, e, &parts, body).await);
                }
            }
        }
        // A guard, not inc/dec: hyper drops this future when the client goes away.
        let mut _in_flight = (!deferred).then(|| GaugeGuard::new(&pool.metrics.in_flight));

        // 6: the payload (hashed only when a signature covers it).
        let limit = match inv.kind {
            Kind::Async => self.asynchronous.limits.max_body_bytes,
            Kind::Sync | Kind::DryRun | Kind::TaskApi => self.limits.max_body_bytes,
        };
        // Boxed: most requests carry no signature over their payload.
        let mut hasher = authn
            .needs_payload_hash()
            .then(|| Box::new(PayloadHasher::default()));
        let timeout = self.limits.body_read_timeout;
        let read = body::read(body, &parts.headers, limit, timeout, hasher.as_deref_mut());
        let payload = match read.await {
            Ok(p) => p,
            Err((e, rest)) => {
                let done = refused(&inv.function, qualifier, Some(&pool), e.outcome());
                let mut resp = self.error(&ctx, &done, &e);
                if let Some(rest) = rest {
                    self.unread(rest, &parts, &mut resp);
                }
                return Ok(self.finish(&ctx, done, resp).await);
            }
        };
        let bytes_in = payload.len() as u64;
        let done = |outcome, ran, key| Done {
            pool: Some(&pool),
            function: &inv.function,
            qualifier,
            outcome,
            bytes_in,
            ran,
            key,
            legs: Vec::new(),
            throttle: None,
        };

        // 7: the signature's payload part.
        let key = match authn {
            Authn::Done(k) => k,
            Authn::Payload { key, check, .. } => {
                let hash = hasher.take().map(|h| h.finish()).unwrap_or_default();
                match check(&hash) {
                    Ok(()) => Some(key),
                    Err(a) => {
                        pool.metrics.auth_failures[ctx.dialect.api().index()][a.index()].inc();
                        let e = InvokeError::Unauthenticated(a);
                        let done = done(e.outcome(), None, None);
                        let resp = self.error(&ctx, &done, &e);
                        return Ok(self.finish(&ctx, done, resp).await);
                    }
                }
            }
        };
        if deferred {
            match self.throttle(&pool, &ctx.origin, inv.kind, key).await {
                Ok(p) => _permit = p,
                Err(t) => {
                    let mut done = done(Outcome::Throttled, None, key);
                    done.throttle = Some(t.limit);
                    let e = InvokeError::Throttled(t);
                    let resp = self.error(&ctx, &done, &e);
                    return Ok(self.finish(&ctx, done, resp).await);
                }
            }
            _in_flight = Some(GaugeGuard::new(&pool.metrics.in_flight));
        }

        let content_type = parts.headers.get(http::header::CONTENT_TYPE);
        match inv.kind {
            Kind::TaskApi => unreachable!("answered after stage 4"),
            Kind::DryRun => {
                let done = done(Outcome::DryRun, None, key);
                let resp = ctx
                    .dialect
                    .accepted(Kind::DryRun, &ctx.reply(done.pool, None));
                Ok(self.finish(&ctx, done, resp).await)
            }
            Kind::Async => {
                let task = self.task_record(&ctx, &inv, &pool, content_type, key, payload.len());
                let task_id = inv.task_id.unwrap_or(task.id.as_str()).to_string();
                let submitted = Box::pin(self.asynchronous.submit(task, payload)).await;
                let err = match submitted {
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
                    // Logged with its cause by the conversion.
                    Err(e) => Some(e.into()),
                };
                let outcome = err.as_ref().map_or(Outcome::Accepted, InvokeError::outcome);
                let mut done = done(outcome, None, key);
                done.throttle = err.as_ref().and_then(InvokeError::throttle);
                let resp = match err {
                    None => {
                        let mut reply = ctx.reply(done.pool, None);
                        reply.task_id = Some(&task_id);
                        ctx.dialect.accepted(Kind::Async, &reply)
                    }
                    Some(e) => self.error(&ctx, &done, &e),
                };
                Ok(self.finish(&ctx, done, resp).await)
            }
            Kind::Sync => {
                // 8-9: an instance slot, and the call.
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
                let (result, legs) = self.run(&pool, &call, payload, &ctx.request_id).await;
                let throttle = result.as_ref().err().and_then(|(e, _)| e.throttle());
                let (outcome, ran, resp) = self.answer(&ctx, &pool, result);
                let mut done = done(outcome, ran, key);
                done.legs = legs;
                done.throttle = throttle;
                Ok(self.finish(&ctx, done, resp).await)
            }
        }
    }

    /// Stages 8-9: the call, on the sandbox or on the function's backends.
    async fn run(
        &self,
        pool: &Arc<FunctionPool>,
        call: &Call<'_>,
        payload: bytes::Bytes,
        request_id: &HeaderValue,
    ) -> (
        Result<(FunctionAnswer, Ran), Failed>,
        Vec<crate::metering::Leg>,
    ) {
        self.executor.execute(pool, call, payload, request_id).await
    }

    /// Stage 5: the rate limits, then (for a call that runs now) a
    /// concurrency permit. An asynchronous call meets the concurrency limit
    /// when it runs; a dry run never does.
    async fn throttle(
        &self,
        pool: &FunctionPool,
        origin: &Origin,
        kind: Kind,
        key: Option<KeyId>,
    ) -> Result<Option<crate::throttle::ConcurrencyPermit>, Throttled> {
        let caller = match origin {
            Origin::Client(c) => Some(c),
            Origin::Internal => None,
        };
        let gw = self.scheduler.limits();
        let rates = match self.scheduler.sharing().count() {
            Some(count) => {
                let f = &pool.cfg.name;
                count.check_rates(f, &pool.limits, gw, caller, key).await
            }
            None => pool.limits.check_rates(gw, caller, key),
        };
        match rates {
            Ok(()) if kind == Kind::Sync => pool.limits.admit().await,
            Ok(()) => Ok(None),
            Err(t) => Err(t),
        }
    }

    /// A gateway-made error answer, in the door's shape. Its JSON is not to be
    /// sniffed as anything else (a function's own answers pass untouched).
    fn error(&self, ctx: &Ctx<'_>, done: &Done<'_>, e: &InvokeError) -> Response<ResponseBody> {
        nosniff(
            ctx.dialect
                .error(e, &ctx.reply(done.pool, done.ran.as_ref())),
        )
    }

    /// The answer to a call that reached stage 8.
    fn answer(
        &self,
        ctx: &Ctx<'_>,
        pool: &Arc<FunctionPool>,
        result: Result<(FunctionAnswer, Ran), (InvokeError, Option<Ran>)>,
    ) -> (Outcome, Option<Ran>, Response<ResponseBody>) {
        match result {
            Ok((answer, ran)) => {
                // A cloud backend's function failed: its answer, counted as such.
                let outcome = match answer.failed {
                    true => Outcome::FunctionError,
                    false => Outcome::Success,
                };
                let mut resp = ctx
                    .dialect
                    .success(answer, &ctx.reply(Some(pool), Some(&ran)));
                if ran.cold {
                    resp.headers_mut()
                        .insert(COLD_START, HeaderValue::from_static("true"));
                }
                pool.limits.record_duration(ctx.started.elapsed());
                (outcome, Some(ran), resp)
            }
            Err((e, ran)) => {
                let outcome = e.outcome();
                let resp = nosniff(ctx.dialect.error(&e, &ctx.reply(Some(pool), ran.as_ref())));
                // The operator's account of a 5xx, once, with what the
                // caller is not told (no payload, no secret in either).
                if resp.status().is_server_error() {
                    tracing::warn!(function = %pool.cfg.name, request_id = ?ctx.request_id, status = resp.status().as_u16(), error = %e, cause = e.cause().unwrap_or(""), "invocation failed");
                } else if !matches!(outcome, Outcome::ClientError | Outcome::Throttled) {
                    tracing::info!(function = %pool.cfg.name, request_id = ?ctx.request_id, error = %e, "invocation failed");
                }
                (outcome, ran, resp)
            }
        }
    }

    /// Answers a request refused from its head (stages 1-5): renders the
    /// error, and deals with the unread body so the client gets it. (Work
    /// done before the future is returned, so that the future, which lives
    /// in the request's, holds only what it awaits: see [`Pipeline::finish`].)
    fn refuse<'a>(
        &'a self,
        ctx: &Ctx<'_>,
        done: Done<'_>,
        err: InvokeError,
        parts: &http::request::Parts,
        body: Incoming,
    ) -> impl Future<Output = Response<ResponseBody>> + 'a {
        let mut resp = self.error(ctx, &done, &err);
        self.unread(body, parts, &mut resp);
        self.finish(ctx, done, resp)
    }

    /// The unread rest of a refused request's body: drained (HTTP/1.1) or
    /// held by the answer (HTTP/2), see [`crate::body::unread`].
    fn unread(
        &self,
        body: Incoming,
        parts: &http::request::Parts,
        resp: &mut Response<ResponseBody>,
    ) {
        let tasks = self.scheduler.tasks();
        let held = body::unread(
            body,
            &parts.headers,
            parts.version,
            &self.limits,
            tasks,
            &self.drains,
        );
        if let Some(b) = held {
            resp.body_mut().hold(b);
        }
    }

    /// Counts a client's request and writes its usage record. The counting
    /// is done at once; the future only queues the record (a request's
    /// future is moved whole into hyper's box, so every byte of state
    /// carried across an await is copied on every request).
    fn finish<'a>(
        &'a self,
        ctx: &Ctx<'_>,
        done: Done<'_>,
        resp: Response<ResponseBody>,
    ) -> impl Future<Output = Response<ResponseBody>> + 'a {
        // An internal call's answer reaches no client: it is not traffic.
        let bytes_out = match ctx.origin {
            Origin::Client(_) => resp.body().len(),
            Origin::Internal => 0,
        };
        let record = self.account(ctx, ctx.dialect.api(), done, resp.status(), bytes_out);
        async move {
            self.log_usage(record).await;
            resp
        }
    }

    /// Queues a usage record made by [`Pipeline::account`].
    async fn log_usage(&self, record: Option<Box<UsageRecord>>) {
        if let (Some(usage), Some(r)) = (&self.usage, record) {
            usage.record(r).await;
        }
    }

    /// Where `origin` stands, as records name it: `internet`, `vpc` (with
    /// the VPC's id) or `internal`.
    fn network_names(&self, origin: &Origin) -> (&'static str, Option<String>) {
        match origin {
            Origin::Client(c) => match c.network {
                Network::Internet => ("internet", None),
                Network::Vpc(v) => ("vpc", Some(self.vpcs.name(v).to_string())),
            },
            Origin::Internal => ("internal", None),
        }
    }

    /// A verified caller's access key id, as records name it.
    fn key_id(&self, key: Option<KeyId>) -> Option<String> {
        key.map(|k| self.auth.credentials.id(k).to_string())
    }

    /// The one place requests are counted and usage records made (for
    /// [`Pipeline::log_usage`]).
    fn account(
        &self,
        ctx: &Ctx<'_>,
        api: Api,
        done: Done<'_>,
        status: StatusCode,
        bytes_out: u64,
    ) -> Option<Box<UsageRecord>> {
        let (origin, wall) = (ctx.origin, ctx.wall);
        let elapsed = ctx.started.elapsed();
        let net = self.networks.of(&origin);
        let m = done.pool.map(|p| &p.metrics).unwrap_or(&self.unknown);
        let by_net = &m.by_network[net];
        by_net.invocations(api, done.outcome).inc();
        by_net.bytes_in.inc_by(done.bytes_in);
        by_net.bytes_out.inc_by(bytes_out);
        if let Some(limit) = done.throttle {
            m.throttles[limit as usize].inc();
        }
        if done.pool.is_some() {
            m.duration.observe(elapsed.as_secs_f64());
        }
        if done.ran.as_ref().is_some_and(|r| r.cold) {
            m.cold_starts.inc();
        }
        self.usage.as_ref()?;
        let memory_mb = done.pool.map(|p| p.cfg.memory_mb).unwrap_or(0);
        let (network, vpc_id) = self.network_names(&origin);
        // Built in its box: it travels to the writer thread as is.
        let record = Box::new(UsageRecord {
            request_id: ctx.request_id.to_str().unwrap_or_default().to_string(),
            function: done.function.to_string(),
            qualifier: done.qualifier.map(str::to_string),
            api: api.as_str().into(),
            network: network.into(),
            vpc_id,
            access_key_id: self.key_id(done.key),
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
            status: status.as_u16(),
            outcome: done.outcome.as_str().into(),
            start_unix_ms: unix_ms(wall),
            end_unix_ms: unix_ms(wall + elapsed),
            backend_legs: done.legs,
        });
        Some(record)
    }
}
