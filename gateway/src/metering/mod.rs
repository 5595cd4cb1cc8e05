//! Metering: one [`UsageRecord`] per invocation, refused ones included, and
//! the counters that sum them.
//!
//! What counts (the same on HTTP/1.1 and HTTP/2):
//! - `bytes_in`: the request **body** bytes. For a request that was read, its
//!   payload; for one refused from its head (404, 403, 429, 400 over the
//!   limit), its declared `Content-Length` (those bytes are the caller's
//!   traffic whether or not the gateway reads them; a refused chunked body
//!   counts 0).
//! - `bytes_out`: the response **body** bytes sent (the function's answer or
//!   the error JSON). Headers and TLS framing are not counted.
//! - `billed_gb_s`: `memory_mb / 1024 × duration`, with the duration rounded up
//!   to a whole millisecond, for invocations that reached an instance; 0 otherwise.
//! - `network`: `internet`, `vpc` (with `vpc_id`), or `internal`.
//! - `api`: the door the call came through (`fc`, `lambda`, `azure`), and
//!   `access_key_id` when its signature was verified.
//! - `backend_legs`: for a function with cloud backends, every attempt on
//!   one ([`Leg`]): the backend, its kind, the network it
//!   sits in (`internet`, or `vpc` with `vpc_id`), the payload bytes sent to
//!   it (0 when it could not be reached), the answer's body bytes, the
//!   attempt's duration and outcome. The caller's leg is the record itself.
//!
//! Records go to the [`usage_log`] off the hot path.

pub mod summary;
pub mod usage_log;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageRecord {
    pub request_id: String,
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualifier: Option<String>,
    /// Records written before there were several doors came through FC's.
    #[serde(default = "fc")]
    pub api: String,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub memory_mb: u32,
    pub billed_gb_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub cold_start: bool,
    pub status: u16,
    pub outcome: String,
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_legs: Vec<Leg>,
}

/// One attempt on a backend, as the usage record keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Leg {
    pub backend: String,
    pub kind: String,
    /// Where the backend sits: `internet`, or `vpc` with `vpc_id`.
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// Payload bytes sent to the backend.
    pub bytes_out: u64,
    /// Answer body bytes received from it.
    pub bytes_in: u64,
    pub duration_ms: f64,
    pub outcome: String,
}

fn fc() -> String {
    "fc".into()
}

/// The marker of an [`InstanceRecord`]'s line (invocation records have no
/// `record` field, as before there were instance records).
pub const INSTANCE_RECORD: &str = "instance";

/// An instance's lifetime, written to the usage log when its worker has
/// released it: what it sent and received outside (isolated instances; the
/// kernel's counters, by destination network), how long it lived and why it
/// ended. Invocation records stay per invocation; egress is an instance's,
/// not a call's (connections outlive calls).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceRecord {
    /// Always [`INSTANCE_RECORD`].
    pub record: String,
    pub function: String,
    pub instance_id: String,
    pub worker: String,
    pub memory_mb: u32,
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    /// Why the gateway released it (`idle`, `shutdown`, `exited`, ...).
    pub reason: String,
    /// Bytes by network (`internet` or a VPC id) and direction (`out`: sent
    /// by the instance, `in`: received); empty for a plain process.
    pub egress: Vec<sandbox_runtime::api::EgressBytes>,
}

/// GB-seconds billed for `duration` at `memory_mb` (duration rounded up to 1 ms).
pub fn billed_gb_s(memory_mb: u32, duration: std::time::Duration) -> f64 {
    let ms = duration.as_nanos().div_ceil(1_000_000) as f64;
    f64::from(memory_mb) / 1024.0 * ms / 1000.0
}

pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn billing_rounds_up_to_the_millisecond() {
        assert_eq!(billed_gb_s(1024, Duration::from_millis(1000)), 1.0);
        assert_eq!(billed_gb_s(512, Duration::from_micros(1)), 0.5 * 0.001);
        assert_eq!(billed_gb_s(128, Duration::from_micros(1500)), 0.125 * 0.002);
        assert_eq!(billed_gb_s(128, Duration::ZERO), 0.0);
    }
}
