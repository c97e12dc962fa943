//! The safe file operations of SPEC §7: every replacement goes through a temporary file in
//! the same directory (written, flushed, renamed), and nothing is replaced or removed
//! without first checking that it is still what the scan saw. A new directory may instead be
//! built whole under a temporary name and then renamed into place ([`stage_dir`],
//! [`Dest::Hidden`], [`publish_dir`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use checksum::{Digest, Hasher};
use sha2::{Digest as _, Sha256};

use crate::model::{Entry, Kind, Timestamp};
use crate::tree::flush::start_writeback;
use crate::tree::temp::{TEMP_PREFIX, note_temp_name};

/// The entry an `lstat` describes; a link's target is read separately.
pub fn entry_of(meta: &fs::Metadata, link_target: Option<PathBuf>) -> Entry {
    use std::os::unix::fs::MetadataExt;
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink(link_target.unwrap_or_default())
    } else {
        Kind::Special
    };
    Entry {
        kind,
        mode: meta.mode() & 0o7777,
        size: meta.size(),
        mtime: Timestamp {
            secs: meta.mtime(),
            nanos: meta.mtime_nsec() as u32,
        },
        ctime: Timestamp {
            secs: meta.ctime(),
            nanos: meta.ctime_nsec() as u32,
        },
        ino: meta.ino(),
    }
}

/// What is at `path` now, not following a link (for the re-check before a destructive step).
pub fn stat(path: &Path) -> io::Result<Entry> {
    let meta = fs::symlink_metadata(path)?;
    let target = if meta.file_type().is_symlink() {
        Some(fs::read_link(path)?)
    } else {
        None
    };
    Ok(entry_of(&meta, target))
}

/// Why a single-path operation did not happen. The path is added by the caller's log line.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The source could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The source path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The destination could not be written, renamed or removed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The destination path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The source changed while it was copied; the copy was discarded.
    #[error("{path} changed while being copied; left for the next pass")]
    SourceChanged {
        /// The source path.
        path: PathBuf,
    },
    /// The destination is no longer what the scan saw; it was left alone.
    #[error("{path} changed since it was scanned; left for the next pass")]
    DestinationChanged {
        /// The destination path.
        path: PathBuf,
    },
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> OpError + '_ {
    move |source| OpError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a copy or link goes, and what it may replace.
#[derive(Debug, Clone, Copy)]
pub enum Dest<'a> {
    /// A name that does not exist: the entry appears there complete, and never over another.
    New,
    /// The entry the scan saw there, re-checked right before it is replaced atomically.
    Replace(&'a Entry),
    /// A name inside a directory that no one else sees yet (one made by [`stage_dir`] and not
    /// yet published, or a version being built): the entry is written there under its final
    /// name, and a copy that fails removes what it wrote. What keeps a half-written file out
    /// of the tree is the directory, which gets its final name only when it is complete (see
    /// [`publish_dir`]), and is thrown away otherwise.
    Hidden,
}

impl<'a> Dest<'a> {
    /// The entry to replace, if any.
    fn replaces(self) -> Option<&'a Entry> {
        match self {
            Dest::Replace(seen) => Some(seen),
            Dest::New | Dest::Hidden => None,
        }
    }
}

impl<'a> From<Option<&'a Entry>> for Dest<'a> {
    fn from(expected: Option<&'a Entry>) -> Self {
        expected.map_or(Dest::New, Dest::Replace)
    }
}

/// A file being written before it gets its final name. Where the file system allows, it has
/// no name at all until it is complete (`O_TMPFILE`): a kill then leaves nothing behind. Else
/// it is a temporary file `.oneway-tmp-XXXXXX` beside its final name. In a hidden directory
/// ([`Dest::Hidden`]) it has its final name from the start.
enum Staged {
    Unnamed(File),
    Named(tempfile::NamedTempFile),
    Hidden(File, RemoveOnDrop),
}

/// Removes the file at its path when dropped, unless disarmed: a copy into a hidden directory
/// that fails takes its partial file away with it.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            // Should this fail, the partial file stays in the hidden directory: the caller
            // looks for it and then does not publish the directory (see `Dest::Hidden`).
            let _ = fs::remove_file(path);
        }
    }
}

impl Staged {
    /// Stages the copy of a file whose permission bits are `mode`.
    fn new(dst: &Path, dest: Dest<'_>, mode: u32) -> io::Result<Staged> {
        use rustix::fs::{Mode, OFlags};
        let dir = dst.parent().unwrap_or(Path::new("."));
        if let Dest::Hidden = dest {
            // A plain create: no unnamed inode to link later, which costs about as much again
            // as creating the file (the first copy of a tree of small files is mostly this).
            // Created with its final mode (no one else can enter the directory yet), which
            // saves a chmod unless the umask or a default ACL takes bits away.
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode & 0o777)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(dst)?;
            return Ok(Staged::Hidden(file, RemoveOnDrop(Some(dst.to_path_buf()))));
        }
        // Naming an unnamed file goes through /proc/self/fd; without /proc (some containers)
        // only named temporary files work.
        static PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let named = || {
            tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .make_in(dir, |p| {
                    note_temp_name(p);
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(p)
                })
                .map(Staged::Named)
        };
        if !*PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
            return named();
        }
        match rustix::fs::openat(
            rustix::fs::CWD,
            dir,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => Ok(Staged::Unnamed(File::from(fd))),
            // Not supported by this file system (or kernel): a named temporary file.
            Err(_) => named(),
        }
    }

    fn file_mut(&mut self) -> &mut File {
        match self {
            Staged::Unnamed(f) => f,
            Staged::Named(t) => t.as_file_mut(),
            Staged::Hidden(f, _) => f,
        }
    }

    /// Gives the complete file its final name `dst`: over `expected` after re-checking it,
    /// or only if `dst` does not exist when `expected` is `None`. A hidden file has it already.
    fn install(self, dir: &Path, dst: &Path, expected: Option<&Entry>) -> Result<File, OpError> {
        match self {
            Staged::Hidden(file, mut remove) => {
                remove.0 = None;
                Ok(file)
            }
            Staged::Named(tmp) => persist(tmp, dst, expected),
            Staged::Unnamed(file) => {
                let link = |to: &Path| link_unnamed(&file, to);
                match expected {
                    // A new name: linking fails if it exists, so nothing is ever overwritten.
                    None => match link(dst) {
                        Ok(()) => Ok(file),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            Err(OpError::DestinationChanged {
                                path: dst.to_path_buf(),
                            })
                        }
                        Err(e) => Err(OpError::Write {
                            path: dst.to_path_buf(),
                            source: e,
                        }),
                    },
                    // A replacement needs a rename over the old file: a name for an instant.
                    Some(_) => {
                        let tmp = tempfile::Builder::new()
                            .prefix(TEMP_PREFIX)
                            .make_in(dir, |p| {
                                note_temp_name(p);
                                link(p)
                            })
                            .map_err(write_err(dst))?;
                        persist(tmp, dst, expected)?;
                        Ok(file)
                    }
                }
            }
        }
    }
}

/// False once linking a file by its descriptor alone (`AT_EMPTY_PATH`: before Linux 6.10 only
/// with `CAP_DAC_READ_SEARCH`) was refused while linking it through /proc worked.
static LINK_BY_DESCRIPTOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Gives the unnamed file `file` the name `to`; fails if `to` exists.
fn link_unnamed(file: &File, to: &Path) -> io::Result<()> {
    use std::sync::atomic::Ordering;
    // By descriptor where allowed: the /proc path costs a lookup of four names per file. Any
    // failure is tried again through /proc, which tells a refusal of the descriptor (ENOENT
    // on older kernels, as for a missing directory; whatever a security module says) from a
    // fault of the destination, and gives the error to report.
    let by_descriptor = LINK_BY_DESCRIPTOR.load(Ordering::Relaxed);
    if by_descriptor && link_by_descriptor(file, to).is_ok() {
        return Ok(());
    }
    link_through_proc(file, to)?;
    if by_descriptor {
        LINK_BY_DESCRIPTOR.store(false, Ordering::Relaxed);
    }
    Ok(())
}

fn link_by_descriptor(file: &File, to: &Path) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, linkat};
    Ok(linkat(file, "", CWD, to, AtFlags::EMPTY_PATH)?)
}

fn link_through_proc(file: &File, to: &Path) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, linkat};
    use std::os::fd::AsRawFd;
    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    Ok(linkat(
        CWD,
        fd_path.as_str(),
        CWD,
        to,
        AtFlags::SYMLINK_FOLLOW,
    )?)
}

/// A completed copy: the content's digest and both files as they are now.
#[derive(Debug)]
pub struct Copied {
    /// SHA-256 of the bytes copied.
    pub digest: Digest,
    /// The source as it was opened (unchanged until the copy ended).
    pub source: Entry,
    /// The new destination file; or, when nothing was installed, the one that was there.
    pub destination: Entry,
    /// False when the source's bytes turned out to be those the destination already held
    /// ([`Content::Unless`]): the copy was dropped and the destination left as it was.
    pub installed: bool,
}

fn open_source(path: &Path) -> io::Result<File> {
    // NOFOLLOW: a file swapped for a link since the scan is not followed out of the tree;
    // NONBLOCK: one swapped for a FIFO cannot hang the pass. Its access time is left alone.
    checksum::open_quietly(
        path,
        (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
    )
}

fn replace_check(dst: &Path, expected: Option<&Entry>) -> Result<(), OpError> {
    match expected {
        Some(seen) => match stat(dst) {
            Ok(now) if now.unchanged_since(seen) => Ok(()),
            _ => Err(OpError::DestinationChanged {
                path: dst.to_path_buf(),
            }),
        },
        None => Ok(()),
    }
}

/// Renames `tmp` to `dst`: over `expected` after re-checking it, or only if `dst` does not
/// exist when `expected` is `None`.
fn persist<F>(
    tmp: tempfile::NamedTempFile<F>,
    dst: &Path,
    expected: Option<&Entry>,
) -> Result<F, OpError> {
    replace_check(dst, expected)?;
    let result = if expected.is_some() {
        tmp.persist(dst)
    } else {
        tmp.persist_noclobber(dst)
    };
    match result {
        Ok(f) => Ok(f),
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
            Err(OpError::DestinationChanged {
                path: dst.to_path_buf(),
            })
        }
        Err(e) => Err(OpError::Write {
            path: dst.to_path_buf(),
            source: e.error,
        }),
    }
}

/// What a copy knows of its source's content.
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    /// Hash the bytes while copying them; if a digest is given, a source whose bytes do not
    /// hash to it is not installed.
    Hash(Option<&'a Digest>),
    /// The source, as `entry` (a stamp hashed or cached this pass and not racy), has
    /// `digest`: if it still has that stamp, the bytes are copied by the kernel
    /// (`copy_file_range`, a reflink where the file system offers one) without reading them,
    /// and the copy is installed only if the stamp held throughout (the trust is the hash
    /// cache's). If the stamp moved, the copy hashes what it copies, and with `exact` refuses
    /// content other than `digest`.
    Known {
        /// The stamp the digest belongs to.
        entry: &'a Entry,
        /// The digest.
        digest: Digest,
        /// Only `digest` may be installed.
        exact: bool,
    },
    /// The destination being replaced holds bytes with this digest: hash the source while
    /// copying it, and if its bytes hash to the same, drop the copy and install nothing
    /// ([`Copied::installed`] is false). A large file whose stamp moved is then read once,
    /// not hashed first and copied after.
    Unless(&'a Digest),
}

/// Copies the regular file `src` to `dst` atomically and gives the copy `src`'s permission
/// bits and modification time.
///
/// `dest` says whether `dst` is new (or in a hidden directory) or what the scan saw there,
/// to be replaced.
///
/// Fails, leaving `dst` untouched, if `src` cannot be read or changes during the copy (or no
/// longer has the content the caller expects), if `dst` is no longer what the scan saw, or if
/// writing fails.
pub fn copy_file(
    src: &Path,
    dst: &Path,
    dest: Dest<'_>,
    content: Content<'_>,
) -> Result<Copied, OpError> {
    // Every copy holds a thread; only when one is left over may a copy take a second.
    let in_flight = InFlight::enter();
    let split = in_flight.count < rayon::current_num_threads();
    let mut copy = Started::begin(src, dst, dest)?;
    let (input, size) = (&copy.input, copy.before.size);
    let replaced = copy.dest.replaces();
    // Only a file no one else can open may be hashed from a mapping (see `mapped`).
    let split = match (split, &copy.staged) {
        (false, _) => Split::No,
        (true, Staged::Unnamed(_)) => Split::HashTheCopy,
        (true, _) => Split::HashTheSource,
    };
    let output = copy.staged.file_mut();
    let (digest, expect, held) = match content {
        // Where only some exact bytes may be installed, they are hashed as they are copied,
        // not read a second time beside the copy.
        Content::Hash(expect) => (
            copy_and_hash(
                input,
                output,
                size,
                (src, dst),
                if expect.is_none() { split } else { Split::No },
                replaced,
            )?,
            expect.copied(),
            None,
        ),
        Content::Unless(held) => (
            copy_and_hash(input, output, size, (src, dst), split, replaced)?,
            None,
            Some(*held),
        ),
        Content::Known {
            entry,
            digest,
            exact,
        } => {
            if copy.before.unchanged_since(entry) {
                if size < KERNEL_COPY_FROM {
                    copy_through_buffer(input, output, size, src, dst, None)?;
                } else {
                    io::copy(&mut &*input, output).map_err(write_err(dst))?;
                }
                (digest, None, None)
            } else {
                let split = if exact { Split::No } else { split };
                let copied = copy_and_hash(input, output, size, (src, dst), split, replaced)?;
                (copied, exact.then_some(digest), None)
            }
        }
    };
    copy.finish(digest, expect, held)
}

/// One file to copy with [`copy_pair`]: source, destination, and what the destination is.
pub type PairJob<'a> = (&'a Path, &'a Path, Dest<'a>);

/// Copies two files on the calling thread, each as [`copy_file`] with [`Content::Hash`]`(None)`
/// would, hashing both as they are copied with the two-lane hasher ([`checksum::update_pair`]),
/// which runs two SHA-256 streams in about the time of one. For a first copy of many large
/// files, where every thread has a file of its own to copy anyway, that halves the hashing,
/// which is most of the CPU time.
///
/// Each result is what [`copy_file`] would have returned for that file; a failure of one
/// leaves the other to be copied alone.
pub fn copy_pair(jobs: [PairJob<'_>; 2]) -> [Result<Copied, OpError>; 2] {
    let _in_flight = InFlight::enter();
    let mut lanes = jobs.map(|(src, dst, dest)| {
        Started::begin(src, dst, dest).map(|copy| Lane {
            copy,
            hasher: Hasher::new(),
            buf: vec![0; PAIR_BUF],
            filled: 0,
            written: WriteBehind::default(),
            ended: false,
        })
    });
    loop {
        for lane in &mut lanes {
            if let Ok(l) = lane
                && let Err(e) = l.step()
            {
                *lane = Err(e);
            }
        }
        match &mut lanes {
            [Ok(a), Ok(b)] => {
                checksum::update_pair(
                    [&mut a.hasher, &mut b.hasher],
                    [&a.buf[..a.filled], &b.buf[..b.filled]],
                );
                if a.ended && b.ended {
                    break;
                }
            }
            [Ok(one), Err(_)] | [Err(_), Ok(one)] => {
                one.hasher.update(&one.buf[..one.filled]);
                if one.ended {
                    break;
                }
            }
            [Err(_), Err(_)] => break,
        }
    }
    lanes.map(|lane| {
        let Lane { copy, hasher, .. } = lane?;
        copy.finish(hasher.finish(), None, None)
    })
}

/// Bytes read and written per step of each file of a [`copy_pair`]: the two buffers together
/// stay within a core's L2 cache, where the hash reads what was just copied.
const PAIR_BUF: usize = 256 * 1024;

/// One file of a [`copy_pair`].
struct Lane<'a> {
    copy: Started<'a>,
    hasher: Hasher,
    buf: Vec<u8>,
    /// Bytes of `buf` read by the last step.
    filled: usize,
    written: WriteBehind,
    /// The source has no more bytes.
    ended: bool,
}

impl Lane<'_> {
    /// Reads the next piece of the source (a whole buffer unless it ends; nothing once it has
    /// ended) and writes it.
    fn step(&mut self) -> Result<(), OpError> {
        self.filled = 0;
        while !self.ended && self.filled < self.buf.len() {
            match (&self.copy.input).read(&mut self.buf[self.filled..]) {
                Ok(0) => {
                    self.ended = true;
                    break;
                }
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(OpError::Read {
                        path: self.copy.src.to_path_buf(),
                        source,
                    });
                }
            }
        }
        let output = self.copy.staged.file_mut();
        output
            .write_all(&self.buf[..self.filled])
            .map_err(write_err(self.copy.dst))?;
        self.written.wrote(output, self.filled);
        Ok(())
    }
}

/// A copy under way: the source open, as it was when opened, and the staged destination.
struct Started<'a> {
    src: &'a Path,
    dst: &'a Path,
    dest: Dest<'a>,
    input: File,
    before: Entry,
    staged: Staged,
}

impl<'a> Started<'a> {
    /// Opens `src` (a regular file, or the copy fails as changed) and stages its copy beside
    /// `dst`.
    fn begin(src: &'a Path, dst: &'a Path, dest: Dest<'a>) -> Result<Self, OpError> {
        let read_err = |source| OpError::Read {
            path: src.to_path_buf(),
            source,
        };
        let input = open_source(src).map_err(read_err)?;
        let before = entry_of(&input.metadata().map_err(read_err)?, None);
        if before.kind != Kind::File {
            return Err(OpError::SourceChanged {
                path: src.to_path_buf(),
            });
        }
        let staged = Staged::new(dst, dest, before.mode).map_err(write_err(dst))?;
        Ok(Started {
            src,
            dst,
            dest,
            input,
            before,
            staged,
        })
    }

    /// Ends a copy whose bytes hash to `digest`: checks that the source held still (and, with
    /// `expect`, had those bytes), then installs the copy with the source's mode and time; or,
    /// if the destination already `held` the same bytes, drops it.
    fn finish(
        mut self,
        digest: Digest,
        expect: Option<Digest>,
        held: Option<Digest>,
    ) -> Result<Copied, OpError> {
        let (src, dst) = (self.src, self.dst);
        let after = self.input.metadata().map_err(|source| OpError::Read {
            path: src.to_path_buf(),
            source,
        })?;
        let after = entry_of(&after, None);
        if !after.unchanged_since(&self.before) || expect.is_some_and(|c| c != digest) {
            return Err(OpError::SourceChanged {
                path: src.to_path_buf(),
            });
        }
        if let (Some(held), Some(there)) = (held, self.dest.replaces())
            && held == digest
        {
            // Dropping the staged copy discards it: an unnamed file vanishes, a named one is
            // removed.
            return Ok(Copied {
                digest,
                source: self.before,
                destination: there.clone(),
                installed: false,
            });
        }
        let mode = fs::Permissions::from_mode(self.before.mode);
        let created_with_mode = matches!(self.staged, Staged::Hidden(..));
        let file = self.staged.file_mut();
        if !created_with_mode {
            file.set_permissions(mode.clone()).map_err(write_err(dst))?;
        }
        filetime::set_file_handle_times(file, None, Some(self.before.mtime.to_filetime()))
            .map_err(write_err(dst))?;
        // No fsync per file: the pass flushes its whole file system once at its end (see
        // `flush_fs`), before it records anything that relies on the data being on disk.
        let dir = dst.parent().unwrap_or(Path::new("."));
        let file = self.staged.install(dir, dst, self.dest.replaces())?;
        // fstat of the file still open: its stamp after the rename, without a path lookup.
        let mut destination = entry_of(&file.metadata().map_err(write_err(dst))?, None);
        if destination.mode != self.before.mode {
            // Created with its mode, which the umask (or a default ACL) cut down.
            file.set_permissions(mode).map_err(write_err(dst))?;
            destination = entry_of(&file.metadata().map_err(write_err(dst))?, None);
        }
        Ok(Copied {
            digest,
            source: self.before,
            destination,
            installed: true,
        })
    }
}

/// Files from this size on are copied by the kernel (`copy_file_range`, which `io::copy`
/// uses between files); below it, one read and one write cost less than its setup.
const KERNEL_COPY_FROM: u64 = 1024 * 1024;

/// How much of a file is copied before the disk is asked to start on it (see
/// [`start_writeback`]).
const WRITE_BEHIND: u64 = 16 * 1024 * 1024;

/// Copies `input` to `output` through one buffer, feeding the bytes to `hasher` if given.
fn copy_through_buffer(
    mut input: &File,
    output: &mut File,
    size_hint: u64,
    src: &Path,
    dst: &Path,
    mut hasher: Option<&mut Sha256>,
) -> Result<(), OpError> {
    // A small file gets a buffer its size (plus the byte that shows the end): a pass over
    // thousands of them should not allocate a large one each time.
    let cap = (size_hint as usize)
        .saturating_add(1)
        .clamp(4096, 256 * 1024);
    let mut buf = vec![0u8; cap];
    let mut written = WriteBehind::default();
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(OpError::Read {
                    path: src.to_path_buf(),
                    source,
                });
            }
        };
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&buf[..n]);
        }
        output.write_all(&buf[..n]).map_err(write_err(dst))?;
        written.wrote(output, n);
        total += n as u64;
        // All the bytes the open file's stamp said, and less than asked for: the read that
        // would return 0 is saved (one system call per small file). Had the file grown since,
        // the stamp check after the copy finds it.
        if n < buf.len() && total == size_hint {
            return Ok(());
        }
    }
}

/// How much of a copy was written, and how much of that the disk was asked to start on.
#[derive(Default)]
struct WriteBehind {
    written: u64,
    started: u64,
}

impl WriteBehind {
    /// Notes `n` more bytes written to `file`; every [`WRITE_BEHIND`] bytes, asks the disk to
    /// start on those not yet started.
    fn wrote(&mut self, file: &File, n: usize) {
        self.written += n as u64;
        if self.written - self.started >= WRITE_BEHIND {
            start_writeback(file, self.started, self.written - self.started);
            self.started = self.written;
        }
    }
}

/// Files from this size on are hashed on one thread while the kernel copies them on another
/// (when a thread is free): the hash, which no core can speed up, then hides the copy.
pub(crate) const PARALLEL_HASH_FROM: u64 = 8 * 1024 * 1024;

/// Whether a large copy takes a second thread (see [`copy_and_hash`]), and what that thread
/// hashes.
#[derive(Clone, Copy)]
enum Split {
    /// One thread copies and hashes.
    No,
    /// The kernel copies while another thread hashes the source as read.
    HashTheSource,
    /// The kernel copies while another thread hashes the copy from a mapping of it, which
    /// only a file no one else can open allows (see [`crate::tree::mapped`]).
    HashTheCopy,
}

/// Copies `input` to `output` and returns the SHA-256 of the bytes read.
///
/// Split, a large file is hashed on one thread while the kernel copies it on another. Reading
/// the source, the hash reads the file a second time beside the copy: the digest is then of
/// the bytes copied as far as the file's stamp, checked before and after every copy, can
/// tell. Mapping the copy, the digest is of exactly the bytes copied. The kernel's copy ends
/// long before the hash, and its thread then drops the cached pages of the file being
/// `replaced` (see [`drop_cached`]).
fn copy_and_hash(
    input: &File,
    output: &mut File,
    size_hint: u64,
    (src, dst): (&Path, &Path),
    split: Split,
    replaced: Option<&Entry>,
) -> Result<Digest, OpError> {
    let read_err = |source| OpError::Read {
        path: src.to_path_buf(),
        source,
    };
    let after_copy = || {
        if let Some(seen) = replaced {
            drop_cached(dst, seen);
        }
    };
    match split {
        Split::HashTheCopy if size_hint >= PARALLEL_HASH_FROM => {
            let (copied, hashed) =
                crate::tree::mapped::copy_hashing_the_copy(input, output, after_copy);
            copied.map_err(write_err(dst))?;
            return hashed.map_err(write_err(dst));
        }
        Split::HashTheSource if size_hint >= PARALLEL_HASH_FROM => {
            let (hashed, copied) = rayon::join(
                || checksum::digest_reader(PositionalReader { file: input, at: 0 }),
                || {
                    let copied = io::copy(&mut &*input, output);
                    if copied.is_ok() {
                        after_copy();
                    }
                    copied
                },
            );
            copied.map_err(write_err(dst))?;
            return hashed.map_err(read_err);
        }
        _ => {}
    }
    let mut hasher = Sha256::new();
    copy_through_buffer(input, output, size_hint, src, dst, Some(&mut hasher))?;
    Ok(hasher.finalize().into())
}

/// Drops the cached pages of the file at `path` if it is still the one the scan saw (`seen`).
///
/// The rename that replaces a file frees its cached pages, which for a large file held in the
/// page cache costs 15–27 ms (256 MiB) on the critical path of a pass; a thread that is done
/// with its share of a copy frees them beforehand instead. Clean pages only: a file being
/// written keeps its own. A failure changes only the timing.
fn drop_cached(path: &Path, seen: &Entry) {
    let Ok(file) = open_source(path) else { return };
    let same = file
        .metadata()
        .is_ok_and(|m| entry_of(&m, None).unchanged_since(seen));
    if same {
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
    }
}

/// Counts the copies running at once, so that a copy splits itself only when a thread
/// is free (splitting on a busy pool reads each file twice for nothing).
struct InFlight {
    count: usize,
}

static COPIES_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl InFlight {
    fn enter() -> InFlight {
        use std::sync::atomic::Ordering;
        InFlight {
            count: COPIES_IN_FLIGHT.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        COPIES_IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads a file from `at` on with `pread`, leaving the file position to a concurrent copy.
struct PositionalReader<'a> {
    file: &'a File,
    at: u64,
}

impl Read for PositionalReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Creates (or, as `dest` says, replaces) a symbolic link at `dst` pointing to `target`, with
/// modification time `mtime`, atomically.
///
/// Fails, leaving `dst` untouched, if `dst` is no longer what the scan saw or writing fails.
pub fn symlink(
    target: &Path,
    dst: &Path,
    dest: Dest<'_>,
    mtime: Timestamp,
) -> Result<Entry, OpError> {
    let ft = mtime.to_filetime();
    if let Dest::Hidden = dest {
        std::os::unix::fs::symlink(target, dst).map_err(write_err(dst))?;
        let mut made = RemoveOnDrop(Some(dst.to_path_buf()));
        filetime::set_symlink_file_times(dst, ft, ft).map_err(write_err(dst))?;
        let entry = stat(dst).map_err(write_err(dst))?;
        made.0 = None;
        return Ok(entry);
    }
    let dir = dst.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .make_in(dir, |path| {
            note_temp_name(path);
            std::os::unix::fs::symlink(target, path)
        })
        .map_err(write_err(dst))?;
    filetime::set_symlink_file_times(tmp.path(), ft, ft).map_err(write_err(dst))?;
    persist(tmp, dst, dest.replaces())?;
    stat(dst).map_err(write_err(dst))
}

/// Removes the file, link or empty directory at `path` if it is still what the scan saw.
///
/// Fails if it changed, or if removal fails (a directory that is not empty stays).
pub fn remove(path: &Path, seen: &Entry) -> Result<(), OpError> {
    let now = stat(path).map_err(write_err(path))?;
    // A directory's times move whenever its children are removed, so only its identity is
    // checked; `remove_dir` itself refuses anything but an empty one.
    let same = if seen.is_dir() {
        now.is_dir() && now.ino == seen.ino
    } else {
        now.unchanged_since(seen)
    };
    if !same {
        return Err(OpError::DestinationChanged {
            path: path.to_path_buf(),
        });
    }
    if seen.is_dir() {
        fs::remove_dir(path)
    } else {
        fs::remove_file(path)
    }
    .map_err(write_err(path))
}

/// Sets the permission bits and modification time of the file or link at `path`, if it is
/// still what the scan saw.
///
/// Fails if it changed or the change is refused.
pub fn set_metadata(
    path: &Path,
    seen: &Entry,
    mode: u32,
    mtime: Timestamp,
) -> Result<Entry, OpError> {
    let now = stat(path).map_err(write_err(path))?;
    if !now.unchanged_since(seen) {
        return Err(OpError::DestinationChanged {
            path: path.to_path_buf(),
        });
    }
    if let Kind::Symlink(_) = now.kind {
        let ft = mtime.to_filetime();
        filetime::set_symlink_file_times(path, ft, ft).map_err(write_err(path))?;
    } else {
        if now.mode != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(write_err(path))?;
        }
        // `now` is not a link (checked above), so following the path is safe here.
        filetime::set_file_mtime(path, mtime.to_filetime()).map_err(write_err(path))?;
    }
    stat(path).map_err(write_err(path))
}

/// Gives the directory at `path` its final mode and modification time, once its content is
/// in place (filling it moves its mtime, and a read-only mode would have blocked filling it).
///
/// Fails if it is no longer a directory or the change is refused.
pub fn finish_dir(path: &Path, mode: u32, mtime: Timestamp) -> Result<(), OpError> {
    set_dir_mode(path, mode)?;
    // A directory (checked just above): following the path is safe here.
    filetime::set_file_mtime(path, mtime.to_filetime()).map_err(write_err(path))
}

/// Creates the directory `path`, owner-writable for now: its real mode is set once its
/// content is in place, or a read-only directory could not be filled.
///
/// Fails if it exists or cannot be created.
pub fn create_dir(path: &Path) -> Result<(), OpError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(write_err(path))
}

/// Creates a hidden directory in `parent`, under a temporary name of ours, where a whole new
/// directory is built (its entries written with [`Dest::Hidden`]) before [`publish_dir`] gives
/// it its name. A kill before then leaves only that temporary directory, which the next pass
/// removes, never a half-written file under a real name.
///
/// Fails if the directory cannot be created.
pub fn stage_dir(parent: &Path) -> Result<PathBuf, OpError> {
    let dir = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .make_in(parent, |path| {
            note_temp_name(path);
            fs::DirBuilder::new().mode(0o700).create(path)
        })
        .map_err(write_err(parent))?;
    // Kept: from now on it is the caller's, to publish or to leave for the next pass.
    dir.into_temp_path().keep().map_err(|e| OpError::Write {
        path: parent.to_path_buf(),
        source: e.error,
    })
}

/// Gives the hidden directory `staged` (made by [`stage_dir`]) its name `to`, if `to` does
/// not exist (the check and the rename are one atomic step).
///
/// Fails, leaving `staged` where it is, if `to` exists or the rename fails.
pub fn publish_dir(staged: &Path, to: &Path) -> Result<(), OpError> {
    rename_new(staged, to)
}

/// Makes the directory `path` writable by its owner, so entries can be added or removed in
/// it; its recorded mode is restored at the end of the pass.
///
/// Fails if the mode cannot be changed.
pub fn make_writable(path: &Path, mode: u32) -> Result<(), OpError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700)).map_err(write_err(path))
}

/// Hard-links the regular file `existing` to the new name `dst`, if it still has `size` and
/// `mtime` (linking moves a file's change time, so that is not compared).
///
/// Fails if `existing` is no longer such a file, or the link cannot be made (a file system
/// without hard links, a file with as many links as it may have).
pub fn hard_link(existing: &Path, size: u64, mtime: Timestamp, dst: &Path) -> Result<(), OpError> {
    match stat(existing) {
        Ok(e) if e.kind == Kind::File && e.size == size && e.mtime == mtime => {
            fs::hard_link(existing, dst).map_err(write_err(dst))
        }
        _ => Err(OpError::SourceChanged {
            path: existing.to_path_buf(),
        }),
    }
}

/// Moves `from` to `to` in the same directory tree, if `from` is still what the scan saw and
/// `to` does not exist (the check and the rename are one atomic step).
///
/// Fails, moving nothing, if `from` changed, `to` exists, or the rename fails.
pub fn rename_noreplace(from: &Path, to: &Path, seen: &Entry) -> Result<(), OpError> {
    match stat(from) {
        Ok(now) if now.unchanged_since(seen) => {}
        _ => {
            return Err(OpError::DestinationChanged {
                path: from.to_path_buf(),
            });
        }
    }
    rename_new(from, to)
}

/// Renames `from` to `to` if `to` does not exist, atomically.
fn rename_new(from: &Path, to: &Path) -> Result<(), OpError> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(|e| {
        let source = io::Error::from(e);
        if source.kind() == io::ErrorKind::AlreadyExists {
            OpError::DestinationChanged {
                path: to.to_path_buf(),
            }
        } else {
            OpError::Write {
                path: to.to_path_buf(),
                source,
            }
        }
    })
}

/// Sets the permission bits of the directory at `path`, if it is still a directory.
///
/// Fails if it is not, or the change is refused.
pub fn set_dir_mode(path: &Path, mode: u32) -> Result<(), OpError> {
    match stat(path) {
        Ok(now) if now.is_dir() => {
            if now.mode != mode {
                fs::set_permissions(path, fs::Permissions::from_mode(mode))
                    .map_err(write_err(path))?;
            }
            Ok(())
        }
        _ => Err(OpError::DestinationChanged {
            path: path.to_path_buf(),
        }),
    }
}

/// Checks that every directory between `root` and `rel`'s parent is still a real directory,
/// not a link: a directory swapped for a symlink after the scan must never be written through
/// (the new entry would land outside the tree). Called right before creating anything.
///
/// Fails with [`OpError::DestinationChanged`] naming the first ancestor that is not a
/// directory.
pub fn check_parents(root: &Path, rel: &Path) -> Result<(), OpError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut path = root.to_path_buf();
    for part in parent.components() {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_dir() => {}
            _ => return Err(OpError::DestinationChanged { path }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> Digest {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn unnamed_files_get_their_name_either_way_and_never_over_another() {
        let dir = tempfile::tempdir().unwrap();
        type Link = fn(&File, &Path) -> io::Result<()>;
        let ways: [(&str, Link); 3] = [
            ("descriptor", link_by_descriptor),
            ("proc", link_through_proc),
            ("either", link_unnamed),
        ];
        for (way, link) in ways {
            let mut staged = Staged::new(&dir.path().join("unused"), Dest::New, 0o600).unwrap();
            staged.file_mut().write_all(way.as_bytes()).unwrap();
            let Staged::Unnamed(file) = staged else {
                panic!("no O_TMPFILE here: the unnamed path is not tested");
            };
            let name = dir.path().join(way);
            link(&file, &name).unwrap();
            assert_eq!(fs::read_to_string(&name).unwrap(), way);
            // A name that exists is never replaced.
            let taken = dir.path().join("descriptor");
            let err = link(&file, &taken).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{way}");
            assert_eq!(fs::read_to_string(&taken).unwrap(), "descriptor");
        }
    }

    #[test]
    fn a_hidden_directory_is_filled_under_final_names_and_appears_whole_only_where_free() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.txt");
        fs::write(&src, b"content").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
        let mtime = filetime::FileTime::from_unix_time(1_000_000, 5);
        filetime::set_file_mtime(&src, mtime).unwrap();
        let hidden = stage_dir(dir.path()).unwrap();
        assert!(
            crate::tree::temp::is_temp_name(hidden.file_name().unwrap()),
            "{hidden:?}"
        );
        let dst = hidden.join("copy.txt");

        // A copy refused after its bytes were written takes them away with it.
        let wrong = [0; 32];
        let refused = copy_file(&src, &dst, Dest::Hidden, Content::Hash(Some(&wrong)));
        assert!(
            matches!(refused, Err(OpError::SourceChanged { .. })),
            "{refused:?}"
        );
        assert!(
            fs::symlink_metadata(&dst).is_err(),
            "a refused copy left a file"
        );

        let copied = copy_file(&src, &dst, Dest::Hidden, Content::Hash(None)).unwrap();
        assert_eq!(copied.digest, sha(b"content"));
        assert_eq!(fs::read(&dst).unwrap(), b"content");
        let now = stat(&dst).unwrap();
        assert_eq!((now.mode, now.mtime.to_filetime()), (0o640, mtime));
        assert!(now.unchanged_since(&copied.destination));
        // A name already taken, even in a hidden directory, is never written over.
        fs::write(&src, b"other").unwrap();
        let taken = copy_file(&src, &dst, Dest::Hidden, Content::Hash(None));
        assert!(matches!(taken, Err(OpError::Write { .. })), "{taken:?}");
        assert_eq!(fs::read(&dst).unwrap(), b"content");
        let link = symlink(
            Path::new("copy.txt"),
            &hidden.join("link"),
            Dest::Hidden,
            now.mtime,
        );
        assert_eq!(link.unwrap().mtime, now.mtime);

        // Published only where the name is free; else it stays where it was.
        let to = dir.path().join("published");
        fs::create_dir(&to).unwrap();
        let refused = publish_dir(&hidden, &to);
        assert!(
            matches!(refused, Err(OpError::DestinationChanged { .. })),
            "{refused:?}"
        );
        assert!(hidden.join("copy.txt").exists());
        fs::remove_dir(&to).unwrap();
        publish_dir(&hidden, &to).unwrap();
        assert_eq!(fs::read(to.join("copy.txt")).unwrap(), b"content");
        assert_eq!(
            fs::read_link(to.join("link")).unwrap(),
            Path::new("copy.txt")
        );
        assert!(!hidden.exists());
    }

    #[test]
    fn a_source_that_changes_while_it_is_copied_is_not_installed() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        // Another size, and the same size with the old mtime put back (its change time moves).
        let rewrites: [&dyn Fn(); 2] = [
            &|| fs::write(&src, b"the second version, longer").unwrap(),
            &|| {
                let mtime =
                    filetime::FileTime::from_last_modification_time(&fs::metadata(&src).unwrap());
                std::thread::sleep(std::time::Duration::from_millis(50));
                fs::write(&src, b"FIRST").unwrap();
                filetime::set_file_mtime(&src, mtime).unwrap();
            },
        ];
        for (case, rewrite) in rewrites.iter().enumerate() {
            fs::write(&src, b"first").unwrap();
            let mut copy = Started::begin(&src, &dst, Dest::New).unwrap();
            // Opened and looked at; rewritten before its bytes are read.
            rewrite();
            let size = copy.before.size;
            let digest = copy_and_hash(
                &copy.input,
                copy.staged.file_mut(),
                size,
                (&src, &dst),
                Split::No,
                None,
            )
            .unwrap();
            let refused = copy.finish(digest, None, None);
            assert!(
                matches!(refused, Err(OpError::SourceChanged { .. })),
                "case {case}: {refused:?}"
            );
            assert!(!dst.exists(), "case {case}: installed");
        }
    }

    #[test]
    fn a_copy_the_disk_is_asked_to_start_on_is_whole_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        // Two pieces started early and a tail left to the flush; no 4 KiB block like the next.
        let size = 2 * WRITE_BEHIND + 12_345;
        let data: Vec<u8> = (0..size)
            .map(|i| ((i >> 12).wrapping_mul(31) ^ i) as u8)
            .collect();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        fs::write(&src, &data).unwrap();
        let input = File::open(&src).unwrap();
        let mut output = File::create_new(&dst).unwrap();
        let mut hasher = Sha256::new();
        copy_through_buffer(&input, &mut output, size, &src, &dst, Some(&mut hasher)).unwrap();
        drop(output);
        assert_eq!(
            Digest::from(hasher.finalize()),
            Digest::from(Sha256::digest(&data))
        );
        assert!(fs::read(&dst).unwrap() == data, "the copy differs");
    }

    /// Bytes that differ between `seed`s and from one 4 KiB block to the next.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| ((i >> 12) as u8).wrapping_mul(31) ^ (i as u8) ^ seed)
            .collect()
    }

    #[test]
    fn a_pair_is_copied_whole_and_hashed_as_each_file_alone_would_be() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        // Uneven lengths: one ends in its last buffer, the other steps on alone after it, and
        // neither is a whole number of hash blocks or buffers. Then one empty file.
        for (la, lb) in [
            (PAIR_BUF + 100, 3 * PAIR_BUF + 77),
            (2 * PAIR_BUF, 2 * PAIR_BUF + 1),
            (0, 1000),
        ] {
            let (da, db) = (pattern(la, 1), pattern(lb, 2));
            fs::write(path("a"), &da).unwrap();
            fs::write(path("b"), &db).unwrap();
            fs::set_permissions(path("b"), fs::Permissions::from_mode(0o600)).unwrap();
            filetime::set_file_mtime(path("a"), filetime::FileTime::from_unix_time(1_000, 7))
                .unwrap();
            // "b" replaces a file that was there.
            fs::write(path("b2"), b"old").unwrap();
            let old = stat(&path("b2")).unwrap();
            let _ = fs::remove_file(path("a2"));
            let [ra, rb] = copy_pair([
                (&path("a"), &path("a2"), Dest::New),
                (&path("b"), &path("b2"), Dest::Replace(&old)),
            ]);
            let (ca, cb) = (ra.unwrap(), rb.unwrap());
            assert_eq!(
                (ca.digest, cb.digest),
                (sha(&da), sha(&db)),
                "{la} and {lb}"
            );
            assert!(ca.installed && cb.installed);
            assert!(
                fs::read(path("a2")).unwrap() == da,
                "a's copy differs ({la})"
            );
            assert!(
                fs::read(path("b2")).unwrap() == db,
                "b's copy differs ({lb})"
            );
            let a2 = stat(&path("a2")).unwrap();
            assert_eq!(a2.mtime, ca.source.mtime);
            assert_eq!(stat(&path("b2")).unwrap().mode & 0o7777, 0o600);
            assert!(a2.unchanged_since(&ca.destination));
        }
    }

    #[test]
    fn a_pair_whose_one_file_fails_copies_the_other_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let data = pattern(2 * PAIR_BUF + 5, 3);
        fs::write(path("good"), &data).unwrap();
        // A missing source, on either side.
        let (good, good2) = (path("good"), path("good2"));
        let (gone, gone2) = (path("gone"), path("gone2"));
        for missing_first in [true, false] {
            let _ = fs::remove_file(&good2);
            let mut jobs = [(&*good, &*good2, Dest::New), (&*gone, &*gone2, Dest::New)];
            if missing_first {
                jobs.reverse();
            }
            let mut results = copy_pair(jobs);
            if missing_first {
                results.reverse();
            }
            let [ok, bad] = results;
            assert!(matches!(bad, Err(OpError::Read { .. })), "{bad:?}");
            assert_eq!(ok.unwrap().digest, sha(&data));
            assert!(fs::read(&good2).unwrap() == data);
            assert!(!gone2.exists());
        }
        // A destination that appeared since the scan is left alone; the other is copied.
        fs::write(path("taken"), b"someone else's").unwrap();
        let _ = fs::remove_file(path("good2"));
        let [taken, ok] = copy_pair([
            (&path("good"), &path("taken"), Dest::New),
            (&path("good"), &path("good2"), Dest::New),
        ]);
        assert!(matches!(taken, Err(OpError::DestinationChanged { .. })));
        assert_eq!(fs::read(path("taken")).unwrap(), b"someone else's");
        assert_eq!(ok.unwrap().digest, sha(&data));
    }
}
