//! `gat-tcn`: graph attention over the areas per time step, then a temporal
//! convolutional network over time per area: `y = f_TCN(f_GAT(X), X)`.
//!
//! Input: the sequence view `[b, T, areas * F]` of a graph dataset (see
//! [`graph_dataset`](super::graph_dataset)), read as `[b, T, A, F]`.
//!
//! 1. **GAT**, the same layer at every time step: `Wh = W x` split into
//!    `heads` heads of `hidden / heads` values; per head
//!    `e_ij = LeakyReLU(a^T [W h_i || W h_j])` (computed as
//!    `a_dst . Wh_i + a_src . Wh_j`), plus `-inf` where `j` is not a
//!    neighbour of `i` (the graph has self loops), softmax over `j`, so every
//!    node's weights sum to 1 over its neighbours and are exactly 0
//!    elsewhere; `h'_i = ELU(sum_j alpha_ij Wh_j + bias)`, heads concatenated.
//! 2. **TCN**, per node over time, on `[h'_i || x_i]` (the spatial encoding
//!    next to the raw node features): `layers` residual blocks, block `l`
//!    with dilation `2^l`, each two causal dilated `Conv1d`s (kernel
//!    `tcn_kernel`, left zero padding only, so step `t` sees steps `<= t`)
//!    with ReLU and dropout, plus a 1x1 convolution on the skip path where
//!    the widths differ.
//! 3. **Head**: the last step's TCN output of each node through a linear map
//!    shared by all nodes plus a per-node bias (initialized from the target
//!    prior): every area's next-period category values `[b, A * C]`
//!    (log-rates for Poisson, counts for MSE).
//!
//! Parameter names: `gat.weight`, `gat.att_src`, `gat.att_dst`, `gat.bias`,
//! `tcn.{l}.conv1.{weight,bias}`, `tcn.{l}.conv2.*`, `tcn.{l}.downsample.*`,
//! `head.weight`, `head.node_bias`.

use tch::{nn, Device, Kind, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::layers::{prior_bias, task_loss, task_predict};
use super::{Batch, CrimeModel, ModelKind};
use fedcrime_data::Task;

fn uniform(bound: f64) -> nn::Init {
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A 1-D convolution initialized like PyTorch's `nn.Conv1d`.
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    fn new(vs: nn::Path, c_in: usize, c_out: usize, kernel: usize) -> Self {
        let init = uniform(1.0 / ((c_in * kernel) as f64).sqrt());
        Conv {
            weight: vs.var("weight", &[c_out as i64, c_in as i64, kernel as i64], init),
            bias: vs.var("bias", &[c_out as i64], init),
        }
    }

    /// Causal convolution of `x` `[n, c_in, T]` -> `[n, c_out, T]`: zero
    /// padding on the left only.
    fn causal(&self, x: &Tensor, dilation: i64) -> Tensor {
        let kernel = self.weight.size()[2];
        let pad = (kernel - 1) * dilation;
        let x = if pad > 0 {
            x.constant_pad_nd([pad, 0])
        } else {
            x.shallow_clone()
        };
        x.conv1d(&self.weight, Some(&self.bias), [1], [0], [dilation], 1)
    }
}

/// One residual TCN block.
#[derive(Debug)]
struct TemporalBlock {
    conv1: Conv,
    conv2: Conv,
    downsample: Option<Conv>,
    dilation: i64,
}

/// The multi-head graph attention layer.
#[derive(Debug)]
struct Gat {
    weight: Tensor,
    att_src: Tensor,
    att_dst: Tensor,
    bias: Tensor,
    /// `[A, A]`: 0 where `j` is a neighbour of `i` (or `i` itself), `-inf` elsewhere.
    mask: Tensor,
    heads: i64,
    head_dim: i64,
    slope: f64,
}

impl Gat {
    /// `x` `[b, T, A, F]` -> (`[b, T, A, heads * head_dim]`, attention
    /// `[b, T, heads, A, A]` before dropout).
    fn forward(&self, x: &Tensor, dropout: f64, train: bool) -> (Tensor, Tensor) {
        let size = x.size();
        let (b, t, a) = (size[0], size[1], size[2]);
        let (h, d) = (self.heads, self.head_dim);
        // [b, T, H, A, D]
        let wh = x
            .linear::<&Tensor>(&self.weight, None)
            .view([b, t, a, h, d])
            .permute([0, 1, 3, 2, 4]);
        let score_dst =
            (&wh * self.att_dst.view([1, 1, h, 1, d])).sum_dim_intlist(-1, false, Kind::Float);
        let score_src =
            (&wh * self.att_src.view([1, 1, h, 1, d])).sum_dim_intlist(-1, false, Kind::Float);
        // e[b, t, h, i, j] = a_dst . Wh_i + a_src . Wh_j
        let e = score_dst.unsqueeze(-1) + score_src.unsqueeze(-2);
        let e = e.maximum(&(&e * self.slope)) + &self.mask;
        let alpha = e.softmax(-1, Kind::Float);
        let weights = if dropout > 0.0 {
            alpha.dropout(dropout, train)
        } else {
            alpha.shallow_clone()
        };
        let out = weights
            .matmul(&wh)
            .permute([0, 1, 3, 2, 4])
            .reshape([b, t, a, h * d])
            + &self.bias;
        (out.elu(), alpha)
    }
}

/// Intermediate results of one forward pass, for tests and inspection.
#[derive(Debug)]
pub struct GatTcnTrace {
    /// Attention weights `[b, T, heads, A, A]`: row `i` holds how much node
    /// `i` takes from each node `j` (before attention dropout).
    pub attention: Tensor,
    /// The TCN output at every time step `[b, A, channels, T]`.
    pub temporal: Tensor,
    /// The model output `[b, A * C]`.
    pub output: Tensor,
}

/// The graph attention + temporal convolution model.
#[derive(Debug)]
pub struct GatTcn {
    cfg: ModelConfig,
    vs: nn::VarStore,
    gat: Gat,
    tcn: Vec<TemporalBlock>,
    head_weight: Tensor,
    node_bias: Tensor,
}

impl GatTcn {
    /// Builds the model described by `cfg` (a valid gat-tcn config) with
    /// freshly initialized parameters on `device`.
    pub fn new(cfg: &ModelConfig, device: Device) -> Result<Self> {
        if cfg.kind != ModelKind::GatTcn {
            return Err(ModelError::config(
                "kind",
                format!("{} config given to the gat-tcn builder", cfg.kind),
            ));
        }
        cfg.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (a, f, out) = (cfg.areas, cfg.node_features(), cfg.node_outputs());
        let (heads, hidden) = (cfg.heads, cfg.hidden);
        let head_dim = hidden / heads;

        let g = &root / "gat";
        // Glorot-uniform projections and attention vectors, as in the GAT paper.
        let weight = g.var(
            "weight",
            &[hidden as i64, f as i64],
            uniform((6.0 / (f + hidden) as f64).sqrt()),
        );
        let att_bound = (6.0 / (head_dim + 1) as f64).sqrt();
        let att_src = g.var(
            "att_src",
            &[heads as i64, head_dim as i64],
            uniform(att_bound),
        );
        let att_dst = g.var(
            "att_dst",
            &[heads as i64, head_dim as i64],
            uniform(att_bound),
        );
        let bias = g.zeros("bias", &[hidden as i64]);
        let mut mask = vec![f32::NEG_INFINITY; a * a];
        for i in 0..a {
            mask[i * a + i] = 0.0;
        }
        for &(i, j) in &cfg.adjacency {
            mask[i * a + j] = 0.0;
            mask[j * a + i] = 0.0;
        }
        let mask = Tensor::f_from_slice(&mask)?
            .f_view([a as i64, a as i64])?
            .f_to_device(device)?;
        let gat = Gat {
            weight,
            att_src,
            att_dst,
            bias,
            mask,
            heads: heads as i64,
            head_dim: head_dim as i64,
            slope: cfg.leaky_slope,
        };

        let t = &root / "tcn";
        let mut tcn = Vec::with_capacity(cfg.layers);
        let mut width = hidden + f;
        for l in 0..cfg.layers {
            let p = &t / l;
            tcn.push(TemporalBlock {
                conv1: Conv::new(&p / "conv1", width, hidden, cfg.tcn_kernel),
                conv2: Conv::new(&p / "conv2", hidden, hidden, cfg.tcn_kernel),
                downsample: (width != hidden)
                    .then(|| Conv::new(&p / "downsample", width, hidden, 1)),
                dilation: 1 << l,
            });
            width = hidden;
        }

        let h = &root / "head";
        let head_weight = h.var(
            "weight",
            &[out as i64, hidden as i64],
            uniform(1.0 / (hidden as f64).sqrt()),
        );
        let mut node_bias = h.zeros("node_bias", &[a as i64, out as i64]);
        if let Some(values) = prior_bias(cfg) {
            let src = Tensor::f_from_slice(&values)?
                .f_view([a as i64, out as i64])?
                .f_to_device(device)?;
            tch::no_grad(|| node_bias.f_copy_(&src))?;
        }
        Ok(GatTcn {
            cfg: cfg.clone(),
            vs,
            gat,
            tcn,
            head_weight,
            node_bias,
        })
    }

    /// The forward pass with its intermediate results.
    ///
    /// # Panics
    /// When the batch has no sequence view of width `areas * node features`.
    pub(crate) fn trace(&self, batch: &Batch, train: bool) -> GatTcnTrace {
        let seq = batch
            .sequences
            .as_ref()
            .unwrap_or_else(|| panic!("the gat-tcn model needs batches with a sequence view"));
        let size = seq.size();
        let (b, t) = (size[0], size[1]);
        let a = self.cfg.areas as i64;
        let f = self.cfg.node_features() as i64;
        let x = seq.reshape([b, t, a, f]);
        let (spatial, attention) = self.gat.forward(&x, self.cfg.dropout, train);
        // [b, T, A, hidden + F] -> [b * A, hidden + F, T]
        let z = Tensor::cat(&[&spatial, &x], -1);
        let channels = z.size()[3];
        let mut z = z.permute([0, 2, 3, 1]).reshape([b * a, channels, t]);
        for block in &self.tcn {
            let mut y = block.conv1.causal(&z, block.dilation).relu();
            if self.cfg.dropout > 0.0 {
                y = y.dropout(self.cfg.dropout, train);
            }
            y = block.conv2.causal(&y, block.dilation).relu();
            if self.cfg.dropout > 0.0 {
                y = y.dropout(self.cfg.dropout, train);
            }
            let skip = match &block.downsample {
                Some(conv) => conv.causal(&z, 1),
                None => z,
            };
            z = (y + skip).relu();
        }
        let hidden = self.cfg.hidden as i64;
        let last = z.select(2, t - 1).view([b, a, hidden]);
        let output = (last.linear::<&Tensor>(&self.head_weight, None) + &self.node_bias)
            .view([b, self.cfg.output_dim as i64]);
        GatTcnTrace {
            attention,
            temporal: z.view([b, a, hidden, t]),
            output,
        }
    }

    /// Attention weights `[b, T, heads, A, A]` for a batch (evaluation mode).
    pub fn attention(&self, batch: &Batch) -> Tensor {
        tch::no_grad(|| self.trace(batch, false).attention)
    }
}

impl CrimeModel for GatTcn {
    fn kind(&self) -> ModelKind {
        ModelKind::GatTcn
    }

    fn task(&self) -> Task {
        self.cfg.task
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward_t(&self, batch: &Batch, train: bool) -> Tensor {
        self.trace(batch, train).output
    }

    fn loss(&self, output: &Tensor, batch: &Batch) -> Tensor {
        task_loss(&self.cfg, None, output, batch)
    }

    fn predict(&self, output: &Tensor) -> Tensor {
        task_predict(&self.cfg, output)
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{one_thread, train_full_batch};
    use crate::model::{build, to_batch};
    use fedcrime_data::{Dataset, Sequences, Target};

    /// A small graph: 5 nodes on a path 0-1-2-3, node 4 isolated.
    fn small_cfg(steps: usize) -> ModelConfig {
        let mut cfg = ModelConfig::new(ModelKind::GatTcn, Task::Counts, 0, 5 * 2);
        cfg.areas = 5;
        cfg.seq_steps = steps;
        cfg.seq_dim = 5 * 3;
        cfg.hidden = 8;
        cfg.heads = 2;
        cfg.adjacency = vec![(0, 1), (1, 2), (2, 3)];
        cfg.dropout = 0.0;
        cfg
    }

    fn random_batch(b: i64, steps: usize) -> Batch {
        Batch {
            features: Tensor::zeros([b, 0], (Kind::Float, Device::Cpu)),
            sequences: Some(Tensor::rand(
                [b, steps as i64, 15],
                (Kind::Float, Device::Cpu),
            )),
            target: Tensor::zeros([b, 10], (Kind::Float, Device::Cpu)),
        }
    }

    #[test]
    fn attention_is_a_distribution_over_neighbours() {
        one_thread();
        tch::manual_seed(1);
        let model = GatTcn::new(&small_cfg(6), Device::Cpu).unwrap();
        let alpha = model.attention(&random_batch(3, 6));
        assert_eq!(alpha.size(), [3, 6, 2, 5, 5]);
        let sums = alpha.sum_dim_intlist(-1, false, Kind::Float);
        assert!(sums.allclose(&sums.ones_like(), 1e-6, 1e-6, false));
        let neighbours: [&[usize]; 5] = [&[0, 1], &[0, 1, 2], &[1, 2, 3], &[2, 3], &[4]];
        let flat = Vec::<f32>::try_from(alpha.reshape([-1, 5, 5]).reshape([-1])).unwrap();
        for (k, w) in flat.iter().enumerate() {
            let (i, j) = ((k / 5) % 5, k % 5);
            if neighbours[i].contains(&j) {
                assert!(*w > 0.0, "node {i} ignores neighbour {j}");
            } else {
                assert_eq!(*w, 0.0, "node {i} attends to non-neighbour {j}");
            }
        }
        // The isolated node only attends to itself.
        let own = alpha.select(-2, 4).select(-1, 4);
        assert!(own.allclose(&own.ones_like(), 0.0, 0.0, false));
    }

    #[test]
    fn changing_step_t_leaves_earlier_outputs_alone() {
        one_thread();
        tch::manual_seed(2);
        let steps = 7;
        let mut cfg = small_cfg(steps);
        cfg.tcn_kernel = 3;
        let model = GatTcn::new(&cfg, Device::Cpu).unwrap();
        let batch = random_batch(2, steps);
        let base = tch::no_grad(|| model.trace(&batch, false).temporal);
        for t in 0..steps as i64 {
            let seq = batch.sequences.as_ref().unwrap().copy();
            let _ = seq.narrow(1, t, 1).fill_(5.0);
            let changed = Batch {
                features: batch.features.shallow_clone(),
                sequences: Some(seq),
                target: batch.target.shallow_clone(),
            };
            let out = tch::no_grad(|| model.trace(&changed, false).temporal);
            if t > 0 {
                let before = |x: &Tensor| x.narrow(3, 0, t);
                assert!(
                    before(&out).equal(&before(&base)),
                    "input at step {t} leaked into earlier outputs"
                );
            }
            let at = |x: &Tensor| x.narrow(3, t, 1);
            assert!(
                !at(&out).equal(&at(&base)),
                "step {t} does not see its own input"
            );
        }
    }

    #[test]
    fn neighbours_influence_each_other_but_not_across_components() {
        one_thread();
        // One GAT hop per step and the TCN only mixes time, so a node's
        // output depends on its 1-hop neighbourhood only.
        tch::manual_seed(4);
        let model = GatTcn::new(&small_cfg(4), Device::Cpu).unwrap();
        let batch = random_batch(1, 4);
        let base = tch::no_grad(|| model.forward_t(&batch, false)).view([5, 2]);
        let seq = batch.sequences.as_ref().unwrap().copy();
        // Perturb node 0's features (values 0..3 of each step).
        let _ = seq.narrow(2, 0, 3).fill_(3.0);
        let changed = Batch {
            sequences: Some(seq),
            ..random_batch(1, 4)
        };
        let out = tch::no_grad(|| model.forward_t(&changed, false)).view([5, 2]);
        let differs = |n: i64| !out.get(n).equal(&base.get(n));
        assert!(
            differs(0) && differs(1),
            "node 0's change must reach 0 and 1"
        );
        assert!(!differs(2) && !differs(3) && !differs(4));
    }

    #[test]
    fn learns_a_graph_counting_task() {
        one_thread();
        // Target of node i, category c = round(2 + 3 * mean of its
        // neighbours' last-step feature c).
        tch::manual_seed(6);
        let cfg = small_cfg(4);
        let n = 48;
        let seq = Tensor::rand([n, 4, 15], (Kind::Float, Device::Cpu));
        let last = seq.select(1, 3).view([n, 5, 3]);
        let adj = [
            [1., 1., 0., 0., 0.],
            [1., 1., 1., 0., 0.],
            [0., 1., 1., 1., 0.],
            [0., 0., 1., 1., 0.],
            [0., 0., 0., 0., 1.],
        ];
        let adj = Tensor::from_slice2(&adj).to_kind(Kind::Float);
        let deg = adj.sum_dim_intlist(1, true, Kind::Float);
        let mean = (adj / deg).matmul(&last.narrow(2, 0, 2));
        let target = (mean * 3.0 + 2.0).round().view([n, 10]);
        let ds = Dataset {
            task: Task::Counts,
            features: Vec::new(),
            feature_dim: 0,
            feature_names: Vec::new(),
            sequences: Some(Sequences {
                data: Vec::<f32>::try_from(seq.reshape([-1])).unwrap(),
                steps: 4,
                step_dim: 15,
            }),
            target: Target::Counts {
                values: Vec::<f32>::try_from(target.reshape([-1])).unwrap(),
                dim: 10,
            },
            area: vec![0; n as usize],
            time: (0..n as u32).collect(),
        };
        let model = build(&cfg, Device::Cpu).unwrap();
        let batch = to_batch(&ds, &(0..n as usize).collect::<Vec<_>>(), Device::Cpu);
        let (first, last) = train_full_batch(model.as_ref(), &batch, 80, 1e-2);
        assert!(last < first * 0.8, "{first} -> {last}");
        let pred = model.predict(&model.forward_t(&batch, false));
        assert_eq!(pred.size(), [n, 10]);
    }

    #[test]
    fn parameter_names_and_prior_bias() {
        one_thread();
        let mut cfg = small_cfg(4);
        cfg.target_prior = Some((0..10).map(|v| v as f32).collect());
        let model = GatTcn::new(&cfg, Device::Cpu).unwrap();
        let spec = model.param_spec();
        let names: Vec<_> = spec.entries().iter().map(|e| e.name.as_str()).collect();
        for want in [
            "gat.att_dst",
            "gat.att_src",
            "gat.bias",
            "gat.weight",
            "head.node_bias",
            "head.weight",
            "tcn.0.conv1.weight",
            "tcn.0.downsample.weight",
            "tcn.2.conv2.bias",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(!names.contains(&"tcn.1.downsample.weight"));
        assert_eq!(spec.get("tcn.0.conv1.weight").unwrap().shape, [8, 8 + 3, 2]);
        let bias = Vec::<f32>::try_from(model.node_bias.reshape([-1])).unwrap();
        assert_eq!(bias[0], 1e-3f32.ln());
        assert!((bias[9] - 9f32.ln()).abs() < 1e-6);
    }
}
