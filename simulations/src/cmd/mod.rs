//! The subcommands, one module each.

pub mod bench;
pub mod features;
pub mod inspect;
pub mod simulate;
pub mod study;
pub mod swarm;
pub mod synth;
pub mod train;
pub mod tune;
