//! `[gateway]`, less what belongs to where callers stand (listeners of
//! private endpoints and PROXY, trusted proxies, default access rules:
//! [`super::ingress`]) and to credentials ([`super::auth`]).

use super::{
    AsyncLimits, BackendSettings, ConfigError, GatewayConfig, GatewaySection, GatewayThrottle,
    Limits, Resolve, TlsSource, addr, invalid, ms, positive, quota,
};
use std::time::Duration;

pub(super) fn gateway(g: &GatewaySection, at: &Resolve) -> Result<GatewayConfig, ConfigError> {
    let limits = limits(g)?;
    Ok(GatewayConfig {
        listen: addr("gateway.listen", &g.listen)?,
        admin_listen: addr("gateway.admin_listen", &g.admin_listen)?,
        tls: tls(g, at)?,
        asynchronous: async_limits(g, &limits, at)?,
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
        throttle: throttle(g)?,
        backends: backends(g, at)?,
    })
}

fn tls(g: &GatewaySection, at: &Resolve) -> Result<TlsSource, ConfigError> {
    if !(1..=397).contains(&g.self_signed_validity_days) {
        return Err(invalid(
            "gateway.self_signed_validity_days",
            "must be 1..=397 (browsers reject longer leaf validity)",
        ));
    }
    match (&g.tls_cert, &g.tls_key) {
        (Some(cert), Some(key)) => Ok(TlsSource::Files {
            cert: at.path(cert),
            key: at.path(key),
        }),
        (None, None) => Ok(TlsSource::SelfSigned {
            write_to: match &g.self_signed_cert_path {
                Some(p) => at.path(p),
                None => std::env::temp_dir()
                    .join(format!("fngate-self-signed-{}.pem", std::process::id())),
            },
            validity_days: g.self_signed_validity_days,
        }),
        (Some(_), None) => Err(invalid("gateway.tls_key", "required with tls_cert")),
        (None, Some(_)) => Err(invalid("gateway.tls_cert", "required with tls_key")),
    }
}

fn limits(g: &GatewaySection) -> Result<Limits, ConfigError> {
    let limits = Limits {
        max_body_bytes: positive("gateway.max_body_bytes", g.max_body_bytes)?,
        max_response_bytes: positive("gateway.max_response_bytes", g.max_response_bytes)?,
        max_header_bytes: positive("gateway.max_header_bytes", g.max_header_bytes.into())? as u32,
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
    Ok(limits)
}

fn async_limits(
    g: &GatewaySection,
    limits: &Limits,
    at: &Resolve,
) -> Result<AsyncLimits, ConfigError> {
    Ok(AsyncLimits {
        max_queued: positive("gateway.max_async_queued", g.max_async_queued.into())? as u32,
        max_body_bytes: positive("gateway.max_async_body_bytes", g.max_async_body_bytes)?
            .min(limits.max_body_bytes),
        retry_base: ms(positive(
            "gateway.async_retry_base_ms",
            g.async_retry_base_ms,
        )?),
        max_queued_bytes: positive("gateway.max_async_queued_bytes", g.max_async_queued_bytes)?,
        store: g.async_store,
        store_path: at.path(&g.async_store_path),
        retention: Duration::from_secs(g.async_retention_s),
        max_retained: g.max_async_retained,
        destination_max_age: Duration::from_secs(positive(
            "gateway.async_destination_max_age_s",
            g.async_destination_max_age_s,
        )?),
        destination_ca_file: g.async_destination_ca_file.as_deref().map(|p| at.path(p)),
    })
}

fn throttle(g: &GatewaySection) -> Result<GatewayThrottle, ConfigError> {
    Ok(GatewayThrottle {
        caller_rate: quota("gateway.caller_rate_limit", g.caller_rate_limit)?,
        caller_key: g.caller_key,
        max_instances: positive("gateway.max_instances", g.max_instances.into())? as u32,
        max_instance_starts_per_minute: positive(
            "gateway.max_instance_starts_per_minute",
            g.max_instance_starts_per_minute.into(),
        )? as u32,
    })
}

fn backends(g: &GatewaySection, at: &Resolve) -> Result<BackendSettings, ConfigError> {
    Ok(BackendSettings {
        ca_file: g.backend_ca_file.as_deref().map(|p| at.path(p)),
        eject_after_failures: positive(
            "gateway.backend_eject_after_failures",
            g.backend_eject_after_failures.into(),
        )? as u32,
        eject_for: ms(positive("gateway.backend_eject_ms", g.backend_eject_ms)?),
        max_idle_per_host: g.backend_max_idle_per_host as usize,
    })
}
