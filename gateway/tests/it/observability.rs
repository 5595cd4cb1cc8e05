//! Observability with the real tools: `promtool check metrics` on the
//! exposition, and a real Prometheus on loopback scraping a gateway in the
//! default setup (its embedded worker's families on its own `/metrics`),
//! against which every PromQL expression of every dashboard panel is
//! evaluated after the test has caused what each panel shows.
//! (`scripts/test.sh` installs Prometheus from Debian's packages.)

use crate::harness::*;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

fn promtool_check(exposition: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: run the tests with scripts/test.sh, which installs it");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && problems.trim().is_empty(),
        "promtool check metrics: {problems}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn query(prom: SocketAddr, expr: &str) -> serde_json::Value {
    let (status, body) = plain_get(
        prom,
        &format!("/api/v1/query?query={}", percent_encode(expr)),
    )
    .await;
    assert_eq!(status, 200, "{expr}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v["data"]["result"].clone()
}

pub fn values(result: &serde_json::Value) -> Vec<f64> {
    result
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        .collect()
}

/// Waits for two more scrapes of the gateway job, so every `rate()` window
/// holds the state reached so far.
pub async fn two_more_scrapes(gw: &Gateway, prom: SocketAddr) {
    let scrapes = || async {
        values(&query(prom, "count_over_time(up{job=\"gateway\"}[10m])").await)
            .first()
            .copied()
            .unwrap_or(0.0)
    };
    let seen = scrapes().await;
    gw.until("two more scrapes", Duration::from_secs(30), || async {
        scrapes().await >= seen + 2.0
    })
    .await;
}

/// A real Prometheus on loopback scraping `jobs` (name, targets) every second.
pub struct Prometheus {
    pub addr: SocketAddr,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(jobs: &[(&str, &[SocketAddr])]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = "global:\n  scrape_interval: 1s\nscrape_configs:\n".to_string();
        for (job, targets) in jobs {
            let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
            cfg += &format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            );
        }
        std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let proc = Proc::spawn(cmd);
        proc.wait_line(
            "Server is ready to receive web requests",
            Duration::from_secs(60),
        );
        Prometheus {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            _proc: proc,
            _dir: dir,
        }
    }
}

/// Every expression of every panel of dashboard `file` parses and returns
/// data, and every panel shows something above zero (`$function` stands
/// for `function`). Returns how many expressions were checked.
pub async fn check_dashboard(prom: SocketAddr, file: &str, function: &str) -> usize {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(file)).unwrap()).unwrap();
    let mut checked = 0;
    for panel in d["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        let mut best = f64::NEG_INFINITY;
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$function", function);
            let result = query(prom, &expr).await;
            let vs = values(&result);
            assert!(!vs.is_empty(), "{file} / {title}: no data for {expr}");
            best = vs
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(best, f64::max);
            checked += 1;
        }
        assert!(best > 0.0, "{file} / {title}: every series is zero");
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_query_real_prometheus_and_every_panel_has_data() {
    // The README's default setup: the gateway's embedded worker, whose
    // families (worker and egress panels) the gateway's own /metrics serves.
    // Isolated instances, so that the egress panels have traffic to show:
    // a function downloads from a test host standing for the internet.
    let egress_dir = tempfile::tempdir().unwrap();
    let host_py = egress_dir.path().join("host.py");
    std::fs::write(&host_py, crate::egress::HOST_SERVER).unwrap();
    let reach_py = egress_dir.path().join("reach.py");
    std::fs::write(&reach_py, crate::egress::REACHER).unwrap();
    let _internet_host = crate::egress::TestHost::start("o", "198.18.3.1", "198.18.3.2", &host_py);
    let sink = Sink::start("127.0.0.1:0".parse().unwrap()).await;
    // An HTTPS service standing for a cloud backend.
    let backend_dir = tempfile::tempdir().unwrap();
    let backend_ca = backend_dir.path().join("backend.pem");
    let backend = Sink::start_tls("127.0.0.1:0".parse().unwrap(), &backend_ca).await;
    let cfg = format!(
        "[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"127.0.0.2/32\"]\n{}{}{}{}{}{}",
        format_args!(
            "[[functions]]\nname = \"fetch\"\ncommand = [\"python3\", \"{}\"]\nidle_timeout_s = 1\n",
            reach_py.display()
        ),
        echo_fn(
            "echo",
            "min_instances = 1\ninstance_concurrency = 4\nvpc_bindings = [\"vpc-a\"]\ncaller_rate_limit = { per_second = 50.0, burst = 20 }"
        ),
        echo_fn("brief", "idle_timeout_s = 1"),
        "[[functions]]\nname = \"broken\"\ncommand = [\"sh\", \"-c\", \"exit 4\"]\n".to_string()
            + &echo_fn(
                "keyed",
                "auth_level = \"function\"\nfunction_keys = [{ name = \"default\", value = \"k\" }]"
            ),
        echo_fn(
            "later",
            &format!(
                "async_max_retries = 1\non_success = \"{0}\"\non_failure = \"{0}\"",
                sink.url()
            )
        ),
        format_args!(
            "[[functions]]\nname = \"remote\"\n[[functions.backends]]\nname = \"svc\"\nkind = \"http\"\nurl = \"{}\"\n",
            backend.url()
        ),
    );
    let gw = Gateway::start(
        &(format!(
            "embedded_worker_isolation = \"namespaces\"\nembedded_worker_subnet = \"{}\"\nembedded_worker_memory_mb = 2048\n",
            instance_subnet()
        ) + &format!("backend_ca_file = \"{}\"\n", backend_ca.display())
            + "async_retry_base_ms = 50\ntrusted_proxies = [\"127.0.0.1/32\"]\n[[gateway.proxy_listeners]]\nlisten = \"127.0.0.1:0\""),
        &cfg,
    );
    gw.until("readyz", Duration::from_secs(30), || async {
        gw.admin_get("/readyz").await.0 == 200
    })
    .await;

    // The exposition is clean by promtool's rules, the worker's families
    // included.
    let exposition = gw.admin_get("/metrics").await.1;
    promtool_check(&exposition);
    for family in [
        "fngate_sandbox_instances",
        "fngate_sandbox_memory_capacity_bytes",
    ] {
        assert!(
            exposition.contains(&format!("\n{family} ")),
            "{family}: {exposition}"
        );
    }

    // A real Prometheus on loopback, scraping the gateway every second.
    let prometheus = Prometheus::start(&[("gateway", &[gw.admin])]);
    let prom = prometheus.addr;
    // A baseline scrape before anything happens, so that
    // rate() sees the increase.
    gw.until(
        "Prometheus scraped the gateway",
        Duration::from_secs(30),
        || async { values(&query(prom, "sum(up)").await).first() == Some(&1.0) },
    )
    .await;

    // Cause what the panels show.
    let mut vpc = gw.client(ClientOpts::from("127.0.0.2")).await;
    let mut internet = gw.client(ClientOpts::from("127.0.0.1")).await;
    for i in 0..40 {
        let r = vpc.invoke("echo", vec![b'v'; 100 * i]).await;
        assert!(r.status == 200 || r.status == 429);
    }
    let h2 = gw
        .client(ClientOpts {
            h2: true,
            ..ClientOpts::from("127.0.0.2")
        })
        .await;
    let mut burst = Vec::new();
    for _ in 0..60 {
        let mut c = h2.clone();
        burst.push(tokio::spawn(
            async move { c.invoke("echo", "b").await.status },
        ));
    }
    let mut throttled = 0;
    for b in burst {
        throttled += usize::from(b.await.unwrap() == 429);
    }
    assert!(throttled > 0, "the caller rate limit fired");
    for _ in 0..5 {
        assert_eq!(internet.invoke("echo", "x").await.status, 403);
    }
    assert_eq!(internet.invoke("brief", "y").await.status, 200);
    let r = internet
        .invoke("fetch", r#"{"a": ["tcp", "198.18.3.2", 8080, 50000]}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["a"]["ok"], 50000, "{}", r.text());
    for _ in 0..3 {
        assert_eq!(
            internet.invoke("remote", "{\"to\":\"cloud\"}").await.status,
            200
        );
    }
    assert_eq!(internet.invoke("broken", "z").await.status, 412);
    // Let the echo caller's budget refill (the limiter is the subject here:
    // one cell every 20 ms), then crash an echo instance.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The other doors: echo through Lambda's and Azure's, and a call
    // refused for its missing function key.
    let door = |path: &str| {
        http::Request::post(format!("https://localhost{path}"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"d")))
            .unwrap()
    };
    let r = vpc
        .send(door("/2015-03-31/functions/echo/invocations"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(vpc.send(door("/api/echo")).await.unwrap().status, 200);
    assert_eq!(internet.send(door("/api/keyed")).await.unwrap().status, 401);
    let r = vpc.invoke("echo", "fngate:crash").await;
    assert_eq!(
        r.header("x-fc-error-type"),
        Some("UnhandledInvocationError"),
        "{}",
        r.text()
    );
    // Asynchronous invocations: successes (one of them echo's), a failure
    // after its retry, both reported to a destination, and one still
    // running at the end (the queue is not empty, its oldest task ages).
    let r = vpc.send(async_request("echo", "a1", None)).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    for payload in ["a2", "fngate:crash", "fngate:hold:/nonexistent/never"] {
        let r = internet
            .send(async_request("later", payload, None))
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
    }
    gw.until(
        "async results and destinations",
        Duration::from_secs(30),
        || async {
            gw.metric("fngate_async_results_total{function=\"later\",result=\"failed\"}")
                .await
                == 1.0
                && gw
                    .metric("fngate_async_results_total{function=\"echo\",result=\"succeeded\"}")
                    .await
                    == 1.0
                && sink.records().len() == 2
        },
    )
    .await;
    // A failed TLS handshake and a PROXY protocol rejection.
    for addr in [gw.https, gw.listener("proxy")] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = s.read(&mut [0u8; 64]).await;
    }
    gw.until(
        "the idle instance released",
        Duration::from_secs(15),
        || async {
            gw.metric("fngate_instance_releases_total{function=\"brief\",reason=\"idle\"}")
                .await
                == 1.0
        },
    )
    .await;
    // Prometheus has scraped the end state (and a few samples before it).
    gw.until("Prometheus caught up", Duration::from_secs(30), || async {
        let v = values(&query(prom, "sum(fngate_instance_releases_total{reason=\"idle\"})").await);
        let w = values(&query(prom, "sum(fngate_sandbox_instance_crashes_total)").await);
        v.first().is_some_and(|x| *x >= 1.0) && w.first().is_some_and(|x| *x >= 1.0)
    })
    .await;
    two_more_scrapes(&gw, prom).await;

    // Every expression of every panel parses and returns data; every panel
    // shows something above zero.
    let mut checked = 0;
    for file in ["fngate-overview.json", "fngate-function.json"] {
        checked += check_dashboard(prom, file, "echo").await;
    }
    assert!(checked >= 30, "checked {checked} expressions");
}
