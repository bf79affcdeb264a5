//! `fedcrime-sim features`: builds the `risk` or `counts` task from an LAPD
//! export and writes the model-ready matrices for inspection:
//!
//! - `features.safetensors`: per split `S` in `train`, `val`, `test` the
//!   tensors `S.features` (f32 `[n, d]`, min-max scaled), `S.target` (i64
//!   `[n]` risk classes 0..5, or f32 `[n, 8]` raw counts), `S.sequences` (f32
//!   `[n, lags, 8]`), `S.area` (u8 `[n]`) and `S.time` (i64 `[n]`), plus
//!   `graph.counts` (f32 `[21, times, 8]`); the metadata holds the task,
//!   period, time unit, split bounds and the feature names (JSON).
//! - `featurizer.json`: the scalers, thresholds and densities fit on the
//!   training split.
//! - `head.csv`: the first training rows with named columns, for eyeballing.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use fedcrime_data::dataset::{Dataset, Target, Task};
use fedcrime_data::loader::load_path;
use fedcrime_data::tasks::{build_task, GraphSeries, Period, TaskConfig, TaskData};
use fedcrime_data::Category;
use safetensors::tensor::{Dtype, View};

use crate::GlobalOpts;

/// Options of `fedcrime-sim features`.
#[derive(clap::Args, Debug, Clone)]
pub struct FeaturesArgs {
    /// The LAPD "Crime Data from 2020 to Present" export (.csv or .csv.gz).
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// The task: `risk` (level 1-5 per area and 4-hour block) or `counts`
    /// (per-category counts per area and period).
    #[arg(long, default_value = "risk")]
    pub task: Task,
    /// The period of the `counts` task: `day` or `week` (Monday to Sunday).
    #[arg(long, default_value = "day")]
    pub period: Period,
    /// Previous periods in the sequence view.
    #[arg(long, default_value_t = 4)]
    pub lags: usize,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Training rows written to head.csv.
    #[arg(long, default_value_t = 50)]
    pub head: usize,
}

/// Runs the command; `--quiet` drops the summary on stdout.
pub fn run(args: &FeaturesArgs, global: &GlobalOpts) -> anyhow::Result<()> {
    let loaded =
        load_path(&args.data).with_context(|| format!("loading {}", args.data.display()))?;
    let cfg = TaskConfig {
        task: args.task,
        period: args.period,
        lags: args.lags,
        ..TaskConfig::default()
    };
    let data = build_task(&loaded.incidents, &cfg)
        .with_context(|| format!("building the {} task", args.task))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let st = args.out.join("features.safetensors");
    write_safetensors(&data, &cfg, &st).with_context(|| format!("writing {}", st.display()))?;
    let fz = args.out.join("featurizer.json");
    data.featurizer.save_json(&fz)?;
    let head = args.out.join("head.csv");
    write_head(&data.splits.train, args.head, &head)
        .with_context(|| format!("writing {}", head.display()))?;

    if global.quiet {
        return Ok(());
    }
    let s = &data.splits;
    println!(
        "{} ({}): {} incidents -> train {} / val {} / test {} samples, {} features, sequences [{}, {}]",
        args.task,
        data.featurizer.time_unit().name(),
        loaded.incidents.len(),
        s.train.len(),
        s.val.len(),
        s.test.len(),
        data.featurizer.feature_dim(),
        cfg.lags,
        Category::COUNT
    );
    if let Target::Classes {
        labels,
        num_classes,
    } = &s.train.target
    {
        let mut hist = vec![0usize; *num_classes];
        for &l in labels {
            if let Some(h) = usize::try_from(l).ok().and_then(|l| hist.get_mut(l)) {
                *h += 1;
            }
        }
        println!(
            "risk thresholds (lower bounds of levels 2..5): {:?}; train levels 1..5: {:?}",
            data.featurizer.risk_thresholds, hist
        );
    }
    println!(
        "wrote {}, {}, {}",
        st.display(),
        fz.display(),
        head.display()
    );
    Ok(())
}

/// One tensor for safetensors: little-endian bytes with a dtype and shape.
struct Blob {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Blob {
    fn f32(values: &[f32], shape: Vec<usize>) -> Self {
        Blob {
            dtype: Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn i64(values: impl Iterator<Item = i64>, shape: Vec<usize>) -> Self {
        Blob {
            dtype: Dtype::I64,
            shape,
            bytes: values.flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

impl View for &Blob {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The tensors of one split, named `{name}.{tensor}`.
fn split_blobs(name: &str, ds: &Dataset, out: &mut Vec<(String, Blob)>) {
    let n = ds.len();
    out.push((
        format!("{name}.features"),
        Blob::f32(&ds.features, vec![n, ds.feature_dim]),
    ));
    let target = match &ds.target {
        Target::Classes { labels, .. } => Blob::i64(labels.iter().copied(), vec![n]),
        Target::Counts { values, dim } => Blob::f32(values, vec![n, *dim]),
    };
    out.push((format!("{name}.target"), target));
    if let Some(seq) = &ds.sequences {
        out.push((
            format!("{name}.sequences"),
            Blob::f32(&seq.data, vec![n, seq.steps, seq.step_dim]),
        ));
    }
    out.push((
        format!("{name}.area"),
        Blob {
            dtype: Dtype::U8,
            shape: vec![n],
            bytes: ds.area.clone(),
        },
    ));
    out.push((
        format!("{name}.time"),
        Blob::i64(ds.time.iter().map(|&t| i64::from(t)), vec![n]),
    ));
}

fn write_safetensors(data: &TaskData, cfg: &TaskConfig, path: &Path) -> anyhow::Result<()> {
    let mut blobs = Vec::new();
    split_blobs("train", &data.splits.train, &mut blobs);
    split_blobs("val", &data.splits.val, &mut blobs);
    split_blobs("test", &data.splits.test, &mut blobs);
    let mut meta = HashMap::new();
    if let Some(GraphSeries {
        areas,
        times,
        categories,
        counts,
        time0,
        ..
    }) = &data.graph
    {
        blobs.push((
            "graph.counts".into(),
            Blob::f32(counts, vec![*areas, *times, *categories]),
        ));
        meta.insert("graph_time0".to_string(), time0.to_string());
    }
    let f = &data.featurizer;
    meta.insert("task".into(), cfg.task.to_string());
    meta.insert("period".into(), cfg.period.to_string());
    meta.insert("time_unit".into(), f.time_unit().name().into());
    meta.insert("lags".into(), cfg.lags.to_string());
    meta.insert("bounds".into(), serde_json::to_string(&f.bounds)?);
    meta.insert(
        "feature_names".into(),
        serde_json::to_string(&f.feature_names)?,
    );
    meta.insert(
        "categories".into(),
        serde_json::to_string(&Category::ALL.map(Category::name))?,
    );
    safetensors::serialize_to_file(
        blobs.iter().map(|(k, b)| (k.as_str(), b)),
        &Some(meta),
        path,
    )?;
    Ok(())
}

fn write_head(ds: &Dataset, rows: usize, path: &Path) -> anyhow::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    write!(w, "area,time")?;
    for name in &ds.feature_names {
        write!(w, ",{name}")?;
    }
    match &ds.target {
        Target::Classes { .. } => write!(w, ",target_level")?,
        Target::Counts { .. } => {
            for c in Category::ALL {
                write!(w, ",target.{}", c.name())?;
            }
        }
    }
    writeln!(w)?;
    for r in 0..rows.min(ds.len()) {
        write!(w, "{},{}", ds.area[r], ds.time[r])?;
        for v in &ds.features[r * ds.feature_dim..(r + 1) * ds.feature_dim] {
            write!(w, ",{v}")?;
        }
        match &ds.target {
            Target::Classes { labels, .. } => write!(w, ",{}", labels[r] + 1)?,
            Target::Counts { values, dim } => {
                for v in &values[r * dim..(r + 1) * dim] {
                    write!(w, ",{v}")?;
                }
            }
        }
        writeln!(w)?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    #[test]
    fn writes_readable_tensors_for_both_tasks() {
        let data = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/la-crime/la_crime_2024_02.csv");
        if !data.exists() {
            eprintln!("skipped: {} not found", data.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (task, target_shape) in [(Task::Risk, 1), (Task::Counts, 2)] {
            let out = dir.path().join(task.as_str());
            let args = FeaturesArgs {
                data: data.clone(),
                task,
                period: Period::Day,
                lags: 4,
                out: out.clone(),
                head: 5,
            };
            let quiet = GlobalOpts {
                log_format: crate::LogFormat::Text,
                quiet: true,
            };
            run(&args, &quiet).unwrap();
            let bytes = std::fs::read(out.join("features.safetensors")).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let built = build_task(
                &load_path(&data).unwrap().incidents,
                &TaskConfig {
                    task,
                    ..TaskConfig::default()
                },
            )
            .unwrap();
            for (name, ds) in [
                ("train", &built.splits.train),
                ("val", &built.splits.val),
                ("test", &built.splits.test),
            ] {
                let f = st.tensor(&format!("{name}.features")).unwrap();
                assert_eq!(f.shape(), [ds.len(), ds.feature_dim]);
                let first = f32::from_le_bytes(f.data()[..4].try_into().unwrap());
                assert_eq!(first, ds.features[0]);
                let t = st.tensor(&format!("{name}.target")).unwrap();
                assert_eq!(t.shape().len(), target_shape);
                let s = st.tensor(&format!("{name}.sequences")).unwrap();
                assert_eq!(s.shape(), [ds.len(), 4, 8]);
                assert_eq!(st.tensor(&format!("{name}.area")).unwrap().data(), ds.area);
            }
            assert_eq!(st.tensor("graph.counts").unwrap().shape()[0], 21);
            let fz = fedcrime_data::Featurizer::load_json(&out.join("featurizer.json")).unwrap();
            assert_eq!(fz, built.featurizer);
            let head = std::fs::read_to_string(out.join("head.csv")).unwrap();
            assert_eq!(head.lines().count(), 6);
            let header_cols = head.lines().next().unwrap().split(',').count();
            assert!(head.lines().all(|l| l.split(',').count() == header_cols));
        }
    }
}
