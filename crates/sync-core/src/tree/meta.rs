//! What is carried besides content, and how: which metadata this run carries (owners and
//! groups only where the process may set them, extended attributes and ACLs of the namespaces
//! it may write), reading a local entry's extended attributes, and giving an object its owner
//! and attributes through a descriptor held on it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Gid, Uid, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::model::{Meta, NOT_CARRIED};

/// Extended attributes by name, in name order.
pub type Xattrs = Vec<(OsString, Vec<u8>)>;

/// What this run carries, decided once at start-up (see [`set_carry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carry {
    /// Owners are carried (asked for, and the process may set them).
    pub owner: bool,
    /// Groups are carried.
    pub group: bool,
    /// Extended attributes and ACLs are carried.
    pub xattrs: bool,
    /// Owners were asked for but the process may not set them: copies are its own, and their
    /// setuid and setgid bits go (one warning per pass says how many).
    pub owner_refused: bool,
}

/// What the user asked to carry (`--no-owner`, `--no-group`, `--no-xattrs` say no).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Owners.
    pub owner: bool,
    /// Groups.
    pub group: bool,
    /// Extended attributes and ACLs.
    pub xattrs: bool,
}

impl Default for Wanted {
    fn default() -> Wanted {
        Wanted {
            owner: true,
            group: true,
            xattrs: true,
        }
    }
}

static CARRY: OnceLock<Carry> = OnceLock::new();

/// Decides what this run carries; the first call wins (start-up makes it before any tree is
/// read). Without a call, everything the process may set is carried.
pub fn set_carry(wanted: Wanted) {
    let _ = CARRY.set(decide(wanted));
}

/// What this run carries.
pub fn carry() -> Carry {
    *CARRY.get_or_init(|| decide(Wanted::default()))
}

fn decide(wanted: Wanted) -> Carry {
    let may = has_capability(CAP_CHOWN);
    Carry {
        owner: wanted.owner && may,
        group: wanted.group && may,
        xattrs: wanted.xattrs,
        owner_refused: wanted.owner && !may,
    }
}

const CAP_CHOWN: u32 = 0;
const CAP_SYS_ADMIN: u32 = 21;

/// Whether the process holds the capability `cap` (root does, unless its capabilities were
/// taken away).
fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return rustix::process::geteuid().is_root();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// Whether attributes named `name` are carried: `user.*` and ACLs (`system.posix_acl_*`) for
/// everyone; `trusted.*` and `security.*` too where the process may write them (root). One
/// it could read but never write would differ at every pass.
fn carried_name(name: &[u8]) -> bool {
    static ALL: OnceLock<bool> = OnceLock::new();
    name.starts_with(b"user.")
        || name.starts_with(b"system.posix_acl_")
        || (*ALL.get_or_init(|| has_capability(CAP_SYS_ADMIN))
            && (name.starts_with(b"trusted.") || name.starts_with(b"security.")))
}

/// The digest [`Meta::xattrs`] records for `xattrs`: 0 for none.
pub fn xattr_digest(xattrs: &Xattrs) -> u64 {
    if xattrs.is_empty() {
        return 0;
    }
    let mut hasher = Sha256::new();
    for (name, value) in xattrs {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value);
    }
    let digest: [u8; 32] = hasher.finalize().into();
    let head = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    head.max(1)
}

/// An object whose attributes and owner are read or set.
#[derive(Clone, Copy)]
pub(crate) enum Handle<'a> {
    /// A file or directory open for reading.
    Fd(BorrowedFd<'a>),
    /// An object open for lookups only (`O_PATH`: a node, or a file we may not read),
    /// reached through its `/proc/self/fd` link, which leads to the object itself.
    Proc(BorrowedFd<'a>),
    /// The entry of this name in this open directory, a link at its end not followed.
    Entry(BorrowedFd<'a>, &'a OsStr),
}

impl Handle<'_> {
    /// The path that reaches it, for the calls that take one.
    fn path(&self) -> Vec<u8> {
        match self {
            Handle::Fd(fd) | Handle::Proc(fd) => {
                format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes()
            }
            Handle::Entry(dir, name) => {
                let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
                path.extend_from_slice(name.as_bytes());
                path
            }
        }
    }

    fn list(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        match self {
            Handle::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            Handle::Proc(_) => rustix::fs::listxattr(OsStr::from_bytes(&self.path()), buf),
            Handle::Entry(..) => rustix::fs::llistxattr(OsStr::from_bytes(&self.path()), buf),
        }
    }

    fn get(&self, name: &OsStr, buf: &mut [u8]) -> Result<usize, Errno> {
        match self {
            Handle::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
            Handle::Proc(_) => rustix::fs::getxattr(OsStr::from_bytes(&self.path()), name, buf),
            Handle::Entry(..) => rustix::fs::lgetxattr(OsStr::from_bytes(&self.path()), name, buf),
        }
    }

    fn set(&self, name: &OsStr, value: &[u8]) -> Result<(), Errno> {
        let flags = XattrFlags::empty();
        match self {
            Handle::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, flags),
            Handle::Proc(_) => {
                rustix::fs::setxattr(OsStr::from_bytes(&self.path()), name, value, flags)
            }
            Handle::Entry(..) => {
                rustix::fs::lsetxattr(OsStr::from_bytes(&self.path()), name, value, flags)
            }
        }
    }

    fn remove(&self, name: &OsStr) -> Result<(), Errno> {
        match self {
            Handle::Fd(fd) => rustix::fs::fremovexattr(fd, name),
            Handle::Proc(_) => rustix::fs::removexattr(OsStr::from_bytes(&self.path()), name),
            Handle::Entry(..) => rustix::fs::lremovexattr(OsStr::from_bytes(&self.path()), name),
        }
    }
}

/// The attributes carried of `at` (none where attributes are not carried, or the file system
/// has none).
pub(crate) fn read(at: Handle<'_>) -> io::Result<Xattrs> {
    if !carry().xattrs {
        return Ok(Vec::new());
    }
    let mut list = vec![0u8; 256];
    let len = loop {
        match at.list(&mut list) {
            Ok(len) => break len,
            Err(Errno::RANGE) => list.resize(list.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut names: Vec<&[u8]> = list[..len]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty() && carried_name(n))
        .collect();
    names.sort_unstable();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let name = OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        loop {
            match at.get(name, &mut value) {
                Ok(n) => {
                    value.truncate(n);
                    out.push((name.to_os_string(), value));
                    break;
                }
                Err(Errno::RANGE) => value.resize(value.len().max(1024) * 4, 0),
                // Removed since it was listed.
                Err(Errno::NODATA) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
}

/// The digest of the attributes of `name` in the open directory `dir` (looked up there, never
/// through a path resolved from a root); 0 where they cannot be read (a copy reads them
/// again, and says why it cannot).
pub(crate) fn digest_at(dir: BorrowedFd<'_>, name: &OsStr) -> u64 {
    if !carry().xattrs {
        return 0;
    }
    read(Handle::Entry(dir, name)).map_or(0, |x| xattr_digest(&x))
}

/// What copies could not keep of the entries listed, counted per kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Setuid or setgid bits, on copies that do not keep their owner.
    pub setid: u64,
    /// Owners, which the process may not give.
    pub owners: u64,
}

/// What objects could not be given, counted per kind, for one warning per pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Owner or group refused.
    pub owners: u64,
    /// Extended attributes or ACLs refused.
    pub xattrs: u64,
    /// Devices, sockets or FIFOs that could not be created.
    pub nodes: u64,
}

/// Gives `at` the owner and group of `meta`, where carried. Owners first: a change of owner
/// clears the setuid and setgid bits and file capabilities, which the mode and attributes
/// then set. A refusal is counted (see [`take_refused`]), not an error.
pub(crate) fn give_owner(at: Handle<'_>, meta: &Meta) -> io::Result<()> {
    let uid = (meta.uid != NOT_CARRIED).then(|| Uid::from_raw(meta.uid));
    let gid = (meta.gid != NOT_CARRIED).then(|| Gid::from_raw(meta.gid));
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    let done = match at {
        Handle::Fd(fd) => rustix::fs::fchown(fd, uid, gid),
        Handle::Proc(fd) => {
            let flags = AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW;
            rustix::fs::chownat(fd, c"", uid, gid, flags)
        }
        Handle::Entry(dir, name) => {
            rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
        }
    };
    match done {
        Ok(()) => Ok(()),
        Err(e) if refusal(&e.into()) => {
            REFUSED[0].fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Gives `at` exactly the attributes `want` (of those carried): others are removed. A file
/// system or namespace that refuses them is counted (see [`take_refused`]), not an error.
pub(crate) fn give_xattrs(at: Handle<'_>, want: &Xattrs) -> io::Result<()> {
    if !carry().xattrs {
        return Ok(());
    }
    let have = match read(at) {
        Ok(have) => have,
        Err(e) if refusal(&e) => {
            if !want.is_empty() {
                REFUSED[1].fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if &have == want {
        return Ok(());
    }
    let mut all = true;
    for (name, _) in &have {
        if !want.iter().any(|(n, _)| n == name) {
            match at.remove(name) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) if refusal(&e.into()) => all = false,
                Err(e) => return Err(e.into()),
            }
        }
    }
    for (name, value) in want {
        if have.iter().any(|(n, v)| n == name && v == value) {
            continue;
        }
        match at.set(name, value) {
            Ok(()) => {}
            Err(e) if refusal(&e.into()) => all = false,
            Err(e) => return Err(e.into()),
        }
    }
    if !all {
        REFUSED[1].fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Counts a device, socket or FIFO that could not be created.
pub(crate) fn refused_node() {
    REFUSED[2].fetch_add(1, Ordering::Relaxed);
}

/// Owners, attributes and nodes refused since the last call, by kind.
static REFUSED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// What was refused since the last call: a pass takes it at its end for its warnings.
pub fn take_refused() -> Refused {
    let take = |i: usize| REFUSED[i].swap(0, Ordering::Relaxed);
    Refused {
        owners: take(0),
        xattrs: take(1),
        nodes: take(2),
    }
}

/// A refusal by the file system or the kernel's rules, not a fault of the object.
fn refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(
            Errno::NOTSUP
                | Errno::PERM
                | Errno::ACCESS
                | Errno::INVAL
                | Errno::NOSPC
                | Errno::TOOBIG
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn the_digest_of_no_attributes_is_zero_and_others_differ() {
        let one = vec![(OsString::from("user.a"), b"1".to_vec())];
        let two = vec![(OsString::from("user.a"), b"2".to_vec())];
        assert_eq!(xattr_digest(&Vec::new()), 0);
        assert_ne!(xattr_digest(&one), 0);
        assert_ne!(xattr_digest(&one), xattr_digest(&two));
    }

    #[test]
    fn attributes_are_read_and_given_through_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let want = vec![
            (OsString::from("user.a"), b"1".to_vec()),
            (OsString::from("user.b"), Vec::new()),
        ];
        let fd = Handle::Fd(file.as_fd());
        give_xattrs(fd, &want).unwrap();
        assert_eq!(read(fd).unwrap(), want);
        let parent = std::fs::File::open(dir.path()).unwrap();
        let entry = Handle::Entry(parent.as_fd(), OsStr::new("f"));
        assert_eq!(read(entry).unwrap(), want);
        let by_path =
            rustix::fs::open(&path, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        give_xattrs(Handle::Proc(by_path.as_fd()), &want[..1].to_vec()).unwrap();
        assert_eq!(read(fd).unwrap(), want[..1]);
    }
}
