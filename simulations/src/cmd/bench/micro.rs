//! The component benchmarks: wire codec, QUIC transport and aggregation, each
//! against a reference measured in the same run (memcpy, plain TCP loopback).

use anyhow::{Context, Result};
use clap::Args;
use {fedcrime_fl as fl, fedcrime_net as net, fedcrime_wire as wire};

/// `fedcrime-sim bench wire`.
#[derive(Args, Debug, Clone)]
pub struct WireBenchArgs {
    /// Model size in parameters (f32).
    #[arg(long, default_value_t = 10_000_000)]
    pub params: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `fedcrime-sim bench transport`.
#[derive(Args, Debug, Clone)]
pub struct TransportBenchArgs {
    /// Bytes per transfer (an update of this size).
    #[arg(long, default_value_t = 40_000_000)]
    pub bytes: usize,
    /// Timed transfers per transport (alternating QUIC and TCP).
    #[arg(long, default_value_t = 15)]
    pub rounds: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `fedcrime-sim bench aggregation`.
#[derive(Args, Debug, Clone)]
pub struct AggregationBenchArgs {
    /// Model sizes in parameters, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000_000usize, 10_000_000])]
    pub params: Vec<usize>,
    /// Updates per aggregation (stations answering a round).
    #[arg(long, default_value_t = 21)]
    pub updates: usize,
    /// Repetitions; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Print JSON lines instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
}

/// `fedcrime-sim bench secagg`.
#[derive(Args, Debug, Clone)]
pub struct SecAggBenchArgs {
    /// Stations per round, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [21u32, 100, 1000])]
    pub stations: Vec<u32>,
    /// Update sizes in parameters, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [20_000usize, 1_000_000])]
    pub params: Vec<usize>,
    /// Fraction of stations that drop after sharing keys (their masks are
    /// rebuilt from their neighbours' shares).
    #[arg(long, default_value_t = 0.0)]
    pub drop: f64,
    /// Skip combinations with more than this many stations x parameters
    /// (1,000 stations at 1M parameters expand 4 × 10^11 mask bytes: minutes).
    #[arg(long, default_value_t = 200_000_000)]
    pub max_work: usize,
    /// The protocol's settings, as in the server's `[secure_aggregation]`.
    #[command(flatten)]
    pub config: SecAggSettingsArgs,
    /// Print JSON lines instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
}

/// Secure-aggregation settings on the command line.
#[derive(Args, Debug, Clone)]
pub struct SecAggSettingsArgs {
    /// Fraction of each station's neighbours that may drop, in [0, 0.5).
    #[arg(long, default_value_t = 1.0 / 3.0)]
    pub dropout_tolerance: f64,
    /// Weighted update deltas are clipped to ±this before quantization.
    #[arg(long, default_value_t = 1.0)]
    pub clip_range: f32,
    /// Bits per quantized element (1 to 24).
    #[arg(long, default_value_t = 16)]
    pub quantization_bits: u32,
    /// Neighbours per station (0: complete graph up to 100 stations, else
    /// 2·ceil(5·log2 n)).
    #[arg(long, default_value_t = 0)]
    pub neighbours: usize,
    /// The generator that expands mask seeds into masks.
    #[arg(long, value_enum, default_value_t = MaskPrgArg::Aes128Ctr)]
    pub mask_prg: MaskPrgArg,
}

/// `mask_prg` on the command line ([`fedcrime_secagg::MaskPrg`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskPrgArg {
    /// AES-128 in counter mode (AES-NI/VAES where present).
    #[value(name = "aes128-ctr")]
    Aes128Ctr,
    /// ChaCha20 (RFC 8439): faster on processors without AES instructions.
    Chacha20,
}

impl From<MaskPrgArg> for fedcrime_secagg::MaskPrg {
    fn from(arg: MaskPrgArg) -> Self {
        match arg {
            MaskPrgArg::Aes128Ctr => fedcrime_secagg::MaskPrg::Aes128Ctr,
            MaskPrgArg::Chacha20 => fedcrime_secagg::MaskPrg::Chacha20,
        }
    }
}

impl SecAggSettingsArgs {
    /// The settings, checked.
    pub fn config(&self) -> Result<fedcrime_secagg::SecAggConfig> {
        let c = fedcrime_secagg::SecAggConfig {
            dropout_tolerance: self.dropout_tolerance,
            clip_range: self.clip_range,
            quantization_bits: self.quantization_bits,
            neighbours: self.neighbours,
            mask_prg: self.mask_prg.into(),
        };
        c.validate()?;
        Ok(c)
    }
}

/// Secure aggregation rounds vs the plaintext average of the same updates.
pub fn secagg(args: &SecAggBenchArgs) -> Result<()> {
    use fedcrime_secagg::bench;
    let config = args.config.config()?;
    let mut rows = Vec::new();
    for &params in &args.params {
        for &stations in &args.stations {
            if stations as usize * params > args.max_work {
                eprintln!(
                    "bench secagg: skipping {stations} stations at {params} parameters \
                     (more than --max-work {})",
                    args.max_work
                );
                continue;
            }
            let r =
                bench::bench_round(stations, params, &config, args.drop).with_context(|| {
                    format!("secure aggregation of {stations} stations at {params} parameters")
                })?;
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
            }
            rows.push(r);
        }
    }
    if !args.json {
        print!("{}", bench::format_table(&rows));
    }
    Ok(())
}

/// Encode + decode of a model vs memcpy of its bytes.
pub fn wire(args: &WireBenchArgs) -> Result<()> {
    let result = wire::bench::bench_codec(args.params).context("wire codec benchmark")?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!("{result}");
    }
    Ok(())
}

/// A large update over QUIC + mutual TLS vs plain TCP, both on loopback.
pub fn transport(args: &TransportBenchArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary PKI folder")?;
    let opts = fedcrime_certs::PkiOptions::new(time::OffsetDateTime::now_utc(), 1);
    let pki = fedcrime_certs::Pki::generate(dir.path(), 1, &opts)
        .context("generating the benchmark's PKI")?;
    let result = net::bench_quic_vs_tcp(
        &net::ServerTls::from_pki_dir(pki.dir()),
        &net::ClientTls::from_pki_dir(pki.dir(), "station-01", "localhost"),
        &net::TransportSettings::default(),
        args.bytes,
        args.rounds,
    )
    .context("QUIC vs TCP benchmark")?;
    let aead = net::bench_aead(args.bytes).context("AEAD benchmark")?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
        println!("{}", serde_json::to_string(&aead)?);
    } else {
        println!("{result}");
        println!("{aead}");
    }
    Ok(())
}

/// Aggregation of `updates` models with FedAvg, FedMedian and Krum vs memcpy.
pub fn aggregation(args: &AggregationBenchArgs) -> Result<()> {
    let mut rows = Vec::new();
    for &params in &args.params {
        rows.extend(
            fl::bench::bench_aggregation(
                params,
                args.updates,
                &fl::bench::default_strategies(),
                args.repeats,
                7,
            )
            .with_context(|| format!("aggregating {params} parameters"))?,
        );
    }
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print!("{}", fl::bench::format_table(&rows));
    }
    Ok(())
}
