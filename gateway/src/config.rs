//! Configuration: the TOML file users write, validated once into typed values.
//!
//! Every error names the key and the reason (`functions[1].memory_mb: ...`),
//! and the gateway exits non-zero on any of them: a gateway never starts on a
//! configuration it only half understood (unknown keys are errors too).

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
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
    body_read_timeout_ms: u64,
    tls_handshake_timeout_ms: u64,
    max_connections: u32,
    drain_timeout_s: u64,
    max_instance_lifetime_s: u64,
    instance_start_timeout_ms: u64,
    embedded_worker_memory_mb: u64,
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
            body_read_timeout_ms: 60_000,
            tls_handshake_timeout_ms: 10_000,
            max_connections: 10_000,
            drain_timeout_s: 30,
            max_instance_lifetime_s: 36 * 3600,
            instance_start_timeout_ms: 30_000,
            embedded_worker_memory_mb: 4096,
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
    command: Vec<String>,
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
}

fn default_memory() -> u32 {
    128
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
    pub embedded_worker_memory_mb: u64,
}

/// Per-connection and per-request bounds on what a client may make the gateway hold.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_response_bytes: u64,
    pub max_header_bytes: u32,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct FunctionConfig {
    pub name: Arc<str>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub memory_mb: u32,
    pub timeout: Duration,
    pub instance_concurrency: u32,
    pub idle_timeout: Duration,
    pub min_instances: u32,
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
            body_read_timeout: ms(positive(
                "gateway.body_read_timeout_ms",
                g.body_read_timeout_ms,
            )?),
            tls_handshake_timeout: ms(positive(
                "gateway.tls_handshake_timeout_ms",
                g.tls_handshake_timeout_ms,
            )?),
            max_connections: positive("gateway.max_connections", g.max_connections.into())? as u32,
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

        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
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
            if f.command.is_empty() || f.command[0].is_empty() {
                return Err(invalid(key("command"), "must name a program"));
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
                env: f.env,
                memory_mb: f.memory_mb,
                timeout: Duration::from_secs(f.timeout_s),
                instance_concurrency: f.instance_concurrency,
                idle_timeout: Duration::from_secs(f.idle_timeout_s),
                min_instances: f.min_instances,
            }));
        }

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
                embedded_worker_memory_mb: positive(
                    "gateway.embedded_worker_memory_mb",
                    g.embedded_worker_memory_mb,
                )?,
            },
            workers,
            functions,
        })
    }
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
