//! Whether the program may rely on a path of its own (issue 20; SECURITY.md rules 5 and 6): its
//! configuration, twoway's state directory, the hash cache, the lock directory, the log file.
//!
//! A path is checked by walking it one component at a time from a held descriptor of `/`, as
//! the kernel would resolve it but looking at each step, so the check cannot be raced. Two rules:
//!
//! - **untouchable** (what ssh asks of its files): the object and every directory its path goes
//!   through belong to the running user or root and are writable by no group or other user; a
//!   directory with the sticky bit (such as /tmp) is allowed above the object, since others
//!   cannot move what is not theirs there. A symbolic link on the way must belong to the running
//!   user or root. Nobody else can then change what the path names, so opening it by path later
//!   is as safe as the check. [`untouchable`], [`untouchable_or_missing`], [`own_dir`].
//! - **no foreign links** (the kernel's `fs.protected_symlinks`, on the whole path): a symbolic
//!   link that belongs to another user is never followed, and the last component is opened with
//!   `O_NOFOLLOW` relative to its held directory, so nothing is ever created through a link.
//!   For the log file, which may lie wherever the user likes. [`open_append`].
//!
//! Each refusal is a [`Distrust`]: one line naming the path, what is wrong and how to mend it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::Error;

/// Why a path cannot be relied on, on one line that names the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distrust {
    kind: io::ErrorKind,
    why: String,
}

impl Distrust {
    /// Another user could change `path`, or has put a link there.
    fn refused(why: String) -> Distrust {
        Distrust {
            kind: io::ErrorKind::PermissionDenied,
            why,
        }
    }

    /// `path` could not be looked at.
    fn io(path: &Path, err: impl Into<io::Error>) -> Distrust {
        let err = err.into();
        Distrust {
            kind: err.kind(),
            why: format!("cannot reach {}: {err}", path.display()),
        }
    }

    /// The run-ending error for `what` (e.g. "the state directory") at `path`.
    pub fn about(self, what: &'static str, path: &Path) -> Error {
        Error::Untrusted {
            what,
            path: path.to_path_buf(),
            why: self.why,
        }
    }
}

impl fmt::Display for Distrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for Distrust {}

impl From<Distrust> for io::Error {
    fn from(d: Distrust) -> io::Error {
        io::Error::new(d.kind, d.why)
    }
}

/// How much a walk asks of what it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Only that no symbolic link of another user is followed.
    NoForeignLinks,
    /// That nobody but the running user and root can change anything on the way.
    Untouchable,
}

/// What a walk does with a component that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// Fails, unless it is the last one.
    Fail,
    /// Ends the walk there: the rest would be made by us, below what was checked.
    Stop,
    /// Makes it, a directory of mode 0700 (then checks it like any other).
    Create,
}

/// Where a walk ended.
struct End {
    /// The directory that holds `name`, held open (`O_PATH`).
    parent: OwnedFd,
    /// The last component, never a symbolic link; `None` when the walk ended on `parent`
    /// itself (the path was `/`, or ended in `..`).
    name: Option<OsString>,
    /// The path reached, through no link: what messages name.
    path: PathBuf,
    /// The last component's own metadata; `None` if it does not exist.
    stat: Option<Stat>,
}

impl End {
    /// The directory the walk ended on, held open.
    fn open_dir(self) -> io::Result<OwnedFd> {
        match &self.name {
            None => Ok(self.parent),
            Some(name) => Ok(rustix::fs::openat(
                &self.parent,
                name.as_os_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?),
        }
    }
}

/// Links followed in one walk before giving up, as the kernel does (`ELOOP`).
const MAX_LINKS: u32 = 40;

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Opens a directory to walk through: `O_PATH`, so one we may search but not read will do.
fn open_step(dir: impl rustix::fd::AsFd, name: &std::ffi::OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Refuses what someone other than the running user or root could change: the object itself,
/// or (`above`) a directory its path goes through.
fn check_untouchable(st: &Stat, path: &Path, above: bool) -> Result<(), Distrust> {
    let (uid, mode) = (st.st_uid, st.st_mode & 0o7777);
    if uid != euid() && uid != 0 {
        return Err(Distrust::refused(format!(
            "{} belongs to user {uid}, who could change it; it must belong to you or root",
            path.display()
        )));
    }
    let sticky_dir = above && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky_dir {
        return Err(Distrust::refused(format!(
            "{} is writable by others (mode {mode:o}); run chmod go-w {}",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Walks `path` from `/` one component at a time (see the module's doc), following the links
/// `rule` allows, and stops at the last component.
fn walk(path: &Path, rule: Rule, missing: Missing) -> Result<End, Distrust> {
    let abs = std::path::absolute(path).map_err(|e| Distrust::io(path, e))?;
    let mut queue: VecDeque<OsString> = VecDeque::new();
    push_components(&mut queue, &abs);
    let root = open_step(CWD, "/".as_ref()).map_err(|e| Distrust::io(Path::new("/"), e))?;
    if rule == Rule::Untouchable {
        let st = rustix::fs::fstat(&root).map_err(|e| Distrust::io(Path::new("/"), e))?;
        check_untouchable(&st, Path::new("/"), true)?;
    }
    // The directories held from `/` down to where the walk is, each with its path: `..` goes
    // back up what was really walked, as the kernel's does.
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root, PathBuf::from("/"))];
    // Links followed and directories made: both bounded, so no walk runs forever.
    let mut steps = 0;
    while let Some(name) = queue.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let last = queue.is_empty();
        let (dir, real) = stack.last().expect("`/` stays on the stack");
        let here = real.join(&name);
        let st = match rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) if missing == Missing::Create && steps < MAX_LINKS => {
                steps += 1;
                match rustix::fs::mkdirat(dir, name.as_os_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(Distrust::io(&here, e)),
                }
                // Looked at again, like any other component: it may not be the one we made.
                queue.push_front(name);
                continue;
            }
            Err(Errno::NOENT) if last || missing == Missing::Stop => {
                let parent = dir.try_clone().map_err(|e| Distrust::io(real, e))?;
                return Ok(End {
                    parent,
                    name: Some(name),
                    path: here,
                    stat: None,
                });
            }
            Err(e) => return Err(Distrust::io(&here, e)),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                if st.st_uid != euid() && st.st_uid != 0 {
                    return Err(Distrust::refused(format!(
                        "{} is a symbolic link that belongs to user {}, who could point it \
                         anywhere; it is not followed (remove it, or give a path without it)",
                        here.display(),
                        st.st_uid
                    )));
                }
                steps += 1;
                if steps > MAX_LINKS {
                    return Err(Distrust::io(&here, Errno::LOOP));
                }
                let target = rustix::fs::readlinkat(dir, name.as_os_str(), Vec::new())
                    .map_err(|e| Distrust::io(&here, e))?;
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                if target.is_absolute() {
                    stack.truncate(1);
                }
                let mut rest = VecDeque::new();
                push_components(&mut rest, &target);
                rest.append(&mut queue);
                queue = rest;
            }
            FileType::Directory if !last => {
                let fd = open_step(dir, &name).map_err(|e| Distrust::io(&here, e))?;
                if rule == Rule::Untouchable {
                    // The descriptor's own metadata: what is held is what was checked.
                    let st = rustix::fs::fstat(&fd).map_err(|e| Distrust::io(&here, e))?;
                    check_untouchable(&st, &here, true)?;
                }
                stack.push((fd, here));
            }
            _ if last => {
                let parent = dir.try_clone().map_err(|e| Distrust::io(real, e))?;
                return Ok(End {
                    parent,
                    name: Some(name),
                    path: here,
                    stat: Some(st),
                });
            }
            _ => return Err(Distrust::io(&here, Errno::NOTDIR)),
        }
    }
    let (dir, real) = stack.pop().expect("`/` stays on the stack");
    let st = rustix::fs::fstat(&dir).map_err(|e| Distrust::io(&real, e))?;
    Ok(End {
        parent: dir,
        name: None,
        path: real,
        stat: Some(st),
    })
}

/// Appends the names of `path` to `queue` (`..` kept as a name, `.` and `/` left out).
fn push_components(queue: &mut VecDeque<OsString>, path: &Path) {
    for c in path.components() {
        match c {
            Component::Normal(n) => queue.push_back(n.to_os_string()),
            Component::ParentDir => queue.push_back("..".into()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}

/// Checks that no one but the running user and root can change `path` (which must exist) or
/// anything its path goes through: config.json and the program it names, twoway's state
/// directory.
///
/// Fails, saying what is wrong and how to mend it, if one of them belongs to another user, is
/// writable by another (a sticky directory above the object excepted), or cannot be reached.
pub fn untouchable(path: &Path) -> Result<(), Distrust> {
    let end = walk(path, Rule::Untouchable, Missing::Fail)?;
    match &end.stat {
        Some(st) => check_untouchable(st, &end.path, false),
        None => Err(Distrust::io(&end.path, Errno::NOENT)),
    }
}

/// As [`untouchable`], for a directory that the program makes when it first needs it (the
/// hash cache's): what exists of `path` is checked; what does not will be made by us, below
/// directories no one else can change.
///
/// Fails as [`untouchable`] does.
pub fn untouchable_or_missing(path: &Path) -> Result<(), Distrust> {
    let end = walk(path, Rule::Untouchable, Missing::Stop)?;
    match &end.stat {
        Some(st) => check_untouchable(st, &end.path, false),
        None => Ok(()),
    }
}

/// The directory `path`, made (mode 0700, with any missing parent) if it does not exist, held
/// open, with the path it was reached by: a directory of the running user's own, which the
/// path to it does not let anyone else change (see [`untouchable`]), for files whose names
/// others could guess (the lock files).
///
/// Fails if `path` is not such a directory (it belongs to someone else, even root, or others
/// may write in it), or cannot be made or reached.
pub fn own_dir(path: &Path) -> Result<(OwnedFd, PathBuf), Distrust> {
    let end = walk(path, Rule::Untouchable, Missing::Create)?;
    let real = end.path.clone();
    let fd = end.open_dir().map_err(|e| Distrust::io(&real, e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| Distrust::io(&real, e))?;
    if st.st_uid != euid() {
        return Err(Distrust::refused(format!(
            "{} belongs to user {}, not to you (user {}); remove it, and it is made again",
            real.display(),
            st.st_uid,
            euid()
        )));
    }
    check_untouchable(&st, &real, false)?;
    Ok((fd, real))
}

/// Opens `path` for appending, made (mode 0666 less the umask) if missing, never through a
/// symbolic link that another user owns: links of the running user or root on the way are
/// followed, the file itself is opened with `O_NOFOLLOW` from its held directory, so a link
/// put there in the meantime is refused rather than followed.
///
/// Fails, with a message naming the link, if the path leads through another user's link, or
/// if the file cannot be opened.
pub fn open_append(path: &Path) -> io::Result<File> {
    let end = walk(path, Rule::NoForeignLinks, Missing::Fail)?;
    let Some(name) = end.name else {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            format!("{} is a directory", end.path.display()),
        ));
    };
    let fd = rustix::fs::openat(
        &end.parent,
        name.as_os_str(),
        OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NOCTTY
            | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, lchown, symlink};

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The tests run as root, who can make things belong to another user.
    fn as_root() -> bool {
        euid() == 0
    }

    #[test]
    fn a_private_tree_is_untouchable_and_a_writable_or_foreign_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/config.json");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(&file, "{}").unwrap();
        chmod(&file, 0o644);
        chmod(&dir.path().join("sub"), 0o755);
        assert_eq!(untouchable(&file), Ok(()));

        chmod(&dir.path().join("sub"), 0o775);
        let err = untouchable(&file).unwrap_err().to_string();
        assert!(
            err.contains("sub is writable by others (mode 775)"),
            "{err}"
        );
        // A sticky directory above is fine; as the object, it is not.
        chmod(&dir.path().join("sub"), 0o1777);
        assert_eq!(untouchable(&file), Ok(()));
        assert!(untouchable(&dir.path().join("sub")).is_err());
        chmod(&dir.path().join("sub"), 0o755);

        if as_root() {
            lchown(&file, Some(65534), None).unwrap();
            let err = untouchable(&file).unwrap_err().to_string();
            assert!(err.contains("belongs to user 65534"), "{err}");
        }
    }

    #[test]
    fn links_of_another_user_are_never_followed_and_own_ones_are() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        symlink("real", &link).unwrap();
        // Followed, and `..` goes back up what was really walked.
        assert_eq!(untouchable(&link.join("..").join("real")), Ok(()));
        let mut f = open_append(&link.join("log")).unwrap();
        io::Write::write_all(&mut f, b"x").unwrap();
        assert_eq!(std::fs::read(real.join("log")).unwrap(), b"x");

        if as_root() {
            lchown(&link, Some(65534), Some(65534)).unwrap();
            let err = open_append(&link.join("log")).unwrap_err().to_string();
            assert!(err.contains("link that belongs to user 65534"), "{err}");
            assert!(untouchable(&link).is_err());
        }
    }

    #[test]
    fn the_file_itself_is_never_opened_through_a_link_that_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "kept").unwrap();
        let log = dir.path().join("run.log");
        symlink(&target, &log).unwrap();
        // Our own link is followed.
        open_append(&log).unwrap();
        if as_root() {
            lchown(&log, Some(65534), None).unwrap();
            assert!(open_append(&log).is_err());
            // Nor is a missing target made through one.
            let dangling = dir.path().join("new.log");
            symlink(dir.path().join("made"), &dangling).unwrap();
            lchown(&dangling, Some(65534), None).unwrap();
            assert!(open_append(&dangling).is_err());
            assert!(!dir.path().join("made").exists());
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
    }

    #[test]
    fn own_dir_is_made_private_and_must_be_ours_alone() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("a/b/locks");
        let (_fd, real) = own_dir(&locks).unwrap();
        assert_eq!(real, locks);
        let mode = std::fs::metadata(&locks).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Made once, found again.
        own_dir(&locks).unwrap();

        chmod(&locks, 0o770);
        assert!(own_dir(&locks).unwrap_err().to_string().contains("go-w"));
        chmod(&locks, 0o700);

        // A link where the directory should be is followed only if ours, and is then checked
        // like the directory it leads to.
        let elsewhere = dir.path().join("elsewhere");
        symlink(dir.path().join("a"), &elsewhere).unwrap();
        own_dir(&elsewhere.join("b/locks")).unwrap();
        if as_root() {
            lchown(&elsewhere, Some(65534), None).unwrap();
            assert!(own_dir(&elsewhere.join("b/locks")).is_err());
            std::os::unix::fs::chown(&locks, Some(65534), None).unwrap();
            let err = own_dir(&locks).unwrap_err().to_string();
            assert!(err.contains("belongs to user 65534, not to you"), "{err}");
        }
    }

    #[test]
    fn a_missing_tail_is_fine_below_untouchable_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(untouchable_or_missing(&dir.path().join("x/y/z")), Ok(()));
        chmod(dir.path(), 0o777);
        assert!(untouchable_or_missing(&dir.path().join("x/y/z")).is_err());
        chmod(dir.path(), 0o700);
    }
}
