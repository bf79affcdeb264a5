//! `report.md` and the convergence plot: the comparison the study is about.
//!
//! The report judges each method at its best validation step (the model it
//! selects) next to the naive baselines, gives the federated/centralized
//! ratio there, the rounds, optimizer steps, samples, seconds and bytes each
//! method needed to reach 95% and 98% of the centralized model's best
//! validation score, the last step's full scores, and the run's exact
//! configuration.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use fedcrime_data::Task;
use fedcrime_ml::train::BaselineResult;

use super::record::Row;
use crate::plot::{ConvergencePlot, Point, Series};

/// One method's curve and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodRun {
    /// Its name in `metrics.csv`.
    pub method: String,
    /// Federated (true) or centralized.
    pub federated: bool,
    /// Its rows in step order.
    pub rows: Vec<Row>,
}

impl MethodRun {
    /// The last row.
    pub fn last(&self) -> Option<&Row> {
        self.rows.last()
    }

    /// The row of the best validation step (the model the method selects).
    pub fn best(&self) -> Option<&Row> {
        let step = self.last()?.best?.0;
        self.rows.iter().find(|r| r.step == step)
    }
}

/// Whether larger values of the task's headline metric are better.
pub fn higher_is_better(task: Task) -> bool {
    task == Task::Risk
}

/// The score a method must reach to count as within `share` (0.95: 5%) of
/// `reference`.
pub fn target_of(task: Task, reference: f64, share: f64) -> f64 {
    if higher_is_better(task) {
        share * reference
    } else {
        reference / share
    }
}

/// The first row of `run` whose validation headline reaches `target`.
pub fn first_reaching(run: &MethodRun, task: Task, target: f64) -> Option<&Row> {
    run.rows.iter().find(|r| {
        let v = r.val.headline();
        if higher_is_better(task) {
            v >= target
        } else {
            v <= target
        }
    })
}

/// The best naive baseline by the headline metric.
pub fn best_baseline(task: Task, baselines: &[BaselineResult]) -> Option<&BaselineResult> {
    let key = |b: &&BaselineResult| b.metrics.headline().1;
    let finite = baselines.iter().filter(|b| key(b).is_finite());
    if higher_is_better(task) {
        finite.max_by(|a, b| key(a).total_cmp(&key(b)))
    } else {
        finite.min_by(|a, b| key(a).total_cmp(&key(b)))
    }
}

/// Writes `convergence.svg` and `convergence.png` into `out`.
pub fn write_plots(
    out: &Path,
    title: &str,
    task: Task,
    runs: &[MethodRun],
    baselines: &[BaselineResult],
) -> Result<()> {
    let metric_name = match task {
        Task::Risk => "test macro-F1",
        Task::Counts => "test MAE",
    };
    let series: Vec<Series> = runs
        .iter()
        .map(|r| Series {
            method: r.method.clone(),
            points: r
                .rows
                .iter()
                .map(|row| Point {
                    step: row.step as f64,
                    grad_steps: row.grad_steps as f64,
                    samples: row.samples as f64,
                    wall_seconds: row.wall_seconds,
                    bytes: row.bytes_sent as f64,
                    metric: row.test.headline(),
                })
                .collect(),
        })
        .collect();
    let best = best_baseline(task, baselines);
    let label = best.map(|b| format!("{} (naive)", b.name));
    let plot = ConvergencePlot {
        title,
        metric: metric_name,
        series: &series,
        baseline: best
            .zip(label.as_deref())
            .map(|(b, l)| (l, b.metrics.headline().1)),
    };
    plot.write_svg(&out.join("convergence.svg"))?;
    plot.write_png(&out.join("convergence.png"))?;
    Ok(())
}

/// What `report.md` describes besides the runs.
#[derive(Debug)]
pub struct ReportContext<'a> {
    /// Title line.
    pub title: String,
    /// Setup bullet lines (data, stations, model, methods).
    pub setup: Vec<String>,
    /// The task.
    pub task: Task,
    /// The naive baselines on the test split.
    pub baselines: &'a [BaselineResult],
    /// The resolved configuration as TOML.
    pub config_toml: String,
}

fn fmt_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "n/a".into()
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1e6)
}

/// Whether `v` is better than `reference` for the task (ties count).
fn at_least(task: Task, v: f64, reference: f64) -> bool {
    if higher_is_better(task) {
        v >= reference
    } else {
        v <= reference
    }
}

/// The goal of the federated/centralized ratio of the headline: at least
/// 0.98x macro-F1, at most 1.05x MAE.
pub fn ratio_goal(task: Task) -> f64 {
    if higher_is_better(task) {
        0.98
    } else {
        1.05
    }
}

/// The markdown of `report.md`.
pub fn markdown(ctx: &ReportContext<'_>, runs: &[MethodRun]) -> String {
    let task = ctx.task;
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", ctx.title);
    for line in &ctx.setup {
        let _ = writeln!(md, "- {line}");
    }
    let (headline, _) = runs
        .iter()
        .find_map(|r| r.last())
        .map(|r| r.test.metrics.headline())
        .unwrap_or(("score", f64::NAN));
    let naive = best_baseline(task, ctx.baselines);
    selected_section(&mut md, task, headline, runs, ctx.baselines, naive);
    privacy_section(&mut md, headline, runs);
    ratio_section(&mut md, task, headline, runs, naive);
    reaching_section(&mut md, task, headline, runs);
    last_step_section(&mut md, runs, ctx.baselines);
    let _ = writeln!(md, "\n## Configuration\n\nReplay with `fedcrime-sim simulate --config sim.toml` (this folder's copy).\n");
    let _ = writeln!(md, "```toml\n{}```", ctx.config_toml);
    md
}

/// Each method at its best validation step, beside the naive baselines.
fn selected_section(
    md: &mut String,
    task: Task,
    headline: &str,
    runs: &[MethodRun],
    baselines: &[BaselineResult],
    naive: Option<&BaselineResult>,
) {
    let _ = writeln!(md, "\n## Selected models (best validation step)\n");
    let _ = writeln!(
        md,
        "Each method is judged by the model of its best validation {headline} (pooled validation split), as an agency would deploy it; the test columns score that model. Cost columns count up to the last step run.\n"
    );
    let _ = writeln!(
        md,
        "| method | best step | steps run | val {headline} | **test {headline}** | test {headline} at last step | test loss | optimizer steps | samples (M) | wall s | MB sent |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in runs {
        let (Some(best), Some(last)) = (run.best(), run.last()) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| **{}** | {} | {} | {} | **{}** | {} | {} | {} | {:.2} | {:.1} | {} |",
            run.method,
            best.step,
            last.step,
            fmt_num(best.val.headline()),
            fmt_num(best.test.headline()),
            fmt_num(last.test.headline()),
            fmt_num(best.test.loss),
            last.grad_steps,
            last.samples as f64 / 1e6,
            last.wall_seconds,
            if run.federated {
                mb(last.bytes_sent)
            } else {
                "-".into()
            },
        );
    }
    for b in baselines {
        let _ = writeln!(
            md,
            "| {} (naive) | - | - | - | {} | - | - | - | - | - | - |",
            b.name,
            fmt_num(b.metrics.headline().1)
        );
    }
    if let Some(n) = naive {
        let reference = n.metrics.headline().1;
        md.push('\n');
        for run in runs {
            let Some(best) = run.best() else { continue };
            let v = best.test.headline();
            let _ = writeln!(
                md,
                "- {}: test {headline} {} is {} the best naive baseline ({} {}).",
                run.method,
                fmt_num(v),
                if at_least(task, v, reference) && v != reference {
                    "above"
                } else {
                    "**not above**"
                },
                n.name,
                fmt_num(reference)
            );
        }
    }
}

/// Differential privacy: the ε each federated model cost, when DP was on.
fn privacy_section(md: &mut String, headline: &str, runs: &[MethodRun]) {
    let eps = |e: Option<f64>| match e {
        Some(e) if e.is_finite() => format!("{e:.3}"),
        Some(_) => "∞".to_string(),
        None => "-".to_string(),
    };
    for run in runs.iter().filter(|r| r.federated) {
        if run.rows.iter().all(|r| r.epsilon.is_none()) {
            continue;
        }
        let (Some(best), Some(last)) = (run.best(), run.last()) else {
            continue;
        };
        let _ = writeln!(
            md,
            "
## Differential privacy
"
        );
        let _ = writeln!(
            md,
            "The selected model (round {}, test {headline} {}) was released at ε = {} (the δ of `[privacy]` in the configuration below); the run spent ε = {} by its last round ({}). ε per round: {}.",
            best.step,
            fmt_num(best.test.headline()),
            eps(best.epsilon),
            eps(last.epsilon),
            last.step,
            run.rows
                .iter()
                .map(|r| eps(r.epsilon))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Federated over centralized at the selected models, against the goals.
fn ratio_section(
    md: &mut String,
    task: Task,
    headline: &str,
    runs: &[MethodRun],
    naive: Option<&BaselineResult>,
) {
    let _ = writeln!(md, "\n## Federated vs centralized (selected models)\n");
    let Some(central) = runs
        .iter()
        .find(|r| r.method == "centralized")
        .and_then(MethodRun::best)
    else {
        md.push_str("No centralized baseline in this run (`--no-centralized`).\n");
        return;
    };
    let reference = central.test.headline();
    let goal = ratio_goal(task);
    for run in runs.iter().filter(|r| r.method != "centralized") {
        let Some(best) = run.best() else { continue };
        let ratio = best.test.headline() / reference;
        let met = if higher_is_better(task) {
            ratio >= goal
        } else {
            ratio <= goal
        };
        let _ = writeln!(
            md,
            "- {} / centralized test {headline}: {} / {} = **{:.3}x** (goal {} {goal}x: {}).",
            run.method,
            fmt_num(best.test.headline()),
            fmt_num(reference),
            ratio,
            if higher_is_better(task) { ">=" } else { "<=" },
            if met { "met" } else { "missed" }
        );
        if run.federated {
            if let Some(last) = run.last() {
                let _ = writeln!(
                    md,
                    "- {}: {} MB sent in {} rounds ({} MB per round).",
                    run.method,
                    mb(last.bytes_sent),
                    last.step,
                    mb(last.bytes_sent / last.step.max(1))
                );
            }
        }
    }
    if let Some(n) = naive {
        let _ = writeln!(
            md,
            "- centralized / best naive baseline ({}): {:.3}x.",
            n.name,
            reference / n.metrics.headline().1
        );
    }
}

/// When each method reached 95% and 98% of the centralized model's best
/// validation score.
fn reaching_section(md: &mut String, task: Task, headline: &str, runs: &[MethodRun]) {
    let Some(central) = runs
        .iter()
        .find(|r| r.method == "centralized")
        .and_then(MethodRun::best)
    else {
        return;
    };
    let reference = central.val.headline();
    let _ = writeln!(
        md,
        "\n## Reaching the centralized model's best validation score\n\nThe centralized model's best validation {headline} is {}. The first step at which each method's validation {headline} came within 5% and 2% of it ({}), and what it had spent by then:\n",
        fmt_num(reference),
        if higher_is_better(task) {
            "95% and 98% of it"
        } else {
            "at most 1/0.95 and 1/0.98 of it, lower is better"
        }
    );
    md.push_str("| method | target | reached at step | optimizer steps | samples (M) | wall s | MB sent |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for share in [0.95, 0.98] {
        let target = target_of(task, reference, share);
        for run in runs {
            let label = format!("{:.0}% ({})", share * 100.0, fmt_num(target));
            match first_reaching(run, task, target) {
                Some(r) => {
                    let _ = writeln!(
                        md,
                        "| {} | {label} | {} | {} | {:.2} | {:.1} | {} |",
                        run.method,
                        r.step,
                        r.grad_steps,
                        r.samples as f64 / 1e6,
                        r.wall_seconds,
                        if run.federated {
                            mb(r.bytes_sent)
                        } else {
                            "-".into()
                        }
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {} | {label} | not reached | - | - | - | - |",
                        run.method
                    );
                }
            }
        }
    }
}

/// More metric columns than this (a graph model's per-area metrics) and the
/// last-step table keeps only the summary metrics.
const MAX_METRIC_COLUMNS: usize = 16;
/// The summary metrics leading the counts task's scalars: mae, rmse, deviance
/// (counts); the risk task never has that many columns.
const SUMMARY_METRICS: usize = 3;

/// Every metric at each method's last step.
fn last_step_section(md: &mut String, runs: &[MethodRun], baselines: &[BaselineResult]) {
    let metric_names: Vec<String> = runs
        .iter()
        .find_map(|r| r.last())
        .map(|r| {
            r.test
                .metrics
                .scalars()
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        })
        .unwrap_or_default();
    // A graph model scores every area x category (168 columns): the table
    // keeps the summary metrics, metrics.csv has them all.
    let trimmed = metric_names.len() > MAX_METRIC_COLUMNS;
    let shown = if trimmed {
        SUMMARY_METRICS
    } else {
        metric_names.len()
    };
    let metric_names = &metric_names[..shown.min(metric_names.len())];
    let _ = writeln!(md, "\n## Last step (every test metric)\n");
    if trimmed {
        md.push_str("Per-output metrics of every area and category are in `metrics.csv`.\n\n");
    }
    let _ = write!(
        md,
        "| method | step | wall s | MB sent | train loss | val loss | test loss |"
    );
    for n in metric_names {
        let _ = write!(md, " test {n} |");
    }
    md.push_str("\n|---|---:|---:|---:|---:|---:|---:|");
    for _ in metric_names {
        md.push_str("---:|");
    }
    md.push('\n');
    for run in runs {
        let Some(last) = run.last() else { continue };
        let _ = write!(
            md,
            "| {} | {} | {:.1} | {} | {} | {} | {} |",
            run.method,
            last.step,
            last.wall_seconds,
            if run.federated {
                mb(last.bytes_sent)
            } else {
                "-".into()
            },
            last.train_loss.map_or("n/a".into(), fmt_num),
            fmt_num(last.val.loss),
            fmt_num(last.test.loss),
        );
        for (_, v) in last.test.metrics.scalars().into_iter().take(shown) {
            let _ = write!(md, " {} |", fmt_num(v));
        }
        md.push('\n');
    }
    for b in baselines {
        let _ = write!(md, "| {} (naive) | - | - | - | - | - | - |", b.name);
        for (_, v) in b.metrics.scalars().into_iter().take(shown) {
            let _ = write!(md, " {} |", fmt_num(v));
        }
        md.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::eval::Scores;
    use fedcrime_ml::train::{Metrics, RiskMetrics};

    fn row(method: &str, step: u64, f1_hits: usize) -> Row {
        // 4 samples of 2 classes: f1_hits correct predictions raise macro-F1.
        let truth = [0, 0, 1, 1];
        let mut pred = [1, 1, 0, 0];
        for p in pred.iter_mut().take(f1_hits) {
            *p = 0;
        }
        pred[2..]
            .iter_mut()
            .take(f1_hits.saturating_sub(2))
            .for_each(|p| *p = 1);
        let m = Metrics::Risk(RiskMetrics::compute(&truth, &pred, 2).unwrap());
        Row {
            method: method.into(),
            step,
            wall_seconds: step as f64,
            bytes_sent: if method == "fedavg" { step * 1000 } else { 0 },
            grad_steps: step * 10,
            samples: step * 100,
            train_loss: Some(1.0),
            val: Scores {
                loss: 1.0,
                metrics: m.clone(),
            },
            test: Scores {
                loss: 1.0,
                metrics: m,
            },
            best: None,
            epsilon: None,
        }
    }

    fn tracked(method: &str, hits: &[usize]) -> Vec<Row> {
        let mut t = crate::sim::record::BestTracker::new(true, 0.0);
        hits.iter()
            .enumerate()
            .map(|(i, h)| {
                let mut r = row(method, i as u64 + 1, *h);
                t.update(&mut r);
                r
            })
            .collect()
    }

    #[test]
    fn report_judges_methods_at_their_best_validation_step() {
        let runs = vec![
            MethodRun {
                method: "fedavg".into(),
                federated: true,
                // Best at step 3 (perfect), worse at step 4.
                rows: tracked("fedavg", &[0, 3, 4, 2]),
            },
            MethodRun {
                method: "centralized".into(),
                federated: false,
                rows: tracked("centralized", &[2, 4]),
            },
        ];
        assert_eq!(runs[0].best().unwrap().step, 3);
        let target = target_of(Task::Risk, 1.0, 0.95);
        assert_eq!(
            first_reaching(&runs[0], Task::Risk, target).unwrap().step,
            3
        );
        assert_eq!(target_of(Task::Counts, 0.95, 0.95), 1.0);
        let ctx = ReportContext {
            title: "t".into(),
            setup: vec!["data: x".into()],
            task: Task::Risk,
            baselines: &[],
            config_toml: "seed = 0\n".into(),
        };
        let md = markdown(&ctx, &runs);
        // fedavg: best step 3 of 4, test at best 1.0, at last step 0.5 (2 hits).
        assert!(
            md.contains("| **fedavg** | 3 | 4 | 1.0000 | **1.0000** | 0.3333 |"),
            "{md}"
        );
        assert!(md.contains("fedavg / centralized test macro_f1: 1.0000 / 1.0000 = **1.000x** (goal >= 0.98x: met)"), "{md}");
        assert!(
            md.contains("| fedavg | 95% (0.9500) | 3 | 30 | 0.00 | 3.0 | 0.00 |"),
            "{md}"
        );
        assert!(md.contains("```toml\nseed = 0\n```"), "{md}");
        assert!(md.contains("0.00 MB sent in 4 rounds"), "{md}");
    }

    #[test]
    fn a_graph_models_per_area_metrics_stay_out_of_the_report_tables() {
        use fedcrime_ml::train::CountMetrics;
        let dim = 40;
        let t: Vec<f32> = (0..dim * 2).map(|i| (i % 3) as f32).collect();
        let p: Vec<f32> = (0..dim * 2).map(|i| (i % 2) as f32).collect();
        let m = Metrics::Counts(CountMetrics::compute(&t, &p, dim).unwrap());
        let mut r = row("fedavg", 1, 2);
        r.val.metrics = m.clone();
        r.test.metrics = m;
        let mut tr = crate::sim::record::BestTracker::new(false, 0.0);
        tr.update(&mut r);
        let runs = vec![MethodRun {
            method: "fedavg".into(),
            federated: true,
            rows: vec![r],
        }];
        let ctx = ReportContext {
            title: "t".into(),
            setup: vec![],
            task: Task::Counts,
            baselines: &[],
            config_toml: String::new(),
        };
        let md = markdown(&ctx, &runs);
        assert!(
            md.contains("| test mae | test rmse | test poisson_deviance |"),
            "{md}"
        );
        assert!(!md.contains("mae_c39"), "{md}");
        assert!(md.contains("Per-output metrics of every area and category are in `metrics.csv`."));
    }
}
