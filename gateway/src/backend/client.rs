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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub type Client =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What every backend's clients share: the TLS settings.
pub struct Outbound {
    tls: Arc<rustls::ClientConfig>,
}

/// Why the trust anchors for outbound HTTPS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: not a PEM certificate: {source}")]
    Pem {
        what: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what}: a certificate rustls refuses: {source}")]
    Certificate {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS settings: {0}")]
    Settings(#[from] rustls::Error),
}

/// Client TLS (1.3 and 1.2) trusting the system's anchors and the PEM
/// certificates of `extra` (named `what` in errors).
pub fn client_tls(extra: Option<(&str, &[u8])>) -> Result<rustls::ClientConfig, TrustError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "system trust anchors");
    }
    roots.add_parsable_certificates(found.certs);
    if let Some((what, pem)) = extra {
        use rustls_pki_types::pem::PemObject;
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let c = c.map_err(|source| TrustError::Pem {
                what: what.to_string(),
                source,
            })?;
            roots.add(c).map_err(|source| TrustError::Certificate {
                what: what.to_string(),
                source,
            })?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Reads a CA file's PEM certificates.
pub fn read_ca_file(path: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Outbound {
    /// Trust anchors: the system's, plus the PEM certificates in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<Outbound, TrustError> {
        let pem = ca_file.map(read_ca_file).transpose()?;
        let what = ca_file.map(|p| format!("gateway.backend_ca_file {}", p.display()));
        let extra = what.as_deref().zip(pem.as_deref());
        Ok(Outbound {
            tls: Arc::new(client_tls(extra)?),
        })
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
