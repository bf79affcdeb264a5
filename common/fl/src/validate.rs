//! Checks on station replies before anything is aggregated.
//!
//! An update is refused when it answers another round (stale or replayed),
//! when the station already answered this round, when its layout differs
//! from the global model's (names, order, shapes; the element type is `f32`
//! by construction of [`Params`], the wire decoder refuses other dtypes),
//! when it reports no examples, when a value is not finite, or when it moved
//! further from the global model than an optional bound. Each refusal is a
//! [`Refusal`] whose [`kind`](Refusal::kind) is what the round's metrics count.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::strategy::{kernels, FitRes};
use super::StationId;
use fedcrime_params::{ParamError, Params};

/// Why a station's contribution to a round was lost: the keys of
/// [`RoundMetrics::failed`](super::RoundMetrics::failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The station did not answer before the deadline.
    Timeout,
    /// The station disconnected before answering.
    Disconnected,
    /// The station reported that it could not train or evaluate.
    StationError,
    /// A reply from a station that was not asked (or no longer awaited) this round.
    NotSampled,
    /// A reply for another round than the current one.
    StaleRound,
    /// A second reply from the same station in the same round.
    Duplicate,
    /// Tensor names, order or shapes differ from the global model's.
    SpecMismatch,
    /// A NaN or infinite value.
    NonFinite,
    /// The update moved further from the global model than allowed.
    NormTooLarge,
    /// The update claims zero training examples.
    NoExamples,
    /// The update's signature is missing or does not verify under the key
    /// the station's certificate binds.
    BadSignature,
}

impl FailureKind {
    /// Every kind, in the order of metrics columns.
    pub const ALL: [FailureKind; 11] = [
        FailureKind::Timeout,
        FailureKind::Disconnected,
        FailureKind::StationError,
        FailureKind::NotSampled,
        FailureKind::StaleRound,
        FailureKind::Duplicate,
        FailureKind::SpecMismatch,
        FailureKind::NonFinite,
        FailureKind::NormTooLarge,
        FailureKind::NoExamples,
        FailureKind::BadSignature,
    ];

    /// The snake_case name used in metrics files.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Disconnected => "disconnected",
            FailureKind::StationError => "station_error",
            FailureKind::NotSampled => "not_sampled",
            FailureKind::StaleRound => "stale_round",
            FailureKind::Duplicate => "duplicate",
            FailureKind::SpecMismatch => "spec_mismatch",
            FailureKind::NonFinite => "non_finite",
            FailureKind::NormTooLarge => "norm_too_large",
            FailureKind::NoExamples => "no_examples",
            FailureKind::BadSignature => "bad_signature",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an update was refused, with the details for the log.
#[derive(Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The station is not awaited in this round.
    #[error("station is not awaited in round {round}")]
    NotSampled {
        /// The current round.
        round: u64,
    },
    /// The update answers another round.
    #[error("update for round {got}, the current round is {current}")]
    StaleRound {
        /// The round the update names.
        got: u64,
        /// The current round.
        current: u64,
    },
    /// The station already answered this round.
    #[error("second update in round {round}")]
    Duplicate {
        /// The current round.
        round: u64,
    },
    /// The layout differs from the global model's.
    #[error("{0}")]
    SpecMismatch(ParamError),
    /// A value is not finite.
    #[error("non-finite value in tensor {tensor:?} at index {index}")]
    NonFinite {
        /// The tensor holding it.
        tensor: String,
        /// Its index within the tensor.
        index: usize,
    },
    /// The update is too far from the global model.
    #[error("update norm ||w - w_global|| = {norm:.6} exceeds the bound {max}")]
    NormTooLarge {
        /// The update's distance from the global model.
        norm: f64,
        /// The configured bound.
        max: f64,
    },
    /// The update claims no training examples.
    #[error("update reports zero training examples")]
    NoExamples,
    /// The signature is missing or wrong.
    #[error("signature refused: {0}")]
    BadSignature(String),
}

impl Refusal {
    /// The metrics key for this refusal.
    pub fn kind(&self) -> FailureKind {
        match self {
            Refusal::NotSampled { .. } => FailureKind::NotSampled,
            Refusal::StaleRound { .. } => FailureKind::StaleRound,
            Refusal::Duplicate { .. } => FailureKind::Duplicate,
            Refusal::SpecMismatch(_) => FailureKind::SpecMismatch,
            Refusal::NonFinite { .. } => FailureKind::NonFinite,
            Refusal::NormTooLarge { .. } => FailureKind::NormTooLarge,
            Refusal::NoExamples => FailureKind::NoExamples,
            Refusal::BadSignature(_) => FailureKind::BadSignature,
        }
    }
}

/// Refuses a reply naming another round than `current`.
pub(crate) fn check_round(current: u64, got: u64) -> Result<(), Refusal> {
    if got == current {
        Ok(())
    } else {
        Err(Refusal::StaleRound { got, current })
    }
}

/// Checks an update's content against the global model: layout, example
/// count, finiteness and (when `max_norm` is set) `||w - w_global|| <= max_norm`.
pub(crate) fn check_update(
    global: &Params,
    update: &FitRes,
    max_norm: Option<f64>,
) -> Result<(), Refusal> {
    let params = &update.params;
    if !std::sync::Arc::ptr_eq(global.spec(), params.spec()) {
        global
            .spec()
            .check_same(params.spec())
            .map_err(Refusal::SpecMismatch)?;
    }
    if params.data().len() != global.data().len() {
        // Only reachable through a layout that lies about its total.
        return Err(Refusal::SpecMismatch(ParamError::Length {
            expected: global.data().len(),
            got: params.data().len(),
        }));
    }
    if update.num_examples == 0 {
        return Err(Refusal::NoExamples);
    }
    if !kernels::all_finite(params.data()) {
        let (tensor, index) = params
            .first_non_finite()
            .map(|(t, i)| (t.to_string(), i))
            .unwrap_or_default();
        return Err(Refusal::NonFinite { tensor, index });
    }
    if let Some(max) = max_norm {
        let norm = kernels::par_sq_distance(params.data(), global.data())
            .map_err(|_| {
                Refusal::SpecMismatch(ParamError::Length {
                    expected: global.data().len(),
                    got: params.data().len(),
                })
            })?
            .sqrt();
        if norm.is_nan() || norm > max {
            return Err(Refusal::NormTooLarge { norm, max });
        }
    }
    Ok(())
}

/// The checks of one round (attempt): the round number, one update per
/// station, and the content checks of [`check_update`].
#[derive(Clone, Debug)]
pub(crate) struct Validator {
    round: u64,
    max_norm: Option<f64>,
    answered: HashSet<StationId>,
}

impl Validator {
    /// A validator for `round` with an optional update-norm bound.
    pub fn new(round: u64, max_norm: Option<f64>) -> Self {
        Validator {
            round,
            max_norm,
            answered: HashSet::new(),
        }
    }

    /// Whether `station` has used up its answer (accepted or refused for its content).
    pub(crate) fn has_answered(&self, station: &StationId) -> bool {
        self.answered.contains(station)
    }

    /// Checks one update from `station` naming round `round`. An update that
    /// passes the round check uses up the station's one answer, even when its
    /// content is then refused.
    pub fn check(
        &mut self,
        station: &StationId,
        round: u64,
        global: &Params,
        update: &FitRes,
    ) -> Result<(), Refusal> {
        check_round(self.round, round)?;
        if !self.answered.insert(station.clone()) {
            return Err(Refusal::Duplicate { round });
        }
        check_update(global, update, self.max_norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::testutil::{params, res};
    use fedcrime_params::ParamSpec;
    use std::sync::Arc;

    #[test]
    fn each_refusal_has_its_kind() {
        let g = params(&[0.0, 0.0, 0.0]);
        let ok = res(&[1.0, 1.0, 1.0], 3);
        let s = StationId::new("station-01").unwrap();
        let mut v = Validator::new(4, Some(2.0));
        assert_eq!(v.round, 4);

        let stale = v.check(&s, 3, &g, &ok).unwrap_err();
        assert_eq!(stale.kind(), FailureKind::StaleRound);
        assert_eq!(
            stale.to_string(),
            "update for round 3, the current round is 4"
        );
        assert_eq!(
            v.check(&s, 5, &g, &ok).unwrap_err().kind(),
            FailureKind::StaleRound
        );

        v.check(&s, 4, &g, &ok).unwrap();
        assert_eq!(
            v.check(&s, 4, &g, &ok).unwrap_err().kind(),
            FailureKind::Duplicate
        );

        let mut nan = ok.clone();
        Arc::make_mut(&mut nan.params).data_mut()[2] = f32::NAN;
        let e = check_update(&g, &nan, None).unwrap_err();
        assert_eq!(
            e,
            Refusal::NonFinite {
                tensor: "b".into(),
                index: 0
            }
        );

        let mut inf = ok.clone();
        Arc::make_mut(&mut inf.params).data_mut()[1] = f32::NEG_INFINITY;
        assert_eq!(
            check_update(&g, &inf, None).unwrap_err().kind(),
            FailureKind::NonFinite
        );

        let other = Arc::new(ParamSpec::new([("w", vec![1]), ("b", vec![2])]).unwrap());
        let shaped = FitRes {
            params: Arc::new(Params::new(other, vec![0.0; 3]).unwrap()),
            ..ok.clone()
        };
        let e = check_update(&g, &shaped, None).unwrap_err();
        assert_eq!(e.kind(), FailureKind::SpecMismatch);
        assert!(e.to_string().contains("\"w\""), "{e}");

        let far = res(&[2.0, 2.0, 0.0], 1);
        let e = check_update(&g, &far, Some(2.0)).unwrap_err();
        assert_eq!(e.kind(), FailureKind::NormTooLarge);
        assert!(check_update(&g, &far, Some(2.9)).is_ok());
        assert!(check_update(&g, &far, None).is_ok());

        assert_eq!(
            check_update(&g, &res(&[0.0, 0.0, 0.0], 0), None).unwrap_err(),
            Refusal::NoExamples
        );
    }

    #[test]
    fn an_invalid_update_uses_up_the_answer() {
        let g = params(&[0.0, 0.0]);
        let s = StationId::new("a").unwrap();
        let mut v = Validator::new(1, None);
        let mut bad = res(&[1.0, 1.0], 1);
        Arc::make_mut(&mut bad.params).data_mut()[0] = f32::NAN;
        assert_eq!(
            v.check(&s, 1, &g, &bad).unwrap_err().kind(),
            FailureKind::NonFinite
        );
        assert_eq!(
            v.check(&s, 1, &g, &res(&[1.0, 1.0], 1)).unwrap_err().kind(),
            FailureKind::Duplicate
        );
        // Another station is unaffected.
        assert!(v
            .check(&StationId::new("b").unwrap(), 1, &g, &res(&[1.0, 1.0], 1))
            .is_ok());
    }

    #[test]
    fn failure_kinds_serialize_as_snake_case() {
        for k in FailureKind::ALL {
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
    }
}
