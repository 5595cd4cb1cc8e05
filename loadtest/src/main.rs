//! `loadtest`: closed-loop HTTP(S) load against fngate or any HTTP endpoint.
//!
//! N connections each send POST requests back to back for D seconds (or
//! until a request budget is spent) and record every latency in an HDR
//! histogram; the summary gives requests/s, p50/p90/p99/max and status codes.
//!
//! Bounded by design: a duration is always set, and targets off the loopback
//! range are refused unless `--allow-remote` is given.

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(version, about = "Closed-loop HTTP(S) load generator for fngate")]
struct Args {
    /// Target URL, e.g. https://127.0.0.1:8443/2023-03-30/functions/echo/invocations
    #[arg(long)]
    url: String,
    /// Concurrent connections (each with one request in flight).
    #[arg(long, short, default_value_t = 64)]
    connections: usize,
    /// How long to send, e.g. 10s, 500ms.
    #[arg(long, short, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before measuring (requests sent but not recorded).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Stop after this many requests in total (0 = no limit).
    #[arg(long, default_value_t = 0)]
    requests: u64,
    /// Request body size in bytes (filled with 'x').
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Request body text (overrides --payload-bytes).
    #[arg(long)]
    body: Option<String>,
    /// CA certificate (PEM) to trust for https targets.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// TLS server name to verify (default: the URL's host, or localhost for IPs).
    #[arg(long)]
    server_name: Option<String>,
    /// Use HTTP/2 (one stream per connection at a time).
    #[arg(long)]
    http2: bool,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Local address to send from (e.g. 127.0.0.2, to stand in a VPC).
    #[arg(long)]
    source: Option<std::net::IpAddr>,
    /// Allow targets outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    allow_remote: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mul) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    if n < 0.0 || n * mul > 3600.0 {
        return Err(format!("duration {s:?} must be between 0 and 1h"));
    }
    Ok(Duration::from_secs_f64(n * mul))
}

struct Target {
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    uri: http::Uri,
    authority: http::HeaderValue,
}

#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    bytes_out: u64,
    bytes_in: u64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn target(args: &Args) -> Result<Target, String> {
    let uri: http::Uri = args.url.parse().map_err(|e| format!("--url: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("--url must be http:// or https://".into()),
    };
    let host = uri
        .host()
        .ok_or("--url has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or("no address")?;
    if !addr.ip().is_loopback() && !args.allow_remote {
        return Err(format!(
            "{addr} is not a loopback address; pass --allow-remote to load it"
        ));
    }
    let tls = if https {
        let mut roots = rustls::RootCertStore::empty();
        let ca = args
            .cacert
            .as_ref()
            .ok_or("--cacert is required for https targets")?;
        use rustls_pki_types::pem::PemObject;
        for c in rustls_pki_types::CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("--cacert: {e}"))?
        {
            roots
                .add(c.map_err(|e| format!("--cacert: {e}"))?)
                .map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![if args.http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let name = args.server_name.clone().unwrap_or_else(|| {
            if host.parse::<std::net::IpAddr>().is_ok() {
                "localhost".into()
            } else {
                host.clone()
            }
        });
        let name = rustls_pki_types::ServerName::try_from(name).map_err(|e| e.to_string())?;
        Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
    } else {
        None
    };
    let authority =
        http::HeaderValue::from_str(uri.authority().map(|a| a.as_str()).unwrap_or("localhost"))
            .map_err(|e| e.to_string())?;
    Ok(Target {
        addr,
        source: args.source,
        tls,
        uri,
        authority,
    })
}

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn connect(t: &Target, h2: bool) -> Result<Conn, String> {
    let socket = if t.addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if let Some(src) = t.source {
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| format!("--source {src}: {e}"))?;
    }
    let tcp = socket.connect(t.addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    macro_rules! handshake {
        ($io:expr) => {
            if h2 {
                let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), $io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(c);
                Conn::H2(s)
            } else {
                let (s, c) = hyper::client::conn::http1::handshake($io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(c);
                Conn::H1(s)
            }
        };
    }
    Ok(match &t.tls {
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            handshake!(TokioIo::new(tls))
        }
        None => handshake!(TokioIo::new(tcp)),
    })
}

async fn run(args: Args) -> Result<(), String> {
    let t = Arc::new(target(&args)?);
    let payload = Bytes::from(match &args.body {
        Some(b) => b.clone().into_bytes(),
        None => vec![b'x'; args.payload_bytes],
    });
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let budget = Arc::new(AtomicU64::new(if args.requests == 0 {
        u64::MAX
    } else {
        args.requests
    }));
    let done = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for _ in 0..args.connections.max(1) {
        let t = t.clone();
        let payload = payload.clone();
        let budget = budget.clone();
        let done = done.clone();
        let h2 = args.http2;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally {
                hist: Some(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
                ..Default::default()
            };
            let mut conn = None;
            while Instant::now() < end {
                if budget
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                if conn.is_none() {
                    match tokio::time::timeout_at(end, connect(&t, h2)).await {
                        Ok(Ok(c)) => conn = Some(c),
                        _ => {
                            tally.errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let mut req = http::Request::new(Full::new(payload.clone()));
                *req.method_mut() = http::Method::POST;
                *req.uri_mut() = t.uri.clone();
                req.headers_mut()
                    .insert(http::header::HOST, t.authority.clone());
                let sent = Instant::now();
                let result = async {
                    let resp = match conn.as_mut().unwrap() {
                        Conn::H1(s) => {
                            s.ready().await?;
                            s.send_request(req).await?
                        }
                        Conn::H2(s) => {
                            s.ready().await?;
                            s.send_request(req).await?
                        }
                    };
                    let status = resp.status().as_u16();
                    let body = resp.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((status, body.len()))
                };
                // Bounded: a request may not outlive the run by more than 10 s.
                let result = tokio::time::timeout_at(end + Duration::from_secs(10), result).await;
                let recorded = sent >= measure_from;
                match result {
                    Ok(Ok((status, len))) => {
                        if recorded {
                            let us = sent.elapsed().as_micros().max(1) as u64;
                            let _ = tally.hist.as_mut().unwrap().record(us.min(60_000_000));
                            *tally.statuses.entry(status).or_default() += 1;
                            tally.bytes_in += len as u64;
                            tally.bytes_out += payload.len() as u64;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        if recorded {
                            tally.errors += 1;
                        }
                        conn = None;
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally {
        hist: Some(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
        ..Default::default()
    };
    for task in tasks {
        let t = task.await.map_err(|e| e.to_string())?;
        total
            .hist
            .as_mut()
            .unwrap()
            .add(t.hist.as_ref().unwrap())
            .map_err(|e| e.to_string())?;
        for (k, v) in t.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
        total.errors += t.errors;
        total.bytes_in += t.bytes_in;
        total.bytes_out += t.bytes_out;
    }
    let elapsed = Instant::now()
        .saturating_duration_since(measure_from)
        .min(args.duration)
        .as_secs_f64();
    let h = total.hist.as_ref().unwrap();
    let n = h.len();
    let rps = if elapsed > 0.0 {
        n as f64 / elapsed
    } else {
        0.0
    };
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    if args.json {
        let statuses: Vec<String> = total
            .statuses
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        println!(
            "{{\"requests\":{n},\"seconds\":{elapsed:.3},\"rps\":{rps:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"errors\":{},\"statuses\":{{{}}},\"bytes_out\":{},\"bytes_in\":{}}}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
            total.errors,
            statuses.join(","),
            total.bytes_out,
            total.bytes_in
        );
    } else {
        println!("target      {}", args.url);
        println!(
            "requests    {n} in {elapsed:.2} s ({rps:.0} req/s), {} connection errors",
            total.errors
        );
        println!(
            "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0
        );
        let statuses: Vec<String> = total
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!("statuses    {}", statuses.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_are_bounded() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn remote_targets_are_refused_by_default() {
        let mut a = Args::parse_from(["loadtest", "--url", "http://192.0.2.1:80/x"]);
        assert!(target(&a).err().unwrap().contains("not a loopback"));
        a.url = "http://127.0.0.1:9/x".into();
        assert!(target(&a).is_ok());
        a.url = "https://127.0.0.1:9/x".into();
        assert!(target(&a).err().unwrap().contains("--cacert"));
    }
}
