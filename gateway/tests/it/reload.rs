//! Configuration reload (`POST /admin/reload`, SIGHUP, a change of the
//! files): what changes, what is kept (instances, connections, limiter
//! state), and what is refused.

use crate::harness::*;
use std::time::Duration;

/// A function running `fngate-echo` with `MARK` in its environment (a
/// new value is a new instance shape).
fn marked(name: &str, mark: &str, extra: &str) -> String {
    echo_fn(name, &format!("env = {{ MARK = \"{mark}\" }}\n{extra}"))
}

async fn applied(gw: &Gateway) -> serde_json::Value {
    let (status, out) = gw.reload().await;
    assert_eq!(status, 200, "{out}\n{}", gw.proc.log());
    assert_eq!(out["result"], "applied", "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_command_runs_new_calls_on_a_new_instance_and_lets_the_old_call_finish() {
    let gw = Gateway::start("", &marked("f", "1", ""));
    let mut c = gw.h1().await;
    let first = c.invoke("f", "fngate:env:MARK").await;
    assert_eq!((first.status, first.text()), (200, "1".to_string()));
    let old_id = first.header("x-fc-instance-id").unwrap().to_string();
    // A call in flight on the old instance across the reload.
    let hold = hold_file("changed-command");
    let mut held = gw.h1().await;
    let payload = format!("fngate:hold:{}", hold.display());
    let in_flight = tokio::spawn(async move { held.invoke("f", payload).await });
    gw.until("the held call runs", Duration::from_secs(10), || async {
        gw.instances_of("f")
            .await
            .iter()
            .any(|i| i["in_flight"] == 1)
    })
    .await;
    // The command itself changes: `env` runs the same program with MARK=2.
    let command = format!(
        "[[functions]]\nname = \"f\"\ncommand = [\"/usr/bin/env\", \"MARK=2\", \"{}\"]\nreadable_paths = [\"{}\"]\n",
        echo_bin(),
        hold_root().display()
    );
    gw.rewrite("", &command);
    let out = applied(&gw).await;
    let changed = &out["changes"]["changed"][0];
    assert_eq!(changed["function"], "f", "{out}");
    assert_eq!(changed["new_instances"], true, "{out}");
    assert!(changed["fields"].to_string().contains("command"), "{out}");
    // On the same keep-alive connection: the new program, a new instance.
    let after = c.invoke("f", "fngate:env:MARK").await;
    assert_eq!((after.status, after.text()), (200, "2".to_string()));
    assert_ne!(after.header("x-fc-instance-id").unwrap(), old_id);
    // The old call completes where it began; then its instance goes.
    std::fs::write(&hold, "").unwrap();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-fc-instance-id").unwrap(), old_id);
    gw.until(
        "the old instance is released",
        Duration::from_secs(15),
        || async {
            !gw.instances()
                .await
                .iter()
                .any(|i| i["instance_id"] == old_id.as_str())
        },
    )
    .await;
    // Logged as it is released (just after it leaves the list).
    gw.proc
        .wait_line("reason=\"config changed\"", Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vpc_binding_added_refuses_the_next_request_on_an_open_connection() {
    let networks = "[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"10.9.0.0/16\"]\n";
    let gw = Gateway::start("", &(echo_fn("f", "") + networks));
    let (mut h1, mut h2) = (gw.h1().await, gw.h2().await);
    assert_eq!(h1.invoke("f", "x").await.status, 200);
    assert_eq!(h2.invoke("f", "x").await.status, 200);
    let id = gw.instances_of("f").await[0]["instance_id"].clone();
    gw.rewrite("", &(echo_fn("f", "vpc_bindings = [\"vpc-a\"]") + networks));
    applied(&gw).await;
    for c in [&mut h1, &mut h2] {
        let r = c.invoke("f", "x").await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["Code"], "AccessDenied");
        assert!(!c.is_closed(), "the connection stays open");
    }
    // A policy change keeps the instance.
    assert_eq!(gw.instances_of("f").await[0]["instance_id"], id);
    assert_eq!(
        gw.metric("fngate_config_reloads_total{result=\"applied\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_rate_limit_stays_spent_across_reloads() {
    let limit = "rate_limit = { per_second = 0.01, burst = 5 }";
    let gw = Gateway::start("", &echo_fn("f", limit));
    let mut c = gw.h1().await;
    for _ in 0..5 {
        assert_eq!(c.invoke("f", "x").await.status, 200);
    }
    assert_eq!(c.invoke("f", "x").await.status, 429);
    // Something else changes: the same bucket, still empty.
    gw.rewrite(
        "",
        &(echo_fn("f", &format!("{limit}\ntimeout_s = 30")) + &echo_fn("g", "")),
    );
    let out = applied(&gw).await;
    assert_eq!(out["changes"]["added"], serde_json::json!(["g"]), "{out}");
    let r = c.invoke("f", "x").await;
    assert_eq!(r.status, 429, "a reload refilled the bucket: {}", r.text());
    // The limit itself raised: it starts from what was left (nothing).
    let raised = "rate_limit = { per_second = 0.01, burst = 50 }";
    gw.rewrite("", &echo_fn("f", raised));
    applied(&gw).await;
    let r = c.invoke("f", "x").await;
    assert_eq!(r.status, 429, "a raised limit started full: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_or_fixed_change_is_refused_and_the_running_configuration_serves() {
    let gw = Gateway::start("", &echo_fn("f", ""));
    let mut c = gw.h1().await;
    assert_eq!(c.invoke("f", "x").await.status, 200);
    let (_, before) = gw.admin_get("/admin/config").await;
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    let refusals = [
        // A syntax error.
        ("[[functions]\nname = \"g\"\n".to_string(), "gateway.toml"),
        // A binding to a VPC no [[networks]] declares.
        (
            echo_fn("f", "vpc_bindings = [\"vpc-nowhere\"]"),
            "vpc_bindings",
        ),
    ];
    for (i, (rest, why)) in refusals.iter().enumerate() {
        gw.rewrite("", rest);
        let (status, out) = gw.reload().await;
        assert_eq!(status, 422, "{out}");
        assert_eq!(out["result"], "refused");
        assert!(out["error"].as_str().unwrap().contains(why), "{out}");
        let refused = "fngate_config_reloads_total{result=\"refused\"}";
        assert_eq!(gw.metric(refused).await, (i + 1) as f64);
        let r = c.invoke("f", "x").await;
        assert_eq!(r.status, 200, "the old configuration serves: {}", r.text());
    }
    // What only a restart can change is named, and nothing else applies.
    gw.rewrite("listen = \"127.0.0.1:1\"\nthreads = 1", &echo_fn("g", ""));
    let (status, out) = gw.reload().await;
    assert_eq!(status, 422, "{out}");
    let error = out["error"].as_str().unwrap();
    assert!(
        error.contains("gateway.listen") && error.contains("gateway.threads"),
        "{out}"
    );
    assert_eq!(c.invoke("f", "x").await.status, 200);
    assert_eq!(c.invoke("g", "x").await.status, 404);
    let (_, after) = gw.admin_get("/admin/config").await;
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(after["hash"], before["hash"], "{after}");
    assert_eq!(after["last_reload"]["result"], "refused", "{after}");
}

async fn invoke_async(c: &mut Client, function: &str, payload: String) -> Resp {
    let mut req = invoke_request(function, payload.into());
    req.headers_mut()
        .insert("x-fc-invocation-type", "Async".parse().unwrap());
    c.send(req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_function_is_not_found_and_its_queued_tasks_end_invalid() {
    let store = hold_dir();
    let g = format!(
        "async_store_path = \"{}\"",
        store.path().join("tasks.redb").display()
    );
    let gw = Gateway::start(
        &g,
        &(echo_fn("f", "async_max_concurrency = 1") + &echo_fn("keep", "")),
    );
    let mut c = gw.h1().await;
    // One attempt holds the function's only async slot; three wait behind it.
    let hold = hold_file("removed");
    let r = invoke_async(&mut c, "f", format!("fngate:hold:{}", hold.display())).await;
    assert_eq!(r.status, 202);
    gw.until(
        "the first attempt runs",
        Duration::from_secs(15),
        || async {
            gw.instances_of("f")
                .await
                .iter()
                .any(|i| i["in_flight"] == 1)
        },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(invoke_async(&mut c, "f", "x".into()).await.status, 202);
    }
    gw.rewrite(&g, &echo_fn("keep", ""));
    let out = applied(&gw).await;
    assert_eq!(out["changes"]["removed"], serde_json::json!(["f"]), "{out}");
    let r = c.invoke("f", "x").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["Code"], "FunctionNotFound");
    let invalid = "fngate_async_results_total{function=\"f\",result=\"invalid\"}";
    gw.until(
        "the queued tasks end Invalid",
        Duration::from_secs(15),
        || async { gw.metric(invalid).await == 3.0 },
    )
    .await;
    // The attempt in flight finishes on its instance, which then goes.
    std::fs::write(&hold, "").unwrap();
    let ok = "fngate_async_results_total{function=\"f\",result=\"succeeded\"}";
    gw.until(
        "the running attempt succeeds",
        Duration::from_secs(15),
        || async { gw.metric(ok).await == 1.0 },
    )
    .await;
    gw.until(
        "f's instance is released",
        Duration::from_secs(15),
        || async { gw.instances_of("f").await.is_empty() },
    )
    .await;
    // Logged once the batch is done, after the count.
    gw.proc.wait_line("ended Invalid", Duration::from_secs(10));
    assert_eq!(c.invoke("keep", "x").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_dir_files_dropped_in_and_removed_add_and_remove_functions() {
    let gw = Gateway::start("", "");
    let dir = gw.dir.path().join("functions.d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.toml"), echo_fn("a", "")).unwrap();
    gw.rewrite(&format!("functions_dir = \"{}\"", dir.display()), "");
    // SIGHUP reads the files again.
    gw.proc.signal(libc::SIGHUP);
    // HTTP/2: one connection the polls below share.
    let mut c = gw.h2().await;
    let answers = |function: &'static str, status: u16| {
        let (gw, c) = (&gw, c.clone());
        let what = format!("{function} answers {status}");
        async move {
            gw.until(&what, Duration::from_secs(15), || {
                let mut c = c.clone();
                async move { c.invoke(function, "x").await.status == status }
            })
            .await
        }
    };
    answers("a", 200).await;
    // From here on the files' changes alone reload.
    std::fs::write(dir.join("b.toml"), echo_fn("b", "")).unwrap();
    answers("b", 200).await;
    std::fs::remove_file(dir.join("a.toml")).unwrap();
    answers("a", 404).await;
    assert_eq!(c.invoke("b", "x").await.status, 200);
    let (_, shown) = gw.admin_get("/admin/config").await;
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["functions"], 1, "{shown}");
    assert_eq!(shown["last_reload"]["trigger"], "file change", "{shown}");
    // A file of the directory that does not validate names itself.
    std::fs::write(dir.join("c.toml"), "[[functions]]\nname = \"c\"\n").unwrap();
    gw.until("c.toml is refused", Duration::from_secs(15), || async {
        let (_, s) = gw.admin_get("/admin/config").await;
        s.contains("refused") && s.contains("c.toml")
    })
    .await;
    assert_eq!(c.invoke("b", "x").await.status, 200);
}

/// Twenty reloads (functions added, removed, reshaped and retuned) under a
/// steady load on keep-alive HTTP/1.1 and HTTP/2 connections: the
/// unchanged function loses no call and no connection, and every call to
/// the changing one ends with the old configuration's outcome or the new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_steady_load_drop_nothing() {
    let config = |i: usize| {
        let mut rest = echo_fn("steady", "instance_concurrency = 20");
        rest += &marked(
            "changing",
            &format!("{}", i / 4),
            &format!("instance_concurrency = 20\ntimeout_s = {}", 10 + i % 3),
        );
        if i % 2 == 1 {
            rest += &echo_fn("extra", "");
        }
        rest
    };
    let gw = Gateway::start("", &config(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loads = Vec::new();
    for (n, h2) in [(0, false), (1, true)] {
        let mut c = gw.client(ClientOpts::h2(h2)).await;
        let stop = stop.clone();
        loads.push(tokio::spawn(async move {
            let (mut calls, mut failures) = (0u32, Vec::new());
            // Bounded: at most 20,000 calls, about 100/s per connection.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && calls < 20_000 {
                let f = if calls % 2 == n { "steady" } else { "changing" };
                let r = c.invoke(f, "x").await;
                if r.status != 200 {
                    failures.push(format!("{f}: {} {}", r.status, r.text()));
                }
                calls += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (calls, failures, c.is_closed())
        }));
    }
    for i in 1..=20 {
        gw.rewrite("", &config(i));
        let out = applied(&gw).await;
        if i % 4 == 0 {
            assert_eq!(out["changes"]["changed"][0]["new_instances"], true, "{out}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for l in loads {
        let (calls, failures, closed) = l.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}\n{}", gw.proc.log());
        assert!(!closed, "a connection was closed");
        total += calls;
    }
    assert!(total > 100, "the load ran ({total} calls)");
    assert_eq!(
        gw.metric("fngate_config_reloads_total{result=\"applied\"}")
            .await,
        20.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_log_is_turned_on_moved_and_off_by_reloads() {
    let logs = hold_dir();
    let usage = |name: &str| {
        let path = logs.path().join(name);
        let section = format!(
            "[usage]\npath = \"{}\"\nsync_interval_ms = 50\n",
            path.display()
        );
        (path, section)
    };
    let gw = Gateway::start("", &echo_fn("f", ""));
    let mut c = gw.h1().await;
    assert_eq!(c.invoke("f", "before").await.status, 200);
    let (first, section) = usage("first.jsonl");
    gw.rewrite("", &(echo_fn("f", "") + &section));
    let out = applied(&gw).await;
    assert!(
        out["changes"]["sections"].to_string().contains("usage"),
        "{out}"
    );
    assert_eq!(c.invoke("f", "on").await.status, 200);
    gw.until(
        "the call is in the first log",
        Duration::from_secs(10),
        || async { usage_records(&first).iter().any(|r| r["function"] == "f") },
    )
    .await;
    // Moved: the next records go to the new file, none are lost.
    let (second, section) = usage("second.jsonl");
    gw.rewrite("", &(echo_fn("f", "") + &section));
    applied(&gw).await;
    assert_eq!(c.invoke("f", "moved").await.status, 200);
    gw.until(
        "the call is in the second log",
        Duration::from_secs(10),
        || async { usage_records(&second).iter().any(|r| r["function"] == "f") },
    )
    .await;
    assert_eq!(
        usage_records(&first).len(),
        1,
        "one call while the first was on"
    );
    // Off: the call made meanwhile is recorded nowhere (on again, the
    // next call's record is the third log's only one).
    gw.rewrite("", &echo_fn("f", ""));
    applied(&gw).await;
    assert_eq!(c.invoke("f", "off").await.status, 200);
    let (third, section) = usage("third.jsonl");
    gw.rewrite("", &(echo_fn("f", "") + &section));
    applied(&gw).await;
    assert_eq!(c.invoke("f", "on again").await.status, 200);
    gw.until(
        "the call is in the third log",
        Duration::from_secs(10),
        || async { !usage_records(&third).is_empty() },
    )
    .await;
    assert_eq!(usage_records(&third).len(), 1);
    assert_eq!(
        usage_records(&second).len(),
        1,
        "a record while the log was off"
    );
}
