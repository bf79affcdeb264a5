//! `lstm` (LSTMCrimeNet): an LSTM over the sequence view, then a linear head.
//!
//! The LSTM (`hidden` units, `layers` stacked layers, batch-first) reads the
//! `[b, steps, step_dim]` sequence; the last layer's final hidden state goes
//! through dropout and, next to the flat features when
//! `static_features` is on (the sequence carries only past counts; the flat
//! features say which weekday, hour and area the prediction is for), into a
//! linear head. One call to libtorch's fused `lstm` kernel (cuDNN on a GPU)
//! runs the whole sequence.
//!
//! Parameter names and initialization match PyTorch's `nn.LSTM` registered as
//! `self.lstm` plus `self.head = nn.Linear(...)`: `lstm.weight_ih_l0`,
//! `lstm.weight_hh_l0`, `lstm.bias_ih_l0`, `lstm.bias_hh_l0`, ...,
//! `head.weight`, `head.bias` (gates in PyTorch's i, f, g, o order).

use tch::{nn, Device, Kind, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::layers::{class_weights, linear, prior_bias, set_bias, task_loss, task_predict};
use super::{Batch, CrimeModel, ModelKind};
use fedcrime_data::Task;

/// LSTMCrimeNet.
#[derive(Debug)]
pub struct Lstm {
    cfg: ModelConfig,
    vs: nn::VarStore,
    /// Per layer: `w_ih, w_hh, b_ih, b_hh`, the order libtorch's `lstm` takes.
    weights: Vec<Tensor>,
    head: nn::Linear,
    use_features: bool,
    class_weights: Option<Tensor>,
}

impl Lstm {
    /// Builds the network described by `cfg` (a valid lstm config) with
    /// freshly initialized parameters on `device`.
    pub fn new(cfg: &ModelConfig, device: Device) -> Result<Self> {
        if cfg.kind != ModelKind::Lstm {
            return Err(ModelError::config(
                "kind",
                format!("{} config given to the lstm builder", cfg.kind),
            ));
        }
        cfg.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let lstm = &root / "lstm";
        let h = cfg.hidden as i64;
        // PyTorch's nn.LSTM: every weight and bias uniform in +-1/sqrt(hidden).
        let bound = 1.0 / (cfg.hidden as f64).sqrt();
        let init = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let mut weights = Vec::with_capacity(4 * cfg.layers);
        for l in 0..cfg.layers {
            let in_dim = if l == 0 { cfg.seq_dim as i64 } else { h };
            weights.push(lstm.var(&format!("weight_ih_l{l}"), &[4 * h, in_dim], init));
            weights.push(lstm.var(&format!("weight_hh_l{l}"), &[4 * h, h], init));
            weights.push(lstm.var(&format!("bias_ih_l{l}"), &[4 * h], init));
            weights.push(lstm.var(&format!("bias_hh_l{l}"), &[4 * h], init));
        }
        if device.is_cuda() && tch::Cuda::cudnn_is_available() {
            // Makes the weights views into one cuDNN-layout buffer (as
            // PyTorch's `flatten_parameters`), so cuDNN does not re-pack
            // them on every call. Imports copy in place and keep the views.
            let _ = Tensor::f_internal_cudnn_rnn_flatten_weight(
                &weights,
                4,
                cfg.seq_dim as i64,
                2, // LSTM, see aten/src/ATen/native/cudnn/RNN.cpp
                h,
                0,
                cfg.layers as i64,
                true,
                false,
            )?;
        }
        let use_features = cfg.static_features && cfg.input_dim > 0;
        let head_in = cfg.hidden + if use_features { cfg.input_dim } else { 0 };
        let mut head = linear(&root / "head", head_in, cfg.output_dim);
        if let (Some(bias), Some(values)) = (head.bs.as_mut(), prior_bias(cfg)) {
            set_bias(bias, &values)?;
        }
        Ok(Lstm {
            cfg: cfg.clone(),
            class_weights: class_weights(cfg, device)?,
            vs,
            weights,
            head,
            use_features,
        })
    }

    /// The final hidden state of the last layer, `[b, hidden]`.
    ///
    /// # Panics
    /// When the batch has no sequence view (a dataset without one cannot
    /// produce an lstm config that validates).
    pub fn encode(&self, batch: &Batch, train: bool) -> Tensor {
        let seq = batch
            .sequences
            .as_ref()
            .unwrap_or_else(|| panic!("the lstm model needs batches with a sequence view"));
        let b = seq.size()[0];
        let layers = self.cfg.layers as i64;
        let zeros = Tensor::zeros(
            [layers, b, self.cfg.hidden as i64],
            (Kind::Float, seq.device()),
        );
        let (_, h, _) = seq.lstm(
            &[&zeros, &zeros],
            &self.weights.iter().collect::<Vec<_>>(),
            true,
            layers,
            self.cfg.dropout,
            train,
            false,
            true,
        );
        h.select(0, layers - 1)
    }
}

impl CrimeModel for Lstm {
    fn kind(&self) -> ModelKind {
        ModelKind::Lstm
    }

    fn task(&self) -> Task {
        self.cfg.task
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward_t(&self, batch: &Batch, train: bool) -> Tensor {
        let mut x = self.encode(batch, train);
        if self.cfg.dropout > 0.0 {
            x = x.dropout(self.cfg.dropout, train);
        }
        if self.use_features {
            x = Tensor::cat(&[&x, &batch.features], 1);
        }
        x.apply(&self.head)
    }

    fn loss(&self, output: &Tensor, batch: &Batch) -> Tensor {
        task_loss(&self.cfg, self.class_weights.as_ref(), output, batch)
    }

    fn predict(&self, output: &Tensor) -> Tensor {
        task_predict(&self.cfg, output)
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
    fn names_follow_pytorch() {
        one_thread();
        let ds = counts_dataset(8, 5, 4, 3);
        let mut cfg = ModelConfig::for_dataset(ModelKind::Lstm, &ds);
        cfg.layers = 2;
        cfg.hidden = 16;
        let model = Lstm::new(&cfg, Device::Cpu).unwrap();
        let spec = model.param_spec();
        let shape = |n: &str| spec.get(n).unwrap().shape.clone();
        assert_eq!(spec.len(), 10);
        assert_eq!(shape("lstm.weight_ih_l0"), [64, 3]);
        assert_eq!(shape("lstm.weight_ih_l1"), [64, 16]);
        assert_eq!(shape("lstm.weight_hh_l1"), [64, 16]);
        assert_eq!(shape("lstm.bias_hh_l0"), [64]);
        assert_eq!(shape("head.weight"), [3, 16 + 5]);
        cfg.static_features = false;
        let model = Lstm::new(&cfg, Device::Cpu).unwrap();
        assert_eq!(
            model.param_spec().get("head.weight").unwrap().shape,
            [3, 16]
        );
    }

    #[test]
    fn last_hidden_state_equals_the_last_output() {
        one_thread();
        // Checks the fused call against a step-by-step reference cell.
        tch::manual_seed(3);
        let ds = counts_dataset(5, 2, 3, 2);
        let mut cfg = ModelConfig::for_dataset(ModelKind::Lstm, &ds);
        cfg.hidden = 4;
        cfg.dropout = 0.0;
        let model = Lstm::new(&cfg, Device::Cpu).unwrap();
        let batch = to_batch(&ds, &[0, 1, 2, 3, 4], Device::Cpu);
        let got = model.encode(&batch, false);
        let [w_ih, w_hh, b_ih, b_hh] = &model.weights[..] else {
            unreachable!()
        };
        let seq = batch.sequences.as_ref().unwrap();
        let mut h = Tensor::zeros([5, 4], (Kind::Float, Device::Cpu));
        let mut c = h.zeros_like();
        for t in 0..3 {
            let gates = seq.select(1, t).linear(w_ih, Some(b_ih)) + h.linear(w_hh, Some(b_hh));
            let g = gates.chunk(4, 1);
            let (i, f, cell, o) = (g[0].sigmoid(), g[1].sigmoid(), g[2].tanh(), g[3].sigmoid());
            c = f * &c + i * cell;
            h = o * c.tanh();
        }
        assert!(got.allclose(&h, 1e-5, 1e-6, false));
    }

    #[test]
    fn risk_and_counts_train_down() {
        one_thread();
        let mut risk = risk_dataset(64, 4);
        // Give the risk samples a sequence view carrying the signal.
        risk.sequences = Some(fedcrime_data::Sequences {
            data: risk.features.iter().flat_map(|&v| [v, 1.0 - v]).collect(),
            steps: 4,
            step_dim: 2,
        });
        for ds in [risk, counts_dataset(64, 3, 4, 3)] {
            tch::manual_seed(0);
            let mut cfg = ModelConfig::for_dataset(ModelKind::Lstm, &ds);
            cfg.hidden = 32;
            let model = build(&cfg, Device::Cpu).unwrap();
            let idx: Vec<usize> = (0..ds.len()).collect();
            let batch = to_batch(&ds, &idx, Device::Cpu);
            let (first, last) = train_full_batch(model.as_ref(), &batch, 40, 1e-2);
            assert!(last < first * 0.8, "{:?}: {first} -> {last}", ds.task);
        }
    }

    #[test]
    fn dropout_only_in_training() {
        one_thread();
        tch::manual_seed(5);
        let ds = counts_dataset(16, 3, 4, 3);
        let mut cfg = ModelConfig::for_dataset(ModelKind::Lstm, &ds);
        cfg.dropout = 0.5;
        cfg.layers = 2;
        let model = Lstm::new(&cfg, Device::Cpu).unwrap();
        let batch = to_batch(&ds, &(0..16).collect::<Vec<_>>(), Device::Cpu);
        let a = model.forward_t(&batch, false);
        assert!(a.equal(&model.forward_t(&batch, false)));
        assert!(!a.equal(&model.forward_t(&batch, true)));
    }
}
