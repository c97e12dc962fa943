//! One two-way pass (SPEC §4): scan both sides, hash, reconcile against the archive, keep hard
//! links, check the refusals, apply with the safe operations, and record in the archive what
//! was really done.
//!
//! The roots are reconciled as any directory (their mode, owner, attributes and time), under
//! the empty path. An archive that has no record of them (a first pass, or one written before
//! they were recorded) counts the root of a side that holds nothing, else BACKUP's, as the
//! one synced: the other side's root, SOURCE's where both hold something, gives its metadata.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::apply::{Applied, Applier, Target};
use crate::display::Escaped;
use crate::error::Error;
use crate::hash::dircache::{DirCache, Learner, tree_digests};
use crate::model::{Entry, Item, ItemList, Items, Kind, PassKind, PassStats, Side, path_order};
use crate::pass::PassOptions;
use crate::plan::links::{carry_structure, keep_links, record_links, relinks};
use crate::plan::reconcile::{Conflict, Contest, Plan, Policy, Verdict, reconcile};
use crate::plan::refuse::{self, Refusal};
use crate::plan::step::{Known, Step, Steps};
use crate::scan::{self, Scanned};
use crate::state::archive;
use crate::subtrees::Subtrees;
use crate::tree::{Tree, temp};

/// What a two-way pass needs besides the [`PassOptions`] of every pass.
#[derive(Debug)]
pub struct TwowayOptions {
    /// The archive file of this pair.
    pub archive: PathBuf,
    /// Where earlier releases kept it: read while `archive` does not exist, removed once it
    /// does.
    pub earlier: Vec<PathBuf>,
    /// Who wins a conflict.
    pub policy: Policy,
}

/// The digest an item carries for a file left unread (see [`unread_files`]). Reconcile never
/// compares it with another file's (the path is on one side only, and not in the archive), and
/// the archive never records it: the copy that reads the file gives the real one.
const UNREAD: checksum::Digest = [0; 32];

/// Turns a scanned tree (whose root is `root`) and its digests (one per entry, in the tree's
/// order) into the items reconcile compares, the root first under the empty path. Files whose
/// digest is missing are left out (unreadable: the caller protects their paths), or carry
/// [`UNREAD`] where `unread` marks them.
fn items_of<'t>(
    root: &Entry,
    tree: &'t Scanned,
    digests: &[Option<checksum::Digest>],
    unread: &[bool],
) -> ItemList<'t> {
    let root = Item::of(root, None).map(|item| (Path::new(""), item));
    let items = root
        .into_iter()
        .chain(tree.entries.iter().zip(digests).zip(unread).filter_map(
            |(((rel, e), digest), &unread)| {
                let digest = match digest {
                    Some(d) => Some(*d),
                    None if unread => Some(UNREAD),
                    None => None,
                };
                Some((rel.as_path(), Item::of(e, digest)?))
            },
        ))
        .collect();
    ItemList::from_sorted(items)
}

/// Gives `archived` a record of the roots where it has none: the metadata of the root that is
/// to take the other's (see the module's doc).
fn archive_roots(archived: &mut Items, roots: &[Entry; 2], src: &Scanned, dst: &Scanned) {
    let root = PathBuf::new();
    if archived.contains_key(&root) {
        return;
    }
    let from_backup = src.entries.is_empty() && !dst.entries.is_empty();
    let synced = &roots[if from_backup { 0 } else { 1 }];
    archived.insert(
        root,
        Item::Dir {
            meta: synced.meta(),
        },
    );
}

/// The log line of a conflict.
fn describe_conflict(c: &Conflict, dry_run: bool) -> String {
    let why = match c.verdict {
        Verdict::Policy(Policy::Newer) => "newer",
        Verdict::Policy(Policy::Source) => "source",
        Verdict::Policy(Policy::Backup) => "backup",
        Verdict::Directory => "directory",
    };
    let prefix = if dry_run { "dry run: " } else { "" };
    let rel = match &c.rel {
        root if root.as_os_str().is_empty() => Escaped(Path::new(".")),
        rel => Escaped(rel.as_path()),
    };
    let (winner, loser) = (c.winner.name(), c.winner.other().name());
    match &c.contest {
        Contest::Content { saved_as } => format!(
            "{prefix}conflict on {rel}: kept the {winner} version ({why}); the {loser} version is \
             saved as {} on both sides",
            Escaped(saved_as)
        ),
        Contest::Metadata { fields, lost } => {
            let mut values = Vec::new();
            if fields.mode {
                values.push(format!("mode {:04o}", lost.mode));
            }
            if fields.owner {
                let id = |n: u32| match n {
                    crate::model::NOT_CARRIED => "-".to_string(),
                    n => n.to_string(),
                };
                values.push(format!("owner {}:{}", id(lost.uid), id(lost.gid)));
            }
            if fields.xattrs {
                values.push("extended attributes".to_string());
            }
            format!(
                "{prefix}conflict on {rel}: both sides changed its {fields}: kept the {winner} \
                 {fields} ({why}); the {loser} {} replaced on both sides",
                match values.len() {
                    1 => format!("{} is", values[0]),
                    _ => format!("{} are", values.join(" and ")),
                }
            )
        }
    }
}

/// Marks, for each entry of `tree` (in its order), whether it is a file that only this side
/// holds and that `archived` does not know. Such a file is copied to the other side whatever
/// its content, so no decision needs its digest: it is not read before its copy, which hashes
/// it as it goes (a first sync into an empty directory reads each file once, not twice).
fn unread_files(tree: &Scanned, other: &Scanned, archived: &Items) -> Vec<bool> {
    // Both scans are in path order: one walk through the other's paths finds each name.
    let mut theirs = other.entries.keys().peekable();
    tree.entries
        .iter()
        .map(|(rel, e)| {
            while theirs.next_if(|p| path_order(p, rel).is_lt()).is_some() {}
            let held = theirs
                .peek()
                .is_some_and(|p| p.as_os_str() == rel.as_os_str());
            e.kind == Kind::File && !held && !archived.contains_key(rel)
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
    let done = pass(opts, sync, dir_cache);
    // What the scan found and the applier could not give, once, whatever the pass came to.
    let trees: [&dyn Tree; 2] = [opts.tree(Side::Source), opts.tree(Side::Backup)];
    super::warn_dropped(&trees);
    done
}

/// [`twoway_pass`] but for its warnings of what could not be carried.
fn pass(
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
    let earlier_journals = sync.earlier.iter().map(|p| p.with_extension("pending"));
    for journal in std::iter::once(journal.clone()).chain(earlier_journals) {
        for path in temp::remove_journaled_leftovers(&journal, &roots) {
            log::info!("removed leftover temporary file {}", path.display());
        }
    }
    // The pair's archive, or the one an earlier release kept where twoway ran.
    let taken_over = if sync.archive.exists() {
        None
    } else {
        sync.earlier.iter().find(|p| p.exists())
    };
    let read_from = taken_over.unwrap_or(&sync.archive);
    // The archive is parsed while the trees are scanned: the scan waits on the file system
    // more than it computes.
    let (archived, (src, dst)) = rayon::join(
        || archive::load_all(read_from, &opts.source, &opts.backup),
        || {
            rayon::join(
                // Files' attributes are taken from the hash cache where their stamps held,
                // and read with their content otherwise (see `tree_digests`).
                || scan::scan_lazily(trees[0], "SOURCE", &opts.filter),
                || scan::scan_lazily(trees[1], "BACKUP", &opts.filter),
            )
        },
    );
    let archived = archived?;
    let first_pass = archived.is_none();
    let archive::Archive {
        items: mut archived,
        links: recorded_links,
    } = archived.unwrap_or_default();
    let (mut src, mut dst) = (src?, dst?);
    // The roots themselves, which the scans list the entries of.
    let root_of = |side: Side| {
        trees[side as usize]
            .stat(Path::new(""))
            .map_err(|source| Error::ListRoot {
                role: side.name(),
                path: opts.root(side).to_path_buf(),
                source,
            })
    };
    let roots = [root_of(Side::Source)?, root_of(Side::Backup)?];
    archive_roots(&mut archived, &roots, &src, &dst);

    let mut stats = PassStats {
        kind: PassKind::Twoway,
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
    src.entries.set_xattrs(&digests.xattrs[0]);
    dst.entries.set_xattrs(&digests.xattrs[1]);
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
        || items_of(&roots[0], &src, src_digests, &src_unread),
        || items_of(&roots[1], &dst, dst_digests, &dst_unread),
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
        log::warn!("{}", describe_conflict(c, opts.dry_run));
    }
    stats.conflicts = Some(plan.conflicts.len() as u64);

    // The plan's items bound to the entries the scan saw, which the applier checks again right
    // before it acts on them. A file left unread is hashed by its copy, which says what the
    // archive records.
    let tree = |side: Side| if side == Side::Source { &src } else { &dst };
    let seen = |side: Side, rel: &Path| match rel.as_os_str().is_empty() {
        true => Some(&roots[side as usize]),
        false => tree(side).entries.get(rel),
    };
    let mut bound = Vec::with_capacity(plan.steps.len());
    for step in std::mem::take(&mut plan.steps) {
        let rel = step.rel().to_path_buf();
        match step.bind(|side, rel, _| seen(side, rel).cloned()) {
            Some(mut step) => {
                if let Step::Copy {
                    side, rel, known, ..
                } = &mut step
                    && unread[side.other() as usize].contains(rel.as_path())
                {
                    *known = Known::Unread;
                }
                bound.push(step);
            }
            // Reconcile plans only with what the scan saw.
            None => unreachable!("{} planned without being scanned", rel.display()),
        }
    }
    let linked = [&src, &dst].map(|tree| {
        tree.entries
            .iter()
            .filter(|(_, e)| e.is_linked())
            .map(|(rel, e)| (rel.as_path(), e))
            .collect::<Vec<_>>()
    });
    keep_links(&mut bound, [&linked[0], &linked[1]], seen);
    // A change of link structure alone: names both sides hold alike, readable.
    let alike = |rel: &Path| match (src_items.get(rel), dst_items.get(rel)) {
        (Some(a @ Item::File { digest, .. }), Some(b))
            if a == b && *digest != UNREAD && !protected.contains(rel) =>
        {
            Some(*digest)
        }
        _ => None,
    };
    let winner = match sync.policy {
        Policy::Backup => Side::Backup,
        Policy::Source | Policy::Newer => Side::Source,
    };
    carry_structure(
        &mut bound,
        [&linked[0], &linked[1]],
        recorded_links.as_ref(),
        winner,
        alike,
        seen,
    );
    // What the steps do to their names' inodes, for the groups the archive records.
    let relinked = relinks(&bound);
    let mut steps: Steps = bound.into_iter().collect();
    steps.sort();
    let applier = Applier {
        trees,
        target: Target::Sync,
        learner: &learner,
    };
    if opts.dry_run {
        let would = applier.dry_run(&steps);
        stats.operations = would.operations;
        stats.changes = would.changes;
        return Ok(stats);
    }
    if first_pass {
        log::info!("no archive yet for this pair: first pass, merging both sides without deleting");
    }

    crate::testhook::after_plan();
    // The sync-state directory is made, private, by the first pass that changes anything.
    if let Some(dir) = sync.archive.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::StateUnreadable {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    if let Err(err) = temp::start_temp_journal(&journal) {
        log::warn!(
            "cannot note temporary names in {}: {err}",
            journal.display()
        );
    }
    // Metadata first: a copy whose other side changed the file's metadata reads the file once
    // it has the merged metadata (see `Plan::steps`).
    let state = applier.begin();
    let (metadata, copies): (Vec<Step>, Vec<Step>) = std::mem::take(&mut steps.transfers)
        .into_iter()
        .partition(|step| matches!(step, Step::SetMeta { .. }));
    steps.transfers = metadata;
    applier.now(&state, &steps);
    crate::progress::expect(&copies);
    applier.now(&state, &copies.into_iter().collect());
    let Applied {
        operations,
        errors,
        failed,
        read_by_copies,
        changes,
        hashed_by_copies,
        stopped,
    } = applier.finish(state, &steps.links, &steps.dirs);
    temp::end_temp_journal(&journal);
    stats.operations += operations;
    stats.errors += errors;
    // A file left unread before the plan is read once, by its copy.
    stats.hashed += hashed_by_copies;
    stats.hashed_by_copies = hashed_by_copies;
    stats.changes = changes;
    // Stopped only if the stop left a step undone: a pass that applied every step is complete,
    // and its archive is written.
    stats.interrupted = stopped;
    let was_unread = |rel: &Path| unread.iter().any(|side| side.contains(rel));
    // A file left unread that was linked (not copied) holds what the name it was linked to
    // holds: what that one's copy read, or what both sides held there.
    let linked_items: HashMap<&Path, Item> = steps
        .links
        .iter()
        .filter_map(|step| match step {
            Step::Link { rel, existing, .. } if was_unread(rel) => {
                let item = match read_by_copies.get(existing) {
                    Some(item) => item.clone(),
                    None if was_unread(existing) => return None,
                    None => match plan.finals.get(existing) {
                        Some(fin) => fin.clone()?,
                        None => archived.get(existing)?.clone(),
                    },
                };
                Some((rel.as_path(), item))
            }
            _ => None,
        })
        .collect();

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
        // An archive taken over from where an earlier release kept it is written where it
        // belongs, changed or not.
        let mut changed = first_pass || taken_over.is_some();
        for (rel, fin) in &plan.finals {
            if covered(rel) {
                continue;
            }
            let fin = match fin {
                // What the copy read, or nothing: a file left unread whose copy did not
                // happen keeps no entry, and is found new again next pass.
                Some(Item::File { .. }) if was_unread(rel) => {
                    match read_by_copies.get(rel).or(linked_items.get(rel.as_path())) {
                        Some(item) => Some(item),
                        None => continue,
                    }
                }
                fin => fin.as_ref(),
            };
            changed = true;
            match fin {
                Some(item) => next.insert(rel.clone(), item.clone()),
                None => next.remove(rel),
            };
        }
        let links = record_links(
            [&linked[0], &linked[1]],
            &relinked,
            covered,
            |rel| matches!(next.get(rel), Some(Item::File { .. })),
            recorded_links.as_ref(),
        );
        changed |= recorded_links.as_ref() != Some(&links);
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
        let (text, flushed) = rayon::join(
            || archive::encode_all(&opts.source, &opts.backup, &next, &links),
            flush,
        );
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
    if let Some(old) = taken_over.filter(|_| sync.archive.exists()) {
        match std::fs::remove_file(old) {
            Ok(()) => log::info!(
                "the pair's archive moved from {} to {}",
                old.display(),
                sync.archive.display()
            ),
            Err(err) => log::warn!("cannot remove the earlier archive {}: {err}", old.display()),
        }
    }
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
