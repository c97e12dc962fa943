//! Subtrees named by their roots, and the question a pass asks of them for each entry: does
//! this path lie in one (a failed step's, an unreadable entry's, a directory being built
//! hidden)? Asking a hash set about each ancestor of a path costs its depth times its length,
//! which a tree 10,000 levels deep turns into hours; here one pass over the path's bytes
//! answers, whatever the depth.

use std::ffi::OsStr;
use std::hash::{BuildHasher, RandomState};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustc_hash::FxHashMap;

/// The prime of the prefix hash: 2^61 - 1, which makes its reduction two additions.
const PRIME: u64 = (1 << 61) - 1;

/// Which root [`Subtrees::find`] looks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Find {
    /// The outermost at or above the path.
    Outermost,
    /// The nearest strictly above it.
    NearestAbove,
}

/// A set of subtrees, each named by its root: a relative path as a scan makes it (no `.`, no
/// empty component, no trailing `/`); the empty path is the whole tree.
#[derive(Debug)]
pub struct Subtrees {
    /// Random per set, so that no one can choose names whose prefixes collide.
    base: u64,
    /// The roots by the hash of their bytes (several under one hash only by a collision).
    roots: FxHashMap<u64, Vec<Box<[u8]>>>,
    len: usize,
}

impl Default for Subtrees {
    fn default() -> Subtrees {
        let random = RandomState::new().hash_one(0u64);
        Subtrees {
            base: 256 + random % (PRIME - 256),
            roots: FxHashMap::default(),
            len: 0,
        }
    }
}

impl Subtrees {
    /// No subtrees.
    pub fn new() -> Subtrees {
        Subtrees::default()
    }

    /// Adds the subtree at `root`.
    pub fn insert(&mut self, root: &Path) {
        let bytes = root.as_os_str().as_bytes();
        let hash = bytes.iter().fold(0, |h, &b| self.step(h, b));
        let same = self.roots.entry(hash).or_default();
        if !same.iter().any(|r| **r == *bytes) {
            same.push(bytes.into());
            self.len += 1;
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `rel` lies in one of the subtrees (is a root, or below one).
    pub fn contains(&self, rel: &Path) -> bool {
        self.find(rel, Find::Outermost).is_some()
    }

    /// The root of the subtree that `rel` lies strictly below (the nearest, if several).
    pub fn root_above<'r>(&self, rel: &'r Path) -> Option<&'r Path> {
        self.find(rel, Find::NearestAbove)
    }

    /// A root at or above `rel`, as `which` says: every prefix of `rel` that ends where a
    /// component does is hashed as the bytes go by, and looked up.
    fn find<'r>(&self, rel: &'r Path, which: Find) -> Option<&'r Path> {
        if self.is_empty() {
            return None;
        }
        let bytes = rel.as_os_str().as_bytes();
        let mut found = None;
        let mut hash = 0;
        for (i, &b) in bytes.iter().enumerate() {
            // `i == 0`: the empty prefix, the root of the whole tree.
            if (i == 0 || b == b'/') && self.holds(hash, &bytes[..i]) {
                found = Some(Path::new(OsStr::from_bytes(&bytes[..i])));
                if which == Find::Outermost {
                    return found;
                }
            }
            hash = self.step(hash, b);
        }
        match which {
            Find::Outermost if self.holds(hash, bytes) => Some(rel),
            _ => found,
        }
    }

    fn holds(&self, hash: u64, prefix: &[u8]) -> bool {
        self.roots
            .get(&hash)
            .is_some_and(|same| same.iter().any(|r| **r == *prefix))
    }

    /// The hash of a prefix one byte longer: a polynomial in `base` modulo [`PRIME`], whose
    /// collisions between two given strings are as unlikely as their length over 2^61.
    fn step(&self, hash: u64, byte: u8) -> u64 {
        let product = u128::from(hash) * u128::from(self.base);
        let folded = (product as u64 & PRIME) + (product >> 61) as u64;
        let reduced = if folded >= PRIME {
            folded - PRIME
        } else {
            folded
        };
        let next = reduced + u64::from(byte) + 1;
        if next >= PRIME { next - PRIME } else { next }
    }
}

impl<'a, P: AsRef<Path> + ?Sized + 'a> FromIterator<&'a P> for Subtrees {
    fn from_iter<I: IntoIterator<Item = &'a P>>(roots: I) -> Subtrees {
        let mut set = Subtrees::new();
        for root in roots {
            set.insert(root.as_ref());
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;

    #[test]
    fn a_path_lies_in_the_subtrees_of_its_ancestors_only() {
        let set: Subtrees = ["a/b", "c", "d/e/f"].iter().map(Path::new).collect();
        for (rel, root) in [
            ("a/b", Some("a/b")),
            ("a/b/c/d", Some("a/b")),
            ("a", None),
            ("a/bc", None),
            ("a/b.c", None),
            ("ab", None),
            ("c/x", Some("c")),
            ("cc", None),
            ("d/e", None),
            ("d/e/f/g", Some("d/e/f")),
            ("", None),
        ] {
            assert_eq!(
                set.find(Path::new(rel), Find::Outermost),
                root.map(Path::new),
                "{rel}"
            );
        }
        assert_eq!(set.root_above(Path::new("a/b")), None);
        assert_eq!(set.root_above(Path::new("a/b/x")), Some(Path::new("a/b")));
        assert!(!Subtrees::new().contains(Path::new("a")));
    }

    #[test]
    fn the_empty_root_holds_everything_and_the_nearest_root_above_is_found() {
        let set: Subtrees = ["", "a/b"].iter().map(Path::new).collect();
        assert!(set.contains(Path::new("x/y")));
        assert!(set.contains(Path::new("")));
        assert_eq!(set.root_above(Path::new("a/b/c")), Some(Path::new("a/b")));
        assert_eq!(set.root_above(Path::new("a/b")), Some(Path::new("")));
        assert_eq!(set.root_above(Path::new("")), None);
    }

    #[test]
    fn a_path_far_deeper_than_any_limit_is_answered() {
        let chain = |depth: usize| PathBuf::from(vec!["d"; depth].join("/"));
        let set: Subtrees = [chain(15_000)].iter().collect();
        assert!(set.contains(&chain(20_000).join("f")));
        assert_eq!(
            set.root_above(&chain(15_001)),
            Some(chain(15_000).as_path())
        );
        assert!(!set.contains(&chain(14_999)));
    }

    proptest! {
        /// The same answers as asking a set about every ancestor.
        #[test]
        fn agrees_with_a_set_of_ancestors(
            roots in prop::collection::vec(prop::collection::vec("[ab]{1,2}", 0..4), 0..5),
            rel in prop::collection::vec("[ab]{1,2}", 0..5),
        ) {
            let roots: Vec<PathBuf> = roots.iter().map(|p| p.iter().collect()).collect();
            let rel: PathBuf = rel.iter().collect();
            let set: Subtrees = roots.iter().collect();
            let plain: std::collections::HashSet<&PathBuf> = roots.iter().collect();
            let expected = rel.ancestors().any(|a| plain.contains(&a.to_path_buf()));
            prop_assert_eq!(set.contains(&rel), expected);
            let above = rel.ancestors().skip(1).find(|a| plain.contains(&a.to_path_buf()));
            prop_assert_eq!(set.root_above(&rel), above);
        }
    }
}
