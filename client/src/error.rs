//! The station library's error type.

use fedcrime_cli::config_file::ConfigFileError;
use fedcrime_data::DataError;
use fedcrime_net::NetError;
use fedcrime_station::StationError;
use fedcrime_wire::{RejectCode, WireError};

/// What stops a station. Network loss is not one of them: the station
/// reconnects (see [`ReconnectPolicy`](fedcrime_net::ReconnectPolicy)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The config file cannot be read or parsed, or a setting in it is invalid.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// The device cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// Connecting failed for good (certificate refused, retries exhausted).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The records could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The station cannot take part in the server's run (its data does not
    /// fit the run's task or model, or the run description is malformed).
    #[error("cannot join the run: {0}")]
    Station(#[from] StationError),
    /// The server refused the station.
    #[error("the server refused the station ({code:?}): {text}")]
    Rejected {
        /// Why, for programs.
        code: RejectCode,
        /// Why, for people.
        text: String,
    },
    /// The server ended the session because the station's certificate is
    /// no longer valid (revoked, or expired while connected).
    #[error("the server ended the session: this station's certificate is no longer valid ({0}); ask the agency for a new one")]
    Revoked(String),
    /// Another process held this station's identity for longer than the
    /// reconnection policy waits.
    #[error("gave up: another process is connected with this station's certificate: {0}")]
    Duplicate(String),
    /// Signing updates or checking the audit log failed.
    #[error("{0}")]
    Audit(String),
    /// The server broke the protocol during the handshake.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The prediction service could not start (its settings, store or model).
    #[error("prediction service: {0}")]
    Serve(String),
    /// Writing to the server failed.
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl ClientError {
    /// Whether the station could not start because of its configuration or
    /// the files it names (config settings, its certificate, key or CA, the
    /// data file): `fedcrime-client` exits 2.
    pub fn is_setup(&self) -> bool {
        match self {
            ClientError::Config(_)
            | ClientError::Device(_)
            | ClientError::Data(_)
            | ClientError::Serve(_) => true,
            ClientError::Net(e) => e.is_setup(),
            _ => false,
        }
    }
}

/// Shorthand for the station's results.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
