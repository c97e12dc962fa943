//! Does a version directory still hold exactly what its manifest records?

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sync_core::model::Kind;
use sync_core::scan::{self, Filter, Scanned};
use sync_core::tree::{LocalTree, Tree};

use crate::manifest::{Item, Manifest};

/// Compares the tree at `dir` with `manifest`: the same paths, kinds, modes, modification
/// times, owners, attributes, sizes, link targets, nodes and file contents (every file is
/// read), the same names sharing inodes, and the root's own metadata where recorded. Returns
/// one line per difference; empty means the version is intact.
///
/// Fails only if `dir` itself cannot be listed.
pub fn verify(dir: &Path, manifest: &Manifest) -> Result<Vec<String>, sync_core::Error> {
    let version = LocalTree::open(dir).map_err(|source| sync_core::Error::ListRoot {
        role: "version",
        path: dir.to_path_buf(),
        source,
    })?;
    verify_tree(&version, manifest).map(|(problems, _)| problems)
}

/// [`verify`] of the version `version` holds, giving also the entries it found there (what a
/// restore reads, checked).
///
/// Fails only if the version's root cannot be listed.
pub fn verify_tree(
    version: &LocalTree,
    manifest: &Manifest,
) -> Result<(Vec<String>, Scanned), sync_core::Error> {
    let tree = scan::scan(version, "version", &Filter::default())?;
    let mut problems = Vec::new();
    for (rel, err) in &tree.unlistable {
        problems.push(format!("{}: cannot list: {err}", rel.display()));
    }
    for rel in tree.entries.keys() {
        if !manifest.items.contains_key(rel) {
            problems.push(format!("{}: not in the manifest", rel.display()));
        }
    }
    if let Some(root) = &manifest.root
        && version
            .stat(Path::new(""))
            .map_or(true, |now| now.meta() != *root)
    {
        problems.push("the version's root directory differs from the manifest".to_string());
    }
    // Files whose metadata agree, to be read (all at once) with the digest they must have.
    let mut to_read: Vec<(&Path, &checksum::Digest)> = Vec::new();
    for (rel, item) in &manifest.items {
        let Some(entry) = tree.entries.get(rel) else {
            problems.push(format!("{}: missing", rel.display()));
            continue;
        };
        let meta = entry.meta();
        let ok = match (item, &entry.kind) {
            (Item::File { digest, size, .. }, Kind::File) => {
                let same = entry.size == *size && meta == *item.meta();
                if same {
                    to_read.push((rel, digest));
                }
                same
            }
            (Item::Dir { .. }, Kind::Dir) => meta == *item.meta(),
            (Item::Symlink { target, .. }, Kind::Symlink(t)) => {
                t == target && !meta.differs(item.meta(), true)
            }
            (Item::Special { node, .. }, Kind::Special(n)) => n == node && meta == *item.meta(),
            _ => false,
        };
        if !ok {
            problems.push(format!("{}: differs from the manifest", rel.display()));
        }
    }
    problems.extend(link_problems(&tree, manifest));
    let rels: Vec<&Path> = to_read.iter().map(|(rel, _)| *rel).collect();
    for ((rel, want), (got, _)) in to_read.iter().zip(version.digests(&rels)) {
        if !got.is_ok_and(|d| d == **want) {
            problems.push(format!("{}: differs from the manifest", rel.display()));
        }
    }
    Ok((problems, tree))
}

/// Where the version's files share inodes otherwise than the manifest's groups say: a restore
/// would join names that were apart, or split names that were one.
fn link_problems(tree: &Scanned, manifest: &Manifest) -> Vec<String> {
    // The first name seen of each inode of the version, among the manifest's files.
    let mut seen: HashMap<(u64, u64), &PathBuf> = HashMap::new();
    let mut problems = Vec::new();
    for (rel, entry) in &tree.entries {
        if entry.kind != Kind::File || !manifest.items.contains_key(rel) {
            continue;
        }
        let want = manifest.links.first_of(rel);
        match seen.get(&(entry.dev, entry.ino)) {
            // Path order: a group's first name comes before its further ones.
            Some(first) if want == Some(first.as_path()) => {}
            Some(first) => problems.push(format!(
                "{}: shares its inode with {}, which the manifest does not record",
                rel.display(),
                first.display()
            )),
            None => {
                seen.insert((entry.dev, entry.ino), rel);
                if let Some(first) = want {
                    problems.push(format!(
                        "{}: is not a hard link of {}, as the manifest records",
                        rel.display(),
                        first.display()
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::Links;
    use sync_core::model::Items;

    /// The items of the files at `rels` in `dir`, as a scan of it sees them.
    fn items_of(dir: &Path, rels: &[&str]) -> Items {
        let tree = LocalTree::open(dir).unwrap();
        rels.iter()
            .map(|rel| {
                let entry = tree.stat(Path::new(rel)).unwrap();
                let digest = checksum::file_digest(&dir.join(rel)).unwrap();
                (PathBuf::from(rel), Item::of(&entry, Some(digest)).unwrap())
            })
            .collect()
    }

    /// A version whose names share inodes otherwise than its manifest records is not intact:
    /// a restore from it would join or split what SOURCE held.
    #[test]
    fn hard_links_must_be_as_the_manifest_records() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a"), b"same").unwrap();
        std::fs::hard_link(d.join("a"), d.join("b")).unwrap();
        std::fs::write(d.join("c"), b"same").unwrap();
        filetime::set_file_mtime(d.join("c"), filetime::FileTime::from_unix_time(0, 0)).unwrap();
        filetime::set_file_mtime(d.join("a"), filetime::FileTime::from_unix_time(0, 0)).unwrap();
        let items = items_of(d, &["a", "b", "c"]);
        let mut links = Links::default();
        assert!(links.insert("b".into(), "a".into()));
        let intact = Manifest::of(None, items.clone(), links);
        assert_eq!(verify(d, &intact).unwrap(), Vec::<String>::new());

        let unlinked = verify(d, &Manifest::of(None, items.clone(), Links::default())).unwrap();
        assert_eq!(unlinked.len(), 1, "{unlinked:?}");
        assert!(
            unlinked[0].starts_with("b: shares its inode with a"),
            "{unlinked:?}"
        );

        let mut wrong = Links::default();
        assert!(wrong.insert("c".into(), "a".into()));
        let problems = verify(d, &Manifest::of(None, items, wrong)).unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("c: is not a hard link of a")),
            "{problems:?}"
        );
    }
}
