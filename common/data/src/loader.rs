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
//! incidents. Each worker splits records into fields in place (byte spans
//! into the chunk, RFC 4180 quoting) and parses them with the hand-written
//! field parsers of [`schema`](super::schema), allocating nothing per row or
//! field. The chunks' rows are then concatenated in file order
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
use super::schema::{Column, DateCache, COLUMN_COUNT};

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
pub(crate) fn load_reader_with<R: Read>(
    r: R,
    source_name: &str,
    opts: &LoadOptions,
) -> Result<Loaded> {
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

/// Where each column sits, from the header record; errors name the column.
fn layout_of(rec: &csv::ByteRecord, name: &str) -> Result<Layout> {
    let header_error = |column: usize, reason: String| DataError::Header {
        file: name.to_string(),
        line: 1,
        column,
        reason,
    };
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

/// The loader with the `csv` crate's reader splitting the records
/// (`ByteRecord`, one thread) instead of the hand-written splitter, and
/// everything after it the same (field parsing, cleaning, the report): the
/// reference `fedcrime-sim bench data` measures the splitter against.
#[cfg(feature = "bench")]
pub fn load_path_csv_crate(path: &Path) -> Result<Loaded> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| DataError::io("open", path, e))?;
    let mut buffered = BufReader::with_capacity(1 << 16, file);
    let head = buffered.fill_buf().map_err(|e| DataError::Read {
        file: name.clone(),
        line: 1,
        source: e,
    })?;
    let input: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(input);
    let mut rec = csv::ByteRecord::new();
    let read_err = |line: u64, e: csv::Error| DataError::Malformed {
        file: name.clone(),
        line,
        column: 1,
        field: "?",
        reason: e.to_string(),
    };
    if !rdr.read_byte_record(&mut rec).map_err(|e| read_err(1, e))? {
        return Err(DataError::Empty { file: name });
    }
    let layout = layout_of(&rec, &name)?;
    let mut tally = Tally::default();
    let mut dates = DateCache::default();
    let mut rows = Vec::new();
    let mut line = 1u64;
    while rdr
        .read_byte_record(&mut rec)
        .map_err(|e| read_err(line + 1, e))?
    {
        line += 1;
        if rec.len() != COLUMN_COUNT {
            if rec.len() == 1 && rec[0].is_empty() {
                continue;
            }
            return Err(DataError::FieldCount {
                file: name,
                line,
                column: rec.len().min(COLUMN_COUNT) + 1,
                expected: COLUMN_COUNT,
                found: rec.len(),
            });
        }
        let fields: [&[u8]; COLUMN_COUNT] = std::array::from_fn(|c| &rec[layout.positions[c]]);
        if let Some(incident) = clean::parse_row(&fields, &mut tally, &mut dates) {
            rows.push(incident);
        }
    }
    if tally.rows_read == 0 {
        return Err(DataError::Empty { file: name });
    }
    let (incidents, report) = clean::finish(rows, tally, &name);
    Ok(Loaded { incidents, report })
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
    /// Read buffer; `pending[..filled]` are bytes read but not yet handed
    /// out (always starting at a record start). The rest is initialized
    /// scratch, so reading into it needs no zeroing.
    pending: Vec<u8>,
    filled: usize,
    /// Line number of the first byte of `pending`.
    line: u64,
    eof: bool,
    /// Buffers of parsed chunks, for reuse.
    spare: Vec<Vec<u8>>,
    /// Where parser threads return chunk buffers.
    returned: Option<mpsc::Receiver<Vec<u8>>>,
}

impl<'a, R: Read> Loader<'a, R> {
    fn new(src: R, name: &'a str, opts: &'a LoadOptions) -> Self {
        Loader {
            src,
            name,
            opts,
            pending: Vec::new(),
            filled: 0,
            line: 1,
            eof: false,
            spare: Vec::new(),
            returned: None,
        }
    }

    /// The bytes read and not yet handed out.
    fn data(&self) -> &[u8] {
        &self.pending[..self.filled]
    }

    /// Reads until at least `want` bytes are pending or the input ends.
    fn fill(&mut self, want: usize) -> Result<()> {
        if self.filled >= want || self.eof {
            return Ok(());
        }
        if self.pending.len() < want {
            self.pending.resize(want, 0);
        }
        while self.filled < want {
            match self.src.read(&mut self.pending[self.filled..want]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let line = self.line + memchr::memchr_iter(b'\n', self.data()).count() as u64;
                    return Err(DataError::Read {
                        file: self.name.to_string(),
                        line,
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }

    /// A buffer for the next read: a returned one when there is one.
    fn buffer(&mut self) -> Vec<u8> {
        if let Some(rx) = &self.returned {
            self.spare.extend(rx.try_iter());
        }
        self.spare.pop().unwrap_or_default()
    }

    /// Takes the next chunk of whole records out of the pending bytes,
    /// reading as needed; `None` at the end of the input.
    fn next_chunk(&mut self, index: usize) -> Result<Option<Chunk>> {
        let target = self.opts.chunk_bytes.max(1024);
        self.fill(target)?;
        loop {
            if self.filled == 0 {
                return Ok(None);
            }
            let cut = if self.eof {
                Some(self.filled)
            } else {
                record_boundary(self.data())
            };
            if let Some(cut) = cut {
                // the rest moves to a fresh (or recycled) buffer
                let rest = self.filled - cut;
                let mut next = self.buffer();
                if next.len() < rest {
                    next.resize(rest, 0);
                }
                next[..rest].copy_from_slice(&self.pending[cut..self.filled]);
                let mut bytes = std::mem::replace(&mut self.pending, next);
                bytes.truncate(cut);
                self.filled = rest;
                let first_line = self.line;
                self.line += memchr::memchr_iter(b'\n', &bytes).count() as u64;
                return Ok(Some(Chunk {
                    index,
                    first_line,
                    bytes,
                }));
            }
            // no record end in the whole buffer: a very long record
            if self.filled > self.opts.max_record_bytes.max(target) {
                return Err(DataError::Malformed {
                    file: self.name.to_string(),
                    line: self.line,
                    column: 0,
                    field: "?",
                    reason: format!(
                        "record does not end within {} bytes (unbalanced quote?)",
                        self.filled
                    ),
                });
            }
            let grow = self.filled * 2;
            self.fill(grow)?;
        }
    }

    /// Reads and checks the header line.
    fn header(&mut self) -> Result<Layout> {
        self.fill(1 << 16)?;
        let end = memchr::memchr(b'\n', self.data()).map_or(self.filled, |i| i + 1);
        let line: Vec<u8> = self.pending[..end].to_vec();
        self.pending.copy_within(end..self.filled, 0);
        self.filled -= end;
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
        layout_of(&rec, self.name)
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
                self.spare.push(chunk.bytes);
                let mut index = 1;
                while let Some(chunk) = self.next_chunk(index)? {
                    let result = parse_chunk(&chunk, &layout, &name);
                    self.spare.push(chunk.bytes);
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
        let (ret_tx, ret_rx) = mpsc::channel::<Vec<u8>>();
        self.returned = Some(ret_rx);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let mut read_error = None;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let job_rx = Arc::clone(&job_rx);
                let out_tx = out_tx.clone();
                let ret_tx = ret_tx.clone();
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
                    // the reader may be gone already; the buffer is then dropped
                    let _ = ret_tx.send(chunk.bytes);
                    if out_tx.send((chunk.index, result)).is_err() {
                        return;
                    }
                });
            }
            drop(out_tx);
            drop(ret_tx);
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
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') || b == 0x7f
}

// Word-at-a-time (SWAR) byte classification: 8 bytes per `u64`, no unsafe
// code, no per-byte branches.
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// High bit set in exactly the bytes of `w` equal to `c`.
#[inline(always)]
fn eq_bytes(w: u64, c: u8) -> u64 {
    let x = w ^ (ONES * u64::from(c));
    !(((x & LOW7) + LOW7) | x) & HIGHS
}

/// High bit set in the bytes of `w` that are below 0x20 or above 0x7f.
#[inline(always)]
fn unusual_bytes(w: u64) -> u64 {
    let below_space = !(((w & LOW7) + ONES * 0x60) | w) & HIGHS;
    below_space | (w & HIGHS)
}

/// The high bits of a word's bytes as 8 bits (byte `k` -> bit `k`).
#[inline(always)]
fn gather(high_bits: u64) -> u64 {
    ((high_bits >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// Bit `i` = XOR of bits `0..=i`: inside a quoted region from its opening
/// quote up to (not including) its closing quote.
#[inline(always)]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// Bitmasks of one 64-byte block: bit `i` describes byte `i`.
struct BlockMasks {
    comma: u64,
    quote: u64,
    newline: u64,
    /// Not printable ASCII and not tab, CR or newline: to be checked.
    suspect: u64,
}

#[inline(always)]
fn block_masks(block: &[u8; 64]) -> BlockMasks {
    let mut m = BlockMasks {
        comma: 0,
        quote: 0,
        newline: 0,
        suspect: 0,
    };
    for (k, word) in block.chunks_exact(8).enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        let shift = 8 * k;
        m.comma |= gather(eq_bytes(w, b',')) << shift;
        m.quote |= gather(eq_bytes(w, b'"')) << shift;
        let unusual = unusual_bytes(w);
        if unusual != 0 {
            let nl = eq_bytes(w, b'\n');
            let allowed = nl | eq_bytes(w, b'\r') | eq_bytes(w, b'\t');
            m.newline |= gather(nl) << shift;
            m.suspect |= gather(unusual & !allowed) << shift;
        }
    }
    m
}

/// One record's place and flags, as [`split_records`] reports it.
#[derive(Clone, Copy, Debug)]
struct RecordInfo {
    /// Line the record starts on, relative to the chunk (0-based).
    line: u64,
    /// Whether it holds bytes outside printable ASCII (to be checked).
    suspect: bool,
}

/// Splits a buffer of whole records into fields, RFC 4180 style, and calls
/// `each` with every record's field spans (raw byte ranges, quotes
/// included; nothing is copied). Fields are separated by commas and records
/// by `\n` or `\r\n`; a quote opens or closes a quoted region in which
/// commas and newlines are data (`""` is a quote inside one). The buffer is
/// scanned 64 bytes at a time with bitmasks; `each`'s error stops the scan.
fn split_records<E>(
    buf: &[u8],
    mut each: impl FnMut(&[(usize, usize)], RecordInfo) -> Result<(), E>,
) -> Result<(), E> {
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(COLUMN_COUNT + 4);
    let mut field_start = 0usize;
    let mut record = RecordInfo {
        line: 0,
        suspect: false,
    };
    let mut lines = 0u64; // newlines before the current block
    let mut in_quote = 0u64; // all ones inside a quoted region
    let mut base = 0usize;
    while base < buf.len() {
        let m = match buf
            .get(base..base + 64)
            .and_then(|b| <&[u8; 64]>::try_from(b).ok())
        {
            Some(block) => block_masks(block),
            None => {
                // the last, partial block, padded with spaces
                let mut block = [b' '; 64];
                let tail = &buf[base..];
                block[..tail.len()].copy_from_slice(tail);
                block_masks(&block)
            }
        };
        let inside = if m.quote == 0 {
            in_quote
        } else {
            prefix_xor(m.quote) ^ in_quote
        };
        in_quote = 0u64.wrapping_sub(inside >> 63);
        let mut seps = (m.comma | m.newline) & !inside;
        let record_ends = m.newline & !inside;
        let mut suspect = m.suspect;
        while seps != 0 {
            let o = seps.trailing_zeros();
            seps &= seps - 1;
            let p = base + o as usize;
            let upto = u64::MAX >> (63 - o); // bits 0..=o
            if record_ends & (1 << o) == 0 {
                spans.push((field_start, p));
                field_start = p + 1;
                continue;
            }
            let end = if p > field_start && buf[p - 1] == b'\r' {
                p - 1
            } else {
                p
            };
            spans.push((field_start, end));
            record.suspect |= suspect & upto != 0;
            suspect &= !upto;
            each(&spans, record)?;
            spans.clear();
            field_start = p + 1;
            record = RecordInfo {
                line: lines + u64::from((m.newline & upto).count_ones()),
                suspect: false,
            };
        }
        record.suspect |= suspect != 0;
        lines += u64::from(m.newline.count_ones());
        base += 64;
    }
    if field_start < buf.len() || !spans.is_empty() {
        // the last record, without a final newline
        spans.push((field_start, buf.len()));
        each(&spans, record)?;
    }
    Ok(())
}

/// A field's value: its raw span without surrounding quotes.
fn unquote(raw: &[u8]) -> &[u8] {
    match raw {
        [b'"', inner @ .., b'"'] => inner,
        _ => raw,
    }
}

/// Checks that a record's fields are text: valid UTF-8 without control
/// characters. Returns the 0-based field index and a reason for the first bad
/// field.
fn check_text(buf: &[u8], spans: &[(usize, usize)]) -> Option<(usize, String)> {
    for (i, &(s, e)) in spans.iter().enumerate() {
        let field = &buf[s..e];
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
    let buf = chunk.bytes.as_slice();
    // about 250 bytes a row in the city's export
    let mut rows = Vec::with_capacity(buf.len() / 200 + 1);
    let mut tally = Tally::default();
    let mut dates = DateCache::default();
    split_records(buf, |spans, info| {
        let line = chunk.first_line + info.line;
        if spans.len() != COLUMN_COUNT {
            // a blank line is not a row
            if spans.len() == 1 && spans[0].0 == spans[0].1 {
                return Ok(());
            }
            return Err(DataError::FieldCount {
                file: name.to_string(),
                line,
                column: spans.len().min(COLUMN_COUNT) + 1,
                expected: COLUMN_COUNT,
                found: spans.len(),
            });
        }
        if info.suspect {
            if let Some((i, reason)) = check_text(buf, spans) {
                let field = Column::ALL
                    .iter()
                    .find(|c| layout.positions[c.index()] == i)
                    .map_or("?", |c| c.name());
                return Err(DataError::Malformed {
                    file: name.to_string(),
                    line,
                    column: i + 1,
                    field,
                    reason,
                });
            }
        }
        let fields: [&[u8]; COLUMN_COUNT] = std::array::from_fn(|c| {
            let (s, e) = spans[layout.positions[c]];
            unquote(&buf[s..e])
        });
        if let Some(incident) = clean::parse_row(&fields, &mut tally, &mut dates) {
            rows.push(incident);
        }
        Ok(())
    })?;
    Ok(Parsed { rows, tally })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::days_from_civil;
    use crate::clean::DropReason;
    use crate::schema::HEADER;
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

    fn split_all(text: &[u8]) -> Vec<(Vec<String>, u64, bool)> {
        let mut out = Vec::new();
        split_records::<()>(text, |spans, info| {
            let fields = spans
                .iter()
                .map(|&(s, e)| String::from_utf8_lossy(unquote(&text[s..e])).into_owned())
                .collect();
            out.push((fields, info.line, info.suspect));
            Ok(())
        })
        .unwrap();
        out
    }

    fn fields_of(text: &[u8]) -> Vec<Vec<String>> {
        split_all(text).into_iter().map(|r| r.0).collect()
    }

    #[test]
    fn swar_helpers_find_exactly_the_bytes() {
        let w = u64::from_le_bytes(*b"a,\"\n\x00\xff,z");
        assert_eq!(gather(eq_bytes(w, b',')), 0b0100_0010);
        assert_eq!(gather(eq_bytes(w, b'"')), 0b0000_0100);
        assert_eq!(gather(eq_bytes(w, b'\n')), 0b0000_1000);
        assert_eq!(gather(unusual_bytes(w)), 0b0011_1000);
        assert_eq!(prefix_xor(0b1001), 0b0111);
        // every byte value against every other, in every lane
        for c in 0..=255u8 {
            for lane in 0..8 {
                let mut bytes = [b'x'; 8];
                bytes[lane] = c;
                let w = u64::from_le_bytes(bytes);
                assert_eq!(gather(eq_bytes(w, b',')), u64::from(c == b',') << lane);
                let unusual = !(0x20..0x80).contains(&c);
                assert_eq!(gather(unusual_bytes(w)), u64::from(unusual) << lane, "{c}");
            }
        }
    }

    #[test]
    fn splitter_handles_quotes_crlf_and_missing_final_newline() {
        let rows = fields_of(b"a,\"b,c\",d\r\n\"x\"\"y\",,\"multi\nline\"\nlast,\"\"");
        assert_eq!(
            rows,
            vec![
                vec!["a", "b,c", "d"],
                vec!["x\"\"y", "", "multi\nline"],
                vec!["last", ""],
            ]
        );
        let lines: Vec<u64> = split_all(b"1,2\n\"3\n4\",5\n6\n")
            .iter()
            .map(|r| r.1)
            .collect();
        assert_eq!(lines, vec![0, 1, 3]);
        assert_eq!(fields_of(b"\n"), vec![vec![""]]);
        assert_eq!(fields_of(b""), Vec::<Vec<String>>::new());
        // suspect bytes flag their record only
        let flags: Vec<bool> = split_all(b"ok,1\nbad\x01,2\r\nt\tab,3\n")
            .iter()
            .map(|r| r.2)
            .collect();
        assert_eq!(flags, vec![false, true, false]);
    }

    /// Records spanning 64-byte blocks, quoted commas and newlines at every
    /// offset: the same fields as the csv crate finds.
    #[test]
    fn splitter_agrees_with_the_csv_crate_across_block_boundaries() {
        let mut text = String::new();
        for i in 0..300 {
            let pad = "x".repeat(i % 70);
            text.push_str(&format!(
                "{i},\"{pad}, q\",{pad},\"a \"\"b\"\" {i}\",\"line\nbreak\",{}\n",
                if i % 3 == 0 { "" } else { "end" }
            ));
        }
        let ours = fields_of(text.as_bytes());
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        let theirs: Vec<Vec<String>> = rdr
            .records()
            .map(|r| r.unwrap().iter().map(|f| f.replace('"', "\"\"")).collect())
            .collect();
        assert_eq!(ours.len(), 300);
        assert_eq!(ours, theirs);
        let lines: Vec<u64> = split_all(text.as_bytes()).iter().map(|r| r.1).collect();
        assert_eq!(lines, (0..300).map(|i| 2 * i).collect::<Vec<u64>>());
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
        assert_eq!(first.category, crate::Category::Theft);
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
