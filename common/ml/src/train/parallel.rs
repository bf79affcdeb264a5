//! Centralized data-parallel training: the baseline federated learning is
//! compared against, using every device of one machine.
//!
//! `W` replicas of the model hold identical parameters: one per CUDA device
//! when several exist, else `W` CPU workers that share the cores (libtorch's
//! intra-op threads are divided among them). Each replica has its own thread
//! (replica 0 the calling thread) and the threads move through every step in
//! lockstep, meeting at two barriers:
//!
//! 1. each worker takes its contiguous part of the step's batch (assembled by
//!    itself or by loader threads, see [`super::loader`]), runs forward and
//!    backward on it with its loss scaled by the part's share of the batch
//!    (its size, or its total class weight for a class-weighted
//!    cross-entropy), so the parts' gradients sum to the full batch's;
//!    *barrier*;
//! 2. the trainable variables are cut into `W` shards of about equal size;
//!    worker `k` sums the replicas' gradients of shard `k` into replica 0's,
//!    takes replica 0's Adam step for that shard (libtorch's own Adam, one
//!    optimizer per shard: Adam is per-tensor, so this is exactly one Adam
//!    over all tensors) and copies the shard's new values into the other
//!    replicas; *barrier*. (Gradient clipping adds a barrier to share the
//!    shards' norms.)
//!
//! So the gradient reduction and the optimizer step, the part of a step that
//! does not shrink with the part size, are spread over the workers instead of
//! being done W times or by one thread while the others wait, and no message
//! passes between threads: the barriers spin briefly before yielding, which
//! matters when a step lasts a millisecond.
//!
//! With `W = 1` this is exactly the [`Trainer`](super::Trainer)'s arithmetic
//! (same shuffling, same seeds, same operations). With `W > 1` results match
//! full-batch training up to floating-point summation order, and the replicas
//! are bit-identical after every step (the shard's values are copied). Dropout
//! draws from libtorch's shared generator in whatever order the threads run,
//! so runs with dropout are not bit-reproducible across `W > 1`.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::loader::{feeds, BatchPlan, PartFeed};
use super::trainer::{
    batch_to, check_task, epoch_bar, epoch_train_loss, evaluate_model, usable_val, EpochOrder,
    EpochRecord, Evaluation, FitReport, Selection, TrainConfig,
};
use super::{Result, TrainError};
use crate::model::{build, export_params, import_params, CrimeModel, ModelConfig};
use crate::DeviceChoice;
use fedcrime_data::Dataset;
use fedcrime_params::Params;

/// Where the replicas go and how many there are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelConfig {
    /// Number of replicas `W`.
    pub workers: usize,
    /// `auto`: CUDA devices `0..W` when CUDA exists, else CPU workers;
    /// `cpu`: `W` CPU workers; `cuda:N`: devices `N..N+W`.
    pub device: DeviceChoice,
    /// libtorch intra-op threads shared by all CPU workers; `None` keeps
    /// libtorch's default (the number of cores).
    pub threads: Option<usize>,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            device: DeviceChoice::Auto,
            threads: None,
        }
    }
}

impl ParallelConfig {
    /// The device of each replica.
    pub fn devices(&self) -> Result<Vec<Device>> {
        place(self.device, self.workers, ("workers", "replica"))
    }
}

/// The devices of `n` model parts (replicas, stages) placed by `choice`:
/// all on the CPU, or CUDA devices `first..first + n` (`auto`: from 0 when
/// CUDA exists). Errors name the config `field` and the parts (`noun`).
pub(crate) fn place(
    choice: DeviceChoice,
    n: usize,
    (field, noun): (&'static str, &str),
) -> Result<Vec<Device>> {
    if n == 0 {
        return Err(TrainError::Config {
            field,
            reason: "must be at least 1".into(),
        });
    }
    let cuda = match choice {
        DeviceChoice::Cpu => 0,
        DeviceChoice::Auto => crate::device::cuda_devices(),
        DeviceChoice::Cuda(_) => {
            crate::device::load_cuda_backend().map_err(|reason| TrainError::Config {
                field: "device",
                reason,
            })?;
            tch::Cuda::device_count().max(0) as usize
        }
    };
    let first = match choice {
        DeviceChoice::Cpu => return Ok(vec![Device::Cpu; n]),
        DeviceChoice::Auto if cuda == 0 => return Ok(vec![Device::Cpu; n]),
        DeviceChoice::Auto => 0,
        DeviceChoice::Cuda(k) => k,
    };
    if first + n > cuda {
        return Err(TrainError::Config {
            field,
            reason: format!(
                "{n} {noun}(s) from cuda:{first} need {} CUDA device(s), {cuda} present",
                first + n
            ),
        });
    }
    Ok((first..first + n).map(Device::Cuda).collect())
}

/// One model copy and handles on its variables.
struct Replica {
    model: Box<dyn CrimeModel>,
    device: Device,
    /// Trainable variables in creation order (the same order on every replica).
    trainable: Vec<Tensor>,
    /// All variables (buffers too), sorted by name.
    all: Vec<Tensor>,
}

impl Replica {
    fn new(model: Box<dyn CrimeModel>) -> Self {
        let vs = model.var_store();
        let device = vs.device();
        let trainable = vs.trainable_variables();
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            model,
            device,
            trainable,
            all: named.into_iter().map(|(_, t)| t).collect(),
        }
    }

    /// Shallow handles on the trainable variables (same storage and gradients).
    fn handles(&self) -> Vec<Tensor> {
        self.trainable.iter().map(Tensor::shallow_clone).collect()
    }

    /// Shallow handles on all variables.
    fn all_handles(&self) -> Vec<Tensor> {
        self.all.iter().map(Tensor::shallow_clone).collect()
    }
}

/// The largest absolute difference between replica 0's variables and any
/// other replica's.
fn max_drift(master: &[Tensor], others: &[Vec<Tensor>], device: Device) -> f64 {
    tch::no_grad(|| {
        others
            .iter()
            .flat_map(|v| v.iter().zip(master))
            .map(|(a, b)| {
                let d = (a.to_device(device) - b).abs().max();
                f64::try_from(d).unwrap_or(f64::INFINITY)
            })
            .fold(0.0, f64::max)
    })
}

/// Copies replica 0's variables into the other replicas.
fn broadcast_to(master: &[Tensor], others: &[Vec<Tensor>]) {
    tch::no_grad(|| {
        for v in others {
            for (dst, src) in v.iter().zip(master) {
                dst.shallow_clone().copy_(src);
            }
        }
    });
}

/// Cuts `sizes` (element counts, in order) into `shards` contiguous runs of
/// about equal total size: run `k` ends where the running total first
/// reaches `(k + 1) / shards` of the whole. Runs may be empty when there are
/// fewer tensors than shards.
pub(crate) fn shard_ranges(sizes: &[usize], shards: usize) -> Vec<Range<usize>> {
    let shards = shards.max(1);
    let total: usize = sizes.iter().sum();
    let mut ranges = Vec::with_capacity(shards);
    let (mut start, mut i, mut acc) = (0, 0, 0usize);
    for k in 0..shards {
        if k + 1 == shards {
            i = sizes.len();
        } else {
            let goal = total * (k + 1) / shards;
            while i < sizes.len() && acc < goal {
                acc += sizes[i];
                i += 1;
            }
        }
        ranges.push(start..i);
        start = i;
    }
    ranges
}

/// A reusable barrier for the workers of one epoch. Waiters spin for a few
/// microseconds (a step's phases last about a millisecond, and waking a
/// sleeping thread costs tens of microseconds), then yield the core. A
/// worker that fails or panics aborts it, and every waiter returns an error
/// instead of waiting forever.
struct StepBarrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    aborted: AtomicBool,
}

impl StepBarrier {
    fn new(parties: usize) -> Self {
        Self {
            parties,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            aborted: AtomicBool::new(false),
        }
    }

    fn wait(&self) -> Result<()> {
        let lost = || Err(TrainError::Worker("replica"));
        if self.aborted.load(Ordering::Acquire) {
            return lost();
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return Ok(());
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.aborted.load(Ordering::Acquire) {
                return lost();
            }
            if spins < 2_000 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Ok(())
    }

    fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
    }
}

/// Aborts the barrier if its worker unwinds or returns an error, so the
/// others stop instead of waiting for it.
struct AbortOnFailure<'a> {
    barrier: &'a StepBarrier,
    done: bool,
}

impl Drop for AbortOnFailure<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.barrier.abort();
        }
    }
}

/// Replica 0's Adam for one shard of the trainable variables.
struct Shard {
    range: Range<usize>,
    opt: tch::COptimizer,
}

/// What every worker of an epoch shares.
struct StepContext<'a> {
    barrier: StepBarrier,
    /// Each shard's sum of squared gradient norms (gradient clipping).
    norms: Mutex<Vec<f64>>,
    max_grad_norm: Option<f64>,
    progress: &'a indicatif::ProgressBar,
}

/// One worker of an epoch: its replica, handles on every replica's
/// trainable variables (`peers[0]` is replica 0), its shard of replica 0's
/// optimizer and its feed of batch parts.
struct Worker<'a> {
    index: usize,
    model: &'a mut Box<dyn CrimeModel>,
    /// Clears its replica's gradients (an optimizer that never steps:
    /// libtorch's `zero_grad` drops the gradients, so the backward pass
    /// writes fresh ones instead of adding to zeros, as the station
    /// trainer's optimizer does).
    clear: tch::COptimizer,
    peers: Vec<Vec<Tensor>>,
    shard: &'a mut Shard,
    feed: PartFeed<'a>,
    threads: Option<i32>,
}

impl Worker<'_> {
    /// Runs every step of the epoch; returns the sum over steps of its part's
    /// loss times the part's share and the batch size (the caller adds the
    /// workers' sums into the epoch's mean training loss).
    fn run(mut self, ctx: &StepContext<'_>) -> Result<Tensor> {
        let mut guard = AbortOnFailure {
            barrier: &ctx.barrier,
            done: false,
        };
        if let Some(t) = self.threads {
            // libtorch's thread settings are partly per thread (OpenMP's team
            // size, MKL's local count): a new thread would otherwise use every
            // core and the workers would oversubscribe the machine.
            tch::set_num_threads(t);
        }
        let device = self.model.device();
        let loss_sum = Tensor::zeros([], (Kind::Double, device));
        while let Some(part) = self.feed.next_part() {
            let weight = part.share * part.batch_len() as f64;
            if let Some(b) = part.batch {
                let b = batch_to(b, device);
                self.clear.zero_grad()?;
                let out = self.model.forward_t(&b, true);
                let loss = self.model.loss(&out, &b);
                (&loss * part.share).backward();
                let seen = loss.detach().to_kind(Kind::Double) * weight;
                tch::no_grad(|| {
                    let _ = loss_sum.shallow_clone().g_add_(&seen);
                });
            }
            ctx.barrier.wait()?;
            self.update_shard(&part.sizes, ctx)?;
            ctx.barrier.wait()?;
            if self.index == 0 {
                ctx.progress.inc(1);
            }
        }
        guard.done = true;
        Ok(loss_sum)
    }

    /// Sums the shard's gradients into replica 0's (replicas with a part
    /// only), clips, steps replica 0's shard and copies it to the others.
    fn update_shard(&mut self, sizes: &[usize], ctx: &StepContext<'_>) -> Result<()> {
        let range = self.shard.range.clone();
        let (first, rest) = self.peers.split_at(1);
        let master = &first[0];
        let device0 = master.first().map(Tensor::device).unwrap_or(Device::Cpu);
        tch::no_grad(|| {
            for i in range.clone() {
                let mut g0 = master[i].grad();
                if !g0.defined() {
                    continue;
                }
                for (j, replica) in rest.iter().enumerate() {
                    let gj = replica[i].grad();
                    if sizes.get(j + 1).copied().unwrap_or(0) > 0 && gj.defined() {
                        let _ = g0.g_add_(&gj.to_device(device0));
                    }
                }
            }
        });
        if let Some(max) = ctx.max_grad_norm {
            let sq: f64 = tch::no_grad(|| {
                range
                    .clone()
                    .map(|i| master[i].grad())
                    .filter(Tensor::defined)
                    .map(|g| f64::try_from(g.norm()).map(|n| n * n))
                    .sum::<std::result::Result<f64, _>>()
            })?;
            ctx.norms
                .lock()
                .map_err(|_| TrainError::Worker("replica"))?[self.index] = sq;
            ctx.barrier.wait()?;
            let total = ctx
                .norms
                .lock()
                .map_err(|_| TrainError::Worker("replica"))?
                .iter()
                .sum::<f64>()
                .sqrt();
            let coef = max / (total + 1e-6);
            if coef < 1.0 {
                tch::no_grad(|| {
                    for i in range.clone() {
                        let mut g = master[i].grad();
                        if g.defined() {
                            let _ = g.g_mul_scalar_(coef);
                        }
                    }
                });
            }
        }
        if !range.is_empty() {
            self.shard.opt.step()?;
        }
        tch::no_grad(|| {
            for replica in rest {
                for i in range.clone() {
                    replica[i].shallow_clone().copy_(&master[i]);
                }
            }
        });
        Ok(())
    }
}

/// The data-parallel trainer; see the module documentation.
pub struct ParallelTrainer {
    replicas: Vec<Replica>,
    cfg: TrainConfig,
    threads: Option<usize>,
    drift: f64,
}

impl ParallelTrainer {
    /// Builds `par.workers` replicas of the model described by `model_cfg`
    /// on the configured devices, all holding replica 0's initial parameters.
    pub fn new(model_cfg: &ModelConfig, cfg: TrainConfig, par: &ParallelConfig) -> Result<Self> {
        let models = par
            .devices()?
            .into_iter()
            .map(|d| build(model_cfg, d))
            .collect::<Result<Vec<_>, _>>()?;
        let mut t = Self::from_models(models, cfg)?;
        t.threads = par.threads;
        Ok(t)
    }

    /// Wraps ready-made replicas (same architecture); all are set to the
    /// first one's parameters.
    pub fn from_models(models: Vec<Box<dyn CrimeModel>>, cfg: TrainConfig) -> Result<Self> {
        super::fair_training::station_only(&cfg, "the data-parallel trainer")?;
        cfg.validate()?;
        if models.is_empty() {
            return Err(TrainError::Config {
                field: "workers",
                reason: "must be at least 1".into(),
            });
        }
        let replicas: Vec<Replica> = models.into_iter().map(Replica::new).collect();
        let first = &replicas[0];
        for (k, r) in replicas.iter().enumerate().skip(1) {
            let same = r.trainable.len() == first.trainable.len()
                && r.all.len() == first.all.len()
                && r.trainable
                    .iter()
                    .zip(&first.trainable)
                    .all(|(a, b)| a.size() == b.size());
            if !same || r.model.task() != first.model.task() {
                return Err(TrainError::Config {
                    field: "workers",
                    reason: format!("replica {k} has a different architecture than replica 0"),
                });
            }
        }
        let t = Self {
            replicas,
            cfg,
            threads: None,
            drift: 0.0,
        };
        t.broadcast();
        Ok(t)
    }

    /// How far the replicas had drifted apart at the last epoch's end, before
    /// they were re-synchronized (largest absolute parameter difference; 0
    /// when every step left them bit-identical, as it should).
    pub fn last_drift(&self) -> f64 {
        self.drift
    }

    /// Number of replicas.
    pub fn workers(&self) -> usize {
        self.replicas.len()
    }

    /// Each replica's device.
    pub fn devices(&self) -> Vec<Device> {
        self.replicas.iter().map(|r| r.device).collect()
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Replica 0's model (all replicas hold the same parameters between steps).
    pub fn model(&self) -> &dyn CrimeModel {
        self.replicas[0].model.as_ref()
    }

    /// The current parameters.
    pub fn params(&self) -> Params {
        export_params(self.replicas[0].model.var_store())
    }

    /// Loads parameters into every replica.
    pub fn set_params(&mut self, p: &Params) -> Result<()> {
        import_params(self.replicas[0].model.var_store_mut(), p)?;
        self.broadcast();
        Ok(())
    }

    /// Evaluates the model (replica 0) on a dataset.
    pub fn evaluate(&self, ds: &Dataset) -> Result<Evaluation> {
        evaluate_model(self.model(), ds, self.cfg.eval_batch_size)
    }

    /// Bytes moved between replicas per optimizer step: every other
    /// replica's gradient read into replica 0's and replica 0's new values
    /// written back, `2 (W - 1)` times the trainable parameters' size (0 for
    /// one worker). On the CPU these are memory copies, between CUDA devices
    /// transfers.
    pub fn bytes_per_step(&self) -> u64 {
        let elems: usize = self.replicas[0].trainable.iter().map(Tensor::numel).sum();
        let per = self.replicas[0]
            .trainable
            .first()
            .map(|t| t.kind().elt_size_in_bytes())
            .unwrap_or(4);
        2 * (self.replicas.len() as u64 - 1) * (elems * per) as u64
    }

    /// Copies replica 0's variables into the others.
    fn broadcast(&self) {
        let others: Vec<Vec<Tensor>> = self.replicas[1..]
            .iter()
            .map(Replica::all_handles)
            .collect();
        broadcast_to(&self.replicas[0].all, &others);
    }

    /// Trains on `train` (see [`super::Trainer::fit`]).
    pub fn fit(&mut self, train: &Dataset, val: Option<&Dataset>) -> Result<FitReport> {
        self.fit_observed(train, val, &mut |_| {})
    }

    /// [`ParallelTrainer::fit`], calling `on_epoch` after every epoch.
    pub fn fit_observed(
        &mut self,
        train: &Dataset,
        val: Option<&Dataset>,
        on_epoch: &mut dyn FnMut(&EpochRecord),
    ) -> Result<FitReport> {
        let cpu = self.replicas.iter().all(|r| r.device == Device::Cpu);
        let before = tch::get_num_threads();
        let per = cpu.then(|| {
            let total = self.threads.unwrap_or(before.max(1) as usize);
            (total / self.replicas.len()).max(1) as i32
        });
        if let Some(per) = per {
            tch::set_num_threads(per);
        }
        let outcome = self.fit_inner(train, val, on_epoch, per);
        if cpu {
            tch::set_num_threads(before);
        }
        outcome
    }

    /// Replica 0's Adam, one optimizer per shard of its trainable variables.
    fn shards(&self) -> Result<Vec<Shard>> {
        let master = &self.replicas[0];
        let sizes: Vec<usize> = master.trainable.iter().map(Tensor::numel).collect();
        shard_ranges(&sizes, self.replicas.len())
            .into_iter()
            .map(|range| {
                let mut opt = tch::COptimizer::adam(
                    self.cfg.lr,
                    0.9,
                    0.999,
                    self.cfg.weight_decay,
                    1e-8,
                    false,
                )?;
                for t in &master.trainable[range.clone()] {
                    opt.add_parameters(t, 0)?;
                }
                Ok(Shard { range, opt })
            })
            .collect()
    }

    /// One pass over `order`: every worker on its own thread (worker 0 on
    /// this one); returns the summed training loss on replica 0's device.
    fn epoch(
        &mut self,
        train: &Dataset,
        order: &[usize],
        shards: &mut [Shard],
        progress: &indicatif::ProgressBar,
        threads: Option<i32>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let w = self.replicas.len();
        let class_weights = match self.model().task() {
            // A weighted cross-entropy normalizes by the batch's total class
            // weight, so parts are weighed by their class weight, not their size.
            fedcrime_data::Task::Risk => self.model().config().class_weights.clone(),
            fedcrime_data::Task::Counts => None,
        };
        let plan = BatchPlan {
            batch_size: cfg.batch_size,
            parts: w,
            loaders: cfg.loader_threads,
            prefetch: cfg.prefetch,
            class_weights: class_weights.as_deref(),
        };
        let ctx = StepContext {
            barrier: StepBarrier::new(w),
            norms: Mutex::new(vec![0.0; w]),
            max_grad_norm: cfg.max_grad_norm,
            progress,
        };
        let handles: Vec<Vec<Tensor>> = self.replicas.iter().map(Replica::handles).collect();
        let clears = handles
            .iter()
            .map(|h| {
                let mut opt = tch::COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false)?;
                for t in h {
                    opt.add_parameters(t, 0)?;
                }
                Ok(opt)
            })
            .collect::<Result<Vec<_>>>()?;
        let device0 = self.replicas[0].device;
        std::thread::scope(|s| -> Result<Tensor> {
            let feeds = feeds(s, train, order, plan)?;
            let mut workers: Vec<Worker<'_>> = self
                .replicas
                .iter_mut()
                .zip(shards.iter_mut())
                .zip(feeds)
                .zip(clears)
                .enumerate()
                .map(|(index, (((r, shard), feed), clear))| Worker {
                    index,
                    model: &mut r.model,
                    clear,
                    peers: handles
                        .iter()
                        .map(|h| h.iter().map(Tensor::shallow_clone).collect())
                        .collect(),
                    shard,
                    feed,
                    threads,
                })
                .collect();
            let first = workers.remove(0);
            let ctx = &ctx;
            let spawned = workers
                .into_iter()
                .map(|wk| {
                    std::thread::Builder::new()
                        .name("fedcrime-replica".into())
                        .spawn_scoped(s, move || wk.run(ctx))
                        .map_err(|e| TrainError::Io {
                            path: "<replica thread>".into(),
                            source: e,
                        })
                })
                .collect::<Vec<_>>();
            if spawned.iter().any(|h| h.is_err()) {
                ctx.barrier.abort();
            }
            let mut outcome = first.run(ctx);
            for h in spawned {
                let part = h.and_then(|h| h.join().map_err(|_| TrainError::Worker("replica"))?);
                outcome = match (outcome, part) {
                    (Ok(sum), Ok(p)) => Ok(sum + p.to_device(device0)),
                    // The first failure is the cause; later ones are aborts.
                    (Err(e), _) | (Ok(_), Err(e)) => Err(e),
                };
            }
            outcome
        })
    }

    /// The training loop; `threads` is each CPU worker's intra-op thread count.
    fn fit_inner(
        &mut self,
        train: &Dataset,
        val: Option<&Dataset>,
        on_epoch: &mut dyn FnMut(&EpochRecord),
        threads: Option<i32>,
    ) -> Result<FitReport> {
        let cfg = self.cfg.clone();
        cfg.validate()?;
        check_task(self.model(), train)?;
        let val = usable_val(val);
        if let Some(v) = val {
            check_task(self.model(), v)?;
        }
        if train.is_empty() {
            return Err(TrainError::EmptySplit { split: "train" });
        }
        let w = self.replicas.len();
        tch::manual_seed(cfg.seed as i64);
        let mut shards = self.shards()?;
        let mut orders = EpochOrder::new(train.len(), cfg.seed);
        let mut selection = Selection::new(&cfg);
        let steps = train.len().div_ceil(cfg.batch_size);
        for epoch in 1..=cfg.epochs {
            let t0 = Instant::now();
            let pb = epoch_bar(cfg.progress, steps, epoch, cfg.epochs);
            let order = orders.next().to_vec();
            let loss_sum = self.epoch(train, &order, &mut shards, &pb, threads)?;
            // Every step leaves the replicas identical; check it once per
            // epoch (a device whose arithmetic is not bit-reproducible would
            // show here) and re-synchronize.
            let others: Vec<Vec<Tensor>> = self.replicas[1..]
                .iter()
                .map(Replica::all_handles)
                .collect();
            self.drift = max_drift(&self.replicas[0].all, &others, self.replicas[0].device);
            if self.drift > 0.0 {
                tracing::debug!(epoch, drift = self.drift, "replicas re-synchronized");
                broadcast_to(&self.replicas[0].all, &others);
            }
            let train_secs = t0.elapsed().as_secs_f64();
            pb.finish_and_clear();
            let train_loss = epoch_train_loss(&loss_sum, train.len(), epoch)?;
            let eval = match val {
                Some(v) => Some(self.evaluate(v)?),
                None => None,
            };
            let (record, stopping) = selection.record(
                self.model().var_store(),
                (epoch, train_loss),
                eval,
                (train.len(), train_secs, t0.elapsed().as_secs_f64()),
            );
            tracing::info!(
                epoch,
                workers = w,
                train_loss,
                val_loss = record.val_loss,
                samples_per_sec = record.samples_per_sec,
                "epoch done"
            );
            if selection.keep(record, stopping, on_epoch) {
                break;
            }
        }
        let (report, restored) = selection.finish();
        if restored {
            self.broadcast();
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelKind;
    use crate::train::test_data;
    use crate::train::Trainer;

    use crate::train::test_data::fast_config as cfg;

    fn max_abs_diff(a: &Params, b: &Params) -> f32 {
        a.data()
            .iter()
            .zip(b.data())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn one_worker_equals_the_station_trainer_exactly() {
        // Dropout off: libtorch's generator is shared with tests running
        // concurrently. (Alone, `W = 1` reproduces the dropout masks too.)
        let train = test_data::risk(200, 6, 1);
        let val = test_data::risk(50, 6, 2);
        let c = TrainConfig {
            patience: 3,
            ..cfg(3, 32)
        };
        let m = test_data::model(ModelKind::Dnn, &train, 16, 0.0, 4);
        let mut par =
            ParallelTrainer::from_models(vec![test_data::copy(m.as_ref())], c.clone()).unwrap();
        let mut plain = Trainer::new(m, c).unwrap();
        let r1 = plain.fit(&train, Some(&val)).unwrap();
        let r2 = par.fit(&train, Some(&val)).unwrap();
        assert_eq!(plain.params(), par.params());
        let losses =
            |r: &FitReport| -> Vec<f64> { r.epochs.iter().map(|e| e.train_loss).collect() };
        assert_eq!(losses(&r1), losses(&r2));
        assert_eq!(r1.best_epoch, r2.best_epoch);
    }

    #[test]
    fn two_workers_match_full_batch_training() {
        // 67 samples, batches of 16: the last batch has 3 samples (split 2/1).
        for (kind, train) in [
            (ModelKind::Dnn, test_data::risk(67, 5, 3)),
            (ModelKind::Lstm, test_data::counts(67, 3, 2, 4)),
        ] {
            let m = test_data::model(kind, &train, 12, 0.0, 8);
            // Replica 1 starts elsewhere: the trainer must broadcast replica 0.
            let models = vec![
                test_data::copy(m.as_ref()),
                test_data::model(kind, &train, 12, 0.0, 9),
            ];
            let mut plain = Trainer::new(m, cfg(2, 16)).unwrap();
            plain.fit(&train, None).unwrap();
            let mut par = ParallelTrainer::from_models(models, cfg(2, 16)).unwrap();
            par.fit(&train, None).unwrap();
            let d = max_abs_diff(&plain.params(), &par.params());
            assert!(d < 1e-5, "{kind}: max difference {d}");
            // The replicas stayed identical by themselves, step after step.
            assert_eq!(par.last_drift(), 0.0);
            let second = export_params(par.replicas[1].model.var_store());
            assert_eq!(par.params(), second);
        }
    }

    #[test]
    fn two_workers_match_full_batch_training_with_class_weights() {
        let train = test_data::risk(70, 5, 13);
        let mut mcfg = crate::model::ModelConfig::for_dataset(ModelKind::Dnn, &train);
        mcfg.hidden = 12;
        mcfg.dropout = 0.0;
        mcfg.class_weights = crate::train::ClassWeighting::Balanced.weights(&train);
        tch::manual_seed(21);
        let m = crate::model::build(&mcfg, Device::Cpu).unwrap();
        let models = vec![test_data::copy(m.as_ref()), test_data::copy(m.as_ref())];
        let mut plain = Trainer::new(m, cfg(2, 16)).unwrap();
        plain.fit(&train, None).unwrap();
        let mut par = ParallelTrainer::from_models(models, cfg(2, 16)).unwrap();
        par.fit(&train, None).unwrap();
        let d = max_abs_diff(&plain.params(), &par.params());
        assert!(d < 1e-5, "max difference {d}");
    }

    #[test]
    fn a_batch_smaller_than_the_worker_count_still_trains() {
        // 33 samples in batches of 16: the last batch has 1 sample for 3 workers.
        let train = test_data::risk(33, 4, 5);
        let m = test_data::model(ModelKind::Dnn, &train, 8, 0.0, 2);
        let models = (0..3).map(|_| test_data::copy(m.as_ref())).collect();
        let mut plain = Trainer::new(m, cfg(1, 16)).unwrap();
        plain.fit(&train, None).unwrap();
        let mut par = ParallelTrainer::from_models(models, cfg(1, 16)).unwrap();
        par.fit(&train, None).unwrap();
        assert!(max_abs_diff(&plain.params(), &par.params()) < 1e-5);
    }

    #[test]
    fn a_replica_that_never_computed_still_steps_with_the_others() {
        // 3 samples in batches of 2 for 3 workers: replica 2 gets no sample
        // in any step but must take the same optimizer steps.
        let train = test_data::risk(3, 4, 9);
        let m = test_data::model(ModelKind::Dnn, &train, 8, 0.0, 2);
        let models = (0..3).map(|_| test_data::copy(m.as_ref())).collect();
        let mut plain = Trainer::new(m, cfg(2, 2)).unwrap();
        plain.fit(&train, None).unwrap();
        let mut par = ParallelTrainer::from_models(models, cfg(2, 2)).unwrap();
        par.fit(&train, None).unwrap();
        assert!(max_abs_diff(&plain.params(), &par.params()) < 1e-5);
        assert_eq!(par.last_drift(), 0.0);
        let last = export_params(par.replicas[2].model.var_store());
        assert_eq!(par.params(), last);
    }

    #[test]
    fn shards_are_contiguous_and_about_equal() {
        assert_eq!(shard_ranges(&[10, 1, 10, 1], 2), vec![0..2, 2..4]);
        assert_eq!(shard_ranges(&[4, 4, 4, 4], 1), vec![0..4]);
        assert_eq!(shard_ranges(&[100, 1], 3), vec![0..1, 1..1, 1..2]);
        assert_eq!(shard_ranges(&[], 2), vec![0..0, 0..0]);
        // Every tensor in exactly one shard, in order.
        let sizes = [7, 3, 12, 1, 1, 40, 2];
        for w in 1..6 {
            let r = shard_ranges(&sizes, w);
            assert_eq!(r.len(), w);
            assert_eq!(r[0].start, 0);
            assert_eq!(r[w - 1].end, sizes.len());
            assert!(r.windows(2).all(|p| p[0].end == p[1].start));
        }
    }

    #[test]
    fn replicas_are_bit_identical_after_every_step() {
        let train = test_data::counts(40, 3, 2, 6);
        let m = test_data::model(ModelKind::Lstm, &train, 8, 0.0, 3);
        let models = (0..3).map(|_| test_data::copy(m.as_ref())).collect();
        let mut par = ParallelTrainer::from_models(models, cfg(1, 8)).unwrap();
        for _ in 0..3 {
            // One epoch of 5 steps each time; the drift is measured before
            // any re-synchronization.
            par.fit(&train, None).unwrap();
            assert_eq!(par.last_drift(), 0.0);
            let p0 = par.params();
            for r in &par.replicas[1..] {
                assert_eq!(export_params(r.model.var_store()), p0);
            }
        }
    }

    #[test]
    fn loading_on_and_off_trains_identically() {
        // Inline assembly, one loader and several loaders cut the same
        // batches: the parameters are bit-identical, and one worker still
        // equals the station trainer exactly.
        let train = test_data::risk(90, 5, 17);
        let m = test_data::model(ModelKind::Dnn, &train, 12, 0.0, 5);
        let with = |loader_threads: usize| TrainConfig {
            loader_threads,
            ..cfg(2, 16)
        };
        let mut plain = Trainer::new(test_data::copy(m.as_ref()), with(1)).unwrap();
        plain.fit(&train, None).unwrap();
        let mut results = Vec::new();
        for loaders in [0, 1, 3] {
            let mut one =
                ParallelTrainer::from_models(vec![test_data::copy(m.as_ref())], with(loaders))
                    .unwrap();
            one.fit(&train, None).unwrap();
            assert_eq!(one.params(), plain.params(), "{loaders} loader(s)");
            let two = vec![test_data::copy(m.as_ref()), test_data::copy(m.as_ref())];
            let mut par = ParallelTrainer::from_models(two, with(loaders)).unwrap();
            par.fit(&train, None).unwrap();
            results.push(par.params());
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn clipped_gradients_match_full_batch_training() {
        let train = test_data::risk(64, 5, 23);
        let m = test_data::model(ModelKind::Dnn, &train, 12, 0.0, 6);
        let c = TrainConfig {
            max_grad_norm: Some(0.05),
            ..cfg(2, 16)
        };
        let models = vec![test_data::copy(m.as_ref()), test_data::copy(m.as_ref())];
        let mut plain = Trainer::new(m, c.clone()).unwrap();
        plain.fit(&train, None).unwrap();
        let mut par = ParallelTrainer::from_models(models, c).unwrap();
        par.fit(&train, None).unwrap();
        let d = max_abs_diff(&plain.params(), &par.params());
        assert!(d < 1e-5, "max difference {d}");
        assert_eq!(par.last_drift(), 0.0);
    }

    #[test]
    fn bytes_per_step_count_both_directions() {
        let train = test_data::risk(16, 4, 5);
        let m = test_data::model(ModelKind::Dnn, &train, 8, 0.0, 2);
        let n = m.num_params() as u64;
        let one = ParallelTrainer::from_models(vec![test_data::copy(m.as_ref())], cfg(1, 4));
        assert_eq!(one.unwrap().bytes_per_step(), 0);
        let models = (0..3).map(|_| test_data::copy(m.as_ref())).collect();
        let three = ParallelTrainer::from_models(models, cfg(1, 4)).unwrap();
        assert_eq!(three.bytes_per_step(), 2 * 2 * 4 * n);
    }

    #[test]
    fn replicas_must_share_the_architecture() {
        let train = test_data::risk(16, 4, 5);
        let models = vec![
            test_data::model(ModelKind::Dnn, &train, 8, 0.0, 2),
            test_data::model(ModelKind::Dnn, &train, 16, 0.0, 2),
        ];
        let e = ParallelTrainer::from_models(models, cfg(1, 4))
            .err()
            .unwrap();
        assert!(e.to_string().contains("replica 1"), "{e}");
        assert!(ParallelTrainer::from_models(Vec::new(), cfg(1, 4)).is_err());
    }

    #[test]
    fn cpu_devices_follow_the_worker_count() {
        let par = ParallelConfig {
            workers: 3,
            device: DeviceChoice::Cpu,
            threads: None,
        };
        assert_eq!(par.devices().unwrap(), vec![Device::Cpu; 3]);
        let none = ParallelConfig {
            workers: 0,
            ..par.clone()
        };
        assert!(none.devices().is_err());
        if crate::device::cuda_devices() == 0 {
            let cuda = ParallelConfig {
                device: DeviceChoice::Cuda(0),
                ..par
            };
            assert!(cuda.devices().unwrap_err().to_string().contains("CUDA"));
        }
    }
}
