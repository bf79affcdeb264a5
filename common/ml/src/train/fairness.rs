//! Group fairness of predictions, with fairlearn's definitions (issue 14).
//!
//! Every sample belongs to one group (an area, a bureau, or a label the
//! agency supplies per area). For a binary decision, "predicted positive"
//! (e.g. "this area and block is high risk"):
//!
//! - the *selection rate* of a group is the fraction of its samples predicted
//!   positive;
//! - the *demographic parity difference* is the largest selection rate minus
//!   the smallest, the *ratio* the smallest over the largest;
//! - the *true and false positive rates* of a group are the fractions of its
//!   actual positives (negatives) predicted positive;
//! - the *equalized odds difference* is the larger of the TPR and FPR
//!   differences (max - min over groups), the *ratio* the smaller of the
//!   TPR and FPR ratios (min / max).
//!
//! Risk predictions are scored one-vs-rest for each level and for "high
//! risk" (levels 4-5); count predictions by MAE and mean bias per group.
//!
//! Where a rate has no denominator (a group with no actual positives has no
//! TPR) that group is left out of that rate's difference and ratio, and a
//! ratio whose largest rate is 0 is undefined (`None`): every value that is
//! reported is a number, never NaN.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::TrainError;

/// One group's rates for a binary decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupRates {
    /// The group's label.
    pub group: String,
    /// Samples in the group.
    pub n: usize,
    /// Actual positives in the group.
    pub positives: usize,
    /// Fraction of the group's samples predicted positive.
    pub selection_rate: f64,
    /// Fraction of the actual positives predicted positive (`None` without positives).
    pub true_positive_rate: Option<f64>,
    /// Fraction of the actual negatives predicted positive (`None` without negatives).
    pub false_positive_rate: Option<f64>,
}

/// Fairness of one binary decision across groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryFairness {
    /// Each group's rates, in label order.
    pub groups: Vec<GroupRates>,
    /// Largest minus smallest selection rate.
    pub demographic_parity_difference: f64,
    /// Smallest over largest selection rate (`None` when every group's is 0).
    pub demographic_parity_ratio: Option<f64>,
    /// The larger of the TPR and FPR differences.
    pub equalized_odds_difference: f64,
    /// The smaller of the TPR and FPR ratios (`None` when neither is defined).
    pub equalized_odds_ratio: Option<f64>,
}

/// Largest minus smallest, and smallest over largest (`None` when the
/// largest is 0), of the defined values.
fn spread(values: impl Iterator<Item = Option<f64>>) -> (f64, Option<f64>) {
    let defined: Vec<f64> = values.flatten().collect();
    let (Some(lo), Some(hi)) = (
        defined.iter().copied().reduce(f64::min),
        defined.iter().copied().reduce(f64::max),
    ) else {
        return (0.0, None);
    };
    (hi - lo, (hi > 0.0).then(|| lo / hi))
}

/// The smaller of two optional ratios (the defined one when only one is).
fn min_ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn check_lengths(truth: usize, pred: usize, groups: usize) -> Result<(), TrainError> {
    if pred != truth {
        return Err(TrainError::Length {
            what: "predictions (one per target)",
            expected: truth,
            got: pred,
        });
    }
    if groups != truth {
        return Err(TrainError::Length {
            what: "group labels (one per target)",
            expected: truth,
            got: groups,
        });
    }
    Ok(())
}

/// Scores a binary decision: `y_true[i]` whether sample `i` is actually
/// positive, `y_pred[i]` whether it was predicted positive, `groups[i]` its
/// group's label.
pub fn binary_fairness<G: AsRef<str>>(
    y_true: &[bool],
    y_pred: &[bool],
    groups: &[G],
) -> Result<BinaryFairness, TrainError> {
    check_lengths(y_true.len(), y_pred.len(), groups.len())?;
    // Per group: [n, positives, predicted positive, true positives, false positives].
    let mut counts: BTreeMap<&str, [usize; 5]> = BTreeMap::new();
    for ((&t, &p), g) in y_true.iter().zip(y_pred).zip(groups) {
        let c = counts.entry(g.as_ref()).or_default();
        c[0] += 1;
        c[1] += usize::from(t);
        c[2] += usize::from(p);
        c[3] += usize::from(t && p);
        c[4] += usize::from(!t && p);
    }
    let ratio = |num: usize, den: usize| (den > 0).then(|| num as f64 / den as f64);
    let groups: Vec<GroupRates> = counts
        .into_iter()
        .map(|(g, [n, pos, sel, tp, fp])| GroupRates {
            group: g.to_string(),
            n,
            positives: pos,
            selection_rate: ratio(sel, n).unwrap_or(0.0),
            true_positive_rate: ratio(tp, pos),
            false_positive_rate: ratio(fp, n - pos),
        })
        .collect();
    let (dpd, dpr) = spread(groups.iter().map(|g| Some(g.selection_rate)));
    let (tpr_d, tpr_r) = spread(groups.iter().map(|g| g.true_positive_rate));
    let (fpr_d, fpr_r) = spread(groups.iter().map(|g| g.false_positive_rate));
    Ok(BinaryFairness {
        groups,
        demographic_parity_difference: dpd,
        demographic_parity_ratio: dpr,
        equalized_odds_difference: tpr_d.max(fpr_d),
        equalized_odds_ratio: min_ratio(tpr_r, fpr_r),
    })
}

/// Fairness of risk-level predictions: one-vs-rest for each level and for
/// "high risk" (levels 4-5, class indices 3 and 4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RiskFairness {
    /// Level `k + 1` against the others, for each class `k`.
    pub per_level: Vec<BinaryFairness>,
    /// Levels 4-5 against 1-3.
    pub high_risk: BinaryFairness,
}

/// Scores class predictions (`0..num_classes`, level = class + 1) by group.
pub fn risk_fairness<G: AsRef<str>>(
    labels: &[i64],
    pred: &[i64],
    groups: &[G],
    num_classes: usize,
) -> Result<RiskFairness, TrainError> {
    check_lengths(labels.len(), pred.len(), groups.len())?;
    let is = |v: &[i64], f: &dyn Fn(i64) -> bool| v.iter().map(|&c| f(c)).collect::<Vec<bool>>();
    let per_level = (0..num_classes as i64)
        .map(|k| binary_fairness(&is(labels, &|c| c == k), &is(pred, &|c| c == k), groups))
        .collect::<Result<Vec<_>, _>>()?;
    let high = |c: i64| c >= 3;
    let high_risk = binary_fairness(&is(labels, &high), &is(pred, &high), groups)?;
    Ok(RiskFairness {
        per_level,
        high_risk,
    })
}

/// One group's error of count predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupErrors {
    /// The group's label.
    pub group: String,
    /// Count values (samples x categories) in the group.
    pub n: usize,
    /// Mean absolute error.
    pub mae: f64,
    /// Mean of prediction minus truth (positive: the model over-predicts
    /// this group's crime).
    pub bias: f64,
}

/// Fairness of count predictions: error and bias per group, and the
/// largest minus the smallest of each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CountFairness {
    /// Each group's errors, in label order.
    pub groups: Vec<GroupErrors>,
    /// Largest minus smallest group MAE.
    pub mae_difference: f64,
    /// Largest minus smallest group bias.
    pub bias_difference: f64,
}

/// Scores count predictions (`dim` values per sample, row-major) by the
/// sample's group.
pub fn count_fairness<G: AsRef<str>>(
    values: &[f32],
    pred: &[f32],
    dim: usize,
    groups: &[G],
) -> Result<CountFairness, TrainError> {
    let dim = dim.max(1);
    check_lengths(values.len(), pred.len(), groups.len() * dim)?;
    // Per group: [values, sum |error|, sum error].
    let mut sums: BTreeMap<&str, (usize, f64, f64)> = BTreeMap::new();
    for (row, g) in groups.iter().enumerate() {
        let s = sums.entry(g.as_ref()).or_default();
        for j in row * dim..(row + 1) * dim {
            let e = f64::from(pred[j]) - f64::from(values[j]);
            s.0 += 1;
            s.1 += e.abs();
            s.2 += e;
        }
    }
    let groups: Vec<GroupErrors> = sums
        .into_iter()
        .map(|(g, (n, abs, err))| GroupErrors {
            group: g.to_string(),
            n,
            mae: abs / n.max(1) as f64,
            bias: err / n.max(1) as f64,
        })
        .collect();
    let (mae_difference, _) = spread(groups.iter().map(|g| Some(g.mae)));
    let (bias_difference, _) = spread(groups.iter().map(|g| Some(g.bias)));
    Ok(CountFairness {
        groups,
        mae_difference,
        bias_difference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn demographic_parity_follows_fairlearns_example() {
        // Group a selects 2 of 4 (0.5), group b 1 of 4 (0.25): DPD 0.25, DPR 0.5.
        let pred = [true, true, false, false, true, false, false, false];
        let truth = [true; 8];
        let groups = ["a", "a", "a", "a", "b", "b", "b", "b"];
        let f = binary_fairness(&truth, &pred, &groups).unwrap();
        assert!(close(f.groups[0].selection_rate, 0.5));
        assert!(close(f.groups[1].selection_rate, 0.25));
        assert!(close(f.demographic_parity_difference, 0.25));
        assert!(close(f.demographic_parity_ratio.unwrap(), 0.5));
        // Every sample is positive: no FPR anywhere, TPR = selection rate.
        assert!(f.groups.iter().all(|g| g.false_positive_rate.is_none()));
        assert!(close(f.equalized_odds_difference, 0.25));
        assert!(close(f.equalized_odds_ratio.unwrap(), 0.5));
    }

    #[test]
    fn equalized_odds_takes_the_worse_of_tpr_and_fpr() {
        // a: positives [T, T] predicted [T, F] (TPR 0.5); negatives [F, F]
        //    predicted [T, F] (FPR 0.5).
        // b: positives predicted [T, T] (TPR 1); negatives predicted [F, F] (FPR 0).
        let truth = [true, true, false, false, true, true, false, false];
        let pred = [true, false, true, false, true, true, false, false];
        let groups = ["a", "a", "a", "a", "b", "b", "b", "b"];
        let f = binary_fairness(&truth, &pred, &groups).unwrap();
        assert!(close(f.equalized_odds_difference, 0.5));
        // TPR ratio 0.5 / 1; FPR ratio 0 / 0.5 = 0: the smaller is 0.
        assert!(close(f.equalized_odds_ratio.unwrap(), 0.0));
        assert!(close(f.demographic_parity_difference, 0.0));
    }

    #[test]
    fn the_same_prediction_for_everyone_has_no_disparity() {
        let truth = [true, false, true, false, false, true];
        let groups = ["x", "y", "z", "x", "y", "z"];
        for p in [true, false] {
            let f = binary_fairness(&truth, &[p; 6], &groups).unwrap();
            assert_eq!(f.demographic_parity_difference, 0.0);
            assert_eq!(f.equalized_odds_difference, 0.0);
            // All selected: ratio 1; none selected: undefined, not NaN.
            assert_eq!(f.demographic_parity_ratio, p.then_some(1.0));
        }
    }

    #[test]
    fn risk_levels_are_scored_one_vs_rest_and_high_risk_together() {
        let labels = [0, 3, 4, 1, 4, 2];
        let pred = [0, 4, 3, 1, 1, 2];
        let groups = ["a", "a", "a", "b", "b", "b"];
        let r = risk_fairness(&labels, &pred, &groups, 5).unwrap();
        assert_eq!(r.per_level.len(), 5);
        // High risk: a predicts 2 of 3 (both right), b 0 of 3 (misses one).
        let h = &r.high_risk;
        assert!(close(h.groups[0].selection_rate, 2.0 / 3.0));
        assert!(close(h.groups[1].selection_rate, 0.0));
        assert_eq!(h.groups[0].true_positive_rate, Some(1.0));
        assert_eq!(h.groups[1].true_positive_rate, Some(0.0));
        assert!(close(h.equalized_odds_difference, 1.0));
    }

    #[test]
    fn count_errors_and_bias_per_group() {
        // Two categories per sample; group a over-predicts by 1, b is exact.
        let values = [1.0, 2.0, 0.0, 4.0];
        let pred = [2.0, 3.0, 0.0, 4.0];
        let f = count_fairness(&values, &pred, 2, &["a", "b"]).unwrap();
        assert!(close(f.groups[0].mae, 1.0) && close(f.groups[0].bias, 1.0));
        assert!(close(f.groups[1].mae, 0.0) && close(f.groups[1].bias, 0.0));
        assert!(close(f.mae_difference, 1.0) && close(f.bias_difference, 1.0));
    }

    #[test]
    fn mismatched_lengths_name_what_is_wrong() {
        let e = binary_fairness(&[true], &[true, false], &["a"]).unwrap_err();
        assert!(e.to_string().contains("predictions"), "{e}");
        let e = binary_fairness(&[true], &[true], &["a", "b"]).unwrap_err();
        assert!(e.to_string().contains("group labels"), "{e}");
        let e = count_fairness(&[1.0, 2.0], &[1.0, 2.0], 2, &["a", "b"]).unwrap_err();
        assert!(e.to_string().contains("group labels"), "{e}");
    }
}
