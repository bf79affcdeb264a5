//! `fedcrime-sim swarm`: many stations in one process, each with its own
//! certificate and QUIC connection, against a server that runs elsewhere
//! (`fedcrime-server`). For load tests (a thousand connections from one
//! machine), robustness studies (some stations poisoned) and the chaos
//! suite (`make chaos`).
//!
//! A station either trains a real model on its area's records (`--work
//! train`, station-NN takes area NN, wrapping round the 21 areas) or sends
//! back the global model with a small seeded change (`--work echo`: the
//! protocol and the server's load, no training). Poisoned stations
//! (`--poison`) run the same learner and then corrupt what they send.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use fedcrime_client::{Client, ClientOptions, ClientOutcome, DataStation, LearnerFactory};
use fedcrime_data::{load_path, synth::generate_incidents, Incident};
use fedcrime_fl::{EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics};
use fedcrime_net::{ClientTls, Connector, ReconnectPolicy, TransportSettings};
use fedcrime_params::Params;
use fedcrime_station::data::Selection;
use fedcrime_station::protocol::RunSetup;
use fedcrime_station::{Learner, StationError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::GlobalOpts;
use fedcrime_sim::sim::quic::Gate;

/// Run many stations in one process against a running server.
#[derive(Debug, Args)]
pub struct SwarmArgs {
    /// The server's address, e.g. 127.0.0.1:4433.
    #[arg(long, value_name = "ADDR")]
    server: SocketAddr,
    /// The PKI folder made by `fedcrime-certs init` (ca.pem and
    /// stations/<name>.pem and .key).
    #[arg(long, value_name = "DIR")]
    pki: PathBuf,
    /// The name the server's certificate carries.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    server_name: String,
    /// Which stations to run, by the number in their name (station-NN):
    /// ranges and lists, e.g. `1-20` or `1-5,9`.
    #[arg(long, value_name = "LIST", default_value = "1-20")]
    stations: String,
    /// What a station does when asked to train.
    #[arg(long, value_enum, default_value_t = Work::Train)]
    work: Work,
    /// Crime records (.csv or .csv.gz) for `--work train`; default:
    /// synthetic LA-like records.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Rows of synthetic records when no --data is given.
    #[arg(long, default_value_t = 60_000)]
    synthetic_rows: usize,
    /// Seed of the synthetic records.
    #[arg(long, default_value_t = 7)]
    synthetic_seed: u64,
    /// Poisoned stations, `KIND:LIST` pairs separated by `;`, e.g.
    /// `sign-flip:17;scale=10:18;nan:19;random:20`. Kinds: `sign-flip`
    /// (sends global - (trained - global)), `scale=X` (global + X (trained -
    /// global)), `nan` (one value NaN), `random` (values drawn from N(0, 1)).
    #[arg(long, value_name = "SPEC")]
    poison: Option<String>,
    /// Stations training at the same time (default: the machine's cores).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Writes each station's outcome here as JSON.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// What a station does when asked to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Work {
    /// Train the run's model on the station's area.
    Train,
    /// Send back the global model with a small seeded change (no training).
    Echo,
}

/// How a poisoned station corrupts its update.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Poison {
    SignFlip,
    Scale(f32),
    NaN,
    Random,
}

impl std::str::FromStr for Poison {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sign-flip" => Ok(Poison::SignFlip),
            "nan" => Ok(Poison::NaN),
            "random" => Ok(Poison::Random),
            _ => match s.strip_prefix("scale=").map(str::parse::<f32>) {
                Some(Ok(x)) if x.is_finite() => Ok(Poison::Scale(x)),
                _ => Err(format!(
                    "unknown poison {s:?}: sign-flip, scale=X, nan or random"
                )),
            },
        }
    }
}

/// Parses `1-20`, `1-5,9`.
fn parse_list(spec: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("station list {spec:?}: {part:?} is not N or N-M");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().with_context(bad)?,
                    b.trim().parse().with_context(bad)?,
                );
                if a == 0 || b < a || b - a > 100_000 {
                    bail!("station list {spec:?}: {part:?} is not a range from 1 up");
                }
                out.extend(a..=b);
            }
            None => {
                let n: usize = part.parse().with_context(bad)?;
                if n == 0 {
                    bail!("station list {spec:?}: stations are numbered from 1");
                }
                out.push(n);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        bail!("station list {spec:?} names no station");
    }
    Ok(out)
}

/// Parses `KIND:LIST;KIND:LIST`.
fn parse_poison(spec: &str) -> Result<BTreeMap<usize, Poison>> {
    let mut out = BTreeMap::new();
    for pair in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (kind, list) = pair
            .rsplit_once(':')
            .with_context(|| format!("--poison {pair:?}: expected KIND:LIST"))?;
        let kind: Poison = kind
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--poison: {e}"))?;
        for n in parse_list(list)? {
            if out.insert(n, kind).is_some() {
                bail!("--poison: station {n} is named twice");
            }
        }
    }
    Ok(out)
}

/// Sends the global model back with a small seeded change.
struct Echo {
    seed: u64,
}

impl Learner for Echo {
    fn fit(&self, ins: &FitIns) -> fedcrime_station::Result<FitRes> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ ins.round.wrapping_mul(0x9e37_79b9));
        let data: Vec<f32> = ins
            .global
            .data()
            .iter()
            .map(|v| v + rng.random_range(-1e-3f32..1e-3))
            .collect();
        Ok(FitRes {
            params: Arc::new(
                Params::new(ins.global.spec().clone(), data)
                    .map_err(|e| StationError::Setup(e.to_string()))?,
            ),
            num_examples: 100,
            metrics: Metrics::from([("loss".to_string(), 1.0)]),
        })
    }

    fn evaluate(&self, _ins: &EvaluateIns) -> fedcrime_station::Result<EvaluateRes> {
        Ok(EvaluateRes {
            loss: 1.0,
            num_examples: 100,
            metrics: Metrics::new(),
        })
    }
}

/// A learner behind the training gate that may corrupt what it sends.
struct Station {
    inner: Arc<dyn Learner>,
    gate: Arc<Gate>,
    poison: Option<Poison>,
    seed: u64,
}

impl Learner for Station {
    fn fit(&self, ins: &FitIns) -> fedcrime_station::Result<FitRes> {
        let mut res = self.gate.run(|| self.inner.fit(ins))?;
        let Some(poison) = self.poison else {
            return Ok(res);
        };
        let global = ins.global.data();
        let sent = Arc::make_mut(&mut res.params).data_mut();
        match poison {
            Poison::SignFlip => {
                for (s, g) in sent.iter_mut().zip(global) {
                    *s = g - (*s - g);
                }
            }
            Poison::Scale(x) => {
                for (s, g) in sent.iter_mut().zip(global) {
                    *s = g + x * (*s - g);
                }
            }
            Poison::NaN => {
                if let Some(v) = sent.first_mut() {
                    *v = f32::NAN;
                }
            }
            Poison::Random => {
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ ins.round);
                for s in sent.iter_mut() {
                    // Box-Muller: N(0, 1).
                    let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
                    *s = (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos();
                }
            }
        }
        Ok(res)
    }

    fn evaluate(&self, ins: &EvaluateIns) -> fedcrime_station::Result<EvaluateRes> {
        self.gate.run(|| self.inner.evaluate(ins))
    }
}

/// Builds a station's learner for the server's run.
struct Factory {
    work: Option<DataStation>,
    gate: Arc<Gate>,
    poison: Option<Poison>,
    seed: u64,
}

impl LearnerFactory for Factory {
    fn learner(&self, setup: &RunSetup) -> std::result::Result<Arc<dyn Learner>, StationError> {
        let inner: Arc<dyn Learner> = match &self.work {
            Some(data) => data.learner(setup)?,
            None => Arc::new(Echo { seed: self.seed }),
        };
        Ok(Arc::new(Station {
            inner,
            gate: self.gate.clone(),
            poison: self.poison,
            seed: self.seed,
        }))
    }
}

#[derive(Debug, Serialize)]
struct StationOutcome {
    outcome: String,
    updates_sent: u64,
    sessions: u64,
    poison: Option<String>,
}

pub fn run(args: &SwarmArgs, _global: &GlobalOpts) -> Result<()> {
    let numbers = parse_list(&args.stations)?;
    let poison = match &args.poison {
        Some(spec) => parse_poison(spec)?,
        None => BTreeMap::new(),
    };
    if let Some(n) = poison.keys().find(|n| !numbers.contains(n)) {
        bail!("--poison names station {n}, which --stations does not run");
    }
    let incidents: Arc<Vec<Incident>> = Arc::new(match (args.work, &args.data) {
        (Work::Echo, _) => Vec::new(),
        (Work::Train, Some(path)) => {
            load_path(path)
                .with_context(|| format!("loading {}", path.display()))?
                .incidents
        }
        (Work::Train, None) => generate_incidents(args.synthetic_rows, args.synthetic_seed),
    });
    let concurrency = args
        .concurrency
        .unwrap_or_else(fedcrime_sim::sim::config::cores)
        .max(1);
    if args.work == Work::Train {
        tch::set_num_threads(1);
    }
    let gate = Arc::new(Gate::new(concurrency));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(fedcrime_sim::sim::config::cores().max(2))
        .max_blocking_threads(concurrency + 64)
        .thread_name("fedcrime-swarm")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcomes = runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut clients = tokio::task::JoinSet::new();
        for &n in &numbers {
            let name = fedcrime_certs::station_name(n);
            let tls = ClientTls::from_pki_dir(&args.pki, &name, &args.server_name);
            let connector = Connector::new(
                &tls,
                &TransportSettings::default(),
                args.server,
                ReconnectPolicy::default(),
                n as u64,
            )
            .with_context(|| format!("the connector of {name}"))?;
            let work = (args.work == Work::Train).then(|| {
                let area = ((n - 1) % 21 + 1) as u8;
                DataStation::new(
                    name.clone(),
                    incidents.as_ref().clone(),
                    Selection::Areas(vec![area]),
                    tch::Device::Cpu,
                )
            });
            let factory = Factory {
                work,
                gate: gate.clone(),
                poison: poison.get(&n).copied(),
                seed: n as u64,
            };
            let options = ClientOptions {
                seed: n as u64,
                ..ClientOptions::default()
            };
            let mut stop = stop_rx.clone();
            let kind = poison.get(&n).map(|p| format!("{p:?}"));
            clients.spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                let r = Client::new(connector, Arc::new(factory), options)
                    .run(shutdown)
                    .await;
                (name, kind, r)
            });
        }
        tracing::info!(
            stations = numbers.len(),
            poisoned = poison.len(),
            "swarm running"
        );
        let mut outcomes = BTreeMap::new();
        let signal = fedcrime_cli::logging::shutdown_signal();
        tokio::pin!(signal);
        let mut stopping = false;
        loop {
            tokio::select! {
                joined = clients.join_next() => match joined {
                    None => break,
                    Some(Ok((name, poison, r))) => {
                        let o = match r {
                            Ok(r) => StationOutcome {
                                outcome: format!("{:?}", r.outcome),
                                updates_sent: r.updates_sent,
                                sessions: r.sessions,
                                poison,
                            },
                            Err(e) => StationOutcome {
                                outcome: format!("error: {e}"),
                                updates_sent: 0,
                                sessions: 0,
                                poison,
                            },
                        };
                        outcomes.insert(name, o);
                    }
                    Some(Err(e)) => tracing::error!("a station task failed: {e}"),
                },
                _ = &mut signal, if !stopping => {
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
            }
        }
        anyhow::Ok(outcomes)
    })?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes.values() {
        let key = if o.outcome.starts_with("error") {
            "error"
        } else {
            o.outcome.as_str()
        };
        *tally.entry(key).or_default() += 1;
    }
    eprintln!("fedcrime-sim swarm: {tally:?}");
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&outcomes)?;
        fedcrime_files::write_atomic(path, &json)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed = outcomes
        .values()
        .filter(|o| {
            o.outcome != format!("{:?}", ClientOutcome::Done)
                && o.outcome != format!("{:?}", ClientOutcome::RunFinished)
        })
        .count();
    if failed > 0 {
        bail!(
            "{failed} of {} stations did not finish the run",
            outcomes.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn station_lists_and_poison_specs_parse() {
        assert_eq!(parse_list("1-3,5,2").unwrap(), [1, 2, 3, 5]);
        assert!(parse_list("0-3").is_err());
        assert!(parse_list("3-1").is_err());
        assert!(parse_list("x").is_err());
        let p = parse_poison("sign-flip:1-2;scale=10:3;nan:4;random:5").unwrap();
        assert_eq!(p[&1], Poison::SignFlip);
        assert_eq!(p[&3], Poison::Scale(10.0));
        assert_eq!(p[&4], Poison::NaN);
        assert!(parse_poison("nan:1;random:1").is_err());
        assert!(parse_poison("melt:1").is_err());
        assert!(parse_poison("scale=inf:1").is_err());
    }
}
