//! Bin-pack routing and best-fit placement, observed through real instances.

use crate::harness::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Sends `n` invocations that each hold their slot until `gate` exists, waits
/// (via the gateway's own in-flight counts) until all are in flight, opens the
/// gate, and returns the instance id each ran on.
async fn held_batch(gw: &Gateway, function: &str, n: usize, gate: &std::path::Path) -> Vec<String> {
    let client = gw.h2().await;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut c = client.clone();
        let payload = format!("fngate:hold:{}", gate.display());
        let function = function.to_string();
        tasks.push(tokio::spawn(
            async move { c.invoke(&function, payload).await },
        ));
    }
    gw.until(
        &format!("{n} invocations in flight"),
        Duration::from_secs(30),
        || async {
            let total: u64 = gw
                .instances_of(function)
                .await
                .iter()
                .map(|i| i["in_flight"].as_u64().unwrap())
                .sum();
            total == n as u64
        },
    )
    .await;
    std::fs::write(gate, b"open").unwrap();
    let mut ids = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.header("x-fc-error-type").is_none(), "{}", r.text());
        ids.push(r.header("x-fc-instance-id").unwrap().to_string());
    }
    std::fs::remove_file(gate).unwrap();
    ids
}

fn distinct(ids: &[String]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for i in ids {
        *m.entry(i.as_str()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bin_pack_fills_instances_before_starting_new_ones() {
    let gw = Gateway::start("", &echo_fn("pack", "instance_concurrency = 10"));
    let gate = hold_file("gate");

    let ten = held_batch(&gw, "pack", 10, &gate).await;
    assert_eq!(
        distinct(&ten).len(),
        1,
        "10 concurrent on concurrency 10: one instance"
    );
    let first = ten[0].clone();

    let twenty_five = held_batch(&gw, "pack", 25, &gate).await;
    let d = distinct(&twenty_five);
    assert_eq!(
        d.len(),
        3,
        "25 concurrent on concurrency 10: three instances, got {d:?}"
    );
    let mut loads: Vec<usize> = d.values().copied().collect();
    loads.sort();
    assert_eq!(loads, vec![5, 10, 10]);
    assert_eq!(
        d.get(first.as_str()),
        Some(&10),
        "the warm instance is filled first"
    );
    assert_eq!(gw.instances_of("pack").await.len(), 3);

    // Sequential invocations all land on one instance: the oldest.
    let mut c = gw.h1().await;
    let mut seq = HashSet::new();
    for i in 0..20 {
        let r = c.invoke("pack", format!("seq {i}")).await;
        assert_eq!(r.status, 200);
        seq.insert(r.header("x-fc-instance-id").unwrap().to_string());
    }
    assert_eq!(seq.len(), 1);
    assert!(
        seq.contains(&first),
        "sequential calls go to the oldest instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_share_one_starting_instance() {
    let gw = Gateway::start("", &echo_fn("cold", "instance_concurrency = 50"));
    let client = gw.h2().await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.invoke("cold", format!("{i}")).await
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-fngate-cold-start"),
            Some("true"),
            "all waited for the start"
        );
        ids.insert(r.header("x-fc-instance-id").unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "requests arriving during a start wait for it");
    let mut c = client.clone();
    let warm = c.invoke("cold", "warm").await;
    assert_eq!(
        warm.header("x-fngate-cold-start"),
        None,
        "a warm invocation is not marked"
    );
    assert_eq!(
        gw.metric("fngate_instance_starts_total{function=\"cold\",result=\"ok\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_is_best_fit_across_workers() {
    let big = start_worker(1024);
    let small = start_worker(512);
    let cfg = format!(
        "[[workers]]\nurl = \"{}\"\n[[workers]]\nurl = \"{}\"\n{}{}",
        big.url,
        small.url,
        echo_fn("f256", "memory_mb = 256"),
        echo_fn("f384", "memory_mb = 384")
    );
    let gw = Gateway::start("", &cfg);
    let mut c = gw.h1().await;
    let worker_of = |v: &Vec<serde_json::Value>| v[0]["worker"].as_str().unwrap().to_string();

    // 256 MB fits both; the worker with less free memory (512) wins.
    assert_eq!(c.invoke("f256", "a").await.status, 200);
    assert_eq!(worker_of(&gw.instances_of("f256").await), small.url);
    // 384 MB no longer fits the small worker (256 free): the big one takes it.
    assert_eq!(c.invoke("f384", "b").await.status, 200);
    assert_eq!(worker_of(&gw.instances_of("f384").await), big.url);
    // Small: 256 free; big: 640 free. Another 256 MB instance is a tighter fit
    // on the small worker.
    let gate = hold_file("gate2");
    let mut c2 = gw.h1().await;
    let held = {
        let payload = format!("fngate:hold:{}", gate.display());
        let f = tokio::spawn(async move { c2.invoke("f256", payload).await });
        gw.until(
            "the first f256 instance busy",
            Duration::from_secs(10),
            || async { gw.instances_of("f256").await[0]["in_flight"] == 1 },
        )
        .await;
        f
    };
    assert_eq!(c.invoke("f256", "c").await.status, 200);
    let workers: Vec<String> = gw
        .instances_of("f256")
        .await
        .iter()
        .map(|i| i["worker"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(workers, vec![small.url.clone(), small.url.clone()]);
    std::fs::write(&gate, b"go").unwrap();
    assert_eq!(held.await.unwrap().status, 200);
}
