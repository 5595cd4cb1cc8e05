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
    APPLICATION_JSON, Api, Dialect, FunctionAnswer, Invocation, Kind, Reply, ResponseBody,
    TaskAnswer, TaskOp, Trigger, backend_message, denial_message, function_error_body, json,
    limit_description, log_tail_header, millis_header, query_param, require_post, response,
    retry_after_header, signature_or_none,
};
use crate::asynchronous::task::{TaskRecord, TaskState, valid_task_id};
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
/// An asynchronous invocation's caller-chosen task id (and, in the answer,
/// the id it was accepted under).
pub const ASYNC_TASK_ID: HeaderName = HeaderName::from_static("x-fc-async-task-id");

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
        let not_found = || InvokeError::RouteNotFound {
            method: parts.method.clone(),
            path: path.to_string(),
        };
        let Some((name, rest)) = path
            .strip_prefix(PATH_PREFIX)
            .and_then(|rest| rest.split_once('/'))
            .filter(|(n, _)| !n.is_empty())
        else {
            return Err(not_found());
        };
        let query = parts.uri.query();
        let qualifier = query_param(query, "qualifier").filter(|v| !v.is_empty());
        if rest != "invocations" {
            let op = task_op(rest, &parts.method, query).ok_or_else(not_found)??;
            return Ok(Invocation {
                qualifier: qualifier.map(Cow::Borrowed),
                kind: Kind::TaskApi,
                task_op: Some(op),
                ..Invocation::event(name)
            });
        }
        require_post(&parts.method)?;
        let kind = if header_is(&parts.headers, INVOCATION_TYPE, ["Sync", "Async"])? {
            Kind::Async
        } else {
            Kind::Sync
        };
        let task_id = match parts.headers.get(&ASYNC_TASK_ID) {
            None => None,
            Some(v) => match v.to_str() {
                Ok(id) if valid_task_id(id) => Some(id),
                _ => {
                    return Err(InvokeError::InvalidArgument {
                        message: format!(
                            "{ASYNC_TASK_ID} must start with a letter or '_' and hold at most 128 letters, digits, '_' or '-', not {:?}",
                            String::from_utf8_lossy(v.as_bytes())
                        )
                        .into(),
                    });
                }
            },
        };
        Ok(Invocation {
            function: Cow::Borrowed(name),
            qualifier: qualifier.map(Cow::Borrowed),
            kind,
            trigger: Trigger::Event,
            log_tail: header_is(&parts.headers, LOG_TYPE, ["None", "Tail"])?,
            client_context: None,
            task_id,
            task_op: None,
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
        // A cloud backend's failed function: FC's own rendering of one.
        let status = match answer.failed {
            true => StatusCode::OK,
            false => answer.status,
        };
        let mut resp = response(status, ct, answer.body);
        if answer.failed {
            resp.headers_mut().insert(
                ERROR_TYPE,
                HeaderValue::from_static("UnhandledInvocationError"),
            );
        }
        self.add_common(&mut resp, reply);
        resp
    }

    fn accepted(&self, _kind: Kind, reply: &Reply<'_>) -> Response<ResponseBody> {
        let mut resp = response(StatusCode::ACCEPTED, None, Bytes::new());
        let h = resp.headers_mut();
        h.insert(REQUEST_ID, reply.request_id.clone());
        if let Some(Ok(id)) = reply.task_id.map(HeaderValue::from_str) {
            h.insert(ASYNC_TASK_ID, id);
        }
        resp
    }

    fn task(&self, answer: &TaskAnswer<'_>, reply: &Reply<'_>) -> Response<ResponseBody> {
        let body = match answer {
            TaskAnswer::One { task, payload } => task_json(task, *payload).to_string(),
            TaskAnswer::List(tasks) => serde_json::json!({
                "tasks": tasks.iter().map(|t| task_json(t, None)).collect::<Vec<_>>(),
            })
            .to_string(),
            TaskAnswer::Stopped => String::new(),
        };
        let ct = (!body.is_empty()).then_some(APPLICATION_JSON);
        let mut resp = response(StatusCode::OK, ct, Bytes::from(body));
        self.add_common(&mut resp, reply);
        resp
    }

    fn status(&self, err: &InvokeError) -> StatusCode {
        match err {
            InvokeError::RouteNotFound { .. }
            | InvokeError::FunctionNotFound { .. }
            | InvokeError::AsyncTaskNotFound { .. } => StatusCode::NOT_FOUND,
            InvokeError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            InvokeError::InvalidArgument { .. }
            | InvokeError::InvalidContent { .. }
            | InvokeError::PayloadTooLarge { .. }
            | InvokeError::BodyRead(_) => StatusCode::BAD_REQUEST,
            InvokeError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            InvokeError::AsyncTaskStopped => StatusCode::PRECONDITION_FAILED,
            InvokeError::Unauthenticated(AuthError::Missing) => StatusCode::BAD_REQUEST,
            InvokeError::Unauthenticated(_) | InvokeError::AccessDenied(_) => StatusCode::FORBIDDEN,
            InvokeError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            InvokeError::Throttled(_) | InvokeError::NoCapacity { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            InvokeError::InstanceStartFailed { .. } => StatusCode::PRECONDITION_FAILED,
            InvokeError::ShuttingDown
            | InvokeError::WorkerUnavailable
            | InvokeError::QueueUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            InvokeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            InvokeError::BackendError { .. } => StatusCode::BAD_GATEWAY,
            InvokeError::BackendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::BackendThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
            InvokeError::FunctionTimeout(_)
            | InvokeError::InstanceCrashed { .. }
            | InvokeError::BadFunctionResponse { .. }
            | InvokeError::FunctionFailed => StatusCode::OK,
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
            InvokeError::HeadersTooLarge { limit, size } => gateway(
                "RequestHeaderFieldsTooLarge",
                &format!("request headers of {size} bytes exceed the limit of {limit} bytes"),
            ),
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
            InvokeError::QueueUnavailable { .. } => gateway(
                "ServiceUnavailable",
                "the asynchronous task queue did not answer; retry",
            ),
            InvokeError::AsyncTaskNotFound { id } => gateway(
                "AsyncTaskNotFound",
                &format!("async task '{id}' does not exist"),
            ),
            InvokeError::AsyncTaskStopped => gateway(
                "AsyncInvocationStopped",
                "the asynchronous invocation was stopped",
            ),
            InvokeError::Internal(_) => {
                gateway("InternalServerError", "an internal error occurred")
            }
            InvokeError::BackendError { .. } => gateway("BadResponse", &backend_message(err)),
            InvokeError::BackendTimeout { .. } => gateway("GatewayTimeout", &backend_message(err)),
            InvokeError::BackendThrottled {
                retry_after: after, ..
            } => {
                retry_after = *after;
                gateway(
                    "ResourceThrottled",
                    &format!("Request throttled: {}", backend_message(err)),
                )
            }
            InvokeError::FunctionFailed => {
                function_error = true;
                function("FunctionError", "the function failed in its backend")
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

/// `async-tasks[/{id}[/stop]]` after the function's name: `None` for any
/// other path, `Some(Err)` for a known path with a wrong method or query.
fn task_op<'a>(
    rest: &'a str,
    method: &http::Method,
    query: Option<&'a str>,
) -> Option<Result<TaskOp<'a>, InvokeError>> {
    let rest = rest.strip_prefix("async-tasks")?;
    let wrong = |m: &http::Method| Some(Err(InvokeError::MethodNotAllowed { method: m.clone() }));
    let id = |s: &'a str| super::percent_decode(s, false);
    let (op, want) = match rest.split('/').collect::<Vec<_>>()[..] {
        [""] => {
            let state = match query_param(query, "status").filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => match TaskState::parse(s) {
                    Some(t) => Some(t),
                    None => {
                        return Some(Err(InvokeError::InvalidArgument {
                            message: format!("status {s:?} is not a task status").into(),
                        }));
                    }
                },
            };
            let limit = match query_param(query, "limit") {
                None => 20,
                Some(l) => match l.parse::<usize>() {
                    Ok(n @ 1..=100) => n,
                    _ => {
                        return Some(Err(InvokeError::InvalidArgument {
                            message: format!("limit must be 1..=100, not {l:?}").into(),
                        }));
                    }
                },
            };
            let include_payload = query_param(query, "includePayload").is_some_and(|v| v == "true");
            let op = TaskOp::List {
                state,
                limit,
                include_payload,
            };
            (op, http::Method::GET)
        }
        ["", t] if !t.is_empty() => (TaskOp::Get { id: id(t)? }, http::Method::GET),
        ["", t, "stop"] if !t.is_empty() => (TaskOp::Stop { id: id(t)? }, http::Method::PUT),
        _ => return None,
    };
    if *method != want {
        return wrong(method);
    }
    Some(Ok(op))
}

/// A task as FC 3.0's `AsyncTask` model names its fields.
fn task_json(t: &TaskRecord, payload: Option<&[u8]>) -> serde_json::Value {
    let started = t.started_ms.unwrap_or(t.accepted_ms);
    let mut v = serde_json::json!({
        "taskId": t.id,
        "requestId": t.request_id,
        "functionArn": t.function,
        "status": t.state.as_str(),
        "alreadyRetriedTimes": t.attempts.saturating_sub(1),
        "startedTime": started,
        "events": t.events.iter().enumerate().map(|(i, e)| serde_json::json!({
            "eventId": i,
            "status": e.status,
            "timestamp": e.timestamp_ms,
            "eventDetail": e.detail,
        })).collect::<Vec<_>>(),
    });
    let o = v.as_object_mut().expect("an object");
    if let Some(q) = &t.qualifier {
        o.insert("qualifier".into(), q.as_str().into());
    }
    if let Some(end) = t.ended_ms {
        o.insert("endTime".into(), end.into());
        o.insert("durationMs".into(), end.saturating_sub(started).into());
    }
    if let Some(i) = &t.instance_id {
        o.insert("instanceId".into(), i.as_str().into());
    }
    if let Some(e) = &t.error {
        o.insert("taskErrorMessage".into(), e.as_str().into());
    }
    if let Some(p) = payload {
        o.insert(
            "taskPayload".into(),
            String::from_utf8_lossy(p).into_owned().into(),
        );
    }
    v
}

#[cfg(test)]
mod tests;
