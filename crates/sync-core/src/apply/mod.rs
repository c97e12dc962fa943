//! The one applier: carries out the [`Steps`] of any pass. It orders them (conflict losers
//! saved first, removals children first, directories parents first, copies in parallel,
//! directory modes and times last and deepest first), re-checks each target against what the
//! scan saw right before acting (in [`crate::tree::ops`]), keeps the set of failed paths and
//! skips what lies under them, logs each step or its fault on one line, counts (operations,
//! and what each side was given: see [`Changes`]), learns the digests its copies read, and
//! stops between steps when asked to.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use rayon::prelude::*;

use crate::display::Escaped;
use crate::hash::Learner;
use crate::model::{Changes, Entry, Item, Meta, Side, path_order};
use crate::plan::step::{Known, Step, Steps};
use crate::signal;
use crate::subtrees::Subtrees;
use crate::tree::meta::Xattrs;
use crate::tree::{Content, Copied, Dest, OpError, Tree};

/// How often a mirror's BACKUP is flushed while files are copied (see
/// [`Tree::flushing_while`]).
const EARLY_FLUSH: std::time::Duration = std::time::Duration::from_millis(40);

/// Large files, from this size on, are paired among themselves and smaller ones among
/// themselves (see [`pairable`]): a large file copied alone may take a second thread for its
/// hash, which a file in a pair never does.
const PAIR_FROM: u64 = 8 * 1024 * 1024;

/// What the steps are applied to, which decides how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// BACKUP, a mirror of SOURCE: new directories are built under a temporary name and
    /// appear whole (the next pass removes what a killed one left), and BACKUP is flushed
    /// while files are copied.
    Mirror,
    /// Both sides of a two-way pass: log lines name the side, and what each copy read is
    /// handed back for the archive.
    Sync,
    /// A tree no one sees until the pass gives it its name (a version being built, a
    /// restore's work directory): files are written under their own names (a failed copy
    /// takes away what it wrote), steps are not logged one by one (the pass logs its
    /// summary), and what each copy read is handed back.
    Build,
}

/// Where and how a pass's steps are applied.
#[derive(Clone, Copy)]
pub struct Applier<'a> {
    /// The two trees, by [`Side`]: the steps change their own side and read the other.
    pub trees: [&'a dyn Tree; 2],
    /// What the steps are applied to.
    pub target: Target,
    /// Decides which digests may be trusted, and learns what the copies read.
    pub learner: &'a Learner,
}

impl Target {
    fn name_sides(self) -> bool {
        self == Target::Sync
    }
    fn stage_new_dirs(self) -> bool {
        self == Target::Mirror
    }
    fn flush_while_copying(self) -> bool {
        self == Target::Mirror
    }
    fn log_steps(self) -> bool {
        self != Target::Build
    }
    fn private(self) -> bool {
        self == Target::Build
    }
    fn report_copies(self) -> bool {
        self != Target::Mirror
    }
    /// Whether giving a directory seen as `seen` the metadata `want` is an operation of its
    /// own, logged and counted. In a two-way pass a directory's time alone is not: it moves
    /// with every entry added or removed, on both sides, and is set back with them.
    fn dir_logged(self, seen: Option<&Entry>, want: Meta) -> bool {
        match (seen, self) {
            (None, _) => false,
            (Some(seen), Target::Sync) => seen.meta_differs(&Meta {
                mtime: seen.mtime,
                ..want
            }),
            (Some(seen), _) => seen.meta_differs(&want),
        }
    }
}

/// What applying did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Steps carried out.
    pub operations: u64,
    /// Steps that failed (each logged).
    pub errors: u64,
    /// Paths whose step failed, or that lay under one that did.
    pub failed: HashSet<PathBuf>,
    /// What the copies read, where the applier was asked to report it: the item both sides
    /// hold now, by path.
    pub read_by_copies: HashMap<PathBuf, Item>,
    /// What each side was given, by [`Side`]: the operations counted, by kind, and the bytes
    /// the copies wrote.
    pub changes: [Changes; 2],
    /// Copies that read and hashed what they copied (a copy of a file whose digest was known
    /// reads nothing to hash).
    pub hashed_by_copies: u64,
    /// A stop request (Ctrl+C, SIGTERM) left at least one step undone.
    pub stopped: bool,
}

impl Applier<'_> {
    /// Applies `steps` (in path order within each group, see [`Steps::sort`]).
    pub fn apply(&self, steps: &Steps) -> Applied {
        crate::progress::expect(&steps.transfers);
        let mut state = Applying::default();
        Run::new(self, &state).open_dirs(&steps.dirs);
        Run::new(self, &state).saves_and_removals(steps);
        let nested = self.stage(&mut state, &steps.creates);
        let run = Run::new(self, &state);
        run.creates(&nested);
        self.flushing(written_side(&steps.transfers), || {
            run.transfers(&steps.transfers)
        });
        self.finish(state, &steps.links, &steps.dirs)
    }

    /// Begins applying a plan part by part, as a walk produces it (see [`Applier::stage`],
    /// [`Applier::now`], [`Applier::finish`]).
    pub fn begin(&self) -> Applying {
        Applying::default()
    }

    /// Starts the creation of `creates` (new directories, in path order): where the target
    /// builds them hidden, those whose parent is not new are made hidden now, and appear whole
    /// at [`Applier::finish`]; returns the others, which [`Applier::now`] creates.
    pub fn stage<'s>(&self, state: &mut Applying, creates: &'s [Step]) -> Vec<&'s Step> {
        if !self.target.stage_new_dirs() {
            return creates.iter().collect();
        }
        // What a hidden directory holds is created under its own name at once, rather than
        // staged and linked in one by one.
        let created: HashSet<&Path> = creates.iter().map(Step::rel).collect();
        let (tops, nested): (Vec<&Step>, Vec<&Step>) = creates
            .iter()
            .partition(|step| step.rel().parent().is_none_or(|p| !created.contains(p)));
        let hidden = Run::new(self, state).stage(&tops);
        for rel in hidden.keys() {
            state.hidden_roots.insert(rel);
        }
        state.hidden.extend(hidden);
        nested
    }

    /// Applies `steps` now, except their hard links and directories' modes (kept for
    /// [`Applier::finish`]); new directories must not need staging (see [`Applier::stage`]).
    pub fn now(&self, state: &Applying, steps: &Steps) {
        let run = Run::new(self, state);
        run.open_dirs(&steps.dirs);
        run.saves_and_removals(steps);
        run.creates(&steps.creates.iter().collect::<Vec<_>>());
        run.transfers(&steps.transfers);
    }

    /// Runs `work`, which writes files on `side`, while that side is flushed where the target
    /// asks for it.
    pub fn flushing(&self, side: Option<Side>, work: impl FnOnce() + Send) {
        match side {
            Some(side) if self.target.flush_while_copying() => {
                let mut work = Some(work);
                self.trees[side as usize].flushing_while(EARLY_FLUSH, &mut || {
                    if let Some(work) = work.take() {
                        work()
                    }
                })
            }
            _ => work(),
        }
    }

    /// Ends an application: makes the hard `links` (every copy they share an inode with is
    /// done), publishes the hidden directories (even after a stop: every file in them is
    /// whole), gives `dirs` their metadata, deepest first, and says what was done.
    pub fn finish(&self, state: Applying, links: &[Step], dirs: &[Step]) -> Applied {
        let run = Run::new(self, &state);
        links.par_iter().for_each(|step| run.execute(step));
        run.publish();
        // Adding or removing an entry moves a directory's mtime, and a read-only mode would
        // have blocked the steps before.
        for level in by_depth(dirs, |step| step.rel()).into_iter().rev() {
            level.into_par_iter().for_each(|step| run.finish_dir(step));
        }
        Applied {
            operations: state.operations.into_inner(),
            errors: state.errors.into_inner(),
            changes: state.changes.each_ref().map(Tally::read),
            hashed_by_copies: state.hashed_by_copies.into_inner(),
            stopped: state.stopped.into_inner(),
            failed: state
                .failed
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .paths,
            read_by_copies: state
                .read_by_copies
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Logs what `steps` would do, without doing it; says how many operations that is, and
    /// what each side would be given (a copy counted with its source's size as the scan saw it).
    pub fn dry_run(&self, steps: &Steps) -> Applied {
        let mut operations = 0;
        let changes: [Tally; 2] = Default::default();
        for step in steps.iter() {
            let logged = match step {
                Step::Dir {
                    seen,
                    want: Some(want),
                    ..
                } => self.target.dir_logged(seen.as_ref(), *want),
                Step::Dir { .. } => false,
                _ => true,
            };
            if logged {
                log::info!("dry run: {}", step.describe(self.target.name_sides()));
                operations += 1;
                let tally = &changes[step.side() as usize];
                tally.count(step, false);
                if let Step::Copy {
                    source: Some(source),
                    link: None,
                    ..
                } = step
                {
                    tally.bytes.fetch_add(source.size, Ordering::Relaxed);
                }
            }
        }
        Applied {
            operations,
            changes: changes.each_ref().map(Tally::read),
            ..Applied::default()
        }
    }
}

/// Whether a directory seen as `seen` must change to have `want`.
fn dir_differs(seen: Option<&Entry>, want: Meta) -> bool {
    seen.is_none_or(|s| s.meta_differs(&want))
}

/// What a step did, for its log line.
enum Done {
    /// What [`Step::describe`] says.
    AsPlanned,
    /// A copy found the bytes already there: only mode and time were carried over.
    Metadata,
    /// A copy found the bytes, mode and time already there.
    Nothing,
}

/// A new directory built under a temporary name (see [`Tree::stage_dir`]): everything in it
/// is created directly under its own name, and the whole directory appears at once.
struct HiddenDir {
    side: Side,
    staged: PathBuf,
    /// A failed copy or link could not take away what it wrote: the directory may hold a
    /// partial file, so it is not published (the next pass removes it and starts again).
    spoiled: AtomicBool,
    /// What it was to hold could not be read: it is removed, not published.
    abandoned: AtomicBool,
}

/// An application of steps in progress: what failed, what was counted, the directories being
/// built hidden. Parts of one plan applied one after another (see [`Applier::begin`]) share it.
#[derive(Default)]
pub struct Applying {
    operations: AtomicU64,
    errors: AtomicU64,
    /// Paths whose step failed: nothing is done at or beneath them this pass, so a link left
    /// where a directory should be is never written through.
    failed: Mutex<Failed>,
    /// Something is in `failed` (read without a lock by every step).
    any_failed: AtomicBool,
    /// New directories being built hidden, by the path they get when complete.
    hidden: HashMap<PathBuf, HiddenDir>,
    /// The same paths, asked whether a path lies in one of them.
    hidden_roots: Subtrees,
    read_by_copies: Mutex<HashMap<PathBuf, Item>>,
    /// What each side was given, by [`Side`].
    changes: [Tally; 2],
    hashed_by_copies: AtomicU64,
    /// A step was left undone because a stop was requested.
    stopped: AtomicBool,
}

/// [`Changes`] as the applier's threads count them.
#[derive(Default)]
struct Tally {
    created: AtomicU64,
    replaced: AtomicU64,
    removed: AtomicU64,
    metadata: AtomicU64,
    bytes: AtomicU64,
}

impl Tally {
    /// Counts `step`, carried out; `metadata_only` where a copy found the bytes there already
    /// and gave only the metadata. A conflict's loser saved aside is counted with the
    /// conflicts, not here.
    fn count(&self, step: &Step, metadata_only: bool) {
        let counter = match step {
            _ if metadata_only => &self.metadata,
            Step::SaveAside { .. } => return,
            Step::Remove { .. } => &self.removed,
            Step::MakeDir { .. } => &self.created,
            Step::Copy { replace, .. } if replace.is_some() => &self.replaced,
            Step::Symlink { replace, .. }
            | Step::Node { replace, .. }
            | Step::Link { replace, .. }
                if replace.is_some() =>
            {
                &self.replaced
            }
            Step::Copy { .. } | Step::Symlink { .. } | Step::Node { .. } | Step::Link { .. } => {
                &self.created
            }
            Step::SetMeta { .. } | Step::Dir { .. } => &self.metadata,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> Changes {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Changes {
            created: get(&self.created),
            replaced: get(&self.replaced),
            removed: get(&self.removed),
            metadata: get(&self.metadata),
            bytes: get(&self.bytes),
        }
    }
}

impl Applying {
    /// Whether `rel` is a directory being built hidden.
    pub fn is_staged(&self, rel: &Path) -> bool {
        self.hidden.contains_key(rel)
    }

    /// Gives up the directory being built hidden for `rel`, if any (what it was to hold could
    /// not be read): it is removed at the end rather than given its name.
    pub fn abandon(&self, rel: &Path) {
        if let Some(hidden) = self.hidden.get(rel) {
            hidden.abandoned.store(true, Ordering::Relaxed);
        }
    }
}

/// The paths whose step failed, and the same asked whether a path lies beneath one.
#[derive(Default)]
struct Failed {
    paths: HashSet<PathBuf>,
    under: Subtrees,
}

/// An applier at work on an application.
struct Run<'a> {
    at: &'a Applier<'a>,
    state: &'a Applying,
}

impl<'a> Run<'a> {
    fn new(at: &'a Applier<'a>, state: &'a Applying) -> Run<'a> {
        Run { at, state }
    }

    /// Lets steps add to and remove from directories that their own mode would forbid it.
    fn open_dirs(&self, dirs: &[Step]) {
        for step in dirs {
            if let Step::Dir {
                side,
                rel,
                seen: Some(seen),
                changes_inside: true,
                ..
            } = step
                && seen.mode & 0o700 != 0o700
                && let Err(err) = self.tree(*side).open_dir(rel, seen.mode)
            {
                self.op_error(step, &err);
            }
        }
    }

    fn saves_and_removals(&self, steps: &Steps) {
        // Losers are moved aside before anything could overwrite them.
        for step in &steps.saves {
            self.execute(step);
        }
        // Children before parents, so a directory is empty when its turn comes.
        for step in steps.removals.iter().rev() {
            self.execute(step);
        }
    }

    /// Parents before children: one depth at a time, each in parallel.
    fn creates(&self, creates: &[&Step]) {
        for level in by_depth(creates, |step| step.rel()) {
            level.into_par_iter().for_each(|step| self.execute(step));
        }
    }

    fn transfers(&self, transfers: &[Step]) {
        let (pairs, singles) = pairable(transfers);
        rayon::join(
            || {
                pairs
                    .into_par_iter()
                    .for_each(|pair| self.execute_pair(pair))
            },
            || singles.into_par_iter().for_each(|step| self.execute(step)),
        );
    }

    fn tree(&self, side: Side) -> &dyn Tree {
        self.at.trees[side as usize]
    }

    /// ` in SIDE` where log lines name sides, else nothing.
    fn within(&self, side: Side) -> String {
        if self.at.target.name_sides() {
            format!(" in {}", side.name())
        } else {
            String::new()
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&self, message: std::fmt::Arguments<'_>) {
        log::error!("{message}");
        Run::bump(&self.state.errors);
    }

    /// Logs and counts the fault of `step`.
    fn op_error(&self, step: &Step, err: &OpError) {
        let rel = Escaped(step.rel());
        let side = step.side();
        let (here, there) = (self.within(side), self.within(side.other()));
        match err {
            OpError::Read { source, .. } => {
                self.error(format_args!("cannot read {rel}{there}: {source}"))
            }
            OpError::Write { source, .. } => {
                self.error(format_args!("cannot write {rel}{here}: {source}"))
            }
            OpError::SourceChanged { .. } if self.at.target.name_sides() => self.error(format_args!(
                "skipped {rel}{here}: its other side changed while being copied; retried next pass"
            )),
            OpError::SourceChanged { .. } => self.error(format_args!(
                "skipped {rel}: it changed while being copied; retried next pass"
            )),
            OpError::DestinationChanged { .. } if self.at.target.name_sides() => self.error(format_args!(
                "skipped {rel}{here}: it changed since the scan; retried next pass"
            )),
            OpError::DestinationChanged { .. } => self.error(format_args!(
                "skipped {rel}: it changed in {} since the scan; retried next pass",
                side.name()
            )),
        }
    }

    /// Whether `rel` or a parent of it failed this pass.
    fn blocked(&self, rel: &Path) -> bool {
        if !self.state.any_failed.load(Ordering::Acquire) {
            return false;
        }
        let failed = self.state.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.under.contains(rel)
    }

    fn mark_failed(&self, rel: &Path) {
        let mut failed = self.state.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.paths.insert(rel.to_path_buf()) {
            failed.under.insert(rel);
        }
        self.state.any_failed.store(true, Ordering::Release);
    }

    /// The hidden directory that `rel` is being built in, if any.
    fn hidden_in<'r>(&self, rel: &'r Path) -> Option<(&'r Path, &HiddenDir)> {
        let top = self.state.hidden_roots.root_above(rel)?;
        self.state.hidden.get(top).map(|hidden| (top, hidden))
    }

    /// Where `rel` is written now (inside a hidden directory, or at its own name), and how.
    fn place(&self, rel: &Path) -> (PathBuf, Option<&HiddenDir>) {
        match self.hidden_in(rel) {
            Some((top, hidden)) => {
                let inside = rel.strip_prefix(top).unwrap_or(rel);
                (hidden.staged.join(inside), Some(hidden))
            }
            None => (rel.to_path_buf(), None),
        }
    }

    /// Whether what is written at a place (see [`Run::place`]) is seen by no one yet.
    fn hidden_dest(&self, hidden: Option<&HiddenDir>) -> bool {
        hidden.is_some() || self.at.target.private()
    }

    /// Whether `step` may run now: no stop requested, nothing failed at or above its path, and
    /// (for what creates) every parent still a real directory. A refusal is logged here.
    fn ready(&self, step: &Step) -> bool {
        if signal::stop_requested() {
            self.state.stopped.store(true, Ordering::Relaxed);
            return false;
        }
        let rel = step.rel();
        if self.blocked(rel) {
            self.mark_failed(rel);
            return false;
        }
        // Whatever this step creates, it creates inside its tree, never through a link. (A
        // hidden directory's parents were checked when it was made; what is inside is ours.)
        if !matches!(step, Step::Remove { .. })
            && self.hidden_in(rel).is_none()
            && let Err(err) = self.tree(step.side()).check_parents(rel)
        {
            self.mark_failed(rel);
            self.op_error(step, &err);
            return false;
        }
        true
    }

    fn execute(&self, step: &Step) {
        if self.ready(step) {
            self.run(step);
        }
    }

    /// Runs two copies that [`pairable`] chose together (see [`Tree::copy_pair_in`]); one that
    /// may not run leaves the other to run alone.
    fn execute_pair(&self, steps: [&Step; 2]) {
        let [a, b] = steps;
        match (self.ready(a), self.ready(b)) {
            (true, true) => {}
            (true, false) => return self.run(a),
            (false, true) => return self.run(b),
            (false, false) => return,
        }
        crate::progress::copy_started(a.rel());
        crate::progress::copy_started(b.rel());
        let (ja, jb) = (self.pair_job(a), self.pair_job(b));
        let side = a.side();
        let started = SystemTime::now();
        let results = self.tree(side).copy_pair_in(
            [(&ja.0, ja.1, ja.2, ja.3), (&jb.0, jb.1, jb.2, jb.3)],
            self.tree(side.other()),
        );
        for (step, result) in [a, b].into_iter().zip(results) {
            let done = result.and_then(|c| self.copied(step, started, c));
            self.conclude(step, done);
        }
    }

    /// Where the copy `step` writes, and over what; what it reads on the other side.
    fn pair_job<'s>(&self, step: &'s Step) -> (PathBuf, &'s Path, Option<&'s Entry>, Dest<'s>) {
        let Step::Copy {
            rel,
            replace,
            source,
            ..
        } = step
        else {
            unreachable!("only copies are paired");
        };
        let (dst, hidden) = self.place(rel);
        let over = dest(replace.as_deref(), self.hidden_dest(hidden));
        (dst, rel, source.as_ref(), over)
    }

    /// Carries out `step` (already [`Run::ready`]) and logs what it did.
    fn run(&self, step: &Step) {
        let (side, rel) = (step.side(), step.rel());
        let tree = self.tree(side);
        let (dst, hidden) = self.place(rel);
        let result = match step {
            Step::SaveAside { to, seen, .. } => tree
                .rename_noreplace(&dst, to, seen)
                .map(|()| Done::AsPlanned),
            Step::Remove { seen, .. } => tree.remove(&dst, seen).map(|()| Done::AsPlanned),
            Step::MakeDir { .. } => tree.make_dir(&dst).map(|()| Done::AsPlanned),
            Step::Copy {
                link: Some(link), ..
            } if tree.hard_link(&dst, link).is_ok() => Ok(Done::AsPlanned),
            // A file to link that was edited, or that has as many links as it may, is copied.
            Step::Copy {
                source,
                known,
                replace,
                ..
            } => {
                crate::progress::copy_started(rel);
                let started = SystemTime::now();
                let read = side.other();
                // A digest hashed or cached this pass lets the kernel copy the bytes unread,
                // while the source keeps the stamp it was hashed under.
                let trusted = source.as_ref().filter(|e| self.at.learner.trusted(read, e));
                let content = match (known, trusted) {
                    (Known::Digest { digest, exact }, Some(entry)) => Content::Known {
                        entry,
                        digest: *digest,
                        exact: *exact,
                    },
                    (
                        Known::Digest {
                            digest,
                            exact: true,
                        },
                        None,
                    ) => Content::Hash(Some(digest)),
                    (Known::Unless(held), _) => Content::Unless(held),
                    (Known::Digest { exact: false, .. } | Known::Unread, _) => Content::Hash(None),
                };
                let over = dest(replace.as_deref(), self.hidden_dest(hidden));
                tree.copy_in(&dst, self.tree(read), rel, source.as_ref(), over, content)
                    .and_then(|c| self.copied(step, started, c))
            }
            Step::Symlink {
                target,
                meta,
                replace,
                ..
            } => self
                .xattrs_for(step, meta.xattrs, None)
                .and_then(|xattrs| {
                    let over = dest(replace.as_ref(), self.hidden_dest(hidden));
                    tree.symlink(&dst, target, over, meta, &xattrs.unwrap_or_default())
                })
                .map(|_| Done::AsPlanned),
            Step::Node {
                node,
                meta,
                replace,
                ..
            } => self
                .xattrs_for(step, meta.xattrs, None)
                .and_then(|xattrs| {
                    let over = dest(replace.as_ref(), self.hidden_dest(hidden));
                    tree.make_node(&dst, *node, over, meta, &xattrs.unwrap_or_default())
                })
                .map(|made| match made {
                    Some(_) => Done::AsPlanned,
                    // Counted for the pass's warning. Nothing stands for it: a two-way archive
                    // must not record it as there, or the next pass would take it for deleted.
                    None => {
                        self.mark_failed(rel);
                        Done::Nothing
                    }
                }),
            Step::Link {
                existing,
                source,
                replace,
                ..
            } if self.blocked(existing) => Err(OpError::SourceChanged {
                path: existing.clone(),
            }),
            Step::Link {
                existing,
                source,
                replace,
                ..
            } => {
                let (existing, _) = self.place(existing);
                let over = dest(replace.as_ref(), self.hidden_dest(hidden));
                tree.link_within(&dst, &existing, source, over)
                    .map(|_| Done::AsPlanned)
            }
            Step::SetMeta {
                seen, meta, digest, ..
            } => self
                .xattrs_for(step, meta.xattrs, Some(seen.xattrs))
                .and_then(|xattrs| tree.set_meta(&dst, seen, meta, xattrs.as_ref()))
                .map(|now| {
                    if let Some(d) = digest {
                        self.at.learner.learn(side, rel, &now, *d, None);
                    }
                    Done::AsPlanned
                }),
            Step::Dir { .. } => unreachable!("directories are finished apart"),
        };
        self.conclude(step, result);
    }

    /// The extended attributes `step` gives its path: `None` where what is there has them
    /// already (`have`, a digest, is `want`); none where `want` is none; else those of the
    /// other side's entry at the same path, read now.
    fn xattrs_for(
        &self,
        step: &Step,
        want: u64,
        have: Option<u64>,
    ) -> Result<Option<Xattrs>, OpError> {
        if have == Some(want) {
            return Ok(None);
        }
        if want == 0 {
            return Ok(Some(Xattrs::new()));
        }
        let (read, rel) = (step.side().other(), step.rel());
        match self.tree(read).xattrs(rel) {
            Ok(xattrs) => Ok(Some(xattrs)),
            Err(source) => Err(OpError::Read {
                path: rel.to_path_buf(),
                source,
            }),
        }
    }

    /// Learns what the copy `step` (begun at `started`) read and left, hands it back where the
    /// step asked, and finishes a copy that found the bytes already there.
    fn copied(&self, step: &Step, started: SystemTime, c: Copied) -> Result<Done, OpError> {
        let Step::Copy {
            side, rel, source, ..
        } = step
        else {
            unreachable!("only copies copy");
        };
        let (side, read) = (*side, side.other());
        if c.hashed {
            Run::bump(&self.state.hashed_by_copies);
        }
        if c.installed {
            self.state.changes[side as usize]
                .bytes
                .fetch_add(c.source.size, Ordering::Relaxed);
        }
        let learner = self.at.learner;
        let learn =
            |copy: &Entry| learner.learn_copy(side, rel, (&c.source, started), copy, c.digest);
        if self.at.target.report_copies() {
            // The source as it was copied (it may have changed since the scan): its bytes,
            // mode and time are what both sides now hold.
            let item = Item::File {
                digest: c.digest,
                size: c.source.size,
                meta: c.source.meta(),
            };
            self.state
                .read_by_copies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rel.clone(), item);
        }
        if c.installed {
            learn(&c.destination);
            return Ok(Done::AsPlanned);
        }
        // Same bytes: what is left to carry over is the mode and time, as for a file found
        // equal by its digest.
        let there = &c.destination;
        let Some(_) = source else {
            learn(there);
            return Ok(Done::Nothing);
        };
        let meta = c.source.meta();
        if !there.meta_differs(&meta) {
            learn(there);
            return Ok(Done::Nothing);
        }
        let (dst, _) = self.place(rel);
        let set = self
            .xattrs_for(step, meta.xattrs, Some(there.xattrs))
            .and_then(|xattrs| {
                self.tree(side)
                    .set_meta(&dst, there, &meta, xattrs.as_ref())
            });
        match set {
            Ok(now) => {
                learn(&now);
                Ok(Done::Metadata)
            }
            Err(err) => {
                // The source was read all the same.
                learner.learn(read, rel, &c.source, c.digest, Some(started));
                Err(err)
            }
        }
    }

    /// Logs and counts how `step` ended.
    fn conclude(&self, step: &Step, result: Result<Done, OpError>) {
        crate::progress::copy_ended(step);
        let rel = step.rel();
        match result {
            Ok(done) => {
                let metadata_only = matches!(done, Done::Metadata);
                match done {
                    Done::AsPlanned if !self.at.target.log_steps() => {}
                    Done::AsPlanned => log::info!("{}", step.describe(self.at.target.name_sides())),
                    Done::Metadata => log::info!(
                        "updated metadata of {}{}",
                        Escaped(rel),
                        self.within(step.side())
                    ),
                    Done::Nothing => return,
                }
                Run::bump(&self.state.operations);
                self.state.changes[step.side() as usize].count(step, metadata_only);
            }
            Err(err) => {
                self.mark_failed(rel);
                if let Step::SaveAside { to, .. } = step {
                    self.mark_failed(to);
                }
                if let (Step::Copy { .. } | Step::Symlink { .. }, (path, Some(hidden))) =
                    (step, self.place(rel))
                    && self.tree(step.side()).exists(&path)
                {
                    hidden.spoiled.store(true, Ordering::Relaxed);
                }
                if let (Step::Remove { seen, .. }, OpError::Write { source, .. }) = (step, &err)
                    && seen.is_dir()
                    && source.kind() == std::io::ErrorKind::DirectoryNotEmpty
                {
                    // Excluded entries (or ones created since the scan) keep it; that is
                    // what --exclude promises, not a fault. (A two-way archive keeps its entry,
                    // so the removal is tried again, with this warning, until it can happen.)
                    log::warn!(
                        "kept directory {}{}: it holds entries that are excluded or new",
                        Escaped(rel),
                        self.within(step.side())
                    );
                    return;
                }
                self.op_error(step, &err);
            }
        }
    }

    /// Makes a hidden directory for each of `tops` (new directories whose parents exist) that
    /// may be created now; one that cannot be made fails as its creation would.
    fn stage(&self, tops: &[&Step]) -> HashMap<PathBuf, HiddenDir> {
        tops.par_iter()
            .filter(|step| self.ready(step))
            .filter_map(|step| {
                let rel = step.rel();
                let parent = rel.parent().unwrap_or(Path::new(""));
                match self.tree(step.side()).stage_dir(parent) {
                    Ok(staged) => Some((
                        rel.to_path_buf(),
                        HiddenDir {
                            side: step.side(),
                            staged,
                            spoiled: AtomicBool::new(false),
                            abandoned: AtomicBool::new(false),
                        },
                    )),
                    Err(err) => {
                        self.conclude(step, Err(err));
                        None
                    }
                }
            })
            .collect()
    }

    /// Gives each hidden directory its name, in path order. One that lost the name to
    /// something created since the scan is removed (it holds only our copies) and tried again
    /// next pass.
    fn publish(&self) {
        let mut tops: Vec<(&PathBuf, &HiddenDir)> = self.state.hidden.iter().collect();
        tops.sort_unstable_by(|a, b| path_order(a.0, b.0));
        for (rel, hidden) in tops {
            let made = Step::MakeDir {
                side: hidden.side,
                rel: rel.clone(),
            };
            let tree = self.tree(hidden.side);
            if hidden.abandoned.load(Ordering::Relaxed) {
                if let Err(e) = tree.discard_dir(&hidden.staged) {
                    log::warn!(
                        "cannot remove {}: {e}; the next pass removes it",
                        Escaped(&hidden.staged)
                    );
                }
                continue;
            }
            if hidden.spoiled.load(Ordering::Relaxed) {
                self.mark_failed(rel);
                self.error(format_args!(
                    "skipped directory {}: a failed copy left a partial file in it; retried next pass",
                    Escaped(rel)
                ));
                continue;
            }
            match tree.publish_dir(&hidden.staged, rel) {
                Ok(()) => self.conclude(&made, Ok(Done::AsPlanned)),
                Err(err) => {
                    self.conclude(&made, Err(err));
                    if let Err(e) = tree.discard_dir(&hidden.staged) {
                        log::warn!(
                            "cannot remove {}: {e}; the next pass removes it",
                            Escaped(&hidden.staged)
                        );
                    }
                }
            }
        }
    }

    /// Gives a directory its final mode (and time) once everything in it is done.
    fn finish_dir(&self, step: &Step) {
        let Step::Dir {
            side,
            rel,
            seen,
            want: Some(want),
            changes_inside,
        } = step
        else {
            return;
        };
        if self.blocked(rel) {
            return;
        }
        let differs = dir_differs(seen.as_ref(), *want);
        if !differs && !changes_inside {
            return;
        }
        if signal::stop_requested() {
            self.state.stopped.store(true, Ordering::Relaxed);
            return;
        }
        let set = self
            // A new directory may have inherited attributes (a default ACL) from its parent:
            // what it must have is given whatever it holds.
            .xattrs_for(step, want.xattrs, seen.as_ref().map(|s| s.xattrs))
            .and_then(|xattrs| self.tree(*side).finish_dir(rel, want, xattrs.as_ref()));
        match set {
            Ok(()) => {
                if self.at.target.dir_logged(seen.as_ref(), *want) {
                    if self.at.target.log_steps() {
                        log::info!("{}", step.describe(self.at.target.name_sides()));
                    }
                    Run::bump(&self.state.operations);
                    self.state.changes[*side as usize].count(step, false);
                }
            }
            Err(err) => {
                self.mark_failed(rel);
                self.op_error(step, &err);
            }
        }
    }
}

/// The one side that `transfers` write, if they all write one.
fn written_side(transfers: &[Step]) -> Option<Side> {
    let first = transfers.first()?.side();
    transfers.iter().all(|s| s.side() == first).then_some(first)
}

/// What a copy or link goes over, or into: the entry the scan saw, a new name, or a directory
/// no one else sees yet (`hidden`).
fn dest<'a>(replace: Option<&'a Entry>, hidden: bool) -> Dest<'a> {
    match (replace, hidden) {
        (Some(seen), _) => Dest::Replace(seen),
        (None, true) => Dest::Hidden,
        (None, false) => Dest::New,
    }
}

/// Copies that [`Run::execute_pair`] runs two at a time: files hashed as they are copied
/// (nothing known of their content), when there are more of them than threads, so that every
/// thread would copy one anyway. The two-lane hash then costs about what one file's did: a
/// large file's copy is mostly hashing, and even a first copy of small files spends a tenth
/// of its time hashing. The two of a pair are copied into the same side; large files (see
/// [`PAIR_FROM`]) and smaller ones are paired apart, each by size, largest first, so that the
/// two of a pair end together. The rest are returned as they were.
fn pairable(transfers: &[Step]) -> (Vec<[&Step; 2]>, Vec<&Step>) {
    let unread = |step: &Step| match step {
        Step::Copy {
            source: Some(e),
            known: Known::Unread,
            ..
        } => Some(e.size),
        _ => None,
    };
    let (mut rest, mut pairs) = (Vec::new(), Vec::new());
    // By side (a pair is copied into one tree from the other), then large or not.
    let mut classes: [Vec<(u64, &Step)>; 4] = Default::default();
    for step in transfers {
        match unread(step) {
            Some(size) => {
                let class = 2 * step.side() as usize + usize::from(size >= PAIR_FROM);
                classes[class].push((size, step));
            }
            None => rest.push(step),
        }
    }
    for mut class in classes {
        if class.len() <= rayon::current_num_threads() {
            rest.extend(class.into_iter().map(|(_, step)| step));
            continue;
        }
        class.sort_by_key(|&(size, _)| std::cmp::Reverse(size));
        let mut class = class.into_iter().map(|(_, step)| step);
        while let Some(a) = class.next() {
            match class.next() {
                Some(b) => pairs.push([a, b]),
                None => rest.push(a),
            }
        }
    }
    (pairs, rest)
}

/// `items` grouped by the depth of their path, shallowest first (the root, `""`, alone before
/// the names it holds).
fn by_depth<T>(items: &[T], rel: impl Fn(&T) -> &Path) -> Vec<Vec<&T>> {
    let mut levels: Vec<Vec<&T>> = Vec::new();
    for item in items {
        let bytes = rel(item).as_os_str().as_bytes();
        let depth = match bytes.is_empty() {
            true => 0,
            false => 1 + bytes.iter().filter(|&&b| b == b'/').count(),
        };
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
    use crate::model::{Kind, Timestamp};

    fn copy(name: &str, size: u64, known: Known) -> Step {
        let source = Entry {
            kind: Kind::File,
            mode: 0o644,
            size,
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            ino: 1,
            dev: 1,
            uid: 0,
            gid: 0,
            xattrs: 0,
            nlink: 1,
        };
        Step::Copy {
            side: Side::Backup,
            rel: PathBuf::from(name),
            source: Some(source),
            known,
            replace: None,
            link: None,
        }
    }

    fn names(steps: &[&Step]) -> Vec<String> {
        steps
            .iter()
            .map(|step| step.rel().display().to_string())
            .collect()
    }

    fn into_source(mut step: Step) -> Step {
        if let Step::Copy { side, .. } = &mut step {
            *side = Side::Source;
        }
        step
    }

    #[test]
    fn copies_beyond_the_threads_are_paired_by_size_large_and_small_apart() {
        let unread = Known::Unread;
        let transfers = [
            copy("small", PAIR_FROM - 1, unread),
            copy("a", PAIR_FROM, unread),
            copy("b", 3 * PAIR_FROM, unread),
            copy(
                "known",
                5 * PAIR_FROM,
                Known::Digest {
                    digest: [0; 32],
                    exact: false,
                },
            ),
            copy("c", 2 * PAIR_FROM, unread),
            copy("tiny", 10, unread),
            copy("little", 100, unread),
            into_source(copy("there", 300, unread)),
            into_source(copy("there too", 50, unread)),
        ];
        let in_pool = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| pairable(&transfers))
        };
        // Three large unknown copies on one thread: the two largest together, the third alone
        // with the rest. Of the three small ones, the two largest together too: never a small
        // file with a large one, nor a copy into one side with a copy into the other.
        let (pairs, rest) = in_pool(1);
        let mut pairs: Vec<_> = pairs.iter().map(|p| names(p)).collect();
        pairs.sort();
        assert_eq!(
            pairs,
            [["b", "c"], ["small", "little"], ["there", "there too"]]
        );
        let mut rest = names(&rest);
        rest.sort();
        assert_eq!(rest, ["a", "known", "tiny"]);
        // As many threads as copies of each size: each has its own thread, nothing is paired.
        let (pairs, rest) = in_pool(3);
        assert!(pairs.is_empty());
        assert_eq!(rest.len(), transfers.len());
    }
}
