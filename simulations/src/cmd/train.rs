//! `fedcrime-sim train`: centralized training of one model on one task, next
//! to the naive baselines.
//!
//! Loads an LAPD export (`--data`) or generates the embedded LA-like synthetic
//! data, builds the task with its temporal split, trains with the station
//! trainer (`--workers 1`), the data-parallel trainer (`--workers W`) or the
//! model-parallel trainer (`--model-parallel S`), and writes to `--out`:
//!
//! - `metrics.csv`: one row per epoch: epoch, train_loss, val_loss, the task's
//!   validation metrics, samples_per_sec, seconds;
//! - `model.safetensors`: the parameters, with the model config, the training
//!   config and the featurizer (JSON) in the metadata;
//! - `report.md`: the test-split metrics of the model and of every naive
//!   baseline in one table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use fedcrime_data::tasks::{build_task, Period, TaskConfig, TaskData};
use fedcrime_data::{Dataset, Incident, Splits, Task};
use fedcrime_ml::model::{
    build, graph_splits, save_model, CountLoss, GraphWindows, ModelConfig, ModelKind,
    DEFAULT_GRAPH_STEPS,
};
use fedcrime_ml::train::{
    evaluate_baselines, BaselineResult, ClassWeighting, EpochRecord, Evaluation, FitReport,
    Metrics, ParallelConfig, ParallelTrainer, PipelineConfig, PipelineTrainer, TrainConfig,
    Trainer,
};
use fedcrime_ml::DeviceChoice;

use crate::GlobalOpts;

/// Where the incidents come from and which task to build: shared by `train`,
/// `tune` and `bench train`; recorded in the model file so `explain` and
/// `fairness` rebuild the same samples.
#[derive(clap::Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DataArgs {
    /// An LAPD "Crime Data from 2020 to Present" export (.csv or .csv.gz);
    /// without it, the embedded synthetic data.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Synthetic incidents to generate when no `--data` is given.
    #[arg(long, default_value_t = 200_000)]
    pub rows: usize,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 7)]
    pub data_seed: u64,
    /// The task: `risk` (level 1-5 per area and 4-hour block) or `counts`
    /// (per-category counts per area and period).
    #[arg(long, default_value = "risk")]
    pub task: Task,
    /// The period of the `counts` task: `day` or `week`.
    #[arg(long, default_value = "day")]
    pub period: Period,
}

impl DataArgs {
    /// A one-line description of the data source.
    pub fn source(&self) -> String {
        match &self.data {
            Some(p) => p.display().to_string(),
            None => format!("synthetic ({} rows, seed {})", self.rows, self.data_seed),
        }
    }

    /// Loads or generates the incidents.
    pub fn incidents(&self) -> anyhow::Result<Vec<Incident>> {
        match &self.data {
            Some(path) => {
                let loaded = fedcrime_data::loader::load_path(path)
                    .with_context(|| format!("loading {}", path.display()))?;
                Ok(loaded.incidents)
            }
            None => Ok(fedcrime_data::synth::generate_incidents(
                self.rows,
                self.data_seed,
            )),
        }
    }

    /// Loads the data and builds the task.
    pub fn task_data(&self) -> anyhow::Result<TaskData> {
        let incidents = self.incidents()?;
        let cfg = TaskConfig {
            task: self.task,
            period: self.period,
            ..TaskConfig::default()
        };
        build_task(&incidents, &cfg).with_context(|| {
            format!(
                "building the {} task from {} incidents of {}",
                self.task,
                incidents.len(),
                self.source()
            )
        })
    }
}

/// Model hyperparameters that override the architecture's defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// The architecture: `dnn`, `lstm` or `gat-tcn` (counts only).
    #[arg(long, default_value = "dnn")]
    pub model: ModelKind,
    /// Hidden width (the architecture's default when absent).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Layers (hidden layers, LSTM layers or TCN levels).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Dropout probability.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// The loss of the counts task: `poisson` (the default) or `mse`.
    #[arg(long)]
    pub count_loss: Option<CountLoss>,
    /// Class weights of the risk cross-entropy: `balanced` (every level
    /// weighs the same in total, what macro-F1 rewards), `sqrt` or `none`.
    #[arg(long, default_value = "balanced")]
    pub class_weights: ClassWeighting,
}

impl ModelArgs {
    /// The model config for a training split (the graph split for gat-tcn).
    pub fn config(&self, train: &Dataset) -> anyhow::Result<ModelConfig> {
        let mut cfg = ModelConfig::for_dataset(self.model, train);
        if let Some(h) = self.hidden {
            cfg.hidden = h;
        }
        if let Some(l) = self.layers {
            cfg.layers = l;
        }
        if let Some(d) = self.dropout {
            cfg.dropout = d;
        }
        if let Some(l) = self.count_loss {
            cfg.count_loss = l;
        }
        cfg.class_weights = self.class_weights.weights(train);
        cfg.validate()
            .with_context(|| format!("{} config for {}", self.model, train.task))?;
        Ok(cfg)
    }

    /// The samples the model trains on: the task's splits, or for gat-tcn
    /// the graph windows over the same periods (one sample per period, all
    /// areas; see [`graph_splits`]).
    pub fn model_splits(&self, data: &TaskData, period: Period) -> anyhow::Result<Option<Splits>> {
        if self.model != ModelKind::GatTcn {
            return Ok(None);
        }
        if data.splits.train.task != Task::Counts {
            bail!("gat-tcn predicts every area's next-period counts: use --task counts");
        }
        let g = data
            .graph
            .as_ref()
            .context("the counts task came without its graph series")?;
        let windows = GraphWindows {
            steps: DEFAULT_GRAPH_STEPS,
            weekday: period == Period::Day,
        };
        Ok(Some(
            graph_splits(g, &windows).context("graph windows of the counts task")?,
        ))
    }
}

/// Metrics of a graph model (one sample per period, `[areas * categories]`
/// values) regrouped per (period, area) like the flat samples, so they sit
/// in the same table as the flat baselines.
pub fn per_area_metrics(m: Metrics, areas: usize) -> Metrics {
    match m {
        Metrics::Counts(c) => match c.fold_columns(areas) {
            Some(f) => Metrics::Counts(f),
            None => Metrics::Counts(c),
        },
        other => other,
    }
}

/// Options of `fedcrime-sim train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// The data and the task.
    #[command(flatten)]
    pub data: DataArgs,
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// A TOML file with a `TrainConfig` (flags override its values).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data-parallel replicas (CPU workers, or one per CUDA device).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Model parallelism: the model's layers cut into STAGES consecutive
    /// stages, each on its own thread (CPU: `--threads` split among them in
    /// proportion to their parameters, at least one each)
    /// or CUDA device (cuda:0..STAGES), with each batch's micro-batches
    /// pipelined through them (GPipe) and one optimizer step per batch. At
    /// most: dnn and lstm layers + 1 (the head is a stage), gat-tcn layers
    /// + 2 (graph attention, TCN blocks, head). Not with --workers > 1.
    #[arg(long, value_name = "STAGES")]
    pub model_parallel: Option<usize>,
    /// Micro-batches each batch is cut into with --model-parallel (more
    /// keep the stages busier, smaller ones cost more per sample; on a CPU
    /// with small models 2 was fastest).
    #[arg(
        long,
        value_name = "M",
        default_value_t = 2,
        requires = "model_parallel"
    )]
    pub micro_batches: usize,
    /// Where to train: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Maximum epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adam's (L2) weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Early-stopping patience in epochs (0: never stop early).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Seed of the model initialization, shuffling and dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fairness-aware training (one worker): `none`, `reweigh` (risk:
    /// Kamiran-Calders sample weights), `penalty:LAMBDA` (demographic parity
    /// of the predicted levels; for counts, parity of the bias) or
    /// `penalty-eo:LAMBDA` (equalized odds, risk).
    #[arg(long)]
    pub fairness: Option<fedcrime_ml::train::FairTraining>,
    /// The groups --fairness equalizes: `bureau` or `area` [default: bureau].
    #[arg(long, value_enum)]
    pub fairness_groups: Option<FairGroupsArg>,
    /// libtorch intra-op threads (libtorch's default when absent).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Hides the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

impl TrainArgs {
    /// The training config: the file's (or the defaults), then the flags.
    pub fn train_config(&self) -> anyhow::Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                toml::from_str::<TrainConfig>(&text)
                    .with_context(|| format!("parsing {}", p.display()))?
            }
            None => TrainConfig::default(),
        };
        if let Some(v) = self.epochs {
            cfg.epochs = v;
        }
        if let Some(v) = self.batch_size {
            cfg.batch_size = v;
        }
        if let Some(v) = self.lr {
            cfg.lr = v;
        }
        if let Some(v) = self.weight_decay {
            cfg.weight_decay = v;
        }
        if let Some(v) = self.patience {
            cfg.patience = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = self.fairness {
            cfg.fairness = v;
        }
        if let Some(v) = self.fairness_groups {
            cfg.fairness_groups = match v {
                FairGroupsArg::Bureau => fedcrime_ml::train::FairGroups::Bureau,
                FairGroupsArg::Area => fedcrime_ml::train::FairGroups::Area,
            };
        }
        cfg.progress = !self.no_progress;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The groups fairness-aware training equalizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FairGroupsArg {
    /// The four bureaus.
    Bureau,
    /// The 21 areas.
    Area,
}

/// Streams `metrics.csv`, one row per epoch (each on disk before the next).
struct MetricsCsv {
    log: fedcrime_files::CsvLog,
    names: Vec<String>,
}

impl MetricsCsv {
    fn create(path: PathBuf, task: Task, output_dim: usize) -> anyhow::Result<Self> {
        let names = Metrics::scalar_names(task, output_dim);
        let mut header: Vec<String> = ["epoch", "train_loss", "val_loss"].map(String::from).into();
        header.extend(names.iter().cloned());
        header.extend(["samples_per_sec", "seconds"].map(String::from));
        let log = fedcrime_files::CsvLog::create(&path, &header, Vec::<Vec<String>>::new())?;
        Ok(Self { log, names })
    }

    fn row(&mut self, r: &EpochRecord) -> anyhow::Result<()> {
        let mut cells = vec![
            r.epoch.to_string(),
            r.train_loss.to_string(),
            r.val_loss.map(|v| v.to_string()).unwrap_or_default(),
        ];
        let scalars = r.val_metrics.as_ref().map(Metrics::scalars);
        for i in 0..self.names.len() {
            cells.push(
                scalars
                    .as_ref()
                    .and_then(|s| s.get(i))
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default(),
            );
        }
        cells.push(format!("{:.1}", r.samples_per_sec));
        cells.push(format!("{:.3}", r.seconds));
        Ok(self.log.append(&cells)?)
    }
}

/// Any trainer, behind one face.
enum AnyTrainer {
    Station(Trainer),
    Parallel(ParallelTrainer),
    Pipeline(PipelineTrainer),
}

impl AnyTrainer {
    fn fit(
        &mut self,
        s: &Splits,
        on_epoch: &mut dyn FnMut(&EpochRecord),
    ) -> anyhow::Result<FitReport> {
        Ok(match self {
            AnyTrainer::Station(t) => t.fit_observed(&s.train, Some(&s.val), on_epoch)?,
            AnyTrainer::Parallel(t) => t.fit_observed(&s.train, Some(&s.val), on_epoch)?,
            AnyTrainer::Pipeline(t) => t.fit_observed(&s.train, Some(&s.val), on_epoch)?,
        })
    }

    fn evaluate(&self, ds: &Dataset) -> anyhow::Result<Evaluation> {
        Ok(match self {
            AnyTrainer::Station(t) => t.evaluate(ds)?,
            AnyTrainer::Parallel(t) => t.evaluate(ds)?,
            AnyTrainer::Pipeline(t) => t.evaluate(ds)?,
        })
    }

    fn model(&self) -> &dyn fedcrime_ml::model::CrimeModel {
        match self {
            AnyTrainer::Station(t) => t.model(),
            AnyTrainer::Parallel(t) => t.model(),
            AnyTrainer::Pipeline(t) => t.model(),
        }
    }
}

/// Runs the command.
pub fn run(args: &TrainArgs, global: &GlobalOpts) -> anyhow::Result<()> {
    let started = Instant::now();
    if let (Some(stages), true) = (args.model_parallel, args.workers > 1) {
        bail!(
            "--model-parallel {stages} and --workers {} are exclusive: model parallelism \
             splits the layers, data parallelism the batch; choose one",
            args.workers
        );
    }
    let mut tcfg = args.train_config()?;
    tcfg.progress &= !global.quiet;
    if let Some(t) = args.threads {
        tch::set_num_threads(t as i32);
    }
    let data = args.data.task_data()?;
    let graph_splits = args.model.model_splits(&data, args.data.period)?;
    // What the model trains and is tested on (graph windows for gat-tcn).
    let s = graph_splits.as_ref().unwrap_or(&data.splits);
    tracing::info!(
        "{} from {}: train {} / val {} / test {} samples, {} features",
        args.data.task,
        args.data.source(),
        s.train.len(),
        s.val.len(),
        s.test.len(),
        s.train.feature_dim
    );
    let mcfg = args.model.config(&s.train)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    tch::manual_seed(tcfg.seed as i64);
    let mut trainer = if let Some(stages) = args.model_parallel {
        let pipe = PipelineConfig {
            stages,
            micro_batches: args.micro_batches,
            device: args.device,
            threads: args.threads,
        };
        AnyTrainer::Pipeline(
            PipelineTrainer::new(&mcfg, tcfg.clone(), &pipe).context("--model-parallel")?,
        )
    } else if args.workers > 1 {
        let par = ParallelConfig {
            workers: args.workers,
            device: args.device,
            threads: args.threads,
        };
        AnyTrainer::Parallel(ParallelTrainer::new(&mcfg, tcfg.clone(), &par)?)
    } else {
        let device = args.device.resolve().map_err(anyhow::Error::msg)?;
        AnyTrainer::Station(Trainer::new(build(&mcfg, device)?, tcfg.clone())?)
    };

    let areas = if graph_splits.is_some() {
        mcfg.areas
    } else {
        1
    };
    let mut csv = MetricsCsv::create(
        args.out.join("metrics.csv"),
        args.data.task,
        s.train.target.output_dim() / areas,
    )?;
    let mut csv_error = None;
    let report = trainer.fit(s, &mut |r| {
        if csv_error.is_none() {
            let mut r = r.clone();
            r.val_metrics = r.val_metrics.map(|m| per_area_metrics(m, areas));
            csv_error = csv.row(&r).err();
        }
    })?;
    if let Some(e) = csv_error {
        return Err(e);
    }
    let mut test = trainer.evaluate(&s.test)?;
    test.metrics = per_area_metrics(test.metrics, areas);
    // The baselines predict the flat samples of the same test periods.
    let baselines = evaluate_baselines(&data.splits, &data.splits.test, args.data.period)?;
    // The kept epoch against the baselines on the validation split, where
    // settings are chosen (the test split only reports).
    let val_baselines = evaluate_baselines(&data.splits, &data.splits.val, args.data.period)?;
    let val_metrics = report
        .kept()
        .and_then(|r| r.val_metrics.clone())
        .map(|m| per_area_metrics(m, areas));

    let mut meta = BTreeMap::new();
    meta.insert(
        "fedcrime.train_config".to_string(),
        serde_json::to_string(&tcfg)?,
    );
    meta.insert(
        "fedcrime.featurizer".to_string(),
        serde_json::to_string(&data.featurizer)?,
    );
    meta.insert("fedcrime.data_source".to_string(), args.data.source());
    meta.insert(
        super::audit::META_DATA_ARGS.to_string(),
        serde_json::to_string(&args.data)?,
    );
    let model_path = args.out.join("model.safetensors");
    save_model(trainer.model(), &model_path, &meta)
        .with_context(|| format!("writing {}", model_path.display()))?;

    let md = report_markdown(&ReportInputs {
        model_name: args.model.model.to_string(),
        source: args.data.source(),
        model: &mcfg,
        train: &tcfg,
        num_params: trainer.model().num_params(),
        workers: args.workers,
        splits: s,
        report: &report,
        test: &test,
        baselines: &baselines,
        val: val_metrics.as_ref(),
        val_baselines: &val_baselines,
    });
    let md = match &trainer {
        AnyTrainer::Pipeline(t) => md + &pipeline_section(t)?,
        _ => md,
    };
    let report_path = args.out.join("report.md");
    std::fs::write(&report_path, &md)
        .with_context(|| format!("writing {}", report_path.display()))?;
    if !global.quiet {
        println!("{md}");
        eprintln!(
            "wrote {}, {}, {} in {:.1} s",
            args.out.join("metrics.csv").display(),
            model_path.display(),
            report_path.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `report.md`'s account of a model-parallel run: the stages, their devices
/// and sizes, and what passed between them.
fn pipeline_section(t: &PipelineTrainer) -> anyhow::Result<String> {
    let mut md = String::from("\n## Model parallelism\n\n| stage | layer units | device | parameters |\n|---:|---|---|---:|\n");
    let params = t.stage_params()?;
    for (k, ((units, device), n)) in t
        .stage_units()
        .iter()
        .zip(t.stage_devices())
        .zip(params)
        .enumerate()
    {
        let _ = writeln!(md, "| {k} | {units:?} | {device:?} | {n} |");
    }
    let _ = writeln!(
        md,
        "\n{} micro-batches per batch; {:.2} MB of activations and gradients between stages in the last epoch.",
        t.micro_batches(),
        t.bytes_per_epoch() as f64 / 1e6
    );
    Ok(md)
}

/// Formats a metric for a table.
fn fmt_metric(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{v:.4}")
    }
}

/// The test-split table: the model and each baseline, one row each.
pub fn comparison_table(model_name: &str, test: &Metrics, baselines: &[BaselineResult]) -> String {
    let mut s = String::new();
    let names: Vec<String> = test.scalars().into_iter().map(|(n, _)| n).collect();
    s.push_str("| predictor |");
    for n in &names {
        let _ = write!(s, " {n} |");
    }
    s.push_str(" fallbacks |\n|---|");
    for _ in &names {
        s.push_str("---:|");
    }
    s.push_str("---:|\n");
    let _ = write!(s, "| **{model_name}** |");
    for (_, v) in test.scalars() {
        let _ = write!(s, " {} |", fmt_metric(v));
    }
    s.push_str(" |\n");
    for b in baselines {
        let _ = write!(s, "| {} |", b.name);
        for (_, v) in b.metrics.scalars() {
            let _ = write!(s, " {} |", fmt_metric(v));
        }
        let _ = writeln!(s, " {} |", b.fallbacks);
    }
    s
}

/// Whether the model beats every baseline on the headline metric, as a sentence.
pub fn verdict(test: &Metrics, baselines: &[BaselineResult]) -> String {
    let (name, v) = test.headline();
    let higher_better = test.task() == Task::Risk;
    let losers: Vec<&str> = baselines
        .iter()
        .filter(|b| {
            let bv = b.metrics.headline().1;
            if higher_better {
                bv >= v
            } else {
                bv <= v
            }
        })
        .map(|b| b.name.as_str())
        .collect();
    if losers.is_empty() {
        format!(
            "The model beats every naive baseline on test {name} ({}).",
            fmt_metric(v)
        )
    } else {
        format!(
            "The model does NOT beat {} on test {name} ({}); see the table.",
            losers.join(", "),
            fmt_metric(v)
        )
    }
}

/// Everything `report.md` shows.
pub struct ReportInputs<'a> {
    /// Model name for the table.
    pub model_name: String,
    /// Data source, one line.
    pub source: String,
    /// The model config.
    pub model: &'a ModelConfig,
    /// The training config.
    pub train: &'a TrainConfig,
    /// Number of scalar parameters.
    pub num_params: usize,
    /// Replicas used.
    pub workers: usize,
    /// The splits the model trained on (sizes).
    pub splits: &'a Splits,
    /// The training history.
    pub report: &'a FitReport,
    /// The model on the test split.
    pub test: &'a Evaluation,
    /// The baselines on the test split.
    pub baselines: &'a [BaselineResult],
    /// The kept epoch's validation metrics, when validation chose one.
    pub val: Option<&'a Metrics>,
    /// The baselines on the validation split.
    pub val_baselines: &'a [BaselineResult],
}

/// `report.md`: setup, training summary and the test-split comparison.
pub fn report_markdown(r: &ReportInputs<'_>) -> String {
    let s = r.splits;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# {} on {} ({})\n",
        r.model_name, s.train.task, r.source
    );
    let _ = writeln!(
        md,
        "- samples: train {}, validation {}, test {}; {} features",
        s.train.len(),
        s.val.len(),
        s.test.len(),
        s.train.feature_dim
    );
    let _ = writeln!(
        md,
        "- model: {}, hidden {}, layers {}, dropout {}, {} parameters{}",
        r.model.kind,
        r.model.hidden,
        r.model.layers,
        r.model.dropout,
        r.num_params,
        match &r.model.class_weights {
            Some(w) => format!(
                ", class weights [{}]",
                w.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        }
    );
    let _ = writeln!(
        md,
        "- training: Adam lr {}, batch {}, up to {} epochs (patience {}), seed {}, {} worker(s)",
        r.train.lr, r.train.batch_size, r.train.epochs, r.train.patience, r.train.seed, r.workers
    );
    let secs: f64 = r.report.epochs.iter().map(|e| e.seconds).sum();
    let sps = r
        .report
        .epochs
        .iter()
        .map(|e| e.samples_per_sec)
        .sum::<f64>()
        / r.report.epochs.len().max(1) as f64;
    let _ = writeln!(
        md,
        "- ran {} epoch(s){}, kept epoch {} (validation loss {}); {:.1} s, {:.0} training samples/s",
        r.report.epochs.len(),
        if r.report.stopped_early { " (stopped early)" } else { "" },
        r.report.best_epoch.map_or("last".to_string(), |e| e.to_string()),
        r.report.best_val_loss.map_or("n/a".to_string(), fmt_metric),
        secs,
        sps
    );
    if r.model.kind == ModelKind::GatTcn {
        let _ = writeln!(
            md,
            "- gat-tcn samples are periods covering all {} areas; its metrics are regrouped per (period, area) to match the baselines' samples",
            r.model.areas
        );
    }
    let _ = writeln!(
        md,
        "- test loss of the model: {}\n",
        fmt_metric(r.test.loss)
    );
    let _ = writeln!(md, "## Test split: model vs naive baselines\n");
    md.push_str(&comparison_table(
        &r.model_name,
        &r.test.metrics,
        r.baselines,
    ));
    let _ = writeln!(md, "\n{}", verdict(&r.test.metrics, r.baselines));
    if let Some(val) = r.val {
        let _ = writeln!(
            md,
            "\n## Validation split (kept epoch): model vs naive baselines\n"
        );
        md.push_str(&comparison_table(&r.model_name, val, r.val_baselines));
        let _ = writeln!(md, "\n{}", verdict(val, r.val_baselines));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn real_month() -> Option<PathBuf> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/la-crime/la_crime_2024_02.csv");
        p.is_file().then_some(p)
    }

    fn quiet() -> GlobalOpts {
        GlobalOpts {
            log_format: crate::LogFormat::Text,
            quiet: true,
        }
    }

    #[derive(Parser, Debug)]
    struct ExplainCli {
        #[command(flatten)]
        args: crate::cmd::explain::ExplainArgs,
    }

    #[derive(Parser, Debug)]
    struct FairnessCli {
        #[command(flatten)]
        args: crate::cmd::fairness::FairnessArgs,
    }

    #[test]
    fn trained_models_are_explained_and_audited_from_their_folder() {
        let Some(data) = real_month() else {
            eprintln!("skipped: ../shared/data/la-crime is absent");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        for (task, model, method, fairness) in [
            ("risk", "dnn", "kernel", "penalty:1"),
            ("counts", "lstm", "integrated-gradients", "none"),
        ] {
            let out = dir.path().join(model);
            let o = out.to_str().unwrap();
            let args = Cli::parse_from([
                "x",
                "--task",
                task,
                "--model",
                model,
                "--data",
                data.to_str().unwrap(),
                "--epochs",
                "1",
                "--threads",
                "1",
                "--fairness",
                fairness,
                "--out",
                o,
            ])
            .train;
            run(&args, &quiet()).unwrap();
            // No --data: the model file names what it was trained on.
            let e = ExplainCli::parse_from([
                "x",
                "--model",
                o,
                "--method",
                method,
                "--samples",
                "4",
                "--background",
                "5",
                "--nsamples",
                "64",
                "--no-progress",
            ])
            .args;
            crate::cmd::explain::run(&e, &quiet()).unwrap();
            let s: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("explain/summary.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(s["method"], method);
            let ranking = s["ranking"].as_array().unwrap();
            assert!(ranking.iter().any(|g| g["group"] == "area"), "{ranking:?}");
            let err = s["summary"]["max_additivity_error"].as_f64().unwrap();
            assert!(
                err < if method == "kernel" { 1e-4 } else { 5e-2 },
                "{method}: {err}"
            );
            assert!(s["cost_ratio"].as_f64().unwrap() > 1.0);
            let values = std::fs::read_to_string(out.join("explain/values.csv")).unwrap();
            let outputs = if task == "risk" { 5 } else { 8 };
            assert_eq!(values.lines().count(), 1 + 4 * outputs);
            for f in [
                "importance.csv",
                "importance.png",
                "beeswarm.svg",
                "report.md",
            ] {
                assert!(out.join("explain").join(f).is_file(), "{f}");
            }
            let f = FairnessCli::parse_from(["x", "--model", o, "--groups", "bureau"]).args;
            crate::cmd::fairness::run(&f, &quiet()).unwrap();
            let j: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("fairness/fairness.json")).unwrap(),
            )
            .unwrap();
            let groups = if task == "risk" {
                j["risk"]["high_risk"]["groups"].as_array().unwrap().len()
            } else {
                j["counts"]["groups"].as_array().unwrap().len()
            };
            assert_eq!(groups, 4, "four bureaus");
            let preds = std::fs::read_to_string(out.join("fairness/predictions.csv")).unwrap();
            assert!(preds.starts_with("group,area,time,"));
        }
        // Other data than the model's are refused, naming the way out.
        let other = data.with_file_name("la_crime_2020_sample.csv");
        if !other.is_file() {
            return;
        }
        let wrong = ExplainCli::parse_from([
            "x",
            "--model",
            dir.path().join("lstm").to_str().unwrap(),
            "--data",
            other.to_str().unwrap(),
        ])
        .args;
        let e = crate::cmd::explain::run(&wrong, &quiet()).unwrap_err();
        assert!(format!("{e:#}").contains("trained on other data"), "{e:#}");
    }

    #[test]
    fn train_writes_metrics_model_and_report() {
        let Some(data) = real_month() else {
            eprintln!("skipped: ../shared/data/la-crime is absent");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        for (task, model) in [("risk", "dnn"), ("counts", "gat-tcn")] {
            let out = dir.path().join(model);
            let args = Cli::parse_from([
                "x",
                "--task",
                task,
                "--model",
                model,
                "--data",
                data.to_str().unwrap(),
                "--epochs",
                "1",
                "--threads",
                "1",
                "--out",
                out.to_str().unwrap(),
            ])
            .train;
            run(&args, &quiet()).unwrap();
            let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
            let lines: Vec<&str> = csv.lines().collect();
            assert_eq!(lines.len(), 2, "{csv}");
            assert!(lines[0].starts_with("epoch,train_loss,val_loss,"));
            assert!(lines[0].ends_with(",samples_per_sec,seconds"));
            let cols = lines[0].split(',').count();
            assert!(lines.iter().all(|l| l.split(',').count() == cols), "{csv}");
            if task == "counts" {
                // Regrouped per (period, area): one column per crime category.
                assert!(lines[0].contains("mae_vehicle") && !lines[0].contains("c167"));
            }
            let (loaded, meta) =
                fedcrime_ml::model::load_model(&out.join("model.safetensors"), tch::Device::Cpu)
                    .unwrap();
            assert_eq!(loaded.kind().as_str(), model);
            assert!(meta.contains_key("fedcrime.featurizer"));
            let report = std::fs::read_to_string(out.join("report.md")).unwrap();
            let baseline = if task == "risk" {
                "majority_class"
            } else {
                "last_period"
            };
            assert!(report.contains(&format!("| **{model}** |")), "{report}");
            assert!(report.contains(baseline), "{report}");
        }
    }

    #[test]
    fn gat_tcn_needs_the_counts_task() {
        let Some(data) = real_month() else {
            eprintln!("skipped: ../shared/data/la-crime is absent");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let args = Cli::parse_from([
            "x",
            "--model",
            "gat-tcn",
            "--data",
            data.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ])
        .train;
        let e = run(&args, &quiet()).unwrap_err();
        assert!(format!("{e:#}").contains("--task counts"), "{e:#}");
    }

    #[test]
    fn model_parallel_excludes_workers_and_checks_its_stages() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_str().unwrap();
        let parse = |extra: &[&str]| {
            let mut argv = vec!["x", "--rows", "3000", "--epochs", "1", "--out", out];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| c.train)
        };
        let both = parse(&["--model-parallel", "2", "--workers", "2"]).unwrap();
        let e = run(&both, &quiet()).unwrap_err();
        assert!(format!("{e:#}").contains("exclusive"), "{e:#}");
        // --micro-batches only means something with --model-parallel.
        assert!(parse(&["--micro-batches", "2"]).is_err());
        let too_many = parse(&["--model-parallel", "9", "--device", "cpu"]).unwrap();
        let e = run(&too_many, &quiet()).unwrap_err();
        assert!(format!("{e:#}").contains("stages"), "{e:#}");
        let ok = parse(&[
            "--model-parallel",
            "2",
            "--micro-batches",
            "2",
            "--device",
            "cpu",
            "--threads",
            "1",
        ])
        .unwrap();
        run(&ok, &quiet()).unwrap();
        let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(report.contains("## Model parallelism"), "{report}");
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("train.toml");
        std::fs::write(&file, "epochs = 7\nlr = 0.01\nbatch_size = 64\n").unwrap();
        let args = Cli::parse_from([
            "x",
            "--config",
            file.to_str().unwrap(),
            "--lr",
            "0.002",
            "--out",
            "o",
        ])
        .train;
        let c = args.train_config().unwrap();
        assert_eq!((c.epochs, c.lr, c.batch_size), (7, 0.002, 64));
        std::fs::write(&file, "epochs = 0\n").unwrap();
        assert!(args.train_config().is_err());
    }
}
