//! Throttling over real TLS: rates, bursts, caller isolation, concurrency and
//! scale-out limits, queueing, and the 429 answer's shape.

use crate::harness::*;
use std::time::Duration;

/// Checks a 429 answer; returns its `x-acs-retry-after` in ms.
fn assert_throttled(r: &Resp, limit_text: &str) -> u64 {
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["Code"], "ResourceThrottled");
    assert_eq!(v["RequestId"], r.header("x-fc-request-id").unwrap());
    let msg = v["Message"].as_str().unwrap();
    assert!(msg.contains(limit_text), "{msg} should name {limit_text}");
    let ms: u64 = r.header("x-acs-retry-after").unwrap().parse().unwrap();
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(ms >= 1);
    assert_eq!(
        secs,
        ms.div_ceil(1000).max(1),
        "Retry-After is x-acs-retry-after rounded up"
    );
    ms
}

/// Sends `rate` requests per second for `secs` from one HTTP/2 connection
/// without waiting for answers (an open loop); returns the answers and the
/// time from first to last send.
async fn offer(client: &Client, function: &str, rate: u32, secs: u32) -> (Vec<Resp>, Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut tasks = Vec::new();
    let t0 = tokio::time::Instant::now();
    let mut last = t0;
    for _ in 0..rate * secs {
        tick.tick().await;
        last = tokio::time::Instant::now();
        let mut c = client.clone();
        let f = function.to_string();
        tasks.push(tokio::spawn(async move { c.invoke(&f, "x").await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    (out, last - t0)
}

/// A usage log section for a test gateway, and the log's path.
fn usage(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let log = dir.join("usage.jsonl");
    let section = format!(
        "[usage]\npath = \"{}\"\nsync_interval_ms = 50\n",
        log.display()
    );
    (section, log)
}

/// The span of arrival times, as the gateway saw them, of the `n` calls to
/// `function` (from callers in `vpc`, if given) its usage log records
/// (waiting, bounded, for all of them to be written). The limiter works on
/// arrivals, which drift from the client's send times on a loaded machine.
async fn arrival_span(
    log: &std::path::Path,
    function: &str,
    vpc: Option<&str>,
    n: usize,
) -> Duration {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let starts: Vec<u64> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r.get("record").is_none())
            .filter(|r| r["function"] == function && vpc.is_none_or(|v| r["vpc_id"] == v))
            .map(|r| r["start_unix_ms"].as_u64().unwrap())
            .collect();
        if starts.len() >= n {
            let (lo, hi) = (starts.iter().min().unwrap(), starts.iter().max().unwrap());
            return Duration::from_millis(hi - lo);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} records",
            starts.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_rate_limit_admits_the_configured_rate_under_2x_load() {
    let dir = tempfile::tempdir().unwrap();
    let (section, log) = usage(dir.path());
    let gw = Gateway::start(
        "",
        &(echo_fn(
            "limited",
            "instance_concurrency = 100\nrate_limit = { per_second = 40.0, burst = 10 }",
        ) + &section),
    );
    let c = gw.h2().await;
    let (answers, _) = offer(&c, "limited", 80, 5).await;
    let span = arrival_span(&log, "limited", None, answers.len()).await;
    let ok = answers.iter().filter(|r| r.status == 200).count() as f64;
    let expected = 40.0 * span.as_secs_f64() + 10.0;
    assert!(
        (ok - expected).abs() <= expected * 0.05,
        "admitted {ok}, expected {expected:.1} ± 5% over {span:?} of arrivals"
    );
    let mut throttled = 0;
    for r in answers.iter().filter(|r| r.status != 200) {
        let ms = assert_throttled(r, "the function's request rate limit");
        assert!(
            ms <= 25,
            "one cell per 25 ms: the earliest retry is at most 25 ms away, got {ms}"
        );
        throttled += 1;
    }
    assert_eq!(throttled + ok as usize, 400);
    assert_eq!(
        gw.metric("fngate_throttles_total{function=\"limited\",limit=\"function_rate\"}")
            .await,
        throttled as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_burst_is_honoured_again_after_an_idle_period() {
    let gw = Gateway::start(
        "",
        &echo_fn(
            "bursty",
            "instance_concurrency = 50\nrate_limit = { per_second = 5.0, burst = 5 }",
        ),
    );
    let c = gw.h2().await;
    for round in 0..2 {
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move { c.invoke("bursty", "x").await }));
        }
        for t in tasks {
            assert_eq!(
                t.await.unwrap().status,
                200,
                "round {round}: the burst is admitted at once"
            );
        }
        let mut c1 = c.clone();
        let ms = assert_throttled(&c1.invoke("bursty", "x").await, "rate limit");
        assert!(ms <= 200, "{ms}");
        // Idle for the time the bucket takes to refill: 5 cells at 5/s.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_caller_does_not_push_another_below_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (section, log) = usage(dir.path());
    // Each caller in a VPC of its own, so the usage log tells them apart (the
    // limit is still keyed by address).
    let gw = Gateway::start(
        "",
        &(echo_fn(
            "shared",
            "instance_concurrency = 100\ncaller_rate_limit = { per_second = 20.0, burst = 5 }",
        ) + &section
            + "[[networks]]\nvpc_id = \"vpc-flood\"\ncidrs = [\"127.0.0.2/32\"]\n"
            + "[[networks]]\nvpc_id = \"vpc-polite\"\ncidrs = [\"127.0.0.3/32\"]\n"),
    );
    let flood = gw
        .client(ClientOpts {
            h2: true,
            ..ClientOpts::from("127.0.0.2")
        })
        .await;
    let polite = gw
        .client(ClientOpts {
            h2: true,
            ..ClientOpts::from("127.0.0.3")
        })
        .await;
    let (a, b) = tokio::join!(
        offer(&flood, "shared", 200, 2),
        offer(&polite, "shared", 10, 2)
    );
    let (flood_answers, _) = a;
    let (polite_answers, _) = b;
    let span = arrival_span(&log, "shared", Some("vpc-flood"), flood_answers.len()).await;
    assert!(
        polite_answers.iter().all(|r| r.status == 200),
        "the polite caller keeps its full rate"
    );
    let ok = flood_answers.iter().filter(|r| r.status == 200).count() as f64;
    let expected = 20.0 * span.as_secs_f64() + 5.0;
    assert!(
        (ok - expected).abs() <= expected * 0.1 + 1.0,
        "flooder admitted {ok}, expected {expected:.1}"
    );
    let refused = flood_answers.iter().find(|r| r.status != 200).unwrap();
    assert_throttled(refused, "the caller's request rate limit for this function");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_wide_caller_rate_limit_spans_functions() {
    let gw = Gateway::start(
        "caller_rate_limit = { per_second = 1.0, burst = 3 }",
        &(echo_fn("f1", "") + &echo_fn("f2", "")),
    );
    let mut c = gw.client(ClientOpts::from("127.0.0.5")).await;
    for f in ["f1", "f2", "f1"] {
        assert_eq!(c.invoke(f, "x").await.status, 200);
    }
    assert_throttled(
        &c.invoke("f2", "x").await,
        "the caller's request rate limit for this gateway",
    );
    // Another caller has its own budget.
    let mut other = gw.client(ClientOpts::from("127.0.0.6")).await;
    assert_eq!(other.invoke("f2", "x").await.status, 200);
}

/// Starts `n` invocations that hold until `gate` exists; returns their tasks.
async fn hold(
    gw: &Gateway,
    client: &Client,
    function: &str,
    n: usize,
    gate: &std::path::Path,
) -> Vec<tokio::task::JoinHandle<Resp>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut c = client.clone();
        let payload = format!("fngate:hold:{}", gate.display());
        let f = function.to_string();
        tasks.push(tokio::spawn(async move { c.invoke(&f, payload).await }));
    }
    gw.until(
        &format!("{n} held in flight"),
        Duration::from_secs(30),
        || async {
            gw.metric(&format!(
                "fngate_invocations_in_flight{{function=\"{function}\"}}"
            ))
            .await
                == n as f64
                && gw
                    .instances_of(function)
                    .await
                    .iter()
                    .map(|i| i["in_flight"].as_u64().unwrap())
                    .sum::<u64>()
                    == n as u64
        },
    )
    .await;
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_caps_in_flight_invocations_exactly() {
    let gw = Gateway::start(
        "",
        &echo_fn("capped", "instance_concurrency = 10\nmax_concurrency = 3"),
    );
    let c = gw.h2().await;
    let gate = hold_file("gate");
    let held = hold(&gw, &c, "capped", 3, &gate).await;
    for _ in 0..4 {
        let mut c1 = c.clone();
        assert_throttled(&c1.invoke("capped", "x").await, "concurrency limit");
    }
    assert_eq!(
        gw.metric("fngate_invocations_in_flight{function=\"capped\"}")
            .await,
        3.0
    );
    std::fs::write(&gate, b"go").unwrap();
    for t in held {
        assert_eq!(t.await.unwrap().status, 200);
    }
    let mut c1 = c.clone();
    assert_eq!(c1.invoke("capped", "after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_instances_throttles_scale_out_and_recovers() {
    let gw = Gateway::start(
        "max_instances = 2",
        &echo_fn("wide", "instance_concurrency = 1"),
    );
    let c = gw.h2().await;
    let gate = hold_file("gate");
    let held = hold(&gw, &c, "wide", 2, &gate).await;
    assert_eq!(gw.instances_of("wide").await.len(), 2);
    let mut c1 = c.clone();
    assert_throttled(&c1.invoke("wide", "x").await, "max_instances");
    assert_eq!(gw.metric("fngate_instances_live").await, 2.0);
    std::fs::write(&gate, b"go").unwrap();
    for t in held {
        assert_eq!(t.await.unwrap().status, 200);
    }
    // Load dropped: calls are served again (on the existing instances).
    for _ in 0..3 {
        assert_eq!(c1.invoke("wide", "x").await.status, 200);
    }
    assert_eq!(
        gw.metric("fngate_throttles_total{function=\"wide\",limit=\"max_instances\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_start_rate_throttles_scale_out_and_recovers() {
    let gw = Gateway::start(
        "max_instance_starts_per_minute = 2",
        &echo_fn("spiky", "instance_concurrency = 1"),
    );
    let c = gw.h2().await;
    let gate = hold_file("gate");
    let held = hold(&gw, &c, "spiky", 2, &gate).await;
    let mut c1 = c.clone();
    let ms = assert_throttled(&c1.invoke("spiky", "x").await, "scale-out rate");
    assert!(
        (25_000..=30_000).contains(&ms),
        "2 starts/min: the next start is ~30 s away, got {ms} ms"
    );
    std::fs::write(&gate, b"go").unwrap();
    for t in held {
        assert_eq!(t.await.unwrap().status, 200);
    }
    for _ in 0..3 {
        assert_eq!(c1.invoke("spiky", "x").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_timeout_admits_when_a_slot_frees_in_time() {
    let gw = Gateway::start(
        "",
        &(echo_fn("patient", "max_concurrency = 1\nqueue_timeout_ms = 20000")
            + &echo_fn("impatient", "max_concurrency = 1\nqueue_timeout_ms = 300")),
    );
    let c = gw.h2().await;
    let gate = hold_file("gate");
    let held = hold(&gw, &c, "patient", 1, &gate).await;
    let mut c1 = c.clone();
    let queued = tokio::spawn(async move { c1.invoke("patient", "queued").await });
    gw.until("one request queued", Duration::from_secs(10), || async {
        let (_, f) = gw.admin_get("/admin/functions").await;
        let f: serde_json::Value = serde_json::from_str(&f).unwrap();
        f.as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "patient" && x["queued"] == 1)
    })
    .await;
    std::fs::write(&gate, b"go").unwrap();
    assert_eq!(held.into_iter().next().unwrap().await.unwrap().status, 200);
    let r = queued.await.unwrap();
    assert_eq!(
        r.status, 200,
        "admitted when the slot freed within the queue timeout"
    );
    assert_eq!(r.text(), "queued");

    // Nobody frees the slot within 300 ms: throttled after waiting.
    let gate2 = gw.dir.path().join("gate2");
    let held = hold(&gw, &c, "impatient", 1, &gate2).await;
    let mut c2 = c.clone();
    let t0 = tokio::time::Instant::now();
    assert_throttled(&c2.invoke("impatient", "x").await, "concurrency limit");
    assert!(
        t0.elapsed() >= Duration::from_millis(290),
        "waited {:?}",
        t0.elapsed()
    );
    std::fs::write(&gate2, b"go").unwrap();
    assert_eq!(held.into_iter().next().unwrap().await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_request_abandoned_by_its_client_leaves_the_queue() {
    let gw = Gateway::start(
        "",
        &echo_fn("q", "max_concurrency = 1\nqueue_timeout_ms = 20000"),
    );
    let c = gw.h2().await;
    let gate = hold_file("gate");
    let held = hold(&gw, &c, "q", 1, &gate).await;
    let queued_fns = || async {
        let (_, f) = gw.admin_get("/admin/functions").await;
        let f: serde_json::Value = serde_json::from_str(&f).unwrap();
        f.as_array().unwrap()[0]["queued"].as_u64().unwrap()
    };
    // A separate connection, dropped while its request waits in the queue.
    let mut other = gw.h2().await;
    let waiting = tokio::spawn(async move { other.invoke("q", "gone").await });
    gw.until("queued", Duration::from_secs(10), || async {
        queued_fns().await == 1
    })
    .await;
    waiting.abort();
    gw.until("left the queue", Duration::from_secs(10), || async {
        queued_fns().await == 0
    })
    .await;
    std::fs::write(&gate, b"go").unwrap();
    assert_eq!(held.into_iter().next().unwrap().await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_callers_do_not_consume_rate_budget() {
    let cfg = "[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"127.0.0.2/32\"]\n".to_string()
        + &echo_fn(
            "private",
            "vpc_bindings = [\"vpc-a\"]\nrate_limit = { per_second = 0.1, burst = 3 }",
        );
    let gw = Gateway::start("", &cfg);
    let mut outsider = gw.client(ClientOpts::from("127.0.0.1")).await;
    for _ in 0..20 {
        assert_eq!(outsider.invoke("private", "x").await.status, 403);
    }
    let mut insider = gw.client(ClientOpts::from("127.0.0.2")).await;
    for _ in 0..3 {
        assert_eq!(
            insider.invoke("private", "x").await.status,
            200,
            "the budget is intact"
        );
    }
    assert_throttled(&insider.invoke("private", "x").await, "rate limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_abandoning_an_invocation_frees_its_concurrency_slot() {
    let gw = Gateway::start("", &echo_fn("solo", "max_concurrency = 1\ntimeout_s = 30"));
    let gate = hold_file("gate");
    // Its own connection, so aborting the task closes it.
    let lone = gw.h2().await;
    let held = hold(&gw, &lone, "solo", 1, &gate).await;
    drop(lone);
    for t in held {
        t.abort();
    }
    gw.until(
        "the abandoned call released",
        Duration::from_secs(10),
        || async {
            gw.metric("fngate_invocations_in_flight{function=\"solo\"}")
                .await
                == 0.0
        },
    )
    .await;
    let mut c = gw.h1().await;
    assert_eq!(
        c.invoke("solo", "next").await.status,
        200,
        "the slot is free again"
    );
    std::fs::write(&gate, b"go").unwrap();
}

/// Rate limits admit an asynchronous call when it is accepted (202 or 429,
/// as FC and Lambda apply them): its attempts meet only the concurrency and
/// instance limits. Before, an accepted call's attempt was throttled by the
/// same rate again (here it would wait 100 s for a token), and each such
/// throttle was counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_async_call_spends_the_rate_once_and_each_throttle_counts_once() {
    let gw = Gateway::start(
        "",
        &echo_fn(
            "sparse",
            "rate_limit = { per_second = 0.01, burst = 1 }\nmax_concurrency = 1\nqueue_timeout_ms = 0",
        ),
    );
    let mut c = gw.h1().await;
    let accepted = c
        .send(async_request("sparse", "first", None))
        .await
        .unwrap();
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let refused = c
        .send(async_request("sparse", "second", None))
        .await
        .unwrap();
    assert_throttled(&refused, "the function's request rate limit");
    let succeeded = "fngate_async_results_total{function=\"sparse\",result=\"succeeded\"}";
    gw.until(
        "the accepted call to run",
        Duration::from_secs(30),
        || async { gw.metric(succeeded).await == 1.0 },
    )
    .await;
    let rate = "fngate_throttles_total{function=\"sparse\",limit=\"function_rate\"}";
    assert_eq!(gw.metric(rate).await, 1.0, "one refusal seen");
    let internal_throttled = "fngate_invocations_total{api=\"fc\",function=\"sparse\",network=\"internal\",outcome=\"throttled\"}";
    assert_eq!(gw.metric(internal_throttled).await, 0.0);
}

/// An attempt throttled by the concurrency limit (a synchronous call holds
/// the one slot) is counted once per throttled attempt: the counter equals
/// the throttled attempts the invocation counter shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_async_attempts_are_counted_once_each() {
    let gw = Gateway::start(
        "",
        &echo_fn("single", "max_concurrency = 1\nqueue_timeout_ms = 0"),
    );
    let c = gw.h2().await;
    let gate = hold_file("single-gate");
    let held = hold(&gw, &c, "single", 1, &gate).await;
    let mut c1 = c.clone();
    let r = c1
        .send(async_request("single", "later", None))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let throttled_attempts = "fngate_invocations_total{api=\"fc\",function=\"single\",network=\"internal\",outcome=\"throttled\"}";
    gw.until(
        "an attempt to be throttled",
        Duration::from_secs(30),
        || async { gw.metric(throttled_attempts).await >= 1.0 },
    )
    .await;
    std::fs::write(&gate, b"go").unwrap();
    for t in held {
        assert_eq!(t.await.unwrap().status, 200);
    }
    let succeeded = "fngate_async_results_total{function=\"single\",result=\"succeeded\"}";
    gw.until("the task to succeed", Duration::from_secs(60), || async {
        gw.metric(succeeded).await == 1.0
    })
    .await;
    let counted = gw
        .metric("fngate_throttles_total{function=\"single\",limit=\"function_concurrency\"}")
        .await;
    assert_eq!(counted, gw.metric(throttled_attempts).await);
}
