//! The hash cache (SPEC §6): a file whose size, modification time, change time and inode are
//! unchanged since it was hashed is not read again. One cache serves every kind of pass: it is
//! kept one block per directory ([`dircache`]), in the user's cache directory, one file per
//! pair of roots, never inside either root. Being a cache, a damaged or foreign file is
//! dropped with a warning and rebuilt; it never decides anything on its own.
//!
//! `stamp` says when a digest may be remembered, `dircache` stores what a pass learnt
//! ([`dircache::Learner`]) and finds the digests of scanned trees; [`read_files`] reads the
//! files it must, from both sides at once.

pub mod dircache;
pub mod stamp;

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use checksum::Digest;
use sha2::{Digest as _, Sha256};

use crate::model::Side;
use crate::tree::Tree;

pub use dircache::{DirCache, Learner};
pub use stamp::{Stamp, Timestamps, is_racy};

/// Reads and hashes `files` (each on its side of `trees`): for each, in order, its digest and
/// the time its reading began. Both sides are read at once.
pub fn read_files(
    trees: [&dyn Tree; 2],
    files: &[(Side, &Path)],
) -> Vec<(io::Result<Digest>, SystemTime)> {
    let of = |side: Side| -> Vec<&Path> {
        files
            .iter()
            .filter(|(s, _)| *s == side)
            .map(|(_, rel)| *rel)
            .collect()
    };
    let (src, dst) = (of(Side::Source), of(Side::Backup));
    let (src, dst) = rayon::join(
        || trees[Side::Source as usize].digests(&src),
        || trees[Side::Backup as usize].digests(&dst),
    );
    let (mut src, mut dst) = (src.into_iter(), dst.into_iter());
    files
        .iter()
        .map(|(side, _)| {
            match side {
                Side::Source => src.next(),
                Side::Backup => dst.next(),
            }
            .expect("one result per file")
        })
        .collect()
}

/// Opens the hash cache of the pair (`source`, `backup`, canonical roots) in the user's cache
/// directory (`$XDG_CACHE_HOME/oneway`, else `~/.cache/oneway`); one kept in memory only, with
/// a warning, when there is no such directory outside both roots.
///
/// A two-way pair has a cache apart from a mirror of the same two roots: what each records of
/// a file's attributes is what that kind of pass left alike (the mirror's records are only
/// ever compared by the mirror).
pub fn open(source: &Path, backup: &Path, two_way: bool) -> DirCache {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .and_then(|base| std::path::absolute(base).ok());
    match base.and_then(|base| location_in(&base, source, backup)) {
        Some((path, tag)) if two_way => {
            let mut tag = tag;
            tag.extend_from_slice(b"\0two-way");
            DirCache::open(path.with_extension("two-way.dircache"), tag)
        }
        Some((path, tag)) => open_at(&path, tag),
        None => {
            log::warn!(
                "no cache directory outside SOURCE and BACKUP: hashes are kept in memory only"
            );
            DirCache::in_memory()
        }
    }
}

/// Opens the cache whose per-path file, in earlier versions, was `path`.
fn open_at(path: &Path, tag: Vec<u8>) -> DirCache {
    // A per-path cache of this pair, left by an earlier version, is never read again: it would
    // only take room.
    let _ = std::fs::remove_file(path);
    DirCache::open(path.with_extension("dircache"), tag)
}

/// Where the cache of the pair lies under `base`, and the tag that names the pair inside it;
/// `None` if that place lies inside one of the roots (it would then be mirrored or deleted).
fn location_in(base: &Path, source: &Path, backup: &Path) -> Option<(PathBuf, Vec<u8>)> {
    let dir = base.join("oneway");
    let resolved = resolve_existing_prefix(&dir);
    if resolved.starts_with(source) || resolved.starts_with(backup) {
        return None;
    }
    let tag = pair_tag(source, backup);
    let name = format!("{}.cache", &hex::encode(Sha256::digest(&tag))[..32]);
    Some((dir.join(name), tag))
}

fn pair_tag(source: &Path, backup: &Path) -> Vec<u8> {
    let mut tag = source.as_os_str().as_bytes().to_vec();
    tag.push(0);
    tag.extend_from_slice(backup.as_os_str().as_bytes());
    tag
}

/// Canonicalizes the longest existing ancestor of `path` and appends the rest, so a cache
/// directory that does not exist yet is still placed correctly relative to the roots.
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(cur) {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_drops_an_older_per_path_file_of_the_pair() {
        let home = tempfile::tempdir().unwrap();
        let (source, backup) = (Path::new("/nonexistent/s"), Path::new("/nonexistent/b"));
        let (old, tag) = location_in(home.path(), source, backup).unwrap();
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        std::fs::write(&old, b"an older per-path cache").unwrap();
        let _cache = open_at(&old, tag);
        assert!(!old.exists());
    }

    #[test]
    fn no_cache_inside_a_root() {
        let root = tempfile::tempdir().unwrap();
        let source = root.path().canonicalize().unwrap();
        let base = source.join("home/.cache");
        assert!(location_in(&base, &source, Path::new("/nonexistent/b")).is_none());
        assert!(location_in(&base, Path::new("/nonexistent/s"), Path::new("/x")).is_some());
    }
}
