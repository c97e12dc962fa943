//! Reaching a user's tree: every read and every change of SOURCE, BACKUP, a version being
//! built or a restore's work directory goes through the [`Tree`] interface, implemented once
//! for local trees ([`local::LocalTree`]). A side on another machine is meant to be one more
//! implementation of it: its methods speak of paths relative to the tree's root, entries and
//! digests, never of descriptors or paths of this machine (the one exception, for the
//! kernel's copy between two local trees, answers `None` elsewhere).
//!
//! Below it: `at` reaches an entry beneath a held directory, never by a path resolved again;
//! `ops` holds the safe operations of SPEC §7 (atomic replacement, a re-check against
//! the scan before anything is replaced or removed, new directories built hidden); `read`
//! hashes batches of files; `temp` our
//! temporary names and their journal; `mounts` the file systems mounted inside a tree; `flush`
//! the flushes; `mapped` the hash of a large copy
//! read from a mapping of it.

pub(crate) mod at;
pub mod flush;
pub mod local;
pub(crate) mod mapped;
pub mod meta;
pub mod mounts;
pub mod ops;
pub mod read;
pub mod temp;

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use checksum::Digest;

use crate::model::{Entry, LinkFrom, Meta, Node};
use meta::{Dropped, Xattrs};

pub use at::Place;
pub use local::LocalTree;
pub use ops::{Content, Copied, Dest, OpError, Source};

/// One tree a pass reads or changes. Paths are relative to its root. Every change re-checks,
/// right before it acts, that what it replaces or removes is still what the scan saw.
pub trait Tree: Sync {
    /// How messages name the tree.
    fn name(&self) -> String;

    /// Checks that the root's name still names the root this tree holds; a pass over a root
    /// that someone replaced since is refused.
    fn check_root(&self) -> io::Result<()>;

    /// The entries of the directory `rel`, by name in byte order, without those `skip` names
    /// (not even examined) or that vanished while it was listed.
    ///
    /// Fails if the directory cannot be listed completely, or an entry in it cannot be
    /// examined: what it holds is then unknown, never "nothing".
    fn list(&self, rel: &Path, skip: &dyn Fn(&OsStr) -> bool)
    -> io::Result<Vec<(OsString, Entry)>>;

    /// As [`Tree::list`], but without reading the extended attributes of regular files (their
    /// `xattrs` is 0): a caller that knows which files are unchanged since it last saw their
    /// attributes reads only the others' (with [`Tree::xattrs`]). Reading them costs a
    /// system call per file, as much as the rest of a pass with nothing to do.
    fn list_without_file_xattrs(
        &self,
        rel: &Path,
        skip: &dyn Fn(&OsStr) -> bool,
    ) -> io::Result<Vec<(OsString, Entry)>>;

    /// What copies of the entries listed since the last call cannot keep: setuid and setgid
    /// bits of entries whose copies are not given their owner, and owners the process may not
    /// give (the entries show the mode and owner their copies get).
    fn take_dropped(&self) -> Dropped;

    /// The extended attributes carried of what is at `rel` (a link is not followed).
    fn xattrs(&self, rel: &Path) -> io::Result<Xattrs>;

    /// What is at `rel` now (a link is not followed).
    fn stat(&self, rel: &Path) -> io::Result<Entry>;

    /// The SHA-256 of each file at `rels`, with the time its reading began.
    fn digests(&self, rels: &[&Path]) -> Vec<(io::Result<Digest>, SystemTime)>;

    /// Creates the directory `rel`, private to its owner until [`Tree::finish_dir`].
    fn make_dir(&self, rel: &Path) -> Result<(), OpError>;

    /// Copies `from`'s file `from_rel` (the one the scan saw there, `from_seen`, if given) to
    /// `rel` here, atomically, over what `dest` says, with what `content` says is known of it.
    fn copy_in(
        &self,
        rel: &Path,
        from: &dyn Tree,
        from_rel: &Path,
        from_seen: Option<&Entry>,
        dest: Dest<'_>,
        content: Content<'_>,
    ) -> Result<Copied, OpError>;

    /// Two copies of files whose content nothing knows yet, each to its path here from its
    /// path in `from` (the file the scan saw there, if given), hashed together on one core.
    fn copy_pair_in(
        &self,
        jobs: [(&Path, &Path, Option<&Entry>, Dest<'_>); 2],
        from: &dyn Tree,
    ) -> [Result<Copied, OpError>; 2];

    /// Creates a symbolic link at `rel` (over what `dest` says) with the time, owner and
    /// attributes of `meta` and `xattrs`.
    fn symlink(
        &self,
        rel: &Path,
        target: &Path,
        dest: Dest<'_>,
        meta: &Meta,
        xattrs: &Xattrs,
    ) -> Result<Entry, OpError>;

    /// Creates the FIFO, socket or device `node` at `rel` (over what `dest` says) with `meta`
    /// and `xattrs`; `None` where the process may not create it (counted, not an error).
    fn make_node(
        &self,
        rel: &Path,
        node: Node,
        dest: Dest<'_>,
        meta: &Meta,
        xattrs: &Xattrs,
    ) -> Result<Option<Entry>, OpError>;

    /// Gives the file at `existing` here, if it is still as `expect` says, the further name
    /// `rel` (over what `dest` says): a hard link, as the original has.
    fn link_within(
        &self,
        rel: &Path,
        existing: &Path,
        expect: &Entry,
        dest: Dest<'_>,
    ) -> Result<Entry, OpError>;

    /// Hard-links `existing` (a file of this machine's version store) at the new name `rel`.
    fn hard_link(&self, rel: &Path, existing: &LinkFrom) -> Result<(), OpError>;

    /// Removes what the scan saw at `rel` (a directory once empty).
    fn remove(&self, rel: &Path, seen: &Entry) -> Result<(), OpError>;

    /// Moves what the scan saw at `rel` to `to`, never over anything.
    fn rename_noreplace(&self, rel: &Path, to: &Path, seen: &Entry) -> Result<(), OpError>;

    /// Gives what the scan saw at `rel` the metadata `meta` (and exactly the attributes
    /// `xattrs`, if given); gives what is there after.
    fn set_meta(
        &self,
        rel: &Path,
        seen: &Entry,
        meta: &Meta,
        xattrs: Option<&Xattrs>,
    ) -> Result<Entry, OpError>;

    /// Gives the directory `rel` its final metadata (and exactly the attributes `xattrs`, if
    /// given).
    fn finish_dir(&self, rel: &Path, meta: &Meta, xattrs: Option<&Xattrs>) -> Result<(), OpError>;

    /// Lets its owner add and remove entries in the directory `rel`, whose mode is `mode`.
    fn open_dir(&self, rel: &Path, mode: u32) -> Result<(), OpError>;

    /// Checks that every directory above `rel` is still a real directory, not a link.
    fn check_parents(&self, rel: &Path) -> Result<(), OpError>;

    /// Whether anything is at `rel`.
    fn exists(&self, rel: &Path) -> bool;

    /// Creates a hidden directory in `parent` where a whole new directory is built before
    /// [`Tree::publish_dir`] gives it its name; returns its path.
    fn stage_dir(&self, parent: &Path) -> Result<PathBuf, OpError>;

    /// Gives the hidden directory `staged` the name `to`, if nothing has it.
    fn publish_dir(&self, staged: &Path, to: &Path) -> Result<(), OpError>;

    /// Removes a hidden directory that will not be published, with what it holds.
    fn discard_dir(&self, staged: &Path) -> io::Result<()>;

    /// Makes everything written durable.
    fn flush(&self) -> io::Result<()>;

    /// Runs `work` while what it writes is flushed every `every`.
    fn flushing_while(&self, every: Duration, work: &mut dyn FnMut());

    /// This tree as a local one, for the kernel's copy and rename between two local trees;
    /// `None` for a tree elsewhere.
    fn as_local(&self) -> Option<&LocalTree>;

    // What a version store does to its own names (`.current`, `.gen-G`, `.v-ID`, `_k`): never
    // to a user's entries, which the methods above handle with their re-checks.

    /// The target of the symbolic link `rel`.
    fn read_link(&self, rel: &Path) -> io::Result<PathBuf>;

    /// Creates a symbolic link `rel` pointing to `target`; fails if the name is taken.
    fn make_link(&self, rel: &Path, target: &Path) -> io::Result<()>;

    /// Creates the directory `rel` with the mode new directories get by default.
    fn make_store_dir(&self, rel: &Path) -> io::Result<()>;

    /// Renames `rel` to `to`, replacing what `to` names, in one atomic step.
    fn rename_over(&self, rel: &Path, to: &Path) -> io::Result<()>;

    /// Removes what `rel` names, a whole directory tree included (read-only directories in it
    /// are opened first); nothing there is fine.
    fn remove_all(&self, rel: &Path) -> io::Result<()>;

    /// Makes the names in the directory `rel` durable.
    fn sync_dir(&self, rel: &Path) -> io::Result<()>;

    /// Whether `rel` names something once links are followed (a link to nothing does not).
    fn resolves(&self, rel: &Path) -> bool;

    // What a restore does to the directory that holds DIR: build the restored tree beside it,
    // then swap the two.

    /// Creates a new directory in `parent`, private to its owner, named `prefix` and six
    /// random letters or digits; gives its path.
    fn make_work_dir(&self, parent: &Path, prefix: &str) -> io::Result<PathBuf>;

    /// Swaps what `a` and `b` name, in one atomic step.
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()>;

    /// Moves `rel` to `to_rel` in the tree `to`, never over anything; fails where the two
    /// trees cannot be joined by a rename (another file system, another machine).
    fn move_to(&self, rel: &Path, to: &dyn Tree, to_rel: &Path) -> io::Result<()>;
}
