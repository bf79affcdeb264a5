//! `fedcrime-sim bench rounds`: the framework's cost per federated round
//! without training, over QUIC or in memory (see `fedcrime_sim::sim::bench`).
//!
//! ```text
//! fedcrime-sim bench rounds --params 1m --stations 21 --transport quic
//! fedcrime-sim bench rounds --params 20k --stations 1000 --fraction 0.1 --transport memory
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use fedcrime_fl::StrategyConfig;
use fedcrime_sim::progress;
use fedcrime_sim::sim::bench::{self, parse_count, BenchSpec};
use fedcrime_sim::sim::Transport;

use crate::GlobalOpts;

/// Options of `fedcrime-sim bench rounds`.
#[derive(Debug, Clone, Args)]
pub struct BenchRoundsArgs {
    /// Model parameters: 20k, 1m, 10m or any count (a dnn of that size).
    #[arg(long, value_parser = parse_count, default_value = "20k")]
    pub params: usize,
    /// Stations connected.
    #[arg(long, default_value_t = 21)]
    pub stations: usize,
    /// Fraction of the stations sampled each round.
    #[arg(long, default_value_t = 1.0)]
    pub fraction: f64,
    /// Rounds to run (the first, with the connections, is not counted).
    #[arg(long, default_value_t = 6)]
    pub rounds: u64,
    /// quic (real server and clients, mutual TLS, 127.0.0.1) or memory.
    #[arg(long, value_enum, default_value = "quic")]
    pub transport: Transport,
    /// Stations working at once [default: all].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The aggregation strategy.
    #[arg(long, default_value = "fedavg")]
    pub strategy: StrategyConfig,
    /// Folder for the QUIC run's certificates and server files
    /// [default: a temporary folder].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Rounds with secure aggregation (SecAgg+, its default settings); needs
    /// a mean-based strategy.
    #[arg(long)]
    pub secure_aggregation: bool,
    /// With --secure-aggregation: the generator that expands mask seeds.
    #[arg(long, value_enum, default_value_t = super::micro::MaskPrgArg::Aes128Ctr)]
    pub mask_prg: super::micro::MaskPrgArg,
    /// Measure what signed updates and the audit log cost: the same rounds
    /// twice, without and then with them (each station signs its update
    /// with Ed25519; the server hashes and verifies each one, appends every
    /// decision to its Merkle-tree log and signs a tree head per round),
    /// and print both and their ratio.
    #[arg(long)]
    pub audit: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: &BenchRoundsArgs, global: &GlobalOpts) -> Result<()> {
    let tmp = tempfile::tempdir().context("creating a temporary folder")?;
    let spec = BenchSpec {
        params: args.params,
        stations: args.stations,
        fraction: args.fraction,
        rounds: args.rounds,
        transport: args.transport,
        concurrency: args.concurrency,
        strategy: args.strategy.clone(),
        dir: args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf()),
        secure_aggregation: args
            .secure_aggregation
            .then(|| fedcrime_fl::secure::SecAggConfig {
                mask_prg: args.mask_prg.into(),
                ..Default::default()
            }),
        audit: false,
    };
    let bar = progress::bar(global.quiet || args.json, args.rounds, "bench", "rounds");
    let r = bench::run(&spec, &bar)?;
    if args.audit {
        let bar = progress::bar(global.quiet || args.json, args.rounds, "bench", "rounds");
        let audited = bench::run(
            &BenchSpec {
                audit: true,
                ..spec.clone()
            },
            &bar,
        )?;
        let ratio = audited.round_s / r.round_s;
        let floor = audit_floor_s(audited.params, audited.sampled)?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "plain": r,
                    "audited": audited,
                    "round_ratio": ratio,
                    "crypto_floor_s": floor,
                })
            );
            return Ok(());
        }
        print_result(&r);
        print_result(&audited);
        println!(
            "signed updates and audit log: {:.4} s per round against {:.4} s without ({:.3}x, {:+.4} s)",
            audited.round_s,
            r.round_s,
            ratio,
            audited.round_s - r.round_s
        );
        println!(
            "  reference: the cryptography alone on one core (each sampled update hashed by its station and by the server, signed and verified once) {floor:.4} s: the added time is {:.1}x of it",
            (audited.round_s - r.round_s) / floor
        );
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    print_result(&r);
    Ok(())
}

/// Prints one measurement for people.
fn print_result(r: &bench::BenchResult) {
    println!(
        "{} stations ({} sampled), {} params (dnn width {}), {}{} over {} rounds:",
        r.stations,
        r.sampled,
        r.params,
        r.hidden,
        r.transport,
        match (r.secure_aggregation, r.audit) {
            (true, true) => " with secure aggregation, signed updates and the audit log",
            (true, false) => " with secure aggregation",
            (false, true) => " with signed updates and the audit log",
            (false, false) => "",
        },
        r.rounds
    );
    println!(
        "  seconds per round  {:.4} median, {:.4} mean; slowest station {:.4}; aggregation {:.4}",
        r.round_s, r.round_mean_s, r.slowest_fit_s, r.aggregate_s
    );
    println!(
        "  framework overhead {:.4} s per round ({:.1} MB moved)",
        r.overhead_s,
        r.bytes_per_round as f64 / 1e6
    );
    println!(
        "  reference: memcpy of the round's model bytes {:.4} s ({:.1}x), TCP loopback {:.4} s ({:.1}x)",
        r.memcpy_s, r.overhead_vs_memcpy, r.tcp_s, r.overhead_vs_tcp
    );
    if r.transport == "quic" {
        println!(
            "  cryptographic floor: AES-128-GCM sealing and opening the round's bytes on all cores {:.4} s (round {:.1}x)",
            r.aes_gcm_bound_s, r.round_vs_aes_bound
        );
    }
    println!("  peak RSS {:.0} MiB", r.peak_rss_mib);
}

/// Seconds one core needs for the audit's cryptography of one round:
/// `sampled` updates of `params` f32 values, each hashed twice (station and
/// server), signed once and verified once (ring's SHA-256 and Ed25519),
/// best of 3.
fn audit_floor_s(params: usize, sampled: usize) -> Result<f64> {
    let values = vec![0.5f32; params];
    let key = fedcrime_audit::SigningKey::generate()?;
    let public = key.public_key();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        for i in 0..sampled {
            let a = fedcrime_audit::sha256_f32_raw(&values);
            let b = fedcrime_audit::sha256_f32_raw(&values);
            let msg = [a, b, [i as u8; 32]].concat();
            let sig = key.sign(&msg);
            public.verify(&msg, &sig)?;
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(best)
}
