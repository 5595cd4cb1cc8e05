//! One call to a cloud backend: the request each kind's API expects, and
//! its answer read back into fngate's neutral outcome.
//!
//! | kind | request | function error | throttling (falls over) |
//! |---|---|---|---|
//! | `lambda` | `POST /2015-03-31/functions/{function}/invocations[?Qualifier=]`, SigV4 | 200 + `X-Amz-Function-Error` | 429 (`TooManyRequestsException`) |
//! | `fc` | `POST /2023-03-30/functions/{function}/invocations[?qualifier=]`, ACS3-HMAC-SHA256 | 200 + `x-fc-error-type` | 429 (`ResourceThrottled`, `ResourceExhausted`), 503 |
//! | `azure` | `POST <app>/api/<function>` with `x-functions-key` | the function's status | 429, 503 |
//! | `http` | `POST <url>` | the function's status | 429, 503 |
//!
//! An event call sends the payload as the body (with the caller's
//! `Content-Type`); an HTTP-trigger call to an `azure` or `http` backend
//! sends the caller's method, query and end-to-end headers too. A function
//! error comes back as the function's answer with status 500 (the doors
//! render it as their cloud's function error). Any other error answer of
//! the backend is a 502 naming the backend and the cloud's status and code,
//! never its message (which may carry account ids or addresses).

use super::routes::LegOutcome;
use super::{Call, HTTP_REQUEST_ID, passes_on};
use crate::api::{FunctionAnswer, Trigger, connection_named};
use crate::auth::{hex, percent_encode_into, sha256};
use crate::backend::client::{Client, Outbound};
use crate::backend::sign;
use crate::config::backends::{BackendConfig, BackendKind};
use crate::error::InvokeError;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use std::time::{Duration, SystemTime};

/// A cloud backend's fixed parts, computed once.
/// A backend whose configuration passed validation but cannot be called.
#[derive(Debug, thiserror::Error)]
#[error("backend {backend:?}: its {what} cannot be used")]
pub struct Unusable {
    pub backend: String,
    pub what: &'static str,
}

pub struct Target {
    /// One client per runtime shard.
    clients: Box<[Client]>,
    /// The full URL of an event call.
    uri: http::Uri,
    /// `host` as the client sends it (the default port left out), signed.
    host: String,
    /// The path as sent, and the canonical query (signatures).
    path: String,
    query: String,
    /// `backend:<name>`, where an instance id would go.
    pub name_header: HeaderValue,
    /// An Azure function key, as the header sends it (marked sensitive).
    function_key: Option<HeaderValue>,
}

/// A backend's answer.
pub struct Answered {
    pub answer: FunctionAnswer,
    pub outcome: LegOutcome,
}

/// A call that did not produce the function's answer.
pub struct Failure {
    pub error: InvokeError,
    pub outcome: LegOutcome,
    /// The backend cannot have run the call: another may.
    pub retryable: bool,
}

fn default_port(scheme: Option<&str>) -> Option<u16> {
    match scheme {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    }
}

impl Target {
    /// `Ok(None)` for the sandbox; `Err` when the backend's URL or key
    /// cannot be sent (the gateway does not start).
    pub fn new(
        b: &BackendConfig,
        outbound: &Outbound,
        max_idle: usize,
    ) -> Result<Option<Target>, Unusable> {
        let unusable = |what| Unusable {
            backend: b.name.to_string(),
            what,
        };
        let Some(base) = b.url.as_ref() else {
            return Ok(None);
        };
        let encoded = |name: &str| {
            let mut s = String::new();
            percent_encode_into(&mut s, name, b"");
            s
        };
        let (path, query) = match &b.kind {
            BackendKind::Sandbox => return Ok(None),
            BackendKind::Lambda {
                function,
                qualifier,
                ..
            } => (
                format!("/2015-03-31/functions/{}/invocations", encoded(function)),
                sign::one_param("Qualifier", qualifier.as_deref()),
            ),
            BackendKind::Fc {
                function,
                qualifier,
                ..
            } => (
                format!("/2023-03-30/functions/{}/invocations", encoded(function)),
                sign::one_param("qualifier", qualifier.as_deref()),
            ),
            BackendKind::Azure { .. } | BackendKind::Http => {
                (base.path().to_string(), String::new())
            }
        };
        let (Some(authority), Some(scheme)) = (base.authority(), base.scheme_str()) else {
            return Err(unusable("URL"));
        };
        let host = match authority.port_u16() {
            Some(p) if Some(p) == default_port(base.scheme_str()) => authority.host().to_string(),
            _ => authority.as_str().to_string(),
        };
        let full = match query.is_empty() {
            true => format!("{scheme}://{authority}{path}"),
            false => format!("{scheme}://{authority}{path}?{query}"),
        };
        let function_key = match &b.kind {
            BackendKind::Azure {
                function_key: Some(k),
            } => {
                let mut v =
                    HeaderValue::from_bytes(k.expose()).map_err(|_| unusable("function key"))?;
                v.set_sensitive(true);
                Some(v)
            }
            _ => None,
        };
        Ok(Some(Target {
            clients: (0..crate::shards::count())
                .map(|_| outbound.client(b.connect_timeout, max_idle))
                .collect(),
            uri: full.parse().map_err(|_| unusable("URL"))?,
            host,
            path,
            query,
            name_header: HeaderValue::from_str(&format!("backend:{}", b.name))
                .map_err(|_| unusable("name"))?,
            function_key,
        }))
    }

    fn client(&self) -> &Client {
        &self.clients[crate::shards::current() % self.clients.len()]
    }

    /// Calls the backend once, within `timeout` (sending, and reading the
    /// answer to its last byte).
    pub async fn invoke(
        &self,
        b: &BackendConfig,
        call: &Call<'_>,
        payload: &Bytes,
        request_id: &HeaderValue,
        timeout: Duration,
        max_response: u64,
    ) -> Result<Answered, Failure> {
        let req = self
            .request(b, call, payload, request_id)
            .map_err(|e| Failure {
                error: e,
                outcome: LegOutcome::Error,
                retryable: false,
            })?;
        let name = &b.name;
        let exchange = async {
            let resp = self.client().request(req).await.map_err(|e| {
                // A connector error (TCP or TLS) means no byte of the request
                // left: safe to try elsewhere.
                let connect = e.is_connect();
                let cause = crate::error::error_chain(&e);
                tracing::debug!(backend = %name, error = %cause, "backend call failed");
                Failure {
                    error: InvokeError::BackendError {
                        backend: name.clone(),
                        detail: match connect {
                            true => "could not be reached".into(),
                            false => "broke the connection".into(),
                        },
                        cause: Some(cause.into()),
                    },
                    outcome: match connect {
                        true => LegOutcome::ConnectError,
                        false => LegOutcome::Error,
                    },
                    retryable: connect,
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_response as usize)
                .collect()
                .await
                .map_err(|e| Failure {
                    error: InvokeError::BackendError {
                        backend: name.clone(),
                        detail: match e.is::<http_body_util::LengthLimitError>() {
                            true => format!("answered more than {max_response} bytes").into(),
                            false => "broke the connection mid-answer".into(),
                        },
                        cause: Some(crate::error::error_chain(&*e).into()),
                    },
                    outcome: LegOutcome::Error,
                    retryable: false,
                })?
                .to_bytes();
            Ok((parts, body))
        };
        let (parts, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Failure {
                    error: InvokeError::BackendTimeout {
                        backend: name.clone(),
                        after: timeout,
                    },
                    outcome: LegOutcome::Timeout,
                    retryable: false,
                });
            }
        };
        read(b, parts, body)
    }

    fn request(
        &self,
        b: &BackendConfig,
        call: &Call<'_>,
        payload: &Bytes,
        request_id: &HeaderValue,
    ) -> Result<http::Request<Full<Bytes>>, InvokeError> {
        let mut req = http::Request::post(self.uri.clone())
            .body(Full::new(payload.clone()))
            .map_err(InvokeError::internal)?;
        let h = req.headers_mut();
        let v = |s: &str| HeaderValue::from_str(s).map_err(InvokeError::internal);
        h.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        match &b.kind {
            BackendKind::Sandbox => unreachable!("no target"),
            BackendKind::Lambda { region, key, .. } => {
                let (amz_date, _) = sign::dates(SystemTime::now());
                let hash = hex(&sha256(payload));
                let context = call.client_context.and_then(|c| c.to_str().ok());
                let mut signed: Vec<sign::Header<'_>> = vec![("host", &self.host)];
                if let Some(c) = context {
                    signed.push(("x-amz-client-context", c));
                }
                signed.push(("x-amz-date", &amz_date));
                signed.push(("x-amz-invocation-type", "RequestResponse"));
                let auth = sign::sigv4(
                    key,
                    region,
                    &self.path,
                    &self.query,
                    &signed,
                    &hash,
                    &amz_date,
                );
                for (name, value) in &signed[1..] {
                    h.insert(HeaderName::from_static(name), v(value)?);
                }
                h.insert(http::header::AUTHORIZATION, v(&auth)?);
                if let Some(ct) = call.content_type {
                    h.insert(http::header::CONTENT_TYPE, ct.clone());
                }
            }
            BackendKind::Fc { key, .. } => {
                let (_, acs_date) = sign::dates(SystemTime::now());
                let hash = hex(&sha256(payload));
                let mut nonce = [0u8; 16];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
                    .map_err(|_| InvokeError::internal("no randomness for a nonce"))?;
                let nonce = hex(&nonce);
                let signed: [sign::Header<'_>; 10] = [
                    ("accept", "application/json"),
                    ("content-type", "application/octet-stream"),
                    ("host", &self.host),
                    ("x-acs-action", "InvokeFunction"),
                    ("x-acs-content-sha256", &hash),
                    ("x-acs-date", &acs_date),
                    ("x-acs-signature-nonce", &nonce),
                    ("x-acs-version", "2023-03-30"),
                    ("x-fc-invocation-type", "Sync"),
                    ("x-fc-log-type", "None"),
                ];
                let auth = sign::acs3(key, &self.path, &self.query, &signed, &hash);
                for (name, value) in signed {
                    if name != "host" {
                        h.insert(HeaderName::from_static(name), v(value)?);
                    }
                }
                h.insert(http::header::AUTHORIZATION, v(&auth)?);
            }
            BackendKind::Azure { .. } => {
                http_trigger(&mut req, &self.uri, call)?;
                if let Some(k) = &self.function_key {
                    req.headers_mut().insert(FUNCTIONS_KEY, k.clone());
                }
                req.headers_mut()
                    .insert(HTTP_REQUEST_ID, request_id.clone());
            }
            BackendKind::Http => {
                http_trigger(&mut req, &self.uri, call)?;
                req.headers_mut()
                    .insert(HTTP_REQUEST_ID, request_id.clone());
            }
        }
        Ok(req)
    }
}

const USER_AGENT: &str = concat!("fngate/", env!("CARGO_PKG_VERSION"));
const FUNCTIONS_KEY: HeaderName = HeaderName::from_static("x-functions-key");

/// An `azure` or `http` call: an event posts the payload; an HTTP trigger
/// carries the caller's method, query and end-to-end headers.
fn http_trigger(
    req: &mut http::Request<Full<Bytes>>,
    base: &http::Uri,
    call: &Call<'_>,
) -> Result<(), InvokeError> {
    match call.trigger {
        Trigger::Event => {
            if let Some(ct) = call.content_type {
                req.headers_mut()
                    .insert(http::header::CONTENT_TYPE, ct.clone());
            }
        }
        Trigger::Http {
            query,
            consumed_headers,
            ..
        } => {
            *req.method_mut() = call.method.clone();
            if let Some(q) = query {
                *req.uri_mut() =
                    format!("{base}?{q}")
                        .parse()
                        .map_err(|_| InvokeError::InvalidArgument {
                            message: "the request query cannot be forwarded".into(),
                        })?;
            }
            let named = connection_named(call.headers);
            let h = req.headers_mut();
            for (name, value) in call.headers {
                // The gateway's own request names its host, agent and
                // credentials.
                let own = [
                    http::header::HOST,
                    http::header::AUTHORIZATION,
                    http::header::USER_AGENT,
                ];
                if !own.contains(name) && passes_on(name, &named, consumed_headers) {
                    h.append(name.clone(), value.clone());
                }
            }
        }
    }
    Ok(())
}

/// The error code in a cloud's error answer: `x-amzn-ErrorType` (cut as
/// botocore cuts it), else the JSON body's `Code`, `code` or `__type`.
fn error_code(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    if let Some(t) = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
    {
        let t = t.split(':').next().unwrap_or(t);
        return Some(t.rsplit('#').next().unwrap_or(t).to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["Code", "code", "__type"]
        .iter()
        .find_map(|k| v.get(*k)?.as_str())
        .map(|c| c.rsplit('#').next().unwrap_or(c).to_string())
        // A code is a short identifier; anything else is not one to repeat.
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
}

/// The answer's `Retry-After` (seconds) or `x-amz-retry-after` /
/// `x-acs-retry-after` (milliseconds).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let num = |n: &str| headers.get(n)?.to_str().ok()?.trim().parse::<u64>().ok();
    num("x-amz-retry-after")
        .or_else(|| num("x-acs-retry-after"))
        .map(Duration::from_millis)
        .or_else(|| num("retry-after").map(Duration::from_secs))
}

/// The backend's answer, as fngate's neutral outcome.
fn read(b: &BackendConfig, parts: http::response::Parts, body: Bytes) -> Result<Answered, Failure> {
    let status = parts.status;
    let cloud_api = matches!(b.kind, BackendKind::Lambda { .. } | BackendKind::Fc { .. });
    let throttled = match &b.kind {
        BackendKind::Lambda { .. } => status == StatusCode::TOO_MANY_REQUESTS,
        _ => matches!(status.as_u16(), 429 | 503),
    };
    if throttled {
        return Err(Failure {
            error: InvokeError::BackendThrottled {
                backend: b.name.clone(),
                retry_after: retry_after(&parts.headers),
            },
            outcome: LegOutcome::Throttled,
            retryable: true,
        });
    }
    let refused = match &b.kind {
        BackendKind::Lambda { .. } | BackendKind::Fc { .. } => status.as_u16() >= 300,
        BackendKind::Azure { .. } => matches!(status.as_u16(), 401 | 403),
        BackendKind::Http | BackendKind::Sandbox => false,
    };
    if refused {
        let detail = match error_code(&parts.headers, &body) {
            Some(code) => format!("answered {} {code}", status.as_u16()),
            None => format!("answered {}", status.as_u16()),
        };
        return Err(Failure {
            error: InvokeError::BackendError {
                backend: b.name.clone(),
                detail: detail.into(),
                cause: None,
            },
            outcome: LegOutcome::Error,
            retryable: false,
        });
    }
    let function_error = match &b.kind {
        BackendKind::Lambda { .. } => parts.headers.contains_key("x-amz-function-error"),
        BackendKind::Fc { .. } => parts.headers.contains_key("x-fc-error-type"),
        _ => status.as_u16() >= 400,
    };
    // A cloud API's own headers are the cloud's, not the function's; an
    // HTTP backend's are its answer's, hop-by-hop ones included, as an
    // instance's (the doors filter them).
    let headers = match cloud_api {
        false => parts.headers,
        true => {
            let mut h = HeaderMap::new();
            if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
                h.insert(http::header::CONTENT_TYPE, ct.clone());
            }
            h
        }
    };
    let status = match (cloud_api, function_error) {
        (true, true) => StatusCode::INTERNAL_SERVER_ERROR,
        (true, false) => StatusCode::OK,
        (false, _) => status,
    };
    Ok(Answered {
        answer: FunctionAnswer {
            status,
            headers,
            body,
            failed: cloud_api && function_error,
        },
        outcome: match function_error {
            true => LegOutcome::FunctionError,
            false => LegOutcome::Success,
        },
    })
}
