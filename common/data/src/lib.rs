//! # fedcrime-data
//!
//! The LA crime data pipeline: loading the LAPD export, cleaning it with a
//! report, featurizing, building the `risk` and `counts` tasks with a temporal
//! split, partitioning into stations, and generating LA-like synthetic data.
//!
//! Plain Rust on CPU (rayon for the parallel loader); it knows nothing of
//! models or federations, and links no libtorch: `fedcrime-ml` turns its
//! [`Dataset`]s into tensors. [`calendar`] is the one calendar of the
//! workspace.

pub mod areas;
pub mod calendar;
pub mod calibration;
pub mod categories;
pub mod clean;
pub mod dataset;
pub mod error;
pub mod features;
pub mod loader;
pub mod partition;
pub mod record;
pub mod schema;
pub mod split;
pub mod synth;
pub mod tasks;

pub use areas::{area, AreaInfo, Bureau, AREAS};
pub use categories::Category;
pub use clean::{CleaningReport, DropReason, DroppedRow, Repair};
pub use dataset::{Dataset, Sequences, Splits, Target, Task};
pub use error::DataError;
pub use features::Featurizer;
pub use loader::{load_path, load_reader, LoadOptions, Loaded};
pub use partition::{partition, partition_splits, Partition, StationPart, StationSplits};
pub use record::{DayNumber, Incident};
pub use split::{SplitBounds, SplitFractions};
pub use synth::{generate, generate_incidents, SynthConfig, SynthSummary};
pub use tasks::{build_task, GraphSeries, Period, TaskConfig, TaskData};

/// Where tests find the real LAPD samples.
#[cfg(test)]
pub(crate) mod test_data {
    use std::path::PathBuf;

    /// `../shared/data/la-crime` relative to the repository root (this crate
    /// is `common/data`, two levels below it), when present.
    pub(crate) fn la_crime_dir() -> Option<PathBuf> {
        let dir = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/la-crime"
        ));
        dir.is_dir().then_some(dir)
    }

    /// A file of [`la_crime_dir`], when present.
    pub(crate) fn la_crime_file(file: &str) -> Option<PathBuf> {
        la_crime_dir().map(|d| d.join(file)).filter(|p| p.is_file())
    }
}
