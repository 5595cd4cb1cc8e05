//! Function Compute 3.0 dialect.
//!
//! Request: `POST /2023-03-30/functions/{name}/invocations[?qualifier=Q]`,
//! body = event payload. Response: the function's status, content type and
//! body, plus `x-fc-request-id` and `x-fc-instance-id` (and fngate's own
//! `x-fngate-cold-start: true` when the invocation waited for an instance start).
//!
//! Errors: a JSON body `{"Code","Message","RequestId"}` (exactly what the FC
//! SDK parses) with the status FC uses. Function-side failures are HTTP 200
//! with `x-fc-error-type: UnhandledInvocationError` and `{"errorMessage": ...}`,
//! as FC reports an unhandled error inside the function.

use super::{Invocation, InvocationType};
use crate::error::InvokeError;
use crate::ingress::policy::Denial;
use crate::throttle::LimitKind;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use serde::Serialize;

pub const PATH_PREFIX: &str = "/2023-03-30/functions/";
pub const REQUEST_ID: &str = "x-fc-request-id";
pub const INSTANCE_ID: &str = "x-fc-instance-id";
pub const ERROR_TYPE: &str = "x-fc-error-type";
/// `Sync` (the default) or `Async`.
pub const INVOCATION_TYPE: &str = "x-fc-invocation-type";
/// fngate's own: set when the invocation waited for its instance to start.
pub const COLD_START: &str = "x-fngate-cold-start";

/// The invocation type header: absent or `Sync`, or `Async` (any case).
pub fn invocation_type(headers: &http::HeaderMap) -> Result<InvocationType, InvokeError> {
    match headers.get(INVOCATION_TYPE).map(HeaderValue::as_bytes) {
        None => Ok(InvocationType::Sync),
        Some(v) if v.eq_ignore_ascii_case(b"sync") => Ok(InvocationType::Sync),
        Some(v) if v.eq_ignore_ascii_case(b"async") => Ok(InvocationType::Async),
        Some(v) => Err(InvokeError::InvalidArgument {
            message: format!(
                "{INVOCATION_TYPE} must be Sync or Async, not {:?}",
                String::from_utf8_lossy(v)
            )
            .into(),
        }),
    }
}

/// Decodes the request head. Borrowed: no allocation on the hot path.
pub fn decode<'a>(method: &Method, uri: &'a http::Uri) -> Result<Invocation<'a>, InvokeError> {
    let path = uri.path();
    let Some(name) = path
        .strip_prefix(PATH_PREFIX)
        .and_then(|rest| rest.strip_suffix("/invocations"))
        .filter(|n| !n.is_empty() && !n.contains('/'))
    else {
        return Err(InvokeError::RouteNotFound {
            method: method.clone(),
            path: path.to_string(),
        });
    };
    if method != Method::POST {
        return Err(InvokeError::MethodNotAllowed {
            method: method.clone(),
        });
    }
    let qualifier = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("qualifier="))
            .filter(|v| !v.is_empty())
    });
    Ok(Invocation {
        function: name,
        qualifier,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionErrorBody<'a> {
    error_message: &'a str,
    error_type: &'a str,
}

/// A rendered error: status, extra headers, JSON body.
pub struct Rendered {
    pub status: StatusCode,
    pub error_type: Option<HeaderValue>,
    pub body: Bytes,
    /// For throttling: `Retry-After` (seconds) and `x-acs-retry-after` (ms,
    /// which the FC SDK reads as a throttle).
    pub retry_after: Option<std::time::Duration>,
}

/// A JSON body in one allocation, sized for its strings plus the field
/// names, quotes and a little escaping.
fn json(body: &impl Serialize, strings_len: usize) -> Bytes {
    let mut v = Vec::with_capacity(strings_len + 64);
    match serde_json::to_writer(&mut v, body) {
        Ok(()) => Bytes::from(v),
        Err(_) => Bytes::new(),
    }
}

/// The one place FC error responses are made. Exhaustive: a new cause must
/// decide its FC rendering here.
pub fn render_error(err: &InvokeError, request_id: &str) -> Rendered {
    let gateway = |status: StatusCode, code: &str, message: &str| Rendered {
        status,
        error_type: None,
        retry_after: None,
        body: json(
            &ErrorBody {
                code,
                message,
                request_id,
            },
            code.len() + message.len() + request_id.len(),
        ),
    };
    let function = |error_type: &str, message: &str| Rendered {
        status: StatusCode::OK,
        retry_after: None,
        error_type: Some(HeaderValue::from_static("UnhandledInvocationError")),
        body: json(
            &FunctionErrorBody {
                error_message: message,
                error_type,
            },
            message.len() + error_type.len(),
        ),
    };
    match err {
        InvokeError::RouteNotFound { method, path } => gateway(
            StatusCode::NOT_FOUND,
            "PathNotSupported",
            &format!("{method} {path} is not a supported path"),
        ),
        InvokeError::MethodNotAllowed { method } => gateway(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("method {method} is not allowed; invocations use POST"),
        ),
        InvokeError::FunctionNotFound { name } => gateway(
            StatusCode::NOT_FOUND,
            "FunctionNotFound",
            &format!("function '{name}' does not exist"),
        ),
        InvokeError::InvalidArgument { message } => {
            gateway(StatusCode::BAD_REQUEST, "InvalidArgument", message)
        }
        InvokeError::PayloadTooLarge { limit, size } => gateway(
            StatusCode::BAD_REQUEST,
            "EntityTooLarge",
            &match size {
                Some(size) => {
                    format!("payload size {size} bytes exceeds the limit of {limit} bytes")
                }
                None => format!("payload exceeds the limit of {limit} bytes"),
            },
        ),
        InvokeError::BodyTimeout(t) => gateway(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            &format!("request body was not received within {} ms", t.as_millis()),
        ),
        InvokeError::BodyRead(_) => gateway(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "request body could not be read",
        ),
        InvokeError::AccessDenied(d) => gateway(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            &match d {
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
                    "Access denied by the implicit deny-all rule: no access rule allows this caller"
                        .into()
                }
            },
        ),
        InvokeError::Throttled(t) => {
            let what = match t.limit {
                LimitKind::CallerRate => "the caller's request rate limit for this function",
                LimitKind::GatewayCallerRate => "the caller's request rate limit for this gateway",
                LimitKind::FunctionRate => "the function's request rate limit",
                LimitKind::FunctionConcurrency => {
                    "the function's concurrency limit (max_concurrency)"
                }
                LimitKind::MaxInstances => "the gateway's instance limit (max_instances)",
                LimitKind::InstanceStartRate => {
                    "the gateway's instance scale-out rate limit (max_instance_starts_per_minute)"
                }
                LimitKind::AsyncQueue => {
                    "the gateway's asynchronous invocation queue (max_async_queued)"
                }
            };
            let mut r = gateway(
                StatusCode::TOO_MANY_REQUESTS,
                "ResourceThrottled",
                &format!(
                    "Request throttled: {what} was exceeded; retry after {} ms",
                    t.retry_after.as_millis().max(1)
                ),
            );
            r.retry_after = Some(t.retry_after);
            r
        }
        InvokeError::NoCapacity { memory_mb } => gateway(
            StatusCode::TOO_MANY_REQUESTS,
            "ResourceExhausted",
            &format!("no worker has {memory_mb} MB of memory free for a new instance"),
        ),
        InvokeError::InstanceStartFailed {
            message,
            stderr_tail,
        } => gateway(
            StatusCode::PRECONDITION_FAILED,
            "CAExited",
            &format!(
                "Function instance exited unexpectedly: instance failed to start: {message}. Logs: {}",
                stderr_tail.trim_end()
            ),
        ),
        InvokeError::ShuttingDown => gateway(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the gateway is shutting down; retry",
        ),
        InvokeError::Internal(_) => gateway(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "an internal error occurred",
        ),
        InvokeError::FunctionTimeout(t) => function(
            "FunctionTimeout",
            &format!("Function timed out after {} seconds", t.as_secs()),
        ),
        InvokeError::InstanceCrashed { detail } => function(
            "InstanceExited",
            &format!("Function instance {detail} during the invocation"),
        ),
        InvokeError::BadFunctionResponse { detail } => function(
            "InvalidResponse",
            &format!("Function instance returned an invalid response: {detail}"),
        ),
    }
}

#[cfg(test)]
mod tests;
