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
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!("{result}");
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
