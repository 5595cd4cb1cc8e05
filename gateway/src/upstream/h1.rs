//! One HTTP/1.1 exchange with an instance, driven by the request's own task:
//! no connection task, no channels, the connection's buffers reused from
//! call to call. Parsing is `httparse`'s (hyper's parser).
//!
//! The instance contract is narrow (a request with a `Content-Length` body;
//! an answer framed by `Content-Length`, `chunked`, or the end of the
//! connection), so the client is small. What it guarantees:
//! - a connection goes back to the pool only after a complete answer that
//!   allows it (HTTP/1.1, no `Connection: close`, a framed body, nothing
//!   left over after it);
//! - an answer that comes before the request body has been written (an
//!   instance refusing it) is read and returned; the connection then closes;
//! - [`Error::Unsent`] means the instance cannot have seen a byte of the
//!   request, so it may be sent again elsewhere; any other error may have
//!   reached the function;
//! - bounded: the head at [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers,
//!   the body at the caller's limit, checked against a declared length
//!   before it is read. Time is bounded by the caller's one deadline (the
//!   future can be dropped at any await; the connection is then dropped).

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::io::{self, Write as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer head read.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers an answer may carry.
pub const MAX_HEADERS: usize = 100;
/// Answers up to this size are copied out of the read buffer, which the
/// connection keeps; larger ones are handed over without a copy (and the
/// buffer starts afresh).
const COPY_MAX: usize = 16 * 1024;
/// How much the read buffer grows by for a read.
const READ_CHUNK: usize = 8 * 1024;
/// Requests up to this size go out in one write, the body copied behind the
/// head; larger ones are written while watching for an early answer.
const COALESCE_MAX: usize = 16 * 1024;
/// The longest chunk-size line accepted (extensions included).
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing of the request reached the instance.
    #[error("the request could not be sent: {0}")]
    Unsent(#[source] io::Error),
    #[error("the instance closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("the instance closed the connection mid-answer")]
    ClosedMidAnswer,
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("response body exceeds {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// An instance's answer.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How an answer's body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What the first look at an answer's head tells.
struct Head {
    len: usize,
    status: StatusCode,
    framing: Framing,
    keep_alive: bool,
}

/// A connection to an instance with its buffers.
pub struct Conn {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
    /// The request being written has no body by its method's nature.
    bodiless: bool,
    head_request: bool,
    /// The last answer left the connection fit for another request.
    keep_alive: bool,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
            bodiless: false,
            head_request: false,
            keep_alive: false,
        }
    }

    /// Whether the connection may carry another request.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Whether an idle connection is still usable: the instance has not
    /// closed it nor sent anything unasked. No system call unless the socket
    /// became readable since the last answer (a read that did not fill the
    /// buffer told the runtime it was drained).
    pub fn is_usable(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(Err(_)) => false,
            std::task::Poll::Ready(Ok(())) => {
                let mut b = [0u8; 1];
                matches!(self.stream.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Starts a request: its line. `target` must be a valid origin-form
    /// target (the caller checks it).
    pub fn begin(&mut self, method: &Method, target: &str) {
        self.write.clear();
        self.write.extend_from_slice(method.as_str().as_bytes());
        self.write.push(b' ');
        self.write.extend_from_slice(target.as_bytes());
        self.write.extend_from_slice(b" HTTP/1.1\r\n");
        self.bodiless = matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::DELETE
                | Method::OPTIONS
                | Method::CONNECT
                | Method::TRACE
        );
        self.head_request = *method == Method::HEAD;
    }

    /// Adds a header (names and values are valid by their types).
    pub fn header(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.write.extend_from_slice(name.as_str().as_bytes());
        self.write.extend_from_slice(b": ");
        self.write.extend_from_slice(value.as_bytes());
        self.write.extend_from_slice(b"\r\n");
    }

    /// Sends the request begun with [`Conn::begin`] with `body` and reads
    /// the answer, its body bounded by `max` bytes.
    pub async fn exchange(&mut self, body: &[u8], max: usize) -> Result<Response, Error> {
        self.keep_alive = false;
        // As hyper does: no `Content-Length: 0` on a method without a body.
        if !body.is_empty() || !self.bodiless {
            let _ = write!(self.write, "content-length: {}\r\n", body.len());
        }
        self.write.extend_from_slice(b"\r\n");
        self.read.clear();
        let early = if self.write.len() + body.len() <= COALESCE_MAX {
            self.write.extend_from_slice(body);
            write_all(&mut self.stream, &self.write).await?;
            false
        } else {
            self.write_watching(body).await?
        };
        let resp = self.read_answer(max).await?;
        if early {
            // The instance answered before reading the whole request: what
            // it makes of the rest is unknown.
            self.keep_alive = false;
        }
        Ok(resp)
    }

    /// Writes the head and a large body, reading at the same time: an
    /// instance may answer without reading the body, and a writer that
    /// only writes would wait on it forever or lose the answer to a reset.
    /// Returns whether the answer began before the body was written.
    async fn write_watching(&mut self, body: &[u8]) -> Result<bool, Error> {
        let Conn {
            stream,
            read,
            write,
            ..
        } = self;
        let (mut rd, mut wr) = stream.split();
        // (An empty buffer would be read into 64 bytes at a time.)
        read.reserve(READ_CHUNK);
        let sending = async {
            write_all(&mut wr, write).await?;
            wr.write_all(body).await.map_err(Error::Io)
        };
        tokio::pin!(sending);
        let mut eof = false;
        loop {
            tokio::select! {
                biased;
                n = rd.read_buf(read), if !eof => {
                    match n {
                        Ok(0) => eof = true,
                        Ok(_) => {
                            if parse_head(read)?.is_some() {
                                return Ok(true);
                            }
                            if read.len() >= MAX_HEAD {
                                return Err(Error::Invalid("response head too large"));
                            }
                        }
                        Err(_) => eof = true,
                    }
                }
                sent = &mut sending => {
                    return match sent {
                        Ok(()) => Ok(false),
                        // A reset may follow an answer already received.
                        Err(e) if !read.is_empty() => {
                            tracing::debug!(error = %e, "instance stopped reading the request");
                            Ok(true)
                        }
                        Err(e) => Err(e),
                    };
                }
            }
        }
    }

    /// Reads more of the answer; `false` at the end of the connection.
    async fn fill(&mut self) -> Result<bool, Error> {
        if self.read.capacity() - self.read.len() < 1024 {
            self.read.reserve(READ_CHUNK);
        }
        Ok(self.stream.read_buf(&mut self.read).await? > 0)
    }

    async fn fill_or(&mut self, closed: Error) -> Result<(), Error> {
        match self.fill().await? {
            true => Ok(()),
            false => Err(closed),
        }
    }

    /// The first `n` bytes read, as an answer's own buffer.
    fn take(&mut self, n: usize) -> Bytes {
        if n > COPY_MAX {
            return self.read.split_to(n).freeze();
        }
        let b = Bytes::copy_from_slice(&self.read[..n]);
        if n == self.read.len() {
            self.read.clear();
        } else {
            self.read.advance(n);
        }
        b
    }

    async fn read_answer(&mut self, max: usize) -> Result<Response, Error> {
        let head = loop {
            match parse_head(&self.read)? {
                Some(h) if h.status.is_informational() => {
                    if h.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(Error::Invalid("unexpected 101 Switching Protocols"));
                    }
                    self.read.advance(h.len);
                }
                Some(h) => break h,
                None if self.read.len() >= MAX_HEAD => {
                    return Err(Error::Invalid("response head too large"));
                }
                None if self.read.is_empty() => self.fill_or(Error::ClosedBeforeAnswer).await?,
                None => self.fill_or(Error::ClosedMidAnswer).await?,
            }
        };
        let framing = match head.framing {
            _ if self.head_request => Framing::Empty,
            f => f,
        };
        let (head_bytes, body) = match framing {
            Framing::Empty => (self.take(head.len), Bytes::new()),
            Framing::Length(n) => {
                if n > max as u64 {
                    return Err(Error::TooLarge(max));
                }
                let total = head.len + n as usize;
                if self.read.len() < total {
                    self.read.reserve(total - self.read.len());
                }
                while self.read.len() < total {
                    self.fill_or(Error::ClosedMidAnswer).await?;
                }
                let all = self.take(total);
                (all.slice(..head.len), all.slice(head.len..))
            }
            Framing::Chunked => {
                let h = self.take(head.len);
                (h, self.read_chunked(max).await?)
            }
            Framing::UntilClose => {
                loop {
                    if self.read.len() - head.len > max {
                        return Err(Error::TooLarge(max));
                    }
                    if !self.fill().await? {
                        break;
                    }
                }
                let n = self.read.len();
                let all = self.take(n);
                (all.slice(..head.len), all.slice(head.len..))
            }
        };
        self.keep_alive = head.keep_alive
            && framing != Framing::UntilClose
            // Bytes nobody asked for: the connection is not in step.
            && self.read.is_empty();
        Ok(Response {
            status: head.status,
            headers: headers_of(&head_bytes)?,
            body,
        })
    }

    /// A chunked body (RFC 9112 7.1), trailers read and dropped.
    async fn read_chunked(&mut self, max: usize) -> Result<Bytes, Error> {
        let mut out = BytesMut::new();
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.read) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.read.advance(used);
                        break size;
                    }
                    Ok(httparse::Status::Partial) if self.read.len() < MAX_CHUNK_LINE => {
                        self.fill_or(Error::ClosedMidAnswer).await?;
                    }
                    _ => return Err(Error::Invalid("invalid chunk size line")),
                }
            };
            if size == 0 {
                break;
            }
            if out.len() as u64 + size > max as u64 {
                return Err(Error::TooLarge(max));
            }
            let mut left = size as usize;
            out.reserve(left);
            while left > 0 {
                if self.read.is_empty() {
                    self.fill_or(Error::ClosedMidAnswer).await?;
                }
                let n = left.min(self.read.len());
                out.extend_from_slice(&self.read[..n]);
                self.read.advance(n);
                left -= n;
            }
            while self.read.len() < 2 {
                self.fill_or(Error::ClosedMidAnswer).await?;
            }
            if &self.read[..2] != b"\r\n" {
                return Err(Error::Invalid("chunk data not followed by CRLF"));
            }
            self.read.advance(2);
        }
        loop {
            match trailers_len(&self.read)? {
                Some(used) => {
                    self.read.advance(used);
                    break;
                }
                None if self.read.len() < MAX_HEAD => {
                    self.fill_or(Error::ClosedMidAnswer).await?;
                }
                None => return Err(Error::Invalid("trailers too large")),
            }
        }
        if self.read.is_empty() {
            // Nothing left over: start the next answer at the buffer's head.
            self.read.clear();
        }
        Ok(out.freeze())
    }
}

/// Parses a complete head held in `head` into a header map whose values
/// are slices of it.
fn headers_of(head: &Bytes) -> Result<HeaderMap, Error> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut raw);
    r.parse(head).map_err(Error::Parse)?;
    let mut map = HeaderMap::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Error::Invalid("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
            .map_err(|_| Error::Invalid("invalid header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The length of the complete trailer section at the start of `buf`.
/// (Not inline in the async caller: the headers array would live in its
/// future across the await.)
fn trailers_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    let mut trailers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut trailers) {
        Ok(httparse::Status::Complete((used, _))) => Ok(Some(used)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(Error::Parse(e)),
    }
}

/// Writes all of `buf`; a failure before the first byte is [`Error::Unsent`].
async fn write_all<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> Result<(), Error> {
    let mut sent = 0;
    while sent < buf.len() {
        match w.write(&buf[sent..]).await {
            Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if sent == 0 => return Err(Error::Unsent(e)),
            Err(e) => return Err(Error::Io(e)),
        }
    }
    Ok(())
}

/// Looks at the head at the start of `buf`: `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut raw);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Invalid("more than 100 response headers"));
        }
        Err(e) => return Err(Error::Parse(e)),
    };
    let code = r.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("invalid status code"))?;
    let mut keep_alive = r.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            for v in h.value.split(|&b| b == b',') {
                let n =
                    parse_length(v.trim_ascii()).ok_or(Error::Invalid("invalid content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Invalid("conflicting content-length"));
                }
                length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only when it is the final coding (RFC 9112 6.3).
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection")
            && h.value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
    }
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), l) => {
                // Both present: chunked wins, and the connection closes after.
                if l.is_some() {
                    keep_alive = false;
                }
                Framing::Chunked
            }
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    Ok(Some(Head {
        len,
        status,
        framing,
        keep_alive,
    }))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add((d - b'0') as u64)
    })
}

#[cfg(test)]
mod tests;
