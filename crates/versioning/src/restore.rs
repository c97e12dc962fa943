//! `twoway DIR --restore [--version latest|previous|NAME|DATE]`: bring a directory back from its
//! versions, even after it was deleted, without ever leaving it half-restored.
//!
//! The chosen version is verified against its manifest, copied (never hard-linked to the
//! version, so later edits cannot reach into the history; names that share an inode in it
//! share one copy) into a temporary directory beside DIR, given the version's root metadata,
//! and swapped into place in one `rename` (an exchange when DIR exists). What DIR held before
//! is kept under `__versions__/KEY/before-restore-STAMP`, so a restore can be undone.
//!
//! `--path REL` brings back only those paths, each built in a work directory beside it and
//! swapped in on its own (what it replaced kept at `before-restore-STAMP/REL`); `--target
//! OTHER` writes into a new or empty directory and leaves DIR alone. A directory that cannot
//! be renamed (a mount point) is restored beneath itself: what it held is copied to the
//! version store first, the version built in a work directory inside it, then moved up.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use sync_core::apply::{Applier, Target};
use sync_core::hash::Learner;
use sync_core::model::Side;
use sync_core::plan::step::{Known, Step, Steps, arrive, finish};
use sync_core::run::lock::{Lock, LockDir};
use sync_core::run::places::absolute_dir;
use sync_core::scan::Scanned;
use sync_core::tree::{LocalTree, OpError, Tree};
use sync_core::{Error, error::one_line};

pub use crate::history::Choice as Which;
use crate::history::{read_kept, store_of};
use crate::manifest::{Item, Manifest};
use crate::store::{KEPT_BY_PATH_RESTORE, KEPT_BY_RESTORE, Store, Version};
use crate::verify::verify_tree;

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The directory written: DIR, or the target.
    pub dir: PathBuf,
    /// DIR, whose version was restored.
    pub from: PathBuf,
    /// Where its former content was put, if it existed.
    pub kept: Option<PathBuf>,
    /// Entries written.
    pub entries: usize,
}

fn fail(message: String) -> Error {
    Error::Versions(message)
}

/// Logs what restoring `manifest`'s version (only `paths` of it, if any are given) into `dir`,
/// which holds `now` (`None`: nothing yet), would create, replace and remove, and changes
/// nothing; gives how many entries would change. A file counts as replaced when its kind,
/// size, time, mode, owner or attributes differ from the version's (its bytes are not read: a
/// file edited without any of those moving is not seen). `keeps`: what is replaced would be
/// kept.
fn dry_run_changes(
    dir: &Path,
    now: Option<&LocalTree>,
    manifest: &Manifest,
    paths: &[PathBuf],
    keeps: bool,
) -> Result<usize, Error> {
    let now = match now {
        Some(tree) => Some(sync_core::scan::scan(tree, "DIR", &Default::default())?),
        None => None,
    };
    let mut changes = 0;
    let mut say = |what: &str, rel: &Path| {
        log::info!(
            "dry run: would {what} {}",
            sync_core::display::Escaped(&dir.join(rel))
        );
        changes += 1;
    };
    let empty = Scanned::default();
    let held = now.as_ref().unwrap_or(&empty);
    let chosen = |rel: &Path| paths.is_empty() || paths.iter().any(|p| rel.starts_with(p));
    // Directories above a chosen path are made where missing, never changed where present.
    let above = |rel: &Path| paths.iter().any(|p| p != rel && p.starts_with(rel));
    for (rel, item) in &manifest.items {
        match held.entries.get(rel) {
            None if chosen(rel) || above(rel) => say("create", rel),
            None => {}
            Some(_) if !chosen(rel) => {}
            Some(entry) => {
                let same = match (item, &entry.kind) {
                    (Item::File { size, .. }, sync_core::model::Kind::File) => {
                        *size == entry.size && !entry.meta_differs(item.meta())
                    }
                    (Item::Dir { .. }, sync_core::model::Kind::Dir) => {
                        !entry.meta_differs(item.meta())
                    }
                    (Item::Symlink { target, .. }, sync_core::model::Kind::Symlink(t)) => {
                        t == target && !entry.meta_differs(item.meta())
                    }
                    (Item::Special { node, .. }, sync_core::model::Kind::Special(n)) => {
                        n == node && !entry.meta_differs(item.meta())
                    }
                    _ => false,
                };
                if !same {
                    say("replace", rel);
                }
            }
        }
    }
    for rel in held.entries.keys() {
        if chosen(rel) && !manifest.items.contains_key(rel) {
            say("remove", rel);
        }
    }
    if keeps && now.is_some() {
        log::info!(
            "dry run: what the restore would replace or remove would be kept in the version store"
        );
    }
    Ok(changes)
}

/// What a restore writes, and where.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only these paths of DIR (relative to it, each a file, link, node or whole directory);
    /// all of DIR when empty.
    pub paths: Vec<PathBuf>,
    /// Write into this directory (absent or empty) instead of over DIR, which stays as it is.
    pub target: Option<PathBuf>,
    /// Log what would be created, replaced and removed; change nothing.
    pub dry_run: bool,
}

/// The version a restore brings back, verified against its manifest, and the locks that keep
/// the pair's syncs and the versioning child away while it is copied.
struct Chosen {
    /// DIR, absolute.
    dir: PathBuf,
    /// The version store of DIR.
    vdir: PathBuf,
    manifest: Manifest,
    /// The version's directory, held.
    version: LocalTree,
    /// What the verification found in it.
    held: Scanned,
    _locks: [Lock; 2],
}

/// Chooses `which` version of `dir` from the store `state_dir`'s `.info.json` names, and
/// verifies it against its manifest.
///
/// Fails, having changed nothing, if the state directory could be changed by another user,
/// `dir` is unknown to `.info.json`, a twoway of its pair (or a versioning child) is running,
/// or the version does not exist or does not match its manifest.
fn chosen_version(
    state_dir: &Path,
    dir: &Path,
    which: Which,
    some_paths: bool,
) -> Result<Chosen, Error> {
    let (dir, vdir) = store_of(state_dir, dir)?;
    let locks = LockDir::open()?;
    let pair = locks.lock_path(&dir)?;
    let versions_lock = locks.lock_dir(&vdir)?;
    let store = Store::open(&vdir).map_err(|e| fail(one_line(&e)))?;
    let kept = match &which {
        Which::Named(name) => store
            .kept_by_restores()
            .into_iter()
            .find(|k| &k.name == name),
        _ => None,
    };
    let (version, manifest, held) = match kept {
        // Undoing a restore: what it replaced has no manifest; it is read whole instead.
        Some(kept) if kept.name.starts_with(KEPT_BY_PATH_RESTORE) && !some_paths => {
            return Err(fail(format!(
                "{} holds only the paths a restore with --path replaced; restore them with the \
                 same --path (twoway {} --restore --version {} --path REL)",
                kept.name,
                dir.display(),
                kept.name
            )));
        }
        Some(kept) => read_kept(&kept.dir)?,
        None => {
            let versions = store.versions();
            let chosen = which.pick(&versions).ok_or_else(|| {
                fail(format!(
                    "there is no version {which} of {} in {} (twoway {} --versions lists them)",
                    dir.display(),
                    vdir.display(),
                    dir.display()
                ))
            })?;
            verified(chosen)?
        }
    };
    Ok(Chosen {
        dir,
        vdir,
        manifest,
        version,
        held,
        _locks: [pair, versions_lock],
    })
}

/// `version`'s tree, held, with its manifest and what a check of the one against the other
/// found in it.
///
/// Fails if the version cannot be read or does not match its manifest.
fn verified(version: &Version) -> Result<(LocalTree, Manifest, Scanned), Error> {
    let manifest = version.manifest().map_err(|e| fail(one_line(&e)))?;
    let tree = LocalTree::open(&version.dir).map_err(|source| Error::ListRoot {
        role: "version",
        path: version.dir.clone(),
        source,
    })?;
    let (problems, held) = verify_tree(&tree, &manifest)?;
    if let Some(first) = problems.first() {
        return Err(fail(format!(
            "the version in {} does not match its manifest ({} differences, first: {first}); nothing was restored",
            version.dir.display(),
            problems.len()
        )));
    }
    Ok((tree, manifest, held))
}

/// The refusal of a `--target` in the version stores `stores`.
fn inside_stores(target: &Path, stores: &Path) -> Error {
    fail(format!(
        "--target {} is inside the version stores {}: give a directory outside them; nothing \
         was restored",
        target.display(),
        stores.display()
    ))
}

/// The `--path`s as relative paths without `.`, each once, none below another given one.
///
/// Fails, naming it, on a path that is absolute, holds `..` or names DIR itself.
fn checked_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut out: Vec<PathBuf> = Vec::new();
    for given in paths {
        let shown = given.display();
        let mut rel = PathBuf::new();
        for part in given.components() {
            match part {
                Component::Normal(name) => rel.push(name),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(fail(format!(
                        "--path {shown} contains `..`: give a path inside DIR; nothing was restored"
                    )));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(fail(format!(
                        "--path {shown} is absolute: give a path relative to DIR; nothing was restored"
                    )));
                }
            }
        }
        if rel.as_os_str().is_empty() {
            return Err(fail(format!(
                "--path {shown} names DIR itself: leave --path out to restore all of it"
            )));
        }
        out.push(rel);
    }
    out.sort();
    // A path below another given one comes back with it.
    let mut kept: Vec<PathBuf> = Vec::new();
    for rel in out {
        if !kept.iter().any(|k| rel.starts_with(k)) {
            kept.push(rel);
        }
    }
    Ok(kept)
}

/// The directory at `path`, held, or `None` if nothing is there.
fn open_existing(path: &Path, role: &'static str) -> Result<Option<LocalTree>, Error> {
    match LocalTree::open(path) {
        Ok(tree) => Ok(Some(tree)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Inaccessible {
            role,
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Restores `dir` (or, with `options.paths`, those paths of it) from the versions recorded
/// in `state_dir`, over `dir` or into `options.target`.
///
/// Fails, having changed nothing, if the version cannot be chosen (see `chosen_version`), a
/// path is absolute, holds `..`, is not in the version or lies below something in `dir`
/// that is not a directory, the target is not an empty directory, overlaps `dir` or lies in
/// the version stores, or the copy fails.
pub fn restore(
    state_dir: &Path,
    dir: &Path,
    which: Which,
    options: &Options,
) -> Result<Restored, Error> {
    let paths = checked_paths(&options.paths)?;
    let target = match &options.target {
        Some(t) => Some(absolute_dir(t).map_err(|source| Error::Inaccessible {
            role: "--target",
            path: t.clone(),
            source,
        })?),
        None => None,
    };
    let c = chosen_version(state_dir, dir, which, !paths.is_empty())?;
    for rel in &paths {
        if !c.manifest.items.contains_key(rel) {
            return Err(fail(format!(
                "--path {} is not in the chosen version of {}; nothing was restored",
                rel.display(),
                c.dir.display()
            )));
        }
    }
    let stores = c.vdir.parent().unwrap_or(&c.vdir);
    let stores = absolute_dir(stores).unwrap_or_else(|_| stores.to_path_buf());
    let into = target.clone().unwrap_or_else(|| c.dir.clone());
    let role = if target.is_some() { "--target" } else { "DIR" };
    let now = open_existing(&into, role)?;
    if let Some(t) = &target {
        if t.starts_with(&c.dir) || c.dir.starts_with(t) {
            return Err(fail(format!(
                "--target {} overlaps {}: give a directory outside it; nothing was restored",
                t.display(),
                c.dir.display()
            )));
        }
        // Versions are never edited in place, and a store holds only what twoway puts there.
        // (Checked again below on the directory really opened.)
        if t.starts_with(&stores) {
            return Err(inside_stores(t, &stores));
        }
        let empty = now.as_ref().map(|tree| {
            tree.list(Path::new(""), &|_| false)
                .map(|listing| listing.is_empty())
        });
        match empty {
            None | Some(Ok(true)) => {}
            Some(Ok(false)) => {
                return Err(fail(format!(
                    "--target {} is not empty: give a new or empty directory; nothing was restored",
                    t.display()
                )));
            }
            Some(Err(source)) => {
                return Err(Error::Inaccessible {
                    role: "--target",
                    path: t.clone(),
                    source,
                });
            }
        }
    }
    if let Some(tree) = &now {
        for rel in &paths {
            blocked_parent(tree, rel)?;
        }
    }
    let parent = into.parent().ok_or_else(|| {
        fail(format!(
            "cannot restore the root directory {}",
            into.display()
        ))
    })?;
    if options.dry_run {
        return Ok(Restored {
            dir: into.clone(),
            from: c.dir.clone(),
            kept: None,
            entries: dry_run_changes(&into, now.as_ref(), &c.manifest, &paths, target.is_none())?,
        });
    }
    drop(now);
    // The path the user gave, resolved once: its missing ancestors are made, and from here on
    // the directory that holds it and the version store are reached as trees.
    fs::create_dir_all(parent).map_err(|source| Error::Inaccessible {
        role,
        path: parent.to_path_buf(),
        source,
    })?;
    let around = LocalTree::open(parent).map_err(|source| Error::Inaccessible {
        role,
        path: parent.to_path_buf(),
        source,
    })?;
    let versions = LocalTree::open(&c.vdir).map_err(|source| Error::Inaccessible {
        role: "version store",
        path: c.vdir.clone(),
        source,
    })?;
    // The path checked above may name something else by now (a directory on it renamed or
    // replaced by a link): the directory held is what the target is made in.
    if let Some(t) = &target {
        let in_stores = LocalTree::open(&stores)
            .and_then(|s| around.lies_within(&s))
            .map_err(|source| Error::Inaccessible {
                role: "--target",
                path: t.clone(),
                source,
            })?;
        if in_stores {
            return Err(inside_stores(t, &stores));
        }
    }
    let name = PathBuf::from(into.file_name().unwrap_or_default());
    let stamp = sync_core::display::local_now()
        .strftime("%Y%m%d-%H%M%S")
        .to_string();
    // Into another directory nothing is replaced, so nothing is kept.
    let keep = target.is_none().then(|| Keep {
        versions: &versions,
        vdir: &c.vdir,
        // What a restore of some paths replaced is only those paths: named apart, so that
        // undoing it (a restore from it) is asked for with the same --path.
        name: free_name(
            &versions,
            &format!(
                "{}{stamp}",
                if paths.is_empty() {
                    KEPT_BY_RESTORE
                } else {
                    KEPT_BY_PATH_RESTORE
                }
            ),
        ),
        stamp: &stamp,
    });
    let (kept, entries) = if paths.is_empty() {
        let kept = restore_whole(&c, &around, &name, keep.as_ref())?;
        (kept, c.manifest.items.len())
    } else {
        restore_paths(&c, &around, &name, keep.as_ref(), &paths)?
    };
    Ok(Restored {
        dir: into,
        from: c.dir.clone(),
        kept,
        entries,
    })
}

/// Where what a restore replaces is kept: `name` in the version store.
struct Keep<'a> {
    versions: &'a LocalTree,
    vdir: &'a Path,
    name: PathBuf,
    stamp: &'a str,
}

/// Fails, naming it, if a directory on the way to `rel` in `tree` is something else (a
/// file, or a link, which is never followed): the version's `rel` has no place there.
fn blocked_parent(tree: &LocalTree, rel: &Path) -> Result<(), Error> {
    let mut on_the_way = PathBuf::new();
    for part in rel.parent().unwrap_or(Path::new("")).components() {
        on_the_way.push(part);
        match tree.stat(&on_the_way) {
            Ok(entry) if entry.is_dir() => {}
            Ok(_) => {
                return Err(fail(format!(
                    "--path {}: {} is not a directory in {}; restore --path {} instead; nothing was restored",
                    rel.display(),
                    on_the_way.display(),
                    tree.root().display(),
                    on_the_way.display()
                )));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::Inaccessible {
                    role: "DIR",
                    path: tree.root().join(&on_the_way),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Whether an error says the entry cannot be renamed where it is: a mount point (`EBUSY`), or
/// one whose parent is on another file system (`EXDEV`).
fn unmovable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(code) if code == rustix::io::Errno::BUSY.raw_os_error()
            || code == rustix::io::Errno::XDEV.raw_os_error()
    )
}

/// Restores all of the version as `name` in `around` (DIR, or the target): built beside it
/// and swapped in, or, where it cannot be renamed (a mount point), beneath it. Gives where
/// what it held is kept.
fn restore_whole(
    c: &Chosen,
    around: &LocalTree,
    name: &Path,
    keep: Option<&Keep>,
) -> Result<Option<PathBuf>, Error> {
    let parent = around.root();
    let dir = parent.join(name);
    let shown = name.to_string_lossy().into_owned();
    let work_prefix = format!(".{shown}.restore-");
    if let Some(keep) = keep {
        keep_leftovers(around, &work_prefix, keep.versions, keep.stamp);
    }
    // A mount point cannot be renamed: restored beneath itself, without a copy beside it.
    if let Ok(now) = around.stat(name)
        && now.is_dir()
        && now.dev != around.identity().0
    {
        return restore_beneath(c, around, name, Path::new(""), keep);
    }
    let inaccessible = |source| Error::Inaccessible {
        role: "DIR",
        path: parent.to_path_buf(),
        source,
    };
    let work = around
        .make_work_dir(Path::new(""), &work_prefix)
        .map_err(inaccessible)?;
    let work_path = parent.join(&work);
    // The work directory is filled through the descriptor it was made with: whoever can
    // write DIR's directory may rename it or put a link in its place, and nothing written
    // goes anywhere but into the directory this restore created.
    let work_tree = around.subtree(&work).map_err(inaccessible)?;
    let whole = Part {
        base: Path::new(""),
        only: None,
        root: c.manifest.root,
    };
    let copied = copy_version(&c.version, &c.manifest, &c.held, &whole, &work_tree);
    sync_core::pass::warn_dropped(&[&c.version]);
    if let Err(message) = copied {
        // Nothing was changed: what was copied is ours, and goes.
        if let Err(err) = around.remove_all(&work) {
            log::warn!("cannot remove {}: {err}", work_path.display());
        }
        return Err(fail(format!(
            "cannot restore {}: {message}; nothing was changed",
            dir.display()
        )));
    }
    // A version whose manifest does not record its root (one written before roots were
    // recorded) leaves the restored root with the mode DIR had.
    if c.manifest.root.is_none()
        && let Ok(root) = around.stat(name)
    {
        let _ = work_tree.finish_dir(Path::new(""), &root.meta(), None);
    }
    // Whether `rel` in DIR's directory is still the work directory this restore filled: the
    // names there are whoever can write that directory's to change.
    let ours = |rel: &Path| {
        around
            .stat(rel)
            .is_ok_and(|e| e.is_dir() && (e.dev, e.ino) == work_tree.identity())
    };
    let replaced = |what: &str| {
        fail(format!(
            "{what} {} was replaced by someone who can write {} while the restore ran; \
             {} is not restored",
            work_path.display(),
            parent.display(),
            dir.display()
        ))
    };
    if !ours(&work) {
        return Err(replaced("the work directory"));
    }

    let swap_err = |source: io::Error| {
        fail(format!(
            "cannot move the restored tree into {}: {source}",
            dir.display()
        ))
    };
    // What cannot be swapped (a bind mount, on the same file system as its parent) is
    // restored beneath itself; the copy beside it goes first.
    let beneath = |err: &io::Error| -> Option<Result<Option<PathBuf>, Error>> {
        if !unmovable(err) {
            return None;
        }
        if let Err(err) = around.remove_all(&work) {
            log::warn!("cannot remove {}: {err}", work_path.display());
        }
        Some(restore_beneath(c, around, name, Path::new(""), keep))
    };
    let kept = match (around.stat(name), keep) {
        (Ok(_), Some(keep)) => match around.move_to(name, keep.versions, &keep.name) {
            // What DIR held is safe with the versions first; a kill before the next rename
            // leaves DIR absent (never half-restored) and a rerun completes.
            Ok(()) => {
                around
                    .publish_dir(&work, name)
                    .map_err(|e| swap_err(op_source(e)))?;
                Some(keep.vdir.join(&keep.name))
            }
            // Another file system: swap both trees in one step, then keep the old one beside
            // DIR under a name no cleanup ever takes for a leftover.
            Err(_) => {
                if let Err(err) = around.exchange(&work, name) {
                    return beneath(&err).unwrap_or(Err(swap_err(err)));
                }
                let beside = free_name(around, &format!(".{shown}.before-restore-{}", keep.stamp));
                Some(if around.publish_dir(&work, &beside).is_ok() {
                    parent.join(beside)
                } else {
                    work_path.clone()
                })
            }
        },
        // An empty target: swapped with the new tree, then removed (only while empty).
        (Ok(_), None) => {
            if let Err(err) = around.exchange(&work, name) {
                return beneath(&err).unwrap_or(Err(swap_err(err)));
            }
            if let Ok(old) = around.stat(&work) {
                let _ = around.remove(&work, &old);
            }
            None
        }
        (Err(_), _) => {
            around
                .publish_dir(&work, name)
                .map_err(|e| swap_err(op_source(e)))?;
            None
        }
    };
    if !ours(name) {
        let kept = kept.map_or(String::new(), |k| {
            format!(" (what it held is in {})", k.display())
        });
        return Err(fail(format!(
            "the work directory {} was replaced by someone who can write {} while the restore \
             ran; {} is not restored{kept}",
            work_path.display(),
            parent.display(),
            dir.display()
        )));
    }
    Ok(kept)
}

/// Restores the version's directory `rel` (all of it: `""`) beneath the directory `name` of
/// `around`, which cannot be renamed (a mount point): what it holds is copied to the version
/// store first (if `keep`), the version's is built in a work directory inside it, then its
/// entries take the old ones' places and it is given the version's metadata. Gives where what
/// it held is kept.
fn restore_beneath(
    c: &Chosen,
    around: &LocalTree,
    name: &Path,
    rel: &Path,
    keep: Option<&Keep>,
) -> Result<Option<PathBuf>, Error> {
    let dir = around.root().join(name);
    let keep_rel = keep.map(|keep| keep.name.join(rel));
    let inaccessible = |source| Error::Inaccessible {
        role: "DIR",
        path: dir.clone(),
        source,
    };
    let tree = around.subtree(name).map_err(inaccessible)?;
    log::info!(
        "{} cannot be swapped whole (a mount point): it is restored beneath itself",
        dir.display()
    );
    let kept = match keep {
        Some(keep) => {
            let held = sync_core::scan::scan(&tree, "DIR", &Default::default())?;
            if let Some((rel, err)) = held.unlistable.first() {
                return Err(fail(format!(
                    "cannot read {} ({err}), so what {} holds cannot be kept; nothing was restored",
                    dir.join(rel).display(),
                    dir.display()
                )));
            }
            let keep_rel = keep_rel.as_deref().unwrap_or(rel);
            let store_err = |source| Error::Inaccessible {
                role: "version store",
                path: keep.vdir.join(keep_rel),
                source,
            };
            make_store_parents(keep.versions, keep_rel).map_err(store_err)?;
            keep.versions.make_store_dir(keep_rel).map_err(store_err)?;
            let kept_tree = keep.versions.subtree(keep_rel).map_err(store_err)?;
            if let Err(message) = copy_scanned(&tree, &held, &kept_tree) {
                let _ = keep.versions.remove_all(keep_rel);
                return Err(fail(format!(
                    "cannot keep what {} holds: {message}; nothing was changed",
                    dir.display()
                )));
            }
            Some(keep.vdir.join(keep_rel))
        }
        None => None,
    };
    // Nothing was changed yet: what was kept and what was built are ours, and go.
    let undo = |work: Option<&Path>| {
        if let Some(work) = work
            && let Err(err) = tree.remove_all(work)
        {
            log::warn!("cannot remove {}: {err}", dir.join(work).display());
        }
        if let (Some(keep), Some(keep_rel)) = (keep, &keep_rel) {
            let _ = keep.versions.remove_all(keep_rel);
        }
    };
    let work = match tree.make_work_dir(Path::new(""), ".restore-") {
        Ok(work) => work,
        Err(err) => {
            undo(None);
            return Err(inaccessible(err));
        }
    };
    let work_tree = match tree.subtree(&work) {
        Ok(t) => t,
        Err(err) => {
            undo(Some(&work));
            return Err(inaccessible(err));
        }
    };
    let content = Part {
        base: rel,
        only: None,
        root: None,
    };
    let copied = c
        .version
        .subtree(rel)
        .map_err(|e| e.to_string())
        .and_then(|from| {
            let copied = copy_version(&from, &c.manifest, &c.held, &content, &work_tree);
            sync_core::pass::warn_dropped(&[&from]);
            copied
        });
    if let Err(message) = copied {
        undo(Some(&work));
        return Err(fail(format!(
            "cannot restore {}: {message}; nothing was changed",
            dir.display()
        )));
    }
    // From here DIR changes: what it held is safe in the version store.
    let half = |what: String| {
        fail(format!(
            "{what}; {} is half restored: the rest of the version is in {}{}",
            dir.display(),
            dir.join(&work).display(),
            kept.as_ref().map_or(String::new(), |k| format!(
                ", what it held is in {}",
                k.display()
            ))
        ))
    };
    let old = tree
        .list(Path::new(""), &|n| n == work.as_os_str())
        .map_err(|e| half(format!("cannot list {}: {e}", dir.display())))?;
    for (entry_name, _) in old {
        tree.remove_all(Path::new(&entry_name)).map_err(|e| {
            half(format!(
                "cannot remove {}: {e}",
                dir.join(&entry_name).display()
            ))
        })?;
    }
    let new = work_tree
        .list(Path::new(""), &|_| false)
        .map_err(|e| half(format!("cannot list {}: {e}", dir.join(&work).display())))?;
    for (entry_name, _) in new {
        tree.move_to(&work.join(&entry_name), &tree, Path::new(&entry_name))
            .map_err(|e| {
                half(format!(
                    "cannot move {} into place: {e}",
                    dir.join(&entry_name).display()
                ))
            })?;
    }
    if let Ok(empty) = tree.stat(&work) {
        let _ = tree.remove(&work, &empty);
    }
    let meta = if rel.as_os_str().is_empty() {
        c.manifest.root
    } else {
        c.manifest.items.get(rel).map(|item| *item.meta())
    };
    if let Some(meta) = meta {
        let steps: Steps = finish(Side::Backup, PathBuf::new(), &Item::Dir { meta })
            .into_iter()
            .collect();
        let given = c
            .version
            .subtree(rel)
            .map_err(|e| e.to_string())
            .and_then(|from| apply_steps(&from, &tree, &steps));
        if given.is_err() {
            return Err(fail(format!(
                "{} is restored, but its own metadata could not be set",
                dir.display()
            )));
        }
    }
    Ok(kept)
}

/// Restores the `paths` of the version in the directory `name` of `around` (made, with its
/// missing parents, where missing), each swapped in on its own. Gives where what they held is
/// kept and how many entries were written.
fn restore_paths(
    c: &Chosen,
    around: &LocalTree,
    name: &Path,
    keep: Option<&Keep>,
    paths: &[PathBuf],
) -> Result<(Option<PathBuf>, usize), Error> {
    let dir = around.root().join(name);
    let inaccessible = |source| Error::Inaccessible {
        role: "DIR",
        path: dir.clone(),
        source,
    };
    // Directories this restore makes are given the version's metadata last, once filled.
    let mut made: Vec<PathBuf> = Vec::new();
    if around.stat(name).is_err() {
        around
            .make_dir(name)
            .map_err(|e| inaccessible(op_source(e)))?;
        made.push(PathBuf::new());
    }
    let tree = around.subtree(name).map_err(inaccessible)?;
    for rel in paths {
        blocked_parent(&tree, rel)?;
    }
    let mut kept_any = false;
    let mut entries = 0;
    for rel in paths {
        let mut on_the_way = PathBuf::new();
        for part in rel.parent().unwrap_or(Path::new("")).components() {
            on_the_way.push(part);
            if tree.stat(&on_the_way).is_err() {
                tree.make_dir(&on_the_way)
                    .map_err(|e| inaccessible(op_source(e)))?;
                made.push(on_the_way.clone());
            }
        }
        let kept = restore_path(c, &tree, rel, keep)?;
        if let Some(kept) = kept {
            log::info!(
                "what {} held before is kept in {}",
                dir.join(rel).display(),
                kept.display()
            );
            kept_any = true;
        }
        entries += c
            .manifest
            .items
            .keys()
            .filter(|r| r.starts_with(rel))
            .count();
    }
    let mut steps = Steps::default();
    for rel in made.iter().rev() {
        let meta = if rel.as_os_str().is_empty() {
            c.manifest.root
        } else {
            c.manifest.items.get(rel).map(|i| *i.meta())
        };
        if let Some(meta) = meta {
            steps.extend(finish(Side::Backup, rel.clone(), &Item::Dir { meta }));
        }
    }
    steps.sort();
    if !steps.is_empty() && apply_steps(&c.version, &tree, &steps).is_err() {
        log::warn!(
            "the directories made above the restored paths in {} could not all be given their metadata",
            dir.display()
        );
    }
    let kept = keep
        .filter(|_| kept_any)
        .map(|keep| keep.vdir.join(&keep.name));
    Ok((kept, entries))
}

/// Restores the version's `rel` (a file, link, node or whole directory) in `tree`: built in a
/// work directory beside it and swapped in with one rename. Gives where what it replaced is
/// kept.
fn restore_path(
    c: &Chosen,
    tree: &LocalTree,
    rel: &Path,
    keep: Option<&Keep>,
) -> Result<Option<PathBuf>, Error> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let name = Path::new(rel.file_name().unwrap_or_default());
    let shown = tree.root().join(rel);
    let inaccessible = |source| Error::Inaccessible {
        role: "DIR",
        path: tree.root().join(parent),
        source,
    };
    let around = tree.subtree(parent).map_err(inaccessible)?;
    let item = &c.manifest.items[rel];
    let whole_dir = matches!(item, Item::Dir { .. });
    // A mount point inside DIR cannot be renamed: restored beneath itself.
    if whole_dir
        && let Ok(now) = around.stat(name)
        && now.is_dir()
        && now.dev != around.identity().0
    {
        return restore_beneath(c, &around, name, rel, keep);
    }
    let work = around
        .make_work_dir(
            Path::new(""),
            &format!(".{}.restore-", name.to_string_lossy()),
        )
        .map_err(inaccessible)?;
    let work_tree = around.subtree(&work).map_err(inaccessible)?;
    // A directory is built as the work directory itself; anything else inside it.
    let (part, from) = if whole_dir {
        let part = Part {
            base: rel,
            only: None,
            root: Some(*item.meta()),
        };
        (part, c.version.subtree(rel))
    } else {
        let part = Part {
            base: parent,
            only: Some(rel),
            root: None,
        };
        (part, c.version.subtree(parent))
    };
    let copied = from.map_err(|e| e.to_string()).and_then(|from| {
        let copied = copy_version(&from, &c.manifest, &c.held, &part, &work_tree);
        sync_core::pass::warn_dropped(&[&from]);
        copied
    });
    let built = if whole_dir {
        Ok((work.clone(), work_tree.identity()))
    } else {
        work_tree
            .stat(name)
            .map(|e| (work.join(name), (e.dev, e.ino)))
            .map_err(|e| e.to_string())
    };
    let (built, identity) = match copied.and(built) {
        Ok(built) => built,
        Err(message) => {
            if let Err(err) = around.remove_all(&work) {
                log::warn!(
                    "cannot remove {}: {err}",
                    around.root().join(&work).display()
                );
            }
            return Err(fail(format!(
                "cannot restore {}: {message}; it was not changed",
                shown.display()
            )));
        }
    };
    let ours = |at: &Path| around.stat(at).is_ok_and(|e| (e.dev, e.ino) == identity);
    let replaced = || {
        fail(format!(
            "the work directory {} was replaced by someone who can write {} while the restore \
             ran; {} is not restored",
            around.root().join(&work).display(),
            around.root().display(),
            shown.display()
        ))
    };
    if !ours(&built) {
        return Err(replaced());
    }
    let swap_err = |source: io::Error| {
        fail(format!(
            "cannot move the restored {} into place: {source}; it was not changed",
            shown.display()
        ))
    };
    // A path that cannot be swapped (a mount point inside DIR) leaves no copy behind.
    let swap_failed = |source: io::Error| {
        if let Ok(seen) = around.stat(&work)
            && (seen.dev, seen.ino) == work_tree.identity()
            && let Err(err) = around.remove_all(&work)
        {
            log::warn!(
                "cannot remove {}: {err}",
                around.root().join(&work).display()
            );
        }
        swap_err(source)
    };
    let kept = if around.stat(name).is_ok() {
        // Swapped in one step; what was there is then where the new one was built.
        if let Err(err) = around.exchange(&built, name) {
            let beneath = whole_dir && unmovable(&err);
            let failed = swap_failed(err);
            return if beneath {
                restore_beneath(c, &around, name, rel, keep)
            } else {
                Err(failed)
            };
        }
        let mut kept = None;
        if let Some(keep) = keep {
            let to = keep.name.join(rel);
            if make_store_parents(keep.versions, &to).is_ok()
                && around.move_to(&built, keep.versions, &to).is_ok()
            {
                kept = Some(keep.vdir.join(&to));
            }
        }
        // Beside it where the version store cannot take it (another file system), under a
        // name no cleanup ever takes for a leftover.
        Some(match kept {
            Some(kept) => kept,
            None => {
                let stamp = keep.map_or("", |k| k.stamp);
                let beside = free_name(
                    &around,
                    &format!(".{}.before-restore-{stamp}", name.to_string_lossy()),
                );
                if around.move_to(&built, &around, &beside).is_ok() {
                    around.root().join(beside)
                } else {
                    around.root().join(&built)
                }
            }
        })
    } else {
        around.move_to(&built, &around, name).map_err(swap_failed)?;
        None
    };
    if !ours(name) {
        return Err(replaced());
    }
    if !whole_dir
        && let Ok(empty) = around.stat(&work)
        && (empty.dev, empty.ino) == work_tree.identity()
    {
        let _ = around.remove(&work, &empty);
    }
    Ok(kept)
}

/// Makes the directories above `rel` in the version store.
fn make_store_parents(versions: &LocalTree, rel: &Path) -> io::Result<()> {
    let mut on_the_way = PathBuf::new();
    for part in rel.parent().unwrap_or(Path::new("")).components() {
        on_the_way.push(part);
        match versions.make_store_dir(&on_the_way) {
            Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
            _ => {}
        }
    }
    Ok(())
}

/// The I/O fault behind a failed operation.
fn op_source(err: OpError) -> io::Error {
    match err {
        OpError::Read { source, .. } | OpError::Write { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// `name` in `tree`'s root, or `name-2`, `name-3` … if taken.
fn free_name(tree: &dyn Tree, name: &str) -> PathBuf {
    let mut path = PathBuf::from(name);
    let mut n = 2;
    while tree.stat(&path).is_ok() {
        path = PathBuf::from(format!("{name}-{n}"));
        n += 1;
    }
    path
}

/// Moves what an earlier, killed restore left beside DIR (our work directories, exactly
/// `PREFIX` plus six letters or digits) in with the versions. Never deletes: such a directory
/// may hold a half-built restore, or, after a kill right after the swap, what DIR held.
fn keep_leftovers(around: &dyn Tree, prefix: &str, versions: &dyn Tree, stamp: &str) {
    let Ok(listing) = around.list(Path::new(""), &|_| false) else {
        return;
    };
    for (name, entry) in listing {
        let ours = name
            .as_encoded_bytes()
            .strip_prefix(prefix.as_bytes())
            .is_some_and(|rest| rest.len() == 6 && rest.iter().all(u8::is_ascii_alphanumeric));
        if !ours || !entry.is_dir() {
            continue;
        }
        let to = free_name(versions, &format!("unfinished-restore-{stamp}"));
        let (from_shown, to_shown) = (
            format!("{}/{}", around.name(), name.to_string_lossy()),
            format!("{}/{}", versions.name(), to.display()),
        );
        match around.move_to(Path::new(&name), versions, &to) {
            Ok(()) => log::warn!(
                "an earlier restore was interrupted; what it left in {from_shown} is kept in {to_shown}"
            ),
            Err(err) => log::warn!(
                "an earlier restore was interrupted and left {from_shown}; it is left there ({err})"
            ),
        }
    }
}

/// The part of a version a copy writes: the entries below `base` (or only the entry `only`),
/// named relative to `base`, and the metadata the copy's root gets, if any.
struct Part<'a> {
    base: &'a Path,
    only: Option<&'a Path>,
    root: Option<sync_core::model::Meta>,
}

impl Part<'_> {
    fn holds(&self, rel: &Path) -> bool {
        rel != self.base && rel.starts_with(self.base) && self.only.is_none_or(|only| rel == only)
    }
}

/// Copies `part` of the version `version` holds there (as `manifest` lists it, and as the
/// check before found it: `held`) into the empty directory `work`, through the one applier:
/// the content of every file is checked against the manifest as it is copied, the further
/// names of an inode are linked to the first name's copy within the part, and the root is
/// given `part.root`. Fails with the number of entries that could not be copied (each is
/// logged).
fn copy_version(
    version: &LocalTree,
    manifest: &Manifest,
    held: &Scanned,
    part: &Part,
    work: &LocalTree,
) -> Result<(), String> {
    let mut steps = Steps::default();
    let local = |rel: &Path| rel.strip_prefix(part.base).unwrap_or(rel).to_path_buf();
    for (rel, item) in manifest.items.iter().filter(|(rel, _)| part.holds(rel)) {
        let seen = held.entries.get(rel).cloned();
        steps.extend(finish(Side::Backup, local(rel), item));
        // A name of the inode outside the part is not written: the first one inside it is
        // copied, and the others linked to it.
        let first = manifest
            .links
            .group(rel)
            .into_iter()
            .find(|name| part.holds(name))
            .filter(|first| *first != rel.as_path());
        match (first, seen, item) {
            (Some(first), Some(seen), Item::File { .. }) => steps.push(Step::Link {
                side: Side::Backup,
                rel: local(rel),
                existing: local(first),
                source: seen,
                replace: None,
            }),
            // Copied as not scanned: the copy hashes what it reads, and installs nothing but
            // the manifest's bytes.
            _ => steps.push(arrive(Side::Backup, local(rel), item, None, true, None)),
        }
    }
    if let Some(meta) = part.root {
        steps.extend(finish(Side::Backup, PathBuf::new(), &Item::Dir { meta }));
    }
    steps.sort();
    sync_core::testhook::after_plan();
    apply_steps(version, work, &steps)
}

/// Copies what the scan `held` found in `from` into the empty directory `to` (what a restore
/// beneath a mount point keeps of it), through the one applier. Names that shared an inode
/// become copies of their own.
fn copy_scanned(from: &LocalTree, held: &Scanned, to: &LocalTree) -> Result<(), String> {
    let mut steps = Steps::default();
    for (rel, entry) in held.entries.iter() {
        match Item::of(entry, None) {
            Some(item) => {
                steps.extend(finish(Side::Backup, rel.clone(), &item));
                steps.push(arrive(
                    Side::Backup,
                    rel.clone(),
                    &item,
                    Some(entry.clone()),
                    false,
                    None,
                ));
            }
            // A file: its bytes were not read, so the copy hashes what it reads.
            None => steps.push(Step::Copy {
                side: Side::Backup,
                rel: rel.clone(),
                source: Some(entry.clone()),
                known: Known::Unread,
                replace: None,
                link: None,
            }),
        }
    }
    steps.sort();
    apply_steps(from, to, &steps)
}

/// Applies `steps` from `from` to `to` (a tree being built, or given its metadata) through the
/// one applier; fails with the number of steps that failed (each is logged).
fn apply_steps(from: &LocalTree, to: &LocalTree, steps: &Steps) -> Result<(), String> {
    // Nothing a restore reads is remembered: a version is checked against its manifest.
    let learner = Learner::new(from.root(), to.root());
    let applied = Applier {
        trees: [from, to],
        target: Target::Build,
        learner: &learner,
    }
    .apply(steps);
    match applied.errors {
        // What Ctrl+C or SIGTERM cut short is not put in DIR's place.
        _ if applied.stopped => Err("stopped by a signal before the copy was complete".into()),
        0 => Ok(()),
        n => Err(format!("{n} entries could not be copied")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(paths: &[&str]) -> Result<Vec<PathBuf>, String> {
        let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
        checked_paths(&paths).map_err(|e| one_line(&e))
    }

    #[test]
    fn paths_are_normalised_and_those_below_another_dropped() {
        assert_eq!(
            checked(&["./sub/b", "sub", "a/./x", "a/xy"]),
            Ok(vec!["a/x".into(), "a/xy".into(), "sub".into()])
        );
    }

    #[test]
    fn absolute_climbing_or_empty_paths_are_refused_by_name() {
        for (bad, why) in [
            ("/etc/passwd", "is absolute"),
            ("sub/../../x", "contains `..`"),
            ("..", "contains `..`"),
            (".", "names DIR itself"),
        ] {
            let err = checked(&["ok", bad]).expect_err(bad);
            assert!(err.contains(bad) && err.contains(why), "{bad}: {err}");
        }
    }
}
