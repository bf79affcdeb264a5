//! The mapping between the round engine's vocabulary and the wire protocol's.
//!
//! - Fit settings are one typed `RoundSettings` from the server's config to
//!   the station's trainer: [`round_start`] puts the engine's fit request on
//!   the wire as is, [`fit_ins`] takes it off, so a station over QUIC trains
//!   exactly as one driven in memory.
//! - Evaluation settings travel as the request's extension map.
//! - The run's description ([`RunSetup`]: model architecture, task, shared
//!   featurizer) travels as JSON in the Welcome's extensions, so stations
//!   never disagree with the server about what they train.

use std::sync::Arc;

use super::{Result, StationError};
use fedcrime_data::{Featurizer, TaskConfig};
use fedcrime_fl::engine::SERVER_ROUND_KEY;
use fedcrime_fl::{Config, ConfigValue, FitIns};
use fedcrime_ml::model::ModelConfig;
use fedcrime_params::Params;
use fedcrime_wire::{Encoding, Extensions, ModelHeader, RoundStart, Scalar};

/// Welcome extension: the model architecture ([`ModelConfig`] as JSON).
pub(crate) const EXT_MODEL_CONFIG: &str = "fedcrime.model_config";
/// Welcome extension: the task ([`TaskConfig`] as JSON).
pub(crate) const EXT_TASK_CONFIG: &str = "fedcrime.task_config";
/// Welcome extension: the shared featurizer ([`Featurizer`] as JSON), when the run has one.
pub(crate) const EXT_FEATURIZER: &str = "fedcrime.featurizer";

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
pub(crate) fn to_scalar(v: &ConfigValue) -> Scalar {
    match v {
        ConfigValue::Bool(b) => Scalar::Bool(*b),
        ConfigValue::Int(i) => Scalar::Int(*i),
        ConfigValue::Float(f) => Scalar::Float(*f),
        ConfigValue::Str(s) => Scalar::Str(s.clone()),
    }
}

/// An extension value as a round setting (bytes have no counterpart).
pub(crate) fn from_scalar(key: &str, s: &Scalar) -> Result<ConfigValue> {
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
    /// Encoding of the update's tensors.
    pub encoding: Encoding,
    /// Send `trained - global` instead of the trained parameters.
    pub send_delta: bool,
}

/// The RoundStart that carries the engine's fit request `ins` (whose global
/// model is described by `model`) to a station.
pub fn round_start(ins: &FitIns, delivery: UpdateDelivery, model: ModelHeader) -> RoundStart {
    RoundStart {
        round: ins.round,
        settings: (*ins.settings).clone(),
        update_encoding: delivery.encoding,
        send_delta: delivery.send_delta,
        model,
    }
}

/// The fit request a station received as `rs`, with the global model that
/// followed it.
pub fn fit_ins(rs: &RoundStart, global: Arc<Params>) -> FitIns {
    FitIns {
        global,
        round: rs.round,
        settings: Arc::new(rs.settings.clone()),
    }
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
