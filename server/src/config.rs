//! [`ServerConfig`]: the typed form of `server.toml` and of the command-line
//! flags that override it. Every section has defaults except `[tls]`;
//! unknown keys are errors, and [`ServerConfig::validate`] names the first
//! bad setting by its path in the file (e.g. `federation.fraction_fit`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fedcrime_cli::config_file::{parse_toml, read_toml, ConfigFileError};
pub use fedcrime_cli::logging::{LogFormat, LogSection};
use fedcrime_data::{Period, SplitFractions, Task, TaskConfig};
use fedcrime_fl::{EngineConfig, FlError, PrivacyConfig, RoundSettings, StrategyConfig};
use fedcrime_ml::model::{CountLoss, ModelConfig, ModelError, ModelKind};
use fedcrime_net::{ServerTls, TransportSettings};
use fedcrime_wire::{local_work, Encoding, WireConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServerError};

/// The whole server configuration (see `server/server.example.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// UDP address to listen on (default `0.0.0.0:4433`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Name of the run, shown to stations and in logs (default: derived from the seed).
    #[serde(default)]
    pub run_id: Option<String>,
    /// Continue after the last checkpointed round instead of starting afresh.
    #[serde(default)]
    pub resume: bool,
    /// Start afresh even when `output.dir` holds another run's files, which
    /// are then replaced (without it such a start is refused).
    #[serde(default)]
    pub force: bool,
    /// After the run ends, how long (seconds) the server stays up to tell
    /// stations that took part but are away (restarting, reconnecting) that
    /// the run is over, so they stop instead of retrying (default 30; the
    /// wait ends as soon as every such station was told).
    #[serde(default = "default_linger_s")]
    pub linger_s: f64,
    /// CA, server certificate and key, revocation list.
    pub tls: ServerTls,
    /// The prediction task.
    #[serde(default)]
    pub task: TaskSection,
    /// The model architecture.
    #[serde(default)]
    pub model: ModelSection,
    /// Rounds, sampling, deadlines, retries, evaluation cadence, seed.
    #[serde(default)]
    pub federation: EngineConfig,
    /// How stations train each round.
    #[serde(default)]
    pub train: TrainSection,
    /// The aggregation strategy and its parameters.
    #[serde(default)]
    pub strategy: StrategyConfig,
    /// Server-side evaluation on held-out data.
    #[serde(default)]
    pub evaluation: Option<EvaluationSection>,
    /// Model and update encodings, frame limits.
    #[serde(default)]
    pub wire: WireSection,
    /// QUIC settings (keep-alive, idle timeout, windows).
    #[serde(default)]
    pub transport: TransportSettings,
    /// Where metrics, checkpoints and the final model go.
    #[serde(default)]
    pub output: OutputSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// The live web dashboard (off unless set).
    #[serde(default)]
    pub dashboard: Option<crate::dashboard::DashboardSection>,
    /// Differential privacy: DP-FedAvg at the server (`mode = "central"`)
    /// or DP-SGD at the stations (`mode = "local"`); off unless set.
    #[serde(default)]
    pub privacy: Option<PrivacyConfig>,
    /// The tamper-evident audit log and signed updates (on by default).
    #[serde(default)]
    pub audit: AuditSection,
}

/// `[audit]`: the server's append-only Merkle-tree log of what it did
/// (rounds, each update accepted or refused with its hash and signature,
/// aggregates, checkpoints), with an Ed25519-signed tree head after each
/// round that stations keep; and whether updates must be signed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSection {
    /// Keep the log (default true).
    pub enabled: bool,
    /// Its folder (default `<output.dir>/audit`).
    pub dir: Option<PathBuf>,
    /// The key that signs tree heads (default `audit.key` beside `tls.ca`,
    /// made by `fedcrime-certs init`).
    pub key: Option<PathBuf>,
    /// Refuse updates that come without a valid signature by the key the
    /// station's certificate binds (default true). Off, a station whose
    /// certificate binds a key must still sign; others may send unsigned.
    pub require_signed_updates: bool,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            enabled: true,
            dir: None,
            key: None,
            require_signed_updates: true,
        }
    }
}

fn default_linger_s() -> f64 {
    30.0
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4433))
}

/// `[task]`: what the federation learns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSection {
    /// `risk` (default) or `counts`.
    pub task: Task,
    /// `day` (default) or `week`, for `counts`.
    pub period: Period,
    /// Previous periods in the inputs (default 4).
    pub lags: usize,
    /// The temporal train/validation/test fractions (default 0.7/0.15/0.15).
    pub split: SplitFractions,
    /// A featurizer (`featurizer.json` from `fedcrime-sim features`) every
    /// station applies. Default: the one fit on the evaluation data when
    /// there is some, else none (each station fits its own).
    pub featurizer: Option<PathBuf>,
}

impl Default for TaskSection {
    fn default() -> Self {
        let t = TaskConfig::default();
        TaskSection {
            task: t.task,
            period: t.period,
            lags: t.lags,
            split: t.split,
            featurizer: None,
        }
    }
}

impl TaskSection {
    /// The data pipeline's task configuration.
    pub fn task_config(&self) -> TaskConfig {
        TaskConfig {
            task: self.task,
            period: self.period,
            lags: self.lags,
            split: self.split,
        }
    }
}

/// `[model]`: the architecture; unset widths take the kind's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// `dnn` (default) or `lstm`.
    pub kind: ModelKind,
    /// Hidden width.
    pub hidden: Option<usize>,
    /// Depth.
    pub layers: Option<usize>,
    /// Dropout probability.
    pub dropout: Option<f64>,
    /// `counts` loss: `poisson` or `mse`.
    pub count_loss: Option<CountLoss>,
    /// LSTM: the head also sees the flat features.
    pub static_features: Option<bool>,
    /// Start from this saved model (`.safetensors`, tensors matched by name)
    /// instead of a fresh one built with `federation.seed`.
    pub initial: Option<PathBuf>,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            kind: ModelKind::Dnn,
            hidden: None,
            layers: None,
            dropout: None,
            count_loss: None,
            static_features: None,
            initial: None,
        }
    }
}

/// `[train]`: what stations are told to do each round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// Local epochs per round. Unset (the default), with `min_local_steps`
    /// unset too: one epoch of at least 20 optimizer steps
    /// ([`fedcrime_wire::DEFAULT_MIN_LOCAL_STEPS`]: a station with few samples trains more
    /// epochs). Set alone: exactly that many epochs.
    pub epochs: Option<u32>,
    /// The least optimizer steps a station takes per round (see `epochs`;
    /// 0: exactly `epochs`).
    pub min_local_steps: Option<u32>,
    /// Mini-batch size (default 64).
    pub batch_size: u32,
    /// Adam's learning rate (default 1e-3).
    pub lr: f64,
    /// Adam's weight decay (default 0).
    pub weight_decay: f64,
    /// Gradient clipping by global norm (default none).
    pub max_grad_norm: Option<f64>,
}

impl Default for TrainSection {
    fn default() -> Self {
        let s = RoundSettings::default();
        TrainSection {
            epochs: None,
            min_local_steps: None,
            ..TrainSection::from(&s)
        }
    }
}

impl From<&RoundSettings> for TrainSection {
    /// Exactly these settings (epochs and minimum of steps set).
    fn from(s: &RoundSettings) -> Self {
        TrainSection {
            epochs: Some(s.local_epochs),
            min_local_steps: Some(s.min_local_steps()),
            batch_size: s.batch_size,
            lr: s.lr,
            weight_decay: s.weight_decay,
            max_grad_norm: s.max_grad_norm,
        }
    }
}

impl TrainSection {
    /// The round settings this section describes (the engine adds the run's
    /// seed, the strategy its own settings).
    pub fn round_settings(&self) -> RoundSettings {
        let (local_epochs, min_steps) = local_work(self.epochs, self.min_local_steps);
        let mut s = RoundSettings {
            local_epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            ..RoundSettings::default()
        };
        s.set_min_local_steps(min_steps);
        s
    }
}

/// Which split of the evaluation data the server scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalSplit {
    /// The validation window.
    Val,
    /// The test window (default).
    #[default]
    Test,
}

/// `[evaluation]`: the server's held-out data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSection {
    /// A LAPD export (`.csv` or `.csv.gz`).
    pub data: PathBuf,
    /// Which temporal split to score (default `test`).
    #[serde(default)]
    pub split: EvalSplit,
    /// Samples per evaluation batch (default 4096).
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
}

fn default_eval_batch() -> usize {
    4096
}

/// `[wire]`: encodings and limits of the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WireSection {
    /// Encoding of the global model sent to stations: `f32` (default), `f16`, `int8`.
    #[serde(with = "encoding_name")]
    pub model_encoding: Encoding,
    /// Encoding stations send updates in (default `f32`).
    #[serde(with = "encoding_name")]
    pub update_encoding: Encoding,
    /// Stations send `trained - global` instead of the trained model (default false);
    /// with `f16`/`int8` this loses far less than quantizing the weights.
    pub send_delta: bool,
    /// Largest frame accepted, bytes (default 16 MiB).
    pub max_frame_bytes: u32,
    /// Tensor data frame size, bytes (default 1 MiB).
    pub chunk_bytes: u32,
}

impl Default for WireSection {
    fn default() -> Self {
        let w = WireConfig::default();
        WireSection {
            model_encoding: Encoding::F32,
            update_encoding: Encoding::F32,
            send_delta: false,
            max_frame_bytes: w.max_frame_bytes,
            chunk_bytes: w.chunk_bytes,
        }
    }
}

mod encoding_name {
    use fedcrime_wire::Encoding;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(e: &Encoding, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(e.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Encoding, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `[output]`: where results go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSection {
    /// `metrics.csv`, `metrics.jsonl` and the final `model.safetensors` (default `runs/server`).
    pub dir: PathBuf,
    /// Checkpoints (default `<dir>/checkpoints`).
    pub checkpoint_dir: Option<PathBuf>,
    /// Round checkpoints kept (default 3).
    pub keep_checkpoints: usize,
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            dir: PathBuf::from("runs/server"),
            checkpoint_dir: None,
            keep_checkpoints: 3,
        }
    }
}

impl OutputSection {
    /// The checkpoint folder.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoint_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("checkpoints"))
    }
}

fn config_err(field: impl Into<String>, message: impl Into<String>) -> ServerError {
    ConfigFileError::setting(field, message).into()
}

impl ServerConfig {
    /// A configuration with every default, using the PKI files of `tls`.
    pub fn new(tls: ServerTls) -> Self {
        ServerConfig {
            listen: default_listen(),
            run_id: None,
            resume: false,
            force: false,
            linger_s: default_linger_s(),
            tls,
            task: TaskSection::default(),
            model: ModelSection::default(),
            federation: EngineConfig::default(),
            train: TrainSection::default(),
            strategy: StrategyConfig::default(),
            evaluation: None,
            wire: WireSection::default(),
            transport: TransportSettings::default(),
            output: OutputSection::default(),
            log: LogSection::default(),
            dashboard: None,
            privacy: None,
            audit: AuditSection::default(),
        }
    }

    /// The audit log's folder.
    pub fn audit_dir(&self) -> PathBuf {
        self.audit
            .dir
            .clone()
            .unwrap_or_else(|| self.output.dir.join("audit"))
    }

    /// The audit key file.
    pub fn audit_key(&self) -> PathBuf {
        self.audit.key.clone().unwrap_or_else(|| {
            self.tls
                .ca
                .parent()
                .unwrap_or(Path::new("."))
                .join("audit.key")
        })
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        Ok(parse_toml(text, origin)?)
    }

    /// Reads a TOML file; relative paths in it are taken relative to the
    /// file's folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut cfg: Self = read_toml(path)?;
        if let Some(base) = path.parent() {
            cfg.resolve_paths(base);
        }
        Ok(cfg)
    }

    /// Makes every relative path absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.tls.ca);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        if let Some(c) = &mut self.tls.crl {
            fix(c);
        }
        if let Some(f) = &mut self.task.featurizer {
            fix(f);
        }
        if let Some(f) = &mut self.model.initial {
            fix(f);
        }
        if let Some(e) = &mut self.evaluation {
            fix(&mut e.data);
        }
        fix(&mut self.output.dir);
        if let Some(c) = &mut self.output.checkpoint_dir {
            fix(c);
        }
        if let Some(d) = &mut self.dashboard {
            d.resolve_paths(base);
        }
        if let Some(d) = &mut self.audit.dir {
            fix(d);
        }
        if let Some(k) = &mut self.audit.key {
            fix(k);
        }
    }

    /// The run's name.
    pub fn run_id(&self) -> String {
        self.run_id
            .clone()
            .unwrap_or_else(|| format!("fedcrime-{}", self.federation.seed))
    }

    /// The model architecture (the server adds the target prior of its
    /// evaluation data, when it has some).
    pub fn model_config(&self) -> Result<ModelConfig> {
        let model_err = |e: ModelError| match e {
            ModelError::Config { field, reason } => config_err(format!("model.{field}"), reason),
            other => ServerError::Model(other),
        };
        let mut cfg = fedcrime_station::model_config(self.model.kind, &self.task.task_config())
            .map_err(|e| config_err("model.kind", e.to_string()))?;
        let m = &self.model;
        if let Some(h) = m.hidden {
            cfg.hidden = h;
        }
        if let Some(l) = m.layers {
            cfg.layers = l;
        }
        if let Some(d) = m.dropout {
            cfg.dropout = d;
        }
        if let Some(c) = m.count_loss {
            cfg.count_loss = c;
        }
        if let Some(s) = m.static_features {
            cfg.static_features = s;
        }
        cfg.validate().map_err(model_err)?;
        Ok(cfg)
    }

    /// The engine settings: `[federation]` with the `[train]` section as
    /// the round settings.
    pub fn engine_config(&self) -> EngineConfig {
        let mut cfg = EngineConfig {
            train: self.train.round_settings(),
            privacy: self.privacy.clone(),
            audit: self.audit.enabled,
            ..self.federation.clone()
        };
        if self.dashboard.is_some() {
            // The map: stations forecast their areas' next period.
            cfg.evaluate_config
                .entry(fedcrime_station::FORECAST_KEY.to_string())
                .or_insert(fedcrime_fl::ConfigValue::Bool(true));
        }
        cfg
    }

    /// The wire limits the server reads with.
    pub fn wire_config(&self) -> WireConfig {
        WireConfig {
            max_frame_bytes: self.wire.max_frame_bytes,
            chunk_bytes: self.wire.chunk_bytes,
            ..WireConfig::default()
        }
    }

    /// Checks every section, naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        self.engine_config().validate().map_err(|e| match e {
            FlError::Config { field, message } if field.starts_with("privacy.") => {
                config_err(field, message)
            }
            FlError::Config { field, message } => {
                config_err(format!("federation.{field}"), message)
            }
            other => ServerError::Fl(other),
        })?;
        self.strategy.build().map_err(|e| match e {
            FlError::Config { field, message } => {
                let field = field
                    .strip_prefix("strategy.")
                    .unwrap_or(&field)
                    .to_string();
                config_err(format!("strategy.{field}"), message)
            }
            other => config_err("strategy", other.to_string()),
        })?;
        self.task
            .task_config()
            .validate()
            .map_err(|e| config_err("task", e.to_string()))?;
        if !(self.linger_s.is_finite() && (0.0..=3600.0).contains(&self.linger_s)) {
            return Err(config_err(
                "linger_s",
                format!("{} must be between 0 and 3600 seconds", self.linger_s),
            ));
        }
        self.model_config()?;
        self.train.round_settings().validate().map_err(|e| {
            let field = match e.field {
                "local_epochs" => "epochs",
                other => other,
            };
            config_err(format!("train.{field}"), e.reason)
        })?;
        if let Some(e) = &self.evaluation {
            if e.batch_size == 0 {
                return Err(config_err("evaluation.batch_size", "must be at least 1"));
            }
        }
        let w = &self.wire;
        if w.max_frame_bytes < 4096 {
            return Err(config_err(
                "wire.max_frame_bytes",
                format!("{} is below the 4096-byte minimum", w.max_frame_bytes),
            ));
        }
        if w.chunk_bytes < 4 || w.chunk_bytes > w.max_frame_bytes {
            return Err(config_err(
                "wire.chunk_bytes",
                format!("must be in 4..=max_frame_bytes, got {}", w.chunk_bytes),
            ));
        }
        self.transport.validate().map_err(|e| match e {
            fedcrime_net::NetError::Settings { field, reason } => {
                config_err(format!("transport.{field}"), reason)
            }
            other => ServerError::Net(other),
        })?;
        if self.output.keep_checkpoints == 0 {
            return Err(config_err("output.keep_checkpoints", "must be at least 1"));
        }
        for (field, p) in [
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ] {
            if p.as_os_str().is_empty() {
                return Err(config_err(field, "is empty"));
            }
        }
        Ok(())
    }
}
