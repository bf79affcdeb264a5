//! `fedcrime-sim tune`: grid or random search over the paper's
//! hyperparameters (see [`fedcrime_ml::train::tune`]), writing
//! `tune.csv` and `tune.md` (trials ranked by the validation headline metric)
//! to `--out`.

use std::path::PathBuf;

use anyhow::Context;
use fedcrime_ml::train::tune::{
    results_markdown, results_table, run_search, SearchMode, SearchSpace,
};
use fedcrime_ml::train::TrainConfig;
use fedcrime_ml::DeviceChoice;

use super::train::{DataArgs, ModelArgs};
use crate::GlobalOpts;

/// Options of `fedcrime-sim tune`.
#[derive(clap::Args, Debug, Clone)]
pub struct TuneArgs {
    /// The data and the task.
    #[command(flatten)]
    pub data: DataArgs,
    /// The model (its `--hidden`/`--layers` are the search's starting point only).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Try this many random combinations of the grid instead of all of them.
    #[arg(long)]
    pub trials: Option<usize>,
    /// Maximum epochs per trial.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Early-stopping patience per trial.
    #[arg(long, default_value_t = 3)]
    pub patience: usize,
    /// Seed of the models, the shuffling and the random draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to train: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// libtorch intra-op threads (libtorch's default when absent).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs the command.
pub fn run(args: &TuneArgs, global: &GlobalOpts) -> anyhow::Result<()> {
    if let Some(t) = args.threads {
        tch::set_num_threads(t as i32);
    }
    let data = args.data.task_data()?;
    let graph_splits = args.model.model_splits(&data, args.data.period)?;
    let splits = graph_splits.as_ref().unwrap_or(&data.splits);
    let mcfg = args.model.config(&splits.train)?;
    let device = args.device.resolve().map_err(anyhow::Error::msg)?;
    let tcfg = TrainConfig {
        epochs: args.epochs,
        patience: args.patience,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let space = SearchSpace::paper(mcfg.kind, mcfg.layers);
    let mode = match args.trials {
        Some(trials) => SearchMode::Random {
            trials,
            seed: args.seed,
        },
        None => SearchMode::Grid,
    };
    let trials = space.trials(mode);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    tracing::info!(
        "tune {} on {} ({}): {} trial(s) of up to {} epochs",
        mcfg.kind,
        args.data.task,
        args.data.source(),
        trials.len(),
        args.epochs
    );
    let results = run_search(&mcfg, &tcfg, splits, &trials, device, &mut |i, n, r| {
        let t = &r.trial;
        let what = match r.scores() {
            Some(x) => {
                let (name, v) = x.val.headline();
                format!("val loss {:.4}, val {name} {v:.4}", x.val_loss)
            }
            None => format!("{:?}", r.outcome),
        };
        tracing::info!(
            "[{}/{n}] lr {} layers {} batch {} hidden {}: {what} ({:.1} s)",
            i + 1,
            t.lr,
            t.layers,
            t.batch_size,
            t.hidden,
            r.seconds
        );
    })?;
    let csv_path = args.out.join("tune.csv");
    let (header, rows) = results_table(&results);
    fedcrime_files::CsvLog::create(&csv_path, &header, rows)?;
    let md = format!(
        "# Hyperparameter search: {} on {} ({})\n\nRanked by the validation headline metric; test shown for reference only.\n\n{}",
        mcfg.kind,
        args.data.task,
        args.data.source(),
        results_markdown(&results)
    );
    let md_path = args.out.join("tune.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    if !global.quiet {
        println!("{md}");
    }
    Ok(())
}
