//! The tree digest of a tree of plain files must equal the seed's directory checksum, as
//! recorded in tests/fixtures/checksums.txt by the seed's own Python functions.

use std::path::{Path, PathBuf};

use sync_core::model::{Kind, Meta};
use sync_core::scan::{Filter, scan};
use sync_core::tree::LocalTree;
use versioning::{Item, Manifest};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn expected(label: &str) -> String {
    let text = std::fs::read_to_string(fixtures().join("checksums.txt")).unwrap();
    text.lines()
        .find_map(|l| l.strip_suffix(&format!("  {label}")))
        .unwrap_or_else(|| panic!("no line for {label}"))
        .to_string()
}

fn digest_of(root: &Path) -> String {
    let tree = scan(
        &LocalTree::open(root).unwrap(),
        "fixture",
        &Filter::default(),
    )
    .unwrap();
    let items = tree
        .entries
        .into_iter()
        .map(|(rel, e)| {
            let item = match e.kind {
                Kind::File => Item::File {
                    digest: checksum::file_digest(&root.join(&rel)).unwrap(),
                    size: e.size,
                    meta: Meta::plain(e.mode, e.mtime),
                },
                Kind::Dir => Item::Dir {
                    meta: Meta::plain(e.mode, e.mtime),
                },
                other => panic!("fixture tree holds only files and directories, not {other:?}"),
            };
            (rel, item)
        })
        .collect();
    hex::encode(Manifest::new(items).digest)
}

#[test]
fn tree_digest_of_plain_files_equals_seed_directory_checksum() {
    let tree = fixtures().join("tree");
    assert_eq!(digest_of(&tree), expected("./"));
    for sub in ["Space Dir", "alpha", "dir10", "dir2"] {
        assert_eq!(
            digest_of(&tree.join(sub)),
            expected(&format!("{sub}/")),
            "{sub}"
        );
    }
}
