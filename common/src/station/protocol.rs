//! The mapping between the round engine's vocabulary and the wire protocol's.
//!
//! - Fit settings ([`Config`]) travel in [`TrainConfig`]: the typed fields
//!   carry epochs, learning rate, batch size and FedProx `mu` (filled from
//!   the station defaults when the round does not set them, so every reader
//!   sees usable numbers), every other key travels in its extensions. The
//!   station rebuilds the same [`Config`] ([`fit_config_from_wire`]), so a
//!   station over QUIC trains exactly as one driven in memory.
//! - Evaluation settings travel as the request's extension map.
//! - The run's description ([`RunSetup`]: model architecture, task, shared
//!   featurizer) travels as JSON in the Welcome's extensions, so stations
//!   never disagree with the server about what they train.

use std::time::Duration;

use super::{
    default_train_config, round_seed, Result, StationError, BATCH_SIZE_KEY, EPOCHS_KEY, LR_KEY,
    PROXIMAL_MU_KEY, SEED_KEY,
};
use crate::data::{Featurizer, TaskConfig};
use crate::fl::engine::SERVER_ROUND_KEY;
use crate::fl::{Config, ConfigValue};
use crate::model::ModelConfig;
use crate::wire::{Encoding, Extensions, Scalar, TrainConfig};

/// Welcome extension: the model architecture ([`ModelConfig`] as JSON).
pub const EXT_MODEL_CONFIG: &str = "fedcrime.model_config";
/// Welcome extension: the task ([`TaskConfig`] as JSON).
pub const EXT_TASK_CONFIG: &str = "fedcrime.task_config";
/// Welcome extension: the shared featurizer ([`Featurizer`] as JSON), when the run has one.
pub const EXT_FEATURIZER: &str = "fedcrime.featurizer";

/// What a station must know about a run before it can train: sent by the
/// server in its Welcome.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSetup {
    /// The architecture of the global model.
    pub model: ModelConfig,
    /// The task and its split.
    pub task: TaskConfig,
    /// The featurizer every station applies, when the run has one.
    pub featurizer: Option<Featurizer>,
}

fn json<T: serde::Serialize>(what: &str, v: &T) -> Result<Scalar> {
    serde_json::to_string(v)
        .map(Scalar::Str)
        .map_err(|e| StationError::Setup(format!("{what}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(ext: &Extensions, key: &str) -> Result<Option<T>> {
    match ext.get(key) {
        None => Ok(None),
        Some(Scalar::Str(s)) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| StationError::Setup(format!("{key}: {e}"))),
        Some(other) => Err(StationError::Setup(format!(
            "{key}: expected a JSON string, got {}",
            scalar_kind(other)
        ))),
    }
}

fn scalar_kind(s: &Scalar) -> &'static str {
    match s {
        Scalar::Bool(_) => "a flag",
        Scalar::Int(_) => "an integer",
        Scalar::Float(_) => "a number",
        Scalar::Str(_) => "a string",
        Scalar::Bytes(_) => "bytes",
    }
}

impl RunSetup {
    /// The Welcome extensions describing this run.
    pub fn to_extensions(&self) -> Result<Extensions> {
        let mut ext = Extensions::new();
        ext.insert(EXT_MODEL_CONFIG.into(), json("model config", &self.model)?);
        ext.insert(EXT_TASK_CONFIG.into(), json("task config", &self.task)?);
        if let Some(f) = &self.featurizer {
            ext.insert(EXT_FEATURIZER.into(), json("featurizer", f)?);
        }
        Ok(ext)
    }

    /// Reads the run description from Welcome extensions, validating it.
    pub fn from_extensions(ext: &Extensions) -> Result<Self> {
        let model: ModelConfig = from_json(ext, EXT_MODEL_CONFIG)?
            .ok_or_else(|| StationError::Setup(format!("the server sent no {EXT_MODEL_CONFIG}")))?;
        model.validate()?;
        let task: TaskConfig = from_json(ext, EXT_TASK_CONFIG)?
            .ok_or_else(|| StationError::Setup(format!("the server sent no {EXT_TASK_CONFIG}")))?;
        task.validate()?;
        if task.task != model.task {
            return Err(StationError::Setup(format!(
                "task {} with a model for {}",
                task.task, model.task
            )));
        }
        let featurizer = from_json(ext, EXT_FEATURIZER)?;
        Ok(RunSetup {
            model,
            task,
            featurizer,
        })
    }
}

/// A round setting as an extension value.
pub fn to_scalar(v: &ConfigValue) -> Scalar {
    match v {
        ConfigValue::Bool(b) => Scalar::Bool(*b),
        ConfigValue::Int(i) => Scalar::Int(*i),
        ConfigValue::Float(f) => Scalar::Float(*f),
        ConfigValue::Str(s) => Scalar::Str(s.clone()),
    }
}

/// An extension value as a round setting (bytes have no counterpart).
pub fn from_scalar(key: &str, s: &Scalar) -> Result<ConfigValue> {
    Ok(match s {
        Scalar::Bool(b) => ConfigValue::Bool(*b),
        Scalar::Int(i) => ConfigValue::Int(*i),
        Scalar::Float(f) => ConfigValue::Float(*f),
        Scalar::Str(s) => ConfigValue::Str(s.clone()),
        Scalar::Bytes(_) => {
            return Err(StationError::Setting {
                key: key.into(),
                reason: "bytes are not a round setting".into(),
            })
        }
    })
}

/// How the server wants a round's update delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateDelivery {
    /// Time the station has to deliver its update.
    pub deadline: Duration,
    /// Encoding of the update's tensors.
    pub encoding: Encoding,
    /// Send `trained - global` instead of the trained parameters.
    pub send_delta: bool,
}

fn typed_or<T>(
    config: &Config,
    key: &str,
    default: T,
    read: impl Fn(&ConfigValue) -> Option<T>,
) -> Result<T> {
    match config.get(key) {
        None => Ok(default),
        Some(v) => read(v).ok_or_else(|| StationError::Setting {
            key: key.into(),
            reason: format!("{v:?} has the wrong type or range"),
        }),
    }
}

/// The wire form of a round's fit settings (see the module docs).
pub fn fit_config_to_wire(config: &Config, delivery: &UpdateDelivery) -> Result<TrainConfig> {
    let d = default_train_config();
    let epoch_key = if config.contains_key(EPOCHS_KEY) {
        EPOCHS_KEY
    } else {
        "epochs"
    };
    let epochs = typed_or(config, epoch_key, d.epochs as u32, |v| {
        v.as_i64().and_then(|i| u32::try_from(i).ok())
    })?;
    let batch_size = typed_or(config, BATCH_SIZE_KEY, d.batch_size as u32, |v| {
        v.as_i64().and_then(|i| u32::try_from(i).ok())
    })?;
    let lr = typed_or(config, LR_KEY, d.lr, ConfigValue::as_f64)?;
    let mu = typed_or(config, PROXIMAL_MU_KEY, 0.0, ConfigValue::as_f64)?;
    let seed = typed_or(config, SEED_KEY, d.seed, |v| v.as_i64().map(|i| i as u64))?;
    let round = typed_or(config, SERVER_ROUND_KEY, 0, |v| {
        v.as_i64().map(|i| i as u64)
    })?;
    let extensions = config
        .iter()
        .filter(|(k, _)| {
            ![
                EPOCHS_KEY,
                "epochs",
                BATCH_SIZE_KEY,
                LR_KEY,
                PROXIMAL_MU_KEY,
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), to_scalar(v)))
        .collect();
    Ok(TrainConfig {
        epochs,
        lr,
        batch_size,
        mu,
        deadline_ms: u64::try_from(delivery.deadline.as_millis()).unwrap_or(u64::MAX),
        update_encoding: delivery.encoding,
        send_delta: delivery.send_delta,
        seed: round_seed(seed, round),
        extensions,
    })
}

/// The round's fit settings rebuilt from their wire form; `round` is the
/// RoundStart's round, which wins over any `server_round` extension.
pub fn fit_config_from_wire(tc: &TrainConfig, round: u64) -> Result<Config> {
    let mut config = Config::new();
    for (k, v) in &tc.extensions {
        config.insert(k.clone(), from_scalar(k, v)?);
    }
    config.insert(EPOCHS_KEY.into(), ConfigValue::Int(i64::from(tc.epochs)));
    config.insert(
        BATCH_SIZE_KEY.into(),
        ConfigValue::Int(i64::from(tc.batch_size)),
    );
    config.insert(LR_KEY.into(), ConfigValue::Float(tc.lr));
    config.insert(PROXIMAL_MU_KEY.into(), ConfigValue::Float(tc.mu));
    config.insert(
        SERVER_ROUND_KEY.into(),
        ConfigValue::Int(i64::try_from(round).unwrap_or(i64::MAX)),
    );
    Ok(config)
}

/// Evaluation settings as the request's extension map.
pub fn eval_config_to_wire(config: &Config) -> Extensions {
    config
        .iter()
        .map(|(k, v)| (k.clone(), to_scalar(v)))
        .collect()
}

/// Evaluation settings rebuilt from the request's extension map.
pub fn eval_config_from_wire(ext: &Extensions, round: u64) -> Result<Config> {
    let mut config = Config::new();
    for (k, v) in ext {
        config.insert(k.clone(), from_scalar(k, v)?);
    }
    config.insert(
        SERVER_ROUND_KEY.into(),
        ConfigValue::Int(i64::try_from(round).unwrap_or(i64::MAX)),
    );
    Ok(config)
}
