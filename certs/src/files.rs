//! File helpers: atomic writes with explicit permissions and a directory lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{CertsError, Result};

/// Permission bits of private keys: owner read/write only.
pub const KEY_MODE: u32 = 0o600;
/// Permission bits of certificates, CRL and manifest: world readable.
pub const PUBLIC_MODE: u32 = 0o644;
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

/// Writes `bytes` to `path` atomically: a temporary file in the same directory,
/// created with `mode` from the start (a key is never readable by others, not
/// even briefly), fsynced, renamed over `path`, then the directory fsynced.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options
            .open(&tmp)
            .map_err(|e| CertsError::io("creating", &tmp, e))?;
        // `mode` is filtered by the umask at creation; set it exactly.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| CertsError::io("setting permissions of", &tmp, e))?;
        }
        file.write_all(bytes)
            .map_err(|e| CertsError::io("writing", &tmp, e))?;
        file.sync_all()
            .map_err(|e| CertsError::io("syncing", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| CertsError::io("renaming into place", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename durable; not every platform can open a directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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
