//! Client side of the sandbox worker API ([`sandbox_runtime::api`]).
//!
//! A [`Worker`] is a remote (or embedded) sandbox-runtime and the gateway's
//! own view of how much of its memory is spoken for. Placement reserves
//! memory here before asking the worker, so two concurrent starts never pick
//! the same last free megabytes; the worker stays authoritative and refuses
//! with `InsufficientMemory` when several gateways share it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use sandbox_runtime::api::{ApiError, Capacity, CreateInstance, InstanceInfo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

pub struct Worker {
    pub url: String,
    pub memory_mb_total: u64,
    reserved_mb: AtomicU64,
    client: HttpClient,
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
}

impl Worker {
    /// Connects to a worker and reads its capacity.
    pub async fn connect(url: String, client: HttpClient) -> Result<Worker, WorkerError> {
        let mut w = Worker {
            url,
            memory_mb_total: 0,
            reserved_mb: AtomicU64::new(0),
            client,
        };
        let cap: Capacity = w.call(http::Method::GET, "/v1/capacity", None).await?;
        w.memory_mb_total = cap.memory_mb_total;
        w.reserved_mb.store(cap.memory_mb_used, Ordering::Relaxed);
        tracing::info!(worker = %w.url, memory_mb = cap.memory_mb_total, memory_limit = cap.memory_limit.as_str(), "worker connected");
        Ok(w)
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

    pub fn unreserve(&self, mb: u64) {
        let _ = self
            .reserved_mb
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(mb))
            });
    }

    pub async fn create(&self, req: &CreateInstance) -> Result<InstanceInfo, WorkerError> {
        let body = serde_json::to_vec(req).expect("serializable");
        self.call(http::Method::POST, "/v1/instances", Some(body))
            .await
    }

    pub async fn release(&self, id: &str) -> Result<InstanceInfo, WorkerError> {
        self.call(http::Method::DELETE, &format!("/v1/instances/{id}"), None)
            .await
    }

    pub async fn list(&self) -> Result<Vec<InstanceInfo>, WorkerError> {
        self.call(http::Method::GET, "/v1/instances", None).await
    }

    /// One instance; waits up to `wait_exit` for its process to end first.
    pub async fn instance(
        &self,
        id: &str,
        wait_exit: Duration,
    ) -> Result<InstanceInfo, WorkerError> {
        let ms = wait_exit.as_millis();
        self.call(
            http::Method::GET,
            &format!("/v1/instances/{id}?wait_exit_ms={ms}"),
            None,
        )
        .await
    }

    /// An instance's output since `from` (nothing without it), and the
    /// offset it has reached.
    pub async fn log(&self, id: &str, from: Option<u64>) -> Result<(u64, Bytes), WorkerError> {
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
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, WorkerError> {
        let (_, bytes) = self.call_raw(method, path, body).await?;
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
