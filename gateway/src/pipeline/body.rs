//! Read the invocation payload, bounded in size and in time.
//!
//! A declared `Content-Length` over the limit is refused before a byte of
//! the body is read; a chunked body is counted as it arrives and refused the
//! moment it crosses the limit. Nothing is forwarded until the whole payload
//! is in, so a refused payload never reaches an instance. hyper does not
//! bound a slow upload by itself; [`Limits::body_read_timeout`] does.
//!
//! When a signature covers the payload, its SHA-256 is computed frame by
//! frame as the bytes arrive (no second pass, no copy); otherwise nothing is
//! hashed.

use crate::auth::PayloadHasher;
use crate::config::Limits;
use crate::error::InvokeError;
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use tokio_util::task::TaskTracker;

/// The request's declared `Content-Length`, if any.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads a payload of at most `limit` bytes, feeding `hasher` when given.
pub async fn read(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: u64,
    limits: &Limits,
    tasks: &TaskTracker,
    hasher: Option<&mut PayloadHasher>,
) -> Result<Bytes, InvokeError> {
    let declared = declared_length(headers);
    if let Some(size) = declared
        && size > limit
    {
        discard(body, headers, limits, tasks);
        return Err(InvokeError::PayloadTooLarge {
            limit,
            size: Some(size),
        });
    }
    let body = Limited::new(body, limit as usize);
    let read = async {
        match hasher {
            None => body.collect().await.map(|c| c.to_bytes()),
            Some(h) => hashed(body, h).await,
        }
    };
    match tokio::time::timeout(limits.body_read_timeout, read).await {
        Err(_) => Err(InvokeError::BodyTimeout(limits.body_read_timeout)),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(InvokeError::PayloadTooLarge { limit, size: None })
        }
        Ok(Err(e)) => Err(InvokeError::BodyRead(e.to_string().into())),
    }
}

/// Collects `body` as `collect` does, hashing each data frame as it arrives.
async fn hashed(
    mut body: Limited<Incoming>,
    h: &mut PayloadHasher,
) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    let mut first: Option<Bytes> = None;
    let mut rest: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        h.update(data.chunk());
        // One frame (the usual small payload) stays as it came; more are
        // joined once, as `collect` would.
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut joined = bytes::BytesMut::with_capacity(f.len() + data.len());
                joined.extend_from_slice(f);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(joined)) => joined.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

/// After an answer given from the head alone (denied, unknown function,
/// declared size over the limit), reads and drops the unread body in the
/// background, bounded by `max_refused_body_drain_bytes` and the body read
/// timeout. Like nginx's lingering close: the client finishes its upload and
/// reads the answer instead of meeting a reset, and an HTTP/1.1 connection
/// stays usable for its next request. A body declared larger than the bound is
/// not read at all: hyper then closes the connection after the answer (HTTP/2
/// resets just that stream). Nothing read here goes anywhere.
pub fn discard(body: Incoming, headers: &http::HeaderMap, limits: &Limits, tasks: &TaskTracker) {
    if body.is_end_stream() {
        return;
    }
    let max = limits.max_refused_body_drain_bytes;
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > max) {
        return;
    }
    // Usually the small body of a refused request has already arrived with
    // its head: drop it here rather than spawn a task for it.
    let mut body = body;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut read = 0u64;
    loop {
        match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > max {
                    return;
                }
            }
            // The end, or an error: nothing more to drain.
            std::task::Poll::Ready(_) => return,
            std::task::Poll::Pending => break,
        }
    }
    let max = max - read;
    let timeout = limits.body_read_timeout;
    tasks.spawn(async move {
        let collect = Limited::new(body, max as usize).collect();
        let _ = tokio::time::timeout(timeout, collect).await;
    });
}
