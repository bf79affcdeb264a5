//! The round engine: a deterministic state machine that runs federated
//! rounds (see the [module docs](super) for the driving protocol).
//!
//! A round goes through these phases:
//!
//! 1. *Waiting* until at least `min_stations` are connected (optionally
//!    giving up after `station_wait_timeout`).
//! 2. *Fit*: sample `max(floor(fraction_fit * connected), min_fit)` stations
//!    with a generator seeded by `(seed, round, attempt)`, send them the
//!    global model ([`Action::SendFit`]) and collect updates until every
//!    sampled station answered, failed or disconnected, or the deadline
//!    passed. Replies are validated ([`super::validate`]); refusals and losses
//!    are counted by [`FailureKind`]. Collection also ends early once
//!    `min_updates` has become unreachable.
//! 3. With at least `min_updates` accepted updates the [`Strategy`]
//!    aggregates them (sorted by station, so arrival order never changes the
//!    result). Otherwise the round is retried with a fresh sample after a
//!    backoff, at most `retry.max_retries` times, and then skipped or the run
//!    aborted (`retry.on_exhausted`): the engine never hangs.
//! 4. On evaluation rounds (every `eval_every`, and the last), server-side
//!    evaluation ([`Strategy::evaluate`]) and, if configured, *Evaluate*:
//!    federated evaluation on a sample, until all answered or its deadline.
//! 5. [`Action::RoundFinished`] with the [`RoundMetrics`], then
//!    [`Action::Checkpoint`]; after the last round [`Action::Finished`].
//!
//! Retries discard the failed attempt's updates: the new sample trains again
//! from the same global model, so every aggregated update answers the same
//! request.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, CheckpointStore};
use super::error::{FlError, Result};
use super::metrics::RoundMetrics;
use super::strategy::{
    kernels, weighted_metrics, Config, ConfigValue, EvaluateIns, EvaluateRes, FitIns, FitRes,
    Strategy, LOSS_KEY,
};
use super::validate::{check_round, FailureKind, Refusal, Validator};
use super::StationId;
use crate::params::Params;

/// The config key every fit and evaluate config carries: the round number.
pub const SERVER_ROUND_KEY: &str = "server_round";

/// What to do when a round still has too few updates after its retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExhausted {
    /// Stop the run ([`Outcome::Aborted`]); completed rounds stay checkpointed.
    #[default]
    Abort,
    /// Keep the old model, record the round as not aggregated and go on.
    Skip,
}

/// How a round with too few updates is retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Fresh samples tried after the first attempt (default 2).
    pub max_retries: u32,
    /// Pause before each retry, seconds in files (default 1).
    #[serde(with = "secs")]
    pub backoff: Duration,
    /// What happens when the retries are used up (default `abort`).
    pub on_exhausted: OnExhausted,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            backoff: Duration::from_secs(1),
            on_exhausted: OnExhausted::Abort,
        }
    }
}

/// The engine's settings. Durations are seconds in config files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Rounds to run (default 10).
    pub rounds: u64,
    /// Stations that must be connected before a round starts (default 2).
    pub min_stations: usize,
    /// Fraction of connected stations sampled to train (default 1.0).
    #[serde(alias = "fraction")]
    pub fraction_fit: f64,
    /// Minimum stations sampled to train (default 2).
    pub min_fit: usize,
    /// Minimum accepted updates to aggregate (default 2).
    pub min_updates: usize,
    /// How long a round waits for updates (default 600 s).
    #[serde(with = "secs")]
    pub round_deadline: Duration,
    /// Retrying rounds with too few updates.
    pub retry: RetryPolicy,
    /// Give up when not enough stations connect in this time (default: wait forever).
    #[serde(with = "opt_secs")]
    pub station_wait_timeout: Option<Duration>,
    /// Federated evaluation every k rounds, and after the last (0: never; default 1).
    pub eval_every: u64,
    /// Fraction of connected stations asked to evaluate (0 disables; default 1.0).
    pub fraction_evaluate: f64,
    /// Minimum stations asked to evaluate (default 1).
    pub min_evaluate: usize,
    /// How long evaluation waits for answers (default 300 s).
    #[serde(with = "secs")]
    pub evaluate_deadline: Duration,
    /// Refuse updates with `||w - w_global||` above this (default: no bound).
    pub max_update_norm: Option<f64>,
    /// Seed of the station sampling (default 0).
    pub seed: u64,
    /// Settings sent with every fit request (epochs, batch size, learning rate, ...).
    pub fit_config: Config,
    /// Settings sent with every evaluate request.
    pub evaluate_config: Config,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            rounds: 10,
            min_stations: 2,
            fraction_fit: 1.0,
            min_fit: 2,
            min_updates: 2,
            round_deadline: Duration::from_secs(600),
            retry: RetryPolicy::default(),
            station_wait_timeout: None,
            eval_every: 1,
            fraction_evaluate: 1.0,
            min_evaluate: 1,
            evaluate_deadline: Duration::from_secs(300),
            max_update_norm: None,
            seed: 0,
            fit_config: Config::new(),
            evaluate_config: Config::new(),
        }
    }
}

impl EngineConfig {
    /// Checks ranges and consistency, naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| Err(FlError::config(field, message));
        if self.rounds == 0 {
            return bad("rounds", "must be at least 1".into());
        }
        if self.min_stations == 0 {
            return bad("min_stations", "must be at least 1".into());
        }
        if !(self.fraction_fit > 0.0 && self.fraction_fit <= 1.0) {
            return bad(
                "fraction_fit",
                format!("must be in (0, 1], got {}", self.fraction_fit),
            );
        }
        if self.min_fit == 0 {
            return bad("min_fit", "must be at least 1".into());
        }
        if self.min_fit > self.min_stations {
            return bad(
                "min_fit",
                format!(
                    "{} exceeds min_stations ({})",
                    self.min_fit, self.min_stations
                ),
            );
        }
        if self.min_updates == 0 || self.min_updates > self.min_fit {
            return bad(
                "min_updates",
                format!(
                    "must be in 1..=min_fit ({}), got {}",
                    self.min_fit, self.min_updates
                ),
            );
        }
        if self.round_deadline.is_zero() {
            return bad("round_deadline", "must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.fraction_evaluate) {
            return bad(
                "fraction_evaluate",
                format!("must be in [0, 1], got {}", self.fraction_evaluate),
            );
        }
        if self.evaluate_deadline.is_zero() {
            return bad("evaluate_deadline", "must be positive".into());
        }
        if let Some(max) = self.max_update_norm {
            if !(max.is_finite() && max > 0.0) {
                return bad(
                    "max_update_norm",
                    format!("must be finite and > 0, got {max}"),
                );
            }
        }
        Ok(())
    }

    /// Whether `round` is an evaluation round.
    pub fn is_eval_round(&self, round: u64) -> bool {
        self.eval_every > 0 && (round % self.eval_every == 0 || round == self.rounds)
    }
}

/// Something that happened, fed to [`Engine::handle`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A station is connected and ready for requests.
    StationConnected {
        /// The station.
        id: StationId,
    },
    /// A station is gone; whatever it was asked is lost.
    StationDisconnected {
        /// The station.
        id: StationId,
    },
    /// A station sent its trained parameters.
    UpdateReceived {
        /// The station.
        id: StationId,
        /// The round the station says it answers.
        round: u64,
        /// The update.
        update: FitRes,
    },
    /// A station reports that it could not train.
    FitFailed {
        /// The station.
        id: StationId,
        /// The round it was asked for.
        round: u64,
        /// Its explanation, for the log.
        message: String,
    },
    /// A station sent its evaluation of the global model.
    EvaluationReceived {
        /// The station.
        id: StationId,
        /// The round the station says it answers.
        round: u64,
        /// The evaluation.
        result: EvaluateRes,
    },
    /// A station reports that it could not evaluate.
    EvaluateFailed {
        /// The station.
        id: StationId,
        /// The round it was asked for.
        round: u64,
        /// Its explanation, for the log.
        message: String,
    },
    /// Bytes moved on the wire, added to the current round's metrics.
    Traffic {
        /// Bytes received from stations.
        bytes_in: u64,
        /// Bytes sent to stations.
        bytes_out: u64,
    },
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    /// All rounds completed.
    Completed,
    /// The run stopped early.
    Aborted {
        /// The round that could not complete.
        round: u64,
        /// Why.
        reason: String,
    },
}

/// The end of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Rounds completed (including rounds completed before a resume).
    pub rounds_completed: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Something the driver must do, from [`Engine::poll_action`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Action {
    /// Ask a station to train from the global model.
    SendFit {
        /// The station.
        station: StationId,
        /// The round it answers.
        round: u64,
        /// The model and settings (shared by all stations of the round).
        ins: FitIns,
    },
    /// Ask a station to evaluate the global model.
    SendEvaluate {
        /// The station.
        station: StationId,
        /// The round it answers.
        round: u64,
        /// The model and settings.
        ins: EvaluateIns,
    },
    /// A round completed (write its metrics).
    RoundFinished(Box<RoundMetrics>),
    /// Persist this state (e.g. [`CheckpointStore::save`]); a resume
    /// continues after its round.
    Checkpoint(Box<Checkpoint>),
    /// The run is over; no further actions follow.
    Finished(Summary),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Answered,
    Failed,
}

struct FitPhase {
    deadline: Instant,
    started: Instant,
    status: BTreeMap<StationId, Status>,
    validator: Validator,
    results: BTreeMap<StationId, FitRes>,
}

struct EvalPhase {
    deadline: Instant,
    started: Instant,
    status: BTreeMap<StationId, Status>,
    results: BTreeMap<StationId, EvaluateRes>,
}

enum Phase {
    Waiting { since: Instant },
    Backoff { until: Instant },
    Fit(FitPhase),
    Evaluate(EvalPhase),
    Finished,
}

/// The sampling stream of federated evaluation (fit attempts use 0, 1, ...).
const EVAL_STREAM: u64 = 1 << 32;

/// The federated round engine. See the [module docs](self).
pub struct Engine {
    config: EngineConfig,
    strategy: Box<dyn Strategy>,
    global: Arc<Params>,
    round: u64,
    phase: Phase,
    connected: BTreeSet<StationId>,
    actions: VecDeque<Action>,
    history: Vec<RoundMetrics>,
    current: RoundMetrics,
    start: Instant,
    round_start: Instant,
    stopwatch: Option<Box<dyn FnMut() -> Instant + Send>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("round", &self.round)
            .field("strategy", &self.strategy.name())
            .field("connected", &self.connected.len())
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A fresh run from `initial` parameters, starting at `now`.
    pub fn new(
        config: EngineConfig,
        strategy: Box<dyn Strategy>,
        initial: Params,
        now: Instant,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Engine {
            config,
            strategy,
            global: Arc::new(initial),
            round: 1,
            phase: Phase::Waiting { since: now },
            connected: BTreeSet::new(),
            actions: VecDeque::new(),
            history: Vec::new(),
            current: RoundMetrics::new(1),
            start: now,
            round_start: now,
            stopwatch: None,
        })
    }

    /// Continues a run after the checkpoint's round: its global model,
    /// strategy state and metrics history. If the checkpoint already covers
    /// `config.rounds`, the engine finishes at once.
    pub fn from_checkpoint(
        config: EngineConfig,
        mut strategy: Box<dyn Strategy>,
        checkpoint: Checkpoint,
        now: Instant,
    ) -> Result<Self> {
        config.validate()?;
        strategy.restore(checkpoint.strategy)?;
        let round = checkpoint.round + 1;
        let mut engine = Engine {
            config,
            strategy,
            global: checkpoint.global,
            round,
            phase: Phase::Waiting { since: now },
            connected: BTreeSet::new(),
            actions: VecDeque::new(),
            history: checkpoint.history,
            current: RoundMetrics::new(round),
            start: now,
            round_start: now,
            stopwatch: None,
        };
        tracing::info!(after_round = checkpoint.round, "resuming federated run");
        if checkpoint.round >= engine.config.rounds {
            engine.finish(Outcome::Completed);
        }
        Ok(engine)
    }

    /// Resumes from the latest checkpoint in `dir` when there is one (its
    /// model must have `initial`'s layout), otherwise starts from `initial`.
    pub fn resume(
        dir: &Path,
        config: EngineConfig,
        strategy: Box<dyn Strategy>,
        initial: Params,
        now: Instant,
    ) -> Result<Self> {
        match CheckpointStore::new(dir).load_latest()? {
            Some(checkpoint) => {
                initial.spec().check_same(checkpoint.global.spec())?;
                Engine::from_checkpoint(config, strategy, checkpoint, now)
            }
            None => Engine::new(config, strategy, initial, now),
        }
    }

    /// Gives the engine a clock for one purpose: timing aggregation
    /// ([`RoundMetrics::aggregate_s`]). Decisions never read it.
    pub fn set_stopwatch(&mut self, stopwatch: impl FnMut() -> Instant + Send + 'static) {
        self.stopwatch = Some(Box::new(stopwatch));
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The current global model.
    pub fn global(&self) -> &Arc<Params> {
        &self.global
    }

    /// The round in progress (after the run: one past the last).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Completed rounds' metrics, oldest first.
    pub fn history(&self) -> &[RoundMetrics] {
        &self.history
    }

    /// The metrics of the round in progress.
    pub fn current_metrics(&self) -> &RoundMetrics {
        &self.current
    }

    /// Connected stations, sorted.
    pub fn connected(&self) -> impl Iterator<Item = &StationId> {
        self.connected.iter()
    }

    /// The strategy's name.
    pub fn strategy_name(&self) -> &str {
        self.strategy.name()
    }

    /// Whether [`Action::Finished`] has been queued.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Waiting { since } => self.config.station_wait_timeout.map(|t| *since + t),
            Phase::Backoff { until } => Some(*until),
            Phase::Fit(f) => Some(f.deadline),
            Phase::Evaluate(e) => Some(e.deadline),
            Phase::Finished => None,
        }
    }

    /// Processes every deadline that passed by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// Processes one event at `now`. Deadlines that passed by `now` are
    /// processed first, so a reply arriving after its deadline is late even
    /// if the driver's timer has not fired yet.
    pub fn handle(&mut self, now: Instant, event: Event) {
        self.advance(now);
        match event {
            Event::StationConnected { id } => {
                if self.connected.insert(id.clone()) {
                    tracing::debug!(station = %id, "station connected");
                }
            }
            Event::StationDisconnected { id } => self.on_disconnect(id),
            Event::UpdateReceived { id, round, update } => self.on_update(id, round, update),
            Event::FitFailed { id, round, message } => self.on_fit_failed(id, round, &message),
            Event::EvaluationReceived { id, round, result } => {
                self.on_evaluation(id, round, result)
            }
            Event::EvaluateFailed { id, round, message } => {
                self.on_evaluate_failed(id, round, &message)
            }
            Event::Traffic {
                bytes_in,
                bytes_out,
            } => {
                self.current.bytes_in += bytes_in;
                self.current.bytes_out += bytes_out;
            }
        }
        self.advance(now);
    }

    fn on_disconnect(&mut self, id: StationId) {
        if !self.connected.remove(&id) {
            return;
        }
        tracing::debug!(station = %id, "station disconnected");
        match &mut self.phase {
            Phase::Fit(f) => {
                if let Some(s @ Status::Pending) = f.status.get_mut(&id) {
                    *s = Status::Failed;
                    self.current.count_failure(FailureKind::Disconnected);
                    tracing::warn!(station = %id, round = self.round, "station disconnected during training");
                }
            }
            Phase::Evaluate(e) => {
                if let Some(s @ Status::Pending) = e.status.get_mut(&id) {
                    *s = Status::Failed;
                    self.current.count_eval_failure(FailureKind::Disconnected);
                }
            }
            _ => {}
        }
    }

    fn refuse(&mut self, id: &StationId, refusal: Refusal) {
        tracing::warn!(station = %id, round = self.round, reason = %refusal.kind(), "update refused: {refusal}");
        if !self.is_finished() {
            self.current.count_failure(refusal.kind());
        }
    }

    fn on_update(&mut self, id: StationId, round: u64, update: FitRes) {
        if let Err(r) = check_round(self.round, round) {
            return self.refuse(&id, r);
        }
        let current_round = self.round;
        let Phase::Fit(f) = &mut self.phase else {
            return self.refuse(
                &id,
                Refusal::NotSampled {
                    round: current_round,
                },
            );
        };
        let status = f.status.get(&id).copied();
        if matches!(status, None | Some(Status::Failed)) {
            return self.refuse(
                &id,
                Refusal::NotSampled {
                    round: current_round,
                },
            );
        }
        match f.validator.check(&id, round, &self.global, &update) {
            Ok(()) => {
                f.status.insert(id.clone(), Status::Answered);
                f.results.insert(id, update);
            }
            Err(refusal) => {
                if status == Some(Status::Pending) {
                    f.status.insert(id.clone(), Status::Failed);
                }
                self.refuse(&id, refusal);
            }
        }
    }

    fn on_fit_failed(&mut self, id: StationId, round: u64, message: &str) {
        if round != self.round {
            return;
        }
        if let Phase::Fit(f) = &mut self.phase {
            if let Some(s @ Status::Pending) = f.status.get_mut(&id) {
                *s = Status::Failed;
                self.current.count_failure(FailureKind::StationError);
                tracing::warn!(station = %id, round, "station could not train: {message}");
            }
        }
    }

    fn on_evaluation(&mut self, id: StationId, round: u64, result: EvaluateRes) {
        if self.is_finished() {
            return;
        }
        let kind = if round != self.round {
            Some(FailureKind::StaleRound)
        } else if let Phase::Evaluate(e) = &mut self.phase {
            match e.status.get(&id).copied() {
                Some(Status::Pending) => {
                    let invalid = if result.num_examples == 0 {
                        Some(FailureKind::NoExamples)
                    } else if !result.loss.is_finite()
                        || result.metrics.values().any(|v| !v.is_finite())
                    {
                        Some(FailureKind::NonFinite)
                    } else {
                        None
                    };
                    if invalid.is_some() {
                        e.status.insert(id.clone(), Status::Failed);
                    } else {
                        e.status.insert(id.clone(), Status::Answered);
                        e.results.insert(id.clone(), result);
                    }
                    invalid
                }
                Some(Status::Answered) => Some(FailureKind::Duplicate),
                _ => Some(FailureKind::NotSampled),
            }
        } else {
            Some(FailureKind::NotSampled)
        };
        if let Some(kind) = kind {
            tracing::warn!(station = %id, round, reason = %kind, "evaluation refused");
            self.current.count_eval_failure(kind);
        }
    }

    fn on_evaluate_failed(&mut self, id: StationId, round: u64, message: &str) {
        if round != self.round {
            return;
        }
        if let Phase::Evaluate(e) = &mut self.phase {
            if let Some(s @ Status::Pending) = e.status.get_mut(&id) {
                *s = Status::Failed;
                self.current.count_eval_failure(FailureKind::StationError);
                tracing::warn!(station = %id, round, "station could not evaluate: {message}");
            }
        }
    }

    /// Moves through as many phases as `now` and the state allow.
    fn advance(&mut self, now: Instant) {
        enum Step {
            StartFit,
            GiveUpWaiting,
            EndBackoff,
            CloseFit,
            CloseEval,
        }
        loop {
            let step = match &self.phase {
                Phase::Finished => return,
                Phase::Waiting { since } => {
                    if self.connected.len() >= self.config.min_stations {
                        Step::StartFit
                    } else if self
                        .config
                        .station_wait_timeout
                        .is_some_and(|t| now >= *since + t)
                    {
                        Step::GiveUpWaiting
                    } else {
                        return;
                    }
                }
                Phase::Backoff { until } => {
                    if now >= *until {
                        Step::EndBackoff
                    } else {
                        return;
                    }
                }
                Phase::Fit(f) => {
                    let pending = f.status.values().filter(|s| **s == Status::Pending).count();
                    let unreachable = f.results.len() + pending < self.config.min_updates;
                    if now >= f.deadline || pending == 0 || unreachable {
                        Step::CloseFit
                    } else {
                        return;
                    }
                }
                Phase::Evaluate(e) => {
                    if now >= e.deadline || e.status.values().all(|s| *s != Status::Pending) {
                        Step::CloseEval
                    } else {
                        return;
                    }
                }
            };
            match step {
                Step::StartFit => self.start_fit(now),
                Step::GiveUpWaiting => {
                    let reason = format!(
                        "only {} of {} stations connected within {:?}",
                        self.connected.len(),
                        self.config.min_stations,
                        self.config.station_wait_timeout.unwrap_or_default()
                    );
                    self.abort(reason);
                }
                Step::EndBackoff => self.phase = Phase::Waiting { since: now },
                Step::CloseFit => self.close_fit(now),
                Step::CloseEval => self.close_evaluate(now),
            }
        }
    }

    fn base_config(&self, base: &Config) -> Config {
        let mut config = base.clone();
        config.insert(
            SERVER_ROUND_KEY.to_string(),
            ConfigValue::Int(i64::try_from(self.round).unwrap_or(i64::MAX)),
        );
        config
    }

    fn start_fit(&mut self, now: Instant) {
        let attempt = self.current.attempts;
        self.current.attempts += 1;
        if attempt == 0 {
            self.current.started_s = secs_between(self.start, self.round_start);
        }
        let available: Vec<StationId> = self.connected.iter().cloned().collect();
        let n = sample_size(
            available.len(),
            self.config.fraction_fit,
            self.config.min_fit,
        );
        let sample = sample_stations(
            &available,
            n,
            self.config.seed,
            self.round,
            u64::from(attempt),
        );
        let base = self.base_config(&self.config.fit_config);
        let config = Arc::new(self.strategy.configure_fit(self.round, &base));
        tracing::info!(
            round = self.round,
            attempt = attempt + 1,
            sampled = sample.len(),
            connected = available.len(),
            "round started"
        );
        for station in &sample {
            self.actions.push_back(Action::SendFit {
                station: station.clone(),
                round: self.round,
                ins: FitIns {
                    global: self.global.clone(),
                    config: config.clone(),
                },
            });
        }
        self.current.sampled = sample.clone();
        self.phase = Phase::Fit(FitPhase {
            deadline: now + self.config.round_deadline,
            started: now,
            status: sample.into_iter().map(|s| (s, Status::Pending)).collect(),
            validator: Validator::new(self.round, self.config.max_update_norm),
            results: BTreeMap::new(),
        });
    }

    fn close_fit(&mut self, now: Instant) {
        let Phase::Fit(fit) = std::mem::replace(&mut self.phase, Phase::Finished) else {
            return;
        };
        self.current.fit_s += secs_between(fit.started, now);
        let pending: Vec<&StationId> = fit
            .status
            .iter()
            .filter(|(_, s)| **s == Status::Pending)
            .map(|(id, _)| id)
            .collect();
        if now >= fit.deadline {
            for id in &pending {
                tracing::warn!(station = %id, round = self.round, "station missed the round deadline");
                self.current.count_failure(FailureKind::Timeout);
            }
        } else if !pending.is_empty() {
            tracing::info!(
                round = self.round,
                pending = pending.len(),
                "closing collection early: min_updates is out of reach"
            );
        }
        let accepted = fit.results.len();
        if accepted >= self.config.min_updates {
            self.aggregate(fit.results, now);
            return;
        }
        let retries_used = self.current.attempts.saturating_sub(1);
        tracing::warn!(
            round = self.round,
            accepted,
            min_updates = self.config.min_updates,
            "too few updates"
        );
        if retries_used < self.config.retry.max_retries {
            self.phase = Phase::Backoff {
                until: now + self.config.retry.backoff,
            };
            return;
        }
        let reason = format!(
            "{accepted} of {} required updates after {} attempts",
            self.config.min_updates, self.current.attempts
        );
        match self.config.retry.on_exhausted {
            OnExhausted::Abort => self.abort(reason),
            OnExhausted::Skip => {
                self.current.completed.clear();
                self.current.note = Some(format!("skipped: {reason}"));
                self.finish_round(now);
            }
        }
    }

    fn aggregate(&mut self, results: BTreeMap<StationId, FitRes>, now: Instant) {
        let (stations, results): (Vec<StationId>, Vec<FitRes>) = results.into_iter().unzip();
        self.current.completed = stations;
        self.current.num_examples = results.iter().map(|r| r.num_examples).sum();
        self.current.fit_metrics =
            weighted_metrics(results.iter().map(|r| (r.num_examples, &r.metrics)));
        self.current.train_loss = self.current.fit_metrics.get(LOSS_KEY).copied();
        let t0 = self.stopwatch.as_mut().map(|clock| clock());
        let outcome = self
            .strategy
            .aggregate_fit(self.round, &self.global, &results);
        drop(results);
        match outcome {
            Ok(aggregated) => {
                self.current.aggregate_metrics = aggregated.metrics;
                match aggregated.params {
                    Some(p) if p.spec().check_same(self.global.spec()).is_err() => {
                        self.current.note = Some(
                            "strategy returned a model of another layout; kept the old one".into(),
                        );
                    }
                    Some(p) if !kernels::all_finite(p.data()) => {
                        self.current.note =
                            Some("strategy returned non-finite values; kept the old one".into());
                    }
                    Some(p) => {
                        self.current.model_delta_norm =
                            kernels::par_sq_distance(p.data(), self.global.data())
                                .ok()
                                .map(f64::sqrt);
                        self.global = Arc::new(p);
                        self.current.aggregated = true;
                    }
                    None => self.current.note = Some("strategy kept the old model".into()),
                }
            }
            Err(e) => {
                tracing::error!(round = self.round, "aggregation failed: {e}");
                self.current.note = Some(format!("aggregation failed: {e}"));
            }
        }
        if let (Some(t0), Some(clock)) = (t0, self.stopwatch.as_mut()) {
            self.current.aggregate_s = Some(clock().saturating_duration_since(t0).as_secs_f64());
        }
        if let Some(note) = &self.current.note {
            tracing::warn!(round = self.round, "{note}");
        }
        self.start_evaluate(now);
    }

    fn start_evaluate(&mut self, now: Instant) {
        if !self.config.is_eval_round(self.round) {
            return self.finish_round(now);
        }
        if let Some(summary) = self.strategy.evaluate(self.round, &self.global) {
            self.current.server_eval_loss = summary.loss;
            self.current.server_eval_metrics = summary.metrics;
        }
        if self.config.fraction_evaluate <= 0.0 {
            return self.finish_round(now);
        }
        let base = self.base_config(&self.config.evaluate_config);
        let Some(config) = self.strategy.configure_evaluate(self.round, &base) else {
            return self.finish_round(now);
        };
        let available: Vec<StationId> = self.connected.iter().cloned().collect();
        if available.len() < self.config.min_evaluate || available.is_empty() {
            tracing::warn!(
                round = self.round,
                connected = available.len(),
                "too few stations to evaluate"
            );
            return self.finish_round(now);
        }
        let n = sample_size(
            available.len(),
            self.config.fraction_evaluate,
            self.config.min_evaluate.max(1),
        );
        let sample = sample_stations(&available, n, self.config.seed, self.round, EVAL_STREAM);
        let config = Arc::new(config);
        for station in &sample {
            self.actions.push_back(Action::SendEvaluate {
                station: station.clone(),
                round: self.round,
                ins: EvaluateIns {
                    global: self.global.clone(),
                    config: config.clone(),
                },
            });
        }
        self.current.eval_sampled = sample.len();
        self.phase = Phase::Evaluate(EvalPhase {
            deadline: now + self.config.evaluate_deadline,
            started: now,
            status: sample.into_iter().map(|s| (s, Status::Pending)).collect(),
            results: BTreeMap::new(),
        });
    }

    fn close_evaluate(&mut self, now: Instant) {
        let Phase::Evaluate(eval) = std::mem::replace(&mut self.phase, Phase::Finished) else {
            return;
        };
        for _ in eval.status.values().filter(|s| **s == Status::Pending) {
            self.current.count_eval_failure(FailureKind::Timeout);
        }
        let results: Vec<EvaluateRes> = eval.results.into_values().collect();
        self.current.eval_completed = results.len();
        if !results.is_empty() {
            let summary = self.strategy.aggregate_evaluate(self.round, &results);
            self.current.eval_loss = summary.loss;
            self.current.eval_metrics = summary.metrics;
        }
        self.current.eval_s = secs_between(eval.started, now);
        self.finish_round(now);
    }

    fn finish_round(&mut self, now: Instant) {
        self.current.round_s = secs_between(self.round_start, now);
        self.current.wait_s =
            (self.current.round_s - self.current.fit_s - self.current.eval_s).max(0.0);
        let metrics = std::mem::replace(&mut self.current, RoundMetrics::new(self.round + 1));
        tracing::info!(
            round = metrics.round,
            completed = metrics.completed.len(),
            failed = metrics.failed_total(),
            train_loss = metrics.train_loss,
            eval_loss = metrics.eval_loss,
            "round finished"
        );
        self.history.push(metrics.clone());
        self.actions
            .push_back(Action::RoundFinished(Box::new(metrics)));
        self.actions
            .push_back(Action::Checkpoint(Box::new(Checkpoint {
                round: self.round,
                global: self.global.clone(),
                strategy: self.strategy.state(),
                history: self.history.clone(),
                seed: self.config.seed,
            })));
        self.round += 1;
        self.round_start = now;
        if self.round > self.config.rounds {
            self.finish(Outcome::Completed);
        } else {
            self.phase = Phase::Waiting { since: now };
        }
    }

    fn abort(&mut self, reason: String) {
        tracing::error!(round = self.round, "federated run aborted: {reason}");
        self.finish(Outcome::Aborted {
            round: self.round,
            reason,
        });
    }

    fn finish(&mut self, outcome: Outcome) {
        self.phase = Phase::Finished;
        self.actions.push_back(Action::Finished(Summary {
            rounds_completed: self.history.last().map_or(0, |m| m.round),
            outcome,
        }));
    }
}

fn secs_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

/// `max(floor(fraction * available), minimum)`, at most `available`.
pub fn sample_size(available: usize, fraction: f64, minimum: usize) -> usize {
    let by_fraction = (fraction * available as f64).floor() as usize;
    by_fraction.max(minimum).min(available)
}

/// SplitMix64's finalizer: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Picks `n` of `available` (which must be sorted) uniformly without
/// replacement, with a generator seeded by `(seed, round, stream)`; the
/// result is sorted. The same inputs always give the same sample, also after
/// a resume.
pub fn sample_stations(
    available: &[StationId],
    n: usize,
    seed: u64,
    round: u64,
    stream: u64,
) -> Vec<StationId> {
    let n = n.min(available.len());
    let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(mix(seed) ^ round) ^ stream));
    let mut picked = rand::seq::index::sample(&mut rng, available.len(), n).into_vec();
    picked.sort_unstable();
    picked.into_iter().map(|i| available[i].clone()).collect()
}

/// `Duration` as seconds (`f64`) in config files.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v)
            .map_err(|_| serde::de::Error::custom(format!("{v} is not a valid number of seconds")))
    }
}

/// `Option<Duration>` as seconds in config files.
mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|v| {
                Duration::try_from_secs_f64(v).map_err(|_| {
                    serde::de::Error::custom(format!("{v} is not a valid number of seconds"))
                })
            })
            .transpose()
    }
}
