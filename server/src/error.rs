//! The server library's error type.

use std::path::PathBuf;

use fedcrime_cli::config_file::ConfigFileError;
use fedcrime_data::DataError;
use fedcrime_fl::FlError;
use fedcrime_ml::model::ModelError;
use fedcrime_net::NetError;
use fedcrime_params::io::ParamsIoError;
use fedcrime_station::StationError;
use fedcrime_wire::WireError;

/// What can stop the server from starting or running. Misbehaving stations
/// never produce one: their traffic is refused, logged and counted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The config file cannot be read or parsed, or a setting in it is invalid.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The output folder holds another run's files and neither `--resume`
    /// nor `--force` was given.
    #[error(
        "output folder {} already holds a run ({file}); pass --resume to continue it, --force \
         to replace it, or choose another output.dir",
        dir.display()
    )]
    OutputExists {
        /// The folder.
        dir: PathBuf,
        /// The file found there.
        file: String,
    },
    /// The checkpoint folder holds a run and `--resume` was not given.
    #[error(
        "checkpoint folder {} already holds a run (last completed round {round}); pass --resume \
         to continue it, or choose another output.checkpoint_dir",
        dir.display()
    )]
    CheckpointExists {
        /// The folder.
        dir: PathBuf,
        /// Its last completed round.
        round: u64,
    },
    /// The round engine or a checkpoint failed.
    #[error(transparent)]
    Fl(#[from] FlError),
    /// The QUIC endpoint failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The run setup could not be derived.
    #[error(transparent)]
    Station(#[from] StationError),
    /// The evaluation data could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model could not be built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Encoding a message failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Writing the final model failed.
    #[error(transparent)]
    ParamsIo(#[from] ParamsIoError),
    /// Writing an output file failed.
    #[error(transparent)]
    File(#[from] fedcrime_files::FilesError),
    /// Writing the metrics failed.
    #[error("metrics file {}: {message}", path.display())]
    Metrics {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A background task died.
    #[error("{0} task failed")]
    Task(&'static str),
    /// The dashboard's settings or socket.
    #[error(transparent)]
    Dashboard(#[from] crate::dashboard::DashboardError),
    /// The audit log or its key.
    #[error("audit log: {0}")]
    Audit(#[from] fedcrime_audit::AuditError),
}

impl ServerError {
    /// Whether the run could not start because of its configuration or the
    /// files it names (config settings, TLS material, the initial model, an
    /// output folder that already holds a run): `fedcrime-server` exits 2.
    pub fn is_setup(&self) -> bool {
        match self {
            ServerError::Config(_)
            | ServerError::CheckpointExists { .. }
            | ServerError::OutputExists { .. }
            | ServerError::Dashboard(_)
            | ServerError::Audit(_) => true,
            ServerError::Net(e) => e.is_setup(),
            _ => false,
        }
    }
}

/// Shorthand for the server's results.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;
