//! The clouds' real clients against a running gateway over TLS: boto3 and
//! the AWS CLI at the Lambda door, the Function Compute 3.0 SDK at the FC
//! door, unsigned and with `auth = "signature"`. The clients run in the
//! virtual environment `scripts/test.sh` creates (`target/sdk-venv`, from
//! `gateway/tests/sdk/requirements.txt`); their checks are the Python scripts
//! in `gateway/tests/sdk/`, and this side checks what the gateway counted.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub fn venv_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("FNGATE_SDK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/sdk-venv"));
    let p = dir.join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with scripts/test.sh, which creates the SDK virtual environment",
        p.display()
    );
    p
}

/// A command that sees no AWS or Alibaba Cloud settings of this machine and
/// talks to nothing but the gateway.
pub fn isolated(program: PathBuf, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_")
            || k.starts_with("ALIBABA_CLOUD_")
            || k.to_lowercase().ends_with("_proxy")
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("NO_PROXY", "*")
        .current_dir(repo().join("gateway/tests/sdk"));
    cmd
}

fn endpoint(gw: &Gateway) -> String {
    format!("https://127.0.0.1:{}", gw.https.port())
}

/// Runs one of the SDK scripts against `gw`; it must end with "all ok".
pub async fn run_script(gw: &Gateway, script: &str) -> String {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = isolated(venv_bin("python"), home.path());
    cmd.arg(script).arg(endpoint(gw)).arg(&gw.ca);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.trim_end().ends_with("all ok"),
        "{script} failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.proc.log()
    );
    stdout
}

fn functions() -> String {
    echo_fn("echo", "instance_concurrency = 4")
        + &echo_fn("private", "vpc_bindings = [\"vpc-a\"]")
        + &echo_fn("limited", "rate_limit = { per_second = 0.01, burst = 1 }")
        + "[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"10.9.0.0/16\"]\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_at_the_lambda_door() {
    let gw = Gateway::start("", &functions());
    run_script(&gw, "lambda_boto3.py").await;
    let m = |outcome: &str| {
        format!(
            "fngate_invocations_total{{api=\"lambda\",function=\"echo\",network=\"internet\",outcome=\"{outcome}\"}}"
        )
    };
    // One attempt per call (the clients do not retry): exact counts.
    assert_eq!(gw.metric(&m("dry_run")).await, 1.0);
    assert_eq!(gw.metric(&m("accepted")).await, 1.0);
    assert_eq!(gw.metric(&m("function_error")).await, 1.0);
    assert_eq!(
        gw.metric("fngate_throttles_total{function=\"limited\",limit=\"function_rate\"}")
            .await,
        1.0
    );
    // The Event invocation ran.
    gw.until("the Event invocation to run", Duration::from_secs(20), || async {
        gw.metric("fngate_invocations_total{api=\"lambda\",function=\"echo\",network=\"internal\",outcome=\"success\"}")
            .await
            == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_writes_the_payload_to_its_outfile() {
    let gw = Gateway::start("", &functions());
    let home = tempfile::tempdir().unwrap();
    let outfile = home.path().join("out.json");
    let mut cmd = isolated(venv_bin("aws"), home.path());
    cmd.args([
        "lambda",
        "invoke",
        "--endpoint-url",
        &endpoint(&gw),
        "--ca-bundle",
    ])
    .arg(&gw.ca)
    .args([
        "--region",
        "us-east-1",
        "--function-name",
        "echo",
        "--payload",
        r#"{"from":"awscli"}"#,
    ])
    .arg(&outfile)
    .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
    .env("AWS_SECRET_ACCESS_KEY", "not-checked")
    .env("AWS_MAX_ATTEMPTS", "1");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["StatusCode"], 200);
    assert_eq!(answer["ExecutedVersion"], "$LATEST");
    assert_eq!(
        std::fs::read_to_string(&outfile).unwrap(),
        r#"{"from":"awscli"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fc_sdk_at_the_fc_door() {
    let gw = Gateway::start("", &functions());
    run_script(&gw, "fc_sdk.py").await;
    let m = |outcome: &str| {
        format!(
            "fngate_invocations_total{{api=\"fc\",function=\"echo\",network=\"internet\",outcome=\"{outcome}\"}}"
        )
    };
    assert_eq!(gw.metric(&m("success")).await, 2.0);
    // The Async call, and the task API's three submissions (one a known id).
    assert_eq!(gw.metric(&m("accepted")).await, 4.0);
    assert!(gw.metric(&m("task_api")).await >= 4.0);
    assert_eq!(gw.metric(&m("function_error")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_at_both_doors_and_one_budget_per_access_key() {
    let dir = tempfile::tempdir().unwrap();
    let beta = dir.path().join("beta.secret");
    std::fs::write(&beta, "beta-secret\n").unwrap();
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("usage.jsonl");
    let cfg = format!(
        "[[credentials]]\naccess_key_id = \"AKIDALPHA\"\nsecret = \"alpha-secret\"\n\
         [[credentials]]\naccess_key_id = \"LTAIBETA\"\nsecret_file = \"{}\"\n\
         [usage]\npath = \"{}\"\nsync_interval_ms = 50\n",
        beta.display(),
        log.display()
    ) + &echo_fn("echo", "instance_concurrency = 4")
        + &echo_fn(
            "percaller",
            "caller_rate_limit = { per_second = 0.01, burst = 1 }",
        );
    let mut gw = Gateway::start("auth = \"signature\"\ncaller_key = \"access_key\"", &cfg);
    run_script(&gw, "signed.py").await;

    // Refusals are counted by door and reason; no instance was needed for them.
    let failures = |api: &str, reason: &str| {
        format!("fngate_auth_failures_total{{api=\"{api}\",function=\"echo\",reason=\"{reason}\"}}")
    };
    for (api, reason, n) in [
        ("lambda", "bad_signature", 2.0), // wrong secret, tampered body
        ("lambda", "unknown_key", 1.0),
        ("lambda", "expired", 1.0),
        ("lambda", "missing", 1.0),
        ("fc", "bad_signature", 2.0), // wrong secret at invocations and at the task API
        ("fc", "payload_mismatch", 1.0), // not the tampered call past its budget: throttled first
        ("fc", "unknown_key", 1.0),
        ("fc", "expired", 1.0),
        ("fc", "missing", 1.0),
    ] {
        assert_eq!(gw.metric(&failures(api, reason)).await, n, "{api} {reason}");
    }
    // The Azure door demands a key of a function that demands signatures;
    // none is configured, so it refuses.
    let mut c = gw.h1().await;
    let r = c
        .send(
            http::Request::post("https://localhost/api/echo")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);

    // The usage log names the verified key of each signed call.
    gw.proc.signal(libc::SIGTERM);
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(30)), Some(0));
    let records = usage_records(&log);
    let signed_ok = |api: &str, key: &str| {
        records
            .iter()
            .filter(|r| r["api"] == api && r["access_key_id"] == key && r["outcome"] == "success")
            .count()
    };
    assert_eq!(signed_ok("lambda", "AKIDALPHA"), 3); // echo twice, percaller once
    assert_eq!(signed_ok("fc", "LTAIBETA"), 2); // echo, percaller
    assert!(
        records
            .iter()
            .filter(|r| r["outcome"] == "unauthenticated")
            .all(|r| r.get("access_key_id").is_none())
    );
    // No secret reached the log.
    assert!(!gw.proc.log().contains("alpha-secret") && !gw.proc.log().contains("beta-secret"));
}
