//! `fedcrime-sim` as a library: one-machine federations and the convergence
//! study ([`sim`]), the convergence plots ([`plot`]) and terminal progress
//! bars that log lines do not tear ([`progress`]).
//!
//! The `fedcrime-sim` binary is a command-line shell over these (and over
//! the data pipeline of `fedcrime-data` and the training and tuning tools of
//! `fedcrime-ml`); end-to-end
//! tests call [`sim::simulate`] directly.

pub mod charts;
pub mod plot;
pub mod progress;
pub mod sim;
