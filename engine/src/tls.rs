//! Optional TLS for the protocol port (rustls, ring provider): the server's
//! certificate and key, the client's trusted CA, loaded from PEM files into
//! ready rustls configurations.
//!
//! It owns no sockets and no protocol: the server and the client wrap their
//! TCP streams with what it builds (docs/PROTOCOL.md, "TLS"). TLS 1.2 and
//! 1.3, rustls' safe defaults; ALPN `lanes/1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;

/// The ALPN protocol name both sides offer. A server accepts a client that
/// offers no ALPN at all; a client that offers only other protocols (a
/// browser's `h2`, say) fails the handshake instead of speaking frames to
/// the wrong peer.
pub const ALPN_PROTOCOL: &[u8] = b"lanes/1";

/// Largest PEM file read: certificate chains and keys are a few KiB; a
/// path that names something huge by mistake is refused, not read.
const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// The server's certificate chain and private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// The private key (PEM PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {size} bytes, over the limit of {PEM_FILE_BYTES_MAX} for a PEM file", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{}: not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: no {what} in it (expected a PEM block such as {expected})", path.display())]
    Missing {
        path: PathBuf,
        what: &'static str,
        expected: &'static str,
    },
    #[error("{}: {reason}", path.display())]
    Rejected { path: PathBuf, reason: String },
    #[error("{name:?} is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName { name: String },
}

/// Builds the server's TLS configuration from its certificate and key
/// files; every failure names the file and why.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certificates = certificates(&files.cert)?;
    let key_pem = read_pem(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            path: files.key.clone(),
            what: "private key",
            expected: "PRIVATE KEY",
        },
        other => pem_error(&files.key, other),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|error| TlsError::Rejected {
            path: files.key.clone(),
            reason: format!(
                "the key does not suit the certificate in {}: {error}",
                files.cert.display()
            ),
        })?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    Ok(Arc::new(config))
}

/// What a client needs to speak TLS to the engine: the CAs it trusts and
/// the name the server's certificate must carry. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates of a PEM file (and no others) for a
    /// server whose certificate names `server_name`.
    pub fn from_ca_file(ca: &Path, server_name: &str) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates(ca)? {
            roots.add(certificate).map_err(|error| TlsError::Rejected {
                path: ca.to_path_buf(),
                reason: format!("not a usable CA certificate: {error}"),
            })?;
        }
        ClientTls::new(roots, server_name)
    }

    /// Trusts the CAs of `roots` for a server whose certificate names
    /// `server_name`.
    pub fn new(roots: rustls::RootCertStore, server_name: &str) -> Result<ClientTls, TlsError> {
        let server_name =
            ServerName::try_from(server_name.to_string()).map_err(|_| TlsError::ServerName {
                name: server_name.to_string(),
            })?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }
}

/// The one crypto provider: ring, so that no C library needs cmake.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(path, error))?;
    if certificates.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_path_buf(),
            what: "certificate",
            expected: "CERTIFICATE",
        });
    }
    Ok(certificates)
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > PEM_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    std::fs::read(path).map_err(read)
}

fn pem_error(path: &Path, error: rustls_pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}
