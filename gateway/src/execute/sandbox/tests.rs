//! How a call to an instance goes wrong, classified: against a socket of the
//! test's playing the instance, and a fake worker (no processes).

use super::*;
use crate::workers::fake::Fake;
use crate::workers::{Worker, WorkerTimeouts};
use sandbox_runtime::api::ExitInfo;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the pretend instance does with each call it reads.
#[derive(Clone, Copy)]
enum Behaviour {
    Answer,
    Garbage,
    HangUpMidAnswer,
    Silent,
    Huge,
    /// Answers 413 at once, never reads the body, keeps the connection.
    Early,
    /// Answers in chunks.
    Chunked,
    /// Answers with `Connection: close`, then closes.
    AnswerAndClose,
}

/// A socket that plays an instance; returns its address.
async fn instance(b: Behaviour) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let reply: Vec<u8> = match b {
                    Behaviour::Answer => b"HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                    Behaviour::Garbage => b"HELLO THERE\r\n\r\n".to_vec(),
                    Behaviour::HangUpMidAnswer => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart".to_vec(),
                    Behaviour::Huge => {
                        let mut r = b"HTTP/1.1 200 OK\r\ncontent-length: 2048\r\n\r\n".to_vec();
                        r.extend(vec![b'x'; 2048]);
                        r
                    }
                    Behaviour::Early => {
                        let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nnope").await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    Behaviour::Chunked => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n".to_vec(),
                    Behaviour::AnswerAndClose => b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                    Behaviour::Silent => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                };
                let _ = s.write_all(&reply).await;
            });
        }
    });
    addr
}

/// The sandbox executor over `fake`, for function `f`: the instance hop
/// alone, no pipeline, no task store.
async fn pipeline(fake: Arc<Fake>, extra: &str) -> (Sandbox, Arc<FunctionPool>) {
    let cfg = crate::config::Config::parse(
        &format!("[gateway]\nmax_response_bytes = 1024\n[[functions]]\nname = \"f\"\ncommand = [\"x\"]\n{extra}\n"),
        std::path::Path::new("/"),
    )
    .unwrap();
    let metrics = crate::metrics::Metrics::new();
    let networks = crate::metrics::NetworkIndex::new(&cfg.ingress.vpcs);
    let timeouts = WorkerTimeouts {
        call: Duration::from_secs(5),
        start: Duration::from_secs(30),
    };
    let worker = Worker::with_api("fake".into(), Box::new(fake), timeouts)
        .await
        .unwrap();
    let scheduler = crate::scheduler::Scheduler::new(
        &crate::functions::Functions::new(&cfg.functions, &metrics, &networks),
        vec![Arc::new(worker)],
        &metrics,
        &cfg.gateway.throttle,
        crate::scheduler::Times {
            start_timeout: Duration::from_secs(30),
            worker_timeout: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(3600),
        },
        Default::default(),
    );
    let pool = scheduler.function("f").unwrap().clone();
    let sandbox = Sandbox {
        scheduler,
        max_response_bytes: cfg.gateway.limits.max_response_bytes,
    };
    (sandbox, pool)
}

async fn call_once(p: &Sandbox, pool: &Arc<FunctionPool>) -> Result<(FunctionAnswer, Ran), Failed> {
    let id = HeaderValue::from_static("1-test");
    p.call(
        pool,
        &Call::event(None),
        Bytes::from_static(b"payload"),
        &id,
    )
    .await
}

/// Waits (bounded) until the fake has released `n` instances: releases run
/// in tasks of their own.
async fn released(fake: &Fake, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while fake.released.lock().unwrap().len() < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("released in time");
    assert_eq!(fake.released.lock().unwrap().len(), n);
}

async fn fake_at(addr: Option<String>) -> Arc<Fake> {
    let fake = Arc::new(Fake::default());
    *fake.address.lock().unwrap() = addr;
    fake
}

#[tokio::test]
async fn an_answer_is_the_functions() {
    let fake = fake_at(Some(instance(Behaviour::Answer).await)).await;
    let (p, pool) = pipeline(fake, "").await;
    let (answer, ran) = call_once(&p, &pool).await.ok().unwrap();
    assert_eq!(answer.status, http::StatusCode::CREATED);
    assert_eq!(answer.body, "ok");
    assert!(ran.cold);
}

#[tokio::test]
async fn an_unreachable_instance_is_retried_once_elsewhere_then_a_crash() {
    // Nothing listens there: nothing was sent, so it is safe to try again.
    let free = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let fake = fake_at(Some(free.to_string())).await;
    let (p, pool) = pipeline(fake.clone(), "").await;
    let (e, _) = call_once(&p, &pool).await.err().unwrap();
    assert!(
        matches!(e, InvokeError::InstanceCrashed { ref detail } if detail.contains("unreachable")),
        "{e:?}"
    );
    // Two instances tried (the second started for the retry), both reclaimed.
    assert_eq!(fake.created.lock().unwrap().len(), 2);
    released(&fake, 2).await;
}

#[tokio::test]
async fn garbage_is_an_invalid_answer_while_the_process_lives() {
    let fake = fake_at(Some(instance(Behaviour::Garbage).await)).await;
    let (p, pool) = pipeline(fake, "").await;
    let (e, ran) = call_once(&p, &pool).await.err().unwrap();
    assert!(
        matches!(e, InvokeError::BadFunctionResponse { .. }),
        "{e:?}"
    );
    assert!(ran.is_some());
}

#[tokio::test]
async fn a_broken_answer_from_an_exited_process_says_how_it_ended() {
    let fake = fake_at(Some(instance(Behaviour::HangUpMidAnswer).await)).await;
    *fake.exit.lock().unwrap() = Some(ExitInfo {
        code: Some(3),
        signal: None,
        oom_killed: false,
        released: false,
    });
    let (p, pool) = pipeline(fake, "").await;
    let (e, _) = call_once(&p, &pool).await.err().unwrap();
    assert!(
        matches!(e, InvokeError::InstanceCrashed { ref detail } if detail.contains("exited with code 3")),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_answer_over_max_response_bytes_is_invalid() {
    let fake = fake_at(Some(instance(Behaviour::Huge).await)).await;
    let (p, pool) = pipeline(fake, "").await;
    let (e, _) = call_once(&p, &pool).await.err().unwrap();
    assert!(
        matches!(e, InvokeError::BadFunctionResponse { ref detail } if detail.contains("1024")),
        "{e:?}"
    );
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_a_timeout_and_the_instance_goes() {
    let fake = fake_at(Some(instance(Behaviour::Silent).await)).await;
    let (p, pool) = pipeline(fake.clone(), "timeout_s = 1").await;
    let t0 = tokio::time::Instant::now();
    let (e, _) = call_once(&p, &pool).await.err().unwrap();
    assert!(
        matches!(e, InvokeError::FunctionTimeout(t) if t == Duration::from_secs(1)),
        "{e:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        fake.released.lock().unwrap().len(),
        1,
        "alone on it: reclaimed at once"
    );
}

#[tokio::test]
async fn an_answer_before_the_body_is_read_is_the_functions() {
    let fake = fake_at(Some(instance(Behaviour::Early).await)).await;
    let (p, pool) = pipeline(fake, "timeout_s = 20").await;
    let id = HeaderValue::from_static("1-test");
    // Far more than the socket buffers hold: a writer that did not watch
    // for the answer would wait until the timeout.
    let payload = Bytes::from(vec![b'x'; 8 << 20]);
    let (answer, _) = p
        .call(&pool, &Call::event(None), payload, &id)
        .await
        .ok()
        .unwrap();
    assert_eq!(answer.status, http::StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.body, "nope");
}

#[tokio::test]
async fn chunked_answers_and_closing_instances_are_served() {
    let fake = fake_at(Some(instance(Behaviour::Chunked).await)).await;
    let (p, pool) = pipeline(fake, "").await;
    for _ in 0..3 {
        let (answer, _) = call_once(&p, &pool).await.ok().unwrap();
        assert_eq!(answer.body, "ok!!!");
    }
    // An instance that closes after every answer: each call on a new
    // connection, none failing.
    let fake = fake_at(Some(instance(Behaviour::AnswerAndClose).await)).await;
    let (p, pool) = pipeline(fake.clone(), "").await;
    for _ in 0..3 {
        let (answer, _) = call_once(&p, &pool).await.ok().unwrap();
        assert_eq!(answer.body, "ok");
    }
    assert_eq!(
        fake.created.lock().unwrap().len(),
        1,
        "one instance throughout"
    );
}
