//! Fairness-aware training (issue 14), in the station trainer (central
//! training with one worker, and every station of a federation):
//!
//! - **Reweighing** (Kamiran and Calders 2012): sample `i` of group `g`
//!   and class `y` weighs `P(g) P(y) / P(g, y)` (on the training split),
//!   times its class weight, in the cross-entropy, so that in the weighted
//!   data the label is independent of the group. Risk only (it needs
//!   labels).
//! - **A fairness penalty** added to the loss with weight `lambda`:
//!   - *demographic parity* (`penalty:LAMBDA`): for risk, the
//!     sample-weighted variance across the batch's groups of the mean
//!     predicted probability of each level, summed over levels; for counts,
//!     the same of the mean residual (predicted minus actual count), so no
//!     group's crime is systematically over- or under-predicted;
//!   - *equalized odds* (`penalty-eo:LAMBDA`, risk): the same variance of
//!     the mean probability of level `k` among the samples whose level is
//!     `k` (a soft true positive rate) and among those whose level is not
//!     (a soft false positive rate), summed over levels.
//!
//!   With `lambda = 0` the penalty is not computed at all: training is bit
//!   for bit plain training.
//!
//! Groups are the samples' bureaus (default) or areas. Across precincts
//! the federated counterpart is the q-FedAvg strategy
//! (`fedcrime_fl::strategy::QFedAvg`).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{Result, TrainError};
use crate::model::{Batch, CrimeModel};
use fedcrime_data::{Dataset, Target, AREAS};

/// What fairness-aware training adds. In config files and on the command
/// line, one string: `none`, `reweigh`, `penalty:LAMBDA` or
/// `penalty-eo:LAMBDA`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum FairTraining {
    /// Plain training.
    #[default]
    None,
    /// Kamiran-Calders reweighing (risk).
    Reweigh,
    /// A parity penalty with weight `lambda >= 0`.
    Penalty {
        /// The penalty's weight.
        lambda: f64,
        /// What it equalizes.
        criterion: Criterion,
    },
}

/// What a [`FairTraining::Penalty`] equalizes across groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Criterion {
    /// Mean predictions (risk) or mean residuals (counts).
    DemographicParity,
    /// Soft true and false positive rates per level (risk).
    EqualizedOdds,
}

/// Which groups fairness-aware training equalizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FairGroups {
    /// The four bureaus.
    #[default]
    Bureau,
    /// The 21 areas.
    Area,
}

impl std::str::FromStr for FairTraining {
    type Err = String;
    /// `none`, `reweigh`, `penalty:LAMBDA` (demographic parity) or
    /// `penalty-eo:LAMBDA` (equalized odds).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, arg) = s.split_once(':').unwrap_or((s, ""));
        let lambda = || -> std::result::Result<f64, String> {
            let v: f64 = arg
                .parse()
                .map_err(|_| format!("{name}:LAMBDA needs a number, got {arg:?}"))?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("lambda must be finite and >= 0, got {v}"));
            }
            Ok(v)
        };
        match name {
            "none" if arg.is_empty() => Ok(FairTraining::None),
            "reweigh" if arg.is_empty() => Ok(FairTraining::Reweigh),
            "penalty" | "penalty-dp" => Ok(FairTraining::Penalty {
                lambda: lambda()?,
                criterion: Criterion::DemographicParity,
            }),
            "penalty-eo" => Ok(FairTraining::Penalty {
                lambda: lambda()?,
                criterion: Criterion::EqualizedOdds,
            }),
            _ => Err(format!(
                "unknown fairness setting {s:?} (expected none, reweigh, penalty:LAMBDA or penalty-eo:LAMBDA)"
            )),
        }
    }
}

impl std::fmt::Display for FairTraining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FairTraining::None => f.write_str("none"),
            FairTraining::Reweigh => f.write_str("reweigh"),
            FairTraining::Penalty {
                lambda,
                criterion: Criterion::DemographicParity,
            } => write!(f, "penalty:{lambda}"),
            FairTraining::Penalty {
                lambda,
                criterion: Criterion::EqualizedOdds,
            } => write!(f, "penalty-eo:{lambda}"),
        }
    }
}

impl Serialize for FairTraining {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for FairTraining {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FairTraining {
    /// Whether training differs from plain training.
    pub fn is_active(&self) -> bool {
        match self {
            FairTraining::None => false,
            FairTraining::Reweigh => true,
            FairTraining::Penalty { lambda, .. } => *lambda > 0.0,
        }
    }

    /// Checks the setting against the task, naming what is wrong.
    pub fn check(&self, ds: &Dataset) -> Result<()> {
        let risk = matches!(ds.target, Target::Classes { .. });
        let field = "fairness";
        match self {
            FairTraining::Reweigh if !risk => Err(TrainError::Config {
                field,
                reason: "reweigh needs class labels: use it with the risk task (for counts, penalty:LAMBDA)".into(),
            }),
            FairTraining::Penalty {
                criterion: Criterion::EqualizedOdds,
                ..
            } if !risk => Err(TrainError::Config {
                field,
                reason: "penalty-eo needs class labels: use penalty:LAMBDA (bias parity) for counts".into(),
            }),
            FairTraining::Penalty { lambda, .. } if !(lambda.is_finite() && *lambda >= 0.0) => {
                Err(TrainError::Config {
                    field,
                    reason: format!("lambda must be finite and >= 0, got {lambda}"),
                })
            }
            _ if self.is_active() && ds.area.iter().all(|&a| a == 0) => Err(TrainError::Config {
                field,
                reason: "the samples carry no area (graph samples cover every area): fairness-aware training is for dnn and lstm".into(),
            }),
            _ => Ok(()),
        }
    }
}

impl FairGroups {
    /// The group index of area `code` (1..=21), `0` for unknown codes.
    pub fn of(self, code: u8) -> i64 {
        match self {
            FairGroups::Area => i64::from(code.saturating_sub(1)),
            FairGroups::Bureau => AREAS
                .iter()
                .find(|a| a.code == code)
                .map_or(0, |a| a.bureau as i64),
        }
    }

    /// How many groups there are.
    pub fn count(self) -> usize {
        match self {
            FairGroups::Area => AREAS.len(),
            FairGroups::Bureau => fedcrime_data::Bureau::ALL.len(),
        }
    }
}

/// Refuses what runs in the station trainer only in `trainer`:
/// fairness-aware training and DP-SGD.
pub(crate) fn station_only(cfg: &super::TrainConfig, trainer: &str) -> Result<()> {
    if cfg.dp.is_some() {
        return Err(TrainError::Config {
            field: "dp",
            reason: format!(
                "DP-SGD is not available in {trainer}: train with one worker (the station trainer)"
            ),
        });
    }
    if cfg.fairness.is_active() {
        return Err(TrainError::Config {
            field: "fairness",
            reason: format!(
                "{} is not available in {trainer}: train with one worker (the station trainer)",
                cfg.fairness
            ),
        });
    }
    Ok(())
}

/// Kamiran-Calders weights `P(g) P(y) / P(g, y)`, `[groups * classes]`
/// (group-major; 0 where a (group, class) pair never occurs).
pub fn reweighing_weights(ds: &Dataset, groups: FairGroups) -> Result<Vec<f64>> {
    let Target::Classes {
        labels,
        num_classes,
    } = &ds.target
    else {
        return Err(TrainError::Config {
            field: "fairness",
            reason: "reweigh needs class labels".into(),
        });
    };
    let (ng, k) = (groups.count(), *num_classes);
    let mut joint = vec![0f64; ng * k];
    for (&a, &y) in ds.area.iter().zip(labels) {
        let g = groups.of(a) as usize;
        let y = usize::try_from(y).unwrap_or(usize::MAX);
        if g < ng && y < k {
            joint[g * k + y] += 1.0;
        }
    }
    let n: f64 = joint.iter().sum();
    let pg: Vec<f64> = (0..ng)
        .map(|g| joint[g * k..(g + 1) * k].iter().sum::<f64>() / n)
        .collect();
    let py: Vec<f64> = (0..k)
        .map(|y| (0..ng).map(|g| joint[g * k + y]).sum::<f64>() / n)
        .collect();
    Ok((0..ng * k)
        .map(|i| {
            let (g, y) = (i / k, i % k);
            if joint[i] > 0.0 {
                pg[g] * py[y] / (joint[i] / n)
            } else {
                0.0
            }
        })
        .collect())
}

/// What the trainer needs during an epoch: the setting, the group of every
/// training sample, and the reweighing table.
pub(crate) struct FairState {
    setting: FairTraining,
    groups: usize,
    group_of: Vec<i64>,
    /// Reweigh: `[groups * classes]` weights times class weights.
    table: Option<Tensor>,
}

impl FairState {
    /// The state for training on `train`, or `None` when training is plain.
    pub(crate) fn new(
        setting: FairTraining,
        groups: FairGroups,
        train: &Dataset,
        model: &dyn CrimeModel,
    ) -> Result<Option<Self>> {
        setting.check(train)?;
        if !setting.is_active() {
            return Ok(None);
        }
        let table = match setting {
            FairTraining::Reweigh => {
                let w = reweighing_weights(train, groups)?;
                let k = train.target.output_dim();
                let cw = model.config().class_weights.clone();
                let t: Vec<f32> = w
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let c = cw
                            .as_ref()
                            .and_then(|c| c.get(i % k))
                            .copied()
                            .unwrap_or(1.0);
                        (v as f32) * c
                    })
                    .collect();
                Some(Tensor::from_slice(&t).to_device(model.device()))
            }
            _ => None,
        };
        Ok(Some(FairState {
            setting,
            groups: groups.count(),
            group_of: train.area.iter().map(|&a| groups.of(a)).collect(),
            table,
        }))
    }

    /// The groups of training samples `indices`, on `device`.
    pub(crate) fn groups_of(&self, indices: &[usize], device: tch::Device) -> Tensor {
        let g: Vec<i64> = indices.iter().map(|&i| self.group_of[i]).collect();
        Tensor::from_slice(&g).to_device(device)
    }

    /// The training loss of `out` on `b` (whose samples are in `groups`).
    pub(crate) fn loss(
        &self,
        model: &dyn CrimeModel,
        out: &Tensor,
        b: &Batch,
        groups: &Tensor,
    ) -> Tensor {
        match self.setting {
            FairTraining::None => model.loss(out, b),
            FairTraining::Reweigh => {
                let k = out.size()[1];
                let table = self.table.as_ref().expect("reweigh has its table");
                let w = table.index_select(0, &(groups * k + &b.target));
                let nll = -out
                    .log_softmax(-1, Kind::Float)
                    .gather(1, &b.target.unsqueeze(1), false)
                    .squeeze_dim(1);
                (&w * nll).sum(Kind::Float) / w.sum(Kind::Float).clamp_min(1e-12)
            }
            FairTraining::Penalty { lambda, criterion } => {
                let base = model.loss(out, b);
                let onehot = groups.one_hot(self.groups as i64).to_kind(Kind::Float);
                let p = match &b.target.kind() {
                    Kind::Int64 => out.softmax(-1, Kind::Float),
                    // Counts: the residuals' parity.
                    _ => model.predict(out) - &b.target,
                };
                let pen = match criterion {
                    Criterion::DemographicParity => group_variance(&onehot, &p, None),
                    Criterion::EqualizedOdds => {
                        let k = p.size()[1];
                        let y = b.target.one_hot(k).to_kind(Kind::Float);
                        group_variance(&onehot, &p, Some(&y))
                            + group_variance(&onehot, &p, Some(&(1.0 - &y)))
                    }
                };
                base + pen * lambda
            }
        }
    }
}

/// `sum_k sum_g (n_gk / n_k) (mean_g,k - mean_k)^2`: the weighted variance
/// across groups of the mean of each column `k` of `v` `[b, K]`, over the
/// samples selected by `mask` `[b, K]` (all when `None`); groups as a
/// one-hot `[b, G]`.
fn group_variance(onehot: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let (vm, m) = match mask {
        Some(m) => (v * m, m.shallow_clone()),
        None => (v.shallow_clone(), v.ones_like()),
    };
    // Per group and column: sums and counts, [G, K].
    let sums = onehot.transpose(0, 1).matmul(&vm);
    let counts = onehot.transpose(0, 1).matmul(&m);
    let total = counts.sum_dim_intlist(0, false, Kind::Float).clamp_min(1.0);
    let overall = sums.sum_dim_intlist(0, false, Kind::Float) / &total;
    let means = &sums / counts.clamp_min(1.0);
    ((means - overall.unsqueeze(0)).square() * (&counts / total.unsqueeze(0))).sum(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn risk_ds(area: Vec<u8>, labels: Vec<i64>) -> Dataset {
        let n = area.len();
        Dataset {
            task: fedcrime_data::Task::Risk,
            features: vec![0.0; n],
            feature_dim: 1,
            feature_names: vec!["x".into()],
            sequences: None,
            target: Target::Classes {
                labels,
                num_classes: 2,
            },
            area,
            time: vec![0; n],
        }
    }

    #[test]
    fn reweighing_makes_the_weighted_label_independent_of_the_group() {
        // Area 1 (Central bureau): 3 of 4 positive; area 3 (South): 1 of 4.
        let ds = risk_ds(vec![1, 1, 1, 1, 3, 3, 3, 3], vec![1, 1, 1, 0, 1, 0, 0, 0]);
        let w = reweighing_weights(&ds, FairGroups::Bureau).unwrap();
        let k = 2;
        let g = |code| FairGroups::Bureau.of(code) as usize;
        // P(g) = 1/2, P(y=1) = 1/2, P(g=central, y=1) = 3/8: weight 2/3.
        assert!((w[g(1) * k + 1] - 2.0 / 3.0).abs() < 1e-12);
        assert!((w[g(1) * k] - 2.0).abs() < 1e-12);
        // Weighted positive rate per group: equal to the overall rate.
        let Target::Classes { labels, .. } = &ds.target else {
            unreachable!()
        };
        for code in [1u8, 3] {
            let (mut pos, mut all) = (0.0, 0.0);
            for (&a, &y) in ds.area.iter().zip(labels) {
                if a == code {
                    let wi = w[g(a) * k + y as usize];
                    all += wi;
                    pos += wi * y as f64;
                }
            }
            assert!(
                (pos / all - 0.5).abs() < 1e-12,
                "area {code}: {}",
                pos / all
            );
        }
    }

    #[test]
    fn settings_parse_print_and_refuse_what_they_cannot_do() {
        for s in ["none", "reweigh", "penalty:0.5", "penalty-eo:2"] {
            let f: FairTraining = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
            // In config files: the same string.
            let cfg = TrainConfig {
                fairness: f,
                ..TrainConfig::default()
            };
            let text = toml::to_string(&cfg).unwrap();
            assert!(text.contains(&format!("fairness = \"{s}\"")), "{text}");
            assert_eq!(toml::from_str::<TrainConfig>(&text).unwrap(), cfg);
        }
        let e = toml::from_str::<TrainConfig>("fairness = \"penalty:x\"").unwrap_err();
        assert!(
            e.to_string().contains("penalty:LAMBDA needs a number"),
            "{e}"
        );
        assert!("penalty:-1"
            .parse::<FairTraining>()
            .unwrap_err()
            .contains(">= 0"));
        assert!("penalty".parse::<FairTraining>().is_err());
        assert!("fair"
            .parse::<FairTraining>()
            .unwrap_err()
            .contains("expected none"));
        let counts = Dataset {
            target: Target::Counts {
                values: vec![0.0; 2],
                dim: 1,
            },
            ..risk_ds(vec![1, 2], vec![0, 1])
        };
        assert!(FairTraining::Reweigh
            .check(&counts)
            .unwrap_err()
            .to_string()
            .contains("risk task"));
        assert!("penalty:1"
            .parse::<FairTraining>()
            .unwrap()
            .check(&counts)
            .is_ok());
        let graph = risk_ds(vec![0, 0], vec![0, 1]);
        assert!(FairTraining::Reweigh
            .check(&graph)
            .unwrap_err()
            .to_string()
            .contains("dnn and lstm"));
        assert!(!"penalty:0".parse::<FairTraining>().unwrap().is_active());
    }

    #[test]
    fn the_parity_penalty_is_zero_when_groups_agree_and_grows_with_the_gap() {
        let onehot = Tensor::from_slice(&[1f32, 0., 1., 0., 0., 1., 0., 1.]).reshape([4, 2]);
        let same = Tensor::from_slice(&[0.3f32, 0.3, 0.3, 0.3]).reshape([4, 1]);
        assert!(
            f64::try_from(group_variance(&onehot, &same, None))
                .unwrap()
                .abs()
                < 1e-9
        );
        // Group means 0.2 and 0.6, overall 0.4, each half: 0.5*0.04*2 = 0.04.
        let gap = Tensor::from_slice(&[0.2f32, 0.2, 0.6, 0.6]).reshape([4, 1]);
        let v = f64::try_from(group_variance(&onehot, &gap, None)).unwrap();
        assert!((v - 0.04).abs() < 1e-6, "{v}");
    }

    use crate::model::{to_batch, ModelKind};
    use crate::train::{test_data, TrainConfig, Trainer};

    /// Risk samples whose bureau follows the label-deciding feature: Central
    /// (area 1) when `x0 > 0.5`, South (area 3) otherwise.
    fn correlated(n: usize) -> Dataset {
        let mut ds = test_data::risk(n, 4, 3);
        ds.area = (0..n)
            .map(|i| if ds.features[i * 4] > 0.5 { 1 } else { 3 })
            .collect();
        ds
    }

    fn fit(ds: &Dataset, fairness: FairTraining, m: Box<dyn CrimeModel>) -> Trainer {
        let cfg = TrainConfig {
            fairness,
            ..test_data::fast_config(6, 32)
        };
        let mut t = Trainer::new(m, cfg).unwrap();
        t.fit(ds, None).unwrap();
        t
    }

    /// The gap between the bureaus' mean predicted probability of levels 4-5.
    fn high_risk_gap(t: &Trainer, ds: &Dataset) -> f64 {
        let idx: Vec<usize> = (0..ds.len()).collect();
        let b = to_batch(ds, &idx, tch::Device::Cpu);
        let p = tch::no_grad(|| t.model().forward_t(&b, false).softmax(-1, Kind::Float));
        let high =
            Vec::<f32>::try_from(p.narrow(1, 3, 2).sum_dim_intlist(1, false, Kind::Float)).unwrap();
        let mean = |code: u8| {
            let v: Vec<f64> = ds
                .area
                .iter()
                .zip(&high)
                .filter(|(a, _)| **a == code)
                .map(|(_, &h)| f64::from(h))
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        (mean(1) - mean(3)).abs()
    }

    #[test]
    fn a_zero_lambda_penalty_is_plain_training_bit_for_bit() {
        crate::model::test_util::one_thread();
        let ds = correlated(120);
        let m = test_data::model(ModelKind::Dnn, &ds, 8, 0.0, 1);
        let plain = fit(&ds, FairTraining::None, test_data::copy(m.as_ref()));
        let zero = fit(&ds, "penalty:0".parse().unwrap(), m);
        assert_eq!(plain.model().export_params(), zero.model().export_params());
    }

    #[test]
    fn reweighing_one_group_is_the_weighted_cross_entropy() {
        crate::model::test_util::one_thread();
        let mut ds = correlated(120);
        ds.area = vec![1; 120];
        let m = test_data::model(ModelKind::Dnn, &ds, 8, 0.0, 2);
        let plain = fit(&ds, FairTraining::None, test_data::copy(m.as_ref()));
        let rw = fit(&ds, FairTraining::Reweigh, m);
        let (a, b) = (plain.model().export_params(), rw.model().export_params());
        let diff = a
            .data()
            .iter()
            .zip(b.data())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn the_parity_penalties_narrow_the_gap_between_groups() {
        crate::model::test_util::one_thread();
        let ds = correlated(300);
        let m = test_data::model(ModelKind::Dnn, &ds, 16, 0.0, 3);
        let plain = fit(&ds, FairTraining::None, test_data::copy(m.as_ref()));
        let pen = fit(
            &ds,
            "penalty:20".parse().unwrap(),
            test_data::copy(m.as_ref()),
        );
        let eo = fit(&ds, "penalty-eo:5".parse().unwrap(), m);
        let (g0, g1, g2) = (
            high_risk_gap(&plain, &ds),
            high_risk_gap(&pen, &ds),
            high_risk_gap(&eo, &ds),
        );
        assert!(g0 > 0.2, "the plain model separates the groups: {g0}");
        assert!(
            g1 < 0.6 * g0,
            "demographic parity penalty: {g1} vs plain {g0}"
        );
        assert!(g2 != g0, "equalized odds penalty changes training");
    }

    #[test]
    fn parallel_trainers_refuse_fairness_settings() {
        let ds = correlated(20);
        let m = test_data::model(ModelKind::Dnn, &ds, 4, 0.0, 1);
        let cfg = TrainConfig {
            fairness: FairTraining::Reweigh,
            ..test_data::fast_config(1, 8)
        };
        let Err(e) = crate::train::ParallelTrainer::from_models(vec![m], cfg) else {
            panic!("the data-parallel trainer accepted reweighing");
        };
        let e = e.to_string();
        assert!(e.contains("one worker"), "{e}");
    }
}
