//! Centralized data-parallel training: the baseline federated learning is
//! compared against, using every device of one machine.
//!
//! `W` replicas of the model hold identical parameters: one per CUDA device
//! when several exist, else `W` CPU workers that share the cores (libtorch's
//! intra-op threads are divided among them). Each step the batch is split into
//! `W` contiguous parts; every replica runs forward and backward on its part in
//! its own thread (replica 0 on the calling thread); the gradients are averaged
//! into replica 0, weighted by part size (by the part's total class weight for
//! a class-weighted cross-entropy) so the result is the full-batch gradient;
//! every replica copies it and takes the same optimizer step in its own
//! thread, so the replicas stay identical without a parameter broadcast (one
//! re-synchronization per epoch guards against devices whose arithmetic is
//! not bit-reproducible).
//!
//! With `W = 1` this is exactly the [`Trainer`](super::Trainer)'s arithmetic
//! (same shuffling, same seeds, same operations). With `W > 1` results match
//! full-batch training up to floating-point summation order; dropout draws
//! from libtorch's shared generator in whatever order the threads run, so runs
//! with dropout are not bit-reproducible across `W > 1`.

use std::sync::mpsc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use super::loader::{for_each_batch, BatchPlan};
use super::trainer::{
    batch_to, check_task, epoch_bar, epoch_train_loss, evaluate_model, restore_best, track_best,
    usable_val, EarlyStop, EpochOrder, EpochRecord, Evaluation, FitReport, Snapshot, TrainConfig,
};
use super::{Result, TrainError};
use crate::model::{build, export_params, import_params, Batch, CrimeModel, ModelConfig};
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
        let w = self.workers;
        if w == 0 {
            return Err(TrainError::Config {
                field: "workers",
                reason: "must be at least 1".into(),
            });
        }
        let cuda = tch::Cuda::device_count().max(0) as usize;
        let first = match self.device {
            DeviceChoice::Cpu => return Ok(vec![Device::Cpu; w]),
            DeviceChoice::Auto if cuda == 0 => return Ok(vec![Device::Cpu; w]),
            DeviceChoice::Auto => 0,
            DeviceChoice::Cuda(n) => n,
        };
        if first + w > cuda {
            return Err(TrainError::Config {
                field: "workers",
                reason: format!(
                    "{w} replica(s) from cuda:{first} need {} CUDA device(s), {cuda} present",
                    first + w
                ),
            });
        }
        Ok((first..first + w).map(Device::Cuda).collect())
    }
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

    /// Overwrites this replica's gradients with `reduced`'s (replica 0's
    /// trainable variables, same order).
    fn copy_grads_from(&mut self, reduced: &[Tensor]) {
        // A replica that has not run a backward pass yet (its parts were all
        // empty) has no gradient tensors: a zero loss creates them.
        let missing: Vec<&Tensor> = self
            .trainable
            .iter()
            .zip(reduced)
            .filter(|(v, src)| !v.grad().defined() && src.grad().defined())
            .map(|(v, _)| v)
            .collect();
        if !missing.is_empty() {
            let zero = missing
                .iter()
                .map(|v| (*v * 0.0).sum(Kind::Float))
                .fold(Tensor::zeros([], (Kind::Float, self.device)), |a, b| a + b);
            zero.backward();
        }
        tch::no_grad(|| {
            for (v, src) in self.trainable.iter().zip(reduced) {
                let g = src.grad();
                if g.defined() {
                    v.grad().copy_(&g);
                }
            }
        });
    }

    /// Forward and backward on a batch; leaves the gradient in the variables
    /// and returns the (detached) loss.
    fn compute(&mut self, b: Batch) -> Tensor {
        let b = batch_to(b, self.device);
        let out = self.model.forward_t(&b, true);
        let loss = self.model.loss(&out, &b);
        for v in &mut self.trainable {
            v.zero_grad();
        }
        loss.backward();
        loss.detach()
    }
}

/// What the coordinating thread asks a worker replica to do.
enum ToWorker {
    /// Forward and backward on this part of the batch; answer with the loss.
    Compute(Batch),
    /// Copy replica 0's reduced gradient, answer, then take the optimizer step.
    Step,
}

/// A worker replica's answer.
enum FromWorker {
    /// The part's (detached) loss; the gradient is in the replica's variables.
    Loss(Tensor),
    /// The reduced gradient has been copied (the step is under way).
    Copied,
}

/// Shallow handles on a replica's variables (same storage, same gradients).
struct ReplicaView {
    trainable: Vec<Tensor>,
    all: Vec<Tensor>,
}

impl ReplicaView {
    fn of(r: &Replica) -> Self {
        Self {
            trainable: r.trainable.iter().map(Tensor::shallow_clone).collect(),
            all: r.all.iter().map(Tensor::shallow_clone).collect(),
        }
    }
}

/// Replaces replica 0's gradient (of its part's loss, share `w0`) by the
/// share-weighted average over the active replicas `(index into views,
/// share)`: the gradient of the whole batch's loss. A running weighted mean
/// (`g += w_k / W_k * (g_k - g)`, one fused `lerp_` per replica and tensor),
/// so no temporaries are allocated.
fn reduce_grads(master: &Replica, views: &[ReplicaView], active: &[(usize, f64)], w0: f64) {
    tch::no_grad(|| {
        for (j, v0) in master.trainable.iter().enumerate() {
            let mut g0 = v0.grad();
            if !g0.defined() {
                continue;
            }
            let mut acc = w0;
            for &(k, wk) in active {
                let gk = views[k].trainable[j].grad();
                if !gk.defined() || wk <= 0.0 {
                    continue;
                }
                acc += wk;
                let gk = gk.to_device(master.device);
                let _ = g0.lerp_(&gk, wk / acc);
            }
        }
    });
}

/// The largest absolute difference between replica 0's variables and any
/// other replica's.
fn max_drift(master: &Replica, views: &[ReplicaView]) -> f64 {
    tch::no_grad(|| {
        views
            .iter()
            .flat_map(|v| v.all.iter().zip(&master.all))
            .map(|(a, b)| {
                let d = (a.to_device(master.device) - b).abs().max();
                f64::try_from(d).unwrap_or(f64::INFINITY)
            })
            .fold(0.0, f64::max)
    })
}

/// Copies replica 0's variables into the other replicas.
fn broadcast_to(master: &Replica, views: &[ReplicaView]) {
    tch::no_grad(|| {
        for v in views {
            for (dst, src) in v.all.iter().zip(&master.all) {
                dst.shallow_clone().copy_(src);
            }
        }
    });
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
    /// when every replica's steps were bit-identical, as on the CPU).
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

    /// Copies replica 0's variables into the others.
    fn broadcast(&self) {
        let views: Vec<ReplicaView> = self.replicas[1..].iter().map(ReplicaView::of).collect();
        broadcast_to(&self.replicas[0], &views);
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
        let adam = nn::adam(0.9, 0.999, cfg.weight_decay);
        let mut opt = adam.build(self.replicas[0].model.var_store(), cfg.lr)?;
        let mut worker_opts = self.replicas[1..]
            .iter()
            .map(|r| adam.build(r.model.var_store(), cfg.lr))
            .collect::<Result<Vec<_>, _>>()?;
        let mut orders = EpochOrder::new(train.len(), cfg.seed);
        let mut stop = EarlyStop::new(cfg.patience, cfg.min_delta);
        let mut snapshot: Option<Snapshot> = None;
        let mut report = FitReport::default();
        let steps = train.len().div_ceil(cfg.batch_size);
        let device0 = self.replicas[0].device;
        // A weighted cross-entropy normalizes by the batch's total class
        // weight, so parts are weighed by their class weight, not their size.
        let class_weights = match self.model().task() {
            fedcrime_data::Task::Risk => self.model().config().class_weights.clone(),
            fedcrime_data::Task::Counts => None,
        };

        for epoch in 1..=cfg.epochs {
            let t0 = Instant::now();
            let pb = epoch_bar(cfg.progress, steps, epoch, cfg.epochs);
            let loss_sum = Tensor::zeros([], (Kind::Double, device0));
            let order = orders.next();
            let (first, rest) = self.replicas.split_at_mut(1);
            let master = &mut first[0];
            // Handles on the other replicas' variables, for the reduction
            // (their workers are idle while it runs).
            let views: Vec<ReplicaView> = rest.iter().map(ReplicaView::of).collect();
            std::thread::scope(|s| -> Result<()> {
                // One worker thread per extra replica, fed through a channel.
                let mut links = Vec::with_capacity(rest.len());
                for (r, opt_k) in rest.iter_mut().zip(worker_opts.iter_mut()) {
                    let (tx, rx) = mpsc::sync_channel::<ToWorker>(2);
                    let (rtx, rrx) = mpsc::sync_channel::<FromWorker>(1);
                    // The reduced gradient lives in replica 0's variables.
                    let reduced: Vec<Tensor> =
                        master.trainable.iter().map(Tensor::shallow_clone).collect();
                    let handle = std::thread::Builder::new()
                        .name("fedcrime-replica".into())
                        .spawn_scoped(s, move || {
                            // libtorch's thread settings are partly per thread
                            // (OpenMP's team size, MKL's local thread count): a
                            // new thread would otherwise use every core and
                            // the workers would oversubscribe the machine.
                            if let Some(t) = threads {
                                tch::set_num_threads(t);
                            }
                            while let Ok(msg) = rx.recv() {
                                let reply = match msg {
                                    ToWorker::Compute(b) => FromWorker::Loss(r.compute(b)),
                                    ToWorker::Step => {
                                        r.copy_grads_from(&reduced);
                                        // Replica 0 may overwrite its gradient once
                                        // every copy is done; the step runs meanwhile.
                                        if rtx.send(FromWorker::Copied).is_err() {
                                            break;
                                        }
                                        opt_k.step();
                                        continue;
                                    }
                                };
                                if rtx.send(reply).is_err() {
                                    break;
                                }
                            }
                        })
                        .map_err(|e| TrainError::Io {
                            path: "<replica thread>".into(),
                            source: e,
                        })?;
                    links.push((tx, rrx, handle));
                }
                let plan = BatchPlan {
                    batch_size: cfg.batch_size,
                    parts: w,
                    prefetch: cfg.prefetch,
                    class_weights: class_weights.as_deref(),
                };
                let lost = || TrainError::Worker("replica");
                let outcome = for_each_batch(train, order, plan, |lb| {
                    let n = lb.len() as f64;
                    let sizes = lb.sizes;
                    let shares = lb.shares;
                    let mut parts = lb.parts.into_iter();
                    let Some(Some(b0)) = parts.next() else {
                        return Ok(());
                    };
                    // Hand the other parts out first so they run while replica 0 computes.
                    for ((tx, _, _), part) in links.iter().zip(parts) {
                        if let Some(b) = part {
                            tx.send(ToWorker::Compute(b)).map_err(|_| lost())?;
                        }
                    }
                    let b0 = batch_to(b0, master.device);
                    let out = master.model.forward_t(&b0, true);
                    let loss0 = master.model.loss(&out, &b0);
                    opt.zero_grad();
                    loss0.backward();
                    let w0 = shares[0];
                    let mut loss = loss0.detach().to_kind(Kind::Double) * w0;
                    let mut active = Vec::with_capacity(links.len());
                    for (k, (_, rx, _)) in links.iter().enumerate() {
                        if sizes[k + 1] > 0 {
                            let FromWorker::Loss(lk) = rx.recv().map_err(|_| lost())? else {
                                return Err(lost());
                            };
                            let wk = shares[k + 1];
                            loss += lk.to_device(master.device).to_kind(Kind::Double) * wk;
                            active.push((k, wk));
                        }
                    }
                    if !active.is_empty() {
                        reduce_grads(master, &views, &active, w0);
                    }
                    if let Some(c) = cfg.max_grad_norm {
                        opt.clip_grad_norm(c);
                    }
                    // Every replica takes the same step from the same gradient,
                    // in parallel: the replicas stay identical without a broadcast.
                    for (tx, _, _) in &links {
                        tx.send(ToWorker::Step).map_err(|_| lost())?;
                    }
                    for (_, rx, _) in &links {
                        if !matches!(rx.recv(), Ok(FromWorker::Copied)) {
                            return Err(lost());
                        }
                    }
                    opt.step();
                    tch::no_grad(|| {
                        let _ = loss_sum.shallow_clone().g_add_(&(loss * n));
                    });
                    pb.inc(1);
                    Ok(())
                });
                // Dropping the senders ends the workers (after their last step).
                let mut joined = Ok(());
                for (tx, rx, h) in links {
                    drop((tx, rx));
                    if h.join().is_err() {
                        joined = Err(lost());
                    }
                }
                outcome.and(joined)
            })?;
            // Re-synchronize once per epoch, in case a device's arithmetic is
            // not bit-reproducible (identical steps keep CPU replicas equal).
            self.drift = max_drift(&self.replicas[0], &views);
            if self.drift > 0.0 {
                tracing::debug!(epoch, drift = self.drift, "replicas re-synchronized");
            }
            broadcast_to(&self.replicas[0], &views);
            let train_secs = t0.elapsed().as_secs_f64();
            pb.finish_and_clear();
            let train_loss = epoch_train_loss(&loss_sum, train.len(), epoch)?;
            let eval = match val {
                Some(v) => Some(self.evaluate(v)?),
                None => None,
            };
            let stopping = track_best(
                &mut stop,
                &mut snapshot,
                self.model().var_store(),
                (epoch, cfg.epochs),
                cfg.monitor,
                eval.as_ref(),
            );
            let record = EpochRecord {
                epoch,
                train_loss,
                val_loss: eval.as_ref().map(|e| e.loss),
                val_metrics: eval.map(|e| e.metrics),
                samples_per_sec: train.len() as f64 / train_secs.max(1e-9),
                seconds: t0.elapsed().as_secs_f64(),
            };
            tracing::info!(
                epoch,
                workers = w,
                train_loss,
                val_loss = record.val_loss,
                samples_per_sec = record.samples_per_sec,
                "epoch done"
            );
            on_epoch(&record);
            report.epochs.push(record);
            if stopping && epoch < cfg.epochs {
                report.stopped_early = true;
                break;
            }
        }
        if restore_best(&stop, snapshot.as_ref(), &mut report) {
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

    fn cfg(epochs: usize, batch_size: usize) -> TrainConfig {
        TrainConfig {
            epochs,
            batch_size,
            patience: 0,
            lr: 1e-2,
            ..TrainConfig::default()
        }
    }

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
        if tch::Cuda::device_count() == 0 {
            let cuda = ParallelConfig {
                device: DeviceChoice::Cuda(0),
                ..par
            };
            assert!(cuda.devices().unwrap_err().to_string().contains("CUDA"));
        }
    }
}
