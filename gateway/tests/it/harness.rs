//! Test harness: starts the real `gateway` (and `sandbox-runtime`) binaries
//! with a generated configuration, waits for their "listening" log line
//! (their readiness signal), and talks to them over real TLS.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The invocation records of a usage log (JSON lines), in order.
pub fn usage_records(log: &Path) -> Vec<serde_json::Value> {
    all_usage_lines(log)
        .into_iter()
        .filter(|r| r.get("record").is_none())
        .collect()
}

/// The instance records of a usage log (`"record": "instance"`), in order.
pub fn instance_records(log: &Path) -> Vec<serde_json::Value> {
    all_usage_lines(log)
        .into_iter()
        .filter(|r| r["record"] == "instance")
        .collect()
}

fn all_usage_lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A binary built by `cargo build --workspace` next to this test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` before the tests (the README's test command does)",
        p.display()
    );
    p
}

pub fn echo_bin() -> String {
    workspace_bin("fngate-echo").display().to_string()
}

/// A running process whose stderr lines are collected.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    rx: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.env("RUST_LOG", "info");
        let mut child = cmd.spawn().expect("spawn");
        let stderr = child.stderr.take().unwrap();
        Self::collect(child, stderr)
    }

    /// Like [`Proc::spawn`], collecting stdout instead (servers that log there).
    pub fn spawn_stdout(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        let stdout = child.stdout.take().unwrap();
        Self::collect(child, stdout)
    }

    fn collect(child: Child, out: impl std::io::Read + Send + 'static) -> Proc {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc { child, lines, rx }
    }

    /// Waits for a log line containing `needle`; panics with the log on timeout.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}; log:\n{}", self.log()),
            }
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for exit (bounded); returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn field(line: &str, key: &str) -> String {
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("{key}= not in {line}"));
    line[at + key.len() + 1..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_string()
}

pub struct Gateway {
    pub proc: Proc,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub ca: PathBuf,
    pub dir: tempfile::TempDir,
}

/// The `[gateway]` section every test gets; `extra_gateway` lines are appended to it.
/// `listen` defaults to 127.0.0.1:0 unless `extra_gateway` sets it.
pub fn config(extra_gateway: &str, rest: &str, dir: &Path) -> String {
    // Only keys before the first table header belong to [gateway].
    let own_keys = extra_gateway
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['));
    let listen = if own_keys
        .into_iter()
        .any(|l| l.trim_start().starts_with("listen "))
    {
        ""
    } else {
        "listen = \"127.0.0.1:0\"\n"
    };
    // Isolated instances (the default) unless the test or
    // FNGATE_TEST_ISOLATION=process says otherwise; every embedded worker
    // takes a range of its own (a worker refuses one another holds).
    let isolation = match (
        extra_gateway.contains("embedded_worker_isolation"),
        isolated_suite(),
    ) {
        (true, _) => String::new(),
        (false, true) => format!("embedded_worker_subnet = \"{}\"\n", instance_subnet()),
        (false, false) => "embedded_worker_isolation = \"process\"\n".to_string(),
    };
    format!(
        "[gateway]\n{listen}{isolation}admin_listen = \"127.0.0.1:0\"\nself_signed_cert_path = \"{}\"\n{extra_gateway}\n{rest}",
        dir.join("ca.pem").display()
    )
}

impl Gateway {
    pub fn start(extra_gateway: &str, rest: &str) -> Gateway {
        Self::start_with(extra_gateway, rest, |_| {})
    }

    /// Like [`Gateway::start`], with the command adjusted first (limits, env).
    pub fn start_with(
        extra_gateway: &str,
        rest: &str,
        adjust: impl FnOnce(&mut Command),
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config(extra_gateway, rest, dir.path())).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.arg("--config").arg(&path);
        adjust(&mut cmd);
        let proc = Proc::spawn(cmd);
        let line = proc.wait_line("fngate listening", Duration::from_secs(30));
        Gateway {
            https: field(&line, "https").parse().unwrap(),
            admin: field(&line, "admin").parse().unwrap(),
            ca: dir.path().join("ca.pem"),
            proc,
            dir,
        }
    }

    /// Starts the gateway again on the same configuration and files (its
    /// certificate, its task store) after its process has ended.
    pub fn respawn(&mut self) {
        assert!(
            self.proc.child.try_wait().unwrap().is_some(),
            "respawn needs the old process to have ended"
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.arg("--config")
            .arg(self.dir.path().join("gateway.toml"));
        self.proc = Proc::spawn(cmd);
        let line = self
            .proc
            .wait_line("fngate listening", Duration::from_secs(30));
        self.https = field(&line, "https").parse().unwrap();
        self.admin = field(&line, "admin").parse().unwrap();
    }

    pub async fn client(&self, opts: ClientOpts) -> Client {
        Client::connect(self.https, &self.ca, opts).await
    }

    /// The address of an extra listener, from its "listening" log line.
    pub fn listener(&self, kind: &str) -> SocketAddr {
        let lines = self.proc.lines.lock().unwrap();
        let line = lines
            .iter()
            .find(|l| l.contains("listening") && l.contains(&format!("kind=\"{kind}\"")))
            .unwrap_or_else(|| panic!("no {kind} listener in the log"));
        field(line, "addr").parse().unwrap()
    }

    pub async fn h1(&self) -> Client {
        self.client(ClientOpts::default()).await
    }

    pub async fn h2(&self) -> Client {
        self.client(ClientOpts {
            h2: true,
            ..Default::default()
        })
        .await
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        plain_get(self.admin, path).await
    }

    /// `POST /admin/reload`: its status and its answer.
    pub async fn reload(&self) -> (u16, serde_json::Value) {
        let (status, body) = plain_request(self.admin, "POST", "/admin/reload").await;
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, v)
    }

    /// Rewrites the configuration file (the `[gateway]` section as
    /// [`config`] makes it, then `rest`), for a reload to read.
    /// The embedded worker keeps the address range it started with.
    pub fn rewrite(&self, extra_gateway: &str, rest: &str) {
        let path = self.dir.path().join("gateway.toml");
        let old = std::fs::read_to_string(&path).unwrap();
        let subnet = |t: &str| {
            t.lines()
                .find(|l| l.starts_with("embedded_worker_subnet"))
                .map(str::to_string)
        };
        let mut text = config(extra_gateway, rest, self.dir.path());
        if let (Some(was), Some(now)) = (subnet(&old), subnet(&text)) {
            text = text.replace(&now, &was);
        }
        std::fs::write(path, text).unwrap();
    }

    pub async fn instances(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.admin_get("/admin/instances").await;
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }

    pub async fn instances_of(&self, function: &str) -> Vec<serde_json::Value> {
        self.instances()
            .await
            .into_iter()
            .filter(|i| i["function"] == function)
            .collect()
    }

    /// The host pid of the instance that served `resp` (its worker's view:
    /// an isolated instance is PID 1 inside, its keeper's pid outside).
    pub async fn instance_pid(&self, resp: &Resp) -> i32 {
        let id = resp.header("x-fc-instance-id").expect("instance id");
        let all = self.instances().await;
        let inst = all
            .iter()
            .find(|i| i["instance_id"] == id)
            .expect("instance listed");
        let worker: SocketAddr = inst["worker"]
            .as_str()
            .unwrap()
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let (status, body) = plain_get(worker, &format!("/v1/instances/{id}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["pid"]
            .as_i64()
            .unwrap() as i32
    }

    /// The value of one sample in `/metrics` (0 when absent).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Polls an admin-visible condition (the gateway's own state is the
    /// readiness signal); panics after `timeout`.
    pub async fn until<F, Fut>(&self, what: &str, timeout: Duration, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while !f().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}\nlog:\n{}",
                self.proc.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub fn invoke_path(function: &str) -> String {
    format!("/2023-03-30/functions/{function}/invocations")
}

#[derive(Clone, Default)]
pub struct ClientOpts {
    pub h2: bool,
    /// `Some(12)` or `Some(13)` pins the TLS version.
    pub tls: Option<u8>,
    /// Local address to connect from (any 127.0.0.0/8 address, or ::1).
    pub source: Option<std::net::IpAddr>,
    /// Bytes sent before the TLS handshake (a PROXY protocol header).
    pub preamble: Option<Vec<u8>>,
}

impl ClientOpts {
    /// HTTP/2 (`true`) or HTTP/1.1, nothing else set.
    pub fn h2(h2: bool) -> Self {
        ClientOpts {
            h2,
            ..Default::default()
        }
    }

    pub fn from(source: &str) -> Self {
        ClientOpts {
            source: Some(source.parse().unwrap()),
            ..Default::default()
        }
    }

    pub fn preamble(mut self, bytes: Vec<u8>) -> Self {
        self.preamble = Some(bytes);
        self
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One TLS connection to the gateway. HTTP/2 clients can be cloned to run
/// many streams at once on it.
pub struct Client {
    sender: Sender,
    pub tls_version: rustls::ProtocolVersion,
    pub alpn: Option<Vec<u8>>,
}

impl Clone for Client {
    fn clone(&self) -> Self {
        match &self.sender {
            Sender::H2(s) => Client {
                sender: Sender::H2(s.clone()),
                tls_version: self.tls_version,
                alpn: self.alpn.clone(),
            },
            Sender::H1(_) => panic!("HTTP/1.1 clients are one connection each"),
        }
    }
}

pub fn tls_config(ca: &Path, opts: &ClientOpts) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match opts.tls {
        Some(12) => vec![&rustls::version::TLS12],
        Some(13) => vec![&rustls::version::TLS13],
        _ => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = if opts.h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(cfg)
}

impl Client {
    pub async fn connect(addr: SocketAddr, ca: &Path, opts: ClientOpts) -> Client {
        Self::try_connect(addr, ca, opts).await.unwrap()
    }

    /// Connects; fails when the gateway closes the connection before or
    /// during the TLS handshake.
    pub async fn try_connect(
        addr: SocketAddr,
        ca: &Path,
        opts: ClientOpts,
    ) -> std::io::Result<Client> {
        use tokio::io::AsyncWriteExt;
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(src) = opts.source {
            socket.bind(SocketAddr::new(src, 0))?;
        }
        let mut tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        if let Some(p) = &opts.preamble {
            tcp.write_all(p).await?;
        }
        let connector = tokio_rustls::TlsConnector::from(tls_config(ca, &opts));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await?;
        let (_, session) = tls.get_ref();
        let tls_version = session.protocol_version().unwrap();
        let alpn = session.alpn_protocol().map(|a| a.to_vec());
        let io = TokioIo::new(tls);
        let sender = if opts.h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Ok(Client {
            sender,
            tls_version,
            alpn,
        })
    }

    /// The server closed the connection (or said it would: GOAWAY).
    pub fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    pub async fn send(&mut self, req: http::Request<Full<Bytes>>) -> Result<Resp, hyper::Error> {
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub async fn invoke(&mut self, function: &str, payload: impl Into<Bytes>) -> Resp {
        self.send(invoke_request(function, payload.into()))
            .await
            .expect("invoke")
    }

    pub async fn invoke_q(
        &mut self,
        function: &str,
        qualifier: &str,
        payload: impl Into<Bytes>,
    ) -> Resp {
        let mut req = invoke_request(function, payload.into());
        *req.uri_mut() = format!(
            "https://localhost{}?qualifier={qualifier}",
            invoke_path(function)
        )
        .parse()
        .unwrap();
        self.send(req).await.expect("invoke")
    }
}

pub fn invoke_request(function: &str, payload: Bytes) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{}", invoke_path(function)))
        .header("content-type", "application/octet-stream")
        .body(Full::new(payload))
        .unwrap()
}

pub async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    plain_request(addr, "GET", path).await
}

pub async fn plain_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = s.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A standalone sandbox worker process.
pub struct WorkerProc {
    #[allow(dead_code)] // held so the worker lives as long as the test
    pub proc: Proc,
    pub url: String,
}

pub fn start_worker(memory_mb: u64) -> WorkerProc {
    start_worker_with(memory_mb, &[])
}

/// Whether the workers of this run isolate their instances, as workers do
/// by default (`FNGATE_TEST_ISOLATION=process`, `scripts/test-process.sh`:
/// the suite with plain processes).
pub fn isolated_suite() -> bool {
    std::env::var("FNGATE_TEST_ISOLATION").map_or(true, |v| v != "process")
}

/// A private range of its own for an isolated worker's instances (a
/// worker refuses a range another worker on the host holds).
pub fn instance_subnet() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // 10.214.0.0 to 10.245.255.255: clear of the ranges tests classify.
    assert!(n < 32 * 64, "out of test subnets");
    format!("10.{}.{}.0/22", 214 + n / 64, (n % 64) * 4)
}

/// A worker with more command-line arguments.
pub fn start_worker_with(memory_mb: u64, extra: &[&str]) -> WorkerProc {
    let mut cmd = Command::new(workspace_bin("sandbox-runtime"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--memory-mb",
        &memory_mb.to_string(),
    ]);
    // `--instance-subnet auto`: no range given, the worker picks one.
    let auto = extra.windows(2).any(|w| w == ["--instance-subnet", "auto"]);
    let mut skip = false;
    for a in extra {
        match (skip, *a) {
            (true, _) => skip = false,
            (false, "--instance-subnet") if auto => skip = true,
            (false, a) => {
                cmd.arg(a);
            }
        }
    }
    let isolated = match extra.contains(&"--isolation") {
        true => extra.contains(&"namespaces"),
        false => isolated_suite(),
    };
    if !isolated && !extra.contains(&"--isolation") {
        cmd.args(["--isolation", "process"]);
    }
    if isolated && !extra.contains(&"--instance-subnet") {
        cmd.args(["--instance-subnet", &instance_subnet()]);
    }
    let proc = Proc::spawn(cmd);
    let line = proc.wait_line("sandbox-runtime listening", Duration::from_secs(30));
    let addr = field(&line, "addr");
    WorkerProc {
        proc,
        url: format!("http://{addr}"),
    }
}

/// An `echo` function section with the given extra keys. Its instances can
/// read [`hold_root`] (an isolated instance sees nothing of the host that
/// its function does not name).
pub fn echo_fn(name: &str, extra: &str) -> String {
    format!(
        "[[functions]]\nname = \"{name}\"\ncommand = [\"{}\"]\nreadable_paths = [\"{}\"]\n{extra}\n",
        echo_bin(),
        hold_root().display()
    )
}

/// A Python function: `script` written to `dir/<name>.py`, and a
/// `[[functions]]` section named `name` running it, with `extra` keys.
pub fn python_fn(dir: &Path, name: &str, script: &str, extra: &str) -> String {
    let path = dir.join(format!("{name}.py"));
    std::fs::write(&path, script).unwrap();
    format!(
        "[[functions]]\nname = \"{name}\"\ncommand = [\"python3\", \"{}\"]\n{extra}\n",
        path.display()
    )
}

/// The directory of the files `fngate:hold:PATH` waits for, readable by
/// every [`echo_fn`] (this test process's own, under cargo's test tmpdir).
pub fn hold_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let root =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("holds-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        root
    })
}

/// A fresh path in [`hold_root`] for a file a held call waits for.
pub fn hold_file(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    hold_root().join(format!("{n}-{name}"))
}

/// A temporary directory in [`hold_root`] (for tests that keep more there).
pub fn hold_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(hold_root()).unwrap()
}

/// A raw TLS stream (HTTP/1.1 by ALPN) to the gateway, for tests that write
/// request bytes by hand.
pub async fn raw_tls(gw: &Gateway) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls_config(&gw.ca, &ClientOpts::default()));
    connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// Runs the gateway on `config`; it must exit 2 naming `key` on stderr.
pub fn assert_config_error(config: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{config}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(key), "stderr should name {key:?}: {err}");
}

/// Runs the `gateway` binary with `args`; it must succeed. Returns stdout.
pub fn gateway_cli<I, S>(args: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A CA for test servers' leaves (90 days): its certificate, and the issuer
/// that signs them.
pub fn test_ca() -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let now = time::OffsetDateTime::now_utc();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "fngate test CA");
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(90);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    (ca_cert, rcgen::Issuer::new(ca, ca_key))
}

/// A TLS acceptor for a test server on loopback: a new self-signed
/// certificate for 127.0.0.1, whose PEM is written to `ca` (the anchor its
/// clients trust), offering `alpn`.
pub fn test_tls_acceptor(ca: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    tls_acceptor_with(params, ca, alpn)
}

/// [`test_tls_acceptor`] with a certificate of `params` (self-signed,
/// written to `ca`).
pub fn tls_acceptor_with(
    params: rcgen::CertificateParams,
    ca: &Path,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsAcceptor {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(ca, cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A destination for asynchronous outcomes: a plain HTTP server on
/// loopback that keeps every JSON record POSTed to it and answers 200.
pub struct Sink {
    pub addr: SocketAddr,
    scheme: &'static str,
    pub records: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Listens on `addr` (port 0: any), plain HTTP.
    pub async fn start(addr: SocketAddr) -> Sink {
        Self::serve(addr, None).await
    }

    /// Listens on `addr` over HTTPS, with a certificate for 127.0.0.1
    /// whose PEM is written to `ca` (for `async_destination_ca_file`).
    pub async fn start_tls(addr: SocketAddr, ca: &Path) -> Sink {
        Self::serve(addr, Some(test_tls_acceptor(ca, &[]))).await
    }

    async fn serve(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Sink {
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = l.local_addr().unwrap();
        let records: Arc<Mutex<Vec<serde_json::Value>>> = Default::default();
        let keep = records.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let (keep, tls) = (keep.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let keep = keep.clone();
                            async move {
                                let body = req.into_body().collect().await?.to_bytes();
                                let v = serde_json::from_slice(&body)
                                    .unwrap_or(serde_json::Value::Null);
                                keep.lock().unwrap().push(v);
                                Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                            }
                        },
                    );
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(tls) => {
                            if let Ok(s) = tls.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Sink {
            addr,
            scheme,
            records,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}/", self.scheme, self.addr)
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        self.records.lock().unwrap().clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An asynchronous FC invocation, optionally with a caller-chosen task id.
pub fn async_request(
    function: &str,
    payload: impl Into<Bytes>,
    task_id: Option<&str>,
) -> http::Request<Full<Bytes>> {
    let mut req = invoke_request(function, payload.into());
    req.headers_mut()
        .insert("x-fc-invocation-type", "Async".parse().unwrap());
    if let Some(id) = task_id {
        req.headers_mut()
            .insert("x-fc-async-task-id", id.parse().unwrap());
    }
    req
}

/// A call of FC's task API: `GET|PUT /2023-03-30/functions/{f}/async-tasks{rest}`.
pub fn task_request(method: &str, function: &str, rest: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(format!(
            "https://localhost/2023-03-30/functions/{function}/async-tasks{rest}"
        ))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A `nats-server` with JetStream, its data in a temporary directory.
pub struct Nats {
    pub proc: Proc,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        Nats::spawn(&[])
    }

    fn spawn(args: &[String]) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("nats-server");
        cmd.args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(dir.path())
            .args(args);
        let proc = Proc::spawn(cmd);
        let line = proc.wait_line(
            "Listening for client connections on",
            Duration::from_secs(30),
        );
        let addr = line.rsplit(' ').next().unwrap().trim().to_string();
        proc.wait_line("Server is ready", Duration::from_secs(30));
        Nats {
            proc,
            url: format!("nats://{addr}"),
            _dir: dir,
        }
    }

    /// `n` servers clustered on loopback (JetStream replicated across
    /// them), named `n1`..; returns once each knows the cluster's
    /// metadata leader.
    pub fn cluster(n: usize) -> Vec<Nats> {
        let route_ports: Vec<u16> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect::<Vec<_>>()
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let nodes: Vec<Nats> = (0..n)
            .map(|i| {
                let routes: Vec<String> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", route_ports[j]))
                    .collect();
                Nats::spawn(&[
                    "-n".into(),
                    format!("n{}", i + 1),
                    "--cluster_name".into(),
                    "fngate-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", route_ports[i]),
                    "--routes".into(),
                    routes.join(","),
                ])
            })
            .collect();
        for node in &nodes {
            node.proc
                .wait_line("metadata leader", Duration::from_secs(30));
        }
        nodes
    }

    /// The `[fleet]` section for gateway `id`, short heartbeats so that
    /// tests see membership change within seconds.
    /// Each gateway has its own embedded worker unless `extra` sets
    /// `discover_workers`.
    pub fn fleet(&self, id: &str, extra: &str) -> String {
        fleet_section(&[self], id, extra)
    }

    /// A standalone worker registered in this fleet (same heartbeat and TTL).
    pub fn worker(&self, memory_mb: u64) -> WorkerProc {
        start_worker_with(
            memory_mb,
            &[
                "--fleet-nats-url",
                &self.url,
                "--fleet-heartbeat-ms",
                "200",
                "--fleet-member-ttl-ms",
                "1500",
            ],
        )
    }
}

/// [`Nats::fleet`] for a fleet on the servers `nats`.
pub fn fleet_section(nats: &[&Nats], id: &str, extra: &str) -> String {
    let embedded = match extra.contains("discover_workers") {
        true => "",
        false => "discover_workers = false\n",
    };
    let urls: Vec<String> = nats.iter().map(|n| format!("\"{}\"", n.url)).collect();
    format!(
        "[fleet]\nid = \"{id}\"\nnats_urls = [{}]\nheartbeat_ms = 200\nmember_ttl_ms = 1500\n{embedded}{extra}\n",
        urls.join(", ")
    )
}

/// A `redis-server` on a free loopback port, persisting nothing.
pub struct Redis {
    pub proc: Proc,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        // A free port: redis-server cannot pick one and say which.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path());
        // redis-server logs to stdout.
        let proc = Proc::spawn_stdout(cmd);
        proc.wait_line("Ready to accept connections", Duration::from_secs(30));
        Redis {
            proc,
            url: format!("redis://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

/// The resident memory of process `pid`, KiB (`None`: it is gone).
pub fn rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
