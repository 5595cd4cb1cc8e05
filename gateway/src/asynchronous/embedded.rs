//! The embedded task store: redb (crash-safe, checksummed commits), one
//! writer thread, group commit.
//!
//! Every change goes to the writer thread through a bounded channel; it
//! takes what has queued up (up to [`MAX_BATCH`] changes), applies it in one
//! write transaction and commits once: concurrent enqueues share one fsync,
//! and a caller is answered only after the commit that holds its change.
//! Reads use their own read transactions on the blocking pool, beside the
//! writer.
//!
//! Tables (a task's key is `function/id`, see [`task_key`]; index keys
//! are tuples ordered for the scans that use them):
//! `tasks` key → record (JSON); `payloads` key → bytes (written once);
//! `due` (function, due ms, id) for tasks not done (a running task's key is
//! its lease's end, so an expired lease is simply due); `leased` key →
//! lease end, for recovery; `pending` (accepted ms, key) → payload bytes,
//! for the depth and the oldest task; `done` (ended ms, key), for
//! retention; `by_function` (function, accepted ms, id), for listing;
//! `deliveries` id → destination record, and `delivery_due` (due ms, id).

use super::store::{Appended, Delivery, Depth, Leased, Stop, StoreError, StoreFuture, TaskStore};
use super::task::{TaskRecord, TaskState, task_key};
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

type Id = &'static str;
const TASKS: TableDefinition<Id, &[u8]> = TableDefinition::new("tasks");
const PAYLOADS: TableDefinition<Id, &[u8]> = TableDefinition::new("payloads");
const DUE: TableDefinition<(Id, u64, Id), ()> = TableDefinition::new("due");
const LEASED: TableDefinition<Id, u64> = TableDefinition::new("leased");
const PENDING: TableDefinition<(u64, Id), u64> = TableDefinition::new("pending");
const DONE: TableDefinition<(u64, Id), ()> = TableDefinition::new("done");
const BY_FUNCTION: TableDefinition<(Id, u64, Id), ()> = TableDefinition::new("by_function");
const DELIVERIES: TableDefinition<Id, &[u8]> = TableDefinition::new("deliveries");
const DELIVERY_DUE: TableDefinition<(u64, Id), ()> = TableDefinition::new("delivery_due");

/// The most changes one commit holds.
pub const MAX_BATCH: usize = 512;
/// The most done tasks one purge deletes (the next purge takes the rest).
pub const PURGE_BATCH: usize = 4096;

/// The store's bounds on what is accepted and not done.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_tasks: u64,
    pub max_bytes: u64,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Op {
    Append(TaskRecord, Bytes, Reply<Appended>),
    Lease {
        function: String,
        now: u64,
        max: usize,
        until: u64,
        reply: Reply<(Vec<Leased>, Option<u64>)>,
    },
    Update(TaskRecord, Option<Delivery>, Reply<bool>),
    /// A task's key.
    Stop(String, u64, Reply<Stop>),
    Recover(u64, Reply<u64>),
    /// Done tasks ended before the time, and the oldest beyond the count.
    Purge(u64, u64, Reply<u64>),
    LeaseDeliveries {
        now: u64,
        max: usize,
        until: u64,
        reply: Reply<(Vec<Delivery>, Option<u64>)>,
    },
    Delivered(String, Reply<()>),
    Redeliver(Delivery, Reply<()>),
}

/// An answer held until its commit is known.
type Answer = Box<dyn FnOnce(Option<&StoreError>) + Send>;

fn answer<T: Send + 'static>(tx: Reply<T>, v: Result<T, StoreError>) -> Answer {
    Box::new(move |failed| {
        let _ = tx.send(match failed {
            Some(e) => Err(e.clone()),
            None => v,
        });
    })
}

#[derive(Default)]
struct DepthCell {
    tasks: AtomicU64,
    bytes: AtomicU64,
    /// 0: none.
    oldest: AtomicU64,
    deliveries: AtomicU64,
    done: AtomicU64,
}

impl DepthCell {
    fn load(&self) -> Depth {
        let oldest = self.oldest.load(Ordering::Relaxed);
        Depth {
            tasks: self.tasks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            oldest_accepted_ms: (oldest != 0).then_some(oldest),
            deliveries: self.deliveries.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
        }
    }

    fn store(&self, d: &Depth) {
        self.tasks.store(d.tasks, Ordering::Relaxed);
        self.bytes.store(d.bytes, Ordering::Relaxed);
        self.oldest
            .store(d.oldest_accepted_ms.unwrap_or(0), Ordering::Relaxed);
        self.deliveries.store(d.deliveries, Ordering::Relaxed);
        self.done.store(d.done, Ordering::Relaxed);
    }
}

pub struct Embedded {
    db: Arc<Database>,
    ops: mpsc::Sender<Op>,
    depth: Arc<DepthCell>,
}

fn err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::storage(e)
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(err)
}

impl Embedded {
    /// Opens (or creates) the store at `path`; `None`: in memory (nothing
    /// survives the process; for comparison and tests).
    pub fn open(
        path: Option<&Path>,
        bounds: Bounds,
        commit_seconds: prometheus::Histogram,
    ) -> Result<Embedded, StoreError> {
        let db = match path {
            Some(p) => Database::create(p).map_err(|e| err(format!("{}: {e}", p.display())))?,
            None => Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(err)?,
        };
        let db = Arc::new(db);
        let depth = Arc::new(DepthCell::default());
        depth.store(&Self::count(&db)?);
        let (ops, rx) = mpsc::channel(4 * MAX_BATCH);
        let (d, w) = (depth.clone(), db.clone());
        std::thread::Builder::new()
            .name("fngate-async-store".into())
            .spawn(move || writer(&w, rx, &d, bounds, &commit_seconds))
            .map_err(err)?;
        Ok(Embedded { db, ops, depth })
    }

    /// Creates the tables if new, and counts what is pending.
    fn count(db: &Database) -> Result<Depth, StoreError> {
        let txn = db.begin_write().map_err(err)?;
        let depth = {
            let t = Tables::open(&txn)?;
            let mut d = Depth::default();
            for e in t.pending.iter().map_err(err)? {
                let (_, bytes) = e.map_err(err)?;
                d.tasks += 1;
                d.bytes += bytes.value();
            }
            d.deliveries = t.deliveries.len().map_err(err)?;
            d.oldest_accepted_ms = t.oldest()?;
            d.done = t.done.len().map_err(err)?;
            d
        };
        txn.commit().map_err(err)?;
        Ok(depth)
    }

    fn send<T: Send + 'static>(
        &self,
        op: impl FnOnce(Reply<T>) -> Op + Send + 'static,
    ) -> StoreFuture<'_, T> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.ops
                .send(op(tx))
                .await
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db.begin_read().map_err(err)?))
                .await
                .map_err(err)?
        })
    }
}

impl TaskStore for Embedded {
    fn append(&self, task: TaskRecord, payload: Bytes) -> StoreFuture<'_, Appended> {
        self.send(move |r| Op::Append(task, payload, r))
    }

    fn lease(
        &self,
        function: &str,
        now_ms: u64,
        max: usize,
        lease_until_ms: u64,
    ) -> StoreFuture<'_, (Vec<Leased>, Option<u64>)> {
        let function = function.to_string();
        self.send(move |reply| Op::Lease {
            function,
            now: now_ms,
            max,
            until: lease_until_ms,
            reply,
        })
    }

    fn update(&self, task: TaskRecord, delivery: Option<Delivery>) -> StoreFuture<'_, bool> {
        self.send(move |r| Op::Update(task, delivery, r))
    }

    fn stop(&self, function: &str, id: &str, now_ms: u64) -> StoreFuture<'_, Stop> {
        let key = task_key(function, id);
        self.send(move |r| Op::Stop(key, now_ms, r))
    }

    fn get(
        &self,
        function: &str,
        id: &str,
    ) -> StoreFuture<'_, Option<(TaskRecord, Option<Bytes>)>> {
        let id = task_key(function, id);
        self.read(move |txn| {
            let tasks = txn.open_table(TASKS).map_err(err)?;
            let Some(rec) = tasks.get(id.as_str()).map_err(err)? else {
                return Ok(None);
            };
            let rec: TaskRecord = decode(rec.value())?;
            let payloads = txn.open_table(PAYLOADS).map_err(err)?;
            let payload = payloads
                .get(id.as_str())
                .map_err(err)?
                .map(|p| Bytes::copy_from_slice(p.value()));
            Ok(Some((rec, payload)))
        })
    }

    fn list(
        &self,
        function: &str,
        state: Option<TaskState>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<TaskRecord>> {
        let function = function.to_string();
        self.read(move |txn| {
            let by_fn = txn.open_table(BY_FUNCTION).map_err(err)?;
            let tasks = txn.open_table(TASKS).map_err(err)?;
            let f = function.as_str();
            let mut out = Vec::new();
            for e in by_fn
                .range((f, 0, "")..=(f, u64::MAX, "\u{10ffff}"))
                .map_err(err)?
                .rev()
            {
                let (k, _) = e.map_err(err)?;
                let (_, _, id) = k.value();
                let Some(rec) = tasks.get(task_key(f, id).as_str()).map_err(err)? else {
                    continue;
                };
                let rec: TaskRecord = decode(rec.value())?;
                if state.is_none_or(|s| s == rec.state) {
                    out.push(rec);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    fn recover(&self, now_ms: u64) -> StoreFuture<'_, u64> {
        self.send(move |r| Op::Recover(now_ms, r))
    }

    fn purge(&self, before_ms: u64, keep: u64) -> StoreFuture<'_, u64> {
        self.send(move |r| Op::Purge(before_ms, keep, r))
    }

    fn lease_deliveries(
        &self,
        now_ms: u64,
        max: usize,
        lease_until_ms: u64,
    ) -> StoreFuture<'_, (Vec<Delivery>, Option<u64>)> {
        self.send(move |reply| Op::LeaseDeliveries {
            now: now_ms,
            max,
            until: lease_until_ms,
            reply,
        })
    }

    fn delivered(&self, id: &str) -> StoreFuture<'_, ()> {
        let id = id.to_string();
        self.send(move |r| Op::Delivered(id, r))
    }

    fn redeliver(&self, delivery: Delivery) -> StoreFuture<'_, ()> {
        self.send(move |r| Op::Redeliver(delivery, r))
    }

    fn depth(&self) -> Depth {
        self.depth.load()
    }
}

/// The writer thread: one commit per batch of changes.
fn writer(
    db: &Database,
    mut rx: mpsc::Receiver<Op>,
    depth: &DepthCell,
    bounds: Bounds,
    commit_seconds: &prometheus::Histogram,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(op) = rx.blocking_recv() {
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let mut d = depth.load();
        let mut answers = Vec::with_capacity(batch.len());
        let committed = (|| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut t = Tables::open(&txn)?;
                for op in batch.drain(..) {
                    answers.push(t.apply(op, &mut d, bounds)?);
                }
                d.oldest_accepted_ms = t.oldest()?;
                d.done = t.done.len().map_err(err)?;
            }
            txn.commit().map_err(err)
        })();
        commit_seconds.observe(started.elapsed().as_secs_f64());
        // Ops not reached when a change failed are answered by dropping
        // their reply (the caller sees the store closed for that call).
        batch.clear();
        match committed {
            Ok(()) => {
                depth.store(&d);
                answers.into_iter().for_each(|a| a(None));
            }
            Err(e) => {
                tracing::error!(error = %e, "asynchronous task store commit failed");
                answers.into_iter().for_each(|a| a(Some(&e)));
            }
        }
    }
}

struct Tables<'t> {
    tasks: redb::Table<'t, Id, &'static [u8]>,
    payloads: redb::Table<'t, Id, &'static [u8]>,
    due: redb::Table<'t, (Id, u64, Id), ()>,
    leased: redb::Table<'t, Id, u64>,
    pending: redb::Table<'t, (u64, Id), u64>,
    done: redb::Table<'t, (u64, Id), ()>,
    by_function: redb::Table<'t, (Id, u64, Id), ()>,
    deliveries: redb::Table<'t, Id, &'static [u8]>,
    delivery_due: redb::Table<'t, (u64, Id), ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            tasks: txn.open_table(TASKS).map_err(err)?,
            payloads: txn.open_table(PAYLOADS).map_err(err)?,
            due: txn.open_table(DUE).map_err(err)?,
            leased: txn.open_table(LEASED).map_err(err)?,
            pending: txn.open_table(PENDING).map_err(err)?,
            done: txn.open_table(DONE).map_err(err)?,
            by_function: txn.open_table(BY_FUNCTION).map_err(err)?,
            deliveries: txn.open_table(DELIVERIES).map_err(err)?,
            delivery_due: txn.open_table(DELIVERY_DUE).map_err(err)?,
        })
    }

    fn oldest(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.pending.first().map_err(err)?.map(|(k, _)| k.value().0))
    }

    fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        match self.tasks.get(id).map_err(err)? {
            None => Ok(None),
            Some(v) => decode(v.value()).map(Some),
        }
    }

    /// Removes the index entries `r` implies.
    fn unindex(&mut self, r: &TaskRecord, d: &mut Depth) -> Result<(), StoreError> {
        let (f, id, key) = (r.function.as_str(), r.id.as_str(), r.key());
        let key = key.as_str();
        self.by_function
            .remove((f, r.accepted_ms, id))
            .map_err(err)?;
        if r.state.is_done() {
            self.done
                .remove((r.ended_ms.unwrap_or(0), key))
                .map_err(err)?;
        } else {
            self.due.remove((f, r.due_ms, id)).map_err(err)?;
            self.unpend(r, key, d)?;
            if r.state == TaskState::Running {
                self.leased.remove(key).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Takes `r` (stored under `key`) out of the undone tasks the queue's
    /// bounds count, if it was counted.
    fn unpend(&mut self, r: &TaskRecord, key: &str, d: &mut Depth) -> Result<(), StoreError> {
        if self
            .pending
            .remove((r.accepted_ms, key))
            .map_err(err)?
            .is_some()
        {
            d.tasks = d.tasks.saturating_sub(1);
            d.bytes = d.bytes.saturating_sub(r.payload_bytes);
        }
        Ok(())
    }

    /// Writes `r` and the index entries its state implies.
    fn index(&mut self, r: &TaskRecord, d: &mut Depth) -> Result<(), StoreError> {
        let (f, id, key) = (r.function.as_str(), r.id.as_str(), r.key());
        let key = key.as_str();
        let json = serde_json::to_vec(r).map_err(err)?;
        self.tasks.insert(key, json.as_slice()).map_err(err)?;
        self.by_function
            .insert((f, r.accepted_ms, id), ())
            .map_err(err)?;
        if r.state.is_done() {
            self.done
                .insert((r.ended_ms.unwrap_or(0), key), ())
                .map_err(err)?;
        } else {
            self.due.insert((f, r.due_ms, id), ()).map_err(err)?;
            self.pending
                .insert((r.accepted_ms, key), r.payload_bytes)
                .map_err(err)?;
            d.tasks += 1;
            d.bytes += r.payload_bytes;
            if r.state == TaskState::Running {
                self.leased.insert(key, r.due_ms).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Moves `old` to `new`, touching only the index entries that change
    /// (a task's function, id and acceptance never do).
    fn replace(
        &mut self,
        old: &TaskRecord,
        new: &TaskRecord,
        d: &mut Depth,
    ) -> Result<(), StoreError> {
        if old.state.is_done() || old.key() != new.key() || old.accepted_ms != new.accepted_ms {
            self.unindex(old, d)?;
            return self.index(new, d);
        }
        let (f, id, key) = (new.function.as_str(), new.id.as_str(), new.key());
        let key = key.as_str();
        let json = serde_json::to_vec(new).map_err(err)?;
        self.tasks.insert(key, json.as_slice()).map_err(err)?;
        if new.state.is_done() {
            self.due.remove((f, old.due_ms, id)).map_err(err)?;
            self.unpend(old, key, d)?;
            self.done
                .insert((new.ended_ms.unwrap_or(0), key), ())
                .map_err(err)?;
        } else if old.due_ms != new.due_ms {
            self.due.remove((f, old.due_ms, id)).map_err(err)?;
            self.due.insert((f, new.due_ms, id), ()).map_err(err)?;
        }
        match (
            old.state == TaskState::Running,
            new.state == TaskState::Running,
        ) {
            (true, false) => {
                self.leased.remove(key).map_err(err)?;
            }
            (_, true) => {
                self.leased.insert(key, new.due_ms).map_err(err)?;
            }
            (false, false) => {}
        }
        Ok(())
    }

    fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        match self.deliveries.get(id).map_err(err)? {
            None => Ok(None),
            Some(v) => decode(v.value()).map(Some),
        }
    }

    fn put_delivery(&mut self, dl: &Delivery) -> Result<(), StoreError> {
        let json = serde_json::to_vec(dl).map_err(err)?;
        self.deliveries
            .insert(dl.id.as_str(), json.as_slice())
            .map_err(err)?;
        self.delivery_due
            .insert((dl.due_ms, dl.id.as_str()), ())
            .map_err(err)?;
        Ok(())
    }

    /// Applies one change. `Err` fails the whole commit; a refusal (a full
    /// store) is the change's own answer.
    fn apply(&mut self, op: Op, d: &mut Depth, bounds: Bounds) -> Result<Answer, StoreError> {
        Ok(match op {
            Op::Append(task, payload, reply) => {
                answer(reply, self.append(task, &payload, d, bounds)?)
            }
            Op::Lease {
                function,
                now,
                max,
                until,
                reply,
            } => answer(reply, Ok(self.lease(&function, now, max, until, d)?)),
            Op::Update(new, delivery, reply) => answer(reply, Ok(self.update(new, delivery, d)?)),
            Op::Stop(key, now, reply) => answer(reply, Ok(self.stop(&key, now, d)?)),
            Op::Recover(now, reply) => answer(reply, Ok(self.recover(now, d)?)),
            Op::Purge(before, keep, reply) => answer(reply, Ok(self.purge(before, keep, d)?)),
            Op::LeaseDeliveries {
                now,
                max,
                until,
                reply,
            } => answer(reply, Ok(self.lease_deliveries(now, max, until)?)),
            Op::Delivered(id, reply) => answer(reply, Ok(self.delivered(&id, d)?)),
            Op::Redeliver(dl, reply) => answer(reply, Ok(self.redeliver(dl)?)),
        })
    }

    /// The outer `Err` fails the commit; the inner one is the caller's
    /// answer (a known task, a full store).
    fn append(
        &mut self,
        task: TaskRecord,
        payload: &[u8],
        d: &mut Depth,
        bounds: Bounds,
    ) -> Result<Result<Appended, StoreError>, StoreError> {
        let key = task.key();
        if let Some(known) = self.task(&key)? {
            return Ok(Ok(Appended::Known(Box::new(known))));
        }
        if d.tasks >= bounds.max_tasks {
            return Ok(Err(StoreError::Full("tasks")));
        }
        if d.bytes + task.payload_bytes > bounds.max_bytes {
            return Ok(Err(StoreError::Full("bytes")));
        }
        self.payloads.insert(key.as_str(), payload).map_err(err)?;
        self.index(&task, d)?;
        Ok(Ok(Appended::New))
    }

    fn lease(
        &mut self,
        f: &str,
        now: u64,
        max: usize,
        until: u64,
        d: &mut Depth,
    ) -> Result<(Vec<Leased>, Option<u64>), StoreError> {
        let mut ids = Vec::new();
        let due = self.due.range((f, 0, "")..(f, now.saturating_add(1), ""));
        for e in due.map_err(err)?.take(max) {
            ids.push(e.map_err(err)?.0.value().2.to_string());
        }
        let mut leased = Vec::with_capacity(ids.len());
        for id in ids {
            let key = task_key(f, &id);
            let Some(old) = self.task(&key)? else {
                continue;
            };
            let t = old.leased(now, until);
            self.replace(&old, &t, d)?;
            let payload = (self.payloads.get(key.as_str()).map_err(err)?)
                .map(|p| Bytes::copy_from_slice(p.value()))
                .unwrap_or_default();
            leased.push(Leased {
                task: t,
                payload,
                was_due_ms: old.due_ms,
            });
        }
        let next = (self.due.range((f, 0, "")..(f, u64::MAX, "")).map_err(err)?)
            .next()
            .transpose()
            .map_err(err)?
            .map(|(k, _)| k.value().1);
        Ok((leased, next))
    }

    fn update(
        &mut self,
        new: TaskRecord,
        delivery: Option<Delivery>,
        d: &mut Depth,
    ) -> Result<bool, StoreError> {
        let Some(old) = self.task(&new.key())? else {
            return Ok(false);
        };
        // Only the attempt holding the current lease may write.
        if old.state != TaskState::Running || old.attempts != new.attempts {
            return Ok(false);
        }
        self.replace(&old, &new, d)?;
        if let Some(dl) = delivery {
            self.put_delivery(&dl)?;
            d.deliveries += 1;
        }
        Ok(true)
    }

    fn stop(&mut self, key: &str, now: u64, d: &mut Depth) -> Result<Stop, StoreError> {
        let Some(old) = self.task(key)? else {
            return Ok(Stop::NotFound);
        };
        if old.state.is_done() {
            return Ok(Stop::Done(old));
        }
        let mut t = old.clone();
        t.state = TaskState::Stopped;
        t.ended_ms = Some(now);
        t.event("Stopped", now, String::new());
        self.replace(&old, &t, d)?;
        let was_running = old.state == TaskState::Running;
        Ok(Stop::Stopped {
            task: t,
            was_running,
        })
    }

    fn recover(&mut self, now: u64, d: &mut Depth) -> Result<u64, StoreError> {
        let mut ids = Vec::new();
        for e in self.leased.iter().map_err(err)? {
            ids.push(e.map_err(err)?.0.value().to_string());
        }
        let mut n = 0;
        for key in ids {
            let Some(old) = self.task(&key)? else {
                continue;
            };
            let mut t = old.clone();
            t.state = TaskState::Enqueued;
            t.due_ms = now;
            t.event("Enqueued", now, "leased by a gateway that stopped".into());
            self.replace(&old, &t, d)?;
            n += 1;
        }
        Ok(n)
    }

    fn purge(&mut self, before: u64, keep: u64, d: &mut Depth) -> Result<u64, StoreError> {
        let over = self.done.len().map_err(err)?.saturating_sub(keep);
        let mut keys = Vec::new();
        for e in self.done.iter().map_err(err)?.take(PURGE_BATCH) {
            let k = e.map_err(err)?.0;
            let (ended, key) = k.value();
            if ended >= before && keys.len() as u64 >= over {
                break;
            }
            keys.push(key.to_string());
        }
        let mut n = 0;
        for key in keys {
            if let Some(old) = self.task(&key)? {
                self.unindex(&old, d)?;
            }
            self.tasks.remove(key.as_str()).map_err(err)?;
            self.payloads.remove(key.as_str()).map_err(err)?;
            n += 1;
        }
        Ok(n)
    }

    fn lease_deliveries(
        &mut self,
        now: u64,
        max: usize,
        until: u64,
    ) -> Result<(Vec<Delivery>, Option<u64>), StoreError> {
        let mut ids = Vec::new();
        let due = self.delivery_due.range(..(now.saturating_add(1), ""));
        for e in due.map_err(err)?.take(max) {
            let k = e.map_err(err)?.0;
            let (due, id) = k.value();
            ids.push((due, id.to_string()));
        }
        let mut out = Vec::with_capacity(ids.len());
        for (due, id) in ids {
            self.delivery_due.remove((due, id.as_str())).map_err(err)?;
            let Some(mut dl) = self.delivery(&id)? else {
                continue;
            };
            dl.due_ms = until;
            self.put_delivery(&dl)?;
            out.push(dl);
        }
        let first = self.delivery_due.first().map_err(err)?;
        Ok((out, first.map(|(k, _)| k.value().0)))
    }

    fn delivered(&mut self, id: &str, d: &mut Depth) -> Result<(), StoreError> {
        if let Some(dl) = self.delivery(id)? {
            self.delivery_due.remove((dl.due_ms, id)).map_err(err)?;
            self.deliveries.remove(id).map_err(err)?;
            d.deliveries = d.deliveries.saturating_sub(1);
        }
        Ok(())
    }

    fn redeliver(&mut self, dl: Delivery) -> Result<(), StoreError> {
        if let Some(old) = self.delivery(&dl.id)? {
            let due = (old.due_ms, dl.id.as_str());
            self.delivery_due.remove(due).map_err(err)?;
            self.put_delivery(&dl)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
