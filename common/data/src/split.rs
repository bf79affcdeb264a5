//! Temporal train / validation / test splits without future leakage.
//!
//! Samples are split by their time index (see [`Dataset::time`]), never at
//! random: the training split holds the earliest sample times, validation the
//! next ones, test the latest. Every sample time of one split is strictly
//! before every sample time of the next, and everything fit on data (scalers,
//! risk thresholds, crime densities) is fit on the training window only, i.e.
//! on times before [`SplitBounds::val_start`]. Lagged inputs of a validation
//! sample may reach back into the training window: that is information known
//! at prediction time, not leakage. A training target never lies in the
//! validation or test window.

use serde::{Deserialize, Serialize};

use super::dataset::{Dataset, Splits};
use super::error::DataError;

/// Fractions of the sample time axis for training, validation and test.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitFractions {
    /// Share of the earliest sample times used for training (default 0.7).
    pub train: f64,
    /// Share of the following sample times used for validation (default 0.15).
    pub val: f64,
    /// Share of the latest sample times used for test (default 0.15).
    pub test: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        SplitFractions {
            train: 0.7,
            val: 0.15,
            test: 0.15,
        }
    }
}

impl SplitFractions {
    /// Checks that every fraction is positive and finite and that they sum to 1.
    pub fn validate(&self) -> Result<(), DataError> {
        let all = [self.train, self.val, self.test];
        let sum: f64 = all.iter().sum();
        if all.iter().any(|f| !f.is_finite() || *f <= 0.0) || (sum - 1.0).abs() > 1e-6 {
            return Err(DataError::config(
                "split fractions",
                format!(
                    "train {}, val {}, test {} must be positive and sum to 1",
                    self.train, self.val, self.test
                ),
            ));
        }
        Ok(())
    }
}

/// Which split a sample time belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitPart {
    /// The training window.
    Train,
    /// The validation window.
    Val,
    /// The test window.
    Test,
}

/// The time boundaries of a temporal split, in the task's time units
/// (the [`Dataset::time`] convention): `start <= val_start < test_start < end`,
/// half-open windows `[start, val_start)`, `[val_start, test_start)`,
/// `[test_start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitBounds {
    /// The first sample time (the first time whose lags lie inside the data).
    pub start: u32,
    /// The first validation time; everything fit on data uses times before it.
    pub val_start: u32,
    /// The first test time.
    pub test_start: u32,
    /// One past the last sample time.
    pub end: u32,
}

impl SplitBounds {
    /// Splits the sample times `[start, end)` by `fractions`: the training
    /// window gets `round(m * train)` times, validation `round(m * val)` and
    /// test the rest, where `m = end - start`; each gets at least one time.
    pub fn compute(start: u32, end: u32, fractions: &SplitFractions) -> Result<Self, DataError> {
        fractions.validate()?;
        let m = end.saturating_sub(start);
        if m < 3 {
            return Err(DataError::NotEnoughData {
                what: format!("{m} sample times; a temporal train/val/test split needs at least 3"),
            });
        }
        let mf = f64::from(m);
        // Each window gets at least one time and leaves at least one for each later window.
        let n_train = ((mf * fractions.train).round() as u32).clamp(1, m - 2);
        let n_val = ((mf * fractions.val).round() as u32).clamp(1, m - n_train - 1);
        Ok(SplitBounds {
            start,
            val_start: start + n_train,
            test_start: start + n_train + n_val,
            end,
        })
    }

    /// The split of sample time `t`, or `None` outside `[start, end)`.
    pub fn part(&self, t: u32) -> Option<SplitPart> {
        if t < self.start || t >= self.end {
            None
        } else if t < self.val_start {
            Some(SplitPart::Train)
        } else if t < self.test_start {
            Some(SplitPart::Val)
        } else {
            Some(SplitPart::Test)
        }
    }

    /// The half-open time window of one split.
    pub fn window(&self, part: SplitPart) -> std::ops::Range<u32> {
        match part {
            SplitPart::Train => self.start..self.val_start,
            SplitPart::Val => self.val_start..self.test_start,
            SplitPart::Test => self.test_start..self.end,
        }
    }
}

/// Checks the no-leakage ordering of `splits`: every training time is before
/// every validation time, which is before every test time, and no split is
/// empty.
pub(crate) fn check_temporal_order(splits: &Splits) -> Result<(), DataError> {
    fn range(name: &str, ds: &Dataset) -> Result<(u32, u32), DataError> {
        let lo = ds.time.iter().copied().min();
        let hi = ds.time.iter().copied().max();
        match (lo, hi) {
            (Some(lo), Some(hi)) => Ok((lo, hi)),
            _ => Err(DataError::NotEnoughData {
                what: format!("the {name} split is empty"),
            }),
        }
    }
    let (_, train_hi) = range("train", &splits.train)?;
    let (val_lo, val_hi) = range("val", &splits.val)?;
    let (test_lo, _) = range("test", &splits.test)?;
    if train_hi >= val_lo {
        return Err(DataError::config(
            "temporal split",
            format!("training time {train_hi} is not before validation time {val_lo}"),
        ));
    }
    if val_hi >= test_lo {
        return Err(DataError::config(
            "temporal split",
            format!("validation time {val_hi} is not before test time {test_lo}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_fractions_split_100_times_70_15_15() {
        let b = SplitBounds::compute(10, 110, &SplitFractions::default()).unwrap();
        assert_eq!(
            (b.start, b.val_start, b.test_start, b.end),
            (10, 80, 95, 110)
        );
        assert_eq!(b.part(9), None);
        assert_eq!(b.part(10), Some(SplitPart::Train));
        assert_eq!(b.part(79), Some(SplitPart::Train));
        assert_eq!(b.part(80), Some(SplitPart::Val));
        assert_eq!(b.part(95), Some(SplitPart::Test));
        assert_eq!(b.part(109), Some(SplitPart::Test));
        assert_eq!(b.part(110), None);
        assert_eq!(b.window(SplitPart::Val), 80..95);
    }

    #[test]
    fn every_split_gets_a_time_even_when_short() {
        for m in 3..40u32 {
            let b = SplitBounds::compute(0, m, &SplitFractions::default()).unwrap();
            assert!(b.start < b.val_start && b.val_start < b.test_start && b.test_start < b.end);
        }
        let skewed = SplitFractions {
            train: 0.98,
            val: 0.01,
            test: 0.01,
        };
        let b = SplitBounds::compute(0, 5, &skewed).unwrap();
        assert_eq!((b.val_start, b.test_start), (3, 4));
    }

    #[test]
    fn too_few_times_and_bad_fractions_are_errors() {
        assert!(matches!(
            SplitBounds::compute(5, 7, &SplitFractions::default()),
            Err(DataError::NotEnoughData { .. })
        ));
        for bad in [
            (0.7, 0.3, 0.0),
            (0.5, 0.5, 0.5),
            (f64::NAN, 0.5, 0.5),
            (-0.1, 0.6, 0.5),
        ] {
            let f = SplitFractions {
                train: bad.0,
                val: bad.1,
                test: bad.2,
            };
            assert!(f.validate().is_err(), "{bad:?}");
        }
    }
}
