//! Log lines of SPEC §5 on the console and in a log file that is created again if deleted.
//!
//! Format: `[ONEWAY][2026-11-25 16:44:07 - INFO] - copied docs/a.txt`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The log file, reopened when the path no longer names the file we hold open.
struct LogFile {
    path: PathBuf,
    file: Option<File>,
    identity: Option<(u64, u64)>,
    reported_failure: bool,
}

impl LogFile {
    fn open(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
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

    fn write_line(&mut self, line: &str) {
        if (self.file.is_none() || self.is_stale())
            && let Err(err) = self.open()
        {
            if !self.reported_failure {
                self.reported_failure = true;
                eprintln!("cannot write log file {}: {err}", self.path.display());
            }
            self.file = None;
            return;
        }
        self.reported_failure = false;
        if let Some(file) = self.file.as_mut() {
            // One write per line, so lines of concurrent threads never interleave.
            let _ = file.write_all(line.as_bytes());
        }
    }
}

struct Logger {
    program: &'static str,
    file: Mutex<LogFile>,
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

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let stamp = jiff::ZonedDateTime::now().strftime("%Y-%m-%d %H:%M:%S");
        let line = format!(
            "[{}][{} - {}] - {}\n",
            self.program,
            stamp,
            level_name(record.level()),
            record.args()
        );
        // One lock around both writes, so the console and the file list lines in one order.
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = io::stderr().lock().write_all(line.as_bytes());
        file.write_line(&line);
    }

    fn flush(&self) {}
}

/// Installs the process-wide logger writing to stderr and to `path` (appended, created if
/// missing). `program` is the tag in brackets, `ONEWAY` or `TWOWAY`.
///
/// Fails if the log file cannot be opened, or if a logger was installed already.
pub fn init(program: &'static str, path: &Path, level: LevelFilter) -> io::Result<()> {
    // Resolve now: a relative path must keep naming the same file for the whole run.
    let path = std::path::absolute(path)?;
    let mut file = LogFile {
        path,
        file: None,
        identity: None,
        reported_failure: false,
    };
    file.open()?;
    let logger = Logger {
        program,
        file: Mutex::new(file),
    };
    log::set_boxed_logger(Box::new(logger)).map_err(io::Error::other)?;
    log::set_max_level(level);
    Ok(())
}
