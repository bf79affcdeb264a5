//! Small learnable datasets for the model tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use tch::nn::{self, OptimizerConfig};

use crate::model::{Batch, CrimeModel};
use fedcrime_data::{Dataset, Sequences, Target, Task};

/// `len` uniform draws from `[0, 1)`.
pub(crate) fn uniform(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random::<f32>()).collect()
}

/// The mean over the steps of each sample's sequence `seq` (`n x steps x
/// dim`), per category: `n x dim` values, sample-major.
pub(crate) fn step_means(seq: &[f32], steps: usize, dim: usize) -> Vec<f32> {
    let n = seq.len() / (steps * dim);
    let mut means = Vec::with_capacity(n * dim);
    for i in 0..n {
        for c in 0..dim {
            let mean: f32 = (0..steps)
                .map(|t| seq[(i * steps + t) * dim + c])
                .sum::<f32>()
                / steps as f32;
            means.push(mean);
        }
    }
    means
}

/// A dataset of `features` (`n x feature_dim`) with these sequences and
/// targets; features are named `f0`, `f1`..., sample `i` is in area
/// `i % 21 + 1` at time `i`.
pub(crate) fn dataset(
    task: Task,
    features: Vec<f32>,
    feature_dim: usize,
    sequences: Option<Sequences>,
    target: Target,
) -> Dataset {
    let n = features.len() / feature_dim;
    Dataset {
        task,
        feature_names: (0..feature_dim).map(|i| format!("f{i}")).collect(),
        features,
        feature_dim,
        sequences,
        target,
        area: (0..n).map(|i| (i % 21 + 1) as u8).collect(),
        time: (0..n as u32).collect(),
    }
}

/// `n` risk samples with `dim` uniform features; the class is a function of
/// the first feature (learnable by any of the models).
pub(crate) fn risk_dataset(n: usize, dim: usize) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let features = uniform(&mut rng, n * dim);
    let labels = (0..n)
        .map(|i| ((features[i * dim] * 5.0) as i64).min(4))
        .collect();
    let target = Target::Classes {
        labels,
        num_classes: 5,
    };
    dataset(Task::Risk, features, dim, None, target)
}

/// `n` counts samples: `feature_dim` flat features, a `steps x dim`
/// sequence view, and `dim` count targets that follow the sequence's mean.
pub(crate) fn counts_dataset(n: usize, feature_dim: usize, steps: usize, dim: usize) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let features = uniform(&mut rng, n * feature_dim);
    let seq = uniform(&mut rng, n * steps * dim);
    let values = step_means(&seq, steps, dim)
        .iter()
        .enumerate()
        .map(|(k, mean)| (6.0 * mean + (k % dim) as f32).round())
        .collect();
    let sequences = Sequences {
        data: seq,
        steps,
        step_dim: dim,
    };
    let target = Target::Counts { values, dim };
    dataset(Task::Counts, features, feature_dim, Some(sequences), target)
}

/// Trains `model` with Adam (learning rate `lr`) for `steps` steps on the
/// whole `batch`; returns its loss in evaluation mode before and after.
pub(crate) fn train_full_batch(
    model: &dyn CrimeModel,
    batch: &Batch,
    steps: usize,
    lr: f64,
) -> (f64, f64) {
    let eval_loss =
        || f64::try_from(model.loss(&model.forward_t(batch, false), batch)).expect("scalar loss");
    let mut opt = nn::Adam::default()
        .build(model.var_store(), lr)
        .expect("an optimizer over the model's variables");
    let first = eval_loss();
    for _ in 0..steps {
        let loss = model.loss(&model.forward_t(batch, true), batch);
        opt.backward_step(&loss);
    }
    (first, eval_loss())
}

/// Runs libtorch single-threaded on the calling test thread. The tests are
/// tiny and run two at a time on shared cores; libtorch's OpenMP workers
/// spinning against each other make them 100x slower than one thread.
pub(crate) fn one_thread() {
    tch::set_num_threads(1);
}
