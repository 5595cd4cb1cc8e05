//! Function Compute 3.0 dialect.
//!
//! Request: `POST /2023-03-30/functions/{name}/invocations[?qualifier=Q]`,
//! body = event payload; `x-fc-invocation-type: Sync | Async`,
//! `x-fc-log-type: None | Tail`. Signed requests use ACS3-HMAC-SHA256
//! ([`acs3`]). Response: the function's status, content type and body, plus
//! `x-fc-request-id`, `x-fc-instance-id`, and with `Tail` the instance's
//! output in `x-fc-log-result` (base64, last 4 KB).
//!
//! Errors: a JSON body `{"Code","Message","RequestId"}` (exactly what the FC
//! SDK parses) with the status FC uses; throttling adds `x-acs-retry-after`
//! (ms, which the SDK turns into a throttling error) and `Retry-After`.
//! Function-side failures are HTTP 200 with
//! `x-fc-error-type: UnhandledInvocationError` and `{"errorMessage": ...}`,
//! as FC reports an unhandled error inside the function.
//!
//! This is also the dialect of paths no other dialect claims: they get
//! `PathNotSupported`.

pub mod acs3;

use super::{
    APPLICATION_JSON, Api, Dialect, FunctionAnswer, Invocation, Kind, Reply, ResponseBody, Trigger,
    denial_message, function_error_body, json, limit_description, log_tail_header, millis_header,
    query_param, require_post, response, retry_after_header, signature_or_none,
};
use crate::auth::{AuthError, AuthPolicy, Authn};
use crate::error::InvokeError;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use serde::Serialize;
use std::borrow::Cow;

pub const PATH_PREFIX: &str = "/2023-03-30/functions/";
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-fc-request-id");
pub const INSTANCE_ID: HeaderName = HeaderName::from_static("x-fc-instance-id");
pub const ERROR_TYPE: HeaderName = HeaderName::from_static("x-fc-error-type");
/// `Sync` (the default) or `Async`.
pub const INVOCATION_TYPE: HeaderName = HeaderName::from_static("x-fc-invocation-type");
/// `None` (the default) or `Tail`.
pub const LOG_TYPE: HeaderName = HeaderName::from_static("x-fc-log-type");
pub const LOG_RESULT: HeaderName = HeaderName::from_static("x-fc-log-result");
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-acs-retry-after");

#[derive(Debug, Default)]
pub struct Fc;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
}

fn header_is(
    headers: &http::HeaderMap,
    name: HeaderName,
    values: [&str; 2],
) -> Result<bool, InvokeError> {
    match headers.get(&name).map(HeaderValue::as_bytes) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case(values[0].as_bytes()) => Ok(false),
        Some(v) if v.eq_ignore_ascii_case(values[1].as_bytes()) => Ok(true),
        Some(v) => Err(InvokeError::InvalidArgument {
            message: format!(
                "{name} must be {} or {}, not {:?}",
                values[0],
                values[1],
                String::from_utf8_lossy(v)
            )
            .into(),
        }),
    }
}

/// `x-fc-log-result`: FC's start and end lines around the instance's output,
/// its last [`super::LOG_TAIL_BYTES`], base64.
fn log_result(log: &[u8], request_id: &str) -> HeaderValue {
    let mut text = Vec::with_capacity(log.len() + 96);
    text.extend_from_slice(b"FC Invoke Start RequestId: ");
    text.extend_from_slice(request_id.as_bytes());
    text.push(b'\n');
    text.extend_from_slice(log);
    if !log.is_empty() && !log.ends_with(b"\n") {
        text.push(b'\n');
    }
    text.extend_from_slice(b"FC Invoke End RequestId: ");
    text.extend_from_slice(request_id.as_bytes());
    log_tail_header(&text)
}

impl Fc {
    fn add_common(&self, resp: &mut Response<ResponseBody>, reply: &Reply<'_>) {
        let h = resp.headers_mut();
        if let Some(ran) = reply.ran {
            h.insert(INSTANCE_ID, ran.instance_id.clone());
            if let Some(log) = &ran.log {
                h.insert(
                    LOG_RESULT,
                    log_result(log, reply.request_id.to_str().unwrap_or_default()),
                );
            }
        }
        h.insert(REQUEST_ID, reply.request_id.clone());
    }
}

impl Dialect for Fc {
    fn api(&self) -> Api {
        Api::Fc
    }

    fn decode<'a>(&self, parts: &'a http::request::Parts) -> Result<Invocation<'a>, InvokeError> {
        let path = parts.uri.path();
        let Some(name) = path
            .strip_prefix(PATH_PREFIX)
            .and_then(|rest| rest.strip_suffix("/invocations"))
            .filter(|n| !n.is_empty() && !n.contains('/'))
        else {
            return Err(InvokeError::RouteNotFound {
                method: parts.method.clone(),
                path: path.to_string(),
            });
        };
        require_post(&parts.method)?;
        let qualifier = query_param(parts.uri.query(), "qualifier").filter(|v| !v.is_empty());
        let kind = if header_is(&parts.headers, INVOCATION_TYPE, ["Sync", "Async"])? {
            Kind::Async
        } else {
            Kind::Sync
        };
        Ok(Invocation {
            function: Cow::Borrowed(name),
            qualifier: qualifier.map(Cow::Borrowed),
            kind,
            trigger: Trigger::Event,
            log_tail: header_is(&parts.headers, LOG_TYPE, ["None", "Tail"])?,
            client_context: None,
        })
    }

    fn authenticate(
        &self,
        parts: &http::request::Parts,
        policy: &AuthPolicy<'_>,
    ) -> Result<Authn, InvokeError> {
        signature_or_none(policy, || acs3::verify(parts, policy))
    }

    fn success(&self, answer: FunctionAnswer, reply: &Reply<'_>) -> Response<ResponseBody> {
        let mut headers = answer.headers;
        let ct = headers.remove(http::header::CONTENT_TYPE);
        let mut resp = response(answer.status, ct, answer.body);
        self.add_common(&mut resp, reply);
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
            InvokeError::RouteNotFound { .. } | InvokeError::FunctionNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            InvokeError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            InvokeError::InvalidArgument { .. }
            | InvokeError::InvalidContent { .. }
            | InvokeError::PayloadTooLarge { .. }
            | InvokeError::BodyRead(_) => StatusCode::BAD_REQUEST,
            InvokeError::Unauthenticated(AuthError::Missing) => StatusCode::BAD_REQUEST,
            InvokeError::Unauthenticated(_) | InvokeError::AccessDenied(_) => StatusCode::FORBIDDEN,
            InvokeError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            InvokeError::Throttled(_) | InvokeError::NoCapacity { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            InvokeError::InstanceStartFailed { .. } => StatusCode::PRECONDITION_FAILED,
            InvokeError::ShuttingDown | InvokeError::WorkerUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            InvokeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            InvokeError::FunctionTimeout(_)
            | InvokeError::InstanceCrashed { .. }
            | InvokeError::BadFunctionResponse { .. } => StatusCode::OK,
        }
    }

    /// Exhaustive: a new cause must decide its FC rendering here.
    fn error(&self, err: &InvokeError, reply: &Reply<'_>) -> Response<ResponseBody> {
        let status = self.status(err);
        let request_id = reply.request_id.to_str().unwrap_or_default();
        let gateway = |code: &str, message: &str| {
            json(
                &ErrorBody {
                    code,
                    message,
                    request_id,
                },
                code.len() + message.len() + request_id.len(),
            )
        };
        let function = function_error_body;
        let mut retry_after = None;
        let mut function_error = false;
        let body = match err {
            InvokeError::RouteNotFound { method, path } => gateway(
                "PathNotSupported",
                &format!("{method} {path} is not a supported path"),
            ),
            InvokeError::MethodNotAllowed { method } => gateway(
                "MethodNotAllowed",
                &format!("method {method} is not allowed; invocations use POST"),
            ),
            InvokeError::FunctionNotFound { name } => gateway(
                "FunctionNotFound",
                &format!("function '{name}' does not exist"),
            ),
            InvokeError::InvalidArgument { message } | InvokeError::InvalidContent { message } => {
                gateway("InvalidArgument", message)
            }
            InvokeError::PayloadTooLarge { limit, size } => gateway(
                "EntityTooLarge",
                &match size {
                    Some(size) => {
                        format!("payload size {size} bytes exceeds the limit of {limit} bytes")
                    }
                    None => format!("payload exceeds the limit of {limit} bytes"),
                },
            ),
            InvokeError::BodyTimeout(t) => gateway(
                "RequestTimeout",
                &format!("request body was not received within {} ms", t.as_millis()),
            ),
            InvokeError::BodyRead(_) => {
                gateway("InvalidArgument", "request body could not be read")
            }
            InvokeError::Unauthenticated(a) => match a {
                AuthError::Missing => gateway(
                    "MissingRequiredHeader",
                    "required HTTP header Authorization was not specified",
                ),
                AuthError::UnknownKey(id) => gateway(
                    "InvalidAccessKeyID",
                    &format!("invalid access key ID '{id}'"),
                ),
                AuthError::Expired { date } => gateway(
                    "SignatureNotMatch",
                    &format!(
                        "the request time x-acs-date {date} is too far from the server time; check the client clock"
                    ),
                ),
                AuthError::PayloadMismatch => gateway(
                    "SignatureNotMatch",
                    "the request body does not match its signed x-acs-content-sha256",
                ),
                AuthError::Malformed(why) => gateway(
                    "SignatureNotMatch",
                    &format!("the Authorization header cannot be used: {why}"),
                ),
                AuthError::BadSignature | AuthError::BadKey => gateway(
                    "SignatureNotMatch",
                    "The request signature we calculated does not match the signature you provided. Check your access key and signing method.",
                ),
            },
            InvokeError::AccessDenied(d) => gateway("AccessDenied", &denial_message(d)),
            InvokeError::Throttled(t) => {
                retry_after = Some(t.retry_after);
                gateway(
                    "ResourceThrottled",
                    &format!(
                        "Request throttled: {} was exceeded; retry after {} ms",
                        limit_description(t.limit),
                        t.retry_after.as_millis().max(1)
                    ),
                )
            }
            InvokeError::NoCapacity { memory_mb } => gateway(
                "ResourceExhausted",
                &format!("no worker has {memory_mb} MB of memory free for a new instance"),
            ),
            InvokeError::InstanceStartFailed {
                message,
                stderr_tail,
            } => gateway(
                "CAExited",
                &format!(
                    "Function instance exited unexpectedly: instance failed to start: {message}. Logs: {}",
                    stderr_tail.trim_end()
                ),
            ),
            InvokeError::ShuttingDown => {
                gateway("ServiceUnavailable", "the gateway is shutting down; retry")
            }
            InvokeError::WorkerUnavailable => gateway(
                "ServiceUnavailable",
                "no sandbox worker could start an instance in time; retry",
            ),
            InvokeError::Internal(_) => {
                gateway("InternalServerError", "an internal error occurred")
            }
            InvokeError::FunctionTimeout(t) => {
                function_error = true;
                function(
                    "FunctionTimeout",
                    &format!("Function timed out after {} seconds", t.as_secs()),
                )
            }
            InvokeError::InstanceCrashed { detail } => {
                function_error = true;
                function(
                    "InstanceExited",
                    &format!("Function instance {detail} during the invocation"),
                )
            }
            InvokeError::BadFunctionResponse { detail } => {
                function_error = true;
                function(
                    "InvalidResponse",
                    &format!("Function instance returned an invalid response: {detail}"),
                )
            }
        };
        let mut resp = response(status, Some(APPLICATION_JSON), body);
        let h = resp.headers_mut();
        if function_error {
            h.insert(
                ERROR_TYPE,
                HeaderValue::from_static("UnhandledInvocationError"),
            );
        }
        if let Some(wait) = retry_after {
            h.insert(http::header::RETRY_AFTER, retry_after_header(wait));
            h.insert(RETRY_AFTER_MS, millis_header(wait));
        }
        self.add_common(&mut resp, reply);
        resp
    }
}

#[cfg(test)]
mod tests;
