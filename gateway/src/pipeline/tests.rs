//! The stages driven with a fake executor: no worker, no instance, no
//! socket (hyper serves the pipeline over an in-memory pipe, so request
//! bodies are hyper's own).

use super::*;
use crate::api::FunctionAnswer;
use crate::execute::Failed;
use crate::ingress::{Caller, Network};
use crate::metering::Leg;
use crate::throttle::shared::{Answer, RateCheck, SharedCount, Sharing, StartCheck, StartRequest};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Answers every call with 200 `ok`, counting them; or, once `hold` is
/// set, waits until it is released.
#[derive(Default)]
struct FakeExecutor {
    calls: AtomicUsize,
    hold: Option<Arc<tokio::sync::Notify>>,
}

impl Execute for FakeExecutor {
    async fn execute(
        &self,
        _pool: &Arc<FunctionPool>,
        _call: &Call<'_>,
        payload: Bytes,
        _request_id: &HeaderValue,
    ) -> (Result<(FunctionAnswer, Ran), Failed>, Vec<Leg>) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(hold) = &self.hold {
            hold.notified().await;
        }
        let answer = FunctionAnswer {
            status: StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: payload,
            failed: false,
        };
        let ran = Ran {
            instance_id: HeaderValue::from_static("fake-1"),
            cold: false,
            log: None,
        };
        (Ok((answer, ran)), Vec::new())
    }
}

/// Refuses every rate and start, as a fleet's count that is full would.
struct FullCount {
    asked: AtomicUsize,
}

impl SharedCount for FullCount {
    fn check_rates<'a>(&'a self, _: RateCheck<'a>) -> Answer<'a, Result<(), Throttled>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            Err(Throttled {
                limit: LimitKind::FunctionRate,
                retry_after: Duration::from_secs(1),
            })
        })
    }

    fn admit_start<'a>(&'a self, start: StartRequest<'a>) -> Answer<'a, StartCheck> {
        Box::pin(async move {
            StartCheck::Refused(Throttled {
                limit: LimitKind::MaxInstances,
                retry_after: start.retry_hint,
            })
        })
    }

    fn release(self: Arc<Self>, _member: String) -> Answer<'static, ()> {
        Box::pin(async {})
    }
}

struct Setup {
    pipeline: Arc<Pipeline<FakeExecutor>>,
    metrics: Metrics,
}

fn setup(function: &str, executor: FakeExecutor, sharing: Sharing) -> Setup {
    let text = format!("[[functions]]\nname = \"f\"\ncommand = [\"x\"]\n{function}\n");
    let cfg = Config::parse(&text, std::path::Path::new("/")).unwrap();
    let metrics = Metrics::new();
    let networks = NetworkIndex::new(&cfg.ingress.vpcs);
    let scheduler = Scheduler::new(
        &crate::functions::Functions::new(&cfg.functions, &metrics, &networks),
        Vec::new(),
        &metrics,
        &cfg.gateway.throttle,
        crate::scheduler::Times {
            start_timeout: Duration::from_secs(5),
            worker_timeout: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(3600),
        },
        crate::scheduler::Outside {
            sharing,
            usage: Default::default(),
        },
    );
    let mut limits = cfg.gateway.asynchronous.clone();
    limits.store = crate::config::AsyncStoreKind::Memory;
    let functions = cfg
        .functions
        .iter()
        .map(|f| (&f.name, f.asynchronous.max_concurrency));
    let metrics_async = crate::asynchronous::AsyncMetrics::new(&metrics.registry);
    let queue = crate::asynchronous::AsyncQueue::open(limits, functions, metrics_async, None);
    let pipeline = Pipeline::new(
        scheduler,
        &cfg,
        &metrics,
        Default::default(),
        Arc::new(queue.unwrap()),
        executor,
    );
    Setup {
        pipeline: Arc::new(pipeline),
        metrics,
    }
}

/// One HTTP/1.1 request through the pipeline, from an internet caller.
async fn send(
    p: &Arc<Pipeline<FakeExecutor>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let origin = Origin::Client(Caller {
        ip: "127.0.0.1".parse().unwrap(),
        network: Network::Internet,
    });
    let p = p.clone();
    let svc = hyper::service::service_fn(move |req| p.clone().handle(req, origin));
    let server = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(server_io), svc);
    tokio::spawn(server);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client_io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

fn invoke(function: &str, headers: &[(&str, &str)], body: &'static str) -> Request<Full<Bytes>> {
    let mut b = Request::post(format!("/2023-03-30/functions/{function}/invocations"))
        .header("host", "gateway.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// The value of the series `name{labels}` in the text exposition.
fn series(metrics: &Metrics, name_and_labels: &str) -> Option<f64> {
    metrics.render().lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().unwrap())
    })
}

#[tokio::test]
async fn an_executor_fake_drives_the_stages_and_every_answer_is_counted_once() {
    let s = setup("", FakeExecutor::default(), Sharing::alone());
    let (status, _, body) = send(&s.pipeline, invoke("f", &[], "hello")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello");
    assert_eq!(s.pipeline.executor.calls.load(Ordering::SeqCst), 1);

    // Refused at stage 2: the executor is never asked.
    let (status, headers, body) = send(&s.pipeline, invoke("nope", &[], "x")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(String::from_utf8_lossy(&body).contains("FunctionNotFound"));
    // A dry run (Lambda's door) stops after stage 7.
    let dry = Request::post("/2015-03-31/functions/f/invocations")
        .header("host", "gateway.test")
        .header("x-amz-invocation-type", "DryRun")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let (status, _, _) = send(&s.pipeline, dry).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(s.pipeline.executor.calls.load(Ordering::SeqCst), 1);

    let count = |api: &str, f: &str, outcome: &str| {
        let labels = format!(
            "fngate_invocations_total{{api=\"{api}\",function=\"{f}\",network=\"internet\",outcome=\"{outcome}\"}}"
        );
        series(&s.metrics, &labels).unwrap_or(0.0)
    };
    assert_eq!(count("fc", "f", "success"), 1.0);
    assert_eq!(count("fc", "(unknown)", "client_error"), 1.0);
    assert_eq!(count("lambda", "f", "dry_run"), 1.0);
}

#[tokio::test]
async fn a_throttled_async_attempt_is_counted_once_and_spends_no_rate() {
    let hold = Arc::new(tokio::sync::Notify::new());
    let executor = FakeExecutor {
        hold: Some(hold.clone()),
        ..Default::default()
    };
    let f = "max_concurrency = 1\nrate_limit = { per_second = 0.001, burst = 1 }";
    let s = setup(f, executor, Sharing::alone());
    let p = &s.pipeline;
    let pool = p.scheduler.function("f").unwrap().clone();

    // A call holds the only concurrency permit (and spends the one token).
    let held = tokio::spawn({
        let p = p.clone();
        async move { send(&p, invoke("f", &[], "first")).await }
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while p.executor.calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first call runs");

    // An attempt now: refused by the concurrency limit, not the rate.
    let task: crate::asynchronous::task::TaskRecord = serde_json::from_str(
        r#"{"id":"t1","request_id":"1-attempt","function":"f","api":"fc",
            "caller":{"network":"internet"},"payload_bytes":1,"accepted_ms":0,"due_ms":0,
            "state":"Running","attempts":1,"retries":0,"backoffs":0,"events":[]}"#,
    )
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let out = p
        .attempt(&pool, &task, Bytes::from_static(b"x"), &stop)
        .await;
    let err = out.error.expect("throttled");
    assert_eq!(
        err.throttle(),
        Some(LimitKind::FunctionConcurrency),
        "{err}"
    );
    let throttles = |limit: &str| {
        let labels = format!("fngate_throttles_total{{function=\"f\",limit=\"{limit}\"}}");
        series(&s.metrics, &labels).unwrap()
    };
    assert_eq!(throttles("function_concurrency"), 1.0);
    assert_eq!(throttles("function_rate"), 0.0);

    // The rate's state is as the first call left it: one more call is
    // refused by the rate (the attempt took nothing from it, nor gave back).
    hold.notify_one();
    let (status, _, _) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(p, invoke("f", &[], "third")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttles("function_rate"), 1.0);
    assert_eq!(throttles("function_concurrency"), 1.0);
}

#[tokio::test]
async fn a_fleet_count_that_refuses_is_asked_and_its_refusal_counted_once() {
    let count = Arc::new(FullCount {
        asked: AtomicUsize::new(0),
    });
    let sharing = Sharing {
        owner: Some("gw-a".into()),
        count: Some((count.clone(), Duration::from_secs(10))),
    };
    let s = setup("", FakeExecutor::default(), sharing);
    let (status, headers, _) = send(&s.pipeline, invoke("f", &[], "x")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(count.asked.load(Ordering::SeqCst), 1);
    assert_eq!(s.pipeline.executor.calls.load(Ordering::SeqCst), 0);
    let labels = "fngate_throttles_total{function=\"f\",limit=\"function_rate\"}";
    assert_eq!(series(&s.metrics, labels), Some(1.0));
}
