//! `run`: builds the gateway from its configuration, bottom layer first,
//! serves until asked to stop, then drains. Every choice between a gateway
//! alone and one in a fleet is made here, once, by what is built.

use crate::config::{self, Config};
use crate::throttle::shared::{SharedCount, Sharing};
use crate::{
    admin, asynchronous, connection, dispatch, execute, fleet, functions, metering, metrics,
    pipeline, reload, scheduler, shards, workers,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
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
    Backends(#[from] execute::routes::RoutesError),
    #[error("fleet: {0}")]
    Fleet(#[from] fleet::FleetError),
}

/// A fleet this gateway joined, with its membership's buckets.
type Joined = (Arc<fleet::Fleet>, fleet::membership::Buckets);
/// `redis` limits: the fleet's count, and the lease its entries carry.
type Exact = (Arc<fleet::exact::ExactLimits>, Duration);
/// The embedded worker's serving task.
type Embedded = JoinHandle<std::io::Result<()>>;
/// The stops of tasks other members ask for.
type Kills = tokio::sync::mpsc::UnboundedReceiver<fleet::queue::Kill>;
type Usage = (
    Option<metering::usage_log::UsageLog>,
    Option<metering::usage_log::UsageLogTask>,
);

/// Runs the gateway until `shutdown` resolves, then drains: stops accepting,
/// lets in-flight invocations finish (up to `drain_timeout`), releases every
/// instance, and stops the embedded worker.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let drain_timeout = config.gateway.drain_timeout;
    let built = Built::new(&config).await?;
    let running = built.serve(config).await?;
    shutdown.await;
    running.drain(drain_timeout).await;
    Ok(())
}

/// Everything below the listeners, built bottom layer first.
struct Built {
    metrics: Arc<metrics::Metrics>,
    client: workers::HttpClient,
    timeouts: workers::WorkerTimeouts,
    stop: CancellationToken,
    shards: shards::Shards,
    embedded: Option<Embedded>,
    fleet: Option<Joined>,
    exact: Option<Exact>,
    /// The usage log as requests and releases read it, and its writers.
    usage: Arc<metering::usage_log::LiveLog>,
    usage_writers: Arc<std::sync::Mutex<metering::usage_log::Writers>>,
    scheduler: Arc<scheduler::Scheduler>,
    pipeline: Arc<pipeline::Pipeline>,
    /// The registry and the routes' builder, kept for reloads.
    functions: functions::Functions,
    builder: execute::routes::Builder,
    kills: Option<Kills>,
    tls: (
        Arc<rustls::ServerConfig>,
        Arc<connection::tls::Certificates>,
    ),
}

impl Built {
    async fn new(config: &Config) -> Result<Built, RunError> {
        let g = &config.gateway;
        let metrics = Arc::new(metrics::Metrics::new());
        let client = workers::http_client();
        let stop = CancellationToken::new();
        // Before anything that pools upstream connections per shard.
        let shards = shards::Shards::start(g.threads).map_err(RunError::Shards)?;
        let timeouts = workers::WorkerTimeouts {
            call: g.worker_timeout,
            start: g.instance_start_timeout,
        };
        let (workers, embedded) = start_workers(config, &metrics, &client, timeouts, &stop).await?;
        // Fleet mode: connected before anything is served, so the first
        // answer already counts the other members.
        let fleet = join_fleet(config, &metrics).await?;
        let (usage_log, usage_task) = open_usage(config, &metrics)?;
        let usage = Arc::new(metering::usage_log::LiveLog::new(usage_log));
        let usage_writers = metering::usage_log::Writers::new(usage_task);
        let exact = exact_limits(config, &metrics)?;
        let sharing = Sharing {
            // This process's incarnation: a restarted gateway of the same id
            // does not inherit what its predecessor left on the workers.
            owner: (fleet.as_ref())
                .map(|(f, _)| sandbox_runtime::fleet::owner(&f.cfg.id, f.started_unix_ms)),
            count: exact
                .clone()
                .map(|(e, lease)| (e as Arc<dyn SharedCount>, lease)),
        };
        let networks = metrics::NetworkIndex::new(&config.ingress.vpcs);
        let times = scheduler::Times {
            start_timeout: g.instance_start_timeout,
            worker_timeout: g.worker_timeout,
            max_lifetime: g.max_instance_lifetime,
        };
        let outside = scheduler::Outside {
            sharing,
            usage: usage.clone(),
        };
        let functions = functions::Functions::new(&config.functions, &metrics, &networks);
        let throttle = &g.throttle;
        let scheduler =
            scheduler::Scheduler::new(&functions, workers, &metrics, throttle, times, outside);
        scheduler::reaper::spawn(&scheduler);
        let tls = connection::tls::server_config(&g.tls)?;
        let (queue, kills) = open_queue(config, &metrics, fleet.as_ref()).await?;
        let builder = execute::routes::Builder::new(&g.backends, &metrics.registry);
        let executor = execute::Executor {
            sandbox: execute::sandbox::Sandbox {
                scheduler: scheduler.clone(),
                max_response_bytes: g.limits.max_response_bytes,
            },
            routes: arc_swap::ArcSwap::new(builder.table(config)?),
            usage: usage.clone(),
        };
        let queue = Arc::new(queue);
        let pipeline = pipeline::Pipeline::new(
            scheduler.clone(),
            config,
            &metrics,
            usage.clone(),
            queue,
            executor,
        );
        Ok(Built {
            metrics,
            client,
            timeouts,
            stop,
            shards,
            embedded,
            fleet,
            exact,
            usage,
            usage_writers,
            scheduler,
            pipeline: Arc::new(pipeline),
            functions,
            builder,
            kills,
            tls,
        })
    }

    /// Starts what runs beside the request path (the fleet's tasks, the
    /// dispatcher and deliverer), then the listeners and the admin API.
    async fn serve(mut self, config: Config) -> Result<Running, RunError> {
        let g = &config.gateway;
        // The fleet's tasks (heartbeat, leases) end first at shutdown.
        let stop_membership = CancellationToken::new();
        self.spawn_fleet_tasks(&config, &stop_membership);
        let dispatcher = tokio::spawn(dispatch::dispatch(self.pipeline.clone()));
        let deliverer = tokio::spawn(self.pipeline.asynchronous.clone().deliver());
        let conn_metrics = Arc::new(connection::ConnectionMetrics::new(&self.metrics.registry));
        let (tls_config, certificates) = self.tls;
        let server = connection::Server::new(
            self.pipeline.clone(),
            config.ingress.clone(),
            tokio_rustls::TlsAcceptor::from(tls_config),
            g.limits.clone(),
            conn_metrics.clone(),
        );
        let (listeners, admin_l) = bind_listeners(&config).await?;
        let https_addr = listeners[0].0.local_addr().ok();
        let admin_addr = admin_l.local_addr().ok();
        let stop_accepting = CancellationToken::new();
        let conns = Arc::new(connection::Connections {
            // One connection budget shared by every listener.
            permits: Arc::new(tokio::sync::Semaphore::new(
                g.limits.max_connections as usize,
            )),
            graceful: hyper_util::server::graceful::GracefulShutdown::new(),
            draining: stop_accepting.clone(),
            tasks: TaskTracker::new(),
            shards: self.shards,
        });
        let accepts: Vec<_> = (listeners.into_iter())
            .map(|(l, kind)| {
                let accept =
                    (server.clone()).accept_loop(l, kind, stop_accepting.clone(), conns.clone());
                tokio::spawn(accept)
            })
            .collect();
        let (threads, functions) = (g.threads, config.functions.len());
        let reloader = reload::Reloader::new(
            config,
            reload::Parts {
                scheduler: self.scheduler.clone(),
                pipeline: self.pipeline.clone(),
                server: server.clone(),
                builder: self.builder,
                metrics: self.metrics.clone(),
                functions: self.functions,
                usage: self.usage.clone(),
                usage_writers: self.usage_writers.clone(),
            },
        );
        let reload_task = tokio::spawn(reloader.clone().watch(self.stop.clone()));
        let admin = Arc::new(admin::Admin {
            metrics: self.metrics.clone(),
            reloader,
            scheduler: self.scheduler.clone(),
            pipeline: self.pipeline.clone(),
            usage: self.usage.clone(),
            fleet: self.fleet.as_ref().map(|(f, _)| f.clone()),
            started: Default::default(),
        });
        let admin_task = tokio::spawn(admin.clone().serve(admin_l, self.stop.clone()));
        let reloads = conn_metrics.tls_reloads.clone();
        let cert_task = tokio::spawn(certificates.watch(reloads, self.stop.clone()));
        let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let membership = self.fleet.map(|(f, buckets)| {
            let me = fleet::membership::Member {
                id: f.cfg.id.clone(),
                started_unix_ms: f.started_unix_ms,
                https: addr(https_addr),
                admin: addr(admin_addr),
            };
            let discovery = fleet::membership::Discovery {
                client: self.client,
                timeouts: self.timeouts,
            };
            let (sched, stop) = (self.scheduler.clone(), stop_membership.clone());
            tokio::spawn(fleet::membership::run(
                f, buckets, me, sched, discovery, stop,
            ))
        });
        admin
            .started
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(
            https = %addr(https_addr),
            admin = %addr(admin_addr),
            functions,
            threads,
            "fngate listening"
        );
        Ok(Running {
            scheduler: self.scheduler,
            pipeline: self.pipeline,
            stop_membership,
            membership,
            stop_accepting,
            accepts,
            conns,
            dispatcher,
            deliverer,
            usage_writers: self.usage_writers.clone(),
            stop: self.stop,
            tasks: vec![admin_task, cert_task, reload_task],
            embedded: self.embedded,
        })
    }

    /// `redis` limits: the leases of this gateway's instances kept in the
    /// fleet's count; in a fleet, stops other members ask for.
    fn spawn_fleet_tasks(&mut self, config: &Config, stop_membership: &CancellationToken) {
        if let Some((cfg, (exact, _))) = config.fleet.as_ref().zip(self.exact.as_ref()) {
            let (every, lease, stop) = (cfg.heartbeat, cfg.member_ttl, stop_membership.clone());
            let sched = self.scheduler.clone();
            tokio::spawn(fleet::exact::keep_leases(
                exact.clone(),
                sched,
                every,
                lease,
                stop,
            ));
            let timeout_ms = cfg.redis_timeout.as_millis() as u64;
            tracing::info!(
                timeout_ms,
                "fleet-wide rates and scale-out checked on Redis"
            );
        }
        if let Some(mut kills) = self.kills.take() {
            // A stop through any gateway kills the attempt where it runs.
            let q = self.pipeline.asynchronous.clone();
            tokio::spawn(async move {
                while let Some(k) = kills.recv().await {
                    q.kill(&k.function, &k.id);
                }
            });
        }
    }
}

/// What a drain stops, in order.
struct Running {
    scheduler: Arc<scheduler::Scheduler>,
    pipeline: Arc<pipeline::Pipeline>,
    stop_membership: CancellationToken,
    membership: Option<JoinHandle<()>>,
    stop_accepting: CancellationToken,
    accepts: Vec<JoinHandle<()>>,
    conns: Arc<connection::Connections>,
    dispatcher: JoinHandle<()>,
    deliverer: JoinHandle<()>,
    usage_writers: Arc<std::sync::Mutex<metering::usage_log::Writers>>,
    /// The admin listener, the certificate watcher, the embedded worker.
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    embedded: Option<Embedded>,
}

impl Running {
    async fn drain(self, drain_timeout: Duration) {
        tracing::info!("draining");
        self.scheduler.stop_starts();
        // Out of the fleet first: the others take this gateway's share now.
        self.stop_membership.cancel();
        if let Some(m) = self.membership {
            let _ = m.await;
        }
        // Stop accepting; the accept loop drops its listener as it returns.
        self.stop_accepting.cancel();
        for a in self.accepts {
            let _ = a.await;
        }
        // The accept loops have ended: theirs were the other references.
        let conns = Arc::into_inner(self.conns).expect("accept loops have ended");
        conns.tasks.close();
        let deadline = tokio::time::Instant::now() + drain_timeout;
        let connections = tokio::time::timeout_at(deadline, async {
            conns.graceful.shutdown().await;
            conns.tasks.wait().await;
        })
        .await;
        // Asynchronous invocations, whatever the connections did: no more
        // leases; running attempts get what is left of the drain; waiting
        // tasks stay in the store for the next start.
        let queue = &self.pipeline.asynchronous;
        queue.stop();
        let attempts = tokio::time::timeout_at(deadline, queue.wait()).await;
        if connections.is_err() || attempts.is_err() {
            tracing::warn!(
                timeout_s = drain_timeout.as_secs(),
                "drain timed out; closing the remaining connections and attempts"
            );
        }
        self.scheduler.shutdown().await;
        // Attempts still running have lost their instances: they end now.
        let _ = tokio::time::timeout(Duration::from_secs(5), queue.wait()).await;
        let _ = self.dispatcher.await;
        let _ = self.deliverer.await;
        let depth = queue.store.depth();
        tracing::info!(
            tasks = depth.tasks,
            still_running = queue.running(),
            destination_records = depth.deliveries,
            "asynchronous tasks not done at stop are kept in the store for the next start"
        );
        metering::usage_log::Writers::close_all(&self.usage_writers).await;
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(w) = self.embedded {
            let _ = w.await;
        }
        conns.shards.stop().await;
        tracing::info!("stopped");
    }
}

/// The configured workers, or one embedded in this process (not when a
/// fleet gateway discovers its workers).
async fn start_workers(
    config: &Config,
    metrics: &metrics::Metrics,
    client: &workers::HttpClient,
    timeouts: workers::WorkerTimeouts,
    stop: &CancellationToken,
) -> Result<(Vec<Arc<workers::Worker>>, Option<Embedded>), RunError> {
    let mut embedded = None;
    let mut urls = config.workers.clone();
    let discovers = config.fleet.as_ref().is_some_and(|f| f.discover_workers);
    if urls.is_empty() && !discovers {
        let (url, task) = embedded_worker(&config.gateway, metrics, stop).await?;
        urls.push(url);
        embedded = Some(task);
    }
    let mut workers = Vec::new();
    for url in urls {
        workers.push(Arc::new(
            connect_worker(url, client.clone(), timeouts).await?,
        ));
    }
    Ok((workers, embedded))
}

/// A sandbox worker in this process, private to it: it lives and dies
/// with the gateway. Its metric families are served on the gateway's.
async fn embedded_worker(
    g: &config::GatewayConfig,
    metrics: &metrics::Metrics,
    stop: &CancellationToken,
) -> Result<(String, Embedded), RunError> {
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
        fleet: None,
    };
    let worker = sandbox_runtime::Worker::new(&cfg).map_err(RunError::EmbeddedWorker)?;
    let _ = metrics.embedded_worker.set(worker.registry());
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(RunError::EmbeddedWorker)?;
    let addr = listener.local_addr().map_err(RunError::EmbeddedWorker)?;
    let token = stop.clone();
    let task = tokio::spawn(async move { worker.serve(listener, token.cancelled_owned()).await });
    tracing::info!(%addr, "started the embedded sandbox worker");
    Ok((format!("http://{addr}"), task))
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

async fn join_fleet(
    config: &Config,
    metrics: &metrics::Metrics,
) -> Result<Option<Joined>, RunError> {
    let Some(cfg) = &config.fleet else {
        return Ok(None);
    };
    let f = fleet::Fleet::connect(cfg.clone(), &metrics.registry).await?;
    let buckets = fleet::membership::buckets(&f).await?;
    tracing::info!(fleet = %cfg.name, id = %cfg.id, "joined the fleet's engine");
    Ok(Some((f, buckets)))
}

fn open_usage(config: &Config, metrics: &metrics::Metrics) -> Result<Usage, RunError> {
    let Some(cfg) = &config.usage else {
        return Ok((None, None));
    };
    let errors = metrics.usage_log_write_errors.clone();
    let (log, task) =
        metering::usage_log::UsageLog::open(cfg, errors).map_err(|source| RunError::UsageLog {
            path: cfg.path.clone(),
            source,
        })?;
    let sync_interval_ms = cfg.sync_interval.as_millis() as u64;
    tracing::info!(path = %cfg.path.display(), sync_interval_ms, "usage log open");
    Ok((Some(log), Some(task)))
}

/// `redis` limits: rates and scale-out on the fleet's count.
fn exact_limits(config: &Config, metrics: &metrics::Metrics) -> Result<Option<Exact>, RunError> {
    let Some((cfg, url)) = (config.fleet.as_ref()).and_then(|c| Some((c, c.redis_url.as_ref()?)))
    else {
        return Ok(None);
    };
    let url = String::from_utf8_lossy(url.expose()).into_owned();
    let exact =
        fleet::exact::ExactLimits::new(&url, &cfg.name, cfg.redis_timeout, &metrics.registry)
            .map_err(fleet::FleetError::Redis)?;
    // An instance's entry in the fleet's count lapses as its owner's
    // membership does (the workers release it then too).
    Ok(Some((Arc::new(exact), cfg.member_ttl)))
}

/// The task store: the embedded one, or in a fleet the fleet's (JetStream),
/// shared by every member, with the stops other members ask for.
async fn open_queue(
    config: &Config,
    metrics: &metrics::Metrics,
    fleet: Option<&Joined>,
) -> Result<(asynchronous::AsyncQueue, Option<Kills>), RunError> {
    let g = &config.gateway;
    let (shared_store, kills): (Option<Arc<dyn asynchronous::store::TaskStore>>, _) = match fleet {
        Some((f, _)) => {
            let (store, kills) =
                fleet::queue::JetStreamStore::open(f.clone(), &g.asynchronous).await?;
            (Some(store), Some(kills))
        }
        None => (None, None),
    };
    let functions = (config.functions.iter()).map(|f| (&f.name, f.asynchronous.max_concurrency));
    let async_metrics = asynchronous::AsyncMetrics::new(&metrics.registry);
    let queue = asynchronous::AsyncQueue::open(
        g.asynchronous.clone(),
        functions,
        async_metrics,
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
    Ok((queue, kills))
}

/// Every HTTPS listener (the public one first, private endpoints, PROXY
/// listeners) and the admin listener.
async fn bind_listeners(
    config: &Config,
) -> Result<(Vec<(TcpListener, connection::ListenerKind)>, TcpListener), RunError> {
    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { what, addr, source })
    };
    let g = &config.gateway;
    let https = bind("the HTTPS listener", g.listen).await?;
    let admin = bind("the admin listener", g.admin_listen).await?;
    let mut listeners = vec![(https, connection::ListenerKind::Public)];
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    for (addr, vpc) in &config.ingress.private_endpoints {
        let l = bind("a private endpoint", *addr).await?;
        let vpc_name = config.ingress.vpcs.name(*vpc);
        tracing::info!(kind = "private_endpoint", vpc = vpc_name, addr = %local(&l), "listening");
        listeners.push((l, connection::ListenerKind::PrivateEndpoint(*vpc)));
    }
    for addr in &config.ingress.proxy_listeners {
        let l = bind("a PROXY protocol listener", *addr).await?;
        tracing::info!(kind = "proxy", addr = %local(&l), "listening");
        listeners.push((l, connection::ListenerKind::Proxy));
    }
    Ok((listeners, admin))
}
