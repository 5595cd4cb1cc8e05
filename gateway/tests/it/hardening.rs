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
        gw.metric("fngate_refused_body_drains_total{result=\"too_large\"}").await,
        1.0
    );
}
