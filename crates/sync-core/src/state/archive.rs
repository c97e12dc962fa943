//! The two-way archive: what both sides held after the last completed pass, per path (kind,
//! size, mtime, mode, owner, extended attributes, SHA-256, link target), the roots' own
//! metadata under the empty path (written `.`, first; archives written before it was recorded
//! have none), bound to the two canonical roots.
//!
//! A text file in the state directory, `.twoway-archive-<hash of the roots>.txt`: a header
//! naming both roots, one [`crate::state::text`] line per entry, then the hard-link groups both
//! sides held, one `H <name> <first name of its group>` line per further name of a group (as
//! version manifests write them), and an `end N` trailer (N entries) so that a truncated file
//! is recognised as damaged rather than read as a smaller tree.
//!
//! The first line is `twoway-archive 2`. An archive of version 1 (written before link groups
//! were recorded) still loads, as one that records none: see [`Archive::links`].

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::Error;
use crate::model::{Item, Items};
use crate::state::text::{
    decode_item, decode_path, decode_root, encode_item, encode_path, write_atomically,
};

const HEADER: &str = "twoway-archive 2";

/// The first line of an archive written before link groups were recorded.
const HEADER_WITHOUT_LINKS: &str = "twoway-archive 1";

/// The hard-link groups of a tree: each further name of a group, with the group's first name
/// (in [`crate::model::path_order`]). Names of a file alone are in none.
pub type LinkRecord = BTreeMap<PathBuf, PathBuf>;

/// What an archive holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Archive {
    /// What both sides held, by path.
    pub items: Items,
    /// The hard-link groups both sides held; `None` where the archive records none (written
    /// before they were recorded).
    pub links: Option<LinkRecord>,
}

/// Where the archive of the pair lives in `dir`, the same whichever of its roots is named
/// first: `twoway B A` finds what `twoway A B` wrote.
pub fn path_of_pair(dir: &Path, one: &Path, other: &Path) -> PathBuf {
    let (a, b) = if one.as_os_str() <= other.as_os_str() {
        (one, other)
    } else {
        (other, one)
    };
    let mut h = Sha256::new();
    h.update(a.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(b.as_os_str().as_encoded_bytes());
    dir.join(format!(
        "twoway-archive-{}.txt",
        &hex::encode(h.finalize())[..16]
    ))
}

/// Where earlier releases kept the archive of the pair (SOURCE, BACKUP): in `state_dir`, the
/// directory twoway ran from, named after the roots in that order.
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

/// Reads the entries of the archive at `path` for the pair (SOURCE, BACKUP): `None` if there
/// is none yet (the first pass).
///
/// Fails as [`load_all`] does.
pub fn load(path: &Path, source: &Path, backup: &Path) -> Result<Option<Items>, Error> {
    Ok(load_all(path, source, backup)?.map(|archive| archive.items))
}

/// Reads the archive at `path` for the pair (SOURCE, BACKUP), link groups included: `None` if
/// there is none yet (the first pass).
///
/// Fails if it cannot be read, is damaged, or belongs to other roots.
pub fn load_all(path: &Path, source: &Path, backup: &Path) -> Result<Option<Archive>, Error> {
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
    let with_links = match lines.next().map(|(_, l)| l) {
        Some(HEADER) => true,
        Some(HEADER_WITHOUT_LINKS) => false,
        _ => return Err(damaged("not a twoway archive (bad first line)".into())),
    };
    let mut recorded = Vec::with_capacity(2);
    for role in ["source", "backup"] {
        let line = lines.next().map(|(_, l)| l).unwrap_or("");
        let root = line
            .strip_prefix(role)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(decode_path)
            .ok_or_else(|| damaged(format!("bad {role} line")))?;
        recorded.push(root);
    }
    // What both sides held is the same whichever side is named first.
    let ours = [source, backup];
    let same = |a: &[&Path; 2]| recorded[0] == a[0] && recorded[1] == a[1];
    if !same(&ours) && !same(&[backup, source]) {
        return Err(damaged(format!(
            "it belongs to {} and {}, not {} and {}",
            recorded[0].display(),
            recorded[1].display(),
            source.display(),
            backup.display()
        )));
    }
    // `save` writes entries in path order: read them into a list, check that order (which
    // also rules out duplicates), and build the map in one go rather than entry by entry.
    let mut entries: Vec<(PathBuf, crate::model::Item)> = Vec::new();
    // The link lines, which follow the entries, in the order read.
    let mut links: Vec<(usize, PathBuf, PathBuf)> = Vec::new();
    for (n, line) in lines.by_ref() {
        if let Some(count) = line.strip_prefix("end ") {
            if count.parse::<usize>().ok() != Some(entries.len()) {
                return Err(damaged(format!("line {n}: entry count does not match")));
            }
            // Whatever follows the end is not ours to ignore (two archives run together).
            if lines.next().is_some() {
                return Err(damaged(format!("text after the end line {n}")));
            }
            let items: Items = entries.into_iter().collect();
            let links = with_links
                .then(|| link_record(&items, links).map_err(damaged))
                .transpose()?;
            return Ok(Some(Archive { items, links }));
        }
        if let Some(fields) = line.strip_prefix("H ").filter(|_| with_links) {
            let (further, first) = fields
                .split_once(' ')
                .and_then(|(a, b)| Some((decode_path(a)?, decode_path(b)?)))
                .ok_or_else(|| damaged(format!("line {n}: bad link line")))?;
            links.push((n, further, first));
            continue;
        }
        if !links.is_empty() {
            return Err(damaged(format!("line {n}: an entry after the link lines")));
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

/// Checks the link lines of an archive (line number, further name, first name) against its
/// `items`: both names files of the archive, the first before the further one, no name the
/// further name of two groups, no first name a further one.
fn link_record(items: &Items, lines: Vec<(usize, PathBuf, PathBuf)>) -> Result<LinkRecord, String> {
    let firsts: HashSet<&Path> = lines.iter().map(|(_, _, first)| first.as_path()).collect();
    let mut record = LinkRecord::new();
    for (n, further, first) in &lines {
        let is_file = |rel: &Path| matches!(items.get(rel), Some(Item::File { .. }));
        let fits = is_file(further)
            && is_file(first)
            && crate::model::path_order(first, further).is_lt()
            && !firsts.contains(further.as_path());
        if !fits || record.insert(further.clone(), first.clone()).is_some() {
            return Err(format!("line {n}: bad link line"));
        }
    }
    Ok(record)
}

/// Writes the archive atomically.
///
/// Fails if the state directory cannot be written.
pub fn save(path: &Path, source: &Path, backup: &Path, items: &Items) -> io::Result<()> {
    write_atomically(path, &encode(source, backup, items))
}

/// The text of the archive of `items` (and no link group) for the pair (`source`, `backup`),
/// as [`save`] writes it.
pub fn encode(source: &Path, backup: &Path, items: &Items) -> String {
    encode_all(source, backup, items, &LinkRecord::new())
}

/// The text of the archive of `items` and the link groups `links` for the pair (`source`,
/// `backup`). Groups whose names are not both files of `items` are left out.
pub fn encode_all(source: &Path, backup: &Path, items: &Items, links: &LinkRecord) -> String {
    let mut text = format!(
        "{HEADER}\nsource {}\nbackup {}\n",
        encode_path(source),
        encode_path(backup)
    );
    for (rel, item) in items {
        encode_item(&mut text, rel, item);
    }
    let is_file = |rel: &Path| matches!(items.get(rel), Some(Item::File { .. }));
    for (further, first) in links {
        if is_file(further) && is_file(first) {
            text.push_str("H ");
            text.push_str(&encode_path(further));
            text.push(' ');
            text.push_str(&encode_path(first));
            text.push('\n');
        }
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
        assert_eq!(load(&path, s, b).unwrap(), Some(items.clone()));
        // The same pair named the other way round: the same archive.
        assert_eq!(load(&path, b, s).unwrap(), Some(items));
        assert!(
            load(&path, s, Path::new("/elsewhere")).is_err(),
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

    /// Link groups round-trip as `H` lines; an archive of version 1 loads as one that records
    /// none, and a link line naming no file of the archive is damage.
    #[test]
    fn link_groups_round_trip_and_old_archives_record_none() {
        let dir = tempfile::tempdir().unwrap();
        let (s, b) = (Path::new("/s"), Path::new("/b"));
        let path = path_for(dir.path(), s, b);
        let file = Item::File {
            digest: [1; 32],
            size: 3,
            meta: Meta::plain(0o644, Timestamp { secs: 1, nanos: 2 }),
        };
        let items: Items = ["a", "d/b c", "e"]
            .map(|n| (PathBuf::from(n), file.clone()))
            .into_iter()
            .collect();
        let links: LinkRecord = [("d/b c", "a"), ("e", "a")]
            .map(|(further, first)| (further.into(), first.into()))
            .into_iter()
            .collect();
        let text = encode_all(s, b, &items, &links);
        assert!(text.contains("\nH d/b%20c a\nH e a\nend 3\n"), "{text}");
        std::fs::write(&path, &text).unwrap();
        let loaded = load_all(&path, s, b).unwrap().unwrap();
        assert_eq!(loaded.items, items);
        assert_eq!(loaded.links, Some(links));
        // Version 1: no groups recorded (not "no groups").
        let old = encode(s, b, &items).replace(HEADER, HEADER_WITHOUT_LINKS);
        std::fs::write(&path, &old).unwrap();
        assert_eq!(load_all(&path, s, b).unwrap().unwrap().links, None);
        std::fs::write(&path, text.replace("H e a", "H x a")).unwrap();
        assert!(
            load_all(&path, s, b).is_err(),
            "a group of a name not archived"
        );
        std::fs::write(&path, text.replace("H e a", "H a e")).unwrap();
        assert!(
            load_all(&path, s, b).is_err(),
            "a first name after its further one"
        );
        let in_v1 = old.replace("end 3", "H e a\nend 3");
        std::fs::write(&path, in_v1).unwrap();
        assert!(load_all(&path, s, b).is_err(), "a link line in version 1");
    }
}
