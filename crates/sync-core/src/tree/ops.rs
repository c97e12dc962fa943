//! The safe file operations of SPEC §7, on entries named through the directory that holds
//! them ([`Place`]): every replacement goes through a temporary file in the same directory
//! (written, flushed, renamed), and nothing is replaced or removed without first checking
//! that it is still what the scan saw. A new directory may instead be built whole under a
//! temporary name and then renamed into place ([`stage_dir`], [`Dest::Hidden`],
//! [`publish_dir`]). Modes and times are set on a descriptor of the very object checked.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use checksum::{Digest, Hasher};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, SeekFrom, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use rustix::fs::FileType;

use crate::model::{Entry, Kind, LinkFrom, Meta, NOT_CARRIED, Node, Timestamp};
use crate::tree::at::{self, Place, entry_of, entry_of_file, have_proc, proc_path};
use crate::tree::flush::start_writeback;
use crate::tree::meta::{self, Handle, Xattrs};
use crate::tree::temp::create_temp;

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

fn write_err<E: Into<io::Error>>(path: &Path) -> impl FnOnce(E) -> OpError + '_ {
    move |source| OpError::Write {
        path: path.to_path_buf(),
        source: source.into(),
    }
}

/// A rename or link that would not go over an existing name, failed: that name was taken
/// since the scan.
fn taken_or_write(path: &Path) -> impl FnOnce(io::Error) -> OpError + '_ {
    move |source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            OpError::DestinationChanged {
                path: path.to_path_buf(),
            }
        } else {
            OpError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
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

/// A name we made in a directory, removed again when dropped unless disarmed: a temporary
/// file that was not renamed into place, or a partial file in a hidden directory.
struct Made<'a> {
    dir: BorrowedFd<'a>,
    name: std::ffi::OsString,
    armed: bool,
}

impl<'a> Made<'a> {
    fn new(dir: BorrowedFd<'a>, name: std::ffi::OsString) -> Made<'a> {
        Made {
            dir,
            name,
            armed: true,
        }
    }
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Should this fail, a partial file stays in a hidden directory: the caller looks
            // for it and then does not publish the directory (see `Dest::Hidden`).
            let _ = rustix::fs::unlinkat(self.dir, &self.name, AtFlags::empty());
        }
    }
}

/// A file being written before it gets its final name. Where the file system allows, it has
/// no name at all until it is complete (`O_TMPFILE`): a kill then leaves nothing behind. Else
/// it is a temporary file `.oneway-tmp-XXXXXX` beside its final name. In a hidden directory
/// ([`Dest::Hidden`]) it has its final name from the start.
enum Staged<'a> {
    Unnamed(File),
    Named(File, Made<'a>),
    Hidden(File, Made<'a>),
}

impl<'a> Staged<'a> {
    /// Stages the copy to `dst` of a file whose permission bits are `mode`.
    fn new(dst: &'a Place, dest: Dest<'_>, mode: u32) -> io::Result<Staged<'a>> {
        let create = OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if let Dest::Hidden = dest {
            // A plain create: no unnamed inode to link later, which costs about as much again
            // as creating the file (the first copy of a tree of small files is mostly this).
            // Created with its final mode (no one else can enter the directory yet), which
            // saves a chmod unless the umask or a default ACL takes bits away.
            let fd = rustix::fs::openat(
                dst.dir(),
                &dst.name,
                create | OFlags::WRONLY,
                Mode::from_raw_mode(mode & 0o777),
            )?;
            return Ok(Staged::Hidden(
                File::from(fd),
                Made::new(dst.dir(), dst.name.clone()),
            ));
        }
        // Naming an unnamed file may have to go through /proc/self/fd (see `link_unnamed`).
        // Where O_TMPFILE is not supported by the file system (or kernel): a named file.
        if have_proc()
            && let Ok(fd) = rustix::fs::openat(
                dst.dir(),
                c".",
                OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        {
            return Ok(Staged::Unnamed(File::from(fd)));
        }
        let (name, fd) = create_temp(shown_dir(dst), |name| {
            let flags = create | OFlags::RDWR;
            Ok(rustix::fs::openat(
                dst.dir(),
                name,
                flags,
                Mode::from_raw_mode(0o600),
            )?)
        })?;
        Ok(Staged::Named(File::from(fd), Made::new(dst.dir(), name)))
    }

    fn file_mut(&mut self) -> &mut File {
        match self {
            Staged::Unnamed(f) | Staged::Named(f, _) | Staged::Hidden(f, _) => f,
        }
    }

    /// Gives the complete file its final name at `dst`: over `expected` after re-checking it,
    /// or only if the name is free when `expected` is `None`. A hidden file has it already.
    fn install(self, dst: &Place, expected: Option<&Entry>) -> Result<File, OpError> {
        match self {
            Staged::Hidden(file, mut made) => {
                made.armed = false;
                Ok(file)
            }
            Staged::Named(file, made) => {
                persist(made, dst, expected)?;
                Ok(file)
            }
            Staged::Unnamed(file) => {
                match expected {
                    // A new name: linking fails if it exists, so nothing is ever overwritten.
                    None => link_unnamed(&file, dst.dir(), &dst.name)
                        .map_err(taken_or_write(&dst.shown))?,
                    // A replacement needs a rename over the old file: a name for an instant.
                    Some(_) => {
                        let (name, ()) = create_temp(shown_dir(dst), |name| {
                            link_unnamed(&file, dst.dir(), name)
                        })
                        .map_err(write_err(&dst.shown))?;
                        persist(Made::new(dst.dir(), name), dst, expected)?;
                    }
                }
                Ok(file)
            }
        }
    }
}

/// The directory of `place`, for messages and the journal of temporary names.
fn shown_dir(place: &Place) -> &Path {
    place.shown.parent().unwrap_or(Path::new(""))
}

/// False once linking a file by its descriptor alone (`AT_EMPTY_PATH`: before Linux 6.10 only
/// with `CAP_DAC_READ_SEARCH`) was refused while linking it through /proc worked.
static LINK_BY_DESCRIPTOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Gives the open file `file` the name `name` in `dir`; fails if the name exists.
fn link_unnamed(file: &impl AsFd, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    use std::sync::atomic::Ordering;
    // By descriptor where allowed: the /proc path costs a lookup of four names per file. Any
    // failure is tried again through /proc, which tells a refusal of the descriptor (ENOENT
    // on older kernels, as for a missing directory; whatever a security module says) from a
    // fault of the destination, and gives the error to report.
    let by_descriptor = LINK_BY_DESCRIPTOR.load(Ordering::Relaxed);
    if by_descriptor && link_by_descriptor(file, dir, name).is_ok() {
        return Ok(());
    }
    link_through_proc(file, dir, name)?;
    if by_descriptor {
        LINK_BY_DESCRIPTOR.store(false, Ordering::Relaxed);
    }
    Ok(())
}

fn link_by_descriptor(file: &impl AsFd, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        file,
        c"",
        dir,
        name,
        AtFlags::EMPTY_PATH,
    )?)
}

fn link_through_proc(file: &impl AsFd, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let fd_path = proc_path(&file.as_fd());
    Ok(rustix::fs::linkat(
        rustix::fs::CWD,
        fd_path.as_str(),
        dir,
        name,
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
    /// The copy read and hashed the bytes (false where a digest known before let them be
    /// copied unread, [`Content::Known`]): what a pass counts as a file hashed.
    pub hashed: bool,
}

/// A file to copy: opened beneath its tree's root (see `at::open_file`), with what the scan
/// saw there and where it is, for messages.
pub struct Source<'a> {
    /// The open file.
    pub file: File,
    /// What the scan saw at its name: a file opened there that is another object is not
    /// copied.
    pub seen: Option<&'a Entry>,
    /// Where it is, for messages.
    pub shown: PathBuf,
}

fn replace_check(dst: &Place, expected: Option<&Entry>) -> Result<(), OpError> {
    match expected {
        Some(seen) => match dst.stat() {
            Ok(now) if now.unchanged_since(seen) => Ok(()),
            _ => Err(OpError::DestinationChanged {
                path: dst.shown.clone(),
            }),
        },
        None => Ok(()),
    }
}

/// Renames what we `made` to `dst`: over `expected` after re-checking it, or only if the
/// name is free when `expected` is `None`.
fn persist(mut made: Made<'_>, dst: &Place, expected: Option<&Entry>) -> Result<(), OpError> {
    replace_check(dst, expected)?;
    let flags = if expected.is_some() {
        RenameFlags::empty()
    } else {
        RenameFlags::NOREPLACE
    };
    rustix::fs::renameat_with(made.dir, &made.name, dst.dir(), &dst.name, flags)
        .map_err(|e| taken_or_write(&dst.shown)(e.into()))?;
    made.armed = false;
    Ok(())
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
/// bits (less a setuid or setgid bit it may not keep, see `at::grantable`) and
/// modification time.
///
/// `dest` says whether `dst` is new (or in a hidden directory) or what the scan saw there,
/// to be replaced.
///
/// Fails, leaving `dst` untouched, if `src` cannot be read, is not the file the scan saw, or
/// changes during the copy (or no longer has the content the caller expects), if `dst` is no
/// longer what the scan saw, or if writing fails.
pub fn copy_file(
    src: Source<'_>,
    dst: &Place,
    dest: Dest<'_>,
    content: Content<'_>,
) -> Result<Copied, OpError> {
    // Every copy holds a thread; only when one is left over may a copy take a second.
    let in_flight = InFlight::enter();
    let split = in_flight.count < rayon::current_num_threads();
    copy_started(Started::begin(src, dst, dest)?, content, split)
}

/// Copies the source of `copy` as [`copy_file`] does, taking a second thread for a large
/// file if `split` allows.
fn copy_started(
    mut copy: Started<'_>,
    content: Content<'_>,
    split: bool,
) -> Result<Copied, OpError> {
    let (input, size) = (&copy.input, copy.before.size);
    let (src, to) = (&*copy.src, copy.dst);
    let dst = &*to.shown;
    let replaced = copy.dest.replaces();
    // Only a file no one else can open may be hashed from a mapping (see `mapped`).
    let split = match (split, &copy.staged) {
        (false, _) => Split::No,
        (true, Staged::Unnamed(_)) => Split::HashTheCopy,
        (true, _) => Split::HashTheSource,
    };
    let holes = copy.holes;
    let output = copy.staged.file_mut();
    // A file with holes is copied a run of data at a time, and keeps its holes.
    let hash = |output: &mut File, split: Split| -> Result<Digest, OpError> {
        if holes {
            let mut hasher = Sha256::new();
            copy_sparse(input, output, size, (src, dst), Some(&mut hasher))?;
            Ok(hasher.finalize().into())
        } else {
            copy_and_hash(input, output, size, (src, to), split, replaced)
        }
    };
    // Whether the bytes are read and hashed (the caller counts the files hashed).
    let mut hashed = true;
    let (digest, expect, held) = match content {
        // Where only some exact bytes may be installed, they are hashed as they are copied,
        // not read a second time beside the copy.
        Content::Hash(expect) => (
            hash(output, if expect.is_none() { split } else { Split::No })?,
            expect.copied(),
            None,
        ),
        Content::Unless(held) => (hash(output, split)?, None, Some(*held)),
        Content::Known {
            entry,
            digest,
            exact,
        } => {
            if copy.before.unchanged_since(entry) {
                if holes {
                    copy_sparse(input, output, size, (src, dst), None)?;
                } else if size < KERNEL_COPY_FROM {
                    copy_through_buffer(input, output, size, src, dst, None)?;
                } else {
                    let copied = io::copy(&mut input.take(size + 1), output);
                    if copied.map_err(write_err(dst))? > size {
                        return Err(OpError::SourceChanged {
                            path: src.to_path_buf(),
                        });
                    }
                }
                hashed = false;
                (digest, None, None)
            } else {
                let split = if exact { Split::No } else { split };
                (hash(output, split)?, exact.then_some(digest), None)
            }
        }
    };
    copy.finish(digest, expect, held)
        .map(|copied| Copied { hashed, ..copied })
}

/// One file to copy with [`copy_pair`]: source, destination, and what the destination is.
pub type PairJob<'a> = (Source<'a>, &'a Place, Dest<'a>);

/// Copies two files on the calling thread, each as [`copy_file`] with [`Content::Hash`]`(None)`
/// would, hashing both as they are copied with the two-lane hasher ([`checksum::update_pair`]),
/// which runs two SHA-256 streams in about the time of one. For a first copy of many large
/// files, where every thread has a file of its own to copy anyway, that halves the hashing,
/// which is most of the CPU time.
///
/// Each result is what [`copy_file`] would have returned for that file; a failure of one
/// leaves the other to be copied alone. A file with holes makes both go alone, one after the
/// other (see `copy_sparse`).
pub fn copy_pair(jobs: [PairJob<'_>; 2]) -> [Result<Copied, OpError>; 2] {
    let in_flight = InFlight::enter();
    let started = jobs.map(|(src, dst, dest)| Started::begin(src, dst, dest));
    // The lanes read every byte and would fill the holes; a sparse file in a pair is rare
    // enough that the simple way, each file alone, costs nothing that matters.
    if started
        .iter()
        .any(|copy| copy.as_ref().is_ok_and(|c| c.holes))
    {
        let split = in_flight.count < rayon::current_num_threads();
        return started.map(|copy| copy_started(copy?, Content::Hash(None), split));
    }
    let mut lanes = started.map(|started| {
        started.map(|copy| Lane {
            buf: vec![0; lane_len(copy.before.size)],
            copy,
            hasher: Hasher::new(),
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

/// The buffer of a [`copy_pair`]'s lane for a file of `size` bytes: a small file's is its size
/// plus the byte that shows the end (a first copy pairs thousands of them).
fn lane_len(size: u64) -> usize {
    usize::try_from(size.saturating_add(1)).map_or(PAIR_BUF, |n| n.clamp(4096, PAIR_BUF))
}

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
                Ok(n) => {
                    self.filled += n;
                    // All the bytes the open file's stamp said, in a read shorter than asked:
                    // the read that would return 0 is saved (see `copy_through_buffer`).
                    let total = self.written.written + self.filled as u64;
                    if self.filled < self.buf.len() && total == self.copy.before.size {
                        self.ended = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(OpError::Read {
                        path: self.copy.src.clone(),
                        source,
                    });
                }
            }
        }
        // Never more than the file held when opened: one that keeps growing is not followed.
        if self.written.written + self.filled as u64 > self.copy.before.size {
            return Err(OpError::SourceChanged {
                path: self.copy.src.clone(),
            });
        }
        let output = self.copy.staged.file_mut();
        output
            .write_all(&self.buf[..self.filled])
            .map_err(write_err(&self.copy.dst.shown))?;
        self.written.wrote(output, self.filled);
        Ok(())
    }
}

/// A copy under way: the source open, as it was when opened, and the staged destination.
struct Started<'a> {
    src: PathBuf,
    dst: &'a Place,
    dest: Dest<'a>,
    input: File,
    before: Entry,
    /// The source's extended attributes, which the copy gets.
    xattrs: Xattrs,
    /// The source has holes: it is copied by [`copy_sparse`].
    holes: bool,
    staged: Staged<'a>,
}

impl<'a> Started<'a> {
    /// Checks that `src` is a regular file, the one the scan saw (or the copy fails as
    /// changed), and stages its copy at `dst`.
    fn begin(src: Source<'_>, dst: &'a Place, dest: Dest<'a>) -> Result<Self, OpError> {
        let read_err = |source: io::Error| OpError::Read {
            path: src.shown.clone(),
            source,
        };
        // One fstat gives both the stamp and whether the file may have holes.
        let stat = rustix::fs::fstat(&src.file).map_err(|e| read_err(e.into()))?;
        let before = entry_of(&stat, None);
        let other = |seen: &Entry| (seen.dev, seen.ino) != (before.dev, before.ino);
        if before.kind != Kind::File || src.seen.is_some_and(other) {
            return Err(OpError::SourceChanged { path: src.shown });
        }
        let xattrs = meta::read(Handle::Fd(src.file.as_fd())).map_err(read_err)?;
        let mut before = before;
        before.xattrs = meta::xattr_digest(&xattrs);
        let holes = has_holes(&src.file, &stat).map_err(read_err)?;
        let staged = Staged::new(dst, dest, before.mode).map_err(write_err(&dst.shown))?;
        Ok(Started {
            src: src.shown,
            dst,
            dest,
            input: src.file,
            before,
            xattrs,
            holes,
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
        let (src, dst) = (&self.src, self.dst);
        let after = entry_of_file(&self.input).map_err(|source| OpError::Read {
            path: src.clone(),
            source,
        })?;
        if !after.unchanged_since(&self.before) || expect.is_some_and(|c| c != digest) {
            return Err(OpError::SourceChanged { path: src.clone() });
        }
        let dst_shown = &dst.shown;
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
                hashed: true,
            });
        }
        let mode = Mode::from_raw_mode(self.before.mode);
        let meta = self.before.meta();
        // A new file is ours: only another owner is given (a setgid directory's group, which
        // a new file may get instead of ours, is seen and mended below).
        let chown = (meta.uid != NOT_CARRIED && meta.uid != at::my_uid())
            || (meta.gid != NOT_CARRIED && meta.gid != at::my_gid());
        // A change of owner takes the setuid and setgid bits away: the mode comes after.
        let created_with_mode =
            matches!(self.staged, Staged::Hidden(..)) && !(chown && meta.mode & 0o6000 != 0);
        let file = self.staged.file_mut();
        let handle = Handle::Fd(file.as_fd());
        if chown {
            meta::give_owner(handle, &meta).map_err(write_err(dst_shown))?;
        }
        // Read first, on the descriptor (cheap): a new file inherits an ACL from its
        // directory's default ACL, which the original may not have.
        meta::give_xattrs(handle, &self.xattrs).map_err(write_err(dst_shown))?;
        if !created_with_mode {
            rustix::fs::fchmod(&*file, mode).map_err(write_err(dst_shown))?;
        }
        rustix::fs::futimens(&*file, &times(self.before.mtime)).map_err(write_err(dst_shown))?;
        // No fsync per file: the pass flushes its whole file system once at its end (see
        // `flush_fs`), before it records anything that relies on the data being on disk.
        let file = self.staged.install(dst, self.dest.replaces())?;
        // fstat of the file still open: its stamp after the rename, without a path lookup.
        let mut destination = entry_of_file(&file).map_err(write_err(dst_shown))?;
        destination.xattrs = self.before.xattrs;
        if meta.gid != NOT_CARRIED && destination.gid != meta.gid {
            meta::give_owner(Handle::Fd(file.as_fd()), &meta).map_err(write_err(dst_shown))?;
            rustix::fs::fchmod(&file, mode).map_err(write_err(dst_shown))?;
            destination = entry_of_file(&file).map_err(write_err(dst_shown))?;
            destination.xattrs = self.before.xattrs;
        }
        if destination.mode != self.before.mode {
            // Created with its mode, which the umask (or a default ACL) cut down.
            rustix::fs::fchmod(&file, mode).map_err(write_err(dst_shown))?;
            destination = entry_of_file(&file).map_err(write_err(dst_shown))?;
            destination.xattrs = self.before.xattrs;
        }
        Ok(Copied {
            digest,
            source: self.before,
            destination,
            installed: true,
            hashed: true,
        })
    }
}

/// Whether the open regular file `file`, of which `stat` is an fstat, has a hole before its
/// end. Only a file with fewer blocks than bytes can, which costs nothing to rule out for any
/// other (nearly every file). A compressed or inline file may have fewer too, so the first
/// hole is looked for; if none is before the end, the file's position is put back at the
/// start for the ordinary copy, which reads from there.
///
/// Fails if the file's position cannot be put back.
// The fields' types differ from one architecture to the next.
#[allow(clippy::unnecessary_cast)]
fn has_holes(file: &File, stat: &rustix::fs::Stat) -> io::Result<bool> {
    let size = stat.st_size as u64;
    if (stat.st_blocks as u64).saturating_mul(512) >= size {
        return Ok(false);
    }
    match rustix::fs::seek(file, SeekFrom::Hole(0)) {
        Ok(hole) if hole < size => Ok(true),
        // No hole before the end, or a file system that cannot tell.
        _ => {
            rustix::fs::seek(file, SeekFrom::Start(0))?;
            Ok(false)
        }
    }
}

/// Zeros fed to a hash for a hole, a piece at a time: a hole of any size costs no allocation.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Copies the file `input`, which has holes and held `size` bytes when opened, into the empty
/// `output` as `cp --sparse=auto` does: each run of data to its own offset, the holes left
/// unwritten, then the copy's length set to `size`, which keeps a hole at the end too. Feeds
/// `hasher`, if given, the whole content, zeros for the holes; without one, the kernel copies
/// the data (`copy_file_range`) without reading it here.
///
/// Reads nothing at or past `size`: data there means the file grew, and the copy fails as
/// changed (the other copies see it by reading one byte more). One that shrank fails too.
fn copy_sparse(
    input: &File,
    output: &File,
    size: u64,
    (src, dst): (&Path, &Path),
    hasher: Option<&mut Sha256>,
) -> Result<(), OpError> {
    let read_err = |e: Errno| OpError::Read {
        path: src.to_path_buf(),
        source: e.into(),
    };
    let changed = || OpError::SourceChanged {
        path: src.to_path_buf(),
    };
    let mut runs = Runs {
        input,
        output,
        src,
        dst,
        kernel: hasher.is_none(),
        hasher,
        buf: Vec::new(),
        started: 0,
        unstarted: 0,
    };
    // Everything before `at` is copied (or a hole) and hashed.
    let mut at = 0;
    while at < size {
        let data = match rustix::fs::seek(input, SeekFrom::Data(at)) {
            Ok(data) if data >= size => return Err(changed()),
            Ok(data) => data,
            // No data from `at` to the end of the file.
            Err(Errno::NXIO) => size,
            Err(e) => return Err(read_err(e)),
        };
        runs.hole(data - at);
        if data == size {
            break;
        }
        let end = match rustix::fs::seek(input, SeekFrom::Hole(data)) {
            Ok(end) if end > size => return Err(changed()),
            Ok(end) => end,
            // `data` is past the end now.
            Err(Errno::NXIO) => return Err(changed()),
            Err(e) => return Err(read_err(e)),
        };
        runs.copy(data, end)?;
        at = end;
    }
    output.set_len(size).map_err(write_err(dst))
}

/// The state of a [`copy_sparse`] as it copies one run of data after another.
struct Runs<'a> {
    input: &'a File,
    output: &'a File,
    src: &'a Path,
    dst: &'a Path,
    hasher: Option<&'a mut Sha256>,
    /// The kernel copies: there is no hash to feed, and it has not refused.
    kernel: bool,
    /// The buffer of a copy that reads the bytes, made for the first run.
    buf: Vec<u8>,
    /// Where the bytes the disk was not yet asked to start on begin (see [`WriteBehind`]).
    started: u64,
    /// How many bytes were written since `started`.
    unstarted: u64,
}

impl Runs<'_> {
    /// Feeds the hash, if any, the `len` zeros of a hole.
    fn hole(&mut self, mut len: u64) {
        let Some(hasher) = self.hasher.as_deref_mut() else {
            return;
        };
        while len > 0 {
            let n = len.min(ZEROS.len() as u64) as usize;
            hasher.update(&ZEROS[..n]);
            len -= n as u64;
        }
    }

    /// Copies the bytes from `from` to `to` of the input to the same offsets of the output,
    /// feeding them to the hash, if any.
    fn copy(&mut self, from: u64, to: u64) -> Result<(), OpError> {
        use std::os::unix::fs::FileExt;
        let mut at = from;
        while at < to {
            // Pieces no larger than the write-behind step, so the disk is asked to start on
            // a long run as it is copied.
            let want = (to - at).min(WRITE_BEHIND) as usize;
            let n = if self.kernel {
                let (mut off_in, mut off_out) = (at, at);
                match rustix::fs::copy_file_range(
                    self.input,
                    Some(&mut off_in),
                    self.output,
                    Some(&mut off_out),
                    want,
                ) {
                    Ok(n) => n,
                    Err(Errno::INTR) => continue,
                    // Not between these two file systems (or not on this kernel).
                    Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL) => {
                        self.kernel = false;
                        continue;
                    }
                    Err(e) => return Err(write_err(self.dst)(e)),
                }
            } else {
                if self.buf.is_empty() {
                    self.buf = vec![0; 256 * 1024];
                }
                let want = want.min(self.buf.len());
                let n = match self.input.read_at(&mut self.buf[..want], at) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(OpError::Read {
                            path: self.src.to_path_buf(),
                            source,
                        });
                    }
                };
                if let Some(hasher) = self.hasher.as_deref_mut() {
                    hasher.update(&self.buf[..n]);
                }
                (self.output)
                    .write_all_at(&self.buf[..n], at)
                    .map_err(write_err(self.dst))?;
                n
            };
            // The end of the file came before the end of its data: it shrank.
            if n == 0 {
                return Err(OpError::SourceChanged {
                    path: self.src.to_path_buf(),
                });
            }
            at += n as u64;
            self.unstarted += n as u64;
            if self.unstarted >= WRITE_BEHIND {
                start_writeback(self.output, self.started, at - self.started);
                (self.started, self.unstarted) = (at, 0);
            }
        }
        Ok(())
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
        total += n as u64;
        // Never more than the file held when opened: one that keeps growing is not followed.
        if total > size_hint {
            return Err(OpError::SourceChanged {
                path: src.to_path_buf(),
            });
        }
        output.write_all(&buf[..n]).map_err(write_err(dst))?;
        written.wrote(output, n);
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
    (src, dst): (&Path, &Place),
    split: Split,
    replaced: Option<&Entry>,
) -> Result<Digest, OpError> {
    let read_err = |source| OpError::Read {
        path: src.to_path_buf(),
        source,
    };
    let grew = || OpError::SourceChanged {
        path: src.to_path_buf(),
    };
    let after_copy = || {
        if let Some(seen) = replaced {
            drop_cached(dst, seen);
        }
    };
    // One byte more than the file held when opened shows that it grew: the copy stops there.
    let limit = size_hint + 1;
    let dst_place = dst;
    let dst = &*dst_place.shown;
    match split {
        Split::HashTheCopy if size_hint >= PARALLEL_HASH_FROM => {
            let (copied, hashed) =
                crate::tree::mapped::copy_hashing_the_copy(input, output, limit, after_copy);
            if copied.map_err(write_err(dst))? > size_hint {
                return Err(grew());
            }
            return hashed.map_err(write_err(dst));
        }
        Split::HashTheSource if size_hint >= PARALLEL_HASH_FROM => {
            let (hashed, copied) = rayon::join(
                || checksum::digest_reader(PositionalReader { file: input, at: 0 }.take(limit)),
                || {
                    let copied = io::copy(&mut input.take(limit), output);
                    if copied.is_ok() {
                        after_copy();
                    }
                    copied
                },
            );
            if copied.map_err(write_err(dst))? > size_hint {
                return Err(grew());
            }
            return hashed.map_err(read_err);
        }
        _ => {}
    }
    let mut hasher = Sha256::new();
    copy_through_buffer(input, output, size_hint, src, dst, Some(&mut hasher))?;
    Ok(hasher.finalize().into())
}

/// Drops the cached pages of the file at `place` if it is still the one the scan saw (`seen`).
///
/// The rename that replaces a file frees its cached pages, which for a large file held in the
/// page cache costs 15–27 ms (256 MiB) on the critical path of a pass; a thread that is done
/// with its share of a copy frees them beforehand instead. Clean pages only: a file being
/// written keeps its own. A failure changes only the timing.
fn drop_cached(place: &Place, seen: &Entry) {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let Ok(file) = rustix::fs::openat(place.dir(), &place.name, flags, Mode::empty()) else {
        return;
    };
    let same = entry_of_file(&file).is_ok_and(|now| now.unchanged_since(seen));
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

/// The times to give an entry: its modification time `mtime`; the access time is left alone.
fn times(mtime: Timestamp) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime.secs,
            tv_nsec: mtime.nanos.into(),
        },
    }
}

/// Creates (or, as `dest` says, replaces) a symbolic link at `dst` pointing to `target`, with
/// the time, owner and attributes of `meta` (`xattrs`, read from the original), atomically.
///
/// Fails, leaving `dst` untouched, if `dst` is no longer what the scan saw or writing fails.
pub fn symlink(
    target: &Path,
    dst: &Place,
    dest: Dest<'_>,
    meta: &Meta,
    xattrs: &Xattrs,
) -> Result<Entry, OpError> {
    make_named(dst, dest, meta, xattrs, |dir, name| {
        rustix::fs::symlinkat(target, dir, name)
    })
}

/// Creates (or, as `dest` says, replaces) the FIFO, socket or device `node` at `dst`, with
/// the mode, time, owner and attributes of `meta` and `xattrs`, atomically. It is never
/// opened. One the process may not create (a device, without privilege) is counted, not an
/// error.
///
/// Fails, leaving `dst` untouched, if `dst` is no longer what the scan saw or writing fails.
pub fn make_node(
    node: Node,
    dst: &Place,
    dest: Dest<'_>,
    meta: &Meta,
    xattrs: &Xattrs,
) -> Result<Option<Entry>, OpError> {
    let (file_type, dev) = match node {
        Node::Fifo => (FileType::Fifo, 0),
        Node::Socket => (FileType::Socket, 0),
        Node::Char(dev) => (FileType::CharacterDevice, dev),
        Node::Block(dev) => (FileType::BlockDevice, dev),
    };
    let made = make_named(dst, dest, meta, xattrs, |dir, name| {
        rustix::fs::mknodat(dir, name, file_type, Mode::from_raw_mode(0o600), dev)
    });
    match made {
        Err(OpError::Write { source, .. })
            if source.raw_os_error() == Some(Errno::PERM.raw_os_error()) =>
        {
            meta::refused_node();
            Ok(None)
        }
        made => made.map(Some),
    }
}

/// Makes a link or node with `make(dir, name)` at `dst` (under a temporary name first, unless
/// `dest` is hidden, then renamed over what `dest` says), and gives it `meta` and `xattrs`
/// while only we know its name.
fn make_named(
    dst: &Place,
    dest: Dest<'_>,
    meta: &Meta,
    xattrs: &Xattrs,
    make: impl Fn(BorrowedFd<'_>, &OsStr) -> Result<(), Errno>,
) -> Result<Entry, OpError> {
    let shown = &dst.shown;
    let made = if let Dest::Hidden = dest {
        make(dst.dir(), &dst.name).map_err(write_err(shown))?;
        Made::new(dst.dir(), dst.name.clone())
    } else {
        let (name, ()) = create_temp(shown_dir(dst), |name| Ok(make(dst.dir(), name)?))
            .map_err(write_err(shown))?;
        Made::new(dst.dir(), name)
    };
    give_made(dst.dir(), &made.name, meta, xattrs).map_err(write_err(shown))?;
    if let Dest::Hidden = dest {
        let mut made = made;
        made.armed = false;
    } else {
        persist(made, dst, dest.replaces())?;
    }
    dst.stat().map_err(write_err(shown))
}

/// Gives the link or node we just made as `name` in `dir` its owner, attributes, mode (a
/// node's) and time. Either is opened for lookups only (a link is not followed, a node never
/// opened for reading), and its owner and attributes are given through that descriptor; a
/// link's time, by name, never following it.
fn give_made(dir: BorrowedFd<'_>, name: &OsStr, meta: &Meta, xattrs: &Xattrs) -> io::Result<()> {
    let fd = at::open_beneath(dir, Path::new(name), OFlags::PATH)?;
    let stat = rustix::fs::fstat(&fd)?;
    if at::file_type(&stat) == FileType::Symlink {
        // Through /proc/self/fd, an O_PATH descriptor of a link reaches the link itself.
        let handle = Handle::Proc(fd.as_fd());
        meta::give_owner(handle, meta)?;
        meta::give_xattrs(handle, xattrs)?;
        rustix::fs::utimensat(dir, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
        return Ok(());
    }
    let object = Object { fd, by_proc: true };
    object.give(&entry_of(&stat, None), meta, Some(xattrs), true)
}

/// Removes the file, link or empty directory at `at` if it is still what the scan saw.
///
/// Fails if it changed, or if removal fails (a directory that is not empty stays).
pub fn remove(at: &Place, seen: &Entry) -> Result<(), OpError> {
    let now = at.stat().map_err(write_err(&at.shown))?;
    // A directory's times move whenever its children are removed, so only its identity is
    // checked; removing it fails unless it is empty.
    let same = if seen.is_dir() {
        now.is_dir() && now.ino == seen.ino
    } else {
        now.unchanged_since(seen)
    };
    if !same {
        return Err(OpError::DestinationChanged {
            path: at.shown.clone(),
        });
    }
    let flags = if seen.is_dir() {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    rustix::fs::unlinkat(at.dir(), &at.name, flags).map_err(write_err(&at.shown))
}

/// An entry opened to change its metadata: the very object that was checked.
struct Object {
    fd: OwnedFd,
    /// Opened for lookups only (a node, which is never opened as such, or a file we may not
    /// read): reached through `/proc/self/fd`.
    by_proc: bool,
}

impl Object {
    /// Opens the entry `name` in `dir` (not through a link: a link fails with `ELOOP`). A
    /// FIFO or device is never opened for reading, which could block or act on a device.
    fn open(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Object> {
        let fd = at::open_beneath(dir, Path::new(name), OFlags::PATH)?;
        let file_type = at::file_type(&rustix::fs::fstat(&fd)?);
        match file_type {
            FileType::Symlink => Err(Errno::LOOP.into()),
            FileType::RegularFile | FileType::Directory if have_proc() => {
                // The object checked, opened again for reading through its /proc link: its
                // mode and times are then set on the descriptor.
                let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
                match rustix::fs::open(proc_path(&fd).as_str(), flags, Mode::empty()) {
                    Ok(fd) => Ok(Object { fd, by_proc: false }),
                    // Not readable by us (another user's 0200 file, for a user without
                    // privilege): its /proc link reaches the same object.
                    Err(Errno::ACCESS) => Ok(Object { fd, by_proc: true }),
                    Err(e) => Err(e.into()),
                }
            }
            FileType::RegularFile | FileType::Directory => {
                let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
                let fd = at::open_beneath(dir, Path::new(name), flags)?;
                Ok(Object { fd, by_proc: false })
            }
            _ => Ok(Object { fd, by_proc: true }),
        }
    }

    fn entry(&self) -> io::Result<Entry> {
        entry_of_file(&self.fd)
    }

    fn handle(&self) -> Handle<'_> {
        if self.by_proc {
            Handle::Proc(self.fd.as_fd())
        } else {
            Handle::Fd(self.fd.as_fd())
        }
    }

    fn chmod(&self, mode: u32) -> io::Result<()> {
        let mode = Mode::from_raw_mode(mode);
        if self.by_proc {
            Ok(rustix::fs::chmodat(
                rustix::fs::CWD,
                proc_path(&self.fd).as_str(),
                mode,
                AtFlags::empty(),
            )?)
        } else {
            Ok(rustix::fs::fchmod(&self.fd, mode)?)
        }
    }

    fn set_mtime(&self, mtime: Timestamp) -> io::Result<()> {
        if self.by_proc {
            let path = proc_path(&self.fd);
            Ok(rustix::fs::utimensat(
                rustix::fs::CWD,
                path.as_str(),
                &times(mtime),
                AtFlags::empty(),
            )?)
        } else {
            Ok(rustix::fs::futimens(&self.fd, &times(mtime))?)
        }
    }

    /// Gives it, which is `now`, the owner, attributes (if `xattrs`), mode and time of `meta`,
    /// in that order: a change of owner takes away setuid and setgid bits and file
    /// capabilities. With `always`, the mode is set even where it seems right already.
    fn give(
        &self,
        now: &Entry,
        meta: &Meta,
        xattrs: Option<&Xattrs>,
        always: bool,
    ) -> io::Result<()> {
        let owner_moves = (meta.uid != NOT_CARRIED && meta.uid != now.uid)
            || (meta.gid != NOT_CARRIED && meta.gid != now.gid);
        if owner_moves {
            meta::give_owner(self.handle(), meta)?;
        }
        if let Some(xattrs) = xattrs {
            meta::give_xattrs(self.handle(), xattrs)?;
        }
        if always || owner_moves || now.mode != meta.mode {
            self.chmod(meta.mode)?;
        }
        self.set_mtime(meta.mtime)
    }
}

/// Gives the entry at `at`, if it is still what the scan saw, the metadata `meta` (and the
/// attributes `xattrs`, if given, read from the original); gives what it is after.
///
/// Fails if it changed or the change is refused.
pub fn set_metadata(
    at: &Place,
    seen: &Entry,
    meta: &Meta,
    xattrs: Option<&Xattrs>,
) -> Result<Entry, OpError> {
    let shown = &at.shown;
    let changed = || OpError::DestinationChanged {
        path: shown.clone(),
    };
    let object = match Object::open(at.dir(), &at.name) {
        Ok(object) => object,
        // A link: it has no mode of its own, and its time is set by name, never followed. Its
        // owner and attributes are given through a descriptor of the link checked.
        Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
            let link = at::open_beneath(at.dir(), Path::new(&at.name), OFlags::PATH)
                .map_err(|_| changed())?;
            let mut now = entry_of_file(&link).map_err(write_err(shown))?;
            // The target of the link held (an empty name reads the descriptor's own link).
            now.kind = Kind::Symlink(
                at::read_link_at(link.as_fd(), OsStr::new("")).map_err(write_err(shown))?,
            );
            if !now.unchanged_since(seen) {
                return Err(changed());
            }
            let handle = Handle::Proc(link.as_fd());
            meta::give_owner(handle, meta).map_err(write_err(shown))?;
            if let Some(xattrs) = xattrs {
                meta::give_xattrs(handle, xattrs).map_err(write_err(shown))?;
            }
            rustix::fs::utimensat(
                at.dir(),
                &at.name,
                &times(meta.mtime),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(write_err(shown))?;
            return at.stat().map_err(write_err(shown));
        }
        Err(_) => return Err(changed()),
    };
    let now = object.entry().map_err(write_err(shown))?;
    if !now.unchanged_since(seen) {
        return Err(changed());
    }
    object
        .give(&now, meta, xattrs, false)
        .map_err(write_err(shown))?;
    let mut after = object.entry().map_err(write_err(shown))?;
    after.xattrs = meta::read(object.handle())
        .map(|x| meta::xattr_digest(&x))
        .unwrap_or(0);
    Ok(after)
}

/// Gives the directory `rel` beneath `root` the metadata `meta` (and the attributes
/// `xattrs`, if given) once its content is in place (filling it moves its time, and a
/// read-only mode would have blocked filling it).
///
/// Fails if it is no longer a directory or the change is refused.
pub fn finish_dir(
    root: BorrowedFd<'_>,
    rel: &Path,
    shown: &Path,
    meta: &Meta,
    xattrs: Option<&Xattrs>,
) -> Result<(), OpError> {
    let changed = || OpError::DestinationChanged {
        path: shown.to_path_buf(),
    };
    let dir = open_dir_object(root, rel).map_err(|_| changed())?;
    let now = dir.entry().map_err(write_err(shown))?;
    if !now.is_dir() {
        return Err(changed());
    }
    dir.give(&now, meta, xattrs, false)
        .map_err(write_err(shown))
}

/// Gives the directory `dir`, opened for reading (`O_DIRECTORY`, so never a device or a FIFO)
/// by the caller, shown as `shown`, the metadata `meta` (and the attributes `xattrs`, if given)
/// as [`finish_dir`] does: the descriptor is the directory checked and changed.
///
/// Fails if the change is refused.
pub fn finish_open_dir(
    dir: OwnedFd,
    shown: &Path,
    meta: &Meta,
    xattrs: Option<&Xattrs>,
) -> Result<(), OpError> {
    let dir = Object {
        fd: dir,
        by_proc: false,
    };
    let now = dir.entry().map_err(write_err(shown))?;
    dir.give(&now, meta, xattrs, false)
        .map_err(write_err(shown))
}

/// Opens the directory `rel` beneath `root` to set its mode or time.
fn open_dir_object(root: BorrowedFd<'_>, rel: &Path) -> io::Result<Object> {
    let (parent, name) = match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => (Path::new(""), OsStr::new(".")),
    };
    let parent = at::open_beneath(root, parent, OFlags::PATH | OFlags::DIRECTORY)?;
    let object = Object::open(parent.as_fd(), name)?;
    if object.entry()?.is_dir() {
        Ok(object)
    } else {
        Err(Errno::NOTDIR.into())
    }
}

/// Creates the directory at `at`, owner-writable for now: its real mode is set once its
/// content is in place, or a read-only directory could not be filled.
///
/// Fails if it exists or cannot be created.
pub fn create_dir(at: &Place) -> Result<(), OpError> {
    rustix::fs::mkdirat(at.dir(), &at.name, Mode::from_raw_mode(0o700))
        .map_err(write_err(&at.shown))
}

/// Creates a hidden directory in the directory `parent` (shown as `shown`), under a
/// temporary name of ours, where a whole new directory is built (its entries written with
/// [`Dest::Hidden`]) before [`publish_dir`] gives it its name. A kill before then leaves only
/// that temporary directory, which the next pass removes, never a half-written file under a
/// real name. Gives the name.
///
/// Fails if the directory cannot be created.
pub fn stage_dir(parent: BorrowedFd<'_>, shown: &Path) -> Result<std::ffi::OsString, OpError> {
    let (name, ()) = create_temp(shown, |name| {
        Ok(rustix::fs::mkdirat(
            parent,
            name,
            Mode::from_raw_mode(0o700),
        )?)
    })
    .map_err(write_err(shown))?;
    Ok(name)
}

/// Gives the hidden directory `staged` (made by [`stage_dir`]) the name `to`, if `to` does
/// not exist (the check and the rename are one atomic step).
///
/// Fails, leaving `staged` where it is, if `to` exists or the rename fails.
pub fn publish_dir(staged: &Place, to: &Place) -> Result<(), OpError> {
    rename_new(staged, to)
}

/// Makes the directory `rel` beneath `root` writable by its owner, so entries can be added or
/// removed in it; its recorded mode `mode` is restored at the end of the pass.
///
/// Fails if the mode cannot be changed.
pub fn make_writable(
    root: BorrowedFd<'_>,
    rel: &Path,
    shown: &Path,
    mode: u32,
) -> Result<(), OpError> {
    let dir = open_dir_object(root, rel).map_err(write_err(shown))?;
    dir.chmod(mode | 0o700).map_err(write_err(shown))
}

/// Hard-links the regular file `existing` names (beneath a tree of the runner's own version
/// store, never through a link: a user owns their directories' copies in a version) to the new
/// name `dst`, if it still has its size and mtime (linking moves a file's change time, so that
/// is not compared). The file checked is the file linked: it is opened, and linked by its
/// descriptor.
///
/// Fails if `existing` is no longer such a file, or the link cannot be made (a file system
/// without hard links, a file with as many links as it may have).
pub fn hard_link(existing: &LinkFrom, dst: &Place) -> Result<(), OpError> {
    let changed = || OpError::SourceChanged {
        path: existing.root.join(&existing.rel),
    };
    let root =
        at::open_long(&existing.root, OFlags::PATH | OFlags::DIRECTORY).map_err(|_| changed())?;
    let file =
        at::open_beneath(root.as_fd(), &existing.rel, OFlags::PATH).map_err(|_| changed())?;
    match entry_of_file(&file) {
        Ok(e) if e.kind == Kind::File && e.size == existing.size && e.mtime == existing.mtime => {
            link_unnamed(&file, dst.dir(), &dst.name).map_err(write_err(&dst.shown))
        }
        _ => Err(changed()),
    }
}

/// Gives the regular file at `existing` (in the same tree) the further name `dst`, over what
/// `dest` says, if it is still the file `expect` describes (same inode where known, or same
/// size and time): names that share an inode in the original share one here. The file
/// checked is the file linked: it is opened, and linked by its descriptor.
///
/// Fails if `existing` is no longer that file, `dst` is no longer what the scan saw, or the
/// link cannot be made.
pub fn link_within(
    existing: &Place,
    expect: &Entry,
    dst: &Place,
    dest: Dest<'_>,
) -> Result<Entry, OpError> {
    let changed = || OpError::SourceChanged {
        path: existing.shown.clone(),
    };
    let file = at::open_beneath(existing.dir(), Path::new(&existing.name), OFlags::PATH)
        .map_err(|_| changed())?;
    let now = entry_of_file(&file).map_err(|_| changed())?;
    if now.kind != Kind::File || now.size != expect.size || now.mtime != expect.mtime {
        return Err(changed());
    }
    let shown = &dst.shown;
    match dest {
        Dest::New | Dest::Hidden => {
            link_unnamed(&file, dst.dir(), &dst.name).map_err(taken_or_write(shown))?
        }
        Dest::Replace(seen) => {
            let (name, ()) =
                create_temp(shown_dir(dst), |name| link_unnamed(&file, dst.dir(), name))
                    .map_err(write_err(shown))?;
            persist(Made::new(dst.dir(), name), dst, Some(seen))?;
        }
    }
    entry_of_file(&file).map_err(write_err(shown))
}

/// Moves `from` to `to`, if `from` is still what the scan saw and `to` does not exist (the
/// check and the rename are one atomic step).
///
/// Fails, moving nothing, if `from` changed, `to` exists, or the rename fails.
pub fn rename_noreplace(from: &Place, to: &Place, seen: &Entry) -> Result<(), OpError> {
    match from.stat() {
        Ok(now) if now.unchanged_since(seen) => {}
        _ => {
            return Err(OpError::DestinationChanged {
                path: from.shown.clone(),
            });
        }
    }
    rename_new(from, to)
}

/// Renames `from` to `to` if `to` does not exist, atomically.
fn rename_new(from: &Place, to: &Place) -> Result<(), OpError> {
    rustix::fs::renameat_with(
        from.dir(),
        &from.name,
        to.dir(),
        &to.name,
        RenameFlags::NOREPLACE,
    )
    .map_err(|e| taken_or_write(&to.shown)(e.into()))
}

/// Removes the entry `name` of `dir`, a whole directory tree included (read-only directories
/// in it are opened first); nothing there is fine. Never follows a link, never leaves `dir`,
/// and walks without recursion, holding a descriptor for each of the last `HELD_LEVELS`
/// levels only (a deeper parent is opened again from `dir` when it is reached again), so any
/// depth is removed within a small descriptor limit.
pub fn remove_all(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let open = |at: BorrowedFd<'_>, rel: &Path| -> io::Result<OwnedFd> {
        let fd = at::open_beneath(at, rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        // A version keeps SOURCE's modes: a read-only directory in it is opened first.
        let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700));
        Ok(fd)
    };
    // The directories being emptied, outermost first, each with its name in the one before
    // and, for the last few, held open.
    let mut stack: Vec<(Option<OwnedFd>, std::ffi::OsString)> =
        vec![(Some(open(dir, Path::new(name))?), name.into())];
    while let Some((Some(fd), _)) = stack.last() {
        let mut deeper = None;
        for entry in rustix::fs::Dir::read_from(fd)? {
            let entry = entry?;
            let child = OsStr::from_bytes(entry.file_name().to_bytes());
            if child == "." || child == ".." {
                continue;
            }
            match rustix::fs::unlinkat(fd, child, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR | Errno::PERM) => {
                    deeper = Some(child.to_os_string());
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        match deeper {
            Some(child) => {
                let fd = open(fd.as_fd(), Path::new(&child))?;
                stack.push((Some(fd), child));
                if let Some(older) = stack.len().checked_sub(HELD_LEVELS + 1) {
                    stack[older].0 = None;
                }
            }
            None => {
                let (_, name) = stack.pop().expect("the loop runs while the stack has one");
                if let Some((None, _)) = stack.last() {
                    let rel: PathBuf = stack.iter().map(|(_, n)| n.as_os_str()).collect();
                    let fd = open(dir, &rel)?;
                    if let Some(last) = stack.last_mut() {
                        last.0 = Some(fd);
                    }
                }
                let parent = stack
                    .last()
                    .and_then(|(fd, _)| fd.as_ref())
                    .map_or(dir, |fd| fd.as_fd());
                match rustix::fs::unlinkat(parent, &name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// How many levels of a tree [`remove_all`] holds open at once.
const HELD_LEVELS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// The place of `path`: its parent held open.
    fn place(path: &Path) -> Place {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let parent = path.parent().unwrap();
        Place {
            dir: std::sync::Arc::new(
                rustix::fs::openat(rustix::fs::CWD, parent, flags, Mode::empty()).unwrap(),
            ),
            name: path.file_name().unwrap().to_os_string(),
            shown: path.to_path_buf(),
        }
    }

    /// The file at `path`, opened to be copied.
    fn source(path: &Path) -> Source<'static> {
        Source {
            file: File::open(path).unwrap(),
            seen: None,
            shown: path.to_path_buf(),
        }
    }

    fn stat(path: &Path) -> io::Result<Entry> {
        place(path).stat()
    }

    fn sha(bytes: &[u8]) -> Digest {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn unnamed_files_get_their_name_either_way_and_never_over_another() {
        let dir = tempfile::tempdir().unwrap();
        type Link = fn(&File, BorrowedFd<'_>, &OsStr) -> io::Result<()>;
        let ways: [(&str, Link); 3] = [
            ("descriptor", link_by_descriptor),
            ("proc", link_through_proc),
            ("either", link_unnamed),
        ];
        for (way, link) in ways {
            let unused = place(&dir.path().join("unused"));
            let mut staged = Staged::new(&unused, Dest::New, 0o600).unwrap();
            staged.file_mut().write_all(way.as_bytes()).unwrap();
            let Staged::Unnamed(file) = staged else {
                panic!("no O_TMPFILE here: the unnamed path is not tested");
            };
            let held = place(&dir.path().join(way));
            link(&file, held.dir(), OsStr::new(way)).unwrap();
            assert_eq!(fs::read_to_string(dir.path().join(way)).unwrap(), way);
            // A name that exists is never replaced.
            let taken = dir.path().join("descriptor");
            let err = link(&file, held.dir(), OsStr::new("descriptor")).unwrap_err();
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
        let root = place(&dir.path().join("x"));
        let hidden = dir.path().join(stage_dir(root.dir(), dir.path()).unwrap());
        assert!(
            crate::tree::temp::is_temp_name(hidden.file_name().unwrap()),
            "{hidden:?}"
        );
        let dst = hidden.join("copy.txt");

        // A copy refused after its bytes were written takes them away with it.
        let wrong = [0; 32];
        let refused = copy_file(
            source(&src),
            &place(&dst),
            Dest::Hidden,
            Content::Hash(Some(&wrong)),
        );
        assert!(
            matches!(refused, Err(OpError::SourceChanged { .. })),
            "{refused:?}"
        );
        assert!(
            fs::symlink_metadata(&dst).is_err(),
            "a refused copy left a file"
        );

        let copied = copy_file(
            source(&src),
            &place(&dst),
            Dest::Hidden,
            Content::Hash(None),
        );
        let copied = copied.unwrap();
        assert_eq!(copied.digest, sha(b"content"));
        assert_eq!(fs::read(&dst).unwrap(), b"content");
        let now = stat(&dst).unwrap();
        assert_eq!((now.mode, now.mtime.to_filetime()), (0o640, mtime));
        assert!(now.unchanged_since(&copied.destination));
        // A name already taken, even in a hidden directory, is never written over.
        fs::write(&src, b"other").unwrap();
        let taken = copy_file(
            source(&src),
            &place(&dst),
            Dest::Hidden,
            Content::Hash(None),
        );
        assert!(matches!(taken, Err(OpError::Write { .. })), "{taken:?}");
        assert_eq!(fs::read(&dst).unwrap(), b"content");
        let link = symlink(
            Path::new("copy.txt"),
            &place(&hidden.join("link")),
            Dest::Hidden,
            &now.meta(),
            &Vec::new(),
        );
        assert_eq!(link.unwrap().mtime, now.mtime);

        // Published only where the name is free; else it stays where it was.
        let to = dir.path().join("published");
        fs::create_dir(&to).unwrap();
        let refused = publish_dir(&place(&hidden), &place(&to));
        assert!(
            matches!(refused, Err(OpError::DestinationChanged { .. })),
            "{refused:?}"
        );
        assert!(hidden.join("copy.txt").exists());
        fs::remove_dir(&to).unwrap();
        publish_dir(&place(&hidden), &place(&to)).unwrap();
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
            let to = place(&dst);
            let mut copy = Started::begin(source(&src), &to, Dest::New).unwrap();
            // Opened and looked at; rewritten before its bytes are read.
            rewrite();
            let size = copy.before.size;
            // One that grew is refused as soon as it shows more bytes than it had; any
            // other change, once copied.
            let refused = copy_and_hash(
                &copy.input,
                copy.staged.file_mut(),
                size,
                (&src, &to),
                Split::No,
                None,
            )
            .and_then(|digest| copy.finish(digest, None, None));
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

    /// A tree deeper than the levels held open at once, read-only directories and a link to
    /// a file outside in it, is removed whole; the link's target is left alone.
    #[test]
    fn remove_all_takes_a_deep_read_only_tree_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        let top = dir.path().join("top");
        fs::create_dir(&top).unwrap();
        let mut at = rustix::fs::openat(
            rustix::fs::CWD,
            &top,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        for level in 0..3 * HELD_LEVELS + 5 {
            rustix::fs::mkdirat(&at, "d", Mode::from_raw_mode(0o755)).unwrap();
            let fd = at::open_beneath(at.as_fd(), Path::new("d"), OFlags::RDONLY).unwrap();
            rustix::fs::symlinkat(&outside, &fd, "link").unwrap();
            let file = rustix::fs::openat(
                &fd,
                "f",
                OFlags::CREATE | OFlags::WRONLY,
                Mode::from_raw_mode(0o400),
            );
            drop(file.unwrap());
            if level % 7 == 0 {
                rustix::fs::fchmod(&at, Mode::from_raw_mode(0o500)).unwrap();
            }
            at = fd;
        }
        let parent = place(&top);
        remove_all(parent.dir(), &parent.name).unwrap();
        assert!(!top.exists(), "the tree is still there");
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
        // Nothing there is fine.
        remove_all(parent.dir(), &parent.name).unwrap();
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
        // neither is a whole number of hash blocks or buffers. Then one empty file, and small
        // files, whose buffers are their size (one about a page, around the smallest buffer).
        for (la, lb) in [
            (PAIR_BUF + 100, 3 * PAIR_BUF + 77),
            (2 * PAIR_BUF, 2 * PAIR_BUF + 1),
            (0, 1000),
            (4095, 4096),
            (4097, 16 * 1024 + 3),
            (1, PAIR_BUF - 1),
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
                (source(&path("a")), &place(&path("a2")), Dest::New),
                (source(&path("b")), &place(&path("b2")), Dest::Replace(&old)),
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
        // A source that is not a file (a directory put in its place), on either side.
        fs::create_dir(path("dir")).unwrap();
        let (good, good2) = (path("good"), path("good2"));
        let (gone, gone2) = (path("dir"), path("gone2"));
        let (to_good, to_gone) = (place(&good2), place(&gone2));
        for missing_first in [true, false] {
            let _ = fs::remove_file(&good2);
            let mut jobs = [
                (source(&good), &to_good, Dest::New),
                (source(&gone), &to_gone, Dest::New),
            ];
            if missing_first {
                jobs.reverse();
            }
            let mut results = copy_pair(jobs);
            if missing_first {
                results.reverse();
            }
            let [ok, bad] = results;
            assert!(matches!(bad, Err(OpError::SourceChanged { .. })), "{bad:?}");
            assert_eq!(ok.unwrap().digest, sha(&data));
            assert!(fs::read(&good2).unwrap() == data);
            assert!(!gone2.exists());
        }
        // A destination that appeared since the scan is left alone; the other is copied.
        fs::write(path("taken"), b"someone else's").unwrap();
        let _ = fs::remove_file(path("good2"));
        let [taken, ok] = copy_pair([
            (source(&path("good")), &place(&path("taken")), Dest::New),
            (source(&path("good")), &place(&path("good2")), Dest::New),
        ]);
        assert!(matches!(taken, Err(OpError::DestinationChanged { .. })));
        assert_eq!(fs::read(path("taken")).unwrap(), b"someone else's");
        assert_eq!(ok.unwrap().digest, sha(&data));
    }

    const MIB: u64 = 1024 * 1024;

    /// A file of `size` bytes at `path` holding `runs` (offset and bytes) and holes between:
    /// gives its whole content, holes as zeros.
    fn sparse_file(path: &Path, size: u64, runs: &[(u64, &[u8])]) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let _ = fs::remove_file(path);
        let file = File::create_new(path).unwrap();
        file.set_len(size).unwrap();
        let mut whole = vec![0; size as usize];
        for &(at, bytes) in runs {
            file.write_all_at(bytes, at).unwrap();
            whole[at as usize..][..bytes.len()].copy_from_slice(bytes);
        }
        whole
    }

    /// The bytes `path` takes on disk.
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().blocks() * 512
    }

    /// The length of the sparse sources of the tests.
    const SPARSE_SIZE: u64 = 64 * MIB;

    /// The runs of data of a sparse file: offset and bytes.
    type DataRuns = Vec<(u64, Vec<u8>)>;

    /// Sparse sources of [`SPARSE_SIZE`], by name: two blocks of data inside (the last one
    /// block short of the end), one block at the start and a long hole to the end, one block
    /// right at the end, and no data at all.
    fn sparse_cases() -> Vec<(&'static str, DataRuns)> {
        let size = SPARSE_SIZE;
        vec![
            (
                "inner",
                vec![(MIB, pattern(4096, 1)), (size - 8192, pattern(4096, 2))],
            ),
            ("trailing hole", vec![(0, pattern(4096, 3))]),
            ("data at the end", vec![(size - 4096, pattern(4096, 4))]),
            ("all hole", vec![]),
        ]
    }

    /// Copying a sparse file, whatever is known of its content, keeps its holes: before,
    /// a 1 GiB file with one block of data took 1 GiB in BACKUP. The copy's bytes and digest
    /// are those of the whole file, holes read as zeros.
    #[test]
    fn a_sparse_source_is_copied_whole_with_its_holes_and_hashed_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let size = SPARSE_SIZE;
        for (case, runs) in sparse_cases() {
            let runs: Vec<(u64, &[u8])> = runs.iter().map(|(at, b)| (*at, &b[..])).collect();
            let whole = sparse_file(&src, size, &runs);
            let digest = sha(&whole);
            let seen = stat(&src).unwrap();
            let other = sha(b"what BACKUP held");
            let stale = Entry {
                ctime: Timestamp { secs: 1, nanos: 0 },
                ..seen.clone()
            };
            let contents = [
                ("Hash(None)", Content::Hash(None)),
                ("Hash(exact)", Content::Hash(Some(&digest))),
                (
                    "Known",
                    Content::Known {
                        entry: &seen,
                        digest,
                        exact: false,
                    },
                ),
                (
                    "Known, stamp moved",
                    Content::Known {
                        entry: &stale,
                        digest,
                        exact: true,
                    },
                ),
                ("Unless", Content::Unless(&other)),
            ];
            for (how, content) in contents {
                // Replacing a file there, so that `Unless` has something to compare with.
                fs::write(&dst, b"what BACKUP held").unwrap();
                let old = stat(&dst).unwrap();
                let copied =
                    copy_file(source(&src), &place(&dst), Dest::Replace(&old), content).unwrap();
                let what = format!("{case}, {how}");
                assert!(copied.installed, "{what}");
                assert_eq!(copied.digest, digest, "{what}");
                assert_eq!(fs::metadata(&dst).unwrap().len(), size, "{what}");
                assert!(fs::read(&dst).unwrap() == whole, "{what}: the copy differs");
                let (had, has) = (allocated(&src), allocated(&dst));
                assert!(
                    has <= had + 64 * 1024,
                    "{what}: {has} bytes allocated for {had}"
                );
                assert!(stat(&dst).unwrap().unchanged_since(&copied.destination));
            }
            // The bytes BACKUP holds already: nothing is installed.
            fs::remove_file(&dst).unwrap();
            fs::copy(&src, &dst).unwrap();
            let old = stat(&dst).unwrap();
            let same = Content::Unless(&digest);
            let copied = copy_file(source(&src), &place(&dst), Dest::Replace(&old), same);
            assert!(!copied.unwrap().installed, "{case}");
            assert!(stat(&dst).unwrap().unchanged_since(&old), "{case}");
        }
    }

    #[test]
    fn a_sparse_source_keeps_its_holes_in_a_hidden_directory_and_in_a_pair() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let root = place(&path("x"));
        let hidden = path(&stage_dir(root.dir(), dir.path()).unwrap().to_string_lossy());
        let dense = pattern(2 * PAIR_BUF + 5, 5);
        fs::write(path("dense"), &dense).unwrap();
        for (case, runs) in sparse_cases() {
            let runs: Vec<(u64, &[u8])> = runs.iter().map(|(at, b)| (*at, &b[..])).collect();
            let whole = sparse_file(&path("sparse"), SPARSE_SIZE, &runs);
            let had = allocated(&path("sparse"));
            let copy = hidden.join("copy");
            let _ = fs::remove_file(&copy);
            let copied = copy_file(
                source(&path("sparse")),
                &place(&copy),
                Dest::Hidden,
                Content::Hash(None),
            );
            assert_eq!(copied.unwrap().digest, sha(&whole), "{case}");
            assert!(
                fs::read(&copy).unwrap() == whole,
                "{case}: the copy differs"
            );
            assert!(allocated(&copy) <= had + 64 * 1024, "{case}: holes filled");

            // In a pair, on either side.
            for sparse_first in [true, false] {
                for name in ["sparse2", "dense2"] {
                    let _ = fs::remove_file(path(name));
                }
                let (sparse, dense_to) = (place(&path("sparse2")), place(&path("dense2")));
                let mut jobs = [
                    (source(&path("sparse")), &sparse, Dest::New),
                    (source(&path("dense")), &dense_to, Dest::New),
                ];
                if !sparse_first {
                    jobs.reverse();
                }
                let mut results = copy_pair(jobs);
                if !sparse_first {
                    results.reverse();
                }
                let [a, b] = results;
                assert_eq!(a.unwrap().digest, sha(&whole), "{case}");
                assert_eq!(b.unwrap().digest, sha(&dense), "{case}");
                assert!(fs::read(path("sparse2")).unwrap() == whole, "{case}");
                assert!(fs::read(path("dense2")).unwrap() == dense, "{case}");
                let has = allocated(&path("sparse2"));
                assert!(
                    has <= had + 64 * 1024,
                    "{case}: {has} bytes allocated for {had}"
                );
            }
        }
    }

    #[test]
    fn a_sparse_source_that_grows_or_shrinks_while_it_is_copied_is_not_installed() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let size = 8 * MIB;
        // Data past the end it had, a longer hole at the end, and less data than it had.
        let rewrites: [&dyn Fn(&File); 3] = [
            &|f| f.write_all_at(b"more", size).unwrap(),
            &|f| f.set_len(size + MIB).unwrap(),
            &|f| f.set_len(MIB + 100).unwrap(),
        ];
        for (case, rewrite) in rewrites.iter().enumerate() {
            sparse_file(&src, size, &[(MIB, &pattern(8192, 6)), (4 * MIB, b"x")]);
            let to = place(&dst);
            let mut copy = Started::begin(source(&src), &to, Dest::New).unwrap();
            assert!(copy.holes, "case {case}: not seen as sparse");
            rewrite(&fs::OpenOptions::new().write(true).open(&src).unwrap());
            let mut hasher = Sha256::new();
            let output = copy.staged.file_mut();
            let refused = copy_sparse(&copy.input, output, size, (&src, &dst), Some(&mut hasher))
                .and_then(|()| copy.finish(hasher.finalize().into(), None, None));
            assert!(
                matches!(refused, Err(OpError::SourceChanged { .. })),
                "case {case}: {refused:?}"
            );
            assert!(!dst.exists(), "case {case}: installed");
        }
    }

    #[test]
    fn only_a_file_with_a_hole_is_copied_the_sparse_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let holes = |path: &Path| {
            let file = File::open(path).unwrap();
            let stat = rustix::fs::fstat(&file).unwrap();
            let holes = has_holes(&file, &stat).unwrap();
            // The ordinary copy reads from the file's position; the sparse one needs none.
            if !holes {
                assert_eq!(rustix::fs::seek(&file, SeekFrom::Current(0)).unwrap(), 0);
            }
            holes
        };
        fs::write(&path, pattern(3 * 4096 + 5, 7)).unwrap();
        assert!(!holes(&path), "a file all data");
        fs::write(&path, b"").unwrap();
        assert!(!holes(&path), "an empty file");
        sparse_file(&path, MIB, &[(0, &pattern(4096, 8))]);
        assert!(holes(&path), "a file with a hole at its end");
    }
}
