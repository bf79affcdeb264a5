//! Fixed-point quantization into `Z_{2^32}` with stochastic rounding.
//!
//! A value `v` is clipped to `[-c, c]`, shifted and scaled onto the integer
//! grid `0..=2^bits - 1` (step `2c / (2^bits - 1)`), and rounded up with
//! probability equal to its fractional part, so the quantized value is an
//! unbiased estimate of the clipped one and off by less than one step. The
//! sum of `n` quantized values, dequantized with [`Quantizer::dequantize_sum`],
//! is therefore within `n` steps of the sum of the clipped values
//! ([`Quantizer::sum_error_bound`]).

use rand::Rng;

/// The quantizer of one round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantizer {
    clip: f32,
    levels: u32,
    step: f64,
}

impl Quantizer {
    /// Clip range `c > 0` and `bits` in `1..=24` (checked by the config).
    pub fn new(clip: f32, bits: u32) -> Quantizer {
        let levels = (1u32 << bits.clamp(1, 24)) - 1;
        Quantizer {
            clip,
            levels,
            step: 2.0 * f64::from(clip) / f64::from(levels),
        }
    }

    /// The grid step, `2c / (2^bits - 1)`.
    pub fn step(&self) -> f64 {
        self.step
    }

    /// The clip range `c`.
    pub fn clip(&self) -> f32 {
        self.clip
    }

    /// Quantizes one finite value.
    pub fn quantize<R: Rng + ?Sized>(&self, v: f32, rng: &mut R) -> u32 {
        let c = f64::from(self.clip);
        let x = (f64::from(v).clamp(-c, c) + c) / self.step;
        let floor = x.floor();
        let up = rng.random::<f64>() < x - floor;
        (floor as u32 + u32::from(up)).min(self.levels)
    }

    /// Quantizes `weight * v` for every `v` of `values`, appending to `out`:
    /// [`Self::quantize`] for a whole update, with the rounding draws taken
    /// 32 bits at a time in bulk, so rounding up has a probability within
    /// 2^-32 of the fractional part (an unbiased estimate up to 2^-32 of a
    /// step). The values must be finite.
    pub fn quantize_scaled<R: Rng + ?Sized>(
        &self,
        values: &[f32],
        weight: f32,
        rng: &mut R,
        out: &mut Vec<u32>,
    ) {
        const BATCH: usize = 1024;
        let c = f64::from(self.clip);
        let per_step = 1.0 / self.step;
        let levels = self.levels;
        let mut draws = [0u32; BATCH];
        let start = out.len();
        out.resize(start + values.len(), 0);
        for (chunk, quantized) in values.chunks(BATCH).zip(out[start..].chunks_mut(BATCH)) {
            let draws = &mut draws[..chunk.len()];
            rng.fill(draws);
            // A plain loop over equal-length slices, so it vectorizes.
            for ((q, &v), &r) in quantized.iter_mut().zip(chunk).zip(draws.iter()) {
                let x = (f64::from(weight * v).clamp(-c, c) + c) * per_step;
                // x >= 0, so truncation is the floor (and needs no libm call).
                let floor = x as u32;
                let up = f64::from(r) < (x - f64::from(floor)) * 4_294_967_296.0;
                *q = (floor + u32::from(up)).min(levels);
            }
        }
    }

    /// The sum of `count` values from the sum of their quantizations.
    pub fn dequantize_sum(&self, sum: u32, count: usize) -> f64 {
        f64::from(sum) * self.step - count as f64 * f64::from(self.clip)
    }

    /// How far [`Self::dequantize_sum`] of `count` values can be from the sum
    /// of the clipped values: less than one step each.
    pub fn sum_error_bound(&self, count: usize) -> f64 {
        count as f64 * self.step
    }
}
