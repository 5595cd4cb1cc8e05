//! Instance lifecycle: idle release, min_instances, timeouts, crashes,
//! graceful shutdown, configuration errors.

use crate::harness::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_are_released_and_min_instances_kept() {
    let cfg = echo_fn("ondemand", "idle_timeout_s = 1")
        + &echo_fn("provisioned", "idle_timeout_s = 1\nmin_instances = 2");
    let gw = Gateway::start("", &cfg);
    // /readyz turns 200 once the provisioned instances are up.
    gw.until("readyz", Duration::from_secs(30), || async {
        gw.admin_get("/readyz").await.0 == 200
    })
    .await;
    assert_eq!(gw.instances_of("provisioned").await.len(), 2);

    let mut c = gw.h1().await;
    assert_eq!(c.invoke("ondemand", "x").await.status, 200);
    assert_eq!(gw.instances_of("ondemand").await.len(), 1);
    let t0 = tokio::time::Instant::now();
    gw.until("idle release", Duration::from_secs(15), || async {
        gw.instances_of("ondemand").await.is_empty()
    })
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "released before its idle timeout"
    );
    let provisioned = gw.instances_of("provisioned").await;
    assert_eq!(
        provisioned.len(),
        2,
        "min_instances are never released for idleness"
    );
    assert!(provisioned.iter().all(|i| i["state"] == "ready"));
    assert_eq!(
        gw.metric("fngate_instances{function=\"ondemand\",state=\"ready\"}")
            .await,
        0.0
    );
    assert_eq!(
        gw.metric("fngate_instances{function=\"provisioned\",state=\"ready\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_a_function_error_and_the_instance_is_replaced() {
    let gw = Gateway::start(
        "",
        &echo_fn("slow", "timeout_s = 1\ninstance_concurrency = 5"),
    );
    let mut c = gw.h1().await;
    let r = c.invoke("slow", "fngate:sleep:5000").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-fc-error-type"),
        Some("UnhandledInvocationError")
    );
    let msg = r.json()["errorMessage"].as_str().unwrap().to_string();
    assert!(msg.contains("timed out after 1 seconds"), "{msg}");
    let timed_out = r.header("x-fc-instance-id").unwrap().to_string();
    // Reclaimed at once: the next call runs on a fresh instance.
    assert!(
        gw.instances_of("slow")
            .await
            .iter()
            .all(|i| i["instance_id"] != timed_out.as_str())
    );
    let r = c.invoke("slow", "after").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "after");
    assert!(r.header("x-fc-error-type").is_none());
    assert_ne!(r.header("x-fc-instance-id").unwrap(), timed_out);
    assert_eq!(
        gw.metric("fngate_invocations_total{api=\"fc\",function=\"slow\",network=\"internet\",outcome=\"function_error\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_is_a_function_error_and_the_next_call_succeeds_on_a_new_instance() {
    let gw = Gateway::start("", &echo_fn("fragile", ""));
    let mut c = gw.h1().await;
    let first = c.invoke("fragile", "warm").await;
    let crashed = first.header("x-fc-instance-id").unwrap().to_string();
    let r = c.invoke("fragile", "fngate:crash").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-fc-error-type"),
        Some("UnhandledInvocationError")
    );
    assert_eq!(r.header("x-fc-instance-id"), Some(crashed.as_str()));
    let msg = r.json()["errorMessage"].as_str().unwrap().to_string();
    assert!(msg.contains("exited with code 3"), "{msg}");
    let r = c.invoke("fragile", "again").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "again");
    assert_ne!(r.header("x-fc-instance-id").unwrap(), crashed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_killed_for_memory_is_reported_as_such() {
    let gw = Gateway::start("", &echo_fn("hungry", "memory_mb = 64"));
    let mut c = gw.h1().await;
    let r = c.invoke("hungry", "fngate:alloc:256").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-fc-error-type"),
        Some("UnhandledInvocationError")
    );
    let msg = r.json()["errorMessage"].as_str().unwrap().to_string();
    // With a cgroup the kernel OOM-kills it; with the rlimit fallback the
    // allocation fails and the process aborts. Either way it is a function error.
    assert!(
        msg.contains("out of memory")
            || msg.contains("killed by signal")
            || msg.contains("exited with code"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_crash_is_noticed_without_an_invocation() {
    let gw = Gateway::start("", &echo_fn("lonely", ""));
    let mut c = gw.h1().await;
    let r = c.invoke("lonely", "fngate:whoami").await;
    let pid = gw.instance_pid(&r).await;
    // SAFETY: plain syscall; the pid is the instance the gateway just started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    gw.until(
        "the dead instance removed",
        Duration::from_secs(15),
        || async { gw.instances_of("lonely").await.is_empty() },
    )
    .await;
    assert_eq!(c.invoke("lonely", "back").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_invocations_finish() {
    let mut gw = Gateway::start("drain_timeout_s = 20", &echo_fn("work", ""));
    let mut c = gw.h1().await;
    let r = c.invoke("work", "fngate:whoami").await;
    let pid = gw.instance_pid(&r).await;
    let call = tokio::spawn(async move { c.invoke("work", "fngate:sleep:1500").await });
    gw.until(
        "one invocation in flight",
        Duration::from_secs(10),
        || async {
            gw.instances_of("work")
                .await
                .first()
                .is_some_and(|i| i["in_flight"] == 1)
        },
    )
    .await;
    gw.proc.signal(libc::SIGTERM);
    let r = call.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "fngate:sleep:1500");
    assert!(r.header("x-fc-error-type").is_none());
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(30)), Some(0));
    // Its instances were released: the process is gone.
    // SAFETY: signal 0 only checks for existence.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "instance process {pid} outlived the gateway");
    assert!(
        tokio::net::TcpStream::connect(gw.https).await.is_err(),
        "listener closed"
    );
}

#[test]
fn invalid_config_exits_non_zero_naming_the_key() {
    let cases = [
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\ninstance_concurrency = 0\n",
            "functions[0].instance_concurrency",
        ),
        ("[gateway]\nlisten = \"not-an-address\"\n", "gateway.listen"),
        ("[gateway]\nunknown_key = 1\n", "unknown_key"),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\n[[functions]]\nname = \"a\"\ncommand = [\"y\"]\n",
            "duplicate",
        ),
    ];
    for (text, key) in cases {
        assert_config_error(text, key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_past_their_lifetime_are_drained_and_replaced() {
    let gw = Gateway::start(
        "max_instance_lifetime_s = 1",
        &echo_fn("aging", "instance_concurrency = 2"),
    );
    let mut c = gw.h1().await;
    let gate = hold_file("gate");
    let first = c
        .invoke("aging", "x")
        .await
        .header("x-fc-instance-id")
        .unwrap()
        .to_string();
    // Keep it busy past its lifetime: it must drain (no new work) but finish.
    let mut c2 = gw.h1().await;
    let payload = format!("fngate:hold:{}", gate.display());
    let held = tokio::spawn(async move { c2.invoke("aging", payload).await });
    gw.until(
        "the old instance draining",
        Duration::from_secs(10),
        || async {
            gw.instances_of("aging")
                .await
                .iter()
                .any(|i| i["instance_id"] == first.as_str() && i["state"] == "draining")
        },
    )
    .await;
    let r = c.invoke("aging", "y").await;
    assert_eq!(r.status, 200);
    assert_ne!(
        r.header("x-fc-instance-id").unwrap(),
        first,
        "a draining instance takes no new work"
    );
    std::fs::write(&gate, b"go").unwrap();
    let r = held.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-fc-instance-id").unwrap(),
        first,
        "in-flight work on a draining instance finishes"
    );
    gw.until(
        "the drained instance released",
        Duration::from_secs(10),
        || async {
            gw.instances_of("aging")
                .await
                .iter()
                .all(|i| i["instance_id"] != first.as_str())
        },
    )
    .await;
}
