//! A client-certificate verifier whose revocation list is reloaded from disk
//! without restarting the server.
//!
//! [`CrlVerifier`] wraps rustls' `WebPkiClientVerifier` (chain to the agency
//! CA, validity period, client-auth usage, CRL). Before verifying a client it
//! checks, at most once per `check_interval`, whether the CRL file changed
//! (modification time, size or inode, so an atomic rename is always seen); if
//! so it builds a fresh inner verifier from the new CRL and swaps it in. A CRL
//! that fails to load keeps the previous one in force and is logged: revocations
//! already known are never dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};

use super::error::{explain, NetError, RefusedBy, Result};
use super::identity::peer_chain;

/// Identifies a version of the CRL file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        })
    }
}

#[derive(Debug)]
struct Watch {
    last_check: Instant,
    stamp: Option<FileStamp>,
}

/// Verifies station certificates against the agency CA and a CRL file that
/// is re-read when it changes (see the module docs).
#[derive(Debug)]
pub struct CrlVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    crl_path: Option<PathBuf>,
    check_interval: Duration,
    root_hints: Vec<DistinguishedName>,
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
    watch: Mutex<Watch>,
    loads: AtomicU64,
}

impl CrlVerifier {
    /// Builds the verifier; the CRL file (if given) must load now.
    pub fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        crl_path: Option<PathBuf>,
        check_interval: Duration,
    ) -> Result<Self> {
        let root_hints = roots.subjects();
        let stamp = match &crl_path {
            Some(p) => Some(FileStamp::of(p).map_err(|source| NetError::Io {
                what: "CRL",
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        let inner = build_inner(&roots, &provider, crl_path.as_deref())?;
        Ok(CrlVerifier {
            roots,
            provider,
            crl_path,
            check_interval,
            root_hints,
            inner: RwLock::new(inner),
            watch: Mutex::new(Watch {
                last_check: Instant::now(),
                stamp,
            }),
            loads: AtomicU64::new(1),
        })
    }

    /// The CRL file watched, if any.
    pub fn crl_path(&self) -> Option<&Path> {
        self.crl_path.as_deref()
    }

    /// How many times a CRL was loaded (1 after construction).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Re-reads the CRL file now, whether or not it changed. On error the
    /// previous CRL stays in force.
    pub fn reload(&self) -> Result<()> {
        let Some(path) = &self.crl_path else {
            return Ok(());
        };
        let stamp = FileStamp::of(path).map_err(|source| NetError::Io {
            what: "CRL",
            path: path.clone(),
            source,
        })?;
        let inner = build_inner(&self.roots, &self.provider, Some(path))?;
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = inner;
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        watch.stamp = Some(stamp);
        watch.last_check = Instant::now();
        self.loads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(crl = %path.display(), "certificate revocation list reloaded");
        Ok(())
    }

    /// Re-reads the CRL when the check interval has passed and the file
    /// changed (as before every handshake); true when a new list was loaded.
    /// A server calls it on a timer, and then [`CrlVerifier::recheck`]s the
    /// stations already connected.
    pub fn refresh(&self) -> bool {
        let before = self.loads();
        self.maybe_reload();
        self.loads() != before
    }

    /// Verifies the certificate `connection`'s peer presented again, against
    /// the revocation list in force now and the current time: a station
    /// revoked (or whose certificate expired) after it connected fails here.
    pub fn recheck(&self, connection: &quinn::Connection) -> Result<()> {
        let peer = connection.remote_address();
        let chain = peer_chain(connection)?;
        let (leaf, intermediates) = chain.split_first().ok_or_else(|| NetError::Identity {
            peer,
            reason: "the peer presented an empty certificate chain".to_owned(),
        })?;
        self.current()
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| NetError::Refused {
                peer,
                by: RefusedBy::Local,
                reason: explain(&e.to_string()),
            })
    }

    /// Reloads the CRL if the check interval passed and the file changed.
    fn maybe_reload(&self) {
        let Some(path) = &self.crl_path else { return };
        {
            let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
            if watch.last_check.elapsed() < self.check_interval {
                return;
            }
            watch.last_check = Instant::now();
            match FileStamp::of(path) {
                Ok(stamp) if watch.stamp.as_ref() == Some(&stamp) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(crl = %path.display(), error = %e,
                        "cannot stat the CRL; keeping the revocation list already loaded");
                    return;
                }
            }
        }
        if let Err(e) = self.reload() {
            tracing::error!(error = %e, "CRL changed but could not be loaded; keeping the previous one");
            // Do not retry a broken file before it changes again.
            if let Ok(stamp) = FileStamp::of(path) {
                self.watch.lock().unwrap_or_else(|e| e.into_inner()).stamp = Some(stamp);
            }
        }
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn build_inner(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    crl_path: Option<&Path>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    if let Some(path) = crl_path {
        let crls = load_crls(path)?;
        // The CA is a trust anchor; only station certificates can be revoked.
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    builder.build().map_err(|source| NetError::Verifier {
        crl: crl_path.map(Path::to_owned),
        source,
    })
}

/// Reads every CRL in a PEM file (at least one).
pub(crate) fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let bytes = fs::read(path).map_err(|source| NetError::Io {
        what: "CRL",
        path: path.to_owned(),
        source,
    })?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| NetError::Pem {
            what: "CRL",
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if crls.is_empty() {
        return Err(NetError::Pem {
            what: "CRL",
            path: path.to_owned(),
            reason: "no X509 CRL block found".to_owned(),
        });
    }
    Ok(crls)
}

impl ClientCertVerifier for CrlVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.maybe_reload();
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}
