//! The connection layer's own metric families, registered by it.

use super::linger::Lingered;
use super::proxy::Reject;
use crate::families::Families;
use prometheus::{IntCounter, IntGauge, Registry};

pub struct ConnectionMetrics {
    pub open_connections: IntGauge,
    pub tls_handshake_failures: IntCounter,
    /// Indexed like [`Reject::ALL`].
    pub proxy_rejections: Vec<IntCounter>,
    /// Indexed like [`Lingered::ALL`].
    pub lingering_closes: Vec<IntCounter>,
    pub http2_idle_closes: IntCounter,
    /// `[ok, error]`.
    pub tls_reloads: [IntCounter; 2],
    pub connections_refused: IntCounter,
}

impl ConnectionMetrics {
    pub fn new(registry: &Registry) -> Self {
        let f = Families(registry);
        let proxy = f.counters(
            "fngate_proxy_protocol_rejections_total",
            "Connections closed for a PROXY protocol problem, by reason.",
            &["reason"],
        );
        let lingering = f.counters(
            "fngate_lingering_closes_total",
            "Connections that ended with the client's bytes unread (a request head over max_header_bytes, say), read and dropped before the close so the client gets its answer, by how the drain ended (complete: the client closed; too_large, timeout: past the drain bounds).",
            &["result"],
        );
        let reloads = f.counters(
            "fngate_tls_certificate_reloads_total",
            "Reloads of the configured TLS certificate (SIGHUP or a file change), by result.",
            &["result"],
        );
        ConnectionMetrics {
            open_connections: f.gauge(
                "fngate_open_connections",
                "Client connections currently open.",
            ),
            tls_handshake_failures: f.counter(
                "fngate_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
            ),
            proxy_rejections: Reject::ALL
                .iter()
                .map(|r| proxy.with_label_values(&[r.as_str()]))
                .collect(),
            lingering_closes: Lingered::ALL
                .iter()
                .map(|l| lingering.with_label_values(&[l.as_str()]))
                .collect(),
            http2_idle_closes: f.counter(
                "fngate_http2_idle_closes_total",
                "HTTP/2 connections closed (GOAWAY) after http2_idle_timeout_ms with no stream in flight.",
            ),
            tls_reloads: ["ok", "error"].map(|r| reloads.with_label_values(&[r])),
            connections_refused: f.counter(
                "fngate_connections_refused_total",
                "Connections refused (reset at once) because max_connections were open.",
            ),
        }
    }
}
