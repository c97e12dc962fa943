//! Walking one tree into its entries by relative path, in path order, without following links.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::Error;
use crate::model::{Entry, path_order};
use crate::scan::Filter;
use crate::tree::Tree;

/// A scanned root: every entry by relative path, in path order (a directory's descendants
/// follow it directly), and the directories that could not be listed.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Relative path → entry. The root itself is not included.
    pub entries: Entries,
    /// Directories whose listing failed: their content is unknown, never empty.
    pub unlistable: Vec<(PathBuf, io::Error)>,
}

impl Scanned {
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

/// Scans `tree`, directories in parallel, skipping what `filter` excludes.
///
/// Fails only if the root itself cannot be listed; a subdirectory that cannot be listed is
/// recorded in [`Scanned::unlistable`], and an entry that vanishes during the scan is left out.
pub fn scan(tree: &dyn Tree, role: &'static str, filter: &Filter) -> Result<Scanned, Error> {
    let root = Path::new("");
    let children = tree
        .list(root, &|name| filter.excludes_child(root, name))
        .map_err(|source| Error::ListRoot {
            role,
            path: PathBuf::from(tree.name()),
            source,
        })?;
    let partial = scan_children(tree, root, children, filter);
    debug_assert!(
        partial
            .entries
            .iter()
            .is_sorted_by(|a, b| path_order(&a.0, &b.0).is_lt())
    );
    Ok(Scanned {
        entries: Entries(partial.entries),
        unlistable: partial.unlistable,
    })
}

fn scan_dir(tree: &dyn Tree, rel: &Path, filter: &Filter) -> Partial {
    match tree.list(rel, &|name| filter.excludes_child(rel, name)) {
        Ok(children) => scan_children(tree, rel, children, filter),
        Err(err) => Partial {
            entries: Vec::new(),
            unlistable: vec![(rel.to_path_buf(), err)],
        },
    }
}

/// A directory's subtree in path order: its children by name, each directory followed by its
/// own subtree (scanned in parallel). Names in byte order, depth first, is path order
/// ([`path_order`]).
fn scan_children(
    tree: &dyn Tree,
    rel: &Path,
    children: Vec<(OsString, Entry)>,
    filter: &Filter,
) -> Partial {
    let children: Vec<(PathBuf, Entry)> = children
        .into_iter()
        .map(|(name, entry)| (rel.join(name), entry))
        .collect();
    let subtrees: Vec<Partial> = children
        .par_iter()
        .filter(|(_, e)| e.is_dir())
        .map(|(child, _)| scan_dir(tree, child, filter))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::LocalTree;
    use std::fs;

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
        let tree = scan(
            &LocalTree::open(root.path()).unwrap(),
            "SOURCE",
            &Filter::default(),
        )
        .unwrap();
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
