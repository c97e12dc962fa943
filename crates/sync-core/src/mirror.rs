//! One mirror pass (SPEC §3): scan both roots, compare, plan, check the refusals of SPEC §8,
//! apply with the safe operations of [`crate::fsops`], and record what was hashed.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use checksum::Digest;
use rayon::prelude::*;

use crate::cache::{HashCache, Side};
use crate::display::Escaped;
use crate::error::Error;
use crate::fsops::{self, OpError, TEMP_PREFIX};
use crate::hashing::Digests;
use crate::scan::{self, Entry, Filter, Kind, Timestamp, Tree};
use crate::signal;

/// What a mirror pass works on and how.
#[derive(Debug)]
pub struct PassOptions {
    /// Canonical SOURCE.
    pub source: PathBuf,
    /// Canonical BACKUP.
    pub backup: PathBuf,
    /// Paths left alone on both sides.
    pub filter: Filter,
    /// Log what would be done; change nothing.
    pub dry_run: bool,
    /// Re-hash every file even where the cached hash is valid.
    pub checksum: bool,
    /// Let the refusals of SPEC §8 through.
    pub force: bool,
}

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassStats {
    /// File operations carried out (or, in a dry run, that would be).
    pub operations: u64,
    /// Entries that failed and were skipped.
    pub errors: u64,
    /// Files whose content was read to compare them.
    pub hashed: u64,
    /// Files whose digest came from the hash cache.
    pub cache_hits: u64,
    /// True if a stop was requested before the pass finished.
    pub interrupted: bool,
    /// Conflicts settled (two-way passes only).
    pub conflicts: Option<u64>,
}

/// One step of a plan.
#[derive(Debug)]
enum Op {
    /// Remove the BACKUP entry the scan saw.
    Remove { rel: PathBuf, seen: Entry },
    /// Create a directory.
    CreateDir { rel: PathBuf },
    /// Copy a SOURCE file, over `replace` if set.
    Copy {
        rel: PathBuf,
        replace: Option<Entry>,
        /// The source as scanned.
        from: Entry,
        /// Its digest, if this pass hashed it.
        known: Option<Digest>,
    },
    /// Create a link, over `replace` if set.
    Link {
        rel: PathBuf,
        target: PathBuf,
        mtime: Timestamp,
        replace: Option<Entry>,
    },
    /// Same content: only mode and mtime differ.
    Meta {
        rel: PathBuf,
        seen: Entry,
        mode: u32,
        mtime: Timestamp,
        digest: Option<Digest>,
    },
}

impl Op {
    fn rel(&self) -> &Path {
        match self {
            Op::Remove { rel, .. }
            | Op::CreateDir { rel }
            | Op::Copy { rel, .. }
            | Op::Link { rel, .. }
            | Op::Meta { rel, .. } => rel,
        }
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        let _ = match self {
            Op::Remove { rel, seen } => match seen.kind {
                Kind::Dir => write!(s, "removed directory {}", Escaped(rel)),
                _ if is_temp_name(rel) => {
                    write!(s, "removed leftover temporary file {}", Escaped(rel))
                }
                _ => write!(s, "removed {}", Escaped(rel)),
            },
            Op::CreateDir { rel } => write!(s, "created directory {}", Escaped(rel)),
            Op::Copy {
                rel, replace: None, ..
            } => write!(s, "copied {}", Escaped(rel)),
            Op::Copy {
                rel,
                replace: Some(_),
                ..
            } => write!(s, "replaced {}", Escaped(rel)),
            Op::Link {
                rel,
                target,
                replace,
                ..
            } => write!(
                s,
                "{} symlink {} -> {}",
                // A changed link is replaced; a link where a file was is created.
                if replace
                    .as_ref()
                    .is_some_and(|r| matches!(r.kind, Kind::Symlink(_)))
                {
                    "replaced"
                } else {
                    "created"
                },
                Escaped(rel),
                Escaped(target)
            ),
            Op::Meta { rel, .. } => write!(s, "updated metadata of {}", Escaped(rel)),
        };
        s
    }
}

fn is_temp_name(rel: &Path) -> bool {
    rel.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(TEMP_PREFIX.as_bytes()))
}

/// A comparison waiting for digests: both sides hold a file of one size.
struct Compare {
    rel: PathBuf,
    src: Entry,
    dst: Entry,
}

struct Plan {
    removals: Vec<Op>,
    creates: Vec<Op>,
    transfers: Vec<Op>,
    compares: Vec<Compare>,
    /// SOURCE directories whose mode and mtime BACKUP must end with.
    dirs: Vec<(PathBuf, Entry)>,
}

/// Paths under which nothing may be done this pass: directories whose listing failed on
/// either side (their content is unknown, never empty) and SOURCE entries we do not copy.
struct Protected(HashSet<PathBuf>);

impl Protected {
    fn covers(&self, rel: &Path) -> bool {
        !self.0.is_empty() && rel.ancestors().any(|a| self.0.contains(a))
    }
}

fn plan(src: &Tree, dst: &Tree, protected: &Protected) -> Plan {
    let mut plan = Plan {
        removals: Vec::new(),
        creates: Vec::new(),
        transfers: Vec::new(),
        compares: Vec::new(),
        dirs: Vec::new(),
    };
    for (rel, pair) in merge(&src.entries, &dst.entries) {
        if protected.covers(rel) {
            continue;
        }
        let rel = rel.clone();
        match pair {
            (None, Some(d)) => plan.removals.push(Op::Remove {
                rel,
                seen: d.clone(),
            }),
            (Some(s), d) => {
                // A directory on the BACKUP side that SOURCE does not have as a directory goes
                // first; its children, absent from SOURCE, are removed before it.
                let d = match d {
                    Some(d) if d.is_dir() != s.is_dir() => {
                        plan.removals.push(Op::Remove {
                            rel: rel.clone(),
                            seen: d.clone(),
                        });
                        None
                    }
                    other => other,
                };
                match (&s.kind, d) {
                    (Kind::Dir, None) => {
                        plan.creates.push(Op::CreateDir { rel: rel.clone() });
                        plan.dirs.push((rel, s.clone()));
                    }
                    (Kind::Dir, Some(_)) => plan.dirs.push((rel, s.clone())),
                    (Kind::File, Some(d)) if d.kind == Kind::File && d.size == s.size => {
                        plan.compares.push(Compare {
                            rel,
                            src: s.clone(),
                            dst: d.clone(),
                        });
                    }
                    (Kind::File, d) => plan.transfers.push(Op::Copy {
                        rel,
                        replace: d.cloned(),
                        from: s.clone(),
                        known: None,
                    }),
                    (Kind::Symlink(_), Some(d)) if d.kind == s.kind => {
                        if d.mtime != s.mtime {
                            plan.transfers.push(Op::Meta {
                                rel,
                                seen: d.clone(),
                                mode: s.mode,
                                mtime: s.mtime,
                                digest: None,
                            });
                        }
                    }
                    (Kind::Symlink(target), d) => plan.transfers.push(Op::Link {
                        rel,
                        target: target.clone(),
                        mtime: s.mtime,
                        replace: d.cloned(),
                    }),
                    (Kind::Special, _) => {}
                }
            }
            (None, None) => {}
        }
    }
    plan
}

/// Walks two sorted maps together, yielding each path once with what each side holds.
fn merge<'a>(
    a: &'a BTreeMap<PathBuf, Entry>,
    b: &'a BTreeMap<PathBuf, Entry>,
) -> impl Iterator<Item = (&'a PathBuf, (Option<&'a Entry>, Option<&'a Entry>))> {
    let mut ia = a.iter().peekable();
    let mut ib = b.iter().peekable();
    std::iter::from_fn(move || match (ia.peek(), ib.peek()) {
        (Some((ka, _)), Some((kb, _))) => match crate::scan::path_order(ka, kb) {
            std::cmp::Ordering::Less => ia.next().map(|(k, v)| (k, (Some(v), None))),
            std::cmp::Ordering::Greater => ib.next().map(|(k, v)| (k, (None, Some(v)))),
            std::cmp::Ordering::Equal => {
                let (k, va) = ia.next()?;
                let (_, vb) = ib.next()?;
                Some((k, (Some(va), Some(vb))))
            }
        },
        (Some(_), None) => ia.next().map(|(k, v)| (k, (Some(v), None))),
        (None, Some(_)) => ib.next().map(|(k, v)| (k, (None, Some(v)))),
        (None, None) => None,
    })
}

/// Counters shared by parallel workers.
#[derive(Default)]
struct Counters {
    operations: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self, digests: &Digests<'_>, interrupted: bool) -> PassStats {
        PassStats {
            operations: self.operations.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            hashed: digests.hashed(),
            cache_hits: digests.cache_hits(),
            interrupted,
            conflicts: None,
        }
    }
}

struct Pass<'a> {
    opts: &'a PassOptions,
    digests: Digests<'a>,
    counters: Counters,
    /// Paths whose creation or removal failed: nothing is done beneath them this pass, so a
    /// link left where a directory should be is never written through.
    failed: Mutex<HashSet<PathBuf>>,
    /// BACKUP directories whose content changed: their mtime must be set again.
    dirty: Mutex<HashSet<PathBuf>>,
}

impl Pass<'_> {
    fn error(&self, message: std::fmt::Arguments<'_>) {
        log::error!("{message}");
        Counters::bump(&self.counters.errors);
    }

    fn op_error(&self, rel: &Path, err: &OpError) {
        match err {
            OpError::Read { source, .. } => {
                self.error(format_args!("cannot read {}: {source}", Escaped(rel)))
            }
            OpError::Write { source, .. } => {
                self.error(format_args!("cannot write {}: {source}", Escaped(rel)))
            }
            OpError::SourceChanged { .. } => self.error(format_args!(
                "skipped {}: it changed while being copied; retried next pass",
                Escaped(rel)
            )),
            OpError::DestinationChanged { .. } => self.error(format_args!(
                "skipped {}: it changed in BACKUP since the scan; retried next pass",
                Escaped(rel)
            )),
        }
    }

    fn blocked(&self, rel: &Path) -> bool {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        !failed.is_empty() && rel.ancestors().skip(1).any(|a| failed.contains(a))
    }

    fn mark_failed(&self, rel: &Path) {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rel.to_path_buf());
    }

    fn mark_dirty(&self, rel: &Path) {
        if let Some(parent) = rel.parent() {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(parent.to_path_buf());
        }
    }

    /// Turns a same-size pair into a copy, a metadata update, or nothing.
    fn resolve(&self, c: Compare) -> Option<Op> {
        let opts = self.opts;
        let src = match self
            .digests
            .digest(Side::Source, &opts.source, &c.rel, &c.src)
        {
            Ok(d) => d,
            Err(err) => {
                self.error(format_args!("cannot read {}: {err}", Escaped(&c.rel)));
                return None;
            }
        };
        let dst = match self
            .digests
            .digest(Side::Backup, &opts.backup, &c.rel, &c.dst)
        {
            Ok(d) => d,
            Err(err) => {
                self.error(format_args!(
                    "cannot read {} in BACKUP: {err}",
                    Escaped(&c.rel)
                ));
                return None;
            }
        };
        if src != dst {
            Some(Op::Copy {
                rel: c.rel,
                replace: Some(c.dst),
                from: c.src,
                known: Some(src),
            })
        } else if c.src.mode != c.dst.mode || c.src.mtime != c.dst.mtime {
            Some(Op::Meta {
                rel: c.rel,
                seen: c.dst,
                mode: c.src.mode,
                mtime: c.src.mtime,
                digest: Some(dst),
            })
        } else {
            None
        }
    }

    fn execute(&self, op: &Op) {
        if signal::stop_requested() {
            return;
        }
        let rel = op.rel();
        if self.blocked(rel) {
            return;
        }
        let dst = self.opts.backup.join(rel);
        // Whatever this step creates, it creates inside BACKUP, never through a link.
        if !matches!(op, Op::Remove { .. })
            && let Err(err) = fsops::check_parents(&self.opts.backup, rel)
        {
            self.mark_failed(rel);
            self.op_error(rel, &err);
            return;
        }
        let result = match op {
            Op::Remove { seen, .. } => fsops::remove(&dst, seen),
            Op::CreateDir { .. } => fsops::create_dir(&dst),
            Op::Copy {
                replace,
                from,
                known,
                ..
            } => {
                let started = SystemTime::now();
                // A digest hashed or cached this pass lets the kernel copy the bytes unread.
                let digest = known.or_else(|| self.digests.cached(Side::Source, rel, from));
                let content = match digest {
                    Some(digest) if self.digests.trusted(Side::Source, from) => {
                        fsops::Content::Known {
                            entry: from,
                            digest,
                            exact: false,
                        }
                    }
                    _ => fsops::Content::Hash(None),
                };
                fsops::copy_file(&self.opts.source.join(rel), &dst, replace.as_ref(), content).map(
                    |c| {
                        let d = &self.digests;
                        d.learn(Side::Source, rel, &c.source, c.digest, Some(started));
                        d.learn(Side::Backup, rel, &c.destination, c.digest, None);
                    },
                )
            }
            Op::Link {
                target,
                mtime,
                replace,
                ..
            } => fsops::symlink(target, &dst, replace.as_ref(), *mtime).map(drop),
            Op::Meta {
                seen,
                mode,
                mtime,
                digest,
                ..
            } => fsops::set_metadata(&dst, seen, *mode, *mtime).map(|now| {
                if let Some(d) = digest {
                    self.digests.learn(Side::Backup, rel, &now, *d, None);
                }
            }),
        };
        match result {
            Ok(()) => {
                log::info!("{}", op.describe());
                Counters::bump(&self.counters.operations);
                self.mark_dirty(rel);
                if matches!(op, Op::CreateDir { .. }) {
                    self.dirty
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(rel.to_path_buf());
                }
            }
            Err(err) => {
                if matches!(op, Op::Remove { .. } | Op::CreateDir { .. }) {
                    self.mark_failed(rel);
                }
                if let (Op::Remove { seen, .. }, OpError::Write { source, .. }) = (op, &err)
                    && seen.is_dir()
                    && source.kind() == std::io::ErrorKind::DirectoryNotEmpty
                {
                    // Excluded entries (or ones created since the scan) keep it; that is
                    // what --exclude promises, not a fault.
                    log::warn!(
                        "kept directory {}: it holds entries that are excluded or new",
                        Escaped(rel)
                    );
                    return;
                }
                self.op_error(rel, &err);
            }
        }
    }
}

/// Runs one mirror pass of `opts.source` into `opts.backup`.
///
/// Fails (changing nothing) if a root cannot be listed, or if a safety check of SPEC §8
/// refuses the pass and `force` is off. Per-entry faults are logged and counted instead.
pub fn mirror_pass(opts: &PassOptions, cache: &mut HashCache) -> Result<PassStats, Error> {
    let (src, dst) = rayon::join(
        || scan::scan(&opts.source, "SOURCE", &opts.filter),
        || scan::scan(&opts.backup, "BACKUP", &opts.filter),
    );
    let (src, dst) = (src?, dst?);

    let counters = Counters::default();
    let mut protected = HashSet::new();
    for (side, tree) in [("SOURCE", &src), ("BACKUP", &dst)] {
        for (rel, err) in &tree.unlistable {
            log::error!(
                "cannot list {} in {side}: {err}; nothing under it is changed this pass",
                Escaped(rel)
            );
            Counters::bump(&counters.errors);
            protected.insert(rel.clone());
        }
    }
    for (rel, entry) in &src.entries {
        if entry.kind == Kind::Special {
            log::warn!(
                "skipped {}: not a regular file, directory or symlink",
                Escaped(rel)
            );
            protected.insert(rel.clone());
        }
    }
    let protected = Protected(protected);

    refuse_if_unsafe(opts, &src, &dst)?;

    let mut plan = plan(&src, &dst, &protected);
    let pass = Pass {
        opts,
        digests: Digests::new(cache, opts.checksum, &opts.source, &opts.backup),
        counters,
        failed: Mutex::new(HashSet::new()),
        dirty: Mutex::new(HashSet::new()),
    };
    let resolved: Vec<Op> = std::mem::take(&mut plan.compares)
        .into_par_iter()
        .filter_map(|c| pass.resolve(c))
        .collect();
    plan.transfers.extend(resolved);

    let removed_files = plan
        .removals
        .iter()
        .filter(|op| matches!(op, Op::Remove { seen, rel } if !seen.is_dir() && !is_temp_name(rel)))
        .count();
    let backup_files = dst
        .entries
        .iter()
        .filter(|(rel, e)| !e.is_dir() && !is_temp_name(rel))
        .count();
    if !opts.force && removed_files * 2 > backup_files {
        return Err(Error::Refused(format!(
            "refusing a pass that would delete {removed_files} of the {backup_files} files in BACKUP {} \
             (more than half); check SOURCE {} and run with --force if this is intended",
            opts.backup.display(),
            opts.source.display()
        )));
    }

    if opts.dry_run {
        let ops = plan
            .removals
            .iter()
            .chain(&plan.creates)
            .chain(&plan.transfers);
        for op in ops {
            log::info!("dry run: {}", op.describe());
            Counters::bump(&pass.counters.operations);
        }
        return Ok(pass.counters.stats(&pass.digests, false));
    }

    crate::testhook::after_plan();
    apply(&pass, &plan, &dst);

    let interrupted = signal::stop_requested();
    let stats = pass.counters.stats(&pass.digests, interrupted);
    let learnt = pass.digests.finish();
    learnt.record_into(cache);
    cache.retain_live(Side::Source, src.entries.keys().map(PathBuf::as_path));
    cache.retain_live(
        Side::Backup,
        src.entries
            .keys()
            .chain(dst.entries.keys())
            .map(PathBuf::as_path),
    );
    if stats.operations > 0
        && let Err(err) = fsops::flush_fs(&opts.backup)
    {
        log::warn!("cannot flush BACKUP {}: {err}", opts.backup.display());
    }
    Ok(stats)
}

fn refuse_if_unsafe(opts: &PassOptions, src: &Tree, dst: &Tree) -> Result<(), Error> {
    let backup_has_content = dst.entries.keys().any(|rel| !is_temp_name(rel));
    if !opts.force && src.entries.is_empty() && backup_has_content {
        return Err(Error::Refused(format!(
            "refusing to mirror: SOURCE {} is empty while BACKUP {} is not (an unmounted drive \
             looks like this); run with --force if SOURCE is really meant to be empty",
            opts.source.display(),
            opts.backup.display()
        )));
    }
    Ok(())
}

fn apply(pass: &Pass<'_>, plan: &Plan, dst: &Tree) {
    // Directories we must add to or remove from, that our own mode would forbid us to.
    let mut parents: HashSet<&Path> = HashSet::new();
    for op in plan
        .removals
        .iter()
        .chain(&plan.creates)
        .chain(&plan.transfers)
    {
        if let Some(parent) = op.rel().parent()
            && !parent.as_os_str().is_empty()
        {
            parents.insert(parent);
        }
    }
    for parent in parents {
        if let Some(entry) = dst.entries.get(parent)
            && entry.is_dir()
            && entry.mode & 0o700 != 0o700
        {
            match fsops::make_writable(&pass.opts.backup.join(parent), entry.mode) {
                Ok(()) => {
                    pass.dirty
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(parent.to_path_buf());
                }
                Err(err) => pass.op_error(parent, &err),
            }
        }
    }

    // Children before parents, so a directory is empty when its turn comes.
    for op in plan.removals.iter().rev() {
        pass.execute(op);
    }
    for op in &plan.creates {
        pass.execute(op);
    }
    plan.transfers.par_iter().for_each(|op| pass.execute(op));

    // Directory modes and times last, deepest first: adding or removing an entry moves a
    // directory's mtime, and a read-only mode would have blocked the steps above.
    let dirty = std::mem::take(&mut *pass.dirty.lock().unwrap_or_else(|e| e.into_inner()));
    for (rel, want) in plan.dirs.iter().rev() {
        if signal::stop_requested() || pass.blocked(rel) {
            continue;
        }
        let seen = dst.entries.get(rel).filter(|e| e.is_dir());
        let differs = seen.is_none_or(|s| s.mode != want.mode || s.mtime != want.mtime);
        if !differs && !dirty.contains(rel) {
            continue;
        }
        let path = pass.opts.backup.join(rel);
        match fsops::finish_dir(&path, want.mode, want.mtime) {
            Ok(_) => {
                if seen.is_some() && differs {
                    log::info!("updated metadata of {}", Escaped(rel));
                    Counters::bump(&pass.counters.operations);
                }
            }
            Err(err) => pass.op_error(rel, &err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(kind: Kind, size: u64) -> Entry {
        Entry {
            kind,
            mode: 0o644,
            size,
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            ino: 0,
        }
    }

    /// Builds a consistent tree from arbitrary paths: every ancestor is a directory, and
    /// nothing lies beneath a non-directory.
    fn tree(raw: Vec<(Vec<u8>, u8)>) -> Tree {
        let mut entries: BTreeMap<PathBuf, Entry> = BTreeMap::new();
        for (parts, kind) in raw {
            let mut path = PathBuf::new();
            for (i, p) in parts.iter().enumerate() {
                path.push(["a", "b", "c"][*p as usize % 3]);
                if i + 1 < parts.len() {
                    entries.insert(path.clone(), entry(Kind::Dir, 0));
                }
            }
            let kind = match kind % 4 {
                0 => Kind::Dir,
                1 => Kind::File,
                2 => Kind::Symlink(PathBuf::from(format!("t{}", kind / 4))),
                _ => Kind::Special,
            };
            entries.insert(path, entry(kind, parts.len() as u64 % 2));
        }
        // Drop entries under non-directories (a later path may have turned an ancestor into one).
        let non_dirs: Vec<PathBuf> = entries
            .iter()
            .filter(|(_, e)| !e.is_dir())
            .map(|(p, _)| p.clone())
            .collect();
        entries.retain(|p, _| !non_dirs.iter().any(|n| p != n && p.starts_with(n)));
        let orphans: Vec<PathBuf> = entries
            .keys()
            .filter(|p| {
                p.ancestors()
                    .skip(1)
                    .filter(|a| !a.as_os_str().is_empty())
                    .any(|a| !entries.get(a).is_some_and(Entry::is_dir))
            })
            .cloned()
            .collect();
        for p in orphans {
            entries.remove(&p);
        }
        Tree {
            entries,
            unlistable: Vec::new(),
        }
    }

    fn parent_is_dir(model: &BTreeMap<PathBuf, Entry>, rel: &Path) -> bool {
        match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => model.get(p).is_some_and(Entry::is_dir),
            _ => true,
        }
    }

    /// Applies a plan to an in-memory model of BACKUP, checking each step is legal in the
    /// order `apply` runs them.
    fn simulate(plan: &Plan, dst: &Tree, src: &Tree) -> BTreeMap<PathBuf, Entry> {
        let mut model = dst.entries.clone();
        for op in plan.removals.iter().rev() {
            let Op::Remove { rel, seen } = op else {
                panic!("not a removal")
            };
            assert_eq!(model.get(rel), Some(seen), "removing what the scan saw");
            if seen.is_dir() {
                assert!(
                    !model.keys().any(|p| p != rel && p.starts_with(rel)),
                    "directory {rel:?} empty when removed"
                );
            }
            model.remove(rel);
        }
        for op in &plan.creates {
            let Op::CreateDir { rel } = op else {
                panic!("not a create")
            };
            assert!(parent_is_dir(&model, rel) && !model.contains_key(rel));
            model.insert(rel.clone(), src.entries[rel].clone());
        }
        assert!(
            plan.compares.is_empty(),
            "compares are resolved before apply"
        );
        for op in &plan.transfers {
            let rel = op.rel();
            assert!(
                parent_is_dir(&model, rel),
                "parent of {rel:?} is a directory"
            );
            match op {
                Op::Copy { replace, .. } | Op::Link { replace, .. } => {
                    assert_eq!(
                        model.get(rel),
                        replace.as_ref(),
                        "replacing what the scan saw"
                    );
                    assert!(!replace.as_ref().is_some_and(Entry::is_dir));
                }
                Op::Meta { seen, .. } => assert_eq!(model.get(rel), Some(seen)),
                _ => panic!("unexpected transfer"),
            }
            model.insert(rel.to_path_buf(), src.entries[rel].clone());
        }
        model
    }

    fn arb_tree() -> impl Strategy<Value = Tree> {
        prop::collection::vec((prop::collection::vec(0u8..3, 1..4), any::<u8>()), 0..14)
            .prop_map(tree)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the two trees, the plan's steps are legal in apply's order, and BACKUP
        /// ends holding exactly SOURCE's copyable entries (specials are left alone).
        #[test]
        fn plan_turns_backup_into_source(src in arb_tree(), dst in arb_tree()) {
            let mut specials = HashSet::new();
            for (rel, e) in &src.entries {
                if e.kind == Kind::Special {
                    specials.insert(rel.clone());
                }
            }
            let protected = Protected(specials);
            let mut p = plan(&src, &dst, &protected);
            // Hashing is outside the plan: treat every same-size pair as differing content.
            for c in std::mem::take(&mut p.compares) {
                p.transfers.push(Op::Copy {
                    rel: c.rel,
                    replace: Some(c.dst),
                    from: c.src,
                    known: None,
                });
            }
            let model = simulate(&p, &dst, &src);
            for (rel, e) in &src.entries {
                if protected.covers(rel) {
                    prop_assert_eq!(model.get(rel), dst.entries.get(rel));
                } else {
                    prop_assert_eq!(model.get(rel).map(|m| &m.kind), Some(&e.kind));
                }
            }
            for rel in model.keys() {
                prop_assert!(src.entries.contains_key(rel) || protected.covers(rel),
                    "{:?} left in BACKUP", rel);
            }
        }
    }

    #[test]
    fn same_size_files_are_compared_and_others_copied() {
        let mut src = Tree::default();
        let mut dst = Tree::default();
        src.entries.insert("same".into(), entry(Kind::File, 3));
        dst.entries.insert("same".into(), entry(Kind::File, 3));
        src.entries.insert("grown".into(), entry(Kind::File, 4));
        dst.entries.insert("grown".into(), entry(Kind::File, 3));
        let p = plan(&src, &dst, &Protected(HashSet::new()));
        assert_eq!(p.compares.len(), 1);
        assert_eq!(p.compares[0].rel, Path::new("same"));
        assert!(
            matches!(&p.transfers[..], [Op::Copy { rel, replace: Some(_), .. }] if rel == Path::new("grown"))
        );
    }
}
