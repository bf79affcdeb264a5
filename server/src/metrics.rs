//! Per-round metrics files: `metrics.csv` (one row per round, fixed columns)
//! and `metrics.jsonl` (one JSON object per round, every field).
//!
//! On start both files are rewritten from the rounds that are already
//! checkpointed (a resumed run drops rows of a round that was cut short, so
//! no round appears twice), then each finished round is appended and flushed.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use fedcrime_data::Task;
use fedcrime_files::{append_durable, write_atomic, CsvLog};
use fedcrime_fl::RoundMetrics;
use fedcrime_ml::train::Metrics as TaskMetrics;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServerError};

/// One round as the server records it: the engine's metrics plus what the
/// driver measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// The engine's record of the round.
    #[serde(flatten)]
    pub metrics: RoundMetrics,
    /// Training seconds of the slowest accepted station (as it reported them).
    pub max_train_s: Option<f64>,
    /// Framework overhead: the round's wall time minus the slowest accepted
    /// station's training time.
    pub overhead_s: Option<f64>,
    /// The fit phase's wall time minus the slowest accepted station's training time.
    pub fit_overhead_s: Option<f64>,
}

impl RoundRecord {
    /// A record of `metrics` with the slowest station's training time.
    pub fn new(metrics: RoundMetrics, max_train_s: Option<f64>) -> Self {
        let overhead_s = max_train_s.map(|t| (metrics.round_s - t).max(0.0));
        let fit_overhead_s = max_train_s.map(|t| (metrics.fit_s - t).max(0.0));
        RoundRecord {
            metrics,
            max_train_s,
            overhead_s,
            fit_overhead_s,
        }
    }
}

/// Writes `metrics.csv` and `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsWriter {
    csv: CsvLog,
    jsonl: PathBuf,
    metric_names: Vec<String>,
}

fn err(path: &Path, message: impl std::fmt::Display) -> ServerError {
    ServerError::Metrics {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

impl MetricsWriter {
    /// The CSV file.
    pub fn csv_path(&self) -> &Path {
        self.csv.path()
    }

    /// The JSON lines file.
    pub fn jsonl_path(&self) -> &Path {
        &self.jsonl
    }

    /// Opens the files in `dir` for a run of `task`, keeping the records of
    /// the rounds in `history` (from a checkpoint): rows already in
    /// `metrics.jsonl` for those rounds are kept as written, missing ones are
    /// rebuilt from `history`, later rows are dropped.
    pub fn open(
        dir: &Path,
        task: Task,
        output_dim: usize,
        history: &[RoundMetrics],
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::Io {
            what: "creating the output folder",
            path: dir.to_path_buf(),
            source,
        })?;
        let jsonl = dir.join("metrics.jsonl");
        let metric_names = TaskMetrics::scalar_names(task, output_dim);
        let mut previous: Vec<RoundRecord> = Vec::new();
        if let Ok(f) = File::open(&jsonl) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                if let Ok(r) = serde_json::from_str::<RoundRecord>(&line) {
                    previous.push(r);
                }
            }
        }
        let records: Vec<RoundRecord> = history
            .iter()
            .map(|m| {
                previous
                    .iter()
                    .rev()
                    .find(|r| r.metrics.round == m.round)
                    .map(|r| RoundRecord {
                        metrics: m.clone(),
                        ..r.clone()
                    })
                    .unwrap_or_else(|| RoundRecord::new(m.clone(), None))
            })
            .collect();
        let mut lines = Vec::new();
        for r in &records {
            lines.extend(serde_json::to_vec(r).map_err(|e| err(&jsonl, e))?);
            lines.push(b'\n');
        }
        let keys: Vec<&str> = metric_names.iter().map(String::as_str).collect();
        let csv = CsvLog::create(
            dir.join("metrics.csv"),
            &columns(&keys),
            records.iter().map(|r| row(&keys, r)),
        )?;
        write_atomic(&jsonl, &lines)?;
        Ok(MetricsWriter {
            csv,
            jsonl,
            metric_names,
        })
    }

    fn keys(&self) -> Vec<&str> {
        self.metric_names.iter().map(String::as_str).collect()
    }

    /// Appends one round to both files and flushes them to disk.
    pub fn append(&self, r: &RoundRecord) -> Result<()> {
        self.csv.append(&row(&self.keys(), r))?;
        let mut line = serde_json::to_vec(r).map_err(|e| err(&self.jsonl, e))?;
        line.push(b'\n');
        append_durable(&self.jsonl, &line)?;
        Ok(())
    }
}

/// The engine's columns ([`RoundMetrics::csv_header`]) and the driver's.
fn columns(keys: &[&str]) -> Vec<String> {
    let mut c = RoundMetrics::csv_header(keys);
    c.extend(
        [
            "model_delta_norm",
            "max_train_s",
            "overhead_s",
            "fit_overhead_s",
            "note",
        ]
        .map(String::from),
    );
    c
}

/// The CSV cells of one round.
fn row(keys: &[&str], r: &RoundRecord) -> Vec<String> {
    let m = &r.metrics;
    let mut row = m.csv_record(keys);
    row.extend([
        opt(m.model_delta_norm),
        opt(r.max_train_s),
        opt(r.overhead_s),
        opt(r.fit_overhead_s),
        m.note.clone().unwrap_or_default(),
    ]);
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_fl::FailureKind;

    fn round(r: u64) -> RoundMetrics {
        let mut m = RoundMetrics::new(r);
        m.train_loss = Some(1.0 / r as f64);
        m.count_failure(FailureKind::NonFinite);
        m.eval_metrics.insert("accuracy".into(), 0.5);
        m.round_s = 3.0;
        m.fit_s = 2.5;
        m.note = Some("a, b".into());
        m
    }

    #[test]
    fn rows_have_fixed_columns_and_a_resume_drops_unfinished_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let w = MetricsWriter::open(dir.path(), Task::Risk, 5, &[]).unwrap();
        for r in 1..=3 {
            w.append(&RoundRecord::new(round(r), Some(2.0))).unwrap();
        }
        let csv = std::fs::read_to_string(w.csv_path()).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        let header: Vec<&str> = lines[0].split(',').collect();
        assert!(header.contains(&"failed_non_finite") && header.contains(&"eval_accuracy"));
        let mut rdr = csv::Reader::from_reader(csv.as_bytes());
        for rec in rdr.records() {
            let rec = rec.unwrap();
            assert_eq!(rec.len(), header.len());
            assert_eq!(
                &rec[header.iter().position(|h| *h == "overhead_s").unwrap()],
                "1"
            );
            assert_eq!(&rec[header.len() - 1], "a, b");
        }
        // Resuming after round 2 keeps rounds 1-2 (with their measured times) only.
        let w = MetricsWriter::open(dir.path(), Task::Risk, 5, &[round(1), round(2)]).unwrap();
        let jsonl = std::fs::read_to_string(w.jsonl_path()).unwrap();
        let back: Vec<RoundRecord> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].metrics.round, 2);
        assert_eq!(back[1].max_train_s, Some(2.0));
        assert_eq!(
            std::fs::read_to_string(w.csv_path())
                .unwrap()
                .lines()
                .count(),
            3
        );
    }
}
