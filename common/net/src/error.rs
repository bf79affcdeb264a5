//! [`NetError`]: everything the connection layer can fail with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Result alias of the connection layer.
pub type Result<T, E = NetError> = std::result::Result<T, E>;

/// Which side of a TLS handshake refused the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBy {
    /// This process refused the peer's certificate (or the peer's handshake).
    Local,
    /// The peer refused ours: it closed the connection with a TLS alert.
    Peer,
}

impl std::fmt::Display for RefusedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefusedBy::Local => "refused locally",
            RefusedBy::Peer => "refused by the peer",
        })
    }
}

/// Errors of the certificate, endpoint and connection code in `crate::net`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A certificate, key or CRL file could not be read.
    #[error("reading {what} {}: {source}", path.display())]
    Io {
        /// What the file holds ("CA certificate", "private key", "CRL", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("writing the {what}")]
    Write {
        /// What the file holds.
        what: &'static str,
        /// The underlying error (it names the file).
        #[source]
        source: fedcrime_files::FilesError,
    },
    /// A PEM file did not hold what it should.
    #[error("invalid {what} in {}: {reason}", path.display())]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificates or keys while building a configuration.
    #[error("building the {what}: {source}")]
    Tls {
        /// Which configuration ("server TLS configuration", ...).
        what: &'static str,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built (bad CA or CRL).
    #[error("building the client certificate verifier from {}: {source}", crl.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the CA".to_owned()))]
    Verifier {
        /// The CRL file involved, if any.
        crl: Option<PathBuf>,
        /// The rustls error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// A transport or TLS setting is out of range.
    #[error("invalid setting {field}: {reason}")]
    Settings {
        /// The setting.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A UDP or TCP socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// quinn refused to start a connection (bad server name, endpoint closed...).
    #[error("connecting to {peer}: {source}")]
    Connect {
        /// The server address.
        peer: SocketAddr,
        /// The quinn error.
        #[source]
        source: quinn::ConnectError,
    },
    /// The TLS handshake failed on certificate grounds: a permanent error,
    /// never retried.
    #[error("TLS handshake with {peer} {by}: {reason}")]
    Refused {
        /// The peer.
        peer: SocketAddr,
        /// Which side refused.
        by: RefusedBy,
        /// The TLS alert or verifier error.
        reason: String,
    },
    /// The connection failed or was lost (network trouble; may be retried).
    #[error("connection with {peer}: {source}")]
    Connection {
        /// The peer.
        peer: SocketAddr,
        /// The quinn error.
        #[source]
        source: quinn::ConnectionError,
    },
    /// The handshake did not finish in time.
    #[error("handshake with {peer} did not finish within {after:?}")]
    HandshakeTimeout {
        /// The peer.
        peer: SocketAddr,
        /// The limit.
        after: Duration,
    },
    /// The peer's certificate carries no usable station identity.
    #[error("identity of {peer}: {reason}")]
    Identity {
        /// The peer.
        peer: SocketAddr,
        /// What is wrong with the certificate.
        reason: String,
    },
    /// A station name breaks the naming rules.
    #[error(transparent)]
    InvalidStationId(#[from] fedcrime_identity::IdentityError),
    /// Reconnection gave up.
    #[error("gave up connecting to {peer} after {attempts} attempt(s) in {} s (the run may be over, or the server down): {last}", elapsed.as_secs())]
    GaveUp {
        /// The server.
        peer: SocketAddr,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last attempt's error.
        #[source]
        last: Box<NetError>,
    },
    /// The endpoint was closed.
    #[error("endpoint closed")]
    Closed,
    /// A socket operation of the benchmark failed.
    #[error("{what}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A stream operation failed.
    #[error("stream with {peer}: {reason}")]
    Stream {
        /// The peer.
        peer: SocketAddr,
        /// What failed.
        reason: String,
    },
}

impl NetError {
    /// Classifies a quinn connection error: TLS alerts (crypto error codes)
    /// become [`NetError::Refused`]; everything else is a [`NetError::Connection`].
    pub(crate) fn from_connection(peer: SocketAddr, e: quinn::ConnectionError) -> Self {
        match &e {
            // Our own TLS stack failed the handshake (e.g. the peer's
            // certificate did not verify).
            quinn::ConnectionError::TransportError(t) if is_crypto(t.code) => NetError::Refused {
                peer,
                by: RefusedBy::Local,
                reason: explain(&t.reason),
            },
            // The peer aborted with a TLS alert.
            quinn::ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code) => {
                let reason = String::from_utf8_lossy(&c.reason).into_owned();
                NetError::Refused {
                    peer,
                    by: RefusedBy::Peer,
                    reason: if reason.is_empty() {
                        format!("{}", c.error_code)
                    } else {
                        explain(&reason)
                    },
                }
            }
            // The server's listener found no station identity in our certificate.
            quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == super::CLOSE_NO_IDENTITY =>
            {
                NetError::Refused {
                    peer,
                    by: RefusedBy::Peer,
                    reason: String::from_utf8_lossy(&c.reason).into_owned(),
                }
            }
            _ => NetError::Connection { peer, source: e },
        }
    }

    /// Whether trying again later could succeed: network trouble yes,
    /// certificate and configuration problems no.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            NetError::Connection { source, .. } => !matches!(
                source,
                quinn::ConnectionError::VersionMismatch | quinn::ConnectionError::LocallyClosed
            ),
            NetError::HandshakeTimeout { .. } | NetError::Stream { .. } => true,
            NetError::Socket { .. } => true,
            _ => false,
        }
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100..=0x1ff.
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

impl NetError {
    /// Whether this is a problem of the local set-up (a TLS file missing or
    /// unreadable, a bad CA, key or CRL, invalid settings) rather than of the
    /// network or the peer: binaries exit 2 for it, as for a bad config.
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            NetError::Io { .. }
                | NetError::Write { .. }
                | NetError::Pem { .. }
                | NetError::Tls { .. }
                | NetError::Verifier { .. }
                | NetError::Settings { .. }
                | NetError::InvalidStationId(_)
        )
    }
}

/// A TLS refusal reason with what it means for an agency's PKI added
/// (rustls names only the check that failed).
pub(crate) fn explain(reason: &str) -> String {
    let meaning = if reason.contains("UnknownIssuer") || reason.contains("BadSignature") {
        Some("the certificate was signed by a different authority than this agency's CA")
    } else if reason.contains("Revoked") {
        Some("the certificate is on the agency's revocation list")
    } else if reason.contains("Expired") {
        Some("the certificate has expired")
    } else {
        None
    };
    match meaning {
        Some(m) => format!("{reason} ({m})"),
        None => reason.to_string(),
    }
}
