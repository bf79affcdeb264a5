//! Scoring models the same way for every method: the task's loss and
//! metrics on the pooled validation and test splits.
//!
//! The federated global model is scored after each round, the centralized
//! models after each epoch, with the same function on the same samples, so
//! the curves of `metrics.csv` compare like with like. Scoring is the
//! study's measurement, not part of any method: its time is left out of the
//! methods' wall-clock seconds.

use std::sync::Arc;

use anyhow::Result;
use tch::Device;

use fedcrime_data::Splits;
use fedcrime_fl::EvalSummary;
use fedcrime_ml::model::{build, CrimeModel, ModelConfig};
use fedcrime_ml::train::trainer::evaluate_model;
use fedcrime_ml::train::Metrics;
use fedcrime_params::Params;

/// A model's loss and task metrics on one split.
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    /// Mean loss (the training objective, class weights included).
    pub loss: f64,
    /// The task's metrics.
    pub metrics: Metrics,
}

impl Scores {
    /// The headline metric's value (macro-F1 for risk, MAE for counts).
    pub fn headline(&self) -> f64 {
        self.metrics.headline().1
    }
}

/// Validation and test scores of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitScores {
    /// On the pooled validation split.
    pub val: Scores,
    /// On the pooled test split.
    pub test: Scores,
}

/// Scores parameters on the pooled validation and test splits with a model
/// of its own.
pub struct Evaluator {
    model: Box<dyn CrimeModel>,
    data: Arc<Splits>,
    batch_size: usize,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("model", &self.model.kind())
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl Evaluator {
    /// An evaluator for models of `config` on `data`, on the CPU.
    pub fn new(config: &ModelConfig, data: Arc<Splits>, batch_size: usize) -> Result<Self> {
        Ok(Evaluator {
            model: build(config, Device::Cpu)?,
            data,
            batch_size,
        })
    }

    /// Scores `params` on the validation split only, as the round engine's
    /// server-side evaluation (what early stopping watches); `None`, logged,
    /// when scoring fails.
    pub fn validation_summary(&mut self, round: u64, params: &Params) -> Option<EvalSummary> {
        let scored = (|| -> Result<EvalSummary> {
            self.model.import_params(params)?;
            let e = evaluate_model(self.model.as_ref(), &self.data.val, self.batch_size)?;
            Ok(fedcrime_station::eval_summary(&e))
        })();
        scored
            .map_err(|e| tracing::warn!(round, "validation scoring failed: {e:#}"))
            .ok()
    }

    /// Scores `params`.
    pub fn evaluate(&mut self, params: &Params) -> Result<SplitScores> {
        self.model.import_params(params)?;
        let score = |ds| -> Result<Scores> {
            let e = evaluate_model(self.model.as_ref(), ds, self.batch_size)?;
            Ok(Scores {
                loss: e.loss,
                metrics: e.metrics,
            })
        };
        Ok(SplitScores {
            val: score(&self.data.val)?,
            test: score(&self.data.test)?,
        })
    }
}
