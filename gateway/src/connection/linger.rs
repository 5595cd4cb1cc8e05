//! Lingering close: an HTTP/1.1 connection that hyper ends on a request it
//! could not parse (a head over `max_header_bytes`, say) is drained, bounded,
//! before its socket is closed.
//!
//! Linux answers a `close` with unread bytes in the receive queue, or bytes
//! arriving after it, with a reset, and a reset discards what the client has
//! not read yet. A client that writes its whole request before it reads
//! (Python's `http.client`, so `requests` and boto3) then meets the reset
//! mid-write and never sees the answer. hyper answers such a request (`431`,
//! `400`), sends `close_notify` and FIN, and returns its error; then the
//! socket goes to a background task that reads and discards until the
//! client's EOF, `max_refused_body_drain_bytes`, the
//! `refused_body_drain_timeout_ms`, or [`IDLE`] without a byte (nginx's
//! `lingering_close`, `lingering_time`, `lingering_timeout`). The connection
//! keeps its `max_connections` permit until then.
//!
//! Every other close is at once: a client that is done, a keep-alive
//! timeout, a failed TLS handshake (no answer to protect). A refused *body*
//! is drained by the pipeline instead, so the connection can live on
//! ([`crate::body`]).

use prometheus::IntCounter;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

/// The longest wait for the client's next byte while lingering.
pub const IDLE: Duration = Duration::from_secs(5);

/// How a lingering close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lingered {
    /// The client closed its side: it had its answer.
    Complete,
    /// It sent more than `max_refused_body_drain_bytes`.
    TooLarge,
    /// Not done within the time bounds.
    Timeout,
}

impl Lingered {
    pub const ALL: [Lingered; 3] = [Lingered::Complete, Lingered::TooLarge, Lingered::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            Lingered::Complete => "complete",
            Lingered::TooLarge => "too_large",
            Lingered::Timeout => "timeout",
        }
    }
}

/// The bounds of every lingering close, and its counters.
pub struct Bounds {
    pub max_bytes: u64,
    pub max_time: Duration,
    /// Indexed like [`Lingered::ALL`].
    pub results: Vec<IntCounter>,
}

/// A client's TCP stream that lingers when dropped, if told to.
pub struct Linger {
    stream: Option<TcpStream>,
    /// Set by the connection's server once hyper has ended it on a request
    /// it answered without reading (the connection's io is hyper's by then).
    linger: Arc<AtomicBool>,
    eof: bool,
    permit: Option<OwnedSemaphorePermit>,
    bounds: Arc<Bounds>,
}

impl Linger {
    pub fn new(stream: TcpStream, permit: OwnedSemaphorePermit, bounds: Arc<Bounds>) -> Self {
        Linger {
            stream: Some(stream),
            linger: Arc::new(AtomicBool::new(false)),
            eof: false,
            permit: Some(permit),
            bounds,
        }
    }

    /// What makes the close linger: set it before the stream is dropped.
    pub fn trigger(&self) -> Arc<AtomicBool> {
        self.linger.clone()
    }

    fn stream(&mut self) -> &mut TcpStream {
        self.stream.as_mut().expect("taken only by drop")
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        if self.eof || !self.linger.load(Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let permit = self.permit.take();
        let bounds = self.bounds.clone();
        rt.spawn(async move {
            let how = drain(stream, &bounds).await;
            bounds.results[how as usize].inc();
            tracing::debug!(result = how.as_str(), "lingering close");
            drop(permit);
        });
    }
}

async fn drain(mut stream: TcpStream, bounds: &Bounds) -> Lingered {
    // Our side is done: FIN (again, if hyper sent it), so the client reads
    // its answer's end while we read what it still sends.
    let _ = stream.shutdown().await;
    let mut buf = vec![0u8; 16 * 1024];
    let mut read = 0u64;
    let deadline = tokio::time::Instant::now() + bounds.max_time;
    loop {
        let next =
            tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + IDLE), async {
                stream.read(&mut buf).await
            });
        match next.await {
            Err(_) => return Lingered::Timeout,
            Ok(Ok(0)) | Ok(Err(_)) => return Lingered::Complete,
            Ok(Ok(n)) => {
                read += n as u64;
                if read > bounds.max_bytes {
                    return Lingered::TooLarge;
                }
            }
        }
    }
}

impl AsyncRead for Linger {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(self.stream()).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            self.eof = true;
        }
        r
    }
}

impl AsyncWrite for Linger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_shutdown(cx)
    }
}
