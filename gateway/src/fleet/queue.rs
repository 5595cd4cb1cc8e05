//! The fleet's asynchronous queue: a [`TaskStore`] on NATS JetStream,
//! shared by every gateway of the fleet.
//!
//! ```text
//! submit ──publish (Nats-Msg-Id = task key)──▶ stream <fleet>_queue (work queue, file)
//!                                                 │ subjects <fleet>.tasks.<function>
//!                           durable pull consumer tasks_<function>, shared by every gateway
//!                                                 ▼
//! lease ── fetch ── record from KV <fleet>_tasks (CAS on its revision) ── attempt
//! update ── KV write, then: done → ack (double), retry → NAK with the delay
//! ```
//!
//! - The message carries the task as accepted (record and payload). The
//!   record's later versions (attempts, retries, state) live in the
//!   `<fleet>_tasks` bucket, the task API's source: any gateway answers.
//! - Ack wait (`async_ack_wait_ms`) is the lease: a running attempt sends
//!   "in progress" every third of it, so a long function keeps its task,
//!   while a killed gateway's tasks are redelivered to the others one ack
//!   wait after its last progress.
//! - Every write of a record is conditional on the revision this gateway
//!   read: an attempt whose task was stopped or taken over meanwhile does
//!   not overwrite it (`update` answers `false`).
//! - Destination records go to a second work-queue stream, `<fleet>_deliveries`.
//! - A stop of a running task is also published on the core subject
//!   `<fleet>.kill`: every gateway kills the attempt if it runs it.
//!
//! - A record names its message's stream sequence: the task API reads a
//!   pending task's payload from the stream. The message goes once the
//!   task is done, so the record that ends it (done or stopped) keeps the
//!   payload itself: written once, like the embedded store keeps it.
//!
//! What the embedded store does and this one does not: done records
//! expire with the bucket's `max_age` (`async_retention_s`) rather than
//! by count.

use super::{Fleet, FleetError};
use crate::asynchronous::store::{
    Appended, Delivery, Depth, Leased, Stop, StoreError, StoreFuture, TaskStore,
};
use crate::asynchronous::task::{TaskRecord, TaskState, task_key};
use crate::config::AsyncLimits;
use async_nats::jetstream::{self, AckKind, consumer, kv, stream};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Retries of a conditional write that lost to another writer.
const CAS_TRIES: usize = 4;
/// The most task records `list` reads.
const LIST_SCAN: usize = 10_000;
/// How long the server remembers a task key to drop a resubmission.
const DEDUPE_WINDOW: Duration = Duration::from_secs(120);

pub struct JetStreamStore {
    fleet: Arc<Fleet>,
    state: kv::Store,
    tasks: stream::Stream,
    deliveries: stream::Stream,
    tasks_subject: String,
    deliveries_subject: String,
    ack_wait: Duration,
    consumers: tokio::sync::Mutex<HashMap<String, consumer::PullConsumer>>,
    deliverer: tokio::sync::OnceCell<consumer::PullConsumer>,
    /// Messages leased here, by task key, with the record revision written
    /// at lease time.
    inflight: Arc<Mutex<HashMap<String, (jetstream::Message, u64)>>>,
    inflight_deliveries: Mutex<HashMap<String, jetstream::Message>>,
    depth: Arc<Mutex<Depth>>,
    /// Core NATS subject on which a stop asks every gateway to kill the
    /// attempt it may be running.
    kill_subject: String,
}

/// A stop's request to kill a running attempt, wherever it runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Kill {
    pub function: String,
    pub id: String,
}

/// An engine error: NATS did not answer as it should (worth a retry).
fn err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::unavailable(e)
}

/// `[u32 length][record JSON][payload]`: the task as accepted.
fn frame(task: &TaskRecord, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    frame_into(&mut b, task, payload);
    b.freeze()
}

fn frame_into(b: &mut BytesMut, task: &TaskRecord, payload: &[u8]) {
    let json = serde_json::to_vec(task).expect("plain data");
    b.reserve(4 + json.len() + payload.len());
    b.put_u32(json.len() as u32);
    b.put_slice(&json);
    b.put_slice(payload);
}

/// A frame's record JSON (unparsed) and its payload.
fn split_frame(b: &Bytes) -> Option<(&[u8], Bytes)> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let json = b.get(4..4 + len)?;
    Some((json, b.slice(4 + len..)))
}

fn unframe(b: &Bytes) -> Option<(TaskRecord, Bytes)> {
    let (json, payload) = split_frame(b)?;
    Some((serde_json::from_slice(json).ok()?, payload))
}

/// A task's entry in the `<fleet>_tasks` bucket.
struct Entry {
    record: TaskRecord,
    revision: u64,
    /// The sequence of the task's message in the queue stream (0: unknown).
    seq: u64,
    /// Kept once the task is done.
    payload: Option<Bytes>,
}

/// `[u64 message sequence][u8 payload kept][frame]` (the payload empty
/// unless kept).
fn entry_value(r: &TaskRecord, seq: u64, payload: Option<&[u8]>) -> Bytes {
    let mut b = BytesMut::with_capacity(9);
    b.put_u64(seq);
    b.put_u8(payload.is_some() as u8);
    frame_into(&mut b, r, payload.unwrap_or_default());
    b.freeze()
}

/// Also reads a plain JSON record (no sequence, no payload).
fn read_entry(value: &Bytes, revision: u64) -> Result<Entry, StoreError> {
    if value.first() == Some(&b'{') {
        let record = serde_json::from_slice(value).map_err(StoreError::storage)?;
        return Ok(Entry {
            record,
            revision,
            seq: 0,
            payload: None,
        });
    }
    let broken = || StoreError::storage("a task record in an unknown format");
    let seq = u64::from_be_bytes(value.get(..8).ok_or_else(broken)?.try_into().unwrap());
    let kept = *value.get(8).ok_or_else(broken)? == 1;
    let framed = value.slice(9..);
    let (json, payload) = split_frame(&framed).ok_or_else(broken)?;
    let record = serde_json::from_slice(json).map_err(StoreError::storage)?;
    Ok(Entry {
        record,
        revision,
        seq,
        payload: kept.then_some(payload),
    })
}

impl JetStreamStore {
    /// Also returns the kill requests this gateway hears (it passes them to
    /// its dispatcher's `AsyncQueue::kill`).
    pub async fn open(
        fleet: Arc<Fleet>,
        limits: &AsyncLimits,
    ) -> Result<(Arc<Self>, tokio::sync::mpsc::UnboundedReceiver<Kill>), FleetError> {
        let js = &fleet.jetstream;
        let engine =
            |what: &str, source: Box<dyn std::error::Error + Send + Sync>| FleetError::JetStream {
                what: what.to_string(),
                source,
            };
        let max_payload = fleet.client.server_info().max_payload as u64;
        if limits.max_body_bytes + 64 * 1024 > max_payload {
            return Err(FleetError::PayloadTooLarge {
                body: limits.max_body_bytes,
                max_payload,
            });
        }
        let tasks_subject = format!("{}.tasks", fleet.cfg.name);
        let deliveries_subject = format!("{}.deliveries", fleet.cfg.name);
        let queue =
            |name: String, subject: String, max_messages: i64, max_bytes: i64| stream::Config {
                name,
                subjects: vec![subject],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::New,
                max_messages,
                max_bytes,
                duplicate_window: DEDUPE_WINDOW,
                num_replicas: fleet.cfg.replicas,
                ..Default::default()
            };
        let tasks_name = fleet.scoped("queue");
        let tasks = js
            .get_or_create_stream(queue(
                tasks_name.clone(),
                format!("{tasks_subject}.>"),
                i64::from(limits.max_queued),
                limits.max_queued_bytes as i64,
            ))
            .await
            .map_err(|e| engine(&tasks_name, Box::new(e)))?;
        let deliveries_name = fleet.scoped("deliveries");
        let deliveries = js
            .get_or_create_stream(queue(
                deliveries_name.clone(),
                deliveries_subject.clone(),
                -1,
                -1,
            ))
            .await
            .map_err(|e| engine(&deliveries_name, Box::new(e)))?;
        let state = fleet
            .bucket("tasks", 1, limits.retention, stream::StorageType::File)
            .await?;
        let kill_subject = format!("{}.kill", fleet.cfg.name);
        let mut kills = fleet
            .client
            .subscribe(kill_subject.clone())
            .await
            .map_err(|e| engine(&kill_subject, Box::new(e)))?;
        let (kill_tx, kill_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = kills.next().await {
                if let Ok(k) = serde_json::from_slice::<Kill>(&m.payload)
                    && kill_tx.send(k).is_err()
                {
                    return;
                }
            }
        });
        let store = Arc::new(JetStreamStore {
            kill_subject,
            ack_wait: fleet.cfg.async_ack_wait,
            fleet,
            state,
            tasks,
            deliveries,
            tasks_subject,
            deliveries_subject,
            consumers: Default::default(),
            deliverer: Default::default(),
            inflight: Default::default(),
            inflight_deliveries: Default::default(),
            depth: Default::default(),
        });
        tokio::spawn(Self::keep_up(Arc::downgrade(&store)));
        Ok((store, kill_rx))
    }

    /// While the store lives: "in progress" for every attempt running here,
    /// and the queue's depth, both every third of the ack wait (at most 1 s
    /// apart for the depth).
    async fn keep_up(this: std::sync::Weak<Self>) {
        let Some(ack_wait) = this.upgrade().map(|s| s.ack_wait) else {
            return;
        };
        let mut tick = tokio::time::interval((ack_wait / 3).min(Duration::from_secs(1)));
        let mut last_progress = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let Some(s) = this.upgrade() else { return };
            if last_progress.elapsed() >= ack_wait / 3 {
                last_progress = tokio::time::Instant::now();
                let running: Vec<_> = s
                    .inflight
                    .lock()
                    .unwrap()
                    .values()
                    .map(|(m, _)| m.clone())
                    .collect();
                for m in running {
                    let _ = m.ack_with(AckKind::Progress).await;
                }
            }
            let timeout = s.fleet.cfg.engine_timeout;
            let (tasks, deliveries) = tokio::join!(
                tokio::time::timeout(timeout, s.tasks.get_info()),
                tokio::time::timeout(timeout, s.deliveries.get_info()),
            );
            let mut d = s.depth.lock().unwrap();
            if let Ok(Ok(t)) = tasks {
                d.tasks = t.state.messages;
                d.bytes = t.state.bytes;
                d.oldest_accepted_ms = (t.state.messages > 0)
                    .then(|| (t.state.first_timestamp.unix_timestamp_nanos() / 1_000_000) as u64);
            }
            if let Ok(Ok(i)) = deliveries {
                d.deliveries = i.state.messages;
            }
        }
    }

    async fn consumer(&self, function: &str) -> Result<consumer::PullConsumer, StoreError> {
        let mut consumers = self.consumers.lock().await;
        if let Some(c) = consumers.get(function) {
            return Ok(c.clone());
        }
        let name = format!("tasks_{function}");
        let c = self
            .tasks
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("{}.{function}", self.tasks_subject),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    // Retries are the retry rule's, not the engine's.
                    max_deliver: -1,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(err)?;
        consumers.insert(function.to_string(), c.clone());
        Ok(c)
    }

    async fn deliverer(&self, ack_wait: Duration) -> Result<&consumer::PullConsumer, StoreError> {
        self.deliverer
            .get_or_try_init(|| async {
                self.deliveries
                    .get_or_create_consumer(
                        "deliverer",
                        consumer::pull::Config {
                            durable_name: Some("deliverer".into()),
                            ack_policy: consumer::AckPolicy::Explicit,
                            ack_wait,
                            max_deliver: -1,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(err)
            })
            .await
    }

    /// The task's current entry.
    async fn entry(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        match self.state.entry(key).await.map_err(err)? {
            Some(e) if e.operation == kv::Operation::Put => {
                read_entry(&e.value, e.revision).map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn record(&self, key: &str) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.entry(key).await?.map(|e| e.record))
    }

    /// Writes `r` (its message at `seq`, the payload if kept) if the entry
    /// is still at `revision` (0: absent). `None`: another writer came first.
    async fn write(
        &self,
        r: &TaskRecord,
        revision: u64,
        seq: u64,
        payload: Option<&[u8]>,
    ) -> Result<Option<u64>, StoreError> {
        let value = entry_value(r, seq, payload);
        let key = r.key();
        let done = if revision == 0 {
            self.state
                .create(&key, value)
                .await
                .map_err(|e| (e.kind() != kv::CreateErrorKind::AlreadyExists).then(|| err(e)))
        } else {
            self.state
                .update(&key, value, revision)
                .await
                .map_err(|e| (e.kind() != kv::UpdateErrorKind::WrongLastRevision).then(|| err(e)))
        };
        match done {
            Ok(rev) => Ok(Some(rev)),
            Err(None) => Ok(None),
            Err(Some(e)) => Err(e),
        }
    }

    /// The payload of a task not done yet, from its message (`None` once
    /// the message is gone).
    async fn pending_payload(&self, key: &str, seq: u64) -> Result<Option<Bytes>, StoreError> {
        if seq == 0 {
            return Ok(None);
        }
        match self.tasks.get_raw_message(seq).await {
            Ok(m) => Ok(unframe(&m.payload)
                .filter(|(accepted, _)| accepted.key() == key)
                .map(|(_, payload)| payload)),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Publishes with a message id; returns whether the server dropped it
    /// as a duplicate, and its sequence.
    async fn publish(
        &self,
        subject: String,
        id: &str,
        body: Bytes,
    ) -> Result<(bool, u64), StoreError> {
        let ack = self
            .fleet
            .jetstream
            .send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .message_id(id)
                    .payload(body),
            )
            .await
            .map_err(err)?
            .await
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("maximum messages") {
                    StoreError::Full("max_async_queued")
                } else if text.contains("maximum bytes") {
                    StoreError::Full("max_async_queued_bytes")
                } else {
                    err(text)
                }
            })?;
        Ok((ack.duplicate, ack.sequence))
    }

    async fn do_append(&self, task: TaskRecord, payload: Bytes) -> Result<Appended, StoreError> {
        let key = task.key();
        let subject = format!("{}.{}", self.tasks_subject, task.function);
        let (duplicate, seq) = self.publish(subject, &key, frame(&task, &payload)).await?;
        if duplicate {
            let known = self.record(&key).await?.unwrap_or(task);
            return Ok(Appended::Known(Box::new(known)));
        }
        // The task is durable from here; its record follows (a lease that
        // finds none uses the message's own).
        if self.write(&task, 0, seq, None).await?.is_some() {
            return Ok(Appended::New);
        }
        match self.entry(&key).await? {
            // Made from this very message by a gateway that leased it
            // between the publish and this write: the task is this one,
            // running. Its message must stay (deleting it would leave the
            // record running with nothing to redeliver if that gateway dies).
            Some(e) if e.seq == seq => Ok(Appended::New),
            // Known for longer than the server's dedupe window (its record
            // is still kept): this message is a duplicate, not run twice.
            Some(e) => {
                let _ = self.tasks.delete_message(seq).await;
                Ok(Appended::Known(Box::new(e.record)))
            }
            // Purged meanwhile: this message is the task.
            None => Ok(Appended::New),
        }
    }

    /// Up to `max` messages waiting for `c`, within the engine timeout: a
    /// pull the server never answers (one sent while a new consumer elects
    /// its leader on a cluster, or across a reconnect) would otherwise hold
    /// the dispatcher for good. What arrived is kept; messages delivered
    /// too late come back after the ack wait.
    async fn fetch(
        &self,
        c: &consumer::PullConsumer,
        max: usize,
    ) -> Result<Vec<jetstream::Message>, StoreError> {
        let mut messages = Vec::new();
        let pulled = tokio::time::timeout(self.fleet.cfg.engine_timeout, async {
            let mut batch = c.fetch().max_messages(max).messages().await.map_err(err)?;
            while let Some(m) = batch.next().await {
                messages.push(m.map_err(err)?);
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(err("the pull was not answered in time")));
        match pulled {
            Err(e) if messages.is_empty() => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, kept = messages.len(), "a fleet pull ended early");
                Ok(messages)
            }
            Ok(()) => Ok(messages),
        }
    }

    async fn do_lease(
        &self,
        function: &str,
        now: u64,
        max: usize,
        until: u64,
    ) -> Result<(Vec<Leased>, bool), StoreError> {
        let c = self.consumer(function).await?;
        let messages = self.fetch(&c, max).await?;
        // Each message's record read and write are round trips: all of
        // the batch's at once. A message whose lease failed is redelivered
        // after the ack wait.
        let full = messages.len() >= max;
        let leases = messages.into_iter().map(|m| self.lease_one(m, now, until));
        let mut leased = Vec::new();
        for l in futures_util::future::join_all(leases).await {
            match l {
                Ok(Some(l)) => leased.push(l),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "a fleet task could not be leased; it comes back after the ack wait")
                }
            }
        }
        Ok((leased, full))
    }

    async fn lease_one(
        &self,
        m: jetstream::Message,
        now: u64,
        until: u64,
    ) -> Result<Option<Leased>, StoreError> {
        let Some((accepted, payload)) = unframe(&m.payload) else {
            tracing::error!(subject = %m.subject, "dropping an unreadable task message");
            let _ = m.ack_with(AckKind::Term).await;
            return Ok(None);
        };
        let key = accepted.key();
        let seq = m.info().map_err(err)?.stream_sequence;
        let (old, rev) = match self.entry(&key).await? {
            Some(e) => (e.record, e.revision),
            None => (accepted, 0),
        };
        if old.state.is_done() {
            // Stopped (or done by an attempt whose ack was lost).
            let _ = m.ack().await;
            return Ok(None);
        }
        if old.state == TaskState::Enqueued && old.due_ms > now {
            let _ = m
                .ack_with(AckKind::Nak(Some(Duration::from_millis(old.due_ms - now))))
                .await;
            return Ok(None);
        }
        let t = old.leased(now, until);
        match self.write(&t, rev, seq, None).await? {
            Some(rev) => {
                self.inflight.lock().unwrap().insert(key, (m, rev));
                Ok(Some(Leased {
                    task: t,
                    payload,
                    was_due_ms: old.due_ms,
                }))
            }
            // Changed meanwhile (a stop): look again at once.
            None => {
                let _ = m.ack_with(AckKind::Nak(None)).await;
                Ok(None)
            }
        }
    }

    async fn do_update(
        &self,
        task: TaskRecord,
        delivery: Option<Delivery>,
    ) -> Result<bool, StoreError> {
        let key = task.key();
        let Some((m, rev)) = self.inflight.lock().unwrap().remove(&key) else {
            return Ok(false);
        };
        if let Some(d) = &delivery {
            let body = Bytes::from(serde_json::to_vec(d).expect("plain data"));
            self.publish(self.deliveries_subject.clone(), &d.id, body)
                .await?;
        }
        let seq = m.info().map_or(0, |i| i.stream_sequence);
        // The message goes with the ack: a done task's record keeps the
        // payload from here on.
        let kept = task
            .state
            .is_done()
            .then(|| split_frame(&m.payload).map(|(_, p)| p))
            .flatten();
        if self
            .write(&task, rev, seq, kept.as_deref())
            .await?
            .is_none()
        {
            // Stopped, or taken over after this gateway's lease lapsed.
            if let Some(now) = self.record(&key).await?
                && now.state.is_done()
            {
                let _ = m.ack().await;
            }
            return Ok(false);
        }
        if task.state.is_done() {
            m.double_ack().await.map_err(err)?;
        } else {
            let wait = task.due_ms.saturating_sub(crate::asynchronous::now_ms());
            let _ = m
                .ack_with(AckKind::Nak(Some(Duration::from_millis(wait))))
                .await;
        }
        Ok(true)
    }

    async fn do_stop(&self, function: &str, id: &str, now: u64) -> Result<Stop, StoreError> {
        let key = task_key(function, id);
        for _ in 0..CAS_TRIES {
            let Some(e) = self.entry(&key).await? else {
                return Ok(Stop::NotFound);
            };
            let old = e.record;
            if old.state.is_done() {
                return Ok(Stop::Done(old));
            }
            // Its message goes at the next lease: the record keeps the
            // payload.
            let kept = self.pending_payload(&key, e.seq).await?;
            let mut t = old.clone();
            t.state = TaskState::Stopped;
            t.ended_ms = Some(now);
            t.event("Stopped", now, String::new());
            if self
                .write(&t, e.revision, e.seq, kept.as_deref())
                .await?
                .is_some()
            {
                if old.state == TaskState::Running {
                    // The attempt may run on another gateway: every one
                    // kills it if it holds it (best effort; else it runs to
                    // its end and its result is refused).
                    let kill = Kill {
                        function: function.to_string(),
                        id: id.to_string(),
                    };
                    let body = Bytes::from(serde_json::to_vec(&kill).expect("plain data"));
                    let _ = self
                        .fleet
                        .client
                        .publish(self.kill_subject.clone(), body)
                        .await;
                }
                return Ok(Stop::Stopped {
                    task: t,
                    was_running: old.state == TaskState::Running,
                });
            }
        }
        Err(err("the task kept changing while it was being stopped"))
    }

    async fn do_list(
        &self,
        function: &str,
        state: Option<TaskState>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let prefix = task_key(function, "");
        let mut keys = self.state.keys().await.map_err(err)?;
        let mut found = Vec::new();
        let mut scanned = 0;
        while let Some(k) = keys.next().await {
            let k = k.map_err(err)?;
            scanned += 1;
            if scanned > LIST_SCAN {
                break;
            }
            if !k.starts_with(&prefix) {
                continue;
            }
            if let Some(r) = self.record(&k).await?
                && state.is_none_or(|s| r.state == s)
            {
                found.push(r);
            }
        }
        found.sort_by_key(|r| std::cmp::Reverse(r.accepted_ms));
        found.truncate(limit);
        Ok(found)
    }

    async fn do_lease_deliveries(
        &self,
        now: u64,
        max: usize,
        until: u64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let c = self
            .deliverer(Duration::from_millis(until.saturating_sub(now).max(1000)))
            .await?;
        let mut out = Vec::new();
        for m in self.fetch(c, max).await? {
            let Ok(d) = serde_json::from_slice::<Delivery>(&m.payload) else {
                let _ = m.ack_with(AckKind::Term).await;
                continue;
            };
            if d.due_ms > now {
                let _ = m
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(d.due_ms - now))))
                    .await;
                continue;
            }
            self.inflight_deliveries
                .lock()
                .unwrap()
                .insert(d.id.clone(), m);
            out.push(d);
        }
        Ok(out)
    }
}

/// How often a function's consumer is asked for work when none arrived:
/// other gateways enqueue without waking this one.
const POLL_MS: u64 = 100;

impl TaskStore for JetStreamStore {
    fn append(&self, task: TaskRecord, payload: Bytes) -> StoreFuture<'_, Appended> {
        Box::pin(self.do_append(task, payload))
    }

    fn lease(
        &self,
        function: &str,
        now_ms: u64,
        max: usize,
        lease_until_ms: u64,
    ) -> StoreFuture<'_, (Vec<Leased>, Option<u64>)> {
        let function = function.to_string();
        Box::pin(async move {
            let (leased, full) = self
                .do_lease(&function, now_ms, max, lease_until_ms)
                .await?;
            // A full batch: more may be waiting, look again at once.
            let next = if full { now_ms } else { now_ms + POLL_MS };
            Ok((leased, Some(next)))
        })
    }

    fn update(&self, task: TaskRecord, delivery: Option<Delivery>) -> StoreFuture<'_, bool> {
        Box::pin(self.do_update(task, delivery))
    }

    fn stop(&self, function: &str, id: &str, now_ms: u64) -> StoreFuture<'_, Stop> {
        let (function, id) = (function.to_string(), id.to_string());
        Box::pin(async move { self.do_stop(&function, &id, now_ms).await })
    }

    fn get(
        &self,
        function: &str,
        id: &str,
    ) -> StoreFuture<'_, Option<(TaskRecord, Option<Bytes>)>> {
        let key = task_key(function, id);
        Box::pin(async move {
            let Some(e) = self.entry(&key).await? else {
                return Ok(None);
            };
            let payload = match e.payload {
                Some(p) => Some(p),
                None if !e.record.state.is_done() => self.pending_payload(&key, e.seq).await?,
                None => None,
            };
            Ok(Some((e.record, payload)))
        })
    }

    fn list(
        &self,
        function: &str,
        state: Option<TaskState>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<TaskRecord>> {
        let function = function.to_string();
        Box::pin(async move { self.do_list(&function, state, limit).await })
    }

    /// Nothing to do: the engine redelivers what a dead gateway held, one
    /// ack wait after its last sign of progress.
    fn recover(&self, _now_ms: u64) -> StoreFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }

    /// Done records expire with the bucket's `max_age`.
    fn purge(&self, _before_ms: u64, _keep: u64) -> StoreFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }

    fn lease_deliveries(
        &self,
        now_ms: u64,
        max: usize,
        lease_until_ms: u64,
    ) -> StoreFuture<'_, (Vec<Delivery>, Option<u64>)> {
        Box::pin(async move {
            let out = self
                .do_lease_deliveries(now_ms, max, lease_until_ms)
                .await?;
            Ok((out, Some(now_ms + POLL_MS)))
        })
    }

    fn delivered(&self, id: &str) -> StoreFuture<'_, ()> {
        let m = self.inflight_deliveries.lock().unwrap().remove(id);
        Box::pin(async move {
            if let Some(m) = m {
                m.double_ack().await.map_err(err)?;
            }
            Ok(())
        })
    }

    fn redeliver(&self, delivery: Delivery) -> StoreFuture<'_, ()> {
        let m = self
            .inflight_deliveries
            .lock()
            .unwrap()
            .remove(&delivery.id);
        Box::pin(async move {
            // The next try as a new message (its count and due time are in
            // it), then the old one acknowledged: a crash between sends twice.
            let id = format!("{}#{}", delivery.id, delivery.attempts);
            let body = Bytes::from(serde_json::to_vec(&delivery).expect("plain data"));
            self.publish(self.deliveries_subject.clone(), &id, body)
                .await?;
            if let Some(m) = m {
                let _ = m.ack().await;
            }
            Ok(())
        })
    }

    fn depth(&self) -> Depth {
        *self.depth.lock().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TaskRecord {
        let mut t: TaskRecord = serde_json::from_str(
            r#"{"id":"t1","request_id":"r","function":"f","api":"fc","caller":{"network":"internet"},
                "payload_bytes":3,"accepted_ms":5,"due_ms":5,"state":"Enqueued","attempts":0,
                "retries":0,"backoffs":0,"events":[]}"#,
        )
        .unwrap();
        t.attempts = 2;
        t
    }

    #[test]
    fn an_entry_keeps_its_message_sequence_and_tells_a_kept_empty_payload_from_none() {
        let r = record();
        for (seq, payload) in [(7, None), (1 << 40, Some(&b"abc"[..])), (9, Some(&b""[..]))] {
            let e = read_entry(&entry_value(&r, seq, payload), 3).unwrap();
            assert_eq!((e.seq, e.revision), (seq, 3));
            assert_eq!(e.record.key(), r.key());
            assert_eq!(e.record.attempts, 2);
            assert_eq!(e.payload.as_deref(), payload);
        }
    }

    #[test]
    fn a_plain_json_record_reads_and_a_truncated_entry_is_an_error() {
        let json = Bytes::from(serde_json::to_vec(&record()).unwrap());
        let e = read_entry(&json, 1).unwrap();
        assert_eq!((e.seq, e.payload), (0, None));
        let v = entry_value(&record(), 4, Some(b"abc"));
        for cut in [0, 5, 11, 20] {
            assert!(read_entry(&v.slice(..cut), 1).is_err(), "cut at {cut}");
        }
    }
}
