//! End-to-end tests: one binary, a module per area.

mod data;
mod federation;
mod shared_data;
mod simulate;
mod train;
