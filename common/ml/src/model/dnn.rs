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

use tch::{nn, Device, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::layers::{
    area_prior_weights, class_weights, linear, prior_bias, set_bias, task_loss, task_predict,
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
