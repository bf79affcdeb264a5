//! `fedcrime-server`: the agency's federated aggregation server.
//!
//! Reads `--config server.toml`, applies the flags on top, and runs the
//! federation until the last round or Ctrl-C (which abandons the round in
//! progress; completed rounds stay checkpointed for `--resume`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fedcrime_cli::logging::{block_on_main, describe_error};
use fedcrime_data::{Period, Task};
use fedcrime_fl::{EarlyStopping, Goal, StrategyConfig};
use fedcrime_ml::model::ModelKind;
use fedcrime_net::ServerTls;
use fedcrime_server::config::{EvaluationSection, LogFormat};
use fedcrime_server::ServerConfig;

fedcrime_cli::use_jemalloc!();

/// The fedcrime aggregation server: runs federated rounds over precinct
/// stations connected with QUIC and mutual TLS, checkpointing after every round.
///
/// Settings come from --config (see server/server.example.toml); every flag
/// below overrides the matching setting.
#[derive(Parser, Debug)]
#[command(
    name = "fedcrime-server",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Instead of serving: work with a run's audit log.
    #[command(subcommand)]
    command: Option<Command>,
    /// The TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:4433 [listen].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// A fedcrime-certs PKI folder: ca.pem, server.pem, server.key, crl.pem [tls].
    #[arg(long, value_name = "DIR")]
    pki: Option<PathBuf>,
    /// The agency CA certificate [tls.ca].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The server certificate [tls.cert].
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The server private key [tls.key].
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The revocation list, re-read when it changes [tls.crl].
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// Number of rounds [federation.rounds].
    #[arg(long)]
    rounds: Option<u64>,
    /// Strategy and parameters, e.g. fedavg, fedprox:mu=0.1, multikrum:byzantine=1,keep=3 [strategy].
    #[arg(long, value_name = "SPEC")]
    strategy: Option<String>,
    /// Task: risk or counts [task.task].
    #[arg(long)]
    task: Option<Task>,
    /// Period of the counts task: day or week [task.period].
    #[arg(long)]
    period: Option<Period>,
    /// Model: dnn or lstm [model.kind].
    #[arg(long)]
    model: Option<ModelKind>,
    /// Stations that must be connected before a round starts [federation.min_stations].
    #[arg(long)]
    min_stations: Option<usize>,
    /// Minimum stations sampled per round [federation.min_fit].
    #[arg(long)]
    min_fit: Option<usize>,
    /// Minimum accepted updates to aggregate [federation.min_updates].
    #[arg(long)]
    min_updates: Option<usize>,
    /// Fraction of connected stations sampled per round [federation.fraction_fit].
    #[arg(long)]
    fraction: Option<f64>,
    /// Round deadline in seconds [federation.round_deadline].
    #[arg(long, value_name = "SECONDS")]
    deadline: Option<f64>,
    /// Seed of the initial model, sampling and station training [federation.seed].
    #[arg(long)]
    seed: Option<u64>,
    /// Local epochs per round, exactly [train.epochs]. Unset: one epoch of
    /// at least 20 optimizer steps (small stations train more epochs).
    #[arg(long)]
    epochs: Option<u32>,
    /// The least local optimizer steps per round [train.min_local_steps].
    #[arg(long)]
    min_local_steps: Option<u32>,
    /// Stop when the validation score (macro-F1 for risk, MAE for counts;
    /// from --eval-data or federated evaluation) has not improved for this
    /// many rounds, and keep the best round's model; --rounds is then the
    /// cap [federation.early_stopping].
    #[arg(long)]
    patience: Option<u64>,
    /// Local learning rate [train.lr].
    #[arg(long)]
    lr: Option<f64>,
    /// Local mini-batch size [train.batch_size].
    #[arg(long)]
    batch_size: Option<u32>,
    /// Held-out data for server-side evaluation (.csv or .csv.gz) [evaluation.data].
    #[arg(long, value_name = "FILE")]
    eval_data: Option<PathBuf>,
    /// Featurizer shared with the stations (featurizer.json) [task.featurizer].
    #[arg(long, value_name = "FILE")]
    featurizer: Option<PathBuf>,
    /// Output folder: metrics.csv, metrics.jsonl, model.safetensors [output.dir].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Checkpoint folder [output.checkpoint_dir].
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Serve the live web dashboard on this TCP address, e.g.
    /// 127.0.0.1:8443 [dashboard.listen]. Off by default; anywhere but a
    /// loopback address it needs --dashboard-token-file (or
    /// dashboard.tls.client_ca in the config).
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<std::net::SocketAddr>,
    /// A file holding the dashboard's bearer token [dashboard.token_file];
    /// open http://ADDR/?token=TOKEN once in the browser.
    #[arg(long, value_name = "FILE", requires = "dashboard")]
    dashboard_token_file: Option<PathBuf>,
    /// Continue after the last checkpointed round [resume].
    #[arg(long)]
    resume: bool,
    /// Start afresh even when --out holds another run's files, replacing
    /// them [force].
    #[arg(long)]
    force: bool,
    /// Log format: text or json [log.format].
    #[arg(long)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info or fedcrime_server=debug [log.level].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// The tamper-evident audit log (<out>/audit): an append-only Merkle
    /// tree (RFC 6962) of every round, update and aggregate, with a signed
    /// tree head after each round.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
enum AuditCommand {
    /// Checks the whole log: every entry parses, every tree head's
    /// signature holds and its root is that of the entries it covers.
    /// Exit 0 when intact, 1 when tampered with or unreadable.
    Verify {
        /// The log folder (entries.bin, heads.jsonl, log.pub).
        #[arg(long, value_name = "DIR")]
        log: PathBuf,
        /// The audit public key to expect (audit.pub from the PKI); default:
        /// the log's own log.pub.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Also fail when entries follow the last signed head (a run that
        /// crashed mid-round).
        #[arg(long)]
        strict: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints the proof that a station's update of a round is in the log
    /// (JSON): the entry, its inclusion proof under the latest signed tree
    /// head, and consistency proofs from every earlier head. The station
    /// checks it with `fedcrime-client audit check`.
    Prove {
        /// The log folder.
        #[arg(long, value_name = "DIR")]
        log: PathBuf,
        /// The round.
        #[arg(long)]
        round: u64,
        /// The station, e.g. station-07.
        #[arg(long)]
        station: String,
        /// Write the proof here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

fn audit(action: &AuditCommand) -> anyhow::Result<ExitCode> {
    match action {
        AuditCommand::Verify {
            log,
            key,
            strict,
            json,
        } => {
            let expected = match key {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Some(fedcrime_audit::PublicKey::from_text(
                        text.trim(),
                        &path.display().to_string(),
                    )?)
                }
                None => None,
            };
            let verified = if *strict {
                fedcrime_audit::verify_log_strict(log, expected.as_ref())
            } else {
                fedcrime_audit::verify_log(log, expected.as_ref())
            };
            match verified {
                Ok(report) => {
                    if *json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        println!("{report}");
                        println!("audit log {} is intact", log.display());
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!(
                        "fedcrime-server: audit log {} FAILED verification: {e}",
                        log.display()
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::Prove {
            log,
            round,
            station,
            out,
        } => {
            let bundle = fedcrime_audit::prove(log, *round, station)?;
            let text = bundle.to_json_pretty()?;
            match out {
                Some(path) => {
                    std::fs::write(path, text.as_bytes())
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "fedcrime-server: proof of {station}'s round-{round} entry written to {}",
                        path.display()
                    );
                }
                None => println!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn config(cli: &Cli) -> anyhow::Result<ServerConfig> {
    let mut cfg = match &cli.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => {
            let pki = cli
                .pki
                .clone()
                .context("no --config: give at least --pki DIR (or --ca, --cert and --key)");
            match (pki, &cli.ca, &cli.cert, &cli.key) {
                (Ok(dir), _, _, _) => ServerConfig::new(ServerTls::from_pki_dir(&dir)),
                (Err(_), Some(ca), Some(cert), Some(key)) => ServerConfig::new(ServerTls {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    crl: None,
                    crl_check_interval_ms: 1000,
                }),
                (Err(e), ..) => return Err(e),
            }
        }
    };
    if let Some(dir) = &cli.pki {
        let tls = ServerTls::from_pki_dir(dir);
        cfg.tls.ca = tls.ca;
        cfg.tls.cert = tls.cert;
        cfg.tls.key = tls.key;
        cfg.tls.crl = tls.crl;
    }
    macro_rules! set {
        ($flag:expr, $field:expr) => {
            if let Some(v) = $flag.clone() {
                $field = v;
            }
        };
    }
    set!(cli.listen, cfg.listen);
    set!(cli.ca, cfg.tls.ca);
    set!(cli.cert, cfg.tls.cert);
    set!(cli.key, cfg.tls.key);
    if let Some(c) = &cli.crl {
        cfg.tls.crl = Some(c.clone());
    }
    set!(cli.rounds, cfg.federation.rounds);
    if let Some(s) = &cli.strategy {
        cfg.strategy = s.parse::<StrategyConfig>().context("--strategy")?;
    }
    set!(cli.task, cfg.task.task);
    set!(cli.period, cfg.task.period);
    set!(cli.model, cfg.model.kind);
    set!(cli.min_stations, cfg.federation.min_stations);
    set!(cli.min_fit, cfg.federation.min_fit);
    set!(cli.min_updates, cfg.federation.min_updates);
    set!(cli.fraction, cfg.federation.fraction_fit);
    if let Some(d) = cli.deadline {
        cfg.federation.round_deadline = std::time::Duration::try_from_secs_f64(d)
            .with_context(|| format!("--deadline {d} is not a number of seconds"))?;
    }
    set!(cli.seed, cfg.federation.seed);
    if let Some(e) = cli.epochs {
        cfg.train.epochs = Some(e);
    }
    if let Some(m) = cli.min_local_steps {
        cfg.train.min_local_steps = Some(m);
    }
    if let Some(patience) = cli.patience {
        let (monitor, goal) = match cfg.task.task {
            Task::Risk => ("macro_f1", Goal::Max),
            Task::Counts => ("mae", Goal::Min),
        };
        cfg.federation.early_stopping = Some(EarlyStopping {
            monitor: monitor.into(),
            goal,
            patience,
            ..EarlyStopping::default()
        });
    }
    set!(cli.lr, cfg.train.lr);
    set!(cli.batch_size, cfg.train.batch_size);
    if let Some(data) = &cli.eval_data {
        match &mut cfg.evaluation {
            Some(e) => e.data = data.clone(),
            None => {
                cfg.evaluation = Some(EvaluationSection {
                    data: data.clone(),
                    split: Default::default(),
                    batch_size: 4096,
                })
            }
        }
    }
    if let Some(f) = &cli.featurizer {
        cfg.task.featurizer = Some(f.clone());
    }
    set!(cli.out, cfg.output.dir);
    if let Some(c) = &cli.checkpoint_dir {
        cfg.output.checkpoint_dir = Some(c.clone());
    }
    if cli.resume {
        cfg.resume = true;
    }
    if cli.force {
        cfg.force = true;
    }
    if let Some(addr) = cli.dashboard {
        let d = cfg
            .dashboard
            .get_or_insert_with(|| fedcrime_server::dashboard::DashboardSection::new(addr, None));
        d.listen = addr;
        if let Some(f) = &cli.dashboard_token_file {
            d.token = None;
            d.token_file = Some(f.clone());
        }
    }
    set!(cli.log_format, cfg.log.format);
    set!(cli.log_level, cfg.log.level);
    cfg.validate()?;
    Ok(cfg)
}

async fn serve(cfg: ServerConfig) -> anyhow::Result<ExitCode> {
    let report = match fedcrime_server::run(cfg).await {
        Ok(r) => r,
        // The configuration or the files it names: the documented exit 2.
        Err(e) if e.is_setup() => {
            eprintln!("fedcrime-server: error: {}", describe_error(&e));
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let last = report.history.last();
    eprintln!(
        "fedcrime-server: {} round(s) completed ({:?}); metrics in {}",
        report.summary.rounds_completed,
        report.summary.outcome,
        report.metrics_csv.display()
    );
    if let Some(m) = last {
        eprintln!(
            "fedcrime-server: last round: train loss {:?}, evaluation loss {:?}",
            m.train_loss, m.eval_loss
        );
    }
    if let Some(best) = report.summary.best {
        eprintln!(
            "fedcrime-server: best validation round {} (score {:.4}){}; model.safetensors holds it",
            best.round,
            best.score,
            if report.summary.stopped_early {
                ", stopped early: the score stopped improving"
            } else {
                ""
            }
        );
    }
    Ok(if report.completed() {
        ExitCode::SUCCESS
    } else if report.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Audit { action }) = &cli.command {
        return match audit(action) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("fedcrime-server: error: {}", describe_error(e.as_ref()));
                ExitCode::from(2)
            }
        };
    }
    let cfg = match config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fedcrime-server: error: {}", describe_error(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    cfg.log.init();
    fedcrime_ml::device::prepare();
    block_on_main("fedcrime-server", serve(cfg))
}
