//! The worker's HTTP API (see [`crate::api`]) and its lifecycle.
//!
//! Control-plane only: invocations never pass through the worker, gateways
//! call instances directly. So a plain mutex over the instance table is fine
//! here; nothing on the invocation path takes it.

use crate::api::{ApiError, ApiErrorCode, Capacity, CreateInstance};
use crate::instance::{Instance, Spec, StartError};
use crate::memory::{MemoryEnforcer, MemoryLimitMode};
use crate::metrics::Metrics;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest control request accepted (a function spec).
const MAX_API_BODY: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Memory offered to instances, in MiB.
    pub memory_mb: u64,
    /// Address instances serve on and gateways connect to; defaults to the
    /// listen address (or 127.0.0.1 when that is unspecified).
    pub instance_host: Option<IpAddr>,
    /// Where instance working directories are created.
    pub work_root: Option<PathBuf>,
    pub memory_limit: MemoryLimitMode,
    pub isolation: crate::isolation::Isolation,
    /// Processes per instance at most (a pids cgroup); `None`: no bound.
    pub max_pids: Option<u32>,
    /// Open files per process of an isolated instance (`RLIMIT_NOFILE`).
    pub max_open_files: u32,
    /// The private range isolated instances take addresses from (none: a
    /// free one of [`crate::network::CANDIDATE_SUBNETS`], chosen at start).
    pub instance_subnet: Option<ipnet::Ipv4Net>,
    /// The uids (and gids) isolated instances run as.
    pub instance_uids: crate::identity::IdRange,
    /// The resolvers isolated instances' DNS queries are forwarded to (none:
    /// the host's, from `/etc/resolv.conf`).
    pub dns: Option<Vec<SocketAddr>>,
    /// The CA certificates isolated instances see as `/etc/ssl/certs`.
    pub ca_certs: PathBuf,
    /// Network namespaces kept ready per recently started egress policy.
    pub netns_pool: usize,
    /// Fleet mode: register in the fleet and honour gateways' leases. An
    /// empty `url` is filled with `http://` and the bound address, an empty
    /// `id` from the URL.
    pub fleet: Option<crate::fleet::WorkerFleet>,
}

/// How often isolated instances' egress counters are read into metrics.
const EGRESS_READ_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    memory_mb: u64,
    instance_host: IpAddr,
    work_root: PathBuf,
    isolation: crate::isolation::Isolation,
    max_open_files: u32,
    instance_uids: crate::identity::IdRange,
    ca_certs: PathBuf,
    bounds: crate::bounds::Bounds,
    network: Option<crate::network::Network>,
    enforcer: MemoryEnforcer,
    metrics: Metrics,
    state: Mutex<Table>,
    tasks: TaskTracker,
    closing: CancellationToken,
}

#[derive(Default)]
struct Table {
    instances: HashMap<String, Arc<Instance>>,
    /// Ids being started (reserved, not yet in `instances`).
    starting: HashMap<String, u32>,
    /// Instance id -> the gateway that owns it (fleet mode).
    owners: HashMap<String, String>,
    reserved_mb: u64,
}

impl Worker {
    pub fn new(cfg: &Config) -> std::io::Result<Worker> {
        let enforcer = MemoryEnforcer::detect(cfg.memory_limit)?;
        // CPU by memory for isolated instances (plain processes as before).
        let cpu_shares = cfg.isolation == crate::isolation::Isolation::Namespaces;
        let bounds = crate::bounds::Bounds::detect(cfg.max_pids, cpu_shares, &enforcer)?;
        if cfg.isolation == crate::isolation::Isolation::Namespaces {
            // Loudly, at start: never a silent fall back to plain processes.
            crate::isolation::probe().map_err(std::io::Error::other)?;
        }
        let network = match cfg.isolation {
            crate::isolation::Isolation::Namespaces => {
                cfg.instance_uids
                    .check_host()
                    .map_err(std::io::Error::other)?;
                let dns = cfg.dns.clone().unwrap_or_else(crate::dns::host_resolvers);
                let net = crate::network::Network::setup(cfg.instance_subnet, dns, cfg.netns_pool)
                    .map_err(std::io::Error::other)?;
                net.prewarm();
                Some(net)
            }
            crate::isolation::Isolation::Process => None,
        };
        let instance_host = cfg
            .instance_host
            .unwrap_or(if cfg.listen.ip().is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                cfg.listen.ip()
            });
        let work_root = cfg.work_root.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("fngate-worker-{}", std::process::id()))
        });
        std::fs::create_dir_all(&work_root)?;
        let metrics = Metrics::new();
        metrics
            .memory_capacity_bytes
            .set((cfg.memory_mb * 1024 * 1024) as i64);
        metrics
            .memory_limit
            .with_label_values(&[enforcer.kind().as_str()])
            .set(1);
        tracing::info!(
            memory_mb = cfg.memory_mb,
            memory_limit = enforcer.kind().as_str(),
            isolation = ?cfg.isolation,
            max_pids = ?bounds.max_pids(),
            cpu_shares = bounds.cpu_shares(),
            instance_host = %instance_host,
            instance_subnet = ?network.as_ref().map(|n| n.subnet().to_string()),
            instance_uids = %cfg.instance_uids,
            dns = ?network.as_ref().map(|n| n.dns_upstreams().to_vec()),
            work_root = %work_root.display(),
            "sandbox worker ready"
        );
        Ok(Worker {
            inner: Arc::new(Inner {
                memory_mb: cfg.memory_mb,
                instance_host,
                work_root,
                isolation: cfg.isolation,
                max_open_files: cfg.max_open_files,
                instance_uids: cfg.instance_uids,
                ca_certs: cfg.ca_certs.clone(),
                bounds,
                network,
                enforcer,
                metrics,
                state: Mutex::new(Table::default()),
                tasks: TaskTracker::new(),
                closing: CancellationToken::new(),
            }),
        })
    }

    /// Serves the API on `listener` until `shutdown` resolves, then releases
    /// every instance.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        let conns = TaskTracker::new();
        if self.inner.network.is_some() {
            let w = self.clone();
            self.inner.tasks.spawn(async move {
                let mut tick = tokio::time::interval(EGRESS_READ_INTERVAL);
                loop {
                    tokio::select! {
                        _ = w.inner.closing.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let all: Vec<_> = w
                        .inner
                        .state
                        .lock()
                        .unwrap()
                        .instances
                        .values()
                        .cloned()
                        .collect();
                    for i in all {
                        i.meter().await;
                    }
                }
            });
        }
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let worker = self.clone();
                    let closing = self.inner.closing.clone();
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let w = worker.clone();
                            async move { Ok::<_, Infallible>(w.handle(req).await) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = closing.cancelled() => {
                                conn.as_mut().graceful_shutdown();
                                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                            }
                        }
                    });
                }
            }
        }
        self.shutdown().await;
        conns.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
        Ok(())
    }

    /// The worker's metrics, for a process that embeds it and serves them
    /// on its own `/metrics` (the gateway does).
    pub fn registry(&self) -> prometheus::Registry {
        self.inner.metrics.registry.clone()
    }

    /// Releases all instances and removes the worker's directories.
    pub async fn shutdown(&self) {
        self.inner.closing.cancel();
        let all: Vec<_> = {
            let mut t = self.inner.state.lock().unwrap();
            t.instances.drain().map(|(_, i)| i).collect()
        };
        for i in &all {
            i.release().await;
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        if let Some(n) = &self.inner.network {
            n.drain().await;
        }
        self.inner.enforcer.cleanup();
        self.inner.bounds.cleanup();
        // iptables processes: off the runtime's threads.
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(n) = &inner.network {
                n.cleanup();
            }
        })
        .await;
        let _ = std::fs::remove_dir_all(&self.inner.work_root);
        tracing::info!(released = all.len(), "sandbox worker stopped");
    }

    /// Releases the instances whose owner is not in `live` and which are
    /// older than `min_age` (an owner that just started may not be seen
    /// yet). Instances with no owner are left alone.
    pub async fn release_orphans(
        &self,
        live: &std::collections::HashSet<String>,
        min_age: Duration,
    ) {
        let now = crate::instance::unix_now();
        let orphans: Vec<(Arc<Instance>, String)> = {
            let mut t = self.inner.state.lock().unwrap();
            let ids: Vec<String> = t
                .owners
                .iter()
                .filter(|(id, owner)| {
                    !live.contains(*owner)
                        && t.instances.get(*id).is_some_and(|i| {
                            now.saturating_sub(i.created_unix) >= min_age.as_secs()
                        })
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| {
                    let owner = t.owners.remove(&id)?;
                    Some((t.instances.remove(&id)?, owner))
                })
                .collect()
        };
        for (instance, owner) in orphans {
            let exit = instance.release().await;
            self.inner.metrics.lease_releases.inc();
            tracing::info!(instance = %instance.id, function = %instance.function, %owner, %exit, "instance released: its gateway's lease expired");
        }
    }

    pub fn capacity(&self) -> Capacity {
        let t = self.inner.state.lock().unwrap();
        Capacity {
            memory_mb_total: self.inner.memory_mb,
            memory_mb_used: t.reserved_mb,
            instances: t.instances.len() + t.starting.len(),
            memory_limit: self.inner.enforcer.kind(),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (&Method::GET, "/metrics") => text(StatusCode::OK, self.inner.metrics.render()),
            (&Method::GET, "/v1/capacity") => json(StatusCode::OK, &self.capacity()),
            (&Method::GET, "/v1/instances") => {
                let infos: Vec<_> = {
                    let t = self.inner.state.lock().unwrap();
                    t.instances.values().cloned().collect()
                };
                let infos: Vec<_> = infos.iter().map(|i| i.info()).collect();
                json(StatusCode::OK, &infos)
            }
            (&Method::GET, p) if p.starts_with("/v1/instances/") && p.ends_with("/log") => {
                let id = &p["/v1/instances/".len()..p.len() - "/log".len()];
                let found = self.inner.state.lock().unwrap().instances.get(id).cloned();
                let from = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("from="))
                    .and_then(|v| v.parse::<u64>().ok());
                match found {
                    Some(instance) => {
                        let (end, text) = instance.output.since(from).await;
                        let mut r = Response::new(Full::new(Bytes::from(text)));
                        r.headers_mut()
                            .insert(crate::api::LOG_END_HEADER, http::HeaderValue::from(end));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/octet-stream"),
                        );
                        r
                    }
                    None => api_error(ApiErrorCode::NotFound, format!("no instance {id}"), ""),
                }
            }
            (&Method::GET, p) if p.starts_with("/v1/instances/") => {
                let id = &p["/v1/instances/".len()..];
                let found = self.inner.state.lock().unwrap().instances.get(id).cloned();
                // A gateway whose call to an instance just broke asks with
                // `?wait_exit_ms=N`: the process may be exiting, and the
                // answer should say how it ended rather than race the reaping.
                let wait_ms = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("wait_exit_ms="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    .min(5000);
                match found {
                    Some(instance) => {
                        // A fresh reading of its egress, for the answer.
                        instance.meter().await;
                        if wait_ms > 0 {
                            let _ = tokio::time::timeout(
                                Duration::from_millis(wait_ms),
                                instance.exited(),
                            )
                            .await;
                        }
                        json(StatusCode::OK, &instance.info())
                    }
                    None => api_error(ApiErrorCode::NotFound, format!("no instance {id}"), ""),
                }
            }
            (&Method::POST, "/v1/instances") => {
                let body = match Limited::new(req.into_body(), MAX_API_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return api_error(ApiErrorCode::BadRequest, e.to_string(), ""),
                };
                match serde_json::from_slice::<CreateInstance>(&body) {
                    // On a task of its own: a gateway that goes away mid-start
                    // (killed, timed out) must not cancel it halfway, leaking
                    // its reservation; the instance it gets is released by
                    // its owner's lease or reclaimed by the gateway.
                    Ok(create) => {
                        let w = self.clone();
                        match self
                            .inner
                            .tasks
                            .spawn(async move { w.create(create).await })
                            .await
                        {
                            Ok(r) => r,
                            Err(e) => api_error(ApiErrorCode::StartFailed, e.to_string(), ""),
                        }
                    }
                    Err(e) => api_error(ApiErrorCode::BadRequest, e.to_string(), ""),
                }
            }
            (&Method::DELETE, p) if p.starts_with("/v1/instances/") => {
                let id = &p["/v1/instances/".len()..];
                let found = {
                    let mut t = self.inner.state.lock().unwrap();
                    t.owners.remove(id);
                    t.instances.remove(id)
                };
                match found {
                    Some(instance) => {
                        let exit = instance.release().await;
                        tracing::info!(instance = %id, %exit, "instance released");
                        let mut info = instance.info();
                        info.exit = Some(exit);
                        json(StatusCode::OK, &info)
                    }
                    None => api_error(ApiErrorCode::NotFound, format!("no instance {id}"), ""),
                }
            }
            _ => api_error(ApiErrorCode::NotFound, format!("no route {path}"), ""),
        }
    }

    async fn create(&self, req: CreateInstance) -> Response<Full<Bytes>> {
        if req.command.is_empty() {
            return api_error(ApiErrorCode::BadRequest, "command is empty".into(), "");
        }
        let safe_id = !req.instance_id.is_empty()
            && req
                .instance_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !safe_id {
            return api_error(
                ApiErrorCode::BadRequest,
                "instance_id must be [A-Za-z0-9_-]+".into(),
                "",
            );
        }
        if self.inner.closing.is_cancelled() {
            return api_error(ApiErrorCode::ShuttingDown, "worker is stopping".into(), "");
        }
        {
            let mut t = self.inner.state.lock().unwrap();
            if t.instances.contains_key(&req.instance_id)
                || t.starting.contains_key(&req.instance_id)
            {
                return api_error(ApiErrorCode::BadRequest, "duplicate instance_id".into(), "");
            }
            let want = u64::from(req.memory_mb);
            if t.reserved_mb + want > self.inner.memory_mb {
                return api_error(
                    ApiErrorCode::InsufficientMemory,
                    format!(
                        "needs {want} MB, {} MB of {} MB free",
                        self.inner.memory_mb - t.reserved_mb,
                        self.inner.memory_mb
                    ),
                    "",
                );
            }
            t.reserved_mb += want;
            t.starting.insert(req.instance_id.clone(), req.memory_mb);
            self.publish_usage(&t);
        }
        let began = tokio::time::Instant::now();
        let result = self.start(&req).await;
        let start_ms = began.elapsed().as_secs_f64() * 1000.0;
        let mut t = self.inner.state.lock().unwrap();
        t.starting.remove(&req.instance_id);
        match result {
            Ok(instance) => {
                t.instances.insert(instance.id.clone(), instance.clone());
                if let Some(owner) = &req.owner {
                    t.owners.insert(instance.id.clone(), owner.clone());
                }
                self.publish_usage(&t);
                drop(t);
                self.inner
                    .metrics
                    .process_starts
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!(
                    instance = %instance.id, function = %instance.function, pid = ?instance.pid,
                    address = %instance.address, memory_limit = instance.memory_limit.as_str(),
                    start_ms = format!("{start_ms:.2}"), "instance started"
                );
                self.watch_exit(instance.clone());
                json(StatusCode::CREATED, &instance.info())
            }
            Err(e) => {
                t.reserved_mb -= u64::from(req.memory_mb);
                self.publish_usage(&t);
                drop(t);
                self.inner
                    .metrics
                    .process_starts
                    .with_label_values(&["failed"])
                    .inc();
                tracing::warn!(instance = %req.instance_id, function = %req.function, error = %e, "instance failed to start");
                api_error(ApiErrorCode::StartFailed, e.to_string(), e.stderr_tail())
            }
        }
    }

    async fn start(&self, req: &CreateInstance) -> Result<Arc<Instance>, StartError> {
        // Plain processes share the host's network: they cannot be held to
        // anything narrower than the default.
        if self.inner.network.is_none() && req.egress.mode != crate::api::EgressMode::Internet {
            return Err(StartError::Network(format!(
                "egress {:?} needs a worker with --isolation namespaces (this one runs plain processes and cannot enforce it)",
                req.egress.mode.as_str()
            )));
        }
        let uid = self.inner.instance_uids.for_function(&req.function);
        let isolated = self.inner.isolation == crate::isolation::Isolation::Namespaces;
        let writable = self.own_paths(&req.writable_paths, "writable")?;
        let readable = self.own_paths(&req.readable_paths, "readable")?;
        if isolated {
            for w in &writable {
                crate::identity::grant(w, uid).map_err(|e| {
                    StartError::Prepare(std::io::Error::other(format!(
                        "writable path {}: {e}",
                        w.display()
                    )))
                })?;
            }
        }
        let limit = self
            .inner
            .enforcer
            .prepare(&req.instance_id, req.memory_mb)
            .map_err(StartError::Prepare)?;
        let bounds = self
            .inner
            .bounds
            .prepare(&req.instance_id, req.memory_mb, limit.v2_cgroup())
            .map_err(StartError::Prepare)?;
        // Last: everything above is undone by dropping it, the network by
        // the instance (or its failed start).
        let net = match &self.inner.network {
            Some(n) => Some(n.create(&req.egress).await.map_err(StartError::Network)?),
            None => None,
        };
        let spec = Spec {
            stop: self.inner.closing.clone(),
            instance_id: req.instance_id.clone(),
            function: req.function.clone(),
            command: req.command.clone(),
            env: req.env.clone(),
            memory_mb: req.memory_mb,
            start_timeout: Duration::from_millis(req.start_timeout_ms),
            host: self.inner.instance_host,
            workdir: self.inner.work_root.join(&req.instance_id),
            work_root: self.inner.work_root.clone(),
            isolation: self.inner.isolation,
            max_open_files: self.inner.max_open_files,
            bounds,
            net,
            egress_metric: self.inner.metrics.egress_bytes.clone(),
            writable,
            readable,
            disk_mb: req.disk_mb,
            uid,
            ca_certs: self.inner.ca_certs.clone(),
        };
        let started = Instance::start(spec, limit).await;
        if let Some(n) = &self.inner.network {
            n.refill(&req.egress);
        }
        started
    }

    /// Checks a request's readable or writable host paths: absolute,
    /// existing, outside the instance's own skeleton ([`crate::rootfs`])
    /// and the work root (which holds the instances' roots); writable ones
    /// are directories.
    fn own_paths(&self, paths: &[String], what: &str) -> Result<Vec<PathBuf>, StartError> {
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            let bad = |why: &str| {
                StartError::Prepare(std::io::Error::other(format!("{what} path {p:?}: {why}")))
            };
            let path = crate::rootfs::check_path(p).map_err(bad)?;
            let exists = match what {
                "writable" => path.is_dir(),
                _ => path.exists(),
            };
            if !exists {
                return Err(bad(match what {
                    "writable" => "not a directory on this worker",
                    _ => "does not exist on this worker",
                }));
            }
            if path.starts_with(&self.inner.work_root) || self.inner.work_root.starts_with(&path) {
                return Err(bad("overlaps the worker's work root"));
            }
            out.push(path);
        }
        Ok(out)
    }

    /// Returns an instance's memory when its process ends, however it ends.
    fn watch_exit(&self, instance: Arc<Instance>) {
        let worker = self.clone();
        self.inner.tasks.spawn(async move {
            let exit = instance.exited().await;
            if !exit.released {
                worker.inner.metrics.crashes.inc();
                if exit.oom_killed {
                    worker.inner.metrics.oom_kills.inc();
                }
                tracing::warn!(instance = %instance.id, function = %instance.function, %exit, "instance exited unexpectedly");
            }
            let mut t = worker.inner.state.lock().unwrap();
            t.reserved_mb -= u64::from(instance.memory_mb);
            worker.publish_usage(&t);
        });
    }

    fn publish_usage(&self, t: &Table) {
        let m = &self.inner.metrics;
        m.memory_used_bytes
            .set((t.reserved_mb * 1024 * 1024) as i64);
        m.instances
            .set((t.instances.len() + t.starting.len()) as i64);
    }
}

/// Binds `cfg.listen`, logs the bound address, and serves until `shutdown`.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let worker = Worker::new(&cfg)?;
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let fleet = match cfg.fleet.clone() {
        Some(mut f) => {
            if f.url.is_empty() {
                f.url = format!("http://{addr}");
            }
            if f.id.is_empty() {
                f.id = crate::fleet::id_from_url(&f.url);
            }
            // Joined before serving: a worker that cannot reach its fleet
            // would never release a dead gateway's instances.
            let joined = match worker.join_fleet(f).await {
                Ok(j) => j,
                Err(e) => {
                    worker.shutdown().await;
                    return Err(std::io::Error::other(format!("fleet: {e}")));
                }
            };
            Some(tokio::spawn(joined.run(stop.clone())))
        }
        None => None,
    };
    tracing::info!(%addr, "sandbox-runtime listening");
    let served = worker.serve(listener, shutdown).await;
    stop.cancel();
    if let Some(f) = fleet {
        let _ = f.await;
    }
    served
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn api_error(code: ApiErrorCode, message: String, stderr_tail: &str) -> Response<Full<Bytes>> {
    let status = match code {
        ApiErrorCode::InsufficientMemory => StatusCode::TOO_MANY_REQUESTS,
        ApiErrorCode::StartFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ApiErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ApiErrorCode::NotFound => StatusCode::NOT_FOUND,
        ApiErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    json(
        status,
        &ApiError {
            code,
            message,
            stderr_tail: stderr_tail.to_string(),
        },
    )
}
