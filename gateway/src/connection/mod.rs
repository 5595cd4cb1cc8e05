//! Client connections: accept, bound, terminate TLS, and serve HTTP/1.1 or
//! HTTP/2 (chosen by ALPN) into the [`crate::pipeline`].
//!
//! Bounds applied here: `max_connections` (a semaphore taken before
//! `accept`, so excess clients wait in the kernel backlog instead of costing
//! memory), the TLS handshake timeout, the header read timeout (for HTTP/1.1
//! hyper also applies it to the idle wait between keep-alive requests), and
//! the maximum header size. Body size and time are bounded in
//! [`crate::pipeline::body`].

pub mod tls;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Server {
    pub pipeline: Arc<Pipeline>,
    pub tls: TlsAcceptor,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Server {
    pub fn new(
        pipeline: Arc<Pipeline>,
        tls: TlsAcceptor,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes as usize)
            .keep_alive(true);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes)
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        Arc::new(Server {
            pipeline,
            tls,
            limits,
            metrics,
            h1,
            h2,
        })
    }

    /// Accepts until `stop` is cancelled. Connections are tracked in `tasks`
    /// and watched by `graceful` for drain.
    pub async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
        graceful: Arc<GracefulShutdown>,
        tasks: TaskTracker,
    ) {
        let permits = Arc::new(Semaphore::new(self.limits.max_connections as usize));
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => return,
                p = permits.clone().acquire_owned() => p.expect("never closed"),
            };
            let (stream, _peer) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let watcher = graceful.watcher();
            tasks.spawn(async move {
                this.metrics.open_connections.inc();
                this.serve_one(stream, watcher).await;
                this.metrics.open_connections.dec();
                drop(permit);
            });
        }
    }

    async fn serve_one(&self, stream: tokio::net::TcpStream, watcher: Watcher) {
        let tls =
            match tokio::time::timeout(self.limits.tls_handshake_timeout, self.tls.accept(stream))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.metrics.tls_handshake_failures.inc();
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    self.metrics.tls_handshake_failures.inc();
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
        let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let pipeline = self.pipeline.clone();
        let svc = hyper::service::service_fn(move |req| {
            let p = pipeline.clone();
            async move { Ok::<_, Infallible>(p.handle(req).await) }
        });
        let io = TokioIo::new(tls);
        let result = if is_h2 {
            watcher.watch(self.h2.serve_connection(io, svc)).await
        } else {
            watcher.watch(self.h1.serve_connection(io, svc)).await
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}
