//! The tree digest (SPEC §6): the seed's directory checksum, extended so that symbolic links
//! and empty directories count.
//!
//! Walking top-down in name order, each directory feeds its regular files (relative path,
//! then the hex SHA-256: exactly the seed's stream), then its links, then, if it is empty,
//! itself; then its subdirectories in turn. Link and empty-directory records start with a NUL
//! byte, which no path or hex digest contains, so they can never read as a file record. For a
//! tree of regular files and non-empty directories the result equals the seed's
//! `directory_checksum`.
//!
//! That digest sees content only, and stays as it is for the seed's fixtures. Whether a new
//! version is due is decided by the [`full_digest`]: everything a faithful copy carries, so that
//! a `chmod`, `chown`, `setfattr` or `setfacl` alone (or a hard link made or split) makes a
//! new version, as any change a mirror would carry must.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use checksum::Digest;
use sha2::{Digest as _, Sha256};

use sync_core::model::{Item, Items, Meta, Node};

use crate::links::Links;

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

/// The digest of everything a version holds: the root directory's own metadata, every
/// entry (path, kind, content or link target or node, mode, time, owner, group and extended
/// attributes), and which names share an inode. Directory times count: they are carried, so a
/// version that did not record a new one would bring an old one back.
///
/// Records are fixed fields and NUL-terminated names (no path or link target holds a NUL), in
/// path order, so that no two trees feed the same bytes.
pub fn full_digest(root: Option<&Meta>, items: &Items, links: &Links) -> Digest {
    fn meta(hasher: &mut Sha256, meta: &Meta, symlink: bool) {
        // A link's own mode is not carried: what the scan says of it is no change.
        let mode = if symlink { 0 } else { meta.mode };
        hasher.update(mode.to_le_bytes());
        hasher.update(meta.mtime.secs.to_le_bytes());
        hasher.update(meta.mtime.nanos.to_le_bytes());
        hasher.update(meta.uid.to_le_bytes());
        hasher.update(meta.gid.to_le_bytes());
        hasher.update(meta.xattrs.to_le_bytes());
    }
    fn name(hasher: &mut Sha256, path: &Path) {
        hasher.update(path.as_os_str().as_bytes());
        hasher.update([0]);
    }
    let mut hasher = Sha256::new();
    hasher.update(b"dirsync full digest 1\0");
    match root {
        Some(root) => {
            hasher.update(b"R");
            meta(&mut hasher, root, false);
        }
        None => hasher.update(b"-"),
    }
    for (rel, item) in items {
        match item {
            Item::File { digest, size, .. } => {
                hasher.update(b"F");
                name(&mut hasher, rel);
                hasher.update(digest);
                hasher.update(size.to_le_bytes());
            }
            Item::Dir { .. } => {
                hasher.update(b"D");
                name(&mut hasher, rel);
            }
            Item::Symlink { target, .. } => {
                hasher.update(b"L");
                name(&mut hasher, rel);
                name(&mut hasher, target);
            }
            Item::Special { node, .. } => {
                hasher.update(b"S");
                name(&mut hasher, rel);
                let (tag, dev) = match node {
                    Node::Fifo => (b'p', 0),
                    Node::Socket => (b's', 0),
                    Node::Char(dev) => (b'c', *dev),
                    Node::Block(dev) => (b'b', *dev),
                };
                hasher.update([tag]);
                hasher.update(dev.to_le_bytes());
            }
        }
        meta(
            &mut hasher,
            item.meta(),
            matches!(item, Item::Symlink { .. }),
        );
    }
    for (further, first) in links.iter() {
        hasher.update(b"H");
        name(&mut hasher, further);
        name(&mut hasher, first);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use sync_core::model::{NOT_CARRIED, Timestamp};

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

    /// Each thing a faithful copy carries, changed alone, changes the full digest and leaves
    /// the seed's content digest as it was.
    #[test]
    fn every_carried_change_alone_changes_the_full_digest() {
        let mut items = Items::new();
        items.insert("d".into(), dir());
        items.insert("d/a".into(), file(1));
        items.insert("d/b".into(), file(1));
        items.insert(
            "l".into(),
            Item::Symlink {
                target: PathBuf::from("d/a"),
                meta: Meta::plain(0o777, Timestamp::default()),
            },
        );
        let root = Meta::plain(0o755, Timestamp::default());
        let base = full_digest(Some(&root), &items, &Links::default());
        let content = tree_digest(&items);
        let with_meta = |rel: &str, change: &dyn Fn(&mut Meta)| {
            let mut items = items.clone();
            let item = &items[Path::new(rel)];
            let mut meta = *item.meta();
            change(&mut meta);
            let changed = item.with_meta(meta);
            items.insert(rel.into(), changed);
            items
        };
        type Change<'a> = (&'a str, &'a dyn Fn(&mut Meta));
        let changes: [Change; 6] = [
            ("d/a", &|m| m.mode = 0o600),
            ("d/a", &|m| m.mtime.nanos = 1),
            ("d/a", &|m| m.uid = 0),
            ("d/a", &|m| m.gid = 0),
            ("d/a", &|m| m.xattrs = 7),
            ("d", &|m| m.mtime.secs = 1),
        ];
        for (rel, change) in changes {
            let items = with_meta(rel, change);
            assert_eq!(tree_digest(&items), content);
            assert_ne!(full_digest(Some(&root), &items, &Links::default()), base);
        }
        // A link's mode is not its own.
        let items_l = with_meta("l", &|m| m.mode = 0o755);
        assert_eq!(full_digest(Some(&root), &items_l, &Links::default()), base);
        // The root's metadata, or none recorded (a manifest written before it was).
        let other_root = Meta {
            uid: 0,
            gid: NOT_CARRIED,
            ..root
        };
        assert_ne!(
            full_digest(Some(&other_root), &items, &Links::default()),
            base
        );
        assert_ne!(full_digest(None, &items, &Links::default()), base);
        // Two names made one inode.
        let mut links = Links::default();
        assert!(links.insert("d/b".into(), "d/a".into()));
        assert_ne!(full_digest(Some(&root), &items, &links), base);
        // A FIFO, which the seed's digest does not see.
        let mut with_fifo = items.clone();
        with_fifo.insert(
            "p".into(),
            Item::Special {
                node: Node::Fifo,
                meta: Meta::plain(0o644, Timestamp::default()),
            },
        );
        assert_eq!(tree_digest(&with_fifo), content);
        assert_ne!(
            full_digest(Some(&root), &with_fifo, &Links::default()),
            base
        );
    }
}
