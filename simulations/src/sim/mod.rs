//! One-machine federations and the convergence study: federated learning
//! against centralized and data-parallel training on the same data.
//!
//! [`simulate`] runs a study from a [`SimConfig`]:
//!
//! 1. [`StudyData::prepare`]: load or generate the incidents, build the task
//!    once (features, temporal split, shared featurizer), partition its
//!    samples into stations (index lists) and derive the model architecture.
//! 2. The initial model, built once with the run's seed: every method
//!    starts from it.
//! 3. The federation ([`federate`]): the round [`Engine`] with the
//!    configured strategy, driven over QUIC with mutual TLS by the real
//!    server and clients ([`quic`]) or in memory ([`memory`]); both drive
//!    the same engine and the same station logic, so they give identical
//!    models and metrics for a seed. The global model is scored on the
//!    pooled validation and test splits after every round.
//! 4. The centralized baselines ([`central`]): single worker and data
//!    parallel.
//!
//! Model selection is the same for every method: unless rounds or epochs are
//! set, a method trains until its validation headline (macro-F1 for risk,
//! MAE for counts, on the pooled validation split) has not improved for
//! `selection.patience` rounds or epochs (the round engine's early stopping
//! for the federation, the trainer's for the centralized methods), and every
//! method is judged at its best validation step ([`record::BestTracker`]).
//! 5. Outputs: `metrics.csv` (streamed, [`record`]), `convergence.svg` and
//!    `.png`, `report.md` ([`report`]) and `sim.toml` (the resolved
//!    configuration, to replay the run).
//!
//! Reproducibility: seeds fix the data, partition, initial model, sampling
//! and local shuffling; the intra-op thread count of libtorch is fixed for
//! the federated phase whatever the transport; and dropout, which draws
//! from libtorch's process-wide generator, makes stations train one at a
//! time ([`SimConfig::concurrency`]).

pub mod bench;
pub mod central;
pub mod config;
pub mod data;
pub mod eval;
pub mod explain;
pub mod memory;
pub mod quic;
pub mod record;
pub mod report;
pub mod study;
pub mod traffic;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use tch::Device;

use std::collections::BTreeMap;

use fedcrime_fl::strategy::WithServerEval;
use fedcrime_fl::{
    EarlyStopping, Engine, EngineConfig, Goal, Outcome, RoundMetrics, RoundSettings, StationId,
    Summary,
};
use fedcrime_ml::model::build;
use fedcrime_ml::train::{evaluate_baselines, BaselineResult};
use fedcrime_station::Learner;
use {fedcrime_ml::DeviceChoice, fedcrime_params::Params};

pub use config::{SimConfig, Transport};
pub use data::{SimStation, StudyData};
pub use memory::{MemoryFederation, RoundTiming};
pub use record::Row;
pub use report::MethodRun;

use crate::progress;
use eval::Evaluator;
use fedcrime_server::dashboard::Board;
use record::BestTracker;

/// How a simulation reports progress.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// No progress bars and no summary on stdout.
    pub quiet: bool,
    /// Show the federation live on the agency dashboard (memory transport).
    pub dashboard: Option<Arc<Board>>,
}

/// What a simulation produced.
#[derive(Debug)]
pub struct SimOutcome {
    /// The output folder.
    pub out: PathBuf,
    /// The resolved configuration.
    pub config: SimConfig,
    /// Every method's rows, federated first.
    pub runs: Vec<MethodRun>,
    /// The federation's round records and timings.
    pub rounds: Vec<(RoundMetrics, RoundTiming)>,
    /// The naive baselines on the test split.
    pub baselines: Vec<BaselineResult>,
    /// The text of `report.md`.
    pub report: String,
}

/// The engine settings of a study: every station must connect, the
/// configured fraction trains each round, one update suffices to
/// aggregate, and no federated evaluation (the study scores the global
/// model on the pooled splits itself). Unless `federation.rounds` is set,
/// the engine stops early on the server-side validation headline
/// ([`early_stopping`]), with `selection.max_rounds` as the cap.
pub fn engine_config(cfg: &SimConfig, stations: usize) -> EngineConfig {
    let stopping = early_stopping(cfg);
    let secure = cfg.federation.secure_aggregation.is_some();
    EngineConfig {
        rounds: cfg.max_rounds(),
        early_stopping: stopping.clone(),
        min_stations: stations,
        fraction_fit: cfg.federation.fraction,
        // Secure aggregation needs at least 3 stations per round.
        min_fit: if secure { 3.min(stations) } else { 1 },
        min_updates: if secure { 3.min(stations) } else { 1 },
        secure_aggregation: cfg.federation.secure_aggregation.clone(),
        round_deadline: Duration::from_secs_f64(cfg.federation.round_deadline_s),
        station_wait_timeout: Some(Duration::from_secs(300)),
        eval_every: u64::from(stopping.is_some()),
        fraction_evaluate: 0.0,
        seed: cfg.seed,
        train: round_settings(cfg),
        privacy: cfg.privacy.clone().map(|mut p| {
            // Reproducible studies: the noise follows the run's seed.
            p.seed = p.seed.or(Some(cfg.seed));
            p
        }),
        audit: cfg.federation.audit,
        ..EngineConfig::default()
    }
}

/// The federation's early stopping, when `federation.rounds` is unset: the
/// validation headline of the task (macro-F1, higher is better; MAE, lower
/// is better) with the study's patience.
pub fn early_stopping(cfg: &SimConfig) -> Option<EarlyStopping> {
    cfg.federation_stops_early().then(|| {
        let task = cfg.data.task;
        EarlyStopping {
            monitor: record::headline_name(task).into(),
            goal: if report::higher_is_better(task) {
                Goal::Max
            } else {
                Goal::Min
            },
            patience: cfg.selection.patience,
            min_delta: cfg.selection.min_delta,
        }
    })
}

/// A memory field of this process's `/proc/self/status` (`VmHWM`, `VmRSS`)
/// in MiB; NaN where there is none (not Linux).
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Peak resident memory of this process in MiB (Linux's `VmHWM`, since the
/// start or the last [`reset_peak_rss`]; NaN elsewhere).
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM")
}

/// Resident memory of this process now, in MiB (`VmRSS`; NaN elsewhere).
pub fn rss_mib() -> f64 {
    status_mib("VmRSS")
}

/// Resets the peak of [`peak_rss_mib`] to the resident memory now (writes
/// `5` to `/proc/self/clear_refs`, Linux 4.0 and later); false where that
/// is not possible, and the peak then counts from the process start.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The initial global model: built once from the architecture with the
/// run's seed; every method starts from it.
pub fn initial_model(data: &StudyData, seed: u64) -> Result<Params> {
    tch::manual_seed(seed as i64);
    let model = build(&data.model, Device::Cpu)?;
    Ok(model.export_params())
}

/// The study's stations as the transports take them, by certificate name.
pub fn station_list(
    data: &StudyData,
    cfg: &SimConfig,
) -> Result<Vec<(StationId, Arc<dyn Learner>)>> {
    let device = cfg
        .federation
        .device
        .resolve()
        .map_err(anyhow::Error::msg)?;
    data.learners(cfg, device)
        .into_iter()
        .map(|s| {
            let id = s.id()?;
            let l: Arc<dyn Learner> = s;
            Ok((id, l))
        })
        .collect()
}

/// What the stations are told to train with each round (the engine adds
/// the run's seed).
pub fn round_settings(cfg: &SimConfig) -> RoundSettings {
    let (local_epochs, min_steps) = cfg.local_work();
    let mut s = RoundSettings {
        local_epochs,
        batch_size: u32::try_from(cfg.train.batch_size).unwrap_or(u32::MAX),
        lr: cfg.train.lr,
        weight_decay: cfg.train.weight_decay,
        max_grad_norm: cfg.train.max_grad_norm,
        ..RoundSettings::default()
    };
    s.set_min_local_steps(min_steps);
    s
}

/// The optimizer steps and samples one round of training costs each station
/// (by name), from its training samples and the round settings.
fn local_costs(
    stations: &[Arc<SimStation>],
    settings: &RoundSettings,
) -> Result<BTreeMap<StationId, (u64, u64)>> {
    let batch = settings.batch_size.max(1) as u64;
    stations
        .iter()
        .map(|s| {
            let n = s.train_len() as u64;
            let epochs = u64::from(settings.local_epochs_for(s.train_len()));
            Ok((s.id()?, (epochs * n.div_ceil(batch), epochs * n)))
        })
        .collect()
}

/// A finished federated round with its scores.
#[derive(Clone, Debug)]
pub struct FedRound {
    /// The engine's record.
    pub metrics: RoundMetrics,
    /// Training times at the stations.
    pub timing: RoundTiming,
    /// The row of `metrics.csv`.
    pub row: Row,
    /// The round's global model.
    pub global: Arc<Params>,
}

/// libtorch's intra-op thread count is one setting for the whole process,
/// and results depend on it: simulations in one process (tests) take turns.
static TORCH_THREADS: Mutex<()> = Mutex::new(());

pub(crate) fn torch_threads_lock() -> MutexGuard<'static, ()> {
    TORCH_THREADS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the federation of a study from `initial` on the configured
/// transport, scoring the global model after every round and handing each
/// round to `on_round` as it is scored.
pub fn federate(
    data: &StudyData,
    cfg: &SimConfig,
    initial: &Params,
    out: &Path,
    bar: &ProgressBar,
    on_round: impl FnMut(&FedRound) -> Result<()>,
) -> Result<Summary> {
    let _threads = torch_threads_lock();
    federate_locked(data, cfg, initial, out, bar, None, on_round)
}

fn federate_locked(
    data: &StudyData,
    cfg: &SimConfig,
    initial: &Params,
    out: &Path,
    bar: &ProgressBar,
    board: Option<&Arc<Board>>,
    mut on_round: impl FnMut(&FedRound) -> Result<()>,
) -> Result<Summary> {
    let method = cfg.federation.strategy.name().to_string();
    let stations = station_list(data, cfg)?;
    let engine_cfg = engine_config(cfg, stations.len());
    let costs = local_costs(&data.learners(cfg, Device::Cpu), &engine_cfg.train)?;
    let concurrency = cfg.concurrency();
    let mut evaluator =
        Evaluator::new(&data.model, data.splits.clone(), cfg.train.eval_batch_size)?;
    // The server-side validation early stopping watches, with a model of its own.
    let mut validator = engine_cfg
        .early_stopping
        .is_some()
        .then(|| Evaluator::new(&data.model, data.splits.clone(), cfg.train.eval_batch_size))
        .transpose()?;
    let mut best = BestTracker::new(
        report::higher_is_better(data.task.task),
        cfg.selection.min_delta,
    );
    let (mut bytes, mut grad_steps, mut samples) = (0u64, 0u64, 0u64);
    let mut row_of = |m: &RoundMetrics, wall: f64, global: &Params| -> Result<Row> {
        bytes += m.bytes_in + m.bytes_out;
        for id in &m.completed {
            let (steps, n) = costs.get(id).copied().unwrap_or_default();
            grad_steps += steps;
            samples += n;
        }
        let s = evaluator.evaluate(global)?;
        let mut row = Row {
            method: method.clone(),
            step: m.round,
            wall_seconds: wall,
            bytes_sent: bytes,
            grad_steps,
            samples,
            train_loss: m.train_loss,
            val: s.val,
            test: s.test,
            best: None,
            epsilon: m.privacy.as_ref().and_then(|p| p.epsilon),
        };
        best.update(&mut row);
        Ok(row)
    };
    // libtorch's intra-op threads are shared by the stations training at once,
    // the same on both transports (results depend on the thread count).
    let threads_before = tch::get_num_threads();
    tch::set_num_threads((config::cores() / concurrency).max(1) as i32);
    let outcome = match cfg.federation.transport {
        Transport::Memory => {
            let mut strategy = cfg.federation.strategy.build()?;
            if let Some(mut v) = validator.take() {
                strategy = Box::new(WithServerEval::new(strategy, move |round, p: &Params| {
                    v.validation_summary(round, p)
                }));
            }
            let mut engine = Engine::new(engine_cfg, strategy, initial.clone(), Instant::now())?;
            engine.set_stopwatch(Instant::now);
            let mut transport = MemoryFederation::new(stations, concurrency)?;
            if let Some(b) = board {
                transport = transport.with_board(b.clone());
            }
            if cfg.federation.secure_aggregation.is_some() {
                transport =
                    transport.with_secure_aggregation(cfg.federation.station_dropout, cfg.seed);
            }
            if cfg.federation.audit {
                let dir = out.join("audit");
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("clearing {}", dir.display()))?;
                }
                transport = transport.with_audit(&dir)?;
            }
            // Scoring runs between rounds; its time is not the federation's.
            let mut scoring = 0.0;
            transport.run(&mut engine, |r| {
                let t0 = Instant::now();
                let wall = r.metrics.started_s + r.metrics.round_s - scoring;
                let row = row_of(r.metrics, wall, r.global)?;
                scoring += t0.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "test {} {:.4}",
                    row.test.metrics.headline().0,
                    row.test.headline()
                ));
                bar.inc(1);
                on_round(&FedRound {
                    metrics: r.metrics.clone(),
                    timing: r.timing.clone(),
                    row,
                    global: r.global.clone(),
                })
            })
        }
        Transport::Quic => quic::run(quic::QuicSetup {
            dir: &out.join("quic"),
            engine: engine_cfg,
            strategy: cfg.federation.strategy.clone(),
            task: data.task,
            featurizer: Some(&data.featurizer),
            model: &data.model,
            initial,
            stations,
            concurrency,
            keep_globals: true,
            bar: bar.clone(),
            evaluator: {
                // The map follows the rounds live (scoring waits for the end).
                let mut v = validator.take();
                let live = board
                    .cloned()
                    .map(|b| (b, data.model.clone(), data.forecast.clone()));
                (v.is_some() || live.is_some()).then(|| -> fedcrime_server::Evaluator {
                    Box::new(move |round, p: &Params| {
                        if let Some((b, model, Some(rows))) = &live {
                            if let Err(e) = forecast_map_of(b, model, rows, round, p) {
                                tracing::warn!(round, error = %e, "dashboard map");
                            }
                        }
                        v.as_mut().and_then(|v| v.validation_summary(round, p))
                    })
                })
            },
            board: board.cloned(),
            station_dropout: cfg.federation.station_dropout,
        })
        .and_then(|run| {
            bar.set_message("scoring the rounds");
            for r in run.rounds {
                let global = r
                    .global
                    .with_context(|| format!("round {} has no model", r.metrics.round))?;
                let row = row_of(&r.metrics, r.timing.elapsed_s, &global)?;
                bar.set_position(r.metrics.round);
                on_round(&FedRound {
                    metrics: r.metrics,
                    timing: r.timing,
                    row,
                    global,
                })?;
            }
            Ok(run.summary)
        }),
    };
    tch::set_num_threads(threads_before);
    outcome
}

/// What the dashboard shows about a study of `cfg`, under the run id `id`.
pub fn dashboard_run(cfg: &SimConfig, id: String) -> fedcrime_server::dashboard::RunInfo {
    let mut run = fedcrime_server::dashboard::RunInfo::for_task(cfg.data.task);
    run.id = id;
    run.source = "fedcrime-sim".into();
    run.model = cfg.model.kind.to_string();
    run.strategy = cfg.federation.strategy.name().to_string();
    // Without a fixed count, validation decides when to stop.
    run.rounds = cfg.federation.rounds;
    run.time_unit = Some(fedcrime_data::tasks::TimeUnit::of(
        cfg.data.task,
        cfg.data.period,
    ));
    run
}

/// Maps what the global model of `round` forecasts for every area's next
/// period on `board` (the simulator holds every station's data).
fn map_forecast(board: &Board, data: &StudyData, round: u64, global: &Params) -> Result<()> {
    match &data.forecast {
        Some(rows) => forecast_map_of(board, &data.model, rows, round, global),
        None => Ok(()),
    }
}

fn forecast_map_of(
    board: &Board,
    model: &fedcrime_ml::model::ModelConfig,
    rows: &fedcrime_data::Dataset,
    round: u64,
    global: &Params,
) -> Result<()> {
    let mut m = build(model, Device::Cpu)?;
    m.import_params(global)?;
    let metrics = fedcrime_station::forecast_metrics(m.as_ref(), rows)?;
    board.forecast(round, &[("simulation".to_string(), metrics)]);
    Ok(())
}

/// Runs a whole study into `out` (created if missing); see the [module docs](self).
pub fn simulate(cfg: &SimConfig, out: &Path, opts: RunOptions) -> Result<SimOutcome> {
    cfg.validate()?;
    let _threads = torch_threads_lock();
    let cfg = cfg.clone().resolve();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let config_toml = cfg.to_toml();
    std::fs::write(out.join("sim.toml"), &config_toml)
        .with_context(|| format!("writing {}", out.join("sim.toml").display()))?;

    let spinner = progress::spinner(opts.quiet, "preparing the data");
    let data = StudyData::prepare(&cfg)?;
    spinner.finish_and_clear();
    let sizes = data.station_sizes();
    tracing::info!(
        "{}: {} incidents, {} train / {} val / {} test samples, {} stations ({} partition)",
        data.source,
        data.incidents,
        data.splits.train.len(),
        data.splits.val.len(),
        data.splits.test.len(),
        sizes.len(),
        cfg.partition()
    );
    let initial = initial_model(&data, cfg.seed)?;
    let baselines = evaluate_baselines(&data.splits, &data.splits.test, data.task.period)?;
    let mut csv = record::MetricsCsv::create_with(
        &out.join("metrics.csv"),
        data.task.task,
        data.output_dim(),
        cfg.privacy.is_some(),
    )?;

    // The federation.
    let FederationRun {
        run: fed_run,
        rounds,
        best,
    } = federation_method(&data, &cfg, &initial, out, &opts, &mut csv)?;
    // The federation's passes over the pooled training data, for centralized
    // baselines that match it (`federation.rounds` set).
    let passes =
        fed_run.last().map_or(0.0, |r| r.samples as f64) / data.splits.train.len().max(1) as f64;
    let mut runs = vec![fed_run];

    // The centralized baselines.
    let central_cfg = central::train_config(&cfg, passes);
    if cfg.centralized.enabled {
        // Fairness-aware training runs in the station trainer only: the
        // data-parallel baseline would train another objective.
        let methods: &[central::Central] = if cfg.train.fairness.is_active() {
            &[central::Central::Single]
        } else {
            &[
                central::Central::Single,
                central::Central::DataParallel(cfg.dp_workers()),
            ]
        };
        for &which in methods {
            let threads = match which {
                central::Central::DataParallel(w) => w.max(config::cores()),
                _ => 1,
            };
            let (run, _) = central_method(
                &CentralPlan::new(which, threads),
                &data,
                &cfg,
                &central_cfg,
                &initial,
                opts.quiet,
                &mut csv,
            )?;
            runs.push(run);
        }
    }
    drop(csv);

    let title = format!(
        "{} / {}: {} over {} stations vs centralized",
        data.task.task,
        data.model.kind,
        cfg.federation.strategy.name(),
        sizes.len()
    );
    report::write_plots(out, &title, data.task.task, &runs, &baselines)?;
    let mut setup = setup_lines(&cfg, &data, &initial, &central_cfg);
    setup.push(format!(
        "peak resident memory of the process: {:.0} MiB (libtorch included)",
        peak_rss_mib()
    ));
    let md = report::markdown(
        &report::ReportContext {
            title,
            setup,
            task: data.task.task,
            baselines: &baselines,
            config_toml,
        },
        &runs,
    );
    save_best(out, &data, &cfg, &best)?;
    // One evaluation request per station serves both the scores and the
    // explanations.
    let explain = (cfg.explain.rows > 0).then_some((cfg.explain.rows, cfg.explain.method.as_str()));
    let score_stations = cfg.explain.station_scores && data.stations.len() <= 200;
    let replies = if score_stations || explain.is_some() {
        let spinner = progress::spinner(opts.quiet, "stations scoring the best model");
        let replies = explain::ask_stations(&data, &cfg, &best, explain)?;
        spinner.finish_and_clear();
        replies
    } else {
        Vec::new()
    };
    let mut md = md;
    if score_stations {
        let scores = explain::StationScores::of(data.task.task, &replies);
        explain::write_scores(out, &scores)?;
        md += &scores.markdown();
    }
    if let Some((_, method)) = explain {
        let fe = explain::FederatedExplanation::of(method, &replies)?;
        md += &explain::write(
            out,
            &fe,
            &format!("{} / {}", data.task.task, data.model.kind),
        )?;
    }
    std::fs::write(out.join("report.md"), &md)
        .with_context(|| format!("writing {}", out.join("report.md").display()))?;
    Ok(SimOutcome {
        out: out.to_path_buf(),
        config: cfg,
        runs,
        rounds,
        baselines,
        report: md,
    })
}

/// Runs a study's federation (the caller holds the thread lock) under a
/// progress bar, streaming its rows into `csv`: its rows and the round
/// records. A federation the engine aborted is an error.
pub(crate) fn federation_method(
    data: &StudyData,
    cfg: &SimConfig,
    initial: &Params,
    out: &Path,
    opts: &RunOptions,
    csv: &mut record::MetricsCsv,
) -> Result<FederationRun> {
    let method = cfg.federation.strategy.name().to_string();
    let bar = progress::bar(opts.quiet, cfg.max_rounds(), &method, "rounds");
    let mut fed_run = MethodRun {
        method: method.clone(),
        federated: true,
        rows: Vec::new(),
    };
    let mut rounds = Vec::new();
    let mut best = None;
    let board = opts.dashboard.as_ref();
    let summary = federate_locked(data, cfg, initial, out, &bar, board, |r| {
        if let Some(b) = board {
            b.set_round_metric(r.metrics.round, r.row.val.headline());
            map_forecast(b, data, r.metrics.round, &r.global)?;
        }
        csv.push(&r.row)?;
        fed_run.rows.push(r.row.clone());
        rounds.push((r.metrics.clone(), r.timing.clone()));
        // The best validation round so far is this one: keep its model.
        if r.row.best.map(|b| b.0) == Some(r.row.step) || best.is_none() {
            best = Some(r.global.clone());
        }
        Ok(())
    })
    .with_context(|| format!("the {method} federation"))?;
    bar.finish();
    if let Outcome::Aborted { round, reason } = &summary.outcome {
        bail!("the federation stopped in round {round}: {reason}");
    }
    if summary.stopped_early {
        tracing::info!(
            rounds = summary.rounds_completed,
            best_round = summary.best.map(|b| b.round),
            "{method}: validation stopped improving"
        );
    }
    Ok(FederationRun {
        run: fed_run,
        rounds,
        best: best.unwrap_or_else(|| Arc::new(initial.clone())),
    })
}

/// Saves the federation's selected model as `model.safetensors`, with what
/// `fedcrime-sim explain` and `fairness` need to rebuild its samples (the
/// featurizer and the data arguments).
fn save_best(out: &Path, data: &StudyData, cfg: &SimConfig, best: &Params) -> Result<()> {
    let mut m = fedcrime_ml::model::build(&data.model, tch::Device::Cpu)?;
    m.import_params(best)?;
    let d = &cfg.data;
    let meta = std::collections::BTreeMap::from([
        (
            "fedcrime.featurizer".to_string(),
            serde_json::to_string(&data.featurizer)?,
        ),
        ("fedcrime.data_source".to_string(), data.source.clone()),
        (
            "fedcrime.data_args".to_string(),
            serde_json::json!({
                "data": d.file,
                "rows": d.rows,
                "data_seed": d.data_seed,
                "task": d.task,
                "period": d.period,
            })
            .to_string(),
        ),
        (
            "fedcrime.strategy".to_string(),
            cfg.federation.strategy.name().to_string(),
        ),
    ]);
    let path = out.join("model.safetensors");
    fedcrime_ml::model::save_model(m.as_ref(), &path, &meta)
        .with_context(|| format!("writing {}", path.display()))
}

/// What [`federation_method`] returns.
pub(crate) struct FederationRun {
    /// The method's rows.
    pub run: MethodRun,
    /// The engine's round records.
    pub rounds: Vec<(RoundMetrics, RoundTiming)>,
    /// The model of the best validation round.
    pub best: Arc<Params>,
}

/// A centralized method as a run names and threads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CentralPlan {
    /// The trainer.
    pub which: central::Central,
    /// libtorch's intra-op threads in all (shared by its workers).
    pub threads: usize,
    /// Its name in the outputs.
    pub name: String,
}

impl CentralPlan {
    /// `which` with `threads`, named as usual ([`central::Central::method`]).
    pub fn new(which: central::Central, threads: usize) -> Self {
        CentralPlan {
            which,
            threads,
            name: which.method(),
        }
    }
}

/// Trains one centralized method ([`central::run`]) under a progress bar,
/// streaming its rows (named `plan.name`) into `csv`: its rows and what
/// the trainer reported.
pub(crate) fn central_method(
    plan: &CentralPlan,
    data: &StudyData,
    cfg: &SimConfig,
    central_cfg: &fedcrime_ml::train::TrainConfig,
    initial: &Params,
    quiet: bool,
    csv: &mut record::MetricsCsv,
) -> Result<(MethodRun, central::CentralRun)> {
    let name = plan.name.clone();
    let bar = progress::bar(quiet, central_cfg.epochs as u64, &name, "epochs");
    let mut run = MethodRun {
        method: name.clone(),
        federated: false,
        rows: Vec::new(),
    };
    let outcome = central::run(
        plan.which,
        data,
        cfg,
        central_cfg,
        initial,
        plan.threads,
        |row| {
            let row = Row {
                method: name.clone(),
                ..row
            };
            csv.push(&row)?;
            bar.set_message(format!(
                "test {} {:.4}",
                row.test.metrics.headline().0,
                row.test.headline()
            ));
            bar.inc(1);
            run.rows.push(row);
            Ok(())
        },
    )
    .with_context(|| format!("training {name}"))?;
    bar.finish();
    Ok((run, outcome))
}

/// The setup bullets of `report.md`.
fn setup_lines(
    cfg: &SimConfig,
    data: &StudyData,
    initial: &Params,
    central: &fedcrime_ml::train::TrainConfig,
) -> Vec<String> {
    let mut sizes = data.station_sizes();
    sizes.sort_unstable();
    let median = sizes.get(sizes.len() / 2).copied().unwrap_or(0);
    let f = &cfg.federation;
    vec![
        format!(
            "data: {} ({} incidents after cleaning); task {} ({} features): {} train / {} validation / {} test samples, split in time",
            data.source,
            data.incidents,
            data.task.task,
            data.splits.train.feature_dim,
            data.splits.train.len(),
            data.splits.val.len(),
            data.splits.test.len()
        ),
        format!(
            "stations: {} ({} partition), training samples per station min {} / median {} / max {}",
            sizes.len(),
            cfg.partition(),
            sizes.first().copied().unwrap_or(0),
            median,
            sizes.last().copied().unwrap_or(0)
        ),
        format!(
            "model: {} (hidden {}, layers {}, dropout {}), {} parameters, same initial weights (seed {}) for every method",
            data.model.kind,
            data.model.hidden,
            data.model.layers,
            data.model.dropout,
            initial.spec().total(),
            cfg.seed
        ),
        format!(
            "federation: {} for {}, each station {} per round, fraction {}, transport {}, {} station(s) training at once; the global model scored after every round",
            f.strategy,
            match f.rounds {
                Some(r) => format!("exactly {r} rounds"),
                None => format!(
                    "up to {} rounds, stopping after {} rounds without a better validation {}",
                    cfg.selection.max_rounds,
                    cfg.selection.patience,
                    record::headline_name(cfg.data.task)
                ),
            },
            match cfg.local_work() {
                (e, 0) => format!("exactly {e} local epoch(s)"),
                (e, m) => format!("{e} local epoch(s) or more to take at least {m} optimizer steps"),
            },
            f.fraction,
            f.transport.as_str(),
            cfg.concurrency()
        ),
        if cfg.centralized.enabled {
            format!(
                "centralized: {} on one worker and on {} data-parallel workers ({}); the best validation epoch's weights kept",
                if central.patience > 0 {
                    format!(
                        "up to {} epochs, stopping after {} epochs without a better validation {}",
                        central.epochs,
                        central.patience,
                        record::headline_name(cfg.data.task)
                    )
                } else if cfg.centralized.epochs.is_some() {
                    format!("exactly {} epochs", central.epochs)
                } else {
                    format!("{} epochs (the federation's passes over the data)", central.epochs)
                },
                cfg.dp_workers(),
                if cfg.federation.device == DeviceChoice::Cpu {
                    "CPU, one thread per worker".to_string()
                } else {
                    format!("device {}", cfg.federation.device)
                }
            )
        } else {
            "centralized: not run (--no-centralized)".into()
        },
        format!(
            "optimizer: Adam lr {}, batch {}, weight decay {}; naive baselines fit on the training split",
            cfg.train.lr, cfg.train.batch_size, cfg.train.weight_decay
        ),
    ]
}
