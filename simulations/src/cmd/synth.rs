//! `fedcrime-sim synth`: LA-like synthetic crime data in the city's CSV
//! export format (see `fedcrime_data::synth`).

use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use fedcrime_data::synth::{self, Compression, SynthConfig};
use fedcrime_data::{calendar, schema};
use fedcrime_files::AtomicFile;
use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use crate::GlobalOpts;

/// Options of `fedcrime-sim synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Number of incidents (CSV rows) to generate.
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Random seed: the same seed and options give the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file; ending in .gz writes gzip-compressed CSV (e.g. data.csv.gz).
    /// Written to a temporary name first and renamed when complete.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// First day of occurrence, YYYY-MM-DD.
    #[arg(long, value_name = "DATE", default_value = "2023-01-01")]
    pub start_date: String,
    /// Number of days of occurrence, from --start-date on.
    #[arg(long, default_value_t = SynthConfig::DEFAULT_DAYS)]
    pub days: u32,
}

impl SynthArgs {
    /// The validated generator configuration.
    fn config(&self) -> Result<SynthConfig> {
        let Some(start) = schema::parse_iso_date(&self.start_date) else {
            bail!(
                "--start-date {:?} is not a date like 2023-01-01",
                self.start_date
            );
        };
        let cfg = SynthConfig {
            rows: self.rows,
            seed: self.seed,
            start,
            days: self.days,
            compression: Compression::from_path(&self.out),
            ..SynthConfig::new(self.rows, self.seed)
        };
        cfg.validate().context("invalid options")?;
        Ok(cfg)
    }
}

/// Runs `fedcrime-sim synth`.
pub fn run(args: &SynthArgs, global: &GlobalOpts) -> Result<()> {
    let cfg = args.config()?;
    // Written to a temp file that replaces the output only once complete
    // and on disk.
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = AtomicFile::create(&args.out)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let bar = if global.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(cfg.rows as u64).with_style(
            ProgressStyle::with_template(
                "{spinner} synth {bar:40} {human_pos}/{human_len} rows {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let t0 = Instant::now();
    let result = synth::generate_with_progress(&cfg, &mut out, &|n| bar.set_position(n));
    bar.finish_and_clear();
    let summary = match result {
        Ok(s) => s,
        // Dropping the unfinished file removes it.
        Err(e) => return Err(e).with_context(|| format!("cannot generate {}", args.out.display())),
    };
    out.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", args.out.display()))?
        .commit()?;
    let secs = t0.elapsed().as_secs_f64();
    info!(
        rows = summary.rows,
        bytes = summary.bytes,
        seconds = secs,
        out = %args.out.display(),
        "synthetic data written"
    );
    if !global.quiet {
        println!(
            "wrote {} rows ({:.1} MB, {} .. {}) to {} in {:.2} s",
            summary.rows,
            summary.bytes as f64 / 1e6,
            calendar::iso_date(summary.date_min),
            calendar::iso_date(summary.date_max),
            args.out.display(),
            secs
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_data::loader::load_path;

    fn args(out: PathBuf) -> SynthArgs {
        SynthArgs {
            rows: 2_000,
            seed: 4,
            out,
            start_date: "2024-02-01".into(),
            days: 29,
        }
    }

    #[test]
    fn writes_a_file_the_loader_reads() {
        let dir = std::env::temp_dir().join(format!("fedcrime-sim-synth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("s.csv.gz");
        let quiet = GlobalOpts {
            log_format: crate::LogFormat::Text,
            quiet: true,
        };
        run(&args(out.clone()), &quiet).unwrap();
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["s.csv.gz"], "only the finished file is left");
        let loaded = load_path(&out).unwrap();
        assert_eq!(loaded.report.rows_kept, 2_000);
        assert_eq!(loaded.report.date_min, schema::parse_iso_date("2024-02-01"));
        assert!(loaded.report.date_max <= schema::parse_iso_date("2024-02-29"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_options_are_errors() {
        let mut a = args(PathBuf::from("x.csv"));
        a.start_date = "02/01/2024".into();
        assert!(a.config().is_err());
        let mut a = args(PathBuf::from("x.csv"));
        a.rows = 0;
        let err = format!("{:#}", a.config().unwrap_err());
        assert!(err.contains("rows"), "{err}");
        let a = args(PathBuf::from("dir/x.csv.gz"));
        assert_eq!(a.config().unwrap().compression, Compression::Gzip);
    }
}
