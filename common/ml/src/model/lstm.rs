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
//! On the counts task the head starts at each area's training mean rate
//! (see [`ModelConfig::area_prior`]): with only a few hundred samples (a
//! month of days x 21 areas) Adam cannot move the head's one-hot area
//! weights from their random start to the areas' log-rates before early
//! stopping, and the model then loses to the per-area mean.
//!
//! Parameter names and initialization match PyTorch's `nn.LSTM` registered as
//! `self.lstm` plus `self.head = nn.Linear(...)`: `lstm.weight_ih_l0`,
//! `lstm.weight_hh_l0`, `lstm.bias_ih_l0`, `lstm.bias_hh_l0`, ...,
//! `head.weight`, `head.bias` (gates in PyTorch's i, f, g, o order).

use std::ops::Range;

use tch::{nn, Device, Kind, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::layers::{
    area_prior_weights, class_weights, linear, prior_bias, set_bias, task_loss, task_predict,
    task_sample_losses,
};
use super::stages::{share_linear, Layers};
use super::{Batch, CrimeModel, ModelKind};
use fedcrime_data::Task;

/// LSTMCrimeNet.
#[derive(Debug)]
pub struct Lstm {
    vs: nn::VarStore,
    net: LstmNet,
}

/// LSTMCrimeNet's computation (see [`Layers`]): units `0..layers` are the
/// stacked LSTM layers, unit `layers` the head.
#[derive(Debug)]
struct LstmNet {
    cfg: ModelConfig,
    /// Per layer: `w_ih, w_hh, b_ih, b_hh`, the order libtorch's `lstm` takes.
    weights: Vec<Tensor>,
    head: nn::Linear,
    use_features: bool,
    class_weights: Option<Tensor>,
}

impl LstmNet {
    /// Shallow handles on the same variables; class weights on `device`.
    fn share(&self, device: Device) -> Self {
        LstmNet {
            cfg: self.cfg.clone(),
            weights: self.weights.iter().map(Tensor::shallow_clone).collect(),
            head: share_linear(&self.head),
            use_features: self.use_features,
            class_weights: self.class_weights.as_ref().map(|w| w.to_device(device)),
        }
    }

    /// LSTM layers `layers` (a non-empty range) on `input` `[b, T, in]`:
    /// one call to the fused kernel. Returns the last layer's output
    /// sequence `[b, T, hidden]` when more layers follow (after the dropout
    /// the fused call applies between layers), else its final hidden state
    /// `[b, hidden]`.
    fn lstm(&self, layers: Range<usize>, input: &Tensor, train: bool) -> Tensor {
        let n = layers.len() as i64;
        let b = input.size()[0];
        let zeros = Tensor::zeros(
            [n, b, self.cfg.hidden as i64],
            (Kind::Float, input.device()),
        );
        let weights: Vec<&Tensor> = self.weights[4 * layers.start..4 * layers.end]
            .iter()
            .collect();
        let (seq, h, _) = input.lstm(
            &[&zeros, &zeros],
            &weights,
            true,
            n,
            self.cfg.dropout,
            train,
            false,
            true,
        );
        if layers.end < self.cfg.layers {
            if self.cfg.dropout > 0.0 {
                seq.dropout(self.cfg.dropout, train)
            } else {
                seq
            }
        } else {
            h.select(0, n - 1)
        }
    }
}

impl Layers for LstmNet {
    fn units(&self) -> usize {
        self.cfg.layers + 1
    }

    fn forward_units(
        &self,
        range: Range<usize>,
        carried: Vec<Tensor>,
        batch: &Batch,
        train: bool,
    ) -> Vec<Tensor> {
        let layers = self.cfg.layers;
        let mut x = carried.into_iter().next();
        let lstm = range.start..range.end.min(layers);
        if !lstm.is_empty() {
            let input = match (&x, lstm.start) {
                (Some(x), s) if s > 0 => x.shallow_clone(),
                _ => batch
                    .sequences
                    .as_ref()
                    .unwrap_or_else(|| panic!("the lstm model needs batches with a sequence view"))
                    .shallow_clone(),
            };
            x = Some(self.lstm(lstm, &input, train));
        }
        let mut x = x.unwrap_or_else(|| panic!("the lstm head needs the LSTM's hidden state"));
        if range.end > layers {
            if self.cfg.dropout > 0.0 {
                x = x.dropout(self.cfg.dropout, train);
            }
            if self.use_features {
                x = Tensor::cat(&[&x, &batch.features], 1);
            }
            x = x.apply(&self.head);
        }
        vec![x]
    }

    fn loss(&self, output: &Tensor, batch: &Batch) -> Tensor {
        task_loss(&self.cfg, self.class_weights.as_ref(), output, batch)
    }

    fn unit_of(&self, name: &str) -> Option<usize> {
        if name.starts_with("head.") {
            return Some(self.cfg.layers);
        }
        let field = name.strip_prefix("lstm.")?;
        let layer: usize = field.rsplit_once("_l")?.1.parse().ok()?;
        (layer < self.cfg.layers).then_some(layer)
    }
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
        // Start at each area's mean rate: the flat-feature block of the head
        // (after the `hidden` columns) gets the per-area offsets.
        if let (true, Some(w)) = (use_features, area_prior_weights(cfg)) {
            let (d, n) = (cfg.output_dim as i64, cfg.input_dim as i64);
            let flat = Tensor::f_from_slice(&w)?
                .f_view([d, n])?
                .f_to_device(device)?;
            tch::no_grad(|| head.ws.f_narrow(1, h, n)?.f_copy_(&flat))?;
        }
        let net = LstmNet {
            cfg: cfg.clone(),
            class_weights: class_weights(cfg, device)?,
            weights,
            head,
            use_features,
        };
        Ok(Lstm { vs, net })
    }

    /// The final hidden state of the last layer, `[b, hidden]`.
    ///
    /// # Panics
    /// When the batch has no sequence view (a dataset without one cannot
    /// produce an lstm config that validates).
    pub fn encode(&self, batch: &Batch, train: bool) -> Tensor {
        let mut h = self
            .net
            .forward_units(0..self.net.cfg.layers, Vec::new(), batch, train);
        h.pop()
            .unwrap_or_else(|| unreachable!("a unit returns one tensor"))
    }
}

impl CrimeModel for Lstm {
    fn kind(&self) -> ModelKind {
        ModelKind::Lstm
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
        let [w_ih, w_hh, b_ih, b_hh] = &model.net.weights[..] else {
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

    /// A counts dataset whose flat features are one-hot areas (3 areas),
    /// area `a` seeing `a + 1` and `2 (a + 1)` incidents on average.
    fn area_dataset() -> fedcrime_data::Dataset {
        let n = 30;
        let features = (0..n)
            .flat_map(|i| (0..3).map(move |a| f32::from(u8::from(i % 3 == a))))
            .collect();
        let values = (0..n)
            .flat_map(|i| {
                let a = (i % 3) as f32;
                let jitter = if i % 2 == 0 { 0.5 } else { -0.5 };
                [a + 1.0 + jitter, 2.0 * (a + 1.0) - jitter]
            })
            .collect();
        let seq = fedcrime_data::Sequences {
            data: vec![0.0; n * 2 * 2],
            steps: 2,
            step_dim: 2,
        };
        let mut ds = crate::model::test_util::dataset(
            Task::Counts,
            features,
            3,
            Some(seq),
            fedcrime_data::Target::Counts { values, dim: 2 },
        );
        ds.feature_names = (1..=3).map(|a| format!("area_{a:02}")).collect();
        ds
    }

    #[test]
    fn counts_head_starts_at_each_areas_mean() {
        one_thread();
        let ds = area_dataset();
        let idx: Vec<usize> = (0..ds.len()).collect();
        let batch = to_batch(&ds, &idx, Device::Cpu);
        for loss in [
            crate::model::CountLoss::Poisson,
            crate::model::CountLoss::Mse,
        ] {
            let mut cfg = ModelConfig::for_dataset(ModelKind::Lstm, &ds);
            cfg.count_loss = loss;
            let p = cfg.area_prior.clone().expect("one-hot area columns");
            assert_eq!((p.column, p.areas), (0, 3));
            // Per-area means: the +-0.5 jitter cancels over each area's samples.
            assert_eq!(p.means, [1.0, 2.0, 2.0, 4.0, 3.0, 6.0]);
            let mut model = Lstm::new(&cfg, Device::Cpu).unwrap();
            // The LSTM's share of the head is random; without it the head
            // reads only the areas and predicts their means exactly.
            tch::no_grad(|| {
                let _ = model.net.head.ws.narrow(1, 0, cfg.hidden as i64).zero_();
            });
            let pred = model.predict(&model.forward_t(&batch, false));
            let want: Vec<f32> = (0..ds.len())
                .flat_map(|i| p.means[(i % 3) * 2..(i % 3) * 2 + 2].to_vec())
                .collect();
            let want = Tensor::from_slice(&want).view([ds.len() as i64, 2]);
            assert!(pred.allclose(&want, 1e-4, 1e-5, false), "{loss:?}: {pred}");
            // Without the prior the head starts at the overall mean only.
            cfg.area_prior = None;
            model = Lstm::new(&cfg, Device::Cpu).unwrap();
            tch::no_grad(|| {
                let _ = model.net.head.ws.zero_();
            });
            let pred = model.predict(&model.forward_t(&batch, false));
            assert!(!pred.allclose(&want, 1e-2, 1e-2, false), "{loss:?}");
        }
        // The dnn starts there too, through its direct path from the
        // features (`area.weight`): with the MLP's head zeroed it predicts
        // the means exactly.
        let cfg = ModelConfig::for_dataset(ModelKind::Dnn, &ds);
        let p = cfg.area_prior.clone().expect("the dnn's area prior");
        let dnn = crate::model::build(&cfg, Device::Cpu).unwrap();
        assert!(dnn.param_spec().get("area.weight").is_some());
        let vars = dnn.var_store().variables();
        tch::no_grad(|| {
            let _ = vars["head.weight"].shallow_clone().zero_();
        });
        let pred = dnn.predict(&dnn.forward_t(&batch, false));
        let want: Vec<f32> = (0..ds.len())
            .flat_map(|i| p.means[(i % 3) * 2..(i % 3) * 2 + 2].to_vec())
            .collect();
        let want = Tensor::from_slice(&want).view([ds.len() as i64, 2]);
        assert!(pred.allclose(&want, 1e-4, 1e-5, false), "dnn: {pred}");
        // Without an area prior the layout is the same (a server without
        // data builds it too) and the path starts at zero.
        let mut plain = cfg.clone();
        plain.area_prior = None;
        let dnn2 = crate::model::build(&plain, Device::Cpu).unwrap();
        assert_eq!(dnn2.param_spec(), dnn.param_spec());
        let zero = dnn2.var_store().variables()["area.weight"]
            .abs()
            .sum(tch::Kind::Float);
        assert_eq!(f64::try_from(zero).unwrap(), 0.0);
    }

    #[test]
    fn area_prior_is_validated() {
        let ds = area_dataset();
        let mut cfg = ModelConfig::for_dataset(ModelKind::Lstm, &ds);
        cfg.validate().unwrap();
        let p = cfg.area_prior.as_mut().unwrap();
        p.column = 1;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("area_prior"), "{err}");
        let p = cfg.area_prior.as_mut().unwrap();
        p.column = 0;
        p.means.pop();
        assert!(cfg.validate().is_err());
    }

    /// The real month (Feb 2024): the lstm on counts, trained with the
    /// defaults but batches of 32 (315 training samples), beats the
    /// per-area training mean on the test split. Release build: a few seconds.
    #[test]
    fn beats_the_per_area_mean_on_a_real_month() {
        let path = std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/la-crime/la_crime_2024_02.csv"
        ));
        if !path.is_file() {
            eprintln!("skipped: {} is absent", path.display());
            return;
        }
        one_thread();
        let incidents = fedcrime_data::load_path(&path).unwrap().incidents;
        let task =
            fedcrime_data::build_task(&incidents, &fedcrime_data::TaskConfig::new(Task::Counts))
                .unwrap();
        let s = &task.splits;
        let baselines =
            crate::train::evaluate_baselines(s, &s.test, fedcrime_data::Period::Day).unwrap();
        let mean = baselines
            .iter()
            .find(|b| b.name == "period_mean")
            .unwrap()
            .metrics
            .headline()
            .1;
        let cfg = ModelConfig::for_dataset(ModelKind::Lstm, &s.train);
        let tcfg = crate::train::TrainConfig {
            batch_size: 32,
            ..crate::train::TrainConfig::default()
        };
        tch::manual_seed(0);
        let mut trainer =
            crate::train::Trainer::new(build(&cfg, Device::Cpu).unwrap(), tcfg).unwrap();
        trainer.fit(&s.train, Some(&s.val)).unwrap();
        let mae = trainer.evaluate(&s.test).unwrap().metrics.headline().1;
        assert!(
            mae < mean,
            "lstm test MAE {mae:.4} vs per-area mean {mean:.4}"
        );
    }
}
