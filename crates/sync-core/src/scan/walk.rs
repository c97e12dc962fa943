//! Walking one tree into its entries by relative path, in path order, without following links.

use std::ffi::{OsStr, OsString};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    /// The extended attributes of files were read (else their `xattrs` is 0 until
    /// [`Entries::set_xattrs`] gives them).
    pub file_xattrs: bool,
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

    /// Gives the entries at these indexes (in path order) the digests of their extended
    /// attributes, where a scan left them unread.
    pub fn set_xattrs(&mut self, known: &[(usize, u64)]) {
        for &(i, xattrs) in known {
            if let Some((_, entry)) = self.0.get_mut(i) {
                entry.xattrs = xattrs;
            }
        }
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

/// Scans `tree`, directories in parallel, skipping what `filter` excludes.
///
/// Fails only if the root itself cannot be listed; a subdirectory that cannot be listed is
/// recorded in [`Scanned::unlistable`], and an entry that vanishes during the scan is left out.
pub fn scan(tree: &dyn Tree, role: &'static str, filter: &Filter) -> Result<Scanned, Error> {
    scan_with(tree, role, filter, true)
}

/// As [`scan`], without reading the extended attributes of files: for a pass that takes
/// those of unchanged files from the hash cache (see [`crate::hash::dircache::tree_digests`]).
pub fn scan_lazily(tree: &dyn Tree, role: &'static str, filter: &Filter) -> Result<Scanned, Error> {
    scan_with(tree, role, filter, false)
}

fn scan_with(
    tree: &dyn Tree,
    role: &'static str,
    filter: &Filter,
    file_xattrs: bool,
) -> Result<Scanned, Error> {
    let root = Path::new("");
    let skip = |name: &OsStr| filter.excludes_child(root, name);
    let children = if file_xattrs {
        tree.list(root, &skip)
    } else {
        tree.list_without_file_xattrs(root, &skip)
    }
    .map_err(|source| Error::ListRoot {
        role,
        path: PathBuf::from(tree.name()),
        source,
    })?;
    let lister = Lister {
        tree,
        filter,
        file_xattrs,
        next_id: AtomicUsize::new(1),
        done: Mutex::new(Done::default()),
    };
    rayon::scope(|scope| lister.take(scope, 0, root, children));
    let mut scanned = lister.assemble();
    scanned.file_xattrs = file_xattrs;
    debug_assert!(
        scanned
            .entries
            .0
            .iter()
            .is_sorted_by(|a, b| path_order(&a.0, &b.0).is_lt())
    );
    Ok(scanned)
}

/// Lists the directories of one tree in parallel, each directory a task of its own, so that
/// no thread's stack grows with the depth of the tree (SECURITY.md rule 7): a task lists its
/// directory and hands its subdirectories to new tasks rather than descending into them.
/// Each directory has an id (the root 0); [`Lister::assemble`] puts the listings in path
/// order once all are done.
struct Lister<'a> {
    tree: &'a dyn Tree,
    filter: &'a Filter,
    /// Read files' extended attributes too.
    file_xattrs: bool,
    next_id: AtomicUsize,
    done: Mutex<Done>,
}

/// What the tasks listed, in the order they were done.
#[derive(Default)]
struct Done {
    /// Every entry, the children of each directory together and by name. Holding them in one
    /// vector, not one per directory, is what lets [`Lister::assemble`] order them in place:
    /// a copy into path order would hold every entry twice.
    entries: Vec<(PathBuf, Entry)>,
    /// Where each directory's children are, by its id.
    listings: Vec<(usize, Listing)>,
}

/// One directory as listed: where its children are in [`Done::entries`], or why it could not
/// be listed.
enum Listing {
    Listed {
        children: Range<usize>,
        /// The id of its first subdirectory; the others follow in the order of its children.
        first_sub: usize,
    },
    Unlistable(PathBuf, io::Error),
}

impl Lister<'_> {
    /// Lists the directory `rel` (id `id`), then hands its subdirectories to new tasks.
    fn list<'s>(&'s self, scope: &rayon::Scope<'s>, id: usize, rel: PathBuf) {
        let skip = |name: &OsStr| self.filter.excludes_child(&rel, name);
        let listed = if self.file_xattrs {
            self.tree.list(&rel, &skip)
        } else {
            self.tree.list_without_file_xattrs(&rel, &skip)
        };
        match listed {
            Ok(children) => self.take(scope, id, &rel, children),
            Err(err) => self.done(id, Listing::Unlistable(rel, err), Vec::new()),
        }
    }

    /// Keeps the listing `children` of `rel` (id `id`), and spawns a task for each of its
    /// subdirectories. Rayon queues a spawned task, never runs it inline: it starts once this
    /// one has returned, so the stack does not grow however deep the tree.
    fn take<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        id: usize,
        rel: &Path,
        children: Vec<(OsString, Entry)>,
    ) {
        let children: Vec<(PathBuf, Entry)> = children
            .into_iter()
            .map(|(name, entry)| (rel.join(name), entry))
            .collect();
        let dirs = || children.iter().filter(|(_, e)| e.is_dir());
        let first_sub = self.next_id.fetch_add(dirs().count(), Ordering::Relaxed);
        for (sub_id, (child, _)) in (first_sub..).zip(dirs()) {
            let child = child.clone();
            scope.spawn(move |scope| self.list(scope, sub_id, child));
        }
        let listing = Listing::Listed {
            children: 0..0,
            first_sub,
        };
        self.done(id, listing, children);
    }

    /// Records the listing of the directory `id`, with its `children`.
    fn done(&self, id: usize, mut listing: Listing, children: Vec<(PathBuf, Entry)>) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if let Listing::Listed { children: at, .. } = &mut listing {
            *at = done.entries.len()..done.entries.len() + children.len();
        }
        done.entries.extend(children);
        done.listings.push((id, listing));
    }

    /// The entries in path order: each directory's children by name, each subdirectory
    /// followed by its own subtree (names in byte order, depth first, is path order, see
    /// [`path_order`]). A stack of the listings being read stands in for recursion; it says
    /// where each entry goes, and the entries are then moved there in place.
    fn assemble(self) -> Scanned {
        let Done {
            mut entries,
            listings,
        } = self.done.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut by_id: Vec<Option<Listing>> = Vec::new();
        by_id.resize_with(self.next_id.into_inner(), || None);
        for (id, listing) in listings {
            by_id[id] = Some(listing);
        }
        let mut unlistable = Vec::new();
        // Where the entry now at each index goes.
        let mut place = vec![0; entries.len()];
        let mut placed = 0;
        // The listings being read, innermost last: what is left of each, and the id of its
        // next subdirectory.
        let mut reading: Vec<(Range<usize>, usize)> = Vec::new();
        let mut enter = Some(0);
        loop {
            match enter.take().and_then(|id| by_id[id].take()) {
                Some(Listing::Listed {
                    children,
                    first_sub,
                }) => reading.push((children, first_sub)),
                Some(Listing::Unlistable(rel, err)) => unlistable.push((rel, err)),
                None => {}
            }
            let Some((children, next_sub)) = reading.last_mut() else {
                break;
            };
            let Some(i) = children.next() else {
                reading.pop();
                continue;
            };
            place[i] = placed;
            placed += 1;
            if entries[i].1.is_dir() {
                enter = Some(*next_sub);
                *next_sub += 1;
            }
        }
        debug_assert_eq!(placed, entries.len());
        // Each swap puts one entry where it goes.
        for i in 0..entries.len() {
            while place[i] != i {
                let to = place[i];
                entries.swap(i, to);
                place.swap(i, to);
            }
        }
        entries.shrink_to_fit();
        Scanned {
            entries: Entries(entries),
            unlistable,
            file_xattrs: self.file_xattrs,
        }
    }
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 24,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Whatever the shape of the tree, the listings put together give every entry once, in
        /// path order.
        #[test]
        fn any_tree_is_scanned_whole_and_in_path_order(
            paths in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec!["a", "a-", "a.b", "b"]), 1..5),
                0..40,
            ),
        ) {
            let root = tempfile::tempdir().unwrap();
            let mut want: Vec<(PathBuf, bool)> = Vec::new();
            for parts in &paths {
                let rel: PathBuf = parts.iter().collect();
                // Every prefix a directory, the last name a file unless something is under it.
                let mut dir = PathBuf::new();
                for part in &parts[..parts.len() - 1] {
                    dir.push(part);
                    if !want.iter().any(|(p, _)| *p == dir) {
                        if fs::create_dir(root.path().join(&dir)).is_err() {
                            break;
                        }
                        want.push((dir.clone(), true));
                    }
                }
                if !want.iter().any(|(p, _)| *p == rel)
                    && fs::write(root.path().join(&rel), "").is_ok()
                {
                    want.push((rel, false));
                }
            }
            want.sort_by(|a, b| path_order(&a.0, &b.0));
            let tree = scan(&LocalTree::open(root.path()).unwrap(), "SOURCE", &Filter::default()).unwrap();
            let got: Vec<(PathBuf, bool)> =
                tree.entries.iter().map(|(p, e)| (p.clone(), e.is_dir())).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    /// A walk that recursed would need a frame per level: on workers with a 256 KiB stack, a
    /// tree 1,000 levels deep (far from PATH_MAX) is too deep for that.
    #[test]
    fn a_tree_deeper_than_the_stack_could_hold_frames_for_is_scanned_in_order() {
        let root = tempfile::tempdir().unwrap();
        let depth = 1_000;
        let mut dir = root.path().to_path_buf();
        for _ in 0..depth {
            fs::write(dir.join("f"), "").unwrap();
            dir.push("d");
            fs::create_dir(&dir).unwrap();
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .stack_size(256 * 1024)
            .build()
            .unwrap();
        let tree = pool
            .install(|| {
                scan(
                    &LocalTree::open(root.path()).unwrap(),
                    "SOURCE",
                    &Filter::default(),
                )
            })
            .unwrap();
        assert!(tree.unlistable.is_empty());
        assert_eq!(tree.entries.len(), 2 * depth);
        assert_eq!(tree.non_dir_count(), depth);
        // Path order: at each level the directory `d`, its whole subtree, then the file `f`.
        let mut chain = PathBuf::new();
        let mut want = Vec::new();
        for _ in 0..depth {
            chain.push("d");
            want.push(chain.clone());
        }
        for level in (0..depth).rev() {
            want.push(want[level].parent().unwrap().join("f"));
        }
        assert!(tree.entries.keys().eq(want.iter()));
    }
}
