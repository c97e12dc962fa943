//! Walking one root into its entries by relative path, in path order, without following links.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use crate::error::Error;

/// A point in time with nanoseconds, as the file system stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Timestamp {
    /// Converts to the type `filetime` sets.
    pub fn to_filetime(self) -> filetime::FileTime {
        filetime::FileTime::from_unix_time(self.secs, self.nanos)
    }
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link and its target, never followed.
    Symlink(PathBuf),
    /// A FIFO, socket or device: never copied.
    Special,
}

/// One scanned path: its kind and the metadata that decides whether it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File, directory, link or special.
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time: moves on every write and metadata change, and cannot be set by users.
    pub ctime: Timestamp,
    /// Inode number.
    pub ino: u64,
}

impl Entry {
    /// Builds an entry from `lstat` metadata; a link's target is read separately.
    pub fn from_metadata(meta: &Metadata, link_target: Option<PathBuf>) -> Entry {
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink(link_target.unwrap_or_default())
        } else {
            Kind::Special
        };
        Entry {
            kind,
            mode: meta.mode() & 0o7777,
            size: meta.size(),
            mtime: Timestamp {
                secs: meta.mtime(),
                nanos: meta.mtime_nsec() as u32,
            },
            ctime: Timestamp {
                secs: meta.ctime(),
                nanos: meta.ctime_nsec() as u32,
            },
            ino: meta.ino(),
        }
    }

    /// Reads the entry at `path` now (for the re-check before a destructive step).
    pub fn read(path: &Path) -> io::Result<Entry> {
        let meta = fs::symlink_metadata(path)?;
        let target = if meta.file_type().is_symlink() {
            Some(fs::read_link(path)?)
        } else {
            None
        };
        Ok(Entry::from_metadata(&meta, target))
    }

    /// True when `self` is still the object a scan recorded as `seen`: same inode, content
    /// stamp and kind. Used before replacing or removing, so a concurrent edit is never lost.
    pub fn unchanged_since(&self, seen: &Entry) -> bool {
        self.kind == seen.kind
            && self.ino == seen.ino
            && self.size == seen.size
            && self.mtime == seen.mtime
            && self.ctime == seen.ctime
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }
}

/// Which paths a pass leaves alone on both sides.
#[derive(Debug, Default)]
pub struct Filter {
    names: GlobSet,
    paths: GlobSet,
    exact: HashSet<PathBuf>,
    temp_names: bool,
}

impl Filter {
    /// Builds the filter from `--exclude` globs: a pattern without `/` matches a base name at
    /// any depth (as in rsync), one with `/` (a leading one included) matches the path
    /// relative to the root.
    ///
    /// Fails if a pattern is not a valid glob.
    pub fn new(patterns: &[String]) -> Result<Filter, Error> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for pattern in patterns {
            let trimmed = pattern.trim_start_matches('/').trim_end_matches('/');
            // `*` stops at `/`, as in rsync and shells: `build/*` names build's children.
            let glob = GlobBuilder::new(trimmed)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::BadExclude {
                    pattern: pattern.clone(),
                    message: e.kind().to_string(),
                })?;
            // A leading `/` anchors a pattern at the root, as in rsync: `/build` is only the
            // top-level build, `build` is any.
            if pattern.starts_with('/') || trimmed.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |b: GlobSetBuilder, pattern: &str| {
            b.build().map_err(|e| Error::BadExclude {
                pattern: pattern.to_string(),
                message: e.to_string(),
            })
        };
        Ok(Filter {
            names: build(names, "")?,
            paths: build(paths, "")?,
            exact: HashSet::new(),
            temp_names: false,
        })
    }

    /// Also leaves alone the temporary files of our own safe writes (`.oneway-tmp-XXXXXX`):
    /// a two-way pass must never carry a half-written leftover of a killed run to the other
    /// side. (A mirror needs no such rule: it removes whatever SOURCE does not hold.)
    pub fn skip_temp_files(&mut self) {
        self.temp_names = true;
    }

    /// Also leaves alone one exact relative path (our own log file, if it lies in a root).
    pub fn exclude_exact(&mut self, rel: PathBuf) {
        self.exact.insert(rel);
    }

    /// True if `name`, a child of the directory `dir` (relative to the root), is left alone.
    /// Builds the child's path only when a rule needs it (patterns with `/`, exact paths).
    pub fn excludes_child(&self, dir: &Path, name: &OsStr) -> bool {
        self.excludes_name(name)
            || (!(self.paths.is_empty() && self.exact.is_empty())
                && self.excludes_path(&dir.join(name)))
    }

    /// True if `rel` (whose last component is `name`) is left alone.
    pub fn excludes(&self, rel: &Path, name: &OsStr) -> bool {
        self.excludes_name(name) || self.excludes_path(rel)
    }

    fn excludes_name(&self, name: &OsStr) -> bool {
        // Asking an empty set still prepares the name for matching, for every entry scanned.
        (!self.names.is_empty() && self.names.is_match(Path::new(name)))
            || (self.temp_names && crate::fsops::is_temp_name(name))
    }

    fn excludes_path(&self, rel: &Path) -> bool {
        self.paths.is_match(rel) || self.exact.contains(rel)
    }
}

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

/// The order of `Path`'s `Ord` (component by component), computed on the raw bytes: for the
/// relative paths a scan makes (no `.`, no empty component, no trailing `/`), comparing bytes
/// with `/` counted as the smallest byte gives the same order, without splitting components.
/// Sorting and merging whole trees spends most of its time here.
pub fn path_order(a: &Path, b: &Path) -> std::cmp::Ordering {
    use std::os::unix::ffi::OsStrExt;
    let (a, b) = (a.as_os_str().as_bytes(), b.as_os_str().as_bytes());
    let common = a.iter().zip(b).position(|(x, y)| x != y);
    match common {
        Some(i) => {
            let key = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
            key(a[i]).cmp(&key(b[i]))
        }
        None => a.len().cmp(&b.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exclude_patterns_match_names_anywhere_and_anchored_paths_from_the_root() {
        let f = Filter::new(&["*.log".into(), "/build".into(), "cache/tmp".into()]).unwrap();
        let ex = |rel: &str| {
            let p = Path::new(rel);
            f.excludes(p, p.file_name().unwrap())
        };
        assert!(ex("a.log") && ex("deep/down/b.log"));
        assert!(ex("build") && !ex("src/build"));
        assert!(ex("cache/tmp") && !ex("x/cache/tmp"));
        assert!(!ex("notes.txt"));
    }

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

    proptest! {
        /// Byte order with `/` lowest agrees with `Path`'s component order on scan paths.
        #[test]
        fn path_order_agrees_with_path_ord(
            a in prop::collection::vec("[ !a._-]{1,3}", 1..4),
            b in prop::collection::vec("[ !a._-]{1,3}", 1..4),
        ) {
            let to_path = |parts: &Vec<String>| parts.iter().collect::<PathBuf>();
            let (pa, pb) = (to_path(&a), to_path(&b));
            // Only the normalized paths a scan makes: no `.`/`..` components.
            prop_assume!(pa.components().all(|c| matches!(c, std::path::Component::Normal(_))));
            prop_assume!(pb.components().all(|c| matches!(c, std::path::Component::Normal(_))));
            prop_assume!(pa.components().count() == a.len() && pb.components().count() == b.len());
            prop_assert_eq!(path_order(&pa, &pb), pa.cmp(&pb));
        }
    }
}
