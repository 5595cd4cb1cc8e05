//! The gateway's heartbeat, the live count and worker discovery (see
//! [`super`]; the roster itself is [`sandbox_runtime::fleet`], shared with
//! workers).
//!
//! One task per gateway: it puts this gateway's entry every `heartbeat_ms`,
//! follows `<fleet>_gateways` (the live count divides the limits) and, with
//! `discover_workers`, `<fleet>_workers` (a worker that registers is
//! connected to and placed on; one whose entry expires is placed on no more).

use super::Fleet;
use crate::scheduler::Scheduler;
use crate::workers::{HttpClient, Worker, WorkerTimeouts};
use async_nats::jetstream::kv;
use sandbox_runtime::fleet::{Heartbeat, Roster, WorkerEntry};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

/// What a gateway publishes about itself (workers read `started_unix_ms`:
/// see [`sandbox_runtime::fleet::owner`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub id: String,
    pub started_unix_ms: u64,
    /// The HTTPS and admin listeners, as bound.
    pub https: String,
    pub admin: String,
}

/// The buckets a gateway follows.
pub struct Buckets {
    pub gateways: kv::Store,
    /// `None` unless `discover_workers`.
    pub workers: Option<kv::Store>,
}

pub async fn buckets(fleet: &Fleet) -> Result<Buckets, super::FleetError> {
    let memory = async_nats::jetstream::stream::StorageType::Memory;
    let ttl = fleet.cfg.member_ttl;
    let gateways = fleet.bucket("gateways", 1, ttl, memory).await?;
    let workers = match fleet.cfg.discover_workers {
        true => Some(fleet.bucket("workers", 1, ttl, memory).await?),
        false => None,
    };
    Ok(Buckets { gateways, workers })
}

/// How discovered workers are reached.
pub struct Discovery {
    pub client: HttpClient,
    pub timeouts: WorkerTimeouts,
}

/// Runs until `stop`; then deletes this gateway's entry so the others count
/// it out at once.
pub async fn run(
    fleet: Arc<Fleet>,
    buckets: Buckets,
    me: Member,
    sched: Arc<Scheduler>,
    discovery: Discovery,
    stop: CancellationToken,
) {
    let ttl = fleet.cfg.member_ttl;
    let timeout = fleet.cfg.engine_timeout;
    let value = bytes::Bytes::from(serde_json::to_vec(&me).expect("plain data"));
    let mut beat = Heartbeat::new(buckets.gateways.clone(), me.id.clone(), value);
    let mut gateways = Roster::new(buckets.gateways, ttl);
    let mut workers = buckets.workers.map(|w| Roster::new(w, ttl));
    // Workers this gateway learned from the fleet, or is connecting to;
    // configured ones are never dropped.
    let configured: HashSet<String> = sched.workers().iter().map(|w| w.url.clone()).collect();
    let mut discovered: HashSet<String> = HashSet::new();
    let (connected_tx, mut connected) =
        tokio::sync::mpsc::unbounded_channel::<Result<Arc<Worker>, String>>();
    let mut tick = tokio::time::interval(fleet.cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live = 1;
    fleet.metrics.workers.set(configured.len() as i64);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                if let Some(rtt) = beat.beat(timeout).await {
                    fleet.metrics.engine_rtt.observe(rtt.as_secs_f64());
                    fleet
                        .last_heartbeat_ms
                        .store(crate::asynchronous::now_ms(), Ordering::Release);
                    gateways.seen(&beat.key, beat.value.clone());
                }
                fleet
                    .metrics
                    .heartbeat_age
                    .set(beat.age().map_or(f64::INFINITY, |a| a.as_secs_f64()));
                gateways.ensure_watch(timeout).await;
                if let Some(w) = &mut workers {
                    w.ensure_watch(timeout).await;
                }
            }
            change = gateways.changed() => gateways.apply(change),
            change = async {
                match &mut workers {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(w) = &mut workers {
                    w.apply(change);
                }
            }
            Some(result) = connected.recv() => match result {
                Ok(w) => {
                    if sched.add_worker(w.clone()) {
                        tracing::info!(worker = %w.url, memory_mb = w.memory_mb_total, "worker joined from the fleet");
                    }
                    fleet.metrics.workers.set(sched.workers().len() as i64);
                }
                // Tried again at the next pass.
                Err(url) => {
                    discovered.remove(&url);
                }
            },
        }
        // While the engine is unreachable every other entry would age out:
        // keep the last view instead (a partitioned gateway must not take
        // the whole limit, nor forget its workers).
        if !beat.healthy(ttl) {
            continue;
        }
        gateways.sweep();
        let n = (gateways.len() as u32).max(1);
        if n != live {
            tracing::info!(live_gateways = n, "fleet membership changed");
            live = n;
            fleet.live.store(n, Ordering::Release);
            fleet.metrics.live_gateways.set(i64::from(n));
            // The limits (split mode) or the fallback (redis mode).
            sched.split_limits(n);
            fleet.metrics.share.set(i64::from(sched.limits().share()));
        }
        if let Some(w) = &mut workers {
            w.sweep();
            let urls: HashSet<String> = w
                .live()
                .filter_map(|(_, v)| serde_json::from_slice::<WorkerEntry>(v).ok())
                .map(|e| e.url)
                .collect();
            let new: Vec<String> = urls
                .difference(&discovered)
                .filter(|u| !configured.contains(*u))
                .cloned()
                .collect();
            for url in new {
                discovered.insert(url.clone());
                let tx = connected_tx.clone();
                let (client, timeouts) = (discovery.client.clone(), discovery.timeouts);
                tokio::spawn(async move {
                    let _ = tx.send(match Worker::connect(url.clone(), client, timeouts).await {
                        Ok(w) => Ok(Arc::new(w)),
                        Err(e) => {
                            tracing::warn!(worker = %url, error = %e, "a worker of the fleet is not reachable");
                            Err(url)
                        }
                    });
                });
            }
            if w.settled() {
                let gone: Vec<String> = discovered.difference(&urls).cloned().collect();
                for url in gone {
                    discovered.remove(&url);
                    if sched.remove_worker(&url) {
                        tracing::info!(worker = %url, "worker left the fleet");
                    }
                    fleet.metrics.workers.set(sched.workers().len() as i64);
                }
            }
        }
    }
    beat.leave(timeout).await;
}
