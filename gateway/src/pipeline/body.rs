//! Stage 5: read the invocation payload, bounded in size and in time.
//!
//! A declared `Content-Length` over the limit is refused before a byte of
//! the body is read; a chunked body is counted as it arrives and refused the
//! moment it crosses the limit. Nothing is forwarded until the whole payload
//! is in, so a refused payload never reaches an instance. hyper does not
//! bound a slow upload by itself; [`Limits::body_read_timeout`] does.

use crate::config::Limits;
use crate::error::InvokeError;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

pub async fn read(
    body: Incoming,
    headers: &http::HeaderMap,
    limits: &Limits,
) -> Result<Bytes, InvokeError> {
    let limit = limits.max_body_bytes;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared
        && size > limit
    {
        return Err(InvokeError::PayloadTooLarge {
            limit,
            size: Some(size),
        });
    }
    let collect = Limited::new(body, limit as usize).collect();
    match tokio::time::timeout(limits.body_read_timeout, collect).await {
        Err(_) => Err(InvokeError::BodyTimeout(limits.body_read_timeout)),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(InvokeError::PayloadTooLarge { limit, size: None })
        }
        Ok(Err(e)) => Err(InvokeError::BodyRead(e.to_string().into())),
    }
}

/// Reads and drops a refused request's body, when it is small enough, so an
/// HTTP/1.1 connection stays usable for the caller's next request. A body
/// declared (or found) larger than `max_denied_body_drain_bytes` is left
/// unread: hyper then closes the HTTP/1.1 connection after the answer (HTTP/2
/// resets just that stream). Nothing read here goes anywhere.
pub async fn drain(body: Incoming, headers: &http::HeaderMap, limits: &Limits) {
    let max = limits.max_denied_body_drain_bytes;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return;
    }
    let collect = Limited::new(body, max as usize).collect();
    let _ = tokio::time::timeout(limits.body_read_timeout, collect).await;
}
