//! TLS termination settings: rustls with the `ring` provider, TLS 1.3 and
//! 1.2 only (rustls implements nothing older), ALPN `h2` then `http/1.1`.
//!
//! Without a configured certificate, a self-signed one for `localhost`,
//! `127.0.0.1` and `::1` is generated with an explicit, short validity and
//! written as PEM where the operator (or `curl --cacert`) can find it.
//!
//! Configured certificates rotate without a restart: on SIGHUP, or when
//! either file's modification time changes (checked every few seconds), the
//! pair is read again, checked (the key must match the certificate), and
//! swapped in for the handshakes that follow ([`Certificates`]; lock-free,
//! `arc-swap`). A pair that does not load leaves the current one in place.
//! Connections already open keep the certificate they started with.

use crate::config::TlsSource;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

/// The certificate handshakes present, swapped in place on reload.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The files of a configured pair (none for a self-signed certificate).
    files: Option<(PathBuf, PathBuf)>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificates {
    fn certified(
        provider: &rustls::crypto::CryptoProvider,
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<CertifiedKey, TlsError> {
        let signer = provider.key_provider.load_private_key(key)?;
        let ck = CertifiedKey::new(certs, signer);
        ck.keys_match()?;
        Ok(ck)
    }

    /// Reads the configured pair again and swaps it in; on error the
    /// current pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some((cert, key)) = &self.files else {
            return Ok(());
        };
        let (certs, key) = load_pem(cert, key)?;
        let ck = Self::certified(&self.provider, certs, key)?;
        self.current.store(Arc::new(ck));
        Ok(())
    }

    /// The configured files' modification times (to notice a change).
    fn stamp(&self) -> Option<(SystemTime, SystemTime)> {
        let (cert, key) = self.files.as_ref()?;
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((m(cert)?, m(key)?))
    }

    /// Reloads on SIGHUP and when the files change, until `stop`; counts
    /// each reload in `reloads` (`[ok, error]`).
    pub async fn watch(
        self: Arc<Self>,
        reloads: [prometheus::IntCounter; 2],
        stop: tokio_util::sync::CancellationToken,
    ) {
        // Installed even with nothing to reload: SIGHUP's default is to exit.
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: certificates reload on file changes only");
                return;
            }
        };
        let mut seen = self.off_runtime(Self::stamp).await.ok().flatten();
        loop {
            let signalled = tokio::select! {
                _ = stop.cancelled() => return,
                _ = hup.recv() => true,
                _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            };
            if self.files.is_none() {
                if signalled {
                    tracing::info!("SIGHUP: the certificate is self-signed; nothing to reload");
                }
                continue;
            }
            let now = self.off_runtime(Self::stamp).await.ok().flatten();
            if !signalled && (now == seen || now.is_none()) {
                continue;
            }
            seen = now;
            let why = if signalled {
                "SIGHUP"
            } else {
                "the files changed"
            };
            let failed = match self.off_runtime(Self::reload).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            match failed {
                None => {
                    reloads[0].inc();
                    tracing::info!(reason = why, "TLS certificate reloaded");
                }
                Some(error) => {
                    reloads[1].inc();
                    tracing::error!(reason = why, %error, "TLS certificate reload failed; keeping the current one");
                }
            }
        }
    }

    /// Runs `f` (file reads) on the blocking pool, off the runtime's threads.
    async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        f: fn(&Self) -> T,
    ) -> Result<T, tokio::task::JoinError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this)).await
    }
}

/// The server's TLS settings, and the certificates it presents.
pub fn server_config(
    source: &TlsSource,
) -> Result<(Arc<ServerConfig>, Arc<Certificates>), TlsError> {
    let (certs, key, files) = match source {
        TlsSource::Files { cert, key } => {
            let (c, k) = load_pem(cert, key)?;
            (c, k, Some((cert.clone(), key.clone())))
        }
        TlsSource::SelfSigned {
            write_to,
            validity_days,
        } => {
            let (c, k) = self_signed(write_to, *validity_days)?;
            (c, k, None)
        }
    };
    // Explicit provider: more than one may be linked in, and the implicit
    // default panics then.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificates = Arc::new(Certificates {
        current: ArcSwap::from_pointee(Certificates::certified(&provider, certs, key)?),
        provider: provider.clone(),
        files,
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order (AEAD suites, strongest first), not the client's.
    cfg.ignore_client_order = true;
    Ok((Arc::new(cfg), certificates))
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
