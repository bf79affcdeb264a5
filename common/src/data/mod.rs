//! The LA crime data pipeline: loading the LAPD export, cleaning it with a
//! report, featurizing, building the `risk` and `counts` tasks with a temporal
//! split, partitioning into stations, and generating LA-like synthetic data.

pub mod areas;
pub mod calibration;
pub mod categories;
pub mod clean;
pub mod dataset;
pub mod error;
pub mod loader;
pub mod record;
pub mod schema;
pub mod synth;

pub use areas::{area, AreaInfo, Bureau, AREAS};
pub use categories::Category;
pub use clean::{CleaningReport, DropReason};
pub use dataset::{Dataset, Sequences, Splits, Target, Task};
pub use error::DataError;
pub use loader::{load_path, load_reader, LoadOptions, Loaded};
pub use record::{DayNumber, Incident};
pub use synth::{generate, generate_incidents, SynthConfig, SynthSummary};
