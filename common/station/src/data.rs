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
//!
//! # The graph model at a station
//!
//! `gat-tcn` reads whole areas' count series, not samples, so a station
//! trains it on the graph of the areas it holds ([`prepare_for`],
//! [`prepare_graph`]): the areas of an area filter, of its own records
//! ([`Selection::All`]) or of its bureau (`bureau` partition), with the LAPD
//! boundaries among them ([`AreaGraph`]). Boundaries to other stations'
//! areas are dropped: the station has no counts there, and nothing but
//! weights (plus example counts and aggregate metrics) leaves it. The
//! weights have the same layout whatever the node count, so the server
//! averages them and runs the result on all 21 areas. Refused, with the
//! reason: one area (no boundary: the attention would never train), areas
//! without a common boundary, and the `natural`, `iid` and `dirichlet`
//! partitions (one area, or scattered samples rather than series). The
//! shared featurizer is not used by the graph windows (raw counts).

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::{Result, StationError};
use fedcrime_data::areas::Bureau;
use fedcrime_data::features::{fit_risk_thresholds, risk_level, BLOCKS_PER_DAY};
use fedcrime_data::split::SplitPart;
use fedcrime_data::{
    build_task, partition_splits, Dataset, Featurizer, Incident, Partition, SplitBounds, Splits,
    Target, Task, TaskConfig,
};
use fedcrime_ml::model::{AreaGraph, GraphWindows, ModelConfig, ModelKind};

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

/// The areas whose records a station holds under `selection`, as the graph
/// it models gat-tcn on (see the module docs); refused with the reason for
/// selections that do not hold whole areas or hold no boundary.
pub fn station_graph(incidents: &[Incident], selection: &Selection) -> Result<AreaGraph> {
    let refuse = |reason: String| Err(StationError::Mismatch(format!("gat-tcn: {reason}")));
    let codes: Vec<u8> =
        match selection {
            Selection::Areas(codes) => codes.clone(),
            Selection::All => {
                let present: BTreeSet<u8> = incidents.iter().map(|i| i.area).collect();
                present.into_iter().collect()
            }
            Selection::Part {
                partition: Partition::Bureau,
                part,
                ..
            } => {
                let present: BTreeSet<u8> = incidents.iter().map(|i| i.area).collect();
                let held: Vec<Bureau> = Bureau::ALL
                    .into_iter()
                    .filter(|b| b.areas().any(|a| present.contains(&a.code)))
                    .collect();
                let name = |b: &Bureau| format!("{}-bureau", b.name().to_ascii_lowercase());
                let found = match part {
                    PartRef::Index(i) => held.get(*i),
                    PartRef::Name(n) => held.iter().find(|b| &name(b) == n),
                };
                let Some(b) = found else {
                    return Err(StationError::Setting {
                        key: "part".into(),
                        reason: format!(
                            "partition bureau has no part {part} (it has {})",
                            held.iter().map(name).collect::<Vec<_>>().join(", ")
                        ),
                    });
                };
                b.areas().map(|a| a.code).collect()
            }
            Selection::Part {
                partition: Partition::Natural,
                ..
            } => return refuse(
                "a natural-partition station holds one area: a one-node graph has no boundary, \
                 so the attention would never train; use the bureau partition"
                    .into(),
            ),
            Selection::Part { partition, .. } => {
                return refuse(format!(
                "a {partition} station holds scattered (area, period) samples, not whole areas' \
                 count series; use the bureau partition"
            ))
            }
        };
    let graph = AreaGraph::of_areas(&codes).map_err(|e| StationError::Setting {
        key: "area".into(),
        reason: e.to_string(),
    })?;
    if graph.len() < 2 {
        return refuse(format!(
            "the station holds one area ({:?}): a one-node graph has no boundary, so the \
             attention would never train; gat-tcn needs a station with several neighbouring \
             areas (a bureau)",
            graph.codes()
        ));
    }
    if graph.edges().is_empty() {
        return refuse(format!(
            "areas {:?} share no boundary: the attention would never train",
            graph.codes()
        ));
    }
    Ok(graph)
}

/// A station's graph splits for gat-tcn: its areas' ([`station_graph`])
/// count series, built from its own records only, cut into windows over its
/// subgraph ([`AreaGraph::splits`]).
pub fn prepare_graph(
    incidents: &[Incident],
    task: &TaskConfig,
    selection: &Selection,
) -> Result<(Splits, AreaGraph)> {
    if task.task != Task::Counts {
        return Err(StationError::Mismatch(format!(
            "gat-tcn predicts counts, the run's task is {}",
            task.task
        )));
    }
    let graph = station_graph(incidents, selection)?;
    let own: Vec<Incident> = incidents
        .iter()
        .filter(|i| graph.codes().contains(&i.area))
        .cloned()
        .collect();
    let built = build_task(&own, task)?;
    let series = built.graph.ok_or_else(|| {
        StationError::Mismatch("the counts task came without its graph series".into())
    })?;
    let splits = graph
        .splits(&series, &GraphWindows::for_period(task.period))
        .map_err(StationError::Model)?;
    if splits.train.is_empty() {
        return Err(StationError::EmptySplit { split: "train" });
    }
    Ok((splits, graph))
}

/// A station's splits and the model config it trains, for the run's
/// architecture `model`: [`prepare`] and `model` itself for dnn and lstm;
/// for gat-tcn [`prepare_graph`] and `model` on the station's subgraph
/// ([`ModelConfig::on_graph`]: same weights layout, the station's nodes).
pub fn prepare_for(
    model: &ModelConfig,
    incidents: &[Incident],
    task: &TaskConfig,
    featurizer: Option<&Featurizer>,
    selection: &Selection,
) -> Result<(Splits, ModelConfig)> {
    if model.kind != ModelKind::GatTcn {
        let splits = prepare(incidents, task, featurizer, selection)?;
        return Ok((splits, model.clone()));
    }
    let (splits, graph) = prepare_graph(incidents, task, selection)?;
    let local = model.on_graph(&graph, &splits.train)?;
    tracing::info!(
        areas = ?graph.codes(),
        boundaries = graph.edges().len(),
        cut = graph.cut_edges().len(),
        "gat-tcn on the station's subgraph (boundaries to other stations' areas dropped)"
    );
    Ok((splits, local))
}
