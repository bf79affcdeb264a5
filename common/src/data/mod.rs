//! The LA crime data pipeline: loading the LAPD export, cleaning it with a
//! report, featurizing, building the `risk` and `counts` tasks with a temporal
//! split, partitioning into stations, and generating LA-like synthetic data.

pub mod categories;
pub mod dataset;
pub mod record;

pub use categories::Category;
pub use dataset::{Dataset, Sequences, Splits, Target, Task};
pub use record::{DayNumber, Incident};
