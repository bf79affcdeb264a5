//! The one error type of the model layer.

use std::path::PathBuf;

use fedcrime_params::ParamError;

/// What can go wrong building, feeding, exchanging or storing a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A [`ModelConfig`](super::ModelConfig) field has an unusable value.
    #[error("invalid model config: {field}: {reason}")]
    Config {
        /// The offending field, e.g. `hidden` or `adjacency[3]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A parameter set lacks a tensor the model has.
    #[error("parameter {name:?} is missing")]
    MissingParam {
        /// The model's tensor name.
        name: String,
    },
    /// A parameter set has a tensor the model does not have.
    #[error("parameter {name:?} is not part of the model")]
    UnexpectedParam {
        /// The foreign tensor name.
        name: String,
    },
    /// A tensor's shape differs from the model's.
    #[error("parameter {name:?} has shape {got:?}, the model needs {expected:?}")]
    Shape {
        /// The tensor name.
        name: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The shape supplied.
        got: Vec<usize>,
    },
    /// A tensor has an element type other than f32.
    #[error("parameter {name:?} has dtype {dtype}, expected F32")]
    Dtype {
        /// The tensor name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// A parameter layout error (duplicate names, wrong buffer length...).
    #[error(transparent)]
    Layout(#[from] ParamError),
    /// A dataset cannot feed this model (missing sequence view, wrong widths...).
    #[error("dataset: {0}")]
    Dataset(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing a file failed.
    #[error(transparent)]
    File(#[from] fedcrime_files::FilesError),
    /// A `.safetensors` file could not be written or parsed.
    #[error("{path}: invalid safetensors data: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the safetensors layer reported.
        reason: String,
    },
    /// A `.safetensors` file's `__metadata__` lacks an entry or has a bad one.
    #[error("{path}: metadata {key:?}: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// libtorch reported an error.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    /// A [`ModelError::Config`] for `field`.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ModelError::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
