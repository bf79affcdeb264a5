//! Hyperparameter search over the paper's grid: learning rate 1e-4, 1e-3,
//! 1e-2; 3 to 5 layers; batch size 64, 128, 256; hidden width 64, 128, 256;
//! for the LSTM, 128 or 256 hidden units with learning rate 1e-3 or 5e-4.
//!
//! [`run_search`] trains one model per trial (the whole grid, or a seeded
//! random subset of it) on the training split with early stopping on the
//! validation split, and ranks the trials by the task's headline validation
//! metric (macro-F1 for `risk`, MAE for `counts`). Every trial starts from the
//! same seed, so trials differ only in their hyperparameters. Results render
//! as CSV and as a markdown table.

use std::fmt::Write as _;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use super::trainer::{TrainConfig, Trainer};
use super::{Result, TrainError};
use crate::model::{build, ModelConfig, ModelKind};
use fedcrime_data::{Splits, Task};

/// The values each hyperparameter takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    /// Learning rates.
    pub lr: Vec<f64>,
    /// Layer counts (hidden layers, LSTM layers or TCN blocks, per model).
    pub layers: Vec<usize>,
    /// Batch sizes.
    pub batch_size: Vec<usize>,
    /// Hidden widths.
    pub hidden: Vec<usize>,
}

impl SearchSpace {
    /// The paper's grid for a model: for `lstm`, hidden 128/256 and lr
    /// 1e-3/5e-4 (with `layers` fixed at `default_layers`); for the others,
    /// lr 1e-4/1e-3/1e-2, 3-5 layers and hidden 64/128/256. Batch sizes are
    /// 64/128/256 for all.
    pub fn paper(kind: ModelKind, default_layers: usize) -> Self {
        match kind {
            ModelKind::Lstm => Self {
                lr: vec![1e-3, 5e-4],
                layers: vec![default_layers],
                batch_size: vec![64, 128, 256],
                hidden: vec![128, 256],
            },
            ModelKind::Dnn | ModelKind::GatTcn => Self {
                lr: vec![1e-4, 1e-3, 1e-2],
                layers: vec![3, 4, 5],
                batch_size: vec![64, 128, 256],
                hidden: vec![64, 128, 256],
            },
        }
    }

    /// Every combination, in a fixed order (lr outermost, hidden innermost).
    pub fn grid(&self) -> Vec<Trial> {
        let mut out = Vec::new();
        for &lr in &self.lr {
            for &layers in &self.layers {
                for &batch_size in &self.batch_size {
                    for &hidden in &self.hidden {
                        out.push(Trial {
                            lr,
                            layers,
                            batch_size,
                            hidden,
                        });
                    }
                }
            }
        }
        out
    }

    /// The trials of a search mode: the whole grid, or `n` distinct
    /// combinations drawn with a seeded generator (in grid order).
    pub fn trials(&self, mode: SearchMode) -> Vec<Trial> {
        let grid = self.grid();
        match mode {
            SearchMode::Grid => grid,
            SearchMode::Random { trials, seed } => {
                let mut idx: Vec<usize> = (0..grid.len()).collect();
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                idx.shuffle(&mut rng);
                idx.truncate(trials);
                idx.sort_unstable();
                idx.into_iter().map(|i| grid[i]).collect()
            }
        }
    }
}

/// Whole grid or a random subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SearchMode {
    /// Every combination.
    Grid,
    /// `trials` distinct combinations drawn with `seed`.
    Random {
        /// Number of combinations (all of them when larger than the grid).
        trials: usize,
        /// Seeds the draw.
        seed: u64,
    },
}

/// One combination of hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Learning rate.
    pub lr: f64,
    /// Layers.
    pub layers: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Hidden width.
    pub hidden: usize,
}

/// The scores of a trial that trained to the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialScores {
    /// Epochs run (fewer than configured when stopped early).
    pub epochs_run: usize,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Validation loss of the kept weights.
    pub val_loss: f64,
    /// Validation metrics of the kept weights.
    pub val: Metrics,
    /// Test metrics of the kept weights (reported, never used for ranking).
    pub test: Metrics,
}

/// How a trial ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialOutcome {
    /// Trained and scored.
    Done(TrialScores),
    /// Training diverged (a non-finite loss); the message says where.
    Diverged(String),
}

/// The outcome of one trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    /// The hyperparameters.
    pub trial: Trial,
    /// Number of scalar parameters of the model.
    pub num_params: usize,
    /// Wall time of the trial.
    pub seconds: f64,
    /// Scores, or why there are none.
    pub outcome: TrialOutcome,
}

impl TrialResult {
    /// The scores of a finished trial.
    pub fn scores(&self) -> Option<&TrialScores> {
        match &self.outcome {
            TrialOutcome::Done(s) => Some(s),
            TrialOutcome::Diverged(_) => None,
        }
    }
}

/// Whether `a` ranks before `b`: finished trials by the headline validation
/// metric, then validation loss; diverged trials last.
fn better(a: &TrialResult, b: &TrialResult) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.scores(), b.scores()) {
        (Some(x), Some(y)) => {
            let (_, va) = x.val.headline();
            let (_, vb) = y.val.headline();
            let ord = match x.val.task() {
                Task::Risk => vb.total_cmp(&va),
                Task::Counts => va.total_cmp(&vb),
            };
            ord.then(x.val_loss.total_cmp(&y.val_loss))
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Trains one model per trial and returns the results, best first. A trial
/// whose training diverges is recorded as such and the search goes on.
/// `on_trial` is called after each trial (index, total, result).
pub fn run_search(
    base_model: &ModelConfig,
    base_train: &TrainConfig,
    splits: &Splits,
    trials: &[Trial],
    device: tch::Device,
    on_trial: &mut dyn FnMut(usize, usize, &TrialResult),
) -> Result<Vec<TrialResult>> {
    if splits.val.is_empty() {
        return Err(TrainError::EmptySplit {
            split: "validation",
        });
    }
    let mut results = Vec::with_capacity(trials.len());
    for (i, t) in trials.iter().enumerate() {
        let t0 = Instant::now();
        let mut mcfg = base_model.clone();
        mcfg.hidden = t.hidden;
        mcfg.layers = t.layers;
        let tcfg = TrainConfig {
            lr: t.lr,
            batch_size: t.batch_size,
            ..base_train.clone()
        };
        tch::manual_seed(tcfg.seed as i64);
        let model = build(&mcfg, device)?;
        let mut trainer = Trainer::new(model, tcfg)?;
        let num_params = trainer.model().num_params();
        let outcome = match score(&mut trainer, splits) {
            Ok(s) => TrialOutcome::Done(s),
            Err(e @ TrainError::NonFinite { .. }) => TrialOutcome::Diverged(e.to_string()),
            Err(e) => return Err(e),
        };
        let result = TrialResult {
            trial: *t,
            num_params,
            seconds: t0.elapsed().as_secs_f64(),
            outcome,
        };
        on_trial(i, trials.len(), &result);
        results.push(result);
    }
    results.sort_by(better);
    Ok(results)
}

/// Trains one trial's model and scores its kept weights.
fn score(trainer: &mut Trainer, splits: &Splits) -> Result<TrialScores> {
    let report = trainer.fit(&splits.train, Some(&splits.val))?;
    let kept = report.kept().cloned();
    let (best_epoch, val_loss, val) = match kept {
        Some(r) => match (r.val_loss, r.val_metrics) {
            (Some(l), Some(m)) => (r.epoch, l, m),
            _ => {
                let e = trainer.evaluate(&splits.val)?;
                (r.epoch, e.loss, e.metrics)
            }
        },
        None => {
            let e = trainer.evaluate(&splits.val)?;
            (0, e.loss, e.metrics)
        }
    };
    let test = trainer.evaluate(&splits.test)?.metrics;
    Ok(TrialScores {
        epochs_run: report.epochs.len(),
        best_epoch,
        val_loss,
        val,
        test,
    })
}

/// The search results as a table for `tune.csv`: the header and one row of
/// cells per trial, best first (any CSV writer quotes what needs it).
pub fn results_table(results: &[TrialResult]) -> (Vec<String>, Vec<Vec<String>>) {
    let common = ["rank", "lr", "layers", "batch_size", "hidden", "num_params"];
    let trial_cells = |rank: usize, r: &TrialResult| -> Vec<String> {
        let t = &r.trial;
        vec![
            (rank + 1).to_string(),
            t.lr.to_string(),
            t.layers.to_string(),
            t.batch_size.to_string(),
            t.hidden.to_string(),
            r.num_params.to_string(),
        ]
    };
    let Some(first) = results.iter().find_map(TrialResult::scores) else {
        let mut header: Vec<String> = common.map(String::from).into();
        header.extend(["seconds", "status"].map(String::from));
        let rows = results
            .iter()
            .enumerate()
            .map(|(rank, r)| {
                let mut c = trial_cells(rank, r);
                c.extend([format!("{:.3}", r.seconds), status(r)]);
                c
            })
            .collect();
        return (header, rows);
    };
    let names: Vec<String> = first.val.scalars().into_iter().map(|(n, _)| n).collect();
    let (test_name, _) = first.test.headline();
    let mut header: Vec<String> = common.map(String::from).into();
    header.extend(["epochs_run", "best_epoch", "val_loss"].map(String::from));
    header.extend(names.iter().map(|n| format!("val_{n}")));
    header.extend([
        format!("test_{test_name}"),
        "seconds".into(),
        "status".into(),
    ]);
    let rows = results
        .iter()
        .enumerate()
        .map(|(rank, r)| {
            let mut c = trial_cells(rank, r);
            match r.scores() {
                Some(x) => {
                    c.extend([
                        x.epochs_run.to_string(),
                        x.best_epoch.to_string(),
                        x.val_loss.to_string(),
                    ]);
                    c.extend(x.val.scalars().into_iter().map(|(_, v)| v.to_string()));
                    c.push(x.test.headline().1.to_string());
                }
                None => c.extend(std::iter::repeat_n(String::new(), names.len() + 4)),
            }
            c.extend([format!("{:.3}", r.seconds), status(r)]);
            c
        })
        .collect();
    (header, rows)
}

/// `ok`, or `diverged: <why>`.
fn status(r: &TrialResult) -> String {
    match &r.outcome {
        TrialOutcome::Done(_) => "ok".into(),
        TrialOutcome::Diverged(why) => format!("diverged: {why}"),
    }
}

/// The results as a markdown table, best first.
pub fn results_markdown(results: &[TrialResult]) -> String {
    let mut s = String::new();
    if results.is_empty() {
        return "(no trials)\n".into();
    }
    let head = results
        .iter()
        .find_map(TrialResult::scores)
        .map_or("metric", |x| x.val.headline().0);
    let _ = writeln!(
        s,
        "| rank | lr | layers | batch | hidden | params | epochs (best) | val loss | val {head} | test {head} | seconds |"
    );
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (rank, r) in results.iter().enumerate() {
        let t = &r.trial;
        let scores = match r.scores() {
            Some(x) => format!(
                "{} ({}) | {:.4} | {:.4} | {:.4}",
                x.epochs_run,
                x.best_epoch,
                x.val_loss,
                x.val.headline().1,
                x.test.headline().1
            ),
            None => "diverged | | |".to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            rank + 1,
            t.lr,
            t.layers,
            t.batch_size,
            t.hidden,
            r.num_params,
            scores,
            r.seconds
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::metrics::RiskMetrics;

    #[test]
    fn paper_grids_have_the_papers_sizes() {
        let dnn = SearchSpace::paper(ModelKind::Dnn, 3);
        assert_eq!(dnn.grid().len(), 81);
        let lstm = SearchSpace::paper(ModelKind::Lstm, 1);
        let g = lstm.grid();
        assert_eq!(g.len(), 12);
        assert!(g.iter().all(|t| t.lr == 1e-3 || t.lr == 5e-4));
        assert!(g.iter().all(|t| t.hidden == 128 || t.hidden == 256));
    }

    #[test]
    fn random_subsets_are_seeded_distinct_and_capped() {
        let space = SearchSpace::paper(ModelKind::Dnn, 3);
        let a = space.trials(SearchMode::Random { trials: 5, seed: 1 });
        let b = space.trials(SearchMode::Random { trials: 5, seed: 1 });
        let c = space.trials(SearchMode::Random { trials: 5, seed: 2 });
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 5);
        for (i, x) in a.iter().enumerate() {
            assert!(a[i + 1..].iter().all(|y| y != x));
        }
        let all = space.trials(SearchMode::Random {
            trials: 1000,
            seed: 3,
        });
        assert_eq!(all, space.grid());
    }

    fn trial(lr: f64) -> Trial {
        Trial {
            lr,
            layers: 3,
            batch_size: 64,
            hidden: 64,
        }
    }

    fn result(lr: f64, f1_labels: &[i64], val_loss: f64) -> TrialResult {
        let truth = [0, 1, 2, 3];
        let m = Metrics::Risk(RiskMetrics::compute(&truth, f1_labels, 5).unwrap());
        TrialResult {
            trial: trial(lr),
            num_params: 10,
            seconds: 0.5,
            outcome: TrialOutcome::Done(TrialScores {
                epochs_run: 2,
                best_epoch: 1,
                val_loss,
                val: m.clone(),
                test: m,
            }),
        }
    }

    #[test]
    fn ranking_uses_the_headline_metric_then_loss() {
        let diverged = TrialResult {
            trial: trial(1.0),
            num_params: 10,
            seconds: 0.1,
            outcome: TrialOutcome::Diverged("non-finite training loss at epoch 2, batch 3".into()),
        };
        let mut rs = [
            diverged,
            result(1e-4, &[0, 0, 0, 0], 1.0),
            result(1e-3, &[0, 1, 2, 3], 2.0),
            result(1e-2, &[0, 1, 2, 3], 1.5),
        ];
        rs.sort_by(better);
        let lrs: Vec<f64> = rs.iter().map(|r| r.trial.lr).collect();
        assert_eq!(lrs, [1e-2, 1e-3, 1e-4, 1.0]);
        let (header, rows) = results_table(&rs);
        assert_eq!(rows.len(), 4);
        assert_eq!(
            header[..5],
            ["rank", "lr", "layers", "batch_size", "hidden"]
        );
        assert!(header.iter().any(|h| h == "val_macro_f1"));
        assert_eq!(
            header[header.len() - 3..],
            ["test_macro_f1", "seconds", "status"]
        );
        assert_eq!(rows[0][..5], ["1", "0.01", "3", "64", "64"]);
        assert_eq!(rows[0].last().unwrap(), "ok");
        assert_eq!(
            rows[3].last().unwrap(),
            "diverged: non-finite training loss at epoch 2, batch 3"
        );
        assert!(rows.iter().all(|r| r.len() == header.len()), "{rows:?}");
        let md = results_markdown(&rs);
        assert_eq!(md.lines().count(), 6);
        assert!(md.contains("val macro_f1") && md.contains("| diverged |"));
    }
}
