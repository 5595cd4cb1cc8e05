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
    let (connected_tx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let mut known = Discovered {
        configured: sched.workers().iter().map(|w| w.url.clone()).collect(),
        connecting: HashSet::new(),
        connected: connected_tx,
        discovery,
    };
    let mut tick = tokio::time::interval(fleet.cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live = 1;
    fleet.metrics.workers.set(known.configured.len() as i64);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => heartbeat(&fleet, &mut beat, &mut gateways, workers.as_mut()).await,
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
            Some(result) = connected.recv() => known.joined(result, &sched, &fleet),
        }
        // While the engine is unreachable every other entry would age out:
        // keep the last view instead (a partitioned gateway must not take
        // the whole limit, nor forget its workers).
        if !beat.healthy(ttl) {
            continue;
        }
        gateways.sweep();
        recount(&fleet, &sched, gateways.len(), &mut live);
        if let Some(w) = &mut workers {
            known.sync(w, &sched, &fleet);
        }
    }
    beat.leave(timeout).await;
}

/// This gateway's heartbeat, and the watches on the buckets kept open.
async fn heartbeat(
    fleet: &Fleet,
    beat: &mut Heartbeat,
    gateways: &mut Roster,
    workers: Option<&mut Roster>,
) {
    let timeout = fleet.cfg.engine_timeout;
    if let Some(rtt) = beat.beat(timeout).await {
        fleet.metrics.engine_rtt.observe(rtt.as_secs_f64());
        fleet
            .last_heartbeat_ms
            .store(crate::asynchronous::now_ms(), Ordering::Release);
        gateways.seen(&beat.key, beat.value.clone());
    }
    let age = beat.age().map_or(f64::INFINITY, |a| a.as_secs_f64());
    fleet.metrics.heartbeat_age.set(age);
    gateways.ensure_watch(timeout).await;
    if let Some(w) = workers {
        w.ensure_watch(timeout).await;
    }
}

/// The live gateways counted again: a new count splits the limits anew
/// (or the fallback of `redis` limits).
fn recount(fleet: &Fleet, sched: &Scheduler, gateways: usize, live: &mut u32) {
    let n = (gateways as u32).max(1);
    if n == *live {
        return;
    }
    tracing::info!(live_gateways = n, "fleet membership changed");
    *live = n;
    fleet.live.store(n, Ordering::Release);
    fleet.metrics.live_gateways.set(i64::from(n));
    sched.split_limits(n);
    fleet.metrics.share.set(i64::from(sched.limits().share()));
}

/// The workers this gateway learned from the fleet, or is connecting to;
/// configured ones are never dropped.
struct Discovered {
    configured: HashSet<String>,
    connecting: HashSet<String>,
    /// A connection attempt's end: the worker, or the URL that failed.
    connected: tokio::sync::mpsc::UnboundedSender<Result<Arc<Worker>, String>>,
    discovery: Discovery,
}

impl Discovered {
    /// The roster's workers against the scheduler's: connects to new ones
    /// (in the background), drops those gone once the roster has settled.
    fn sync(&mut self, roster: &mut Roster, sched: &Scheduler, fleet: &Fleet) {
        roster.sweep();
        let urls: HashSet<String> = (roster.live())
            .filter_map(|(_, v)| serde_json::from_slice::<WorkerEntry>(v).ok())
            .map(|e| e.url)
            .collect();
        let new: Vec<String> = (urls.difference(&self.connecting))
            .filter(|u| !self.configured.contains(*u))
            .cloned()
            .collect();
        for url in new {
            self.connecting.insert(url.clone());
            let tx = self.connected.clone();
            let (client, timeouts) = (self.discovery.client.clone(), self.discovery.timeouts);
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
        if !roster.settled() {
            return;
        }
        let gone: Vec<String> = self.connecting.difference(&urls).cloned().collect();
        for url in gone {
            self.connecting.remove(&url);
            if sched.remove_worker(&url) {
                tracing::info!(worker = %url, "worker left the fleet");
            }
            fleet.metrics.workers.set(sched.workers().len() as i64);
        }
    }

    fn joined(&mut self, result: Result<Arc<Worker>, String>, sched: &Scheduler, fleet: &Fleet) {
        match result {
            Ok(w) => {
                if sched.add_worker(w.clone()) {
                    tracing::info!(worker = %w.url, memory_mb = w.memory_mb_total, "worker joined from the fleet");
                }
                fleet.metrics.workers.set(sched.workers().len() as i64);
            }
            // Tried again at the next pass.
            Err(url) => {
                self.connecting.remove(&url);
            }
        }
    }
}
