//! Client connections: accept, bound, terminate TLS, and serve HTTP/1.1 or
//! HTTP/2 (chosen by ALPN) into the [`crate::pipeline`].
//!
//! Bounds applied here: `max_connections` (one budget for every listener:
//! a connection over it is accepted and reset at once, so its client learns
//! now and costs nothing, instead of waiting in the listen backlog), the TLS handshake timeout, the header read timeout (for HTTP/1.1
//! hyper also applies it to the idle wait between keep-alive requests), the
//! HTTP/2 idle timeout (ours: hyper has none), and the maximum header size. Body size and time are bounded in
//! [`crate::body`].

pub mod linger;
mod metrics;
pub mod proxy;
pub mod tls;

use crate::config::{IngressConfig, Limits};
use crate::ingress::{Caller, Network, Origin, VpcId};
use crate::metrics::GaugeGuard;
use crate::pipeline::Pipeline;
use crate::shards::Shards;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
pub use metrics::ConnectionMetrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// After a failed `accept` (EMFILE, ENFILE, ENOBUFS: the connection waits
/// in the backlog, so the next `accept` would fail at once): back off
/// instead of spinning. Every accept loop does this.
pub async fn accept_failed(e: &std::io::Error) {
    tracing::warn!(error = %e, "accept failed; backing off");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The client connections of every listener: one budget (`max_connections`),
/// tracked for drain, dealt to the runtime shards.
pub struct Connections {
    pub permits: Arc<Semaphore>,
    /// Drains HTTP/1.1 connections (hyper-util's watchers).
    pub graceful: GracefulShutdown,
    /// Cancelled when the gateway starts to drain: HTTP/2 connections then
    /// shut down gracefully (GOAWAY) by themselves.
    pub draining: CancellationToken,
    pub tasks: TaskTracker,
    pub shards: Shards,
}

/// What an HTTP/2 connection is doing: streams in flight, and since when it
/// has had none.
struct Activity {
    born: tokio::time::Instant,
    active: std::sync::atomic::AtomicUsize,
    idle_since_ms: std::sync::atomic::AtomicU64,
}

/// A stream in flight on an HTTP/2 connection, while it lasts.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Activity {
            born: tokio::time::Instant::now(),
            active: Default::default(),
            idle_since_ms: Default::default(),
        }
    }

    fn busy(self: &Arc<Self>) -> Busy {
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Busy(self.clone())
    }

    /// How long it has had no stream in flight (zero while it has one).
    fn idle_for(&self) -> Duration {
        use std::sync::atomic::Ordering;
        if self.active.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.born.elapsed().saturating_sub(since)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let now = self.0.born.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many times `max_header_bytes` an HTTP/2 header block may reach
/// before h2 itself refuses it; under that, [`crate::body::header_list_size`] is checked
/// by the pipeline.
pub const H2_HEADER_HARD_FACTOR: u32 = 4;

/// What a listener says about the callers arriving on it.
#[derive(Debug, Clone, Copy)]
pub enum ListenerKind {
    /// The network comes from the source-address map.
    Public,
    /// A private endpoint: every caller is in this VPC.
    PrivateEndpoint(VpcId),
    /// Requires a PROXY protocol header from a trusted proxy.
    Proxy,
}

pub struct Server {
    pub pipeline: Arc<Pipeline>,
    /// Swapped by a reload: a connection is classified (its network) by
    /// the version current when it is accepted.
    ingress: arc_swap::ArcSwap<IngressConfig>,
    pub tls: TlsAcceptor,
    pub limits: Limits,
    pub metrics: Arc<ConnectionMetrics>,
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    linger: Arc<linger::Bounds>,
}

/// A client's connection under TLS: PROXY header bytes read ahead, then the
/// socket, which lingers at its close ([`linger`]).
type ClientIo = proxy::Rewind<linger::Linger>;

impl Server {
    pub fn new(
        pipeline: Arc<Pipeline>,
        ingress: Arc<IngressConfig>,
        tls: TlsAcceptor,
        limits: Limits,
        metrics: Arc<ConnectionMetrics>,
    ) -> Arc<Self> {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes as usize)
            .keep_alive(true);
        // HTTP/2 abuse bounds (tested in tests/it/h2_abuse.rs). Stated, not
        // left to defaults that may move: a header block (and so CONTINUATION
        // frames, which h2 counts against it) at most H2_HEADER_HARD_FACTOR x
        // max_header_bytes (the pipeline refuses one over max_header_bytes
        // with a 431 in the door's shape: h2's own refusal is a REFUSED_STREAM
        // reset, which clients take as "retry", and curl never shows its 431);
        // streams reset by the client before they were accepted (rapid
        // reset) at most 20 at a time, else GOAWAY; streams the server had to
        // reset for the client's errors at most 1024 per connection; 256
        // streams at once; 400 KiB queued to send per connection; pings
        // every 30 s to find dead peers.
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(
                limits
                    .max_header_bytes
                    .saturating_mul(H2_HEADER_HARD_FACTOR),
            )
            .max_concurrent_streams(256)
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024)
            .max_send_buf_size(400 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        let linger = Arc::new(linger::Bounds {
            max_bytes: limits.max_refused_body_drain_bytes,
            max_time: limits.refused_body_drain_timeout,
            results: metrics.lingering_closes.clone(),
        });
        Arc::new(Server {
            pipeline,
            ingress: arc_swap::ArcSwap::new(ingress),
            tls,
            limits,
            metrics,
            h1,
            h2,
            linger,
        })
    }

    /// Accepts until `stop` is cancelled, into `conns`.
    pub async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        kind: ListenerKind,
        stop: CancellationToken,
        conns: Arc<Connections>,
    ) {
        let Connections {
            permits,
            graceful,
            draining,
            tasks,
            shards,
        } = &*conns;
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        accept_failed(&e).await;
                        continue;
                    }
                },
            };
            // Over max_connections: refused at once (a reset), so the client
            // learns now instead of waiting in the listen backlog.
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
                self.metrics.connections_refused.inc();
                continue;
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let watcher = graceful.watcher();
            let draining = draining.clone();
            let (shard, handle) = shards.pick();
            if shard == crate::shards::current() {
                tasks.spawn(async move {
                    let _open = GaugeGuard::new(&this.metrics.open_connections);
                    this.serve_one(stream, permit, peer, kind, watcher, draining)
                        .await;
                });
                continue;
            }
            // The socket moves to the other shard's reactor.
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand a connection to its shard");
                    continue;
                }
            };
            let serve = async move {
                let _open = GaugeGuard::new(&this.metrics.open_connections);
                match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => {
                        this.serve_one(stream, permit, peer, kind, watcher, draining)
                            .await
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot register a connection"),
                }
            };
            tasks.spawn_on(serve, handle);
        }
    }

    /// A reload's networks and trusted proxies, for connections accepted
    /// from now on.
    pub fn set_ingress(&self, ingress: Arc<IngressConfig>) {
        self.ingress.store(ingress);
    }

    /// Where the caller stands, decided once for the whole connection.
    async fn resolve(
        &self,
        stream: &mut tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        kind: ListenerKind,
    ) -> Result<(Caller, Vec<u8>), proxy::Reject> {
        let ip = peer.ip().to_canonical();
        let ingress = self.ingress.load_full();
        match kind {
            ListenerKind::Public => Ok((
                Caller {
                    ip,
                    network: ingress.networks.network_of(ip),
                },
                Vec::new(),
            )),
            ListenerKind::PrivateEndpoint(vpc) => Ok((
                Caller {
                    ip,
                    network: Network::Vpc(vpc),
                },
                Vec::new(),
            )),
            ListenerKind::Proxy => {
                if !ingress.is_trusted_proxy(ip) {
                    return Err(proxy::Reject::UntrustedPeer);
                }
                let (info, rest) =
                    tokio::time::timeout(ingress.proxy_header_timeout, proxy::read_header(stream))
                        .await
                        .map_err(|_| proxy::Reject::Timeout)??;
                let ip = info.source.map(|s| s.ip().to_canonical()).unwrap_or(ip);
                // A VPC endpoint id names the VPC; an unknown one is trusted
                // as no VPC at all.
                let network = match &info.endpoint_id {
                    Some(id) => (ingress.networks)
                        .endpoint(id)
                        .map(Network::Vpc)
                        .unwrap_or(Network::Internet),
                    None => ingress.networks.network_of(ip),
                };
                Ok((Caller { ip, network }, rest))
            }
        }
    }

    /// Where the caller stands, then TLS; `None` when the connection ends here.
    async fn handshake(
        &self,
        mut stream: tokio::net::TcpStream,
        permit: tokio::sync::OwnedSemaphorePermit,
        peer: std::net::SocketAddr,
        kind: ListenerKind,
    ) -> Option<(
        Caller,
        tokio_rustls::server::TlsStream<ClientIo>,
        Arc<std::sync::atomic::AtomicBool>,
    )> {
        let (caller, rest) = match self.resolve(&mut stream, peer, kind).await {
            Ok(r) => r,
            Err(reject) => {
                self.metrics.proxy_rejections[reject as usize].inc();
                tracing::debug!(%peer, reason = reject.as_str(), "PROXY protocol rejection; closing");
                return None;
            }
        };
        let stream = linger::Linger::new(stream, permit, self.linger.clone());
        let stream = proxy::Rewind::new(stream, rest);
        match tokio::time::timeout(self.limits.tls_handshake_timeout, self.tls.accept(stream)).await
        {
            Ok(Ok(s)) => {
                let linger = s.get_ref().0.get_ref().trigger();
                Some((caller, s, linger))
            }
            Ok(Err(e)) => {
                self.metrics.tls_handshake_failures.inc();
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.metrics.tls_handshake_failures.inc();
                tracing::debug!("TLS handshake timed out");
                None
            }
        }
    }

    /// One connection, until it ends; `permit` (its place under
    /// `max_connections`) goes when its socket is closed.
    async fn serve_one(
        &self,
        stream: tokio::net::TcpStream,
        permit: tokio::sync::OwnedSemaphorePermit,
        peer: std::net::SocketAddr,
        kind: ListenerKind,
        watcher: Watcher,
        draining: CancellationToken,
    ) {
        // Boxed, and HTTP/2 below: the connection's task then holds only
        // what an idle HTTP/1.1 connection needs (memory per idle connection).
        let Some((caller, tls, linger)) =
            Box::pin(self.handshake(stream, permit, peer, kind)).await
        else {
            return;
        };
        let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let pipeline = self.pipeline.clone();
        let origin = Origin::Client(caller);
        let io = TokioIo::new(tls);
        let result = if is_h2 {
            Box::pin(self.serve_h2(io, pipeline, origin, draining)).await
        } else {
            // The request future is boxed: hyper keeps room for one in every
            // connection, idle or not, and this one is a few KiB. One
            // allocation per request buys back that much per idle connection.
            let svc = hyper::service::service_fn(move |req| {
                let p = pipeline.clone();
                Box::pin(p.handle(req, origin))
            });
            // Held past its end: it owns the socket, which lingers when it
            // goes if hyper ended on a request it did not read ([`linger`]).
            let mut conn = std::pin::pin!(watcher.watch(self.h1.serve_connection(io, svc)));
            let r = conn.as_mut().await;
            if r.as_ref().is_err_and(hyper::Error::is_parse) {
                linger.store(true, std::sync::atomic::Ordering::Release);
            }
            r
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    /// An HTTP/2 connection, until it ends: shut down gracefully (GOAWAY)
    /// when the gateway drains, or when no stream has been in flight for
    /// `http2_idle_timeout_ms` (hyper has no idle timeout of its own for
    /// HTTP/2; its pings only find dead peers).
    async fn serve_h2(
        &self,
        io: TokioIo<tokio_rustls::server::TlsStream<ClientIo>>,
        pipeline: Arc<Pipeline>,
        origin: Origin,
        draining: CancellationToken,
    ) -> Result<(), hyper::Error> {
        let activity = Arc::new(Activity::new());
        let seen = activity.clone();
        let svc = hyper::service::service_fn(move |req| {
            let p = pipeline.clone();
            let busy = seen.busy();
            Box::pin(async move {
                let answer = p.handle(req, origin).await;
                drop(busy);
                answer
            })
        });
        let mut conn = std::pin::pin!(self.h2.serve_connection(io, svc));
        let idle_timeout = self.limits.http2_idle_timeout;
        let mut check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(50)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => return r,
                _ = draining.cancelled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = check.tick(), if !closing => {
                    if activity.idle_for() >= idle_timeout {
                        self.metrics.http2_idle_closes.inc();
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}
