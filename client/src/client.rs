//! The station's side of the protocol: connect, say Hello, build the learner
//! for the run the server describes in its Welcome, then serve the server's
//! requests one at a time until it says Bye; reconnect after network loss.
//!
//! Requests are read as they arrive (a reader task) and processed in order
//! by one worker at a time on a blocking thread. A round the server has
//! already moved past is not trained (or its update not sent) when a newer
//! round is waiting. Only parameters and aggregate metrics leave the station.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedcrime_audit::{TREE_CONSISTENCY_EXTENSION, TREE_HEAD_EXTENSION};
use fedcrime_fl::secure::{SecAggDown, SecAggUp, SecureStation, WELCOME_EXTENSION};
use fedcrime_fl::{
    encode_update, heartbeat_interval, station_write_config, ClientSession, EvaluateIns,
    EvaluateRes, FitIns, FitRes, FromServer, HandshakeError,
};
use fedcrime_net::{Backoff, CloseCode, Connector, ReconnectPolicy};
use fedcrime_params::{ParamSpec, Params};
use fedcrime_station::protocol::{eval_config_from_wire, fit_ins, RunSetup};
use fedcrime_station::{Learner, StationError};
use fedcrime_wire::{
    Bye, ByeReason, Capabilities, Encoding, ErrorCode, ErrorMsg, EvalModel, EvaluateResult,
    Heartbeat, Message, ModelHeader, RejectCode, Scalar, SecAgg, Update, UpdateKind,
    UpdateSignature, Welcome, WireConfig, WireReader, WireWriter, SIGNED_UPDATES_EXTENSION,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, watch};

use crate::error::{ClientError, Result};

/// Builds the learner for a run, from the run's description. The station
/// client calls it after every Welcome (implementations cache).
pub trait LearnerFactory: Send + Sync {
    /// A learner for `setup`; an error means this station cannot take part.
    fn learner(&self, setup: &RunSetup) -> Result<Arc<dyn Learner>, StationError>;
}

impl<F> LearnerFactory for F
where
    F: Fn(&RunSetup) -> Result<Arc<dyn Learner>, StationError> + Send + Sync,
{
    fn learner(&self, setup: &RunSetup) -> Result<Arc<dyn Learner>, StationError> {
        self(setup)
    }
}

/// Told of every global model the station receives, e.g. the prediction
/// service that swaps it in (`fedcrime-client` serving beside training).
/// Called on the session's task: keep it short (hand the work off).
pub trait GlobalModelSink: Send + Sync {
    /// `params` is the global model after round `round` of the run `setup`
    /// describes (round 0: the initial model).
    fn global_model(&self, setup: &RunSetup, round: u64, params: Arc<Params>);
}

/// Settings of the protocol client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Reported in the Hello, e.g. `fedcrime-client 0.1.0`.
    pub software: String,
    /// Where the station trains, reported in the Hello.
    pub device: String,
    /// Tensor encodings the station reads and writes.
    pub encodings: Vec<Encoding>,
    /// Waits between sessions after a lost connection.
    pub reconnect: ReconnectPolicy,
    /// Seed of the reconnection jitter.
    pub seed: u64,
    /// Limits for reading the server's messages (the model size is bounded
    /// by the run's model once known).
    pub wire: WireConfig,
    /// Time the server has to answer the Hello.
    pub handshake_timeout: Duration,
    /// This process's instance number, sent in the Hello: the server lets a
    /// reconnecting process replace its own old connection at once.
    pub instance: u64,
    /// The first wait after the server refused the station because another
    /// live process holds its identity; it doubles up to
    /// [`MAX_STANDBY`] (default: twice the idle timeout, by when a dead
    /// process's connection has timed out on the server).
    pub standby: Duration,
    /// The station's Ed25519 update-signing key (its certificate binds the
    /// public key): every update is sent with its signature. Needed when the
    /// server's Welcome demands signed updates.
    pub signing_key: Option<Arc<fedcrime_audit::SigningKey>>,
    /// Where the station keeps the audit-log tree heads the server sends
    /// with each round, and the server's audit key to check them with.
    pub tree_heads: Option<TreeHeads>,
    /// For studies of secure aggregation's dropout recovery: in each round,
    /// with this probability, the station drops its connection at a stage
    /// of the protocol drawn at random (key advertisement, sharing, masked
    /// input, unmasking), reproducibly from `seed`, and reconnects.
    pub secagg_dropout: Option<SecAggDropout>,
}

/// Simulated dropouts during secure aggregation ([`ClientOptions::secagg_dropout`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SecAggDropout {
    /// Probability that the station drops out of a round.
    pub probability: f64,
    /// Seed of the draws (with the station's own seed and the round).
    pub seed: u64,
}

impl SecAggDropout {
    /// The stage (0 keys .. 3 unmasking) at which a station seeded `station`
    /// drops out of `round`, if it does; the same draw as the in-memory
    /// federation's, so both transports drop the same stations.
    pub fn stage(&self, station: u64, round: u64) -> Option<u8> {
        if self.probability <= 0.0 {
            return None;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ station << 32,
        );
        (rng.random::<f64>() < self.probability).then(|| rng.random_range(0..4u8))
    }
}

/// The station's record of the server's audit log ([`ClientOptions::tree_heads`]).
#[derive(Clone, Debug)]
pub struct TreeHeads {
    /// The server's audit public key (`audit.pub` from the agency's PKI).
    pub server_key: fedcrime_audit::PublicKey,
    /// The station's `tree-heads.jsonl`.
    pub path: std::path::PathBuf,
}

/// The longest wait between two attempts of a station that another process
/// keeps out.
pub const MAX_STANDBY: Duration = Duration::from_secs(300);

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            software: format!("fedcrime-client {}", env!("CARGO_PKG_VERSION")),
            device: "cpu".into(),
            encodings: Encoding::ALL.to_vec(),
            reconnect: ReconnectPolicy::default(),
            seed: 0,
            wire: WireConfig::default(),
            handshake_timeout: Duration::from_secs(30),
            instance: rand::random(),
            standby: Duration::from_secs(10),
            signing_key: None,
            tree_heads: None,
            secagg_dropout: None,
        }
    }
}

/// How a station's participation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOutcome {
    /// The server finished the run and said goodbye.
    Done,
    /// The server refused the station because its run is over.
    RunFinished,
    /// The station was asked to stop.
    Interrupted,
    /// The server gave the run up (too few stations or updates).
    Aborted,
}

/// What a station did.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientReport {
    /// How it ended.
    pub outcome: ClientOutcome,
    /// Updates sent.
    pub updates_sent: u64,
    /// Of those, updates sent masked (secure aggregation): the server saw
    /// only their sum.
    pub masked_updates_sent: u64,
    /// Evaluations sent.
    pub evaluations_sent: u64,
    /// Sessions (connections that got a Welcome).
    pub sessions: u64,
    /// Audit-log tree heads received, checked and kept.
    pub tree_heads_kept: u64,
    /// Of those, heads checked at once to extend the one kept before
    /// (a consistency proof from it came along).
    pub tree_heads_proved_consistent: u64,
    /// Simulated dropouts ([`ClientOptions::secagg_dropout`]).
    pub dropouts: u64,
}

/// Aborts a task when dropped, so a station dropped mid-session (killed)
/// leaves no task holding its connection open.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How one session ended.
enum SessionEnd {
    Done,
    Aborted(String),
    ServerLeft(String),
    Lost(String),
    Interrupted,
    Refused(RejectCode, String),
    /// Another process holds the station's identity (refused as already
    /// connected, or this connection was replaced).
    Duplicate(String),
    /// The server ended the session: the certificate is no longer valid.
    Revoked(String),
    Fatal(ClientError),
}

impl SessionEnd {
    /// Reads the server's close code when the connection ended under the
    /// session: a replaced or revoked session is not a network loss.
    fn with_close_code(self, conn: &quinn::Connection) -> SessionEnd {
        match self {
            SessionEnd::Lost(why) | SessionEnd::ServerLeft(why) => match CloseCode::of_peer(conn) {
                Some((CloseCode::Replaced, text)) => SessionEnd::Duplicate(text),
                Some((CloseCode::Revoked, text)) => SessionEnd::Revoked(text),
                _ => SessionEnd::Lost(why),
            },
            other => other,
        }
    }
}

/// A request from the server, decoded.
enum Work {
    Fit {
        round: u64,
        ins: FitIns,
        encoding: Encoding,
        send_delta: bool,
    },
    Evaluate {
        round: u64,
        ins: EvaluateIns,
    },
    /// A request that could not be understood: reported back.
    Invalid {
        message: String,
    },
}

enum Incoming {
    Work(Work),
    SecAgg(SecAgg),
    Bye(Bye),
    End(String),
}

/// The station's side of secure aggregation across one session: the
/// current round's protocol, the global model it trains from, and a
/// training result that finished before the protocol's setup arrived.
#[derive(Default)]
struct SecureState {
    session: Option<SecureStation>,
    global: Option<(u64, Arc<Params>)>,
    held: Option<(u64, FitRes)>,
}

impl SecureState {
    /// A server message; returns the answer to send, if one is due.
    fn on_message(&mut self, m: &SecAgg) -> std::result::Result<Option<SecAggUp>, String> {
        let msg = SecAggDown::from_wire(m).map_err(|e| e.to_string())?;
        match msg {
            SecAggDown::Setup { setup, slot } => {
                let round = setup.round;
                let global = self
                    .global
                    .as_ref()
                    .filter(|(r, _)| *r == round)
                    .map(|(_, g)| g.clone());
                let (mut session, keys) =
                    SecureStation::start(setup, slot, global).map_err(|e| e.to_string())?;
                if let Some((r, fit)) = self.held.take() {
                    if r == round {
                        session.on_trained(fit).map_err(|e| e.to_string())?;
                    }
                }
                self.session = Some(session);
                Ok(Some(keys))
            }
            other => match &mut self.session {
                Some(s) if s.round() == m.round => s.on_message(other).map_err(|e| e.to_string()),
                _ => Err(format!(
                    "{} of round {} without the round's setup",
                    other.name(),
                    m.round
                )),
            },
        }
    }

    /// A finished training of `round`; returns the masked input when the
    /// shares are already in.
    fn on_trained(
        &mut self,
        round: u64,
        fit: FitRes,
    ) -> std::result::Result<Option<SecAggUp>, String> {
        match &mut self.session {
            Some(s) if s.round() == round => s.on_trained(fit).map_err(|e| e.to_string()),
            _ => {
                self.held = Some((round, fit));
                Ok(None)
            }
        }
    }
}

/// The frame carrying a station's protocol answer, or the error to report.
fn secagg_reply(
    round: u64,
    answer: std::result::Result<Option<SecAggUp>, String>,
    max_frame_bytes: u32,
) -> Option<(Message, Option<Arc<Params>>)> {
    let failed = |text: String| {
        tracing::error!(round, "secure aggregation: {text}");
        Some((
            Message::Error(ErrorMsg {
                code: ErrorCode::TrainingFailed,
                text: format!("round {round}: secure aggregation: {text}"),
            }),
            None,
        ))
    };
    match answer {
        Ok(None) => None,
        Ok(Some(up)) => match up.to_wire(round) {
            // The frame adds a few bytes of its own to the body.
            Ok(m) if m.body.len() as u64 + 64 > u64::from(max_frame_bytes) => failed(format!(
                "the {} is {} bytes, over the server's frame limit of {max_frame_bytes}: \
                 raise the server's wire.max_frame_bytes",
                up.name(),
                m.body.len()
            )),
            Ok(m) => {
                if matches!(up, SecAggUp::Masked { .. }) {
                    tracing::info!(round, bytes = m.body.len(), "sending the masked update");
                }

                Some((Message::SecAggUp(m), None))
            }
            Err(e) => failed(e.to_string()),
        },
        Err(e) => failed(e),
    }
}

enum Done {
    Fit {
        round: u64,
        res: std::result::Result<FitRes, StationError>,
        global: Arc<Params>,
        encoding: Encoding,
        send_delta: bool,
        seconds: f64,
    },
    Evaluate {
        round: u64,
        res: std::result::Result<EvaluateRes, StationError>,
    },
    Invalid {
        message: String,
    },
}

/// The waits of a station that another live process keeps out: from
/// [`ClientOptions::standby`], doubling up to [`MAX_STANDBY`], each with up
/// to a quarter more drawn at random; it gives up after the reconnection
/// policy's `max_attempts` refusals or `give_up_after_ms`.
struct Standby {
    first: Duration,
    policy: ReconnectPolicy,
    rng: ChaCha8Rng,
    refusals: u32,
    since: Option<Instant>,
}

impl Standby {
    fn new(options: &ClientOptions) -> Self {
        Standby {
            first: options.standby.max(Duration::from_millis(100)),
            policy: options.reconnect.clone(),
            rng: ChaCha8Rng::seed_from_u64(options.seed ^ 0x5354_414e_4442_5900),
            refusals: 0,
            since: None,
        }
    }

    fn next_delay(&mut self) -> Option<Duration> {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.refusals = self.refusals.saturating_add(1);
        if self.policy.max_attempts != 0 && self.refusals >= self.policy.max_attempts {
            return None;
        }
        let base = self
            .first
            .saturating_mul(1u32 << self.refusals.saturating_sub(1).min(16))
            .min(MAX_STANDBY);
        let delay = base.mul_f64(1.0 + 0.25 * self.rng.random::<f64>());
        let limit = Duration::from_millis(self.policy.give_up_after_ms);
        if !limit.is_zero() && since.elapsed() + delay >= limit {
            return None;
        }
        Some(delay)
    }

    fn reset(&mut self) {
        self.refusals = 0;
        self.since = None;
    }
}

/// The protocol client of one station.
pub struct Client {
    connector: Connector,
    factory: Arc<dyn LearnerFactory>,
    options: ClientOptions,
    /// The learner of the last Welcome and the run it was built for.
    learner: Option<(RunSetup, Arc<dyn Learner>, Arc<ParamSpec>)>,
    report: ClientReport,
    sink: Option<Arc<dyn GlobalModelSink>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.connector.server())
            .field("station", &self.connector.station())
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client connecting with `connector` and training with the learners `factory` builds.
    pub fn new(
        connector: Connector,
        factory: Arc<dyn LearnerFactory>,
        options: ClientOptions,
    ) -> Self {
        Client {
            connector,
            factory,
            options,
            learner: None,
            sink: None,
            report: ClientReport {
                outcome: ClientOutcome::Interrupted,
                updates_sent: 0,
                masked_updates_sent: 0,
                evaluations_sent: 0,
                sessions: 0,
                tree_heads_kept: 0,
                tree_heads_proved_consistent: 0,
                dropouts: 0,
            },
        }
    }

    /// Tells `sink` of every global model received.
    pub fn with_model_sink(mut self, sink: Arc<dyn GlobalModelSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Takes part in the server's run until it ends, the server refuses the
    /// station, or `shutdown` completes (then the station says Bye).
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<ClientReport> {
        let (stop_tx, mut stop) = watch::channel(false);
        // Polled by every wait below; it flags the shutdown and then stays
        // pending, so the code waiting on `stop` reacts (a session says Bye).
        let stopper = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
            std::future::pending::<()>().await
        };
        tokio::pin!(stopper);
        let mut backoff = Backoff::new(
            self.options.reconnect.clone(),
            ChaCha8Rng::seed_from_u64(self.options.seed),
        );
        let mut lost_since: Option<Instant> = None;
        let mut standby = Standby::new(&self.options);
        let result = loop {
            let conn = tokio::select! {
                biased;
                () = &mut stopper => break Ok(ClientOutcome::Interrupted),
                _ = stop.changed() => break Ok(ClientOutcome::Interrupted),
                c = self.connector.connect() => match c {
                    Ok(c) => c,
                    Err(e) => break Err(ClientError::Net(e)),
                },
            };
            let sessions_before = self.report.sessions;
            let end = tokio::select! {
                biased;
                () = &mut stopper => SessionEnd::Interrupted,
                end = self.session(&conn, &mut stop) => end,
            };
            let end = end.with_close_code(&conn);
            if self.report.sessions > sessions_before {
                // A session that got going starts a fresh reconnection schedule.
                backoff.reset();
                lost_since = None;
            }
            if !matches!(end, SessionEnd::Duplicate(_)) {
                standby.reset();
            }
            conn.close(quinn::VarInt::from_u32(0), b"station leaving");
            let why = match end {
                SessionEnd::Done => break Ok(ClientOutcome::Done),
                SessionEnd::Aborted(why) => {
                    tracing::error!("{why}");
                    break Ok(ClientOutcome::Aborted);
                }
                SessionEnd::Interrupted => break Ok(ClientOutcome::Interrupted),
                SessionEnd::Refused(RejectCode::RunFinished, text) => {
                    tracing::info!("{text}");
                    break Ok(ClientOutcome::RunFinished);
                }
                SessionEnd::Refused(RejectCode::RunAborted, text) => {
                    tracing::error!("{text}");
                    break Ok(ClientOutcome::Aborted);
                }
                SessionEnd::Refused(RejectCode::AlreadyConnected, text)
                | SessionEnd::Duplicate(text) => {
                    // Another live process holds this identity: stand by
                    // (never take turns with it), and stop after the
                    // policy's limit.
                    let Some(delay) = standby.next_delay() else {
                        break Err(ClientError::Duplicate(text));
                    };
                    tracing::warn!(retry_in = ?delay,
                        "another process is connected with this station's certificate; standing by: {text}");
                    tokio::select! {
                        biased;
                        () = &mut stopper => break Ok(ClientOutcome::Interrupted),
                        _ = stop.changed() => break Ok(ClientOutcome::Interrupted),
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
                SessionEnd::Revoked(text) => break Err(ClientError::Revoked(text)),
                SessionEnd::Refused(RejectCode::ShuttingDown, text) => text,
                SessionEnd::Refused(code, text) => break Err(ClientError::Rejected { code, text }),
                SessionEnd::Fatal(e) => break Err(e),
                SessionEnd::ServerLeft(why) | SessionEnd::Lost(why) => why,
            };
            let since = *lost_since.get_or_insert_with(Instant::now);
            match backoff.next_delay(since.elapsed()) {
                Some(delay) => {
                    tracing::warn!(reason = %why, retry_in = ?delay, "lost the server; reconnecting");
                    tokio::select! {
                        biased;
                        () = &mut stopper => break Ok(ClientOutcome::Interrupted),
                        _ = stop.changed() => break Ok(ClientOutcome::Interrupted),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                None => {
                    break Err(ClientError::Handshake(format!(
                        "gave up reconnecting after {} attempts: {why}",
                        backoff.failures()
                    )))
                }
            }
        };
        self.connector.close();
        let outcome = result?;
        self.report.outcome = outcome;
        Ok(self.report)
    }

    /// Builds (or reuses) the learner of `setup` and the model layout.
    async fn learner_for(
        &mut self,
        setup: RunSetup,
    ) -> std::result::Result<(Arc<dyn Learner>, Arc<ParamSpec>), ClientError> {
        if let Some((s, l, spec)) = &self.learner {
            if *s == setup {
                return Ok((l.clone(), spec.clone()));
            }
        }
        let factory = self.factory.clone();
        let s = setup.clone();
        let built = tokio::task::spawn_blocking(move || -> std::result::Result<_, StationError> {
            let learner = factory.learner(&s)?;
            let spec = learner.param_spec(&s.model)?;
            Ok((learner, spec))
        })
        .await
        .map_err(|e| ClientError::Handshake(format!("building the learner: {e}")))??;
        self.learner = Some((setup, built.0.clone(), built.1.clone()));
        Ok(built)
    }

    /// Says Hello and waits (bounded) for the server's checked answer.
    async fn handshake(
        &self,
        writer: &mut WireWriter<quinn::SendStream>,
        reader: &mut WireReader<quinn::RecvStream>,
    ) -> std::result::Result<(ClientSession, Welcome), SessionEnd> {
        let mut capabilities = Capabilities {
            encodings: self.options.encodings.clone(),
            device: self.options.device.clone(),
            extensions: Default::default(),
        };
        capabilities.set_instance(self.options.instance);
        let mut machine = ClientSession::new(self.options.software.clone(), capabilities);
        let hello = Message::Hello(machine.hello().clone());
        if let Err(e) = writer.send(&hello, None).await {
            return Err(SessionEnd::Lost(format!("sending Hello: {e}")));
        }
        let answer =
            match tokio::time::timeout(self.options.handshake_timeout, reader.recv_message()).await
            {
                Ok(Ok(Some(msg))) => machine.on_answer(msg),
                Ok(Ok(None)) => {
                    return Err(SessionEnd::Lost("the server closed the stream".into()))
                }
                Ok(Err(e)) => return Err(SessionEnd::Lost(format!("reading Welcome: {e}"))),
                Err(_) => return Err(SessionEnd::Lost("no Welcome in time".into())),
            };
        match answer {
            Ok(w) => Ok((machine, w)),
            Err(HandshakeError::Refused { code, text }) => Err(SessionEnd::Refused(code, text)),
            Err(HandshakeError::ServerLeft(text)) => Err(SessionEnd::ServerLeft(text)),
            Err(HandshakeError::Protocol(e)) => Err(SessionEnd::Lost(e.to_string())),
            Err(HandshakeError::Incompatible(text)) => {
                Err(SessionEnd::Fatal(ClientError::Handshake(text)))
            }
        }
    }

    async fn session(
        &mut self,
        conn: &quinn::Connection,
        stop: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let (send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return SessionEnd::Lost(format!("opening a stream: {e}")),
        };
        let mut writer = WireWriter::new(send, self.options.wire);
        let mut reader = WireReader::new(recv, self.options.wire);
        let (machine, welcome) = match self.handshake(&mut writer, &mut reader).await {
            Ok(x) => x,
            Err(end) => return end,
        };
        let setup = match RunSetup::from_extensions(&welcome.extensions) {
            Ok(s) => s,
            Err(e) => return SessionEnd::Fatal(e.into()),
        };
        let sink = self.sink.clone().map(|k| (k, setup.clone()));
        let (learner, spec) = match self.learner_for(setup).await {
            Ok(x) => x,
            Err(e) => {
                let msg = Message::Error(ErrorMsg {
                    code: ErrorCode::TrainingFailed,
                    text: format!("the station cannot take part: {e}"),
                });
                let _ = writer.send(&msg, None).await;
                return SessionEnd::Fatal(e);
            }
        };
        self.report.sessions += 1;
        tracing::info!(
            run = %welcome.run_id,
            station = %welcome.station,
            session = welcome.session_id,
            params = spec.total(),
            "joined the run"
        );

        // Reads are bounded by the run's model from here on.
        let read_cfg = WireConfig {
            max_model_params: spec.total() as u64,
            max_tensors: u32::try_from(spec.len()).unwrap_or(u32::MAX),
            ..self.options.wire
        };
        let reader = WireReader::new(reader.into_inner(), read_cfg);
        let (in_tx, mut in_rx) = mpsc::channel::<Incoming>(4);
        let reader_task = AbortOnDrop(tokio::spawn(read_loop(
            reader,
            machine,
            spec.clone(),
            in_tx,
        )));
        // Writes stay within what the server said it accepts.
        let secure_run = welcome.extensions.get(WELCOME_EXTENSION) == Some(&Scalar::Bool(true));
        let mut write_cfg = station_write_config(&welcome, self.options.wire);
        if secure_run {
            // A masked update is one frame; the server sized its limit for
            // its model's (and reads no more).
            write_cfg.max_frame_bytes = write_cfg
                .max_frame_bytes
                .max(welcome.limits.max_frame_bytes);
        }
        let writer = WireWriter::new(writer.into_inner(), write_cfg);
        let (out_tx, out_rx) = mpsc::channel::<(Message, Option<Arc<Params>>)>(8);
        let mut writer_task = AbortOnDrop(tokio::spawn(write_loop(writer, out_rx)));

        let heartbeat_every = heartbeat_interval(&welcome.limits);
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.tick().await;
        let mut seq = 0u64;
        let mut pending: VecDeque<Work> = VecDeque::new();
        let mut busy: Option<tokio::task::JoinHandle<Done>> = None;
        // Secure aggregation, when the server's Welcome says the run uses it.
        // Its work (sealing shares, expanding masks: about a second per
        // million parameters and hundred neighbours) runs off the async
        // runtime, which keeps the connection's keep-alives going.
        let secure = secure_run.then(|| Arc::new(std::sync::Mutex::new(SecureState::default())));
        if secure.is_some() {
            tracing::info!("the run uses secure aggregation: updates are sent masked");
        }
        let signed_run =
            welcome.extensions.get(SIGNED_UPDATES_EXTENSION) == Some(&Scalar::Bool(true));
        let signer = match (&self.options.signing_key, signed_run) {
            (Some(key), _) => Some(Signer {
                key: key.clone(),
                run_id: welcome.run_id.clone(),
                station: welcome.station.clone(),
            }),
            (None, true) => {
                let text = "the server requires signed updates, but this station has no \
                            signing key (set tls.signing_key to the .sign.key file \
                            fedcrime-certs issued with the certificate)";
                let msg = Message::Error(ErrorMsg {
                    code: ErrorCode::TrainingFailed,
                    text: text.into(),
                });
                let _ = out_tx.send((msg, None)).await;
                return SessionEnd::Fatal(ClientError::Audit(text.into()));
            }
            (None, false) => None,
        };
        let mut heads = match &self.options.tree_heads {
            Some(t) => match fedcrime_audit::HeadStore::open(&t.path) {
                Ok(store) => Some((store, t.server_key)),
                Err(e) => {
                    tracing::error!("cannot open the tree-head store: {e}");
                    None
                }
            },
            None => None,
        };

        let end = loop {
            if busy.is_none() {
                if let Some(work) = pending.pop_front() {
                    busy = Some(spawn_work(learner.clone(), work));
                }
            }
            tokio::select! {
                biased;
                _ = stop.changed() => break SessionEnd::Interrupted,
                incoming = in_rx.recv() => match incoming {
                    Some(Incoming::Work(w)) => {
                        if let Some((sink, setup)) = &sink {
                            // A round's model is the global after the round before;
                            // an evaluation's, the global after its round.
                            match &w {
                                Work::Fit { round, ins, .. } => {
                                    sink.global_model(setup, round.saturating_sub(1), ins.global.clone())
                                }
                                Work::Evaluate { round, ins } => {
                                    sink.global_model(setup, *round, ins.global.clone())
                                }
                                Work::Invalid { .. } => {}
                            }
                        }
                        if let (Some((store, key)), Work::Fit { round, ins, .. }) = (&mut heads, &w) {
                            if let Some(checked) = record_tree_head(store, key, *round, &ins.settings) {
                                self.report.tree_heads_kept += 1;
                                self.report.tree_heads_proved_consistent += u64::from(checked);
                            }
                        }
                        if let (Some(s), Work::Fit { round, ins, .. }) = (&secure, &w) {
                            s.lock().unwrap_or_else(|e| e.into_inner()).global =
                                Some((*round, ins.global.clone()));
                        }
                        if matches!(w, Work::Fit { .. }) {
                            // Only the newest round is worth training.
                            pending.retain(|p| !matches!(p, Work::Fit { .. }));
                        }
                        pending.push_back(w);
                    }
                    Some(Incoming::SecAgg(m)) => {
                        let round = m.round;
                        if let Some(stage) = self.dropout_stage(round) {
                            let at = SecAggDown::from_wire(&m).ok().map(|d| match d {
                                SecAggDown::Setup { .. } => 0u8,
                                SecAggDown::Roster(_) => 1,
                                SecAggDown::Shares(_) => 2,
                                SecAggDown::Unmask(_) => 3,
                            });
                            // A drop at stage 2 happens where the masked
                            // input would go out (see below).
                            if at == Some(stage) && stage != 2 {
                                break self.drop_out(conn, round, stage);
                            }
                        }
                        let answer = match &secure {
                            Some(s) => {
                                let s = s.clone();
                                tokio::task::spawn_blocking(move || {
                                    s.lock().unwrap_or_else(|e| e.into_inner()).on_message(&m)
                                })
                                .await
                                .unwrap_or_else(|e| Err(format!("the protocol task failed: {e}")))
                            }
                            None => Err("the server sent a protocol message, but its Welcome \
                                         did not announce secure aggregation".into()),
                        };
                        if let Err(end) = self
                            .answer_secagg(conn, &out_tx, signer.as_ref(), round, answer, write_cfg.max_frame_bytes)
                            .await
                        {
                            break end;
                        }
                    }
                    Some(Incoming::Bye(b)) => {
                        break match b.reason {
                            ByeReason::Done => {
                                tracing::info!("the server finished the run: {}", b.text);
                                SessionEnd::Done
                            }
                            ByeReason::Aborted => SessionEnd::Aborted(b.text),
                            ByeReason::Shutdown
                            | ByeReason::Restart
                            | ByeReason::IdleTimeout
                            | ByeReason::Other(_) => SessionEnd::ServerLeft(format!(
                                "the server said goodbye: {}",
                                b.text
                            )),
                        };
                    }
                    Some(Incoming::End(why)) => break SessionEnd::Lost(why),
                    None => break SessionEnd::Lost("the reader stopped".into()),
                },
                done = async { busy.as_mut().expect("guarded by the branch condition").await }, if busy.is_some() => {
                    busy = None;
                    let done = match done {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::error!("the training task failed: {e}");
                            continue;
                        }
                    };
                    let newer_round = pending.iter().any(|p| matches!(p, Work::Fit { .. }));
                    // With secure aggregation a training result becomes the
                    // masked input, once the round's shares are in.
                    let done = match (&secure, done) {
                        (Some(s), Done::Fit { round, res: Ok(fit), seconds, .. }) if !newer_round => {
                            tracing::info!(round, examples = fit.num_examples, seconds, "trained; masking the update");
                            let s = s.clone();
                            let answer = tokio::task::spawn_blocking(move || {
                                s.lock().unwrap_or_else(|e| e.into_inner()).on_trained(round, fit)
                            })
                            .await
                            .unwrap_or_else(|e| Err(format!("the protocol task failed: {e}")));
                            if let Err(end) = self
                                .answer_secagg(conn, &out_tx, signer.as_ref(), round, answer, write_cfg.max_frame_bytes)
                                .await
                            {
                                break end;
                            }
                            continue;
                        }
                        (_, done) => done,
                    };
                    let encoding = match &done {
                        Done::Fit { encoding, .. } => Some(*encoding),
                        _ => None,
                    };
                    if let Some(reply) = self.reply(done, newer_round) {
                        if let (Some(signer), (Message::Update(u), Some(p)), Some(enc)) =
                            (&signer, &reply, encoding)
                        {
                            let signature = signer.sign(u, p, enc);
                            if out_tx.send((signature, None)).await.is_err() {
                                break SessionEnd::Lost("the writer stopped".into());
                            }
                        }
                        if out_tx.send(reply).await.is_err() {
                            break SessionEnd::Lost("the writer stopped".into());
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    seq += 1;
                    let _ = out_tx.try_send((Message::Heartbeat(Heartbeat { seq }), None));
                }
            }
        };
        drop(reader_task);
        if let SessionEnd::Interrupted = end {
            let bye = Message::Bye(Bye {
                reason: ByeReason::Shutdown,
                text: "the station is shutting down".into(),
            });
            let _ = out_tx.send((bye, None)).await;
        }
        drop(out_tx);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer_task.0).await;
        end
    }

    /// Sends a station's secure-aggregation answer of `round` (signed
    /// first when it is the masked input and the station signs), or drops
    /// out where a simulated dropout says so; `Err` ends the session.
    async fn answer_secagg(
        &mut self,
        conn: &quinn::Connection,
        out_tx: &mpsc::Sender<(Message, Option<Arc<Params>>)>,
        signer: Option<&Signer>,
        round: u64,
        answer: std::result::Result<Option<SecAggUp>, String>,
        max_frame_bytes: u32,
    ) -> std::result::Result<(), SessionEnd> {
        let masked = matches!(answer, Ok(Some(SecAggUp::Masked { .. })));
        if masked && self.dropout_stage(round) == Some(2) {
            return Err(self.drop_out(conn, round, 2));
        }
        let Some(reply) = secagg_reply(round, answer, max_frame_bytes) else {
            return Ok(());
        };
        self.count_masked(masked, &reply);
        let lost = |_| SessionEnd::Lost("the writer stopped".into());
        if let Some(sig) = sign_masked(signer, masked, &reply) {
            out_tx.send((sig, None)).await.map_err(lost)?;
        }
        out_tx.send(reply).await.map_err(lost)
    }

    /// The stage at which this station drops out of `round`, when it
    /// simulates dropouts ([`ClientOptions::secagg_dropout`]).
    fn dropout_stage(&self, round: u64) -> Option<u8> {
        self.options
            .secagg_dropout
            .and_then(|d| d.stage(self.options.seed, round))
    }

    /// Drops the connection at `stage` of `round` (a simulated dropout);
    /// the station reconnects as after a network loss.
    fn drop_out(&mut self, conn: &quinn::Connection, round: u64, stage: u8) -> SessionEnd {
        tracing::info!(
            round,
            stage,
            "simulated dropout: leaving the round's protocol"
        );
        self.report.dropouts += 1;
        conn.close(quinn::VarInt::from_u32(0), b"simulated dropout");
        SessionEnd::Lost(format!(
            "simulated dropout at stage {stage} of round {round}"
        ))
    }

    /// Counts a masked update that goes out (not an error sent instead).
    fn count_masked(&mut self, masked: bool, reply: &(Message, Option<Arc<Params>>)) {
        if masked && matches!(reply.0, Message::SecAggUp(_)) {
            self.report.updates_sent += 1;
            self.report.masked_updates_sent += 1;
        }
    }

    /// The message answering a finished request, if it is still wanted.
    fn reply(&mut self, done: Done, newer_round: bool) -> Option<(Message, Option<Arc<Params>>)> {
        match done {
            Done::Fit {
                round,
                res,
                global,
                encoding,
                send_delta,
                seconds,
            } => {
                if newer_round {
                    tracing::info!(
                        round,
                        "a newer round is waiting; this round's update is dropped"
                    );
                    return None;
                }
                match res {
                    Ok(fit) => {
                        let (params, kind) = encode_update(fit.params, &global, send_delta);
                        let header = match ModelHeader::describe(&params, encoding) {
                            Ok(h) => h,
                            Err(e) => {
                                return Some((
                                    Message::Error(ErrorMsg {
                                        code: ErrorCode::Internal,
                                        text: format!("round {round}: {e}"),
                                    }),
                                    None,
                                ))
                            }
                        };
                        tracing::info!(
                            round,
                            examples = fit.num_examples,
                            loss = fit.metrics.get("loss").copied(),
                            seconds,
                            "sending the update"
                        );
                        self.report.updates_sent += 1;
                        Some((
                            Message::Update(Update {
                                round,
                                kind,
                                num_examples: fit.num_examples,
                                metrics: fit.metrics,
                                train_seconds: seconds,
                                model: header,
                            }),
                            Some(params),
                        ))
                    }
                    Err(e) => {
                        tracing::error!(round, "local training failed: {e}");
                        Some((
                            Message::Error(ErrorMsg {
                                code: ErrorCode::TrainingFailed,
                                text: format!("round {round}: {e}"),
                            }),
                            None,
                        ))
                    }
                }
            }
            Done::Invalid { message } => {
                tracing::warn!("cannot serve a request: {message}");
                Some((
                    Message::Error(ErrorMsg {
                        code: ErrorCode::TrainingFailed,
                        text: message,
                    }),
                    None,
                ))
            }
            Done::Evaluate { round, res } => match res {
                Ok(e) => {
                    self.report.evaluations_sent += 1;
                    Some((
                        Message::EvaluateResult(EvaluateResult {
                            round,
                            num_examples: e.num_examples,
                            loss: e.loss,
                            metrics: e.metrics,
                        }),
                        None,
                    ))
                }
                Err(e) => {
                    tracing::error!(round, "local evaluation failed: {e}");
                    Some((
                        Message::Error(ErrorMsg {
                            code: ErrorCode::TrainingFailed,
                            text: format!("evaluation of round {round}: {e}"),
                        }),
                        None,
                    ))
                }
            },
        }
    }
}

fn spawn_work(learner: Arc<dyn Learner>, work: Work) -> tokio::task::JoinHandle<Done> {
    tokio::task::spawn_blocking(move || match work {
        Work::Fit {
            round,
            ins,
            encoding,
            send_delta,
        } => {
            let t0 = Instant::now();
            let res = learner.fit(&ins);
            Done::Fit {
                round,
                res,
                global: ins.global,
                encoding,
                send_delta,
                seconds: t0.elapsed().as_secs_f64(),
            }
        }
        Work::Evaluate { round, ins } => Done::Evaluate {
            round,
            res: learner.evaluate(&ins),
        },
        Work::Invalid { message } => Done::Invalid { message },
    })
}

/// Signs a station's updates ([`fedcrime_audit::SignedUpdate`]).
struct Signer {
    key: Arc<fedcrime_audit::SigningKey>,
    run_id: String,
    station: String,
}

impl Signer {
    /// The signature message that goes just before `update` (whose tensors
    /// are `params`, sent in `encoding`).
    fn sign(&self, update: &Update, params: &Params, encoding: Encoding) -> Message {
        let received = fedcrime_wire::as_received(params, encoding);
        let signed = fedcrime_audit::SignedUpdate {
            run_id: &self.run_id,
            station: &self.station,
            round: update.round,
            num_examples: update.num_examples,
            delta: update.kind == UpdateKind::Delta,
            values_sha256: fedcrime_audit::sha256_f32_raw(received.data()),
        };
        Message::UpdateSignature(UpdateSignature {
            round: update.round,
            signature: signed.sign(&self.key).0.to_vec(),
        })
    }
}

/// The signature message that goes before a masked input (`reply`), when
/// the station signs: over the message's bytes exactly as sent.
fn sign_masked(
    signer: Option<&Signer>,
    masked: bool,
    reply: &(Message, Option<Arc<Params>>),
) -> Option<Message> {
    let (signer, (Message::SecAggUp(m), _)) = (signer.filter(|_| masked)?, reply) else {
        return None;
    };
    let signed = fedcrime_audit::SignedMaskedUpdate {
        run_id: &signer.run_id,
        station: &signer.station,
        round: m.round,
        body_sha256: fedcrime_audit::sha256_raw(&m.body),
    };
    Some(Message::UpdateSignature(UpdateSignature {
        round: m.round,
        signature: signed.sign(&signer.key).0.to_vec(),
    }))
}

/// Keeps the audit-log tree head a round's settings carry, checked against
/// the server's key and the heads kept before (with the consistency proof
/// sent along, when it starts at the last kept head); a log rewritten since
/// is reported loudly. `Some(consistency checked)` when a new head was kept.
fn record_tree_head(
    store: &mut fedcrime_audit::HeadStore,
    key: &fedcrime_audit::PublicKey,
    round: u64,
    settings: &fedcrime_wire::RoundSettings,
) -> Option<bool> {
    let text = |name: &str| match settings.extensions.get(name) {
        Some(Scalar::Str(line)) => Some(line.as_str()),
        Some(_) => {
            tracing::warn!(round, "the round's {name} is not text; ignored");
            None
        }
        None => None,
    };
    let line = text(TREE_HEAD_EXTENSION)?;
    let head: fedcrime_audit::SignedTreeHead = match serde_json::from_str(line) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(round, "unreadable tree head: {e}");
            return None;
        }
    };
    let step: Option<fedcrime_audit::ConsistencyStep> =
        text(TREE_CONSISTENCY_EXTENSION).and_then(|s| match serde_json::from_str(s) {
            Ok(step) => Some(step),
            Err(e) => {
                tracing::warn!(round, "unreadable consistency proof: {e}");
                None
            }
        });
    match store.record_checked(&head, key, step.as_ref()) {
        Ok((checked, stored)) => {
            tracing::debug!(
                round,
                tree_size = head.tree_size,
                consistency_checked = checked,
                "audit tree head kept"
            );
            stored.then_some(checked)
        }
        Err(e) => {
            tracing::error!(
                round,
                "the server's audit log does not match the heads this station kept: {e}"
            );
            None
        }
    }
}

async fn write_loop(
    mut writer: WireWriter<quinn::SendStream>,
    mut rx: mpsc::Receiver<(Message, Option<Arc<Params>>)>,
) {
    while let Some((msg, params)) = rx.recv().await {
        let last = matches!(msg, Message::Bye(_));
        // An update's values go out as slices of its own buffer: quinn takes
        // them without the copy a plain write makes.
        let sent = match writer.encode_chunks(&msg, params.as_ref()) {
            Ok(mut chunks) => writer
                .get_mut()
                .write_all_chunks(&mut chunks)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            tracing::debug!("writing {} failed: {e}", msg.name());
            return;
        }
        if last {
            break;
        }
    }
    let send = writer.get_mut();
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// Reads the model `header` announces: into `reuse`'s buffer when nothing
/// else holds it any more (a 10M-parameter model is a 40 MB allocation,
/// page-faulted anew each time), else into a new one.
async fn read_model(
    reader: &mut WireReader<quinn::RecvStream>,
    header: &ModelHeader,
    spec: &Arc<ParamSpec>,
    reuse: Option<Arc<Params>>,
) -> Result<Params, fedcrime_wire::WireError> {
    let buffer = reuse
        .and_then(|p| Arc::try_unwrap(p).ok())
        .filter(|p| Arc::ptr_eq(p.spec(), spec));
    match buffer {
        Some(mut p) => {
            reader.recv_params_into(header, &mut p).await?;
            Ok(p)
        }
        None => reader.recv_params(header, Some(spec)).await,
    }
}

async fn read_loop(
    mut reader: WireReader<quinn::RecvStream>,
    mut machine: ClientSession,
    spec: Arc<ParamSpec>,
    tx: mpsc::Sender<Incoming>,
) {
    let mut last_global: Option<Arc<Params>> = None;
    // The last attached evaluation model: its buffer takes the next one.
    let mut last_evaluated: Option<Arc<Params>> = None;
    let end = loop {
        let msg = match reader.recv_message().await {
            Ok(Some(m)) => m,
            Ok(None) => break Incoming::End("the server closed the stream".into()),
            Err(e) => break Incoming::End(format!("reading: {e}")),
        };
        let work = match machine.on_message(msg) {
            Ok(FromServer::RoundStart(rs)) => {
                let global =
                    match read_model(&mut reader, &rs.model, &spec, last_global.take()).await {
                        Ok(p) => Arc::new(p),
                        Err(e) => break Incoming::End(format!("round {} model: {e}", rs.round)),
                    };
                last_global = Some(global.clone());
                Work::Fit {
                    round: rs.round,
                    ins: fit_ins(&rs, global),
                    encoding: rs.update_encoding,
                    send_delta: rs.send_delta,
                }
            }
            Ok(FromServer::EvaluateRequest(req)) => {
                let global = match req.model {
                    EvalModel::Attached(h) => {
                        match read_model(&mut reader, &h, &spec, last_evaluated.take()).await {
                            Ok(p) => {
                                let p = Arc::new(p);
                                last_evaluated = Some(p.clone());
                                Some(p)
                            }
                            Err(e) => {
                                break Incoming::End(format!(
                                    "round {} evaluation model: {e}",
                                    req.round
                                ))
                            }
                        }
                    }
                    EvalModel::LastGlobal => last_global.clone(),
                };
                match (global, eval_config_from_wire(&req.config, req.round)) {
                    (Some(global), Ok(config)) => Work::Evaluate {
                        round: req.round,
                        ins: EvaluateIns {
                            global,
                            config: Arc::new(config),
                        },
                    },
                    (None, _) => Work::Invalid {
                        message: format!(
                            "round {}: evaluation of the last global model, but none was received",
                            req.round
                        ),
                    },
                    (_, Err(e)) => Work::Invalid {
                        message: format!("round {} evaluation: {e}", req.round),
                    },
                }
            }
            Ok(FromServer::Bye(b)) => break Incoming::Bye(b),
            Ok(FromServer::SecAgg(m)) => {
                if tx.send(Incoming::SecAgg(m)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(FromServer::Heartbeat(_)) => continue,
            Ok(FromServer::Error(e)) => {
                tracing::warn!(code = ?e.code, "the server reports: {}", e.text);
                continue;
            }
            Err(e) => break Incoming::End(e.to_string()),
        };
        if tx.send(Incoming::Work(work)).await.is_err() {
            return;
        }
    };
    let _ = tx.send(end).await;
}
