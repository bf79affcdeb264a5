//! Model-parallel training: the model's layers cut into `S` consecutive
//! stages, each on its own thread and device, with GPipe micro-batch
//! pipelining.
//!
//! The model's units (see [`crate::model::stages`]) are split into `S`
//! contiguous stages ([`stage_units`]: the graph attention, the TCN blocks
//! and the head of the gat-tcn; hidden layers and the head of the dnn; LSTM
//! layers and the head of the lstm). Stage `k` runs on its own thread (stage
//! 0 on the calling thread) with `threads / S` libtorch intra-op threads on
//! the CPU, or on `cuda:k` (its
//! variables are moved there; activations and gradients are copied between
//! devices). Each step's batch is cut into `M` micro-batches that flow
//! forward through the stages, stage `k` starting micro-batch `m + 1` while
//! stage `k + 1` works on `m`; the last stage computes the loss of each
//! micro-batch, scaled by its share of the batch (its sample count, or its
//! total class weight for a class-weighted cross-entropy, as the
//! data-parallel trainer weighs its parts), and the gradients flow back in
//! reverse. A stage's input is a detached leaf that requires a gradient:
//! once the next stage returns `d loss / d output`, the stage back-propagates
//! `sum(output * grad)` (whose gradient with respect to `output` is exactly
//! `grad`) and sends its input's gradient upstream. Gradients accumulate in
//! the variables over the micro-batches, so after the last one they are the
//! full batch's gradient, and one optimizer step follows. (A stage handles
//! its messages in arrival order: all forwards of a batch queue up before
//! the first gradient returns, which is GPipe's schedule.)
//!
//! Results equal the [`Trainer`](super::Trainer)'s up to floating-point
//! summation order (with one micro-batch they are the same operations);
//! dropout draws from libtorch's shared generator in whatever order the
//! threads run, so runs with dropout are not bit-reproducible.
//!
//! On several CUDA devices this code places variables with `set_data` and
//! copies activations with `to_device`; it has been reviewed but not run on
//! a GPU machine (the test machines have none).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use super::loader::{for_each_split_batch, BatchPlan};
use super::trainer::{
    batch_to, check_task, epoch_bar, epoch_train_loss, evaluate_model, usable_val, EpochOrder,
    EpochRecord, Evaluation, FitReport, Selection, TrainConfig,
};
use super::{Result, TrainError};
use crate::model::{
    build, export_params, import_params, Batch, CrimeModel, Layers, ModelConfig, ModelKind,
};
use crate::DeviceChoice;
use fedcrime_data::{Dataset, Task};
use fedcrime_params::Params;

/// How many stages, how many micro-batches, and where the stages go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Number of stages `S` (at most the model's units: dnn `layers + 1`,
    /// lstm `layers + 1`, gat-tcn `layers + 2`).
    pub stages: usize,
    /// Micro-batches `M` each batch is cut into.
    pub micro_batches: usize,
    /// `auto`: CUDA devices `0..S` when CUDA exists, else the CPU; `cpu`:
    /// every stage on the CPU; `cuda:N`: devices `N..N+S`.
    pub device: DeviceChoice,
    /// libtorch intra-op threads shared by the CPU stages; `None` keeps
    /// libtorch's default (the number of cores).
    pub threads: Option<usize>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            stages: 2,
            micro_batches: 2,
            device: DeviceChoice::Auto,
            threads: None,
        }
    }
}

impl PipelineConfig {
    /// The device of each stage.
    pub fn devices(&self) -> Result<Vec<Device>> {
        if self.micro_batches == 0 {
            return Err(TrainError::Config {
                field: "micro_batches",
                reason: "must be at least 1".into(),
            });
        }
        // The same placement rule as the data-parallel replicas.
        super::parallel::place(self.device, self.stages, ("stages", "stage"))
    }
}

/// The units of each of `stages` stages of a model with `units` units:
/// contiguous and near-equal; units left over go to the middle stages (with
/// two stages, to the first), so the first stage (the input layer) and the
/// last (the head) stay small: the gat-tcn's 5 default units in 3 stages are
/// the graph attention, the three TCN blocks, and the head.
pub fn stage_units(units: usize, stages: usize) -> Vec<Range<usize>> {
    let stages = stages.clamp(1, units.max(1));
    let (q, r) = (units / stages, units % stages);
    let mut sizes = vec![q; stages];
    let takers: Vec<usize> = if stages > 2 {
        (1..stages - 1).collect()
    } else {
        vec![0]
    };
    for k in takers.iter().cycle().take(r) {
        sizes[*k] += 1;
    }
    let mut start = 0;
    sizes
        .into_iter()
        .map(|n| {
            start += n;
            start - n..start
        })
        .collect()
}

/// One stage's share of the model.
struct Stage {
    units: Range<usize>,
    device: Device,
    /// Handles on the stage's layers for the main thread's (evaluation)
    /// forward pass; the stage thread gets its own.
    layers: Box<dyn Layers>,
}

/// The model with its stages placed: a [`CrimeModel`] whose forward pass
/// runs the stages in turn, moving activations between their devices
/// (when all stages share one device, the plain model's forward pass, which
/// is the same arithmetic).
struct Placed {
    inner: Box<dyn CrimeModel>,
    stages: Vec<Stage>,
    one_device: bool,
}

impl CrimeModel for Placed {
    fn kind(&self) -> ModelKind {
        self.inner.kind()
    }

    fn task(&self) -> Task {
        self.inner.task()
    }

    fn forward_t(&self, batch: &Batch, train: bool) -> Tensor {
        if self.one_device {
            return self.inner.forward_t(batch, train);
        }
        let mut carried = Vec::new();
        for s in &self.stages {
            let b = batch.to_device(s.device);
            let inputs = carried.iter().map(|t: &Tensor| t.to_device(s.device));
            carried = s
                .layers
                .forward_units(s.units.clone(), inputs.collect(), &b, train);
        }
        carried
            .pop()
            .unwrap_or_else(|| unreachable!("the last stage returns the output"))
    }

    fn loss(&self, output: &Tensor, batch: &Batch) -> Tensor {
        match self.stages.last() {
            Some(last) if !self.one_device => {
                last.layers.loss(output, &batch.to_device(output.device()))
            }
            _ => self.inner.loss(output, batch),
        }
    }

    fn predict(&self, output: &Tensor) -> Tensor {
        self.inner.predict(output)
    }

    fn layers(&self, device: Device) -> Box<dyn Layers> {
        self.inner.layers(device)
    }

    fn var_store(&self) -> &nn::VarStore {
        self.inner.var_store()
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        self.inner.var_store_mut()
    }

    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
}

/// What flows into a stage.
enum StageMsg {
    /// Micro-batch `m` (of `count` in the batch) forward: its samples, what
    /// the previous stage returned (nothing for stage 0) and its share of
    /// the batch's loss.
    Forward {
        m: usize,
        count: usize,
        batch: Batch,
        carried: Vec<Tensor>,
        share: f64,
    },
    /// Micro-batch `m` backward: the gradient of the loss with respect to
    /// each of this stage's outputs; with the batch's last micro-batch, the
    /// batch's loss (on its way to stage 0, the coordinating thread).
    Backward {
        m: usize,
        grads: Vec<Tensor>,
        loss: Option<Tensor>,
    },
    /// A stage thread panicked (sent to stage 0).
    Failed,
    /// The fit is over.
    Stop,
}

/// Sends [`StageMsg::Failed`] to stage 0 when a stage thread unwinds.
struct PanicAlarm(Sender<StageMsg>);

impl Drop for PanicAlarm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.send(StageMsg::Failed);
        }
    }
}

/// How long a stage polls its inbox before it sleeps. The gaps between a
/// stage's messages within a batch are mostly shorter than waking a
/// sleeping thread takes on a virtual machine (tens to hundreds of
/// microseconds), which for small models was most of the pipeline's
/// overhead; between batches (the optimizer step) and epochs it sleeps.
const SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// The next message, polling for [`SPIN`] before blocking.
fn recv(inbox: &Receiver<StageMsg>) -> Option<StageMsg> {
    let t0 = Instant::now();
    loop {
        match inbox.try_recv() {
            Ok(msg) => return Some(msg),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if t0.elapsed() < SPIN => std::hint::spin_loop(),
            Err(mpsc::TryRecvError::Empty) => return inbox.recv().ok(),
        }
    }
}

/// What the stages count while they run.
struct Counters {
    /// Bytes of activations and gradients passed between stages.
    bytes: AtomicU64,
    /// Per stage: nanoseconds spent computing (not waiting for messages).
    busy_ns: Vec<AtomicU64>,
}

impl Counters {
    fn new(stages: usize) -> Self {
        Self {
            bytes: AtomicU64::new(0),
            busy_ns: (0..stages).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn reset(&self) {
        self.bytes.store(0, Ordering::Relaxed);
        for b in &self.busy_ns {
            b.store(0, Ordering::Relaxed);
        }
    }
}

/// Bytes of the tensors' values.
fn bytes_of(ts: &[Tensor]) -> u64 {
    ts.iter()
        .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
        .sum()
}

/// A micro-batch between its forward and its backward pass.
struct InFlight {
    m: usize,
    count: usize,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

/// What handling a message led to.
enum Step {
    /// Done; more messages to come.
    Continue,
    /// Stage 0 finished the batch's last backward pass (so every stage
    /// has): the batch's loss (f64, detached, on the last stage's device).
    Finished(Tensor),
    /// The fit is over, or a neighbour is gone.
    Closed,
}

/// One stage's work and its links: stage 0 runs on the coordinating
/// thread, every other stage on its own.
struct StageWorker<'a> {
    k: usize,
    last: bool,
    units: Range<usize>,
    device: Device,
    layers: Box<dyn Layers>,
    next: Option<Sender<StageMsg>>,
    prev: Option<Sender<StageMsg>>,
    counters: &'a Counters,
    /// Micro-batches waiting for their gradient, oldest first.
    pending: VecDeque<InFlight>,
    /// The last stage's running loss of the current batch.
    batch_loss: Option<Tensor>,
}

impl StageWorker<'_> {
    /// A stage thread's loop: handles messages until [`StageMsg::Stop`]
    /// (or until a neighbour is gone); a panic is reported to stage 0.
    fn run(mut self, inbox: Receiver<StageMsg>, stage0: Sender<StageMsg>) {
        let _alarm = PanicAlarm(stage0);
        while let Some(msg) = recv(&inbox) {
            if matches!(self.handle(msg), Step::Closed) {
                break;
            }
        }
    }

    /// Handles one message, counting the time it took.
    fn handle(&mut self, msg: StageMsg) -> Step {
        let t0 = Instant::now();
        let step = match msg {
            StageMsg::Stop | StageMsg::Failed => Step::Closed,
            StageMsg::Forward {
                m,
                count,
                batch,
                carried,
                share,
            } => self.forward(m, count, batch, carried, share),
            StageMsg::Backward { m, grads, loss } => {
                // Stages pass micro-batches back in the order they went
                // forward; anything else is a bug of the pipeline, which
                // ends it with an error rather than wrong gradients.
                let f = match self.pending.pop_front() {
                    Some(f) if f.m == m => f,
                    other => {
                        tracing::error!(
                            stage = self.k,
                            micro_batch = m,
                            pending = ?other.map(|f| f.m),
                            "a gradient came back out of order: stopping the pipeline"
                        );
                        return Step::Closed;
                    }
                };
                let surrogate = f
                    .outputs
                    .iter()
                    .zip(&grads)
                    .map(|(o, g)| (o * g.to_device(self.device)).sum(Kind::Float))
                    .reduce(|a, b| a + b);
                if let Some(s) = surrogate {
                    s.backward();
                }
                self.upstream(m, f.count, &f.inputs, loss)
            }
        };
        let ns = t0.elapsed().as_nanos() as u64;
        self.counters.busy_ns[self.k].fetch_add(ns, Ordering::Relaxed);
        step
    }

    /// Micro-batch `m`'s forward pass (and for the last stage its loss and
    /// backward pass).
    fn forward(
        &mut self,
        m: usize,
        count: usize,
        batch: Batch,
        carried: Vec<Tensor>,
        share: f64,
    ) -> Step {
        let batch = batch_to(batch, self.device);
        let inputs: Vec<Tensor> = carried
            .iter()
            .map(|t| t.to_device(self.device).detach().set_requires_grad(true))
            .collect();
        let shallow = inputs.iter().map(Tensor::shallow_clone).collect();
        let outputs = self
            .layers
            .forward_units(self.units.clone(), shallow, &batch, true);
        if self.last {
            let loss = self.layers.loss(&outputs[0], &batch);
            (&loss * share).backward();
            let weighted = loss.detach().to_kind(Kind::Double) * share;
            let total = match self.batch_loss.take() {
                Some(l) => l + weighted,
                None => weighted,
            };
            let loss = if m + 1 == count {
                Some(total)
            } else {
                self.batch_loss = Some(total);
                None
            };
            return self.upstream(m, count, &inputs, loss);
        }
        let out: Vec<Tensor> = outputs.iter().map(Tensor::detach).collect();
        self.counters
            .bytes
            .fetch_add(bytes_of(&out), Ordering::Relaxed);
        self.pending.push_back(InFlight {
            m,
            count,
            inputs,
            outputs,
        });
        let msg = StageMsg::Forward {
            m,
            count,
            batch,
            carried: out,
            share,
        };
        match self.next.as_ref().map(|n| n.send(msg)) {
            Some(Ok(())) => Step::Continue,
            _ => Step::Closed,
        }
    }

    /// After micro-batch `m`'s backward pass: the inputs' gradients (and
    /// the batch's loss) go to the previous stage; stage 0 finishes the
    /// batch with its last micro-batch.
    fn upstream(&self, m: usize, count: usize, inputs: &[Tensor], loss: Option<Tensor>) -> Step {
        let Some(prev) = &self.prev else {
            return match loss {
                Some(l) => Step::Finished(l),
                None => Step::Continue,
            };
        };
        let grads: Vec<Tensor> = inputs
            .iter()
            .map(|x| {
                let g = x.grad();
                if g.defined() {
                    g
                } else {
                    x.zeros_like()
                }
            })
            .collect();
        self.counters
            .bytes
            .fetch_add(bytes_of(&grads), Ordering::Relaxed);
        debug_assert!(loss.is_none() || m + 1 == count);
        match prev.send(StageMsg::Backward { m, grads, loss }) {
            Ok(()) => Step::Continue,
            Err(_) => Step::Closed,
        }
    }
}

/// Clips the gradients of `vars` (on any devices) to total norm `max`, as
/// `tch`'s `clip_grad_norm` does on one device.
fn clip_grad_norm(vars: &[Tensor], max: f64) -> Result<()> {
    tch::no_grad(|| {
        let mut total = 0.0;
        let grads: Vec<Tensor> = vars
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        for g in &grads {
            total += f64::try_from(g.norm().to_kind(Kind::Double).square())?;
        }
        let coef = max / (total.sqrt() + 1e-6);
        if coef < 1.0 {
            for g in &grads {
                let _ = g.shallow_clone().g_mul_scalar_(coef);
            }
        }
        Ok(())
    })
}

/// Each CPU stage's intra-op threads out of `total`, in proportion to its
/// parameters (a dense layer's work grows with its parameters; a stage that
/// is mostly waiting, like a small head, needs no more than one), at least
/// one each. A one-layer LSTM split into LSTM | head keeps both threads for
/// the LSTM; the head's thread sleeps while it waits.
pub fn stage_threads(total: usize, params: &[usize]) -> Vec<i32> {
    let sum: usize = params.iter().sum::<usize>().max(1);
    params
        .iter()
        .map(|&p| ((total * p) as f64 / sum as f64).round().max(1.0) as i32)
        .collect()
}

/// The model-parallel trainer; see the module documentation.
pub struct PipelineTrainer {
    model: Placed,
    micro_batches: usize,
    cfg: TrainConfig,
    threads: Option<usize>,
    bytes_per_epoch: u64,
    stage_busy: Vec<f64>,
}

impl PipelineTrainer {
    /// Builds the model described by `model_cfg` and places its stages on
    /// the devices `pipe` asks for.
    pub fn new(model_cfg: &ModelConfig, cfg: TrainConfig, pipe: &PipelineConfig) -> Result<Self> {
        let devices = pipe.devices()?;
        let model = build(model_cfg, devices[0])?;
        Self::from_model(model, cfg, pipe)
    }

    /// Wraps a ready-made model (on the first stage's device), moving each
    /// stage's variables to its device.
    pub fn from_model(
        model: Box<dyn CrimeModel>,
        cfg: TrainConfig,
        pipe: &PipelineConfig,
    ) -> Result<Self> {
        super::fair_training::station_only(&cfg, "the model-parallel trainer")?;
        cfg.validate()?;
        let devices = pipe.devices()?;
        if model.device() != devices[0] {
            return Err(TrainError::Config {
                field: "device",
                reason: format!(
                    "the model is on {:?}, its first stage on {:?}",
                    model.device(),
                    devices[0]
                ),
            });
        }
        let units = model.layers(devices[0]).units();
        let s = pipe.stages;
        if s > units {
            return Err(TrainError::Config {
                field: "stages",
                reason: format!(
                    "{s} stages for a {} of {units} layer units (at most {units})",
                    model.kind()
                ),
            });
        }
        let ranges = stage_units(units, s);
        let stages: Vec<Stage> = ranges
            .into_iter()
            .zip(&devices)
            .map(|(units, &device)| Stage {
                units,
                device,
                layers: model.layers(device),
            })
            .collect();
        let placed = Placed {
            one_device: devices.iter().all(|&d| d == devices[0]),
            inner: model,
            stages,
        };
        if !placed.one_device {
            let layers = &placed.stages[0].layers;
            for (name, mut var) in placed.var_store().variables() {
                let k = placed.stage_of(layers.as_ref(), &name)?;
                let device = placed.stages[k].device;
                if var.device() != device {
                    tch::no_grad(|| var.set_data(&var.to_device(device)));
                }
            }
        }
        Ok(Self {
            model: placed,
            micro_batches: pipe.micro_batches,
            cfg,
            threads: pipe.threads,
            bytes_per_epoch: 0,
            stage_busy: Vec::new(),
        })
    }

    /// Number of stages.
    pub fn stages(&self) -> usize {
        self.model.stages.len()
    }

    /// Micro-batches per batch.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// Each stage's device.
    pub fn stage_devices(&self) -> Vec<Device> {
        self.model.stages.iter().map(|s| s.device).collect()
    }

    /// Each stage's layer units (see [`crate::model::stages`]).
    pub fn stage_units(&self) -> Vec<Range<usize>> {
        self.model.stages.iter().map(|s| s.units.clone()).collect()
    }

    /// Each stage's number of scalar parameters.
    pub fn stage_params(&self) -> Result<Vec<usize>> {
        let mut counts = vec![0; self.stages()];
        let layers = &self.model.stages[0].layers;
        for (name, var) in self.model.var_store().variables() {
            counts[self.model.stage_of(layers.as_ref(), &name)?] += var.numel();
        }
        Ok(counts)
    }

    /// Bytes of activations and gradients the stages passed to each other
    /// in the last epoch trained (0 before the first).
    pub fn bytes_per_epoch(&self) -> u64 {
        self.bytes_per_epoch
    }

    /// Each stage's busy fraction of the last epoch's training time (the
    /// rest it waited for work: the pipeline's bubble and hand-offs); empty
    /// before the first epoch.
    pub fn stage_busy(&self) -> &[f64] {
        &self.stage_busy
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The model (its forward pass runs the stages in turn).
    pub fn model(&self) -> &dyn CrimeModel {
        &self.model
    }

    /// The current parameters.
    pub fn params(&self) -> Params {
        export_params(self.model.var_store())
    }

    /// Loads parameters (names and shapes must match).
    pub fn set_params(&mut self, p: &Params) -> Result<()> {
        import_params(self.model.var_store_mut(), p)?;
        Ok(())
    }

    /// Evaluates the model on a dataset.
    pub fn evaluate(&self, ds: &Dataset) -> Result<Evaluation> {
        evaluate_model(&self.model, ds, self.cfg.eval_batch_size)
    }

    /// Trains on `train` (see [`super::Trainer::fit`]).
    pub fn fit(&mut self, train: &Dataset, val: Option<&Dataset>) -> Result<FitReport> {
        self.fit_observed(train, val, &mut |_| {})
    }

    /// [`PipelineTrainer::fit`], calling `on_epoch` after every epoch.
    pub fn fit_observed(
        &mut self,
        train: &Dataset,
        val: Option<&Dataset>,
        on_epoch: &mut dyn FnMut(&EpochRecord),
    ) -> Result<FitReport> {
        let cfg = self.cfg.clone();
        cfg.validate()?;
        check_task(&self.model, train)?;
        let val = usable_val(val);
        if let Some(v) = val {
            check_task(&self.model, v)?;
        }
        if train.is_empty() {
            return Err(TrainError::EmptySplit { split: "train" });
        }
        let s = self.stages();
        tch::manual_seed(cfg.seed as i64);
        let mut opt =
            nn::adam(0.9, 0.999, cfg.weight_decay).build(self.model.var_store(), cfg.lr)?;
        let trainable = self.model.var_store().trainable_variables();
        let mut orders = EpochOrder::new(train.len(), cfg.seed);
        let mut selection = Selection::new(&cfg);
        let steps = train.len().div_ceil(cfg.batch_size);
        let class_weights = self.share_weights();
        let counters = Counters::new(s);
        let mut last_bytes = 0;
        let mut busy = vec![0.0; s];
        let outcome = self.with_stages(&counters, |pipe| {
            for epoch in 1..=cfg.epochs {
                let t0 = Instant::now();
                let pb = epoch_bar(cfg.progress, steps, epoch, cfg.epochs);
                let loss_sum = Tensor::zeros([], (Kind::Double, pipe.loss_device));
                counters.reset();
                let plan = BatchPlan {
                    batch_size: cfg.batch_size,
                    parts: self.micro_batches,
                    loaders: cfg.loader_threads,
                    prefetch: cfg.prefetch,
                    class_weights: class_weights.as_deref(),
                };
                for_each_split_batch(train, orders.next(), plan, |lb| {
                    let n = lb.len() as f64;
                    opt.zero_grad();
                    let loss = pipe.run_batch(lb)?;
                    if let Some(c) = cfg.max_grad_norm {
                        if self.model.one_device {
                            opt.clip_grad_norm(c);
                        } else {
                            clip_grad_norm(&trainable, c)?;
                        }
                    }
                    opt.step();
                    tch::no_grad(|| {
                        let _ = loss_sum.shallow_clone().g_add_(&(loss * n));
                    });
                    pb.inc(1);
                    Ok(())
                })?;
                let train_secs = t0.elapsed().as_secs_f64();
                pb.finish_and_clear();
                last_bytes = counters.bytes.load(Ordering::Relaxed);
                busy = counters
                    .busy_ns
                    .iter()
                    .map(|ns| ns.load(Ordering::Relaxed) as f64 * 1e-9 / train_secs.max(1e-9))
                    .collect();
                let train_loss = epoch_train_loss(&loss_sum, train.len(), epoch)?;
                let eval = match val {
                    Some(v) => Some(pipe.outside(|| self.evaluate(v))?),
                    None => None,
                };
                let (record, stopping) = selection.record(
                    self.model.var_store(),
                    (epoch, train_loss),
                    eval,
                    (train.len(), train_secs, t0.elapsed().as_secs_f64()),
                );
                tracing::info!(
                    epoch,
                    stages = s,
                    micro_batches = self.micro_batches,
                    train_loss,
                    val_loss = record.val_loss,
                    samples_per_sec = record.samples_per_sec,
                    bytes_between_stages = last_bytes,
                    stage_busy = ?busy,
                    "epoch done"
                );
                if selection.keep(record, stopping, on_epoch) {
                    break;
                }
            }
            Ok(())
        });
        self.bytes_per_epoch = last_bytes;
        self.stage_busy = busy;
        outcome?;
        Ok(selection.finish().0)
    }
}

impl PipelineTrainer {
    /// The class weights micro-batches are weighed by: a weighted
    /// cross-entropy normalizes by the batch's total class weight.
    fn share_weights(&self) -> Option<Vec<f32>> {
        match self.model.task() {
            Task::Risk => self.model.config().class_weights.clone(),
            Task::Counts => None,
        }
    }

    /// Runs `body` with the stage threads started (each CPU stage with its
    /// share of the intra-op threads), counting the bytes they pass to each
    /// other and their busy time in `counters`; stops them afterwards.
    fn with_stages<R>(
        &self,
        counters: &Counters,
        body: impl FnOnce(&Pipe) -> Result<R>,
    ) -> Result<R> {
        let s = self.stages();
        let total = self
            .threads
            .unwrap_or(tch::get_num_threads().max(1) as usize);
        let per_stage = stage_threads(total, &self.stage_params()?);
        let links: Vec<(Sender<StageMsg>, Receiver<StageMsg>)> =
            (0..s).map(|_| mpsc::channel()).collect();
        let senders: Vec<Sender<StageMsg>> = links.iter().map(|(tx, _)| tx.clone()).collect();
        let worker = |k: usize| {
            let stage = &self.model.stages[k];
            StageWorker {
                k,
                last: k + 1 == s,
                units: stage.units.clone(),
                device: stage.device,
                layers: self.model.inner.layers(stage.device),
                next: senders.get(k + 1).cloned(),
                prev: k.checked_sub(1).map(|p| senders[p].clone()),
                counters,
                pending: VecDeque::new(),
                batch_loss: None,
            }
        };
        let mut inboxes = links.into_iter().map(|(_, rx)| rx);
        let Some(inbox0) = inboxes.next() else {
            unreachable!("a pipeline has at least one stage")
        };
        // Stage 0 runs on this thread, with a stage's share of the threads.
        let cpu0 = self.model.stages[0].device == Device::Cpu;
        let before = tch::get_num_threads();
        if cpu0 {
            tch::set_num_threads(per_stage[0]);
        }
        let outcome = std::thread::scope(|scope| {
            let mut handles = Vec::with_capacity(s - 1);
            let mut spawned = Ok(());
            for (k, inbox) in (1..s).zip(inboxes) {
                let w = worker(k);
                let cpu = w.device == Device::Cpu;
                let threads = per_stage[k];
                let stage0 = senders[0].clone();
                let handle = std::thread::Builder::new()
                    .name(format!("fedcrime-stage-{k}"))
                    .spawn_scoped(scope, move || {
                        // libtorch's thread settings are partly per thread
                        // (OpenMP's team size): set this stage's budget here.
                        if cpu {
                            tch::set_num_threads(threads);
                        }
                        w.run(inbox, stage0);
                    });
                match handle {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        spawned = Err(TrainError::Io {
                            path: "<pipeline stage thread>".into(),
                            source: e,
                        });
                        break;
                    }
                }
            }
            let pipe = Pipe {
                stage0: std::cell::RefCell::new(worker(0)),
                inbox: inbox0,
                senders: senders.clone(),
                loss_device: self.model.stages[s - 1].device,
                threads: (cpu0.then_some(per_stage[0]), before),
            };
            let outcome = spawned.and_then(|()| body(&pipe));
            // A stage that already ended (it failed) no longer receives.
            for tx in &pipe.senders[1..] {
                let _ = tx.send(StageMsg::Stop);
            }
            let mut joined = Ok(());
            for h in handles {
                if h.join().is_err() {
                    joined = Err(Pipe::lost());
                }
            }
            outcome.and_then(|r| joined.map(|()| r))
        });
        if cpu0 {
            tch::set_num_threads(before);
        }
        outcome
    }

    /// The gradient of one batch (`indices` of `ds`) through the pipeline,
    /// left in the variables (zeroed first); returns the batch's loss.
    #[cfg(test)]
    fn batch_gradient(&self, ds: &Dataset, indices: &[usize]) -> Result<f64> {
        let weights = self.share_weights();
        let lb = super::loader::assemble(ds, indices, self.micro_batches, weights.as_deref());
        for v in self.model.var_store().trainable_variables() {
            let mut v = v;
            v.zero_grad();
        }
        let counters = Counters::new(self.stages());
        let loss = self.with_stages(&counters, |pipe| pipe.run_batch(lb))?;
        Ok(f64::try_from(loss)?)
    }
}

/// The coordinating thread's side of running stages: stage 0 itself and
/// the links to the others.
struct Pipe<'a> {
    stage0: std::cell::RefCell<StageWorker<'a>>,
    /// Stage 0's inbox: gradients from stage 1, failures.
    inbox: Receiver<StageMsg>,
    senders: Vec<Sender<StageMsg>>,
    /// Where the last stage computes the loss.
    loss_device: Device,
    /// Stage 0's intra-op threads (when on the CPU) and this thread's
    /// own, for work between batches (evaluation).
    threads: (Option<i32>, i32),
}

impl Pipe<'_> {
    fn lost() -> TrainError {
        TrainError::Worker("pipeline stage")
    }

    /// Runs `f` with this thread's own intra-op threads instead of stage 0's.
    fn outside<R>(&self, f: impl FnOnce() -> R) -> R {
        let (stage, own) = self.threads;
        if stage.is_some() {
            tch::set_num_threads(own);
        }
        let r = f();
        if let Some(t) = stage {
            tch::set_num_threads(t);
        }
        r
    }

    /// Sends a batch's micro-batches through the stages and waits until
    /// their gradients have accumulated in the variables; returns the
    /// batch's loss (f64, on the last stage's device).
    fn run_batch(&self, lb: super::loader::LoadedBatch) -> Result<Tensor> {
        // Parts are empty only at the end (a batch smaller than M).
        let count = lb.parts.iter().filter(|p| p.is_some()).count();
        let mut stage0 = self.stage0.borrow_mut();
        let mut finished = None;
        for (m, (part, &share)) in lb.parts.into_iter().zip(&lb.shares).enumerate() {
            let Some(batch) = part else { continue };
            let msg = StageMsg::Forward {
                m,
                count,
                batch,
                carried: Vec::new(),
                share,
            };
            match stage0.handle(msg) {
                Step::Continue => {}
                Step::Finished(loss) => finished = Some(loss),
                Step::Closed => return Err(Self::lost()),
            }
        }
        if count == 0 {
            return Ok(Tensor::zeros([], (Kind::Double, self.loss_device)));
        }
        // One stage: its last forward pass finished the batch.
        if let Some(loss) = finished {
            return Ok(loss);
        }
        loop {
            let msg = recv(&self.inbox).ok_or_else(Self::lost)?;
            match stage0.handle(msg) {
                Step::Continue => {}
                Step::Finished(loss) => return Ok(loss),
                Step::Closed => return Err(Self::lost()),
            }
        }
    }
}

impl Placed {
    /// The stage variable `name` belongs to (`layers`: any stage's view).
    fn stage_of(&self, layers: &dyn Layers, name: &str) -> Result<usize> {
        let unit = layers.unit_of(name).ok_or_else(|| TrainError::Config {
            field: "stages",
            reason: format!("variable {name} belongs to no layer unit of the model"),
        })?;
        Ok(self
            .stages
            .iter()
            .position(|s| s.units.contains(&unit))
            .unwrap_or(self.stages.len() - 1))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{graph_dataset, test_util::one_thread, to_batch, GraphWindows};
    use crate::train::{test_data, Trainer};

    use crate::train::test_data::fast_config as cfg;

    fn pipe(stages: usize, micro_batches: usize) -> PipelineConfig {
        PipelineConfig {
            stages,
            micro_batches,
            device: DeviceChoice::Cpu,
            threads: Some(1),
        }
    }

    /// 16 graph samples of 21 areas (LAPD's graph), 3 categories, 4 steps.
    fn graph() -> Dataset {
        let (areas, times, cats) = (21, 20, 3);
        let counts: Vec<f32> = (0..areas * times * cats)
            .map(|i| ((i * 7 + i / 11) % 5) as f32)
            .collect();
        let windows = GraphWindows {
            steps: 4,
            weekday: false,
        };
        graph_dataset(
            &counts,
            areas,
            times,
            cats,
            0,
            0..times as u32,
            &[2.0; 21 * 3],
            &windows,
        )
        .unwrap()
    }

    /// A small model of each kind with its data, dropout off.
    fn cases() -> Vec<(Box<dyn CrimeModel>, Dataset)> {
        let risk = test_data::risk(40, 5, 3);
        let counts = test_data::counts(40, 3, 2, 4);
        let g = graph();
        let mut gcfg = ModelConfig::for_dataset(ModelKind::GatTcn, &g);
        gcfg.hidden = 8;
        gcfg.heads = 2;
        gcfg.dropout = 0.0;
        tch::manual_seed(5);
        let gat = build(&gcfg, Device::Cpu).unwrap();
        let mut lcfg = ModelConfig::for_dataset(ModelKind::Lstm, &counts);
        lcfg.hidden = 8;
        lcfg.layers = 2;
        lcfg.dropout = 0.0;
        tch::manual_seed(6);
        let lstm = build(&lcfg, Device::Cpu).unwrap();
        vec![
            (test_data::model(ModelKind::Dnn, &risk, 12, 0.0, 4), risk),
            (lstm, counts),
            (gat, g),
        ]
    }

    /// The gradients of a model's variables, by name.
    fn grads(m: &dyn CrimeModel) -> BTreeMap<String, Tensor> {
        m.var_store()
            .variables()
            .into_iter()
            .map(|(name, v)| (name, v.grad().copy()))
            .collect()
    }

    /// The single worker's gradient of the batch `indices`.
    fn plain_grads(
        m: &dyn CrimeModel,
        ds: &Dataset,
        indices: &[usize],
    ) -> BTreeMap<String, Tensor> {
        let b = to_batch(ds, indices, Device::Cpu);
        for mut v in m.var_store().trainable_variables() {
            v.zero_grad();
        }
        m.loss(&m.forward_t(&b, true), &b).backward();
        grads(m)
    }

    /// The largest difference between two gradient sets, relative to the
    /// largest gradient value.
    fn rel_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        let (mut diff, mut scale) = (0.0f64, 0.0f64);
        for (name, ga) in a {
            let gb = &b[name];
            assert!(ga.defined() && gb.defined(), "{name} has no gradient");
            diff = diff.max(f64::try_from((ga - gb).abs().max()).unwrap());
            scale = scale.max(f64::try_from(ga.abs().max()).unwrap());
        }
        diff / scale.max(1e-12)
    }

    fn max_abs_diff(a: &Params, b: &Params) -> f32 {
        a.data()
            .iter()
            .zip(b.data())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn stages_split_units_contiguously_middle_first() {
        assert_eq!(stage_units(2, 2), vec![0..1, 1..2]);
        assert_eq!(stage_units(4, 2), vec![0..2, 2..4]);
        assert_eq!(stage_units(5, 2), vec![0..3, 3..5]);
        // gat-tcn: graph attention | 3 TCN blocks | head.
        assert_eq!(stage_units(5, 3), vec![0..1, 1..4, 4..5]);
        assert_eq!(stage_units(4, 3), vec![0..1, 1..3, 3..4]);
        assert_eq!(stage_units(6, 4), vec![0..1, 1..3, 3..5, 5..6]);
        assert_eq!(stage_units(7, 3), vec![0..2, 2..5, 5..7]);
        assert_eq!(stage_units(3, 1), vec![0..3]);
        assert_eq!(stage_units(4, 4), vec![0..1, 1..2, 2..3, 3..4]);
    }

    #[test]
    fn stage_gradients_equal_the_single_workers() {
        one_thread();
        for (m, ds) in cases() {
            let kind = m.kind();
            let units = m.layers(Device::Cpu).units();
            let idx: Vec<usize> = (0..ds.len().min(13)).collect();
            let want = plain_grads(m.as_ref(), &ds, &idx);
            for stages in 1..=units {
                for micro in [1, 3] {
                    let t = PipelineTrainer::from_model(
                        test_data::copy(m.as_ref()),
                        cfg(1, 16),
                        &pipe(stages, micro),
                    )
                    .unwrap();
                    t.batch_gradient(&ds, &idx).unwrap();
                    let d = rel_diff(&want, &grads(t.model()));
                    assert!(
                        d < 1e-5,
                        "{kind}, {stages} stages, {micro} micro-batches: {d}"
                    );
                    if micro == 1 && kind == ModelKind::Dnn {
                        // One micro-batch: the same operations, bit for bit.
                        assert_eq!(d, 0.0, "{kind}, {stages} stages");
                    }
                }
            }
        }
    }

    #[test]
    fn micro_batches_sum_to_the_whole_batch() {
        one_thread();
        for (m, ds) in cases() {
            let kind = m.kind();
            let idx: Vec<usize> = (0..ds.len().min(14)).rev().collect();
            let one =
                PipelineTrainer::from_model(test_data::copy(m.as_ref()), cfg(1, 16), &pipe(2, 1))
                    .unwrap();
            let four =
                PipelineTrainer::from_model(test_data::copy(m.as_ref()), cfg(1, 16), &pipe(2, 4))
                    .unwrap();
            let l1 = one.batch_gradient(&ds, &idx).unwrap();
            let l4 = four.batch_gradient(&ds, &idx).unwrap();
            assert!(
                (l1 - l4).abs() < 1e-5 * l1.abs().max(1.0),
                "{kind}: {l1} vs {l4}"
            );
            let d = rel_diff(&grads(one.model()), &grads(four.model()));
            assert!(d < 1e-5, "{kind}: {d}");
        }
    }

    #[test]
    fn class_weighted_risk_micro_batches_are_weighed_by_class_weight() {
        one_thread();
        let train = test_data::risk(50, 5, 13);
        let mut mcfg = ModelConfig::for_dataset(ModelKind::Dnn, &train);
        mcfg.hidden = 12;
        mcfg.dropout = 0.0;
        mcfg.class_weights = crate::train::ClassWeighting::Balanced.weights(&train);
        tch::manual_seed(21);
        let m = build(&mcfg, Device::Cpu).unwrap();
        let idx: Vec<usize> = (0..23).collect();
        let want = plain_grads(m.as_ref(), &train, &idx);
        let t = PipelineTrainer::from_model(test_data::copy(m.as_ref()), cfg(1, 32), &pipe(3, 4))
            .unwrap();
        t.batch_gradient(&train, &idx).unwrap();
        let d = rel_diff(&want, &grads(t.model()));
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn a_short_fit_matches_the_station_trainer() {
        one_thread();
        for (m, ds) in cases() {
            let kind = m.kind();
            // Validation on the training samples: early stopping and the
            // best epoch follow the same losses.
            let (train, val) = (&ds, &ds);
            let c = TrainConfig {
                patience: 2,
                ..cfg(3, 8)
            };
            let mut t =
                PipelineTrainer::from_model(test_data::copy(m.as_ref()), c.clone(), &pipe(2, 3))
                    .unwrap();
            let mut plain = Trainer::new(m, c).unwrap();
            let r1 = plain.fit(train, Some(val)).unwrap();
            let mut seen = 0;
            let r2 = t
                .fit_observed(train, Some(val), &mut |_| seen += 1)
                .unwrap();
            assert_eq!(seen, r2.epochs.len());
            let d = max_abs_diff(&plain.params(), &t.params());
            assert!(d < 1e-4, "{kind}: max difference {d}");
            assert_eq!(r1.epochs.len(), r2.epochs.len(), "{kind}");
            assert_eq!(r1.best_epoch, r2.best_epoch, "{kind}");
            for (a, b) in r1.epochs.iter().zip(&r2.epochs) {
                assert!((a.train_loss - b.train_loss).abs() < 1e-4, "{kind}");
            }
            let e1 = plain.evaluate(val).unwrap();
            let e2 = t.evaluate(val).unwrap();
            assert!((e1.loss - e2.loss).abs() < 1e-4, "{kind}");
            // Activations forward and gradients back: twice the boundary's
            // values per sample and epoch.
            assert!(t.bytes_per_epoch() > 0, "{kind}");
            let per_stage = t.stage_params().unwrap();
            assert_eq!(per_stage.iter().sum::<usize>(), t.model().num_params());
            assert!(per_stage.iter().all(|&n| n > 0), "{kind}: {per_stage:?}");
        }
    }

    #[test]
    fn bytes_count_the_boundary_activations_and_gradients() {
        one_thread();
        // dnn, 3 hidden layers of 12, two stages: the boundary carries
        // [b, 12] f32 each way.
        let train = test_data::risk(20, 5, 3);
        let m = test_data::model(ModelKind::Dnn, &train, 12, 0.0, 4);
        let mut t = PipelineTrainer::from_model(m, cfg(1, 8), &pipe(2, 2)).unwrap();
        assert_eq!(t.bytes_per_epoch(), 0);
        t.fit(&train, None).unwrap();
        assert_eq!(t.bytes_per_epoch(), 20 * 12 * 4 * 2);
        assert_eq!(t.stage_units(), vec![0..2, 2..4]);
        assert_eq!(t.stage_busy().len(), 2);
        assert!(
            t.stage_busy().iter().all(|&b| b > 0.0 && b <= 1.0),
            "{:?}",
            t.stage_busy()
        );
        assert_eq!(t.stage_devices(), vec![Device::Cpu; 2]);
    }

    #[test]
    fn bad_configs_name_the_field() {
        one_thread();
        let train = test_data::risk(8, 4, 1);
        let m = || test_data::model(ModelKind::Dnn, &train, 8, 0.0, 2);
        let err = |p: PipelineConfig| {
            PipelineTrainer::from_model(m(), cfg(1, 4), &p)
                .err()
                .expect("a config error")
                .to_string()
        };
        // dnn with 3 hidden layers: 4 units.
        let e = err(pipe(5, 2));
        assert!(e.contains("stages") && e.contains("at most 4"), "{e}");
        let e = err(pipe(0, 2));
        assert!(e.contains("stages"), "{e}");
        let e = err(pipe(2, 0));
        assert!(e.contains("micro_batches"), "{e}");
        if crate::device::cuda_devices() < 2 {
            let p = PipelineConfig {
                device: DeviceChoice::Cuda(0),
                ..pipe(2, 2)
            };
            let e = PipelineTrainer::new(m().config(), cfg(1, 4), &p)
                .err()
                .expect("too few devices")
                .to_string();
            assert!(e.contains("stages") && e.contains("CUDA"), "{e}");
        }
        assert!(PipelineTrainer::from_model(m(), cfg(1, 4), &pipe(4, 2)).is_ok());
    }

    #[test]
    fn threads_follow_the_stages_parameters() {
        assert_eq!(stage_threads(2, &[70_000, 1_500]), vec![2, 1]);
        assert_eq!(stage_threads(2, &[24_000, 17_000]), vec![1, 1]);
        assert_eq!(stage_threads(8, &[1, 1, 2]), vec![2, 2, 4]);
        assert_eq!(stage_threads(1, &[0, 0]), vec![1, 1]);
    }

    #[test]
    fn a_config_reads_from_toml_with_defaults() {
        let p: PipelineConfig = toml::from_str("stages = 3").unwrap();
        assert_eq!(p.stages, 3);
        assert_eq!(p.micro_batches, 2);
        assert_eq!(p.device, DeviceChoice::Auto);
        assert!(toml::from_str::<PipelineConfig>("stage = 3").is_err());
    }
}
