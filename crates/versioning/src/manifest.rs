//! The manifest recorded beside each version: its tree digests, the root directory's own
//! metadata, per entry its relative path, kind, size, modification time, mode, owner, group,
//! extended attributes and SHA-256 (or link target, or node), and which names share an inode.
//!
//! A line-based text file, readable by people:
//!
//! ```text
//! dirsync-manifest 2
//! digest HEX                                   the seed-compatible tree digest (content)
//! full-digest HEX                              everything below (see digest::full_digest)
//! R <mode> <secs>.<nanos> <uid>:<gid>:<xattrs> the root directory, if recorded
//! <one line per entry>                         sync_core::state::text's format
//! H <path> <first>                             a further name of <first>'s inode
//! ```
//!
//! Owners are `-` where not carried; the attributes' digest is hex. Paths and link targets are
//! percent-encoded bytes, so any name (newlines, spaces, bytes that are not UTF-8) round-trips
//! exactly. Manifests written before the root, the links and the full digest were recorded
//! (`dirsync-manifest 1`) still read: as recording no root and no links.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use checksum::Digest;
pub use sync_core::model::{Item, Items};
use sync_core::model::{Meta, NOT_CARRIED, Timestamp};
use sync_core::state::text::{
    decode_item, decode_path, encode_item, encode_path, parse_digest, write_atomically,
};

use crate::digest::{full_digest, tree_digest};
use crate::links::Links;

/// The header of manifests written before the root, links and full digest were recorded.
const HEADER_1: &str = "dirsync-manifest 1";
const HEADER: &str = "dirsync-manifest 2";

/// A version's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The tree digest of [`Manifest::items`] (SPEC §6): content only, the seed's
    /// `directory_checksum` for a tree of plain files.
    pub digest: Digest,
    /// The digest of everything the version holds (see [`full_digest`]): two manifests with
    /// the same one hold trees nothing could tell apart, and no new version is due.
    pub full_digest: Digest,
    /// The root directory's own mode, time, owner and attributes; `None` where the manifest
    /// was written before it was recorded.
    pub root: Option<Meta>,
    /// The entries.
    pub items: Items,
    /// The names that share an inode.
    pub links: Links,
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
    /// Builds a manifest of `items` alone (no root recorded, no links), computing its digests.
    pub fn new(items: Items) -> Manifest {
        Manifest::of(None, items, Links::default())
    }

    /// Builds the manifest of a tree whose root has `root`, whose entries are `items` and whose
    /// names `links` share inodes, computing its digests.
    pub fn of(root: Option<Meta>, items: Items, links: Links) -> Manifest {
        Manifest {
            digest: tree_digest(&items),
            full_digest: full_digest(root.as_ref(), &items, &links),
            root,
            items,
            links,
        }
    }

    /// The text of the manifest file.
    pub fn encode(&self) -> String {
        let mut out = format!(
            "{HEADER}\ndigest {}\nfull-digest {}\n",
            hex::encode(self.digest),
            hex::encode(self.full_digest)
        );
        if let Some(root) = &self.root {
            encode_root(&mut out, root);
        }
        for (rel, item) in &self.items {
            encode_item(&mut out, rel, item);
        }
        for (further, first) in self.links.iter() {
            let _ = writeln!(out, "H {} {}", encode_path(further), encode_path(first));
        }
        out
    }

    /// Parses a manifest file's text; `path` only names it in errors.
    ///
    /// Fails if the header, a line, a hard link or a recorded digest is wrong.
    pub fn decode(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let damaged = |line: usize, what: &str| ManifestError::Damaged {
            path: path.to_path_buf(),
            line,
            what: what.to_string(),
        };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        let recorded = match lines.next() {
            Some((_, HEADER)) => Recorded::All,
            Some((_, HEADER_1)) => Recorded::ContentDigest,
            _ => return Err(damaged(1, "not a manifest (bad header)")),
        };
        let mut digest_line = |prefix: &str, n_missing: usize| match lines.next() {
            Some((n, l)) => l
                .strip_prefix(prefix)
                .and_then(parse_digest)
                .ok_or_else(|| damaged(n, &format!("bad {}line", prefix))),
            None => Err(damaged(n_missing, &format!("missing {}line", prefix))),
        };
        let digest = digest_line("digest ", 2)?;
        let full = match recorded {
            Recorded::All => Some(digest_line("full-digest ", 3)?),
            Recorded::ContentDigest => None,
        };
        let mut root = None;
        let mut items = Items::new();
        let mut links = Vec::new();
        for (n, line) in lines {
            match (recorded, line.split_once(' ')) {
                (Recorded::All, Some(("R", fields))) => {
                    let meta = decode_root(fields).ok_or_else(|| damaged(n, "bad root line"))?;
                    if root.replace(meta).is_some() {
                        return Err(damaged(n, "a second root line"));
                    }
                }
                (Recorded::All, Some(("H", fields))) => {
                    let pair = fields
                        .split_once(' ')
                        .and_then(|(a, b)| Some((decode_path(a)?, decode_path(b)?)))
                        .ok_or_else(|| damaged(n, "bad hard link"))?;
                    links.push((n, pair));
                }
                _ => {
                    let (rel, item) = decode_item(line).ok_or_else(|| damaged(n, "bad entry"))?;
                    if items.insert(rel, item).is_some() {
                        return Err(damaged(n, "duplicate path"));
                    }
                }
            }
        }
        let mut linked = Links::default();
        for (n, (further, first)) in links {
            // Names of one inode are files of the version, with one content and metadata.
            let file = |rel: &Path| match items.get(rel) {
                Some(item @ Item::File { .. }) => Some(item),
                _ => None,
            };
            let same = file(&further).is_some() && file(&further) == file(&first);
            if !same || !linked.insert(further, first) {
                return Err(damaged(n, "bad hard link"));
            }
        }
        let manifest = Manifest::of(root, items, linked);
        if manifest.digest != digest {
            return Err(damaged(2, "recorded digest does not match the entries"));
        }
        if full.is_some_and(|full| full != manifest.full_digest) {
            return Err(damaged(
                3,
                "recorded full digest does not match the entries",
            ));
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

/// What a manifest file records, by its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    /// Everything: the root, the links and the full digest (`dirsync-manifest 2`).
    All,
    /// The entries and their content digest only (`dirsync-manifest 1`).
    ContentDigest,
}

/// Appends the root line, `R <mode> <secs>.<nanos> <uid>:<gid>:<xattrs>`.
fn encode_root(out: &mut String, meta: &Meta) {
    let id = |id: u32| match id {
        NOT_CARRIED => "-".to_string(),
        id => id.to_string(),
    };
    let _ = writeln!(
        out,
        "R {:o} {}.{:09} {}:{}:{:x}",
        meta.mode,
        meta.mtime.secs,
        meta.mtime.nanos,
        id(meta.uid),
        id(meta.gid),
        meta.xattrs
    );
}

/// Parses what follows `R ` on a root line.
fn decode_root(fields: &str) -> Option<Meta> {
    let mut f = fields.split(' ');
    let mode = u32::from_str_radix(f.next()?, 8)
        .ok()
        .filter(|m| *m <= 0o7777)?;
    let (secs, nanos) = f.next()?.split_once('.')?;
    let nanos = Some(nanos)
        .filter(|n| n.len() == 9 && n.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()?;
    let mtime = Timestamp {
        secs: secs.parse().ok()?,
        nanos,
    };
    let mut owners = f.next()?.split(':');
    let mut id = || -> Option<u32> {
        match owners.next()? {
            "-" => Some(NOT_CARRIED),
            n => n.parse().ok().filter(|&n| n != NOT_CARRIED),
        }
    };
    let (uid, gid) = (id()?, id()?);
    let xattrs = u64::from_str_radix(owners.next()?, 16).ok()?;
    (owners.next().is_none() && f.next().is_none()).then_some(Meta {
        mode,
        mtime,
        uid,
        gid,
        xattrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

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
        let shared = Item::File {
            digest: [3; 32],
            size: 5,
            meta: Meta {
                uid: 1000,
                gid: NOT_CARRIED,
                xattrs: 0xabc,
                ..Meta::plain(0o4755, t)
            },
        };
        for rel in ["d/one", "d/two", "three"] {
            items.insert(rel.into(), shared.clone());
        }
        let mut links = Links::default();
        assert!(links.insert("d/two".into(), "d/one".into()));
        assert!(links.insert("three".into(), "d/one".into()));
        let root = Meta {
            uid: 0,
            gid: 65534,
            xattrs: 1,
            ..Meta::plain(0o750, t)
        };
        Manifest::of(Some(root), items, links)
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
        // The root's metadata and the links are covered by the full digest.
        let chmodded = text.replace("R 750 ", "R 700 ");
        let err = Manifest::decode(&chmodded, Path::new("m")).unwrap_err();
        assert!(
            err.to_string().contains("full digest does not match"),
            "{err}"
        );
        let unlinked: String = text
            .lines()
            .filter(|l| !l.starts_with("H three "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(Manifest::decode(&unlinked, Path::new("m")).is_err());
        // A link between names that are not one file is no link.
        let to_a_dir = text.replace("H three d/one", "H three d");
        assert!(Manifest::decode(&to_a_dir, Path::new("m")).is_err());
    }

    /// A manifest written before the root, the links and the full digest were recorded still
    /// reads, as recording none; its full digest is not a newer manifest's, so the next pass
    /// makes a version that records them.
    #[test]
    fn manifest_of_the_first_format_still_reads() {
        let t = Timestamp { secs: 1, nanos: 2 };
        let mut items = Items::new();
        items.insert(
            "a".into(),
            Item::File {
                digest: [9; 32],
                size: 12,
                meta: Meta::plain(0o640, t),
            },
        );
        let digest = tree_digest(&items);
        let text = format!(
            "dirsync-manifest 1\ndigest {}\nF {} 12 640 1.000000002 a\n",
            hex::encode(digest),
            hex::encode([9u8; 32])
        );
        let old = Manifest::decode(&text, Path::new("m")).unwrap();
        assert_eq!(old, Manifest::new(items.clone()));
        assert_eq!(old.root, None);
        assert!(old.links.is_empty());
        let now = Manifest::of(Some(Meta::plain(0o755, t)), items, Links::default());
        assert_eq!(now.digest, old.digest);
        assert_ne!(now.full_digest, old.full_digest);
        // The first format has no root or link lines.
        let with_root = text.clone() + "R 755 1.000000002 -:-:0\n";
        assert!(Manifest::decode(&with_root, Path::new("m")).is_err());
    }
}
