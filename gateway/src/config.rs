//! Configuration: the TOML file users write, validated once into typed values.
//!
//! Every error names the key and the reason (`functions[1].memory_mb: ...`),
//! and the gateway exits non-zero on any of them: a gateway never starts on a
//! configuration it only half understood (unknown keys are errors too).
//!
//! The credential sections live in [`auth`].

mod auth;
pub mod backends;
pub mod fleet;
mod functions;
mod gateway;
mod ingress;
mod lambda;
pub use lambda::LambdaSettings;

use crate::auth::{AuthLevel, AuthMode, GatewayAuth, NamedKey};
use crate::ingress::networks::NetworkMap;
use crate::ingress::policy::IngressPolicy;
use crate::ingress::rules::{Action, RuleSet};
use crate::ingress::{VpcId, VpcTable};
use crate::throttle::{CallerKeying, Rate};
use governor::Quota;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

// ---- the file, as written ----

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    gateway: GatewaySection,
    #[serde(default)]
    workers: Vec<WorkerSection>,
    #[serde(default)]
    functions: Vec<FunctionSection>,
    #[serde(default)]
    networks: Vec<NetworkSection>,
    usage: Option<UsageSection>,
    #[serde(default)]
    credentials: Vec<auth::CredentialSection>,
    #[serde(default)]
    lambda: LambdaSettings,
    #[serde(default)]
    azure: auth::AzureSection,
    #[serde(default)]
    outbound_credentials: Vec<backends::OutboundCredentialSection>,
    fleet: Option<fleet::FleetSection>,
}

/// A file of `gateway.functions_dir`: functions only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionsFile {
    #[serde(default)]
    functions: Vec<FunctionSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageSection {
    path: PathBuf,
    #[serde(default = "default_sync_interval")]
    sync_interval_ms: u64,
    #[serde(default = "default_rotate_bytes")]
    rotate_bytes: u64,
}

fn default_sync_interval() -> u64 {
    1000
}
fn default_rotate_bytes() -> u64 {
    64 * 1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSection {
    vpc_id: String,
    #[serde(default)]
    cidrs: Vec<String>,
    #[serde(default)]
    endpoint_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    priority: u32,
    action: Action,
    cidr: Option<String>,
    vpc_id: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivateEndpointSection {
    listen: String,
    vpc_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyListenerSection {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GatewaySection {
    listen: String,
    admin_listen: String,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    self_signed_cert_path: Option<PathBuf>,
    self_signed_validity_days: u32,
    max_body_bytes: u64,
    max_response_bytes: u64,
    max_header_bytes: u32,
    header_read_timeout_ms: u64,
    http2_idle_timeout_ms: u64,
    body_read_timeout_ms: u64,
    tls_handshake_timeout_ms: u64,
    max_connections: u32,
    drain_timeout_s: u64,
    max_instance_lifetime_s: u64,
    instance_start_timeout_ms: u64,
    worker_timeout_ms: u64,
    embedded_worker_memory_mb: u64,
    embedded_worker_isolation: sandbox_runtime::isolation::Isolation,
    embedded_worker_subnet: Option<String>,
    threads: Option<u64>,
    max_async_queued: u32,
    max_async_queued_bytes: u64,
    max_async_body_bytes: u64,
    async_retry_base_ms: u64,
    async_store: AsyncStoreKind,
    async_store_path: PathBuf,
    async_retention_s: u64,
    max_async_retained: u64,
    async_destination_max_age_s: u64,
    async_destination_ca_file: Option<PathBuf>,
    trusted_proxies: Vec<String>,
    access_rules: Vec<RuleSection>,
    private_endpoints: Vec<PrivateEndpointSection>,
    proxy_listeners: Vec<ProxyListenerSection>,
    proxy_header_timeout_ms: u64,
    max_refused_body_drain_bytes: u64,
    refused_body_drain_timeout_ms: u64,
    caller_rate_limit: Option<Rate>,
    caller_key: CallerKeying,
    max_instances: u32,
    max_instance_starts_per_minute: u32,
    auth: AuthMode,
    signature_max_skew_s: u64,
    backend_ca_file: Option<PathBuf>,
    backend_eject_after_failures: u32,
    backend_eject_ms: u64,
    backend_max_idle_per_host: u32,
    /// A directory of TOML files holding more `[[functions]]`.
    functions_dir: Option<PathBuf>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".into(),
            admin_listen: "127.0.0.1:9464".into(),
            tls_cert: None,
            tls_key: None,
            self_signed_cert_path: None,
            self_signed_validity_days: 30,
            max_body_bytes: 32 * 1024 * 1024,
            max_response_bytes: 32 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            header_read_timeout_ms: 30_000,
            // HTTP/1.1's idle bound is the header read timeout: the same.
            http2_idle_timeout_ms: 30_000,
            body_read_timeout_ms: 60_000,
            tls_handshake_timeout_ms: 10_000,
            max_connections: 10_000,
            drain_timeout_s: 30,
            max_instance_lifetime_s: 36 * 3600,
            instance_start_timeout_ms: 30_000,
            worker_timeout_ms: 5_000,
            embedded_worker_memory_mb: 4096,
            embedded_worker_isolation: sandbox_runtime::isolation::Isolation::Namespaces,
            embedded_worker_subnet: None,
            threads: None,
            max_async_queued: 100_000,
            max_async_queued_bytes: 1 << 30,
            max_async_body_bytes: 128 * 1024,
            async_retry_base_ms: 1000,
            async_store: AsyncStoreKind::Embedded,
            async_store_path: "fngate-async.redb".into(),
            async_retention_s: 86400,
            max_async_retained: 100_000,
            async_destination_max_age_s: 86400,
            async_destination_ca_file: None,
            trusted_proxies: Vec::new(),
            access_rules: Vec::new(),
            private_endpoints: Vec::new(),
            proxy_listeners: Vec::new(),
            proxy_header_timeout_ms: 5_000,
            // Twice the default payload limit: a client that sent a payload a
            // little over it still reads its answer.
            max_refused_body_drain_bytes: 64 * 1024 * 1024,
            // nginx's lingering_time.
            refused_body_drain_timeout_ms: 30_000,
            caller_rate_limit: None,
            caller_key: CallerKeying::SourceIp,
            // Function Compute's defaults: 300 burst instances, 300 starts/min.
            max_instances: 300,
            max_instance_starts_per_minute: 300,
            auth: AuthMode::None,
            // AWS and Alibaba Cloud both allow 15 minutes.
            signature_max_skew_s: 900,
            backend_ca_file: None,
            // Envoy's outlier detection: 5 consecutive failures, 30 s out.
            backend_eject_after_failures: 5,
            backend_eject_ms: 30_000,
            backend_max_idle_per_host: 256,
            functions_dir: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerSection {
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionSection {
    name: String,
    /// Required unless every backend is a cloud's.
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    backends: Vec<backends::BackendSection>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default = "default_memory")]
    memory_mb: u32,
    #[serde(default = "default_timeout")]
    timeout_s: u64,
    #[serde(default = "default_concurrency")]
    instance_concurrency: u32,
    #[serde(default = "default_idle")]
    idle_timeout_s: u64,
    #[serde(default)]
    min_instances: u32,
    #[serde(default)]
    vpc_bindings: Vec<String>,
    /// Where its instances may send traffic (enforced by isolated workers).
    #[serde(default)]
    egress: sandbox_runtime::api::EgressMode,
    /// The `[[networks]]` VPC its instances reach in `vpc` / `both` mode.
    vpc_id: Option<String>,
    /// Host directories its isolated instances may write.
    #[serde(default)]
    writable_paths: Vec<String>,
    /// Host paths its isolated instances may read, beyond their code.
    #[serde(default)]
    readable_paths: Vec<String>,
    /// Its isolated instances' writable area (`/tmp`), MiB.
    #[serde(default = "default_disk")]
    disk_mb: u32,
    /// Absent: the gateway's default rules apply. Present (even empty): these.
    access_rules: Option<Vec<RuleSection>>,
    rate_limit: Option<Rate>,
    caller_rate_limit: Option<Rate>,
    max_concurrency: Option<u32>,
    #[serde(default)]
    queue_timeout_ms: u64,
    #[serde(default = "default_queue_max")]
    queue_max: u32,
    #[serde(default = "default_async_retries")]
    async_max_retries: u32,
    #[serde(default = "default_async_age")]
    async_max_event_age_s: u64,
    #[serde(default = "default_async_concurrency")]
    async_max_concurrency: u32,
    on_success: Option<String>,
    on_failure: Option<String>,
    /// Absent: the gateway's `auth`.
    auth: Option<AuthMode>,
    /// Absent: `function` when signatures are required, else `anonymous`.
    auth_level: Option<AuthLevel>,
    #[serde(default)]
    function_keys: Vec<auth::KeySection>,
}

fn default_queue_max() -> u32 {
    100
}
/// FC: a failed asynchronous invocation is retried up to 3 times.
fn default_async_retries() -> u32 {
    3
}
fn default_async_age() -> u64 {
    86400
}
fn default_async_concurrency() -> u32 {
    10
}

/// Where asynchronous tasks are kept (`gateway.async_store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AsyncStoreKind {
    /// redb, at `async_store_path`: tasks survive restarts and crashes.
    Embedded,
    /// In memory: lost with the process (benchmarks, throwaway setups).
    Memory,
}

fn default_memory() -> u32 {
    128
}
fn default_disk() -> u32 {
    sandbox_runtime::api::DEFAULT_DISK_MB
}
fn default_timeout() -> u64 {
    60
}
fn default_concurrency() -> u32 {
    1
}
fn default_idle() -> u64 {
    300
}

// ---- the validated configuration ----

#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    /// Worker API base URLs; empty means "start one embedded worker".
    pub workers: Vec<String>,
    pub functions: Vec<Arc<FunctionConfig>>,
    pub ingress: Arc<IngressConfig>,
    /// The usage log; `None` when `[usage]` is absent.
    pub usage: Option<crate::metering::usage_log::UsageLogConfig>,
    pub auth: GatewayAuth,
    pub lambda: LambdaSettings,
    /// `[fleet]`; `None`: this gateway runs alone.
    pub fleet: Option<fleet::FleetConfig>,
    /// The files it was read from; `None`: parsed from text.
    pub source: Option<Arc<Source>>,
}

/// Where a configuration was read from, for a reload to read again and
/// to compare with.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    /// `gateway.functions_dir`, resolved.
    pub functions_dir: Option<PathBuf>,
    /// SHA-256 over every file read (its name and content), hex.
    pub hash: String,
    /// The main file as TOML, with the directory's `[[functions]]` appended
    /// to its own: what a reload compares, section by section.
    pub raw: toml::Table,
}

/// Where callers stand, compiled at load (see [`crate::ingress`]).
#[derive(Debug)]
pub struct IngressConfig {
    pub vpcs: VpcTable,
    pub networks: NetworkMap,
    /// Peers allowed to send PROXY protocol headers.
    pub trusted_proxies: Vec<IpNet>,
    pub private_endpoints: Vec<(SocketAddr, VpcId)>,
    pub proxy_listeners: Vec<SocketAddr>,
    pub proxy_header_timeout: Duration,
    pub default_rules: Arc<RuleSet>,
}

impl IngressConfig {
    pub fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }
}

#[derive(Debug, Clone)]
pub enum TlsSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    SelfSigned {
        write_to: PathBuf,
        validity_days: u32,
    },
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: TlsSource,
    pub limits: Limits,
    pub drain_timeout: Duration,
    pub max_instance_lifetime: Duration,
    pub instance_start_timeout: Duration,
    /// How long a worker may take to answer an API call (see [`crate::workers`]).
    pub worker_timeout: Duration,
    pub embedded_worker_memory_mb: u64,
    /// How the embedded worker isolates instances (see `sandbox_runtime::isolation`).
    pub embedded_worker_isolation: sandbox_runtime::isolation::Isolation,
    /// The embedded worker's range for isolated instances' addresses.
    pub embedded_worker_subnet: Option<ipnet::Ipv4Net>,
    /// Runtime shards (threads serving connections), see [`crate::shards`].
    pub threads: usize,
    pub asynchronous: AsyncLimits,
    pub throttle: GatewayThrottle,
    pub backends: BackendSettings,
}

/// How the gateway calls cloud backends (see [`crate::execute::routes`]).
#[derive(Debug, Clone)]
pub struct BackendSettings {
    /// PEM trust anchors besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Consecutive failures that take a backend out of rotation.
    pub eject_after_failures: u32,
    /// How long it stays out before one call probes it.
    pub eject_for: Duration,
    /// Idle connections kept per backend host and runtime shard.
    pub max_idle_per_host: usize,
}

/// Gateway-wide bounds on asynchronous invocations.
#[derive(Debug, Clone)]
pub struct AsyncLimits {
    /// Accepted and not yet done (queued, waiting to retry or running).
    pub max_queued: u32,
    /// `max_async_body_bytes`, and at most `max_body_bytes`.
    pub max_body_bytes: u64,
    /// The first retry delay; it doubles with each retry.
    pub retry_base: Duration,
    /// Payload bytes of tasks accepted and not yet done.
    pub max_queued_bytes: u64,
    pub store: AsyncStoreKind,
    pub store_path: PathBuf,
    /// How long a done task stays readable through the task API...
    pub retention: Duration,
    /// ...and how many of them, the newest, at most.
    pub max_retained: u64,
    /// How long a destination record is retried before it is dropped.
    pub destination_max_age: Duration,
    /// Trust anchors for HTTPS destinations beside the system's (PEM).
    pub destination_ca_file: Option<PathBuf>,
}

/// Gateway-wide throttling (see [`crate::throttle`]).
#[derive(Debug, Clone)]
pub struct GatewayThrottle {
    pub caller_rate: Option<Quota>,
    pub caller_key: CallerKeying,
    pub max_instances: u32,
    pub max_instance_starts_per_minute: u32,
}

/// A function's throttling (see [`crate::throttle`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionThrottle {
    pub rate: Option<Quota>,
    pub caller_rate: Option<Quota>,
    pub max_concurrency: Option<u32>,
    pub queue_timeout: Duration,
    pub queue_max: usize,
}

/// Per-connection and per-request bounds on what a client may make the gateway hold.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_response_bytes: u64,
    pub max_header_bytes: u32,
    pub header_read_timeout: Duration,
    /// An HTTP/2 connection with no stream in flight this long is closed (GOAWAY).
    pub http2_idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: u32,
    /// A refused request's unread body up to this size is read and dropped
    /// (see [`crate::body::unread`]); larger ones close the connection.
    pub max_refused_body_drain_bytes: u64,
    /// How long such a body may take to arrive in full.
    pub refused_body_drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct FunctionConfig {
    pub name: Arc<str>,
    pub command: Vec<String>,
    /// Where calls run; empty: fngate's sandbox workers only.
    pub backends: Vec<backends::BackendConfig>,
    pub env: BTreeMap<String, String>,
    pub memory_mb: u32,
    pub timeout: Duration,
    pub instance_concurrency: u32,
    pub idle_timeout: Duration,
    pub min_instances: u32,
    pub ingress: Arc<IngressPolicy>,
    pub throttle: FunctionThrottle,
    pub asynchronous: AsyncPolicy,
    /// What the FC and Lambda doors demand (see [`crate::auth`]).
    pub auth: AuthMode,
    /// What the Azure door demands.
    pub auth_level: AuthLevel,
    pub function_keys: Vec<NamedKey>,
    /// Where its instances may send traffic: its mode, its VPC's CIDRs and
    /// the other VPCs' (never reachable), for isolated workers to enforce.
    pub egress: sandbox_runtime::api::Egress,
    /// Host directories its isolated instances may write (same paths).
    pub writable_paths: Vec<String>,
    /// Host paths its isolated instances may read (same paths).
    pub readable_paths: Vec<String>,
    /// Its isolated instances' writable area, MiB.
    pub disk_mb: u32,
}

/// How a function's asynchronous invocations are retried (see
/// [`crate::asynchronous`]).
#[derive(Debug, Clone)]
pub struct AsyncPolicy {
    /// Retries after a function error (the first attempt is not a retry).
    pub max_retries: u32,
    /// An invocation not done this long after it was accepted is dropped.
    pub max_event_age: Duration,
    /// Attempts of this function's asynchronous invocations running at
    /// once: a deep queue cannot take every instance from synchronous calls.
    pub max_concurrency: u32,
    /// Where the record of a task that succeeded is sent.
    pub on_success: Option<http::Uri>,
    /// Where the record of a task that failed or expired is sent.
    pub on_failure: Option<http::Uri>,
}

impl FunctionConfig {
    /// What a worker starts an instance from differs: instances of `self`
    /// cannot serve `other` (a reload starts new ones).
    pub fn shape_differs(&self, other: &FunctionConfig) -> bool {
        self.command != other.command
            || self.env != other.env
            || self.memory_mb != other.memory_mb
            || self.egress != other.egress
            || self.writable_paths != other.writable_paths
            || self.readable_paths != other.readable_paths
            || self.disk_mb != other.disk_mb
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::read(path, None)
    }

    /// Reads the file at `path` and the files of its `functions_dir`, then
    /// validates the whole. `running`: the running configuration's VPCs,
    /// whose ids a reloaded one keeps (see [`VpcTable::seeded`]).
    pub fn read(path: &Path, running: Option<&VpcTable>) -> Result<Config, ConfigError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let parse_err = |path: &Path, e: &dyn std::fmt::Display| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let text = read(path)?;
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        let file: File = toml::from_str(&text).map_err(|e| parse_err(path, &e))?;
        let mut raw: toml::Table = toml::from_str(&text).map_err(|e| parse_err(path, &e))?;
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        hash.update(text.as_bytes());
        let functions_dir =
            (file.gateway.functions_dir.as_deref()).map(|d| Resolve { config_dir: &dir }.path(d));
        let mut more = Vec::new();
        if let Some(fdir) = &functions_dir {
            for p in functions_files(fdir)? {
                let text = read(&p)?;
                let part: FunctionsFile = toml::from_str(&text).map_err(|e| parse_err(&p, &e))?;
                let part_raw: toml::Table = toml::from_str(&text).map_err(|e| parse_err(&p, &e))?;
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                hash.update(name.as_bytes());
                hash.update(&[0]);
                hash.update(text.as_bytes());
                if let Some(toml::Value::Array(fs)) = part_raw.get("functions") {
                    let all = raw
                        .entry("functions")
                        .or_insert_with(|| toml::Value::Array(Vec::new()));
                    if let toml::Value::Array(all) = all {
                        all.extend(fs.iter().cloned());
                    }
                }
                more.push((name.into_owned(), part.functions));
            }
        }
        let mut config = Self::build(file, more, &dir, running)?;
        let hex: String = (hash.finish().as_ref().iter())
            .map(|b| format!("{b:02x}"))
            .collect();
        config.source = Some(Arc::new(Source {
            path: path.to_owned(),
            functions_dir,
            hash: hex,
            raw,
        }));
        Ok(config)
    }

    /// Parses and validates, one section after another. Relative paths and
    /// `{config_dir}` resolve against `config_dir`; `{bin_dir}` is the
    /// gateway executable's folder.
    pub fn parse(text: &str, config_dir: &Path) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        Self::build(file, Vec::new(), config_dir, None)
    }

    /// `more`: the functions of each `functions_dir` file, by file name.
    fn build(
        file: File,
        more: Vec<(String, Vec<FunctionSection>)>,
        config_dir: &Path,
        running: Option<&VpcTable>,
    ) -> Result<Config, ConfigError> {
        let at = Resolve { config_dir };
        let g = &file.gateway;
        let gateway = gateway::gateway(g, &at)?;
        let workers = workers(&file.workers)?;
        let (ingress, vpc_cidrs) = ingress::ingress(
            g,
            &file.networks,
            gateway.listen,
            gateway.admin_listen,
            running,
        )?;
        let credentials = &file.credentials;
        let auth = auth::gateway(
            g.auth,
            g.signature_max_skew_s,
            credentials,
            &file.azure,
            config_dir,
        )?;
        (file.lambda.validate()).map_err(|(key, reason)| invalid(key, reason))?;
        let outbound_keys = backends::outbound_keys(&file.outbound_credentials, config_dir)?;
        let cx = functions::Context {
            vpcs: &ingress.vpcs,
            vpc_cidrs: &vpc_cidrs,
            default_rules: &ingress.default_rules,
            auth: &auth,
            outbound_keys: &outbound_keys,
            config_dir,
            bin_dir: std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_default(),
        };
        let main =
            (file.functions.into_iter().enumerate()).map(|(i, f)| (format!("functions[{i}]"), f));
        let dir = more.into_iter().flat_map(|(name, fs)| {
            (fs.into_iter().enumerate()).map(move |(i, f)| (format!("{name}: functions[{i}]"), f))
        });
        let functions = functions::functions(main.chain(dir), &cx)?;
        let fleet = (file.fleet)
            .map(|f| fleet::fleet(f, config_dir))
            .transpose()?;
        let usage = file.usage.map(|u| usage(u, &at)).transpose()?;
        Ok(Config {
            gateway,
            workers,
            functions,
            auth,
            lambda: file.lambda,
            fleet,
            usage,
            ingress,
            source: None,
        })
    }
}

/// The `*.toml` files of `functions_dir`, by name (hidden files, such as
/// an editor's, are not read).
fn functions_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let err = |source| ConfigError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let p = entry.map_err(err)?.path();
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".toml") && !name.starts_with('.') && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Where relative paths of the file resolve.
struct Resolve<'a> {
    config_dir: &'a Path,
}

impl Resolve<'_> {
    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.config_dir.join(p)
        }
    }
}

fn addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|_| invalid(key, format!("{v:?} is not an IP:port address")))
}

fn positive(key: &str, v: u64) -> Result<u64, ConfigError> {
    match v {
        0 => Err(invalid(key, "must be greater than 0")),
        v => Ok(v),
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// `[[workers]]`: sandbox workers' API URLs.
fn workers(sections: &[WorkerSection]) -> Result<Vec<String>, ConfigError> {
    let mut workers = Vec::new();
    for (i, w) in sections.iter().enumerate() {
        let key = format!("workers[{i}].url");
        let uri: http::Uri = w
            .url
            .parse()
            .map_err(|_| invalid(&key, format!("{:?} is not a URL", w.url)))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(invalid(&key, "must be http://host:port"));
        }
        workers.push(w.url.trim_end_matches('/').to_string());
    }
    Ok(workers)
}

/// `[usage]`: the usage log.
fn usage(
    u: UsageSection,
    at: &Resolve,
) -> Result<crate::metering::usage_log::UsageLogConfig, ConfigError> {
    if !(10..=60_000).contains(&u.sync_interval_ms) {
        return Err(invalid("usage.sync_interval_ms", "must be 10..=60000"));
    }
    if u.rotate_bytes < 4096 {
        return Err(invalid("usage.rotate_bytes", "must be at least 4096"));
    }
    Ok(crate::metering::usage_log::UsageLogConfig {
        path: at.path(&u.path),
        sync_interval: ms(u.sync_interval_ms),
        rotate_bytes: u.rotate_bytes,
    })
}

fn quota(key: &str, rate: Option<Rate>) -> Result<Option<Quota>, ConfigError> {
    match rate {
        None => Ok(None),
        Some(r) => r.quota().map(Some).ok_or_else(|| {
            invalid(
                key,
                format!(
                    "per_second = {} and burst = {}: per_second must be > 0 (at most 1e9) and burst at least 1",
                    r.per_second, r.burst
                ),
            )
        }),
    }
}

#[cfg(test)]
mod tests;
