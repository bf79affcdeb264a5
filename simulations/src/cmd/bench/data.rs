//! `fedcrime-sim bench data`: load, clean and featurize an LAPD export
//! (by default freshly generated synthetic rows) and compare with pandas doing
//! the same read and the same grouping on the same file, in the same run.
//!
//! Ours, in-process and timed separately: `load_path` (streaming parse of all
//! 28 columns, cleaning, de-duplication, imputation), then `build_task` for
//! `risk` (per area, date and 4-hour block) and for `counts` (per area, day and
//! category), each including the full grid, all features, scaling and the
//! temporal split. The reference, `.ci/bench/data_pandas.py`, runs in the same
//! run on the same file: `read_csv`, de-duplication, parsing both dates, crime
//! codes to categories, and the two groupbys (it does not featurize, so the
//! comparison favours pandas). Its time is measured inside the script, so
//! interpreter start-up and imports are not counted. The two sides alternate
//! `--repeat` times (ours, pandas, ours, ...) and the report gives each side's
//! best and median and their ratios, since shared machines are noisy. Peak
//! memory is our resident-set high-water mark (`VmHWM`, reset before the first
//! load so that the generator does not count) and the script's `ru_maxrss`.
//!
//! It also times our hand-written record splitter against the `csv` crate's
//! `ByteRecord` reader doing the same work (both on one thread, with the same
//! field parsing and cleaning after the split, and checked to keep the same
//! incidents), so the choice of splitter stays a measured one.
//!
//!     cargo build --release -p fedcrime-sim
//!     target/release/fedcrime-sim bench data --rows 1000000

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use fedcrime_data::loader::{load_path, load_path_csv_crate, load_path_with, LoadOptions};
use fedcrime_data::synth::{self, SynthConfig};
use fedcrime_data::tasks::{build_task, Period, TaskConfig};
use fedcrime_data::{Category, Task};
use serde::Serialize;

/// Options of `fedcrime-sim bench data`.
#[derive(clap::Args, Debug, Clone)]
pub struct DataBenchArgs {
    /// Synthetic rows to generate (ignored with --data).
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Benchmark this export instead of generating one.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Folder for the generated CSV (default: the system temp folder).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the generated CSV.
    #[arg(long)]
    pub keep: bool,
    /// Python with pandas (default: $VIRTUAL_ENV/bin/python, else python3).
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// The pandas reference script.
    #[arg(long, default_value = ".ci/bench/data_pandas.py", value_name = "FILE")]
    pub script: PathBuf,
    /// Skip the pandas reference.
    #[arg(long)]
    pub no_pandas: bool,
    /// Runs of each side, interleaved (ours, pandas, ours, ...); the
    /// report gives the best and the median.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One timed run of our pipeline.
#[derive(Clone, Debug, Serialize)]
struct OursRun {
    load_clean_seconds: f64,
    risk_seconds: f64,
    counts_seconds: f64,
    seconds: f64,
}

/// What the benchmark measured.
#[derive(Debug, Serialize)]
struct Report {
    file: String,
    file_mb: f64,
    rows_read: u64,
    rows_kept: usize,
    risk_samples: usize,
    counts_samples: usize,
    generate_seconds: Option<f64>,
    threads: usize,
    repeat: usize,
    /// Our runs, in order.
    ours: Vec<OursRun>,
    /// The pandas reports, in order (interleaved with ours).
    pandas: Vec<serde_json::Value>,
    ours_best_seconds: f64,
    ours_median_seconds: f64,
    ours_peak_rss_mb: Option<f64>,
    pandas_best_seconds: Option<f64>,
    pandas_median_seconds: Option<f64>,
    pandas_peak_rss_mb: Option<f64>,
    /// pandas best / ours best.
    speedup_best: Option<f64>,
    /// pandas median / ours median.
    speedup_median: Option<f64>,
    /// Load and clean on one thread with our record splitter, seconds per run.
    splitter_ours_seconds: Vec<f64>,
    /// The same with the `csv` crate's `ByteRecord` reader splitting, seconds per run.
    splitter_csv_crate_seconds: Vec<f64>,
    /// csv crate best / ours best (above 1: ours is faster).
    splitter_ratio_best: f64,
}

/// Runs the benchmark.
pub fn run(args: &DataBenchArgs) -> anyhow::Result<()> {
    let mut generated = None;
    let mut generate_seconds = None;
    let file = match &args.data {
        Some(f) => f.clone(),
        None => {
            let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!(
                "fedcrime-bench-{}-{}-{}.csv",
                args.rows,
                args.seed,
                std::process::id()
            ));
            let t = Instant::now();
            let out = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut out = BufWriter::with_capacity(1 << 20, out);
            let cfg = SynthConfig::new(args.rows, args.seed);
            synth::generate(&cfg, &mut out)?;
            out.flush()?;
            drop(out);
            generate_seconds = Some(t.elapsed().as_secs_f64());
            generated = Some(path.clone());
            path
        }
    };
    let result = measure(args, &file, generate_seconds);
    if let Some(path) = &generated {
        if args.keep {
            eprintln!("kept {}", path.display());
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn measure(
    args: &DataBenchArgs,
    file: &Path,
    generate_seconds: Option<f64>,
) -> anyhow::Result<Report> {
    let file_mb = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len() as f64
        / 1e6;
    let repeat = args.repeat.max(1);
    let mut ours = Vec::with_capacity(repeat);
    let mut pandas = Vec::with_capacity(repeat);
    let mut sizes = (0, 0, 0, 0);
    reset_peak_rss();
    for _ in 0..repeat {
        let t = Instant::now();
        let loaded = load_path(file).with_context(|| format!("loading {}", file.display()))?;
        let load_clean_seconds = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let risk = build_task(&loaded.incidents, &TaskConfig::new(Task::Risk))?;
        let risk_seconds = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let counts_cfg = TaskConfig {
            task: Task::Counts,
            period: Period::Day,
            ..TaskConfig::default()
        };
        let counts = build_task(&loaded.incidents, &counts_cfg)?;
        let counts_seconds = t.elapsed().as_secs_f64();
        let samples = |s: &fedcrime_data::Splits| s.train.len() + s.val.len() + s.test.len();
        sizes = (
            loaded.report.rows_read,
            loaded.incidents.len(),
            samples(&risk.splits),
            samples(&counts.splits),
        );
        ours.push(OursRun {
            load_clean_seconds,
            risk_seconds,
            counts_seconds,
            seconds: load_clean_seconds + risk_seconds + counts_seconds,
        });
        drop((loaded, risk, counts));
        if !args.no_pandas {
            pandas.push(run_pandas(args, file)?);
        }
    }
    let ours_peak_rss_mb = peak_rss_mb();
    let (splitter_ours_seconds, splitter_csv_crate_seconds) = splitters(file, repeat)?;
    let splitter_ratio_best = best_median(&splitter_csv_crate_seconds).map_or(f64::NAN, |b| b.0)
        / best_median(&splitter_ours_seconds).map_or(f64::NAN, |b| b.0);
    let ours_times: Vec<f64> = ours.iter().map(|r| r.seconds).collect();
    let pandas_times: Vec<f64> = pandas.iter().filter_map(|p| field(p, "seconds")).collect();
    let (ours_best, ours_median) = best_median(&ours_times).unwrap_or((f64::NAN, f64::NAN));
    let pandas_stats = best_median(&pandas_times);
    Ok(Report {
        file: file.display().to_string(),
        file_mb,
        rows_read: sizes.0,
        rows_kept: sizes.1,
        risk_samples: sizes.2,
        counts_samples: sizes.3,
        generate_seconds,
        threads: std::thread::available_parallelism().map_or(1, usize::from),
        repeat,
        ours_best_seconds: ours_best,
        ours_median_seconds: ours_median,
        ours_peak_rss_mb,
        pandas_best_seconds: pandas_stats.map(|s| s.0),
        pandas_median_seconds: pandas_stats.map(|s| s.1),
        pandas_peak_rss_mb: pandas
            .iter()
            .filter_map(|p| field(p, "peak_rss_mb"))
            .reduce(f64::max),
        speedup_best: pandas_stats.map(|s| s.0 / ours_best),
        speedup_median: pandas_stats.map(|s| s.1 / ours_median),
        ours,
        pandas,
        splitter_ours_seconds,
        splitter_csv_crate_seconds,
        splitter_ratio_best,
    })
}

/// Our loader on one thread against the same loader with the `csv` crate
/// splitting the records (same parsing and cleaning after), interleaved
/// `repeat` times; both must keep the same incidents.
fn splitters(file: &Path, repeat: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let one_thread = LoadOptions {
        threads: 1,
        ..LoadOptions::default()
    };
    let mut ours = Vec::with_capacity(repeat);
    let mut theirs = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        let a = load_path_with(file, &one_thread)?;
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let b = load_path_csv_crate(file)?;
        theirs.push(t.elapsed().as_secs_f64());
        if a.incidents != b.incidents || a.report.rows_read != b.report.rows_read {
            bail!("the csv-crate reference loaded different incidents than ours");
        }
    }
    Ok((ours, theirs))
}

fn field(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get(key).and_then(serde_json::Value::as_f64)
}

/// The least and the median of `xs`, if any.
fn best_median(xs: &[f64]) -> Option<(f64, f64)> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let best = *v.first()?;
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Some((best, median))
}

/// Runs the pandas reference on `file` and returns its JSON report.
fn run_pandas(args: &DataBenchArgs, file: &Path) -> anyhow::Result<serde_json::Value> {
    let python = args.python.clone().unwrap_or_else(|| {
        std::env::var_os("VIRTUAL_ENV")
            .map(|v| PathBuf::from(v).join("bin/python"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("python3"))
    });
    // Both sides categorize crime codes with the same table.
    let lut_path =
        std::env::temp_dir().join(format!("fedcrime-crime-lut-{}.json", std::process::id()));
    let codes: serde_json::Map<String, serde_json::Value> = (0u16..10_000)
        .map(|c| (c, Category::from_crime_code(c)))
        .filter(|&(_, cat)| cat != Category::Other)
        .map(|(c, cat)| (c.to_string(), cat.index().into()))
        .collect();
    let lut = serde_json::json!({ "other": Category::Other.index(), "codes": codes });
    std::fs::write(&lut_path, serde_json::to_vec(&lut)?)?;
    let out = Command::new(&python)
        .arg(&args.script)
        .arg(file)
        .arg("--lut")
        .arg(&lut_path)
        .output()
        .with_context(|| format!("running {} {}", python.display(), args.script.display()));
    let _ = std::fs::remove_file(&lut_path);
    let out = out?;
    if !out.status.success() {
        bail!(
            "the pandas reference failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("parsing the pandas report {line:?}"))
}

/// Resets the kernel's resident-set high-water mark of this process (Linux;
/// elsewhere a no-op).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The resident-set high-water mark in MB (Linux `VmHWM`), if known.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn print_table(r: &Report) {
    println!("file                 {} ({:.1} MB)", r.file, r.file_mb);
    if let Some(g) = r.generate_seconds {
        println!("synthetic rows       {} generated in {g:.2} s", r.rows_read);
    }
    println!("rows read / kept     {} / {}", r.rows_read, r.rows_kept);
    println!(
        "samples              risk {}, counts (day) {}",
        r.risk_samples, r.counts_samples
    );
    println!("threads              {}", r.threads);
    for (i, o) in r.ours.iter().enumerate() {
        print!(
            "run {}: ours {:7.3} s (load+clean {:.3}, risk {:.3}, counts {:.3})",
            i + 1,
            o.seconds,
            o.load_clean_seconds,
            o.risk_seconds,
            o.counts_seconds
        );
        match r.pandas.get(i) {
            Some(p) => {
                let f = |k: &str| field(p, k).unwrap_or(f64::NAN);
                println!(
                    " | pandas {:7.3} s (read_csv {:.3}, clean {:.3}, groupby {:.3})",
                    f("seconds"),
                    f("read_seconds"),
                    f("clean_seconds"),
                    f("groupby_seconds")
                );
            }
            None => println!(),
        }
    }
    println!(
        "ours                 best {:.3} s, median {:.3} s, peak RSS {}",
        r.ours_best_seconds,
        r.ours_median_seconds,
        r.ours_peak_rss_mb
            .map_or("?".into(), |m| format!("{m:.1} MB"))
    );
    if let (Some(b), Some(m)) = (r.pandas_best_seconds, r.pandas_median_seconds) {
        let version = r
            .pandas
            .first()
            .and_then(|p| p.get("pandas"))
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        println!(
            "pandas {version:<13} best {b:.3} s, median {m:.3} s, peak RSS {}",
            r.pandas_peak_rss_mb
                .map_or("?".into(), |m| format!("{m:.1} MB"))
        );
    }
    if let (Some(b), Some(m)) = (r.speedup_best, r.speedup_median) {
        println!(
            "speed-up vs pandas   {b:.2}x best-of-{}, {m:.2}x median",
            r.repeat
        );
    }
    println!(
        "record splitter      ours {:.3} s, csv crate {:.3} s (best of {}, one thread, same parsing and cleaning): ours {:.2}x faster",
        best_median(&r.splitter_ours_seconds).map_or(f64::NAN, |b| b.0),
        best_median(&r.splitter_csv_crate_seconds).map_or(f64::NAN, |b| b.0),
        r.repeat,
        r.splitter_ratio_best
    );
}
