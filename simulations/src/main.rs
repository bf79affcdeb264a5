//! `fedcrime-sim`: one-machine federations, data tools and centralized baselines.

use clap::{Parser, Subcommand};

mod cmd;

/// One-machine federations, data tools and centralized baselines.
#[derive(Parser, Debug)]
#[command(name = "fedcrime-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build the risk or counts task from an LAPD export and write its feature
    /// matrices, targets and featurizer for inspection.
    Features(cmd::features::FeaturesArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Features(args) => cmd::features::run(args),
    };
    if let Err(e) = result {
        eprintln!("fedcrime-sim: error: {e:#}");
        std::process::exit(1);
    }
}
