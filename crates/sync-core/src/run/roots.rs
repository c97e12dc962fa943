//! Checking the two directories given on the command line (SPEC §7) before anything runs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::Error;

fn check_dir(role: &'static str, path: &Path) -> Result<PathBuf, Error> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Error::NotADirectory {
                role,
                path: path.to_path_buf(),
            });
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(Error::Missing {
                role,
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(Error::Inaccessible {
                role,
                path: path.to_path_buf(),
                source,
            });
        }
    }
    fs::canonicalize(path).map_err(|source| Error::Inaccessible {
        role,
        path: path.to_path_buf(),
        source,
    })
}

/// Resolves SOURCE and BACKUP to canonical paths.
///
/// Fails if either is missing or not a directory, if both are one directory (also through a
/// symlink), or if one lies inside the other.
pub fn validate(source: &Path, backup: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let src = check_dir("SOURCE", source)?;
    let dst = check_dir("BACKUP", backup)?;
    if src == dst {
        return Err(Error::SameDirectory {
            source_dir: src,
            backup: dst,
        });
    }
    if dst.starts_with(&src) {
        return Err(Error::Nested {
            inner_role: "BACKUP",
            inner: dst,
            outer_role: "SOURCE",
            outer: src,
        });
    }
    if src.starts_with(&dst) {
        return Err(Error::Nested {
            inner_role: "SOURCE",
            inner: src,
            outer_role: "BACKUP",
            outer: dst,
        });
    }
    Ok((src, dst))
}

/// The path of `file` relative to `root`, if `file` (which need not exist) lies inside it.
pub fn relative_inside(root: &Path, file: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(file).ok()?;
    let parent = fs::canonicalize(abs.parent()?).ok()?;
    let full = parent.join(abs.file_name()?);
    full.strip_prefix(root).ok().map(Path::to_path_buf)
}
