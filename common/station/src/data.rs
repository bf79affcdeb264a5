//! A station's data: from cleaned incidents to the [`Splits`] it trains and
//! evaluates on.
//!
//! Features must mean the same thing at every station for their updates to
//! be averaged, so when the run has a shared [`Featurizer`] (scalers, risk
//! thresholds and area densities, fit once by the agency, e.g. on its
//! held-out data, and sent in the server's Welcome) stations transform their
//! records with it and split them in time by the task's fractions. Without
//! one, each station fits its own with [`build_task`] (its scalers and risk
//! thresholds then follow its local data; with an area filter the risk
//! levels are re-fit on the station's own areas, since [`build_task`] fits
//! them over all 21 areas, whose blocks are empty in a precinct's records).
//!
//! Which records are the station's ([`Selection`]): all of them, those of
//! some LAPD areas (a precinct's own records; other areas' incidents are
//! dropped before featurizing, so they are never held), or one part of a
//! partition of the samples (`iid`, `dirichlet:ALPHA`, ... for studies).

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::{Result, StationError};
use fedcrime_data::features::{fit_risk_thresholds, risk_level, BLOCKS_PER_DAY};
use fedcrime_data::split::SplitPart;
use fedcrime_data::{
    build_task, partition_splits, Dataset, Featurizer, Incident, Partition, SplitBounds, Splits,
    Target, Task, TaskConfig,
};

/// One station of a partition: by position or by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PartRef {
    /// The `i`-th part (0-based) in the partitioner's order.
    Index(usize),
    /// The part with this name (`station-03`, `hollywood`, `west-bureau`).
    Name(String),
}

impl std::fmt::Display for PartRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartRef::Index(i) => write!(f, "#{i}"),
            PartRef::Name(n) => f.write_str(n),
        }
    }
}

/// Which records and samples are the station's.
#[derive(Clone, Debug, PartialEq)]
pub enum Selection {
    /// Everything loaded.
    All,
    /// The incidents and samples of these LAPD area codes (1..=21).
    Areas(Vec<u8>),
    /// One part of a partition of every split's samples, with the seed of the partitioner.
    Part {
        /// The partitioner.
        partition: Partition,
        /// Which part.
        part: PartRef,
        /// The partitioner's seed.
        seed: u64,
    },
}

/// The samples of `ds` whose index satisfies `keep`.
fn select(ds: &Dataset, keep: impl Fn(usize) -> bool) -> Dataset {
    let idx: Vec<usize> = (0..ds.len()).filter(|&i| keep(i)).collect();
    if idx.len() == ds.len() {
        return ds.clone();
    }
    ds.subset(&idx)
}

/// Splits `ds` in time by `task.split` over its own sample times.
fn split_in_time(ds: &Dataset, task: &TaskConfig) -> Result<Splits> {
    let (Some(&first), Some(&last)) = (ds.time.iter().min(), ds.time.iter().max()) else {
        return Err(StationError::EmptySplit { split: "train" });
    };
    let bounds = SplitBounds::compute(first, last.saturating_add(1), &task.split)?;
    let part = |p: SplitPart| {
        let idx: Vec<usize> = (0..ds.len())
            .filter(|&i| bounds.part(ds.time[i]) == Some(p))
            .collect();
        ds.subset(&idx)
    };
    Ok(Splits {
        train: part(SplitPart::Train),
        val: part(SplitPart::Val),
        test: part(SplitPart::Test),
    })
}

/// Checks that a shared featurizer was made for `task`.
fn check_featurizer(f: &Featurizer, task: &TaskConfig) -> Result<()> {
    let counts = task.task == fedcrime_data::Task::Counts;
    if f.task != task.task || f.lags != task.lags || (counts && f.period != task.period) {
        return Err(StationError::Setup(format!(
            "the shared featurizer is for task {} (period {}, lags {}), the run is task {} \
             (period {}, lags {})",
            f.task,
            f.period.as_str(),
            f.lags,
            task.task,
            task.period.as_str(),
            task.lags
        )));
    }
    Ok(())
}

/// Re-fits the risk levels on the blocks of `areas` only (training window)
/// and relabels every split with them.
fn relabel_risk(splits: &mut Splits, incidents: &[Incident], areas: &BTreeSet<u8>) {
    let mut counts: HashMap<(u8, u32), u32> = HashMap::new();
    for i in incidents {
        let Ok(day) = u32::try_from(i.date_occurred) else {
            continue;
        };
        let t = day
            .saturating_mul(BLOCKS_PER_DAY)
            .saturating_add(u32::from(i.block()));
        *counts.entry((i.area, t)).or_default() += 1;
    }
    let count =
        |ds: &Dataset, r: usize| counts.get(&(ds.area[r], ds.time[r])).copied().unwrap_or(0);
    let train = &splits.train;
    let thresholds = fit_risk_thresholds(
        (0..train.len())
            .filter(|&r| areas.contains(&train.area[r]))
            .map(|r| count(train, r)),
    );
    for ds in [&mut splits.train, &mut splits.val, &mut splits.test] {
        let levels: Vec<i64> = (0..ds.len())
            .map(|r| i64::from(risk_level(&thresholds, count(ds, r))) - 1)
            .collect();
        if let Target::Classes { labels, .. } = &mut ds.target {
            *labels = levels;
        }
    }
    tracing::debug!(?thresholds, "risk levels re-fit on the station's areas");
}

/// Builds a station's splits from cleaned `incidents` (see the module docs).
pub fn prepare(
    incidents: &[Incident],
    task: &TaskConfig,
    featurizer: Option<&Featurizer>,
    selection: &Selection,
) -> Result<Splits> {
    let mut own: Vec<Incident> = Vec::new();
    let areas: Option<BTreeSet<u8>> = match selection {
        Selection::Areas(codes) => {
            if let Some(bad) = codes.iter().find(|c| fedcrime_data::area(**c).is_none()) {
                return Err(StationError::Setting {
                    key: "area".into(),
                    reason: format!("{bad} is not an LAPD area code (1 to 21)"),
                });
            }
            let set: BTreeSet<u8> = codes.iter().copied().collect();
            own = incidents
                .iter()
                .filter(|i| set.contains(&i.area))
                .cloned()
                .collect();
            if own.is_empty() {
                return Err(StationError::Mismatch(format!(
                    "no incidents in area(s) {codes:?}"
                )));
            }
            Some(set)
        }
        Selection::All | Selection::Part { .. } => None,
    };
    let incidents: &[Incident] = if areas.is_some() { &own } else { incidents };
    let splits = match featurizer {
        Some(f) => {
            check_featurizer(f, task)?;
            let ds = f.transform(incidents)?;
            split_in_time(&ds, task)?
        }
        None => {
            let mut splits = build_task(incidents, task)?.splits;
            if let (Some(set), Task::Risk) = (&areas, task.task) {
                relabel_risk(&mut splits, incidents, set);
            }
            splits
        }
    };
    drop(own);
    let splits = match (selection, &areas) {
        (Selection::Areas(_), Some(set)) => {
            let keep = |ds: &Dataset| select(ds, |i| set.contains(&ds.area[i]));
            Splits {
                train: keep(&splits.train),
                val: keep(&splits.val),
                test: keep(&splits.test),
            }
        }
        (
            Selection::Part {
                partition: p,
                part,
                seed,
            },
            _,
        ) => {
            let parts = partition_splits(&splits, p, *seed)?;
            let found = match part {
                PartRef::Index(i) => parts.get(*i),
                PartRef::Name(n) => parts.iter().find(|s| &s.name == n),
            };
            let Some(found) = found else {
                let names: Vec<&str> = parts.iter().map(|s| s.name.as_str()).collect();
                return Err(StationError::Setting {
                    key: "part".into(),
                    reason: format!(
                        "partition {p} has no part {part} (it has {}: {})",
                        parts.len(),
                        names.join(", ")
                    ),
                });
            };
            Splits {
                train: splits.train.subset(&found.train),
                val: splits.val.subset(&found.val),
                test: splits.test.subset(&found.test),
            }
        }
        (Selection::All, _) | (Selection::Areas(_), None) => splits,
    };
    if splits.train.is_empty() {
        return Err(StationError::EmptySplit { split: "train" });
    }
    Ok(splits)
}
