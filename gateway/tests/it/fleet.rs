//! Fleet mode against a real `nats-server -js` on loopback: several real
//! gateway processes share membership, limits and (later) the async queue.

use crate::harness::*;
use crate::tasks::{task, until_status};
use std::time::{Duration, Instant};

/// One gateway of a fleet: its own embedded worker, `functions` as given.
fn member(nats: &Nats, id: &str, functions: &str) -> Gateway {
    Gateway::start("", &format!("{}\n{functions}", nats.fleet(id, "")))
}

async fn live(gw: &Gateway) -> f64 {
    gw.metric("fngate_fleet_live_gateways").await
}

async fn wait_live(gw: &Gateway, n: f64) {
    gw.until(
        &format!("{n} live gateways"),
        Duration::from_secs(20),
        || async { live(gw).await == n && gw.metric("fngate_fleet_limit_share").await == n },
    )
    .await;
}

/// Sends `n` calls one after another; returns (admitted, throttled).
async fn burst(gw: &Gateway, function: &str, n: usize) -> (usize, usize, Duration) {
    let mut c = gw.h1().await;
    let started = Instant::now();
    let (mut ok, mut throttled) = (0, 0);
    for _ in 0..n {
        let r = c.invoke(function, "x").await;
        match r.status {
            200 => ok += 1,
            429 => throttled += 1,
            s => panic!("unexpected status {s}: {}", r.text()),
        }
    }
    (ok, throttled, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_limits_follow_the_fleet_as_gateways_come_and_go() {
    let nats = Nats::start();
    // 0.3/s with a burst of 30 fleet-wide: a gateway's part is a burst of
    // 30/n and one call per 10/3·n s, so a burst's admitted count is exact
    // within the few seconds a test takes.
    let f = echo_fn(
        "limited",
        "instance_concurrency = 100\nrate_limit = { per_second = 0.3, burst = 30 }",
    );
    let a = member(&nats, "gw-a", &f);
    let b = member(&nats, "gw-b", &f);
    let mut c = member(&nats, "gw-c", &f);
    for gw in [&a, &b, &c] {
        wait_live(gw, 3.0).await;
        let (status, body) = gw.admin_get("/readyz").await;
        assert_eq!(status, 200, "{body}");
    }

    // Three gateways: each admits a burst of 10 (plus one per 10 s).
    let (ok, throttled, took) = burst(&a, "limited", 30).await;
    let extra = (took.as_secs_f64() / 10.0).ceil() as usize;
    assert!(
        (10..=10 + extra).contains(&ok),
        "admitted {ok}, throttled {throttled} in {took:?} (a third of the burst expected)"
    );

    // A gateway killed: counted out one TTL after its last heartbeat; the
    // two left each take half.
    c.proc.signal(libc::SIGKILL);
    c.proc.wait_exit(Duration::from_secs(10));
    wait_live(&a, 2.0).await;
    wait_live(&b, 2.0).await;
    let (ok, _, took) = burst(&b, "limited", 30).await;
    let extra = (took.as_secs_f64() / (20.0 / 3.0)).ceil() as usize;
    assert!(
        (15..=15 + extra).contains(&ok),
        "admitted {ok} in {took:?} (half of the burst expected)"
    );

    // A graceful stop leaves at once (its entry is deleted), well within
    // the TTL the killed one needed.
    let mut b = b;
    b.proc.signal(libc::SIGTERM);
    assert_eq!(b.proc.wait_exit(Duration::from_secs(30)), Some(0));
    wait_live(&a, 1.0).await;
    drop(c);

    // The engine gone: the gateway says so and keeps serving on its last view.
    let mut nats = nats;
    nats.proc.signal(libc::SIGKILL);
    nats.proc.wait_exit(Duration::from_secs(10));
    a.until(
        "not ready without NATS",
        Duration::from_secs(20),
        || async { a.admin_get("/readyz").await.0 == 503 },
    )
    .await;
    let (_, why) = a.admin_get("/readyz").await;
    assert!(why.contains("NATS") || why.contains("heartbeat"), "{why}");
    let mut client = a.h1().await;
    let r = client.invoke("limited", "x").await;
    assert!([200, 429].contains(&r.status), "{}", r.status);
    assert_eq!(live(&a).await, 1.0);
    assert!(a.metric("fngate_fleet_heartbeat_age_seconds").await > 0.0);
}

/// A sample of a worker's own metrics.
async fn worker_metric(w: &WorkerProc, name: &str) -> f64 {
    let addr = w.url.trim_start_matches("http://").parse().unwrap();
    let (_, text) = plain_get(addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_gateways_instances_are_released_by_the_workers_within_the_lease_even_if_it_restarts()
 {
    let nats = Nats::start();
    // Two shared workers of 512 MiB: eight 128 MiB instances fill both.
    let workers = [nats.worker(512), nats.worker(512)];
    let f = echo_fn("held", "memory_mb = 128\ninstance_concurrency = 1");
    let start = |id: &str| {
        Gateway::start(
            "",
            &format!("{}\n{f}", nats.fleet(id, "discover_workers = true")),
        )
    };
    let mut x = start("gw-x");
    let y = start("gw-y");
    for gw in [&x, &y] {
        gw.until(
            "both workers learned from the fleet",
            Duration::from_secs(20),
            || async { gw.metric("fngate_fleet_workers").await == 2.0 },
        )
        .await;
    }

    // gw-x fills both workers with calls that never end on their own.
    let never = x.dir.path().join("never");
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = x.h1().await;
        let payload = format!("fngate:hold:{}", never.display());
        // Ends in an error when gw-x dies.
        held.push(tokio::spawn(async move {
            c.send(invoke_request("held", payload.into())).await
        }));
    }
    x.until(
        "eight instances on gw-x",
        Duration::from_secs(60),
        || async {
            x.instances_of("held").await.len() == 8
                && x.metric("fngate_invocations_in_flight{function=\"held\"}")
                    .await
                    == 8.0
        },
    )
    .await;
    let hosted = || async {
        let mut n = 0;
        for w in &workers {
            let addr = w.url.trim_start_matches("http://").parse().unwrap();
            let (_, body) = plain_get(addr, "/v1/instances").await;
            n += serde_json::from_str::<Vec<serde_json::Value>>(&body)
                .unwrap()
                .len();
        }
        n
    };
    x.until(
        "the workers to host all eight",
        Duration::from_secs(60),
        || async { hosted().await == 8 },
    )
    .await;
    let mut c = y.h1().await;
    let r = c.invoke("held", "x").await;
    assert_eq!(r.status, 429, "the workers are full: {}", r.text());

    // gw-x dies: its lease (its heartbeat) expires, the workers release its
    // instances, and gw-y can place again.
    x.proc.signal(libc::SIGKILL);
    x.proc.wait_exit(Duration::from_secs(10));
    let killed = std::time::Instant::now();
    for h in held {
        let _ = h.await;
    }
    // Restarted at once under the same id: its heartbeat resumes before
    // the old one's TTL ends, yet what the dead process started is not its.
    x.respawn();
    // The TTL counts from the last heartbeat; the margin is for a loaded machine.
    let deadline = killed + Duration::from_millis(1500) + Duration::from_secs(8);
    loop {
        let mut released = 0.0;
        for w in &workers {
            released += worker_metric(w, "fngate_sandbox_lease_releases_total").await;
        }
        if released == 8.0 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let mut lists = String::new();
            for w in &workers {
                let addr = w.url.trim_start_matches("http://").parse().unwrap();
                lists += &plain_get(addr, "/v1/instances").await.1;
                lists += "\n";
            }
            panic!(
                "{released} of 8 instances released 9.5 s after gw-x died; instances:\n{lists}worker logs:\n{}\n---\n{}",
                workers[0].proc.log(),
                workers[1].proc.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    eprintln!("lease: gw-x's 8 instances released {took:?} after its death (member TTL 1.5 s)");
    // The gateway that joined anew learned the workers from the fleet.
    x.until(
        "the restarted gw-x to see both workers",
        Duration::from_secs(20),
        || async { x.metric("fngate_fleet_workers").await == 2.0 },
    )
    .await;
    let mut cx = x.h1().await;
    assert_eq!(cx.invoke("held", "x").await.status, 200);
    let r = c.invoke("held", "x").await;
    assert_eq!(r.status, 200, "capacity back for gw-y: {}", r.text());
    for w in &workers {
        assert_eq!(
            worker_metric(w, "fngate_sandbox_instance_crashes_total").await,
            0.0
        );
    }
}

/// Offers about twice `rate` per second to `function`, spread evenly over
/// `gws`, for `secs`; returns each gateway's admitted count and the window
/// (first send to last answer) they were admitted in.
async fn offer_twice(
    gws: &[&Gateway],
    function: &str,
    rate: f64,
    secs: f64,
) -> (Vec<usize>, Duration) {
    let every = Duration::from_secs_f64(gws.len() as f64 / (2.0 * rate));
    let sends = (secs / every.as_secs_f64()) as usize;
    let mut clients = Vec::new();
    for gw in gws {
        clients.push(gw.h1().await);
    }
    let started = Instant::now();
    let first = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let function = function.to_string();
        // Interleaved: one even stream of calls, not the gateways' calls
        // arriving together (the first to ask would win every token).
        let phase = every * i as u32 / gws.len() as u32;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first + phase, every);
            let mut ok = 0;
            for _ in 0..sends {
                tick.tick().await;
                let r = c.invoke(&function, "x").await;
                match r.status {
                    200 => ok += 1,
                    429 => {}
                    s => panic!("unexpected {s}: {}", r.text()),
                }
            }
            ok
        }));
    }
    let mut admitted = Vec::new();
    for t in tasks {
        admitted.push(t.await.unwrap());
    }
    (admitted, started.elapsed())
}

const RATE: f64 = 40.0;
const BURST: u32 = 10;

/// `slow` refills one call in 100 s: what it admits is its burst alone.
const SLOW_BURST: u32 = 5;

fn rated(nats: &Nats, id: &str, extra: &str) -> Gateway {
    let f = echo_fn(
        "rated",
        &format!(
            "instance_concurrency = 100\nrate_limit = {{ per_second = {RATE}, burst = {BURST} }}"
        ),
    );
    let slow = echo_fn(
        "slow",
        &format!("rate_limit = {{ per_second = 0.01, burst = {SLOW_BURST} }}"),
    );
    Gateway::start("", &format!("{}\n{f}\n{slow}", nats.fleet(id, extra)))
}

/// Sends `n` calls to `slow`, round robin over `gws`, one after another;
/// the count admitted.
async fn burst_of_slow(gws: &[&Gateway], n: usize) -> usize {
    let mut clients = Vec::new();
    for gw in gws {
        clients.push(gw.h1().await);
    }
    let mut admitted = 0;
    for i in 0..n {
        let r = clients[i % gws.len()].invoke("slow", "x").await;
        match r.status {
            200 => admitted += 1,
            429 => {}
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    admitted
}

/// Three gateways of one fleet with the rated function, all seeing three.
async fn three_rated(nats: &Nats, extra: &str) -> [Gateway; 3] {
    let gws = [
        rated(nats, "gw-1", extra),
        rated(nats, "gw-2", extra),
        rated(nats, "gw-3", extra),
    ];
    for gw in &gws {
        wait_live(gw, 3.0).await;
    }
    gws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_holds_a_fleet_to_the_rate_and_falls_back_to_split_without_redis() {
    let nats = Nats::start();
    let mut redis = Redis::start();
    let extra = format!(
        "rate_limits = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 200",
        redis.url
    );
    let gws = three_rated(&nats, &extra).await;
    let gws: Vec<&Gateway> = gws.iter().collect();
    // A fresh key admits exactly its burst, fleet-wide, as governor does.
    assert_eq!(burst_of_slow(&gws, 9).await, SLOW_BURST as usize);
    let (each, window) = offer_twice(&gws, "rated", RATE, 3.0).await;
    let admitted: usize = each.iter().sum();
    let exact = RATE * window.as_secs_f64() + f64::from(BURST);
    eprintln!("redis mode: admitted {admitted} ({each:?}) in {window:?}; R·t + burst = {exact:.0}");
    assert!(
        admitted as f64 <= 1.05 * exact,
        "admitted {admitted}, at most {exact:.0} + 5%"
    );
    assert!(
        admitted as f64 >= 0.95 * RATE * window.as_secs_f64(),
        "admitted {admitted}, at least R·t - 5% ({:.0})",
        RATE * window.as_secs_f64()
    );
    assert!(
        each.iter().all(|n| *n > 0),
        "spread over the gateways: {each:?}"
    );
    for gw in &gws {
        assert_eq!(
            gw.metric("fngate_fleet_limit_fallbacks_total{reason=\"timeout\"}")
                .await,
            0.0
        );
        assert_eq!(
            gw.metric("fngate_fleet_limit_fallbacks_total{reason=\"error\"}")
                .await,
            0.0
        );
    }

    // Redis gone: every gateway goes on, on its split share, and says so.
    redis.proc.signal(libc::SIGKILL);
    redis.proc.wait_exit(Duration::from_secs(10));
    let (each, window) = offer_twice(&gws, "rated", RATE, 2.0).await;
    let admitted: usize = each.iter().sum();
    let split = RATE * window.as_secs_f64() + 3.0 * f64::from(BURST.div_ceil(3));
    eprintln!("redis down: admitted {admitted} ({each:?}) in {window:?}; split bound {split:.0}");
    assert!(
        each.iter().all(|n| *n > 0),
        "every gateway still admits: {each:?}"
    );
    assert!(
        admitted as f64 <= 1.05 * split,
        "admitted {admitted}, split bound {split:.0}"
    );
    for gw in &gws {
        let mut fallbacks = 0.0;
        for reason in ["timeout", "error", "unavailable"] {
            fallbacks += gw
                .metric(&format!(
                    "fngate_fleet_limit_fallbacks_total{{reason=\"{reason}\"}}"
                ))
                .await;
        }
        assert!(fallbacks > 0.0, "no fallback counted on {}", gw.https);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_mode_holds_a_fleet_within_its_documented_bound() {
    let nats = Nats::start();
    let gws = three_rated(&nats, "").await;
    let gws: Vec<&Gateway> = gws.iter().collect();
    // An even spread takes each gateway's ceil(B / N): the bound's N·ceil(B/N).
    assert_eq!(
        burst_of_slow(&gws, 9).await,
        3 * SLOW_BURST.div_ceil(3) as usize
    );
    let (each, window) = offer_twice(&gws, "rated", RATE, 3.0).await;
    let admitted: usize = each.iter().sum();
    // README: an even spread admits at most R·t + N·ceil(burst / N).
    let bound = RATE * window.as_secs_f64() + 3.0 * f64::from(BURST.div_ceil(3));
    eprintln!("split mode: admitted {admitted} ({each:?}) in {window:?}; bound {bound:.0}");
    assert!(
        admitted as f64 <= 1.05 * bound,
        "admitted {admitted}, bound {bound:.0}"
    );
    assert!(
        admitted as f64 >= 0.9 * RATE * window.as_secs_f64(),
        "admitted {admitted}, R·t = {:.0}",
        RATE * window.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_dashboard_queries_real_prometheus_and_every_panel_has_data() {
    use crate::observability::{Prometheus, check_dashboard, query, two_more_scrapes, values};
    let nats = Nats::start();
    let redis = Redis::start();
    let worker = nats.worker(1024);
    let extra = format!(
        "discover_workers = true\nrate_limits = \"redis\"\nredis_url = \"{}\"",
        redis.url
    );
    let f = echo_fn(
        "limited",
        "instance_concurrency = 10\nrate_limit = { per_second = 2.0, burst = 2 }",
    );
    let start = |id: &str| Gateway::start("", &format!("{}\n{f}", nats.fleet(id, &extra)));
    let (a, b, mut z) = (start("gw-a"), start("gw-b"), start("gw-z"));
    for gw in [&a, &b, &z] {
        gw.until(
            "the worker learned from the fleet",
            Duration::from_secs(20),
            || async { gw.metric("fngate_fleet_workers").await == 1.0 },
        )
        .await;
    }
    let worker_addr = worker.url.trim_start_matches("http://").parse().unwrap();
    let prometheus = Prometheus::start(&[
        ("gateway", &[a.admin, b.admin]),
        ("sandbox", &[worker_addr]),
    ]);
    let prom = prometheus.addr;
    a.until(
        "Prometheus scraped every target",
        Duration::from_secs(30),
        || async { values(&query(prom, "sum(up)").await).first() == Some(&3.0) },
    )
    .await;

    // gw-z starts an instance and dies: the worker releases it (its lease).
    let mut cz = z.h1().await;
    assert_eq!(cz.invoke("limited", "z").await.status, 200);
    z.proc.signal(libc::SIGKILL);
    z.proc.wait_exit(Duration::from_secs(10));
    // The fleet's rate refuses most of a burst, the repeats from the cache.
    for gw in [&a, &b] {
        let mut c = gw.h1().await;
        let mut throttled = 0;
        for _ in 0..10 {
            let r = c.invoke("limited", "x").await;
            throttled += usize::from(r.status == 429);
        }
        assert!(throttled > 0);
    }
    a.until(
        "Prometheus saw the lease release and the cached denials",
        Duration::from_secs(30),
        || async {
            let l = values(&query(prom, "sum(fngate_sandbox_lease_releases_total)").await);
            let d = values(&query(prom, "sum(fngate_fleet_limit_cached_denials_total)").await);
            l.first().is_some_and(|x| *x >= 1.0) && d.first().is_some_and(|x| *x >= 1.0)
        },
    )
    .await;
    two_more_scrapes(&a, prom).await;
    let checked = check_dashboard(prom, "fngate-fleet.json", "limited").await;
    assert!(checked >= 10, "checked {checked} expressions");
}

/// Calls of `held` running on `gw` now.
async fn in_flight(gw: &Gateway) -> f64 {
    gw.metric("fngate_invocations_in_flight{function=\"held\"}")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_stopped_through_one_gateway_is_killed_where_it_runs() {
    let nats = Nats::start();
    let f = echo_fn("held", "");
    let (a, b) = (member(&nats, "gw-a", &f), member(&nats, "gw-b", &f));
    for gw in [&a, &b] {
        wait_live(gw, 2.0).await;
    }
    let never = a.dir.path().join("never");
    let mut ca = a.h1().await;
    let r = ca
        .send(async_request(
            "held",
            format!("fngate:hold:{}", never.display()),
            Some("stop_me"),
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    // Whichever gateway leased it runs it; the stop goes through the other.
    a.until("an attempt to run", Duration::from_secs(30), || async {
        in_flight(&a).await + in_flight(&b).await == 1.0
    })
    .await;
    let (runner, other) = if in_flight(&a).await == 1.0 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    // On its instance, not still waiting for the cold start: a stop then
    // only cancels the wait, and no instance is released "stopped".
    runner
        .until(
            "the attempt on a ready instance",
            Duration::from_secs(30),
            || async {
                runner
                    .instances_of("held")
                    .await
                    .iter()
                    .any(|i| i["state"] == "ready" && i["in_flight"] == 1)
            },
        )
        .await;
    let mut c = other.h1().await;
    let held = format!("fngate:hold:{}", never.display());
    // Running elsewhere: its payload is read from the queue's message.
    let t = task(&mut c, "held", "stop_me").await;
    assert_eq!(t["status"], "Running", "{t}");
    assert_eq!(t["taskPayload"], held.as_str(), "{t}");
    let r = c
        .send(task_request("PUT", "held", "/stop_me/stop"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    runner
        .until(
            "the attempt killed where it ran",
            Duration::from_secs(20),
            || async {
                runner
                    .metric("fngate_instance_releases_total{function=\"held\",reason=\"stopped\"}")
                    .await
                    == 1.0
            },
        )
        .await;
    assert_eq!(in_flight(runner).await, 0.0);
    let t = task(&mut c, "held", "stop_me").await;
    assert_eq!(t["status"], "Stopped", "{t}");
    // The message is gone once the task is done: its record keeps the
    // payload, for every gateway.
    assert_eq!(t["taskPayload"], held.as_str(), "{t}");
    let r = ca
        .send(async_request("held", "done body", Some("done_one")))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let mut cb = b.h1().await;
    for (gw, conn) in [(&a, &mut ca), (&b, &mut cb)] {
        let t = until_status(
            gw,
            conn,
            "held",
            "done_one",
            "Succeeded",
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(t["taskPayload"], "done body", "{t}");
    }
}

#[test]
fn a_worker_that_cannot_reach_its_fleet_refuses_to_start() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new(workspace_bin("sandbox-runtime"));
    cmd.args(["--listen", "127.0.0.1:0", "--isolation", "process"])
        .args(["--fleet-nats-url", &format!("nats://127.0.0.1:{port}")])
        .args(["--fleet-connect-timeout-ms", "300"]);
    let mut p = Proc::spawn(cmd);
    assert_eq!(p.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(p.log().contains("cannot connect to NATS"), "{}", p.log());
}

/// Sends `n` calls to `function` on `gw` that hold until `release` exists,
/// each on a connection of its own; returns once `holding` more are in
/// flight and the others answered: the answers, and the calls still held.
async fn hold(
    gw: &Gateway,
    function: &str,
    release: &std::path::Path,
    n: usize,
    holding: usize,
) -> (Vec<Resp>, Vec<tokio::task::JoinHandle<Resp>>) {
    let metric = format!("fngate_invocations_in_flight{{function=\"{function}\"}}");
    let before = gw.metric(&metric).await;
    let calls = spawn_holds(gw, function, release, n).await;
    gw.until(
        &format!("{holding} of {n} calls held, the others answered"),
        Duration::from_secs(60),
        || async {
            calls.iter().filter(|c| c.is_finished()).count() == n - holding
                && gw.metric(&metric).await == before + holding as f64
        },
    )
    .await;
    let (mut answered, mut held) = (Vec::new(), Vec::new());
    for c in calls {
        match c.is_finished() {
            true => answered.push(c.await.unwrap()),
            false => held.push(c),
        }
    }
    (answered, held)
}

/// `n` calls to `function` on `gw` that hold until `release` exists.
async fn spawn_holds(
    gw: &Gateway,
    function: &str,
    release: &std::path::Path,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Resp>> {
    let mut calls = Vec::new();
    for _ in 0..n {
        let mut c = gw.h1().await;
        let function = function.to_string();
        let payload = format!("fngate:hold:{}", release.display());
        // A call held by a gateway that is killed ends without an answer.
        calls.push(tokio::spawn(async move {
            match c.send(invoke_request(&function, payload.into())).await {
                Ok(r) => r,
                Err(e) => Resp {
                    status: 0,
                    headers: Default::default(),
                    body: e.to_string().into(),
                },
            }
        }));
    }
    calls
}

fn refused_by(r: &Resp, limit: &str) -> bool {
    r.status == 429 && r.text().contains(limit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_counts_the_fleets_instances_and_starts_exactly() {
    let nats = Nats::start();
    let redis = Redis::start();
    let extra = format!(
        "rate_limits = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 200",
        redis.url
    );
    // Three instances and four starts a minute (one every 15 s) for the fleet.
    let gateway = "max_instances = 3\nmax_instance_starts_per_minute = 4";
    let f = echo_fn("held", "memory_mb = 128\ninstance_concurrency = 1");
    let start = |id: &str| Gateway::start(gateway, &format!("{}\n{f}", nats.fleet(id, &extra)));
    let (mut g1, g2) = (start("gw-1"), start("gw-2"));
    for gw in [&g1, &g2] {
        wait_live(gw, 2.0).await;
    }
    let release = hold_file("release");
    let t0 = Instant::now();
    // One gateway alone reaches the fleet's total (its split share is 2)...
    let (answered, _held) = hold(&g1, "held", &release, 4, 3).await;
    assert!(
        refused_by(&answered[0], "max_instances"),
        "{}",
        answered[0].text()
    );
    assert_eq!(g1.instances_of("held").await.len(), 3);
    // ...and the other, which started nothing, finds the fleet full.
    let mut c2 = g2.h1().await;
    let r = c2.invoke("held", "x").await;
    assert!(refused_by(&r, "max_instances"), "{} {}", r.status, r.text());

    // A killed gateway's instances leave the count as their leases lapse.
    g1.proc.signal(libc::SIGKILL);
    g1.proc.wait_exit(Duration::from_secs(10));
    g2.until(
        "a start on gw-2 once gw-1's leases lapsed",
        Duration::from_secs(30),
        || async {
            let r = g2.h1().await.invoke("held", "x").await;
            match r.status {
                200 => true,
                429 if refused_by(&r, "max_instances") => false,
                s => panic!("unexpected {s}: {}", r.text()),
            }
        },
    )
    .await;
    // That was the fleet's fourth start this minute: a fifth waits for the
    // rate, though only one instance lives now. Two held calls need it.
    let calls = spawn_holds(&g2, "held", &release, 2).await;
    // Decided: one call answered, or both held on instances of their own
    // (the in-flight gauge also counts a call whose start is being decided).
    g2.until(
        "the fifth start decided",
        Duration::from_secs(60),
        || async {
            let holding = g2
                .instances_of("held")
                .await
                .iter()
                .filter(|i| i["state"] == "ready" && i["in_flight"] == 1)
                .count();
            calls.iter().any(|c| c.is_finished()) || holding == 2
        },
    )
    .await;
    // The first start came after t0: under 15 s since, the rate refuses.
    let elapsed = t0.elapsed();
    match calls.iter().position(|c| c.is_finished()) {
        Some(i) => {
            let r = calls.into_iter().nth(i).unwrap().await.unwrap();
            assert!(
                refused_by(&r, "max_instance_starts_per_minute"),
                "{}",
                r.text()
            );
        }
        None => assert!(
            elapsed >= Duration::from_secs(15),
            "a fifth start within {elapsed:?} of the first; fallbacks: {}",
            fallbacks(&g2).await
        ),
    }
    std::fs::write(&release, b"").unwrap();
    assert_eq!(fallbacks(&g2).await, 0.0);
}

/// Checks Redis did not answer in time (each is followed by a second of
/// "unavailable" ones).
async fn fallbacks(gw: &Gateway) -> f64 {
    let mut n = 0.0;
    for reason in ["timeout", "error"] {
        n += gw
            .metric(&format!(
                "fngate_fleet_limit_fallbacks_total{{reason=\"{reason}\"}}"
            ))
            .await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_mode_shares_max_concurrency_and_takes_it_back_when_a_gateway_leaves() {
    let nats = Nats::start();
    let f = echo_fn("busy", "instance_concurrency = 10\nmax_concurrency = 4");
    let (a, b) = (member(&nats, "gw-a", &f), member(&nats, "gw-b", &f));
    for gw in [&a, &b] {
        wait_live(gw, 2.0).await;
    }
    let release = hold_file("release");
    // Two gateways: each admits ceil(4 / 2) = 2 at a time.
    let (answered, held_a) = hold(&a, "busy", &release, 3, 2).await;
    assert!(
        refused_by(&answered[0], "max_concurrency"),
        "{}",
        answered[0].text()
    );
    let (answered, _held_b) = hold(&b, "busy", &release, 3, 2).await;
    assert!(
        refused_by(&answered[0], "max_concurrency"),
        "{}",
        answered[0].text()
    );

    // gw-b leaves: gw-a's share is the whole limit, its two calls still held.
    b.proc.signal(libc::SIGTERM);
    wait_live(&a, 1.0).await;
    let (answered, held_more) = hold(&a, "busy", &release, 3, 2).await;
    assert!(
        refused_by(&answered[0], "max_concurrency"),
        "{}",
        answered[0].text()
    );
    assert_eq!(
        a.metric("fngate_invocations_in_flight{function=\"busy\"}")
            .await,
        4.0
    );
    std::fs::write(&release, b"").unwrap();
    for c in held_a.into_iter().chain(held_more) {
        assert_eq!(c.await.unwrap().status, 200);
    }
}

/// A task's record through `c`, once it answers 200 (an engine electing a
/// new leader may answer 503 meanwhile).
async fn task_once_succeeded(gw: &Gateway, c: &mut Client, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.send(task_request("GET", "held", &format!("/{id}"))).await;
        if let Ok(r) = &r
            && r.status == 200
            && r.json()["status"] == "Succeeded"
        {
            return r.json();
        }
        assert!(
            Instant::now() < deadline,
            "task {id}: {:?}\nlog:\n{}",
            r.map(|r| r.text()),
            gw.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_fleet_keeps_its_queue_when_a_nats_server_dies() {
    let mut cluster = Nats::cluster(3);
    let f = echo_fn("held", "instance_concurrency = 20");
    let start = |id: &str, nodes: &[Nats]| {
        let nodes: Vec<&Nats> = nodes.iter().collect();
        let extra = "replicas = 3\nasync_ack_wait_ms = 3000";
        Gateway::start("", &format!("{}\n{f}", fleet_section(&nodes, id, extra)))
    };
    let (a, b) = (start("gw-a", &cluster), start("gw-b", &cluster));
    for gw in [&a, &b] {
        wait_live(gw, 2.0).await;
    }
    let go = hold_file("go");
    let held = format!("fngate:hold:{}", go.display());
    let (mut ca, mut cb) = (a.h1().await, b.h1().await);
    for i in 0..10 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        let r = c
            .send(async_request(
                "held",
                held.clone(),
                Some(&format!("before-{i}")),
            ))
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
    }

    // Attempts under way when the server dies: their progress and results
    // go to the queue's new leader.
    a.until("attempts running", Duration::from_secs(30), || async {
        in_flight(&a).await + in_flight(&b).await >= 1.0
    })
    .await;
    // Every stream and bucket has three copies; the queue's leader is the
    // server to kill.
    let js = async_nats::jetstream::new(async_nats::connect(&cluster[0].url).await.unwrap());
    let mut leader = String::new();
    for name in ["fngate_queue", "KV_fngate_tasks", "KV_fngate_gateways"] {
        let mut s = js.get_stream(name).await.unwrap();
        let info = s.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let c = info.cluster.clone().unwrap();
        assert_eq!(c.replicas.len(), 2, "{name}: {c:?}");
        if name == "fngate_queue" {
            leader = c.leader.unwrap();
        }
    }
    drop(js);
    // Servers are named n1, n2, ... in order.
    let dead = leader.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    let mut killed = cluster.remove(dead);
    killed.proc.signal(libc::SIGKILL);
    killed.proc.wait_exit(Duration::from_secs(10));

    // The held attempts finish; calls accepted after the loss too.
    std::fs::write(&go, "").unwrap();
    let mut after = 0;
    let (killed_at, mut refused, mut first) = (Instant::now(), 0, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while after < 10 {
        let c = if after % 2 == 0 { &mut ca } else { &mut cb };
        let r = c
            .send(async_request(
                "held",
                "after",
                Some(&format!("after-{after}")),
            ))
            .await
            .unwrap();
        match r.status {
            202 => {
                after += 1;
                first.get_or_insert(killed_at.elapsed());
            }
            // While the queue elects a new leader: FC's retryable answer.
            503 => {
                refused += 1;
                assert_eq!(r.json()["Code"], "ServiceUnavailable", "{}", r.text());
                assert!(Instant::now() < deadline, "{}", r.text());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    eprintln!(
        "replicated queue: server {leader} (the queue's leader) killed; first task accepted {:?} later, {refused} refused meanwhile",
        first.unwrap()
    );
    for i in 0..10 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        let t = task_once_succeeded(&a, c, &format!("before-{i}")).await;
        assert_eq!(t["taskPayload"], held.as_str(), "{t}");
        let t = task_once_succeeded(&b, c, &format!("after-{i}")).await;
        assert_eq!(t["taskPayload"], "after", "{t}");
    }
    // Membership came through too, seconds past the member TTL: both
    // heartbeat (ready) and count each other.
    for gw in [&a, &b] {
        gw.until("ready and two live", Duration::from_secs(20), || async {
            plain_get(gw.admin, "/readyz").await.0 == 200 && live(gw).await == 2.0
        })
        .await;
    }
}
