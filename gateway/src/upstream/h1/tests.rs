//! The instance hop's client against hyper's HTTP/1.1 server as the
//! reference (property tests: sized and chunked bodies, headers, many calls
//! on one connection), and against sockets of the tests' that misbehave in
//! the ways an instance can.

use super::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX: usize = 1 << 20;

/// The body the reference server sends for `len` and `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A body of the given chunks with no declared size: hyper sends it chunked.
struct Chunks(VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// hyper as the instance: answers as the request's `x-plan-*` headers say
/// (status, body length, chunk size or sized, extra headers), and reports
/// the request body it read (`x-got-len`, `x-got-sum`).
async fn reference_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let num = |n: &str| -> usize {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0)
                    };
                    let (status, len, chunk, extra) = (
                        num("x-plan-status"),
                        num("x-plan-len"),
                        num("x-plan-chunk"),
                        num("x-plan-headers"),
                    );
                    let seed = num("x-plan-seed") as u8;
                    let head = req.method() == http::Method::HEAD;
                    let got = req.into_body().collect().await.unwrap().to_bytes();
                    let sum: u64 = got.iter().map(|&b| b as u64).sum();
                    let data = Bytes::from(pattern(len, seed));
                    let body: AnyBody = if chunk == 0 || head {
                        http_body_util::Full::new(data).boxed()
                    } else {
                        let mut chunks = VecDeque::new();
                        let mut rest = data;
                        while !rest.is_empty() {
                            chunks.push_back(rest.split_to(chunk.min(rest.len())));
                        }
                        Chunks(chunks).boxed()
                    };
                    let mut resp = http::Response::new(body);
                    *resp.status_mut() = http::StatusCode::from_u16(status as u16).unwrap();
                    let h = resp.headers_mut();
                    h.insert("x-got-len", got.len().into());
                    h.insert("x-got-sum", sum.into());
                    for i in 0..extra {
                        h.append(
                            HeaderName::from_bytes(format!("x-extra-{}", i % 7).as_bytes())
                                .unwrap(),
                            HeaderValue::from_str(&format!("v{i}-{seed} \t;=\"q\"")).unwrap(),
                        );
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[derive(Debug, Clone)]
struct Plan {
    method: Method,
    status: u16,
    request_len: usize,
    answer_len: usize,
    /// 0: sized; otherwise chunked in pieces of this size.
    chunk: usize,
    headers: usize,
    seed: u8,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop_oneof![
            Just(Method::POST),
            Just(Method::GET),
            Just(Method::PUT),
            Just(Method::HEAD)
        ],
        prop_oneof![Just(200u16), Just(201), Just(404), Just(500), Just(299)],
        prop_oneof![0..64usize, 0..200_000usize],
        prop_oneof![0..64usize, 0..300_000usize],
        prop_oneof![Just(0usize), 1..10usize, 1000..70_000usize],
        0..40usize,
        any::<u8>(),
    )
        .prop_map(
            |(method, status, request_len, answer_len, chunk, headers, seed)| Plan {
                method,
                status,
                request_len,
                answer_len,
                chunk,
                headers,
                seed,
            },
        )
}

/// Sends `p` on `conn` and checks the answer against what hyper was told to
/// send and what it says it read.
async fn check(conn: &mut Conn, p: &Plan) {
    let body = match p.method {
        Method::GET | Method::HEAD => Vec::new(),
        _ => pattern(p.request_len, p.seed.wrapping_add(1)),
    };
    conn.begin(&p.method, "/invoke?x=1");
    let hv = |n: usize| HeaderValue::from(n);
    conn.header(&http::header::HOST, &HeaderValue::from_static("instance"));
    conn.header(
        &HeaderName::from_static("x-plan-status"),
        &hv(p.status as usize),
    );
    conn.header(&HeaderName::from_static("x-plan-len"), &hv(p.answer_len));
    conn.header(&HeaderName::from_static("x-plan-chunk"), &hv(p.chunk));
    conn.header(&HeaderName::from_static("x-plan-headers"), &hv(p.headers));
    conn.header(
        &HeaderName::from_static("x-plan-seed"),
        &hv(p.seed as usize),
    );
    let r = conn.exchange(&body, MAX).await.expect("an answer");
    assert_eq!(r.status.as_u16(), p.status);
    assert_eq!(r.headers["x-got-len"], body.len().to_string().as_str());
    let sum: u64 = body.iter().map(|&b| b as u64).sum();
    assert_eq!(r.headers["x-got-sum"], sum.to_string().as_str());
    for i in 0..p.headers.min(7) {
        let got: Vec<_> = r.headers.get_all(format!("x-extra-{i}")).iter().collect();
        assert_eq!(got.len(), (p.headers - i).div_ceil(7), "x-extra-{i}");
        assert_eq!(got[0], format!("v{i}-{} \t;=\"q\"", p.seed).as_str());
    }
    if p.method == Method::HEAD {
        assert!(r.body.is_empty());
    } else {
        assert_eq!(r.body.len(), p.answer_len);
        assert!(r.body == pattern(p.answer_len, p.seed), "body differs");
    }
    assert!(conn.keep_alive(), "hyper keeps the connection");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every answer hyper sends is read exactly, and the connection carries
    /// the next call (up to four per connection).
    #[test]
    fn answers_match_hyper_as_reference(plans in proptest::collection::vec(plan(), 1..5)) {
        runtime().block_on(async {
            let addr = reference_server().await;
            let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
            for p in &plans {
                assert!(conn.is_usable());
                check(&mut conn, p).await;
            }
        });
    }
}

/// A socket that reads one request head (and `body` bytes after it), then
/// does `then` with the connection.
async fn raw_server<F, Fut>(body: usize, then: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let then = std::sync::Arc::new(then);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let then = then.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
                        && got.len() >= end + 4 + body
                    {
                        break;
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                then(s).await;
            });
        }
    });
    addr
}

/// A server that answers each request head with `reply`, then keeps the
/// connection.
async fn replying(reply: &'static [u8]) -> std::net::SocketAddr {
    raw_server(0, move |mut s| async move {
        let _ = s.write_all(reply).await;
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await
}

async fn call(
    addr: std::net::SocketAddr,
    method: Method,
    body: &[u8],
) -> (Conn, Result<Response, Error>) {
    let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    conn.begin(&method, "/invoke");
    conn.header(&http::header::HOST, &HeaderValue::from_static("i"));
    let r = tokio::time::timeout(Duration::from_secs(10), conn.exchange(body, 1024))
        .await
        .expect("no hang");
    (conn, r)
}

/// What an empty POST to `addr` gets.
async fn answer(addr: std::net::SocketAddr) -> Result<Response, Error> {
    call(addr, Method::POST, b"").await.1
}

#[tokio::test]
async fn chunked_with_extensions_trailers_and_split_writes() {
    let addr = raw_server(2, |mut s| async move {
        let reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: t\r\n\r\n";
        for b in reply {
            s.write_all(&[*b]).await.unwrap();
            s.flush().await.unwrap();
        }
        let mut sink = [0u8; 64];
        let _ = s.read(&mut sink).await;
    })
    .await;
    let (conn, r) = call(addr, Method::POST, b"hi").await;
    let r = r.unwrap();
    assert_eq!(&r.body[..], b"abc0123456789abcdef");
    assert_eq!(r.headers["transfer-encoding"], "gzip, chunked");
    assert!(conn.keep_alive());
}

#[tokio::test]
async fn an_instance_closing_mid_answer_is_an_error() {
    let addr = raw_server(0, |mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart")
            .await;
    })
    .await;
    assert!(matches!(answer(addr).await, Err(Error::ClosedMidAnswer)));
    let addr = raw_server(0, |mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab")
            .await;
    })
    .await;
    assert!(matches!(answer(addr).await, Err(Error::ClosedMidAnswer)));
    let addr = raw_server(0, |_| async move {}).await;
    assert!(matches!(answer(addr).await, Err(Error::ClosedBeforeAnswer)));
}

#[tokio::test]
async fn garbage_and_oversized_heads_are_invalid() {
    let addr = replying(b"HELLO THERE\r\n\r\n").await;
    assert!(matches!(answer(addr).await, Err(Error::Parse(_))));
    let addr =
        replying(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab").await;
    assert!(matches!(answer(addr).await, Err(Error::Invalid(_))));
    let addr = replying(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").await;
    assert!(matches!(answer(addr).await, Err(Error::Invalid(_))));
    let addr = raw_server(0, |mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let line = format!("x-big: {}\r\n", "a".repeat(1000));
        for _ in 0..100 {
            if s.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(matches!(answer(addr).await, Err(Error::Invalid(_))));
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    // Declared: refused before a byte of it is read.
    let addr = replying(b"HTTP/1.1 200 OK\r\ncontent-length: 1025\r\n\r\n").await;
    assert!(matches!(answer(addr).await, Err(Error::TooLarge(1024))));
    let addr = raw_server(0, |mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        for _ in 0..3 {
            let _ = s
                .write_all(format!("200\r\n{}\r\n", "x".repeat(512)).as_bytes())
                .await;
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
    })
    .await;
    assert!(matches!(answer(addr).await, Err(Error::TooLarge(1024))));
    let addr = raw_server(0, |mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
        let _ = s.write_all(&[b'y'; 2000]).await;
    })
    .await;
    assert!(matches!(answer(addr).await, Err(Error::TooLarge(1024))));
}

#[tokio::test]
async fn framing_without_a_body_or_length() {
    // Interim answers are skipped; 204 has no body even with chunked framing.
    let addr = replying(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").await;
    let (conn, r) = call(addr, Method::POST, b"").await;
    assert_eq!(r.unwrap().status, StatusCode::NO_CONTENT);
    assert!(conn.keep_alive());
    // HEAD: the length describes the body a GET would get.
    let addr = replying(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n").await;
    let (conn, r) = call(addr, Method::HEAD, b"").await;
    assert!(r.unwrap().body.is_empty());
    assert!(conn.keep_alive());
    // No length: the body runs to the close, and the connection is done.
    let addr = raw_server(0, |mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nto the end").await;
    })
    .await;
    let (conn, r) = call(addr, Method::POST, b"").await;
    assert_eq!(&r.unwrap().body[..], b"to the end");
    assert!(!conn.keep_alive());
    // Connection: close and HTTP/1.0 are not reused; neither is a
    // connection with bytes after the answer.
    for reply in [
        &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
    ] {
        let addr = replying(reply).await;
        let (conn, r) = call(addr, Method::POST, b"").await;
        assert_eq!(&r.unwrap().body[..], b"ok");
        assert!(!conn.keep_alive(), "{}", String::from_utf8_lossy(reply));
    }
}

#[tokio::test]
async fn an_answer_before_the_body_is_read_is_returned() {
    let big = vec![b'z'; 8 << 20];
    // The instance answers at once, then neither reads nor closes: a client
    // that only wrote would wait forever.
    let addr = raw_server(0, |mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nnope")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let (conn, r) = call(addr, Method::POST, &big).await;
    let r = r.unwrap();
    assert_eq!((r.status.as_u16(), &r.body[..]), (413, &b"nope"[..]));
    assert!(!conn.keep_alive());
    // The instance answers and closes with the body unread (a reset).
    let addr = raw_server(0, |mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nnope")
            .await;
    })
    .await;
    let (_, r) = call(addr, Method::POST, &big).await;
    // Either the answer, or (when the reset overtook it) an error: never a hang.
    if let Ok(r) = r {
        assert_eq!(r.status.as_u16(), 413);
    }
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_instance_is_not_reused() {
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let addr = raw_server(0, move |mut s| {
        let closed_tx = closed_tx.clone();
        async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            drop(s);
            let _ = closed_tx.send(());
        }
    })
    .await;
    let pool = crate::upstream::UpstreamPool::default();
    pool.set_addr(addr);
    let mut first = pool.get().await.unwrap();
    assert!(!first.reused);
    first.conn.begin(&Method::POST, "/invoke");
    let r = first.conn.exchange(b"", 1024).await.unwrap();
    assert_eq!(&r.body[..], b"ok");
    closed.recv().await.unwrap();
    // The close reaches the socket soon after; until then it looks usable.
    tokio::time::timeout(Duration::from_secs(5), async {
        while first.conn.is_usable() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the close is seen");
    pool.put(first.conn);
    let second = pool.get().await.unwrap();
    assert!(!second.reused, "a closed connection is never handed out");
}

#[tokio::test]
async fn a_reset_connection_is_unsent() {
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        // Closing with linger 0 resets the connection.
        let s = s.into_std().unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        let _ = closed_tx.send(());
    });
    let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    closed.recv().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while conn.is_usable() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the reset is seen");
    conn.begin(&Method::POST, "/invoke");
    assert!(matches!(
        conn.exchange(b"x", 1024).await,
        Err(Error::Unsent(_))
    ));
}

#[test]
fn lengths() {
    assert_eq!(parse_length(b"0"), Some(0));
    assert_eq!(parse_length(b"18446744073709551615"), None);
    assert_eq!(
        parse_length(b"9999999999999999999"),
        Some(9_999_999_999_999_999_999)
    );
    assert_eq!(parse_length(b"+1"), None);
    assert_eq!(parse_length(b""), None);
}

/// Answers of exactly the limit are read, sized or chunked; one byte more is
/// refused; a request body of 8 MiB reaches hyper whole.
#[tokio::test]
async fn bodies_at_the_limit() {
    let addr = reference_server().await;
    let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    for chunk in [0, 65536] {
        let p = Plan {
            method: Method::POST,
            status: 200,
            request_len: 8 << 20,
            answer_len: MAX,
            chunk,
            headers: 1,
            seed: 7,
        };
        check(&mut conn, &p).await;
    }
    for chunk in [0, 65536] {
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        conn.begin(&Method::POST, "/invoke");
        conn.header(
            &HeaderName::from_static("x-plan-status"),
            &HeaderValue::from(200),
        );
        conn.header(
            &HeaderName::from_static("x-plan-len"),
            &HeaderValue::from(MAX + 1),
        );
        conn.header(
            &HeaderName::from_static("x-plan-chunk"),
            &HeaderValue::from(chunk),
        );
        assert!(matches!(
            conn.exchange(b"", MAX).await,
            Err(Error::TooLarge(MAX))
        ));
        assert!(!conn.keep_alive());
    }
}
