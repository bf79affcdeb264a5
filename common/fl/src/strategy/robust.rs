//! Byzantine-robust aggregation: coordinate-wise median (Yin et al. 2018),
//! coordinate-wise trimmed mean (Yin et al. 2018) and Krum / Multi-Krum
//! (Blanchard et al. 2017). All three ignore the example counts: weighting by
//! a number the station itself reports would hand an attacker the lever these
//! rules exist to remove.

use super::kernels::{self, KernelError};
use super::{Aggregated, FitRes, Metrics, Strategy};
use crate::error::{FlError, Result};
use fedcrime_params::Params;

fn kernel_err(strategy: &str) -> impl FnOnce(KernelError) -> FlError + '_ {
    move |e| FlError::Aggregation {
        strategy: strategy.to_string(),
        message: e.to_string(),
    }
}

/// Coordinate-wise median of the stations' models (the mean of the two
/// middle values for an even count).
#[derive(Clone, Debug, Default)]
pub struct FedMedian;

impl FedMedian {
    /// A FedMedian strategy.
    pub fn new() -> Self {
        FedMedian
    }
}

impl Strategy for FedMedian {
    fn name(&self) -> &str {
        "fedmedian"
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
        let mut out = Params::zeros(global.spec().clone());
        kernels::median(&inputs, out.data_mut()).map_err(kernel_err(self.name()))?;
        Ok(Aggregated {
            params: Some(out),
            metrics: Metrics::new(),
        })
    }
}

/// Coordinate-wise trimmed mean: per coordinate, drop the `floor(beta * n)`
/// smallest and largest values and average the rest.
#[derive(Clone, Debug)]
pub struct FedTrimmedAvg {
    beta: f64,
}

impl FedTrimmedAvg {
    /// Trims a fraction `0 <= beta < 0.5` per side.
    pub fn new(beta: f64) -> Result<Self> {
        if !(0.0..0.5).contains(&beta) {
            return Err(FlError::config(
                "strategy.beta",
                format!("must be in [0, 0.5), got {beta}"),
            ));
        }
        Ok(FedTrimmedAvg { beta })
    }
}

impl Strategy for FedTrimmedAvg {
    fn name(&self) -> &str {
        "fedtrimmedavg"
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
        // beta < 0.5 keeps 2 * trim < n.
        let trim = (self.beta * n as f64).floor() as usize;
        let inputs: Vec<&[f32]> = results.iter().map(|r| r.params.data()).collect();
        let mut out = Params::zeros(global.spec().clone());
        kernels::trimmed_mean(&inputs, trim, out.data_mut()).map_err(kernel_err(self.name()))?;
        Ok(Aggregated {
            params: Some(out),
            metrics: Metrics::from([("trimmed_per_side".to_string(), trim as f64)]),
        })
    }
}

/// Krum and Multi-Krum: each update is scored by the sum of squared
/// distances to its `n - f - 2` nearest neighbours (`f` assumed byzantine);
/// Krum (`keep = 1`) adopts the best-scored update, Multi-Krum averages the
/// `keep` best (unweighted). Ties go to the earlier update. With fewer than
/// `2f + 3` updates the guarantee is void; the neighbour count is then
/// clamped to at least one (as Flower does) and a warning logged.
#[derive(Clone, Debug)]
pub struct Krum {
    byzantine: usize,
    keep: usize,
}

impl Krum {
    /// Krum tolerating `byzantine` bad updates and keeping `keep >= 1`.
    pub fn new(byzantine: usize, keep: usize) -> Result<Self> {
        if keep == 0 {
            return Err(FlError::config("strategy.keep", "must be at least 1"));
        }
        Ok(Krum { byzantine, keep })
    }

    /// The indices of the selected updates (best score first) and every
    /// update's score, from the pairwise squared distances `d` (`n x n`).
    pub fn select(&self, d: &[f64], n: usize) -> (Vec<usize>, Vec<f64>) {
        let neighbours = n
            .saturating_sub(self.byzantine.saturating_add(2))
            .max(1)
            .min(n.saturating_sub(1));
        let mut row = Vec::with_capacity(n);
        let scores: Vec<f64> = (0..n)
            .map(|i| {
                row.clear();
                row.extend((0..n).filter(|&j| j != i).map(|j| d[i * n + j]));
                if neighbours > 0 && neighbours < row.len() {
                    row.select_nth_unstable_by(neighbours - 1, f64::total_cmp);
                }
                row[..neighbours].iter().sum()
            })
            .collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
        order.truncate(self.keep.min(n));
        (order, scores)
    }
}

impl Strategy for Krum {
    fn name(&self) -> &str {
        if self.keep == 1 {
            "krum"
        } else {
            "multikrum"
        }
    }

    fn aggregate_fit(
        &mut self,
        _round: u64,
        global: &Params,
        results: &[FitRes],
    ) -> Result<Aggregated> {
        let n = results.len();
        if n == 0 {
            return Ok(Aggregated::default());
        }
        if n < self.byzantine.saturating_mul(2).saturating_add(3) {
            tracing::warn!(
                updates = n,
                byzantine = self.byzantine,
                "krum needs at least 2f + 3 updates for its guarantee"
            );
        }
        let inputs: Vec<&[f32]> = results.iter().map(|r| r.params.data()).collect();
        let d = kernels::pairwise_sq_distances(&inputs).map_err(kernel_err(self.name()))?;
        let (selected, _) = self.select(&d, n);
        let params = match selected.as_slice() {
            [one] => Params::clone(&results[*one].params),
            many => {
                let chosen: Vec<&[f32]> = many.iter().map(|&i| inputs[i]).collect();
                let mut out = Params::zeros(global.spec().clone());
                kernels::weighted_mean(&chosen, &vec![1.0; chosen.len()], out.data_mut())
                    .map_err(kernel_err(self.name()))?;
                out
            }
        };
        Ok(Aggregated {
            params: Some(params),
            metrics: Metrics::from([
                ("krum_selected".to_string(), selected.len() as f64),
                ("krum_rejected".to_string(), (n - selected.len()) as f64),
            ]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn updates() -> Vec<FitRes> {
        vec![
            res(&[0.0, 0.0], 1),
            res(&[1.0, 0.0], 1),
            res(&[0.0, 1.0], 1),
            // The outlier also claims a huge number of examples.
            res(&[100.0, 100.0], 1_000_000),
        ]
    }

    #[test]
    fn median_and_trimmed_mean_resist_an_outlier() {
        let g = params(&[0.0, 0.0]);
        let m = FedMedian::new().aggregate_fit(1, &g, &updates()).unwrap();
        // Columns sorted: [0, 0, 1, 100] -> 0.5 each.
        assert_eq!(m.params.unwrap().data(), &[0.5, 0.5]);
        let t = FedTrimmedAvg::new(0.25)
            .unwrap()
            .aggregate_fit(1, &g, &updates())
            .unwrap();
        assert_eq!(t.params.unwrap().data(), &[0.5, 0.5]);
        assert_eq!(t.metrics["trimmed_per_side"], 1.0);
        // beta too small to trim anything with 4 updates: the plain mean.
        let t = FedTrimmedAvg::new(0.2)
            .unwrap()
            .aggregate_fit(1, &g, &updates())
            .unwrap();
        assert_eq!(t.params.unwrap().data(), &[25.25, 25.25]);
        assert!(FedTrimmedAvg::new(0.5).is_err());
    }

    #[test]
    fn krum_rejects_the_outlier() {
        // f = 1, n = 4: one nearest neighbour. Scores: a 1, b 1, c 1, outlier 19801.
        let g = params(&[0.0, 0.0]);
        let mut k = Krum::new(1, 1).unwrap();
        let out = k.aggregate_fit(1, &g, &updates()).unwrap();
        assert_eq!(out.params.unwrap().data(), &[0.0, 0.0]);
        assert_eq!(out.metrics["krum_rejected"], 3.0);
        let ups = updates();
        let inputs: Vec<&[f32]> = ups.iter().map(|r| r.params.data()).collect();
        let d = kernels::pairwise_sq_distances(&inputs).unwrap();
        let (sel, scores) = k.select(&d, 4);
        assert_eq!(sel, vec![0]);
        assert_eq!(scores, vec![1.0, 1.0, 1.0, 19801.0]);

        let mut mk = Krum::new(1, 3).unwrap();
        assert_eq!(mk.name(), "multikrum");
        let out = mk.aggregate_fit(1, &g, &updates()).unwrap();
        let want = 1.0f32 / 3.0;
        assert!(close(out.params.unwrap().data(), &[want, want], 1e-7));
        assert_eq!(out.metrics["krum_selected"], 3.0);
        assert!(Krum::new(1, 0).is_err());
    }

    #[test]
    fn krum_with_few_updates_still_answers() {
        let g = params(&[0.0, 0.0]);
        let one = [res(&[5.0, 6.0], 1)];
        let out = Krum::new(2, 1).unwrap().aggregate_fit(1, &g, &one).unwrap();
        assert_eq!(out.params.unwrap().data(), &[5.0, 6.0]);
        let two = [res(&[5.0, 6.0], 1), res(&[1.0, 1.0], 1)];
        let out = Krum::new(2, 5).unwrap().aggregate_fit(1, &g, &two).unwrap();
        assert_eq!(out.params.unwrap().data(), &[3.0, 3.5]);
    }
}
