//! A federated station's logic, without any transport: what a precinct does
//! with the requests of a round.
//!
//! A [`Station`] holds its own data (a [`Splits`] partition, nothing else) and
//! the model architecture of the run ([`ModelConfig`]). For each fit request
//! ([`FitIns`]: the global model and the round's settings) it builds a model,
//! loads the global parameters, trains locally with the train module's
//! [`Trainer`] (epochs, batch size, learning rate, FedProx `mu`, seed) and
//! returns the trained parameters with its number of examples and training
//! loss ([`FitRes`]). For each evaluation request ([`EvaluateIns`]) it scores
//! the given model on its local validation split ([`EvaluateRes`]). Models are
//! built per request and dropped after it, so a simulator can hold a thousand
//! stations without a thousand models.
//!
//! The QUIC client (`fedcrime-client`) and the in-memory simulator drive the
//! same [`Learner`] trait, so both give the same numbers for the same seeds.
//! The pieces around it:
//!
//! - [`data`]: from cleaned incidents to a station's [`Splits`] (area filter
//!   or partition, with the run's shared featurizer or one fit locally);
//! - [`protocol`]: the lossless mapping between the round engine's settings
//!   ([`Config`]) and the wire protocol's messages, and the run description
//!   ([`RunSetup`](protocol::RunSetup)) the server sends in its Welcome;
//! - [`model_config`]: the architecture of a task, derived from the task's
//!   feature layout alone (the server builds the initial model without data).
//!
//! Round settings read from a [`Config`] (missing keys fall back to the
//! station's defaults, [`Station::with_defaults`]): [`EPOCHS_KEY`],
//! [`BATCH_SIZE_KEY`], [`LR_KEY`], [`WEIGHT_DECAY_KEY`], [`MAX_GRAD_NORM_KEY`],
//! [`PROXIMAL_MU_KEY`], [`SEED_KEY`] and the engine's `server_round`; a round
//! trains with the seed [`round_seed`]`(seed, round)`.

pub mod data;
pub mod protocol;

use std::time::Instant;

use tch::Device;

use crate::data::categories::Category;
use crate::data::features::{Layout, RISK_LEVELS};
use crate::data::{DataError, Dataset, Splits, Task, TaskConfig};
use crate::fl::engine::SERVER_ROUND_KEY;
use crate::fl::{Config, ConfigValue, EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics};
use crate::model::{self, ModelConfig, ModelError, ModelKind};
use crate::train::trainer::evaluate_model;
use crate::train::trainer::round_keys;
use crate::train::{TrainConfig, TrainError, Trainer};

/// Local epochs of a round (integer; `epochs` is accepted too).
pub const EPOCHS_KEY: &str = round_keys::LOCAL_EPOCHS;
/// Mini-batch size (integer); in evaluation settings, the evaluation batch size.
pub const BATCH_SIZE_KEY: &str = round_keys::BATCH_SIZE;
/// Adam's learning rate.
pub const LR_KEY: &str = round_keys::LR;
/// Adam's weight decay.
pub const WEIGHT_DECAY_KEY: &str = round_keys::WEIGHT_DECAY;
/// Gradient clipping by global norm (absent or 0: none).
pub const MAX_GRAD_NORM_KEY: &str = "max_grad_norm";
/// FedProx's proximal coefficient, as the FedProx strategy sends it.
pub const PROXIMAL_MU_KEY: &str = round_keys::PROXIMAL_MU;
/// The run's base seed (integer); see [`round_seed`].
pub const SEED_KEY: &str = "seed";
/// Evaluation settings: which local split to score (`val`, the default, `test` or `train`).
pub const SPLIT_KEY: &str = "split";
/// The fit metric carrying the training loss of the kept epoch.
pub const LOSS_METRIC: &str = "loss";
/// The fit metric carrying the number of local epochs run.
pub const EPOCHS_METRIC: &str = "epochs";

/// A station could not set up, train or evaluate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StationError {
    /// A round setting has the wrong type or range.
    #[error("round setting {key:?}: {reason}")]
    Setting {
        /// The setting's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The station's data does not fit the run's model or task.
    #[error("station data: {0}")]
    Mismatch(String),
    /// The station has no samples in a split it needs.
    #[error("station has no {split} samples")]
    EmptySplit {
        /// The split.
        split: &'static str,
    },
    /// The run's description (from the server) is malformed.
    #[error("run setup: {0}")]
    Setup(String),
    /// The architecture cannot be derived or built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Training or evaluation failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Loading or featurizing data failed.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// Shorthand for results of this module.
pub type Result<T, E = StationError> = std::result::Result<T, E>;

/// What a station does with a round's requests: implemented by [`Station`],
/// and by scripted stand-ins in tests. `&self`: one learner may serve
/// requests from several threads.
pub trait Learner: Send + Sync {
    /// Trains from `ins.global` with `ins.config` and returns the update.
    fn fit(&self, ins: &FitIns) -> Result<FitRes>;
    /// Scores `ins.global` on local data.
    fn evaluate(&self, ins: &EvaluateIns) -> Result<EvaluateRes>;
}

/// The seed a station trains round `round` with, from the run's base seed:
/// different every round, the same on every transport (the train module's
/// [`TrainConfig::for_round`] rule; a unit test keeps them equal).
pub fn round_seed(seed: u64, round: u64) -> u64 {
    seed.wrapping_add(round.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The architecture of `kind` for `task`, from the task's feature layout
/// alone (no data needed): the flat feature width of the task's layout, the
/// sequence view `lags x categories`, 5 risk classes or one count per
/// category, and the kind's default widths (see [`ModelConfig::new`]).
/// `gat-tcn` models the 21 areas jointly and cannot be trained by one
/// precinct on its own records, so it is refused here.
pub fn model_config(kind: ModelKind, task: &TaskConfig) -> Result<ModelConfig> {
    task.validate()?;
    if kind == ModelKind::GatTcn {
        return Err(StationError::Model(ModelError::config(
            "kind",
            "gat-tcn needs every area's counts as input and cannot be trained on one station's \
             records; use dnn or lstm for federated runs",
        )));
    }
    let input_dim = Layout::new(task.task, task.period, task.lags).names().len();
    let output_dim = match task.task {
        Task::Risk => RISK_LEVELS,
        Task::Counts => Category::COUNT,
    };
    let mut cfg = ModelConfig::new(kind, task.task, input_dim, output_dim);
    cfg.seq_steps = task.lags;
    cfg.seq_dim = Category::COUNT;
    Ok(cfg)
}

/// Checks that `ds` has the shapes `model` expects.
pub fn check_dataset(model: &ModelConfig, ds: &Dataset, split: &str) -> Result<()> {
    let bad = |what: String| Err(StationError::Mismatch(format!("{split} split: {what}")));
    if ds.task != model.task {
        return bad(format!("{} samples for a {} model", ds.task, model.task));
    }
    if ds.feature_dim != model.input_dim {
        return bad(format!(
            "{} features per sample, the model takes {}",
            ds.feature_dim, model.input_dim
        ));
    }
    if ds.target.output_dim() != model.output_dim {
        return bad(format!(
            "targets of width {}, the model predicts {}",
            ds.target.output_dim(),
            model.output_dim
        ));
    }
    if model.kind == ModelKind::Lstm {
        match &ds.sequences {
            Some(s) if s.steps == model.seq_steps && s.step_dim == model.seq_dim => {}
            Some(s) => {
                return bad(format!(
                    "sequences of {} x {}, the model takes {} x {}",
                    s.steps, s.step_dim, model.seq_steps, model.seq_dim
                ))
            }
            None => return bad("no sequence view, which the lstm model needs".into()),
        }
    }
    Ok(())
}

/// A station: its own data, the run's architecture, where it computes, and
/// its default training settings. See the module docs.
#[derive(Debug)]
pub struct Station {
    name: String,
    splits: Splits,
    model: ModelConfig,
    device: Device,
    defaults: TrainConfig,
}

/// The defaults a station trains with when a round does not say otherwise:
/// 1 epoch, batch 64, learning rate 1e-3, no early stopping.
pub fn default_train_config() -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size: 64,
        lr: 1e-3,
        patience: 0,
        progress: false,
        ..TrainConfig::default()
    }
}

impl Station {
    /// A station named `name` holding `splits`, training `model` on `device`.
    /// The training split must not be empty and every split must fit the model.
    pub fn new(
        name: impl Into<String>,
        splits: Splits,
        model: ModelConfig,
        device: Device,
    ) -> Result<Self> {
        model.validate()?;
        if splits.train.is_empty() {
            return Err(StationError::EmptySplit { split: "train" });
        }
        check_dataset(&model, &splits.train, "train")?;
        if !splits.val.is_empty() {
            check_dataset(&model, &splits.val, "val")?;
        }
        if !splits.test.is_empty() {
            check_dataset(&model, &splits.test, "test")?;
        }
        Ok(Station {
            name: name.into(),
            splits,
            model,
            device,
            defaults: default_train_config(),
        })
    }

    /// Replaces the default training settings (rounds' settings override them).
    pub fn with_defaults(mut self, defaults: TrainConfig) -> Result<Self> {
        defaults.validate()?;
        self.defaults = defaults;
        Ok(self)
    }

    /// The station's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The station's data.
    pub fn splits(&self) -> &Splits {
        &self.splits
    }

    /// The architecture.
    pub fn model_config(&self) -> &ModelConfig {
        &self.model
    }

    /// Where it computes.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The default training settings.
    pub fn defaults(&self) -> &TrainConfig {
        &self.defaults
    }

    /// The training settings of a round: the defaults overridden by `config`,
    /// with the round's seed.
    pub fn train_config(&self, config: &Config) -> Result<TrainConfig> {
        train_config(config, &self.defaults)
    }

    fn build_model(&self) -> Result<Box<dyn model::CrimeModel>> {
        Ok(model::build(&self.model, self.device)?)
    }

    /// One local round: see [`Learner::fit`].
    pub fn fit(&self, ins: &FitIns) -> Result<FitRes> {
        let cfg = self.train_config(&ins.config)?;
        let t0 = Instant::now();
        let model = self.build_model()?;
        let mut trainer = Trainer::new(model, cfg)?;
        let update = trainer.fit_from(&ins.global, &self.splits.train, None)?;
        let mut metrics = Metrics::new();
        if let Some(kept) = update.report.kept() {
            metrics.insert(LOSS_METRIC.to_string(), kept.train_loss);
        }
        metrics.insert(EPOCHS_METRIC.to_string(), update.report.epochs.len() as f64);
        tracing::debug!(
            station = %self.name,
            examples = update.num_examples,
            loss = metrics.get(LOSS_METRIC).copied(),
            seconds = t0.elapsed().as_secs_f64(),
            "local training done"
        );
        Ok(FitRes {
            params: update.params,
            num_examples: update.num_examples as u64,
            metrics,
        })
    }

    /// Scores a model on a local split: see [`Learner::evaluate`].
    pub fn evaluate(&self, ins: &EvaluateIns) -> Result<EvaluateRes> {
        let (split, ds) = match ins.config.get(SPLIT_KEY) {
            None => ("val", &self.splits.val),
            Some(ConfigValue::Str(s)) if s == "val" => ("val", &self.splits.val),
            Some(ConfigValue::Str(s)) if s == "test" => ("test", &self.splits.test),
            Some(ConfigValue::Str(s)) if s == "train" => ("train", &self.splits.train),
            Some(other) => {
                return Err(StationError::Setting {
                    key: SPLIT_KEY.into(),
                    reason: format!("{other:?} is not \"val\", \"test\" or \"train\""),
                })
            }
        };
        if ds.is_empty() {
            return Err(StationError::EmptySplit { split });
        }
        let batch = match ins.config.get(BATCH_SIZE_KEY) {
            Some(v) => positive_int(BATCH_SIZE_KEY, v)?,
            None => self.defaults.eval_batch_size,
        };
        let mut model = self.build_model()?;
        model.import_params(&ins.global)?;
        let eval = evaluate_model(model.as_ref(), ds, batch)?;
        let metrics: Metrics = eval
            .metrics
            .scalars()
            .into_iter()
            .filter(|(_, v)| v.is_finite())
            .collect();
        Ok(EvaluateRes {
            loss: eval.loss,
            num_examples: eval.n as u64,
            metrics,
        })
    }
}

impl Learner for Station {
    fn fit(&self, ins: &FitIns) -> Result<FitRes> {
        Station::fit(self, ins)
    }

    fn evaluate(&self, ins: &EvaluateIns) -> Result<EvaluateRes> {
        Station::evaluate(self, ins)
    }
}

fn positive_int(key: &str, v: &ConfigValue) -> Result<usize> {
    match v.as_i64() {
        Some(i) if i >= 1 => usize::try_from(i).map_err(|_| StationError::Setting {
            key: key.into(),
            reason: format!("{i} is too large"),
        }),
        _ => Err(StationError::Setting {
            key: key.into(),
            reason: format!("{v:?} is not a positive integer"),
        }),
    }
}

fn number(key: &str, v: &ConfigValue) -> Result<f64> {
    match v.as_f64() {
        Some(f) if f.is_finite() => Ok(f),
        _ => Err(StationError::Setting {
            key: key.into(),
            reason: format!("{v:?} is not a finite number"),
        }),
    }
}

fn seed_value(key: &str, v: &ConfigValue) -> Result<u64> {
    match v.as_i64() {
        // Seeds travel as i64; negative ones are their two's complement.
        Some(i) => Ok(i as u64),
        None => Err(StationError::Setting {
            key: key.into(),
            reason: format!("{v:?} is not an integer"),
        }),
    }
}

/// The training settings of a round: `defaults` with the run's seed
/// ([`SEED_KEY`]) and gradient clipping applied, then the train module's
/// round bridge ([`TrainConfig::for_round`]: epochs, learning rate, batch
/// size, FedProx `mu`, weight decay, and the seed moved by the round, see
/// [`round_seed`]); early stopping and progress bars off. A known key with a
/// value of the wrong type is an error naming it.
pub fn train_config(config: &Config, defaults: &TrainConfig) -> Result<TrainConfig> {
    let mut cfg = defaults.clone();
    cfg.patience = 0;
    cfg.progress = false;
    if let Some(v) = config.get(EPOCHS_KEY).or_else(|| config.get("epochs")) {
        positive_int(EPOCHS_KEY, v)?;
    }
    if let Some(v) = config.get(BATCH_SIZE_KEY) {
        positive_int(BATCH_SIZE_KEY, v)?;
    }
    for key in [LR_KEY, WEIGHT_DECAY_KEY, PROXIMAL_MU_KEY] {
        if let Some(v) = config.get(key) {
            number(key, v)?;
        }
    }
    if let Some(v) = config.get(MAX_GRAD_NORM_KEY) {
        let c = number(MAX_GRAD_NORM_KEY, v)?;
        cfg.max_grad_norm = (c > 0.0).then_some(c);
    }
    if let Some(v) = config.get(SEED_KEY) {
        cfg.seed = seed_value(SEED_KEY, v)?;
    }
    if let Some(v) = config.get(SERVER_ROUND_KEY) {
        seed_value(SERVER_ROUND_KEY, v)?;
    }
    cfg.for_round(|k| config.get(k).and_then(ConfigValue::as_f64))
        .map_err(|e| match e {
            TrainError::Config { field, reason } => StationError::Setting {
                key: field.to_string(),
                reason,
            },
            other => StationError::Train(other),
        })
}

#[cfg(test)]
mod tests;
