//! `fedcrime-sim privacy`: the RDP accountant on the command line (the
//! same one the server and the stations charge their rounds with).

use anyhow::{bail, Result};
use clap::Args;

use crate::GlobalOpts;

/// Options of `fedcrime-sim privacy`.
#[derive(Debug, Args)]
pub struct PrivacyArgs {
    /// Probability that a record (DP-SGD: batch / samples) or a station
    /// (DP-FedAvg: sampled / stations) takes part in a step, in [0, 1].
    #[arg(long, value_name = "Q")]
    pub sampling_rate: f64,
    /// Gaussian noise standard deviation over the clipping norm, z. Omit it
    /// with --target-epsilon to get the z that meets the target.
    #[arg(long, value_name = "Z", required_unless_present = "target_epsilon")]
    pub noise_multiplier: Option<f64>,
    /// Steps (DP-SGD optimizer steps, or federated rounds).
    #[arg(long, value_name = "T")]
    pub steps: u64,
    /// δ of the (ε, δ) guarantee, usually below 1/records [default: 1e-5].
    #[arg(long, value_name = "D", default_value_t = 1e-5)]
    pub delta: f64,
    /// Instead of ε: the smallest noise multiplier whose ε is at most this.
    #[arg(long, value_name = "E", conflicts_with = "noise_multiplier")]
    pub target_epsilon: Option<f64>,
    /// Print JSON: {"epsilon":..,"order":..} (or {"noise_multiplier":..,
    /// "epsilon":..,"order":..} with --target-epsilon).
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: &PrivacyArgs, _global: &GlobalOpts) -> Result<()> {
    let (z, spent) = match (args.noise_multiplier, args.target_epsilon) {
        (Some(z), None) => (
            None,
            fedcrime_privacy::epsilon(args.sampling_rate, z, args.steps, args.delta)?,
        ),
        (None, Some(target)) => {
            let z = fedcrime_privacy::noise_for_epsilon(
                args.sampling_rate,
                args.steps,
                args.delta,
                target,
            )?;
            let spent = fedcrime_privacy::epsilon(args.sampling_rate, z, args.steps, args.delta)?;
            (Some(z), spent)
        }
        _ => bail!("give --noise-multiplier Z or --target-epsilon E"),
    };
    // JSON has no infinity: a mechanism without noise reports null.
    let finite = |v: f64| {
        if v.is_finite() {
            serde_json::json!(v)
        } else {
            serde_json::Value::Null
        }
    };
    if args.json {
        let value = match z {
            None => serde_json::json!({
                "epsilon": finite(spent.epsilon),
                "order": spent.order,
            }),
            Some(z) => serde_json::json!({
                "noise_multiplier": z,
                "epsilon": finite(spent.epsilon),
                "order": spent.order,
            }),
        };
        println!("{value}");
        return Ok(());
    }
    if let Some(z) = z {
        println!("noise multiplier: {z:.6}");
    }
    println!(
        "epsilon: {} (delta {}, optimal Renyi order {})",
        if spent.epsilon.is_finite() {
            format!("{:.6}", spent.epsilon)
        } else {
            "infinite (no noise)".to_string()
        },
        args.delta,
        spent.order
    );
    println!(
        "  {} steps of the Poisson-subsampled Gaussian mechanism, sampling rate {}, noise multiplier {}",
        args.steps,
        args.sampling_rate,
        z.or(args.noise_multiplier).unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Options of `fedcrime-sim study privacy`.
#[derive(Debug, Clone, Args)]
pub struct PrivacyStudyArgs {
    /// Noise multipliers to compare, comma-separated; 0 is the run without
    /// differential privacy.
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,2")]
    pub noise: Vec<f64>,
    /// Every other setting of the study, as `simulate` takes them; the
    /// `--dp-*` flags set the clip, mode, δ and budget of the private runs
    /// (default: central, adaptive clipping, δ = 1e-5). Centralized
    /// baselines are skipped unless the config file asks for them.
    #[command(flatten)]
    pub sim: super::simulate::SimulateArgs,
}

/// One noise level's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct PrivacyPoint {
    /// The noise multiplier (0: no DP).
    pub noise: f64,
    /// The round whose model the study selects (best validation headline).
    pub best_round: u64,
    /// Test headline of that model.
    pub test: f64,
    /// ε spent when that model was released (`None` without DP).
    pub epsilon_at_best: Option<f64>,
    /// ε after the last round run.
    pub epsilon_final: Option<f64>,
    /// Rounds run.
    pub rounds: u64,
}

/// Runs `fedcrime-sim study privacy`.
pub fn study(args: &PrivacyStudyArgs, global: &GlobalOpts) -> Result<()> {
    use anyhow::Context;
    use fedcrime_sim::sim::{self, RunOptions};

    if args.noise.is_empty() || args.noise.iter().any(|z| !(z.is_finite() && *z >= 0.0)) {
        bail!("--noise: give non-negative noise multipliers, e.g. 0,0.5,1,2");
    }
    let out = args
        .sim
        .out
        .clone()
        .unwrap_or_else(|| super::simulate::default_out("privacy-"));
    let mut base = args.sim.config()?;
    if args.sim.config.is_none() && !args.sim.no_centralized {
        base.centralized.enabled = false;
    }
    let template = base.privacy.clone().unwrap_or_default();
    let mut points = Vec::new();
    let mut task = base.data.task;
    let mut naive: Option<(String, f64)> = None;
    for &z in &args.noise {
        let mut cfg = base.clone();
        cfg.privacy = (z > 0.0).then(|| {
            let mut p = template.clone();
            p.noise_multiplier = z;
            if p.mode == fedcrime_fl::DpMode::Central && p.clip.is_none() {
                p.adaptive_clip.get_or_insert_with(Default::default);
            }
            p
        });
        cfg.validate()?;
        let dir = out.join(format!("noise-{z}"));
        if !global.quiet {
            eprintln!("noise multiplier {z}: {}", dir.display());
        }
        let outcome = sim::simulate(
            &cfg,
            &dir,
            RunOptions {
                quiet: global.quiet,
                dashboard: None,
            },
        )
        .with_context(|| format!("the run with noise {z} into {}", dir.display()))?;
        task = outcome.config.data.task;
        naive = fedcrime_sim::sim::report::best_baseline(task, &outcome.baselines)
            .map(|b| (b.name.clone(), b.metrics.headline().1));
        let fed = outcome
            .runs
            .iter()
            .find(|r| r.federated)
            .context("the run has no federated method")?;
        let best = fed.best().context("the federation recorded no round")?;
        points.push(PrivacyPoint {
            noise: z,
            best_round: best.step,
            test: best.test.headline(),
            epsilon_at_best: best.epsilon,
            epsilon_final: fed.last().and_then(|r| r.epsilon),
            rounds: fed.last().map_or(0, |r| r.step),
        });
    }
    let (csv, mut md) = privacy_tables(&points, task, &template);
    if let Some((name, value)) = &naive {
        md.push_str(&format!(
            "\nBest naive baseline ({name}): test {} {value:.4}.\n",
            fedcrime_sim::sim::record::headline_name(task)
        ));
    }
    std::fs::write(out.join("privacy.csv"), csv)?;
    std::fs::write(out.join("privacy.md"), &md)?;
    privacy_plot(&points, task, naive.as_ref(), template.delta).write_both(&out, "privacy")?;
    if !global.quiet {
        println!("{md}");
        eprintln!(
            "wrote {}: privacy.csv, privacy.md, privacy.svg, privacy.png, one folder per noise level",
            out.display()
        );
    }
    Ok(())
}

/// `privacy.csv` and the Markdown table of `privacy.md`.
fn privacy_tables(
    points: &[PrivacyPoint],
    task: fedcrime_data::Task,
    settings: &fedcrime_fl::PrivacyConfig,
) -> (String, String) {
    let metric = fedcrime_sim::sim::record::headline_name(task);
    let eps = |e: Option<f64>| match e {
        Some(e) if e.is_finite() => format!("{e:.3}"),
        Some(_) => "inf".into(),
        None => String::new(),
    };
    let mut csv = format!(
        "noise_multiplier,best_round,test_{metric}_at_best,epsilon_at_best,epsilon_final,rounds\n"
    );
    for p in points {
        csv.push_str(&format!(
            "{},{},{:.6},{},{},{}\n",
            p.noise,
            p.best_round,
            p.test,
            eps(p.epsilon_at_best),
            eps(p.epsilon_final),
            p.rounds
        ));
    }
    let plain = points.iter().find(|p| p.noise == 0.0).map(|p| p.test);
    let mut md = format!(
        "# Privacy and utility\n\nTest {metric} of the model each run selects (best \
         validation round) and the ε (δ = {}) spent when it was released; mode {}, \
         clipping {}.\n\n| noise z | best round | test {metric} | vs no DP | ε at best | ε after the last round | rounds |\n|---|---|---|---|---|---|---|\n",
        settings.delta,
        settings.mode,
        match (settings.clip, &settings.adaptive_clip) {
            (Some(c), _) => format!("fixed C = {c}"),
            (None, _) if settings.mode == fedcrime_fl::DpMode::Local => {
                format!("per-sample C = {}", settings.local_clip())
            }
            _ => "adaptive (target quantile 0.5, from 0.1)".to_string(),
        }
    );
    for p in points {
        md.push_str(&format!(
            "| {} | {} | {:.4} | {} | {} | {} | {} |\n",
            if p.noise == 0.0 {
                "0 (no DP)".to_string()
            } else {
                p.noise.to_string()
            },
            p.best_round,
            p.test,
            plain.map_or(String::new(), |b| format!("{:+.4}", p.test - b)),
            if p.noise == 0.0 {
                "∞".into()
            } else {
                eps(p.epsilon_at_best)
            },
            if p.noise == 0.0 {
                "∞".into()
            } else {
                eps(p.epsilon_final)
            },
            p.rounds
        ));
    }
    (csv, md)
}

/// Test headline against ε, the run without DP as a dashed line.
fn privacy_plot(
    points: &[PrivacyPoint],
    task: fedcrime_data::Task,
    naive: Option<&(String, f64)>,
    delta: f64,
) -> fedcrime_sim::plot::PanelPlot {
    use fedcrime_sim::plot::{Legend, Line, Panel, PanelPlot};
    let metric = fedcrime_sim::sim::record::headline_name(task);
    let private: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| Some((p.epsilon_at_best.filter(|e| e.is_finite())?, p.test)))
        .collect();
    let x_hi = private.iter().map(|p| p.0).fold(1.0f64, f64::max) * 1.05;
    let mut lines = vec![Line {
        label: "DP-FedAvg (z = noise multiplier)".into(),
        points: private,
        dashed: false,
    }];
    if let Some(p) = points.iter().find(|p| p.noise == 0.0) {
        lines.push(Line {
            label: "no differential privacy".into(),
            points: vec![(0.0, p.test), (x_hi, p.test)],
            dashed: true,
        });
    }
    if let Some((name, value)) = naive {
        lines.push(Line {
            label: format!("best naive baseline ({name})"),
            points: vec![(0.0, *value), (x_hi, *value)],
            dashed: true,
        });
    }
    PanelPlot {
        title: "Privacy and utility".into(),
        grid: (1, 1),
        panels: vec![Panel {
            caption: String::new(),
            x_label: format!("epsilon spent at the selected round (delta {delta})"),
            y_label: format!("test {metric}"),
            lines,
            x_range: Some((0.0, x_hi)),
            y_range: None,
            legend: if fedcrime_sim::sim::report::higher_is_better(task) {
                Legend::LowerRight
            } else {
                Legend::UpperRight
            },
        }],
    }
}
