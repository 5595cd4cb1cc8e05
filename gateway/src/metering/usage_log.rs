//! The durable usage log: JSON lines, appended off the hot path.
//!
//! The pipeline hands records to a bounded channel (waiting when it is full:
//! records are never dropped). A write that fails (a full or broken disk)
//! is retried with back-off, from the first byte it did not write, for as
//! long as it takes: meanwhile new records wait in the channel, and once it is
//! full callers wait for it (back-pressure), `/readyz` fails (so a load
//! balancer sends traffic elsewhere), and `fngate_usage_log_write_errors_total`
//! counts the failures. Only a graceful stop on a disk that never recovers
//! gives up, after [`CLOSE_RETRY`], and says how many bytes it lost. One writer thread takes every record available
//! and writes them with one `write` per batch, then pauses [`BATCH_DELAY`]
//! so that records accumulate: one thread wake-up per batch, not per record.
//! A process crash (even `kill -9`) loses only what was still in memory: at
//! most the records of the last [`BATCH_DELAY`] (plus answers in flight). The
//! file is `fsync`ed at most `sync_interval` after a write, which bounds what
//! a machine crash can lose. A graceful stop flushes and syncs everything.
//!
//! The active file is `path`; once past `rotate_bytes` (checked after each
//! batch, so a file may exceed it by one batch) it is synced and renamed
//! `path.<unix_ms>` and a new one started. A torn last line (a crash in the
//! middle of a write) is terminated with a newline when the log is reopened,
//! and readers ([`read_records`]) skip lines that do not parse.

use super::{InstanceRecord, UsageRecord};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Whether the log's writes succeed, for readiness and metrics.
pub struct LogHealth {
    failing: AtomicBool,
    errors: prometheus::IntCounter,
}

impl LogHealth {
    pub fn new(errors: prometheus::IntCounter) -> Self {
        LogHealth {
            failing: AtomicBool::new(false),
            errors,
        }
    }

    /// The last write failed and has not succeeded since.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

/// How long a graceful stop keeps retrying a failing write.
pub const CLOSE_RETRY: Duration = Duration::from_secs(5);
/// The longest pause between two retries of a failing write.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub struct UsageLogConfig {
    pub path: PathBuf,
    pub sync_interval: Duration,
    pub rotate_bytes: u64,
}

enum Msg {
    Record(Box<UsageRecord>),
    Instance(Box<InstanceRecord>),
    Tick,
    Close(oneshot::Sender<()>),
}

/// The usage log as a reload may change it (on, off, another file): what
/// writes a record reads the current one as it writes.
#[derive(Default)]
pub struct LiveLog(arc_swap::ArcSwapOption<UsageLog>);

impl LiveLog {
    pub fn new(log: Option<UsageLog>) -> LiveLog {
        LiveLog(arc_swap::ArcSwapOption::new(log.map(Arc::new)))
    }

    pub fn get(&self) -> Option<Arc<UsageLog>> {
        self.0.load_full()
    }

    /// Whether records are kept (no reference count taken).
    pub fn is_on(&self) -> bool {
        self.0.load().is_some()
    }

    pub fn set(&self, log: Option<UsageLog>) {
        self.0.store(log.map(Arc::new));
    }
}

/// The usage log's writers: the current one, and those a reload replaced,
/// each closed once what was sent to it is surely written (see
/// [`Writers::replace`]); a stop closes them all.
#[derive(Default)]
pub struct Writers {
    current: Option<UsageLogTask>,
    replaced: std::collections::VecDeque<UsageLogTask>,
}

impl Writers {
    pub fn new(current: Option<UsageLogTask>) -> Arc<std::sync::Mutex<Writers>> {
        Arc::new(std::sync::Mutex::new(Writers {
            current,
            replaced: Default::default(),
        }))
    }

    /// `next` writes from now on; the writer it replaces is closed after
    /// `grace`, time enough for a record taken from it just before the
    /// swap (an instance's, after its release) to reach it.
    pub fn replace(
        this: &Arc<std::sync::Mutex<Writers>>,
        next: Option<UsageLogTask>,
        grace: Duration,
    ) {
        let old = {
            let mut w = this.lock().unwrap();
            std::mem::replace(&mut w.current, next)
        };
        if let Some(old) = old {
            this.lock().unwrap().replaced.push_back(old);
            let this = this.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let oldest = this.lock().unwrap().replaced.pop_front();
                if let Some(t) = oldest {
                    t.close().await;
                }
            });
        }
    }

    /// At a stop: every writer writes and syncs what it has, and ends.
    pub async fn close_all(this: &Arc<std::sync::Mutex<Writers>>) {
        let all: Vec<UsageLogTask> = {
            let mut w = this.lock().unwrap();
            w.current
                .take()
                .into_iter()
                .chain(w.replaced.drain(..))
                .collect()
        };
        for t in all {
            t.close().await;
        }
    }
}

/// The handle the pipeline writes through.
#[derive(Clone)]
pub struct UsageLog {
    tx: mpsc::Sender<Msg>,
    pub health: Arc<LogHealth>,
}

pub struct UsageLogTask {
    thread: std::thread::JoinHandle<()>,
    tx: mpsc::Sender<Msg>,
    ticker: tokio::task::JoinHandle<()>,
}

const CHANNEL: usize = 65_536;
const BATCH: usize = 4096;
/// How long records may gather in memory before they are written.
pub const BATCH_DELAY: Duration = Duration::from_millis(5);

impl UsageLog {
    /// [`UsageLog::start`] with a health of its own, counting write errors
    /// on `errors`.
    pub fn open(
        cfg: &UsageLogConfig,
        errors: prometheus::IntCounter,
    ) -> std::io::Result<(UsageLog, UsageLogTask)> {
        Self::start(cfg.clone(), Arc::new(LogHealth::new(errors)))
    }

    /// Opens (or creates) the log and starts its writer thread.
    pub fn start(
        cfg: UsageLogConfig,
        health: Arc<LogHealth>,
    ) -> std::io::Result<(UsageLog, UsageLogTask)> {
        let file = open_append(&cfg.path)?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let h = health.clone();
        let thread = std::thread::Builder::new()
            .name("usage-log".into())
            .spawn(move || writer(cfg, file, rx, &h))?;
        // Wakes the writer so an idle log is still synced within the interval.
        let tick_tx = tx.clone();
        let ticker = tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(100));
            loop {
                t.tick().await;
                if tick_tx.send(Msg::Tick).await.is_err() {
                    return;
                }
            }
        });
        Ok((
            UsageLog {
                tx: tx.clone(),
                health,
            },
            UsageLogTask { thread, tx, ticker },
        ))
    }

    /// Queues a record; waits only while the writer is behind (never drops).
    pub async fn record(&self, r: Box<UsageRecord>) {
        self.send(Msg::Record(r)).await
    }

    /// Queues an instance's lifetime record, like [`UsageLog::record`].
    pub async fn instance(&self, r: Box<InstanceRecord>) {
        self.send(Msg::Instance(r)).await
    }

    async fn send(&self, m: Msg) {
        use tokio::sync::mpsc::error::TrySendError;
        match self.tx.try_send(m) {
            // The wait is rare: boxed, it adds nothing to every caller's future.
            Err(TrySendError::Full(m)) => {
                let _ = Box::pin(self.tx.send(m)).await;
            }
            Ok(()) | Err(TrySendError::Closed(_)) => {}
        }
    }
}

impl UsageLogTask {
    /// Writes and syncs everything recorded so far, then stops the writer.
    pub async fn close(self) {
        self.ticker.abort();
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    // Terminate a torn last line left by a crash, so the next record starts clean.
    let len = f.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.write_all(b"\n")?;
            tracing::warn!(path = %path.display(), "usage log ended in a torn line; it will be skipped");
        }
    }
    Ok(f)
}

/// Writes all of `buf`, retrying from the first unwritten byte with
/// back-off while writes fail; gives up only at `give_up`. Returns whether
/// everything was written.
fn write_retrying(
    out: &mut impl Write,
    buf: &mut Vec<u8>,
    health: &LogHealth,
    path: &Path,
    give_up: Option<Instant>,
) -> bool {
    let mut delay = Duration::from_millis(10);
    while !buf.is_empty() {
        let err = match out.write(buf) {
            Ok(0) => std::io::Error::from(std::io::ErrorKind::WriteZero),
            Ok(n) => {
                buf.drain(..n);
                delay = Duration::from_millis(10);
                if health.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!(path = %path.display(), "usage log writes succeed again");
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        health.errors.inc();
        if !health.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %err, path = %path.display(), "usage log write failed; retrying, records are kept");
        }
        if give_up.is_some_and(|t| Instant::now() >= t) {
            tracing::error!(error = %err, path = %path.display(), lost_bytes = buf.len(), "usage log: giving up on the last records at stop");
            buf.clear();
            return false;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
    true
}

fn writer(cfg: UsageLogConfig, mut file: File, mut rx: mpsc::Receiver<Msg>, health: &LogHealth) {
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut dirty_since: Option<Instant> = None;
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut next = Some(first);
        let mut n = 0;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(r) => {
                    push_line(&mut buf, &*r);
                    n += 1;
                }
                Msg::Instance(r) => {
                    push_line(&mut buf, &*r);
                    n += 1;
                }
                Msg::Tick => {}
                Msg::Close(ack) => {
                    closing = Some(ack);
                    break;
                }
            }
            if n < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            size += buf.len() as u64;
            // Until it is written, no new record is taken: they wait in the
            // channel, and callers wait once it is full.
            let give_up = closing.is_some().then(|| Instant::now() + CLOSE_RETRY);
            write_retrying(&mut file, &mut buf, health, &cfg.path, give_up);
            dirty_since.get_or_insert_with(Instant::now);
        }
        if dirty_since.is_some_and(|t| t.elapsed() >= cfg.sync_interval) {
            let _ = file.sync_data();
            dirty_since = None;
        }
        if closing.is_none() && n > 0 {
            std::thread::sleep(BATCH_DELAY);
        }
        if size >= cfg.rotate_bytes {
            let _ = file.sync_data();
            dirty_since = None;
            let rotated = PathBuf::from(format!(
                "{}.{}",
                cfg.path.display(),
                super::unix_ms(std::time::SystemTime::now())
            ));
            match std::fs::rename(&cfg.path, &rotated).and_then(|_| open_append(&cfg.path)) {
                Ok(f) => {
                    tracing::info!(rotated = %rotated.display(), "usage log rotated");
                    file = f;
                    size = 0;
                }
                Err(e) => tracing::error!(error = %e, "usage log rotation failed"),
            }
        }
    }
    let _ = file.sync_data();
    if let Some(ack) = closing {
        let _ = ack.send(());
    }
}

/// Appends `r` as one JSON line.
fn push_line(buf: &mut Vec<u8>, r: &impl serde::Serialize) {
    if serde_json::to_writer(&mut *buf, r).is_ok() {
        buf.push(b'\n');
    }
}

/// Reads the invocation records of usage log files; returns them and how
/// many lines were skipped (torn or not a record). Instance records are
/// [`read_instance_records`]'.
pub fn read_records(paths: &[PathBuf]) -> std::io::Result<(Vec<UsageRecord>, usize)> {
    let (records, _, skipped) = read_all(paths)?;
    Ok((records, skipped))
}

/// Reads the instance records of usage log files.
pub fn read_instance_records(paths: &[PathBuf]) -> std::io::Result<Vec<InstanceRecord>> {
    Ok(read_all(paths)?.1)
}

/// Both kinds of record, and how many lines were skipped.
pub(crate) fn read_all(
    paths: &[PathBuf],
) -> std::io::Result<(Vec<UsageRecord>, Vec<InstanceRecord>, usize)> {
    let mut out = Vec::new();
    let mut instances = Vec::new();
    let mut skipped = 0;
    for p in paths {
        let f = File::open(p)?;
        for line in BufReader::new(f).split(b'\n') {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            // Invocation records first, the many: one parse each. An
            // instance record lacks their fields (and they its `record`).
            if let Ok(r) = serde_json::from_slice::<UsageRecord>(&line) {
                out.push(r);
            } else if let Ok(r) = serde_json::from_slice::<InstanceRecord>(&line) {
                instances.push(r);
            } else {
                skipped += 1;
            }
        }
    }
    Ok((out, instances, skipped))
}

#[cfg(test)]
mod tests;
