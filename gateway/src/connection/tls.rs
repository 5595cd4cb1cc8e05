//! TLS termination settings: rustls with the `ring` provider, TLS 1.3 and
//! 1.2 only (rustls implements nothing older), ALPN `h2` then `http/1.1`.
//!
//! Without a configured certificate, a self-signed one for `localhost`,
//! `127.0.0.1` and `::1` is generated with an explicit, short validity and
//! written as PEM where the operator (or `curl --cacert`) can find it.

use crate::config::TlsSource;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS file {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("cannot write the self-signed certificate to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn server_config(source: &TlsSource) -> Result<Arc<ServerConfig>, TlsError> {
    let (certs, key) = match source {
        TlsSource::Files { cert, key } => load_pem(cert, key)?,
        TlsSource::SelfSigned {
            write_to,
            validity_days,
        } => self_signed(write_to, *validity_days)?,
    };
    // Explicit provider: more than one may be linked in, and the implicit
    // default panics then.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn load_pem(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(cert, &e))?;
    if certs.is_empty() {
        return Err(err(cert, &"no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, &e))?;
    Ok((certs, key))
}

fn self_signed(
    write_to: &Path,
    validity_days: u32,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fngate self-signed");
    // rcgen's default validity (1975-4096) is flagged by TLS scanners.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(validity_days));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    std::fs::write(write_to, cert.pem()).map_err(|source| TlsError::Write {
        path: write_to.to_owned(),
        source,
    })?;
    tracing::info!(path = %write_to.display(), validity_days, "generated a self-signed TLS certificate; clients can trust it with --cacert");
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Pem {
        path: write_to.to_owned(),
        message: e.to_string(),
    })?;
    Ok((vec![cert.der().clone()], key))
}
