//! Failures a new user meets, each reproduced as it was met (issue 11):
//! answers lost on refused bodies, stuck workers, races, waits, shutdown.

use crate::harness::*;
use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;

fn refusing_functions() -> String {
    echo_fn("small", "")
        + &echo_fn("private", "vpc_bindings = [\"vpc-a\"]")
        + "[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"10.9.0.0/16\"]\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_its_whole_body_first_gets_the_answer_http1() {
    let gw = Gateway::start("max_body_bytes = 1048576", &refusing_functions());
    crate::sdk::run_script(&gw, "early_answers.py").await;
    // Five refused 6 MiB bodies, each read to its end and dropped.
    assert_eq!(
        gw.metric("fngate_refused_body_drains_total{result=\"complete\"}")
            .await,
        5.0
    );
    assert!(gw.metric("fngate_refused_body_drained_bytes_total").await >= 5.0 * 5.0 * 1048576.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_http2_stream_gets_its_answer_and_the_connection_carries_on() {
    let gw = Gateway::start("max_body_bytes = 1048576", &refusing_functions());
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 6 << 20]).unwrap();
    // curl treats a stream reset with an error code as a failure (exit 92).
    for (path, want) in [
        (invoke_path("small"), "400"),
        (invoke_path("private"), "403"),
        ("/2015-03-31/functions/small/invocations".to_string(), "413"),
    ] {
        let out = std::process::Command::new("curl")
            .args([
                "--http2",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
            ])
            .arg(&gw.ca)
            .arg("--data-binary")
            .arg(format!("@{}", big.display()))
            .arg(format!("https://localhost:{}{path}", gw.https.port()))
            .output()
            .expect("curl (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{path}: curl {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{path}");
    }
    // hyper's client on one connection: the refused stream's answer, then the
    // connection serves the next call.
    let mut c = gw.h2().await;
    let r = c
        .send(
            http::Request::post(format!("https://localhost{}", invoke_path("private")))
                .body(Full::new(Bytes::from(vec![b'y'; 6 << 20])))
                .unwrap(),
        )
        .await
        .expect("the refused stream's answer");
    assert_eq!(r.status, 403);
    assert_eq!(c.invoke("small", "after").await.text(), "after");
    // Each drained once its answer had gone out: no reset at all.
    gw.until("the drains to finish", Duration::from_secs(30), || async {
        gw.metric("fngate_refused_body_drains_total{result=\"complete\"}")
            .await
            == 4.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_drain_bound_an_http2_stream_is_reset_with_no_error_after_its_answer() {
    let gw = Gateway::start(
        "max_body_bytes = 1048576\nmax_refused_body_drain_bytes = 1048576",
        &refusing_functions(),
    );
    let mut c = gw.h2().await;
    // More than the gateway will drain: answered, then the stream (only it)
    // is reset with NO_ERROR, which hyper's client takes as the end.
    let r = c
        .send(
            http::Request::post(format!("https://localhost{}", invoke_path("private")))
                .body(Full::new(Bytes::from(vec![b'y'; 6 << 20])))
                .unwrap(),
        )
        .await
        .expect("the refused stream's answer");
    assert_eq!(r.status, 403);
    assert_eq!(c.invoke("small", "after").await.text(), "after");
    assert_eq!(
        gw.metric("fngate_refused_body_drains_total{result=\"too_large\"}")
            .await,
        1.0
    );
}

fn worker_section(w: &WorkerProc) -> String {
    format!("[[workers]]\nurl = \"{}\"\n", w.url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_costs_a_bounded_time_and_others_are_served() {
    let worker = start_worker(2048);
    let gw = Gateway::start(
        "worker_timeout_ms = 1000\ninstance_start_timeout_ms = 2000",
        &(worker_section(&worker) + &echo_fn("warm", "") + &echo_fn("cold", "")),
    );
    let mut c = gw.h1().await;
    assert_eq!(c.invoke("warm", "x").await.status, 200);
    // The worker accepts connections and never answers (its instances run on).
    worker.proc.signal(libc::SIGSTOP);
    let t0 = std::time::Instant::now();
    let mut c2 = gw.h1().await;
    let cold = tokio::spawn(async move { c2.invoke("cold", "x").await });
    // Meanwhile the warm function is served as ever.
    for _ in 0..5 {
        assert_eq!(c.invoke("warm", "still").await.text(), "still");
    }
    let r = tokio::time::timeout(Duration::from_secs(20), cold)
        .await
        .expect("a clear answer in bounded time, not a hang")
        .unwrap();
    let took = t0.elapsed();
    worker.proc.signal(libc::SIGCONT);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["Code"], "ServiceUnavailable");
    // The start's bound: instance_start_timeout_ms + 2 × worker_timeout_ms.
    assert!(took < Duration::from_secs(12), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_worker_stopped_starts_move_on_and_the_reaper_keeps_its_pace() {
    let stopped = start_worker(1024);
    let healthy = start_worker(4096);
    let gw = Gateway::start(
        "worker_timeout_ms = 1000\ninstance_start_timeout_ms = 2000",
        &(worker_section(&stopped)
            + &worker_section(&healthy)
            // Only the healthy worker can hold it.
            + &echo_fn("brief", "memory_mb = 2048\nidle_timeout_s = 1")
            + &echo_fn("small", "")),
    );
    stopped.proc.signal(libc::SIGSTOP);
    let mut c = gw.h1().await;
    // Best fit would pick the stopped worker; the start moves on.
    let r = c.invoke("small", "x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.invoke("brief", "y").await.status, 200);
    // Idle release goes on while exit syncs wait on the stopped worker.
    gw.until(
        "the idle instance released",
        Duration::from_secs(20),
        || async {
            gw.metric("fngate_instance_releases_total{function=\"brief\",reason=\"idle\"}")
                .await
                == 1.0
        },
    )
    .await;
    stopped.proc.signal(libc::SIGCONT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_waiting_under_max_instances_gets_the_instance_another_function_frees() {
    let gw = Gateway::start(
        "max_instances = 1",
        &(echo_fn("first", "idle_timeout_s = 1") + &echo_fn("second", "queue_timeout_ms = 15000")),
    );
    let mut c = gw.h1().await;
    assert_eq!(c.invoke("first", "x").await.status, 200);
    // The only instance is first's; second waits for it to be released
    // (idle after 1 s), not for its own 15 s deadline.
    let t0 = std::time::Instant::now();
    let r = c.invoke("second", "y").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_spares_the_other_invocations_on_its_instance() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let gw = Gateway::start("", &echo_fn("f", "instance_concurrency = 2\ntimeout_s = 6"));
    let (mut a, mut b) = (gw.h1().await, gw.h1().await);
    let in_flight = |n: f64| {
        let gw = &gw;
        async move {
            gw.until("invocations in flight", Duration::from_secs(20), || async {
                gw.metric("fngate_invocations_in_flight{function=\"f\"}")
                    .await
                    == n
            })
            .await
        }
    };
    let stuck = tokio::spawn(async move { a.invoke("f", "fngate:hold:/nonexistent/never").await });
    in_flight(1.0).await;
    // The other call's deadline must fall after the stuck one's: it starts
    // 3 s later (deadline arithmetic, not a wait for an event).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hold = format!("fngate:hold:{}", release.display());
    let other = tokio::spawn(async move { b.invoke("f", hold).await });
    in_flight(2.0).await;
    let r = stuck.await.unwrap();
    assert_eq!(
        r.header("x-fc-error-type"),
        Some("UnhandledInvocationError")
    );
    assert_eq!(r.json()["errorType"], "FunctionTimeout");
    // The other one finishes on the same instance, after that timeout.
    std::fs::write(&release, b"").unwrap();
    let r = other.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-fc-error-type").is_none(), "{}", r.text());
    // Then the drained instance is reclaimed.
    gw.until(
        "the drained instance released",
        Duration::from_secs(20),
        || async { gw.instances_of("f").await.is_empty() },
    )
    .await;
}
