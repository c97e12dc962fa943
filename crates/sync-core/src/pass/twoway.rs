//! One two-way pass (SPEC §4): scan both sides, hash, reconcile against the archive, check the
//! refusals, apply with the safe operations, and record in the archive what was really done.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::apply::{Applied, Applier, Target};
use crate::display::Escaped;
use crate::error::Error;
use crate::hash::dircache::{DirCache, Learner, tree_digests};
use crate::model::{Item, ItemList, Items, Kind, PassStats, Side};
use crate::pass::PassOptions;
use crate::plan::reconcile::{Plan, Policy, Verdict, reconcile};
use crate::plan::refuse::{self, Refusal};
use crate::plan::step::{Known, Step, Steps};
use crate::scan::{self, Scanned};
use crate::signal;
use crate::state::archive;
use crate::subtrees::Subtrees;
use crate::tree::{Tree, temp};

/// What a two-way pass needs besides the [`PassOptions`] of every pass.
#[derive(Debug)]
pub struct TwowayOptions {
    /// The archive file of this pair.
    pub archive: PathBuf,
    /// Who wins a conflict.
    pub policy: Policy,
}

/// The digest an item carries for a file left unread (see [`unread_files`]). Reconcile never
/// compares it with another file's (the path is on one side only, and not in the archive), and
/// the archive never records it: the copy that reads the file gives the real one.
const UNREAD: checksum::Digest = [0; 32];

/// Turns a scanned tree and its digests (one per entry, in the tree's order) into the items
/// reconcile compares. Files whose digest is missing are left out (unreadable: the caller
/// protects their paths), or carry [`UNREAD`] where `unread` marks them.
fn items_of<'t>(
    tree: &'t Scanned,
    digests: &[Option<checksum::Digest>],
    unread: &[bool],
) -> ItemList<'t> {
    let items = tree
        .entries
        .iter()
        .zip(digests)
        .zip(unread)
        .filter_map(|(((rel, e), digest), &unread)| {
            let digest = match digest {
                Some(d) => Some(*d),
                None if unread => Some(UNREAD),
                None => None,
            };
            Some((rel.as_path(), Item::of(e, digest)?))
        })
        .collect();
    ItemList::from_sorted(items)
}

/// Marks, for each entry of `tree` (in its order), whether it is a file that only this side
/// holds and that `archived` does not know. Such a file is copied to the other side whatever
/// its content, so no decision needs its digest: it is not read before its copy, which hashes
/// it as it goes (a first sync into an empty directory reads each file once, not twice).
fn unread_files(tree: &Scanned, other: &Scanned, archived: &Items) -> Vec<bool> {
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
pub fn twoway_pass(
    opts: &PassOptions,
    sync: &TwowayOptions,
    dir_cache: &mut DirCache,
) -> Result<PassStats, Error> {
    // Before the scan, so that a killed pass's half-written files are gone rather than
    // taken for the user's.
    opts.check_roots()?;
    let record = dir_cache.beside("mounts");
    super::prepare_mounts(opts, &[Side::Source, Side::Backup], record.as_deref());
    let trees: [&dyn Tree; 2] = [opts.tree(Side::Source), opts.tree(Side::Backup)];
    let journal = sync.archive.with_extension("pending");
    let roots = [
        (opts.source.as_path(), trees[0]),
        (opts.backup.as_path(), trees[1]),
    ];
    for path in temp::remove_journaled_leftovers(&journal, &roots) {
        log::info!("removed leftover temporary file {}", path.display());
    }
    // The archive is parsed while the trees are scanned: the scan waits on the file system
    // more than it computes.
    let (archived, (src, dst)) = rayon::join(
        || archive::load(&sync.archive, &opts.source, &opts.backup),
        || {
            rayon::join(
                || scan::scan(trees[0], "SOURCE", &opts.filter),
                || scan::scan(trees[1], "BACKUP", &opts.filter),
            )
        },
    );
    let archived = archived?;
    let first_pass = archived.is_none();
    let archived = archived.unwrap_or_default();
    let (src, dst) = (src?, dst?);
    super::warn_dropped(&trees);

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
        trees,
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
    let mut plan = reconcile(
        &archived,
        &src_items,
        &dst_items,
        &protected,
        sync.policy,
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

    // The plan's items bound to the entries the scan saw, which the applier checks again right
    // before it acts on them. A file left unread is hashed by its copy, which says what the
    // archive records.
    let tree = |side: Side| if side == Side::Source { &src } else { &dst };
    let mut steps = Steps::default();
    for step in std::mem::take(&mut plan.steps) {
        let rel = step.rel().to_path_buf();
        match step.bind(|side, rel, _| tree(side).entries.get(rel).cloned()) {
            Some(mut step) => {
                if let Step::Copy {
                    side, rel, known, ..
                } = &mut step
                    && unread[side.other() as usize].contains(rel.as_path())
                {
                    *known = Known::Unread;
                }
                steps.push(step);
            }
            // Reconcile plans only with what the scan saw.
            None => unreachable!("{} planned without being scanned", rel.display()),
        }
    }
    steps.sort();
    let applier = Applier {
        trees,
        target: Target::Sync,
        learner: &learner,
    };
    if opts.dry_run {
        stats.operations = applier.dry_run(&steps);
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
    let Applied {
        operations,
        errors,
        failed,
        read_by_copies,
    } = applier.apply(&steps);
    temp::end_temp_journal(&journal);
    stats.operations += operations;
    stats.errors += errors;
    stats.interrupted = signal::stop_requested();
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
        if let Err(err) = dir_cache.save(blocks, &unlistable, None) {
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
        let failed: Subtrees = failed.iter().collect();
        let covered = |rel: &Path| failed.contains(rel);
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
            for tree in trees {
                tree.flush().map_err(|source| Error::StateUnreadable {
                    path: PathBuf::from(tree.name()),
                    source,
                })?;
            }
            Ok(())
        };
        let (text, flushed) =
            rayon::join(|| archive::encode(&opts.source, &opts.backup, &next), flush);
        flushed?;
        crate::state::text::write_atomically(&sync.archive, &text).map_err(|source| {
            Error::StateUnreadable {
                path: sync.archive.clone(),
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
    opts: &PassOptions,
    src: &Scanned,
    dst: &Scanned,
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
    opts: &PassOptions,
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
