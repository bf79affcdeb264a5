//! `fedcrime-sim explain`: SHAP values of a trained model (dnn, lstm or
//! gat-tcn; risk or counts) on the samples of a split, over the model's
//! inputs grouped back to their source columns (see
//! [`fedcrime_ml::explain`]).
//!
//! Writes to `--out` (default `<model folder>/explain`):
//! - `values.csv`: one line per explained sample and output: the sample's
//!   time and area, the output, the base value, the model's output and one
//!   column per feature group (the values add up to output - base, up to
//!   the additivity error of the line);
//! - `problem.json`: the explained input rows, the background and the
//!   groups' columns, for recomputation by other tools;
//! - `importance.csv`: mean |value| and mean value per group and output,
//!   with the group's rank for that output;
//! - `summary.json`: the same ranking, the additivity errors and the cost
//!   (seconds, and as a ratio to one inference pass over the same rows);
//! - `importance.{svg,png}` (mean |value| per group, per output when there
//!   are few) and `beeswarm.{svg,png}` (every sample's value per group for
//!   the headline output: the probability of high risk, levels 4-5, or the
//!   total expected count);
//! - `report.md`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use fedcrime_data::Task;
use fedcrime_ml::explain::{
    explain_rows, feature_groups, output_names, pick_rows, predictor, Background, ExplainConfig,
    Explained, Inputs, Method, Summary,
};
use serde::Serialize;

use super::audit::{load, write_outputs, AuditHeader, AuditSource, Audited};
use crate::GlobalOpts;
use fedcrime_sim::charts::{Bars, Beeswarm, SwarmRow};
use fedcrime_sim::progress;

/// Options of `fedcrime-sim explain`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    /// The model and the data.
    #[command(flatten)]
    pub source: AuditSource,
    /// `exact` (Shapley values by enumeration, up to 16 feature groups),
    /// `kernel` (KernelSHAP), `gradient` (GradientSHAP: expected gradients)
    /// or `integrated-gradients`; default: exact up to 11 groups, else
    /// kernel. Exact and kernel run the model (coalitions x background)
    /// times per sample: seconds for 200 dnn samples, minutes for an lstm
    /// or gat-tcn on a CPU; the gradient methods take seconds.
    #[arg(long)]
    pub method: Option<Method>,
    /// Samples explained, drawn at random (seeded) from the split; all when
    /// the split has fewer.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Background rows from the training split: what "absent" features are
    /// replaced with, and what the base value averages over [default: 50;
    /// 10 for gat-tcn, whose every sample is the whole city over 8 periods].
    #[arg(long)]
    pub background: Option<usize>,
    /// How the background is chosen: `sample` (rows drawn at random) or
    /// `kmeans` (centroids of the training rows weighted by cluster size).
    #[arg(long, value_enum, default_value_t = BackgroundKind::Sample)]
    pub background_kind: BackgroundKind,
    /// The method's own sample count: coalitions (kernel; default 2M + 2048
    /// for M groups), path points (integrated-gradients; 50) or draws per
    /// sample (gradient; 200).
    #[arg(long)]
    pub nsamples: Option<usize>,
    /// Seed of the drawn samples, background and coalitions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (default: `explain` next to the model).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print summary.json on stdout instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Hides the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Background rows by default.
const DEFAULT_BACKGROUND: usize = 50;
/// Background rows by default for gat-tcn: each row is a whole city, and
/// exact Shapley values of its 10 groups run it 1,024 times per row.
const GRAPH_BACKGROUND: usize = 10;

/// How the background is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackgroundKind {
    /// Rows drawn at random.
    Sample,
    /// k-means centroids weighted by cluster size.
    Kmeans,
}

/// `summary.json`.
#[derive(Debug, Serialize)]
pub struct ExplainSummary {
    /// The model and the data.
    #[serde(flatten)]
    pub audited: AuditHeader,
    /// The method used.
    pub method: String,
    /// Its sample count (coalitions, points, draws; 0 for exact).
    pub method_samples: usize,
    /// Background rows and how they were chosen.
    pub background: usize,
    /// `sample` or `kmeans`.
    pub background_kind: BackgroundKind,
    /// The groups ranked over all outputs.
    pub ranking: Vec<Ranked>,
    /// Per output, the groups ranked.
    pub per_output: Vec<OutputRanking>,
    /// The per-group, per-output aggregates (for gat-tcn, per category:
    /// areas averaged).
    pub summary: Summary,
    /// Seconds explaining.
    pub seconds: f64,
    /// Seconds of one inference pass over the same samples.
    pub inference_seconds: f64,
    /// `seconds / inference_seconds`.
    pub cost_ratio: f64,
}

/// A group and its mean |value|.
#[derive(Debug, Serialize)]
pub struct Ranked {
    /// The group.
    pub group: String,
    /// Its mean |value|.
    pub mean_abs: f64,
}

/// One output's ranking.
#[derive(Debug, Serialize)]
pub struct OutputRanking {
    /// The output.
    pub output: String,
    /// Its groups, largest first.
    pub ranking: Vec<Ranked>,
}

fn ranked(r: Vec<(String, f64)>) -> Vec<Ranked> {
    r.into_iter()
        .map(|(group, mean_abs)| Ranked { group, mean_abs })
        .collect()
}

/// The background of `a`'s training split (at most 5,000 rows pooled).
pub fn background(a: &Audited, n: usize, kind: BackgroundKind, seed: u64) -> Result<Background> {
    let train = &a.splits.train;
    let inputs = Inputs::of(train);
    let pool_idx = pick_rows(train.len(), 5_000, seed ^ 0x5eed);
    let pool = inputs.rows(train, &pool_idx);
    let bg = match kind {
        BackgroundKind::Sample => Background::sample(&pool, inputs.dim(), n, seed),
        BackgroundKind::Kmeans => Background::kmeans(&pool, inputs.dim(), n, seed),
    };
    if bg.is_empty() {
        bail!("the training split has no rows for a background");
    }
    Ok(bg)
}

/// Runs the command.
pub fn run(args: &ExplainArgs, global: &GlobalOpts) -> Result<()> {
    let a = load(&args.source)?;
    let n_background = args.background.unwrap_or(if a.is_graph() {
        GRAPH_BACKGROUND
    } else {
        DEFAULT_BACKGROUND
    });
    if args.samples == 0 || n_background == 0 {
        bail!("--samples and --background must be at least 1");
    }
    let ds = args.source.split.of(&a.splits);
    if ds.is_empty() {
        bail!(
            "the {} split of {} is empty",
            args.source.split.as_str(),
            a.data.source()
        );
    }
    let model = a.model.as_ref();
    let inputs = Inputs::of(ds);
    let groups = feature_groups(model, ds);
    let outputs = output_names(model, ds);
    let rows = pick_rows(ds.len(), args.samples, args.seed);
    let x = inputs.rows(ds, &rows);
    let bg = background(&a, n_background, args.background_kind, args.seed)?;
    let cfg = ExplainConfig {
        method: args.method,
        samples: args.nsamples,
        seed: args.seed,
        ..ExplainConfig::default()
    };
    let method = cfg.method.unwrap_or_else(|| Method::auto(groups.len()));
    tracing::info!(
        "explaining {} {} samples of {} with {} ({} groups, {} outputs, {} background rows)",
        rows.len(),
        args.source.split.as_str(),
        a.data.source(),
        method,
        groups.len(),
        outputs.len(),
        bg.len()
    );

    // One inference pass over the same rows: the unit of the cost.
    let inference_seconds = {
        let mut f = predictor(model, inputs, cfg.chunk);
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t0 = Instant::now();
            f(&x, rows.len())?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        best
    };
    let quiet = global.quiet || args.no_progress;
    let pb = progress::bar(quiet, rows.len() as u64, "explain", "samples");
    let t0 = Instant::now();
    let explained = explain_rows(
        model,
        inputs,
        &groups,
        outputs,
        &x,
        &bg,
        &cfg,
        &mut |done| pb.set_position(done as u64),
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();

    let out = args.out.clone().unwrap_or_else(|| a.dir().join("explain"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    write_values(&out.join("values.csv"), &explained, ds, &rows, a.is_graph())?;
    let full = Summary::of(&explained);
    let summary = if a.is_graph() {
        full.fold(|o| o.split_once('.').map_or(o, |p| p.1).to_string())
    } else {
        full
    };
    write_importance(&out.join("importance.csv"), &summary)?;
    write_problem(
        &out.join("problem.json"),
        &groups,
        &explained.outputs,
        &x,
        &bg,
        inputs.dim(),
    )?;
    let report = ExplainSummary {
        audited: a.header(args.source.split),
        method: explained.method.to_string(),
        method_samples: explained.samples,
        background: bg.len(),
        background_kind: args.background_kind,
        ranking: ranked(summary.ranking()),
        per_output: (0..summary.outputs.len())
            .map(|o| OutputRanking {
                output: summary.outputs[o].clone(),
                ranking: ranked(summary.ranking_for(o)),
            })
            .collect(),
        summary: summary.clone(),
        seconds,
        inference_seconds,
        cost_ratio: seconds / inference_seconds.max(1e-9),
    };
    let json = serde_json::to_string_pretty(&report)?;
    plots(
        &out,
        &report,
        &explained,
        &x,
        inputs.dim(),
        model.task(),
        &groups_cols(&groups),
    )?;
    write_outputs(
        &out,
        "summary.json",
        &json,
        &markdown(&report),
        args.json,
        global.quiet,
    )
}

fn groups_cols(groups: &[fedcrime_ml::explain::FeatureGroup]) -> Vec<Vec<usize>> {
    groups.iter().map(|g| g.columns.clone()).collect()
}

/// `values.csv` (see the module doc).
fn write_values(
    path: &std::path::Path,
    e: &Explained,
    ds: &fedcrime_data::Dataset,
    rows: &[usize],
    graph: bool,
) -> Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    let mut header: Vec<String> = ["sample", "time", "area", "output", "base", "prediction"]
        .map(String::from)
        .into();
    header.extend(e.groups.iter().cloned());
    header.push("additivity_error".into());
    w.write_record(&header)?;
    for (ex, &i) in e.rows.iter().zip(rows) {
        for (o, name) in e.outputs.iter().enumerate() {
            // A graph sample covers every area: the output names the area.
            let area = if graph {
                name.split_once('.')
                    .and_then(|(a, _)| a.strip_prefix("area_"))
                    .unwrap_or("")
                    .to_string()
            } else {
                ds.area[i].to_string()
            };
            let sum: f64 = ex.values.iter().map(|v| v[o]).sum();
            let mut rec = vec![
                i.to_string(),
                ds.time[i].to_string(),
                area,
                name.clone(),
                format!("{:.6}", ex.base[o]),
                format!("{:.6}", ex.output[o]),
            ];
            rec.extend(ex.values.iter().map(|v| format!("{:.6}", v[o])));
            rec.push(format!("{:.2e}", (ex.base[o] + sum - ex.output[o]).abs()));
            w.write_record(&rec)?;
        }
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// `problem.json`: what the values were computed over (the input rows, the
/// background and its weights, the groups' columns, the outputs), so another
/// tool can recompute them from the same model file (the `shap` package
/// cross-check, `.ci/bench/shap_crosscheck.py`).
fn write_problem(
    path: &std::path::Path,
    groups: &[fedcrime_ml::explain::FeatureGroup],
    outputs: &[String],
    x: &[f32],
    bg: &Background,
    dim: usize,
) -> Result<()> {
    let rows = |v: &[f32]| -> Vec<Vec<f32>> { v.chunks(dim).map(<[f32]>::to_vec).collect() };
    let json = serde_json::json!({
        "dim": dim,
        "groups": groups,
        "outputs": outputs,
        "rows": rows(x),
        "background": rows(&bg.rows),
        "background_weights": bg.weights,
    });
    std::fs::write(path, serde_json::to_string(&json)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// `importance.csv`.
fn write_importance(path: &std::path::Path, s: &Summary) -> Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    w.write_record(["output", "rank", "group", "mean_abs", "mean"])?;
    for (o, name) in s.outputs.iter().enumerate() {
        for (rank, (g, _)) in s.ranking_for(o).iter().enumerate() {
            let gi = s.groups.iter().position(|x| x == g).unwrap_or(0);
            w.write_record([
                name.clone(),
                (rank + 1).to_string(),
                g.clone(),
                format!("{:.6}", s.mean_abs[gi][o]),
                format!("{:.6}", s.mean[gi][o]),
            ])?;
        }
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// The headline output of a task: which outputs it sums and its name.
fn headline(task: Task, outputs: &[String]) -> (Vec<usize>, String) {
    match task {
        // Levels 4 and 5 of five: "high risk".
        Task::Risk if outputs.len() >= 5 => (vec![3, 4], "P(high risk, level 4-5)".into()),
        Task::Risk => (
            vec![outputs.len() - 1],
            format!("P({})", outputs[outputs.len() - 1]),
        ),
        Task::Counts => ((0..outputs.len()).collect(), "total expected count".into()),
    }
}

/// `importance` and `beeswarm` plots.
#[allow(clippy::too_many_arguments)]
fn plots(
    out: &std::path::Path,
    r: &ExplainSummary,
    e: &Explained,
    x: &[f32],
    dim: usize,
    task: Task,
    cols: &[Vec<usize>],
) -> Result<()> {
    let s = &r.summary;
    let order: Vec<usize> = r
        .ranking
        .iter()
        .map(|g| s.groups.iter().position(|n| *n == g.group).unwrap_or(0))
        .collect();
    let names: Vec<String> = order.iter().map(|&g| s.groups[g].clone()).collect();
    let series = if s.outputs.len() <= 8 {
        (0..s.outputs.len())
            .map(|o| {
                (
                    s.outputs[o].clone(),
                    order.iter().map(|&g| s.mean_abs[g][o]).collect(),
                )
            })
            .collect()
    } else {
        vec![(
            "all outputs".to_string(),
            r.ranking.iter().map(|g| g.mean_abs).collect(),
        )]
    };
    Bars {
        title: format!(
            "{} {}: mean |SHAP value| per feature ({}, {} samples)",
            r.audited.kind, r.audited.task, r.method, s.rows
        ),
        x_label: "mean |SHAP value|".into(),
        names: names.clone(),
        series,
    }
    .write_both(out, "importance")?;
    // Beeswarm of the headline output, features in the overall order.
    let (sum_of, label) = headline(task, &e.outputs);
    let rows: Vec<SwarmRow> = order
        .iter()
        .map(|&g| {
            let value = |r: usize| -> f64 {
                let c = &cols[g];
                c.iter().map(|&j| f64::from(x[r * dim + j])).sum::<f64>() / c.len().max(1) as f64
            };
            let vals: Vec<f64> = (0..e.rows.len()).map(value).collect();
            let (lo, hi) = vals
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
                    (l.min(v), h.max(v))
                });
            let points = e
                .rows
                .iter()
                .zip(&vals)
                .map(|(ex, &v)| {
                    let phi: f64 = sum_of.iter().map(|&o| ex.values[g][o]).sum();
                    let c = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                    (phi, c)
                })
                .collect();
            SwarmRow {
                name: e.groups[g].clone(),
                points,
            }
        })
        .collect();
    Beeswarm {
        title: format!(
            "{} {}: SHAP values for {label}",
            r.audited.kind, r.audited.task
        ),
        x_label: format!("SHAP value (effect on {label})"),
        rows,
    }
    .write_both(out, "beeswarm")
}

/// `report.md`.
fn markdown(r: &ExplainSummary) -> String {
    let s = &r.summary;
    let mut md = format!(
        "# Explanation of {} ({} {})\n\nData: {} ({} split, {} samples). Method: {}{}; background: {} rows ({}).\n\n",
        r.audited.model,
        r.audited.kind,
        r.audited.task,
        r.audited.data,
        r.audited.split,
        s.rows,
        r.method,
        if r.method_samples > 0 {
            format!(" ({} samples)", r.method_samples)
        } else {
            String::new()
        },
        r.background,
        match r.background_kind {
            BackgroundKind::Sample => "drawn from the training split",
            BackgroundKind::Kmeans => "k-means centroids of the training split",
        }
    );
    let _ = writeln!(
        md,
        "Additivity (base + sum of values - output): max {:.1e}, mean {:.1e}.\n\nCost: {:.2} s, {:.0}x one inference pass over the same samples ({:.4} s).\n",
        s.max_additivity_error, s.mean_additivity_error, r.seconds, r.cost_ratio, r.inference_seconds
    );
    md.push_str("## Mean |SHAP value| per feature\n\n| rank | feature | all outputs |");
    let show = s.outputs.len() <= 8;
    if show {
        for o in &s.outputs {
            let _ = write!(md, " {o} |");
        }
    }
    md.push_str("\n|---:|---|---:|");
    if show {
        md.push_str(&"---:|".repeat(s.outputs.len()));
    }
    md.push('\n');
    for (k, g) in r.ranking.iter().enumerate() {
        let gi = s.groups.iter().position(|n| *n == g.group).unwrap_or(0);
        let _ = write!(md, "| {} | {} | {:.4} |", k + 1, g.group, g.mean_abs);
        if show {
            for o in 0..s.outputs.len() {
                let _ = write!(md, " {:.4} |", s.mean_abs[gi][o]);
            }
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headline_is_high_risk_or_the_total_count() {
        let levels: Vec<String> = (1..=5).map(|k| format!("level {k}")).collect();
        assert_eq!(headline(Task::Risk, &levels).0, vec![3, 4]);
        let cats: Vec<String> = ["a", "b"].map(String::from).into();
        assert_eq!(headline(Task::Counts, &cats).0, vec![0, 1]);
    }
}
