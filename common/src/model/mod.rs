//! The paper's models in tch: `dnn` (MLP), `lstm` (LSTMCrimeNet) and
//! `gat-tcn` (graph attention over the 21 areas + temporal convolutional
//! network), behind one trait the trainers and the federated code use.
//!
//! Every model keeps its parameters in a [`tch::nn::VarStore`] with sub-paths
//! named for their role; parameters are exchanged by name (see [`params`]) so a
//! mismatch between two models is an error, not silent garbage.
//!
//! - [`ModelConfig`] describes an architecture (serde; [`ModelConfig::for_dataset`]
//!   fills it from a dataset), [`build`] turns it into a `Box<dyn CrimeModel>`.
//! - [`export_params`] / [`import_params`] move parameters between a model and
//!   the federated [`Params`] buffer, by name, in name order.
//! - [`save_safetensors`] / [`load_safetensors`] store a model as a
//!   self-describing `.safetensors` file (config JSON in its metadata) that
//!   Python's `safetensors.torch.load_file` reads.
//! - [`to_batch`] and [`DatasetTensors`] turn [`Dataset`](crate::data::Dataset)
//!   rows into [`Batch`]es.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::data::Task;
use crate::params::{ParamSpec, Params};

mod batch;
pub mod config;
pub mod dnn;
mod error;
pub mod gat_tcn;
mod graph;
pub mod io;
mod layers;
pub mod lstm;
pub mod params;
#[cfg(test)]
pub(crate) mod test_util;

pub use batch::{to_batch, DatasetTensors};
pub use config::{CountLoss, ModelConfig, LAPD_AREAS};
pub use dnn::Dnn;
pub use error::{ModelError, Result};
pub use gat_tcn::{GatTcn, GatTcnTrace};
pub use graph::{graph_dataset, GraphWindows, DEFAULT_GRAPH_STEPS};
pub use io::{
    load_model, load_safetensors, read_metadata, save_model, save_safetensors, META_FORMAT,
    META_MODEL_CONFIG,
};
pub use lstm::Lstm;
pub use params::{export_params, export_params_into, import_params, num_params, param_spec};

/// Which architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModelKind {
    /// Multi-layer perceptron over the flat features.
    #[serde(rename = "dnn")]
    Dnn,
    /// LSTM over the sequence view, then a linear head (LSTMCrimeNet).
    #[serde(rename = "lstm")]
    Lstm,
    /// Graph attention over areas per time step, then a TCN over time.
    #[serde(rename = "gat-tcn")]
    GatTcn,
}

impl ModelKind {
    /// The name used on the command line and in files.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Dnn => "dnn",
            ModelKind::Lstm => "lstm",
            ModelKind::GatTcn => "gat-tcn",
        }
    }
}

impl std::str::FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dnn" => Ok(ModelKind::Dnn),
            "lstm" => Ok(ModelKind::Lstm),
            "gat-tcn" | "gat_tcn" | "gattcn" => Ok(ModelKind::GatTcn),
            other => Err(format!(
                "unknown model {other:?} (expected dnn, lstm or gat-tcn)"
            )),
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One mini-batch on the model's device.
#[derive(Debug)]
pub struct Batch {
    /// Flat features `[b, feature_dim]`, f32.
    pub features: Tensor,
    /// Sequence view `[b, steps, step_dim]`, f32, when the dataset has one.
    pub sequences: Option<Tensor>,
    /// Targets: i64 class indices `[b]` (risk) or f32 counts `[b, dim]` (counts).
    pub target: Tensor,
}

/// What every model offers to the trainers and the federated code.
///
/// `Send` so stations can train on worker threads.
pub trait CrimeModel: Send {
    /// The architecture.
    fn kind(&self) -> ModelKind;

    /// The task the model was built for (decides the loss and metrics).
    fn task(&self) -> Task;

    /// Forward pass: logits `[b, classes]` for risk; for counts `[b, dim]` in
    /// the model's output space (e.g. log-rates), see [`CrimeModel::predict`].
    fn forward_t(&self, batch: &Batch, train: bool) -> Tensor;

    /// The scalar training loss of `output` (from `forward_t`) against the batch targets.
    fn loss(&self, output: &Tensor, batch: &Batch) -> Tensor;

    /// Turns `forward_t` output into what metrics compare with targets:
    /// class indices for risk, non-negative expected counts for counts.
    fn predict(&self, output: &Tensor) -> Tensor;

    /// The variables, named by role.
    fn var_store(&self) -> &nn::VarStore;

    /// The variables, mutable (for optimizers and imports).
    fn var_store_mut(&mut self) -> &mut nn::VarStore;

    /// The config the model was built from.
    fn config(&self) -> &ModelConfig;

    /// The device the parameters live on.
    fn device(&self) -> Device {
        self.var_store().device()
    }

    /// Number of scalar parameters.
    fn num_params(&self) -> usize {
        params::num_params(self.var_store())
    }

    /// The parameter layout (names sorted, shapes).
    fn param_spec(&self) -> Arc<ParamSpec> {
        params::param_spec(self.var_store())
    }

    /// The parameters as one flat buffer, ordered by name.
    fn export_params(&self) -> Params {
        params::export_params(self.var_store())
    }

    /// Overwrites the parameters with `p`, matched by name; errors name the
    /// first missing, foreign or misshapen tensor (nothing is written then).
    fn import_params(&mut self, p: &Params) -> Result<()> {
        params::import_params(self.var_store_mut(), p)
    }

    /// A new model of the same config on `device` with a copy of these
    /// parameters (a data-parallel replica).
    fn replicate(&self, device: Device) -> Result<Box<dyn CrimeModel>> {
        let mut copy = build(self.config(), device)?;
        copy.var_store_mut().copy(self.var_store())?;
        Ok(copy)
    }
}

impl std::fmt::Debug for dyn CrimeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrimeModel")
            .field("kind", &self.kind())
            .field("task", &self.task())
            .field("device", &self.device())
            .field("num_params", &self.num_params())
            .finish()
    }
}

/// Builds the model `cfg` describes, with freshly initialized parameters on
/// `device` (seed with `tch::manual_seed` first for reproducible weights).
/// The config is validated first.
pub fn build(cfg: &ModelConfig, device: Device) -> Result<Box<dyn CrimeModel>> {
    cfg.validate()?;
    Ok(match cfg.kind {
        ModelKind::Dnn => Box::new(Dnn::new(cfg, device)?),
        ModelKind::Lstm => Box::new(Lstm::new(cfg, device)?),
        ModelKind::GatTcn => Box::new(GatTcn::new(cfg, device)?),
    })
}
