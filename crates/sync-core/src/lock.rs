//! One process per destination: an `flock` on the directory itself, dropped by the kernel
//! when the process dies, so a crash never leaves a stale lock and no lock file is ever
//! mirrored or left behind.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes an exclusive lock on `dir` without waiting.
    ///
    /// Fails with [`Error::Locked`] if another process holds it, [`Error::Lock`] if the
    /// directory cannot be opened.
    pub fn acquire(dir: &Path) -> Result<DirLock, Error> {
        let file = File::open(dir).map_err(|source| Error::Lock {
            path: dir.to_path_buf(),
            source,
        })?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock {
                _file: file,
                path: dir.to_path_buf(),
            }),
            Err(TryLockError::WouldBlock) => Err(Error::Locked {
                path: dir.to_path_buf(),
            }),
            Err(TryLockError::Error(source)) => Err(Error::Lock {
                path: dir.to_path_buf(),
                source,
            }),
        }
    }

    /// The locked directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
