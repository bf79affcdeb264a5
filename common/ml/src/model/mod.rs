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
//! - [`save_model`] / [`load_model`] (over [`save_safetensors`] /
//!   [`load_safetensors`]) store a model as a self-describing `.safetensors`
//!   file (config JSON in its metadata) that Python's
//!   `safetensors.torch.load_file` reads.
//! - [`dp`]: per-sample clipped gradients for DP-SGD
//!   ([`CrimeModel::dp_clipped_grad_sum`], vectorised for the DNN; one
//!   backward pass per sample otherwise).
//! - [`stages`]: a model's layers as consecutive units that pipeline stages
//!   (model parallelism) run on their own threads and devices.
//! - [`to_batch`] and [`DatasetTensors`] turn [`Dataset`](fedcrime_data::Dataset)
//!   rows into [`Batch`]es; [`graph_splits`] turns the `counts` task's
//!   [`GraphSeries`](fedcrime_data::GraphSeries) into the gat-tcn's samples,
//!   [`AreaGraph::splits`] into those of a subgraph (a bureau station's).
//!
//! Models run wherever their [`tch::Device`] says; tests seed with
//! `tch::manual_seed` and run on the CPU (the `cuda-tests` feature adds a
//! CPU/GPU equivalence test).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use fedcrime_data::Task;
use fedcrime_params::{ParamSpec, Params};

mod batch;
pub mod config;
pub mod dnn;
pub mod dp;
mod error;
pub mod gat_tcn;
mod graph;
pub mod io;
mod layers;
pub mod lstm;
pub mod params;
#[cfg(test)]
mod quality_check;
pub mod stages;
#[cfg(test)]
pub(crate) mod test_util;

pub use batch::{to_batch, DatasetTensors};
pub use config::{AreaPrior, CountLoss, ModelConfig, LAPD_AREAS};
pub use dnn::Dnn;
pub use dp::DpGrads;
pub use error::{ModelError, Result};
pub use gat_tcn::{GatTcn, GatTcnTrace};
pub use graph::{
    area_levels, graph_dataset, graph_splits, AreaGraph, GraphWindows, DEFAULT_GRAPH_STEPS,
};
pub use io::{
    load_model, load_safetensors, read_metadata, save_model, save_safetensors, META_FORMAT,
    META_MODEL_CONFIG,
};
pub use lstm::Lstm;
pub use params::{
    export_params, export_params_into, import_params, num_params, param_spec, params_to_tensors,
};
pub use stages::Layers;

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

    /// Every sample's loss of `output` (from `forward_t`), `[b]`, with
    /// nothing mixed across samples (what DP-SGD differentiates and clips
    /// per sample): class-weighted cross-entropy `w[y_i] CE_i` (risk), the
    /// mean over the sample's count values (counts). Without class weights
    /// [`CrimeModel::loss`] is their mean; with them `loss` is their sum
    /// over `sum_i w[y_i]`. The default computes the task loss with the
    /// config's class weights; a model whose `loss` differs overrides it.
    fn sample_losses(&self, output: &Tensor, batch: &Batch) -> Tensor {
        let weights = match (self.task(), &self.config().class_weights) {
            (Task::Risk, Some(w)) => Some(Tensor::from_slice(w).to_device(output.device())),
            _ => None,
        };
        layers::task_sample_losses(self.config(), weights.as_ref(), output, batch)
    }

    /// DP-SGD's clipped per-sample gradient sum of `batch` (training mode,
    /// dropout on), computed by the model in a vectorised way: `None` (the
    /// default) when the model has no such path and the caller falls back to
    /// one backward pass per sample ([`dp::micro_batch_clipped_grad_sum`]).
    /// `clip` is the L2 bound `C > 0` on each sample's gradient over all
    /// trainable parameters jointly. An implementation must compute what
    /// the fallback computes (the gradients of [`CrimeModel::sample_losses`]
    /// of `forward_t(batch, true)`, up to rounding and dropout masks) and
    /// must not touch the variables' `.grad()`. See [`dp`].
    fn dp_clipped_grad_sum(&self, _batch: &Batch, _clip: f64) -> Option<Result<DpGrads>> {
        None
    }

    /// Turns `forward_t` output into what metrics compare with targets:
    /// class indices for risk, non-negative expected counts for counts.
    fn predict(&self, output: &Tensor) -> Tensor;

    /// The model's layers as consecutive units (see [`stages`]): shallow
    /// handles on these variables that run on another thread, with the
    /// model's non-variable constants (class weights, the graph mask)
    /// copied to `device`, where the caller puts the variables it runs.
    fn layers(&self, device: Device) -> Box<dyn Layers>;

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

    /// Evaluation-mode mean loss and predictions (see
    /// [`CrimeModel::predict`]) of a batch, without recording gradients.
    fn evaluate(&self, batch: &Batch) -> (f64, Tensor) {
        tch::no_grad(|| {
            let output = self.forward_t(batch, false);
            let loss = self.loss(&output, batch).double_value(&[]);
            (loss, self.predict(&output))
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_data::{Dataset, Sequences, Target};
    use tch::nn::OptimizerConfig;

    /// Training-step throughput of dnn (risk) and lstm (counts) at batch 256,
    /// for comparison with the same step in PyTorch. Not a correctness test:
    /// `cargo test -p fedcrime-ml --lib model::tests::train_step_throughput -- --ignored --nocapture`
    /// (FEDCRIME_BENCH_THREADS sets torch's intra-op threads).
    #[test]
    #[ignore]
    fn train_step_throughput() {
        if let Some(t) = std::env::var("FEDCRIME_BENCH_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            tch::set_num_threads(t);
        }
        let (b, input) = (256usize, 64usize);
        let n = 10 * b;
        let features: Vec<f32> = (0..n * input)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let risk = Dataset {
            task: Task::Risk,
            features: features.clone(),
            feature_dim: input,
            feature_names: vec![String::new(); input],
            sequences: None,
            target: Target::Classes {
                labels: (0..n).map(|i| (i % 5) as i64).collect(),
                num_classes: 5,
            },
            area: vec![1; n],
            time: vec![0; n],
        };
        let counts = Dataset {
            task: Task::Counts,
            features,
            feature_dim: input,
            feature_names: vec![String::new(); input],
            sequences: Some(Sequences {
                data: (0..n * 32)
                    .map(|i| ((i * 31) % 100) as f32 / 100.0)
                    .collect(),
                steps: 4,
                step_dim: 8,
            }),
            target: Target::Counts {
                values: (0..n * 8).map(|i| (i % 4) as f32).collect(),
                dim: 8,
            },
            area: vec![1; n],
            time: vec![0; n],
        };
        for (kind, ds) in [(ModelKind::Dnn, risk), (ModelKind::Lstm, counts)] {
            tch::manual_seed(0);
            let cfg = ModelConfig::for_dataset(kind, &ds);
            let model = build(&cfg, Device::Cpu).unwrap();
            let mut opt = nn::Adam::default().build(model.var_store(), 1e-3).unwrap();
            let batches: Vec<Batch> = (0..10)
                .map(|k| to_batch(&ds, &(k * b..(k + 1) * b).collect::<Vec<_>>(), Device::Cpu))
                .collect();
            let step = |i: usize, opt: &mut nn::Optimizer| {
                let batch = &batches[i % 10];
                let loss = model.loss(&model.forward_t(batch, true), batch);
                opt.backward_step(&loss);
            };
            for i in 0..30 {
                step(i, &mut opt);
            }
            let steps = 300;
            let t = std::time::Instant::now();
            for i in 0..steps {
                step(i, &mut opt);
            }
            let dt = t.elapsed().as_secs_f64();
            println!(
                "tch {kind} {}: {:.0} samples/s ({:.3} ms/step), threads {}",
                cfg.task,
                (steps * b) as f64 / dt,
                dt / steps as f64 * 1e3,
                tch::get_num_threads()
            );
        }
    }

    /// The models on a GPU compute what they compute on the CPU, and
    /// parameters and files move between the two unchanged.
    /// `cargo test -p fedcrime-ml --features cuda-tests --lib model::tests::cuda`
    #[cfg(feature = "cuda-tests")]
    #[test]
    fn cuda_models_match_cpu() {
        use crate::model::test_util::counts_dataset;
        crate::device::load_cuda_backend().unwrap();
        assert!(tch::Cuda::is_available(), "cuda-tests needs a CUDA device");
        let gpu = Device::Cuda(0);
        let counts = counts_dataset(32, 5, 4, 3);
        let graph = graph_dataset(
            &(0..21 * 20 * 8).map(|i| (i % 5) as f32).collect::<Vec<_>>(),
            21,
            20,
            8,
            0,
            0..20,
            &[2.0; 21 * 8],
            &GraphWindows::default(),
        )
        .unwrap();
        for (kind, ds) in [
            (ModelKind::Dnn, &counts),
            (ModelKind::Lstm, &counts),
            (ModelKind::GatTcn, &graph),
        ] {
            tch::manual_seed(0);
            let mut cfg = ModelConfig::for_dataset(kind, ds);
            cfg.dropout = 0.0;
            let cpu = build(&cfg, Device::Cpu).unwrap();
            let mut cuda = build(&cfg, gpu).unwrap();
            cuda.import_params(&cpu.export_params()).unwrap();
            assert_eq!(cuda.export_params(), cpu.export_params(), "{kind}");
            let idx: Vec<usize> = (0..ds.len().min(12)).collect();
            let batch = to_batch(ds, &idx, Device::Cpu);
            let on_gpu = to_batch(ds, &idx, gpu);
            let a = cpu.forward_t(&batch, false);
            let b = cuda.forward_t(&on_gpu, false).to_device(Device::Cpu);
            assert!(a.allclose(&b, 1e-4, 1e-4, false), "{kind}");
            // One optimizer step each: still the same model.
            let mut opt_c = nn::Adam::default().build(cpu.var_store(), 1e-3).unwrap();
            let mut opt_g = nn::Adam::default().build(cuda.var_store(), 1e-3).unwrap();
            opt_c.backward_step(&cpu.loss(&cpu.forward_t(&batch, true), &batch));
            opt_g.backward_step(&cuda.loss(&cuda.forward_t(&on_gpu, true), &on_gpu));
            let d = cpu
                .export_params()
                .l2_distance(&cuda.export_params())
                .unwrap();
            assert!(d < 1e-3, "{kind}: {d}");
            // Save on the GPU, load on the CPU.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.safetensors");
            save_model(cuda.as_ref(), &path, &Default::default()).unwrap();
            let (back, _) = load_model(&path, Device::Cpu).unwrap();
            assert_eq!(back.export_params(), cuda.export_params(), "{kind}");
            let replica = cuda.replicate(Device::Cpu).unwrap();
            assert_eq!(replica.export_params(), cuda.export_params(), "{kind}");
        }
    }
}
