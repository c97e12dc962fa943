//! The manifest recorded beside each version: its tree digest, and per entry its relative
//! path, kind, size, modification time, mode and SHA-256 (or link target).
//!
//! A line-based text file, readable by people: `dirsync-manifest 1`, `digest HEX`, then one
//! line per entry in the format of [`sync_core::state::text`]. Paths and link targets are
//! percent-encoded bytes, so any name (newlines, spaces, bytes that are not UTF-8)
//! round-trips exactly.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use checksum::Digest;
pub use sync_core::model::{Item, Items};
use sync_core::state::text::{decode_item, encode_item, parse_digest, write_atomically};

use crate::digest::tree_digest;

const HEADER: &str = "dirsync-manifest 1";

/// A version's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The tree digest of [`Manifest::items`] (SPEC §6).
    pub digest: Digest,
    /// The entries.
    pub items: Items,
}

/// A manifest file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// It could not be read or written.
    #[error("cannot access manifest {path}")]
    Io {
        /// The manifest file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Its content is damaged.
    #[error("manifest {path} is damaged: line {line}: {what}")]
    Damaged {
        /// The manifest file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
}

impl Manifest {
    /// Builds a manifest, computing the tree digest of `items`.
    pub fn new(items: Items) -> Manifest {
        Manifest {
            digest: tree_digest(&items),
            items,
        }
    }

    /// The text of the manifest file.
    pub fn encode(&self) -> String {
        let mut out = format!("{HEADER}\ndigest {}\n", hex::encode(self.digest));
        for (rel, item) in &self.items {
            encode_item(&mut out, rel, item);
        }
        out
    }

    /// Parses a manifest file's text; `path` only names it in errors.
    ///
    /// Fails if the header, a line or the recorded digest is wrong.
    pub fn decode(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let damaged = |line: usize, what: &str| ManifestError::Damaged {
            path: path.to_path_buf(),
            line,
            what: what.to_string(),
        };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, HEADER)) => {}
            _ => return Err(damaged(1, "not a manifest (bad header)")),
        }
        let digest = match lines.next() {
            Some((n, l)) => l
                .strip_prefix("digest ")
                .and_then(parse_digest)
                .ok_or_else(|| damaged(n, "bad digest line"))?,
            None => return Err(damaged(2, "missing digest line")),
        };
        let mut items = Items::new();
        for (n, line) in lines {
            let (rel, item) = decode_item(line).ok_or_else(|| damaged(n, "bad entry"))?;
            if items.insert(rel, item).is_some() {
                return Err(damaged(n, "duplicate path"));
            }
        }
        let manifest = Manifest::new(items);
        if manifest.digest != digest {
            return Err(damaged(2, "recorded digest does not match the entries"));
        }
        Ok(manifest)
    }

    /// Reads and parses the manifest file at `path`.
    ///
    /// Fails if it cannot be read or is damaged.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let bytes = fs::read(path).map_err(|source| ManifestError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| ManifestError::Damaged {
            path: path.to_path_buf(),
            line: 0,
            what: "not UTF-8 text".into(),
        })?;
        Manifest::decode(&text, path)
    }

    /// Writes the manifest to `path` atomically (temporary file, flush, rename).
    ///
    /// Fails if it cannot be written.
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        write_atomically(path, &self.encode()).map_err(|source| ManifestError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Number of entries that are not directories.
    pub fn non_dir_count(&self) -> usize {
        self.items
            .values()
            .filter(|i| !matches!(i, Item::Dir { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use sync_core::model::{Meta, Timestamp};

    fn sample() -> Manifest {
        let t = Timestamp { secs: -5, nanos: 7 };
        let mut items = Items::new();
        items.insert(
            "d".into(),
            Item::Dir {
                meta: Meta::plain(0o755, t),
            },
        );
        items.insert(
            PathBuf::from(OsString::from_vec(b"d/caf\xe9 %\n.txt".to_vec())),
            Item::File {
                digest: [9; 32],
                size: 12,
                meta: Meta::plain(0o640, t),
            },
        );
        items.insert(
            "l".into(),
            Item::Symlink {
                target: "../a b".into(),
                meta: Meta::plain(0o777, t),
            },
        );
        Manifest::new(items)
    }

    #[test]
    fn manifest_round_trips_odd_names() {
        let m = sample();
        let back = Manifest::decode(&m.encode(), Path::new("m")).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn damaged_manifest_is_rejected_with_its_line() {
        let text = sample().encode();
        let cut = &text[..text.len() - 3];
        assert!(Manifest::decode(cut, Path::new("m")).is_err());
        let edited = text.replace(&hex::encode([9u8; 32]), &hex::encode([8u8; 32]));
        let err = Manifest::decode(&edited, Path::new("m")).unwrap_err();
        assert!(err.to_string().contains("digest does not match"), "{err}");
        let escaping = text.replace("F ", "F ../");
        assert!(Manifest::decode(&escaping, Path::new("m")).is_err());
        let outside = text.replace(" d/caf", " ../caf");
        assert!(Manifest::decode(&outside, Path::new("m")).is_err());
    }
}
