//! Load tests: a binary of their own because they saturate the machine, and
//! cargo runs test binaries one after another, so they never share it with
//! the timing-sensitive tests of `tests/it` (which would then miss their
//! bounds for no fault of the gateway).

mod durable;
mod fleet;
#[path = "../it/harness.rs"]
#[allow(dead_code)] // the load tests use part of it
mod harness;
mod overload;

/// One load test at a time: each saturates the machine.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use harness::*;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Submits asynchronous `fngate:append` calls for the ids from `next` up to
/// `end` through `gws`, `per_gateway` connections each, each at one call per `every`; a gateway that goes
/// away stops its connections.
/// The request id each accepted submission was answered with (the task's
/// id), for a failure's report.
pub static REQUEST_IDS: std::sync::Mutex<std::collections::BTreeMap<usize, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

pub async fn submit(
    gws: &[&Gateway],
    per_gateway: usize,
    next: &Arc<AtomicUsize>,
    end: usize,
    accepted: &Arc<Mutex<Vec<usize>>>,
    out: &Path,
    every: Duration,
) {
    let mut workers = Vec::new();
    for gw in gws {
        for _ in 0..per_gateway {
            let (next, accepted, out) = (next.clone(), accepted.clone(), out.to_path_buf());
            let (https, ca) = (gw.https, gw.ca.clone());
            workers.push(tokio::spawn(async move {
                let Ok(mut c) = Client::try_connect(https, &ca, ClientOpts::default()).await else {
                    return;
                };
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        return;
                    }
                    let req =
                        async_request("sink", format!("fngate:append:{}:{i}", out.display()), None);
                    match tokio::time::timeout(Duration::from_secs(20), c.send(req)).await {
                        Ok(Ok(r)) if r.status == 202 => {
                            accepted.lock().unwrap().push(i);
                            if let Some(id) = r.header("x-fc-request-id") {
                                REQUEST_IDS.lock().unwrap().insert(i, id.to_string());
                            }
                        }
                        Ok(Ok(r)) => panic!("submission {i}: {} {}", r.status, r.text()),
                        // The gateway died with this call in flight: not accepted.
                        _ => return,
                    }
                }
            }));
        }
    }
    for w in workers {
        w.await.unwrap();
    }
}
