//! `dnn`: a multi-layer perceptron over the flat features.
//!
//! `layers` hidden layers of width `hidden`, each Linear -> ReLU -> Dropout,
//! then a linear head (`[b, classes]` logits for risk, `[b, dim]` log-rates or
//! counts for counts). Parameter names match a PyTorch module with
//! `self.hidden = nn.ModuleList([...])` and `self.head = nn.Linear(...)`:
//! `hidden.0.weight`, `hidden.0.bias`, ..., `head.weight`, `head.bias`.
//!
//! Counts add a linear path from the flat features straight to the output,
//! `area.weight` (`[dim, input_dim]`, no bias; PyTorch:
//! `y = head(h) + x @ area.weight.T`), zero at the start except, with an
//! area prior ([`ModelConfig::area_prior`]), each area's offset on its
//! one-hot column: the untrained model predicts each area's training mean rate
//! (the per-area-mean baseline) and training learns the deviation from it.
//! A month of one area's days is a few dozen samples; without this start
//! the MLP does not even reach the per-area mean in the steps it gets, and
//! a federation of one station per area (which averages each area's offset
//! with 20 stations that never see it) falls below that baseline.

use std::ops::Range;

use tch::{nn, Device, Kind, Tensor};

use super::config::ModelConfig;
use super::dp::{align_to_trainable, clip_factors, DpGrads};
use super::error::{ModelError, Result};
use super::layers::{
    area_prior_weights, class_weights, linear, prior_bias, set_bias, task_loss, task_predict,
    task_sample_losses,
};
use super::stages::{index_after, share_linear, Layers};
use super::{Batch, CrimeModel, ModelKind};
use fedcrime_data::Task;

/// The MLP.
#[derive(Debug)]
pub struct Dnn {
    vs: nn::VarStore,
    net: DnnNet,
}

/// The MLP's computation (see [`Layers`]): units `0..layers` are the hidden
/// layers, unit `layers` the head with the direct path.
#[derive(Debug)]
struct DnnNet {
    cfg: ModelConfig,
    hidden: Vec<nn::Linear>,
    head: nn::Linear,
    /// The direct path from the features to the output (counts).
    area: Option<Tensor>,
    class_weights: Option<Tensor>,
}

impl DnnNet {
    /// Shallow handles on the same variables; class weights on `device`.
    fn share(&self, device: Device) -> Self {
        DnnNet {
            cfg: self.cfg.clone(),
            hidden: self.hidden.iter().map(share_linear).collect(),
            head: share_linear(&self.head),
            area: self.area.as_ref().map(Tensor::shallow_clone),
            class_weights: self.class_weights.as_ref().map(|w| w.to_device(device)),
        }
    }
}

impl DnnNet {
    /// DP-SGD's clipped per-sample gradient sum in one backward pass (see
    /// [`CrimeModel::dp_clipped_grad_sum`]).
    ///
    /// Every parameter is a linear map: for layer `l` with input `a_l`
    /// (`[b, in]`) and output `s_l = a_l W^T + bias` (`[b, out]`), sample
    /// `i`'s gradient is `g_li a_li^T` for `W` and `g_li` for the bias, where
    /// `g_l = dL/ds_l` for `L` the *sum* of the per-sample losses (sample
    /// `i`'s loss depends on row `i` only, so row `i` of `g_l` is its own).
    /// One backward pass to the `s_l` gives every `g_l`; sample `i`'s squared
    /// norm is `sum_l ||g_li||^2 (||a_li||^2 + 1)` (the Frobenius norm of a
    /// rank-one matrix, "ghost clipping"), plus `||g_out,i||^2 ||x_i||^2` for
    /// the bias-free direct path `area` (counts), which shares the output's
    /// gradient; and the clipped sums are `(c * g_l)^T a_l` and
    /// `sum_i c_i g_li`. No per-sample gradient is ever materialized.
    fn dp_grads(&self, vs: &nn::VarStore, batch: &Batch, clip: f64) -> Result<DpGrads> {
        let x = &batch.features;
        // (input, pre-activation output) of each hidden layer, then the head.
        let mut records: Vec<(Tensor, Tensor)> = Vec::with_capacity(self.hidden.len() + 1);
        let mut h = x.shallow_clone();
        for layer in &self.hidden {
            let s = h.apply(layer);
            let y = s.relu();
            let next = if self.cfg.dropout > 0.0 {
                y.dropout(self.cfg.dropout, true)
            } else {
                y
            };
            records.push((h, s));
            h = next;
        }
        let head = h.apply(&self.head);
        let out = match &self.area {
            Some(w) => head + x.matmul(&w.tr()),
            None => head,
        };
        records.push((h, out.shallow_clone()));
        let losses = task_sample_losses(&self.cfg, self.class_weights.as_ref(), &out, batch);
        let outputs: Vec<&Tensor> = records.iter().map(|(_, s)| s).collect();
        let g = Tensor::f_run_backward(&[losses.sum(Kind::Float)], &outputs, false, false)?;
        tch::no_grad(|| {
            let row_sq = |t: &Tensor| t.square().sum_dim_intlist(1, false, Kind::Float);
            let layers: Vec<&nn::Linear> = self.hidden.iter().chain([&self.head]).collect();
            let mut sq = Tensor::zeros([batch.len() as i64], (Kind::Float, x.device()));
            for ((a, _), (g, layer)) in records.iter().zip(g.iter().zip(&layers)) {
                let bias = if layer.bs.is_some() { 1.0 } else { 0.0 };
                sq += row_sq(g) * (row_sq(&a.detach()) + bias);
            }
            let g_out = &g[g.len() - 1];
            if self.area.is_some() {
                sq += row_sq(g_out) * row_sq(x);
            }
            let norms = sq.sqrt();
            let c = clip_factors(&norms, clip).unsqueeze(1);
            let mut pairs = Vec::with_capacity(2 * layers.len() + 1);
            for ((a, _), (g, layer)) in records.iter().zip(g.iter().zip(&layers)) {
                let cg = g * &c;
                pairs.push((layer.ws.shallow_clone(), cg.tr().matmul(&a.detach())));
                if let Some(bs) = &layer.bs {
                    pairs.push((
                        bs.shallow_clone(),
                        cg.sum_dim_intlist(0, false, Kind::Float),
                    ));
                }
            }
            if let Some(w) = &self.area {
                pairs.push((w.shallow_clone(), (g_out * &c).tr().matmul(x)));
            }
            Ok(DpGrads {
                losses: losses.detach(),
                norms,
                grads: align_to_trainable(vs, pairs)?,
            })
        })
    }
}

impl Layers for DnnNet {
    fn units(&self) -> usize {
        self.hidden.len() + 1
    }

    fn forward_units(
        &self,
        range: Range<usize>,
        carried: Vec<Tensor>,
        batch: &Batch,
        train: bool,
    ) -> Vec<Tensor> {
        let mut x = match carried.into_iter().next() {
            Some(x) => x,
            None => batch.features.shallow_clone(),
        };
        for unit in range {
            x = match self.hidden.get(unit) {
                Some(layer) => {
                    let y = x.apply(layer).relu();
                    if self.cfg.dropout > 0.0 {
                        y.dropout(self.cfg.dropout, train)
                    } else {
                        y
                    }
                }
                None => {
                    let out = x.apply(&self.head);
                    match &self.area {
                        Some(w) => out + batch.features.matmul(&w.tr()),
                        None => out,
                    }
                }
            };
        }
        vec![x]
    }

    fn loss(&self, output: &Tensor, batch: &Batch) -> Tensor {
        task_loss(&self.cfg, self.class_weights.as_ref(), output, batch)
    }

    fn unit_of(&self, name: &str) -> Option<usize> {
        if name.starts_with("head.") || name.starts_with("area.") {
            Some(self.hidden.len())
        } else {
            index_after(name, "hidden.").filter(|&i| i < self.hidden.len())
        }
    }
}

impl Dnn {
    /// Builds the MLP described by `cfg` (which must be a valid dnn config)
    /// with freshly initialized parameters on `device`.
    pub fn new(cfg: &ModelConfig, device: Device) -> Result<Self> {
        if cfg.kind != ModelKind::Dnn {
            return Err(ModelError::config(
                "kind",
                format!("{} config given to the dnn builder", cfg.kind),
            ));
        }
        cfg.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut hidden = Vec::with_capacity(cfg.layers);
        let mut width = cfg.input_dim;
        for i in 0..cfg.layers {
            hidden.push(linear(&root / "hidden" / i, width, cfg.hidden));
            width = cfg.hidden;
        }
        let mut head = linear(&root / "head", width, cfg.output_dim);
        if let (Some(bias), Some(values)) = (head.bs.as_mut(), prior_bias(cfg)) {
            set_bias(bias, &values)?;
        }
        // Counts: the direct path, zero unless an area prior sets each
        // area's offset. Present for every counts config, so the layout
        // never depends on the data (a server without data builds the same).
        let area = if cfg.task == Task::Counts {
            let (d, n) = (cfg.output_dim as i64, cfg.input_dim as i64);
            let mut t = (&root / "area").var("weight", &[d, n], nn::Init::Const(0.0));
            if let Some(w) = area_prior_weights(cfg) {
                let init = Tensor::f_from_slice(&w)?
                    .f_view([d, n])?
                    .f_to_device(device)?;
                tch::no_grad(|| t.f_copy_(&init))?;
            }
            Some(t)
        } else {
            None
        };
        let net = DnnNet {
            cfg: cfg.clone(),
            class_weights: class_weights(cfg, device)?,
            hidden,
            head,
            area,
        };
        Ok(Dnn { vs, net })
    }
}

impl CrimeModel for Dnn {
    fn kind(&self) -> ModelKind {
        ModelKind::Dnn
    }

    fn task(&self) -> Task {
        self.net.cfg.task
    }

    fn config(&self) -> &ModelConfig {
        &self.net.cfg
    }

    fn forward_t(&self, batch: &Batch, train: bool) -> Tensor {
        self.net.forward_all(batch, train)
    }

    fn loss(&self, output: &Tensor, batch: &Batch) -> Tensor {
        self.net.loss(output, batch)
    }

    fn sample_losses(&self, output: &Tensor, batch: &Batch) -> Tensor {
        task_sample_losses(
            &self.net.cfg,
            self.net.class_weights.as_ref(),
            output,
            batch,
        )
    }

    /// The vectorised path: one forward and one backward pass per batch
    /// (see the MLP's `dp_grads`: per-sample norms from each linear layer's
    /// input and output gradient).
    fn dp_clipped_grad_sum(&self, batch: &Batch, clip: f64) -> Option<Result<DpGrads>> {
        Some(self.net.dp_grads(&self.vs, batch, clip))
    }

    fn predict(&self, output: &Tensor) -> Tensor {
        task_predict(&self.net.cfg, output)
    }

    fn layers(&self, device: Device) -> Box<dyn Layers> {
        Box::new(self.net.share(device))
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::one_thread;
    use crate::model::test_util::{counts_dataset, risk_dataset, train_full_batch};
    use crate::model::{build, to_batch};

    #[test]
    fn names_and_shapes_follow_the_config() {
        one_thread();
        let ds = risk_dataset(16, 7);
        let cfg = ModelConfig::for_dataset(ModelKind::Dnn, &ds);
        let model = Dnn::new(&cfg, Device::Cpu).unwrap();
        let spec = model.param_spec();
        let names: Vec<_> = spec.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "head.bias",
                "head.weight",
                "hidden.0.bias",
                "hidden.0.weight",
                "hidden.1.bias",
                "hidden.1.weight",
                "hidden.2.bias",
                "hidden.2.weight"
            ]
        );
        assert_eq!(spec.get("hidden.0.weight").unwrap().shape, vec![128, 7]);
        assert_eq!(spec.get("head.weight").unwrap().shape, vec![5, 128]);
        assert_eq!(
            model.num_params(),
            7 * 128 + 128 + 2 * (128 * 128 + 128) + 128 * 5 + 5
        );
    }

    #[test]
    fn head_bias_starts_at_the_prior() {
        one_thread();
        let ds = counts_dataset(32, 6, 4, 3);
        let cfg = ModelConfig::for_dataset(ModelKind::Dnn, &ds);
        let model = Dnn::new(&cfg, Device::Cpu).unwrap();
        let bias = Vec::<f32>::try_from(&model.vs.variables()["head.bias"]).unwrap();
        let prior = cfg.target_prior.unwrap();
        for (b, p) in bias.iter().zip(&prior) {
            assert!((b - p.max(1e-3).ln()).abs() < 1e-6, "{b} vs {p}");
        }
    }

    #[test]
    fn risk_and_counts_train_down() {
        one_thread();
        for ds in [risk_dataset(64, 6), counts_dataset(64, 6, 4, 3)] {
            tch::manual_seed(0);
            let cfg = ModelConfig::for_dataset(ModelKind::Dnn, &ds);
            let model = build(&cfg, Device::Cpu).unwrap();
            let idx: Vec<usize> = (0..ds.len()).collect();
            let batch = to_batch(&ds, &idx, Device::Cpu);
            let (first, last) = train_full_batch(model.as_ref(), &batch, 60, 1e-2);
            assert!(last < first * 0.8, "{:?}: {first} -> {last}", ds.task);
            let (loss, pred) = model.evaluate(&batch);
            assert!((loss - last).abs() < 1e-9, "{loss} vs {last}");
            assert_eq!(pred.size()[0], 64);
            if ds.task == Task::Counts {
                assert!(f64::try_from(pred.min()).unwrap() >= 0.0);
            }
        }
    }

    #[test]
    fn wrong_kind_is_refused() {
        one_thread();
        let ds = risk_dataset(4, 3);
        let cfg = ModelConfig::for_dataset(ModelKind::Lstm, &ds);
        let err = Dnn::new(&cfg, Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("kind"), "{err}");
    }
}
