//! `fedcrime-sim synth`: LA-like synthetic crime data in the city's CSV
//! export format (see `fedcrime_common::data::synth`).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use fedcrime_common::data::schema;
use fedcrime_common::data::synth::{self, Compression, SynthConfig};
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

/// The name the output is written under until it is complete.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

/// Runs `fedcrime-sim synth`.
pub fn run(args: &SynthArgs, global: &GlobalOpts) -> Result<()> {
    let cfg = args.config()?;
    let tmp = partial_path(&args.out);
    let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
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
    let result =
        synth::generate_with_progress(&cfg, BufWriter::with_capacity(1 << 20, file), &|n| {
            bar.set_position(n)
        });
    bar.finish_and_clear();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            // best effort: the partial file is useless
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot generate {}", args.out.display()));
        }
    };
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), args.out.display()))?;
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
            schema::iso_date(summary.date_min),
            schema::iso_date(summary.date_max),
            args.out.display(),
            secs
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_common::data::loader::load_path;

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
        assert!(!partial_path(&out).exists());
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
        assert_eq!(
            partial_path(Path::new("dir/x.csv.gz")),
            PathBuf::from("dir/x.csv.gz.partial")
        );
    }
}
