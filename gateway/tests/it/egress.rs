//! Isolated instances' networking: each in its own network namespace,
//! reached by the gateway at its own address, held to its function's
//! egress mode, and metered by destination. "The internet" and "a VPC
//! resource" are network namespaces this test makes, joined to the host by
//! veth pairs: 198.18.1.2 (not in any `[[networks]]`: internet) and
//! 10.77.0.2 (in VPC `vpc-t`). Nothing leaves the machine.

use crate::harness::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A test host's server: HTTP `GET /bytes/N` answers N bytes on port 8080,
/// and UDP port 53 echoes each datagram (a stand-in for DNS).
pub const HOST_SERVER: &str = r#"
import http.server, socket, sys, threading
addr = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        n = int(self.path.rsplit("/", 1)[1])
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(b"x" * n)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((addr, 53))
def udp():
    while True:
        d, a = u.recvfrom(2048)
        u.sendto(d, a)
threading.Thread(target=udp, daemon=True).start()
s = http.server.ThreadingHTTPServer((addr, 8080), H)
print("ready", flush=True)
s.serve_forever()
"#;

/// The function: tries every target it is given and says what happened
/// (bytes received, or the errno and how long failing took).
pub const REACHER: &str = r#"
import http.server, json, os, socket, time
def tcp(host, port, n):
    t = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(f"GET /bytes/{n} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        got = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            got += c
        return {"ok": len(got.split(b"\r\n\r\n", 1)[1])}
    except OSError as e:
        return {"err": e.errno, "ms": (time.monotonic() - t) * 1000}
def udp(host, port):
    t = time.monotonic()
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.connect((host, port))
        s.send(b"query")
        return {"ok": len(s.recv(100))}
    except OSError as e:
        return {"err": e.errno, "ms": (time.monotonic() - t) * 1000}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        out = {}
        for name, t in req.items():
            out[name] = tcp(t[1], t[2], t[3]) if t[0] == "tcp" else udp(t[1], t[2])
        b = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
http.server.ThreadingHTTPServer((os.environ["FC_SERVER_HOST"], int(os.environ["FC_SERVER_PORT"])), H).serve_forever()
"#;

/// A network namespace standing for a remote host, with its server.
pub struct TestHost {
    ns: String,
    server: Child,
}

impl TestHost {
    /// `host_ip` on the host's end, `ip` (a /24 with it) inside.
    pub fn start(tag: &str, host_ip: &str, ip: &str, script: &std::path::Path) -> TestHost {
        let pid = std::process::id() % 100_000;
        let ns = format!("fngate-test-{tag}-{pid}");
        let link = format!("ft{tag}{pid}");
        let sh = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(&["netns", "add", &ns]);
        sh(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        sh(&["addr", "add", &format!("{host_ip}/24"), "dev", &link]);
        sh(&["link", "set", &link, "up"]);
        sh(&["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        sh(&["-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["-n", &ns, "link", "set", "lo", "up"]);
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-u"])
            .arg(script)
            .arg(ip)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        TestHost { ns, server }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        // The veth pair goes with the namespace.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn reach(r: &serde_json::Value, name: &str) -> Result<u64, (i64, f64)> {
    let v = &r[name];
    match v["ok"].as_u64() {
        Some(n) => Ok(n),
        None => Err((
            v["err"].as_i64().unwrap_or(-1),
            v["ms"].as_f64().unwrap_or(f64::MAX),
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_egress_mode_reaches_what_it_allows_and_is_refused_the_rest_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("host.py");
    std::fs::write(&server, HOST_SERVER).unwrap();
    let reacher = dir.path().join("reach.py");
    std::fs::write(&reacher, REACHER).unwrap();
    let _inet = TestHost::start("i", "198.18.1.1", "198.18.1.2", &server);
    let _vpc = TestHost::start("v", "10.77.0.1", "10.77.0.2", &server);
    let worker = start_worker_with(2048, &["--isolation", "namespaces"]);
    let worker_port = worker.url.rsplit(':').next().unwrap().to_string();
    let function = |name: &str, egress: &str| {
        format!(
            "[[functions]]\nname = \"{name}\"\ncommand = [\"python3\", \"{}\"]\n{egress}\n",
            reacher.display()
        )
    };
    let gw = Gateway::start(
        "",
        &(format!("[[workers]]\nurl = \"{}\"\n", worker.url)
            + "[[networks]]\nvpc_id = \"vpc-t\"\ncidrs = [\"10.77.0.0/24\"]\n"
            + "[[networks]]\nvpc_id = \"vpc-o\"\ncidrs = [\"10.78.0.0/24\"]\n"
            + &function("e-internet", "")
            + &function("e-vpc", "egress = \"vpc\"\nvpc_id = \"vpc-t\"")
            + &function("e-both", "egress = \"both\"\nvpc_id = \"vpc-t\"")
            + &function("e-none", "egress = \"none\"")),
    );
    let targets = serde_json::json!({
        "inet_tcp": ["tcp", "198.18.1.2", 8080, 1000],
        "inet_udp": ["udp", "198.18.1.2", 53],
        "vpc_tcp": ["tcp", "10.77.0.2", 8080, 1000],
        "vpc_udp": ["udp", "10.77.0.2", 53],
        // Another VPC's range: refused before any routing.
        "other_vpc": ["tcp", "10.78.0.2", 8080, 10],
        // The host itself (the worker's API on its address there).
        "host": ["tcp", "198.18.1.1", worker_port.parse::<u16>().unwrap(), 10],
        // A cloud metadata address.
        "metadata": ["tcp", "169.254.169.254", 80, 10],
    })
    .to_string();
    let mut c = gw.h1().await;
    let allowed = [
        ("e-internet", true, false),
        ("e-vpc", false, true),
        ("e-both", true, true),
        ("e-none", false, false),
    ];
    for (f, internet, vpc) in allowed {
        let r = c.invoke(f, targets.clone()).await;
        assert_eq!(r.status, 200, "{f}: {}\n{}", r.text(), worker.proc.log());
        let v = r.json();
        let check = |name: &str, allowed: bool, bytes: u64| match (allowed, reach(&v, name)) {
            (true, Ok(n)) => assert_eq!(n, bytes, "{f} {name}: {v}"),
            (false, Err((errno, ms))) => {
                // TCP: the reset refuses the connect; UDP: the kernel
                // refuses the send itself (the rule's verdict, EPERM).
                let want = match name.ends_with("udp") {
                    true => libc::EPERM,
                    false => libc::ECONNREFUSED,
                };
                assert_eq!(errno, i64::from(want), "{f} {name}: {v}");
                assert!(ms < 1000.0, "{f} {name} took {ms} ms to fail: {v}");
            }
            (allowed, got) => panic!("{f} {name}: allowed={allowed}, got {got:?}: {v}"),
        };
        check("inet_tcp", internet, 1000);
        check("inet_udp", internet, 5);
        check("vpc_tcp", vpc, 1000);
        check("vpc_udp", vpc, 5);
        check("other_vpc", false, 0);
        check("host", false, 0);
        check("metadata", false, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_bytes_are_metered_by_destination_network() {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("host.py");
    std::fs::write(&server, HOST_SERVER).unwrap();
    let reacher = dir.path().join("reach.py");
    std::fs::write(&reacher, REACHER).unwrap();
    let _inet = TestHost::start("j", "198.18.2.1", "198.18.2.2", &server);
    let _vpc = TestHost::start("w", "10.79.0.1", "10.79.0.2", &server);
    let worker = start_worker_with(1024, &["--isolation", "namespaces"]);
    let log = dir.path().join("usage.jsonl");
    let gw = Gateway::start(
        "",
        &(format!("[[workers]]\nurl = \"{}\"\n", worker.url)
            + &format!("[usage]\npath = \"{}\"\n", log.display())
            + "[[networks]]\nvpc_id = \"vpc-m\"\ncidrs = [\"10.79.0.0/24\"]\n"
            + &format!(
                "[[functions]]\nname = \"meter\"\ncommand = [\"python3\", \"{}\"]\negress = \"both\"\nvpc_id = \"vpc-m\"\nidle_timeout_s = 1\n",
                reacher.display()
            )),
    );
    const N: u64 = 300_000;
    const M: u64 = 120_000;
    let r = gw
        .h1()
        .await
        .invoke(
            "meter",
            serde_json::json!({
                "inet": ["tcp", "198.18.2.2", 8080, N],
                "vpc": ["tcp", "10.79.0.2", 8080, M],
            })
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["inet"]["ok"], N);
    assert_eq!(r.json()["vpc"]["ok"], M);
    let id = r.header("x-fc-instance-id").unwrap().to_string();
    // The worker's reading while the instance lives.
    let worker_addr: std::net::SocketAddr =
        worker.url.trim_start_matches("http://").parse().unwrap();
    let (status, body) = plain_get(worker_addr, &format!("/v1/instances/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bytes = |network: &str, direction: &str| egress_bytes(&info["egress"], network, direction);
    eprintln!("metered for {N} and {M} body bytes: {}", info["egress"]);
    // Counted as IP packets: the body, plus the answer's HTTP head, plus
    // 52 bytes of IP and TCP headers per segment of at most 1448 bytes
    // (3.6%), plus the handshake: within N..N + 5% + 4 KiB.
    for (network, n) in [("internet", N), ("vpc-m", M)] {
        let got = bytes(network, "in");
        assert!(
            got >= n && got <= n + n / 20 + 4096,
            "{network} in: {got} for {n}: {info}"
        );
        // What it sent: the request and the acknowledgements.
        let sent = bytes(network, "out");
        assert!(
            sent > 0 && sent < n / 10 + 4096,
            "{network} out: {sent}: {info}"
        );
    }
    let (_, metrics) = plain_get(worker_addr, "/metrics").await;
    let line = format!(
        "fngate_egress_bytes_total{{direction=\"in\",function=\"meter\",network=\"internet\"}} {}",
        bytes("internet", "in")
    );
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    // The gateway's view: the lifetime totals once the idle instance is released.
    let want = bytes("vpc-m", "in") as f64;
    gw.until("the instance's egress at release", Duration::from_secs(30), || async {
        gw.metric("fngate_instance_egress_bytes_total{direction=\"in\",function=\"meter\",network=\"vpc-m\"}")
            .await
            >= want
    })
    .await;
    // And the instance's lifetime record in the usage log, with the same
    // totals (the release answer's), by network and direction.
    gw.until(
        "the instance's usage record",
        Duration::from_secs(10),
        || async { !instance_records(&log).is_empty() },
    )
    .await;
    let records = instance_records(&log);
    assert_eq!(records.len(), 1, "{records:?}");
    let rec = &records[0];
    assert_eq!(rec["function"], "meter");
    assert_eq!(rec["instance_id"], id.as_str());
    assert_eq!(rec["reason"], "idle");
    assert!(rec["end_unix_ms"].as_u64() > rec["start_unix_ms"].as_u64());
    for (network, n) in [("internet", N), ("vpc-m", M)] {
        let got = egress_bytes(&rec["egress"], network, "in");
        assert!(
            got >= bytes(network, "in") && got <= n + n / 20 + 4096,
            "{rec}"
        );
    }
    // `usage summarize` sums instances' egress by function and network.
    let out = gateway_cli([
        "usage".as_ref(),
        "summarize".as_ref(),
        "--json".as_ref(),
        log.as_os_str(),
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let row = summary["egress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["function"] == "meter" && r["network"] == "internet")
        .cloned()
        .unwrap_or_else(|| panic!("no egress row: {summary}"));
    assert_eq!(row["instances"], 1, "{summary}");
    assert!(row["bytes_in"].as_u64().unwrap() >= N, "{summary}");
    assert_eq!(summary["skipped_lines"], 0, "{summary}");
    // Invocation records are apart: the one call, no egress field.
    let calls = usage_records(&log);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].get("egress").is_none());
}

/// The bytes of an `egress` list (`[{network, direction, bytes}]`) to one
/// network in one direction (0 when absent).
fn egress_bytes(list: &serde_json::Value, network: &str, direction: &str) -> u64 {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["network"] == network && e["direction"] == direction)
        .and_then(|e| e["bytes"].as_u64())
        .unwrap_or(0)
}

/// A worker killed before its cleanup leaves its instances' namespaces, its
/// host rules and its range's lock file; the next worker to start on the
/// host removes them (the range's lock is no longer held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_worker_left_is_removed_by_the_next_to_start() {
    let subnet = instance_subnet();
    let net: ipnet::Ipv4Net = subnet.parse().unwrap();
    let mut worker = start_worker_with(
        1024,
        &["--isolation", "namespaces", "--instance-subnet", &subnet],
    );
    let gw = Gateway::start(
        "",
        &(format!("[[workers]]\nurl = \"{}\"\n", worker.url) + &echo_fn("left", "")),
    );
    let r = gw.h1().await.invoke("left", "x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let namespaces = || -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| {
                        n.strip_prefix("fngate-")
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .is_some_and(|a| net.contains(&std::net::Ipv4Addr::from(a)))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let rules = || -> usize {
        let tag = format!("fngate:{net}");
        ["filter", "nat"]
            .iter()
            .map(|t| {
                let out = Command::new("iptables-save")
                    .args(["-t", t])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains(&tag))
                    .count()
            })
            .sum()
    };
    let lock = std::path::PathBuf::from(format!(
        "/run/fngate/subnet-{}-{}.lock",
        net.network(),
        net.prefix_len()
    ));
    // The instance's, and those its worker keeps ready (`--netns-pool`).
    assert!(!namespaces().is_empty());
    // Forwarding (2), masquerading, refusing connections to the host (2)
    // but DNS to the worker's forwarder (2).
    assert_eq!(rules(), 7);
    assert!(lock.exists());
    worker.proc.signal(libc::SIGKILL);
    assert_eq!(worker.proc.wait_exit(Duration::from_secs(10)), None);
    drop(gw);

    // Any worker's start sweeps (another test's may be the one that does).
    let _next = start_worker_with(1024, &["--isolation", "namespaces"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(namespaces().is_empty() && rules() == 0 && !lock.exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: namespaces {:?}, {} rules, lock file {}",
            namespaces(),
            rules(),
            lock.exists()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test host's resolver and HTTPS server: UDP port 53 answers A queries
/// for `svc.fngate.test` with the host's own address (NXDOMAIN for any other
/// name); port 8443 serves HTTPS with `leaf.pem` / `leaf.key` beside the script.
const RESOLVER_HOST: &str = r#"
import http.server, os, socket, ssl, sys, threading
addr = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
def answer(q):
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode().lower())
        i += 1 + q[i]
    qtype, question = q[i + 1:i + 3], q[12:i + 5]
    known = ".".join(labels) == "svc.fngate.test"
    a = known and qtype == b"\x00\x01"
    r = q[:2] + (b"\x81\x80" if known else b"\x81\x83") + b"\x00\x01" + (b"\x00\x01" if a else b"\x00\x00") + b"\x00\x00\x00\x00" + question
    if a:
        r += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(addr)
    return r
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((addr, 53))
def udp():
    while True:
        d, a = u.recvfrom(2048)
        u.sendto(answer(d), a)
threading.Thread(target=udp, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        b = b"hello from the test host"
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
s = http.server.ThreadingHTTPServer((addr, 8443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(os.path.join(here, "leaf.pem"), os.path.join(here, "leaf.key"))
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print("ready", flush=True)
s.serve_forever()
"#;

/// The function: resolves names and fetches over HTTPS, verified against
/// the CAs of its `/etc/ssl/certs`.
const LOOKER: &str = r#"
import http.server, json, os, socket, ssl, time, urllib.request
def look(name):
    t = time.monotonic()
    try:
        ip = socket.gethostbyname(name)
    except OSError as e:
        return {"err": str(e), "ms": (time.monotonic() - t) * 1000}
    try:
        body = urllib.request.urlopen(f"https://{name}:8443/", context=ssl.create_default_context(), timeout=5).read().decode()
    except Exception as e:
        body = "failed: " + repr(e)
    return {"ip": ip, "body": body}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        names = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        b = json.dumps({n: look(n) for n in names}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
http.server.HTTPServer((os.environ["FC_SERVER_HOST"], int(os.environ["FC_SERVER_PORT"])), H).serve_forever()
"#;

/// An isolated instance resolves names through its worker's forwarder
/// (here to a resolver on a test host) and speaks HTTPS verified against
/// the CAs of its `/etc/ssl/certs`; a function with egress `none` gets no
/// resolver, and is told so at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_instances_resolve_names_as_their_egress_allows() {
    let dir = tempfile::tempdir().unwrap();
    let host_dir = dir.path().join("host");
    std::fs::create_dir(&host_dir).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (ca_cert, issuer) = test_ca();
    let mut leaf = rcgen::CertificateParams::new(vec!["svc.fngate.test".to_string()]).unwrap();
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(1);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(host_dir.join("leaf.pem"), leaf_cert.pem()).unwrap();
    std::fs::write(host_dir.join("leaf.key"), leaf_key.serialize_pem()).unwrap();
    // The instances' /etc/ssl/certs: this test's CA only.
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("ca-certificates.crt"), ca_cert.pem()).unwrap();
    let script = host_dir.join("resolver.py");
    std::fs::write(&script, RESOLVER_HOST).unwrap();
    let _host = TestHost::start("d", "198.18.7.1", "198.18.7.2", &script);
    let looker = dir.path().join("look.py");
    std::fs::write(&looker, LOOKER).unwrap();
    let worker = start_worker_with(
        1024,
        &[
            "--isolation",
            "namespaces",
            "--dns",
            "198.18.7.2:53",
            "--ca-certs",
            certs.to_str().unwrap(),
        ],
    );
    let function = |name: &str, egress: &str| {
        format!(
            "[[functions]]\nname = \"{name}\"\ncommand = [\"python3\", \"{}\"]\n{egress}\n",
            looker.display()
        )
    };
    let gw = Gateway::start(
        "",
        &(format!("[[workers]]\nurl = \"{}\"\n", worker.url)
            + &function("look", "")
            + &function("look-none", "egress = \"none\"")),
    );
    let mut c = gw.h1().await;
    let names = r#"["svc.fngate.test", "nx.fngate.test"]"#;
    let r = c.invoke("look", names).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), worker.proc.log());
    let v = r.json();
    assert_eq!(v["svc.fngate.test"]["ip"], "198.18.7.2", "{v}");
    assert_eq!(
        v["svc.fngate.test"]["body"], "hello from the test host",
        "{v}"
    );
    assert!(v["nx.fngate.test"]["err"].is_string(), "{v}");
    // No resolver for egress `none`: refused at once, not by time-out.
    let r = c.invoke("look-none", names).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let svc = &v["svc.fngate.test"];
    assert!(svc["err"].is_string(), "{v}");
    assert!(svc["ms"].as_f64().unwrap() < 1000.0, "{v}");
}
