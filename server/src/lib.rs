//! # fedcrime-server
//!
//! The agency's aggregation server: it accepts precinct stations over QUIC
//! with mutual TLS (a station's identity is the one in its certificate),
//! runs rounds of federated learning with the shared round engine of
//! `fedcrime-fl` and checkpoints after every round.
//!
//! The design is a pure core in a thin I/O shell. The round engine
//! ([`fedcrime_fl::Engine`]) decides everything: when a round
//! starts, which stations train, when collection ends, what is aggregated.
//! This crate only feeds it events (stations joining and leaving, decoded
//! updates and evaluations, the clock) and carries out its actions: the
//! global model is encoded once per round and the same bytes go to every
//! sampled station; finished rounds go to `metrics.csv` and `metrics.jsonl`;
//! checkpoints are written atomically; at the end every station gets a Bye.
//!
//! - [`ServerConfig`]: the typed `server.toml` (every flag of the binary
//!   overrides one of its settings);
//! - [`Server`]: bind, then [`Server::run`] until the last round or a
//!   shutdown signal; [`run`] does both with Ctrl-C as the signal;
//! - [`RunReport`]: how it ended, the metrics history and the final model.

pub mod config;
pub mod dashboard;
mod error;
pub mod metrics;
mod server;
mod session;

pub use config::ServerConfig;
pub use error::{Result, ServerError};
pub use metrics::RoundRecord;
pub use server::{
    run, Evaluator, Progress, RunReport, Server, ServerBuilder, BEST_MODEL, FINAL_MODEL, LAST_MODEL,
};
