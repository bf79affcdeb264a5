//! Features of the `risk` and `counts` tasks and the [`Featurizer`] that
//! holds everything fit on the training split (scalers, risk thresholds,
//! crime densities), saved next to a model as JSON so that the same features
//! can be computed for new data.
//!
//! # The features (after the paper)
//!
//! Every sample aggregates incidents of one area over one time step (a 4-hour
//! block for `risk`, a day or a week for `counts`), so per-incident features
//! become per-area ones:
//!
//! - calendar of the predicted time: day of week (0 = Monday), hour 0-23 (for
//!   `risk` the block's start hour), day of year, and sin/cos encodings of
//!   hour, weekday and day of year (`2 pi x / period`);
//! - space: the area centroid's latitude and longitude (from
//!   [`AREAS`]), the area's crime density (incidents per
//!   km² over the *training window*), and a one-hot area code;
//! - the one-hot crime category becomes the category mix (shares summing to 1,
//!   or all 0 when nothing happened) of the previous period: the previous day
//!   (6 blocks) for `risk`, the previous period for `counts`;
//! - lagged counts: for `risk` the totals of the previous 6 blocks (`lag1` ..
//!   `lag6`; `lag6` is the same block one day before), the same block 7 days
//!   before (`lag42`), the mean block total over the previous 7 days and the
//!   mean of the same block over the previous 7 days; for `counts` the previous
//!   `lags` (4) periods' per-category vectors, oldest first (`lag4.violent` ..
//!   `lag1.other`, the paper's sequence encoding, flattened), and for daily
//!   periods also the same weekday one week before (`lag7.*`) and the mean of
//!   the previous 7 days (`mean7.*`) per category.
//!
//! Every feature column is min-max scaled with a scaler fit on the training
//! rows; at validation/test time (and for new data) values outside the
//! training range are clamped to [0, 1]. A column that is constant in training
//! maps to 0. The sequence view (`[n, lags, 8]`, previous periods' per-category
//! counts, oldest first) is scaled per category with a scaler fit on the count
//! grid's training window.

use std::f32::consts::TAU;
use std::ops::Range;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::areas::{AREAS, AREA_COUNT};
use super::calendar::{day_of_year, weekday};
use super::categories::Category;
use super::dataset::{Dataset, Sequences, Target, Task};
use super::error::DataError;
use super::record::{DayNumber, Incident};
use super::split::SplitBounds;
use super::tasks::{CountGrid, Period, TimeUnit};

/// Number of risk levels (classes of the `risk` task).
pub const RISK_LEVELS: usize = 5;

/// Blocks of 4 hours per day.
pub const BLOCKS_PER_DAY: u32 = 6;

/// Lags of the `risk` task's block totals, in blocks (`lag6` = same block a
/// day before, `lag42` = same block a week before).
const RISK_LAGS: [u32; 7] = [1, 2, 3, 4, 5, 6, 42];

/// How far back the `risk` features reach, in blocks (7 days).
const RISK_WINDOW: u32 = 42;

/// Days in the daily `counts` trailing mean and seasonal lag.
const WEEK_DAYS: u32 = 7;

/// Version of the [`Featurizer`] file format.
pub(crate) const FEATURIZER_VERSION: u32 = 1;

/// `(sin, cos)` of `x` on a cycle of length `period`.
fn cyc(x: f32, period: f32) -> (f32, f32) {
    (TAU * x / period).sin_cos()
}

/// Mean days per year, the period of the day-of-year encoding.
const YEAR_DAYS: f32 = 365.25;

// ---------------------------------------------------------------------------
// Scaling

/// Per-column min-max scaler: `x -> (x - min) / (max - min)`, clamped to
/// [0, 1]; a column with `max <= min` maps to 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinMaxScaler {
    /// Column minima over the rows the scaler was fit on.
    pub min: Vec<f32>,
    /// Column maxima over the rows the scaler was fit on.
    pub max: Vec<f32>,
}

impl MinMaxScaler {
    /// Fits one scaler per column of the row-major `rows` (`dim` columns).
    /// Without rows every column is constant (maps to 0). Non-finite values
    /// are ignored.
    pub fn fit(rows: &[f32], dim: usize) -> Self {
        if dim == 0 {
            return MinMaxScaler {
                min: Vec::new(),
                max: Vec::new(),
            };
        }
        let init = || (vec![f32::INFINITY; dim], vec![f32::NEG_INFINITY; dim]);
        let (min, max) = rows
            .par_chunks(dim * 1024)
            .fold(init, |(mut lo, mut hi), chunk| {
                for row in chunk.chunks_exact(dim) {
                    for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
                        if x.is_finite() {
                            *l = l.min(x);
                            *h = h.max(x);
                        }
                    }
                }
                (lo, hi)
            })
            .reduce(init, |(mut lo, mut hi), (lo2, hi2)| {
                for i in 0..dim {
                    lo[i] = lo[i].min(lo2[i]);
                    hi[i] = hi[i].max(hi2[i]);
                }
                (lo, hi)
            });
        let (min, max) = min
            .into_iter()
            .zip(max)
            .map(|(lo, hi)| if lo <= hi { (lo, hi) } else { (0.0, 0.0) })
            .unzip();
        MinMaxScaler { min, max }
    }

    /// Number of columns.
    pub fn dim(&self) -> usize {
        self.min.len()
    }

    /// Scales one value of column `col` (out-of-range values are clamped).
    pub fn scale(&self, col: usize, x: f32) -> f32 {
        match (self.min.get(col), self.max.get(col)) {
            (Some(&lo), Some(&hi)) if hi > lo => ((x - lo) / (hi - lo)).clamp(0.0, 1.0),
            _ => 0.0,
        }
    }

    /// Scales the row-major `rows` in place (`dim()` columns, rows in parallel).
    pub(crate) fn transform_in_place(&self, rows: &mut [f32]) {
        let dim = self.dim();
        if dim == 0 {
            return;
        }
        let (offset, inv): (Vec<f32>, Vec<f32>) = self
            .min
            .iter()
            .zip(&self.max)
            .map(|(&lo, &hi)| {
                if hi > lo {
                    (lo, 1.0 / (hi - lo))
                } else {
                    (lo, 0.0)
                }
            })
            .unzip();
        rows.par_chunks_mut(dim * 1024).for_each(|chunk| {
            for row in chunk.chunks_exact_mut(dim) {
                for ((x, &o), &s) in row.iter_mut().zip(&offset).zip(&inv) {
                    *x = ((*x - o) * s).clamp(0.0, 1.0);
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------
// Risk thresholds

/// Fits the lower bounds of risk levels 2..=5 on the training block counts.
///
/// The rule (counts are small integers with many ties, most often zeros):
/// a level is a run of whole count values, so equal counts always share a
/// level and level 1 always holds the smallest count (usually 0). Among all
/// ways to cut the sorted distinct values into 5 contiguous non-empty runs, the
/// one whose level sizes are closest to equal fifths (least sum of squared
/// deviations from `n / 5`) wins, i.e. the classes are as balanced as the ties
/// allow. With fewer than 5 distinct values each value gets its own level and
/// the top levels stay empty. Returns the strictly increasing thresholds
/// `t`, at most 4: `level(c) = 1 + #{t_j <= c}`.
pub fn fit_risk_thresholds(counts: impl IntoIterator<Item = u32>) -> Vec<u32> {
    let mut hist = std::collections::BTreeMap::<u32, u64>::new();
    for c in counts {
        *hist.entry(c).or_default() += 1;
    }
    let values: Vec<u32> = hist.keys().copied().collect();
    let sizes: Vec<u64> = hist.values().copied().collect();
    let k = values.len();
    if k <= RISK_LEVELS {
        return values.into_iter().skip(1).collect();
    }
    let n: u64 = sizes.iter().sum();
    let target = n as f64 / RISK_LEVELS as f64;
    let mut prefix = vec![0u64; k + 1];
    for i in 0..k {
        prefix[i + 1] = prefix[i] + sizes[i];
    }
    let cost = |i: usize, j: usize| {
        let d = (prefix[j] - prefix[i]) as f64 - target;
        d * d
    };
    // best[g][j]: least cost of cutting values[..j] into g runs; from[g][j]: start of the last run.
    let mut best = vec![vec![f64::INFINITY; k + 1]; RISK_LEVELS + 1];
    let mut from = vec![vec![0usize; k + 1]; RISK_LEVELS + 1];
    best[0][0] = 0.0;
    for g in 1..=RISK_LEVELS {
        for j in g..=k {
            for i in (g - 1)..j {
                let c = best[g - 1][i] + cost(i, j);
                if c < best[g][j] {
                    best[g][j] = c;
                    from[g][j] = i;
                }
            }
        }
    }
    let mut starts = Vec::with_capacity(RISK_LEVELS);
    let mut j = k;
    for g in (1..=RISK_LEVELS).rev() {
        let i = from[g][j];
        starts.push(i);
        j = i;
    }
    starts.reverse();
    starts.into_iter().skip(1).map(|i| values[i]).collect()
}

/// The risk level 1..=5 of a block count under `thresholds` (see [`fit_risk_thresholds`]).
pub fn risk_level(thresholds: &[u32], count: u32) -> u8 {
    1 + thresholds.iter().filter(|&&t| t <= count).count() as u8
}

// ---------------------------------------------------------------------------
// The featurizer

/// Everything fit on the training split that turns a count grid into
/// model-ready samples; serde-saveable (JSON) next to a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Featurizer {
    /// File format version (`FEATURIZER_VERSION`).
    pub version: u32,
    /// The task.
    pub task: Task,
    /// The period of the `counts` task (`risk` always uses 4-hour blocks).
    pub period: Period,
    /// Steps of the sequence view (previous periods), 4 by default.
    pub lags: usize,
    /// How many time steps before a sample its features reach; samples
    /// closer than this to the data start are dropped.
    pub max_lag: u32,
    /// One name per feature column.
    pub feature_names: Vec<String>,
    /// Min-max scaler of the flat feature columns (fit on training rows).
    pub feature_scaler: MinMaxScaler,
    /// Per-category min-max scaler of the sequence view (fit on the count
    /// grid's training window).
    pub sequence_scaler: MinMaxScaler,
    /// `risk`: lower bounds of levels 2..=5 fit on the training block counts.
    pub risk_thresholds: Vec<u32>,
    /// Incidents per km² of each area (index `code - 1`) over the training window.
    pub area_density: Vec<f32>,
    /// The temporal split the featurizer was fit with.
    pub bounds: SplitBounds,
}

impl Featurizer {
    /// The time unit of this featurizer's samples.
    pub fn time_unit(&self) -> TimeUnit {
        TimeUnit::of(self.task, self.period)
    }

    /// Number of flat feature columns.
    pub fn feature_dim(&self) -> usize {
        self.feature_names.len()
    }

    /// Writes the featurizer as pretty JSON.
    pub fn save_json(&self, path: &Path) -> Result<(), DataError> {
        let text = serde_json::to_string_pretty(self).map_err(|source| DataError::Serde {
            what: format!("featurizer {}", path.display()),
            source,
        })?;
        std::fs::write(path, text).map_err(|e| DataError::io("write", path, e))
    }

    /// Reads a featurizer written by [`Featurizer::save_json`] and checks it.
    pub fn load_json(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io("read", path, e))?;
        let f: Featurizer = serde_json::from_str(&text).map_err(|source| DataError::Serde {
            what: format!("featurizer {}", path.display()),
            source,
        })?;
        f.check().map_err(|reason| {
            DataError::config(format!("featurizer {}", path.display()), reason)
        })?;
        Ok(f)
    }

    /// Internal consistency of a (possibly hand-edited) featurizer.
    fn check(&self) -> Result<(), String> {
        if self.version != FEATURIZER_VERSION {
            return Err(format!(
                "version {} (expected {FEATURIZER_VERSION})",
                self.version
            ));
        }
        let expected = Layout::new(self.task, self.period, self.lags);
        if expected.names() != self.feature_names {
            return Err("feature names do not match the task's features".into());
        }
        if self.feature_scaler.dim() != self.feature_dim()
            || self.feature_scaler.max.len() != self.feature_dim()
        {
            return Err(format!(
                "feature scaler has {} columns, expected {}",
                self.feature_scaler.dim(),
                self.feature_dim()
            ));
        }
        if self.sequence_scaler.dim() != Category::COUNT
            || self.sequence_scaler.max.len() != Category::COUNT
        {
            return Err("sequence scaler must have one column per category".into());
        }
        if self.area_density.len() != AREA_COUNT {
            return Err(format!(
                "{} area densities, expected {AREA_COUNT}",
                self.area_density.len()
            ));
        }
        if self.risk_thresholds.len() >= RISK_LEVELS
            || self.risk_thresholds.windows(2).any(|w| w[0] >= w[1])
        {
            return Err("risk thresholds must be at most 4 strictly increasing counts".into());
        }
        if self.max_lag != expected.max_lag() {
            return Err(format!(
                "max_lag {} (expected {})",
                self.max_lag,
                expected.max_lag()
            ));
        }
        Ok(())
    }

    /// Featurizes new incidents with the fitted scalers and thresholds: one
    /// sample per area and time step of the incidents' date range whose lags
    /// lie inside that range (all of them, no split).
    pub fn transform(&self, incidents: &[Incident]) -> Result<Dataset, DataError> {
        self.check()
            .map_err(|reason| DataError::config("featurizer", reason))?;
        let grid = CountGrid::build(incidents, self.time_unit())?;
        let start = grid.t0 + self.max_lag;
        let end = grid.end();
        if start >= end {
            return Err(DataError::NotEnoughData {
                what: format!(
                    "{} {}s of data; the {} features reach {} {}s back",
                    grid.times,
                    self.time_unit().name(),
                    self.task,
                    self.max_lag,
                    self.time_unit().name()
                ),
            });
        }
        Ok(self.dataset(&grid, start..end, None))
    }

    /// The samples of every area at time step `t` for a prediction from
    /// `incidents` (a station's history): `t` may be any step whose lags lie
    /// in the incidents' range, up to the step right after their last one
    /// (the next period, whose counts are not known: its target values are
    /// 0 and mean nothing). Rows are in area order.
    pub fn rows_at(&self, incidents: &[Incident], t: u32) -> Result<Dataset, DataError> {
        self.check()
            .map_err(|reason| DataError::config("featurizer", reason))?;
        let unit = self.time_unit();
        let grid = CountGrid::build(incidents, unit)?;
        let first = grid.t0 + self.max_lag;
        if t < first || t > grid.end() {
            return Err(DataError::config(
                "prediction time",
                format!(
                    "{} {t} is outside the {}s the history can feature: {first}..={} (the data \
                     cover {}s {}..{}, and the features reach {} {}s back)",
                    unit.name(),
                    unit.name(),
                    grid.end(),
                    unit.name(),
                    grid.t0,
                    grid.end(),
                    self.max_lag,
                    unit.name()
                ),
            ));
        }
        let grid = grid.extended((t + 1).saturating_sub(grid.end()) as usize);
        Ok(self.dataset(&grid, t..t + 1, None))
    }

    /// Raw (unscaled) feature rows of every area at the sample times `times`,
    /// ordered by (time, area).
    pub(crate) fn raw_features(&self, grid: &CountGrid, times: Range<u32>) -> Vec<f32> {
        let layout = Layout::new(self.task, self.period, self.lags);
        let dim = self.feature_dim();
        let n = times.len() * AREA_COUNT;
        let mut out = vec![0f32; n * dim];
        if dim == 0 {
            return out;
        }
        out.par_chunks_mut(dim).enumerate().for_each(|(r, row)| {
            let t = times.start + (r / AREA_COUNT) as u32;
            let a = r % AREA_COUNT;
            layout.write_row(self, grid, a, t, row);
        });
        out
    }

    /// The scaled dataset of all areas at sample times `times` (which must lie
    /// at least `max_lag` after `grid.t0`, inside the grid). `raw` are the rows
    /// from [`Featurizer::raw_features`] when already computed.
    pub(crate) fn dataset(
        &self,
        grid: &CountGrid,
        times: Range<u32>,
        raw: Option<Vec<f32>>,
    ) -> Dataset {
        let mut features = raw.unwrap_or_else(|| self.raw_features(grid, times.clone()));
        self.feature_scaler.transform_in_place(&mut features);
        let n = times.len() * AREA_COUNT;
        let cats = Category::COUNT;
        let steps = self.lags;

        // Sequence view: previous `lags` periods' per-category counts, oldest first.
        let step_len = steps * cats;
        let mut seq = vec![0f32; n * step_len];
        if step_len > 0 {
            seq.par_chunks_mut(step_len)
                .enumerate()
                .for_each(|(r, out)| {
                    let t = times.start + (r / AREA_COUNT) as u32;
                    let a = r % AREA_COUNT;
                    for (s, step) in out.chunks_exact_mut(cats).enumerate() {
                        let cell = grid.cell(a, t - (steps - s) as u32);
                        for (c, (o, &v)) in step.iter_mut().zip(cell).enumerate() {
                            *o = self.sequence_scaler.scale(c, v as f32);
                        }
                    }
                });
        }

        let mut area = Vec::with_capacity(n);
        let mut time = Vec::with_capacity(n);
        for t in times.clone() {
            for info in &AREAS {
                area.push(info.code);
                time.push(t);
            }
        }

        let target = match self.task {
            Task::Risk => {
                let labels = (0..n)
                    .map(|r| {
                        let t = times.start + (r / AREA_COUNT) as u32;
                        let level =
                            risk_level(&self.risk_thresholds, grid.total(r % AREA_COUNT, t));
                        i64::from(level - 1)
                    })
                    .collect();
                Target::Classes {
                    labels,
                    num_classes: RISK_LEVELS,
                }
            }
            Task::Counts => {
                let mut values = Vec::with_capacity(n * cats);
                for r in 0..n {
                    let t = times.start + (r / AREA_COUNT) as u32;
                    values.extend(grid.cell(r % AREA_COUNT, t).iter().map(|&v| v as f32));
                }
                Target::Counts { values, dim: cats }
            }
        };

        Dataset {
            task: self.task,
            features,
            feature_dim: self.feature_dim(),
            feature_names: self.feature_names.clone(),
            sequences: Some(Sequences {
                data: seq,
                steps,
                step_dim: cats,
            }),
            target,
            area,
            time,
        }
    }

    /// Fits a featurizer on the training window of `grid` (times before
    /// `bounds.val_start`); returns it with the raw training rows, so they are
    /// computed once.
    pub(crate) fn fit(
        task: Task,
        period: Period,
        lags: usize,
        grid: &CountGrid,
        bounds: SplitBounds,
    ) -> (Featurizer, Vec<f32>) {
        let layout = Layout::new(task, period, lags);
        let feature_names = layout.names();
        let dim = feature_names.len();

        // Crime density: incidents per km² over the training window (from the
        // data start, lag warm-up included, to the first validation time).
        let train_cells = bounds.val_start.saturating_sub(grid.t0);
        let area_density = AREAS
            .iter()
            .map(|info| {
                let a = info.index();
                let n = grid.sum_totals(a, grid.t0, grid.t0 + train_cells);
                (n as f64 / f64::from(info.km2.max(f32::MIN_POSITIVE))) as f32
            })
            .collect();

        // Sequence scaler: per-category range of the grid cells in the training window.
        let mut lo = [u32::MAX; Category::COUNT];
        let mut hi = [0u32; Category::COUNT];
        for a in 0..AREA_COUNT {
            for t in grid.t0..grid.t0 + train_cells {
                for (c, &v) in grid.cell(a, t).iter().enumerate() {
                    lo[c] = lo[c].min(v);
                    hi[c] = hi[c].max(v);
                }
            }
        }
        let sequence_scaler = MinMaxScaler {
            min: lo
                .iter()
                .zip(&hi)
                .map(|(&l, &h)| if l <= h { l as f32 } else { 0.0 })
                .collect(),
            max: hi.iter().map(|&h| h as f32).collect(),
        };

        let risk_thresholds = match task {
            Task::Risk => fit_risk_thresholds(
                (bounds.start..bounds.val_start)
                    .flat_map(|t| (0..AREA_COUNT).map(move |a| (a, t)))
                    .map(|(a, t)| grid.total(a, t)),
            ),
            Task::Counts => Vec::new(),
        };

        let mut f = Featurizer {
            version: FEATURIZER_VERSION,
            task,
            period,
            lags,
            max_lag: layout.max_lag(),
            feature_names,
            feature_scaler: MinMaxScaler {
                min: vec![0.0; dim],
                max: vec![1.0; dim],
            },
            sequence_scaler,
            risk_thresholds,
            area_density,
            bounds,
        };
        let raw = f.raw_features(grid, bounds.start..bounds.val_start);
        f.feature_scaler = MinMaxScaler::fit(&raw, dim);
        (f, raw)
    }
}

/// The feature columns of one task configuration and how to compute a row.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    task: Task,
    period: Period,
    lags: usize,
}

impl Layout {
    /// The layout of `task` (`period` matters for `counts` only).
    pub fn new(task: Task, period: Period, lags: usize) -> Self {
        Layout { task, period, lags }
    }

    /// How many time steps before a sample its inputs reach.
    pub(crate) fn max_lag(&self) -> u32 {
        let lags = self.lags as u32;
        match (self.task, self.period) {
            (Task::Risk, _) => RISK_WINDOW.max(lags),
            (Task::Counts, Period::Day) => WEEK_DAYS.max(lags),
            (Task::Counts, Period::Week) => lags.max(1),
        }
    }

    /// The column names, in row order.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = Vec::new();
        let cats = Category::ALL.map(Category::name);
        match (self.task, self.period) {
            (Task::Risk, _) => n.extend(
                [
                    "weekday",
                    "hour",
                    "day_of_year",
                    "sin_hour",
                    "cos_hour",
                    "sin_weekday",
                    "cos_weekday",
                    "sin_day_of_year",
                    "cos_day_of_year",
                ]
                .map(String::from),
            ),
            (Task::Counts, Period::Day) => n.extend(
                [
                    "weekday",
                    "day_of_year",
                    "sin_weekday",
                    "cos_weekday",
                    "sin_day_of_year",
                    "cos_day_of_year",
                ]
                .map(String::from),
            ),
            (Task::Counts, Period::Week) => {
                n.extend(["day_of_year", "sin_day_of_year", "cos_day_of_year"].map(String::from))
            }
        }
        n.extend(["lat", "lon", "density"].map(String::from));
        n.extend(AREAS.iter().map(|a| format!("area_{:02}", a.code)));
        let mix = match self.task {
            Task::Risk => "mix_prev_day",
            Task::Counts => "mix_prev",
        };
        n.extend(cats.iter().map(|c| format!("{mix}.{c}")));
        match (self.task, self.period) {
            (Task::Risk, _) => {
                n.extend(RISK_LAGS.iter().map(|l| format!("lag{l}")));
                n.push("mean_7d".into());
                n.push("same_block_mean_7d".into());
            }
            (Task::Counts, period) => {
                for l in (1..=self.lags).rev() {
                    n.extend(cats.iter().map(|c| format!("lag{l}.{c}")));
                }
                if period == Period::Day {
                    n.extend(cats.iter().map(|c| format!("lag7.{c}")));
                    n.extend(cats.iter().map(|c| format!("mean7.{c}")));
                }
            }
        }
        n
    }

    /// Writes the raw feature row of area index `a` at time `t` into `out`
    /// (exactly `names().len()` values). `t - max_lag()` must be inside the grid.
    fn write_row(&self, f: &Featurizer, grid: &CountGrid, a: usize, t: u32, out: &mut [f32]) {
        let mut w = RowWriter { out, k: 0 };
        let info = &AREAS[a];
        let cats = Category::COUNT;

        // Calendar of the predicted time step.
        match (self.task, self.period) {
            (Task::Risk, _) => {
                let day = (t / BLOCKS_PER_DAY) as DayNumber;
                let hour = (4 * (t % BLOCKS_PER_DAY)) as f32;
                let wd = weekday(day) as f32;
                let doy = day_of_year(day) as f32;
                w.push(wd);
                w.push(hour);
                w.push(doy);
                w.push_cyc(hour, 24.0);
                w.push_cyc(wd, 7.0);
                w.push_cyc(doy - 1.0, YEAR_DAYS);
            }
            (Task::Counts, Period::Day) => {
                let day = t as DayNumber;
                let wd = weekday(day) as f32;
                let doy = day_of_year(day) as f32;
                w.push(wd);
                w.push(doy);
                w.push_cyc(wd, 7.0);
                w.push_cyc(doy - 1.0, YEAR_DAYS);
            }
            (Task::Counts, Period::Week) => {
                let doy = day_of_year(Period::week_monday(t) as DayNumber) as f32;
                w.push(doy);
                w.push_cyc(doy - 1.0, YEAR_DAYS);
            }
        }

        // Space.
        w.push(info.centroid.0);
        w.push(info.centroid.1);
        w.push(f.area_density.get(a).copied().unwrap_or(0.0));
        for i in 0..AREA_COUNT {
            w.push(if i == a { 1.0 } else { 0.0 });
        }

        // Category mix of the previous period (risk: the previous 6 blocks).
        let mix_steps = match self.task {
            Task::Risk => BLOCKS_PER_DAY,
            Task::Counts => 1,
        };
        let mut mix = [0u32; Category::COUNT];
        for back in 1..=mix_steps {
            for (m, &v) in mix.iter_mut().zip(grid.cell(a, t - back)) {
                *m += v;
            }
        }
        let total: u32 = mix.iter().sum();
        for &m in &mix {
            w.push(if total > 0 {
                m as f32 / total as f32
            } else {
                0.0
            });
        }

        // Lagged counts.
        match self.task {
            Task::Risk => {
                for &l in &RISK_LAGS {
                    w.push(grid.total(a, t - l) as f32);
                }
                let week = grid.sum_totals(a, t - RISK_WINDOW, t);
                w.push(week as f32 / RISK_WINDOW as f32);
                let same: u32 = (1..=7).map(|d| grid.total(a, t - d * BLOCKS_PER_DAY)).sum();
                w.push(same as f32 / 7.0);
            }
            Task::Counts => {
                for l in (1..=self.lags as u32).rev() {
                    for &v in grid.cell(a, t - l) {
                        w.push(v as f32);
                    }
                }
                if self.period == Period::Day {
                    for &v in grid.cell(a, t - WEEK_DAYS) {
                        w.push(v as f32);
                    }
                    let mut sum = [0u32; Category::COUNT];
                    for back in 1..=WEEK_DAYS {
                        for (s, &v) in sum.iter_mut().zip(grid.cell(a, t - back)) {
                            *s += v;
                        }
                    }
                    for s in sum.iter().take(cats) {
                        w.push(*s as f32 / WEEK_DAYS as f32);
                    }
                }
            }
        }
        debug_assert_eq!(w.k, w.out.len(), "feature row width");
    }
}

/// Appends values to a preallocated row.
struct RowWriter<'a> {
    out: &'a mut [f32],
    k: usize,
}

impl RowWriter<'_> {
    #[inline]
    fn push(&mut self, v: f32) {
        if let Some(slot) = self.out.get_mut(self.k) {
            *slot = v;
        }
        self.k += 1;
    }

    #[inline]
    fn push_cyc(&mut self, x: f32, period: f32) {
        let (s, c) = cyc(x, period);
        self.push(s);
        self.push(c);
    }
}

/// The date range `[first, last]` (day numbers) covered by `incidents`' occurrence dates.
pub(crate) fn date_range(incidents: &[Incident]) -> Option<(DayNumber, DayNumber)> {
    let lo = incidents.iter().map(|i| i.date_occurred).min()?;
    let hi = incidents.iter().map(|i| i.date_occurred).max()?;
    Some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_fits_on_given_rows_and_clamps_others() {
        let rows = [0.0, 5.0, 7.0, 10.0, 5.0, 7.0];
        let s = MinMaxScaler::fit(&rows, 3);
        assert_eq!(s.min, vec![0.0, 5.0, 7.0]);
        assert_eq!(s.max, vec![10.0, 5.0, 7.0]);
        let mut other = vec![5.0, 5.0, 1.0, -3.0, 9.0, 7.0, 20.0, 0.0, 7.0];
        s.transform_in_place(&mut other);
        assert_eq!(other, vec![0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(s.scale(0, 2.5), 0.25);
        assert_eq!(s.scale(9, 2.5), 0.0, "unknown column");
        let empty = MinMaxScaler::fit(&[], 2);
        assert_eq!((empty.min, empty.max), (vec![0.0; 2], vec![0.0; 2]));
    }

    #[test]
    fn thresholds_keep_ties_together_and_balance_classes() {
        // 60% zeros: level 1 = {0}; the rest split into 4 runs.
        let mut counts = vec![0u32; 600];
        counts.extend(std::iter::repeat_n(1, 150));
        counts.extend(std::iter::repeat_n(2, 100));
        counts.extend(std::iter::repeat_n(3, 80));
        counts.extend(std::iter::repeat_n(4, 40));
        counts.extend(std::iter::repeat_n(9, 30));
        let t = fit_risk_thresholds(counts.iter().copied());
        assert_eq!(t.len(), 4);
        assert_eq!(t[0], 1, "all zeros in level 1");
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(risk_level(&t, 0), 1);
        assert_eq!(risk_level(&t, 1000), 5);
        // Equal counts always share a level.
        let mut sizes = [0usize; 5];
        for &c in &counts {
            sizes[usize::from(risk_level(&t, c)) - 1] += 1;
        }
        assert!(sizes.iter().all(|&s| s > 0), "{sizes:?}");

        // Uniform data: exact fifths.
        let uniform: Vec<u32> = (0..100).collect();
        assert_eq!(fit_risk_thresholds(uniform), vec![20, 40, 60, 80]);

        // Fewer than 5 distinct values: one level each, top levels empty.
        assert_eq!(fit_risk_thresholds([0, 0, 0, 2, 5]), vec![2, 5]);
        assert_eq!(fit_risk_thresholds(std::iter::empty()), Vec::<u32>::new());
        assert_eq!(risk_level(&[], 7), 1);
    }

    #[test]
    fn layout_names_match_row_width() {
        for (task, period) in [
            (Task::Risk, Period::Day),
            (Task::Counts, Period::Day),
            (Task::Counts, Period::Week),
        ] {
            let names = Layout::new(task, period, 4).names();
            let unique: std::collections::BTreeSet<_> = names.iter().collect();
            assert_eq!(
                unique.len(),
                names.len(),
                "{task} {period:?}: duplicate names"
            );
        }
        assert_eq!(Layout::new(Task::Risk, Period::Day, 4).names().len(), 50);
        assert_eq!(
            Layout::new(Task::Counts, Period::Day, 4).names().len(),
            6 + 3 + 21 + 8 + 32 + 16
        );
        assert_eq!(
            Layout::new(Task::Counts, Period::Week, 4).names().len(),
            3 + 3 + 21 + 8 + 32
        );
    }
}
