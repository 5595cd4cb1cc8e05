//! Cloud backends: functions that run in Lambda, Function Compute, an Azure
//! HTTP trigger or any HTTPS service behind fngate. The clouds are played by
//! `gateway/tests/sdk/fake_cloud.py`, a local HTTPS server that recomputes
//! each signature with the clouds' own SDK code (botocore's SigV4 signer,
//! the FC 3.0 SDK's ACS3 signer) and answers in the clouds' shapes.

use crate::harness::*;
use crate::sdk::{isolated, venv_bin};
use bytes::Bytes;
use http_body_util::Full;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LAMBDA_KEY: (&str, &str) = ("AKIDFNGATE", "lambda-outbound-secret");
const FC_KEY: (&str, &str) = ("LTAIfngate", "fc-outbound-secret");
const AZURE_KEY: &str = "azure-function-key";

/// One fake cloud process on loopback.
struct FakeCloud {
    proc: Proc,
    addr: SocketAddr,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeCloud {
    fn start(mode: &str) -> FakeCloud {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (ca, key_path) = (dir.path().join("cloud.pem"), dir.path().join("key.pem"));
        std::fs::write(&ca, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let config = serde_json::json!({
            "lambda_keys": { LAMBDA_KEY.0: LAMBDA_KEY.1 },
            "fc_keys": { FC_KEY.0: FC_KEY.1 },
            "azure_key": AZURE_KEY,
            "mode": mode,
        });
        let mut cmd = isolated(venv_bin("python"), dir.path());
        cmd.arg("fake_cloud.py")
            .arg(&ca)
            .arg(&key_path)
            .arg(config.to_string());
        let proc = Proc::spawn(cmd);
        let line = proc.wait_line("listening", Duration::from_secs(60));
        let port: u16 = line.split_whitespace().last().unwrap().parse().unwrap();
        FakeCloud {
            proc,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            ca,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    async fn client(&self) -> Client {
        Client::connect(self.addr, &self.ca, ClientOpts::default()).await
    }

    async fn stats(&self) -> serde_json::Value {
        let req = http::Request::get("/_fake/stats")
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.client().await.send(req).await.unwrap().json()
    }

    async fn set_mode(&self, mode: &str) {
        let req = http::Request::post("/_fake/mode")
            .body(Full::new(Bytes::from(mode.to_string())))
            .unwrap();
        assert_eq!(self.client().await.send(req).await.unwrap().status, 204);
    }
}

/// The `[gateway]` lines that make the gateway trust `clouds`' certificates
/// (one bundle file in `dir`).
fn trust(dir: &Path, clouds: &[&FakeCloud], extra: &str) -> String {
    let bundle = dir.join("clouds.pem");
    let pem: String = clouds
        .iter()
        .map(|c| std::fs::read_to_string(&c.ca).unwrap())
        .collect();
    std::fs::write(&bundle, pem).unwrap();
    format!("backend_ca_file = \"{}\"\n{extra}", bundle.display())
}

fn credentials(lambda_secret: &str, fc_secret: &str) -> String {
    format!(
        "[[outbound_credentials]]\nname = \"aws\"\naccess_key_id = \"{}\"\nsecret = \"{lambda_secret}\"\n\
         [[outbound_credentials]]\nname = \"ali\"\naccess_key_id = \"{}\"\nsecret = \"{fc_secret}\"\n\
         [[outbound_credentials]]\nname = \"aws-wrong\"\naccess_key_id = \"{}\"\nsecret = \"not-the-secret\"\n\
         [[outbound_credentials]]\nname = \"ali-wrong\"\naccess_key_id = \"{}\"\nsecret = \"not-the-secret\"\n",
        LAMBDA_KEY.0, FC_KEY.0, LAMBDA_KEY.0, FC_KEY.0
    )
}

fn function(name: &str, extra: &str) -> String {
    format!("[[functions]]\nname = \"{name}\"\n{extra}\n")
}

fn backend(name: &str, kind: &str, extra: &str) -> String {
    format!("[[functions.backends]]\nname = \"{name}\"\nkind = \"{kind}\"\n{extra}\n")
}

fn lambda(name: &str, cloud: &FakeCloud, creds: &str, extra: &str) -> String {
    backend(
        name,
        "lambda",
        &format!(
            "region = \"us-east-1\"\nfunction = \"remote-{name}\"\nqualifier = \"prod\"\ncredentials = \"{creds}\"\nendpoint = \"{}\"\n{extra}",
            cloud.endpoint()
        ),
    )
}

fn fc(name: &str, cloud: &FakeCloud, creds: &str, extra: &str) -> String {
    backend(
        name,
        "fc",
        &format!(
            "account_id = \"123456\"\nregion = \"cn-hangzhou\"\nfunction = \"remote-{name}\"\ncredentials = \"{creds}\"\nendpoint = \"{}\"\n{extra}",
            cloud.endpoint()
        ),
    )
}

fn azure(name: &str, cloud: &FakeCloud, key: &str, extra: &str) -> String {
    backend(
        name,
        "azure",
        &format!(
            "url = \"https://app.azurewebsites.net\"\nfunction = \"remote-{name}\"\nfunction_key = \"{key}\"\nendpoint = \"{}\"\n{extra}",
            cloud.endpoint()
        ),
    )
}

fn http(name: &str, url: &str, extra: &str) -> String {
    backend(name, "http", &format!("url = \"{url}\"\n{extra}"))
}

/// A request at `door` (`fc`, `lambda`, `azure`) for `function`.
fn door_request(door: &str, function: &str, payload: &str) -> http::Request<Full<Bytes>> {
    let path = match door {
        "fc" => invoke_path(function),
        "lambda" => format!("/2015-03-31/functions/{function}/invocations"),
        "azure" => format!("/api/{function}"),
        _ => unreachable!(),
    };
    http::Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payload.to_string())))
        .unwrap()
}

/// The error code a door's error answer carries.
fn error_code(door: &str, r: &Resp) -> String {
    match door {
        "fc" => r.json()["Code"].as_str().unwrap_or_default().to_string(),
        "lambda" => r.header("x-amzn-errortype").unwrap_or_default().to_string(),
        "azure" => r.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        _ => unreachable!(),
    }
}

async fn backend_count(gw: &Gateway, function: &str, backend: &str, outcome: &str) -> f64 {
    gw.metric(&format!(
        "fngate_backend_requests_total{{backend=\"{backend}\",function=\"{function}\",outcome=\"{outcome}\"}}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_backed_functions_answer_at_every_door_with_verified_signatures() {
    let cloud = FakeCloud::start("ok");
    let dir = tempfile::tempdir().unwrap();
    let cfg = credentials(LAMBDA_KEY.1, FC_KEY.1)
        + &function("lam", &lambda("aws", &cloud, "aws", ""))
        + &function("ali", &fc("fc3", &cloud, "ali", ""))
        + &function("az", &azure("app", &cloud, AZURE_KEY, ""))
        + &function(
            "web",
            &http("svc", &format!("{}/hook", cloud.endpoint()), ""),
        )
        + &function("lam-bad", &lambda("aws", &cloud, "aws-wrong", ""))
        + &function("fc-bad", &fc("ali", &cloud, "ali-wrong", ""))
        // An ARN and a `$` qualifier: percent-encoded in the path and query,
        // and encoded once more in SigV4's canonical path.
        + &function(
            "arn",
            &backend(
                "aws",
                "lambda",
                &format!(
                    "region = \"us-east-1\"\nfunction = \"arn:aws:lambda:us-east-1:123456789012:function:remote-arn\"\nqualifier = \"$LATEST\"\ncredentials = \"aws\"\nendpoint = \"{}\"",
                    cloud.endpoint()
                ),
            ),
        )
        + &function("az-bad", &azure("app", &cloud, "wrong-key", ""))
        + &function(
            "lam-fail",
            &("async_max_retries = 1\n".to_string()
                + &backend(
                    "aws",
                    "lambda",
                    &format!(
                        "region = \"us-east-1\"\nfunction = \"fail\"\ncredentials = \"aws\"\nendpoint = \"{}\"",
                        cloud.endpoint()
                    ),
                )),
        );
    let gw = Gateway::start(
        &trust(dir.path(), &[&cloud], "async_retry_base_ms = 20\n"),
        &cfg,
    );
    let mut c = gw.h2().await;

    let mut good = 0;
    for door in ["fc", "lambda", "azure"] {
        for (f, route, remote) in [
            ("lam", "lambda", "remote-aws"),
            ("ali", "fc", "remote-fc3"),
            ("az", "azure", "remote-app"),
            ("web", "http", "hook"),
        ] {
            let payload = format!("{{\"door\":\"{door}\",\"f\":\"{f}\"}}");
            let r = c.send(door_request(door, f, &payload)).await.unwrap();
            assert_eq!(r.status, 200, "{door} → {f}: {}", r.text());
            let v = r.json();
            assert_eq!(v["cloud"], route, "{door} → {f}: {v}");
            assert_eq!(v["function"], remote, "{door} → {f}: {v}");
            assert_eq!(v["payload"], payload, "{door} → {f}: {v}");
            good += 1;
            if route == "lambda" {
                assert_eq!(v["qualifier"]["Qualifier"][0], "prod");
            }
        }
    }
    let r = c.send(door_request("lambda", "arn", "{}")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["function"],
        "arn:aws:lambda:us-east-1:123456789012:function:remote-arn"
    );
    assert_eq!(v["qualifier"]["Qualifier"][0], "$LATEST");
    good += 1;

    // The fake verified every signature and key with the clouds' code.
    let s = cloud.stats().await;
    assert_eq!(s["verified"], good, "{s}");
    assert_eq!(s["rejected"], 0, "{s}");

    // A wrong outbound secret or key: a 502 in the caller's dialect, naming
    // the backend and the cloud's code, and nothing of the secret or address.
    for door in ["fc", "lambda", "azure"] {
        for (f, cloud_code) in [
            ("lam-bad", "403 InvalidSignatureException"),
            ("fc-bad", "403 SignatureNotMatch"),
            ("az-bad", "401"),
        ] {
            let r = c.send(door_request(door, f, "{}")).await.unwrap();
            assert_eq!(
                r.status,
                502,
                "{door} → {f}: {}\ncloud log:\n{}\ngateway log:\n{}",
                r.text(),
                cloud.proc.log(),
                gw.proc.log()
            );
            let want = match door {
                "fc" => "BadResponse",
                "lambda" => "BadGatewayException",
                _ => "BadGateway",
            };
            assert_eq!(error_code(door, &r), want, "{door} → {f}");
            let text = r.text();
            assert!(text.contains(cloud_code), "{door} → {f}: {text}");
            assert!(
                ["'aws'", "'ali'", "'app'"].iter().any(|b| text.contains(b)),
                "{text}"
            );
            for secret in [
                "not-the-secret",
                "wrong-key",
                "127.0.0.1",
                LAMBDA_KEY.1,
                FC_KEY.1,
            ] {
                assert!(
                    !text.contains(secret),
                    "{door} → {f} leaks {secret}: {text}"
                );
            }
        }
    }
    assert_eq!(cloud.stats().await["rejected"], 9);
    assert_eq!(backend_count(&gw, "lam-bad", "aws", "error").await, 3.0);

    // The clouds' own clients at the doors (boto3, the FC SDK).
    crate::sdk::run_script(&gw, "backends_sdk.py").await;

    // The cloud function's own failure is the function's error at each door.
    let r = c
        .send(door_request("lambda", "lam-fail", "{}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-amz-function-error").is_some(),
        "{:?}",
        r.headers
    );
    let r = c.send(door_request("fc", "lam-fail", "{}")).await.unwrap();
    assert!(r.header("x-fc-error-type").is_some(), "{:?}", r.headers);
    let r = c
        .send(door_request("azure", "lam-fail", "{}"))
        .await
        .unwrap();
    assert_eq!(r.status, 500);
    assert_eq!(
        backend_count(&gw, "lam-fail", "aws", "function_error").await,
        4.0
    );

    // Asynchronous invocations run on the backend too.
    let before = cloud.stats().await["by_route"]["fc"].as_u64().unwrap();
    let r = c
        .send(async_request("ali", "async-payload", None))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    gw.until(
        "the async task ran on the FC backend",
        Duration::from_secs(30),
        || async { cloud.stats().await["by_route"]["fc"].as_u64().unwrap() > before },
    )
    .await;

    // A cloud function's failure is a function error: counted as one, and
    // an asynchronous call is retried as one.
    assert_eq!(
        gw.metric("fngate_invocations_total{api=\"lambda\",function=\"lam-fail\",network=\"internet\",outcome=\"function_error\"}").await,
        2.0
    );
    let r = c.send(async_request("lam-fail", "{}", None)).await.unwrap();
    assert_eq!(r.status, 202);
    gw.until(
        "the failing task retried, then failed",
        Duration::from_secs(30),
        || async {
            gw.metric("fngate_async_results_total{function=\"lam-fail\",result=\"failed\"}")
                .await
                == 1.0
        },
    )
    .await;
    assert_eq!(
        gw.metric("fngate_async_retries_total{function=\"lam-fail\",reason=\"function_error\"}")
            .await,
        1.0
    );

    // The backends as /admin/functions shows them.
    let (_, body) = gw.admin_get("/admin/functions").await;
    let fns: serde_json::Value = serde_json::from_str(&body).unwrap();
    let lam = fns
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "lam")
        .unwrap();
    assert_eq!(lam["backends"][0]["kind"], "lambda");
    assert_eq!(lam["backends"][0]["ejected"], false);
    assert!(!body.contains(LAMBDA_KEY.1));
}

/// 1,000 calls over a 90/10 split: the 10% backend's count is binomial
/// (n = 1000, p = 0.1: mean 100, sd 9.5); the bounds [60, 140] are over
/// 4 sd wide on each side (a false failure about once in 30,000 runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_lands_within_its_binomial_bounds() {
    let cloud = FakeCloud::start("ok");
    let dir = tempfile::tempdir().unwrap();
    let e = cloud.endpoint();
    let cfg = function(
        "split",
        &(http("big", &format!("{e}/big"), "weight = 90")
            + &http("small", &format!("{e}/small"), "weight = 10")),
    );
    let gw = Gateway::start(&trust(dir.path(), &[&cloud], ""), &cfg);
    let c = gw.h2().await;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut small = 0;
            for i in 0..250 {
                let r = c.invoke("split", format!("{t}-{i}")).await;
                assert_eq!(r.status, 200, "{}", r.text());
                if r.json()["function"] == "small" {
                    small += 1;
                }
            }
            small
        }));
    }
    let mut small = 0;
    for t in tasks {
        small += t.await.unwrap();
    }
    assert!(
        (60..=140).contains(&small),
        "the 10% backend took {small} of 1000"
    );
    assert_eq!(
        backend_count(&gw, "split", "small", "success").await,
        small as f64
    );
    assert_eq!(
        backend_count(&gw, "split", "big", "success").await,
        (1000 - small) as f64
    );
}

/// An address on loopback where nothing listens.
fn refusing_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("https://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_only_when_the_primary_cannot_have_run_the_call() {
    let fallback = FakeCloud::start("ok");
    let throttling = FakeCloud::start("throttle");
    let slow = FakeCloud::start("slow");
    // Its certificate is not in the gateway's trust bundle.
    let untrusted = FakeCloud::start("ok");
    let dir = tempfile::tempdir().unwrap();
    let fb = fc("fallback", &fallback, "ali", "weight = 0\nfallback = 1");
    let cfg = credentials(LAMBDA_KEY.1, FC_KEY.1)
        + &function(
            "refused",
            &(http("primary", &format!("{}/x", refusing_endpoint()), "") + &fb),
        )
        + &function(
            "throttled",
            &(lambda("primary", &throttling, "aws", "") + &fb),
        )
        + &function(
            "slow",
            &(lambda("primary", &slow, "aws", "timeout_ms = 1000") + &fb),
        )
        + &function(
            "untrusted",
            &(http("primary", &format!("{}/u", untrusted.endpoint()), "") + &fb),
        );
    let gw = Gateway::start(
        &trust(
            dir.path(),
            &[&fallback, &throttling, &slow],
            "backend_eject_after_failures = 5\nbackend_eject_ms = 600000\n",
        ),
        &cfg,
    );
    let mut c = gw.h1().await;

    // Refused connections: every call is served by the fallback.
    for i in 0..12 {
        let r = c.invoke("refused", format!("r{i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["function"], "remote-fallback");
    }
    // Five failures eject the primary: the later calls go straight to the fallback.
    assert_eq!(
        backend_count(&gw, "refused", "primary", "connect_error").await,
        5.0
    );
    assert_eq!(
        gw.metric("fngate_backend_ejected{backend=\"primary\",function=\"refused\"}")
            .await,
        1.0
    );
    assert_eq!(
        backend_count(&gw, "refused", "fallback", "success").await,
        12.0
    );

    // A TLS failure (a certificate the gateway does not trust): nothing
    // reached the primary, the fallback serves.
    for i in 0..2 {
        let r = c.invoke("untrusted", format!("u{i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["function"], "remote-fallback");
    }
    assert_eq!(
        backend_count(&gw, "untrusted", "primary", "connect_error").await,
        2.0
    );
    assert_eq!(untrusted.stats().await["requests"], 0);

    // A throttling primary: served by the fallback.
    for i in 0..3 {
        let r = c.invoke("throttled", format!("t{i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["function"], "remote-fallback");
    }
    assert_eq!(
        backend_count(&gw, "throttled", "primary", "throttled").await,
        3.0
    );
    assert_eq!(throttling.stats().await["verified"], 3);

    // A primary that took the payload and timed out: not retried; the
    // caller gets the timeout in its dialect.
    let served_before = fallback.stats().await["requests"].as_u64().unwrap();
    let r = c.invoke("slow", "may-have-run").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["Code"], "GatewayTimeout");
    let r = c.send(door_request("lambda", "slow", "{}")).await.unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("GatewayTimeoutException")
    );
    assert_eq!(slow.stats().await["requests"], 2);
    assert_eq!(
        fallback.stats().await["requests"].as_u64().unwrap(),
        served_before,
        "a call that may have run was sent again"
    );
    assert_eq!(backend_count(&gw, "slow", "primary", "timeout").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_then_probed_back_in() {
    let primary = FakeCloud::start("throttle");
    let fallback = FakeCloud::start("ok");
    let dir = tempfile::tempdir().unwrap();
    let cfg = function(
        "f",
        &(http("primary", &format!("{}/p", primary.endpoint()), "")
            + &http(
                "fallback",
                &format!("{}/fb", fallback.endpoint()),
                "weight = 0\nfallback = 1",
            )),
    );
    let gw = Gateway::start(
        &trust(
            dir.path(),
            &[&primary, &fallback],
            "backend_eject_after_failures = 3\nbackend_eject_ms = 300\n",
        ),
        &cfg,
    );
    let mut c = gw.h1().await;
    for i in 0..3 {
        let r = c.invoke("f", format!("{i}")).await;
        assert_eq!(r.json()["function"], "fb");
    }
    let ejected = "fngate_backend_ejected{backend=\"primary\",function=\"f\"}";
    assert_eq!(gw.metric(ejected).await, 1.0);
    assert_eq!(
        gw.metric("fngate_backend_ejections_total{backend=\"primary\",function=\"f\"}")
            .await,
        1.0
    );
    let (_, admin) = gw.admin_get("/admin/functions").await;
    assert!(admin.contains("\"ejected\":true"), "{admin}");

    // The primary recovers; after the cool-down one call probes it and
    // brings it back.
    primary.set_mode("ok").await;
    let mut served_by_primary = false;
    for i in 0..200 {
        let r = c.invoke("f", format!("probe-{i}")).await;
        assert_eq!(r.status, 200);
        if r.json()["function"] == "p" {
            served_by_primary = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served_by_primary, "the primary never came back");
    assert_eq!(gw.metric(ejected).await, 0.0);
    assert!(backend_count(&gw, "f", "primary", "success").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_records_the_caller_leg_and_every_backend_leg() {
    let cloud = FakeCloud::start("ok");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("usage.jsonl");
    let cfg = format!(
        "[usage]\npath = \"{}\"\nsync_interval_ms = 20\n\
         [[networks]]\nvpc_id = \"vpc-callers\"\ncidrs = [\"127.0.0.2/32\"]\n\
         [[networks]]\nvpc_id = \"vpc-cloud\"\ncidrs = [\"10.250.0.0/16\"]\n{}{}",
        log.display(),
        function(
            "metered",
            &http(
                "svc",
                &format!("{}/m", cloud.endpoint()),
                "network = \"vpc-cloud\""
            )
        ),
        function(
            "over",
            &(http("down", &format!("{}/x", refusing_endpoint()), "")
                + &http(
                    "up",
                    &format!("{}/up", cloud.endpoint()),
                    "weight = 0\nfallback = 1"
                ))
        ),
    );
    let gw = Gateway::start(&trust(dir.path(), &[&cloud], ""), &cfg);
    let mut c = gw.client(ClientOpts::from("127.0.0.2")).await;
    let payload = "x".repeat(3000);
    let r = c.invoke("metered", payload.clone()).await;
    assert_eq!(r.status, 200);
    let answer_len = r.body.len() as u64;
    let r = c.invoke("over", "tiny").await;
    assert_eq!(r.status, 200);
    let over_len = r.body.len() as u64;

    let mut records = Vec::new();
    gw.until("two usage records", Duration::from_secs(10), || {
        records = if log.exists() {
            usage_records(&log)
        } else {
            Vec::new()
        };
        let n = records.len();
        async move { n >= 2 }
    })
    .await;
    let m = records.iter().find(|r| r["function"] == "metered").unwrap();
    assert_eq!(m["network"], "vpc");
    assert_eq!(m["vpc_id"], "vpc-callers");
    assert_eq!(m["bytes_in"], 3000);
    assert_eq!(m["bytes_out"], answer_len);
    let legs = m["backend_legs"].as_array().unwrap();
    assert_eq!(legs.len(), 1, "{m}");
    assert_eq!(legs[0]["backend"], "svc");
    assert_eq!(legs[0]["kind"], "http");
    assert_eq!(legs[0]["network"], "vpc");
    assert_eq!(legs[0]["vpc_id"], "vpc-cloud");
    assert_eq!(legs[0]["bytes_out"], 3000);
    // The HTTP backend's answer is passed through as it is.
    assert_eq!(legs[0]["bytes_in"], answer_len);
    assert_eq!(legs[0]["outcome"], "success");

    let o = records.iter().find(|r| r["function"] == "over").unwrap();
    let legs = o["backend_legs"].as_array().unwrap();
    assert_eq!(legs.len(), 2, "{o}");
    assert_eq!(legs[0]["backend"], "down");
    assert_eq!(legs[0]["outcome"], "connect_error");
    assert_eq!(legs[0]["bytes_out"], 0);
    assert_eq!(legs[0]["network"], "internet");
    assert_eq!(legs[1]["backend"], "up");
    assert_eq!(legs[1]["bytes_out"], 4);
    assert_eq!(legs[1]["bytes_in"], over_len);

    // The counters agree with the records.
    let bytes = |b: &str, net: &str, dir: &str| {
        format!(
            "fngate_backend_traffic_bytes_total{{backend=\"{b}\",direction=\"{dir}\",function=\"metered\",network=\"{net}\"}}"
        )
    };
    assert_eq!(gw.metric(&bytes("svc", "vpc-cloud", "out")).await, 3000.0);
    assert_eq!(
        gw.metric(&bytes("svc", "vpc-cloud", "in")).await,
        answer_len as f64
    );
    // The fake cloud received exactly the payload bytes.
    assert_eq!(cloud.stats().await["bytes_in"], 3004);
}

#[test]
fn backend_configuration_errors_name_the_key() {
    let base = "[[functions]]\nname = \"f\"\n[[functions.backends]]\nname = \"b\"\n";
    assert_config_error(
        &format!("{base}kind = \"lambda\"\nfunction = \"x\"\ncredentials = \"c\"\n"),
        "functions[0].backends[0].region",
    );
    assert_config_error(
        &format!(
            "{base}kind = \"lambda\"\nregion = \"us-east-1\"\nfunction = \"x\"\ncredentials = \"nope\"\n"
        ),
        "functions[0].backends[0].credentials",
    );
    assert_config_error(
        &format!("{base}kind = \"http\"\nurl = \"ftp://x\"\n"),
        "functions[0].backends[0].url",
    );
    assert_config_error(
        &format!("{base}kind = \"http\"\nurl = \"https://x/\"\nweight = 0\n"),
        "functions[0].backends[0].weight",
    );
    assert_config_error(
        &format!("{base}kind = \"sandbox\"\n"),
        "functions[0].command",
    );
    assert_config_error(
        &format!("{base}kind = \"http\"\nurl = \"https://x/\"\nnetwork = \"vpc-nowhere\"\n"),
        "functions[0].backends[0].network",
    );
}

/// A function split between fngate's own sandbox and a cloud; a sandbox
/// that cannot place the call (here: its instance cannot start) falls over
/// to the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_and_cloud_share_a_function() {
    let cloud = FakeCloud::start("ok");
    let dir = tempfile::tempdir().unwrap();
    let e = cloud.endpoint();
    let cfg = echo_fn(
        "mixed",
        &(backend("local", "sandbox", "weight = 1")
            + &http("cloud", &format!("{e}/mixed"), "weight = 1")),
    ) + "[[functions]]\nname = \"broken\"\ncommand = [\"/nonexistent/fngate-function\"]\n"
        + &backend("local", "sandbox", "")
        + &http("cloud", &format!("{e}/rescue"), "weight = 0\nfallback = 1");
    let gw = Gateway::start(&trust(dir.path(), &[&cloud], ""), &cfg);
    let mut c = gw.h1().await;
    let (mut local, mut remote) = (0, 0);
    for i in 0..40 {
        let r = c.invoke("mixed", format!("m{i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        match r.header("x-fc-instance-id") {
            Some("backend:cloud") => remote += 1,
            Some(_) => {
                assert_eq!(r.text(), format!("m{i}"), "the echo function's answer");
                local += 1
            }
            None => panic!("no instance id: {:?}", r.headers),
        }
    }
    // Each side's share is Binomial(40, 0.5): both empty has odds 2^-39.
    assert!(local > 0 && remote > 0, "local {local}, cloud {remote}");
    assert_eq!(
        backend_count(&gw, "mixed", "cloud", "success").await,
        remote as f64
    );

    let r = c.invoke("broken", "rescued").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["function"], "rescue");
}

/// An HTTPS backend that offers HTTP/2 by ALPN: it answers with the HTTP
/// version each request came in, and counts its connections.
struct H2Backend {
    addr: SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl H2Backend {
    async fn start(ca: &Path) -> H2Backend {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let tls = test_tls_acceptor(ca, &[b"h2", b"http/1.1"]);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let Ok(s) = tls.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let version = format!("{:?}", req.version());
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(version),
                            )))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        H2Backend {
            addr,
            connections,
            task,
        }
    }
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_offers_http2_gets_one_multiplexed_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("h2.pem");
    let backend = H2Backend::start(&ca).await;
    let cfg = function(
        "h2fn",
        &http("svc", &format!("https://{}/fn", backend.addr), ""),
    );
    let gw = Gateway::start(&format!("backend_ca_file = \"{}\"\n", ca.display()), &cfg);
    let c = gw.h2().await;
    assert_eq!(c.clone().invoke("h2fn", "warm").await.text(), "HTTP/2.0");
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        calls.push(tokio::spawn(async move {
            c.invoke("h2fn", format!("{i}")).await.text()
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), "HTTP/2.0");
    }
    // One client connection lives on one shard: one backend connection
    // carried all 21 calls.
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// Stages 1-7 are the function's, whatever its backend: ingress policy and
/// rate limits refuse before a byte goes to the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_and_limits_protect_a_cloud_backed_function() {
    let cloud = FakeCloud::start("ok");
    let dir = tempfile::tempdir().unwrap();
    let e = cloud.endpoint();
    let cfg = "[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"127.0.0.2/32\"]\n".to_string()
        + &function(
            "guarded",
            &("vpc_bindings = [\"vpc-a\"]\n".to_string() + &http("svc", &format!("{e}/g"), "")),
        )
        + &function(
            "limited",
            &("rate_limit = { per_second = 0.01, burst = 2 }\n".to_string()
                + &http("svc", &format!("{e}/l"), "")),
        );
    let gw = Gateway::start(&trust(dir.path(), &[&cloud], ""), &cfg);
    let mut internet = gw.h1().await;
    let r = internet.invoke("guarded", "x").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["Code"], "AccessDenied");
    let mut vpc = gw.client(ClientOpts::from("127.0.0.2")).await;
    assert_eq!(vpc.invoke("guarded", "y").await.status, 200);
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(internet.invoke("limited", format!("{i}")).await.status);
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    // The cloud saw the admitted calls only.
    assert_eq!(cloud.stats().await["requests"], 3);
}

/// A backend's `max_concurrency` (a cloud's reserved concurrency): a call
/// beyond it goes to the fallback, unsent, and the backend is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_its_max_concurrency_sends_calls_to_the_fallback() {
    let slow = FakeCloud::start("slow");
    let fallback = FakeCloud::start("ok");
    let dir = tempfile::tempdir().unwrap();
    let cfg = function(
        "capped",
        &(http(
            "primary",
            &format!("{}/p", slow.endpoint()),
            "max_concurrency = 1",
        ) + &http(
            "fallback",
            &format!("{}/fb", fallback.endpoint()),
            "weight = 0\nfallback = 1",
        )),
    );
    let gw = Gateway::start(&trust(dir.path(), &[&slow, &fallback], ""), &cfg);
    let c = gw.h2().await;
    let mut first = c.clone();
    let first = tokio::spawn(async move { first.invoke("capped", "first").await });
    gw.until(
        "the first call reached the primary",
        Duration::from_secs(10),
        || async { slow.stats().await["requests"] == 1 },
    )
    .await;
    let (_, admin) = gw.admin_get("/admin/functions").await;
    assert!(admin.contains("\"in_flight\":1"), "{admin}");
    let r = c.clone().invoke("capped", "second").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["function"], "fb");
    assert_eq!(
        backend_count(&gw, "capped", "primary", "limited").await,
        1.0
    );
    let r = first.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["function"], "p");
    assert_eq!(
        gw.metric("fngate_backend_ejected{backend=\"primary\",function=\"capped\"}")
            .await,
        0.0
    );
}

/// A backend whose certificate is a CA's (what `openssl req -x509` makes by
/// default) is refused by webpki as `CaUsedAsEndEntity`. The caller gets a
/// 5xx that names no cause; the log says it once, at warn, with the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refused_for_its_certificate_is_logged_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca-as-leaf.pem");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let tls = tls_acceptor_with(params, &ca, &[]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let _ = tls.accept(tcp).await;
        }
    });
    let cfg = function(
        "pinned",
        &http("private", &format!("https://{addr}/fn"), ""),
    );
    let gw = Gateway::start(&format!("backend_ca_file = \"{}\"\n", ca.display()), &cfg);
    let mut c = gw.h1().await;
    let r = c.invoke("pinned", "x").await;
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    assert!(!r.text().contains("CaUsedAsEndEntity"), "{}", r.text());
    let id = r.header("x-fc-request-id").unwrap().to_string();
    // The gateway wrote the line before it answered; the test's reader of
    // its stderr may not have read it yet.
    gw.proc.wait_line(&id, Duration::from_secs(10));
    let log = gw.proc.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    assert!(lines[0].contains("CaUsedAsEndEntity"), "{}", lines[0]);
    server.abort();
}
