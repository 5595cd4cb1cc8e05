//! The outbound HTTPS client for cloud backends: hyper-util's pooled client
//! over hyper-rustls.
//!
//! - TLS 1.2/1.3, verified against the system's trust anchors plus
//!   `gateway.backend_ca_file`; ALPN offers `h2` and `http/1.1`, so a
//!   backend that speaks HTTP/2 gets one multiplexed connection.
//! - Names are resolved by `getaddrinfo` on tokio's blocking pool, never
//!   on a runtime thread.
//! - Connections are kept alive and pooled per host, per backend and per
//!   runtime shard ([`crate::shards`]): a connection's task runs on the
//!   shard that opened it, and no pool lock is shared across shards.
//!   `backend_max_idle_per_host` bounds the idle ones.
//! - A pooled connection the backend closed before the request went out is
//!   retried on a new one by hyper-util (nothing was sent); nothing else is
//!   retried here.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub type Client =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What every backend's clients share: the TLS settings.
pub struct Outbound {
    tls: Arc<rustls::ClientConfig>,
}

impl Outbound {
    /// Trust anchors: the system's, plus the PEM certificates in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<Outbound, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "system trust anchors for backends");
        }
        roots.add_parsable_certificates(found.certs);
        if let Some(path) = ca_file {
            use rustls_pki_types::pem::PemObject;
            let what = |e: &dyn std::fmt::Display| {
                format!("gateway.backend_ca_file {}: {e}", path.display())
            };
            let pem = std::fs::read(path).map_err(|e| what(&e))?;
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                roots.add(c.map_err(|e| what(&e))?).map_err(|e| what(&e))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Outbound { tls: Arc::new(tls) })
    }

    /// A pooled client with this connect timeout.
    pub fn client(&self, connect_timeout: Duration, max_idle_per_host: usize) -> Client {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.tls).clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_idle_per_host)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .build(https)
    }
}
