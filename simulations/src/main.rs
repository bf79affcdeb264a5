//! `fedcrime-sim`: one-machine federations, data tools and centralized baselines.

#![allow(dead_code)]

use clap::{Parser, Subcommand};

mod cmd;
mod plot;

/// One-machine federations, data tools and centralized baselines for fedcrime studies.
#[derive(Parser, Debug)]
#[command(name = "fedcrime-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Trains one model centrally and compares it with the naive baselines.
    Train(cmd::train::TrainArgs),
    /// Grid or random search over the paper's hyperparameters.
    Tune(cmd::tune::TuneArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Training throughput vs PyTorch, and the data-parallel speedup.
    Train(cmd::bench_train::BenchTrainArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Train(a) => cmd::train::run(a),
        Command::Tune(a) => cmd::tune::run(a),
        Command::Bench(Bench::Train(a)) => cmd::bench_train::run(a),
    };
    if let Err(e) = outcome {
        eprintln!("fedcrime-sim: error: {e:#}");
        std::process::exit(1);
    }
}
