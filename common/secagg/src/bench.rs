//! What secure aggregation costs, against the plaintext federated average of
//! the same updates measured in the same run: compute on each side and the
//! bytes each station sends and receives.
//!
//! [`bench_round`] runs one whole round through [`StationSession`] and
//! [`Aggregator`] in this process, timing every call. Stations run one after
//! another here, but in a federation each runs on its own machine, so the
//! round's critical path is the server's work plus, for each stage, the
//! slowest station's. The plaintext reference does what a plaintext round
//! does with the same numbers: each station hands over its `f32` update, the
//! server folds every update into an `f64` weighted sum and takes the mean.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::station::SEALED_LEN;
use crate::{Aggregator, Result, RoundSetup, SecAggConfig, StationSession, KEY_LEN};

/// One [`bench_round`] measurement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SecAggBench {
    /// Stations in the round.
    pub stations: u32,
    /// Elements per update.
    pub params: usize,
    /// Neighbours per station.
    pub neighbours: usize,
    /// Shamir threshold.
    pub threshold: usize,
    /// Stations that dropped after sharing keys (their masks were removed).
    pub dropped: usize,
    /// Median seconds of one station's protocol work over the whole round.
    pub station_s: f64,
    /// Slowest station's protocol work over the whole round.
    pub station_max_s: f64,
    /// Seconds of the server's protocol work (routing, summing, unmasking).
    pub server_s: f64,
    /// Critical path: the server's work plus each stage's slowest station.
    pub round_s: f64,
    /// Plaintext reference, same numbers: the server's weighted f64 sum and mean.
    pub plain_server_s: f64,
    /// Plaintext reference: one station handing over its f32 update (a copy).
    pub plain_station_s: f64,
    /// `round_s / (plain_server_s + plain_station_s)`.
    pub round_vs_plain: f64,
    /// Bytes one station sends with secure aggregation (keys, shares,
    /// masked input, unmask answer), median over stations.
    pub station_up_bytes: u64,
    /// Bytes one station receives for the protocol (roster, shares, unmask
    /// request), median over stations; the global model comes on top, as
    /// in a plaintext round.
    pub station_down_bytes: u64,
    /// Bytes one station sends in a plaintext round: its f32 update.
    pub plain_up_bytes: u64,
    /// `station_up_bytes / plain_up_bytes`.
    pub upload_expansion: f64,
    /// `(station_up_bytes + station_down_bytes) / plain_up_bytes`.
    pub total_expansion: f64,
    /// Largest difference between the unmasked mean and the plaintext mean.
    pub max_error: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs one round of `stations` stations with `params`-element updates
/// under `config`, `drop_fraction` of them vanishing after sharing keys.
pub fn bench_round(
    stations: u32,
    params: usize,
    config: &SecAggConfig,
    drop_fraction: f64,
) -> Result<SecAggBench> {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let setup = RoundSetup {
        round: 1,
        participants: stations,
        vector_len: params,
        config: config.clone(),
        graph_seed: rng.random(),
        weight_scale: 1000.0,
        max_update_norm: None,
    };
    let n = stations as usize;
    let updates: Vec<Vec<f32>> = (0..n)
        .map(|_| (0..params).map(|_| rng.random_range(-0.05..0.05)).collect())
        .collect();
    let examples: Vec<u64> = (0..n).map(|_| rng.random_range(100..1000)).collect();
    let dropped = ((n as f64) * drop_fraction).floor() as usize;
    let drops: Vec<bool> = (0..n).map(|i| i < dropped).collect();

    let mut server_s = 0.0;
    let mut station_s = vec![0.0f64; n];
    let mut up = vec![0u64; n];
    let mut down = vec![0u64; n];
    let mut critical = 0.0;
    let stage_max = |times: &[(usize, f64)], station_s: &mut [f64]| {
        let mut m = 0.0f64;
        for &(i, t) in times {
            station_s[i] += t;
            m = m.max(t);
        }
        m
    };

    let t0 = Instant::now();
    let mut server = Aggregator::new(setup.clone())?;
    server_s += t0.elapsed().as_secs_f64();
    let mut sessions = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for slot in 0..stations {
        let t = Instant::now();
        let mut s = StationSession::with_seed(setup.clone(), slot, rng.random())?;
        let advert = s.advertise()?;
        times.push((slot as usize, t.elapsed().as_secs_f64()));
        up[slot as usize] += (4 + 8 + 2 * KEY_LEN) as u64;
        let t = Instant::now();
        server.add_keys(slot, advert)?;
        server_s += t.elapsed().as_secs_f64();
        sessions.push(s);
    }
    critical += stage_max(&times, &mut station_s);

    let t = Instant::now();
    let rosters = server.rosters()?;
    server_s += t.elapsed().as_secs_f64();
    times.clear();
    for (&slot, roster) in &rosters {
        let i = slot as usize;
        down[i] += 8 + roster.keys.len() as u64 * (4 + 8 + 2 * KEY_LEN as u64);
        let t = Instant::now();
        let bundle = sessions[i].share_keys(roster)?;
        times.push((i, t.elapsed().as_secs_f64()));
        up[i] +=
            4 + 8 + KEY_LEN as u64 + bundle.shares.len() as u64 * (4 + 4 + 8 + SEALED_LEN as u64);
        let t = Instant::now();
        server.add_shares(slot, bundle)?;
        server_s += t.elapsed().as_secs_f64();
    }
    critical += stage_max(&times, &mut station_s);

    let t = Instant::now();
    let inboxes = server.route_shares()?;
    server_s += t.elapsed().as_secs_f64();
    times.clear();
    for (&slot, inbox) in &inboxes {
        let i = slot as usize;
        down[i] += inbox.len() as u64 * (4 + 4 + 8 + SEALED_LEN as u64);
        if drops[i] {
            continue;
        }
        let t = Instant::now();
        let input = sessions[i].masked_input(inbox, &updates[i], examples[i])?;
        times.push((i, t.elapsed().as_secs_f64()));
        up[i] += 4 + 8 + 4 * input.values.len() as u64;
        let t = Instant::now();
        server.add_masked(slot, input)?;
        server_s += t.elapsed().as_secs_f64();
    }
    critical += stage_max(&times, &mut station_s);

    let t = Instant::now();
    let requests = server.unmask_requests()?;
    server_s += t.elapsed().as_secs_f64();
    times.clear();
    for (&slot, request) in &requests {
        let i = slot as usize;
        down[i] += 8 + 4 * (request.survivors.len() + request.dropped.len()) as u64;
        let t = Instant::now();
        let response = sessions[i].unmask(request)?;
        times.push((i, t.elapsed().as_secs_f64()));
        let shares = (response.seed_shares.len() + response.key_shares.len()) as u64;
        up[i] += 4 + 8 + shares * (4 + 1 + KEY_LEN as u64);
        let t = Instant::now();
        server.add_unmask(slot, response)?;
        server_s += t.elapsed().as_secs_f64();
    }
    critical += stage_max(&times, &mut station_s);
    let t = Instant::now();
    let aggregate = server.finish()?;
    server_s += t.elapsed().as_secs_f64();
    let secure_mean = aggregate.mean();

    // The plaintext round over the same survivors' updates.
    let survivors: Vec<usize> = aggregate.survivors.iter().map(|&s| s as usize).collect();
    let t = Instant::now();
    let mut handed: Vec<Vec<f32>> = Vec::with_capacity(survivors.len());
    for &i in &survivors {
        handed.push(std::hint::black_box(updates[i].clone()));
    }
    let plain_station_s = t.elapsed().as_secs_f64() / survivors.len().max(1) as f64;
    let t = Instant::now();
    let mut sum = vec![0.0f64; params];
    let mut total = 0.0f64;
    for (u, &i) in handed.iter().zip(&survivors) {
        let w = (examples[i] as f64 / setup.weight_scale).min(1.0);
        total += w;
        for (s, &v) in sum.iter_mut().zip(u) {
            *s += w * f64::from(v);
        }
    }
    let plain_mean: Vec<f64> = sum.iter().map(|s| s / total).collect();
    let plain_server_s = t.elapsed().as_secs_f64();
    let max_error = secure_mean
        .iter()
        .zip(&plain_mean)
        .map(|(&a, &b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max);

    let active: Vec<usize> = (0..n).filter(|&i| !drops[i]).collect();
    let mut st: Vec<f64> = active.iter().map(|&i| station_s[i]).collect();
    let station_max_s = st.iter().copied().fold(0.0, f64::max);
    let mut ups: Vec<f64> = active.iter().map(|&i| up[i] as f64).collect();
    let mut downs: Vec<f64> = active.iter().map(|&i| down[i] as f64).collect();
    let station_up_bytes = median(&mut ups) as u64;
    let station_down_bytes = median(&mut downs) as u64;
    let plain_up_bytes = 4 * params as u64;
    let round_s = server_s + critical;
    Ok(SecAggBench {
        stations,
        params,
        neighbours: server.graph().degree(),
        threshold: server.threshold(),
        dropped,
        station_s: median(&mut st),
        station_max_s,
        server_s,
        round_s,
        plain_server_s,
        plain_station_s,
        round_vs_plain: round_s / (plain_server_s + plain_station_s),
        station_up_bytes,
        station_down_bytes,
        plain_up_bytes,
        upload_expansion: station_up_bytes as f64 / plain_up_bytes as f64,
        total_expansion: (station_up_bytes + station_down_bytes) as f64 / plain_up_bytes as f64,
        max_error,
    })
}

/// The Markdown table of a list of measurements.
pub fn format_table(rows: &[SecAggBench]) -> String {
    let mut out = String::from(
        "| stations | params | k | t | dropped | station s (max) | server s | round s | plain s | ÷ plain | up bytes / plain | up+down / plain | max error |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.4} ({:.4}) | {:.4} | {:.4} | {:.5} | {:.1}x | {:.4}x | {:.4}x | {:.1e} |\n",
            r.stations,
            r.params,
            r.neighbours,
            r.threshold,
            r.dropped,
            r.station_s,
            r.station_max_s,
            r.server_s,
            r.round_s,
            r.plain_server_s + r.plain_station_s,
            r.round_vs_plain,
            r.upload_expansion,
            r.total_expansion,
            r.max_error,
        ));
    }
    out
}
