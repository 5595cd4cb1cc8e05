//! Durability under load: asynchronous invocations accepted (202) survive a
//! SIGKILL of the gateway at a random moment, and a deep queue does not
//! starve synchronous calls.

use crate::harness::*;
use crate::submit;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TASKS: usize = 5000;
const WORKERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_invocation_runs_after_a_sigkill() {
    let _serial = crate::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("ran");
    let mut gw = Gateway::start(
        "async_retry_base_ms = 50",
        &echo_fn(
            "sink",
            // The test's directory is writable by isolated instances too.
            &format!(
                "instance_concurrency = 20\nasync_max_concurrency = 20\nwritable_paths = [\"{}\"]",
                dir.path().display()
            ),
        ),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<Mutex<Vec<usize>>> = Default::default();
    // About 1,000 submissions a second; the kill comes once a random
    // number of them (between 500 and 4,000) has been accepted.
    let every = Duration::from_millis(16);
    let target = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u64(0);
        500 + (h.finish() % 3500) as usize
    };
    let pid = gw.proc.child.id() as i32;
    let watch = accepted.clone();
    let killer = tokio::spawn(async move {
        let started = Instant::now();
        while watch.lock().unwrap().len() < target && started.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // SAFETY: a plain syscall on our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    submit(&[&gw], WORKERS, &next, TASKS, &accepted, &out, every).await;
    killer.await.unwrap();
    assert_eq!(
        gw.proc.wait_exit(Duration::from_secs(30)),
        None,
        "killed by a signal"
    );
    let before_kill = accepted.lock().unwrap().len();
    let ran_before = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .count();

    gw.respawn();
    let queued_at_restart = gw.metric("fngate_async_queued").await;
    submit(&[&gw], WORKERS, &next, TASKS, &accepted, &out, every).await;
    gw.until("the queue to drain", Duration::from_secs(300), || async {
        gw.metric("fngate_async_queued").await == 0.0
    })
    .await;

    let mut seen: HashMap<usize, usize> = HashMap::new();
    for l in std::fs::read_to_string(&out).unwrap().lines() {
        *seen.entry(l.parse().unwrap()).or_default() += 1;
    }
    let accepted = accepted.lock().unwrap().clone();
    let lost: Vec<_> = accepted.iter().filter(|i| !seen.contains_key(i)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "durability: {} accepted ({before_kill} before the SIGKILL, target {target}), {ran_before} had run by then, {queued_at_restart} queued at the restart; lost {}, duplicates {duplicates}",
        accepted.len(),
        lost.len()
    );
    assert!(
        before_kill >= target.min(TASKS) - WORKERS,
        "the kill came early"
    );
    assert!(
        accepted.len() >= TASKS - 2 * WORKERS,
        "{} accepted",
        accepted.len()
    );
    assert!(
        lost.is_empty(),
        "{} accepted and never run: {lost:?}",
        lost.len()
    );
    // Nothing ran that was never submitted.
    assert!(seen.keys().all(|i| *i < TASKS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_calls_stay_fast_behind_ten_thousand_queued_tasks() {
    let _serial = crate::SERIAL.lock().await;
    let mut gw = Gateway::start(
        "",
        &echo_fn("f", "instance_concurrency = 20\nasync_max_concurrency = 2"),
    );
    // 10,000 tasks of 100 ms each, two at a time: the queue stays deep.
    let started = Instant::now();
    let sent = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (https, ca, sent) = (gw.https, gw.ca.clone(), sent.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(https, &ca, ClientOpts::h2(true)).await;
                while sent.fetch_add(1, Ordering::Relaxed) < 10_000 {
                    let r = c
                        .send(async_request("f", "fngate:sleep:100", None))
                        .await
                        .unwrap();
                    assert_eq!(r.status, 202, "{}", r.text());
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let submit_s = started.elapsed().as_secs_f64();
    let queued = gw.metric("fngate_async_queued").await;
    assert!(queued >= 9000.0, "{queued} queued");
    assert!(gw.metric("fngate_async_oldest_task_age_seconds").await > 0.0);

    let mut c = gw.h1().await;
    let mut lat = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        let r = c.invoke("f", format!("sync-{i}")).await;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
    eprintln!(
        "deep queue: 10000 accepted in {submit_s:.1} s ({:.0}/s), {queued} queued; sync p50 {p50:.2} ms, p99 {p99:.2} ms",
        10_000.0 / submit_s
    );
    // Bounded, not a benchmark: a starved call would wait for the queue (minutes).
    assert!(p99 < 2000.0, "sync p99 {p99} ms");
    assert!(
        gw.metric("fngate_async_queued").await > 8000.0,
        "still deep"
    );

    gw.proc.signal(libc::SIGTERM);
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(60)), Some(0));
    gw.proc
        .wait_line("kept in the store", Duration::from_secs(1));
}
