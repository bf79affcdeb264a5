//! The parallelization study (`fedcrime-sim study parallel`): for each
//! model, one worker, data-parallel training with each worker count,
//! every other parallel trainer [`Central::study_methods`] names, and
//! federated learning, compared for time per epoch, scaling, memory,
//! communication and accuracy, in `study.csv`, `report.md` and plots.
//!
//! Every method of a model starts from the same initial weights
//! ([`initial_model`]) and stops by the simulator's selection rule: at most
//! `selection.max_epochs` epochs (the federation: rounds), stopping after
//! `selection.patience` of them without a better validation headline, and
//! is judged at its best validation step. The federation is FedAvg over the
//! in-memory transport, one station per LAPD area (gat-tcn: per bureau, see
//! [`super::config::ModelSettings::kind`]), each station training exactly
//! one local epoch per round, so a round passes over the pooled training
//! data once, like an epoch. The methods run one after the other in one
//! process and share the same total of libtorch threads (the cores): one
//! worker takes them all, W workers a share each, the federation as many
//! stations at once as there are threads.
//!
//! What is measured, per method ([`StudyRow`]):
//! - seconds per epoch: the median over epochs (rounds) of the method's own
//!   time, without the study's scoring (centralized: the training pass, the
//!   trainer's validation excluded; federated: the round engine's clock,
//!   its server-side validation for early stopping included), and the
//!   speedup and samples per second derived from it;
//! - peak memory: the process's peak resident set while the method ran
//!   (`VmHWM`, reset before each method through `/proc/self/clear_refs`),
//!   and per worker its growth over the resident set at the method's start
//!   (models, optimizer state, activations, gradient buffers; the shared
//!   data and libtorch are resident before) divided by the workers (stations
//!   at once for the federation); host memory, also on a GPU;
//! - bytes per epoch: what the trainer reports
//!   ([`central::CentralRun::bytes_per_epoch`]: gradients and parameters
//!   between data-parallel replicas, activations and gradients between
//!   pipeline stages), the federation's
//!   round messages ([`super::traffic`]), 0 for one worker;
//! - time to the single worker's best validation headline (empty when
//!   never reached) and the test headline at the best validation step,
//!   next to the best naive baseline's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use fedcrime_data::{Partition, Task};
use fedcrime_files::CsvLog;
use fedcrime_ml::model::ModelKind;
use fedcrime_ml::train::{evaluate_baselines, BaselineResult};
use fedcrime_ml::DeviceChoice;

use super::central::{self, Central};
use super::config::{self, SimConfig, Transport};
use super::data::StudyData;
use super::record::{self, headline_name};
use super::report::{best_baseline, first_reaching, higher_is_better, MethodRun};
use super::{
    central_method, federation_method, initial_model, peak_rss_mib, reset_peak_rss, rss_mib,
    torch_threads_lock, CentralPlan, RunOptions,
};
use crate::plot::{Legend, Line, Panel, PanelPlot};
use crate::progress;

/// The kind of parallelism of a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MethodKind {
    /// One worker with every thread (the reference).
    Single,
    /// Replicas of the model, each on a part of every batch.
    DataParallel,
    /// The model's layers split into stages that pipeline micro-batches.
    ModelParallel,
    /// Stations training on their own data, averaged each round.
    Federated,
}

impl MethodKind {
    /// The name in `study.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Single => "single",
            MethodKind::DataParallel => "data-parallel",
            MethodKind::ModelParallel => "model-parallel",
            MethodKind::Federated => "federated",
        }
    }
}

/// What `fedcrime-sim study parallel` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct StudySpec {
    /// Data, task of dnn and lstm, optimizer, seed, device and selection
    /// rule (`selection.max_epochs` caps epochs and rounds alike); the
    /// model, partition and federation settings are set per model
    /// ([`StudySpec::config_for`]).
    pub base: SimConfig,
    /// The models, each studied on its own.
    pub models: Vec<ModelKind>,
    /// Worker counts of the parallel trainers (1 is the single worker,
    /// which always runs).
    pub workers: Vec<usize>,
}

impl StudySpec {
    /// Checks the lists and the settings, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.models.is_empty() {
            bail!("--models: name at least one of dnn, lstm, gat-tcn");
        }
        if self.workers.is_empty() || self.workers.contains(&0) {
            bail!("--workers: give worker counts of at least 1, e.g. 1,2,4");
        }
        if let Some(&w) = self.workers.iter().find(|&&w| w > 64) {
            bail!("--workers: {w} workers is more than this study supports (64)");
        }
        for kind in &self.models {
            self.config_for(*kind)?;
        }
        Ok(())
    }

    /// The simulator configuration of one model's study: FedAvg on the
    /// memory transport, one local epoch per round, one station per area
    /// (gat-tcn: the counts task and one station per bureau), as many
    /// stations at once as the threads, no fixed rounds or epochs.
    pub fn config_for(&self, kind: ModelKind) -> Result<SimConfig> {
        let mut c = self.base.clone();
        c.model.kind = kind;
        c.federation.partition = if kind == ModelKind::GatTcn {
            c.data.task = Task::Counts;
            Partition::Bureau
        } else {
            Partition::Natural
        };
        c.federation.stations = None;
        c.federation.rounds = None;
        c.federation.local_epochs = Some(1);
        c.federation.min_local_steps = Some(0);
        c.federation.transport = Transport::Memory;
        c.federation.concurrency = Some(threads());
        c.federation.fraction = 1.0;
        c.centralized.enabled = true;
        c.centralized.epochs = None;
        c.selection.max_rounds = c.selection.max_epochs as u64;
        c.validate()
            .with_context(|| format!("the {kind} study's settings"))?;
        Ok(c.resolve())
    }
}

/// The name of the one-worker, one-thread reference (on a CPU with
/// several cores): the single worker's thread scaling, and the reference
/// of `fedcrime-sim bench train`.
pub const ONE_THREAD: &str = "centralized-1-thread";

/// The libtorch threads every method gets in all: the cores.
fn threads() -> usize {
    config::cores()
}

/// One model x method line of `study.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct StudyRow {
    /// `dnn`, `lstm`, `gat-tcn`.
    pub model: ModelKind,
    /// Its task.
    pub task: Task,
    /// The method's name (`centralized`, `data-parallel-2`, `fedavg`).
    pub method: String,
    /// Its kind.
    pub kind: MethodKind,
    /// Workers (replicas, stages; stations training at once).
    pub workers: usize,
    /// libtorch intra-op threads of each worker.
    pub threads_per_worker: usize,
    /// Epochs (rounds) run.
    pub epochs: u64,
    /// The best validation epoch (round).
    pub best_epoch: u64,
    /// Median seconds per epoch (round).
    pub seconds_per_epoch: f64,
    /// The single worker's seconds per epoch over this method's.
    pub speedup: f64,
    /// Training samples per second (over all workers).
    pub samples_per_s: f64,
    /// Training seconds in all.
    pub train_seconds: f64,
    /// The process's peak resident memory while the method ran, MiB.
    pub peak_rss_mib: f64,
    /// The method's peak growth of resident memory per worker, MiB.
    pub peak_mib_per_worker: f64,
    /// Bytes the workers exchanged per epoch (round).
    pub bytes_per_epoch: u64,
    /// Seconds until the validation headline first reached the single
    /// worker's best (never: `None`).
    pub seconds_to_single_best: Option<f64>,
    /// Validation headline at the best step.
    pub val_at_best: f64,
    /// Test headline at the best step.
    pub test_at_best: f64,
    /// The best naive baseline's name and test headline.
    pub naive: Option<(String, f64)>,
}

/// `study.csv`'s columns, in order.
pub const COLUMNS: [&str; 22] = [
    "model",
    "task",
    "method",
    "kind",
    "workers",
    "threads_per_worker",
    "epochs",
    "best_epoch",
    "seconds_per_epoch",
    "speedup",
    "samples_per_s",
    "train_seconds",
    "peak_rss_mib",
    "peak_mib_per_worker",
    "bytes_per_epoch",
    "seconds_to_single_best",
    "metric",
    "val_at_best",
    "test_at_best",
    "naive_baseline",
    "naive_test",
    "device",
];

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        String::new()
    }
}

impl StudyRow {
    fn cells(&self, device: &str) -> Vec<String> {
        vec![
            self.model.to_string(),
            self.task.to_string(),
            self.method.clone(),
            self.kind.as_str().into(),
            self.workers.to_string(),
            self.threads_per_worker.to_string(),
            self.epochs.to_string(),
            self.best_epoch.to_string(),
            num(self.seconds_per_epoch, 4),
            num(self.speedup, 3),
            num(self.samples_per_s, 1),
            num(self.train_seconds, 3),
            num(self.peak_rss_mib, 1),
            num(self.peak_mib_per_worker, 1),
            self.bytes_per_epoch.to_string(),
            self.seconds_to_single_best
                .map_or(String::new(), |s| num(s, 3)),
            headline_name(self.task).into(),
            num(self.val_at_best, 4),
            num(self.test_at_best, 4),
            self.naive.as_ref().map_or(String::new(), |n| n.0.clone()),
            self.naive.as_ref().map_or(String::new(), |n| num(n.1, 4)),
            device.into(),
        ]
    }
}

/// One model's study: its runs and what they measured.
#[derive(Debug)]
pub struct ModelStudy {
    /// The model.
    pub model: ModelKind,
    /// Its task.
    pub task: Task,
    /// Trainable scalars.
    pub params: usize,
    /// Training / validation / test samples.
    pub samples: (usize, usize, usize),
    /// Stations of the federation.
    pub stations: usize,
    /// The naive baselines on the test split.
    pub baselines: Vec<BaselineResult>,
    /// Every method's rows per epoch, single worker first.
    pub runs: Vec<MethodRun>,
    /// The `study.csv` lines, in `runs` order.
    pub rows: Vec<StudyRow>,
}

/// What a study produced.
#[derive(Debug)]
pub struct StudyOutcome {
    /// Each model's study.
    pub models: Vec<ModelStudy>,
    /// Where the methods ran.
    pub device: String,
    /// The text of `report.md`.
    pub report: String,
}

/// A method's cost before the study's derived columns.
struct Measured {
    run: MethodRun,
    kind: MethodKind,
    workers: usize,
    threads_per_worker: usize,
    bytes_per_epoch: u64,
    peak_rss_mib: f64,
    peak_mib_per_worker: f64,
}

/// Runs `f` with the peak of resident memory reset, returning its result,
/// the peak while it ran and the growth over the resident set at its start.
fn with_peak_memory<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64, f64)> {
    reset_peak_rss();
    let start = rss_mib();
    let value = f()?;
    let peak = peak_rss_mib();
    Ok((value, peak, (peak - start).max(0.0)))
}

/// Where the methods run, one line for the report and `study.csv`.
fn device_label(choice: DeviceChoice) -> Result<String> {
    let device = choice.resolve().map_err(anyhow::Error::msg)?;
    Ok(match device {
        tch::Device::Cuda(_) => format!(
            "CUDA ({} device(s); replicas on cuda:0.., stations on {device:?})",
            fedcrime_ml::device::cuda_devices()
        ),
        _ => format!("CPU ({} cores)", config::cores()),
    })
}

/// Checks that the CUDA devices can hold the replicas: one per worker.
fn check_devices(choice: DeviceChoice, workers: &[usize]) -> Result<()> {
    let first = match choice {
        DeviceChoice::Cpu => return Ok(()),
        DeviceChoice::Auto if fedcrime_ml::device::cuda_devices() == 0 => return Ok(()),
        DeviceChoice::Auto => 0,
        DeviceChoice::Cuda(n) => n,
    };
    choice.resolve().map_err(anyhow::Error::msg)?;
    let count = fedcrime_ml::device::cuda_devices();
    let most = workers.iter().copied().max().unwrap_or(1);
    if first + most > count {
        bail!(
            "--workers {most} needs {most} CUDA devices from cuda:{first} (one replica each), \
             {count} present: give fewer workers or --device cpu"
        );
    }
    Ok(())
}

/// Median of the step-to-step differences of the rows' wall seconds.
fn median_step_seconds(run: &MethodRun) -> f64 {
    let mut last = 0.0;
    let mut steps: Vec<f64> = run
        .rows
        .iter()
        .map(|r| {
            let d = r.wall_seconds - last;
            last = r.wall_seconds;
            d
        })
        .collect();
    if steps.is_empty() {
        return f64::NAN;
    }
    steps.sort_by(f64::total_cmp);
    let mid = steps.len() / 2;
    if steps.len() % 2 == 1 {
        steps[mid]
    } else {
        (steps[mid - 1] + steps[mid]) / 2.0
    }
}

/// The `study.csv` lines of one model's measured methods (the single
/// worker first).
fn study_rows(
    model: ModelKind,
    task: Task,
    measured: &[Measured],
    baselines: &[BaselineResult],
) -> Vec<StudyRow> {
    let naive = best_baseline(task, baselines).map(|b| (b.name.clone(), b.metrics.headline().1));
    let single = measured.iter().find(|m| m.kind == MethodKind::Single);
    let single_s = single.map_or(f64::NAN, |m| median_step_seconds(&m.run));
    let target = single.and_then(|m| m.run.best()).map(|r| r.val.headline());
    measured
        .iter()
        .map(|m| {
            let last = m.run.last();
            let best = m.run.best();
            let epochs = last.map_or(0, |r| r.step);
            let seconds = median_step_seconds(&m.run);
            let samples_per_epoch =
                last.map_or(f64::NAN, |r| r.samples as f64 / r.step.max(1) as f64);
            StudyRow {
                model,
                task,
                method: m.run.method.clone(),
                kind: m.kind,
                workers: m.workers,
                threads_per_worker: m.threads_per_worker,
                epochs,
                best_epoch: best.map_or(0, |r| r.step),
                seconds_per_epoch: seconds,
                speedup: single_s / seconds,
                samples_per_s: samples_per_epoch / seconds,
                train_seconds: last.map_or(0.0, |r| r.wall_seconds),
                peak_rss_mib: m.peak_rss_mib,
                peak_mib_per_worker: m.peak_mib_per_worker / m.workers.max(1) as f64,
                bytes_per_epoch: m.bytes_per_epoch,
                seconds_to_single_best: target
                    .and_then(|t| first_reaching(&m.run, task, t))
                    .map(|r| r.wall_seconds),
                val_at_best: best.map_or(f64::NAN, |r| r.val.headline()),
                test_at_best: best.map_or(f64::NAN, |r| r.test.headline()),
                naive: naive.clone(),
            }
        })
        .collect()
}

/// Runs one model's study: every centralized method, then the federation.
fn study_model(
    spec: &StudySpec,
    kind: ModelKind,
    out: &Path,
    opts: RunOptions,
) -> Result<ModelStudy> {
    let cfg = spec.config_for(kind)?;
    let spinner = progress::spinner(opts.quiet, &format!("{kind}: preparing the data"));
    let data = StudyData::prepare(&cfg)?;
    spinner.finish_and_clear();
    tracing::info!(
        "{kind} on {}: {} train / {} val / {} test samples, {} stations",
        data.task.task,
        data.splits.train.len(),
        data.splits.val.len(),
        data.splits.test.len(),
        data.stations.len()
    );
    let initial = initial_model(&data, cfg.seed)?;
    let baselines = evaluate_baselines(&data.splits, &data.splits.test, data.task.period)?;
    let mut csv = record::MetricsCsv::create(
        &out.join(format!("metrics-{kind}.csv")),
        data.task.task,
        data.output_dim(),
    )?;
    let central_cfg = central::train_config(&cfg, 0.0);
    let total = threads();
    let mut measured = Vec::new();
    let cpu = cfg
        .federation
        .device
        .resolve()
        .map_err(anyhow::Error::msg)?
        == tch::Device::Cpu;
    let mut plans = Vec::new();
    for which in Central::study_methods(&spec.workers) {
        plans.push(CentralPlan::new(which, total));
        // On a CPU, one worker on one thread too: how threads alone scale.
        if which == Central::Single && cpu && total > 1 {
            plans.push(CentralPlan {
                which,
                threads: 1,
                name: ONE_THREAD.into(),
            });
        }
    }
    for plan in &plans {
        let ((run, outcome), peak, growth) = with_peak_memory(|| {
            central_method(
                plan,
                &data,
                &cfg,
                &central_cfg,
                &initial,
                opts.quiet,
                &mut csv,
            )
        })
        .with_context(|| format!("the {kind} study"))?;
        let workers = plan.which.workers();
        measured.push(Measured {
            run,
            kind: plan.which.kind(),
            workers,
            threads_per_worker: (plan.threads / workers).max(1),
            bytes_per_epoch: outcome.bytes_per_epoch,
            peak_rss_mib: peak,
            peak_mib_per_worker: growth,
        });
    }
    let concurrency = cfg.concurrency();
    let (super::FederationRun { run, .. }, peak, growth) =
        with_peak_memory(|| federation_method(&data, &cfg, &initial, out, &opts, &mut csv))
            .with_context(|| format!("the {kind} study"))?;
    let bytes_per_epoch = run.last().map_or(0, |r| r.bytes_sent / r.step.max(1));
    measured.push(Measured {
        run,
        kind: MethodKind::Federated,
        workers: concurrency,
        threads_per_worker: (config::cores() / concurrency).max(1),
        bytes_per_epoch,
        peak_rss_mib: peak,
        peak_mib_per_worker: growth,
    });
    drop(csv);
    let rows = study_rows(kind, data.task.task, &measured, &baselines);
    Ok(ModelStudy {
        model: kind,
        task: data.task.task,
        params: initial.spec().total(),
        samples: (
            data.splits.train.len(),
            data.splits.val.len(),
            data.splits.test.len(),
        ),
        stations: data.stations.len(),
        baselines,
        runs: measured.into_iter().map(|m| m.run).collect(),
        rows,
    })
}

/// The 1-, 5- and 15-minute load averages (Linux), for the report.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Runs the parallelization study into `out` (created if missing): see
/// the [module docs](self).
pub fn study_parallel(spec: &StudySpec, out: &Path, opts: RunOptions) -> Result<StudyOutcome> {
    spec.validate()?;
    let device_choice = spec.base.federation.device;
    check_devices(device_choice, &spec.workers)?;
    let device = device_label(device_choice)?;
    let _threads = torch_threads_lock();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let load_before = load_average();
    let mut models = Vec::new();
    for kind in &spec.models {
        models.push(study_model(spec, *kind, out, opts.clone())?);
    }
    let load_after = load_average();

    let rows: Vec<Vec<String>> = models
        .iter()
        .flat_map(|m| m.rows.iter().map(|r| r.cells(&device)))
        .collect();
    let path = out.join("study.csv");
    CsvLog::create(&path, &COLUMNS.map(String::from), rows)
        .with_context(|| format!("writing {}", path.display()))?;
    write_plots(out, &device, &models)?;
    let setup = Setup {
        spec,
        device: &device,
        load: (load_before, load_after),
        data: &spec.base.data.file,
    };
    let report = markdown(&setup, &models);
    std::fs::write(out.join("report.md"), &report)
        .with_context(|| format!("writing {}", out.join("report.md").display()))?;
    Ok(StudyOutcome {
        models,
        device,
        report,
    })
}

/// The scaling plots' lines of one model: `y` of each parallel kind
/// against its workers (the federation: stations at once), from one
/// worker's point, and the one-thread worker's point.
fn scaling_lines(m: &ModelStudy, y: fn(&StudyRow) -> f64) -> Vec<Line> {
    let single = m.rows.iter().find(|r| r.kind == MethodKind::Single);
    let mut kinds: Vec<MethodKind> = m
        .rows
        .iter()
        .map(|r| r.kind)
        .filter(|k| *k != MethodKind::Single)
        .collect();
    kinds.dedup();
    let one_thread = m
        .rows
        .iter()
        .find(|r| r.method == ONE_THREAD)
        .map(|r| Line {
            label: format!("{} one worker, 1 thread", m.model),
            points: vec![(1.0, y(r))],
            dashed: false,
        });
    kinds
        .into_iter()
        .map(|kind| {
            let mut points: Vec<(f64, f64)> = m
                .rows
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| (r.workers as f64, y(r)))
                .collect();
            // Parallel trainers start from one worker; the federation is its own point.
            if kind != MethodKind::Federated {
                if let Some(s) = single {
                    points.insert(0, (1.0, y(s)));
                }
            }
            let label = if kind == MethodKind::Federated {
                format!("{} federated (stations at once)", m.model)
            } else {
                format!("{} {}", m.model, kind.as_str())
            };
            Line {
                label,
                points,
                dashed: false,
            }
        })
        .chain(one_thread)
        .collect()
}

/// The top of a y axis from 0 covering `y` of every row of `m`, 10% above.
fn y_top(m: &ModelStudy, y: fn(&StudyRow) -> f64) -> f64 {
    let top = m
        .rows
        .iter()
        .map(y)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    if top > 0.0 {
        top * 1.1
    } else {
        1.0
    }
}

/// `study-time`, `study-speedup` and `study-convergence` (.svg and .png).
fn write_plots(out: &Path, device: &str, models: &[ModelStudy]) -> Result<()> {
    let grid = (1, models.len().max(1));
    let most = models
        .iter()
        .flat_map(|m| m.rows.iter().map(|r| r.workers))
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let workers_axis = (0.5, most + 0.5);
    let time = PanelPlot {
        title: format!("Seconds per epoch (round) against workers, {device}"),
        grid,
        panels: models
            .iter()
            .map(|m| Panel {
                caption: format!("{} ({})", m.model, m.task),
                x_label: "workers (stations at once)".into(),
                y_label: "seconds per epoch".into(),
                lines: scaling_lines(m, |r| r.seconds_per_epoch),
                x_range: Some(workers_axis),
                y_range: Some((0.0, y_top(m, |r| r.seconds_per_epoch))),
                legend: Legend::UpperRight,
            })
            .collect(),
    };
    time.write_both(out, "study-time")?;

    let mut lines: Vec<Line> = models
        .iter()
        .flat_map(|m| scaling_lines(m, |r| r.speedup))
        .collect();
    let speedup_top = models
        .iter()
        .map(|m| y_top(m, |r| r.speedup))
        .fold(0.0, f64::max);
    lines.push(Line {
        label: "ideal (speedup = workers)".into(),
        points: vec![(1.0, 1.0), (most, most)],
        dashed: true,
    });
    let speedup = PanelPlot {
        title: format!("Speedup over one worker with the same total threads, {device}"),
        grid: (1, 1),
        panels: vec![Panel {
            caption: String::new(),
            x_label: "workers (stations at once)".into(),
            y_label: "speedup (one worker's s/epoch over the method's)".into(),
            lines,
            x_range: Some(workers_axis),
            y_range: Some((0.0, speedup_top.max(most) * 1.05)),
            legend: Legend::UpperLeft,
        }],
    };
    speedup.write_both(out, "study-speedup")?;

    let convergence = PanelPlot {
        title: "Validation headline against the method's own seconds".into(),
        grid,
        panels: models
            .iter()
            .map(|m| {
                let mut lines: Vec<Line> = m
                    .runs
                    .iter()
                    .map(|run| Line {
                        label: run.method.clone(),
                        points: run
                            .rows
                            .iter()
                            .map(|r| (r.wall_seconds, r.val.headline()))
                            .collect(),
                        dashed: false,
                    })
                    .collect();
                let x_hi = lines
                    .iter()
                    .flat_map(|l| l.points.iter().map(|p| p.0))
                    .fold(0.0, f64::max);
                if let Some(best) = m.runs.first().and_then(MethodRun::best) {
                    lines.push(Line {
                        label: "one worker's best".into(),
                        points: vec![(0.0, best.val.headline()), (x_hi, best.val.headline())],
                        dashed: true,
                    });
                }
                Panel {
                    caption: format!("{} ({})", m.model, m.task),
                    x_label: "seconds".into(),
                    y_label: format!("validation {}", headline_name(m.task)),
                    lines,
                    x_range: None,
                    y_range: None,
                    legend: Legend::LowerRight,
                }
            })
            .collect(),
    };
    convergence.write_both(out, "study-convergence")
}

/// What `report.md` says about the setup.
struct Setup<'a> {
    spec: &'a StudySpec,
    device: &'a str,
    load: (Option<String>, Option<String>),
    data: &'a Option<PathBuf>,
}

/// A speedup from which the report calls a gain significant.
const SIGNIFICANT: f64 = 1.2;

/// Times within this factor of each other count as the same.
const SAME_TIME: f64 = 1.05;

fn mb(bytes: u64) -> String {
    format!("{:.3}", bytes as f64 / 1e6)
}

fn cell(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "n/a".into()
    }
}

/// The markdown of `report.md`.
fn markdown(setup: &Setup<'_>, models: &[ModelStudy]) -> String {
    let spec = setup.spec;
    let base = &spec.base;
    let mut md = String::new();
    md.push_str("# Parallelization study: one worker, data-parallel, model-parallel and federated training\n\n");
    let _ = writeln!(md, "- device: {}", setup.device);
    let _ = writeln!(
        md,
        "- threads: {t} libtorch threads in all for every method: one worker takes all {t}, W workers {t}/W each (at least 1), the federation trains {t} stations at once with {} each",
        (config::cores() / threads()).max(1),
        t = threads()
    );
    let _ = writeln!(
        md,
        "- load average (1, 5, 15 min) before: {}, after: {}; the machine may be shared, so timings are noisy: compare ratios within this run",
        setup.load.0.as_deref().unwrap_or("n/a"),
        setup.load.1.as_deref().unwrap_or("n/a")
    );
    let _ = writeln!(
        md,
        "- data: {}",
        match setup.data {
            Some(p) => p.display().to_string(),
            None => format!(
                "synthetic LA-like data ({} incidents, {} days, seed {})",
                base.data.rows, base.data.days, base.data.data_seed
            ),
        }
    );
    for m in models {
        let _ = writeln!(
            md,
            "- {}: task {}, {} parameters, {} train / {} validation / {} test samples, {} stations",
            m.model, m.task, m.params, m.samples.0, m.samples.1, m.samples.2, m.stations
        );
    }
    let _ = writeln!(
        md,
        "- rule: every method of a model from the same initial weights (seed {}), Adam lr {}, batch {}; at most {} epochs (federation: rounds of one local epoch per station, one pass over the training data: the same data budget as the others, not FedAvg's best set-up when stations hold few records; `fedcrime-sim simulate` gives each station at least 20 optimizer steps per round), stopping after {} without a better validation headline; judged at the best validation step",
        base.seed,
        base.train.lr,
        base.train.batch_size,
        base.selection.max_epochs,
        base.selection.patience
    );
    md.push_str("- s/epoch: the median over epochs (rounds) of the method's own time (centralized: the training pass; federated: the round, with aggregation and its server-side validation); speedup: one worker's s/epoch over the method's; memory: the process's peak while the method ran, and its growth over the start per worker (host memory); MB/epoch: gradients between replicas, activations between stages, round messages of the federation\n");

    md.push_str("\n## Results\n\n");
    let metric_names: Vec<&str> = {
        let mut n: Vec<&str> = models.iter().map(|m| headline_name(m.task)).collect();
        n.dedup();
        n
    };
    let _ = writeln!(
        md,
        "| model | method | workers | threads each | epochs (best) | s/epoch | speedup | samples/s | peak RSS MiB | MiB per worker | MB/epoch | s to one worker's best val | test {} at best | naive test |",
        metric_names.join(" / ")
    );
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in models.iter().flat_map(|m| &m.rows) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} ({}) | {} | {}x | {} | {} | {} | {} | {} | {} | {} |",
            r.model,
            r.method,
            r.workers,
            r.threads_per_worker,
            r.epochs,
            r.best_epoch,
            cell(r.seconds_per_epoch, 4),
            cell(r.speedup, 2),
            cell(r.samples_per_s, 0),
            cell(r.peak_rss_mib, 0),
            cell(r.peak_mib_per_worker, 1),
            mb(r.bytes_per_epoch),
            r.seconds_to_single_best
                .map_or("not reached".into(), |s| cell(s, 2)),
            cell(r.test_at_best, 4),
            r.naive
                .as_ref()
                .map_or("n/a".into(), |(n, v)| format!("{} ({n})", cell(*v, 4))),
        );
    }

    md.push_str("\n## Findings\n\n");
    for line in findings(models) {
        let _ = writeln!(md, "- {line}");
    }
    md.push_str("\n## The source study's claims\n\n");
    for (claim, verdict) in claims(models) {
        let _ = writeln!(md, "- *\"{claim}\"*: {verdict}");
    }
    md.push_str("\n## Files\n\n`study.csv` (the table), `metrics-<model>.csv` (every method's scores after every epoch or round), `study-time`, `study-speedup` and `study-convergence` (.svg and .png).\n");
    md
}

/// The best row of a kind by speedup.
fn fastest(m: &ModelStudy, kind: MethodKind) -> Option<&StudyRow> {
    m.rows
        .iter()
        .filter(|r| r.kind == kind && r.speedup.is_finite())
        .max_by(|a, b| a.speedup.total_cmp(&b.speedup))
}

/// A test headline against the single worker's, in words.
fn accuracy_words(task: Task, v: f64, single: f64) -> String {
    let better = if higher_is_better(task) {
        v > single
    } else {
        v < single
    };
    let word = if cell(v, 4) == cell(single, 4) {
        "the same as"
    } else if better {
        "better than"
    } else {
        "worse than"
    };
    format!("{} {word} one worker's {}", cell(v, 4), cell(single, 4))
}

/// A few sentences computed from the numbers.
fn findings(models: &[ModelStudy]) -> Vec<String> {
    let mut lines = Vec::new();
    for m in models {
        let metric = headline_name(m.task);
        let Some(single) = m.rows.iter().find(|r| r.kind == MethodKind::Single) else {
            continue;
        };
        let one_thread = m.rows.iter().find(|r| r.method == ONE_THREAD);
        let mut head = format!(
            "{}: one worker on {} thread(s) {} s/epoch",
            m.model,
            single.threads_per_worker,
            cell(single.seconds_per_epoch, 3)
        );
        if let Some(o) = one_thread {
            let _ = write!(
                head,
                " (on 1 thread {} s/epoch: its {} threads run {}x as fast as one)",
                cell(o.seconds_per_epoch, 3),
                single.threads_per_worker,
                cell(o.seconds_per_epoch / single.seconds_per_epoch, 2)
            );
        }
        let mut parts = vec![head];
        for r in m.rows.iter().filter(|r| r.kind != MethodKind::Single) {
            let mut s = format!(
                "{} {}x one worker ({} {}: {:.0}% parallel efficiency",
                r.method,
                cell(r.speedup, 2),
                r.workers,
                if r.kind == MethodKind::Federated {
                    "stations at once"
                } else {
                    "workers"
                },
                100.0 * r.speedup / r.workers.max(1) as f64
            );
            if let Some(o) = one_thread {
                let _ = write!(
                    s,
                    "; {}x the one-thread worker",
                    cell(o.seconds_per_epoch / r.seconds_per_epoch, 2)
                );
            }
            if r.bytes_per_epoch > 0 {
                let _ = write!(s, "; {} MB/epoch", mb(r.bytes_per_epoch));
            }
            let _ = write!(
                s,
                "), test {metric} {}",
                accuracy_words(m.task, r.test_at_best, single.test_at_best)
            );
            parts.push(s);
        }
        lines.push(format!("{}.", parts.join("; ")));
        let never: Vec<&str> = m
            .rows
            .iter()
            .filter(|r| r.seconds_to_single_best.is_none())
            .map(|r| r.method.as_str())
            .collect();
        if !never.is_empty() {
            lines.push(format!(
                "{}: never reached one worker's best validation {metric} ({}): {}.",
                m.model,
                cell(single.val_at_best, 4),
                never.join(", ")
            ));
        }
        let below_naive: Vec<&str> = m
            .rows
            .iter()
            .filter(|r| {
                r.naive.as_ref().is_some_and(|(_, n)| {
                    if higher_is_better(m.task) {
                        r.test_at_best <= *n
                    } else {
                        r.test_at_best >= *n
                    }
                })
            })
            .map(|r| r.method.as_str())
            .collect();
        if !below_naive.is_empty() {
            lines.push(format!(
                "{}: not better than the naive baseline on test {metric}: {}.",
                m.model,
                below_naive.join(", ")
            ));
        }
    }
    lines.extend(thread_caution(models));
    lines
}

/// The source's claims with what this run's numbers say about them.
fn claims(models: &[ModelStudy]) -> Vec<(&'static str, String)> {
    vec![
        (
            "the DNN benefits significantly from parallelization, LSTM models face limitations due to their sequential nature",
            dnn_lstm_verdict(models),
        ),
        (
            "model parallelism worked well for large models, but inter-GPU communication could introduce significant overhead",
            model_parallel_verdict(models),
        ),
    ]
}

fn dnn_lstm_verdict(models: &[ModelStudy]) -> String {
    let best = |kind: ModelKind| {
        models
            .iter()
            .find(|m| m.model == kind)
            .and_then(|m| fastest(m, MethodKind::DataParallel))
    };
    let (Some(d), Some(l)) = (best(ModelKind::Dnn), best(ModelKind::Lstm)) else {
        return "not testable in this run: it needs dnn and lstm with --workers above 1.".into();
    };
    let mut numbers = format!(
        "with the same total threads the DNN's best data-parallel speedup over one worker is {}x ({}), the LSTM's {}x ({}); we call {SIGNIFICANT}x or more significant",
        cell(d.speedup, 2),
        d.method,
        cell(l.speedup, 2),
        l.method
    );
    let over_one_thread = |kind: ModelKind, r: &StudyRow| {
        let m = models.iter().find(|m| m.model == kind)?;
        let o = m.rows.iter().find(|r| r.method == ONE_THREAD)?;
        Some(o.seconds_per_epoch / r.seconds_per_epoch)
    };
    if let (Some(a), Some(b)) = (
        over_one_thread(ModelKind::Dnn, d),
        over_one_thread(ModelKind::Lstm, l),
    ) {
        let _ = write!(
            numbers,
            " (over one worker on one thread: {}x and {}x)",
            cell(a, 2),
            cell(b, 2)
        );
    }
    let dnn_gains = d.speedup >= SIGNIFICANT;
    let lstm_less = l.speedup < d.speedup;
    let verdict = match (dnn_gains, lstm_less) {
        (true, true) => "**agrees**",
        (true, false) => "**partly agrees**: the DNN gains significantly, but the LSTM gains as much or more",
        (false, true) => "**partly agrees**: the LSTM gains less than the DNN, but the DNN's gain is not significant",
        (false, false) => "**disagrees**: neither is the DNN's gain significant nor the LSTM's smaller",
    };
    let mut text = format!("{verdict}; {numbers}.");
    if let Some(caution) = thread_caution(models) {
        let _ = write!(text, " {caution}");
    }
    text
}

/// A warning when one worker ran slower on all the threads than on one
/// (OpenMP threads contending with other work on a busy machine): speedups
/// over it then measure that contention more than the parallel trainers.
fn thread_caution(models: &[ModelStudy]) -> Option<String> {
    let slowed: Vec<String> = models
        .iter()
        .filter_map(|m| {
            let single = m.rows.iter().find(|r| r.kind == MethodKind::Single)?;
            let one = m.rows.iter().find(|r| r.method == ONE_THREAD)?;
            (one.seconds_per_epoch * SAME_TIME < single.seconds_per_epoch).then(|| {
                format!(
                    "{} {}x",
                    m.model,
                    cell(single.seconds_per_epoch / one.seconds_per_epoch, 2)
                )
            })
        })
        .collect();
    (!slowed.is_empty()).then(|| {
        format!(
            "Caution: one worker was slower on all its threads than on one ({}, s/epoch all threads over one thread), so the machine was busy and the speedups over it overstate the parallel trainers; the speedups over the one-thread worker are the conservative reading.",
            slowed.join(", ")
        )
    })
}

fn model_parallel_verdict(models: &[ModelStudy]) -> String {
    let measured: Vec<(&ModelStudy, &StudyRow, &StudyRow)> = models
        .iter()
        .filter_map(|m| {
            let single = m.rows.iter().find(|r| r.kind == MethodKind::Single)?;
            let mp = fastest(m, MethodKind::ModelParallel)?;
            Some((m, single, mp))
        })
        .collect();
    if measured.is_empty() {
        return "not measured: the study ran no model-parallel method (`--workers` above 1 adds them)."
            .into();
    }
    let mut parts: Vec<String> = measured
        .iter()
        .map(|(m, single, mp)| {
            format!(
                "{} ({} parameters): {} takes {}x one worker's time per epoch, moves {} MB/epoch between stages, {} MiB per stage against one worker's {} MiB",
                m.model,
                m.params,
                mp.method,
                cell(1.0 / mp.speedup, 2),
                mb(mp.bytes_per_epoch),
                cell(mp.peak_mib_per_worker, 1),
                cell(single.peak_mib_per_worker, 1)
            )
        })
        .collect();
    let slower = measured
        .iter()
        .filter(|(_, _, mp)| 1.0 / mp.speedup > SAME_TIME)
        .count();
    let overhead = if slower == measured.len() {
        "the overhead part **agrees**: every model-parallel run was slower than one worker"
    } else if slower == 0 {
        "the overhead part **disagrees**: no model-parallel run was slower than one worker"
    } else {
        "the overhead part **partly agrees**: some model-parallel runs were slower than one worker"
    };
    let largest = measured.iter().max_by_key(|(m, _, _)| m.params);
    let smallest = measured.iter().min_by_key(|(m, _, _)| m.params);
    let size = match (largest, smallest) {
        (Some(l), Some(s)) if l.0.params != s.0.params => {
            if l.2.speedup > s.2.speedup {
                format!(
                    "the large-model part **agrees**: the largest model ({}) fares better ({}x) than the smallest ({}, {}x)",
                    l.0.model,
                    cell(l.2.speedup, 2),
                    s.0.model,
                    cell(s.2.speedup, 2)
                )
            } else {
                format!(
                    "the large-model part **disagrees**: the largest model ({}) fares no better ({}x) than the smallest ({}, {}x)",
                    l.0.model,
                    cell(l.2.speedup, 2),
                    s.0.model,
                    cell(s.2.speedup, 2)
                )
            }
        }
        _ => "the large-model part is not testable with one model size".into(),
    };
    parts.push(format!("{overhead}; {size}"));
    let cpu = fedcrime_ml::device::cuda_devices() == 0;
    if cpu {
        parts.push("on this CPU the stages are threads of one machine, so \"communication\" is memory copies, not inter-GPU transfers".into());
    }
    format!("{}.", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::record::CsvTable;

    /// A study small enough for a debug build: dnn on 30 days of 3,000
    /// synthetic incidents, one worker against two, at most 2 epochs.
    #[test]
    fn study_parallel_writes_the_table_report_and_plots() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("study");
        let mut base = SimConfig::default();
        base.data.rows = 3_000;
        base.data.days = 30;
        base.train.batch_size = 128;
        base.selection.max_epochs = 2;
        base.federation.device = DeviceChoice::Cpu;
        base.seed = 5;
        let spec = StudySpec {
            base,
            models: vec![ModelKind::Dnn],
            workers: vec![1, 2],
        };
        let outcome = study_parallel(
            &spec,
            &out,
            RunOptions {
                quiet: true,
                ..RunOptions::default()
            },
        )
        .unwrap();

        let t = CsvTable::read(&out.join("study.csv")).unwrap();
        assert_eq!(t.header, COLUMNS);
        let methods: Vec<&str> = t.rows.iter().map(|r| r[2].as_str()).collect();
        let mut expected = vec![
            "centralized",
            "data-parallel-2",
            "model-parallel-2",
            "fedavg",
        ];
        if threads() > 1 {
            expected.insert(1, ONE_THREAD);
        }
        assert_eq!(methods, expected);
        let row = |method: &str| t.rows.iter().find(|r| r[2] == method).unwrap();
        for r in &t.rows {
            assert_eq!(r.len(), COLUMNS.len());
            assert_eq!(r[0], "dnn");
            for col in [
                "seconds_per_epoch",
                "speedup",
                "samples_per_s",
                "test_at_best",
            ] {
                let v = t.number(r, col).unwrap();
                assert!(v.is_finite() && v > 0.0, "{} {col} {v}", r[2]);
            }
            let epochs = t.number(r, "epochs").unwrap();
            assert!((1.0..=2.0).contains(&epochs), "{} epochs {epochs}", r[2]);
        }
        let single = row("centralized");
        assert_eq!(t.number(single, "speedup"), Some(1.0));
        assert_eq!(t.number(single, "bytes_per_epoch"), Some(0.0));
        assert_eq!(
            t.number(single, "threads_per_worker"),
            Some(threads() as f64)
        );
        // One worker reaches its own best at its best epoch.
        assert!(t.number(single, "seconds_to_single_best").is_some());
        // Two replicas: the reduction moves 2 x (2 - 1) x 4 bytes per
        // parameter per step; the federation sends its round messages.
        let params = outcome.models[0].params as f64;
        let steps = (outcome.models[0].samples.0 as f64 / 128.0).ceil();
        let dp = t.number(row("data-parallel-2"), "bytes_per_epoch").unwrap();
        assert_eq!(dp, 8.0 * params * steps);
        // Two stages pass activations forward and gradients back.
        let mp = t
            .number(row("model-parallel-2"), "bytes_per_epoch")
            .unwrap();
        assert!(mp > 0.0);
        let fed = row("fedavg");
        assert!(t.number(fed, "bytes_per_epoch").unwrap() > 2.0 * 21.0 * 4.0 * params);
        assert_eq!(t.number(fed, "workers"), Some(threads() as f64));

        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert_eq!(md, outcome.report);
        assert!(md.contains("| model | method | workers |"), "{md}");
        assert!(md.contains("| dnn | data-parallel-2 | 2 |"), "{md}");
        assert!(md.contains("the DNN benefits significantly"), "{md}");
        assert!(md.contains("not testable in this run"), "{md}");
        for stem in ["study-time", "study-speedup", "study-convergence"] {
            for ext in ["svg", "png"] {
                let p = out.join(format!("{stem}.{ext}"));
                assert!(p.metadata().unwrap().len() > 1000, "{}", p.display());
            }
        }
        let metrics = CsvTable::read(&out.join("metrics-dnn.csv")).unwrap();
        assert_eq!(metrics.method("fedavg").count(), 2);
    }

    #[test]
    fn bad_study_arguments_are_refused_by_name() {
        let spec = |models: Vec<ModelKind>, workers: Vec<usize>| StudySpec {
            base: SimConfig::default(),
            models,
            workers,
        };
        let e = spec(vec![], vec![1]).validate().unwrap_err().to_string();
        assert!(e.contains("--models"), "{e}");
        let e = spec(vec![ModelKind::Dnn], vec![1, 0])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--workers"), "{e}");
        // gat-tcn takes the counts task and the bureau partition by itself.
        let c = spec(vec![ModelKind::GatTcn], vec![1])
            .config_for(ModelKind::GatTcn)
            .unwrap();
        assert_eq!(
            (c.data.task, c.federation.partition),
            (Task::Counts, Partition::Bureau)
        );
        spec(vec![ModelKind::GatTcn, ModelKind::Lstm], vec![1, 2])
            .validate()
            .unwrap();
    }

    /// A model's study with one worker at `single` s/epoch (and `one`
    /// on one thread) and data-parallel-2 at `dp`.
    fn measured(model: ModelKind, single: f64, one: f64, dp: f64) -> ModelStudy {
        let row = |method: &str, kind, workers, s: f64| StudyRow {
            model,
            task: Task::Risk,
            method: method.into(),
            kind,
            workers,
            threads_per_worker: 1,
            epochs: 3,
            best_epoch: 2,
            seconds_per_epoch: s,
            speedup: single / s,
            samples_per_s: 1.0,
            train_seconds: 3.0 * s,
            peak_rss_mib: 1.0,
            peak_mib_per_worker: 1.0,
            bytes_per_epoch: 0,
            seconds_to_single_best: Some(1.0),
            val_at_best: 0.5,
            test_at_best: 0.5,
            naive: None,
        };
        ModelStudy {
            model,
            task: Task::Risk,
            params: 10,
            samples: (1, 1, 1),
            stations: 21,
            baselines: Vec::new(),
            runs: Vec::new(),
            rows: vec![
                row("centralized", MethodKind::Single, 1, single),
                row(ONE_THREAD, MethodKind::Single, 1, one),
                row("data-parallel-2", MethodKind::DataParallel, 2, dp),
            ],
        }
    }

    #[test]
    fn the_claims_follow_the_numbers() {
        let agree = [
            measured(ModelKind::Dnn, 1.0, 1.0, 0.6),
            measured(ModelKind::Lstm, 1.0, 1.0, 0.9),
        ];
        let v = dnn_lstm_verdict(&agree);
        assert!(v.starts_with("**agrees**"), "{v}");
        assert!(!v.contains("Caution"), "{v}");
        let lstm_faster = [
            measured(ModelKind::Dnn, 1.0, 1.0, 0.6),
            measured(ModelKind::Lstm, 1.0, 1.0, 0.5),
        ];
        assert!(dnn_lstm_verdict(&lstm_faster).starts_with("**partly agrees**: the DNN gains"));
        let none = [
            measured(ModelKind::Dnn, 1.0, 1.0, 1.0),
            measured(ModelKind::Lstm, 1.0, 1.0, 0.9),
        ];
        assert!(dnn_lstm_verdict(&none).starts_with("**disagrees**"));
        assert!(dnn_lstm_verdict(&none[..1]).starts_with("not testable"));
        // One worker slower on its threads than on one: the report warns.
        let busy = [
            measured(ModelKind::Dnn, 2.0, 1.0, 0.6),
            measured(ModelKind::Lstm, 1.0, 1.0, 0.9),
        ];
        let v = dnn_lstm_verdict(&busy);
        assert!(v.contains("Caution") && v.contains("dnn 2.00x"), "{v}");
        assert!(model_parallel_verdict(&busy).starts_with("not measured"));
    }

    #[test]
    fn the_median_epoch_ignores_a_slow_first_epoch() {
        use crate::sim::eval::Scores;
        use fedcrime_ml::train::{Metrics, RiskMetrics};
        let scores = Scores {
            loss: 1.0,
            metrics: Metrics::Risk(RiskMetrics::compute(&[0, 1], &[0, 1], 2).unwrap()),
        };
        let rows = [5.0, 6.0, 7.0, 8.0]
            .iter()
            .enumerate()
            .map(|(i, &w)| record::Row {
                method: "m".into(),
                step: i as u64 + 1,
                wall_seconds: w,
                bytes_sent: 0,
                grad_steps: 0,
                samples: 0,
                train_loss: None,
                val: scores.clone(),
                test: scores.clone(),
                best: Some((1, 1.0)),
                epsilon: None,
            })
            .collect();
        let run = MethodRun {
            method: "m".into(),
            federated: false,
            rows,
        };
        assert_eq!(median_step_seconds(&run), 1.0);
    }
}
