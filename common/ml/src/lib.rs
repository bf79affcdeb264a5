//! # fedcrime-ml
//!
//! fedcrime's learning on libtorch (through `tch`), the one library crate of
//! the workspace that links it:
//!
//! - [`model`]: the DNN, the LSTM "CrimeNet" and the GAT+TCN hybrid behind one
//!   [`model::CrimeModel`] trait, their configs, and models saved as
//!   self-describing `.safetensors` files; exchange with the federated code
//!   goes through [`fedcrime_params::Params`].
//! - [`train`]: the single-worker and data-parallel trainers, metrics, naive
//!   baselines and hyper-parameter tuning.
//! - [`device`]: where tensors live (`auto`, `cpu`, `cuda[:N]`).
//!
//! The data it learns from comes from `fedcrime-data`; the federated round
//! engine (`fedcrime-fl`) and the wire codec (`fedcrime-wire`) do not depend
//! on this crate.

pub mod device;
pub mod explain;
pub mod model;
pub mod train;

pub use device::DeviceChoice;
