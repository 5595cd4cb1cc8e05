//! The connection layer's own metric families, registered by it.

use super::linger::Lingered;
use super::proxy::Reject;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap();
            registry.register(Box::new(c.clone())).unwrap();
            c
        };
        let vec = |name: &str, help: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &["result"]).unwrap();
            registry.register(Box::new(v.clone())).unwrap();
            v
        };
        let open_connections = IntGauge::new(
            "fngate_open_connections",
            "Client connections currently open.",
        )
        .unwrap();
        registry
            .register(Box::new(open_connections.clone()))
            .unwrap();
        let proxy = IntCounterVec::new(
            Opts::new(
                "fngate_proxy_protocol_rejections_total",
                "Connections closed for a PROXY protocol problem, by reason.",
            ),
            &["reason"],
        )
        .unwrap();
        registry.register(Box::new(proxy.clone())).unwrap();
        let lingering = vec(
            "fngate_lingering_closes_total",
            "Connections that ended with the client's bytes unread (a request head over max_header_bytes, say), read and dropped before the close so the client gets its answer, by how the drain ended (complete: the client closed; too_large, timeout: past the drain bounds).",
        );
        let reloads = vec(
            "fngate_tls_certificate_reloads_total",
            "Reloads of the configured TLS certificate (SIGHUP or a file change), by result.",
        );
        ConnectionMetrics {
            open_connections,
            tls_handshake_failures: counter(
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
            http2_idle_closes: counter(
                "fngate_http2_idle_closes_total",
                "HTTP/2 connections closed (GOAWAY) after http2_idle_timeout_ms with no stream in flight.",
            ),
            tls_reloads: ["ok", "error"].map(|r| reloads.with_label_values(&[r])),
            connections_refused: counter(
                "fngate_connections_refused_total",
                "Connections refused (reset at once) because max_connections were open.",
            ),
        }
    }
}
