//! # fedcrime-files
//!
//! The file building blocks every fedcrime crate uses, written once:
//!
//! - [`AtomicFile`] and [`write_atomic`]: replace a file so that a crash
//!   leaves either the old file or the new one, never a mix. The bytes go to
//!   a temp file in the same directory (created with `create_new`, with its
//!   final permission bits from the start, so a private key is never readable
//!   by others), which is fsynced, renamed over the target, and then the
//!   directory is fsynced so the rename itself is durable.
//! - [`sync_dir`]: make a directory's new entries durable.
//! - [`CsvLog`]: a CSV table (the `csv` crate's writer, so fields are quoted
//!   as needed) created atomically with its header and the rows it already
//!   has, then appended to row by row, each row on disk before `append`
//!   returns ([`append_durable`]). Metrics files of the server and the
//!   simulator use it.
//!
//! Nothing here knows about federated learning; errors name the file and
//! the step that failed ([`FilesError`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file operation that failed, with the file and the step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    /// An I/O step failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// The step (`create`, `write`, `fsync`, `rename into`, ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The path names no file (it ends in `..` or is a root).
    #[error("{} names no file", .0.display())]
    NoFileName(PathBuf),
    /// A CSV record could not be written.
    #[error("cannot write a CSV record to {}: {source}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// The CSV error.
        #[source]
        source: csv::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = FilesError> = std::result::Result<T, E>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FilesError + 'a {
    move |source| FilesError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Permission bits of files that anyone on the machine may read.
pub const PUBLIC_MODE: u32 = 0o644;
/// Permission bits of secrets (private keys): the owner only.
pub const PRIVATE_MODE: u32 = 0o600;

/// Distinguishes temp files of concurrent writers within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written that replaces `dest` only when [`commit`](Self::commit)
/// succeeds; dropped uncommitted, it removes its temp file and `dest` is
/// untouched.
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
}

impl AtomicFile {
    /// Starts replacing `dest` with a world-readable file ([`PUBLIC_MODE`]).
    pub fn create(dest: impl AsRef<Path>) -> Result<Self> {
        Self::create_with_mode(dest, PUBLIC_MODE)
    }

    /// Starts replacing `dest` with a file of permission bits `mode` (set
    /// exactly, whatever the umask, on Unix; ignored elsewhere).
    pub(crate) fn create_with_mode(dest: impl AsRef<Path>, mode: u32) -> Result<Self> {
        let dest = dest.as_ref();
        let name = dest
            .file_name()
            .ok_or_else(|| FilesError::NoFileName(dest.to_path_buf()))?;
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        let file = options.open(&tmp).map_err(io_err("create", &tmp))?;
        let me = AtomicFile {
            file: Some(file),
            tmp,
            dest: dest.to_path_buf(),
            dir,
        };
        // The mode given at creation is filtered by the umask; set it exactly.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Some(f) = &me.file {
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_err("set the permissions of", &me.tmp))?;
            }
        }
        #[cfg(not(unix))]
        let _ = mode;
        Ok(me)
    }

    /// The file it will replace.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flushes the new contents to disk, renames them over the destination
    /// and makes the rename durable.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().ok_or_else(|| FilesError::Io {
            what: "commit",
            path: self.dest.clone(),
            source: io::Error::other("the file was already committed"),
        })?;
        file.sync_all().map_err(io_err("fsync", &self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.dest).map_err(io_err("rename into", &self.dest))?;
        // Renamed: nothing left for Drop to remove.
        self.tmp = PathBuf::new();
        sync_dir(&self.dir)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("the file was committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file = None;
            // Best effort: an uncommitted temp file is garbage.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Replaces `dest` with `bytes` atomically and durably ([`AtomicFile`],
/// world-readable).
pub fn write_atomic(dest: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic_with_mode(dest, bytes, PUBLIC_MODE)
}

/// [`write_atomic`] with permission bits `mode` (e.g. [`PRIVATE_MODE`]).
pub fn write_atomic_with_mode(dest: impl AsRef<Path>, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = AtomicFile::create_with_mode(dest, mode)?;
    let tmp = f.tmp.clone();
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.commit()
}

/// Flushes a directory's entries (a rename or a new file) to disk.
pub fn sync_dir(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", dir))
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened as files here; the rename is as
        // durable as the OS makes it.
        let _ = dir;
        Ok(())
    }
}

/// A CSV table on disk that grows by whole rows.
#[derive(Debug)]
pub struct CsvLog {
    path: PathBuf,
}

impl CsvLog {
    /// Writes `path` anew, atomically: `header`, then `rows` (the rows a
    /// resumed run keeps).
    pub fn create<R, F>(path: impl AsRef<Path>, header: &[String], rows: R) -> Result<Self>
    where
        R: IntoIterator<Item = Vec<F>>,
        F: AsRef<[u8]>,
    {
        let path = path.as_ref().to_path_buf();
        let mut bytes = Vec::new();
        {
            let mut w = csv::Writer::from_writer(&mut bytes);
            let csv_err = |source| FilesError::Csv {
                path: path.clone(),
                source,
            };
            w.write_record(header).map_err(csv_err)?;
            for row in rows {
                w.write_record(&row).map_err(csv_err)?;
            }
            w.flush().map_err(io_err("write", &path))?;
        }
        write_atomic(&path, &bytes)?;
        Ok(CsvLog { path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one row; it is on disk when this returns ([`append_durable`]).
    pub fn append<F: AsRef<[u8]>>(&self, row: &[F]) -> Result<()> {
        let line = Self::encode(&self.path, row)?;
        append_durable(&self.path, &line)
    }

    /// One row as CSV bytes, newline included.
    fn encode<F: AsRef<[u8]>>(path: &Path, row: &[F]) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        let mut w = csv::Writer::from_writer(&mut line);
        w.write_record(row).map_err(|source| FilesError::Csv {
            path: path.to_path_buf(),
            source,
        })?;
        w.flush().map_err(io_err("write", path))?;
        drop(w);
        Ok(line)
    }
}

/// Appends `bytes` to the existing file `path` and flushes them to disk
/// (`fdatasync`) before returning: a record that was acknowledged survives a
/// crash.
pub fn append_durable(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err("open", path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_data())
        .map_err(io_err("append to", path))
}

/// Reads a CSV table written by [`CsvLog`] (or any CSV with a header row):
/// the header and the rows' cells.
pub fn read_csv(path: impl AsRef<Path>) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let path = path.as_ref();
    let csv_err = |source| FilesError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut r = csv::Reader::from_path(path).map_err(csv_err)?;
    let header = r
        .headers()
        .map_err(csv_err)?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for rec in r.records() {
        rows.push(rec.map_err(csv_err)?.iter().map(str::to_string).collect());
    }
    Ok((header, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn an_uncommitted_file_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"half of the new").unwrap();
            // Dropped: the "crash" before commit.
        }
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_private_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        let f = AtomicFile::create_with_mode(&p, PRIVATE_MODE).unwrap();
        let tmp_mode = fs::metadata(&f.tmp).unwrap().permissions().mode() & 0o777;
        assert_eq!(tmp_mode, PRIVATE_MODE);
        f.commit().unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PRIVATE_MODE);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("a.bin");
        let e = write_atomic(&p, b"x").unwrap_err().to_string();
        assert!(e.contains("missing-dir"), "{e}");
        assert!(matches!(
            write_atomic(Path::new("/"), b"x"),
            Err(FilesError::NoFileName(_))
        ));
    }

    #[test]
    fn csv_log_quotes_appends_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.csv");
        let header = vec!["round".to_string(), "note".to_string()];
        let log = CsvLog::create(&p, &header, [vec!["1", "plain"]]).unwrap();
        log.append(&["2", "a, b \"quoted\""]).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text, "round,note\n1,plain\n2,\"a, b \"\"quoted\"\"\"\n");
        let (h, rows) = read_csv(&p).unwrap();
        assert_eq!(h, header);
        assert_eq!(rows[1], vec!["2", "a, b \"quoted\""]);
        // A new log over the same file starts again from its header.
        CsvLog::create(&p, &header, Vec::<Vec<String>>::new()).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "round,note\n");
    }
}
