//! The deliverer: sends destination records, driven by the store, on the
//! gateway's main runtime.

use super::destination;
use super::policy;
use super::store::Delivery;
use super::{AsyncQueue, IDLE_LOOK, now_ms};
use std::sync::Arc;
use std::time::Duration;

/// Destination records sent at once.
const DELIVERY_BATCH: usize = 16;

impl AsyncQueue {
    /// The deliverer: until [`AsyncQueue::stop`]. Records left then are sent
    /// after the next start.
    pub async fn deliver(self: Arc<Self>) {
        let q = &self;
        while !q.stop.is_cancelled() {
            let now = now_ms();
            let mut wait = IDLE_LOOK;
            if q.store.depth().deliveries > 0 {
                let until = now + 2 * destination::DELIVERY_TIMEOUT.as_millis() as u64;
                match q.store.lease_deliveries(now, DELIVERY_BATCH, until).await {
                    Ok((batch, next)) => {
                        let full = batch.len() == DELIVERY_BATCH;
                        let mut sends = tokio::task::JoinSet::new();
                        for d in batch {
                            let q = self.clone();
                            sends.spawn(async move { q.deliver_one(d).await });
                        }
                        // A stop cuts sends short: their records stay leased
                        // in the store and go out after the next start.
                        tokio::select! {
                            _ = sends.join_all() => {}
                            _ = q.stop.cancelled() => break,
                        }
                        if full {
                            continue;
                        }
                        if let Some(next) = next {
                            wait = wait.min(Duration::from_millis(next.saturating_sub(now_ms())));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "asynchronous task store: delivery lease failed")
                    }
                }
            }
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = q.deliveries.notified() => {}
                _ = q.stop.cancelled() => {}
            }
        }
    }

    async fn deliver_one(&self, mut d: Delivery) {
        let m = &self.metrics;
        let result = destination::send(&self.client, &d).await;
        let now = now_ms();
        let stored = match result {
            Ok(()) => {
                m.destinations[0].inc();
                self.store.delivered(&d.id).await
            }
            Err(e) => {
                d.attempts += 1;
                let max_age = self.limits().destination_max_age.as_millis() as u64;
                if now.saturating_sub(d.created_ms) >= max_age {
                    m.destinations[2].inc();
                    tracing::warn!(record = %d.id, url = %d.url, error = %crate::error::error_chain(&e), "destination record dropped: not delivered within async_destination_max_age_s");
                    self.store.delivered(&d.id).await
                } else {
                    m.destinations[1].inc();
                    let wait = policy::backoff(self.limits().retry_base, d.attempts - 1);
                    d.due_ms = now + wait.as_millis() as u64;
                    tracing::info!(record = %d.id, url = %d.url, error = %crate::error::error_chain(&e), retry_in_ms = wait.as_millis() as u64, "destination not reached; will retry");
                    self.store.redeliver(d).await
                }
            }
        };
        if let Err(e) = stored {
            // The lease expires and the record is sent again.
            tracing::error!(error = %e, "asynchronous task store: delivery update failed");
        }
    }
}
