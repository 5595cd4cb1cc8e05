//! AWS Lambda Invoke dialect, as botocore speaks it.
//!
//! Request: `POST /2015-03-31/functions/{FunctionName}/invocations[?Qualifier=Q]`.
//! `FunctionName` is a name, `name:qualifier`, a full ARN
//! (`arn:aws:lambda:<region>:<account>:function:<name>[:<qualifier>]`) or a
//! partial one (`<account>:function:<name>[:<qualifier>]`), percent-encoded in
//! the path. The account and region of an ARN are ignored unless `[lambda]`
//! configures them. Headers: `X-Amz-Invocation-Type` (`RequestResponse`,
//! `Event`, `DryRun`), `X-Amz-Log-Type` (`None`, `Tail`),
//! `X-Amz-Client-Context` (base64 JSON, handed to the function). Signed
//! requests use AWS Signature Version 4 ([`sigv4`]).
//!
//! Response: 200 with the function's payload (202 for `Event`, 204 for
//! `DryRun`), `x-amzn-RequestId`, `X-Amz-Executed-Version`, and with `Tail`
//! the last 4 KB of the instance's log (base64) in `X-Amz-Log-Result`. A
//! function error (timeout, crash, invalid answer, failed start) is 200 with
//! `X-Amz-Function-Error: Unhandled` and `{"errorMessage","errorType"}`; a
//! function that answers with a status of 400 or more gets
//! `X-Amz-Function-Error: Handled` and its own body.
//!
//! Errors: status, `x-amzn-ErrorType: <code>` and
//! `{"Type":"User"|"Service","message":...}`, the order in which botocore
//! looks for the code; throttling adds `Reason`, `Retry-After` (s) and
//! `x-amz-retry-after` (ms, the one botocore's retry delay honours).

pub mod sigv4;

use super::{
    APPLICATION_JSON, Api, Dialect, FunctionAnswer, Invocation, Kind, Reply, ResponseBody, Trigger,
    backend_message, denial_message, function_error_body, json, limit_description, log_tail_header,
    millis_header, percent_decode, query_param, require_post, response, retry_after_header,
    signature_or_none,
};
use crate::auth::{AuthError, AuthPolicy, Authn};
use crate::error::InvokeError;
use crate::throttle::LimitKind;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use serde::Serialize;
use std::borrow::Cow;

pub const PATH_PREFIX: &str = "/2015-03-31/functions/";
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");
pub const ERROR_TYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");
pub const INVOCATION_TYPE: HeaderName = HeaderName::from_static("x-amz-invocation-type");
pub const LOG_TYPE: HeaderName = HeaderName::from_static("x-amz-log-type");
pub const LOG_RESULT: HeaderName = HeaderName::from_static("x-amz-log-result");
pub const CLIENT_CONTEXT: HeaderName = HeaderName::from_static("x-amz-client-context");
pub const FUNCTION_ERROR: HeaderName = HeaderName::from_static("x-amz-function-error");
pub const EXECUTED_VERSION: HeaderName = HeaderName::from_static("x-amz-executed-version");
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-amz-retry-after");
/// Lambda's bound on `X-Amz-Client-Context`.
pub const MAX_CLIENT_CONTEXT: usize = 3583;
/// fngate runs one version of each function: the one configured.
const VERSION: HeaderValue = HeaderValue::from_static("$LATEST");

pub use crate::config::LambdaSettings as Settings;

#[derive(Debug, Default)]
pub struct Lambda {
    /// `[lambda]`, swapped whole by a reload.
    settings: arc_swap::ArcSwap<Settings>,
}

impl Lambda {
    pub fn new(settings: Settings) -> Lambda {
        Lambda {
            settings: arc_swap::ArcSwap::from_pointee(settings),
        }
    }

    /// A reload's `[lambda]`, for the requests that follow.
    pub fn set_settings(&self, settings: Settings) {
        self.settings.store(std::sync::Arc::new(settings));
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "Type")]
    kind: &'a str,
    message: &'a str,
    #[serde(rename = "Reason", skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// A `FunctionName` split into its parts (all borrowed from it).
#[derive(Debug, PartialEq, Eq)]
struct FunctionName<'a> {
    name: &'a str,
    qualifier: Option<&'a str>,
    region: Option<&'a str>,
    account: Option<&'a str>,
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_qualifier(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'$' | b'.'))
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The forms Lambda accepts (its `FunctionName` pattern), or `None`.
fn parse_function_name(s: &str) -> Option<FunctionName<'_>> {
    if s.len() > 256 {
        return None;
    }
    // A full ARN with a qualifier has 8 parts: split on the stack.
    let mut parts = [""; 8];
    let mut n = 0;
    for p in s.split(':') {
        *parts.get_mut(n)? = p;
        n += 1;
    }
    let f = match &parts[..n] {
        [name] => FunctionName {
            name,
            qualifier: None,
            region: None,
            account: None,
        },
        [name, q] if !is_account(name) => FunctionName {
            name,
            qualifier: Some(q),
            region: None,
            account: None,
        },
        [account, "function", name] if is_account(account) => FunctionName {
            name,
            qualifier: None,
            region: None,
            account: Some(account),
        },
        [account, "function", name, q] if is_account(account) => FunctionName {
            name,
            qualifier: Some(q),
            region: None,
            account: Some(account),
        },
        [
            "arn",
            partition,
            "lambda",
            region,
            account,
            "function",
            name,
            rest @ ..,
        ] if partition.starts_with("aws") && is_account(account) && rest.len() <= 1 => {
            FunctionName {
                name,
                qualifier: rest.first().copied(),
                region: Some(region),
                account: Some(account),
            }
        }
        _ => return None,
    };
    (valid_name(f.name) && f.qualifier.is_none_or(valid_qualifier)).then_some(f)
}

/// A sub-slice of `whole`'s text, borrowed when `whole` is.
fn sub<'a>(whole: &Cow<'a, str>, part: &str) -> Cow<'a, str> {
    match whole {
        Cow::Borrowed(s) => {
            let start = part.as_ptr() as usize - s.as_ptr() as usize;
            Cow::Borrowed(&s[start..start + part.len()])
        }
        Cow::Owned(_) => Cow::Owned(part.to_string()),
    }
}

fn invalid(message: String) -> InvokeError {
    InvokeError::InvalidArgument {
        message: message.into(),
    }
}

/// `X-Amz-Client-Context`: base64 of a JSON object, at most 3583 bytes.
fn valid_client_context(v: &HeaderValue) -> bool {
    v.len() <= MAX_CLIENT_CONTEXT
        && base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .ok()
            .and_then(|raw| {
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&raw).ok()
            })
            .is_some()
}

impl Lambda {
    fn arn(&self, name: &str) -> String {
        let s = self.settings.load();
        format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            s.region.as_deref().unwrap_or("us-east-1"),
            s.account_id.as_deref().unwrap_or("000000000000"),
        )
    }

    /// `X-Amz-Log-Result`: the instance's output between Lambda's START and
    /// END/REPORT lines, its last [`super::LOG_TAIL_BYTES`], base64.
    fn log_result(&self, log: &[u8], reply: &Reply<'_>) -> HeaderValue {
        let id = reply.request_id.to_str().unwrap_or_default();
        let ms = reply.started.elapsed().as_secs_f64() * 1000.0;
        let mut text = Vec::with_capacity(log.len() + 256);
        text.extend_from_slice(format!("START RequestId: {id} Version: $LATEST\n").as_bytes());
        text.extend_from_slice(log);
        if !log.is_empty() && !log.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend_from_slice(
            format!(
                "END RequestId: {id}\nREPORT RequestId: {id}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\t\n",
                ms.ceil() as u64,
                reply.memory_mb
            )
            .as_bytes(),
        );
        log_tail_header(&text)
    }

    fn add_common(&self, resp: &mut Response<ResponseBody>, reply: &Reply<'_>) {
        if let Some(log) = reply.ran.and_then(|r| r.log.as_ref()) {
            let v = self.log_result(log, reply);
            resp.headers_mut().insert(LOG_RESULT, v);
        }
        let h = resp.headers_mut();
        h.insert(EXECUTED_VERSION, VERSION);
        h.insert(REQUEST_ID, reply.request_id.clone());
    }
}

/// Lambda's `Reason` for each limit.
fn reason(limit: LimitKind) -> &'static str {
    match limit {
        LimitKind::CallerRate | LimitKind::GatewayCallerRate => "CallerRateLimitExceeded",
        LimitKind::FunctionRate => "ReservedFunctionInvocationRateLimitExceeded",
        LimitKind::FunctionConcurrency => "ReservedFunctionConcurrentInvocationLimitExceeded",
        LimitKind::MaxInstances | LimitKind::AsyncQueue => "ConcurrentInvocationLimitExceeded",
        LimitKind::InstanceStartRate => "FunctionInvocationRateLimitExceeded",
    }
}

impl Dialect for Lambda {
    fn api(&self) -> Api {
        Api::Lambda
    }

    fn decode<'a>(&self, parts: &'a http::request::Parts) -> Result<Invocation<'a>, InvokeError> {
        let path = parts.uri.path();
        let not_found = || InvokeError::RouteNotFound {
            method: parts.method.clone(),
            path: path.to_string(),
        };
        let (encoded, operation) = path
            .strip_prefix(PATH_PREFIX)
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(not_found)?;
        if operation != "invocations" || encoded.is_empty() {
            return Err(not_found());
        }
        require_post(&parts.method)?;
        let whole = percent_decode(encoded, false)
            .ok_or_else(|| invalid("FunctionName is not valid percent-encoding".into()))?;
        let f = parse_function_name(&whole).ok_or_else(|| {
            invalid(format!(
                "1 validation error detected: Value '{whole}' at 'functionName' failed to satisfy constraint: Member must satisfy regular expression pattern: (arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{{2}}(-gov)?-[a-z]+-\\d{{1}}:)?(\\d{{12}}:)?(function:)?([a-zA-Z0-9-_\\.]+)(:(\\$LATEST|[a-zA-Z0-9-_]+))?"
            ))
        })?;
        let s = self.settings.load();
        let other = |want: &Option<String>, got: Option<&str>| matches!((want, got), (Some(w), Some(g)) if w != g);
        if other(&s.region, f.region) || other(&s.account_id, f.account) {
            return Err(InvokeError::FunctionNotFound {
                name: f.name.to_string(),
            });
        }
        let query = query_param(parts.uri.query(), "Qualifier")
            .map(|q| {
                percent_decode(q, true)
                    .ok_or_else(|| invalid("Qualifier is not valid percent-encoding".into()))
            })
            .transpose()?
            .filter(|q| !q.is_empty());
        if let Some(q) = &query
            && !valid_qualifier(q)
        {
            return Err(invalid(format!(
                "Qualifier {q:?} is not a version or alias name"
            )));
        }
        let qualifier = match (f.qualifier, query) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(
                    "The derived qualifier from the function name does not match the specified qualifier."
                        .into(),
                ));
            }
            (Some(q), _) => Some(sub(&whole, q)),
            (None, q) => q,
        };
        let kind = match parts
            .headers
            .get(INVOCATION_TYPE)
            .map(HeaderValue::as_bytes)
        {
            None | Some(b"RequestResponse") => Kind::Sync,
            Some(b"Event") => Kind::Async,
            Some(b"DryRun") => Kind::DryRun,
            Some(v) => {
                return Err(invalid(format!(
                    "1 validation error detected: Value '{}' at 'invocationType' failed to satisfy constraint: Member must satisfy enum value set: [Event, RequestResponse, DryRun]",
                    String::from_utf8_lossy(v)
                )));
            }
        };
        let log_tail = match parts.headers.get(LOG_TYPE).map(HeaderValue::as_bytes) {
            None | Some(b"None") => false,
            Some(b"Tail") => kind == Kind::Sync,
            Some(v) => {
                return Err(invalid(format!(
                    "1 validation error detected: Value '{}' at 'logType' failed to satisfy constraint: Member must satisfy enum value set: [None, Tail]",
                    String::from_utf8_lossy(v)
                )));
            }
        };
        let client_context = match parts.headers.get(CLIENT_CONTEXT) {
            Some(v) if !valid_client_context(v) => {
                return Err(InvokeError::InvalidContent {
                    message: "Client context must be a valid Base64-encoded JSON object of at most 3583 bytes."
                        .into(),
                });
            }
            // Lambda hands the client context to synchronous calls only.
            Some(v) if kind == Kind::Sync => Some(v),
            _ => None,
        };
        Ok(Invocation {
            function: sub(&whole, f.name),
            qualifier,
            kind,
            trigger: Trigger::Event,
            log_tail,
            client_context,
            task_id: None,
            task_op: None,
        })
    }

    fn authenticate(
        &self,
        parts: &http::request::Parts,
        policy: &AuthPolicy<'_>,
    ) -> Result<Authn, InvokeError> {
        signature_or_none(policy, || sigv4::verify(parts, policy))
    }

    fn success(&self, answer: FunctionAnswer, reply: &Reply<'_>) -> Response<ResponseBody> {
        let mut headers = answer.headers;
        let ct = headers.remove(http::header::CONTENT_TYPE);
        let mut resp = response(self.success_status(answer.status), ct, answer.body);
        if answer.failed {
            resp.headers_mut()
                .insert(FUNCTION_ERROR, HeaderValue::from_static("Unhandled"));
        } else if answer.status.as_u16() >= 400 {
            resp.headers_mut()
                .insert(FUNCTION_ERROR, HeaderValue::from_static("Handled"));
        }
        self.add_common(&mut resp, reply);
        resp
    }

    fn success_status(&self, _status: StatusCode) -> StatusCode {
        StatusCode::OK
    }

    fn accepted(&self, kind: Kind, reply: &Reply<'_>) -> Response<ResponseBody> {
        let status = match kind {
            Kind::DryRun => StatusCode::NO_CONTENT,
            Kind::Async | Kind::Sync | Kind::TaskApi => StatusCode::ACCEPTED,
        };
        let mut resp = response(status, None, Bytes::new());
        resp.headers_mut()
            .insert(REQUEST_ID, reply.request_id.clone());
        resp
    }

    fn status(&self, err: &InvokeError) -> StatusCode {
        match err {
            InvokeError::RouteNotFound { .. }
            | InvokeError::MethodNotAllowed { .. }
            | InvokeError::FunctionNotFound { .. }
            | InvokeError::AsyncTaskNotFound { .. } => StatusCode::NOT_FOUND,
            // Lambda has no task API; an `Event` invocation stopped through
            // FC's is a conflict with the caller's request.
            InvokeError::AsyncTaskStopped => StatusCode::CONFLICT,
            InvokeError::InvalidArgument { .. }
            | InvokeError::InvalidContent { .. }
            | InvokeError::BodyRead(_)
            | InvokeError::Unauthenticated(AuthError::Malformed(_)) => StatusCode::BAD_REQUEST,
            InvokeError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InvokeError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            InvokeError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            InvokeError::Unauthenticated(_) | InvokeError::AccessDenied(_) => StatusCode::FORBIDDEN,
            InvokeError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            InvokeError::NoCapacity { .. } => StatusCode::BAD_GATEWAY,
            InvokeError::ShuttingDown
            | InvokeError::WorkerUnavailable
            | InvokeError::QueueUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            InvokeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            InvokeError::BackendError { .. } => StatusCode::BAD_GATEWAY,
            InvokeError::BackendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::BackendThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
            InvokeError::InstanceStartFailed { .. }
            | InvokeError::FunctionTimeout(_)
            | InvokeError::InstanceCrashed { .. }
            | InvokeError::BadFunctionResponse { .. }
            | InvokeError::FunctionFailed => StatusCode::OK,
        }
    }

    /// Exhaustive: a new cause must decide its Lambda rendering here.
    fn error(&self, err: &InvokeError, reply: &Reply<'_>) -> Response<ResponseBody> {
        let status = self.status(err);
        let id = reply.request_id.to_str().unwrap_or_default();
        // (code, Type, message, Reason) of a gateway error.
        let gateway = |code: &'static str,
                       kind: &'static str,
                       message: Cow<'_, str>,
                       reason: Option<&'static str>| {
            let body = json(
                &ErrorBody {
                    kind,
                    message: &message,
                    reason,
                },
                message.len() + reason.map_or(0, str::len),
            );
            (Some(code), body)
        };
        let function = |error_type: &str, message: &str| {
            let message = format!("RequestId: {id} Error: {message}");
            (None, function_error_body(error_type, &message))
        };
        let user = "User";
        let mut retry_after = None;
        let (code, body) = match err {
            InvokeError::RouteNotFound { .. } | InvokeError::MethodNotAllowed { .. } => {
                gateway("UnknownOperationException", user, "Unknown operation".into(), None)
            }
            InvokeError::FunctionNotFound { name } => gateway(
                "ResourceNotFoundException",
                user,
                format!("Function not found: {}", self.arn(name)).into(),
                None,
            ),
            InvokeError::InvalidArgument { message } => gateway(
                "InvalidParameterValueException",
                user,
                Cow::Borrowed(message),
                None,
            ),
            InvokeError::InvalidContent { message } => gateway(
                "InvalidRequestContentException",
                user,
                Cow::Borrowed(message),
                None,
            ),
            InvokeError::BodyRead(_) => gateway(
                "InvalidRequestContentException",
                user,
                "The request body could not be read.".into(),
                None,
            ),
            InvokeError::HeadersTooLarge { limit, size } => gateway(
                "RequestHeaderFieldsTooLarge",
                user,
                format!("request headers of {size} bytes exceed the limit of {limit} bytes").into(),
                None,
            ),
            InvokeError::PayloadTooLarge { limit, .. } => gateway(
                "RequestTooLargeException",
                user,
                format!("Request must be smaller than {limit} bytes for the Invoke operation").into(),
                None,
            ),
            InvokeError::BodyTimeout(t) => gateway(
                "RequestTimeoutException",
                user,
                format!("The request body was not received within {} ms.", t.as_millis()).into(),
                None,
            ),
            InvokeError::Unauthenticated(a) => match a {
                AuthError::Missing => gateway(
                    "MissingAuthenticationTokenException",
                    user,
                    "Missing Authentication Token".into(),
                    None,
                ),
                AuthError::Malformed(why) => gateway(
                    "IncompleteSignatureException",
                    user,
                    format!("The Authorization header cannot be used: {why}").into(),
                    None,
                ),
                AuthError::UnknownKey(_) => gateway(
                    "UnrecognizedClientException",
                    user,
                    "The security token included in the request is invalid.".into(),
                    None,
                ),
                AuthError::Expired { date } => gateway(
                    "InvalidSignatureException",
                    user,
                    format!("Signature expired: {date} is outside the allowed window of the server time.").into(),
                    None,
                ),
                AuthError::BadSignature | AuthError::PayloadMismatch | AuthError::BadKey => gateway(
                    "InvalidSignatureException",
                    user,
                    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into(),
                    None,
                ),
            },
            InvokeError::AccessDenied(d) => {
                gateway("AccessDeniedException", user, denial_message(d).into(), None)
            }
            InvokeError::Throttled(t) => {
                retry_after = Some(t.retry_after);
                gateway(
                    "TooManyRequestsException",
                    user,
                    format!("Rate Exceeded: {} was exceeded.", limit_description(t.limit)).into(),
                    Some(reason(t.limit)),
                )
            }
            InvokeError::NoCapacity { memory_mb } => gateway(
                "EC2ThrottledException",
                "Service",
                format!("Lambda was unable to scale: no worker has {memory_mb} MB of memory free for a new instance.").into(),
                None,
            ),
            InvokeError::WorkerUnavailable => gateway(
                "ServiceException",
                "Service",
                "No sandbox worker could start an instance in time; retry.".into(),
                None,
            ),
            InvokeError::QueueUnavailable { .. } => gateway(
                "ServiceException",
                "Service",
                "The asynchronous invocation queue did not answer; retry.".into(),
                None,
            ),
            InvokeError::AsyncTaskNotFound { id } => gateway(
                "ResourceNotFoundException",
                "User",
                format!("Asynchronous task not found: {id}").into(),
                None,
            ),
            InvokeError::AsyncTaskStopped => gateway(
                "ResourceConflictException",
                "User",
                "The asynchronous invocation was stopped.".into(),
                None,
            ),
            InvokeError::ShuttingDown => gateway(
                "ServiceException",
                "Service",
                "The gateway is shutting down; retry.".into(),
                None,
            ),
            InvokeError::Internal(_) => gateway(
                "ServiceException",
                "Service",
                "An internal error occurred.".into(),
                None,
            ),
            InvokeError::BackendError { .. } => gateway(
                "BadGatewayException",
                "Service",
                format!("{}.", capitalized(&backend_message(err))).into(),
                None,
            ),
            InvokeError::BackendTimeout { .. } => gateway(
                "GatewayTimeoutException",
                "Service",
                format!("{}.", capitalized(&backend_message(err))).into(),
                None,
            ),
            InvokeError::BackendThrottled {
                retry_after: after,
                ..
            } => {
                retry_after = *after;
                gateway(
                    "TooManyRequestsException",
                    user,
                    format!("Rate Exceeded: {}.", backend_message(err)).into(),
                    Some("ConcurrentInvocationLimitExceeded"),
                )
            }
            InvokeError::InstanceStartFailed {
                message,
                stderr_tail,
            } => function(
                "Runtime.ExitError",
                &format!("Runtime exited before it was ready: {message}. Logs: {}", stderr_tail.trim_end()),
            ),
            InvokeError::FunctionFailed => {
                function("Unhandled", "The function failed in its backend.")
            }
            InvokeError::FunctionTimeout(t) => function(
                "Sandbox.Timedout",
                &format!("Task timed out after {:.2} seconds", t.as_secs_f64()),
            ),
            InvokeError::InstanceCrashed { detail } => function(
                "Runtime.ExitError",
                &format!("Runtime {detail} during the invocation"),
            ),
            InvokeError::BadFunctionResponse { detail } => function(
                "Runtime.InvalidResponse",
                &format!("Runtime returned an invalid response: {detail}"),
            ),
        };
        let mut resp = response(status, Some(APPLICATION_JSON), body);
        if let Some(wait) = retry_after {
            let h = resp.headers_mut();
            h.insert(http::header::RETRY_AFTER, retry_after_header(wait));
            h.insert(RETRY_AFTER_MS, millis_header(wait));
        }
        match code {
            // A gateway error: Lambda's error type, and only the request id.
            Some(code) => {
                let h = resp.headers_mut();
                h.insert(ERROR_TYPE, HeaderValue::from_static(code));
                h.insert(REQUEST_ID, reply.request_id.clone());
            }
            // The function's error: the headers of any function answer.
            None => {
                resp.headers_mut()
                    .insert(FUNCTION_ERROR, HeaderValue::from_static("Unhandled"));
                self.add_common(&mut resp, reply);
            }
        }
        resp
    }
}

/// Lambda's messages start with a capital.
fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
