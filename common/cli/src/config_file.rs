//! The TOML config files of the station and server binaries: reading and
//! parsing them, and [`ConfigFileError`], which names the file or the bad
//! setting by its path in the file (e.g. `data.area`).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config file that cannot be read or parsed, or a setting that is out of
/// range or inconsistent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// A setting is out of range or inconsistent.
    #[error("invalid setting {field}: {message}")]
    Setting {
        /// The setting's path in the config file, e.g. `data.area` or
        /// `federation.min_fit`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The file is not valid TOML for the configuration it should hold.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line, column and key).
        source: Box<toml::de::Error>,
    },
    /// The file could not be read.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl ConfigFileError {
    /// A [`Setting`](Self::Setting) error.
    pub fn setting(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigFileError::Setting {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses TOML text; `origin` names it in errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigFileError> {
    toml::from_str(text).map_err(|source| ConfigFileError::Parse {
        path: origin.to_path_buf(),
        source: Box::new(source),
    })
}

/// Reads and parses a TOML file.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Io {
        what: "reading the config",
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Small {
        rounds: u32,
    }

    #[test]
    fn parses_reads_and_names_the_file_or_setting() {
        let ok: Small = parse_toml("rounds = 3", Path::new("a.toml")).unwrap();
        assert_eq!(ok, Small { rounds: 3 });
        let bad = parse_toml::<Small>("round = 3", Path::new("a.toml")).unwrap_err();
        assert!(matches!(bad, ConfigFileError::Parse { .. }));
        assert!(bad.to_string().starts_with("a.toml: "), "{bad}");
        let missing = read_toml::<Small>(Path::new("/nonexistent/b.toml")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("reading the config /nonexistent/b.toml: "),
            "{missing}"
        );
        assert_eq!(
            ConfigFileError::setting("train.lr", "must be positive").to_string(),
            "invalid setting train.lr: must be positive"
        );
    }
}
