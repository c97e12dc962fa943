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

/// A lock on a directory *path* rather than on the directory itself, so that it can be taken
/// when the directory does not exist (a restore of a deleted directory) and is shared by every
/// process of the user whatever directory it runs from: an `flock` on a file named after the
/// path, in a per-user directory under the system's temporary directory.
#[derive(Debug)]
pub struct PathLock {
    _file: File,
}

impl PathLock {
    /// Takes an exclusive lock on `path` (canonical, or absolute if it does not exist) without
    /// waiting.
    ///
    /// Fails with [`Error::Locked`] if another process holds it, [`Error::Lock`] if the lock
    /// file cannot be created.
    pub fn acquire(path: &Path) -> Result<PathLock, Error> {
        use sha2::{Digest as _, Sha256};
        let uid = rustix::process::getuid().as_raw();
        let dir = std::env::temp_dir().join(format!("oneway-locks-{uid}"));
        let lock_err = |source| Error::Lock {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(lock_err)?;
        let name = hex::encode(Sha256::digest(path.as_os_str().as_encoded_bytes()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(&name[..32]))
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => Ok(PathLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::Locked {
                path: path.to_path_buf(),
            }),
            Err(TryLockError::Error(source)) => Err(lock_err(source)),
        }
    }
}
