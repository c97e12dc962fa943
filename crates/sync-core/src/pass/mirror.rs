//! One mirror pass (SPEC §3): walk both trees together, directory by directory, comparing as
//! it goes and planning in the one step vocabulary; check the refusals of SPEC §8; apply with the
//! one applier; and record in the hash cache what was hashed and copied. A first copy into an
//! empty BACKUP applies each directory as soon as it is planned.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use checksum::Digest;

use crate::apply::{Applier, Applying, Target};
use crate::display::Escaped;
use crate::error::Error;
use crate::hash::dircache::{
    self, BlockOut, BlockWriter, DirCache, Known as Recorded, Learner, Record,
};
use crate::hash::read_files;
use crate::hash::stamp::{Stamp, is_racy};
use crate::model::{Entry, Kind, Meta, PassKind, PassStats, Side};
use crate::pass::PassOptions;
use crate::plan::refuse;
use crate::plan::step::{Known, Step, Steps, in_temp};
use crate::signal;
use crate::tree::{Tree, meta, temp};

/// Which side of the pair.
const SIDES: [(Side, &str); 2] = [(Side::Source, "SOURCE"), (Side::Backup, "BACKUP")];

/// What the walk found to do. Only what differs is kept, never the trees themselves, so a
/// pass with little to do needs little memory however large the trees are.
#[derive(Default)]
struct Found {
    steps: Steps,
    blocks: Vec<(Box<[u8]>, BlockOut)>,
    /// Directories that could not be listed: nothing under them is touched.
    protected: Vec<PathBuf>,
}

impl Found {
    /// Adds `other`'s lists to these (see [`Steps::append`]).
    fn append(&mut self, other: Found) {
        self.steps.append(other.steps);
        self.blocks.extend(other.blocks);
        self.protected.extend(other.protected);
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
    /// Both sides' digests came from the cache: neither file changed since a pass left
    /// both alike, extended attributes included.
    unchanged: bool,
    /// The stamps the cache holds for what came from it (with the attributes' digests,
    /// which the listing does not read).
    recorded: [Option<Stamp>; 2],
    /// Reading one side failed: nothing is done with this name.
    failed: bool,
}

/// The first name met of each SOURCE inode with several names, by device and inode.
#[derive(Default)]
struct LinkGroups {
    first: HashMap<(u64, u64), First>,
    /// BACKUP inodes kept for a group, by device and inode: the group's SOURCE inode.
    kept: HashMap<(u64, u64), (u64, u64)>,
}

/// The first name met of an inode with several names: the others are linked to it.
struct First {
    rel: PathBuf,
    /// BACKUP's inode at that name, where it is kept (same content); `None` where a copy
    /// replaces it.
    kept: Option<(u64, u64)>,
}

/// Both trees walked together, directory by directory and in parallel, comparing as it goes.
struct Walk<'a> {
    opts: &'a PassOptions,
    /// SOURCE and BACKUP.
    trees: [&'a dyn Tree; 2],
    cache: &'a DirCache,
    /// Decides which digests may be remembered; what the copies learn goes here later.
    learner: &'a Learner,
    /// A first copy applies each directory as soon as it is planned (see [`mirror_pass`]).
    streaming: Option<(&'a Applier<'a>, &'a Applying)>,
    /// Where a first copy writes each directory's block of the cache once it is complete.
    writer: Option<&'a BlockWriter>,
    found: Mutex<Found>,
    /// Names that share an inode in SOURCE, as met so far.
    links: Mutex<LinkGroups>,
    hashed: AtomicU64,
    cache_hits: AtomicU64,
    errors: AtomicU64,
    backup_files: AtomicU64,
    removed_files: AtomicU64,
    backup_entries: AtomicU64,
    /// A first copy stopped reading SOURCE: what was left unread is not copied this pass.
    stopped: AtomicBool,
}

impl Walk<'_> {
    /// Lists `rel` on `side`, or records it as unlistable and gives `None`.
    fn list(&self, side: Side, rel: &Path, found: &mut Found) -> Option<Vec<(OsString, Entry)>> {
        let role = side.name();
        let skip = |name: &OsStr| self.opts.filter.excludes_child(rel, name);
        // Files' attributes are read only where their stamps moved (see `children`).
        match self.trees[side as usize].list_without_file_xattrs(rel, &skip) {
            Ok(list) => Some(list),
            Err(err) => {
                log::error!(
                    "cannot list {} in {role}: {err}; nothing under it is changed this pass",
                    Escaped(rel)
                );
                bump(&self.errors);
                found.protected.push(rel.to_path_buf());
                None
            }
        }
    }

    /// Walks a directory that is one on at least one side, then hands its subdirectories to
    /// tasks of their own in `scope`. Rayon queues a spawned task, never runs it inline, so the
    /// stack does not grow with the depth of the tree (SECURITY.md rule 7).
    fn visit<'s>(&'s self, scope: &rayon::Scope<'s>, sub: Sub) {
        // A first copy stopped by Ctrl+C or SIGTERM reads no further: nothing it would plan
        // could be applied. (Other passes plan everything first, and stop in the applier.)
        if let Some((_, applying)) = self.streaming
            && signal::stop_requested()
        {
            applying.abandon(&sub.rel);
            self.stopped.store(true, Ordering::Relaxed);
            return;
        }
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
            // A first copy made this directory hidden before reading it: it stays unmade.
            if let Some((_, applying)) = self.streaming {
                applying.abandon(&rel);
            }
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
                found.steps.push(Step::Remove {
                    side: Side::Backup,
                    rel: rel.clone(),
                    seen: d.clone(),
                });
                if let Some(s) = &src {
                    self.plan_entry(&rel, s, None, [src_known, None], &mut found.steps);
                }
            }
            (Some(_), None) => {
                if let Some(d) = &dst {
                    self.count_removal(&rel, d);
                    found.steps.push(Step::Remove {
                        side: Side::Backup,
                        rel: rel.clone(),
                        seen: d.clone(),
                    });
                }
                found.steps.push(Step::MakeDir {
                    side: Side::Backup,
                    rel: rel.clone(),
                });
            }
            _ => {}
        }
        let subs = self.children(&rel, &src_list, &dst_list, &mut found);
        drop((src_list, dst_list));
        if let Some(streaming) = self.streaming {
            self.apply_now(streaming, &mut found);
        }
        let holds_ops = subs.1;
        let differs = |s: &Entry| dst_dir.is_none_or(|d| d.meta_differs(&s.meta()));
        if holds_ops || src_dir.is_some_and(differs) {
            found.steps.push(Step::Dir {
                side: Side::Backup,
                rel,
                seen: dst_dir.cloned(),
                want: src_dir.map(Entry::meta),
                changes_inside: holds_ops,
            });
        }
        self.found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(found);
        for sub in subs.0 {
            scope.spawn(move |scope| self.visit(scope, sub));
        }
    }

    /// Walks `subs` and everything beneath them, in parallel; returns once all is walked.
    fn visit_all(&self, subs: Vec<Sub>) {
        rayon::scope(|scope| {
            for sub in subs {
                scope.spawn(move |scope| self.visit(scope, sub));
            }
        });
    }

    /// Applies what `found` holds for one directory (all but its directories' modes, which
    /// come last), and gives its block of the hash cache what the copies learnt.
    fn apply_now(&self, (applier, applying): (&Applier<'_>, &Applying), found: &mut Found) {
        let Steps {
            saves,
            removals,
            creates,
            transfers,
            links,
            dirs,
        } = std::mem::take(&mut found.steps);
        // A hard link waits for the copy it shares an inode with, which another directory's
        // task may be making; directories get their modes last.
        found.steps.links = links;
        found.steps.dirs = dirs;
        // A directory of the root was made hidden before the walk began.
        let creates = creates
            .into_iter()
            .filter(|step| !applying.is_staged(step.rel()))
            .collect();
        let learner = self.learner.fresh();
        let here = Applier {
            learner: &learner,
            ..*applier
        };
        let now = Steps {
            saves,
            removals,
            creates,
            transfers,
            links: Vec::new(),
            dirs: Vec::new(),
        };
        here.now(applying, &now);
        learner.record_into(&mut found.blocks, self.cache);
        for (dir, block) in &mut found.blocks {
            block.compact();
            if let (Some(writer), BlockOut::Encoded(bytes)) = (self.writer, &*block) {
                writer.write(dir, bytes);
                *block = BlockOut::Written;
            }
        }
    }

    fn count_removal(&self, rel: &Path, seen: &Entry) {
        if !seen.is_dir() && !in_temp(rel) {
            bump(&self.removed_files);
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
                bump(&self.backup_entries);
                if !entry.is_dir() {
                    bump(&self.backup_files);
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
                    && s.size >= crate::tree::ops::PARALLEL_HASH_FROM
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
        let paths: Vec<(Side, PathBuf)> = reads
            .iter()
            .map(|&(i, side)| (side, rel.join(pairs[i].name)))
            .collect();
        let files: Vec<(Side, &Path)> = paths.iter().map(|(s, p)| (*s, p.as_path())).collect();
        for ((result, started), (i, side)) in read_files(self.trees, &files).into_iter().zip(reads)
        {
            let p = &mut pairs[i];
            let entry = [p.src, p.dst][side as usize].expect("compared files exist");
            let cacheable = !is_racy(entry, started, self.learner.stamps(side));
            match result {
                Ok(digest) => {
                    bump(&self.hashed);
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
                    bump(&self.errors);
                    p.failed = true;
                }
            }
        }

        // Files alike in content of which one changed since a pass left both alike (or that
        // no pass recorded): their extended attributes, which the listing left unread, are
        // read now to be compared. An unchanged pair's are as that pass left them: alike.
        let mut read_attrs: HashMap<usize, [Entry; 2]> = HashMap::new();
        if meta::carry().xattrs {
            for (i, p) in pairs.iter_mut().enumerate() {
                let (Some(s), Some(d), [Some(a), Some(b)]) = (p.src, p.dst, p.digests) else {
                    continue;
                };
                if p.unchanged || s.kind != Kind::File || d.kind != Kind::File || a != b {
                    continue;
                }
                let child = rel.join(p.name);
                let mut both = [s.clone(), d.clone()];
                for (side, e) in SIDES.iter().zip(&mut both) {
                    match self.trees[side.0 as usize].xattrs(&child) {
                        Ok(x) => e.xattrs = meta::xattr_digest(&x),
                        Err(err) => {
                            log::error!("cannot read {} in {}: {err}", Escaped(&child), side.1);
                            bump(&self.errors);
                            p.failed = true;
                        }
                    }
                }
                read_attrs.insert(i, both);
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
        for (i, p) in pairs.iter().enumerate() {
            let (src, dst) = match read_attrs.get(&i) {
                Some([s, d]) => (Some(s), Some(d)),
                None => (p.src, p.dst),
            };
            let child = || rel.join(p.name);
            let mut sides = [None, None];
            for (side, _) in SIDES {
                let s = side as usize;
                if let (Some(e), Some(d), true) = ([src, dst][s], p.digests[s], p.cacheable[s])
                    && e.kind == Kind::File
                {
                    sides[s] = Some((p.recorded[s].unwrap_or_else(|| Stamp::of(e)), d));
                }
            }
            // Files alike in content whose metadata is set this pass: BACKUP's stamp is learnt
            // once that is done, not before (a pass that could not set it reads again).
            if let (Some(s), Some(d), [Some(a), Some(b)]) = (src, dst, p.digests)
                && a == b
                && d.kind == Kind::File
                && d.meta_differs(&s.meta())
            {
                sides[Side::Backup as usize] = None;
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
            let before = found.steps.len();
            match (src, dst) {
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
                    found.steps.push(Step::Remove {
                        side: Side::Backup,
                        rel,
                        seen: d.clone(),
                    });
                }
                (Some(s), d) => self.plan_entry(&child(), s, d, p.digests, &mut found.steps),
                (None, None) => {}
            }
            holds_ops |= found.steps.len() > before;
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

    /// Plans what makes BACKUP's `rel` (now `d`) what SOURCE's is (`s`, not a directory), with
    /// the digests known of both: nothing, its metadata, a copy, a link or a node. Names that
    /// share an inode in SOURCE share one in BACKUP: the first met is planned as any file,
    /// the others are linked to it; a BACKUP file that shares its inode where SOURCE's does
    /// not is copied anew, so that no change to one name ever reaches another.
    fn plan_entry(
        &self,
        rel: &Path,
        s: &Entry,
        d: Option<&Entry>,
        [digest, held]: [Option<Digest>; 2],
        steps: &mut Steps,
    ) {
        let meta = s.meta();
        match &s.kind {
            Kind::File => {
                let mut groups = self.links.lock().unwrap_or_else(|e| e.into_inner());
                let inode = (s.dev, s.ino);
                if s.is_linked()
                    && let Some(first) = groups.first.get(&inode)
                {
                    let linked = first.kept.is_some()
                        && d.is_some_and(|d| {
                            d.kind == Kind::File && Some((d.dev, d.ino)) == first.kept
                        });
                    if !linked {
                        steps.push(Step::Link {
                            side: Side::Backup,
                            rel: rel.to_path_buf(),
                            existing: first.rel.clone(),
                            source: s.clone(),
                            replace: d.cloned(),
                        });
                    }
                    return;
                }
                // A BACKUP inode that another SOURCE inode's names already hold, or that has
                // names SOURCE's file does not, is not this file's to keep.
                let shared = d.is_some_and(|d| {
                    d.is_linked()
                        && (!s.is_linked()
                            || groups
                                .kept
                                .get(&(d.dev, d.ino))
                                .is_some_and(|&g| g != inode))
                });
                let same = matches!((d, digest, held), (Some(d), Some(a), Some(b)) if d.kind == Kind::File && a == b);
                let kept = if same && !shared {
                    let d = d.expect("compared");
                    if d.meta_differs(&meta) {
                        log::debug!(
                            "{}: same content, metadata differs ({})",
                            Escaped(rel),
                            d.meta().differences(&meta, false)
                        );
                        steps.push(Step::SetMeta {
                            side: Side::Backup,
                            rel: rel.to_path_buf(),
                            seen: d.clone(),
                            meta,
                            digest: held,
                        });
                    }
                    Some((d.dev, d.ino))
                } else {
                    if log::log_enabled!(log::Level::Debug) {
                        log::debug!(
                            "{}: copied: {}",
                            Escaped(rel),
                            why_copied(s, d, digest, held, shared)
                        );
                    }
                    steps.push(Step::Copy {
                        side: Side::Backup,
                        rel: rel.to_path_buf(),
                        source: Some(s.clone()),
                        known: copy_known(digest, if shared { None } else { held }),
                        replace: d.cloned().map(Box::new),
                        link: None,
                    });
                    None
                };
                if s.is_linked() {
                    if let Some(kept) = kept {
                        groups.kept.insert(kept, inode);
                    }
                    let first = First {
                        rel: rel.to_path_buf(),
                        kept,
                    };
                    groups.first.insert(inode, first);
                }
            }
            Kind::Symlink(target) => match d {
                Some(d) if d.kind == s.kind => {
                    if d.meta_differs(&meta) {
                        steps.push(self.set_meta(rel, d, meta));
                    }
                }
                _ => steps.push(Step::Symlink {
                    side: Side::Backup,
                    rel: rel.to_path_buf(),
                    target: target.clone(),
                    meta,
                    replace: d.cloned(),
                }),
            },
            Kind::Special(node) => match d {
                Some(d) if d.kind == s.kind => {
                    if d.meta_differs(&meta) {
                        steps.push(self.set_meta(rel, d, meta));
                    }
                }
                _ => steps.push(Step::Node {
                    side: Side::Backup,
                    rel: rel.to_path_buf(),
                    node: *node,
                    meta,
                    replace: d.cloned(),
                }),
            },
            Kind::Dir => {}
        }
    }

    /// The step that gives BACKUP's `d` at `rel` the metadata `meta`.
    fn set_meta(&self, rel: &Path, d: &Entry, meta: Meta) -> Step {
        log::debug!(
            "{}: metadata differs ({})",
            Escaped(rel),
            d.meta()
                .differences(&meta, matches!(d.kind, Kind::Symlink(_)))
        );
        Step::SetMeta {
            side: Side::Backup,
            rel: rel.to_path_buf(),
            seen: d.clone(),
            meta,
            digest: None,
        }
    }

    /// Merges the two sorted listings by name, with the cached digests of unchanged files.
    fn pair_up<'l>(
        &self,
        src_list: &'l [(OsString, Entry)],
        dst_list: &'l [(OsString, Entry)],
        old: &[Record<&[u8]>],
    ) -> Vec<Pair<'l>> {
        let hit = |side: Side, record: Option<&Record<&[u8]>>, entry: &Entry| -> Option<Recorded> {
            if self.opts.checksum || entry.kind != Kind::File {
                return None;
            }
            match record?.sides[side as usize] {
                Some((stamp, digest)) if stamp.holds(entry) => {
                    bump(&self.cache_hits);
                    Some((stamp, digest))
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
            let hits = [
                src.and_then(|e| hit(Side::Source, record, e)),
                dst.and_then(|e| hit(Side::Backup, record, e)),
            ];
            let digests = hits.map(|h| h.map(|(_, digest)| digest));
            pairs.push(Pair {
                name,
                src,
                dst,
                cacheable: digests.map(|d| d.is_some()),
                unchanged: digests.iter().all(Option::is_some),
                recorded: hits.map(|h| h.map(|(stamp, _)| stamp)),
                digests,
                failed: false,
            });
        }
        pairs
    }
}

/// Why the SOURCE file `s` is copied over `d`, for a `-v` line.
fn why_copied(
    s: &Entry,
    d: Option<&Entry>,
    digest: Option<Digest>,
    held: Option<Digest>,
    shared: bool,
) -> String {
    match d {
        None => "not in BACKUP".into(),
        Some(d) if d.kind != Kind::File => "BACKUP holds another kind of entry there".into(),
        Some(_) if shared => "BACKUP's file shares its inode with names SOURCE's does not".into(),
        Some(d) if d.size != s.size => format!("size differs ({} -> {} bytes)", d.size, s.size),
        Some(_) => match (digest, held) {
            (Some(a), Some(b)) if a != b => "content differs (SHA-256)".into(),
            _ => "size and time do not show it unchanged: the copy compares the content".into(),
        },
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What a copy knows of its source's content: its digest if this pass hashed or cached it,
/// else the digest of the file it replaces, if known (bytes that hash to it are not installed).
fn copy_known(digest: Option<Digest>, held: Option<Digest>) -> Known {
    match (digest, held) {
        (Some(digest), _) => Known::Digest {
            digest,
            exact: false,
        },
        (None, Some(held)) => Known::Unless(held),
        (None, None) => Known::Unread,
    }
}

/// Runs one mirror pass of `opts.source` into `opts.backup`.
///
/// Both trees are walked together, directory by directory, and only what differs is kept:
/// the memory a pass needs grows with the changes, not with the tree.
///
/// Fails (changing nothing) if a root cannot be listed, or if a safety check of SPEC §8
/// refuses the pass and `force` is off. Per-entry faults are logged and counted instead.
pub fn mirror_pass(opts: &PassOptions, dir_cache: &mut DirCache) -> Result<PassStats, Error> {
    opts.check_roots()?;
    let record = dir_cache.beside("mounts");
    super::prepare_mounts(opts, &[Side::Source, Side::Backup], record.as_deref());
    let trees: [&dyn Tree; 2] = [opts.tree(Side::Source), opts.tree(Side::Backup)];
    let list_root = |side: Side| {
        let root = Path::new("");
        let skip = |name: &OsStr| opts.filter.excludes_child(root, name);
        trees[side as usize]
            .list_without_file_xattrs(root, &skip)
            .map_err(|source| Error::ListRoot {
                role: side.name(),
                path: PathBuf::from(trees[side as usize].name()),
                source,
            })
    };
    let (src_list, dst_list) = rayon::join(|| list_root(Side::Source), || list_root(Side::Backup));
    let (src_list, dst_list) = (src_list?, dst_list?);
    let source_empty = src_list.is_empty();
    // A first copy into an empty BACKUP can be refused by nothing (it deletes nothing, and
    // BACKUP holds nothing that an empty SOURCE would take away): each directory is applied as
    // soon as the walk has planned it, so the plan of a first copy is never held whole.
    let streaming = !opts.dry_run && dst_list.is_empty() && !source_empty;
    let learner = Learner::new(&opts.source, &opts.backup);
    let applier = Applier {
        trees,
        target: Target::Mirror,
        learner: &learner,
    };
    let mut applying = applier.begin();
    let writer = if streaming { dir_cache.writer() } else { None };
    let mut walk = Walk {
        opts,
        trees,
        cache: dir_cache,
        learner: &learner,
        streaming: None,
        writer: writer.as_ref(),
        found: Mutex::new(Found::default()),
        links: Mutex::new(LinkGroups::default()),
        hashed: AtomicU64::new(0),
        cache_hits: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        backup_files: AtomicU64::new(0),
        removed_files: AtomicU64::new(0),
        backup_entries: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
    };
    let mut found = Found::default();
    let (subs, root_holds_ops) = walk.children(Path::new(""), &src_list, &dst_list, &mut found);
    drop((src_list, dst_list));
    if streaming {
        crate::testhook::after_plan();
        // The root's files are copied now; its hard links wait for every copy (their first
        // names may be anywhere); its new directories are made hidden just below.
        let root = std::mem::take(&mut found.steps.transfers);
        found.steps.creates.clear();
        // Every directory of SOURCE's root is new: each is built hidden and appears whole.
        let tops: Vec<Step> = subs
            .iter()
            .map(|sub| Step::MakeDir {
                side: Side::Backup,
                rel: sub.rel.clone(),
            })
            .collect();
        let nested = applier.stage(&mut applying, &tops);
        debug_assert!(nested.is_empty());
        walk.streaming = Some((&applier, &applying));
        let walk = &walk;
        applier.flushing(Some(Side::Backup), || {
            rayon::join(
                || applier.now(walk.streaming.expect("streaming").1, &only(root)),
                || walk.visit_all(subs),
            );
        });
        walk.found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(found);
    } else {
        walk.found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(found);
        walk.visit_all(subs);
    }

    let Walk {
        found,
        hashed,
        cache_hits,
        errors,
        backup_files,
        removed_files,
        backup_entries,
        stopped,
        ..
    } = walk;
    let mut found = found.into_inner().unwrap_or_else(|e| e.into_inner());
    // The root itself takes SOURCE root's mode and time, as every directory below does: a
    // private SOURCE (0700) keeps a private BACKUP.
    let root = Path::new("");
    if let (Ok(src_root), Ok(dst_root)) = (trees[0].stat(root), trees[1].stat(root))
        && (root_holds_ops || dst_root.meta_differs(&src_root.meta()))
    {
        found.steps.push(Step::Dir {
            side: Side::Backup,
            rel: PathBuf::new(),
            seen: Some(dst_root),
            want: Some(src_root.meta()),
            changes_inside: root_holds_ops,
        });
    }
    found.steps.shrink_to_fit();
    found.blocks.shrink_to_fit();
    let mut stats = PassStats {
        kind: PassKind::Mirror,
        errors: errors.into_inner(),
        hashed: hashed.into_inner(),
        cache_hits: cache_hits.into_inner(),
        ..PassStats::default()
    };
    let applied = if streaming {
        applier.finish(applying, &found.steps.links, &found.steps.dirs)
    } else {
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
        found.steps.sort();
        if opts.dry_run {
            let would = applier.dry_run(&found.steps);
            stats.operations = would.operations;
            stats.changes = would.changes;
            return Ok(stats);
        }
        crate::testhook::after_plan();
        // A copy, or a file found equal, learns at most one record.
        learner.expect(found.steps.transfers.len());
        applier.apply(&found.steps)
    };
    stats.operations = applied.operations;
    stats.errors += applied.errors;
    // What the copies read counts too: a first copy hashes every file as it copies it.
    stats.hashed += applied.hashed_by_copies;
    stats.hashed_by_copies = applied.hashed_by_copies;
    stats.changes = applied.changes;
    // Stopped only if the stop left something undone: one that came after the last step
    // leaves a complete pass.
    stats.interrupted = applied.stopped || stopped.into_inner();

    // The plan is done with: its memory (a first copy's holds every file) is freed before the
    // cache's blocks are built, not held beside them.
    let Found {
        steps,
        mut blocks,
        protected,
    } = found;
    drop(steps);
    super::warn_dropped(&trees);
    learner.record_into(&mut blocks, dir_cache);
    let unlistable: Vec<&Path> = protected.iter().map(PathBuf::as_path).collect();
    // The cache decides nothing: it is written while the data is flushed.
    let save_cache = move || {
        if let Err(err) = dir_cache.save(blocks, &unlistable, writer) {
            log::warn!("cannot save the hash cache: {err}");
        }
    };
    let flush = || {
        if stats.operations > 0
            && let Err(err) = opts.tree(Side::Backup).flush()
        {
            log::warn!("cannot flush BACKUP {}: {err}", opts.backup.display());
        }
    };
    rayon::join(save_cache, flush);
    Ok(stats)
}

/// Steps of one group, as [`Steps`] (the others empty).
fn only(transfers: Vec<Step>) -> Steps {
    Steps {
        transfers,
        ..Steps::default()
    }
}
