//! The aggregation loops: weighted mean, coordinate-wise median and trimmed
//! mean, pairwise distances, finiteness and norms over flat `f32` slices.
//!
//! Every kernel splits the coordinates into fixed chunks and runs the chunks
//! in parallel with rayon; inside a chunk the loops walk contiguous slices
//! with independent lanes so LLVM vectorizes them. Scratch memory is one
//! buffer per worker (`for_each_init`), never one per element.
//!
//! Precision: the weighted mean accumulates in `f64` (one chunk-sized
//! scratch per worker, L2-resident), so the result is the correctly rounded
//! `f32` of a sum whose error does not grow with the number of updates; the
//! loop stays memory-bound, so the wider type costs little (see
//! [`crate::bench`]). Squared distances add `f32` lanes over blocks of
//! `LANE_BLOCK` elements and carry the block sums in `f64`, which bounds
//! the relative error by about `LANE_BLOCK / 8 * f32::EPSILON`.

use rayon::prelude::*;

/// Coordinates per parallel task for streaming kernels (mean): 16 Ki values,
/// 64 KiB per input.
pub(crate) const CHUNK: usize = 1 << 14;

/// Coordinates per `f64` accumulator block of the weighted mean (16 KiB, L1).
const MEAN_BLOCK: usize = 1 << 11;

/// Coordinates per parallel task for kernels that revisit every input
/// (distances, median): small enough that all inputs' chunks stay in L2.
pub(crate) const SMALL_CHUNK: usize = 1 << 11;

/// Elements summed in `f32` lanes before the partial sums move to `f64`.
pub(crate) const LANE_BLOCK: usize = 1 << 10;

const LANES: usize = 8;

/// The inputs do not have the output's length, or there are none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// No inputs were given.
    #[error("no inputs")]
    Empty,
    /// An input's length differs from the output's.
    #[error("input {index} has {got} values, expected {expected}")]
    Length {
        /// Which input.
        index: usize,
        /// Its length.
        got: usize,
        /// The output's length.
        expected: usize,
    },
    /// There is not one weight per input, or the weights do not sum to a positive number.
    #[error("weights: {0}")]
    Weights(String),
}

fn check_inputs(inputs: &[&[f32]], len: usize) -> Result<(), KernelError> {
    if inputs.is_empty() {
        return Err(KernelError::Empty);
    }
    match inputs.iter().position(|x| x.len() != len) {
        Some(index) => Err(KernelError::Length {
            index,
            got: inputs[index].len(),
            expected: len,
        }),
        None => Ok(()),
    }
}

/// `out = Σ_k w_k x_k / Σ_k w_k`, accumulated in `f64`.
pub(crate) fn weighted_mean(
    inputs: &[&[f32]],
    weights: &[f64],
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_inputs(inputs, out.len())?;
    if weights.len() != inputs.len() {
        return Err(KernelError::Weights(format!(
            "{} weights for {} inputs",
            weights.len(),
            inputs.len()
        )));
    }
    let total: f64 = weights.iter().sum();
    if !(total.is_finite() && total > 0.0) || weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(KernelError::Weights(format!(
            "weights must be finite, non-negative and sum to a positive number, got {weights:?}"
        )));
    }
    let scale: Vec<f64> = weights.iter().map(|w| w / total).collect();
    out.par_chunks_mut(CHUNK).enumerate().for_each_init(
        || vec![0f64; MEAN_BLOCK],
        |acc, (c, out)| {
            for (b, out) in out.chunks_mut(MEAN_BLOCK).enumerate() {
                let start = c * CHUNK + b * MEAN_BLOCK;
                let range = start..start + out.len();
                let acc = &mut acc[..out.len()];
                acc.fill(0.0);
                // Four inputs per pass over the accumulator: a quarter of the
                // accumulator traffic of one pass per input.
                for (xs, ws) in inputs.chunks(4).zip(scale.chunks(4)) {
                    match (xs, ws) {
                        ([x0, x1, x2, x3], [w0, w1, w2, w3]) => {
                            let it = acc
                                .iter_mut()
                                .zip(&x0[range.clone()])
                                .zip(&x1[range.clone()])
                                .zip(&x2[range.clone()])
                                .zip(&x3[range.clone()]);
                            for ((((a, &p), &q), &r), &s) in it {
                                *a += w0 * f64::from(p)
                                    + w1 * f64::from(q)
                                    + w2 * f64::from(r)
                                    + w3 * f64::from(s);
                            }
                        }
                        ([x0, x1, x2], [w0, w1, w2]) => {
                            let it = acc
                                .iter_mut()
                                .zip(&x0[range.clone()])
                                .zip(&x1[range.clone()])
                                .zip(&x2[range.clone()]);
                            for (((a, &p), &q), &r) in it {
                                *a += w0 * f64::from(p) + w1 * f64::from(q) + w2 * f64::from(r);
                            }
                        }
                        ([x0, x1], [w0, w1]) => {
                            let it = acc
                                .iter_mut()
                                .zip(&x0[range.clone()])
                                .zip(&x1[range.clone()]);
                            for ((a, &p), &q) in it {
                                *a += w0 * f64::from(p) + w1 * f64::from(q);
                            }
                        }
                        _ => {
                            for (x, &w) in xs.iter().zip(ws) {
                                for (a, &p) in acc.iter_mut().zip(&x[range.clone()]) {
                                    *a += w * f64::from(p);
                                }
                            }
                        }
                    }
                }
                for (o, &a) in out.iter_mut().zip(acc.iter()) {
                    *o = a as f32;
                }
            }
        },
    );
    Ok(())
}

/// A running example-weighted sum of updates, `Σ_k n_k x_k` in `f64`: the
/// FedAvg family's aggregate built as updates arrive, so the server holds one
/// `f64` buffer instead of every update until the round closes.
#[derive(Debug, Default)]
pub struct WeightedSum {
    acc: Vec<f64>,
    total: f64,
    count: usize,
}

impl WeightedSum {
    /// Adds `weight * x`; the first input fixes the length.
    pub fn add(&mut self, x: &[f32], weight: f64) -> Result<(), KernelError> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(KernelError::Weights(format!(
                "weight must be finite and non-negative, got {weight}"
            )));
        }
        if self.count == 0 {
            self.acc.clear();
            self.acc.resize(x.len(), 0.0);
        } else if x.len() != self.acc.len() {
            return Err(KernelError::Length {
                index: self.count,
                got: x.len(),
                expected: self.acc.len(),
            });
        }
        self.acc
            .par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(a, x)| {
                for (a, &v) in a.iter_mut().zip(x) {
                    *a += weight * f64::from(v);
                }
            });
        self.total += weight;
        self.count += 1;
        Ok(())
    }

    /// Inputs added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Forgets every input (keeps the buffer for the next round).
    pub fn clear(&mut self) {
        self.count = 0;
        self.total = 0.0;
    }

    /// Writes `Σ_k w_k x_k / Σ_k w_k` into `out`.
    pub fn mean_into(&self, out: &mut [f32]) -> Result<(), KernelError> {
        if self.count == 0 {
            return Err(KernelError::Empty);
        }
        if out.len() != self.acc.len() {
            return Err(KernelError::Length {
                index: 0,
                got: self.acc.len(),
                expected: out.len(),
            });
        }
        if !(self.total.is_finite() && self.total > 0.0) {
            return Err(KernelError::Weights(format!(
                "weights sum to {}, not a positive number",
                self.total
            )));
        }
        let total = self.total;
        out.par_chunks_mut(CHUNK)
            .zip(self.acc.par_chunks(CHUNK))
            .for_each(|(o, a)| {
                for (o, &a) in o.iter_mut().zip(a) {
                    *o = (a / total) as f32;
                }
            });
        Ok(())
    }
}

/// `out_j = Σ_k w_k x_kj / Σ_k w_k` over the inputs `k` whose value at `j`
/// differs from `global_j`; `global_j` where none does. A coordinate only
/// some stations can move (the weights of a one-hot input that is zero at
/// the others, which get no gradient there) is averaged over the stations
/// that moved it instead of being pulled back by the others' unchanged
/// copies. Accumulated in `f64`.
pub(crate) fn weighted_mean_of_changed(
    inputs: &[&[f32]],
    weights: &[f64],
    global: &[f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_inputs(inputs, out.len())?;
    check_inputs(&[global], out.len())?;
    if weights.len() != inputs.len()
        || weights.iter().any(|w| !w.is_finite() || *w < 0.0)
        || weights.iter().sum::<f64>() <= 0.0
    {
        return Err(KernelError::Weights(format!(
            "one finite, non-negative weight per input with a positive sum, got {weights:?}"
        )));
    }
    out.par_chunks_mut(CHUNK).enumerate().for_each_init(
        || (vec![0f64; CHUNK], vec![0f64; CHUNK]),
        |(num, den), (c, out)| {
            let range = c * CHUNK..c * CHUNK + out.len();
            let (num, den) = (&mut num[..out.len()], &mut den[..out.len()]);
            num.fill(0.0);
            den.fill(0.0);
            let g = &global[range.clone()];
            for (x, &w) in inputs.iter().zip(weights) {
                for (((n, d), &p), &q) in num
                    .iter_mut()
                    .zip(den.iter_mut())
                    .zip(&x[range.clone()])
                    .zip(g)
                {
                    let moved = f64::from(u8::from(p != q));
                    *n += moved * w * f64::from(p);
                    *d += moved * w;
                }
            }
            for (((o, &n), &d), &q) in out.iter_mut().zip(num.iter()).zip(den.iter()).zip(g) {
                *o = if d > 0.0 { (n / d) as f32 } else { q };
            }
        },
    );
    Ok(())
}

/// The comparators `(i, j)`, `i < j`, of Batcher's odd-even merge sort for
/// `n` values: applying "put the smaller at `i`" for each in order sorts any
/// input. Built for the next power of two; comparators that touch a position
/// `>= n` are dropped, which is exact because padding with `+inf` would never
/// move.
pub(crate) fn sorting_network(n: usize) -> Vec<(usize, usize)> {
    let size = n.next_power_of_two();
    let mut out = Vec::new();
    let mut p = 1;
    while p < size {
        let mut k = p;
        while k >= 1 {
            let mut j = k % p;
            while j + k < size {
                for i in 0..k.min(size - j - k) {
                    if (i + j) / (2 * p) == (i + j + k) / (2 * p) && i + j + k < n {
                        out.push((i + j, i + j + k));
                    }
                }
                j += 2 * k;
            }
            k /= 2;
        }
        p *= 2;
    }
    out
}

/// Drops the comparators that cannot influence the positions in `wanted`
/// (a backward liveness pass), leaving a selection network.
fn prune_network(
    network: &[(usize, usize)],
    n: usize,
    wanted: std::ops::Range<usize>,
) -> Vec<(usize, usize)> {
    let mut live = vec![false; n];
    for i in wanted {
        if let Some(l) = live.get_mut(i) {
            *l = true;
        }
    }
    let mut kept: Vec<(usize, usize)> = network
        .iter()
        .rev()
        .filter(|&&(a, b)| {
            let needed = live[a] || live[b];
            if needed {
                live[a] = true;
                live[b] = true;
            }
            needed
        })
        .copied()
        .collect();
    kept.reverse();
    kept
}

/// Sorts the first `n` columns of a tile of rows (`width` values each) row-wise:
/// afterwards each column is ascending. Every comparator is one vectorized
/// min/max pass over two rows.
fn sort_columns(tile: &mut [f32], width: usize, n: usize, network: &[(usize, usize)]) {
    for &(a, b) in network {
        let (lo, hi) = tile.split_at_mut(b * width);
        let ra = &mut lo[a * width..a * width + n];
        let rb = &mut hi[..n];
        for (x, y) in ra.iter_mut().zip(rb.iter_mut()) {
            let (p, q) = (*x, *y);
            *x = if q < p { q } else { p };
            *y = if p > q { p } else { q };
        }
    }
}

/// Coordinates per sorting tile: each input contributes one row of this
/// many values, so a tile of 32 inputs stays within 32 KiB (L1).
const SORT_BLOCK: usize = 256;

/// Runs `f(tile, n, acc, out_block)` for blocks of up to [`SORT_BLOCK`]
/// coordinates, where row `r` of `tile` holds, per coordinate, the `r`-th
/// smallest of the inputs' values (at least for the rows the network keeps).
fn per_sorted_block<F>(inputs: &[&[f32]], out: &mut [f32], network: &[(usize, usize)], f: F)
where
    F: Fn(&[f32], usize, &mut [f64], &mut [f32]) + Sync,
{
    let k = inputs.len();
    out.par_chunks_mut(SMALL_CHUNK).enumerate().for_each_init(
        || (vec![0f32; k * SORT_BLOCK], vec![0f64; SORT_BLOCK]),
        |(tile, acc), (c, out)| {
            for (b, out) in out.chunks_mut(SORT_BLOCK).enumerate() {
                let start = c * SMALL_CHUNK + b * SORT_BLOCK;
                let n = out.len();
                for (row, x) in tile.chunks_exact_mut(SORT_BLOCK).zip(inputs) {
                    row[..n].copy_from_slice(&x[start..start + n]);
                }
                sort_columns(tile, SORT_BLOCK, n, network);
                f(tile, n, acc, out);
            }
        },
    );
}

/// Coordinate-wise median; for an even number of inputs, the mean of the two
/// middle values (computed in `f64`, so it cannot overflow). Inputs must be
/// finite (validated updates are).
pub fn median(inputs: &[&[f32]], out: &mut [f32]) -> Result<(), KernelError> {
    check_inputs(inputs, out.len())?;
    let k = inputs.len();
    let mid = k / 2;
    let wanted = if k % 2 == 1 {
        mid..mid + 1
    } else {
        mid - 1..mid + 1
    };
    let network = prune_network(&sorting_network(k), k, wanted);
    per_sorted_block(inputs, out, &network, |tile, n, _, out| {
        let hi = &tile[mid * SORT_BLOCK..mid * SORT_BLOCK + n];
        if k % 2 == 1 {
            out.copy_from_slice(hi);
        } else {
            let lo = &tile[(mid - 1) * SORT_BLOCK..(mid - 1) * SORT_BLOCK + n];
            for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                *o = ((f64::from(l) + f64::from(h)) * 0.5) as f32;
            }
        }
    });
    Ok(())
}

/// Coordinate-wise mean after dropping the `trim` smallest and `trim`
/// largest values (`2 * trim < inputs.len()`), summed in `f64`. Inputs must
/// be finite.
pub(crate) fn trimmed_mean(
    inputs: &[&[f32]],
    trim: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_inputs(inputs, out.len())?;
    let k = inputs.len();
    if 2 * trim >= k {
        return Err(KernelError::Weights(format!(
            "cannot trim {trim} per side from {k} inputs"
        )));
    }
    let keep = k - 2 * trim;
    let network = if trim == 0 {
        Vec::new()
    } else {
        prune_network(&sorting_network(k), k, trim..k - trim)
    };
    let inv = 1.0 / keep as f64;
    per_sorted_block(inputs, out, &network, |tile, n, acc, out| {
        let acc = &mut acc[..n];
        acc.fill(0.0);
        for row in tile.chunks_exact(SORT_BLOCK).skip(trim).take(keep) {
            for (a, &v) in acc.iter_mut().zip(&row[..n]) {
                *a += f64::from(v);
            }
        }
        for (o, &a) in out.iter_mut().zip(acc.iter()) {
            *o = (a * inv) as f32;
        }
    });
    Ok(())
}

/// `Σ (a_i - b_i)^2` in `f32` lanes per block, blocks summed in `f64`.
#[inline]
pub(crate) fn sq_distance(a: &[f32], b: &[f32]) -> f64 {
    let mut total = 0f64;
    for (ab, bb) in a.chunks(LANE_BLOCK).zip(b.chunks(LANE_BLOCK)) {
        let mut lanes = [0f32; LANES];
        let mut ac = ab.chunks_exact(LANES);
        let mut bc = bb.chunks_exact(LANES);
        for (x, y) in (&mut ac).zip(&mut bc) {
            for l in 0..LANES {
                let d = x[l] - y[l];
                lanes[l] += d * d;
            }
        }
        let mut block: f64 = lanes.iter().map(|&v| f64::from(v)).sum();
        for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
            let d = f64::from(*x) - f64::from(*y);
            block += d * d;
        }
        total += block;
    }
    total
}

/// `Σ a_i^2`, like `sq_distance` against zero.
#[inline]
pub fn sq_norm(a: &[f32]) -> f64 {
    let mut total = 0f64;
    for ab in a.chunks(LANE_BLOCK) {
        let mut lanes = [0f32; LANES];
        let mut ac = ab.chunks_exact(LANES);
        for x in &mut ac {
            for l in 0..LANES {
                lanes[l] += x[l] * x[l];
            }
        }
        let mut block: f64 = lanes.iter().map(|&v| f64::from(v)).sum();
        for x in ac.remainder() {
            block += f64::from(*x) * f64::from(*x);
        }
        total += block;
    }
    total
}

/// Squared Euclidean distance between two equally long vectors, in parallel.
pub(crate) fn par_sq_distance(a: &[f32], b: &[f32]) -> Result<f64, KernelError> {
    check_inputs(&[b], a.len())?;
    Ok(a.par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(x, y)| sq_distance(x, y))
        .sum())
}

/// Whether every value is finite; exact, vectorized bit test, in parallel.
pub(crate) fn all_finite(a: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    a.par_chunks(CHUNK).all(|chunk| {
        let mut bad = [0u32; LANES];
        let mut c = chunk.chunks_exact(LANES);
        for x in &mut c {
            for l in 0..LANES {
                bad[l] |= u32::from(x[l].to_bits() & EXP == EXP);
            }
        }
        bad.iter().all(|&b| b == 0) && c.remainder().iter().all(|v| v.is_finite())
    })
}

/// `[Σ (a_i - b0_i)^2, .., Σ (a_i - b3_i)^2]`: four distances from `a` in one
/// pass, so each value of `a` is loaded once for four pairs (16 SSE
/// registers hold the four 8-lane accumulators). All slices have `a`'s length.
fn sq_distances_x4(a: &[f32], b: [&[f32]; 4]) -> [f64; 4] {
    let mut total = [0f64; 4];
    let blocks = a
        .chunks(LANE_BLOCK)
        .zip(b[0].chunks(LANE_BLOCK))
        .zip(b[1].chunks(LANE_BLOCK))
        .zip(b[2].chunks(LANE_BLOCK))
        .zip(b[3].chunks(LANE_BLOCK));
    for ((((x, y0), y1), y2), y3) in blocks {
        let mut lanes = [[0f32; LANES]; 4];
        let rows = x
            .chunks_exact(LANES)
            .zip(y0.chunks_exact(LANES))
            .zip(y1.chunks_exact(LANES))
            .zip(y2.chunks_exact(LANES))
            .zip(y3.chunks_exact(LANES));
        for ((((x, p), q), r), s) in rows {
            for l in 0..LANES {
                let d0 = x[l] - p[l];
                let d1 = x[l] - q[l];
                let d2 = x[l] - r[l];
                let d3 = x[l] - s[l];
                lanes[0][l] += d0 * d0;
                lanes[1][l] += d1 * d1;
                lanes[2][l] += d2 * d2;
                lanes[3][l] += d3 * d3;
            }
        }
        let tail = x.len() / LANES * LANES;
        for (o, y) in [y0, y1, y2, y3].iter().enumerate() {
            let mut sum: f64 = lanes[o].iter().map(|&v| f64::from(v)).sum();
            for (p, q) in x[tail..].iter().zip(&y[tail..]) {
                let d = f64::from(*p) - f64::from(*q);
                sum += d * d;
            }
            total[o] += sum;
        }
    }
    total
}

/// All pairwise squared distances, as a row-major `k x k` matrix.
///
/// One pass over the inputs: each task takes a [`SMALL_CHUNK`] of
/// coordinates, whose slices from every input stay in cache while all pairs
/// are compared, four pairs per pass ([`sq_distances_x4`]); per-worker
/// `k x k` partial matrices are summed at the end.
pub(crate) fn pairwise_sq_distances(inputs: &[&[f32]]) -> Result<Vec<f64>, KernelError> {
    let len = inputs.first().map_or(0, |x| x.len());
    check_inputs(inputs, len)?;
    let k = inputs.len();
    let chunks = len.div_ceil(SMALL_CHUNK);
    let mut d = (0..chunks)
        .into_par_iter()
        .fold(
            || vec![0f64; k * k],
            |mut acc, c| {
                let range = c * SMALL_CHUNK..((c + 1) * SMALL_CHUNK).min(len);
                for i in 0..k {
                    let a = &inputs[i][range.clone()];
                    let mut j = i + 1;
                    while j + 4 <= k {
                        let b = [
                            &inputs[j][range.clone()],
                            &inputs[j + 1][range.clone()],
                            &inputs[j + 2][range.clone()],
                            &inputs[j + 3][range.clone()],
                        ];
                        for (o, v) in sq_distances_x4(a, b).into_iter().enumerate() {
                            acc[i * k + j + o] += v;
                        }
                        j += 4;
                    }
                    for j in j..k {
                        acc[i * k + j] += sq_distance(a, &inputs[j][range.clone()]);
                    }
                }
                acc
            },
        )
        .reduce(
            || vec![0f64; k * k],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        );
    for i in 0..k {
        for j in 0..i {
            d[i * k + j] = d[j * k + i];
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_mean(inputs: &[Vec<f32>], w: &[f64]) -> Vec<f32> {
        let total: f64 = w.iter().sum();
        (0..inputs[0].len())
            .map(|i| {
                (inputs
                    .iter()
                    .zip(w)
                    .map(|(x, w)| f64::from(x[i]) * w)
                    .sum::<f64>()
                    / total) as f32
            })
            .collect()
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20_001) as f32 / 1000.0 - 10.0
            })
            .collect()
    }

    #[test]
    fn weighted_mean_matches_naive_across_chunk_borders() {
        let n = CHUNK * 2 + 37;
        let inputs: Vec<Vec<f32>> = (0..9).map(|s| pseudo(n, s)).collect();
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let mut out = vec![0.0; n];
        // Every remainder of the grouping by four, zero weights included.
        for k in 1..=9 {
            let w: Vec<f64> = (0..k).map(|i| [1.0, 2.0, 3.0, 0.0, 10.0][i % 5]).collect();
            weighted_mean(&refs[..k], &w, &mut out).unwrap();
            // Both sum in f64 but in another order: allow one f32 ulp.
            for (a, b) in out.iter().zip(naive_mean(&inputs[..k], &w)) {
                assert!((a - b).abs() <= b.abs() * f32::EPSILON, "k={k}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn weighted_mean_rejects_bad_inputs() {
        let a = [1.0f32, 2.0];
        let b = [1.0f32];
        let mut out = [0.0f32; 2];
        assert_eq!(weighted_mean(&[], &[], &mut out), Err(KernelError::Empty));
        assert!(matches!(
            weighted_mean(&[&a, &b], &[1.0, 1.0], &mut out),
            Err(KernelError::Length { index: 1, .. })
        ));
        assert!(weighted_mean(&[&a], &[0.0], &mut out).is_err());
        assert!(weighted_mean(&[&a], &[f64::NAN], &mut out).is_err());
        assert!(weighted_mean(&[&a, &a], &[1.0], &mut out).is_err());
    }

    #[test]
    fn sorting_networks_sort_every_input() {
        // 0-1 principle: a comparator network sorts everything iff it sorts all 0/1 inputs.
        for n in 0..=12usize {
            let net = sorting_network(n);
            assert!(net.iter().all(|&(a, b)| a < b && b < n));
            for bits in 0u32..(1 << n) {
                let mut v: Vec<u8> = (0..n).map(|i| ((bits >> i) & 1) as u8).collect();
                for &(a, b) in &net {
                    if v[b] < v[a] {
                        v.swap(a, b);
                    }
                }
                assert!(v.windows(2).all(|w| w[0] <= w[1]), "n={n} bits={bits:b}");
            }
        }
        // Larger (non-power-of-two) sizes on random data, and pruned selection.
        for n in [13usize, 21, 31, 33, 50] {
            let net = sorting_network(n);
            let sel = prune_network(&net, n, n / 2..n / 2 + 1);
            assert!(sel.len() < net.len());
            for seed in 0..20 {
                let v = pseudo(n, seed);
                let mut sorted = v.clone();
                sorted.sort_by(f32::total_cmp);
                let mut w = v.clone();
                sort_columns(&mut w, 1, 1, &net);
                assert_eq!(w, sorted, "n={n}");
                let mut m = v.clone();
                sort_columns(&mut m, 1, 1, &sel);
                assert_eq!(m[n / 2], sorted[n / 2], "n={n}");
            }
        }
    }

    #[test]
    fn median_and_trimmed_mean_by_hand() {
        let a = [1.0f32, -4.0, 10.0];
        let b = [3.0f32, 0.0, 10.0];
        let c = [2.0f32, 100.0, -10.0];
        let d = [50.0f32, 1.0, 10.0];
        let mut out = [0.0f32; 3];
        median(&[&a, &b, &c], &mut out).unwrap();
        assert_eq!(out, [2.0, 0.0, 10.0]);
        median(&[&a, &b, &c, &d], &mut out).unwrap();
        assert_eq!(out, [2.5, 0.5, 10.0]);
        trimmed_mean(&[&a, &b, &c, &d], 1, &mut out).unwrap();
        assert_eq!(out, [2.5, 0.5, 10.0]);
        trimmed_mean(&[&a, &b, &c, &d], 0, &mut out).unwrap();
        assert_eq!(out, [14.0, 24.25, 5.0]);
        let e = [0.0f32, 0.0, 0.0];
        trimmed_mean(&[&a, &b, &c, &d, &e], 1, &mut out).unwrap();
        assert_eq!(out, [2.0, 1.0 / 3.0, (20.0f64 / 3.0) as f32]);
        assert!(trimmed_mean(&[&a, &b], 1, &mut out).is_err());
    }

    #[test]
    fn median_and_trimmed_mean_match_sorting_across_chunks() {
        let n = SMALL_CHUNK * 3 + 5;
        for k in [1usize, 2, 6, 7, 21] {
            let inputs: Vec<Vec<f32>> = (0..k).map(|s| pseudo(n, s as u32 + 11)).collect();
            let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
            let mut out = vec![0.0; n];
            median(&refs, &mut out).unwrap();
            for i in (0..n).step_by(97) {
                let mut col: Vec<f32> = inputs.iter().map(|x| x[i]).collect();
                col.sort_by(|a, b| a.total_cmp(b));
                let want = if k % 2 == 1 {
                    col[k / 2]
                } else {
                    ((f64::from(col[k / 2 - 1]) + f64::from(col[k / 2])) / 2.0) as f32
                };
                assert_eq!(out[i], want, "k={k} i={i}");
            }
            for trim in 0..=(k - 1) / 2 {
                trimmed_mean(&refs, trim, &mut out).unwrap();
                for i in (0..n).step_by(89) {
                    let mut col: Vec<f32> = inputs.iter().map(|x| x[i]).collect();
                    col.sort_by(|a, b| a.total_cmp(b));
                    let mid = &col[trim..k - trim];
                    let want =
                        (mid.iter().map(|&v| f64::from(v)).sum::<f64>() / mid.len() as f64) as f32;
                    assert!((out[i] - want).abs() <= 1e-6, "k={k} trim={trim} i={i}");
                }
            }
        }
    }

    #[test]
    fn distances_finiteness_and_norms() {
        let n = SMALL_CHUNK * 2 + 3;
        // Seven inputs: pairs go through both the four-at-once and the single path.
        let k = 7;
        let inputs: Vec<Vec<f32>> = (0..k).map(|s| pseudo(n, s as u32 + 3)).collect();
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let d = pairwise_sq_distances(&refs).unwrap();
        for i in 0..k {
            assert_eq!(d[i * k + i], 0.0);
            for j in 0..k {
                let exact: f64 = inputs[i]
                    .iter()
                    .zip(&inputs[j])
                    .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                    .sum();
                assert!((d[i * k + j] - exact).abs() <= exact * 1e-5, "{i},{j}");
                assert_eq!(d[i * k + j], d[j * k + i]);
            }
        }
        let exact: f64 = inputs[0].iter().map(|a| f64::from(*a).powi(2)).sum();
        assert!((sq_norm(&inputs[0]) - exact).abs() <= exact * 1e-5);
        assert!((par_sq_distance(&inputs[0], &inputs[1]).unwrap() - d[1]).abs() < 1e-6 * d[1]);

        let mut v = pseudo(CHUNK + 9, 1);
        assert!(all_finite(&v));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for pos in [0, 5, CHUNK + 8] {
                let keep = v[pos];
                v[pos] = bad;
                assert!(!all_finite(&v), "{bad} at {pos}");
                v[pos] = keep;
            }
        }
        assert!(all_finite(&[f32::MAX, f32::MIN_POSITIVE, -0.0, 1e-45]));
    }
}
