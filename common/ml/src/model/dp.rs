//! Per-sample clipped gradients, the core of DP-SGD (Abadi et al. 2016; the
//! trainer's side is [`crate::train::dp_sgd`]).
//!
//! For a batch of `b` samples with per-sample losses `l_i` (see
//! [`CrimeModel::sample_losses`]), DP-SGD needs
//!
//! ```text
//! sum_i c_i * grad l_i,   c_i = min(1, C / ||grad l_i||)
//! ```
//!
//! where `||.||` is the L2 norm over all trainable parameters jointly, so
//! that no sample moves the sum by more than `C`. Two ways to get it:
//!
//! - a model's own vectorised path, [`CrimeModel::dp_clipped_grad_sum`]
//!   (the [`Dnn`](super::Dnn): one backward pass per batch, per-sample norms
//!   from the layers' inputs and output gradients, no per-sample gradient
//!   materialized);
//! - [`micro_batch_clipped_grad_sum`] for every other model: one forward and
//!   one backward pass per sample. Correct for any model whose samples do
//!   not interact in the forward pass (no batch normalization; none of ours
//!   has any), but `b` times the passes.
//!
//! [`clipped_grad_sum`] picks the first that applies.

use tch::{nn, Kind, Tensor};

use super::error::{ModelError, Result};
use super::{Batch, CrimeModel};

/// The clipped per-sample gradients of one batch, summed (before noise).
#[derive(Debug)]
pub struct DpGrads {
    /// Every sample's training loss `[b]` (f32, no gradient).
    pub losses: Tensor,
    /// Every sample's gradient L2 norm over all trainable parameters,
    /// before clipping, `[b]` (f32, no gradient).
    pub norms: Tensor,
    /// `sum_i c_i grad l_i`, one tensor per trainable variable, in the
    /// order (and shapes) of
    /// [`VarStore::trainable_variables`](tch::nn::VarStore::trainable_variables).
    pub grads: Vec<Tensor>,
}

/// The per-sample clip factors `min(1, clip / norm)` (1 for a zero norm).
pub(crate) fn clip_factors(norms: &Tensor, clip: f64) -> Tensor {
    // clip / 0 is +inf, clamped to 1; a NaN norm stays NaN (and the
    // trainer reports the loss as non-finite).
    (norms.reciprocal() * clip).clamp_max(1.0)
}

/// The clipped per-sample gradient sum of `batch` in training mode (dropout
/// on): the model's vectorised [`CrimeModel::dp_clipped_grad_sum`] when it
/// has one, else [`micro_batch_clipped_grad_sum`].
pub fn clipped_grad_sum(model: &dyn CrimeModel, batch: &Batch, clip: f64) -> Result<DpGrads> {
    match model.dp_clipped_grad_sum(batch, clip) {
        Some(grads) => grads,
        None => micro_batch_clipped_grad_sum(model, batch, clip),
    }
}

/// The clipped per-sample gradient sum of `batch` in training mode, one
/// forward and backward pass per sample (micro-batches of one): works for
/// every model, `b` times slower than a batched pass. Variables that do not
/// require gradients (frozen) get zero.
pub fn micro_batch_clipped_grad_sum(
    model: &dyn CrimeModel,
    batch: &Batch,
    clip: f64,
) -> Result<DpGrads> {
    let vars = model.var_store().trainable_variables();
    let live: Vec<usize> = (0..vars.len())
        .filter(|&k| vars[k].requires_grad())
        .collect();
    let inputs: Vec<&Tensor> = live.iter().map(|&k| &vars[k]).collect();
    let mut sums: Vec<Tensor> = tch::no_grad(|| vars.iter().map(Tensor::zeros_like).collect());
    let b = batch.len();
    let mut losses = Vec::with_capacity(b);
    let mut norms = Vec::with_capacity(b);
    for i in 0..b {
        let one = batch.narrow(i, 1);
        let out = model.forward_t(&one, true);
        let loss = model.sample_losses(&out, &one).sum(Kind::Float);
        let grads = if inputs.is_empty() {
            Vec::new()
        } else {
            Tensor::f_run_backward(&[&loss], &inputs, false, false)?
        };
        tch::no_grad(|| {
            let mut sq = Tensor::zeros([], (Kind::Float, loss.device()));
            for g in grads.iter().filter(|g| g.defined()) {
                sq += g.square().sum(Kind::Float);
            }
            let norm = sq.sqrt();
            let c = clip_factors(&norm, clip);
            for (&k, g) in live.iter().zip(&grads) {
                if g.defined() {
                    let _ = sums[k].g_add_(&(g * &c));
                }
            }
            norms.push(norm.view([1]));
            losses.push(loss.detach().view([1]));
        });
    }
    let cat = |v: &[Tensor]| {
        if v.is_empty() {
            Tensor::zeros([0], (Kind::Float, model.device()))
        } else {
            Tensor::cat(v, 0)
        }
    };
    Ok(DpGrads {
        losses: cat(&losses),
        norms: cat(&norms),
        grads: sums,
    })
}

/// Orders `(variable, gradient)` pairs like `vs`'s trainable variables
/// (matched by storage, so shallow handles match their variable); a
/// trainable variable without a pair is an error (a model's vectorised
/// path must cover all of them).
pub(crate) fn align_to_trainable(
    vs: &nn::VarStore,
    pairs: Vec<(Tensor, Tensor)>,
) -> Result<Vec<Tensor>> {
    let mut pairs: Vec<Option<(Tensor, Tensor)>> = pairs.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(pairs.len());
    for (k, v) in vs.trainable_variables().iter().enumerate() {
        let ptr = v.data_ptr();
        let found = pairs
            .iter_mut()
            .find(|p| p.as_ref().is_some_and(|(w, _)| w.data_ptr() == ptr))
            .and_then(Option::take);
        match found {
            Some((_, g)) => out.push(g),
            None => {
                return Err(ModelError::MissingParam {
                    name: format!("gradient of trainable variable #{k} (DP-SGD)"),
                })
            }
        }
    }
    Ok(out)
}
