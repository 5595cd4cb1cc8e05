//! Overload: ten times the sustainable rate for 30 s, over more connections
//! than max_connections. Admitted calls keep a bounded latency, the excess
//! gets fast 429s or an at-once refused connection, memory stays bounded,
//! and the gateway serves normally the moment the load stops.

use crate::harness::*;
use std::process::Command;
use std::time::Duration;

/// The `q` quantile of `v` (sorted in place).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_sustainable_rate_for_thirty_seconds() {
    let _serial = crate::SERIAL.lock().await;
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("usage.jsonl");
    // 8 calls at once of 20 ms each: about 400 calls/s sustainable.
    let gw = Gateway::start(
        "max_connections = 64",
        &(echo_fn("work", "instance_concurrency = 16\nmax_concurrency = 8")
            + &format!(
                "[usage]\npath = \"{}\"\nsync_interval_ms = 100\n",
                log.display()
            )),
    );
    let pid = gw.proc.child.id();
    let rss0 = rss_kb(pid).unwrap_or(0);
    let url = format!(
        "https://127.0.0.1:{}{}",
        gw.https.port(),
        invoke_path("work")
    );
    let mut cmd = Command::new(workspace_bin("loadtest"));
    cmd.args(["--url", &url, "--cacert"])
        .arg(&gw.ca)
        .args([
            "--rate",
            "4000",
            "-c",
            "128",
            "-d",
            "30s",
            "--threads",
            "2",
            "--json",
        ])
        .args(["--body", "fngate:sleep:20"]);
    let load = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    tokio::pin!(load);
    let mut peak = rss0;
    let out = loop {
        tokio::select! {
            out = &mut load => break out.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(500)) => peak = peak.max(rss_kb(pid).unwrap_or(0)),
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = |s: &str| r["statuses"][s].as_u64().unwrap_or(0);
    // The gateway serves normally the moment the load stops.
    let t0 = std::time::Instant::now();
    let mut c = gw.h1().await;
    assert_eq!(c.invoke("work", "after").await.text(), "after");
    let recovered = t0.elapsed();

    let (ok, throttled) = (status("200"), status("429"));
    assert!(
        ok > 1000 && throttled > ok,
        "200: {ok}, 429: {throttled}: {r}"
    );
    assert_eq!(
        r["requests"].as_u64().unwrap(),
        ok + throttled,
        "every answer a 200 or a 429: {r}"
    );
    let refused = gw.metric("fngate_connections_refused_total").await;
    assert!(
        refused > 0.0,
        "connections over max_connections were refused"
    );
    assert!(peak - rss0 < 256 * 1024, "RSS {rss0} → {peak} KiB");
    assert!(recovered < Duration::from_secs(2), "{recovered:?}");

    // Latency as the gateway measured it, from the usage log.
    let mut gw = gw;
    gw.proc.signal(libc::SIGTERM);
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(60)), Some(0));
    let records = usage_records(&log);
    let durations = |outcome: &str| -> Vec<f64> {
        records
            .iter()
            .filter(|x| x["outcome"] == outcome)
            .map(|x| x["duration_ms"].as_f64().unwrap())
            .collect()
    };
    let (mut admitted, mut refused429) = (durations("success"), durations("throttled"));
    let (p99_ok, p99_429) = (
        quantile(&mut admitted, 0.99),
        quantile(&mut refused429, 0.99),
    );
    eprintln!(
        "overload: {ok} admitted (p99 {p99_ok:.1} ms), {throttled} throttled (p99 {p99_429:.2} ms), \
         {refused} connections refused, {} connection errors seen by the client, RSS {rss0} → {peak} KiB, \
         served again {recovered:?} after",
        r["errors"]
    );
    // Bounds, not performance claims: generous for a loaded 2-core machine.
    assert!(p99_ok < 2000.0, "admitted p99 {p99_ok} ms");
    assert!(p99_429 < 500.0, "throttled p99 {p99_429} ms");
}
