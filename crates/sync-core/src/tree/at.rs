//! How an entry of a local tree is reached: always from a directory held open, never by a
//! path the kernel resolves again later (docs/security.md). A path below a root is opened
//! with `openat2` and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, which follows no link and
//! cannot leave the directory it starts from (one component at a time with `O_NOFOLLOW` on a
//! kernel without it), in pieces shorter than `PATH_MAX`, so that a tree of any depth is
//! reached. An entry to create, replace or remove is named by its [`Place`]: the directory
//! that holds it, open, and its name there.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::model::{Entry, Kind, NOT_CARRIED, Node, Timestamp};
use crate::tree::meta;

/// The longest piece of a path handed to the kernel at once: well below `PATH_MAX` (4096),
/// and above `NAME_MAX` (255), so that a piece always ends at a `/`.
const PIECE: usize = 2048;

/// False once the kernel turned out not to have `openat2` (before Linux 5.6, or a sandbox
/// that forbids it).
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// Opens `rel` (relative, plain names only; empty for `dir` itself) beneath `dir` with
/// `flags`, following no symbolic link on the way or at the end, and never leaving `dir`.
///
/// Fails with `ELOOP` or `ENOTDIR` where a link or a non-directory stands in the way,
/// `EXDEV` for a path that would leave `dir`, and as `open(2)` does otherwise.
pub(crate) fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut rest = rel.as_os_str().as_bytes();
    if rest.is_empty() {
        return Ok(rustix::fs::openat(dir, c".", flags, Mode::empty())?);
    }
    // A path longer than the kernel takes is opened a piece at a time.
    let mut held: Option<OwnedFd> = None;
    while rest.len() > PIECE {
        let cut = rest[..=PIECE]
            .iter()
            .rposition(|&b| b == b'/')
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidFilename))?;
        let piece = Path::new(OsStr::from_bytes(&rest[..cut]));
        let at = held.as_ref().map_or(dir, |f| f.as_fd());
        held = Some(open_piece(at, piece, dir_flags())?);
        rest = &rest[cut + 1..];
    }
    let at = held.as_ref().map_or(dir, |f| f.as_fd());
    open_piece(at, Path::new(OsStr::from_bytes(rest)), flags)
}

/// How a directory on the way is opened: for looking up names in it only.
fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn open_piece(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    if OPENAT2.load(Ordering::Relaxed) {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        loop {
            match rustix::fs::openat2(dir, rel, flags, Mode::empty(), how) {
                Err(Errno::NOSYS) => {
                    OPENAT2.store(false, Ordering::Relaxed);
                    break;
                }
                // A rename elsewhere on the file system while `..` was looked up; our paths
                // have none, but the kernel may still ask to try again.
                Err(Errno::AGAIN) => continue,
                result => return Ok(result?),
            }
        }
    }
    let mut held: Option<OwnedFd> = None;
    let mut parts = rel.components().peekable();
    while let Some(part) = parts.next() {
        let Component::Normal(name) = part else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a path below a tree must name plain entries only",
            ));
        };
        let at = held.as_ref().map_or(dir, |f| f.as_fd());
        let step = if parts.peek().is_some() {
            dir_flags()
        } else {
            flags
        };
        held = Some(rustix::fs::openat(at, name, step, Mode::empty())?);
    }
    held.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Opens the absolute `path` of the runner's own (in the version store) with `flags`, as
/// `open(2)` would, but in pieces when it is longer than the kernel takes at once.
pub(crate) fn open_long(path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() <= PIECE {
        return Ok(rustix::fs::openat(
            rustix::fs::CWD,
            path,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
    }
    let mut held: Option<OwnedFd> = None;
    let mut rest = bytes;
    while rest.len() > PIECE {
        let cut = rest[1..=PIECE]
            .iter()
            .rposition(|&b| b == b'/')
            .map(|i| i + 1)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidFilename))?;
        let piece = OsStr::from_bytes(&rest[..cut]);
        let at = held.as_ref().map_or(rustix::fs::CWD, |f| f.as_fd());
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        held = Some(rustix::fs::openat(at, piece, flags, Mode::empty())?);
        rest = &rest[cut + 1..];
    }
    let at = held.as_ref().map_or(rustix::fs::CWD, |f| f.as_fd());
    Ok(rustix::fs::openat(
        at,
        OsStr::from_bytes(rest),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the file `rel` beneath `dir` for reading: not through a link, without blocking on a
/// FIFO put in its place, and without moving its access time where the kernel allows (see
/// `checksum::open_quietly`).
pub(crate) fn open_file(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    match open_beneath(dir, rel, flags | OFlags::NOATIME) {
        // Another user's file: only its owner (or root) may open it without the access time.
        Err(e) if e.raw_os_error() == Some(Errno::PERM.raw_os_error()) => {
            open_beneath(dir, rel, flags).map(File::from)
        }
        opened => opened.map(File::from),
    }
}

/// An entry named through the directory that holds it: that directory, open, and the name in
/// it; and the entry's path, for messages only.
#[derive(Debug)]
pub struct Place {
    /// The directory holding the entry (opened for lookups only; shared where a tree holds it
    /// for the next entry too, see `LocalTree::hidden_place`).
    pub(crate) dir: Arc<OwnedFd>,
    /// The entry's name in it (`.` for a tree's root).
    pub(crate) name: OsString,
    /// Where it is, for messages.
    pub(crate) shown: PathBuf,
}

impl Place {
    /// The directory holding the entry.
    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// What is at this place now (a link is not followed).
    pub(crate) fn stat(&self) -> io::Result<Entry> {
        stat_at(self.dir(), &self.name)
    }
}

/// What is at `name` in `dir` now, not following a link.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Entry> {
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let target = if file_type(&stat) == FileType::Symlink {
        Some(read_link_at(dir, name)?)
    } else {
        None
    };
    let mut entry = entry_of(&stat, target);
    entry.xattrs = meta::digest_at(dir, name);
    Ok(entry)
}

/// The target of the link `name` in `dir`.
pub(crate) fn read_link_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<PathBuf> {
    let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
    Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
}

/// The user this process acts as: the owner of everything it creates.
pub(crate) fn my_uid() -> u32 {
    static UID: OnceLock<u32> = OnceLock::new();
    *UID.get_or_init(|| rustix::process::geteuid().as_raw())
}

/// The group this process acts as.
pub(crate) fn my_gid() -> u32 {
    static GID: OnceLock<u32> = OnceLock::new();
    *GID.get_or_init(|| rustix::process::getegid().as_raw())
}

/// The permission bits a copy may have of an entry whose mode is `mode`, owner `uid` and
/// group `gid`: a copy that does not keep the original's owner (it is ours) never gets its
/// setuid or setgid bit, as with `cp` — else a user's setuid program would become ours
/// (root's), and a user's setgid directory would hand our group to what others create in it;
/// nor its setgid bit where it does not keep the group.
pub(crate) fn grantable(mode: u32, uid: u32, gid: u32) -> u32 {
    let carry = meta::carry();
    if !carry.owner && uid != my_uid() {
        mode & !0o6000
    } else if !carry.group && gid != my_gid() {
        mode & !0o2000
    } else {
        mode
    }
}

/// The entry a `stat` describes, as a copy of it may be (see [`grantable`]; owner and group
/// where they are carried); a link's target is read separately, and the extended attributes
/// (see [`stat_at`]).
// The fields' types differ from one architecture to the next.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn entry_of(stat: &Stat, link_target: Option<PathBuf>) -> Entry {
    let rdev = stat.st_rdev as u64;
    let kind = match file_type(stat) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink(link_target.unwrap_or_default()),
        FileType::Fifo => Kind::Special(Node::Fifo),
        FileType::Socket => Kind::Special(Node::Socket),
        FileType::CharacterDevice => Kind::Special(Node::Char(rdev)),
        FileType::BlockDevice => Kind::Special(Node::Block(rdev)),
        // Linux's st_mode has no other type; should one appear, a FIFO (which holds nothing
        // and is never opened) stands in for it rather than a file whose bytes would be read.
        FileType::Unknown => Kind::Special(Node::Fifo),
    };
    let (uid, gid) = (stat.st_uid as u32, stat.st_gid as u32);
    let carry = meta::carry();
    Entry {
        kind,
        mode: grantable(stat.st_mode as u32 & 0o7777, uid, gid),
        size: stat.st_size as u64,
        mtime: Timestamp {
            secs: stat.st_mtime as i64,
            nanos: stat.st_mtime_nsec as u32,
        },
        ctime: Timestamp {
            secs: stat.st_ctime as i64,
            nanos: stat.st_ctime_nsec as u32,
        },
        ino: stat.st_ino as u64,
        dev: stat.st_dev as u64,
        uid: if carry.owner { uid } else { NOT_CARRIED },
        gid: if carry.group { gid } else { NOT_CARRIED },
        xattrs: 0,
        nlink: stat.st_nlink as u64,
    }
}

/// The kind of entry `stat` describes.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode as _)
}

/// Whether `stat` describes an entry whose setuid or setgid bit a copy loses.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn loses_privilege(stat: &Stat) -> bool {
    let mode = stat.st_mode as u32 & 0o7777;
    grantable(mode, stat.st_uid as u32, stat.st_gid as u32) != mode
}

/// Whether `stat` describes an entry that a copy could have given its owner had the process
/// been allowed to (the owner was asked for and is not ours).
#[allow(clippy::unnecessary_cast)]
pub(crate) fn loses_owner(stat: &Stat) -> bool {
    meta::carry().owner_refused && stat.st_uid as u32 != my_uid()
}

/// The entry `file` is now.
pub(crate) fn entry_of_file(file: &impl AsFd) -> io::Result<Entry> {
    Ok(entry_of(&rustix::fs::fstat(file)?, None))
}

/// The device and inode of `file`.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn identity(file: &impl AsFd) -> io::Result<(u64, u64)> {
    let stat = rustix::fs::fstat(file)?;
    Ok((stat.st_dev as u64, stat.st_ino as u64))
}

/// Whether the kernel's links to open files (`/proc/self/fd`) are there to use.
pub(crate) fn have_proc() -> bool {
    static PROC: OnceLock<bool> = OnceLock::new();
    *PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// The path that names the very object open as `fd` (`/proc/self/fd/N`): what is done
/// through it reaches that object, whatever has its name now.
pub(crate) fn proc_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}
