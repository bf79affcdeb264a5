//! q-FedAvg (Li, Sanjabi, Beirami and Smith 2020): fair resource allocation,
//! giving stations where the global model does badly more say.

use rayon::prelude::*;

use super::kernels::{self, CHUNK};
use super::{Aggregated, FitRes, Metrics, Strategy, GLOBAL_LOSS_KEY, REPORT_GLOBAL_LOSS_EXTENSION};
use crate::error::{FlError, Result};
use fedcrime_params::Params;
use fedcrime_wire::{RoundSettings, Scalar};

/// The smallest loss q-FedAvg works with: a reported global loss below it
/// (zero, or a negative one) counts as this value.
pub const MIN_GLOBAL_LOSS: f64 = 1e-10;

/// q-FedAvg (Li, Sanjabi, Beirami, Smith 2020, "Fair Resource Allocation in
/// Federated Learning", ICLR; Algorithm 2), the solver of the q-Fair
/// objective `sum_k p_k F_k^(q+1) / (q+1)`: the larger `q`, the more the
/// stations where the global model has a high loss weigh, and the more
/// uniform the stations' losses become.
///
/// With `w` the global model, `w_k` station k's locally trained model,
/// `F_k` the loss of `w` on station k's training data (before its local
/// training) and `L = 1 / lr` (the paper's Lipschitz estimate; the paper
/// takes the stations' SGD learning rate, fedcrime defaults to `lr = 1`
/// because its stations take Adam steps, see [`StrategyConfig::QFedAvg`](super::StrategyConfig::QFedAvg)):
///
/// ```text
/// Delta_k = L (w - w_k)
/// h_k     = q F_k^(q-1) ||Delta_k||^2 + L F_k^q
/// w'      = w - (sum_k F_k^q Delta_k) / (sum_k h_k)
/// ```
///
/// Updates count equally (not by examples): in the paper, station sampling
/// carries the weights `p_k`. With `q = 0` the new model is the unweighted
/// mean of the stations' models; in general it is `w + s (m - w)`, with `m`
/// the mean of the `w_k` weighted by `F_k^q` and a step `0 < s <= 1` that
/// shrinks with `q` and the updates' size. The sums are computed divided by
/// `max_k F_k^q` (the same quotient), so large `q` or large losses do not
/// overflow.
///
/// Stations must report `F_k`: [`Strategy::configure_fit`] sets the
/// [`REPORT_GLOBAL_LOSS_EXTENSION`] of the round's settings and each update
/// must carry the [`GLOBAL_LOSS_KEY`] metric (an update without a finite
/// one fails the aggregation). The objective assumes non-negative losses;
/// a loss below [`MIN_GLOBAL_LOSS`] (zero, or a negative one such as a
/// Poisson NLL without its Stirling term) counts as [`MIN_GLOBAL_LOSS`],
/// which leaves the station almost no weight when `q > 0`, and is counted
/// in the `floored_global_losses` metric.
#[derive(Clone, Debug)]
pub struct QFedAvg {
    q: f64,
    lr: f64,
}

impl QFedAvg {
    /// q-FedAvg with fairness `q >= 0` (0: plain, unweighted averaging) and
    /// the step size `lr > 0` (the Lipschitz estimate is `1 / lr`; see
    /// [`StrategyConfig::QFedAvg`](super::StrategyConfig::QFedAvg) for its default).
    pub fn new(q: f64, lr: f64) -> Result<Self> {
        if !(q.is_finite() && q >= 0.0) {
            return Err(FlError::config(
                "strategy.q",
                format!("must be finite and >= 0, got {q}"),
            ));
        }
        if !(lr.is_finite() && lr > 0.0 && (1.0 / lr).is_finite()) {
            return Err(FlError::config(
                "strategy.lr",
                format!("must be finite and > 0, got {lr}"),
            ));
        }
        Ok(QFedAvg { q, lr })
    }

    fn error(&self, message: String) -> FlError {
        FlError::Aggregation {
            strategy: self.name().to_string(),
            message,
        }
    }
}

impl Strategy for QFedAvg {
    fn name(&self) -> &str {
        "qfedavg"
    }

    fn configure_fit(&mut self, _round: u64, base: &RoundSettings) -> RoundSettings {
        let mut settings = base.clone();
        settings
            .extensions
            .insert(REPORT_GLOBAL_LOSS_EXTENSION.to_string(), Scalar::Bool(true));
        settings
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
        let n = results.len();
        let mut reported = Vec::with_capacity(n);
        for (i, r) in results.iter().enumerate() {
            match r.metrics.get(GLOBAL_LOSS_KEY) {
                Some(f) if f.is_finite() => reported.push(*f),
                other => {
                    return Err(self.error(format!(
                        "update {i} (of {n}) has no finite {GLOBAL_LOSS_KEY:?} metric \
                         (got {other:?}); stations must report the global model's \
                         training loss when the round asks for {REPORT_GLOBAL_LOSS_EXTENSION:?}"
                    )))
                }
            }
        }
        let losses: Vec<f64> = reported.iter().map(|f| f.max(MIN_GLOBAL_LOSS)).collect();
        let floored = reported.iter().filter(|f| **f < MIN_GLOBAL_LOSS).count();
        let max_loss = losses.iter().copied().fold(MIN_GLOBAL_LOSS, f64::max);

        let q = self.q;
        let l = 1.0 / self.lr;
        // Everything divided by max_k F_k^q: a_k = (F_k / F_max)^q in (0, 1],
        // F_k^q Delta_k -> a_k L (w - w_k) and
        // h_k -> a_k (q L^2 ||w - w_k||^2 / F_k + L).
        let a: Vec<f64> = losses.iter().map(|f| (f / max_loss).powf(q)).collect();
        let sum_a: f64 = a.iter().sum();
        let mut curvature = 0.0;
        if q > 0.0 {
            for (k, r) in results.iter().enumerate() {
                let d2 = kernels::par_sq_distance(global.data(), r.params.data())
                    .map_err(|e| self.error(format!("update {k}: {e}")))?;
                curvature += a[k] * d2 / losses[k];
            }
            curvature *= q * l * l;
        }
        // sum_k h_k / F_max^q.
        let denom = l * sum_a + curvature;
        if !(denom.is_finite() && denom > 0.0) {
            return Err(self.error(format!(
                "the sum of the h_k is {denom} (relative to the largest F_k^q), \
                 not a finite positive number; losses {reported:?}, q = {q}, lr = {}",
                self.lr
            )));
        }
        // The fraction of the way from w to the loss-weighted mean m.
        let step = l * sum_a / denom;

        let inputs: Vec<&[f32]> = results.iter().map(|r| r.params.data()).collect();
        let mut out = Params::zeros(global.spec().clone());
        kernels::weighted_mean(&inputs, &a, out.data_mut())
            .map_err(|e| self.error(e.to_string()))?;
        if step != 1.0 {
            let keep = 1.0 - step;
            out.data_mut()
                .par_chunks_mut(CHUNK)
                .zip(global.data().par_chunks(CHUNK))
                .for_each(|(m, g)| {
                    for (m, &g) in m.iter_mut().zip(g) {
                        let mean = f64::from(*m);
                        *m = (mean + keep * (f64::from(g) - mean)) as f32;
                    }
                });
        }

        let mean_loss = reported.iter().sum::<f64>() / n as f64;
        let max_reported = reported.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min_reported = reported.iter().copied().fold(f64::INFINITY, f64::min);
        Ok(Aggregated {
            params: Some(out),
            metrics: Metrics::from([
                ("q".to_string(), q),
                ("mean_global_loss".to_string(), mean_loss),
                ("max_global_loss".to_string(), max_reported),
                ("min_global_loss".to_string(), min_reported),
                ("floored_global_losses".to_string(), floored as f64),
                ("step".to_string(), step),
            ]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{FedAvg, StrategyState};
    use super::*;

    /// An update with `values`, `n` examples and global loss `loss`.
    fn update(values: &[f32], n: u64, loss: f64) -> FitRes {
        let mut r = res(values, n);
        r.metrics.insert(GLOBAL_LOSS_KEY.to_string(), loss);
        r
    }

    fn dist(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn q_zero_is_the_unweighted_mean_of_the_updates() {
        let g = params(&[10.0, -10.0, 4.0]);
        // Different examples and losses: q = 0 ignores both.
        let r = [
            update(&[1.0, 2.0, 3.0], 1, 0.5),
            update(&[3.0, 6.0, -1.0], 3, 2.0),
            update(&[5.0, 1.0, 1.0], 10, 7.0),
        ];
        let mut s = QFedAvg::new(0.0, 1e-3).unwrap();
        let out = s.aggregate_fit(1, &g, &r).unwrap();
        assert_eq!(out.params.unwrap().data(), &[3.0, 3.0, 1.0]);
        assert_eq!(out.metrics["step"], 1.0);
        assert_eq!(out.metrics["q"], 0.0);
        // Not FedAvg's example-weighted mean.
        let fedavg = FedAvg::new().aggregate_fit(1, &g, &r).unwrap().params;
        assert_ne!(fedavg.unwrap().data(), &[3.0, 3.0, 1.0]);
    }

    #[test]
    fn q_one_by_hand() {
        // lr = 0.5, so L = 2; w = [1, -1].
        // Station 1: w_1 = [2, -1], F_1 = 1: Delta_1 = 2 [-1, 0] = [-2, 0],
        //   ||Delta_1||^2 = 4, h_1 = 1 * 1^0 * 4 + 2 * 1^1 = 6.
        // Station 2: w_2 = [1, 1], F_2 = 2: Delta_2 = 2 [0, -2] = [0, -4],
        //   ||Delta_2||^2 = 16, h_2 = 1 * 2^0 * 16 + 2 * 2^1 = 20.
        // sum F_k Delta_k = 1 [-2, 0] + 2 [0, -4] = [-2, -8]; sum h_k = 26.
        // w' = [1, -1] - [-2, -8] / 26 = [1 + 1/13, -1 + 4/13] = [14/13, -9/13].
        let g = params(&[1.0, -1.0]);
        let mut s = QFedAvg::new(1.0, 0.5).unwrap();
        let out = s
            .aggregate_fit(
                3,
                &g,
                &[update(&[2.0, -1.0], 5, 1.0), update(&[1.0, 1.0], 1, 2.0)],
            )
            .unwrap();
        let p = out.params.unwrap();
        assert!(
            close(p.data(), &[14.0 / 13.0, -9.0 / 13.0], 1e-6),
            "{:?}",
            p.data()
        );
        assert_eq!(out.metrics["mean_global_loss"], 1.5);
        assert_eq!(out.metrics["max_global_loss"], 2.0);
        assert_eq!(out.metrics["min_global_loss"], 1.0);
        assert_eq!(out.metrics["floored_global_losses"], 0.0);
    }

    /// Algorithm 2 of the paper as written, in `f64`.
    fn reference(q: f64, lr: f64, w: &[f64], updates: &[(&[f64], f64)]) -> Vec<f64> {
        let l = 1.0 / lr;
        let mut num = vec![0.0; w.len()];
        let mut den = 0.0;
        for (wk, f) in updates {
            let delta: Vec<f64> = w.iter().zip(*wk).map(|(a, b)| l * (a - b)).collect();
            let norm2: f64 = delta.iter().map(|d| d * d).sum();
            for (n, d) in num.iter_mut().zip(&delta) {
                *n += f.powf(q) * d;
            }
            den += q * f.powf(q - 1.0) * norm2 + l * f.powf(q);
        }
        w.iter().zip(&num).map(|(a, n)| a - n / den).collect()
    }

    #[test]
    fn agrees_with_the_papers_formula() {
        let w = [0.5, -0.25, 2.0];
        let ups: [[f64; 3]; 3] = [[0.4, -0.2, 2.1], [0.55, -0.35, 1.9], [0.3, 0.0, 2.05]];
        let losses = [0.8, 1.7, 3.2];
        let g = params(&w.map(|x| x as f32));
        let r: Vec<FitRes> = ups
            .iter()
            .zip(losses)
            .enumerate()
            .map(|(i, (u, f))| update(&u.map(|x| x as f32), i as u64 + 1, f))
            .collect();
        // The reference sees the values the strategy sees (rounded to f32).
        let wide = |v: [f64; 3]| v.map(|x| f64::from(x as f32));
        let (w64, ups64) = (wide(w), ups.map(wide));
        for q in [0.0, 0.1, 0.5, 1.0, 2.0, 3.0] {
            let expected = reference(
                q,
                0.1,
                &w64,
                &[
                    (&ups64[0], losses[0]),
                    (&ups64[1], losses[1]),
                    (&ups64[2], losses[2]),
                ],
            );
            let expected: Vec<f32> = expected.iter().map(|x| *x as f32).collect();
            let p = QFedAvg::new(q, 0.1)
                .unwrap()
                .aggregate_fit(1, &g, &r)
                .unwrap()
                .params
                .unwrap();
            assert!(
                close(p.data(), &expected, 1e-6),
                "q = {q}: {:?} != {expected:?}",
                p.data()
            );
        }
    }

    #[test]
    fn larger_q_pulls_towards_the_station_with_the_higher_loss() {
        // Small local moves (as with a small learning rate): the step stays
        // close to 1 and the loss weights decide.
        let g = params(&[0.0, 0.0]);
        let hard = [0.0f32, 0.01];
        let r = [update(&[0.01, 0.0], 1, 1.0), update(&hard, 1, 4.0)];
        let mut distances: Vec<f64> = Vec::new();
        for q in [0.0, 0.5, 1.0, 2.0, 5.0] {
            let p = QFedAvg::new(q, 1.0)
                .unwrap()
                .aggregate_fit(1, &g, &r)
                .unwrap()
                .params
                .unwrap();
            let d = dist(p.data(), &hard);
            if let Some(last) = distances.last() {
                assert!(d < *last, "q = {q}: distance {d} after {last}");
            }
            distances.push(d);
        }
        // q = 0 is the midpoint, sqrt(1/2) * 0.01 from either station.
        assert!((distances[0] - 0.01 / 2f64.sqrt()).abs() < 1e-7);
        assert!(distances[4] < 0.1 * distances[0], "{distances:?}");
    }

    #[test]
    fn large_q_and_losses_do_not_overflow() {
        // Computed directly, F^q would be 1e400 and 2^100 * 1e400.
        let g = params(&[0.0, 0.0]);
        let r = [update(&[1e-3, 0.0], 1, 1e4), update(&[0.0, 1e-3], 1, 2e4)];
        let out = QFedAvg::new(100.0, 1.0)
            .unwrap()
            .aggregate_fit(1, &g, &r)
            .unwrap();
        let p = out.params.unwrap();
        // (1/2)^100 leaves the first station no visible weight.
        assert!(p.data()[0] >= 0.0 && p.data()[0] < 1e-30, "{:?}", p.data());
        assert!((p.data()[1] - 1e-3).abs() < 1e-9, "{:?}", p.data());
        assert!(out.metrics["step"] > 0.99 && out.metrics["step"] < 1.0);
    }

    #[test]
    fn losses_below_the_floor_count_as_the_floor() {
        let g = params(&[0.0, 0.0]);
        let r = [update(&[1.0, 0.0], 1, -3.0), update(&[0.0, 1.0], 1, 0.0)];
        let out = QFedAvg::new(1.0, 1.0)
            .unwrap()
            .aggregate_fit(1, &g, &r)
            .unwrap();
        // Both floored to the same value: a symmetric result, finite.
        let p = out.params.unwrap();
        assert_eq!(p.data()[0], p.data()[1]);
        assert!(p.data()[0].is_finite() && p.data()[0] > 0.0);
        assert_eq!(out.metrics["floored_global_losses"], 2.0);
        assert_eq!(out.metrics["min_global_loss"], -3.0);
    }

    #[test]
    fn an_update_without_the_global_loss_is_an_error_naming_it() {
        let g = params(&[0.0, 0.0]);
        let mut s = QFedAvg::new(1.0, 1e-3).unwrap();
        for bad in [res(&[1.0, 1.0], 1), update(&[1.0, 1.0], 1, f64::NAN)] {
            let e = s
                .aggregate_fit(1, &g, &[update(&[0.0, 1.0], 1, 1.0), bad])
                .unwrap_err();
            assert!(matches!(e, FlError::Aggregation { .. }), "{e}");
            let text = e.to_string();
            assert!(text.contains("update 1 "), "{text}");
            assert!(text.contains(GLOBAL_LOSS_KEY), "{text}");
        }
        // No updates: keep the old model.
        assert!(s.aggregate_fit(1, &g, &[]).unwrap().params.is_none());
    }

    #[test]
    fn configure_fit_asks_for_the_global_loss_and_keeps_the_rest() {
        let mut s = QFedAvg::new(2.0, 1e-3).unwrap();
        let mut base = RoundSettings {
            local_epochs: 3,
            proximal_mu: 0.1,
            ..RoundSettings::default()
        };
        base.set_min_local_steps(7);
        assert!(!super::super::global_loss_requested(&base));
        let c = s.configure_fit(4, &base);
        assert_eq!(
            c.extensions.get(REPORT_GLOBAL_LOSS_EXTENSION),
            Some(&Scalar::Bool(true))
        );
        assert!(super::super::global_loss_requested(&c));
        assert_eq!(c.local_epochs, 3);
        assert_eq!(c.proximal_mu, 0.1);
        assert_eq!(c.min_local_steps(), 7);
        assert_eq!(c.validate(), Ok(()));
        // Stateless.
        assert_eq!(s.state(), StrategyState::stateless("qfedavg"));
    }

    #[test]
    fn bad_parameters_name_the_field() {
        for (q, lr, field) in [
            (-1.0, 1e-3, "strategy.q"),
            (f64::NAN, 1e-3, "strategy.q"),
            (1.0, 0.0, "strategy.lr"),
            (1.0, -1e-3, "strategy.lr"),
            (1.0, f64::INFINITY, "strategy.lr"),
            (1.0, 1e-320, "strategy.lr"),
        ] {
            match QFedAvg::new(q, lr) {
                Err(FlError::Config { field: f, .. }) => assert_eq!(f, field, "q={q} lr={lr}"),
                other => panic!("q={q} lr={lr}: {other:?}"),
            }
        }
    }
}
