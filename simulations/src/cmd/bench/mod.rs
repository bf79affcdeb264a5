//! `fedcrime-sim bench <name>`: benchmarks that compare with a reference
//! measured in the same run (see BENCHMARKS.md for the recorded figures).

pub mod data;
pub mod train;

/// The benchmarks.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Bench {
    /// Load, clean and featurize an LAPD export (default: 1,000,000 synthetic
    /// rows) against pandas doing the same read and groupby on the same file.
    Data(data::DataBenchArgs),
    /// Training throughput of dnn (risk) and lstm (counts) against the same
    /// architectures trained by PyTorch from Python with the same threads,
    /// and the data-parallel trainer's speedup over one worker.
    Train(train::BenchTrainArgs),
}

/// Runs one benchmark.
pub fn run(bench: &Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Data(args) => data::run(args),
        Bench::Train(args) => train::run(args),
    }
}
