//! Stage 6-7: reserve a slot on an instance and call it.
//!
//! Contract with the function (see README, "Writing a function"):
//! `POST /invoke` with the payload as body and headers `x-fc-request-id`,
//! `x-fc-function-name`; its status, content type and body go back to the caller.
//!
//! Failure handling:
//! - cannot connect: the instance died while idle; it is reclaimed and the
//!   invocation retried once on another (nothing was sent, so it is safe);
//! - no answer within `timeout_s`: timeout error, the instance is reclaimed
//!   (killed) and a fresh one starts on demand;
//! - the connection broke or the answer is not HTTP: the worker is asked
//!   whether the process ended; if it did, the error says how and the instance
//!   is reclaimed, otherwise it is an invalid-response error.

use super::{Pipeline, ResponseBody};
use crate::api::fc;
use crate::error::InvokeError;
use crate::scheduler::{FunctionPool, Slot};
use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;

/// The instance an invocation ran on, for the answer's headers and metering.
#[derive(Clone)]
pub struct Ran {
    pub instance_id: HeaderValue,
    /// It waited for its instance to start.
    pub cold: bool,
}

type Failed = (InvokeError, Option<Ran>);

pub async fn call(
    p: &Pipeline,
    pool: &Arc<FunctionPool>,
    content_type: Option<&HeaderValue>,
    payload: Bytes,
    request_id: &HeaderValue,
) -> Result<(Response<ResponseBody>, Ran), Failed> {
    let mut retried = false;
    loop {
        let slot = p.scheduler.acquire(pool).await.map_err(|e| (e, None))?;
        let ran = Ran {
            instance_id: slot.instance.id_header.clone(),
            cold: slot.cold,
        };
        match attempt(p, pool, &slot, content_type, payload.clone(), request_id).await {
            Ok(mut resp) => {
                let h = resp.headers_mut();
                h.insert(fc::INSTANCE_ID, ran.instance_id.clone());
                if ran.cold {
                    h.insert(fc::COLD_START, HeaderValue::from_static("true"));
                }
                return Ok((resp, ran));
            }
            Err(Attempt::NotSent) if !retried => {
                p.scheduler.reclaim(pool, &slot.instance, "unreachable");
                retried = true;
            }
            Err(Attempt::NotSent) => {
                p.scheduler.reclaim(pool, &slot.instance, "unreachable");
                let e = InvokeError::InstanceCrashed {
                    detail: "was unreachable".into(),
                };
                return Err((e, Some(ran)));
            }
            Err(Attempt::Failed(e)) => return Err((e, Some(ran))),
        }
    }
}

enum Attempt {
    NotSent,
    Failed(InvokeError),
}

/// How a call to an instance went wrong.
enum CallError {
    /// Could not connect: nothing was sent.
    NotSent,
    Broken(Box<dyn std::error::Error + Send + Sync>),
}

async fn attempt(
    p: &Pipeline,
    pool: &Arc<FunctionPool>,
    slot: &Slot,
    content_type: Option<&HeaderValue>,
    payload: Bytes,
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, Attempt> {
    let inst = &slot.instance;
    let host = inst
        .host_header()
        .cloned()
        .ok_or_else(|| Attempt::Failed(InvokeError::internal("instance has no address")))?;
    let mut req = http::Request::new(Full::new(payload));
    *req.method_mut() = http::Method::POST;
    // Origin form, as servers expect on a direct connection.
    *req.uri_mut() = http::Uri::from_static("/invoke");
    let h = req.headers_mut();
    h.insert(http::header::HOST, host);
    h.insert(fc::REQUEST_ID, request_id.clone());
    h.insert("x-fc-function-name", pool.name_header.clone());
    if let Some(ct) = content_type {
        h.insert(http::header::CONTENT_TYPE, ct.clone());
    }

    let timeout = pool.cfg.timeout;
    let max = p.limits.max_response_bytes as usize;
    let call = async {
        // A pooled connection the instance closed meanwhile fails before the
        // request is written (hyper hands the request back): nothing was
        // sent, so try the next connection. Each retry takes a different idle
        // connection, so the loop ends on a new one at the latest.
        let mut req = Some(req);
        loop {
            let mut conn = inst.upstream.get().await.map_err(|_| CallError::NotSent)?;
            if let Err(e) = conn.sender.ready().await {
                if conn.reused {
                    continue;
                }
                return Err(CallError::Broken(e.into()));
            }
            let r = req.take().expect("a request is sent once");
            let resp = match conn.sender.try_send_request(r).await {
                Ok(resp) => resp,
                Err(mut e) => match e.take_message() {
                    // Not written: safe to send again on a new connection.
                    Some(unsent) if conn.reused => {
                        req = Some(unsent);
                        continue;
                    }
                    _ => return Err(CallError::Broken(e.into_error().into())),
                },
            };
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max)
                .collect()
                .await
                .map_err(CallError::Broken)?
                .to_bytes();
            inst.upstream.put(conn.sender);
            return Ok::<_, CallError>((parts, body));
        }
    };
    let (parts, body) = match tokio::time::timeout(timeout, call).await {
        Err(_) => {
            p.scheduler.reclaim(pool, inst, "timeout");
            return Err(Attempt::Failed(InvokeError::FunctionTimeout(timeout)));
        }
        Ok(Ok(r)) => r,
        Ok(Err(CallError::NotSent)) => return Err(Attempt::NotSent),
        Ok(Err(CallError::Broken(e))) => {
            if e.is::<http_body_util::LengthLimitError>() {
                return Err(Attempt::Failed(InvokeError::BadFunctionResponse {
                    detail: format!("response body exceeds {max} bytes").into(),
                }));
            }
            let e = match p.scheduler.exit_of(pool, inst).await {
                Some(exit) => InvokeError::InstanceCrashed {
                    detail: exit.into(),
                },
                None => InvokeError::BadFunctionResponse {
                    detail: error_chain(&*e).into(),
                },
            };
            return Err(Attempt::Failed(e));
        }
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = parts.status;
    if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, ct.clone());
    }
    Ok(resp)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
