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
//! [`crate::fl::bench`]). Squared distances add `f32` lanes over blocks of
//! [`LANE_BLOCK`] elements and carry the block sums in `f64`, which bounds
//! the relative error by about `LANE_BLOCK / 8 * f32::EPSILON`.

use rayon::prelude::*;

/// Coordinates per parallel task for streaming kernels (mean): 16 Ki values,
/// 64 KiB per input.
pub const CHUNK: usize = 1 << 14;

/// Coordinates per parallel task for kernels that revisit every input
/// (distances, median): small enough that all inputs' chunks stay in L2.
pub const SMALL_CHUNK: usize = 1 << 11;

/// Elements summed in `f32` lanes before the partial sums move to `f64`.
pub const LANE_BLOCK: usize = 1 << 10;

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
pub fn weighted_mean(
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
        || vec![0f64; CHUNK],
        |acc, (c, out)| {
            let start = c * CHUNK;
            let acc = &mut acc[..out.len()];
            let range = start..start + out.len();
            let first = &inputs[0][range.clone()];
            let w0 = scale[0];
            for (a, &x) in acc.iter_mut().zip(first) {
                *a = w0 * f64::from(x);
            }
            for (x, &w) in inputs[1..].iter().zip(&scale[1..]) {
                for (a, &v) in acc.iter_mut().zip(&x[range.clone()]) {
                    *a += w * f64::from(v);
                }
            }
            for (o, &a) in out.iter_mut().zip(acc.iter()) {
                *o = a as f32;
            }
        },
    );
    Ok(())
}

/// Maps an `f32` to an `i32` whose integer order is the float's total order,
/// so selection compares integers.
#[inline]
fn order_key(x: f32) -> i32 {
    let b = x.to_bits() as i32;
    b ^ (((b >> 31) as u32) >> 1) as i32
}

/// The inverse of [`order_key`].
#[inline]
fn from_order_key(k: i32) -> f32 {
    f32::from_bits((k ^ (((k >> 31) as u32) >> 1) as i32) as u32)
}

/// Runs `f(column, out_value)` for every coordinate, where `column` holds the
/// coordinate's value from each input as order keys (in scratch that `f` may
/// reorder).
fn per_coordinate<F>(inputs: &[&[f32]], out: &mut [f32], f: F) -> Result<(), KernelError>
where
    F: Fn(&mut [i32]) -> f32 + Sync,
{
    check_inputs(inputs, out.len())?;
    let k = inputs.len();
    out.par_chunks_mut(SMALL_CHUNK).enumerate().for_each_init(
        || (vec![0i32; k * SMALL_CHUNK], vec![0i32; k]),
        |(tile, column), (c, out)| {
            let start = c * SMALL_CHUNK;
            let n = out.len();
            // Transpose the chunk into a row per input (contiguous reads), then
            // read columns from the tile, which sits in L1/L2.
            for (row, x) in tile.chunks_exact_mut(SMALL_CHUNK).zip(inputs) {
                for (t, &v) in row[..n].iter_mut().zip(&x[start..start + n]) {
                    *t = order_key(v);
                }
            }
            for (j, o) in out.iter_mut().enumerate() {
                for (dst, row) in column.iter_mut().zip(tile.chunks_exact(SMALL_CHUNK)) {
                    *dst = row[j];
                }
                *o = f(column);
            }
        },
    );
    Ok(())
}

/// Coordinate-wise median; for an even number of inputs, the mean of the two
/// middle values.
pub fn median(inputs: &[&[f32]], out: &mut [f32]) -> Result<(), KernelError> {
    let k = inputs.len();
    per_coordinate(inputs, out, |col| {
        let mid = k / 2;
        let (lower, &mut hi, _) = col.select_nth_unstable(mid);
        let hi = from_order_key(hi);
        if k % 2 == 1 {
            hi
        } else {
            // The largest value below the upper middle one is the lower middle one.
            let lo = lower.iter().copied().max().map_or(hi, from_order_key);
            ((f64::from(lo) + f64::from(hi)) * 0.5) as f32
        }
    })
}

/// Coordinate-wise mean after dropping the `trim` smallest and `trim`
/// largest values (`2 * trim < inputs.len()`).
pub fn trimmed_mean(inputs: &[&[f32]], trim: usize, out: &mut [f32]) -> Result<(), KernelError> {
    let k = inputs.len();
    if 2 * trim >= k {
        return Err(KernelError::Weights(format!(
            "cannot trim {trim} per side from {k} inputs"
        )));
    }
    let keep = k - 2 * trim;
    per_coordinate(inputs, out, |col| {
        let middle = if trim == 0 {
            &col[..]
        } else {
            // Lowest `trim` to the front, then the next `keep` right after them.
            col.select_nth_unstable(trim);
            let rest = &mut col[trim..];
            if keep < rest.len() {
                rest.select_nth_unstable(keep - 1);
            }
            &col[trim..trim + keep]
        };
        let sum: f64 = middle.iter().map(|&v| f64::from(from_order_key(v))).sum();
        (sum / keep as f64) as f32
    })
}

/// `Σ (a_i - b_i)^2` in `f32` lanes per block, blocks summed in `f64`.
#[inline]
pub fn sq_distance(a: &[f32], b: &[f32]) -> f64 {
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

/// `Σ a_i^2`, like [`sq_distance`] against zero.
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
pub fn par_sq_distance(a: &[f32], b: &[f32]) -> Result<f64, KernelError> {
    check_inputs(&[b], a.len())?;
    Ok(a.par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(x, y)| sq_distance(x, y))
        .sum())
}

/// Whether every value is finite; exact, vectorized bit test, in parallel.
pub fn all_finite(a: &[f32]) -> bool {
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

/// All pairwise squared distances, as a row-major `k x k` matrix.
///
/// One pass over the inputs: each task takes a [`SMALL_CHUNK`] of
/// coordinates, whose slices from every input stay in cache while all pairs
/// are compared; per-worker `k x k` partial matrices are summed at the end.
pub fn pairwise_sq_distances(inputs: &[&[f32]]) -> Result<Vec<f64>, KernelError> {
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
                    for j in i + 1..k {
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
        let inputs: Vec<Vec<f32>> = (0..5).map(|s| pseudo(n, s)).collect();
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let w = [1.0, 2.0, 3.0, 0.0, 10.0];
        let mut out = vec![0.0; n];
        weighted_mean(&refs, &w, &mut out).unwrap();
        assert_eq!(out, naive_mean(&inputs, &w));
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
    fn order_keys_sort_like_floats() {
        let mut v = [3.5f32, -0.0, 0.0, -7.25, 1e-30, -1e30, f32::MAX, f32::MIN];
        let mut keys: Vec<i32> = v.iter().map(|&x| order_key(x)).collect();
        keys.sort();
        v.sort_by(|a, b| a.total_cmp(b));
        let back: Vec<f32> = keys.iter().map(|&k| from_order_key(k)).collect();
        assert_eq!(
            back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
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
    fn median_matches_sorting_across_chunks() {
        let n = SMALL_CHUNK * 3 + 5;
        for k in [1usize, 2, 6, 7] {
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
        }
    }

    #[test]
    fn distances_finiteness_and_norms() {
        let n = SMALL_CHUNK * 2 + 3;
        let inputs: Vec<Vec<f32>> = (0..4).map(|s| pseudo(n, s + 3)).collect();
        let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let d = pairwise_sq_distances(&refs).unwrap();
        for i in 0..4 {
            assert_eq!(d[i * 4 + i], 0.0);
            for j in 0..4 {
                let exact: f64 = inputs[i]
                    .iter()
                    .zip(&inputs[j])
                    .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                    .sum();
                assert!((d[i * 4 + j] - exact).abs() <= exact * 1e-5, "{i},{j}");
                assert_eq!(d[i * 4 + j], d[j * 4 + i]);
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
