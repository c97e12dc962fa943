//! One versioned pass (SPEC §3): if SOURCE's tree digest differs from the latest version's,
//! build a new version (hard-linking what is unchanged, copying the rest) and rotate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use checksum::Digest;
use rayon::prelude::*;
use sync_core::display::Escaped;
use sync_core::hash::dircache::{DirCache, Learner, tree_digests};
use sync_core::model::{Entry, Kind, PassStats, Side, Timestamp};
use sync_core::pass::PassOptions;
use sync_core::plan::refuse::{self, Refusal};
use sync_core::run::passes::Job;
use sync_core::run::startup::Session;
use sync_core::scan::{self, Tree};
use sync_core::tree::ops as fsops;
use sync_core::{Error, signal};

use crate::manifest::{Item, Items, Manifest};
use crate::store::Store;

fn store_error(err: impl std::error::Error) -> Error {
    Error::Versions(sync_core::error::one_line(&err))
}

/// Runs one versioned pass of `opts.source` into the version directory `opts.backup`,
/// keeping `keep` versions (at least 2).
///
/// Fails (changing nothing) if a root cannot be listed, the version store is unusable (a
/// foreign `_k`, a damaged manifest), or a refusal of SPEC §8 applies without `force`.
/// Unreadable entries are logged and counted, and no version is made from an incomplete read.
pub fn versioned_pass(
    opts: &PassOptions,
    cache: &mut DirCache,
    keep: usize,
) -> Result<PassStats, Error> {
    let mut store = Store::open(&opts.backup).map_err(store_error)?;
    store.check_names(keep).map_err(store_error)?;
    store.clean();

    let tree = scan::scan(&opts.source, "SOURCE", &opts.filter)?;
    let mut stats = PassStats::default();
    for (rel, err) in &tree.unlistable {
        log::error!("cannot list {} in SOURCE: {err}", Escaped(rel));
        stats.errors += 1;
    }

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
    let nothing = Tree::default();
    let digests = tree_digests(
        lookup,
        &learner,
        [&opts.source, &opts.backup],
        [&tree, &nothing],
        [&[], &[]],
    );
    for (_, rel, err) in &digests.failed {
        log::error!("cannot read {}: {err}", Escaped(rel));
    }
    stats.errors += digests.failed.len() as u64;
    stats.hashed = digests.hashed;
    stats.cache_hits = digests.cache_hits;
    let items: Items = tree
        .entries
        .iter()
        .zip(&digests.sides[Side::Source as usize])
        .filter_map(|((rel, entry), digest)| {
            let item = match &entry.kind {
                Kind::File => Item::File {
                    // A file that could not be read is logged above and left out.
                    digest: (*digest)?,
                    size: entry.size,
                    mode: entry.mode,
                    mtime: entry.mtime,
                },
                Kind::Dir => Item::Dir {
                    mode: entry.mode,
                    mtime: entry.mtime,
                },
                Kind::Symlink(target) => Item::Symlink {
                    target: target.clone(),
                    mtime: entry.mtime,
                },
                Kind::Special => {
                    log::warn!(
                        "skipped {}: not a regular file, directory or symlink",
                        Escaped(rel)
                    );
                    return None;
                }
            };
            Some((rel.clone(), item))
        })
        .collect();
    let wanted = Manifest::new(items);

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
        .is_some_and(|m| m.digest == wanted.digest)
    {
        log::info!(
            "no change since the latest version (tree digest {}); nothing to do",
            short(&wanted.digest)
        );
        Ok(())
    } else {
        refuse_if_unsafe(opts, &wanted, latest_manifest.as_ref())?;
        if opts.dry_run {
            log::info!(
                "dry run: would create version _{} ({} entries)",
                keep - 1,
                wanted.items.len()
            );
            stats.operations += 1;
            Ok(())
        } else {
            sync_core::testhook::after_plan();
            let previous = latest.as_ref().zip(latest_manifest.as_ref());
            let source = Source {
                opts,
                tree: &tree,
                learner: &learner,
            };
            rotate(
                &source,
                &mut store,
                &wanted,
                previous.map(|(v, m)| (v.dir.as_path(), m)),
                keep,
                &mut stats,
            )
        }
    };
    if !opts.dry_run {
        let mut blocks = digests.blocks;
        learner.record_into(&mut blocks, cache);
        let unlistable: Vec<&Path> = tree
            .unlistable
            .iter()
            .map(|(rel, _)| rel.as_path())
            .collect();
        if let Err(err) = cache.save(blocks, &unlistable) {
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

/// Builds the new version and commits it; on a stop or a failure the build is abandoned and
/// the existing versions stay as they were.
/// SOURCE as this pass saw it: where it is, its scan, and the digests of its files.
struct Source<'a> {
    opts: &'a PassOptions,
    tree: &'a Tree,
    learner: &'a Learner,
}

fn rotate(
    source: &Source<'_>,
    store: &mut Store,
    wanted: &Manifest,
    previous: Option<(&Path, &Manifest)>,
    keep: usize,
    stats: &mut PassStats,
) -> Result<(), Error> {
    let build = store.start_build().map_err(store_error)?;
    match fill(source, &build.dir, wanted, previous) {
        Ok(Filled {
            items,
            linked,
            copied,
        }) => {
            if signal::stop_requested() {
                build.abandon();
                stats.interrupted = true;
                log::info!(
                    "stopped before the new version was complete; the versions are unchanged"
                );
                return Ok(());
            }
            let manifest = Manifest::new(items);
            match store.commit(build, &manifest, keep) {
                Ok(version) => {
                    log::info!(
                        "created version {} ({} files: {linked} hard-linked, {copied} copied; tree digest {})",
                        version.name,
                        linked + copied,
                        short(&manifest.digest)
                    );
                    stats.operations += 1;
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
}

/// Fills `dir` with `wanted`'s tree. Returns the entries as really written (a file that
/// changed since it was hashed is recorded with what was copied), or the number of failures.
fn fill(
    source: &Source<'_>,
    dir: &Path,
    wanted: &Manifest,
    previous: Option<(&Path, &Manifest)>,
) -> Result<Filled, u64> {
    let (opts, learner) = (source.opts, source.learner);
    // What the latest version already holds, by content and metadata: a file identical in
    // all of them can share its inode, since versions are never edited in place.
    let mut reusable: HashMap<(Digest, u64, u32, Timestamp), &Path> = HashMap::new();
    if let Some((_, prev)) = previous {
        for (rel, item) in &prev.items {
            if let Item::File {
                digest,
                size,
                mode,
                mtime,
            } = item
            {
                reusable
                    .entry((*digest, *size, *mode, *mtime))
                    .or_insert(rel);
            }
        }
    }
    let mut failures = 0u64;
    for (rel, item) in &wanted.items {
        if let Item::Dir { .. } = item
            && let Err(err) = fsops::create_dir(&dir.join(rel))
        {
            log::error!("{err}");
            failures += 1;
        }
    }
    if failures > 0 {
        return Err(failures);
    }
    // The build directory is renamed to a version only once complete, and thrown away after
    // any failure or a kill: its files are created under their own names (`Dest::Hidden`).
    let written: Mutex<Vec<(PathBuf, Item)>> = Mutex::new(Vec::new());
    let linked = AtomicU64::new(0);
    let copied = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    wanted.items.par_iter().for_each(|(rel, item)| {
        if signal::stop_requested() || failed.load(Ordering::Relaxed) > 0 {
            return;
        }
        let dst = dir.join(rel);
        let done = match item {
            Item::Dir { .. } => return,
            Item::Symlink { target, mtime } => {
                fsops::symlink(target, &dst, fsops::Dest::Hidden, *mtime).map(|_| item.clone())
            }
            Item::File {
                digest,
                size,
                mode,
                mtime,
            } => {
                let from_previous = previous.and_then(|(prev_dir, _)| {
                    reusable
                        .get(&(*digest, *size, *mode, *mtime))
                        .map(|prev_rel| prev_dir.join(prev_rel))
                });
                if let Some(src) = from_previous
                    && link_if_intact(&src, &dst, *size, *mtime)
                {
                    linked.fetch_add(1, Ordering::Relaxed);
                    Ok(item.clone())
                } else {
                    let started = SystemTime::now();
                    // The digest was hashed or cached this pass: the kernel copies the bytes.
                    let content = match source.tree.entries.get(rel) {
                        Some(entry) if learner.trusted(Side::Source, entry) => {
                            fsops::Content::Known {
                                entry,
                                digest: *digest,
                                exact: false,
                            }
                        }
                        _ => fsops::Content::Hash(None),
                    };
                    fsops::copy_file(&opts.source.join(rel), &dst, fsops::Dest::Hidden, content)
                        .map(|c| {
                            copied.fetch_add(1, Ordering::Relaxed);
                            learner.learn(Side::Source, rel, &c.source, c.digest, Some(started));
                            Item::File {
                                digest: c.digest,
                                size: c.source.size,
                                mode: c.source.mode,
                                mtime: c.source.mtime,
                            }
                        })
                }
            }
        };
        match done {
            Ok(item) => written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((rel.clone(), item)),
            Err(err) => {
                log::error!("cannot put {} in the new version: {err}", Escaped(rel));
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let failures = failed.into_inner();
    if failures > 0 {
        return Err(failures);
    }
    let mut items: Items = written
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .collect();
    // Directory modes and times last, deepest first: filling a directory moves its mtime.
    for (rel, item) in wanted.items.iter().rev() {
        if let Item::Dir { mode, mtime } = item {
            let path = dir.join(rel);
            if let Err(err) = fsops::finish_dir(&path, *mode, *mtime) {
                log::error!("{err}");
                return Err(1);
            }
            items.insert(rel.clone(), item.clone());
        }
    }
    Ok(Filled {
        items,
        linked: linked.into_inner(),
        copied: copied.into_inner(),
    })
}

/// Hard-links `src` (a file of the latest version) to `dst` if it still has the recorded
/// size and mtime; a version edited by hand is not spread further.
fn link_if_intact(src: &Path, dst: &Path, size: u64, mtime: Timestamp) -> bool {
    match Entry::read(src) {
        Ok(e) if e.kind == Kind::File && e.size == size && e.mtime == mtime => {
            std::fs::hard_link(src, dst).is_ok()
        }
        _ => false,
    }
}

/// `oneway SOURCE VDIR --versioned`: a versioned pass at every interval.
pub struct VersionedJob {
    /// The session it runs in.
    pub session: Session,
    /// Versions kept (at least 2).
    pub keep: usize,
}

impl Job for VersionedJob {
    fn pass(&mut self) -> Result<PassStats, Error> {
        versioned_pass(&self.session.opts, &mut self.session.cache, self.keep)
    }
}
