//! `[fleet]`: several gateways as one service (see [`crate::fleet`]).
//! Absent, the gateway runs alone and connects to nothing.

use super::auth::secret;
use super::{ConfigError, invalid};
use crate::auth::Secret;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FleetSection {
    /// This gateway's name in the fleet, unique among its members.
    id: String,
    /// Names the fleet's streams and buckets: fleets may share a NATS server.
    #[serde(default = "default_name")]
    name: String,
    nats_urls: Vec<String>,
    nats_user: Option<String>,
    nats_password: Option<String>,
    nats_password_file: Option<PathBuf>,
    nats_password_env: Option<String>,
    nats_token: Option<String>,
    nats_token_file: Option<PathBuf>,
    nats_token_env: Option<String>,
    #[serde(default)]
    rate_limits: RateLimitMode,
    /// `rate_limits = "redis"`: the server (`redis://[:password@]host:port`),
    /// from exactly one of a value, a file or an environment variable.
    redis_url: Option<String>,
    redis_url_file: Option<PathBuf>,
    redis_url_env: Option<String>,
    /// A rate check slower than this falls back to the split limits.
    #[serde(default = "default_redis_timeout_ms")]
    redis_timeout_ms: u64,
    /// Place instances on the workers registered in the fleet too (beside
    /// `[[workers]]`); no embedded worker then unless this is `false`.
    #[serde(default = "yes")]
    discover_workers: bool,
    #[serde(default = "default_heartbeat_ms")]
    heartbeat_ms: u64,
    #[serde(default = "default_member_ttl_ms")]
    member_ttl_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
    /// How long an asynchronous attempt holds its task without a sign of
    /// progress (sent every third of it): a killed gateway's tasks run
    /// elsewhere this long after it died.
    #[serde(default = "default_async_ack_wait_ms")]
    async_ack_wait_ms: u64,
    /// Bound on one engine round trip (a heartbeat, a queue operation).
    #[serde(default = "default_engine_timeout_ms")]
    engine_timeout_ms: u64,
    /// Copies of every stream and bucket the fleet creates, on a JetStream
    /// cluster of at least that many servers: 3 survives one server's loss.
    #[serde(default = "one")]
    replicas: usize,
}

fn one() -> usize {
    1
}

fn default_redis_timeout_ms() -> u64 {
    25
}
fn yes() -> bool {
    true
}
fn default_name() -> String {
    "fngate".into()
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_member_ttl_ms() -> u64 {
    5000
}
fn default_connect_timeout_ms() -> u64 {
    30_000
}
fn default_async_ack_wait_ms() -> u64 {
    30_000
}
fn default_engine_timeout_ms() -> u64 {
    2000
}

/// How fleet-wide limits are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitMode {
    /// Each gateway enforces its part (limit ÷ live gateways): no round trip.
    #[default]
    Split,
    /// Exact: one Redis round trip per call (GCRA), split as the fallback.
    Redis,
}

#[derive(Debug, Clone)]
pub enum NatsAuth {
    None,
    Token(Secret),
    UserPassword { user: String, password: Secret },
}

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub id: String,
    pub name: String,
    pub nats_urls: Vec<String>,
    pub auth: NatsAuth,
    pub rate_limits: RateLimitMode,
    /// With `RateLimitMode::Redis`.
    pub redis_url: Option<Secret>,
    pub redis_timeout: Duration,
    pub discover_workers: bool,
    pub heartbeat: Duration,
    /// A member not heard from this long is gone.
    pub member_ttl: Duration,
    pub connect_timeout: Duration,
    pub engine_timeout: Duration,
    pub async_ack_wait: Duration,
    pub replicas: usize,
}

/// NATS names (bucket, stream): letters, digits, `-` and `_`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn fleet(f: FleetSection, config_dir: &Path) -> Result<FleetConfig, ConfigError> {
    if !valid_name(&f.id) {
        return Err(invalid(
            "fleet.id",
            "1 to 64 letters, digits, '-' or '_' (unique in the fleet)",
        ));
    }
    if !valid_name(&f.name) {
        return Err(invalid("fleet.name", "1 to 64 letters, digits, '-' or '_'"));
    }
    if f.nats_urls.is_empty() {
        return Err(invalid("fleet.nats_urls", "at least one NATS server URL"));
    }
    for u in &f.nats_urls {
        if u.parse::<async_nats::ServerAddr>().is_err() {
            return Err(invalid(
                "fleet.nats_urls",
                format!("{u:?} is not a NATS URL (nats://host:port)"),
            ));
        }
    }
    let auth = nats_auth(&f, config_dir)?;
    times(&f)?;
    let redis_url = redis_url(&f, config_dir)?;
    if !(1..=5).contains(&f.replicas) {
        // JetStream's own bound.
        return Err(invalid("fleet.replicas", "must be 1..=5"));
    }
    Ok(FleetConfig {
        id: f.id,
        name: f.name,
        nats_urls: f.nats_urls,
        auth,
        rate_limits: f.rate_limits,
        redis_url,
        redis_timeout: Duration::from_millis(f.redis_timeout_ms),
        discover_workers: f.discover_workers,
        heartbeat: Duration::from_millis(f.heartbeat_ms),
        member_ttl: Duration::from_millis(f.member_ttl_ms),
        connect_timeout: Duration::from_millis(f.connect_timeout_ms),
        engine_timeout: Duration::from_millis(f.engine_timeout_ms),
        async_ack_wait: Duration::from_millis(f.async_ack_wait_ms),
        replicas: f.replicas,
    })
}

type SecretSource<'a> = (&'a Option<String>, &'a Option<PathBuf>, &'a Option<String>);

fn given((a, b, c): SecretSource<'_>) -> bool {
    a.is_some() || b.is_some() || c.is_some()
}

/// A user and password, a token, or nothing.
fn nats_auth(f: &FleetSection, config_dir: &Path) -> Result<NatsAuth, ConfigError> {
    let password = (
        &f.nats_password,
        &f.nats_password_file,
        &f.nats_password_env,
    );
    let token = (&f.nats_token, &f.nats_token_file, &f.nats_token_env);
    Ok(match (&f.nats_user, given(password), given(token)) {
        (None, false, false) => NatsAuth::None,
        (Some(user), true, false) => NatsAuth::UserPassword {
            user: user.clone(),
            password: secret(
                "fleet.nats_password",
                password,
                ["nats_password", "nats_password_file", "nats_password_env"],
                config_dir,
            )?,
        },
        (None, false, true) => NatsAuth::Token(secret(
            "fleet.nats_token",
            token,
            ["nats_token", "nats_token_file", "nats_token_env"],
            config_dir,
        )?),
        _ => {
            return Err(invalid(
                "fleet",
                "NATS credentials are either nats_user with a nats_password(_file/_env), or a nats_token(_file/_env)",
            ));
        }
    })
}

/// The heartbeat, the membership's time to live, the engine's timeouts.
fn times(f: &FleetSection) -> Result<(), ConfigError> {
    if !(100..=60_000).contains(&f.heartbeat_ms) {
        return Err(invalid("fleet.heartbeat_ms", "must be 100..=60000"));
    }
    if f.member_ttl_ms < 2 * f.heartbeat_ms || f.member_ttl_ms > 600_000 {
        return Err(invalid(
            "fleet.member_ttl_ms",
            "must be at least twice heartbeat_ms (a late heartbeat is not a death), at most 600000",
        ));
    }
    if !(100..=600_000).contains(&f.connect_timeout_ms) {
        return Err(invalid("fleet.connect_timeout_ms", "must be 100..=600000"));
    }
    if !(10..=60_000).contains(&f.engine_timeout_ms) {
        return Err(invalid("fleet.engine_timeout_ms", "must be 10..=60000"));
    }
    if !(1000..=3_600_000).contains(&f.async_ack_wait_ms) {
        return Err(invalid("fleet.async_ack_wait_ms", "must be 1000..=3600000"));
    }
    Ok(())
}

/// `redis` limits: Redis's URL (a secret: it may hold a password).
fn redis_url(f: &FleetSection, config_dir: &Path) -> Result<Option<Secret>, ConfigError> {
    let redis = (&f.redis_url, &f.redis_url_file, &f.redis_url_env);
    let redis_url = match f.rate_limits {
        RateLimitMode::Redis => Some(secret(
            "fleet.redis_url",
            redis,
            ["redis_url", "redis_url_file", "redis_url_env"],
            config_dir,
        )?),
        RateLimitMode::Split if given(redis) => {
            return Err(invalid(
                "fleet.redis_url",
                "only with rate_limits = \"redis\"",
            ));
        }
        RateLimitMode::Split => None,
    };
    if let Some(u) = &redis_url
        && redis::Client::open(String::from_utf8_lossy(u.expose()).as_ref()).is_err()
    {
        return Err(invalid(
            "fleet.redis_url",
            "not a Redis URL (redis://host:port)",
        ));
    }
    if !(1..=10_000).contains(&f.redis_timeout_ms) {
        return Err(invalid("fleet.redis_timeout_ms", "must be 1..=10000"));
    }
    Ok(redis_url)
}
