//! One process per destination (SPEC §7), with locks that no other user can create, replace or
//! hold (issue 20): `flock`ed files in a directory that only the running user owns and can
//! write ([`LockDir`], where [`places::lock_dir`] says), named after the locked directory's
//! device and inode ([`LockDir::lock_dir`]) or, for a directory that may not exist yet (a
//! restore of a deleted one), after its path ([`LockDir::lock_path`]).
//!
//! Locking the roots themselves, as before, let anyone who could open BACKUP hold its lock and
//! stop every run; a lock file in a shared temporary directory let anyone plant a link at its
//! predictable name. The kernel drops an `flock` when its process dies, so a crash never leaves
//! a stale lock; a lock file is removed when its lock is released, so the directory does not
//! fill up.

use std::fs::{File, TryLockError};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};
use sha2::{Digest as _, Sha256};

use crate::error::Error;
use crate::run::{places, trust};

/// The running user's lock directory, held open: every lock file is opened relative to it.
#[derive(Debug, Clone)]
pub struct LockDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

/// A lock, held until dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    dir: Arc<OwnedFd>,
    name: String,
}

/// Tries to take a lock before giving up on a lock file that keeps being released under us.
const TRIES: usize = 100;

impl LockDir {
    /// The running user's lock directory ([`places::lock_dir`]), made if missing.
    ///
    /// Fails, naming the directory and what to mend, if it is not the user's own (see
    /// [`trust::own_dir`]) or cannot be made, or if there is no place for it.
    pub fn open() -> Result<LockDir, Error> {
        let path = places::lock_dir().ok_or(Error::NoLockDir)?;
        LockDir::at(&path)
    }

    /// The lock directory at `path`, made if missing; as [`LockDir::open`].
    pub fn at(path: &Path) -> Result<LockDir, Error> {
        let (fd, real) = trust::own_dir(path).map_err(|d| d.about("the lock directory", path))?;
        Ok(LockDir {
            fd: Arc::new(fd),
            path: real,
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Locks the directory `dir` (a root, canonical), whatever path reaches it: the lock file
    /// is named after its device and inode.
    ///
    /// Fails with [`Error::Locked`] if another process of the user holds it, [`Error::Lock`]
    /// if `dir` cannot be looked at or the lock file cannot be made.
    pub fn lock_dir(&self, dir: &Path) -> Result<Lock, Error> {
        let st = rustix::fs::stat(dir).map_err(|e| Error::Lock {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        self.take(format!("dir-{:x}-{:x}.lock", st.st_dev, st.st_ino), dir)
    }

    /// Locks the path `path` (canonical, or absolute if it does not exist), which need not
    /// exist: the lock file is named after a hash of the path.
    ///
    /// Fails as [`LockDir::lock_dir`] does.
    pub fn lock_path(&self, path: &Path) -> Result<Lock, Error> {
        let hash = hex::encode(Sha256::digest(path.as_os_str().as_bytes()));
        self.take(format!("path-{}.lock", &hash[..32]), path)
    }

    fn take(&self, name: String, what: &Path) -> Result<Lock, Error> {
        let failed = |source: io::Error| Error::Lock {
            path: what.to_path_buf(),
            source,
        };
        for _ in 0..TRIES {
            let fd = rustix::fs::openat(
                &*self.fd,
                name.as_str(),
                OFlags::RDONLY
                    | OFlags::CREATE
                    | OFlags::NOFOLLOW
                    | OFlags::NOCTTY
                    | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| failed(e.into()))?;
            let file = File::from(fd);
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::Locked {
                        path: what.to_path_buf(),
                        lock: self.path.join(&name),
                    });
                }
                Err(TryLockError::Error(source)) => return Err(failed(source)),
            }
            // The holder we waited for may have released the lock and removed the file between
            // our open and our flock: then we hold a file nobody else will find, and try again.
            let held = rustix::fs::fstat(&file).map_err(|e| failed(e.into()))?;
            match rustix::fs::statat(&*self.fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(now) if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino) => {
                    return Ok(Lock {
                        _file: file,
                        dir: Arc::clone(&self.fd),
                        name,
                    });
                }
                Ok(_) | Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(failed(e.into())),
            }
        }
        Err(failed(io::Error::other(
            "its lock file kept being removed under us",
        )))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held (the file closes after this), so whoever opens the name
        // next makes a new file, and whoever opened the old one sees it is gone.
        let _ = rustix::fs::unlinkat(&*self.dir, self.name.as_str(), AtFlags::empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_locked_once_whatever_path_reaches_it() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = LockDir::at(&tmp.path().join("locks")).unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let other_path = tmp.path().join("via");
        std::os::unix::fs::symlink(&root, &other_path).unwrap();

        let held = locks.lock_dir(&root).unwrap();
        match locks.lock_dir(&other_path) {
            Err(Error::Locked { path, lock }) => {
                assert_eq!(path, other_path);
                assert!(lock.starts_with(locks.path()), "{}", lock.display());
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        // Released: taken again, and the lock file is gone in between.
        drop(held);
        assert_eq!(std::fs::read_dir(locks.path()).unwrap().count(), 0);
        let _again = locks.lock_dir(&root).unwrap();
    }

    #[test]
    fn a_path_is_locked_even_before_it_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = LockDir::at(&tmp.path().join("locks")).unwrap();
        let missing = tmp.path().join("deleted");
        let held = locks.lock_path(&missing).unwrap();
        assert!(matches!(
            locks.lock_path(&missing),
            Err(Error::Locked { .. })
        ));
        // A path lock and a directory lock are different locks.
        std::fs::create_dir(&missing).unwrap();
        let _dir = locks.lock_dir(&missing).unwrap();
        drop(held);
        let _again = locks.lock_path(&missing).unwrap();
    }

    #[test]
    fn a_link_at_a_lock_files_name_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = LockDir::at(&tmp.path().join("locks")).unwrap();
        let target = tmp.path().join("target");
        let path = tmp.path().join("p");
        let hash = hex::encode(Sha256::digest(path.as_os_str().as_bytes()));
        let name = locks.path().join(format!("path-{}.lock", &hash[..32]));
        std::os::unix::fs::symlink(&target, &name).unwrap();
        assert!(matches!(locks.lock_path(&path), Err(Error::Lock { .. })));
        assert!(!target.exists());
    }
}
