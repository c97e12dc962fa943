//! Does a version directory still hold exactly what its manifest records?

use std::path::Path;

use sync_core::model::Kind;
use sync_core::scan::{self, Filter};
use sync_core::tree::{LocalTree, Tree};

use crate::manifest::{Item, Manifest};

/// Compares the tree at `dir` with `manifest`: the same paths, kinds, modes, modification
/// times, sizes, link targets and file contents (every file is read). Returns one line per
/// difference; empty means the version is intact.
///
/// Fails only if `dir` itself cannot be listed.
pub fn verify(dir: &Path, manifest: &Manifest) -> Result<Vec<String>, sync_core::Error> {
    let version = LocalTree::open(dir).map_err(|source| sync_core::Error::ListRoot {
        role: "version",
        path: dir.to_path_buf(),
        source,
    })?;
    let tree = scan::scan(&version, "version", &Filter::default())?;
    let mut problems = Vec::new();
    for (rel, err) in &tree.unlistable {
        problems.push(format!("{}: cannot list: {err}", rel.display()));
    }
    for rel in tree.entries.keys() {
        if !manifest.items.contains_key(rel) {
            problems.push(format!("{}: not in the manifest", rel.display()));
        }
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
    let rels: Vec<&Path> = to_read.iter().map(|(rel, _)| *rel).collect();
    for ((rel, want), (got, _)) in to_read.iter().zip(version.digests(&rels)) {
        if !got.is_ok_and(|d| d == **want) {
            problems.push(format!("{}: differs from the manifest", rel.display()));
        }
    }
    Ok(problems)
}
