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
//!    and a bias shared by all nodes, plus the node's *level offset*: every
//!    area's next-period category values `[b, A * C]` (log-rates for
//!    Poisson, counts for MSE). The offset is read from the node's input
//!    features, not from a parameter: the level channels of the graph
//!    dataset (node features `C..2C`, `ln(1 + mean count per period over
//!    the training window)`, see [`graph_dataset`](super::graph_dataset)),
//!    turned into `ln(max(level, 1e-3))` for Poisson or `level` for MSE. An
//!    untrained model therefore predicts each area's training mean (the
//!    `period_mean` baseline) and training learns the departures from it.
//!
//! # Any number of nodes, one set of weights
//!
//! No parameter depends on the number of nodes: the GAT weights act per
//! node and per edge, the TCN per node, the head is shared, and what used to
//! be a per-node bias (`head.node_bias`, `[A, C]`, before issue 12) is now the
//! level offset above, an input. So a model of the 21-area graph and one of
//! a 4-node subgraph (a bureau station, see [`AreaGraph`](super::AreaGraph))
//! have the same parameter names and shapes ([`ModelConfig::on_graph`]
//! adapts a config to a subgraph), and FedAvg can average bureau stations'
//! weights and run the result on the whole city. Models saved before this
//! change (with `head.node_bias`) do not load.
//!
//! In such a federation (`bureau` partition) what leaves a station is these
//! weights (with its example count and training loss), never counts or
//! levels; what is lost is every boundary between two bureaus (16 of the
//! city's 43 boundaries, see [`AreaGraph::cut_edges`](super::AreaGraph::cut_edges)):
//! no station sees across them while training, though the averaged model
//! attends across them when it runs on all 21 areas.
//!
//! Parameter names: `gat.weight`, `gat.att_src`, `gat.att_dst`, `gat.bias`,
//! `tcn.{l}.conv1.{weight,bias}`, `tcn.{l}.conv2.*`, `tcn.{l}.downsample.*`,
//! `head.weight`, `head.bias`.
//!
//! [`ModelConfig::on_graph`]: super::ModelConfig::on_graph

use std::ops::Range;

use tch::{nn, Device, Kind, Tensor};

use super::config::{CountLoss, ModelConfig};
use super::error::{ModelError, Result};
use super::layers::{task_loss, task_predict, task_sample_losses, PRIOR_FLOOR};
use super::stages::{index_after, Layers};
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

    /// Shallow handles on the same variables.
    fn share(&self) -> Self {
        Conv {
            weight: self.weight.shallow_clone(),
            bias: self.bias.shallow_clone(),
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

impl TemporalBlock {
    /// Shallow handles on the same variables.
    fn share(&self) -> Self {
        TemporalBlock {
            conv1: self.conv1.share(),
            conv2: self.conv2.share(),
            downsample: self.downsample.as_ref().map(Conv::share),
            dilation: self.dilation,
        }
    }

    /// The block on `z` `[n, channels, T]`.
    fn forward(&self, z: Tensor, dropout: f64, train: bool) -> Tensor {
        let mut y = self.conv1.causal(&z, self.dilation).relu();
        if dropout > 0.0 {
            y = y.dropout(dropout, train);
        }
        y = self.conv2.causal(&y, self.dilation).relu();
        if dropout > 0.0 {
            y = y.dropout(dropout, train);
        }
        let skip = match &self.downsample {
            Some(conv) => conv.causal(&z, 1),
            None => z,
        };
        (y + skip).relu()
    }
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
    /// Shallow handles on the same variables; the mask on `device`.
    fn share(&self, device: Device) -> Self {
        Gat {
            weight: self.weight.shallow_clone(),
            att_src: self.att_src.shallow_clone(),
            att_dst: self.att_dst.shallow_clone(),
            bias: self.bias.shallow_clone(),
            mask: self.mask.to_device(device),
            heads: self.heads,
            head_dim: self.head_dim,
            slope: self.slope,
        }
    }

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
    vs: nn::VarStore,
    net: GatTcnNet,
}

/// The model's computation (see [`Layers`]): unit 0 is the graph
/// attention, units `1..=layers` the TCN blocks, unit `layers + 1` the head.
#[derive(Debug)]
struct GatTcnNet {
    cfg: ModelConfig,
    gat: Gat,
    tcn: Vec<TemporalBlock>,
    head_weight: Tensor,
    head_bias: Tensor,
}

impl GatTcnNet {
    /// Shallow handles on the same variables; the graph mask on `device`.
    fn share(&self, device: Device) -> Self {
        GatTcnNet {
            cfg: self.cfg.clone(),
            gat: self.gat.share(device),
            tcn: self.tcn.iter().map(TemporalBlock::share).collect(),
            head_weight: self.head_weight.shallow_clone(),
            head_bias: self.head_bias.shallow_clone(),
        }
    }

    /// The batch's sequence view as `[b, T, A, F]`.
    ///
    /// # Panics
    /// When the batch has no sequence view of width `areas * node features`.
    fn input(&self, batch: &Batch) -> Tensor {
        let seq = batch
            .sequences
            .as_ref()
            .unwrap_or_else(|| panic!("the gat-tcn model needs batches with a sequence view"));
        let size = seq.size();
        let a = self.cfg.areas as i64;
        let f = self.cfg.node_features() as i64;
        seq.reshape([size[0], size[1], a, f])
    }

    /// The graph attention on `x` `[b, T, A, F]`, next to the raw node
    /// features, laid out for the TCN: (`[b * A, hidden + F, T]`,
    /// attention `[b, T, heads, A, A]`).
    fn spatial(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let size = x.size();
        let (b, t, a) = (size[0], size[1], size[2]);
        let (spatial, attention) = self.gat.forward(x, self.cfg.dropout, train);
        // [b, T, A, hidden + F] -> [b * A, hidden + F, T]
        let z = Tensor::cat(&[&spatial, x], -1);
        let channels = z.size()[3];
        let z = z.permute([0, 2, 3, 1]).reshape([b * a, channels, t]);
        (z, attention)
    }

    /// The output `[b, A * C]` from the TCN's `z` `[b * A, hidden, T]`
    /// and the input `x` `[b, T, A, F]`.
    fn head(&self, z: &Tensor, x: &Tensor) -> Tensor {
        let size = x.size();
        let (b, t, a) = (size[0], size[1], size[2]);
        let hidden = self.cfg.hidden as i64;
        let last = z.select(2, t - 1).view([b, a, hidden]);
        (last.linear(&self.head_weight, Some(&self.head_bias)) + self.level_offset(x))
            .view([b, self.cfg.output_dim as i64])
    }

    /// The per-node output offset `[b, A, C]` from the level channels of
    /// the last step of `x` `[b, T, A, F]` (see the module doc).
    fn level_offset(&self, x: &Tensor) -> Tensor {
        let c = self.cfg.node_outputs() as i64;
        let t = x.size()[1];
        let level = x.select(1, t - 1).narrow(-1, c, c).expm1().clamp_min(0.0);
        match self.cfg.count_loss {
            CountLoss::Poisson => level.clamp_min(f64::from(PRIOR_FLOOR)).log(),
            CountLoss::Mse => level,
        }
    }
}

impl Layers for GatTcnNet {
    fn units(&self) -> usize {
        self.tcn.len() + 2
    }

    fn forward_units(
        &self,
        range: Range<usize>,
        carried: Vec<Tensor>,
        batch: &Batch,
        train: bool,
    ) -> Vec<Tensor> {
        let x = self.input(batch);
        let mut z = carried.into_iter().next();
        for unit in range {
            let next = if unit == 0 {
                self.spatial(&x, train).0
            } else {
                let z = z.unwrap_or_else(|| unreachable!("unit {unit} follows unit 0"));
                match self.tcn.get(unit - 1) {
                    Some(block) => block.forward(z, self.cfg.dropout, train),
                    None => self.head(&z, &x),
                }
            };
            z = Some(next);
        }
        z.into_iter().collect()
    }

    fn loss(&self, output: &Tensor, batch: &Batch) -> Tensor {
        task_loss(&self.cfg, None, output, batch)
    }

    fn unit_of(&self, name: &str) -> Option<usize> {
        if name.starts_with("gat.") {
            Some(0)
        } else if name.starts_with("head.") {
            Some(self.tcn.len() + 1)
        } else {
            index_after(name, "tcn.")
                .filter(|&l| l < self.tcn.len())
                .map(|l| l + 1)
        }
    }
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
        // Zero: the level offset already starts every node at its mean.
        let head_bias = h.zeros("bias", &[out as i64]);
        let net = GatTcnNet {
            cfg: cfg.clone(),
            gat,
            tcn,
            head_weight,
            head_bias,
        };
        Ok(GatTcn { vs, net })
    }

    /// The forward pass with its intermediate results.
    ///
    /// # Panics
    /// When the batch has no sequence view of width `areas * node features`.
    pub(crate) fn trace(&self, batch: &Batch, train: bool) -> GatTcnTrace {
        let net = &self.net;
        let x = net.input(batch);
        let size = x.size();
        let (b, t, a) = (size[0], size[1], size[2]);
        let (mut z, attention) = net.spatial(&x, train);
        for block in &net.tcn {
            z = block.forward(z, net.cfg.dropout, train);
        }
        let output = net.head(&z, &x);
        GatTcnTrace {
            attention,
            temporal: z.view([b, a, net.cfg.hidden as i64, t]),
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
        self.net.cfg.task
    }

    fn config(&self) -> &ModelConfig {
        &self.net.cfg
    }

    fn forward_t(&self, batch: &Batch, train: bool) -> Tensor {
        self.net.forward_all(batch, train)
    }

    fn loss(&self, output: &Tensor, batch: &Batch) -> Tensor {
        self.net.loss(output, batch)
    }

    fn sample_losses(&self, output: &Tensor, batch: &Batch) -> Tensor {
        task_sample_losses(&self.net.cfg, None, output, batch)
    }

    fn predict(&self, output: &Tensor) -> Tensor {
        task_predict(&self.net.cfg, output)
    }

    fn layers(&self, device: Device) -> Box<dyn Layers> {
        Box::new(self.net.share(device))
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

    /// Node features of the test graphs: 2 counts, 2 levels, 1 other.
    const F: usize = 5;

    /// A small graph: 5 nodes on a path 0-1-2-3, node 4 isolated.
    fn small_cfg(steps: usize) -> ModelConfig {
        let mut cfg = ModelConfig::new(ModelKind::GatTcn, Task::Counts, 0, 5 * 2);
        cfg.areas = 5;
        cfg.seq_steps = steps;
        cfg.seq_dim = 5 * F;
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
                [b, steps as i64, 5 * F as i64],
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
        let seq = Tensor::rand([n, 4, 5 * F as i64], (Kind::Float, Device::Cpu));
        // Every node's level: 3.5 per period.
        let _ = seq
            .view([n, 4, 5, F as i64])
            .narrow(3, 2, 2)
            .fill_(3.5f64.ln_1p());
        let last = seq.select(1, 3).view([n, 5, F as i64]);
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
                step_dim: 5 * F,
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
    fn parameter_names() {
        one_thread();
        let model = GatTcn::new(&small_cfg(4), Device::Cpu).unwrap();
        let spec = model.param_spec();
        let names: Vec<_> = spec.entries().iter().map(|e| e.name.as_str()).collect();
        for want in [
            "gat.att_dst",
            "gat.att_src",
            "gat.bias",
            "gat.weight",
            "head.bias",
            "head.weight",
            "tcn.0.conv1.weight",
            "tcn.0.downsample.weight",
            "tcn.2.conv2.bias",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(!names.contains(&"tcn.1.downsample.weight"));
        assert!(!names.contains(&"head.node_bias"));
        assert_eq!(spec.get("tcn.0.conv1.weight").unwrap().shape, [8, 8 + F, 2]);
        assert_eq!(spec.get("head.bias").unwrap().shape, [2]);
    }

    /// A config like `small_cfg` on `nodes` nodes with `edges`.
    fn cfg_on(nodes: usize, edges: Vec<(usize, usize)>) -> ModelConfig {
        let mut cfg = small_cfg(4);
        cfg.areas = nodes;
        cfg.seq_dim = nodes * F;
        cfg.output_dim = nodes * 2;
        cfg.target_prior = Some(vec![1.0; nodes * 2]);
        cfg.adjacency = edges;
        cfg
    }

    #[test]
    fn parameter_layout_does_not_depend_on_the_node_count() {
        one_thread();
        tch::manual_seed(8);
        let lapd = crate::model::AreaGraph::lapd();
        let bureau = crate::model::AreaGraph::bureau(fedcrime_data::Bureau::South);
        assert_eq!(bureau.len(), 4);
        let full = GatTcn::new(&cfg_on(21, lapd.edges().to_vec()), Device::Cpu).unwrap();
        let mut sub = GatTcn::new(&cfg_on(4, bureau.edges().to_vec()), Device::Cpu).unwrap();
        assert_eq!(full.param_spec(), sub.param_spec());
        assert_eq!(full.num_params(), sub.num_params());
        // The city's weights load into the bureau's model and run there.
        sub.import_params(&full.export_params()).unwrap();
        assert_eq!(sub.export_params(), full.export_params());
        let batch = Batch {
            features: Tensor::zeros([3, 0], (Kind::Float, Device::Cpu)),
            sequences: Some(Tensor::rand(
                [3, 4, 4 * F as i64],
                (Kind::Float, Device::Cpu),
            )),
            target: Tensor::zeros([3, 8], (Kind::Float, Device::Cpu)),
        };
        let out = tch::no_grad(|| sub.forward_t(&batch, false));
        assert_eq!(out.size(), [3, 8]);
    }

    #[test]
    fn a_subgraph_computes_what_the_graph_computes_where_no_edge_was_cut() {
        one_thread();
        tch::manual_seed(9);
        // The path 0-1-2-3 (+ isolated 4) and its subgraph {0, 1, 2}: nodes
        // 0 and 1 keep their whole neighbourhood, node 2 loses node 3.
        let full = GatTcn::new(&small_cfg(4), Device::Cpu).unwrap();
        let mut sub = GatTcn::new(&cfg_on(3, vec![(0, 1), (1, 2)]), Device::Cpu).unwrap();
        sub.import_params(&full.export_params()).unwrap();
        let batch = random_batch(2, 4);
        let seq = batch.sequences.as_ref().unwrap();
        let sub_batch = Batch {
            features: batch.features.shallow_clone(),
            sequences: Some(seq.narrow(2, 0, 3 * F as i64)),
            target: Tensor::zeros([2, 6], (Kind::Float, Device::Cpu)),
        };
        let a = tch::no_grad(|| full.forward_t(&batch, false)).view([2, 5, 2]);
        let b = tch::no_grad(|| sub.forward_t(&sub_batch, false)).view([2, 3, 2]);
        for node in [0, 1] {
            let (x, y) = (a.select(1, node), b.select(1, node));
            assert!(x.allclose(&y, 1e-5, 1e-6, false), "node {node}");
        }
        let (x, y) = (a.select(1, 2), b.select(1, 2));
        assert!(!x.allclose(&y, 1e-5, 1e-6, false), "node 2 lost an edge");
    }

    #[test]
    fn level_offset_starts_every_node_at_its_mean() {
        one_thread();
        for loss in [CountLoss::Poisson, CountLoss::Mse] {
            let mut cfg = small_cfg(4);
            cfg.count_loss = loss;
            let model = GatTcn::new(&cfg, Device::Cpu).unwrap();
            // A zero head: the prediction is the level offset alone.
            tch::no_grad(|| {
                let _ = model.net.head_weight.shallow_clone().zero_();
            });
            let batch = random_batch(2, 4);
            let seq = batch.sequences.as_ref().unwrap();
            let levels: Vec<f32> = [0.0, 0.5, 2.0, 7.0, 30.0, 1.0, 0.2, 4.0, 9.0, 0.0]
                .into_iter()
                .collect();
            let lv = Tensor::from_slice(&levels).view([1, 1, 5, 2]).log1p();
            seq.view([2, 4, 5, F as i64])
                .narrow(3, 2, 2)
                .copy_(&lv.expand([2, 4, 5, 2], false));
            let pred = model.predict(&tch::no_grad(|| model.forward_t(&batch, false)));
            let want: Vec<f32> = levels
                .iter()
                .map(|&l| {
                    if loss == CountLoss::Poisson {
                        l.max(1e-3)
                    } else {
                        l
                    }
                })
                .collect();
            let got = Vec::<f32>::try_from(pred.reshape([-1])).unwrap();
            for (k, (g, w)) in got.iter().zip(want.iter().cycle()).enumerate() {
                assert!(
                    (g - w).abs() < 1e-4 * w.max(1.0),
                    "{loss} value {k}: {g} vs {w}"
                );
            }
        }
    }
}
