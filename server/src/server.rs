//! The QUIC driver of the round engine.
//!
//! One task owns the [`Engine`] and everything it decides; it selects over
//! new connections, messages from the sessions, the engine's timer and the
//! shutdown signal. Events go into the engine with the current time; the
//! engine's actions come out and are carried out here: models are encoded
//! once per round and the same bytes queued to every sampled station,
//! finished rounds are appended to the metrics files and checkpoints are
//! written in order by a persistence thread (off the round's critical path;
//! the run waits for them before it returns), and at the end every station
//! gets a Bye.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fedcrime_cli::config_file::ConfigFileError;
use fedcrime_data::{load_path, Dataset, Featurizer, TaskConfig};
use fedcrime_fl::strategy::WithServerEval;
use fedcrime_fl::{
    decode_update, Action, Admission, Checkpoint, CheckpointStore, Config, Engine, EvalSummary,
    EvaluateRes, Event, FitRes, Metrics as FlMetrics, Outcome, RoundMetrics, RoundSettings,
    StationId, Strategy, Summary,
};
use fedcrime_ml::model::{self, ModelConfig, ModelKind};
use fedcrime_ml::train::trainer::evaluate_model;
use fedcrime_net::{CloseCode, EndpointSecret, Listener, ListenerStats};
use fedcrime_params::{ParamSpec, Params};
use fedcrime_station::data::{prepare, prepare_for, Selection};
use fedcrime_station::protocol::{eval_config_to_wire, round_start, RunSetup, UpdateDelivery};
use fedcrime_wire::{
    Bye, ByeReason, ErrorCode, EvalModel, EvaluateRequest, Message, ModelHeader, Reject,
    RejectCode, ServerLimits, WireConfig,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{EvalSplit, ServerConfig};
use crate::dashboard::{Board, RunInfo};
use crate::error::{Result, ServerError};
use crate::metrics::{MetricsWriter, RoundRecord};
use crate::session::{self, encode, FromSession, Outgoing, SessionCtx, UpdateBuffers};

/// The run's model in the output folder: the best validation round's with
/// early stopping, else the last round's.
pub const FINAL_MODEL: &str = "model.safetensors";
/// With early stopping, the best round's model, rewritten at every new best.
pub const BEST_MODEL: &str = "model-best.safetensors";
/// With early stopping, the last round's model.
pub const LAST_MODEL: &str = "model-last.safetensors";

/// The file in the output folder that keeps the QUIC endpoint's secret, so
/// that a restarted server resets its stations' old connections at once.
pub const ENDPOINT_SECRET: &str = "endpoint.secret";

/// How long stations get to receive their Bye before the endpoint closes.
const BYE_GRACE: Duration = Duration::from_secs(3);

/// Where a run stands, published after every change (see [`Server::progress`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// The round in progress (one past the last after the run).
    pub round: u64,
    /// The last round whose checkpoint is on disk.
    pub checkpointed: u64,
    /// Stations connected now.
    pub connected: usize,
    /// Whether the run is over.
    pub finished: bool,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The engine's summary (completed or aborted, rounds completed).
    pub summary: Summary,
    /// Every completed round, including rounds before a resume.
    pub history: Vec<RoundMetrics>,
    /// The final global model.
    pub global: Arc<Params>,
    /// The model's architecture.
    pub model: ModelConfig,
    /// The metrics CSV.
    pub metrics_csv: PathBuf,
    /// Connection counters.
    pub listener: ListenerStats,
    /// Whether the run was stopped by the shutdown signal.
    pub interrupted: bool,
}

impl RunReport {
    /// Whether every round completed.
    pub fn completed(&self) -> bool {
        self.summary.outcome == Outcome::Completed
    }
}

/// What the driver last asked a station, to attribute its error reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Fit(u64),
    Evaluate(u64),
}

struct SessionHandle {
    id: u64,
    /// The station process's instance number from its Hello.
    instance: Option<u64>,
    connection: quinn::Connection,
    outbox: mpsc::Sender<Outgoing>,
    last_request: Option<Request>,
    since: Instant,
}

/// What to do with a Hello of a station that already has a session.
#[derive(Debug, PartialEq, Eq)]
enum Duplicate {
    /// The old session is over (its connection closed or timed out), or the
    /// same process reconnects: the new connection takes its place.
    Replace(&'static str),
    /// Another live process holds the identity: the newcomer is refused.
    Refuse,
}

/// The one rule for two connections of one station: the session whose
/// connection is alive keeps the identity. A connection is alive until it
/// closes or stays silent for the transport's idle timeout (5 s by default;
/// both sides send keep-alives every second), so a station restarted after
/// a crash is admitted at most that long after its old process died, while
/// a second process holding a copied certificate is refused for as long as
/// the first one runs: the two never take turns, and the run goes on with
/// the first. A process that reconnects (same instance number) replaces its
/// own old connection at once.
fn on_duplicate(
    old_alive: bool,
    old_instance: Option<u64>,
    new_instance: Option<u64>,
) -> Duplicate {
    if !old_alive {
        Duplicate::Replace("its old connection is gone")
    } else if old_instance.is_some() && old_instance == new_instance {
        Duplicate::Replace("the same station process reconnected")
    } else {
        Duplicate::Refuse
    }
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    config: ServerConfig,
    model: ModelConfig,
    engine: Engine,
    listener: Listener,
    ctx: Arc<SessionCtx>,
    store: CheckpointStore,
    metrics: MetricsWriter,
    progress: watch::Sender<Progress>,
    board: Option<Arc<Board>>,
    /// The shared featurizer as JSON, saved with the models so a station
    /// can serve them (`fedcrime-client serve --model`).
    featurizer_json: Option<String>,
    /// The tamper-evident audit log (`[audit]`).
    audit: Option<fedcrime_audit::AuditLog>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("engine", &self.engine)
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// Runs `f`, letting the runtime move other tasks off this thread when it
/// can (aggregation and server-side evaluation are CPU work).
fn cpu<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The server's held-out data and how to score a model on it.
/// The model is built once: building draws initial weights from libtorch's
/// one generator, which stations in the same process (the simulator) use for
/// dropout.
struct ServerEval {
    model: Box<dyn model::CrimeModel>,
    data: Dataset,
    batch_size: usize,
}

impl ServerEval {
    fn evaluate(&mut self, round: u64, global: &Params) -> Option<EvalSummary> {
        let outcome = (|| -> std::result::Result<EvalSummary, String> {
            let m = &mut self.model;
            m.import_params(global).map_err(|e| e.to_string())?;
            let e = evaluate_model(m.as_ref(), &self.data, self.batch_size)
                .map_err(|e| e.to_string())?;
            Ok(fedcrime_station::eval_summary(&e))
        })();
        match outcome {
            Ok(s) => {
                tracing::info!(
                    round,
                    loss = s.loss,
                    examples = s.num_examples,
                    "server-side evaluation"
                );
                Some(s)
            }
            Err(e) => {
                tracing::error!(round, "server-side evaluation failed: {e}");
                None
            }
        }
    }
}

/// Sets up a [`Server`]: the config, and optionally the initial model and
/// the shared featurizer as values (the one-machine simulator hands over
/// what it already holds instead of writing files for the server to read).
pub struct ServerBuilder {
    config: ServerConfig,
    initial: Option<Params>,
    featurizer: Option<Featurizer>,
    evaluator: Option<Evaluator>,
    board: Option<Arc<Board>>,
}

/// A server-side evaluation the embedding program owns: `(round, global)`
/// to the global model's scores on data it holds.
pub type Evaluator = Box<dyn FnMut(u64, &Params) -> Option<EvalSummary> + Send>;

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("initial", &self.initial.as_ref().map(|p| p.spec().total()))
            .field("featurizer", &self.featurizer.is_some())
            .field("evaluator", &self.evaluator.is_some())
            .finish()
    }
}

impl ServerBuilder {
    /// Start from these parameters (matched by tensor name against the
    /// configured architecture) instead of `model.initial` or a freshly
    /// seeded model.
    pub fn initial(mut self, params: Params) -> Self {
        self.initial = Some(params);
        self
    }

    /// Share this featurizer instead of `task.featurizer` or one fitted on
    /// the evaluation data.
    pub fn featurizer(mut self, featurizer: Featurizer) -> Self {
        self.featurizer = Some(featurizer);
        self
    }

    /// Score the global model with `evaluate` after every evaluation round
    /// (in place of an `[evaluation]` data file): what early stopping
    /// watches when the embedding program holds the validation split.
    pub fn evaluator(mut self, evaluate: Evaluator) -> Self {
        self.evaluator = Some(evaluate);
        self
    }

    /// Show the run on `board` (the embedding program serves it, e.g. the
    /// simulator's `--dashboard`), in place of one made for `[dashboard]`.
    pub fn board(mut self, board: Arc<Board>) -> Self {
        self.board = Some(board);
        self
    }

    /// Validates the config, prepares the run (featurizer, initial model or
    /// the checkpoint to resume, strategy, metrics files) and binds the
    /// listener. Must be called inside a tokio runtime.
    pub async fn bind(self) -> Result<Server> {
        let ServerBuilder {
            config,
            initial,
            featurizer,
            evaluator,
            board: given_board,
        } = self;
        config.validate()?;
        if config.federation.early_stopping.is_some()
            && config.evaluation.is_none()
            && evaluator.is_none()
            && config.federation.fraction_evaluate <= 0.0
        {
            return Err(ServerError::from(ConfigFileError::setting(
                "federation.early_stopping",
                "needs a validation score: server-side evaluation ([evaluation]) or federated \
                 evaluation (federation.fraction_evaluate > 0)",
            )));
        }
        let task = config.task.task_config();
        let (setup_task, time_unit) = (
            task.task,
            fedcrime_data::tasks::TimeUnit::of(task.task, task.period),
        );
        let mut model = config.model_config()?;
        let mut featurizer = match (featurizer, &config.task.featurizer) {
            (Some(f), _) => Some(f),
            (None, Some(path)) => Some(Featurizer::load_json(path)?),
            (None, None) => None,
        };
        let eval = load_evaluation(&config, &task, &mut model, &mut featurizer)?;
        if featurizer.is_none() {
            tracing::warn!(
                "no shared featurizer (task.featurizer or evaluation data): every station fits \
                 its own scalers and risk levels"
            );
        }
        let initial = initial_params(&config, &model, initial)?;
        let spec = initial.spec().clone();
        let mut strategy: Box<dyn Strategy> = config.strategy.build()?;
        if let Some(mut e) = evaluator {
            strategy = Box::new(WithServerEval::new(
                strategy,
                move |round, global: &Params| e(round, global),
            ));
        } else if let Some(mut e) = eval {
            strategy = Box::new(WithServerEval::new(
                strategy,
                move |round, global: &Params| e.evaluate(round, global),
            ));
        }
        let (engine, store) = start_engine(&config, strategy, initial)?;
        let setup = RunSetup {
            model: model.clone(),
            task,
            featurizer,
        };
        let ctx = Arc::new(session_ctx(&config, &setup, &spec)?);
        let featurizer_json = setup
            .featurizer
            .as_ref()
            .and_then(|f| serde_json::to_string(f).ok());
        // TLS material and the port first: a start that fails on them
        // writes no output file.
        let secret_path = config.output.dir.join(ENDPOINT_SECRET);
        let kept_secret = EndpointSecret::load(&secret_path)?;
        let secret = kept_secret.clone().unwrap_or_else(EndpointSecret::random);
        let listener =
            Listener::bind_with_secret(config.listen, &config.tls, &config.transport, &secret)?;
        check_output(&config)?;
        let audit = open_audit_log(&config, &engine)?;
        let metrics = MetricsWriter::open(
            &config.output.dir,
            model.task,
            model.output_dim,
            engine.history(),
        )?;
        if kept_secret.is_none() {
            secret.save(&secret_path)?;
        }
        let (progress, _) = watch::channel(Progress {
            round: engine.round(),
            checkpointed: engine.history().last().map_or(0, |m| m.round),
            connected: 0,
            finished: false,
        });
        tracing::info!(
            addr = %listener.local_addr()?,
            run = %ctx.admission.run_id,
            rounds = engine.config().rounds,
            strategy = engine.strategy_name(),
            model = %model.kind,
            params = spec.total(),
            "server ready"
        );
        let board = match (&config.dashboard, given_board) {
            (_, Some(b)) => Some(b),
            (Some(d), None) => {
                d.token()?;
                let mut run = RunInfo::for_task(setup_task);
                run.id = ctx.admission.run_id.clone();
                run.source = "fedcrime-server".into();
                run.model = model.kind.to_string();
                run.strategy = engine.strategy_name().to_string();
                // With early stopping, `rounds` is only a cap.
                run.rounds = engine
                    .config()
                    .early_stopping
                    .is_none()
                    .then(|| engine.config().rounds);
                run.time_unit = Some(time_unit);
                let board = Board::new(run);
                board.load_history(engine.history());
                Some(Arc::new(board))
            }
            (None, None) => None,
        };
        Ok(Server {
            config,
            model,
            engine,
            listener,
            ctx,
            store,
            metrics,
            progress,
            board,
            featurizer_json,
            audit,
        })
    }
}

/// The server's held-out data (`[evaluation]`), when configured: loaded,
/// featurized with the shared featurizer (fitted here when there is none
/// yet), and the model's target prior set from its training window.
fn load_evaluation(
    config: &ServerConfig,
    task: &TaskConfig,
    model: &mut ModelConfig,
    featurizer: &mut Option<Featurizer>,
) -> Result<Option<ServerEval>> {
    let Some(e) = &config.evaluation else {
        return Ok(None);
    };
    let loaded = cpu(|| load_path(&e.data))?;
    tracing::info!(
        path = %e.data.display(),
        incidents = loaded.incidents.len(),
        "loaded the evaluation data"
    );
    if featurizer.is_none() {
        let built = cpu(|| fedcrime_data::build_task(&loaded.incidents, task))?;
        *featurizer = Some(built.featurizer);
    }
    if model.kind == ModelKind::GatTcn {
        // The graph model scores the evaluation data's own area graph with
        // the run's weights (their layout does not depend on the graph).
        let (splits, local) =
            cpu(|| prepare_for(model, &loaded.incidents, task, None, &Selection::All))?;
        let data = match e.split {
            EvalSplit::Val => splits.val,
            EvalSplit::Test => splits.test,
        };
        fedcrime_station::check_dataset(&local, &data, "evaluation")?;
        return Ok(Some(ServerEval {
            model: cpu(|| model::build(&local, tch::Device::Cpu))?,
            data,
            batch_size: e.batch_size,
        }));
    }
    let splits = cpu(|| {
        prepare(
            &loaded.incidents,
            task,
            featurizer.as_ref(),
            &Selection::All,
        )
    })?;
    // The output layer starts at the evaluation window's rates (and, for the
    // LSTM on counts, at each area's own rate).
    let derived = ModelConfig::for_dataset(model.kind, &splits.train);
    model.target_prior = derived.target_prior;
    model.area_prior = derived.area_prior;
    let data = match e.split {
        EvalSplit::Val => splits.val,
        EvalSplit::Test => splits.test,
    };
    fedcrime_station::check_dataset(model, &data, "evaluation")?;
    Ok(Some(ServerEval {
        model: cpu(|| model::build(model, tch::Device::Cpu))?,
        data,
        batch_size: e.batch_size,
    }))
}

/// The initial model: the architecture built with the run's seed, then
/// `given` parameters or the `model.initial` file loaded into it by tensor
/// name. A non-finite value is refused here, naming its tensor, rather than
/// at every station in round 1.
fn initial_params(
    config: &ServerConfig,
    model: &ModelConfig,
    given: Option<Params>,
) -> Result<Params> {
    let seed = config.federation.seed;
    let file = config.model.initial.clone();
    cpu(|| -> Result<Params> {
        tch::manual_seed(seed as i64);
        let mut m = model::build(model, tch::Device::Cpu)?;
        if let Some(p) = &given {
            m.import_params(p)?;
        } else if let Some(path) = &file {
            let bad = |message: String| {
                ServerError::from(ConfigFileError::setting(
                    "model.initial",
                    format!("{}: {message}", path.display()),
                ))
            };
            let (p, _) = Params::load_safetensors(path).map_err(|e| bad(e.to_string()))?;
            m.import_params(&p).map_err(|e| bad(e.to_string()))?;
            tracing::info!(path = %path.display(), "initial model loaded");
        }
        let params = m.export_params();
        if let Some((entry, i)) = params
            .iter()
            .find_map(|(e, v)| v.iter().position(|x| !x.is_finite()).map(|i| (e, i)))
        {
            let source = match (&given, &file) {
                (None, Some(path)) => path.display().to_string(),
                _ => "the initial parameters".to_string(),
            };
            return Err(ConfigFileError::setting(
                "model.initial",
                format!(
                    "{source}: tensor {} has a non-finite value at index {i}",
                    entry.name
                ),
            )
            .into());
        }
        Ok(params)
    })
}

/// The round engine, resumed from the checkpoint folder (`--resume`) or new
/// (refused when that folder already holds a run), and its checkpoint store.
fn start_engine(
    config: &ServerConfig,
    strategy: Box<dyn Strategy>,
    initial: Params,
) -> Result<(Engine, CheckpointStore)> {
    let ckpt_dir = config.output.checkpoint_dir();
    let store = CheckpointStore::new(&ckpt_dir).with_keep(config.output.keep_checkpoints);
    let engine_cfg = config.engine_config();
    let mut engine = if config.resume {
        let mut e = Engine::resume(&ckpt_dir, engine_cfg, strategy, initial, now())?;
        restore_best_model(&mut e, &config.output.dir.join(BEST_MODEL));
        tracing::info!(
            dir = %ckpt_dir.display(),
            next_round = e.round(),
            "resuming"
        );
        e
    } else {
        if let Some(latest) = store.load_latest()? {
            return Err(ServerError::CheckpointExists {
                dir: ckpt_dir,
                round: latest.round,
            });
        }
        Engine::new(engine_cfg, strategy, initial, now())?
    };
    engine.set_stopwatch(Instant::now);
    Ok((engine, store))
}

/// Gives a resumed engine its best round's model back from `path` (written
/// by [`Driver::save_best_model`]); a missing or stale file leaves the
/// last model as the final one, with a warning.
fn restore_best_model(engine: &mut Engine, path: &Path) {
    let Some(best) = engine.best() else { return };
    if engine.best_global().is_some() {
        return;
    }
    let restored = match Params::load_safetensors(path) {
        Ok((params, meta)) => {
            let round = meta.get("round").and_then(|r| r.parse::<u64>().ok());
            round == Some(best.round) && engine.restore_best(best.round, params)
        }
        Err(_) => false,
    };
    if !restored {
        tracing::warn!(
            path = %path.display(),
            best_round = best.round,
            "the best round's model is not on disk: the final model will be the last round's"
        );
    }
}

/// Opens (or starts) the audit log with the configured key and records the
/// run's start: its settings and the global model it starts from.
fn open_audit_log(
    config: &ServerConfig,
    engine: &Engine,
) -> Result<Option<fedcrime_audit::AuditLog>> {
    if !config.audit.enabled {
        return Ok(None);
    }
    let key_path = config.audit_key();
    let text = std::fs::read_to_string(&key_path).map_err(|e| {
        ServerError::from(ConfigFileError::setting(
            "audit.key",
            format!(
                "cannot read {}: {e} (fedcrime-certs init makes audit.key beside ca.pem; or set \
                 audit.enabled = false)",
                key_path.display()
            ),
        ))
    })?;
    let key = fedcrime_audit::SigningKey::from_pkcs8_pem(&text, &key_path.display().to_string())?;
    let dir = config.audit_dir();
    if !config.resume && config.force && dir.join(fedcrime_audit::log::ENTRIES_FILE).exists() {
        // A forced fresh start replaces the run's files, its log included.
        for file in [
            fedcrime_audit::log::ENTRIES_FILE,
            fedcrime_audit::log::HEADS_FILE,
            fedcrime_audit::log::PUBLIC_KEY_FILE,
        ] {
            let path = dir.join(file);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(ServerError::Io {
                        what: "removing the old audit log file",
                        path,
                        source: e,
                    });
                }
            }
        }
    }
    let mut log = fedcrime_audit::AuditLog::open_or_create(&dir, key)?;
    let settings = serde_json::json!({
        "resume": config.resume,
        "federation": config.engine_config(),
        "strategy": config.strategy,
        "privacy": config.privacy,
        "wire": config.wire,
        "require_signed_updates": config.audit.require_signed_updates,
    });
    log.append(&fedcrime_audit::Entry::RunStarted {
        run_id: config.run_id(),
        strategy: engine.strategy_name().to_string(),
        settings,
        global_sha256: fedcrime_audit::sha256_f32(engine.global().data()),
    })?;
    tracing::info!(dir = %dir.display(), entries = log.len(), "audit log open");
    Ok(Some(log))
}

/// A fresh run (no `--resume`) may not replace another run's files in the
/// output folder unless `--force` says so.
fn check_output(config: &ServerConfig) -> Result<()> {
    if config.resume || config.force {
        return Ok(());
    }
    for file in ["metrics.csv", "metrics.jsonl", "model.safetensors"] {
        if config.output.dir.join(file).exists() {
            return Err(ServerError::OutputExists {
                dir: config.output.dir.clone(),
                file: file.to_string(),
            });
        }
    }
    Ok(())
}

/// What every station session needs: the Welcome's contents and the read
/// and write limits (reads bounded by the global model's size).
fn session_ctx(
    config: &ServerConfig,
    setup: &RunSetup,
    spec: &Arc<ParamSpec>,
) -> Result<SessionCtx> {
    let mut write_cfg = config.wire_config();
    // A masked update is one frame of 4 bytes per parameter (and the
    // weight): the frame limit grows to fit this run's model, no further.
    if config.federation.secure_aggregation.is_some() {
        let need = 4 * (spec.total() as u64 + 1) + (1 << 16);
        let need = u32::try_from(need).unwrap_or(u32::MAX);
        if need > write_cfg.max_frame_bytes {
            tracing::info!(
                from = write_cfg.max_frame_bytes,
                to = need,
                "frame limit raised to carry this model's masked updates"
            );
            write_cfg.max_frame_bytes = need;
        }
    }
    let read_cfg = WireConfig {
        max_model_params: (spec.total() as u64).saturating_mul(2).saturating_add(1024),
        max_tensors: u32::try_from(spec.len().saturating_mul(2).saturating_add(16))
            .unwrap_or(u32::MAX),
        ..write_cfg
    };
    Ok(SessionCtx {
        admission: Admission {
            run_id: config.run_id(),
            model_encoding: config.wire.model_encoding,
            update_encoding: config.wire.update_encoding,
            limits: ServerLimits {
                max_frame_bytes: write_cfg.max_frame_bytes,
                max_model_params: read_cfg.max_model_params,
                heartbeat_interval_ms: config.transport.keep_alive_ms,
                idle_timeout_ms: config.transport.idle_timeout_ms,
            },
            extensions: {
                let mut ext = setup.to_extensions()?;
                if config.federation.secure_aggregation.is_some() {
                    ext.insert(
                        fedcrime_fl::secure::WELCOME_EXTENSION.into(),
                        fedcrime_wire::Scalar::Bool(true),
                    );
                }
                if signatures_required(config) {
                    ext.insert(
                        fedcrime_wire::SIGNED_UPDATES_EXTENSION.into(),
                        fedcrime_wire::Scalar::Bool(true),
                    );
                }
                ext
            },
        },
        read_cfg,
        write_cfg,
        hello_timeout: config.transport.handshake_timeout(),
        buffers: UpdateBuffers::new(spec.clone()),
        prove_updates: config.audit.enabled || signatures_required(config),
        require_signed_updates: signatures_required(config),
    })
}

/// Whether updates (plaintext, or masked inputs under secure aggregation)
/// must be signed.
fn signatures_required(config: &ServerConfig) -> bool {
    config.audit.require_signed_updates
}

impl Server {
    /// A builder for a server of `config`.
    pub fn builder(config: ServerConfig) -> ServerBuilder {
        ServerBuilder {
            config,
            initial: None,
            featurizer: None,
            evaluator: None,
            board: None,
        }
    }

    /// [`Server::builder`] with nothing handed over: validates `config`,
    /// prepares the run and binds the listener. Must be called inside a
    /// tokio runtime.
    pub async fn bind(config: ServerConfig) -> Result<Server> {
        Server::builder(config).bind().await
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The dashboard's state, when `[dashboard]` is set.
    pub fn board(&self) -> Option<Arc<Board>> {
        self.board.clone()
    }

    /// A live view of the run's progress.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Runs the federation until the last round, an abort, or `shutdown`
    /// completes (then the round in progress is abandoned, its stations get
    /// a Bye, and completed rounds stay checkpointed for `--resume`).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<RunReport> {
        let metrics_csv = self.metrics.csv_path().to_path_buf();
        let (persisted_tx, mut persisted) = mpsc::unbounded_channel();
        let persister = Persister::spawn(self.metrics, self.store, persisted_tx)?;
        // The dashboard stops when the run's driver is done (the sender drops).
        let (_dashboard_up, dashboard_down) = tokio::sync::oneshot::channel::<()>();
        if let (Some(board), Some(section)) = (&self.board, &self.config.dashboard) {
            section
                .start(board.clone(), async {
                    let _ = dashboard_down.await;
                })
                .await?;
        }
        let mut driver = Driver {
            board: self.board.clone(),
            featurizer_json: self.featurizer_json.clone(),
            engine: self.engine,
            ctx: self.ctx,
            persister,
            progress: self.progress,
            sessions: HashMap::new(),
            fit_cache: None,
            eval_cache: None,
            train_times: BTreeMap::new(),
            model: self.model.clone(),
            out_dir: self.config.output.dir.clone(),
            delivery: UpdateDelivery {
                encoding: self.config.wire.update_encoding,
                send_delta: self.config.wire.send_delta,
            },
            summary: None,
            participants: BTreeSet::new(),
            tree_head: self
                .audit
                .as_ref()
                .and_then(|a| a.head())
                .and_then(|h| h.to_json_line().ok()),
            tree_consistency: None,
            audit: self.audit,
        };
        let (tx, mut rx) = mpsc::channel::<FromSession>(256);
        let crl_watched = self.listener.verifier().crl_path().is_some();
        let mut crl_check = tokio::time::interval(Duration::from_millis(
            self.config.tls.crl_check_interval_ms.max(100),
        ));
        crl_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = JoinSet::new();
        let mut next_session: u64 = 1;
        let listener = self.listener;
        tokio::pin!(shutdown);
        let mut interrupted = false;

        let outcome: Result<()> = async {
            loop {
                driver.act().await?;
                if driver.summary.is_some() {
                    return Ok(());
                }
                let timer = driver.engine.poll_timeout();
                let sleep = async {
                    match timer {
                        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = &mut shutdown => {
                        interrupted = true;
                        return Ok(());
                    }
                    Some(msg) = rx.recv() => driver.on_session(msg),
                    Some(p) = persisted.recv() => driver.on_persisted(p)?,
                    Some(conn) = listener.accept() => {
                        let id = next_session;
                        next_session += 1;
                        let station = conn.station.clone();
                        tasks.spawn(session::serve(station, id, conn.connection, driver.ctx.clone(), tx.clone()));
                    }
                    () = sleep => {
                        let t = now();
                        cpu(|| driver.engine.handle_timeout(t));
                        driver.reclaim_buffers();
                    }
                    _ = crl_check.tick(), if crl_watched => {
                        if listener.verifier().refresh() {
                            driver.recheck_certificates(&listener);
                        }
                    }
                }
                // Reap finished session tasks.
                while let Some(done) = tasks.try_join_next() {
                    if let Err(e) = done {
                        tracing::error!("session task failed: {e}");
                    }
                }
            }
        }
        .await;

        // Goodbye to every station, whatever happened.
        let aborted = match driver.summary.as_ref().map(|s| &s.outcome) {
            Some(Outcome::Aborted { round, reason }) => Some((*round, reason.clone())),
            Some(Outcome::Completed) | None => None,
        };
        let (reason, text) = match (&outcome, interrupted, aborted) {
            (Ok(()), false, Some((round, why))) => (
                ByeReason::Aborted,
                format!("the run was aborted in round {round}: {why}"),
            ),
            (Ok(()), false, None) => (ByeReason::Done, "the run is over".to_string()),
            (Ok(()), true, _) => (
                ByeReason::Shutdown,
                "the server is shutting down".to_string(),
            ),
            (Err(e), _, _) => (ByeReason::Shutdown, format!("the server failed: {e}")),
        };
        if interrupted {
            tracing::warn!(
                round = driver.engine.round(),
                "shutting down: the round in progress is abandoned; completed rounds are checkpointed"
            );
        }
        let bye = encode(
            &Message::Bye(Bye { reason, text }),
            None,
            &driver.ctx.write_cfg,
        );
        let mut untold = driver.participants.clone();
        for (station, s) in driver.sessions.drain() {
            let _ = s.outbox.try_send(Outgoing::Bye(bye.clone()));
            untold.remove(&station);
        }
        // Stations that took part but are away (restarting, between
        // connections) learn that the run is over when they come back, for
        // up to `linger_s`; the server does not wait for stations that were
        // told already.
        let lingering = outcome.is_ok() && !interrupted && !untold.is_empty();
        let linger = if lingering {
            let linger = Duration::from_secs_f64(self.config.linger_s);
            if !linger.is_zero() {
                tracing::info!(stations = untold.len(), ?linger,
                    "the run is over; waiting for stations that are away to learn it (Ctrl-C ends the wait)");
            }
            linger
        } else {
            Duration::ZERO
        };
        drop(tx);
        let (late_tx, mut late_rx) = mpsc::channel::<FromSession>(64);
        let mut grace_end = tokio::time::Instant::now() + BYE_GRACE;
        let linger_end = tokio::time::Instant::now() + linger;
        let mut sessions_done = false;
        loop {
            let now = tokio::time::Instant::now();
            let linger_over = untold.is_empty() || now >= linger_end;
            if (sessions_done || now >= grace_end) && linger_over {
                break;
            }
            let wake = if sessions_done || now >= grace_end {
                linger_end
            } else {
                grace_end
            };
            tokio::select! {
                biased;
                () = &mut shutdown, if lingering => break,
                Some(msg) = rx.recv() => refuse_late(&driver, msg, interrupted, &mut untold),
                Some(msg) = late_rx.recv() => refuse_late(&driver, msg, interrupted, &mut untold),
                Some(conn) = listener.accept(), if !linger_over => {
                    let id = next_session;
                    next_session += 1;
                    tasks.spawn(session::serve(conn.station.clone(), id, conn.connection, driver.ctx.clone(), late_tx.clone()));
                    // Its refusal is delivered before the server exits.
                    sessions_done = false;
                    grace_end = grace_end.max(tokio::time::Instant::now() + BYE_GRACE);
                }
                joined = tasks.join_next(), if !sessions_done => if joined.is_none() { sessions_done = true },
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        tasks.abort_all();
        let stats = listener.stats();
        listener.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), listener.wait_idle()).await;
        drop(listener);
        // Every queued metrics row and checkpoint is on disk before returning.
        let written = driver.persister.finish().await;
        while let Ok(p) = persisted.try_recv() {
            if let Err(e) = driver.on_persisted(p) {
                tracing::error!("{e}");
                if outcome.is_ok() {
                    return Err(e);
                }
            }
        }
        written?;
        let mut progress = driver.progress.borrow().clone();
        progress.finished = true;
        progress.connected = 0;
        driver.progress.send_replace(progress);
        outcome?;

        let summary = driver.summary.clone().unwrap_or_else(|| Summary {
            best: driver.engine.best(),
            stopped_early: false,
            privacy_budget_spent: false,
            rounds_completed: driver.engine.history().last().map_or(0, |m| m.round),
            outcome: Outcome::Aborted {
                round: driver.engine.round(),
                reason: "interrupted".into(),
            },
        });
        Ok(RunReport {
            summary,
            history: driver.engine.history().to_vec(),
            global: driver.engine.global().clone(),
            model: self.model,
            metrics_csv,
            listener: stats,
            interrupted,
        })
    }
}

/// Answers what a session says after the run ended: a Hello is refused with
/// the run's outcome (or "shutting down"), and the station counts as told.
fn refuse_late(
    driver: &Driver,
    msg: FromSession,
    interrupted: bool,
    untold: &mut BTreeSet<StationId>,
) {
    if let FromSession::Hello { station, reply, .. } = msg {
        let reject = match driver.finished_reject() {
            Some(r) if !interrupted => r,
            _ => Reject {
                code: RejectCode::ShuttingDown,
                text: "the server is shutting down".into(),
            },
        };
        if reply.send(Some(reject)).is_ok() {
            untold.remove(&station);
        }
    }
}

/// A request encoded once and sent to every sampled station. Weak
/// references identify the model and settings it was made from (a live
/// allocation's address cannot be reused while a weak reference holds it).
struct Encoded<C> {
    round: u64,
    global: Weak<Params>,
    config: Weak<C>,
    bytes: Bytes,
}

impl<C> Encoded<C> {
    fn matches(&self, round: u64, global: &Arc<Params>, config: &Arc<C>) -> bool {
        self.round == round
            && std::ptr::eq(self.global.as_ptr(), Arc::as_ptr(global))
            && std::ptr::eq(self.config.as_ptr(), Arc::as_ptr(config))
    }

    fn new(round: u64, global: &Arc<Params>, config: &Arc<C>, bytes: Bytes) -> Self {
        Encoded {
            round,
            global: Arc::downgrade(global),
            config: Arc::downgrade(config),
            bytes,
        }
    }
}

/// What the persistence thread writes, in order.
enum Persist {
    Metrics(Box<RoundRecord>),
    Checkpoint(Box<Checkpoint>),
}

/// What it reports back.
enum Persisted {
    Checkpoint(u64),
    Failed(ServerError),
}

/// A thread that appends metrics and writes checkpoints in order, off the
/// round's critical path: the next round's models go out while the last
/// round's files are fsynced. A round counts as completed (for `--resume`)
/// once its checkpoint is durable; the run waits for every write before it
/// returns.
struct Persister {
    jobs: Option<std_mpsc::Sender<Persist>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Persister {
    fn spawn(
        metrics: MetricsWriter,
        store: CheckpointStore,
        done: mpsc::UnboundedSender<Persisted>,
    ) -> Result<Persister> {
        let (jobs, queue) = std_mpsc::channel::<Persist>();
        let thread = std::thread::Builder::new()
            .name("fedcrime-persist".into())
            .spawn(move || {
                for job in queue {
                    let outcome = match job {
                        Persist::Metrics(r) => metrics.append(&r).map(|()| None),
                        Persist::Checkpoint(c) => store
                            .save(&c)
                            .map(|_| Some(c.round))
                            .map_err(ServerError::from),
                    };
                    let report = match outcome {
                        Ok(None) => continue,
                        Ok(Some(round)) => Persisted::Checkpoint(round),
                        Err(e) => Persisted::Failed(e),
                    };
                    if done.send(report).is_err() {
                        return;
                    }
                }
            })
            .map_err(|source| ServerError::Io {
                what: "starting the persistence thread for",
                path: PathBuf::from("metrics and checkpoints"),
                source,
            })?;
        Ok(Persister {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    fn send(&self, job: Persist) -> Result<()> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or(ServerError::Task("persistence"))
    }

    /// Waits until everything queued is written.
    async fn finish(&mut self) -> Result<()> {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|_| ServerError::Task("persistence"))?
                .map_err(|_| ServerError::Task("persistence"))?;
        }
        Ok(())
    }
}

/// Most metrics kept from one station message, and their longest name.
const MAX_METRICS: usize = 64;
const MAX_METRIC_NAME: usize = 64;

/// Keeps a bounded number of sensibly named metrics from a station.
fn bounded_metrics(metrics: FlMetrics) -> FlMetrics {
    metrics
        .into_iter()
        .filter(|(k, _)| !k.is_empty() && k.len() <= MAX_METRIC_NAME)
        .take(MAX_METRICS)
        .collect()
}

struct Driver {
    board: Option<Arc<Board>>,
    featurizer_json: Option<String>,
    engine: Engine,
    ctx: Arc<SessionCtx>,
    persister: Persister,
    progress: watch::Sender<Progress>,
    sessions: HashMap<StationId, SessionHandle>,
    /// The encoded RoundStart of the current round and what it was made from.
    fit_cache: Option<Encoded<RoundSettings>>,
    /// The encoded EvaluateRequest of the current round and what it was made from.
    eval_cache: Option<Encoded<Config>>,
    /// Reported training seconds of this round's updates, by station.
    train_times: BTreeMap<StationId, f64>,
    model: ModelConfig,
    out_dir: PathBuf,
    delivery: UpdateDelivery,
    summary: Option<Summary>,
    /// Every station admitted during this process's run.
    participants: BTreeSet<StationId>,
    /// The audit log, when kept.
    audit: Option<fedcrime_audit::AuditLog>,
    /// Its latest signed tree head (a `heads.jsonl` line), sent with every
    /// round for the stations to keep.
    tree_head: Option<String>,
    /// The consistency proof from the head before to that one (JSON), sent
    /// with it: stations check at once that the log only grew.
    tree_consistency: Option<String>,
}

impl Driver {
    /// The refusal for a station that asks to join once the run has ended.
    fn finished_reject(&self) -> Option<Reject> {
        if let Some(summary) = &self.summary {
            return Some(match &summary.outcome {
                Outcome::Completed => Reject {
                    code: RejectCode::RunFinished,
                    text: format!(
                        "the run {} is over: it completed {} rounds",
                        self.ctx.admission.run_id, summary.rounds_completed
                    ),
                },
                Outcome::Aborted { round, reason } => Reject {
                    code: RejectCode::RunAborted,
                    text: format!(
                        "the run {} was aborted in round {round}: {reason}",
                        self.ctx.admission.run_id
                    ),
                },
            });
        }
        self.engine.is_finished().then(|| Reject {
            code: RejectCode::RunFinished,
            text: format!("the run {} is over", self.ctx.admission.run_id),
        })
    }

    /// Checks every connected station's certificate again after the CRL
    /// changed; a revoked one's session ends now (whatever it was asked is
    /// lost, like a disconnect) instead of when it next reconnects.
    fn recheck_certificates(&mut self, listener: &Listener) {
        let revoked: Vec<(StationId, String)> = self
            .sessions
            .iter()
            .filter_map(|(station, s)| {
                listener
                    .verifier()
                    .recheck(&s.connection)
                    .err()
                    .map(|e| (station.clone(), e.to_string()))
            })
            .collect();
        for (station, why) in revoked {
            tracing::warn!(station = %station, "ending the session of a station no longer trusted: {why}");
            if let Some(s) = self.sessions.remove(&station) {
                s.connection.close(
                    CloseCode::Revoked.code(),
                    b"the station's certificate is no longer valid (revoked or expired)",
                );
            }
            self.handle(Event::StationDisconnected { id: station });
        }
        self.publish();
    }

    fn handle(&mut self, event: Event) {
        if let Some(b) = &self.board {
            b.observe_event(&event);
        }
        let t = now();
        cpu(|| self.engine.handle(t, event));
        self.reclaim_buffers();
    }

    /// Hands the update buffers the engine is done with to the sessions.
    fn reclaim_buffers(&mut self) {
        while let Some(spent) = self.engine.take_spent() {
            self.ctx.buffers.give(spent);
        }
    }

    fn publish(&self) {
        let round = self.engine.round();
        let connected = self.sessions.len();
        self.progress.send_modify(|p| {
            p.round = round;
            p.connected = connected;
        });
    }

    /// Queues `bytes` to a station; a station whose queue is full or gone is dropped.
    fn queue(&mut self, station: &StationId, item: Outgoing, request: Option<Request>) -> u64 {
        let Some(s) = self.sessions.get_mut(station) else {
            tracing::debug!(station = %station, "no session to send to");
            return 0;
        };
        let len = match &item {
            Outgoing::Frames(b) | Outgoing::Bye(b) => b.len() as u64,
        };
        match s.outbox.try_send(item) {
            Ok(()) => {
                if request.is_some() {
                    s.last_request = request;
                }
                len
            }
            Err(e) => {
                tracing::warn!(station = %station, "station is not keeping up ({e}); dropping it");
                s.connection
                    .close(CloseCode::NotKeepingUp.code(), b"not keeping up");
                0
            }
        }
    }

    /// Carries out every queued engine action.
    async fn act(&mut self) -> Result<()> {
        while let Some(action) = self.engine.poll_action() {
            if let Some(b) = &self.board {
                b.observe_action(&action);
            }
            match action {
                Action::SendFit {
                    station,
                    round,
                    ins,
                } => {
                    let bytes = match &self.fit_cache {
                        Some(e) if e.matches(round, &ins.global, &ins.settings) => e.bytes.clone(),
                        _ => {
                            let model = ModelHeader::describe(
                                &ins.global,
                                self.ctx.admission.model_encoding,
                            )?;
                            let mut start = round_start(&ins, self.delivery, model);
                            for (key, value) in [
                                (fedcrime_audit::TREE_HEAD_EXTENSION, &self.tree_head),
                                (
                                    fedcrime_audit::TREE_CONSISTENCY_EXTENSION,
                                    &self.tree_consistency,
                                ),
                            ] {
                                if let Some(v) = value {
                                    start
                                        .settings
                                        .extensions
                                        .insert(key.into(), fedcrime_wire::Scalar::Str(v.clone()));
                                }
                            }
                            let msg = Message::RoundStart(start);
                            let b = cpu(|| encode(&msg, Some(&ins.global), &self.ctx.write_cfg));
                            self.fit_cache =
                                Some(Encoded::new(round, &ins.global, &ins.settings, b.clone()));
                            self.train_times.clear();
                            b
                        }
                    };
                    let sent =
                        self.queue(&station, Outgoing::Frames(bytes), Some(Request::Fit(round)));
                    self.handle(Event::Traffic {
                        bytes_in: 0,
                        bytes_out: sent,
                    });
                }
                Action::SendEvaluate {
                    station,
                    round,
                    ins,
                } => {
                    let bytes = match &self.eval_cache {
                        Some(e) if e.matches(round, &ins.global, &ins.config) => e.bytes.clone(),
                        _ => {
                            let msg = Message::EvaluateRequest(EvaluateRequest {
                                round,
                                model: EvalModel::Attached(ModelHeader::describe(
                                    &ins.global,
                                    self.ctx.admission.model_encoding,
                                )?),
                                config: eval_config_to_wire(&ins.config),
                            });
                            let b = cpu(|| encode(&msg, Some(&ins.global), &self.ctx.write_cfg));
                            self.eval_cache =
                                Some(Encoded::new(round, &ins.global, &ins.config, b.clone()));
                            b
                        }
                    };
                    let sent = self.queue(
                        &station,
                        Outgoing::Frames(bytes),
                        Some(Request::Evaluate(round)),
                    );
                    self.handle(Event::Traffic {
                        bytes_in: 0,
                        bytes_out: sent,
                    });
                }
                Action::SendSecAgg {
                    station,
                    round,
                    msg,
                } => {
                    let bytes = match msg.to_wire(round) {
                        Ok(m) => cpu(|| encode(&Message::SecAggDown(m), None, &self.ctx.write_cfg)),
                        Err(e) => {
                            tracing::error!(%station, round, "cannot encode {}: {e}", msg.name());
                            continue;
                        }
                    };
                    let sent = self.queue(&station, Outgoing::Frames(bytes), None);
                    self.handle(Event::Traffic {
                        bytes_in: 0,
                        bytes_out: sent,
                    });
                }
                Action::RoundFinished(m) => {
                    let max_train = m
                        .completed
                        .iter()
                        .filter_map(|s| self.train_times.get(s).copied())
                        .reduce(f64::max);
                    let record = RoundRecord::new(*m, max_train);
                    self.train_times.clear();
                    tracing::info!(
                        round = record.metrics.round,
                        round_s = record.metrics.round_s,
                        max_train_s = record.max_train_s,
                        overhead_s = record.overhead_s,
                        bytes_out = record.metrics.bytes_out,
                        bytes_in = record.metrics.bytes_in,
                        "round recorded"
                    );
                    let round = record.metrics.round;
                    self.persister.send(Persist::Metrics(Box::new(record)))?;
                    self.sign_tree_head(round)?;
                    self.save_best_model(round).await?;
                }
                Action::Audit(entry) => {
                    if let Some(log) = &mut self.audit {
                        log.append(&entry)?;
                    }
                }
                Action::Checkpoint(c) => self.persister.send(Persist::Checkpoint(c))?,
                Action::Finished(summary) => {
                    self.sign_tree_head(summary.rounds_completed)?;
                    if summary.rounds_completed > 0 {
                        self.save_final_models(&summary).await?;
                    }
                    match &summary.outcome {
                        Outcome::Completed => tracing::info!(
                            rounds = summary.rounds_completed,
                            "federated run completed"
                        ),
                        Outcome::Aborted { round, reason } => {
                            tracing::error!(round, "federated run aborted: {reason}")
                        }
                    }
                    self.summary = Some(summary);
                }
            }
        }
        self.publish();
        Ok(())
    }

    /// Signs the audit log's tree head after `round` (fsyncs the log) and
    /// keeps it for the next round's stations.
    fn sign_tree_head(&mut self, round: u64) -> Result<()> {
        let Some(log) = &mut self.audit else {
            return Ok(());
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let head = log.sign_head(round, now_ms)?;
        tracing::debug!(round, tree_size = head.tree_size, "audit tree head signed");
        self.tree_head = Some(head.to_json_line()?);
        self.tree_consistency = log
            .latest_consistency()?
            .and_then(|step| serde_json::to_string(&step).ok());
        Ok(())
    }

    /// With early stopping, writes the global model of a round that is the
    /// new best as `model-best.safetensors`, so that a resumed run gets it
    /// back ([`restore_best_model`]).
    async fn save_best_model(&mut self, round: u64) -> Result<()> {
        let best = self.engine.best().filter(|b| b.round == round);
        let (Some(best), Some(global)) = (best, self.engine.best_global()) else {
            return Ok(());
        };
        let job = self.model_job(BEST_MODEL, global.clone(), best.round, "best validation");
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|_| ServerError::Task("saving the best model"))??;
        tracing::info!(round, score = best.score, "new best validation score");
        Ok(())
    }

    /// Writes `model.safetensors`: the best round's model with early
    /// stopping (and the last round's as `model-last.safetensors`), else the
    /// last round's.
    async fn save_final_models(&mut self, summary: &Summary) -> Result<()> {
        let last = (self.engine.global().clone(), summary.rounds_completed);
        let mut jobs = Vec::new();
        match (summary.best, self.engine.best_global()) {
            (Some(best), Some(global)) => {
                jobs.push(self.model_job(
                    FINAL_MODEL,
                    global.clone(),
                    best.round,
                    "best validation",
                ));
                jobs.push(self.model_job(LAST_MODEL, last.0, last.1, "last round"));
            }
            _ => jobs.push(self.model_job(FINAL_MODEL, last.0, last.1, "last round")),
        }
        for job in jobs {
            tokio::task::spawn_blocking(job)
                .await
                .map_err(|_| ServerError::Task("saving the model"))??;
        }
        tracing::info!(
            path = %self.out_dir.join(FINAL_MODEL).display(),
            round = summary.best.map_or(summary.rounds_completed, |b| b.round),
            "final model saved"
        );
        Ok(())
    }

    /// The job writing `global` (of `round`) as the self-describing `file`
    /// in the output folder (run it off the async threads).
    fn model_job(
        &self,
        file: &str,
        global: Arc<Params>,
        round: u64,
        selected: &str,
    ) -> impl FnOnce() -> Result<()> + Send {
        let path = self.out_dir.join(file);
        let cfg = self.model.clone();
        let mut meta = BTreeMap::from([
            ("round".to_string(), round.to_string()),
            ("run_id".to_string(), self.ctx.admission.run_id.clone()),
            ("selected".to_string(), selected.to_string()),
            (
                "strategy".to_string(),
                self.engine.strategy_name().to_string(),
            ),
        ]);
        if let Some(f) = &self.featurizer_json {
            meta.insert("fedcrime.featurizer".to_string(), f.clone());
        }
        move || -> Result<()> {
            let mut m = model::build(&cfg, tch::Device::Cpu)?;
            m.import_params(&global)?;
            model::save_model(m.as_ref(), &path, &meta)?;
            Ok(())
        }
    }

    fn on_persisted(&mut self, p: Persisted) -> Result<()> {
        match p {
            Persisted::Checkpoint(round) => {
                tracing::debug!(round, "checkpoint durable");
                self.progress.send_modify(|p| p.checkpointed = round);
                Ok(())
            }
            Persisted::Failed(e) => {
                tracing::error!("writing metrics or a checkpoint failed: {e}");
                Err(e)
            }
        }
    }

    fn current(&self, station: &StationId, session: u64) -> bool {
        self.sessions.get(station).is_some_and(|s| s.id == session)
    }

    /// Whether a reply comes from the station's current session; if so, its
    /// bytes are counted as received.
    fn accept_from(&mut self, station: &StationId, session: u64, bytes: u64) -> bool {
        if !self.current(station, session) {
            return false;
        }
        self.handle(Event::Traffic {
            bytes_in: bytes,
            bytes_out: 0,
        });
        true
    }

    fn on_session(&mut self, msg: FromSession) {
        match msg {
            FromSession::Hello {
                station,
                session,
                instance,
                connection,
                outbox,
                reply,
            } => {
                if let Some(reject) = self.finished_reject() {
                    let _ = reply.send(Some(reject));
                    return;
                }
                if let Some(old) = self.sessions.get(&station) {
                    let alive = old.connection.close_reason().is_none();
                    match on_duplicate(alive, old.instance, instance) {
                        Duplicate::Refuse => {
                            let text = format!(
                                "station {station} is already connected from {} (session {}, for {:.0} s); \
                                 this second connection from {} is refused and that session goes on. \
                                 Two processes hold this station's certificate: stop one, or revoke \
                                 and reissue the certificate if its key was copied",
                                old.connection.remote_address(),
                                old.id,
                                old.since.elapsed().as_secs_f64(),
                                connection.remote_address(),
                            );
                            tracing::warn!(station = %station, session = old.id, refused = session,
                                from = %connection.remote_address(),
                                "a second connection with this station's certificate is refused");
                            let _ = reply.send(Some(Reject {
                                code: RejectCode::AlreadyConnected,
                                text,
                            }));
                            return;
                        }
                        Duplicate::Replace(why) => {
                            tracing::info!(station = %station, old = old.id, new = session,
                                "the new connection replaces the old one: {why}");
                            old.connection.close(
                                CloseCode::Replaced.code(),
                                b"replaced by a newer connection",
                            );
                            self.sessions.remove(&station);
                            self.handle(Event::StationDisconnected {
                                id: station.clone(),
                            });
                        }
                    }
                }
                if reply.send(None).is_err() {
                    return;
                }
                self.sessions.insert(
                    station.clone(),
                    SessionHandle {
                        id: session,
                        instance,
                        connection,
                        outbox,
                        last_request: None,
                        since: Instant::now(),
                    },
                );
                self.participants.insert(station.clone());
                self.handle(Event::StationConnected { id: station });
            }
            FromSession::Update {
                station,
                session,
                update,
                params,
                bytes,
                proof,
            } => {
                if !self.accept_from(&station, session, bytes) {
                    return;
                }
                let params = decode_update(update.kind, Arc::new(params), self.engine.global());
                if update.round == self.engine.round()
                    && update.train_seconds.is_finite()
                    && update.train_seconds >= 0.0
                {
                    self.train_times
                        .insert(station.clone(), update.train_seconds);
                }
                self.handle(Event::UpdateReceived {
                    id: station,
                    round: update.round,
                    update: FitRes {
                        params,
                        num_examples: update.num_examples,
                        metrics: bounded_metrics(update.metrics),
                    },
                    proof,
                });
            }
            FromSession::Evaluation {
                station,
                session,
                result,
                bytes,
            } => {
                if !self.accept_from(&station, session, bytes) {
                    return;
                }
                self.handle(Event::EvaluationReceived {
                    id: station,
                    round: result.round,
                    result: EvaluateRes {
                        loss: result.loss,
                        num_examples: result.num_examples,
                        metrics: bounded_metrics(result.metrics),
                    },
                });
            }
            FromSession::SecAgg {
                station,
                session,
                round,
                msg,
                bytes,
                proof,
            } => {
                if !self.accept_from(&station, session, bytes) {
                    return;
                }
                match msg {
                    Ok(msg) => self.handle(Event::SecAggReceived {
                        id: station,
                        round,
                        msg,
                        proof,
                    }),
                    Err(e) => {
                        tracing::warn!(station = %station, round, "undecodable secure aggregation message: {e}");
                        self.handle(Event::FitFailed {
                            id: station,
                            round,
                            message: format!("undecodable secure aggregation message: {e}"),
                        });
                    }
                }
            }
            FromSession::Report {
                station,
                session,
                error,
            } => {
                if !self.current(&station, session) {
                    return;
                }
                let last = self.sessions.get(&station).and_then(|s| s.last_request);
                tracing::warn!(station = %station, code = ?error.code, "station reports: {}", error.text);
                if error.code == ErrorCode::TrainingFailed {
                    match last {
                        Some(Request::Fit(round)) => self.handle(Event::FitFailed {
                            id: station,
                            round,
                            message: error.text,
                        }),
                        Some(Request::Evaluate(round)) => self.handle(Event::EvaluateFailed {
                            id: station,
                            round,
                            message: error.text,
                        }),
                        None => {}
                    }
                }
            }
            FromSession::Closed {
                station,
                session,
                reason,
            } => {
                if !self.current(&station, session) {
                    return;
                }
                self.sessions.remove(&station);
                tracing::info!(station = %station, session, "station left: {reason}");
                self.handle(Event::StationDisconnected { id: station });
            }
        }
    }
}

/// Runs a server with `config` until the run ends or Ctrl-C.
pub async fn run(config: ServerConfig) -> Result<RunReport> {
    let server = Server::bind(config).await?;
    server
        .run(async {
            fedcrime_cli::logging::shutdown_signal().await;
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed run whose best round is not its last takes the best
    /// round's model back from `model-best.safetensors`, and only when the
    /// file is that round's.
    #[test]
    fn a_resumed_run_takes_its_best_model_back_from_disk() {
        use fedcrime_fl::{Checkpoint, CheckpointStore, EarlyStopping, EngineConfig, Goal};
        let tmp = tempfile::tempdir().unwrap();
        let cfg =
            fedcrime_ml::model::ModelConfig::new(ModelKind::Dnn, fedcrime_data::Task::Risk, 4, 5);
        tch::manual_seed(1);
        let model = model::build(&cfg, tch::Device::Cpu).unwrap();
        let params = model.export_params();
        // Rounds 1-3 scored 0.1, 0.3, 0.2: the best is round 2.
        let history: Vec<fedcrime_fl::RoundMetrics> = [0.1, 0.3, 0.2]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut m = fedcrime_fl::RoundMetrics::new(i as u64 + 1);
                m.server_eval_metrics.insert("macro_f1".into(), *v);
                m
            })
            .collect();
        let ckpt = tmp.path().join("checkpoints");
        CheckpointStore::new(&ckpt)
            .save(&Checkpoint {
                round: 3,
                global: Arc::new(params.clone()),
                strategy: fedcrime_fl::strategy::FedAvg::new().state(),
                history,
                seed: 0,
            })
            .unwrap();
        let engine_cfg = EngineConfig {
            rounds: 10,
            early_stopping: Some(EarlyStopping {
                monitor: "macro_f1".into(),
                goal: Goal::Max,
                patience: 5,
                min_delta: 0.0,
            }),
            ..EngineConfig::default()
        };
        let resume = || {
            Engine::resume(
                &ckpt,
                engine_cfg.clone(),
                Box::new(fedcrime_fl::strategy::FedAvg::new()),
                params.clone(),
                now(),
            )
            .unwrap()
        };
        let best = tmp.path().join(BEST_MODEL);
        let save = |round: u64| {
            let meta = BTreeMap::from([("round".to_string(), round.to_string())]);
            model::save_model(model.as_ref(), &best, &meta).unwrap();
        };
        // No file: the last model will be the final one.
        let mut e = resume();
        assert_eq!(e.best().map(|b| b.round), Some(2));
        restore_best_model(&mut e, &best);
        assert!(e.best_global().is_none());
        // A file of another round is stale.
        save(1);
        restore_best_model(&mut e, &best);
        assert!(e.best_global().is_none());
        // The best round's file is taken back.
        save(2);
        restore_best_model(&mut e, &best);
        assert_eq!(
            e.best_global().map(|p| p.data().to_vec()),
            Some(params.data().to_vec())
        );
    }

    #[test]
    fn the_graph_model_is_scored_on_the_evaluation_data_graph() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/la-crime/la_crime_2024_02.csv");
        if !data.is_file() {
            eprintln!("skipped: ../shared/data/la-crime is absent");
            return;
        }
        let mut config = ServerConfig::new(fedcrime_net::ServerTls::from_pki_dir(Path::new(
            "/nonexistent",
        )));
        config.task.task = fedcrime_data::Task::Counts;
        config.model.kind = ModelKind::GatTcn;
        config.evaluation = Some(crate::config::EvaluationSection {
            data,
            split: EvalSplit::Val,
            batch_size: 64,
        });
        let task = config.task.task_config();
        let mut model = config.model_config().unwrap();
        let mut featurizer = None;
        let mut eval = load_evaluation(&config, &task, &mut model, &mut featurizer)
            .unwrap()
            .expect("an evaluation");
        tch::manual_seed(0);
        let params = model::build(&model, tch::Device::Cpu)
            .unwrap()
            .export_params();
        let summary = eval.evaluate(1, &params).expect("a score");
        assert!(summary.loss.is_some_and(f64::is_finite), "{summary:?}");
        assert!(summary.metrics["mae"].is_finite(), "{summary:?}");
        assert!(summary.num_examples > 0);
    }

    /// Issue 11, defect 1: the rule for a second connection of one station.
    #[test]
    fn the_live_session_keeps_the_identity() {
        // A live session of another process: the newcomer is refused.
        assert_eq!(on_duplicate(true, Some(1), Some(2)), Duplicate::Refuse);
        assert_eq!(on_duplicate(true, None, Some(2)), Duplicate::Refuse);
        assert_eq!(on_duplicate(true, None, None), Duplicate::Refuse);
        // The same process reconnecting replaces its own connection.
        assert!(matches!(
            on_duplicate(true, Some(7), Some(7)),
            Duplicate::Replace(_)
        ));
        // A dead connection (closed or timed out) is always replaced.
        for (old, new) in [(Some(1), Some(2)), (None, None), (Some(3), Some(3))] {
            assert!(matches!(
                on_duplicate(false, old, new),
                Duplicate::Replace(_)
            ));
        }
    }
}
