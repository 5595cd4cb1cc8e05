//! Metering: counters and the usage log agree with each other and with what
//! the clients sent and received, to the byte, per network; the log survives
//! SIGKILL within its documented bound and loses nothing on SIGTERM.

use crate::harness::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

fn usage_cfg(path: &Path, sync_ms: u64) -> String {
    format!(
        "[usage]\npath = \"{}\"\nsync_interval_ms = {sync_ms}\n",
        path.display()
    )
}

const NETWORKS: &str = "[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"127.0.0.2/32\"]\n";

/// `gateway usage summarize --json` over `files`: (function, network) → totals.
fn summarize(files: &[&Path]) -> (HashMap<(String, String), serde_json::Value>, u64) {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["usage".as_ref(), "summarize".as_ref(), "--json".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let stdout = gateway_cli(args);
    let v: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    let rows = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r["function"].as_str().unwrap().to_string(),
                    r["network"].as_str().unwrap().to_string(),
                ),
                r.clone(),
            )
        })
        .collect();
    (rows, v["skipped_lines"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_is_metered_exactly_per_network() {
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("usage.jsonl");
    let cfg = format!(
        "{}{NETWORKS}{}{}",
        usage_cfg(&log, 50),
        echo_fn("echo", "memory_mb = 256"),
        echo_fn("private", "vpc_bindings = [\"vpc-a\"]")
    );
    let mut gw = Gateway::start("", &cfg);
    // (source, function, payload sizes)
    let plan: [(&str, &str, &[usize]); 3] = [
        ("127.0.0.1", "echo", &[0, 1, 100, 1000, 4096, 65536, 12345]),
        ("127.0.0.2", "echo", &[7, 70, 700, 7000, 70000]),
        ("127.0.0.1", "private", &[777, 777, 0]),
    ];
    // (function, network) → (invocations, bytes in, bytes out)
    let mut want: HashMap<(&str, &str), (u64, u64, u64)> = HashMap::new();
    for (source, function, sizes) in plan {
        let mut c = gw.client(ClientOpts::from(source)).await;
        let network = if source == "127.0.0.2" {
            "vpc-a"
        } else {
            "internet"
        };
        for &n in sizes {
            let r = c.invoke(function, vec![b'm'; n]).await;
            let expect_status = if function == "private" { 403 } else { 200 };
            assert_eq!(r.status, expect_status);
            let e = want.entry((function, network)).or_default();
            e.0 += 1;
            e.1 += n as u64;
            e.2 += r.body.len() as u64;
        }
    }
    // The counters.
    for ((function, network), (count, bytes_in, bytes_out)) in &want {
        let m = |dir: &str| {
            format!(
                "fngate_traffic_bytes_total{{direction=\"{dir}\",function=\"{function}\",network=\"{network}\"}}"
            )
        };
        assert_eq!(
            gw.metric(&m("in")).await,
            *bytes_in as f64,
            "{function} {network} in"
        );
        assert_eq!(
            gw.metric(&m("out")).await,
            *bytes_out as f64,
            "{function} {network} out"
        );
        let outcome = if *function == "private" {
            "denied"
        } else {
            "success"
        };
        let inv = format!(
            "fngate_invocations_total{{api=\"fc\",function=\"{function}\",network=\"{network}\",outcome=\"{outcome}\"}}"
        );
        assert_eq!(gw.metric(&inv).await, *count as f64);
    }
    // The usage log, after a graceful stop.
    gw.proc.signal(libc::SIGTERM);
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(30)), Some(0));
    let (rows, skipped) = summarize(&[&log]);
    assert_eq!(skipped, 0);
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for ((function, network), (count, bytes_in, bytes_out)) in &want {
        let key = if *network == "internet" {
            "internet".to_string()
        } else {
            format!("vpc:{network}")
        };
        let row = &rows[&(function.to_string(), key)];
        assert_eq!(row["invocations"], *count, "{function} {network}");
        assert_eq!(row["bytes_in"], *bytes_in, "{function} {network}");
        assert_eq!(row["bytes_out"], *bytes_out, "{function} {network}");
    }
    // Billing: the denied calls ran nowhere and cost nothing; echo calls did.
    assert_eq!(
        rows[&("private".to_string(), "internet".to_string())]["billed_gb_s"],
        0.0
    );
    assert!(
        rows[&("echo".to_string(), "internet".to_string())]["billed_gb_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_eq!(
        rows[&("echo".to_string(), "internet".to_string())]["cold_starts"],
        1
    );
}

/// Drives sequential invocations from `clients` connections until `stop` or
/// an error; returns when each 200 answer arrived.
async fn drive(
    gw: &Gateway,
    clients: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<tokio::time::Instant>> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(gw.h1().await);
    }
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for mut c in conns {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut acks = Vec::new();
                while !*stop.borrow() {
                    match c.send(invoke_request("echo", "steady".into())).await {
                        Ok(r) if r.status == 200 => acks.push(tokio::time::Instant::now()),
                        _ => break,
                    }
                }
                acks
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    })
}

/// Starts `clients` connections of steady traffic on `gw` and returns once
/// 300 calls have succeeded: a sender that stops it, and its acks.
async fn steady_traffic(
    gw: &Gateway,
    clients: usize,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Vec<tokio::time::Instant>>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = drive(gw, clients, stop_rx).await;
    gw.until("some traffic", Duration::from_secs(30), || async {
        gw.metric(
            "fngate_invocations_total{api=\"fc\",function=\"echo\",network=\"internet\",outcome=\"success\"}",
        )
        .await
            >= 300.0
    })
    .await;
    (stop_tx, load)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_log_survives_sigkill_within_its_bound_and_sigterm_loses_nothing() {
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("usage.jsonl");
    let cfg = format!(
        "{}{}",
        usage_cfg(&log, 100),
        echo_fn("echo", "instance_concurrency = 8")
    );
    const CLIENTS: usize = 4;

    // Run 1: steady traffic, then SIGKILL.
    let gw = Gateway::start("", &cfg);
    let (stop_tx, load) = steady_traffic(&gw, CLIENTS).await;
    let r = gw.h1().await.invoke("echo", "fngate:whoami").await;
    let instance_pid = gw.instance_pid(&r).await;
    let killed_at = tokio::time::Instant::now();
    gw.proc.signal(libc::SIGKILL);
    let acks_1 = load.await.unwrap();
    let acked_1 = acks_1.len() as u64;
    let _ = stop_tx.send(true);
    drop(gw);
    // Its instances die with it (PR_SET_PDEATHSIG), not orphaned.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // SAFETY: signal 0 only checks whether the process exists.
    while unsafe { libc::kill(instance_pid, 0) } == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "instance {instance_pid} outlived its killed worker"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (rows, skipped) = summarize(&[&log]);
    assert!(skipped <= 1, "at most one torn line, got {skipped}");
    let logged_1 = rows[&("echo".to_string(), "internet".to_string())]["invocations"]
        .as_u64()
        .unwrap();
    // A record is handed to the writer before its answer is sent, and the
    // writer writes what it has every 5 ms (BATCH_DELAY): every call answered
    // more than a few batch delays before the kill is on disk (50 ms allows
    // for a loaded machine oversleeping).
    let settled = acks_1
        .iter()
        .filter(|t| **t + Duration::from_millis(50) < killed_at)
        .count() as u64;
    assert!(settled > 0);
    assert!(
        logged_1 >= settled,
        "{settled} calls answered 50 ms before the kill, {logged_1} logged (of {acked_1})"
    );
    assert!(
        logged_1 <= acked_1 + CLIENTS as u64,
        "acked {acked_1}, logged {logged_1}"
    );

    // Run 2 on the same log: steady traffic, then SIGTERM: nothing lost.
    let mut gw = Gateway::start("", &cfg);
    let (stop_tx, load) = steady_traffic(&gw, CLIENTS).await;
    let _ = stop_tx.send(true);
    let acked_2 = load.await.unwrap().len() as u64;
    gw.proc.signal(libc::SIGTERM);
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(30)), Some(0));
    let (rows, skipped_after) = summarize(&[&log]);
    assert_eq!(skipped_after, skipped, "no new torn lines");
    let logged = rows[&("echo".to_string(), "internet".to_string())]["invocations"]
        .as_u64()
        .unwrap();
    assert_eq!(
        logged - logged_1,
        acked_2,
        "a graceful stop loses no record"
    );
}
