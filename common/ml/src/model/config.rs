//! [`ModelConfig`]: the typed description every model is built from.
//!
//! A config is plain data (serde, TOML or JSON): it travels in the
//! `__metadata__` of saved `.safetensors` files so a saved model is
//! self-describing, and the federated server sends it to stations so
//! everybody builds the same architecture. [`ModelConfig::for_dataset`] fills
//! the data-dependent widths from a [`Dataset`] and sane per-architecture
//! defaults; [`ModelConfig::validate`] checks a hand-written or received
//! config before anything is allocated.

use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};
use super::graph::AreaGraph;
use super::ModelKind;
use fedcrime_data::{Dataset, Target, Task};

/// Number of LAPD geographic areas (the graph model's default node count).
pub const LAPD_AREAS: usize = fedcrime_data::areas::AREA_COUNT;

/// The loss of the `counts` task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CountLoss {
    /// Poisson negative log-likelihood; the model outputs log-rates.
    #[default]
    Poisson,
    /// Mean squared error; the model outputs counts directly.
    Mse,
}

impl CountLoss {
    /// The name used on the command line and in files.
    pub fn as_str(self) -> &'static str {
        match self {
            CountLoss::Poisson => "poisson",
            CountLoss::Mse => "mse",
        }
    }
}

impl std::str::FromStr for CountLoss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "poisson" => Ok(CountLoss::Poisson),
            "mse" => Ok(CountLoss::Mse),
            other => Err(format!(
                "unknown count loss {other:?} (expected poisson or mse)"
            )),
        }
    }
}

impl std::fmt::Display for CountLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything needed to build one of the three models.
///
/// Widths are in samples' terms: `input_dim` is the flat feature width,
/// `seq_steps x seq_dim` the sequence view, `output_dim` the number of classes
/// (risk) or count dimensions (counts). `hidden` and `layers` mean, per kind:
///
/// | kind | `hidden` | `layers` |
/// |---|---|---|
/// | dnn | width of each hidden layer (128) | hidden layers (3) |
/// | lstm | LSTM hidden units (128) | stacked LSTM layers (1) |
/// | gat-tcn | node embedding width = GAT output (all heads) = TCN channels (64) | TCN levels, dilation `2^level` (3: 1, 2, 4) |
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The architecture.
    pub kind: ModelKind,
    /// The task (decides loss, output meaning and metrics).
    pub task: Task,
    /// Flat feature width (`Dataset::feature_dim`).
    pub input_dim: usize,
    /// Time steps of the sequence view (0 when the dataset has none).
    #[serde(default)]
    pub seq_steps: usize,
    /// Values per time step of the sequence view (for gat-tcn: `areas * node
    /// features`, a node's features being its counts, its levels and the
    /// weekday: see [`graph_dataset`](super::graph_dataset)).
    #[serde(default)]
    pub seq_dim: usize,
    /// Classes (risk) or count dimensions (counts; for gat-tcn `areas * categories`).
    pub output_dim: usize,
    /// Hidden width, see the table above.
    pub hidden: usize,
    /// Depth, see the table above.
    pub layers: usize,
    /// Dropout probability during training (between hidden layers; for the
    /// LSTM before the head and between stacked layers; inside TCN blocks).
    #[serde(default)]
    pub dropout: f64,
    /// The loss for `counts` (ignored for `risk`).
    #[serde(default)]
    pub count_loss: CountLoss,
    /// LSTM only: the head also sees the flat features (calendar, area,
    /// densities) next to the last hidden state. The sequence view carries
    /// only past counts, so without this the LSTM cannot know the weekday or
    /// hour it predicts for.
    #[serde(default = "default_true")]
    pub static_features: bool,
    /// Mean of each target dimension (counts) or class frequencies (risk) of
    /// the data the config was made from; initializes the output bias (log
    /// mean for Poisson, mean for MSE, log prior for classes) so training
    /// starts at the marginal instead of at zero. `None`: zero bias.
    #[serde(default)]
    pub target_prior: Option<Vec<f32>>,
    /// Risk only: per-class weights of the cross-entropy (`None`: unweighted).
    #[serde(default)]
    pub class_weights: Option<Vec<f32>>,
    /// Counts, dnn and lstm (with `static_features`): the per-area training means of
    /// the targets, which initialize the head's weights on the flat
    /// features' one-hot area columns so the untrained model predicts each
    /// area's mean rate (the `period_mean` baseline) and training learns the
    /// deviation from it. `None`: the head starts at `target_prior` alone.
    #[serde(default)]
    pub area_prior: Option<AreaPrior>,
    /// gat-tcn: number of graph nodes (areas). The weights do not depend on
    /// it: a config and its [`on_graph`](ModelConfig::on_graph) copy for a
    /// subgraph share one parameter layout.
    #[serde(default)]
    pub areas: usize,
    /// gat-tcn: attention heads (must divide `hidden`).
    #[serde(default)]
    pub heads: usize,
    /// gat-tcn: undirected edges between areas (0-based node indices); self
    /// loops are always added.
    #[serde(default)]
    pub adjacency: Vec<(usize, usize)>,
    /// gat-tcn: TCN convolution kernel size.
    #[serde(default)]
    pub tcn_kernel: usize,
    /// gat-tcn: negative slope of the LeakyReLU on attention scores.
    #[serde(default = "default_leaky_slope")]
    pub leaky_slope: f64,
}

/// Per-area target means and where the one-hot area columns sit in the flat
/// features (see [`ModelConfig::area_prior`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AreaPrior {
    /// Index of the first one-hot area column in the flat features; the
    /// `areas` columns from there on are the areas, in order.
    pub column: usize,
    /// Number of one-hot area columns.
    pub areas: usize,
    /// `[areas, output_dim]` row-major: the training mean of every target
    /// dimension over the samples of each area.
    pub means: Vec<f32>,
}

fn default_true() -> bool {
    true
}

fn default_leaky_slope() -> f64 {
    0.2
}

impl ModelConfig {
    /// A config with the defaults of `kind` and the given widths: dnn 3 x 128
    /// ReLU, dropout 0.1; lstm 128 hidden, 1 layer, dropout 0.1; gat-tcn 4
    /// heads, width 64, TCN levels with dilations 1, 2, 4, kernel 2, dropout 0.1.
    pub fn new(kind: ModelKind, task: Task, input_dim: usize, output_dim: usize) -> Self {
        let (hidden, layers, heads, tcn_kernel, areas) = match kind {
            ModelKind::Dnn => (128, 3, 0, 0, 0),
            ModelKind::Lstm => (128, 1, 0, 0, 0),
            ModelKind::GatTcn => (64, 3, 4, 2, LAPD_AREAS),
        };
        ModelConfig {
            kind,
            task,
            input_dim,
            seq_steps: 0,
            seq_dim: 0,
            output_dim,
            hidden,
            layers,
            dropout: 0.1,
            count_loss: CountLoss::Poisson,
            static_features: true,
            target_prior: None,
            class_weights: None,
            area_prior: None,
            areas,
            heads,
            adjacency: Vec::new(),
            tcn_kernel,
            leaky_slope: default_leaky_slope(),
        }
    }

    /// The config of `kind` for samples shaped like `ds` (normally the
    /// training split): widths from the dataset, the kind's defaults (see
    /// [`ModelConfig::new`]) and the target prior of `ds`.
    ///
    /// For gat-tcn the dataset is a graph dataset (see
    /// [`graph_dataset`](super::graph_dataset)): `seq_dim = areas x node
    /// features` with [`LAPD_AREAS`] nodes and LAPD's neighbour graph. The
    /// result is not validated: call [`ModelConfig::validate`] (or
    /// [`build`](super::build), which does) before use.
    pub fn for_dataset(kind: ModelKind, ds: &Dataset) -> Self {
        let mut cfg = ModelConfig::new(kind, ds.task, ds.feature_dim, ds.target.output_dim());
        if let Some(seq) = &ds.sequences {
            cfg.seq_steps = seq.steps;
            cfg.seq_dim = seq.step_dim;
        }
        cfg.target_prior = target_prior(&ds.target);
        if matches!(kind, ModelKind::Lstm | ModelKind::Dnn) {
            cfg.area_prior = area_prior(ds);
        }
        if kind == ModelKind::GatTcn {
            cfg.adjacency = fedcrime_data::areas::adjacency();
        }
        cfg
    }

    /// The gat-tcn config for graph samples `ds` of the nodes of `graph`
    /// (see [`graph_dataset`](super::graph_dataset)): [`ModelConfig::for_dataset`]
    /// with `graph`'s node count and edges.
    pub fn for_graph(ds: &Dataset, graph: &AreaGraph) -> Self {
        let mut cfg = ModelConfig::for_dataset(ModelKind::GatTcn, ds);
        cfg.areas = graph.len();
        cfg.adjacency = graph.edges().to_vec();
        cfg
    }

    /// This gat-tcn config (the run's architecture, any node count) on the
    /// subgraph `graph`, for its graph samples `train`: the same
    /// hyperparameters, hence the same parameter names and shapes, with the
    /// subgraph's node count, edges, widths and target prior. An error when
    /// `train` does not have this config's node features, outputs per node
    /// or window length (the weights would not fit).
    pub fn on_graph(&self, graph: &AreaGraph, train: &Dataset) -> Result<ModelConfig> {
        if self.kind != ModelKind::GatTcn {
            return Err(ModelError::config(
                "kind",
                format!("{} models have no graph", self.kind),
            ));
        }
        let local = ModelConfig::for_graph(train, graph);
        let mut cfg = self.clone();
        cfg.areas = local.areas;
        cfg.adjacency = local.adjacency;
        cfg.seq_steps = local.seq_steps;
        cfg.seq_dim = local.seq_dim;
        cfg.output_dim = local.output_dim;
        cfg.target_prior = local.target_prior;
        let same = |what: &str, mine: usize, theirs: usize| {
            if mine == theirs {
                Ok(())
            } else {
                Err(ModelError::config(
                    what,
                    format!(
                        "the {}-node graph's samples have {theirs}, the run's model {mine}",
                        graph.len()
                    ),
                ))
            }
        };
        same("seq_steps", self.seq_steps, cfg.seq_steps)?;
        same("node features", self.node_features(), cfg.node_features())?;
        same("outputs per node", self.node_outputs(), cfg.node_outputs())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// gat-tcn: input features per node and time step (`seq_dim / areas`).
    pub fn node_features(&self) -> usize {
        self.seq_dim.checked_div(self.areas).unwrap_or(0)
    }

    /// gat-tcn: predicted values per node (`output_dim / areas`).
    pub fn node_outputs(&self) -> usize {
        self.output_dim.checked_div(self.areas).unwrap_or(0)
    }

    /// The config as JSON (what saved models carry in their metadata).
    pub(crate) fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and validates a JSON config.
    pub fn from_json(s: &str) -> Result<Self> {
        let cfg: ModelConfig =
            serde_json::from_str(s).map_err(|e| ModelError::config("json", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field for the config's kind, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Err(ModelError::config(field, reason));
        if self.output_dim == 0 {
            return bad("output_dim", "must be at least 1".into());
        }
        if self.task == Task::Risk && self.output_dim < 2 {
            return bad(
                "output_dim",
                format!("risk needs at least 2 classes, got {}", self.output_dim),
            );
        }
        if self.hidden == 0 {
            return bad("hidden", "must be at least 1".into());
        }
        if self.layers == 0 {
            return bad("layers", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("{} is outside [0, 1)", self.dropout));
        }
        if let Some(prior) = &self.target_prior {
            if prior.len() != self.output_dim {
                return bad(
                    "target_prior",
                    format!("{} values for output_dim {}", prior.len(), self.output_dim),
                );
            }
            if let Some(i) = prior.iter().position(|v| !v.is_finite() || *v < 0.0) {
                return bad(
                    &format!("target_prior[{i}]"),
                    format!("{} is not a finite non-negative number", prior[i]),
                );
            }
        }
        if let Some(w) = &self.class_weights {
            if self.task != Task::Risk {
                return bad("class_weights", "only the risk task has classes".into());
            }
            if w.len() != self.output_dim {
                return bad(
                    "class_weights",
                    format!("{} weights for {} classes", w.len(), self.output_dim),
                );
            }
            if let Some(i) = w.iter().position(|v| !v.is_finite() || *v <= 0.0) {
                return bad(
                    &format!("class_weights[{i}]"),
                    format!("{} is not a finite positive number", w[i]),
                );
            }
        }
        if let Some(p) = &self.area_prior {
            if self.task != Task::Counts {
                return bad("area_prior", "only the counts task has area rates".into());
            }
            if p.areas == 0 || p.column + p.areas > self.input_dim {
                return bad(
                    "area_prior",
                    format!(
                        "columns {}..{} outside the {} flat features",
                        p.column,
                        p.column + p.areas,
                        self.input_dim
                    ),
                );
            }
            if p.means.len() != p.areas * self.output_dim {
                return bad(
                    "area_prior",
                    format!(
                        "{} means for {} areas x {} outputs",
                        p.means.len(),
                        p.areas,
                        self.output_dim
                    ),
                );
            }
            if let Some(i) = p.means.iter().position(|v| !v.is_finite() || *v < 0.0) {
                return bad(
                    &format!("area_prior.means[{i}]"),
                    format!("{} is not a finite non-negative number", p.means[i]),
                );
            }
        }
        match self.kind {
            ModelKind::Dnn => {
                if self.input_dim == 0 {
                    return bad("input_dim", "dnn needs flat features (got 0)".into());
                }
            }
            ModelKind::Lstm => {
                if self.seq_steps == 0 || self.seq_dim == 0 {
                    return bad(
                        "seq_steps",
                        format!(
                            "lstm needs a sequence view, got {} steps x {} values",
                            self.seq_steps, self.seq_dim
                        ),
                    );
                }
                if self.layers > 16 {
                    return bad(
                        "layers",
                        format!("{} stacked LSTM layers (max 16)", self.layers),
                    );
                }
            }
            ModelKind::GatTcn => self.validate_graph()?,
        }
        Ok(())
    }

    fn validate_graph(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Err(ModelError::config(field, reason));
        if self.task != Task::Counts {
            return bad(
                "task",
                "gat-tcn predicts every area's category counts: task must be counts".into(),
            );
        }
        if self.areas == 0 {
            return bad("areas", "must be at least 1".into());
        }
        if self.seq_steps == 0 {
            return bad("seq_steps", "gat-tcn needs a sequence view".into());
        }
        if self.seq_dim == 0 || !self.seq_dim.is_multiple_of(self.areas) {
            return bad(
                "seq_dim",
                format!(
                    "{} is not a positive multiple of {} areas",
                    self.seq_dim, self.areas
                ),
            );
        }
        if !self.output_dim.is_multiple_of(self.areas) {
            return bad(
                "output_dim",
                format!(
                    "{} is not a multiple of {} areas",
                    self.output_dim, self.areas
                ),
            );
        }
        if self.node_features() < 2 * self.node_outputs() {
            return bad(
                "seq_dim",
                format!(
                    "{} features per node cannot hold the counts and the levels of {} categories",
                    self.node_features(),
                    self.node_outputs()
                ),
            );
        }
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return bad(
                "heads",
                format!("{} heads do not divide hidden {}", self.heads, self.hidden),
            );
        }
        if self.tcn_kernel == 0 {
            return bad("tcn_kernel", "must be at least 1".into());
        }
        if self.layers > 16 {
            return bad(
                "layers",
                format!("{} TCN levels (dilation 2^level, max 16)", self.layers),
            );
        }
        if !(0.0..1.0).contains(&self.leaky_slope) {
            return bad(
                "leaky_slope",
                format!("{} is outside [0, 1)", self.leaky_slope),
            );
        }
        for (k, &(i, j)) in self.adjacency.iter().enumerate() {
            if i >= self.areas || j >= self.areas {
                return bad(
                    &format!("adjacency[{k}]"),
                    format!("edge ({i}, {j}) names a node outside 0..{}", self.areas),
                );
            }
        }
        Ok(())
    }
}

/// Column means (counts) or class frequencies (risk) of a target; `None`
/// when there are no samples.
fn target_prior(target: &Target) -> Option<Vec<f32>> {
    match target {
        Target::Classes {
            labels,
            num_classes,
        } => {
            if labels.is_empty() || *num_classes == 0 {
                return None;
            }
            let mut freq = vec![0f64; *num_classes];
            for &l in labels {
                if let Some(f) = usize::try_from(l).ok().and_then(|l| freq.get_mut(l)) {
                    *f += 1.0;
                }
            }
            let n = labels.len() as f64;
            Some(freq.iter().map(|f| (f / n) as f32).collect())
        }
        Target::Counts { values, dim } => {
            if *dim == 0 || values.len() < *dim {
                return None;
            }
            let mut sum = vec![0f64; *dim];
            for row in values.chunks_exact(*dim) {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += f64::from(*v);
                }
            }
            let n = (values.len() / dim) as f64;
            Some(sum.iter().map(|s| (s / n).max(0.0) as f32).collect())
        }
    }
}

/// Prefix of the flat features' one-hot area columns (`area_01` ..).
const AREA_COLUMN_PREFIX: &str = "area_";

/// The per-area target means of a counts dataset whose flat features carry
/// one-hot area columns (a contiguous run of columns named `area_*`, as the
/// data pipeline writes them); `None` otherwise or without samples. A
/// sample belongs to the area whose column is set (`> 0.5`); an area without
/// samples gets the overall mean.
fn area_prior(ds: &Dataset) -> Option<AreaPrior> {
    let Target::Counts { values, dim } = &ds.target else {
        return None;
    };
    let dim = *dim;
    let column = ds
        .feature_names
        .iter()
        .position(|n| n.starts_with(AREA_COLUMN_PREFIX))?;
    let areas = ds.feature_names[column..]
        .iter()
        .take_while(|n| n.starts_with(AREA_COLUMN_PREFIX))
        .count();
    let n = ds.len();
    if dim == 0 || n == 0 || values.len() != n * dim || ds.features.len() != n * ds.feature_dim {
        return None;
    }
    let overall = target_prior(&ds.target)?;
    let mut sums = vec![0f64; areas * dim];
    let mut rows = vec![0u64; areas];
    for (x, y) in ds
        .features
        .chunks_exact(ds.feature_dim)
        .zip(values.chunks_exact(dim))
    {
        let Some(a) = x[column..column + areas].iter().position(|&v| v > 0.5) else {
            continue;
        };
        rows[a] += 1;
        for (s, &v) in sums[a * dim..(a + 1) * dim].iter_mut().zip(y) {
            *s += f64::from(v);
        }
    }
    let means = (0..areas)
        .flat_map(|a| {
            let (sums, rows, overall) = (&sums, rows[a], &overall);
            (0..dim).map(move |c| {
                if rows == 0 {
                    overall[c]
                } else {
                    (sums[a * dim + c] / rows as f64).max(0.0) as f32
                }
            })
        })
        .collect();
    Some(AreaPrior {
        column,
        areas,
        means,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_data::Sequences;

    fn counts_ds() -> Dataset {
        Dataset {
            task: Task::Counts,
            features: vec![0.0; 3 * 5],
            feature_dim: 5,
            feature_names: (0..5).map(|i| format!("f{i}")).collect(),
            sequences: Some(Sequences {
                data: vec![0.0; 3 * 4 * 2],
                steps: 4,
                step_dim: 2,
            }),
            target: Target::Counts {
                values: vec![1.0, 0.0, 3.0, 0.0, 2.0, 0.0],
                dim: 2,
            },
            area: vec![1, 2, 3],
            time: vec![0, 0, 0],
        }
    }

    #[test]
    fn for_dataset_takes_widths_defaults_and_prior() {
        let ds = counts_ds();
        let dnn = ModelConfig::for_dataset(ModelKind::Dnn, &ds);
        assert_eq!((dnn.input_dim, dnn.output_dim), (5, 2));
        assert_eq!((dnn.hidden, dnn.layers, dnn.dropout), (128, 3, 0.1));
        assert_eq!(dnn.target_prior, Some(vec![2.0, 0.0]));
        dnn.validate().unwrap();
        let lstm = ModelConfig::for_dataset(ModelKind::Lstm, &ds);
        assert_eq!(
            (lstm.seq_steps, lstm.seq_dim, lstm.hidden, lstm.layers),
            (4, 2, 128, 1)
        );
        lstm.validate().unwrap();
    }

    #[test]
    fn gat_tcn_config_gets_the_lapd_graph() {
        let ds = crate::model::graph_dataset(
            &vec![1.0; 21 * 12 * 8],
            21,
            12,
            8,
            0,
            0..12,
            &[1.0; 21 * 8],
            &crate::model::GraphWindows::default(),
        )
        .unwrap();
        let cfg = ModelConfig::for_dataset(ModelKind::GatTcn, &ds);
        cfg.validate().unwrap();
        assert_eq!(
            (cfg.areas, cfg.node_features(), cfg.node_outputs()),
            (21, 23, 8)
        );
        assert_eq!(
            (cfg.seq_steps, cfg.heads, cfg.hidden, cfg.layers),
            (8, 4, 64, 3)
        );
        assert_eq!(cfg.adjacency, fedcrime_data::areas::adjacency());
        assert!(cfg.adjacency.len() > 21);
        assert_eq!(cfg.target_prior.as_deref(), Some(&[1.0; 21 * 8][..]));
    }

    #[test]
    fn on_graph_keeps_the_weights_layout_and_takes_the_subgraph() {
        use crate::model::{build, graph_dataset, AreaGraph, GraphWindows};
        let w = GraphWindows::default();
        let full = graph_dataset(
            &vec![2.0; 21 * 12 * 8],
            21,
            12,
            8,
            0,
            0..12,
            &[2.0; 168],
            &w,
        )
        .unwrap();
        let mut global = ModelConfig::for_dataset(ModelKind::GatTcn, &full);
        global.hidden = 16;
        global.dropout = 0.0;
        let valley = AreaGraph::bureau(fedcrime_data::Bureau::Valley);
        let n = valley.len();
        let sub = graph_dataset(
            &vec![1.0; n * 12 * 8],
            n,
            12,
            8,
            0,
            0..12,
            &vec![1.0; n * 8],
            &w,
        )
        .unwrap();
        let local = global.on_graph(&valley, &sub).unwrap();
        assert_eq!(
            (local.areas, local.seq_dim, local.output_dim),
            (7, 7 * 23, 7 * 8)
        );
        assert_eq!(local.adjacency, valley.edges());
        assert_eq!((local.hidden, local.dropout), (16, 0.0));
        assert_eq!(local.target_prior.as_deref(), Some(&[1.0; 7 * 8][..]));
        let spec = |c: &ModelConfig| build(c, tch::Device::Cpu).unwrap().param_spec();
        assert_eq!(spec(&local), spec(&global));
        // Samples without the weekday do not fit the run's weights.
        let no_weekday = GraphWindows {
            weekday: false,
            ..w
        };
        let other = graph_dataset(
            &vec![1.0; n * 12 * 8],
            n,
            12,
            8,
            0,
            0..12,
            &vec![1.0; n * 8],
            &no_weekday,
        )
        .unwrap();
        let err = global.on_graph(&valley, &other).unwrap_err().to_string();
        assert!(err.contains("node features"), "{err}");
        let dnn = ModelConfig::for_dataset(ModelKind::Dnn, &counts_ds());
        assert!(dnn.on_graph(&valley, &sub).is_err());
    }

    #[test]
    fn risk_prior_is_class_frequency() {
        let t = Target::Classes {
            labels: vec![0, 1, 1, 4],
            num_classes: 5,
        };
        assert_eq!(target_prior(&t), Some(vec![0.25, 0.5, 0.0, 0.0, 0.25]));
    }

    #[test]
    fn validation_names_the_field() {
        let ds = counts_ds();
        let mut cfg = ModelConfig::for_dataset(ModelKind::Dnn, &ds);
        cfg.dropout = 1.0;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("dropout"), "{err}");

        let mut cfg = ModelConfig::for_dataset(ModelKind::Lstm, &ds);
        cfg.seq_steps = 0;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("seq_steps"));

        let mut cfg = ModelConfig::for_dataset(ModelKind::Dnn, &ds);
        cfg.class_weights = Some(vec![1.0, 1.0]);
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("class_weights"));

        let mut cfg = ModelConfig::new(ModelKind::GatTcn, Task::Counts, 0, 21 * 8);
        cfg.seq_steps = 8;
        cfg.seq_dim = 21 * 15;
        assert!(cfg.validate().unwrap_err().to_string().contains("levels"));
        cfg.seq_dim = 21 * 16;
        cfg.adjacency = vec![(0, 1), (3, 21)];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("adjacency[1]") && err.contains("(3, 21)"),
            "{err}"
        );
        cfg.adjacency.pop();
        cfg.validate().unwrap();
        cfg.heads = 3;
        assert!(cfg.validate().unwrap_err().to_string().contains("heads"));
        cfg.heads = 4;
        cfg.task = Task::Risk;
        assert!(cfg.validate().unwrap_err().to_string().contains("task"));
    }

    #[test]
    fn json_round_trip_and_unknown_fields_rejected() {
        let cfg = ModelConfig::for_dataset(ModelKind::Lstm, &counts_ds());
        let back = ModelConfig::from_json(&cfg.to_json()).unwrap();
        assert_eq!(back, cfg);
        let typo = cfg.to_json().replace("\"hidden\"", "\"hiden\"");
        let err = ModelConfig::from_json(&typo).unwrap_err().to_string();
        assert!(err.contains("hiden"), "{err}");
    }

    #[test]
    fn count_loss_parses() {
        assert_eq!("mse".parse::<CountLoss>(), Ok(CountLoss::Mse));
        assert_eq!("poisson".parse::<CountLoss>(), Ok(CountLoss::Poisson));
        assert!("l1".parse::<CountLoss>().is_err());
    }
}
