//! Fleet mode under load: three gateways share one JetStream queue, one is
//! SIGKILLed mid-run, a fourth joins later; every accepted task runs.

use crate::harness::*;
use crate::submit;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TASKS: usize = 3000;
/// Submitting connections per gateway.
const PER_GATEWAY: usize = 4;
/// Tasks that hold their instance until released: some are running on the
/// gateway that is killed.
const HOLDERS: usize = 30;

fn member(nats: &Nats, id: &str, dir: &Path) -> Gateway {
    let keys = format!(
        "instance_concurrency = 20\nasync_max_concurrency = 20\nwritable_paths = [\"{}\"]",
        dir.display()
    );
    Gateway::start(
        "async_retry_base_ms = 50",
        &format!(
            "{}\n{}\n{}",
            nats.fleet(id, "async_ack_wait_ms = 2000"),
            echo_fn("sink", &keys),
            echo_fn("holder", &keys),
        ),
    )
}

async fn in_flight(gw: &Gateway, function: &str) -> f64 {
    gw.metric(&format!(
        "fngate_invocations_in_flight{{function=\"{function}\"}}"
    ))
    .await
}

fn runs(out: &Path) -> HashMap<usize, usize> {
    let mut seen = HashMap::new();
    for l in std::fs::read_to_string(out).unwrap_or_default().lines() {
        *seen.entry(l.parse().unwrap()).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_runs_every_accepted_task_when_a_gateway_dies_and_another_joins() {
    let _serial = crate::SERIAL.lock().await;
    let nats = Nats::start();
    let dir = hold_dir();
    let out: PathBuf = dir.path().join("ran");
    let a = member(&nats, "gw-a", dir.path());
    let b = member(&nats, "gw-b", dir.path());
    let mut c = member(&nats, "gw-c", dir.path());
    for gw in [&a, &b, &c] {
        gw.until("three live gateways", Duration::from_secs(20), || async {
            gw.metric("fngate_fleet_live_gateways").await == 3.0
        })
        .await;
    }

    // Holders, spread over the fleet by the shared consumer: gw-c must be
    // running at least one when it is killed.
    let release = dir.path().join("release");
    let mut cc = c.h1().await;
    for i in 0..HOLDERS {
        let hold = format!("fngate:hold:{}", release.display());
        let r = cc
            .send(async_request("holder", hold, Some(&format!("holder_{i}"))))
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
    }
    c.until("gw-c to run a holder", Duration::from_secs(30), || async {
        in_flight(&c, "holder").await >= 1.0
    })
    .await;

    // Phase 1: two thirds of the tasks over three gateways; gw-c is killed
    // once a third of them has been accepted.
    let next = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<Mutex<Vec<usize>>> = Default::default();
    let every = Duration::from_millis(10);
    let pid = c.proc.child.id() as i32;
    let watch = accepted.clone();
    let killer = tokio::spawn(async move {
        let started = Instant::now();
        while watch.lock().unwrap().len() < TASKS / 3
            && started.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // SAFETY: a plain syscall on our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        watch.lock().unwrap().len()
    });
    submit(
        &[&a, &b, &c],
        PER_GATEWAY,
        &next,
        2 * TASKS / 3,
        &accepted,
        &out,
        every,
    )
    .await;
    let at_kill = killer.await.unwrap();
    assert_eq!(c.proc.wait_exit(Duration::from_secs(30)), None, "killed");
    let held_by_others = in_flight(&a, "holder").await + in_flight(&b, "holder").await;
    std::fs::write(&release, b"").unwrap();

    // Phase 2: a gateway joins and takes its share of the rest.
    let d = member(&nats, "gw-d", dir.path());
    for gw in [&a, &b, &d] {
        gw.until("gw-c out, gw-d in", Duration::from_secs(20), || async {
            gw.metric("fngate_fleet_live_gateways").await == 3.0
        })
        .await;
    }
    next.store(2 * TASKS / 3, Ordering::Relaxed);
    submit(
        &[&a, &b, &d],
        PER_GATEWAY,
        &next,
        TASKS,
        &accepted,
        &out,
        every,
    )
    .await;

    let accepted = accepted.lock().unwrap().clone();
    let started = Instant::now();
    while !accepted.iter().all(|i| runs(&out).contains_key(i))
        && started.elapsed() < Duration::from_secs(180)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = runs(&out);
    let lost: Vec<_> = accepted.iter().filter(|i| !seen.contains_key(i)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let ran_by = |gw: &Gateway| {
        let gw = gw.admin;
        async move {
            let (_, text) = plain_get(gw, "/metrics").await;
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "fngate_async_results_total{function=\"sink\",result=\"succeeded\"} ",
                    )?
                    .parse::<f64>()
                    .ok()
                })
                .unwrap_or(0.0)
        }
    };
    let (ra, rb, rd) = (ran_by(&a).await, ran_by(&b).await, ran_by(&d).await);
    eprintln!(
        "fleet queue: {} accepted ({at_kill} when gw-c was killed); succeeded on gw-a {ra}, gw-b {rb}, gw-d {rd}; lost {}, duplicates {duplicates}",
        accepted.len(),
        lost.len()
    );
    assert!(
        accepted.len() >= TASKS - 3 * PER_GATEWAY,
        "{} accepted",
        accepted.len()
    );
    assert!(at_kill >= TASKS / 3, "the kill came early");
    if !lost.is_empty() {
        // What the gateways said went wrong, for whoever reads the failure.
        for (name, gw) in [("gw-a", &a), ("gw-b", &b), ("gw-c", &c), ("gw-d", &d)] {
            let log = gw.proc.log();
            let odd = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("failed"));
            for l in odd.take(40) {
                eprintln!("{name}: {l}");
            }
            eprintln!("{name}: {} log lines", log.lines().count());
        }
        let mut ca = a.h1().await;
        for i in &lost {
            let id = crate::REQUEST_IDS.lock().unwrap().get(i).cloned();
            let Some(id) = id else { continue };
            let r = ca
                .send(task_request("GET", "sink", &format!("/{id}")))
                .await;
            let record = r.map(|r| r.text()).unwrap_or_default();
            eprintln!("lost task {i} ({id}): {record}");
        }
    }
    assert!(
        lost.is_empty(),
        "{} accepted and never run: {lost:?}",
        lost.len()
    );
    assert!(seen.keys().all(|i| *i < TASKS));
    assert!(rd > 0.0, "the gateway that joined ran none of the tasks");

    // Every holder succeeded, the ones gw-c held after a second attempt elsewhere.
    let mut retried = 0;
    let mut cl = a.h1().await;
    for i in 0..HOLDERS {
        let started = Instant::now();
        loop {
            let r = cl
                .send(task_request("GET", "holder", &format!("/holder_{i}")))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            let t = r.json();
            if t["status"] == "Succeeded" {
                retried += usize::from(t["alreadyRetriedTimes"].as_u64().unwrap() > 0);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "holder_{i} did not succeed: {t}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "fleet queue: {retried} of {HOLDERS} holders ran a second time after gw-c's death ({held_by_others} were running elsewhere then)"
    );
    assert!(retried >= 1, "no holder was taken over from gw-c");
    // Any gateway answers the task API: a task gw-a accepted, read on gw-b.
    let mut ca = a.h1().await;
    let r = ca
        .send(async_request(
            "sink",
            format!("fngate:append:{}:{TASKS}", out.display()),
            Some("fleet_task_1"),
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let mut cb = b.h1().await;
    let started = Instant::now();
    loop {
        let r = cb
            .send(task_request("GET", "sink", "/fleet_task_1"))
            .await
            .unwrap();
        if r.status == 200 && r.text().contains("Succeeded") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "task API on gw-b: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
