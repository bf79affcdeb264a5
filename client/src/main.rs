//! `fedcrime-client`: a precinct station.
//!
//! Reads `--config station.toml`, applies the flags on top, loads the
//! station's own records and takes part in the server's run until it ends or
//! Ctrl-C (which says Bye to the server).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fedcrime_cli::logging::{block_on_main, describe_error};
use fedcrime_client::config::{Areas, LogFormat, TlsSection};
use fedcrime_client::{ClientOutcome, StationConfig};
use fedcrime_ml::DeviceChoice;
use fedcrime_net::pki_layout;

/// A fedcrime precinct station: trains on its own crime records and sends
/// only model updates to the agency's aggregation server.
///
/// Settings come from --config (see client/station.example.toml); every flag
/// below overrides the matching setting.
#[derive(Parser, Debug)]
#[command(name = "fedcrime-client", version, about, long_about = None)]
struct Cli {
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
    /// ca.pem and stations/NAME.pem / NAME.key [tls].
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
    /// The records: a LAPD export, .csv or .csv.gz (default: synthetic data) [data.file].
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
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
        }),
        _ => anyhow::bail!("no --config: give --pki DIR --station NAME, or --ca, --cert and --key"),
    };
    if let Some(tls) = pki_tls {
        cfg.tls = tls;
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
    set!(cli.device, cfg.device);
    set!(cli.threads, cfg.threads);
    set!(cli.log_format, cfg.log.format);
    set!(cli.log_level, cfg.log.level);
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
    let cfg = match config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fedcrime-client: error: {}", describe_error(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    cfg.log.init();
    block_on_main("fedcrime-client", station(cfg))
}
