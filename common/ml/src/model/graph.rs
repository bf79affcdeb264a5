//! Samples for the graph model: sliding windows over the
//! `[areas, times, categories]` count tensor of the `counts` task
//! (`GraphSeries` of the data pipeline).
//!
//! One sample per target period `t`: the sequence view holds periods
//! `t - steps .. t` (all areas), the target the raw counts of period `t` for
//! every area and category, `[areas * categories]` in area-major order. Node
//! features per area and step: `ln(1 + count)` per category, then, for daily
//! periods, a one-hot weekday (0 = Monday) of that step.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};
use fedcrime_data::split::SplitPart;
use fedcrime_data::{Dataset, GraphSeries, Period, Sequences, Splits, Target, Task};

/// Default window length of the graph model (eight periods: for daily data
/// the same weekday a week earlier is inside the window).
pub const DEFAULT_GRAPH_STEPS: usize = 8;

/// How [`graph_dataset`] cuts windows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphWindows {
    /// Past periods per sample (the model's sequence length).
    pub steps: usize,
    /// Periods are days: add a one-hot weekday per step (7 node features).
    pub weekday: bool,
}

impl Default for GraphWindows {
    fn default() -> Self {
        GraphWindows {
            steps: DEFAULT_GRAPH_STEPS,
            weekday: true,
        }
    }
}

impl GraphWindows {
    /// [`DEFAULT_GRAPH_STEPS`] periods, with weekdays for daily periods.
    pub fn for_period(period: Period) -> Self {
        GraphWindows {
            steps: DEFAULT_GRAPH_STEPS,
            weekday: period == Period::Day,
        }
    }

    /// Node features per area and step for `categories` crime categories.
    pub(crate) fn node_features(&self, categories: usize) -> usize {
        categories + if self.weekday { 7 } else { 0 }
    }
}

/// The graph samples whose target period (in `Dataset::time` units, day or
/// week number) lies in `targets`, from `counts` `[areas, times,
/// categories]` whose first period is `time0`. Targets with fewer than
/// `steps` earlier periods in the tensor, or past its end, are skipped.
///
/// The result has no flat features (`feature_dim` 0) and `area` 0 for every
/// sample (each sample covers all areas).
pub fn graph_dataset(
    counts: &[f32],
    areas: usize,
    times: usize,
    categories: usize,
    time0: u32,
    targets: Range<u32>,
    windows: &GraphWindows,
) -> Result<Dataset> {
    if counts.len() != areas * times * categories {
        return Err(ModelError::Dataset(format!(
            "graph counts have {} values, {areas} areas x {times} periods x {categories} categories need {}",
            counts.len(),
            areas * times * categories
        )));
    }
    if windows.steps == 0 || areas == 0 || categories == 0 {
        return Err(ModelError::Dataset(format!(
            "graph windows need steps, areas and categories >= 1 (got {}, {areas}, {categories})",
            windows.steps
        )));
    }
    let first = time0
        .saturating_add(windows.steps as u32)
        .max(targets.start);
    let end = time0.saturating_add(times as u32).min(targets.end);
    let f = windows.node_features(categories);
    let step_dim = areas * f;
    let n = end.saturating_sub(first) as usize;
    let mut seq = Vec::with_capacity(n * windows.steps * step_dim);
    let mut values = Vec::with_capacity(n * areas * categories);
    let mut time = Vec::with_capacity(n);
    for t in first..end {
        let idx = (t - time0) as usize;
        for i in idx - windows.steps..idx {
            let weekday = (i64::from(time0) + i as i64 + 3).rem_euclid(7) as usize;
            for a in 0..areas {
                let row = &counts[(a * times + i) * categories..][..categories];
                seq.extend(row.iter().map(|&c| c.max(0.0).ln_1p()));
                if windows.weekday {
                    seq.extend((0..7).map(|d| if d == weekday { 1.0 } else { 0.0 }));
                }
            }
        }
        for a in 0..areas {
            values.extend_from_slice(&counts[(a * times + idx) * categories..][..categories]);
        }
        time.push(t);
    }
    Ok(Dataset {
        task: Task::Counts,
        features: Vec::new(),
        feature_dim: 0,
        feature_names: Vec::new(),
        sequences: Some(Sequences {
            data: seq,
            steps: windows.steps,
            step_dim,
        }),
        target: Target::Counts {
            values,
            dim: areas * categories,
        },
        area: vec![0; n],
        time,
    })
}

/// The train / validation / test graph datasets of a `counts` task's
/// [`GraphSeries`], each sample in the split of its target period (the same
/// temporal boundaries as the flat datasets). Windows may reach back into an
/// earlier split's periods: those are inputs known at prediction time.
pub fn graph_splits(series: &GraphSeries, windows: &GraphWindows) -> Result<Splits> {
    let part = |p: SplitPart| {
        graph_dataset(
            &series.counts,
            series.areas,
            series.times,
            series.categories,
            series.time0,
            series.bounds.window(p),
            windows,
        )
    };
    Ok(Splits {
        train: part(SplitPart::Train)?,
        val: part(SplitPart::Val)?,
        test: part(SplitPart::Test)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 areas, 5 days from day 4 (a Monday), 2 categories; value = 100a + 10t + c.
    fn counts() -> Vec<f32> {
        let mut v = Vec::new();
        for a in 0..2 {
            for t in 0..5 {
                for c in 0..2 {
                    v.push((100 * a + 10 * t + c) as f32);
                }
            }
        }
        v
    }

    #[test]
    fn windows_hold_the_past_and_targets_the_next_period() {
        let w = GraphWindows {
            steps: 2,
            weekday: true,
        };
        let ds = graph_dataset(&counts(), 2, 5, 2, 4, 0..100, &w).unwrap();
        // Targets need 2 earlier periods: days 6, 7, 8.
        assert_eq!(ds.time, [6, 7, 8]);
        let seq = ds.sequences.as_ref().unwrap();
        assert_eq!((seq.steps, seq.step_dim), (2, 2 * 9));
        // Sample 0, step 1 = day 5 (index 1, a Tuesday), area 1: node 3 of the sample.
        let node = &seq.data[3 * 9..][..9];
        assert!((node[0] - 110f32.ln_1p()).abs() < 1e-6);
        assert!((node[1] - 111f32.ln_1p()).abs() < 1e-6);
        assert_eq!(&node[2..], [0., 1., 0., 0., 0., 0., 0.]);
        let Target::Counts { values, dim } = &ds.target else {
            unreachable!()
        };
        assert_eq!(*dim, 4);
        // Day 6 = index 2.
        assert_eq!(&values[..4], [20., 21., 120., 121.]);
        assert_eq!(ds.area, [0, 0, 0]);
    }

    #[test]
    fn target_range_is_respected_and_bad_shapes_fail() {
        let w = GraphWindows {
            steps: 1,
            weekday: false,
        };
        let ds = graph_dataset(&counts(), 2, 5, 2, 4, 7..8, &w).unwrap();
        assert_eq!(ds.time, [7]);
        assert_eq!(
            ds.sequences.as_ref().unwrap().data,
            [20f32.ln_1p(), 21f32.ln_1p(), 120f32.ln_1p(), 121f32.ln_1p()]
        );
        let err = graph_dataset(&counts()[1..], 2, 5, 2, 4, 0..9, &w).unwrap_err();
        assert!(err.to_string().contains("19 values"), "{err}");
        let empty = graph_dataset(&counts(), 2, 5, 2, 4, 100..200, &w).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn splits_follow_the_series_bounds() {
        use fedcrime_data::{build_task, generate_incidents, TaskConfig};
        let incidents = generate_incidents(3_000, 5);
        let task = build_task(&incidents, &TaskConfig::new(Task::Counts)).unwrap();
        let g = task.graph.expect("counts tasks carry a graph series");
        let w = GraphWindows::for_period(Period::Day);
        let splits = graph_splits(&g, &w).unwrap();
        let b = g.bounds;
        let first = b.start.max(g.time0 + w.steps as u32);
        assert_eq!(splits.train.time.first(), Some(&first));
        assert!(splits.train.time.iter().all(|&t| t < b.val_start));
        assert_eq!(
            splits.val.time,
            (b.val_start..b.test_start).collect::<Vec<_>>()
        );
        assert_eq!(splits.test.time, (b.test_start..b.end).collect::<Vec<_>>());
        // Targets are the series' counts, area-major.
        let Target::Counts { values, dim } = &splits.test.target else {
            unreachable!()
        };
        assert_eq!(*dim, g.areas * g.categories);
        let step = (b.test_start - g.time0) as usize;
        for a in 0..g.areas {
            for c in 0..g.categories {
                assert_eq!(values[a * g.categories + c], g.get(a, step, c).unwrap());
            }
        }
        let cfg =
            crate::model::ModelConfig::for_dataset(crate::model::ModelKind::GatTcn, &splits.train);
        cfg.validate().unwrap();
        assert_eq!((cfg.areas, cfg.node_features()), (21, g.categories + 7));
    }
}
