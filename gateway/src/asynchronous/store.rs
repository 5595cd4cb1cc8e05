//! Where tasks live: the [`TaskStore`] seam, and what crosses it.
//!
//! The dispatcher and the pipeline see only this trait; the embedded store
//! ([`super::embedded`]) is the default, and a broker-backed store can take
//! its place without either of them changing. Every method that changes a
//! task resolves only once the change is durable.

use super::task::{TaskRecord, TaskState};
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The bound in tasks or bytes is reached (answered 429).
    #[error("the asynchronous task store is full ({0})")]
    Full(&'static str),
    #[error("asynchronous task store: {0}")]
    Storage(#[source] Cause),
    /// The store's engine did not answer (a broker's leader election, a
    /// lost connection): worth retrying, answered 503.
    #[error("asynchronous task store unavailable: {0}")]
    Unavailable(#[source] Cause),
    #[error("asynchronous task store is closed")]
    Closed,
}

/// What a store's engine said, kept with its own causes (shared: a store
/// error is cloned to every waiter of a batch).
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

impl StoreError {
    pub fn storage(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Storage(e.into().into())
    }

    pub fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Unavailable(e.into().into())
    }
}

impl From<StoreError> for crate::error::InvokeError {
    /// `Full` is the caller's to map (a throttle of its own kind). Not
    /// logged here: the pipeline logs a 5xx once, with the cause chain.
    fn from(e: StoreError) -> Self {
        use crate::error::{InvokeError, error_chain};
        match e {
            StoreError::Unavailable(cause) => InvokeError::QueueUnavailable {
                cause: error_chain(&*cause).into(),
            },
            StoreError::Closed => InvokeError::ShuttingDown,
            e => InvokeError::internal(e),
        }
    }
}

/// What [`TaskStore::append`] did.
#[derive(Debug)]
pub enum Appended {
    /// Committed: the caller may be told 202.
    New,
    /// A task with this id is already known (it is not run twice): its
    /// record as stored.
    Known(Box<TaskRecord>),
}

/// A task leased for one attempt, with its payload.
#[derive(Debug)]
pub struct Leased {
    pub task: TaskRecord,
    pub payload: Bytes,
    /// When it was due (the dispatch delay is measured from here).
    pub was_due_ms: u64,
}

/// A destination record waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    /// The task's key and the condition: one record per task and outcome.
    pub id: String,
    pub function: String,
    pub url: String,
    /// The JSON record, as sent.
    pub body: String,
    pub created_ms: u64,
    pub due_ms: u64,
    pub attempts: u32,
}

/// What a stop request found.
#[derive(Debug)]
pub enum Stop {
    NotFound,
    /// Already done: nothing to stop.
    Done(TaskRecord),
    /// Now `Stopped`. `was_running`: an attempt holds it and must be killed.
    Stopped {
        task: TaskRecord,
        was_running: bool,
    },
}

/// Counts kept by the store, for bounds and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    /// Tasks accepted and not done.
    pub tasks: u64,
    /// Their payloads' bytes.
    pub bytes: u64,
    /// When the oldest of them was accepted (wall-clock ms).
    pub oldest_accepted_ms: Option<u64>,
    /// Destination records not yet delivered.
    pub deliveries: u64,
    /// Done tasks kept for the task API.
    pub done: u64,
}

pub trait TaskStore: Send + Sync + 'static {
    /// Adds a new task (state `Enqueued`, due at `task.due_ms`), unless one
    /// with its id is known. Refuses with [`StoreError::Full`] past the bounds.
    fn append(&self, task: TaskRecord, payload: Bytes) -> StoreFuture<'_, Appended>;

    /// Leases up to `max` of `function`'s tasks due at `now_ms`, until
    /// `lease_until_ms` (state `Running`, one more attempt): a lease not
    /// completed by then makes the task due again. Also says when the
    /// function's next task not leased is due.
    fn lease(
        &self,
        function: &str,
        now_ms: u64,
        max: usize,
        lease_until_ms: u64,
    ) -> StoreFuture<'_, (Vec<Leased>, Option<u64>)>;

    /// Writes a leased task back: rescheduled (`Enqueued`, due at its
    /// `due_ms`) or done, with the destination record to deliver, in one
    /// commit. A task already done (stopped meanwhile) stays as it is:
    /// returns `false`.
    fn update(&self, task: TaskRecord, delivery: Option<Delivery>) -> StoreFuture<'_, bool>;

    /// Stops `function`'s task `id` if it is not done.
    fn stop(&self, function: &str, id: &str, now_ms: u64) -> StoreFuture<'_, Stop>;

    /// `function`'s task `id`, with its payload while it is kept.
    fn get(&self, function: &str, id: &str)
    -> StoreFuture<'_, Option<(TaskRecord, Option<Bytes>)>>;

    /// A function's tasks, newest accepted first, optionally in one state.
    fn list(
        &self,
        function: &str,
        state: Option<TaskState>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<TaskRecord>>;

    /// On start: every task leased by an earlier process is due at once.
    /// Returns how many.
    fn recover(&self, now_ms: u64) -> StoreFuture<'_, u64>;

    /// Deletes done tasks that ended before `before_ms`, and the oldest
    /// beyond the newest `keep`, a batch at a time. Returns how many.
    fn purge(&self, before_ms: u64, keep: u64) -> StoreFuture<'_, u64>;

    /// Leases up to `max` destination records due at `now_ms`; says when
    /// the next one not leased is due.
    fn lease_deliveries(
        &self,
        now_ms: u64,
        max: usize,
        lease_until_ms: u64,
    ) -> StoreFuture<'_, (Vec<Delivery>, Option<u64>)>;

    /// A destination record delivered, or given up on: deleted.
    fn delivered(&self, id: &str) -> StoreFuture<'_, ()>;

    /// A destination record to try again at its `due_ms`.
    fn redeliver(&self, delivery: Delivery) -> StoreFuture<'_, ()>;

    fn depth(&self) -> Depth;
}
