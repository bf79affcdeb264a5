//! Secure aggregation in the round engine: the server's side
//! (`SecureFit`, one per fit attempt, driven by the [`Engine`](crate::Engine))
//! and the station's side ([`SecureStation`], driven by whatever carries the
//! station's messages: the QUIC client or the in-memory simulator).
//!
//! The protocol itself is `fedcrime-secagg`'s; this module maps station
//! identities to the protocol's slots (the round's sample, sorted, so slot
//! `i` is the `i`-th sampled station), closes each stage when every live
//! station answered or its deadline passed, and hands the unmasked mean
//! update to the strategy as a single result, so FedAvg-family strategies
//! (those whose [`Strategy::mean_suffices`](crate::Strategy::mean_suffices))
//! aggregate it like any round.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedcrime_identity::StationId;
use fedcrime_params::Params;
pub use fedcrime_secagg::{
    Aggregate, KeyAdvert, MaskedInput, Roster, RoundSetup, SealedShare, SecAggConfig, SecAggError,
    ShareBundle, Slot, UnmaskRequest, UnmaskResponse,
};
use fedcrime_secagg::{Aggregator, StationSession};
use fedcrime_wire::{codec, SecAgg, WireError};

use crate::strategy::{FitRes, Metrics};

/// The Welcome extension that tells a station the run uses secure
/// aggregation (its training results wait for the protocol's setup).
pub const WELCOME_EXTENSION: &str = "fedcrime.secure_aggregation";

/// How long each of the protocol's short stages (keys, shares, unmasking)
/// may take; the masked-input stage, which includes training, has the
/// round's deadline.
pub const STAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A protocol message from the server to one station.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum SecAggDown {
    /// The round's protocol settings and the station's slot; sent with the
    /// fit request.
    Setup {
        /// What both sides agree on.
        setup: RoundSetup,
        /// The station's slot.
        slot: Slot,
    },
    /// Stage 1 closed: the neighbours' public keys.
    Roster(Roster),
    /// Stage 2 closed: the shares sealed for this station.
    Shares(Vec<SealedShare>),
    /// Stage 3 closed: which neighbours' shares to reveal.
    Unmask(UnmaskRequest),
}

impl SecAggDown {
    /// The message's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            SecAggDown::Setup { .. } => "secagg setup",
            SecAggDown::Roster(_) => "secagg roster",
            SecAggDown::Shares(_) => "secagg shares",
            SecAggDown::Unmask(_) => "secagg unmask request",
        }
    }
}

/// A protocol message from a station to the server.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum SecAggUp {
    /// Stage 1: public keys.
    Keys(KeyAdvert),
    /// Stage 2: sealed shares for the neighbours.
    Shares(ShareBundle),
    /// Stage 3: the masked weighted update, with the example count and
    /// training metrics (reported in the clear, as in a plaintext round).
    Masked {
        /// The masked vector.
        input: MaskedInput,
        /// Training examples used.
        num_examples: u64,
        /// Training metrics.
        metrics: Metrics,
    },
    /// Stage 4: the shares asked for.
    Unmask(UnmaskResponse),
}

impl SecAggUp {
    /// The message's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            SecAggUp::Keys(_) => "secagg keys",
            SecAggUp::Shares(_) => "secagg shares",
            SecAggUp::Masked { .. } => "secagg masked input",
            SecAggUp::Unmask(_) => "secagg unmask response",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Keys,
    Shares,
    Masked,
    Unmask,
    Done,
}

/// What closing a stage produced.
pub(crate) enum Closed {
    /// Messages for the next stage.
    Next(Vec<(StationId, SecAggDown)>),
    /// The round's result: the unmasked aggregate and the survivors'
    /// example counts and metrics.
    Finished {
        aggregate: Aggregate,
        reported: BTreeMap<StationId, (u64, Metrics)>,
    },
}

/// The server's side of secure aggregation for one fit attempt.
pub(crate) struct SecureFit {
    aggregator: Aggregator,
    ids: Vec<StationId>,
    slots: BTreeMap<StationId, Slot>,
    stage: Stage,
    stage_deadline: Instant,
    /// Stations expected to answer the current stage.
    expected: BTreeSet<StationId>,
    /// Stations that answered the current stage.
    answered: BTreeSet<StationId>,
    /// Stations that failed (disconnected, errors, refused messages).
    failed: BTreeSet<StationId>,
    /// Example counts and metrics sent with the masked inputs.
    reported: BTreeMap<StationId, (u64, Metrics)>,
}

impl SecureFit {
    /// Starts the protocol for `sample` (sorted; slot `i` is `sample[i]`).
    /// Returns the per-station setup messages.
    pub(crate) fn start(
        setup: RoundSetup,
        sample: &[StationId],
        now: Instant,
    ) -> Result<(SecureFit, Vec<(StationId, SecAggDown)>), SecAggError> {
        let aggregator = Aggregator::new(setup.clone())?;
        let ids = sample.to_vec();
        let slots: BTreeMap<StationId, Slot> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as Slot))
            .collect();
        let messages = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                (
                    id.clone(),
                    SecAggDown::Setup {
                        setup: setup.clone(),
                        slot: i as Slot,
                    },
                )
            })
            .collect();
        Ok((
            SecureFit {
                aggregator,
                expected: ids.iter().cloned().collect(),
                ids,
                slots,
                stage: Stage::Keys,
                stage_deadline: now + STAGE_TIMEOUT,
                answered: BTreeSet::new(),
                failed: BTreeSet::new(),
                reported: BTreeMap::new(),
            },
            messages,
        ))
    }

    /// The stage's deadline, or `round_deadline` in the masked-input stage.
    pub(crate) fn deadline(&self, round_deadline: Instant) -> Instant {
        match self.stage {
            Stage::Masked => round_deadline,
            _ => self.stage_deadline.min(round_deadline),
        }
    }

    /// Whether the current stage can close: everyone expected answered or
    /// failed, or its deadline passed.
    pub(crate) fn due(&self, now: Instant, round_deadline: Instant) -> bool {
        self.stage != Stage::Done
            && (now >= self.deadline(round_deadline)
                || self
                    .expected
                    .iter()
                    .all(|id| self.answered.contains(id) || self.failed.contains(id)))
    }

    /// Whether `id`'s masked input is in the sum.
    pub(crate) fn contributed(&self, id: &StationId) -> bool {
        self.reported.contains_key(id)
    }

    /// Marks a station as gone for the rest of the attempt.
    pub(crate) fn fail(&mut self, id: &StationId) {
        if self.slots.contains_key(id) {
            self.failed.insert(id.clone());
        }
    }

    /// A message from `id`. An error means the message was refused and the
    /// station is out of the protocol for this attempt.
    pub(crate) fn receive(&mut self, id: &StationId, msg: SecAggUp) -> Result<(), SecAggError> {
        let slot = *self.slots.get(id).ok_or(SecAggError::Stage {
            what: "a protocol message from a station outside the round",
            stage: "any",
        })?;
        if self.failed.contains(id) || !self.expected.contains(id) || self.answered.contains(id) {
            return Err(SecAggError::Stage {
                what: "a protocol message not awaited from this station",
                stage: self.stage_name(),
            });
        }
        let result = match (self.stage, msg) {
            (Stage::Keys, SecAggUp::Keys(advert)) => self.aggregator.add_keys(slot, advert),
            (Stage::Shares, SecAggUp::Shares(bundle)) => self.aggregator.add_shares(slot, bundle),
            (
                Stage::Masked,
                SecAggUp::Masked {
                    input,
                    num_examples,
                    metrics,
                },
            ) => {
                if num_examples == 0 || metrics.values().any(|v| !v.is_finite()) {
                    Err(SecAggError::Update(
                        "zero examples or non-finite metrics".into(),
                    ))
                } else {
                    self.aggregator.add_masked(slot, input).map(|()| {
                        self.reported.insert(id.clone(), (num_examples, metrics));
                    })
                }
            }
            (Stage::Unmask, SecAggUp::Unmask(response)) => {
                self.aggregator.add_unmask(slot, response)
            }
            (_, msg) => Err(SecAggError::Stage {
                what: msg.name(),
                stage: self.stage_name(),
            }),
        };
        match result {
            Ok(()) => {
                self.answered.insert(id.clone());
                Ok(())
            }
            Err(e) => {
                self.failed.insert(id.clone());
                Err(e)
            }
        }
    }

    fn stage_name(&self) -> &'static str {
        match self.stage {
            Stage::Keys => "key advertisement",
            Stage::Shares => "key sharing",
            Stage::Masked => "masked input",
            Stage::Unmask => "unmasking",
            Stage::Done => "done",
        }
    }

    /// Closes the current stage. An error ends the attempt (too few
    /// stations left, or a corrupt recovery).
    pub(crate) fn close(&mut self, now: Instant) -> Result<Closed, SecAggError> {
        let out = match self.stage {
            Stage::Keys => {
                self.stage = Stage::Shares;
                let rosters = self.aggregator.rosters()?;
                to_ids(rosters, &self.ids)
                    .into_iter()
                    .map(|(id, r)| (id, SecAggDown::Roster(r)))
                    .collect::<Vec<_>>()
            }
            Stage::Shares => {
                self.stage = Stage::Masked;
                let inboxes = self.aggregator.route_shares()?;
                to_ids(inboxes, &self.ids)
                    .into_iter()
                    .map(|(id, s)| (id, SecAggDown::Shares(s)))
                    .collect()
            }
            Stage::Masked => {
                self.stage = Stage::Unmask;
                let requests = self.aggregator.unmask_requests()?;
                to_ids(requests, &self.ids)
                    .into_iter()
                    .map(|(id, r)| (id, SecAggDown::Unmask(r)))
                    .collect()
            }
            Stage::Unmask => {
                self.stage = Stage::Done;
                let aggregate = self.aggregator.finish()?;
                let reported = std::mem::take(&mut self.reported);
                return Ok(Closed::Finished {
                    aggregate,
                    reported,
                });
            }
            Stage::Done => {
                return Err(SecAggError::Stage {
                    what: "closing a stage",
                    stage: "done",
                })
            }
        };
        self.expected = out.iter().map(|(id, _)| id.clone()).collect();
        self.answered.clear();
        self.stage_deadline = now + STAGE_TIMEOUT;
        Ok(Closed::Next(out))
    }
}

/// Slot-keyed messages as station-keyed ones.
fn to_ids<T>(m: BTreeMap<Slot, T>, ids: &[StationId]) -> Vec<(StationId, T)> {
    m.into_iter()
        .map(|(slot, msg)| (ids[slot as usize].clone(), msg))
        .collect()
}

/// `global + mean`, the new model's candidate from an aggregate of deltas.
pub(crate) fn apply_mean(global: &Params, aggregate: &Aggregate, mut out: Params) -> Params {
    let mean = aggregate.mean();
    for ((o, g), d) in out.data_mut().iter_mut().zip(global.data()).zip(&mean) {
        *o = g + d;
    }
    out
}

/// The station's side of secure aggregation in one round: it answers the
/// server's protocol messages and, once both its training result and its
/// routed shares are in, sends its masked update (the change to the global
/// model it trained from).
pub struct SecureStation {
    round: u64,
    session: StationSession,
    global: Option<Arc<Params>>,
    inbox: Option<Vec<SealedShare>>,
    trained: Option<FitRes>,
    sent_input: bool,
}

impl SecureStation {
    /// Starts the station's protocol from the server's setup message;
    /// returns it and the key advertisement to send.
    pub fn start(
        setup: RoundSetup,
        slot: Slot,
        global: Option<Arc<Params>>,
    ) -> Result<(SecureStation, SecAggUp), SecAggError> {
        let round = setup.round;
        let mut session = StationSession::new(setup, slot)?;
        let advert = session.advertise()?;
        Ok((
            SecureStation {
                round,
                session,
                global,
                inbox: None,
                trained: None,
                sent_input: false,
            },
            SecAggUp::Keys(advert),
        ))
    }

    /// The round this session belongs to.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// The global model the station trains from, when it arrives after the
    /// setup.
    pub fn set_global(&mut self, global: Arc<Params>) {
        self.global = Some(global);
    }

    /// A later message from the server; returns the answer, if one is due
    /// now (the masked input waits for the training result).
    pub fn on_message(&mut self, msg: SecAggDown) -> Result<Option<SecAggUp>, SecAggError> {
        match msg {
            SecAggDown::Setup { .. } => Err(SecAggError::Stage {
                what: "a second setup",
                stage: "running",
            }),
            SecAggDown::Roster(roster) => {
                Ok(Some(SecAggUp::Shares(self.session.share_keys(&roster)?)))
            }
            SecAggDown::Shares(inbox) => {
                self.inbox = Some(inbox);
                self.try_mask()
            }
            SecAggDown::Unmask(request) => {
                Ok(Some(SecAggUp::Unmask(self.session.unmask(&request)?)))
            }
        }
    }

    /// The station's training result; returns the masked input when the
    /// shares are already in.
    pub fn on_trained(&mut self, trained: FitRes) -> Result<Option<SecAggUp>, SecAggError> {
        self.trained = Some(trained);
        self.try_mask()
    }

    fn try_mask(&mut self) -> Result<Option<SecAggUp>, SecAggError> {
        if self.sent_input {
            return Ok(None);
        }
        let (Some(inbox), Some(trained), Some(global)) = (&self.inbox, &self.trained, &self.global)
        else {
            return Ok(None);
        };
        if trained.params.data().len() != global.data().len() {
            return Err(SecAggError::Update(format!(
                "the trained model has {} values, the global model {}",
                trained.params.data().len(),
                global.data().len()
            )));
        }
        let delta: Vec<f32> = trained
            .params
            .data()
            .iter()
            .zip(global.data())
            .map(|(t, g)| t - g)
            .collect();
        let input = self
            .session
            .masked_input(inbox, &delta, trained.num_examples)?;
        self.sent_input = true;
        Ok(Some(SecAggUp::Masked {
            input,
            num_examples: trained.num_examples,
            metrics: trained.metrics.clone(),
        }))
    }
}

/// `secure_aggregation` in config files: `true` / `false`, or a table of
/// [`SecAggConfig`] settings (which turns it on); see [`crate::switch`].
pub use crate::switch;

/// `msg` in the wire message of `round`.
fn to_wire<T: serde::Serialize>(msg: &T, round: u64) -> Result<SecAgg, WireError> {
    Ok(SecAgg {
        round,
        body: codec::encode_control(msg)?,
    })
}

/// The protocol message a wire frame carries (the frame's size was bounded
/// when it was read; the decoder bounds its allocations by it).
fn from_wire<T: serde::de::DeserializeOwned>(m: &SecAgg) -> Result<T, WireError> {
    codec::decode_control(&m.body, m.body.len())
}

impl SecAggDown {
    /// The wire message carrying it in `round`.
    pub fn to_wire(&self, round: u64) -> Result<SecAgg, WireError> {
        to_wire(self, round)
    }

    /// The message a wire frame carries.
    pub fn from_wire(m: &SecAgg) -> Result<Self, WireError> {
        from_wire(m)
    }

    /// Payload bytes of the message as the wire protocol would carry it
    /// (fields at their fixed sizes), for traffic accounting.
    pub fn wire_bytes(&self) -> u64 {
        let n = |x: usize| x as u64;
        match self {
            SecAggDown::Setup { .. } => 4 + 8 + 4 + 8 + 4 + 8 + 4 + 8 + 32 + 8,
            SecAggDown::Roster(r) => 8 + n(r.keys.len()) * (4 + 8 + 64),
            SecAggDown::Shares(s) => s.iter().map(|s| 16 + n(s.ciphertext.len())).sum(),
            SecAggDown::Unmask(u) => 8 + 4 * n(u.survivors.len() + u.dropped.len()),
        }
    }
}

impl SecAggUp {
    /// The wire message carrying it in `round`.
    pub fn to_wire(&self, round: u64) -> Result<SecAgg, WireError> {
        to_wire(self, round)
    }

    /// The message a wire frame carries.
    pub fn from_wire(m: &SecAgg) -> Result<Self, WireError> {
        from_wire(m)
    }

    /// Payload bytes of the message as the wire protocol would carry it.
    pub fn wire_bytes(&self) -> u64 {
        let n = |x: usize| x as u64;
        match self {
            SecAggUp::Keys(_) => 4 + 8 + 64,
            SecAggUp::Shares(b) => {
                4 + 8
                    + 32
                    + b.shares
                        .iter()
                        .map(|s| 16 + n(s.ciphertext.len()))
                        .sum::<u64>()
            }
            SecAggUp::Masked { input, metrics, .. } => {
                4 + 8 + 4 * n(input.values.len()) + 8 + 24 * n(metrics.len())
            }
            SecAggUp::Unmask(r) => {
                12 + r
                    .seed_shares
                    .iter()
                    .chain(&r.key_shares)
                    .map(|(_, s)| 4 + n(s.len()))
                    .sum::<u64>()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Action, Engine, EngineConfig, Event, UpdateProof};
    use crate::strategy::{Aggregated, FedAvg, Strategy, StrategyConfig};
    use crate::validate::FailureKind;
    use fedcrime_params::ParamSpec;
    use std::sync::Mutex;

    fn id(i: usize) -> StationId {
        StationId::new(format!("station-{i:02}")).unwrap()
    }

    /// FedAvg that records what reaches the aggregation step.
    struct Recording {
        inner: FedAvg,
        seen: Arc<Mutex<Vec<Vec<FitRes>>>>,
    }

    impl Strategy for Recording {
        fn name(&self) -> &str {
            "recording-fedavg"
        }
        fn mean_suffices(&self) -> bool {
            true
        }
        fn aggregate_fit(
            &mut self,
            round: u64,
            global: &Params,
            results: &[FitRes],
        ) -> crate::Result<Aggregated> {
            self.seen.lock().unwrap().push(results.to_vec());
            self.inner.aggregate_fit(round, global, results)
        }
    }

    /// Station `i`'s trained model: the global plus a station-specific step.
    fn trained(i: usize, global: &Params) -> FitRes {
        let mut p = global.clone();
        for (j, v) in p.data_mut().iter_mut().enumerate() {
            *v += 0.01 * ((i * 7 + j * 3) % 13) as f32 - 0.06;
        }
        FitRes {
            params: Arc::new(p),
            num_examples: 100 + 37 * i as u64,
            metrics: crate::strategy::Metrics::from([("loss".to_string(), i as f64)]),
        }
    }

    /// Runs one secure round with `n` stations; `drop(i, stage)` says
    /// whether station `i` vanishes before answering `stage` (0 keys,
    /// 1 shares, 2 masked input, 3 unmask). Returns the engine and the
    /// plaintext FedAvg of the stations whose input should be in the sum.
    fn run(
        n: usize,
        drop: impl Fn(usize, u8) -> bool,
        seen: Arc<Mutex<Vec<Vec<FitRes>>>>,
    ) -> (Engine, Option<Vec<f32>>) {
        run_signed(n, drop, seen, None)
    }

    /// [`run`], where station `bad_signature`'s masked input arrives with
    /// a signature the driver found wrong.
    fn run_signed(
        n: usize,
        drop: impl Fn(usize, u8) -> bool,
        seen: Arc<Mutex<Vec<Vec<FitRes>>>>,
        bad_signature: Option<usize>,
    ) -> (Engine, Option<Vec<f32>>) {
        let spec = Arc::new(ParamSpec::new([("w", vec![40])]).unwrap());
        let config = EngineConfig {
            rounds: 1,
            min_stations: n,
            min_fit: 3,
            min_updates: 3,
            eval_every: 0,
            secure_aggregation: Some(SecAggConfig::default()),
            audit: bad_signature.is_some(),
            ..EngineConfig::default()
        };
        let strategy = Box::new(Recording {
            inner: FedAvg::new(),
            seen,
        });
        let t0 = Instant::now();
        let mut engine = Engine::new(config, strategy, Params::zeros(spec), t0).unwrap();
        for i in 0..n {
            engine.handle(t0, Event::StationConnected { id: id(i) });
        }
        let global = engine.global().clone();
        let mut stations: BTreeMap<StationId, SecureStation> = BTreeMap::new();
        let mut index: BTreeMap<StationId, usize> = BTreeMap::new();
        let mut contributed = Vec::new();
        let mut now = t0;
        let mut gone = BTreeSet::new();
        loop {
            let mut events = Vec::new();
            while let Some(a) = engine.poll_action() {
                match a {
                    Action::SendFit { .. } => {}
                    Action::SendSecAgg {
                        station,
                        round,
                        msg,
                    } => {
                        let i = station.as_str()[8..].parse::<usize>().unwrap();
                        index.insert(station.clone(), i);
                        let stage = match &msg {
                            SecAggDown::Setup { .. } => 0,
                            SecAggDown::Roster(_) => 1,
                            SecAggDown::Shares(_) => 2,
                            SecAggDown::Unmask(_) => 3,
                        };
                        if gone.contains(&i) || drop(i, stage) {
                            if gone.insert(i) {
                                events.push(Event::StationDisconnected { id: station });
                            }
                            continue;
                        }
                        let up = match msg {
                            SecAggDown::Setup { setup, slot } => {
                                let (mut s, keys) =
                                    SecureStation::start(setup, slot, Some(global.clone()))
                                        .unwrap();
                                // Trains at once; the input waits for the shares.
                                assert_eq!(s.on_trained(trained(i, &global)).unwrap(), None);
                                stations.insert(station.clone(), s);
                                Some(keys)
                            }
                            other => stations
                                .get_mut(&station)
                                .unwrap()
                                .on_message(other)
                                .unwrap(),
                        };
                        if let Some(msg) = up {
                            let masked = matches!(msg, SecAggUp::Masked { .. });
                            let bad = masked && bad_signature == Some(i);
                            if masked && !bad {
                                contributed.push(i);
                            }
                            let proof = (masked && bad_signature.is_some()).then(|| UpdateProof {
                                sha256: "ab".repeat(32),
                                signature: Some("cd".repeat(64)),
                                problem: bad.then(|| "signed by another station's key".into()),
                            });
                            events.push(Event::SecAggReceived {
                                id: station,
                                round,
                                msg,
                                proof,
                            });
                        }
                    }
                    Action::Finished(_) => {
                        // The plaintext FedAvg of the contributors.
                        let total: u64 = contributed
                            .iter()
                            .map(|&i| trained(i, &global).num_examples)
                            .sum();
                        let mut mean = vec![0.0f64; global.data().len()];
                        for &i in &contributed {
                            let t = trained(i, &global);
                            let w = t.num_examples as f64 / total as f64;
                            for (m, v) in mean.iter_mut().zip(t.params.data()) {
                                *m += w * f64::from(*v);
                            }
                        }
                        let want = (!contributed.is_empty())
                            .then(|| mean.iter().map(|&m| m as f32).collect());
                        return (engine, want);
                    }
                    _ => {}
                }
            }
            if events.is_empty() {
                if engine.poll_timeout().is_none() {
                    // Waiting for stations that will not come back.
                    return (engine, None);
                }
                now += Duration::from_secs(31);
                engine.handle_timeout(now);
            }
            for e in events {
                engine.handle(now, e);
            }
        }
    }

    #[test]
    fn a_badly_signed_masked_input_is_refused_and_recovered_like_a_dropout() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut engine, want) = run_signed(5, |_, _| false, seen, Some(3));
        let want = want.unwrap();
        for (g, w) in engine.global().data().iter().zip(&want) {
            assert!((g - w).abs() < 5.0 * 2.0 / 65535.0 / 0.5, "{g} vs {w}");
        }
        // Station 3 is left out of the sum (its masks recovered from the
        // others' shares) and counted as a bad signature.
        let r = &engine.history()[0];
        assert_eq!(r.completed.len(), 4);
        assert!(!r.completed.contains(&id(3)));
        assert_eq!(r.failed.get(&FailureKind::BadSignature), Some(&1));
        assert!(engine.poll_action().is_none());
    }

    #[test]
    fn a_secure_round_gives_fedavg_and_the_strategy_sees_only_the_mean() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (engine, want) = run(5, |_, _| false, seen.clone());
        let want = want.unwrap();
        let got = engine.global().data();
        for (g, w) in got.iter().zip(&want) {
            // 16-bit quantization over ±1 with weights up to 1: 5 steps of
            // 2/65535 on a weighted sum, divided by the weights' sum (> 0.5).
            assert!((g - w).abs() < 5.0 * 2.0 / 65535.0 / 0.5, "{g} vs {w}");
        }
        let r = &engine.history()[0];
        assert_eq!(r.completed.len(), 5);
        assert_eq!(
            r.num_examples,
            (0..5).map(|i| 100 + 37 * i as u64).sum::<u64>()
        );
        // The aggregation step received one result, the mean, never a
        // station's update.
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].len(), 1);
        let global0 = Params::zeros(seen[0][0].params.spec().clone());
        for i in 0..5 {
            assert_ne!(seen[0][0].params.data(), trained(i, &global0).params.data());
        }
    }

    #[test]
    fn secure_rounds_recover_from_dropouts_at_every_stage() {
        // 9 stations, complete graph: 8 neighbours, threshold 5, 3 may drop.
        for stage in 0..4u8 {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (engine, want) = run(9, |i, s| s == stage && (i == 2 || i == 6), seen);
            let r = &engine.history()[0];
            assert!(r.aggregated, "stage {stage}: {:?}", r.note);
            let want = want.unwrap();
            for (g, w) in engine.global().data().iter().zip(&want) {
                assert!((g - w).abs() < 1e-3, "stage {stage}: {g} vs {w}");
            }
            // A drop before the masked input leaves the station out of the sum.
            let expected = if stage == 3 { 9 } else { 7 };
            assert_eq!(r.completed.len(), expected, "stage {stage}");
        }
    }

    #[test]
    fn too_many_dropouts_end_the_attempt_without_a_model() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (engine, _) = run(9, |i, s| s == 1 && i < 4, seen.clone());
        assert!(seen.lock().unwrap().is_empty());
        assert!(engine.history().iter().all(|r| !r.aggregated));
    }

    #[test]
    fn strategies_that_need_each_update_are_refused() {
        let spec = Arc::new(ParamSpec::new([("w", vec![4])]).unwrap());
        let config = EngineConfig {
            min_stations: 3,
            min_fit: 3,
            min_updates: 3,
            secure_aggregation: Some(SecAggConfig::default()),
            ..EngineConfig::default()
        };
        let median: StrategyConfig = "fedmedian".parse().unwrap();
        let err = Engine::new(
            config.clone(),
            median.build().unwrap(),
            Params::zeros(spec.clone()),
            Instant::now(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("secure_aggregation") && err.contains("sum"),
            "{err}"
        );
        let two = EngineConfig {
            min_fit: 2,
            min_updates: 2,
            ..config.clone()
        };
        assert!(two
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at least 3"));
        // The norm bound moves to the stations (the setup carries it).
        let norm = EngineConfig {
            max_update_norm: Some(1.0),
            ..config
        };
        norm.validate().unwrap();
    }

    #[test]
    fn the_setting_is_a_switch_or_a_table() {
        let on: EngineConfig = toml::from_str("secure_aggregation = true").unwrap();
        assert_eq!(on.secure_aggregation, Some(SecAggConfig::default()));
        let off: EngineConfig = toml::from_str("secure_aggregation = false").unwrap();
        assert_eq!(off.secure_aggregation, None);
        let table: EngineConfig = toml::from_str(
            "[secure_aggregation]\ndropout_tolerance = 0.25\nquantization_bits = 20\n\
             mask_prg = \"chacha20\"",
        )
        .unwrap();
        let c = table.secure_aggregation.unwrap();
        assert_eq!((c.dropout_tolerance, c.quantization_bits), (0.25, 20));
        assert_eq!(c.mask_prg, fedcrime_secagg::MaskPrg::Chacha20);
        assert_eq!(
            SecAggConfig::default().mask_prg,
            fedcrime_secagg::MaskPrg::Aes128Ctr
        );
        let prg =
            toml::from_str::<EngineConfig>("[secure_aggregation]\nmask_prg = \"aes\"").unwrap_err();
        assert!(prg.to_string().contains("aes128-ctr"), "{prg}");
        let typo = toml::from_str::<EngineConfig>("[secure_aggregation]\nclip = 2.0").unwrap_err();
        assert!(typo.to_string().contains("clip"), "{typo}");
        // Round trip through the written config.
        let text = toml::to_string(&table_config()).unwrap();
        assert_eq!(
            toml::from_str::<EngineConfig>(&text).unwrap(),
            table_config()
        );
    }

    fn table_config() -> EngineConfig {
        EngineConfig {
            secure_aggregation: Some(SecAggConfig {
                clip_range: 0.5,
                ..SecAggConfig::default()
            }),
            ..EngineConfig::default()
        }
    }
}
