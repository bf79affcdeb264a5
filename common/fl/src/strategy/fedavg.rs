//! FedAvg and its close relatives: FedProx (the same average, a proximal
//! term on the stations) and FedAvgM (server momentum).

use rayon::prelude::*;

use super::kernels::CHUNK;
use super::{weighted_average, Aggregated, FitRes, Metrics, Strategy, StrategyState};
use crate::error::{FlError, Result};
use fedcrime_params::Params;
use fedcrime_wire::RoundSettings;

/// Federated averaging (McMahan et al. 2017): the new global model is the
/// mean of the stations' models weighted by their training examples.
#[derive(Clone, Debug, Default)]
pub struct FedAvg;

impl FedAvg {
    /// A FedAvg strategy.
    pub fn new() -> Self {
        FedAvg
    }
}

impl Strategy for FedAvg {
    fn name(&self) -> &str {
        "fedavg"
    }

    fn mean_suffices(&self) -> bool {
        true
    }

    fn aggregate_fit(
        &mut self,
        _round: u64,
        global: &Params,
        results: &[FitRes],
    ) -> Result<Aggregated> {
        if results.is_empty() {
            return Ok(Aggregated::default());
        }
        Ok(Aggregated {
            params: Some(weighted_average(self.name(), global, results)?),
            metrics: Metrics::new(),
        })
    }
}

/// FedAvg over the stations that moved each coordinate: per parameter, the
/// example-weighted mean of the updates whose value differs from the global
/// model's, the global value where none does. Equal to FedAvg for weights
/// every station trains; different for weights only some stations can move,
/// such as those of a one-hot input (an area code) that is zero at the
/// others: with one station per area, FedAvg shrinks each area's update by
/// the number of stations, this keeps it whole. What leaves a station is
/// unchanged (its whole model).
#[derive(Clone, Debug, Default)]
pub struct FedAvgSparse;

impl Strategy for FedAvgSparse {
    fn name(&self) -> &str {
        "fedavgsparse"
    }

    fn aggregate_fit(
        &mut self,
        _round: u64,
        global: &Params,
        results: &[FitRes],
    ) -> Result<Aggregated> {
        if results.is_empty() {
            return Ok(Aggregated::default());
        }
        let inputs: Vec<&[f32]> = results.iter().map(|r| r.params.data()).collect();
        let weights: Vec<f64> = results.iter().map(|r| r.num_examples as f64).collect();
        let mut out = Params::zeros(global.spec().clone());
        super::kernels::weighted_mean_of_changed(&inputs, &weights, global.data(), out.data_mut())
            .map_err(|e| FlError::Aggregation {
                strategy: self.name().to_string(),
                message: e.to_string(),
            })?;
        Ok(Aggregated {
            params: Some(out),
            metrics: Metrics::new(),
        })
    }
}

/// FedProx (Li et al. 2020): stations add `mu/2 * ||w - w_global||^2` to
/// their loss (`mu` travels as [`RoundSettings::proximal_mu`]); the
/// server averages like FedAvg.
#[derive(Clone, Debug)]
pub struct FedProx {
    mu: f64,
}

impl FedProx {
    /// FedProx with proximal coefficient `mu >= 0`.
    pub fn new(mu: f64) -> Result<Self> {
        if !(mu.is_finite() && mu >= 0.0) {
            return Err(FlError::config(
                "strategy.mu",
                format!("must be finite and >= 0, got {mu}"),
            ));
        }
        Ok(FedProx { mu })
    }
}

impl Strategy for FedProx {
    fn name(&self) -> &str {
        "fedprox"
    }

    fn configure_fit(&mut self, _round: u64, base: &RoundSettings) -> RoundSettings {
        RoundSettings {
            proximal_mu: self.mu,
            ..base.clone()
        }
    }

    fn mean_suffices(&self) -> bool {
        true
    }

    fn aggregate_fit(
        &mut self,
        round: u64,
        global: &Params,
        results: &[FitRes],
    ) -> Result<Aggregated> {
        let mut out = FedAvg.aggregate_fit(round, global, results)?;
        out.metrics.insert("proximal_mu".to_string(), self.mu);
        Ok(out)
    }
}

/// FedAvg with server momentum (Hsu et al. 2019), as Flower's `FedAvgM`:
/// with the pseudo-gradient `g = global - avg`, `m = momentum * m + g`
/// (`m = g` on the first round) and `global -= server_lr * m`.
/// With `momentum = 0` and `server_lr = 1` this is FedAvg.
#[derive(Clone, Debug)]
pub struct FedAvgM {
    server_lr: f64,
    momentum: f64,
    velocity: Option<Params>,
}

impl FedAvgM {
    /// FedAvgM with server learning rate `server_lr > 0` and `0 <= momentum < 1`.
    pub fn new(server_lr: f64, momentum: f64) -> Result<Self> {
        if !(server_lr.is_finite() && server_lr > 0.0) {
            return Err(FlError::config(
                "strategy.server_lr",
                format!("must be finite and > 0, got {server_lr}"),
            ));
        }
        if !(0.0..1.0).contains(&momentum) {
            return Err(FlError::config(
                "strategy.momentum",
                format!("must be in [0, 1), got {momentum}"),
            ));
        }
        Ok(FedAvgM {
            server_lr,
            momentum,
            velocity: None,
        })
    }
}

impl Strategy for FedAvgM {
    fn name(&self) -> &str {
        "fedavgm"
    }

    fn mean_suffices(&self) -> bool {
        true
    }

    fn aggregate_fit(
        &mut self,
        _round: u64,
        global: &Params,
        results: &[FitRes],
    ) -> Result<Aggregated> {
        if results.is_empty() {
            return Ok(Aggregated::default());
        }
        // The average, then rewritten in place into the new global model.
        let mut out = weighted_average(self.name(), global, results)?;
        let lr = self.server_lr as f32;
        let beta = self.momentum as f32;
        let fresh = self.velocity.is_none();
        let velocity = self
            .velocity
            .get_or_insert_with(|| Params::zeros(global.spec().clone()));
        velocity.spec().check_same(global.spec())?;
        out.data_mut()
            .par_chunks_mut(CHUNK)
            .zip(velocity.data_mut().par_chunks_mut(CHUNK))
            .zip(global.data().par_chunks(CHUNK))
            .for_each(|((avg, m), g)| {
                for ((a, m), &g) in avg.iter_mut().zip(m.iter_mut()).zip(g) {
                    let grad = g - *a;
                    *m = if fresh { grad } else { beta * *m + grad };
                    *a = g - lr * *m;
                }
            });
        Ok(Aggregated {
            params: Some(out),
            metrics: Metrics::new(),
        })
    }

    fn state(&self) -> StrategyState {
        let mut state = StrategyState::stateless(self.name());
        if let Some(v) = &self.velocity {
            state.buffers.insert("momentum".to_string(), v.clone());
        }
        state
    }

    fn restore(&mut self, mut state: StrategyState) -> Result<()> {
        state.expect_strategy(self.name())?;
        self.velocity = state.buffers.remove("momentum");
        if let Some(extra) = state.buffers.keys().next() {
            return Err(FlError::StrategyState {
                strategy: self.name().to_string(),
                message: format!("unknown buffer {extra:?}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn fedavg_weights_by_examples() {
        let g = params(&[0.0, 0.0, 0.0]);
        let out = FedAvg::new()
            .aggregate_fit(
                1,
                &g,
                &[
                    res(&[1.0, 2.0, 3.0], 1),
                    res(&[3.0, 6.0, -1.0], 3),
                    res(&[0.0, 0.0, 0.0], 0),
                ],
            )
            .unwrap();
        // (1*[1,2,3] + 3*[3,6,-1]) / 4
        assert_eq!(out.params.unwrap().data(), &[2.5, 5.0, 0.0]);
    }

    #[test]
    fn fedavg_sparse_averages_each_coordinate_over_the_stations_that_moved_it() {
        // Coordinate 0: everyone moved it (plain FedAvg); 1: only the first
        // station (its value survives whole); 2: nobody (the global value).
        let g = params(&[0.0, 5.0, 7.0]);
        let out = FedAvgSparse
            .aggregate_fit(1, &g, &[res(&[1.0, 9.0, 7.0], 1), res(&[3.0, 5.0, 7.0], 3)])
            .unwrap();
        assert_eq!(out.params.unwrap().data(), &[2.5, 9.0, 7.0]);
        // Across chunk borders, it equals FedAvg when every station moves everything.
        let n = 3 * super::super::kernels::CHUNK + 5;
        let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 + 1.0).collect();
        let b: Vec<f32> = (0..n).map(|i| -(i as f32) - 1.0).collect();
        let g0 = params(&vec![0.0; n]);
        let sparse = FedAvgSparse
            .aggregate_fit(1, &g0, &[res(&a, 2), res(&b, 1)])
            .unwrap()
            .params
            .unwrap();
        let dense = FedAvg::new()
            .aggregate_fit(1, &g0, &[res(&a, 2), res(&b, 1)])
            .unwrap()
            .params
            .unwrap();
        assert_eq!(sparse.data(), dense.data());
        assert_eq!(
            "fedavg-sparse".parse::<crate::StrategyConfig>().unwrap(),
            crate::StrategyConfig::FedAvgSparse {}
        );
    }

    #[test]
    fn fedavg_of_identical_updates_is_that_update() {
        let g = params(&[9.0, 9.0]);
        let u = [0.1f32, -3.7];
        let out = FedAvg::new()
            .aggregate_fit(1, &g, &[res(&u, 7), res(&u, 1), res(&u, 100)])
            .unwrap();
        assert_eq!(out.params.unwrap().data(), &u);
        // No updates: keep the old model.
        assert!(FedAvg::new()
            .aggregate_fit(1, &g, &[])
            .unwrap()
            .params
            .is_none());
    }

    #[test]
    fn fedprox_sends_mu_and_averages() {
        let mut s = FedProx::new(0.01).unwrap();
        let base = RoundSettings {
            local_epochs: 2,
            ..RoundSettings::default()
        };
        let c = s.configure_fit(1, &base);
        assert_eq!(c.proximal_mu, 0.01);
        assert_eq!(c.local_epochs, 2);
        let g = params(&[0.0, 0.0]);
        let out = s
            .aggregate_fit(1, &g, &[res(&[2.0, 0.0], 1), res(&[0.0, 2.0], 1)])
            .unwrap();
        assert_eq!(out.params.unwrap().data(), &[1.0, 1.0]);
        assert!(FedProx::new(-1.0).is_err());
    }

    #[test]
    fn fedavgm_momentum_by_hand_and_restore() {
        let mut s = FedAvgM::new(1.0, 0.9).unwrap();
        let g0 = params(&[0.0, 0.0]);
        // avg = (1*[2,4] + 3*[4,8]) / 4 = [3.5, 7]; m = g - avg = [-3.5, -7]; new = [3.5, 7].
        let g1 = s
            .aggregate_fit(1, &g0, &[res(&[2.0, 4.0], 1), res(&[4.0, 8.0], 3)])
            .unwrap()
            .params
            .unwrap();
        assert_eq!(g1.data(), &[3.5, 7.0]);
        // Save the state, continue in a restored copy: both must agree.
        let mut t = FedAvgM::new(1.0, 0.9).unwrap();
        t.restore(s.state()).unwrap();
        // pg = [3.5-4.5, 7-7] = [-1, 0]; m = 0.9*[-3.5,-7] + [-1,0] = [-4.15, -6.3]; new = g - m.
        let r = [res(&[4.5, 7.0], 2)];
        let g2 = s.aggregate_fit(2, &g1, &r).unwrap().params.unwrap();
        let g2b = t.aggregate_fit(2, &g1, &r).unwrap().params.unwrap();
        assert!(close(g2.data(), &[7.65, 13.3], 1e-5), "{:?}", g2.data());
        assert_eq!(g2, g2b);
        // Zero momentum and unit lr is FedAvg.
        let mut plain = FedAvgM::new(1.0, 0.0).unwrap();
        let a = plain.aggregate_fit(1, &g1, &r).unwrap().params.unwrap();
        assert_eq!(a.data(), &[4.5, 7.0]);
        // A state from another strategy is refused.
        let other = StrategyState {
            strategy: "fedadam".into(),
            json: serde_json::Value::Null,
            buffers: std::collections::BTreeMap::new(),
        };
        assert!(t.restore(other).is_err());
        assert!(FedAvgM::new(0.0, 0.5).is_err());
        assert!(FedAvgM::new(1.0, 1.0).is_err());
    }
}
