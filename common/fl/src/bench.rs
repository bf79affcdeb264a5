//! Aggregation throughput against `memcpy` of the same bytes, measured in the
//! same run (these machines are shared and noisy, so only the ratio travels).
//!
//! [`bench_aggregation`] builds `updates` random models of `params` values,
//! times each strategy's `Strategy::aggregate_fit` (the full call,
//! including allocating the new model) and a reference that copies every
//! update's buffer once with `copy_from_slice`. `fedcrime-sim bench` calls
//! it; the ignored test below prints the figures for 1M and 10M parameters:
//!
//! ```text
//! cargo test -p fedcrime-fl --features bench --release --lib bench -- --ignored --nocapture
//! ```

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::error::Result;
use super::strategy::{FitRes, Metrics, StrategyConfig};
use fedcrime_params::{ParamSpec, Params};

/// One strategy's timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggregationBench {
    /// The strategy, as `name:params`.
    pub strategy: String,
    /// Values per model.
    pub params: usize,
    /// Updates aggregated.
    pub updates: usize,
    /// Median seconds per aggregation.
    pub seconds: f64,
    /// Median seconds to `memcpy` all updates' bytes once.
    pub memcpy_seconds: f64,
    /// `seconds / memcpy_seconds`.
    pub ratio: f64,
    /// Update bytes read per second by the aggregation, GB/s.
    pub input_gb_per_s: f64,
    /// Worker threads (rayon).
    pub threads: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Fills `out` with uniform values in about [-1, 1) from a xorshift stream.
fn fill(out: &mut [f32], seed: u64) {
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut s = (seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
            for v in chunk {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *v = ((s >> 40) as f32) * (2.0 / (1u64 << 24) as f32) - 1.0;
            }
        });
}

/// A layout of `params` values in four tensors, like a small MLP.
fn layout(params: usize) -> Arc<ParamSpec> {
    let quarter = params / 4;
    let sizes = [quarter, quarter, quarter, params - 3 * quarter];
    Arc::new(
        ParamSpec::new(
            sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (format!("layer{i}.weight"), vec![n])),
        )
        .unwrap_or_else(|_| unreachable!("names are distinct")),
    )
}

/// Times each strategy aggregating `updates` random models of `params`
/// values (median of `repeats` runs after a warm-up) next to a `memcpy` of
/// the same bytes.
pub fn bench_aggregation(
    params: usize,
    updates: usize,
    strategies: &[StrategyConfig],
    repeats: usize,
    seed: u64,
) -> Result<Vec<AggregationBench>> {
    let repeats = repeats.max(1);
    let spec = layout(params);
    let mut global = Params::zeros(spec.clone());
    fill(global.data_mut(), seed);
    let results: Vec<FitRes> = (0..updates)
        .map(|k| {
            let mut p = Params::zeros(spec.clone());
            fill(p.data_mut(), seed.wrapping_add(k as u64 + 1));
            FitRes {
                params: Arc::new(p),
                num_examples: 100 + k as u64 * 10,
                metrics: Metrics::new(),
            }
        })
        .collect();

    let mut dst = vec![0f32; params];
    let mut memcpy_times = Vec::with_capacity(repeats);
    for rep in 0..=repeats {
        let t = Instant::now();
        for r in &results {
            dst.copy_from_slice(r.params.data());
        }
        std::hint::black_box(&mut dst);
        if rep > 0 {
            memcpy_times.push(t.elapsed().as_secs_f64());
        }
    }
    let memcpy_seconds = median(memcpy_times);
    drop(dst);

    let mut rows = Vec::with_capacity(strategies.len());
    for cfg in strategies {
        let mut strategy = cfg.build()?;
        let mut times = Vec::with_capacity(repeats);
        for rep in 0..=repeats {
            let t = Instant::now();
            let out = strategy.aggregate_fit(1, &global, &results)?;
            let elapsed = t.elapsed().as_secs_f64();
            std::hint::black_box(out);
            if rep > 0 {
                times.push(elapsed);
            }
        }
        let seconds = median(times);
        rows.push(AggregationBench {
            strategy: cfg.to_string(),
            params,
            updates,
            seconds,
            memcpy_seconds,
            ratio: seconds / memcpy_seconds,
            input_gb_per_s: (params * updates * 4) as f64 / seconds / 1e9,
            threads: rayon::current_num_threads(),
        });
    }
    Ok(rows)
}

/// The strategies the benchmark reports by default: FedAvg (streaming
/// mean), FedMedian (per-coordinate selection) and Krum (pairwise distances).
pub fn default_strategies() -> Vec<StrategyConfig> {
    vec![
        StrategyConfig::FedAvg {},
        StrategyConfig::FedMedian {},
        StrategyConfig::Krum { byzantine: 1 },
    ]
}

/// The rows as a Markdown table.
pub fn format_table(rows: &[AggregationBench]) -> String {
    let mut s = String::from(
        "| strategy | params | updates | aggregate ms | memcpy ms | ratio | input GB/s | threads |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            r.strategy,
            r.params,
            r.updates,
            r.seconds * 1e3,
            r.memcpy_seconds * 1e3,
            r.ratio,
            r.input_gb_per_s,
            r.threads
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bench_produces_sane_rows() {
        let strategies = [
            StrategyConfig::FedAvg {},
            StrategyConfig::FedMedian {},
            StrategyConfig::Krum { byzantine: 1 },
        ];
        let rows = bench_aggregation(10_001, 5, &strategies, 2, 7).unwrap();
        assert_eq!(rows.len(), 3);
        for r in &rows {
            assert!(
                r.seconds > 0.0 && r.memcpy_seconds > 0.0 && r.ratio.is_finite(),
                "{r:?}"
            );
            assert_eq!((r.params, r.updates), (10_001, 5));
        }
        let table = format_table(&rows);
        assert!(
            table.contains("| krum:byzantine=1 | 10001 | 5 |"),
            "{table}"
        );
    }

    /// The figures for the report (release build):
    /// `cargo test -p fedcrime-fl --features bench --release --lib bench -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark; run in release with --ignored --nocapture"]
    fn aggregation_21_updates_1m_and_10m() {
        let strategies = default_strategies();
        let mut rows = bench_aggregation(1_000_000, 21, &strategies, 5, 1).unwrap();
        rows.extend(bench_aggregation(10_000_000, 21, &strategies, 3, 1).unwrap());
        println!("{}", format_table(&rows));
    }
}
