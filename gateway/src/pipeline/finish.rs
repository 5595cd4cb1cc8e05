//! The one way out of the pipeline: every answer, refusal or not, is
//! counted by [`Pipeline::account`] (once) and its usage record queued;
//! every refusal is rendered by [`Pipeline::refused`].

use super::{COLD_START, Ctx, Pipeline};
use crate::api::{Api, FunctionAnswer, Invocation, Ran, ResponseBody};
use crate::auth::KeyId;
use crate::body;
use crate::error::{InvokeError, Outcome};
use crate::execute::Execute;
use crate::functions::Function;
use crate::ingress::{Network, Origin};
use crate::metering::{Leg, UsageRecord, billed_gb_s, unix_ms};
use crate::throttle::LimitKind;
use http::{HeaderValue, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

/// Marks a gateway-made answer's body as not to be sniffed.
pub(super) fn nosniff(mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
    resp.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Why a request ends before its function runs: the error (which says the
/// outcome and the limit, if one refused it) and what is known by then.
pub(super) struct Refusal {
    pub error: InvokeError,
    /// `None`: refused at or before the lookup.
    pub pool: Option<Arc<Function>>,
    /// The payload bytes read (`None`: before stage 6 ended; the declared
    /// length counts).
    pub read: Option<u64>,
    pub key: Option<KeyId>,
}

impl Refusal {
    pub fn of(pool: &crate::scheduler::FunctionPool, error: InvokeError) -> Self {
        Refusal {
            error,
            pool: Some(pool.function.clone()),
            read: None,
            key: None,
        }
    }

    /// Refused after the payload was read (`read` bytes), by `key`'s caller.
    pub fn after_read(mut self, read: u64, key: Option<KeyId>) -> Self {
        self.read = Some(read);
        self.key = key;
        self
    }
}

impl From<InvokeError> for Refusal {
    fn from(error: InvokeError) -> Self {
        Refusal {
            error,
            pool: None,
            read: None,
            key: None,
        }
    }
}

/// What [`Pipeline::account`] needs to know about how a request went.
pub(super) struct Done<'a> {
    pub pool: Option<&'a Function>,
    pub function: &'a str,
    pub qualifier: Option<&'a str>,
    pub outcome: Outcome,
    pub bytes_in: u64,
    pub ran: Option<Ran>,
    pub key: Option<KeyId>,
    /// The attempts on cloud backends.
    pub legs: Vec<Leg>,
    /// The limit that refused it: counted in `fngate_throttles_total` by
    /// [`Pipeline::account`], the one place a call is counted, so a throttle
    /// is counted once wherever it was decided.
    pub throttle: Option<LimitKind>,
}

impl<'a> Done<'a> {
    pub fn new(
        pool: &'a Function,
        inv: &'a Invocation<'_>,
        outcome: Outcome,
        bytes_in: u64,
        key: Option<KeyId>,
    ) -> Self {
        Done {
            pool: Some(pool),
            function: &inv.function,
            qualifier: inv.qualifier.as_deref(),
            outcome,
            bytes_in,
            ran: None,
            key,
            legs: Vec::new(),
            throttle: None,
        }
    }
}

impl<E: Execute> Pipeline<E> {
    /// The one finisher of a refused request: renders its error in the
    /// door's shape, deals with its unread body (so the client gets the
    /// answer), counts it. The work is done before the future is returned,
    /// which holds only what it awaits (see [`Pipeline::finish`]).
    pub(super) fn refused<'a>(
        &'a self,
        ctx: &Ctx<'_>,
        inv: Option<&Invocation<'_>>,
        r: Refusal,
        parts: &http::request::Parts,
        body: Option<Incoming>,
    ) -> impl Future<Output = Response<ResponseBody>> + use<'a, E> {
        let declared = crate::body::declared_length(&parts.headers);
        let done = Done {
            pool: r.pool.as_deref(),
            function: inv.map_or("(unknown)", |i| &i.function),
            qualifier: inv.and_then(|i| i.qualifier.as_deref()),
            outcome: r.error.outcome(),
            bytes_in: r.read.or(declared).unwrap_or(0),
            ran: None,
            key: r.key,
            legs: Vec::new(),
            throttle: r.error.throttle(),
        };
        let mut resp = self.error(ctx, &done, &r.error);
        if let Some(body) = body {
            self.unread(body, parts, &mut resp);
        }
        self.finish(ctx, done, resp)
    }

    /// The operator's account of a failed call, once, with what the caller
    /// is not told (no payload, no secret in either): a 5xx at warn with
    /// its causes; a refusal the caller can fix, or a throttle, not at all
    /// (they are counted).
    pub(super) fn log_failure(&self, ctx: &Ctx<'_>, pool: &Function, e: &InvokeError) {
        let status = ctx.dialect.status(e);
        if status.is_server_error() {
            tracing::warn!(function = %pool.cfg.name, request_id = ?ctx.request_id, status = status.as_u16(), error = %e, cause = e.cause().unwrap_or(""), "invocation failed");
        } else if !matches!(e.outcome(), Outcome::ClientError | Outcome::Throttled) {
            tracing::info!(function = %pool.cfg.name, request_id = ?ctx.request_id, error = %e, "invocation failed");
        }
    }

    /// A gateway-made error answer, in the door's shape. Its JSON is not to be
    /// sniffed as anything else (a function's own answers pass untouched).
    pub(super) fn error(
        &self,
        ctx: &Ctx<'_>,
        done: &Done<'_>,
        e: &InvokeError,
    ) -> Response<ResponseBody> {
        nosniff(
            ctx.dialect
                .error(e, &ctx.reply(done.pool, done.ran.as_ref())),
        )
    }

    /// Stage 10: the answer to a call that reached stage 8.
    pub(super) fn answer(
        &self,
        ctx: &Ctx<'_>,
        pool: &Function,
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
                (outcome, Some(ran), resp)
            }
            Err((e, ran)) => {
                let outcome = e.outcome();
                let resp = nosniff(ctx.dialect.error(&e, &ctx.reply(Some(pool), ran.as_ref())));
                (outcome, ran, resp)
            }
        }
    }

    /// The unread rest of a refused request's body: drained (HTTP/1.1) or
    /// held by the answer (HTTP/2), see [`crate::body::unread`].
    pub(super) fn unread(
        &self,
        body: Incoming,
        parts: &http::request::Parts,
        resp: &mut Response<ResponseBody>,
    ) {
        let held = body::unread(
            body,
            &parts.headers,
            parts.version,
            &self.limits,
            &self.drain_tasks,
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
    pub(super) fn finish<'a>(
        &'a self,
        ctx: &Ctx<'_>,
        done: Done<'_>,
        resp: Response<ResponseBody>,
    ) -> impl Future<Output = Response<ResponseBody>> + use<'a, E> {
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
    pub(super) async fn log_usage(&self, record: Option<Box<UsageRecord>>) {
        if let Some(r) = record
            && let Some(usage) = self.usage.get()
        {
            usage.record(r).await;
        }
    }

    /// The one place requests are counted and usage records made (for
    /// [`Pipeline::log_usage`]).
    pub(super) fn account(
        &self,
        ctx: &Ctx<'_>,
        api: Api,
        done: Done<'_>,
        status: StatusCode,
        bytes_out: u64,
    ) -> Option<Box<UsageRecord>> {
        let (origin, wall) = (ctx.origin, ctx.wall);
        let elapsed = ctx.started.elapsed();
        let net = ctx.settings.networks.of(&origin);
        let m = done
            .pool
            .map(|p| &*p.metrics)
            .unwrap_or(&ctx.settings.unknown);
        // A VPC newer than the function's series (a reload in between) is
        // counted as internet rather than lost.
        let by_net = m.by_network.get(net).unwrap_or(&m.by_network[0]);
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
        if !self.usage.is_on() {
            return None;
        }
        let memory_mb = done.pool.map(|p| p.cfg.memory_mb).unwrap_or(0);
        let (network, vpc_id) = ctx.settings.network_names(&origin);
        // Built in its box: it travels to the writer thread as is.
        let record = Box::new(UsageRecord {
            request_id: ctx.request_id.to_str().unwrap_or_default().to_string(),
            function: done.function.to_string(),
            qualifier: done.qualifier.map(str::to_string),
            api: api.as_str().into(),
            network: network.into(),
            vpc_id,
            access_key_id: ctx.settings.key_id(done.key),
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

impl super::Settings {
    /// Where `origin` stands, as records name it: `internet`, `vpc` (with
    /// the VPC's id) or `internal`.
    pub(super) fn network_names(&self, origin: &Origin) -> (&'static str, Option<String>) {
        match origin {
            Origin::Client(c) => match c.network {
                Network::Internet => ("internet", None),
                Network::Vpc(v) => ("vpc", Some(self.vpcs.name(v).to_string())),
            },
            Origin::Internal => ("internal", None),
        }
    }

    /// A verified caller's access key id, as records name it.
    pub(super) fn key_id(&self, key: Option<KeyId>) -> Option<String> {
        key.map(|k| self.auth.credentials.id(k).to_string())
    }
}
