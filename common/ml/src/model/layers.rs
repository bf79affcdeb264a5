//! Building blocks the three models share: PyTorch-initialized linear layers,
//! the output-bias prior, and the task's loss and prediction.

use tch::{nn, Kind, Reduction, Tensor};

use super::config::{CountLoss, ModelConfig};
use super::error::Result;
use super::Batch;
use fedcrime_data::Task;

/// Floor for priors before taking logarithms (a class or category never seen
/// in training gets a tiny but finite rate).
pub(crate) const PRIOR_FLOOR: f32 = 1e-3;

/// Largest log-rate turned into a count by `predict` (e^20 ~ 5e8 incidents):
/// keeps a diverged model's predictions finite.
const MAX_LOG_RATE: f64 = 20.0;

/// A fully connected layer initialized like PyTorch's `nn.Linear`:
/// weight and bias uniform in `+-1/sqrt(in_dim)`, named `weight` and `bias`.
pub(crate) fn linear(vs: nn::Path, in_dim: usize, out_dim: usize) -> nn::Linear {
    let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        vs,
        in_dim as i64,
        out_dim as i64,
        nn::LinearConfig {
            ws_init: init,
            bs_init: Some(init),
            bias: true,
        },
    )
}

/// The initial output bias implied by `cfg.target_prior`, in the model's
/// output space: log prior (classes), log mean rate (Poisson) or mean (MSE).
/// `None` when the config has no prior.
pub(crate) fn prior_bias(cfg: &ModelConfig) -> Option<Vec<f32>> {
    let prior = cfg.target_prior.as_ref()?;
    let log = |v: &f32| v.max(PRIOR_FLOOR).ln();
    Some(match (cfg.task, cfg.count_loss) {
        (Task::Risk, _) | (Task::Counts, CountLoss::Poisson) => prior.iter().map(log).collect(),
        (Task::Counts, CountLoss::Mse) => prior.clone(),
    })
}

/// The initial head weights on the flat features implied by
/// `cfg.area_prior`, `[output_dim, input_dim]` row-major: on the one-hot
/// column of area `a`, output `c`, the area's offset from the bias (log
/// ratio of its mean to `target_prior` for Poisson, the difference for MSE);
/// zero on every other column. With the bias at the prior (see
/// [`prior_bias`]) a head reading only these columns predicts each area's
/// training mean. `None` without an area prior.
pub(crate) fn area_prior_weights(cfg: &ModelConfig) -> Option<Vec<f32>> {
    let p = cfg.area_prior.as_ref()?;
    let (d, n) = (cfg.output_dim, cfg.input_dim);
    let bias = prior_bias(cfg).unwrap_or_else(|| vec![0.0; d]);
    let mut w = vec![0f32; d * n];
    for a in 0..p.areas {
        for c in 0..d {
            let m = p.means[a * d + c];
            w[c * n + p.column + a] = match cfg.count_loss {
                CountLoss::Poisson => m.max(PRIOR_FLOOR).ln() - bias[c],
                CountLoss::Mse => m - bias[c],
            };
        }
    }
    Some(w)
}

/// Overwrites `bias` (shape `[values.len()]`) with `values`.
pub(crate) fn set_bias(bias: &mut Tensor, values: &[f32]) -> Result<()> {
    let src = Tensor::f_from_slice(values)?.f_to_device(bias.device())?;
    tch::no_grad(|| bias.f_copy_(&src))?;
    Ok(())
}

/// The class weights of a risk config as a tensor on `device`.
pub(crate) fn class_weights(cfg: &ModelConfig, device: tch::Device) -> Result<Option<Tensor>> {
    match (&cfg.class_weights, cfg.task) {
        (Some(w), Task::Risk) => Ok(Some(Tensor::f_from_slice(w)?.f_to_device(device)?)),
        _ => Ok(None),
    }
}

/// The task's scalar training loss: cross-entropy on logits (risk), Poisson
/// NLL on log-rates or MSE on counts (counts). Mean over the batch (and over
/// the count dimensions).
pub(crate) fn task_loss(
    cfg: &ModelConfig,
    weights: Option<&Tensor>,
    output: &Tensor,
    batch: &Batch,
) -> Tensor {
    match cfg.task {
        Task::Risk => output.cross_entropy_loss(&batch.target, weights, Reduction::Mean, -100, 0.0),
        Task::Counts => match cfg.count_loss {
            CountLoss::Poisson => {
                output.poisson_nll_loss(&batch.target, true, false, 1e-8, Reduction::Mean)
            }
            CountLoss::Mse => output.mse_loss(&batch.target, Reduction::Mean),
        },
    }
}

/// The task's loss of every sample, `[b]`, with nothing mixed across
/// samples (what DP-SGD clips one by one): the class-weighted cross-entropy
/// `w[y_i] * CE_i` (risk), the Poisson NLL or squared error averaged over
/// the sample's count values (counts). Unweighted, [`task_loss`] is their
/// mean; with class weights `task_loss` is `sum / sum_i w[y_i]` instead, and
/// the sum over a training split whose weights average 1 (see
/// [`ClassWeighting`](crate::train::ClassWeighting)) is the same objective.
pub(crate) fn task_sample_losses(
    cfg: &ModelConfig,
    weights: Option<&Tensor>,
    output: &Tensor,
    batch: &Batch,
) -> Tensor {
    let per_value = match cfg.task {
        Task::Risk => {
            return output.cross_entropy_loss(&batch.target, weights, Reduction::None, -100, 0.0)
        }
        Task::Counts => match cfg.count_loss {
            CountLoss::Poisson => {
                output.poisson_nll_loss(&batch.target, true, false, 1e-8, Reduction::None)
            }
            CountLoss::Mse => output.mse_loss(&batch.target, Reduction::None),
        },
    };
    if per_value.dim() <= 1 {
        per_value
    } else {
        per_value.flatten(1, -1).mean_dim(1, false, Kind::Float)
    }
}

/// Class indices (risk, i64) or non-negative expected counts (counts, f32).
pub(crate) fn task_predict(cfg: &ModelConfig, output: &Tensor) -> Tensor {
    match cfg.task {
        Task::Risk => output.argmax(-1, false),
        Task::Counts => match cfg.count_loss {
            CountLoss::Poisson => output.clamp_max(MAX_LOG_RATE).exp(),
            CountLoss::Mse => output.clamp_min(0.0),
        },
    }
    .to_kind(match cfg.task {
        Task::Risk => Kind::Int64,
        Task::Counts => Kind::Float,
    })
}
