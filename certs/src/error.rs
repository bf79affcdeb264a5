//! The one error type of the PKI library.

use std::path::PathBuf;

/// Result alias used throughout `fedcrime-certs`.
pub type Result<T, E = CertsError> = std::result::Result<T, E>;

/// Everything that can go wrong while issuing, loading or revoking certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// Writing a file failed.
    #[error(transparent)]
    File(#[from] fedcrime_files::FilesError),
    /// Reading or writing a file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "writing", "creating directory", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `init` found PKI files where it would write and `--force` was not given.
    #[error("refusing to overwrite existing PKI file {} (pass --force to replace the whole PKI)", path.display())]
    AlreadyExists {
        /// The first existing file found.
        path: PathBuf,
    },
    /// The directory holds no manifest, so it is not a PKI made by this tool.
    #[error("{} is not a fedcrime PKI directory: missing {}", dir.display(), manifest.display())]
    NotAPki {
        /// The directory.
        dir: PathBuf,
        /// The manifest path that was expected.
        manifest: PathBuf,
    },
    /// The manifest could not be parsed or has an unexpected format.
    #[error("invalid manifest {}: {reason}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate, key or CRL file could not be parsed.
    #[error("invalid {what} in {}: {reason}", path.display())]
    Parse {
        /// What the file should hold ("certificate", "private key", "CRL").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rcgen refused to build or sign something.
    #[error("could not {what}: {source}")]
    Rcgen {
        /// What was being built ("sign the CA certificate", ...).
        what: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// A station name breaks the naming rules.
    #[error(transparent)]
    InvalidStationName(#[from] fedcrime_identity::IdentityError),
    /// A server name (DNS name or IP address) cannot go into a certificate.
    #[error("invalid server name {name:?}: {reason}")]
    InvalidServerName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The station already holds a certificate that is neither revoked nor expired.
    #[error("station {name} already holds a valid certificate (serial {serial}); revoke it first (e.g. --reason superseded) to re-issue")]
    StationExists {
        /// The station.
        name: String,
        /// Serial of its live certificate.
        serial: String,
    },
    /// No certificate was ever issued to that station.
    #[error("no certificate was issued to station {name:?} (see `fedcrime-certs show`)")]
    UnknownStation {
        /// The station asked for.
        name: String,
    },
    /// Every certificate of that station is already revoked.
    #[error("station {name}'s certificate (serial {serial}) is already revoked")]
    AlreadyRevoked {
        /// The station.
        name: String,
        /// Serial of its last certificate.
        serial: String,
    },
    /// A validity period is empty or a leaf would outlive its CA.
    #[error("invalid validity: {reason}")]
    Validity {
        /// What is wrong.
        reason: String,
    },
    /// An unknown revocation reason was given.
    #[error("unknown revocation reason {given:?} (expected one of: {expected})")]
    UnknownReason {
        /// The text given.
        given: String,
        /// The accepted spellings.
        expected: &'static str,
    },
    /// An Ed25519 signing key could not be made, read or written.
    #[error("{what}: {source}")]
    SigningKey {
        /// Which key ("the update-signing key of station-07", ...).
        what: String,
        /// The underlying error.
        #[source]
        source: Box<fedcrime_audit::AuditError>,
    },
    /// Another `fedcrime-certs` process holds the directory's lock file.
    #[error("PKI directory is locked by {} (another fedcrime-certs run?); remove the file if no other run is active", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

impl CertsError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CertsError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn rcgen(what: impl Into<String>, source: rcgen::Error) -> Self {
        CertsError::Rcgen {
            what: what.into(),
            source,
        }
    }
}
