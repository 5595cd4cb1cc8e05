//! Azure Functions HTTP-trigger dialect.
//!
//! Request: any method on `/api/{name}[/{rest}][?query]`. The whole request
//! goes to the function by the HTTP-trigger contract: the caller's method
//! and headers at `/{rest}` with the query (see README, "HTTP-trigger
//! functions"); the function's status, headers and body come back as they are.
//!
//! Keys (`auth_level = "function"`): a function key or a host key in
//! `x-functions-key` or `?code=`; missing or wrong is 401 with an empty body
//! and no instance touched. The `code` parameter and the key header never
//! reach the function.
//!
//! A function error (crash, timeout, invalid answer) is 500 with an empty
//! body, as Azure answers it; a function that cannot start is 503. Policy and
//! throttling refusals use the statuses of the other doors (403, 429 with
//! `Retry-After`) with a small JSON body `{"error":{"code","message"}}`.
//! Every answer carries the request id in `x-ms-request-id`.

use super::{
    APPLICATION_JSON, Api, Dialect, FunctionAnswer, Invocation, Kind, Reply, ResponseBody, Trigger,
    backend_message, denial_message, json, limit_description, passthrough_headers, percent_decode,
    response, retry_after_header,
};
use crate::auth::{AuthError, AuthLevel, AuthPolicy, Authn};
use crate::error::InvokeError;
use bytes::Bytes;
use http::{HeaderName, Response, StatusCode};
use serde::Serialize;
use std::borrow::Cow;

pub const PATH_PREFIX: &str = "/api/";
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");
pub const KEY_HEADER: &str = "x-functions-key";
const KEY_PARAM: &str = "code";

#[derive(Debug, Default)]
pub struct Azure;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

/// `query` without its `code` parameters (borrowed when it has none).
fn without_key(query: &str) -> Cow<'_, str> {
    let is_key = |kv: &&str| kv.split('=').next() == Some(KEY_PARAM);
    if !query.split('&').any(|kv| is_key(&kv)) {
        return Cow::Borrowed(query);
    }
    Cow::Owned(
        query
            .split('&')
            .filter(|kv| !kv.is_empty() && !is_key(kv))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

impl Dialect for Azure {
    fn api(&self) -> Api {
        Api::Azure
    }

    fn decode<'a>(&self, parts: &'a http::request::Parts) -> Result<Invocation<'a>, InvokeError> {
        let path = parts.uri.path();
        let rest = path.strip_prefix(PATH_PREFIX).unwrap_or("");
        let (name, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if name.is_empty() {
            return Err(InvokeError::RouteNotFound {
                method: parts.method.clone(),
                path: path.to_string(),
            });
        }
        let query = parts.uri.query().map(without_key).filter(|q| !q.is_empty());
        Ok(Invocation {
            function: Cow::Borrowed(name),
            qualifier: None,
            kind: Kind::Sync,
            trigger: Trigger::Http {
                path: tail,
                query,
                consumed_headers: &[KEY_HEADER],
            },
            log_tail: false,
            client_context: None,
            task_id: None,
            task_op: None,
        })
    }

    fn authenticate(
        &self,
        parts: &http::request::Parts,
        policy: &AuthPolicy<'_>,
    ) -> Result<Authn, InvokeError> {
        if policy.level == AuthLevel::Anonymous {
            return Ok(Authn::Done(None));
        }
        let from_query =
            super::query_param(parts.uri.query(), KEY_PARAM).and_then(|k| percent_decode(k, true));
        let presented: Option<Cow<'_, [u8]>> = match parts.headers.get(KEY_HEADER) {
            Some(v) => Some(Cow::Borrowed(v.as_bytes())),
            None => from_query.map(|k| match k {
                Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            }),
        };
        match presented {
            None => Err(InvokeError::Unauthenticated(AuthError::Missing)),
            Some(k) if policy.key_named(&k).is_some() => Ok(Authn::Done(None)),
            Some(_) => Err(InvokeError::Unauthenticated(AuthError::BadKey)),
        }
    }

    fn success(&self, answer: FunctionAnswer, reply: &Reply<'_>) -> Response<ResponseBody> {
        let mut resp = response(answer.status, None, answer.body);
        *resp.headers_mut() = passthrough_headers(answer.headers);
        resp.headers_mut()
            .insert(REQUEST_ID, reply.request_id.clone());
        resp
    }

    fn accepted(&self, _kind: Kind, reply: &Reply<'_>) -> Response<ResponseBody> {
        let mut resp = response(StatusCode::ACCEPTED, None, Bytes::new());
        resp.headers_mut()
            .insert(REQUEST_ID, reply.request_id.clone());
        resp
    }

    fn status(&self, err: &InvokeError) -> StatusCode {
        match err {
            InvokeError::RouteNotFound { .. }
            | InvokeError::FunctionNotFound { .. }
            | InvokeError::AsyncTaskNotFound { .. } => StatusCode::NOT_FOUND,
            InvokeError::AsyncTaskStopped => StatusCode::CONFLICT,
            InvokeError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            InvokeError::InvalidArgument { .. }
            | InvokeError::InvalidContent { .. }
            | InvokeError::BodyRead(_) => StatusCode::BAD_REQUEST,
            InvokeError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InvokeError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            InvokeError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            InvokeError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            InvokeError::AccessDenied(_) => StatusCode::FORBIDDEN,
            InvokeError::Throttled(_) | InvokeError::NoCapacity { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            InvokeError::InstanceStartFailed { .. }
            | InvokeError::ShuttingDown
            | InvokeError::WorkerUnavailable
            | InvokeError::QueueUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            InvokeError::Internal(_)
            | InvokeError::FunctionTimeout(_)
            | InvokeError::InstanceCrashed { .. }
            | InvokeError::BadFunctionResponse { .. }
            | InvokeError::FunctionFailed => StatusCode::INTERNAL_SERVER_ERROR,
            InvokeError::BackendError { .. } => StatusCode::BAD_GATEWAY,
            InvokeError::BackendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::BackendThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Exhaustive: a new cause must decide its Azure rendering here.
    fn error(&self, err: &InvokeError, reply: &Reply<'_>) -> Response<ResponseBody> {
        let status = self.status(err);
        let body = |code: &str, message: &str| {
            Some(json(
                &ErrorBody {
                    error: Inner { code, message },
                },
                code.len() + message.len(),
            ))
        };
        let mut retry_after = None;
        let body = match err {
            InvokeError::RouteNotFound { .. } => body("NotFound", "No route matches the request."),
            InvokeError::MethodNotAllowed { method } => body(
                "MethodNotAllowed",
                &format!("method {method} is not allowed"),
            ),
            InvokeError::FunctionNotFound { name } => body(
                "FunctionNotFound",
                &format!("function '{name}' does not exist"),
            ),
            InvokeError::InvalidArgument { message } | InvokeError::InvalidContent { message } => {
                body("BadRequest", message)
            }
            InvokeError::BodyRead(_) => body("BadRequest", "the request body could not be read"),
            InvokeError::HeadersTooLarge { limit, size } => body(
                "RequestHeaderFieldsTooLarge",
                &format!("request headers of {size} bytes exceed the limit of {limit} bytes"),
            ),
            InvokeError::PayloadTooLarge { limit, .. } => body(
                "PayloadTooLarge",
                &format!("the request body exceeds the limit of {limit} bytes"),
            ),
            InvokeError::BodyTimeout(t) => body(
                "RequestTimeout",
                &format!(
                    "the request body was not received within {} ms",
                    t.as_millis()
                ),
            ),
            // Azure answers a missing or wrong key with a bare 401.
            InvokeError::Unauthenticated(_) => None,
            InvokeError::AccessDenied(d) => body("AccessDenied", &denial_message(d)),
            InvokeError::Throttled(t) => {
                retry_after = Some(t.retry_after);
                body(
                    "TooManyRequests",
                    &format!(
                        "Too many requests: {} was exceeded",
                        limit_description(t.limit)
                    ),
                )
            }
            InvokeError::NoCapacity { memory_mb } => body(
                "TooManyRequests",
                &format!("no worker has {memory_mb} MB of memory free for a new instance"),
            ),
            InvokeError::InstanceStartFailed { .. } => {
                body("ServiceUnavailable", "Function host is not running.")
            }
            InvokeError::ShuttingDown => {
                body("ServiceUnavailable", "the gateway is shutting down; retry")
            }
            // Azure's door has no asynchronous invocations; exhaustive all the same.
            InvokeError::AsyncTaskNotFound { .. } => body("NotFound", "no such asynchronous task"),
            InvokeError::AsyncTaskStopped => body("Conflict", "the asynchronous task was stopped"),
            InvokeError::WorkerUnavailable => body(
                "ServiceUnavailable",
                "no sandbox worker could start an instance in time; retry",
            ),
            InvokeError::QueueUnavailable { .. } => body(
                "ServiceUnavailable",
                "the asynchronous task queue did not answer; retry",
            ),
            InvokeError::BackendError { .. } => body("BadGateway", &backend_message(err)),
            InvokeError::BackendTimeout { .. } => body("GatewayTimeout", &backend_message(err)),
            InvokeError::BackendThrottled {
                retry_after: after, ..
            } => {
                retry_after = *after;
                body(
                    "TooManyRequests",
                    &format!("Too many requests: {}", backend_message(err)),
                )
            }
            // As Azure: a failed function is a bare 500, its cause stays in the logs.
            InvokeError::Internal(_)
            | InvokeError::FunctionTimeout(_)
            | InvokeError::InstanceCrashed { .. }
            | InvokeError::BadFunctionResponse { .. }
            | InvokeError::FunctionFailed => None,
        };
        let ct = body.is_some().then_some(APPLICATION_JSON);
        let mut resp = response(status, ct, body.unwrap_or_default());
        let h = resp.headers_mut();
        if let Some(wait) = retry_after {
            h.insert(http::header::RETRY_AFTER, retry_after_header(wait));
        }
        h.insert(REQUEST_ID, reply.request_id.clone());
        resp
    }
}

#[cfg(test)]
mod tests;
