//! End-to-end tests: one binary, a module per area.

mod dashboard;
mod data;
mod federation;
mod serve;
mod shared_data;
mod simulate;
mod train;
