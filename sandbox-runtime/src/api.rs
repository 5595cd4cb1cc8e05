//! The wire contract between a gateway and a sandbox worker.
//!
//! Plain HTTP/1.1 with JSON bodies, so a worker can run on another host and be
//! driven by any gateway (or by `curl` when debugging). The gateway depends on
//! these types directly; nothing else in the worker is public API.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/capacity` | | [`Capacity`] |
//! | GET | `/v1/instances` | | `[InstanceInfo]` |
//! | POST | `/v1/instances` | [`CreateInstance`] | 201 [`InstanceInfo`], or [`ApiError`] |
//! | GET | `/v1/instances/{id}[?wait_exit_ms=N]` | | [`InstanceInfo`] (after up to N ms waiting for the process to exit), 404 |
//! | DELETE | `/v1/instances/{id}` | | 200 [`InstanceInfo`] (with its exit), 404 |
//! | GET | `/v1/instances/{id}/log[?from=N]` | | 200: the instance's output since offset N (its last [`LOG_MAX_BYTES`] at most; nothing without `from`), the offset reached in [`LOG_END_HEADER`]; 404 |
//! | GET | `/healthz`, `/metrics` | | text |

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The offset an instance's output has reached (bytes written to stdout and
/// stderr since it started), on answers to `GET /v1/instances/{id}/log`.
pub const LOG_END_HEADER: &str = "x-fngate-log-end";
/// The most of an instance's recent output a worker keeps and returns.
pub const LOG_MAX_BYTES: usize = 64 * 1024;

/// Asks a worker to start one function instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    /// Chosen by the gateway so that it can log and route by it before the
    /// process exists; unique across the gateway's lifetime.
    pub instance_id: String,
    pub function: String,
    /// argv; `command[0]` is looked up in `PATH` when it has no `/`.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub memory_mb: u32,
    /// How long the process may take to accept on its port.
    pub start_timeout_ms: u64,
    /// Where the instance may send traffic (enforced by isolated workers;
    /// a plain-process worker refuses anything but the default).
    #[serde(default)]
    pub egress: Egress,
    /// Host directories (absolute) an isolated instance may write, seen at
    /// the same paths; a plain process can write them anyway.
    #[serde(default)]
    pub writable_paths: Vec<String>,
    /// Host paths (absolute) an isolated instance may read, at the same
    /// paths, beyond its system directories and its command's code.
    #[serde(default)]
    pub readable_paths: Vec<String>,
    /// The size of an isolated instance's writable area (its root tmpfs:
    /// `/tmp` and whatever it writes outside `writable_paths`), in MiB.
    #[serde(default = "default_disk_mb")]
    pub disk_mb: u32,
    /// The fleet id of the gateway that owns it: a worker in a fleet
    /// releases it once that gateway's heartbeat has expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Function Compute's temporary disk of a standard instance, 512 MB.
pub const DEFAULT_DISK_MB: u32 = 512;

fn default_disk_mb() -> u32 {
    DEFAULT_DISK_MB
}

/// An instance's outbound network policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    #[serde(default)]
    pub mode: EgressMode,
    /// The function's VPC: its traffic there is counted under this id.
    #[serde(default)]
    pub vpc_id: Option<String>,
    /// The CIDRs of the function's VPC.
    #[serde(default)]
    pub vpc_cidrs: Vec<String>,
    /// CIDRs never reachable (other VPCs').
    #[serde(default)]
    pub refused_cidrs: Vec<String>,
}

/// Which destinations an instance may reach: FC's "allow the default NIC to
/// access the internet" (`internet`), VPC access only (`vpc`), both, or none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    #[default]
    Internet,
    Vpc,
    Both,
    None,
}

impl EgressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Internet => "internet",
            EgressMode::Vpc => "vpc",
            EgressMode::Both => "both",
            EgressMode::None => "none",
        }
    }
}

/// Bytes an instance exchanged with one network (`internet` or a VPC id)
/// in one direction (`out`: sent by the instance, `in`: received), IP
/// headers included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressBytes {
    pub network: String,
    pub direction: String,
    pub bytes: u64,
}

/// How a worker enforces an instance's memory size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryLimit {
    CgroupV1,
    CgroupV2,
    /// `RLIMIT_AS`: a ceiling on address space, not resident memory.
    Rlimit,
    None,
}

impl MemoryLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryLimit::CgroupV1 => "cgroup-v1",
            MemoryLimit::CgroupV2 => "cgroup-v2",
            MemoryLimit::Rlimit => "rlimit",
            MemoryLimit::None => "none",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capacity {
    pub memory_mb_total: u64,
    pub memory_mb_used: u64,
    pub instances: usize,
    pub memory_limit: MemoryLimit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Starting,
    Running,
    Exited,
}

/// Why an instance process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited by itself.
    pub code: Option<i32>,
    /// Signal number, when it was killed.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it inside its memory cgroup.
    pub oom_killed: bool,
    /// Released on request (as opposed to exiting on its own).
    pub released: bool,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.oom_killed {
            return f.write_str("killed for exceeding its memory limit (out of memory)");
        }
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(sig)) => write!(f, "killed by signal {sig}"),
            (None, None) => f.write_str("ended"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub function: String,
    /// `host:port` the instance serves its invocation API on. Gateways call
    /// it directly (see ARCHITECTURE.md, "Why gateways call instances directly").
    pub address: String,
    pub memory_mb: u32,
    pub memory_limit: MemoryLimit,
    pub state: InstanceState,
    pub pid: Option<u32>,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    pub exit: Option<ExitInfo>,
    /// The last lines the instance wrote to stderr (bounded).
    pub stderr_tail: String,
    /// What an isolated instance has sent and received outside, so far (or
    /// in its lifetime, once released); empty for plain processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressBytes>,
    /// The uid an isolated instance runs as (none: a plain process, as the
    /// worker's own user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// Machine-readable error codes of the worker API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiErrorCode {
    /// Not enough free memory on this worker (HTTP 429).
    InsufficientMemory,
    /// The process could not be spawned or did not accept in time (HTTP 422).
    StartFailed,
    /// Duplicate instance id or malformed request (HTTP 400).
    BadRequest,
    NotFound,
    ShuttingDown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ApiErrorCode,
    pub message: String,
    #[serde(default)]
    pub stderr_tail: String,
}
