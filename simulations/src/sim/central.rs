//! The centralized baselines: one model trained on the pooled training
//! split, by the station trainer on one worker (`centralized`) and by the
//! data-parallel trainer on W CPU workers or CUDA devices
//! (`data-parallel-W`). [`Central`] lists the trainers: the simulator runs
//! two of them, the parallelization study ([`super::study`]) every one
//! [`Central::study_methods`] names.
//!
//! Both start from the federation's initial model and use its optimizer
//! settings and seed. They train until the validation headline has not
//! improved for `selection.patience` epochs (the federation's rule), or for
//! exactly the configured epochs ([`SimConfig::centralized_epochs`]); the
//! trainer keeps the best epoch's weights. After every epoch the
//! model is scored on the pooled validation split (by the trainer) and test
//! split (here, on a second model that reads the live weights), like the
//! global model after every round; the rows' seconds count training only.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use tch::{Device, Tensor};

use fedcrime_ml::model::{build, CrimeModel};
use fedcrime_ml::train::trainer::evaluate_model;
use fedcrime_ml::train::{
    EpochRecord, FitReport, Monitor, ParallelConfig, ParallelTrainer, PipelineConfig,
    PipelineTrainer, TrainConfig, Trainer,
};
use fedcrime_params::Params;

use super::config::SimConfig;
use super::data::StudyData;
use super::eval::Scores;
use super::record::{BestTracker, Row};
use super::report::higher_is_better;
use super::study::MethodKind;

/// Which centralized trainer.
///
/// **Adding a trainer** (model parallelism, `PipelineTrainer`, is the next
/// one) takes a variant here, its arm in each method of this `impl` (the
/// compiler lists them), its entries in [`Central::study_methods`] and its
/// arm in [`run`], which builds the trainer and returns its
/// [`CentralRun`]. The parallelization study then runs, measures, tabulates,
/// plots and discusses it with no change elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Central {
    /// The station trainer on one worker (one CPU thread by default).
    Single,
    /// The data-parallel trainer with this many replicas (CPU workers sharing
    /// the cores, or CUDA devices).
    DataParallel(usize),
    /// The model-parallel (pipeline) trainer with this many stages, each on
    /// its own thread (or CUDA device), micro-batches flowing through them.
    ModelParallel(usize),
}

impl Central {
    /// The method's name in `metrics.csv`.
    pub fn method(self) -> String {
        match self {
            Central::Single => "centralized".into(),
            Central::DataParallel(w) => format!("data-parallel-{w}"),
            Central::ModelParallel(s) => format!("model-parallel-{s}"),
        }
    }

    /// The kind of parallelism, which groups methods in the study's plots
    /// and findings.
    pub fn kind(self) -> MethodKind {
        match self {
            Central::Single => MethodKind::Single,
            Central::DataParallel(_) => MethodKind::DataParallel,
            Central::ModelParallel(_) => MethodKind::ModelParallel,
        }
    }

    /// Workers (replicas, stages) the method spreads its training over; the
    /// study divides memory by it and shares the threads among them.
    pub fn workers(self) -> usize {
        match self {
            Central::Single => 1,
            Central::DataParallel(w) | Central::ModelParallel(w) => w,
        }
    }

    /// The centralized methods of the parallelization study for these
    /// worker counts: one worker, then each parallel trainer with each
    /// count above 1.
    pub fn study_methods(workers: &[usize]) -> Vec<Central> {
        let parallel = workers.iter().copied().filter(|&w| w > 1);
        let mut methods = vec![Central::Single];
        methods.extend(parallel.clone().map(Central::DataParallel));
        methods.extend(parallel.map(Central::ModelParallel));
        methods
    }
}

/// What a centralized trainer returns besides its rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CentralRun {
    /// The trainer's report.
    pub report: FitReport,
    /// Bytes the workers exchange per epoch (gradients between replicas,
    /// activations between stages); 0 for one worker.
    pub bytes_per_epoch: u64,
}

/// The centralized training settings of a study whose federation made
/// `passes` passes over the data on average (see
/// [`SimConfig::centralized_epochs`]).
pub fn train_config(cfg: &SimConfig, passes: f64) -> TrainConfig {
    let (epochs, patience) = cfg.centralized_epochs(passes);
    TrainConfig {
        epochs,
        batch_size: cfg.train.batch_size,
        lr: cfg.train.lr,
        weight_decay: cfg.train.weight_decay,
        max_grad_norm: cfg.train.max_grad_norm,
        eval_batch_size: cfg.train.eval_batch_size,
        fairness: cfg.train.fairness,
        fairness_groups: cfg.train.fairness_groups,
        seed: cfg.seed,
        patience: usize::try_from(patience).unwrap_or(usize::MAX),
        min_delta: cfg.selection.min_delta,
        monitor: Monitor::Headline,
        progress: false,
        ..TrainConfig::default()
    }
}

/// Pairs of (live variable, evaluation model's variable), by name: `live`
/// is a trainer's variables by their names in the whole model (one
/// `VarStore`'s, or every stage's of a split model), possibly on other devices.
fn mirror(
    live: impl IntoIterator<Item = (String, Tensor)>,
    shadow: &dyn CrimeModel,
) -> Result<Vec<(Tensor, Tensor)>> {
    let shadow = shadow.var_store().variables();
    let sorted: BTreeMap<String, Tensor> = live.into_iter().collect();
    if sorted.len() != shadow.len() {
        anyhow::bail!(
            "the trainer shows {} variables, the model has {}",
            sorted.len(),
            shadow.len()
        );
    }
    sorted
        .into_iter()
        .map(|(name, v)| {
            let s = shadow
                .get(&name)
                .with_context(|| format!("the evaluation model has no variable {name}"))?;
            Ok((v, s.shallow_clone()))
        })
        .collect()
}

/// Trains `which` on the study's pooled data from `initial` with `tcfg`
/// ([`train_config`]), calling `on_row` after every epoch with the epoch's
/// scores; `threads` is libtorch's intra-op thread budget (shared by the
/// data-parallel replicas). The rows' test scores come from a CPU copy of
/// the live weights, taken after each epoch through `mirror`.
pub fn run(
    which: Central,
    data: &StudyData,
    cfg: &SimConfig,
    tcfg: &TrainConfig,
    initial: &Params,
    threads: usize,
    mut on_row: impl FnMut(Row) -> Result<()>,
) -> Result<CentralRun> {
    let tcfg = tcfg.clone();
    let mut best = BestTracker::new(higher_is_better(data.task.task), cfg.selection.min_delta);
    let n = data.splits.train.len();
    let steps_per_epoch = n.div_ceil(tcfg.batch_size) as u64;
    let splits = &*data.splits;
    let method = which.method();
    let shadow = build(&data.model, Device::Cpu)?;
    // Seconds spent training: the epochs' batch loops, without the
    // validation the trainer runs and the test scoring here.
    let mut trained_s = 0.0;
    let mut failure: Option<anyhow::Error> = None;
    let mut observe = |pairs: &[(Tensor, Tensor)], r: &EpochRecord| {
        if failure.is_some() {
            return;
        }
        let outcome = (|| -> Result<()> {
            tch::no_grad(|| {
                for (live, mut s) in pairs.iter().map(|(l, s)| (l, s.shallow_clone())) {
                    s.copy_(live);
                }
            });
            let test = evaluate_model(shadow.as_ref(), &splits.test, tcfg.eval_batch_size)?;
            let val = match (&r.val_loss, &r.val_metrics) {
                (Some(loss), Some(metrics)) => Scores {
                    loss: *loss,
                    metrics: metrics.clone(),
                },
                _ => {
                    let e = evaluate_model(shadow.as_ref(), &splits.val, tcfg.eval_batch_size)?;
                    Scores {
                        loss: e.loss,
                        metrics: e.metrics,
                    }
                }
            };
            if r.samples_per_sec > 0.0 {
                trained_s += splits.train.len() as f64 / r.samples_per_sec;
            }
            let epoch = r.epoch as u64;
            let mut row = Row {
                method: method.clone(),
                step: epoch,
                wall_seconds: trained_s,
                bytes_sent: 0,
                grad_steps: epoch * steps_per_epoch,
                samples: epoch * n as u64,
                train_loss: Some(r.train_loss),
                val,
                test: Scores {
                    loss: test.loss,
                    metrics: test.metrics,
                },
                best: None,
                epsilon: None,
            };
            best.update(&mut row);
            on_row(row)
        })();
        if let Err(e) = outcome {
            failure = Some(e);
        }
    };
    // One arm per trainer.
    let run = match which {
        Central::Single => {
            let before = tch::get_num_threads();
            tch::set_num_threads(threads.max(1) as i32);
            let device = cfg
                .federation
                .device
                .resolve()
                .map_err(anyhow::Error::msg)?;
            let mut model = build(&data.model, device)?;
            model.import_params(initial)?;
            let mut trainer = Trainer::new(model, tcfg.clone())?;
            let pairs = mirror(trainer.model().var_store().variables(), shadow.as_ref())?;
            let outcome = trainer.fit_observed(&splits.train, Some(&splits.val), &mut |r| {
                observe(&pairs, r)
            });
            tch::set_num_threads(before);
            CentralRun {
                report: outcome?,
                bytes_per_epoch: 0,
            }
        }
        Central::DataParallel(workers) => {
            let par = ParallelConfig {
                workers,
                device: cfg.federation.device,
                threads: Some(threads.max(1)),
            };
            let mut trainer = ParallelTrainer::new(&data.model, tcfg.clone(), &par)?;
            trainer.set_params(initial)?;
            let pairs = mirror(trainer.model().var_store().variables(), shadow.as_ref())?;
            let report = trainer.fit_observed(&splits.train, Some(&splits.val), &mut |r| {
                observe(&pairs, r)
            })?;
            CentralRun {
                report,
                bytes_per_epoch: trainer.bytes_per_step() * steps_per_epoch,
            }
        }
        Central::ModelParallel(stages) => {
            let pipe = PipelineConfig {
                stages,
                device: cfg.federation.device,
                threads: Some(threads.max(1)),
                ..PipelineConfig::default()
            };
            let mut trainer = PipelineTrainer::new(&data.model, tcfg.clone(), &pipe)?;
            trainer.set_params(initial)?;
            let pairs = mirror(trainer.model().var_store().variables(), shadow.as_ref())?;
            let report = trainer.fit_observed(&splits.train, Some(&splits.val), &mut |r| {
                observe(&pairs, r)
            })?;
            CentralRun {
                report,
                bytes_per_epoch: trainer.bytes_per_epoch(),
            }
        }
    };
    if let Some(e) = failure {
        return Err(e.context(format!("scoring {method}")));
    }
    Ok(run)
}
