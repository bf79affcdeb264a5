//! The subcommands of `fedcrime-sim`, one module each.

pub mod bench_train;
pub mod train;
pub mod tune;
