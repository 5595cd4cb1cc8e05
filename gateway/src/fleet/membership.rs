//! Heartbeats and the live count (see [`super`]).
//!
//! One task per gateway: it puts this gateway's entry every `heartbeat_ms`
//! and follows the bucket's changes with a watch, so learning of a member
//! costs no polling. Liveness is judged locally: a member is live until one
//! member TTL after its last entry was written (the entry's server time,
//! which a member's first sighting needs; later ones arrive as they are
//! written). NATS 2.9 has no delete markers for aged-out entries, so the
//! local sweep is what counts a killed gateway out.

use super::{Fleet, FleetError};
use async_nats::jetstream::kv;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What a gateway publishes about itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub id: String,
    pub started_unix_ms: u64,
    /// The HTTPS and admin listeners, as bound.
    pub https: String,
    pub admin: String,
}

/// Opens (creating when needed) the fleet's membership bucket.
pub async fn bucket(fleet: &Fleet) -> Result<kv::Store, FleetError> {
    fleet
        .bucket(
            "gateways",
            1,
            fleet.cfg.member_ttl,
            async_nats::jetstream::stream::StorageType::Memory,
        )
        .await
}

/// Runs until `stop`; then deletes this gateway's entry so the others count
/// it out at once. `on_change` gets the live count whenever it changes.
pub async fn run(
    fleet: Arc<Fleet>,
    kv: kv::Store,
    me: Member,
    on_change: impl Fn(u32) + Send + 'static,
    stop: CancellationToken,
) {
    let ttl = fleet.cfg.member_ttl;
    let timeout = fleet.cfg.engine_timeout;
    let value = bytes::Bytes::from(serde_json::to_vec(&me).expect("plain data"));
    // Member id -> when it is counted out (local clock).
    let mut members: HashMap<String, Instant> = HashMap::new();
    let mut watch: Option<kv::Watch> = None;
    let mut tick = tokio::time::interval(fleet.cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok: Option<Instant> = None;
    let mut live = 1;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let sent = Instant::now();
                match tokio::time::timeout(timeout, kv.put(&me.id, value.clone())).await {
                    Ok(Ok(_)) => {
                        fleet.metrics.engine_rtt.observe(sent.elapsed().as_secs_f64());
                        last_ok = Some(Instant::now());
                        fleet
                            .last_heartbeat_ms
                            .store(crate::asynchronous::now_ms(), Ordering::Release);
                        members.insert(me.id.clone(), Instant::now() + ttl);
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "fleet heartbeat failed"),
                    Err(_) => tracing::warn!(timeout_ms = timeout.as_millis() as u64, "fleet heartbeat timed out"),
                }
                fleet.metrics.heartbeat_age.set(
                    last_ok.map_or(f64::INFINITY, |t| t.elapsed().as_secs_f64()),
                );
                if watch.is_none() {
                    match tokio::time::timeout(timeout, kv.watch_all()).await {
                        Ok(Ok(w)) => watch = Some(w),
                        Ok(Err(e)) => tracing::warn!(error = %e, "cannot watch the fleet's members"),
                        Err(_) => tracing::warn!("watching the fleet's members timed out"),
                    }
                }
            }
            entry = next(&mut watch) => match entry {
                Some(Ok(e)) => seen(&mut members, e, ttl),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the fleet's member watch failed; watching again");
                    watch = None;
                }
                None => watch = None,
            },
        }
        let now = Instant::now();
        // While the engine is unreachable every other entry would age out:
        // keep the last view instead (a partitioned gateway must not take
        // the whole limit).
        if last_ok.is_some_and(|t| now.duration_since(t) < ttl) {
            members.retain(|id, until| *until > now || *id == me.id);
        }
        let n = (members.len() as u32).max(1);
        if n != live {
            tracing::info!(live_gateways = n, "fleet membership changed");
            live = n;
            fleet.live.store(n, Ordering::Release);
            fleet.metrics.live_gateways.set(i64::from(n));
            on_change(n);
        }
    }
    let _ = tokio::time::timeout(timeout, kv.delete(&me.id)).await;
}

async fn next(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

fn seen(members: &mut HashMap<String, Instant>, e: kv::Entry, ttl: Duration) {
    match e.operation {
        kv::Operation::Put => {
            let written_ns = e.created.unix_timestamp_nanos();
            let now_ns = crate::asynchronous::now_ms() as i128 * 1_000_000;
            let age =
                Duration::from_nanos((now_ns - written_ns).clamp(0, ttl.as_nanos() as i128) as u64);
            members.insert(e.key, Instant::now() + (ttl - age));
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            members.remove(&e.key);
        }
    }
}
