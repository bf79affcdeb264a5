//! Partitioning a dataset into federated stations.
//!
//! - `natural` (the default): one station per LAPD area, 21 stations, named
//!   after the area (`central`, `77th-street`, ...), as precincts would hold
//!   their own records.
//! - `bureau`: one station per LAPD bureau (`central-bureau`, `south-bureau`,
//!   `valley-bureau`, `west-bureau`).
//! - `iid`: the samples shuffled with the seed and dealt into `stations`
//!   near-equal parts (`station-01`, ...): the homogeneous reference.
//! - `dirichlet:ALPHA`: label skew after Hsu et al. (2019): for each label the
//!   station shares are drawn from Dirichlet(ALPHA) (normalised Gamma(ALPHA, 1)
//!   draws) and that label's shuffled samples are cut at the cumulative shares;
//!   small ALPHA gives stations few labels, large ALPHA approaches `iid`. The
//!   label is the risk class for `risk`, and for `counts` the level 1-5 of the
//!   target's total count under quantile thresholds of this dataset (the
//!   `risk` binning rule). Stations left empty by the draw get one sample each
//!   from the currently largest station, so every station can train.
//!
//! Every partitioner is deterministic for a seed, and its parts are disjoint and
//! cover the dataset (`check_partition`); each part's indices are ascending,
//! i.e. in time order. `natural` and `bureau` leave out stations without
//! samples (a dataset from [`build_task`](super::tasks::build_task) has all).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

use super::areas::{area, Bureau, AREAS};
use super::dataset::{Dataset, Splits, Target};
use super::error::DataError;
use super::features::{fit_risk_thresholds, risk_level};

/// Stations of `iid` and `dirichlet` when not given.
pub(crate) const DEFAULT_STATIONS: usize = 21;

/// How samples are divided among stations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    /// One station per LAPD area (21).
    #[default]
    Natural,
    /// One station per LAPD bureau (4).
    Bureau,
    /// Shuffled, equal-sized parts.
    Iid {
        /// Number of stations.
        stations: usize,
    },
    /// Label skew with Dirichlet(`alpha`) shares per label.
    Dirichlet {
        /// Concentration; smaller means more skew. Must be positive.
        alpha: f64,
        /// Number of stations.
        stations: usize,
    },
}

impl Partition {
    /// The same partitioner with `stations` stations (`iid` and `dirichlet`
    /// only; the others have a fixed number).
    pub fn with_stations(self, stations: usize) -> Self {
        match self {
            Partition::Iid { .. } => Partition::Iid { stations },
            Partition::Dirichlet { alpha, .. } => Partition::Dirichlet { alpha, stations },
            other => other,
        }
    }

    /// The number of stations it creates on a full dataset.
    pub fn stations(&self) -> usize {
        match self {
            Partition::Natural => AREAS.len(),
            Partition::Bureau => Bureau::ALL.len(),
            Partition::Iid { stations } | Partition::Dirichlet { stations, .. } => *stations,
        }
    }

    fn validate(&self, n: usize) -> Result<(), DataError> {
        let invalid = |reason: String| DataError::config("partition", reason);
        match self {
            Partition::Natural | Partition::Bureau => Ok(()),
            Partition::Iid { stations } | Partition::Dirichlet { stations, .. }
                if *stations == 0 || *stations > n =>
            {
                Err(invalid(format!(
                    "{stations} stations for {n} samples (expected 1 to {n})"
                )))
            }
            Partition::Dirichlet { alpha, .. } if !(alpha.is_finite() && *alpha > 0.0) => {
                Err(invalid(format!("dirichlet alpha {alpha} must be positive")))
            }
            _ => Ok(()),
        }
    }
}

impl std::str::FromStr for Partition {
    type Err = String;
    /// `natural`, `bureau`, `iid` or `dirichlet:ALPHA` (e.g. `dirichlet:0.5`);
    /// `iid` and `dirichlet` get `DEFAULT_STATIONS`, see [`Partition::with_stations`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "natural" => Ok(Partition::Natural),
            "bureau" => Ok(Partition::Bureau),
            "iid" => Ok(Partition::Iid {
                stations: DEFAULT_STATIONS,
            }),
            _ => {
                let alpha = s
                    .strip_prefix("dirichlet:")
                    .ok_or_else(|| {
                        format!(
                            "unknown partition {s:?} (expected natural, bureau, iid or dirichlet:ALPHA)"
                        )
                    })?
                    .parse::<f64>()
                    .map_err(|e| format!("partition {s:?}: alpha: {e}"))?;
                if !(alpha.is_finite() && alpha > 0.0) {
                    return Err(format!("partition {s:?}: alpha must be positive"));
                }
                Ok(Partition::Dirichlet {
                    alpha,
                    stations: DEFAULT_STATIONS,
                })
            }
        }
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partition::Natural => f.write_str("natural"),
            Partition::Bureau => f.write_str("bureau"),
            Partition::Iid { .. } => f.write_str("iid"),
            Partition::Dirichlet { alpha, .. } => write!(f, "dirichlet:{alpha}"),
        }
    }
}

/// The samples of one station.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationPart {
    /// Station name, DNS-label safe: an area (`west-la`), a bureau
    /// (`valley-bureau`) or `station-NN`.
    pub name: String,
    /// Indices into the partitioned dataset, ascending.
    pub indices: Vec<usize>,
}

/// Divides `ds` into stations (see the module doc); deterministic for `seed`.
pub fn partition(ds: &Dataset, p: &Partition, seed: u64) -> Result<Vec<StationPart>, DataError> {
    let n = ds.len();
    p.validate(n)?;
    let parts = match p {
        Partition::Natural => group_by(ds, AREAS.len(), area_index, |i| slug(AREAS[i].name))?,
        Partition::Bureau => group_by(
            ds,
            Bureau::ALL.len(),
            |code| area(code).map(|a| a.bureau.index()),
            |i| format!("{}-bureau", slug(Bureau::ALL[i].name())),
        )?,
        Partition::Iid { stations } => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            let (base, extra) = (n / stations, n % stations);
            let mut parts = Vec::with_capacity(*stations);
            let mut rest = order.as_slice();
            for s in 0..*stations {
                let (mine, tail) = rest.split_at(base + usize::from(s < extra));
                rest = tail;
                parts.push(StationPart {
                    name: station_name(s, *stations),
                    indices: mine.to_vec(),
                });
            }
            parts
        }
        Partition::Dirichlet { alpha, stations } => dirichlet(ds, *alpha, *stations, seed)?,
    };
    let mut parts = parts;
    for part in &mut parts {
        part.indices.sort_unstable();
    }
    check_partition(&parts, n)?;
    Ok(parts)
}

/// One station's samples in each split of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationSplits {
    /// Station name (see [`StationPart::name`]).
    pub name: String,
    /// Indices into [`Splits::train`], ascending.
    pub train: Vec<usize>,
    /// Indices into [`Splits::val`], ascending.
    pub val: Vec<usize>,
    /// Indices into [`Splits::test`], ascending.
    pub test: Vec<usize>,
}

/// Partitions each split of a task the same way (`natural` and `bureau` by
/// area; `iid` and `dirichlet` with a seed derived per split) and pairs the
/// parts by station name, in the order of the training split's stations.
/// A station without samples in some split gets an empty index list there.
pub fn partition_splits(
    splits: &Splits,
    p: &Partition,
    seed: u64,
) -> Result<Vec<StationSplits>, DataError> {
    let train = partition(&splits.train, p, seed)?;
    let mut val = partition(&splits.val, p, seed ^ 0x5641_4c5f_5345_4544)?;
    let mut test = partition(&splits.test, p, seed ^ 0x5445_5354_5345_4544)?;
    let take = |parts: &mut Vec<StationPart>, name: &str| {
        parts
            .iter_mut()
            .find(|s| s.name == name)
            .map(|s| std::mem::take(&mut s.indices))
            .unwrap_or_default()
    };
    Ok(train
        .into_iter()
        .map(|s| StationSplits {
            val: take(&mut val, &s.name),
            test: take(&mut test, &s.name),
            name: s.name,
            train: s.indices,
        })
        .collect())
}

/// The label [`Partition::Dirichlet`] skews: the risk class, or for counts the
/// 1-5 level (minus one) of each target's total count under quantile
/// thresholds fit on `ds`.
pub(crate) fn skew_labels(ds: &Dataset) -> Vec<usize> {
    match &ds.target {
        Target::Classes { labels, .. } => labels
            .iter()
            .map(|&l| usize::try_from(l).unwrap_or(0))
            .collect(),
        Target::Counts { values, dim } => {
            let dim = (*dim).max(1);
            let totals: Vec<u32> = values
                .chunks(dim)
                .map(|row| row.iter().map(|v| v.max(0.0)).sum::<f32>().round() as u32)
                .collect();
            let thresholds = fit_risk_thresholds(totals.iter().copied());
            totals
                .iter()
                .map(|&t| usize::from(risk_level(&thresholds, t) - 1))
                .collect()
        }
    }
}

/// Checks that `parts` are disjoint and together cover `0..n` exactly once.
pub(crate) fn check_partition(parts: &[StationPart], n: usize) -> Result<(), DataError> {
    let mut owner: Vec<Option<usize>> = vec![None; n];
    for (s, part) in parts.iter().enumerate() {
        for &i in &part.indices {
            let slot = owner.get_mut(i).ok_or_else(|| {
                DataError::config(
                    "partition",
                    format!("station {} holds index {i} of {n} samples", part.name),
                )
            })?;
            if let Some(prev) = slot.replace(s) {
                return Err(DataError::config(
                    "partition",
                    format!(
                        "sample {i} is in stations {} and {}",
                        parts[prev].name, part.name
                    ),
                ));
            }
        }
    }
    if let Some(i) = owner.iter().position(Option::is_none) {
        return Err(DataError::config(
            "partition",
            format!("sample {i} is in no station"),
        ));
    }
    Ok(())
}

fn area_index(code: u8) -> Option<usize> {
    area(code).map(|a| a.index())
}

/// Groups samples by a key of their area code; keys without samples are left out.
fn group_by(
    ds: &Dataset,
    keys: usize,
    key: impl Fn(u8) -> Option<usize>,
    name: impl Fn(usize) -> String,
) -> Result<Vec<StationPart>, DataError> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); keys];
    for (i, &code) in ds.area.iter().enumerate() {
        let k = key(code).filter(|&k| k < keys).ok_or_else(|| {
            DataError::config(
                "partition",
                format!("sample {i} has unknown area code {code}"),
            )
        })?;
        groups[k].push(i);
    }
    Ok(groups
        .into_iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .map(|(k, indices)| StationPart {
            name: name(k),
            indices,
        })
        .collect())
}

fn dirichlet(
    ds: &Dataset,
    alpha: f64,
    stations: usize,
    seed: u64,
) -> Result<Vec<StationPart>, DataError> {
    let labels = skew_labels(ds);
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let gamma = Gamma::new(alpha, 1.0)
        .map_err(|e| DataError::config("partition", format!("dirichlet alpha {alpha}: {e}")))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut parts: Vec<Vec<usize>> = vec![Vec::new(); stations];
    let mut shares = vec![0f64; stations];
    for members in &mut by_class {
        members.shuffle(&mut rng);
        for s in shares.iter_mut() {
            *s = gamma.sample(&mut rng);
        }
        let sum: f64 = shares.iter().sum();
        if !(sum.is_finite() && sum > 0.0) {
            // Every draw underflowed (tiny alpha): the whole label goes to one station.
            shares.fill(0.0);
            let lucky = rand::Rng::random_range(&mut rng, 0..stations);
            shares[lucky] = 1.0;
        }
        let sum: f64 = shares.iter().sum();
        let m = members.len();
        let mut cum = 0.0;
        let mut from = 0;
        for (s, share) in shares.iter().enumerate() {
            cum += share / sum;
            let to = if s + 1 == stations {
                m
            } else {
                ((cum * m as f64).round() as usize).clamp(from, m)
            };
            parts[s].extend_from_slice(&members[from..to]);
            from = to;
        }
    }
    // Every station gets at least one sample, taken from the largest one.
    while let Some(empty) = parts.iter().position(Vec::is_empty) {
        let largest = (0..stations)
            .max_by_key(|&s| (parts[s].len(), std::cmp::Reverse(s)))
            .unwrap_or(0);
        if parts[largest].len() < 2 {
            break; // cannot happen when stations <= n (validated)
        }
        if let Some(i) = parts[largest].pop() {
            parts[empty].push(i);
        }
    }
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(s, indices)| StationPart {
            name: station_name(s, stations),
            indices,
        })
        .collect())
}

/// `station-01` .. with enough digits for `of` stations (at least 2).
fn station_name(s: usize, of: usize) -> String {
    let width = of.to_string().len().max(2);
    format!("station-{:0width$}", s + 1)
}

/// Lower-case, spaces to dashes: `"West LA"` -> `"west-la"`.
fn slug(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Task;
    use crate::tasks::tests::random_incidents;
    use crate::tasks::{build_task, Period, TaskConfig};

    fn risk_train() -> Dataset {
        let incidents = random_incidents(20_000, 40, 11);
        build_task(&incidents, &TaskConfig::new(Task::Risk))
            .unwrap()
            .splits
            .train
    }

    fn label_hist(labels: &[usize], idx: &[usize], classes: usize) -> Vec<f64> {
        let mut h = vec![0.0; classes];
        for &i in idx {
            h[labels[i]] += 1.0;
        }
        let n: f64 = h.iter().sum();
        h.iter().map(|v| v / n.max(1.0)).collect()
    }

    #[test]
    fn natural_and_bureau_follow_the_areas() {
        let ds = risk_train();
        let parts = partition(&ds, &Partition::Natural, 0).unwrap();
        assert_eq!(parts.len(), 21);
        assert_eq!(parts[0].name, "central");
        assert_eq!(parts[7].name, "west-la");
        assert_eq!(parts[11].name, "77th-street");
        for (k, p) in parts.iter().enumerate() {
            assert!(p.indices.iter().all(|&i| usize::from(ds.area[i]) == k + 1));
            assert!(p.indices.windows(2).all(|w| w[0] < w[1]));
        }
        let bureaus = partition(&ds, &Partition::Bureau, 0).unwrap();
        let names: Vec<_> = bureaus.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "central-bureau",
                "south-bureau",
                "valley-bureau",
                "west-bureau"
            ]
        );
        for (b, p) in bureaus.iter().enumerate() {
            for &i in &p.indices {
                assert_eq!(area(ds.area[i]).unwrap().bureau, Bureau::ALL[b]);
            }
        }
        // Valley has 7 of the 21 areas.
        assert_eq!(bureaus[2].indices.len(), ds.len() / 21 * 7);
        // Unknown area codes are errors.
        let mut bad = ds.subset(&[0, 1, 2]);
        bad.area[1] = 0;
        assert!(partition(&bad, &Partition::Natural, 0).is_err());
        // Stations without samples are left out.
        let two = ds.subset(&[0, 21, 5]);
        let parts = partition(&two, &Partition::Natural, 0).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].indices, vec![0, 1]);
    }

    #[test]
    fn every_partitioner_is_disjoint_covering_and_seeded() {
        let ds = risk_train();
        let n = ds.len();
        for p in [
            Partition::Natural,
            Partition::Bureau,
            Partition::Iid { stations: 7 },
            Partition::Iid { stations: 1000 },
            Partition::Dirichlet {
                alpha: 0.1,
                stations: 10,
            },
            Partition::Dirichlet {
                alpha: 0.01,
                stations: 500,
            },
            Partition::Dirichlet {
                alpha: 100.0,
                stations: 3,
            },
        ] {
            let a = partition(&ds, &p, 42).unwrap();
            check_partition(&a, n).unwrap();
            assert_eq!(a.len(), p.stations(), "{p}");
            assert!(
                a.iter().all(|s| !s.indices.is_empty()),
                "{p}: empty station"
            );
            assert!(a.iter().all(|s| s.indices.windows(2).all(|w| w[0] < w[1])));
            assert_eq!(a, partition(&ds, &p, 42).unwrap(), "{p}: not deterministic");
            if matches!(p, Partition::Iid { .. } | Partition::Dirichlet { .. }) {
                assert_ne!(a, partition(&ds, &p, 43).unwrap(), "{p}: seed ignored");
            }
        }
        let iid = partition(&ds, &Partition::Iid { stations: 7 }, 1).unwrap();
        let sizes: Vec<_> = iid.iter().map(|s| s.indices.len()).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        assert_eq!(iid[6].name, "station-07");
        let many = partition(&ds, &Partition::Iid { stations: 1000 }, 1).unwrap();
        assert_eq!(many[999].name, "station-1000");
        assert_eq!(many[0].name, "station-0001");
    }

    #[test]
    fn small_alpha_skews_labels_more() {
        let ds = risk_train();
        let labels = skew_labels(&ds);
        let global = label_hist(&labels, &(0..ds.len()).collect::<Vec<_>>(), 5);
        // Mean total-variation distance of station label mixes from the global mix.
        let skew = |alpha: f64| {
            let parts = partition(
                &ds,
                &Partition::Dirichlet {
                    alpha,
                    stations: 10,
                },
                7,
            )
            .unwrap();
            parts
                .iter()
                .map(|p| {
                    let h = label_hist(&labels, &p.indices, 5);
                    h.iter()
                        .zip(&global)
                        .map(|(a, b)| (a - b).abs())
                        .sum::<f64>()
                        / 2.0
                })
                .sum::<f64>()
                / parts.len() as f64
        };
        let (low, high) = (skew(0.1), skew(100.0));
        assert!(low > 0.3, "alpha 0.1 skew {low}");
        assert!(high < 0.1, "alpha 100 skew {high}");
        let iid = partition(&ds, &Partition::Iid { stations: 10 }, 7).unwrap();
        for p in iid {
            let h = label_hist(&labels, &p.indices, 5);
            let tv: f64 = h
                .iter()
                .zip(&global)
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>()
                / 2.0;
            assert!(tv < 0.1, "iid station skew {tv}");
        }
    }

    #[test]
    fn counts_skew_labels_are_total_count_levels() {
        let incidents = random_incidents(20_000, 40, 12);
        let cfg = TaskConfig {
            task: Task::Counts,
            period: Period::Day,
            ..TaskConfig::default()
        };
        let ds = build_task(&incidents, &cfg).unwrap().splits.train;
        let labels = skew_labels(&ds);
        assert_eq!(labels.len(), ds.len());
        assert!(labels.iter().all(|&l| l < 5));
        // Busier areas (higher codes in the test data) have higher levels.
        let mean = |code: u8| {
            let idx: Vec<_> = (0..ds.len()).filter(|&i| ds.area[i] == code).collect();
            idx.iter().map(|&i| labels[i] as f64).sum::<f64>() / idx.len() as f64
        };
        assert!(mean(21) > mean(2) + 1.0);
        let parts = partition(
            &ds,
            &Partition::Dirichlet {
                alpha: 0.5,
                stations: 5,
            },
            3,
        )
        .unwrap();
        check_partition(&parts, ds.len()).unwrap();
    }

    #[test]
    fn parse_and_validate() {
        assert_eq!("natural".parse::<Partition>(), Ok(Partition::Natural));
        assert_eq!("bureau".parse::<Partition>(), Ok(Partition::Bureau));
        assert_eq!(
            "iid".parse::<Partition>().map(|p| p.with_stations(5)),
            Ok(Partition::Iid { stations: 5 })
        );
        assert_eq!(
            "dirichlet:0.5".parse::<Partition>(),
            Ok(Partition::Dirichlet {
                alpha: 0.5,
                stations: DEFAULT_STATIONS
            })
        );
        for bad in [
            "dirichlet",
            "dirichlet:",
            "dirichlet:-1",
            "dirichlet:nan",
            "random",
        ] {
            assert!(bad.parse::<Partition>().is_err(), "{bad}");
        }
        assert_eq!(
            Partition::Dirichlet {
                alpha: 0.5,
                stations: 3
            }
            .to_string(),
            "dirichlet:0.5"
        );
        let ds = risk_train().subset(&[0, 1, 2]);
        assert!(partition(&ds, &Partition::Iid { stations: 4 }, 0).is_err());
        assert!(partition(&ds, &Partition::Iid { stations: 0 }, 0).is_err());
        assert!(partition(
            &ds,
            &Partition::Dirichlet {
                alpha: 0.0,
                stations: 2
            },
            0
        )
        .is_err());
        let overlap = [
            StationPart {
                name: "a".into(),
                indices: vec![0, 1],
            },
            StationPart {
                name: "b".into(),
                indices: vec![1, 2],
            },
        ];
        assert!(check_partition(&overlap, 3).is_err());
        assert!(check_partition(&overlap[..1], 2).is_ok());
        assert!(check_partition(&overlap[..1], 3).is_err());
        assert!(check_partition(&overlap[..1], 1).is_err());
    }

    #[test]
    fn splits_are_partitioned_by_station_name() {
        let incidents = random_incidents(20_000, 40, 13);
        let splits = build_task(&incidents, &TaskConfig::new(Task::Risk))
            .unwrap()
            .splits;
        let natural = partition_splits(&splits, &Partition::Natural, 1).unwrap();
        assert_eq!(natural.len(), 21);
        for (k, st) in natural.iter().enumerate() {
            let code = k as u8 + 1;
            assert!(st.train.iter().all(|&i| splits.train.area[i] == code));
            assert!(st.val.iter().all(|&i| splits.val.area[i] == code));
            assert!(st.test.iter().all(|&i| splits.test.area[i] == code));
            assert_eq!(st.val.len(), splits.val.len() / 21);
        }
        let dir = Partition::Dirichlet {
            alpha: 0.3,
            stations: 6,
        };
        let parts = partition_splits(&splits, &dir, 1).unwrap();
        assert_eq!(parts.len(), 6);
        let val: Vec<StationPart> = parts
            .iter()
            .map(|s| StationPart {
                name: s.name.clone(),
                indices: s.val.clone(),
            })
            .collect();
        check_partition(&val, splits.val.len()).unwrap();
        assert_eq!(parts, partition_splits(&splits, &dir, 1).unwrap());
    }
}
