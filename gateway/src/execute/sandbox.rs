//! Reserve a slot on an instance and call it.
//!
//! The instance contract (see README, "Writing a function") has two shapes,
//! chosen by the invocation's [`Trigger`]:
//! - **event**: `POST /invoke` with the payload as body and headers
//!   `x-fc-request-id`, `x-fc-function-name` (the names of Function Compute's
//!   custom runtimes, which fngate's instance contract follows whatever door
//!   the call came through), the caller's `Content-Type`, and
//!   `x-fngate-client-context` when the caller sent one; the function's
//!   status, headers and body are its answer;
//! - **HTTP trigger**: the caller's method, headers and body at the
//!   dialect's path and query, plus `x-fngate-trigger: http`,
//!   `x-fngate-request-id`, `x-fngate-function-name` and `X-Forwarded-*`;
//!   the function's status, headers and body go back as they are.
//!
//! Failure handling:
//! - cannot connect: the instance died while idle; it is reclaimed and the
//!   invocation retried once on another (nothing was sent, so it is safe);
//! - no answer within `timeout_s`: timeout error; the instance takes no more
//!   work and is reclaimed (killed) once its other invocations in flight end
//!   (at once when it has none); a fresh one starts on demand;
//! - the connection broke or the answer is not HTTP: the worker is asked
//!   whether the process ended; if it did, the error says how and the instance
//!   is reclaimed, otherwise it is an invalid-response error.
//!
//! With `log_tail`, the worker is asked for the instance's output offset
//! before the call and for the output since after it (best effort, bounded).

use super::{
    CLIENT_CONTEXT, Call, FUNCTION_NAME, Failed, HTTP_FUNCTION_NAME, HTTP_REQUEST_ID, REQUEST_ID,
    TRIGGER, passes_on,
};
use crate::api::{FunctionAnswer, Ran, Trigger, connection_named};
use crate::error::InvokeError;
use crate::scheduler::{FunctionPool, Scheduler, Slot};
use crate::upstream::h1;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use std::borrow::Cow;
use std::sync::Arc;

/// The executor of fngate's own instances: a slot from the scheduler,
/// then the instance hop.
pub struct Sandbox {
    pub scheduler: Arc<Scheduler>,
    /// `max_response_bytes`.
    pub max_response_bytes: u64,
}

impl Sandbox {
    pub async fn call(
        &self,
        pool: &Arc<FunctionPool>,
        call: &Call<'_>,
        payload: Bytes,
        request_id: &HeaderValue,
    ) -> Result<(FunctionAnswer, Ran), Failed> {
        let p = self;
        let mut retried = false;
        loop {
            let slot = p.scheduler.acquire(pool).await.map_err(|e| (e, None))?;
            // Rare, so boxed: the request's future stays small (see
            // `Pipeline::finish`).
            let log_from = match call.log_tail {
                true => Box::pin(p.scheduler.instance_log(&slot.instance, None))
                    .await
                    .map(|(end, _)| end),
                false => None,
            };
            let mut ran = Ran {
                instance_id: slot.instance.id_header.clone(),
                cold: slot.cold,
                log: None,
            };
            let result = attempt(p, pool, &slot, call, &payload, request_id).await;
            if let Some(from) = log_from
                && !matches!(result, Err(Attempt::NotSent(_)))
            {
                ran.log = Box::pin(p.scheduler.instance_log(&slot.instance, Some(from)))
                    .await
                    .map(|(_, log)| log);
            }
            match result {
                Ok(answer) => return Ok((answer, ran)),
                Err(Attempt::NotSent(e)) if !retried => {
                    tracing::debug!(function = %pool.cfg.name, instance = %slot.instance.id, error = %e, "instance unreachable; retrying on another");
                    p.scheduler.reclaim(pool, &slot.instance, "unreachable");
                    retried = true;
                }
                Err(Attempt::NotSent(e)) => {
                    p.scheduler.reclaim(pool, &slot.instance, "unreachable");
                    let e = InvokeError::InstanceCrashed {
                        detail: format!("was unreachable ({e})").into(),
                    };
                    return Err((e, Some(ran)));
                }
                Err(Attempt::Failed(e)) => return Err((e, Some(ran))),
            }
        }
    }
}

enum Attempt {
    /// Could not connect (the cause): nothing was sent.
    NotSent(std::io::Error),
    Failed(InvokeError),
}

/// How a call to an instance went wrong.
enum CallError {
    /// Could not connect: nothing was sent.
    NotSent(std::io::Error),
    Broken(h1::Error),
}

/// The request target, by the contract of `call.trigger`.
fn target<'a>(call: &'a Call<'_>) -> Result<Cow<'a, str>, InvokeError> {
    match call.trigger {
        Trigger::Event => Ok(Cow::Borrowed("/invoke")),
        Trigger::Http { path, query, .. } => {
            let t = match query {
                Some(q) => Cow::Owned(format!("{path}?{q}")),
                None => Cow::Borrowed(*path),
            };
            // Origin form only: what `http::Uri` accepts as a path and query.
            match t.parse::<http::Uri>() {
                Ok(u) if u.authority().is_none() && t.starts_with('/') => Ok(t),
                _ => Err(InvokeError::InvalidArgument {
                    message: "the request path cannot be forwarded".into(),
                }),
            }
        }
    }
}

/// The request line and headers, by the contract of `call.trigger`.
fn write_head(
    conn: &mut h1::Conn,
    pool: &crate::functions::Function,
    call: &Call<'_>,
    target: &str,
    host: &HeaderValue,
    request_id: &HeaderValue,
) {
    match call.trigger {
        Trigger::Event => {
            conn.begin(&Method::POST, target);
            conn.header(&http::header::HOST, host);
            conn.header(&REQUEST_ID, request_id);
            conn.header(&FUNCTION_NAME, &pool.name_header);
            if let Some(ct) = call.content_type {
                conn.header(&http::header::CONTENT_TYPE, ct);
            }
            if let Some(cc) = call.client_context {
                conn.header(&CLIENT_CONTEXT, cc);
            }
        }
        Trigger::Http {
            consumed_headers, ..
        } => {
            conn.begin(call.method, target);
            // HTTP/2 (and an absolute-form HTTP/1.1 target) carry it in the URI.
            let authority = match call.headers.contains_key(http::header::HOST) {
                true => None,
                false => call
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
            };
            let forwarded_host = call.headers.get(http::header::HOST).or(authority.as_ref());
            let named = connection_named(call.headers);
            // The headers the gateway sets replace the caller's.
            let replaced = |n: &HeaderName| {
                n == http::header::HOST
                    || n.as_str() == "x-forwarded-proto"
                    || (n.as_str() == "x-forwarded-host" && forwarded_host.is_some())
                    || (n.as_str() == "x-forwarded-for" && call.caller_ip.is_some())
            };
            for (name, value) in call.headers {
                if !replaced(name) && passes_on(name, &named, consumed_headers) {
                    conn.header(name, value);
                }
            }
            conn.header(&http::header::HOST, host);
            conn.header(&TRIGGER, &HeaderValue::from_static("http"));
            conn.header(&HTTP_REQUEST_ID, request_id);
            conn.header(&HTTP_FUNCTION_NAME, &pool.name_header);
            conn.header(&X_FORWARDED_PROTO, &HeaderValue::from_static("https"));
            if let Some(fh) = forwarded_host {
                conn.header(&X_FORWARDED_HOST, fh);
            }
            if let Some(ip) = call.caller_ip {
                // Appended to the chain the caller sent (informational: the
                // gateway's own decisions never read it).
                let chain = match call
                    .headers
                    .get(&X_FORWARDED_FOR)
                    .and_then(|v| v.to_str().ok())
                {
                    Some(prev) => format!("{prev}, {ip}"),
                    None => ip.to_string(),
                };
                if let Ok(v) = HeaderValue::try_from(chain) {
                    conn.header(&X_FORWARDED_FOR, &v);
                }
            }
        }
    }
}

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

async fn attempt(
    p: &Sandbox,
    pool: &Arc<FunctionPool>,
    slot: &Slot,
    call: &Call<'_>,
    payload: &Bytes,
    request_id: &HeaderValue,
) -> Result<FunctionAnswer, Attempt> {
    let inst = &slot.instance;
    let host = inst
        .host_header()
        .ok_or_else(|| Attempt::Failed(InvokeError::internal("instance has no address")))?;
    let target = target(call).map_err(Attempt::Failed)?;

    let timeout = pool.cfg.timeout;
    // The one deadline of the call: connecting, writing and reading.
    let deadline = tokio::time::Instant::now() + timeout;
    let max = p.max_response_bytes as usize;
    let exchange = async {
        // A pooled connection the instance closed meanwhile fails before a
        // byte is written: nothing was sent, so try the next connection.
        // Each retry takes a different idle connection, so the loop ends on
        // a new one at the latest.
        loop {
            let mut pooled = inst.upstream.get().await.map_err(CallError::NotSent)?;
            write_head(&mut pooled.conn, pool, call, &target, host, request_id);
            match pooled.conn.exchange(payload, max).await {
                Ok(resp) => {
                    inst.upstream.put(pooled.conn);
                    return Ok(resp);
                }
                Err(h1::Error::Unsent(_)) if pooled.reused => continue,
                Err(e) => return Err(CallError::Broken(e)),
            }
        }
    };
    let timed = tokio::time::timeout_at(deadline, exchange);
    let exchanged = match call.stop {
        None => timed.await,
        Some(stop) => tokio::select! {
            r = timed => r,
            _ = stop.cancelled() => {
                p.scheduler.abandon(pool, inst, "stopped");
                return Err(Attempt::Failed(InvokeError::AsyncTaskStopped));
            }
        },
    };
    let resp = match exchanged {
        Err(_) => {
            p.scheduler.timed_out(pool, inst);
            return Err(Attempt::Failed(InvokeError::FunctionTimeout(timeout)));
        }
        Ok(Ok(r)) => r,
        Ok(Err(CallError::NotSent(e))) => return Err(Attempt::NotSent(e)),
        Ok(Err(CallError::Broken(h1::Error::TooLarge(_)))) => {
            return Err(Attempt::Failed(InvokeError::BadFunctionResponse {
                detail: format!("response body exceeds {max} bytes").into(),
            }));
        }
        Ok(Err(CallError::Broken(e))) => {
            // Within the invocation's own time: a slow worker cannot stretch it.
            let e = match Box::pin(p.scheduler.exit_of(pool, inst, deadline)).await {
                Some(exit) => InvokeError::InstanceCrashed {
                    detail: exit.into(),
                },
                None => InvokeError::BadFunctionResponse {
                    detail: crate::error::error_chain(&e).into(),
                },
            };
            return Err(Attempt::Failed(e));
        }
    };
    Ok(FunctionAnswer {
        status: resp.status,
        headers: resp.headers,
        body: resp.body,
        failed: false,
    })
}

#[cfg(test)]
mod tests;
