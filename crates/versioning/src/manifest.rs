//! The manifest recorded beside each version: its tree digest, and per entry its relative
//! path, kind, size, modification time, mode and SHA-256 (or link target).
//!
//! A line-based text file, readable by people: `dirsync-manifest 1`, `digest HEX`, then one
//! line per entry. Paths and link targets are percent-encoded bytes, so any name (newlines,
//! spaces, bytes that are not UTF-8) round-trips exactly.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use checksum::Digest;
use sync_core::scan::Timestamp;

use crate::digest::tree_digest;

const HEADER: &str = "dirsync-manifest 1";

/// One entry of a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A regular file.
    File {
        /// SHA-256 of the content.
        digest: Digest,
        /// Size in bytes.
        size: u64,
        /// Permission bits.
        mode: u32,
        /// Modification time.
        mtime: Timestamp,
    },
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
        /// Modification time.
        mtime: Timestamp,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points (never followed).
        target: PathBuf,
        /// Modification time of the link itself.
        mtime: Timestamp,
    },
}

/// Every entry of a tree by relative path, in path order.
pub type Items = BTreeMap<PathBuf, Item>;

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
            let path = escape(rel.as_os_str().as_bytes());
            let _ = match item {
                Item::File {
                    digest,
                    size,
                    mode,
                    mtime,
                } => writeln!(
                    out,
                    "F {} {size} {mode:o} {}.{:09} {path}",
                    hex::encode(digest),
                    mtime.secs,
                    mtime.nanos
                ),
                Item::Dir { mode, mtime } => {
                    writeln!(out, "D {mode:o} {}.{:09} {path}", mtime.secs, mtime.nanos)
                }
                Item::Symlink { target, mtime } => writeln!(
                    out,
                    "L {}.{:09} {path} {}",
                    mtime.secs,
                    mtime.nanos,
                    escape(target.as_os_str().as_bytes())
                ),
            };
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
            let (rel, item) = parse_item(line).ok_or_else(|| damaged(n, "bad entry"))?;
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
        let io_err = |source| ManifestError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".manifest-tmp-")
            .tempfile_in(dir)
            .map_err(io_err)?;
        tmp.write_all(self.encode().as_bytes()).map_err(io_err)?;
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(path).map_err(|e| io_err(e.error))?;
        Ok(())
    }

    /// Number of entries that are not directories.
    pub fn non_dir_count(&self) -> usize {
        self.items
            .values()
            .filter(|i| !matches!(i, Item::Dir { .. }))
            .count()
    }
}

fn parse_digest(s: &str) -> Option<Digest> {
    let bytes = hex::decode(s).ok()?;
    bytes.try_into().ok()
}

fn parse_time(s: &str) -> Option<Timestamp> {
    let (secs, nanos) = s.split_once('.')?;
    let nanos: u32 = nanos.parse().ok()?;
    (nanos < 1_000_000_000).then_some(())?;
    Some(Timestamp {
        secs: secs.parse().ok()?,
        nanos,
    })
}

fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

fn parse_path(s: &str) -> Option<PathBuf> {
    let bytes = unescape(s)?;
    let path = PathBuf::from(OsString::from_vec(bytes));
    // Only plain relative paths: a manifest must never point a restore outside its tree.
    let normal = path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    (normal && !path.as_os_str().is_empty()).then_some(path)
}

fn parse_item(line: &str) -> Option<(PathBuf, Item)> {
    let mut f = line.split(' ');
    let item = match f.next()? {
        "F" => {
            let digest = parse_digest(f.next()?)?;
            let size = f.next()?.parse().ok()?;
            let mode = parse_mode(f.next()?)?;
            let mtime = parse_time(f.next()?)?;
            let rel = parse_path(f.next()?)?;
            (
                rel,
                Item::File {
                    digest,
                    size,
                    mode,
                    mtime,
                },
            )
        }
        "D" => {
            let mode = parse_mode(f.next()?)?;
            let mtime = parse_time(f.next()?)?;
            (parse_path(f.next()?)?, Item::Dir { mode, mtime })
        }
        "L" => {
            let mtime = parse_time(f.next()?)?;
            let rel = parse_path(f.next()?)?;
            let target = PathBuf::from(OsString::from_vec(unescape(f.next()?)?));
            (rel, Item::Symlink { target, mtime })
        }
        _ => return None,
    };
    f.next().is_none().then_some(item)
}

/// Percent-encodes every byte that is not printable ASCII, plus `%` and space.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_graphic() => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let t = Timestamp { secs: -5, nanos: 7 };
        let mut items = Items::new();
        items.insert(
            "d".into(),
            Item::Dir {
                mode: 0o755,
                mtime: t,
            },
        );
        items.insert(
            PathBuf::from(OsString::from_vec(b"d/caf\xe9 %\n.txt".to_vec())),
            Item::File {
                digest: [9; 32],
                size: 12,
                mode: 0o640,
                mtime: t,
            },
        );
        items.insert(
            "l".into(),
            Item::Symlink {
                target: "../a b".into(),
                mtime: t,
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
