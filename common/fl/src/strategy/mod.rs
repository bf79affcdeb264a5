//! Aggregation strategies, in the spirit of Flower's `Strategy`.
//!
//! A strategy decides what stations are told each round
//! ([`Strategy::configure_fit`], [`Strategy::configure_evaluate`]), turns
//! their validated replies into the next global model
//! ([`Strategy::aggregate_fit`]) and summarizes evaluations
//! ([`Strategy::aggregate_evaluate`], [`Strategy::evaluate`] on the server).
//! Which stations take part is the round engine's job, not the strategy's.
//! Stateful strategies (server momentum, adaptive optimizers) expose their
//! state for checkpoints ([`Strategy::state`], [`Strategy::restore`]).
//!
//! Built in: [`FedAvg`], [`FedAvgSparse`], [`FedProx`], [`FedAvgM`],
//! [`FedOpt`] (FedAdam, FedYogi, FedAdagrad), [`FedMedian`],
//! [`FedTrimmedAvg`], [`Krum`] (with Multi-Krum) and [`QFedAvg`] (fair
//! allocation: stations where the global model does badly weigh more; it
//! needs stations to report [`GLOBAL_LOSS_KEY`]); [`StrategyConfig`] names
//! them in config files and on the command line. The loops they share live
//! in [`kernels`].

mod config;
mod fedavg;
mod fedopt;
pub mod kernels;
mod qfedavg;
mod robust;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use config::StrategyConfig;
pub use fedavg::{FedAvg, FedAvgM, FedAvgSparse, FedProx};
pub use fedopt::{FedOpt, FedOptKind};
pub use qfedavg::{QFedAvg, MIN_GLOBAL_LOSS};
pub use robust::{FedMedian, FedTrimmedAvg, Krum};

use super::error::{FlError, Result};
use fedcrime_params::Params;
use fedcrime_wire::{RoundSettings, Scalar};

/// Named numbers: the metrics stations report and rounds summarize.
pub type Metrics = BTreeMap<String, f64>;

/// The fit metric holding a station's training loss.
pub const LOSS_KEY: &str = "loss";

/// The fit metric holding a station's mean training loss of the global
/// model it received, before its local training (the `F_k` of
/// [`QFedAvg`]). Stations report it when the round's settings ask for it
/// ([`REPORT_GLOBAL_LOSS_EXTENSION`], see [`global_loss_requested`]).
pub const GLOBAL_LOSS_KEY: &str = "global_loss";

/// The [`RoundSettings::extensions`] key (value `Scalar::Bool(true)`) by
/// which a strategy ([`QFedAvg`]) asks stations to report
/// [`GLOBAL_LOSS_KEY`]. An extension, not a field: stations that do not
/// know it train as before (and their updates then lack the metric).
pub const REPORT_GLOBAL_LOSS_EXTENSION: &str = "report_global_loss";

/// Whether `settings` ask stations to report [`GLOBAL_LOSS_KEY`]
/// ([`REPORT_GLOBAL_LOSS_EXTENSION`] set to `Scalar::Bool(true)`).
pub fn global_loss_requested(settings: &RoundSettings) -> bool {
    matches!(
        settings.extensions.get(REPORT_GLOBAL_LOSS_EXTENSION),
        Some(Scalar::Bool(true))
    )
}

/// One setting sent to stations with a round (epochs, learning rate, mu, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// A flag.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A real number.
    Float(f64),
    /// Text.
    Str(String),
}

impl ConfigValue {
    /// The value as a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ConfigValue::Int(i) => Some(*i as f64),
            ConfigValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The value as an integer, when it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            ConfigValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// The settings sent with a round, by name.
pub type Config = BTreeMap<String, ConfigValue>;

/// What a station receives to train: the global model, the round and how
/// to train.
///
/// Shared: every station of a round points at the same buffers.
#[derive(Clone, Debug)]
pub struct FitIns {
    /// The current global model.
    pub global: Arc<Params>,
    /// The round (from 1).
    pub round: u64,
    /// How to train this round.
    pub settings: Arc<RoundSettings>,
}

/// What a station sends back after training.
#[derive(Clone, Debug, PartialEq)]
pub struct FitRes {
    /// The station's locally trained parameters (not a difference). Shared:
    /// a learner that does not train (`Echo`) hands back the global it got
    /// without copying it; whoever changes the values in place uses
    /// [`Arc::make_mut`], which copies only a shared buffer.
    pub params: Arc<Params>,
    /// Training examples used (the FedAvg weight); must be positive.
    pub num_examples: u64,
    /// Training metrics; [`LOSS_KEY`] is the training loss,
    /// [`GLOBAL_LOSS_KEY`] (when asked for) the received model's loss.
    pub metrics: Metrics,
}

/// What a station receives to evaluate the global model on its validation data.
#[derive(Clone, Debug)]
pub struct EvaluateIns {
    /// The model to evaluate.
    pub global: Arc<Params>,
    /// The evaluation settings (always includes `server_round`).
    pub config: Arc<Config>,
}

/// A station's evaluation of the global model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluateRes {
    /// The loss on the station's validation split.
    pub loss: f64,
    /// Examples evaluated (the averaging weight).
    pub num_examples: u64,
    /// Task metrics (accuracy, MAE, ...).
    pub metrics: Metrics,
}

/// The outcome of [`Strategy::aggregate_fit`].
#[derive(Clone, Debug, Default)]
pub struct Aggregated {
    /// The new global model, or `None` to keep the old one.
    pub params: Option<Params>,
    /// What the strategy wants recorded (e.g. how many updates Krum kept).
    pub metrics: Metrics,
}

/// A summary of evaluations: federated ([`Strategy::aggregate_evaluate`]) or
/// on the server ([`Strategy::evaluate`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// The (example-weighted) loss, when there is one.
    pub loss: Option<f64>,
    /// The (example-weighted) metrics.
    pub metrics: Metrics,
    /// Examples behind the summary.
    pub num_examples: u64,
}

/// A strategy's state between rounds, for checkpoints.
///
/// Parameter-sized buffers (momentum, second moments) travel as [`Params`]
/// in the global model's layout; everything else as JSON.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StrategyState {
    /// The strategy's name ([`Strategy::name`]), checked on restore.
    pub strategy: String,
    /// Scalars and flags.
    pub json: serde_json::Value,
    /// Named parameter-sized buffers.
    pub buffers: BTreeMap<String, Params>,
}

impl StrategyState {
    /// The state of a strategy that keeps none.
    pub(crate) fn stateless(strategy: &str) -> Self {
        StrategyState {
            strategy: strategy.to_string(),
            json: serde_json::Value::Null,
            buffers: BTreeMap::new(),
        }
    }

    /// Fails unless the state was saved by a strategy called `name`.
    pub(crate) fn expect_strategy(&self, name: &str) -> Result<()> {
        if self.strategy == name {
            Ok(())
        } else {
            Err(FlError::StrategyState {
                strategy: name.to_string(),
                message: format!("the checkpoint was written by {:?}", self.strategy),
            })
        }
    }
}

/// A server-side aggregation strategy.
///
/// The engine calls, per round: [`configure_fit`](Strategy::configure_fit),
/// then [`aggregate_fit`](Strategy::aggregate_fit) with the validated
/// updates, then (on evaluation rounds) [`evaluate`](Strategy::evaluate),
/// [`configure_evaluate`](Strategy::configure_evaluate) and
/// [`aggregate_evaluate`](Strategy::aggregate_evaluate).
pub trait Strategy: Send {
    /// A short name (`fedavg`, `krum`, ...), stored in checkpoints.
    fn name(&self) -> &str;

    /// How stations train this round; `base` holds the operator's settings
    /// and the run's seed. Default: `base` unchanged.
    fn configure_fit(&mut self, round: u64, base: &RoundSettings) -> RoundSettings {
        let _ = round;
        base.clone()
    }

    /// Whether [`aggregate_fit`](Strategy::aggregate_fit) depends on the
    /// updates only through their example-weighted mean (FedAvg, FedProx,
    /// FedAvgM, FedOpt). The engine then sums updates as they arrive and calls
    /// `aggregate_fit` once with a single result: that mean, the total
    /// example count and the weighted metrics; it holds no update in the
    /// meantime. Default: `false` (every update is kept until the round closes).
    fn mean_suffices(&self) -> bool {
        false
    }

    /// Combines validated updates (at least one) into the next global model.
    fn aggregate_fit(
        &mut self,
        round: u64,
        global: &Params,
        results: &[FitRes],
    ) -> Result<Aggregated>;

    /// The settings stations evaluate with, or `None` to skip federated
    /// evaluation this round. Default: `base` unchanged.
    fn configure_evaluate(&mut self, round: u64, base: &Config) -> Option<Config> {
        let _ = round;
        Some(base.clone())
    }

    /// Summarizes station evaluations. Default: example-weighted loss and metrics.
    fn aggregate_evaluate(&mut self, round: u64, results: &[EvaluateRes]) -> EvalSummary {
        let _ = round;
        weighted_eval_summary(results)
    }

    /// Evaluates the global model on the server (held-out data), if it can.
    /// Default: no server-side evaluation.
    fn evaluate(&mut self, round: u64, global: &Params) -> Option<EvalSummary> {
        let _ = (round, global);
        None
    }

    /// The state to checkpoint. Default: none.
    fn state(&self) -> StrategyState {
        StrategyState::stateless(self.name())
    }

    /// Restores a checkpointed state. Default: checks the name only.
    fn restore(&mut self, state: StrategyState) -> Result<()> {
        state.expect_strategy(self.name())
    }
}

/// Example-weighted average of each metric over the entries that report it.
pub(crate) fn weighted_metrics<'a, I>(entries: I) -> Metrics
where
    I: IntoIterator<Item = (u64, &'a Metrics)>,
{
    let mut sums: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (n, metrics) in entries {
        let w = n as f64;
        for (k, v) in metrics {
            if v.is_finite() {
                let e = sums.entry(k.as_str()).or_insert((0.0, 0.0));
                e.0 += w * v;
                e.1 += w;
            }
        }
    }
    sums.into_iter()
        .filter(|(_, (_, w))| *w > 0.0)
        .map(|(k, (s, w))| (k.to_string(), s / w))
        .collect()
}

/// The default evaluation summary: example-weighted loss and metrics.
pub(crate) fn weighted_eval_summary(results: &[EvaluateRes]) -> EvalSummary {
    let num_examples: u64 = results.iter().map(|r| r.num_examples).sum();
    let (sum, weight) =
        results
            .iter()
            .filter(|r| r.loss.is_finite())
            .fold((0.0, 0.0), |(s, w), r| {
                (
                    s + r.loss * r.num_examples as f64,
                    w + r.num_examples as f64,
                )
            });
    EvalSummary {
        loss: (weight > 0.0).then(|| sum / weight),
        metrics: weighted_metrics(results.iter().map(|r| (r.num_examples, &r.metrics))),
        num_examples,
    }
}

/// The example-weighted mean of the updates' parameters (the FedAvg step),
/// in the layout of `global`.
pub fn weighted_average(strategy: &str, global: &Params, results: &[FitRes]) -> Result<Params> {
    let inputs: Vec<&[f32]> = results.iter().map(|r| r.params.data()).collect();
    let weights: Vec<f64> = results.iter().map(|r| r.num_examples as f64).collect();
    let mut out = Params::zeros(global.spec().clone());
    kernels::weighted_mean(&inputs, &weights, out.data_mut()).map_err(|e| {
        FlError::Aggregation {
            strategy: strategy.to_string(),
            message: e.to_string(),
        }
    })?;
    Ok(out)
}

/// Wraps a strategy and adds server-side evaluation with `evaluate`
/// (a model and a held-out set the caller owns), like Flower's `evaluate_fn`.
pub struct WithServerEval<F> {
    inner: Box<dyn Strategy>,
    evaluate: F,
}

impl<F> WithServerEval<F>
where
    F: FnMut(u64, &Params) -> Option<EvalSummary> + Send,
{
    /// `evaluate(round, global)` runs after each evaluation round's aggregation.
    pub fn new(inner: Box<dyn Strategy>, evaluate: F) -> Self {
        WithServerEval { inner, evaluate }
    }
}

impl<F> Strategy for WithServerEval<F>
where
    F: FnMut(u64, &Params) -> Option<EvalSummary> + Send,
{
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn configure_fit(&mut self, round: u64, base: &RoundSettings) -> RoundSettings {
        self.inner.configure_fit(round, base)
    }
    fn mean_suffices(&self) -> bool {
        self.inner.mean_suffices()
    }
    fn aggregate_fit(
        &mut self,
        round: u64,
        global: &Params,
        results: &[FitRes],
    ) -> Result<Aggregated> {
        self.inner.aggregate_fit(round, global, results)
    }
    fn configure_evaluate(&mut self, round: u64, base: &Config) -> Option<Config> {
        self.inner.configure_evaluate(round, base)
    }
    fn aggregate_evaluate(&mut self, round: u64, results: &[EvaluateRes]) -> EvalSummary {
        self.inner.aggregate_evaluate(round, results)
    }
    fn evaluate(&mut self, round: u64, global: &Params) -> Option<EvalSummary> {
        (self.evaluate)(round, global)
    }
    fn state(&self) -> StrategyState {
        self.inner.state()
    }
    fn restore(&mut self, state: StrategyState) -> Result<()> {
        self.inner.restore(state)
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use fedcrime_params::ParamSpec;

    /// A two-tensor layout with `n` values: `w` of shape `[n - 1]` and `b` of shape `[1]`.
    pub fn spec(n: usize) -> Arc<ParamSpec> {
        Arc::new(ParamSpec::new([("w", vec![n - 1]), ("b", vec![1])]).unwrap())
    }

    pub fn params(values: &[f32]) -> Params {
        Params::new(spec(values.len()), values.to_vec()).unwrap()
    }

    pub fn res(values: &[f32], n: u64) -> FitRes {
        FitRes {
            params: Arc::new(params(values)),
            num_examples: n,
            metrics: Metrics::new(),
        }
    }

    pub fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn metrics_are_weighted_by_examples_over_reporters() {
        let a = Metrics::from([("loss".into(), 1.0), ("acc".into(), 0.5)]);
        let b = Metrics::from([("loss".into(), 4.0)]);
        let m = weighted_metrics([(1, &a), (2, &b)]);
        assert_eq!(m["loss"], 3.0);
        assert_eq!(m["acc"], 0.5);
        let s = weighted_eval_summary(&[
            EvaluateRes {
                loss: 2.0,
                num_examples: 3,
                metrics: a.clone(),
            },
            EvaluateRes {
                loss: 6.0,
                num_examples: 1,
                metrics: Metrics::new(),
            },
        ]);
        assert_eq!(s.loss, Some(3.0));
        assert_eq!(s.num_examples, 4);
        assert_eq!(weighted_eval_summary(&[]).loss, None);
    }

    #[test]
    fn server_eval_wrapper_delegates_and_evaluates() {
        let mut s = WithServerEval::new(Box::new(FedAvg::new()), |round, p: &Params| {
            Some(EvalSummary {
                loss: Some(round as f64 + f64::from(p.data()[0])),
                ..EvalSummary::default()
            })
        });
        assert_eq!(s.name(), "fedavg");
        let g = params(&[1.0, 2.0]);
        let out = s.aggregate_fit(1, &g, &[res(&[3.0, 4.0], 1)]).unwrap();
        assert_eq!(out.params.unwrap().data(), &[3.0, 4.0]);
        assert_eq!(s.evaluate(2, &g).unwrap().loss, Some(3.0));
    }
}
