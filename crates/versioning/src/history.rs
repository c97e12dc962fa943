//! What a version store holds, as a person asks for it: which version `--version` names
//! (`latest`, `previous`, a version's name, or a date and time), and the listing of
//! `--versions` (newest first: name, date, files, bytes, and what changed since the one
//! before).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use jiff::civil::DateTime;

use sync_core::Error;
use sync_core::run::places::absolute_dir;
use sync_core::run::trust;

use sync_core::hash::dircache::{DirCache, Learner, tree_digests};
use sync_core::model::Side;
use sync_core::scan::Scanned;
use sync_core::tree::{LocalTree, Tree};

use crate::links::Links;
use crate::manifest::{Item, Items, Manifest};
use crate::recovery::{INFO_FILE, Info, VERSIONS_DIR};
use crate::store::{Store, Version};

/// `dir` made absolute, and the directory of its versions (`__versions__/KEY`) that
/// `state_dir/.info.json` records for it.
///
/// Fails if `state_dir` could be changed by another user (what `.info.json` says is acted on,
/// as root often), `dir` is unknown to it, or it has no versions yet.
pub fn store_of(state_dir: &Path, dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let dir = absolute_dir(dir).map_err(|source| Error::Inaccessible {
        role: "DIR",
        path: dir.to_path_buf(),
        source,
    })?;
    trust::untouchable(state_dir).map_err(|d| d.about("the state directory", state_dir))?;
    let info = Info::load(state_dir)?;
    let key = info.key_of(&dir).ok_or_else(|| {
        Error::Versions(format!(
            "{} is not known to the recovery system ({} has no entry for it)",
            dir.display(),
            state_dir.join(INFO_FILE).display()
        ))
    })?;
    let vdir = state_dir.join(VERSIONS_DIR).join(key);
    if !vdir.is_dir() {
        return Err(Error::Versions(format!(
            "no versions of {} in {}",
            dir.display(),
            vdir.display()
        )));
    }
    Ok((dir, vdir))
}

/// Which version to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The newest version.
    Latest,
    /// The one before it.
    Previous,
    /// The version with this public name (`_1`, `2026-12-06_23-59-01`), or what a restore
    /// kept (`before-restore-20261207-091502`).
    Named(String),
    /// The newest version made at or before this time.
    At(Timestamp),
}

impl std::str::FromStr for Choice {
    type Err = String;

    /// `latest`, `previous`, a version's name, or a local date and time: `2026-12-07`,
    /// `2026-12-07 09:15`, `2026-12-07 09:15:02` (or with `T` between date and time).
    fn from_str(text: &str) -> Result<Choice, String> {
        match text {
            "latest" => return Ok(Choice::Latest),
            "previous" => return Ok(Choice::Previous),
            _ => {}
        }
        if crate::store::public_name(text)
            || text.starts_with(crate::store::KEPT_BY_RESTORE)
            || text.starts_with(crate::store::KEPT_BY_PATH_RESTORE)
        {
            return Ok(Choice::Named(text.to_string()));
        }
        let civil = text.replacen(' ', "T", 1);
        let parsed = civil.parse::<DateTime>().or_else(|_| {
            civil
                .parse::<jiff::civil::Date>()
                .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
        });
        match parsed {
            Ok(at) => at
                .to_zoned_datetime(sync_core::display::local_zone().clone())
                .map(|z| Choice::At(z.timestamp()))
                .map_err(|e| format!("{text:?} is not a time in the local zone ({e})")),
            Err(_) => Err(format!(
                "{text:?} is neither latest, previous, a version's name (_1, \
                 2026-12-06_23-59-01) nor a date and time (2026-12-07 09:15)"
            )),
        }
    }
}

impl Choice {
    /// The version `self` names among `versions` (oldest first), if any.
    pub fn pick<'a>(&self, versions: &'a [Version]) -> Option<&'a Version> {
        match self {
            Choice::Latest => versions.last(),
            Choice::Previous => versions.len().checked_sub(2).and_then(|i| versions.get(i)),
            Choice::Named(name) => versions.iter().find(|v| &v.name == name),
            Choice::At(at) => versions.iter().rev().find(|v| v.time <= *at),
        }
    }
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Choice::Latest => f.write_str("latest"),
            Choice::Previous => f.write_str("previous"),
            Choice::Named(name) => f.write_str(name),
            Choice::At(at) => write!(f, "at or before {}", local(*at)),
        }
    }
}

/// What a restore kept in `dir`, as a version to restore from (undoing that restore): the
/// tree, a manifest made by reading it whole (it has none of its own), and its scan.
///
/// Fails if a part of it cannot be read: a restore from it would not be all of it.
pub fn read_kept(dir: &Path) -> Result<(LocalTree, Manifest, Scanned), Error> {
    let tree = LocalTree::open(dir).map_err(|source| Error::ListRoot {
        role: "kept",
        path: dir.to_path_buf(),
        source,
    })?;
    let scanned = sync_core::scan::scan(&tree, "kept", &Default::default())?;
    let unreadable = |what: String| {
        Error::Versions(format!(
            "cannot read {what} in {}; nothing was restored",
            dir.display()
        ))
    };
    if let Some((rel, err)) = scanned.unlistable.first() {
        return Err(unreadable(format!("{} ({err})", rel.display())));
    }
    let learner = Learner::new(dir, dir);
    let nothing = Scanned::default();
    let digests = tree_digests(
        &DirCache::in_memory(),
        &learner,
        [&tree, &tree],
        [&scanned, &nothing],
        [&[], &[]],
    );
    if let Some((_, rel, err)) = digests.failed.first() {
        return Err(unreadable(format!("{} ({err})", rel.display())));
    }
    let items: Items = scanned
        .entries
        .iter()
        .zip(&digests.sides[Side::Source as usize])
        .filter_map(|((rel, entry), digest)| Some((rel.clone(), Item::of(entry, *digest)?)))
        .collect();
    let links = Links::of_scan(&scanned.entries, &items);
    let root = tree.stat(Path::new("")).ok().map(|e| e.meta());
    Ok((tree, Manifest::of(root, items, links), scanned))
}

/// One line of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The version's public name.
    pub name: String,
    /// When its pass ran.
    pub time: Timestamp,
    /// Files (not directories) it holds.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Against the version before it: entries added, removed, and files, links and nodes
    /// modified (content or metadata); `None` for the oldest.
    pub changes: Option<(u64, u64, u64)>,
    /// Not a version: what a restore replaced, kept so that the restore can be undone.
    pub kept_by_restore: bool,
}

/// The versions of `store`, newest first, with what each holds and what changed.
///
/// Fails, naming it, if a manifest cannot be read.
pub fn list(store: &Store) -> Result<Vec<Listed>, String> {
    let mut listed = Vec::new();
    let mut before: Option<Manifest> = None;
    for version in store.versions() {
        let manifest = version
            .manifest()
            .map_err(|e| sync_core::error::one_line(&e))?;
        let (files, bytes) = manifest
            .items
            .values()
            .filter_map(|i| match i {
                Item::File { size, .. } => Some(*size),
                _ => None,
            })
            .fold((0, 0), |(n, b), size| (n + 1, b + size));
        let changes = before.as_ref().map(|old| changes(old, &manifest));
        listed.push(Listed {
            name: version.name.clone(),
            time: version.time,
            files,
            bytes,
            changes,
            kept_by_restore: false,
        });
        before = Some(manifest);
    }
    for kept in store.kept_by_restores() {
        // No manifest: what it holds is counted from the tree itself.
        let scanned = sync_core::tree::LocalTree::open(&kept.dir)
            .map_err(|e| format!("cannot read {}: {e}", kept.dir.display()))
            .and_then(|tree| {
                sync_core::scan::scan(&tree, "kept", &Default::default())
                    .map_err(|e| sync_core::error::one_line(&e))
            })?;
        let (files, bytes) = scanned
            .entries
            .iter()
            .filter(|(_, e)| e.kind == sync_core::model::Kind::File)
            .fold((0, 0), |(n, b), (_, e)| (n + 1, b + e.size));
        listed.push(Listed {
            name: kept.name,
            time: kept.time,
            files,
            bytes,
            changes: None,
            kept_by_restore: true,
        });
    }
    // Newest first; a version and what a restore kept in the same second: the version first.
    listed.sort_by(|a, b| (b.time, a.kept_by_restore).cmp(&(a.time, b.kept_by_restore)));
    Ok(listed)
}

/// Added, removed, modified entries from `old` to `new`. A directory counts when it comes or
/// goes, not when its time moves because its content did.
fn changes(old: &Manifest, new: &Manifest) -> (u64, u64, u64) {
    let added = new
        .items
        .keys()
        .filter(|p| !old.items.contains_key(*p))
        .count();
    let removed = old
        .items
        .keys()
        .filter(|p| !new.items.contains_key(*p))
        .count();
    let modified = new
        .items
        .iter()
        .filter(|(p, item)| {
            !matches!(item, Item::Dir { .. }) && old.items.get(*p).is_some_and(|o| o != *item)
        })
        .count();
    (added as u64, removed as u64, modified as u64)
}

/// The listing as printed: a header, then one line per version.
pub fn render(store_dir: &Path, listed: &[Listed]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "versions in {} (newest first):", store_dir.display());
    let _ = writeln!(
        out,
        "{:<30} {:<19} {:>9} {:>10}  CHANGED SINCE THE ONE BEFORE",
        "NAME", "DATE", "FILES", "BYTES"
    );
    for l in listed {
        let changes = match l.changes {
            _ if l.name.starts_with(crate::store::KEPT_BY_PATH_RESTORE) => {
                "what a --path restore replaced (restore it with that --path to undo)".into()
            }
            _ if l.kept_by_restore => "what a restore replaced (restore it to undo that)".into(),
            Some((a, r, m)) => format!("+{a} −{r} M{m}"),
            None => "(oldest kept)".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<30} {:<19} {:>9} {:>10}  {changes}",
            l.name,
            local(l.time),
            l.files,
            human(l.bytes)
        );
    }
    if listed.is_empty() {
        out.push_str("(none yet)\n");
    }
    out
}

/// A time as people read it here.
fn local(at: Timestamp) -> String {
    at.to_zoned_datetime(sync_core::display::local_zone().clone())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Bytes with a binary unit, to three significant figures.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value < 10.0 {
        format!("{value:.2} {}", UNITS[unit])
    } else if value < 100.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_read_as_keywords_names_or_local_times() {
        assert_eq!("latest".parse::<Choice>(), Ok(Choice::Latest));
        assert_eq!("previous".parse::<Choice>(), Ok(Choice::Previous));
        assert_eq!("_3".parse::<Choice>(), Ok(Choice::Named("_3".into())));
        assert_eq!(
            "2026-12-06_23-59-01".parse::<Choice>(),
            Ok(Choice::Named("2026-12-06_23-59-01".into()))
        );
        for text in [
            "2026-12-07 09:15",
            "2026-12-07T09:15:00",
            "2026-12-07 09:15:00",
        ] {
            assert!(
                matches!(text.parse::<Choice>(), Ok(Choice::At(_))),
                "{text}"
            );
        }
        assert!(matches!("2026-12-07".parse::<Choice>(), Ok(Choice::At(_))));
        let err = "last tuesday".parse::<Choice>().unwrap_err();
        assert!(
            err.contains("last tuesday") && err.contains("latest"),
            "{err}"
        );
    }

    #[test]
    fn sizes_read_at_a_glance() {
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1536), "1.50 KiB");
        assert_eq!(human(50 << 20), "50.0 MiB");
        assert_eq!(human(300 << 30), "300 GiB");
    }
}
