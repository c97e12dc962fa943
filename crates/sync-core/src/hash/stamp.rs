//! What identifies one state of a file's content (its [`Stamp`]), when a fresh digest may be
//! remembered under it ([`is_racy`]), and the byte layout of stamps in the cache file.

use std::path::Path;
use std::time::{Duration, SystemTime};

use checksum::Digest;

use crate::model::{Entry, Timestamp};

/// What identifies one state of a file's content: it changes whenever the content may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
    /// Inode number.
    pub ino: u64,
    /// The digest of the file's extended attributes in this state (see
    /// [`crate::tree::meta::xattr_digest`]): remembered with it, not part of what identifies
    /// it (a change of attribute moves the change time).
    pub xattrs: u64,
}

impl Stamp {
    /// The stamp of a scanned file.
    pub fn of(entry: &Entry) -> Stamp {
        Stamp {
            size: entry.size,
            mtime: entry.mtime,
            ctime: entry.ctime,
            ino: entry.ino,
            xattrs: entry.xattrs,
        }
    }

    /// Whether `entry` is still in the state this stamp records: same size, times and inode.
    /// Its attributes need not have been read: they changed only if the change time moved.
    pub fn holds(&self, entry: &Entry) -> bool {
        self.size == entry.size
            && self.mtime == entry.mtime
            && self.ctime == entry.ctime
            && self.ino == entry.ino
    }
}

/// How close to "now" a change time must be for a hash to be unsafe to cache, on a file
/// system whose timestamps advance in coarse ticks. Two writes in one tick leave size, mtime
/// and ctime equal, so a file changed within a tick of being hashed could change again unseen
/// (git's "racy clean" problem). Ticks are jiffies (1–10 ms) where timestamps have
/// nanoseconds, whole seconds where they do not.
fn coarse_window(entry: &Entry) -> Duration {
    if entry.mtime.nanos == 0 && entry.ctime.nanos == 0 {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(20)
    }
}

/// How a root's file system stamps changes, which decides when a fresh hash may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamps {
    /// Multigrain timestamps (Linux 6.13+ on ext4, XFS, Btrfs, tmpfs): once a file's ctime has
    /// been read (our scan does), its next change gets a finer, strictly later ctime, so a
    /// hash taken after the scan can always be cached. Only on the root's own file system
    /// (device `dev`), and only for files whose times have a part below the second: an ext4
    /// made with 128-byte inodes keeps whole seconds only, and a file system mounted below the
    /// root may be any other.
    MultiGrain {
        /// The device of the root's file system.
        dev: u64,
    },
    /// Coarse ticks: a file changed within a tick of being hashed is hashed again next time.
    Coarse,
}

impl Timestamps {
    /// Finds out how the file system holding `root` stamps changes.
    pub fn of(root: &Path) -> Timestamps {
        // Magic numbers from statfs(2).
        const EXT4: i64 = 0xEF53;
        const XFS: i64 = 0x5846_5342;
        const BTRFS: i64 = 0x9123_683E;
        const TMPFS: i64 = 0x0102_1994;
        let multigrain_fs =
            rustix::fs::statfs(root).is_ok_and(|s| [EXT4, XFS, BTRFS, TMPFS].contains(&s.f_type));
        match rustix::fs::stat(root) {
            #[allow(clippy::unnecessary_cast)]
            Ok(stat) if multigrain_fs && kernel_at_least(6, 13) => Timestamps::MultiGrain {
                dev: stat.st_dev as u64,
            },
            _ => Timestamps::Coarse,
        }
    }
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// True if `entry`, hashed from `hashed_at` on, may have changed since without its stamp
/// showing it.
pub fn is_racy(entry: &Entry, hashed_at: SystemTime, stamps: Timestamps) -> bool {
    if let Timestamps::MultiGrain { dev } = stamps
        && entry.dev == dev
        && entry.ctime.nanos != 0
    {
        return false;
    }
    let ctime =
        SystemTime::UNIX_EPOCH + Duration::new(entry.ctime.secs.max(0) as u64, entry.ctime.nanos);
    match hashed_at.duration_since(ctime) {
        Ok(age) => age < coarse_window(entry),
        Err(_) => true,
    }
}

/// Appends `stamp` in the layout both cache files use (48 bytes, little-endian).
pub(crate) fn encode_stamp(out: &mut Vec<u8>, stamp: &Stamp) {
    out.extend_from_slice(&stamp.size.to_le_bytes());
    out.extend_from_slice(&stamp.mtime.secs.to_le_bytes());
    out.extend_from_slice(&stamp.mtime.nanos.to_le_bytes());
    out.extend_from_slice(&stamp.ctime.secs.to_le_bytes());
    out.extend_from_slice(&stamp.ctime.nanos.to_le_bytes());
    out.extend_from_slice(&stamp.ino.to_le_bytes());
    out.extend_from_slice(&stamp.xattrs.to_le_bytes());
}

/// Reads the fields of a cache file from the front of a byte slice; `None` once the bytes
/// run out (damage), never a panic.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    /// A stamp as [`encode_stamp`] writes it.
    pub(crate) fn stamp(&mut self) -> Option<Stamp> {
        Some(Stamp {
            size: self.u64()?,
            mtime: Timestamp {
                secs: self.i64()?,
                nanos: self.u32()?,
            },
            ctime: Timestamp {
                secs: self.i64()?,
                nanos: self.u32()?,
            },
            ino: self.u64()?,
            xattrs: self.u64()?,
        })
    }
    pub(crate) fn digest(&mut self) -> Option<Digest> {
        self.take(32)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    fn entry(size: u64, ino: u64) -> Entry {
        Entry {
            kind: Kind::File,
            mode: 0o644,
            size,
            mtime: Timestamp { secs: 5, nanos: 6 },
            ctime: Timestamp { secs: 7, nanos: 8 },
            ino,
            dev: 1,
            uid: 0,
            gid: 0,
            xattrs: 0,
            nlink: 1,
        }
    }

    #[test]
    fn recent_change_is_racy_and_old_one_is_not() {
        let mut e = entry(1, 1);
        let now = SystemTime::now();
        let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        e.ctime = Timestamp {
            secs: since.as_secs() as i64,
            nanos: since.subsec_nanos().max(1),
        };
        assert!(is_racy(&e, now, Timestamps::Coarse));
        assert!(!is_racy(&e, now, Timestamps::MultiGrain { dev: 1 }));
        // On another file system than the root's, which may have coarse ticks.
        assert!(is_racy(&e, now, Timestamps::MultiGrain { dev: 2 }));
        // Whole seconds: a file system that keeps no finer times (ext4 with small inodes).
        let whole = Entry {
            mtime: Timestamp {
                secs: e.ctime.secs,
                nanos: 0,
            },
            ctime: Timestamp {
                secs: e.ctime.secs,
                nanos: 0,
            },
            ..e.clone()
        };
        assert!(is_racy(&whole, now, Timestamps::MultiGrain { dev: 1 }));
        e.ctime.secs -= 10;
        assert!(!is_racy(&e, now, Timestamps::Coarse));
    }
}
