//! One two-way pass (SPEC §4): scan both sides, hash, reconcile against the archive, check the
//! refusals, apply with the safe operations, and record in the archive what was really done.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rayon::prelude::*;

use crate::display::Escaped;
use crate::error::Error;
use crate::hash::dircache::{DirCache, Learner, tree_digests};
use crate::model::{Entry, Item, ItemList, Items, Kind, PassStats, Side};
use crate::plan::reconcile::{Plan, Policy, Step, Verdict, reconcile};
use crate::plan::refuse::{self, Refusal};
use crate::scan::{self, Filter, Tree};
use crate::signal;
use crate::state::archive;
use crate::tree::ops::{self as fsops, OpError};
use crate::tree::{flush, temp};

/// What a two-way pass works on and how.
#[derive(Debug)]
pub struct TwowayOptions {
    /// Canonical SOURCE.
    pub source: PathBuf,
    /// Canonical BACKUP.
    pub backup: PathBuf,
    /// The archive file of this pair.
    pub archive: PathBuf,
    /// Paths left alone on both sides (our temporary files included).
    pub filter: Filter,
    /// Log what would be done; change nothing.
    pub dry_run: bool,
    /// Let the refusals of SPEC §8 through.
    pub force: bool,
    /// Who wins a conflict.
    pub policy: Policy,
}

impl TwowayOptions {
    fn root(&self, side: Side) -> &Path {
        match side {
            Side::Source => &self.source,
            Side::Backup => &self.backup,
        }
    }
}

/// The digest an item carries for a file left unread (see [`unread_files`]). Reconcile never
/// compares it with another file's (the path is on one side only, and not in the archive), and
/// the archive never records it: the copy that reads the file gives the real one.
const UNREAD: checksum::Digest = [0; 32];

/// Turns a scanned tree and its digests (one per entry, in the tree's order) into the items
/// reconcile compares. Files whose digest is missing are left out (unreadable: the caller
/// protects their paths), or carry [`UNREAD`] where `unread` marks them.
fn items_of<'t>(
    tree: &'t Tree,
    digests: &[Option<checksum::Digest>],
    unread: &[bool],
) -> ItemList<'t> {
    let items = tree
        .entries
        .iter()
        .zip(digests)
        .zip(unread)
        .filter_map(|(((rel, e), digest), &unread)| {
            let item = match &e.kind {
                Kind::File => Item::File {
                    digest: match digest {
                        Some(d) => *d,
                        None if unread => UNREAD,
                        None => return None,
                    },
                    size: e.size,
                    mode: e.mode,
                    mtime: e.mtime,
                },
                Kind::Dir => Item::Dir {
                    mode: e.mode,
                    mtime: e.mtime,
                },
                Kind::Symlink(target) => Item::Symlink {
                    target: target.clone(),
                    mtime: e.mtime,
                },
                Kind::Special => return None,
            };
            Some((rel.as_path(), item))
        })
        .collect();
    ItemList::from_sorted(items)
}

/// Marks, for each entry of `tree` (in its order), whether it is a file that only this side
/// holds and that `archived` does not know. Such a file is copied to the other side whatever
/// its content, so no decision needs its digest: it is not read before its copy, which hashes
/// it as it goes (a first sync into an empty directory reads each file once, not twice).
fn unread_files(tree: &Tree, other: &Tree, archived: &Items) -> Vec<bool> {
    tree.entries
        .iter()
        .map(|(rel, e)| {
            e.kind == Kind::File && other.entries.get(rel).is_none() && !archived.contains_key(rel)
        })
        .collect()
}

/// Runs one two-way pass between `opts.source` and `opts.backup`.
///
/// Fails (changing nothing) if a root cannot be listed, the archive is damaged, or a
/// refusal of SPEC §8 applies without `force`. Per-entry faults are logged and counted; their
/// archive entries stay as they were, so they are retried next pass.
pub fn twoway_pass(opts: &TwowayOptions, dir_cache: &mut DirCache) -> Result<PassStats, Error> {
    // Before the scan, so that a killed pass's half-written files are gone rather than
    // taken for the user's.
    let journal = opts.archive.with_extension("pending");
    for path in temp::remove_journaled_leftovers(&journal) {
        log::info!("removed leftover temporary file {}", path.display());
    }
    // The archive is parsed while the trees are scanned: the scan waits on the file system
    // more than it computes.
    let (archived, (src, dst)) = rayon::join(
        || archive::load(&opts.archive, &opts.source, &opts.backup),
        || {
            rayon::join(
                || scan::scan(&opts.source, "SOURCE", &opts.filter),
                || scan::scan(&opts.backup, "BACKUP", &opts.filter),
            )
        },
    );
    let archived = archived?;
    let first_pass = archived.is_none();
    let archived = archived.unwrap_or_default();
    let (src, dst) = (src?, dst?);

    let mut stats = PassStats {
        conflicts: Some(0),
        ..PassStats::default()
    };
    let mut protected: HashSet<PathBuf> = HashSet::new();
    for (side, tree) in [(Side::Source, &src), (Side::Backup, &dst)] {
        for (rel, err) in &tree.unlistable {
            log::error!(
                "cannot list {} in {}: {err}; nothing under it is changed this pass",
                Escaped(rel),
                side.name()
            );
            stats.errors += 1;
            protected.insert(rel.clone());
        }
        for (rel, entry) in &tree.entries {
            if entry.kind == Kind::Special {
                log::warn!(
                    "skipped {} in {}: not a regular file, directory or symlink",
                    Escaped(rel),
                    side.name()
                );
                protected.insert(rel.clone());
            }
        }
    }

    refuse_empty_side(opts, &src, &dst, &archived)?;

    let learner = Learner::new(&opts.source, &opts.backup);
    let (src_unread, dst_unread) = rayon::join(
        || unread_files(&src, &dst, &archived),
        || unread_files(&dst, &src, &archived),
    );
    let digests = tree_digests(
        dir_cache,
        &learner,
        [&opts.source, &opts.backup],
        [&src, &dst],
        [&src_unread, &dst_unread],
    );
    for (side, rel, err) in &digests.failed {
        log::error!("cannot read {} in {}: {err}", Escaped(rel), side.name());
        stats.errors += 1;
    }
    stats.hashed = digests.hashed;
    stats.cache_hits = digests.cache_hits;
    let [src_digests, dst_digests] = &digests.sides;
    // Files left unread, per side: the copy that reads one says what the archive records.
    let mut unread: [HashSet<&Path>; 2] = Default::default();
    for (side, tree, d, marks) in [
        (Side::Source, &src, src_digests, &src_unread),
        (Side::Backup, &dst, dst_digests, &dst_unread),
    ] {
        for (((rel, e), digest), &marked) in tree.entries.iter().zip(d).zip(marks) {
            if e.kind != Kind::File || digest.is_some() {
                continue;
            }
            if marked {
                unread[side as usize].insert(rel);
            } else {
                // Unknown content decides nothing: the path waits for a pass that can read it.
                protected.insert(rel.clone());
            }
        }
    }
    let (src_items, dst_items) = rayon::join(
        || items_of(&src, src_digests, &src_unread),
        || items_of(&dst, dst_digests, &dst_unread),
    );

    let stamp = crate::display::local_now()
        .strftime("%Y%m%d-%H%M%S")
        .to_string();
    let plan = reconcile(
        &archived,
        &src_items,
        &dst_items,
        &protected,
        opts.policy,
        &stamp,
    );

    refuse_mass_deletion(opts, &plan, &src_items, &dst_items)?;

    for c in &plan.conflicts {
        let why = match c.verdict {
            Verdict::Policy(Policy::Newer) => "newer",
            Verdict::Policy(Policy::Source) => "source",
            Verdict::Policy(Policy::Backup) => "backup",
            Verdict::Directory => "directory",
        };
        log::warn!(
            "{}conflict on {}: kept the {} version ({why}); the {} version is saved as {} on both sides",
            if opts.dry_run { "dry run: " } else { "" },
            Escaped(&c.rel),
            c.winner.name(),
            c.winner.other().name(),
            Escaped(&c.saved_as)
        );
    }
    stats.conflicts = Some(plan.conflicts.len() as u64);

    if opts.dry_run {
        for step in &plan.steps {
            log::info!("dry run: {}", describe(step));
            stats.operations += 1;
        }
        return Ok(stats);
    }
    if first_pass {
        log::info!("no archive yet for this pair: first pass, merging both sides without deleting");
    }

    crate::testhook::after_plan();
    if let Err(err) = temp::start_temp_journal(&journal) {
        log::warn!(
            "cannot note temporary names in {}: {err}",
            journal.display()
        );
    }
    let applier = Applier {
        opts,
        src: &src,
        dst: &dst,
        learner: &learner,
        failed: Mutex::new(HashSet::new()),
        operations: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        made_dirs: Mutex::new(Vec::new()),
        unread: &unread,
        read_by_copies: Mutex::new(HashMap::new()),
    };
    applier.apply(&plan);
    temp::end_temp_journal(&journal);
    stats.operations += applier.operations.load(Ordering::Relaxed);
    stats.errors += applier.errors.load(Ordering::Relaxed);
    stats.interrupted = signal::stop_requested();
    let failed = applier
        .failed
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let read_by_copies = applier
        .read_by_copies
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let was_unread = |rel: &Path| unread.iter().any(|side| side.contains(rel));

    let mut blocks = digests.blocks;
    learner.record_into(&mut blocks, dir_cache);
    let unlistable: Vec<&Path> = src
        .unlistable
        .iter()
        .chain(&dst.unlistable)
        .map(|(rel, _)| rel.as_path())
        .collect();
    // The cache is written while the data is flushed and the archive written: it decides
    // nothing, so it need not wait for them, nor they for it.
    let save_cache = move || {
        if let Err(err) = dir_cache.save(blocks, &unlistable) {
            log::warn!("cannot save the hash cache: {err}");
        }
    };
    let save_archive = || -> Result<(), Error> {
        // The archive is written only when a pass completes, and records what was really
        // done: a path whose step failed keeps its old entry, so the next pass tries again.
        if stats.interrupted {
            return Ok(());
        }
        let mut next = archived;
        let covered =
            |rel: &Path| !failed.is_empty() && rel.ancestors().any(|a| failed.contains(a));
        let mut changed = first_pass;
        for (rel, fin) in &plan.finals {
            if covered(rel) {
                continue;
            }
            let fin = match fin {
                // What the copy read, or nothing: a file left unread whose copy did not
                // happen keeps no entry, and is found new again next pass.
                Some(Item::File { .. }) if was_unread(rel) => match read_by_copies.get(rel) {
                    Some(item) => Some(item),
                    None => continue,
                },
                fin => fin.as_ref(),
            };
            changed = true;
            match fin {
                Some(item) => next.insert(rel.clone(), item.clone()),
                None => next.remove(rel),
            };
        }
        // A pass that changed nothing leaves the archive as it is: no rewrite to pay for.
        if !changed {
            return Ok(());
        }
        // The data first: an archive claiming content that a crash then lost would make the
        // next pass carry the damage to the other side. (The text is made meanwhile.)
        let flush = || -> Result<(), Error> {
            for root in [&opts.source, &opts.backup] {
                flush::flush_fs(root).map_err(|source| Error::StateUnreadable {
                    path: root.clone(),
                    source,
                })?;
            }
            Ok(())
        };
        let (text, flushed) =
            rayon::join(|| archive::encode(&opts.source, &opts.backup, &next), flush);
        flushed?;
        crate::state::text::write_atomically(&opts.archive, &text).map_err(|source| {
            Error::StateUnreadable {
                path: opts.archive.clone(),
                source,
            }
        })
    };
    let ((), saved) = rayon::join(save_cache, save_archive);
    saved?;
    Ok(stats)
}

/// SPEC §8 for a two-way pass: a side emptied since the last sync, and a pass that would delete
/// more than half of a side's files.
fn refuse_empty_side(
    opts: &TwowayOptions,
    src: &Tree,
    dst: &Tree,
    archived: &Items,
) -> Result<(), Refusal> {
    let held = archived
        .values()
        .filter(|i| !matches!(i, Item::Dir { .. }))
        .count() as u64;
    for (side, tree) in [(Side::Source, src), (Side::Backup, dst)] {
        let root = (side.name(), opts.root(side));
        refuse::empty_side(
            opts.force,
            root,
            tree.entries.is_empty(),
            "the last sync",
            held,
        )?;
    }
    Ok(())
}

fn refuse_mass_deletion(
    opts: &TwowayOptions,
    plan: &Plan,
    src: &ItemList,
    dst: &ItemList,
) -> Result<(), Refusal> {
    for (side, items) in [(Side::Source, src), (Side::Backup, dst)] {
        let total = items
            .values()
            .filter(|i| !matches!(i, Item::Dir { .. }))
            .count() as u64;
        let removed = plan
            .steps
            .iter()
            .filter(|s| {
                matches!(s, Step::Remove { side: z, seen, .. } if *z == side && !matches!(seen, Item::Dir { .. }))
            })
            .count() as u64;
        refuse::mass_deletion(opts.force, (side.name(), opts.root(side)), removed, total)?;
    }
    Ok(())
}

fn describe(step: &Step) -> String {
    match step {
        Step::SaveLoser { side, rel, to, .. } => format!(
            "saved {} as {} in {}",
            Escaped(rel),
            Escaped(to),
            side.name()
        ),
        Step::Remove { side, rel, seen } => format!(
            "removed {}{} from {}",
            if matches!(seen, Item::Dir { .. }) {
                "directory "
            } else {
                ""
            },
            Escaped(rel),
            side.name()
        ),
        Step::MakeDir { side, rel, .. } => {
            format!("created directory {} in {}", Escaped(rel), side.name())
        }
        Step::Copy {
            side,
            rel,
            expected,
            ..
        } => format!(
            "{} {} {} {}",
            if expected.is_some() {
                "replaced"
            } else {
                "copied"
            },
            Escaped(rel),
            if expected.is_some() { "in" } else { "to" },
            side.name()
        ),
        Step::Link {
            side,
            rel,
            item,
            expected,
        } => {
            let target = match item {
                Item::Symlink { target, .. } => target.as_path(),
                _ => Path::new(""),
            };
            format!(
                "{} symlink {} -> {} in {}",
                if matches!(expected, Some(Item::Symlink { .. })) {
                    "replaced"
                } else {
                    "created"
                },
                Escaped(rel),
                Escaped(target),
                side.name()
            )
        }
        Step::Meta { side, rel, .. } => {
            format!("updated metadata of {} in {}", Escaped(rel), side.name())
        }
    }
}

struct Applier<'a> {
    opts: &'a TwowayOptions,
    src: &'a Tree,
    dst: &'a Tree,
    learner: &'a Learner,
    /// Paths whose step failed: their archive entries stay, and nothing is done beneath them.
    failed: Mutex<HashSet<PathBuf>>,
    operations: AtomicU64,
    errors: AtomicU64,
    /// Directories created this pass, to get their final mode last.
    made_dirs: Mutex<Vec<(Side, PathBuf, Item)>>,
    /// Per side, the files left unread before the plan (see [`unread_files`]).
    unread: &'a [HashSet<&'a Path>; 2],
    /// What the copies of those files read: the item both sides now hold, by path.
    read_by_copies: Mutex<HashMap<PathBuf, Item>>,
}

impl Applier<'_> {
    fn tree(&self, side: Side) -> &Tree {
        match side {
            Side::Source => self.src,
            Side::Backup => self.dst,
        }
    }

    /// The scanned entry behind `seen` at `rel` on `side` (for the re-check before a change).
    fn seen_entry(&self, side: Side, rel: &Path) -> Option<&Entry> {
        self.tree(side).entries.get(rel)
    }

    fn blocked(&self, rel: &Path) -> bool {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        !failed.is_empty() && rel.ancestors().skip(1).any(|a| failed.contains(a))
    }

    fn fail(&self, rel: &Path) {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rel.to_path_buf());
    }

    fn apply(&self, plan: &Plan) {
        let mut saves = Vec::new();
        let mut removals = Vec::new();
        let mut dirs = Vec::new();
        let mut transfers = Vec::new();
        for step in &plan.steps {
            match step {
                Step::SaveLoser { .. } => saves.push(step),
                Step::Remove { .. } => removals.push(step),
                Step::MakeDir { .. } => dirs.push(step),
                _ => transfers.push(step),
            }
        }
        // Losers are moved aside before anything could overwrite them; removals go children
        // first; directories are made parents first; then files and links in parallel.
        removals.sort_by(|a, b| b.rel().cmp(a.rel()));
        dirs.sort_by(|a, b| a.rel().cmp(b.rel()));
        for step in saves.into_iter().chain(removals).chain(dirs) {
            self.run(step);
        }
        transfers.par_iter().for_each(|step| self.run(step));
        self.finish_dirs();
    }

    fn run(&self, step: &Step) {
        if signal::stop_requested() {
            return;
        }
        let rel = step.rel();
        if self.blocked(rel) {
            self.fail(rel);
            return;
        }
        let side = step.side();
        let root = self.opts.root(side);
        let path = root.join(rel);
        // Whatever this step creates, it creates inside its side, never through a link.
        if !matches!(step, Step::Remove { .. })
            && let Err(err) = fsops::check_parents(root, rel)
        {
            self.fail(rel);
            self.errors.fetch_add(1, Ordering::Relaxed);
            log::error!("skipped {} in {}: {err}", Escaped(rel), side.name());
            return;
        }
        let seen = || self.seen_entry(side, rel);
        let result: Result<(), OpError> = match step {
            Step::SaveLoser { to, .. } => match seen() {
                Some(entry) => fsops::rename_noreplace(&path, &root.join(to), entry),
                None => Err(OpError::DestinationChanged { path: path.clone() }),
            },
            Step::Remove { .. } => match seen() {
                Some(entry) => fsops::remove(&path, entry),
                None => Err(OpError::DestinationChanged { path: path.clone() }),
            },
            Step::MakeDir { item, .. } => fsops::create_dir(&path).map(|()| {
                self.made_dirs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((side, rel.to_path_buf(), item.clone()));
            }),
            Step::Copy {
                from,
                item,
                expected,
                ..
            } => {
                let Item::File { digest, .. } = item else {
                    unreachable!("copies carry files")
                };
                let expected = match expected {
                    Some(_) => seen(),
                    None => None,
                };
                let started = SystemTime::now();
                let from_path = self.opts.root(side.other()).join(from);
                // The other side's file as scanned, when it is still at its scanned path (a
                // conflict copy is read from the name it was just moved to, and hashed).
                let scanned = self.seen_entry(side.other(), from).filter(|_| from == rel);
                // A file left unread is hashed by its copy, which nothing can check.
                let unread = from == rel && self.unread[side.other() as usize].contains(&**from);
                let content = match scanned {
                    _ if unread => fsops::Content::Hash(None),
                    Some(entry) if self.learner.trusted(side.other(), entry) => {
                        fsops::Content::Known {
                            entry,
                            digest: *digest,
                            exact: true,
                        }
                    }
                    _ => fsops::Content::Hash(Some(digest)),
                };
                fsops::copy_file(&from_path, &path, expected.into(), content).map(|c| {
                    self.learner
                        .learn(side.other(), from, &c.source, c.digest, Some(started));
                    self.learner
                        .learn(side, rel, &c.destination, c.digest, None);
                    if unread {
                        // The source as it was copied (it may have changed since the scan):
                        // its bytes, mode and time are what both sides now hold.
                        let item = Item::File {
                            digest: c.digest,
                            size: c.source.size,
                            mode: c.source.mode,
                            mtime: c.source.mtime,
                        };
                        self.read_by_copies
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(rel.to_path_buf(), item);
                    }
                })
            }
            Step::Link { item, expected, .. } => {
                let Item::Symlink { target, mtime } = item else {
                    unreachable!("links carry links")
                };
                let expected = match expected {
                    Some(_) => seen(),
                    None => None,
                };
                fsops::symlink(target, &path, expected.into(), *mtime).map(drop)
            }
            Step::Meta { want, .. } => match (seen(), want) {
                (Some(_), Item::Dir { mode, .. }) => fsops::set_dir_mode(&path, *mode),
                (
                    Some(entry),
                    Item::File {
                        mode,
                        mtime,
                        digest,
                        ..
                    },
                ) => fsops::set_metadata(&path, entry, *mode, *mtime).map(|now| {
                    self.learner.learn(side, rel, &now, *digest, None);
                }),
                (Some(entry), Item::Symlink { mtime, .. }) => {
                    fsops::set_metadata(&path, entry, entry.mode, *mtime).map(drop)
                }
                (None, _) => Err(OpError::DestinationChanged { path: path.clone() }),
            },
        };
        match result {
            Ok(()) => {
                log::info!("{}", describe(step));
                self.operations.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.fail(rel);
                if let Step::SaveLoser { to, .. } = step {
                    self.fail(to);
                }
                if let (Step::Remove { seen, .. }, OpError::Write { source, .. }) = (step, &err)
                    && matches!(seen, Item::Dir { .. })
                    && source.kind() == std::io::ErrorKind::DirectoryNotEmpty
                {
                    // Excluded entries (or ones created since the scan) keep it: that is what
                    // --exclude promises, not a fault. Its archive entry stays, so the removal
                    // is tried again, with this warning, until it can happen.
                    log::warn!(
                        "kept directory {} in {}: it holds entries that are excluded or new",
                        Escaped(rel),
                        side.name()
                    );
                    return;
                }
                self.errors.fetch_add(1, Ordering::Relaxed);
                let where_ = side.name();
                match err {
                    OpError::Read { source, .. } => {
                        log::error!(
                            "cannot read {} in {}: {source}",
                            Escaped(rel),
                            side.other().name()
                        )
                    }
                    OpError::Write { source, .. } => {
                        log::error!("cannot write {} in {where_}: {source}", Escaped(rel))
                    }
                    OpError::SourceChanged { .. } => log::error!(
                        "skipped {} in {where_}: its other side changed while being copied; retried next pass",
                        Escaped(rel)
                    ),
                    OpError::DestinationChanged { .. } => log::error!(
                        "skipped {} in {where_}: it changed since the scan; retried next pass",
                        Escaped(rel)
                    ),
                }
            }
        }
    }

    /// Gives directories made this pass (created owner-writable) their final mode and mtime,
    /// deepest first.
    fn finish_dirs(&self) {
        let mut made =
            std::mem::take(&mut *self.made_dirs.lock().unwrap_or_else(|e| e.into_inner()));
        made.sort_by(|a, b| b.1.cmp(&a.1));
        for (side, rel, item) in made {
            if signal::stop_requested() {
                return;
            }
            // A directory made here takes the other side's mtime too, so a fresh copy of a
            // tree matches it exactly; later the mtimes of directories are not compared.
            if let Item::Dir { mode, mtime } = item
                && let Err(err) = fsops::finish_dir(&self.opts.root(side).join(&rel), mode, mtime)
            {
                self.fail(&rel);
                self.errors.fetch_add(1, Ordering::Relaxed);
                log::error!("{err}");
            }
        }
    }
}
