//! Small learnable datasets for the model tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::{Dataset, Sequences, Target, Task};

/// `n` risk samples with `dim` uniform features; the class is a function of
/// the first feature (learnable by any of the models).
pub(crate) fn risk_dataset(n: usize, dim: usize) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let features: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>()).collect();
    let labels = (0..n)
        .map(|i| ((features[i * dim] * 5.0) as i64).min(4))
        .collect();
    Dataset {
        task: Task::Risk,
        feature_names: (0..dim).map(|i| format!("f{i}")).collect(),
        features,
        feature_dim: dim,
        sequences: None,
        target: Target::Classes {
            labels,
            num_classes: 5,
        },
        area: (0..n).map(|i| (i % 21 + 1) as u8).collect(),
        time: (0..n as u32).collect(),
    }
}

/// `n` counts samples: `feature_dim` flat features, a `steps x dim`
/// sequence view, and `dim` count targets that follow the sequence's mean.
pub(crate) fn counts_dataset(n: usize, feature_dim: usize, steps: usize, dim: usize) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let features: Vec<f32> = (0..n * feature_dim).map(|_| rng.random::<f32>()).collect();
    let seq: Vec<f32> = (0..n * steps * dim).map(|_| rng.random::<f32>()).collect();
    let mut values = Vec::with_capacity(n * dim);
    for i in 0..n {
        for c in 0..dim {
            let mean: f32 = (0..steps)
                .map(|t| seq[(i * steps + t) * dim + c])
                .sum::<f32>()
                / steps as f32;
            values.push((6.0 * mean + c as f32).round());
        }
    }
    Dataset {
        task: Task::Counts,
        feature_names: (0..feature_dim).map(|i| format!("f{i}")).collect(),
        features,
        feature_dim,
        sequences: Some(Sequences {
            data: seq,
            steps,
            step_dim: dim,
        }),
        target: Target::Counts { values, dim },
        area: (0..n).map(|i| (i % 21 + 1) as u8).collect(),
        time: (0..n as u32).collect(),
    }
}

/// Runs libtorch single-threaded on the calling test thread. The tests are
/// tiny and run two at a time on shared cores; libtorch's OpenMP workers
/// spinning against each other make them 100x slower than one thread.
pub(crate) fn one_thread() {
    tch::set_num_threads(1);
}
