//! Progress bars that log lines do not tear: every bar of the process hangs
//! off one [`MultiProgress`], and the log writer ([`log_writer`]) prints
//! through it, hiding the bars for the moment a line is written.

use std::io::{self, Write};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The process's bars.
pub fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// A bar of `len` steps labelled `label` (`unit` after the counts), or a
/// hidden one when `quiet`.
pub fn bar(quiet: bool, len: u64, label: &str, unit: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let template =
        format!("{{prefix:>18}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed:>4}} {{msg}}");
    let style = ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let pb = bars().add(ProgressBar::new(len).with_style(style));
    pb.set_prefix(label.to_string());
    pb
}

/// A spinner with a message, or a hidden one when `quiet`.
pub fn spinner(quiet: bool, message: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{spinner} {msg} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let pb = bars().add(ProgressBar::new_spinner().with_style(style));
    pb.set_message(message.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// Standard error, written with the bars hidden.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogWriter;

/// The log writer for `tracing_subscriber::fmt().with_writer(...)`.
pub fn log_writer() -> LogWriter {
    LogWriter
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        bars().suspend(|| io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
