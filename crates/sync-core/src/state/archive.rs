//! The two-way archive: what both sides held after the last completed pass, per path (kind,
//! size, mtime, mode, owner, extended attributes, SHA-256, link target), the roots' own
//! metadata under the empty path (written `.`, first; archives written before it was recorded
//! have none), bound to the two canonical roots.
//!
//! A text file in the state directory, `.twoway-archive-<hash of the roots>.txt`: a header
//! naming both roots, one [`crate::state::text`] line per entry, and an `end N` trailer so that a
//! truncated file is recognised as damaged rather than read as a smaller tree.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::Error;
use crate::model::Items;
use crate::state::text::{
    decode_item, decode_path, decode_root, encode_item, encode_path, write_atomically,
};

const HEADER: &str = "twoway-archive 1";

/// Where the archive of the pair (SOURCE, BACKUP) lives in `state_dir`.
pub fn path_for(state_dir: &Path, source: &Path, backup: &Path) -> PathBuf {
    let mut h = Sha256::new();
    h.update(source.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(backup.as_os_str().as_encoded_bytes());
    state_dir.join(format!(
        ".twoway-archive-{}.txt",
        &hex::encode(h.finalize())[..16]
    ))
}

/// Reads the archive at `path` for the pair (SOURCE, BACKUP): `None` if there is none yet
/// (the first pass).
///
/// Fails if it cannot be read, is damaged, or belongs to other roots.
pub fn load(path: &Path, source: &Path, backup: &Path) -> Result<Option<Items>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::StateUnreadable {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let damaged = |what: String| Error::StateDamaged {
        path: path.to_path_buf(),
        what,
    };
    let text = String::from_utf8(bytes).map_err(|_| damaged("not UTF-8 text".into()))?;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    if lines.next().map(|(_, l)| l) != Some(HEADER) {
        return Err(damaged("not a twoway archive (bad first line)".into()));
    }
    for (role, root) in [("source", source), ("backup", backup)] {
        let line = lines.next().map(|(_, l)| l).unwrap_or("");
        let recorded = line
            .strip_prefix(role)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(decode_path);
        match recorded {
            Some(p) if p == root => {}
            Some(p) => {
                return Err(damaged(format!(
                    "it belongs to {role} {}, not {}",
                    p.display(),
                    root.display()
                )));
            }
            None => return Err(damaged(format!("bad {role} line"))),
        }
    }
    // `save` writes entries in path order: read them into a list, check that order (which
    // also rules out duplicates), and build the map in one go rather than entry by entry.
    let mut entries: Vec<(PathBuf, crate::model::Item)> = Vec::new();
    for (n, line) in lines.by_ref() {
        if let Some(count) = line.strip_prefix("end ") {
            if count.parse::<usize>().ok() != Some(entries.len()) {
                return Err(damaged(format!("line {n}: entry count does not match")));
            }
            // Whatever follows the end is not ours to ignore (two archives run together).
            if lines.next().is_some() {
                return Err(damaged(format!("text after the end line {n}")));
            }
            return Ok(Some(entries.into_iter().collect()));
        }
        let decoded = match decode_item(line) {
            // The root comes first, if at all.
            None if entries.is_empty() => decode_root(line).map(|root| (PathBuf::new(), root)),
            decoded => decoded,
        };
        let (rel, item) = decoded.ok_or_else(|| damaged(format!("line {n}: bad entry")))?;
        if let Some((last, _)) = entries.last()
            && crate::model::path_order(last, &rel) != std::cmp::Ordering::Less
        {
            return Err(damaged(format!("line {n}: duplicate or out-of-order path")));
        }
        entries.push((rel, item));
    }
    Err(damaged("truncated (no end line)".into()))
}

/// Writes the archive atomically.
///
/// Fails if the state directory cannot be written.
pub fn save(path: &Path, source: &Path, backup: &Path, items: &Items) -> io::Result<()> {
    write_atomically(path, &encode(source, backup, items))
}

/// The text of the archive of `items` for the pair (`source`, `backup`), as [`save`] writes it.
pub fn encode(source: &Path, backup: &Path, items: &Items) -> String {
    let mut text = format!(
        "{HEADER}\nsource {}\nbackup {}\n",
        encode_path(source),
        encode_path(backup)
    );
    for (rel, item) in items {
        encode_item(&mut text, rel, item);
    }
    text.push_str(&format!("end {}\n", items.len()));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timestamp;
    use crate::model::{Item, Meta};

    #[test]
    fn archive_round_trips_and_refuses_damage_and_other_roots() {
        let dir = tempfile::tempdir().unwrap();
        let (s, b) = (Path::new("/s"), Path::new("/b"));
        let path = path_for(dir.path(), s, b);
        assert_eq!(load(&path, s, b).unwrap(), None);
        let mut items = Items::new();
        items.insert(
            "a b".into(),
            Item::File {
                digest: [1; 32],
                size: 3,
                meta: Meta::plain(0o644, Timestamp { secs: 1, nanos: 2 }),
            },
        );
        save(&path, s, b, &items).unwrap();
        assert_eq!(load(&path, s, b).unwrap(), Some(items.clone()));
        // The roots' metadata, under the empty path.
        items.insert(
            PathBuf::new(),
            Item::Dir {
                meta: Meta::plain(0o750, Timestamp { secs: 5, nanos: 0 }),
            },
        );
        save(&path, s, b, &items).unwrap();
        assert_eq!(load(&path, s, b).unwrap(), Some(items));
        assert!(
            load(&path, b, s).is_err(),
            "an archive for other roots is never used"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let without_end = text
            .lines()
            .filter(|l| !l.starts_with("end "))
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, without_end).unwrap();
        let err = load(&path, s, b).unwrap_err().to_string();
        assert!(
            err.contains("damaged") && err.contains(&path.display().to_string()),
            "{err}"
        );
    }
}
