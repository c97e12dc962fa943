//! One versioned pass (SPEC §3): if SOURCE differs from the latest version in anything a
//! faithful copy carries (its full digest, see [`crate::digest::full_digest`]), build a new
//! version (hard-linking from the previous one what nothing could tell apart, copying the
//! rest, keeping SOURCE's hard links) and rotate.

use std::path::{Path, PathBuf};

use checksum::Digest;
use sync_core::apply::{Applier, Target};
use sync_core::display::Escaped;
use sync_core::hash::dircache::{DirCache, Learner, tree_digests};
use sync_core::model::{LinkFrom, PassKind, PassStats, Side, VersionMade};
use sync_core::pass::PassOptions;
use sync_core::plan::refuse::{self, Refusal};
use sync_core::plan::step::{Step, Steps, arrive, finish};
use sync_core::run::passes::Job;
use sync_core::run::startup::Session;
use sync_core::scan::{self, Scanned};
use sync_core::tree::{LocalTree, Tree};
use sync_core::{Error, signal};

use crate::links::Links;
use crate::manifest::{Item, Items, Manifest};
use crate::retention::Retention;
use crate::share::LinkDest;
use crate::store::Store;

fn store_error(err: impl std::error::Error) -> Error {
    Error::Versions(sync_core::error::one_line(&err))
}

/// Runs one versioned pass of `opts.source` into the version directory `opts.backup`,
/// keeping the versions `retention` keeps; a file that cannot share its inode with the
/// previous version may share the one in `link_dest`'s latest version (see `fill`).
///
/// Fails (changing nothing) if a root cannot be listed, the version store is unusable (a
/// foreign `_k`, a damaged manifest), or a refusal of SPEC §8 applies without `force`.
/// Unreadable entries are logged and counted, and no version is made from an incomplete read.
pub fn versioned_pass(
    opts: &PassOptions,
    cache: &mut DirCache,
    retention: &Retention,
    link_dest: Option<&LinkDest>,
) -> Result<PassStats, Error> {
    // The version's date: when SOURCE was read.
    let time = sync_core::testhook::now();
    let keep = retention.last.max(1) as usize;
    opts.check_roots()?;
    // Only SOURCE: BACKUP is the version store, the runner's own.
    let record = cache.beside("mounts");
    sync_core::pass::prepare_mounts(opts, &[Side::Source], record.as_deref());
    let mut store = Store::held(opts.tree(Side::Backup).clone()).map_err(store_error)?;
    store.check_names(keep).map_err(store_error)?;
    store.clean();
    if !opts.dry_run {
        store.prune_kept_by_restores(retention);
    }

    let source_tree = opts.tree(Side::Source);
    // Files' attributes are taken from the hash cache where their stamps held, and read with
    // their content otherwise (see `tree_digests`).
    let mut tree = scan::scan_lazily(source_tree, "SOURCE", &opts.filter)?;
    let mut stats = PassStats {
        kind: PassKind::Versioned,
        ..PassStats::default()
    };
    for (rel, err) in &tree.unlistable {
        log::error!("cannot list {} in SOURCE: {err}", Escaped(rel));
        stats.errors += 1;
    }
    // The root's own mode, time, owner and attributes are a version's too.
    let root = match source_tree.stat(Path::new("")) {
        Ok(root) => Some(root.meta()),
        Err(err) => {
            log::error!("cannot read SOURCE's root {}: {err}", Escaped(&opts.source));
            stats.errors += 1;
            None
        }
    };

    // The pair's one hash cache, SOURCE's side of it (BACKUP, the version store, is never
    // hashed: its manifests say what it holds). `--checksum` looks nothing up.
    let learner = Learner::new(&opts.source, &opts.backup);
    let no_cache;
    let lookup: &DirCache = if opts.checksum {
        no_cache = DirCache::in_memory();
        &no_cache
    } else {
        cache
    };
    let nothing = Scanned::default();
    let digests = tree_digests(
        lookup,
        &learner,
        [source_tree, opts.tree(Side::Backup)],
        [&tree, &nothing],
        [&[], &[]],
    );
    for (_, rel, err) in &digests.failed {
        log::error!("cannot read {}: {err}", Escaped(rel));
    }
    stats.errors += digests.failed.len() as u64;
    tree.entries.set_xattrs(&digests.xattrs[0]);
    stats.hashed = digests.hashed;
    stats.cache_hits = digests.cache_hits;
    let items: Items = tree
        .entries
        .iter()
        .zip(&digests.sides[Side::Source as usize])
        .filter_map(|((rel, entry), digest)| {
            // A file that could not be read is logged above and left out.
            let item = Item::of(entry, *digest)?;
            Some((rel.clone(), item))
        })
        .collect();
    let links = Links::of_scan(&tree.entries, &items);
    let wanted = Manifest::of(root, items, links);

    let latest = store.latest();
    let latest_manifest = match &latest {
        Some(v) => Some(v.manifest().map_err(store_error)?),
        None => None,
    };

    let result = if stats.errors > 0 {
        log::error!("no new version this pass: SOURCE could not be read completely");
        Ok(())
    } else if latest_manifest
        .as_ref()
        .is_some_and(|m| m.full_digest == wanted.full_digest)
    {
        log::info!(
            "no change since the latest version (content and metadata digest {}); nothing to do",
            short(&wanted.full_digest)
        );
        Ok(())
    } else if let Err(refusal) = refuse_if_unsafe(opts, &wanted, latest_manifest.as_ref()) {
        Err(refusal.into())
    } else if opts.dry_run {
        log::info!(
            "dry run: would create version _{} ({} entries)",
            keep - 1,
            wanted.items.len()
        );
        stats.operations += 1;
        Ok(())
    } else {
        // What the other store holds is part of the decision, read before the hook.
        let other = link_dest.and_then(LinkDest::latest);
        sync_core::testhook::after_plan();
        let previous = latest.as_ref().zip(latest_manifest.as_ref());
        let source = Source {
            root: source_tree,
            tree: &tree,
            learner: &learner,
        };
        rotate(
            &source,
            &mut store,
            &wanted,
            previous.map(|(v, m)| (v.dir.as_path(), m)),
            other.as_ref().map(|(dir, m)| (dir.as_path(), m)),
            (retention, time),
            &mut stats,
        )
    };
    // What copies could not keep or be given, once, now that they are done (and at every
    // pass: what the scan counted is never left for the next one's warning).
    sync_core::pass::warn_dropped(&[source_tree]);
    if !opts.dry_run && result.is_ok() {
        let mut blocks = digests.blocks;
        learner.record_into(&mut blocks, cache);
        let unlistable: Vec<&Path> = tree
            .unlistable
            .iter()
            .map(|(rel, _)| rel.as_path())
            .collect();
        if let Err(err) = cache.save(blocks, &unlistable, None) {
            log::warn!("cannot save the hash cache: {err}");
        }
    }
    result.map(|()| stats)
}

fn short(digest: &Digest) -> String {
    hex::encode(&digest[..6])
}

/// SPEC §8 against the latest version: an empty SOURCE, and a version without more than half
/// of the latest one's files.
fn refuse_if_unsafe(
    opts: &PassOptions,
    wanted: &Manifest,
    latest: Option<&Manifest>,
) -> Result<(), Refusal> {
    let Some(latest) = latest else { return Ok(()) };
    refuse::empty_side(
        opts.force,
        ("SOURCE", &opts.source),
        wanted.items.is_empty(),
        "the latest version",
        latest.items.len() as u64,
    )?;
    let gone = latest
        .items
        .iter()
        .filter(|(rel, item)| !matches!(item, Item::Dir { .. }) && !wanted.items.contains_key(*rel))
        .count() as u64;
    refuse::mass_deletion(
        opts.force,
        ("the latest version in", &opts.backup),
        gone,
        latest.non_dir_count() as u64,
    )
}

/// SOURCE as this pass saw it: the tree, its scan, and what trusts and learns its digests.
struct Source<'a> {
    /// SOURCE, reached as a tree.
    root: &'a LocalTree,
    tree: &'a Scanned,
    learner: &'a Learner,
}

/// Builds the new version and commits it; on a stop or a failure the build is abandoned and
/// the existing versions stay as they were.
fn rotate(
    source: &Source<'_>,
    store: &mut Store,
    wanted: &Manifest,
    previous: Option<(&Path, &Manifest)>,
    other: Option<(&Path, &Manifest)>,
    (retention, time): (&Retention, jiff::Timestamp),
    stats: &mut PassStats,
) -> Result<(), Error> {
    let build = store.start_build(time).map_err(store_error)?;
    match fill(source, &build.dir, wanted, previous, other) {
        Ok(Filled {
            items,
            linked,
            copied,
            applied,
        }) => {
            // What the copies wrote and read, whether or not the version is kept.
            stats.hashed += applied.hashed_by_copies;
            stats.hashed_by_copies = applied.hashed_by_copies;
            stats.changes = applied.changes;
            if signal::stop_requested() {
                build.abandon();
                stats.interrupted = true;
                log::info!(
                    "stopped before the new version was complete; the versions are unchanged"
                );
                return Ok(());
            }
            let manifest = Manifest::of(wanted.root, items, wanted.links.clone());
            match store.commit(build, &manifest, retention) {
                Ok((version, dropped)) => {
                    log::info!(
                        "created version {} ({} files: {linked} hard-linked, {copied} copied; tree digest {})",
                        version.name,
                        linked + copied,
                        short(&manifest.digest)
                    );
                    if dropped > 0 {
                        log::info!(
                            "let go of {dropped} older version{} that the retention no longer keeps",
                            if dropped == 1 { "" } else { "s" }
                        );
                    }
                    stats.operations += 1;
                    stats.version = Some(VersionMade {
                        name: version.name,
                        files: linked + copied,
                        linked,
                        copied,
                    });
                    Ok(())
                }
                Err(err) => {
                    log::error!(
                        "cannot store the new version: {}",
                        sync_core::error::one_line(&err)
                    );
                    stats.errors += 1;
                    Ok(())
                }
            }
        }
        Err(failures) => {
            build.abandon();
            stats.errors += failures;
            log::error!(
                "no new version this pass: {failures} entries could not be copied; retried next pass"
            );
            Ok(())
        }
    }
}

struct Filled {
    items: Items,
    linked: u64,
    copied: u64,
    /// What the applier counted (bytes copied, files hashed by the copies).
    applied: Counted,
}

/// What [`fill`]'s applier counted, for the pass's summary.
struct Counted {
    changes: [sync_core::model::Changes; 2],
    hashed_by_copies: u64,
}

/// Fills `dir` with `wanted`'s tree, through the one applier. What the latest version holds at
/// the same path with the same content and metadata is hard-linked (versions are never edited
/// in place), else, with `other` (another store's latest version, `--link-dest`), what that
/// version holds at the same path with the same content and metadata; the rest is copied from
/// SOURCE; the further names of an inode are linked to its
/// first name once every copy is done, so that SOURCE's hard links are the version's. Returns
/// the entries as really written (a file that changed since it was hashed is recorded with
/// what was copied), or the number of failures.
fn fill(
    source: &Source<'_>,
    dir: &Path,
    wanted: &Manifest,
    previous: Option<(&Path, &Manifest)>,
    other: Option<(&Path, &Manifest)>,
) -> Result<Filled, u64> {
    let mut steps = Steps::default();
    for (rel, item) in &wanted.items {
        let scanned = source.tree.entries.get(rel).cloned();
        steps.extend(finish(Side::Backup, rel.clone(), item));
        if let (Some(first), Some(entry)) = (wanted.links.first_of(rel), &scanned) {
            steps.push(Step::Link {
                side: Side::Backup,
                rel: rel.clone(),
                existing: first.to_path_buf(),
                source: entry.clone(),
                replace: None,
            });
            continue;
        }
        let mut step = arrive(Side::Backup, rel.clone(), item, scanned, false, None);
        // The store's own previous version first: its inode is in this store already.
        let from = [previous, other]
            .into_iter()
            .flatten()
            .find(|(_, m)| shareable(rel, wanted, m));
        if let (Step::Copy { link, .. }, Item::File { size, meta, .. }, Some((from_dir, _))) =
            (&mut step, item, from)
        {
            *link = Some(Box::new(LinkFrom {
                root: from_dir.to_path_buf(),
                rel: rel.clone(),
                size: *size,
                mtime: meta.mtime,
            }));
        }
        steps.push(step);
    }
    // The version's root takes SOURCE root's mode, time, owner and attributes: a private
    // SOURCE (0700) keeps a private version.
    if let Some(meta) = wanted.root {
        steps.extend(finish(Side::Backup, PathBuf::new(), &Item::Dir { meta }));
    }
    steps.sort();
    let to = LocalTree::open(dir).map_err(|err| {
        log::error!("cannot open {}: {err}", Escaped(dir));
        1u64
    })?;
    let applier = Applier {
        trees: [source.root, &to],
        target: Target::Build,
        learner: source.learner,
    };
    let applied = applier.apply(&steps);
    if applied.errors > 0 {
        return Err(applied.errors);
    }
    let files = wanted
        .items
        .values()
        .filter(|i| matches!(i, Item::File { .. }));
    let copied = applied.read_by_copies.len() as u64;
    let linked = files.count() as u64 - copied;
    let counted = Counted {
        changes: applied.changes,
        hashed_by_copies: applied.hashed_by_copies,
    };
    let mut items = wanted.items.clone();
    items.extend(applied.read_by_copies);
    // A further name is its first name's inode, whatever that copy read.
    for (further, first) in wanted.links.iter() {
        if let Some(item) = items.get(first).cloned() {
            items.insert(further.to_path_buf(), item);
        }
    }
    Ok(Filled {
        items,
        linked,
        copied,
        applied: counted,
    })
}

/// Whether the file at `rel` (a first name, or a file alone) may share the inode of the
/// previous version's file at the same path: nothing could tell them apart. Its content and
/// every carried metadata are equal (rsync's --link-dest rule; never a file at another path:
/// two files that merely hold the same bytes stay two files), and so is its group of hard
/// links: the same names at the same paths, or the version would join names SOURCE keeps
/// apart, or split names SOURCE keeps together.
fn shareable(rel: &Path, wanted: &Manifest, previous: &Manifest) -> bool {
    // Most files share their inode with no other name, in either version.
    if !wanted.links.is_linked(rel) && !previous.links.is_linked(rel) {
        return wanted.items.get(rel) == previous.items.get(rel);
    }
    let group = wanted.links.group(rel);
    group == previous.links.group(rel)
        && group
            .iter()
            .all(|name| wanted.items.get(*name) == previous.items.get(*name))
}

/// `oneway SOURCE VDIR --versioned`: a versioned pass at every interval.
pub struct VersionedJob {
    /// The session it runs in.
    pub session: Session,
    /// Which versions are kept.
    pub retention: Retention,
    /// Another store to share files with (`--link-dest`).
    pub link_dest: Option<LinkDest>,
}

impl Job for VersionedJob {
    fn pass(&mut self) -> Result<PassStats, Error> {
        versioned_pass(
            &self.session.opts,
            &mut self.session.cache,
            &self.retention,
            self.link_dest.as_ref(),
        )
    }
}
