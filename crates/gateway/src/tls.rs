//! Server TLS (rustls) for the gateway's gRPC and HTTP listeners: certificate and key from PEM
//! files, optional client-certificate verification against a CA bundle (mTLS), and reload on
//! change: the files' modification times are checked at most once a second as connections
//! arrive, so a renewed certificate serves new connections without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// The names of the client certificate a connection presented (verified against
/// `gateway.tls_client_ca` during the handshake): its subject's common names, then its DNS and
/// URI subject alternative names. None without a client certificate.
pub(crate) fn client_names(connection: &rustls::ServerConnection) -> Arc<[String]> {
    use x509_parser::extensions::GeneralName;
    let Some(cert) = connection.peer_certificates().and_then(<[_]>::first) else {
        return Arc::from([]);
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Arc::from([]);
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push((*n).to_owned()),
                _ => {}
            }
        }
    }
    names.into()
}

/// Where the certificate, key and optional client CA bundle are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle that client certificates must chain to (mTLS); none: no client certificate.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up from the files.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    /// The file (or files) at fault.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A TLS acceptor that follows its files. Cheap to clone.
#[derive(Clone)]
pub struct ReloadingTls {
    inner: Arc<Mutex<State>>,
    files: Arc<TlsFiles>,
    alpn: Vec<Vec<u8>>,
}

struct State {
    acceptor: TlsAcceptor,
    stamps: Vec<Option<SystemTime>>,
    checked: Instant,
}

/// How often the files' modification times are looked at, at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl ReloadingTls {
    /// Loads the files; `alpn` lists the protocols offered (`h2` for gRPC).
    ///
    /// # Errors
    /// A file that cannot be read or parsed, or a key that does not match.
    pub fn new(files: TlsFiles, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&files, &alpn)?));
        Ok(Self {
            inner: Arc::new(Mutex::new(State {
                acceptor,
                stamps: stamps(&files),
                checked: Instant::now(),
            })),
            files: Arc::new(files),
            alpn,
        })
    }

    /// The acceptor for a new connection: reloaded first if a file changed (a file that fails
    /// to load keeps the previous certificate, with a warning).
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let now = stamps(&self.files);
            if now != state.stamps {
                state.stamps = now;
                match server_config(&self.files, &self.alpn) {
                    Ok(config) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        state.acceptor = TlsAcceptor::from(Arc::new(config));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but cannot be loaded; keeping the previous certificate");
                    }
                }
            }
        }
        state.acceptor.clone()
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    let mut paths: Vec<&Path> = vec![&files.cert, &files.key];
    if let Some(ca) = &files.client_ca {
        paths.push(ca);
    }
    paths
        .into_iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn server_config(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let fail = |path: &Path, message: String| TlsError {
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(Iterator::collect)
        .map_err(|e| fail(&files.cert, format!("cannot read the certificate: {e}")))?;
    if certs.is_empty() {
        return Err(fail(&files.cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| fail(&files.key, format!("cannot read the private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| fail(ca, format!("cannot read the client CA bundle: {e}")))?
            {
                let cert =
                    cert.map_err(|e| fail(ca, format!("cannot read the client CA bundle: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| fail(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| fail(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        fail(
            &files.key,
            format!("the key does not fit the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}
