//! Shapley values of a model's outputs over groups of input features
//! (issue 14): exact enumeration for a few groups, KernelSHAP (Lundberg and
//! Lee 2017) for more.
//!
//! The explained function is any batch predictor `f(rows) -> outputs`
//! ([`Predictor`]): a tch model wrapped by the caller, or a plain closure in
//! tests. A *group* is a set of input columns that enter or leave a
//! coalition together (the one-hot columns of a crime type, the lags of one
//! sequence step), so values are reported per source column, not per
//! one-hot bit.
//!
//! The value of a coalition `S` for an instance `x` is the interventional
//! expectation over a background sample `B`: `v(S) = mean_b f(x_S, b_rest)`,
//! what the `shap` package's KernelExplainer computes. The base value is
//! `v({})`, the mean prediction over the background, and the values add up:
//! `base + sum_i phi_i = f(x)` (exactly for [`exact`]; KernelSHAP enforces it
//! as a constraint of its regression).

mod model;

pub use model::*;

use crate::train::TrainError;

/// A batch predictor: `rows` inputs of `dim` values each, row-major, in;
/// `rows x outputs` values out (class probabilities or logits, expected
/// counts, ...).
pub type Predictor<'a> = dyn FnMut(&[f32], usize) -> Result<Vec<f64>, TrainError> + 'a;

/// What an explainer needs besides the function.
#[derive(Clone, Debug)]
pub struct Problem<'a> {
    /// Input width.
    pub dim: usize,
    /// Outputs per row.
    pub outputs: usize,
    /// The feature groups: each a non-empty set of column indices; every
    /// column in at most one group (columns in none stay at the instance's
    /// values).
    pub groups: &'a [Vec<usize>],
    /// Background rows (row-major, `dim` each).
    pub background: &'a [f32],
    /// One weight per background row (k-means centroids weigh their
    /// cluster's size); `None`: every row the same.
    pub weights: Option<&'a [f64]>,
}

/// The Shapley values of one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// `values[g][o]`: group `g`'s contribution to output `o`.
    pub values: Vec<Vec<f64>>,
    /// The mean output over the background, per output.
    pub base: Vec<f64>,
    /// The model's output for the instance, per output.
    pub output: Vec<f64>,
}

impl Explanation {
    /// The largest `|base + sum of values - output|` over the outputs: 0 up
    /// to rounding when the values are exact.
    pub fn additivity_error(&self) -> f64 {
        (0..self.output.len())
            .map(|o| {
                let sum: f64 = self.values.iter().map(|v| v[o]).sum();
                (self.base[o] + sum - self.output[o]).abs()
            })
            .fold(0.0, f64::max)
    }
}

fn config_error(field: &'static str, reason: String) -> TrainError {
    TrainError::Config { field, reason }
}

impl Problem<'_> {
    fn check(&self, x: &[f32]) -> Result<usize, TrainError> {
        if self.dim == 0 || self.outputs == 0 {
            return Err(config_error(
                "dim",
                "inputs and outputs must be non-empty".into(),
            ));
        }
        if x.len() != self.dim {
            return Err(TrainError::Length {
                what: "explained instance's features",
                expected: self.dim,
                got: x.len(),
            });
        }
        if self.background.is_empty() || !self.background.len().is_multiple_of(self.dim) {
            return Err(TrainError::Length {
                what: "background values (a whole number of rows, at least one)",
                expected: self.dim,
                got: self.background.len(),
            });
        }
        if let Some(w) = self.weights {
            let rows = self.background.len() / self.dim;
            if w.len() != rows
                || w.iter().any(|v| !(v.is_finite() && *v >= 0.0))
                || w.iter().sum::<f64>() <= 0.0
            {
                return Err(config_error(
                    "background",
                    format!("{} weights for {rows} background rows: one finite, non-negative weight per row, not all zero", w.len()),
                ));
            }
        }
        let mut seen = vec![false; self.dim];
        for (g, cols) in self.groups.iter().enumerate() {
            if cols.is_empty() {
                return Err(config_error("groups", format!("group {g} is empty")));
            }
            for &c in cols {
                if c >= self.dim || seen[c] {
                    return Err(config_error(
                        "groups",
                        format!("column {c} of group {g} is out of range or in two groups"),
                    ));
                }
                seen[c] = true;
            }
        }
        Ok(self.background.len() / self.dim)
    }

    /// `v(S)` for each coalition (a bit per group) in `masks`, averaged
    /// over the background, in one predictor call: `[mask][output]`.
    fn values(
        &self,
        f: &mut Predictor<'_>,
        x: &[f32],
        masks: &[Vec<bool>],
    ) -> Result<Vec<Vec<f64>>, TrainError> {
        let nb = self.background.len() / self.dim;
        let rows = masks.len() * nb;
        let mut input = Vec::with_capacity(rows * self.dim);
        let mut from_x = vec![false; self.dim];
        for mask in masks {
            // Columns outside every group keep the instance's values.
            from_x.fill(true);
            for (cols, &on) in self.groups.iter().zip(mask) {
                for &c in cols {
                    from_x[c] = on;
                }
            }
            for b in self.background.chunks(self.dim) {
                input.extend(
                    b.iter()
                        .zip(x)
                        .zip(&from_x)
                        .map(|((&b, &x), &take)| if take { x } else { b }),
                );
            }
        }
        let out = f(&input, rows)?;
        if out.len() != rows * self.outputs {
            return Err(TrainError::Length {
                what: "predictor outputs (rows x outputs)",
                expected: rows * self.outputs,
                got: out.len(),
            });
        }
        let uniform = vec![1.0; nb];
        let w = self.weights.unwrap_or(&uniform);
        let total: f64 = w.iter().sum();
        Ok(out
            .chunks(nb * self.outputs)
            .map(|block| {
                let mut v = vec![0.0; self.outputs];
                for (row, wr) in block.chunks(self.outputs).zip(w) {
                    for (acc, y) in v.iter_mut().zip(row) {
                        *acc += wr * y;
                    }
                }
                v.iter_mut().for_each(|a| *a /= total);
                v
            })
            .collect())
    }

    /// The model's output for `x` itself.
    fn output(&self, f: &mut Predictor<'_>, x: &[f32]) -> Result<Vec<f64>, TrainError> {
        let out = f(x, 1)?;
        if out.len() != self.outputs {
            return Err(TrainError::Length {
                what: "predictor outputs (rows x outputs)",
                expected: self.outputs,
                got: out.len(),
            });
        }
        Ok(out)
    }
}

/// The most groups [`exact`] enumerates (`2^M` coalitions, each evaluated
/// on the whole background).
pub const EXACT_MAX_GROUPS: usize = 16;

fn mask_of(bits: usize, m: usize) -> Vec<bool> {
    (0..m).map(|i| bits >> i & 1 == 1).collect()
}

/// Exact Shapley values by enumerating all `2^M` coalitions of the `M`
/// groups (at most [`EXACT_MAX_GROUPS`]).
pub fn exact(p: &Problem<'_>, f: &mut Predictor<'_>, x: &[f32]) -> Result<Explanation, TrainError> {
    p.check(x)?;
    let m = p.groups.len();
    if m > EXACT_MAX_GROUPS {
        return Err(config_error(
            "groups",
            format!(
                "{m} groups are too many to enumerate (at most {EXACT_MAX_GROUPS}): use KernelSHAP"
            ),
        ));
    }
    let masks: Vec<Vec<bool>> = (0..1usize << m).map(|b| mask_of(b, m)).collect();
    let v = p.values(f, x, &masks)?;
    // Shapley weight of a coalition of size s not containing i: s! (m-s-1)! / m!.
    let mut fact = vec![1.0f64; m + 1];
    for k in 1..=m {
        fact[k] = fact[k - 1] * k as f64;
    }
    let mut values = vec![vec![0.0; p.outputs]; m];
    for s in 0..1usize << m {
        let size = s.count_ones() as usize;
        for (i, phi) in values.iter_mut().enumerate() {
            if s >> i & 1 == 1 {
                continue;
            }
            let w = fact[size] * fact[m - size - 1] / fact[m];
            let with = s | 1 << i;
            for (o, slot) in phi.iter_mut().enumerate() {
                *slot += w * (v[with][o] - v[s][o]);
            }
        }
    }
    Ok(Explanation {
        values,
        base: v[0].clone(),
        output: p.output(f, x)?,
    })
}

/// Solves `a x = b` (`n x n`, row-major) by Gaussian elimination with
/// partial pivoting; `None` when `a` is singular.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&r, &q| a[r * n + col].abs().total_cmp(&a[q * n + col].abs()))?;
        if a[pivot * n + col].abs() < 1e-12 {
            return None;
        }
        if pivot != col {
            for k in 0..n {
                a.swap(pivot * n + k, col * n + k);
            }
            b.swap(pivot, col);
        }
        for r in col + 1..n {
            let f = a[r * n + col] / a[col * n + col];
            for k in col..n {
                a[r * n + k] -= f * a[col * n + k];
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r * n + k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r * n + r];
    }
    Some(x)
}

/// KernelSHAP (Lundberg and Lee 2017): Shapley values from `samples`
/// coalitions weighted by the Shapley kernel, by weighted least squares with
/// the values constrained to add up to `output - base`. When `samples`
/// covers every coalition (`2^M - 2`) they are all used and the result is
/// the exact Shapley values; otherwise coalition sizes are drawn in
/// proportion to the kernel's total weight per size, coalitions of a size
/// uniformly, each with its complement (paired sampling), seeded by `seed`.
pub fn kernel(
    p: &Problem<'_>,
    f: &mut Predictor<'_>,
    x: &[f32],
    samples: usize,
    seed: u64,
) -> Result<Explanation, TrainError> {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    p.check(x)?;
    let m = p.groups.len();
    let output = p.output(f, x)?;
    let base = p.values(f, x, &[vec![false; m]])?.remove(0);
    if m <= 1 {
        // One group takes the whole difference; none has no values.
        let values = (0..m)
            .map(|_| output.iter().zip(&base).map(|(o, b)| o - b).collect())
            .collect();
        return Ok(Explanation {
            values,
            base,
            output,
        });
    }
    let binom = |n: usize, k: usize| -> f64 {
        (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
    };
    // Kernel weight of one coalition of size s (0 < s < m).
    let weight = |s: usize| (m - 1) as f64 / (binom(m, s) * (s * (m - s)) as f64);
    let all = m < 63 && (1u64 << m) - 2 <= samples as u64;
    let mut masks: Vec<Vec<bool>> = Vec::new();
    let mut weights: Vec<f64> = Vec::new();
    if all {
        for bits in 1..(1usize << m) - 1 {
            let mask = mask_of(bits, m);
            weights.push(weight(mask.iter().filter(|&&b| b).count()));
            masks.push(mask);
        }
    } else {
        if samples < 2 {
            return Err(config_error(
                "samples",
                "KernelSHAP needs at least 2 coalitions".into(),
            ));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        // Total kernel weight of each size: (m - 1) / (s (m - s)).
        let size_w: Vec<f64> = (1..m)
            .map(|s| (m - 1) as f64 / (s * (m - s)) as f64)
            .collect();
        let total: f64 = size_w.iter().sum();
        let mut order: Vec<usize> = (0..m).collect();
        for _ in 0..samples / 2 {
            let mut r = rng.random::<f64>() * total;
            let mut size = m - 1;
            for (k, w) in size_w.iter().enumerate() {
                if r < *w {
                    size = k + 1;
                    break;
                }
                r -= w;
            }
            order.shuffle(&mut rng);
            let mut mask = vec![false; m];
            for &i in &order[..size] {
                mask[i] = true;
            }
            let complement: Vec<bool> = mask.iter().map(|b| !b).collect();
            // Drawn in proportion to their weight: each counts the same.
            masks.push(mask);
            masks.push(complement);
            weights.extend([1.0, 1.0]);
        }
    }
    let v = p.values(f, x, &masks)?;
    // Eliminate the last group through the constraint:
    // phi_last = delta - sum_{i < last} phi_i.
    let n = m - 1;
    let mut values = vec![vec![0.0; p.outputs]; m];
    for o in 0..p.outputs {
        let delta = output[o] - base[o];
        let mut ata = vec![0.0; n * n];
        let mut aty = vec![0.0; n];
        for ((mask, vk), w) in masks.iter().zip(&v).zip(&weights) {
            let z_last = f64::from(u8::from(mask[n]));
            let y = vk[o] - base[o] - z_last * delta;
            let a: Vec<f64> = (0..n)
                .map(|i| f64::from(u8::from(mask[i])) - z_last)
                .collect();
            for i in 0..n {
                aty[i] += w * a[i] * y;
                for j in 0..n {
                    ata[i * n + j] += w * a[i] * a[j];
                }
            }
        }
        let phi = solve(ata, aty, n).ok_or_else(|| {
            config_error(
                "samples",
                format!("{samples} coalitions do not determine {m} groups' values: take more"),
            )
        })?;
        let rest: f64 = phi.iter().sum();
        for (i, value) in phi.into_iter().enumerate() {
            values[i][o] = value;
        }
        values[n][o] = delta - rest;
    }
    Ok(Explanation {
        values,
        base,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `y_o = sum_j w[o][j] x_j + c_o`.
    fn linear(
        w: Vec<Vec<f64>>,
        c: Vec<f64>,
    ) -> impl FnMut(&[f32], usize) -> Result<Vec<f64>, TrainError> {
        move |x: &[f32], rows: usize| {
            let dim = x.len() / rows;
            Ok(x.chunks(dim)
                .flat_map(|r| {
                    w.iter()
                        .zip(&c)
                        .map(|(wo, co)| {
                            co + wo
                                .iter()
                                .zip(r)
                                .map(|(a, b)| a * f64::from(*b))
                                .sum::<f64>()
                        })
                        .collect::<Vec<_>>()
                })
                .collect())
        }
    }

    fn singletons(n: usize) -> Vec<Vec<usize>> {
        (0..n).map(|i| vec![i]).collect()
    }

    #[test]
    fn a_linear_models_values_are_weights_times_distance_from_the_background_mean() {
        let w = vec![vec![2.0, -1.0, 0.5, 0.0], vec![1.0, 1.0, 1.0, 1.0]];
        let mut f = linear(w.clone(), vec![0.3, -2.0]);
        let background = [0.0, 1.0, 2.0, 3.0, 2.0, 3.0, -2.0, 1.0, 1.0, 2.0, 0.0, 5.0];
        let groups = singletons(4);
        let p = Problem {
            dim: 4,
            outputs: 2,
            groups: &groups,
            background: &background,
            weights: None,
        };
        let x = [1.5f32, -1.0, 4.0, 7.0];
        let e = exact(&p, &mut f, &x).unwrap();
        for j in 0..4 {
            let mean = (0..3)
                .map(|r| f64::from(background[r * 4 + j]))
                .sum::<f64>()
                / 3.0;
            for (o, wo) in w.iter().enumerate() {
                let want = wo[j] * (f64::from(x[j]) - mean);
                assert!((e.values[j][o] - want).abs() < 1e-9, "{j} {o}");
            }
        }
        // Feature 3 is ignored by output 0: exactly zero there.
        assert_eq!(e.values[3][0], 0.0);
        assert!(e.additivity_error() < 1e-9);
    }

    #[test]
    fn interactions_are_shared_and_values_add_up() {
        // y = x0 * x1 + x2^2: not additive, the product's credit is shared.
        let mut f = |x: &[f32], rows: usize| -> Result<Vec<f64>, TrainError> {
            let dim = x.len() / rows;
            Ok(x.chunks(dim)
                .map(|r| f64::from(r[0] * r[1]) + f64::from(r[2]).powi(2))
                .collect())
        };
        let groups = singletons(3);
        let background = [0.0, 0.0, 0.0];
        let p = Problem {
            dim: 3,
            outputs: 1,
            groups: &groups,
            background: &background,
            weights: None,
        };
        let e = exact(&p, &mut f, &[2.0, 3.0, 1.0]).unwrap();
        // With a zero baseline x0 and x1 split the product 6 equally.
        assert!((e.values[0][0] - 3.0).abs() < 1e-9);
        assert!((e.values[1][0] - 3.0).abs() < 1e-9);
        assert!((e.values[2][0] - 1.0).abs() < 1e-9);
        assert!(e.additivity_error() < 1e-9);
    }

    #[test]
    fn groups_move_their_columns_together_and_permute_with_them() {
        let w = vec![vec![1.0, 2.0, 3.0, 4.0]];
        let background = [1.0, 1.0, 1.0, 1.0, 3.0, -1.0, 0.0, 2.0];
        let x = [0.0f32, 2.0, 5.0, -1.0];
        let a = vec![vec![0, 1], vec![2], vec![3]];
        let b = vec![vec![3], vec![0, 1], vec![2]];
        let run = |groups: &[Vec<usize>]| {
            let p = Problem {
                dim: 4,
                outputs: 1,
                groups,
                background: &background,
                weights: None,
            };
            exact(&p, &mut linear(w.clone(), vec![0.0]), &x).unwrap()
        };
        let (ea, eb) = (run(&a), run(&b));
        // Group {0, 1} gets w0 (x0 - m0) + w1 (x1 - m1) = (0 - 2) + 2 (2 - 0) = 2.
        assert!((ea.values[0][0] - 2.0).abs() < 1e-9);
        for (i, j) in [(0, 1), (1, 2), (2, 0)] {
            assert!((ea.values[i][0] - eb.values[j][0]).abs() < 1e-12);
        }
    }

    #[test]
    fn kernel_shap_with_every_coalition_is_exact() {
        let mut f = |x: &[f32], rows: usize| -> Result<Vec<f64>, TrainError> {
            let dim = x.len() / rows;
            Ok(x.chunks(dim)
                .flat_map(|r| {
                    let a = f64::from(r[0] * r[1]) + f64::from(r[2]).sin() - f64::from(r[3]);
                    [a, 2.0 * a + f64::from(r[4])]
                })
                .collect())
        };
        let groups = singletons(5);
        let background = [0.5, -1.0, 0.2, 0.0, 1.0, 1.5, 2.0, -0.3, 1.0, 0.0];
        let p = Problem {
            dim: 5,
            outputs: 2,
            groups: &groups,
            background: &background,
            weights: None,
        };
        let x = [1.0f32, 2.0, 0.7, -1.0, 3.0];
        let ex = exact(&p, &mut f, &x).unwrap();
        let k = kernel(&p, &mut f, &x, 30, 1).unwrap();
        for (a, b) in ex.values.iter().flatten().zip(k.values.iter().flatten()) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        assert!(k.additivity_error() < 1e-9);
    }

    #[test]
    fn sampled_kernel_shap_approaches_the_exact_values() {
        let w: Vec<f64> = (0..10).map(|i| f64::from(i) - 4.5).collect();
        let mut f = linear(vec![w.clone()], vec![1.0]);
        let groups = singletons(10);
        let background: Vec<f32> = (0..30).map(|i| (i % 7) as f32 * 0.5).collect();
        let p = Problem {
            dim: 10,
            outputs: 1,
            groups: &groups,
            background: &background,
            weights: None,
        };
        let x: Vec<f32> = (0..10).map(|i| i as f32 * 0.3 - 1.0).collect();
        let ex = exact(&p, &mut f, &x).unwrap();
        // 200 of the 1,022 coalitions; a linear model is recovered exactly
        // by any set that determines the regression.
        let k = kernel(&p, &mut f, &x, 200, 7).unwrap();
        for (a, b) in ex.values.iter().zip(&k.values) {
            assert!((a[0] - b[0]).abs() < 1e-6, "{} vs {}", a[0], b[0]);
        }
        assert!(k.additivity_error() < 1e-9);
        let again = kernel(&p, &mut f, &x, 200, 7).unwrap();
        assert_eq!(k, again, "seeded");
    }

    #[test]
    fn bad_problems_are_errors_not_panics() {
        let groups = vec![vec![0], vec![0]];
        let bg = [0.0, 0.0];
        let p = Problem {
            dim: 2,
            outputs: 1,
            groups: &groups,
            background: &bg,
            weights: None,
        };
        let mut f = linear(vec![vec![1.0, 1.0]], vec![0.0]);
        assert!(exact(&p, &mut f, &[1.0, 1.0])
            .unwrap_err()
            .to_string()
            .contains("two groups"));
        let ok = singletons(2);
        let p = Problem { groups: &ok, ..p };
        assert!(exact(&p, &mut f, &[1.0])
            .unwrap_err()
            .to_string()
            .contains("instance"));
        let half = [0.0];
        let p = Problem {
            background: &half,
            ..p
        };
        assert!(exact(&p, &mut f, &[1.0, 1.0]).is_err());
        let many = singletons(17);
        let bg17 = [0.0; 17];
        let p = Problem {
            dim: 17,
            groups: &many,
            background: &bg17,
            outputs: 1,
            weights: None,
        };
        let mut g = linear(vec![vec![1.0; 17]], vec![0.0]);
        assert!(exact(&p, &mut g, &[0.0; 17])
            .unwrap_err()
            .to_string()
            .contains("KernelSHAP"));
    }
}
