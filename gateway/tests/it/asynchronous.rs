//! Asynchronous invocations (`x-fc-invocation-type: Async`): 202 at once, the
//! run later under the same request id, retries, expiry, and the bounds.

use crate::harness::*;
use bytes::Bytes;
use std::time::Duration;

async fn invoke_async(c: &mut Client, function: &str, payload: impl Into<Bytes>) -> Resp {
    let mut req = invoke_request(function, payload.into());
    req.headers_mut()
        .insert("x-fc-invocation-type", "Async".parse().unwrap());
    c.send(req).await.unwrap()
}

fn m(name: &str, labels: &str) -> String {
    format!("{name}{{{labels}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_call_is_accepted_at_once_and_runs_later_under_its_request_id() {
    let logdir = hold_dir();
    let log = logdir.path().join("usage.jsonl");
    let release = logdir.path().join("release");
    let mut gw = Gateway::start(
        "",
        &(echo_fn("f", "")
            + &format!(
                "[usage]\npath = \"{}\"\nsync_interval_ms = 50\n",
                log.display()
            )),
    );
    let mut c = gw.h1().await;
    // The function holds until `release` exists: the 202 cannot wait for it.
    let r = invoke_async(&mut c, "f", format!("fngate:hold:{}", release.display())).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(r.body.is_empty());
    let id = r.header("x-fc-request-id").unwrap().to_string();
    assert_eq!(gw.metric("fngate_async_queued").await, 1.0);
    gw.until(
        "the async run to start",
        Duration::from_secs(10),
        || async {
            gw.metric(&m("fngate_invocations_in_flight", "function=\"f\""))
                .await
                == 1.0
        },
    )
    .await;
    assert_eq!(
        gw.metric(&m(
            "fngate_async_results_total",
            "function=\"f\",result=\"succeeded\""
        ))
        .await,
        0.0
    );
    std::fs::write(&release, b"").unwrap();
    gw.until(
        "the async run to succeed",
        Duration::from_secs(10),
        || async {
            gw.metric(&m(
                "fngate_async_results_total",
                "function=\"f\",result=\"succeeded\"",
            ))
            .await
                == 1.0
        },
    )
    .await;
    assert_eq!(gw.metric("fngate_async_queued").await, 0.0);
    let inv = |net: &str, outcome: &str| {
        m(
            "fngate_invocations_total",
            &format!("api=\"fc\",function=\"f\",network=\"{net}\",outcome=\"{outcome}\""),
        )
    };
    assert_eq!(gw.metric(&inv("internet", "accepted")).await, 1.0);
    assert_eq!(gw.metric(&inv("internal", "success")).await, 1.0);
    // The run's answer reaches no client: no traffic on the internal network.
    assert_eq!(
        gw.metric(&m(
            "fngate_traffic_bytes_total",
            "function=\"f\",network=\"internal\",direction=\"out\""
        ))
        .await,
        0.0
    );

    gw.proc.signal(libc::SIGTERM);
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(30)), Some(0));
    let records = usage_records(&log);
    assert_eq!(records.len(), 2, "{records:?}");
    let accepted = &records[0];
    assert_eq!(accepted["request_id"], id.as_str());
    assert_eq!(accepted["network"], "internet");
    assert_eq!(accepted["status"], 202);
    assert_eq!(accepted["outcome"], "accepted");
    assert_eq!(accepted["billed_gb_s"], 0.0);
    let run = &records[1];
    assert_eq!(run["request_id"], id.as_str());
    assert_eq!(run["network"], "internal");
    assert_eq!(run["status"], 200);
    assert_eq!(run["outcome"], "success");
    assert_eq!(run["bytes_in"], 0);
    assert!(run["billed_gb_s"].as_f64().unwrap() > 0.0);
    assert!(run["instance_id"].is_string());
    assert!(run["start_unix_ms"].as_u64() >= accepted["end_unix_ms"].as_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_errors_are_retried_as_configured_then_fail_or_expire() {
    let gw = Gateway::start(
        "async_retry_base_ms = 20",
        &(echo_fn("crashes", "async_max_retries = 2")
            + &echo_fn(
                "expires",
                "async_max_retries = 8\nasync_max_event_age_s = 2",
            )),
    );
    let mut c = gw.h2().await;
    assert_eq!(
        invoke_async(&mut c, "crashes", "fngate:crash").await.status,
        202
    );
    assert_eq!(
        invoke_async(&mut c, "expires", "fngate:crash").await.status,
        202
    );
    let result = |f: &str, r: &str| {
        m(
            "fngate_async_results_total",
            &format!("function=\"{f}\",result=\"{r}\""),
        )
    };
    gw.until("both to end", Duration::from_secs(20), || async {
        gw.metric(&result("crashes", "failed")).await == 1.0
            && gw.metric(&result("expires", "expired")).await == 1.0
    })
    .await;
    let retries = |f: &str| {
        m(
            "fngate_async_retries_total",
            &format!("function=\"{f}\",reason=\"function_error\""),
        )
    };
    let runs = |f: &str| {
        m(
            "fngate_invocations_total",
            &format!("api=\"fc\",function=\"{f}\",network=\"internal\",outcome=\"function_error\""),
        )
    };
    // The first attempt and its two retries.
    assert_eq!(gw.metric(&retries("crashes")).await, 2.0);
    assert_eq!(gw.metric(&runs("crashes")).await, 3.0);
    // 20, 40, ... 640 ms between attempts (1.26 s in all): at most seven
    // attempts fit in the 2 s age (fewer when each attempt's cold start is
    // slow, as on a loaded machine; the exact sequence is `next`'s unit
    // test). It expired before its 8 retries were used, never failed, and
    // every retry was an attempt.
    let (r, n) = (
        gw.metric(&retries("expires")).await,
        gw.metric(&runs("expires")).await,
    );
    assert!((1.0..=6.0).contains(&r), "{r} retries");
    assert_eq!(n, r + 1.0);
    assert_eq!(gw.metric(&result("expires", "failed")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_meet_ingress_the_queue_bound_and_their_own_payload_limit() {
    let dir = hold_dir();
    let release = dir.path().join("release");
    let gw = Gateway::start(
        "max_async_queued = 1\nmax_async_body_bytes = 100",
        &("[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"127.0.0.2/32\"]\n".to_string()
            + &echo_fn("f", "instance_concurrency = 10")
            + &echo_fn("private", "vpc_bindings = [\"vpc-a\"]")),
    );
    let mut c = gw.h1().await;

    let r = invoke_async(&mut c, "private", "x").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["Code"], "AccessDenied");

    let r = invoke_async(&mut c, "f", vec![b'x'; 101]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["Code"], "EntityTooLarge");

    let mut req = invoke_request("f", Bytes::from_static(b"x"));
    req.headers_mut()
        .insert("x-fc-invocation-type", "Later".parse().unwrap());
    let r = c.send(req).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["Code"], "InvalidArgument");
    assert!(r.json()["Message"].as_str().unwrap().contains("Later"));

    // One accepted and not done fills the queue.
    let hold = format!("fngate:hold:{}", release.display());
    assert_eq!(invoke_async(&mut c, "f", hold.clone()).await.status, 202);
    let r = invoke_async(&mut c, "f", hold).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["Code"], "ResourceThrottled");
    assert!(
        r.json()["Message"]
            .as_str()
            .unwrap()
            .contains("asynchronous invocation queue")
    );
    assert_eq!(
        gw.metric(&m(
            "fngate_throttles_total",
            "function=\"f\",limit=\"async_queue\""
        ))
        .await,
        1.0
    );
    // A synchronous call does not use the queue.
    assert_eq!(c.invoke("f", "sync").await.status, 200);
    std::fs::write(&release, b"").unwrap();
    gw.until("the queue to empty", Duration::from_secs(10), || async {
        gw.metric("fngate_async_queued").await == 0.0
    })
    .await;
    assert_eq!(invoke_async(&mut c, "f", "again").await.status, 202);
}
