//! Federated explanations (`simulate --explain ROWS`): after the federation,
//! the agency asks every station to explain the federation's best model on
//! its own test records. The request is an ordinary evaluation request with
//! `explain = ROWS` (what `fedcrime-server` sends over QUIC too), and each
//! station replies with aggregates only: mean |SHAP| per feature group and
//! output, its row count and additivity errors
//! ([`fedcrime_ml::explain::Summary::to_metrics`]); no record and no
//! per-record value leaves a station. The agency merges them, weighted by
//! rows, into the global ranking and draws the per-precinct heatmap.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use fedcrime_fl::{Config, ConfigValue, EvaluateIns};
use fedcrime_ml::explain::Summary;
use fedcrime_params::Params;
use fedcrime_station::{Learner, EXPLAIN_KEY, EXPLAIN_METHOD_KEY};
use serde::Serialize;

use super::config::SimConfig;
use super::data::StudyData;
use crate::charts::{Bars, Heatmap};

/// Each station's test score of the best federated model: what q-FedAvg
/// is judged by (no precinct sacrificed for the average).
#[derive(Clone, Debug, Serialize)]
pub struct StationScores {
    /// The headline metric (`macro_f1` or `mae`).
    pub metric: String,
    /// `(station, test samples, score)`, in station order.
    pub stations: Vec<(String, u64, f64)>,
}

impl StationScores {
    /// Whether a larger score is better.
    fn higher_is_better(&self) -> bool {
        self.metric != "mae"
    }

    /// The stations from worst to best.
    pub fn ranked(&self) -> Vec<(String, u64, f64)> {
        let mut v = self.stations.clone();
        v.sort_by(|a, b| a.2.total_cmp(&b.2));
        if !self.higher_is_better() {
            v.reverse();
        }
        v
    }

    /// The report's section.
    pub fn markdown(&self) -> String {
        let r = self.ranked();
        let Some(worst) = r.first() else {
            return String::new();
        };
        let best = &r[r.len() - 1];
        let median = &r[r.len() / 2];
        let mean = r.iter().map(|s| s.2).sum::<f64>() / r.len() as f64;
        let var = r.iter().map(|s| (s.2 - mean).powi(2)).sum::<f64>() / r.len() as f64;
        format!(
            "\n## Per-station test scores of the selected federated model\n\n{} stations, test {}: worst {:.4} ({}, {} samples), median {:.4}, best {:.4} ({}), standard deviation {:.4}. Per station: station-scores.csv.\n",
            r.len(),
            self.metric,
            worst.2,
            worst.0,
            worst.1,
            median.2,
            best.2,
            best.0,
            var.sqrt()
        )
    }
}

/// One station's evaluation reply.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The station's name.
    pub name: String,
    /// Test samples it scored.
    pub examples: u64,
    /// Its metrics (with the explanation summary when one was asked for).
    pub metrics: fedcrime_fl::Metrics,
}

/// Asks every station of the study to evaluate `global` on its own test
/// samples, and with `explain = Some((rows, method))` to explain it on up
/// to `rows` of them, in turn (stations without test samples are left out).
pub fn ask_stations(
    data: &StudyData,
    cfg: &SimConfig,
    global: &Arc<Params>,
    explain: Option<(usize, &str)>,
) -> Result<Vec<Reply>> {
    let device = cfg
        .federation
        .device
        .resolve()
        .map_err(anyhow::Error::msg)?;
    let mut config = Config::from([("split".to_string(), ConfigValue::Str("test".into()))]);
    if let Some((rows, method)) = explain {
        config.insert(EXPLAIN_KEY.to_string(), ConfigValue::Int(rows as i64));
        config.insert(
            EXPLAIN_METHOD_KEY.to_string(),
            ConfigValue::Str(method.into()),
        );
    }
    let config = Arc::new(config);
    let mut replies = Vec::new();
    for s in data.learners(cfg, device) {
        let name = s.name().to_string();
        match s.evaluate(&EvaluateIns {
            global: global.clone(),
            config: config.clone(),
        }) {
            Ok(r) => replies.push(Reply {
                name,
                examples: r.num_examples,
                metrics: r.metrics,
            }),
            Err(fedcrime_station::StationError::EmptySplit { .. }) => {
                tracing::warn!("{name} has no test samples");
            }
            Err(e) => return Err(e).with_context(|| format!("{name} evaluating the best model")),
        }
    }
    Ok(replies)
}

impl StationScores {
    /// The headline score of each reply (`macro_f1` for risk, `mae` for counts).
    pub fn of(task: fedcrime_data::Task, replies: &[Reply]) -> Self {
        let metric = match task {
            fedcrime_data::Task::Risk => "macro_f1",
            fedcrime_data::Task::Counts => "mae",
        };
        StationScores {
            metric: metric.into(),
            stations: replies
                .iter()
                .filter_map(|r| Some((r.name.clone(), r.examples, *r.metrics.get(metric)?)))
                .collect(),
        }
    }
}

/// Writes `station-scores.csv`.
pub fn write_scores(out: &Path, s: &StationScores) -> Result<()> {
    let mut csv = format!("station,test_samples,{}\n", s.metric);
    for (n, k, v) in &s.stations {
        let _ = writeln!(csv, "{n},{k},{v:.6}");
    }
    std::fs::write(out.join("station-scores.csv"), csv)
        .with_context(|| format!("writing {}", out.join("station-scores.csv").display()))
}

/// What the stations sent and what the agency made of it.
#[derive(Clone, Debug, Serialize)]
pub struct FederatedExplanation {
    /// The method the stations used.
    pub method: String,
    /// Each station's summary, by name.
    pub stations: Vec<(String, Summary)>,
    /// The row-weighted merge.
    pub global: Summary,
}

impl FederatedExplanation {
    /// The stations' explanation summaries (asked with `method`) and their
    /// row-weighted merge.
    pub fn of(method: &str, replies: &[Reply]) -> Result<Self> {
        let stations = replies
            .iter()
            .map(|r| {
                Summary::from_metrics(&r.metrics)
                    .map(|s| (r.name.clone(), s))
                    .with_context(|| format!("{} replied without an explanation", r.name))
            })
            .collect::<Result<Vec<_>>>()?;
        let parts: Vec<Summary> = stations.iter().map(|(_, s)| s.clone()).collect();
        let global = Summary::merge(&parts)
            .context("the stations' explanations are over different features or outputs")?;
        Ok(FederatedExplanation {
            method: method.to_string(),
            stations,
            global,
        })
    }
}

/// Writes `explain-federated.json`, `explain-stations.csv` and the ranking
/// and heatmap plots into `out`; returns the report's section.
pub fn write(out: &Path, fe: &FederatedExplanation, title: &str) -> Result<String> {
    std::fs::write(
        out.join("explain-federated.json"),
        serde_json::to_string_pretty(fe)?,
    )
    .with_context(|| format!("writing {}", out.join("explain-federated.json").display()))?;
    let mut csv = String::from("station,output,group,mean_abs\n");
    for (name, s) in &fe.stations {
        for (g, group) in s.groups.iter().enumerate() {
            for (o, output) in s.outputs.iter().enumerate() {
                let _ = writeln!(csv, "{name},{output},\"{group}\",{:.6}", s.mean_abs[g][o]);
            }
        }
    }
    std::fs::write(out.join("explain-stations.csv"), csv)
        .with_context(|| format!("writing {}", out.join("explain-stations.csv").display()))?;

    let ranking = fe.global.ranking();
    Bars {
        title: format!("{title}: federated mean |SHAP value| ({})", fe.method),
        x_label: "mean |SHAP value| (all outputs)".into(),
        names: ranking.iter().map(|r| r.0.clone()).collect(),
        series: vec![("all".into(), ranking.iter().map(|r| r.1).collect())],
    }
    .write_both(out, "explain-federated")?;
    let top: Vec<String> = ranking.iter().take(12).map(|r| r.0.clone()).collect();
    let overall = |s: &Summary, g: &str| -> f64 {
        s.groups.iter().position(|x| x == g).map_or(f64::NAN, |i| {
            s.mean_abs[i].iter().sum::<f64>() / s.outputs.len().max(1) as f64
        })
    };
    Heatmap {
        title: format!("{title}: mean |SHAP value| per station"),
        rows: fe.stations.iter().map(|(n, _)| n.clone()).collect(),
        columns: top.clone(),
        values: fe
            .stations
            .iter()
            .map(|(_, s)| top.iter().map(|g| overall(s, g)).collect())
            .collect(),
    }
    .write_both(out, "explain-heatmap")?;

    let mut md = format!(
        "\n## Federated explanations\n\nEvery station explained the best federated model on up to {} of its own test samples ({}) and sent only mean |SHAP| per feature and output: {} stations, {} samples, additivity error at most {:.1e}. Plots: explain-federated.png, explain-heatmap.png; per station: explain-stations.csv.\n\n| rank | feature | mean \\|SHAP\\| | first at stations |\n|---:|---|---:|---:|\n",
        fe.stations.iter().map(|(_, s)| s.rows).max().unwrap_or(0),
        fe.method,
        fe.stations.len(),
        fe.global.rows,
        fe.global.max_additivity_error
    );
    for (k, (g, v)) in ranking.iter().enumerate() {
        let first = fe
            .stations
            .iter()
            .filter(|(_, s)| s.ranking().first().map(|r| &r.0) == Some(g))
            .count();
        let _ = writeln!(md, "| {} | {g} | {v:.4} | {first} |", k + 1);
    }
    Ok(md)
}
