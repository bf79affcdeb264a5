//! `fedcrime-sim simulate`: a whole federation on one machine next to the
//! centralized baselines, written to `--out` as `metrics.csv`,
//! `convergence.svg` / `.png`, `report.md` and `sim.toml` (see
//! `fedcrime_sim::sim`).
//!
//! Without arguments it runs the default study: the embedded
//! LA-like synthetic data, task `risk`, model `dnn`, 21 stations (one per
//! LAPD area), FedAvg for 20 rounds of 1 local epoch over QUIC with mutual
//! TLS on 127.0.0.1, and the single-worker and data-parallel centralized
//! baselines with as many passes over the data.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;

use fedcrime_data::{Partition, Period, Task};
use fedcrime_fl::StrategyConfig;
use fedcrime_ml::model::ModelKind;
use fedcrime_ml::DeviceChoice;
use fedcrime_sim::sim::{self, RunOptions, SimConfig, Transport};

use crate::GlobalOpts;
use fedcrime_server::dashboard::{Board, DashboardSection, Reference};
use std::sync::Arc;

/// Options of `fedcrime-sim simulate`; each overrides the `--config` file.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// A TOML file describing the study (see `sim.toml` in any output
    /// folder); flags override its settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// An LAPD export (.csv or .csv.gz) instead of the synthetic data.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Synthetic incidents to generate when no --data is given [default: 200000].
    #[arg(long)]
    pub rows: Option<usize>,
    /// Days of synthetic data [default: 365].
    #[arg(long)]
    pub days: Option<u32>,
    /// The task: risk or counts [default: risk].
    #[arg(long)]
    pub task: Option<Task>,
    /// The period of the counts task: day or week [default: day].
    #[arg(long)]
    pub period: Option<Period>,
    /// The model: dnn, lstm or gat-tcn (counts task, bureau partition) [default: dnn].
    #[arg(long)]
    pub model: Option<ModelKind>,
    /// Hidden width of the model (the architecture's default when absent).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Dropout probability [default: 0; with dropout stations train one at a time].
    #[arg(long)]
    pub dropout: Option<f64>,
    /// The aggregation strategy, with parameters: fedavg, fedprox:mu=0.01,
    /// fedavgm, fedadam, fedyogi, fedadagrad, fedmedian, fedtrimmedavg:beta=0.2,
    /// krum:byzantine=1, multikrum:byzantine=1,keep=2 [default: fedavg].
    #[arg(long)]
    pub strategy: Option<StrategyConfig>,
    /// Federated rounds, exactly [default: until the validation score has
    /// not improved for --patience rounds, at most 300].
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Local epochs per round, exactly [default: one epoch of at least
    /// --min-local-steps optimizer steps].
    #[arg(long)]
    pub local_epochs: Option<usize>,
    /// The least optimizer steps a station takes per round: stations with
    /// few samples train more epochs [default: 20, or 0 with --local-epochs].
    #[arg(long)]
    pub min_local_steps: Option<u32>,
    /// Centralized epochs, exactly [default: until the validation score has
    /// not improved for --patience epochs, at most 300; with --rounds, the
    /// federation's passes over the data].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Rounds or epochs without a better validation score (macro-F1 for
    /// risk, MAE for counts) before a method stops [default: 10].
    #[arg(long)]
    pub patience: Option<u64>,
    /// natural (one station per LAPD area), bureau, iid or dirichlet:ALPHA
    /// [default: natural].
    #[arg(long)]
    pub partition: Option<Partition>,
    /// Stations of the iid and dirichlet partitions [default: 21].
    #[arg(long)]
    pub stations: Option<usize>,
    /// Fraction of the stations sampled each round [default: 1.0].
    #[arg(long)]
    pub fraction: Option<f64>,
    /// quic (a real server and clients with mutual TLS on 127.0.0.1) or
    /// memory (no sockets, for scale) [default: quic].
    #[arg(long, value_enum)]
    pub transport: Option<Transport>,
    /// Secure aggregation (SecAgg+): the server learns only the sum of each
    /// round's updates (the protocol's defaults; settings in the config
    /// file's [federation.secure_aggregation]). Needs a mean-based strategy
    /// (fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad).
    #[arg(long)]
    pub secure_aggregation: bool,
    /// With --secure-aggregation: the probability that a station drops out
    /// of a round at a random stage of the protocol (over QUIC it closes its
    /// connection there and reconnects) [default: 0].
    #[arg(long, value_name = "P")]
    pub station_dropout: Option<f64>,
    /// Differential privacy: the Gaussian noise multiplier z (this or any
    /// --dp-* flag turns DP on, z default 1; the config file's [privacy]
    /// section holds every setting). Central DP-FedAvg by default: the
    /// server clips each update to --dp-clip and adds N(0, (z·C/m)²) to
    /// their mean; metrics.csv gains epsilon per round (docs/privacy-and-audit.md).
    #[arg(long, value_name = "Z")]
    pub dp_noise: Option<f64>,
    /// The clipping norm: a number, or `adaptive` (Andrew et al. 2021:
    /// follows the median update norm from 0.1) [default: adaptive].
    #[arg(long, value_name = "C|adaptive")]
    pub dp_clip: Option<String>,
    /// Where the noise goes: central (DP-FedAvg at the server) or local
    /// (DP-SGD at every station, per-sample clipping to --dp-clip, default
    /// 1.0) [default: central].
    #[arg(long, value_name = "MODE")]
    pub dp_mode: Option<fedcrime_fl::DpMode>,
    /// Stop training before the round that would spend more than this ε.
    #[arg(long, value_name = "E")]
    pub dp_target_epsilon: Option<f64>,
    /// δ of the reported (ε, δ) [default: 1e-5].
    #[arg(long, value_name = "D")]
    pub dp_delta: Option<f64>,
    /// Sign every update with the station's Ed25519 key and keep the
    /// server's audit log (Merkle tree, signed tree heads) in OUT/audit
    /// (QUIC: OUT/quic/server/audit), as a deployment does.
    #[arg(long)]
    pub audit: bool,
    /// Stations training at once [default: the cores].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Where every method trains: cpu, auto, cuda or cuda:N [default: cpu].
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    /// Samples per optimizer step, for every method [default: 64].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Adam's learning rate, for every method [default: 0.001].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Fairness-aware training at every station and in the single-worker
    /// centralized baseline: `none`, `reweigh` (risk), `penalty:LAMBDA`
    /// (demographic parity; bias parity for counts) or `penalty-eo:LAMBDA`
    /// (equalized odds, risk) [default: none]. Across precincts, see
    /// `--strategy qfedavg:q=Q`.
    #[arg(long)]
    pub fairness: Option<fedcrime_ml::train::FairTraining>,
    /// Federated explanations: after training, every station explains the
    /// best model on ROWS of its own test samples and sends only mean |SHAP|
    /// per feature and output; the report gets the global ranking and a
    /// per-station heatmap [default: off].
    #[arg(long, value_name = "ROWS")]
    pub explain: Option<usize>,
    /// The stations' explanation method: gradient (GradientSHAP),
    /// integrated-gradients, kernel or exact [default: gradient].
    #[arg(long, value_name = "METHOD")]
    pub explain_method: Option<String>,
    /// Serve the agency's live dashboard on this address while the
    /// federation runs (e.g. 127.0.0.1:8080). Anywhere
    /// but loopback it needs --dashboard-token-file.
    #[arg(long, value_name = "ADDR")]
    pub dashboard: Option<std::net::SocketAddr>,
    /// A file holding the dashboard's bearer token; open
    /// http://ADDR/?token=TOKEN once in the browser.
    #[arg(long, value_name = "FILE", requires = "dashboard")]
    pub dashboard_token_file: Option<PathBuf>,
    /// Keep serving the dashboard this many seconds after the study ends
    /// [default: 0].
    #[arg(
        long,
        value_name = "SECONDS",
        requires = "dashboard",
        default_value_t = 0.0
    )]
    pub dashboard_hold: f64,
    /// Skip scoring the selected federated model on every station's own
    /// test samples (the report's worst, median and best station).
    #[arg(long)]
    pub no_station_scores: bool,
    /// Seed of the partition, initial model, sampling and training [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Skip the centralized baselines (for scale runs).
    #[arg(long)]
    pub no_centralized: bool,
    /// Output folder [default: runs/<timestamp>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

impl SimulateArgs {
    /// The study: the file's settings (or the defaults), then the flags.
    pub fn config(&self) -> Result<SimConfig> {
        let mut c = match &self.config {
            Some(path) => SimConfig::load(path)?,
            None => SimConfig::default(),
        };
        if let Some(v) = &self.data {
            c.data.file = Some(v.clone());
        }
        if let Some(v) = self.rows {
            c.data.rows = v;
        }
        if let Some(v) = self.days {
            c.data.days = v;
        }
        if let Some(v) = self.task {
            c.data.task = v;
        }
        if let Some(v) = self.period {
            c.data.period = v;
        }
        if let Some(v) = self.model {
            c.model.kind = v;
        }
        if let Some(v) = self.hidden {
            c.model.hidden = Some(v);
        }
        if let Some(v) = self.dropout {
            c.model.dropout = v;
        }
        if let Some(v) = &self.strategy {
            c.federation.strategy = v.clone();
        }
        if let Some(v) = self.rounds {
            c.federation.rounds = Some(v);
        }
        if let Some(v) = self.local_epochs {
            c.federation.local_epochs = Some(v);
        }
        if let Some(v) = self.min_local_steps {
            c.federation.min_local_steps = Some(v);
        }
        if let Some(v) = self.epochs {
            c.centralized.epochs = Some(v);
        }
        if let Some(v) = self.patience {
            c.selection.patience = v;
        }
        if let Some(v) = &self.partition {
            c.federation.partition = v.clone();
            if matches!(v, Partition::Natural | Partition::Bureau) {
                c.federation.stations = None;
            }
        }
        if let Some(v) = self.stations {
            c.federation.stations = Some(v);
        }
        if let Some(v) = self.fraction {
            c.federation.fraction = v;
        }
        if self.secure_aggregation && c.federation.secure_aggregation.is_none() {
            c.federation.secure_aggregation = Some(Default::default());
        }
        if let Some(v) = self.station_dropout {
            c.federation.station_dropout = v;
        }
        if let Some(v) = self.transport {
            c.federation.transport = v;
        }
        if let Some(v) = self.concurrency {
            c.federation.concurrency = Some(v);
        }
        if self.audit {
            c.federation.audit = true;
        }
        let dp_flags = self.dp_noise.is_some()
            || self.dp_clip.is_some()
            || self.dp_mode.is_some()
            || self.dp_target_epsilon.is_some()
            || self.dp_delta.is_some();
        if dp_flags {
            let p = c.privacy.get_or_insert_with(Default::default);
            if let Some(z) = self.dp_noise {
                p.noise_multiplier = z;
            }
            if let Some(mode) = self.dp_mode {
                p.mode = mode;
            }
            match self.dp_clip.as_deref() {
                Some("adaptive") => {
                    p.clip = None;
                    p.adaptive_clip = Some(Default::default());
                }
                Some(v) => {
                    p.clip = Some(v.parse::<f64>().map_err(|_| {
                        anyhow::anyhow!("--dp-clip {v:?}: expected a number or `adaptive`")
                    })?);
                    p.adaptive_clip = None;
                }
                None if p.clip.is_none()
                    && p.adaptive_clip.is_none()
                    && p.mode == fedcrime_fl::DpMode::Central =>
                {
                    p.adaptive_clip = Some(Default::default());
                }
                None => {}
            }
            if let Some(e) = self.dp_target_epsilon {
                p.target_epsilon = Some(e);
            }
            if let Some(d) = self.dp_delta {
                p.delta = d;
            }
        }
        if let Some(v) = self.device {
            c.federation.device = v;
        }
        if let Some(v) = self.batch_size {
            c.train.batch_size = v;
        }
        if let Some(v) = self.fairness {
            c.train.fairness = v;
        }
        if let Some(v) = self.explain {
            c.explain.rows = v;
        }
        if let Some(v) = &self.explain_method {
            c.explain.method = v.clone();
        }
        if self.no_station_scores {
            c.explain.station_scores = false;
        }
        if let Some(v) = self.lr {
            c.train.lr = v;
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        if self.no_centralized {
            c.centralized.enabled = false;
        }
        c.validate()?;
        Ok(c)
    }

    /// The output folder: `--out`, else `runs/<unix seconds>`.
    pub fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| default_out(""))
    }
}

/// `runs/<prefix><YYYYMMDD-HHMMSS>` with the time now (UTC): the output
/// folder of a run without `--out`.
pub fn default_out(prefix: &str) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from("runs").join(format!("{prefix}{}", timestamp(secs)))
}

/// `YYYYMMDD-HHMMSS` (UTC) of a Unix time.
fn timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as fedcrime_data::DayNumber;
    let rem = secs % 86_400;
    let (y, m, d) = fedcrime_data::calendar::civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs the command.
pub fn run(args: &SimulateArgs, global: &GlobalOpts) -> Result<()> {
    let cfg = args.config()?;
    let out = args.out();
    let dashboard = match args.dashboard {
        Some(addr) => Some(start_dashboard(
            &cfg,
            addr,
            args.dashboard_token_file.clone(),
        )?),
        None => None,
    };
    let outcome = sim::simulate(
        &cfg,
        &out,
        RunOptions {
            quiet: global.quiet,
            dashboard: dashboard.as_ref().map(|(b, _)| b.clone()),
        },
    )
    .with_context(|| format!("simulation into {}", out.display()))?;
    if let Some((board, _runtime)) = &dashboard {
        board.set_reference(central_reference(&outcome));
        if args.dashboard_hold > 0.0 {
            eprintln!(
                "the study is done; the dashboard stays up {} s (Ctrl-C stops)",
                args.dashboard_hold
            );
            std::thread::sleep(std::time::Duration::from_secs_f64(args.dashboard_hold));
        }
    }
    if !global.quiet {
        println!("{}", outcome.report);
        eprintln!(
            "wrote {}: metrics.csv, convergence.svg, convergence.png, report.md, sim.toml",
            out.display()
        );
    }
    Ok(())
}

/// The dashboard's board and the runtime serving it (dropping it stops
/// the server).
fn start_dashboard(
    cfg: &sim::SimConfig,
    addr: std::net::SocketAddr,
    token_file: Option<PathBuf>,
) -> Result<(Arc<Board>, tokio::runtime::Runtime)> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let run = sim::dashboard_run(cfg, format!("sim-{}", timestamp(secs)));
    let board = Arc::new(Board::new(run));
    let mut section = DashboardSection::new(addr, None);
    section.token_file = token_file;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("dashboard")
        .enable_all()
        .build()
        .context("starting the dashboard's runtime")?;
    let bound = runtime
        .block_on(section.start(board.clone(), std::future::pending()))
        .context("starting the dashboard")?;
    eprintln!("dashboard: http://{bound}/");
    Ok((board, runtime))
}

/// The single-worker centralized baseline's best validation headline.
fn central_reference(outcome: &sim::SimOutcome) -> Option<Reference> {
    let higher = sim::report::higher_is_better(outcome.config.data.task);
    outcome
        .runs
        .iter()
        .find(|r| !r.federated && r.method == "centralized")
        .and_then(|r| {
            r.rows
                .iter()
                .map(|row| row.val.headline())
                .filter(|v| v.is_finite())
                .reduce(|a, b| if (b > a) == higher { b } else { a })
                .map(|value| Reference {
                    label: "centralized (single worker)".to_string(),
                    value,
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.toml");
        std::fs::write(
            &path,
            "seed = 3\n[federation]\nrounds = 7\npartition = \"iid\"\nstations = 9\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "x",
            "--config",
            path.to_str().unwrap(),
            "--rounds",
            "2",
            "--strategy",
            "fedprox:mu=0.5",
            "--transport",
            "memory",
            "--no-centralized",
        ]);
        let c = cli.args.config().unwrap();
        assert_eq!(c.seed, 3);
        assert_eq!(c.federation.rounds, Some(2));
        assert_eq!(c.federation.stations, Some(9));
        assert_eq!(c.federation.strategy, StrategyConfig::FedProx { mu: 0.5 });
        assert_eq!(c.federation.transport, Transport::Memory);
        assert!(!c.centralized.enabled);
        let cli = Cli::parse_from([
            "x",
            "--config",
            path.to_str().unwrap(),
            "--partition",
            "natural",
        ]);
        assert_eq!(cli.args.config().unwrap().federation.stations, None);
        let cli = Cli::parse_from(["x", "--fraction", "2"]);
        let e = cli.args.config().unwrap_err().to_string();
        assert!(e.contains("federation.fraction"), "{e}");
    }

    #[test]
    fn dp_flags_turn_differential_privacy_on() {
        let c = Cli::parse_from(["x", "--dp-noise", "1.0", "--dp-clip", "adaptive"])
            .args
            .config()
            .unwrap();
        let p = c.privacy.unwrap();
        assert_eq!(p.noise_multiplier, 1.0);
        assert!(p.adaptive_clip.is_some() && p.clip.is_none());
        let c = Cli::parse_from(["x", "--dp-clip", "0.5", "--dp-target-epsilon", "8"])
            .args
            .config()
            .unwrap();
        let p = c.privacy.unwrap();
        assert_eq!(
            (p.noise_multiplier, p.clip, p.target_epsilon),
            (1.0, Some(0.5), Some(8.0))
        );
        let c = Cli::parse_from(["x", "--dp-noise", "1.1", "--dp-mode", "local"])
            .args
            .config()
            .unwrap();
        let p = c.privacy.unwrap();
        assert_eq!((p.mode, p.local_clip()), (fedcrime_fl::DpMode::Local, 1.0));
        assert!(Cli::parse_from(["x"])
            .args
            .config()
            .unwrap()
            .privacy
            .is_none());
        let e = Cli::parse_from(["x", "--dp-clip", "big"])
            .args
            .config()
            .unwrap_err();
        assert!(e.to_string().contains("--dp-clip"), "{e}");
        let e = Cli::parse_from(["x", "--dp-noise", "1", "--secure-aggregation"])
            .args
            .config()
            .unwrap_err();
        assert!(e.to_string().contains("privacy.mode"), "{e}");
    }

    #[test]
    fn default_out_is_a_timestamped_runs_folder() {
        assert_eq!(timestamp(0), "19700101-000000");
        assert_eq!(timestamp(1_700_000_000), "20231114-221320");
        let cli = Cli::parse_from(["x"]);
        assert!(cli.args.out().starts_with("runs"));
    }
}
