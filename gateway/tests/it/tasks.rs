//! Asynchronous tasks as a user depends on them: kept across a graceful
//! restart, retried by the rules, reported to destinations (even one that
//! was down), and visible and stoppable through FC's task API.

use crate::harness::*;
use std::path::Path;
use std::time::Duration;

pub(crate) async fn task(c: &mut Client, function: &str, id: &str) -> serde_json::Value {
    let r = c
        .send(task_request("GET", function, &format!("/{id}")))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

pub(crate) async fn until_status(
    gw: &Gateway,
    c: &mut Client,
    function: &str,
    id: &str,
    want: &str,
    timeout: Duration,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let t = task(c, function, id).await;
        if t["status"] == want {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} is {t}, not {want}\nlog:\n{}",
            gw.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// When each attempt started (its `Running` events), in ms.
fn attempt_starts(t: &serde_json::Value) -> Vec<u64> {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "Running")
        .map(|e| e["timestamp"].as_u64().unwrap())
        .collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The test's directory, writable by the function's instances even when
/// they are isolated (as they are by default).
fn writable(dir: &std::path::Path) -> String {
    format!("writable_paths = [\"{}\"]", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_accepted_before_a_graceful_stop_runs_after_the_restart() {
    let dir = hold_dir();
    let (out, release) = (dir.path().join("out"), dir.path().join("release"));
    let mut gw = Gateway::start(
        "drain_timeout_s = 1",
        &echo_fn(
            "f",
            &format!("async_max_concurrency = 1\n{}", writable(dir.path())),
        ),
    );
    let mut c = gw.h1().await;
    // The function's only asynchronous slot is held, so "late" waits.
    let hold = format!("fngate:hold:{}", release.display());
    let r = c
        .send(async_request("f", hold, Some("holder")))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    until_status(
        &gw,
        &mut c,
        "f",
        "holder",
        "Running",
        Duration::from_secs(20),
    )
    .await;
    let append = format!("fngate:append:{}:late", out.display());
    let r = c
        .send(async_request("f", append, Some("late")))
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    assert_eq!(task(&mut c, "f", "late").await["status"], "Enqueued");

    gw.proc.signal(libc::SIGTERM);
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(!out.exists(), "it ran before the stop");
    let kept = gw
        .proc
        .wait_line("kept in the store", Duration::from_secs(1));
    assert!(kept.contains("tasks=2"), "{kept}");

    std::fs::write(&release, b"").unwrap();
    gw.respawn();
    let mut c = gw.h1().await;
    until_status(
        &gw,
        &mut c,
        "f",
        "late",
        "Succeeded",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(lines(&out), ["late"]);
    // The attempt cut by the stop ran again.
    let holder = until_status(
        &gw,
        &mut c,
        "f",
        "holder",
        "Succeeded",
        Duration::from_secs(30),
    )
    .await;
    assert!(attempt_starts(&holder).len() >= 2, "{holder}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_rules_and_outcomes_reach_their_destinations() {
    let dir = hold_dir();
    let sink = Sink::start("127.0.0.1:0".parse().unwrap()).await;
    let release = dir.path().join("release");
    let dest = format!("on_success = \"{0}\"\non_failure = \"{0}\"", sink.url());
    let gw = Gateway::start(
        "async_retry_base_ms = 200",
        &(echo_fn(
            "flaky",
            &format!("async_max_retries = 3\n{dest}\n{}", writable(dir.path())),
        ) + &echo_fn("broken", &format!("async_max_retries = 2\n{dest}"))
            + &echo_fn(
                "busy",
                &format!("max_concurrency = 1\nasync_max_event_age_s = 2\n{dest}"),
            )),
    );
    let mut c = gw.h2().await;
    // "busy" is held by a synchronous call: its asynchronous attempts are throttled.
    let mut holder = gw.h1().await;
    let hold = format!("fngate:hold:{}", release.display());
    let held = tokio::spawn(async move { holder.invoke("busy", hold).await.status });
    gw.until("the hold to run", Duration::from_secs(20), || async {
        gw.metric("fngate_invocations_in_flight{function=\"busy\"}")
            .await
            == 1.0
    })
    .await;

    let fail_twice = format!("fngate:fail-first:{}:2", dir.path().join("flaky").display());
    let submit = [
        ("flaky", "flaky-1", fail_twice.as_str()),
        ("broken", "broken-1", "fngate:crash"),
        ("busy", "busy-1", "{\"order\":7}"),
    ];
    let mut request_ids = Vec::new();
    for (f, id, payload) in submit {
        let r = c
            .send(async_request(f, payload.to_string(), Some(id)))
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(r.header("x-fc-async-task-id"), Some(id));
        request_ids.push(r.header("x-fc-request-id").unwrap().to_string());
    }
    let t = Duration::from_secs(60);
    let flaky = until_status(&gw, &mut c, "flaky", "flaky-1", "Succeeded", t).await;
    let broken = until_status(&gw, &mut c, "broken", "broken-1", "Failed", t).await;
    let busy = until_status(&gw, &mut c, "busy", "busy-1", "Expired", t).await;
    std::fs::write(&release, b"").unwrap();
    assert_eq!(held.await.unwrap(), 200);

    // Failed twice, then succeeded: three attempts.
    assert_eq!(flaky["alreadyRetriedTimes"], 2, "{flaky}");
    // Always failing: exactly async_max_retries retries.
    assert_eq!(broken["alreadyRetriedTimes"], 2, "{broken}");
    assert!(
        broken["taskErrorMessage"]
            .as_str()
            .unwrap()
            .contains("exited"),
        "{broken}"
    );
    // The waits after function errors: 200 ms, then 400 ms (an attempt's
    // start follows the last one's end by at least the wait).
    for t in [&flaky, &broken] {
        let starts = attempt_starts(t);
        assert_eq!(starts.len(), 3, "{t}");
        let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= 200 && gaps[1] >= 400, "{gaps:?}");
        assert!(gaps.iter().all(|g| *g < 20_000), "{gaps:?}");
    }
    // Throttled until its 2 s age ran out, with growing waits, never run.
    let starts = attempt_starts(&busy);
    assert!(starts.len() >= 2, "{busy}");
    assert!(busy["durationMs"].as_u64().unwrap() <= 2_500, "{busy}");

    gw.until(
        "three destination records",
        Duration::from_secs(30),
        || async { sink.records().len() >= 3 },
    )
    .await;
    let records = sink.records();
    assert_eq!(records.len(), 3, "{records:?}");
    let by = |cond: &str| {
        records
            .iter()
            .find(|r| r["requestContext"]["condition"] == cond)
            .unwrap_or_else(|| panic!("no {cond} record in {records:?}"))
            .clone()
    };
    let ok = by("Success");
    assert_eq!(ok["version"], "1.0");
    assert_eq!(ok["requestContext"]["requestId"], request_ids[0].as_str());
    assert_eq!(ok["requestContext"]["functionArn"], "flaky");
    assert_eq!(ok["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(ok["responseContext"]["statusCode"], 200);
    assert_eq!(ok["requestPayload"], fail_twice.as_str());
    assert_eq!(ok["responsePayload"], fail_twice.as_str(), "echoed");
    let failed = by("RetriesExhausted");
    assert_eq!(
        failed["requestContext"]["requestId"],
        request_ids[1].as_str()
    );
    assert_eq!(failed["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(failed["responseContext"]["functionError"], "Unhandled");
    assert!(
        failed["responsePayload"]["errorMessage"].is_string(),
        "{failed}"
    );
    let expired = by("EventAgeExceeded");
    assert_eq!(
        expired["requestContext"]["requestId"],
        request_ids[2].as_str()
    );
    assert_eq!(expired["requestPayload"]["order"], 7);
    assert_eq!(expired["responseContext"]["statusCode"], 429);
    let m = |r: &str| {
        format!(
            "fngate_async_results_total{{function=\"{}\",result=\"{r}\"}}",
            "broken"
        )
    };
    assert_eq!(gw.metric(&m("failed")).await, 1.0);
    assert_eq!(
        gw.metric("fngate_async_destination_deliveries_total{result=\"delivered\"}")
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_was_down_gets_every_record_once_it_is_back() {
    // A loopback address of its own, free once the probe is dropped.
    let probe = std::net::TcpListener::bind("127.0.0.7:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let gw = Gateway::start(
        "async_retry_base_ms = 100",
        &echo_fn("f", &format!("on_success = \"http://{addr}/hook\"")),
    );
    let mut c = gw.h2().await;
    for i in 0..5 {
        let r = c
            .send(async_request("f", format!("n{i}"), None))
            .await
            .unwrap();
        assert_eq!(r.status, 202);
    }
    gw.until(
        "every record to fail twice",
        Duration::from_secs(30),
        || async {
            gw.metric("fngate_async_destination_deliveries_total{result=\"retried\"}")
                .await
                >= 10.0
        },
    )
    .await;
    assert_eq!(gw.metric("fngate_async_destination_pending").await, 5.0);
    let sink = Sink::start(addr).await;
    gw.until("the five records", Duration::from_secs(30), || async {
        sink.records().len() >= 5
    })
    .await;
    gw.until("nothing pending", Duration::from_secs(10), || async {
        gw.metric("fngate_async_destination_pending").await == 0.0
    })
    .await;
    let mut payloads: Vec<String> = sink
        .records()
        .iter()
        .map(|r| r["requestPayload"].as_str().unwrap().to_string())
        .collect();
    payloads.sort();
    assert_eq!(payloads, ["n0", "n1", "n2", "n3", "n4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_api_deduplicates_stops_lists_and_meets_ingress() {
    let dir = hold_dir();
    let (out, release) = (dir.path().join("out"), dir.path().join("release"));
    let gw = Gateway::start(
        "",
        &("[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"127.0.0.2/32\"]\n".to_string()
            + &echo_fn(
                "f",
                &format!("instance_concurrency = 10\n{}", writable(dir.path())),
            )
            + &echo_fn("private", "vpc_bindings = [\"vpc-a\"]")
            + &echo_fn("g", "")),
    );
    let mut c = gw.h1().await;

    // A known task id is accepted again, and not run again.
    let once = format!("fngate:append:{}:once", out.display());
    let first = c
        .send(async_request("f", once.clone(), Some("once")))
        .await
        .unwrap();
    assert_eq!(first.status, 202);
    let rid = first.header("x-fc-request-id").unwrap().to_string();
    let t = until_status(
        &gw,
        &mut c,
        "f",
        "once",
        "Succeeded",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(t["requestId"], rid.as_str());
    assert_eq!(t["taskPayload"], once.as_str());
    assert!(t["endTime"].as_u64() >= t["startedTime"].as_u64());
    let again = c
        .send(async_request("f", once, Some("once")))
        .await
        .unwrap();
    assert_eq!(again.status, 202);
    assert_eq!(again.header("x-fc-request-id"), Some(rid.as_str()));
    assert_eq!(gw.metric("fngate_async_queued").await, 0.0);
    assert_eq!(lines(&out), ["once"]);

    // A running task is stopped, and its instance goes with it.
    let hold = format!("fngate:hold:{}", release.display());
    let r = c
        .send(async_request("f", hold, Some("stop-me")))
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    until_status(
        &gw,
        &mut c,
        "f",
        "stop-me",
        "Running",
        Duration::from_secs(20),
    )
    .await;
    gw.until(
        "the attempt to reach its instance",
        Duration::from_secs(20),
        || async {
            gw.metric("fngate_invocations_in_flight{function=\"f\"}")
                .await
                == 1.0
        },
    )
    .await;
    let r = c
        .send(task_request("PUT", "f", "/stop-me/stop"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let t = task(&mut c, "f", "stop-me").await;
    assert_eq!(t["status"], "Stopped");
    assert!(t["endTime"].is_u64());
    gw.until(
        "the instance to be released",
        Duration::from_secs(20),
        || async {
            gw.metric("fngate_instance_releases_total{function=\"f\",reason=\"stopped\"}")
                .await
                == 1.0
        },
    )
    .await;
    let r = c
        .send(task_request("PUT", "f", "/stop-me/stop"))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.json()["Message"]
            .as_str()
            .unwrap()
            .contains("already Stopped")
    );
    assert_eq!(
        gw.metric("fngate_async_results_total{function=\"f\",result=\"stopped\"}")
            .await,
        1.0
    );

    // Listing, filtered and bounded.
    let list = |q: &str| task_request("GET", "f", q);
    let r = c.send(list("?status=Succeeded")).await.unwrap();
    assert_eq!(r.status, 200);
    let ids: Vec<_> = r.json()["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["taskId"].clone())
        .collect();
    assert_eq!(ids, ["once"]);
    let r = c.send(list("?status=Stopped&limit=5")).await.unwrap();
    assert_eq!(r.json()["tasks"][0]["taskId"], "stop-me");
    let r = c.send(list("?limit=1")).await.unwrap();
    assert_eq!(r.json()["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["tasks"][0]["taskId"], "stop-me", "newest first");
    let r = c.send(list("?status=Bogus")).await.unwrap();
    assert_eq!(
        (r.status, r.json()["Code"].clone()),
        (400, "InvalidArgument".into())
    );

    // Errors in FC's shape.
    let r = c.send(task_request("GET", "f", "/nope")).await.unwrap();
    assert_eq!(
        (r.status, r.json()["Code"].clone()),
        (404, "AsyncTaskNotFound".into())
    );
    let r = c
        .send(task_request("GET", "private", "/once"))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["Code"].clone()),
        (403, "AccessDenied".into())
    );
    let r = c.send(task_request("POST", "f", "/once")).await.unwrap();
    assert_eq!(r.status, 405);
    let r = c
        .send(async_request("f", "x", Some("1-starts-with-a-digit")))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["Code"].clone()),
        (400, "InvalidArgument".into())
    );
    // Another function's task is not found through this one.
    let r = c
        .send(task_request("GET", "private", "/once"))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    std::fs::write(&release, b"").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_destination_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("destination-ca.pem");
    let sink = Sink::start_tls("127.0.0.1:0".parse().unwrap(), &ca).await;
    // Trusted through the configured CA: delivered.
    let gw = Gateway::start(
        &format!("async_destination_ca_file = \"{}\"", ca.display()),
        &echo_fn("f", &format!("on_success = \"{}\"", sink.url())),
    );
    let mut c = gw.h1().await;
    assert_eq!(
        c.send(async_request("f", "over tls", None))
            .await
            .unwrap()
            .status,
        202
    );
    gw.until("the record over HTTPS", Duration::from_secs(30), || async {
        sink.records().len() == 1
    })
    .await;
    assert_eq!(sink.records()[0]["requestPayload"], "over tls");
    // Without it the certificate is not trusted: retried, never delivered.
    let untrusting = Gateway::start(
        "async_retry_base_ms = 50",
        &echo_fn("f", &format!("on_success = \"{}\"", sink.url())),
    );
    let mut c = untrusting.h1().await;
    assert_eq!(
        c.send(async_request("f", "x", None)).await.unwrap().status,
        202
    );
    untrusting
        .until("failed deliveries", Duration::from_secs(30), || async {
            untrusting
                .metric("fngate_async_destination_deliveries_total{result=\"retried\"}")
                .await
                >= 2.0
        })
        .await;
    assert_eq!(sink.records().len(), 1);
    assert!(untrusting.proc.log().contains("destination not reached"));
}
