//! The data pipeline end to end through files on disk: the real samples,
//! gzip-compressed copies of them, and synthetic files written and read back.

use std::io::Write;

use fedcrime_data::loader::{load_path, load_path_with, LoadOptions};
use fedcrime_data::synth::{self, Compression, SynthConfig};
use fedcrime_data::{areas, DataError};

use crate::shared_data::la_crime_dir;

#[test]
fn real_samples_load_the_same_plain_and_gzipped() {
    let Some(dir) = la_crime_dir() else {
        eprintln!("skipped: ../shared/data/la-crime is absent");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (file, rows) in [
        ("la_crime_2020_sample.csv", 10_000),
        ("la_crime_2024_02.csv", 15_661),
    ] {
        let plain = load_path(&dir.join(file)).unwrap();
        assert_eq!(plain.report.rows_kept, rows, "{file}");
        assert_eq!(plain.report.areas.len(), areas::AREAS.len(), "{file}");
        let gz_path = tmp.path().join(format!("{file}.gz"));
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz_path).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(&std::fs::read(dir.join(file)).unwrap())
            .unwrap();
        enc.finish().unwrap();
        let gz = load_path(&gz_path).unwrap();
        assert_eq!(gz.incidents, plain.incidents, "{file}");
        assert_eq!(gz.report.imputed, plain.report.imputed, "{file}");
    }
}

#[test]
fn truncated_gzip_file_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cut.csv.gz");
    let cfg = SynthConfig {
        compression: Compression::Gzip,
        ..SynthConfig::new(5_000, 2)
    };
    let mut bytes = Vec::new();
    synth::generate(&cfg, &mut bytes).unwrap();
    bytes.truncate(bytes.len() * 2 / 3);
    std::fs::write(&path, &bytes).unwrap();
    let err = load_path(&path).unwrap_err();
    assert!(
        matches!(err, DataError::Read { .. } | DataError::FieldCount { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("cut.csv.gz: "), "{err}");
    assert!(err.line().is_some_and(|l| l > 1), "{err}");
}

#[test]
fn synthetic_files_read_back_as_generated() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["s.csv", "s.csv.gz"] {
        let path = tmp.path().join(name);
        let cfg = SynthConfig {
            compression: Compression::from_path(&path),
            days: 90,
            ..SynthConfig::new(30_000, 17)
        };
        let summary = synth::generate(&cfg, std::fs::File::create(&path).unwrap()).unwrap();
        assert_eq!(summary.bytes, std::fs::metadata(&path).unwrap().len());
        // small chunks on several threads, to cross many chunk boundaries
        let opts = LoadOptions {
            threads: 3,
            chunk_bytes: 64 << 10,
            ..LoadOptions::default()
        };
        let loaded = load_path_with(&path, &opts).unwrap();
        let direct = synth::generate_incidents_with(&cfg).unwrap();
        assert_eq!(loaded.report.rows_kept, 30_000);
        assert!(
            loaded.incidents == direct.incidents,
            "{name} differs from generate_incidents"
        );
        assert_eq!(loaded.report.areas, direct.report.areas);
    }
}
