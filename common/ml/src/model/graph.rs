//! Samples for the graph model: sliding windows over the
//! `[areas, times, categories]` count tensor of the `counts` task
//! (`GraphSeries` of the data pipeline), on all 21 LAPD areas or on a
//! subgraph of them ([`AreaGraph`], e.g. one bureau's areas at a bureau
//! station).
//!
//! One sample per target period `t`: the sequence view holds periods
//! `t - steps .. t` (every node of the graph), the target the raw counts of
//! period `t` for every node and category, `[nodes * categories]` in
//! node-major order. Node features per node and step, in this order:
//!
//! 1. `ln(1 + count)` per category of that step;
//! 2. `ln(1 + level)` per category: the node's *level*, its mean count per
//!    period over the training window (the same at every step and in every
//!    split; known at prediction time). The model adds it to its output as a
//!    per-node offset, which is what lets the same weights serve any number
//!    of nodes (see [`gat_tcn`](super::gat_tcn));
//! 3. for daily periods, a one-hot weekday (0 = Monday) of that step.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};
use fedcrime_data::areas::{adjacency, area, Bureau, AREAS, AREA_COUNT};
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

    /// Node features per area and step for `categories` crime categories:
    /// counts and levels per category, then the weekday (see the module doc).
    pub fn node_features(&self, categories: usize) -> usize {
        2 * categories + if self.weekday { 7 } else { 0 }
    }
}

/// The mean count per period of every area and category over the periods
/// of `window` that lie in `counts` `[areas, times, categories]` (first
/// period `time0`): the node levels of [`graph_dataset`], `[areas *
/// categories]`, area-major. All zero when the window holds no period.
pub fn area_levels(
    counts: &[f32],
    areas: usize,
    times: usize,
    categories: usize,
    time0: u32,
    window: Range<u32>,
) -> Vec<f32> {
    let first = window.start.max(time0);
    let end = window.end.min(time0.saturating_add(times as u32));
    let n = end.saturating_sub(first) as usize;
    let mut levels = vec![0f32; areas * categories];
    if n == 0 || counts.len() != areas * times * categories {
        return levels;
    }
    let from = (first - time0) as usize;
    for a in 0..areas {
        for c in 0..categories {
            let sum: f64 = (from..from + n)
                .map(|i| f64::from(counts[(a * times + i) * categories + c].max(0.0)))
                .sum();
            levels[a * categories + c] = (sum / n as f64) as f32;
        }
    }
    levels
}

/// The graph samples whose target period (in `Dataset::time` units, day or
/// week number) lies in `targets`, from `counts` `[areas, times,
/// categories]` whose first period is `time0`, with the node levels
/// `levels` `[areas * categories]` (see [`area_levels`]; normally the
/// training window's means). Targets with fewer than `steps` earlier periods
/// in the tensor, or past its end, are skipped.
///
/// The result has no flat features (`feature_dim` 0) and `area` 0 for every
/// sample (each sample covers all areas).
#[allow(clippy::too_many_arguments)]
pub fn graph_dataset(
    counts: &[f32],
    areas: usize,
    times: usize,
    categories: usize,
    time0: u32,
    targets: Range<u32>,
    levels: &[f32],
    windows: &GraphWindows,
) -> Result<Dataset> {
    if counts.len() != areas * times * categories {
        return Err(ModelError::Dataset(format!(
            "graph counts have {} values, {areas} areas x {times} periods x {categories} categories need {}",
            counts.len(),
            areas * times * categories
        )));
    }
    if levels.len() != areas * categories {
        return Err(ModelError::Dataset(format!(
            "{} node levels for {areas} areas x {categories} categories",
            levels.len()
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
    let level_features: Vec<f32> = levels.iter().map(|&l| l.max(0.0).ln_1p()).collect();
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
                seq.extend_from_slice(&level_features[a * categories..][..categories]);
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
/// [`GraphSeries`] over all its areas, each sample in the split of its
/// target period (the same temporal boundaries as the flat datasets), with
/// the levels of the training window. Windows may reach back into an
/// earlier split's periods: those are inputs known at prediction time.
pub fn graph_splits(series: &GraphSeries, windows: &GraphWindows) -> Result<Splits> {
    splits_of(&series.counts, series.areas, series, windows)
}

/// [`graph_splits`] of the rows `counts` (`areas` of them, same periods and
/// categories as `series`).
fn splits_of(
    counts: &[f32],
    areas: usize,
    series: &GraphSeries,
    windows: &GraphWindows,
) -> Result<Splits> {
    let levels = area_levels(
        counts,
        areas,
        series.times,
        series.categories,
        series.time0,
        series.bounds.window(SplitPart::Train),
    );
    let part = |p: SplitPart| {
        graph_dataset(
            counts,
            areas,
            series.times,
            series.categories,
            series.time0,
            series.bounds.window(p),
            &levels,
            windows,
        )
    };
    Ok(Splits {
        train: part(SplitPart::Train)?,
        val: part(SplitPart::Val)?,
        test: part(SplitPart::Test)?,
    })
}

/// The nodes of a graph model: LAPD areas (node `i` is area `codes()[i]`,
/// ascending) and the LAPD boundaries between them (0-based node indices).
///
/// [`AreaGraph::lapd`] is the whole city (21 nodes, every boundary); a
/// station that holds only some areas' records (a bureau) models the
/// subgraph *induced* by its areas: its nodes and the boundaries among them.
/// Boundaries to areas outside the station ([`AreaGraph::cut_edges`]) are
/// dropped: the station has no counts for the other side, and in a
/// federation nothing but weights leaves a station.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AreaGraph {
    codes: Vec<u8>,
    edges: Vec<(usize, usize)>,
}

impl AreaGraph {
    /// All 21 areas with every boundary ([`adjacency`]).
    pub fn lapd() -> Self {
        AreaGraph {
            codes: AREAS.iter().map(|a| a.code).collect(),
            edges: adjacency(),
        }
    }

    /// The subgraph induced by the area codes `codes` (any order,
    /// duplicates ignored): those nodes, ascending, and the boundaries among
    /// them. An unknown code or an empty list is an error.
    pub fn of_areas(codes: &[u8]) -> Result<Self> {
        if let Some(bad) = codes.iter().find(|&&c| area(c).is_none()) {
            return Err(ModelError::Dataset(format!(
                "{bad} is not an LAPD area code (1 to {AREA_COUNT})"
            )));
        }
        let mut codes = codes.to_vec();
        codes.sort_unstable();
        codes.dedup();
        if codes.is_empty() {
            return Err(ModelError::Dataset(
                "a graph needs at least one area".into(),
            ));
        }
        let node = |code: u8| codes.iter().position(|&c| c == code);
        let edges = adjacency()
            .into_iter()
            .filter_map(|(i, j)| Some((node(i as u8 + 1)?, node(j as u8 + 1)?)))
            .collect();
        Ok(AreaGraph { codes, edges })
    }

    /// The areas of one LAPD bureau and the boundaries among them.
    pub fn bureau(b: Bureau) -> Self {
        let codes: Vec<u8> = b.areas().map(|a| a.code).collect();
        AreaGraph::of_areas(&codes).expect("a bureau's areas are valid and never empty")
    }

    /// The area codes of the nodes, ascending.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether the graph has no node (never, for a constructed graph).
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The undirected edges `(i, j)`, `i < j`, as node indices.
    pub fn edges(&self) -> &[(usize, usize)] {
        &self.edges
    }

    /// The LAPD boundaries with one end inside this graph and one outside,
    /// as `(inside code, outside code)`: what a model of this subgraph
    /// cannot see.
    pub fn cut_edges(&self) -> Vec<(u8, u8)> {
        let inside = |c: u8| self.codes.contains(&c);
        adjacency()
            .into_iter()
            .map(|(i, j)| (i as u8 + 1, j as u8 + 1))
            .filter_map(|(a, b)| match (inside(a), inside(b)) {
                (true, false) => Some((a, b)),
                (false, true) => Some((b, a)),
                _ => None,
            })
            .collect()
    }

    /// The graph splits of this graph's nodes from a series over all 21
    /// areas (row `i` = area code `i + 1`, what [`build_task`] makes): the
    /// series' rows of these areas, their training-window levels, windows
    /// and targets as [`graph_splits`].
    ///
    /// [`build_task`]: fedcrime_data::build_task
    pub fn splits(&self, series: &GraphSeries, windows: &GraphWindows) -> Result<Splits> {
        if series.areas != AREA_COUNT {
            return Err(ModelError::Dataset(format!(
                "the series has {} areas, an area graph selects from the {AREA_COUNT} LAPD areas",
                series.areas
            )));
        }
        let block = series.times * series.categories;
        let mut counts = Vec::with_capacity(self.len() * block);
        for &code in &self.codes {
            let row = usize::from(code) - 1;
            counts.extend_from_slice(&series.counts[row * block..][..block]);
        }
        splits_of(&counts, self.len(), series, windows)
    }
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

    const LEVELS: [f32; 4] = [1.0, 2.0, 3.0, 4.0];

    #[test]
    fn windows_hold_the_past_and_targets_the_next_period() {
        let w = GraphWindows {
            steps: 2,
            weekday: true,
        };
        let ds = graph_dataset(&counts(), 2, 5, 2, 4, 0..100, &LEVELS, &w).unwrap();
        // Targets need 2 earlier periods: days 6, 7, 8.
        assert_eq!(ds.time, [6, 7, 8]);
        let seq = ds.sequences.as_ref().unwrap();
        assert_eq!((seq.steps, seq.step_dim), (2, 2 * 11));
        // Sample 0, step 1 = day 5 (index 1, a Tuesday), area 1: node 3 of the sample.
        let node = &seq.data[3 * 11..][..11];
        assert!((node[0] - 110f32.ln_1p()).abs() < 1e-6);
        assert!((node[1] - 111f32.ln_1p()).abs() < 1e-6);
        assert_eq!(&node[2..4], [3f32.ln_1p(), 4f32.ln_1p()]);
        assert_eq!(&node[4..], [0., 1., 0., 0., 0., 0., 0.]);
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
        let ds = graph_dataset(&counts(), 2, 5, 2, 4, 7..8, &LEVELS, &w).unwrap();
        assert_eq!(ds.time, [7]);
        let l = |v: f32| v.ln_1p();
        assert_eq!(
            ds.sequences.as_ref().unwrap().data,
            [l(20.), l(21.), l(1.), l(2.), l(120.), l(121.), l(3.), l(4.)]
        );
        let err = graph_dataset(&counts()[1..], 2, 5, 2, 4, 0..9, &LEVELS, &w).unwrap_err();
        assert!(err.to_string().contains("19 values"), "{err}");
        let err = graph_dataset(&counts(), 2, 5, 2, 4, 0..9, &LEVELS[1..], &w).unwrap_err();
        assert!(err.to_string().contains("3 node levels"), "{err}");
        let empty = graph_dataset(&counts(), 2, 5, 2, 4, 100..200, &LEVELS, &w).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn levels_are_window_means() {
        // Days 5 and 6 (indices 1, 2): area 0 category 1 = (11 + 21) / 2.
        let l = area_levels(&counts(), 2, 5, 2, 4, 5..7);
        assert_eq!(l, [15., 16., 115., 116.]);
        // Clipped to the tensor; empty windows give zeros.
        assert_eq!(
            area_levels(&counts(), 2, 5, 2, 4, 0..5),
            [0., 1., 100., 101.]
        );
        assert_eq!(area_levels(&counts(), 2, 5, 2, 4, 50..60), [0.; 4]);
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
        assert_eq!((cfg.areas, cfg.node_features()), (21, 2 * g.categories + 7));
    }

    #[test]
    fn bureau_graphs_keep_their_own_boundaries_and_cut_the_rest() {
        let all = adjacency();
        let mut kept = 0;
        let mut cut = std::collections::BTreeSet::new();
        for b in Bureau::ALL {
            let g = AreaGraph::bureau(b);
            assert_eq!(g.codes(), b.areas().map(|a| a.code).collect::<Vec<_>>());
            assert!((4..=7).contains(&g.len()), "{b}: {}", g.len());
            // Every bureau has internal boundaries (its attention can train).
            assert!(!g.edges().is_empty(), "{b} has no internal boundary");
            for &(i, j) in g.edges() {
                let (a, c) = (area(g.codes()[i]).unwrap(), area(g.codes()[j]).unwrap());
                assert!(i < j && a.bureau == b && c.bureau == b);
                assert!(a.neighbours.contains(&c.code), "{} - {}", a.name, c.name);
            }
            kept += g.edges().len();
            for (inside, outside) in g.cut_edges() {
                assert_eq!(area(inside).unwrap().bureau, b);
                assert_ne!(area(outside).unwrap().bureau, b, "cross-bureau edge kept");
                cut.insert((inside.min(outside), inside.max(outside)));
            }
        }
        // Internal plus cut boundaries are the whole city's, each once.
        assert_eq!(kept + cut.len(), all.len());
        assert!(!cut.is_empty());
        assert!(AreaGraph::lapd().cut_edges().is_empty());
        assert_eq!(AreaGraph::lapd().edges(), all.as_slice());
        // Harbor (5) touches only Southeast (18), both South bureau.
        let south = AreaGraph::bureau(Bureau::South);
        let node = |c: u8| south.codes().iter().position(|&x| x == c).unwrap();
        assert!(south.edges().contains(&(node(5), node(18))));
        assert!(AreaGraph::of_areas(&[22]).is_err());
        assert!(AreaGraph::of_areas(&[]).is_err());
        assert_eq!(AreaGraph::of_areas(&[3, 1, 3]).unwrap().codes(), [1, 3]);
    }

    #[test]
    fn subgraph_splits_are_the_full_graph_rows_of_their_areas() {
        use fedcrime_data::{build_task, generate_incidents, TaskConfig};
        let incidents = generate_incidents(4_000, 9);
        let task = build_task(&incidents, &TaskConfig::new(Task::Counts)).unwrap();
        let g = task.graph.unwrap();
        let w = GraphWindows::for_period(Period::Day);
        let full = graph_splits(&g, &w).unwrap();
        let west = AreaGraph::bureau(Bureau::West);
        let sub = west.splits(&g, &w).unwrap();
        let (c, f) = (g.categories, w.node_features(g.categories));
        for (a, b) in [(&full.train, &sub.train), (&full.test, &sub.test)] {
            assert_eq!(a.time, b.time);
            let (Target::Counts { values: va, .. }, Target::Counts { values: vb, dim }) =
                (&a.target, &b.target)
            else {
                unreachable!()
            };
            assert_eq!(*dim, west.len() * c);
            let (sa, sb) = (a.sequences.as_ref().unwrap(), b.sequences.as_ref().unwrap());
            assert_eq!(sb.step_dim, west.len() * f);
            for s in 0..a.len() {
                for (n, &code) in west.codes().iter().enumerate() {
                    let row = usize::from(code) - 1;
                    assert_eq!(
                        vb[(s * west.len() + n) * c..][..c],
                        va[(s * 21 + row) * c..][..c]
                    );
                    // Same node features (counts, level, weekday) at the last step.
                    let last = |seq: &Sequences, nodes: usize, node: usize| {
                        let step = (s * seq.steps + seq.steps - 1) * nodes * f;
                        seq.data[step + node * f..][..f].to_vec()
                    };
                    assert_eq!(last(sb, west.len(), n), last(sa, 21, row));
                }
            }
        }
    }
}
