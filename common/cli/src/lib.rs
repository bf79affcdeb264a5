//! # fedcrime-cli
//!
//! What fedcrime's binaries (`fedcrime-server`, `fedcrime-client`,
//! `fedcrime-sim`) share around `main`: reading their TOML config files with
//! errors that name the file and the setting ([`config_file`]), and the
//! `[log]` section, `tracing` set-up and tokio runtime ([`logging`]).
//! Nothing here knows about federated learning.

pub mod config_file;
pub mod logging;
