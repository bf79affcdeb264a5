//! The station trainer: what every federated client runs each round, and what
//! centralized training runs once.
//!
//! Adam over shuffled mini-batches (a seeded [`ChaCha8Rng`] orders the samples,
//! [`tch::manual_seed`] seeds dropout), batches assembled on a background
//! thread ([`super::loader`]), early stopping on the validation loss with the
//! best weights restored, and the optional FedProx proximal term
//! `mu / 2 * ||w - w_global||^2` that keeps a station's update near the global
//! model. [`Trainer::fit_from`] is the federated entry point: it starts from
//! the global [`Params`] and returns the station's updated parameters, its
//! number of training examples and its metrics. With [`TrainConfig::dp`] each
//! step is a DP-SGD step instead (per-sample clipping and Gaussian noise,
//! see [`super::dp_sgd`]).

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use super::loader::{for_each_batch, BatchPlan};
use super::metrics::{CountMetrics, Metrics, RiskMetrics};
use super::{Result, TrainError};
use crate::model::{export_params, import_params, Batch, CrimeModel, DatasetTensors};
use fedcrime_data::{Dataset, Target};
use fedcrime_params::Params;

/// How a model is trained: the typed form of the `[train]` config section and
/// the `train` command's flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training split (the maximum when early stopping).
    pub epochs: usize,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Adam's (L2) weight decay.
    pub weight_decay: f64,
    /// Seeds the shuffling and libtorch's generator (dropout).
    pub seed: u64,
    /// Epochs without a validation improvement before stopping; 0 never stops early.
    pub patience: usize,
    /// The improvement of the monitored score that counts as one.
    pub min_delta: f64,
    /// What early stopping and restore-best watch on the validation split
    /// (default the loss).
    pub monitor: Monitor,
    /// FedProx's `mu`: weight of the proximal term `mu/2 ||w - w_global||^2`; 0 is plain FedAvg.
    pub prox_mu: f64,
    /// Clip the gradients' global L2 norm to this value, when set.
    pub max_grad_norm: Option<f64>,
    /// Background threads assembling batches while the model trains
    /// (multi-threaded data loading); 0 assembles each batch on the training
    /// thread(s) when it is needed.
    pub loader_threads: usize,
    /// Batches each loader thread may prepare ahead of the trainer.
    pub prefetch: usize,
    /// Samples per batch when evaluating (no gradients, so larger is fine).
    pub eval_batch_size: usize,
    /// Shows a progress bar on the terminal.
    pub progress: bool,
    /// Keep the whole training split on the model's device and cut batches
    /// there (`index_select`, no per-batch host work or transfer) instead of
    /// assembling them on the loader thread. `None`: on for CUDA devices,
    /// off on the CPU (where the loader thread overlaps assembly with training).
    pub resident: Option<bool>,
    /// Fairness-aware training: reweighing or a parity penalty (see
    /// [`super::fair_training`]); station trainer only.
    pub fairness: super::FairTraining,
    /// The groups fairness-aware training equalizes: bureaus or areas.
    pub fairness_groups: super::FairGroups,
    /// Local differential privacy: DP-SGD (per-sample clipping and Gaussian
    /// noise, see [`super::dp_sgd`]); `None` (the default) trains plainly.
    /// Station trainer only; not with `fairness`.
    pub dp: Option<super::DpSgd>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 256,
            lr: 1e-3,
            weight_decay: 0.0,
            seed: 0,
            patience: 10,
            min_delta: 0.0,
            monitor: Monitor::Loss,
            prox_mu: 0.0,
            max_grad_norm: None,
            loader_threads: 1,
            prefetch: 4,
            eval_batch_size: 4096,
            progress: false,
            resident: None,
            fairness: super::FairTraining::None,
            fairness_groups: super::FairGroups::Bureau,
            dp: None,
        }
    }
}

impl TrainConfig {
    /// Checks every field's range, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| {
            Err(TrainError::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.eval_batch_size == 0 {
            return bad("eval_batch_size", "must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", &format!("must be a positive number, got {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", "must be a non-negative number");
        }
        if !(self.prox_mu.is_finite() && self.prox_mu >= 0.0) {
            return bad("prox_mu", "must be a non-negative number");
        }
        if !(self.min_delta.is_finite() && self.min_delta >= 0.0) {
            return bad("min_delta", "must be a non-negative number");
        }
        if let Some(c) = self.max_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad("max_grad_norm", "must be a positive number");
            }
        }
        if let Some(dp) = &self.dp {
            dp.validate()?;
            if self.fairness.is_active() {
                return bad(
                    "fairness",
                    &format!(
                        "{} cannot be combined with DP-SGD (dp): fairness-aware losses mix samples, which per-sample clipping cannot bound",
                        self.fairness
                    ),
                );
            }
        }
        Ok(())
    }
}

/// How the `risk` cross-entropy weighs classes (the fix for imbalanced levels:
/// macro-F1 counts every level equally, an unweighted loss does not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeighting {
    /// Every sample counts the same.
    None,
    /// `n / (k * n_c)`: every class contributes the same total weight.
    #[default]
    Balanced,
    /// The square root of the balanced weights: a milder correction.
    Sqrt,
}

impl std::str::FromStr for ClassWeighting {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "none" => Ok(ClassWeighting::None),
            "balanced" => Ok(ClassWeighting::Balanced),
            "sqrt" => Ok(ClassWeighting::Sqrt),
            other => Err(format!(
                "unknown class weighting {other:?} (expected none, balanced or sqrt)"
            )),
        }
    }
}

impl ClassWeighting {
    /// The per-class weights for a training split, normalized so the
    /// training samples' mean weight is 1; `None` for `none` or for count
    /// targets. A class absent from the split gets weight 1.
    pub fn weights(self, train: &Dataset) -> Option<Vec<f32>> {
        let Target::Classes {
            labels,
            num_classes,
        } = &train.target
        else {
            return None;
        };
        if self == ClassWeighting::None || labels.is_empty() {
            return None;
        }
        let k = *num_classes;
        let mut counts = vec![0usize; k];
        for &l in labels {
            if let Some(c) = usize::try_from(l).ok().and_then(|c| counts.get_mut(c)) {
                *c += 1;
            }
        }
        let n = labels.len() as f64;
        let mut w: Vec<f64> = counts
            .iter()
            .map(|&c| {
                if c == 0 {
                    1.0
                } else {
                    let b = n / (k as f64 * c as f64);
                    if self == ClassWeighting::Sqrt {
                        b.sqrt()
                    } else {
                        b
                    }
                }
            })
            .collect();
        let mean: f64 = counts
            .iter()
            .zip(&w)
            .map(|(&c, &x)| c as f64 * x)
            .sum::<f64>()
            / n;
        for x in &mut w {
            *x /= mean;
        }
        Some(w.into_iter().map(|x| x as f32).collect())
    }
}

/// A model's loss and metrics on one dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Samples evaluated.
    pub n: usize,
    /// Mean loss per sample (the model's training loss, without any proximal term).
    pub loss: f64,
    /// The task's metrics.
    pub metrics: Metrics,
}

/// What happened in one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss per sample over the epoch (without the proximal term).
    pub train_loss: f64,
    /// Validation loss after the epoch, when a validation split was given.
    pub val_loss: Option<f64>,
    /// Validation metrics after the epoch, when a validation split was given.
    pub val_metrics: Option<Metrics>,
    /// Training throughput: samples over the time of the training pass (evaluation excluded).
    pub samples_per_sec: f64,
    /// Wall time of the whole epoch, evaluation included.
    pub seconds: f64,
}

/// The outcome of [`Trainer::fit`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// One record per epoch run.
    pub epochs: Vec<EpochRecord>,
    /// The epoch whose weights the model holds at the end, when validation chose one.
    pub best_epoch: Option<usize>,
    /// That epoch's validation loss.
    pub best_val_loss: Option<f64>,
    /// Whether patience ran out before the last epoch.
    pub stopped_early: bool,
    /// What a privacy accountant needs, when the fit ran DP-SGD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<super::DpAccounting>,
}

impl FitReport {
    /// The record of the epoch whose weights were kept (the best one when
    /// validating, else the last).
    pub fn kept(&self) -> Option<&EpochRecord> {
        match self.best_epoch {
            Some(b) => self.epochs.iter().find(|r| r.epoch == b),
            None => self.epochs.last(),
        }
    }
}

/// A station's answer to one federated round.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalUpdate {
    /// The updated parameters, in the global model's layout.
    pub params: Params,
    /// Training samples the update was computed on (the averaging weight).
    pub num_examples: usize,
    /// Validation loss and metrics of the returned parameters, when the station validated.
    pub val: Option<Evaluation>,
    /// The epoch records.
    pub report: FitReport,
}

impl LocalUpdate {
    /// The update's metrics by name, as a federated fit result carries them:
    /// `loss` (training loss of the kept epoch), `epochs`, and when the
    /// station validated `val_loss` and every validation metric with a `val_`
    /// prefix (`val_macro_f1`, `val_mae`...), and when the station trained
    /// with DP-SGD what its accountant needs: `dp_steps`, `dp_sampling_rate`
    /// and `dp_noise_multiplier` (see [`super::dp_sgd`]). Undefined values
    /// are left out.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let mut m = std::collections::BTreeMap::new();
        if let Some(r) = self.report.kept() {
            m.insert("loss".to_string(), r.train_loss);
        }
        m.insert("epochs".to_string(), self.report.epochs.len() as f64);
        if let Some(dp) = &self.report.dp {
            m.insert("dp_steps".to_string(), dp.steps as f64);
            m.insert("dp_sampling_rate".to_string(), dp.sampling_rate);
            m.insert("dp_noise_multiplier".to_string(), dp.noise_multiplier);
        }
        if let Some(v) = &self.val {
            m.insert("val_loss".to_string(), v.loss);
            for (name, x) in v.metrics.scalars() {
                if x.is_finite() {
                    m.insert(format!("val_{name}"), x);
                }
            }
        }
        m
    }
}

/// Copies of a model's variables, to restore the best epoch's weights.
pub(crate) struct Snapshot {
    pairs: Vec<(Tensor, Tensor)>,
}

impl Snapshot {
    /// Allocates copies of all of `vs`'s variables (trainable or not).
    pub(crate) fn take(vs: &nn::VarStore) -> Self {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let pairs = tch::no_grad(|| {
            named
                .into_iter()
                .map(|(_, v)| {
                    let c = v.detach().copy();
                    (v, c)
                })
                .collect()
        });
        Self { pairs }
    }

    /// Overwrites the copies with the variables' current values.
    pub(crate) fn update(&mut self) {
        tch::no_grad(|| {
            for (v, c) in &mut self.pairs {
                c.copy_(v);
            }
        });
    }

    /// Writes the copies back into the variables.
    pub(crate) fn restore(&self) {
        tch::no_grad(|| {
            for (v, c) in &self.pairs {
                v.shallow_clone().copy_(c);
            }
        });
    }
}

/// Moves a CPU batch to `device` (a no-op on the CPU).
pub(crate) fn batch_to(b: Batch, device: Device) -> Batch {
    if device == Device::Cpu {
        return b;
    }
    Batch {
        features: b.features.to_device(device),
        sequences: b.sequences.map(|s| s.to_device(device)),
        target: b.target.to_device(device),
    }
}

/// A progress bar for one epoch, hidden unless asked for.
pub(crate) fn epoch_bar(show: bool, steps: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(steps as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} batches {per_sec} {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(format!("epoch {epoch}/{epochs}"));
    pb
}

/// The sample order of each epoch: a seeded shuffle, advanced once per epoch.
pub(crate) struct EpochOrder {
    rng: ChaCha8Rng,
    order: Vec<usize>,
}

impl EpochOrder {
    /// Orders for `n` samples from `seed`.
    pub(crate) fn new(n: usize, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            order: (0..n).collect(),
        }
    }

    /// The next epoch's order.
    pub(crate) fn next(&mut self) -> &[usize] {
        self.order.shuffle(&mut self.rng);
        &self.order
    }
}

/// The validation score early stopping watches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Monitor {
    /// The validation loss (lower is better).
    #[default]
    Loss,
    /// The task's headline metric: macro-F1 (risk, higher is better) or MAE
    /// (counts, lower is better), what the study reports.
    Headline,
}

impl Monitor {
    /// The score of `e` to minimize.
    pub fn score(self, e: &Evaluation) -> f64 {
        match self {
            Monitor::Loss => e.loss,
            Monitor::Headline => match &e.metrics {
                Metrics::Risk(m) => -m.macro_f1,
                Metrics::Counts(m) => m.mae,
            },
        }
    }
}

/// Tracks the best validation score (lower is better) and decides when to stop.
pub(crate) struct EarlyStop {
    patience: usize,
    min_delta: f64,
    /// Best epoch and its loss so far.
    pub(crate) best: Option<(usize, f64)>,
    bad_epochs: usize,
}

impl EarlyStop {
    pub(crate) fn new(patience: usize, min_delta: f64) -> Self {
        Self {
            patience,
            min_delta,
            best: None,
            bad_epochs: 0,
        }
    }

    /// Records an epoch's validation loss; returns `(improved, stop)`.
    pub(crate) fn observe(&mut self, epoch: usize, loss: f64) -> (bool, bool) {
        let improved = match self.best {
            None => true,
            Some((_, b)) => loss < b - self.min_delta,
        };
        if improved {
            self.best = Some((epoch, loss));
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        (
            improved,
            self.patience > 0 && self.bad_epochs >= self.patience,
        )
    }
}

/// An epoch's mean training loss from the sum of its per-sample losses, or
/// an error when it is not finite.
pub(crate) fn epoch_train_loss(loss_sum: &Tensor, samples: usize, epoch: usize) -> Result<f64> {
    let train_loss = f64::try_from(loss_sum)? / samples as f64;
    if !train_loss.is_finite() {
        return Err(TrainError::NonFinite {
            what: "training loss",
            at: format!("epoch {epoch}"),
        });
    }
    Ok(train_loss)
}

/// The model selection every trainer runs over its epochs: early stopping
/// on the monitored validation score, the best weights kept (a snapshot of
/// the variables) and restored at the end, and the epochs' records.
pub(crate) struct Selection {
    stop: EarlyStop,
    snapshot: Option<Snapshot>,
    monitor: Monitor,
    epochs: usize,
    report: FitReport,
}

impl Selection {
    pub(crate) fn new(cfg: &TrainConfig) -> Self {
        Self {
            stop: EarlyStop::new(cfg.patience, cfg.min_delta),
            snapshot: None,
            monitor: cfg.monitor,
            epochs: cfg.epochs,
            report: FitReport::default(),
        }
    }

    /// The record of `epoch` (trained for `train_secs` on `samples`
    /// samples, `seconds` in all), after feeding its validation result to
    /// early stopping and snapshotting `vs` when it improved before the last
    /// epoch; the flag says whether to stop early.
    pub(crate) fn record(
        &mut self,
        vs: &nn::VarStore,
        (epoch, train_loss): (usize, f64),
        eval: Option<Evaluation>,
        (samples, train_secs, seconds): (usize, f64, f64),
    ) -> (EpochRecord, bool) {
        let mut stopping = false;
        if let Some(e) = &eval {
            let (improved, stop_now) = self.stop.observe(epoch, self.monitor.score(e));
            if improved && epoch < self.epochs {
                match &mut self.snapshot {
                    Some(s) => s.update(),
                    None => self.snapshot = Some(Snapshot::take(vs)),
                }
            }
            stopping = stop_now;
        }
        let record = EpochRecord {
            epoch,
            train_loss,
            val_loss: eval.as_ref().map(|e| e.loss),
            val_metrics: eval.map(|e| e.metrics),
            samples_per_sec: samples as f64 / train_secs.max(1e-9),
            seconds,
        };
        (record, stopping)
    }

    /// Hands `record` to `on_epoch` and keeps it; true when the fit ends
    /// here (stopped early).
    pub(crate) fn keep(
        &mut self,
        record: EpochRecord,
        stopping: bool,
        on_epoch: &mut dyn FnMut(&EpochRecord),
    ) -> bool {
        let last = record.epoch >= self.epochs;
        on_epoch(&record);
        self.report.epochs.push(record);
        if stopping && !last {
            self.report.stopped_early = true;
        }
        stopping && !last
    }

    /// The report with its best epoch, the best weights restored into the
    /// snapshot's variables when a later epoch ended the fit; the flag says
    /// whether they were.
    pub(crate) fn finish(mut self) -> (FitReport, bool) {
        let Some((best, _)) = self.stop.best else {
            return (self.report, false);
        };
        let report = &mut self.report;
        report.best_epoch = Some(best);
        report.best_val_loss = report
            .epochs
            .iter()
            .find(|r| r.epoch == best)
            .and_then(|r| r.val_loss);
        let last = report.epochs.last().map_or(0, |r| r.epoch);
        let restored = match &self.snapshot {
            Some(s) if best != last => {
                s.restore();
                true
            }
            _ => false,
        };
        (self.report, restored)
    }
}

/// Checks that a dataset suits a model and that its buffers agree with its
/// declared widths (a dataset read from a file may not), so batch assembly
/// cannot index out of bounds.
pub(crate) fn check_task(model: &dyn CrimeModel, ds: &Dataset) -> Result<()> {
    if model.task() != ds.task {
        return Err(TrainError::TaskMismatch {
            expected: model.task(),
            got: ds.task,
        });
    }
    let n = ds.len();
    let len = |what: &'static str, expected: usize, got: usize| {
        if expected == got {
            Ok(())
        } else {
            Err(TrainError::Length {
                what,
                expected,
                got,
            })
        }
    };
    len("dataset features", n * ds.feature_dim, ds.features.len())?;
    len("dataset time indices", n, ds.time.len())?;
    if let Some(s) = &ds.sequences {
        len("dataset sequences", n * s.steps * s.step_dim, s.data.len())?;
    }
    match &ds.target {
        Target::Classes { labels, .. } => len("dataset labels", n, labels.len()),
        Target::Counts { values, dim } => len("dataset count targets", n * dim, values.len()),
    }
}

/// Evaluates `model` on `ds` in order, in batches of `batch_size`, without
/// gradients and with dropout off.
pub fn evaluate_model(
    model: &dyn CrimeModel,
    ds: &Dataset,
    batch_size: usize,
) -> Result<Evaluation> {
    check_task(model, ds)?;
    if ds.is_empty() {
        return Err(TrainError::EmptySplit { split: "evaluated" });
    }
    let device = model.var_store().device();
    let order: Vec<usize> = (0..ds.len()).collect();
    let mut loss_sum = 0.0f64;
    let mut class_pred: Vec<i64> = Vec::new();
    let mut count_pred: Vec<f32> = Vec::new();
    let _guard = tch::no_grad_guard();
    let plan = BatchPlan {
        batch_size,
        parts: 1,
        loaders: 1,
        prefetch: 2,
        class_weights: None,
    };
    for_each_batch(ds, &order, plan, |part| {
        let n = part.batch_len();
        let Some(b) = part.batch else {
            return Ok(());
        };
        let b = batch_to(b, device);
        let out = model.forward_t(&b, false);
        let loss = f64::try_from(model.loss(&out, &b))?;
        loss_sum += loss * n as f64;
        let pred = model.predict(&out).to_device(Device::Cpu).flatten(0, -1);
        match ds.target {
            Target::Classes { .. } => {
                class_pred.extend(Vec::<i64>::try_from(pred.to_kind(Kind::Int64))?)
            }
            Target::Counts { .. } => {
                count_pred.extend(Vec::<f32>::try_from(pred.to_kind(Kind::Float))?)
            }
        }
        Ok(())
    })?;
    let n = ds.len();
    let loss = loss_sum / n as f64;
    if !loss.is_finite() {
        return Err(TrainError::NonFinite {
            what: "evaluation loss",
            at: format!("{n} samples"),
        });
    }
    let metrics = match &ds.target {
        Target::Classes {
            labels,
            num_classes,
        } => Metrics::Risk(RiskMetrics::compute(labels, &class_pred, *num_classes)?),
        Target::Counts { values, dim } => {
            Metrics::Counts(CountMetrics::compute(values, &count_pred, *dim)?)
        }
    };
    Ok(Evaluation { n, loss, metrics })
}

/// The mean negative log-likelihood per sample of `model` on `ds`: its
/// loss made a true NLL, never negative, comparable between stations (what
/// q-FedAvg weighs stations by). Cross-entropy and squared error already
/// are; libtorch's Poisson loss leaves out `ln y!`, which is added here
/// (per target value, averaged like the loss).
pub fn negative_log_likelihood(
    model: &dyn CrimeModel,
    ds: &Dataset,
    batch_size: usize,
) -> Result<f64> {
    let e = evaluate_model(model, ds, batch_size)?;
    let constant = match (&ds.target, model.config().count_loss) {
        (Target::Counts { values, .. }, crate::model::CountLoss::Poisson) if !values.is_empty() => {
            values.iter().map(|&y| ln_factorial(y)).sum::<f64>() / values.len() as f64
        }
        _ => 0.0,
    };
    Ok(e.loss + constant)
}

/// `ln y!` of a count (`y` rounded, negatives as 0).
fn ln_factorial(y: f32) -> f64 {
    let k = y.round().max(0.0) as u64;
    (2..=k).map(|i| (i as f64).ln()).sum()
}

/// A validation split, or `None` when absent or empty (with a warning).
pub(crate) fn usable_val(val: Option<&Dataset>) -> Option<&Dataset> {
    match val {
        Some(v) if v.is_empty() => {
            tracing::warn!("validation split is empty: training without early stopping");
            None
        }
        other => other,
    }
}

/// The station trainer. Owns one model; see the module documentation.
pub struct Trainer {
    model: Box<dyn CrimeModel>,
    cfg: TrainConfig,
    /// `(variable, global value)` pairs of the FedProx term for the next fit.
    prox: Vec<(Tensor, Tensor)>,
}

impl Trainer {
    /// Wraps a model; the config is validated here.
    pub fn new(model: Box<dyn CrimeModel>, cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            model,
            cfg,
            prox: Vec::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &dyn CrimeModel {
        self.model.as_ref()
    }

    /// Gives the model back.
    pub fn into_model(self) -> Box<dyn CrimeModel> {
        self.model
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Replaces the configuration (e.g. a per-round seed or learning rate).
    pub fn set_config(&mut self, cfg: TrainConfig) -> Result<()> {
        cfg.validate()?;
        self.cfg = cfg;
        Ok(())
    }

    /// The device the model lives on.
    pub fn device(&self) -> Device {
        self.model.var_store().device()
    }

    /// The model's current parameters.
    pub fn params(&self) -> Params {
        export_params(self.model.var_store())
    }

    /// Loads parameters into the model (names and shapes must match).
    pub fn set_params(&mut self, p: &Params) -> Result<()> {
        import_params(self.model.var_store_mut(), p)?;
        Ok(())
    }

    /// Evaluates the model on a dataset.
    pub fn evaluate(&self, ds: &Dataset) -> Result<Evaluation> {
        evaluate_model(self.model.as_ref(), ds, self.cfg.eval_batch_size)
    }

    /// One federated round on this station: loads `global`, trains on `train`
    /// (validating on `val` when given, with early stopping), adds the FedProx
    /// term when `prox_mu > 0`, and returns the update. The optimizer starts
    /// fresh each round, as stations keep no state between rounds.
    pub fn fit_from(
        &mut self,
        global: &Params,
        train: &Dataset,
        val: Option<&Dataset>,
    ) -> Result<LocalUpdate> {
        self.set_params(global)?;
        self.prox.clear();
        if self.cfg.prox_mu > 0.0 {
            let device = self.device();
            let vars = self.model.var_store().variables();
            for (entry, values) in global.iter() {
                let Some(var) = vars.get(&entry.name) else {
                    continue;
                };
                if !var.requires_grad() {
                    continue;
                }
                let shape: Vec<i64> = entry.shape.iter().map(|&d| d as i64).collect();
                let g = Tensor::from_slice(values).reshape(&shape).to_device(device);
                self.prox.push((var.shallow_clone(), g));
            }
        }
        let outcome = self.fit(train, val);
        self.prox.clear();
        let report = outcome?;
        let params = self.params();
        global.spec().check_same(params.spec())?;
        if let Some((name, idx)) = params.first_non_finite() {
            return Err(TrainError::NonFinite {
                what: "parameter",
                at: format!("{name}[{idx}]"),
            });
        }
        let val = report.kept().and_then(|r| {
            Some(Evaluation {
                n: val?.len(),
                loss: r.val_loss?,
                metrics: r.val_metrics.clone()?,
            })
        });
        Ok(LocalUpdate {
            params,
            num_examples: train.len(),
            val,
            report,
        })
    }

    /// Trains on `train`, validating on `val` after every epoch when given
    /// (early stopping, best weights restored at the end).
    pub fn fit(&mut self, train: &Dataset, val: Option<&Dataset>) -> Result<FitReport> {
        self.fit_observed(train, val, &mut |_| {})
    }

    /// [`Trainer::fit`], calling `on_epoch` after every epoch (to stream
    /// metrics to a file, say).
    pub fn fit_observed(
        &mut self,
        train: &Dataset,
        val: Option<&Dataset>,
        on_epoch: &mut dyn FnMut(&EpochRecord),
    ) -> Result<FitReport> {
        let cfg = self.cfg.clone();
        cfg.validate()?;
        check_task(self.model.as_ref(), train)?;
        let val = usable_val(val);
        if let Some(v) = val {
            check_task(self.model.as_ref(), v)?;
        }
        if train.is_empty() {
            return Err(TrainError::EmptySplit { split: "train" });
        }
        let device = self.device();
        tch::manual_seed(cfg.seed as i64);
        let mut opt =
            nn::adam(0.9, 0.999, cfg.weight_decay).build(self.model.var_store(), cfg.lr)?;
        let mut orders = EpochOrder::new(train.len(), cfg.seed);
        let mut selection = Selection::new(&cfg);
        let steps = train.len().div_ceil(cfg.batch_size);
        let half_mu = cfg.prox_mu / 2.0;
        let fair = super::fair_training::FairState::new(
            cfg.fairness,
            cfg.fairness_groups,
            train,
            self.model.as_ref(),
        )?;
        // Fairness-aware steps need each batch's sample indices.
        let resident = if fair.is_some() || cfg.resident.unwrap_or(device.is_cuda()) {
            Some(DatasetTensors::new(train, device)?)
        } else {
            None
        };

        // DP-SGD's gradients go to the trainable variables, in this order.
        let dp_vars = match cfg.dp {
            Some(_) => self.model.var_store().trainable_variables(),
            None => Vec::new(),
        };

        for epoch in 1..=cfg.epochs {
            let t0 = Instant::now();
            let pb = epoch_bar(cfg.progress, steps, epoch, cfg.epochs);
            let loss_sum = Tensor::zeros([], (Kind::Double, device));
            let model = &self.model;
            let prox = &self.prox;
            let fair = &fair;
            let dp_vars = &dp_vars;
            let mut step = |b: Batch, indices: Option<&[usize]>| -> Result<()> {
                let n = b.len();
                // `objective`'s gradient is the step's gradient (before the
                // proximal term); `batch_loss` the batch's summed loss.
                let (objective, batch_loss) = match &cfg.dp {
                    Some(dp) => {
                        // DP-SGD: clipped per-sample gradients summed, noise,
                        // the mean handed to the variables' gradients
                        // through a surrogate (see `dp_sgd`); the FedProx
                        // term and `max_grad_norm` below act on the noisy
                        // gradient (post-processing).
                        let g = crate::model::dp::clipped_grad_sum(model.as_ref(), &b, dp.clip)?;
                        let noisy = super::dp_sgd::noisy_mean(&g.grads, dp, n);
                        (
                            super::dp_sgd::surrogate(dp_vars, &noisy),
                            g.losses.sum(Kind::Double),
                        )
                    }
                    None => {
                        let out = model.forward_t(&b, true);
                        let loss = match (fair, indices) {
                            (Some(f), Some(idx)) => {
                                f.loss(model.as_ref(), &out, &b, &f.groups_of(idx, device))
                            }
                            _ => model.loss(&out, &b),
                        };
                        let sum = loss.detach().to_kind(Kind::Double) * n as f64;
                        (loss, sum)
                    }
                };
                opt.zero_grad();
                if prox.is_empty() {
                    objective.backward();
                } else {
                    let mut term = Tensor::zeros([], (Kind::Float, device));
                    for (w, g) in prox {
                        term += (w - g).square().sum(Kind::Float);
                    }
                    (&objective + term * half_mu).backward();
                }
                if let Some(c) = cfg.max_grad_norm {
                    opt.clip_grad_norm(c);
                }
                opt.step();
                tch::no_grad(|| {
                    let _ = loss_sum.shallow_clone().g_add_(&batch_loss);
                });
                pb.inc(1);
                Ok(())
            };
            let order = orders.next();
            match &resident {
                Some(dt) => {
                    for chunk in order.chunks(cfg.batch_size) {
                        step(dt.batch_of(chunk)?, Some(chunk))?;
                    }
                }
                None => {
                    let plan = BatchPlan {
                        batch_size: cfg.batch_size,
                        parts: 1,
                        loaders: cfg.loader_threads,
                        prefetch: cfg.prefetch,
                        class_weights: None,
                    };
                    for_each_batch(train, order, plan, |part| match part.batch {
                        Some(b) => step(batch_to(b, device), None),
                        None => Ok(()),
                    })?;
                }
            }
            let train_secs = t0.elapsed().as_secs_f64();
            let train_loss = epoch_train_loss(&loss_sum, train.len(), epoch);
            pb.finish_and_clear();
            let train_loss = train_loss?;
            let eval = match val {
                Some(v) => Some(self.evaluate(v)?),
                None => None,
            };
            let (record, stopping) = selection.record(
                self.model.var_store(),
                (epoch, train_loss),
                eval,
                (train.len(), train_secs, t0.elapsed().as_secs_f64()),
            );
            tracing::info!(
                epoch,
                train_loss,
                val_loss = record.val_loss,
                samples_per_sec = record.samples_per_sec,
                "epoch done"
            );
            if selection.keep(record, stopping, on_epoch) {
                break;
            }
        }
        let mut report = selection.finish().0;
        if let Some(dp) = cfg.dp {
            // Every epoch run took all its steps (an error ends the fit).
            report.dp = Some(super::DpAccounting {
                steps: report.epochs.len() * steps,
                sampling_rate: (cfg.batch_size as f64 / train.len() as f64).min(1.0),
                noise_multiplier: dp.noise_multiplier,
                clip: dp.clip,
            });
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_negative_log_likelihood_adds_ln_y_factorial() {
        crate::model::test_util::one_thread();
        let ds = test_data::counts(6, 2, 2, 5);
        let m = test_data::model(crate::model::ModelKind::Dnn, &ds, 4, 0.0, 1);
        let out = m.forward_t(
            &crate::model::to_batch(&ds, &[0, 1, 2, 3, 4, 5], Device::Cpu),
            false,
        );
        let o = Vec::<f32>::try_from(out.flatten(0, -1)).unwrap();
        let Target::Counts { values, .. } = &ds.target else {
            unreachable!()
        };
        // mean over values of exp(o) - y o + ln y!
        let want: f64 = o
            .iter()
            .zip(values)
            .map(|(&o, &y)| {
                let lf: f64 = (2..=y as u64).map(|k| (k as f64).ln()).sum();
                f64::from(o).exp() - f64::from(y) * f64::from(o) + lf
            })
            .sum::<f64>()
            / values.len() as f64;
        let got = negative_log_likelihood(m.as_ref(), &ds, 4).unwrap();
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        assert!(
            values.iter().any(|&y| y >= 2.0),
            "the test needs counts above 1"
        );
    }
    use crate::model::ModelKind;
    use crate::train::test_data;

    fn cfg(epochs: usize, batch_size: usize) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size,
            patience: 0,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = TrainConfig {
            lr: -1.0,
            ..TrainConfig::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("lr"), "{e}");
        let bad = TrainConfig {
            batch_size: 0,
            ..TrainConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("batch_size"));
        let parsed: TrainConfig = toml::from_str("epochs = 3\nlr = 0.01\n").unwrap();
        assert_eq!(
            (parsed.epochs, parsed.lr, parsed.batch_size),
            (3, 0.01, 256)
        );
        assert!(toml::from_str::<TrainConfig>("epoch = 3\n").is_err());
    }

    #[test]
    fn balanced_class_weights_equalize_the_classes() {
        let mut ds = test_data::risk(10, 2, 1);
        ds.target = Target::Classes {
            labels: vec![0, 0, 0, 0, 0, 0, 1, 1, 1, 3],
            num_classes: 5,
        };
        let w = ClassWeighting::Balanced.weights(&ds).unwrap();
        // Each present class's total weight is equal: 6 w0 = 3 w1 = 1 w3.
        assert!((6.0 * w[0] - 3.0 * w[1]).abs() < 1e-5 && (3.0 * w[1] - w[3]).abs() < 1e-5);
        // Mean weight over the samples is 1.
        let mean = (6.0 * w[0] + 3.0 * w[1] + w[3]) / 10.0;
        assert!((mean - 1.0).abs() < 1e-5, "{w:?}");
        let s = ClassWeighting::Sqrt.weights(&ds).unwrap();
        assert!(s[3] / s[0] < w[3] / w[0] && s[3] > s[0]);
        assert!(ClassWeighting::None.weights(&ds).is_none());
        assert!(ClassWeighting::Balanced
            .weights(&test_data::counts(4, 2, 2, 1))
            .is_none());
        assert_eq!("sqrt".parse(), Ok(ClassWeighting::Sqrt));
    }

    #[test]
    fn early_stop_counts_epochs_without_improvement() {
        let mut s = EarlyStop::new(2, 0.0);
        assert_eq!(s.observe(1, 1.0), (true, false));
        assert_eq!(s.observe(2, 0.5), (true, false));
        assert_eq!(s.observe(3, 0.6), (false, false));
        assert_eq!(s.observe(4, 0.5), (false, true));
        assert_eq!(s.best, Some((2, 0.5)));
        let mut never = EarlyStop::new(0, 0.0);
        for e in 1..10 {
            assert!(!never.observe(e, e as f64).1);
        }
    }

    #[test]
    fn training_lowers_the_loss_and_records_every_epoch() {
        let train = test_data::risk(512, 6, 1);
        let val = test_data::risk(128, 6, 2);
        let model = test_data::model(ModelKind::Dnn, &train, 32, 0.0, 0);
        let mut t = Trainer::new(
            model,
            TrainConfig {
                lr: 1e-2,
                ..cfg(6, 32)
            },
        )
        .unwrap();
        let before = t.evaluate(&val).unwrap();
        let mut seen = Vec::new();
        let report = t
            .fit_observed(&train, Some(&val), &mut |r| seen.push(r.epoch))
            .unwrap();
        assert_eq!(seen, [1, 2, 3, 4, 5, 6]);
        assert_eq!(report.epochs.len(), 6);
        let first = &report.epochs[0];
        let last = report.epochs.last().unwrap();
        assert!(last.train_loss < first.train_loss, "{report:?}");
        assert!(first.samples_per_sec > 0.0 && first.seconds > 0.0);
        let after = t.evaluate(&val).unwrap();
        assert!(
            after.loss < before.loss * 0.8,
            "{} -> {}",
            before.loss,
            after.loss
        );
        let Metrics::Risk(m) = &after.metrics else {
            panic!("risk metrics expected")
        };
        assert_eq!(m.n, 128);
        assert!(m.accuracy > 0.5, "accuracy {}", m.accuracy);
        // The kept weights are the best validation epoch's.
        assert!((after.loss - report.best_val_loss.unwrap()).abs() < 1e-6);
    }

    #[test]
    fn early_stopping_restores_the_best_weights() {
        // Labels of the training set are noise relative to validation, and a
        // large learning rate overfits: validation loss rises after a while.
        let train = test_data::risk(64, 4, 3);
        let mut val = test_data::risk(256, 4, 4);
        if let Target::Classes { labels, .. } = &mut val.target {
            for l in labels.iter_mut() {
                *l = 4 - *l;
            }
        }
        let model = test_data::model(ModelKind::Dnn, &train, 64, 0.0, 1);
        let mut t = Trainer::new(
            model,
            TrainConfig {
                lr: 3e-2,
                patience: 2,
                ..cfg(30, 16)
            },
        )
        .unwrap();
        let report = t.fit(&train, Some(&val)).unwrap();
        let best = report.best_epoch.unwrap();
        assert!(report.stopped_early, "{report:?}");
        assert!(best < report.epochs.len(), "{report:?}");
        let now = t.evaluate(&val).unwrap().loss;
        assert!(
            (now - report.best_val_loss.unwrap()).abs() < 1e-6,
            "restored {now}, best {:?}",
            report.best_val_loss
        );
        let last_val = report.epochs.last().unwrap().val_loss.unwrap();
        assert!(last_val > now);
    }

    #[test]
    fn same_seed_gives_the_same_parameters() {
        // Dropout off: libtorch's generator is shared with concurrent tests.
        let train = test_data::counts(200, 4, 3, 5);
        let init = test_data::model(ModelKind::Lstm, &train, 16, 0.0, 7);
        let run = |seed: u64| {
            let model = test_data::copy(init.as_ref());
            let mut t = Trainer::new(model, TrainConfig { seed, ..cfg(2, 32) }).unwrap();
            t.fit(&train, None).unwrap();
            t.params()
        };
        let a = run(1);
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
    }

    #[test]
    fn fedprox_keeps_the_update_near_the_global_model() {
        let train = test_data::risk(256, 6, 6);
        let global = test_data::model(ModelKind::Dnn, &train, 32, 0.0, 3).export_params();
        let update = |mu: f64| {
            let model = test_data::model(ModelKind::Dnn, &train, 32, 0.0, 99);
            let mut t = Trainer::new(
                model,
                TrainConfig {
                    prox_mu: mu,
                    lr: 1e-2,
                    ..cfg(3, 32)
                },
            )
            .unwrap();
            let u = t.fit_from(&global, &train, None).unwrap();
            assert_eq!(u.num_examples, 256);
            assert!(u.val.is_none());
            u.params.l2_distance(&global).unwrap()
        };
        let free = update(0.0);
        let prox = update(1.0);
        assert!(free > 0.0);
        assert!(prox < 0.8 * free, "FedProx {prox} vs FedAvg {free}");
    }

    #[test]
    fn fit_from_starts_at_the_global_params_and_reports_validation() {
        let train = test_data::counts(128, 4, 3, 8);
        let val = test_data::counts(64, 4, 3, 9);
        let global = test_data::model(ModelKind::Dnn, &train, 16, 0.0, 5).export_params();
        let model = test_data::model(ModelKind::Dnn, &train, 16, 0.0, 6);
        let mut t = Trainer::new(model, cfg(1, 16)).unwrap();
        // With lr tiny the update stays at the global model, not at the local init.
        t.set_config(TrainConfig {
            lr: 1e-9,
            ..cfg(1, 16)
        })
        .unwrap();
        let u = t.fit_from(&global, &train, Some(&val)).unwrap();
        assert!(u.params.l2_distance(&global).unwrap() < 1e-4);
        let v = u.val.unwrap();
        assert_eq!(v.n, 64);
        assert!(matches!(v.metrics, Metrics::Counts(_)));
    }

    #[test]
    fn device_resident_batches_equal_loader_batches() {
        let train = test_data::counts(150, 3, 2, 4);
        let m = test_data::model(ModelKind::Lstm, &train, 8, 0.0, 2);
        let run = |resident: bool| {
            let c = TrainConfig {
                resident: Some(resident),
                ..cfg(2, 32)
            };
            let mut t = Trainer::new(test_data::copy(m.as_ref()), c).unwrap();
            let r = t.fit(&train, None).unwrap();
            (t.params(), r.epochs[1].train_loss)
        };
        assert_eq!(run(true), run(false));
    }

    #[test]
    fn update_metrics_carry_loss_and_validation() {
        let train = test_data::risk(64, 4, 1);
        let val = test_data::risk(32, 4, 2);
        let m = test_data::model(ModelKind::Dnn, &train, 8, 0.0, 0);
        let global = m.export_params();
        let mut t = Trainer::new(m, cfg(2, 16)).unwrap();
        let u = t.fit_from(&global, &train, Some(&val)).unwrap();
        let metrics = u.metrics();
        assert!(metrics["loss"] > 0.0);
        assert_eq!(metrics["epochs"], 2.0);
        assert!(metrics.contains_key("val_loss") && metrics.contains_key("val_macro_f1"));
    }

    #[test]
    fn wrong_task_and_empty_data_are_errors() {
        let risk = test_data::risk(32, 4, 1);
        let counts = test_data::counts(32, 2, 2, 1);
        let model = test_data::model(ModelKind::Dnn, &risk, 8, 0.0, 0);
        let mut t = Trainer::new(model, cfg(1, 8)).unwrap();
        assert!(matches!(
            t.fit(&counts, None),
            Err(TrainError::TaskMismatch { .. })
        ));
        let empty = risk.subset(&[]);
        assert!(matches!(
            t.fit(&empty, None),
            Err(TrainError::EmptySplit { split: "train" })
        ));
        // Inconsistent buffers are an error, not a panic.
        let mut broken = risk.clone();
        broken.features.pop();
        let e = t.fit(&broken, None).unwrap_err();
        assert!(e.to_string().contains("dataset features"), "{e}");
        // An empty validation split means no validation, not an error.
        let r = t.fit(&risk, Some(&empty)).unwrap();
        assert!(r.best_epoch.is_none() && r.epochs[0].val_loss.is_none());
    }

    #[test]
    fn diverging_training_is_reported_not_hidden() {
        let mut train = test_data::counts(64, 2, 2, 3);
        let model = test_data::model(ModelKind::Dnn, &train, 8, 0.0, 0);
        if let Target::Counts { values, .. } = &mut train.target {
            values[5] = f32::INFINITY;
        }
        let mut t = Trainer::new(model, cfg(1, 16)).unwrap();
        let e = t.fit(&train, None).unwrap_err();
        assert!(matches!(e, TrainError::NonFinite { .. }), "{e}");
        assert!(e.to_string().contains("epoch 1"), "{e}");
    }
}
