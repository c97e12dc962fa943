//! Checks this crate against checksums the seed's own Python functions computed for the fixture
//! tree (`tests/fixtures/` at the workspace root; regenerate with `gen_checksums.py` there).
//!
//! The tree's names are chosen so that a change of walk order (files before subdirectories,
//! byte order: `B.txt` < `a.txt`, `dir10` < `dir2`) or of path encoding (`/` separators, UTF-8)
//! changes the directory checksums.

use std::collections::BTreeSet;
use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

type TestResult = Result<(), Box<dyn Error>>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// One recorded line of `checksums.txt`.
struct Recorded {
    hex: String,
    /// Relative to the tree; a directory line keeps its trailing `/` (`./` is the root).
    path: String,
}

fn recorded() -> Result<Vec<Recorded>, Box<dyn Error>> {
    let text = fs::read_to_string(fixtures().join("checksums.txt"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (hex, path) = line
            .split_once("  ")
            .ok_or_else(|| format!("malformed line in checksums.txt: {line:?}"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("malformed hash in checksums.txt: {line:?}").into());
        }
        out.push(Recorded {
            hex: hex.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// Every regular file under `dir`, as `/`-separated paths relative to `root`.
fn files_on_disk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> TestResult {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            files_on_disk(root, &entry.path(), out)?;
        } else if kind.is_file() {
            let rel = entry.path().strip_prefix(root)?.to_owned();
            let parts: Vec<_> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.insert(parts.join("/"));
        }
    }
    Ok(())
}

#[test]
fn file_checksums_match_seed_reference() -> TestResult {
    let tree = fixtures().join("tree");
    let mut checked = 0;
    for rec in recorded()?.iter().filter(|r| !r.path.ends_with('/')) {
        let actual = checksum::file_checksum(&tree.join(&rec.path))?;
        assert_eq!(actual, rec.hex, "file_checksum of {}", rec.path);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} file lines in checksums.txt");
    Ok(())
}

#[test]
fn directory_checksums_match_seed_reference() -> TestResult {
    let tree = fixtures().join("tree");
    let mut dirs = BTreeSet::new();
    for rec in recorded()?.iter().filter(|r| r.path.ends_with('/')) {
        let dir = match rec.path.as_str() {
            "./" => tree.clone(),
            sub => tree.join(sub.trim_end_matches('/')),
        };
        let actual = checksum::directory_checksum(&dir)?;
        assert_eq!(actual, rec.hex, "directory_checksum of {}", rec.path);
        dirs.insert(rec.path.clone());
    }
    // The root and every immediate subdirectory must have been checked.
    let mut expected = BTreeSet::from(["./".to_owned()]);
    for entry in fs::read_dir(&tree)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            expected.insert(format!("{}/", entry.file_name().to_string_lossy()));
        }
    }
    assert_eq!(dirs, expected, "directory lines in checksums.txt");
    Ok(())
}

/// A file added to or removed from the tree without rerunning gen_checksums.py would leave the
/// reference stale; fail loudly rather than compare against it.
#[test]
fn reference_lists_every_file_in_tree() -> TestResult {
    let tree = fixtures().join("tree");
    let mut on_disk = BTreeSet::new();
    files_on_disk(&tree, &tree, &mut on_disk)?;
    let listed: BTreeSet<String> = recorded()?
        .into_iter()
        .filter(|r| !r.path.ends_with('/'))
        .map(|r| r.path)
        .collect();
    assert_eq!(
        listed, on_disk,
        "checksums.txt is stale: rerun tests/fixtures/gen_checksums.py"
    );
    Ok(())
}
