//! The data pipeline's error type.
//!
//! Every variant names where the problem is: the file (or stream name), and
//! for malformed input the 1-based line and column and the column's header
//! name. Bad *values* in otherwise well-formed rows are not errors: the
//! cleaner drops or imputes them and counts them in the
//! [`CleaningReport`](super::clean::CleaningReport).
//!
//! Wrapped errors (I/O, gzip, serde) are the variants' `source`, not part of
//! their message: print the chain (anyhow's `{:#}`) to see both.

use std::path::PathBuf;

/// Result alias for the data pipeline.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// What went wrong while reading, cleaning, featurizing or generating data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be opened, read, created or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done: "open", "read", "create", "write"...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Reading the input stream failed part way, e.g. a truncated or corrupt
    /// gzip file.
    #[error("{file}: read failed near line {line}")]
    Read {
        /// The file or stream name.
        file: String,
        /// The line being read when it failed (1-based).
        line: u64,
        /// The underlying error (gzip decoder or I/O).
        #[source]
        source: std::io::Error,
    },

    /// The header line lacks a column cleaning needs or has one twice, or
    /// the file is not UTF-8 CSV text (UTF-16, CR-only line ends, empty).
    #[error("{file}: line {line}, column {column}: wrong header: {reason}")]
    Header {
        /// The file or stream name.
        file: String,
        /// The line of the header (1 unless the file starts with blank lines).
        line: u64,
        /// The offending column (1-based): the second of a column that
        /// appears twice; one past the last for a missing column.
        column: usize,
        /// What is wrong, e.g. `needed column "TIME OCC" is missing (found 28
        /// columns; not recognized: column 4 "TIME")` or `column "DATE OCC"
        /// appears 2 times (columns 3 and 29): ...`.
        reason: String,
    },

    /// A data row has more fields than the header, or too few for the
    /// columns that are read (a truncated row, a stray delimiter or an
    /// unbalanced quote).
    #[error(
        "{file}: line {line}, column {column}: expected {expected} fields, found {found}{}",
        if *found < *expected { " (row truncated)" } else { " (extra fields)" }
    )]
    FieldCount {
        /// The file or stream name.
        file: String,
        /// The line where the row starts (1-based).
        line: u64,
        /// The first missing or first extra column (1-based).
        column: usize,
        /// Fields expected (the header's).
        expected: usize,
        /// Fields found.
        found: usize,
    },

    /// A field holds bytes that cannot be CSV text: invalid UTF-8 or control
    /// characters (binary garbage), or a record that never ends.
    #[error("{file}: line {line}, column {column} ({field}): {reason}")]
    Malformed {
        /// The file or stream name.
        file: String,
        /// The line where the row starts (1-based).
        line: u64,
        /// The offending column (1-based; 0 when unknown).
        column: usize,
        /// The column's header name ("?" when unknown).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// Writing generated or exported data failed.
    #[error("cannot write the output")]
    Write {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The input has a header but no data rows.
    #[error("{file}: no data rows")]
    Empty {
        /// The file or stream name.
        file: String,
    },

    /// A configuration value is out of range or inconsistent.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The setting, e.g. "rows" or "split fractions".
        field: String,
        /// Why it is invalid.
        reason: String,
    },

    /// There is not enough data for what was asked, e.g. a split with no
    /// samples.
    #[error("not enough data: {what}")]
    NotEnoughData {
        /// What is missing.
        what: String,
    },

    /// Serializing or deserializing a report, scaler or table failed.
    #[error("cannot serialize {what}")]
    Serde {
        /// What was being (de)serialized.
        what: String,
        /// The serde_json error.
        #[source]
        source: serde_json::Error,
    },
}

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// An [`DataError::InvalidConfig`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DataError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The 1-based line the error points at, when it points at one.
    pub fn line(&self) -> Option<u64> {
        match self {
            DataError::Read { line, .. }
            | DataError::Header { line, .. }
            | DataError::FieldCount { line, .. }
            | DataError::Malformed { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// The 1-based column the error points at, when it points at one.
    pub fn column(&self) -> Option<usize> {
        match self {
            DataError::Header { column, .. }
            | DataError::FieldCount { column, .. }
            | DataError::Malformed { column, .. } => Some(*column),
            _ => None,
        }
    }
}
