//! The Lambda and Azure doors beside Function Compute's, over real TLS:
//! each door's answers and errors, the HTTP-trigger contract, function keys,
//! and one pipeline behind all three (metering, policy and limits agree).
//! The clouds' own SDKs drive the same doors in `sdk.rs`.

use crate::harness::*;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;

fn lambda_path(name: &str) -> String {
    format!("/2015-03-31/functions/{name}/invocations")
}

fn lambda(
    name: &str,
    payload: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post(format!("https://localhost{}", lambda_path(name)));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(payload.into())).unwrap()
}

fn azure(
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path_and_query}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

fn b64(s: &str) -> String {
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("base64"),
    )
    .unwrap()
}

fn invocations(api: &str, function: &str, network: &str, outcome: &str) -> String {
    format!(
        "fngate_invocations_total{{api=\"{api}\",function=\"{function}\",network=\"{network}\",outcome=\"{outcome}\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_invocation_types_answers_and_log_tail() {
    let dir = hold_dir();
    let release = dir.path().join("release");
    let gw = Gateway::start(
        "",
        &(echo_fn("echo", "instance_concurrency = 4") + &echo_fn("dry", "")),
    );
    let mut c = gw.h1().await;

    // RequestResponse: the payload back, with Lambda's headers.
    let r = c.send(lambda("echo", r#"{"a":1}"#, &[])).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"{"a":1}"#);
    assert_eq!(r.header("x-amz-executed-version"), Some("$LATEST"));
    assert!(
        r.header("x-amzn-requestid")
            .is_some_and(|id| id.len() == 37)
    );
    assert!(r.header("x-amz-function-error").is_none());
    assert!(
        r.header("x-fc-request-id").is_none(),
        "no other cloud's headers"
    );

    // A full ARN, percent-encoded as the SDK sends it, with a qualifier.
    let arn = "arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aecho%3A%24LATEST";
    let r = c.send(lambda(arn, "x", &[])).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "x"));

    // DryRun: checked, answered 204, nothing run.
    let r = c
        .send(lambda("dry", "x", &[("x-amz-invocation-type", "DryRun")]))
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert!(r.header("x-amzn-requestid").is_some());
    assert!(gw.instances_of("dry").await.is_empty());
    assert_eq!(
        gw.metric(&invocations("lambda", "dry", "internet", "dry_run"))
            .await,
        1.0
    );

    // Event: 202 at once (the function holds until released), run later.
    let hold = format!("fngate:hold:{}", release.display());
    let r = c
        .send(lambda("echo", hold, &[("x-amz-invocation-type", "Event")]))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(r.body.is_empty());
    std::fs::write(&release, b"").unwrap();
    gw.until(
        "the Event invocation to run",
        Duration::from_secs(20),
        || async {
            gw.metric(&invocations("lambda", "echo", "internal", "success"))
                .await
                == 1.0
        },
    )
    .await;

    // Tail: the instance's output during this invocation, between Lambda's lines.
    let r = c
        .send(lambda(
            "echo",
            "fngate:print:tail-me",
            &[("x-amz-log-type", "Tail")],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let id = r.header("x-amzn-requestid").unwrap().to_string();
    let log = b64(r.header("x-amz-log-result").expect("a log tail"));
    assert!(
        log.starts_with(&format!("START RequestId: {id} Version: $LATEST\n")),
        "{log}"
    );
    assert!(
        log.contains("tail-me\n") && log.contains("tail-me (stderr)\n"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "END RequestId: {id}\nREPORT RequestId: {id}\tDuration: "
        )),
        "{log}"
    );
    // Only this invocation's output: the earlier calls printed nothing, and
    // a second Tail call does not repeat the first one's lines.
    let r = c
        .send(lambda(
            "echo",
            "fngate:print:second",
            &[("x-amz-log-type", "Tail")],
        ))
        .await
        .unwrap();
    let log = b64(r.header("x-amz-log-result").unwrap());
    assert!(
        log.contains("second\n") && !log.contains("tail-me"),
        "{log}"
    );

    // The client context reaches the function as is.
    let cc = base64::engine::general_purpose::STANDARD.encode(br#"{"custom":{"k":"v"}}"#);
    let r = c
        .send(lambda(
            "echo",
            "fngate:headers",
            &[("x-amz-client-context", &cc)],
        ))
        .await
        .unwrap();
    assert_eq!(r.json()["x-fngate-client-context"], cc.as_str());
    assert_eq!(
        r.json()["x-fc-request-id"],
        r.header("x-amzn-requestid").unwrap()
    );

    // A function error is 200 with X-Amz-Function-Error.
    let r = c.send(lambda("echo", "fngate:crash", &[])).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(r.json()["errorType"], "Runtime.ExitError");
    assert!(
        r.json()["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exited with code 3")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_errors_have_lambdas_shape() {
    let gw = Gateway::start(
        "max_body_bytes = 1000",
        &(echo_fn("private", "vpc_bindings = [\"vpc-a\"]")
            + &echo_fn("limited", "rate_limit = { per_second = 0.01, burst = 1 }")
            + &echo_fn("big", "")
            + "[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"10.9.0.0/16\"]\n"),
    );
    let mut c = gw.h1().await;
    let code = |r: &Resp| r.header("x-amzn-errortype").unwrap_or("").to_string();

    let r = c.send(lambda("nope", "x", &[])).await.unwrap();
    assert_eq!(
        (r.status, code(&r).as_str()),
        (404, "ResourceNotFoundException")
    );
    assert_eq!(r.json()["Type"], "User");
    assert_eq!(
        r.json()["message"],
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope"
    );

    // The same reason text as the FC door.
    let r = c.send(lambda("private", "x", &[])).await.unwrap();
    assert_eq!(
        (r.status, code(&r).as_str()),
        (403, "AccessDeniedException")
    );
    let fc = c.invoke("private", "x").await;
    assert_eq!(fc.status, 403);
    assert_eq!(r.json()["message"], fc.json()["Message"]);

    let r = c.send(lambda("limited", "x", &[])).await.unwrap();
    assert_eq!(r.status, 200);
    let r = c.send(lambda("limited", "x", &[])).await.unwrap();
    assert_eq!(
        (r.status, code(&r).as_str()),
        (429, "TooManyRequestsException")
    );
    assert_eq!(
        r.json()["Reason"],
        "ReservedFunctionInvocationRateLimitExceeded"
    );
    let ms: u64 = r.header("x-amz-retry-after").unwrap().parse().unwrap();
    let s: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(ms > 1000 && s == ms.div_ceil(1000), "{ms} ms, {s} s");

    let r = c.send(lambda("big", vec![b'x'; 1001], &[])).await.unwrap();
    assert_eq!(
        (r.status, code(&r).as_str()),
        (413, "RequestTooLargeException")
    );

    let r = c
        .send(lambda(
            "limited",
            "x",
            &[("x-amz-invocation-type", "Later")],
        ))
        .await
        .unwrap();
    assert_eq!(
        (r.status, code(&r).as_str()),
        (400, "InvalidParameterValueException")
    );
    let r = c
        .send(lambda(
            "limited",
            "x",
            &[("x-amz-client-context", "not-base64!")],
        ))
        .await
        .unwrap();
    assert_eq!(
        (r.status, code(&r).as_str()),
        (400, "InvalidRequestContentException")
    );

    let r = c
        .send(
            http::Request::get(format!("https://localhost{}", lambda_path("limited")))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, code(&r).as_str()),
        (404, "UnknownOperationException")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_http_trigger_hands_over_the_request_and_returns_the_answer() {
    let gw = Gateway::start("", &echo_fn("web", "instance_concurrency = 4"));
    for h2 in [false, true] {
        let mut c = gw.client(ClientOpts::h2(h2)).await;
        let r = c
            .send(azure(
                "PUT",
                "/api/web/orders/42?x=1&status=201&header=x-reply:yes",
                &[
                    ("x-custom", "abc"),
                    ("content-type", "text/plain"),
                    // A caller cannot forge the gateway's context headers.
                    ("x-fngate-request-id", "forged"),
                    ("x-forwarded-for", "203.0.113.9"),
                ],
                "hello",
            ))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "h2={h2} {}", r.text());
        assert_eq!(r.header("x-reply"), Some("yes"));
        let id = r.header("x-ms-request-id").unwrap().to_string();
        let v = r.json();
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["path"], "/orders/42");
        assert_eq!(v["query"], "x=1&status=201&header=x-reply:yes");
        assert_eq!(v["body"], "hello");
        assert_eq!(v["requestId"], id.as_str());
        assert_eq!(v["function"], "web");
        let h = &v["headers"];
        assert_eq!(h["x-custom"], "abc");
        assert_eq!(h["content-type"], "text/plain");
        assert_eq!(h["x-fngate-trigger"], "http");
        assert_eq!(h["x-fngate-request-id"], id.as_str());
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "localhost");
        // Its own Host: the instance's address, not the caller's.
        assert_ne!(h["host"], "localhost");
    }
    let mut c = gw.h1().await;
    // Headers the caller's Connection header names are for its hop only
    // (HTTP/1.1; HTTP/2 has no such header).
    let r = c
        .send(azure(
            "POST",
            "/api/web",
            &[
                ("connection", "x-hop-only"),
                ("x-hop-only", "1"),
                ("x-kept", "2"),
            ],
            "",
        ))
        .await
        .unwrap();
    let h = &r.json()["headers"];
    assert!(
        h.get("x-hop-only").is_none() && h.get("connection").is_none(),
        "{h}"
    );
    assert_eq!(h["x-kept"], "2");
    // No rest of path, no body, another method.
    let r = c.send(azure("GET", "/api/web", &[], "")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.json()["method"].as_str(), r.json()["path"].as_str()),
        (Some("GET"), Some("/"))
    );
    // A function that crashes is a bare 500, as Azure answers.
    let r = c
        .send(azure("POST", "/api/web", &[], "fngate:crash"))
        .await
        .unwrap();
    assert_eq!(r.status, 500);
    assert!(r.body.is_empty());
    let r = c.send(azure("POST", "/api/nope", &[], "")).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "FunctionNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_function_keys_in_the_header_or_the_query() {
    let gw = Gateway::start(
        "",
        &(echo_fn(
            "keyed",
            "auth_level = \"function\"\nfunction_keys = [{ name = \"default\", value = \"fk-secret-1\" }]",
        ) + "[azure]\nhost_keys = [{ name = \"master\", env = \"PATH\" }]\n"),
    );
    let mut c = gw.h1().await;
    // No key, a wrong key: 401, empty, and no instance touched.
    for (uri, headers) in [
        ("/api/keyed", vec![]),
        ("/api/keyed?code=wrong", vec![]),
        ("/api/keyed", vec![("x-functions-key", "wrong")]),
    ] {
        let r = c.send(azure("GET", uri, &headers, "")).await.unwrap();
        assert_eq!(r.status, 401, "{uri}");
        assert!(r.body.is_empty());
    }
    assert!(gw.instances_of("keyed").await.is_empty());
    assert_eq!(
        gw.metric(
            "fngate_auth_failures_total{api=\"azure\",function=\"keyed\",reason=\"missing\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        gw.metric(
            "fngate_auth_failures_total{api=\"azure\",function=\"keyed\",reason=\"bad_key\"}"
        )
        .await,
        2.0
    );
    // The key in its header: accepted, and not handed to the function.
    let r = c
        .send(azure(
            "GET",
            "/api/keyed/x",
            &[("x-functions-key", "fk-secret-1")],
            "",
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["headers"].get("x-functions-key").is_none());
    // In ?code=: accepted, and removed from the query the function sees.
    let r = c
        .send(azure(
            "GET",
            "/api/keyed/x?a=1&code=fk-secret-1&b=2",
            &[],
            "",
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["query"], "a=1&b=2");
    // A host key works for every keyed function.
    let host_key = std::env::var("PATH").unwrap();
    let r = c
        .send(azure(
            "GET",
            "/api/keyed",
            &[("x-functions-key", &host_key)],
            "",
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // Key values are never logged.
    assert!(!gw.proc.log().contains("fk-secret-1"));
    let (_, functions) = gw.admin_get("/admin/functions").await;
    assert!(
        functions.contains("\"function_keys\":[\"default\"]") && !functions.contains("fk-secret-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pipeline_behind_every_door() {
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("usage.jsonl");
    let gw = Gateway::start(
        "",
        &(echo_fn("shared", "instance_concurrency = 4")
            + &echo_fn("private", "vpc_bindings = [\"vpc-a\"]")
            + &echo_fn("limited", "rate_limit = { per_second = 0.01, burst = 1 }")
            + "[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"10.9.0.0/16\"]\n"
            + &format!(
                "[usage]\npath = \"{}\"\nsync_interval_ms = 50\n",
                log.display()
            )),
    );
    let mut c = gw.h1().await;
    // The same function, once through each door.
    let fc = c.invoke("shared", "abc").await;
    let lm = c.send(lambda("shared", "defg", &[])).await.unwrap();
    let az = c
        .send(azure("POST", "/api/shared", &[], "hi"))
        .await
        .unwrap();
    assert_eq!((fc.status, lm.status, az.status), (200, 200, 200));
    for api in ["fc", "lambda", "azure"] {
        assert_eq!(
            gw.metric(&invocations(api, "shared", "internet", "success"))
                .await,
            1.0,
            "{api}"
        );
    }
    let bytes_in = gw
        .metric(
            "fngate_traffic_bytes_total{direction=\"in\",function=\"shared\",network=\"internet\"}",
        )
        .await;
    assert_eq!(bytes_in, (3 + 4 + 2) as f64);
    let bytes_out = gw
        .metric("fngate_traffic_bytes_total{direction=\"out\",function=\"shared\",network=\"internet\"}")
        .await;
    assert_eq!(
        bytes_out,
        (fc.body.len() + lm.body.len() + az.body.len()) as f64
    );

    // The policy and the limits decide the same whatever the door: a
    // VPC-bound function refuses the internet at all three; one rate budget.
    let refused = [
        c.invoke("private", "x").await.status,
        c.send(lambda("private", "x", &[])).await.unwrap().status,
        c.send(azure("POST", "/api/private", &[], "x"))
            .await
            .unwrap()
            .status,
    ];
    assert_eq!(refused, [403, 403, 403]);
    assert_eq!(
        gw.metric("fngate_ingress_denials_total{function=\"private\",reason=\"vpc_binding\"}")
            .await,
        3.0
    );
    let limited = [
        c.invoke("limited", "x").await.status,
        c.send(lambda("limited", "x", &[])).await.unwrap().status,
        c.send(azure("POST", "/api/limited", &[], "x"))
            .await
            .unwrap()
            .status,
    ];
    assert_eq!(limited, [200, 429, 429]);

    // One usage record per call, naming its door and request id.
    let mut gw = gw;
    gw.proc.signal(libc::SIGTERM);
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(30)), Some(0));
    let records = usage_records(&log);
    let shared: Vec<_> = records
        .iter()
        .filter(|r| r["function"] == "shared")
        .collect();
    assert_eq!(shared.len(), 3);
    let ids = [
        fc.header("x-fc-request-id").unwrap(),
        lm.header("x-amzn-requestid").unwrap(),
        az.header("x-ms-request-id").unwrap(),
    ];
    for (r, (api, id)) in shared.iter().zip(["fc", "lambda", "azure"].iter().zip(ids)) {
        assert_eq!(
            (r["api"].as_str(), r["request_id"].as_str()),
            (Some(*api), Some(id))
        );
        assert!(r.get("access_key_id").is_none());
    }
    assert_eq!(
        records
            .iter()
            .filter(|r| r["function"] == "private")
            .count(),
        3
    );
}
