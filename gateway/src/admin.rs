//! The admin listener: plain HTTP, meant for localhost or a private network.
//!
//! `/healthz` (the process is up), `/readyz` (listeners bound, every
//! function's `min_instances` ready, the usage log's writes succeeding and, in a fleet, the engine reachable), `/metrics` (Prometheus text),
//! `/admin/instances` and `/admin/functions` (JSON: each function's settings
//! and its effective ingress policy), `/admin/config` (the files loaded,
//! their hash and time, the last reload) and `POST /admin/reload` (reads
//! the files again: [`crate::reload`]; 200 when applied or unchanged, 422
//! with the reason when refused).

use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::scheduler::pick::Phase;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<crate::reload::Reloader>,
    pub scheduler: Arc<Scheduler>,
    pub pipeline: Arc<crate::pipeline::Pipeline>,
    pub usage: Arc<crate::metering::usage_log::LiveLog>,
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    pub started: AtomicBool,
}

#[derive(Serialize)]
struct InstanceView<'a> {
    instance_id: &'a str,
    function: &'a str,
    worker: Option<&'a str>,
    in_flight: u32,
    state: &'static str,
    created_unix: u64,
    last_used_unix: u64,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        crate::connection::accept_failed(&e).await;
                        continue;
                    }
                },
            };
            let this = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    }

    /// Why the gateway is not ready, if it is not.
    fn not_ready(&self) -> Option<&'static str> {
        if !self.started.load(Ordering::Acquire) {
            return Some("starting");
        }
        if self.usage.get().is_some_and(|l| l.health.failing()) {
            return Some("the usage log cannot be written");
        }
        if let Some(why) = self.fleet.as_ref().and_then(|f| f.not_ready()) {
            return Some(why);
        }
        let provisioned = self.scheduler.functions().values().all(|p| {
            let ready = p
                .snapshot()
                .iter()
                .filter(|i| i.phase() == Phase::Ready)
                .count();
            ready >= p.cfg.min_instances as usize
        });
        (!provisioned).then_some("provisioned instances (min_instances) are starting")
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/admin/reload") => {
                let out = self.reloader.reload("POST /admin/reload").await;
                let status = match out.result {
                    "refused" => StatusCode::UNPROCESSABLE_ENTITY,
                    _ => StatusCode::OK,
                };
                let body = serde_json::to_string(&out).unwrap_or_default();
                reply(status, "application/json", body)
            }
            (&Method::GET, "/admin/config") => {
                let body = serde_json::to_string(&*self.reloader.shown()).unwrap_or_default();
                reply(StatusCode::OK, "application/json", body)
            }
            (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            (&Method::GET, "/readyz") => match self.not_ready() {
                None => reply(StatusCode::OK, "text/plain", "ready\n".into()),
                Some(why) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n"),
                ),
            },
            (&Method::GET, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            (&Method::GET, "/admin/instances") => {
                let pools = self.scheduler.all_pools();
                let snaps: Vec<_> = pools.iter().map(|p| p.snapshot()).collect();
                let mut views = Vec::new();
                for inst in snaps.iter().flatten() {
                    views.push(InstanceView {
                        instance_id: &inst.id,
                        function: &inst.function,
                        worker: inst.worker().map(|w| w.url.as_str()),
                        in_flight: inst.in_flight(),
                        state: match inst.phase() {
                            Phase::Starting => "starting",
                            Phase::Ready => "ready",
                            Phase::Draining => "draining",
                            Phase::Gone => "gone",
                        },
                        created_unix: inst.created_unix,
                        last_used_unix: self.scheduler.unix_of_ms(inst.last_used_ms()),
                    });
                }
                views.sort_by_key(|v| (v.function, v.created_unix, v.instance_id));
                let body = serde_json::to_string(&views).unwrap_or_default();
                reply(StatusCode::OK, "application/json", body)
            }
            (&Method::GET, "/admin/functions") => {
                reply(StatusCode::OK, "application/json", self.functions_json())
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }
}

impl Admin {
    fn functions_json(&self) -> String {
        use crate::ingress::rules::Match;
        let settings = self.pipeline.settings();
        let vpcs = &settings.vpcs;
        let routes = self.pipeline.executor().routes.load();
        let pools = self.scheduler.functions();
        let mut out: Vec<serde_json::Value> = (pools.values())
            .map(|p| {
                let f = &p.cfg;
                let rules: Vec<serde_json::Value> = f
                    .ingress
                    .rules
                    .rules()
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::json!({
                            "priority": r.priority,
                            "action": r.action,
                            "name": r.name.as_deref(),
                        });
                        match &r.matches {
                            Match::Cidr(n) => v["cidr"] = n.to_string().into(),
                            Match::Vpc(id) => v["vpc_id"] = vpcs.name(*id).into(),
                        }
                        v
                    })
                    .collect();
                let source = match (f.ingress.rules.is_empty(), f.ingress.rules_from_function) {
                    (true, _) => "none",
                    (false, true) => "function",
                    (false, false) => "gateway",
                };
                serde_json::json!({
                    "name": &*f.name,
                    "memory_mb": f.memory_mb,
                    "timeout_s": f.timeout.as_secs(),
                    "instance_concurrency": f.instance_concurrency,
                    "idle_timeout_s": f.idle_timeout.as_secs(),
                    "min_instances": f.min_instances,
                    "queued": p.limits.queued(),
                    "max_concurrency": f.throttle.max_concurrency,
                    // What each door demands; key values are never shown.
                    "auth": f.auth,
                    "auth_level": f.auth_level,
                    "function_keys": f.function_keys.iter().map(|k| &*k.name).collect::<Vec<_>>(),
                    "ingress": {
                        "vpc_bindings": f.ingress.vpc_bindings.iter().map(|v| vpcs.name(*v)).collect::<Vec<_>>(),
                        "access_rules": rules,
                        "access_rules_source": source,
                        "implicit_deny": !f.ingress.rules.is_empty(),
                        "order": ["vpc_bindings", "access_rules"],
                    },
                    // Where calls run: none listed means the sandbox only.
                    "backends": routes.get(&f.name).map(|r| {
                        r.backends.iter().map(|b| b.status()).collect::<Vec<_>>()
                    }).unwrap_or_default(),
                })
            })
            .collect();
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        serde_json::to_string(&out).unwrap_or_default()
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}
