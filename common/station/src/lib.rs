//! # fedcrime-station
//!
//! A federated station's logic, without any transport: what a precinct does
//! with the requests of a round.
//!
//! A [`Station`] holds its own data (a [`Splits`] partition, nothing else) and
//! the model architecture of the run ([`ModelConfig`]). For each fit request
//! ([`FitIns`]: the global model and the round's settings) it builds a model,
//! loads the global parameters, trains locally with the train module's
//! [`Trainer`] (epochs, batch size, learning rate, FedProx `mu`, seed) and
//! returns the trained parameters with its number of examples and training
//! loss ([`FitRes`]). For each evaluation request ([`EvaluateIns`]) it scores
//! the given model on its local validation split ([`EvaluateRes`]). Models are
//! built per request and dropped after it, so a simulator can hold a thousand
//! stations without a thousand models.
//!
//! The QUIC client (`fedcrime-client`) and the in-memory simulator drive the
//! same [`Learner`] trait, so both give the same numbers for the same seeds.
//! The pieces around it:
//!
//! - [`data`]: from cleaned incidents to a station's [`Splits`] (area filter
//!   or partition, with the run's shared featurizer or one fit locally);
//! - [`protocol`]: fit requests on and off the wire (one typed
//!   [`RoundSettings`] end to end), evaluation settings, and the run
//!   description ([`RunSetup`](protocol::RunSetup)) the server sends in its
//!   Welcome;
//! - [`model_config`]: the architecture of a task, derived from the task's
//!   feature layout alone (the server builds the initial model without data).
//!
//! A round trains with its [`RoundSettings`] (see [`train_config`]) and the
//! station's defaults for everything a round does not set (evaluation batch
//! size, class weighting, ...: [`Station::with_defaults`]).

pub mod data;
pub mod ingest;
pub mod live;
pub mod predict;
pub mod protocol;
pub mod store;

use std::sync::Arc;
use std::time::Instant;

use tch::Device;

use fedcrime_data::categories::Category;
use fedcrime_data::features::{Layout, RISK_LEVELS};
use fedcrime_data::{DataError, Dataset, Splits, Task, TaskConfig};
use fedcrime_fl::privacy::DP_EPSILON_METRIC;
use fedcrime_fl::strategy::{global_loss_requested, GLOBAL_LOSS_KEY, LOSS_KEY};
use fedcrime_fl::{
    ConfigValue, EvalSummary, EvaluateIns, EvaluateRes, FitIns, FitRes, LocalDp, Metrics,
    RoundSettings,
};
use fedcrime_ml::explain::{
    explain_rows, feature_groups, output_names, pick_rows, Background, ExplainConfig, Inputs,
    Method, Summary,
};
use fedcrime_ml::model::{self, ModelConfig, ModelError, ModelKind};
use fedcrime_ml::train::trainer::evaluate_model;
use fedcrime_ml::train::Evaluation;
use fedcrime_ml::train::{negative_log_likelihood, TrainConfig, TrainError, Trainer};
use fedcrime_ml::train::{DpAccounting, DpSgd};
use fedcrime_params::ParamSpec;

/// Evaluation settings: the evaluation batch size (integer).
pub(crate) const BATCH_SIZE_KEY: &str = "batch_size";
/// Evaluation settings: which local split to score (`val`, the default, `test` or `train`).
pub(crate) const SPLIT_KEY: &str = "split";
/// Evaluation settings: explain the model on this many samples of the
/// split (integer) and add the explanation's summary to the reply's metrics
/// (`shap|...`, see [`fedcrime_ml::explain::Summary::to_metrics`]): what a
/// federated explanation asks of a station; its rows never leave it.
pub const EXPLAIN_KEY: &str = "explain";
/// Evaluation settings: the explanation method (`gradient`, the default,
/// `integrated-gradients`, `kernel` or `exact`).
pub const EXPLAIN_METHOD_KEY: &str = "explain_method";
/// Evaluation settings: also report the model's prediction for the
/// station's areas in the period after its records end (flag): metrics
/// `next|step` (the time step), `next|AREA` (the expected risk level
/// `sum k p_k`, or the expected total count) and, for risk, `next|AREA|level`
/// (the most likely level). What the agency's dashboard maps; a station
/// without forecast rows ([`Station::with_forecast`]) reports nothing.
pub const FORECAST_KEY: &str = "forecast";
/// The prefix of the forecast metrics.
pub const FORECAST_PREFIX: &str = fedcrime_fl::metrics::FORECAST_REPORT_PREFIX;
/// Background rows a station's explanation draws from its training split.
const EXPLAIN_BACKGROUND: usize = 50;

/// The fit metric carrying the number of local epochs run.
pub(crate) const EPOCHS_METRIC: &str = "epochs";

/// A station could not set up, train or evaluate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StationError {
    /// A round setting has the wrong type or range.
    #[error("round setting {key:?}: {reason}")]
    Setting {
        /// The setting's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The station's data does not fit the run's model or task.
    #[error("station data: {0}")]
    Mismatch(String),
    /// The station has no samples in a split it needs.
    #[error("station has no {split} samples")]
    EmptySplit {
        /// The split.
        split: &'static str,
    },
    /// The run's description (from the server) is malformed.
    #[error("run setup: {0}")]
    Setup(String),
    /// The architecture cannot be derived or built.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Training or evaluation failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Loading or featurizing data failed.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// The forecast metrics of [`FORECAST_KEY`] for `model` on rows `ds` (all at
/// one time step; see [`forecast_rows`]).
pub fn forecast_metrics(model: &dyn model::CrimeModel, ds: &Dataset) -> Result<Metrics> {
    if ds.is_empty() {
        return Ok(Metrics::new());
    }
    let idx: Vec<usize> = (0..ds.len()).collect();
    let batch = model::to_batch(ds, &idx, model.device());
    let out = tch::no_grad(|| {
        fedcrime_ml::explain::explained_outputs(model, &model.forward_t(&batch, false))
    });
    let width = out.size().last().copied().unwrap_or(1).max(1) as usize;
    let values = Vec::<f32>::try_from(
        out.to_kind(tch::Kind::Float)
            .to_device(Device::Cpu)
            .flatten(0, -1),
    )
    .map_err(TrainError::Torch)?;
    let mut m = Metrics::new();
    m.insert(format!("{FORECAST_PREFIX}step"), f64::from(ds.time[0]));
    for (row, v) in values.chunks(width).enumerate() {
        let area = ds.area[row];
        match model.task() {
            Task::Risk => {
                let expected: f32 = v.iter().enumerate().map(|(k, p)| (k + 1) as f32 * p).sum();
                let level = v
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(1, |(k, _)| k + 1);
                m.insert(format!("{FORECAST_PREFIX}{area}"), f64::from(expected));
                m.insert(format!("{FORECAST_PREFIX}{area}|level"), level as f64);
            }
            Task::Counts => {
                m.insert(
                    format!("{FORECAST_PREFIX}{area}"),
                    f64::from(v.iter().sum::<f32>()),
                );
            }
        }
    }
    Ok(m)
}

/// The rows of `areas` (all when `None`) at the period right after the
/// latest incident of `incidents`, featurized by `featurizer`: what
/// [`Station::with_forecast`] takes. `None` when the history cannot
/// feature that period (too short).
pub fn forecast_rows(
    featurizer: &fedcrime_data::Featurizer,
    incidents: &[fedcrime_data::Incident],
    areas: Option<&std::collections::BTreeSet<u8>>,
) -> Option<Dataset> {
    let last = incidents
        .iter()
        .map(|i| (i.date_occurred, i.minute_of_day))
        .max()?;
    let t = featurizer
        .time_unit()
        .step_of(i64::from(last.0), last.1)?
        .checked_add(1)?;
    let ds = featurizer.rows_at(incidents, t).ok()?;
    Some(match areas {
        Some(set) => select(&ds, |i| set.contains(&ds.area[i])),
        None => ds,
    })
}

fn select(ds: &Dataset, keep: impl Fn(usize) -> bool) -> Dataset {
    let idx: Vec<usize> = (0..ds.len()).filter(|&i| keep(i)).collect();
    ds.subset(&idx)
}

/// Shorthand for results of this module.
pub type Result<T, E = StationError> = std::result::Result<T, E>;

/// What a station does with a round's requests: implemented by [`Station`],
/// and by scripted stand-ins in tests. `&self`: one learner may serve
/// requests from several threads.
pub trait Learner: Send + Sync {
    /// Trains from `ins.global` with `ins.config` and returns the update.
    fn fit(&self, ins: &FitIns) -> Result<FitRes>;
    /// Scores `ins.global` on local data.
    fn evaluate(&self, ins: &EvaluateIns) -> Result<EvaluateRes>;
    /// The parameter layout of `model` (names, shapes), which the client
    /// checks every global model against. Building the model draws its
    /// random initial weights from libtorch's one generator, so a learner
    /// that serializes its work to replay dropout exactly (the simulator)
    /// serializes this too.
    fn param_spec(&self, model: &ModelConfig) -> Result<Arc<ParamSpec>> {
        Ok(model::build(model, Device::Cpu)?.param_spec())
    }
}

/// A station that does not train: each round it sends back the model it
/// received with one example, and evaluates to a loss of 0. The update
/// shares the received buffer (as Flower's no-training client returns the
/// arrays it got), so it measures what a round costs besides training,
/// without a copy training would replace: `fedcrime-client --echo`,
/// `fedcrime-sim bench rounds`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Learner for Echo {
    fn fit(&self, ins: &FitIns) -> Result<FitRes> {
        Ok(FitRes {
            params: ins.global.clone(),
            num_examples: 1,
            metrics: Metrics::from([(LOSS_KEY.to_string(), 0.0)]),
        })
    }

    fn evaluate(&self, _: &EvaluateIns) -> Result<EvaluateRes> {
        Ok(EvaluateRes {
            loss: 0.0,
            num_examples: 1,
            metrics: Metrics::new(),
        })
    }
}

/// The architecture of `kind` for `task`, from the task's feature layout
/// alone (no data needed): the flat feature width of the task's layout, the
/// sequence view `lags x categories`, 5 risk classes or one count per
/// category, and the kind's default widths (see [`ModelConfig::new`]).
///
/// `gat-tcn` (counts only) gets the graph of all 21 areas: windows of
/// [`DEFAULT_GRAPH_STEPS`](model::DEFAULT_GRAPH_STEPS) periods, node features
/// for the task's period (see [`GraphWindows`](model::GraphWindows)). Its
/// weights do not depend on the node count, so stations train them on
/// their own subgraph ([`data::prepare_for`]) and the server runs the
/// average on the whole city.
pub fn model_config(kind: ModelKind, task: &TaskConfig) -> Result<ModelConfig> {
    task.validate()?;
    if kind == ModelKind::GatTcn {
        return graph_model_config(task);
    }
    let input_dim = Layout::new(task.task, task.period, task.lags).names().len();
    let output_dim = match task.task {
        Task::Risk => RISK_LEVELS,
        Task::Counts => Category::COUNT,
    };
    let mut cfg = ModelConfig::new(kind, task.task, input_dim, output_dim);
    cfg.seq_steps = task.lags;
    cfg.seq_dim = Category::COUNT;
    Ok(cfg)
}

/// The gat-tcn architecture of a counts task on all 21 areas.
fn graph_model_config(task: &TaskConfig) -> Result<ModelConfig> {
    if task.task != Task::Counts {
        return Err(StationError::Model(ModelError::config(
            "kind",
            format!(
                "gat-tcn predicts every area's category counts: the task must be counts, not {}",
                task.task
            ),
        )));
    }
    let windows = model::GraphWindows::for_period(task.period);
    let areas = model::LAPD_AREAS;
    let mut cfg = ModelConfig::new(ModelKind::GatTcn, Task::Counts, 0, areas * Category::COUNT);
    cfg.seq_steps = windows.steps;
    cfg.seq_dim = areas * windows.node_features(Category::COUNT);
    cfg.adjacency = model::AreaGraph::lapd().edges().to_vec();
    cfg.validate()?;
    Ok(cfg)
}

/// Checks that `ds` has the shapes `model` expects.
pub fn check_dataset(model: &ModelConfig, ds: &Dataset, split: &str) -> Result<()> {
    let bad = |what: String| Err(StationError::Mismatch(format!("{split} split: {what}")));
    if ds.task != model.task {
        return bad(format!("{} samples for a {} model", ds.task, model.task));
    }
    if ds.feature_dim != model.input_dim {
        return bad(format!(
            "{} features per sample, the model takes {}",
            ds.feature_dim, model.input_dim
        ));
    }
    if ds.target.output_dim() != model.output_dim {
        return bad(format!(
            "targets of width {}, the model predicts {}",
            ds.target.output_dim(),
            model.output_dim
        ));
    }
    if matches!(model.kind, ModelKind::Lstm | ModelKind::GatTcn) {
        match &ds.sequences {
            Some(s) if s.steps == model.seq_steps && s.step_dim == model.seq_dim => {}
            Some(s) => {
                return bad(format!(
                    "sequences of {} x {}, the model takes {} x {}",
                    s.steps, s.step_dim, model.seq_steps, model.seq_dim
                ))
            }
            None => {
                return bad(format!(
                    "no sequence view, which the {} model needs",
                    model.kind
                ))
            }
        }
    }
    Ok(())
}

/// A station: its own data, the run's architecture, where it computes, and
/// its default training settings. See the module docs.
#[derive(Debug)]
pub struct Station {
    name: String,
    splits: Splits,
    model: ModelConfig,
    device: Device,
    defaults: TrainConfig,
    forecast: Option<Arc<Dataset>>,
    /// Local differential privacy: what this station's DP-SGD rounds have
    /// spent so far (its records' ε is its own to account).
    accountant: PrivacyAccountant,
}

/// What a station's DP-SGD rounds have spent, shared by the `Station`s
/// built over its records ([`Station::with_privacy_accountant`]).
pub type PrivacyAccountant = Arc<AccountantStore>;

/// A station's privacy accountant, optionally kept in a file so that what
/// its records have spent survives a restart of the station process (the
/// guarantee is about the records, whatever runs they took part in). The
/// file is replaced atomically after every charge, before the update that
/// spent it leaves the station.
#[derive(Debug, Default)]
pub struct AccountantStore {
    accountant: std::sync::Mutex<fedcrime_privacy::RdpAccountant>,
    path: Option<std::path::PathBuf>,
}

impl AccountantStore {
    /// An accountant kept in `path`: read back when the file exists (a
    /// station that trained before), else empty.
    pub fn open(path: impl Into<std::path::PathBuf>) -> Result<Self> {
        let path = path.into();
        let accountant = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StationError::Setup(format!(
                    "privacy accountant {}: {e} (the file holds what this station's records have \
                 spent; do not delete it to start afresh)",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => {
                return Err(StationError::Setup(format!(
                    "privacy accountant {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(AccountantStore {
            accountant: std::sync::Mutex::new(accountant),
            path: Some(path),
        })
    }

    /// Adds `steps` steps at sampling rate `q` and noise `z`, saves, and
    /// returns the ε at `delta` now.
    pub fn charge(&self, q: f64, z: f64, steps: u64, delta: f64) -> Result<f64> {
        let privacy = |e: fedcrime_privacy::PrivacyError| StationError::Setting {
            key: fedcrime_fl::privacy::DP_SGD_NOISE_EXTENSION.into(),
            reason: e.to_string(),
        };
        let mut accountant = self.accountant.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = accountant.clone();
        next.compose(q, z, steps).map_err(privacy)?;
        if let Some(path) = &self.path {
            let json = serde_json::to_vec(&next)
                .map_err(|e| StationError::Setup(format!("privacy accountant: {e}")))?;
            fedcrime_files::write_atomic(path, &json)
                .map_err(|e| StationError::Setup(format!("saving the privacy accountant: {e}")))?;
        }
        *accountant = next;
        Ok(accountant.epsilon(delta).map_err(privacy)?.epsilon)
    }

    /// The ε spent so far at `delta`.
    pub fn epsilon(&self, delta: f64) -> Option<f64> {
        let accountant = self.accountant.lock().unwrap_or_else(|e| e.into_inner());
        accountant.epsilon(delta).ok().map(|s| s.epsilon)
    }
}

/// The defaults a station trains with when a round does not say otherwise:
/// 1 epoch, batch 64, learning rate 1e-3, no early stopping.
pub fn default_train_config() -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size: 64,
        lr: 1e-3,
        patience: 0,
        progress: false,
        ..TrainConfig::default()
    }
}

impl Station {
    /// A station named `name` holding `splits`, training `model` on `device`.
    /// The training split must not be empty and every split must fit the model.
    pub fn new(
        name: impl Into<String>,
        splits: Splits,
        model: ModelConfig,
        device: Device,
    ) -> Result<Self> {
        model.validate()?;
        if splits.train.is_empty() {
            return Err(StationError::EmptySplit { split: "train" });
        }
        check_dataset(&model, &splits.train, "train")?;
        if !splits.val.is_empty() {
            check_dataset(&model, &splits.val, "val")?;
        }
        if !splits.test.is_empty() {
            check_dataset(&model, &splits.test, "test")?;
        }
        Ok(Station {
            name: name.into(),
            splits,
            model,
            device,
            defaults: default_train_config(),
            forecast: None,
            accountant: PrivacyAccountant::default(),
        })
    }

    /// Charges this station's DP-SGD rounds to `accountant`, shared with the
    /// other `Station`s built over the same records (a station rebuilt for
    /// each request must keep counting where the last one stopped).
    pub fn with_privacy_accountant(mut self, accountant: PrivacyAccountant) -> Self {
        self.accountant = accountant;
        self
    }

    /// Rows to forecast when an evaluation asks for it ([`FORECAST_KEY`]):
    /// the station's areas at the period after its records end (see
    /// [`forecast_rows`]).
    pub fn with_forecast(mut self, rows: Arc<Dataset>) -> Result<Self> {
        check_dataset(&self.model, &rows, "forecast")?;
        self.forecast = Some(rows);
        Ok(self)
    }

    fn forecast(&self, model: &dyn model::CrimeModel) -> Result<Metrics> {
        match self.forecast.as_deref() {
            Some(ds) => forecast_metrics(model, ds),
            None => Ok(Metrics::new()),
        }
    }

    /// Replaces the default training settings (rounds' settings override them).
    pub fn with_defaults(mut self, defaults: TrainConfig) -> Result<Self> {
        defaults.validate()?;
        self.defaults = defaults;
        Ok(self)
    }

    /// The station's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The station's data.
    pub fn splits(&self) -> &Splits {
        &self.splits
    }

    /// The architecture.
    pub fn model_config(&self) -> &ModelConfig {
        &self.model
    }

    /// Where it computes.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The default training settings.
    pub fn defaults(&self) -> &TrainConfig {
        &self.defaults
    }

    /// The training settings of round `round`: see [`train_config`].
    pub fn train_config(&self, settings: &RoundSettings, round: u64) -> Result<TrainConfig> {
        train_config(settings, round, self.splits.train.len(), &self.defaults)
    }

    fn build_model(&self) -> Result<Box<dyn model::CrimeModel>> {
        Ok(model::build(&self.model, self.device)?)
    }

    /// One local round: see [`Learner::fit`].
    pub fn fit(&self, ins: &FitIns) -> Result<FitRes> {
        let mut cfg = self.train_config(&ins.settings, ins.round)?;
        let local_dp =
            LocalDp::from_settings(&ins.settings).map_err(|reason| StationError::Setting {
                key: fedcrime_fl::privacy::DP_SGD_NOISE_EXTENSION.into(),
                reason,
            })?;
        if let Some(dp) = &local_dp {
            cfg.dp = Some(DpSgd {
                noise_multiplier: dp.noise_multiplier,
                clip: dp.clip,
            });
            cfg.validate()?;
        }
        let t0 = Instant::now();
        let mut model = self.build_model()?;
        let mut metrics = Metrics::new();
        if global_loss_requested(&ins.settings) {
            // q-FedAvg weighs stations by the received model's loss on
            // their data, before any local step.
            model.import_params(&ins.global)?;
            let nll =
                negative_log_likelihood(model.as_ref(), &self.splits.train, cfg.eval_batch_size)?;
            metrics.insert(GLOBAL_LOSS_KEY.to_string(), nll);
        }
        let mut trainer = Trainer::new(model, cfg)?;
        let update = trainer.fit_from(&ins.global, &self.splits.train, None)?;
        match (&local_dp, &update.report.dp) {
            (Some(dp), Some(spent)) => {
                // Only the update is private: the noise-free training loss
                // stays home, and the station reports its cumulative ε.
                let epsilon = self.charge(spent, dp.delta)?;
                metrics.insert(DP_EPSILON_METRIC.to_string(), epsilon);
                tracing::info!(
                    station = %self.name,
                    round = ins.round,
                    steps = spent.steps,
                    sampling_rate = spent.sampling_rate,
                    epsilon,
                    delta = dp.delta,
                    "DP-SGD round accounted"
                );
            }
            _ => {
                if let Some(kept) = update.report.kept() {
                    metrics.insert(LOSS_KEY.to_string(), kept.train_loss);
                }
            }
        }
        metrics.insert(EPOCHS_METRIC.to_string(), update.report.epochs.len() as f64);
        tracing::debug!(
            station = %self.name,
            examples = update.num_examples,
            loss = metrics.get(LOSS_KEY).copied(),
            seconds = t0.elapsed().as_secs_f64(),
            "local training done"
        );
        Ok(FitRes {
            params: Arc::new(update.params),
            num_examples: update.num_examples as u64,
            metrics,
        })
    }

    /// Adds a DP-SGD fit to this station's accountant; its ε at `delta` now.
    fn charge(&self, spent: &DpAccounting, delta: f64) -> Result<f64> {
        self.accountant.charge(
            spent.sampling_rate,
            spent.noise_multiplier,
            spent.steps as u64,
            delta,
        )
    }

    /// Scores a model on a local split: see [`Learner::evaluate`].
    pub fn evaluate(&self, ins: &EvaluateIns) -> Result<EvaluateRes> {
        let (split, ds) = match ins.config.get(SPLIT_KEY) {
            None => ("val", &self.splits.val),
            Some(ConfigValue::Str(s)) if s == "val" => ("val", &self.splits.val),
            Some(ConfigValue::Str(s)) if s == "test" => ("test", &self.splits.test),
            Some(ConfigValue::Str(s)) if s == "train" => ("train", &self.splits.train),
            Some(other) => {
                return Err(StationError::Setting {
                    key: SPLIT_KEY.into(),
                    reason: format!("{other:?} is not \"val\", \"test\" or \"train\""),
                })
            }
        };
        if ds.is_empty() {
            return Err(StationError::EmptySplit { split });
        }
        let batch = match ins.config.get(BATCH_SIZE_KEY) {
            Some(v) => positive_int(BATCH_SIZE_KEY, v)?,
            None => self.defaults.eval_batch_size,
        };
        let mut model = self.build_model()?;
        model.import_params(&ins.global)?;
        let eval = evaluate_model(model.as_ref(), ds, batch)?;
        let mut metrics = eval_summary(&eval).metrics;
        if let Some(v) = ins.config.get(EXPLAIN_KEY) {
            let rows = positive_int(EXPLAIN_KEY, v)?;
            let method = match ins.config.get(EXPLAIN_METHOD_KEY) {
                None => Method::Gradient,
                Some(ConfigValue::Str(m)) => m.parse().map_err(|reason| StationError::Setting {
                    key: EXPLAIN_METHOD_KEY.into(),
                    reason,
                })?,
                Some(other) => {
                    return Err(StationError::Setting {
                        key: EXPLAIN_METHOD_KEY.into(),
                        reason: format!("{other:?} is not a method name"),
                    })
                }
            };
            metrics.extend(self.explain(model.as_ref(), ds, rows, method)?);
        }
        if matches!(ins.config.get(FORECAST_KEY), Some(ConfigValue::Bool(true))) {
            metrics.extend(self.forecast(model.as_ref())?);
        }
        Ok(EvaluateRes {
            loss: eval.loss,
            num_examples: eval.n as u64,
            metrics,
        })
    }
}

impl Station {
    /// The summary of `model`'s explanation on `rows` samples of `ds` (one
    /// of this station's splits) against a background drawn from its
    /// training split, as metrics; gat-tcn's outputs folded per category.
    fn explain(
        &self,
        model: &dyn model::CrimeModel,
        ds: &Dataset,
        rows: usize,
        method: Method,
    ) -> Result<Vec<(String, f64)>> {
        let inputs = Inputs::of(ds);
        let x = inputs.rows(ds, &pick_rows(ds.len(), rows, 0));
        let train = &self.splits.train;
        let pool = inputs.rows(train, &pick_rows(train.len(), 5_000, 1));
        let background = Background::sample(&pool, inputs.dim(), EXPLAIN_BACKGROUND, 2);
        let cfg = ExplainConfig {
            method: Some(method),
            ..ExplainConfig::default()
        };
        let e = explain_rows(
            model,
            inputs,
            &feature_groups(model, ds),
            output_names(model, ds),
            &x,
            &background,
            &cfg,
            &mut |_| {},
        )?;
        let mut s = Summary::of(&e);
        if model.kind() == ModelKind::GatTcn {
            s = s.fold(|o| o.split_once('.').map_or(o, |p| p.1).to_string());
        }
        Ok(s.to_metrics())
    }
}

impl Learner for Station {
    fn fit(&self, ins: &FitIns) -> Result<FitRes> {
        Station::fit(self, ins)
    }

    fn evaluate(&self, ins: &EvaluateIns) -> Result<EvaluateRes> {
        Station::evaluate(self, ins)
    }
}

/// A model's scores on a split as the round engine takes them: the loss and
/// the task's finite scalar metrics (an undefined recall is left out).
pub fn eval_summary(e: &Evaluation) -> EvalSummary {
    EvalSummary {
        loss: Some(e.loss),
        metrics: e
            .metrics
            .scalars()
            .into_iter()
            .filter(|(_, v)| v.is_finite())
            .collect(),
        num_examples: e.n as u64,
    }
}

fn positive_int(key: &str, v: &ConfigValue) -> Result<usize> {
    match v.as_i64() {
        Some(i) if i >= 1 => usize::try_from(i).map_err(|_| StationError::Setting {
            key: key.into(),
            reason: format!("{i} is too large"),
        }),
        _ => Err(StationError::Setting {
            key: key.into(),
            reason: format!("{v:?} is not a positive integer"),
        }),
    }
}

/// The trainer settings of round `round` for a station with `samples`
/// training samples: `settings` (epochs, raised to reach the round's minimum
/// of optimizer steps, [`RoundSettings::local_epochs_for`]; batch size,
/// learning rate, weight decay, clipping, FedProx `mu`, and the seed moved by
/// the round, [`RoundSettings::seed_for_round`]) over the station's
/// `defaults` for the rest; early stopping and progress bars off. A setting
/// out of range is an error naming it.
pub fn train_config(
    settings: &RoundSettings,
    round: u64,
    samples: usize,
    defaults: &TrainConfig,
) -> Result<TrainConfig> {
    settings.validate().map_err(|e| StationError::Setting {
        key: e.field.to_string(),
        reason: e.reason,
    })?;
    let cfg = TrainConfig {
        epochs: settings.local_epochs_for(samples) as usize,
        batch_size: settings.batch_size as usize,
        lr: settings.lr,
        weight_decay: settings.weight_decay,
        max_grad_norm: settings.max_grad_norm,
        prox_mu: settings.proximal_mu,
        seed: settings.seed_for_round(round),
        patience: 0,
        progress: false,
        ..defaults.clone()
    };
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests;
