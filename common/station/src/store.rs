//! A station's durable incident store (issue 15): the incidents a
//! prediction service ingests, appended to one log file and on disk before
//! the append returns, so an acknowledged row survives a crash.
//!
//! Format: the 8-byte magic `FCINCS01`, then one record per incident:
//! `u32` little-endian payload length, `u32` CRC-32 of the payload, the
//! payload (the [`Incident`] in bincode's standard encoding). A batch is
//! written with one `write` and one `fsync`. On open, records are read up to
//! the first one that is short or fails its checksum (a write torn by a
//! crash: never acknowledged), and the file is cut back to the last whole
//! record, so the next append starts clean.
//!
//! Incidents are unique by report number (`DR_NO`): appending one already
//! stored is a no-op, counted as a duplicate.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fedcrime_data::Incident;

/// The file's first bytes.
const MAGIC: &[u8; 8] = b"FCINCS01";
/// The largest payload a record may claim (a real one is under 200 bytes):
/// anything larger is corruption, not an incident.
const MAX_RECORD: u32 = 64 * 1024;

/// The store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The store's file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process holds the store (two services on one store would
    /// overwrite each other's acknowledged incidents).
    #[error("{path}: in use by another process (one service per store)")]
    Locked {
        /// The store's file.
        path: PathBuf,
    },
    /// The file is not an incident store.
    #[error("{path}: not a fedcrime incident store (bad magic bytes)")]
    NotAStore {
        /// The file.
        path: PathBuf,
    },
    /// An incident could not be encoded.
    #[error("encoding incident {dr_no}: {reason}")]
    Encode {
        /// Its report number.
        dr_no: u64,
        /// Why.
        reason: String,
    },
}

/// What opening found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Incidents loaded.
    pub loaded: usize,
    /// Bytes cut from the end: a record torn by a crash (never acknowledged).
    pub truncated_bytes: u64,
}

/// What an append did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// New incidents, now on disk.
    pub added: usize,
    /// Incidents already stored (or repeated in the batch), skipped.
    pub duplicates: usize,
}

/// The store: the file and the incidents in it, in arrival order.
#[derive(Debug)]
pub struct IncidentStore {
    path: PathBuf,
    file: File,
    incidents: Vec<Incident>,
    seen: HashSet<u64>,
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, op, source }
}

impl IncidentStore {
    /// Opens the store at `path`, creating it (and its folder) when absent,
    /// and loads every whole record.
    pub fn open(path: impl AsRef<Path>) -> Result<(Self, OpenReport), StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir, "create folder"))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path, "open"))?;
        // Held until the store is dropped (the OS releases it if the process dies).
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path }),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&path, "lock")(e)),
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path, "read"))?;
        if bytes.is_empty() {
            file.write_all(MAGIC).map_err(io(&path, "write"))?;
            file.sync_all().map_err(io(&path, "sync"))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fedcrime_files::sync_dir(dir).map_err(|e| StoreError::Io {
                    path: dir.to_path_buf(),
                    op: "sync folder",
                    source: std::io::Error::other(e),
                })?;
            }
            bytes.extend_from_slice(MAGIC);
        }
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(StoreError::NotAStore { path });
        }
        let mut incidents = Vec::new();
        let mut seen = HashSet::new();
        let mut at = MAGIC.len();
        while let Some((incident, next)) = read_record(&bytes, at) {
            if seen.insert(incident.dr_no) {
                incidents.push(incident);
            }
            at = next;
        }
        let truncated_bytes = (bytes.len() - at) as u64;
        if truncated_bytes > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = truncated_bytes,
                "cutting a torn record from the end of the incident store"
            );
            file.set_len(at as u64).map_err(io(&path, "truncate"))?;
            file.sync_all().map_err(io(&path, "sync"))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io(&path, "seek"))?;
        let report = OpenReport {
            loaded: incidents.len(),
            truncated_bytes,
        };
        Ok((
            IncidentStore {
                path,
                file,
                incidents,
                seen,
            },
            report,
        ))
    }

    /// Appends the incidents not stored yet, durably: when this returns
    /// `Ok`, they are on disk. On an error nothing of the batch counts as
    /// stored: what it wrote is cut off again (or, if the process dies
    /// first, at the next open).
    pub fn append(&mut self, batch: &[Incident]) -> Result<AppendReport, StoreError> {
        let mut bytes = Vec::new();
        let mut fresh: Vec<&Incident> = Vec::new();
        let mut in_batch = HashSet::new();
        for incident in batch {
            if self.seen.contains(&incident.dr_no) || !in_batch.insert(incident.dr_no) {
                continue;
            }
            let payload = bincode::serde::encode_to_vec(incident, bincode::config::standard())
                .map_err(|e| StoreError::Encode {
                    dr_no: incident.dr_no,
                    reason: e.to_string(),
                })?;
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
            fresh.push(incident);
        }
        let report = AppendReport {
            added: fresh.len(),
            duplicates: batch.len() - fresh.len(),
        };
        if fresh.is_empty() {
            return Ok(report);
        }
        let path = self.path.clone();
        let end = self.file.stream_position().map_err(io(&path, "seek"))?;
        let written = self
            .file
            .write_all(&bytes)
            .map_err(io(&path, "append"))
            .and_then(|()| self.file.sync_data().map_err(io(&path, "sync")));
        if let Err(e) = written {
            // Cut what this batch wrote, so later batches do not land after
            // a torn record (and get cut with it at the next open).
            let _ = self.file.set_len(end);
            let _ = self.file.seek(SeekFrom::Start(end));
            return Err(e);
        }
        for incident in fresh {
            self.seen.insert(incident.dr_no);
            self.incidents.push(incident.clone());
        }
        Ok(report)
    }

    /// The stored incidents, in arrival order.
    pub fn incidents(&self) -> &[Incident] {
        &self.incidents
    }

    /// Whether `dr_no` is stored.
    pub fn contains(&self, dr_no: u64) -> bool {
        self.seen.contains(&dr_no)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The record at `at`, and where the next one starts; `None` at the end or
/// at a short, oversized or corrupt record.
fn read_record(bytes: &[u8], at: usize) -> Option<(Incident, usize)> {
    let header = bytes.get(at..at + 8)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let end = at + 8 + len as usize;
    let payload = bytes.get(at + 8..end)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let (incident, used) =
        bincode::serde::decode_from_slice::<Incident, _>(payload, bincode::config::standard())
            .ok()?;
    (used == payload.len()).then_some((incident, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedcrime_data::synth::generate_incidents;

    #[test]
    fn appended_incidents_come_back_once_each_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("station/incidents.log");
        let rows = generate_incidents(50, 3);
        let (mut store, report) = IncidentStore::open(&path).unwrap();
        assert_eq!(report, OpenReport::default());
        let first = store.append(&rows[..30]).unwrap();
        assert_eq!((first.added, first.duplicates), (30, 0));
        // Overlapping batch, and a repeat inside the batch.
        let mut again = rows[20..50].to_vec();
        again.push(rows[45].clone());
        let second = store.append(&again).unwrap();
        assert_eq!((second.added, second.duplicates), (20, 11));
        // One process per store: a second opener is refused, naming why.
        let e = IncidentStore::open(&path).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        drop(store);
        let (store, report) = IncidentStore::open(&path).unwrap();
        assert_eq!(report.loaded, 50);
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(store.incidents(), &rows[..]);
        assert!(store.contains(rows[7].dr_no));
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_store_stays_usable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("incidents.log");
        let rows = generate_incidents(10, 5);
        let (mut store, _) = IncidentStore::open(&path).unwrap();
        store.append(&rows[..6]).unwrap();
        drop(store);
        let whole = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of the next batch: half a record.
        let mut record = Vec::new();
        let payload = bincode::serde::encode_to_vec(&rows[6], bincode::config::standard()).unwrap();
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload[..payload.len() / 2]);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&record)
            .unwrap();
        let (mut store, report) = IncidentStore::open(&path).unwrap();
        assert_eq!(report.loaded, 6);
        assert_eq!(report.truncated_bytes, record.len() as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        assert_eq!(store.append(&rows[6..]).unwrap().added, 4);
        drop(store);
        // A flipped byte inside a record: that record and what follows are
        // not trusted.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (store, report) = IncidentStore::open(&path).unwrap();
        assert_eq!(report.loaded, 9);
        assert!(report.truncated_bytes > 0);
        assert_eq!(store.incidents(), &rows[..9]);
    }

    #[test]
    fn other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.csv");
        std::fs::write(&path, "DR_NO,Date Rptd\n").unwrap();
        let e = IncidentStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("not a fedcrime incident store"), "{e}");
        // Untouched.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "DR_NO,Date Rptd\n");
    }
}
