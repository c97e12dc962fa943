//! `twoway DIR --restore [--version latest|previous|NAME|DATE]`: bring a directory back from its
//! versions, even after it was deleted, without ever leaving it half-restored.
//!
//! The chosen version is verified against its manifest, copied (never hard-linked to the
//! version, so later edits cannot reach into the history; names that share an inode in it
//! share one copy) into a temporary directory beside DIR, given the version's root metadata,
//! and swapped into place in one `rename` (an exchange when DIR exists). What DIR held before
//! is kept under `__versions__/KEY/before-restore-STAMP`, so a restore can be undone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sync_core::apply::{Applier, Target};
use sync_core::hash::Learner;
use sync_core::model::Side;
use sync_core::plan::step::{Step, Steps, arrive, finish};
use sync_core::run::lock::{Lock, LockDir};
use sync_core::scan::Scanned;
use sync_core::tree::{LocalTree, OpError, Tree};
use sync_core::{Error, error::one_line};

pub use crate::history::Choice as Which;
use crate::history::store_of;
use crate::manifest::{Item, Manifest};
use crate::store::Store;
use crate::verify::verify_tree;

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The restored directory.
    pub dir: PathBuf,
    /// Where its former content was put, if it existed.
    pub kept: Option<PathBuf>,
    /// Entries written.
    pub entries: usize,
}

fn fail(message: String) -> Error {
    Error::Versions(message)
}

/// Logs what restoring `manifest`'s version over `dir` would create, replace and remove, and
/// changes nothing; gives how many entries would change. A file counts as replaced when its
/// kind, size, time, mode, owner or attributes differ from the version's (its bytes are not
/// read: a file edited without any of those moving is not seen).
fn dry_run_changes(dir: &Path, manifest: &Manifest) -> Result<usize, Error> {
    let now = match LocalTree::open(dir) {
        Ok(tree) => Some(sync_core::scan::scan(&tree, "DIR", &Default::default())?),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(Error::Inaccessible {
                role: "DIR",
                path: dir.to_path_buf(),
                source,
            });
        }
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
    for (rel, item) in &manifest.items {
        match held.entries.get(rel) {
            None => say("create", rel),
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
        if !manifest.items.contains_key(rel) {
            say("remove", rel);
        }
    }
    if now.is_some() {
        log::info!(
            "dry run: what {} holds now would be kept under the version store, as a restore keeps it",
            dir.display()
        );
    }
    Ok(changes)
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
fn chosen_version(state_dir: &Path, dir: &Path, which: Which) -> Result<Chosen, Error> {
    let (dir, vdir) = store_of(state_dir, dir)?;
    let locks = LockDir::open()?;
    let pair = locks.lock_path(&dir)?;
    let versions_lock = locks.lock_dir(&vdir)?;
    let store = Store::open(&vdir).map_err(|e| fail(one_line(&e)))?;
    let versions = store.versions();
    let chosen = which.pick(&versions).ok_or_else(|| {
        fail(format!(
            "there is no version {which} of {} in {} (twoway {} --versions lists them)",
            dir.display(),
            vdir.display(),
            dir.display()
        ))
    })?;
    let manifest = chosen.manifest().map_err(|e| fail(one_line(&e)))?;
    let version = LocalTree::open(&chosen.dir).map_err(|source| Error::ListRoot {
        role: "version",
        path: chosen.dir.clone(),
        source,
    })?;
    let (problems, held) = verify_tree(&version, &manifest)?;
    if let Some(first) = problems.first() {
        return Err(fail(format!(
            "the version in {} does not match its manifest ({} differences, first: {first}); nothing was restored",
            chosen.dir.display(),
            problems.len()
        )));
    }
    Ok(Chosen {
        dir,
        vdir,
        manifest,
        version,
        held,
        _locks: [pair, versions_lock],
    })
}

/// Restores `dir` from the versions recorded in `state_dir`.
///
/// Fails, having changed nothing, if the version cannot be chosen (see `chosen_version`) or
/// the copy fails.
pub fn restore(
    state_dir: &Path,
    dir: &Path,
    which: Which,
    dry_run: bool,
) -> Result<Restored, Error> {
    let Chosen {
        dir,
        vdir,
        manifest,
        version,
        held,
        _locks,
    } = chosen_version(state_dir, dir, which)?;

    let parent = dir.parent().ok_or_else(|| {
        fail(format!(
            "cannot restore the root directory {}",
            dir.display()
        ))
    })?;
    if dry_run {
        return Ok(Restored {
            dir: dir.clone(),
            kept: None,
            entries: dry_run_changes(&dir, &manifest)?,
        });
    }
    // The path the user gave, resolved once: its missing ancestors are made, and from here on
    // DIR's directory and the version store are reached as trees.
    fs::create_dir_all(parent).map_err(|source| Error::Inaccessible {
        role: "DIR",
        path: parent.to_path_buf(),
        source,
    })?;
    let around = LocalTree::open(parent).map_err(|source| Error::Inaccessible {
        role: "DIR",
        path: parent.to_path_buf(),
        source,
    })?;
    let versions = LocalTree::open(&vdir).map_err(|source| Error::Inaccessible {
        role: "version store",
        path: vdir.clone(),
        source,
    })?;
    let name = PathBuf::from(dir.file_name().unwrap_or_default());
    let shown = name.to_string_lossy().into_owned();
    let work_prefix = format!(".{shown}.restore-");
    let stamp = sync_core::display::local_now()
        .strftime("%Y%m%d-%H%M%S")
        .to_string();
    keep_leftovers(&around, &work_prefix, &versions, &stamp);
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
    let copied = copy_version(&version, &manifest, &held, &work_tree);
    sync_core::pass::warn_dropped(&[&version]);
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
    if manifest.root.is_none()
        && let Ok(root) = around.stat(&name)
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
    let kept = if around.stat(&name).is_ok() {
        let keep = free_name(&versions, &format!("before-restore-{stamp}"));
        match around.move_to(&name, &versions, &keep) {
            // What DIR held is safe with the versions first; a kill before the next rename
            // leaves DIR absent (never half-restored) and a rerun completes.
            Ok(()) => {
                around
                    .publish_dir(&work, &name)
                    .map_err(|e| swap_err(op_source(e)))?;
                Some(vdir.join(keep))
            }
            // Another file system: swap both trees in one step, then keep the old one beside
            // DIR under a name no cleanup ever takes for a leftover.
            Err(_) => {
                around.exchange(&work, &name).map_err(swap_err)?;
                let beside = free_name(&around, &format!(".{shown}.before-restore-{stamp}"));
                Some(if around.publish_dir(&work, &beside).is_ok() {
                    parent.join(beside)
                } else {
                    work_path.clone()
                })
            }
        }
    } else {
        around
            .publish_dir(&work, &name)
            .map_err(|e| swap_err(op_source(e)))?;
        None
    };
    if !ours(&name) {
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
    Ok(Restored {
        dir,
        kept,
        entries: manifest.items.len(),
    })
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

/// Copies the version `version` holds (as `manifest` lists it, and as the check before found
/// it: `held`) into the empty directory `work`, through the one applier: the content of every
/// file is checked against the manifest as it is copied, the further names of an inode are
/// linked to its first name's copy, and the root is given the version's own metadata, where
/// recorded. Fails with the number of entries that could not be copied (each is logged).
fn copy_version(
    version: &LocalTree,
    manifest: &Manifest,
    held: &Scanned,
    work: &LocalTree,
) -> Result<(), String> {
    let mut steps = Steps::default();
    for (rel, item) in &manifest.items {
        let seen = held.entries.get(rel).cloned();
        steps.extend(finish(Side::Backup, rel.clone(), item));
        match (manifest.links.first_of(rel), seen, item) {
            (Some(first), Some(seen), Item::File { .. }) => steps.push(Step::Link {
                side: Side::Backup,
                rel: rel.clone(),
                existing: first.to_path_buf(),
                source: seen,
                replace: None,
            }),
            // Copied as not scanned: the copy hashes what it reads, and installs nothing but
            // the manifest's bytes.
            _ => steps.push(arrive(Side::Backup, rel.clone(), item, None, true, None)),
        }
    }
    if let Some(meta) = manifest.root {
        steps.extend(finish(Side::Backup, PathBuf::new(), &Item::Dir { meta }));
    }
    steps.sort();
    // Nothing a restore reads is remembered: a version is checked against its manifest.
    let learner = Learner::new(version.root(), work.root());
    let applied = Applier {
        trees: [version, work],
        target: Target::Build,
        learner: &learner,
    }
    .apply(&steps);
    match applied.errors {
        0 => Ok(()),
        n => Err(format!("{n} entries could not be copied")),
    }
}
