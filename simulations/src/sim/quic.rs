//! The QUIC transport: the real `fedcrime-server` and one `fedcrime-client`
//! per station, all in this process, talking QUIC with mutual TLS over
//! 127.0.0.1.
//!
//! A fresh PKI (agency CA, server certificate, one client certificate per
//! station, empty CRL) is generated into `<dir>/pki` with the certs
//! library. The server is configured like an agency's would be (the run's
//! engine settings, strategy, task and architecture); the study's initial
//! model and shared featurizer are handed to it as values
//! ([`Server::builder`]). It writes its own `metrics.csv`,
//! `metrics.jsonl`, checkpoints and final model under `<dir>/server`. Each
//! station is a protocol [`Client`] whose learner is the study's station
//! (the same [`Learner`] the memory transport calls), behind a gate that
//! lets at most `concurrency` stations train at once and times each fit.
//!
//! The global model after each round is read back from the server's
//! checkpoints when asked, so the study scores exactly what the server
//! aggregated.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;

use fedcrime_certs::{Pki, PkiOptions, Validity};
use fedcrime_client::{Client, ClientOptions, ClientOutcome, LearnerFactory};
use fedcrime_data::{Featurizer, TaskConfig};
use fedcrime_fl::{
    CheckpointStore, EngineConfig, EvaluateIns, EvaluateRes, FitIns, FitRes, RoundMetrics,
    StationId, StrategyConfig, Summary,
};
use fedcrime_ml::model::ModelConfig;
use fedcrime_net::{ClientTls, Connector, ReconnectPolicy, ServerTls, TransportSettings};
use fedcrime_params::{ParamSpec, Params};
use fedcrime_server::config::{ModelSection, OutputSection, TaskSection, TrainSection};
use fedcrime_server::{Server, ServerConfig};
use fedcrime_station::protocol::RunSetup;
use fedcrime_station::{Learner, StationError};

use super::memory::RoundTiming;

/// The name the server certificate carries and stations check.
const SERVER_NAME: &str = "localhost";

/// Everything a QUIC federation needs.
pub struct QuicSetup<'a> {
    /// Folder for the PKI, the initial model and the server's files.
    pub dir: &'a Path,
    /// The round engine's settings (rounds, sampling, deadlines, round settings, seed).
    pub engine: EngineConfig,
    /// The aggregation strategy.
    pub strategy: StrategyConfig,
    /// The task.
    pub task: TaskConfig,
    /// The featurizer every station applies (sent in the Welcome).
    pub featurizer: Option<&'a Featurizer>,
    /// The architecture (the server builds the same layout from its kind and widths).
    pub model: &'a ModelConfig,
    /// The model the run starts from.
    pub initial: &'a Params,
    /// The stations by certificate name.
    pub stations: Vec<(StationId, Arc<dyn Learner>)>,
    /// Stations training at once.
    pub concurrency: usize,
    /// Keep every round's checkpoint and return the global models.
    pub keep_globals: bool,
    /// Advanced to the round in progress.
    pub bar: ProgressBar,
    /// The server-side evaluation early stopping watches, if any.
    pub evaluator: Option<fedcrime_server::Evaluator>,
    /// The dashboard's state to feed, if one is shown.
    pub board: Option<Arc<fedcrime_server::dashboard::Board>>,
    /// With secure aggregation: the probability that a station drops its
    /// connection at a random protocol stage of a round (and reconnects).
    pub station_dropout: f64,
}

/// A finished round of a QUIC federation.
#[derive(Clone, Debug)]
pub struct QuicRound {
    /// The server engine's record.
    pub metrics: RoundMetrics,
    /// Training times measured at the stations.
    pub timing: RoundTiming,
    /// The global model after the round (when kept).
    pub global: Option<Arc<Params>>,
}

/// The outcome of a QUIC federation.
#[derive(Clone, Debug)]
pub struct QuicRun {
    /// How the server's run ended.
    pub summary: Summary,
    /// Every round.
    pub rounds: Vec<QuicRound>,
    /// Seconds from binding the server to its last round.
    pub seconds: f64,
}

/// Counting semaphore for blocking threads: at most `permits` closures run
/// at once (stations training at the same time).
#[derive(Debug)]
pub struct Gate {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Gate {
    /// A gate letting `permits` (at least 1) through at once.
    pub fn new(permits: usize) -> Self {
        Gate {
            free: Mutex::new(permits.max(1)),
            cv: Condvar::new(),
        }
    }

    /// Runs `f` once a permit is free.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            while *free == 0 {
                free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
            }
            *free -= 1;
        }
        let out = f();
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_one();
        out
    }
}

/// Training seconds by round: (slowest, sum).
type FitTimes = Arc<Mutex<BTreeMap<u64, (f64, f64)>>>;

/// A station's learner behind the shared gate, timing each fit.
struct Gated {
    inner: Arc<dyn Learner>,
    gate: Arc<Gate>,
    times: FitTimes,
}

impl Learner for Gated {
    fn fit(&self, ins: &FitIns) -> fedcrime_station::Result<FitRes> {
        let round = ins.round;
        let (res, secs) = self.gate.run(|| {
            let t0 = Instant::now();
            let res = self.inner.fit(ins);
            (res, t0.elapsed().as_secs_f64())
        });
        if let Ok(mut t) = self.times.lock() {
            let e = t.entry(round).or_insert((0.0, 0.0));
            e.0 = e.0.max(secs);
            e.1 += secs;
        }
        res
    }

    fn evaluate(&self, ins: &EvaluateIns) -> fedcrime_station::Result<EvaluateRes> {
        self.gate.run(|| self.inner.evaluate(ins))
    }

    fn param_spec(&self, model: &ModelConfig) -> fedcrime_station::Result<Arc<ParamSpec>> {
        self.gate.run(|| self.inner.param_spec(model))
    }
}

/// Hands the client its station's learner once the Welcome's run matches
/// the study's architecture.
struct Fixed {
    learner: Arc<dyn Learner>,
    model: ModelConfig,
}

impl LearnerFactory for Fixed {
    fn learner(&self, setup: &RunSetup) -> Result<Arc<dyn Learner>, StationError> {
        let (a, b) = (&setup.model, &self.model);
        let same = a.kind == b.kind
            && a.task == b.task
            && a.input_dim == b.input_dim
            && a.output_dim == b.output_dim
            && a.hidden == b.hidden
            && a.layers == b.layers
            && a.seq_steps == b.seq_steps
            && a.seq_dim == b.seq_dim;
        if !same {
            return Err(StationError::Setup(format!(
                "the server runs a {} {}x{} model for {} inputs, the study a {} {}x{} model for {}",
                a.kind, a.layers, a.hidden, a.input_dim, b.kind, b.layers, b.hidden, b.input_dim
            )));
        }
        Ok(self.learner.clone())
    }
}

/// Generates the PKI: a CA, the server certificate and one certificate per station.
fn make_pki(dir: &Path, stations: &[StationId]) -> Result<Pki> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let now = time::OffsetDateTime::now_utc();
    let mut pki = Pki::generate(dir, 0, &PkiOptions::new(now, 30))
        .with_context(|| format!("generating a PKI in {}", dir.display()))?;
    for id in stations {
        pki.add_station(Some(id.as_str()), Validity::days_from(now, 30), now)
            .with_context(|| format!("issuing the certificate of station {id}"))?;
    }
    Ok(pki)
}

/// The update-signing key `fedcrime-certs` issued to station `id`.
fn station_signing_key(pki: &Path, id: &StationId) -> Result<fedcrime_audit::SigningKey> {
    let path = pki.join(fedcrime_net::pki_layout::station_signing_key(id.as_str()));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(fedcrime_audit::SigningKey::from_pkcs8_pem(
        &text,
        &path.display().to_string(),
    )?)
}

/// The server's audit-log public key of the study's PKI.
fn audit_public_key(pki: &Path) -> Result<fedcrime_audit::PublicKey> {
    let path = pki.join(fedcrime_net::pki_layout::AUDIT_PUB);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(fedcrime_audit::PublicKey::from_text(
        text.trim(),
        &path.display().to_string(),
    )?)
}

/// The model section describing `model`'s layout (its parameters are handed
/// to the server as a value).
fn model_section(model: &ModelConfig) -> ModelSection {
    ModelSection {
        kind: model.kind,
        hidden: Some(model.hidden),
        layers: Some(model.layers),
        dropout: Some(model.dropout),
        count_loss: Some(model.count_loss),
        static_features: Some(model.static_features),
        initial: None,
    }
}

/// The server's config for the study: loopback, the study's task, layout,
/// engine settings and strategy; outputs under `server_dir`, keeping every
/// round's checkpoint when the study scores each global model.
fn server_config(setup: &QuicSetup<'_>, pki: &Pki, server_dir: PathBuf) -> ServerConfig {
    let mut config = ServerConfig::new(ServerTls::from_pki_dir(pki.dir()));
    config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    config.run_id = Some("fedcrime-sim".into());
    // Every station of a study runs in this process and stops with the run.
    config.linger_s = 0.0;
    config.task = TaskSection {
        task: setup.task.task,
        period: setup.task.period,
        lags: setup.task.lags,
        split: setup.task.split,
        featurizer: None,
    };
    config.model = model_section(setup.model);
    config.federation = setup.engine.clone();
    config.privacy = setup.engine.privacy.clone();
    // A study keeps the audit log and demands signed updates only when
    // asked (`federation.audit`), to measure what they cost.
    config.audit.enabled = setup.engine.audit;
    config.audit.require_signed_updates = setup.engine.audit;
    config.train = TrainSection::from(&setup.engine.train);
    config.strategy = setup.strategy.clone();
    config.output = OutputSection {
        dir: server_dir,
        checkpoint_dir: None,
        keep_checkpoints: if setup.keep_globals {
            usize::try_from(setup.engine.rounds)
                .unwrap_or(usize::MAX)
                .max(1)
        } else {
            1
        },
    };
    config
}

/// The study's rounds from the server's history, with the stations' fit
/// times and, when `checkpoints` is given, each round's global model read
/// back from it.
fn rounds_of(
    history: Vec<RoundMetrics>,
    times: &BTreeMap<u64, (f64, f64)>,
    checkpoints: Option<&Path>,
) -> Result<Vec<QuicRound>> {
    let store = checkpoints.map(CheckpointStore::new);
    let mut out = Vec::with_capacity(history.len());
    for m in history {
        let (slowest, total) = times.get(&m.round).copied().unwrap_or((0.0, 0.0));
        let global = match (&store, checkpoints) {
            (Some(store), Some(dir)) => {
                let c = store.load_round(m.round).with_context(|| {
                    format!(
                        "reading the checkpoint of round {} in {}",
                        m.round,
                        dir.display()
                    )
                })?;
                Some(c.global)
            }
            _ => None,
        };
        out.push(QuicRound {
            timing: RoundTiming {
                elapsed_s: m.started_s + m.round_s,
                slowest_fit_s: slowest,
                total_fit_s: total,
            },
            metrics: m,
            global,
        });
    }
    Ok(out)
}

/// Runs the federation; see the [module docs](self).
pub fn run(setup: QuicSetup<'_>) -> Result<QuicRun> {
    let dir = setup.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ids: Vec<StationId> = setup.stations.iter().map(|(id, _)| id.clone()).collect();
    let pki = make_pki(&dir.join("pki"), &ids)?;

    let server_dir = dir.join("server");
    if server_dir.exists() {
        std::fs::remove_dir_all(&server_dir)
            .with_context(|| format!("clearing {}", server_dir.display()))?;
    }
    let rounds = setup.engine.rounds;
    let audit = setup.engine.audit;
    let (dropout, dropout_seed) = (setup.station_dropout, setup.engine.seed);
    let config = server_config(&setup, &pki, server_dir);
    let checkpoint_dir = config.output.checkpoint_dir();

    let gate = Arc::new(Gate::new(setup.concurrency));
    let times: FitTimes = Arc::new(Mutex::new(BTreeMap::new()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(super::config::cores().max(2))
        .thread_name("fedcrime-quic")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let bar = setup.bar.clone();
    let model = setup.model.clone();
    let fit_times = times.clone();
    let stations = setup.stations;
    let initial = setup.initial.clone();
    let featurizer = setup.featurizer.cloned();
    let evaluator = setup.evaluator;
    let board = setup.board;
    let report = runtime.block_on(async move {
        let t0 = Instant::now();
        let mut server = Server::builder(config).initial(initial);
        if let Some(f) = featurizer {
            server = server.featurizer(f);
        }
        if let Some(e) = evaluator {
            server = server.evaluator(e);
        }
        if let Some(b) = board {
            server = server.board(b);
        }
        let server = server.bind().await.context("starting the server")?;
        let addr = server.local_addr()?;
        let mut progress = server.progress();
        let bar_task = tokio::spawn(async move {
            while progress.changed().await.is_ok() {
                let p = progress.borrow().clone();
                bar.set_position(p.round.saturating_sub(1).min(rounds));
                if p.finished {
                    break;
                }
            }
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut clients = tokio::task::JoinSet::new();
        for (i, (id, learner)) in stations.into_iter().enumerate() {
            let tls = ClientTls::from_pki_dir(pki.dir(), id.as_str(), SERVER_NAME);
            let connector = Connector::new(
                &tls,
                &TransportSettings::default(),
                addr,
                ReconnectPolicy::default(),
                i as u64,
            )
            .with_context(|| format!("the connector of station {id}"))?;
            let factory = Fixed {
                learner: Arc::new(Gated {
                    inner: learner,
                    gate: gate.clone(),
                    times: fit_times.clone(),
                }),
                model: model.clone(),
            };
            let options = ClientOptions {
                seed: i as u64,
                signing_key: match audit {
                    true => Some(Arc::new(station_signing_key(pki.dir(), &id)?)),
                    false => None,
                },
                // Each station keeps the tree heads it is sent, as a
                // precinct would: `fedcrime-client audit check --heads`.
                tree_heads: match audit {
                    true => Some(fedcrime_client::TreeHeads {
                        server_key: audit_public_key(pki.dir())?,
                        path: pki
                            .dir()
                            .join(fedcrime_net::pki_layout::STATIONS_DIR)
                            .join(format!("{id}.tree-heads.jsonl")),
                    }),
                    false => None,
                },
                secagg_dropout: (dropout > 0.0).then_some(fedcrime_client::SecAggDropout {
                    probability: dropout,
                    seed: dropout_seed,
                }),
                ..ClientOptions::default()
            };
            let mut stop = stop_rx.clone();
            clients.spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                let r = Client::new(connector, Arc::new(factory), options)
                    .run(shutdown)
                    .await;
                (id, r)
            });
        }
        let report = server.run(std::future::pending()).await;
        let seconds = t0.elapsed().as_secs_f64();
        // Stations leave on the server's Bye; stragglers are told to stop.
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            let mut failures = Vec::new();
            while let Some(joined) = clients.join_next().await {
                match joined {
                    Ok((_, Ok(r))) if r.outcome != ClientOutcome::Interrupted => {}
                    Ok((id, Ok(r))) => failures.push(format!("{id}: {:?}", r.outcome)),
                    Ok((id, Err(e))) => failures.push(format!("{id}: {e:#}")),
                    Err(e) => failures.push(format!("a station task: {e}")),
                }
            }
            failures
        })
        .await;
        let _ = stop_tx.send(true);
        clients.abort_all();
        bar_task.abort();
        let report = report.context("the server failed")?;
        match waited {
            Ok(failures) if !failures.is_empty() => {
                tracing::warn!(
                    "stations that did not finish cleanly: {}",
                    failures.join("; ")
                );
            }
            Ok(_) => {}
            Err(_) => tracing::warn!("stations still running 10 s after the server finished"),
        }
        anyhow::Ok((report, seconds))
    })?;
    let (report, seconds) = report;
    runtime.shutdown_timeout(Duration::from_secs(2));

    let times = times.lock().map(|t| t.clone()).unwrap_or_default();
    let out = rounds_of(
        report.history,
        &times,
        setup.keep_globals.then_some(checkpoint_dir.as_path()),
    )?;
    if out.is_empty() && rounds > 0 {
        bail!(
            "the server completed no round: {:?}",
            report.summary.outcome
        );
    }
    Ok(QuicRun {
        summary: report.summary,
        rounds: out,
        seconds,
    })
}
