//! What `explain` and `fairness` share: a trained model (the folder
//! `fedcrime-sim train` or a federation wrote, or its `.safetensors` file)
//! and the samples it is audited on, rebuilt from the same data as in
//! training so the features are scaled as the model saw them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fedcrime_data::tasks::Period;
use fedcrime_data::{Dataset, Featurizer, Splits, Task};
use fedcrime_ml::model::{load_model, CrimeModel, ModelKind};
use fedcrime_ml::DeviceChoice;

use super::train::{DataArgs, ModelArgs};

/// The metadata key under which `fedcrime-sim train` records its data
/// arguments (JSON of [`DataArgs`]).
pub const META_DATA_ARGS: &str = "fedcrime.data_args";

/// Which model and which data.
#[derive(clap::Args, Debug, Clone)]
pub struct AuditSource {
    /// The trained model: the folder `fedcrime-sim train` (or a federation)
    /// wrote, holding model.safetensors, or the .safetensors file itself.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The LAPD export to audit on; default: the data the model was trained
    /// on, as `fedcrime-sim train` recorded it.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Synthetic incidents, when neither --data nor the model names a file
    /// (default: as recorded, else 200000).
    #[arg(long)]
    pub synthetic_rows: Option<usize>,
    /// The counts task's period, `day` or `week` (default: as recorded, else day).
    #[arg(long)]
    pub period: Option<Period>,
    /// The split audited: `test` (the default, never seen in training or
    /// model selection), `val` or `train`.
    #[arg(long, default_value = "test")]
    pub split: SplitName,
    /// Where the model runs: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// libtorch intra-op threads (libtorch's default when absent).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// A split by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitName {
    /// The training split.
    Train,
    /// The validation split.
    Val,
    /// The test split.
    Test,
}

impl SplitName {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Val => "val",
            SplitName::Test => "test",
        }
    }

    /// Its samples.
    pub fn of(self, s: &Splits) -> &Dataset {
        match self {
            SplitName::Train => &s.train,
            SplitName::Val => &s.val,
            SplitName::Test => &s.test,
        }
    }
}

/// A loaded model with the samples it is audited on.
pub struct Audited {
    /// The model, on the chosen device.
    pub model: Box<dyn CrimeModel>,
    /// The model file.
    pub path: PathBuf,
    /// The data arguments the task was rebuilt with.
    pub data: DataArgs,
    /// What the model reads: the task's splits, or gat-tcn's graph windows.
    pub splits: Splits,
}

impl Audited {
    /// The model's folder (where outputs go by default).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Whether the model is the graph model (one sample per period, every area).
    pub fn is_graph(&self) -> bool {
        self.model.kind() == ModelKind::GatTcn
    }
}

/// Which model was audited on what: the head of every audit's JSON.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditHeader {
    /// The model file.
    pub model: String,
    /// Its architecture.
    pub kind: String,
    /// Its task.
    pub task: String,
    /// The data.
    pub data: String,
    /// The split audited.
    pub split: String,
}

impl Audited {
    /// The header of an audit of `split`.
    pub fn header(&self, split: SplitName) -> AuditHeader {
        AuditHeader {
            model: self.path.display().to_string(),
            kind: self.model.kind().to_string(),
            task: self.model.task().to_string(),
            data: self.data.source(),
            split: split.as_str().into(),
        }
    }
}

/// Writes an audit's JSON (as `json_name`) and `report.md` into `out`, then
/// prints the JSON (`--json`) or, unless quiet, the report.
pub fn write_outputs(
    out: &Path,
    json_name: &str,
    json: &str,
    md: &str,
    print_json: bool,
    quiet: bool,
) -> Result<()> {
    for (name, text) in [(json_name, json), ("report.md", md)] {
        std::fs::write(out.join(name), text)
            .with_context(|| format!("writing {}", out.join(name).display()))?;
    }
    if print_json {
        println!("{json}");
    } else if !quiet {
        println!("{md}");
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// The model file of `path` (a folder holding model.safetensors, or a file).
fn model_file(path: &Path) -> Result<PathBuf> {
    let file = if path.is_dir() {
        path.join("model.safetensors")
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        bail!(
            "{} is not a model: expected a folder with model.safetensors (what `fedcrime-sim train` writes) or a .safetensors file",
            path.display()
        );
    }
    Ok(file)
}

/// Parses the data-source line older models recorded:
/// `synthetic (N rows, seed S)` or a file path.
fn parse_source(text: &str) -> (Option<PathBuf>, Option<(usize, u64)>) {
    if let Some(rest) = text.strip_prefix("synthetic (") {
        let nums: Vec<u64> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        if let [rows, seed] = nums[..] {
            return (None, Some((rows as usize, seed)));
        }
        return (None, None);
    }
    (Some(PathBuf::from(text)), None)
}

/// Loads the model and rebuilds the samples it is audited on.
pub fn load(src: &AuditSource) -> Result<Audited> {
    if let Some(t) = src.threads {
        tch::set_num_threads(t as i32);
    }
    let path = model_file(&src.model)?;
    let device = src.device.resolve().map_err(anyhow::Error::msg)?;
    let (model, meta) =
        load_model(&path, device).with_context(|| format!("loading {}", path.display()))?;
    let recorded: Option<DataArgs> = meta
        .get(META_DATA_ARGS)
        .and_then(|j| serde_json::from_str(j).ok());
    let featurizer: Option<Featurizer> = meta
        .get("fedcrime.featurizer")
        .and_then(|j| serde_json::from_str(j).ok());
    let (old_file, old_synth) = meta
        .get("fedcrime.data_source")
        .map(|s| parse_source(s))
        .unwrap_or((None, None));
    let task = model.task();
    let mut data = recorded.unwrap_or(DataArgs {
        data: old_file,
        rows: old_synth.map_or(200_000, |s| s.0),
        data_seed: old_synth.map_or(7, |s| s.1),
        task,
        period: featurizer.as_ref().map_or(Period::Day, |f| f.period),
    });
    data.task = task;
    if let Some(d) = &src.data {
        data.data = Some(d.clone());
    }
    if let Some(r) = src.synthetic_rows {
        data.rows = r;
    }
    if let Some(p) = src.period {
        data.period = p;
    }
    let rebuilt = data.task_data()?;
    match &featurizer {
        Some(f) if *f != rebuilt.featurizer => bail!(
            "{} was trained on other data than {} (its featurizer: scalers, risk thresholds, \
             area densities, split, differs from the one this data gives): audit it on the data \
             it was trained on (--data, --synthetic-rows, --period)",
            path.display(),
            data.source()
        ),
        Some(_) => {}
        None => tracing::warn!(
            "{} carries no featurizer (a federation's model): the features are scaled as {} \
             gives them; audit it on the data the federation trained on",
            path.display(),
            data.source()
        ),
    }
    let model_args = ModelArgs {
        model: model.kind(),
        hidden: None,
        layers: None,
        dropout: None,
        count_loss: None,
        class_weights: fedcrime_ml::train::ClassWeighting::None,
    };
    let splits = match model_args.model_splits(&rebuilt, data.period)? {
        Some(g) => g,
        None => rebuilt.splits.clone(),
    };
    let check = |ds: &Dataset| -> Result<()> {
        let cfg = model.config();
        if ds.task != cfg.task
            || (ds.task == Task::Counts && ds.target.output_dim() != cfg.output_dim)
        {
            bail!(
                "{} is a {} {} model with {} outputs; {} gives {} samples with {} outputs",
                path.display(),
                cfg.task,
                cfg.kind,
                cfg.output_dim,
                data.source(),
                ds.task,
                ds.target.output_dim()
            );
        }
        if ds.feature_dim != cfg.input_dim {
            bail!(
                "{} reads {} features; {} gives {}",
                path.display(),
                cfg.input_dim,
                data.source(),
                ds.feature_dim
            );
        }
        Ok(())
    };
    check(&splits.train)?;
    Ok(Audited {
        model,
        path,
        data,
        splits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_source_lines_parse() {
        assert_eq!(
            parse_source("synthetic (5000 rows, seed 3)"),
            (None, Some((5000, 3)))
        );
        assert_eq!(
            parse_source("../data/x.csv"),
            (Some(PathBuf::from("../data/x.csv")), None)
        );
        assert_eq!(parse_source("synthetic (garbled)"), (None, None));
    }
}
