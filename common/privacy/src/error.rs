//! Errors of the privacy accountant.
//!
//! Every public function of this crate that takes user-supplied privacy
//! parameters checks them and reports a bad one as a [`PrivacyError`] that
//! names the argument and its value; none of them panics on bad input.

/// A privacy parameter outside its domain, or a privacy target that cannot be
/// met.
///
/// The `Display` text names the offending argument and the value it had, so
/// it can be shown to an operator as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PrivacyError {
    /// The sampling rate `q` (probability that a record, or a client, takes
    /// part in a step) is NaN or outside `[0, 1]`.
    #[error("sampling rate q must be in [0, 1], got {0}")]
    InvalidSamplingRate(f64),

    /// The noise multiplier `z` (standard deviation of the Gaussian noise
    /// divided by the L2 sensitivity) is negative, NaN or infinite.
    #[error("noise multiplier z must be finite and non-negative, got {0}")]
    InvalidNoiseMultiplier(f64),

    /// `δ` is NaN or outside the open interval `(0, 1)`.
    #[error("delta must be in the open interval (0, 1), got {0}")]
    InvalidDelta(f64),

    /// The target `ε` of a noise calibration is NaN, zero or negative.
    #[error("target epsilon must be positive, got {0}")]
    InvalidTargetEpsilon(f64),

    /// A Rényi order `α` is NaN, infinite, `≤ 1`, or larger than
    /// [`MAX_ORDER`](crate::rdp::MAX_ORDER).
    #[error("RDP order must be finite, greater than 1 and at most 1e6, got {0}")]
    InvalidOrder(f64),

    /// An RDP value handed to a conversion, or read from a checkpoint, is NaN
    /// or negative.
    #[error("RDP value at order {order} must be non-negative (or +infinity), got {rdp}")]
    InvalidRdp {
        /// The order the value belongs to.
        order: f64,
        /// The offending value.
        rdp: f64,
    },

    /// A list of Rényi orders is empty.
    #[error("the list of RDP orders is empty")]
    NoOrders,

    /// A list of orders and a list of RDP values differ in length.
    #[error("{orders} RDP orders but {rdp} RDP values: the two lists must have the same length")]
    LengthMismatch {
        /// Number of orders.
        orders: usize,
        /// Number of RDP values.
        rdp: usize,
    },

    /// No noise multiplier up to `max_noise` brings `ε` down to the target.
    #[error(
        "target epsilon {target_epsilon} is unreachable: even noise multiplier {max_noise} \
         gives epsilon {epsilon_at_max} (q = {q}, steps = {steps}, delta = {delta})"
    )]
    TargetUnreachable {
        /// The requested `ε`.
        target_epsilon: f64,
        /// The largest noise multiplier tried
        /// ([`MAX_NOISE_MULTIPLIER`](crate::rdp::MAX_NOISE_MULTIPLIER)).
        max_noise: f64,
        /// The `ε` reached with `max_noise`.
        epsilon_at_max: f64,
        /// Sampling rate of the calibration.
        q: f64,
        /// Number of steps of the calibration.
        steps: u64,
        /// `δ` of the calibration.
        delta: f64,
    },
}
