//! The [`Tree`] of a directory on this machine, held open from the moment it is named: its
//! root is resolved once ([`LocalTree::open`]) and every entry below it is reached from that
//! descriptor (see `tree::at`), so that no one who can change the tree while a pass
//! runs can steer a read or a write outside it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use checksum::Digest;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use crate::model::{Entry, LinkFrom, Meta, Node};
use crate::tree::at::{self, Place, open_beneath};
use crate::tree::meta::{self, Dropped, Handle, Xattrs};
use crate::tree::ops::{self, Content, Copied, Dest, OpError, Source};
use crate::tree::{Tree, flush};

/// A local directory tree, reached beneath its root, which it holds open.
#[derive(Debug, Clone)]
pub struct LocalTree {
    /// The path it was opened by, for messages and to see whether it still names the root.
    root: PathBuf,
    dir: Arc<OwnedFd>,
    /// The root's device and inode.
    id: (u64, u64),
    /// Entries listed since it was last asked whose copies lose their setuid or setgid bit,
    /// and whose copies lose their owner (see [`Tree::take_dropped`]).
    dropped: Arc<[AtomicU64; 2]>,
    /// Directories that cannot be listed this pass, and why (see [`LocalTree::fence`]).
    fenced: Arc<std::sync::RwLock<Vec<(PathBuf, String)>>>,
    /// Deep directories held open (see [`LocalTree::base`]).
    deep: Arc<std::sync::Mutex<DeepDirs>>,
    /// Per thread, the hidden directory it last wrote a file into (see
    /// [`LocalTree::hidden_place`]).
    hidden: Arc<[HeldHidden]>,
}

/// A thread's slot for the hidden directory it last wrote into: its path and the directory.
type HeldHidden = std::sync::Mutex<Option<(PathBuf, Arc<OwnedFd>)>>;

/// Directories far below the root, held open since they were last reached, so that the next
/// operation near one resolves a few hundred names from it rather than thousands from the root
/// (a walk down and back up a chain 10,000 levels deep would otherwise resolve 100 million).
#[derive(Debug, Default)]
struct DeepDirs {
    held: Vec<(PathBuf, Arc<OwnedFd>)>,
    /// The slot the next directory takes once all are held.
    next: usize,
}

/// From this length on, a path's directories are held in [`DeepDirs`]; shorter ones cost too
/// little to resolve to be worth a lock.
const DEEP: usize = 1024;

/// How many deep directories are held at once.
const DEEP_HELD: usize = 32;

/// The most of a path resolved from a held directory before an ancestor on the way is held.
const HOP: usize = 1024;

impl LocalTree {
    /// Opens the directory at `root` (a path given by the user, resolved this once, links
    /// included) and holds it.
    ///
    /// Fails if it cannot be opened as a directory.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<LocalTree> {
        let root = root.into();
        let flags = OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir = match rustix::fs::openat(rustix::fs::CWD, &root, flags, Mode::empty()) {
            Ok(dir) => dir,
            // A directory we may search but not list: held for lookups only.
            Err(rustix::io::Errno::ACCESS) => {
                rustix::fs::openat(rustix::fs::CWD, &root, flags | OFlags::PATH, Mode::empty())?
            }
            Err(e) => return Err(e.into()),
        };
        Ok(LocalTree {
            id: at::identity(&dir)?,
            root,
            dir: Arc::new(dir),
            dropped: Arc::default(),
            fenced: Arc::default(),
            deep: Arc::default(),
            hidden: hidden_slots(),
        })
    }

    /// From now on, the directories `dirs` of this tree cannot be listed (each for its reason),
    /// in place of those fenced before: a pass then changes nothing below them, as below any
    /// directory it cannot read.
    pub fn fence(&self, dirs: Vec<(PathBuf, String)>) {
        *self.fenced.write().unwrap_or_else(|e| e.into_inner()) = dirs;
    }

    /// Why the directory `rel` is fenced, if it is.
    fn fenced(&self, rel: &Path) -> Option<String> {
        let fenced = self.fenced.read().unwrap_or_else(|e| e.into_inner());
        fenced
            .iter()
            .find(|(dir, _)| dir == rel)
            .map(|(_, why)| why.clone())
    }

    /// The directory `rel` of this tree, held as a tree of its own (reached beneath this one).
    ///
    /// Fails if it is not a directory below this root (a link on the way included).
    pub fn subtree(&self, rel: &Path) -> io::Result<LocalTree> {
        let dir = open_beneath(self.fd(), rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(LocalTree {
            id: at::identity(&dir)?,
            root: self.path(rel),
            dir: Arc::new(dir),
            dropped: Arc::default(),
            fenced: Arc::default(),
            deep: Arc::default(),
            hidden: hidden_slots(),
        })
    }

    /// The device and inode of the root this tree holds.
    pub fn identity(&self) -> (u64, u64) {
        self.id
    }

    /// The path the root was opened by.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this tree's root is `other`'s root or lies below it, as the descriptors held
    /// say (climbing `..` from this root), whatever the paths they were opened by now name.
    pub fn lies_within(&self, other: &LocalTree) -> io::Result<bool> {
        let mut here = at::identity(&self.fd())?;
        let mut dir: Option<rustix::fd::OwnedFd> = None;
        loop {
            if here == other.id {
                return Ok(true);
            }
            let from = dir.as_ref().map_or(self.fd(), |d| d.as_fd());
            let up = rustix::fs::openat(
                from,
                "..",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let above = at::identity(&up)?;
            // `/` is its own parent.
            if above == here {
                return Ok(false);
            }
            here = above;
            dir = Some(up);
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    fn path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn place(&self, rel: &Path) -> io::Result<Place> {
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => (parent, name.to_os_string()),
            _ => (Path::new(""), OsString::from(".")),
        };
        Ok(Place {
            dir: Arc::new(self.open_dir_beneath(parent, OFlags::PATH | OFlags::DIRECTORY)?),
            name,
            shown: self.path(rel),
        })
    }

    /// A held directory to reach `rel` from, and what of `rel` is left to resolve below it:
    /// the root; or, for a deep path, the deepest of its ancestors held (see [`DeepDirs`]) that
    /// is still in the tree's name space (a removed directory has no links left).
    fn base<'r>(&self, rel: &'r Path) -> (Arc<OwnedFd>, &'r Path) {
        let bytes = rel.as_os_str().as_bytes();
        if bytes.len() >= DEEP {
            // Compared as bytes: `Path`'s own comparisons go component by component, which for
            // paths of thousands of components costs more than what is saved.
            let deep = self.deep.lock().unwrap_or_else(|e| e.into_inner());
            let below = |dir: &Path| {
                let dir = dir.as_os_str().as_bytes();
                bytes.starts_with(dir) && matches!(bytes.get(dir.len()), None | Some(b'/'))
            };
            let best = deep
                .held
                .iter()
                .filter(|(dir, _)| below(dir))
                .max_by_key(|(dir, _)| dir.as_os_str().len());
            if let Some((dir, fd)) = best
                && rustix::fs::fstat(fd).is_ok_and(|s| s.st_nlink > 0)
            {
                let rest = bytes.get(dir.as_os_str().len() + 1..).unwrap_or_default();
                return (fd.clone(), Path::new(OsStr::from_bytes(rest)));
            }
        }
        (self.dir.clone(), rel)
    }

    /// Holds the directory `dir` (the path `rel`) in [`DeepDirs`].
    fn hold(&self, rel: &Path, dir: &OwnedFd) {
        let Ok(copy) = rustix::io::fcntl_dupfd_cloexec(dir, 0) else {
            return;
        };
        let mut deep = self.deep.lock().unwrap_or_else(|e| e.into_inner());
        let entry = (rel.to_path_buf(), Arc::new(copy));
        if deep.held.len() < DEEP_HELD {
            deep.held.push(entry);
        } else {
            let slot = deep.next;
            deep.held[slot] = entry;
            deep.next = (slot + 1) % DEEP_HELD;
        }
    }

    /// Opens the directory `rel` beneath the root with `flags` (see [`open_beneath`]), from the
    /// deepest of its ancestors held (see [`LocalTree::base`]). Of a deep path, the directory
    /// and an ancestor a little above it are held, so that the next operation nearby, below or
    /// above, resolves a few hundred names at most.
    fn open_dir_beneath(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let (base, rest) = self.base(rel);
        let rest_bytes = rest.as_os_str().as_bytes();
        if rest_bytes.len() <= HOP {
            let dir = open_beneath(base.as_fd(), rest, flags)?;
            if rel.as_os_str().len() >= DEEP && !rest_bytes.is_empty() {
                self.hold(rel, &dir);
            }
            return Ok(dir);
        }
        // Far from anything held: an ancestor half a hop above is opened and held first.
        let cut = rest_bytes[..rest_bytes.len() - HOP / 2]
            .iter()
            .rposition(|&b| b == b'/')
            .unwrap_or(0);
        let (upper, lower) = rest_bytes.split_at(cut);
        let lower = Path::new(OsStr::from_bytes(lower.strip_prefix(b"/").unwrap_or(lower)));
        let ancestor = open_beneath(
            base.as_fd(),
            Path::new(OsStr::from_bytes(upper)),
            OFlags::PATH | OFlags::DIRECTORY,
        )?;
        let rel_bytes = rel.as_os_str().as_bytes();
        let ancestor_rel = &rel_bytes[..rel_bytes.len() - rest_bytes.len() + cut];
        self.hold(Path::new(OsStr::from_bytes(ancestor_rel)), &ancestor);
        let dir = open_beneath(ancestor.as_fd(), lower, flags)?;
        self.hold(rel, &dir);
        Ok(dir)
    }

    /// The directory holding `rel`, opened (for lookups), and `rel`'s name in it (for the
    /// root: the root, and no name).
    fn parent_and_name<'r>(&self, rel: &'r Path) -> Result<(OwnedFd, &'r Path), OpError> {
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => (parent, Path::new(name)),
            _ => (Path::new(""), Path::new("")),
        };
        Ok((self.dir_holding(rel, parent)?, name))
    }

    /// The directory `parent` that holds `rel`, opened for lookups; failing to reach it is a
    /// failed write of `rel`.
    fn dir_holding(&self, rel: &Path, parent: &Path) -> Result<OwnedFd, OpError> {
        self.open_dir_beneath(parent, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|source| OpError::Write {
                path: self.path(rel),
                source,
            })
    }

    /// The place of `rel`, a name in a hidden directory (see [`Dest::Hidden`]): its directory
    /// is held from one file to the next on this thread, since a first copy writes a
    /// directory's files one after the other (which saves resolving the directory from the
    /// root and closing it again for each: on a first copy of small files, a few per cent).
    /// Held only there: no one else can enter a hidden directory, so it cannot be moved
    /// while held; and let go whenever this tree moves or removes a directory of its own
    /// (publishes, discards, renames, exchanges), and at the flush.
    fn hidden_place(&self, rel: &Path) -> Result<Place, OpError> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return self.place_to_write(rel);
        };
        let slot = rayon::current_thread_index().map_or(0, |i| i + 1) % self.hidden.len();
        let mut held = self.hidden[slot].lock().unwrap_or_else(|e| e.into_inner());
        let dir = match &*held {
            Some((dir_rel, dir)) if dir_rel == parent => dir.clone(),
            _ => {
                let dir = Arc::new(self.dir_holding(rel, parent)?);
                *held = Some((parent.to_path_buf(), dir.clone()));
                dir
            }
        };
        Ok(Place {
            dir,
            name: name.to_os_string(),
            shown: self.path(rel),
        })
    }

    /// Lets go of the hidden directories held (see [`LocalTree::hidden_place`]).
    fn drop_hidden(&self) {
        for slot in self.hidden.iter() {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// The place to write `rel` to, as `dest` says it is.
    fn place_for(&self, rel: &Path, dest: Dest<'_>) -> Result<Place, OpError> {
        match dest {
            Dest::Hidden => self.hidden_place(rel),
            Dest::New | Dest::Replace(_) => self.place_to_write(rel),
        }
    }

    /// The place of `rel`, or the error of reaching it as a failed write.
    fn place_to_write(&self, rel: &Path) -> Result<Place, OpError> {
        self.place(rel).map_err(|source| OpError::Write {
            path: self.path(rel),
            source,
        })
    }

    /// The entries of the directory `rel` (see [`Tree::list`]); with `file_xattrs`, the
    /// extended attributes of its files are read too.
    fn list_dir(
        &self,
        rel: &Path,
        skip: &dyn Fn(&OsStr) -> bool,
        file_xattrs: bool,
    ) -> io::Result<Vec<(OsString, Entry)>> {
        if let Some(why) = self.fenced(rel) {
            return Err(io::Error::other(why));
        }
        let dir = self.open_dir_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let (entries, dropped) = list_dir(dir, skip, file_xattrs)?;
        for (counter, n) in self.dropped.iter().zip([dropped.setid, dropped.owners]) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        Ok(entries)
    }

    /// The file `rel`, opened to copy it.
    fn source<'a>(&self, rel: &Path, seen: Option<&'a Entry>) -> Result<Source<'a>, OpError> {
        let shown = self.path(rel);
        let (base, rest) = self.base(rel);
        match at::open_file(base.as_fd(), rest) {
            Ok(file) => Ok(Source { file, seen, shown }),
            Err(source) => Err(OpError::Read {
                path: shown,
                source,
            }),
        }
    }
}

impl Tree for LocalTree {
    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn check_root(&self) -> io::Result<()> {
        let now = rustix::fs::stat(&self.root)?;
        #[allow(clippy::unnecessary_cast)]
        let id = (now.st_dev as u64, now.st_ino as u64);
        if id == self.id {
            Ok(())
        } else {
            Err(io::Error::other(
                "it now names another directory than the one this run started with",
            ))
        }
    }

    fn list(
        &self,
        rel: &Path,
        skip: &dyn Fn(&OsStr) -> bool,
    ) -> io::Result<Vec<(OsString, Entry)>> {
        self.list_dir(rel, skip, true)
    }

    fn list_without_file_xattrs(
        &self,
        rel: &Path,
        skip: &dyn Fn(&OsStr) -> bool,
    ) -> io::Result<Vec<(OsString, Entry)>> {
        self.list_dir(rel, skip, false)
    }

    fn take_dropped(&self) -> Dropped {
        Dropped {
            setid: self.dropped[0].swap(0, Ordering::Relaxed),
            owners: self.dropped[1].swap(0, Ordering::Relaxed),
        }
    }

    fn xattrs(&self, rel: &Path) -> io::Result<Xattrs> {
        let place = self.place(rel)?;
        meta::read(Handle::Entry(place.dir(), &place.name))
    }

    fn stat(&self, rel: &Path) -> io::Result<Entry> {
        self.place(rel)?.stat()
    }

    fn digests(&self, rels: &[&Path]) -> Vec<(io::Result<Digest>, SystemTime)> {
        crate::tree::read::read_digests(rels, &|rel| {
            let (base, rest) = self.base(rel);
            open_regular(base.as_fd(), rest)
        })
    }

    fn make_dir(&self, rel: &Path) -> Result<(), OpError> {
        ops::create_dir(&self.place_to_write(rel)?)
    }

    fn copy_in(
        &self,
        rel: &Path,
        from: &dyn Tree,
        from_rel: &Path,
        from_seen: Option<&Entry>,
        dest: Dest<'_>,
        content: Content<'_>,
    ) -> Result<Copied, OpError> {
        let from = from.as_local().ok_or_else(not_local)?;
        let src = from.source(from_rel, from_seen)?;
        ops::copy_file(src, &self.place_for(rel, dest)?, dest, content)
    }

    fn copy_pair_in(
        &self,
        jobs: [(&Path, &Path, Option<&Entry>, Dest<'_>); 2],
        from: &dyn Tree,
    ) -> [Result<Copied, OpError>; 2] {
        let Some(from) = from.as_local() else {
            return [Err(not_local()), Err(not_local())];
        };
        let opened = jobs.map(|(rel, from_rel, seen, dest)| {
            let place = self.place_for(rel, dest)?;
            Ok((from.source(from_rel, seen)?, place, dest))
        });
        match opened {
            [Ok((sa, pa, da)), Ok((sb, pb, db))] => ops::copy_pair([(sa, &pa, da), (sb, &pb, db)]),
            [a, b] => {
                let one = |job: Result<(Source<'_>, Place, Dest<'_>), OpError>| {
                    job.and_then(|(src, place, dest)| {
                        ops::copy_file(src, &place, dest, Content::Hash(None))
                    })
                };
                [one(a), one(b)]
            }
        }
    }

    fn symlink(
        &self,
        rel: &Path,
        target: &Path,
        dest: Dest<'_>,
        meta: &Meta,
        xattrs: &Xattrs,
    ) -> Result<Entry, OpError> {
        ops::symlink(target, &self.place_to_write(rel)?, dest, meta, xattrs)
    }

    fn make_node(
        &self,
        rel: &Path,
        node: Node,
        dest: Dest<'_>,
        meta: &Meta,
        xattrs: &Xattrs,
    ) -> Result<Option<Entry>, OpError> {
        ops::make_node(node, &self.place_to_write(rel)?, dest, meta, xattrs)
    }

    fn link_within(
        &self,
        rel: &Path,
        existing: &Path,
        expect: &Entry,
        dest: Dest<'_>,
    ) -> Result<Entry, OpError> {
        let from = self.place(existing).map_err(|source| OpError::Read {
            path: self.path(existing),
            source,
        })?;
        ops::link_within(&from, expect, &self.place_to_write(rel)?, dest)
    }

    fn hard_link(&self, rel: &Path, existing: &LinkFrom) -> Result<(), OpError> {
        ops::hard_link(existing, &self.place_to_write(rel)?)
    }

    fn remove(&self, rel: &Path, seen: &Entry) -> Result<(), OpError> {
        ops::remove(&self.place_to_write(rel)?, seen)
    }

    fn rename_noreplace(&self, rel: &Path, to: &Path, seen: &Entry) -> Result<(), OpError> {
        ops::rename_noreplace(&self.place_to_write(rel)?, &self.place_to_write(to)?, seen)
    }

    fn set_meta(
        &self,
        rel: &Path,
        seen: &Entry,
        meta: &Meta,
        xattrs: Option<&Xattrs>,
    ) -> Result<Entry, OpError> {
        ops::set_metadata(&self.place_to_write(rel)?, seen, meta, xattrs)
    }

    fn finish_dir(&self, rel: &Path, meta: &Meta, xattrs: Option<&Xattrs>) -> Result<(), OpError> {
        // Opened for reading at once, in one call (a first copy finishes every directory it
        // made); one we may not read (a user's 0300 directory) as `ops::finish_dir` opens it.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK;
        match self.open_dir_beneath(rel, flags) {
            Ok(dir) => ops::finish_open_dir(dir, &self.path(rel), meta, xattrs),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                let (parent, name) = self.parent_and_name(rel)?;
                ops::finish_dir(parent.as_fd(), name, &self.path(rel), meta, xattrs)
            }
            // Gone, or a link or a file in its place: no longer the directory we made.
            Err(e)
                if matches!(
                    rustix::io::Errno::from_io_error(&e),
                    Some(
                        rustix::io::Errno::NOENT
                            | rustix::io::Errno::NOTDIR
                            | rustix::io::Errno::LOOP
                            | rustix::io::Errno::XDEV
                    )
                ) =>
            {
                Err(OpError::DestinationChanged {
                    path: self.path(rel),
                })
            }
            // Anything else (no descriptor left, say) is a fault of the write, not a change.
            Err(source) => Err(OpError::Write {
                path: self.path(rel),
                source,
            }),
        }
    }

    fn open_dir(&self, rel: &Path, mode: u32) -> Result<(), OpError> {
        let (parent, name) = self.parent_and_name(rel)?;
        ops::make_writable(parent.as_fd(), name, &self.path(rel), mode)
    }

    fn check_parents(&self, rel: &Path) -> Result<(), OpError> {
        // Reaching the parent beneath the root fails where a link or a file stands on the way.
        self.place(rel)
            .map(drop)
            .map_err(|_| OpError::DestinationChanged {
                path: self.path(rel.parent().unwrap_or(rel)),
            })
    }

    fn exists(&self, rel: &Path) -> bool {
        self.stat(rel).is_ok()
    }

    fn stage_dir(&self, parent: &Path) -> Result<PathBuf, OpError> {
        let shown = self.path(parent);
        let dir = self
            .open_dir_beneath(parent, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|source| OpError::Write {
                path: shown.clone(),
                source,
            })?;
        let name = ops::stage_dir(dir.as_fd(), &shown)?;
        Ok(parent.join(name))
    }

    fn publish_dir(&self, staged: &Path, to: &Path) -> Result<(), OpError> {
        self.drop_hidden();
        ops::publish_dir(&self.place_to_write(staged)?, &self.place_to_write(to)?)
    }

    fn discard_dir(&self, staged: &Path) -> io::Result<()> {
        self.remove_all(staged)
    }

    fn flush(&self) -> io::Result<()> {
        // A pass's last step: a version built is renamed by then, and nothing is held past it.
        self.drop_hidden();
        flush::flush_fs(&self.dir)
    }

    fn flushing_while(&self, every: Duration, work: &mut dyn FnMut()) {
        flush::flushing_while(&self.dir, every, work)
    }

    fn as_local(&self) -> Option<&LocalTree> {
        Some(self)
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        let place = self.place(rel)?;
        at::read_link_at(place.dir(), &place.name)
    }

    fn make_link(&self, rel: &Path, target: &Path) -> io::Result<()> {
        let place = self.place(rel)?;
        Ok(rustix::fs::symlinkat(target, place.dir(), &place.name)?)
    }

    fn make_store_dir(&self, rel: &Path) -> io::Result<()> {
        let place = self.place(rel)?;
        Ok(rustix::fs::mkdirat(
            place.dir(),
            &place.name,
            Mode::from_raw_mode(0o777),
        )?)
    }

    fn rename_over(&self, rel: &Path, to: &Path) -> io::Result<()> {
        self.drop_hidden();
        let (from, to) = (self.place(rel)?, self.place(to)?);
        Ok(rustix::fs::renameat(
            from.dir(),
            &from.name,
            to.dir(),
            &to.name,
        )?)
    }

    fn remove_all(&self, rel: &Path) -> io::Result<()> {
        self.drop_hidden();
        let place = match self.place(rel) {
            Ok(place) => place,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        ops::remove_all(place.dir(), &place.name)
    }

    fn sync_dir(&self, rel: &Path) -> io::Result<()> {
        let dir = self.open_dir_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(rustix::fs::fsync(dir)?)
    }

    fn resolves(&self, rel: &Path) -> bool {
        // The store's own links (`.current`) are followed: it is the runner's alone.
        self.place(rel).is_ok_and(|place| {
            rustix::fs::statat(place.dir(), &place.name, AtFlags::empty()).is_ok()
        })
    }

    fn make_work_dir(&self, parent: &Path, prefix: &str) -> io::Result<PathBuf> {
        let place_dir = self.open_dir_beneath(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        let shown = self.path(parent);
        let mut tries = 0;
        loop {
            let name = crate::tree::temp::random_name(prefix);
            match rustix::fs::mkdirat(&place_dir, &name, Mode::from_raw_mode(0o700)) {
                Err(rustix::io::Errno::EXIST) if tries < 100 => tries += 1,
                Err(e) => {
                    return Err(io::Error::new(
                        io::Error::from(e).kind(),
                        format!("cannot create a directory in {}: {e}", shown.display()),
                    ));
                }
                Ok(()) => return Ok(parent.join(name)),
            }
        }
    }

    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        self.drop_hidden();
        let (a, b) = (self.place(a)?, self.place(b)?);
        Ok(rustix::fs::renameat_with(
            a.dir(),
            &a.name,
            b.dir(),
            &b.name,
            RenameFlags::EXCHANGE,
        )?)
    }

    fn move_to(&self, rel: &Path, to: &dyn Tree, to_rel: &Path) -> io::Result<()> {
        let to = to
            .as_local()
            .ok_or_else(|| io::Error::from(io::ErrorKind::CrossesDevices))?;
        self.drop_hidden();
        let (from, target) = (self.place(rel)?, to.place(to_rel)?);
        Ok(rustix::fs::renameat_with(
            from.dir(),
            &from.name,
            target.dir(),
            &target.name,
            RenameFlags::NOREPLACE,
        )?)
    }
}

/// One slot per thread of the pool, and one for any other thread (see
/// [`LocalTree::hidden_place`]).
fn hidden_slots() -> Arc<[HeldHidden]> {
    (0..=rayon::current_num_threads())
        .map(|_| std::sync::Mutex::new(None))
        .collect()
}

/// Opens the file `rel` beneath `root` to hash it: a regular file, or it fails.
fn open_regular(root: BorrowedFd<'_>, rel: &Path) -> io::Result<File> {
    let file = at::open_file(root, rel)?;
    if at::file_type(&rustix::fs::fstat(&file)?) == rustix::fs::FileType::RegularFile {
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file any more",
        ))
    }
}

fn not_local() -> OpError {
    OpError::Read {
        path: PathBuf::new(),
        source: io::Error::new(
            io::ErrorKind::Unsupported,
            "copies between a local tree and another kind are not built yet",
        ),
    }
}

/// The entries of the directory open as `dir`, by name in byte order, without those `skip`
/// names or that vanished while it was listed; and how many of them lose a setuid or setgid
/// bit in a copy (see [`at::grantable`]), and how many their owner.
///
/// Fails if the directory cannot be listed completely, or an entry in it cannot be examined:
/// what it holds is then unknown, which must never read as "nothing is here".
fn list_dir(
    dir: OwnedFd,
    skip: &dyn Fn(&OsStr) -> bool,
    file_xattrs: bool,
) -> io::Result<(Vec<(OsString, Entry)>, Dropped)> {
    let mut listing = rustix::fs::Dir::new(dir)?;
    let mut out = Vec::new();
    let mut dropped = Dropped::default();
    let xattrs = meta::carry().xattrs;
    while let Some(item) = listing.read() {
        // A listing that breaks off half-way is as unknown as one that never started.
        let item = item?;
        let name = OsStr::from_bytes(item.file_name().to_bytes());
        if name == "." || name == ".." || skip(name) {
            continue;
        }
        let fd = listing.fd()?;
        let stat = match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            // Vanished between listing and stat: it is simply not there any more.
            Err(rustix::io::Errno::NOENT) => continue,
            // Any other fault: what is there is unknown.
            Err(err) => return Err(err.into()),
        };
        let target = if at::file_type(&stat) == rustix::fs::FileType::Symlink {
            match at::read_link_at(fd, name) {
                Ok(t) => Some(t),
                Err(_) => continue,
            }
        } else {
            None
        };
        dropped.setid += u64::from(at::loses_privilege(&stat));
        dropped.owners += u64::from(at::loses_owner(&stat));
        let mut entry = at::entry_of(&stat, target);
        if xattrs && (file_xattrs || entry.kind != crate::model::Kind::File) {
            entry.xattrs = meta::digest_at(fd, name);
        }
        out.push((name.to_os_string(), entry));
    }
    out.sort_unstable_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    Ok((out, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Where a held directory lies is what its descriptor says, not its path: once its parent
    /// is moved, it lies in the parent's new place.
    #[test]
    fn a_held_directory_lies_where_its_descriptor_is() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, other) = (dir.path().join("a/b/c"), dir.path().join("other"));
        fs::create_dir_all(&inner).unwrap();
        fs::create_dir(&other).unwrap();
        let held = LocalTree::open(&inner).unwrap();
        let (a, b, elsewhere) = (
            LocalTree::open(dir.path().join("a")).unwrap(),
            LocalTree::open(dir.path().join("a/b")).unwrap(),
            LocalTree::open(&other).unwrap(),
        );
        assert!(held.lies_within(&held).unwrap());
        assert!(held.lies_within(&a).unwrap());
        assert!(held.lies_within(&b).unwrap());
        assert!(!held.lies_within(&elsewhere).unwrap());
        assert!(!a.lies_within(&held).unwrap());
        fs::rename(dir.path().join("a/b"), other.join("b")).unwrap();
        assert!(held.lies_within(&elsewhere).unwrap());
        assert!(!held.lies_within(&a).unwrap());
    }

    #[test]
    fn a_hidden_directory_is_held_only_until_it_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        for name in ["a", "b"] {
            fs::write(src.join(name), name).unwrap();
        }
        let (from, to) = (
            LocalTree::open(&src).unwrap(),
            LocalTree::open(&dst).unwrap(),
        );
        let staged = to.stage_dir(Path::new("")).unwrap();
        let copy = |name: &str| {
            to.copy_in(
                &staged.join(name),
                &from,
                Path::new(name),
                None,
                Dest::Hidden,
                Content::Hash(None),
            )
        };
        // Held from the first file to the next.
        copy("a").unwrap();
        copy("b").unwrap();
        assert_eq!(fs::read(dst.join(&staged).join("b")).unwrap(), b"b");
        to.publish_dir(&staged, Path::new("made")).unwrap();
        // The staged name is gone: a copy there fails, and does not land in the directory it
        // became.
        fs::remove_file(dst.join("made/a")).unwrap();
        assert!(copy("a").is_err());
        assert!(!dst.join("made/a").exists());
    }
}
