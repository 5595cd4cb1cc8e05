//! Fleet membership on NATS JetStream key-value buckets, shared by the
//! gateway (its `fleet` module) and the worker (`--fleet-nats-url`).
//!
//! - Each member puts its entry into its kind's bucket (`<fleet>_gateways`,
//!   `<fleet>_workers`) every heartbeat; the bucket's `max_age` is the
//!   member TTL, so what is not refreshed ages out of the server too.
//! - A [`Roster`] follows one bucket with a watch and judges liveness
//!   locally: a member is live until one TTL after its last entry was
//!   written. NATS 2.9 has no delete markers for aged-out entries, so this
//!   sweep is what counts a killed member out; a graceful stop deletes the
//!   entry and is seen at once.
//! - A worker releases the instances whose owner (the gateway that created
//!   them) is not live: the lease is the owner's heartbeat.

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Why a fleet's engine could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{url:?} is not a NATS address: {source}")]
    Address {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {urls}: {source}")]
    Connect {
        urls: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot open the bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Opens a fleet's key-value bucket, creating it when missing.
///
/// The stream is made here, as the KV layout defines it, rather than by
/// `create_key_value`: async-nats reads account fields (`reserved_memory`)
/// that NATS 2.9 does not send.
pub async fn bucket(
    js: &jetstream::Context,
    bucket: &str,
    history: i64,
    max_age: Duration,
    storage: stream::StorageType,
    replicas: usize,
) -> Result<kv::Store, EngineError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| EngineError::Bucket {
        bucket: bucket.to_string(),
        source,
    };
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history,
        max_age,
        storage,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    };
    if let Err(create) = js.create_stream(config).await {
        // Made by another member with other settings (say, another TTL):
        // used as it is.
        if js.get_stream(format!("KV_{bucket}")).await.is_err() {
            return Err(failed(Box::new(create)));
        }
        tracing::warn!(bucket, error = %create, "using the existing bucket as it is");
    }
    js.get_key_value(bucket.to_string())
        .await
        .map_err(|e| failed(Box::new(e)))
}

/// Who is live in one bucket.
pub struct Roster {
    store: kv::Store,
    ttl: Duration,
    watch: Option<kv::Watch>,
    /// Since when a watch has been following the bucket.
    watching_since: Option<Instant>,
    /// When the watch last delivered an entry (or was made).
    last_event: Option<Instant>,
    /// Key -> (counted out at, its value).
    members: HashMap<String, (Instant, Bytes)>,
}

impl Roster {
    pub fn new(store: kv::Store, ttl: Duration) -> Self {
        Roster {
            store,
            ttl,
            watch: None,
            watching_since: None,
            last_event: None,
            members: HashMap::new(),
        }
    }

    /// Starts the watch if it is not running (after an error, or at
    /// first), or again if it went quiet for a quarter of the TTL.
    ///
    /// A watch is an ordered consumer, and one can stall without an error
    /// when the server holding it goes (a cluster losing a node): every
    /// member would then age out here while alive. Watching again with
    /// history restores the view at once (each key's last entry, counted
    /// from when it was written); a bucket merely quiet costs one consumer
    /// per quarter TTL.
    pub async fn ensure_watch(&mut self, timeout: Duration) {
        if self.watch.is_some() {
            if self.last_event.is_some_and(|t| t.elapsed() < self.ttl / 4) {
                return;
            }
            tracing::debug!(bucket = %self.store.name, "the fleet watch is quiet; watching again");
            self.watch = None;
        }
        match tokio::time::timeout(timeout, self.store.watch_with_history(">")).await {
            Ok(Ok(w)) => {
                self.watch = Some(w);
                self.last_event = Some(Instant::now());
                // Set once: a later watch starts from history, and the
                // members kept here carry the view across.
                self.watching_since.get_or_insert_with(Instant::now);
            }
            Ok(Err(e)) => {
                tracing::warn!(bucket = %self.store.name, error = %e, "cannot watch the fleet bucket")
            }
            Err(_) => {
                tracing::warn!(bucket = %self.store.name, "watching the fleet bucket timed out")
            }
        }
    }

    /// The next change; pending while there is no watch (cancel-safe, for
    /// `select!`). Apply it with [`Roster::apply`].
    pub async fn changed(&mut self) -> Option<Result<kv::Entry, kv::WatcherError>> {
        match &mut self.watch {
            Some(w) => w.next().await,
            None => std::future::pending().await,
        }
    }

    pub fn apply(&mut self, change: Option<Result<kv::Entry, kv::WatcherError>>) {
        if let Some(Ok(_)) = change {
            self.last_event = Some(Instant::now());
        }
        match change {
            Some(Ok(e)) => match e.operation {
                kv::Operation::Put => {
                    // A first sighting may be an old entry: it counts from
                    // when it was written (the server's clock).
                    let written_ns = e.created.unix_timestamp_nanos();
                    let now_ns = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i128);
                    let age = (now_ns - written_ns).clamp(0, self.ttl.as_nanos() as i128);
                    let until = Instant::now() + (self.ttl - Duration::from_nanos(age as u64));
                    self.members.insert(e.key, (until, e.value));
                }
                kv::Operation::Delete | kv::Operation::Purge => {
                    self.members.remove(&e.key);
                }
            },
            Some(Err(e)) => {
                tracing::warn!(bucket = %self.store.name, error = %e, "the fleet watch failed; watching again");
                self.watch = None;
            }
            None => self.watch = None,
        }
    }

    /// Records a member seen by other means (this process's own heartbeat).
    pub fn seen(&mut self, key: &str, value: Bytes) {
        self.members
            .insert(key.to_string(), (Instant::now() + self.ttl, value));
    }

    /// Counts out the members not heard from within the TTL.
    pub fn sweep(&mut self) {
        let now = Instant::now();
        self.members.retain(|_, (until, _)| *until > now);
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn live(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.members.iter().map(|(k, (_, v))| (k.as_str(), v))
    }

    /// Whether the roster has followed the bucket for a whole TTL: only
    /// then is a member's absence a death rather than not seen yet.
    pub fn settled(&self) -> bool {
        self.watch.is_some() && self.watching_since.is_some_and(|t| t.elapsed() >= self.ttl)
    }
}

/// This process's own entry, put every heartbeat.
pub struct Heartbeat {
    store: kv::Store,
    pub key: String,
    pub value: Bytes,
    last_ok: Option<Instant>,
}

impl Heartbeat {
    pub fn new(store: kv::Store, key: String, value: Bytes) -> Self {
        Heartbeat {
            store,
            key,
            value,
            last_ok: None,
        }
    }

    /// One put; its round trip when the engine acknowledged it.
    pub async fn beat(&mut self, timeout: Duration) -> Option<Duration> {
        let sent = Instant::now();
        match tokio::time::timeout(timeout, self.store.put(&self.key, self.value.clone())).await {
            Ok(Ok(_)) => {
                self.last_ok = Some(Instant::now());
                Some(sent.elapsed())
            }
            Ok(Err(e)) => {
                tracing::warn!(bucket = %self.store.name, error = %e, "fleet heartbeat failed");
                None
            }
            Err(_) => {
                tracing::warn!(bucket = %self.store.name, timeout_ms = timeout.as_millis() as u64, "fleet heartbeat timed out");
                None
            }
        }
    }

    /// Time since the engine last acknowledged a heartbeat.
    pub fn age(&self) -> Option<Duration> {
        self.last_ok.map(|t| t.elapsed())
    }

    /// Whether the engine acknowledged one within `ttl`: while it has not,
    /// every other entry would age out, so rosters keep their last view (a
    /// partitioned member must not conclude the others are dead).
    pub fn healthy(&self, ttl: Duration) -> bool {
        self.age().is_some_and(|a| a < ttl)
    }

    /// On a graceful stop: the others count this member out at once.
    pub async fn leave(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.store.delete(&self.key)).await;
    }
}

/// The owner an instance carries: a gateway's id and the time its process
/// joined (`started_unix_ms` of its entry), so that a gateway restarted
/// under the same id does not keep its predecessor's instances alive.
pub fn owner(id: &str, started_unix_ms: u64) -> String {
    format!("{id}@{started_unix_ms}")
}

/// The owners live in a roster of gateways (their entries' id and start).
pub fn live_owners(gateways: &Roster) -> HashSet<String> {
    gateways
        .live()
        .filter_map(|(id, v)| {
            let entry: serde_json::Value = serde_json::from_slice(v).ok()?;
            Some(owner(id, entry["started_unix_ms"].as_u64()?))
        })
        .collect()
}

/// What a worker publishes about itself in `<fleet>_workers`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerEntry {
    /// The worker API's base URL, as gateways reach it.
    pub url: String,
    pub memory_mb: u64,
}

/// A worker's part in a fleet (`--fleet-nats-url`).
#[derive(Debug, Clone)]
pub struct WorkerFleet {
    pub nats_urls: Vec<String>,
    pub name: String,
    pub id: String,
    pub url: String,
    pub heartbeat: Duration,
    pub member_ttl: Duration,
    pub engine_timeout: Duration,
    /// How long NATS is retried at start before the worker gives up.
    pub connect_timeout: Duration,
    /// Copies of each bucket the worker creates (the gateways' `replicas`).
    pub replicas: usize,
}

/// A key-safe member id from a URL: `http://10.0.0.5:7070` -> `10_0_0_5_7070`.
pub fn id_from_url(url: &str) -> String {
    let host = url.split_once("://").map_or(url, |(_, rest)| rest);
    host.trim_end_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Connects to NATS, retrying until `within` has passed.
pub async fn connect(
    urls: &[String],
    name: String,
    engine_timeout: Duration,
    options: async_nats::ConnectOptions,
    within: Duration,
) -> Result<async_nats::Client, EngineError> {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| {
            u.parse().map_err(|source| EngineError::Address {
                url: u.clone(),
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    let options = options
        .name(name)
        .connection_timeout(engine_timeout.max(Duration::from_secs(1)))
        .request_timeout(Some(engine_timeout))
        .event_callback(|e| async move {
            match e {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                e => tracing::warn!(event = %e, "NATS connection"),
            }
        });
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match options.clone().connect(addrs.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "NATS not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(source) => {
                return Err(EngineError::Connect {
                    urls: urls.join(","),
                    source,
                });
            }
        }
    }
}

/// A worker's membership, joined: run it with [`Joined::run`].
pub struct Joined {
    worker: crate::Worker,
    cfg: WorkerFleet,
    beat: Heartbeat,
    owners: Roster,
}

impl crate::Worker {
    /// Joins the fleet (connects, opens its buckets), retrying NATS for
    /// `connect_timeout`; an error means the worker should not serve.
    pub async fn join_fleet(&self, cfg: WorkerFleet) -> Result<Joined, EngineError> {
        let client = connect(
            &cfg.nats_urls,
            format!("fngate worker {}/{}", cfg.name, cfg.id),
            cfg.engine_timeout,
            async_nats::ConnectOptions::new(),
            cfg.connect_timeout,
        )
        .await?;
        let js = jetstream::new(client);
        let memory = stream::StorageType::Memory;
        let workers = bucket(
            &js,
            &format!("{}_workers", cfg.name),
            1,
            cfg.member_ttl,
            memory,
            cfg.replicas,
        )
        .await?;
        let gateways = bucket(
            &js,
            &format!("{}_gateways", cfg.name),
            1,
            cfg.member_ttl,
            memory,
            cfg.replicas,
        )
        .await?;
        let entry = WorkerEntry {
            url: cfg.url.clone(),
            memory_mb: self.capacity().memory_mb_total,
        };
        let beat = Heartbeat::new(
            workers,
            cfg.id.clone(),
            Bytes::from(serde_json::to_vec(&entry).expect("plain data")),
        );
        let owners = Roster::new(gateways, cfg.member_ttl);
        tracing::info!(fleet = %cfg.name, id = %cfg.id, url = %cfg.url, "worker joined the fleet");
        Ok(Joined {
            worker: self.clone(),
            cfg,
            beat,
            owners,
        })
    }
}

impl Joined {
    /// Until `stop`: the worker's entry in `<fleet>_workers`, and the
    /// release of the instances of gateways whose heartbeat has expired.
    pub async fn run(self, stop: tokio_util::sync::CancellationToken) {
        let Joined {
            worker,
            cfg,
            mut beat,
            mut owners,
        } = self;
        let mut tick = tokio::time::interval(cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    beat.beat(cfg.engine_timeout).await;
                    owners.ensure_watch(cfg.engine_timeout).await;
                }
                change = owners.changed() => owners.apply(change),
            }
            if beat.healthy(cfg.member_ttl) {
                owners.sweep();
                if owners.settled() {
                    worker
                        .release_orphans(&live_owners(&owners), cfg.member_ttl)
                        .await;
                }
            }
        }
        beat.leave(cfg.engine_timeout).await;
    }
}
