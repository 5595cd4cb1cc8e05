//! `fngate-echo`: the native example function and benchmark target.
//!
//! Serves the fngate function contract on `$FC_SERVER_HOST:$FC_SERVER_PORT`:
//! `POST /invoke` answers 200 with the request body and content type.
//!
//! A payload that starts with `fngate:` is a command, for demos and tests:
//! - `fngate:sleep:MS` sleeps MS milliseconds, then echoes;
//! - `fngate:hold:PATH` waits (up to 60 s) until PATH exists, then echoes;
//! - `fngate:crash` exits with code 3 before answering;
//! - `fngate:append:PATH:TEXT` appends the line TEXT to PATH, then echoes;
//! - `fngate:fail-first:PATH:N` appends a line to PATH and exits with code 3
//!   while PATH holds at most N lines (fails N times, then echoes);
//! - `fngate:alloc:MB` touches MB MiB of memory, then echoes;
//! - `fngate:whoami` answers the instance id, pid and working directory;
//! - `fngate:headers` answers the request's headers as a JSON object;
//! - `fngate:print:TEXT` writes TEXT to stdout and `TEXT (stderr)` to stderr
//!   (what a log tail shows), then echoes.
//!
//! HTTP-trigger mode (a request with `x-fngate-trigger: http`, any method and
//! path): answers JSON describing the request it got (`method`, `path`,
//! `query`, `headers`, `body`, `requestId`, `function`). The query parameter
//! `status=N` sets the answer's status and each `header=Name:Value` adds a
//! header to it; a body starting with `fngate:` is a command as above.
//!
//! With `--standalone ADDR` it serves on ADDR instead (the benchmark's direct path).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = match args.next().as_deref() {
        Some("--standalone") => args.next().expect("--standalone ADDR"),
        _ => {
            let host = std::env::var("FC_SERVER_HOST").unwrap_or_else(|_| "0.0.0.0".into());
            let port = std::env::var("FC_SERVER_PORT").expect("FC_SERVER_PORT is not set");
            format!("{host}:{port}")
        }
    };
    // One thread: instances are packed many to a host, and the gateway
    // spreads load across instances, not across threads of one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(serve(addr));
}

async fn serve(addr: String) {
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    eprintln!("fngate-echo listening on {addr}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, hyper::service::service_fn(invoke))
                .await;
        });
    }
}

async fn invoke(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req
        .headers()
        .get("x-fngate-trigger")
        .is_some_and(|v| v == "http")
    {
        return Ok(http_trigger(req).await);
    }
    if req.uri().path() != "/invoke" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"not found\n"),
            None,
        ));
    }
    let ctype = req.headers().get(http::header::CONTENT_TYPE).cloned();
    let (parts, body) = req.into_parts();
    let parts_headers = parts.headers;
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, Bytes::new(), None)),
    };
    if body.as_ref() == b"fngate:headers" {
        return Ok(reply(
            StatusCode::OK,
            Bytes::from(headers_json(&parts_headers).to_string()),
            Some(http::HeaderValue::from_static("application/json")),
        ));
    }
    if let Some(answer) = command(&body).await {
        return Ok(answer);
    }
    Ok(reply(StatusCode::OK, body, ctype))
}

/// Header name → its values joined with ", ".
fn headers_json(h: &http::HeaderMap) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for name in h.keys() {
        let joined: Vec<&str> = h
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        out.insert(name.as_str().into(), joined.join(", ").into());
    }
    out.into()
}

/// The HTTP-trigger contract: describe the request, shape the answer as asked.
async fn http_trigger(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, Bytes::new(), None),
    };
    if let Some(answer) = command(&body).await {
        return answer;
    }
    let headers = headers_json(&parts.headers);
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let described = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "requestId": header("x-fngate-request-id"),
        "function": header("x-fngate-function-name"),
    });
    let mut r = reply(
        StatusCode::OK,
        Bytes::from(described.to_string()),
        Some(http::HeaderValue::from_static("application/json")),
    );
    for (k, v) in parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        match k {
            "status" => {
                if let Some(s) = v.parse().ok().and_then(|n| StatusCode::from_u16(n).ok()) {
                    *r.status_mut() = s;
                }
            }
            "header" => {
                if let Some((name, value)) = v.split_once(':')
                    && let (Ok(n), Ok(v)) = (
                        http::HeaderName::from_bytes(name.as_bytes()),
                        http::HeaderValue::from_str(value),
                    )
                {
                    r.headers_mut().append(n, v);
                }
            }
            _ => {}
        }
    }
    r
}

/// A `fngate:` command in `body`: runs it, and answers when it has its own answer.
async fn command(body: &Bytes) -> Option<Response<Full<Bytes>>> {
    if let Some(cmd) = body.strip_prefix(b"fngate:") {
        let cmd = String::from_utf8_lossy(cmd).trim().to_string();
        let (verb, arg) = cmd.split_once(':').unwrap_or((cmd.as_str(), ""));
        match verb {
            "sleep" => {
                let ms = arg.parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            "hold" => {
                for _ in 0..6000 {
                    if std::path::Path::new(arg).exists() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            "crash" => {
                eprintln!("fngate-echo: crashing on request");
                std::process::exit(3);
            }
            "append" | "fail-first" => {
                let (path, text) = arg.rsplit_once(':').unwrap_or((arg, ""));
                let line = match verb {
                    "append" => format!("{text}\n"),
                    _ => "attempt\n".to_string(),
                };
                // One write with O_APPEND: lines from concurrent instances do not mix.
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("open the file to append to");
                f.write_all(line.as_bytes()).expect("append");
                if verb == "fail-first" {
                    let n: usize = text.parse().unwrap_or(0);
                    let lines = std::fs::read_to_string(path)
                        .unwrap_or_default()
                        .lines()
                        .count();
                    if lines <= n {
                        eprintln!("fngate-echo: failing attempt {lines} of the first {n}");
                        std::process::exit(3);
                    }
                }
            }
            "alloc" => {
                let mb: usize = arg.parse().unwrap_or(0);
                let mut v = vec![0u8; mb * 1024 * 1024];
                // Touch every page so it is resident, not just reserved.
                for i in (0..v.len()).step_by(4096) {
                    v[i] = 1;
                }
                std::hint::black_box(&v);
            }
            "whoami" => {
                let me = format!(
                    "{{\"instance\":\"{}\",\"pid\":{},\"cwd\":\"{}\",\"memory\":\"{}\"}}",
                    std::env::var("FC_INSTANCE_ID").unwrap_or_default(),
                    std::process::id(),
                    std::env::current_dir().unwrap_or_default().display(),
                    std::env::var("FC_FUNCTION_MEMORY_SIZE").unwrap_or_default(),
                );
                return Some(reply(StatusCode::OK, Bytes::from(me), None));
            }
            "env" => {
                // The value of environment variable ARG (empty when unset).
                let v = std::env::var(arg).unwrap_or_default();
                return Some(reply(StatusCode::OK, Bytes::from(v), None));
            }
            "print" => {
                // Writes ARG to stdout and stderr (an invocation's log tail).
                println!("{arg}");
                eprintln!("{arg} (stderr)");
            }
            _ => {}
        }
    }
    None
}

fn reply(
    status: StatusCode,
    body: Bytes,
    ctype: Option<http::HeaderValue>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    if let Some(ct) = ctype {
        r.headers_mut().insert(http::header::CONTENT_TYPE, ct);
    }
    r
}
