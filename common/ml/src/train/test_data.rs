//! Small learnable datasets for the training tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::test_util::{dataset, step_means, uniform};
use crate::model::{build, CrimeModel, ModelConfig, ModelKind};
use fedcrime_data::{Dataset, Sequences, Target, Task};

/// `n` risk samples with `dim` uniform features; the level is a noisy
/// function of the first two features.
pub(crate) fn risk(n: usize, dim: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let features = uniform(&mut rng, n * dim);
    let labels = (0..n)
        .map(|i| {
            let x = 0.7 * features[i * dim] + 0.3 * features[i * dim + 1];
            let noise = rng.random::<f32>() * 0.2 - 0.1;
            (((x + noise) * 5.0) as i64).clamp(0, 4)
        })
        .collect();
    let target = Target::Classes {
        labels,
        num_classes: 5,
    };
    dataset(Task::Risk, features, dim, None, target)
}

/// `n` counts samples with a `steps x dim` sequence view (also flattened as
/// the features) whose per-category mean drives Poisson-like targets.
pub(crate) fn counts(n: usize, steps: usize, dim: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let seq = uniform(&mut rng, n * steps * dim);
    let values = step_means(&seq, steps, dim)
        .iter()
        .map(|mean| (4.0 * mean + rng.random::<f32>()).floor())
        .collect();
    let sequences = Sequences {
        data: seq.clone(),
        steps,
        step_dim: dim,
    };
    let target = Target::Counts { values, dim };
    dataset(Task::Counts, seq, steps * dim, Some(sequences), target)
}

/// A copy of `m` (same config, same parameters) built without touching
/// libtorch's global generator, which concurrently running tests share.
pub(crate) fn copy(m: &dyn CrimeModel) -> Box<dyn CrimeModel> {
    let mut c = build(m.config(), tch::Device::Cpu).expect("config of a built model is valid");
    crate::model::import_params(
        c.var_store_mut(),
        &crate::model::export_params(m.var_store()),
    )
    .expect("same config, same layout");
    c
}

/// A small model of `kind` for `ds`, seeded (tests that run concurrently
/// share libtorch's generator: compare models made with [`copy`], not by
/// seeding twice).
pub(crate) fn model(
    kind: ModelKind,
    ds: &Dataset,
    hidden: usize,
    dropout: f64,
    seed: i64,
) -> Box<dyn CrimeModel> {
    let mut cfg = ModelConfig::for_dataset(kind, ds);
    cfg.hidden = hidden;
    cfg.dropout = dropout;
    tch::manual_seed(seed);
    build(&cfg, tch::Device::Cpu).expect("test model config is valid")
}

/// A short training config for trainer comparisons: no early stopping and
/// a large learning rate, so a few steps move the weights visibly.
pub(crate) fn fast_config(epochs: usize, batch_size: usize) -> crate::train::TrainConfig {
    crate::train::TrainConfig {
        epochs,
        batch_size,
        patience: 0,
        lr: 1e-2,
        ..crate::train::TrainConfig::default()
    }
}
