//! The `risk` and `counts` tasks: cleaned incidents in, a temporal
//! train/validation/test split of model-ready samples out.
//!
//! Both tasks first count incidents on a dense grid `[area, time, category]`
//! over the full date range of the data (every area and time step, including
//! those without incidents), then compute each sample's features by index
//! arithmetic on that grid (see [`features`](super::features)).
//!
//! - `risk`: one sample per (area, date, 4-hour block). The label is the
//!   block's incident count binned into levels 1-5 by thresholds fit on the
//!   training split (see [`fit_risk_thresholds`](super::features::fit_risk_thresholds)
//!   for the tie rule), stored as `level - 1` in `0..5`. The sequence view holds
//!   the previous `lags` (4) blocks' per-category counts.
//! - `counts`: one sample per (area, period), the period a day or a week
//!   (Monday to Sunday; only weeks that lie entirely inside the data's date
//!   range are used, so partial weeks at either end are left out). The target
//!   is the period's raw per-category counts (f32, unscaled); the inputs are
//!   the previous `lags` (4) periods' per-category vectors (as the sequence view
//!   and flattened in the features) plus calendar and area features.
//!
//! Samples whose lagged inputs would reach before the first time step of the
//! data are dropped (the first 7 days for `risk` and daily `counts`, the first
//! `lags` weeks for weekly `counts`): zero-filling them would fake quiet
//! periods. [`Dataset::time`](super::dataset::Dataset::time) follows the workspace convention: 4-hour blocks
//! since 1970-01-01 (`day * 6 + block`) for `risk`, days since 1970-01-01 or
//! weeks since Monday 1970-01-05 for `counts`; a sample's time is the time step
//! it predicts. Rows are ordered by (time, area code).

use serde::{Deserialize, Serialize};

use super::areas::{area, AREA_COUNT};
use super::categories::Category;
use super::dataset::{Splits, Task};
use super::error::DataError;
use super::features::{date_range, Featurizer, Layout, BLOCKS_PER_DAY};
use super::record::Incident;
use super::split::{check_temporal_order, SplitBounds, SplitFractions, SplitPart};

/// The period of the `counts` task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// One calendar day.
    #[default]
    Day,
    /// One week, Monday to Sunday.
    Week,
}

impl Period {
    /// The name used on the command line and in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
        }
    }

    /// The week index (weeks since Monday 1970-01-05) of a day number.
    pub(crate) fn week_of_day(day: i64) -> i64 {
        (day - 4).div_euclid(7)
    }

    /// The day number of the Monday starting week `week`.
    pub(crate) fn week_monday(week: u32) -> i64 {
        4 + 7 * i64::from(week)
    }
}

impl std::str::FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            other => Err(format!("unknown period {other:?} (expected day or week)")),
        }
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The time step of a task's samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// 4-hour blocks since 1970-01-01 00:00 (`risk`).
    Block,
    /// Days since 1970-01-01 (`counts` by day).
    Day,
    /// Weeks since Monday 1970-01-05 (`counts` by week).
    Week,
}

impl TimeUnit {
    /// The time unit of `task` with `period` (`risk` is always blocks).
    pub fn of(task: Task, period: Period) -> Self {
        match (task, period) {
            (Task::Risk, _) => TimeUnit::Block,
            (Task::Counts, Period::Day) => TimeUnit::Day,
            (Task::Counts, Period::Week) => TimeUnit::Week,
        }
    }

    /// `"block"`, `"day"` or `"week"`.
    pub fn name(self) -> &'static str {
        match self {
            TimeUnit::Block => "block",
            TimeUnit::Day => "day",
            TimeUnit::Week => "week",
        }
    }

    /// The time step holding day number `day` at `minute` after midnight
    /// (`None` before 1970 or past the index range).
    pub fn step_of(self, day: i64, minute: u16) -> Option<u32> {
        let t = match self {
            TimeUnit::Block => day * i64::from(BLOCKS_PER_DAY) + i64::from(minute / 240),
            TimeUnit::Day => day,
            TimeUnit::Week => Period::week_of_day(day),
        };
        u32::try_from(t).ok()
    }

    /// The first day number of time step `t`.
    pub fn first_day(self, t: u32) -> i64 {
        match self {
            TimeUnit::Block => i64::from(t / BLOCKS_PER_DAY),
            TimeUnit::Day => i64::from(t),
            TimeUnit::Week => Period::week_monday(t),
        }
    }
}

/// How to build a task.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// `risk` or `counts`.
    pub task: Task,
    /// Day or week (`counts` only; `risk` always uses 4-hour blocks).
    pub period: Period,
    /// Previous time steps in the sequence view (and `counts`' flattened lags), 4 by default.
    pub lags: usize,
    /// The temporal split.
    pub split: SplitFractions,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            task: Task::Risk,
            period: Period::Day,
            lags: 4,
            split: SplitFractions::default(),
        }
    }
}

impl TaskConfig {
    /// The default configuration of `task` (`counts` by day).
    pub fn new(task: Task) -> Self {
        TaskConfig {
            task,
            ..TaskConfig::default()
        }
    }

    /// Checks lags and split fractions.
    pub fn validate(&self) -> Result<(), DataError> {
        if !(1..=64).contains(&self.lags) {
            return Err(DataError::config(
                "lags",
                format!("{} (expected 1 to 64)", self.lags),
            ));
        }
        self.split.validate()
    }
}

/// A dense count tensor `[areas, times, categories]` for the graph model, over
/// the full time range of the task (lag warm-up included), with the same
/// temporal split as the flat datasets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphSeries {
    /// Number of areas (21; row `i` is area code `i + 1`).
    pub areas: usize,
    /// Number of time steps.
    pub times: usize,
    /// Number of crime categories (8).
    pub categories: usize,
    /// Raw incident counts, row-major `[areas, times, categories]`.
    pub counts: Vec<f32>,
    /// The time index (the [`Dataset::time`](super::dataset::Dataset::time)
    /// convention) of time step 0.
    pub time0: u32,
    /// The split of the flat datasets: a model predicting time `t` belongs to
    /// the split of `t`; `bounds.start - time0` steps of history precede the
    /// first sample.
    pub bounds: SplitBounds,
}

impl GraphSeries {
    /// The count of area index `a`, time step `ti`, category `c`, if in range.
    pub fn get(&self, a: usize, ti: usize, c: usize) -> Option<f32> {
        if a >= self.areas || ti >= self.times || c >= self.categories {
            return None;
        }
        self.counts
            .get((a * self.times + ti) * self.categories + c)
            .copied()
    }

    /// The time step of time index `t`, if inside the series.
    pub fn step_of(&self, t: u32) -> Option<usize> {
        let ti = t.checked_sub(self.time0)? as usize;
        (ti < self.times).then_some(ti)
    }

    /// The time-step range `[from, to)` of one split's prediction targets.
    pub fn steps(&self, part: SplitPart) -> std::ops::Range<usize> {
        let w = self.bounds.window(part);
        (w.start - self.time0) as usize..(w.end - self.time0) as usize
    }
}

/// A built task: the split datasets, the featurizer fit on the training split
/// (save it with the model), and the count tensor for graph models.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskData {
    /// Train, validation and test samples.
    pub splits: Splits,
    /// Scalers, thresholds, densities and feature names, fit on the training split.
    pub featurizer: Featurizer,
    /// The `[areas, times, categories]` count tensor.
    pub graph: Option<GraphSeries>,
}

/// Builds `cfg.task` from cleaned incidents (any order): the count grid, the
/// temporal split, the featurizer fit on the training window, and the scaled
/// train/validation/test datasets (see the module doc).
pub fn build_task(incidents: &[Incident], cfg: &TaskConfig) -> Result<TaskData, DataError> {
    cfg.validate()?;
    let unit = TimeUnit::of(cfg.task, cfg.period);
    let grid = CountGrid::build(incidents, unit)?;
    let max_lag = Layout::new(cfg.task, cfg.period, cfg.lags).max_lag();
    let available = grid.times.saturating_sub(max_lag as usize);
    if available < 3 {
        return Err(DataError::NotEnoughData {
            what: format!(
                "{} {}s of data; {} needs {max_lag} {}s of history plus one each for train, val and test",
                grid.times,
                unit.name(),
                cfg.task,
                unit.name()
            ),
        });
    }
    let bounds = SplitBounds::compute(grid.t0 + max_lag, grid.end(), &cfg.split)?;
    let (featurizer, train_raw) = Featurizer::fit(cfg.task, cfg.period, cfg.lags, &grid, bounds);
    let splits = Splits {
        train: featurizer.dataset(&grid, bounds.window(SplitPart::Train), Some(train_raw)),
        val: featurizer.dataset(&grid, bounds.window(SplitPart::Val), None),
        test: featurizer.dataset(&grid, bounds.window(SplitPart::Test), None),
    };
    check_temporal_order(&splits)?;
    tracing::debug!(
        task = %cfg.task,
        unit = unit.name(),
        train = splits.train.len(),
        val = splits.val.len(),
        test = splits.test.len(),
        features = featurizer.feature_dim(),
        "built task"
    );
    let graph = grid.to_graph(bounds);
    Ok(TaskData {
        splits,
        featurizer,
        graph: Some(graph),
    })
}

/// Incident counts on the dense grid `[area, time, category]`.
#[derive(Clone, Debug)]
pub(crate) struct CountGrid {
    /// Time index of step 0.
    pub(crate) t0: u32,
    /// Number of time steps.
    pub(crate) times: usize,
    /// `[area][time][category]`.
    counts: Vec<u32>,
    /// `[area][time]` totals over categories.
    totals: Vec<u32>,
    /// `[area][time + 1]` prefix sums of `totals`.
    cumulative: Vec<u64>,
}

impl CountGrid {
    /// Counts `incidents` per area, time step of `unit` and category over the
    /// date range of the incidents (for weeks: the weeks entirely inside it).
    pub(crate) fn build(incidents: &[Incident], unit: TimeUnit) -> Result<Self, DataError> {
        let (first, last) = date_range(incidents).ok_or_else(|| DataError::NotEnoughData {
            what: "no incidents".into(),
        })?;
        if first < 0 {
            return Err(DataError::config(
                "incident dates",
                format!("day number {first} is before 1970-01-01"),
            ));
        }
        let (first, last) = (i64::from(first), i64::from(last));
        let (t0, t_end) = match unit {
            TimeUnit::Block => (first * 6, (last + 1) * 6),
            TimeUnit::Day => (first, last + 1),
            // Weeks entirely inside [first, last].
            TimeUnit::Week => (
                Period::week_of_day(first + 6),
                Period::week_of_day(last + 1),
            ),
        };
        let t0 = u32::try_from(t0).map_err(|_| {
            DataError::config(
                "incident dates",
                format!("day number {first} is out of range"),
            )
        })?;
        let times = (t_end - i64::from(t0)).max(0) as usize;
        let cats = Category::COUNT;
        let mut counts = vec![0u32; AREA_COUNT * times * cats];
        let mut totals = vec![0u32; AREA_COUNT * times];
        for inc in incidents {
            let a = match area(inc.area) {
                Some(info) => info.index(),
                None => {
                    return Err(DataError::config(
                        format!("incident DR_NO {} area", inc.dr_no),
                        format!("unknown area code {}", inc.area),
                    ))
                }
            };
            if inc.minute_of_day >= 24 * 60 {
                return Err(DataError::config(
                    format!("incident DR_NO {} minute_of_day", inc.dr_no),
                    format!("{} is not a minute of the day", inc.minute_of_day),
                ));
            }
            let day = i64::from(inc.date_occurred);
            let t = match unit {
                TimeUnit::Block => day * 6 + i64::from(inc.block()),
                TimeUnit::Day => day,
                TimeUnit::Week => Period::week_of_day(day),
            };
            let ti = t - i64::from(t0);
            if ti < 0 || ti >= times as i64 {
                continue; // a partial week at either end
            }
            let ti = ti as usize;
            counts[(a * times + ti) * cats + inc.category.index()] += 1;
            totals[a * times + ti] += 1;
        }
        let mut cumulative = vec![0u64; AREA_COUNT * (times + 1)];
        for a in 0..AREA_COUNT {
            let row = &mut cumulative[a * (times + 1)..(a + 1) * (times + 1)];
            for ti in 0..times {
                row[ti + 1] = row[ti] + u64::from(totals[a * times + ti]);
            }
        }
        Ok(CountGrid {
            t0,
            times,
            counts,
            totals,
            cumulative,
        })
    }

    /// The same grid with `extra` empty time steps after its end (the
    /// periods to predict, whose counts are not known yet).
    pub(crate) fn extended(&self, extra: usize) -> CountGrid {
        if extra == 0 {
            return self.clone();
        }
        let (times, cats) = (self.times + extra, Category::COUNT);
        let mut counts = vec![0u32; AREA_COUNT * times * cats];
        let mut totals = vec![0u32; AREA_COUNT * times];
        let mut cumulative = vec![0u64; AREA_COUNT * (times + 1)];
        for a in 0..AREA_COUNT {
            let (old, new) = (a * self.times, a * times);
            counts[new * cats..(new + self.times) * cats]
                .copy_from_slice(&self.counts[old * cats..(old + self.times) * cats]);
            totals[new..new + self.times].copy_from_slice(&self.totals[old..old + self.times]);
            let last = self.cumulative[a * (self.times + 1) + self.times];
            let row = &mut cumulative[a * (times + 1)..(a + 1) * (times + 1)];
            row[..=self.times].copy_from_slice(
                &self.cumulative[a * (self.times + 1)..(a + 1) * (self.times + 1)],
            );
            row[self.times + 1..].fill(last);
        }
        CountGrid {
            t0: self.t0,
            times,
            counts,
            totals,
            cumulative,
        }
    }

    /// One past the last time index.
    pub(crate) fn end(&self) -> u32 {
        self.t0 + self.times as u32
    }

    /// The per-category counts of area index `a` at time `t` (inside the grid).
    #[inline]
    pub(crate) fn cell(&self, a: usize, t: u32) -> &[u32] {
        let i = (a * self.times + (t - self.t0) as usize) * Category::COUNT;
        &self.counts[i..i + Category::COUNT]
    }

    /// The total count of area index `a` at time `t` (inside the grid).
    #[inline]
    pub(crate) fn total(&self, a: usize, t: u32) -> u32 {
        self.totals[a * self.times + (t - self.t0) as usize]
    }

    /// The total count of area index `a` over times `[from, to)` (inside the grid).
    #[inline]
    pub(crate) fn sum_totals(&self, a: usize, from: u32, to: u32) -> u64 {
        let row = a * (self.times + 1);
        self.cumulative[row + (to - self.t0) as usize]
            - self.cumulative[row + (from - self.t0) as usize]
    }

    /// The grid as a graph series with the split `bounds`.
    fn to_graph(&self, bounds: SplitBounds) -> GraphSeries {
        GraphSeries {
            areas: AREA_COUNT,
            times: self.times,
            categories: Category::COUNT,
            counts: self.counts.iter().map(|&c| c as f32).collect(),
            time0: self.t0,
            bounds,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::dataset::{Dataset, Target};

    /// The calendar's day number of a date, as these tests count days (i64).
    fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
        i64::from(crate::calendar::days_from_civil(y, m, d))
    }
    use crate::split::check_temporal_order;

    /// A hand-made cleaned incident.
    pub(crate) fn incident(dr_no: u64, day: i64, minute: u16, area: u8, cat: Category) -> Incident {
        Incident {
            dr_no,
            date_reported: day as i32,
            date_occurred: day as i32,
            minute_of_day: minute,
            area,
            reporting_district: u16::from(area) * 100 + 1,
            part: 1,
            crime_code: 330,
            category: cat,
            victim_age: None,
            victim_sex: None,
            victim_descent: None,
            premise_code: None,
            weapon_code: None,
            lat: 34.0,
            lon: -118.3,
        }
    }

    /// `n` random incidents over `days` days from 2023-01-02 (a Monday); area
    /// `a` is `a` times as busy as area 1.
    pub(crate) fn random_incidents(n: usize, days: i64, seed: u64) -> Vec<Incident> {
        let start = days_from_civil(2023, 1, 2);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let weights: u32 = (1..=21).sum();
        (0..n)
            .map(|i| {
                let mut pick = rng.random_range(0..weights);
                let mut area = 1u8;
                while pick >= u32::from(area) {
                    pick -= u32::from(area);
                    area += 1;
                }
                let cat = Category::ALL[rng.random_range(0..Category::COUNT)];
                let day = start + rng.random_range(0..days);
                incident(i as u64 + 1, day, rng.random_range(0..1440), area, cat)
            })
            .collect()
    }

    fn all_in_unit_range(ds: &Dataset) -> bool {
        ds.features.iter().all(|v| (0.0..=1.0).contains(v))
            && ds
                .sequences
                .as_ref()
                .is_some_and(|s| s.data.iter().all(|v| (0.0..=1.0).contains(v)))
    }

    #[test]
    fn risk_is_the_full_grid_after_the_lag_warm_up() {
        let incidents = random_incidents(20_000, 30, 1);
        let data = build_task(&incidents, &TaskConfig::new(Task::Risk)).unwrap();
        let s = &data.splits;
        let day0 = days_from_civil(2023, 1, 2) as u32;
        // 30 days of 6 blocks, the first 7 days (42 blocks) dropped for lags.
        let times = 30 * 6 - 42;
        assert_eq!(s.train.len() + s.val.len() + s.test.len(), 21 * times);
        assert_eq!(data.featurizer.bounds.start, day0 * 6 + 42);
        assert_eq!(data.featurizer.bounds.end, (day0 + 30) * 6);
        assert_eq!(s.train.time[0], day0 * 6 + 42);
        // Rows ordered by (time, area), every area at every time.
        for ds in [&s.train, &s.val, &s.test] {
            assert_eq!(ds.len() % 21, 0);
            for (r, (&a, &t)) in ds.area.iter().zip(&ds.time).enumerate() {
                assert_eq!(usize::from(a), r % 21 + 1);
                assert_eq!(t, ds.time[0] + (r / 21) as u32);
            }
            assert_eq!(ds.feature_dim, ds.feature_names.len());
            assert_eq!(ds.features.len(), ds.len() * ds.feature_dim);
            assert!(all_in_unit_range(ds));
            let seq = ds.sequences.as_ref().unwrap();
            assert_eq!((seq.steps, seq.step_dim), (4, 8));
            assert_eq!(seq.data.len(), ds.len() * 32);
            match &ds.target {
                Target::Classes {
                    labels,
                    num_classes,
                } => {
                    assert_eq!(*num_classes, 5);
                    assert_eq!(labels.len(), ds.len());
                    assert!(labels.iter().all(|l| (0..5).contains(l)));
                }
                other => panic!("risk target {other:?}"),
            }
        }
        check_temporal_order(s).unwrap();
        // Busy areas have higher levels: classes are used and fairly balanced.
        let Target::Classes { labels, .. } = &s.train.target else {
            unreachable!()
        };
        let mut hist = [0usize; 5];
        for &l in labels {
            hist[l as usize] += 1;
        }
        assert!(hist.iter().all(|&h| h * 12 > labels.len()), "{hist:?}");
        let g = data.graph.unwrap();
        assert_eq!((g.areas, g.times, g.categories), (21, 180, 8));
        assert_eq!(g.counts.iter().sum::<f32>() as usize, incidents.len());
        assert_eq!(g.steps(SplitPart::Train).start, 42);
        assert_eq!(g.steps(SplitPart::Test).end, 180);
    }

    #[test]
    fn risk_labels_and_lags_read_the_right_cells() {
        let day0 = days_from_civil(2023, 1, 2); // a Monday
        let mut incidents = Vec::new();
        let mut dr = 0;
        let mut add = |day: i64, block: u16, area: u8, cat: Category, n: usize| {
            for _ in 0..n {
                dr += 1;
                incidents.push(incident(dr, day, block * 240 + 17, area, cat));
            }
        };
        // Background so that every day exists: one theft a day in area 21.
        for d in 0..20 {
            add(day0 + d, 0, 21, Category::Theft, 1);
        }
        // Area 3, day 10: block 2 has 5 robberies, block 3 has 2 vehicle crimes.
        add(day0 + 10, 2, 3, Category::Robbery, 5);
        add(day0 + 10, 3, 3, Category::Vehicle, 2);
        // Area 3, day 3 (7 days before day 10), block 4: 4 burglaries.
        add(day0 + 3, 4, 3, Category::Burglary, 4);
        let cfg = TaskConfig::new(Task::Risk);
        let grid = CountGrid::build(&incidents, TimeUnit::Block).unwrap();
        let bounds = SplitBounds::compute(grid.t0 + 42, grid.end(), &cfg.split).unwrap();
        let (f, _) = Featurizer::fit(Task::Risk, Period::Day, 4, &grid, bounds);
        let t = ((day0 + 10) * 6 + 4) as u32; // area 3, day 10, block 4 (16:00-20:00)
        let raw = f.raw_features(&grid, t..t + 1);
        let row = &raw[2 * f.feature_dim()..3 * f.feature_dim()];
        let col = |name: &str| row[f.feature_names.iter().position(|n| n == name).unwrap()];
        assert_eq!(col("weekday"), 3.0, "day0 + 10 is a Thursday");
        assert_eq!(col("hour"), 16.0);
        assert_eq!(col("day_of_year"), 12.0);
        assert_eq!(col("lag1"), 2.0);
        assert_eq!(col("lag2"), 5.0);
        assert_eq!(col("lag3"), 0.0);
        assert_eq!(col("lag42"), 4.0);
        assert!((col("same_block_mean_7d") - 4.0 / 7.0).abs() < 1e-6);
        assert!((col("mean_7d") - 11.0 / 42.0).abs() < 1e-6);
        assert!((col("mix_prev_day.robbery") - 5.0 / 7.0).abs() < 1e-6);
        assert!((col("mix_prev_day.vehicle") - 2.0 / 7.0).abs() < 1e-6);
        assert_eq!(col("mix_prev_day.theft"), 0.0);
        assert_eq!(col("area_03"), 1.0);
        assert_eq!(col("area_04"), 0.0);
        let a3 = crate::areas::area(3).unwrap();
        assert_eq!((col("lat"), col("lon")), a3.centroid);
        // 11 incidents in area 3, all in the training window.
        assert!(bounds.val_start > t);
        assert!((col("density") - 11.0 / a3.km2).abs() < 1e-4);

        // The sequence view of the same sample: blocks t-4 .. t-1, oldest first.
        let ds = f.dataset(&grid, t..t + 1, None);
        let seq = &ds.sequences.as_ref().unwrap().data[2 * 32..3 * 32];
        let robbery = Category::Robbery.index();
        let vehicle = Category::Vehicle.index();
        assert!(seq[2 * 8 + robbery] > 0.99, "block 2 is step 3 of 4");
        assert!(seq[3 * 8 + vehicle] > 0.0);
        assert_eq!(seq[..2 * 8].iter().sum::<f32>(), 0.0);
        // The label of the 5-robbery block is the top level present.
        let t2 = ((day0 + 10) * 6 + 2) as u32;
        let ds2 = f.dataset(&grid, t2..t2 + 1, None);
        let Target::Classes { labels, .. } = &ds2.target else {
            unreachable!()
        };
        let expected = crate::features::risk_level(&f.risk_thresholds, 5) - 1;
        assert_eq!(labels[2], i64::from(expected));
        assert_eq!(labels[0], 0, "area 1 had nothing");
    }

    #[test]
    fn nothing_is_fit_on_validation_or_test_data() {
        let incidents = random_incidents(15_000, 40, 2);
        let cfgs = [
            TaskConfig::new(Task::Risk),
            TaskConfig {
                task: Task::Counts,
                period: Period::Day,
                ..TaskConfig::default()
            },
            TaskConfig {
                task: Task::Counts,
                period: Period::Week,
                lags: 1,
                ..TaskConfig::default()
            },
        ];
        for cfg in cfgs {
            let base = build_task(&incidents, &cfg).unwrap();
            let unit = TimeUnit::of(cfg.task, cfg.period);
            let val_start = base.featurizer.bounds.val_start;
            // A crime wave on every day after the first validation day.
            let first_val_day = unit.first_day(val_start) + 1;
            let (_, last_day) = date_range(&incidents).unwrap();
            let mut more = incidents.clone();
            for day in first_val_day..=i64::from(last_day) {
                for k in 0..200u64 {
                    let area = (k % 21) as u8 + 1;
                    more.push(incident(
                        1_000_000 + day as u64 * 1000 + k,
                        day,
                        600,
                        area,
                        Category::Violent,
                    ));
                }
            }
            let wave = build_task(&more, &cfg).unwrap();
            assert_eq!(
                base.featurizer, wave.featurizer,
                "{cfg:?}: featurizer saw the future"
            );
            assert_eq!(
                base.splits.train, wave.splits.train,
                "{cfg:?}: train split changed"
            );
            assert_ne!(
                base.splits.test, wave.splits.test,
                "{cfg:?}: the wave is visible in test"
            );
            check_temporal_order(&wave.splits).unwrap();
            // Out-of-range values at test time are clamped.
            assert!(all_in_unit_range(&wave.splits.test));
        }
    }

    #[test]
    fn counts_targets_are_raw_next_period_counts() {
        let incidents = random_incidents(8_000, 60, 3);
        let cfg = TaskConfig {
            task: Task::Counts,
            ..TaskConfig::default()
        };
        let data = build_task(&incidents, &cfg).unwrap();
        let grid = CountGrid::build(&incidents, TimeUnit::Day).unwrap();
        let day0 = days_from_civil(2023, 1, 2) as u32;
        assert_eq!(grid.t0, day0);
        let f = &data.featurizer;
        assert_eq!(f.bounds.start, day0 + 7, "lag7 needs a week of history");
        for ds in [&data.splits.train, &data.splits.val, &data.splits.test] {
            assert!(all_in_unit_range(ds));
            let Target::Counts { values, dim } = &ds.target else {
                panic!("counts target")
            };
            assert_eq!(*dim, 8);
            let seq = ds.sequences.as_ref().unwrap();
            for r in 0..ds.len() {
                let (a, t) = (usize::from(ds.area[r]) - 1, ds.time[r]);
                let cell: Vec<f32> = grid.cell(a, t).iter().map(|&v| v as f32).collect();
                assert_eq!(&values[r * 8..(r + 1) * 8], cell.as_slice());
                // The sequence's last step is the previous day, scaled per category.
                for c in 0..8 {
                    let prev = grid.cell(a, t - 1)[c] as f32;
                    let s = seq.data[r * 32 + 3 * 8 + c];
                    assert!((s - f.sequence_scaler.scale(c, prev)).abs() < 1e-6);
                }
            }
        }
        // The flattened lags are in the features, in sequence order.
        let names = &f.feature_names;
        let lag4 = names.iter().position(|n| n == "lag4.violent").unwrap();
        let lag1 = names.iter().position(|n| n == "lag1.other").unwrap();
        assert_eq!(lag1 - lag4 + 1, 32);
        assert!(names.iter().any(|n| n == "lag7.theft"));
        assert!(names.iter().any(|n| n == "mean7.theft"));
        let g = data.graph.as_ref().unwrap();
        assert_eq!(g.times, 60);
        assert_eq!(g.get(20, 59, 7), Some(grid.cell(20, day0 + 59)[7] as f32));
        assert_eq!(g.get(21, 0, 0), None);
    }

    #[test]
    fn weeks_are_whole_weeks_since_monday_1970_01_05() {
        // 2023-01-04 (a Wednesday) .. 2023-03-31 (a Friday).
        let start = days_from_civil(2023, 1, 4);
        let end = days_from_civil(2023, 3, 31);
        let mut incidents: Vec<Incident> = (start..=end)
            .map(|d| incident(d as u64, d, 60, 1, Category::Theft))
            .collect();
        incidents.push(incident(1, start, 60, 2, Category::Robbery));
        let grid = CountGrid::build(&incidents, TimeUnit::Week).unwrap();
        let first_monday = days_from_civil(2023, 1, 9);
        assert_eq!(Period::week_monday(grid.t0), first_monday);
        // Last whole week: Monday 2023-03-20 .. Sunday 03-26.
        assert_eq!(
            Period::week_monday(grid.end() - 1),
            days_from_civil(2023, 3, 20)
        );
        for t in grid.t0..grid.end() {
            assert_eq!(grid.total(0, t), 7, "week {t}");
            assert_eq!(grid.total(1, t), 0, "the partial first week is left out");
        }
        let cfg = TaskConfig {
            task: Task::Counts,
            period: Period::Week,
            ..TaskConfig::default()
        };
        let data = build_task(&incidents, &cfg).unwrap();
        assert_eq!(data.splits.train.time[0], grid.t0 + 4);
        assert_eq!(Period::week_of_day(first_monday), i64::from(grid.t0));
        assert_eq!(Period::week_of_day(4), 0);
        assert_eq!(Period::week_of_day(3), -1);
    }

    #[test]
    fn the_next_period_is_featured_from_history_alone() {
        let incidents = random_incidents(10_000, 60, 9);
        for task in [Task::Risk, Task::Counts] {
            let data = build_task(&incidents, &TaskConfig::new(task)).unwrap();
            let f = &data.featurizer;
            let all = f.transform(&incidents).unwrap();
            let unit = f.time_unit();
            let last_day = incidents.iter().map(|i| i.date_occurred).max().unwrap();
            // The first step of the last day: featured with and without that
            // day's incidents, its rows must be the same (features look back).
            let t = unit.step_of(i64::from(last_day), 0).unwrap();
            let history: Vec<Incident> = incidents
                .iter()
                .filter(|i| i.date_occurred < last_day)
                .cloned()
                .collect();
            let next = f.rows_at(&history, t).unwrap();
            assert_eq!(next.len(), AREA_COUNT, "{task}");
            assert!(next.time.iter().all(|&x| x == t));
            let rows: Vec<usize> = (0..all.len()).filter(|&r| all.time[r] == t).collect();
            let known = all.subset(&rows);
            assert_eq!(next.features, known.features, "{task}: features");
            assert_eq!(next.sequences, known.sequences, "{task}: sequences");
            assert_eq!(next.area, known.area);
            // Inside the data the rows are the training featurization's.
            let inside = f.rows_at(&incidents, t - 1).unwrap();
            let rows: Vec<usize> = (0..all.len()).filter(|&r| all.time[r] == t - 1).collect();
            assert_eq!(inside, all.subset(&rows), "{task}");
            // Beyond the next step, or without enough history: refused.
            let e = f.rows_at(&history, t + 1).unwrap_err().to_string();
            assert!(e.contains("prediction time"), "{e}");
            assert!(f.rows_at(&history, 0).is_err());
        }
    }

    #[test]
    fn featurizer_round_trips_and_transforms_new_data_alike() {
        let incidents = random_incidents(10_000, 30, 4);
        let data = build_task(&incidents, &TaskConfig::new(Task::Risk)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("featurizer.json");
        data.featurizer.save_json(&path).unwrap();
        let loaded = Featurizer::load_json(&path).unwrap();
        assert_eq!(loaded, data.featurizer);
        let all = loaded.transform(&incidents).unwrap();
        let s = &data.splits;
        assert_eq!(all.len(), s.train.len() + s.val.len() + s.test.len());
        let n = s.train.len();
        assert_eq!(
            &all.features[..n * all.feature_dim],
            s.train.features.as_slice()
        );
        let tail = all.subset(&((n + s.val.len())..all.len()).collect::<Vec<_>>());
        assert_eq!(tail, s.test);

        // A tampered file is an error naming the file, not a panic.
        let mut bad = data.featurizer.clone();
        bad.feature_scaler.min.pop();
        bad.save_json(&path).unwrap();
        let err = Featurizer::load_json(&path).unwrap_err().to_string();
        assert!(err.contains("featurizer.json"), "{err}");
        std::fs::write(&path, "{\"version\": 1").unwrap();
        assert!(Featurizer::load_json(&path).is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cfg = TaskConfig::new(Task::Risk);
        assert!(matches!(
            build_task(&[], &cfg),
            Err(DataError::NotEnoughData { .. })
        ));
        // 7 days: all of them are lag warm-up.
        let week = random_incidents(1000, 7, 5);
        assert!(matches!(
            build_task(&week, &cfg),
            Err(DataError::NotEnoughData { .. })
        ));
        let mut bad = random_incidents(100, 20, 6);
        bad[7].area = 22;
        let err = build_task(&bad, &cfg).unwrap_err().to_string();
        assert!(err.contains("DR_NO 8") && err.contains("22"), "{err}");
        let mut bad = random_incidents(100, 20, 6);
        bad[3].minute_of_day = 1440;
        assert!(build_task(&bad, &cfg).is_err());
        let zero_lags = TaskConfig { lags: 0, ..cfg };
        assert!(build_task(&week, &zero_lags).is_err());
        assert_eq!("week".parse::<Period>(), Ok(Period::Week));
        assert!("month".parse::<Period>().is_err());
    }

    fn shared(file: &str) -> Option<std::path::PathBuf> {
        let p = crate::test_data::la_crime_dir()
            .unwrap_or_else(|| "../shared/data/la-crime".into())
            .join(file);
        if p.exists() {
            Some(p)
        } else {
            eprintln!("skipped: {} not found", p.display());
            None
        }
    }

    #[test]
    fn real_month_builds_both_tasks_without_leakage() {
        let Some(path) = shared("la_crime_2024_02.csv") else {
            return;
        };
        let loaded = crate::loader::load_path(&path).unwrap();
        let risk = build_task(&loaded.incidents, &TaskConfig::new(Task::Risk)).unwrap();
        let s = &risk.splits;
        // February 2024: 29 days of 6 blocks, the first 7 days are lag warm-up.
        assert_eq!(
            s.train.len() + s.val.len() + s.test.len(),
            21 * (29 - 7) * 6
        );
        check_temporal_order(s).unwrap();
        assert_eq!(risk.featurizer.risk_thresholds.len(), 4);
        let Target::Classes { labels, .. } = &s.train.target else {
            unreachable!()
        };
        let mut hist = [0usize; 5];
        for &l in labels {
            hist[l as usize] += 1;
        }
        // ~25 incidents per area and day: every level is well populated.
        assert!(hist.iter().all(|&h| h * 10 > labels.len()), "{hist:?}");
        let g = risk.graph.as_ref().unwrap();
        let kept_in_range = loaded.incidents.len();
        assert_eq!(g.counts.iter().sum::<f32>() as usize, kept_in_range);

        let counts = build_task(
            &loaded.incidents,
            &TaskConfig {
                task: Task::Counts,
                ..TaskConfig::default()
            },
        )
        .unwrap();
        assert_eq!(counts.splits.train.time[0], risk.splits.train.time[0] / 6);
        check_temporal_order(&counts.splits).unwrap();
        // Three whole weeks cannot feed 4 weekly lags: a clear error.
        let weekly = TaskConfig {
            task: Task::Counts,
            period: Period::Week,
            ..TaskConfig::default()
        };
        let err = build_task(&loaded.incidents, &weekly).unwrap_err();
        assert!(matches!(err, DataError::NotEnoughData { .. }), "{err}");
    }

    #[test]
    fn real_2020_sample_builds_weekly_counts() {
        let Some(path) = shared("la_crime_2020_sample.csv") else {
            return;
        };
        let loaded = crate::loader::load_path(&path).unwrap();
        let cfg = TaskConfig {
            task: Task::Counts,
            period: Period::Week,
            ..TaskConfig::default()
        };
        let data = build_task(&loaded.incidents, &cfg).unwrap();
        let s = &data.splits;
        // 2020: whole weeks from Monday 6 January to Sunday 27 December (51),
        // minus 4 weeks of lags.
        assert_eq!(s.train.len() + s.val.len() + s.test.len(), 21 * (51 - 4));
        check_temporal_order(s).unwrap();
        assert!(all_in_unit_range(&s.test));
        let risk = build_task(&loaded.incidents, &TaskConfig::new(Task::Risk)).unwrap();
        // Sparse sample (~1.3 incidents per area and day): level 1 is the zeros.
        assert_eq!(risk.featurizer.risk_thresholds.first(), Some(&1));
    }
}
