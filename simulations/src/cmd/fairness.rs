//! `fedcrime-sim fairness`: group fairness of a trained model's predictions
//! on a split, with fairlearn's definitions (see
//! [`fedcrime_ml::train::fairness`]).
//!
//! Groups are the LAPD areas, their bureaus, or a table the agency supplies
//! (`area,group` per line: an area code 1-21 or its name, and any label,
//! e.g. the census majority group of the area's residents).
//!
//! Writes to `--out` (default `<model folder>/fairness`): `fairness.json`
//! (every group's rates, the differences and ratios, the overall metrics),
//! `groups.csv` (one line per group: for risk the high-risk selection rate,
//! TPR and FPR, for counts MAE and bias), `predictions.csv` (group, area,
//! time, y_true, y_pred: any tool can recompute), `fairness.{svg,png}` and
//! `report.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fedcrime_data::{Bureau, Dataset, Target, AREAS};
use fedcrime_ml::model::{to_batch, CrimeModel};
use fedcrime_ml::train::fairness::{
    count_fairness, risk_fairness, BinaryFairness, CountFairness, RiskFairness,
};
use fedcrime_ml::train::{CountMetrics, RiskMetrics};
use serde::Serialize;

use super::audit::{load, write_outputs, AuditHeader, AuditSource};
use crate::GlobalOpts;
use fedcrime_sim::charts::Bars;

/// Options of `fedcrime-sim fairness`.
#[derive(clap::Args, Debug, Clone)]
pub struct FairnessArgs {
    /// The model and the data.
    #[command(flatten)]
    pub source: AuditSource,
    /// The groups: `area`, `bureau`, or a CSV file with columns `area,group`
    /// (area code 1-21 or name; every area of the data must be mapped).
    #[arg(long, default_value = "bureau")]
    pub groups: GroupSpec,
    /// Output folder (default: `fairness` next to the model).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print fairness.json on stdout instead of the report.
    #[arg(long)]
    pub json: bool,
}

/// How samples are grouped.
#[derive(Clone, Debug, PartialEq)]
pub enum GroupSpec {
    /// Each LAPD area.
    Area,
    /// The area's bureau.
    Bureau,
    /// A user table.
    File(PathBuf),
}

impl std::str::FromStr for GroupSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "area" => Ok(GroupSpec::Area),
            "bureau" => Ok(GroupSpec::Bureau),
            "" => Err("expected area, bureau or a CSV file".into()),
            path => Ok(GroupSpec::File(PathBuf::from(path))),
        }
    }
}

impl GroupSpec {
    /// The group label of every area code (index `code - 1`).
    pub fn labels(&self) -> Result<Vec<String>> {
        match self {
            GroupSpec::Area => Ok(AREAS.iter().map(|a| a.name.to_string()).collect()),
            GroupSpec::Bureau => Ok(AREAS.iter().map(|a| bureau_name(a.bureau)).collect()),
            GroupSpec::File(path) => read_group_table(path),
        }
    }

    /// A short name for reports.
    pub fn describe(&self) -> String {
        match self {
            GroupSpec::Area => "area".into(),
            GroupSpec::Bureau => "bureau".into(),
            GroupSpec::File(p) => p.display().to_string(),
        }
    }
}

/// A bureau's name as LAPD writes it.
pub fn bureau_name(b: Bureau) -> String {
    match b {
        Bureau::Central => "Central Bureau",
        Bureau::South => "South Bureau",
        Bureau::Valley => "Valley Bureau",
        Bureau::West => "West Bureau",
    }
    .to_string()
}

/// Reads `area,group` lines (a header line is recognised and skipped);
/// every area must be mapped exactly once.
pub fn read_group_table(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut labels: Vec<Option<String>> = vec![None; AREAS.len()];
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((area, group)) = line.split_once(',') else {
            bail!(
                "{}:{}: expected `area,group`, got {line:?}",
                path.display(),
                n + 1
            );
        };
        let (area, group) = (
            area.trim().trim_matches('"'),
            group.trim().trim_matches('"'),
        );
        if n == 0 && area.eq_ignore_ascii_case("area") {
            continue;
        }
        let code = match area.parse::<usize>() {
            Ok(c) if (1..=AREAS.len()).contains(&c) => c,
            Ok(c) => bail!(
                "{}:{}: area code {c} is outside 1..=21",
                path.display(),
                n + 1
            ),
            Err(_) => AREAS
                .iter()
                .find(|a| a.name.eq_ignore_ascii_case(area))
                .map(|a| a.code as usize)
                .with_context(|| {
                    format!(
                        "{}:{}: {area:?} is not an LAPD area code or name",
                        path.display(),
                        n + 1
                    )
                })?,
        };
        if group.is_empty() {
            bail!(
                "{}:{}: the group of area {code} is empty",
                path.display(),
                n + 1
            );
        }
        if labels[code - 1].replace(group.to_string()).is_some() {
            bail!("{}:{}: area {code} is mapped twice", path.display(), n + 1);
        }
    }
    let missing: Vec<String> = labels
        .iter()
        .zip(AREAS.iter())
        .filter(|(l, _)| l.is_none())
        .map(|(_, a)| format!("{} ({})", a.code, a.name))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: no group for area(s) {}",
            path.display(),
            missing.join(", ")
        );
    }
    Ok(labels.into_iter().flatten().collect())
}

/// Predictions of a split, regrouped per (sample, area) so graph samples
/// (every area at once) score like flat ones.
pub struct Predictions {
    /// Each row's area code.
    pub area: Vec<u8>,
    /// Each row's time index.
    pub time: Vec<u32>,
    /// Risk: true and predicted class per row.
    pub classes: Option<(Vec<i64>, Vec<i64>, usize)>,
    /// Counts: true and predicted values, `dim` per row.
    pub counts: Option<(Vec<f32>, Vec<f32>, usize)>,
}

/// The model's predictions on `ds` (batches of 4096, no gradients).
pub fn predict(
    model: &dyn CrimeModel,
    ds: &Dataset,
    graph_areas: Option<usize>,
) -> Result<Predictions> {
    let device = model.device();
    let mut class_pred: Vec<i64> = Vec::new();
    let mut count_pred: Vec<f32> = Vec::new();
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(4096) {
        let b = to_batch(ds, chunk, device);
        let p = tch::no_grad(|| model.predict(&model.forward_t(&b, false)))
            .to_device(tch::Device::Cpu)
            .flatten(0, -1);
        match ds.target {
            Target::Classes { .. } => class_pred.extend(Vec::<i64>::try_from(&p)?),
            Target::Counts { .. } => {
                count_pred.extend(Vec::<f32>::try_from(&p.to_kind(tch::Kind::Float))?)
            }
        }
    }
    Ok(match &ds.target {
        Target::Classes {
            labels,
            num_classes,
        } => Predictions {
            area: ds.area.clone(),
            time: ds.time.clone(),
            classes: Some((labels.clone(), class_pred, *num_classes)),
            counts: None,
        },
        Target::Counts { values, dim } => match graph_areas {
            // `[areas * categories]` per sample, area-major: one row per area.
            Some(a) if a > 0 && dim % a == 0 => {
                let c = dim / a;
                let mut area = Vec::with_capacity(ds.len() * a);
                let mut time = Vec::with_capacity(ds.len() * a);
                for &t in &ds.time {
                    for k in 0..a {
                        area.push(AREAS.get(k).map_or(k as u8 + 1, |x| x.code));
                        time.push(t);
                    }
                }
                Predictions {
                    area,
                    time,
                    classes: None,
                    counts: Some((values.clone(), count_pred, c)),
                }
            }
            _ => Predictions {
                area: ds.area.clone(),
                time: ds.time.clone(),
                classes: None,
                counts: Some((values.clone(), count_pred, *dim)),
            },
        },
    })
}

/// `fairness.json`.
#[derive(Debug, Serialize)]
pub struct FairnessReport {
    /// The model and the data.
    #[serde(flatten)]
    pub audited: AuditHeader,
    /// How samples were grouped.
    pub groups: String,
    /// Samples (per area) scored.
    pub samples: usize,
    /// Risk: macro-F1 overall.
    pub macro_f1: Option<f64>,
    /// Counts: MAE overall.
    pub mae: Option<f64>,
    /// Risk fairness (per level and high risk).
    pub risk: Option<RiskFairness>,
    /// Count fairness.
    pub counts: Option<CountFairness>,
}

/// Predictions scored by group.
pub struct Scored {
    /// Each row's group.
    pub groups: Vec<String>,
    /// Risk fairness.
    pub risk: Option<RiskFairness>,
    /// Count fairness.
    pub counts: Option<CountFairness>,
    /// Risk: macro-F1 overall.
    pub macro_f1: Option<f64>,
    /// Counts: MAE overall.
    pub mae: Option<f64>,
}

/// Scores predictions by group.
pub fn score(p: &Predictions, labels: &[String]) -> Result<Scored> {
    let groups: Vec<String> = p
        .area
        .iter()
        .map(|&a| {
            labels
                .get(usize::from(a).wrapping_sub(1))
                .cloned()
                .with_context(|| format!("sample of area {a}: no such LAPD area"))
        })
        .collect::<Result<_>>()?;
    let mut out = Scored {
        groups,
        risk: None,
        counts: None,
        macro_f1: None,
        mae: None,
    };
    if let Some((y, yhat, k)) = &p.classes {
        out.risk = Some(risk_fairness(y, yhat, &out.groups, *k)?);
        out.macro_f1 = Some(RiskMetrics::compute(y, yhat, *k)?.macro_f1);
    }
    if let Some((y, yhat, dim)) = &p.counts {
        out.counts = Some(count_fairness(y, yhat, *dim, &out.groups)?);
        out.mae = Some(CountMetrics::compute(y, yhat, *dim)?.mae);
    }
    Ok(out)
}

/// Runs the command.
pub fn run(args: &FairnessArgs, global: &GlobalOpts) -> Result<()> {
    let labels = args.groups.labels()?;
    let a = load(&args.source)?;
    let ds = args.source.split.of(&a.splits);
    if ds.is_empty() {
        bail!(
            "the {} split of {} is empty",
            args.source.split.as_str(),
            a.data.source()
        );
    }
    let graph = a.is_graph().then(|| a.model.config().areas);
    let p = predict(a.model.as_ref(), ds, graph)?;
    let Scored {
        groups,
        risk,
        counts,
        macro_f1,
        mae,
    } = score(&p, &labels)?;
    let out = args.out.clone().unwrap_or_else(|| a.dir().join("fairness"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    write_predictions(&out.join("predictions.csv"), &p, &groups)?;
    let report = FairnessReport {
        audited: a.header(args.source.split),
        groups: args.groups.describe(),
        samples: groups.len(),
        macro_f1,
        mae,
        risk,
        counts,
    };
    let json = serde_json::to_string_pretty(&report)?;
    write_groups(&out.join("groups.csv"), &report)?;
    plot(&out, &report)?;
    write_outputs(
        &out,
        "fairness.json",
        &json,
        &markdown(&report),
        args.json,
        global.quiet,
    )
}

fn write_predictions(path: &Path, p: &Predictions, groups: &[String]) -> Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    if let Some((y, yhat, _)) = &p.classes {
        w.write_record(["group", "area", "time", "y_true", "y_pred"])?;
        for i in 0..y.len() {
            // Levels are 1-5 (class + 1).
            w.write_record([
                groups[i].clone(),
                p.area[i].to_string(),
                p.time[i].to_string(),
                (y[i] + 1).to_string(),
                (yhat[i] + 1).to_string(),
            ])?;
        }
    }
    if let Some((y, yhat, dim)) = &p.counts {
        let cats = fedcrime_data::Category::ALL.map(fedcrime_data::Category::name);
        w.write_record(["group", "area", "time", "category", "y_true", "y_pred"])?;
        for i in 0..groups.len() {
            for c in 0..*dim {
                w.write_record([
                    groups[i].clone(),
                    p.area[i].to_string(),
                    p.time[i].to_string(),
                    cats.get(c).map_or_else(|| c.to_string(), |s| s.to_string()),
                    y[i * dim + c].to_string(),
                    format!("{:.4}", yhat[i * dim + c]),
                ])?;
            }
        }
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

fn write_groups(path: &Path, r: &FairnessReport) -> Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    if let Some(risk) = &r.risk {
        w.write_record([
            "group",
            "n",
            "high_risk_actual",
            "selection_rate",
            "tpr",
            "fpr",
        ])?;
        for g in &risk.high_risk.groups {
            w.write_record([
                g.group.clone(),
                g.n.to_string(),
                g.positives.to_string(),
                format!("{:.4}", g.selection_rate),
                opt(g.true_positive_rate),
                opt(g.false_positive_rate),
            ])?;
        }
    }
    if let Some(c) = &r.counts {
        w.write_record(["group", "n", "mae", "bias"])?;
        for g in &c.groups {
            w.write_record([
                g.group.clone(),
                g.n.to_string(),
                format!("{:.4}", g.mae),
                format!("{:.4}", g.bias),
            ])?;
        }
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn plot(out: &Path, r: &FairnessReport) -> Result<()> {
    type Series = Vec<(String, Vec<f64>)>;
    let (names, series, what): (Vec<String>, Series, &str) = if let Some(risk) = &r.risk {
        let g = &risk.high_risk.groups;
        (
            g.iter().map(|x| x.group.clone()).collect(),
            vec![
                (
                    "selection rate".into(),
                    g.iter().map(|x| x.selection_rate).collect(),
                ),
                (
                    "true positive rate".into(),
                    g.iter()
                        .map(|x| x.true_positive_rate.unwrap_or(f64::NAN))
                        .collect(),
                ),
                (
                    "false positive rate".into(),
                    g.iter()
                        .map(|x| x.false_positive_rate.unwrap_or(f64::NAN))
                        .collect(),
                ),
            ],
            "high risk (levels 4-5) per group",
        )
    } else if let Some(c) = &r.counts {
        (
            c.groups.iter().map(|x| x.group.clone()).collect(),
            vec![
                ("MAE".into(), c.groups.iter().map(|x| x.mae).collect()),
                (
                    "bias (predicted - actual)".into(),
                    c.groups.iter().map(|x| x.bias).collect(),
                ),
            ],
            "count error per group",
        )
    } else {
        return Ok(());
    };
    Bars {
        title: format!(
            "{} {}: {what} ({} split)",
            r.audited.kind, r.audited.task, r.audited.split
        ),
        x_label: "rate".into(),
        names,
        series,
    }
    .write_both(out, "fairness")
}

fn binary_line(md: &mut String, name: &str, b: &BinaryFairness) {
    let _ = writeln!(
        md,
        "| {name} | {:.4} | {} | {:.4} | {} |",
        b.demographic_parity_difference,
        opt(b.demographic_parity_ratio),
        b.equalized_odds_difference,
        opt(b.equalized_odds_ratio)
    );
}

fn markdown(r: &FairnessReport) -> String {
    let mut md = format!(
        "# Fairness of {} ({} {})\n\nData: {} ({} split, {} samples), groups: {}.\n\n",
        r.audited.model,
        r.audited.kind,
        r.audited.task,
        r.audited.data,
        r.audited.split,
        r.samples,
        r.groups
    );
    if let Some(risk) = &r.risk {
        let _ = writeln!(md, "Macro-F1 {}.\n", opt(r.macro_f1));
        md.push_str("| decision | DP difference | DP ratio | EO difference | EO ratio |\n|---|---:|---:|---:|---:|\n");
        binary_line(&mut md, "high risk (4-5)", &risk.high_risk);
        for (k, b) in risk.per_level.iter().enumerate() {
            binary_line(&mut md, &format!("level {}", k + 1), b);
        }
        md.push_str("\n## High risk per group\n\n| group | n | actual high | selection rate | TPR | FPR |\n|---|---:|---:|---:|---:|---:|\n");
        for g in &risk.high_risk.groups {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.4} | {} | {} |",
                g.group,
                g.n,
                g.positives,
                g.selection_rate,
                opt(g.true_positive_rate),
                opt(g.false_positive_rate)
            );
        }
    }
    if let Some(c) = &r.counts {
        let _ = writeln!(
            md,
            "MAE {}; MAE difference between groups {:.4}, bias difference {:.4}.\n\n| group | values | MAE | bias |\n|---|---:|---:|---:|",
            opt(r.mae),
            c.mae_difference,
            c.bias_difference
        );
        for g in &c.groups {
            let _ = writeln!(
                md,
                "| {} | {} | {:.4} | {:+.4} |",
                g.group, g.n, g.mae, g.bias
            );
        }
    }
    md
}

/// Per-group label of every area code, by a map from area name, for tests.
#[cfg(test)]
fn by_name(labels: &[String]) -> std::collections::BTreeMap<&'static str, String> {
    AREAS
        .iter()
        .map(|a| a.name)
        .zip(labels.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_tables_map_every_area_and_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.csv");
        let mut text = String::from("area,group\n");
        for a in AREAS.iter() {
            if a.code == 3 {
                text.push_str("Southwest,majority-b\n");
            } else {
                let _ = writeln!(
                    text,
                    "{},{}",
                    a.code,
                    if a.code % 2 == 0 {
                        "majority-a"
                    } else {
                        "majority-b"
                    }
                );
            }
        }
        std::fs::write(&path, &text).unwrap();
        let labels = read_group_table(&path).unwrap();
        assert_eq!(labels.len(), 21);
        assert_eq!(by_name(&labels)["Southwest"], "majority-b");
        assert_eq!(labels[1], "majority-a");
        std::fs::write(&path, "1,x\n").unwrap();
        let e = read_group_table(&path).unwrap_err().to_string();
        assert!(e.contains("no group for area(s) 2"), "{e}");
        std::fs::write(&path, format!("{text}5,again\n")).unwrap();
        let e = read_group_table(&path).unwrap_err().to_string();
        assert!(e.contains(":23: area 5 is mapped twice"), "{e}");
        std::fs::write(&path, "Atlantis,x\n").unwrap();
        let e = read_group_table(&path).unwrap_err().to_string();
        assert!(e.contains(":1: \"Atlantis\" is not an LAPD area"), "{e}");
        std::fs::write(&path, "22,x\n").unwrap();
        assert!(read_group_table(&path)
            .unwrap_err()
            .to_string()
            .contains("outside 1..=21"));
    }

    #[test]
    fn graph_predictions_score_per_area() {
        let p = Predictions {
            area: vec![1, 2, 1, 2],
            time: vec![0, 0, 1, 1],
            classes: None,
            counts: Some((vec![1.0, 2.0, 3.0, 4.0], vec![1.0, 3.0, 3.0, 6.0], 1)),
        };
        let labels: Vec<String> = (1..=21)
            .map(|a| if a == 1 { "a".into() } else { "b".into() })
            .collect();
        let s = score(&p, &labels).unwrap();
        let (c, mae) = (s.counts.unwrap(), s.mae);
        assert_eq!(c.groups[0].mae, 0.0);
        assert_eq!(c.groups[1].bias, 1.5);
        assert_eq!(mae, Some(0.75));
    }
}
