//! # fedcrime-common
//!
//! The library that precinct stations, the aggregation server and the
//! simulator share. Its layers, bottom up:
//!
//! - [`data`]: the LAPD "Crime Data from 2020 to Present" pipeline: streaming
//!   loader, cleaning with a report, features, the `risk` and `counts` tasks
//!   with a temporal split, station partitioners and an LA-like synthetic
//!   generator (the embedded default, so nothing needs a download).
//! - [`params`]: model parameters as named tensors in one flat buffer, the
//!   currency of everything federated.
//! - [`device`]: where tensors live.
//! - [`params_io`]: parameters as safetensors files, crash-safe writes.
//! - [`fl`]: the federated round engine, aggregation strategies, update
//!   validation and checkpoints.
//! - [`station`]: a station's logic (local training and evaluation on its own
//!   data), shared by the QUIC client and the in-memory simulator.
//!
//! Models, training, the wire protocol and the QUIC transport complete the
//! library.

pub mod config_file;
pub mod data;
pub mod device;
pub mod fl;
pub mod logging;
pub mod model;
pub mod net;
pub mod params;
pub mod params_io;
pub mod station;
pub mod train;
pub mod wire;

pub use device::DeviceChoice;
pub use params::{ParamEntry, ParamError, ParamSpec, Params};
