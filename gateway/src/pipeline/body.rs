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
use hyper::body::{Body, Incoming};
use tokio_util::task::TaskTracker;

/// The request's declared `Content-Length`, if any.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads a payload of at most `limit` bytes.
pub async fn read(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: u64,
    limits: &Limits,
    tasks: &TaskTracker,
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
