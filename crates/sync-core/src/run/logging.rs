//! Log lines of SPEC §5 on the console and in a log file that is created again if deleted.
//!
//! Format: `[ONEWAY][2026-11-25 16:44:07 - INFO] - copied docs/a.txt`.
//!
//! `fern` formats each line and dispatches it to the console and the file, each with its own
//! filter ([`Verbosity`]): the file gets every operation line (INFO and up; DEBUG too with
//! `-v`), the console what the user asked for. What fern lacks is here: the file is written in
//! batches and created again if deleted (a fern output of our own, `Batches`), and both
//! outputs are fed under one lock, so the console and the file list lines in one order.
//!
//! The console gets each line at once (through [`console`], which keeps it above a progress
//! line). The file gets them in batches: a pass that copies thousands of files would otherwise
//! pay a journaled update of the log's inode per line (about 5% of a first copy of small
//! files, measured). A batch is written when a warning or an error arrives, when it reaches
//! 64 KiB, 100 ms after its first line (a thread of its own, asleep while there is nothing to
//! write), on [`flush`] (the end of every pass, and before the program exits) and after a
//! panic; a SIGKILL can lose at most the last 100 ms of lines.
//!
//! The file is opened, each time, without following a link that another user owns
//! ([`trust::open_append`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::run::console::{self, Verbosity};
use crate::run::trust;

/// The log file, reopened when the path no longer names the file we hold open.
struct LogFile {
    path: PathBuf,
    file: Option<File>,
    identity: Option<(u64, u64)>,
    reported_failure: bool,
    /// Lines not yet written to the file, in order.
    pending: String,
}

/// A batch is written once it holds this much.
const BATCH_BYTES: usize = 64 * 1024;

/// How long a line may wait in a batch.
const BATCH_DELAY: Duration = Duration::from_millis(100);

impl LogFile {
    /// Opens (or makes) the file, never through another user's link: a root run must not
    /// append to, or create, whatever file a planted link names (issue 20).
    fn open(&mut self) -> io::Result<()> {
        let file = trust::open_append(&self.path)?;
        let meta = file.metadata()?;
        self.identity = Some((meta.dev(), meta.ino()));
        self.file = Some(file);
        Ok(())
    }

    /// True when the path was deleted or replaced since we opened it: the user (or a log
    /// rotation) removed it and expects the next line in a fresh file.
    fn is_stale(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(meta) => self.identity != Some((meta.dev(), meta.ino())),
            Err(_) => true,
        }
    }

    /// Queues `line`; writes the batch now if `urgent` or if it is full.
    fn push(&mut self, line: &str, urgent: bool) {
        self.pending.push_str(line);
        if urgent || self.pending.len() >= BATCH_BYTES {
            self.write_pending();
        }
    }

    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if (self.file.is_none() || self.is_stale())
            && let Err(err) = self.open()
        {
            if !self.reported_failure {
                self.reported_failure = true;
                eprintln!("cannot write log file {}: {err}", self.path.display());
            }
            self.file = None;
            // The lines stay queued for the next try, up to one batch.
            if self.pending.len() > BATCH_BYTES {
                self.pending.clear();
            }
            return;
        }
        self.reported_failure = false;
        if let Some(file) = self.file.as_mut() {
            // Whole lines in one write, so lines never interleave with another writer's.
            let _ = file.write_all(self.pending.as_bytes());
        }
        self.pending.clear();
    }
}

/// The log file, and the signal to the writer thread that a batch has started.
struct Batches {
    file: Mutex<LogFile>,
    started: Condvar,
}

impl Batches {
    fn lock(&self) -> MutexGuard<'_, LogFile> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one formatted line (fern's output for the file); a warning or an error is
    /// written at once.
    fn append(&self, record: &Record<'_>) {
        let line = format!("{}\n", record.args());
        let mut file = self.lock();
        let first = file.pending.is_empty();
        file.push(&line, record.level() <= Level::Warn);
        if first && !file.pending.is_empty() {
            self.started.notify_one();
        }
    }

    /// Writes each batch about [`BATCH_DELAY`] after its first line; sleeps while there is none,
    /// so an idle periodic run does not wake up ten times a second.
    fn write_in_batches(&self) -> ! {
        loop {
            let mut file = self.lock();
            while file.pending.is_empty() {
                file = self.started.wait(file).unwrap_or_else(|e| e.into_inner());
            }
            drop(file);
            std::thread::sleep(BATCH_DELAY);
            self.lock().write_pending();
        }
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "ERROR",
        Level::Warn => "WARNING",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
        Level::Trace => "TRACE",
    }
}

/// The target of the lines a quiet console still shows: a pass's summary and the total.
pub const SUMMARY: &str = "summary";

/// fern's dispatch, fed under one lock so that the console and the file get the lines in the
/// same order (fern feeds its outputs one after the other, and copies log from many threads).
struct InOrder {
    dispatch: Box<dyn Log>,
    order: Mutex<()>,
    file: &'static Batches,
}

impl Log for InOrder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.dispatch.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        self.dispatch.log(record);
    }

    fn flush(&self) {
        self.file.lock().write_pending();
    }
}

/// Whether a line's target (its module path, or [`SUMMARY`]) is one of this project's.
fn ours(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    matches!(
        krate,
        "sync_core" | "versioning" | "oneway" | "twoway" | SUMMARY
    )
}

/// Installs the process-wide logger writing to stderr and to `path` (appended, created if
/// missing). `program` is the tag in brackets, `ONEWAY` or `TWOWAY`.
///
/// Fails if the log file cannot be opened (also when its path leads through another user's
/// link), or if a logger was installed already.
pub fn init(program: &'static str, path: &Path, verbosity: Verbosity) -> io::Result<()> {
    // Resolve now: a relative path must keep naming the same file for the whole run.
    let path = std::path::absolute(path)?;
    let mut file = LogFile {
        path,
        file: None,
        identity: None,
        reported_failure: false,
        pending: String::new(),
    };
    file.open()?;
    // One logger per process, alive until it exits.
    let file: &'static Batches = Box::leak(Box::new(Batches {
        file: Mutex::new(file),
        started: Condvar::new(),
    }));
    let verbose = verbosity == Verbosity::Verbose;
    let most = if verbose {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let discarded = console::discarded();
    let console = fern::Dispatch::new()
        .filter(move |meta| match verbosity {
            _ if discarded => false,
            Verbosity::Quiet => meta.level() <= Level::Warn || meta.target() == SUMMARY,
            Verbosity::Normal | Verbosity::Verbose => true,
        })
        .chain(fern::Output::call(|record| {
            console::line(
                &format!("{}\n", record.args()),
                record.level() <= Level::Warn,
            )
        }));
    let to_file = fern::Dispatch::new().chain(fern::Output::call(|record| file.append(record)));
    let (level, dispatch) = fern::Dispatch::new()
        .format(move |out, message, record| {
            // Formatted once here: both outputs copy the text rather than format it again.
            let line = format!(
                "[{program}][{} - {}] - {message}",
                Stamp::now(),
                level_name(record.level())
            );
            out.finish(format_args!("{line}"))
        })
        .level(most)
        // `-v` is for our own decisions, not the debugging of the crates we use.
        .filter(|meta| meta.level() <= Level::Info || ours(meta.target()))
        .chain(console)
        .chain(to_file)
        .into_log();
    log::set_boxed_logger(Box::new(InOrder {
        dispatch,
        order: Mutex::new(()),
        file,
    }))
    .map_err(io::Error::other)?;
    log::set_max_level(level);
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(|| file.write_in_batches())?;
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        console::flush();
        report(info);
        // `try_lock`: the panic may have happened with the lock held.
        if let Ok(mut file) = file.file.try_lock() {
            file.write_pending();
        }
    }));
    Ok(())
}

/// The local time of a log line, to the second: formatted once per second, not per line (a
/// first copy of 20,000 files logs 21,000 lines in under a second).
struct Stamp(String);

impl Stamp {
    fn now() -> Stamp {
        static LAST: Mutex<Option<(i64, String)>> = Mutex::new(None);
        let now = jiff::Timestamp::now();
        let second = now.as_second();
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((at, text)) if *at == second => Stamp(text.clone()),
            _ => {
                let text = now
                    .to_zoned_datetime(crate::display::local_zone().clone())
                    .strftime("%Y-%m-%d %H:%M:%S")
                    .to_string();
                *last = Some((second, text.clone()));
                Stamp(text)
            }
        }
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Writes the lines still queued for the log file (and the console's, held while a progress
/// line is shown). Called at the end of every pass and before the program exits.
pub fn flush() {
    console::flush();
    log::logger().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_file(path: &Path) -> LogFile {
        let mut file = LogFile {
            path: path.to_path_buf(),
            file: None,
            identity: None,
            reported_failure: false,
            pending: String::new(),
        };
        file.open().unwrap();
        file
    }

    #[test]
    fn lines_wait_for_a_warning_a_full_batch_or_a_flush_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.log");
        let mut file = log_file(&path);
        let read = || std::fs::read_to_string(&path).unwrap();

        file.push("one\n", false);
        file.push("two\n", false);
        assert_eq!(read(), "");
        file.push("warned\n", true);
        assert_eq!(read(), "one\ntwo\nwarned\n");

        let long = "x".repeat(1000) + "\n";
        for _ in 0..BATCH_BYTES / long.len() {
            file.push(&long, false);
        }
        assert_eq!(read().len(), 15);
        file.push(&long, false);
        assert_eq!(
            read().len(),
            15 + long.len() * (BATCH_BYTES / long.len() + 1)
        );

        file.push("last\n", false);
        file.write_pending();
        assert!(read().ends_with("x\nlast\n"));
    }

    #[test]
    fn verbose_lines_are_our_crates_own() {
        assert!(ours("sync_core::pass::mirror"));
        assert!(ours("versioning::pass"));
        assert!(ours("twoway"));
        assert!(ours(SUMMARY));
        assert!(!ours("rayon_core::registry"));
        assert!(!ours("indicatif"));
    }

    #[test]
    fn a_deleted_log_file_is_created_again_with_the_queued_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.log");
        let mut file = log_file(&path);
        file.push("before\n", true);
        std::fs::remove_file(&path).unwrap();
        file.push("after\n", false);
        file.write_pending();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }
}
