//! The real LAPD samples the project tests against are present where CI expects them.

use std::path::PathBuf;

/// `../shared/data/la-crime` relative to the workspace root.
pub fn la_crime_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/la-crime");
    dir.is_dir().then_some(dir)
}

#[test]
fn real_samples_are_readable_when_present() {
    let Some(dir) = la_crime_dir() else {
        eprintln!("skipped: ../shared/data/la-crime is absent");
        return;
    };
    let text = std::fs::read_to_string(dir.join("la_crime_2020_sample.csv")).unwrap();
    assert!(text.starts_with("DR_NO,Date Rptd,DATE OCC"));
}
