//! `fedcrime-sim bench <name>`: benchmarks that compare with a reference
//! measured in the same run (see BENCHMARKS.md for the recorded figures).

pub mod data;
pub mod micro;
pub mod rounds;
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
    /// Framework overhead per federated round without training (QUIC or
    /// memory), against memcpy and TCP loopback copies of the same bytes.
    Rounds(rounds::BenchRoundsArgs),
    /// Encode + decode of a model on the wire (default 10M parameters)
    /// against a memcpy of the same bytes.
    Wire(micro::WireBenchArgs),
    /// A 40 MB update over QUIC with mutual TLS on loopback against a plain
    /// TCP loopback copy of the same bytes.
    Transport(micro::TransportBenchArgs),
    /// Aggregating 21 updates (FedAvg, FedMedian, Krum) at 1M and 10M
    /// parameters against a memcpy of the same bytes.
    Aggregation(micro::AggregationBenchArgs),
    /// Secure aggregation (SecAgg+) rounds at several sizes: each side's
    /// compute and each station's bytes, against the plaintext weighted
    /// average of the same updates.
    Secagg(micro::SecAggBenchArgs),
}

/// Runs one benchmark.
pub fn run(bench: &Bench, global: &crate::GlobalOpts) -> anyhow::Result<()> {
    match bench {
        Bench::Data(args) => data::run(args),
        Bench::Train(args) => train::run(args),
        Bench::Rounds(args) => rounds::run(args, global),
        Bench::Wire(args) => micro::wire(args),
        Bench::Transport(args) => micro::transport(args),
        Bench::Aggregation(args) => micro::aggregation(args),
        Bench::Secagg(args) => micro::secagg(args),
    }
}
