//! `report.md` and the convergence plot: the comparison the study is about.
//!
//! The report gives each method's final scores next to the naive
//! baselines, the time (and step) at which each method first came within
//! 5% of the centralized model's final test score, the bytes each method
//! moved, the federated-centralized gap, and the run's exact configuration.

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
}

/// Whether larger values of the task's headline metric are better.
pub fn higher_is_better(task: Task) -> bool {
    task == Task::Risk
}

/// The score a method must reach to count as within 5% of `reference`.
pub fn target_of(task: Task, reference: f64) -> f64 {
    if higher_is_better(task) {
        0.95 * reference
    } else {
        reference / 0.95
    }
}

/// The first row of `run` whose test headline reaches `target`.
pub fn first_reaching(run: &MethodRun, task: Task, target: f64) -> Option<&Row> {
    run.rows.iter().find(|r| {
        let v = r.test.headline();
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

/// The markdown of `report.md`.
pub fn markdown(ctx: &ReportContext<'_>, runs: &[MethodRun]) -> String {
    let task = ctx.task;
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", ctx.title);
    for line in &ctx.setup {
        let _ = writeln!(md, "- {line}");
    }
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
    let (headline, _) = runs
        .iter()
        .find_map(|r| r.last())
        .map(|r| r.test.metrics.headline())
        .unwrap_or(("score", f64::NAN));

    let _ = writeln!(md, "\n## Final scores (last round or epoch)\n");
    let _ = write!(
        md,
        "| method | steps | wall s | MB sent | train loss | val loss | val {headline} | test loss |"
    );
    for n in &metric_names {
        let _ = write!(md, " test {n} |");
    }
    md.push_str("\n|---|---:|---:|---:|---:|---:|---:|---:|");
    for _ in &metric_names {
        md.push_str("---:|");
    }
    md.push('\n');
    for run in runs {
        let Some(last) = run.last() else { continue };
        let _ = write!(
            md,
            "| **{}** | {} | {:.1} | {} | {} | {} | {} | {} |",
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
            fmt_num(last.val.headline()),
            fmt_num(last.test.loss),
        );
        for (_, v) in last.test.metrics.scalars() {
            let _ = write!(md, " {} |", fmt_num(v));
        }
        md.push('\n');
    }
    for b in ctx.baselines {
        let _ = write!(md, "| {} (naive) | - | - | - | - | - | - | - |", b.name);
        for (_, v) in b.metrics.scalars() {
            let _ = write!(md, " {} |", fmt_num(v));
        }
        md.push('\n');
    }

    let central = runs
        .iter()
        .find(|r| r.method == "centralized")
        .and_then(MethodRun::last);
    let _ = writeln!(md, "\n## Time to reach 95% of the centralized score\n");
    match central {
        Some(c) => {
            let reference = c.test.headline();
            let target = target_of(task, reference);
            let _ = writeln!(
                md,
                "The centralized model's final test {headline} is {}; the target is {} ({}).\n",
                fmt_num(reference),
                fmt_num(target),
                if higher_is_better(task) {
                    "95% of it"
                } else {
                    "within 5% of it, lower is better"
                }
            );
            md.push_str("| method | reached at step | after wall s | MB sent by then |\n|---|---:|---:|---:|\n");
            for run in runs {
                match first_reaching(run, task, target) {
                    Some(r) => {
                        let _ = writeln!(
                            md,
                            "| {} | {} | {:.1} | {} |",
                            run.method,
                            r.step,
                            r.wall_seconds,
                            if run.federated {
                                mb(r.bytes_sent)
                            } else {
                                "-".into()
                            }
                        );
                    }
                    None => {
                        let _ = writeln!(md, "| {} | not reached | - | - |", run.method);
                    }
                }
            }
        }
        None => md.push_str("No centralized baseline in this run (`--no-centralized`).\n"),
    }

    let _ = writeln!(md, "\n## Federated vs centralized\n");
    for run in runs.iter().filter(|r| r.federated) {
        let Some(last) = run.last() else { continue };
        let total = last.bytes_sent;
        let _ = writeln!(
            md,
            "- {}: {} MB sent in {} rounds ({} MB per round).",
            run.method,
            mb(total),
            last.step,
            mb(total / last.step.max(1))
        );
        if let Some(c) = central {
            let gap = last.test.headline() - c.test.headline();
            let rel = gap / c.test.headline().abs().max(f64::MIN_POSITIVE) * 100.0;
            let better = if higher_is_better(task) {
                gap >= 0.0
            } else {
                gap <= 0.0
            };
            let _ = writeln!(
                md,
                "- gap {} - centralized on test {headline}: {:+.4} ({:+.1}%), {}.",
                run.method,
                gap,
                rel,
                if better {
                    "the federation is at least as good"
                } else {
                    "the federation is behind"
                }
            );
        }
    }
    let _ = writeln!(md, "\n## Configuration\n\nReplay with `fedcrime-sim simulate --config sim.toml` (this folder's copy).\n");
    let _ = writeln!(md, "```toml\n{}```", ctx.config_toml);
    md
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
            train_loss: Some(1.0),
            val: Scores {
                loss: 1.0,
                metrics: m.clone(),
            },
            test: Scores {
                loss: 1.0,
                metrics: m,
            },
        }
    }

    #[test]
    fn report_finds_the_target_crossing_and_the_gap() {
        let runs = vec![
            MethodRun {
                method: "fedavg".into(),
                federated: true,
                rows: vec![
                    row("fedavg", 1, 0),
                    row("fedavg", 2, 3),
                    row("fedavg", 3, 4),
                ],
            },
            MethodRun {
                method: "centralized".into(),
                federated: false,
                rows: vec![row("centralized", 1, 2), row("centralized", 2, 4)],
            },
        ];
        let target = target_of(Task::Risk, 1.0);
        assert_eq!(
            first_reaching(&runs[0], Task::Risk, target).unwrap().step,
            3
        );
        assert_eq!(target_of(Task::Counts, 0.95), 1.0);
        let ctx = ReportContext {
            title: "t".into(),
            setup: vec!["data: x".into()],
            task: Task::Risk,
            baselines: &[],
            config_toml: "seed = 0\n".into(),
        };
        let md = markdown(&ctx, &runs);
        assert!(md.contains("| fedavg | 3 | 3.0 | 0.00 |"), "{md}");
        assert!(
            md.contains("gap fedavg - centralized on test macro_f1: +0.0000"),
            "{md}"
        );
        assert!(md.contains("```toml\nseed = 0\n```"), "{md}");
        assert!(md.contains("0.00 MB sent in 3 rounds"), "{md}");
    }
}
