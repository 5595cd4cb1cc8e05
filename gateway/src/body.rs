//! Request payloads (read bounded in size and time), what becomes of the
//! bodies of refused requests, and the answers' bodies.
//!
//! A declared `Content-Length` over the limit is refused before a byte of
//! the body is read; a chunked body is counted as it arrives and refused the
//! moment it crosses the limit. Nothing is forwarded until the whole payload
//! is in, so a refused payload never reaches an instance. hyper does not
//! bound a slow upload by itself; [`Limits::body_read_timeout`] does. When a
//! signature covers the payload, its SHA-256 is computed frame by frame as
//! the bytes arrive (no second pass, no copy); otherwise nothing is hashed.
//!
//! A refused request's unread body must not cost the client its answer.
//! Many clients (Python's `http.client`, so `requests` and boto3) write the
//! whole body before they read, and one that meets a closed connection
//! mid-write never sees the answer. So ([`unread`]):
//! - HTTP/1.1: the rest of the body is read and dropped in the background,
//!   bounded by `max_refused_body_drain_bytes` and
//!   `refused_body_drain_timeout_ms` (nginx's lingering close), while the
//!   answer goes out; the connection stays usable when the drain completes.
//!   A body declared larger than the bound is not read at all and the
//!   connection closes after the answer; an `Expect: 100-continue` client is
//!   never asked for its body.
//! - HTTP/2: the body is held by the answer until its last frame is sent,
//!   then drained the same way, so the client finishes its upload and reads
//!   the answer with no reset at all (as nginx does; curl before 8.x fails a
//!   transfer on any reset, even after a complete answer). Past the bounds
//!   the body is dropped: the stream, and only it, is then reset with
//!   `NO_ERROR`, RFC 9113 8.1's way of saying "stop sending, the answer is
//!   complete", and the connection carries on.

use crate::auth::PayloadHasher;
use crate::config::Limits;
use crate::error::InvokeError;
use bytes::{Buf, Bytes, BytesMut};
use http::Version;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_util::task::TaskTracker;

/// The request's declared `Content-Length`, if any.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// A payload that could not be read, and the part of its body left unread
/// (for [`unread`]) when the refusal came before its end.
pub type ReadError = (InvokeError, Option<Incoming>);

/// Reads a payload of at most `limit` bytes, feeding `hasher` when given.
pub async fn read(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: u64,
    timeout: std::time::Duration,
    mut hasher: Option<&mut PayloadHasher>,
) -> Result<Bytes, ReadError> {
    if let Some(size) = declared_length(headers)
        && size > limit
    {
        let e = InvokeError::PayloadTooLarge {
            limit,
            size: Some(size),
        };
        return Err((e, Some(body)));
    }
    let mut body = body;
    let read = async {
        // One frame (the usual small payload) stays as it came; more are
        // joined once, as `collect` would.
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| InvokeError::BodyRead(e.to_string().into()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            len += data.len() as u64;
            if len > limit {
                return Err(InvokeError::PayloadTooLarge { limit, size: None });
            }
            if let Some(h) = hasher.as_deref_mut() {
                h.update(data.chunk());
            }
            match (&first, &mut joined) {
                (None, _) => first = Some(data),
                (Some(f), None) => {
                    let mut j = BytesMut::with_capacity(f.len() + data.len());
                    j.extend_from_slice(f);
                    j.extend_from_slice(&data);
                    joined = Some(j);
                }
                (Some(_), Some(j)) => j.extend_from_slice(&data),
            }
        }
        Ok(match (first, joined) {
            (_, Some(j)) => j.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        })
    };
    // A small payload has usually arrived with its head: read it without
    // arming a timer (the noop waker is replaced by the real one if the
    // body is not all there).
    let read = {
        let mut read = std::pin::pin!(read);
        let now = read
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()));
        match now {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => tokio::time::timeout(timeout, read).await,
        }
    };
    match read {
        Err(_) => Err((InvokeError::BodyTimeout(timeout), None)),
        Ok(Ok(payload)) => Ok(payload),
        Ok(Err(e @ InvokeError::PayloadTooLarge { .. })) => Err((e, Some(body))),
        Ok(Err(e)) => Err((e, None)),
    }
}

/// How the unread body of a refused request ended, as counted in
/// `fngate_refused_body_drains_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Read to its end: the client got its answer, the connection lives on.
    Complete,
    /// Declared, or grown, past `max_refused_body_drain_bytes`: the HTTP/1.1
    /// connection closes after the answer; the HTTP/2 stream is reset
    /// (`NO_ERROR`).
    TooLarge,
    /// Not done within `refused_body_drain_timeout_ms` (likewise).
    Timeout,
    /// `Expect: 100-continue`: the client sends nothing unless asked.
    NotSent,
}

impl Drain {
    pub const ALL: [Drain; 4] = [
        Drain::Complete,
        Drain::TooLarge,
        Drain::Timeout,
        Drain::NotSent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Drain::Complete => "complete",
            Drain::TooLarge => "too_large",
            Drain::Timeout => "timeout",
            Drain::NotSent => "not_sent",
        }
    }
}

/// The counters of [`unread`].
#[derive(Clone)]
pub struct DrainMetrics {
    /// Indexed like [`Drain::ALL`].
    pub drains: Vec<prometheus::IntCounter>,
    pub bytes: prometheus::IntCounter,
}

impl DrainMetrics {
    pub fn new(registry: &prometheus::Registry) -> Self {
        let f = crate::families::Families(registry);
        let drains = f.counters(
            "fngate_refused_body_drains_total",
            "Unread bodies of refused requests, by how they ended (complete: read and dropped, the connection kept; too_large, timeout: the HTTP/1.1 connection closed, or the HTTP/2 stream reset with NO_ERROR, after the answer; not_sent: an Expect: 100-continue client never sent it).",
            &["result"],
        );
        DrainMetrics {
            drains: Drain::ALL
                .iter()
                .map(|d| drains.with_label_values(&[d.as_str()]))
                .collect(),
            bytes: f.counter(
                "fngate_refused_body_drained_bytes_total",
                "Bytes of refused requests' bodies read and dropped so their clients get the answer.",
            ),
        }
    }
}

/// Everything a drain needs, to run later from where the body is dropped.
struct Drainer {
    max: u64,
    timeout: std::time::Duration,
    tasks: TaskTracker,
    metrics: DrainMetrics,
}

impl Drainer {
    fn count(&self, d: Drain) {
        self.metrics.drains[d as usize].inc();
    }

    /// Reads and drops what is left of `body` (`read` bytes of it gone
    /// already) in a task of its own, bounded; chunks are dropped as they
    /// come, so draining holds no memory.
    fn spawn(self, mut body: Incoming, mut read: u64) {
        let tracker = self.tasks.clone();
        tracker.spawn(async move {
            let drain = async {
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else {
                        return Drain::Complete;
                    };
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    self.metrics.bytes.inc_by(n);
                    read += n;
                    if read > self.max {
                        return Drain::TooLarge;
                    }
                }
                Drain::Complete
            };
            let how = tokio::time::timeout(self.timeout, drain)
                .await
                .unwrap_or(Drain::Timeout);
            self.count(how);
        });
    }
}

/// A refused request's unread body, held by its answer (HTTP/2): drained
/// once the answer has been sent (see [`unread`]).
pub struct Held {
    body: Option<Incoming>,
    drainer: Option<Drainer>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let (Some(body), Some(d)) = (self.body.take(), self.drainer.take()) {
            d.spawn(body, 0);
        }
    }
}

/// Deals with the unread rest of a refused request's body (see the module
/// docs). Returns what the answer must hold (HTTP/2).
pub fn unread(
    body: Incoming,
    headers: &http::HeaderMap,
    version: Version,
    limits: &Limits,
    tasks: &TaskTracker,
    metrics: &DrainMetrics,
) -> Option<Held> {
    if body.is_end_stream() {
        return None;
    }
    let drainer = Drainer {
        max: limits.max_refused_body_drain_bytes,
        timeout: limits.refused_body_drain_timeout,
        tasks: tasks.clone(),
        metrics: metrics.clone(),
    };
    if headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        drainer.count(Drain::NotSent);
        return None;
    }
    if declared_length(headers).is_some_and(|n| n > drainer.max) {
        // Too much to wait for. HTTP/2 still holds it, so that the reset
        // comes after the complete answer (NO_ERROR).
        drainer.count(Drain::TooLarge);
        return (version == Version::HTTP_2).then_some(Held {
            body: Some(body),
            drainer: None,
        });
    }
    if version == Version::HTTP_2 {
        return Some(Held {
            body: Some(body),
            drainer: Some(drainer),
        });
    }
    // Usually the small body of a refused request has already arrived with
    // its head: drop it here rather than spawn a task for it.
    let mut body = body;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut read = 0u64;
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > drainer.max {
                    metrics.bytes.inc_by(read);
                    drainer.count(Drain::TooLarge);
                    return None;
                }
            }
            // The end, or an error: nothing more to drain.
            Poll::Ready(_) => {
                metrics.bytes.inc_by(read);
                drainer.count(Drain::Complete);
                return None;
            }
            Poll::Pending => break,
        }
    }
    metrics.bytes.inc_by(read);
    drainer.spawn(body, read);
    None
}

/// An answer's body: one buffer, sent as one frame. It may hold a refused
/// request's unread body until the answer has been sent in full (HTTP/2, see
/// [`unread`]).
pub struct ResponseBody {
    data: Option<Bytes>,
    held: Option<Held>,
}

impl ResponseBody {
    pub fn new(data: Bytes) -> Self {
        ResponseBody {
            data: (!data.is_empty()).then_some(data),
            held: None,
        }
    }

    /// Keeps a refused request's body until this body is dropped, after
    /// its last frame has been sent.
    pub fn hold(&mut self, request: Held) {
        self.held = Some(request);
    }

    pub fn len(&self) -> u64 {
        self.data.as_ref().map_or(0, |d| d.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_none()
    }

    /// The bytes, for an answer no client reads (an asynchronous attempt's).
    pub fn into_bytes(mut self) -> Bytes {
        self.data.take().unwrap_or_default()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len())
    }
}

/// An HTTP/2 request's header list size as SETTINGS_MAX_HEADER_LIST_SIZE
/// counts it (RFC 9113 6.5.2: name, value and 32 per field, pseudo-headers
/// included).
pub fn header_list_size(parts: &http::request::Parts) -> u64 {
    let fields: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    let pseudo = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len())
        + parts.uri.scheme_str().map_or(0, str::len)
        + 4 * 32
        + ":method:path:authority:scheme".len();
    (fields + pseudo) as u64
}
