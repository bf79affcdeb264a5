//! `fedcrime-sim bench <name>`: benchmarks that compare with a reference
//! measured in the same run (see BENCHMARKS.md for the recorded figures).

pub mod data;

/// The benchmarks.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Bench {
    /// Load, clean and featurize an LAPD export (default: 1,000,000 synthetic
    /// rows) against pandas doing the same read and groupby on the same file.
    Data(data::DataBenchArgs),
}

/// Runs one benchmark.
pub fn run(bench: &Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Data(args) => data::run(args),
    }
}
