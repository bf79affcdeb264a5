//! Adaptive server optimizers from Reddi et al., "Adaptive Federated
//! Optimization" (ICLR 2021), Algorithm 2: FedAdagrad, FedYogi, FedAdam.
//!
//! With the example-weighted average `avg` of the stations' models and the
//! pseudo-gradient `d = avg - x`:
//!
//! ```text
//! m = beta1 * m + (1 - beta1) * d
//! v = v + d^2                                   (Adagrad)
//! v = v - (1 - beta2) * d^2 * sign(v - d^2)     (Yogi)
//! v = beta2 * v + (1 - beta2) * d^2             (Adam)
//! x = x + eta * m / (sqrt(v) + tau)
//! ```
//!
//! `m` starts at zero and `v` at `tau^2` (the paper's `v_{-1} >= tau^2`); no
//! bias correction, as in the paper.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::kernels::CHUNK;
use super::{weighted_average, Aggregated, FitRes, Metrics, Strategy, StrategyState};
use crate::error::{FlError, Result};
use fedcrime_params::Params;

/// Which second-moment rule [`FedOpt`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FedOptKind {
    /// Accumulated squares (FedAdagrad).
    Adagrad,
    /// Additive, sign-controlled update (FedYogi).
    Yogi,
    /// Exponential moving average (FedAdam).
    Adam,
}

impl FedOptKind {
    /// The strategy name: `fedadagrad`, `fedyogi` or `fedadam`.
    pub fn strategy_name(self) -> &'static str {
        match self {
            FedOptKind::Adagrad => "fedadagrad",
            FedOptKind::Yogi => "fedyogi",
            FedOptKind::Adam => "fedadam",
        }
    }
}

/// An adaptive federated optimizer (see the module docs).
#[derive(Clone, Debug)]
pub struct FedOpt {
    kind: FedOptKind,
    eta: f64,
    beta1: f64,
    beta2: f64,
    tau: f64,
    m: Option<Params>,
    v: Option<Params>,
}

impl FedOpt {
    /// An optimizer with server learning rate `eta > 0`, momentum
    /// `0 <= beta1 < 1`, second-moment decay `0 <= beta2 < 1` (unused by
    /// Adagrad) and adaptivity `tau > 0`.
    pub fn new(kind: FedOptKind, eta: f64, beta1: f64, beta2: f64, tau: f64) -> Result<Self> {
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(FlError::config(
                    format!("strategy.{field}"),
                    format!("must be finite and > 0, got {v}"),
                ))
            }
        };
        let unit = |field: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(FlError::config(
                    format!("strategy.{field}"),
                    format!("must be in [0, 1), got {v}"),
                ))
            }
        };
        positive("eta", eta)?;
        positive("tau", tau)?;
        unit("beta1", beta1)?;
        unit("beta2", beta2)?;
        Ok(FedOpt {
            kind,
            eta,
            beta1,
            beta2,
            tau,
            m: None,
            v: None,
        })
    }

    /// The rule in use.
    pub fn kind(&self) -> FedOptKind {
        self.kind
    }
}

impl Strategy for FedOpt {
    fn name(&self) -> &str {
        self.kind.strategy_name()
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
        let mut out = weighted_average(self.name(), global, results)?;
        let spec = global.spec();
        let tau = self.tau as f32;
        let m = self.m.get_or_insert_with(|| Params::zeros(spec.clone()));
        let v = self.v.get_or_insert_with(|| {
            let mut v = Params::zeros(spec.clone());
            v.data_mut().fill(tau * tau);
            v
        });
        m.spec().check_same(spec)?;
        v.spec().check_same(spec)?;
        let (eta, b1, b2) = (self.eta as f32, self.beta1 as f32, self.beta2 as f32);
        let kind = self.kind;
        out.data_mut()
            .par_chunks_mut(CHUNK)
            .zip(m.data_mut().par_chunks_mut(CHUNK))
            .zip(v.data_mut().par_chunks_mut(CHUNK))
            .zip(global.data().par_chunks(CHUNK))
            .for_each(|(((avg, m), v), x)| {
                let it = avg.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(x);
                match kind {
                    FedOptKind::Adagrad => {
                        for (((a, m), v), &x) in it {
                            let d = *a - x;
                            *m = b1 * *m + (1.0 - b1) * d;
                            *v += d * d;
                            *a = x + eta * *m / (v.sqrt() + tau);
                        }
                    }
                    FedOptKind::Yogi => {
                        for (((a, m), v), &x) in it {
                            let d = *a - x;
                            let d2 = d * d;
                            *m = b1 * *m + (1.0 - b1) * d;
                            let diff = *v - d2;
                            // sign(diff) with sign(0) = 0, branch-free.
                            let sign =
                                f32::from(u8::from(diff > 0.0)) - f32::from(u8::from(diff < 0.0));
                            *v -= (1.0 - b2) * d2 * sign;
                            *a = x + eta * *m / (v.sqrt() + tau);
                        }
                    }
                    FedOptKind::Adam => {
                        for (((a, m), v), &x) in it {
                            let d = *a - x;
                            *m = b1 * *m + (1.0 - b1) * d;
                            *v = b2 * *v + (1.0 - b2) * d * d;
                            *a = x + eta * *m / (v.sqrt() + tau);
                        }
                    }
                }
            });
        Ok(Aggregated {
            params: Some(out),
            metrics: Metrics::new(),
        })
    }

    fn state(&self) -> StrategyState {
        let mut state = StrategyState::stateless(self.name());
        if let Some(m) = &self.m {
            state.buffers.insert("m".to_string(), m.clone());
        }
        if let Some(v) = &self.v {
            state.buffers.insert("v".to_string(), v.clone());
        }
        state
    }

    fn restore(&mut self, mut state: StrategyState) -> Result<()> {
        state.expect_strategy(self.name())?;
        let m = state.buffers.remove("m");
        let v = state.buffers.remove("v");
        if let Some(extra) = state.buffers.keys().next() {
            return Err(FlError::StrategyState {
                strategy: self.name().to_string(),
                message: format!("unknown buffer {extra:?}"),
            });
        }
        if m.is_some() != v.is_some() {
            return Err(FlError::StrategyState {
                strategy: self.name().to_string(),
                message: "buffers m and v must be saved together".to_string(),
            });
        }
        self.m = m;
        self.v = v;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    /// One step from x = [0, 1] with a single update [2, 1]: d = [2, 0].
    fn one_step(kind: FedOptKind, eta: f64, b1: f64, b2: f64, tau: f64) -> Vec<f32> {
        let mut s = FedOpt::new(kind, eta, b1, b2, tau).unwrap();
        let g = params(&[0.0, 1.0]);
        s.aggregate_fit(1, &g, &[res(&[2.0, 1.0], 5)])
            .unwrap()
            .params
            .unwrap()
            .into_data()
    }

    #[test]
    fn fedadam_first_step_by_hand() {
        let (eta, b1, b2, tau) = (0.1f64, 0.9, 0.99, 0.5);
        let x = one_step(FedOptKind::Adam, eta, b1, b2, tau);
        // m = 0.1 * 2 = 0.2; v = 0.99 * 0.25 + 0.01 * 4 = 0.2875
        let want0 = eta * 0.2 / (0.2875f64.sqrt() + tau);
        assert!((f64::from(x[0]) - want0).abs() < 1e-6, "{x:?}");
        // d = 0 leaves the coordinate in place (m = 0).
        assert_eq!(x[1], 1.0);
    }

    #[test]
    fn fedadagrad_first_step_is_eta_times_sign() {
        // beta1 = 0: m = d; v = tau^2 + d^2; step = eta * d / (sqrt(d^2 + tau^2) + tau) ~ eta.
        let x = one_step(FedOptKind::Adagrad, 0.1, 0.0, 0.0, 1e-9);
        assert!((x[0] - 0.1).abs() < 1e-6, "{x:?}");
        assert_eq!(x[1], 1.0);
    }

    #[test]
    fn fedyogi_first_step_by_hand() {
        let (eta, b1, b2, tau) = (0.01f64, 0.9, 0.99, 1e-3);
        let x = one_step(FedOptKind::Yogi, eta, b1, b2, tau);
        // v0 = tau^2 = 1e-6 < d^2 = 4: sign = -1, v = 1e-6 + 0.01 * 4.
        let v = 1e-6 + 0.01 * 4.0;
        let want0 = eta * 0.2 / (f64::sqrt(v) + tau);
        assert!((f64::from(x[0]) - want0).abs() < 1e-6, "{x:?} vs {want0}");
        assert_eq!(x[1], 1.0);
    }

    #[test]
    fn yogi_and_adam_differ_on_the_second_step_and_state_restores() {
        let g0 = params(&[0.0, 0.0]);
        let r1 = [res(&[1.0, -1.0], 1)];
        for kind in [FedOptKind::Adam, FedOptKind::Yogi, FedOptKind::Adagrad] {
            let mut s = FedOpt::new(kind, 0.1, 0.9, 0.99, 1e-3).unwrap();
            let g1 = s.aggregate_fit(1, &g0, &r1).unwrap().params.unwrap();
            let mut t = FedOpt::new(kind, 0.1, 0.9, 0.99, 1e-3).unwrap();
            t.restore(s.state()).unwrap();
            let r2 = [res(&[0.05, 0.5], 1)];
            let a = s.aggregate_fit(2, &g1, &r2).unwrap().params.unwrap();
            let b = t.aggregate_fit(2, &g1, &r2).unwrap().params.unwrap();
            assert_eq!(a, b, "{kind:?}");
            // Momentum (beta1 = 0.9) keeps coordinate 0 moving up even where d < 0 now.
            assert!(a.data()[0] > g1.data()[0], "{kind:?}");
        }
        let mut s = FedOpt::new(FedOptKind::Adam, 0.1, 0.9, 0.99, 1e-3).unwrap();
        assert!(s.restore(StrategyState::stateless("fedyogi")).is_err());
        assert!(FedOpt::new(FedOptKind::Adam, 0.1, 1.0, 0.99, 1e-3).is_err());
        assert!(FedOpt::new(FedOptKind::Adam, 0.1, 0.9, 0.99, 0.0).is_err());
    }
}
