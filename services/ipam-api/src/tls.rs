//! HTTPS served by the API itself, with a certificate that can be replaced while it runs.
//!
//! rustls asks a [`ResolvesServerCert`] for the certificate at each handshake, so the API hands it
//! a resolver holding the current certified key, and a watcher thread looks at the files' mtimes
//! every [`RELOAD_POLL`] and swaps in the new pair when they change. Open connections keep the
//! certificate they were made with; new ones get the new one; no restart. A pair that does not
//! load (a half-written file, a key that does not match) is logged and the old pair stays, so a
//! renewal in progress never takes the API down. At start, though, a bad pair is an error.
//!
//! The crypto is rustls with ring, the stack the CLI's client (ureq) already uses.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the watcher looks at the files.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// The PEM files the API serves HTTPS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1), unencrypted.
    pub key: PathBuf,
}

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM block of the kind needed.
    #[error("reading the API's TLS {what} {path}: {message}")]
    File { what: &'static str, path: PathBuf, message: String },
    /// The key is of a kind rustls cannot sign with, or does not belong to the certificate.
    #[error("the API's TLS key {key} does not fit certificate {cert}: {message}")]
    Key { cert: PathBuf, key: PathBuf, message: String },
    /// rustls refused the server configuration.
    #[error("the API's TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads and checks the pair: the chain, the key, and that the key is the certificate's.
pub fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_error = |what, path: &Path, message: String| TlsError::File { what, path: path.to_owned(), message };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|error| file_error("certificate", &files.cert, error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error("certificate", &files.cert, error.to_string()))?;
    if chain.is_empty() {
        return Err(file_error("certificate", &files.cert, "no CERTIFICATE block".to_owned()));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|error| file_error("key", &files.key, error.to_string()))?;
    let key_error = |message: String| TlsError::Key { cert: files.cert.clone(), key: files.key.clone(), message };
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|error| key_error(error.to_string()))?;
    Ok(Arc::new(certified))
}

/// Hands rustls the current pair at each handshake.
#[derive(Debug)]
pub struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Resolver {
    /// A resolver serving `key` until [`Resolver::replace`].
    pub fn new(key: Arc<CertifiedKey>) -> Resolver {
        Resolver { current: RwLock::new(key) }
    }

    /// New handshakes get `key` from now on.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = key;
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner)))
    }
}

/// A rustls server configuration answering with `resolver`'s pair, HTTP/1.1 only.
pub fn server_config(resolver: Arc<Resolver>) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn modified(files: &TlsFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let mtime = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (mtime(&files.cert), mtime(&files.key))
}

/// Watches the files until `stop` is set, replacing `resolver`'s pair when either file's mtime
/// changes and the pair loads. Checks `stop` often, so it ends promptly.
pub fn watch(files: TlsFiles, resolver: Arc<Resolver>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("ipam-api-tls-reload".to_owned()).spawn(move || {
        let mut seen = modified(&files);
        let mut waited = Duration::ZERO;
        let step = Duration::from_millis(100);
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(step);
            waited += step;
            if waited < RELOAD_POLL {
                continue;
            }
            waited = Duration::ZERO;
            let now = modified(&files);
            if now == seen {
                continue;
            }
            // A half-written pair fails here once; finishing it changes an mtime again.
            seen = now;
            match load(&files) {
                Ok(key) => {
                    resolver.replace(key);
                    tracing::info!(cert = %files.cert.display(), "API certificate reloaded");
                }
                Err(error) => tracing::warn!("API certificate not reloaded, the old one stays: {error}"),
            }
        }
    })
}
