//! Naive baselines, scored with the same metrics as the models on the same
//! split. A model is only worth its parameters if it beats these.
//!
//! - `risk`: the majority class of the training split, and the historical
//!   frequency per (area, weekday, 4-hour block): the most frequent training
//!   level of that cell, falling back to the majority class for unseen cells.
//! - `counts`: the last period (the target of `(area, t - 1)`, looked up across
//!   the train, validation and test splits: it is known when predicting `t`),
//!   the same weekday last week (`t - 7`, daily periods only) and the period
//!   mean (the training mean per area). A lag that is not in the data falls
//!   back to the period mean; the number of fallbacks is reported.
//!
//! Time indices follow the data pipeline's convention: for `risk`, 4-hour
//! blocks since 1970-01-01 (`day * 6 + block`, weekday `(day + 3) mod 7`,
//! 0 = Monday); for `counts`, periods (days or weeks) since the epoch.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::metrics::{CountMetrics, Metrics, RiskMetrics};
use super::TrainError;
use fedcrime_data::{Dataset, Period, Splits, Target};

/// One baseline's score on the evaluated split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineResult {
    /// Short name, e.g. `majority_class` or `last_period`.
    pub name: String,
    /// Samples predicted by the baseline's fallback rule rather than its main rule.
    pub fallbacks: usize,
    /// The metrics, as for a model.
    pub metrics: Metrics,
}

/// Weekday (0 = Monday) and 4-hour block (0..6) of a `risk` time index.
pub(crate) fn risk_weekday_block(time: u32) -> (u8, u8) {
    let day = (time / 6) as fedcrime_data::DayNumber;
    (
        fedcrime_data::calendar::weekday(day) as u8,
        (time % 6) as u8,
    )
}

/// Every naive baseline of the splits' task, scored on `eval` (usually
/// `&splits.test`; any dataset of the same task works). `period` is only read
/// for `counts`.
pub fn evaluate_baselines(
    splits: &Splits,
    eval: &Dataset,
    period: Period,
) -> Result<Vec<BaselineResult>, TrainError> {
    match (&splits.train.target, &eval.target) {
        (Target::Classes { .. }, Target::Classes { .. }) => risk_baselines(&splits.train, eval),
        (Target::Counts { .. }, Target::Counts { .. }) => count_baselines(splits, eval, period),
        _ => Err(TrainError::TaskMismatch {
            expected: splits.train.task,
            got: eval.task,
        }),
    }
}

fn classes<'a>(ds: &'a Dataset, split: &'static str) -> Result<(&'a [i64], usize), TrainError> {
    match &ds.target {
        Target::Classes {
            labels,
            num_classes,
        } => {
            if labels.len() != ds.time.len() || labels.len() != ds.area.len() {
                return Err(TrainError::Length {
                    what: split,
                    expected: ds.area.len(),
                    got: labels.len(),
                });
            }
            Ok((labels, *num_classes))
        }
        Target::Counts { .. } => Err(TrainError::TaskMismatch {
            expected: fedcrime_data::Task::Risk,
            got: ds.task,
        }),
    }
}

fn counts<'a>(ds: &'a Dataset, split: &'static str) -> Result<(&'a [f32], usize), TrainError> {
    match &ds.target {
        Target::Counts { values, dim } => {
            if values.len() != ds.area.len() * dim || ds.time.len() != ds.area.len() {
                return Err(TrainError::Length {
                    what: split,
                    expected: ds.area.len() * dim,
                    got: values.len(),
                });
            }
            Ok((values, *dim))
        }
        Target::Classes { .. } => Err(TrainError::TaskMismatch {
            expected: fedcrime_data::Task::Counts,
            got: ds.task,
        }),
    }
}

/// Index of the largest count; ties go to the class listed first in `order`.
fn argmax_by_order(counts: &[u64], order: &[usize]) -> usize {
    let mut best = order[0];
    for &c in order {
        if counts[c] > counts[best] {
            best = c;
        }
    }
    best
}

/// Majority class and (area, weekday, block) frequency baselines.
pub(crate) fn risk_baselines(
    train: &Dataset,
    eval: &Dataset,
) -> Result<Vec<BaselineResult>, TrainError> {
    let (train_y, k) = classes(train, "train labels")?;
    let (eval_y, k_eval) = classes(eval, "evaluated labels")?;
    if k == 0 || k != k_eval {
        return Err(TrainError::Length {
            what: "number of classes",
            expected: k,
            got: k_eval,
        });
    }
    if train_y.is_empty() {
        return Err(TrainError::EmptySplit { split: "train" });
    }
    let mut global = vec![0u64; k];
    for (row, &y) in train_y.iter().enumerate() {
        let c = usize::try_from(y)
            .ok()
            .filter(|&c| c < k)
            .ok_or(TrainError::ClassOutOfRange {
                what: "train label",
                row,
                value: y,
                num_classes: k,
            })?;
        global[c] += 1;
    }
    // Classes by global frequency, most frequent first (ties: lower class).
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by_key(|&c| std::cmp::Reverse(global[c]));
    let majority = order[0];

    let majority_pred = vec![majority as i64; eval_y.len()];
    let majority_metrics = RiskMetrics::compute(eval_y, &majority_pred, k)?;

    let mut cells: HashMap<(u8, u8, u8), Vec<u64>> = HashMap::new();
    for ((&y, &a), &t) in train_y.iter().zip(&train.area).zip(&train.time) {
        let (wd, b) = risk_weekday_block(t);
        cells.entry((a, wd, b)).or_insert_with(|| vec![0; k])[y as usize] += 1;
    }
    let mut fallbacks = 0;
    let hist_pred: Vec<i64> = eval
        .area
        .iter()
        .zip(&eval.time)
        .map(|(&a, &t)| {
            let (wd, b) = risk_weekday_block(t);
            match cells.get(&(a, wd, b)) {
                Some(c) => argmax_by_order(c, &order) as i64,
                None => {
                    fallbacks += 1;
                    majority as i64
                }
            }
        })
        .collect();
    let hist_metrics = RiskMetrics::compute(eval_y, &hist_pred, k)?;
    Ok(vec![
        BaselineResult {
            name: "majority_class".into(),
            fallbacks: 0,
            metrics: Metrics::Risk(majority_metrics),
        },
        BaselineResult {
            name: "historical_area_weekday_block".into(),
            fallbacks,
            metrics: Metrics::Risk(hist_metrics),
        },
    ])
}

/// Last-period, same-weekday-last-week (daily periods) and period-mean baselines.
pub(crate) fn count_baselines(
    splits: &Splits,
    eval: &Dataset,
    period: Period,
) -> Result<Vec<BaselineResult>, TrainError> {
    let (train_y, dim) = counts(&splits.train, "train counts")?;
    let (eval_y, eval_dim) = counts(eval, "evaluated counts")?;
    let (val_y, val_dim) = counts(&splits.val, "validation counts")?;
    let (test_y, test_dim) = counts(&splits.test, "test counts")?;
    for d in [eval_dim, val_dim, test_dim] {
        if d != dim {
            return Err(TrainError::Length {
                what: "count width",
                expected: dim,
                got: d,
            });
        }
    }
    if train_y.is_empty() {
        return Err(TrainError::EmptySplit { split: "train" });
    }

    // Period mean per area (and overall, for areas the training split lacks).
    let mut sums: HashMap<u8, (Vec<f64>, u64)> = HashMap::new();
    let mut overall = vec![0.0f64; dim];
    for (row, &a) in splits.train.area.iter().enumerate() {
        let e = sums.entry(a).or_insert_with(|| (vec![0.0; dim], 0));
        for (c, &v) in train_y[row * dim..(row + 1) * dim].iter().enumerate() {
            e.0[c] += f64::from(v);
            overall[c] += f64::from(v);
        }
        e.1 += 1;
    }
    let n_train = splits.train.area.len() as f64;
    let overall: Vec<f32> = overall.iter().map(|&s| (s / n_train) as f32).collect();
    let means: HashMap<u8, Vec<f32>> = sums
        .into_iter()
        .map(|(a, (s, n))| (a, s.iter().map(|&v| (v / n as f64) as f32).collect()))
        .collect();
    let mean_of = |a: u8| -> &[f32] { means.get(&a).map_or(&overall[..], |v| &v[..]) };

    // Every known (area, time) -> its target row, across the three splits.
    let mut known: HashMap<(u8, u32), &[f32]> =
        HashMap::with_capacity(splits.train.len() + splits.val.len() + splits.test.len());
    for (ds, ys) in [
        (&splits.train, train_y),
        (&splits.val, val_y),
        (&splits.test, test_y),
    ] {
        for (row, (&a, &t)) in ds.area.iter().zip(&ds.time).enumerate() {
            known.insert((a, t), &ys[row * dim..(row + 1) * dim]);
        }
    }

    let lagged = |lag: u32| -> (Vec<f32>, usize) {
        let mut pred = Vec::with_capacity(eval_y.len());
        let mut fallbacks = 0;
        for (&a, &t) in eval.area.iter().zip(&eval.time) {
            match t.checked_sub(lag).and_then(|p| known.get(&(a, p))) {
                Some(row) => pred.extend_from_slice(row),
                None => {
                    fallbacks += 1;
                    pred.extend_from_slice(mean_of(a));
                }
            }
        }
        (pred, fallbacks)
    };

    let mut out = Vec::new();
    let (pred, fallbacks) = lagged(1);
    out.push(BaselineResult {
        name: "last_period".into(),
        fallbacks,
        metrics: Metrics::Counts(CountMetrics::compute(eval_y, &pred, dim)?),
    });
    if period == Period::Day {
        let (pred, fallbacks) = lagged(7);
        out.push(BaselineResult {
            name: "same_weekday_last_week".into(),
            fallbacks,
            metrics: Metrics::Counts(CountMetrics::compute(eval_y, &pred, dim)?),
        });
    }
    let mut pred = Vec::with_capacity(eval_y.len());
    let mut fallbacks = 0;
    for &a in &eval.area {
        fallbacks += usize::from(!means.contains_key(&a));
        pred.extend_from_slice(mean_of(a));
    }
    out.push(BaselineResult {
        name: "period_mean".into(),
        fallbacks,
        metrics: Metrics::Counts(CountMetrics::compute(eval_y, &pred, dim)?),
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_data::Task;

    fn risk_ds(rows: &[(u8, u32, i64)]) -> Dataset {
        Dataset {
            task: Task::Risk,
            features: vec![0.0; rows.len()],
            feature_dim: 1,
            feature_names: vec!["x".into()],
            sequences: None,
            target: Target::Classes {
                labels: rows.iter().map(|r| r.2).collect(),
                num_classes: 5,
            },
            area: rows.iter().map(|r| r.0).collect(),
            time: rows.iter().map(|r| r.1).collect(),
        }
    }

    fn count_ds(rows: &[(u8, u32, [f32; 2])]) -> Dataset {
        Dataset {
            task: Task::Counts,
            features: vec![0.0; rows.len()],
            feature_dim: 1,
            feature_names: vec!["x".into()],
            sequences: None,
            target: Target::Counts {
                values: rows.iter().flat_map(|r| r.2).collect(),
                dim: 2,
            },
            area: rows.iter().map(|r| r.0).collect(),
            time: rows.iter().map(|r| r.1).collect(),
        }
    }

    #[test]
    fn weekday_and_block_follow_the_convention() {
        // 1970-01-01 was a Thursday (3); block 0.
        assert_eq!(risk_weekday_block(0), (3, 0));
        // Day 4 = 1970-01-05, a Monday; block 5 (20:00-24:00).
        assert_eq!(risk_weekday_block(4 * 6 + 5), (0, 5));
        // 2024-02-01 is day 19754, a Thursday.
        assert_eq!(risk_weekday_block(19754 * 6 + 2), (3, 2));
    }

    #[test]
    fn risk_baselines_use_training_frequencies() {
        // Monday (day 4) block 1 in area 1 is mostly level 4 (class 3); overall majority is class 0.
        let mon_b1 = 4 * 6 + 1;
        let next_mon_b1 = 11 * 6 + 1;
        let train = risk_ds(&[
            (1, mon_b1, 3),
            (1, next_mon_b1, 3),
            (1, mon_b1 + 1, 0),
            (2, mon_b1, 0),
            (2, mon_b1 + 2, 0),
            (3, mon_b1, 1),
        ]);
        let test = risk_ds(&[
            (1, 18 * 6 + 1, 3), // Monday block 1, area 1: history says class 3.
            (2, 18 * 6 + 1, 0), // Monday block 1, area 2: history says class 0.
            (4, 18 * 6 + 1, 2), // unseen area: falls back to majority (0).
        ]);
        let splits = Splits {
            train: train.clone(),
            val: risk_ds(&[]),
            test: test.clone(),
        };
        let r = evaluate_baselines(&splits, &test, Period::Day).unwrap();
        assert_eq!(r[0].name, "majority_class");
        let Metrics::Risk(m) = &r[0].metrics else {
            panic!("risk metrics expected")
        };
        assert!((m.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r[1].name, "historical_area_weekday_block");
        assert_eq!(r[1].fallbacks, 1);
        let Metrics::Risk(m) = &r[1].metrics else {
            panic!("risk metrics expected")
        };
        assert_eq!(m.confusion[3][3], 1);
        assert_eq!(m.confusion[0][0], 1);
        assert_eq!(m.confusion[2][0], 1);
    }

    #[test]
    fn count_baselines_look_up_lags_across_splits() {
        let train = count_ds(&[
            (1, 0, [1.0, 0.0]),
            (1, 1, [3.0, 2.0]),
            (2, 0, [10.0, 10.0]),
            (2, 1, [10.0, 10.0]),
        ]);
        let val = count_ds(&[(1, 7, [5.0, 5.0])]);
        let test = count_ds(&[
            (1, 8, [4.0, 4.0]), // last period = val's (1, 7) = [5, 5]; t - 7 = (1, 1) = [3, 2].
            (2, 8, [9.0, 9.0]), // no (2, 7): falls back to area 2's mean [10, 10]; t-7 = (2, 1).
            (3, 9, [1.0, 1.0]), // unknown area: overall train mean [6, 5.5].
        ]);
        let splits = Splits {
            train,
            val,
            test: test.clone(),
        };
        let r = count_baselines(&splits, &test, Period::Day).unwrap();
        let names: Vec<&str> = r.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            ["last_period", "same_weekday_last_week", "period_mean"]
        );
        let mae = |i: usize| match &r[i].metrics {
            Metrics::Counts(m) => m.mae,
            Metrics::Risk(_) => panic!("count metrics expected"),
        };
        // last_period: |4-5|*2 + |9-10|*2 + |1-6| + |1-5.5| = 4 + 9.5 = 13.5 over 6 values.
        assert_eq!(r[0].fallbacks, 2);
        assert!((mae(0) - 13.5 / 6.0).abs() < 1e-6, "{}", mae(0));
        // same weekday: |4-3| + |4-2| + |9-10| * 2 + (unknown area: 5 + 4.5) = 14.5 / 6.
        assert_eq!(r[1].fallbacks, 1);
        assert!((mae(1) - 14.5 / 6.0).abs() < 1e-6, "{}", mae(1));
        // period mean: area 1 mean [2, 1]: |4-2| + |4-1| = 5; area 2: 2; area 3: 9.5.
        assert_eq!(r[2].fallbacks, 1);
        assert!((mae(2) - 16.5 / 6.0).abs() < 1e-6, "{}", mae(2));

        let weekly = count_baselines(&splits, &test, Period::Week).unwrap();
        assert_eq!(weekly.len(), 2);
    }

    #[test]
    fn mismatched_tasks_and_empty_training_are_errors() {
        let splits = Splits {
            train: risk_ds(&[(1, 0, 0)]),
            val: risk_ds(&[]),
            test: risk_ds(&[]),
        };
        let counts = count_ds(&[(1, 0, [0.0, 0.0])]);
        assert!(matches!(
            evaluate_baselines(&splits, &counts, Period::Day),
            Err(TrainError::TaskMismatch { .. })
        ));
        let empty = Splits {
            train: risk_ds(&[]),
            val: risk_ds(&[]),
            test: risk_ds(&[(1, 0, 0)]),
        };
        assert!(matches!(
            evaluate_baselines(&empty, &empty.test, Period::Day),
            Err(TrainError::EmptySplit { split: "train" })
        ));
    }
}
