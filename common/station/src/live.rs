//! The live state behind a station's prediction service: its records (the
//! file it trains on, and the incidents sent to it since, kept durably in an
//! [`IncidentStore`]), the model being served ([`ModelSlot`]), and the
//! predictions already computed for the current model, data and period.
//!
//! Everything here is transport-free; the HTTP layer of `fedcrime-client
//! serve` maps [`LiveError`] to status codes.
//!
//! - **Own areas.** A station predicts and ingests only its own areas (its
//!   records hold no others, so predictions elsewhere would be made from
//!   empty history). Without an area selection (a quick try on a city file)
//!   it serves all 21.
//! - **Time.** A prediction is for one time step of the model's task
//!   (4-hour block for risk, day or week for counts): any step the history
//!   can feature, up to the one right after its latest incident ("next").
//! - **Ingestion.** A batch is checked whole (areas), de-duplicated by
//!   `DR_NO` against the file and the store, written and synced before the
//!   call returns; then the history and its generation number change, so the
//!   next prediction sees the new incidents.
//! - **Cache.** The prediction for all areas at one step is computed once per
//!   (model, data generation, step) and shared; a swap or an ingestion makes
//!   the old entries unreachable.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fedcrime_data::calendar::{civil_from_days, iso_date};
use fedcrime_data::schema::parse_iso_date;
use fedcrime_data::tasks::TimeUnit;
use fedcrime_data::{area, Incident};

use crate::ingest::IngestError;
use crate::predict::{ModelSlot, Prediction, Served};
use crate::store::{IncidentStore, OpenReport, StoreError};
use crate::StationError;

/// Entries kept in the prediction cache before it is emptied.
const CACHE_ENTRIES: usize = 256;

/// What a request to the live station can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// A request parameter is wrong (HTTP 400/422).
    #[error("{field}: {reason}")]
    Invalid {
        /// The parameter, e.g. `area` or `at`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An area this station does not serve (HTTP 404).
    #[error("area {area}: this station serves area(s) {serves}")]
    NotServed {
        /// The area asked for.
        area: u8,
        /// The areas it serves.
        serves: String,
    },
    /// No model is loaded yet (HTTP 503).
    #[error("no model is loaded yet")]
    NotReady,
    /// The body could not be taken (HTTP 400/415).
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The store could not be written (HTTP 500; nothing was acknowledged).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model failed (HTTP 500).
    #[error(transparent)]
    Model(#[from] StationError),
}

fn invalid(field: &str, reason: impl Into<String>) -> LiveError {
    LiveError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What an ingestion did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Ingested {
    /// New incidents, on disk.
    pub added: usize,
    /// Incidents already known (file or store) or repeated, skipped.
    pub duplicates: usize,
    /// Incidents in the history now.
    pub total: usize,
    /// The data generation after the call.
    pub generation: u64,
}

/// Predictions of one step from one model.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The model that made them.
    pub model: Arc<Served>,
    /// The step.
    pub step: u32,
    /// One per area asked for.
    pub predictions: Vec<Prediction>,
}

type CacheKey = (u64, u64, u32);

/// A station's records, model and predictions (see the module docs).
#[derive(Debug)]
pub struct LiveStation {
    areas: Option<BTreeSet<u8>>,
    base_ids: HashSet<u64>,
    store: Mutex<IncidentStore>,
    history: RwLock<Arc<Vec<Incident>>>,
    /// The latest incident's `day * 1440 + minute + 1` (0: none), so
    /// "next" needs no scan of the history.
    latest: AtomicU64,
    generation: AtomicU64,
    slot: ModelSlot,
    cache: Mutex<HashMap<CacheKey, Arc<Vec<Prediction>>>>,
    caching: bool,
}

impl LiveStation {
    /// The live station over `base` (the records it trains on, already
    /// restricted to its areas) and the store at `store`, serving `areas`
    /// (`None`: all 21). Stored incidents that the file already holds are
    /// not counted twice.
    pub fn open(
        base: Vec<Incident>,
        areas: Option<BTreeSet<u8>>,
        store: &Path,
        caching: bool,
    ) -> Result<(Self, OpenReport), LiveError> {
        if let Some(bad) = areas.iter().flatten().find(|a| area(**a).is_none()) {
            return Err(invalid(
                "area",
                format!("{bad} is not an LAPD area code (1..=21)"),
            ));
        }
        let (store, report) = IncidentStore::open(store)?;
        let base_ids: HashSet<u64> = base.iter().map(|i| i.dr_no).collect();
        let mut history = base;
        history.extend(
            store
                .incidents()
                .iter()
                .filter(|i| !base_ids.contains(&i.dr_no))
                .cloned(),
        );
        let latest = history.iter().map(moment).max().unwrap_or(0);
        Ok((
            LiveStation {
                areas,
                latest: AtomicU64::new(latest),
                base_ids,
                store: Mutex::new(store),
                history: RwLock::new(Arc::new(history)),
                generation: AtomicU64::new(0),
                slot: ModelSlot::new(),
                cache: Mutex::new(HashMap::new()),
                caching,
            },
            report,
        ))
    }

    /// The model slot (install models here).
    pub fn slot(&self) -> &ModelSlot {
        &self.slot
    }

    /// Installs `model` if it is newer than the one served (or none is);
    /// returns whether it was installed.
    pub fn install_if_newer(&self, model: Served) -> bool {
        match self.slot.get() {
            Some(cur) if cur.round >= model.round && cur.round != 0 => false,
            _ => {
                self.slot.install(model);
                true
            }
        }
    }

    /// The areas served, ascending.
    pub fn areas(&self) -> Vec<u8> {
        match &self.areas {
            Some(a) => a.iter().copied().collect(),
            None => (1..=21).collect(),
        }
    }

    /// The current history (records and ingested incidents).
    pub fn history(&self) -> Arc<Vec<Incident>> {
        self.history
            .read()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The incident `dr_no`, if the history holds it.
    pub fn incident(&self, dr_no: u64) -> Option<Incident> {
        self.history()
            .iter()
            .rev()
            .find(|i| i.dr_no == dr_no)
            .cloned()
    }

    /// The data generation: 0 at open, one more per ingestion that added rows.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The served model, or [`LiveError::NotReady`].
    pub fn model(&self) -> Result<Arc<Served>, LiveError> {
        self.slot.get().ok_or(LiveError::NotReady)
    }

    /// Checks `code` is served.
    pub fn check_area(&self, code: u8) -> Result<(), LiveError> {
        if area(code).is_none() {
            return Err(invalid(
                "area",
                format!("{code} is not an LAPD area code (1..=21)"),
            ));
        }
        match &self.areas {
            Some(set) if !set.contains(&code) => Err(LiveError::NotServed {
                area: code,
                serves: self
                    .areas()
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            _ => Ok(()),
        }
    }

    /// The step right after the latest incident of the history (the
    /// "next period") in `unit`.
    pub fn next_step(&self, unit: TimeUnit) -> Result<u32, LiveError> {
        let latest = self.latest.load(Ordering::Acquire);
        if latest == 0 {
            return Err(invalid("at", "the station holds no incident yet"));
        }
        let (day, minute) = ((latest - 1) / 1440, ((latest - 1) % 1440) as u16);
        unit.step_of(day as i64, minute)
            .map(|t| t + 1)
            .ok_or_else(|| invalid("at", "the latest incident's date is out of range"))
    }

    /// Whether predictions are cached (`serve.cache`).
    pub fn caching(&self) -> bool {
        self.caching
    }

    /// The step named by `at`: `next` (or empty), a date `YYYY-MM-DD`, or a
    /// date and time `YYYY-MM-DDTHH:MM` (also with a space, with seconds).
    pub fn step_at(&self, at: &str, unit: TimeUnit) -> Result<u32, LiveError> {
        let at = at.trim();
        if at.is_empty() || at.eq_ignore_ascii_case("next") {
            return self.next_step(unit);
        }
        let (date, time) = match at.split_once(['T', ' ']) {
            Some((d, t)) => (d, Some(t)),
            None => (at, None),
        };
        let day = parse_iso_date(date).ok_or_else(|| {
            invalid(
                "at",
                format!("{at:?}: expected next, YYYY-MM-DD or YYYY-MM-DDTHH:MM"),
            )
        })?;
        let minute = match time {
            None => 0,
            Some(t) => parse_minute(t).ok_or_else(|| {
                invalid(
                    "at",
                    format!("{at:?}: the time must be HH:MM or HH:MM:SS, 00:00 to 23:59"),
                )
            })?,
        };
        unit.step_of(i64::from(day), minute)
            .ok_or_else(|| invalid("at", format!("{at:?} is out of range")))
    }

    /// Predictions at `step` for `area` (`None`: every area served).
    pub fn predict(&self, area: Option<u8>, step: u32) -> Result<Answer, LiveError> {
        if let Some(a) = area {
            self.check_area(a)?;
        }
        let model = self.model()?;
        let all = self.all_areas(&model, step)?;
        let predictions = match area {
            Some(a) => all.iter().filter(|p| p.area == a).cloned().collect(),
            None => {
                let served = self.areas();
                all.iter()
                    .filter(|p| served.binary_search(&p.area).is_ok())
                    .cloned()
                    .collect()
            }
        };
        Ok(Answer {
            model,
            step,
            predictions,
        })
    }

    /// Every area's prediction at `step` by `model`, cached.
    fn all_areas(&self, model: &Arc<Served>, step: u32) -> Result<Arc<Vec<Prediction>>, LiveError> {
        // The generation is read before the history: a prediction cached
        // under a generation was made from at least that generation's data.
        let key = (model.serial(), self.generation(), step);
        if self.caching {
            if let Some(hit) = self.lock_cache().get(&key) {
                return Ok(hit.clone());
            }
        }
        let history = self.history();
        let made = model.predict(&history, step).map_err(|e| match e {
            StationError::Data(_) => self.out_of_range(model.time_unit(), step, &history),
            other => LiveError::Model(other),
        })?;
        let made = Arc::new(made);
        if self.caching {
            let mut cache = self.lock_cache();
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, made.clone());
        }
        Ok(made)
    }

    /// Why `step` cannot be predicted from `history`, in dates.
    fn out_of_range(&self, unit: TimeUnit, step: u32, history: &[Incident]) -> LiveError {
        let asked = step_label(unit, step);
        match self.next_step(unit) {
            Ok(next) if step > next => invalid(
                "at",
                format!(
                    "{asked} is after the next period ({}): predictions reach up to the \
                     period after the latest incident",
                    step_label(unit, next)
                ),
            ),
            Ok(_) => {
                let first = history.iter().map(|i| i.date_occurred).min().unwrap_or(0);
                invalid(
                    "at",
                    format!(
                        "{asked} is too early: the records start {}, and a period's features \
                         look back on the periods before it",
                        iso_date(first)
                    ),
                )
            }
            Err(e) => e,
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<Vec<Prediction>>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `batch` (already parsed) whole: every row must be in a served
    /// area; rows known already are skipped; the rest is on disk before this
    /// returns.
    pub fn ingest(&self, batch: &[Incident]) -> Result<Ingested, LiveError> {
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400) as i64;
        for i in batch {
            if self.areas.as_ref().is_some_and(|s| !s.contains(&i.area)) {
                return Err(invalid(
                    "AREA",
                    format!(
                        "DR_NO {}: area {} is not served by this station (it serves {})",
                        i.dr_no,
                        i.area,
                        self.areas()
                            .iter()
                            .map(u8::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if i.dr_no == 0 {
                return Err(invalid("DR_NO", "0 is not a report number"));
            }
            // An incident cannot have occurred after today (a day of slack
            // for time zones): one such row would move "next" years ahead.
            if i64::from(i.date_occurred) > today + 1 {
                return Err(invalid(
                    "DATE OCC",
                    format!(
                        "DR_NO {}: {} is in the future",
                        i.dr_no,
                        iso_date(i.date_occurred)
                    ),
                ));
            }
        }
        let fresh: Vec<Incident> = batch
            .iter()
            .filter(|i| !self.base_ids.contains(&i.dr_no))
            .cloned()
            .collect();
        let in_file = batch.len() - fresh.len();
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let before = store.incidents().len();
        let report = store.append(&fresh)?;
        let added: Vec<Incident> = store.incidents()[before..].to_vec();
        let generation = if added.is_empty() {
            self.generation()
        } else {
            let mut history = self.history.write().unwrap_or_else(|p| p.into_inner());
            let latest = added.iter().map(moment).max().unwrap_or(0);
            let mut next = Vec::with_capacity(history.len() + added.len());
            next.extend_from_slice(&history);
            next.extend(added);
            *history = Arc::new(next);
            self.latest.fetch_max(latest, Ordering::AcqRel);
            self.generation.fetch_add(1, Ordering::AcqRel) + 1
        };
        Ok(Ingested {
            added: report.added,
            duplicates: report.duplicates + in_file,
            total: self.history().len(),
            generation,
        })
    }
}

/// `day * 1440 + minute + 1` of an incident (dates before 1970 count as 0).
fn moment(i: &Incident) -> u64 {
    u64::try_from(i.date_occurred).map_or(0, |d| d * 1440 + u64::from(i.minute_of_day) + 1)
}

fn parse_minute(t: &str) -> Option<u16> {
    let mut parts = t.split(':');
    let h: u16 = parts.next()?.parse().ok()?;
    let m: u16 = parts.next()?.parse().ok()?;
    if let Some(s) = parts.next() {
        let s: f32 = s.trim_end_matches('Z').parse().ok()?;
        if !(0.0..60.0).contains(&s) {
            return None;
        }
    }
    (parts.next().is_none() && h < 24 && m < 60).then_some(h * 60 + m)
}

/// The first moment of `step` in `unit`, as `YYYY-MM-DDTHH:MM`.
pub fn step_start(unit: TimeUnit, step: u32) -> String {
    let day = unit.first_day(step);
    let minute = match unit {
        TimeUnit::Block => (step % 6) * 240,
        TimeUnit::Day | TimeUnit::Week => 0,
    };
    format!(
        "{}T{:02}:{:02}",
        iso_date(day as i32),
        minute / 60,
        minute % 60
    )
}

/// A label of `step`: `2024-02-29 20:00-24:00` (block), `2024-02-29` (day),
/// `week of 2024-02-26` (week).
pub fn step_label(unit: TimeUnit, step: u32) -> String {
    let day = unit.first_day(step);
    match unit {
        TimeUnit::Block => {
            let h = (step % 6) * 4;
            format!("{} {:02}:00-{:02}:00", iso_date(day as i32), h, h + 4)
        }
        TimeUnit::Day => iso_date(day as i32),
        TimeUnit::Week => {
            let (y, m, d) = civil_from_days(day as i32);
            format!("week of {y:04}-{m:02}-{d:02}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_data::synth::generate_incidents;
    use fedcrime_data::{build_task, Task, TaskConfig};
    use fedcrime_ml::model::{build, ModelConfig, ModelKind};
    use tch::Device;

    fn model(history: &[Incident], round: u64) -> Served {
        let data = build_task(history, &TaskConfig::new(Task::Risk)).unwrap();
        let mut cfg = ModelConfig::for_dataset(ModelKind::Dnn, &data.splits.train);
        cfg.hidden = 8;
        tch::manual_seed(round as i64);
        Served::new(build(&cfg, Device::Cpu).unwrap(), data.featurizer, round).unwrap()
    }

    #[test]
    fn times_are_read_and_labelled() {
        let dir = tempfile::tempdir().unwrap();
        let history = generate_incidents(3000, 1);
        let (live, _) = LiveStation::open(history, None, &dir.path().join("s"), true).unwrap();
        let u = TimeUnit::Block;
        let t = live.step_at("2024-02-29T21:15", u).unwrap();
        assert_eq!(step_label(u, t), "2024-02-29 20:00-24:00");
        assert_eq!(step_start(u, t), "2024-02-29T20:00");
        assert_eq!(live.step_at("2024-02-29 20:00:00", u).unwrap(), t);
        assert_eq!(live.step_at("2024-02-29", u).unwrap(), t - 5);
        for bad in [
            "2024-02-30",
            "29/02/2024",
            "2024-02-29T24:00",
            "2024-02-29T10",
        ] {
            let e = live.step_at(bad, u).unwrap_err().to_string();
            assert!(e.starts_with("at: "), "{bad}: {e}");
        }
        assert_eq!(step_label(TimeUnit::Day, 19782), "2024-02-29");
    }

    #[test]
    fn ingestion_is_durable_deduplicated_and_seen_by_the_next_prediction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("incidents.store");
        let all = generate_incidents(6000, 2);
        let own: Vec<Incident> = all.iter().filter(|i| i.area == 7).cloned().collect();
        let (base, later) = own.split_at(own.len() - 20);
        let areas = Some(BTreeSet::from([7u8]));
        let (live, report) = LiveStation::open(base.to_vec(), areas.clone(), &path, true).unwrap();
        assert_eq!(report.loaded, 0);
        live.slot().install(model(&all, 1));
        let next = live.next_step(TimeUnit::Block).unwrap();
        let before = live.predict(None, next - 1).unwrap();
        assert_eq!(before.predictions.len(), 1);
        assert!(matches!(
            live.predict(Some(8), next),
            Err(LiveError::NotServed { .. })
        ));

        // Other areas are refused whole; nothing is written.
        let mut wrong = later[..3].to_vec();
        wrong[1].area = 8;
        let e = live.ingest(&wrong).unwrap_err().to_string();
        assert!(
            e.contains(&format!("DR_NO {}: area 8", wrong[1].dr_no)),
            "{e}"
        );
        let mut future = later[..1].to_vec();
        future[0].date_occurred = 30_000; // 2052
        let e = live.ingest(&future).unwrap_err().to_string();
        assert!(e.starts_with("DATE OCC: ") && e.contains("2052-"), "{e}");
        assert_eq!(live.generation(), 0);

        let r = live.ingest(later).unwrap();
        assert_eq!((r.added, r.duplicates, r.generation), (20, 0, 1));
        let r = live.ingest(&[later[0].clone(), base[0].clone()]).unwrap();
        assert_eq!((r.added, r.duplicates, r.generation), (0, 2, 1));
        // The new rows change what the model sees (the cache is keyed by generation).
        let seen = live.history();
        assert_eq!(seen.len(), own.len());
        drop(live);

        let (again, report) = LiveStation::open(base.to_vec(), areas, &path, true).unwrap();
        assert_eq!(report.loaded, 20);
        assert_eq!(again.history().len(), own.len());
    }
}
