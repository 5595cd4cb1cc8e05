//! fngate: an HTTPS function invocation gateway.
//!
//! The request path, in the order a request meets it (see ARCHITECTURE.md):
//!
//! 1. [`connection`]: accept, connection limits, TLS (rustls), HTTP/1.1 or HTTP/2.
//! 2. [`pipeline`]: the ordered stages of one invocation.
//! 3. [`api`]: the cloud dialects (Function Compute 3.0, AWS Lambda, Azure
//!    Functions HTTP triggers) that decode requests and render answers and
//!    [`error::InvokeError`]s; [`auth`] holds what their request signatures
//!    and function keys share.
//! 4. [`scheduler`]: bin-pack routing, best-fit placement, instance lifecycle.
//! 5. [`workers`]: the sandbox worker API client; invocations then go straight
//!    to the instance over [`upstream`] connections.
//!
//! Beside the path: [`shards`] (the runtime threads), [`config`], [`metrics`],
//! [`admin`], [`ids`].

pub mod admin;
pub mod api;
pub mod asynchronous;
pub mod auth;
pub mod backend;
pub mod body;
pub mod config;
pub mod connection;
pub mod dispatch;
pub mod error;
pub mod execute;
pub mod families;
pub mod fleet;
pub mod ids;
pub mod ingress;
pub mod metering;
pub mod metrics;
pub mod pipeline;
pub mod scheduler;
pub mod shards;
pub mod throttle;
pub mod upstream;
pub mod workers;

#[cfg(test)]
mod layering;

use config::Config;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] connection::tls::TlsError),
    #[error("embedded sandbox worker: {0}")]
    EmbeddedWorker(#[source] std::io::Error),
    #[error("cannot open the usage log {path}: {source}")]
    UsageLog {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the runtime shards: {0}")]
    Shards(#[source] std::io::Error),
    #[error("worker unreachable: {0}")]
    Worker(#[from] workers::WorkerError),
    #[error("asynchronous task store: {0}")]
    AsyncStore(#[from] asynchronous::OpenError),
    #[error("backends: {0}")]
    Backends(String),
    #[error("fleet: {0}")]
    Fleet(#[from] fleet::FleetError),
}

/// Runs the gateway until `shutdown` resolves, then drains: stops accepting,
/// lets in-flight invocations finish (up to `drain_timeout`), releases every
/// instance, and stops the embedded worker.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let g = &config.gateway;
    let metrics = Arc::new(metrics::Metrics::new());
    let client = workers::http_client();
    let stop = CancellationToken::new();
    // Before anything that pools upstream connections per shard.
    let shards = shards::Shards::start(g.threads).map_err(RunError::Shards)?;

    // Workers: the configured ones, or one embedded in this process.
    let mut embedded = None;
    let mut urls = config.workers.clone();
    // A fleet gateway that discovers its workers has no embedded one.
    let discovers = config.fleet.as_ref().is_some_and(|f| f.discover_workers);
    if urls.is_empty() && !discovers {
        let cfg = sandbox_runtime::Config {
            listen: "127.0.0.1:0".parse().expect("literal"),
            memory_mb: g.embedded_worker_memory_mb,
            instance_host: None,
            work_root: None,
            memory_limit: sandbox_runtime::memory::MemoryLimitMode::Auto,
            isolation: g.embedded_worker_isolation,
            max_pids: sandbox_runtime::bounds::default_max_pids(g.embedded_worker_isolation),
            max_open_files: 1024,
            instance_subnet: g.embedded_worker_subnet,
            instance_uids: Default::default(),
            dns: None,
            ca_certs: "/etc/ssl/certs".into(),
            netns_pool: 2,
            // Private to this gateway: it lives and dies with it.
            fleet: None,
        };
        let worker = sandbox_runtime::Worker::new(&cfg).map_err(RunError::EmbeddedWorker)?;
        let _ = metrics.embedded_worker.set(worker.registry());
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(RunError::EmbeddedWorker)?;
        let addr = listener.local_addr().map_err(RunError::EmbeddedWorker)?;
        urls.push(format!("http://{addr}"));
        let token = stop.clone();
        embedded = Some(tokio::spawn(async move {
            worker.serve(listener, token.cancelled_owned()).await
        }));
        tracing::info!(%addr, "started the embedded sandbox worker");
    }
    let timeouts = workers::WorkerTimeouts {
        call: g.worker_timeout,
        start: g.instance_start_timeout,
    };
    let mut workers = Vec::new();
    for url in urls {
        workers.push(Arc::new(
            connect_worker(url, client.clone(), timeouts).await?,
        ));
    }

    // Fleet mode: connected before anything is served, so the first answer
    // already counts the other members.
    let fleet = match &config.fleet {
        Some(cfg) => {
            let f = fleet::Fleet::connect(cfg.clone(), &metrics.registry).await?;
            let buckets = fleet::membership::buckets(&f).await?;
            tracing::info!(fleet = %cfg.name, id = %cfg.id, "joined the fleet's engine");
            Some((f, buckets))
        }
        None => None,
    };

    let (usage_log, usage_task) = match &config.usage {
        Some(cfg) => {
            let health = Arc::new(metering::usage_log::LogHealth::new(
                metrics.usage_log_write_errors.clone(),
            ));
            let (log, task) =
                metering::usage_log::UsageLog::start(cfg.clone(), health).map_err(|source| {
                    RunError::UsageLog {
                        path: cfg.path.clone(),
                        source,
                    }
                })?;
            tracing::info!(path = %cfg.path.display(), sync_interval_ms = cfg.sync_interval.as_millis() as u64, "usage log open");
            (Some(log), Some(task))
        }
        None => (None, None),
    };
    let usage_health = usage_log.as_ref().map(|l| l.health.clone());
    // `redis` limits: rates and scale-out on the fleet's count.
    let redis = config
        .fleet
        .as_ref()
        .and_then(|c| Some((c, c.redis_url.as_ref()?)));
    let exact = match redis {
        Some((cfg, url)) => {
            let url = String::from_utf8_lossy(url.expose()).into_owned();
            let exact = fleet::exact::ExactLimits::new(
                &url,
                &cfg.name,
                cfg.redis_timeout,
                &metrics.registry,
            )
            .map_err(|e| RunError::Fleet(fleet::FleetError::Redis(e)))?;
            // An instance's entry in the fleet's count lapses as its
            // owner's membership does (the workers release it then too).
            Some((Arc::new(exact), cfg.member_ttl))
        }
        None => None,
    };
    let sharing = throttle::shared::Sharing {
        // This process's incarnation: a restarted gateway of the same id
        // does not inherit what its predecessor left on the workers.
        owner: fleet
            .as_ref()
            .map(|(f, _)| sandbox_runtime::fleet::owner(&f.cfg.id, f.started_unix_ms)),
        count: exact.clone().map(|(e, lease)| {
            let e: Arc<dyn throttle::shared::SharedCount> = e;
            (e, lease)
        }),
    };
    let networks = metrics::NetworkIndex::new(&config.ingress.vpcs);
    let scheduler = scheduler::Scheduler::new(
        &config.functions,
        workers,
        &metrics,
        &networks,
        &g.throttle,
        scheduler::Times {
            start_timeout: g.instance_start_timeout,
            worker_timeout: g.worker_timeout,
            max_lifetime: g.max_instance_lifetime,
        },
        scheduler::Outside {
            sharing,
            usage: usage_log.clone(),
        },
    );
    scheduler::reaper::spawn(&scheduler);
    let (tls_config, certificates) = connection::tls::server_config(&g.tls)?;
    let tls = tokio_rustls::TlsAcceptor::from(tls_config);
    // In a fleet, the queue is the fleet's (JetStream), shared by every member.
    let (shared_store, kills): (Option<Arc<dyn asynchronous::store::TaskStore>>, _) = match &fleet {
        Some((f, _)) => {
            let (store, kills) =
                fleet::queue::JetStreamStore::open(f.clone(), &g.asynchronous).await?;
            (Some(store), Some(kills))
        }
        None => (None, None),
    };
    let queue = asynchronous::AsyncQueue::open(
        g.asynchronous.clone(),
        config
            .functions
            .iter()
            .map(|f| (&f.name, f.asynchronous.max_concurrency)),
        asynchronous::AsyncMetrics::new(&metrics.registry),
        shared_store,
    )?;
    let depth = queue.store.depth();
    match g.asynchronous.store {
        _ if fleet.is_some() => {
            tracing::info!("asynchronous tasks in the fleet's JetStream queue")
        }
        config::AsyncStoreKind::Embedded => {
            tracing::info!(path = %g.asynchronous.store_path.display(), tasks = depth.tasks, destination_records = depth.deliveries, "asynchronous task store open")
        }
        config::AsyncStoreKind::Memory => tracing::warn!(
            "asynchronous task store in memory: accepted tasks are lost if the gateway stops"
        ),
    }
    let routes = execute::routes::table(&config, &metrics.registry).map_err(RunError::Backends)?;
    let executor = execute::Executor {
        sandbox: execute::sandbox::Sandbox {
            scheduler: scheduler.clone(),
            max_response_bytes: g.limits.max_response_bytes,
        },
        routes: routes.clone(),
        keep_legs: usage_log.is_some(),
    };
    let pipeline = Arc::new(pipeline::Pipeline::new(
        scheduler.clone(),
        &config,
        &metrics,
        usage_log,
        Arc::new(queue),
        executor,
    ));
    // The fleet's tasks (heartbeat, leases) end first at shutdown.
    let stop_membership = CancellationToken::new();
    if let Some((cfg, (exact, _))) = config.fleet.as_ref().zip(exact.as_ref()) {
        tokio::spawn(fleet::exact::keep_leases(
            exact.clone(),
            scheduler.clone(),
            cfg.heartbeat,
            cfg.member_ttl,
            stop_membership.clone(),
        ));
        tracing::info!(
            timeout_ms = cfg.redis_timeout.as_millis() as u64,
            "fleet-wide rates and scale-out checked on Redis"
        );
    }
    if let Some(mut kills) = kills {
        // A stop through any gateway kills the attempt where it runs.
        let p = pipeline.clone();
        tokio::spawn(async move {
            while let Some(k) = kills.recv().await {
                p.asynchronous.kill(&k.function, &k.id);
            }
        });
    }
    let dispatcher = tokio::spawn(dispatch::dispatch(pipeline.clone()));
    let deliverer = tokio::spawn(pipeline.asynchronous.clone().deliver());
    let conn_metrics = Arc::new(connection::ConnectionMetrics::new(&metrics.registry));
    let server = connection::Server::new(
        pipeline.clone(),
        config.ingress.clone(),
        tls,
        g.limits.clone(),
        conn_metrics.clone(),
    );

    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { what, addr, source })
    };
    let https = bind("the HTTPS listener", g.listen).await?;
    let admin_l = bind("the admin listener", g.admin_listen).await?;
    let https_addr = https.local_addr().ok();
    let admin_addr = admin_l.local_addr().ok();
    // Every HTTPS listener: the public one, private endpoints, PROXY listeners.
    let mut listeners = vec![(https, connection::ListenerKind::Public)];
    for (addr, vpc) in &config.ingress.private_endpoints {
        let l = bind("a private endpoint", *addr).await?;
        tracing::info!(kind = "private_endpoint", vpc = config.ingress.vpcs.name(*vpc), addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
        listeners.push((l, connection::ListenerKind::PrivateEndpoint(*vpc)));
    }
    for addr in &config.ingress.proxy_listeners {
        let l = bind("a PROXY protocol listener", *addr).await?;
        tracing::info!(kind = "proxy", addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
        listeners.push((l, connection::ListenerKind::Proxy));
    }

    let stop_accepting = CancellationToken::new();
    let conns = Arc::new(connection::Connections {
        // One connection budget shared by every listener.
        permits: Arc::new(tokio::sync::Semaphore::new(
            g.limits.max_connections as usize,
        )),
        graceful: hyper_util::server::graceful::GracefulShutdown::new(),
        draining: stop_accepting.clone(),
        tasks: TaskTracker::new(),
        shards,
    });
    let accepts: Vec<_> = listeners
        .into_iter()
        .map(|(l, kind)| {
            tokio::spawn(
                server
                    .clone()
                    .accept_loop(l, kind, stop_accepting.clone(), conns.clone()),
            )
        })
        .collect();
    let admin = Arc::new(admin::Admin {
        metrics: metrics.clone(),
        ingress: config.ingress.clone(),
        scheduler: scheduler.clone(),
        routes,
        usage: usage_health,
        fleet: fleet.as_ref().map(|(f, _)| f.clone()),
        started: Default::default(),
    });
    let admin_task = tokio::spawn(admin.clone().serve(admin_l, stop.clone()));
    let reloads = conn_metrics.tls_reloads.clone();
    let cert_task = tokio::spawn(certificates.watch(reloads, stop.clone()));
    let membership = fleet.map(|(f, buckets)| {
        let me = fleet::membership::Member {
            id: f.cfg.id.clone(),
            started_unix_ms: f.started_unix_ms,
            https: https_addr.map(|a| a.to_string()).unwrap_or_default(),
            admin: admin_addr.map(|a| a.to_string()).unwrap_or_default(),
        };
        let discovery = fleet::membership::Discovery {
            client: client.clone(),
            timeouts,
        };
        tokio::spawn(fleet::membership::run(
            f,
            buckets,
            me,
            scheduler.clone(),
            discovery,
            stop_membership.clone(),
        ))
    });
    admin
        .started
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(
        https = %https_addr.map(|a| a.to_string()).unwrap_or_default(),
        admin = %admin_addr.map(|a| a.to_string()).unwrap_or_default(),
        functions = config.functions.len(),
        threads = g.threads,
        "fngate listening"
    );

    shutdown.await;
    tracing::info!("draining");
    scheduler.stop_starts();
    // Out of the fleet first: the others take this gateway's share now.
    stop_membership.cancel();
    if let Some(m) = membership {
        let _ = m.await;
    }
    // Stop accepting; the accept loop drops its listener as it returns.
    stop_accepting.cancel();
    for a in accepts {
        let _ = a.await;
    }
    // The accept loops have ended: theirs were the other references.
    let conns = Arc::into_inner(conns).expect("accept loops have ended");
    conns.tasks.close();
    let deadline = tokio::time::Instant::now() + g.drain_timeout;
    let connections = tokio::time::timeout_at(deadline, async {
        conns.graceful.shutdown().await;
        conns.tasks.wait().await;
    })
    .await;
    // Asynchronous invocations, whatever the connections did: no more
    // leases; running attempts get what is left of the drain; waiting tasks
    // stay in the store for the next start.
    pipeline.asynchronous.stop();
    let attempts = tokio::time::timeout_at(deadline, pipeline.asynchronous.wait()).await;
    if connections.is_err() || attempts.is_err() {
        tracing::warn!(
            timeout_s = g.drain_timeout.as_secs(),
            "drain timed out; closing the remaining connections and attempts"
        );
    }
    scheduler.shutdown().await;
    // Attempts still running have lost their instances: they end now.
    let _ = tokio::time::timeout(Duration::from_secs(5), pipeline.asynchronous.wait()).await;
    let _ = dispatcher.await;
    let _ = deliverer.await;
    let depth = pipeline.asynchronous.store.depth();
    tracing::info!(
        tasks = depth.tasks,
        still_running = pipeline.asynchronous.running(),
        destination_records = depth.deliveries,
        "asynchronous tasks not done at stop are kept in the store for the next start"
    );
    if let Some(task) = usage_task {
        task.close().await;
    }
    stop.cancel();
    let _ = admin_task.await;
    let _ = cert_task.await;
    if let Some(w) = embedded {
        let _ = w.await;
    }
    conns.shards.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Workers may come up after the gateway: retry for a while before giving up.
async fn connect_worker(
    url: String,
    client: workers::HttpClient,
    timeouts: workers::WorkerTimeouts,
) -> Result<workers::Worker, workers::WorkerError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match workers::Worker::connect(url.clone(), client.clone(), timeouts).await {
            Ok(w) => return Ok(w),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "worker not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
