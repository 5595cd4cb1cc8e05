//! `fngate-echo`: the native example function and benchmark target.
//!
//! Serves the fngate function contract on `$FC_SERVER_HOST:$FC_SERVER_PORT`:
//! `POST /invoke` answers 200 with the request body and content type.
//!
//! A payload that starts with `fngate:` is a command, for demos and tests:
//! - `fngate:sleep:MS` sleeps MS milliseconds, then echoes;
//! - `fngate:hold:PATH` waits (up to 60 s) until PATH exists, then echoes;
//! - `fngate:crash` exits with code 3 before answering;
//! - `fngate:alloc:MB` touches MB MiB of memory, then echoes;
//! - `fngate:whoami` answers the instance id, pid and working directory.
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
    if req.uri().path() != "/invoke" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"not found\n"),
            None,
        ));
    }
    let ctype = req.headers().get(http::header::CONTENT_TYPE).cloned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, Bytes::new(), None)),
    };
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
                return Ok(reply(StatusCode::OK, Bytes::from(me), None));
            }
            _ => {}
        }
    }
    Ok(reply(StatusCode::OK, body, ctype))
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
