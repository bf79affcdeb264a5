//! `fedcrime-sim inspect`: load and clean a crime data file (the city's
//! export or synthetic data, `.csv` or `.csv.gz`) and print the cleaning
//! report.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use fedcrime_data::areas;
use fedcrime_data::calendar::iso_date;
use fedcrime_data::loader::load_path;
use fedcrime_data::CleaningReport;
use tracing::info;

use crate::GlobalOpts;

/// Options of `fedcrime-sim inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The crime data file: the LAPD "Crime Data from 2020 to Present" CSV
    /// export (28 columns), plain or gzip-compressed.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Print the report as one JSON object on stdout instead of text (keys
    /// rows_read, rows_kept, date_min, date_max, areas, dropped, imputed, ...).
    #[arg(long)]
    pub json: bool,
}

/// Runs `fedcrime-sim inspect`.
pub fn run(args: &InspectArgs, _global: &GlobalOpts) -> Result<()> {
    let t0 = Instant::now();
    let loaded =
        load_path(&args.data).with_context(|| format!("cannot load {}", args.data.display()))?;
    info!(
        rows = loaded.report.rows_kept,
        seconds = t0.elapsed().as_secs_f64(),
        "loaded and cleaned"
    );
    if args.json {
        let json = serde_json::to_string(&loaded.report).context("cannot serialize the report")?;
        println!("{json}");
    } else {
        print!("{}", render(&loaded.report));
    }
    Ok(())
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// The report as human-readable text.
pub fn render(r: &CleaningReport) -> String {
    let mut s = String::new();
    let date = |d: Option<i32>| d.map_or_else(|| "-".to_string(), iso_date);
    let _ = writeln!(s, "{}", r.source);
    let _ = writeln!(s, "  rows read      {:>10}", r.rows_read);
    let _ = writeln!(
        s,
        "  rows kept      {:>10}  ({:.2} %)",
        r.rows_kept,
        pct(r.rows_kept, r.rows_read)
    );
    let _ = writeln!(s, "  rows dropped   {:>10}", r.rows_dropped());
    let _ = writeln!(
        s,
        "  dates          {} .. {}",
        date(r.date_min),
        date(r.date_max)
    );
    let _ = writeln!(s, "\nrows per area");
    for (code, n) in &r.areas {
        let (name, bureau) = areas::area(*code).map_or(("?", "?"), |a| (a.name, a.bureau.name()));
        let _ = writeln!(
            s,
            "  {code:>2} {name:<12} {bureau:<8} {n:>10}  {:>5.2} %",
            pct(*n, r.rows_kept)
        );
    }
    let _ = writeln!(s, "\nrows per category");
    for (name, n) in &r.categories {
        let _ = writeln!(s, "  {name:<24}{n:>10}  {:>5.2} %", pct(*n, r.rows_kept));
    }
    let section = |s: &mut String, title: &str, m: &std::collections::BTreeMap<String, u64>| {
        let _ = writeln!(s, "\n{title}");
        if m.is_empty() {
            let _ = writeln!(s, "  none");
        }
        for (k, n) in m {
            let _ = writeln!(s, "  {k:<24}{n:>10}  {:>5.2} %", pct(*n, r.rows_read));
        }
    };
    section(&mut s, "dropped (by reason)", &r.dropped);
    section(&mut s, "imputed (by column)", &r.imputed);
    if r.coords_from_area_centroid > 0 {
        let _ = writeln!(
            s,
            "  ({} coordinates from the area centroid: no known location in their district)",
            r.coords_from_area_centroid
        );
    }
    section(&mut s, "empty fields (by column)", &r.empty);
    section(&mut s, "unknown values (by column)", &r.unknown);
    section(
        &mut s,
        "repaired (re-saved or non-canonical forms)",
        &r.repairs,
    );
    for c in &r.columns_ignored {
        let _ = writeln!(s, "  column ignored: {c}");
    }
    for c in &r.columns_absent {
        let _ = writeln!(s, "  optional column absent: {c}");
    }
    for (reason, d) in &r.first_dropped {
        let _ = writeln!(
            s,
            "  first row dropped for {reason}: line {}, {} = {:?}",
            d.line, d.column, d.value
        );
    }
    let _ = writeln!(s, "\ndate layouts (date fields)");
    for (k, n) in &r.date_formats {
        let _ = writeln!(s, "  {k:<24}{n:>10}");
    }
    let _ = writeln!(
        s,
        "  rows mixing layouts     {:>10}",
        r.mixed_date_format_rows
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_section() {
        let mut r = CleaningReport {
            source: "x.csv".into(),
            rows_read: 10,
            rows_kept: 9,
            date_min: Some(0),
            date_max: Some(1),
            ..CleaningReport::default()
        };
        r.areas.insert(5, 9);
        r.dropped.insert("invalid_area".into(), 1);
        let text = render(&r);
        for needle in [
            "rows read",
            "1970-01-01 .. 1970-01-02",
            "Harbor",
            "invalid_area",
            "imputed",
            "none",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
