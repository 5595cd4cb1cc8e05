//! `loadtest`: HTTP(S) load for fngate (or any HTTP endpoint).
//!
//! - closed loop (`-c N`): N connections, each sending its next request when
//!   the last is answered;
//! - open loop (`--rate R`): requests fall due at R/s whatever the answers,
//!   latency measured from when each was due ([`schedule`]);
//! - scenario files (`--scenario FILE`, [`scenario`]): function mix by weight,
//!   payload sizes, caller source addresses, HTTP/1.1 or HTTP/2;
//! - `--hold`: open N connections and keep them idle (memory measurements).
//!
//! Output: a summary (and a live progress line on a terminal), or `--json`
//! ([`report`]). Bounded by design: a duration is always set (at most 1 h), a
//! request may outlive it by at most 10 s, and targets off loopback are
//! refused unless `--allow-remote`.

mod report;
mod scenario;
mod schedule;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use report::Report;
use scenario::{Dialect, Mode, Scenario};
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(version, about = "HTTP(S) load generator for fngate")]
struct Args {
    /// A scenario file (TOML); the other options then only override it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Target URL, e.g. https://127.0.0.1:8443/2023-03-30/functions/echo/invocations
    #[arg(long)]
    url: Option<String>,
    /// Concurrent connections (each with one request in flight).
    #[arg(long, short)]
    connections: Option<usize>,
    /// How long to send, e.g. 10s, 500ms.
    #[arg(long, short, value_parser = scenario::parse_duration)]
    duration: Option<Duration>,
    /// Warm-up before measuring (requests sent but not recorded).
    #[arg(long, value_parser = scenario::parse_duration)]
    warmup: Option<Duration>,
    /// Open loop: requests per second in total (latency from the due time).
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many requests in total (closed loop).
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
    /// Local address to send from (e.g. 127.0.0.2, to stand in a VPC).
    #[arg(long)]
    source: Option<IpAddr>,
    /// Open the connections, then hold them idle for the duration.
    #[arg(long)]
    hold: bool,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Allow targets outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    allow_remote: bool,
    /// A header sent with every request, `Name: value` (repeatable; e.g. a
    /// pre-signed request's Authorization and date).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
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

/// The scenario a run follows: from `--scenario`, or from the flags alone.
fn scenario_of(args: &Args) -> Result<Scenario, String> {
    let mut s = match &args.scenario {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Scenario::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => {
            let url = args.url.clone().ok_or("--url or --scenario is required")?;
            Scenario {
                target: url,
                cacert: None,
                dialect: Dialect::Raw,
                duration: Duration::from_secs(10),
                warmup: Duration::ZERO,
                mode: Mode::Closed,
                connections: 64,
                rate: None,
                http2: false,
                allow_remote: false,
                functions: Vec::new(),
                sources: Vec::new(),
            }
        }
    };
    if let Some(u) = &args.url {
        s.target = u.clone();
    }
    if args.scenario.is_none() || args.url.is_some() {
        // A --url is a complete URL: no function paths are appended.
        if args.url.is_some() {
            s.dialect = Dialect::Raw;
        }
    }
    if let Some(c) = args.connections {
        s.connections = c;
    }
    if let Some(d) = args.duration {
        s.duration = d;
    }
    if let Some(w) = args.warmup {
        s.warmup = w;
    }
    if let Some(r) = args.rate {
        s.rate = Some(r);
        s.mode = Mode::Open;
    }
    if args.cacert.is_some() {
        s.cacert = args.cacert.clone();
    }
    s.http2 |= args.http2;
    s.allow_remote |= args.allow_remote;
    if let Some(src) = args.source {
        s.sources = vec![scenario::Source {
            address: src,
            weight: 1,
        }];
    }
    s.validate()?;
    Ok(s)
}

/// What is sent for one function of the mix.
struct Req {
    uri: http::Uri,
    payload: Bytes,
    /// Its door's headers (an asynchronous invocation type) and `--header`s.
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

struct Target {
    addr: SocketAddr,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    authority: http::HeaderValue,
    /// One per function, or one for a raw target.
    requests: Vec<Req>,
    weights: Vec<u32>,
    sources: Vec<IpAddr>,
    source_weights: Vec<u32>,
    h2: bool,
}

fn target(s: &Scenario, args: &Args) -> Result<Target, String> {
    let base: http::Uri = s.target.parse().map_err(|e| format!("target: {e}"))?;
    let https = match base.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("target must be http:// or https://".into()),
    };
    let host = base
        .host()
        .ok_or("target has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = base.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or("no address")?;
    if !addr.ip().is_loopback() && !s.allow_remote {
        return Err(format!(
            "{addr} is not a loopback address; pass --allow-remote to load it"
        ));
    }
    let tls = if https {
        let mut roots = rustls::RootCertStore::empty();
        let ca = s
            .cacert
            .as_ref()
            .ok_or("--cacert (or cacert) is required for https targets")?;
        use rustls_pki_types::pem::PemObject;
        for c in rustls_pki_types::CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("cacert: {e}"))?
        {
            roots
                .add(c.map_err(|e| format!("cacert: {e}"))?)
                .map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![if s.http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let name = args.server_name.clone().unwrap_or_else(|| {
            if host.parse::<IpAddr>().is_ok() {
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
        http::HeaderValue::from_str(base.authority().map(|a| a.as_str()).unwrap_or("localhost"))
            .map_err(|e| e.to_string())?;
    let payload = |n: usize| match &args.body {
        Some(b) => Bytes::from(b.clone().into_bytes()),
        None => Bytes::from(vec![b'x'; n]),
    };
    let mut extra = Vec::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?}: expected Name: value"))?;
        extra.push((
            http::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| format!("--header {h:?}: {e}"))?,
            http::HeaderValue::from_str(value.trim())
                .map_err(|e| format!("--header {h:?}: {e}"))?,
        ));
    }
    let (requests, weights) = match s.dialect {
        Dialect::Raw => {
            let r = Req {
                uri: base.clone(),
                payload: payload(args.payload_bytes),
                headers: extra,
            };
            (vec![r], vec![1])
        }
        Dialect::Fc | Dialect::Lambda | Dialect::Azure => {
            let origin = format!(
                "{}://{}",
                base.scheme_str().unwrap_or("https"),
                base.authority().map(|a| a.as_str()).unwrap_or("")
            );
            let mut r = Vec::new();
            for f in &s.functions {
                let (path, async_header) = match f.dialect.unwrap_or(s.dialect) {
                    Dialect::Fc => (
                        format!("/2023-03-30/functions/{}/invocations", f.name),
                        ("x-fc-invocation-type", "Async"),
                    ),
                    Dialect::Lambda => (
                        format!("/2015-03-31/functions/{}/invocations", f.name),
                        ("x-amz-invocation-type", "Event"),
                    ),
                    // Validated: no asynchronous Azure calls, no raw functions.
                    Dialect::Azure | Dialect::Raw => (format!("/api/{}", f.name), ("", "")),
                };
                let uri = format!("{origin}{path}")
                    .parse()
                    .map_err(|e| format!("functions: {e}"))?;
                let mut headers = extra.clone();
                if f.invocation == scenario::Invocation::Async {
                    headers.push((
                        http::HeaderName::from_static(async_header.0),
                        http::HeaderValue::from_static(async_header.1),
                    ));
                }
                r.push(Req {
                    uri,
                    payload: payload(f.payload_bytes),
                    headers,
                });
            }
            (r, s.functions.iter().map(|f| f.weight).collect())
        }
    };
    Ok(Target {
        addr,
        tls,
        authority,
        requests,
        weights,
        sources: s.sources.iter().map(|x| x.address).collect(),
        source_weights: s.sources.iter().map(|x| x.weight).collect(),
        h2: s.http2,
    })
}

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn connect(t: &Target, source: Option<IpAddr>) -> Result<Conn, String> {
    let socket = if t.addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if let Some(src) = source {
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| format!("source {src}: {e}"))?;
    }
    let tcp = socket.connect(t.addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    macro_rules! handshake {
        ($io:expr) => {
            if t.h2 {
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

/// Sends one request; returns (status, body bytes, cold start).
async fn send(conn: &mut Conn, t: &Target, r: &Req) -> Result<(u16, u64, bool), hyper::Error> {
    let mut req = http::Request::new(Full::new(r.payload.clone()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = r.uri.clone();
    for (name, value) in &r.headers {
        req.headers_mut().append(name.clone(), value.clone());
    }
    let resp = match conn {
        Conn::H1(s) => {
            // HTTP/2 carries the authority in :authority (from the URI); a
            // `host` header beside it is a duplicate that nginx refuses.
            req.headers_mut()
                .insert(http::header::HOST, t.authority.clone());
            s.ready().await?;
            s.send_request(req).await?
        }
        Conn::H2(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
    };
    let status = resp.status().as_u16();
    let cold = resp.headers().contains_key("x-fngate-cold-start");
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body.len() as u64, cold))
}

/// A small, fast PRNG for the function mix (xorshift64*).
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn run(args: Args) -> Result<(), String> {
    let s = scenario_of(&args)?;
    let t = Arc::new(target(&s, &args)?);
    if args.hold {
        return hold(&s, &t).await;
    }
    let start = Instant::now();
    let measure_from = start + s.warmup;
    let end = measure_from + s.duration;
    let budget = Arc::new(AtomicU64::new(if args.requests == 0 {
        u64::MAX
    } else {
        args.requests
    }));
    let done = Arc::new(AtomicU64::new(0));
    let progress = (std::io::stderr().is_terminal() && !args.json).then(|| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                eprint!(
                    "\r  {:>6.1} s  {:>9} requests  {:>8} req/s   ",
                    start.elapsed().as_secs_f64(),
                    n,
                    n - last
                );
                last = n;
            }
        })
    });

    let mut tasks = Vec::new();
    for i in 0..s.connections {
        let t = t.clone();
        let budget = budget.clone();
        let done = done.clone();
        let (mode, rate, n) = (s.mode, s.rate.unwrap_or(1.0), s.connections);
        let source = (!t.sources.is_empty()).then(|| {
            t.sources[scenario::pick_weighted(&t.source_weights, (i as f64 + 0.5) / n as f64)]
        });
        tasks.push(tokio::spawn(async move {
            let mut rep = Report::default();
            let mut rng =
                Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
            let mut sched = schedule::Schedule::new(start, rate, n, i);
            let mut conn = None;
            loop {
                // When this request is due: now (closed loop) or on schedule (open loop).
                let due = match mode {
                    Mode::Closed => Instant::now(),
                    Mode::Open => {
                        let due = sched.next_due();
                        tokio::time::sleep_until(due).await;
                        due
                    }
                };
                if due >= end
                    || budget
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1))
                        .is_err()
                {
                    break;
                }
                let recorded = due >= measure_from;
                if conn.is_none() {
                    match tokio::time::timeout_at(end, connect(&t, source)).await {
                        Ok(Ok(c)) => conn = Some(c),
                        _ => {
                            rep.connection_errors += u64::from(recorded);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let r = &t.requests[scenario::pick_weighted(&t.weights, rng.unit())];
                let result = tokio::time::timeout_at(
                    end + Duration::from_secs(10),
                    send(conn.as_mut().unwrap(), &t, r),
                )
                .await;
                match result {
                    Ok(Ok((status, received, cold))) => {
                        if recorded {
                            let us = schedule::latency(due, Instant::now()).as_micros() as u64;
                            rep.record(us, status, r.payload.len() as u64, received, cold);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        rep.connection_errors += u64::from(recorded);
                        conn = None;
                    }
                }
            }
            rep
        }));
    }
    let mut total = Report::default();
    for task in tasks {
        total.merge(&task.await.map_err(|e| e.to_string())?);
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let seconds = Instant::now()
        .saturating_duration_since(measure_from)
        .min(s.duration)
        .as_secs_f64();
    if args.json {
        println!("{}", total.to_json(seconds));
    } else {
        print!("{}", total.to_text(&s.target, seconds));
    }
    Ok(())
}

/// Opens `connections` connections (one request each, so they are fully
/// established), says so, and holds them idle for the duration.
async fn hold(s: &Scenario, t: &Arc<Target>) -> Result<(), String> {
    let mut conns = Vec::with_capacity(s.connections);
    for i in 0..s.connections {
        let source = (!t.sources.is_empty()).then(|| t.sources[i % t.sources.len()]);
        let mut c = connect(t, source).await?;
        send(&mut c, t, &t.requests[0])
            .await
            .map_err(|e| e.to_string())?;
        conns.push(c);
    }
    println!("holding {} connections", conns.len());
    tokio::time::sleep(s.duration).await;
    drop(conns);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_targets_are_refused_by_default() {
        let mut a = Args::parse_from(["loadtest", "--url", "http://192.0.2.1:80/x"]);
        let s = scenario_of(&a).unwrap();
        assert!(target(&s, &a).err().unwrap().contains("not a loopback"));
        a.url = Some("http://127.0.0.1:9/x".into());
        assert!(target(&scenario_of(&a).unwrap(), &a).is_ok());
        a.url = Some("https://127.0.0.1:9/x".into());
        assert!(
            target(&scenario_of(&a).unwrap(), &a)
                .err()
                .unwrap()
                .contains("cacert")
        );
    }

    #[test]
    fn flags_override_the_scenario() {
        let a = Args::parse_from([
            "loadtest",
            "--url",
            "http://127.0.0.1:9/x",
            "--rate",
            "500",
            "-c",
            "8",
            "-d",
            "2s",
        ]);
        let s = scenario_of(&a).unwrap();
        assert_eq!(
            (s.mode, s.rate, s.connections, s.duration),
            (Mode::Open, Some(500.0), 8, Duration::from_secs(2))
        );
    }
}
