//! [`StrategyConfig`]: a strategy and its parameters, as written in config
//! files (`[strategy] name = "fedprox"  mu = 0.01`) and on the command line
//! (`fedprox:mu=0.01`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{
    FedAvg, FedAvgM, FedAvgSparse, FedMedian, FedOpt, FedOptKind, FedProx, FedTrimmedAvg, Krum,
    QFedAvg, Strategy,
};
use crate::error::{FlError, Result};

/// A strategy by name with its parameters; defaults follow Flower's where it
/// has them. `build` checks the ranges.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum StrategyConfig {
    /// [`FedAvg`] (an empty variant so that stray keys are refused).
    FedAvg {},
    /// [`FedAvgSparse`]: FedAvg per coordinate over the stations that moved it.
    FedAvgSparse {},
    /// [`FedProx`].
    FedProx {
        /// Proximal coefficient sent to stations (default 0.01).
        #[serde(default = "defaults::mu")]
        mu: f64,
    },
    /// [`FedAvgM`].
    FedAvgM {
        /// Server learning rate (default 1.0).
        #[serde(default = "defaults::one")]
        server_lr: f64,
        /// Server momentum (default 0.9).
        #[serde(default = "defaults::momentum")]
        momentum: f64,
    },
    /// [`FedOpt`] with Adam's second moment.
    FedAdam {
        /// Server learning rate (default 0.1).
        #[serde(default = "defaults::eta_01")]
        eta: f64,
        /// First-moment decay (default 0.9).
        #[serde(default = "defaults::beta1")]
        beta1: f64,
        /// Second-moment decay (default 0.99).
        #[serde(default = "defaults::beta2")]
        beta2: f64,
        /// Adaptivity (default 1e-9).
        #[serde(default = "defaults::tau_small")]
        tau: f64,
    },
    /// [`FedOpt`] with Yogi's second moment.
    FedYogi {
        /// Server learning rate (default 0.01).
        #[serde(default = "defaults::eta_001")]
        eta: f64,
        /// First-moment decay (default 0.9).
        #[serde(default = "defaults::beta1")]
        beta1: f64,
        /// Second-moment decay (default 0.99).
        #[serde(default = "defaults::beta2")]
        beta2: f64,
        /// Adaptivity (default 1e-3).
        #[serde(default = "defaults::tau_yogi")]
        tau: f64,
    },
    /// [`FedOpt`] with Adagrad's second moment.
    FedAdagrad {
        /// Server learning rate (default 0.1).
        #[serde(default = "defaults::eta_01")]
        eta: f64,
        /// First-moment decay (default 0: no momentum).
        #[serde(default)]
        beta1: f64,
        /// Adaptivity (default 1e-9).
        #[serde(default = "defaults::tau_small")]
        tau: f64,
    },
    /// [`FedMedian`] (an empty variant so that stray keys are refused).
    FedMedian {},
    /// [`FedTrimmedAvg`].
    FedTrimmedAvg {
        /// Fraction trimmed per side (default 0.2).
        #[serde(default = "defaults::beta_trim")]
        beta: f64,
    },
    /// [`Krum`] keeping one update.
    Krum {
        /// Byzantine updates tolerated (default 1).
        #[serde(default = "defaults::byzantine")]
        byzantine: usize,
    },
    /// [`Krum`] averaging the `keep` best updates.
    MultiKrum {
        /// Byzantine updates tolerated (default 1).
        #[serde(default = "defaults::byzantine")]
        byzantine: usize,
        /// Updates averaged (default 2).
        #[serde(default = "defaults::keep")]
        keep: usize,
    },
    /// [`QFedAvg`]: fair aggregation; stations must report the global
    /// model's loss.
    QFedAvg {
        /// Fairness (default 1; 0: unweighted averaging of the updates).
        #[serde(default = "defaults::one")]
        q: f64,
        /// The step size whose inverse is the Lipschitz estimate `L`
        /// (default 1, so `L = 1`). The paper sets it to the stations' SGD
        /// learning rate; stations here take Adam steps, which move each
        /// weight by about the learning rate per step whatever the gradient,
        /// and `L = 1 / 0.001` then makes the curvature term swamp the step:
        /// on the Feb 2024 month the model never left its initial weights.
        /// `L = 1` was the best of 1e-3..100 on validation (BENCHMARKS.md).
        #[serde(default = "defaults::qfedavg_lr")]
        lr: f64,
    },
}

mod defaults {
    pub fn mu() -> f64 {
        0.01
    }
    pub fn one() -> f64 {
        1.0
    }
    pub(crate) fn momentum() -> f64 {
        0.9
    }
    pub(crate) fn eta_01() -> f64 {
        0.1
    }
    pub(crate) fn eta_001() -> f64 {
        0.01
    }
    pub(crate) fn beta1() -> f64 {
        0.9
    }
    pub(crate) fn beta2() -> f64 {
        0.99
    }
    pub(crate) fn tau_small() -> f64 {
        1e-9
    }
    pub(crate) fn tau_yogi() -> f64 {
        1e-3
    }
    pub(crate) fn beta_trim() -> f64 {
        0.2
    }
    pub fn byzantine() -> usize {
        1
    }
    pub fn keep() -> usize {
        2
    }
    pub(crate) fn qfedavg_lr() -> f64 {
        1.0
    }
}

impl Default for StrategyConfig {
    fn default() -> Self {
        StrategyConfig::FedAvg {}
    }
}

impl StrategyConfig {
    /// The names accepted by [`FromStr`] and in config files.
    pub const NAMES: [&'static str; 12] = [
        "fedavg",
        "fedavgsparse",
        "fedprox",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "fedmedian",
        "fedtrimmedavg",
        "krum",
        "multikrum",
        "qfedavg",
    ];

    /// Builds the strategy, checking every parameter's range.
    pub fn build(&self) -> Result<Box<dyn Strategy>> {
        Ok(match *self {
            StrategyConfig::FedAvg {} => Box::new(FedAvg::new()),
            StrategyConfig::FedAvgSparse {} => Box::new(FedAvgSparse),
            StrategyConfig::FedProx { mu } => Box::new(FedProx::new(mu)?),
            StrategyConfig::FedAvgM {
                server_lr,
                momentum,
            } => Box::new(FedAvgM::new(server_lr, momentum)?),
            StrategyConfig::FedAdam {
                eta,
                beta1,
                beta2,
                tau,
            } => Box::new(FedOpt::new(FedOptKind::Adam, eta, beta1, beta2, tau)?),
            StrategyConfig::FedYogi {
                eta,
                beta1,
                beta2,
                tau,
            } => Box::new(FedOpt::new(FedOptKind::Yogi, eta, beta1, beta2, tau)?),
            StrategyConfig::FedAdagrad { eta, beta1, tau } => {
                Box::new(FedOpt::new(FedOptKind::Adagrad, eta, beta1, 0.0, tau)?)
            }
            StrategyConfig::FedMedian {} => Box::new(FedMedian::new()),
            StrategyConfig::FedTrimmedAvg { beta } => Box::new(FedTrimmedAvg::new(beta)?),
            StrategyConfig::Krum { byzantine } => Box::new(Krum::new(byzantine, 1)?),
            StrategyConfig::MultiKrum { byzantine, keep } => Box::new(Krum::new(byzantine, keep)?),
            StrategyConfig::QFedAvg { q, lr } => Box::new(QFedAvg::new(q, lr)?),
        })
    }

    /// The strategy's name.
    pub fn name(&self) -> &'static str {
        match self {
            StrategyConfig::FedAvg {} => "fedavg",
            StrategyConfig::FedAvgSparse {} => "fedavgsparse",
            StrategyConfig::FedProx { .. } => "fedprox",
            StrategyConfig::FedAvgM { .. } => "fedavgm",
            StrategyConfig::FedAdam { .. } => "fedadam",
            StrategyConfig::FedYogi { .. } => "fedyogi",
            StrategyConfig::FedAdagrad { .. } => "fedadagrad",
            StrategyConfig::FedMedian {} => "fedmedian",
            StrategyConfig::FedTrimmedAvg { .. } => "fedtrimmedavg",
            StrategyConfig::Krum { .. } => "krum",
            StrategyConfig::MultiKrum { .. } => "multikrum",
            StrategyConfig::QFedAvg { .. } => "qfedavg",
        }
    }
}

/// Parses `name` or `name:key=value,key=value`, e.g. `fedprox:mu=0.1` or
/// `multikrum:byzantine=2,keep=5`. Names ignore case, `-` and `_`.
impl FromStr for StrategyConfig {
    type Err = FlError;

    fn from_str(spec: &str) -> Result<Self> {
        let err = |message: String| FlError::StrategySpec {
            spec: spec.to_string(),
            message,
        };
        let (name, params) = spec.split_once(':').unwrap_or((spec, ""));
        let name: String = name
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        if !Self::NAMES.contains(&name.as_str()) {
            return Err(err(format!(
                "unknown strategy, expected one of {}",
                Self::NAMES.join(", ")
            )));
        }
        let mut object = serde_json::Map::new();
        object.insert("name".into(), serde_json::Value::String(name));
        for pair in params.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| err(format!("{pair:?} is not key=value")))?;
            let value = value.trim();
            let json = if let Ok(i) = value.parse::<u64>() {
                serde_json::Value::from(i)
            } else if let Ok(f) = value.parse::<f64>() {
                serde_json::Value::from(f)
            } else {
                return Err(err(format!("{key}: {value:?} is not a number")));
            };
            object.insert(key.trim().to_string(), json);
        }
        serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| err(e.to_string()))
    }
}

/// The `name:key=value,...` form [`FromStr`] reads, with every parameter.
impl fmt::Display for StrategyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(self) {
            let mut sep = ':';
            for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "name") {
                write!(f, "{sep}{k}={v}")?;
                sep = ',';
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_parameters_and_defaults() {
        assert_eq!(
            "FedAvg".parse::<StrategyConfig>().unwrap(),
            StrategyConfig::FedAvg {}
        );
        assert_eq!(
            "fedprox:mu=0.5".parse::<StrategyConfig>().unwrap(),
            StrategyConfig::FedProx { mu: 0.5 }
        );
        assert_eq!(
            "multi-krum:byzantine=2,keep=5"
                .parse::<StrategyConfig>()
                .unwrap(),
            StrategyConfig::MultiKrum {
                byzantine: 2,
                keep: 5
            }
        );
        assert_eq!(
            "fedyogi".parse::<StrategyConfig>().unwrap(),
            StrategyConfig::FedYogi {
                eta: 0.01,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3
            }
        );
        for bad in [
            "fedfoo",
            "fedprox:mu",
            "fedprox:nu=1",
            "krum:byzantine=x",
            "krum:byzantine=0.5",
        ] {
            assert!(bad.parse::<StrategyConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips_and_every_name_builds() {
        for name in StrategyConfig::NAMES {
            let cfg: StrategyConfig = name.parse().unwrap();
            assert_eq!(cfg.name(), name);
            let again: StrategyConfig = cfg.to_string().parse().unwrap();
            assert_eq!(again, cfg, "{cfg}");
            let built = cfg.build().unwrap();
            assert_eq!(built.name(), name);
        }
        assert!(StrategyConfig::FedTrimmedAvg { beta: 0.7 }.build().is_err());
    }

    #[test]
    fn reads_toml_tables() {
        #[derive(Deserialize)]
        struct File {
            strategy: StrategyConfig,
        }
        let f: File = toml::from_str("[strategy]\nname = \"fedavgm\"\nmomentum = 0.5\n").unwrap();
        assert_eq!(
            f.strategy,
            StrategyConfig::FedAvgM {
                server_lr: 1.0,
                momentum: 0.5
            }
        );
        assert!(toml::from_str::<File>("[strategy]\nname = \"fedavg\"\nmu = 1\n").is_err());
        let f: File = toml::from_str("[strategy]\nname = \"qfedavg\"\nq = 2\n").unwrap();
        assert_eq!(f.strategy, StrategyConfig::QFedAvg { q: 2.0, lr: 1.0 });
        let f: File =
            toml::from_str("[strategy]\nname = \"qfedavg\"\nq = 0.5\nlr = 0.01\n").unwrap();
        assert_eq!(f.strategy, StrategyConfig::QFedAvg { q: 0.5, lr: 0.01 });
        assert!(toml::from_str::<File>("[strategy]\nname = \"qfedavg\"\nmu = 1\n").is_err());
    }

    #[test]
    fn qfedavg_parses_round_trips_and_checks_its_parameters() {
        assert_eq!(
            "q-fedavg".parse::<StrategyConfig>().unwrap(),
            StrategyConfig::QFedAvg { q: 1.0, lr: 1.0 }
        );
        let cfg: StrategyConfig = "qfedavg:q=2,lr=0.001".parse().unwrap();
        assert_eq!(cfg, StrategyConfig::QFedAvg { q: 2.0, lr: 0.001 });
        assert_eq!(cfg.to_string().parse::<StrategyConfig>().unwrap(), cfg);
        let cfg: StrategyConfig = "qfedavg:q=0.25,lr=0.05".parse().unwrap();
        let text = cfg.to_string();
        assert!(text.starts_with("qfedavg:"), "{text}");
        assert!(
            text.contains("q=0.25") && text.contains("lr=0.05"),
            "{text}"
        );
        assert_eq!(cfg.to_string().parse::<StrategyConfig>().unwrap(), cfg);
        assert_eq!(cfg.build().unwrap().name(), "qfedavg");
        for (spec, field) in [
            ("qfedavg:q=-1", "strategy.q"),
            ("qfedavg:lr=0", "strategy.lr"),
            ("qfedavg:lr=-0.1", "strategy.lr"),
        ] {
            let cfg: StrategyConfig = spec.parse().unwrap();
            match cfg.build() {
                Err(FlError::Config { field: f, .. }) => assert_eq!(f, field, "{spec}"),
                Err(e) => panic!("{spec}: {e}"),
                Ok(_) => panic!("{spec}: built"),
            }
        }
        assert!("qfedavg:mu=1".parse::<StrategyConfig>().is_err());
        assert!("qfedavg:q=x".parse::<StrategyConfig>().is_err());
    }
}
