//! `fedcrime-sim bench train`: training throughput of the tch models against
//! the same architecture trained by PyTorch from Python, in the same run, with
//! the same threads, and the data-parallel trainer's speedup over one worker.
//!
//! Cases (as in issue 3): `dnn` on `risk` and `lstm` on `counts`, batch 256,
//! on the synthetic data. For each case the training samples are written as
//! raw little-endian arrays with a JSON manifest into a temporary folder, and
//! `.ci/bench/train_torch.py` trains PyTorch's version of the model on them.
//! Throughput is each side's best epoch (training pass only; the first epoch
//! warms up). The parallel case times epochs of the data-parallel trainer with
//! 1 and with W CPU workers on the same data.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use fedcrime_data::tasks::Period;
use fedcrime_data::{Dataset, Target, Task};
use fedcrime_ml::model::{build, ModelConfig, ModelKind};
use fedcrime_ml::train::{ParallelConfig, ParallelTrainer, TrainConfig, Trainer};
use fedcrime_ml::DeviceChoice;

use crate::cmd::train::DataArgs;

/// Options of `fedcrime-sim bench train`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchTrainArgs {
    /// Synthetic incidents to generate.
    #[arg(long, default_value_t = 200_000)]
    pub rows: usize,
    /// Epochs per measurement (the best one counts).
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Intra-op threads for both sides (default: libtorch's, i.e. the cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Workers of the data-parallel measurement.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// The Python with torch (default: `$VIRTUAL_ENV/bin/python`, else `python3`).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The PyTorch script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/bench/train_torch.py"))]
    pub script: PathBuf,
    /// Interleaved repetitions of every measurement (shared machines are noisy).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Which cases: `dnn`, `lstm`, `parallel`, `dp` (DP-SGD against plain
    /// training of both models, same run; comma-separated).
    #[arg(long, default_value = "dnn,lstm,parallel", value_delimiter = ',')]
    pub cases: Vec<String>,
}

fn write_f32(path: &Path, values: &[f32]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for v in values {
        f.write_all(&v.to_le_bytes())?;
    }
    f.flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn write_i64(path: &Path, values: &[i64]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for v in values {
        f.write_all(&v.to_le_bytes())?;
    }
    f.flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn python(args: &BenchTrainArgs) -> PathBuf {
    if let Some(p) = &args.python {
        return p.clone();
    }
    match std::env::var_os("VIRTUAL_ENV") {
        Some(v) => Path::new(&v).join("bin/python"),
        None => PathBuf::from("python3"),
    }
}

/// Writes `ds` and a manifest for the PyTorch script; returns the manifest path.
fn torch_inputs(
    dir: &Path,
    mcfg: &ModelConfig,
    tcfg: &TrainConfig,
    ds: &Dataset,
    threads: usize,
) -> anyhow::Result<PathBuf> {
    let tag = mcfg.kind.as_str();
    let features = format!("{tag}_features.bin");
    write_f32(&dir.join(&features), &ds.features)?;
    let sequences = match &ds.sequences {
        Some(s) if mcfg.kind == ModelKind::Lstm => {
            let name = format!("{tag}_sequences.bin");
            write_f32(&dir.join(&name), &s.data)?;
            Some(name)
        }
        _ => None,
    };
    let target = format!("{tag}_target.bin");
    match &ds.target {
        Target::Classes { labels, .. } => write_i64(&dir.join(&target), labels)?,
        Target::Counts { values, .. } => write_f32(&dir.join(&target), values)?,
    }
    let manifest = serde_json::json!({
        "model": tag,
        "task": ds.task.as_str(),
        "n": ds.len(),
        "input_dim": mcfg.input_dim,
        "seq_steps": mcfg.seq_steps,
        "seq_dim": mcfg.seq_dim,
        "output_dim": mcfg.output_dim,
        "hidden": mcfg.hidden,
        "layers": mcfg.layers,
        "dropout": mcfg.dropout,
        "batch_size": tcfg.batch_size,
        "epochs": tcfg.epochs,
        "lr": tcfg.lr,
        "seed": tcfg.seed,
        "threads": threads,
        "features": features,
        "sequences": sequences,
        "target": target,
    });
    let mpath = dir.join(format!("{tag}_manifest.json"));
    std::fs::write(&mpath, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", mpath.display()))?;
    Ok(mpath)
}

/// Runs the PyTorch script on a manifest; returns its best samples/s and torch's version.
fn torch_side(args: &BenchTrainArgs, manifest: &Path) -> anyhow::Result<(f64, String)> {
    let py = python(args);
    let out = Command::new(&py)
        .arg(&args.script)
        .arg(manifest)
        .output()
        .with_context(|| format!("running {} {}", py.display(), args.script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("parsing the script's output {line:?}"))?;
    let sps = v["samples_per_sec"]
        .as_f64()
        .context("the script's output has no samples_per_sec")?;
    Ok((sps, v["torch"].as_str().unwrap_or("?").to_string()))
}

/// Trains with the station trainer (no validation) and returns the best samples/s.
fn rust_side(mcfg: &ModelConfig, tcfg: &TrainConfig, ds: &Dataset) -> anyhow::Result<f64> {
    tch::manual_seed(tcfg.seed as i64);
    let mut t = Trainer::new(build(mcfg, tch::Device::Cpu)?, tcfg.clone())?;
    let report = t.fit(ds, None)?;
    Ok(report
        .epochs
        .iter()
        .map(|e| e.samples_per_sec)
        .fold(0.0, f64::max))
}

/// Best epoch seconds of the data-parallel trainer with `workers` CPU
/// workers sharing `threads` intra-op threads, batches assembled by
/// `loaders` background threads (0: by the workers themselves).
fn parallel_side(
    mcfg: &ModelConfig,
    tcfg: &TrainConfig,
    ds: &Dataset,
    (workers, threads, loaders): (usize, usize, usize),
) -> anyhow::Result<f64> {
    tch::manual_seed(tcfg.seed as i64);
    let tcfg = &TrainConfig {
        loader_threads: loaders,
        ..tcfg.clone()
    };
    let par = ParallelConfig {
        workers,
        device: DeviceChoice::Cpu,
        threads: Some(threads),
    };
    let mut t = ParallelTrainer::new(mcfg, tcfg.clone(), &par)?;
    let report = t.fit(ds, None)?;
    Ok(report
        .epochs
        .iter()
        .map(|e| e.seconds)
        .fold(f64::INFINITY, f64::min))
}

/// The same-run reference for the data-parallel speedup: how much faster `w`
/// threads finish `w` independent trainings (each on 1/w of the samples, no
/// communication at all) than one thread finishes the whole; the ceiling of
/// any data-parallel speedup on this machine right now (a shared machine may
/// have fewer free cores than it has cores).
fn independent_speedup(
    mcfg: &ModelConfig,
    tcfg: &TrainConfig,
    ds: &Dataset,
    w: usize,
) -> anyhow::Result<f64> {
    let run = |part: &Dataset| -> anyhow::Result<f64> {
        tch::set_num_threads(1);
        tch::manual_seed(tcfg.seed as i64);
        let mut t = Trainer::new(build(mcfg, tch::Device::Cpu)?, tcfg.clone())?;
        let r = t.fit(part, None)?;
        Ok(r.epochs
            .iter()
            .map(|e| e.seconds)
            .fold(f64::INFINITY, f64::min))
    };
    let whole = run(ds)?;
    let parts: Vec<Dataset> = (0..w)
        .map(|k| {
            let idx: Vec<usize> = (0..ds.len()).filter(|i| i % w == k).collect();
            ds.subset(&idx)
        })
        .collect();
    let per_thread = std::thread::scope(|s| -> anyhow::Result<f64> {
        let handles: Vec<_> = parts.iter().map(|p| s.spawn(|| run(p))).collect();
        let mut slowest: f64 = 0.0;
        for h in handles {
            let t = h
                .join()
                .map_err(|_| anyhow::anyhow!("a reference thread panicked"))??;
            slowest = slowest.max(t);
        }
        Ok(slowest)
    })?;
    Ok(whole / per_thread)
}

fn data(task: Task, rows: usize) -> DataArgs {
    DataArgs {
        data: None,
        rows,
        data_seed: 7,
        task,
        period: Period::Day,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the command.
pub fn run(args: &BenchTrainArgs) -> anyhow::Result<()> {
    if let Some(t) = args.threads {
        tch::set_num_threads(t as i32);
    }
    let threads = tch::get_num_threads().max(1) as usize;
    let rounds = args.rounds.max(1);
    let tcfg = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        progress: false,
        patience: 0,
        ..TrainConfig::default()
    };
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    println!(
        "bench train: synthetic data ({} rows), batch {}, best of {} epoch(s), {rounds} interleaved round(s), {threads} intra-op thread(s) on each side",
        args.rows, args.batch_size, args.epochs
    );
    let want = |c: &str| args.cases.iter().any(|x| x == c);
    let mut datasets: Vec<(Task, fedcrime_data::tasks::TaskData)> = Vec::new();
    let mut task_data = |task: Task| -> anyhow::Result<Dataset> {
        if let Some((_, d)) = datasets.iter().find(|(t, _)| *t == task) {
            return Ok(d.splits.train.clone());
        }
        let d = data(task, args.rows).task_data()?;
        let train = d.splits.train.clone();
        datasets.push((task, d));
        Ok(train)
    };
    for (case, kind, task) in [
        ("dnn", ModelKind::Dnn, Task::Risk),
        ("lstm", ModelKind::Lstm, Task::Counts),
    ] {
        if !want(case) {
            continue;
        }
        let ds = task_data(task)?;
        let mcfg = ModelConfig::for_dataset(kind, &ds);
        let manifest = torch_inputs(dir.path(), &mcfg, &tcfg, &ds, threads)?;
        let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut version = String::new();
        for _ in 0..rounds {
            let r = rust_side(&mcfg, &tcfg, &ds)?;
            let (t, v) = torch_side(args, &manifest)?;
            version = v;
            ours.push(r);
            theirs.push(t);
            ratios.push(r / t);
        }
        let (best_r, best_t) = (
            ours.iter().copied().fold(0.0, f64::max),
            theirs.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "{case:>5} ({task}, {} samples, {} params): fedcrime {best_r:>8.0} samples/s | PyTorch {version} {best_t:>8.0} samples/s | best/best {:.2}x, median of rounds {:.2}x",
            ds.len(),
            build(&mcfg, tch::Device::Cpu)?.num_params(),
            best_r / best_t,
            median(ratios)
        );
    }
    if want("dp") {
        // DP-SGD (z = 1, C = 1) against plain training in the same run,
        // interleaved: the cost of per-sample gradients (vectorised for the
        // DNN, one backward per sample for the LSTM).
        for (kind, task) in [
            (ModelKind::Dnn, Task::Risk),
            (ModelKind::Lstm, Task::Counts),
        ] {
            let ds = task_data(task)?;
            let mcfg = ModelConfig::for_dataset(kind, &ds);
            let private = TrainConfig {
                dp: Some(fedcrime_ml::train::DpSgd {
                    noise_multiplier: 1.0,
                    clip: 1.0,
                }),
                ..tcfg.clone()
            };
            let (mut plain, mut dp, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                let p = rust_side(&mcfg, &tcfg, &ds)?;
                let d = rust_side(&mcfg, &private, &ds)?;
                plain.push(p);
                dp.push(d);
                ratios.push(p / d);
            }
            let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
            println!(
                "dp-sgd {kind} ({task}, {} samples): plain {:>8.0} samples/s | DP-SGD (z 1, C 1) {:>8.0} samples/s | DP-SGD takes {:.2}x the time (best/best), median of rounds {:.2}x",
                ds.len(),
                best(&plain),
                best(&dp),
                best(&plain) / best(&dp),
                median(ratios)
            );
        }
    }
    if want("parallel") {
        let w = args.workers.max(2);
        // The fair comparison gives one worker and W workers the same total
        // threads: at least one per worker.
        let total = threads.max(w);
        let per = (total / w).max(1);
        for (kind, task) in [
            (ModelKind::Dnn, Task::Risk),
            (ModelKind::Lstm, Task::Counts),
        ] {
            let ds = task_data(task)?;
            let mut mcfg = ModelConfig::for_dataset(kind, &ds);
            mcfg.dropout = 0.0;
            // Interleaved: 1 worker with all threads (loading on, as the
            // station trainer runs), w workers sharing them with loading off
            // and on, 1 worker with 1 thread, and the ceiling.
            let cases = [(1, total, 1), (w, total, 0), (w, total, 1), (1, 1, 1)];
            let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
            let mut ceiling = Vec::new();
            for _ in 0..rounds {
                for (c, t) in cases.iter().zip(times.iter_mut()) {
                    t.push(parallel_side(&mcfg, &tcfg, &ds, *c)?);
                }
                ceiling.push(independent_speedup(&mcfg, &tcfg, &ds, w)?);
            }
            tch::set_num_threads(threads as i32);
            let best: Vec<f64> = times
                .iter()
                .map(|v| v.iter().copied().fold(f64::INFINITY, f64::min))
                .collect();
            let (one, off, on, single) = (best[0], best[1], best[2], best[3]);
            // The ceiling against the fair baseline: w independent 1-thread
            // trainings finish the epoch in `single / ceiling`.
            let ceiling = median(ceiling);
            let fair_ceiling = one / (single / ceiling);
            println!(
                "parallel {kind} ({task}, {} samples): 1 worker x {total} thread(s) {one:.3} s/epoch | {w} workers x {per} thread(s), loading off {off:.3} s/epoch ({:.2}x), loading on {on:.3} s/epoch ({:.2}x) | 1 worker x 1 thread {single:.3} s/epoch ({:.2}x with loading off, {:.2}x with loading on) | reference: {w} independent 1-thread trainings {ceiling:.2}x of 1 worker x 1 thread (median; the ceiling on this machine now), i.e. {fair_ceiling:.2}x of 1 worker x {total} threads; best data-parallel at {:.0}% of the ceiling",
                ds.len(),
                one / off,
                one / on,
                single / off,
                single / on,
                100.0 * (single / off.min(on)) / ceiling
            );
        }
    }
    Ok(())
}
