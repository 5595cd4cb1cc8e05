//! Configuration reload: on SIGHUP, on a change of the files (the main file
//! and those of `gateway.functions_dir`), and on `POST /admin/reload`.
//!
//! A reload reads and validates the whole configuration first, off the
//! runtime; a file that does not validate, or one that changes what only a
//! restart can (listen addresses, threads, the fleet, the workers, the
//! gateway-wide limits, the task store: [`fixed_changes`]; what is live is
//! [`LIVE_GATEWAY_KEYS`] and [`LIVE_SECTIONS`]), is refused whole and the
//! running configuration stays. One that validates is applied, in this
//! order, with nothing dropped:
//!
//! 1. the next function registry is built from the running one, so limiter
//!    state carries over ([`crate::functions::Functions::renewed`]);
//! 2. a function whose instance shape changed gets a new pool, whose
//!    `min_instances` start now, while the old shape still serves
//!    ([`crate::scheduler::Scheduler::prewarm`]);
//! 3. a changed `[usage]` log is opened; routes, the pipeline's settings
//!    (VPCs, credentials, `[lambda]`, `[azure]`), the asynchronous settings
//!    and slots, the pools, the networks new connections are classified by,
//!    and the usage log are swapped, in that order, each whole: a
//!    request reads each at one version, so it ends with the old
//!    configuration's outcome or the new one's, on connections open before
//!    as on new ones;
//! 4. pools replaced or removed are retired: their instances finish their
//!    calls and are released; a removed function's queued tasks end
//!    `Invalid`.
//!
//! Reloads are serialized. What was loaded (its hash and time) and how the
//! last reload went are on `/admin/config` and in metrics.

use crate::config::{Config, ConfigError};
use crate::execute::routes::{Builder, RoutesError};
use crate::families::Families;
use crate::functions::Functions;
use crate::metrics::{Metrics, NetworkIndex};
use crate::pipeline::{Pipeline, Settings};
use crate::scheduler::Scheduler;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Each file's modification time and size (`None`: unreadable).
type Stamp = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

/// `[gateway]` keys a reload applies; every other one needs a restart.
const LIVE_GATEWAY_KEYS: &[&str] = &[
    "max_async_body_bytes",
    "async_retry_base_ms",
    "async_retention_s",
    "max_async_retained",
    "async_destination_max_age_s",
    "access_rules",
    "auth",
    "signature_max_skew_s",
    "trusted_proxies",
    "proxy_header_timeout_ms",
    "functions_dir",
];
/// Top-level sections a reload applies (besides `[gateway]`'s live keys).
const LIVE_SECTIONS: &[&str] = &[
    "functions",
    "networks",
    "credentials",
    "lambda",
    "azure",
    "outbound_credentials",
    "usage",
];

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the configuration was not read from a file: there is nothing to read again")]
    NoFile,
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("backends: {0}")]
    Backends(#[from] RoutesError),
    #[error("cannot change without a restart: {}", .0.join(", "))]
    NeedsRestart(Vec<String>),
    #[error("the configuration could not be read: {0}")]
    Read(#[from] tokio::task::JoinError),
    #[error("cannot open the usage log {path}: {source}")]
    UsageLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a reload went, as `/admin/reload` answers and `/admin/config` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub trigger: &'static str,
    /// `applied`, `unchanged` or `refused`.
    pub result: &'static str,
    pub at_unix_ms: u64,
    pub elapsed_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<Changed>,
    /// Sections other than the functions (`networks`, `gateway.auth`, ...).
    pub sections: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Changed {
    pub function: String,
    /// The keys whose values differ as written (or `egress`, when only
    /// the networks its egress names changed).
    pub fields: Vec<String>,
    /// Its instance shape changed: new calls run on new instances.
    pub new_instances: bool,
}

/// What `/admin/config` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shown {
    pub path: Option<PathBuf>,
    pub functions_dir: Option<PathBuf>,
    /// SHA-256 of the files loaded.
    pub hash: Option<String>,
    pub loaded_unix_ms: u64,
    pub functions: usize,
    pub last_reload: Option<Outcome>,
}

struct ReloadMetrics {
    /// `[applied, unchanged, refused]`.
    reloads: [prometheus::IntCounter; 3],
    loaded: prometheus::Gauge,
    info: prometheus::IntGaugeVec,
}

/// What a reload needs beside the configuration.
pub struct Parts {
    pub scheduler: Arc<Scheduler>,
    pub pipeline: Arc<Pipeline>,
    pub server: Arc<crate::connection::Server>,
    pub builder: Builder,
    pub metrics: Arc<Metrics>,
    pub functions: Functions,
    pub usage: Arc<crate::metering::usage_log::LiveLog>,
    pub usage_writers: Arc<std::sync::Mutex<crate::metering::usage_log::Writers>>,
}

pub struct Reloader {
    /// The running configuration and registry; held for a whole reload.
    running: tokio::sync::Mutex<(Config, Functions)>,
    shown: arc_swap::ArcSwap<Shown>,
    scheduler: Arc<Scheduler>,
    pipeline: Arc<Pipeline>,
    server: Arc<crate::connection::Server>,
    builder: Arc<Builder>,
    metrics: Arc<Metrics>,
    counts: ReloadMetrics,
    /// The files' stamps the last reload found (see [`Reloader::watch`]).
    seen: std::sync::Mutex<Stamp>,
    usage: Arc<crate::metering::usage_log::LiveLog>,
    usage_writers: Arc<std::sync::Mutex<crate::metering::usage_log::Writers>>,
}

impl Reloader {
    pub fn new(config: Config, parts: Parts) -> Arc<Reloader> {
        let f = Families(&parts.metrics.registry);
        let reloads = f.counters(
            "fngate_config_reloads_total",
            "Configuration reloads (SIGHUP, a file change, POST /admin/reload), by result: applied, unchanged (the files were as loaded), refused (invalid, or a change that needs a restart; the running configuration stayed).",
            &["result"],
        );
        let counts = ReloadMetrics {
            reloads: ["applied", "unchanged", "refused"].map(|r| reloads.with_label_values(&[r])),
            loaded: f.float_gauge(
                "fngate_config_loaded_timestamp_seconds",
                "When the running configuration was loaded (Unix time).",
            ),
            info: f.gauges(
                "fngate_config_info",
                "The running configuration: 1 for its hash (SHA-256 of the files loaded).",
                &["hash"],
            ),
        };
        let shown = shown(&config, None);
        publish(&counts, None, &shown);
        Arc::new(Reloader {
            shown: arc_swap::ArcSwap::from_pointee(shown),
            running: tokio::sync::Mutex::new((config, parts.functions)),
            scheduler: parts.scheduler,
            pipeline: parts.pipeline,
            server: parts.server,
            builder: Arc::new(parts.builder),
            seen: Default::default(),
            usage: parts.usage,
            usage_writers: parts.usage_writers,
            metrics: parts.metrics,
            counts,
        })
    }

    pub fn shown(&self) -> Arc<Shown> {
        self.shown.load_full()
    }

    /// Reads the files again and applies them (see the module); the outcome
    /// is logged, counted and kept for `/admin/config`.
    pub async fn reload(&self, trigger: &'static str) -> Outcome {
        let t0 = std::time::Instant::now();
        let mut running = self.running.lock().await;
        // The files as this reload finds them, before it reads them: the
        // watcher reloads only on a change after that (a change made while
        // they are read is seen next time), whatever triggered this one.
        let stamp = self.stamp().await;
        *self.seen.lock().unwrap() = stamp;
        let result = self.apply(&mut running, trigger).await;
        let mut out = Outcome {
            trigger,
            result: "applied",
            at_unix_ms: crate::metering::unix_ms(SystemTime::now()),
            elapsed_ms: t0.elapsed().as_millis() as u64,
            error: None,
            changes: None,
        };
        let previous = self.shown.load_full();
        match result {
            Ok(Some(changes)) => {
                out.changes = Some(changes);
                self.counts.reloads[0].inc();
            }
            Ok(None) => {
                out.result = "unchanged";
                self.counts.reloads[1].inc();
                tracing::info!(trigger, "configuration reload: the files are as loaded");
            }
            Err(e) => {
                out.result = "refused";
                out.error = Some(e.to_string());
                self.counts.reloads[2].inc();
                tracing::error!(trigger, error = %e, "configuration reload refused; the running configuration stays");
            }
        }
        let mut next = match out.result {
            "applied" => shown(&running.0, None),
            _ => (*previous).clone(),
        };
        next.last_reload = Some(out.clone());
        publish(&self.counts, previous.hash.as_deref(), &next);
        self.shown.store(Arc::new(next));
        out
    }

    async fn apply(
        &self,
        running: &mut (Config, Functions),
        trigger: &'static str,
    ) -> Result<Option<Changes>, ReloadError> {
        // Everything up to the swaps runs off the runtime: reading and
        // validating the files and building the next registry take tens of
        // milliseconds with a thousand functions, too long to hold a thread
        // that serves connections.
        let before = Before {
            source: running.0.source.clone().ok_or(ReloadError::NoFile)?,
            vpcs: running.0.ingress.vpcs.clone(),
            configs: running.0.functions.clone(),
            functions: running.1.clone(),
        };
        let (scheduler, metrics, builder) = (
            self.scheduler.clone(),
            self.metrics.clone(),
            self.builder.clone(),
        );
        let next =
            tokio::task::spawn_blocking(move || prepare(before, &scheduler, &metrics, &builder))
                .await??;
        let Some(Next {
            config: new,
            functions,
            routes,
            plan,
            changes,
        }) = next
        else {
            return Ok(None);
        };
        // `[usage]` changed: the new log is opened before anything is
        // swapped, so a file that cannot be opened refuses the reload.
        let usage = match (&new.usage, new.usage != running.0.usage) {
            (_, false) => None,
            (None, true) => Some(None),
            (Some(cfg), true) => {
                let errors = self.metrics.usage_log_write_errors.clone();
                let opened =
                    crate::metering::usage_log::UsageLog::open(cfg, errors).map_err(|source| {
                        ReloadError::UsageLog {
                            path: cfg.path.clone(),
                            source,
                        }
                    })?;
                Some(Some(opened))
            }
        };
        self.scheduler.prewarm(&plan).await;
        // Swapped whole, each. Credentials and routes before the functions
        // that may need them; the networks connections are classified by
        // last, so a VPC new in this reload only ever meets new functions.
        let old_functions = &running.1;
        self.pipeline.executor().routes.store(routes);
        self.pipeline
            .set_settings(Settings::new(&new, &self.metrics));
        (self.pipeline.dialects.lambda).set_settings(new.lambda.clone());
        let q = &self.pipeline.asynchronous;
        q.set_limits(new.gateway.asynchronous.clone());
        q.set_functions((new.functions.iter()).map(|f| (&f.name, f.asynchronous.max_concurrency)));
        let invalid = crate::asynchronous::task::TaskState::Invalid
            .done_index()
            .expect("a done state");
        for name in &plan.removed {
            if let Some(f) = old_functions.get(name) {
                q.removed(name.clone(), f.metrics.async_results[invalid].clone());
            }
        }
        self.scheduler.install(plan);
        self.server.set_ingress(new.ingress.clone());
        if let Some(next) = usage {
            let (log, writer) = next.unzip();
            self.usage.set(log);
            // Long enough for a release in progress to write its record.
            let grace = new.gateway.worker_timeout + Duration::from_secs(2);
            crate::metering::usage_log::Writers::replace(&self.usage_writers, writer, grace);
        }
        let hash = new
            .source
            .as_ref()
            .map(|s| s.hash.clone())
            .unwrap_or_default();
        tracing::info!(
            trigger,
            %hash,
            functions = functions.len(),
            added = ?changes.added,
            removed = ?changes.removed,
            changed = %describe(&changes.changed),
            sections = ?changes.sections,
            "configuration reloaded"
        );
        *running = (new, functions);
        Ok(Some(changes))
    }

    /// Reloads on SIGHUP and when the files change (looked at every 2 s),
    /// until `stop`. The handler is installed before this returns (before
    /// the gateway says it listens): SIGHUP's default is to exit.
    pub fn watch(self: Arc<Self>, stop: CancellationToken) -> impl Future<Output = ()> {
        use tokio::signal::unix::{SignalKind, signal};
        let hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: the configuration reloads on file changes and POST /admin/reload only");
                None
            }
        };
        self.watching(hup, stop)
    }

    async fn watching(
        self: Arc<Self>,
        mut hup: Option<tokio::signal::unix::Signal>,
        stop: CancellationToken,
    ) {
        let first = self.stamp().await;
        *self.seen.lock().unwrap() = first;
        loop {
            let signalled = tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = async { hup.as_mut()?.recv().await } => true,
                _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            };
            let now = self.stamp().await;
            if !signalled && now == *self.seen.lock().unwrap() {
                continue;
            }
            let trigger = if signalled { "SIGHUP" } else { "file change" };
            self.reload(trigger).await;
        }
    }

    /// The files' sizes and times (the main file, and the `*.toml` of the
    /// functions directory), read off the runtime.
    async fn stamp(&self) -> Stamp {
        let shown = self.shown();
        let (Some(path), dir) = (shown.path.clone(), shown.functions_dir.clone()) else {
            return Vec::new();
        };
        let read = move || {
            let meta = |p: &std::path::Path| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            };
            let mut out = vec![(path.clone(), meta(&path))];
            if let Some(dir) = dir
                && let Ok(entries) = std::fs::read_dir(&dir)
            {
                let mut files: Vec<_> = (entries.flatten())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                    .collect();
                files.sort();
                out.extend(files.into_iter().map(|p| {
                    let m = meta(&p);
                    (p, m)
                }));
            }
            out
        };
        tokio::task::spawn_blocking(read).await.unwrap_or_default()
    }
}

/// What a reload reads of the running configuration.
struct Before {
    source: Arc<crate::config::Source>,
    vpcs: crate::ingress::VpcTable,
    configs: Vec<Arc<crate::config::FunctionConfig>>,
    functions: Functions,
}

/// What a reload swaps in.
struct Next {
    config: Config,
    functions: Functions,
    routes: crate::execute::routes::RouteTable,
    plan: crate::scheduler::Plan,
    changes: Changes,
}

/// Reads, validates and builds the next configuration (`None`: the files
/// are as loaded). Blocking: runs on the blocking pool.
fn prepare(
    before: Before,
    scheduler: &Scheduler,
    metrics: &Metrics,
    builder: &Builder,
) -> Result<Option<Next>, ReloadError> {
    let source = &before.source;
    let new = Config::read(&source.path, Some(&before.vpcs))?;
    let new_source = new.source.clone().ok_or(ReloadError::NoFile)?;
    let sections = sections_changed(&source.raw, &new_source.raw);
    let fixed = fixed_changes(&sections);
    if !fixed.is_empty() {
        return Err(ReloadError::NeedsRestart(fixed));
    }
    if new_source.hash == source.hash {
        return Ok(None);
    }
    let routes = builder.table(&new)?;
    let networks = NetworkIndex::new(&new.ingress.vpcs);
    let functions = before.functions.renewed(&new.functions, metrics, &networks);
    let share = scheduler.limits().share();
    for f in functions.iter() {
        // Added: this gateway's part, as its peers' were split.
        if share > 1 && before.functions.get(&f.cfg.name).is_none() {
            f.limits.split(share);
        }
    }
    let plan = scheduler.plan(&functions);
    let raws = (&source.raw, &new_source.raw);
    let changes = changes(&before.configs, &new, raws, sections, &plan);
    Ok(Some(Next {
        config: new,
        functions,
        routes,
        plan,
        changes,
    }))
}

fn shown(config: &Config, last: Option<Outcome>) -> Shown {
    let source = config.source.as_deref();
    Shown {
        path: source.map(|s| s.path.clone()),
        functions_dir: source.and_then(|s| s.functions_dir.clone()),
        hash: source.map(|s| s.hash.clone()),
        loaded_unix_ms: crate::metering::unix_ms(SystemTime::now()),
        functions: config.functions.len(),
        last_reload: last,
    }
}

fn publish(m: &ReloadMetrics, previous_hash: Option<&str>, now: &Shown) {
    if let Some(h) = previous_hash
        && Some(h) != now.hash.as_deref()
    {
        let _ = m.info.remove_label_values(&[h]);
    }
    if let Some(h) = &now.hash {
        m.info.with_label_values(&[h]).set(1);
    }
    m.loaded.set(now.loaded_unix_ms as f64 / 1000.0);
}

/// `f1 (command, memory_mb; new instances), f2 (rate_limit)`.
fn describe(changed: &[Changed]) -> String {
    let one = |c: &Changed| {
        let more = if c.new_instances {
            "; new instances"
        } else {
            ""
        };
        format!("{} ({}{more})", c.function, c.fields.join(", "))
    };
    changed.iter().map(one).collect::<Vec<_>>().join(", ")
}

/// The keys of `a` and `b` whose values differ.
fn differing(a: &toml::Table, b: &toml::Table) -> BTreeSet<String> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    (keys.into_iter())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn table<'a>(raw: &'a toml::Table, key: &str) -> std::borrow::Cow<'a, toml::Table> {
    match raw.get(key) {
        Some(toml::Value::Table(t)) => std::borrow::Cow::Borrowed(t),
        _ => std::borrow::Cow::Owned(toml::Table::new()),
    }
}

/// What differs between two configurations as written, outside the
/// functions, named as written: `[gateway]`'s keys (`gateway.listen`), then
/// the other sections (`networks`, `fleet`).
fn sections_changed(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let gateway = differing(&table(old, "gateway"), &table(new, "gateway"));
    let sections = (differing(old, new).into_iter()).filter(|s| s != "gateway" && s != "functions");
    (gateway.into_iter())
        .map(|k| format!("gateway.{k}"))
        .chain(sections)
        .collect()
}

/// Of [`sections_changed`], what only a restart can apply.
pub fn fixed_changes(changed: &[String]) -> Vec<String> {
    let live = |c: &str| match c.strip_prefix("gateway.") {
        Some(key) => LIVE_GATEWAY_KEYS.contains(&key),
        None => LIVE_SECTIONS.contains(&c),
    };
    changed.iter().filter(|c| !live(c)).cloned().collect()
}

/// The functions of a configuration as written, by name.
fn functions_by_name(raw: &toml::Table) -> std::collections::HashMap<&str, &toml::Table> {
    let Some(toml::Value::Array(fs)) = raw.get("functions") else {
        return Default::default();
    };
    (fs.iter())
        .filter_map(|f| {
            let t = f.as_table()?;
            Some((t.get("name")?.as_str()?, t))
        })
        .collect()
}

/// `raws`: the files as written, before and after; `sections`: what
/// [`sections_changed`] found.
fn changes(
    old: &[Arc<crate::config::FunctionConfig>],
    new: &Config,
    (old_raw, new_raw): (&toml::Table, &toml::Table),
    sections: Vec<String>,
    plan: &crate::scheduler::Plan,
) -> Changes {
    let names = |v: &[Arc<str>]| v.iter().map(|n| n.to_string()).collect();
    let (before, after) = (functions_by_name(old_raw), functions_by_name(new_raw));
    let old: std::collections::HashMap<&str, &crate::config::FunctionConfig> =
        old.iter().map(|f| (&*f.name, &**f)).collect();
    let mut changed = Vec::new();
    for f in &new.functions {
        let Some(was) = old.get(&*f.name) else {
            continue;
        };
        let mut fields: Vec<String> = match (before.get(&*f.name), after.get(&*f.name)) {
            (Some(a), Some(b)) => differing(a, b).into_iter().collect(),
            _ => Vec::new(),
        };
        let new_instances = plan.reshaped.contains(&f.name);
        if fields.is_empty() && was.egress != f.egress {
            fields.push("egress".into());
        }
        if !fields.is_empty() || new_instances {
            changed.push(Changed {
                function: f.name.to_string(),
                fields,
                new_instances,
            });
        }
    }
    changed.sort_by(|a, b| a.function.cmp(&b.function));
    Changes {
        added: names(&plan.added),
        removed: names(&plan.removed),
        changed,
        sections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn what_needs_a_restart_is_named() {
        let old = raw(
            "[gateway]\nlisten = \"127.0.0.1:1\"\nauth = \"none\"\n[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = []\n",
        );
        let live = raw(
            "[gateway]\nlisten = \"127.0.0.1:1\"\nauth = \"signature\"\n[[networks]]\nvpc_id = \"vpc-b\"\ncidrs = []\n",
        );
        assert!(fixed_changes(&sections_changed(&old, &live)).is_empty());
        let fixed =
            raw("[gateway]\nlisten = \"127.0.0.1:2\"\nthreads = 2\n[fleet]\nname = \"x\"\n");
        assert_eq!(
            fixed_changes(&sections_changed(&old, &fixed)),
            ["gateway.listen", "gateway.threads", "fleet"]
        );
    }
}
