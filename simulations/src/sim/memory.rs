//! The memory transport: the federated round [`Engine`] and the stations'
//! [`Learner`]s driven directly, without sockets.
//!
//! The driver thread owns the engine. Every station connects at once; each
//! `SendFit` / `SendEvaluate` action becomes a job on a bounded pool of
//! worker threads (the concurrency of the run, normally the cores), which
//! call the station's learner and send the outcome back. Outcomes are fed
//! to the engine in the order the requests were made (a result that arrives
//! early waits for its predecessors), so the engine sees the same sequence
//! of events whatever the threads' timing; together with the engine's
//! station-ordered aggregation this makes a run replay exactly, and equal
//! the QUIC transport's for the same seed.
//!
//! Memory stays bounded: a job holds the round's shared global model (an
//! `Arc`) and the station's handle; a station materializes its rows and a
//! model only inside its job. At most `workers` trainings run at once, and
//! the engine holds one model per accepted update of the round.
//!
//! Stations join and send updates through the same sans-IO session
//! protocol as over QUIC ([`fedcrime_fl::session`]): each station's Hello is
//! answered by a server-side session before the engine hears of it, and
//! every update goes through the station's encoding and the server's
//! decoding (full f32 updates here).
//!
//! Bytes are counted as the wire protocol would carry the round messages
//! ([`super::traffic`]) and reported to the engine as
//! [`Event::Traffic`], so the round metrics have the same columns as over
//! QUIC.
//!
//! With secure aggregation ([`MemoryFederation::with_secure_aggregation`])
//! each station runs the protocol's station side ([`SecureStation`]): the
//! engine's protocol messages are jobs like any other, a finished training
//! becomes the station's masked input once its shares are in, and stations
//! may be made to drop out at a random stage of the protocol.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use fedcrime_fl::secure::{SecAggDown, SecAggUp, SecureStation};
use fedcrime_fl::{
    decode_update, encode_update, Action, Admission, ClientSession, Engine, EvaluateIns,
    EvaluateRes, Event, FitIns, FitRes, RoundMetrics, ServerSession, StationId, Summary,
    UpdateProof,
};
use fedcrime_params::Params;
use fedcrime_server::dashboard::Board;
use fedcrime_station::{Learner, StationError};
use fedcrime_wire::{Capabilities, Encoding, Extensions, Message, ServerLimits, WireConfig};

use super::traffic;

/// A station joins the in-memory run: its Hello through a server-side
/// session and that session's Welcome back through the station's, as over
/// QUIC (f32 tensors both ways).
fn join(id: &StationId, session: u64) -> Result<()> {
    let wire = WireConfig::default();
    let run = Admission {
        run_id: "memory".into(),
        model_encoding: Encoding::F32,
        update_encoding: Encoding::F32,
        limits: ServerLimits {
            max_frame_bytes: wire.max_frame_bytes,
            max_model_params: wire.max_model_params,
            heartbeat_interval_ms: 0,
            idle_timeout_ms: 0,
        },
        extensions: Extensions::new(),
    };
    let mut station = ClientSession::new(
        concat!("fedcrime-sim ", env!("CARGO_PKG_VERSION")),
        Capabilities {
            encodings: vec![Encoding::F32],
            device: "memory".into(),
            extensions: Extensions::new(),
        },
    );
    let mut server = ServerSession::new(id.clone(), session);
    let refused = |r: fedcrime_wire::Reject| anyhow::anyhow!("{id} refused: {}", r.text);
    server
        .on_first_message(Message::Hello(station.hello().clone()), &run)
        .map_err(refused)?;
    let welcome = server
        .welcome(&run)
        .with_context(|| format!("{id}: no Welcome"))?;
    station
        .on_answer(Message::Welcome(welcome))
        .with_context(|| format!("{id} cannot join"))?;
    Ok(())
}

/// What happened in a round besides the engine's record, for the
/// framework-overhead figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundTiming {
    /// Seconds from the start of the run to the end of this round.
    pub elapsed_s: f64,
    /// The longest local training of the round, seconds.
    pub slowest_fit_s: f64,
    /// Local training summed over the round's stations, seconds.
    pub total_fit_s: f64,
}

/// A finished round as a transport reports it.
#[derive(Clone, Copy, Debug)]
pub struct RoundDone<'a> {
    /// The engine's record of the round.
    pub metrics: &'a RoundMetrics,
    /// Training times of the round.
    pub timing: &'a RoundTiming,
    /// The global model after the round.
    pub global: &'a Arc<Params>,
}

/// A station request for the pool.
enum Request {
    Fit(FitIns),
    Evaluate(EvaluateIns),
    SecAgg(SecAggDown),
}

struct Job {
    seq: u64,
    station: usize,
    round: u64,
    request: Request,
}

enum Outcome {
    Fit(Result<FitRes, StationError>),
    Evaluate(Result<EvaluateRes, StationError>),
    /// A protocol answer (none when the station waits for more), or why
    /// the station could not go on. After a training, `trained` is set.
    SecAgg {
        answer: Result<Option<SecAggUp>, String>,
        trained: bool,
    },
    /// The station dropped out of the round (simulated).
    Dropped,
}

/// A station's side of secure aggregation in the current round.
#[derive(Default)]
struct SecureSlot {
    session: Option<SecureStation>,
    /// A training result that finished before the protocol's setup.
    trained: Option<(u64, FitRes)>,
    /// The global model of the round the station trains in.
    global: Option<(u64, Arc<Params>)>,
    /// The round and stage (0 keys .. 3 unmask) at which it drops, if it does.
    drop_at: Option<(u64, u8)>,
}

/// Secure aggregation in a memory federation.
struct SecureRun {
    slots: Vec<Mutex<SecureSlot>>,
    /// Probability that a station drops out at a random stage of a round.
    dropout: f64,
    seed: u64,
}

struct Done {
    seq: u64,
    station: usize,
    round: u64,
    outcome: Outcome,
    seconds: f64,
    /// With an audit log: the station's signed update as the server's
    /// session checked it (hash and signature), done on the worker as the
    /// QUIC server does it in each station's session task, in parallel.
    proof: Option<UpdateProof>,
}

/// Signed updates and the server's audit log in a memory federation: each
/// station signs its update with its own Ed25519 key, the server side
/// hashes and verifies each one, and every engine audit entry goes into an
/// RFC 6962 log whose head is signed after every round (what the QUIC
/// server does, for the same measurements without sockets).
struct AuditRun {
    log: Mutex<fedcrime_audit::AuditLog>,
    keys: Vec<fedcrime_audit::SigningKey>,
    public: Vec<fedcrime_audit::PublicKey>,
}

impl AuditRun {
    /// Station `index` (`id`) signs its update of `round` with its key
    /// (over the full f32 values the server decodes), and the server's side
    /// hashes what arrived and checks the signature with that station's
    /// public key, as a QUIC session does.
    fn sign_and_check(
        &self,
        id: &StationId,
        index: usize,
        round: u64,
        update: &FitRes,
    ) -> UpdateProof {
        let signed = fedcrime_audit::SignedUpdate {
            run_id: MEMORY_RUN_ID,
            station: id.as_str(),
            round,
            num_examples: update.num_examples,
            delta: false,
            values_sha256: fedcrime_audit::sha256_f32_raw(update.params.data()),
        };
        let signature = signed.sign(&self.keys[index]);
        // The server's side: its own hash of the values it received.
        let received = fedcrime_audit::sha256_f32_raw(update.params.data());
        let checked = fedcrime_audit::SignedUpdate {
            values_sha256: received,
            ..signed
        };
        UpdateProof {
            sha256: fedcrime_audit::hex::encode(&received),
            signature: Some(signature.to_text()),
            problem: checked
                .verify(&self.public[index], &signature)
                .err()
                .map(|e| format!("bad signature: {e}")),
        }
    }
}

/// The run name a memory federation's stations sign their updates for.
const MEMORY_RUN_ID: &str = "fedcrime-sim";

/// The stations of an in-memory federation and how many train at once.
pub struct MemoryFederation {
    ids: Vec<StationId>,
    learners: Vec<Arc<dyn Learner>>,
    index: HashMap<StationId, usize>,
    workers: usize,
    board: Option<Arc<Board>>,
    secure: Option<SecureRun>,
    audit: Option<AuditRun>,
}

impl std::fmt::Debug for MemoryFederation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryFederation")
            .field("stations", &self.ids.len())
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl MemoryFederation {
    /// Stations by name; `workers` of them train at once.
    pub fn new(stations: Vec<(StationId, Arc<dyn Learner>)>, workers: usize) -> Result<Self> {
        let mut index = HashMap::with_capacity(stations.len());
        let mut ids = Vec::with_capacity(stations.len());
        let mut learners = Vec::with_capacity(stations.len());
        for (i, (id, learner)) in stations.into_iter().enumerate() {
            if index.insert(id.clone(), i).is_some() {
                bail!("two stations are called {id}");
            }
            ids.push(id);
            learners.push(learner);
        }
        Ok(MemoryFederation {
            ids,
            learners,
            index,
            workers: workers.max(1),
            board: None,
            secure: None,
            audit: None,
        })
    }

    /// Signed updates and an audit log in `dir` (the engine must emit its
    /// audit entries: `EngineConfig::audit`): every station gets a fresh
    /// Ed25519 key, the log a fresh one.
    pub fn with_audit(mut self, dir: &std::path::Path) -> Result<Self> {
        let key = fedcrime_audit::SigningKey::generate()?;
        let log = fedcrime_audit::AuditLog::open_or_create(dir, key)
            .with_context(|| format!("opening the audit log in {}", dir.display()))?;
        let keys = self
            .ids
            .iter()
            .map(|_| fedcrime_audit::SigningKey::generate())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let public = keys.iter().map(|k| k.public_key()).collect();
        self.audit = Some(AuditRun {
            log: Mutex::new(log),
            keys,
            public,
        });
        Ok(self)
    }

    /// Runs the stations' side of secure aggregation (the engine must have
    /// it on too); each round, each station drops out with probability
    /// `dropout` at a stage drawn at random (keys, shares, masked input,
    /// unmasking), reproducibly from `seed`.
    pub fn with_secure_aggregation(mut self, dropout: f64, seed: u64) -> Self {
        self.secure = Some(SecureRun {
            slots: self.ids.iter().map(|_| Mutex::default()).collect(),
            dropout: dropout.clamp(0.0, 1.0),
            seed,
        });
        self
    }

    /// Shows the run on `board` (the agency dashboard's state).
    pub fn with_board(mut self, board: Arc<Board>) -> Self {
        self.board = Some(board);
        self
    }

    /// Passes `event` to the engine (and the board).
    fn feed(&self, engine: &mut Engine, event: Event) {
        if let Some(b) = &self.board {
            b.observe_event(&event);
        }
        engine.handle(Instant::now(), event);
    }

    /// Runs `engine` to its end, calling `on_round` after every round.
    pub fn run(
        &self,
        engine: &mut Engine,
        mut on_round: impl FnMut(RoundDone<'_>) -> Result<()>,
    ) -> Result<Summary> {
        let start = Instant::now();
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Mutex::new(job_rx);
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        std::thread::scope(|scope| -> Result<Summary> {
            for w in 0..self.workers {
                let job_rx = &job_rx;
                let done_tx = done_tx.clone();
                std::thread::Builder::new()
                    .name(format!("station-worker-{w}"))
                    .spawn_scoped(scope, move || self.work(job_rx, done_tx))
                    .context("starting a station worker")?;
            }
            drop(done_tx);
            let outcome = self.drive(engine, start, &job_tx, &done_rx, &mut on_round);
            // Closing the queue stops the workers.
            drop(job_tx);
            outcome
        })
    }

    /// A worker: takes jobs until the queue closes.
    fn work(&self, jobs: &Mutex<mpsc::Receiver<Job>>, done: mpsc::Sender<Done>) {
        loop {
            let job = match jobs.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok(job) = job else { return };
            let learner = &self.learners[job.station];
            let t0 = Instant::now();
            let outcome = match (job.request, &self.secure) {
                (Request::Fit(ins), Some(secure)) => {
                    secure_fit(secure, job.station, job.round, &ins, learner.fit(&ins))
                }
                (Request::Fit(ins), None) => Outcome::Fit(learner.fit(&ins)),
                (Request::Evaluate(ins), _) => Outcome::Evaluate(learner.evaluate(&ins)),
                (Request::SecAgg(msg), Some(secure)) => {
                    secure_message(secure, job.station, job.round, msg)
                }
                (Request::SecAgg(_), None) => Outcome::SecAgg {
                    answer: Err("secure aggregation is off at this station".into()),
                    trained: false,
                },
            };
            let proof = match (&self.audit, &outcome) {
                (Some(a), Outcome::Fit(Ok(update))) => {
                    Some(a.sign_and_check(&self.ids[job.station], job.station, job.round, update))
                }
                _ => None,
            };
            let seconds = t0.elapsed().as_secs_f64();
            let sent = done.send(Done {
                seq: job.seq,
                station: job.station,
                round: job.round,
                outcome,
                seconds,
                proof,
            });
            if sent.is_err() {
                return;
            }
        }
    }

    fn drive(
        &self,
        engine: &mut Engine,
        start: Instant,
        jobs: &mpsc::Sender<Job>,
        done: &mpsc::Receiver<Done>,
        on_round: &mut impl FnMut(RoundDone<'_>) -> Result<()>,
    ) -> Result<Summary> {
        for (session, id) in self.ids.iter().enumerate() {
            join(id, session as u64)?;
            self.feed(engine, Event::StationConnected { id: id.clone() });
        }
        let mut next_seq = 0u64;
        let mut expected = 0u64;
        let mut early: BTreeMap<u64, Done> = BTreeMap::new();
        let mut timing = RoundTiming::default();
        // A finished round's record, until its checkpoint brings the model.
        let mut finished: Option<Box<RoundMetrics>> = None;
        // The RoundStart size of the current round's model (computed once per round).
        let mut round_start: Option<(u64, u64)> = None;
        loop {
            while let Some(action) = engine.poll_action() {
                if let Some(b) = &self.board {
                    b.observe_action(&action);
                }
                match action {
                    Action::SendFit {
                        station,
                        round,
                        ins,
                    } => {
                        let bytes = match round_start {
                            Some((r, b)) if r == round => b,
                            _ => {
                                let b = traffic::round_start_bytes(&ins)?;
                                round_start = Some((round, b));
                                b
                            }
                        };
                        self.feed(
                            engine,
                            Event::Traffic {
                                bytes_in: 0,
                                bytes_out: bytes,
                            },
                        );
                        self.submit(jobs, &mut next_seq, &station, round, Request::Fit(ins))?;
                    }
                    Action::SendEvaluate {
                        station,
                        round,
                        ins,
                    } => {
                        self.submit(jobs, &mut next_seq, &station, round, Request::Evaluate(ins))?;
                    }
                    Action::SendSecAgg {
                        station,
                        round,
                        msg,
                    } => {
                        self.feed(
                            engine,
                            Event::Traffic {
                                bytes_in: 0,
                                bytes_out: msg.wire_bytes(),
                            },
                        );
                        self.submit(jobs, &mut next_seq, &station, round, Request::SecAgg(msg))?;
                    }
                    Action::RoundFinished(metrics) => {
                        self.sign_head(metrics.round)?;
                        timing.elapsed_s = start.elapsed().as_secs_f64();
                        finished = Some(metrics);
                    }
                    Action::Audit(entry) => {
                        if let Some(a) = &self.audit {
                            a.log
                                .lock()
                                .map_err(|_| anyhow::anyhow!("the audit log's lock is poisoned"))?
                                .append(&entry)?;
                        }
                    }
                    // Checkpoints are for servers that may be restarted (a
                    // simulation is rerun instead); the model is reported.
                    Action::Checkpoint(c) => {
                        if let Some(metrics) = finished.take() {
                            on_round(RoundDone {
                                metrics: &metrics,
                                timing: &timing,
                                global: &c.global,
                            })?;
                        }
                        timing = RoundTiming::default();
                    }
                    Action::Finished(summary) => {
                        self.sign_head(summary.rounds_completed)?;
                        return Ok(summary);
                    }
                }
            }
            if expected == next_seq {
                // Nothing in flight: only the engine's timer can move it on.
                let Some(at) = engine.poll_timeout() else {
                    bail!(
                        "the round engine stalled in round {} with no request in flight",
                        engine.round()
                    );
                };
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                engine.handle_timeout(Instant::now());
                continue;
            }
            let received = match engine.poll_timeout() {
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    match done.recv_timeout(wait) {
                        Ok(d) => Some(d),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            bail!("every station worker stopped")
                        }
                    }
                }
                None => Some(done.recv().context("every station worker stopped")?),
            };
            match received {
                Some(d) => {
                    early.insert(d.seq, d);
                }
                None => engine.handle_timeout(Instant::now()),
            }
            while let Some(d) = early.remove(&expected) {
                expected += 1;
                self.deliver(engine, d, &mut timing)?;
            }
        }
    }

    fn submit(
        &self,
        jobs: &mpsc::Sender<Job>,
        next_seq: &mut u64,
        station: &StationId,
        round: u64,
        request: Request,
    ) -> Result<()> {
        let Some(&i) = self.index.get(station) else {
            bail!("the engine asked for an unknown station {station}");
        };
        jobs.send(Job {
            seq: *next_seq,
            station: i,
            round,
            request,
        })
        .map_err(|_| anyhow::anyhow!("every station worker stopped"))?;
        *next_seq += 1;
        Ok(())
    }

    /// Signs the audit log's head after `round`, when there is a log.
    fn sign_head(&self, round: u64) -> Result<()> {
        if let Some(a) = &self.audit {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            a.log
                .lock()
                .map_err(|_| anyhow::anyhow!("the audit log's lock is poisoned"))?
                .sign_head(round, now_ms)?;
        }
        Ok(())
    }

    /// Hands a finished request to the engine.
    fn deliver(&self, engine: &mut Engine, d: Done, timing: &mut RoundTiming) -> Result<()> {
        let id = self.ids[d.station].clone();
        let round = d.round;
        let event = match d.outcome {
            Outcome::Fit(Ok(mut update)) => {
                timing.slowest_fit_s = timing.slowest_fit_s.max(d.seconds);
                timing.total_fit_s += d.seconds;
                let bytes = traffic::update_bytes(round, &update, d.seconds)?;
                // As over the wire: encoded by the station, decoded by the server.
                let global = engine.global().clone();
                let (sent, kind) = encode_update(update.params, &global, false);
                update.params = decode_update(kind, sent, &global);
                self.feed(
                    engine,
                    Event::Traffic {
                        bytes_in: bytes,
                        bytes_out: 0,
                    },
                );
                let proof = d.proof;
                Event::UpdateReceived {
                    id,
                    round,
                    update,
                    proof,
                }
            }
            Outcome::Fit(Err(e)) => Event::FitFailed {
                id,
                round,
                message: format!("{e:#}"),
            },
            Outcome::Evaluate(Ok(result)) => Event::EvaluationReceived { id, round, result },
            Outcome::Evaluate(Err(e)) => Event::EvaluateFailed {
                id,
                round,
                message: format!("{e:#}"),
            },
            Outcome::SecAgg { answer, trained } => {
                if trained {
                    timing.slowest_fit_s = timing.slowest_fit_s.max(d.seconds);
                    timing.total_fit_s += d.seconds;
                }
                match answer {
                    Ok(None) => return Ok(()),
                    Ok(Some(msg)) => {
                        self.feed(
                            engine,
                            Event::Traffic {
                                bytes_in: msg.wire_bytes(),
                                bytes_out: 0,
                            },
                        );
                        Event::SecAggReceived {
                            id,
                            round,
                            msg,
                            proof: None,
                        }
                    }
                    Err(message) => Event::FitFailed {
                        id,
                        round,
                        message: format!("secure aggregation: {message}"),
                    },
                }
            }
            Outcome::Dropped => {
                // Gone for this round; back for the next ones.
                self.feed(engine, Event::StationDisconnected { id: id.clone() });
                Event::StationConnected { id }
            }
        };
        self.feed(engine, event);
        Ok(())
    }
}

/// Whether the station drops at `stage` of `round` (drawn once per round,
/// as a QUIC station simulating dropouts draws it:
/// [`fedcrime_client::SecAggDropout::stage`]).
fn drops(secure: &SecureRun, slot: &mut SecureSlot, station: usize, round: u64, stage: u8) -> bool {
    if slot.drop_at.is_none_or(|(r, _)| r != round) {
        let dropout = fedcrime_client::SecAggDropout {
            probability: secure.dropout,
            seed: secure.seed,
        };
        let at = dropout.stage(station as u64, round).unwrap_or(u8::MAX);
        slot.drop_at = Some((round, at));
    }
    slot.drop_at == Some((round, stage))
}

/// A training finished at a station that runs secure aggregation: its
/// masked input, if the protocol got that far, or nothing yet.
fn secure_fit(
    secure: &SecureRun,
    station: usize,
    round: u64,
    ins: &FitIns,
    trained: Result<FitRes, StationError>,
) -> Outcome {
    let trained = match trained {
        Ok(t) => t,
        Err(e) => return Outcome::Fit(Err(e)),
    };
    let mut slot = secure.slots[station]
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    slot.global = Some((round, ins.global.clone()));
    let answer = match &mut slot.session {
        Some(session) if session.round() == round => {
            session.set_global(ins.global.clone());
            session.on_trained(trained).map_err(|e| e.to_string())
        }
        _ => {
            slot.trained = Some((round, trained));
            Ok(None)
        }
    };
    if matches!(answer, Ok(Some(_))) && drops(secure, &mut slot, station, round, 2) {
        return Outcome::Dropped;
    }
    Outcome::SecAgg {
        answer,
        trained: true,
    }
}

/// A protocol message at a station.
fn secure_message(secure: &SecureRun, station: usize, round: u64, msg: SecAggDown) -> Outcome {
    let mut slot = secure.slots[station]
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let stage = match &msg {
        SecAggDown::Setup { .. } => 0,
        SecAggDown::Roster(_) => 1,
        SecAggDown::Shares(_) => 2,
        SecAggDown::Unmask(_) => 3,
    };
    // A masked input is sent from the shares message or from the training,
    // whichever comes last; a drop at stage 2 is checked where it is sent.
    if stage != 2 && drops(secure, &mut slot, station, round, stage) {
        slot.session = None;
        return Outcome::Dropped;
    }
    let answer = match msg {
        SecAggDown::Setup { setup, slot: s } => {
            let global = slot
                .global
                .as_ref()
                .filter(|(r, _)| *r == round)
                .map(|(_, g)| g.clone());
            match SecureStation::start(setup, s, global) {
                Ok((mut session, keys)) => {
                    // A training that finished first waits for the shares.
                    if let Some((r, trained)) = slot.trained.take() {
                        if r == round {
                            if let Err(e) = session.on_trained(trained) {
                                return Outcome::SecAgg {
                                    answer: Err(e.to_string()),
                                    trained: false,
                                };
                            }
                        }
                    }
                    slot.session = Some(session);
                    Ok(Some(keys))
                }
                Err(e) => Err(e.to_string()),
            }
        }
        other => match &mut slot.session {
            Some(session) if session.round() == round => {
                session.on_message(other).map_err(|e| e.to_string())
            }
            _ => Err(format!("{} without a running protocol", other.name())),
        },
    };
    if stage == 2 && matches!(answer, Ok(Some(_))) && drops(secure, &mut slot, station, round, 2) {
        return Outcome::Dropped;
    }
    Outcome::SecAgg {
        answer,
        trained: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_fl::{EngineConfig, FitIns, Metrics, StrategyConfig};
    use fedcrime_params::{ParamSpec, Params};

    /// A station whose "training" adds its number to every value, slowly
    /// for low numbers so that results arrive out of order.
    struct Adder {
        add: f32,
        examples: u64,
    }

    impl Learner for Adder {
        fn fit(&self, ins: &FitIns) -> fedcrime_station::Result<FitRes> {
            std::thread::sleep(std::time::Duration::from_millis((40.0 / self.add) as u64));
            let mut params = (*ins.global).clone();
            for v in params.data_mut() {
                *v += self.add;
            }
            Ok(FitRes {
                params: Arc::new(params),
                num_examples: self.examples,
                metrics: Metrics::from([("loss".to_string(), f64::from(self.add))]),
            })
        }
        fn evaluate(&self, _: &EvaluateIns) -> fedcrime_station::Result<EvaluateRes> {
            Ok(EvaluateRes {
                loss: f64::from(self.add),
                num_examples: self.examples,
                metrics: Metrics::new(),
            })
        }
    }

    fn engine(rounds: u64, fraction: f64, stations: usize) -> Engine {
        let spec = Arc::new(ParamSpec::new([("w", vec![3])]).unwrap());
        let config = EngineConfig {
            rounds,
            min_stations: stations,
            fraction_fit: fraction,
            min_fit: 1,
            min_updates: 1,
            seed: 5,
            ..EngineConfig::default()
        };
        let strategy = StrategyConfig::default().build().unwrap();
        Engine::new(config, strategy, Params::zeros(spec), Instant::now()).unwrap()
    }

    fn federation(n: usize, workers: usize) -> MemoryFederation {
        let stations = (1..=n)
            .map(|i| {
                let learner: Arc<dyn Learner> = Arc::new(Adder {
                    add: i as f32,
                    examples: i as u64,
                });
                (StationId::new(format!("s{i:02}")).unwrap(), learner)
            })
            .collect();
        MemoryFederation::new(stations, workers).unwrap()
    }

    #[test]
    fn fedavg_rounds_match_the_hand_computed_average() {
        let fed = federation(4, 3);
        let mut engine = engine(2, 1.0, 4);
        let mut seen = Vec::new();
        let summary = fed
            .run(&mut engine, |r| {
                seen.push((
                    r.metrics.clone(),
                    r.timing.clone(),
                    r.global.data().to_vec(),
                ));
                Ok(())
            })
            .unwrap();
        assert_eq!(summary.rounds_completed, 2);
        // Each round adds the example-weighted mean of 1..4: (1+4+9+16)/10 = 3.
        assert_eq!(engine.global().data(), &[6.0, 6.0, 6.0]);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].2, vec![6.0; 3]);
        let (m, t, g) = &seen[0];
        assert_eq!(g, &vec![3.0; 3]);
        assert_eq!(m.completed.len(), 4);
        assert_eq!(m.train_loss, Some(3.0));
        assert!(m.bytes_out > 4 * 12 && m.bytes_in > 4 * 12, "{m:?}");
        assert!(t.slowest_fit_s >= 0.009 && t.total_fit_s >= t.slowest_fit_s);
        // Federated evaluation ran on every connected station.
        assert_eq!(m.eval_completed, 4);
        assert_eq!(m.eval_loss, Some(3.0));
    }

    #[test]
    fn sampled_rounds_replay_exactly_with_any_worker_count() {
        let run = |workers| {
            let fed = federation(12, workers);
            let mut engine = engine(3, 0.25, 12);
            let mut sampled = Vec::new();
            fed.run(&mut engine, |r| {
                sampled.push(r.metrics.completed.clone());
                Ok(())
            })
            .unwrap();
            (engine.global().data().to_vec(), sampled)
        };
        let (a, sa) = run(1);
        let (b, sb) = run(4);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert!(sa.iter().all(|s| s.len() == 3), "{sa:?}");
    }

    fn secure_engine(rounds: u64, stations: usize) -> Engine {
        let spec = Arc::new(ParamSpec::new([("w", vec![3])]).unwrap());
        let config = EngineConfig {
            rounds,
            min_stations: stations,
            min_fit: 3,
            min_updates: 3,
            seed: 5,
            // The adders move each value by up to 9: a wider clip range,
            // and a finer grid for the first round's small weights.
            secure_aggregation: Some(fedcrime_fl::secure::SecAggConfig {
                clip_range: 16.0,
                quantization_bits: 24,
                ..Default::default()
            }),
            ..EngineConfig::default()
        };
        let strategy = StrategyConfig::default().build().unwrap();
        Engine::new(config, strategy, Params::zeros(spec), Instant::now()).unwrap()
    }

    #[test]
    fn secure_rounds_give_the_weighted_average_and_survive_dropouts() {
        // Station i adds i with weight i: each round adds Σi² / Σi.
        let fed = federation(9, 2).with_secure_aggregation(0.0, 1);
        let mut engine = secure_engine(2, 9);
        let summary = fed.run(&mut engine, |_| Ok(())).unwrap();
        assert_eq!(summary.rounds_completed, 2);
        let step = 285.0 / 45.0;
        for v in engine.global().data() {
            // Round 1 weighs 1..9 examples against a scale of 1,000; round
            // 2 against 9 (the most reported in round 1).
            assert!((v - 2.0 * step).abs() < 0.01, "{v} vs {}", 2.0 * step);
        }
        assert_eq!(engine.history()[1].completed.len(), 9);
        // Stations dropping at random stages: every round still completes.
        let fed = federation(9, 2).with_secure_aggregation(0.2, 3);
        let mut engine = secure_engine(4, 9);
        let mut completed = Vec::new();
        let summary = fed
            .run(&mut engine, |r| {
                assert!(r.metrics.aggregated, "{:?}", r.metrics.note);
                completed.push(r.metrics.completed.len());
                Ok(())
            })
            .unwrap();
        assert_eq!(summary.rounds_completed, 4);
        assert!(completed.iter().any(|&c| c < 9), "{completed:?}");
    }

    #[test]
    fn audited_rounds_sign_every_update_and_keep_a_verifiable_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit");
        let fed = federation(5, 2).with_audit(&log).unwrap();
        let spec = Arc::new(ParamSpec::new([("w", vec![3])]).unwrap());
        let config = EngineConfig {
            rounds: 3,
            min_stations: 5,
            min_fit: 1,
            min_updates: 1,
            audit: true,
            ..EngineConfig::default()
        };
        let strategy = StrategyConfig::default().build().unwrap();
        let mut engine =
            Engine::new(config, strategy, Params::zeros(spec), Instant::now()).unwrap();
        let mut rounds = Vec::new();
        fed.run(&mut engine, |r| {
            rounds.push(r.metrics.clone());
            Ok(())
        })
        .unwrap();
        assert!(rounds
            .iter()
            .all(|m| m.completed.len() == 5 && m.failed.is_empty()));
        let report = fedcrime_audit::verify_log_strict(&log, None).unwrap();
        assert_eq!((report.updates_accepted, report.updates_refused), (15, 0));
        assert_eq!(report.heads, 4);
        let bundle = fedcrime_audit::prove(&log, 2, "s03").unwrap();
        fedcrime_audit::check_proof(&bundle, &bundle.public_key, &[]).unwrap();
    }

    #[test]
    fn duplicate_station_names_are_refused() {
        let learner: Arc<dyn Learner> = Arc::new(Adder {
            add: 1.0,
            examples: 1,
        });
        let stations = vec![
            (StationId::new("a").unwrap(), learner.clone()),
            (StationId::new("a").unwrap(), learner),
        ];
        assert!(MemoryFederation::new(stations, 1).is_err());
    }
}
