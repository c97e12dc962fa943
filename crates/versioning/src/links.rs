//! Hard-link groups of a tree: which names share one inode. A version keeps SOURCE's groups
//! (its names of one inode are one inode there too), its manifest records them, a restore
//! brings them back, and a file is shared with the previous version only where both hold the
//! same group at the same paths.
//!
//! A group is named by its first name in path order; every further name points to it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use sync_core::model::{Entry, Item, Items};

/// The hard-link groups of a tree: each further name of an inode, by the group's first name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// Further name → first name.
    first_of: BTreeMap<PathBuf, PathBuf>,
    /// First name → its further names, in path order.
    further: BTreeMap<PathBuf, Vec<PathBuf>>,
}

impl Links {
    /// The groups of the files among `entries` that have a name in `items` and share their
    /// inode with another such file. (A name of an inode outside the tree, or excluded, is no
    /// one's to keep.)
    pub fn of_scan<'a>(
        entries: impl IntoIterator<Item = (&'a PathBuf, &'a Entry)>,
        items: &Items,
    ) -> Links {
        let mut by_inode: HashMap<(u64, u64), Vec<&PathBuf>> = HashMap::new();
        for (rel, entry) in entries {
            if entry.is_linked() && matches!(items.get(rel), Some(Item::File { .. })) {
                by_inode
                    .entry((entry.dev, entry.ino))
                    .or_default()
                    .push(rel);
            }
        }
        let mut links = Links::default();
        for mut names in by_inode.into_values() {
            names.sort();
            if let Some((first, rest)) = names.split_first() {
                for name in rest {
                    links.insert(name.to_path_buf(), first.to_path_buf());
                }
            }
        }
        links
    }

    /// Records `further` as a further name of the group whose first name is `first`; `false`
    /// (and nothing recorded) if that would not be a group as [`Links`] keeps them: `further`
    /// already recorded, either name already the other kind, or `first` not before `further`.
    pub fn insert(&mut self, further: PathBuf, first: PathBuf) -> bool {
        if first >= further
            || self.first_of.contains_key(&further)
            || self.first_of.contains_key(&first)
            || self.further.contains_key(&further)
        {
            return false;
        }
        let names = self.further.entry(first.clone()).or_default();
        let at = names.partition_point(|n| *n < further);
        names.insert(at, further.clone());
        self.first_of.insert(further, first);
        true
    }

    /// The first name of the group `rel` is a further name of; `None` for a first name or a
    /// file alone.
    pub fn first_of(&self, rel: &Path) -> Option<&Path> {
        self.first_of.get(rel).map(PathBuf::as_path)
    }

    /// Whether `rel` shares its inode with another name.
    pub fn is_linked(&self, rel: &Path) -> bool {
        self.first_of.contains_key(rel) || self.further.contains_key(rel)
    }

    /// Every name of `rel`'s group in path order (`rel` alone when it shares its inode with
    /// no other name).
    pub fn group<'a>(&'a self, rel: &'a Path) -> Vec<&'a Path> {
        let first = self.first_of(rel).unwrap_or(rel);
        let further = self.further.get(first).map(Vec::as_slice).unwrap_or(&[]);
        std::iter::once(first)
            .chain(further.iter().map(PathBuf::as_path))
            .collect()
    }

    /// Every further name with the first name of its group, in path order of the further names.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Path)> {
        self.first_of
            .iter()
            .map(|(further, first)| (further.as_path(), first.as_path()))
    }

    /// Number of further names.
    pub fn len(&self) -> usize {
        self.first_of.len()
    }

    /// True when no two names share an inode.
    pub fn is_empty(&self) -> bool {
        self.first_of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(pairs: &[(&str, &str)]) -> Links {
        let mut links = Links::default();
        for (further, first) in pairs {
            assert!(links.insert(further.into(), first.into()));
        }
        links
    }

    #[test]
    fn a_group_is_its_first_name_and_the_further_ones_in_path_order() {
        let l = links(&[("c", "a"), ("b", "a"), ("e", "d")]);
        assert_eq!(
            l.group(Path::new("c")),
            [Path::new("a"), Path::new("b"), Path::new("c")]
        );
        assert_eq!(l.group(Path::new("a")), l.group(Path::new("b")));
        assert_eq!(l.group(Path::new("z")), [Path::new("z")]);
        assert_eq!(l.first_of(Path::new("e")), Some(Path::new("d")));
        assert_eq!(l.first_of(Path::new("d")), None);
        assert!(l.is_linked(Path::new("d")) && l.is_linked(Path::new("e")));
        assert!(!l.is_linked(Path::new("z")));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn only_groups_named_by_their_first_name_are_recorded() {
        let mut l = links(&[("b", "a")]);
        assert!(
            !l.insert("a".into(), "0".into()),
            "a first name made a further one"
        );
        assert!(
            !l.insert("c".into(), "b".into()),
            "a further name made a first one"
        );
        assert!(
            !l.insert("b".into(), "a".into()),
            "a further name recorded twice"
        );
        assert!(
            !l.insert("0".into(), "x".into()),
            "a first name after its further one"
        );
        assert_eq!(l, links(&[("b", "a")]));
    }
}
