//! Why an invocation did not produce the function's own answer.
//!
//! One enum of causes, independent of any cloud's API. Each API dialect
//! renders it (status, the cloud's code, body) in one exhaustive `match`; see
//! [`crate::api::Dialect::error`]. `Display` is for logs only.

use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum InvokeError {
    // ---- the request itself ----
    #[error("no route for {method} {path}")]
    RouteNotFound { method: http::Method, path: String },
    #[error("method {method} not allowed on this path")]
    MethodNotAllowed { method: http::Method },
    #[error("function {name:?} not found")]
    FunctionNotFound { name: String },
    #[error("invalid argument: {message}")]
    InvalidArgument { message: Arc<str> },
    #[error("payload of {size:?} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64, size: Option<u64> },
    /// An HTTP/2 header block over `max_header_bytes` (an HTTP/1.1 head over
    /// it is refused by hyper itself, see [`crate::connection::linger`]).
    #[error("request headers of {size} bytes exceed the limit of {limit} bytes")]
    HeadersTooLarge { limit: u32, size: u64 },
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    #[error("request body could not be read: {0}")]
    BodyRead(Arc<str>),
    /// A part of the request that must have a given form does not (say, a
    /// client context that is not base64).
    #[error("invalid request content: {message}")]
    InvalidContent { message: Arc<str> },

    // ---- credentials ----
    #[error("authentication failed: {0}")]
    Unauthenticated(crate::auth::AuthError),

    // ---- ingress policy ----
    #[error("access denied: {0:?}")]
    AccessDenied(crate::ingress::policy::Denial),

    // ---- throttling ----
    #[error("throttled by {} (retry after {:?})", .0.limit.as_str(), .0.retry_after)]
    Throttled(crate::throttle::Throttled),

    // ---- capacity and instances ----
    #[error("no worker has {memory_mb} MB free for a new instance")]
    NoCapacity { memory_mb: u32 },
    #[error("instance failed to start: {message}")]
    InstanceStartFailed {
        message: Arc<str>,
        stderr_tail: Arc<str>,
    },
    #[error("gateway is shutting down")]
    ShuttingDown,
    /// No sandbox worker answered in time to start an instance.
    #[error("no sandbox worker answered in time")]
    WorkerUnavailable,
    /// The asynchronous task store's engine did not answer (fleet mode:
    /// NATS unreachable or electing a leader).
    #[error("the asynchronous task store did not answer")]
    QueueUnavailable {
        /// Why, for the log only (see [`InvokeError::cause`]).
        cause: Arc<str>,
    },

    // ---- the function failed (rendered as the function's error, HTTP 200 in FC) ----
    #[error("function timed out after {0:?}")]
    FunctionTimeout(Duration),
    #[error("instance {detail}")]
    InstanceCrashed { detail: Arc<str> },
    #[error("invalid response from instance: {detail}")]
    BadFunctionResponse { detail: Arc<str> },
    /// The platform that ran it (a cloud backend) says the function failed;
    /// its error object is the answer's body (see `FunctionAnswer::failed`).
    #[error("the function failed in its backend")]
    FunctionFailed,

    // ---- asynchronous tasks ----
    #[error("asynchronous task {id:?} not found")]
    AsyncTaskNotFound { id: String },
    /// Stopped through the task API while it ran (or before).
    #[error("asynchronous task stopped")]
    AsyncTaskStopped,

    // ---- cloud backends (see crate::execute::routes) ----
    /// A backend could not be reached, or failed in a way of its own (its
    /// error answer, refused credentials, a broken answer). `detail` names
    /// no address and no secret.
    #[error("backend {backend:?} {detail}")]
    BackendError {
        backend: Arc<str>,
        detail: Arc<str>,
        /// For the log only (see [`InvokeError::cause`]).
        cause: Option<Arc<str>>,
    },
    /// A backend took the payload and did not answer in time (not retried).
    #[error("backend {backend:?} did not answer within {after:?}")]
    BackendTimeout { backend: Arc<str>, after: Duration },
    /// A backend answered with its own throttling, and no fallback could
    /// take the call.
    #[error("backend {backend:?} is throttling")]
    BackendThrottled {
        backend: Arc<str>,
        retry_after: Option<Duration>,
    },

    // ---- ours ----
    #[error("internal error: {0}")]
    Internal(Arc<str>),
}

impl InvokeError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        InvokeError::Internal(e.to_string().into())
    }

    /// The gateway's limit that refused the call, if one did.
    pub fn throttle(&self) -> Option<crate::throttle::LimitKind> {
        match self {
            InvokeError::Throttled(t) => Some(t.limit),
            _ => None,
        }
    }

    /// What the operator's log says beyond the caller's message: the whole
    /// cause chain of a backend's failure (a TLS verdict, a refused
    /// connection), which the caller is not told.
    pub fn cause(&self) -> Option<&str> {
        match self {
            InvokeError::BackendError { cause, .. } => cause.as_deref(),
            InvokeError::QueueUnavailable { cause } => Some(cause),
            _ => None,
        }
    }

    /// The bounded outcome label for metrics.
    pub fn outcome(&self) -> Outcome {
        match self {
            InvokeError::FunctionTimeout(_)
            | InvokeError::InstanceCrashed { .. }
            | InvokeError::BadFunctionResponse { .. }
            | InvokeError::FunctionFailed => Outcome::FunctionError,
            InvokeError::NoCapacity { .. }
            | InvokeError::Throttled(_)
            | InvokeError::BackendThrottled { .. } => Outcome::Throttled,
            InvokeError::BackendError { .. } | InvokeError::BackendTimeout { .. } => {
                Outcome::GatewayError
            }
            InvokeError::InstanceStartFailed { .. } => Outcome::StartFailed,
            InvokeError::Internal(_)
            | InvokeError::ShuttingDown
            | InvokeError::WorkerUnavailable
            | InvokeError::QueueUnavailable { .. } => Outcome::GatewayError,
            InvokeError::AccessDenied(_) => Outcome::Denied,
            InvokeError::Unauthenticated(_) => Outcome::Unauthenticated,
            InvokeError::RouteNotFound { .. }
            | InvokeError::MethodNotAllowed { .. }
            | InvokeError::FunctionNotFound { .. }
            | InvokeError::InvalidArgument { .. }
            | InvokeError::PayloadTooLarge { .. }
            | InvokeError::HeadersTooLarge { .. }
            | InvokeError::BodyTimeout(_)
            | InvokeError::BodyRead(_)
            | InvokeError::InvalidContent { .. }
            | InvokeError::AsyncTaskNotFound { .. } => Outcome::ClientError,
            InvokeError::AsyncTaskStopped => Outcome::Stopped,
        }
    }
}

/// How an invocation ended, as counted in `fngate_invocations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    FunctionError,
    ClientError,
    Throttled,
    StartFailed,
    GatewayError,
    Denied,
    /// An asynchronous invocation accepted (202); its runs are counted
    /// under the `internal` network.
    Accepted,
    /// A dry run passed its checks; nothing ran.
    DryRun,
    /// The caller's signature or function key was refused.
    Unauthenticated,
    /// An asynchronous attempt stopped through the task API.
    Stopped,
    /// A task API call (get, list, stop) answered.
    TaskApi,
}

impl Outcome {
    pub const ALL: [Outcome; 12] = [
        Outcome::Success,
        Outcome::FunctionError,
        Outcome::ClientError,
        Outcome::Throttled,
        Outcome::StartFailed,
        Outcome::GatewayError,
        Outcome::Denied,
        Outcome::Accepted,
        Outcome::DryRun,
        Outcome::Unauthenticated,
        Outcome::Stopped,
        Outcome::TaskApi,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::FunctionError => "function_error",
            Outcome::ClientError => "client_error",
            Outcome::Throttled => "throttled",
            Outcome::StartFailed => "start_failed",
            Outcome::GatewayError => "gateway_error",
            Outcome::Denied => "denied",
            Outcome::Accepted => "accepted",
            Outcome::DryRun => "dry_run",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Stopped => "stopped",
            Outcome::TaskApi => "task_api",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// An error and its sources, `: `-joined (for logs and error details).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
