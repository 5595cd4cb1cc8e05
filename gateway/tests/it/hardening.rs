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
    let dir = hold_dir();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_and_a_busy_one_is_not() {
    let gw = Gateway::start("http2_idle_timeout_ms = 500", &echo_fn("f", ""));
    let mut busy = gw.h2().await;
    // Longer than the idle timeout, but a stream is in flight all along.
    let r = busy.invoke("f", "fngate:sleep:1500").await;
    assert_eq!(r.status, 200);
    let idle = gw.h2().await;
    assert_eq!(idle.clone().invoke("f", "x").await.status, 200);
    gw.until(
        "the idle connection closed",
        Duration::from_secs(20),
        || async { idle.is_closed() },
    )
    .await;
    assert!(gw.metric("fngate_http2_idle_closes_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_times_out_still_stops_the_async_queue_and_keeps_its_tasks() {
    let gw = Gateway::start(
        "drain_timeout_s = 1\nasync_retry_base_ms = 60000",
        &(echo_fn("held", "") + &echo_fn("flaky", "async_max_retries = 3")),
    );
    let mut c = gw.h1().await;
    // A retry waiting a minute when the gateway stops.
    let mut req = invoke_request("flaky", Bytes::from_static(b"fngate:crash"));
    req.headers_mut()
        .insert("x-fc-invocation-type", "Async".parse().unwrap());
    assert_eq!(c.send(req).await.unwrap().status, 202);
    gw.until(
        "the retry to be scheduled",
        Duration::from_secs(20),
        || async {
            gw.metric("fngate_async_retries_total{function=\"flaky\",reason=\"function_error\"}")
                .await
                == 1.0
        },
    )
    .await;
    // A call the drain cannot wait out.
    let mut c2 = gw.h1().await;
    let _held = tokio::spawn(async move {
        c2.send(invoke_request(
            "held",
            Bytes::from_static(b"fngate:hold:/nonexistent/never"),
        ))
        .await
    });
    // On its instance, not still starting: a stop cancels starts.
    gw.until(
        "the held call in flight",
        Duration::from_secs(20),
        || async {
            gw.metric("fngate_invocations_in_flight{function=\"held\"}")
                .await
                == 1.0
                && gw.proc.log().contains("instance ready function=held")
        },
    )
    .await;
    let mut gw = gw;
    let t0 = std::time::Instant::now();
    gw.proc.signal(libc::SIGTERM);
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let log = gw.proc.log();
    assert!(log.contains("drain timed out"), "{log}");
    // The waiting retry is kept, not dropped: still there after a restart.
    assert!(
        log.lines()
            .any(|l| l.contains("kept in the store") && l.contains("tasks=1")),
        "{log}"
    );
    gw.respawn();
    let mut c = gw.h1().await;
    let r = c
        .send(task_request("GET", "flaky", "?status=Enqueued"))
        .await
        .unwrap();
    let tasks = r.json()["tasks"].clone();
    assert_eq!(tasks.as_array().map(Vec::len), Some(1), "{tasks}");
    assert_eq!(tasks[0]["alreadyRetriedTimes"], 0, "one attempt so far");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_log_that_cannot_be_written_keeps_its_records_and_fails_readiness() {
    // Every write to /dev/full fails (ENOSPC).
    let gw = Gateway::start("", &(echo_fn("f", "") + "[usage]\npath = \"/dev/full\"\n"));
    let mut c = gw.h1().await;
    assert_eq!(c.invoke("f", "x").await.status, 200);
    gw.until("readiness to fail", Duration::from_secs(20), || async {
        gw.admin_get("/readyz").await
            == (503, "not ready: the usage log cannot be written\n".into())
    })
    .await;
    assert!(gw.metric("fngate_usage_log_write_errors_total").await >= 1.0);
    assert!(
        gw.proc
            .log()
            .contains("usage log write failed; retrying, records are kept")
    );
}

/// The gateway's CPU time (user + system) so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 of the full line.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_admin_listener_backs_off() {
    const LIMIT: u64 = 96;
    let gw = Gateway::start_with("threads = 1", &echo_fn("f", ""), |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit in the child before exec, nothing else.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: LIMIT,
                    rlim_max: LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let pid = gw.proc.child.id();
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64
    };
    // Idle admin connections until the gateway has no descriptor left; the
    // rest wait in the backlog, where accept fails at once (EMFILE).
    let mut held = Vec::new();
    for _ in 0..LIMIT + 20 {
        held.push(tokio::net::TcpStream::connect(gw.admin).await.unwrap());
    }
    gw.until(
        "the descriptors exhausted",
        Duration::from_secs(20),
        || async { open_fds() >= LIMIT - 1 },
    )
    .await;
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_time(pid) - before;
    // A spinning accept loop burns a core (about 2 s here); backing off, nothing.
    assert!(
        spent < Duration::from_millis(600),
        "{spent:?} of CPU in 2 s"
    );
    drop(held);
    gw.until(
        "the admin listener serves again",
        Duration::from_secs(20),
        || async { gw.admin_get("/healthz").await.0 == 200 },
    )
    .await;
}

/// A request head over `max_header_bytes`, written whole before the client
/// reads (as Python's `http.client` does): the client gets its 431. Before,
/// the gateway closed with the rest of the head unread, and the kernel's
/// reset reached the client before the answer did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_gets_its_431_while_the_client_still_writes_http1() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start("", &echo_fn("small", ""));
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: localhost\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nhi",
        invoke_path("small"),
        "b".repeat(200 * 1024)
    );
    for round in 0..5 {
        let mut tls = raw_tls(&gw).await;
        // Paced as a client on a real network sends: still writing when
        // the gateway has read its bound and answered.
        for chunk in head.as_bytes().chunks(16 * 1024) {
            tls.write_all(chunk).await.unwrap_or_else(|e| {
                panic!("round {round}: the head could not be written whole: {e}")
            });
            tls.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e} after {answer:?}"));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 431"), "round {round}: {text}");
    }
    gw.until(
        "the lingering closes to end",
        Duration::from_secs(30),
        || async {
            gw.metric("fngate_lingering_closes_total{result=\"complete\"}")
                .await
                == 5.0
        },
    )
    .await;
    // The connection after it is served as usual.
    let mut c = gw.h1().await;
    assert_eq!(c.invoke("small", "after").await.text(), "after");
}

/// The HTTP/2 equivalent: a header block over `max_header_bytes` gets a
/// 431 in the door's shape on its stream, and the connection carries on.
/// (h2's own refusal, past 4x the bound, is a REFUSED_STREAM reset that
/// clients retry; curl's nghttp2 sends no header block over 64 KiB at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_block_gets_431_on_its_stream_http2() {
    let gw = Gateway::start("", &echo_fn("small", ""));
    let mut c = gw.h2().await;
    let mut req = invoke_request("small", Bytes::from_static(b"hi"));
    req.headers_mut()
        .insert("x-big", "b".repeat(100 * 1024).parse().unwrap());
    let r = c.send(req).await.expect("the stream's answer");
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.json()["Code"], "RequestHeaderFieldsTooLarge");
    assert!(r.header("x-fc-request-id").is_some());
    assert_eq!(c.invoke("small", "after").await.text(), "after");
}

/// SIGTERM while an instance starts that never will (its function never
/// listens): the start is cancelled, its caller gets 503 at once, and the
/// gateway exits well within its drain bound. Before, the stop waited for
/// the start's own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_cancels_the_starts_in_progress() {
    let gw = Gateway::start(
        "drain_timeout_s = 20\ninstance_start_timeout_ms = 120000",
        "[[functions]]\nname = \"mute\"\ncommand = [\"/bin/sleep\", \"600\"]\n",
    );
    let mut c = gw.h1().await;
    let call = tokio::spawn(async move {
        let r = c
            .send(invoke_request("mute", Bytes::from_static(b"x")))
            .await;
        (r, std::time::Instant::now())
    });
    gw.until("the start in progress", Duration::from_secs(30), || async {
        gw.instances_of("mute").await.len() == 1
    })
    .await;
    let mut gw = gw;
    let t0 = std::time::Instant::now();
    gw.proc.signal(libc::SIGTERM);
    // Within the drain bound (20 s) by far; the start would take 120 s.
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(15)), Some(0));
    let (r, answered) = call.await.unwrap();
    let r = r.expect("the caller's answer");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["Code"], "ServiceUnavailable", "{}", r.text());
    assert!(answered.duration_since(t0) < Duration::from_secs(15));
    let log = gw.proc.log();
    assert!(!log.contains("drain timed out"), "{log}");
}
