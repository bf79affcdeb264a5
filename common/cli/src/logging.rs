//! What the station and server binaries share around `main`: the `[log]`
//! section of their config files ([`LogSection`], [`LogFormat`]), the
//! `tracing` subscriber it sets up ([`LogSection::init`]), the async
//! runtime that runs the program ([`block_on_main`]) and the signals that
//! stop it ([`shutdown_signal`]).

use std::future::Future;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Log line format: the one option every binary offers (`--log-format`,
/// `[log] format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

/// `[log]`: logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` (default) or `fedcrime=debug` (overridden by `RUST_LOG`).
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl LogSection {
    /// Installs the process's `tracing` subscriber: lines on stderr in
    /// [`format`](Self::format), filtered by `RUST_LOG` when set, else by
    /// [`level`](Self::level), else (when that does not parse) at `info`.
    ///
    /// A second call (or any earlier subscriber) leaves the first in place.
    pub fn init(&self) {
        init_tracing(self.format, &self.level, std::io::stderr, true);
    }
}

/// Installs the process's `tracing` subscriber: lines in `format` to
/// `writer`, filtered by `RUST_LOG` when set, else by `default_filter`, else
/// (when that does not parse) at `info`; `with_target` adds each line's
/// module path. Returns `false`, changing nothing, when a subscriber is
/// already installed.
pub fn init_tracing<W>(
    format: LogFormat,
    default_filter: &str,
    writer: W,
    with_target: bool,
) -> bool
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(with_target);
    match format {
        LogFormat::Text => builder.try_init().is_ok(),
        LogFormat::Json => builder.json().try_init().is_ok(),
    }
}

/// Waits for the process to be asked to stop: Ctrl-C (SIGINT) or, on Unix,
/// SIGTERM (what service managers send), and logs which. The handlers are
/// installed when this is called, so a signal that arrives before the
/// future is first polled is not lost; where a handler cannot be installed,
/// that signal is simply not waited for.
pub fn shutdown_signal() -> impl Future<Output = &'static str> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::pin!(term);
        let which = tokio::select! {
            r = ctrl_c => {
                if r.is_err() {
                    // No Ctrl-C handler: wait for the other signal only.
                    (&mut term).await;
                    "SIGTERM"
                } else {
                    "Ctrl-C"
                }
            }
            () = &mut term => "SIGTERM",
        };
        tracing::warn!("{which} received: stopping");
        which
    }
}

/// Runs `main` on a new multi-threaded tokio runtime and turns its result
/// into the process's exit code: its own on success; on an error (or when
/// the runtime cannot start) `PROGRAM: error: ...` on stderr, with the whole
/// cause chain (`{:#}`), and failure.
pub fn block_on_main<F>(program: &str, main: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<ExitCode>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{program}: error: {}", describe_error(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `outer: cause: root cause`, each
/// said once: a cause whose text the message already ends with (errors that
/// print their source in their own message) is not repeated.
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses_its_names_and_refuses_others() {
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        let err = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(
            err.contains("yaml") && err.contains("text or json"),
            "{err}"
        );
    }

    #[test]
    fn log_section_reads_toml_with_defaults() {
        let s: LogSection = toml::from_str("format = \"json\"").unwrap();
        assert_eq!(s.format, LogFormat::Json);
        assert_eq!(s.level, "info");
        assert!(toml::from_str::<LogSection>("colour = true").is_err());
        assert_eq!(
            toml::from_str::<LogSection>("").unwrap(),
            LogSection::default()
        );
    }

    #[test]
    fn block_on_main_maps_results_to_exit_codes() {
        let ok = block_on_main("t", async { Ok(ExitCode::from(3)) });
        assert_eq!(ok, ExitCode::from(3));
        let err = block_on_main("t", async { Err(anyhow::anyhow!("boom")) });
        assert_eq!(err, ExitCode::FAILURE);
    }

    /// Issue 11, defect 10: error text was printed twice, once in the
    /// message and again as its cause.
    #[test]
    fn error_text_is_printed_twice() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading CA certificate pki/ca.pem: {source}")]
        struct Reading {
            source: std::io::Error,
        }
        let e = anyhow::Error::new(Reading {
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
        .context("starting the server");
        let text = describe_error(e.as_ref());
        assert_eq!(
            text,
            "starting the server: reading CA certificate pki/ca.pem: entity not found"
        );
    }

    /// Issue 11, defect 5: SIGTERM (a service manager's stop) was not
    /// handled, so a station stopped that way said no goodbye.
    #[cfg(unix)]
    #[test]
    fn sigterm_is_not_handled() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let which = rt.block_on(async {
            let stop = shutdown_signal();
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &std::process::id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
            tokio::time::timeout(std::time::Duration::from_secs(10), stop)
                .await
                .unwrap()
        });
        assert_eq!(which, "SIGTERM");
    }
}
