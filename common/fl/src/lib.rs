//! # fedcrime-fl
//!
//! Federated learning: the round engine, aggregation strategies, update
//! validation and checkpoints. No libtorch, no async runtime, no sockets:
//! parameters are `fedcrime-params` buffers, what travels is
//! `fedcrime-wire`'s vocabulary, and identities are `fedcrime-identity`'s.
//!
//! The [`Engine`] is a deterministic state machine in the shape of
//! quinn-proto: the driver feeds it [`Event`]s with [`Engine::handle`]
//! (stations connecting, updates arriving) and the current time, fires its
//! timer ([`Engine::poll_timeout`], [`Engine::handle_timeout`]) and carries
//! out the [`Action`]s it asks for ([`Engine::poll_action`]): send the global
//! model to a station, record a finished round, persist a [`Checkpoint`].
//! It owns no socket, thread, clock or unseeded randomness, so the QUIC
//! server and the in-memory simulator drive one and the same engine, and
//! tests step it exactly.
//!
//! Per round the engine waits for enough stations, samples them (seeded),
//! collects updates until all answered or the deadline passed, refuses
//! invalid ones ([`validate`]), aggregates with a [`Strategy`] when enough
//! arrived (otherwise retries with a fresh sample), optionally evaluates, and
//! asks for a checkpoint.
//!
//! A driver is a loop around three calls (here synchronous; the QUIC server
//! does the same from its event loop, the simulator from its scheduler):
//!
//! ```rust,ignore
//! let store = CheckpointStore::new(&checkpoint_dir);
//! let mut engine = Engine::resume(&checkpoint_dir, config, strategy, initial, Instant::now())?;
//! loop {
//!     while let Some(action) = engine.poll_action() {
//!         match action {
//!             Action::SendFit { station, round, ins } => transport.send_fit(&station, round, ins),
//!             Action::SendEvaluate { station, round, ins } => transport.send_evaluate(&station, round, ins),
//!             Action::RoundFinished(metrics) => metrics_log.write(&metrics)?,
//!             Action::Checkpoint(c) => { store.save(&c)?; }
//!             Action::Finished(summary) => return Ok(summary),
//!         }
//!     }
//!     // Wait for the next event or the engine's timer, whichever comes first.
//!     match transport.next_event(engine.poll_timeout()) {
//!         Some(event) => engine.handle(Instant::now(), event),
//!         None => engine.handle_timeout(Instant::now()),
//!     }
//! }
//! ```
//!
//! Beside the engine, [`session`] is the station session protocol in the
//! same shape: the Hello/Welcome handshake and the classification of every
//! later message on both sides, and the delta encoding of updates, driven by
//! the QUIC server and client and by the in-memory simulator alike.
//!
//! Updates are buffered until the round closes and aggregated in station
//! order, so the result does not depend on arrival order (the memory and QUIC
//! transports give identical models for the same seed); memory per round is
//! one model per accepted update.

#[cfg(feature = "bench")]
pub mod bench;
pub mod checkpoint;
pub mod engine;
mod error;
pub mod metrics;
pub mod privacy;
pub mod secure;
pub mod session;
pub mod stopping;
pub mod strategy;
pub mod switch;
pub mod validate;

pub use checkpoint::{Checkpoint, CheckpointStore};
pub use engine::{
    Action, AuditEntry, Engine, EngineConfig, Event, OnExhausted, Outcome, RetryPolicy, Summary,
    UpdateProof,
};
pub use error::{FlError, Result};
pub use fedcrime_identity::StationId;
pub use fedcrime_wire::{round_seed, RoundSettings};
pub use metrics::{RoundMetrics, STATION_REPORT_PREFIX, STATION_REPORT_PREFIXES};
pub use privacy::{AdaptiveClip, DpMode, LocalDp, PrivacyConfig, RoundPrivacy};
pub use session::{
    decode_update, encode_update, heartbeat_interval, station_write_config, Admission,
    ClientSession, FromServer, FromStation, HandshakeError, ServerSession, SessionError,
};
pub use stopping::{BestRound, EarlyStopping, Goal};
pub use strategy::{
    Config, ConfigValue, EvalSummary, EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics, Strategy,
    StrategyConfig, StrategyState,
};
pub use validate::{FailureKind, Refusal};
