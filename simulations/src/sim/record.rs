//! `metrics.csv`: one row per round (federated) or epoch (centralized) per
//! method, written as the run goes (each row flushed), and read back for
//! tests and reports.
//!
//! Columns: `method, step, wall_seconds, bytes_sent, train_loss, val_loss`,
//! the task's validation metrics (`val_accuracy`, `val_macro_f1`, ... for
//! risk; `val_mae`, ... for counts), `test_loss` and the same metrics on the
//! test split. `wall_seconds` is the time the method has taken so far,
//! without the study's scoring: for the federation the round engine's clock
//! (connecting, sending, training, receiving, aggregating), for the
//! centralized methods their training loops. `bytes_sent` is the cumulative
//! traffic of the round messages in both directions (0 for centralized
//! methods).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use fedcrime_common::data::Task;
use fedcrime_common::train::Metrics;

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
    /// Training loss of the round or epoch (example-weighted over stations).
    pub train_loss: Option<f64>,
    /// Scores on the pooled validation split.
    pub val: Scores,
    /// Scores on the pooled test split.
    pub test: Scores,
}

/// The header of `metrics.csv` for a task with `output_dim` classes or count dimensions.
pub fn header(task: Task, output_dim: usize) -> Vec<String> {
    let names = Metrics::scalar_names(task, output_dim);
    let mut h: Vec<String> = [
        "method",
        "step",
        "wall_seconds",
        "bytes_sent",
        "train_loss",
        "val_loss",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    h.extend(names.iter().map(|n| format!("val_{n}")));
    h.push("test_loss".into());
    h.extend(names.iter().map(|n| format!("test_{n}")));
    h
}

/// A number for the CSV: empty when undefined.
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        String::new()
    }
}

/// The CSV line of `row` (no newline).
pub fn line(row: &Row) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "{},{},{:.4},{},{}",
        row.method,
        row.step,
        row.wall_seconds,
        row.bytes_sent,
        row.train_loss.map(num).unwrap_or_default()
    );
    for scores in [&row.val, &row.test] {
        let _ = write!(s, ",{}", num(scores.loss));
        for (_, v) in scores.metrics.scalars() {
            let _ = write!(s, ",{}", num(v));
        }
    }
    s
}

/// `metrics.csv`, written row by row.
#[derive(Debug)]
pub struct MetricsCsv {
    file: BufWriter<File>,
    path: PathBuf,
}

impl MetricsCsv {
    /// Creates the file and writes the header.
    pub fn create(path: &Path, task: Task, output_dim: usize) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut me = MetricsCsv {
            file: BufWriter::new(file),
            path: path.to_path_buf(),
        };
        let h = header(task, output_dim).join(",");
        me.write_line(&h)?;
        Ok(me)
    }

    fn write_line(&mut self, text: &str) -> Result<()> {
        writeln!(self.file, "{text}")
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Appends a row.
    pub fn push(&mut self, row: &Row) -> Result<()> {
        let text = line(row);
        self.write_line(&text)
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
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .with_context(|| format!("{}: empty file", path.display()))?
            .split(',')
            .map(str::to_string)
            .collect();
        let rows = lines
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect();
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
    use fedcrime_common::train::RiskMetrics;

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
            train_loss: Some(0.7),
            val: scores(0.9),
            test: scores(1.1),
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
        assert_eq!(t.header.len(), 6 + 5 + 1 + 5);
        assert!(t.rows.iter().all(|r| r.len() == t.header.len()));
        let fed: Vec<_> = t.method("fedavg").collect();
        assert_eq!(fed.len(), 1);
        assert_eq!(t.number(fed[0], "bytes_sent"), Some(1234.0));
        assert_eq!(t.number(fed[0], "test_loss"), Some(1.1));
        assert_eq!(t.number(fed[0], "val_accuracy"), Some(0.75));
        let c: Vec<_> = t.method("centralized").collect();
        assert_eq!(t.number(c[0], "train_loss"), None);
    }
}
