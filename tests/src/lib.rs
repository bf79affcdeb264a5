//! End-to-end tests across fedcrime's crates live in `tests/e2e/`, one
//! integration binary with a module per area (keeps link times down).
