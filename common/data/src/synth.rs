//! The LA-like synthetic generator: CSV in exactly the city's 28-column
//! schema, quirks included, so the project runs with no download and the
//! loader is exercised on every run.
//!
//! # The process
//!
//! Incidents are drawn per cell `(day, area, category)` with weights
//!
//! ```text
//! w = share(area) * mix(area, category) * 7 weekday(category, day)
//!     * exp(city(day) + drift(area, day) + drift(area, category, week) + season(day))
//!     * noise(area, day)
//! ```
//!
//! where the shares, mixes and weekday profiles come from the
//! [calibration table](super::calibration), `city` and `drift(area)` are
//! slow AR(1) processes in log space (so intensities are autocorrelated
//! across days and weeks, and lagged counts predict), `drift(area,
//! category)` is a weekly AR(1), `season` a yearly cosine peaking in July,
//! and `noise` a mean-one gamma shock shared by the categories of an area-day
//! (overdispersion). Exactly `rows` incidents are spread over the cells by a
//! multinomial draw. Within a day, the hour follows the category's profile,
//! tilted per area by its night factor and boosted on Friday and Saturday
//! nights (an area x hour and weekday x hour interaction); minutes follow the
//! officers' rounding to :00 and :30. Everything else (crime code, premise,
//! weapon, victim, status, reporting delay, place) is drawn from the
//! calibration table given the category and area. Parameters of the process
//! are in [`Dynamics`].
//!
//! # Quirks
//!
//! Both date layouts (per row, with the real rate of rows mixing them),
//! LAT/LON 0,0 at the real rate, `Vict Age` 0 and `-1`, empty and X/H sexes,
//! empty weapons, coordinates with trailing zeros trimmed (`34.01`, `34`),
//! space-padded `LOCATION`s, quoted fields with commas (the real
//! descriptions, plus a few `LOCATION`s and `Mocodes` with commas), `DR_NO`
//! with a leading zero, and, at rates the samples do not show but other
//! exports do, `TIME OCC` without leading zeros (`5`, `45`, `130`) and `AREA`
//! without its leading zero (`5`).
//!
//! # Determinism and speed
//!
//! One seed fixes everything: the cell counts are drawn from stream 0 of a
//! ChaCha8 generator, and the rows of each chunk of consecutive cells from
//! their own stream, so chunks are generated in parallel (and gzip-compressed
//! as independent gzip members) while the output stays byte-identical for any
//! number of threads. [`generate_incidents`] draws the very same rows and
//! cleans them the way the loader does, without the CSV round trip.

use std::io::Write;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution, Gamma, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::areas::{AREAS, AREA_COUNT};
use super::calendar;
use super::calibration as cal;
use super::categories::Category;
use super::clean::{self, Tally};
use super::error::{DataError, Result};
use super::record::{DayNumber, Incident};
use super::schema::{self, HEADER};

/// The temporal dynamics of the synthetic process (design choices, not
/// calibration). The defaults give day-to-day autocorrelation that lagged
/// counts can learn, on top of weekly and daily seasonality.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dynamics {
    /// AR(1) coefficient per day of each area's log-intensity drift.
    pub area_phi: f64,
    /// Innovation standard deviation of the area drift (log scale).
    pub area_sigma: f64,
    /// AR(1) coefficient per day of the citywide log-intensity.
    pub city_phi: f64,
    /// Innovation standard deviation of the citywide level.
    pub city_sigma: f64,
    /// AR(1) coefficient per week of each (area, category) mix drift.
    pub mix_phi: f64,
    /// Innovation standard deviation of the mix drift.
    pub mix_sigma: f64,
    /// Relative amplitude of the yearly cosine.
    pub season_amplitude: f64,
    /// Day of the year (1..=366) of the seasonal peak.
    pub season_peak_day: f64,
    /// Shape of the mean-one gamma noise per (area, day); larger is calmer,
    /// 0 turns it off.
    pub day_noise_shape: f64,
    /// Multiplier of the 20:00-04:00 hours on Friday and Saturday nights.
    pub weekend_night_boost: f64,
}

impl Default for Dynamics {
    fn default() -> Self {
        Dynamics {
            area_phi: 0.97,
            area_sigma: 0.04,
            city_phi: 0.995,
            city_sigma: 0.01,
            mix_phi: 0.8,
            mix_sigma: 0.08,
            season_amplitude: 0.06,
            season_peak_day: 196.0,
            day_noise_shape: 25.0,
            weekend_night_boost: 1.3,
        }
    }
}

impl Dynamics {
    fn validate(&self) -> Result<()> {
        for (name, phi) in [
            ("area_phi", self.area_phi),
            ("city_phi", self.city_phi),
            ("mix_phi", self.mix_phi),
        ] {
            if !(0.0..1.0).contains(&phi) {
                return Err(DataError::config(
                    format!("dynamics.{name}"),
                    format!("{phi} is not in [0, 1)"),
                ));
            }
        }
        for (name, v) in [
            ("area_sigma", self.area_sigma),
            ("city_sigma", self.city_sigma),
            ("mix_sigma", self.mix_sigma),
            ("day_noise_shape", self.day_noise_shape),
            ("weekend_night_boost", self.weekend_night_boost),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(DataError::config(
                    format!("dynamics.{name}"),
                    format!("{v} is not a finite number >= 0"),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.season_amplitude) {
            return Err(DataError::config(
                "dynamics.season_amplitude",
                "must be in [0, 1)",
            ));
        }
        Ok(())
    }
}

/// How the CSV output is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain CSV.
    None,
    /// gzip (one member per chunk; any gzip reader reads them as one stream).
    Gzip,
}

impl Compression {
    /// gzip for a path ending in `.gz`, plain otherwise.
    pub fn from_path(path: &Path) -> Self {
        match path.extension() {
            Some(e) if e.eq_ignore_ascii_case("gz") => Compression::Gzip,
            _ => Compression::None,
        }
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Number of incidents (CSV rows).
    pub rows: usize,
    /// The seed; the same configuration gives the same bytes.
    pub seed: u64,
    /// First day of occurrence (days since 1970-01-01).
    pub start: DayNumber,
    /// Number of days of occurrence.
    pub days: u32,
    /// Output compression.
    pub compression: Compression,
    /// The temporal dynamics.
    pub dynamics: Dynamics,
}

impl SynthConfig {
    /// `rows` incidents from seed `seed` over [`SynthConfig::DEFAULT_DAYS`]
    /// days from `SynthConfig::default_start`, plain CSV.
    pub fn new(rows: usize, seed: u64) -> Self {
        SynthConfig {
            rows,
            seed,
            start: Self::default_start(),
            days: Self::DEFAULT_DAYS,
            compression: Compression::None,
            dynamics: Dynamics::default(),
        }
    }

    /// Default length of the generated period: one year.
    pub const DEFAULT_DAYS: u32 = 365;

    /// Default first day: 2023-01-01.
    pub(crate) fn default_start() -> DayNumber {
        calendar::days_from_civil(2023, 1, 1)
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.rows == 0 {
            return Err(DataError::config("rows", "must be at least 1"));
        }
        if self.rows > u32::MAX as usize {
            return Err(DataError::config(
                "rows",
                format!("{} is more than {}", self.rows, u32::MAX),
            ));
        }
        if self.days == 0 || self.days > 36_500 {
            return Err(DataError::config(
                "days",
                format!("{} is not in 1..=36500", self.days),
            ));
        }
        let first = calendar::civil_from_days(self.start).0;
        // reports may come up to 1100 days after the last occurrence
        let last = calendar::civil_from_days(self.start + self.days as i32 + 1100).0;
        if first < 1900 || last > 2199 {
            return Err(DataError::config(
                "start",
                format!(
                    "{} + {} days leaves the years 1900..=2199",
                    calendar::iso_date(self.start),
                    self.days
                ),
            ));
        }
        self.dynamics.validate()
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthSummary {
    /// Data rows written.
    pub rows: u64,
    /// Bytes written (after compression).
    pub bytes: u64,
    /// Earliest day of occurrence written.
    pub date_min: DayNumber,
    /// Latest day of occurrence written.
    pub date_max: DayNumber,
    /// Rows per area (index = code - 1).
    pub per_area: Vec<u64>,
    /// Rows written with LAT/LON 0,0.
    pub zero_coords: u64,
}

/// Writes `cfg.rows` synthetic incidents as CSV (header included) to `out`.
pub fn generate(cfg: &SynthConfig, out: impl Write) -> Result<SynthSummary> {
    generate_with_progress(cfg, out, &|_| {})
}

/// [`generate`], calling `progress(rows_written)` after each chunk.
pub fn generate_with_progress(
    cfg: &SynthConfig,
    mut out: impl Write,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SynthSummary> {
    let plan = Plan::new(cfg)?;
    let tables = Tables::new(&cfg.dynamics);
    let mut bytes = 0u64;
    let mut header = HEADER.join(",").into_bytes();
    header.push(b'\n');
    let header = compress(header, cfg.compression)?;
    out.write_all(&header).map_err(write_error)?;
    bytes += header.len() as u64;
    let wave = rayon::current_num_threads().max(1) * 2;
    let mut written = 0u64;
    let mut zero_coords = 0u64;
    for group in plan.chunks.chunks(wave) {
        let parts: Vec<Result<(Vec<u8>, u64, u64)>> = group
            .par_iter()
            .map(|chunk| {
                let rows = plan.rows(chunk, &tables);
                let zeros = rows.iter().filter(|r| r.zero_coords).count() as u64;
                let mut buf = Vec::with_capacity(rows.len() * 260);
                for r in &rows {
                    write_row(&mut buf, r);
                }
                Ok((compress(buf, cfg.compression)?, rows.len() as u64, zeros))
            })
            .collect();
        for part in parts {
            let (buf, n, zeros) = part?;
            out.write_all(&buf).map_err(write_error)?;
            bytes += buf.len() as u64;
            written += n;
            zero_coords += zeros;
            progress(written);
        }
    }
    out.flush().map_err(write_error)?;
    Ok(SynthSummary {
        rows: written,
        bytes,
        date_min: plan.date_min(),
        date_max: plan.date_max(),
        per_area: plan.per_area(),
        zero_coords,
    })
}

/// `rows` synthetic incidents from `seed` with the default configuration,
/// cleaned and sorted exactly as [`load_path`](super::loader::load_path)
/// returns the CSV that [`generate`] writes for the same configuration.
pub fn generate_incidents(rows: usize, seed: u64) -> Vec<Incident> {
    // rows above u32::MAX are capped; the default configuration is otherwise valid
    let cfg = SynthConfig::new(rows.clamp(1, u32::MAX as usize), seed);
    if rows == 0 {
        return Vec::new();
    }
    generate_incidents_with(&cfg).map_or_else(|_| Vec::new(), |l| l.incidents)
}

/// The incidents (and their cleaning report) of a configuration, without
/// the CSV round trip; equal to loading [`generate`]'s output.
pub fn generate_incidents_with(cfg: &SynthConfig) -> Result<super::loader::Loaded> {
    let plan = Plan::new(cfg)?;
    let tables = Tables::new(&cfg.dynamics);
    let parts: Vec<Vec<Incident>> = plan
        .chunks
        .par_iter()
        .map(|chunk| {
            plan.rows(chunk, &tables)
                .iter()
                .map(Row::incident)
                .collect()
        })
        .collect();
    let mut raw = Vec::with_capacity(cfg.rows);
    for p in parts {
        raw.extend(p);
    }
    let tally = Tally {
        rows_read: raw.len() as u64,
        ..Tally::default()
    };
    let (incidents, report) = clean::finish(raw, tally, "synthetic");
    Ok(super::loader::Loaded { incidents, report })
}

fn write_error(e: std::io::Error) -> DataError {
    DataError::Write { source: e }
}

fn compress(buf: Vec<u8>, c: Compression) -> Result<Vec<u8>> {
    match c {
        Compression::None => Ok(buf),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(buf.len() / 5),
                flate2::Compression::fast(),
            );
            enc.write_all(&buf).map_err(write_error)?;
            enc.finish().map_err(write_error)
        }
    }
}

// ---------------------------------------------------------------------------
// Sampling tables.

/// A discrete distribution as a cumulative table.
#[derive(Clone, Debug)]
struct Cdf(Vec<f64>);

impl Cdf {
    fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut acc = 0.0;
        let mut cum: Vec<f64> = weights
            .into_iter()
            .map(|w| {
                acc += w.max(0.0);
                acc
            })
            .collect();
        if acc > 0.0 {
            for c in &mut cum {
                *c /= acc;
            }
        }
        Cdf(cum)
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.0
            .partition_point(|&c| c <= u)
            .min(self.0.len().saturating_sub(1))
    }
}

/// Everything sampled per row, precomputed once.
struct Tables {
    /// `[area][category][day type]`: hour CDFs; day type bit 0 = the evening
    /// is a Friday/Saturday night, bit 1 = the small hours are.
    hours: Vec<Cdf>,
    minutes: Cdf,
    /// Per category: indices into `CRIME_CODES` and their CDF.
    codes: Vec<(Vec<usize>, Cdf)>,
    premises: Vec<Cdf>,
    weapons: Cdf,
    sexes: Vec<Cdf>,
    ages: Cdf,
    descents: Cdf,
    status: Cdf,
    mocode_count: Cdf,
    delays: Cdf,
}

const NIGHT_HOURS: [usize; 8] = [20, 21, 22, 23, 0, 1, 2, 3];

impl Tables {
    fn new(dynamics: &Dynamics) -> Self {
        let mut hours = Vec::with_capacity(AREA_COUNT * Category::COUNT * 4);
        for night in cal::NIGHT_FACTOR {
            for profile in cal::HOUR_PROFILE {
                for day_type in 0..4u8 {
                    let w = (0..24).map(|h| {
                        let mut w = f64::from(profile[h]);
                        if NIGHT_HOURS.contains(&h) {
                            w *= f64::from(night);
                            let evening = h >= 20 && day_type & 1 != 0;
                            let small_hours = h < 4 && day_type & 2 != 0;
                            if evening || small_hours {
                                w *= dynamics.weekend_night_boost;
                            }
                        }
                        w
                    });
                    hours.push(Cdf::new(w));
                }
            }
        }
        let codes = Category::ALL
            .iter()
            .map(|c| {
                let idx: Vec<usize> = (0..cal::CRIME_CODES.len())
                    .filter(|&i| cal::CRIME_CODES[i].category == *c)
                    .collect();
                let cdf = Cdf::new(idx.iter().map(|&i| f64::from(cal::CRIME_CODES[i].weight)));
                (idx, cdf)
            })
            .collect();
        Tables {
            hours,
            minutes: Cdf::new(cal::MINUTE_PROFILE.iter().map(|&w| f64::from(w))),
            codes,
            premises: cal::PREMISES
                .iter()
                .map(|p| Cdf::new(p.iter().map(|x| f64::from(x.weight))))
                .collect(),
            weapons: Cdf::new(cal::WEAPONS.iter().map(|w| f64::from(w.weight))),
            sexes: cal::VICTIM_SEX
                .iter()
                .map(|s| Cdf::new(s.iter().map(|&w| f64::from(w))))
                .collect(),
            ages: Cdf::new(cal::AGE_BINS.iter().map(|b| f64::from(b.2))),
            descents: Cdf::new(cal::DESCENT.iter().map(|d| f64::from(d.1))),
            status: Cdf::new(cal::STATUS.iter().map(|s| f64::from(s.2))),
            mocode_count: Cdf::new(cal::MOCODE_COUNT.iter().map(|&w| f64::from(w))),
            delays: Cdf::new(cal::REPORT_DELAY.iter().map(|d| f64::from(d.2))),
        }
    }

    fn hour_cdf(&self, area: usize, cat: usize, day_type: usize) -> &Cdf {
        &self.hours[(area * Category::COUNT + cat) * 4 + day_type]
    }
}

/// Quirk rates the samples do not show (their exports are uniform in these
/// fields) but other exports do; chosen to exercise the loader.
const P_SHORT_TIME: f64 = 0.05;
/// See [`P_SHORT_TIME`].
const P_SHORT_AREA: f64 = 0.05;
/// Rate of `LOCATION`s with a comma (quoted), e.g. `..., UNIT 4`.
const P_COMMA_LOCATION: f64 = 0.005;
/// Rate of `Mocodes` separated by commas (quoted).
const P_COMMA_MOCODES: f64 = 0.002;

/// Street names and suffixes for `LOCATION` and `Cross Street`.
const STREETS: [(&str, &str); 36] = [
    ("WESTERN", "AV"),
    ("VERMONT", "AV"),
    ("FIGUEROA", "ST"),
    ("SUNSET", "BL"),
    ("HOLLYWOOD", "BL"),
    ("WILSHIRE", "BL"),
    ("SLAUSON", "AV"),
    ("FLORENCE", "AV"),
    ("MANCHESTER", "AV"),
    ("CENTRAL", "AV"),
    ("BROADWAY", ""),
    ("MAIN", "ST"),
    ("SAN PEDRO", "ST"),
    ("PICO", "BL"),
    ("OLYMPIC", "BL"),
    ("VENICE", "BL"),
    ("WASHINGTON", "BL"),
    ("JEFFERSON", "BL"),
    ("CRENSHAW", "BL"),
    ("LA BREA", "AV"),
    ("FAIRFAX", "AV"),
    ("SEPULVEDA", "BL"),
    ("VAN NUYS", "BL"),
    ("VENTURA", "BL"),
    ("SHERMAN", "WY"),
    ("ROSCOE", "BL"),
    ("VICTORY", "BL"),
    ("DEVONSHIRE", "ST"),
    ("RESEDA", "BL"),
    ("TOPANGA CANYON", "BL"),
    ("LANKERSHIM", "BL"),
    ("YORK", "BL"),
    ("EAGLE ROCK", "BL"),
    ("CESAR E CHAVEZ", "AV"),
    ("GAFFEY", "ST"),
    ("PACIFIC COAST", "HY"),
];

// ---------------------------------------------------------------------------
// The plan: cell counts, DR_NO numbering and chunks.

/// Rows per chunk (a chunk ends at the first (day, area) cell boundary after
/// this many rows).
const CHUNK_ROWS: u32 = 16_384;

struct Plan {
    seed: u64,
    start: DayNumber,
    days: usize,
    /// Rows per cell, `[day][area][category]`.
    counts: Vec<u32>,
    /// Per `[day][area]`: the first sequence number of the cell within its
    /// (year, area).
    seq_base: Vec<u32>,
    /// Digits of the sequence part of `DR_NO` (5 unless an area-year has more
    /// than 99,999 incidents).
    seq_digits: u32,
    /// Chunks as ranges of `[day][area]` cell indices, with their index.
    chunks: Vec<ChunkSpec>,
}

#[derive(Clone, Copy, Debug)]
struct ChunkSpec {
    index: u64,
    cells: (usize, usize),
}

/// The stationary standard deviation of an AR(1) with coefficient `phi` and
/// innovation `sigma`.
fn ar_sd(phi: f64, sigma: f64) -> f64 {
    sigma / (1.0 - phi * phi).sqrt()
}

impl Plan {
    fn new(cfg: &SynthConfig) -> Result<Self> {
        cfg.validate()?;
        let dy = &cfg.dynamics;
        let days = cfg.days as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(0);
        let normal = |rng: &mut ChaCha8Rng| -> f64 { rng.sample(StandardNormal) };

        // latent log-intensities
        let mut city = Vec::with_capacity(days);
        let mut level = ar_sd(dy.city_phi, dy.city_sigma) * normal(&mut rng);
        for _ in 0..days {
            city.push(level);
            level = dy.city_phi * level + dy.city_sigma * normal(&mut rng);
        }
        let mut drift = vec![0.0f64; days * AREA_COUNT];
        for a in 0..AREA_COUNT {
            let mut x = ar_sd(dy.area_phi, dy.area_sigma) * normal(&mut rng);
            for d in 0..days {
                drift[d * AREA_COUNT + a] = x;
                x = dy.area_phi * x + dy.area_sigma * normal(&mut rng);
            }
        }
        let weeks = days / 7 + 1;
        let mut mix = vec![0.0f64; weeks * AREA_COUNT * Category::COUNT];
        for ac in 0..AREA_COUNT * Category::COUNT {
            let mut y = ar_sd(dy.mix_phi, dy.mix_sigma) * normal(&mut rng);
            for w in 0..weeks {
                mix[w * AREA_COUNT * Category::COUNT + ac] = y;
                y = dy.mix_phi * y + dy.mix_sigma * normal(&mut rng);
            }
        }
        let gamma = if dy.day_noise_shape > 0.0 {
            Gamma::new(dy.day_noise_shape, 1.0 / dy.day_noise_shape).ok()
        } else {
            None
        };

        // cell weights, day-major
        let cells = days * AREA_COUNT * Category::COUNT;
        let mut weights = Vec::with_capacity(cells);
        for d in 0..days {
            let day = cfg.start + d as i32;
            let wd = calendar::weekday(day) as usize;
            let doy = f64::from(calendar::day_of_year(day));
            let season = (1.0
                + dy.season_amplitude
                    * (2.0 * std::f64::consts::PI * (doy - dy.season_peak_day) / 365.25).cos())
            .ln();
            for a in 0..AREA_COUNT {
                let noise = gamma.as_ref().map_or(1.0, |g| g.sample(&mut rng));
                let base = city[d] + drift[d * AREA_COUNT + a] + season;
                for c in 0..Category::COUNT {
                    let share = f64::from(cal::AREA_SHARE[a])
                        * f64::from(cal::CATEGORY_MIX[a][c])
                        * 7.0
                        * f64::from(cal::WEEKDAY_PROFILE[c][wd]);
                    let y = mix[(d / 7) * AREA_COUNT * Category::COUNT + a * Category::COUNT + c];
                    weights.push(share * (base + y).exp() * noise);
                }
            }
        }

        // exactly `rows` incidents: a multinomial draw by conditional binomials
        let mut counts = Vec::with_capacity(cells);
        let mut left = cfg.rows as u64;
        let mut mass: f64 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let n = if left == 0 {
                0
            } else if i + 1 == cells || mass <= w {
                left
            } else {
                let p = (w / mass).clamp(0.0, 1.0);
                Binomial::new(left, p).map_or(0, |b| b.sample(&mut rng))
            };
            counts.push(n as u32);
            left -= n;
            mass -= w;
        }

        // DR_NO sequence numbers per (year, area)
        let mut seq_base = vec![0u32; days * AREA_COUNT];
        let mut next = [0u32; AREA_COUNT];
        let mut year = calendar::civil_from_days(cfg.start).0;
        let mut max_seq = 0u32;
        for d in 0..days {
            let y = calendar::civil_from_days(cfg.start + d as i32).0;
            if y != year {
                year = y;
                next = [0; AREA_COUNT];
            }
            for (a, slot) in next.iter_mut().enumerate() {
                let cell = d * AREA_COUNT + a;
                seq_base[cell] = *slot;
                let n: u32 = counts[cell * Category::COUNT..(cell + 1) * Category::COUNT]
                    .iter()
                    .sum();
                *slot += n;
                max_seq = max_seq.max(*slot);
            }
        }
        let seq_digits = (max_seq.saturating_sub(1).max(1).ilog10() + 1).max(5);

        // chunks of consecutive (day, area) cells
        let mut chunks = Vec::new();
        let mut begin = 0;
        let mut acc = 0u32;
        for cell in 0..days * AREA_COUNT {
            acc += counts[cell * Category::COUNT..(cell + 1) * Category::COUNT]
                .iter()
                .sum::<u32>();
            if acc >= CHUNK_ROWS || cell + 1 == days * AREA_COUNT {
                chunks.push(ChunkSpec {
                    index: chunks.len() as u64,
                    cells: (begin, cell + 1),
                });
                begin = cell + 1;
                acc = 0;
            }
        }
        Ok(Plan {
            seed: cfg.seed,
            start: cfg.start,
            days,
            counts,
            seq_base,
            seq_digits,
            chunks,
        })
    }

    fn day_has_rows(&self, d: usize) -> bool {
        let w = AREA_COUNT * Category::COUNT;
        self.counts[d * w..(d + 1) * w].iter().any(|&n| n > 0)
    }

    fn date_min(&self) -> DayNumber {
        let d = (0..self.days).find(|&d| self.day_has_rows(d)).unwrap_or(0);
        self.start + d as i32
    }

    fn date_max(&self) -> DayNumber {
        let d = (0..self.days)
            .rev()
            .find(|&d| self.day_has_rows(d))
            .unwrap_or(0);
        self.start + d as i32
    }

    fn per_area(&self) -> Vec<u64> {
        let mut per = vec![0u64; AREA_COUNT];
        for (i, &n) in self.counts.iter().enumerate() {
            per[(i / Category::COUNT) % AREA_COUNT] += u64::from(n);
        }
        per
    }

    /// The rows of one chunk, in output order.
    fn rows(&self, chunk: &ChunkSpec, t: &Tables) -> Vec<Row> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(chunk.index + 1);
        let (lo, hi) = chunk.cells;
        let n: u32 = self.counts[lo * Category::COUNT..hi * Category::COUNT]
            .iter()
            .sum();
        let mut rows = Vec::with_capacity(n as usize);
        for cell in lo..hi {
            let (d, a) = (cell / AREA_COUNT, cell % AREA_COUNT);
            let day = self.start + d as i32;
            let wd = calendar::weekday(day);
            // evening of Fri/Sat, small hours of Sat/Sun
            let day_type = usize::from(wd == 4 || wd == 5) + 2 * usize::from(wd == 5 || wd == 6);
            let mut seq = self.seq_base[cell];
            for c in 0..Category::COUNT {
                for _ in 0..self.counts[cell * Category::COUNT + c] {
                    rows.push(self.row(&mut rng, t, day, a, c, day_type, seq));
                    seq += 1;
                }
            }
        }
        // the export is not in any useful order
        for i in (1..rows.len()).rev() {
            let j = rng.random_range(0..=i);
            rows.swap(i, j);
        }
        rows
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        rng: &mut ChaCha8Rng,
        t: &Tables,
        day: DayNumber,
        a: usize,
        c: usize,
        day_type: usize,
        seq: u32,
    ) -> Row {
        let area = AREAS[a].code;
        let (codes, code_cdf) = &t.codes[c];
        let code_idx = codes[code_cdf.sample(rng)] as u8;
        let hour = t.hour_cdf(a, c, day_type).sample(rng) as u16;
        let mut minute = t.minutes.sample(rng) as u16;
        if hour == 0 && minute == 0 {
            // the export writes midnight as 0001
            minute = 1;
        }
        let bin = &cal::REPORT_DELAY[t.delays.sample(rng)];
        let delay = rng.random_range(i32::from(bin.0)..=i32::from(bin.1));

        // place: a normal around the area's mean location; the reporting
        // district is the cell of a 5 x 5 grid over +-2 sd
        let (mlat, mlon, slat, slon) = cal::AREA_PLACE[a];
        let zlat: f64 = rng.sample::<f64, _>(StandardNormal).clamp(-2.5, 2.5);
        let zlon: f64 = rng.sample::<f64, _>(StandardNormal).clamp(-2.5, 2.5);
        let lat = f64::from(mlat) + zlat * f64::from(slat);
        let lon = f64::from(mlon) + zlon * f64::from(slon);
        let grid = |z: f64| ((z + 2.0) / 0.8).floor().clamp(0.0, 4.0) as u16;
        let rd = u16::from(area) * 100 + (grid(zlat) + 1) * 10 + grid(zlon) + 1;
        let zero_coords = rng.random_bool(f64::from(cal::P_ZERO_COORDS));

        let sex_idx = t.sexes[c].sample(rng);
        let sex = [0, b'M', b'F', b'X', b'H'][sex_idx];
        let age = if rng.random_bool(f64::from(cal::AGE_UNKNOWN_BY_SEX[sex_idx])) {
            if rng.random_bool(f64::from(cal::P_NEGATIVE_AGE)) {
                -1
            } else {
                0
            }
        } else {
            let (from, to, _) = cal::AGE_BINS[t.ages.sample(rng)];
            rng.random_range(from..=to) as i8
        };
        let descent = match sex {
            0 => 0,
            b'X' if rng.random_bool(f64::from(cal::DESCENT_X_GIVEN_SEX_X)) => b'X',
            _ => cal::DESCENT[t.descents.sample(rng)].0,
        };
        let premise_idx = t.premises[c].sample(rng) as u8;
        let weapon_idx = rng
            .random_bool(f64::from(cal::WEAPON_RATE[c]))
            .then(|| t.weapons.sample(rng) as u8);
        let status_idx = t.status.sample(rng) as u8;
        let n_mo = t.mocode_count.sample(rng) as u8;
        let mut mocodes = [0u8; 10];
        for m in mocodes.iter_mut().take(usize::from(n_mo)) {
            *m = rng.random_range(0..cal::MOCODES.len()) as u8;
        }
        let crm_cd_2 = rng
            .random_bool(f64::from(cal::P_CRM_CD_2))
            .then(|| rng.random_range(0..cal::CRIME_CODES.len()) as u8);
        let street = ((a * 7 + rng.random_range(0..9usize)) % STREETS.len()) as u8;
        let cross = rng.random_bool(f64::from(cal::P_CROSS_STREET)).then(|| {
            ((usize::from(street) + rng.random_range(1..STREETS.len())) % STREETS.len()) as u8
        });
        let block = rng.random_range(1..=200u16) * 100;
        let dir = [b' ', b'N', b'S', b'E', b'W'][rng.random_range(0..5usize)];

        // date layouts: a layout per row, flipped per field so that the real
        // share of rows mixes the two layouts
        let row_24h = rng.random_bool(f64::from(cal::P_DATE_24H));
        let flip = (1.0 - (1.0 - 2.0 * f64::from(cal::P_MIXED_DATE_ROW)).sqrt()) / 2.0;
        let rpt_24h = row_24h ^ rng.random_bool(flip);
        let occ_24h = row_24h ^ rng.random_bool(flip);

        let year = (calendar::civil_from_days(day).0.rem_euclid(100)) as u64;
        let dr_no = (year * 100 + u64::from(area)) * 10u64.pow(self.seq_digits) + u64::from(seq);
        Row {
            dr_no,
            dr_width: 4 + self.seq_digits as u8,
            dr_padded: rng.random_bool(f64::from(cal::P_LEADING_ZERO_DR_NO)),
            day_occ: day,
            day_rpt: day + delay,
            minute: hour * 60 + minute,
            area,
            rd,
            code_idx,
            crm_cd_2,
            age,
            sex,
            descent,
            category: c as u8,
            premise_idx,
            weapon_idx,
            status_idx,
            mocodes,
            n_mo,
            mo_comma: rng.random_bool(P_COMMA_MOCODES),
            lat_e4: (lat * 1e4).round() as i32,
            lon_e4: (lon * 1e4).round() as i32,
            zero_coords,
            street,
            cross,
            block,
            dir,
            loc_comma: rng.random_bool(P_COMMA_LOCATION),
            rpt_24h,
            occ_24h,
            short_time: rng.random_bool(P_SHORT_TIME),
            short_area: rng.random_bool(P_SHORT_AREA),
        }
    }
}

/// Everything drawn for one row.
#[derive(Clone, Debug)]
struct Row {
    dr_no: u64,
    dr_width: u8,
    dr_padded: bool,
    day_occ: DayNumber,
    day_rpt: DayNumber,
    minute: u16,
    area: u8,
    rd: u16,
    code_idx: u8,
    crm_cd_2: Option<u8>,
    /// 1.. known, 0 or -1 unknown.
    age: i8,
    /// 0 = empty.
    sex: u8,
    /// 0 = empty.
    descent: u8,
    category: u8,
    premise_idx: u8,
    weapon_idx: Option<u8>,
    status_idx: u8,
    mocodes: [u8; 10],
    n_mo: u8,
    mo_comma: bool,
    lat_e4: i32,
    lon_e4: i32,
    zero_coords: bool,
    street: u8,
    cross: Option<u8>,
    block: u16,
    dir: u8,
    loc_comma: bool,
    rpt_24h: bool,
    occ_24h: bool,
    short_time: bool,
    short_area: bool,
}

impl Row {
    fn crime(&self) -> &'static cal::CrimeCode {
        &cal::CRIME_CODES[usize::from(self.code_idx)]
    }

    fn premise(&self) -> &'static cal::Coded {
        &cal::PREMISES[usize::from(self.category)][usize::from(self.premise_idx)]
    }

    /// The incident the loader makes of this row's CSV text (before
    /// cleaning: coordinates NaN when written as 0,0).
    fn incident(&self) -> Incident {
        let crime = self.crime();
        let (mut lat, mut lon) = (
            schema::decimal_f32(i64::from(self.lat_e4), 4),
            schema::decimal_f32(i64::from(self.lon_e4), 4),
        );
        if self.zero_coords || !clean::in_la(lat, lon) {
            (lat, lon) = (f32::NAN, f32::NAN);
        }
        Incident {
            dr_no: self.dr_no,
            date_reported: self.day_rpt,
            date_occurred: self.day_occ,
            minute_of_day: self.minute,
            area: self.area,
            reporting_district: self.rd,
            part: crime.part,
            crime_code: crime.code,
            category: crime.category,
            victim_age: (self.age >= 1).then_some(self.age as u8),
            victim_sex: (self.sex != 0).then_some(self.sex),
            victim_descent: (self.descent != 0).then_some(self.descent),
            premise_code: Some(self.premise().code),
            weapon_code: self.weapon_idx.map(|w| cal::WEAPONS[usize::from(w)].code),
            lat,
            lon,
        }
    }
}

// ---------------------------------------------------------------------------
// CSV writing, by hand (no per-field allocation).

fn put_uint(buf: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let digits = tmp.len() - i;
    buf.extend(std::iter::repeat_n(b'0', width.saturating_sub(digits)));
    buf.extend_from_slice(&tmp[i..]);
}

fn put_int(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    put_uint(buf, v.unsigned_abs(), 1);
}

/// A text field, quoted when it holds a comma or a quote.
fn put_text(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b == b',' || b == b'"') {
        buf.push(b'"');
        for b in s.bytes() {
            if b == b'"' {
                buf.push(b'"');
            }
            buf.push(b);
        }
        buf.push(b'"');
    } else {
        buf.extend_from_slice(s.as_bytes());
    }
}

fn put_date(buf: &mut Vec<u8>, day: DayNumber, h24: bool) {
    let (y, m, d) = calendar::civil_from_days(day);
    put_uint(buf, u64::from(m), 2);
    buf.push(b'/');
    put_uint(buf, u64::from(d), 2);
    buf.push(b'/');
    put_uint(buf, y as u64, 4);
    buf.extend_from_slice(if h24 { b" 00:00" } else { b" 12:00:00 AM" });
}

/// A coordinate in 1e-4 degrees, trailing zeros trimmed like the export
/// (`34.0141`, `34.01`, `34`).
fn put_coord(buf: &mut Vec<u8>, e4: i32) {
    if e4 < 0 {
        buf.push(b'-');
    }
    let v = e4.unsigned_abs();
    put_uint(buf, u64::from(v / 10_000), 1);
    let mut frac = v % 10_000;
    if frac != 0 {
        let mut width = 4;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        buf.push(b'.');
        put_uint(buf, u64::from(frac), width);
    }
}

fn put_street_padded(buf: &mut Vec<u8>, street: u8) {
    let (name, suffix) = STREETS[usize::from(street) % STREETS.len()];
    buf.extend_from_slice(name.as_bytes());
    buf.extend(std::iter::repeat_n(
        b' ',
        29usize.saturating_sub(name.len()),
    ));
    buf.extend_from_slice(suffix.as_bytes());
}

fn write_row(buf: &mut Vec<u8>, r: &Row) {
    let crime = r.crime();
    if r.dr_padded {
        buf.push(b'0');
    }
    put_uint(buf, r.dr_no, usize::from(r.dr_width));
    buf.push(b',');
    put_date(buf, r.day_rpt, r.rpt_24h);
    buf.push(b',');
    put_date(buf, r.day_occ, r.occ_24h);
    buf.push(b',');
    let hhmm = u64::from(r.minute / 60 * 100 + r.minute % 60);
    put_uint(buf, hhmm, if r.short_time { 1 } else { 4 });
    buf.push(b',');
    put_uint(buf, u64::from(r.area), if r.short_area { 1 } else { 2 });
    buf.push(b',');
    buf.extend_from_slice(AREAS[usize::from(r.area) - 1].name.as_bytes());
    buf.push(b',');
    put_uint(buf, u64::from(r.rd), 4);
    buf.push(b',');
    put_uint(buf, u64::from(crime.part), 1);
    buf.push(b',');
    put_uint(buf, u64::from(crime.code), 3);
    buf.push(b',');
    put_text(buf, crime.desc);
    buf.push(b',');
    if r.n_mo > 0 {
        let comma = r.mo_comma && r.n_mo > 1;
        if comma {
            buf.push(b'"');
        }
        for (i, &m) in r.mocodes[..usize::from(r.n_mo)].iter().enumerate() {
            if i > 0 {
                buf.extend_from_slice(if comma { b", " } else { b" " });
            }
            buf.extend_from_slice(cal::MOCODES[usize::from(m)].as_bytes());
        }
        if comma {
            buf.push(b'"');
        }
    }
    buf.push(b',');
    put_int(buf, i64::from(r.age));
    buf.push(b',');
    if r.sex != 0 {
        buf.push(r.sex);
    }
    buf.push(b',');
    if r.descent != 0 {
        buf.push(r.descent);
    }
    buf.push(b',');
    let premise = r.premise();
    put_uint(buf, u64::from(premise.code), 3);
    buf.push(b',');
    put_text(buf, premise.desc);
    buf.push(b',');
    if let Some(w) = r.weapon_idx {
        let w = &cal::WEAPONS[usize::from(w)];
        put_uint(buf, u64::from(w.code), 3);
        buf.push(b',');
        put_text(buf, w.desc);
    } else {
        buf.push(b',');
    }
    buf.push(b',');
    let (status, status_desc, _) = cal::STATUS[usize::from(r.status_idx)];
    buf.extend_from_slice(status.as_bytes());
    buf.push(b',');
    buf.extend_from_slice(status_desc.as_bytes());
    buf.push(b',');
    put_uint(buf, u64::from(crime.code), 3);
    buf.push(b',');
    if let Some(k) = r.crm_cd_2 {
        put_uint(buf, u64::from(cal::CRIME_CODES[usize::from(k)].code), 3);
    }
    buf.extend_from_slice(b",,,");
    // LOCATION and Cross Street
    if r.loc_comma {
        buf.push(b'"');
    }
    if r.cross.is_none() {
        put_uint(buf, u64::from(r.block), 1);
        if r.dir == b' ' {
            buf.extend_from_slice(b"    ");
        } else {
            buf.extend_from_slice(&[b' ', r.dir, b' ', b' ']);
        }
    }
    put_street_padded(buf, r.street);
    if r.loc_comma {
        buf.extend_from_slice(b", UNIT ");
        put_uint(buf, u64::from(r.block / 100), 1);
        buf.push(b'"');
    }
    buf.push(b',');
    if let Some(x) = r.cross {
        put_street_padded(buf, x);
    }
    buf.push(b',');
    if r.zero_coords {
        buf.extend_from_slice(b"0,0\n");
    } else {
        put_coord(buf, r.lat_e4);
        buf.push(b',');
        put_coord(buf, r.lon_e4);
        buf.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::load_reader;
    use crate::schema::Column;

    fn cfg(rows: usize, seed: u64) -> SynthConfig {
        SynthConfig {
            days: 120,
            ..SynthConfig::new(rows, seed)
        }
    }

    fn csv_bytes(cfg: &SynthConfig) -> (Vec<u8>, SynthSummary) {
        let mut out = Vec::new();
        let summary = generate(cfg, &mut out).unwrap();
        (out, summary)
    }

    #[test]
    fn coordinates_and_numbers_format_like_the_export() {
        let mut b = Vec::new();
        put_coord(&mut b, 340_141);
        b.push(b' ');
        put_coord(&mut b, -1_182_900);
        b.push(b' ');
        put_coord(&mut b, 340_000);
        b.push(b' ');
        put_coord(&mut b, -1_182_978);
        b.push(b' ');
        put_uint(&mut b, 5, 4);
        b.push(b' ');
        put_int(&mut b, -1);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "34.0141 -118.29 34 -118.2978 0005 -1"
        );
        let mut d = Vec::new();
        put_date(&mut d, calendar::days_from_civil(2024, 2, 9), false);
        put_date(&mut d, calendar::days_from_civil(2024, 2, 9), true);
        assert_eq!(d, b"02/09/2024 12:00:00 AM02/09/2024 00:00");
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, sa) = csv_bytes(&cfg(3_000, 7));
        let (b, _) = csv_bytes(&cfg(3_000, 7));
        let (c, _) = csv_bytes(&cfg(3_000, 8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(sa.rows, 3_000);
        assert_eq!(sa.per_area.iter().sum::<u64>(), 3_000);
        assert_eq!(sa.bytes, a.len() as u64);
        assert!(a.starts_with(HEADER.join(",").as_bytes()));
    }

    #[test]
    fn csv_read_back_gives_the_same_incidents() {
        let c = SynthConfig {
            days: 60,
            ..SynthConfig::new(40_000, 3)
        };
        let (bytes, summary) = csv_bytes(&c);
        let loaded = load_reader(bytes.as_slice(), "synthetic.csv").unwrap();
        let direct = generate_incidents_with(&c).unwrap();
        assert_eq!(loaded.report.rows_read, 40_000);
        assert_eq!(
            loaded.report.rows_kept, 40_000,
            "{:?}",
            loaded.report.dropped
        );
        assert!(
            loaded.incidents == direct.incidents,
            "read back differs from generate_incidents"
        );
        assert_eq!(loaded.report.imputed_in(Column::Lat), summary.zero_coords);
        assert_eq!(loaded.report.date_min, Some(summary.date_min));
        assert_eq!(loaded.report.date_max, Some(summary.date_max));
        assert_eq!(loaded.report.areas.len(), 21);
        let r = &loaded.report;
        // quirks are there, at plausible rates
        assert_eq!(r.date_formats.len(), 2, "{:?}", r.date_formats);
        let rows = 40_000.0;
        let mixed = r.mixed_date_format_rows as f64 / rows;
        assert!(
            (mixed - f64::from(cal::P_MIXED_DATE_ROW)).abs() < 0.01,
            "{mixed}"
        );
        let h24 = r.date_formats["MM/DD/YYYY HH:MM"] as f64 / (2.0 * rows);
        assert!((h24 - f64::from(cal::P_DATE_24H)).abs() < 0.01, "{h24}");
        assert!(
            summary.zero_coords > 20 && summary.zero_coords < 100,
            "{}",
            summary.zero_coords
        );
        let weapons_empty = r.empty_in(Column::WeaponUsedCd) as f64 / rows;
        assert!((0.55..0.8).contains(&weapons_empty), "{weapons_empty}");
        assert!(r.unknown_in(Column::VictAge) > 5_000);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains(",\"0") || text.contains(", UNIT "),
            "quoted commas in Mocodes or LOCATION"
        );
        assert!(text.contains("\"MULTI-UNIT DWELLING (APARTMENT, DUPLEX, ETC)\""));
        assert!(
            text.lines().skip(1).any(|l| l.starts_with('0')),
            "DR_NO with a leading zero"
        );
        // short TIME OCC and AREA forms
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let (mut short_time, mut short_area) = (0, 0);
        for rec in rdr.records() {
            let rec = rec.unwrap();
            short_time += usize::from(rec[3].len() < 4);
            short_area += usize::from(rec[4].len() == 1);
        }
        assert!(
            short_time > 400 && short_area > 400,
            "{short_time} {short_area}"
        );
    }

    #[test]
    fn gzip_output_reads_back() {
        let c = SynthConfig {
            compression: Compression::Gzip,
            ..cfg(20_000, 11)
        };
        let (gz, _) = csv_bytes(&c);
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let loaded = load_reader(gz.as_slice(), "s.csv.gz").unwrap();
        let plain = load_reader(csv_bytes(&cfg(20_000, 11)).0.as_slice(), "s.csv").unwrap();
        assert_eq!(loaded.incidents, plain.incidents);
    }

    #[test]
    fn la_like_volumes_mixes_and_profiles() {
        let incidents = generate_incidents(60_000, 5);
        assert_eq!(incidents.len(), 60_000);
        let n = incidents.len() as f64;
        let mut area = [0f64; AREA_COUNT];
        let mut cat = [0f64; Category::COUNT];
        let mut night = 0f64;
        for i in &incidents {
            area[usize::from(i.area) - 1] += 1.0;
            cat[i.category.index()] += 1.0;
            night += f64::from(u8::from(i.hour() >= 20 || i.hour() < 4));
        }
        for (a, (count, share)) in area.iter().zip(cal::AREA_SHARE).enumerate() {
            // drift moves areas around, but not far
            let ratio = count / n / f64::from(share);
            assert!((0.6..1.6).contains(&ratio), "area {a}: {ratio}");
        }
        let vehicle = cat[Category::Vehicle.index()] / n;
        assert!((0.12..0.28).contains(&vehicle), "{vehicle}");
        assert!((0.25..0.40).contains(&(night / n)), "{}", night / n);
        // weekly seasonality: Fridays busier than Tuesdays
        let per_wd = |wd: u32| {
            incidents
                .iter()
                .filter(|i| calendar::weekday(i.date_occurred) == wd)
                .count()
        };
        assert!(per_wd(4) as f64 > 1.1 * per_wd(1) as f64);
    }

    /// Lagged counts predict: the day-to-day autocorrelation of an area's
    /// daily count, after removing the weekday profile, is clearly positive.
    #[test]
    fn daily_counts_are_autocorrelated() {
        let c = SynthConfig {
            days: 365,
            ..SynthConfig::new(200_000, 9)
        };
        let l = generate_incidents_with(&c).unwrap();
        let days = 365;
        let mut counts = vec![0f64; days * AREA_COUNT];
        for i in &l.incidents {
            let d = (i.date_occurred - c.start) as usize;
            counts[d * AREA_COUNT + usize::from(i.area) - 1] += 1.0;
        }
        let mut corr_sum = 0.0;
        for a in 0..AREA_COUNT {
            // a 7-day moving average against the next week's
            let weekly: Vec<f64> = (0..days / 7)
                .map(|w| (0..7).map(|k| counts[(w * 7 + k) * AREA_COUNT + a]).sum())
                .collect();
            let (x, y) = (&weekly[..weekly.len() - 1], &weekly[1..]);
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let (mx, my) = (mean(x), mean(y));
            let cov: f64 = x.iter().zip(y).map(|(p, q)| (p - mx) * (q - my)).sum();
            let vx: f64 = x.iter().map(|p| (p - mx).powi(2)).sum();
            let vy: f64 = y.iter().map(|q| (q - my).powi(2)).sum();
            corr_sum += cov / (vx * vy).sqrt();
        }
        let corr = corr_sum / AREA_COUNT as f64;
        assert!(corr > 0.5, "week-to-week correlation {corr}");
    }

    #[test]
    fn bad_configs_are_errors() {
        assert!(generate(&SynthConfig::new(0, 1), Vec::new()).is_err());
        let c = SynthConfig {
            days: 0,
            ..SynthConfig::new(10, 1)
        };
        assert!(matches!(
            generate(&c, Vec::new()),
            Err(DataError::InvalidConfig { .. })
        ));
        let mut c = SynthConfig::new(10, 1);
        c.dynamics.area_phi = 1.0;
        assert!(generate(&c, Vec::new()).is_err());
        let c = SynthConfig {
            start: calendar::days_from_civil(2198, 1, 1),
            ..SynthConfig::new(10, 1)
        };
        assert!(generate(&c, Vec::new()).is_err());
        assert!(generate_incidents(0, 1).is_empty());
    }

    #[test]
    fn many_incidents_in_one_area_year_widen_the_dr_no() {
        let small = Plan::new(&SynthConfig::new(1_000_000, 1)).unwrap();
        assert_eq!(small.seq_digits, 5);
        // Central gets ~7 % of 2.2M rows in one day: more than 99,999
        let c = SynthConfig {
            days: 1,
            ..SynthConfig::new(2_200_000, 1)
        };
        let plan = Plan::new(&c).unwrap();
        assert_eq!(plan.seq_digits, 6);
        let top = plan.per_area().into_iter().max().unwrap();
        assert!(top > 99_999, "{top}");
    }
}
