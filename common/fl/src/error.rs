//! The error type of the federated code.

use std::path::PathBuf;

use fedcrime_params::io::ParamsIoError;
use fedcrime_params::ParamError;

/// Something in the federated layer failed: a bad configuration, an
/// aggregation that could not run, or a checkpoint that cannot be read.
///
/// Refused station updates are not errors; they are [`super::Refusal`]s,
/// counted in the round's metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlError {
    /// An engine or strategy setting is out of range or inconsistent.
    #[error("invalid setting {field}: {message}")]
    Config {
        /// The setting, as named in config files (e.g. `min_updates`, `strategy.beta`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A strategy specification (`fedprox:mu=0.1`) could not be parsed.
    #[error("invalid strategy {spec:?}: {message}")]
    StrategySpec {
        /// The text given.
        spec: String,
        /// What is wrong with it.
        message: String,
    },
    /// The inputs of an aggregation are inconsistent (a bug in the caller:
    /// the engine validates updates before they reach a strategy).
    #[error("{strategy}: cannot aggregate: {message}")]
    Aggregation {
        /// The strategy's name.
        strategy: String,
        /// What is wrong.
        message: String,
    },
    /// A strategy state saved in a checkpoint does not fit the strategy.
    #[error("{strategy}: cannot restore state: {message}")]
    StrategyState {
        /// The strategy restoring the state.
        strategy: String,
        /// What is wrong.
        message: String,
    },
    /// A parameter layout error.
    #[error(transparent)]
    Layout(#[from] ParamError),
    /// Reading or writing a parameter file failed.
    #[error(transparent)]
    Io(#[from] ParamsIoError),
    /// Writing a file failed.
    #[error(transparent)]
    File(#[from] fedcrime_files::FilesError),
    /// A checkpoint file is malformed or inconsistent.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file (or folder) at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Shorthand for results of the federated layer.
pub type Result<T, E = FlError> = std::result::Result<T, E>;

impl FlError {
    /// A [`FlError::Config`] for `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        FlError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
