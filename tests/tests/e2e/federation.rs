//! Federations over real QUIC with mutual TLS on 127.0.0.1: an aggregation
//! server and several stations in one process, a PKI generated per test,
//! small LA-like synthetic data (6 weeks), a small model, so each test takes
//! seconds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedcrime_certs::{Pki, PkiOptions};
use fedcrime_client::config::{Areas, TlsSection};
use fedcrime_client::{
    Client, ClientOptions, ClientOutcome, ClientReport, DataStation, LearnerFactory, StationConfig,
};
use fedcrime_data::synth::{generate, generate_incidents_with};
use fedcrime_data::{Incident, SynthConfig};
use fedcrime_fl::strategy::weighted_average;
use fedcrime_fl::{
    CheckpointStore, EvaluateIns, EvaluateRes, FailureKind, FitIns, FitRes, Metrics, Outcome,
    RoundSettings,
};
use fedcrime_ml::model;
use fedcrime_ml::train::{TrainConfig, Trainer};
use fedcrime_net::{ClientTls, Connector, ReconnectPolicy, ServerTls, TransportSettings};
use fedcrime_params::{ParamSpec, Params};
use fedcrime_server::{Progress, RunReport, Server, ServerConfig, ServerError};
use fedcrime_station::data::{prepare, Selection};
use fedcrime_station::protocol::RunSetup;
use fedcrime_station::{Learner, StationError};
use fedcrime_wire::{
    Bye, ByeReason, Capabilities, Encoding, Hello, Message, ModelHeader, Received, Update,
    UpdateKind, WireConfig, WireReader, WireWriter,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const SEED: u64 = 11;

fn make_pki(dir: &Path, stations: usize) -> PathBuf {
    let pki = dir.join("pki");
    Pki::generate(
        &pki,
        stations,
        &PkiOptions::new(time::OffsetDateTime::now_utc(), 30),
    )
    .unwrap();
    pki
}

fn station(i: usize) -> String {
    fedcrime_certs::station_name(i)
}

fn synth_config() -> SynthConfig {
    let mut cfg = SynthConfig::new(8_000, 5);
    cfg.days = 42;
    cfg
}

fn incidents() -> Vec<Incident> {
    generate_incidents_with(&synth_config()).unwrap().incidents
}

fn fast_transport() -> TransportSettings {
    TransportSettings {
        keep_alive_ms: 1_000,
        idle_timeout_ms: 10_000,
        handshake_timeout_ms: 2_000,
        ..TransportSettings::default()
    }
}

fn fast_reconnect() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_delay_ms: 50,
        max_delay_ms: 400,
        ..ReconnectPolicy::default()
    }
}

/// A small, deterministic run: dnn 16 x 2 without dropout, all stations
/// sampled, FedAvg.
fn server_config(pki: &Path, out: &Path, rounds: u64, stations: usize) -> ServerConfig {
    let mut c = ServerConfig::new(ServerTls::from_pki_dir(pki));
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.model.hidden = Some(16);
    c.model.layers = Some(2);
    c.model.dropout = Some(0.0);
    c.federation.rounds = rounds;
    c.federation.min_stations = stations;
    c.federation.min_fit = stations;
    c.federation.min_updates = stations;
    c.federation.round_deadline = Duration::from_secs(60);
    c.federation.evaluate_deadline = Duration::from_secs(60);
    c.federation.eval_every = 0;
    c.federation.seed = SEED;
    c.train.epochs = Some(1);
    c.train.batch_size = 32;
    c.train.lr = 0.01;
    c.output.dir = out.to_path_buf();
    c.transport = fast_transport();
    c
}

struct Running {
    addr: SocketAddr,
    progress: watch::Receiver<Progress>,
    /// Dropping or sending on it stops the server.
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<fedcrime_server::Result<RunReport>>,
}

impl Running {
    async fn start(cfg: ServerConfig) -> Running {
        let server = Server::bind(cfg).await.unwrap();
        let addr = server.local_addr().unwrap();
        let progress = server.progress();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            progress,
            stop: Some(stop),
            handle,
        }
    }

    /// Waits for the run to end on its own.
    async fn finish(self) -> RunReport {
        let report = tokio::time::timeout(Duration::from_secs(120), self.handle)
            .await
            .expect("the run ends")
            .unwrap()
            .unwrap();
        drop(self.stop);
        report
    }
}

fn connector(pki: &Path, name: &str, addr: SocketAddr) -> Connector {
    let tls = ClientTls::from_pki_dir(pki, name, "localhost");
    Connector::new(&tls, &fast_transport(), addr, fast_reconnect(), 1).unwrap()
}

fn spawn_client(
    pki: &Path,
    name: &str,
    addr: SocketAddr,
    factory: Arc<dyn LearnerFactory>,
) -> JoinHandle<fedcrime_client::Result<ClientReport>> {
    spawn_client_until(pki, name, addr, factory, std::future::pending())
}

fn spawn_client_until(
    pki: &Path,
    name: &str,
    addr: SocketAddr,
    factory: Arc<dyn LearnerFactory>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<fedcrime_client::Result<ClientReport>> {
    let options = ClientOptions {
        reconnect: fast_reconnect(),
        handshake_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    spawn_with_options(pki, name, addr, factory, options, shutdown)
}

/// The update-signing key `fedcrime-certs` issued to station `name`.
fn signing_key(pki: &Path, name: &str) -> Arc<fedcrime_audit::SigningKey> {
    let path = pki.join(format!("stations/{name}.sign.key"));
    let text = std::fs::read_to_string(&path).unwrap();
    Arc::new(fedcrime_audit::SigningKey::from_pkcs8_pem(&text, "test").unwrap())
}

fn data_station(name: &str, incidents: &[Incident], area: u8) -> Arc<dyn LearnerFactory> {
    Arc::new(DataStation::new(
        name,
        incidents.to_vec(),
        Selection::Areas(vec![area]),
        tch::Device::Cpu,
    ))
}

async fn join_client(h: JoinHandle<fedcrime_client::Result<ClientReport>>) -> ClientReport {
    tokio::time::timeout(Duration::from_secs(60), h)
        .await
        .expect("the station stops")
        .unwrap()
        .unwrap()
}

/// `N(0, 1)` values for a layout, seeded.
fn values(spec: &ParamSpec, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..spec.total())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect()
}

/// What a scripted station does when asked to train.
enum Script {
    /// Sends seeded values with its number of examples.
    Honest,
    /// Sends a NaN among seeded values.
    NaN,
    /// Sends a matrix transposed: same size, wrong shape.
    WrongShape,
    /// Sends seeded values after this long.
    Slow(Duration),
    /// Signals that it started, then blocks until released (or 60 s).
    Hang {
        started: Mutex<std_mpsc::Sender<()>>,
        release: Mutex<std_mpsc::Receiver<()>>,
    },
}

struct Scripted {
    script: Script,
    examples: u64,
    seed: u64,
}

impl Learner for Scripted {
    fn fit(&self, ins: &FitIns) -> Result<FitRes, StationError> {
        let spec = ins.global.spec().clone();
        let mut v = values(&spec, self.seed);
        let params = match &self.script {
            Script::Honest => Params::new(spec, v).unwrap(),
            Script::Slow(t) => {
                std::thread::sleep(*t);
                Params::new(spec, v).unwrap()
            }
            Script::NaN => {
                v[3] = f32::NAN;
                Params::new(spec, v).unwrap()
            }
            Script::WrongShape => {
                let matrix = spec
                    .entries()
                    .iter()
                    .position(|e| e.shape.len() == 2 && e.shape[0] != e.shape[1])
                    .expect("the model has a non-square matrix");
                let tensors: Vec<(String, Vec<usize>)> = spec
                    .entries()
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        let mut shape = e.shape.clone();
                        if i == matrix {
                            shape.reverse();
                        }
                        (e.name.clone(), shape)
                    })
                    .collect();
                Params::new(Arc::new(ParamSpec::new(tensors).unwrap()), v).unwrap()
            }
            Script::Hang { started, release } => {
                let _ = started.lock().unwrap().send(());
                let _ = release
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(60));
                Params::new(spec, v).unwrap()
            }
        };
        Ok(FitRes {
            params: Arc::new(params),
            num_examples: self.examples,
            metrics: Metrics::from([("loss".to_string(), 1.0)]),
        })
    }

    fn evaluate(&self, _ins: &EvaluateIns) -> Result<EvaluateRes, StationError> {
        Ok(EvaluateRes {
            loss: 1.0,
            num_examples: self.examples,
            metrics: Metrics::new(),
        })
    }
}

fn scripted(script: Script, examples: u64, seed: u64) -> Arc<dyn LearnerFactory> {
    let learner: Arc<dyn Learner> = Arc::new(Scripted {
        script,
        examples,
        seed,
    });
    Arc::new(move |_: &RunSetup| Ok(learner.clone()))
}

/// Honest scripted stations 1, 2, ... with these example counts.
fn spawn_honest(pki: &Path, addr: SocketAddr, examples: &[u64]) -> Vec<ClientTask> {
    (1..=examples.len())
        .map(|i| {
            spawn_client(
                pki,
                &station(i),
                addr,
                scripted(Script::Honest, examples[i - 1], i as u64),
            )
        })
        .collect()
}

/// What [`spawn_honest`]'s stations send, with their weights.
fn honest_parts(spec: &ParamSpec, examples: &[u64]) -> Vec<(Vec<f32>, u64)> {
    (1..=examples.len())
        .map(|i| (values(spec, i as u64), examples[i - 1]))
        .collect()
}

/// `sum(n_i v_i) / sum(n_i)` in f64, rounded to f32.
fn hand_average(parts: &[(Vec<f32>, u64)]) -> Vec<f32> {
    let total: f64 = parts.iter().map(|(_, n)| *n as f64).sum();
    (0..parts[0].0.len())
        .map(|i| {
            (parts
                .iter()
                .map(|(v, n)| f64::from(v[i]) * *n as f64)
                .sum::<f64>()
                / total) as f32
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1.0),
            "value {i}: {a} vs {b}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedavg_over_three_rounds_with_four_stations_lowers_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 4);
    // The stations read a real CSV file through the full client path.
    // Three months, and the server's held-out copy defines the features
    // every station uses.
    let csv = dir.path().join("la.csv");
    let mut synth = synth_config();
    synth.days = 91;
    synth.rows = 18_000;
    generate(&synth, std::fs::File::create(&csv).unwrap()).unwrap();
    let mut cfg = server_config(&pki, &dir.path().join("out"), 3, 4);
    cfg.train.epochs = Some(2);
    cfg.federation.eval_every = 1;
    cfg.evaluation = Some(fedcrime_server::config::EvaluationSection {
        data: csv.clone(),
        split: Default::default(),
        batch_size: 4096,
    });
    let server = Running::start(cfg).await;
    let clients: Vec<_> = (1..=4)
        .map(|i| {
            let mut sc = StationConfig::new(TlsSection {
                ca: pki.join("ca.pem"),
                cert: pki.join(format!("stations/{}.pem", station(i))),
                key: pki.join(format!("stations/{}.key", station(i))),
                signing_key: Some(pki.join(format!("stations/{}.sign.key", station(i)))),
            });
            sc.server = server.addr.to_string();
            sc.data.file = Some(csv.clone());
            sc.data.area = Some(Areas::One(i as u8));
            sc.device = fedcrime_ml::DeviceChoice::Cpu;
            sc.reconnect = fast_reconnect();
            sc.transport = fast_transport();
            tokio::spawn(fedcrime_client::run(sc))
        })
        .collect();
    let report = server.finish().await;
    assert!(report.completed(), "{:?}", report.summary);
    assert_eq!(report.history.len(), 3);
    for m in &report.history {
        assert_eq!(m.completed.len(), 4, "round {}: {:?}", m.round, m.failed);
        assert!(m.aggregated);
        assert_eq!(m.eval_completed, 4);
        assert!(m.bytes_out > 0 && m.bytes_in > 0);
    }
    for m in &report.history {
        eprintln!(
            "round {}: train {:?} federated eval {:?} server eval {:?}",
            m.round, m.train_loss, m.eval_loss, m.server_eval_loss
        );
    }
    let loss =
        |r: usize, f: fn(&fedcrime_fl::RoundMetrics) -> Option<f64>| f(&report.history[r]).unwrap();
    assert!(
        loss(2, |m| m.train_loss) < loss(0, |m| m.train_loss),
        "train loss {:?}",
        report
            .history
            .iter()
            .map(|m| m.train_loss)
            .collect::<Vec<_>>()
    );
    assert!(
        loss(2, |m| m.eval_loss) < loss(0, |m| m.eval_loss),
        "evaluation loss {:?}",
        report
            .history
            .iter()
            .map(|m| m.eval_loss)
            .collect::<Vec<_>>()
    );
    assert!(
        loss(2, |m| m.server_eval_loss) < loss(0, |m| m.server_eval_loss),
        "server-side evaluation loss {:?}",
        report
            .history
            .iter()
            .map(|m| m.server_eval_loss)
            .collect::<Vec<_>>()
    );
    for c in clients {
        let r = join_client(c).await;
        assert_eq!(r.outcome, ClientOutcome::Done);
        assert_eq!((r.updates_sent, r.evaluations_sent), (3, 3));
    }
    // The outputs: metrics files, checkpoints and the final model.
    let out = dir.path().join("out");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.lines().next().unwrap().contains("overhead_s"));
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    let latest = CheckpointStore::new(out.join("checkpoints"))
        .load_latest()
        .unwrap()
        .unwrap();
    assert_eq!(latest.round, 3);
    assert_eq!(latest.global.data(), report.global.data());
    let saved = model::load_model(&out.join("model.safetensors"), tch::Device::Cpu).unwrap();
    assert_eq!(saved.0.export_params().data(), report.global.data());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_equals_the_hand_computed_weighted_average() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 3);
    let server = Running::start(server_config(&pki, &dir.path().join("out"), 1, 3)).await;
    let examples = [10u64, 30, 60];
    let clients = spawn_honest(&pki, server.addr, &examples);
    let report = server.finish().await;
    assert!(report.completed());
    let parts = honest_parts(report.global.spec(), &examples);
    assert_close(report.global.data(), &hand_average(&parts), 1e-6);
    assert_eq!(report.history[0].num_examples, 100);
    for c in clients {
        let c = join_client(c).await;
        assert_eq!(c.outcome, ClientOutcome::Done);
        assert_eq!((c.updates_sent, c.masked_updates_sent), (1, 0));
    }
}

/// Issue 17: stations dropping out at random stages of secure aggregation
/// over QUIC (closing their connection and reconnecting) do not stop the
/// run: the dropped stations' masks are recovered from the survivors'
/// shares, and every round is aggregated from the stations that stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_aggregation_over_quic_survives_stations_dropping_at_random_stages() {
    let dir = tempfile::tempdir().unwrap();
    let stations = 6;
    let pki = make_pki(dir.path(), stations);
    let mut cfg = server_config(&pki, &dir.path().join("out"), 4, stations);
    cfg.federation.min_fit = 4;
    cfg.federation.min_updates = 3;
    cfg.federation.retry.max_retries = 5;
    cfg.federation.retry.backoff = Duration::from_millis(300);
    cfg.federation.secure_aggregation = Some(fedcrime_fl::secure::SecAggConfig {
        clip_range: 4.0,
        quantization_bits: 20,
        ..Default::default()
    });
    let server = Running::start(cfg).await;
    let dropout = fedcrime_client::SecAggDropout {
        probability: 0.3,
        seed: 5,
    };
    let clients: Vec<_> = (1..=stations)
        .map(|i| {
            let options = ClientOptions {
                reconnect: fast_reconnect(),
                handshake_timeout: Duration::from_secs(10),
                seed: i as u64,
                secagg_dropout: Some(dropout),
                ..ClientOptions::default()
            };
            spawn_with_options(
                &pki,
                &station(i),
                server.addr,
                scripted(Script::Honest, 10 * i as u64, i as u64),
                options,
                std::future::pending(),
            )
        })
        .collect();
    let report = server.finish().await;
    assert!(report.completed(), "{:?}", report.summary);
    assert_eq!(report.history.len(), 4);
    for m in &report.history {
        assert!(m.aggregated, "round {}: {:?}", m.round, m.note);
        assert!(
            m.completed.len() >= 3,
            "round {}: {:?}",
            m.round,
            m.completed
        );
    }
    let mut dropped = 0;
    for c in clients {
        let r = join_client(c).await;
        // One that dropped out of the last round reconnects to a finished run.
        assert!(
            matches!(r.outcome, ClientOutcome::Done | ClientOutcome::RunFinished),
            "{:?}",
            r.outcome
        );
        dropped += r.dropouts;
    }
    // The draws of these seeds drop stations in the run's rounds.
    let expected: u64 = (1..=stations as u64)
        .map(|s| (1..=4).filter(|&r| dropout.stage(s, r).is_some()).count() as u64)
        .sum();
    assert!(
        expected > 0 && dropped > 0,
        "expected {expected}, dropped {dropped}"
    );
}

/// Issue 18: signed updates and the audit log over QUIC. Station 3 signs
/// with station 1's key (a stolen key, or station 1's update replayed by
/// station 3): the server checks each signature with the key the *sending*
/// connection's certificate binds, so station 3 is refused every round and
/// the model is the average of stations 1 and 2. The log records every
/// decision, verifies, and proves station 1's update to station 1 against
/// the tree heads it kept; a flipped byte fails verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_signed_with_another_stations_key_are_refused_and_the_log_proves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 3);
    let out = dir.path().join("out");
    let mut cfg = server_config(&pki, &out, 3, 3);
    cfg.federation.min_updates = 2;
    let server = Running::start(cfg).await;
    let server_key = fedcrime_audit::PublicKey::from_text(
        std::fs::read_to_string(pki.join("audit.pub"))
            .unwrap()
            .trim(),
        "audit.pub",
    )
    .unwrap();
    let heads = dir.path().join("station-01-heads.jsonl");
    let examples = [10u64, 30, 60];
    let clients: Vec<_> = (1..=3)
        .map(|i| {
            let options = ClientOptions {
                reconnect: fast_reconnect(),
                handshake_timeout: Duration::from_secs(10),
                // Station 3 holds station 1's key.
                signing_key: Some(signing_key(&pki, &station(if i == 3 { 1 } else { i }))),
                tree_heads: (i == 1).then(|| fedcrime_client::TreeHeads {
                    server_key,
                    path: heads.clone(),
                }),
                ..ClientOptions::default()
            };
            spawn_with_options(
                &pki,
                &station(i),
                server.addr,
                scripted(Script::Honest, examples[i - 1], i as u64),
                options,
                std::future::pending(),
            )
        })
        .collect();
    let report = server.finish().await;
    assert!(report.completed(), "{:?}", report.summary);
    for m in &report.history {
        let names: Vec<&str> = m.completed.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["station-01", "station-02"], "round {}", m.round);
        assert_eq!(
            m.failed.get(&FailureKind::BadSignature),
            Some(&1),
            "{:?}",
            m.failed
        );
    }
    let parts = honest_parts(report.global.spec(), &examples[..2]);
    assert_close(report.global.data(), &hand_average(&parts), 1e-6);
    let reports: Vec<ClientReport> = {
        let mut v = Vec::new();
        for c in clients {
            v.push(join_client(c).await);
        }
        v
    };
    assert!(reports.iter().all(|r| r.outcome == ClientOutcome::Done));
    // Station 1 kept the heads of rounds 1 and 2, and checked the second
    // against the first with the consistency proof that came with it.
    assert_eq!(
        (
            reports[0].tree_heads_kept,
            reports[0].tree_heads_proved_consistent
        ),
        (2, 1)
    );

    // The whole log verifies under the agency's key.
    let log = out.join("audit");
    let verified = fedcrime_audit::verify_log_strict(&log, Some(&server_key)).unwrap();
    assert_eq!(
        (verified.updates_accepted, verified.updates_refused),
        (6, 3)
    );
    assert_eq!(verified.heads, 4, "one head per round and one at the end");
    // Station 1 kept the heads of rounds 1 and 2 (sent with rounds 2 and 3)
    // and checks the proof of its round-2 update against them.
    let kept = fedcrime_audit::HeadStore::open(&heads)
        .unwrap()
        .heads()
        .to_vec();
    assert_eq!(kept.len(), 2);
    let bundle = fedcrime_audit::prove(&log, 2, "station-01").unwrap();
    let checked = fedcrime_audit::check_proof(&bundle, &server_key, &kept).unwrap();
    assert_eq!(checked.known_heads, 2);
    match &bundle.entry {
        fedcrime_audit::Entry::UpdateAccepted {
            update_sha256,
            signature,
            ..
        } => {
            let want = fedcrime_audit::sha256_f32(&values(report.global.spec(), 1));
            assert_eq!(*update_sha256, want);
            assert!(signature.is_some());
        }
        other => panic!("{other:?}"),
    }
    let refused = fedcrime_audit::prove(&log, 2, "station-03").unwrap();
    match &refused.entry {
        fedcrime_audit::Entry::UpdateRefused { reason, .. } => {
            assert!(reason.contains("bad_signature"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // One flipped byte anywhere in the entries is detected.
    let entries = log.join("entries.bin");
    let mut bytes = std::fs::read(&entries).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&entries, &bytes).unwrap();
    assert!(fedcrime_audit::verify_log(&log, Some(&server_key)).is_err());
}

/// Issue 17: secure aggregation over QUIC. The stations' updates travel
/// masked; the server's model after two rounds is the example-weighted
/// average all the same (within the quantization bound), and each station
/// sent one masked update per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_aggregation_over_quic_gives_the_weighted_average() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 4);
    let mut cfg = server_config(&pki, &dir.path().join("out"), 2, 4);
    // Scripted stations send values in [-1, 1] whatever the global model:
    // deltas up to 2, so a wider clip range and a finer grid.
    cfg.federation.secure_aggregation = Some(fedcrime_fl::secure::SecAggConfig {
        clip_range: 4.0,
        quantization_bits: 20,
        ..Default::default()
    });
    let server = Running::start(cfg).await;
    let examples = [10u64, 30, 60, 100];
    let clients = spawn_honest(&pki, server.addr, &examples);
    let report = server.finish().await;
    assert!(report.completed());
    let parts = honest_parts(report.global.spec(), &examples);
    // Round 1 weighs 10..100 examples against a scale of 1,000 (sum 0.2):
    // 4 steps of 8 / (2^20 - 1) over 0.2 bound the error of the mean.
    assert_close(report.global.data(), &hand_average(&parts), 2e-4);
    for r in &report.history {
        assert_eq!(r.completed.len(), 4);
        assert_eq!(r.num_examples, 200);
    }
    for c in clients {
        let c = join_client(c).await;
        assert_eq!(c.outcome, ClientOutcome::Done);
        assert_eq!((c.updates_sent, c.masked_updates_sent), (2, 2));
    }
    // Each masked input went out signed; the log holds its hash and
    // signature (the server never saw the plaintext update).
    let log = dir.path().join("out/audit");
    let verified = fedcrime_audit::verify_log_strict(&log, None).unwrap();
    assert_eq!(
        (verified.updates_accepted, verified.updates_refused),
        (8, 0)
    );
    match fedcrime_audit::prove(&log, 2, "station-03").unwrap().entry {
        fedcrime_audit::Entry::UpdateAccepted {
            signature,
            num_examples,
            ..
        } => assert!(signature.is_some() && num_examples == 60),
        other => panic!("{other:?}"),
    }
}

type ClientTask = JoinHandle<fedcrime_client::Result<ClientReport>>;

/// The stations of a run with one that hangs in training: the honest
/// clients, the hanging one, its "started training" signal and its release.
struct WithHang {
    clients: Vec<ClientTask>,
    victim: ClientTask,
    started: std_mpsc::Receiver<()>,
    release: std_mpsc::Sender<()>,
}

/// Starts `honest` scripted stations and one that hangs in training.
fn with_a_hanging_station(pki: &Path, addr: SocketAddr, honest: usize) -> WithHang {
    with_a_hanging_station_until(pki, addr, honest, std::future::pending())
}

/// [`with_a_hanging_station`] whose hanging station stops when `shutdown` completes.
fn with_a_hanging_station_until(
    pki: &Path,
    addr: SocketAddr,
    honest: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> WithHang {
    let clients = (1..=honest)
        .map(|i| {
            spawn_client(
                pki,
                &station(i),
                addr,
                scripted(Script::Honest, 10, i as u64),
            )
        })
        .collect();
    let (started_tx, started) = std_mpsc::channel();
    let (release, release_rx) = std_mpsc::channel();
    let victim = spawn_client_until(
        pki,
        &station(honest + 1),
        addr,
        scripted(
            Script::Hang {
                started: Mutex::new(started_tx),
                release: Mutex::new(release_rx),
            },
            10,
            99,
        ),
        shutdown,
    );
    WithHang {
        clients,
        victim,
        started,
        release,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_killed_mid_round_does_not_stall_the_round() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 4);
    let mut cfg = server_config(&pki, &dir.path().join("out"), 1, 4);
    cfg.federation.min_updates = 3;
    let server = Running::start(cfg).await;
    let WithHang {
        clients,
        victim,
        started,
        release,
    } = with_a_hanging_station(&pki, server.addr, 3);
    // Kill the station while it trains.
    tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the victim starts training");
    victim.abort();
    let report = server.finish().await;
    drop(release);
    assert!(report.completed(), "{:?}", report.summary);
    let m = &report.history[0];
    assert!(m.aggregated);
    assert_eq!(m.completed.len(), 3);
    assert_eq!(
        m.failed.get(&FailureKind::Disconnected),
        Some(&1),
        "{:?}",
        m.failed
    );
    // Well before the 60 s deadline.
    assert!(m.round_s < 20.0, "round took {} s", m.round_s);
    for c in clients {
        assert_eq!(join_client(c).await.outcome, ClientOutcome::Done);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_stopped_mid_round_says_goodbye_and_the_round_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 4);
    let mut cfg = server_config(&pki, &dir.path().join("out"), 1, 4);
    cfg.federation.min_updates = 3;
    let server = Running::start(cfg).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let WithHang {
        clients,
        victim,
        started,
        release,
    } = with_a_hanging_station_until(&pki, server.addr, 3, async move {
        let _ = stopped.await;
    });
    tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the station starts training");
    // Ctrl-C at the station: it says goodbye instead of vanishing.
    stop.send(()).unwrap();
    let victim = join_client(victim).await;
    assert_eq!(victim.outcome, ClientOutcome::Interrupted);
    assert_eq!(victim.updates_sent, 0);
    let report = server.finish().await;
    drop(release);
    let m = &report.history[0];
    assert_eq!(m.completed.len(), 3);
    assert_eq!(
        m.failed.get(&FailureKind::Disconnected),
        Some(&1),
        "{:?}",
        m.failed
    );
    assert!(m.round_s < 20.0, "round took {} s", m.round_s);
    for c in clients {
        assert_eq!(join_client(c).await.outcome, ClientOutcome::Done);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_station_is_timed_out_and_the_round_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 4);
    let mut cfg = server_config(&pki, &dir.path().join("out"), 1, 4);
    cfg.federation.min_updates = 3;
    cfg.federation.round_deadline = Duration::from_millis(1500);
    let server = Running::start(cfg).await;
    let WithHang {
        clients,
        victim,
        release,
        ..
    } = with_a_hanging_station(&pki, server.addr, 3);
    let report = server.finish().await;
    drop(release);
    assert!(report.completed(), "{:?}", report.summary);
    let m = &report.history[0];
    assert_eq!(m.completed.len(), 3);
    assert_eq!(
        m.failed.get(&FailureKind::Timeout),
        Some(&1),
        "{:?}",
        m.failed
    );
    for c in clients {
        assert_eq!(join_client(c).await.outcome, ClientOutcome::Done);
    }
    assert_eq!(join_client(victim).await.outcome, ClientOutcome::Done);
}

/// A station speaking the protocol by hand: it answers the first round with
/// an update for the previous round, then leaves.
async fn stale_station(pki: PathBuf, name: String, addr: SocketAddr) {
    let connector = connector(&pki, &name, addr);
    let conn = connector.connect().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut w = WireWriter::new(send, WireConfig::default());
    let mut r = WireReader::new(recv, WireConfig::default());
    let hello = Hello::new(
        "stale-station",
        Capabilities {
            encodings: Encoding::ALL.to_vec(),
            device: "cpu".into(),
            extensions: Default::default(),
        },
    );
    w.send(&Message::Hello(hello), None).await.unwrap();
    assert!(matches!(
        r.recv_message().await.unwrap(),
        Some(Message::Welcome(_))
    ));
    loop {
        match r.recv(None).await.unwrap() {
            Some(Received {
                message: Message::RoundStart(rs),
                params: Some(p),
            }) => {
                let update = Update {
                    round: rs.round - 1,
                    kind: UpdateKind::Full,
                    num_examples: 10,
                    metrics: Metrics::new(),
                    train_seconds: 0.0,
                    model: ModelHeader::describe(&p, Encoding::F32).unwrap(),
                };
                w.send(&Message::Update(update), Some(&p)).await.unwrap();
                break;
            }
            Some(_) => continue,
            None => panic!("the server closed the stream"),
        }
    }
    let bye = Bye {
        reason: ByeReason::Shutdown,
        text: "done cheating".into(),
    };
    w.send(&Message::Bye(bye), None).await.unwrap();
    let _ = w.get_mut().finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_wrong_shapes_and_stale_rounds_are_refused_while_the_others_are_aggregated() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 5);
    let mut cfg = server_config(&pki, &dir.path().join("out"), 1, 5);
    cfg.federation.min_updates = 2;
    let server = Running::start(cfg).await;
    let honest = [(1usize, 20u64), (2, 40)];
    let mut clients: Vec<_> = honest
        .iter()
        .map(|&(i, n)| {
            spawn_client(
                &pki,
                &station(i),
                server.addr,
                scripted(Script::Honest, n, i as u64),
            )
        })
        .collect();
    clients.push(spawn_client(
        &pki,
        &station(3),
        server.addr,
        scripted(Script::NaN, 50, 3),
    ));
    clients.push(spawn_client(
        &pki,
        &station(4),
        server.addr,
        scripted(Script::WrongShape, 50, 4),
    ));
    let stale = tokio::spawn(stale_station(pki.clone(), station(5), server.addr));
    let report = server.finish().await;
    stale.await.unwrap();
    assert!(report.completed(), "{:?}", report.summary);
    let m = &report.history[0];
    assert!(m.aggregated);
    assert_eq!(
        m.completed
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        vec![station(1), station(2)]
    );
    for kind in [
        FailureKind::NonFinite,
        FailureKind::SpecMismatch,
        FailureKind::StaleRound,
    ] {
        assert_eq!(m.failed.get(&kind), Some(&1), "{kind}: {:?}", m.failed);
    }
    let spec = report.global.spec();
    let parts: Vec<(Vec<f32>, u64)> = honest
        .iter()
        .map(|&(i, n)| (values(spec, i as u64), n))
        .collect();
    assert_close(report.global.data(), &hand_average(&parts), 1e-6);
    for c in clients {
        assert_eq!(join_client(c).await.outcome, ClientOutcome::Done);
    }
}

/// A learner whose training of one round waits until a gate opens.
struct Gated {
    inner: Arc<dyn Learner>,
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
    round: u64,
}

impl Learner for Gated {
    fn fit(&self, ins: &FitIns) -> Result<FitRes, StationError> {
        if ins.round == self.round {
            let (open, cv) = &*self.gate;
            let guard = open.lock().unwrap();
            let _ = cv
                .wait_timeout_while(guard, Duration::from_secs(60), |open| !*open)
                .unwrap();
        }
        self.inner.fit(ins)
    }

    fn evaluate(&self, ins: &EvaluateIns) -> Result<EvaluateRes, StationError> {
        self.inner.evaluate(ins)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_resumes_round_three_from_round_two() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 3);
    let data = incidents();
    let out = dir.path().join("out");
    let cfg = server_config(&pki, &out, 3, 3);
    let first = Running::start(cfg.clone()).await;
    let addr = first.addr;
    // Round 3 training waits for the gate, so the first server is surely
    // stopped after round 2 and before round 3 completes.
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let clients: Vec<_> = (1..=3)
        .map(|i| {
            let inner = data_station(&station(i), &data, i as u8);
            let gate = gate.clone();
            let factory: Arc<dyn LearnerFactory> = Arc::new(move |setup: &RunSetup| {
                let learner: Arc<dyn Learner> = Arc::new(Gated {
                    inner: inner.learner(setup)?,
                    gate: gate.clone(),
                    round: 3,
                });
                Ok(learner)
            });
            spawn_client(&pki, &station(i), addr, factory)
        })
        .collect();
    // Stop the server once round 2 is checkpointed.
    let mut progress = first.progress.clone();
    progress.wait_for(|p| p.checkpointed >= 2).await.unwrap();
    let _ = first.stop.unwrap().send(());
    let stopped = first.handle.await.unwrap().unwrap();
    assert!(!stopped.completed());
    assert_eq!(stopped.summary.rounds_completed, 2);
    let round2 = CheckpointStore::new(out.join("checkpoints"))
        .load_latest()
        .unwrap()
        .unwrap();
    assert_eq!(round2.round, 2);
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();

    // Restart on the same address with --resume; the stations reconnect.
    let mut cfg2 = cfg.clone();
    cfg2.listen = addr;
    cfg2.resume = true;
    let mut second = None;
    for _ in 0..50 {
        match Server::bind(cfg2.clone()).await {
            Ok(s) => {
                second = Some(s);
                break;
            }
            Err(e) => {
                eprintln!("rebinding: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let second = second.expect("the address is free again");
    let report = tokio::time::timeout(Duration::from_secs(60), second.run(std::future::pending()))
        .await
        .expect("the resumed run ends")
        .unwrap();
    assert!(report.completed(), "{:?}", report.summary);
    assert_eq!(
        report.history.iter().map(|m| m.round).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for c in clients {
        let r = join_client(c).await;
        assert_eq!(r.outcome, ClientOutcome::Done);
        assert_eq!(r.sessions, 2);
    }
    let rounds: Vec<u64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["round"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(rounds, vec![1, 2, 3]);

    // Round 3 by hand from round 2's model: the same stations, trained in
    // memory with round 3's settings, averaged by their examples.
    let setup = RunSetup {
        model: cfg.model_config().unwrap(),
        task: cfg.task.task_config(),
        featurizer: None,
    };
    let engine = cfg.engine_config();
    let ins = FitIns {
        global: round2.global.clone(),
        round: 3,
        settings: Arc::new(RoundSettings {
            seed: engine.seed,
            ..engine.train
        }),
    };
    let results: Vec<FitRes> = (1..=3)
        .map(|i| {
            data_station(&station(i), &data, i as u8)
                .learner(&setup)
                .unwrap()
                .fit(&ins)
                .unwrap()
        })
        .collect();
    let expected = weighted_average("fedavg", &round2.global, &results).unwrap();
    assert_close(report.global.data(), expected.data(), 1e-5);
}

/// Issue 11, defect 6: stations printed "the run is complete" and exited 0
/// when the server had aborted the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stations_print_the_run_is_complete_when_the_server_aborted_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 1);
    let mut cfg = server_config(&pki, &dir.path().join("out"), 3, 1);
    // The only station's update is refused (NaN) and no retry is allowed:
    // round 1 ends without an update and the run is aborted.
    cfg.federation.retry.max_retries = 0;
    let server = Running::start(cfg).await;
    let client = spawn_client(&pki, &station(1), server.addr, scripted(Script::NaN, 10, 1));
    let report = server.finish().await;
    assert!(
        matches!(report.summary.outcome, Outcome::Aborted { round: 1, .. }),
        "{:?}",
        report.summary.outcome
    );
    assert_eq!(join_client(client).await.outcome, ClientOutcome::Aborted);
}

fn spawn_with_options(
    pki: &Path,
    name: &str,
    addr: SocketAddr,
    factory: Arc<dyn LearnerFactory>,
    mut options: ClientOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<fedcrime_client::Result<ClientReport>> {
    // Stations sign their updates, as the server requires by default.
    if options.signing_key.is_none() {
        options.signing_key = Some(signing_key(pki, name));
    }
    let client = Client::new(connector(pki, name, addr), factory, options);
    tokio::spawn(client.run(shutdown))
}

async fn wait_for(progress: &mut watch::Receiver<Progress>, what: impl Fn(&Progress) -> bool) {
    tokio::time::timeout(Duration::from_secs(30), progress.wait_for(|p| what(p)))
        .await
        .expect("in time")
        .expect("the server runs");
}

/// Issue 11, defect 1: two processes with the same station certificate
/// replaced each other's connection every 200-300 ms until the server
/// aborted the run. Now the first keeps its session, the second is refused
/// (as often as it tries) and stands by, and the run completes with every
/// update of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_1_two_processes_with_one_certificate_replace_each_other_until_the_run_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 2);
    let mut cfg = server_config(&pki, &dir.path().join("out"), 6, 2);
    cfg.federation.retry.max_retries = 0;
    let mut server = Running::start(cfg).await;
    let slow = Duration::from_millis(300);
    let first = spawn_client(
        &pki,
        &station(1),
        server.addr,
        scripted(Script::Slow(slow), 10, 1),
    );
    let other = spawn_client(
        &pki,
        &station(2),
        server.addr,
        scripted(Script::Slow(slow), 10, 2),
    );
    wait_for(&mut server.progress, |p| p.connected == 2).await;
    let (stop_dup, dup_stopped) = oneshot::channel::<()>();
    let duplicate = spawn_with_options(
        &pki,
        &station(1),
        server.addr,
        scripted(Script::Honest, 10, 9),
        ClientOptions {
            reconnect: fast_reconnect(),
            standby: Duration::from_millis(150),
            ..ClientOptions::default()
        },
        async move {
            let _ = dup_stopped.await;
        },
    );
    let report = server.finish().await;
    assert!(report.completed(), "{:?}", report.summary);
    assert_eq!(report.history.len(), 6);
    for m in &report.history {
        assert!(m.failed.is_empty(), "round {}: {:?}", m.round, m.failed);
        assert_eq!(m.completed.len(), 2, "round {}", m.round);
    }
    assert_eq!(join_client(first).await.outcome, ClientOutcome::Done);
    assert_eq!(join_client(other).await.outcome, ClientOutcome::Done);
    let _ = stop_dup.send(());
    let dup = join_client(duplicate).await;
    assert_eq!(dup.sessions, 0, "the duplicate never got in");
    assert_eq!(dup.updates_sent, 0);
}

/// Issue 11, defect 11: a revoked station that was already connected kept
/// contributing until it reconnected. Its session now ends when the server
/// reloads the CRL, the station stops with a clear error, and the run goes
/// on with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_11_a_revoked_connected_station_keeps_contributing() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::generate(
        &dir.path().join("pki"),
        2,
        &PkiOptions::new(time::OffsetDateTime::now_utc(), 30),
    )
    .unwrap();
    let pki_dir = pki.dir().to_path_buf();
    let mut cfg = server_config(&pki_dir, &dir.path().join("out"), 8, 2);
    cfg.tls.crl_check_interval_ms = 100;
    cfg.federation.min_stations = 1;
    cfg.federation.min_fit = 1;
    cfg.federation.min_updates = 1;
    let mut server = Running::start(cfg).await;
    let slow = Duration::from_millis(200);
    let good = spawn_client(
        &pki_dir,
        &station(1),
        server.addr,
        scripted(Script::Slow(slow), 10, 1),
    );
    let bad = spawn_client(
        &pki_dir,
        &station(2),
        server.addr,
        scripted(Script::Slow(slow), 10, 2),
    );
    wait_for(&mut server.progress, |p| p.connected == 2 && p.round >= 2).await;
    pki.revoke(
        &station(2),
        fedcrime_certs::RevocationReason::KeyCompromise,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let revoked_at = server.progress.borrow().round;
    let err = tokio::time::timeout(Duration::from_secs(10), bad)
        .await
        .expect("the revoked station stops")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, fedcrime_client::ClientError::Revoked(_)),
        "{err}"
    );
    let report = server.finish().await;
    assert!(report.completed(), "{:?}", report.summary);
    let name = station(2);
    let last_with_revoked = report
        .history
        .iter()
        .filter(|m| m.completed.iter().any(|s| s.as_str() == name))
        .map(|m| m.round)
        .max()
        .unwrap_or(0);
    assert!(
        last_with_revoked <= revoked_at + 1,
        "revoked in round {revoked_at}, still aggregated in round {last_with_revoked}"
    );
    assert_eq!(join_client(good).await.outcome, ClientOutcome::Done);
}

/// Issue 11, defect 11: a station connecting after the run ended retried
/// for ever. The server now stays up (up to `linger_s`) while a station
/// that took part is away, tells it the run is over when it comes back,
/// and then exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_11_a_station_connecting_after_the_run_ended_retries_for_ever() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 2);
    let mut cfg = server_config(&pki, &dir.path().join("out"), 4, 2);
    cfg.federation.min_stations = 1;
    cfg.federation.min_fit = 1;
    cfg.federation.min_updates = 1;
    cfg.linger_s = 60.0;
    let server = Running::start(cfg).await;
    let slow = Duration::from_millis(200);
    let stay = spawn_client(
        &pki,
        &station(1),
        server.addr,
        scripted(Script::Slow(slow), 10, 1),
    );
    let mut progress = server.progress.clone();
    let away = spawn_client_until(
        &pki,
        &station(2),
        server.addr,
        scripted(Script::Slow(slow), 10, 2),
        async move {
            let _ = progress.wait_for(|p| p.round >= 2).await;
        },
    );
    assert_eq!(join_client(away).await.outcome, ClientOutcome::Interrupted);
    // The run ends without station 2.
    assert_eq!(join_client(stay).await.outcome, ClientOutcome::Done);
    let back = spawn_client(
        &pki,
        &station(2),
        server.addr,
        scripted(Script::Honest, 10, 2),
    );
    assert_eq!(join_client(back).await.outcome, ClientOutcome::RunFinished);
    let t = std::time::Instant::now();
    let report = server.finish().await;
    assert!(report.completed());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the server stopped waiting once told: {:?}",
        t.elapsed()
    );
}

/// Issue 11, defect 10: a missing CA, CRL or initial model exited 1 though
/// the README promises 2 for a bad configuration; such errors are set-up
/// errors now, which the binaries map to exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ca_exits_1_though_the_readme_promises_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-pki");
    let cfg = server_config(&missing, &dir.path().join("out"), 1, 1);
    let err = Server::bind(cfg).await.map(|_| ()).unwrap_err();
    assert!(err.is_setup(), "{err}");
    let mut cfg = server_config(&make_pki(dir.path(), 1), &dir.path().join("out2"), 1, 1);
    cfg.model.initial = Some(dir.path().join("no-such-model.safetensors"));
    let err = Server::bind(cfg).await.map(|_| ()).unwrap_err();
    assert!(err.is_setup(), "{err}");
    let text = fedcrime_cli::logging::describe_error(&err);
    assert_eq!(text.matches("No such file").count(), 1, "said once: {text}");
}

/// Issue 11, defect 2: a new run with `--out` pointing at an existing run's
/// folder truncated its metrics.csv, and a start that failed on its TLS
/// files had already written output files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_run_with_out_pointing_at_an_existing_run_truncates_its_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 1);
    let out = dir.path().join("out");
    let cfg = server_config(&pki, &out, 1, 1);
    let server = Running::start(cfg.clone()).await;
    let c = spawn_client(
        &pki,
        &station(1),
        server.addr,
        scripted(Script::Honest, 10, 1),
    );
    assert!(server.finish().await.completed());
    join_client(c).await;
    let before = std::fs::read(out.join("metrics.csv")).unwrap();
    assert_eq!(String::from_utf8_lossy(&before).lines().count(), 2);

    // Another run into the same folder (its own checkpoint folder) is refused.
    let mut again = cfg.clone();
    again.output.checkpoint_dir = Some(dir.path().join("other-checkpoints"));
    let err = Server::bind(again.clone()).await.map(|_| ()).unwrap_err();
    assert!(matches!(err, ServerError::OutputExists { .. }), "{err}");
    assert!(err.is_setup());
    assert_eq!(std::fs::read(out.join("metrics.csv")).unwrap(), before);
    // --force replaces it.
    again.force = true;
    drop(Server::bind(again).await.unwrap());

    // A start that fails on its TLS files writes nothing.
    let fresh = dir.path().join("fresh");
    let bad = server_config(&dir.path().join("no-such-pki"), &fresh, 1, 1);
    assert!(Server::bind(bad).await.is_err());
    assert!(!fresh.join("metrics.csv").exists());
}

/// Issue 11, defect 9: an initial model containing NaN was accepted and
/// failed only later, at the stations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_model_containing_nan_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 1);
    let mut cfg = server_config(&pki, &dir.path().join("out"), 1, 1);
    let architecture = cfg.model_config().unwrap();
    let m = model::build(&architecture, tch::Device::Cpu).unwrap();
    let mut params = m.export_params();
    params.data_mut()[3] = f32::NAN;
    let file = dir.path().join("initial.safetensors");
    params.save_safetensors(&file, &Default::default()).unwrap();
    cfg.model.initial = Some(file);
    let err = Server::bind(cfg).await.map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("model.initial"), "{err}");
    assert!(err.contains("non-finite value at index 3"), "{err}");
    assert!(
        !dir.path().join("out").join("metrics.csv").exists(),
        "a refused start writes no output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedavg_with_one_station_equals_local_training() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), 1);
    let data = incidents();
    let mut cfg = server_config(&pki, &dir.path().join("out"), 2, 1);
    cfg.train.epochs = Some(2);
    // Both sides start from the same saved model.
    let architecture = cfg.model_config().unwrap();
    let m = model::build(&architecture, tch::Device::Cpu).unwrap();
    let initial = m.export_params();
    let initial_file = dir.path().join("initial.safetensors");
    model::save_model(m.as_ref(), &initial_file, &Default::default()).unwrap();
    cfg.model.initial = Some(initial_file);
    let server = Running::start(cfg.clone()).await;
    let client = spawn_client(
        &pki,
        &station(1),
        server.addr,
        data_station(&station(1), &data, 4),
    );
    let report = server.finish().await;
    assert!(report.completed());
    assert_eq!(join_client(client).await.updates_sent, 2);

    // Local training: two runs of the trainer, each from the last, with the
    // rounds' seeds.
    let splits = prepare(
        &data,
        &cfg.task.task_config(),
        None,
        &Selection::Areas(vec![4]),
    )
    .unwrap();
    let mut params = initial;
    for round in 1..=2 {
        let tc = TrainConfig {
            epochs: 2,
            batch_size: 32,
            lr: 0.01,
            seed: fedcrime_fl::round_seed(SEED, round),
            patience: 0,
            ..TrainConfig::default()
        };
        let model = model::build(&architecture, tch::Device::Cpu).unwrap();
        let mut trainer = Trainer::new(model, tc).unwrap();
        params = trainer
            .fit_from(&params, &splits.train, None)
            .unwrap()
            .params;
    }
    assert_close(report.global.data(), params.data(), 1e-6);
}

#[test]
fn example_configs_parse_and_bad_settings_name_the_field() {
    let server = ServerConfig::from_toml(
        include_str!("../../../server/server.example.toml"),
        Path::new("server.example.toml"),
    )
    .unwrap();
    server.validate().unwrap();
    assert_eq!(server.federation.rounds, 20);
    // Epochs unset: one epoch of at least 20 optimizer steps.
    let s = server.train.round_settings();
    assert_eq!((s.local_epochs, s.min_local_steps()), (1, 20));
    assert_eq!(server.tls.crl.as_deref(), Some(Path::new("pki/crl.pem")));
    // The commented explanation request, switched on, reaches the stations'
    // evaluation settings.
    let explaining = include_str!("../../../server/server.example.toml")
        .replace(
            "# [federation.evaluate_config]",
            "[federation.evaluate_config]",
        )
        .replace("# explain = 100", "explain = 100");
    let explaining = ServerConfig::from_toml(&explaining, Path::new("s.toml")).unwrap();
    assert_eq!(
        explaining.federation.evaluate_config["explain"],
        fedcrime_fl::ConfigValue::Int(100)
    );
    let station = StationConfig::from_toml(
        include_str!("../../../client/station.example.toml"),
        Path::new("station.example.toml"),
    )
    .unwrap();
    station.validate().unwrap();
    assert_eq!(station.data.area, Some(Areas::One(7)));
    assert!(
        station.serve.is_none(),
        "the service is off unless configured"
    );
    // The commented [serve] and [dashboard] sections, switched on, parse
    // into the typed sections (a line "# x" becomes "x"; prose stays).
    let uncomment = |text: &str, from: &str| -> String {
        let start = text.find(from).unwrap();
        let (head, tail) = text.split_at(start);
        let tail: Vec<String> = tail
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest.to_string(),
                _ => l.to_string(),
            })
            .collect();
        format!("{head}{}\n", tail.join("\n"))
    };
    let serving = StationConfig::from_toml(
        &uncomment(
            include_str!("../../../client/station.example.toml"),
            "# [serve]",
        ),
        Path::new("station.toml"),
    )
    .unwrap();
    serving.validate().unwrap();
    let serve = serving.serve.unwrap();
    assert_eq!(serve.listen.port(), 8080);
    assert_eq!(
        serve.tls.unwrap().client_ca.as_deref(),
        Some(Path::new("pki/ca.pem"))
    );
    let dashboard = ServerConfig::from_toml(
        &uncomment(
            include_str!("../../../server/server.example.toml"),
            "# [dashboard]",
        ),
        Path::new("server.toml"),
    )
    .unwrap();
    let d = dashboard.dashboard.as_ref().unwrap();
    assert_eq!(d.listen.port(), 8443);
    assert_eq!(
        d.token_file.as_deref(),
        Some(Path::new("pki/dashboard.token"))
    );
    // The dashboard makes stations forecast their areas for the map.
    assert_eq!(
        dashboard.engine_config().evaluate_config["forecast"],
        fedcrime_fl::ConfigValue::Bool(true)
    );
    // The audit log is on by default; the commented [privacy] switched on
    // gives central DP with adaptive clipping and a budget.
    assert!(server.audit.enabled && server.audit.require_signed_updates);
    assert_eq!(
        station.tls.signing_key.as_deref(),
        Some(Path::new("pki/stations/station-07.sign.key"))
    );
    let private = ServerConfig::from_toml(
        &uncomment(
            include_str!("../../../server/server.example.toml"),
            "# [privacy]",
        ),
        Path::new("server.toml"),
    )
    .unwrap();
    private.validate().unwrap();
    let p = private.engine_config().privacy.unwrap();
    assert_eq!(p.mode, fedcrime_fl::DpMode::Central);
    assert!(p.adaptive_clip.is_some() && p.target_epsilon == Some(10.0));

    let tls = "[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
    let server_err = |extra: &str| {
        let text = format!("{extra}\n{tls}");
        match ServerConfig::from_toml(&text, Path::new("s.toml")) {
            Ok(c) => c.validate().unwrap_err().to_string(),
            Err(e) => e.to_string(),
        }
    };
    for (extra, field) in [
        (
            "[federation]\nfraction_fit = 2.0\n",
            "federation.fraction_fit",
        ),
        ("[federation]\nrouns = 3\n", "rouns"),
        (
            "[federation]\nmin_fit = 5\nmin_stations = 2\n",
            "federation.min_fit",
        ),
        ("[train]\nlr = -1.0\n", "train.lr"),
        ("[privacy]\nnoise_multiplier = 1.0\n", "privacy.clip"),
        (
            "[privacy]\nclip = 1.0\nnoise_multiplier = -1.0\n",
            "privacy.noise_multiplier",
        ),
        ("[privacy]\nclip = 1.0\ndelta = 2.0\n", "privacy.delta"),
        ("[audit]\nrequire_signed = true\n", "require_signed"),
        ("[strategy]\nname = \"fedprox\"\nmu = -1.0\n", "strategy.mu"),
        ("[model]\nkind = \"gat-tcn\"\n", "model.kind"),
        (
            "[federation.early_stopping]\npatience = 0\n",
            "federation.early_stopping.patience",
        ),
        (
            "[federation]\neval_every = 0\n[federation.early_stopping]\npatience = 3\n",
            "federation.early_stopping",
        ),
        ("[train]\nmin_local_steps = 2000000\n", "min_local_steps"),
        ("[model]\ndropout = 1.5\n", "model.dropout"),
        ("[wire]\nmodel_encoding = \"f64\"\n", "f64"),
        (
            "[transport]\nkeep_alive_ms = 99999\n",
            "transport.keep_alive_ms",
        ),
    ] {
        let err = server_err(extra);
        assert!(err.contains(field), "{extra:?}: {err}");
    }
    let station_err = |extra: &str| {
        let text = format!("{extra}\n{tls}");
        match StationConfig::from_toml(&text, Path::new("c.toml")) {
            Ok(c) => c.validate().unwrap_err().to_string(),
            Err(e) => e.to_string(),
        }
    };
    for (extra, field) in [
        ("[data]\narea = 30\n", "data.area"),
        (
            "[data]\narea = 3\npartition = \"iid\"\npart = 1\n",
            "data.area",
        ),
        ("[data]\npartition = \"iid\"\n", "data.part"),
        (
            "[data]\npartition = \"natural\"\nstations = 3\npart = 1\n",
            "data.stations",
        ),
        (
            "[data]\npartition = \"lottery\"\npart = 1\n",
            "data.partition",
        ),
        ("server = \"localhost\"\n", "server"),
        ("device = \"tpu\"\n", "tpu"),
        ("[reconnect]\nmultiplier = 0.5\n", "reconnect.multiplier"),
    ] {
        let err = station_err(extra);
        assert!(err.contains(field), "{extra:?}: {err}");
    }
}

/// A station that does not train: its update is the global model it got,
/// so a round costs only what the framework does (transfer, decoding,
/// validation, aggregation).
struct Echo;

impl Learner for Echo {
    fn fit(&self, ins: &FitIns) -> Result<FitRes, StationError> {
        Ok(FitRes {
            params: ins.global.clone(),
            num_examples: 100,
            metrics: Metrics::new(),
        })
    }

    fn evaluate(&self, _ins: &EvaluateIns) -> Result<EvaluateRes, StationError> {
        Ok(EvaluateRes {
            loss: 1.0,
            num_examples: 100,
            metrics: Metrics::new(),
        })
    }
}

/// Seconds to move `bytes` to each of `stations` and back over one warm
/// plain TCP loopback connection (the workspace's one TCP reference,
/// `fedcrime_net::TcpReference`: what a round must move, without QUIC, TLS,
/// framing or aggregation): the best of three.
async fn tcp_round_trip(stations: usize, bytes: usize) -> f64 {
    tokio::task::spawn_blocking(move || {
        fedcrime_net::bench::tcp_seconds(bytes, 2 * stations, 3).unwrap()
    })
    .await
    .unwrap()
}

/// Seconds to move `bytes` to each of `stations` and back over QUIC with
/// mutual TLS on loopback (the same listener, connector, certificates and
/// transport settings as the federation, warm connections, one stream each
/// way per station, no framing, decoding or aggregation): the best of three.
async fn quic_round_trip(pki: &Path, stations: usize, bytes: usize) -> f64 {
    const TRIES: usize = 3;
    let listener = fedcrime_net::Listener::bind(
        "127.0.0.1:0".parse().unwrap(),
        &ServerTls::from_pki_dir(pki),
        &fast_transport(),
    )
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let payload = Arc::new(vec![7u8; bytes]);
    let echoes: Vec<_> = (1..=stations)
        .map(|i| {
            let c = connector(pki, &station(i), addr);
            tokio::spawn(async move {
                let conn = c.connect().await.unwrap();
                for _ in 0..TRIES {
                    let mut r = conn.accept_uni().await.unwrap();
                    let buf = r.read_to_end(bytes).await.unwrap();
                    let mut w = conn.open_uni().await.unwrap();
                    w.write_all(&buf).await.unwrap();
                    w.finish().unwrap();
                }
                conn.closed().await;
            })
        })
        .collect();
    let mut conns = Vec::new();
    for _ in 0..stations {
        conns.push(listener.accept().await.unwrap().connection);
    }
    let mut best = f64::INFINITY;
    for _ in 0..TRIES {
        let t0 = std::time::Instant::now();
        let sides: Vec<_> = conns
            .iter()
            .map(|conn| {
                let conn = conn.clone();
                let payload = payload.clone();
                tokio::spawn(async move {
                    let mut w = conn.open_uni().await.unwrap();
                    w.write_all(&payload).await.unwrap();
                    w.finish().unwrap();
                    let mut r = conn.accept_uni().await.unwrap();
                    r.read_to_end(bytes).await.unwrap().len()
                })
            })
            .collect();
        for s in sides {
            assert_eq!(s.await.unwrap(), bytes);
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    for e in echoes {
        e.await.unwrap();
    }
    listener.close();
    best
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Framework overhead per round (round wall time minus the slowest
/// station's training time; medians of rounds 2 to 5) for 21 stations over
/// QUIC + mutual TLS on loopback, at about 20 thousand, 1 million and 10
/// million parameters, against round trips of the same bytes over bare
/// QUIC + mutual TLS streams and over plain TCP on loopback in the same run.
///
/// Run: `.ci/bench/round-overhead.sh` (or `cargo test --release -p
/// fedcrime-tests --test e2e -- --ignored --nocapture bench_round_overhead`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run with .ci/bench/round-overhead.sh"]
async fn bench_round_overhead() {
    const STATIONS: usize = 21;
    const ROUNDS: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), STATIONS);
    println!(
        "| params | model MB | round s | slowest station s | overhead s | of which fit phase s | aggregate s | QUIC+mTLS round trip s | TCP round trip s | overhead / QUIC | overhead / TCP |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, hidden) in [90usize, 700, 2230].into_iter().enumerate() {
        let mut cfg = server_config(&pki, &dir.path().join(format!("out-{i}")), ROUNDS, STATIONS);
        cfg.model.hidden = Some(hidden);
        cfg.model.layers = Some(3);
        cfg.wire.max_frame_bytes = 64 << 20;
        let server = Running::start(cfg).await;
        let clients: Vec<_> = (1..=STATIONS)
            .map(|s| {
                let echo: Arc<dyn Learner> = Arc::new(Echo);
                let factory: Arc<dyn LearnerFactory> =
                    Arc::new(move |_: &RunSetup| Ok(echo.clone()));
                spawn_client(&pki, &station(s), server.addr, factory)
            })
            .collect();
        let report = server.finish().await;
        assert!(report.completed(), "{:?}", report.summary);
        for c in clients {
            join_client(c).await;
        }
        let params = report.global.spec().total();
        let records: Vec<fedcrime_server::RoundRecord> =
            std::fs::read_to_string(dir.path().join(format!("out-{i}/metrics.jsonl")))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .skip(1)
                .collect();
        let pick =
            |f: fn(&fedcrime_server::RoundRecord) -> f64| median(records.iter().map(f).collect());
        let round_s = pick(|r| r.metrics.round_s);
        let train_s = pick(|r| r.max_train_s.unwrap_or(0.0));
        let overhead_s = pick(|r| r.overhead_s.unwrap_or(f64::NAN));
        let fit_overhead_s = pick(|r| r.fit_overhead_s.unwrap_or(f64::NAN));
        let aggregate_s = pick(|r| r.metrics.aggregate_s.unwrap_or(f64::NAN));
        let quic_s = quic_round_trip(&pki, STATIONS, params * 4).await;
        let tcp_s = tcp_round_trip(STATIONS, params * 4).await;
        println!(
            "| {params} | {:.1} | {round_s:.4} | {train_s:.4} | {overhead_s:.4} | {fit_overhead_s:.4} | {aggregate_s:.4} | {quic_s:.4} | {tcp_s:.4} | {:.2} | {:.2} |",
            params as f64 * 4.0 / 1e6,
            overhead_s / quic_s,
            overhead_s / tcp_s
        );
    }
}
