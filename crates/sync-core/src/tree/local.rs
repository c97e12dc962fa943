//! The [`Tree`] of a directory on this machine. Today its operations resolve paths below the
//! root it was given (with the checks of [`crate::tree::ops`]); holding the root as a
//! directory descriptor and working beneath it is the root-safety issue's, and changes nothing
//! outside this file and `ops`.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use checksum::Digest;

use crate::model::{Entry, LinkFrom, Timestamp};
use crate::tree::ops::{self, Content, Copied, Dest, OpError};
use crate::tree::{Tree, flush};

/// A local directory tree, reached below its root.
#[derive(Debug, Clone)]
pub struct LocalTree {
    root: PathBuf,
}

impl LocalTree {
    /// The tree below `root` (canonical).
    pub fn new(root: impl Into<PathBuf>) -> LocalTree {
        LocalTree { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// `path`, below the root, as a path relative to it.
    fn rel_of(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root).unwrap_or(path).to_path_buf()
    }
}

impl Tree for LocalTree {
    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn list(
        &self,
        rel: &Path,
        skip: &dyn Fn(&OsStr) -> bool,
    ) -> io::Result<Vec<(OsString, Entry)>> {
        list_dir(&self.path(rel), skip)
    }

    fn stat(&self, rel: &Path) -> io::Result<Entry> {
        ops::stat(&self.path(rel))
    }

    fn digests(&self, rels: &[&Path]) -> Vec<(io::Result<Digest>, SystemTime)> {
        let paths: Vec<PathBuf> = rels.iter().map(|rel| self.path(rel)).collect();
        crate::tree::read::read_digests(&paths)
    }

    fn make_dir(&self, rel: &Path) -> Result<(), OpError> {
        ops::create_dir(&self.path(rel))
    }

    fn copy_in(
        &self,
        rel: &Path,
        from: &dyn Tree,
        from_rel: &Path,
        dest: Dest<'_>,
        content: Content<'_>,
    ) -> Result<Copied, OpError> {
        let src = from.local_path(from_rel).ok_or_else(not_local)?;
        ops::copy_file(&src, &self.path(rel), dest, content)
    }

    fn copy_pair_in(
        &self,
        jobs: [(&Path, Dest<'_>); 2],
        from: &dyn Tree,
    ) -> [Result<Copied, OpError>; 2] {
        let [(a, da), (b, db)] = jobs;
        match (from.local_path(a), from.local_path(b)) {
            (Some(sa), Some(sb)) => {
                let (ta, tb) = (self.path(a), self.path(b));
                ops::copy_pair([(&sa, &ta, da), (&sb, &tb, db)])
            }
            _ => [Err(not_local()), Err(not_local())],
        }
    }

    fn symlink(
        &self,
        rel: &Path,
        target: &Path,
        dest: Dest<'_>,
        mtime: Timestamp,
    ) -> Result<Entry, OpError> {
        ops::symlink(target, &self.path(rel), dest, mtime)
    }

    fn hard_link(&self, rel: &Path, existing: &LinkFrom) -> Result<(), OpError> {
        ops::hard_link(
            &existing.path,
            existing.size,
            existing.mtime,
            &self.path(rel),
        )
    }

    fn remove(&self, rel: &Path, seen: &Entry) -> Result<(), OpError> {
        ops::remove(&self.path(rel), seen)
    }

    fn rename_noreplace(&self, rel: &Path, to: &Path, seen: &Entry) -> Result<(), OpError> {
        ops::rename_noreplace(&self.path(rel), &self.path(to), seen)
    }

    fn set_meta(
        &self,
        rel: &Path,
        seen: &Entry,
        mode: u32,
        mtime: Timestamp,
    ) -> Result<Entry, OpError> {
        ops::set_metadata(&self.path(rel), seen, mode, mtime)
    }

    fn finish_dir(&self, rel: &Path, mode: u32, mtime: Option<Timestamp>) -> Result<(), OpError> {
        match mtime {
            Some(mtime) => ops::finish_dir(&self.path(rel), mode, mtime),
            None => ops::set_dir_mode(&self.path(rel), mode),
        }
    }

    fn open_dir(&self, rel: &Path, mode: u32) -> Result<(), OpError> {
        ops::make_writable(&self.path(rel), mode)
    }

    fn check_parents(&self, rel: &Path) -> Result<(), OpError> {
        ops::check_parents(&self.root, rel)
    }

    fn exists(&self, rel: &Path) -> bool {
        std::fs::symlink_metadata(self.path(rel)).is_ok()
    }

    fn stage_dir(&self, parent: &Path) -> Result<PathBuf, OpError> {
        ops::stage_dir(&self.path(parent)).map(|staged| self.rel_of(&staged))
    }

    fn publish_dir(&self, staged: &Path, to: &Path) -> Result<(), OpError> {
        ops::publish_dir(&self.path(staged), &self.path(to))
    }

    fn discard_dir(&self, staged: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(self.path(staged))
    }

    fn flush(&self) -> io::Result<()> {
        flush::flush_fs(&self.root)
    }

    fn flushing_while(&self, every: Duration, work: &mut dyn FnMut()) {
        flush::flushing_while(&self.root, every, work)
    }

    fn local_path(&self, rel: &Path) -> Option<PathBuf> {
        Some(self.path(rel))
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        fs::read_link(self.path(rel))
    }

    fn make_link(&self, rel: &Path, target: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, self.path(rel))
    }

    fn make_store_dir(&self, rel: &Path) -> io::Result<()> {
        fs::create_dir(self.path(rel))
    }

    fn rename_over(&self, rel: &Path, to: &Path) -> io::Result<()> {
        fs::rename(self.path(rel), self.path(to))
    }

    fn remove_all(&self, rel: &Path) -> io::Result<()> {
        let path = self.path(rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if !meta.is_dir() {
            return fs::remove_file(&path);
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(_) => {
                // A version keeps SOURCE's modes: a read-only directory in it is opened first.
                open_tree(&path);
                fs::remove_dir_all(&path)
            }
        }
    }

    fn sync_dir(&self, rel: &Path) -> io::Result<()> {
        fs::File::open(self.path(rel)).and_then(|d| d.sync_all())
    }

    fn resolves(&self, rel: &Path) -> bool {
        fs::metadata(self.path(rel)).is_ok()
    }

    fn make_work_dir(&self, parent: &Path, prefix: &str) -> io::Result<PathBuf> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.path(parent))?
            .keep();
        Ok(self.rel_of(&dir))
    }

    fn exchange(&self, a: &Path, b: &Path) -> io::Result<()> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        renameat_with(CWD, self.path(a), CWD, self.path(b), RenameFlags::EXCHANGE)
            .map_err(io::Error::from)
    }

    fn move_to(&self, rel: &Path, to: &dyn Tree, to_rel: &Path) -> io::Result<()> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        let target = to
            .local_path(to_rel)
            .ok_or_else(|| io::Error::from(io::ErrorKind::CrossesDevices))?;
        renameat_with(CWD, self.path(rel), CWD, target, RenameFlags::NOREPLACE)
            .map_err(io::Error::from)
    }
}

/// Lets its owner into every directory of the tree at `dir`.
fn open_tree(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(listing) = fs::read_dir(dir) {
        for entry in listing.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                open_tree(&entry.path());
            }
        }
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

/// The entries of the directory at `dir`, by name in byte order, without those `skip` names or
/// that vanished while it was listed.
///
/// Fails if the directory cannot be listed completely, or an entry in it cannot be examined:
/// what it holds is then unknown, which must never read as "nothing is here".
fn list_dir(dir: &Path, skip: &dyn Fn(&OsStr) -> bool) -> io::Result<Vec<(OsString, Entry)>> {
    let listing = fs::read_dir(dir)?;
    let mut out = Vec::new();
    for item in listing {
        // A listing that breaks off half-way is as unknown as one that never started.
        let item = item?;
        let name = item.file_name();
        if skip(&name) {
            continue;
        }
        let meta = match item.metadata() {
            Ok(meta) => meta,
            // Vanished between listing and stat: it is simply not there any more.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            // Listed but not searchable (a directory without its x bit), or any other fault.
            Err(err) => return Err(err),
        };
        let target = if meta.file_type().is_symlink() {
            match fs::read_link(dir.join(&name)) {
                Ok(t) => Some(t),
                Err(_) => continue,
            }
        } else {
            None
        };
        out.push((name, ops::entry_of(&meta, target)));
    }
    out.sort_unstable_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    Ok(out)
}
