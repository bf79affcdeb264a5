//! The streaming loader of the LAPD export: `.csv` or gzip-compressed
//! `.csv.gz` (detected by its magic bytes, any extension), parsed in parallel
//! chunks, cleaned into sorted [`Incident`]s with a [`CleaningReport`].
//!
//! # How it reads
//!
//! The calling thread reads (and inflates) the input in blocks of about
//! [`LoadOptions::chunk_bytes`], cuts each block after its last record end
//! (the last newline preceded by an even number of `"`, so quoted fields may
//! hold commas and even newlines) and hands the chunks to worker threads
//! through a bounded queue; memory stays bounded by a few chunks plus the
//! incidents. Each worker parses with one reused `csv::ByteRecord` and the
//! hand-written field parsers of [`schema`](super::schema), allocating
//! nothing per field. The chunks' rows are then concatenated in file order
//! and [cleaned](super::clean).
//!
//! # Errors
//!
//! A malformed file is an error naming the file, the line and the column: a
//! header that is not the export's 28 columns (any order is accepted), a row
//! with a different number of fields (a truncated row), bytes that cannot be
//! CSV text (invalid UTF-8 or control characters: binary garbage), a record
//! that never ends, or a truncated or corrupt gzip stream. When several chunks
//! fail, the earliest error in the file is reported. Bad *values* are not
//! errors; see [`clean`].

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tracing::debug;

use super::clean::{self, CleaningReport, Tally};
use super::error::{DataError, Result};
use super::record::Incident;
use super::schema::{Column, COLUMN_COUNT};

/// The cleaned incidents of one input and the report of their cleaning.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// Incidents sorted by `(date_occurred, minute_of_day, dr_no)`, `DR_NO`s
    /// unique.
    pub incidents: Vec<Incident>,
    /// What cleaning kept, dropped and imputed.
    pub report: CleaningReport,
}

/// Tuning knobs of the loader; the defaults suit files of any size.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Parser threads; 0 = one per available CPU.
    pub threads: usize,
    /// Target size of a chunk handed to a parser thread, in bytes.
    pub chunk_bytes: usize,
    /// Longest accepted record, in bytes (at least `chunk_bytes`); a longer
    /// one (usually an unbalanced quote) is an error.
    pub max_record_bytes: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: 0,
            chunk_bytes: 4 << 20,
            max_record_bytes: 1 << 20,
        }
    }
}

/// Loads and cleans a `.csv` or `.csv.gz` export.
pub fn load_path(path: &Path) -> Result<Loaded> {
    load_path_with(path, &LoadOptions::default())
}

/// [`load_path`] with explicit [`LoadOptions`].
pub fn load_path_with(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let file = File::open(path).map_err(|e| DataError::io("open", path, e))?;
    load_reader_with(file, &path.display().to_string(), opts)
}

/// Loads and cleans an export from any reader (plain or gzip-compressed CSV);
/// `source_name` names it in errors and in the report.
pub fn load_reader<R: Read>(r: R, source_name: &str) -> Result<Loaded> {
    load_reader_with(r, source_name, &LoadOptions::default())
}

/// [`load_reader`] with explicit [`LoadOptions`].
pub fn load_reader_with<R: Read>(r: R, source_name: &str, opts: &LoadOptions) -> Result<Loaded> {
    let mut buffered = BufReader::with_capacity(1 << 16, r);
    let head = buffered.fill_buf().map_err(|e| DataError::Read {
        file: source_name.to_string(),
        line: 1,
        source: e,
    })?;
    if head.starts_with(&[0x1f, 0x8b]) {
        debug!(source = source_name, "gzip input");
        let gz = flate2::bufread::MultiGzDecoder::new(buffered);
        Loader::new(gz, source_name, opts).run()
    } else {
        Loader::new(buffered, source_name, opts).run()
    }
}

/// Where each [`Column`] sits in the file's rows.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// `positions[column.index()]` = field index in a row.
    positions: [usize; COLUMN_COUNT],
}

/// A chunk of whole records, and the line its first record starts on.
struct Chunk {
    index: usize,
    first_line: u64,
    bytes: Vec<u8>,
}

/// What a parser thread makes of a chunk.
struct Parsed {
    rows: Vec<Incident>,
    tally: Tally,
}

struct Loader<'a, R> {
    src: R,
    name: &'a str,
    opts: &'a LoadOptions,
    /// Bytes read but not yet handed out (always starts at a record start).
    pending: Vec<u8>,
    /// Line number of the first byte of `pending`.
    line: u64,
    eof: bool,
}

impl<'a, R: Read> Loader<'a, R> {
    fn new(src: R, name: &'a str, opts: &'a LoadOptions) -> Self {
        Loader {
            src,
            name,
            opts,
            pending: Vec::new(),
            line: 1,
            eof: false,
        }
    }

    /// Reads until `pending` holds at least `want` bytes or the input ends.
    fn fill(&mut self, want: usize) -> Result<()> {
        let mut len = self.pending.len();
        if len >= want || self.eof {
            return Ok(());
        }
        self.pending.resize(want, 0);
        while len < want {
            match self.src.read(&mut self.pending[len..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.pending.truncate(len);
                    let line = self.line + memchr::memchr_iter(b'\n', &self.pending).count() as u64;
                    return Err(DataError::Read {
                        file: self.name.to_string(),
                        line,
                        source: e,
                    });
                }
            }
        }
        self.pending.truncate(len);
        Ok(())
    }

    /// Takes the next chunk of whole records out of `pending`, reading as
    /// needed; `None` at the end of the input.
    fn next_chunk(&mut self, index: usize) -> Result<Option<Chunk>> {
        let target = self.opts.chunk_bytes.max(1024);
        self.fill(target)?;
        loop {
            if self.pending.is_empty() {
                return Ok(None);
            }
            let cut = if self.eof {
                Some(self.pending.len())
            } else {
                record_boundary(&self.pending)
            };
            if let Some(cut) = cut {
                let rest = self.pending.split_off(cut);
                let bytes = std::mem::replace(&mut self.pending, rest);
                let first_line = self.line;
                self.line += memchr::memchr_iter(b'\n', &bytes).count() as u64;
                return Ok(Some(Chunk {
                    index,
                    first_line,
                    bytes,
                }));
            }
            // no record end in the whole buffer: a very long record
            if self.pending.len() > self.opts.max_record_bytes.max(target) {
                return Err(DataError::Malformed {
                    file: self.name.to_string(),
                    line: self.line,
                    column: 0,
                    field: "?",
                    reason: format!(
                        "record does not end within {} bytes (unbalanced quote?)",
                        self.pending.len()
                    ),
                });
            }
            let grow = self.pending.len() * 2;
            self.fill(grow)?;
        }
    }

    /// Reads and checks the header line.
    fn header(&mut self) -> Result<Layout> {
        self.fill(1 << 16)?;
        let end = memchr::memchr(b'\n', &self.pending).map_or(self.pending.len(), |i| i + 1);
        let line: Vec<u8> = self.pending.drain(..end).collect();
        self.line += 1;
        let header_error = |column: usize, reason: String| DataError::Header {
            file: self.name.to_string(),
            line: 1,
            column,
            reason,
        };
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(header_error(1, "the input is empty".into()));
        }
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(line.as_slice());
        let mut rec = csv::ByteRecord::new();
        let ok = rdr.read_byte_record(&mut rec);
        if !matches!(ok, Ok(true)) {
            return Err(header_error(1, "not a CSV header line".into()));
        }
        let mut positions = [usize::MAX; COLUMN_COUNT];
        for (i, raw) in rec.iter().enumerate() {
            let Ok(text) = std::str::from_utf8(raw) else {
                return Err(header_error(i + 1, "not UTF-8 text (binary data?)".into()));
            };
            let Some(col) = Column::from_name(text) else {
                let expected = Column::ALL.get(i).map_or("none", |c| c.name());
                return Err(header_error(
                    i + 1,
                    format!(
                        "found {:?}, expected {expected:?} (the LAPD export's 28 columns)",
                        truncate(text, 40)
                    ),
                ));
            };
            if positions[col.index()] != usize::MAX {
                return Err(header_error(
                    i + 1,
                    format!("column {:?} appears twice", col.name()),
                ));
            }
            positions[col.index()] = i;
        }
        if let Some(missing) = Column::ALL
            .iter()
            .find(|c| positions[c.index()] == usize::MAX)
        {
            return Err(header_error(
                rec.len() + 1,
                format!(
                    "column {:?} is missing (found {} columns)",
                    missing.name(),
                    rec.len()
                ),
            ));
        }
        Ok(Layout { positions })
    }

    fn run(mut self) -> Result<Loaded> {
        let layout = self.header()?;
        let threads = match self.opts.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let name = self.name.to_string();
        let first = self.next_chunk(0)?;
        let mut parsed: Vec<(usize, Result<Parsed>)> = Vec::new();
        match first {
            None => {}
            // one small chunk (or one thread): no worker threads
            Some(chunk) if threads == 1 || self.eof => {
                parsed.push((0, parse_chunk(&chunk, &layout, &name)));
                let mut index = 1;
                while let Some(chunk) = self.next_chunk(index)? {
                    let result = parse_chunk(&chunk, &layout, &name);
                    let failed = result.is_err();
                    parsed.push((index, result));
                    if failed {
                        break;
                    }
                    index += 1;
                }
            }
            Some(chunk) => {
                parsed = self.run_parallel(chunk, threads, &layout)?;
            }
        }
        parsed.sort_by_key(|(i, _)| *i);
        let mut tally = Tally::default();
        let mut chunks = Vec::with_capacity(parsed.len());
        for (_, result) in parsed {
            let p = result?;
            tally.merge(&p.tally);
            chunks.push(p.rows);
        }
        if tally.rows_read == 0 {
            return Err(DataError::Empty { file: name });
        }
        let rows = concat(chunks);
        let (incidents, report) = clean::finish(rows, tally, &name);
        debug!(
            source = %name,
            rows_read = report.rows_read,
            rows_kept = report.rows_kept,
            "loaded"
        );
        Ok(Loaded { incidents, report })
    }

    /// Reads chunks on this thread and parses them on `threads` workers.
    /// Returns the parsed chunks in any order; a read error is returned only
    /// when no earlier chunk failed (the earliest error wins).
    fn run_parallel(
        &mut self,
        first: Chunk,
        threads: usize,
        layout: &Layout,
    ) -> Result<Vec<(usize, Result<Parsed>)>> {
        let name = self.name.to_string();
        let (job_tx, job_rx) = mpsc::sync_channel::<Chunk>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (out_tx, out_rx) = mpsc::channel::<(usize, Result<Parsed>)>();
        let failed = std::sync::atomic::AtomicBool::new(false);
        let mut read_error = None;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let job_rx = Arc::clone(&job_rx);
                let out_tx = out_tx.clone();
                let (name, failed) = (&name, &failed);
                scope.spawn(move || loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(chunk) = job else { return };
                    let result = parse_chunk(&chunk, layout, name);
                    if result.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    if out_tx.send((chunk.index, result)).is_err() {
                        return;
                    }
                });
            }
            drop(out_tx);
            let mut next = Some(first);
            let mut index = 1;
            while let Some(chunk) = next.take() {
                if job_tx.send(chunk).is_err() || failed.load(std::sync::atomic::Ordering::Relaxed)
                {
                    break;
                }
                match self.next_chunk(index) {
                    Ok(c) => next = c,
                    Err(e) => read_error = Some((index, e)),
                }
                index += 1;
            }
            drop(job_tx);
        });
        let mut parsed: Vec<(usize, Result<Parsed>)> = out_rx.into_iter().collect();
        if let Some((index, e)) = read_error {
            // a chunk before the unreadable part failed: report that one
            let earlier_failure = parsed.iter().any(|(i, r)| *i < index && r.is_err());
            if !earlier_failure {
                return Err(e);
            }
        }
        // parsing stops at the first failure; chunks after it may be missing,
        // which is fine since the earliest error is reported
        parsed.sort_by_key(|(i, _)| *i);
        Ok(parsed)
    }
}

/// Concatenates per-chunk rows without re-copying the first.
fn concat(mut chunks: Vec<Vec<Incident>>) -> Vec<Incident> {
    let total: usize = chunks.iter().map(Vec::len).sum();
    if chunks.is_empty() {
        return Vec::new();
    }
    let mut out = std::mem::take(&mut chunks[0]);
    out.reserve_exact(total - out.len());
    for c in chunks.iter().skip(1) {
        out.extend_from_slice(c);
    }
    out
}

/// The offset just after the last record end in `buf` (which starts at a
/// record start): the last `\n` preceded by an even number of quotes.
fn record_boundary(buf: &[u8]) -> Option<usize> {
    let total = memchr::memchr_iter(b'"', buf).count();
    let mut after = 0;
    let mut end = buf.len();
    while let Some(nl) = memchr::memrchr(b'\n', &buf[..end]) {
        after += memchr::memchr_iter(b'"', &buf[nl + 1..end]).count();
        if (total - after) % 2 == 0 {
            return Some(nl + 1);
        }
        end = nl;
    }
    None
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether a byte cannot appear in CSV text: an ASCII control character
/// other than tab, carriage return and newline.
#[inline]
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') || b == 0x7f
}

/// Checks that a record is text: valid UTF-8 without control characters.
/// Returns the 0-based field index and a reason for the first bad field.
fn check_text(rec: &csv::ByteRecord) -> Option<(usize, String)> {
    let all = rec.as_slice();
    // fast path: pure printable ASCII (branch-free fold, vectorizes)
    let bad_ascii = all
        .iter()
        .fold(false, |acc, &b| acc | (b >= 0x80) | is_control(b));
    if !bad_ascii {
        return None;
    }
    for (i, field) in rec.iter().enumerate() {
        if let Some(&b) = field.iter().find(|&&b| is_control(b)) {
            return Some((i, format!("binary data: control byte 0x{b:02x}")));
        }
        if let Err(e) = std::str::from_utf8(field) {
            return Some((
                i,
                format!(
                    "binary data: invalid UTF-8 at byte {} of the field",
                    e.valid_up_to() + 1
                ),
            ));
        }
    }
    None
}

/// Parses one chunk of whole records.
fn parse_chunk(chunk: &Chunk, layout: &Layout, name: &str) -> Result<Parsed> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(chunk.bytes.as_slice());
    let mut rec = csv::ByteRecord::new();
    // about 250 bytes a row in the city's export
    let mut rows = Vec::with_capacity(chunk.bytes.len() / 200 + 1);
    let mut tally = Tally::default();
    let abs_line =
        |rec: &csv::ByteRecord| chunk.first_line + rec.position().map_or(1, |p| p.line()) - 1;
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = chunk.first_line + e.position().map_or(1, |p| p.line()) - 1;
                return Err(DataError::Malformed {
                    file: name.to_string(),
                    line,
                    column: 0,
                    field: "?",
                    reason: e.to_string(),
                });
            }
        }
        if rec.len() != COLUMN_COUNT {
            // a lone blank line is not a row
            if rec.len() == 1 && rec.get(0).is_some_and(|f| f.is_empty()) {
                continue;
            }
            let column = rec.len().min(COLUMN_COUNT) + 1;
            return Err(DataError::FieldCount {
                file: name.to_string(),
                line: abs_line(&rec),
                column,
                expected: COLUMN_COUNT,
                found: rec.len(),
            });
        }
        if let Some((i, reason)) = check_text(&rec) {
            let field = Column::ALL
                .iter()
                .find(|c| layout.positions[c.index()] == i)
                .map_or("?", |c| c.name());
            return Err(DataError::Malformed {
                file: name.to_string(),
                line: abs_line(&rec),
                column: i + 1,
                field,
                reason,
            });
        }
        let fields: [&[u8]; COLUMN_COUNT] =
            std::array::from_fn(|c| rec.get(layout.positions[c]).unwrap_or(b""));
        if let Some(incident) = clean::parse_row(&fields, &mut tally) {
            rows.push(incident);
        }
    }
    Ok(Parsed { rows, tally })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::clean::DropReason;
    use crate::data::schema::{days_from_civil, HEADER};
    use std::io::Write;
    use std::path::PathBuf;

    fn shared(file: &str) -> Option<PathBuf> {
        let p = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/la-crime"
        ))
        .join(file);
        p.is_file().then_some(p)
    }

    const ROW: &str = "241406608,02/23/2024 12:00:00 AM,02/23/2024 12:00:00 AM,0615,14,Pacific,1458,1,480,BIKE - STOLEN,0344,28,F,W,507,CONDOMINIUM/TOWNHOUSE,,,IC,Invest Cont,480,,,,5000 S  SLAUSON                      AV,,33.9943,-118.408";

    fn csv_text(rows: &[&str]) -> String {
        let mut s = HEADER.join(",");
        s.push('\n');
        for r in rows {
            s.push_str(r);
            s.push('\n');
        }
        s
    }

    fn load_str(text: &str) -> Result<Loaded> {
        load_reader(text.as_bytes(), "test.csv")
    }

    #[test]
    fn record_boundary_respects_quotes() {
        assert_eq!(record_boundary(b"a,b\nc,d\ne"), Some(8));
        assert_eq!(record_boundary(b"a,\"b\nc\",d\ne"), Some(10));
        assert_eq!(record_boundary(b"a,\"b\nc"), None);
        assert_eq!(record_boundary(b"abc"), None);
    }

    #[test]
    fn one_row_loads() {
        let loaded = load_str(&csv_text(&[ROW])).unwrap();
        assert_eq!(loaded.incidents.len(), 1);
        let r = &loaded.incidents[0];
        assert_eq!(
            (r.dr_no, r.area, r.minute_of_day),
            (241_406_608, 14, 6 * 60 + 15)
        );
        assert_eq!(r.date_occurred, days_from_civil(2024, 2, 23));
        assert_eq!(loaded.report.rows_read, 1);
    }

    #[test]
    fn crlf_line_ends_and_no_final_newline() {
        let text =
            csv_text(&[ROW, &ROW.replacen("241406608", "241406609", 1)]).replace('\n', "\r\n");
        let loaded = load_str(text.trim_end()).unwrap();
        assert_eq!(loaded.incidents.len(), 2);
    }

    #[test]
    fn header_in_another_order_is_accepted() {
        let mut cols: Vec<&str> = HEADER.to_vec();
        let mut vals: Vec<String> = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(ROW.as_bytes())
            .records()
            .next()
            .unwrap()
            .unwrap()
            .iter()
            .map(String::from)
            .collect();
        cols.swap(0, 27);
        vals.swap(0, 27);
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&cols).unwrap();
        w.write_record(&vals).unwrap();
        let bytes = w.into_inner().unwrap();
        let loaded = load_reader(bytes.as_slice(), "t").unwrap();
        assert_eq!(loaded.incidents[0].dr_no, 241_406_608);
        assert_eq!(loaded.incidents[0].lon, -118.408);
    }

    #[test]
    fn wrong_header_names_line_and_column() {
        let text = csv_text(&[ROW]).replacen("TIME OCC", "TIME", 1);
        let err = load_str(&text).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Header {
                    line: 1,
                    column: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("test.csv: line 1, column 4"),
            "{err}"
        );
        let err = load_str(&csv_text(&[ROW]).replacen(",LAT,LON", ",LAT", 1)).unwrap_err();
        assert_eq!((err.line(), err.column()), (Some(1), Some(28)), "{err}");
        let err = load_str("").unwrap_err();
        assert!(matches!(err, DataError::Header { .. }), "{err}");
        let err = load_str(&HEADER.join(",")).unwrap_err();
        assert!(matches!(err, DataError::Empty { .. }), "{err}");
    }

    #[test]
    fn short_and_long_rows_name_line_and_column() {
        let short = &ROW[..ROW.find(",IC,").unwrap()];
        let err = load_str(&csv_text(&[ROW, short])).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::FieldCount {
                    line: 3,
                    column: 19,
                    found: 18,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("line 3, column 19"), "{err}");
        let long = format!("{ROW},extra");
        let err = load_str(&csv_text(&[&long])).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::FieldCount {
                    line: 2,
                    column: 29,
                    found: 29,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn binary_garbage_is_an_error_not_a_panic() {
        let garbage = ROW.replacen("BIKE - STOLEN", "BIKE \u{0}\u{1} STOLEN", 1);
        let err = load_str(&csv_text(&[ROW, &garbage])).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Malformed {
                    line: 3,
                    column: 10,
                    field: "Crm Cd Desc",
                    ..
                }
            ),
            "{err}"
        );
        let mut bytes = csv_text(&[ROW]).into_bytes();
        bytes.extend_from_slice(&[0xff, 0xfe, 0x00, 0x9c, 0x81, b'\n']);
        let err = load_reader(bytes.as_slice(), "g").unwrap_err();
        assert_eq!(err.line(), Some(3), "{err}");
        // pure noise: the header is wrong
        let noise: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let err = load_reader(noise.as_slice(), "noise").unwrap_err();
        assert!(matches!(err, DataError::Header { line: 1, .. }), "{err}");
    }

    #[test]
    fn unbalanced_quote_is_an_error() {
        let bad = ROW.replacen("BIKE - STOLEN", "\"BIKE - STOLEN", 1);
        let err = load_str(&csv_text(&[ROW, &bad, ROW])).unwrap_err();
        assert_eq!(err.line(), Some(3), "{err}");
    }

    #[test]
    fn gzip_and_truncated_gzip() {
        let text = csv_text(&[ROW, &ROW.replacen("241406608", "241406609", 1)]);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        let loaded = load_reader(gz.as_slice(), "t.csv.gz").unwrap();
        assert_eq!(loaded.incidents.len(), 2);
        let err = load_reader(&gz[..gz.len() - 12], "t.csv.gz").unwrap_err();
        assert!(matches!(err, DataError::Read { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("t.csv.gz: read failed near line"),
            "{err}"
        );
    }

    #[test]
    fn duplicates_removed_and_counted() {
        let text = csv_text(&[ROW, ROW, ROW]);
        let loaded = load_str(&text).unwrap();
        assert_eq!(loaded.incidents.len(), 1);
        assert_eq!(loaded.report.dropped_for(DropReason::DuplicateDrNo), 2);
        assert_eq!(loaded.report.rows_read, 3);
    }

    #[test]
    fn small_chunks_and_threads_give_the_same_result() {
        let Some(path) = shared("la_crime_2024_02.csv") else {
            eprintln!("skipped: ../shared/data/la-crime is absent");
            return;
        };
        let one = load_path_with(
            &path,
            &LoadOptions {
                threads: 1,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let many = load_path_with(
            &path,
            &LoadOptions {
                threads: 3,
                chunk_bytes: 100_000,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        assert_eq!(one, many);
    }

    #[test]
    fn error_in_a_late_chunk_names_its_line() {
        let mut rows: Vec<String> = (0..400)
            .map(|i| ROW.replacen("241406608", &format!("{}", 241_406_608 + i), 1))
            .collect();
        rows[345] = rows[345][..40].to_string();
        let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
        let text = csv_text(&refs);
        let opts = LoadOptions {
            threads: 2,
            chunk_bytes: 2048,
            ..LoadOptions::default()
        };
        let err = load_reader_with(text.as_bytes(), "t", &opts).unwrap_err();
        assert_eq!(err.line(), Some(347), "{err}");
    }

    // ---- the real samples -------------------------------------------------

    fn real(file: &str) -> Option<Loaded> {
        match shared(file) {
            Some(p) => Some(load_path(&p).unwrap()),
            None => {
                eprintln!("skipped: ../shared/data/la-crime/{file} is absent");
                None
            }
        }
    }

    fn by_dr(l: &Loaded, dr_no: u64) -> &Incident {
        l.incidents.iter().find(|r| r.dr_no == dr_no).unwrap()
    }

    #[test]
    fn real_2020_sample_every_quirk() {
        let Some(l) = real("la_crime_2020_sample.csv") else {
            return;
        };
        let r = &l.report;
        assert_eq!((r.rows_read, r.rows_kept), (10_000, 10_000));
        assert_eq!(r.areas.len(), 21);
        assert_eq!(r.date_min, Some(days_from_civil(2020, 1, 1)));
        assert_eq!(r.date_max, Some(days_from_civil(2020, 12, 31)));
        // both date layouts, and rows that mix them
        assert_eq!(r.date_formats.len(), 2, "{:?}", r.date_formats);
        assert!(
            r.date_formats["MM/DD/YYYY HH:MM"] > 1000
                && r.date_formats["MM/DD/YYYY hh:mm:ss AM"] > 1000
        );
        assert_eq!(r.mixed_date_format_rows, 1180);
        let mixed = by_dr(&l, 211_015_072); // 11/29/2021 12:00:00 AM and 11/01/2020 00:00
        assert_eq!(mixed.date_reported, days_from_civil(2021, 11, 29));
        assert_eq!(mixed.date_occurred, days_from_civil(2020, 11, 1));
        assert_eq!(mixed.minute_of_day, 12 * 60);
        // leading zeros in DR_NO, AREA and Rpt Dist No
        let lead = by_dr(&l, 10_304_468);
        assert_eq!(
            (lead.area, lead.reporting_district, lead.minute_of_day),
            (3, 377, 22 * 60 + 30)
        );
        // the 13 rows with LAT/LON 0,0 get their district's mean location
        assert_eq!(r.imputed_in(Column::Lat), 13);
        assert_eq!(r.imputed_in(Column::Lon), 13);
        assert_eq!(r.coords_from_area_centroid, 0);
        let z = by_dr(&l, 200_311_971); // Rpt Dist No 0361, 29 other rows
        assert!(
            (z.lat - 34.016_84).abs() < 1e-4 && (z.lon + 118.353_44).abs() < 1e-4,
            "{z:?}"
        );
        assert!(l.incidents.iter().all(|i| clean::in_la(i.lat, i.lon)));
        // negative and zero ages are unknown; X and H sexes kept
        assert_eq!(by_dr(&l, 221_404_829).victim_age, None);
        assert_eq!(r.unknown_in(Column::VictAge), 1914);
        assert_eq!(
            l.incidents
                .iter()
                .filter(|i| i.victim_age.is_none())
                .count(),
            1914
        );
        assert_eq!(by_dr(&l, 200_204_197).victim_sex, Some(b'H'));
        assert_eq!(r.empty_in(Column::VictSex), 867);
        assert_eq!(
            l.incidents
                .iter()
                .filter(|i| i.victim_sex.is_none())
                .count(),
            867
        );
        // no weapon recorded is not a gap
        assert_eq!(r.empty_in(Column::WeaponUsedCd), 7631);
        assert_eq!(
            l.incidents
                .iter()
                .filter(|i| i.weapon_code.is_none())
                .count(),
            7631
        );
        assert_eq!(r.imputed_in(Column::WeaponUsedCd), 0);
        // a quoted field with commas does not shift the columns after it
        let q = by_dr(&l, 191_501_505); // "MULTI-UNIT DWELLING (APARTMENT, DUPLEX, ETC)"
        assert_eq!(
            (q.premise_code, q.lat, q.lon),
            (Some(502), 34.1685, -118.4019)
        );
        assert!(r.dropped.is_empty(), "{:?}", r.dropped);
        assert_sorted(&l);
    }

    #[test]
    fn real_2024_month() {
        let Some(l) = real("la_crime_2024_02.csv") else {
            return;
        };
        let r = &l.report;
        assert_eq!((r.rows_read, r.rows_kept), (15_661, 15_661));
        assert_eq!(r.areas.len(), 21);
        assert_eq!(r.areas.values().sum::<u64>(), 15_661);
        assert_eq!(r.date_min, Some(days_from_civil(2024, 2, 1)));
        assert_eq!(r.date_max, Some(days_from_civil(2024, 2, 29)));
        assert_eq!(
            r.date_formats.keys().collect::<Vec<_>>(),
            vec!["MM/DD/YYYY hh:mm:ss AM"]
        );
        assert!(r.imputed.is_empty() && r.dropped.is_empty());
        assert_eq!(
            l.incidents
                .iter()
                .filter(|i| i.weapon_code.is_none())
                .count(),
            10_207
        );
        let first = by_dr(&l, 241_406_608);
        assert_eq!(
            (first.minute_of_day, first.area, first.crime_code),
            (6 * 60 + 15, 14, 480)
        );
        assert_eq!(first.category, crate::data::Category::Theft);
        let dr: std::collections::HashSet<u64> = l.incidents.iter().map(|i| i.dr_no).collect();
        assert_eq!(dr.len(), l.incidents.len());
        assert_sorted(&l);
    }

    fn assert_sorted(l: &Loaded) {
        assert!(l.incidents.windows(2).all(|w| (
            w[0].date_occurred,
            w[0].minute_of_day,
            w[0].dr_no
        ) < (
            w[1].date_occurred,
            w[1].minute_of_day,
            w[1].dr_no
        )));
    }

    /// Real rows rewritten with the short forms other exports use (AREA `5`,
    /// TIME OCC `5`/`45`/`130`, the 24-hour date layout, unpadded district)
    /// load to the same incidents.
    #[test]
    fn real_rows_in_short_forms_load_the_same() {
        let Some(path) = shared("la_crime_2024_02.csv") else {
            eprintln!("skipped: ../shared/data/la-crime is absent");
            return;
        };
        let text = std::fs::read_to_string(path).unwrap();
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(rdr.headers().unwrap()).unwrap();
        let mut short_times = 0;
        for rec in rdr.records().take(3000) {
            let rec = rec.unwrap();
            let mut f: Vec<String> = rec.iter().map(String::from).collect();
            for c in [Column::Area, Column::TimeOcc, Column::RptDistNo] {
                let v = f[c.index()].trim_start_matches('0');
                f[c.index()] = if v.is_empty() {
                    "0".into()
                } else {
                    v.to_string()
                };
            }
            if f[Column::TimeOcc.index()].len() < 3 {
                short_times += 1;
            }
            f[Column::DateOcc.index()] =
                f[Column::DateOcc.index()].replace(" 12:00:00 AM", " 00:00");
            w.write_record(&f).unwrap();
        }
        assert!(short_times > 10);
        let rewritten = w.into_inner().unwrap();
        let short = load_reader(rewritten.as_slice(), "short").unwrap();
        let head: Vec<&str> = text.lines().take(3001).collect();
        let orig = load_reader(head.join("\n").as_bytes(), "orig").unwrap();
        assert_eq!(short.incidents, orig.incidents);
        assert_eq!(short.report.mixed_date_format_rows, 3000);
    }
}
