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
//! 3. The federation: the round [`Engine`] with the configured strategy
//!    (scored on the server after each round on the pooled validation and
//!    test splits, [`eval::server_eval`]), driven over QUIC with mutual TLS
//!    ([`quic`]) or in memory ([`memory`]); both drive the same engine and
//!    the same station logic, so they give identical metrics for a seed.
//! 4. The centralized baselines ([`central`]): single worker and data
//!    parallel, as many passes over the data as the federation.
//! 5. Outputs: `metrics.csv` (streamed, [`record`]), `convergence.svg` and
//!    `.png`, `report.md` ([`report`]) and `sim.toml` (the resolved
//!    configuration, to replay the run).
//!
//! Reproducibility: seeds fix the data, partition, initial model, sampling
//! and local shuffling; the intra-op thread count of libtorch is fixed for
//! the federated phase whatever the transport; and dropout, which draws
//! from libtorch's process-wide generator, makes stations train one at a
//! time ([`SimConfig::concurrency`]).

pub mod central;
pub mod config;
pub mod data;
pub mod eval;
pub mod memory;
pub mod quic;
pub mod record;
pub mod report;
pub mod traffic;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tch::Device;

use fedcrime_common::fl::{
    ConfigValue, Engine, EngineConfig, Outcome, RoundMetrics, StationId, Strategy,
};
use fedcrime_common::model::build;
use fedcrime_common::station::{
    Learner, BATCH_SIZE_KEY, EPOCHS_KEY, LR_KEY, MAX_GRAD_NORM_KEY, SEED_KEY, WEIGHT_DECAY_KEY,
};
use fedcrime_common::train::{evaluate_baselines, BaselineResult};
use fedcrime_common::Params;

pub use config::{SimConfig, Transport};
pub use data::{SimStation, StudyData};
pub use memory::{MemoryFederation, RoundTiming};
pub use record::Row;
pub use report::MethodRun;

use crate::progress;
use eval::{Evaluator, ScoreLog};

/// How a simulation reports progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// No progress bars and no summary on stdout.
    pub quiet: bool,
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
/// aggregate, and evaluation happens on the server (pooled splits), not at
/// the stations.
pub fn engine_config(cfg: &SimConfig, stations: usize) -> EngineConfig {
    let t = &cfg.train;
    let mut fit = fedcrime_common::fl::Config::new();
    fit.insert(
        EPOCHS_KEY.into(),
        ConfigValue::Int(cfg.federation.local_epochs as i64),
    );
    fit.insert(BATCH_SIZE_KEY.into(), ConfigValue::Int(t.batch_size as i64));
    fit.insert(LR_KEY.into(), ConfigValue::Float(t.lr));
    fit.insert(WEIGHT_DECAY_KEY.into(), ConfigValue::Float(t.weight_decay));
    if let Some(c) = t.max_grad_norm {
        fit.insert(MAX_GRAD_NORM_KEY.into(), ConfigValue::Float(c));
    }
    // Seeds travel as i64 (two's complement for the upper half).
    fit.insert(SEED_KEY.into(), ConfigValue::Int(cfg.seed as i64));
    EngineConfig {
        rounds: cfg.federation.rounds,
        min_stations: stations,
        fraction_fit: cfg.federation.fraction,
        min_fit: 1,
        min_updates: 1,
        round_deadline: Duration::from_secs_f64(cfg.federation.round_deadline_s),
        station_wait_timeout: Some(Duration::from_secs(300)),
        eval_every: 1,
        fraction_evaluate: 0.0,
        seed: cfg.seed,
        fit_config: fit,
        ..EngineConfig::default()
    }
}

/// The initial global model: built once from the architecture with the
/// run's seed; every method starts from it.
pub fn initial_model(data: &StudyData, seed: u64) -> Result<Params> {
    tch::manual_seed(seed as i64);
    let model = build(&data.model, Device::Cpu)?;
    Ok(model.export_params())
}

/// A federation ready to run: the engine (with server-side scoring) and the
/// stations.
pub struct Federation {
    /// The round engine.
    pub engine: Engine,
    /// Scores of the global model by round.
    pub scores: ScoreLog,
    /// The stations, in partition order.
    pub stations: Vec<Arc<SimStation>>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("engine", &self.engine)
            .field("stations", &self.stations.len())
            .finish_non_exhaustive()
    }
}

impl Federation {
    /// The federation of a study, starting from `initial`.
    pub fn new(data: &StudyData, cfg: &SimConfig, initial: Params) -> Result<Self> {
        let device = cfg
            .federation
            .device
            .resolve()
            .map_err(anyhow::Error::msg)?;
        let stations = data.learners(cfg, device);
        let scores: ScoreLog = Arc::new(Mutex::new(Default::default()));
        let evaluator = Evaluator::new(&data.model, data.splits.clone(), cfg.train.eval_batch_size)?;
        let strategy: Box<dyn Strategy> = eval::server_eval(
            cfg.federation.strategy.build()?,
            evaluator,
            scores.clone(),
        );
        let mut engine = Engine::new(
            engine_config(cfg, stations.len()),
            strategy,
            initial,
            Instant::now(),
        )?;
        engine.set_stopwatch(Instant::now);
        Ok(Federation {
            engine,
            scores,
            stations,
        })
    }

    /// The stations as the transports take them.
    pub fn learners(&self) -> Vec<(StationId, Arc<dyn Learner>)> {
        self.stations
            .iter()
            .map(|s| {
                let l: Arc<dyn Learner> = s.clone();
                (StationId::from(s.name()), l)
            })
            .collect()
    }
}

/// The method's row of a finished round.
fn round_row(
    method: &str,
    m: &RoundMetrics,
    t: &RoundTiming,
    bytes_so_far: u64,
    scores: &ScoreLog,
) -> Result<Row> {
    let s = scores
        .lock()
        .ok()
        .and_then(|mut log| log.remove(&m.round))
        .with_context(|| format!("round {} of {method} was not scored", m.round))?;
    Ok(Row {
        method: method.to_string(),
        step: m.round,
        wall_seconds: t.elapsed_s,
        bytes_sent: bytes_so_far,
        train_loss: m.train_loss,
        val: s.val,
        test: s.test,
    })
}

/// Runs a whole study into `out` (created if missing); see the [module docs](self).
pub fn simulate(cfg: &SimConfig, out: &Path, opts: RunOptions) -> Result<SimOutcome> {
    cfg.validate()?;
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
    let baselines = evaluate_baselines(&data.splits, &data.splits.test, data.count_period())?;
    let mut csv = record::MetricsCsv::create(&out.join("metrics.csv"), data.task.task, data.output_dim())?;

    // The federation.
    let method = cfg.federation.strategy.name().to_string();
    let fed = Federation::new(&data, &cfg, initial.clone())?;
    let bar = progress::bar(opts.quiet, cfg.federation.rounds, &method, "rounds");
    let mut fed_run = MethodRun {
        method: method.clone(),
        federated: true,
        rows: Vec::new(),
    };
    let mut rounds = Vec::new();
    let mut bytes = 0u64;
    let scores = fed.scores.clone();
    let mut on_round = |m: &RoundMetrics, t: &RoundTiming| -> Result<()> {
        bytes += m.bytes_in + m.bytes_out;
        let row = round_row(&method, m, t, bytes, &scores)?;
        csv.push(&row)?;
        bar.inc(1);
        bar.set_message(format!(
            "test {} {:.4}",
            row.test.metrics.headline().0,
            row.test.headline()
        ));
        fed_run.rows.push(row);
        rounds.push((m.clone(), t.clone()));
        Ok(())
    };
    let threads_before = tch::get_num_threads();
    let concurrency = cfg.concurrency();
    tch::set_num_threads((config::cores() / concurrency).max(1) as i32);
    let summary = match cfg.federation.transport {
        Transport::Memory => {
            let learners = fed.learners();
            let mut engine = fed.engine;
            let transport = MemoryFederation::new(
                learners,
                concurrency,
                Duration::from_secs_f64(cfg.federation.round_deadline_s),
            )?;
            transport.run(&mut engine, &mut on_round)
        }
        Transport::Quic => quic::run(fed, &cfg, out, &mut on_round),
    };
    tch::set_num_threads(threads_before);
    let summary = summary?;
    bar.finish();
    if let Outcome::Aborted { round, reason } = &summary.outcome {
        bail!("the federation stopped in round {round}: {reason}");
    }
    let mut runs = vec![fed_run];

    // The centralized baselines.
    if cfg.centralized.enabled {
        let threads = config::cores();
        for which in [
            central::Central::Single,
            central::Central::DataParallel(cfg.dp_workers()),
        ] {
            let name = which.method();
            let bar = progress::bar(opts.quiet, cfg.centralized_epochs() as u64, &name, "epochs");
            let mut run = MethodRun {
                method: name.clone(),
                federated: false,
                rows: Vec::new(),
            };
            central::run(which, &data, &cfg, &initial, threads, |row| {
                csv.push(&row)?;
                bar.inc(1);
                bar.set_message(format!(
                    "test {} {:.4}",
                    row.test.metrics.headline().0,
                    row.test.headline()
                ));
                run.rows.push(row);
                Ok(())
            })
            .with_context(|| format!("training {name}"))?;
            bar.finish();
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
    let setup = setup_lines(&cfg, &data, &initial);
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

/// The setup bullets of `report.md`.
fn setup_lines(cfg: &SimConfig, data: &StudyData, initial: &Params) -> Vec<String> {
    let mut sizes = data.station_sizes();
    sizes.sort_unstable();
    let median = sizes.get(sizes.len() / 2).copied().unwrap_or(0);
    let f = &cfg.federation;
    vec![
        format!(
            "data: {}, {} incidents; task {} ({} features): {} train / {} validation / {} test samples, split in time",
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
            "federation: {} for {} rounds of {} local epoch(s), fraction {}, transport {}, {} station(s) training at once; scored on the server after every round",
            f.strategy,
            f.rounds,
            f.local_epochs,
            f.fraction,
            f.transport.as_str(),
            cfg.concurrency()
        ),
        if cfg.centralized.enabled {
            format!(
                "centralized: {} epochs (the federation's passes over the data) on one worker and on {} data-parallel CPU workers",
                cfg.centralized_epochs(),
                cfg.dp_workers()
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
