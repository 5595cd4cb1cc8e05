//! The FC invocation API: answers, errors, limits.

use crate::harness::*;
use bytes::Bytes;
use http_body_util::Full;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_function_and_bad_paths_use_the_fc_error_shape() {
    let gw = Gateway::start("", &echo_fn("echo", ""));
    let mut c = gw.h1().await;
    let r = c.invoke("nope", "x").await;
    assert_eq!(r.status, 404);
    let v = r.json();
    assert_eq!(v["Code"], "FunctionNotFound");
    assert_eq!(v["RequestId"], r.header("x-fc-request-id").unwrap());
    assert!(v["Message"].as_str().unwrap().contains("nope"));
    assert_eq!(r.header("content-type"), Some("application/json"));

    let get = http::Request::get(format!("https://localhost{}", invoke_path("echo")))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(get).await.unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["Code"], "MethodNotAllowed");

    let other = http::Request::post("https://localhost/some/other/path")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(other).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["Code"], "PathNotSupported");
    assert!(gw.instances().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_is_refused_and_never_forwarded() {
    let gw = Gateway::start(
        "max_body_bytes = 65536",
        &(echo_fn("big", "") + &echo_fn("small", "")),
    );
    let limit = 65536usize;
    // Declared length over the limit (HTTP/1.1 and HTTP/2).
    for h2 in [false, true] {
        let mut c = gw.client(ClientOpts::h2(h2)).await;
        let r = c.invoke("big", vec![b'x'; limit + 1]).await;
        assert_eq!(r.status, 400, "h2={h2}");
        let v = r.json();
        assert_eq!(v["Code"], "EntityTooLarge");
        assert!(v["Message"].as_str().unwrap().contains("65537"));
    }
    // Chunked (no declared length): counted as it arrives.
    let mut c = gw.h1().await;
    let req = http::Request::post(format!("https://localhost{}", invoke_path("big")))
        .body(Chunked { left: limit + 4096 })
        .unwrap();
    let r = send_streaming(&gw, req).await;
    assert_eq!(r.0, 400);
    assert!(r.1.contains("EntityTooLarge"), "{}", r.1);
    // Nothing reached an instance: none was even started.
    assert!(gw.instances_of("big").await.is_empty());
    assert_eq!(
        gw.metric("fngate_instance_starts_total{function=\"big\",result=\"ok\"}")
            .await,
        0.0
    );
    // A payload at the limit goes through intact.
    let r = c.invoke("small", vec![b'y'; limit]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), limit);
}

/// A body of `total` bytes with no declared length (sent chunked).
struct Chunked {
    left: usize,
}

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(4096);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(vec![
            b'z';
            n
        ])))))
    }
}

async fn send_streaming<B>(gw: &Gateway, req: http::Request<B>) -> (u16, String)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls_config(&gw.ca, &ClientOpts::default()));
    let tls = connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = s.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_function_answers() {
    let cfg = format!(
        "[[functions]]\nname = \"py\"\ncommand = [\"python3\", \"{}/../config/functions/hello.py\"]\nenv = {{ GREETING = \"Hi\" }}\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let gw = Gateway::start("", &cfg);
    let mut c = gw.h2().await;
    let r = c.invoke("py", "12345").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["message"], "Hi from Python");
    assert_eq!(v["payloadBytes"], 5);
    assert_eq!(v["function"], "py");
    assert_eq!(v["requestId"], r.header("x-fc-request-id").unwrap());
    assert_eq!(v["instance"], r.header("x-fc-instance-id").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_that_cannot_start_is_412_caexited_with_its_stderr() {
    let cfg = "[[functions]]\nname = \"broken\"\ncommand = [\"sh\", \"-c\", \"echo missing-module-xyz >&2; exit 7\"]\n";
    let gw = Gateway::start("", cfg);
    let mut c = gw.h1().await;
    let r = c.invoke("broken", "x").await;
    assert_eq!(r.status, 412);
    let v = r.json();
    assert_eq!(v["Code"], "CAExited");
    let msg = v["Message"].as_str().unwrap();
    assert!(msg.contains("missing-module-xyz"), "{msg}");
    assert!(msg.contains("exited with code 7"), "{msg}");
    assert!(gw.instances_of("broken").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_capacity_is_429_resource_exhausted() {
    let gw = Gateway::start(
        "embedded_worker_memory_mb = 256",
        &echo_fn("fat", "memory_mb = 512"),
    );
    let mut c = gw.h1().await;
    let r = c.invoke("fat", "x").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["Code"], "ResourceExhausted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_gets_the_documented_environment() {
    let gw = Gateway::start("", &echo_fn("env", "memory_mb = 192"));
    let mut c = gw.h1().await;
    let r = c.invoke("env", "fngate:whoami").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["instance"], r.header("x-fc-instance-id").unwrap());
    assert_eq!(v["memory"], "192");
    // A fresh working directory, deleted when the instance is released: an
    // isolated instance's private /tmp, a plain process's directory.
    let cwd = std::path::PathBuf::from(v["cwd"].as_str().unwrap());
    if isolated_suite() {
        assert_eq!(cwd, std::path::Path::new("/tmp"));
        return;
    }
    assert!(cwd.ends_with(v["instance"].as_str().unwrap()));
    assert!(cwd.is_dir());
    drop(c);
    let mut gw = gw;
    gw.proc.signal(libc::SIGTERM);
    assert_eq!(
        gw.proc.wait_exit(std::time::Duration::from_secs(30)),
        Some(0)
    );
    assert!(
        !cwd.exists(),
        "instance storage must not outlive the instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_gets_408_within_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start("body_read_timeout_ms = 300", &echo_fn("echo", ""));
    let mut tls = raw_tls(&gw).await;
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n0123456789",
        invoke_path("echo")
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut buf))
        .await
        .expect("the gateway must answer a stalled upload")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("RequestTimeout"), "{text}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    assert!(
        gw.instances_of("echo").await.is_empty(),
        "a stalled payload never reaches an instance"
    );
}
