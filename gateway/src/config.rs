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
mod lambda;
pub use lambda::LambdaSettings;

use crate::auth::{AuthLevel, AuthMode, GatewayAuth, NamedKey};
use crate::ingress::networks::NetworkMap;
use crate::ingress::policy::{IngressPolicy, MAX_VPC_BINDINGS};
use crate::ingress::rules::{Action, Match, Rule, RuleSet};
use crate::ingress::{VpcId, VpcTable};
use crate::throttle::{CallerKeying, Rate};
use governor::Quota;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
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

/// A destination URL: absolute, HTTP or HTTPS.
fn destination(key: &str, v: Option<String>) -> Result<Option<http::Uri>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let uri: http::Uri = v
        .parse()
        .map_err(|_| invalid(key, format!("{v:?} is not a URL")))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(Some(uri)),
        _ => Err(invalid(
            key,
            format!("{v:?} must be an http:// or https:// URL"),
        )),
    }
}

fn default_memory() -> u32 {
    128
}
fn default_disk() -> u32 {
    sandbox_runtime::api::DEFAULT_DISK_MB
}
/// The largest writable area of an instance: FC's largest temporary disk, 10 GB.
const DISK_MB_MAX: u32 = 10_240;
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

/// How the gateway calls cloud backends (see [`crate::backend`]).
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
#[derive(Debug, Clone)]
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

/// A function's egress policy: `vpc` and `both` need a `vpc_id` of
/// `[[networks]]` with CIDRs; every other VPC's CIDRs are refused.
fn egress_policy(
    key: &dyn Fn(&str) -> String,
    mode: sandbox_runtime::api::EgressMode,
    vpc_id: Option<&str>,
    vpc_cidrs: &BTreeMap<&str, Vec<String>>,
) -> Result<sandbox_runtime::api::Egress, ConfigError> {
    use sandbox_runtime::api::EgressMode;
    let own = match vpc_id {
        Some(v) => Some(vpc_cidrs.get(v).ok_or_else(|| {
            invalid(
                key("vpc_id"),
                format!("{v:?} is not a [[networks]] VPC with cidrs"),
            )
        })?),
        None if matches!(mode, EgressMode::Vpc | EgressMode::Both) => {
            return Err(invalid(
                key("vpc_id"),
                format!("egress = {:?} needs the VPC's id", mode.as_str()),
            ));
        }
        None => None,
    };
    Ok(sandbox_runtime::api::Egress {
        mode,
        vpc_id: vpc_id.map(String::from),
        vpc_cidrs: own.cloned().unwrap_or_default(),
        refused_cidrs: vpc_cidrs
            .iter()
            .filter(|(id, _)| Some(**id) != vpc_id)
            .flat_map(|(_, c)| c.iter().cloned())
            .collect(),
    })
}

/// How a function's asynchronous invocations are retried (see
/// [`crate::pipeline::asynchronous`]).
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

/// Function Compute's limits on these values.
const MEMORY_MB: std::ops::RangeInclusive<u32> = 64..=32768;
const TIMEOUT_S: std::ops::RangeInclusive<u64> = 1..=86400;
const CONCURRENCY: std::ops::RangeInclusive<u32> = 1..=200;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
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
        Self::parse(&text, &dir).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates. Relative paths and `{config_dir}` resolve
    /// against `config_dir`; `{bin_dir}` is the gateway executable's folder.
    pub fn parse(text: &str, config_dir: &Path) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        let g = file.gateway;
        let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse()
                .map_err(|_| invalid(key, format!("{v:?} is not an IP:port address")))
        };
        let listen = addr("gateway.listen", &g.listen)?;
        let admin_listen = addr("gateway.admin_listen", &g.admin_listen)?;
        let resolve = |p: PathBuf| {
            if p.is_absolute() {
                p
            } else {
                config_dir.join(p)
            }
        };
        let tls = match (g.tls_cert, g.tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: resolve(cert),
                key: resolve(key),
            },
            (None, None) => TlsSource::SelfSigned {
                write_to: g.self_signed_cert_path.map(resolve).unwrap_or_else(|| {
                    std::env::temp_dir()
                        .join(format!("fngate-self-signed-{}.pem", std::process::id()))
                }),
                validity_days: g.self_signed_validity_days,
            },
            (Some(_), None) => return Err(invalid("gateway.tls_key", "required with tls_cert")),
            (None, Some(_)) => return Err(invalid("gateway.tls_cert", "required with tls_key")),
        };
        if !(1..=397).contains(&g.self_signed_validity_days) {
            return Err(invalid(
                "gateway.self_signed_validity_days",
                "must be 1..=397 (browsers reject longer leaf validity)",
            ));
        }
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(v)
            }
        };
        let ms = Duration::from_millis;
        let limits = Limits {
            max_body_bytes: positive("gateway.max_body_bytes", g.max_body_bytes)?,
            max_response_bytes: positive("gateway.max_response_bytes", g.max_response_bytes)?,
            max_header_bytes: positive("gateway.max_header_bytes", g.max_header_bytes.into())?
                as u32,
            header_read_timeout: ms(positive(
                "gateway.header_read_timeout_ms",
                g.header_read_timeout_ms,
            )?),
            http2_idle_timeout: ms(positive(
                "gateway.http2_idle_timeout_ms",
                g.http2_idle_timeout_ms,
            )?),
            body_read_timeout: ms(positive(
                "gateway.body_read_timeout_ms",
                g.body_read_timeout_ms,
            )?),
            tls_handshake_timeout: ms(positive(
                "gateway.tls_handshake_timeout_ms",
                g.tls_handshake_timeout_ms,
            )?),
            max_connections: positive("gateway.max_connections", g.max_connections.into())? as u32,
            max_refused_body_drain_bytes: g.max_refused_body_drain_bytes,
            refused_body_drain_timeout: ms(positive(
                "gateway.refused_body_drain_timeout_ms",
                g.refused_body_drain_timeout_ms,
            )?),
        };
        if limits.max_header_bytes < 8192 {
            // hyper's HTTP/1 reader cannot go lower than its minimum buffer.
            return Err(invalid("gateway.max_header_bytes", "must be at least 8192"));
        }

        let mut workers = Vec::new();
        for (i, w) in file.workers.iter().enumerate() {
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

        // ---- ingress: VPCs, the source map, listeners, default rules ----
        let mut vpcs = VpcTable::default();
        let mut seen_cidr: HashMap<IpNet, String> = HashMap::new();
        let mut cidrs = Vec::new();
        let mut endpoints: HashMap<Box<str>, VpcId> = HashMap::new();
        // Each VPC's CIDRs, for instances' egress policies.
        let mut vpc_cidrs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (i, n) in file.networks.iter().enumerate() {
            let key = |k: &str| format!("networks[{i}].{k}");
            valid_vpc_id(&key("vpc_id"), &n.vpc_id)?;
            if vpcs.get(&n.vpc_id).is_some() {
                return Err(invalid(
                    key("vpc_id"),
                    format!("duplicate VPC {:?}", n.vpc_id),
                ));
            }
            let vpc = vpcs.intern(&n.vpc_id);
            for (j, c) in n.cidrs.iter().enumerate() {
                let net = parse_cidr(&key(&format!("cidrs[{j}]")), c)?;
                if let Some(other) = seen_cidr.insert(net, n.vpc_id.clone()) {
                    return Err(invalid(
                        key(&format!("cidrs[{j}]")),
                        format!("{net} is already in {other:?}"),
                    ));
                }
                cidrs.push((net, vpc));
                vpc_cidrs
                    .entry(n.vpc_id.as_str())
                    .or_default()
                    .push(net.to_string());
            }
            for (j, e) in n.endpoint_ids.iter().enumerate() {
                if e.is_empty() || endpoints.insert(e.as_str().into(), vpc).is_some() {
                    return Err(invalid(
                        key(&format!("endpoint_ids[{j}]")),
                        format!("{e:?} is empty or listed twice"),
                    ));
                }
            }
        }
        let mut private_endpoints = Vec::new();
        for (i, p) in g.private_endpoints.iter().enumerate() {
            let key = |k: &str| format!("gateway.private_endpoints[{i}].{k}");
            let at = addr(&key("listen"), &p.listen)?;
            valid_vpc_id(&key("vpc_id"), &p.vpc_id)?;
            private_endpoints.push((at, vpcs.intern(&p.vpc_id)));
        }
        let mut proxy_listeners = Vec::new();
        for (i, p) in g.proxy_listeners.iter().enumerate() {
            proxy_listeners.push(addr(
                &format!("gateway.proxy_listeners[{i}].listen"),
                &p.listen,
            )?);
        }
        let mut all_listens = vec![
            ("gateway.listen".to_string(), listen),
            ("gateway.admin_listen".to_string(), admin_listen),
        ];
        all_listens.extend(
            private_endpoints
                .iter()
                .enumerate()
                .map(|(i, (a, _))| (format!("gateway.private_endpoints[{i}].listen"), *a)),
        );
        all_listens.extend(
            proxy_listeners
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("gateway.proxy_listeners[{i}].listen"), *a)),
        );
        for (i, (key, a)) in all_listens.iter().enumerate() {
            if a.port() != 0 && all_listens[..i].iter().any(|(_, b)| b == a) {
                return Err(invalid(
                    key,
                    format!("{a} is already used by another listener"),
                ));
            }
        }
        let mut trusted_proxies = Vec::new();
        for (i, c) in g.trusted_proxies.iter().enumerate() {
            trusted_proxies.push(parse_cidr(&format!("gateway.trusted_proxies[{i}]"), c)?);
        }
        if !proxy_listeners.is_empty() && trusted_proxies.is_empty() {
            return Err(invalid(
                "gateway.trusted_proxies",
                "proxy_listeners need at least one trusted proxy CIDR",
            ));
        }
        let default_rules = Arc::new(compile_rules(
            "gateway.access_rules",
            &g.access_rules,
            &vpcs,
        )?);

        let gw_auth = auth::gateway(
            g.auth,
            g.signature_max_skew_s,
            &file.credentials,
            &file.azure,
            config_dir,
        )?;
        file.lambda
            .validate()
            .map_err(|(key, reason)| invalid(key, reason))?;

        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let outbound_keys = backends::outbound_keys(&file.outbound_credentials, config_dir)?;
        let mut names = HashSet::new();
        let mut functions = Vec::new();
        for (i, f) in file.functions.into_iter().enumerate() {
            let key = |k: &str| format!("functions[{i}].{k}");
            if !valid_function_name(&f.name) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "{:?}: 1-64 letters, digits, '_' or '-', starting with a letter or '_'",
                        f.name
                    ),
                ));
            }
            if !names.insert(f.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate function name {:?}", f.name),
                ));
            }
            let backends =
                backends::backends(&key, &f.backends, &outbound_keys, &vpcs, config_dir)?;
            let sandboxed = backends.is_empty()
                || backends
                    .iter()
                    .any(|b| matches!(b.kind, backends::BackendKind::Sandbox));
            if sandboxed && (f.command.is_empty() || f.command[0].is_empty()) {
                return Err(invalid(key("command"), "must name a program"));
            }
            if !sandboxed && f.min_instances > 0 {
                return Err(invalid(
                    key("min_instances"),
                    "needs a sandbox backend (no instance of this function runs here)",
                ));
            }
            if !MEMORY_MB.contains(&f.memory_mb) {
                return Err(invalid(
                    key("memory_mb"),
                    format!("{} is outside 64..=32768", f.memory_mb),
                ));
            }
            if !TIMEOUT_S.contains(&f.timeout_s) {
                return Err(invalid(
                    key("timeout_s"),
                    format!("{} is outside 1..=86400", f.timeout_s),
                ));
            }
            if !CONCURRENCY.contains(&f.instance_concurrency) {
                return Err(invalid(
                    key("instance_concurrency"),
                    format!("{} is outside 1..=200", f.instance_concurrency),
                ));
            }
            if f.idle_timeout_s == 0 {
                return Err(invalid(key("idle_timeout_s"), "must be greater than 0"));
            }
            if f.min_instances > 300 {
                return Err(invalid(key("min_instances"), "must be at most 300"));
            }
            if f.vpc_bindings.len() > MAX_VPC_BINDINGS {
                return Err(invalid(
                    key("vpc_bindings"),
                    format!(
                        "{} VPCs bound; at most {MAX_VPC_BINDINGS}",
                        f.vpc_bindings.len()
                    ),
                ));
            }
            let mut vpc_bindings = Vec::new();
            for (j, v) in f.vpc_bindings.iter().enumerate() {
                let id = vpcs.get(v).ok_or_else(|| {
                    invalid(
                        key(&format!("vpc_bindings[{j}]")),
                        format!(
                            "unknown VPC {v:?}: declare it in [[networks]] or a private endpoint"
                        ),
                    )
                })?;
                vpc_bindings.push(id);
            }
            vpc_bindings.sort();
            vpc_bindings.dedup();
            let (rules, rules_from_function) = match &f.access_rules {
                Some(r) => (
                    Arc::new(compile_rules(&key("access_rules"), r, &vpcs)?),
                    true,
                ),
                None => (default_rules.clone(), false),
            };
            if f.max_concurrency == Some(0) {
                return Err(invalid(
                    key("max_concurrency"),
                    "must be at least 1 (omit it for no limit)",
                ));
            }
            if f.queue_timeout_ms > 600_000 {
                return Err(invalid(key("queue_timeout_ms"), "must be at most 600000"));
            }
            if f.queue_max == 0 {
                return Err(invalid(key("queue_max"), "must be at least 1"));
            }
            if f.async_max_retries > 8 {
                return Err(invalid(key("async_max_retries"), "must be 0..=8"));
            }
            if !(1..=86400).contains(&f.async_max_event_age_s) {
                return Err(invalid(key("async_max_event_age_s"), "must be 1..=86400"));
            }
            if !(1..=1000).contains(&f.async_max_concurrency) {
                return Err(invalid(key("async_max_concurrency"), "must be 1..=1000"));
            }
            let on_success = destination(&key("on_success"), f.on_success)?;
            let on_failure = destination(&key("on_failure"), f.on_failure)?;
            let throttle = FunctionThrottle {
                rate: quota(&key("rate_limit"), f.rate_limit)?,
                caller_rate: quota(&key("caller_rate_limit"), f.caller_rate_limit)?,
                max_concurrency: f.max_concurrency,
                queue_timeout: Duration::from_millis(f.queue_timeout_ms),
                queue_max: f.queue_max as usize,
            };
            let egress = egress_policy(&key, f.egress, f.vpc_id.as_deref(), &vpc_cidrs)?;
            for (what, list) in [
                ("writable_paths", &f.writable_paths),
                ("readable_paths", &f.readable_paths),
            ] {
                for (j, p) in list.iter().enumerate() {
                    if j >= 16 {
                        return Err(invalid(key(&format!("{what}[{j}]")), "at most 16 paths"));
                    }
                    sandbox_runtime::rootfs::check_path(p)
                        .map_err(|why| invalid(key(&format!("{what}[{j}]")), why))?;
                }
            }
            if !(1..=DISK_MB_MAX).contains(&f.disk_mb) {
                return Err(invalid(
                    key("disk_mb"),
                    format!("{} is outside 1..={DISK_MB_MAX}", f.disk_mb),
                ));
            }
            let (auth, auth_level, function_keys) = auth::function(
                &key,
                &gw_auth,
                f.auth,
                f.auth_level,
                &f.function_keys,
                config_dir,
            )?;
            let ingress = Arc::new(IngressPolicy {
                vpc_bindings,
                rules,
                rules_from_function,
            });
            let command = f
                .command
                .iter()
                .map(|a| {
                    a.replace("{bin_dir}", &bin_dir.to_string_lossy())
                        .replace("{config_dir}", &config_dir.to_string_lossy())
                })
                .collect();
            functions.push(Arc::new(FunctionConfig {
                name: f.name.into(),
                command,
                backends,
                env: f.env,
                memory_mb: f.memory_mb,
                timeout: Duration::from_secs(f.timeout_s),
                instance_concurrency: f.instance_concurrency,
                idle_timeout: Duration::from_secs(f.idle_timeout_s),
                min_instances: f.min_instances,
                ingress,
                throttle,
                asynchronous: AsyncPolicy {
                    max_retries: f.async_max_retries,
                    max_event_age: Duration::from_secs(f.async_max_event_age_s),
                    max_concurrency: f.async_max_concurrency,
                    on_success,
                    on_failure,
                },
                auth,
                auth_level,
                function_keys,
                egress,
                writable_paths: f.writable_paths,
                readable_paths: f.readable_paths,
                disk_mb: f.disk_mb,
            }));
        }

        let asynchronous = AsyncLimits {
            max_queued: positive("gateway.max_async_queued", g.max_async_queued.into())? as u32,
            max_body_bytes: positive("gateway.max_async_body_bytes", g.max_async_body_bytes)?
                .min(limits.max_body_bytes),
            retry_base: ms(positive(
                "gateway.async_retry_base_ms",
                g.async_retry_base_ms,
            )?),
            max_queued_bytes: positive("gateway.max_async_queued_bytes", g.max_async_queued_bytes)?,
            store: g.async_store,
            store_path: resolve(g.async_store_path),
            retention: Duration::from_secs(g.async_retention_s),
            max_retained: g.max_async_retained,
            destination_max_age: Duration::from_secs(positive(
                "gateway.async_destination_max_age_s",
                g.async_destination_max_age_s,
            )?),
            destination_ca_file: g.async_destination_ca_file.map(resolve),
        };
        Ok(Config {
            gateway: GatewayConfig {
                listen,
                admin_listen,
                tls,
                limits,
                drain_timeout: Duration::from_secs(g.drain_timeout_s),
                max_instance_lifetime: Duration::from_secs(positive(
                    "gateway.max_instance_lifetime_s",
                    g.max_instance_lifetime_s,
                )?),
                instance_start_timeout: ms(positive(
                    "gateway.instance_start_timeout_ms",
                    g.instance_start_timeout_ms,
                )?),
                worker_timeout: ms(positive("gateway.worker_timeout_ms", g.worker_timeout_ms)?),
                embedded_worker_memory_mb: positive(
                    "gateway.embedded_worker_memory_mb",
                    g.embedded_worker_memory_mb,
                )?,
                embedded_worker_isolation: g.embedded_worker_isolation,
                embedded_worker_subnet: match &g.embedded_worker_subnet {
                    None => None,
                    Some(v) => Some(v.parse().map_err(|_| {
                        invalid(
                            "gateway.embedded_worker_subnet",
                            format!("{v:?} is not an IPv4 CIDR"),
                        )
                    })?),
                },
                threads: match g.threads {
                    None => crate::shards::default_count(),
                    Some(n @ 1..=1024) => n as usize,
                    Some(_) => return Err(invalid("gateway.threads", "must be 1..=1024")),
                },
                asynchronous,
                throttle: GatewayThrottle {
                    caller_rate: quota("gateway.caller_rate_limit", g.caller_rate_limit)?,
                    caller_key: g.caller_key,
                    max_instances: positive("gateway.max_instances", g.max_instances.into())?
                        as u32,
                    max_instance_starts_per_minute: positive(
                        "gateway.max_instance_starts_per_minute",
                        g.max_instance_starts_per_minute.into(),
                    )? as u32,
                },
                backends: BackendSettings {
                    ca_file: g.backend_ca_file.map(resolve),
                    eject_after_failures: positive(
                        "gateway.backend_eject_after_failures",
                        g.backend_eject_after_failures.into(),
                    )? as u32,
                    eject_for: ms(positive("gateway.backend_eject_ms", g.backend_eject_ms)?),
                    max_idle_per_host: g.backend_max_idle_per_host as usize,
                },
            },
            workers,
            functions,
            auth: gw_auth,
            lambda: file.lambda,
            fleet: file
                .fleet
                .map(|f| fleet::fleet(f, config_dir))
                .transpose()?,
            usage: match file.usage {
                None => None,
                Some(u) => {
                    if !(10..=60_000).contains(&u.sync_interval_ms) {
                        return Err(invalid("usage.sync_interval_ms", "must be 10..=60000"));
                    }
                    if u.rotate_bytes < 4096 {
                        return Err(invalid("usage.rotate_bytes", "must be at least 4096"));
                    }
                    Some(crate::metering::usage_log::UsageLogConfig {
                        path: resolve(u.path),
                        sync_interval: ms(u.sync_interval_ms),
                        rotate_bytes: u.rotate_bytes,
                    })
                }
            },
            ingress: Arc::new(IngressConfig {
                networks: NetworkMap::new(cidrs, endpoints),
                vpcs,
                trusted_proxies,
                private_endpoints,
                proxy_listeners,
                proxy_header_timeout: ms(positive(
                    "gateway.proxy_header_timeout_ms",
                    g.proxy_header_timeout_ms,
                )?),
                default_rules,
            }),
        })
    }
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

/// A CIDR, or a bare address meaning a single host.
fn parse_cidr(key: &str, v: &str) -> Result<IpNet, ConfigError> {
    v.parse::<IpNet>()
        .or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            invalid(
                key,
                format!("{v:?} is not a CIDR (like 10.0.0.0/8 or fd00::/8)"),
            )
        })
}

fn valid_vpc_id(key: &str, v: &str) -> Result<(), ConfigError> {
    let ok = (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{v:?}: 1-128 letters, digits, '-' or '_'"),
        ))
    }
}

fn compile_rules(
    key: &str,
    rules: &[RuleSection],
    vpcs: &VpcTable,
) -> Result<RuleSet, ConfigError> {
    let mut out = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let k = |f: &str| format!("{key}[{i}].{f}");
        let matches = match (&r.cidr, &r.vpc_id) {
            (Some(c), None) => Match::Cidr(parse_cidr(&k("cidr"), c)?),
            (None, Some(v)) => Match::Vpc(vpcs.get(v).ok_or_else(|| {
                invalid(
                    k("vpc_id"),
                    format!("unknown VPC {v:?}: declare it in [[networks]] or a private endpoint"),
                )
            })?),
            _ => {
                return Err(invalid(
                    format!("{key}[{i}]"),
                    "a rule needs exactly one of cidr or vpc_id",
                ));
            }
        };
        out.push(Rule {
            priority: r.priority,
            action: r.action,
            matches,
            name: r.name.as_deref().map(Into::into),
        });
    }
    Ok(RuleSet::new(out, vpcs.len()))
}

/// Function Compute's naming rule.
fn valid_function_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=64).contains(&b.len())
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

#[cfg(test)]
mod tests;
