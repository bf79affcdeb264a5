//! A model's layers as a sequence of *units*, the pieces model parallelism
//! cuts into stages.
//!
//! Each model numbers its layers `0..units()`:
//!
//! | kind | units |
//! |---|---|
//! | dnn | `hidden.0` .. `hidden.{layers-1}`, then the head (with the direct `area` path) |
//! | lstm | LSTM layer 0 .. `layers-1`, then the head |
//! | gat-tcn | the graph attention, TCN block 0 .. `layers-1`, then the head |
//!
//! [`Layers::forward_units`] runs a contiguous range of units on what the
//! unit before the range returned; running `0..units()` in one call or in
//! consecutive pieces performs the same operations in the same order as
//! [`CrimeModel::forward_t`](super::CrimeModel::forward_t) (which is itself
//! `forward_units(0..units())`), so a pipeline of stages computes what one
//! worker computes. A stage gets its own [`Layers`] value from
//! [`CrimeModel::layers`](super::CrimeModel::layers): shallow handles on the
//! model's variables (gradients land in the model's own variables), `Send`,
//! so it can run on the stage's thread.

use std::ops::Range;

use tch::Tensor;

use super::Batch;

/// A model's computation as consecutive units; see the module documentation.
pub trait Layers: Send {
    /// Number of units: the most stages the model can be cut into.
    fn units(&self) -> usize;

    /// Runs the units `range` (non-empty, within `0..units()`) in training
    /// (`train`) or evaluation mode. `carried` is what the unit before the
    /// range returned (empty when the range starts at 0); the result is
    /// what the unit after the range takes, or `[output]` (what
    /// `forward_t` returns) when the range ends at `units()`. The batch is
    /// on the device of the range's variables.
    fn forward_units(
        &self,
        range: Range<usize>,
        carried: Vec<Tensor>,
        batch: &Batch,
        train: bool,
    ) -> Vec<Tensor>;

    /// The task's scalar loss of `output` against the batch's targets
    /// (what [`CrimeModel::loss`](super::CrimeModel::loss) computes).
    fn loss(&self, output: &Tensor, batch: &Batch) -> Tensor;

    /// The unit variable `name` (a VarStore path) belongs to; `None` for a
    /// name the model does not have.
    fn unit_of(&self, name: &str) -> Option<usize>;

    /// All units in one call: the model's output.
    fn forward_all(&self, batch: &Batch, train: bool) -> Tensor {
        let mut out = self.forward_units(0..self.units(), Vec::new(), batch, train);
        out.pop()
            .unwrap_or_else(|| unreachable!("the last unit returns the output"))
    }
}

/// The number in `name`'s path segment after `prefix` (`"tcn.2.conv1.weight"`
/// with prefix `"tcn."` is 2).
pub(crate) fn index_after(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.split('.').next()?.parse().ok()
}

/// A shallow handle on a linear layer's variables.
pub(crate) fn share_linear(l: &tch::nn::Linear) -> tch::nn::Linear {
    tch::nn::Linear {
        ws: l.ws.shallow_clone(),
        bs: l.bs.as_ref().map(Tensor::shallow_clone),
    }
}
