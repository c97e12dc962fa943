//! SHA-256 checksums of a file and of a directory tree, exactly as the seed program defines
//! them (`seed.md`, SPEC §6).
//!
//! This crate owns two encodings that other code compares against stored values, so they must
//! never drift:
//!
//! - [`file_checksum`]: lowercase hex SHA-256 of a file's content.
//! - [`directory_checksum`]: one SHA-256 over every regular file of a tree, fed as
//!   `relative path` then `hex checksum`, in a fixed walk order.
//!
//! `tests/fixtures/` at the workspace root holds a tree whose expected values were computed by
//! the seed's Python functions; `tests/fixture.rs` checks this crate against them.
//!
//! It also holds the two-lane SHA-256, which hashes two files ([`file_digest_pair`]) or two
//! streams fed piece by piece ([`Hasher`], [`update_pair`]) together on one core, and the one
//! way every file is opened to be read ([`open_quietly`]: its access time left alone).
//!
//! The wider tree digest that versioning uses (which also sees symlinks and empty directories)
//! is not defined here.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

mod compress;
mod pair;
mod stream;
pub use pair::{digest_open_pair, file_digest_pair};
pub use stream::{Hasher, update_pair};

/// A raw SHA-256 digest.
pub type Digest = [u8; 32];

/// Read buffer size: the fastest measured on the benchmark machine for files in the page cache
/// (against 64 KiB, 128 KiB, 256 KiB and 4 MiB): large enough to amortise syscalls, small
/// enough to stay in a core's L2 cache between the kernel's copy and the hash. (A buffer
/// reused across files measured slower than a fresh one per file.)
const BUF_SIZE: usize = 1024 * 1024;

/// An error from [`directory_checksum`]; every variant names the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A directory of the tree could not be opened or listed, or an entry's type could not be
    /// read while listing it.
    #[error("cannot list directory {path}")]
    ListDir {
        /// The directory being listed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A regular file of the tree could not be opened or read.
    #[error("cannot read {path}")]
    Read {
        /// The file being hashed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
}

/// Streams `reader` through SHA-256 and returns the digest.
///
/// Reads through one fixed buffer, so the whole content is never held in memory.
/// Interrupted reads are retried.
///
/// # Errors
///
/// Fails with the first error `reader` returns other than [`io::ErrorKind::Interrupted`].
pub fn digest_reader(reader: impl Read) -> io::Result<Digest> {
    digest_with_buffer(reader, BUF_SIZE)
}

fn digest_with_buffer(mut reader: impl Read, capacity: usize) -> io::Result<Digest> {
    let mut hasher = Sha256::new();
    // On the heap: 1 MiB on the stack could overflow a small thread stack.
    let mut buf = vec![0u8; capacity];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finalize().into())
}

/// SHA-256 of the content of the file at `path`, streamed (see [`digest_reader`]).
///
/// Opening follows a symlink at `path` itself; callers that must not follow links check the
/// file type first, as [`directory_checksum`] does.
///
/// # Errors
///
/// Fails if `path` cannot be opened or read (it does not exist, permission is denied, it is a
/// directory, ...).
pub fn file_digest(path: &Path) -> io::Result<Digest> {
    digest_open(open_quietly(path, 0)?)
}

/// SHA-256 of the content of the file `file`, open for reading, from where it stands.
///
/// # Errors
///
/// Fails if `file` cannot be read.
pub fn digest_open(file: File) -> io::Result<Digest> {
    // A small file gets a buffer its size (plus the byte that shows the end): clearing a
    // large one for each of thousands of small files costs more than hashing them.
    let capacity = file.metadata().map_or(BUF_SIZE, |m| {
        usize::try_from(m.len().saturating_add(1)).map_or(BUF_SIZE, |n| n.clamp(4096, BUF_SIZE))
    });
    digest_with_buffer(file, capacity)
}

/// Opens the file at `path` for reading, with the `open(2)` `flags` given, without moving its
/// access time where the kernel allows it (`O_NOATIME`: to the file's owner, and to root), and
/// plainly where it does not (another user's file). Reading a tree to back it up then leaves
/// it as it was: a file system mounted `relatime` would otherwise write the inode of every file
/// not read for a day, on a first copy or a `--checksum` pass, and mail readers that compare a
/// mailbox's access and modification times would take new mail for read.
///
/// # Errors
///
/// Fails as `open(2)` does.
pub fn open_quietly(path: &Path, flags: i32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
    };
    match open(flags | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(flags),
        opened => opened,
    }
}

/// Lowercase hex SHA-256 of the content of the file at `path`: the seed's `file_checksum`.
///
/// # Errors
///
/// Fails as [`file_digest`] does.
pub fn file_checksum(path: &Path) -> io::Result<String> {
    file_digest(path).map(hex::encode)
}

/// The seed's `directory_checksum` of the tree at `dir`, as lowercase hex.
///
/// The tree is walked top-down (pre-order depth-first): for each directory, first its regular
/// files in sorted name order, then each of its subdirectories in sorted name order, recursively.
/// Names sort by their bytes, so `B.txt` comes before `a.txt` and `dir10` before `dir2`. For each
/// file, one SHA-256 is fed its path relative to `dir` (`/` separators, no leading `./`) and then
/// its [`file_checksum`] as ASCII hex. An empty tree therefore hashes to the SHA-256 of nothing.
///
/// This equals the seed's Python function run with subdirectories visited in sorted order, for
/// any tree of regular files and directories with UTF-8 names. Where the seed is silent or
/// unusable, this function decides:
///
/// - **Symlinks are ignored**, whether they point to files or directories: they are never
///   followed, opened or hashed. (The seed hashed the target's content of a link to a file.)
///   Versioning's wider tree digest covers links; this one does not.
/// - **Special files are ignored**: FIFOs, sockets and devices are never opened (opening a FIFO
///   would block forever).
/// - **Names are bytes**: a name that is not valid UTF-8 is fed as its raw bytes (on Unix; on
///   Windows, the WTF-8 encoding, which is UTF-8 for every valid name). The seed would raise
///   an exception on such a name.
/// - `dir` itself is followed if it is a symlink to a directory; only entries inside are not.
///
/// # Errors
///
/// Unlike the seed (whose `os.walk` silently skips what it cannot list), nothing is skipped on
/// error, since a partial checksum would look like a changed tree:
///
/// - [`Error::ListDir`] if `dir` or any directory below it cannot be listed (missing, not a
///   directory, permission denied), or an entry's type cannot be read.
/// - [`Error::Read`] if a regular file cannot be opened or read.
pub fn directory_checksum(dir: &Path) -> Result<String, Error> {
    let mut hasher = Sha256::new();
    // Directories still to visit: (path on disk, relative path prefix: empty for `dir`,
    // otherwise ending in '/'). A stack rather than recursion, so depth cannot overflow it.
    let mut pending: Vec<(PathBuf, Vec<u8>)> = vec![(dir.to_path_buf(), Vec::new())];
    while let Some((path, prefix)) = pending.pop() {
        let listing = list_dir(&path)?;
        for name in &listing.files {
            let file_path = path.join(name);
            let sum = match file_checksum(&file_path) {
                Ok(sum) => sum,
                Err(source) => {
                    return Err(Error::Read {
                        path: file_path,
                        source,
                    });
                }
            };
            // Feeding prefix then name is the same stream as feeding the joined relative path.
            hasher.update(&prefix);
            hasher.update(name.as_encoded_bytes());
            hasher.update(sum.as_bytes());
        }
        // Pushed in reverse so the smallest name is popped first and its whole subtree is done
        // before its next sibling: pre-order, as os.walk top-down yields.
        for name in listing.dirs.into_iter().rev() {
            let mut sub_prefix = prefix.clone();
            sub_prefix.extend_from_slice(name.as_encoded_bytes());
            sub_prefix.push(b'/');
            pending.push((path.join(name), sub_prefix));
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The entries of one directory that [`directory_checksum`] visits, each list sorted by bytes.
struct Listing {
    files: Vec<OsString>,
    dirs: Vec<OsString>,
}

/// Lists `dir` without following any link: regular files and real subdirectories only.
fn list_dir(dir: &Path) -> Result<Listing, Error> {
    let list_err = |source| Error::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        // DirEntry::file_type does not follow symlinks: a link reports as a link, never as its
        // target, so links and special files fall through and are skipped.
        let kind = entry.file_type().map_err(list_err)?;
        if kind.is_file() {
            files.push(entry.file_name());
        } else if kind.is_dir() {
            dirs.push(entry.file_name());
        }
    }
    // Byte order, stated explicitly: it is what Python's sorted() gives for UTF-8 names, and
    // the encoding must not depend on how OsStr happens to implement Ord.
    files.sort_unstable_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    dirs.sort_unstable_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    Ok(Listing { files, dirs })
}

/// Deterministic bytes that differ between `seed`s, for the tests of the hashers.
#[cfg(test)]
pub(crate) fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The expected directory checksum, fed by hand from (relative path, content) pairs in the
    /// order the walk must visit them.
    fn expected_tree_sum(entries: &[(&[u8], &[u8])]) -> String {
        let mut hasher = Sha256::new();
        for (rel, content) in entries {
            hasher.update(rel);
            hasher.update(hex::encode(Sha256::digest(content)).as_bytes());
        }
        hex::encode(hasher.finalize())
    }

    #[test]
    fn digest_reader_matches_known_vectors() -> TestResult {
        assert_eq!(hex::encode(digest_reader(&b""[..])?), EMPTY_SHA256);
        assert_eq!(hex::encode(digest_reader(&b"abc"[..])?), ABC_SHA256);
        Ok(())
    }

    /// A reader that hands out one byte per call and is interrupted before each, to pin that
    /// short reads are accumulated and `Interrupted` is retried rather than returned.
    struct Stuttering<'a> {
        data: &'a [u8],
        interrupt_next: bool,
    }

    impl Read for Stuttering<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt_next = !self.interrupt_next;
            if !self.interrupt_next {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.data.len().min(buf.len()).min(1);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn digest_reader_retries_interrupted_and_short_reads() -> TestResult {
        let reader = Stuttering {
            data: b"abc",
            interrupt_next: false,
        };
        assert_eq!(hex::encode(digest_reader(reader)?), ABC_SHA256);
        Ok(())
    }

    #[test]
    fn file_checksum_of_file_larger_than_buffer_matches_whole_content_hash() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("big");
        // Two full buffers plus a partial one, with content that differs per position so a
        // dropped or repeated chunk changes the hash.
        let content: Vec<u8> = (0..2 * BUF_SIZE + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        fs::write(&path, &content)?;
        let expected = Sha256::digest(&content);
        assert_eq!(file_digest(&path)?, <Digest>::from(expected));
        assert_eq!(file_checksum(&path)?, hex::encode(expected));
        Ok(())
    }

    #[test]
    fn file_checksum_of_empty_file_is_sha256_of_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("empty");
        fs::write(&path, b"")?;
        assert_eq!(file_checksum(&path)?, EMPTY_SHA256);
        Ok(())
    }

    #[test]
    fn file_checksum_of_missing_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let err = file_checksum(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn directory_checksum_of_empty_directory_is_sha256_of_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        assert_eq!(directory_checksum(dir.path())?, EMPTY_SHA256);
        // Empty subdirectories contribute nothing either: the seed only hashes files.
        fs::create_dir_all(dir.path().join("a/b"))?;
        assert_eq!(directory_checksum(dir.path())?, EMPTY_SHA256);
        Ok(())
    }

    /// Pins the walk order: files before subdirectories, names by bytes (uppercase first,
    /// `dir10` before `dir2`), and each subtree finished before the next sibling.
    #[test]
    fn directory_checksum_feeds_files_first_then_subdirectories_in_byte_order() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        fs::create_dir_all(root.join("dir2/inner"))?;
        fs::create_dir_all(root.join("dir10"))?;
        fs::write(root.join("a.txt"), b"lower a")?;
        fs::write(root.join("B.txt"), b"upper b")?;
        fs::write(root.join("z.txt"), b"last file, but before every directory")?;
        fs::write(root.join("dir2/inner/deep"), b"deep")?;
        fs::write(root.join("dir2/y"), b"y")?;
        fs::write(root.join("dir10/x"), b"x")?;
        let expected = expected_tree_sum(&[
            (b"B.txt", b"upper b"),
            (b"a.txt", b"lower a"),
            (b"z.txt", b"last file, but before every directory"),
            (b"dir10/x", b"x"),
            (b"dir2/y", b"y"),
            (b"dir2/inner/deep", b"deep"),
        ]);
        assert_eq!(directory_checksum(root)?, expected);
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn directory_checksum_ignores_symlinks_and_sockets() -> TestResult {
        use std::os::unix::fs::symlink;
        use std::os::unix::net::UnixListener;

        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("sub"))?;
        fs::write(root.join("file"), b"content")?;
        fs::write(root.join("sub/inner"), b"inner")?;
        let before = directory_checksum(&root)?;
        assert_eq!(
            before,
            expected_tree_sum(&[(b"file", b"content"), (b"sub/inner", b"inner")])
        );

        // Links inside the tree, to a file and to a directory, and one outside it, plus a
        // dangling one: none may be followed or hashed.
        let outside = dir.path().join("outside");
        fs::create_dir(&outside)?;
        fs::write(outside.join("secret"), b"secret")?;
        symlink(root.join("file"), root.join("link_to_file"))?;
        symlink(root.join("sub"), root.join("link_to_dir"))?;
        symlink(&outside, root.join("sub/link_outside"))?;
        symlink(root.join("nowhere"), root.join("dangling"))?;
        // A socket stands in for special files: it is a non-regular, non-directory entry that
        // std can create without extra dependencies.
        let _listener = UnixListener::bind(root.join("sock"))?;

        assert_eq!(directory_checksum(&root)?, before);
        Ok(())
    }

    /// Linux only: macOS file systems refuse names that are not valid UTF-8.
    #[cfg(target_os = "linux")]
    #[test]
    fn directory_checksum_feeds_non_utf8_name_as_raw_bytes() -> TestResult {
        use std::os::unix::ffi::OsStrExt;

        let dir = tempfile::tempdir()?;
        let root = dir.path();
        // "café" in Latin-1: 0xE9 alone is not valid UTF-8.
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
        fs::create_dir(root.join("sub"))?;
        fs::write(root.join("sub").join(name), b"latin-1")?;
        assert_eq!(
            directory_checksum(root)?,
            expected_tree_sum(&[(b"sub/caf\xe9", b"latin-1")])
        );
        Ok(())
    }

    #[test]
    fn directory_checksum_of_missing_directory_fails_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        match directory_checksum(&missing) {
            Err(Error::ListDir { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected ListDir error, got {other:?}"),
        }
    }

    #[test]
    fn directory_checksum_of_a_file_fails_rather_than_hashing_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"not a directory").unwrap();
        assert!(matches!(
            directory_checksum(&file),
            Err(Error::ListDir { path, .. }) if path == file
        ));
    }

    #[test]
    fn error_message_names_operation_and_path_without_the_source() {
        let err = Error::Read {
            path: PathBuf::from("some/file"),
            source: io::ErrorKind::PermissionDenied.into(),
        };
        assert_eq!(err.to_string(), "cannot read some/file");
    }
}
