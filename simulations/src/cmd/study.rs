//! `fedcrime-sim study <name>`: studies that compare training methods on
//! the same data from the same initial weights (see `fedcrime_sim::sim::study`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use fedcrime_data::{Period, Task};
use fedcrime_ml::model::ModelKind;
use fedcrime_ml::DeviceChoice;
use fedcrime_sim::sim::study::{study_parallel, StudySpec};
use fedcrime_sim::sim::{RunOptions, SimConfig};

use crate::GlobalOpts;

/// The studies.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Study {
    /// The parallelization study: for each model, one worker, data-parallel
    /// training with each --workers count, every other parallel trainer of
    /// this build (model parallelism with as many stages), and federated
    /// learning (FedAvg, one station per LAPD area, in memory), from the same
    /// initial weights to the same stopping rule and with the same total
    /// threads. Writes study.csv (time per epoch, speedup over one worker,
    /// samples/s, peak memory per worker, bytes communicated per epoch, time
    /// to one worker's best validation score, test score at the best
    /// validation step next to the naive baseline), report.md (the table,
    /// findings, the source study's claims against our numbers),
    /// metrics-<model>.csv and plots (study-time, study-speedup,
    /// study-convergence; .svg and .png). Uses the GPUs when CUDA is present
    /// (one replica per device), else the CPU.
    Parallel(ParallelArgs),
    /// The privacy/utility curve: the federation without differential
    /// privacy and with each --noise multiplier (central DP-FedAvg, adaptive
    /// clipping unless --dp-clip says otherwise), each judged at its best
    /// validation round. Writes privacy.csv, privacy.md (test metric, ε at
    /// δ = 1e-5), privacy.svg/.png and one simulate folder per noise level.
    Privacy(Box<super::privacy::PrivacyStudyArgs>),
}

/// Options of `fedcrime-sim study parallel`.
#[derive(Args, Debug, Clone)]
pub struct ParallelArgs {
    /// An LAPD export (.csv or .csv.gz) instead of the synthetic data.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Synthetic incidents to generate when no --data is given.
    #[arg(long, default_value_t = 200_000)]
    pub rows: usize,
    /// Days of synthetic data.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Models to study, comma-separated: dnn, lstm (on --task), gat-tcn
    /// (always the counts task, one station per bureau).
    #[arg(long, value_delimiter = ',', default_value = "dnn,lstm,gat-tcn")]
    pub models: Vec<ModelKind>,
    /// Worker counts of the parallel trainers, comma-separated: replicas
    /// of data parallelism (stages of model parallelism); one worker always
    /// runs as the reference. On CUDA each replica takes a device.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub workers: Vec<usize>,
    /// At most this many epochs per method (federated: rounds of one local
    /// epoch per station, one pass over the training data).
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    /// Epochs (rounds) without a better validation score (macro-F1 for
    /// risk, MAE for counts) before a method stops.
    #[arg(long, default_value_t = 10)]
    pub patience: u64,
    /// The task of dnn and lstm: risk or counts.
    #[arg(long, default_value = "risk")]
    pub task: Task,
    /// The period of the counts task: day or week.
    #[arg(long, default_value = "day")]
    pub period: Period,
    /// Samples per optimizer step, for every method.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Adam's learning rate, for every method.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Hidden width of every model (each architecture's default when absent).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Seed of the partition, initial model and training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the methods train: auto (CUDA when present, else the CPU),
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Output folder [default: runs/study-parallel-<timestamp>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

impl ParallelArgs {
    /// The study the flags describe, checked.
    pub fn spec(&self) -> Result<StudySpec> {
        if self.epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        if self.patience == 0 {
            bail!("--patience must be at least 1");
        }
        let mut base = SimConfig::default();
        base.data.file = self.data.clone();
        base.data.rows = self.rows;
        base.data.days = self.days;
        base.data.task = self.task;
        base.data.period = self.period;
        base.model.hidden = self.hidden;
        base.train.batch_size = self.batch_size;
        base.train.lr = self.lr;
        base.selection.max_epochs = self.epochs;
        base.selection.patience = self.patience;
        base.federation.device = self.device;
        base.seed = self.seed;
        let mut workers = self.workers.clone();
        workers.sort_unstable();
        workers.dedup();
        let mut models = Vec::new();
        for m in &self.models {
            if !models.contains(m) {
                models.push(*m);
            }
        }
        let spec = StudySpec {
            base,
            models,
            workers,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The output folder: `--out`, else `runs/study-parallel-<timestamp>`.
    pub fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| crate::cmd::simulate::default_out("study-parallel-"))
    }
}

/// Runs a study.
pub fn run(study: &Study, global: &GlobalOpts) -> Result<()> {
    match study {
        Study::Parallel(args) => {
            let spec = args.spec()?;
            let out = args.out();
            let outcome = study_parallel(
                &spec,
                &out,
                RunOptions {
                    quiet: global.quiet,
                    ..RunOptions::default()
                },
            )
            .with_context(|| format!("the parallelization study into {}", out.display()))?;
            if !global.quiet {
                println!("{}", outcome.report);
                eprintln!(
                    "wrote {}: study.csv, report.md, metrics-<model>.csv, study-time, study-speedup, study-convergence (.svg, .png)",
                    out.display()
                );
            }
            Ok(())
        }
        Study::Privacy(args) => super::privacy::study(args, global),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        study: Study,
    }

    #[test]
    fn study_parallel_flags_become_the_spec() {
        let cli = Cli::parse_from([
            "x",
            "parallel",
            "--models",
            "lstm,dnn,lstm",
            "--workers",
            "4,1,2,2",
            "--epochs",
            "3",
            "--device",
            "cpu",
        ]);
        let Study::Parallel(args) = cli.study else {
            panic!("a parallel study")
        };
        let spec = args.spec().unwrap();
        assert_eq!(spec.models, [ModelKind::Lstm, ModelKind::Dnn]);
        assert_eq!(spec.workers, [1, 2, 4]);
        assert_eq!(spec.base.selection.max_epochs, 3);
        assert!(args.out().to_string_lossy().contains("study-parallel-"));
    }

    #[test]
    fn bad_study_flags_are_clear_errors() {
        let e = Cli::try_parse_from(["x", "parallel", "--models", "cnn"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cnn"), "{e}");
        let e = Cli::try_parse_from(["x", "parallel", "--workers", "two"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("two"), "{e}");
        let cli = Cli::parse_from(["x", "parallel", "--workers", "0,2"]);
        let Study::Parallel(args) = cli.study else {
            panic!("a parallel study")
        };
        let e = args.spec().unwrap_err().to_string();
        assert!(e.contains("--workers"), "{e}");
        let cli = Cli::parse_from(["x", "parallel", "--epochs", "0"]);
        let Study::Parallel(args) = cli.study else {
            panic!("a parallel study")
        };
        let e = args.spec().unwrap_err().to_string();
        assert!(e.contains("--epochs"), "{e}");
    }
}
