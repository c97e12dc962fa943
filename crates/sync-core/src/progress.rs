//! How far the copies of a pass have got, for the progress line ([`crate::run::console`]): a
//! few process-wide counters and the name of the file being copied, which the applier updates
//! when a copy starts and ends. Nothing is counted while no one watches ([`watch`]): a pass
//! without a progress line pays one relaxed load per copy.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::plan::step::Step;

static WATCHED: AtomicBool = AtomicBool::new(false);
static FILES_DONE: AtomicU64 = AtomicU64::new(0);
static BYTES_DONE: AtomicU64 = AtomicU64::new(0);
static FILES_TOTAL: AtomicU64 = AtomicU64::new(0);
static BYTES_TOTAL: AtomicU64 = AtomicU64::new(0);
static TOTAL_KNOWN: AtomicBool = AtomicBool::new(false);
/// The file being copied; empty when none. Its buffer is reused from copy to copy.
static CURRENT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// What the copies of the pass have done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Copies ended (done or failed).
    pub files: u64,
    /// Their planned bytes.
    pub bytes: u64,
    /// How many copies and bytes the pass plans, where known before copying starts.
    pub total: Option<(u64, u64)>,
    /// The file whose copy started last.
    pub current: Option<PathBuf>,
}

/// Starts (`true`) or stops counting; either way the counts start again from nothing, with
/// the total unknown.
pub fn watch(on: bool) {
    WATCHED.store(false, Ordering::Relaxed);
    for counter in [&FILES_DONE, &BYTES_DONE, &FILES_TOTAL, &BYTES_TOTAL] {
        counter.store(0, Ordering::Relaxed);
    }
    TOTAL_KNOWN.store(false, Ordering::Relaxed);
    if let Some(current) = CURRENT.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        current.clear();
    }
    WATCHED.store(on, Ordering::Release);
}

fn watched() -> bool {
    WATCHED.load(Ordering::Relaxed)
}

/// The pass is about to make these copies (every [`Step::Copy`] among `steps`): the total, in
/// files and bytes, that the percentage is of. Called once the plan is whole; a pass that
/// plans and copies directory by directory (a first copy into an empty BACKUP) never calls
/// it, and its progress line has no total.
pub fn expect<'s>(steps: impl IntoIterator<Item = &'s Step>) {
    if !watched() {
        return;
    }
    let (mut files, mut bytes) = (0, 0);
    for step in steps {
        if let Step::Copy { source, .. } = step {
            files += 1;
            bytes += size(source.as_ref());
        }
    }
    FILES_TOTAL.fetch_add(files, Ordering::Relaxed);
    BYTES_TOTAL.fetch_add(bytes, Ordering::Relaxed);
    TOTAL_KNOWN.store(true, Ordering::Relaxed);
}

fn size(source: Option<&crate::model::Entry>) -> u64 {
    source.map_or(0, |e| e.size)
}

/// A copy of `rel` starts.
pub fn copy_started(rel: &Path) {
    if watched() {
        let mut guard = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        let current = guard.get_or_insert_with(PathBuf::new);
        current.clear();
        current.push(rel);
    }
    crate::testhook::before_copy();
}

/// The copy `step` ended, done or not.
pub fn copy_ended(step: &Step) {
    if watched()
        && let Step::Copy { source, .. } = step
    {
        FILES_DONE.fetch_add(1, Ordering::Relaxed);
        BYTES_DONE.fetch_add(size(source.as_ref()), Ordering::Relaxed);
    }
}

/// What has been done so far.
pub fn snapshot() -> Snapshot {
    let known = TOTAL_KNOWN.load(Ordering::Relaxed);
    Snapshot {
        files: FILES_DONE.load(Ordering::Relaxed),
        bytes: BYTES_DONE.load(Ordering::Relaxed),
        total: known.then(|| {
            (
                FILES_TOTAL.load(Ordering::Relaxed),
                BYTES_TOTAL.load(Ordering::Relaxed),
            )
        }),
        current: CURRENT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|p| !p.as_os_str().is_empty()),
    }
}
