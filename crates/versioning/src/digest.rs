//! The tree digest (SPEC §6): the seed's directory checksum, extended so that symbolic links
//! and empty directories count.
//!
//! Walking top-down in name order, each directory feeds its regular files (relative path,
//! then the hex SHA-256: exactly the seed's stream), then its links, then, if it is empty,
//! itself; then its subdirectories in turn. Link and empty-directory records start with a NUL
//! byte, which no path or hex digest contains, so they can never read as a file record. For a
//! tree of regular files and non-empty directories the result equals the seed's
//! `directory_checksum`.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use checksum::Digest;
use sha2::{Digest as _, Sha256};

use sync_core::model::{Item, Items};

/// The tree digest of `items` (the entries of a tree, by relative path).
pub fn tree_digest(items: &Items) -> Digest {
    // Children of each directory, in name order (the map's order is component-wise, so
    // siblings come out sorted by their name bytes).
    let mut children: HashMap<&Path, Vec<(&Path, &Item)>> = HashMap::new();
    for (rel, item) in items {
        let parent = rel.parent().unwrap_or(Path::new(""));
        children.entry(parent).or_default().push((rel, item));
    }
    let mut hasher = Sha256::new();
    let mut stack: Vec<&Path> = vec![Path::new("")];
    while let Some(dir) = stack.pop() {
        let kids = children.get(dir).map(Vec::as_slice).unwrap_or(&[]);
        for (rel, item) in kids {
            if let Item::File { digest, .. } = item {
                hasher.update(rel.as_os_str().as_bytes());
                hasher.update(hex::encode(digest).as_bytes());
            }
        }
        for (rel, item) in kids {
            if let Item::Symlink { target, .. } = item {
                hasher.update(b"\0L");
                hasher.update(rel.as_os_str().as_bytes());
                hasher.update(b"\0");
                hasher.update(target.as_os_str().as_bytes());
                hasher.update(b"\0");
            }
        }
        if kids.is_empty() && !dir.as_os_str().is_empty() {
            hasher.update(b"\0D");
            hasher.update(dir.as_os_str().as_bytes());
            hasher.update(b"\0");
        }
        // Reversed onto the stack so the first name is visited first, subtree by subtree.
        for (rel, item) in kids.iter().rev() {
            if matches!(item, Item::Dir { .. }) {
                stack.push(rel);
            }
        }
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use sync_core::model::{Meta, Timestamp};

    fn file(n: u8) -> Item {
        Item::File {
            digest: [n; 32],
            size: 1,
            meta: Meta::plain(0o644, Timestamp::default()),
        }
    }

    fn dir() -> Item {
        Item::Dir {
            meta: Meta::plain(0o755, Timestamp::default()),
        }
    }

    #[test]
    fn links_and_empty_directories_change_the_digest() {
        let mut items = Items::new();
        items.insert("a".into(), file(1));
        let base = tree_digest(&items);

        let mut with_dir = items.clone();
        with_dir.insert("e".into(), dir());
        assert_ne!(tree_digest(&with_dir), base);

        let mut with_link = items.clone();
        with_link.insert(
            "l".into(),
            Item::Symlink {
                target: PathBuf::from("a"),
                meta: Meta::plain(0o777, Timestamp::default()),
            },
        );
        let linked = tree_digest(&with_link);
        assert_ne!(linked, base);
        with_link.insert(
            "l".into(),
            Item::Symlink {
                target: PathBuf::from("b"),
                meta: Meta::plain(0o777, Timestamp::default()),
            },
        );
        assert_ne!(tree_digest(&with_link), linked);

        // A directory that is not empty is implied by its content, as in the seed.
        let mut nested = items.clone();
        nested.insert("e".into(), dir());
        nested.insert("e/f".into(), file(2));
        let mut flat = items;
        flat.insert("e".into(), dir());
        assert_ne!(tree_digest(&nested), tree_digest(&flat));
    }
}
