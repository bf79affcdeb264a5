//! Training: the station trainer every federated client runs, the centralized
//! data-parallel trainer federated learning is compared against, evaluation
//! metrics, naive baselines and hyperparameter search.
//!
//! The pieces, bottom up:
//!
//! - [`metrics`]: accuracy, macro-F1, per-class recall and the confusion matrix
//!   for `risk`; MAE, RMSE, Poisson deviance and per-category MAE for `counts`.
//! - [`fairness`]: selection rates, demographic parity and equalized odds
//!   per group (fairlearn's definitions), error and bias of counts per group.
//! - [`baselines`]: majority class, historical frequency, last period, same
//!   weekday last week and period mean, scored with the same metrics.
//! - [`loader`]: mini-batches assembled on a background thread and handed over
//!   through a bounded channel while the model trains.
//! - [`trainer`]: Adam, early stopping on validation loss with the best weights
//!   restored, the FedProx proximal term, per-epoch records; callable with a
//!   global [`Params`](fedcrime_params::Params) to start from, returning the update.
//! - [`dp_sgd`]: local differential privacy at the station: DP-SGD
//!   (per-sample clipping and Gaussian noise) in the station trainer.
//! - [`parallel`]: W model replicas (CUDA devices or CPU workers), each step's
//!   batch split among them, gradients averaged, one identical optimizer step.
//! - [`pipeline`]: model parallelism: the model's layers in S stages on their
//!   own threads (or CUDA devices), micro-batches pipelined through them
//!   (GPipe), one optimizer step per batch.
//! - [`tune`]: grid or random search over the paper's hyperparameter grid.

pub mod baselines;
pub mod dp_sgd;
pub mod fair_training;
pub mod fairness;
pub mod loader;
pub mod metrics;
pub mod parallel;
pub mod pipeline;
#[cfg(test)]
pub(crate) mod test_data;
pub mod trainer;
pub mod tune;

pub use baselines::{evaluate_baselines, BaselineResult};
pub use dp_sgd::{DpAccounting, DpSgd};
pub use fair_training::{reweighing_weights, Criterion, FairGroups, FairTraining};
pub use metrics::{CountMetrics, Metrics, RiskMetrics};
pub use parallel::{ParallelConfig, ParallelTrainer};
pub use pipeline::{PipelineConfig, PipelineTrainer};
pub use trainer::{
    negative_log_likelihood, ClassWeighting, EpochRecord, Evaluation, FitReport, LocalUpdate,
    Monitor, TrainConfig, Trainer,
};

use fedcrime_data::Task;

/// Training, evaluation or search went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// Two things that must have the same length do not.
    #[error("{what}: expected {expected}, got {got}")]
    Length {
        /// What was measured.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length found.
        got: usize,
    },
    /// A class index is outside `0..num_classes`.
    #[error("{what} at row {row} is class {value}, outside 0..{num_classes}")]
    ClassOutOfRange {
        /// Which input (target, prediction, label).
        what: &'static str,
        /// The row.
        row: usize,
        /// The offending value.
        value: i64,
        /// Number of classes.
        num_classes: usize,
    },
    /// A value that must be finite is not (a loss, a prediction, a parameter).
    #[error("non-finite {what} at {at}")]
    NonFinite {
        /// What diverged.
        what: &'static str,
        /// Where (epoch and batch, row and column, tensor name...).
        at: String,
    },
    /// A split that must have samples is empty.
    #[error("the {split} split has no samples")]
    EmptySplit {
        /// Which split.
        split: &'static str,
    },
    /// Data of one task was given to a model or baseline of another.
    #[error("task mismatch: expected {expected} data, got {got}")]
    TaskMismatch {
        /// The task required.
        expected: Task,
        /// The task supplied.
        got: Task,
    },
    /// A configuration value is out of range.
    #[error("invalid training config: {field} {reason}")]
    Config {
        /// The field, as written in config files and flags.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The model layer failed (build, parameter import, batch assembly).
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Parameters of the wrong layout were supplied.
    #[error(transparent)]
    Params(#[from] fedcrime_params::ParamError),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A worker thread (batch loader or replica) died.
    #[error("{0} thread panicked")]
    Worker(&'static str),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
