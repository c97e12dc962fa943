//! The words every part of the engine shares: a scanned entry and its kind, timestamps, the
//! two sides of a pair, the items a plan and the state files speak of, path order, and what a
//! pass reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use checksum::Digest;

/// Which root of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The SOURCE root.
    Source = 0,
    /// The BACKUP root.
    Backup = 1,
}

impl Side {
    /// The other root.
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Backup,
            Side::Backup => Side::Source,
        }
    }

    /// How logs and errors name it.
    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "SOURCE",
            Side::Backup => "BACKUP",
        }
    }
}

/// A point in time with nanoseconds, as the file system stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Timestamp {
    /// Converts to the type `filetime` sets.
    pub fn to_filetime(self) -> filetime::FileTime {
        filetime::FileTime::from_unix_time(self.secs, self.nanos)
    }
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link and its target, never followed.
    Symlink(PathBuf),
    /// A FIFO, socket or device: created as a node, never opened.
    Special(Node),
}

/// A file system node that holds no content of its own: made with `mknod`, never opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// A named pipe.
    Fifo,
    /// A socket's name (no one listens on a copy).
    Socket,
    /// A character device, by its device number.
    Char(u64),
    /// A block device, by its device number.
    Block(u64),
}

/// The value of [`Meta::uid`] or [`Meta::gid`] where owners are not carried: every entry
/// then has the same, so that no owner ever differs.
pub const NOT_CARRIED: u32 = u32::MAX;

/// What is carried with an entry besides its content: permission bits, modification time,
/// owner and group, and extended attributes (ACLs included), as a copy of it may have them
/// (see [`crate::tree::meta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Permission bits (`mode & 0o7777`; a symbolic link's are not carried).
    pub mode: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Owner, or [`NOT_CARRIED`].
    pub uid: u32,
    /// Group, or [`NOT_CARRIED`].
    pub gid: u32,
    /// A digest of the extended attributes that are carried (0 for none); see
    /// [`crate::tree::meta::xattr_digest`].
    pub xattrs: u64,
}

/// What differs between two metadata, for a `-v` line: `mode 644 -> 600, time, owner`. Built
/// for nothing and formatted only where the line is written.
pub struct Differences<'a> {
    /// What is there.
    pub have: &'a Meta,
    /// What is wanted.
    pub want: &'a Meta,
    /// A symbolic link's mode is not its own.
    pub symlink: bool,
}

impl std::fmt::Display for Differences<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (h, w) = (self.have, self.want);
        let mut sep = "";
        let mut part = |f: &mut std::fmt::Formatter<'_>, text: std::fmt::Arguments<'_>| {
            let r = write!(f, "{sep}{text}");
            sep = ", ";
            r
        };
        if !self.symlink && h.mode != w.mode {
            part(f, format_args!("mode {:o} -> {:o}", h.mode, w.mode))?;
        }
        if h.mtime != w.mtime {
            part(f, format_args!("modification time"))?;
        }
        if h.uid != w.uid {
            part(f, format_args!("owner {} -> {}", h.uid, w.uid))?;
        }
        if h.gid != w.gid {
            part(f, format_args!("group {} -> {}", h.gid, w.gid))?;
        }
        if h.xattrs != w.xattrs {
            part(f, format_args!("extended attributes or ACL"))?;
        }
        Ok(())
    }
}

impl Meta {
    /// What differs from `want` (see [`Differences`]).
    pub fn differences<'a>(&'a self, want: &'a Meta, symlink: bool) -> Differences<'a> {
        Differences {
            have: self,
            want,
            symlink,
        }
    }

    /// Metadata with `mode` and `mtime` and nothing else carried: what state files written
    /// before owners and attributes were carried recorded.
    pub fn plain(mode: u32, mtime: Timestamp) -> Meta {
        Meta {
            mode,
            mtime,
            uid: NOT_CARRIED,
            gid: NOT_CARRIED,
            xattrs: 0,
        }
    }

    /// Whether an entry with `self` needs a change to have `want`, for an entry of `kind`
    /// (a symbolic link's mode is not its own).
    pub fn differs(&self, want: &Meta, symlink: bool) -> bool {
        (!symlink && self.mode != want.mode)
            || self.mtime != want.mtime
            || self.uid != want.uid
            || self.gid != want.gid
            || self.xattrs != want.xattrs
    }
}

/// One scanned path: its kind and the metadata that decides whether it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File, directory, link or special.
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`), as a copy may have them.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time: moves on every write and metadata change, and cannot be set by users.
    pub ctime: Timestamp,
    /// Inode number.
    pub ino: u64,
    /// The device of the file system holding it.
    pub dev: u64,
    /// Owner, where owners are carried; else [`NOT_CARRIED`].
    pub uid: u32,
    /// Group, where groups are carried; else [`NOT_CARRIED`].
    pub gid: u32,
    /// Digest of the extended attributes carried (0 for none, or where they are not).
    pub xattrs: u64,
    /// Number of names the inode has.
    pub nlink: u64,
}

impl Entry {
    /// True when `self` is still the object a scan recorded as `seen`: same inode (on the same
    /// device), content stamp and kind. Used before replacing or removing, so a concurrent edit is never lost.
    pub fn unchanged_since(&self, seen: &Entry) -> bool {
        self.kind == seen.kind
            && self.ino == seen.ino
            && self.dev == seen.dev
            && self.size == seen.size
            && self.mtime == seen.mtime
            && self.ctime == seen.ctime
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// The metadata a copy of it carries.
    pub fn meta(&self) -> Meta {
        Meta {
            mode: self.mode,
            mtime: self.mtime,
            uid: self.uid,
            gid: self.gid,
            xattrs: self.xattrs,
        }
    }

    /// Whether a copy of it needs a change to carry `want`.
    pub fn meta_differs(&self, want: &Meta) -> bool {
        self.meta()
            .differs(want, matches!(self.kind, Kind::Symlink(_)))
    }

    /// A hard link shares its inode with other names (a directory's count says nothing of the
    /// kind).
    pub fn is_linked(&self) -> bool {
        self.kind == Kind::File && self.nlink > 1
    }
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A regular file.
    File {
        /// SHA-256 of the content.
        digest: Digest,
        /// Size in bytes.
        size: u64,
        /// Mode, time, owner, attributes.
        meta: Meta,
    },
    /// A directory.
    Dir {
        /// Mode, time, owner, attributes.
        meta: Meta,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points (never followed).
        target: PathBuf,
        /// Time, owner, attributes of the link itself (its mode is not carried).
        meta: Meta,
    },
    /// A FIFO, socket or device node.
    Special {
        /// Which, and its device number.
        node: Node,
        /// Mode, time, owner, attributes.
        meta: Meta,
    },
}

impl Item {
    /// The item of a scanned entry whose content is `digest`; `None` for a file whose content
    /// is unknown.
    pub fn of(entry: &Entry, digest: Option<Digest>) -> Option<Item> {
        let meta = entry.meta();
        Some(match &entry.kind {
            Kind::File => Item::File {
                digest: digest?,
                size: entry.size,
                meta,
            },
            Kind::Dir => Item::Dir { meta },
            Kind::Symlink(target) => Item::Symlink {
                target: target.clone(),
                meta,
            },
            Kind::Special(node) => Item::Special { node: *node, meta },
        })
    }

    /// Its metadata.
    pub fn meta(&self) -> &Meta {
        match self {
            Item::File { meta, .. }
            | Item::Dir { meta }
            | Item::Symlink { meta, .. }
            | Item::Special { meta, .. } => meta,
        }
    }

    /// The same content with the metadata `meta`.
    pub fn with_meta(&self, meta: Meta) -> Item {
        let mut item = self.clone();
        match &mut item {
            Item::File { meta: m, .. }
            | Item::Dir { meta: m }
            | Item::Symlink { meta: m, .. }
            | Item::Special { meta: m, .. } => *m = meta,
        }
        item
    }

    /// Whether `self` and `other` hold the same content (kind, bytes, link target or node),
    /// whatever their metadata.
    pub fn same_content(&self, other: &Item) -> bool {
        match (self, other) {
            (Item::File { digest: a, .. }, Item::File { digest: b, .. }) => a == b,
            (Item::Dir { .. }, Item::Dir { .. }) => true,
            (Item::Symlink { target: a, .. }, Item::Symlink { target: b, .. }) => a == b,
            (Item::Special { node: a, .. }, Item::Special { node: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// Every entry of a tree by relative path, in path order.
pub type Items = BTreeMap<PathBuf, Item>;

/// A tree's items in path order ([`crate::model::path_order`]), their paths borrowed from a
/// scan: what a two-way pass compares, made without a path copy or a map node per entry
/// (building a map checks the order with `Path`'s component-wise comparisons).
#[derive(Debug, Default)]
pub struct ItemList<'a>(Vec<(&'a Path, Item)>);

impl<'a> ItemList<'a> {
    /// Wraps items already in path order, without duplicates.
    pub fn from_sorted(items: Vec<(&'a Path, Item)>) -> ItemList<'a> {
        debug_assert!(
            items
                .iter()
                .is_sorted_by(|a, b| crate::model::path_order(a.0, b.0).is_lt())
        );
        ItemList(items)
    }

    /// Every path and item, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a Path, &Item)> {
        self.0.iter().map(|(rel, item)| (*rel, item))
    }

    /// Every item, in path order.
    pub fn values(&self) -> impl Iterator<Item = &Item> {
        self.0.iter().map(|(_, item)| item)
    }

    /// The item at `rel`, if the list holds one.
    pub fn get(&self, rel: &Path) -> Option<&Item> {
        self.0
            .binary_search_by(|(p, _)| crate::model::path_order(p, rel))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// True if the list holds `rel`.
    pub fn contains(&self, rel: &Path) -> bool {
        self.0
            .binary_search_by(|(p, _)| crate::model::path_order(p, rel))
            .is_ok()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Tests build their trees as maps.
#[cfg(test)]
impl<'a> From<&'a Items> for ItemList<'a> {
    fn from(items: &'a Items) -> ItemList<'a> {
        ItemList(
            items
                .iter()
                .map(|(rel, item)| (rel.as_path(), item.clone()))
                .collect(),
        )
    }
}

/// Which kind of pass a [`PassStats`] reports on, which decides how its summary reads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    /// SOURCE mirrored into BACKUP: one direction.
    #[default]
    Mirror,
    /// Changes carried both ways: a direction per side.
    Twoway,
    /// A version of SOURCE made in the version store (or none, if nothing changed).
    Versioned,
}

/// What a pass did to one side (the side written): entries of every kind, directories
/// included, as the operation lines name them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// Entries that did not exist there before (copied files, new directories, links).
    pub created: u64,
    /// Entries put in the place of what was there (a changed file, a link retargeted).
    pub replaced: u64,
    /// Entries removed.
    pub removed: u64,
    /// Entries whose content was left and whose metadata (mode, time, owner, attributes)
    /// was updated.
    pub metadata: u64,
    /// Bytes of file content written by copies (a hard link writes none).
    pub bytes: u64,
}

/// The version a versioned pass made.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VersionMade {
    /// Its public name in the version store (`_0`, …).
    pub name: String,
    /// Files it holds (hard-linked from a version before, or copied).
    pub files: u64,
    /// Files hard-linked from an earlier version (the store's, or `--link-dest`'s).
    pub linked: u64,
    /// Files copied from SOURCE.
    pub copied: u64,
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassStats {
    /// Which kind of pass it was.
    pub kind: PassKind,
    /// File operations carried out (or, in a dry run, that would be).
    pub operations: u64,
    /// Entries that failed and were skipped.
    pub errors: u64,
    /// Files whose content was read and hashed: to compare them before the plan, and by the
    /// copies that hashed what they copied (counted apart in `hashed_by_copies` too).
    pub hashed: u64,
    /// Of `hashed`, the files a copy read and hashed as it copied them (a file whose digest
    /// was known before the plan is copied unread, and not counted).
    pub hashed_by_copies: u64,
    /// Files whose digest came from the hash cache.
    pub cache_hits: u64,
    /// True if a stop (Ctrl+C, SIGTERM) was requested and left some of the pass undone.
    pub interrupted: bool,
    /// Conflicts settled (two-way passes only): each loser is kept under a conflict name.
    pub conflicts: Option<u64>,
    /// What was done to each side, by [`Side`] (`changes[Side::Backup as usize]` for a
    /// mirror). A versioned pass counts what it wrote into the new version under BACKUP.
    pub changes: [Changes; 2],
    /// The version a versioned pass made, if it made one.
    pub version: Option<VersionMade>,
}

/// A file to hard-link instead of copying: versions are never edited in place, so one that
/// holds the same bytes, mode and time can share its inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFrom {
    /// The tree it is in (a version's directory, the runner's own).
    pub root: PathBuf,
    /// Where it is in that tree: reached beneath `root`, never through a link, since the user
    /// who owns a directory of SOURCE owns its copy in a version too.
    pub rel: PathBuf,
    /// Its size and modification time as recorded: a file edited since is copied instead.
    pub size: u64,
    /// See `size`.
    pub mtime: Timestamp,
}

/// The order of `Path`'s `Ord` (component by component), computed on the raw bytes: for the
/// relative paths a scan makes (no `.`, no empty component, no trailing `/`), comparing bytes
/// with `/` counted as the smallest byte gives the same order, without splitting components.
/// Sorting and merging whole trees spends most of its time here.
pub fn path_order(a: &Path, b: &Path) -> std::cmp::Ordering {
    use std::os::unix::ffi::OsStrExt;
    let (a, b) = (a.as_os_str().as_bytes(), b.as_os_str().as_bytes());
    let common = a.iter().zip(b).position(|(x, y)| x != y);
    match common {
        Some(i) => {
            let key = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
            key(a[i]).cmp(&key(b[i]))
        }
        None => a.len().cmp(&b.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Byte order with `/` lowest agrees with `Path`'s component order on scan paths.
        #[test]
        fn path_order_agrees_with_path_ord(
            a in prop::collection::vec("[ !a._-]{1,3}", 1..4),
            b in prop::collection::vec("[ !a._-]{1,3}", 1..4),
        ) {
            let to_path = |parts: &Vec<String>| parts.iter().collect::<PathBuf>();
            let (pa, pb) = (to_path(&a), to_path(&b));
            // Only the normalized paths a scan makes: no `.`/`..` components.
            prop_assume!(pa.components().all(|c| matches!(c, std::path::Component::Normal(_))));
            prop_assume!(pb.components().all(|c| matches!(c, std::path::Component::Normal(_))));
            prop_assume!(pa.components().count() == a.len() && pb.components().count() == b.len());
            prop_assert_eq!(path_order(&pa, &pb), pa.cmp(&pb));
        }
    }
}
