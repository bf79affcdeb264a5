//! Mini-batches, assembled by loader threads while the model trains or by
//! the training threads themselves.
//!
//! A batch is the next `batch_size` rows of the epoch's sample order,
//! gathered into CPU tensors (through [`crate::model::to_batch`], so every
//! model gets the layout it expects) and split into one part per replica of
//! the data-parallel trainer (one part for the others). With `loaders`
//! background threads (multi-threaded loading), loader `l` assembles every
//! `loaders`-th batch and hands its parts over bounded channels: a trainer
//! never waits for a batch unless assembly is slower than training, and at
//! most `prefetch` batches per loader are in memory ahead of it. With none,
//! each training thread assembles its own part of each batch when it needs
//! it: no hand-off and no extra thread competing for the cores, the better
//! choice when every core already trains.

use std::sync::mpsc;

use tch::Device;

use super::{Result, TrainError};
use crate::model::{to_batch, Batch};
use fedcrime_data::{Dataset, Target};

/// One training step's data: the batch split into parts (one per replica).
#[derive(Debug)]
pub struct LoadedBatch {
    /// The parts, in order; a part is `None` when the batch has fewer samples
    /// than there are parts.
    pub parts: Vec<Option<Batch>>,
    /// Samples in each part.
    pub sizes: Vec<usize>,
    /// Each part's share of the batch's loss normalizer: its sample count,
    /// or with class weights its total class weight (weighted cross-entropy
    /// divides by the sum of the weights), over the batch's total.
    pub shares: Vec<f64>,
}

impl LoadedBatch {
    /// Samples in the whole batch.
    pub fn len(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The sample ranges of `parts` contiguous, near-equal parts of `n` samples
/// (sizes differ by at most one, larger parts first, so the first part is
/// empty only when `n` is 0).
pub(crate) fn split_ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    let (q, r) = (n / parts, n % parts);
    let start = |k: usize| k * q + k.min(r);
    (0..parts).map(|k| start(k)..start(k + 1)).collect()
}

/// Assembles the batch of `indices` (rows of `ds`), split into `parts`, on
/// the CPU. `class_weights` (of a weighted cross-entropy) decide the parts'
/// shares; without them a part's share is its fraction of the samples.
pub fn assemble(
    ds: &Dataset,
    indices: &[usize],
    parts: usize,
    class_weights: Option<&[f32]>,
) -> LoadedBatch {
    let (ranges, shares) = part_shares(ds, indices, parts, class_weights);
    let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
    let parts = ranges
        .into_iter()
        .map(|r| (!r.is_empty()).then(|| to_batch(ds, &indices[r], Device::Cpu)))
        .collect();
    LoadedBatch {
        parts,
        sizes,
        shares,
    }
}

/// The sample ranges of the `parts` parts of the batch `indices` and each
/// part's share of the loss normalizer (see [`LoadedBatch::shares`]).
fn part_shares(
    ds: &Dataset,
    indices: &[usize],
    parts: usize,
    class_weights: Option<&[f32]>,
) -> (Vec<std::ops::Range<usize>>, Vec<f64>) {
    let ranges = split_ranges(indices.len(), parts);
    let mass: Vec<f64> = match (class_weights, &ds.target) {
        (Some(w), Target::Classes { labels, .. }) => ranges
            .iter()
            .map(|r| {
                indices[r.clone()]
                    .iter()
                    .map(|&i| {
                        let c = usize::try_from(labels[i]).unwrap_or(usize::MAX);
                        f64::from(w.get(c).copied().unwrap_or(0.0))
                    })
                    .sum()
            })
            .collect(),
        _ => ranges.iter().map(|r| r.len() as f64).collect(),
    };
    let total: f64 = mass.iter().sum();
    let shares = mass
        .iter()
        .map(|&m| if total > 0.0 { m / total } else { 0.0 })
        .collect();
    (ranges, shares)
}

/// How batches are cut and who assembles them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchPlan<'a> {
    /// Samples per batch.
    pub batch_size: usize,
    /// Parts per batch (replicas).
    pub parts: usize,
    /// Background loader threads; 0 assembles each part on the thread that
    /// trains on it, when it needs it (no prefetch).
    pub loaders: usize,
    /// Batches each loader prepares ahead (per part).
    pub prefetch: usize,
    /// The class weights of a weighted cross-entropy (see [`assemble`]).
    pub class_weights: Option<&'a [f32]>,
}

/// One replica's part of one step's batch.
#[derive(Debug)]
pub(crate) struct Part {
    /// The part's samples; `None` when the batch has fewer samples than parts.
    pub batch: Option<Batch>,
    /// The part's share of the batch's loss normalizer (see [`LoadedBatch::shares`]).
    pub share: f64,
    /// Samples in each part of this step's batch (the same for every part).
    pub sizes: Vec<usize>,
}

impl Part {
    /// Samples in the whole batch this part belongs to.
    pub fn batch_len(&self) -> usize {
        self.sizes.iter().sum()
    }
}

/// Where one replica's parts come from.
enum Source<'a> {
    /// Assembled on the consuming thread.
    Inline {
        ds: &'a Dataset,
        order: &'a [usize],
        plan: BatchPlan<'a>,
        part: usize,
    },
    /// Prepared by loader threads: step `s` arrives from loader `s % len`.
    Loaders(Vec<mpsc::Receiver<Part>>),
}

/// The parts of one replica, step after step (see [`feeds`]).
pub(crate) struct PartFeed<'a> {
    source: Source<'a>,
    step: usize,
}

impl PartFeed<'_> {
    /// The next step's part, `None` after the last step.
    pub fn next_part(&mut self) -> Option<Part> {
        let s = self.step;
        self.step += 1;
        match &self.source {
            Source::Inline {
                ds,
                order,
                plan,
                part,
            } => {
                let bs = plan.batch_size.max(1);
                let chunk = order.get(s * bs..)?;
                let chunk = &chunk[..chunk.len().min(bs)];
                if chunk.is_empty() {
                    return None;
                }
                let (ranges, shares) = part_shares(ds, chunk, plan.parts, plan.class_weights);
                let r = ranges[*part].clone();
                Some(Part {
                    batch: (!r.is_empty()).then(|| to_batch(ds, &chunk[r], Device::Cpu)),
                    share: shares[*part],
                    sizes: ranges.iter().map(|r| r.len()).collect(),
                })
            }
            Source::Loaders(rx) => rx[s % rx.len()].recv().ok(),
        }
    }
}

/// One feed per part of `plan`: feed `k` yields part `k` of every batch of
/// `order`, in order. With `plan.loaders` background threads (spawned in
/// `scope`), loader `l` assembles batches `l, l + loaders, ...` whole and
/// hands each part to its feed through a channel holding `plan.prefetch`
/// parts; with none, each feed assembles its own part when asked. A loader
/// stops when its feeds are dropped.
pub(crate) fn feeds<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    ds: &'env Dataset,
    order: &'env [usize],
    plan: BatchPlan<'env>,
) -> Result<Vec<PartFeed<'env>>> {
    check_indices(ds, order)?;
    let parts = plan.parts.max(1);
    if plan.loaders == 0 {
        return Ok((0..parts)
            .map(|part| PartFeed {
                source: Source::Inline {
                    ds,
                    order,
                    plan,
                    part,
                },
                step: 0,
            })
            .collect());
    }
    let parts_of = |b: LoadedBatch| -> Vec<Part> {
        let sizes = b.sizes;
        b.parts
            .into_iter()
            .zip(b.shares)
            .map(|(batch, share)| Part {
                batch,
                share,
                sizes: sizes.clone(),
            })
            .collect()
    };
    let by_loader = spawn_loaders(scope, ds, order, plan, parts, parts_of)?;
    // by_loader[l][k]: part k from loader l; feed k reads loader after loader.
    let mut receivers: Vec<Vec<mpsc::Receiver<Part>>> = (0..parts).map(|_| Vec::new()).collect();
    for from_loader in by_loader {
        for (k, rx) in from_loader.into_iter().enumerate() {
            receivers[k].push(rx);
        }
    }
    Ok(receivers
        .into_iter()
        .map(|rx| PartFeed {
            source: Source::Loaders(rx),
            step: 0,
        })
        .collect())
}

/// Starts `plan.loaders` (at least one) loader threads in `scope`: loader
/// `l` assembles batches `l, l + loaders, ...` of `order` (split into
/// `plan.parts`), turns each into `channels` items with `split` and sends
/// item `c` on its channel `c` (holding `plan.prefetch` items). Returns the
/// receivers, `[loader][channel]`. A loader stops when its receivers drop.
fn spawn_loaders<'scope, 'env, T, S>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    ds: &'env Dataset,
    order: &'env [usize],
    plan: BatchPlan<'env>,
    channels: usize,
    split: S,
) -> Result<Vec<Vec<mpsc::Receiver<T>>>>
where
    T: Send + 'env,
    S: Fn(LoadedBatch) -> Vec<T> + Copy + Send + 'env,
{
    let batch_size = plan.batch_size.max(1);
    let parts = plan.parts.max(1);
    let loaders = plan.loaders.min(order.len().div_ceil(batch_size)).max(1);
    let mut receivers = Vec::with_capacity(loaders);
    for l in 0..loaders {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..channels)
            .map(|_| mpsc::sync_channel::<T>(plan.prefetch.max(1)))
            .unzip();
        receivers.push(rxs);
        std::thread::Builder::new()
            .name("fedcrime-loader".into())
            .spawn_scoped(scope, move || {
                for chunk in order.chunks(batch_size).skip(l).step_by(loaders) {
                    let items = split(assemble(ds, chunk, parts, plan.class_weights));
                    for (tx, item) in txs.iter().zip(items) {
                        if tx.send(item).is_err() {
                            // The trainer stopped early; nothing left to do.
                            return;
                        }
                    }
                }
            })
            .map_err(|e| TrainError::Io {
                path: "<loader thread>".into(),
                source: e,
            })?;
    }
    Ok(receivers)
}

/// Runs `step` on every batch of `order` (chunks of `plan.batch_size`), each
/// split into `plan.parts` parts (the pipeline's micro-batches), assembled by
/// `plan.loaders` loader threads, or on this thread when 0. Stops at the
/// first error `step` returns and returns it.
pub(crate) fn for_each_split_batch<F>(
    ds: &Dataset,
    order: &[usize],
    plan: BatchPlan<'_>,
    mut step: F,
) -> Result<()>
where
    F: FnMut(LoadedBatch) -> Result<()>,
{
    check_indices(ds, order)?;
    let batch_size = plan.batch_size.max(1);
    if plan.loaders == 0 {
        for chunk in order.chunks(batch_size) {
            step(assemble(ds, chunk, plan.parts.max(1), plan.class_weights))?;
        }
        return Ok(());
    }
    std::thread::scope(|s| {
        let by_loader = spawn_loaders(s, ds, order, plan, 1, |b| vec![b])?;
        let rx: Vec<mpsc::Receiver<LoadedBatch>> = by_loader.into_iter().flatten().collect();
        for k in 0..order.len().div_ceil(batch_size) {
            let batch = rx[k % rx.len()]
                .recv()
                .map_err(|_| TrainError::Worker("batch loader"))?;
            step(batch)?;
        }
        // Dropping the receivers unblocks loaders waiting on full channels.
        Ok(())
    })
}

/// An error naming the first index of `order` outside `ds`.
fn check_indices(ds: &Dataset, order: &[usize]) -> Result<()> {
    match order.iter().find(|&&i| i >= ds.len()) {
        Some(&bad) => Err(TrainError::Length {
            what: "sample index within the dataset",
            expected: ds.len(),
            got: bad,
        }),
        None => Ok(()),
    }
}

/// Runs `step` on every batch of `order` (chunks of `plan.batch_size`, in
/// one part: `plan.parts` is ignored), assembled as
/// [`for_each_split_batch`] says. Stops at
/// the first error `step` returns and returns it.
pub(crate) fn for_each_batch<F>(
    ds: &Dataset,
    order: &[usize],
    plan: BatchPlan<'_>,
    mut step: F,
) -> Result<()>
where
    F: FnMut(Part) -> Result<()>,
{
    let plan = BatchPlan { parts: 1, ..plan };
    for_each_split_batch(ds, order, plan, |b| {
        let share = b.shares.first().copied().unwrap_or(0.0);
        let batch = b.parts.into_iter().next().flatten();
        step(Part {
            batch,
            share,
            sizes: b.sizes,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_data::Task;

    fn plan(batch_size: usize, parts: usize) -> BatchPlan<'static> {
        BatchPlan {
            batch_size,
            parts,
            loaders: 1,
            prefetch: 2,
            class_weights: None,
        }
    }

    fn ds(n: usize) -> Dataset {
        Dataset {
            task: Task::Risk,
            features: (0..n * 2).map(|v| v as f32).collect(),
            feature_dim: 2,
            feature_names: vec!["a".into(), "b".into()],
            sequences: None,
            target: Target::Classes {
                labels: (0..n as i64).map(|v| v % 5).collect(),
                num_classes: 5,
            },
            area: vec![1; n],
            time: (0..n as u32).collect(),
        }
    }

    #[test]
    fn ranges_cover_everything_in_near_equal_parts() {
        assert_eq!(split_ranges(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(split_ranges(1, 2), vec![0..1, 1..1]);
        assert_eq!(split_ranges(0, 2), vec![0..0, 0..0]);
        assert_eq!(split_ranges(4, 1), vec![0..4]);
    }

    /// The rows of a part (feature 0 of row i is 2 i).
    fn rows(part: &Batch) -> Vec<usize> {
        let labels = Vec::<i64>::try_from(&part.target).unwrap();
        let feats = Vec::<f32>::try_from(part.features.flatten(0, -1)).unwrap();
        (0..labels.len())
            .map(|k| {
                let row = (feats[2 * k] / 2.0) as usize;
                assert_eq!(labels[k], (row % 5) as i64);
                row
            })
            .collect()
    }

    #[test]
    fn batches_arrive_in_order_with_their_rows() {
        let d = ds(10);
        let order: Vec<usize> = (0..10).rev().collect();
        for loaders in [0, 1, 3] {
            let mut seen = Vec::new();
            let p = BatchPlan {
                loaders,
                ..plan(4, 1)
            };
            for_each_batch(&d, &order, p, |b| {
                assert_eq!(b.share, 1.0);
                seen.extend(rows(b.batch.as_ref().unwrap()));
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, order, "{loaders} loader(s)");
        }
    }

    /// What a feed yielded at one step: the part's rows, the batch's part
    /// sizes and the part's share.
    type Seen = (Vec<usize>, Vec<usize>, f64);

    #[test]
    fn every_feed_gets_its_part_of_every_batch_whoever_loads() {
        // 10 rows in batches of 4 for 3 parts: parts of 2/1/1, 2/1/1, 1/1/0.
        let d = ds(10);
        let order: Vec<usize> = (0..10).map(|i| (i * 7) % 10).collect();
        let mut by_mode = Vec::new();
        for loaders in [0, 1, 2] {
            let p = BatchPlan {
                loaders,
                ..plan(4, 3)
            };
            let got: Vec<Vec<Seen>> = std::thread::scope(|s| {
                // Each feed on its own thread, as the replicas consume them.
                let handles: Vec<_> = feeds(s, &d, &order, p)
                    .unwrap()
                    .into_iter()
                    .map(|mut f| {
                        s.spawn(move || {
                            let mut steps = Vec::new();
                            while let Some(part) = f.next_part() {
                                let r = part.batch.as_ref().map(rows).unwrap_or_default();
                                steps.push((r, part.sizes.clone(), part.share));
                            }
                            steps
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(got.len(), 3);
            let joined: Vec<usize> = (0..3)
                .flat_map(|s| got.iter().flat_map(move |f| f[s].0.clone()))
                .collect();
            assert_eq!(joined, order, "{loaders} loader(s)");
            assert_eq!(got[2][2].1, vec![1, 1, 0]);
            assert_eq!(got[2][2].2, 0.0);
            by_mode.push(got);
        }
        assert!(by_mode.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn an_error_stops_the_loop_and_the_loader() {
        let d = ds(100);
        let order: Vec<usize> = (0..100).collect();
        let mut calls = 0;
        let r = for_each_batch(&d, &order, plan(1, 1), |_| {
            calls += 1;
            if calls == 3 {
                Err(TrainError::EmptySplit { split: "test" })
            } else {
                Ok(())
            }
        });
        assert!(matches!(r, Err(TrainError::EmptySplit { .. })));
        assert_eq!(calls, 3);
    }

    #[test]
    fn out_of_range_indices_are_rejected() {
        let d = ds(3);
        let r = for_each_batch(&d, &[0, 5], plan(2, 1), |_| Ok(()));
        assert!(matches!(r, Err(TrainError::Length { got: 5, .. })));
    }

    #[test]
    fn shares_follow_class_weights() {
        // Labels of rows 0..4 are 0, 1, 2, 3; weights make class 3 heavy.
        let d = ds(4);
        let w = [1.0, 1.0, 1.0, 5.0, 1.0];
        let b = assemble(&d, &[0, 1, 2, 3], 2, Some(&w));
        assert_eq!(b.sizes, [2, 2]);
        assert!((b.shares[0] - 2.0 / 8.0).abs() < 1e-12 && (b.shares[1] - 6.0 / 8.0).abs() < 1e-12);
        let b = assemble(&d, &[0, 1, 2], 2, None);
        assert!((b.shares[0] - 2.0 / 3.0).abs() < 1e-12);
    }
}
