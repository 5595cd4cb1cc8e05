//! Cloud API dialects: thin adapters around the one pipeline.
//!
//! A dialect ([`Dialect`]) decodes a request head into the neutral
//! [`Invocation`], checks the caller's credentials the way its cloud does,
//! and renders every neutral outcome (the function's answer, an accepted
//! asynchronous call, each [`InvokeError`]) in its cloud's shape. It is chosen
//! once per request, by path prefix, on the same listeners ([`Dialects::select`]).
//! Nothing outside `api/<dialect>.rs` names a cloud's headers or codes.
//!
//! - [`fc`]: Alibaba Function Compute 3.0 (`/2023-03-30/functions/{name}/invocations`);
//!   also the answer to paths no dialect claims.
//! - [`lambda`]: AWS Lambda Invoke (`/2015-03-31/functions/{FunctionName}/invocations`).
//! - [`azure`]: Azure Functions HTTP triggers (`/api/{name}[/{rest}]`, any method).

pub mod azure;
pub mod fc;
pub mod lambda;

use crate::auth::{AuthPolicy, Authn};
use crate::error::InvokeError;
use crate::ingress::policy::Denial;
use crate::throttle::LimitKind;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde::Serialize;
use std::borrow::Cow;
use std::time::Duration;

pub use crate::body::ResponseBody;

/// The door a request came through: the bounded `api` label of metrics and
/// usage records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Fc,
    Lambda,
    Azure,
}

impl Api {
    pub const ALL: [Api; 3] = [Api::Fc, Api::Lambda, Api::Azure];

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Fc => "fc",
            Api::Lambda => "lambda",
            Api::Azure => "azure",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whether and how the caller waits for the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The caller waits for the function's answer.
    Sync,
    /// Accepted at once (202) once durably queued; run later, with retries
    /// ([`crate::asynchronous`]).
    Async,
    /// Checked (ingress, credentials, rate limits, payload) and answered;
    /// nothing runs.
    DryRun,
    /// A call of the task API (see [`TaskOp`]): about invocations, not one.
    TaskApi,
}

/// What a task API call asks (FC 3.0: `GET|PUT /2023-03-30/functions/{name}/async-tasks...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOp<'a> {
    Get {
        id: Cow<'a, str>,
    },
    List {
        state: Option<crate::asynchronous::task::TaskState>,
        limit: usize,
        include_payload: bool,
    },
    Stop {
        id: Cow<'a, str>,
    },
}

/// What the task API answers, for the dialect to render.
pub enum TaskAnswer<'a> {
    One {
        task: &'a crate::asynchronous::task::TaskRecord,
        payload: Option<&'a [u8]>,
    },
    List(&'a [crate::asynchronous::task::TaskRecord]),
    Stopped,
}

/// What the instance receives (see README, "Writing a function").
#[derive(Debug)]
pub enum Trigger<'a> {
    /// The payload as an event: `POST /invoke` (the event contract).
    Event,
    /// The whole HTTP request (the HTTP-trigger contract): the caller's
    /// method and headers, at this path and query (the query already stripped
    /// of whatever the dialect consumed, such as a function key).
    Http {
        path: &'a str,
        query: Option<Cow<'a, str>>,
        /// Request headers the dialect consumed (a function key): not forwarded.
        consumed_headers: &'static [&'static str],
    },
}

/// What a caller asked for, independent of the API it used.
#[derive(Debug)]
pub struct Invocation<'a> {
    pub function: Cow<'a, str>,
    pub qualifier: Option<Cow<'a, str>>,
    pub kind: Kind,
    pub trigger: Trigger<'a>,
    /// Return the tail of the instance's log for this invocation.
    pub log_tail: bool,
    /// Caller context handed to the function as is (Lambda's client context).
    pub client_context: Option<&'a HeaderValue>,
    /// An asynchronous invocation's caller-chosen task id (checked).
    pub task_id: Option<&'a str>,
    /// With [`Kind::TaskApi`]: what is asked.
    pub task_op: Option<TaskOp<'a>>,
}

impl<'a> Invocation<'a> {
    /// A synchronous event invocation of `function`.
    pub fn event(function: &'a str) -> Self {
        Invocation {
            function: Cow::Borrowed(function),
            qualifier: None,
            kind: Kind::Sync,
            trigger: Trigger::Event,
            log_tail: false,
            client_context: None,
            task_id: None,
            task_op: None,
        }
    }
}

/// The instance an invocation ran on.
#[derive(Clone)]
pub struct Ran {
    pub instance_id: HeaderValue,
    /// It waited for its instance to start.
    pub cold: bool,
    /// The instance's output during the invocation, when the caller asked
    /// for it (bounded by the worker).
    pub log: Option<Bytes>,
}

/// The function's own answer, as the instance gave it.
pub struct FunctionAnswer {
    pub status: StatusCode,
    /// The instance's response headers (hop-by-hop ones included: a dialect
    /// that passes headers through filters them, see [`passthrough_headers`]).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The platform that ran it reported the function failed (a cloud
    /// backend's `X-Amz-Function-Error` / `x-fc-error-type`), whatever its
    /// status; the body is the error.
    pub failed: bool,
}

/// What a dialect knows about a request when it answers.
pub struct Reply<'a> {
    pub request_id: &'a HeaderValue,
    pub ran: Option<&'a Ran>,
    /// The function's memory size (0 when no function was found).
    pub memory_mb: u32,
    /// When the request arrived (only a log tail reads the clock for it).
    pub started: tokio::time::Instant,
    /// An accepted asynchronous invocation's task id.
    pub task_id: Option<&'a str>,
}

/// One cloud's API shape.
pub trait Dialect: Send + Sync {
    fn api(&self) -> Api;

    /// Decodes the request head. Borrows from it: no allocation for the
    /// plain forms of a request.
    fn decode<'a>(&self, parts: &'a http::request::Parts) -> Result<Invocation<'a>, InvokeError>;

    /// Checks the caller's credentials from the head, as `policy` demands at
    /// this door. May leave a check that needs the payload's hash.
    fn authenticate(
        &self,
        parts: &http::request::Parts,
        policy: &AuthPolicy<'_>,
    ) -> Result<Authn, InvokeError>;

    /// The function's answer.
    fn success(&self, answer: FunctionAnswer, reply: &Reply<'_>) -> Response<ResponseBody>;

    /// An asynchronous invocation accepted, or a dry run passed.
    fn accepted(&self, kind: Kind, reply: &Reply<'_>) -> Response<ResponseBody>;

    /// The one place this dialect's error responses are made.
    fn error(&self, err: &InvokeError, reply: &Reply<'_>) -> Response<ResponseBody>;

    /// The status [`Dialect::error`] answers `err` with, without building
    /// the answer (for usage records of attempts no client reads).
    fn status(&self, err: &InvokeError) -> StatusCode;

    /// The status [`Dialect::success`] answers a function's `status` with.
    fn success_status(&self, status: StatusCode) -> StatusCode {
        status
    }

    /// A task API answer. Only a dialect that decodes [`Kind::TaskApi`]
    /// calls gets one.
    fn task(&self, answer: &TaskAnswer<'_>, reply: &Reply<'_>) -> Response<ResponseBody> {
        let _ = answer;
        let e = InvokeError::Internal("no task API at this door".into());
        self.error(&e, reply)
    }
}

/// The dialects of one gateway, built from the configuration at start-up.
pub struct Dialects {
    pub fc: fc::Fc,
    pub lambda: lambda::Lambda,
    pub azure: azure::Azure,
}

impl Dialects {
    /// The dialect whose prefix `path` has; Function Compute's for any other
    /// path (it answers `PathNotSupported`).
    pub fn select(&self, path: &str) -> &dyn Dialect {
        if path.starts_with(lambda::PATH_PREFIX) {
            &self.lambda
        } else if path.starts_with(azure::PATH_PREFIX) {
            &self.azure
        } else {
            &self.fc
        }
    }

    pub fn get(&self, api: Api) -> &dyn Dialect {
        match api {
            Api::Fc => &self.fc,
            Api::Lambda => &self.lambda,
            Api::Azure => &self.azure,
        }
    }
}

// ---- shared by the dialects ----

/// A JSON body in one allocation, sized for its strings plus the field
/// names, quotes and a little escaping.
pub(crate) fn json(body: &impl Serialize, strings_len: usize) -> Bytes {
    let mut v = Vec::with_capacity(strings_len + 64);
    match serde_json::to_writer(&mut v, body) {
        Ok(()) => Bytes::from(v),
        Err(_) => Bytes::new(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionErrorBody<'a> {
    error_message: &'a str,
    error_type: &'a str,
}

/// `{"errorMessage","errorType"}`: how FC and Lambda both report a function
/// that failed.
pub(crate) fn function_error_body(error_type: &str, message: &str) -> Bytes {
    json(
        &FunctionErrorBody {
            error_message: message,
            error_type,
        },
        message.len() + error_type.len(),
    )
}

/// A response with `status`, `body` and, when given, its content type.
pub(crate) fn response(
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::new(body));
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, ct);
    }
    resp
}

pub(crate) const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `Retry-After` (whole seconds, rounded up) for a wait.
pub(crate) fn retry_after_header(wait: Duration) -> HeaderValue {
    HeaderValue::from(crate::throttle::retry_after_secs(wait))
}

/// A wait in milliseconds, at least 1 (`x-acs-retry-after`, `x-amz-retry-after`).
pub(crate) fn millis_header(wait: Duration) -> HeaderValue {
    HeaderValue::from(wait.as_millis().max(1) as u64)
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1),
/// plus the framing headers the gateway sets itself: never passed through.
pub(crate) fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    use http::header::*;
    matches!(
        *name,
        CONNECTION
            | TE
            | TRAILER
            | TRANSFER_ENCODING
            | UPGRADE
            | CONTENT_LENGTH
            | PROXY_AUTHORIZATION
            | PROXY_AUTHENTICATE
    ) || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The headers a message's own `Connection` header names: hop-by-hop for
/// that message (RFC 9110 7.6.1), so never passed on. Empty (no allocation)
/// when it names none, as HTTP/2 messages never do.
pub(crate) fn connection_named(headers: &HeaderMap) -> Vec<http::HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| http::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// `headers` without hop-by-hop ones, nor those the `Connection` header names.
pub(crate) fn passthrough_headers(mut headers: HeaderMap) -> HeaderMap {
    for n in connection_named(&headers) {
        headers.remove(n);
    }
    let drop: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for n in drop {
        headers.remove(n);
    }
    headers
}

/// `%XX` decoding of a path segment or query component; `None` when it is not
/// valid UTF-8 or a `%` is not followed by two hex digits. `plus_is_space`
/// for query components (form encoding).
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || (plus_is_space && b == b'+')) {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let hi = hex(*b.get(i + 1)?)?;
                let lo = hex(*b.get(i + 2)?)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The first value of query parameter `key` (raw, not decoded).
pub(crate) fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// The query's parameters, percent-decoded (`+` stays `+`), in order; `None`
/// when one is not valid percent-encoding. For canonical query strings.
pub(crate) fn query_pairs(query: Option<&str>) -> Option<Vec<(Cow<'_, str>, Cow<'_, str>)>> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((percent_decode(k, false)?, percent_decode(v, false)?))
        })
        .collect()
}

/// The reason text of an ingress denial, the same at every door.
/// The text of a cloud backend's failure, the same at every door (the
/// door decides case and punctuation). Names the backend, never an address.
pub(crate) fn backend_message(err: &InvokeError) -> String {
    match err {
        InvokeError::BackendError {
            backend, detail, ..
        } => {
            format!("the function's backend '{backend}' {detail}")
        }
        InvokeError::BackendTimeout { backend, after } => format!(
            "the function's backend '{backend}' did not answer within {} ms; the call was not retried",
            after.as_millis()
        ),
        InvokeError::BackendThrottled { backend, .. } => {
            format!("the function's backend '{backend}' is throttling")
        }
        _ => String::new(),
    }
}

pub(crate) fn denial_message(d: &Denial) -> String {
    match d {
        Denial::VpcBinding { from } => {
            format!("Resource access is bound by VPC: the call came from {from}")
        }
        Denial::Rule { name, priority } => format!(
            "Access denied by access rule {} (priority {priority})",
            name.as_deref()
                .map(|n| format!("'{n}'"))
                .unwrap_or_else(|| "(unnamed)".into())
        ),
        Denial::ImplicitDeny => {
            "Access denied by the implicit deny-all rule: no access rule allows this caller".into()
        }
    }
}

/// Which limit refused a call, in words, the same at every door.
pub(crate) fn limit_description(limit: LimitKind) -> &'static str {
    match limit {
        LimitKind::CallerRate => "the caller's request rate limit for this function",
        LimitKind::GatewayCallerRate => "the caller's request rate limit for this gateway",
        LimitKind::FunctionRate => "the function's request rate limit",
        LimitKind::FunctionConcurrency => "the function's concurrency limit (max_concurrency)",
        LimitKind::MaxInstances => "the gateway's instance limit (max_instances)",
        LimitKind::InstanceStartRate => {
            "the gateway's instance scale-out rate limit (max_instance_starts_per_minute)"
        }
        LimitKind::AsyncQueue => "the gateway's asynchronous invocation queue (max_async_queued)",
    }
}

/// How much of a log both clouds' `Tail` return.
pub(crate) const LOG_TAIL_BYTES: usize = 4096;

/// A log tail header: the last [`LOG_TAIL_BYTES`] of `text`, base64.
pub(crate) fn log_tail_header(text: &[u8]) -> HeaderValue {
    use base64::Engine;
    let tail = &text[text.len().saturating_sub(LOG_TAIL_BYTES)..];
    let b64 = base64::engine::general_purpose::STANDARD.encode(tail);
    HeaderValue::try_from(b64).expect("base64 is a valid header value")
}

/// The signature-based doors' credentials check: none, or `verify`'s.
pub(crate) fn signature_or_none(
    policy: &AuthPolicy<'_>,
    verify: impl FnOnce() -> Result<Authn, crate::auth::AuthError>,
) -> Result<Authn, InvokeError> {
    match policy.mode {
        crate::auth::AuthMode::None => Ok(Authn::Done(None)),
        crate::auth::AuthMode::Signature => verify().map_err(InvokeError::Unauthenticated),
    }
}

/// Whether `m` is POST, the method of every event invocation API.
pub(crate) fn require_post(m: &Method) -> Result<(), InvokeError> {
    if m == Method::POST {
        Ok(())
    } else {
        Err(InvokeError::MethodNotAllowed { method: m.clone() })
    }
}

#[cfg(test)]
mod tests;
