//! The subcommands, one module each.

pub mod audit;
pub mod bench;
pub mod explain;
pub mod fairness;
pub mod features;
pub mod inspect;
pub mod privacy;
pub mod simulate;
pub mod study;
pub mod swarm;
pub mod synth;
pub mod train;
pub mod tune;
