//! [`SimConfig`]: the typed description of one simulation, read from a TOML
//! file (`--config sim.toml`) and overridden by command-line flags.
//!
//! Every field has a default, so an empty file (or no file) is the default
//! study: the embedded LA-like synthetic data, task `risk`, model `dnn`, 21
//! stations split by LAPD area, FedAvg over QUIC, plus both centralized
//! baselines; every method trains until its validation score (macro-F1 for
//! risk, MAE for counts) has not improved for 10 rounds or epochs
//! ([`SelectionSettings`]) and is judged at its best validation step; each
//! station takes at least 20 optimizer steps per round (one epoch, or more
//! when it holds few samples). Setting `federation.rounds`,
//! `federation.local_epochs` or `centralized.epochs` gives exactly that
//! many. Settings that depend on
//! the machine (worker counts) may be left out and are filled in by
//! [`SimConfig::resolve`]; the resolved configuration is what `report.md`
//! and `sim.toml` in the output folder record, so a run can be replayed
//! exactly with `--config <out>/sim.toml`.
//!
//! ```toml
//! seed = 0
//! [data]
//! rows = 200000          # synthetic incidents when no file is given
//! task = "risk"
//! [model]
//! kind = "dnn"
//! [federation]
//! # rounds = 30         # unset: until validation stops improving
//! # local_epochs = 1    # unset: one epoch of at least min_local_steps steps
//! partition = "natural"  # natural | bureau | iid | dirichlet:ALPHA
//! transport = "quic"     # quic | memory
//! [federation.strategy]
//! name = "fedprox"
//! mu = 0.01
//! [train]
//! batch_size = 64
//! lr = 0.001
//! [centralized]
//! enabled = true
//! # epochs = 30         # unset: until validation stops improving
//! [selection]
//! patience = 10         # rounds or epochs without a better validation score
//! max_rounds = 300
//! max_epochs = 300
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use fedcrime_data::{Partition, Period, Task};
use fedcrime_fl::StrategyConfig;
use fedcrime_ml::model::ModelKind;
use fedcrime_ml::train::{ClassWeighting, FairGroups, FairTraining};
use fedcrime_ml::DeviceChoice;

/// A setting is missing, malformed or out of range.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a [`SimConfig`].
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A setting is out of range or inconsistent with another.
    #[error("invalid setting {field}: {reason}")]
    Invalid {
        /// The setting, as written in the file (`federation.rounds`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid<T>(field: &'static str, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        field,
        reason: reason.into(),
    })
}

/// How the server and the stations talk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A real server and one client per station, QUIC with mutual TLS on
    /// 127.0.0.1 (certificates generated into the output folder).
    #[default]
    Quic,
    /// No sockets: the round engine and the station logic driven directly,
    /// stations trained on a bounded worker pool (for scale).
    Memory,
}

impl Transport {
    /// The name used on the command line and in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Memory => "memory",
        }
    }
}

/// Where the incidents come from and which task is built from them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSettings {
    /// An LAPD export (.csv or .csv.gz); absent: the embedded synthetic data.
    pub file: Option<PathBuf>,
    /// Synthetic incidents to generate when no file is given (default 200,000).
    pub rows: usize,
    /// Days of synthetic data from 2023-01-01 (default 365).
    pub days: u32,
    /// Seed of the synthetic data (default 7).
    pub data_seed: u64,
    /// `risk` or `counts` (default `risk`).
    pub task: Task,
    /// The period of the `counts` task (default `day`).
    pub period: Period,
    /// Previous periods in the sequence view (default 4).
    pub lags: usize,
}

impl Default for DataSettings {
    fn default() -> Self {
        DataSettings {
            file: None,
            rows: 200_000,
            days: 365,
            data_seed: 7,
            task: Task::Risk,
            period: Period::Day,
            lags: 4,
        }
    }
}

/// The architecture every method trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// `dnn`, `lstm` or `gat-tcn` (default `dnn`). `gat-tcn` needs the
    /// counts task and the `bureau` partition: each bureau station trains it
    /// on its own areas' subgraph (boundaries to other bureaus dropped; only
    /// weights leave a station) and the global model is scored on all 21
    /// areas. Other partitions are refused: `natural` stations hold one area
    /// (no boundary, the attention would never train), `iid` and
    /// `dirichlet` stations scattered samples rather than series.
    pub kind: ModelKind,
    /// Hidden width (the architecture's default when absent).
    pub hidden: Option<usize>,
    /// Layers (the architecture's default when absent).
    pub layers: Option<usize>,
    /// Dropout probability (default 0). Dropout draws from libtorch's one
    /// process-wide generator, so with dropout stations train one at a time
    /// to keep runs reproducible.
    pub dropout: f64,
    /// Class weights of the risk cross-entropy, from the pooled training
    /// labels (default `balanced`; `sqrt` or `none`).
    pub class_weights: ClassWeighting,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            kind: ModelKind::Dnn,
            hidden: None,
            layers: None,
            dropout: 0.0,
            class_weights: ClassWeighting::Balanced,
        }
    }
}

/// The federated side of the study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationSettings {
    /// The aggregation strategy and its parameters (default FedAvg).
    pub strategy: StrategyConfig,
    /// Federated rounds: exactly this many when set; unset (the default):
    /// until the validation score has not improved for `selection.patience`
    /// rounds, at most `selection.max_rounds`.
    pub rounds: Option<u64>,
    /// Local epochs per round: exactly this many when set alone; unset (the
    /// default): one epoch of at least `min_local_steps` optimizer steps.
    pub local_epochs: Option<usize>,
    /// The least optimizer steps a station takes per round: a station with
    /// few samples trains more epochs (default 20 when `local_epochs` is
    /// unset, else 0).
    pub min_local_steps: Option<u32>,
    /// How samples are divided among stations: `natural` (one station per
    /// LAPD area, the default), `bureau`, `iid` or `dirichlet:ALPHA`.
    #[serde(with = "partition_text")]
    pub partition: Partition,
    /// Stations of `iid` and `dirichlet` partitions (default 21).
    pub stations: Option<usize>,
    /// Fraction of the stations sampled each round (default 1.0).
    pub fraction: f64,
    /// `quic` (default) or `memory`.
    pub transport: Transport,
    /// Stations training at the same time (default: the cores). libtorch's
    /// intra-op threads are divided among them.
    pub concurrency: Option<usize>,
    /// How long a round waits for updates, seconds (default 3600).
    pub round_deadline_s: f64,
    /// Where stations and the centralized baselines train (default `cpu`;
    /// `auto`, `cuda` or `cuda:N`: the data-parallel baseline then takes
    /// one CUDA device per replica).
    pub device: DeviceChoice,
    /// Secure aggregation (SecAgg+): `true`, or a table of its settings
    /// (`dropout_tolerance`, `clip_range`, `quantization_bits`,
    /// `neighbours`); default off.
    #[serde(
        with = "fedcrime_fl::secure::switch",
        skip_serializing_if = "Option::is_none"
    )]
    pub secure_aggregation: Option<fedcrime_fl::secure::SecAggConfig>,
    /// Probability that a station drops out of a round at a random stage of
    /// secure aggregation (a study of dropout recovery; default 0). Over
    /// QUIC the station closes its connection at that stage and reconnects.
    pub station_dropout: f64,
    /// Signed updates and the server's audit log (RFC 6962 Merkle tree,
    /// signed tree heads), as a deployment keeps them (default off in
    /// studies): for measuring their cost.
    pub audit: bool,
}

impl Default for FederationSettings {
    fn default() -> Self {
        FederationSettings {
            strategy: StrategyConfig::default(),
            rounds: None,
            local_epochs: None,
            min_local_steps: None,
            partition: Partition::Natural,
            stations: None,
            fraction: 1.0,
            transport: Transport::Quic,
            concurrency: None,
            round_deadline_s: 3600.0,
            device: DeviceChoice::Cpu,
            secure_aggregation: None,
            station_dropout: 0.0,
            audit: false,
        }
    }
}

/// Optimizer settings shared by every method (stations and centralized).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSettings {
    /// Samples per optimizer step (default 64).
    pub batch_size: usize,
    /// Adam's learning rate (default 0.001).
    pub lr: f64,
    /// Adam's weight decay (default 0).
    pub weight_decay: f64,
    /// Gradient clipping by global norm (default: none).
    pub max_grad_norm: Option<f64>,
    /// Samples per evaluation batch (default 4096).
    pub eval_batch_size: usize,
    /// Fairness-aware training of every method (stations and the
    /// single-worker centralized baseline): `none` (default), `reweigh`,
    /// `penalty:LAMBDA` or `penalty-eo:LAMBDA` (see
    /// `fedcrime_ml::train::fair_training`).
    pub fairness: FairTraining,
    /// The groups it equalizes: `bureau` (default) or `area`.
    pub fairness_groups: FairGroups,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            batch_size: 64,
            lr: 1e-3,
            weight_decay: 0.0,
            max_grad_norm: None,
            eval_batch_size: 4096,
            fairness: FairTraining::None,
            fairness_groups: FairGroups::Bureau,
        }
    }
}

/// The centralized baselines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CentralizedSettings {
    /// Run them (default true; `--no-centralized` for scale runs).
    pub enabled: bool,
    /// Replicas of the data-parallel baseline (default: the cores, at least 2).
    pub workers: Option<usize>,
    /// Epochs: exactly this many when set; unset (the default): until the
    /// validation score has not improved for `selection.patience` epochs, at
    /// most `selection.max_epochs` (or, when `federation.rounds` is set, as
    /// many passes over the data as the federation makes).
    pub epochs: Option<usize>,
}

impl Default for CentralizedSettings {
    fn default() -> Self {
        CentralizedSettings {
            enabled: true,
            workers: None,
            epochs: None,
        }
    }
}

/// Model selection, the same rule for every method: train until the
/// validation score (macro-F1 for risk, MAE for counts, on the pooled
/// validation split) has not improved for `patience` rounds or epochs, and
/// judge the method at its best validation step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectionSettings {
    /// Rounds or epochs without improvement before a method stops (default 10).
    pub patience: u64,
    /// The smallest change of the score that counts as an improvement (default 0).
    pub min_delta: f64,
    /// The cap of federated rounds when `federation.rounds` is unset (default 300).
    pub max_rounds: u64,
    /// The cap of centralized epochs when `centralized.epochs` is unset (default 300).
    pub max_epochs: usize,
}

impl Default for SelectionSettings {
    fn default() -> Self {
        SelectionSettings {
            patience: 10,
            min_delta: 0.0,
            max_rounds: 300,
            max_epochs: 300,
        }
    }
}

/// One simulation; see the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seeds the initial model, station sampling, partitions and local
    /// training (default 0).
    pub seed: u64,
    /// Data and task.
    pub data: DataSettings,
    /// Model.
    pub model: ModelSettings,
    /// Federation.
    pub federation: FederationSettings,
    /// Optimizer settings of every method.
    pub train: TrainSettings,
    /// Centralized baselines.
    pub centralized: CentralizedSettings,
    /// Early stopping and model selection.
    pub selection: SelectionSettings,
    /// Federated explanations of the best model.
    pub explain: ExplainSettings,
    /// Differential privacy of the federation (`[privacy]`, as in the
    /// server config; default off). Its noise is seeded from `seed` unless
    /// `privacy.seed` is set, so a study is reproducible.
    pub privacy: Option<fedcrime_fl::PrivacyConfig>,
}

/// Federated explanations (see [`super::explain`]): after the federation
/// every station explains the best model on its own test samples and sends
/// aggregates only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplainSettings {
    /// Test samples each station explains (default 0: no explanations).
    pub rows: usize,
    /// `gradient` (default: GradientSHAP, cheap on every model),
    /// `integrated-gradients`, `kernel` or `exact`.
    pub method: String,
    /// Score the best federated model on every station's own test samples
    /// and report the worst, median and best station (default true; skipped
    /// above 200 stations): whether any precinct is sacrificed for the
    /// average (what q-FedAvg is for).
    pub station_scores: bool,
}

impl Default for ExplainSettings {
    fn default() -> Self {
        ExplainSettings {
            rows: 0,
            method: "gradient".into(),
            station_scores: true,
        }
    }
}

/// Cores of this machine (at least 1).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl SimConfig {
    /// Reads a TOML file (unknown keys are errors).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str::<SimConfig>(text)
            .map(SimConfig::normalized)
            .map_err(|e| e.to_string().trim_end().to_string())
    }

    /// The station count of `federation.stations` applied to the partition
    /// (which its text form does not carry).
    fn normalized(mut self) -> Self {
        self.federation.partition = self.partition();
        self
    }

    /// The configuration as TOML (what `sim.toml` and `report.md` hold).
    pub fn to_toml(&self) -> String {
        // Plain data with string keys and no maps of non-string keys.
        toml::to_string(self).unwrap_or_else(|e| format!("# not representable as TOML: {e}\n"))
    }

    /// The partition with its station count applied.
    pub fn partition(&self) -> Partition {
        match self.federation.stations {
            Some(n) => self.federation.partition.clone().with_stations(n),
            None => self.federation.partition.clone(),
        }
    }

    /// Stations training at once: the setting, else the cores; 1 when the
    /// model draws random numbers while training (dropout), see
    /// [`ModelSettings::dropout`].
    pub fn concurrency(&self) -> usize {
        if self.model.dropout > 0.0 {
            return 1;
        }
        self.federation.concurrency.unwrap_or_else(cores).max(1)
    }

    /// Replicas of the data-parallel baseline.
    pub fn dp_workers(&self) -> usize {
        self.centralized.workers.unwrap_or_else(|| cores().max(2))
    }

    /// The federated rounds to run: `federation.rounds`, else the cap.
    pub fn max_rounds(&self) -> u64 {
        self.federation.rounds.unwrap_or(self.selection.max_rounds)
    }

    /// Whether the federation stops when validation stops improving
    /// (`federation.rounds` unset).
    pub fn federation_stops_early(&self) -> bool {
        self.federation.rounds.is_none()
    }

    /// `(local_epochs, min_local_steps)` of every round: see
    /// [`fedcrime_wire::local_work`].
    pub fn local_work(&self) -> (u32, u32) {
        let epochs = self
            .federation
            .local_epochs
            .map(|e| u32::try_from(e).unwrap_or(u32::MAX));
        fedcrime_wire::local_work(epochs, self.federation.min_local_steps)
    }

    /// The centralized baselines' epochs and early-stopping patience (0:
    /// none): `centralized.epochs` exactly; else, when `federation.rounds`
    /// is set, `passes` epochs (the federation's average passes over the
    /// data, at least one); else up to `selection.max_epochs`, stopping
    /// like the federation.
    pub fn centralized_epochs(&self, passes: f64) -> (usize, u64) {
        match (self.centralized.epochs, self.federation.rounds) {
            (Some(e), _) => (e, 0),
            (None, Some(_)) => ((passes.round() as usize).max(1), 0),
            (None, None) => (self.selection.max_epochs, self.selection.patience),
        }
    }

    /// Fills the machine-dependent settings, so that the configuration
    /// describes this run exactly.
    pub fn resolve(self) -> Self {
        let mut me = self.normalized();
        me.fill_machine_settings();
        me
    }

    fn fill_machine_settings(&mut self) {
        self.federation.concurrency = Some(self.concurrency());
        self.centralized.workers = Some(self.dp_workers());
        if matches!(
            self.federation.partition,
            Partition::Iid { .. } | Partition::Dirichlet { .. }
        ) {
            self.federation.stations = Some(self.partition().stations());
        }
    }

    /// Checks every setting's range, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = self.explain.method.parse::<fedcrime_ml::explain::Method>() {
            return invalid("explain.method", e);
        }
        let f = &self.federation;
        if let Some(p) = &self.privacy {
            if let Err((field, message)) = p.validate() {
                return invalid(field, message);
            }
            if p.mode == fedcrime_fl::DpMode::Central {
                if f.secure_aggregation.is_some() {
                    return invalid(
                        "privacy.mode",
                        "central DP clips each update at the server, which secure aggregation \
                         hides from it: use mode = \"local\" (DP-SGD at the stations)",
                    );
                }
                if let Ok(strategy) = f.strategy.build() {
                    if !strategy.mean_suffices() {
                        return invalid(
                            "privacy.mode",
                            format!(
                                "central DP noises the mean of the clipped updates, but strategy \
                                 {} does not aggregate a mean: use fedavg, fedprox, fedavgm, \
                                 fedadam, fedyogi or fedadagrad, or mode = \"local\"",
                                strategy.name()
                            ),
                        );
                    }
                }
            }
        }
        if let Some(secagg) = &f.secure_aggregation {
            if let Err(e) = secagg.validate() {
                return invalid("federation.secure_aggregation", e.to_string());
            }
            // Refused here, before any data is read (the engine refuses it too).
            if let Ok(strategy) = f.strategy.build() {
                if !strategy.mean_suffices() {
                    return invalid(
                        "federation.secure_aggregation",
                        format!(
                            "strategy {} needs every station's update, but with secure \
                             aggregation the server learns only their sum: use fedavg, fedprox, \
                             fedavgm, fedadam, fedyogi or fedadagrad",
                            strategy.name()
                        ),
                    );
                }
            }
        }
        if !(0.0..1.0).contains(&f.station_dropout) {
            return invalid(
                "federation.station_dropout",
                format!("{} is outside [0, 1)", f.station_dropout),
            );
        }
        if f.station_dropout > 0.0 && f.secure_aggregation.is_none() {
            return invalid(
                "federation.station_dropout",
                "simulates dropouts during secure aggregation: turn secure_aggregation on",
            );
        }
        let d = &self.data;
        if d.file.is_none() && d.rows == 0 {
            return invalid("data.rows", "must be at least 1");
        }
        if !(14..=36_500).contains(&d.days) {
            return invalid(
                "data.days",
                format!(
                    "{} is outside 14..=36500 (the features reach a week back)",
                    d.days
                ),
            );
        }
        if !(1..=64).contains(&d.lags) {
            return invalid("data.lags", format!("{} is outside 1..=64", d.lags));
        }
        let m = &self.model;
        if m.kind == ModelKind::GatTcn {
            if d.task != Task::Counts {
                return invalid(
                    "model.kind",
                    "gat-tcn predicts every area's category counts: use the counts task",
                );
            }
            match self.federation.partition {
                Partition::Bureau => {}
                Partition::Natural => {
                    return invalid(
                        "model.kind",
                        "gat-tcn needs stations holding several neighbouring areas: a natural \
                         station holds one area, a one-node graph without boundaries whose \
                         attention would never train; use the bureau partition",
                    )
                }
                Partition::Iid { .. } | Partition::Dirichlet { .. } => {
                    return invalid(
                        "model.kind",
                        format!(
                            "gat-tcn needs stations holding whole areas' count series; {} \
                             stations hold scattered (area, period) samples; use the bureau \
                             partition",
                            self.federation.partition
                        ),
                    )
                }
            }
        }
        if m.hidden == Some(0) {
            return invalid("model.hidden", "must be at least 1");
        }
        if m.layers == Some(0) {
            return invalid("model.layers", "must be at least 1");
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return invalid("model.dropout", format!("{} is outside [0, 1)", m.dropout));
        }
        let f = &self.federation;
        if f.rounds == Some(0) {
            return invalid("federation.rounds", "must be at least 1");
        }
        if f.local_epochs == Some(0) {
            return invalid("federation.local_epochs", "must be at least 1");
        }
        if f.min_local_steps.is_some_and(|m| m > 1_000_000) {
            return invalid("federation.min_local_steps", "must be at most 1000000");
        }
        let sel = &self.selection;
        if sel.patience == 0 {
            return invalid("selection.patience", "must be at least 1");
        }
        if !(sel.min_delta.is_finite() && sel.min_delta >= 0.0) {
            return invalid("selection.min_delta", "must be a non-negative number");
        }
        if sel.max_rounds == 0 {
            return invalid("selection.max_rounds", "must be at least 1");
        }
        if sel.max_epochs == 0 {
            return invalid("selection.max_epochs", "must be at least 1");
        }
        if self.centralized.epochs == Some(0) {
            return invalid("centralized.epochs", "must be at least 1");
        }
        if f.stations == Some(0) {
            return invalid("federation.stations", "must be at least 1");
        }
        if f.stations.is_some() && matches!(f.partition, Partition::Natural | Partition::Bureau) {
            return invalid(
                "federation.stations",
                format!(
                    "the {} partition has a fixed number of stations; stations applies to iid and dirichlet",
                    f.partition
                ),
            );
        }
        if !(f.fraction > 0.0 && f.fraction <= 1.0) {
            return invalid(
                "federation.fraction",
                format!("{} is outside (0, 1]", f.fraction),
            );
        }
        if f.concurrency == Some(0) {
            return invalid("federation.concurrency", "must be at least 1");
        }
        if !(f.round_deadline_s.is_finite() && f.round_deadline_s > 0.0) {
            return invalid("federation.round_deadline_s", "must be a positive number");
        }
        if let Err(e) = f.strategy.build() {
            return invalid("federation.strategy", e.to_string());
        }
        let t = &self.train;
        if t.batch_size == 0 {
            return invalid("train.batch_size", "must be at least 1");
        }
        if t.eval_batch_size == 0 {
            return invalid("train.eval_batch_size", "must be at least 1");
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return invalid("train.lr", format!("{} is not a positive number", t.lr));
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return invalid("train.weight_decay", "must be a non-negative number");
        }
        if t.max_grad_norm.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return invalid("train.max_grad_norm", "must be a positive number");
        }
        if self.centralized.workers == Some(0) {
            return invalid("centralized.workers", "must be at least 1");
        }
        Ok(())
    }
}

/// [`Partition`] as its text form (`natural`, `dirichlet:0.5`, ...) in files;
/// the station count lives in `federation.stations`.
mod partition_text {
    use fedcrime_data::Partition;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Partition, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&p.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Partition, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_study() {
        let c = SimConfig::from_toml("").unwrap();
        assert_eq!(c, SimConfig::default());
        assert_eq!(c.federation.rounds, None);
        assert_eq!(c.max_rounds(), 300);
        assert!(c.federation_stops_early());
        assert_eq!(c.local_work(), (1, 20));
        assert_eq!(c.federation.partition, Partition::Natural);
        assert_eq!(c.federation.transport, Transport::Quic);
        assert_eq!(c.model.kind, ModelKind::Dnn);
        assert_eq!(c.data.task, Task::Risk);
        assert_eq!(c.centralized_epochs(7.0), (300, 10));
        c.validate().unwrap();
    }

    #[test]
    fn explicit_rounds_and_epochs_are_honoured_exactly() {
        let c = SimConfig::from_toml("[federation]\nrounds = 30\nlocal_epochs = 5").unwrap();
        assert_eq!((c.max_rounds(), c.federation_stops_early()), (30, false));
        assert_eq!(
            c.local_work(),
            (5, 0),
            "epochs set alone: no minimum of steps"
        );
        // Centralized: the federation's passes, no early stopping.
        assert_eq!(c.centralized_epochs(150.4), (150, 0));
        let c = SimConfig::from_toml("[centralized]\nepochs = 12").unwrap();
        assert_eq!(c.centralized_epochs(7.0), (12, 0));
        assert!(c.federation_stops_early());
        let c = SimConfig::from_toml("[federation]\nmin_local_steps = 50").unwrap();
        assert_eq!(c.local_work(), (1, 50));
        let c = SimConfig::from_toml("[selection]\npatience = 3\nmax_epochs = 40").unwrap();
        assert_eq!(c.centralized_epochs(1.0), (40, 3));
    }

    #[test]
    fn the_example_file_is_the_default_study() {
        let text = include_str!("../../sim.example.toml");
        let c = SimConfig::from_toml(text).unwrap();
        assert_eq!(c, SimConfig::default());
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        let mut c = SimConfig::default();
        c.federation.partition = "dirichlet:0.5".parse().unwrap();
        c.federation.stations = Some(50);
        c.federation.strategy = "fedprox:mu=0.1".parse().unwrap();
        c.data.file = Some(PathBuf::from("/tmp/x.csv"));
        let c = c.resolve();
        let text = c.to_toml();
        let back = SimConfig::from_toml(&text).unwrap();
        assert_eq!(back, c, "{text}");
        assert_eq!(
            back.partition(),
            Partition::Dirichlet {
                alpha: 0.5,
                stations: 50
            }
        );
        assert!(text.contains("partition = \"dirichlet:0.5\""), "{text}");
    }

    #[test]
    fn bad_settings_name_their_field() {
        let err = |text: &str| SimConfig::from_toml(text).unwrap().validate().unwrap_err();
        for (text, field) in [
            ("[federation]\nrounds = 0", "federation.rounds"),
            ("[federation]\nlocal_epochs = 0", "federation.local_epochs"),
            ("[selection]\npatience = 0", "selection.patience"),
            ("[selection]\nmax_rounds = 0", "selection.max_rounds"),
            ("[centralized]\nepochs = 0", "centralized.epochs"),
            ("[federation]\nfraction = 1.5", "federation.fraction"),
            ("[federation]\nstations = 5", "federation.stations"),
            ("[model]\nkind = \"gat-tcn\"", "model.kind"),
            (
                "[data]\ntask = \"counts\"\n[model]\nkind = \"gat-tcn\"",
                "model.kind",
            ),
            (
                "[data]\ntask = \"counts\"\n[model]\nkind = \"gat-tcn\"\n[federation]\npartition = \"iid\"",
                "model.kind",
            ),
            ("[model]\ndropout = 1.0", "model.dropout"),
            ("[train]\nlr = -1.0", "train.lr"),
            (
                "[federation.strategy]\nname = \"fedtrimmedavg\"\nbeta = 0.7",
                "federation.strategy",
            ),
        ] {
            let e = err(text).to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        let e = SimConfig::from_toml("[federation]\nround = 3").unwrap_err();
        assert!(e.contains("round"), "{e}");
        let e = SimConfig::from_toml("[federation]\npartition = \"zipf\"").unwrap_err();
        assert!(e.contains("zipf"), "{e}");
    }

    #[test]
    fn dropout_forces_one_station_at_a_time() {
        let mut c = SimConfig::default();
        c.federation.concurrency = Some(8);
        assert_eq!(c.concurrency(), 8);
        c.model.dropout = 0.1;
        assert_eq!(c.concurrency(), 1);
    }
}
