//! The agency's live dashboard: what the federation is doing, for people.
//!
//! A [`Board`] watches the round engine through the same [`Event`]s and
//! [`Action`]s that a driver passes to and takes from it, so the QUIC
//! server and the in-memory simulator feed it alike; [`http`] serves it
//! read-only (a page, a JSON API and Server-Sent Events) behind a bearer
//! token or client certificates.
//!
//! The page (`server/assets/dashboard/`) and its libraries are compiled
//! into the binary: the machines it runs on have no internet.
//!
//! The map shows, per LAPD area, what the global model predicts for the
//! period after the stations' records end: each station reports it for its
//! own areas when asked in the evaluation request (`forecast`, see
//! `fedcrime_station::FORECAST_KEY`), so no record leaves a station.

pub mod http;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use fedcrime_data::tasks::TimeUnit;
use fedcrime_data::Task;
use fedcrime_fl::engine::{Action, Event, Outcome};
use fedcrime_fl::secure::SecAggUp;
use fedcrime_fl::RoundMetrics;
use fedcrime_net::http::{HttpListener, HttpTls};
use serde::Serialize;
use tokio::sync::watch;

use fedcrime_station::FORECAST_PREFIX;

/// Rounds kept for the page (older ones are dropped from the state; the
/// metrics files keep every round).
const MAX_ROUNDS: usize = 2000;

/// What the page shows about the run, set once by the driver.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunInfo {
    /// The run's id.
    pub id: String,
    /// `fedcrime-server` or `fedcrime-sim`.
    pub source: String,
    /// `risk` or `counts`.
    pub task: String,
    /// The architecture.
    pub model: String,
    /// The strategy.
    pub strategy: String,
    /// Planned rounds.
    pub rounds: Option<u64>,
    /// When the run started (Unix seconds).
    pub started_unix: f64,
    /// The headline metric's key in the evaluation metrics.
    pub metric: String,
    /// Its label on the page.
    pub metric_label: String,
    /// Whether a larger value is better.
    pub higher_is_better: bool,
    /// A reference line on the convergence curve (e.g. centralized training).
    pub reference: Option<Reference>,
    /// The time unit of the forecasts (for the map's period label).
    #[serde(skip)]
    pub time_unit: Option<TimeUnit>,
}

impl RunInfo {
    /// The headline metric of `task` (macro-F1 for risk, MAE for counts).
    pub fn for_task(task: Task) -> Self {
        let (task, metric, label, higher) = match task {
            Task::Risk => ("risk", "macro_f1", "validation macro-F1", true),
            Task::Counts => ("counts", "mae", "validation MAE (counts)", false),
        };
        RunInfo {
            task: task.into(),
            metric: metric.into(),
            metric_label: label.into(),
            higher_is_better: higher,
            started_unix: unix_now(),
            ..RunInfo::default()
        }
    }
}

/// A horizontal reference on the convergence curve.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Reference {
    /// What it is.
    pub label: String,
    /// Its value of the headline metric.
    pub value: f64,
}

/// One station's row.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StationRow {
    /// Its identity.
    pub id: String,
    /// Connected now.
    pub connected: bool,
    /// idle, training, evaluating, reported, failed or disconnected.
    pub status: &'static str,
    /// The last round it was asked for.
    pub last_round: Option<u64>,
    /// Updates it sent.
    pub updates: u64,
    /// Requests it failed.
    pub failures: u64,
    /// Its last failure, with the round.
    pub last_failure: Option<String>,
}

/// One finished round.
#[derive(Clone, Debug, Serialize)]
pub struct RoundRow {
    /// The round.
    pub round: u64,
    /// Stations asked to train.
    pub sampled: usize,
    /// Updates received.
    pub reported: usize,
    /// Failures by reason.
    pub failed: BTreeMap<String, u32>,
    /// Whether an aggregate was made.
    pub aggregated: bool,
    /// Wall time of the round.
    pub seconds: f64,
    /// Waiting for stations.
    pub wait_s: f64,
    /// Training.
    pub fit_s: f64,
    /// Evaluation.
    pub eval_s: f64,
    /// Bytes from stations.
    pub bytes_in: u64,
    /// Bytes to stations.
    pub bytes_out: u64,
    /// Mean training loss.
    pub train_loss: Option<f64>,
    /// Mean evaluation loss.
    pub eval_loss: Option<f64>,
    /// The headline metric.
    pub metric: Option<f64>,
    /// A note (retries, aborts).
    pub note: Option<String>,
}

/// The map: one value per area.
#[derive(Clone, Debug, Serialize)]
pub struct MapView {
    /// The round whose global model predicted it.
    pub round: u64,
    /// The period predicted.
    pub period: Option<String>,
    /// `risk` or `counts`.
    pub task: String,
    /// What the value is.
    pub value_label: String,
    /// The colour scale's low end.
    pub min: f64,
    /// Its high end.
    pub max: f64,
    /// The areas with a value.
    pub areas: Vec<MapArea>,
}

/// One area on the map.
#[derive(Clone, Debug, Serialize)]
pub struct MapArea {
    /// The LAPD area code.
    pub area: u8,
    /// Its name.
    pub name: &'static str,
    /// Expected risk level, or expected count.
    pub value: f64,
    /// The most likely risk level.
    pub level: Option<u8>,
    /// The station that reported it.
    pub station: Option<String>,
}

/// Everything the page shows (`GET /api/state`).
#[derive(Clone, Debug, Serialize)]
pub struct State {
    /// The format's version.
    pub version: u32,
    /// The run.
    pub run: RunInfo,
    /// The round in progress (the last one once finished).
    pub round: u64,
    /// starting, waiting, training, evaluating, finished or failed.
    pub phase: &'static str,
    /// More about the phase.
    pub phase_detail: Option<String>,
    /// When the state last changed (Unix seconds).
    pub updated_unix: f64,
    /// Every station seen, by id.
    pub stations: Vec<StationRow>,
    /// Finished rounds, oldest first.
    pub rounds: Vec<RoundRow>,
    /// The latest forecast map.
    pub map: Option<MapView>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Debug)]
struct Inner {
    run: RunInfo,
    round: u64,
    phase: &'static str,
    phase_detail: Option<String>,
    stations: BTreeMap<String, StationRow>,
    rounds: Vec<RoundRow>,
    map: Option<MapView>,
    asked: usize,
    answered: usize,
}

/// The dashboard's state, fed by a driver and watched by the HTTP side.
#[derive(Debug)]
pub struct Board {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl Board {
    /// A board for `run`.
    pub fn new(run: RunInfo) -> Self {
        Board {
            inner: Mutex::new(Inner {
                run,
                round: 0,
                phase: "starting",
                phase_detail: None,
                stations: BTreeMap::new(),
                rounds: Vec::new(),
                map: None,
                asked: 0,
                answered: 0,
            }),
            changed: watch::channel(0).0,
        }
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// A receiver told of every change (the value counts changes).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The state now.
    pub fn state(&self) -> State {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        State {
            version: 1,
            run: g.run.clone(),
            round: g.round,
            phase: g.phase,
            phase_detail: g.phase_detail.clone(),
            updated_unix: unix_now(),
            stations: g.stations.values().cloned().collect(),
            rounds: g.rounds.clone(),
            map: g.map.clone(),
        }
    }

    /// Takes in the rounds of a resumed run.
    pub fn load_history(&self, history: &[RoundMetrics]) {
        self.update(|g| {
            for m in history {
                finish_round(g, m);
            }
        });
    }

    /// Sets the headline metric of `round` (a simulator scoring centrally).
    pub fn set_round_metric(&self, round: u64, value: f64) {
        self.update(|g| {
            if let Some(r) = g.rounds.iter_mut().rev().find(|r| r.round == round) {
                r.metric = value.is_finite().then_some(value);
            }
        });
    }

    /// Maps forecasts made with the global model of `round`: `(reporter,
    /// metrics)` pairs holding `next|...` keys, as stations report them.
    pub fn forecast(&self, round: u64, reports: &[(String, fedcrime_fl::Metrics)]) {
        self.update(|g| {
            if let Some(map) = forecast_map(&g.run, round, reports.iter().map(|(s, m)| (s, m))) {
                g.map = Some(map);
            }
        });
    }

    /// Sets the reference line of the convergence curve.
    pub fn set_reference(&self, reference: Option<Reference>) {
        self.update(|g| g.run.reference = reference);
    }

    /// The driver is waiting for stations to connect.
    pub fn waiting(&self, detail: impl Into<String>) {
        let detail = detail.into();
        self.update(|g| {
            if g.phase == "starting" || g.phase == "waiting" {
                g.phase = "waiting";
                g.phase_detail = Some(detail);
            }
        });
    }

    /// Takes in an event the driver passes to the engine.
    pub fn observe_event(&self, event: &Event) {
        // Bytes arrive with the round's record; no change to show before.
        if matches!(event, Event::Traffic { .. })
            || matches!(event, Event::SecAggReceived { msg, .. } if !matches!(msg, SecAggUp::Masked { .. }))
        {
            return;
        }
        self.update(|g| match event {
            Event::StationConnected { id } => {
                let s = station(g, id.as_str());
                s.connected = true;
                s.status = "idle";
                waiting_detail(g);
            }
            Event::StationDisconnected { id } => {
                let s = station(g, id.as_str());
                s.connected = false;
                s.status = "disconnected";
                waiting_detail(g);
            }
            Event::UpdateReceived { id, round, .. } | Event::SecAggReceived { id, round, .. } => {
                let s = station(g, id.as_str());
                s.status = "reported";
                s.updates += 1;
                s.last_round = Some(*round);
                g.answered += 1;
                progress(g);
            }
            Event::EvaluationReceived { id, .. } => {
                station(g, id.as_str()).status = "reported";
                g.answered += 1;
                progress(g);
            }
            Event::FitFailed { id, round, message }
            | Event::EvaluateFailed { id, round, message } => {
                let s = station(g, id.as_str());
                s.status = "failed";
                s.failures += 1;
                s.last_failure = Some(format!("round {round}: {message}"));
                g.answered += 1;
                progress(g);
            }
            Event::Traffic { .. } => {}
        });
    }

    /// Takes in an action the driver took from the engine.
    pub fn observe_action(&self, action: &Action) {
        match action {
            Action::SendFit {
                station: id, round, ..
            } => self.update(|g| {
                if g.phase != "training" || g.round != *round {
                    g.phase = "training";
                    g.round = *round;
                    g.asked = 0;
                    g.answered = 0;
                }
                g.asked += 1;
                let s = station(g, id.as_str());
                s.status = "training";
                s.last_round = Some(*round);
                progress(g);
            }),
            Action::SendEvaluate {
                station: id, round, ..
            } => self.update(|g| {
                if g.phase != "evaluating" || g.round != *round {
                    g.phase = "evaluating";
                    g.round = *round;
                    g.asked = 0;
                    g.answered = 0;
                }
                g.asked += 1;
                station(g, id.as_str()).status = "evaluating";
                progress(g);
            }),
            Action::RoundFinished(m) => self.update(|g| finish_round(g, m)),
            Action::Checkpoint(_) | Action::SendSecAgg { .. } | Action::Audit(_) => {}
            Action::Finished(summary) => self.update(|g| {
                match &summary.outcome {
                    Outcome::Completed => {
                        g.phase = "finished";
                        g.phase_detail =
                            Some(format!("{} rounds completed", summary.rounds_completed));
                    }
                    Outcome::Aborted { round, reason } => {
                        g.phase = "failed";
                        g.phase_detail = Some(format!("aborted in round {round}: {reason}"));
                    }
                }
                for s in g.stations.values_mut() {
                    if s.connected && s.status != "failed" {
                        s.status = "idle";
                    }
                }
            }),
        }
    }
}

fn station<'a>(g: &'a mut Inner, id: &str) -> &'a mut StationRow {
    g.stations
        .entry(id.to_string())
        .or_insert_with(|| StationRow {
            id: id.to_string(),
            status: "idle",
            ..StationRow::default()
        })
}

fn waiting_detail(g: &mut Inner) {
    if matches!(g.phase, "starting" | "waiting") {
        let n = g.stations.values().filter(|s| s.connected).count();
        g.phase = "waiting";
        g.phase_detail = Some(format!("{n} station(s) connected"));
    }
}

fn progress(g: &mut Inner) {
    if matches!(g.phase, "training" | "evaluating") {
        g.phase_detail = Some(format!(
            "{} of {} sampled stations answered",
            g.answered.min(g.asked),
            g.asked
        ));
    }
}

fn finish_round(g: &mut Inner, m: &RoundMetrics) {
    let metric = m
        .eval_metrics
        .get(&g.run.metric)
        .or_else(|| m.server_eval_metrics.get(&g.run.metric))
        .copied()
        .filter(|v| v.is_finite());
    g.rounds.push(RoundRow {
        round: m.round,
        sampled: m.sampled.len(),
        reported: m.completed.len(),
        failed: m
            .failed
            .iter()
            .map(|(k, v)| (format!("{k:?}").to_lowercase(), *v))
            .collect(),
        aggregated: m.aggregated,
        seconds: m.round_s,
        wait_s: m.wait_s,
        fit_s: m.fit_s,
        eval_s: m.eval_s,
        bytes_in: m.bytes_in,
        bytes_out: m.bytes_out,
        train_loss: m.train_loss,
        eval_loss: m.eval_loss.or(m.server_eval_loss),
        metric,
        note: m.note.clone(),
    });
    if g.rounds.len() > MAX_ROUNDS {
        g.rounds.remove(0);
    }
    g.round = m.round;
    g.phase = "waiting";
    g.phase_detail = Some(format!("round {} done; next round starting", m.round));
    for s in g.stations.values_mut() {
        if s.connected && matches!(s.status, "training" | "evaluating" | "reported") {
            s.status = "idle";
        }
    }
    if let Some(map) = forecast_map(&g.run, m.round, m.station_reports.iter()) {
        g.map = Some(map);
    }
}

/// The map of a round's forecasts, if stations reported any.
fn forecast_map<'a>(
    run: &RunInfo,
    round: u64,
    reports: impl Iterator<Item = (&'a String, &'a fedcrime_fl::Metrics)>,
) -> Option<MapView> {
    let mut areas: BTreeMap<u8, MapArea> = BTreeMap::new();
    let mut step = None;
    for (station, metrics) in reports {
        for (key, value) in metrics {
            let Some(rest) = key.strip_prefix(FORECAST_PREFIX) else {
                continue;
            };
            if rest == "step" {
                step = Some(*value);
                continue;
            }
            let (code, level) = match rest.split_once('|') {
                Some((c, "level")) => (c, true),
                Some(_) => continue,
                None => (rest, false),
            };
            let Some(info) = code.parse::<u8>().ok().and_then(fedcrime_data::area) else {
                continue;
            };
            if !value.is_finite() {
                continue;
            }
            let a = areas.entry(info.code).or_insert_with(|| MapArea {
                area: info.code,
                name: info.name,
                value: f64::NAN,
                level: None,
                station: Some(station.clone()),
            });
            if level {
                a.level = Some(value.round().clamp(1.0, 5.0) as u8);
            } else {
                a.value = *value;
            }
        }
    }
    let areas: Vec<MapArea> = areas
        .into_values()
        .filter(|a| a.value.is_finite())
        .collect();
    if areas.is_empty() {
        return None;
    }
    let (label, min, max) = if run.task == "risk" {
        ("expected risk level (1-5)".to_string(), 1.0, 5.0)
    } else {
        let hi = areas.iter().map(|a| a.value).fold(0.0, f64::max);
        ("expected incidents".to_string(), 0.0, hi.max(1.0))
    };
    let period = match (run.time_unit, step) {
        (Some(unit), Some(t)) if t >= 0.0 && t <= f64::from(u32::MAX) => {
            Some(fedcrime_station::live::step_label(unit, t as u32))
        }
        _ => None,
    };
    Some(MapView {
        round,
        period,
        task: run.task.clone(),
        value_label: label,
        min,
        max,
        areas,
    })
}

/// `[dashboard]`: where and for whom the dashboard is served.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardSection {
    /// Where it listens (TCP), e.g. `127.0.0.1:8443`.
    pub listen: SocketAddr,
    /// The bearer token (at least 16 characters: letters, digits, `-`,
    /// `_`, `.`, `~`). Prefer `token_file`.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token (trailing whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// HTTPS; with `client_ca`, only clients with a certificate from that
    /// CA get in (then no token is needed).
    #[serde(default)]
    pub tls: Option<HttpTls>,
}

/// A dashboard configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// A setting is wrong.
    #[error("dashboard.{field}: {reason}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Binding or the TLS files failed.
    #[error("dashboard: {0}")]
    Net(#[from] fedcrime_net::NetError),
}

impl DashboardSection {
    /// A dashboard on `listen` with `token`.
    pub fn new(listen: SocketAddr, token: Option<String>) -> Self {
        DashboardSection {
            listen,
            token,
            token_file: None,
            tls: None,
        }
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let mut paths: Vec<&mut PathBuf> = self.token_file.iter_mut().collect();
        if let Some(t) = &mut self.tls {
            paths.push(&mut t.cert);
            paths.push(&mut t.key);
            paths.extend(t.client_ca.iter_mut());
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The token (read from `token_file` if set), checked. A dashboard
    /// without a token must either require client certificates or listen
    /// on a loopback address only.
    pub fn token(&self) -> Result<Option<String>, DashboardError> {
        let bad = |field, reason: String| DashboardError::Setting { field, reason };
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err(bad("token", "give token or token_file, not both".into()))
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| bad("token_file", format!("{}: {e}", f.display())))?
                    .trim_end()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if let Some(t) = &token {
            if t.len() < 16
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
            {
                return Err(bad(
                    "token",
                    "at least 16 characters, letters, digits, '-', '_', '.' or '~' (e.g.                      `head -c 24 /dev/urandom | base64 | tr '+/' '-_'`)"
                        .into(),
                ));
            }
        }
        let certs = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if token.is_none() && !certs && !self.listen.ip().is_loopback() {
            return Err(bad(
                "token",
                format!(
                    "{} is reachable from other machines: set token (or token_file), or                      tls.client_ca",
                    self.listen
                ),
            ));
        }
        Ok(token)
    }

    /// Binds and serves `board` until `shutdown`; returns the address.
    pub async fn start(
        &self,
        board: Arc<Board>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<SocketAddr, DashboardError> {
        let token = self.token()?;
        let listener = HttpListener::bind(self.listen, self.tls.as_ref()).await?;
        let addr = listener.local_addr()?;
        let scheme = if listener.is_tls() { "https" } else { "http" };
        tokio::spawn(async move {
            if let Err(e) = listener.serve(http::router(board, token), shutdown).await {
                tracing::error!(error = %e, "the dashboard stopped");
            }
        });
        tracing::info!(url = %format!("{scheme}://{addr}/"), "dashboard listening");
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_fl::StationId;

    fn id(s: &str) -> StationId {
        s.parse().unwrap()
    }

    #[test]
    fn the_board_follows_a_round_and_maps_the_forecasts() {
        let mut run = RunInfo::for_task(Task::Risk);
        run.time_unit = Some(TimeUnit::Block);
        let board = Board::new(run);
        let mut seen = board.subscribe();
        board.observe_event(&Event::StationConnected { id: id("central") });
        board.observe_event(&Event::StationConnected { id: id("rampart") });
        assert!(seen.has_changed().unwrap());
        seen.mark_unchanged();
        let s = board.state();
        assert_eq!((s.phase, s.stations.len()), ("waiting", 2));
        assert_eq!(s.phase_detail.as_deref(), Some("2 station(s) connected"));

        board.observe_event(&Event::FitFailed {
            id: id("rampart"),
            round: 1,
            message: "out of memory".into(),
        });
        let mut m = RoundMetrics {
            round: 1,
            sampled: vec![id("central"), id("rampart")],
            completed: vec![id("central")],
            aggregated: true,
            round_s: 1.5,
            ..RoundMetrics::default()
        };
        m.eval_metrics.insert("macro_f1".into(), 0.4);
        m.station_reports.insert(
            "central".into(),
            BTreeMap::from([
                ("next|step".to_string(), 118_703.0),
                ("next|1".to_string(), 3.25),
                ("next|1|level".to_string(), 3.0),
                ("shap|level 1|hour".to_string(), 0.1),
            ]),
        );
        board.observe_action(&Action::RoundFinished(Box::new(m)));
        let s = board.state();
        assert_eq!(s.round, 1);
        assert_eq!(s.rounds[0].metric, Some(0.4));
        assert_eq!(s.rounds[0].reported, 1);
        let rampart = s.stations.iter().find(|r| r.id == "rampart").unwrap();
        assert_eq!(rampart.failures, 1);
        assert_eq!(
            rampart.last_failure.as_deref(),
            Some("round 1: out of memory")
        );
        let map = s.map.unwrap();
        assert_eq!(map.areas.len(), 1);
        assert_eq!((map.areas[0].area, map.areas[0].level), (1, Some(3)));
        assert_eq!(map.areas[0].value, 3.25);
        assert_eq!(map.period.as_deref(), Some("2024-03-01 20:00-24:00"));
        let json = serde_json::to_value(board.state()).unwrap();
        assert_eq!(json["run"]["metric"], "macro_f1");
        assert_eq!(json["map"]["areas"][0]["name"], "Central");
    }
}
