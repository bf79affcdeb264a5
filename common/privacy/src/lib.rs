//! Differential privacy for fedcrime.
//!
//! - [`rdp`]: a Rényi-DP accountant for the Poisson-subsampled Gaussian
//!   mechanism (Mironov, Talwar and Zhang 2019), converted to (ε, δ) with the
//!   conversion of Balle et al. 2020 / Canonne, Kamath and Steinke 2020, and
//!   its inverse (the smallest noise multiplier that meets a target ε). The
//!   numbers agree with Opacus and TF Privacy; Google's `dp-accounting`
//!   agrees except at fractional orders, where its series is looser (see the
//!   module documentation).
//! - [`error`]: [`PrivacyError`], returned for out-of-domain parameters
//!   (nothing here panics on bad input).

pub mod error;
pub mod rdp;

pub use error::PrivacyError;
pub use rdp::{
    epsilon, epsilon_from_rdp, noise_for_epsilon, rdp_subsampled_gaussian, RdpAccountant, Spent,
    DEFAULT_ORDERS,
};
