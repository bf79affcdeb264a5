//! Explaining a trained [`CrimeModel`]: what is explained, over which inputs,
//! grouped how, by which method, and the per-row values summarized.
//!
//! - **Inputs.** One flat row per sample: the flat features, then the
//!   sequence view (`steps x step_dim`, oldest step first), so every model
//!   (dnn, lstm, gat-tcn) is a function of one vector ([`Inputs`]).
//! - **Outputs.** What a user reads: class probabilities for risk (softmax
//!   of the logits), expected counts per category for counts (per area and
//!   category for gat-tcn) ([`explained_outputs`], [`output_names`]).
//! - **Groups.** Inputs that come from one source column enter and leave a
//!   coalition together ([`feature_groups`]): the sine and cosine of the
//!   hour with the hour, the 21 one-hot area columns as "area", the crime
//!   mix of the previous period, and every input that holds the counts of
//!   one past period (flat lags and the sequence step) as "counts k periods
//!   ago".
//! - **Methods** ([`Method`]): exact Shapley values and KernelSHAP over the
//!   groups (model-agnostic, interventional over a background sample), and
//!   the gradient methods on the device: Integrated Gradients against the
//!   background mean and GradientSHAP (expected gradients over the
//!   background). Gradient attributions of a group are the sums over its
//!   columns.
//! - **Summary** ([`Summary`]): mean |value| and mean value per group and
//!   output, the base values and the additivity errors; summaries of
//!   disjoint row sets merge (what a station sends in a federation).

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{exact, kernel, Explanation, Problem, EXACT_MAX_GROUPS};
use crate::model::{Batch, CrimeModel, ModelKind};
use crate::train::TrainError;
use fedcrime_data::{Category, Dataset, Target, Task, AREAS};

fn config_error(field: &'static str, reason: String) -> TrainError {
    TrainError::Config { field, reason }
}

/// The flat input layout of a dataset: `feature_dim` flat features, then
/// `steps x step_dim` sequence values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// Flat feature columns.
    pub feature_dim: usize,
    /// Sequence steps (0: no sequence view).
    pub steps: usize,
    /// Values per sequence step.
    pub step_dim: usize,
}

impl Inputs {
    /// The layout of `ds`.
    pub fn of(ds: &Dataset) -> Self {
        let (steps, step_dim) = ds
            .sequences
            .as_ref()
            .map_or((0, 0), |s| (s.steps, s.step_dim));
        Inputs {
            feature_dim: ds.feature_dim,
            steps,
            step_dim,
        }
    }

    /// Values per flat row.
    pub fn dim(&self) -> usize {
        self.feature_dim + self.steps * self.step_dim
    }

    /// The flat rows of samples `indices` of `ds`, row-major.
    pub fn rows(&self, ds: &Dataset, indices: &[usize]) -> Vec<f32> {
        let seq_len = self.steps * self.step_dim;
        let mut out = Vec::with_capacity(indices.len() * self.dim());
        for &i in indices {
            out.extend_from_slice(&ds.features[i * self.feature_dim..(i + 1) * self.feature_dim]);
            if let Some(s) = &ds.sequences {
                out.extend_from_slice(&s.data[i * seq_len..(i + 1) * seq_len]);
            }
        }
        out
    }

    /// A batch over flat rows `x` (`[n, dim]`, any device; gradients flow
    /// back to `x`), with a placeholder target (no loss is computed).
    pub fn batch(&self, x: &Tensor) -> Batch {
        let n = x.size()[0];
        let features = x.narrow(1, 0, self.feature_dim as i64);
        let sequences = (self.steps > 0).then(|| {
            x.narrow(
                1,
                self.feature_dim as i64,
                (self.steps * self.step_dim) as i64,
            )
            .reshape([n, self.steps as i64, self.step_dim as i64])
        });
        Batch {
            features,
            sequences,
            target: Tensor::zeros([n], (Kind::Int64, x.device())),
        }
    }
}

/// What is explained, from the model's output: class probabilities for
/// risk, expected counts for counts (differentiable).
pub fn explained_outputs(model: &dyn CrimeModel, output: &Tensor) -> Tensor {
    match model.task() {
        Task::Risk => output.softmax(-1, Kind::Float),
        Task::Counts => model.predict(output),
    }
}

/// The names of the explained outputs of `model` on data like `ds`:
/// `level 1..K` for risk, category names for counts, `area_XX.category`
/// for gat-tcn.
pub fn output_names(model: &dyn CrimeModel, ds: &Dataset) -> Vec<String> {
    match &ds.target {
        Target::Classes { num_classes, .. } => {
            (1..=*num_classes).map(|k| format!("level {k}")).collect()
        }
        Target::Counts { dim, .. } => {
            let cats = Category::ALL.map(Category::name);
            let areas = if model.kind() == ModelKind::GatTcn {
                model.config().areas.max(1)
            } else {
                1
            };
            (0..*dim)
                .map(|o| {
                    let (a, c) = (o / (dim / areas).max(1), o % (dim / areas).max(1));
                    let cat = if dim / areas == cats.len() {
                        cats[c].to_string()
                    } else {
                        format!("output {c}")
                    };
                    if areas == 1 {
                        cat
                    } else {
                        match AREAS.get(a) {
                            Some(info) if areas == AREAS.len() => {
                                format!("area_{:02}.{cat}", info.code)
                            }
                            _ => format!("node_{a}.{cat}"),
                        }
                    }
                })
                .collect()
        }
    }
}

/// A set of input columns explained as one source feature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureGroup {
    /// The human name ("hour", "area", "counts 1 period ago", ...).
    pub name: String,
    /// Its columns of the flat row ([`Inputs`]).
    pub columns: Vec<usize>,
}

/// "k periods ago" with the task's unit.
fn ago(k: usize, unit: &str) -> String {
    if k == 1 {
        format!("counts 1 {unit} ago")
    } else {
        format!("counts {k} {unit}s ago")
    }
}

/// The source feature a flat column comes from (see the module doc).
fn source_of(name: &str, unit: &str) -> String {
    let base = name.split('.').next().unwrap_or(name);
    match base {
        "weekday" | "sin_weekday" | "cos_weekday" => "weekday".into(),
        "hour" | "sin_hour" | "cos_hour" => "hour".into(),
        "day_of_year" | "sin_day_of_year" | "cos_day_of_year" => "day of year".into(),
        "lat" => "latitude".into(),
        "lon" => "longitude".into(),
        "density" => "crime density".into(),
        "mix_prev_day" => "crime mix, previous day".into(),
        "mix_prev" => format!("crime mix, previous {unit}"),
        "mean_7d" => "mean count, previous 7 days".into(),
        "same_block_mean_7d" => "same block, mean of 7 days".into(),
        _ if base.starts_with("area_") => "area".into(),
        _ if base.starts_with("mean") && base[4..].parse::<usize>().is_ok() => {
            format!("mean counts, previous {} {unit}s", &base[4..])
        }
        _ if base.starts_with("lag") && base[3..].parse::<usize>().is_ok() => {
            ago(base[3..].parse().unwrap_or(0), unit)
        }
        _ => name.to_string(),
    }
}

/// The feature groups of `model`'s inputs on data like `ds`, in order of
/// first column (see the module doc). Flat lags and the sequence step of
/// the same period form one group.
pub fn feature_groups(model: &dyn CrimeModel, ds: &Dataset) -> Vec<FeatureGroup> {
    let inputs = Inputs::of(ds);
    let unit = match (ds.task, model.kind()) {
        (Task::Risk, _) => "block",
        _ => "period",
    };
    let mut groups: Vec<FeatureGroup> = Vec::new();
    let mut add = |name: String, col: usize| match groups.iter_mut().find(|g| g.name == name) {
        Some(g) => g.columns.push(col),
        None => groups.push(FeatureGroup {
            name,
            columns: vec![col],
        }),
    };
    for (c, name) in ds.feature_names.iter().enumerate().take(inputs.feature_dim) {
        add(source_of(name, unit), c);
    }
    let graph = model.kind() == ModelKind::GatTcn;
    let areas = model.config().areas.max(1);
    let cats = ds.target.output_dim() / if graph { areas } else { 1 };
    for s in 0..inputs.steps {
        let k = inputs.steps - s;
        for j in 0..inputs.step_dim {
            let col = inputs.feature_dim + s * inputs.step_dim + j;
            // Graph node features: counts per category, levels per
            // category, then a one-hot weekday (see `graph_dataset`).
            let name = if graph && inputs.step_dim.is_multiple_of(areas) {
                let f = j % (inputs.step_dim / areas);
                if f < cats {
                    ago(k, unit)
                } else if f < 2 * cats {
                    "area level (training mean)".into()
                } else {
                    "weekday".into()
                }
            } else {
                ago(k, unit)
            };
            add(name, col);
        }
    }
    groups
}

/// A batch predictor over flat rows for the model-agnostic explainers: the
/// explained outputs, `chunk` rows per forward pass, without gradients.
pub fn predictor<'a>(
    model: &'a dyn CrimeModel,
    inputs: Inputs,
    chunk: usize,
) -> impl FnMut(&[f32], usize) -> Result<Vec<f64>, TrainError> + 'a {
    let device = model.device();
    move |x: &[f32], rows: usize| {
        let dim = inputs.dim();
        if x.len() != rows * dim {
            return Err(TrainError::Length {
                what: "predictor rows (rows x input width)",
                expected: rows * dim,
                got: x.len(),
            });
        }
        let mut out = Vec::new();
        for part in x.chunks(chunk.max(1) * dim) {
            let n = part.len() / dim;
            let t = Tensor::from_slice(part)
                .reshape([n as i64, dim as i64])
                .to_device(device);
            let y = tch::no_grad(|| {
                let o = model.forward_t(&inputs.batch(&t), false);
                explained_outputs(model, &o)
                    .to_kind(Kind::Double)
                    .to_device(Device::Cpu)
                    .flatten(0, -1)
            });
            out.extend(Vec::<f64>::try_from(&y)?);
        }
        Ok(out)
    }
}

/// How an explanation is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Exact Shapley values over the groups (at most
    /// [`EXACT_MAX_GROUPS`] groups).
    Exact,
    /// KernelSHAP over the groups.
    Kernel,
    /// GradientSHAP: expected gradients over the background.
    Gradient,
    /// Integrated Gradients against the background's mean.
    IntegratedGradients,
}

impl Method {
    /// All methods, in the order of the docs.
    pub const ALL: [Method; 4] = [
        Method::Exact,
        Method::Kernel,
        Method::Gradient,
        Method::IntegratedGradients,
    ];

    /// The name on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Exact => "exact",
            Method::Kernel => "kernel",
            Method::Gradient => "gradient",
            Method::IntegratedGradients => "integrated-gradients",
        }
    }

    /// The method a user gets by default: exact Shapley values when the
    /// groups are few (cheaper than KernelSHAP's default sample), KernelSHAP
    /// otherwise.
    pub fn auto(groups: usize) -> Method {
        if groups <= AUTO_EXACT_GROUPS {
            Method::Exact
        } else {
            Method::Kernel
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == s || (s == "ig" && *m == Method::IntegratedGradients))
            .ok_or_else(|| {
                format!(
                    "unknown method {s:?} (expected {})",
                    Method::ALL.map(Method::as_str).join(", ")
                )
            })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Up to this many groups the default method is [`Method::Exact`]: `2^11`
/// coalitions cost about what KernelSHAP's default `2M + 2048` do.
pub const AUTO_EXACT_GROUPS: usize = 11;

/// KernelSHAP's default coalition count for `m` groups (the `shap`
/// package's `2M + 2048`), all of them when there are fewer.
pub fn default_kernel_samples(m: usize) -> usize {
    let all = if m < 63 {
        (1usize << m) - 2
    } else {
        usize::MAX
    };
    (2 * m + 2048).min(all)
}

/// `n` of `0..len` drawn without replacement (seeded), in increasing
/// order; all of them when `n >= len`.
pub fn pick_rows(len: usize, n: usize, seed: u64) -> Vec<usize> {
    use rand::SeedableRng;
    if n >= len {
        return (0..len).collect();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut idx = rand::seq::index::sample(&mut rng, len, n).into_vec();
    idx.sort_unstable();
    idx
}

/// The background: rows sampled from a reference split, or k-means
/// centroids weighted by their cluster sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct Background {
    /// Row-major rows.
    pub rows: Vec<f32>,
    /// One weight per row.
    pub weights: Vec<f64>,
}

impl Background {
    /// Up to `n` rows of `pool` (`dim` wide) drawn without replacement,
    /// seeded; all of them when the pool is small.
    pub fn sample(pool: &[f32], dim: usize, n: usize, seed: u64) -> Self {
        use rand::seq::index::sample;
        use rand::SeedableRng;
        let total = pool.len() / dim.max(1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut idx = sample(&mut rng, total, n.min(total)).into_vec();
        idx.sort_unstable();
        let rows = idx
            .iter()
            .flat_map(|&i| pool[i * dim..(i + 1) * dim].iter().copied())
            .collect();
        Background {
            weights: vec![1.0; idx.len()],
            rows,
        }
    }

    /// `k` centroids of `pool` by Lloyd's k-means (k-means++ start, seeded,
    /// at most 50 iterations), each weighted by its cluster's size (empty
    /// clusters dropped).
    pub fn kmeans(pool: &[f32], dim: usize, k: usize, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let n = pool.len() / dim.max(1);
        if n <= k {
            return Background::sample(pool, dim, n, seed);
        }
        let row = |i: usize| &pool[i * dim..(i + 1) * dim];
        let dist = |a: &[f32], b: &[f32]| -> f64 {
            a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut centers: Vec<Vec<f32>> = vec![row(rng.random_range(0..n)).to_vec()];
        let mut d2: Vec<f64> = (0..n).map(|i| dist(row(i), &centers[0])).collect();
        while centers.len() < k {
            let total: f64 = d2.iter().sum();
            let pick = if total > 0.0 {
                let mut r = rng.random::<f64>() * total;
                d2.iter()
                    .position(|&d| {
                        r -= d;
                        r < 0.0
                    })
                    .unwrap_or(n - 1)
            } else {
                rng.random_range(0..n)
            };
            centers.push(row(pick).to_vec());
            let c = centers.last().cloned().unwrap_or_default();
            for (i, d) in d2.iter_mut().enumerate() {
                *d = d.min(dist(row(i), &c));
            }
        }
        let mut assign = vec![0usize; n];
        for _ in 0..50 {
            let mut moved = false;
            for (i, a) in assign.iter_mut().enumerate() {
                let best = centers
                    .iter()
                    .map(|c| dist(row(i), c))
                    .enumerate()
                    .min_by(|x, y| x.1.total_cmp(&y.1))
                    .map_or(0, |(k, _)| k);
                moved |= best != *a;
                *a = best;
            }
            let mut sums = vec![vec![0f64; dim]; centers.len()];
            let mut counts = vec![0usize; centers.len()];
            for (i, &a) in assign.iter().enumerate() {
                counts[a] += 1;
                for (s, v) in sums[a].iter_mut().zip(row(i)) {
                    *s += f64::from(*v);
                }
            }
            for ((c, s), &m) in centers.iter_mut().zip(&sums).zip(&counts) {
                if m > 0 {
                    for (cv, sv) in c.iter_mut().zip(s) {
                        *cv = (sv / m as f64) as f32;
                    }
                }
            }
            if !moved {
                break;
            }
        }
        let mut counts = vec![0usize; centers.len()];
        for &a in &assign {
            counts[a] += 1;
        }
        let (mut rows, mut weights) = (Vec::new(), Vec::new());
        for (c, m) in centers.into_iter().zip(counts) {
            if m > 0 {
                rows.extend(c);
                weights.push(m as f64);
            }
        }
        Background { rows, weights }
    }

    /// Rows in the background.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The weighted mean row.
    pub fn mean(&self, dim: usize) -> Vec<f32> {
        let total: f64 = self.weights.iter().sum();
        let mut m = vec![0f64; dim];
        for (r, w) in self.rows.chunks(dim).zip(&self.weights) {
            for (a, v) in m.iter_mut().zip(r) {
                *a += w * f64::from(*v);
            }
        }
        m.into_iter()
            .map(|v| (v / total.max(1e-300)) as f32)
            .collect()
    }
}

/// How to explain.
#[derive(Clone, Debug, PartialEq)]
pub struct ExplainConfig {
    /// The method; `None`: [`Method::auto`].
    pub method: Option<Method>,
    /// Coalitions (kernel), path points (integrated gradients) or draws
    /// per row (gradient); `None`: the method's default
    /// ([`default_kernel_samples`], 50 points, 200 draws).
    pub samples: Option<usize>,
    /// Seed of KernelSHAP's coalitions and GradientSHAP's draws.
    pub seed: u64,
    /// Rows per forward pass.
    pub chunk: usize,
}

impl Default for ExplainConfig {
    fn default() -> Self {
        ExplainConfig {
            method: None,
            samples: None,
            seed: 0,
            chunk: 8192,
        }
    }
}

/// Per-row explanations of some rows, with what they are over.
#[derive(Clone, Debug)]
pub struct Explained {
    /// The method used.
    pub method: Method,
    /// Its sample count (coalitions, path points, draws; 0 for exact).
    pub samples: usize,
    /// The groups' names.
    pub groups: Vec<String>,
    /// The outputs' names.
    pub outputs: Vec<String>,
    /// One explanation per row, in the order given.
    pub rows: Vec<Explanation>,
}

/// Explains `x` (flat rows, see [`Inputs`]) of `model` over `groups`
/// against `background`, calling `progress` after each row (or chunk of
/// rows for the gradient methods) with the rows done.
#[allow(clippy::too_many_arguments)]
pub fn explain_rows(
    model: &dyn CrimeModel,
    inputs: Inputs,
    groups: &[FeatureGroup],
    outputs: Vec<String>,
    x: &[f32],
    background: &Background,
    cfg: &ExplainConfig,
    progress: &mut dyn FnMut(usize),
) -> Result<Explained, TrainError> {
    let dim = inputs.dim();
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(TrainError::Length {
            what: "explained rows (a whole number of input rows)",
            expected: dim,
            got: x.len(),
        });
    }
    if background.is_empty() {
        return Err(config_error("background", "needs at least one row".into()));
    }
    let cols: Vec<Vec<usize>> = groups.iter().map(|g| g.columns.clone()).collect();
    let method = cfg.method.unwrap_or_else(|| Method::auto(groups.len()));
    let problem = Problem {
        dim,
        outputs: outputs.len(),
        groups: &cols,
        background: &background.rows,
        weights: Some(&background.weights),
    };
    let n = x.len() / dim;
    let mut rows = Vec::with_capacity(n);
    let samples = match method {
        Method::Exact => 0,
        Method::Kernel => cfg
            .samples
            .unwrap_or_else(|| default_kernel_samples(groups.len())),
        Method::IntegratedGradients => cfg.samples.unwrap_or(50),
        Method::Gradient => cfg.samples.unwrap_or(200),
    };
    match method {
        Method::Exact | Method::Kernel => {
            if method == Method::Exact && groups.len() > EXACT_MAX_GROUPS {
                return Err(config_error(
                    "method",
                    format!(
                        "exact enumerates 2^{} coalitions; at most {EXACT_MAX_GROUPS} groups: use kernel",
                        groups.len()
                    ),
                ));
            }
            let mut f = predictor(model, inputs, cfg.chunk);
            for (i, row) in x.chunks(dim).enumerate() {
                rows.push(match method {
                    Method::Exact => exact(&problem, &mut f, row)?,
                    _ => kernel(
                        &problem,
                        &mut f,
                        row,
                        samples,
                        cfg.seed.wrapping_add(i as u64),
                    )?,
                });
                progress(i + 1);
            }
        }
        Method::IntegratedGradients | Method::Gradient => {
            if samples == 0 {
                return Err(config_error("samples", "must be at least 1".into()));
            }
            let out_dim = outputs.len();
            let per_chunk = (cfg.chunk / samples).max(1);
            let mut done = 0;
            for part in x.chunks(per_chunk * dim) {
                let attr = gradient_attributions(
                    model,
                    inputs,
                    &cols,
                    out_dim,
                    part,
                    background,
                    method,
                    samples,
                    cfg.seed.wrapping_add(done as u64),
                )?;
                done += part.len() / dim;
                rows.extend(attr);
                progress(done);
            }
        }
    }
    Ok(Explained {
        method,
        samples,
        groups: groups.iter().map(|g| g.name.clone()).collect(),
        outputs,
        rows,
    })
}

/// Integrated Gradients (Sundararajan et al. 2017; `samples` midpoint
/// points on the straight path from the background's mean) or GradientSHAP
/// (expected gradients, Erion et al. 2021: `samples` draws of a background
/// row `b` and `alpha ~ U(0, 1)` per row, the gradient at `b + alpha (x -
/// b)` times `x - b`, averaged) of every explained output for the rows `x`,
/// summed per group. Base values: `f(mean)` for IG, the background's mean
/// output for GradientSHAP; both add up to `f(x)` only approximately (the
/// Riemann error of IG, the sampling error of GradientSHAP), which the
/// explanations' additivity error reports.
#[allow(clippy::too_many_arguments)]
fn gradient_attributions(
    model: &dyn CrimeModel,
    inputs: Inputs,
    groups: &[Vec<usize>],
    outputs: usize,
    x: &[f32],
    background: &Background,
    method: Method,
    samples: usize,
    seed: u64,
) -> Result<Vec<Explanation>, TrainError> {
    use rand::{Rng, SeedableRng};
    let device = model.device();
    // cuDNN's recurrent kernels have no backward pass in evaluation mode:
    // the LSTM's gradients on CUDA come from libtorch's native kernels.
    let _cudnn = CudnnOff::when(device.is_cuda() && model.kind() == ModelKind::Lstm);
    let dim = inputs.dim();
    let n = x.len() / dim;
    let nb = background.len();
    let xt = Tensor::from_slice(x)
        .reshape([n as i64, dim as i64])
        .to_device(device);
    let bg = Tensor::from_slice(&background.rows)
        .reshape([nb as i64, dim as i64])
        .to_device(device);
    let f = |t: &Tensor| explained_outputs(model, &model.forward_t(&inputs.batch(t), false));
    // Per path point: the start row (index into `starts`) and alpha.
    let (starts, alphas, base): (Tensor, Vec<f64>, Vec<f64>) = match method {
        Method::IntegratedGradients => {
            let mean = Tensor::from_slice(&background.mean(dim))
                .reshape([1, dim as i64])
                .to_device(device);
            let base = tch::no_grad(|| f(&mean))
                .to_kind(Kind::Double)
                .to_device(Device::Cpu);
            let alphas = (0..n * samples)
                .map(|i| ((i % samples) as f64 + 0.5) / samples as f64)
                .collect();
            (
                mean.expand([(n * samples) as i64, dim as i64], false)
                    .contiguous(),
                alphas,
                Vec::<f64>::try_from(base.flatten(0, -1))?,
            )
        }
        _ => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let total: f64 = background.weights.iter().sum();
            let pick = |rng: &mut rand_chacha::ChaCha8Rng| {
                let mut r = rng.random::<f64>() * total;
                background
                    .weights
                    .iter()
                    .position(|w| {
                        r -= w;
                        r < 0.0
                    })
                    .unwrap_or(nb - 1) as i64
            };
            let mut idx = Vec::with_capacity(n * samples);
            let mut alphas = Vec::with_capacity(n * samples);
            for _ in 0..n * samples {
                idx.push(pick(&mut rng));
                alphas.push(rng.random::<f64>());
            }
            let out = tch::no_grad(|| f(&bg))
                .to_kind(Kind::Double)
                .to_device(Device::Cpu);
            let w = Tensor::from_slice(&background.weights).unsqueeze(1) / total;
            let base = (out * w).sum_dim_intlist(0, false, Kind::Double);
            (
                bg.index_select(0, &Tensor::from_slice(&idx).to_device(device)),
                alphas,
                Vec::<f64>::try_from(base)?,
            )
        }
    };
    // Rows repeated `samples` times, row-major: point r*samples + k.
    let xs = xt.repeat_interleave_self_int(samples as i64, 0, None);
    let alpha = Tensor::from_slice(&alphas)
        .to_kind(Kind::Float)
        .to_device(device)
        .unsqueeze(1);
    let delta = &xs - &starts;
    let points = (&starts + &delta * &alpha).detach().set_requires_grad(true);
    let out = f(&points);
    let width = out.size().last().copied().unwrap_or(0) as usize;
    if width != outputs {
        return Err(TrainError::Length {
            what: "explained outputs of the model",
            expected: outputs,
            got: width,
        });
    }
    // Group membership as a [dim, groups] 0/1 matrix: column sums per group.
    let mut member = vec![0f32; dim * groups.len()];
    for (g, cols) in groups.iter().enumerate() {
        for &c in cols {
            member[c * groups.len() + g] = 1.0;
        }
    }
    let member = Tensor::from_slice(&member)
        .reshape([dim as i64, groups.len() as i64])
        .to_device(device);
    let mut per_output = Vec::with_capacity(outputs);
    for o in 0..outputs {
        let y = out.select(-1, o as i64).sum(Kind::Float);
        let grads = Tensor::run_backward(&[y], &[&points], o + 1 < outputs, false);
        let g = grads
            .into_iter()
            .next()
            .unwrap_or_else(|| points.zeros_like());
        // Attribution per point, averaged over each row's points, summed per group.
        let a = (g * &delta)
            .reshape([n as i64, samples as i64, dim as i64])
            .mean_dim(1, false, Kind::Float)
            .matmul(&member)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu);
        per_output.push(Vec::<f64>::try_from(a.flatten(0, -1))?);
    }
    let fx = tch::no_grad(|| f(&xt))
        .to_kind(Kind::Double)
        .to_device(Device::Cpu);
    let fx = Vec::<f64>::try_from(fx.flatten(0, -1))?;
    let m = groups.len();
    Ok((0..n)
        .map(|r| Explanation {
            values: (0..m)
                .map(|g| (0..outputs).map(|o| per_output[o][r * m + g]).collect())
                .collect(),
            base: base.clone(),
            output: fx[r * outputs..(r + 1) * outputs].to_vec(),
        })
        .collect())
}

/// The metric-name prefix of a [`Summary`] sent as metrics.
pub const METRIC_PREFIX: &str = "shap|";

/// Turns cuDNN off while it lives (when asked), restoring the user's
/// setting on drop.
struct CudnnOff(Option<bool>);

impl CudnnOff {
    fn when(off: bool) -> Self {
        if !off {
            return CudnnOff(None);
        }
        let before = tch::Cuda::user_enabled_cudnn();
        tch::Cuda::set_user_enabled_cudnn(false);
        CudnnOff(Some(before))
    }
}

impl Drop for CudnnOff {
    fn drop(&mut self) {
        if let Some(before) = self.0 {
            tch::Cuda::set_user_enabled_cudnn(before);
        }
    }
}

/// Per-group, per-output aggregates of explanations: what a report ranks
/// and what a station sends instead of its rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The groups' names.
    pub groups: Vec<String>,
    /// The outputs' names.
    pub outputs: Vec<String>,
    /// Rows summarized.
    pub rows: usize,
    /// `mean_abs[g][o]`: the mean |value| of group `g` for output `o`.
    pub mean_abs: Vec<Vec<f64>>,
    /// `mean[g][o]`: the mean (signed) value.
    pub mean: Vec<Vec<f64>>,
    /// The mean base value per output.
    pub base: Vec<f64>,
    /// The largest additivity error of any row.
    pub max_additivity_error: f64,
    /// The mean additivity error.
    pub mean_additivity_error: f64,
}

impl Summary {
    /// Summarizes `e`.
    pub fn of(e: &Explained) -> Summary {
        let (m, o) = (e.groups.len(), e.outputs.len());
        let n = e.rows.len().max(1) as f64;
        let mut mean_abs = vec![vec![0.0; o]; m];
        let mut mean = vec![vec![0.0; o]; m];
        let mut base = vec![0.0; o];
        let (mut max_err, mut sum_err) = (0.0f64, 0.0);
        for r in &e.rows {
            for g in 0..m {
                for k in 0..o {
                    mean_abs[g][k] += r.values[g][k].abs() / n;
                    mean[g][k] += r.values[g][k] / n;
                }
            }
            for (b, v) in base.iter_mut().zip(&r.base) {
                *b += v / n;
            }
            let err = r.additivity_error();
            max_err = max_err.max(err);
            sum_err += err;
        }
        Summary {
            groups: e.groups.clone(),
            outputs: e.outputs.clone(),
            rows: e.rows.len(),
            mean_abs,
            mean,
            base,
            max_additivity_error: max_err,
            mean_additivity_error: sum_err / n,
        }
    }

    /// The row-weighted merge of summaries over the same groups and outputs
    /// (stations' summaries into the federation's); `None` when `parts` is
    /// empty or they disagree on the groups or outputs.
    pub fn merge(parts: &[Summary]) -> Option<Summary> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.groups != first.groups || p.outputs != first.outputs)
        {
            return None;
        }
        let total: usize = parts.iter().map(|p| p.rows).sum();
        let w = |p: &Summary| p.rows as f64 / total.max(1) as f64;
        let blend = |get: &dyn Fn(&Summary) -> &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            let mut out = vec![vec![0.0; first.outputs.len()]; first.groups.len()];
            for p in parts {
                for (a, b) in out.iter_mut().zip(get(p)) {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += w(p) * y;
                    }
                }
            }
            out
        };
        let mut base = vec![0.0; first.outputs.len()];
        for p in parts {
            for (a, b) in base.iter_mut().zip(&p.base) {
                *a += w(p) * b;
            }
        }
        Some(Summary {
            groups: first.groups.clone(),
            outputs: first.outputs.clone(),
            rows: total,
            mean_abs: blend(&|p| &p.mean_abs),
            mean: blend(&|p| &p.mean),
            base,
            max_additivity_error: parts
                .iter()
                .map(|p| p.max_additivity_error)
                .fold(0.0, f64::max),
            mean_additivity_error: parts.iter().map(|p| w(p) * p.mean_additivity_error).sum(),
        })
    }

    /// Outputs with the same `label` averaged into one (e.g. gat-tcn's
    /// `area_XX.violent` into `violent`), in order of first appearance.
    pub fn fold(&self, label: impl Fn(&str) -> String) -> Summary {
        let mut names: Vec<String> = Vec::new();
        let mut of = Vec::with_capacity(self.outputs.len());
        for o in &self.outputs {
            let l = label(o);
            let k = names.iter().position(|n| *n == l).unwrap_or_else(|| {
                names.push(l);
                names.len() - 1
            });
            of.push(k);
        }
        let mut counts = vec![0usize; names.len()];
        for &k in &of {
            counts[k] += 1;
        }
        let fold = |v: &[f64]| -> Vec<f64> {
            let mut out = vec![0.0; names.len()];
            for (x, &k) in v.iter().zip(&of) {
                out[k] += x / counts[k] as f64;
            }
            out
        };
        Summary {
            groups: self.groups.clone(),
            outputs: names.clone(),
            rows: self.rows,
            mean_abs: self.mean_abs.iter().map(|v| fold(v)).collect(),
            mean: self.mean.iter().map(|v| fold(v)).collect(),
            base: fold(&self.base),
            max_additivity_error: self.max_additivity_error,
            mean_additivity_error: self.mean_additivity_error,
        }
    }

    /// The summary as named numbers, what a station sends instead of its
    /// rows (in an evaluation reply's metrics): `shap|rows`, the additivity
    /// errors, and `shap|<output>|<group>` = mean |value| per group and
    /// output (the signed means and base values stay home).
    pub fn to_metrics(&self) -> Vec<(String, f64)> {
        let mut m = vec![
            (format!("{METRIC_PREFIX}rows"), self.rows as f64),
            (
                format!("{METRIC_PREFIX}max_additivity_error"),
                self.max_additivity_error,
            ),
            (
                format!("{METRIC_PREFIX}mean_additivity_error"),
                self.mean_additivity_error,
            ),
        ];
        for (g, name) in self.groups.iter().enumerate() {
            for (o, out) in self.outputs.iter().enumerate() {
                m.push((format!("{METRIC_PREFIX}{out}|{name}"), self.mean_abs[g][o]));
            }
        }
        m
    }

    /// Reads back [`Summary::to_metrics`] from `metrics` (other keys are
    /// ignored); `None` when they hold no summary. Groups and outputs come
    /// back in sorted order; signed means and base values as 0.
    pub fn from_metrics<'a>(
        metrics: impl IntoIterator<Item = (&'a String, &'a f64)>,
    ) -> Option<Summary> {
        use std::collections::BTreeMap;
        let mut rows = None;
        let (mut max_err, mut mean_err) = (0.0, 0.0);
        let mut cells: BTreeMap<(String, String), f64> = BTreeMap::new();
        for (k, &v) in metrics {
            let Some(rest) = k.strip_prefix(METRIC_PREFIX) else {
                continue;
            };
            match rest {
                "rows" => rows = Some(v.max(0.0) as usize),
                "max_additivity_error" => max_err = v,
                "mean_additivity_error" => mean_err = v,
                _ => {
                    if let Some((out, group)) = rest.split_once('|') {
                        cells.insert((group.to_string(), out.to_string()), v);
                    }
                }
            }
        }
        let rows = rows?;
        let mut groups: Vec<String> = cells.keys().map(|k| k.0.clone()).collect();
        groups.dedup();
        let mut outputs: Vec<String> = cells.keys().map(|k| k.1.clone()).collect();
        outputs.sort();
        outputs.dedup();
        if groups.is_empty() {
            return None;
        }
        let mean_abs: Vec<Vec<f64>> = groups
            .iter()
            .map(|g| {
                outputs
                    .iter()
                    .map(|o| cells.get(&(g.clone(), o.clone())).copied().unwrap_or(0.0))
                    .collect()
            })
            .collect();
        Some(Summary {
            mean: vec![vec![0.0; outputs.len()]; groups.len()],
            base: vec![0.0; outputs.len()],
            groups,
            outputs,
            rows,
            mean_abs,
            max_additivity_error: max_err,
            mean_additivity_error: mean_err,
        })
    }

    /// The groups ranked by mean |value| over all outputs (the average of
    /// the per-output means), largest first.
    pub fn ranking(&self) -> Vec<(String, f64)> {
        let o = self.outputs.len().max(1) as f64;
        let mut r: Vec<(String, f64)> = self
            .groups
            .iter()
            .zip(&self.mean_abs)
            .map(|(g, v)| (g.clone(), v.iter().sum::<f64>() / o))
            .collect();
        r.sort_by(|a, b| b.1.total_cmp(&a.1));
        r
    }

    /// The groups ranked for output `o`, largest mean |value| first.
    pub fn ranking_for(&self, o: usize) -> Vec<(String, f64)> {
        let mut r: Vec<(String, f64)> = self
            .groups
            .iter()
            .zip(&self.mean_abs)
            .map(|(g, v)| (g.clone(), v.get(o).copied().unwrap_or(0.0)))
            .collect();
        r.sort_by(|a, b| b.1.total_cmp(&a.1));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{build, CountLoss, ModelConfig};
    use crate::train::test_data;
    use fedcrime_data::tasks::{build_task, TaskConfig};

    fn singletons(n: usize) -> Vec<FeatureGroup> {
        (0..n)
            .map(|i| FeatureGroup {
                name: format!("x{i}"),
                columns: vec![i],
            })
            .collect()
    }

    fn all_rows(ds: &Dataset) -> Vec<f32> {
        Inputs::of(ds).rows(ds, &(0..ds.len()).collect::<Vec<_>>())
    }

    fn run(
        m: &dyn CrimeModel,
        ds: &Dataset,
        groups: &[FeatureGroup],
        x: &[f32],
        bg: &Background,
        method: Method,
        samples: Option<usize>,
    ) -> Explained {
        let cfg = ExplainConfig {
            method: Some(method),
            samples,
            ..ExplainConfig::default()
        };
        let outputs = output_names(m, ds);
        explain_rows(m, Inputs::of(ds), groups, outputs, x, bg, &cfg, &mut |_| {}).unwrap()
    }

    /// A counts dnn made linear: MSE counts (`max(out, 0)`), the MLP
    /// silenced, the head's bias large enough that nothing clamps:
    /// `y = b + x W^T`; returns the model and `W` `[outputs, dim]`.
    fn linear_dnn(ds: &Dataset) -> (Box<dyn CrimeModel>, Vec<Vec<f64>>) {
        let mut cfg = ModelConfig::for_dataset(ModelKind::Dnn, ds);
        cfg.hidden = 4;
        cfg.count_loss = CountLoss::Mse;
        tch::manual_seed(3);
        let mut m = build(&cfg, Device::Cpu).unwrap();
        let mut w = None;
        tch::no_grad(|| {
            for (name, mut v) in m.var_store_mut().variables() {
                if name == "area.weight" {
                    v.copy_(&(v.rand_like() - 0.5));
                    w = Some(v.copy());
                } else if name == "head.bias" {
                    let _ = v.fill_(100.0);
                } else if name.starts_with("hidden") || name == "head.weight" {
                    let _ = v.zero_();
                }
            }
        });
        let w = w.expect("a counts dnn has the direct path");
        let rows = w.size()[0];
        let w = (0..rows)
            .map(|o| Vec::<f64>::try_from(w.get(o).to_kind(Kind::Double)).unwrap())
            .collect();
        (m, w)
    }

    #[test]
    fn every_method_gives_a_linear_model_w_times_distance_from_the_background() {
        crate::model::test_util::one_thread();
        let ds = test_data::counts(12, 2, 2, 4);
        let (m, w) = linear_dnn(&ds);
        let inputs = Inputs::of(&ds);
        let dim = inputs.dim();
        let rows = all_rows(&ds);
        let bg = Background::sample(&rows[4 * dim..], dim, 8, 1);
        let x = &rows[..3 * dim];
        let mean = bg.mean(dim);
        let groups = singletons(dim);
        // The dnn reads the flat features (the first half); the sequence
        // copy is ignored and gets exactly nothing from the exact methods.
        for (method, tol) in [
            (Method::Kernel, 1e-5),
            (Method::IntegratedGradients, 1e-4),
            (Method::Gradient, 1e-4),
        ] {
            let e = run(m.as_ref(), &ds, &groups, x, &bg, method, Some(64));
            for (r, ex) in e.rows.iter().enumerate() {
                for j in 0..dim {
                    for (o, wo) in w.iter().enumerate() {
                        let want = if j < inputs.feature_dim {
                            wo[j] * f64::from(x[r * dim + j] - mean[j])
                        } else {
                            0.0
                        };
                        let got = ex.values[j][o];
                        // GradientSHAP's values of a linear model are
                        // w (x - mean of the drawn rows): exact only in
                        // expectation over the draws.
                        let tol = if method == Method::Gradient {
                            0.2 * wo.get(j).map_or(0.0, |v| v.abs()) + 1e-4
                        } else {
                            tol
                        };
                        assert!(
                            (got - want).abs() < tol,
                            "{method} row {r} x{j} out {o}: {got} vs {want}"
                        );
                    }
                }
                if method != Method::Gradient {
                    assert!(
                        ex.additivity_error() < 1e-4,
                        "{method}: {}",
                        ex.additivity_error()
                    );
                }
            }
        }
    }

    #[test]
    fn exact_and_kernel_agree_and_add_up_on_the_deep_models() {
        crate::model::test_util::one_thread();
        let risk = test_data::risk(10, 5, 2);
        let counts = test_data::counts(10, 3, 2, 3);
        for (kind, ds) in [(ModelKind::Dnn, &risk), (ModelKind::Lstm, &counts)] {
            let m = test_data::model(kind, ds, 8, 0.0, 2);
            let inputs = Inputs::of(ds);
            let dim = inputs.dim();
            let rows = all_rows(ds);
            let bg = Background::sample(&rows[2 * dim..], dim, 6, 3);
            // Up to 6 groups: every column its own, or consecutive pairs.
            let groups: Vec<FeatureGroup> = (0..dim)
                .collect::<Vec<_>>()
                .chunks(dim.div_ceil(6))
                .enumerate()
                .map(|(g, c)| FeatureGroup {
                    name: format!("g{g}"),
                    columns: c.to_vec(),
                })
                .collect();
            let x = &rows[..2 * dim];
            let ex = run(m.as_ref(), ds, &groups, x, &bg, Method::Exact, None);
            let k = run(m.as_ref(), ds, &groups, x, &bg, Method::Kernel, None);
            for (a, b) in ex.rows.iter().zip(&k.rows) {
                assert!(
                    a.additivity_error() < 1e-4,
                    "{kind}: {}",
                    a.additivity_error()
                );
                assert!(
                    b.additivity_error() < 1e-4,
                    "{kind}: {}",
                    b.additivity_error()
                );
                for (va, vb) in a.values.iter().flatten().zip(b.values.iter().flatten()) {
                    assert!((va - vb).abs() < 1e-6, "{kind}: {va} vs {vb}");
                }
            }
            // Integrated Gradients add up to f(x) - f(mean) up to the
            // Riemann error.
            let ig = run(
                m.as_ref(),
                ds,
                &groups,
                x,
                &bg,
                Method::IntegratedGradients,
                Some(300),
            );
            for r in &ig.rows {
                assert!(
                    r.additivity_error() < 2e-3,
                    "{kind} ig: {}",
                    r.additivity_error()
                );
            }
            // Risk explains probabilities: the base values sum to one.
            if kind == ModelKind::Dnn {
                let s: f64 = ex.rows[0].base.iter().sum();
                assert!((s - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn gradient_methods_run_on_the_graph_model_and_name_its_outputs() {
        crate::model::test_util::one_thread();
        let incidents = fedcrime_data::synth::generate_incidents(3_000, 5);
        let task = build_task(&incidents, &TaskConfig::new(Task::Counts)).unwrap();
        let g = task.graph.expect("counts tasks carry a graph series");
        let splits = crate::model::graph_splits(
            &g,
            &crate::model::GraphWindows::for_period(fedcrime_data::tasks::Period::Day),
        )
        .unwrap();
        let ds = &splits.test;
        let mut cfg = ModelConfig::for_dataset(ModelKind::GatTcn, &splits.train);
        cfg.hidden = 8;
        tch::manual_seed(4);
        let m = build(&cfg, Device::Cpu).unwrap();
        let groups = feature_groups(m.as_ref(), ds);
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names.len(), 8 + 2, "{names:?}");
        assert_eq!(names[0], "counts 8 periods ago");
        assert!(names.contains(&"counts 1 period ago"));
        assert!(names.contains(&"area level (training mean)"));
        assert!(names.contains(&"weekday"));
        let outputs = output_names(m.as_ref(), ds);
        assert_eq!(outputs.len(), 21 * 8);
        assert_eq!(outputs[0], "area_01.violent");
        assert_eq!(outputs[8], "area_02.violent");
        let inputs = Inputs::of(ds);
        let rows = all_rows(&splits.train);
        let bg = Background::sample(&rows, inputs.dim(), 4, 0);
        let x = &all_rows(ds)[..inputs.dim()];
        let ig = run(
            m.as_ref(),
            ds,
            &groups,
            x,
            &bg,
            Method::IntegratedGradients,
            Some(64),
        );
        assert!(
            ig.rows[0].additivity_error() < 1e-2,
            "{}",
            ig.rows[0].additivity_error()
        );
        let s = Summary::of(&ig).fold(|o| o.split('.').nth(1).unwrap_or(o).to_string());
        assert_eq!(s.outputs.len(), 8);
    }

    #[test]
    fn groups_follow_the_source_columns() {
        crate::model::test_util::one_thread();
        let incidents = fedcrime_data::synth::generate_incidents(3_000, 5);
        let risk = build_task(&incidents, &TaskConfig::new(Task::Risk)).unwrap();
        let counts = build_task(&incidents, &TaskConfig::new(Task::Counts)).unwrap();
        let dnn = test_data::model(ModelKind::Dnn, &risk.splits.train, 4, 0.0, 1);
        let g = feature_groups(dnn.as_ref(), &risk.splits.train);
        let find = |g: &[FeatureGroup], n: &str| {
            g.iter()
                .find(|x| x.name == n)
                .unwrap_or_else(|| {
                    panic!(
                        "no group {n:?} in {:?}",
                        g.iter().map(|x| &x.name).collect::<Vec<_>>()
                    )
                })
                .columns
                .len()
        };
        assert_eq!(find(&g, "hour"), 3);
        assert_eq!(find(&g, "weekday"), 3);
        assert_eq!(find(&g, "area"), 21);
        assert_eq!(find(&g, "crime mix, previous day"), 8);
        // The flat lag and the sequence step of the same block: one group.
        assert_eq!(find(&g, "counts 1 block ago"), 1 + 8);
        assert_eq!(find(&g, "counts 42 blocks ago"), 1);
        let cover: usize = g.iter().map(|x| x.columns.len()).sum();
        assert_eq!(cover, Inputs::of(&risk.splits.train).dim());
        let lstm = test_data::model(ModelKind::Lstm, &counts.splits.train, 4, 0.0, 1);
        let g = feature_groups(lstm.as_ref(), &counts.splits.train);
        assert_eq!(find(&g, "counts 1 period ago"), 8 + 8);
        assert_eq!(find(&g, "counts 4 periods ago"), 8 + 8);
        assert_eq!(find(&g, "counts 7 periods ago"), 8);
        assert_eq!(find(&g, "mean counts, previous 7 periods"), 8);
        assert_eq!(
            output_names(lstm.as_ref(), &counts.splits.train)[3],
            "theft"
        );
    }

    #[test]
    fn summaries_merge_by_rows_and_rank() {
        let e = |v: f64, rows: usize| Explained {
            method: Method::Exact,
            samples: 0,
            groups: vec!["a".into(), "b".into()],
            outputs: vec!["y".into()],
            rows: (0..rows)
                .map(|_| Explanation {
                    values: vec![vec![v], vec![-1.0]],
                    base: vec![0.0],
                    output: vec![v - 1.0],
                })
                .collect(),
        };
        let (s1, s2) = (Summary::of(&e(3.0, 1)), Summary::of(&e(-0.5, 3)));
        let m = Summary::merge(&[s1.clone(), s2]).unwrap();
        assert_eq!(m.rows, 4);
        assert!((m.mean_abs[0][0] - (3.0 + 3.0 * 0.5) / 4.0).abs() < 1e-12);
        assert!((m.mean[0][0] - (3.0 - 1.5) / 4.0).abs() < 1e-12);
        assert_eq!(m.ranking()[0].0, "a");
        let mut other = s1.clone();
        other.groups[1] = "c".into();
        assert!(Summary::merge(&[s1.clone(), other]).is_none());
        // As metrics and back: the absolute means, rows and errors travel.
        let metrics: std::collections::BTreeMap<String, f64> = m
            .to_metrics()
            .into_iter()
            .chain([("loss".to_string(), 1.0)])
            .collect();
        let back = Summary::from_metrics(&metrics).unwrap();
        assert_eq!(back.groups, m.groups);
        assert_eq!(back.outputs, m.outputs);
        assert_eq!(back.mean_abs, m.mean_abs);
        assert_eq!(back.rows, 4);
        let none: std::collections::BTreeMap<String, f64> = [("loss".to_string(), 1.0)].into();
        assert!(Summary::from_metrics(&none).is_none());
    }

    #[test]
    fn rows_are_drawn_without_replacement_in_order() {
        let r = pick_rows(100, 10, 3);
        assert_eq!(r.len(), 10);
        assert!(r.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(r, pick_rows(100, 10, 3));
        assert_ne!(r, pick_rows(100, 10, 4));
        assert_eq!(pick_rows(5, 10, 3), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn kmeans_backgrounds_weigh_their_clusters() {
        // Two tight clusters of 3 and 1 rows.
        let pool = [0.0f32, 0.0, 0.1, 0.0, 0.0, 0.1, 10.0, 10.0];
        let bg = Background::kmeans(&pool, 2, 2, 0);
        let mut pairs: Vec<(f64, f32)> = bg
            .weights
            .iter()
            .zip(bg.rows.chunks(2))
            .map(|(w, r)| (*w, r[0]))
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(pairs[0], (1.0, 10.0));
        assert_eq!(pairs[1].0, 3.0);
        assert!((bg.mean(2)[0] - (0.1 + 10.0) / 4.0).abs() < 1e-5);
    }
}
