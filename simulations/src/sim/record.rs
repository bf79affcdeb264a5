//! `metrics.csv`: one row per round (federated) or epoch (centralized) per
//! method, written as the run goes (each row flushed), and read back for
//! tests and reports.
//!
//! Columns: `method, step, wall_seconds, bytes_sent, grad_steps, samples,
//! train_loss, val_loss`, the task's validation metrics (`val_accuracy`,
//! `val_macro_f1`, ... for risk; `val_mae`, ... for counts), `test_loss` and
//! the same metrics on the test split, then `best_step` and
//! `test_<headline>_at_best`: the step with the best validation headline so
//! far and its test headline (the last row of a method gives the model the
//! method selects). `grad_steps` and `samples` count optimizer steps and
//! samples processed so far, summed over the stations for a federation.
//! `wall_seconds` is the time the method has taken so far,
//! without the study's scoring: for the federation the round engine's clock
//! (connecting, sending, training, receiving, aggregating), for the
//! centralized methods their training loops. `bytes_sent` is the cumulative
//! traffic of the round messages in both directions (0 for centralized
//! methods). With differential privacy on, a last column `epsilon` holds
//! the federation's cumulative ε after each round (at the configured δ).

use std::path::Path;

use anyhow::Result;

use fedcrime_data::Task;
use fedcrime_files::{read_csv, CsvLog};
use fedcrime_ml::train::Metrics;

use super::eval::Scores;

/// One measurement of one method.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `fedavg`, `centralized`, `data-parallel-2`, ...
    pub method: String,
    /// Round (federated) or epoch (centralized), from 1.
    pub step: u64,
    /// Seconds the method has taken so far (see the module docs).
    pub wall_seconds: f64,
    /// Bytes sent so far, both directions.
    pub bytes_sent: u64,
    /// Optimizer steps so far (summed over stations).
    pub grad_steps: u64,
    /// Training samples processed so far (summed over stations).
    pub samples: u64,
    /// Training loss of the round or epoch (example-weighted over stations).
    pub train_loss: Option<f64>,
    /// Scores on the pooled validation split.
    pub val: Scores,
    /// Scores on the pooled test split.
    pub test: Scores,
    /// The step with the best validation headline so far, and its test headline.
    pub best: Option<(u64, f64)>,
    /// Differential privacy: the cumulative ε after this step.
    pub epsilon: Option<f64>,
}

/// Picks the best validation step as rows arrive, with the rule early
/// stopping uses: a step is better when its validation headline beats the
/// best so far by more than `min_delta` (higher macro-F1, lower MAE).
#[derive(Clone, Debug)]
pub struct BestTracker {
    higher_is_better: bool,
    min_delta: f64,
    best: Option<(u64, f64, f64)>,
}

impl BestTracker {
    /// A tracker for a task whose headline is maximized when `higher_is_better`.
    pub fn new(higher_is_better: bool, min_delta: f64) -> Self {
        BestTracker {
            higher_is_better,
            min_delta,
            best: None,
        }
    }

    /// Records `row` and fills its [`Row::best`].
    pub fn update(&mut self, row: &mut Row) {
        let v = row.val.headline();
        let better = v.is_finite()
            && self.best.is_none_or(|(_, b, _)| {
                if self.higher_is_better {
                    v > b + self.min_delta
                } else {
                    v < b - self.min_delta
                }
            });
        if better {
            self.best = Some((row.step, v, row.test.headline()));
        }
        row.best = self.best.map(|(step, _, test)| (step, test));
    }
}

/// The header of `metrics.csv` for a task with `output_dim` classes or count dimensions.
pub fn header(task: Task, output_dim: usize) -> Vec<String> {
    let names = Metrics::scalar_names(task, output_dim);
    let mut h: Vec<String> = [
        "method",
        "step",
        "wall_seconds",
        "bytes_sent",
        "grad_steps",
        "samples",
        "train_loss",
        "val_loss",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    h.extend(names.iter().map(|n| format!("val_{n}")));
    h.push("test_loss".into());
    h.extend(names.iter().map(|n| format!("test_{n}")));
    h.push("best_step".into());
    h.push(format!("test_{}_at_best", headline_name(task)));
    h
}

/// The task's headline metric: `macro_f1` (risk) or `mae` (counts).
pub fn headline_name(task: Task) -> &'static str {
    match task {
        Task::Risk => "macro_f1",
        Task::Counts => "mae",
    }
}

/// A number for the CSV: empty when undefined.
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        String::new()
    }
}

/// The CSV cells of `row`, in [`header`] order.
pub fn cells(row: &Row) -> Vec<String> {
    let mut c = vec![
        row.method.clone(),
        row.step.to_string(),
        format!("{:.4}", row.wall_seconds),
        row.bytes_sent.to_string(),
        row.grad_steps.to_string(),
        row.samples.to_string(),
        row.train_loss.map(num).unwrap_or_default(),
    ];
    for scores in [&row.val, &row.test] {
        c.push(num(scores.loss));
        c.extend(scores.metrics.scalars().into_iter().map(|(_, v)| num(v)));
    }
    match row.best {
        Some((step, test)) => {
            c.push(step.to_string());
            c.push(num(test));
        }
        None => c.extend([String::new(), String::new()]),
    }
    c
}

/// `metrics.csv`, written row by row (each row on disk before the next).
#[derive(Debug)]
pub struct MetricsCsv {
    log: CsvLog,
    epsilon: bool,
}

impl MetricsCsv {
    /// Creates the file and writes the header.
    pub fn create(path: &Path, task: Task, output_dim: usize) -> Result<Self> {
        Self::create_with(path, task, output_dim, false)
    }

    /// [`MetricsCsv::create`], with the `epsilon` column when `epsilon`.
    pub fn create_with(path: &Path, task: Task, output_dim: usize, epsilon: bool) -> Result<Self> {
        let mut h = header(task, output_dim);
        if epsilon {
            h.push("epsilon".into());
        }
        let log = CsvLog::create(path, &h, Vec::<Vec<String>>::new())?;
        Ok(MetricsCsv { log, epsilon })
    }

    /// Appends a row.
    pub fn push(&mut self, row: &Row) -> Result<()> {
        let mut c = cells(row);
        if self.epsilon {
            c.push(row.epsilon.map(num).unwrap_or_default());
        }
        Ok(self.log.append(&c)?)
    }
}

/// `metrics.csv` read back: the header and each row's cells by column.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvTable {
    /// Column names.
    pub header: Vec<String>,
    /// Cells, one vector per row.
    pub rows: Vec<Vec<String>>,
}

impl CsvTable {
    /// Reads a `metrics.csv`.
    pub fn read(path: &Path) -> Result<Self> {
        let (header, rows) = read_csv(path)?;
        Ok(CsvTable { header, rows })
    }

    /// The column named `name`, if any.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// The rows of `method`.
    pub fn method<'a>(&'a self, method: &'a str) -> impl Iterator<Item = &'a Vec<String>> + 'a {
        self.rows
            .iter()
            .filter(move |r| r.first().map(String::as_str) == Some(method))
    }

    /// The number in column `name` of `row`, when it parses.
    pub fn number(&self, row: &[String], name: &str) -> Option<f64> {
        row.get(self.column(name)?)?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_ml::train::RiskMetrics;

    fn scores(loss: f64) -> Scores {
        Scores {
            loss,
            metrics: Metrics::Risk(RiskMetrics::compute(&[0, 1, 1, 2], &[0, 1, 2, 2], 3).unwrap()),
        }
    }

    #[test]
    fn rows_line_up_with_the_header_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        let mut csv = MetricsCsv::create(&path, Task::Risk, 3).unwrap();
        let row = Row {
            method: "fedavg".into(),
            step: 1,
            wall_seconds: 1.5,
            bytes_sent: 1234,
            grad_steps: 10,
            samples: 640,
            train_loss: Some(0.7),
            val: scores(0.9),
            test: scores(1.1),
            best: Some((1, 0.5)),
            epsilon: None,
        };
        csv.push(&row).unwrap();
        csv.push(&Row {
            method: "centralized".into(),
            train_loss: None,
            ..row.clone()
        })
        .unwrap();
        drop(csv);
        let t = CsvTable::read(&path).unwrap();
        assert_eq!(t.header.len(), 8 + 5 + 1 + 5 + 2);
        assert_eq!(t.number(&t.rows[0], "grad_steps"), Some(10.0));
        assert_eq!(t.number(&t.rows[0], "test_macro_f1_at_best"), Some(0.5));
        assert!(t.rows.iter().all(|r| r.len() == t.header.len()));
        let fed: Vec<_> = t.method("fedavg").collect();
        assert_eq!(fed.len(), 1);
        assert_eq!(t.number(fed[0], "bytes_sent"), Some(1234.0));
        assert_eq!(t.number(fed[0], "test_loss"), Some(1.1));
        assert_eq!(t.number(fed[0], "val_accuracy"), Some(0.75));
        let c: Vec<_> = t.method("centralized").collect();
        assert_eq!(t.number(c[0], "train_loss"), None);
    }

    #[test]
    fn the_best_validation_step_follows_the_headline_and_min_delta() {
        let row = |step: u64, f1_pred: [i64; 4]| Row {
            method: "fedavg".into(),
            step,
            wall_seconds: 0.0,
            bytes_sent: 0,
            grad_steps: 0,
            samples: 0,
            train_loss: None,
            val: Scores {
                loss: 1.0,
                metrics: Metrics::Risk(RiskMetrics::compute(&[0, 1, 1, 2], &f1_pred, 3).unwrap()),
            },
            test: scores(1.0),
            best: None,
            epsilon: None,
        };
        let mut t = BestTracker::new(true, 0.0);
        let mut steps = Vec::new();
        for (i, pred) in [[0, 0, 0, 0], [0, 1, 1, 2], [0, 0, 1, 2]]
            .into_iter()
            .enumerate()
        {
            let mut r = row(i as u64 + 1, pred);
            t.update(&mut r);
            steps.push(r.best.unwrap().0);
        }
        // Step 2 is perfect; step 3 is worse and keeps step 2.
        assert_eq!(steps, [1, 2, 2]);
        let mut lower = BestTracker::new(false, 0.0);
        let mut r = row(1, [0, 1, 1, 2]);
        lower.update(&mut r);
        let mut r2 = row(2, [0, 0, 0, 0]);
        lower.update(&mut r2);
        assert_eq!(r2.best.unwrap().0, 2, "lower is better for counts' MAE");
    }
}
