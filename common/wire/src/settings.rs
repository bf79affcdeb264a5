//! [`RoundSettings`]: how stations train in one round, in one typed form from
//! the server's config to the station's trainer.
//!
//! The server's `[train]` section (or the simulator's study config) fills it;
//! the round engine hands it, adjusted by the strategy (FedProx sets
//! [`RoundSettings::proximal_mu`]), to every sampled station in its fit
//! instructions; the QUIC server sends it as is in
//! [`RoundStart`](crate::RoundStart); the station turns it into its trainer's
//! settings. No string keys, no second form: a field added here is carried
//! everywhere or fails to compile.

use serde::{Deserialize, Serialize};

use crate::message::{Extensions, Scalar};

/// How stations train in one round.
///
/// The defaults are a station's defaults: one local epoch, mini-batches of
/// 64, Adam at learning rate 1e-3, no weight decay, no clipping, no proximal
/// term, base seed 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundSettings {
    /// Local epochs (passes over the station's training split); at least 1.
    pub local_epochs: u32,
    /// Mini-batch size; at least 1.
    pub batch_size: u32,
    /// Adam's learning rate; positive.
    pub lr: f64,
    /// Adam's (L2) weight decay; non-negative.
    pub weight_decay: f64,
    /// Clip the gradients' global L2 norm to this value; `None`: no clipping.
    pub max_grad_norm: Option<f64>,
    /// FedProx's proximal coefficient `mu` (0: plain local training), set by
    /// the FedProx strategy.
    pub proximal_mu: f64,
    /// The run's base seed; a round trains with [`round_seed`] of it.
    pub seed: u64,
    /// Settings of custom strategies, by name (the built-in ones need none).
    pub extensions: Extensions,
}

impl Default for RoundSettings {
    fn default() -> Self {
        Self {
            local_epochs: 1,
            batch_size: 64,
            lr: 1e-3,
            weight_decay: 0.0,
            max_grad_norm: None,
            proximal_mu: 0.0,
            seed: 0,
            extensions: Extensions::new(),
        }
    }
}

/// The [`RoundSettings::extensions`] key of the least number of local
/// optimizer steps per round ([`RoundSettings::min_local_steps`]). An
/// extension, not a field: stations that do not know it train their
/// `local_epochs` as before.
pub const MIN_LOCAL_STEPS_EXTENSION: &str = "min_local_steps";

/// The least local optimizer steps per round a new user gets: a station
/// with few samples trains more epochs until it has taken this many steps
/// (an LAPD area's month, ~100 training samples in batches of 64, would
/// take 2 steps per epoch; with 20 it trains 10 epochs). Stations with at
/// least `20 x batch_size` samples train their one epoch as before.
pub const DEFAULT_MIN_LOCAL_STEPS: u32 = 20;

/// The local work per round from a configuration's two optional settings,
/// `(local_epochs, min_local_steps)`: neither set gives one epoch of at
/// least [`DEFAULT_MIN_LOCAL_STEPS`] steps; epochs set alone are exactly
/// that many epochs (no minimum); a minimum set is that minimum.
pub fn local_work(epochs: Option<u32>, min_steps: Option<u32>) -> (u32, u32) {
    match (epochs, min_steps) {
        (None, None) => (1, DEFAULT_MIN_LOCAL_STEPS),
        (Some(e), None) => (e, 0),
        (e, Some(m)) => (e.unwrap_or(1), m),
    }
}

/// A [`RoundSettings`] field out of range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("round setting {field}: {reason}")]
pub struct SettingsError {
    /// The field, as named in [`RoundSettings`] (and the `[train]` section).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl RoundSettings {
    /// The seed a station trains round `round` with: [`round_seed`] of
    /// [`seed`](Self::seed).
    pub fn seed_for_round(&self, round: u64) -> u64 {
        round_seed(self.seed, round)
    }

    /// The least optimizer steps a station takes in the round
    /// ([`MIN_LOCAL_STEPS_EXTENSION`]; 0, the default: exactly
    /// `local_epochs`).
    pub fn min_local_steps(&self) -> u32 {
        match self.extensions.get(MIN_LOCAL_STEPS_EXTENSION) {
            Some(Scalar::Int(n)) => u32::try_from(*n).unwrap_or(0),
            _ => 0,
        }
    }

    /// Sets the least local optimizer steps per round (0 removes it).
    pub fn set_min_local_steps(&mut self, steps: u32) {
        if steps == 0 {
            self.extensions.remove(MIN_LOCAL_STEPS_EXTENSION);
        } else {
            self.extensions.insert(
                MIN_LOCAL_STEPS_EXTENSION.to_owned(),
                Scalar::Int(steps.into()),
            );
        }
    }

    /// The epochs a station with `samples` training samples runs this round:
    /// `local_epochs`, or more when that many epochs take fewer than
    /// [`min_local_steps`](Self::min_local_steps) mini-batch steps.
    pub fn local_epochs_for(&self, samples: usize) -> u32 {
        let per_epoch = samples.div_ceil(self.batch_size.max(1) as usize).max(1);
        let needed = (self.min_local_steps() as usize).div_ceil(per_epoch);
        self.local_epochs
            .max(u32::try_from(needed).unwrap_or(u32::MAX))
    }

    /// Checks every field's range, naming the first bad one. Stations check
    /// what they receive; configs check what they send.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |field, reason: String| Err(SettingsError { field, reason });
        if self.local_epochs == 0 {
            return bad("local_epochs", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("must be a positive number, got {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                format!("must be a non-negative number, got {}", self.weight_decay),
            );
        }
        if let Some(c) = self.max_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad(
                    "max_grad_norm",
                    format!("must be a positive number, got {c}"),
                );
            }
        }
        match self.extensions.get(MIN_LOCAL_STEPS_EXTENSION) {
            None => {}
            Some(Scalar::Int(n)) if (0..=MAX_MIN_LOCAL_STEPS).contains(n) => {}
            Some(other) => {
                return bad(
                    "min_local_steps",
                    format!("must be an integer in 0..={MAX_MIN_LOCAL_STEPS}, got {other:?}"),
                )
            }
        }
        if !(self.proximal_mu.is_finite() && self.proximal_mu >= 0.0) {
            return bad(
                "proximal_mu",
                format!("must be a non-negative number, got {}", self.proximal_mu),
            );
        }
        Ok(())
    }
}

/// The largest minimum of local steps a station accepts (a bound on the work
/// a round may ask for).
const MAX_MIN_LOCAL_STEPS: i64 = 1_000_000;

/// The seed for round `round` of a run with base seed `seed`: different
/// every round, the same on every transport. The one place this formula
/// lives.
pub fn round_seed(seed: u64, round: u64) -> u64 {
    seed.wrapping_add(round.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        assert_eq!(RoundSettings::default().validate(), Ok(()));
        type Spoil = fn(&mut RoundSettings);
        let cases: [(&str, Spoil); 6] = [
            ("local_epochs", |s| s.local_epochs = 0),
            ("batch_size", |s| s.batch_size = 0),
            ("lr", |s| s.lr = f64::NAN),
            ("weight_decay", |s| s.weight_decay = -1.0),
            ("max_grad_norm", |s| s.max_grad_norm = Some(0.0)),
            ("proximal_mu", |s| s.proximal_mu = f64::INFINITY),
        ];
        for (field, spoil) in cases {
            let mut s = RoundSettings::default();
            spoil(&mut s);
            assert_eq!(s.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn small_stations_train_more_epochs_to_reach_the_minimum_of_steps() {
        let mut s = RoundSettings {
            local_epochs: 1,
            batch_size: 64,
            ..RoundSettings::default()
        };
        assert_eq!(
            s.local_epochs_for(100),
            1,
            "no minimum: exactly local_epochs"
        );
        s.set_min_local_steps(20);
        assert_eq!(s.min_local_steps(), 20);
        // 100 samples: 2 steps per epoch, 10 epochs for 20 steps.
        assert_eq!(s.local_epochs_for(100), 10);
        assert_eq!(s.local_epochs_for(64 * 7), 3);
        assert_eq!(s.local_epochs_for(64 * 20), 1);
        assert_eq!(s.local_epochs_for(1_000_000), 1);
        assert_eq!(s.local_epochs_for(0), 20);
        s.local_epochs = 5;
        assert_eq!(
            s.local_epochs_for(64 * 20),
            5,
            "never fewer than local_epochs"
        );
        assert_eq!(s.validate(), Ok(()));
        s.extensions
            .insert(MIN_LOCAL_STEPS_EXTENSION.into(), Scalar::Int(-1));
        assert_eq!(s.validate().unwrap_err().field, "min_local_steps");
        assert_eq!(s.min_local_steps(), 0);
        s.set_min_local_steps(0);
        assert!(s.extensions.is_empty());
        assert_eq!(local_work(None, None), (1, DEFAULT_MIN_LOCAL_STEPS));
        assert_eq!(local_work(Some(3), None), (3, 0));
        assert_eq!(local_work(None, Some(5)), (1, 5));
        assert_eq!(local_work(Some(2), Some(0)), (2, 0));
    }

    #[test]
    fn round_seeds_differ_per_round_and_wrap() {
        let s = RoundSettings {
            seed: 7,
            ..RoundSettings::default()
        };
        assert_eq!(s.seed_for_round(0), 7);
        assert_ne!(s.seed_for_round(1), s.seed_for_round(2));
        assert_eq!(round_seed(u64::MAX, 1), 0x9E37_79B9_7F4A_7C14);
    }
}
