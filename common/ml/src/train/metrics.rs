//! Evaluation metrics over plain slices, shared by the trainers, the naive
//! baselines and the federated evaluation.
//!
//! - `risk` (classification): accuracy, macro-F1, per-class recall and the
//!   confusion matrix.
//! - `counts` (regression of non-negative counts): MAE, RMSE, mean Poisson
//!   deviance and the MAE of each category.
//!
//! Everything is computed in `f64` over `&[i64]` / `&[f32]` so the same code
//! scores a model's predictions and a baseline's.

use serde::{Deserialize, Serialize};

use super::TrainError;
use fedcrime_data::{Category, Task};

/// Smallest predicted rate used inside the Poisson deviance (a prediction of
/// exactly zero for a non-zero count would make it infinite).
pub(crate) const POISSON_EPS: f64 = 1e-8;

/// Metrics of a classification (`risk`) prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RiskMetrics {
    /// Number of scored samples.
    pub n: usize,
    /// Fraction of samples whose class was predicted exactly.
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1 scores over the classes that occur
    /// in the targets or in the predictions (scikit-learn's convention; a
    /// class with no true positives scores 0).
    pub macro_f1: f64,
    /// Recall of each class; `None` for a class absent from the targets.
    pub recall: Vec<Option<f64>>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

impl RiskMetrics {
    /// Scores predicted class indices against the targets.
    pub fn compute(
        targets: &[i64],
        predictions: &[i64],
        num_classes: usize,
    ) -> Result<Self, TrainError> {
        if targets.len() != predictions.len() {
            return Err(TrainError::Length {
                what: "risk predictions",
                expected: targets.len(),
                got: predictions.len(),
            });
        }
        let mut confusion = vec![vec![0u64; num_classes]; num_classes];
        for (i, (&t, &p)) in targets.iter().zip(predictions).enumerate() {
            let (ti, pi) = (
                class_index(t, num_classes, i, "target")?,
                class_index(p, num_classes, i, "prediction")?,
            );
            confusion[ti][pi] += 1;
        }
        Ok(Self::from_confusion(confusion))
    }

    /// Derives every metric from a confusion matrix (`[true][predicted]`).
    pub(crate) fn from_confusion(confusion: Vec<Vec<u64>>) -> Self {
        let k = confusion.len();
        let n: u64 = confusion.iter().flatten().sum();
        let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
        let mut recall = Vec::with_capacity(k);
        let mut f1_sum = 0.0;
        let mut f1_classes = 0usize;
        for c in 0..k {
            let tp = confusion[c][c] as f64;
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
            recall.push((support > 0).then(|| tp / support as f64));
            if support + predicted > 0 {
                // F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (support + predicted).
                f1_sum += 2.0 * tp / (support + predicted) as f64;
                f1_classes += 1;
            }
        }
        Self {
            n: n as usize,
            accuracy: ratio(correct as f64, n as f64),
            macro_f1: ratio(f1_sum, f1_classes as f64),
            recall,
            confusion,
        }
    }
}

fn class_index(v: i64, k: usize, row: usize, what: &'static str) -> Result<usize, TrainError> {
    usize::try_from(v)
        .ok()
        .filter(|&c| c < k)
        .ok_or(TrainError::ClassOutOfRange {
            what,
            row,
            value: v,
            num_classes: k,
        })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Metrics of a count (`counts`) prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CountMetrics {
    /// Number of scored samples (rows of `dim` values).
    pub n: usize,
    /// Mean absolute error over all values.
    pub mae: f64,
    /// Root mean squared error over all values.
    pub rmse: f64,
    /// Mean Poisson deviance `2 (y ln(y/mu) - (y - mu))` over all values,
    /// with `mu` floored at `POISSON_EPS` inside the logarithm and
    /// `0 ln(0/mu) = 0`.
    pub poisson_deviance: f64,
    /// Mean absolute error of each output column (crime category).
    pub mae_per_category: Vec<f64>,
}

impl CountMetrics {
    /// Scores predicted counts against targets, both row-major `[n, dim]`.
    pub fn compute(targets: &[f32], predictions: &[f32], dim: usize) -> Result<Self, TrainError> {
        if targets.len() != predictions.len() {
            return Err(TrainError::Length {
                what: "count predictions",
                expected: targets.len(),
                got: predictions.len(),
            });
        }
        if dim == 0 || !targets.len().is_multiple_of(dim) {
            return Err(TrainError::Length {
                what: "count values (a multiple of the row width)",
                expected: targets.len().div_ceil(dim.max(1)) * dim.max(1),
                got: targets.len(),
            });
        }
        let mut abs_col = vec![0.0f64; dim];
        let (mut sq, mut dev) = (0.0f64, 0.0f64);
        for (i, (&y, &p)) in targets.iter().zip(predictions).enumerate() {
            let (y, p) = (f64::from(y), f64::from(p));
            if !p.is_finite() {
                return Err(TrainError::NonFinite {
                    what: "count prediction",
                    at: format!("row {} column {}", i / dim, i % dim),
                });
            }
            let d = y - p;
            abs_col[i % dim] += d.abs();
            sq += d * d;
            // The floor only guards the logarithm; a zero prediction of a
            // zero count costs nothing.
            let ylog = if y > 0.0 {
                y * (y / p.max(POISSON_EPS)).ln()
            } else {
                0.0
            };
            dev += 2.0 * (ylog - (y - p.max(0.0)));
        }
        let rows = targets.len() / dim;
        let total = targets.len() as f64;
        Ok(Self {
            n: rows,
            mae: ratio(abs_col.iter().sum(), total),
            rmse: ratio(sq, total).sqrt(),
            poisson_deviance: ratio(dev, total),
            mae_per_category: abs_col.iter().map(|&a| ratio(a, rows as f64)).collect(),
        })
    }
}

impl CountMetrics {
    /// Re-reads metrics of a wide `[n, groups * d]` layout (e.g. the graph
    /// model's `[periods, areas * categories]`, group-major) as `[n * groups,
    /// d]` rows (one per period and area): MAE, RMSE and deviance are means
    /// over all values and stay as they are; the per-column MAE becomes the
    /// mean over groups of each of the `d` columns. `None` when the width is
    /// not a multiple of `groups`.
    pub fn fold_columns(&self, groups: usize) -> Option<CountMetrics> {
        let wide = self.mae_per_category.len();
        if groups == 0 || !wide.is_multiple_of(groups) {
            return None;
        }
        let d = wide / groups;
        let mae_per_category = (0..d)
            .map(|c| {
                (0..groups)
                    .map(|g| self.mae_per_category[g * d + c])
                    .sum::<f64>()
                    / groups as f64
            })
            .collect();
        Some(CountMetrics {
            n: self.n * groups,
            mae: self.mae,
            rmse: self.rmse,
            poisson_deviance: self.poisson_deviance,
            mae_per_category,
        })
    }
}

/// The metrics of one task, as the trainers and reports pass them around.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Metrics {
    /// Classification metrics.
    Risk(RiskMetrics),
    /// Count-regression metrics.
    Counts(CountMetrics),
}

impl Metrics {
    /// The task these metrics belong to.
    pub fn task(&self) -> Task {
        match self {
            Metrics::Risk(_) => Task::Risk,
            Metrics::Counts(_) => Task::Counts,
        }
    }

    /// The headline number and its name: macro-F1 (higher is better) for
    /// risk, MAE (lower is better) for counts.
    pub fn headline(&self) -> (&'static str, f64) {
        match self {
            Metrics::Risk(m) => ("macro_f1", m.macro_f1),
            Metrics::Counts(m) => ("mae", m.mae),
        }
    }

    /// The scalar metrics as `(column name, value)` pairs in a fixed order,
    /// for CSV rows and report tables. Undefined values (a class recall with
    /// no support) are NaN.
    pub fn scalars(&self) -> Vec<(String, f64)> {
        match self {
            Metrics::Risk(m) => {
                let mut v = vec![
                    ("accuracy".to_string(), m.accuracy),
                    ("macro_f1".to_string(), m.macro_f1),
                ];
                for (c, r) in m.recall.iter().enumerate() {
                    // Class c is risk level c + 1.
                    v.push((format!("recall_l{}", c + 1), r.unwrap_or(f64::NAN)));
                }
                v
            }
            Metrics::Counts(m) => {
                let mut v = vec![
                    ("mae".to_string(), m.mae),
                    ("rmse".to_string(), m.rmse),
                    ("poisson_deviance".to_string(), m.poisson_deviance),
                ];
                for (c, a) in m.mae_per_category.iter().enumerate() {
                    v.push((
                        format!("mae_{}", category_name(c, m.mae_per_category.len())),
                        *a,
                    ));
                }
                v
            }
        }
    }

    /// The column names [`Metrics::scalars`] yields for a task and output width.
    pub fn scalar_names(task: Task, output_dim: usize) -> Vec<String> {
        match task {
            Task::Risk => ["accuracy", "macro_f1"]
                .iter()
                .map(|s| s.to_string())
                .chain((0..output_dim).map(|c| format!("recall_l{}", c + 1)))
                .collect(),
            Task::Counts => ["mae", "rmse", "poisson_deviance"]
                .iter()
                .map(|s| s.to_string())
                .chain((0..output_dim).map(|c| format!("mae_{}", category_name(c, output_dim))))
                .collect(),
        }
    }
}

/// A count column's name: the crime category when the width is the category
/// count, else `c<i>`.
fn category_name(c: usize, dim: usize) -> String {
    match Category::ALL.get(c) {
        Some(cat) if dim == Category::COUNT => cat.name().to_string(),
        _ => format!("c{c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn risk_metrics_match_hand_computation() {
        // true:  0 0 0 1 1 2
        // pred:  0 0 1 1 2 2
        let m = RiskMetrics::compute(&[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2], 3).unwrap();
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
        );
        assert!(close(m.accuracy, 4.0 / 6.0));
        // Recalls: 2/3, 1/2, 1/1. Precisions: 2/2, 1/2, 1/2.
        assert_eq!(m.recall, vec![Some(2.0 / 3.0), Some(0.5), Some(1.0)]);
        // F1: 2*2/(3+2)=0.8, 2*1/(2+2)=0.5, 2*1/(1+2)=2/3.
        assert!(
            close(m.macro_f1, (0.8 + 0.5 + 2.0 / 3.0) / 3.0),
            "{}",
            m.macro_f1
        );
        assert_eq!(m.n, 6);
    }

    #[test]
    fn absent_classes_are_left_out_of_macro_f1_and_recall() {
        // 5 classes; only 0 and 1 occur. Class 2 is predicted once but never true.
        let m = RiskMetrics::compute(&[0, 1, 1], &[0, 1, 2], 5).unwrap();
        assert_eq!(m.recall, vec![Some(1.0), Some(0.5), None, None, None]);
        // F1: class 0 = 1, class 1 = 2/(2+1) = 2/3, class 2 = 0 (predicted, never true).
        assert!(close(m.macro_f1, (1.0 + 2.0 / 3.0 + 0.0) / 3.0));
        let s = Metrics::Risk(m).scalars();
        assert_eq!(s[0].0, "accuracy");
        assert_eq!(s[4].0, "recall_l3");
        assert!(s[4].1.is_nan());
    }

    #[test]
    fn bad_risk_inputs_are_errors_naming_the_row() {
        let e = RiskMetrics::compute(&[0, 1], &[0], 2).unwrap_err();
        assert!(e.to_string().contains("expected 2"), "{e}");
        let e = RiskMetrics::compute(&[0, 7], &[0, 1], 5).unwrap_err();
        assert!(
            e.to_string().contains("row 1") && e.to_string().contains('7'),
            "{e}"
        );
        let e = RiskMetrics::compute(&[0], &[-1], 5).unwrap_err();
        assert!(e.to_string().contains("prediction"), "{e}");
    }

    #[test]
    fn empty_risk_input_scores_zero() {
        let m = RiskMetrics::compute(&[], &[], 5).unwrap();
        assert_eq!((m.n, m.accuracy, m.macro_f1), (0, 0.0, 0.0));
    }

    #[test]
    fn count_metrics_match_hand_computation() {
        // Two rows of width 2.
        let y = [1.0, 0.0, 3.0, 2.0];
        let p = [2.0, 1.0, 3.0, 0.0];
        let m = CountMetrics::compute(&y, &p, 2).unwrap();
        assert_eq!(m.n, 2);
        // Errors: -1, -1, 0, 2.
        assert!(close(m.mae, 4.0 / 4.0));
        assert!(close(m.rmse, (6.0f64 / 4.0).sqrt()));
        assert_eq!(m.mae_per_category, vec![0.5, 1.5]);
        // Deviance terms: 2(1 ln(1/2) + 1), 2(0 + 1), 0, 2(2 ln(2/1e-8) - 2).
        let expected =
            (2.0 * (0.5f64.ln() + 1.0) + 2.0 + 0.0 + 2.0 * (2.0 * (2.0 / POISSON_EPS).ln() - 2.0))
                / 4.0;
        assert!((m.poisson_deviance - expected).abs() < 1e-9);
    }

    #[test]
    fn perfect_counts_score_zero() {
        let y = [0.0, 4.0, 1.5, 0.0];
        let m = CountMetrics::compute(&y, &y, 2).unwrap();
        assert_eq!((m.mae, m.rmse), (0.0, 0.0));
        assert!(m.poisson_deviance.abs() < 1e-12);
    }

    #[test]
    fn folding_wide_counts_equals_scoring_the_long_layout() {
        // Two periods x (3 areas x 2 categories), area-major.
        let y = [1.0, 0.0, 2.0, 5.0, 0.0, 1.0, 3.0, 3.0, 1.0, 0.0, 2.0, 2.0];
        let p = [1.5, 0.5, 2.0, 4.0, 0.2, 1.0, 2.0, 3.5, 1.0, 1.0, 0.0, 2.0];
        let wide = CountMetrics::compute(&y, &p, 6).unwrap();
        let long = CountMetrics::compute(&y, &p, 2).unwrap();
        let folded = wide.fold_columns(3).unwrap();
        assert_eq!(folded.n, long.n);
        assert!((folded.mae - long.mae).abs() < 1e-12);
        assert!((folded.rmse - long.rmse).abs() < 1e-12);
        assert!((folded.poisson_deviance - long.poisson_deviance).abs() < 1e-12);
        for (a, b) in folded.mae_per_category.iter().zip(&long.mae_per_category) {
            assert!((a - b).abs() < 1e-12);
        }
        assert!(wide.fold_columns(4).is_none());
    }

    #[test]
    fn bad_count_inputs_are_errors() {
        assert!(CountMetrics::compute(&[1.0, 2.0], &[1.0], 1).is_err());
        assert!(CountMetrics::compute(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 2).is_err());
        let e = CountMetrics::compute(&[1.0, 2.0], &[1.0, f32::NAN], 1).unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
    }

    #[test]
    fn scalar_names_match_scalars() {
        let m = Metrics::Counts(CountMetrics::compute(&[1.0; 8], &[1.0; 8], 8).unwrap());
        let names: Vec<String> = m.scalars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, Metrics::scalar_names(Task::Counts, 8));
        assert!(names.contains(&"mae_sex_offence".to_string()));
        let r = Metrics::Risk(RiskMetrics::compute(&[0], &[0], 5).unwrap());
        let names: Vec<String> = r.scalars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, Metrics::scalar_names(Task::Risk, 5));
        assert_eq!(r.headline(), ("macro_f1", 1.0));
    }
}
