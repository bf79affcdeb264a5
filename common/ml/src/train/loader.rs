//! Mini-batches assembled on a background thread while the model trains.
//!
//! A loader thread walks the epoch's sample order, gathers each batch's rows
//! into CPU tensors (through [`crate::model::to_batch`], so every model gets
//! the layout it expects) and hands them over a bounded channel: the trainer
//! never waits for a batch unless assembly is slower than a training step, and
//! at most `prefetch` batches are in memory ahead of it. For the data-parallel
//! trainer each batch comes pre-split into one part per replica.

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
    let ranges = split_ranges(indices.len(), parts);
    let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
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
        _ => sizes.iter().map(|&n| n as f64).collect(),
    };
    let total: f64 = mass.iter().sum();
    let shares = mass
        .iter()
        .map(|&m| if total > 0.0 { m / total } else { 0.0 })
        .collect();
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

/// How [`for_each_batch`] cuts batches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchPlan<'a> {
    /// Samples per batch.
    pub batch_size: usize,
    /// Parts per batch (replicas).
    pub parts: usize,
    /// Batches prepared ahead.
    pub prefetch: usize,
    /// The class weights of a weighted cross-entropy (see [`assemble`]).
    pub class_weights: Option<&'a [f32]>,
}

/// Runs `step` on every batch of `order` (chunks of `plan.batch_size`, each
/// split into `plan.parts`), assembling batches on a background thread at
/// most `plan.prefetch` ahead. Stops at the first error `step` returns and
/// returns it.
pub(crate) fn for_each_batch<F>(
    ds: &Dataset,
    order: &[usize],
    plan: BatchPlan<'_>,
    mut step: F,
) -> Result<()>
where
    F: FnMut(LoadedBatch) -> Result<()>,
{
    if let Some(&bad) = order.iter().find(|&&i| i >= ds.len()) {
        return Err(TrainError::Length {
            what: "sample index within the dataset",
            expected: ds.len(),
            got: bad,
        });
    }
    let batch_size = plan.batch_size.max(1);
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<LoadedBatch>(plan.prefetch.max(1));
        let loader = std::thread::Builder::new()
            .name("fedcrime-loader".into())
            .spawn_scoped(s, move || {
                for chunk in order.chunks(batch_size) {
                    if tx
                        .send(assemble(ds, chunk, plan.parts, plan.class_weights))
                        .is_err()
                    {
                        // The trainer stopped early; nothing left to do.
                        break;
                    }
                }
            })
            .map_err(|e| TrainError::Io {
                path: "<loader thread>".into(),
                source: e,
            })?;
        let mut outcome = Ok(());
        for batch in rx.iter() {
            if let Err(e) = step(batch) {
                outcome = Err(e);
                break;
            }
        }
        // Dropping the receiver unblocks a loader waiting on a full channel.
        drop(rx);
        loader
            .join()
            .map_err(|_| TrainError::Worker("batch loader"))?;
        outcome
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

    #[test]
    fn batches_arrive_in_order_with_their_rows() {
        let d = ds(10);
        let order: Vec<usize> = (0..10).rev().collect();
        let mut seen = Vec::new();
        for_each_batch(&d, &order, plan(4, 2), |b| {
            assert_eq!(b.parts.len(), 2);
            assert!((b.shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            for part in b.parts.into_iter().flatten() {
                let labels = Vec::<i64>::try_from(&part.target).unwrap();
                let feats = Vec::<f32>::try_from(part.features.flatten(0, -1)).unwrap();
                for (k, l) in labels.iter().enumerate() {
                    // Feature 0 of row i is 2 i.
                    let row = (feats[2 * k] / 2.0) as usize;
                    assert_eq!(*l, (row % 5) as i64);
                    seen.push(row);
                }
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, order);
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
