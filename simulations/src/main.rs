//! `fedcrime-sim`: one-machine federations, data tools and centralized
//! baselines.
//!
//! Each subcommand lives in its own module under [`cmd`]; global options
//! (logging) are shared. Errors are printed with their whole chain and the
//! process exits non-zero.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fedcrime_cli::logging::{describe_error, init_tracing, LogFormat};

mod cmd;

fedcrime_cli::use_jemalloc!();

/// Federated crime prediction across LAPD precincts: one-machine runs, data
/// tools and baselines.
#[derive(Debug, Parser)]
#[command(name = "fedcrime-sim", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Log line format on stderr: human-readable text or one JSON object per
    /// line. The level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Only errors: no progress bars, no log lines below warnings, no
    /// summaries on stdout (--json output is still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate LA-like synthetic crime data in the city's CSV export format.
    Synth(cmd::synth::SynthArgs),
    /// Load and clean a crime data file and print the cleaning report.
    Inspect(cmd::inspect::InspectArgs),
    /// Build the risk or counts task from a crime data file and write its
    /// feature matrices, targets and featurizer for inspection.
    Features(cmd::features::FeaturesArgs),
    /// Run a whole federation on one machine next to centralized and
    /// data-parallel training; write metrics.csv, convergence plots and
    /// report.md.
    Simulate(Box<cmd::simulate::SimulateArgs>),
    /// Train one model centrally and compare it with the naive baselines.
    Train(cmd::train::TrainArgs),
    /// Grid or random search over the paper's hyperparameters.
    Tune(cmd::tune::TuneArgs),
    /// SHAP values of a trained model over its features grouped by source
    /// column (exact, KernelSHAP, GradientSHAP, Integrated Gradients):
    /// rankings, per-sample values, plots, additivity errors.
    Explain(Box<cmd::explain::ExplainArgs>),
    /// Group fairness of a trained model's predictions (areas, bureaus or
    /// your own area-to-group table): selection rates, demographic parity,
    /// equalized odds, error and bias per group.
    Fairness(Box<cmd::fairness::FairnessArgs>),
    /// The differential-privacy accountant: the (ε, δ) of T steps of the
    /// Poisson-subsampled Gaussian mechanism (Rényi DP, Mironov et al.
    /// 2019, agreeing with Google's dp-accounting), or with
    /// --target-epsilon the noise multiplier that meets a budget. The same
    /// accountant charges DP-FedAvg rounds at the server and DP-SGD steps at
    /// the stations.
    ///
    /// `fedcrime-sim privacy --sampling-rate 0.01 --noise-multiplier 1.1 --steps 10000`
    Privacy(cmd::privacy::PrivacyArgs),
    /// Run many stations in one process against a running fedcrime-server:
    /// load tests, poisoned-station studies, the chaos suite.
    Swarm(cmd::swarm::SwarmArgs),
    /// Studies comparing training methods on the same data from the same
    /// initial weights: `study parallel`, one worker against data-parallel,
    /// model-parallel and federated training.
    #[command(subcommand)]
    Study(cmd::study::Study),
    /// Benchmarks against a reference measured in the same run.
    #[command(subcommand)]
    Bench(cmd::bench::Bench),
}

fn init_logging(g: &GlobalOpts, command: &Command) {
    // Federations log every round and every station's epoch at info; their
    // progress bars say it better.
    let default = match (g.quiet, command) {
        (true, _) => "warn",
        (
            false,
            Command::Simulate(_) | Command::Study(_) | Command::Bench(cmd::bench::Bench::Rounds(_)),
        ) => "warn,fedcrime_sim=info",
        (false, _) => "info",
    };
    // a second initialization (never here) would only be refused
    let _ = init_tracing(
        g.log_format,
        default,
        fedcrime_sim::progress::log_writer,
        false,
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.global, &cli.command);
    fedcrime_ml::device::prepare();
    let result = match cli.command {
        Command::Synth(args) => cmd::synth::run(&args, &cli.global),
        Command::Inspect(args) => cmd::inspect::run(&args, &cli.global),
        Command::Features(args) => cmd::features::run(&args, &cli.global),
        Command::Simulate(args) => cmd::simulate::run(&args, &cli.global),
        Command::Train(args) => cmd::train::run(&args, &cli.global),
        Command::Tune(args) => cmd::tune::run(&args, &cli.global),
        Command::Explain(args) => cmd::explain::run(&args, &cli.global),
        Command::Fairness(args) => cmd::fairness::run(&args, &cli.global),
        Command::Privacy(args) => cmd::privacy::run(&args, &cli.global),
        Command::Swarm(args) => cmd::swarm::run(&args, &cli.global),
        Command::Study(study) => cmd::study::run(&study, &cli.global),
        Command::Bench(bench) => cmd::bench::run(&bench, &cli.global),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fedcrime-sim: error: {}", describe_error(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
