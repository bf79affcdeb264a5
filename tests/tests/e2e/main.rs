//! End-to-end tests: one binary, a module per area.

mod data;
mod shared_data;
