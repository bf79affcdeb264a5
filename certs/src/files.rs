//! File helpers: atomic writes with explicit permissions and a directory lock.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{CertsError, Result};

/// Permission bits of private keys: owner read/write only.
pub const KEY_MODE: u32 = fedcrime_files::PRIVATE_MODE;
/// Permission bits of certificates, CRL and manifest: world readable.
pub const PUBLIC_MODE: u32 = fedcrime_files::PUBLIC_MODE;
/// Permission bits of the directories the tool creates (they hold the CA key).
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and parents) with [`DIR_MODE`] for the directories it creates.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder
        .create(dir)
        .map_err(|e| CertsError::io("creating directory", dir, e))
}

/// Writes `bytes` to `path` atomically with permission bits `mode`, set on
/// the temp file from the start (a key is never readable by others, not even
/// briefly): [`fedcrime_files::write_atomic_with_mode`].
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    Ok(fedcrime_files::write_atomic_with_mode(path, bytes, mode)?)
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| CertsError::io("reading", path, e))
}

/// Reads a whole UTF-8 file, naming it in the error.
pub(crate) fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| CertsError::io("reading", path, e))
}

/// Removes a file if it exists.
pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CertsError::io("removing", path, e)),
    }
}

/// An exclusive lock on a PKI directory, held while it is modified; the lock
/// file is removed on drop.
#[derive(Debug)]
pub(crate) struct DirLock {
    path: PathBuf,
}

impl DirLock {
    /// Name of the lock file inside the PKI directory.
    pub(crate) const FILE: &'static str = ".fedcrime-certs.lock";

    /// Takes the lock, failing at once (no waiting) if it is held.
    pub(crate) fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                let _ = writeln!(f, "{}", std::process::id());
                Ok(DirLock { path })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(CertsError::Locked { path })
            }
            Err(e) => Err(CertsError::io("creating lock file", &path, e)),
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
