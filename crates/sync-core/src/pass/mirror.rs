//! One mirror pass (SPEC §3): walk both roots together, compare, check the refusals of SPEC §8,
//! apply with the safe operations of [`crate::fsops`], and record what was hashed.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use checksum::Digest;
use rayon::prelude::*;

use crate::display::Escaped;
use crate::error::Error;
use crate::hash::dircache::{self, BlockOut, DirCache, Learner, Record};
use crate::hash::read;
use crate::hash::stamp::{Stamp, is_racy};
use crate::model::{Entry, Kind, PassStats, Side, Timestamp, path_order};
use crate::pass::PassOptions;
use crate::plan::refuse;
use crate::scan;
use crate::signal;
use crate::tree::ops::{self as fsops, Dest, OpError};
use crate::tree::{flush, temp};

/// What a step did, for its log line.
enum Done {
    /// What [`Op::describe`] says.
    AsPlanned,
    /// A copy found the bytes already there: only mode and time were carried over.
    Metadata,
    /// A copy found the bytes, mode and time already there.
    Nothing,
}

/// One step of a plan.
#[derive(Debug)]
enum Op {
    /// Remove the BACKUP entry the scan saw.
    Remove { rel: PathBuf, seen: Entry },
    /// Create a directory.
    CreateDir { rel: PathBuf },
    /// Copy a SOURCE file, over `replace` if set (boxed: a first copy holds one `Op` per file,
    /// and most copies replace nothing).
    Copy {
        rel: PathBuf,
        replace: Option<Box<Entry>>,
        /// The source as scanned.
        from: Entry,
        /// Its digest, if this pass hashed it.
        known: Option<Digest>,
        /// The digest of `replace`, when the source was left unread to be hashed while it is
        /// copied: bytes that hash to it are not installed (the file was only touched).
        unless: Option<Digest>,
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
                Kind::Dir if in_temp(rel) => {
                    write!(s, "removed leftover temporary directory {}", Escaped(rel))
                }
                Kind::Dir => write!(s, "removed directory {}", Escaped(rel)),
                _ if in_temp(rel) => {
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

/// Whether `rel` is, or is inside, something named like one of our temporary files or hidden
/// directories: a leftover of a killed pass, not the user's.
fn in_temp(rel: &Path) -> bool {
    let ours = |n: &OsStr| n.as_bytes().starts_with(temp::TEMP_PREFIX.as_bytes());
    rel.iter().any(ours)
}

/// How often the file system of BACKUP is flushed while files are copied (see
/// [`flush::flushing_while`]).
const EARLY_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

/// Which side of the pair.
const SIDES: [(Side, &str); 2] = [(Side::Source, "SOURCE"), (Side::Backup, "BACKUP")];

/// A BACKUP directory the pass works in, or a SOURCE directory whose mode and mtime BACKUP
/// must end with.
#[derive(Debug)]
struct DirState {
    rel: PathBuf,
    /// The SOURCE directory, if it is one there.
    want: Option<Entry>,
    /// The BACKUP directory as the walk saw it, if it is one there.
    seen: Option<Entry>,
    /// Entries are added to, replaced in or removed from it.
    holds_ops: bool,
}

/// What the walk found to do. Only what differs is kept, never the trees themselves, so a
/// pass with little to do needs little memory however large the trees are.
#[derive(Default)]
struct Found {
    removals: Vec<Op>,
    creates: Vec<Op>,
    transfers: Vec<Op>,
    dirs: Vec<DirState>,
    blocks: Vec<(Box<[u8]>, BlockOut)>,
    /// Directories that could not be listed: nothing under them is touched.
    protected: Vec<PathBuf>,
}

impl Found {
    /// Adds `other`'s lists to these, whose order does not matter (they are sorted before
    /// use): the shorter list of each pair is moved into the longer, so a directory with
    /// most of a first copy's files is not copied into the pass's empty list, which held the
    /// whole list twice for a moment.
    fn append(&mut self, other: Found) {
        fn join<T>(into: &mut Vec<T>, mut other: Vec<T>) {
            if into.len() < other.len() {
                std::mem::swap(into, &mut other);
            }
            into.append(&mut other);
        }
        join(&mut self.removals, other.removals);
        join(&mut self.creates, other.creates);
        join(&mut self.transfers, other.transfers);
        join(&mut self.dirs, other.dirs);
        join(&mut self.blocks, other.blocks);
        join(&mut self.protected, other.protected);
    }

    /// Gives back what the lists grew by and no longer need: a first copy holds them, one step
    /// per file, until its end.
    fn shrink_to_fit(&mut self) {
        self.removals.shrink_to_fit();
        self.creates.shrink_to_fit();
        self.transfers.shrink_to_fit();
        self.dirs.shrink_to_fit();
        self.blocks.shrink_to_fit();
    }
}

/// A child that is a directory on at least one side: walked on its own.
struct Sub {
    rel: PathBuf,
    src: Option<Entry>,
    dst: Option<Entry>,
    /// The digest of a SOURCE file that replaces a BACKUP directory, if known.
    src_known: Option<Digest>,
}

/// One name of a directory, as both sides hold it.
struct Pair<'l> {
    name: &'l OsStr,
    src: Option<&'l Entry>,
    dst: Option<&'l Entry>,
    digests: [Option<Digest>; 2],
    /// The digest may be remembered (from the cache, or hashed and not racy).
    cacheable: [bool; 2],
    /// Reading one side failed: nothing is done with this name.
    failed: bool,
}

/// Both trees walked together, directory by directory and in parallel, comparing as it goes.
struct Walk<'a> {
    opts: &'a PassOptions,
    cache: &'a DirCache,
    /// Decides which digests may be remembered; what the copies learn goes here later.
    learner: Learner,
    found: Mutex<Found>,
    hashed: AtomicU64,
    cache_hits: AtomicU64,
    errors: AtomicU64,
    backup_files: AtomicU64,
    removed_files: AtomicU64,
    backup_entries: AtomicU64,
}

impl Walk<'_> {
    fn root(&self, side: Side) -> &Path {
        match side {
            Side::Source => &self.opts.source,
            Side::Backup => &self.opts.backup,
        }
    }

    /// Lists `rel` on `side`, or records it as unlistable and gives `None`.
    fn list(&self, side: Side, rel: &Path, found: &mut Found) -> Option<Vec<(OsString, Entry)>> {
        let role = SIDES[side as usize].1;
        match scan::list_dir(&self.root(side).join(rel), rel, &self.opts.filter) {
            Ok(list) => Some(list),
            Err(err) => {
                log::error!(
                    "cannot list {} in {role}: {err}; nothing under it is changed this pass",
                    Escaped(rel)
                );
                Counters::bump(&self.errors);
                found.protected.push(rel.to_path_buf());
                None
            }
        }
    }

    /// Walks a directory that is one on at least one side, then its subdirectories.
    fn visit(&self, sub: Sub) {
        let Sub {
            rel,
            src,
            dst,
            src_known,
        } = sub;
        let mut found = Found::default();
        let src_dir = src.as_ref().filter(|e| e.is_dir());
        let dst_dir = dst.as_ref().filter(|e| e.is_dir());
        let lists = match (src_dir, dst_dir) {
            (Some(_), _) => self.list(Side::Source, &rel, &mut found).and_then(|s| {
                let d = match dst_dir {
                    Some(_) => self.list(Side::Backup, &rel, &mut found)?,
                    None => Vec::new(),
                };
                Some((s, d))
            }),
            (None, _) => self
                .list(Side::Backup, &rel, &mut found)
                .map(|d| (Vec::new(), d)),
        };
        let Some((src_list, dst_list)) = lists else {
            self.found
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(found);
            return;
        };
        match (src_dir, dst_dir) {
            (None, Some(d)) => {
                // The directory goes (after its children, by the order removals run in), and
                // whatever SOURCE holds under the name takes its place.
                found.removals.push(Op::Remove {
                    rel: rel.clone(),
                    seen: d.clone(),
                });
                match src.as_ref().map(|s| (s, &s.kind)) {
                    Some((s, Kind::File)) => found.transfers.push(Op::Copy {
                        rel: rel.clone(),
                        replace: None,
                        from: s.clone(),
                        known: src_known,
                        unless: None,
                    }),
                    Some((s, Kind::Symlink(target))) => found.transfers.push(Op::Link {
                        rel: rel.clone(),
                        target: target.clone(),
                        mtime: s.mtime,
                        replace: None,
                    }),
                    _ => {}
                }
            }
            (Some(_), None) => {
                if let Some(d) = &dst {
                    self.count_removal(&rel, d);
                    found.removals.push(Op::Remove {
                        rel: rel.clone(),
                        seen: d.clone(),
                    });
                }
                found.creates.push(Op::CreateDir { rel: rel.clone() });
            }
            _ => {}
        }
        let subs = self.children(&rel, &src_list, &dst_list, &mut found);
        drop((src_list, dst_list));
        let holds_ops = subs.1;
        let differs = |s: &Entry| dst_dir.is_none_or(|d| d.mode != s.mode || d.mtime != s.mtime);
        if holds_ops || src_dir.is_some_and(differs) {
            found.dirs.push(DirState {
                rel,
                want: src_dir.cloned(),
                seen: dst_dir.cloned(),
                holds_ops,
            });
        }
        self.found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(found);
        subs.0.into_par_iter().for_each(|sub| self.visit(sub));
    }

    fn count_removal(&self, rel: &Path, seen: &Entry) {
        if !seen.is_dir() && !in_temp(rel) {
            Counters::bump(&self.removed_files);
        }
    }

    /// Compares the entries of one directory, adding to `found` what must change; gives the
    /// subdirectories to walk and whether anything in this directory itself changes.
    fn children(
        &self,
        rel: &Path,
        src_list: &[(OsString, Entry)],
        dst_list: &[(OsString, Entry)],
        found: &mut Found,
    ) -> (Vec<Sub>, bool) {
        let leftover = in_temp(rel);
        for (name, entry) in dst_list {
            if !leftover && !temp::is_temp_name(name) {
                Counters::bump(&self.backup_entries);
                if !entry.is_dir() {
                    Counters::bump(&self.backup_files);
                }
            }
        }
        let dir_key = rel.as_os_str().as_bytes();
        let old_bytes = self.cache.block_bytes(dir_key);
        let old = old_bytes
            .as_deref()
            .map(dircache::records)
            .unwrap_or_default();
        let mut pairs = self.pair_up(src_list, dst_list, &old);

        // Same-size files are compared by digest; those not cached are read now, in parallel
        // when there are several (a directory of large files).
        let mut reads = Vec::new();
        for (i, p) in pairs.iter().enumerate() {
            if let (Some(s), Some(d)) = (p.src, p.dst)
                && s.kind == Kind::File
                && d.kind == Kind::File
                && s.size == d.size
            {
                if let [None, Some(_)] = p.digests
                    && s.size >= fsops::PARALLEL_HASH_FROM
                    && !self.opts.dry_run
                {
                    // Only the source's stamp moved, and reading it is long: it is hashed while
                    // it is copied, and the copy dropped if the bytes are the same. (A dry run
                    // copies nothing, so it reads the file to say what a pass would do.)
                    continue;
                }
                for (side, _) in SIDES {
                    if p.digests[side as usize].is_none() {
                        reads.push((i, side));
                    }
                }
            }
        }
        let paths: Vec<PathBuf> = reads
            .iter()
            .map(|&(i, side)| self.root(side).join(rel).join(pairs[i].name))
            .collect();
        for ((result, started), (i, side)) in read::read_digests(&paths).into_iter().zip(reads) {
            let p = &mut pairs[i];
            let entry = [p.src, p.dst][side as usize].expect("compared files exist");
            let cacheable = !is_racy(entry, started, self.learner.stamps(side));
            match result {
                Ok(digest) => {
                    Counters::bump(&self.hashed);
                    p.digests[side as usize] = Some(digest);
                    p.cacheable[side as usize] = cacheable;
                }
                Err(err) => {
                    let child = rel.join(p.name);
                    let within = if side == Side::Backup {
                        " in BACKUP"
                    } else {
                        ""
                    };
                    log::error!("cannot read {}{within}: {err}", Escaped(&child));
                    Counters::bump(&self.errors);
                    p.failed = true;
                }
            }
        }

        let mut subs = Vec::new();
        let mut holds_ops = false;
        // What the cache will know of each name, checked against the old block as it goes.
        // While they agree nothing is kept (the first `matching` records of the old block say
        // it), so an unchanged directory allocates nothing for its block: a list of what a
        // directory of 100,000 unchanged files knows was a quarter of such a pass's memory.
        let mut matching = 0;
        let mut known: Option<Vec<(&[u8], _)>> = None;
        let old_prefix =
            |n: usize| -> Vec<_> { old[..n].iter().map(|r| (r.name, r.sides)).collect() };
        for p in &pairs {
            let child = || rel.join(p.name);
            let mut sides = [None, None];
            for (side, _) in SIDES {
                let s = side as usize;
                if let (Some(e), Some(d), true) = ([p.src, p.dst][s], p.digests[s], p.cacheable[s])
                    && e.kind == Kind::File
                {
                    sides[s] = Some((Stamp::of(e), d));
                }
            }
            if sides.iter().any(Option::is_some) {
                let name = p.name.as_bytes();
                match &mut known {
                    None if old
                        .get(matching)
                        .is_some_and(|r| r.name == name && r.sides == sides) =>
                    {
                        matching += 1;
                    }
                    None => {
                        let mut list = old_prefix(matching);
                        list.push((name, sides));
                        known = Some(list);
                    }
                    Some(list) => list.push((name, sides)),
                }
            }
            if p.failed {
                continue;
            }
            let before = found.removals.len() + found.creates.len() + found.transfers.len();
            match (p.src, p.dst) {
                (Some(s), _) if s.kind == Kind::Special => {
                    log::warn!(
                        "skipped {}: not a regular file, directory or symlink",
                        Escaped(&child())
                    );
                    continue;
                }
                (s, d) if s.is_some_and(Entry::is_dir) || d.is_some_and(Entry::is_dir) => {
                    holds_ops |= !(s.is_some_and(Entry::is_dir) && d.is_some_and(Entry::is_dir));
                    subs.push(Sub {
                        rel: child(),
                        src: s.cloned(),
                        dst: d.cloned(),
                        src_known: p.digests[0],
                    });
                }
                (None, Some(d)) => {
                    let rel = child();
                    self.count_removal(&rel, d);
                    found.removals.push(Op::Remove {
                        rel,
                        seen: d.clone(),
                    });
                }
                (Some(s), d) => match &s.kind {
                    Kind::File => match (d, p.digests) {
                        (Some(d), [Some(a), Some(b)]) if d.kind == Kind::File && a == b => {
                            if s.mode != d.mode || s.mtime != d.mtime {
                                found.transfers.push(Op::Meta {
                                    rel: child(),
                                    seen: d.clone(),
                                    mode: s.mode,
                                    mtime: s.mtime,
                                    digest: Some(b),
                                });
                            }
                        }
                        (d, [known, held]) => found.transfers.push(Op::Copy {
                            rel: child(),
                            replace: d.cloned().map(Box::new),
                            from: s.clone(),
                            known,
                            unless: if known.is_none() { held } else { None },
                        }),
                    },
                    Kind::Symlink(target) => match d {
                        Some(d) if d.kind == s.kind => {
                            if d.mtime != s.mtime {
                                found.transfers.push(Op::Meta {
                                    rel: child(),
                                    seen: d.clone(),
                                    mode: s.mode,
                                    mtime: s.mtime,
                                    digest: None,
                                });
                            }
                        }
                        _ => found.transfers.push(Op::Link {
                            rel: child(),
                            target: target.clone(),
                            mtime: s.mtime,
                            replace: d.cloned(),
                        }),
                    },
                    Kind::Dir | Kind::Special => {}
                },
                (None, None) => {}
            }
            holds_ops |=
                found.removals.len() + found.creates.len() + found.transfers.len() > before;
        }

        // A directory with changes gets a new block, which takes the digests its copies learn.
        let unchanged = known.is_none() && matching == old.len();
        let block = if holds_ops || !unchanged {
            let known = known.unwrap_or_else(|| old_prefix(matching));
            let records = known.into_iter().map(|(name, sides)| Record {
                name: name.into(),
                sides,
            });
            BlockOut::New(records.collect())
        } else {
            BlockOut::Keep
        };
        if matches!(&block, BlockOut::New(r) if !r.is_empty() || holds_ops)
            || self.cache.has(dir_key)
        {
            found.blocks.push((dir_key.into(), block));
        }
        (subs, holds_ops)
    }

    /// Merges the two sorted listings by name, with the cached digests of unchanged files.
    fn pair_up<'l>(
        &self,
        src_list: &'l [(OsString, Entry)],
        dst_list: &'l [(OsString, Entry)],
        old: &[Record<&[u8]>],
    ) -> Vec<Pair<'l>> {
        let hit = |side: Side, record: Option<&Record<&[u8]>>, entry: &Entry| -> Option<Digest> {
            if self.opts.checksum || entry.kind != Kind::File {
                return None;
            }
            match record?.sides[side as usize] {
                Some((stamp, digest)) if stamp == Stamp::of(entry) => {
                    Counters::bump(&self.cache_hits);
                    Some(digest)
                }
                _ => None,
            }
        };
        let mut pairs = Vec::with_capacity(src_list.len().max(dst_list.len()));
        // The listings come sorted by name, as the old block is: one cursor walks it alongside.
        let (mut i, mut j, mut k) = (0, 0, 0);
        while i < src_list.len() || j < dst_list.len() {
            let order = match (src_list.get(i), dst_list.get(j)) {
                (Some((a, _)), Some((b, _))) => a.as_bytes().cmp(b.as_bytes()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            let (name, src, dst) = match order {
                std::cmp::Ordering::Less => {
                    i += 1;
                    (&src_list[i - 1].0, Some(&src_list[i - 1].1), None)
                }
                std::cmp::Ordering::Greater => {
                    j += 1;
                    (&dst_list[j - 1].0, None, Some(&dst_list[j - 1].1))
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                    (
                        &src_list[i - 1].0,
                        Some(&src_list[i - 1].1),
                        Some(&dst_list[j - 1].1),
                    )
                }
            };
            let record = dircache::seek_record(old, &mut k, name.as_bytes());
            let digests = [
                src.and_then(|e| hit(Side::Source, record, e)),
                dst.and_then(|e| hit(Side::Backup, record, e)),
            ];
            pairs.push(Pair {
                name,
                src,
                dst,
                cacheable: digests.map(|d| d.is_some()),
                digests,
                failed: false,
            });
        }
        pairs
    }
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
}

struct Pass<'a> {
    opts: &'a PassOptions,
    counters: Counters,
    learner: Learner,
    /// Paths whose creation or removal failed: nothing is done beneath them this pass, so a
    /// link left where a directory should be is never written through.
    failed: Mutex<HashSet<PathBuf>>,
    /// Something is in `failed` (read without a lock by every step).
    any_failed: AtomicBool,
    /// New directories being built hidden, by the path they get when complete.
    hidden: HashMap<PathBuf, HiddenDir>,
}

/// A new directory built under a temporary name (see [`fsops::stage_dir`]): everything in it
/// is created directly under its own name, and the whole directory appears at once.
struct HiddenDir {
    staged: PathBuf,
    /// A failed copy or link could not take away what it wrote: the directory may hold a
    /// partial file, so it is not published (the next pass removes it and starts again).
    spoiled: AtomicBool,
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

    /// Whether `rel` or a parent of it failed to be created or removed this pass.
    fn blocked(&self, rel: &Path) -> bool {
        if !self.any_failed.load(Ordering::Acquire) {
            return false;
        }
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        rel.ancestors().any(|a| failed.contains(a))
    }

    /// The hidden directory that `rel` is being built in, if any.
    fn hidden_in<'r>(&self, rel: &'r Path) -> Option<(&'r Path, &HiddenDir)> {
        if self.hidden.is_empty() {
            return None;
        }
        rel.ancestors()
            .skip(1)
            .find_map(|a| self.hidden.get(a).map(|h| (a, h)))
    }

    /// Where `rel` is written now, and how.
    fn place(&self, rel: &Path) -> (PathBuf, Option<&HiddenDir>) {
        match self.hidden_in(rel) {
            Some((top, hidden)) => {
                let inside = rel.strip_prefix(top).unwrap_or(rel);
                (hidden.staged.join(inside), Some(hidden))
            }
            None => (self.opts.backup.join(rel), None),
        }
    }

    fn mark_failed(&self, rel: &Path) {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rel.to_path_buf());
        self.any_failed.store(true, Ordering::Release);
    }

    /// Whether `op` may run now: no stop requested, no failed parent, and (for what creates)
    /// every parent in BACKUP still a real directory. A refusal is logged here.
    fn ready(&self, op: &Op) -> bool {
        if signal::stop_requested() {
            return false;
        }
        let rel = op.rel();
        if self.blocked(rel) {
            return false;
        }
        // Whatever this step creates, it creates inside BACKUP, never through a link. (A hidden
        // directory's parents were checked when it was made; what is inside is our own.)
        if !matches!(op, Op::Remove { .. })
            && self.hidden_in(rel).is_none()
            && let Err(err) = fsops::check_parents(&self.opts.backup, rel)
        {
            self.mark_failed(rel);
            self.op_error(rel, &err);
            return false;
        }
        true
    }

    fn execute(&self, op: &Op) {
        if self.ready(op) {
            self.run(op);
        }
    }

    /// Runs two copies that [`pairable`] chose together (see [`fsops::copy_pair`]); one that
    /// may not run leaves the other to run alone.
    fn execute_pair(&self, ops: [&Op; 2]) {
        let [a, b] = ops;
        match (self.ready(a), self.ready(b)) {
            (true, true) => {}
            (true, false) => return self.run(a),
            (false, true) => return self.run(b),
            (false, false) => return,
        }
        let (
            Op::Copy {
                rel: rel_a,
                replace: replace_a,
                from: from_a,
                ..
            },
            Op::Copy {
                rel: rel_b,
                replace: replace_b,
                from: from_b,
                ..
            },
        ) = (a, b)
        else {
            unreachable!("only copies are paired");
        };
        let ((dst_a, hidden_a), (dst_b, hidden_b)) = (self.place(rel_a), self.place(rel_b));
        let (src_a, src_b) = (self.opts.source.join(rel_a), self.opts.source.join(rel_b));
        let started = SystemTime::now();
        let results = fsops::copy_pair([
            (&src_a, &dst_a, dest(replace_a.as_deref(), hidden_a)),
            (&src_b, &dst_b, dest(replace_b.as_deref(), hidden_b)),
        ]);
        for ((op, rel, from), result) in [(a, rel_a, from_a), (b, rel_b, from_b)]
            .into_iter()
            .zip(results)
        {
            let done = result.and_then(|c| self.copied(rel, from, started, c));
            self.conclude(op, done);
        }
    }

    /// Carries out `op` (already [`Pass::ready`]) and logs what it did.
    fn run(&self, op: &Op) {
        let rel = op.rel();
        let (dst, hidden) = self.place(rel);
        let result = match op {
            Op::Remove { seen, .. } => fsops::remove(&dst, seen).map(|()| Done::AsPlanned),
            Op::CreateDir { .. } => fsops::create_dir(&dst).map(|()| Done::AsPlanned),
            Op::Copy {
                replace,
                from,
                known,
                unless,
                ..
            } => {
                let started = SystemTime::now();
                // A digest hashed or cached this pass lets the kernel copy the bytes unread.
                let content = match (known, unless) {
                    (Some(digest), _)
                        if !is_racy(from, started, self.learner.stamps(Side::Source)) =>
                    {
                        fsops::Content::Known {
                            entry: from,
                            digest: *digest,
                            exact: false,
                        }
                    }
                    (None, Some(held)) => fsops::Content::Unless(held),
                    _ => fsops::Content::Hash(None),
                };
                let src = self.opts.source.join(rel);
                fsops::copy_file(&src, &dst, dest(replace.as_deref(), hidden), content)
                    .and_then(|c| self.copied(rel, from, started, c))
            }
            Op::Link {
                target,
                mtime,
                replace,
                ..
            } => fsops::symlink(target, &dst, dest(replace.as_ref(), hidden), *mtime)
                .map(|_| Done::AsPlanned),
            Op::Meta {
                seen,
                mode,
                mtime,
                digest,
                ..
            } => fsops::set_metadata(&dst, seen, *mode, *mtime).map(|now| {
                if let Some(d) = digest {
                    self.learner.learn(Side::Backup, rel, &now, *d, None);
                }
                Done::AsPlanned
            }),
        };
        self.conclude(op, result);
    }

    /// Learns what a copy of `rel` (scanned as `from`, begun at `started`) found and left, and
    /// finishes one that found the bytes already there.
    fn copied(
        &self,
        rel: &Path,
        from: &Entry,
        started: SystemTime,
        c: fsops::Copied,
    ) -> Result<Done, OpError> {
        let learn = |backup: &Entry| {
            self.learner
                .learn_copy(rel, (&c.source, started), backup, c.digest);
        };
        if c.installed {
            learn(&c.destination);
            return Ok(Done::AsPlanned);
        }
        // Same bytes: what is left to carry over is the mode and time, as for a file found
        // equal by its digest.
        let there = &c.destination;
        if there.mode == from.mode && there.mtime == from.mtime {
            learn(there);
            return Ok(Done::Nothing);
        }
        let (dst, _) = self.place(rel);
        match fsops::set_metadata(&dst, there, from.mode, from.mtime) {
            Ok(now) => {
                learn(&now);
                Ok(Done::Metadata)
            }
            Err(err) => {
                // The source was read all the same.
                self.learner
                    .learn(Side::Source, rel, &c.source, c.digest, Some(started));
                Err(err)
            }
        }
    }

    /// Logs and counts how `op` ended.
    fn conclude(&self, op: &Op, result: Result<Done, OpError>) {
        let rel = op.rel();
        match result {
            Ok(done) => {
                match done {
                    Done::AsPlanned => log::info!("{}", op.describe()),
                    Done::Metadata => log::info!("updated metadata of {}", Escaped(rel)),
                    Done::Nothing => return,
                }
                Counters::bump(&self.counters.operations);
            }
            Err(err) => {
                if matches!(op, Op::Remove { .. } | Op::CreateDir { .. }) {
                    self.mark_failed(rel);
                }
                if let (Op::Copy { .. } | Op::Link { .. }, (path, Some(hidden))) =
                    (op, self.place(rel))
                    && std::fs::symlink_metadata(&path).is_ok()
                {
                    hidden.spoiled.store(true, Ordering::Relaxed);
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

/// What a copy or link of `rel` goes over, or into: the entry the scan saw, a new name, or a
/// hidden directory.
fn dest<'a>(replace: Option<&'a Entry>, hidden: Option<&HiddenDir>) -> Dest<'a> {
    match (replace, hidden) {
        (Some(seen), _) => Dest::Replace(seen),
        (None, Some(_)) => Dest::Hidden,
        (None, None) => Dest::New,
    }
}

/// Copies that [`Pass::execute_pair`] runs two at a time: large files hashed as they are copied
/// (nothing known of their content), when there are more of them than threads, so that every
/// thread would copy one anyway. Paired by size, largest first, so that the two of a pair end
/// together. The rest are returned as they were.
fn pairable(transfers: &[Op]) -> (Vec<[&Op; 2]>, Vec<&Op>) {
    let large_unknown = |op: &&Op| match op {
        Op::Copy {
            from,
            known: None,
            unless: None,
            ..
        } => from.size >= PAIR_FROM,
        _ => false,
    };
    let (mut large, mut rest): (Vec<&Op>, Vec<&Op>) = transfers.iter().partition(large_unknown);
    if large.len() <= rayon::current_num_threads() {
        return (Vec::new(), transfers.iter().collect());
    }
    let size = |op: &Op| match op {
        Op::Copy { from, .. } => from.size,
        _ => 0,
    };
    large.sort_by_key(|op| std::cmp::Reverse(size(op)));
    let pairs = large
        .chunks(2)
        .filter_map(|c| match c {
            [a, b] => Some([*a, *b]),
            [one] => {
                rest.push(one);
                None
            }
            _ => None,
        })
        .collect();
    (pairs, rest)
}

/// Files from this size on are copied in pairs (see [`pairable`]): their copy is mostly hashing,
/// where a smaller file's is mostly creating it.
const PAIR_FROM: u64 = 8 * 1024 * 1024;

/// Runs one mirror pass of `opts.source` into `opts.backup`.
///
/// Both trees are walked together, directory by directory, and only what differs is kept:
/// the memory a pass needs grows with the changes, not with the tree.
///
/// Fails (changing nothing) if a root cannot be listed, or if a safety check of SPEC §8
/// refuses the pass and `force` is off. Per-entry faults are logged and counted instead.
pub fn mirror_pass(opts: &PassOptions, dir_cache: &mut DirCache) -> Result<PassStats, Error> {
    let walk = Walk {
        opts,
        cache: dir_cache,
        learner: Learner::new(&opts.source, &opts.backup),
        found: Mutex::new(Found::default()),
        hashed: AtomicU64::new(0),
        cache_hits: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        backup_files: AtomicU64::new(0),
        removed_files: AtomicU64::new(0),
        backup_entries: AtomicU64::new(0),
    };
    let list_root = |side: Side| {
        scan::list_dir(walk.root(side), Path::new(""), &opts.filter).map_err(|source| {
            Error::ListRoot {
                role: SIDES[side as usize].1,
                path: walk.root(side).to_path_buf(),
                source,
            }
        })
    };
    let (src_list, dst_list) = rayon::join(|| list_root(Side::Source), || list_root(Side::Backup));
    let (src_list, dst_list) = (src_list?, dst_list?);
    let source_empty = src_list.is_empty();
    let mut found = Found::default();
    let (subs, _) = walk.children(Path::new(""), &src_list, &dst_list, &mut found);
    drop((src_list, dst_list));
    walk.found
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .append(found);
    subs.into_par_iter().for_each(|sub| walk.visit(sub));

    let Walk {
        found,
        hashed,
        cache_hits,
        errors,
        backup_files,
        removed_files,
        backup_entries,
        learner,
        ..
    } = walk;
    let mut found = found.into_inner().unwrap_or_else(|e| e.into_inner());
    found.shrink_to_fit();
    refuse::empty_side(
        opts.force,
        ("SOURCE", &opts.source),
        source_empty,
        "BACKUP",
        backup_entries.into_inner(),
    )?;
    refuse::mass_deletion(
        opts.force,
        ("BACKUP", &opts.backup),
        removed_files.into_inner(),
        backup_files.into_inner(),
    )?;

    // Children before parents for removals (run in reverse), parents before children for
    // creations; logs read in path order.
    let by_path = |a: &Op, b: &Op| path_order(a.rel(), b.rel());
    found.removals.sort_unstable_by(by_path);
    found.creates.sort_unstable_by(by_path);
    found.transfers.par_sort_unstable_by(by_path);
    found
        .dirs
        .sort_unstable_by(|a, b| path_order(&a.rel, &b.rel));

    let pass = Pass {
        opts,
        counters: Counters {
            operations: AtomicU64::new(0),
            errors,
        },
        learner,
        failed: Mutex::new(HashSet::new()),
        any_failed: AtomicBool::new(false),
        hidden: HashMap::new(),
    };
    let stats = |pass: &Pass<'_>, interrupted| PassStats {
        operations: pass.counters.operations.load(Ordering::Relaxed),
        errors: pass.counters.errors.load(Ordering::Relaxed),
        hashed: hashed.load(Ordering::Relaxed),
        cache_hits: cache_hits.load(Ordering::Relaxed),
        interrupted,
        conflicts: None,
    };

    if opts.dry_run {
        for op in found
            .removals
            .iter()
            .chain(&found.creates)
            .chain(&found.transfers)
        {
            log::info!("dry run: {}", op.describe());
            Counters::bump(&pass.counters.operations);
        }
        return Ok(stats(&pass, false));
    }

    crate::testhook::after_plan();
    // A copy, or a file found equal, learns at most one record.
    pass.learner.expect(found.transfers.len());
    let mut pass = pass;
    apply(&mut pass, &found);

    let stats = stats(&pass, signal::stop_requested());
    // The plan is done with: its memory (a first copy's holds every file) is freed before the
    // cache's blocks are built, not held beside them.
    let Found {
        removals,
        creates,
        transfers,
        dirs,
        mut blocks,
        protected,
    } = found;
    drop((removals, creates, transfers, dirs));
    pass.learner.record_into(&mut blocks, dir_cache);
    let unlistable: Vec<&Path> = protected.iter().map(PathBuf::as_path).collect();
    // The cache decides nothing: it is written while the data is flushed.
    let save_cache = move || {
        if let Err(err) = dir_cache.save(blocks, &unlistable) {
            log::warn!("cannot save the hash cache: {err}");
        }
    };
    let flush = || {
        if stats.operations > 0
            && let Err(err) = flush::flush_fs(&opts.backup)
        {
            log::warn!("cannot flush BACKUP {}: {err}", opts.backup.display());
        }
    };
    rayon::join(save_cache, flush);
    Ok(stats)
}

fn apply(pass: &mut Pass<'_>, found: &Found) {
    // Directories we must add to or remove from, that our own mode would forbid us to.
    for dir in &found.dirs {
        if let Some(seen) = &dir.seen
            && dir.holds_ops
            && seen.mode & 0o700 != 0o700
            && let Err(err) = fsops::make_writable(&pass.opts.backup.join(&dir.rel), seen.mode)
        {
            pass.op_error(&dir.rel, &err);
        }
    }

    // Children before parents, so a directory is empty when its turn comes.
    for op in found.removals.iter().rev() {
        pass.execute(op);
    }
    // A new directory whose parent is not new is built hidden, with everything under it, and
    // appears whole at the end: what it holds is then created under its own name at once,
    // rather than staged and linked in one by one.
    let created: HashSet<&Path> = found.creates.iter().map(Op::rel).collect();
    let (tops, nested): (Vec<&Op>, Vec<&Op>) = found
        .creates
        .iter()
        .partition(|op| op.rel().parent().is_none_or(|p| !created.contains(p)));
    pass.hidden = stage(pass, &tops);
    let pass = &*pass;
    // Parents before children: one depth at a time, each in parallel.
    for level in by_depth(&nested, |op| op.rel()) {
        level.into_par_iter().for_each(|op| pass.execute(op));
    }
    let transfer = || {
        let (pairs, singles) = pairable(&found.transfers);
        rayon::join(
            || {
                pairs
                    .into_par_iter()
                    .for_each(|pair| pass.execute_pair(pair))
            },
            || singles.into_par_iter().for_each(|op| pass.execute(op)),
        );
    };
    if found.transfers.is_empty() {
        transfer();
    } else {
        flush::flushing_while(&pass.opts.backup, EARLY_FLUSH, transfer);
    }
    // Even after a stop: every file in them is whole.
    publish(pass);

    // Directory modes and times last, deepest first: adding or removing an entry moves a
    // directory's mtime, and a read-only mode would have blocked the steps above. So every
    // directory whose entries changed (or were made writable) is finished again.
    let finish = |dir: &DirState| {
        let Some(want) = &dir.want else { return };
        if signal::stop_requested() || pass.blocked(&dir.rel) {
            return;
        }
        let seen = dir.seen.as_ref();
        let differs = seen.is_none_or(|s| s.mode != want.mode || s.mtime != want.mtime);
        if !differs && !dir.holds_ops {
            return;
        }
        let path = pass.opts.backup.join(&dir.rel);
        match fsops::finish_dir(&path, want.mode, want.mtime) {
            Ok(_) => {
                if seen.is_some() && differs {
                    log::info!("updated metadata of {}", Escaped(&dir.rel));
                    Counters::bump(&pass.counters.operations);
                }
            }
            Err(err) => pass.op_error(&dir.rel, &err),
        }
    };
    // Children before parents: the deepest directories first, each depth in parallel.
    for level in by_depth(&found.dirs, |d| &d.rel).into_iter().rev() {
        level.into_par_iter().for_each(finish);
    }
}

/// Makes a hidden directory for each of `tops` (new directories whose parents exist) that may
/// be created now; one that cannot be made fails as its creation would.
fn stage(pass: &Pass<'_>, tops: &[&Op]) -> HashMap<PathBuf, HiddenDir> {
    tops.par_iter()
        .filter(|op| pass.ready(op))
        .filter_map(|op| {
            let rel = op.rel();
            let parent = pass.opts.backup.join(rel.parent().unwrap_or(Path::new("")));
            match fsops::stage_dir(&parent) {
                Ok(staged) => Some((
                    rel.to_path_buf(),
                    HiddenDir {
                        staged,
                        spoiled: AtomicBool::new(false),
                    },
                )),
                Err(err) => {
                    pass.conclude(op, Err(err));
                    None
                }
            }
        })
        .collect()
}

/// Gives each hidden directory its name, in path order. One that lost the name to something
/// created since the scan is removed (it holds only our copies) and tried again next pass.
fn publish(pass: &Pass<'_>) {
    let mut tops: Vec<(&PathBuf, &HiddenDir)> = pass.hidden.iter().collect();
    tops.sort_unstable_by(|a, b| path_order(a.0, b.0));
    for (rel, hidden) in tops {
        if hidden.spoiled.load(Ordering::Relaxed) {
            pass.mark_failed(rel);
            pass.error(format_args!(
                "skipped directory {}: a failed copy left a partial file in it; retried next pass",
                Escaped(rel)
            ));
            continue;
        }
        match fsops::publish_dir(&hidden.staged, &pass.opts.backup.join(rel)) {
            Ok(()) => {
                log::info!("created directory {}", Escaped(rel));
                Counters::bump(&pass.counters.operations);
            }
            Err(err) => {
                pass.mark_failed(rel);
                pass.op_error(rel, &err);
                if let Err(e) = std::fs::remove_dir_all(&hidden.staged) {
                    log::warn!(
                        "cannot remove {}: {e}; the next pass removes it",
                        hidden.staged.display()
                    );
                }
            }
        }
    }
}

/// `items` grouped by the depth of their path, shallowest first.
fn by_depth<T>(items: &[T], rel: impl Fn(&T) -> &Path) -> Vec<Vec<&T>> {
    let mut levels: Vec<Vec<&T>> = Vec::new();
    for item in items {
        let depth = rel(item)
            .as_os_str()
            .as_bytes()
            .iter()
            .filter(|&&b| b == b'/')
            .count();
        if levels.len() <= depth {
            levels.resize_with(depth + 1, Vec::new);
        }
        levels[depth].push(item);
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(name: &str, size: u64, known: Option<Digest>) -> Op {
        let from = Entry {
            kind: Kind::File,
            mode: 0o644,
            size,
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            ino: 1,
        };
        Op::Copy {
            rel: PathBuf::from(name),
            replace: None,
            from,
            known,
            unless: None,
        }
    }

    fn names(ops: &[&Op]) -> Vec<String> {
        ops.iter()
            .map(|op| op.rel().display().to_string())
            .collect()
    }

    #[test]
    fn large_copies_beyond_the_threads_are_paired_by_size() {
        let transfers = [
            copy("small", PAIR_FROM - 1, None),
            copy("a", PAIR_FROM, None),
            copy("b", 3 * PAIR_FROM, None),
            copy("known", 5 * PAIR_FROM, Some([0; 32])),
            copy("c", 2 * PAIR_FROM, None),
        ];
        let in_pool = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| pairable(&transfers))
        };
        // Three large unknown copies on one thread: the two largest together, the third alone
        // with the rest.
        let (pairs, rest) = in_pool(1);
        assert_eq!(pairs.len(), 1);
        assert_eq!(names(&pairs[0]), ["b", "c"]);
        let mut rest = names(&rest);
        rest.sort();
        assert_eq!(rest, ["a", "known", "small"]);
        // As many threads as large copies: each has its own thread, nothing is paired.
        let (pairs, rest) = in_pool(3);
        assert!(pairs.is_empty());
        assert_eq!(rest.len(), transfers.len());
    }
}
