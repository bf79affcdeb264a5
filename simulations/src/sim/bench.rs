//! `fedcrime-sim bench rounds`: what a federated round costs besides
//! training.
//!
//! Stations do not train: each returns a copy of the global model it was
//! sent (a station must hand back a buffer of its own), so a round's time is
//! the framework's: sampling, encoding and sending the model, decoding and
//! validating the updates, aggregating, bookkeeping. The model is a `dnn`
//! for the `risk` task whose width gives about the requested number of
//! parameters (20k, 1M, 10M), so both transports run the real code paths
//! (over QUIC: the real server and clients with mutual TLS on 127.0.0.1).
//!
//! Per round: the cycle time (from the end of one round to the end of the
//! next, so it includes the previous round's aggregation, metrics and
//! checkpoint), the slowest station's "training" (its copy), and their
//! difference, the framework overhead. The first round, which includes the
//! stations connecting, is left out. Measured in the same run for
//! reference: copying the round's model bytes in memory (`memcpy`: the
//! model to each sampled station and back) and sending the same bytes over
//! a plain TCP loopback connection; the overhead is reported as ratios to
//! both. Peak resident memory comes from the kernel (`VmHWM`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;

use fedcrime_data::{Task, TaskConfig};
use fedcrime_fl::{Engine, EngineConfig, RoundMetrics, StationId, StrategyConfig};
use fedcrime_ml::model::{build, ModelConfig, ModelKind};
use fedcrime_station::{Echo, Learner};

use super::config::Transport;
use super::memory::{MemoryFederation, RoundTiming};
use super::{peak_rss_mib, quic};

/// What to measure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchSpec {
    /// Parameters wanted (the model gets the nearest width).
    pub params: usize,
    /// Stations connected.
    pub stations: usize,
    /// Fraction sampled each round.
    pub fraction: f64,
    /// Rounds (the first is not counted).
    pub rounds: u64,
    /// The transport.
    pub transport: Transport,
    /// Stations "training" at once (default: all of them).
    pub concurrency: Option<usize>,
    /// The aggregation strategy.
    pub strategy: StrategyConfig,
    /// Folder for the QUIC transport's PKI and server files.
    pub dir: std::path::PathBuf,
    /// Secure aggregation's settings, when the rounds use it.
    pub secure_aggregation: Option<fedcrime_fl::secure::SecAggConfig>,
    /// Signed updates and the server's audit log.
    pub audit: bool,
}

/// What [`run`] measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchResult {
    /// The transport.
    pub transport: &'static str,
    /// Whether the rounds used secure aggregation.
    pub secure_aggregation: bool,
    /// Whether stations signed their updates and the server kept its audit log.
    pub audit: bool,
    /// Parameters of the model.
    pub params: usize,
    /// Its hidden width.
    pub hidden: usize,
    /// Stations connected.
    pub stations: usize,
    /// Stations sampled per round.
    pub sampled: usize,
    /// Rounds counted.
    pub rounds: usize,
    /// Median seconds per round (cycle time).
    pub round_s: f64,
    /// Mean seconds per round.
    pub round_mean_s: f64,
    /// Median slowest-station time per round.
    pub slowest_fit_s: f64,
    /// Median framework overhead per round: cycle time minus the slowest station.
    pub overhead_s: f64,
    /// Median aggregation time per round.
    pub aggregate_s: f64,
    /// Bytes moved per round (both directions, wire protocol).
    pub bytes_per_round: u64,
    /// Reference: copying `bytes_per_round` of model in memory, seconds (best of 5).
    pub memcpy_s: f64,
    /// Reference: sending `bytes_per_round` over TCP loopback, seconds (best of 3).
    pub tcp_s: f64,
    /// `overhead_s / memcpy_s`.
    pub overhead_vs_memcpy: f64,
    /// `overhead_s / tcp_s`.
    pub overhead_vs_tcp: f64,
    /// Reference: sealing and opening `bytes_per_round` with AES-128-GCM (the
    /// negotiated suite) spread over this machine's cores, seconds; the round's
    /// cryptographic floor over QUIC.
    pub aes_gcm_bound_s: f64,
    /// `round_s / aes_gcm_bound_s`.
    pub round_vs_aes_bound: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

/// Parameters of a 3-layer `dnn` of width `h` for `cfg`'s input and output widths.
fn dnn_params(cfg: &ModelConfig, h: usize) -> usize {
    let (i, o) = (cfg.input_dim, cfg.output_dim);
    (i * h + h) + (cfg.layers - 1) * (h * h + h) + (h * o + o)
}

/// The `risk` `dnn` whose width gives the number of parameters nearest `params`.
pub fn model_of_size(params: usize) -> Result<ModelConfig> {
    let task = TaskConfig::new(Task::Risk);
    let mut cfg = fedcrime_station::model_config(ModelKind::Dnn, &task)?;
    cfg.dropout = 0.0;
    let mut best = (usize::MAX, 1);
    // params grow with h, so scan up to the first width past the target.
    for h in 1..=100_000 {
        let p = dnn_params(&cfg, h);
        let diff = p.abs_diff(params);
        if diff < best.0 {
            best = (diff, h);
        }
        if p > params {
            break;
        }
    }
    cfg.hidden = best.1;
    cfg.validate()?;
    Ok(cfg)
}

/// Parses `20k`, `1m`, `10M`, `40197`.
pub fn parse_count(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let (digits, mult) = match t.strip_suffix('k') {
        Some(d) => (d, 1_000.0),
        None => match t.strip_suffix('m') {
            Some(d) => (d, 1_000_000.0),
            None => (t.as_str(), 1.0),
        },
    };
    let v: f64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a count like 20k, 1m or 40197"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{s:?} must be positive"));
    }
    Ok((v * mult).round() as usize)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Best of `reps` timings of copying `total` bytes of model in `model`-sized pieces.
fn memcpy_seconds(model: usize, copies: usize, reps: usize) -> f64 {
    let src = vec![1.0f32; model.div_ceil(4)];
    let mut dst = vec![0.0f32; src.len()];
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t0 = Instant::now();
        for _ in 0..copies {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    best
}

/// Runs the benchmark.
pub fn run(spec: &BenchSpec, bar: &ProgressBar) -> Result<BenchResult> {
    if spec.rounds < 2 {
        bail!("--rounds must be at least 2 (the first round is not counted)");
    }
    if spec.stations == 0 {
        bail!("--stations must be at least 1");
    }
    let model = model_of_size(spec.params)?;
    tch::manual_seed(0);
    let initial = build(&model, tch::Device::Cpu)?.export_params();
    let n_params = initial.spec().total();
    let width = format!("{}", spec.stations).len().max(2);
    let stations: Vec<(StationId, Arc<dyn Learner>)> = (1..=spec.stations)
        .map(|i| {
            let l: Arc<dyn Learner> = Arc::new(Echo);
            Ok((StationId::new(format!("station-{i:0width$}"))?, l))
        })
        .collect::<Result<_>>()?;
    let secure = spec.secure_aggregation.is_some();
    let least = if secure { 3.min(spec.stations) } else { 1 };
    let engine_cfg = EngineConfig {
        rounds: spec.rounds,
        min_stations: spec.stations,
        fraction_fit: spec.fraction,
        min_fit: least,
        min_updates: least,
        secure_aggregation: spec.secure_aggregation.clone(),
        round_deadline: Duration::from_secs(600),
        station_wait_timeout: Some(Duration::from_secs(300)),
        eval_every: 0,
        fraction_evaluate: 0.0,
        seed: 0,
        audit: spec.audit,
        ..EngineConfig::default()
    };
    let concurrency = spec.concurrency.unwrap_or(spec.stations).max(1);
    let rounds: Vec<(RoundMetrics, RoundTiming)> = match spec.transport {
        Transport::Memory => {
            let mut engine =
                Engine::new(engine_cfg, spec.strategy.build()?, initial, Instant::now())?;
            engine.set_stopwatch(Instant::now);
            let mut fed = MemoryFederation::new(stations, concurrency)?;
            if secure {
                fed = fed.with_secure_aggregation(0.0, 0);
            }
            if spec.audit {
                let dir = spec.dir.join("audit");
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("clearing {}", dir.display()))?;
                }
                fed = fed.with_audit(&dir)?;
            }
            let mut out = Vec::new();
            fed.run(&mut engine, |r| {
                bar.inc(1);
                out.push((r.metrics.clone(), r.timing.clone()));
                Ok(())
            })?;
            out
        }
        Transport::Quic => {
            let run = quic::run(quic::QuicSetup {
                dir: &spec.dir,
                engine: engine_cfg,
                strategy: spec.strategy.clone(),
                task: TaskConfig::new(Task::Risk),
                featurizer: None,
                model: &model,
                initial: &initial,
                stations,
                concurrency,
                keep_globals: false,
                bar: bar.clone(),
                evaluator: None,
                board: None,
                station_dropout: 0.0,
            })?;
            run.rounds
                .into_iter()
                .map(|r| (r.metrics, r.timing))
                .collect()
        }
    };
    bar.finish_and_clear();
    let counted = &rounds[1.min(rounds.len())..];
    if counted.is_empty() {
        bail!("no round completed after the first");
    }
    let mut round_s: Vec<f64> = counted.iter().map(|(m, _)| m.round_s).collect();
    let round_mean_s = round_s.iter().sum::<f64>() / round_s.len() as f64;
    let mut slowest: Vec<f64> = counted.iter().map(|(_, t)| t.slowest_fit_s).collect();
    let mut overhead: Vec<f64> = counted
        .iter()
        .map(|(m, t)| m.round_s - t.slowest_fit_s)
        .collect();
    let mut aggregate: Vec<f64> = counted
        .iter()
        .map(|(m, _)| m.aggregate_s.unwrap_or(f64::NAN))
        .collect();
    let sampled = counted[0].0.sampled.len();
    let bytes_per_round = counted
        .iter()
        .map(|(m, _)| m.bytes_in + m.bytes_out)
        .sum::<u64>()
        / counted.len() as u64;
    // Before the references, which allocate buffers of their own.
    let peak_rss_mib = peak_rss_mib();
    let model_bytes = 4 * n_params;
    let copies = 2 * sampled;
    let memcpy_s = memcpy_seconds(model_bytes, copies, 5);
    let tcp_s = fedcrime_net::bench::tcp_seconds(model_bytes, copies, 3)
        .context("the plain TCP reference")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let aes_gcm_bound_s = fedcrime_net::bench_aead(model_bytes.clamp(1 << 20, 16 << 20))
        .context("the AES-GCM reference")?
        .aes_128_gcm_bound_s(bytes_per_round, cores)
        .unwrap_or(f64::NAN);
    let overhead_s = median(&mut overhead);
    let round_s = median(&mut round_s);
    Ok(BenchResult {
        transport: spec.transport.as_str(),
        secure_aggregation: secure,
        audit: spec.audit,
        params: n_params,
        hidden: model.hidden,
        stations: spec.stations,
        sampled,
        rounds: counted.len(),
        round_s,
        round_mean_s,
        slowest_fit_s: median(&mut slowest),
        overhead_s,
        aggregate_s: median(&mut aggregate),
        bytes_per_round,
        memcpy_s,
        tcp_s,
        overhead_vs_memcpy: overhead_s / memcpy_s,
        overhead_vs_tcp: overhead_s / tcp_s,
        aes_gcm_bound_s,
        round_vs_aes_bound: round_s / aes_gcm_bound_s,
        peak_rss_mib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_hit_the_requested_sizes() {
        for (want, tol) in [(20_000, 0.02), (1_000_000, 0.01), (10_000_000, 0.01)] {
            let cfg = model_of_size(want).unwrap();
            let got = dnn_params(&cfg, cfg.hidden);
            let rel = (got as f64 - want as f64).abs() / want as f64;
            assert!(rel < tol, "{want}: {got} (h {})", cfg.hidden);
        }
        // The formula is the model's real count.
        let cfg = model_of_size(20_000).unwrap();
        let m = build(&cfg, tch::Device::Cpu).unwrap();
        assert_eq!(m.num_params(), dnn_params(&cfg, cfg.hidden));
    }

    #[test]
    fn counts_parse() {
        assert_eq!(parse_count("20k"), Ok(20_000));
        assert_eq!(parse_count("1M"), Ok(1_000_000));
        assert_eq!(parse_count("2.5m"), Ok(2_500_000));
        assert_eq!(parse_count("40197"), Ok(40_197));
        assert!(parse_count("x").is_err());
        assert!(parse_count("-3k").is_err());
    }

    #[test]
    fn memory_bench_measures_rounds() {
        let spec = BenchSpec {
            params: 20_000,
            stations: 6,
            fraction: 0.5,
            rounds: 3,
            transport: Transport::Memory,
            concurrency: None,
            strategy: StrategyConfig::default(),
            dir: std::env::temp_dir(),
            secure_aggregation: None,
            audit: false,
        };
        let r = run(&spec, &ProgressBar::hidden()).unwrap();
        assert_eq!(r.rounds, 2);
        assert_eq!(r.sampled, 3);
        assert!(r.params > 19_000 && r.params < 21_000);
        // Down and up for 3 stations, 4 bytes a value plus headers.
        assert!(r.bytes_per_round > (6 * 4 * r.params) as u64, "{r:?}");
        assert!(r.round_s > 0.0 && r.overhead_s <= r.round_s);
        assert!(r.memcpy_s > 0.0 && r.tcp_s > 0.0 && r.aes_gcm_bound_s > 0.0);
        assert!(r.peak_rss_mib > 1.0);
    }
}
