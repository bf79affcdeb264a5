//! TLS configuration of both roles: typed file paths that build rustls and
//! quinn configurations (ring provider, TLS 1.3 only, ALPN `fedcrime/1`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::error::{NetError, Result};
use super::transport::TransportSettings;
use super::verifier::CrlVerifier;
use super::ALPN;
use fedcrime_identity::{station_from_certificate, StationId};

/// File names of a PKI directory made by `fedcrime-certs` (kept in step with
/// `fedcrime_certs::layout`; a test checks they agree).
pub mod pki_layout {
    /// The agency CA certificate.
    pub const CA_CERT: &str = "ca.pem";
    /// The server certificate.
    pub const SERVER_CERT: &str = "server.pem";
    /// The server private key.
    pub const SERVER_KEY: &str = "server.key";
    /// The certificate revocation list.
    pub const CRL: &str = "crl.pem";
    /// The folder of station certificates and keys.
    pub const STATIONS_DIR: &str = "stations";
    /// The audit-log public key stations check tree heads with.
    pub const AUDIT_PUB: &str = "audit.pub";
    /// The audit-log signing key (the server's).
    pub const AUDIT_KEY: &str = "audit.key";

    /// A station's update-signing key, relative to the PKI folder.
    pub fn station_signing_key(name: &str) -> String {
        format!("{STATIONS_DIR}/{name}.sign.key")
    }
}

fn default_crl_check_ms() -> u64 {
    1000
}

/// The server's TLS material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The agency CA certificate (PEM); station certificates must chain to it.
    pub ca: PathBuf,
    /// The server certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The server private key (PEM).
    pub key: PathBuf,
    /// The CRL (PEM), re-read when it changes. `None` disables revocation checks.
    pub crl: Option<PathBuf>,
    /// How often, at most, the CRL file is checked for changes (milliseconds).
    #[serde(default = "default_crl_check_ms")]
    pub crl_check_interval_ms: u64,
}

impl ServerTls {
    /// The standard files of a `fedcrime-certs` PKI directory, CRL included.
    pub fn from_pki_dir(dir: &Path) -> Self {
        ServerTls {
            ca: dir.join(pki_layout::CA_CERT),
            cert: dir.join(pki_layout::SERVER_CERT),
            key: dir.join(pki_layout::SERVER_KEY),
            crl: Some(dir.join(pki_layout::CRL)),
            crl_check_interval_ms: default_crl_check_ms(),
        }
    }

    /// Builds the rustls server configuration and the CRL-reloading verifier
    /// it uses (keep it to call [`CrlVerifier::reload`]).
    pub(crate) fn rustls_config(&self) -> Result<(rustls::ServerConfig, Arc<CrlVerifier>)> {
        let provider = provider();
        let roots = Arc::new(load_roots(&self.ca)?);
        let verifier = Arc::new(CrlVerifier::new(
            roots,
            provider.clone(),
            self.crl.clone(),
            Duration::from_millis(self.crl_check_interval_ms),
        )?);
        let chain = load_certs(&self.cert, "server certificate")?;
        let key = load_key(&self.key)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| NetError::Tls {
                what: "server TLS configuration",
                source,
            })?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain, key)
            .map_err(|source| NetError::Tls {
                what: "server TLS configuration (certificate and key)",
                source,
            })?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        // No session resumption: every connection re-presents (and re-checks)
        // its certificate, so a revocation is never bypassed by a ticket.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok((config, verifier))
    }

    /// Builds the quinn server configuration with `transport` settings.
    pub(crate) fn quinn_config(
        &self,
        transport: &TransportSettings,
    ) -> Result<(quinn::ServerConfig, Arc<CrlVerifier>)> {
        let (tls, verifier) = self.rustls_config()?;
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| {
                NetError::Settings {
                    field: "server TLS",
                    reason: e.to_string(),
                }
            })?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport.to_quinn()?));
        // Stations do not roam between addresses mid-round.
        config.migration(false);
        Ok((config, verifier))
    }
}

/// A station's TLS material and the server it expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// The agency CA certificate (PEM); the server certificate must chain to it.
    pub ca: PathBuf,
    /// This station's certificate (PEM).
    pub cert: PathBuf,
    /// This station's private key (PEM).
    pub key: PathBuf,
    /// The name the server certificate must carry (DNS name or IP address).
    pub server_name: String,
}

impl ClientTls {
    /// The files of station `station` in a `fedcrime-certs` PKI directory.
    pub fn from_pki_dir(dir: &Path, station: &str, server_name: &str) -> Self {
        let stations = dir.join(pki_layout::STATIONS_DIR);
        ClientTls {
            ca: dir.join(pki_layout::CA_CERT),
            cert: stations.join(format!("{station}.pem")),
            key: stations.join(format!("{station}.key")),
            server_name: server_name.to_owned(),
        }
    }

    /// The station identity in this station's own certificate.
    pub fn station(&self) -> Result<StationId> {
        let chain = load_certs(&self.cert, "station certificate")?;
        let leaf = chain.first().ok_or_else(|| NetError::Pem {
            what: "station certificate",
            path: self.cert.clone(),
            reason: "no certificate".to_owned(),
        })?;
        station_from_certificate(leaf).map_err(|e| NetError::Pem {
            what: "station certificate",
            path: self.cert.clone(),
            reason: e.to_string(),
        })
    }

    /// Builds the rustls client configuration: verify the server against the
    /// CA (the server name is checked per connection), present our certificate.
    pub(crate) fn rustls_config(&self) -> Result<rustls::ClientConfig> {
        let roots = load_roots(&self.ca)?;
        let chain = load_certs(&self.cert, "station certificate")?;
        let key = load_key(&self.key)?;
        let builder = client_builder(roots)?;
        let mut config = builder
            .with_client_auth_cert(chain, key)
            .map_err(|source| NetError::Tls {
                what: "client TLS configuration (certificate and key)",
                source,
            })?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// Builds the quinn client configuration with `transport` settings.
    pub(crate) fn quinn_config(
        &self,
        transport: &TransportSettings,
    ) -> Result<quinn::ClientConfig> {
        quinn_client_config(self.rustls_config()?, transport)
    }
}

/// The crypto provider of every fedcrime endpoint: ring, TLS 1.3 suites
/// only, AES-128-GCM first. Both ends use this order, so connections between
/// fedcrime endpoints use AES-128-GCM: 10 AES rounds against AES-256's 14,
/// which shows in bulk transfers (128-bit keys meet the usual requirements
/// for criminal-justice data in transit), while AES-256-GCM and
/// ChaCha20-Poly1305 remain available to peers that prefer them.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// A TLS 1.3 client builder that verifies servers against `roots`.
pub(crate) fn client_builder(
    roots: RootCertStore,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| NetError::Tls {
            what: "client TLS configuration",
            source,
        })?
        .with_root_certificates(roots))
}

/// Wraps a rustls client configuration for quinn.
pub(crate) fn quinn_client_config(
    tls: rustls::ClientConfig,
    transport: &TransportSettings,
) -> Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| {
        NetError::Settings {
            field: "client TLS",
            reason: e.to_string(),
        }
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport.to_quinn()?));
    Ok(config)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| NetError::Io {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file (at least one).
pub(crate) fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| NetError::Pem {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(NetError::Pem {
            what,
            path: path.to_owned(),
            reason: "no CERTIFICATE block found".to_owned(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, SEC1 or PKCS#1). Warns when the
/// file is readable by group or others (`fedcrime-certs` writes keys 0600).
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = read(path, "private key")?;
    #[cfg(unix)]
    if let Ok(meta) = fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(key = %path.display(), mode = format!("{mode:o}"),
                "private key is readable by other users; chmod 600 it");
        }
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| NetError::Pem {
        what: "private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A root store holding the CA certificate(s) of a PEM file.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "CA certificate")? {
        roots.add(cert).map_err(|source| NetError::Tls {
            what: "CA trust store",
            source,
        })?;
    }
    Ok(roots)
}
