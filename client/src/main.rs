//! `fedcrime-client`: a precinct station.
//!
//! Reads `--config station.toml`, applies the flags on top, loads the
//! station's own records and takes part in the server's run until it ends or
//! Ctrl-C (which says Bye to the server); with a `[serve]` section it also
//! serves predictions. `fedcrime-client serve` serves predictions only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fedcrime_cli::logging::{block_on_main, describe_error};
use fedcrime_client::config::{Areas, LogFormat, TlsSection};
use fedcrime_client::{ClientOutcome, StationConfig};
use fedcrime_ml::DeviceChoice;
use fedcrime_net::pki_layout;

fedcrime_cli::use_jemalloc!();

/// A fedcrime precinct station: trains on its own crime records and sends
/// only model updates to the agency's aggregation server.
///
/// Settings come from --config (see client/station.example.toml); every flag
/// below overrides the matching setting. With a [serve] section in the
/// config, the station also serves predictions over HTTP while it trains,
/// swapping in each new global model.
///
/// `fedcrime-client serve --help`: the prediction service alone.
#[derive(Parser, Debug)]
#[command(name = "fedcrime-client", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The server, host:port [server].
    #[arg(long, value_name = "ADDR")]
    server: Option<String>,
    /// The name the server certificate must carry [server_name].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// A fedcrime-certs PKI folder and this station's name in it: uses
    /// ca.pem, stations/NAME.pem / NAME.key / NAME.sign.key [tls], and
    /// audit.pub to check the server's audit-log tree heads [audit].
    #[arg(long, value_name = "DIR", requires = "station")]
    pki: Option<PathBuf>,
    /// The station's name in the --pki folder.
    #[arg(long, value_name = "NAME")]
    station: Option<String>,
    /// The agency CA certificate [tls.ca].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// This station's certificate [tls.cert].
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// This station's private key [tls.key].
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// This station's update-signing key, NAME.sign.key [tls.signing_key]
    /// (with --pki: found beside the certificate).
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// The records: a LAPD export, .csv or .csv.gz (default: synthetic data) [data.file].
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Benchmark the network path: answer each round with the model received,
    /// loading no data and training nothing [echo].
    #[arg(long)]
    echo: bool,
    /// Rows of synthetic data when no --data [data.synthetic_rows].
    #[arg(long)]
    synthetic_rows: Option<usize>,
    /// Seed of the synthetic data [data.synthetic_seed].
    #[arg(long)]
    synthetic_seed: Option<u64>,
    /// This precinct's LAPD area code (1-21); repeat for several [data.area].
    #[arg(long, value_name = "CODE")]
    area: Vec<u8>,
    /// For studies: natural, bureau, iid or dirichlet:ALPHA [data.partition].
    #[arg(long, value_name = "SPEC")]
    partition: Option<String>,
    /// Stations of an iid or dirichlet partition [data.stations].
    #[arg(long)]
    stations: Option<usize>,
    /// Which part of the partition: an index from 0 or a name [data.part].
    #[arg(long, value_name = "PART")]
    part: Option<String>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// Where it computes and how it logs: the same flags for both modes.
#[derive(clap::Args, Debug)]
struct RuntimeArgs {
    /// auto, cpu, cuda or cuda:N [device].
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// CPU threads for libtorch, 0 for its default [threads].
    #[arg(long)]
    threads: Option<usize>,
    /// Log format: text or json [log.format].
    #[arg(long)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info [log.level].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

impl RuntimeArgs {
    /// Sets the given flags over `cfg`.
    fn apply(&self, cfg: &mut StationConfig) {
        if let Some(d) = self.device {
            cfg.device = d;
        }
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        if let Some(f) = self.log_format {
            cfg.log.format = f;
        }
        if let Some(l) = &self.log_level {
            cfg.log.level = l.clone();
        }
    }
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Serve predictions only (no training): the station's model over HTTP
    /// (Open Inference Protocol v2, /predict/risk, /predict/counts) and
    /// incident ingestion (POST /incidents).
    ///
    /// With --config, the [data] and [serve] sections of station.toml are
    /// used (flags override). Without, a quick try:
    /// `fedcrime-client serve --model runs/x --data city.csv --listen 127.0.0.1:8080`.
    Serve(Box<ServeArgs>),
    /// The server's tamper-evident audit log, from this station's side.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
enum AuditCommand {
    /// Checks a proof from `fedcrime-server audit prove`: the tree head is
    /// signed by the agency's audit key, the entry is in the tree it
    /// commits to, and every tree head this station kept during the run is
    /// a prefix of it (the log was only appended to, never rewritten).
    /// Exit 0 when the proof holds, 1 when it does not.
    Check {
        /// The proof (JSON).
        #[arg(long, value_name = "FILE")]
        proof: PathBuf,
        /// The agency's audit public key (audit.pub from the PKI).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The tree heads this station kept (its tree-heads.jsonl).
        #[arg(long, value_name = "FILE")]
        heads: Option<PathBuf>,
    },
}

fn audit_check(proof: &Path, key: &Path, heads: Option<&Path>) -> anyhow::Result<ExitCode> {
    let key_text =
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let key = fedcrime_audit::PublicKey::from_text(key_text.trim(), &key.display().to_string())?;
    let text =
        std::fs::read_to_string(proof).with_context(|| format!("reading {}", proof.display()))?;
    let bundle = fedcrime_audit::ProofBundle::from_json(&text, &proof.display().to_string())?;
    let known = match heads {
        Some(path) => fedcrime_audit::HeadStore::open(path)?.heads().to_vec(),
        None => Vec::new(),
    };
    match fedcrime_audit::check_proof(&bundle, &key, &known) {
        Ok(report) => {
            println!("{report}");
            println!(
                "proof holds: the entry is in the agency's log, consistent with {} kept tree head(s)",
                known.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("fedcrime-client: the proof FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The station's TOML configuration (its [data] and [serve] sections).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The model: a folder written by `fedcrime-sim train`, `fedcrime-sim
    /// simulate` or `fedcrime-server` (holding model.safetensors), or the
    /// file [serve.model].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The station's records, a LAPD export .csv or .csv.gz (default:
    /// synthetic data) [data.file].
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// The station's LAPD area code(s), repeatable; only those are served
    /// and ingested (default: all 21) [data.area].
    #[arg(long, value_name = "CODE")]
    area: Vec<u8>,
    /// Address to listen on [serve.listen] (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// The durable store of ingested incidents [serve.store] (default
    /// incidents.store).
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
    /// The model name in /v2/models/NAME [serve.name] (default fedcrime).
    #[arg(long)]
    name: Option<String>,
    /// HTTPS certificate chain (PEM) [serve.tls.cert]; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// HTTPS private key (PEM) [serve.tls.key].
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA [serve.tls.client_ca].
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Compute every request anew instead of keeping each period's
    /// predictions until the model or the data change [serve.cache].
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Do not serve: time the model's bare forward pass (one area, and 21
    /// areas x 6 periods) and featurization N times each, print JSON and
    /// exit (the reference of the latency benchmark).
    #[arg(long, value_name = "N")]
    bench_forward: Option<usize>,
}

/// The configuration of `serve`: the config file's (TLS for the federation
/// not needed) or defaults, with the flags on top.
fn serve_config(args: &ServeArgs) -> anyhow::Result<StationConfig> {
    let mut cfg = match &args.config {
        Some(path) => StationConfig::from_file(path)?,
        None => {
            if args.model.is_none() {
                anyhow::bail!("serve: give --model DIR (or --config with [serve] model)");
            }
            StationConfig::new(TlsSection {
                ca: "unused-ca.pem".into(),
                cert: "unused.pem".into(),
                key: "unused.key".into(),
                signing_key: None,
            })
        }
    };
    let mut section = cfg.serve.clone().unwrap_or_default();
    if let Some(m) = &args.model {
        section.model = Some(m.clone());
    }
    if let Some(l) = args.listen {
        section.listen = l;
    }
    if let Some(s) = &args.store {
        section.store = s.clone();
    }
    if let Some(n) = &args.name {
        section.name = n.clone();
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        section.tls = Some(fedcrime_net::http::HttpTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.client_ca.clone(),
        });
    }
    if args.no_cache {
        section.cache = false;
    }
    if section.model.is_none() {
        anyhow::bail!("serve: no model to serve: give --model DIR or [serve] model");
    }
    cfg.serve = Some(section);
    if let Some(d) = &args.data {
        cfg.data.file = Some(d.clone());
    }
    match args.area.as_slice() {
        [] => {}
        [one] => cfg.data.area = Some(Areas::One(*one)),
        many => cfg.data.area = Some(Areas::Many(many.to_vec())),
    }
    args.runtime.apply(&mut cfg);
    cfg.data.selection().context("checking the configuration")?;
    if let Some(s) = &cfg.serve {
        s.validate().context("checking the configuration")?;
    }
    Ok(cfg)
}

/// Serves predictions until Ctrl-C.
async fn serve_only(cfg: StationConfig, bench_forward: Option<usize>) -> anyhow::Result<ExitCode> {
    let section = cfg.serve.clone().unwrap_or_default();
    if cfg.threads > 0 {
        tch::set_num_threads(i32::try_from(cfg.threads).unwrap_or(i32::MAX));
    }
    let device = cfg
        .device
        .resolve()
        .map_err(|e| anyhow::anyhow!("device: {e}"))?;
    let selection = cfg.data.selection()?;
    let data = cfg.data.clone();
    let incidents = tokio::task::spawn_blocking(move || data.load()).await??;
    if let Some(n) = bench_forward {
        let model = section
            .model
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--bench-forward needs --model"))?;
        let served = fedcrime_client::serve::load_served(model, device)?;
        let report = tokio::task::spawn_blocking(move || {
            fedcrime_client::serve::bench_forward(&served, &incidents, n.max(10))
        })
        .await??;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let running = match fedcrime_client::serve::start(
        &section,
        incidents,
        fedcrime_client::served_areas(&selection),
        device,
        async {
            fedcrime_cli::logging::shutdown_signal().await;
        },
    )
    .await
    {
        Ok(r) => r,
        Err(e) if e.is_setup() => {
            eprintln!("fedcrime-client: error: {}", describe_error(&e));
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "fedcrime-client: serving {} on {}://{} (Ctrl-C stops)",
        section.name,
        if running.tls { "https" } else { "http" },
        running.addr
    );
    running.task.await??;
    Ok(ExitCode::SUCCESS)
}

fn config(cli: &Cli) -> anyhow::Result<StationConfig> {
    let pki_tls = match (&cli.pki, &cli.station) {
        (Some(dir), Some(name)) => Some(TlsSection {
            ca: dir.join(pki_layout::CA_CERT),
            cert: dir
                .join(pki_layout::STATIONS_DIR)
                .join(format!("{name}.pem")),
            key: dir
                .join(pki_layout::STATIONS_DIR)
                .join(format!("{name}.key")),
            signing_key: Some(dir.join(pki_layout::station_signing_key(name)))
                .filter(|p| p.is_file()),
        }),
        _ => None,
    };
    let mut cfg = match (&cli.config, &pki_tls, &cli.ca, &cli.cert, &cli.key) {
        (Some(path), ..) => StationConfig::from_file(path)?,
        (None, Some(tls), ..) => StationConfig::new(tls.clone()),
        (None, None, Some(ca), Some(cert), Some(key)) => StationConfig::new(TlsSection {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            signing_key: None,
        }),
        _ => anyhow::bail!("no --config: give --pki DIR --station NAME, or --ca, --cert and --key"),
    };
    if let Some(tls) = pki_tls {
        cfg.tls = tls;
    }
    if let (Some(dir), Some(name)) = (&cli.pki, &cli.station) {
        if cfg.privacy.accountant.is_none() {
            cfg.privacy.accountant = Some(
                dir.join(pki_layout::STATIONS_DIR)
                    .join(format!("{name}.privacy-accountant.json")),
            );
        }
        let server_key = dir.join(pki_layout::AUDIT_PUB);
        if cfg.audit.server_key.is_none() && server_key.is_file() {
            cfg.audit.server_key = Some(server_key);
            cfg.audit.heads = Some(
                dir.join(pki_layout::STATIONS_DIR)
                    .join(format!("{name}.tree-heads.jsonl")),
            );
        }
    }
    if let Some(k) = &cli.signing_key {
        cfg.tls.signing_key = Some(k.clone());
    }
    if cfg.privacy.accountant.is_none() {
        // Beside the config file (a station's own folder), else in memory.
        cfg.privacy.accountant = cli.config.as_ref().map(|c| {
            c.parent()
                .unwrap_or(Path::new("."))
                .join("privacy-accountant.json")
        });
    }
    macro_rules! set {
        ($flag:expr, $field:expr) => {
            if let Some(v) = $flag.clone() {
                $field = v;
            }
        };
    }
    set!(cli.server, cfg.server);
    set!(cli.server_name, cfg.server_name);
    set!(cli.ca, cfg.tls.ca);
    set!(cli.cert, cfg.tls.cert);
    set!(cli.key, cfg.tls.key);
    if let Some(d) = &cli.data {
        cfg.data.file = Some(d.clone());
    }
    if cli.echo {
        cfg.echo = true;
    }
    set!(cli.synthetic_rows, cfg.data.synthetic_rows);
    set!(cli.synthetic_seed, cfg.data.synthetic_seed);
    match cli.area.as_slice() {
        [] => {}
        [one] => cfg.data.area = Some(Areas::One(*one)),
        many => cfg.data.area = Some(Areas::Many(many.to_vec())),
    }
    if let Some(p) = &cli.partition {
        cfg.data.partition = Some(p.clone());
    }
    if let Some(n) = cli.stations {
        cfg.data.stations = Some(n);
    }
    if let Some(part) = &cli.part {
        cfg.data.part = Some(match part.parse::<usize>() {
            Ok(i) => fedcrime_station::data::PartRef::Index(i),
            Err(_) => fedcrime_station::data::PartRef::Name(part.clone()),
        });
    }
    cli.runtime.apply(&mut cfg);
    cfg.validate().context("checking the configuration")?;
    Ok(cfg)
}

/// Takes part in the run and says how it ended.
async fn station(cfg: StationConfig) -> anyhow::Result<ExitCode> {
    let report = match fedcrime_client::run(cfg).await {
        Ok(r) => r,
        // The configuration or the files it names: the documented exit 2.
        Err(e) if e.is_setup() => {
            eprintln!("fedcrime-client: error: {}", describe_error(&e));
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "fedcrime-client: {} ({} update(s), {} evaluation(s) sent)",
        match report.outcome {
            ClientOutcome::Done => "the run is complete",
            ClientOutcome::RunFinished => "the run was already over",
            ClientOutcome::Interrupted => "stopped",
            ClientOutcome::Aborted => "the server aborted the run",
        },
        report.updates_sent,
        report.evaluations_sent
    );
    Ok(match report.outcome {
        ClientOutcome::Interrupted => ExitCode::from(130),
        ClientOutcome::Aborted => ExitCode::FAILURE,
        ClientOutcome::Done | ClientOutcome::RunFinished => ExitCode::SUCCESS,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Audit {
        action: AuditCommand::Check { proof, key, heads },
    }) = &cli.command
    {
        return match audit_check(proof, key, heads.as_deref()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("fedcrime-client: error: {}", describe_error(e.as_ref()));
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::Serve(args)) = &cli.command {
        let cfg = match serve_config(args) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("fedcrime-client: error: {}", describe_error(e.as_ref()));
                return ExitCode::from(2);
            }
        };
        cfg.log.init();
        fedcrime_ml::device::prepare();
        return block_on_main("fedcrime-client", serve_only(cfg, args.bench_forward));
    }
    let cfg = match config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fedcrime-client: error: {}", describe_error(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    cfg.log.init();
    fedcrime_ml::device::prepare();
    block_on_main("fedcrime-client", station(cfg))
}
