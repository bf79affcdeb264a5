//! Model selection for federated runs: early stopping on a validation score
//! with patience, and the best round's global model kept.
//!
//! After every evaluation round the engine reads one score of the global
//! model ([`score_of`]): the server-side evaluation when the strategy has one
//! (the server holds a validation split), else the federated evaluation (the
//! stations score the global model on their own validation splits). A round
//! *improves* when its score beats the best so far by more than
//! [`EarlyStopping::min_delta`]; the run stops after
//! [`EarlyStopping::patience`] evaluation rounds in a row without
//! improvement, and [`Engine::best`](crate::Engine::best) is the global model
//! of the best round (restore-best). The rule is the one the centralized
//! trainer applies per epoch, so both sides of a comparison stop alike.
//!
//! The state is a pure function of the round history, so a resumed run
//! rebuilds it from its checkpoint ([`Plateau::from_history`]).

use serde::{Deserialize, Serialize};

use crate::metrics::RoundMetrics;

/// Whether lower or higher scores are better.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Lower is better (a loss, an error).
    #[default]
    Min,
    /// Higher is better (accuracy, F1).
    Max,
}

/// The `loss` monitor: the evaluation's loss rather than one of its metrics.
pub const LOSS_MONITOR: &str = "loss";

/// When to stop a run whose validation score no longer improves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EarlyStopping {
    /// The score watched: `loss`, or a metric name of the evaluation
    /// (`macro_f1`, `mae`, ...). Default `loss`.
    pub monitor: String,
    /// Whether the score is minimized or maximized (default `min`).
    pub goal: Goal,
    /// Evaluation rounds in a row without improvement before the run stops
    /// (default 10; at least 1).
    pub patience: u64,
    /// The smallest change that counts as an improvement (default 0).
    pub min_delta: f64,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping {
            monitor: LOSS_MONITOR.into(),
            goal: Goal::Min,
            patience: 10,
            min_delta: 0.0,
        }
    }
}

impl EarlyStopping {
    /// Checks the settings, naming the bad one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.patience == 0 {
            return Err(("early_stopping.patience", "must be at least 1".into()));
        }
        if !(self.min_delta.is_finite() && self.min_delta >= 0.0) {
            return Err((
                "early_stopping.min_delta",
                format!("must be a non-negative number, got {}", self.min_delta),
            ));
        }
        if self.monitor.is_empty() {
            return Err(("early_stopping.monitor", "must name a score".into()));
        }
        Ok(())
    }

    /// Whether `score` beats `best` by more than the minimum change.
    pub fn improves(&self, score: f64, best: f64) -> bool {
        match self.goal {
            Goal::Min => score < best - self.min_delta,
            Goal::Max => score > best + self.min_delta,
        }
    }
}

/// The monitored score of a finished round: the server-side evaluation's
/// when there is one, else the federated evaluation's; `None` when the round
/// was not evaluated or the score is missing or not finite.
pub fn score_of(m: &RoundMetrics, monitor: &str) -> Option<f64> {
    let pick = |loss: Option<f64>, metrics: &crate::Metrics| {
        if monitor == LOSS_MONITOR {
            loss
        } else {
            metrics.get(monitor).copied()
        }
    };
    let server = pick(m.server_eval_loss, &m.server_eval_metrics);
    let federated = pick(m.eval_loss, &m.eval_metrics);
    server.or(federated).filter(|v| v.is_finite())
}

/// The best round so far.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestRound {
    /// The round.
    pub round: u64,
    /// Its monitored score.
    pub score: f64,
}

/// What one evaluated round means for the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A new best round.
    Improved,
    /// No improvement; the run goes on.
    Waiting,
    /// No improvement for `patience` evaluated rounds: stop.
    Stop,
    /// The round carries no score (not evaluated): nothing changes.
    Unscored,
}

/// Early-stopping state: the best round and the evaluated rounds since.
#[derive(Clone, Debug, PartialEq)]
pub struct Plateau {
    rule: EarlyStopping,
    best: Option<BestRound>,
    since_best: u64,
}

impl Plateau {
    /// A fresh state.
    pub fn new(rule: EarlyStopping) -> Self {
        Plateau {
            rule,
            best: None,
            since_best: 0,
        }
    }

    /// The state after `history`, as a resumed run rebuilds it.
    pub fn from_history(rule: EarlyStopping, history: &[RoundMetrics]) -> Self {
        let mut p = Plateau::new(rule);
        for m in history {
            p.observe(m);
        }
        p
    }

    /// The rule.
    pub fn rule(&self) -> &EarlyStopping {
        &self.rule
    }

    /// The best round so far.
    pub fn best(&self) -> Option<BestRound> {
        self.best
    }

    /// Evaluated rounds since the best one.
    pub fn since_best(&self) -> u64 {
        self.since_best
    }

    /// Records a finished round.
    pub fn observe(&mut self, m: &RoundMetrics) -> Verdict {
        let Some(score) = score_of(m, &self.rule.monitor) else {
            return Verdict::Unscored;
        };
        let improved = self.best.is_none_or(|b| self.rule.improves(score, b.score));
        if improved {
            self.best = Some(BestRound {
                round: m.round,
                score,
            });
            self.since_best = 0;
            Verdict::Improved
        } else {
            self.since_best += 1;
            if self.since_best >= self.rule.patience {
                Verdict::Stop
            } else {
                Verdict::Waiting
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(r: u64, server: Option<f64>, federated: Option<f64>) -> RoundMetrics {
        let mut m = RoundMetrics::new(r);
        if let Some(v) = server {
            m.server_eval_metrics.insert("macro_f1".into(), v);
            m.server_eval_loss = Some(1.0 - v);
        }
        if let Some(v) = federated {
            m.eval_metrics.insert("macro_f1".into(), v);
            m.eval_loss = Some(1.0 - v);
        }
        m
    }

    fn rule(patience: u64, min_delta: f64) -> EarlyStopping {
        EarlyStopping {
            monitor: "macro_f1".into(),
            goal: Goal::Max,
            patience,
            min_delta,
        }
    }

    #[test]
    fn stops_after_patience_rounds_without_improvement_and_keeps_the_best() {
        let mut p = Plateau::new(rule(2, 0.0));
        let verdicts: Vec<Verdict> = [0.2, 0.3, 0.29, 0.31, 0.30, 0.31]
            .iter()
            .enumerate()
            .map(|(i, v)| p.observe(&round(i as u64 + 1, Some(*v), None)))
            .collect();
        use Verdict::*;
        assert_eq!(
            verdicts,
            [Improved, Improved, Waiting, Improved, Waiting, Stop]
        );
        assert_eq!(
            p.best(),
            Some(BestRound {
                round: 4,
                score: 0.31
            })
        );
    }

    #[test]
    fn min_delta_and_direction_decide_what_improves() {
        let mut p = Plateau::new(rule(5, 0.05));
        p.observe(&round(1, Some(0.2), None));
        assert_eq!(p.observe(&round(2, Some(0.24), None)), Verdict::Waiting);
        assert_eq!(p.observe(&round(3, Some(0.26), None)), Verdict::Improved);
        let mut loss = Plateau::new(EarlyStopping::default());
        loss.observe(&round(1, Some(0.2), None));
        // loss = 1 - f1: a higher F1 is a lower loss.
        assert_eq!(loss.observe(&round(2, Some(0.3), None)), Verdict::Improved);
        assert_eq!(loss.observe(&round(3, Some(0.1), None)), Verdict::Waiting);
    }

    #[test]
    fn server_evaluation_wins_over_federated_and_unscored_rounds_do_not_count() {
        assert_eq!(
            score_of(&round(1, Some(0.4), Some(0.1)), "macro_f1"),
            Some(0.4)
        );
        assert_eq!(score_of(&round(1, None, Some(0.1)), "macro_f1"), Some(0.1));
        assert_eq!(score_of(&round(1, None, None), "macro_f1"), None);
        assert_eq!(score_of(&round(1, Some(f64::NAN), None), "macro_f1"), None);
        let mut p = Plateau::new(rule(1, 0.0));
        p.observe(&round(1, Some(0.5), None));
        assert_eq!(p.observe(&round(2, None, None)), Verdict::Unscored);
        assert_eq!(p.since_best(), 0);
        assert_eq!(p.observe(&round(3, Some(0.4), None)), Verdict::Stop);
    }

    #[test]
    fn a_resumed_run_rebuilds_the_same_state() {
        let history: Vec<RoundMetrics> = [0.1, 0.3, 0.2]
            .iter()
            .enumerate()
            .map(|(i, v)| round(i as u64 + 1, Some(*v), None))
            .collect();
        let mut live = Plateau::new(rule(3, 0.0));
        for m in &history {
            live.observe(m);
        }
        assert_eq!(Plateau::from_history(rule(3, 0.0), &history), live);
        assert_eq!(live.since_best(), 1);
    }

    #[test]
    fn bad_settings_are_named() {
        assert_eq!(
            rule(0, 0.0).validate().unwrap_err().0,
            "early_stopping.patience"
        );
        assert_eq!(
            rule(1, f64::NAN).validate().unwrap_err().0,
            "early_stopping.min_delta"
        );
        assert!(rule(1, 0.0).validate().is_ok());
    }
}
