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

pub mod body;
pub mod forward;

use crate::api::fc;
use crate::config::Limits;
use crate::error::{InvokeError, Outcome};
use crate::ids::IdGen;
use crate::ingress::policy::Denial;
use crate::ingress::{Origin, VpcTable};
use crate::scheduler::{FunctionPool, Scheduler};
use crate::workers::HttpClient;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::time::Instant;

pub type ResponseBody = Full<Bytes>;

pub struct Pipeline {
    pub scheduler: Arc<Scheduler>,
    pub client: HttpClient,
    pub limits: Limits,
    pub ids: IdGen,
    pub vpcs: VpcTable,
    unknown_function: prometheus::IntCounter,
}

impl Pipeline {
    pub fn new(
        scheduler: Arc<Scheduler>,
        client: HttpClient,
        limits: Limits,
        vpcs: VpcTable,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let unknown = metrics.function("(unknown)");
        Pipeline {
            scheduler,
            client,
            limits,
            ids: IdGen::new(),
            vpcs,
            unknown_function: unknown.invocations[Outcome::ClientError.index()].clone(),
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, origin: Origin) -> Response<ResponseBody> {
        let started = Instant::now();
        let request_id = self.ids.request_id();
        let (parts, body) = req.into_parts();

        // 1-2: decode and look up, from the head alone.
        let pool = match fc::decode(&parts.method, &parts.uri) {
            Ok(inv) => match self.scheduler.function(inv.function) {
                Some(pool) => pool.clone(),
                None => {
                    let e = InvokeError::FunctionNotFound {
                        name: inv.function.to_string(),
                    };
                    return self.refuse(
                        &self.unknown_function,
                        e,
                        body,
                        &parts.headers,
                        request_id,
                    );
                }
            },
            Err(e) => {
                return self.refuse(&self.unknown_function, e, body, &parts.headers, request_id);
            }
        };

        // 3: ingress policy, from the head and the connection alone.
        if let Err(denial) = pool.cfg.ingress.check(&origin, &self.vpcs) {
            match &denial {
                Denial::VpcBinding { .. } => pool.metrics.denied_vpc_binding.inc(),
                Denial::Rule { .. } | Denial::ImplicitDeny => pool.metrics.denied_access_rule.inc(),
            }
            let counter = &pool.metrics.invocations[Outcome::Denied.index()];
            let e = InvokeError::AccessDenied(denial);
            return self.refuse(counter, e, body, &parts.headers, request_id);
        }

        // 4: throttling, still from the head.
        let caller = match &origin {
            Origin::Client(c) => Some(c),
            Origin::Internal => None,
        };
        let admitted = match pool.limits.check_rates(self.scheduler.limits(), caller) {
            Ok(()) => pool.limits.admit().await,
            Err(t) => Err(t),
        };
        let _permit = match admitted {
            Ok(p) => p,
            Err(t) => {
                pool.metrics.throttles[t.limit as usize].inc();
                let counter = &pool.metrics.invocations[Outcome::Throttled.index()];
                return self.refuse(
                    counter,
                    InvokeError::Throttled(t),
                    body,
                    &parts.headers,
                    request_id,
                );
            }
        };
        // A guard, not inc/dec: hyper drops this future when the client goes away.
        let _in_flight = GaugeGuard::new(&pool.metrics.in_flight);
        let result = self.invoke(&pool, &parts, body, &request_id).await;
        if result.is_ok() {
            pool.limits.record_duration(started.elapsed());
        }
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err((e, _)) => e.outcome(),
        };
        pool.metrics.invocations[outcome.index()].inc();
        pool.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(mut resp) => {
                resp.headers_mut().insert(fc::REQUEST_ID, request_id);
                resp
            }
            Err((e, instance)) => {
                if let InvokeError::Throttled(t) = &e {
                    pool.metrics.throttles[t.limit as usize].inc();
                }
                if outcome != Outcome::ClientError && outcome != Outcome::Throttled {
                    tracing::info!(function = %pool.cfg.name, request_id = ?request_id, error = %e, "invocation failed");
                }
                error_response(&e, request_id, instance)
            }
        }
    }

    /// Answers a request refused from its head (stages 1-4): counts it,
    /// drains its unread body in the background, renders the error.
    fn refuse(
        &self,
        counter: &prometheus::IntCounter,
        err: InvokeError,
        body: Incoming,
        headers: &http::HeaderMap,
        request_id: HeaderValue,
    ) -> Response<ResponseBody> {
        counter.inc();
        body::discard(body, headers, &self.limits, self.scheduler.tasks());
        error_response(&err, request_id, None)
    }

    /// Stages 5-7. On error, also returns the instance id when one ran it.
    async fn invoke(
        &self,
        pool: &Arc<FunctionPool>,
        parts: &http::request::Parts,
        body: Incoming,
        request_id: &HeaderValue,
    ) -> Result<Response<ResponseBody>, (InvokeError, Option<HeaderValue>)> {
        let payload = body::read(body, &parts.headers, &self.limits, self.scheduler.tasks())
            .await
            .map_err(|e| (e, None))?;
        forward::call(self, pool, parts, payload, request_id).await
    }
}

struct GaugeGuard<'a>(&'a prometheus::IntGauge);

impl<'a> GaugeGuard<'a> {
    fn new(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
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
