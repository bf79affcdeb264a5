//! [`RoundMetrics`]: what one federated round did, for `metrics.csv`, JSON
//! lines, reports and the checkpointed history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::privacy::RoundPrivacy;
use super::strategy::Metrics;
use super::validate::FailureKind;
use super::StationId;

/// The prefix of the evaluation metrics kept per station in
/// [`RoundMetrics::station_reports`]: explanations.
pub const STATION_REPORT_PREFIX: &str = "shap|";
/// Every prefix of evaluation metrics kept per station: explanations
/// (`shap|`) and forecasts of the next period (`next|`, for the dashboard's
/// map).
pub const STATION_REPORT_PREFIXES: [&str; 2] = [STATION_REPORT_PREFIX, FORECAST_REPORT_PREFIX];
/// The prefix of a station's forecasts of its areas' next period: kept per
/// station, left out of the averaged evaluation metrics.
pub const FORECAST_REPORT_PREFIX: &str = "next|";

/// The record of one round. Times are seconds from the `now` values the
/// driver passed in, so a replay with the same times gives the same record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoundMetrics {
    /// The round (1-based).
    pub round: u64,
    /// Sampling attempts (1 unless too few updates arrived and the round was retried).
    pub attempts: u32,
    /// Stations asked to train in the last attempt, sorted.
    pub sampled: Vec<StationId>,
    /// Stations whose updates were accepted in the last attempt, sorted.
    pub completed: Vec<StationId>,
    /// Lost or refused contributions over all attempts, by reason.
    pub failed: BTreeMap<FailureKind, u32>,
    /// Whether a new global model was adopted.
    pub aggregated: bool,
    /// Why not, when it was not (too few updates, aggregation error).
    pub note: Option<String>,
    /// Training examples behind the accepted updates.
    pub num_examples: u64,
    /// Example-weighted training loss of the accepted updates.
    pub train_loss: Option<f64>,
    /// Example-weighted averages of the stations' fit metrics.
    pub fit_metrics: Metrics,
    /// What the strategy reported about its aggregation.
    pub aggregate_metrics: Metrics,
    /// `||w_new - w_old||` of the global model.
    pub model_delta_norm: Option<f64>,
    /// Stations asked to evaluate.
    pub eval_sampled: usize,
    /// Stations whose evaluations were accepted.
    pub eval_completed: usize,
    /// Lost or refused evaluations, by reason.
    pub eval_failed: BTreeMap<FailureKind, u32>,
    /// Example-weighted federated evaluation loss.
    pub eval_loss: Option<f64>,
    /// Example-weighted federated evaluation metrics.
    pub eval_metrics: Metrics,
    /// What stations reported about themselves in their evaluation replies
    /// (metrics named `shap|...`: the summary of an explanation asked with
    /// the `explain` evaluation setting), per station, so the agency can
    /// compare precincts; empty unless asked for.
    pub station_reports: BTreeMap<String, Metrics>,
    /// Loss of the server-side evaluation, when the strategy has one.
    pub server_eval_loss: Option<f64>,
    /// Metrics of the server-side evaluation.
    pub server_eval_metrics: Metrics,
    /// Bytes received from stations during the round (reported by the driver).
    pub bytes_in: u64,
    /// Bytes sent to stations during the round (reported by the driver).
    pub bytes_out: u64,
    /// When the round began, seconds since the engine started.
    pub started_s: f64,
    /// Waiting for enough stations and retry backoff: the round's time outside
    /// collection and evaluation, seconds.
    pub wait_s: f64,
    /// From the first fit request to the close of collection, seconds (all attempts).
    pub fit_s: f64,
    /// Aggregation compute time, when the driver gave the engine a stopwatch.
    pub aggregate_s: Option<f64>,
    /// Federated evaluation, seconds.
    pub eval_s: f64,
    /// The whole round, seconds.
    pub round_s: f64,
    /// Differential privacy: the round's noise, clip and cumulative ε
    /// (`None` without a `[privacy]` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<RoundPrivacy>,
}

impl RoundMetrics {
    /// An empty record for `round`.
    pub fn new(round: u64) -> Self {
        RoundMetrics {
            round,
            ..RoundMetrics::default()
        }
    }

    /// Total lost or refused fit contributions.
    pub(crate) fn failed_total(&self) -> u32 {
        self.failed.values().sum()
    }

    /// Counts one failure of `kind`.
    pub fn count_failure(&mut self, kind: FailureKind) {
        *self.failed.entry(kind).or_default() += 1;
    }

    /// Column names for [`csv_record`](Self::csv_record): the round's
    /// counts, one `failed_<reason>` column per [`FailureKind`], losses,
    /// `eval_<key>` and `server_<key>` for each of `eval_keys`, bytes and
    /// durations.
    pub fn csv_header(eval_keys: &[&str]) -> Vec<String> {
        let mut h: Vec<String> = ["round", "attempts", "sampled", "completed", "failed"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        h.extend(FailureKind::ALL.iter().map(|k| format!("failed_{k}")));
        h.extend(
            [
                "aggregated",
                "num_examples",
                "train_loss",
                "eval_completed",
                "eval_loss",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        h.extend(eval_keys.iter().map(|k| format!("eval_{k}")));
        h.push("server_eval_loss".into());
        h.extend(eval_keys.iter().map(|k| format!("server_{k}")));
        h.extend(
            [
                "bytes_in",
                "bytes_out",
                "started_s",
                "wait_s",
                "fit_s",
                "aggregate_s",
                "eval_s",
                "round_s",
                "epsilon",
                "dp_clip",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        h
    }

    /// This round as a CSV record matching [`csv_header`](Self::csv_header);
    /// missing values are empty.
    pub fn csv_record(&self, eval_keys: &[&str]) -> Vec<String> {
        fn opt(v: Option<f64>) -> String {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        let mut r = vec![
            self.round.to_string(),
            self.attempts.to_string(),
            self.sampled.len().to_string(),
            self.completed.len().to_string(),
            self.failed_total().to_string(),
        ];
        r.extend(
            FailureKind::ALL
                .iter()
                .map(|k| self.failed.get(k).copied().unwrap_or(0).to_string()),
        );
        r.extend([
            self.aggregated.to_string(),
            self.num_examples.to_string(),
            opt(self.train_loss),
            self.eval_completed.to_string(),
            opt(self.eval_loss),
        ]);
        r.extend(
            eval_keys
                .iter()
                .map(|k| opt(self.eval_metrics.get(*k).copied())),
        );
        r.push(opt(self.server_eval_loss));
        r.extend(
            eval_keys
                .iter()
                .map(|k| opt(self.server_eval_metrics.get(*k).copied())),
        );
        r.extend([
            self.bytes_in.to_string(),
            self.bytes_out.to_string(),
            self.started_s.to_string(),
            self.wait_s.to_string(),
            self.fit_s.to_string(),
            opt(self.aggregate_s),
            self.eval_s.to_string(),
            self.round_s.to_string(),
            opt(self.privacy.as_ref().and_then(|p| p.epsilon)),
            opt(self.privacy.as_ref().and_then(|p| p.clip)),
        ]);
        r
    }

    /// Counts one failed evaluation of `kind`.
    pub(crate) fn count_eval_failure(&mut self, kind: FailureKind) {
        *self.eval_failed.entry(kind).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_with_failure_keys() {
        let mut m = RoundMetrics::new(3);
        m.count_failure(FailureKind::Timeout);
        m.count_failure(FailureKind::Timeout);
        m.count_failure(FailureKind::NonFinite);
        m.sampled = vec![StationId::new("a").unwrap(), StationId::new("b").unwrap()];
        m.train_loss = Some(0.5);
        m.eval_metrics.insert("accuracy".into(), 0.75);
        let json = serde_json::to_string(&m).unwrap();
        assert!(
            json.contains("\"failed\":{\"timeout\":2,\"non_finite\":1}"),
            "{json}"
        );
        assert!(json.contains("\"sampled\":[\"a\",\"b\"]"), "{json}");
        let back: RoundMetrics = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.failed_total(), 3);
        let keys = ["accuracy", "auc"];
        let header = RoundMetrics::csv_header(&keys);
        let record = m.csv_record(&keys);
        assert_eq!(header.len(), record.len());
        let col = |name: &str| &record[header.iter().position(|h| h == name).unwrap()];
        assert_eq!(col("failed"), "3");
        assert_eq!(col("failed_timeout"), "2");
        assert_eq!(col("failed_duplicate"), "0");
        assert_eq!(col("sampled"), "2");
        assert_eq!(col("train_loss"), "0.5");
        assert_eq!(col("eval_accuracy"), "0.75");
        assert_eq!(col("eval_auc"), "");
        // Older or partial records still load.
        let partial: RoundMetrics = serde_json::from_str("{\"round\": 7}").unwrap();
        assert_eq!(partial.round, 7);
    }
}
