//! Our own temporary names in a user's tree: their form (so that leftovers of a killed run are
//! known, and a user's look-alike is not), and the journal in which a two-way pass notes each
//! one before making it, so that the next pass removes exactly those.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Every temporary name we create starts with this, so leftovers of a killed run are known.
pub const TEMP_PREFIX: &str = ".oneway-tmp-";

/// Length of the random part that follows [`TEMP_PREFIX`] (tempfile's default).
const TEMP_RANDOM_LEN: usize = 6;

/// True for a name of exactly our temporary form: the prefix, then six letters or digits.
pub fn is_temp_name(name: &OsStr) -> bool {
    name.as_encoded_bytes()
        .strip_prefix(TEMP_PREFIX.as_bytes())
        .is_some_and(|rest| {
            rest.len() == TEMP_RANDOM_LEN && rest.iter().all(u8::is_ascii_alphanumeric)
        })
}

/// A fresh name: `prefix` and six random letters or digits (the form of tempfile's names).
pub(crate) fn random_name(prefix: &str) -> OsString {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    // Randomly keyed hashes of a counter: unpredictable enough for names that are only ever
    // created exclusively (a name taken is simply drawn again).
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(DRAWN.fetch_add(1, Ordering::Relaxed));
    let mut bits = hasher.finish();
    let mut name = prefix.as_bytes().to_vec();
    for _ in 0..TEMP_RANDOM_LEN {
        name.push(LETTERS[(bits % LETTERS.len() as u64) as usize]);
        bits /= LETTERS.len() as u64;
    }
    OsString::from_vec(name)
}

/// Creates something under a fresh temporary name in the directory shown as `shown_dir`,
/// with `make` (which must fail with `AlreadyExists` on a name that is taken, and is then
/// given another); the name is noted in the journal first. Gives the name and what `make`
/// gave.
pub(crate) fn create_temp<T>(
    shown_dir: &Path,
    mut make: impl FnMut(&OsStr) -> io::Result<T>,
) -> io::Result<(OsString, T)> {
    let mut tries = 0;
    loop {
        let name = random_name(TEMP_PREFIX);
        note_temp_name(&shown_dir.join(&name));
        match make(&name) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => tries += 1,
            made => return made.map(|m| (name, m)),
        }
    }
}

/// Where every temporary name is noted just before it is created, while a two-way pass runs:
/// a kill can leave such a file on a side that is not a mirror, and only a name we noted
/// ourselves is ever removed as ours (a user's file may look like one).
static TEMP_JOURNAL: std::sync::Mutex<Option<File>> = std::sync::Mutex::new(None);

pub(crate) fn note_temp_name(path: &Path) {
    let mut journal = TEMP_JOURNAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(file) = journal.as_mut() {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let line = format!("{}\n", crate::state::text::encode_path(&abs));
        // One write per line; a kill leaves whole lines or a torn last one, which decodes to
        // nothing and is skipped.
        let _ = file.write_all(line.as_bytes());
    }
}

/// Starts noting temporary names in `journal` (created or appended to).
///
/// Fails if the journal cannot be opened.
pub fn start_temp_journal(journal: &Path) -> io::Result<()> {
    let file = OpenOptions::new().create(true).append(true).open(journal)?;
    *TEMP_JOURNAL.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    Ok(())
}

/// Stops noting temporary names and deletes `journal`: nothing it lists can be left now.
pub fn end_temp_journal(journal: &Path) {
    *TEMP_JOURNAL.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let _ = fs::remove_file(journal);
}

/// Removes what an earlier, killed run left under the names `journal` lists (only names of
/// our exact temporary form, only files and links, only inside one of `trees`, each given
/// with the path of its root, and reached beneath it), then the journal itself. Returns the
/// paths removed.
pub fn remove_journaled_leftovers(
    journal: &Path,
    trees: &[(&Path, &dyn crate::tree::Tree)],
) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string(journal) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for path in text.lines().filter_map(crate::state::text::decode_path) {
        if !path.file_name().is_some_and(is_temp_name) {
            continue;
        }
        for (root, tree) in trees {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let gone = tree
                .stat(rel)
                .is_ok_and(|seen| !seen.is_dir() && tree.remove(rel, &seen).is_ok());
            if gone {
                removed.push(path.clone());
            }
        }
    }
    let _ = fs::remove_file(journal);
    removed
}
