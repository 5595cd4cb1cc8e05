//! Client side of the sandbox worker API ([`sandbox_runtime::api`]).
//!
//! A [`Worker`] is a remote (or embedded) sandbox-runtime and the gateway's
//! own view of how much of its memory is spoken for. Placement reserves
//! memory here before asking the worker, so two concurrent starts never pick
//! the same last free megabytes; the worker stays authoritative and refuses
//! with `InsufficientMemory` when several gateways share it.
//!
//! What is asked of a worker goes through [`WorkerApi`]: the HTTP client
//! ([`HttpWorker`]) in production, a fake in the scheduler's unit tests.
//! Every call is bounded here, whatever the implementation: a worker that
//! accepts and never answers (stopped, black-holed) costs `worker_timeout_ms`
//! per call (an instance start: `instance_start_timeout_ms` more), then a
//! [`WorkerError::Timeout`].

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use sandbox_runtime::api::{ApiError, Capacity, CreateInstance, InstanceInfo};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(test)]
pub(crate) mod fake;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

/// What a gateway asks of a sandbox worker (see [`sandbox_runtime::api`]).
pub trait WorkerApi: Send + Sync + 'static {
    fn capacity(&self) -> BoxFuture<'_, Result<Capacity, WorkerError>>;
    fn create<'a>(
        &'a self,
        req: &'a CreateInstance,
    ) -> BoxFuture<'a, Result<InstanceInfo, WorkerError>>;
    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<InstanceInfo, WorkerError>>;
    /// One instance, after waiting up to `wait_exit` for its process to end.
    fn instance<'a>(
        &'a self,
        id: &'a str,
        wait_exit: Duration,
    ) -> BoxFuture<'a, Result<InstanceInfo, WorkerError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<InstanceInfo>, WorkerError>>;
    /// An instance's output since `from` (nothing without it), and the
    /// offset it has reached.
    fn log<'a>(
        &'a self,
        id: &'a str,
        from: Option<u64>,
    ) -> BoxFuture<'a, Result<(u64, Bytes), WorkerError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("worker {url} answered {status}: {message}")]
    Api {
        url: String,
        status: http::StatusCode,
        message: String,
        error: Option<ApiError>,
    },
    #[error("worker {url} did not answer {what} within {after:?}")]
    Timeout {
        url: String,
        what: &'static str,
        after: Duration,
    },
}

/// How long a worker may take to answer.
#[derive(Debug, Clone, Copy)]
pub struct WorkerTimeouts {
    /// Any call (`worker_timeout_ms`).
    pub call: Duration,
    /// On top of it, for an instance start (`instance_start_timeout_ms`:
    /// the worker waits that long for the instance to accept).
    pub start: Duration,
}

pub struct Worker {
    pub url: String,
    pub memory_mb_total: u64,
    reserved_mb: AtomicU64,
    api: Box<dyn WorkerApi>,
    timeouts: WorkerTimeouts,
}

impl Worker {
    /// Connects to a worker over HTTP and reads its capacity.
    pub async fn connect(
        url: String,
        client: HttpClient,
        timeouts: WorkerTimeouts,
    ) -> Result<Worker, WorkerError> {
        let api = HttpWorker {
            url: url.clone(),
            client,
        };
        Self::with_api(url, Box::new(api), timeouts).await
    }

    /// A worker reached through `api`; reads its capacity.
    pub async fn with_api(
        url: String,
        api: Box<dyn WorkerApi>,
        timeouts: WorkerTimeouts,
    ) -> Result<Worker, WorkerError> {
        let mut w = Worker {
            url,
            memory_mb_total: 0,
            reserved_mb: AtomicU64::new(0),
            api,
            timeouts,
        };
        let cap = w
            .bounded("its capacity", w.timeouts.call, w.api.capacity())
            .await?;
        w.memory_mb_total = cap.memory_mb_total;
        w.reserved_mb.store(cap.memory_mb_used, Ordering::Relaxed);
        tracing::info!(worker = %w.url, memory_mb = cap.memory_mb_total, memory_limit = cap.memory_limit.as_str(), "worker connected");
        Ok(w)
    }

    async fn bounded<T>(
        &self,
        what: &'static str,
        after: Duration,
        call: BoxFuture<'_, Result<T, WorkerError>>,
    ) -> Result<T, WorkerError> {
        match tokio::time::timeout(after, call).await {
            Ok(r) => r,
            Err(_) => Err(WorkerError::Timeout {
                url: self.url.clone(),
                what,
                after,
            }),
        }
    }

    pub fn free_mb(&self) -> u64 {
        self.memory_mb_total
            .saturating_sub(self.reserved_mb.load(Ordering::Relaxed))
    }

    pub fn used_mb(&self) -> u64 {
        self.reserved_mb.load(Ordering::Relaxed)
    }

    /// Reserves `mb` if it still fits; lock-free.
    pub fn try_reserve(&self, mb: u64) -> bool {
        self.reserved_mb
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + mb <= self.memory_mb_total).then_some(used + mb)
            })
            .is_ok()
    }

    /// Takes the worker's own account of its used memory: on a worker
    /// other gateways share, what they start and what is released for them
    /// changes it without this gateway's knowing. (A start this gateway has
    /// reserved but not yet sent may be missed for a moment; the worker
    /// refuses what does not fit, so that errs on a refusal, never on
    /// overcommit.)
    pub async fn refresh_capacity(&self) {
        if let Ok(cap) = self
            .bounded("its capacity", self.timeouts.call, self.api.capacity())
            .await
        {
            self.reserved_mb
                .store(cap.memory_mb_used, Ordering::Release);
        }
    }

    pub fn unreserve(&self, mb: u64) {
        let _ = self
            .reserved_mb
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(mb))
            });
    }

    pub async fn create(&self, req: &CreateInstance) -> Result<InstanceInfo, WorkerError> {
        let t = self.timeouts;
        self.bounded("an instance start", t.start + t.call, self.api.create(req))
            .await
    }

    pub async fn release(&self, id: &str) -> Result<InstanceInfo, WorkerError> {
        self.bounded("a release", self.timeouts.call, self.api.release(id))
            .await
    }

    pub async fn list(&self) -> Result<Vec<InstanceInfo>, WorkerError> {
        self.bounded("its instance list", self.timeouts.call, self.api.list())
            .await
    }

    /// One instance; waits up to `wait_exit` for its process to end first.
    pub async fn instance(
        &self,
        id: &str,
        wait_exit: Duration,
    ) -> Result<InstanceInfo, WorkerError> {
        let after = wait_exit + self.timeouts.call;
        self.bounded(
            "an instance's state",
            after,
            self.api.instance(id, wait_exit),
        )
        .await
    }

    pub async fn log(&self, id: &str, from: Option<u64>) -> Result<(u64, Bytes), WorkerError> {
        self.bounded(
            "an instance's log",
            self.timeouts.call,
            self.api.log(id, from),
        )
        .await
    }
}

/// The worker API over HTTP/1.1 (JSON bodies).
pub struct HttpWorker {
    url: String,
    client: HttpClient,
}

impl WorkerApi for HttpWorker {
    fn capacity(&self) -> BoxFuture<'_, Result<Capacity, WorkerError>> {
        Box::pin(self.call(http::Method::GET, "/v1/capacity".into(), None))
    }

    fn create<'a>(
        &'a self,
        req: &'a CreateInstance,
    ) -> BoxFuture<'a, Result<InstanceInfo, WorkerError>> {
        let body = serde_json::to_vec(req).expect("serializable");
        Box::pin(self.call(http::Method::POST, "/v1/instances".into(), Some(body)))
    }

    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<InstanceInfo, WorkerError>> {
        Box::pin(self.call(http::Method::DELETE, format!("/v1/instances/{id}"), None))
    }

    fn instance<'a>(
        &'a self,
        id: &'a str,
        wait_exit: Duration,
    ) -> BoxFuture<'a, Result<InstanceInfo, WorkerError>> {
        let ms = wait_exit.as_millis();
        let path = format!("/v1/instances/{id}?wait_exit_ms={ms}");
        Box::pin(self.call(http::Method::GET, path, None))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<InstanceInfo>, WorkerError>> {
        Box::pin(self.call(http::Method::GET, "/v1/instances".into(), None))
    }

    fn log<'a>(
        &'a self,
        id: &'a str,
        from: Option<u64>,
    ) -> BoxFuture<'a, Result<(u64, Bytes), WorkerError>> {
        Box::pin(async move {
            let path = match from {
                Some(n) => format!("/v1/instances/{id}/log?from={n}"),
                None => format!("/v1/instances/{id}/log"),
            };
            let (headers, body) = self.call_raw(http::Method::GET, &path, None).await?;
            let end = headers
                .get(sandbox_runtime::api::LOG_END_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| WorkerError::Transport {
                    url: self.url.clone(),
                    source: "the log answer has no end offset".into(),
                })?;
            Ok((end, body))
        })
    }
}

impl HttpWorker {
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: http::Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<T, WorkerError> {
        let (_, bytes) = self.call_raw(method, &path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| WorkerError::Transport {
            url: self.url.clone(),
            source: e.into(),
        })
    }

    /// One API call; its headers and body when it succeeded.
    async fn call_raw(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(http::HeaderMap, Bytes), WorkerError> {
        let transport = |e: Box<dyn std::error::Error + Send + Sync>| WorkerError::Transport {
            url: self.url.clone(),
            source: e,
        };
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| transport(e.into()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| transport(e.into()))?;
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| transport(e.into()))?
            .to_bytes();
        if !status.is_success() {
            let error: Option<ApiError> = serde_json::from_slice(&bytes).ok();
            return Err(WorkerError::Api {
                url: self.url.clone(),
                status,
                message: error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
                error,
            });
        }
        Ok((parts.headers, bytes))
    }
}
