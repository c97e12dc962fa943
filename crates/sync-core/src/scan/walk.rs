//! Walking one root into its entries by relative path, in path order, without following links.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::Error;
use crate::model::{Entry, path_order};
use crate::scan::Filter;

/// A scanned root: every entry by relative path, in path order (a directory's descendants
/// follow it directly), and the directories that could not be listed.
#[derive(Debug, Default)]
pub struct Tree {
    /// Relative path → entry. The root itself is not included.
    pub entries: Entries,
    /// Directories whose listing failed: their content is unknown, never empty.
    pub unlistable: Vec<(PathBuf, io::Error)>,
}

impl Tree {
    /// Number of entries that are not directories.
    pub fn non_dir_count(&self) -> usize {
        self.entries.values().filter(|e| !e.is_dir()).count()
    }
}

/// Entries by relative path, in path order ([`path_order`]), looked up by binary search.
///
/// A scan makes its entries in this order already: a `BTreeMap` would check that order and
/// look for duplicates with `Path`'s component-wise comparisons, which cost a two-way pass
/// with nothing to do more than a tenth of its time.
#[derive(Debug, Default)]
pub struct Entries(Vec<(PathBuf, Entry)>);

type EntryRef<'a> = (&'a PathBuf, &'a Entry);

impl Entries {
    /// The entry at `rel`, a relative path as a scan names it.
    pub fn get(&self, rel: &Path) -> Option<&Entry> {
        let i = self.0.binary_search_by(|(p, _)| path_order(p, rel)).ok()?;
        Some(&self.0[i].1)
    }

    /// Every path and entry, in path order.
    pub fn iter(&self) -> <&Entries as IntoIterator>::IntoIter {
        self.into_iter()
    }

    /// Every path, in path order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &PathBuf> {
        self.0.iter().map(|(rel, _)| rel)
    }

    /// Every entry, in path order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &Entry> {
        self.0.iter().map(|(_, entry)| entry)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the root holds nothing (that the filter lets through).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Entries {
    type Item = EntryRef<'a>;
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (PathBuf, Entry)>,
        fn(&'a (PathBuf, Entry)) -> EntryRef<'a>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(rel, entry)| (rel, entry))
    }
}

impl IntoIterator for Entries {
    type Item = (PathBuf, Entry);
    type IntoIter = std::vec::IntoIter<(PathBuf, Entry)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A scanned subtree, its entries in path order.
#[derive(Default)]
struct Partial {
    entries: Vec<(PathBuf, Entry)>,
    unlistable: Vec<(PathBuf, io::Error)>,
}

/// Scans `root`, directories in parallel, skipping what `filter` excludes.
///
/// Fails only if the root itself cannot be listed; a subdirectory that cannot be listed is
/// recorded in [`Tree::unlistable`], and an entry that vanishes during the scan is left out.
pub fn scan(root: &Path, role: &'static str, filter: &Filter) -> Result<Tree, Error> {
    let listing = fs::read_dir(root).map_err(|source| Error::ListRoot {
        role,
        path: root.to_path_buf(),
        source,
    })?;
    let partial = scan_listing(root, Path::new(""), listing, filter);
    debug_assert!(
        partial
            .entries
            .iter()
            .is_sorted_by(|a, b| path_order(&a.0, &b.0).is_lt())
    );
    Ok(Tree {
        entries: Entries(partial.entries),
        unlistable: partial.unlistable,
    })
}

fn scan_dir(root: &Path, rel: &Path, filter: &Filter) -> Partial {
    match fs::read_dir(root.join(rel)) {
        Ok(listing) => scan_listing(root, rel, listing, filter),
        Err(err) => Partial {
            entries: Vec::new(),
            unlistable: vec![(rel.to_path_buf(), err)],
        },
    }
}

/// A directory's subtree in path order: its children by name, each directory followed by its
/// own subtree (scanned in parallel). Names in byte order, depth first, is path order
/// ([`path_order`]).
fn scan_listing(root: &Path, rel: &Path, listing: fs::ReadDir, filter: &Filter) -> Partial {
    let children = match read_listing(listing, &root.join(rel), rel, filter) {
        Ok(children) => children,
        Err(err) => {
            return Partial {
                entries: Vec::new(),
                unlistable: vec![(rel.to_path_buf(), err)],
            };
        }
    };
    let children: Vec<(PathBuf, Entry)> = children
        .into_iter()
        .map(|(name, entry)| (rel.join(name), entry))
        .collect();
    let subtrees: Vec<Partial> = children
        .par_iter()
        .filter(|(_, e)| e.is_dir())
        .map(|(child, _)| scan_dir(root, child, filter))
        .collect();
    let total = children.len() + subtrees.iter().map(|p| p.entries.len()).sum::<usize>();
    let mut out = Partial {
        entries: Vec::with_capacity(total),
        unlistable: Vec::new(),
    };
    let mut subtrees = subtrees.into_iter();
    for (child, entry) in children {
        let is_dir = entry.is_dir();
        out.entries.push((child, entry));
        if is_dir && let Some(mut sub) = subtrees.next() {
            out.entries.append(&mut sub.entries);
            out.unlistable.append(&mut sub.unlistable);
        }
    }
    out
}

/// One directory's entries (`dir` is its path, `rel` its path relative to the root), by name
/// in byte order, without what `filter` excludes or what vanished while it was listed.
///
/// Fails if the directory cannot be listed completely, or an entry in it cannot be examined:
/// what it holds is then unknown, which must never read as "nothing is here".
pub fn list_dir(dir: &Path, rel: &Path, filter: &Filter) -> io::Result<Vec<(OsString, Entry)>> {
    read_listing(fs::read_dir(dir)?, dir, rel, filter)
}

fn read_listing(
    listing: fs::ReadDir,
    dir: &Path,
    rel: &Path,
    filter: &Filter,
) -> io::Result<Vec<(OsString, Entry)>> {
    let mut out = Vec::new();
    for item in listing {
        // A listing that breaks off half-way is as unknown as one that never started.
        let item = item?;
        let name = item.file_name();
        if filter.excludes_child(rel, &name) {
            continue;
        }
        let meta = match item.metadata() {
            Ok(meta) => meta,
            // Vanished between listing and stat: it is simply not there any more.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            // Listed but not searchable (a directory without its x bit), or any other fault.
            Err(err) => return Err(err),
        };
        let target = if meta.file_type().is_symlink() {
            match fs::read_link(dir.join(&name)) {
                Ok(t) => Some(t),
                Err(_) => continue,
            }
        } else {
            None
        };
        out.push((name, Entry::from_metadata(&meta, target)));
    }
    out.sort_unstable_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanned_entries_are_found_where_byte_order_and_path_order_differ() {
        let root = tempfile::tempdir().unwrap();
        // `-` and `.` sort before `/` as bytes, after it as path components.
        for dir in ["a", "a/b", "a/b/c"] {
            fs::create_dir(root.path().join(dir)).unwrap();
        }
        for file in ["a-b", "a.b", "a0", "a/b-c", "a/b/c/d", "a/b.c"] {
            fs::write(root.path().join(file), file).unwrap();
        }
        let tree = scan(root.path(), "SOURCE", &Filter::default()).unwrap();
        let order: Vec<&str> = tree.entries.keys().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            order,
            [
                "a", "a/b", "a/b/c", "a/b/c/d", "a/b-c", "a/b.c", "a-b", "a.b", "a0"
            ]
        );
        for rel in &order {
            let entry = tree.entries.get(Path::new(rel)).unwrap();
            assert_eq!(entry.is_dir(), ["a", "a/b", "a/b/c"].contains(rel), "{rel}");
        }
        for missing in ["", "b", "a/c", "a/b/c/e", "a-", "a1"] {
            assert_eq!(tree.entries.get(Path::new(missing)), None, "{missing}");
        }
        assert_eq!(tree.non_dir_count(), 6);
    }
}
