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
use super::privacy::{CentralDp, DpMode, PrivacyConfig, RoundPrivacy, DP_EPSILON_METRIC};
use super::secure::{self, Closed, SecAggConfig, SecAggDown, SecAggUp, SecureFit};
use super::stopping::{BestRound, EarlyStopping, Plateau, Verdict};
use super::strategy::{
    kernels, weighted_metrics, Config, ConfigValue, EvaluateIns, EvaluateRes, FitIns, FitRes,
    Metrics, Strategy, LOSS_KEY,
};
use super::validate::{check_round, FailureKind, Refusal, Validator};
use super::StationId;
pub use fedcrime_audit::Entry as AuditEntry;
use fedcrime_params::Params;
use fedcrime_wire::RoundSettings;

/// The config key every evaluate config carries: the round number.
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
    /// The run's seed (default 0): station sampling, and the base of every
    /// round's training seed ([`RoundSettings::seed`] is set from it).
    pub seed: u64,
    /// How stations train each round, before the strategy adjusts it. Not a
    /// `[federation]` key: the roles fill it from their `[train]` section.
    #[serde(skip)]
    pub train: RoundSettings,
    /// Settings sent with every evaluate request.
    pub evaluate_config: Config,
    /// Stop when the validation score stops improving, keeping the best
    /// round's model (default: off, every round runs); see [`crate::stopping`].
    /// `rounds` is then the cap.
    pub early_stopping: Option<EarlyStopping>,
    /// Secure aggregation (SecAgg+): the server learns only the sum of each
    /// round's updates. `secure_aggregation = true` for the defaults, or a
    /// table with `dropout_tolerance`, `clip_range`, `quantization_bits` and
    /// `neighbours` (default: off). Needs a strategy that aggregates the
    /// mean update (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad)
    /// and at least 3 stations per round; `max_update_norm` is then checked
    /// by each station on its own update (the server sees only the sum).
    #[serde(with = "secure::switch", skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<SecAggConfig>,
    /// Differential privacy (see [`crate::privacy`]). Not a `[federation]`
    /// key: the roles fill it from their `[privacy]` section.
    #[serde(skip)]
    pub privacy: Option<PrivacyConfig>,
    /// Emit [`Action::Audit`] entries for the audit log (set by the driver
    /// that keeps one; not a config key).
    #[serde(skip)]
    pub audit: bool,
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
            train: RoundSettings::default(),
            evaluate_config: Config::new(),
            early_stopping: None,
            secure_aggregation: None,
            privacy: None,
            audit: false,
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
        for (field, d) in [
            ("round_deadline", Some(self.round_deadline)),
            ("evaluate_deadline", Some(self.evaluate_deadline)),
            ("retry.backoff", Some(self.retry.backoff)),
            ("station_wait_timeout", self.station_wait_timeout),
        ] {
            if d.is_some_and(|d| d > MAX_DURATION) {
                return bad(
                    field,
                    format!("must be at most {} s", MAX_DURATION.as_secs()),
                );
            }
        }
        if let Some(e) = &self.early_stopping {
            if let Err((field, message)) = e.validate() {
                return bad(field, message);
            }
            if self.eval_every == 0 {
                return bad(
                    "early_stopping",
                    "needs evaluation rounds (eval_every >= 1) to watch a score".into(),
                );
            }
        }
        if let Some(max) = self.max_update_norm {
            if !(max.is_finite() && max > 0.0) {
                return bad(
                    "max_update_norm",
                    format!("must be finite and > 0, got {max}"),
                );
            }
        }
        if let Some(secagg) = &self.secure_aggregation {
            if let Err(e) = secagg.validate() {
                return bad("secure_aggregation", e.to_string());
            }
            if self.min_fit < 3 || self.min_updates < 3 {
                return bad(
                    "min_fit",
                    format!(
                        "secure_aggregation needs at least 3 stations per round (with 2, each \
                         learns the other's update from the sum): min_fit and min_updates must \
                         be >= 3, got {} and {}",
                        self.min_fit, self.min_updates
                    ),
                );
            }
        }
        if let Some(p) = &self.privacy {
            if let Err((field, message)) = p.validate() {
                return bad(field, message);
            }
            if p.mode == DpMode::Central && self.secure_aggregation.is_some() {
                return bad(
                    "privacy.mode",
                    "central differential privacy clips each update at the server, which \
                     secure aggregation hides from it: use mode = \"local\" (DP-SGD at the \
                     stations) with secure aggregation"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Whether `round` is an evaluation round.
    pub(crate) fn is_eval_round(&self, round: u64) -> bool {
        self.eval_every > 0 && (round.is_multiple_of(self.eval_every) || round == self.rounds)
    }
}

/// What the driver established about an update before handing it over:
/// its hash and, when the station signs, its signature and whether it held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateProof {
    /// SHA-256 of the update's values as received (little-endian f32), hex.
    pub sha256: String,
    /// The station's Ed25519 signature over the update, hex.
    pub signature: Option<String>,
    /// Why the update must be refused (missing or bad signature), if so.
    pub problem: Option<String>,
}

/// Something that happened, fed to [`Engine::handle`].
///
/// Not `#[non_exhaustive]`: every driver matches the engine's enums in full,
/// so a new variant fails to compile where it is not handled.
#[derive(Clone, Debug)]
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
        /// Its hash and signature as the driver checked them (`None`: not
        /// checked, e.g. an in-memory federation without signatures).
        proof: Option<UpdateProof>,
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
    /// A station's secure-aggregation message.
    SecAggReceived {
        /// The station.
        id: StationId,
        /// The round the station says it answers.
        round: u64,
        /// The message.
        msg: SecAggUp,
        /// For a masked input: its hash and signature as the driver checked
        /// them (`None`: not checked).
        proof: Option<UpdateProof>,
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
    /// With early stopping: the best round by the monitored score.
    #[serde(default)]
    pub best: Option<BestRound>,
    /// With early stopping: whether the run stopped before `rounds`
    /// because the score stopped improving.
    #[serde(default)]
    pub stopped_early: bool,
    /// With `privacy.target_epsilon`: whether the run stopped before
    /// `rounds` because the next round would have spent more.
    #[serde(default)]
    pub privacy_budget_spent: bool,
}

/// Something the driver must do, from [`Engine::poll_action`].
///
/// Not `#[non_exhaustive]`: the drivers (the QUIC server and the in-memory
/// simulator) match it in full, so a new action cannot be silently dropped
/// by one transport.
#[derive(Clone, Debug)]
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
    /// Send a station a secure-aggregation message of the current round
    /// (after its `SendFit`).
    SendSecAgg {
        /// The station.
        station: StationId,
        /// The round.
        round: u64,
        /// The message.
        msg: SecAggDown,
    },
    /// Append this entry to the audit log (only with `EngineConfig::audit`).
    Audit(Box<AuditEntry>),
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
    /// Accepted updates, kept whole (strategies that need each one).
    results: BTreeMap<StationId, FitRes>,
    /// Accepted updates already added to the engine's running sum (strategies
    /// whose [`Strategy::mean_suffices`]): their example counts and metrics.
    folded: BTreeMap<StationId, (u64, Metrics)>,
    /// The secure-aggregation protocol of this attempt, when configured.
    secure: Option<Box<SecureFit>>,
}

impl FitPhase {
    fn accepted(&self) -> usize {
        self.results.len() + self.folded.len()
    }
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
    /// Stations that failed an earlier attempt of the current round.
    failed_this_round: BTreeSet<StationId>,
    /// Early stopping's state, when configured.
    plateau: Option<Plateau>,
    /// The global model of the best round (early stopping).
    best_global: Option<Arc<Params>>,
    /// Whether early stopping ended the run.
    stopped_early: bool,
    /// The running example-weighted sum of the current attempt's updates
    /// (strategies whose [`Strategy::mean_suffices`]).
    sum: kernels::WeightedSum,
    /// Update buffers the engine is done with, for the driver to read the
    /// next updates into ([`Engine::take_spent`]).
    spent: Vec<Params>,
    /// Secure aggregation: examples that count as weight 1, the most any
    /// station reported so far.
    weight_scale: f64,
    /// Central differential privacy's state, when configured.
    dp: Option<CentralDp>,
    /// Whether the run stopped on its privacy budget.
    budget_spent: bool,
}

/// Secure aggregation's weight scale before any station reported.
const INITIAL_WEIGHT_SCALE: f64 = 1000.0;

/// Spent update buffers kept for the driver at most.
const MAX_SPENT: usize = 4;

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
        Engine {
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
            failed_this_round: BTreeSet::new(),
            plateau: None,
            best_global: None,
            stopped_early: false,
            sum: kernels::WeightedSum::default(),
            spent: Vec::new(),
            weight_scale: INITIAL_WEIGHT_SCALE,
            dp: None,
            budget_spent: false,
        }
        .with_privacy()
        .with_plateau()
        .checked_for_secagg()
    }

    /// Continues a run after the checkpoint's round: its global model,
    /// strategy state and metrics history. If the checkpoint already covers
    /// `config.rounds`, the engine finishes at once.
    pub(crate) fn from_checkpoint(
        config: EngineConfig,
        mut strategy: Box<dyn Strategy>,
        checkpoint: Checkpoint,
        now: Instant,
    ) -> Result<Self> {
        config.validate()?;
        strategy.restore(checkpoint.strategy)?;
        let round = checkpoint.round.saturating_add(1);
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
            failed_this_round: BTreeSet::new(),
            plateau: None,
            best_global: None,
            stopped_early: false,
            sum: kernels::WeightedSum::default(),
            spent: Vec::new(),
            weight_scale: INITIAL_WEIGHT_SCALE,
            dp: None,
            budget_spent: false,
        }
        .with_privacy()
        .with_plateau()
        .checked_for_secagg()?;
        tracing::info!(after_round = checkpoint.round, "resuming federated run");
        // The best round's model is known when it is the checkpoint's; else
        // the driver hands it back ([`Engine::restore_best`]).
        if engine.best().is_some_and(|b| b.round == checkpoint.round) {
            engine.best_global = Some(engine.global.clone());
        }
        let plateaued = engine
            .plateau
            .as_ref()
            .is_some_and(|p| p.since_best() >= p.rule().patience);
        if checkpoint.round >= engine.config.rounds || plateaued {
            engine.stopped_early = plateaued && checkpoint.round < engine.config.rounds;
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

    /// Central DP's state, its accountant rebuilt from the history (a
    /// resumed run goes on charging where it stopped).
    fn with_privacy(mut self) -> Self {
        self.dp = self
            .config
            .privacy
            .clone()
            .filter(|p| p.mode == DpMode::Central)
            .map(|p| CentralDp::new(p, &self.history));
        self
    }

    /// Early stopping's state rebuilt from the history (empty for a new run).
    fn with_plateau(mut self) -> Self {
        self.plateau = self
            .config
            .early_stopping
            .clone()
            .map(|rule| Plateau::from_history(rule, &self.history));
        self
    }

    /// With early stopping, the best round so far by the monitored score.
    pub fn best(&self) -> Option<BestRound> {
        self.plateau.as_ref().and_then(Plateau::best)
    }

    /// With early stopping, the best round's global model, when this engine
    /// has seen it (a resumed run knows it only if it is the checkpoint's, or
    /// once [`Engine::restore_best`] gave it back).
    pub fn best_global(&self) -> Option<&Arc<Params>> {
        self.best_global.as_ref()
    }

    /// Hands a resumed engine the model of its best round (saved by the
    /// driver when that round finished). Refused, with `false`, when `round`
    /// is not the best round or the layout differs.
    pub fn restore_best(&mut self, round: u64, params: Params) -> bool {
        let fits = self.best().is_some_and(|b| b.round == round)
            && params.spec().check_same(self.global.spec()).is_ok();
        if fits {
            self.best_global = Some(Arc::new(params));
        }
        fits
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

    /// An update buffer the engine no longer needs (see
    /// [`Strategy::mean_suffices`]): a driver may read the next update into
    /// it instead of allocating one. Buffers come in the global model's layout.
    pub fn take_spent(&mut self) -> Option<Params> {
        self.spent.pop()
    }

    /// Keeps `params` for [`take_spent`](Self::take_spent) when nothing
    /// else holds it, it has the global model's layout and there is room.
    fn recycle(&mut self, params: Arc<Params>) {
        if self.spent.len() < MAX_SPENT && Arc::ptr_eq(params.spec(), self.global.spec()) {
            if let Ok(params) = Arc::try_unwrap(params) {
                self.spent.push(params);
            }
        }
    }

    /// Refuses secure aggregation with a strategy that needs each update.
    fn checked_for_secagg(self) -> Result<Self> {
        if self.config.secure_aggregation.is_some() && !self.strategy.mean_suffices() {
            return Err(FlError::config(
                "secure_aggregation",
                format!(
                    "strategy {} needs every station's update, but with secure aggregation \
                     the server learns only their sum: use fedavg, fedprox, fedavgm, fedadam, \
                     fedyogi or fedadagrad, or turn secure_aggregation off",
                    self.strategy.name()
                ),
            ));
        }
        if self.dp.is_some() && !self.strategy.mean_suffices() {
            return Err(FlError::config(
                "privacy.mode",
                format!(
                    "central differential privacy noises the mean of the clipped updates, \
                     but strategy {} does not aggregate a mean: use fedavg, fedprox, fedavgm, \
                     fedadam, fedyogi or fedadagrad, or mode = \"local\"",
                    self.strategy.name()
                ),
            ));
        }
        Ok(self)
    }

    /// A buffer in the global model's layout: a spent one, or a new one.
    fn spare_buffer(&mut self) -> Params {
        match self.spent.pop() {
            Some(p) if p.spec().check_same(self.global.spec()).is_ok() => p,
            _ => Params::zeros(self.global.spec().clone()),
        }
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Waiting { since } => self.config.station_wait_timeout.map(|t| later(*since, t)),
            Phase::Backoff { until } => Some(*until),
            Phase::Fit(f) => Some(
                f.secure
                    .as_ref()
                    .map_or(f.deadline, |s| s.deadline(f.deadline)),
            ),
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
            Event::UpdateReceived {
                id,
                round,
                update,
                proof,
            } => self.on_update(id, round, update, proof),
            Event::SecAggReceived {
                id,
                round,
                msg,
                proof,
            } => self.on_secagg(id, round, msg, proof),
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
                if let Some(secure) = &mut f.secure {
                    secure.fail(&id);
                }
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

    /// Counts and logs a refused update; returns the reason for the audit log.
    fn refuse(&mut self, id: &StationId, refusal: Refusal) -> String {
        tracing::warn!(station = %id, round = self.round, reason = %refusal.kind(), "update refused: {refusal}");
        if !self.is_finished() {
            self.current.count_failure(refusal.kind());
        }
        format!("{}: {refusal}", refusal.kind())
    }

    fn on_update(&mut self, id: StationId, round: u64, update: FitRes, proof: Option<UpdateProof>) {
        let audit = self.config.audit.then(|| {
            let sha = match &proof {
                Some(p) => p.sha256.clone(),
                None => fedcrime_audit::sha256_f32(update.params.data()),
            };
            (
                sha,
                proof.as_ref().and_then(|p| p.signature.clone()),
                update.num_examples,
            )
        });
        let outcome = self.take_update(&id, round, update, proof.as_ref());
        if let Some((update_sha256, signature, num_examples)) = audit {
            let station = id.to_string();
            self.audit(match outcome {
                Ok(()) => AuditEntry::UpdateAccepted {
                    round,
                    station,
                    update_sha256,
                    num_examples,
                    signature,
                },
                Err(reason) => AuditEntry::UpdateRefused {
                    round,
                    station,
                    reason,
                    update_sha256: Some(update_sha256),
                    signature,
                },
            });
        }
    }

    /// Validates an update and adds it to the round; `Err` holds why not.
    fn take_update(
        &mut self,
        id: &StationId,
        round: u64,
        update: FitRes,
        proof: Option<&UpdateProof>,
    ) -> std::result::Result<(), String> {
        if let Err(r) = check_round(self.round, round) {
            return Err(self.refuse(id, r));
        }
        let current_round = self.round;
        let Phase::Fit(f) = &mut self.phase else {
            return Err(self.refuse(
                id,
                Refusal::NotSampled {
                    round: current_round,
                },
            ));
        };
        if f.secure.is_some() {
            tracing::warn!(station = %id, round, "plaintext update refused: this federation uses secure aggregation");
            if let Some(s @ Status::Pending) = f.status.get_mut(id) {
                *s = Status::Failed;
            }
            if let Some(secure) = &mut f.secure {
                secure.fail(id);
            }
            self.current.count_failure(FailureKind::StationError);
            return Err("plaintext update under secure aggregation".into());
        }
        let status = f.status.get(id).copied();
        if status.is_none() || (status == Some(Status::Failed) && !f.validator.has_answered(id)) {
            // Not asked, or no longer awaited (disconnected, reported an error).
            return Err(self.refuse(
                id,
                Refusal::NotSampled {
                    round: current_round,
                },
            ));
        }
        if let Some(problem) = proof.and_then(|p| p.problem.clone()) {
            if status == Some(Status::Pending) {
                f.status.insert(id.clone(), Status::Failed);
            }
            return Err(self.refuse(id, Refusal::BadSignature(problem)));
        }
        match f.validator.check(id, round, &self.global, &update) {
            Ok(()) if self.strategy.mean_suffices() => {
                let FitRes {
                    mut params,
                    num_examples,
                    metrics,
                } = update;
                // Central DP: the clipped update counts once, whatever its
                // example count (its sensitivity is the clip).
                let weight = match &mut self.dp {
                    Some(dp) => {
                        dp.clip_update(Arc::make_mut(&mut params).data_mut(), self.global.data());
                        1.0
                    }
                    None => num_examples as f64,
                };
                let added = match self.sum.add(params.data(), weight) {
                    Ok(()) => {
                        f.status.insert(id.clone(), Status::Answered);
                        f.folded.insert(id.clone(), (num_examples, metrics));
                        Ok(())
                    }
                    Err(e) => {
                        // The validator checked the layout, so this is a bug of ours.
                        tracing::error!(station = %id, round, "cannot add the update: {e}");
                        f.status.insert(id.clone(), Status::Failed);
                        Err(format!("cannot add the update: {e}"))
                    }
                };
                self.recycle(params);
                added
            }
            Ok(()) => {
                f.status.insert(id.clone(), Status::Answered);
                f.results.insert(id.clone(), update);
                Ok(())
            }
            Err(refusal) => {
                if status == Some(Status::Pending) {
                    f.status.insert(id.clone(), Status::Failed);
                }
                Err(self.refuse(id, refusal))
            }
        }
    }

    /// Queues an audit-log entry (when the driver keeps a log).
    fn audit(&mut self, entry: AuditEntry) {
        if self.config.audit {
            self.actions.push_back(Action::Audit(Box::new(entry)));
        }
    }

    /// SHA-256 of the global model (hex), when an audit log is kept.
    fn global_sha256(&self) -> Option<String> {
        self.config
            .audit
            .then(|| fedcrime_audit::sha256_f32(self.global.data()))
    }

    fn on_fit_failed(&mut self, id: StationId, round: u64, message: &str) {
        if round != self.round {
            return;
        }
        if let Phase::Fit(f) = &mut self.phase {
            if let Some(secure) = &mut f.secure {
                secure.fail(&id);
            }
            if let Some(s @ Status::Pending) = f.status.get_mut(&id) {
                *s = Status::Failed;
                self.current.count_failure(FailureKind::StationError);
                tracing::warn!(station = %id, round, "station could not train: {message}");
            }
        }
    }

    fn on_secagg(&mut self, id: StationId, round: u64, msg: SecAggUp, proof: Option<UpdateProof>) {
        if round != self.round {
            tracing::warn!(station = %id, round, "{} of another round ignored", msg.name());
            return;
        }
        let Phase::Fit(f) = &mut self.phase else {
            tracing::warn!(station = %id, round, "{} outside a fit phase ignored", msg.name());
            return;
        };
        let Some(secure) = &mut f.secure else {
            tracing::warn!(station = %id, round, "{} refused: secure aggregation is off", msg.name());
            return;
        };
        let masked = match &msg {
            SecAggUp::Masked { num_examples, .. } => Some(*num_examples),
            _ => None,
        };
        let name = msg.name();
        // A masked input must carry a valid signature when the driver says so.
        let problem = proof.as_ref().and_then(|p| p.problem.clone());
        let received = match problem {
            Some(problem) if masked.is_some() => {
                secure.fail(&id);
                Err(Refusal::BadSignature(problem))
            }
            _ => secure
                .receive(&id, msg)
                .map_err(|e| e.to_string())
                .map_err(|e| {
                    tracing::warn!(station = %id, round, "{name} refused: {e}");
                    Refusal::NotSampled { round }
                }),
        };
        let outcome = match received {
            Ok(()) => {
                if masked.is_some() {
                    f.status.insert(id.clone(), Status::Answered);
                }
                Ok(())
            }
            Err(refusal) => {
                if let Some(s @ Status::Pending) = f.status.get_mut(&id) {
                    *s = Status::Failed;
                }
                match refusal {
                    Refusal::BadSignature(_) => Err(self.refuse(&id, refusal)),
                    _ => {
                        self.current.count_failure(FailureKind::StationError);
                        Err(format!("{name} refused"))
                    }
                }
            }
        };
        // The log records each masked input with the hash of what was sent.
        if let (Some(num_examples), Some(proof)) = (masked, proof) {
            let station = id.to_string();
            self.audit(match outcome {
                Ok(()) => AuditEntry::UpdateAccepted {
                    round,
                    station,
                    update_sha256: proof.sha256,
                    num_examples,
                    signature: proof.signature,
                },
                Err(reason) => AuditEntry::UpdateRefused {
                    round,
                    station,
                    reason,
                    update_sha256: Some(proof.sha256),
                    signature: proof.signature,
                },
            });
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
            SecureStage,
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
                        .is_some_and(|t| now >= later(*since, t))
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
                Phase::Fit(FitPhase {
                    secure: Some(s),
                    deadline,
                    ..
                }) => {
                    if s.due(now, *deadline) {
                        Step::SecureStage
                    } else {
                        return;
                    }
                }
                Phase::Fit(f) => {
                    let pending = f.status.values().filter(|s| **s == Status::Pending).count();
                    let unreachable = f.accepted() + pending < self.config.min_updates;
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
                Step::SecureStage => self.secure_stage(now),
                Step::CloseEval => self.close_evaluate(now),
            }
        }
    }

    fn fit_settings(&mut self) -> RoundSettings {
        let base = RoundSettings {
            seed: self.config.seed,
            ..self.config.train.clone()
        };
        let mut settings = self.strategy.configure_fit(self.round, &base);
        if let Some(p) = &self.config.privacy {
            p.add_to_settings(&mut settings);
        }
        settings
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
        // A retry prefers stations that have not failed this round yet (a
        // timed-out station is likely still busy), unless too few remain.
        let fresh: Vec<StationId> = self
            .connected
            .difference(&self.failed_this_round)
            .cloned()
            .collect();
        let available: Vec<StationId> = if fresh.len() >= self.config.min_fit {
            fresh
        } else {
            self.connected.iter().cloned().collect()
        };
        let n = sample_size(
            available.len(),
            self.config.fraction_fit,
            self.config.min_fit,
        );
        if attempt == 0 && self.privacy_budget_reached(n, available.len()) {
            return;
        }
        if let Some(dp) = &mut self.dp {
            dp.start_attempt(n, available.len());
        }
        let sample = sample_stations(
            &available,
            n,
            self.config.seed,
            self.round,
            u64::from(attempt),
        );
        let settings = Arc::new(self.fit_settings());
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
                    round: self.round,
                    settings: settings.clone(),
                },
            });
        }
        self.current.sampled = sample.clone();
        if let Some(global_sha256) = self.global_sha256() {
            self.audit(AuditEntry::RoundStarted {
                round: self.round,
                attempt: attempt + 1,
                global_sha256,
                stations: sample.iter().map(|s| s.to_string()).collect(),
            });
        }
        let secure = self.config.secure_aggregation.clone().and_then(|config| {
            let setup = fedcrime_secagg::RoundSetup {
                round: self.round,
                participants: u32::try_from(sample.len()).unwrap_or(u32::MAX),
                vector_len: self.global.data().len(),
                config,
                graph_seed: graph_seed(self.config.seed, self.round, u64::from(attempt)),
                weight_scale: self.weight_scale,
                max_update_norm: self.config.max_update_norm,
            };
            match SecureFit::start(setup, &sample, now) {
                Ok((secure, setups)) => {
                    for (station, msg) in setups {
                        self.actions.push_back(Action::SendSecAgg {
                            station,
                            round: self.round,
                            msg,
                        });
                    }
                    Some(Box::new(secure))
                }
                Err(e) => {
                    tracing::warn!(round = self.round, "secure aggregation cannot start: {e}");
                    None
                }
            }
        });
        let failed_to_start = self.config.secure_aggregation.is_some() && secure.is_none();
        self.phase = Phase::Fit(FitPhase {
            deadline: later(now, self.config.round_deadline),
            started: now,
            status: sample
                .into_iter()
                .map(|s| {
                    let status = if failed_to_start {
                        Status::Failed
                    } else {
                        Status::Pending
                    };
                    (s, status)
                })
                .collect(),
            validator: Validator::new(self.round, self.config.max_update_norm),
            results: BTreeMap::new(),
            folded: BTreeMap::new(),
            secure,
        });
        self.sum.clear();
    }

    /// Closes the current secure-aggregation stage: sends the next stage's
    /// messages, or aggregates the unmasked mean, or (too few stations
    /// left) ends the attempt like a round with too few updates.
    fn secure_stage(&mut self, now: Instant) {
        let Phase::Fit(fit) = &mut self.phase else {
            return;
        };
        let Some(secure) = &mut fit.secure else {
            return;
        };
        match secure.close(now) {
            Ok(Closed::Next(messages)) => {
                // Stations that sent no masked input by now are out.
                let closing_masked = messages
                    .first()
                    .is_some_and(|(_, m)| matches!(m, SecAggDown::Unmask(_)));
                if closing_masked {
                    for (id, s) in fit.status.iter_mut() {
                        if *s == Status::Pending && !secure.contributed(id) {
                            *s = Status::Failed;
                            tracing::warn!(station = %id, round = self.round, "station sent no masked input in time");
                            self.current.count_failure(FailureKind::Timeout);
                        }
                    }
                }
                for (station, msg) in messages {
                    self.actions.push_back(Action::SendSecAgg {
                        station,
                        round: self.round,
                        msg,
                    });
                }
            }
            Ok(Closed::Finished {
                aggregate,
                reported,
            }) => {
                let Phase::Fit(fit) = std::mem::replace(&mut self.phase, Phase::Finished) else {
                    return;
                };
                self.current.fit_s += secs_between(fit.started, now);
                self.failed_this_round.extend(
                    fit.status
                        .iter()
                        .filter(|(id, _)| !reported.contains_key(*id))
                        .map(|(id, _)| id.clone()),
                );
                if let Some(max) = reported.values().map(|(n, _)| *n).max() {
                    self.weight_scale = (max as f64).max(1.0);
                }
                tracing::info!(
                    round = self.round,
                    survivors = aggregate.survivors.len(),
                    dropped = aggregate.dropped.len(),
                    "secure aggregation unmasked the round's sum"
                );
                let num_examples = reported.values().map(|(n, _)| n).sum();
                let metrics = weighted_metrics(reported.values().map(|(n, m)| (*n, m)));
                self.record_local_privacy(max_metric(
                    reported.values().map(|(_, m)| m),
                    DP_EPSILON_METRIC,
                ));
                let completed = reported.into_keys().collect();
                let buffer = self.spare_buffer();
                let mean = secure::apply_mean(&self.global, &aggregate, buffer);
                let result = FitRes {
                    params: Arc::new(mean),
                    num_examples,
                    metrics: metrics.clone(),
                };
                self.finish_aggregate(
                    completed,
                    num_examples,
                    metrics,
                    Ok(vec![result]),
                    None,
                    now,
                );
            }
            Err(e) => {
                let Phase::Fit(fit) = std::mem::replace(&mut self.phase, Phase::Finished) else {
                    return;
                };
                self.current.fit_s += secs_between(fit.started, now);
                tracing::warn!(round = self.round, "secure aggregation failed: {e}");
                self.failed_this_round.extend(fit.status.keys().cloned());
                self.retry_or_give_up(format!("secure aggregation failed: {e}"), now);
            }
        }
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
        self.failed_this_round.extend(
            fit.status
                .iter()
                .filter(|(_, s)| **s != Status::Answered)
                .map(|(id, _)| id.clone()),
        );
        let accepted = fit.accepted();
        if accepted >= self.config.min_updates {
            self.aggregate(fit.results, fit.folded, now);
            return;
        }
        self.sum.clear();
        tracing::warn!(
            round = self.round,
            accepted,
            min_updates = self.config.min_updates,
            "too few updates"
        );
        self.retry_or_give_up(
            format!("{accepted} of {} required updates", self.config.min_updates),
            now,
        );
    }

    /// After a failed attempt: back off and retry, or abort or skip the round.
    fn retry_or_give_up(&mut self, why: String, now: Instant) {
        let retries_used = self.current.attempts.saturating_sub(1);
        if retries_used < self.config.retry.max_retries {
            self.phase = Phase::Backoff {
                until: later(now, self.config.retry.backoff),
            };
            return;
        }
        let reason = format!("{why} after {} attempts", self.current.attempts);
        match self.config.retry.on_exhausted {
            OnExhausted::Abort => self.abort(reason),
            OnExhausted::Skip => {
                self.current.completed.clear();
                self.current.note = Some(format!("skipped: {reason}"));
                self.finish_round(now);
            }
        }
    }

    fn aggregate(
        &mut self,
        results: BTreeMap<StationId, FitRes>,
        folded: BTreeMap<StationId, (u64, Metrics)>,
        now: Instant,
    ) {
        let t0 = self.stopwatch.as_mut().map(|clock| clock());
        self.record_local_privacy(max_metric(
            results
                .values()
                .map(|r| &r.metrics)
                .chain(folded.values().map(|(_, m)| m)),
            DP_EPSILON_METRIC,
        ));
        if folded.is_empty() {
            let (stations, results): (Vec<StationId>, Vec<FitRes>) = results.into_iter().unzip();
            let num_examples = results.iter().map(|r| r.num_examples).sum();
            let metrics = weighted_metrics(results.iter().map(|r| (r.num_examples, &r.metrics)));
            self.finish_aggregate(stations, num_examples, metrics, Ok(results), t0, now);
        } else {
            let num_examples = folded.values().map(|(n, _)| n).sum();
            let metrics = weighted_metrics(folded.values().map(|(n, m)| (*n, m)));
            let updates = folded.len();
            let completed = folded.into_keys().collect();
            let mut mean = self.spare_buffer();
            let results = match self.mean_of_sum(&mut mean, updates) {
                Ok(()) => Ok(vec![FitRes {
                    params: Arc::new(mean),
                    num_examples,
                    metrics: metrics.clone(),
                }]),
                Err(e) => Err(e),
            };
            self.finish_aggregate(completed, num_examples, metrics, results, t0, now);
        }
    }

    /// The running sum's mean of `updates` updates into `mean`, noised and
    /// charged under central DP.
    fn mean_of_sum(
        &mut self,
        mean: &mut Params,
        updates: usize,
    ) -> std::result::Result<(), String> {
        self.sum
            .mean_into(mean.data_mut())
            .map_err(|e| e.to_string())?;
        if let Some(dp) = &mut self.dp {
            let attempt = self.current.attempts.saturating_sub(1);
            let record = dp.noise_and_charge(mean.data_mut(), updates, self.round, attempt)?;
            tracing::info!(
                round = self.round,
                epsilon = record.epsilon,
                clip = record.clip,
                clipped = record.clipped,
                updates,
                "central DP: mean clipped and noised"
            );
            self.current.privacy = Some(record);
        }
        Ok(())
    }

    /// Local DP: the round's ε is the largest any station reported.
    fn record_local_privacy(&mut self, epsilon: Option<f64>) {
        let Some(p) = self
            .config
            .privacy
            .as_ref()
            .filter(|p| p.mode == DpMode::Local)
        else {
            return;
        };
        if epsilon.is_none() {
            tracing::warn!(
                round = self.round,
                "local DP: no station reported its epsilon (stations without DP-SGD?)"
            );
        }
        self.current.privacy = Some(RoundPrivacy {
            mode: DpMode::Local.to_string(),
            noise_multiplier: p.noise_multiplier,
            sampling_rate: 0.0,
            clip: Some(p.local_clip()),
            next_clip: None,
            clipped: 0,
            epsilon,
            delta: p.delta,
            charged: true,
        });
    }

    /// Whether the privacy budget forbids another round of `sampled` of
    /// `connected` stations; if so the run finishes.
    fn privacy_budget_reached(&mut self, sampled: usize, connected: usize) -> bool {
        let Some(p) = &self.config.privacy else {
            return false;
        };
        let Some(target) = p.target_epsilon else {
            return false;
        };
        let projected = match (&self.dp, p.mode) {
            (Some(dp), _) => {
                dp.next_round_exceeds((sampled as f64 / connected.max(1) as f64).min(1.0))
            }
            (None, DpMode::Local) => {
                // The stations' ε after the next round, projected from the
                // last round's increase (ε grows ever more slowly with the
                // rounds, so this overestimates).
                let eps: Vec<f64> = self
                    .history
                    .iter()
                    .filter_map(|m| m.privacy.as_ref().and_then(|p| p.epsilon))
                    .collect();
                match eps.as_slice() {
                    [] => None,
                    [one] => Some(2.0 * one),
                    [.., a, b] => Some(b + (b - a).max(0.0)),
                }
                .filter(|e| *e > target)
            }
            (None, DpMode::Central) => None,
        };
        let Some(projected) = projected else {
            return false;
        };
        tracing::info!(
            round = self.round,
            target_epsilon = target,
            projected_epsilon = projected,
            "privacy budget reached: the run stops before this round"
        );
        self.budget_spent = true;
        self.finish(Outcome::Completed);
        true
    }

    /// Hands the round's results to the strategy and installs the new
    /// global model; `t0` is when aggregation started (stopwatch runs only).
    fn finish_aggregate(
        &mut self,
        completed: Vec<StationId>,
        num_examples: u64,
        fit_metrics: Metrics,
        results: std::result::Result<Vec<FitRes>, String>,
        t0: Option<Instant>,
        now: Instant,
    ) {
        let t0 = t0.or_else(|| self.stopwatch.as_mut().map(|clock| clock()));
        self.current.completed = completed;
        self.current.num_examples = num_examples;
        self.current.fit_metrics = fit_metrics;
        self.sum.clear();
        self.current.train_loss = self.current.fit_metrics.get(LOSS_KEY).copied();
        let outcome = match &results {
            Ok(results) => self
                .strategy
                .aggregate_fit(self.round, &self.global, results),
            Err(message) => Err(FlError::Aggregation {
                strategy: self.strategy.name().to_string(),
                message: message.clone(),
            }),
        };
        if let Ok(results) = results {
            for r in results {
                self.recycle(r.params);
            }
        }
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
        if let Some(model_sha256) = self.global_sha256() {
            self.audit(AuditEntry::Aggregated {
                round: self.round,
                model_sha256,
                stations: self
                    .current
                    .completed
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                note: self.current.note.clone(),
            });
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
            deadline: later(now, self.config.evaluate_deadline),
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
        self.current.station_reports = eval
            .results
            .iter()
            .filter_map(|(id, r)| {
                let own: crate::strategy::Metrics = r
                    .metrics
                    .iter()
                    .filter(|(k, _)| {
                        crate::metrics::STATION_REPORT_PREFIXES
                            .iter()
                            .any(|p| k.starts_with(p))
                    })
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                (!own.is_empty()).then(|| (id.to_string(), own))
            })
            .collect();
        // Forecasts are per area: kept per station above, never averaged.
        let results: Vec<EvaluateRes> = eval
            .results
            .into_values()
            .map(|mut r| {
                r.metrics
                    .retain(|k, _| !k.starts_with(crate::metrics::FORECAST_REPORT_PREFIX));
                r
            })
            .collect();
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
        if let (Some(dp), None) = (&self.dp, &self.current.privacy) {
            // Not aggregated: nothing released, nothing charged.
            self.current.privacy = Some(dp.uncharged_record());
        }
        let metrics = std::mem::replace(&mut self.current, RoundMetrics::new(self.round + 1));
        tracing::info!(
            round = metrics.round,
            completed = metrics.completed.len(),
            failed = metrics.failed_total(),
            train_loss = metrics.train_loss,
            eval_loss = metrics.eval_loss,
            "round finished"
        );
        let verdict = self
            .plateau
            .as_mut()
            .map_or(Verdict::Unscored, |p| p.observe(&metrics));
        if verdict == Verdict::Improved {
            self.best_global = Some(self.global.clone());
        }
        self.history.push(metrics.clone());
        if let Some(model_sha256) = self.global_sha256() {
            self.audit(AuditEntry::Checkpoint {
                round: self.round,
                model_sha256,
            });
        }
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
        self.failed_this_round.clear();
        if verdict == Verdict::Stop && self.round <= self.config.rounds {
            let best = self.best();
            tracing::info!(
                round = self.round - 1,
                best_round = best.map(|b| b.round),
                best_score = best.map(|b| b.score),
                "validation stopped improving: run stopped early"
            );
            self.stopped_early = true;
            self.finish(Outcome::Completed);
        } else if self.round > self.config.rounds {
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
        self.audit(AuditEntry::RunFinished {
            outcome: match &outcome {
                Outcome::Completed if self.budget_spent => "completed: privacy budget spent".into(),
                Outcome::Completed if self.stopped_early => "completed: stopped early".into(),
                Outcome::Completed => "completed".into(),
                Outcome::Aborted { round, reason } => format!("aborted in round {round}: {reason}"),
            },
        });
        self.actions.push_back(Action::Finished(Summary {
            rounds_completed: self.history.last().map_or(0, |m| m.round),
            outcome,
            best: self.best(),
            stopped_early: self.stopped_early,
            privacy_budget_spent: self.budget_spent,
        }));
    }
}

/// The largest value of metric `key` among `metrics`.
fn max_metric<'a>(metrics: impl Iterator<Item = &'a Metrics>, key: &str) -> Option<f64> {
    metrics
        .filter_map(|m| m.get(key).copied())
        .filter(|v| v.is_finite())
        .reduce(f64::max)
}

/// `at + d`, saturating at a century ahead instead of overflowing (validated
/// configs stay far below that).
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(MAX_DURATION))
        .or_else(|| at.checked_add(Duration::from_secs(3600)))
        .unwrap_or(at)
}

/// The longest duration a setting may have: 10 years.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

fn secs_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

/// `max(floor(fraction * available), minimum)`, at most `available`.
pub(crate) fn sample_size(available: usize, fraction: f64, minimum: usize) -> usize {
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
/// The seed of a secure-aggregation round's neighbour graph (public: the
/// server chooses it and tells the stations).
fn graph_seed(seed: u64, round: u64, attempt: u64) -> [u8; 32] {
    use rand::RngCore;
    let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(mix(seed) ^ round) ^ (attempt | (1 << 40))));
    let mut out = [0u8; 32];
    rng.fill_bytes(&mut out);
    out
}

pub(crate) fn sample_stations(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::AdaptiveClip;
    use crate::strategy::testutil::params;
    use crate::strategy::{EvalSummary, FedAvg, FedAvgM, Metrics, StrategyState, WithServerEval};

    /// Drives an engine with injected time and records what it asks for.
    struct Harness {
        engine: Engine,
        t0: Instant,
        fits: Vec<(StationId, u64, FitIns)>,
        evals: Vec<(StationId, u64, EvaluateIns)>,
        rounds: Vec<RoundMetrics>,
        checkpoints: Vec<Checkpoint>,
        summary: Option<Summary>,
        audit: Vec<AuditEntry>,
    }

    fn id(s: &str) -> StationId {
        StationId::new(s).unwrap()
    }

    fn names(v: &[StationId]) -> Vec<&str> {
        v.iter().map(|s| s.as_str()).collect()
    }

    impl Harness {
        fn new(config: EngineConfig, strategy: Box<dyn Strategy>) -> Self {
            let t0 = Instant::now();
            let engine = Engine::new(config, strategy, params(&[0.0, 0.0, 0.0]), t0).unwrap();
            Self::wrap(engine, t0)
        }

        fn wrap(engine: Engine, t0: Instant) -> Self {
            let mut h = Harness {
                engine,
                t0,
                fits: Vec::new(),
                evals: Vec::new(),
                rounds: Vec::new(),
                checkpoints: Vec::new(),
                audit: Vec::new(),
                summary: None,
            };
            h.drain();
            h
        }

        fn at(&self, secs: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(secs)
        }

        fn drain(&mut self) {
            while let Some(a) = self.engine.poll_action() {
                match a {
                    Action::SendFit {
                        station,
                        round,
                        ins,
                    } => self.fits.push((station, round, ins)),
                    Action::SendEvaluate {
                        station,
                        round,
                        ins,
                    } => self.evals.push((station, round, ins)),
                    Action::RoundFinished(m) => self.rounds.push(*m),
                    Action::Checkpoint(c) => self.checkpoints.push(*c),
                    Action::Audit(e) => self.audit.push(*e),
                    Action::SendSecAgg { .. } => unreachable!("secure aggregation is off here"),
                    Action::Finished(s) => {
                        assert!(self.summary.is_none(), "finished twice");
                        self.summary = Some(s);
                    }
                }
            }
        }

        fn handle(&mut self, secs: f64, event: Event) {
            let now = self.at(secs);
            self.engine.handle(now, event);
            self.drain();
        }

        fn timeout(&mut self, secs: f64) {
            let now = self.at(secs);
            self.engine.handle_timeout(now);
            self.drain();
        }

        fn connect(&mut self, secs: f64, stations: &[&str]) {
            for s in stations {
                self.handle(secs, Event::StationConnected { id: id(s) });
            }
        }

        /// Fit requests sent so far for `round`, sorted by station.
        fn asked(&self, round: u64) -> Vec<StationId> {
            let mut v: Vec<StationId> = self
                .fits
                .iter()
                .filter(|(_, r, _)| *r == round)
                .map(|(s, _, _)| s.clone())
                .collect();
            v.sort();
            v
        }

        /// The request most recently sent to `station`.
        fn ins(&self, station: &str) -> &FitIns {
            &self
                .fits
                .iter()
                .rev()
                .find(|(s, _, _)| s.as_str() == station)
                .unwrap()
                .2
        }

        /// Answers `station`'s latest request with its deterministic fake update.
        fn answer(&mut self, secs: f64, station: &str) {
            let (round, ins) = {
                let (_, r, ins) = self
                    .fits
                    .iter()
                    .rev()
                    .find(|(s, _, _)| s.as_str() == station)
                    .unwrap();
                (*r, ins.clone())
            };
            let update = fake_update(station, round, &ins.global);
            self.handle(
                secs,
                Event::UpdateReceived {
                    id: id(station),
                    round,
                    update,
                    proof: None,
                },
            );
        }
    }

    /// A station's update: the global model plus a station- and round-specific
    /// shift; `num_examples` and the loss depend on the station.
    fn fake_update(station: &str, round: u64, global: &Params) -> FitRes {
        let k = f32::from(station.bytes().last().unwrap() - b'a' + 1);
        let mut p = global.clone();
        for (i, v) in p.data_mut().iter_mut().enumerate() {
            *v += k * (i as f32 + 1.0) + round as f32 * 0.5;
        }
        FitRes {
            params: Arc::new(p),
            num_examples: u64::from(k as u8) * 10,
            metrics: Metrics::from([(LOSS_KEY.to_string(), f64::from(k))]),
        }
    }

    fn config() -> EngineConfig {
        EngineConfig {
            rounds: 3,
            min_stations: 4,
            fraction_fit: 0.5,
            min_fit: 2,
            min_updates: 2,
            round_deadline: Duration::from_secs(10),
            eval_every: 0,
            seed: 7,
            retry: RetryPolicy {
                max_retries: 1,
                backoff: Duration::from_secs(2),
                on_exhausted: OnExhausted::Abort,
            },
            ..EngineConfig::default()
        }
    }

    const FOUR: [&str; 4] = ["st-a", "st-b", "st-c", "st-d"];

    fn dp_config(privacy: PrivacyConfig, rounds: u64) -> EngineConfig {
        EngineConfig {
            rounds,
            min_stations: 4,
            fraction_fit: 1.0,
            min_fit: 4,
            min_updates: 4,
            privacy: Some(privacy),
            ..config()
        }
    }

    /// Runs `rounds` rounds where every station answers on a global model
    /// of `dim` values with its fake update scaled by `scale`.
    fn run_dp(cfg: EngineConfig, dim: usize, scale: f32) -> Harness {
        let t0 = Instant::now();
        let spec =
            Arc::new(fedcrime_params::ParamSpec::new(vec![("w".to_string(), vec![dim])]).unwrap());
        let engine = Engine::new(cfg, Box::new(FedAvg::new()), Params::zeros(spec), t0).unwrap();
        let mut h = Harness::wrap(engine, t0);
        h.connect(0.0, &FOUR);
        let mut t = 0.0;
        while h.summary.is_none() {
            t += 1.0;
            let round = h.engine.round();
            let asked = h.asked(round);
            if asked.is_empty() {
                break;
            }
            for station in asked {
                let ins = h.ins(station.as_str()).clone();
                let mut update = fake_update(station.as_str(), round, &ins.global);
                for (u, g) in Arc::make_mut(&mut update.params)
                    .data_mut()
                    .iter_mut()
                    .zip(ins.global.data())
                {
                    *u = g + (*u - g) * scale;
                }
                h.handle(
                    t,
                    Event::UpdateReceived {
                        id: station.clone(),
                        round,
                        update,
                        proof: None,
                    },
                );
            }
        }
        h
    }

    #[test]
    fn central_dp_clips_each_update_and_weighs_them_equally() {
        // No noise: the new model is the plain mean of the clipped deltas.
        let privacy = PrivacyConfig {
            noise_multiplier: 0.0,
            clip: Some(0.5),
            ..PrivacyConfig::default()
        };
        let h = run_dp(dp_config(privacy, 1), 3, 1.0);
        let mut want = [0.0f64; 3];
        for station in FOUR {
            let u = fake_update(station, 1, &Params::zeros(h.engine.global().spec().clone()));
            let norm = u.params.l2_norm();
            for (w, v) in want.iter_mut().zip(u.params.data()) {
                // Every fake update is longer than the clip.
                *w += f64::from(*v) * 0.5 / norm / 4.0;
            }
        }
        for (got, want) in h.engine.global().data().iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        let p = h.rounds[0].privacy.clone().unwrap();
        assert_eq!((p.clipped, p.clip, p.charged), (4, Some(0.5), true));
    }

    #[test]
    fn central_dp_noise_has_the_mechanisms_scale_and_is_accounted() {
        let privacy = PrivacyConfig {
            noise_multiplier: 1.0,
            clip: Some(0.5),
            seed: Some(11),
            ..PrivacyConfig::default()
        };
        let dim = 40_000;
        // Updates far below the clip: the mean is ~0, the rest is noise.
        let h = run_dp(dp_config(privacy, 1), dim, 1e-9);
        let values = h.engine.global().data();
        let var = values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / dim as f64;
        let want = 1.0 * 0.5 / 4.0; // z * C / m
        assert!(
            (var.sqrt() / want - 1.0).abs() < 0.02,
            "noise std {} vs {want}",
            var.sqrt()
        );
        let p = h.rounds[0].privacy.clone().unwrap();
        let eps = fedcrime_privacy::epsilon(1.0, 1.0, 1, 1e-5)
            .unwrap()
            .epsilon;
        assert_eq!(p.clipped, 0);
        assert!((p.epsilon.unwrap() - eps).abs() < 1e-9, "{p:?}");
        assert_eq!(p.sampling_rate, 1.0);
        // The CSV carries the column.
        let header = RoundMetrics::csv_header(&[]);
        let record = h.rounds[0].csv_record(&[]);
        let col = header.iter().position(|c| c == "epsilon").unwrap();
        assert_eq!(record[col].parse::<f64>().unwrap(), p.epsilon.unwrap());
    }

    #[test]
    fn target_epsilon_stops_before_the_round_that_would_overspend() {
        let eps = |t| {
            fedcrime_privacy::epsilon(1.0, 2.0, t, 1e-5)
                .unwrap()
                .epsilon
        };
        let target = (eps(3) + eps(4)) / 2.0;
        let privacy = PrivacyConfig {
            noise_multiplier: 2.0,
            clip: Some(1.0),
            target_epsilon: Some(target),
            seed: Some(1),
            ..PrivacyConfig::default()
        };
        let h = run_dp(dp_config(privacy, 10), 3, 1.0);
        let summary = h.summary.clone().unwrap();
        assert_eq!(summary.rounds_completed, 3);
        assert!(summary.privacy_budget_spent);
        let spent = h.rounds.last().unwrap().privacy.clone().unwrap();
        assert!(spent.epsilon.unwrap() <= target);
        // Resuming rebuilds the accountant: the next round is still refused.
        let resumed = Engine::from_checkpoint(
            h.engine.config().clone(),
            Box::new(FedAvg::new()),
            h.checkpoints.last().unwrap().clone(),
            Instant::now(),
        )
        .unwrap();
        let dp = resumed.dp.as_ref().unwrap();
        assert!((dp.epsilon().unwrap() - eps(3)).abs() < 1e-9);
        assert!(dp.next_round_exceeds(1.0).is_some());
    }

    #[test]
    fn adaptive_clip_follows_the_target_quantile() {
        let privacy = PrivacyConfig {
            noise_multiplier: 0.0,
            adaptive_clip: Some(AdaptiveClip::default()),
            ..PrivacyConfig::default()
        };
        // Every update is far longer than the clip: it grows by e^(0.2*0.5) a round.
        let h = run_dp(dp_config(privacy.clone(), 3), 3, 1.0);
        let clips: Vec<f64> = h
            .rounds
            .iter()
            .map(|m| m.privacy.as_ref().unwrap().clip.unwrap())
            .collect();
        for (r, c) in clips.iter().enumerate() {
            let want = 0.1 * (0.1f64).exp().powi(r as i32);
            assert!((c - want).abs() < 1e-12, "round {}: {c} vs {want}", r + 1);
        }
        // Every update under the clip: it shrinks.
        let h = run_dp(dp_config(privacy, 2), 3, 1e-6);
        let p = h.rounds[1].privacy.as_ref().unwrap();
        assert!(p.clip.unwrap() < 0.1 && p.next_clip.unwrap() < p.clip.unwrap());
    }

    #[test]
    fn central_dp_is_refused_with_per_update_strategies_and_secure_aggregation() {
        let privacy = PrivacyConfig {
            clip: Some(1.0),
            ..PrivacyConfig::default()
        };
        let cfg = dp_config(privacy.clone(), 1);
        let e = Engine::new(
            cfg,
            Box::new(crate::strategy::FedMedian::new()),
            params(&[0.0]),
            Instant::now(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("privacy.mode") && e.contains("fedmedian"), "{e}");
        let mut cfg = dp_config(privacy, 1);
        cfg.secure_aggregation = Some(SecAggConfig::default());
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("secure aggregation"), "{e}");
        let bad = PrivacyConfig::default();
        let e = dp_config(bad, 1).validate().unwrap_err().to_string();
        assert!(e.contains("privacy.clip"), "{e}");
    }

    #[test]
    fn local_dp_asks_stations_for_dp_sgd_and_records_their_largest_epsilon() {
        let privacy = PrivacyConfig {
            mode: DpMode::Local,
            noise_multiplier: 1.1,
            clip: Some(2.0),
            ..PrivacyConfig::default()
        };
        let mut h = Harness::new(dp_config(privacy, 1), Box::new(FedAvg::new()));
        h.connect(0.0, &FOUR);
        let local = crate::privacy::LocalDp::from_settings(&h.ins("st-a").settings)
            .unwrap()
            .unwrap();
        assert_eq!((local.noise_multiplier, local.clip), (1.1, 2.0));
        for (i, s) in FOUR.iter().enumerate() {
            let ins = h.ins(s).clone();
            let mut update = fake_update(s, 1, &ins.global);
            update
                .metrics
                .insert(DP_EPSILON_METRIC.into(), 0.5 + i as f64);
            h.handle(
                1.0,
                Event::UpdateReceived {
                    id: id(s),
                    round: 1,
                    update,
                    proof: None,
                },
            );
        }
        let p = h.rounds[0].privacy.clone().unwrap();
        assert_eq!((p.mode.as_str(), p.epsilon), ("local", Some(3.5)));
    }

    #[test]
    fn bad_signatures_are_refused_and_every_decision_is_audited() {
        let cfg = EngineConfig {
            audit: true,
            min_updates: 1,
            min_fit: 2,
            ..config()
        };
        let mut h = Harness::new(cfg, Box::new(FedAvg::new()));
        h.connect(0.0, &FOUR);
        let asked = h.asked(1);
        let (good, bad) = (asked[0].clone(), asked[1].clone());
        for (station, problem) in [(&good, None), (&bad, Some("signed by another key"))] {
            let ins = h.ins(station.as_str()).clone();
            let update = fake_update(station.as_str(), 1, &ins.global);
            h.handle(
                1.0,
                Event::UpdateReceived {
                    id: station.clone(),
                    round: 1,
                    update,
                    proof: Some(UpdateProof {
                        sha256: "ab".repeat(32),
                        signature: Some("cd".repeat(64)),
                        problem: problem.map(str::to_string),
                    }),
                },
            );
        }
        let m = &h.rounds[0];
        assert_eq!(m.completed, vec![good.clone()]);
        assert_eq!(m.failed.get(&FailureKind::BadSignature), Some(&1));
        let kinds: Vec<&str> = h.audit.iter().map(|e| e.kind()).collect();
        assert_eq!(
            kinds,
            [
                "round_started",
                "update_accepted",
                "update_refused",
                "aggregated",
                "checkpoint",
                "round_started"
            ]
        );
        match &h.audit[2] {
            AuditEntry::UpdateRefused {
                station, reason, ..
            } => {
                assert_eq!(station, bad.as_str());
                assert!(reason.contains("signed by another key"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        match &h.audit[3] {
            AuditEntry::Aggregated { model_sha256, .. } => {
                assert_eq!(
                    *model_sha256,
                    fedcrime_audit::sha256_f32(h.engine.global().data())
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn three_rounds_with_four_stations() {
        let mut h = Harness::new(config(), Box::new(FedAvg::new()));
        h.connect(0.0, &FOUR[..3]);
        assert!(h.fits.is_empty(), "a round needs min_stations");
        h.connect(1.0, &FOUR[3..]);
        let all: Vec<StationId> = FOUR.iter().map(|s| id(s)).collect();
        for round in 1..=3u64 {
            let asked = h.asked(round);
            // floor(0.5 * 4) = 2 sampled, the seeded choice for this round.
            assert_eq!(
                asked,
                sample_stations(&all, 2, 7, round, 0),
                "round {round}"
            );
            let ins = h.ins(asked[0].as_str());
            assert_eq!(ins.round, round);
            assert_eq!(ins.settings.seed, 7);
            let before = h.engine.global().clone();
            let t = round as f64 * 5.0;
            h.answer(t, asked[0].as_str());
            assert_eq!(
                h.rounds.len(),
                round as usize - 1,
                "waits for every sampled station"
            );
            h.answer(t + 0.5, asked[1].as_str());
            assert_eq!(h.rounds.len(), round as usize);
            let m = &h.rounds[round as usize - 1];
            assert_eq!(m.round, round);
            assert_eq!(m.sampled, asked);
            assert_eq!(m.completed, asked);
            assert!(m.failed.is_empty() && m.aggregated && m.attempts == 1);
            // The global model is the example-weighted mean of the two updates.
            let u: Vec<FitRes> = asked
                .iter()
                .map(|s| fake_update(s.as_str(), round, &before))
                .collect();
            let (w0, w1) = (u[0].num_examples as f64, u[1].num_examples as f64);
            for i in 0..3 {
                let want = (f64::from(u[0].params.data()[i]) * w0
                    + f64::from(u[1].params.data()[i]) * w1)
                    / (w0 + w1);
                assert!((f64::from(h.engine.global().data()[i]) - want).abs() < 1e-5);
            }
            let loss = (u[0].metrics[LOSS_KEY] * w0 + u[1].metrics[LOSS_KEY] * w1) / (w0 + w1);
            assert_eq!(m.train_loss, Some(loss));
            assert_eq!(m.num_examples, (w0 + w1) as u64);
            // Round 1 starts when the 4th station connects (t = 1), the others
            // when the previous round ends.
            assert_eq!(m.fit_s, if round == 1 { 4.5 } else { 5.0 });
            let c = &h.checkpoints[round as usize - 1];
            assert_eq!((c.round, c.history.len()), (round, round as usize));
            assert!(Arc::ptr_eq(&c.global, h.engine.global()));
        }
        assert_eq!(
            h.summary,
            Some(Summary {
                rounds_completed: 3,
                outcome: Outcome::Completed,
                best: None,
                stopped_early: false,
                privacy_budget_spent: false,
            })
        );
        assert!(h.engine.is_finished() && h.engine.poll_timeout().is_none());
        assert_eq!(h.engine.history().len(), 3);
    }

    #[test]
    fn one_step_fedavg_equals_hand_computed_average() {
        let cfg = EngineConfig {
            rounds: 1,
            min_stations: 2,
            fraction_fit: 1.0,
            ..config()
        };
        let mut h = Harness::new(cfg, Box::new(FedAvg::new()));
        h.connect(0.0, &["a", "b"]);
        let g = h.engine.global().clone();
        let update = |values: &[f32], n| FitRes {
            params: Arc::new(Params::new(g.spec().clone(), values.to_vec()).unwrap()),
            num_examples: n,
            metrics: Metrics::new(),
        };
        h.handle(
            1.0,
            Event::UpdateReceived {
                id: id("b"),
                round: 1,
                update: update(&[3.0, 0.0, -1.0], 30),
                proof: None,
            },
        );
        h.handle(
            2.0,
            Event::UpdateReceived {
                id: id("a"),
                round: 1,
                update: update(&[1.0, 2.0, 3.0], 10),
                proof: None,
            },
        );
        // (10 * [1, 2, 3] + 30 * [3, 0, -1]) / 40
        assert_eq!(h.engine.global().data(), &[2.5, 0.5, 0.0]);
        assert_eq!(
            h.rounds[0].model_delta_norm,
            Some((2.5f64 * 2.5 + 0.25).sqrt())
        );
        assert_eq!(h.summary.as_ref().unwrap().outcome, Outcome::Completed);
    }

    /// Issue 16: FedAvg-family strategies are summed as updates arrive; the
    /// engine keeps no update and hands the buffers back for reuse, with the
    /// same global model a strategy that keeps every update computes.
    #[test]
    fn streamed_fedavg_keeps_no_update_and_matches_the_kept_average() {
        let cfg = EngineConfig {
            rounds: 1,
            min_stations: 3,
            fraction_fit: 1.0,
            ..config()
        };
        let run = |strategy: Box<dyn Strategy>| {
            let mut h = Harness::new(cfg.clone(), strategy);
            h.connect(0.0, &["a", "b", "c"]);
            let g = h.engine.global().clone();
            let mut spent = Vec::new();
            for (i, (name, n)) in [("c", 7u64), ("a", 13), ("b", 1)].into_iter().enumerate() {
                let values: Vec<f32> = (0..g.data().len())
                    .map(|j| ((i * 31 + j * 7) % 11) as f32 * 0.37 - 1.1)
                    .collect();
                h.handle(
                    1.0 + i as f64,
                    Event::UpdateReceived {
                        id: id(name),
                        round: 1,
                        update: FitRes {
                            params: Arc::new(Params::new(g.spec().clone(), values).unwrap()),
                            num_examples: n,
                            metrics: Metrics::from([("loss".to_string(), i as f64)]),
                        },
                        proof: None,
                    },
                );
                let mut n = 0;
                while let Some(p) = h.engine.take_spent() {
                    assert!(Arc::ptr_eq(p.spec(), g.spec()));
                    n += 1;
                }
                spent.push(n);
            }
            (h, spent)
        };
        // Each update's buffer comes back as soon as it is added.
        let (streamed, spent) = run(Box::new(FedAvg::new()));
        assert_eq!(spent[..2], [1, 1]);
        assert!(spent[2] >= 1);
        // A strategy that needs every update holds them until the round closes.
        let (kept, kept_spent) = run(Box::new(crate::strategy::FedAvgSparse));
        assert_eq!(kept_spent[..2], [0, 0]);
        let (a, b) = (streamed.engine.global().data(), kept.engine.global().data());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{x} vs {y}");
        }
        let (ra, rb) = (&streamed.rounds[0], &kept.rounds[0]);
        assert_eq!(ra.completed, rb.completed);
        assert_eq!(ra.num_examples, 21);
        assert_eq!(ra.train_loss, rb.train_loss);
    }

    #[test]
    fn deadline_times_out_stragglers_and_late_replies_are_stale() {
        let cfg = EngineConfig {
            min_stations: 3,
            fraction_fit: 1.0,
            ..config()
        };
        let mut h = Harness::new(cfg, Box::new(FedAvg::new()));
        h.connect(0.0, &["a", "b", "c"]);
        assert_eq!(h.engine.poll_timeout(), Some(h.at(10.0)));
        h.answer(1.0, "a");
        h.answer(2.0, "b");
        h.timeout(9.9);
        assert!(h.rounds.is_empty());
        h.timeout(10.0);
        let m = &h.rounds[0];
        assert_eq!(names(&m.completed), ["a", "b"]);
        assert_eq!(m.failed, BTreeMap::from([(FailureKind::Timeout, 1)]));
        assert!(m.aggregated);
        // Round 2 starts at once; c's round-1 answer arrives late.
        assert_eq!(h.asked(2).len(), 3);
        h.answer(11.0, "c");
        // c's latest request is round 2's, so answer round 1 explicitly.
        let stale = fake_update("c", 1, h.engine.global());
        h.handle(
            11.5,
            Event::UpdateReceived {
                id: id("c"),
                round: 1,
                update: stale,
                proof: None,
            },
        );
        assert_eq!(
            h.engine.current_metrics().failed,
            BTreeMap::from([(FailureKind::StaleRound, 1)])
        );
        // An answer exactly at the deadline is late: deadlines are processed first.
        // Only c answered round 2, below min_updates: the round backs off and
        // a's answer finds no round collecting.
        let late = fake_update("a", 2, h.engine.global());
        h.handle(
            20.0,
            Event::UpdateReceived {
                id: id("a"),
                round: 2,
                update: late,
                proof: None,
            },
        );
        assert_eq!(h.rounds.len(), 1);
        assert_eq!(
            h.engine.current_metrics().failed,
            BTreeMap::from([
                (FailureKind::StaleRound, 1),
                (FailureKind::Timeout, 2),
                (FailureKind::NotSampled, 1)
            ])
        );
        assert_eq!(h.engine.poll_timeout(), Some(h.at(22.0)));
        // The retry samples afresh (all three again) and completes.
        h.timeout(22.0);
        assert_eq!(h.asked(2).len(), 6);
        for s in ["a", "b", "c"] {
            h.answer(23.0, s);
        }
        let m = &h.rounds[1];
        assert_eq!((m.attempts, m.aggregated), (2, true));
        assert_eq!(names(&m.completed), ["a", "b", "c"]);
        assert_eq!(m.fit_s, 10.0 + 1.0);
        assert_eq!(m.wait_s, 2.0);
    }

    #[test]
    fn disconnect_mid_round_does_not_stall_it() {
        let cfg = EngineConfig {
            min_stations: 3,
            fraction_fit: 1.0,
            ..config()
        };
        let mut h = Harness::new(cfg, Box::new(FedAvg::new()));
        h.connect(0.0, &["a", "b", "c"]);
        h.answer(1.0, "a");
        h.handle(2.0, Event::StationDisconnected { id: id("c") });
        assert!(h.rounds.is_empty());
        h.answer(3.0, "b");
        // Everyone sampled has answered or left: no wait for the deadline.
        let m = &h.rounds[0];
        assert_eq!(m.failed, BTreeMap::from([(FailureKind::Disconnected, 1)]));
        assert_eq!(names(&m.completed), ["a", "b"]);
        assert_eq!(m.round_s, 3.0);
        // Two stations are left, below min_stations: round 2 waits.
        assert!(h.asked(2).is_empty());
        assert_eq!(h.engine.poll_timeout(), None);
        h.connect(4.0, &["c"]);
        assert_eq!(h.asked(2).len(), 3);
    }

    #[test]
    fn invalid_updates_are_refused_while_others_are_aggregated() {
        let cfg = EngineConfig {
            rounds: 1,
            min_stations: 5,
            fraction_fit: 1.0,
            max_update_norm: Some(100.0),
            ..config()
        };
        let mut h = Harness::new(cfg, Box::new(FedAvg::new()));
        h.connect(0.0, &["a", "b", "c", "d", "e"]);
        let g = h.engine.global().clone();
        let mut nan = fake_update("c", 1, &g);
        Arc::make_mut(&mut nan.params).data_mut()[1] = f32::NAN;
        h.handle(
            1.0,
            Event::UpdateReceived {
                id: id("c"),
                round: 1,
                update: nan,
                proof: None,
            },
        );
        let other = Arc::new(fedcrime_params::ParamSpec::new([("w", vec![3])]).unwrap());
        let shaped = FitRes {
            params: Arc::new(Params::new(other, vec![1.0, 1.0, 1.0]).unwrap()),
            ..fake_update("d", 1, &g)
        };
        h.handle(
            1.0,
            Event::UpdateReceived {
                id: id("d"),
                round: 1,
                update: shaped,
                proof: None,
            },
        );
        // A stale round number is refused but does not use up e's answer...
        h.handle(
            1.0,
            Event::UpdateReceived {
                id: id("e"),
                round: 0,
                update: fake_update("e", 1, &g),
                proof: None,
            },
        );
        // ...an update far from the global model does.
        let mut far = fake_update("e", 1, &g);
        Arc::make_mut(&mut far.params).data_mut()[0] = 1e3;
        h.handle(
            1.0,
            Event::UpdateReceived {
                id: id("e"),
                round: 1,
                update: far,
                proof: None,
            },
        );
        // A station that was never sampled.
        h.handle(
            1.0,
            Event::UpdateReceived {
                id: id("x"),
                round: 1,
                update: fake_update("a", 1, &g),
                proof: None,
            },
        );
        h.answer(2.0, "a");
        h.answer(2.0, "a");
        // c's answer was used up by its refused update.
        h.answer(2.0, "c");
        assert!(h.rounds.is_empty());
        h.answer(3.0, "b");
        let m = &h.rounds[0];
        assert_eq!(names(&m.completed), ["a", "b"]);
        assert_eq!(
            m.failed,
            BTreeMap::from([
                (FailureKind::NonFinite, 1),
                (FailureKind::SpecMismatch, 1),
                (FailureKind::StaleRound, 1),
                (FailureKind::NormTooLarge, 1),
                (FailureKind::NotSampled, 1),
                (FailureKind::Duplicate, 2),
            ])
        );
        let (ua, ub) = (fake_update("a", 1, &g), fake_update("b", 1, &g));
        let want = weighted(&[&ua, &ub]);
        assert_eq!(h.engine.global().data(), want.as_slice());
    }

    fn weighted(updates: &[&FitRes]) -> Vec<f32> {
        let total: f64 = updates.iter().map(|u| u.num_examples as f64).sum();
        (0..updates[0].params.data().len())
            .map(|i| {
                (updates
                    .iter()
                    .map(|u| f64::from(u.params.data()[i]) * u.num_examples as f64)
                    .sum::<f64>()
                    / total) as f32
            })
            .collect()
    }

    #[test]
    fn exhausted_retries_abort_or_skip() {
        for on_exhausted in [OnExhausted::Abort, OnExhausted::Skip] {
            let cfg = EngineConfig {
                rounds: 2,
                min_stations: 2,
                fraction_fit: 1.0,
                retry: RetryPolicy {
                    max_retries: 1,
                    backoff: Duration::from_secs(1),
                    on_exhausted,
                },
                ..config()
            };
            let mut h = Harness::new(cfg, Box::new(FedAvg::new()));
            h.connect(0.0, &["a", "b"]);
            // Attempt 1: b fails, a then cannot reach min_updates = 2 alone:
            // collection closes at once (no wait for a).
            h.handle(
                1.0,
                Event::FitFailed {
                    id: id("b"),
                    round: 1,
                    message: "out of memory".into(),
                },
            );
            assert_eq!(h.engine.poll_timeout(), Some(h.at(2.0)));
            h.timeout(2.0);
            assert_eq!(h.asked(1).len(), 4);
            // Attempt 2: b disconnects.
            h.handle(3.0, Event::StationDisconnected { id: id("b") });
            match on_exhausted {
                OnExhausted::Abort => {
                    let s = h.summary.clone().unwrap();
                    assert_eq!(s.rounds_completed, 0);
                    assert!(
                        matches!(s.outcome, Outcome::Aborted { round: 1, .. }),
                        "{s:?}"
                    );
                    assert!(h.rounds.is_empty() && h.checkpoints.is_empty());
                }
                OnExhausted::Skip => {
                    let m = &h.rounds[0];
                    assert!(!m.aggregated && m.note.as_deref().unwrap().starts_with("skipped"));
                    assert_eq!(
                        m.failed,
                        BTreeMap::from([
                            (FailureKind::StationError, 1),
                            (FailureKind::Disconnected, 1)
                        ])
                    );
                    assert_eq!(h.engine.global().data(), &[0.0, 0.0, 0.0]);
                    assert_eq!(h.checkpoints[0].round, 1);
                    assert!(h.summary.is_none());
                    assert_eq!(h.engine.round(), 2);
                }
            }
        }
    }

    #[test]
    fn waiting_for_stations_gives_up_when_told_to() {
        let cfg = EngineConfig {
            station_wait_timeout: Some(Duration::from_secs(30)),
            ..config()
        };
        let mut h = Harness::new(cfg, Box::new(FedAvg::new()));
        h.connect(1.0, &["a"]);
        assert_eq!(h.engine.poll_timeout(), Some(h.at(30.0)));
        h.timeout(29.0);
        assert!(h.summary.is_none());
        h.timeout(30.0);
        let s = h.summary.clone().unwrap();
        assert!(
            matches!(&s.outcome, Outcome::Aborted { round: 1, reason } if reason.contains("1 of 4")),
            "{s:?}"
        );
        // Events after the end change nothing.
        h.connect(31.0, &["b", "c", "d"]);
        assert!(h.fits.is_empty());
    }

    /// A run with early stopping on a server-side score that follows `scores`
    /// (round r scores `scores[r - 1]`), stations a, b, c answering at once.
    fn run_with_scores(cfg: EngineConfig, scores: &'static [f64]) -> Harness {
        let strategy = WithServerEval::new(Box::new(FedAvg::new()), |round, _: &Params| {
            Some(EvalSummary {
                loss: None,
                metrics: Metrics::from([("macro_f1".into(), scores[round as usize - 1])]),
                num_examples: 10,
            })
        });
        let mut h = Harness::new(cfg, Box::new(strategy));
        h.connect(0.0, &["a", "b", "c"]);
        let mut t = 1.0;
        while h.summary.is_none() {
            for s in ["a", "b", "c"] {
                h.answer(t, s);
            }
            t += 1.0;
        }
        h
    }

    fn stopping_config() -> EngineConfig {
        EngineConfig {
            rounds: 8,
            min_stations: 3,
            fraction_fit: 1.0,
            eval_every: 1,
            fraction_evaluate: 0.0,
            early_stopping: Some(EarlyStopping {
                monitor: "macro_f1".into(),
                goal: crate::stopping::Goal::Max,
                patience: 2,
                min_delta: 0.0,
            }),
            ..config()
        }
    }

    #[test]
    fn early_stopping_ends_the_run_at_the_plateau_and_keeps_the_best_round() {
        const SCORES: &[f64] = &[0.1, 0.3, 0.2, 0.25, 0.9, 0.9, 0.9, 0.9];
        let h = run_with_scores(stopping_config(), SCORES);
        let s = h.summary.clone().unwrap();
        assert_eq!(s.rounds_completed, 4, "{s:?}");
        assert!(s.stopped_early);
        assert_eq!(
            s.best,
            Some(BestRound {
                round: 2,
                score: 0.3
            })
        );
        assert_eq!(s.outcome, Outcome::Completed);
        // The best model is round 2's global, not the last one.
        let best = h.engine.best_global().unwrap();
        assert!(Arc::ptr_eq(best, &h.checkpoints[1].global));
        assert!(!Arc::ptr_eq(best, h.engine.global()));
        // Without early stopping every round runs.
        let all = run_with_scores(
            EngineConfig {
                early_stopping: None,
                ..stopping_config()
            },
            SCORES,
        );
        assert_eq!(all.summary.unwrap().rounds_completed, 8);
        assert!(all.engine.best_global().is_none());
        // A run that keeps improving stops at the cap, not stopped early.
        const RISING: &[f64] = &[0.1, 0.2, 0.3];
        let capped = run_with_scores(
            EngineConfig {
                rounds: 3,
                ..stopping_config()
            },
            RISING,
        );
        let s = capped.summary.unwrap();
        assert_eq!((s.rounds_completed, s.stopped_early), (3, false));
        assert_eq!(s.best.unwrap().round, 3);
        // Early stopping without evaluation rounds is refused.
        let bad = EngineConfig {
            eval_every: 0,
            ..stopping_config()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("early_stopping"));
    }

    #[test]
    fn a_resumed_run_knows_its_best_round_and_takes_its_model_back() {
        const SCORES: &[f64] = &[0.1, 0.3, 0.2, 0.25, 0.9, 0.9, 0.9, 0.9];
        let h = run_with_scores(stopping_config(), SCORES);
        let strategy = || -> Box<dyn Strategy> {
            Box::new(WithServerEval::new(
                Box::new(FedAvg::new()),
                |round, _: &Params| {
                    Some(EvalSummary {
                        loss: None,
                        metrics: Metrics::from([("macro_f1".into(), SCORES[round as usize - 1])]),
                        num_examples: 10,
                    })
                },
            ))
        };
        let t0 = Instant::now();
        // After round 3: best is round 2, one round without improvement.
        let mut e =
            Engine::from_checkpoint(stopping_config(), strategy(), h.checkpoints[2].clone(), t0)
                .unwrap();
        assert!(!e.is_finished());
        assert_eq!(e.best().map(|b| b.round), Some(2));
        assert!(e.best_global().is_none());
        let round2 = (*h.checkpoints[1].global).clone();
        assert!(!e.restore_best(3, round2.clone()));
        assert!(e.restore_best(2, round2));
        assert!(e.best_global().is_some());
        // After round 4 the plateau is reached: the resumed run is over.
        let mut done =
            Engine::from_checkpoint(stopping_config(), strategy(), h.checkpoints[3].clone(), t0)
                .unwrap();
        assert!(matches!(
            done.poll_action(),
            Some(Action::Finished(Summary {
                rounds_completed: 4,
                stopped_early: true,
                ..
            }))
        ));
    }

    #[test]
    fn evaluation_rounds_collect_federated_and_server_evaluations() {
        let cfg = EngineConfig {
            rounds: 3,
            min_stations: 3,
            fraction_fit: 1.0,
            eval_every: 2,
            fraction_evaluate: 1.0,
            evaluate_deadline: Duration::from_secs(5),
            evaluate_config: Config::from([("batch_size".into(), ConfigValue::Int(64))]),
            ..config()
        };
        let strategy = WithServerEval::new(Box::new(FedAvg::new()), |round, _: &Params| {
            Some(EvalSummary {
                loss: Some(round as f64 / 10.0),
                metrics: Metrics::from([("accuracy".into(), 0.5)]),
                num_examples: 100,
            })
        });
        let mut h = Harness::new(cfg, Box::new(strategy));
        h.connect(0.0, &["a", "b", "c"]);
        let eval = |h: &mut Harness, secs: f64, s: &str, loss: f64, n: u64| {
            let round = h.engine.round();
            h.handle(
                secs,
                Event::EvaluationReceived {
                    id: id(s),
                    round,
                    result: EvaluateRes {
                        loss,
                        num_examples: n,
                        metrics: Metrics::from([
                            ("mae".into(), loss * 2.0),
                            ("shap|violent|hour".into(), n as f64),
                        ]),
                    },
                },
            );
        };
        for s in ["a", "b", "c"] {
            h.answer(1.0, s);
        }
        // Round 1 is not an evaluation round.
        assert!(h.evals.is_empty());
        assert_eq!(h.rounds[0].eval_loss, None);
        assert_eq!(h.rounds[0].server_eval_loss, None);
        for s in ["a", "b", "c"] {
            h.answer(2.0, s);
        }
        assert_eq!(h.evals.len(), 3);
        assert!(h.rounds.len() == 1, "round 2 waits for its evaluation");
        let (_, r, ins) = &h.evals[0];
        assert_eq!(*r, 2);
        assert!(Arc::ptr_eq(&ins.global, h.engine.global()));
        assert_eq!(ins.config["batch_size"], ConfigValue::Int(64));
        eval(&mut h, 3.0, "a", 1.0, 10);
        eval(&mut h, 3.0, "a", 1.0, 10);
        eval(&mut h, 3.0, "b", f64::NAN, 10);
        eval(&mut h, 4.0, "c", 3.0, 30);
        let m = &h.rounds[1];
        assert_eq!(m.eval_loss, Some((10.0 + 90.0) / 40.0));
        assert_eq!(m.eval_metrics["mae"], 5.0);
        // Explanation summaries stay per station as well.
        assert_eq!(m.station_reports.len(), 2);
        assert_eq!(
            m.station_reports[&id("c").to_string()]["shap|violent|hour"],
            30.0
        );
        assert!(!m.station_reports.contains_key(&id("b").to_string()));
        assert!(h.rounds[0].station_reports.is_empty());
        assert_eq!((m.eval_sampled, m.eval_completed), (3, 2));
        assert_eq!(
            m.eval_failed,
            BTreeMap::from([(FailureKind::Duplicate, 1), (FailureKind::NonFinite, 1)])
        );
        assert_eq!(m.server_eval_loss, Some(0.2));
        assert_eq!(m.eval_s, 2.0);
        // Round 3 is the last, so it evaluates too; c never answers.
        for s in ["a", "b", "c"] {
            h.answer(5.0, s);
        }
        eval(&mut h, 6.0, "a", 2.0, 10);
        eval(&mut h, 6.0, "b", 4.0, 10);
        h.timeout(10.0);
        let m = &h.rounds[2];
        assert_eq!(m.eval_loss, Some(3.0));
        assert_eq!(m.eval_failed, BTreeMap::from([(FailureKind::Timeout, 1)]));
        assert_eq!(h.summary.as_ref().unwrap().outcome, Outcome::Completed);
    }

    #[test]
    fn same_seed_same_samples_and_traffic_is_counted() {
        let stations: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
        let run = |seed: u64| {
            let cfg = EngineConfig {
                rounds: 4,
                min_stations: 10,
                min_fit: 3,
                min_updates: 1,
                fraction_fit: 0.3,
                seed,
                ..config()
            };
            let mut h = Harness::new(cfg, Box::new(FedAvg::new()));
            let names: Vec<&str> = stations.iter().map(|s| s.as_str()).collect();
            h.connect(0.0, &names);
            let mut t = 0.0;
            for round in 1..=4u64 {
                t += 0.5;
                h.handle(
                    t,
                    Event::Traffic {
                        bytes_in: 10,
                        bytes_out: 100 * round,
                    },
                );
                let first: Vec<StationId> = h.asked(round);
                for s in first {
                    h.handle(
                        t,
                        Event::FitFailed {
                            id: s,
                            round,
                            message: String::new(),
                        },
                    );
                }
                // All failed: too few updates, a retry after the 2 s backoff.
                t += 2.0;
                h.timeout(t);
                let second: Vec<StationId> = h
                    .fits
                    .iter()
                    .filter(|(_, r, _)| *r == round)
                    .skip(3)
                    .map(|(s, _, _)| s.clone())
                    .collect();
                assert_eq!(second.len(), 3);
                for s in second {
                    let update = fake_update("a", round, h.engine.global());
                    h.handle(
                        t,
                        Event::UpdateReceived {
                            id: s,
                            round,
                            update,
                            proof: None,
                        },
                    );
                }
            }
            assert_eq!(h.rounds.len(), 4);
            h
        };
        let a = run(1);
        let b = run(1);
        let c = run(2);
        let samples = |h: &Harness| {
            h.fits
                .iter()
                .map(|(s, r, _)| (s.clone(), *r))
                .collect::<Vec<_>>()
        };
        assert_eq!(samples(&a), samples(&b));
        assert_ne!(samples(&a), samples(&c));
        assert_eq!(a.rounds[0].sampled.len(), 3);
        assert_eq!((a.rounds[2].bytes_in, a.rounds[2].bytes_out), (10, 300));
        // Attempt 2 samples independently of attempt 1.
        let r1: Vec<_> = a
            .fits
            .iter()
            .filter(|(_, r, _)| *r == 1)
            .map(|(s, _, _)| s.clone())
            .collect();
        assert_eq!(r1.len(), 6);
        assert_eq!(a.rounds[0].attempts, 2);
        assert_eq!(a.rounds[0].sampled, r1[3..].to_vec());
        // The retry avoids the stations that failed the first attempt.
        assert!(r1[3..].iter().all(|s| !r1[..3].contains(s)), "{r1:?}");
    }

    fn assert_close_json<T: Serialize + ?Sized>(a: &T, b: &T) {
        fn walk(a: &serde_json::Value, b: &serde_json::Value, path: &str) {
            use serde_json::Value::*;
            match (a, b) {
                (Number(x), Number(y)) => {
                    let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                    assert!(
                        (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                        "{path}: {x} vs {y}"
                    );
                }
                (Array(x), Array(y)) => {
                    assert_eq!(x.len(), y.len(), "{path}");
                    for (i, (x, y)) in x.iter().zip(y).enumerate() {
                        walk(x, y, &format!("{path}[{i}]"));
                    }
                }
                (Object(x), Object(y)) => {
                    assert_eq!(
                        x.keys().collect::<Vec<_>>(),
                        y.keys().collect::<Vec<_>>(),
                        "{path}"
                    );
                    for (k, v) in x {
                        walk(v, &y[k], &format!("{path}.{k}"));
                    }
                }
                _ => assert_eq!(a, b, "{path}"),
            }
        }
        walk(
            &serde_json::to_value(a).unwrap(),
            &serde_json::to_value(b).unwrap(),
            "",
        );
    }

    #[test]
    fn resume_continues_from_round_n_state() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path());
        let cfg = EngineConfig {
            rounds: 3,
            min_stations: 3,
            fraction_fit: 0.7,
            ..config()
        };
        let strategy = || Box::new(FedAvgM::new(1.0, 0.9).unwrap()) as Box<dyn Strategy>;
        let play_round = |h: &mut Harness, round: u64| {
            for s in h.asked(round) {
                h.answer(round as f64, s.as_str());
            }
        };
        // The reference run: three rounds in one go, checkpoints persisted as a driver would.
        let mut full = Harness::new(cfg.clone(), strategy());
        full.connect(0.0, &["a", "b", "c"]);
        for round in 1..=3 {
            play_round(&mut full, round);
            if round == 2 {
                store.save(full.checkpoints.last().unwrap()).unwrap();
            }
        }
        assert_eq!(full.rounds.len(), 3);

        // A new server process resumes from the round-2 checkpoint.
        let t0 = Instant::now();
        let engine = Engine::resume(
            tmp.path(),
            cfg.clone(),
            strategy(),
            params(&[0.0, 0.0, 0.0]),
            t0,
        )
        .unwrap();
        assert_eq!(engine.round(), 3);
        // serde_json parses floats to within an ulp, not always exactly.
        assert_close_json(engine.history(), &full.rounds[..2]);
        let mut resumed = Harness::wrap(engine, t0);
        resumed.connect(0.0, &["a", "b", "c"]);
        assert_eq!(resumed.asked(3), full.asked(3));
        assert!(resumed.asked(1).is_empty() && resumed.asked(2).is_empty());
        play_round(&mut resumed, 3);
        // Same model after round 3, which needs FedAvgM's restored momentum.
        assert_eq!(resumed.engine.global(), full.engine.global());
        assert_eq!(resumed.rounds[0].completed, full.rounds[2].completed);
        assert_eq!(resumed.checkpoints[0].history.len(), 3);
        assert_eq!(resumed.summary.as_ref().unwrap().rounds_completed, 3);
        // Without momentum restored, round 3 would differ.
        let mut fresh = Harness::wrap(
            Engine::from_checkpoint(
                cfg.clone(),
                strategy(),
                Checkpoint {
                    strategy: StrategyState::stateless("fedavgm"),
                    ..store.load_latest().unwrap().unwrap()
                },
                t0,
            )
            .unwrap(),
            t0,
        );
        fresh.connect(0.0, &["a", "b", "c"]);
        play_round(&mut fresh, 3);
        assert_ne!(fresh.engine.global(), full.engine.global());

        // Resuming a finished run finishes at once; another layout is refused.
        store.save(full.checkpoints.last().unwrap()).unwrap();
        let mut done = Engine::resume(
            tmp.path(),
            cfg.clone(),
            strategy(),
            params(&[0.0, 0.0, 0.0]),
            t0,
        )
        .unwrap();
        assert!(done.is_finished());
        assert!(matches!(
            done.poll_action(),
            Some(Action::Finished(Summary {
                rounds_completed: 3,
                ..
            }))
        ));
        assert!(
            Engine::resume(tmp.path(), cfg.clone(), strategy(), params(&[0.0, 0.0]), t0).is_err()
        );
        // The wrong strategy is refused too.
        assert!(Engine::resume(
            tmp.path(),
            cfg,
            Box::new(FedAvg::new()),
            params(&[0.0, 0.0, 0.0]),
            t0
        )
        .is_err());
    }

    #[test]
    fn engine_moves_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Engine>();
        assert_send::<Action>();
        assert_send::<Event>();
    }

    #[test]
    fn config_validation_and_toml() {
        assert!(EngineConfig::default().validate().is_ok());
        let bad = [
            EngineConfig {
                rounds: 0,
                ..EngineConfig::default()
            },
            EngineConfig {
                fraction_fit: 0.0,
                ..EngineConfig::default()
            },
            EngineConfig {
                min_fit: 3,
                ..EngineConfig::default()
            },
            EngineConfig {
                min_updates: 3,
                ..EngineConfig::default()
            },
            EngineConfig {
                round_deadline: Duration::ZERO,
                ..EngineConfig::default()
            },
            EngineConfig {
                max_update_norm: Some(-1.0),
                ..EngineConfig::default()
            },
            EngineConfig {
                round_deadline: Duration::from_secs(u64::MAX),
                ..EngineConfig::default()
            },
            EngineConfig {
                fraction_evaluate: 1.5,
                ..EngineConfig::default()
            },
        ];
        for cfg in bad {
            let err = cfg.validate().unwrap_err();
            assert!(matches!(err, FlError::Config { .. }), "{err}");
        }
        let cfg: EngineConfig = toml::from_str(
            "rounds = 20\nmin_stations = 21\nfraction = 0.5\nround_deadline = 90.5\n\
             station_wait_timeout = 600\n[retry]\non_exhausted = \"skip\"\n\
             [evaluate_config]\nbatch_size = 512\n",
        )
        .unwrap();
        assert_eq!(cfg.rounds, 20);
        assert_eq!(cfg.fraction_fit, 0.5);
        assert_eq!(cfg.round_deadline, Duration::from_millis(90_500));
        assert_eq!(cfg.station_wait_timeout, Some(Duration::from_secs(600)));
        assert_eq!(cfg.retry.on_exhausted, OnExhausted::Skip);
        assert_eq!(cfg.evaluate_config["batch_size"], ConfigValue::Int(512));
        assert!(toml::from_str::<EngineConfig>("[fit_config]\nlr = 0.01").is_err());
        assert!(toml::from_str::<EngineConfig>("roundz = 3").is_err());
        assert!(toml::from_str::<EngineConfig>("round_deadline = -1").is_err());
        let back: EngineConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(sample_size(21, 0.1, 2), 2);
        assert_eq!(sample_size(21, 0.5, 2), 10);
        assert_eq!(sample_size(3, 1.0, 5), 3);
    }
}
