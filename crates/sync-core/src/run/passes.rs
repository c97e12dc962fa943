//! The pass loop shared by `oneway` and `twoway`: a pass at start, then one per interval until
//! Ctrl+C or SIGTERM; the summary after each pass and the operation count at the end.
//!
//! The summary is two lines, logged with the target [`SUMMARY`]: what the pass changed, per
//! direction (or the version it made), then how it ended, e.g.
//!
//! ```text
//! into BACKUP: 3 created, 2 replaced, 1 removed, 1 metadata updated, 2.5 KiB (2560 bytes) copied
//! pass finished in 40 ms: 7 operations, 0 errors, 5 files hashed (3 while copying), 2 cached hashes reused
//! ```

use std::time::{Duration, Instant};

use crate::error::{Error, ExitCode, one_line};
use crate::model::{Changes, PassKind, PassStats, Side};
use crate::run::console;
use crate::run::logging::SUMMARY;
use crate::signal;

/// When passes run.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// One pass, then exit.
    pub once: bool,
    /// Time between passes.
    pub interval: Duration,
}

/// What the loop drives.
pub trait Job {
    /// Runs one pass. An error means the pass was refused or could not start (nothing
    /// changed): the first one ends the run with exit 2, later ones are retried.
    fn pass(&mut self) -> Result<PassStats, Error>;

    /// Called after every pass that ran (saving caches, starting helpers).
    fn after_pass(&mut self, _stats: &PassStats) {}

    /// How often [`Job::tick`] is called while waiting for the next pass; `None` (the
    /// default) for never, so that the wait wakes nothing until the next pass or a stop.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Called every [`Job::tick_every`] while waiting for the next pass.
    fn tick(&mut self) {}

    /// Called once at the end, after the last pass; may turn the exit code worse.
    fn finish(&mut self, exit: ExitCode) -> ExitCode {
        exit
    }
}

/// Runs `job` on `schedule` and returns the exit code of SPEC §5.
///
/// The log file gets each pass's lines when the pass ends; what is logged after the last one
/// is the caller's to flush before the process exits ([`crate::run::logging::flush`]).
pub fn run_passes(schedule: Schedule, job: &mut impl Job) -> ExitCode {
    let mut total = 0u64;
    let mut exit = ExitCode::Success;
    let mut first = true;
    loop {
        let started = Instant::now();
        console::start_pass();
        let pass = job.pass();
        console::end_pass();
        match pass {
            Ok(stats) => {
                total += stats.operations;
                log_summary(&stats, started.elapsed());
                if stats.errors > 0 && exit == ExitCode::Success {
                    exit = ExitCode::PartialFailure;
                }
                // A one-shot pass that a signal cut short says so (it is not a success, and
                // nothing failed): its own code, whatever else happened.
                if stats.interrupted {
                    exit = ExitCode::Interrupted;
                }
                job.after_pass(&stats);
            }
            Err(err) => {
                log::error!("{}", one_line(&err));
                if first || schedule.once {
                    log::info!(target: SUMMARY, "Total number of operations: {total}");
                    return job.finish(ExitCode::Usage);
                }
            }
        }
        // Between passes the log file holds every line of the pass.
        crate::run::logging::flush();
        first = false;
        if schedule.once || signal::stop_requested() || sleep(schedule.interval, job) {
            break;
        }
    }
    log::info!(target: SUMMARY, "Total number of operations: {total}");
    // A stop by Ctrl+C or SIGTERM is the normal end of a periodic run (SPEC §5): it exits 0,
    // also when the stop came in the middle of a pass. A periodic run is only ever ended by a
    // signal, and where that lands is chance; what the cut pass left undone, the next run does,
    // and its summary line says "pass stopped". A service manager stopping it must not see a
    // failure. Only `--once`, which is meant to end by itself, reports the cut (exit 3).
    let exit = if schedule.once {
        exit
    } else {
        ExitCode::Success
    };
    job.finish(exit)
}

/// Waits for the next pass, ticking the job; true if a stop was requested.
fn sleep(interval: Duration, job: &mut impl Job) -> bool {
    let tick = job.tick_every().unwrap_or(interval);
    let mut left = interval;
    while !left.is_zero() {
        let step = left.min(tick);
        if signal::sleep_unless_stopped(step) {
            return true;
        }
        left -= step;
        job.tick();
    }
    signal::stop_requested()
}

/// Logs the two summary lines of a pass that took `took`.
fn log_summary(stats: &PassStats, took: Duration) {
    log::info!(target: SUMMARY, "{}", changes_line(stats));
    log::info!(target: SUMMARY, "{}", totals_line(stats, took));
}

/// What a pass changed: per direction, or the version it made.
fn changes_line(stats: &PassStats) -> String {
    let to = |side: Side| changes(&stats.changes[side as usize]);
    match stats.kind {
        PassKind::Mirror => format!("into BACKUP: {}", to(Side::Backup)),
        PassKind::Twoway => format!(
            "to SOURCE: {}; to BACKUP: {}",
            to(Side::Source),
            to(Side::Backup)
        ),
        PassKind::Versioned => match &stats.version {
            Some(v) => format!(
                "version {} made: {} ({} hard-linked, {} copied), {} copied",
                v.name,
                count(v.files, "file", "files"),
                v.linked,
                v.copied,
                size(stats.changes[Side::Backup as usize].bytes)
            ),
            None => "no new version".to_string(),
        },
    }
}

/// `3 created, 2 replaced, 1 removed, 1 metadata updated, 2.5 KiB (2560 bytes) copied`.
fn changes(c: &Changes) -> String {
    format!(
        "{} created, {} replaced, {} removed, {} metadata updated, {} copied",
        c.created,
        c.replaced,
        c.removed,
        c.metadata,
        size(c.bytes)
    )
}

/// How a pass ended, how long it took, and what it did and read, in numbers.
fn totals_line(stats: &PassStats, took: Duration) -> String {
    let ended = if stats.interrupted {
        format!("pass stopped after {}", duration(took))
    } else {
        format!("pass finished in {}", duration(took))
    };
    let conflicts = stats
        .conflicts
        .map(|c| format!(", {} kept", count(c, "conflict", "conflicts")))
        .unwrap_or_default();
    let by_copies = match stats.hashed_by_copies {
        0 => String::new(),
        n => format!(" ({n} while copying)"),
    };
    format!(
        "{ended}: {}, {}{conflicts}, {}{by_copies}, {}",
        count(stats.operations, "operation", "operations"),
        count(stats.errors, "error", "errors"),
        count(stats.hashed, "file hashed", "files hashed"),
        count(
            stats.cache_hits,
            "cached hash reused",
            "cached hashes reused"
        ),
    )
}

/// `1 file`, `2 files`.
fn count(n: u64, one: &str, more: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { more })
}

/// `512 bytes`, `2.5 KiB (2560 bytes)`: readable, and exact.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return count(bytes, "byte", "bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {} ({bytes} bytes)", UNITS[unit])
}

/// `420 ms`, `4.20 s`, `12.3 s`, `2 min 05 s`, `1 h 02 min`.
fn duration(took: Duration) -> String {
    let secs = took.as_secs();
    match secs {
        0 => format!("{} ms", took.as_millis()),
        1..10 => format!("{:.2} s", took.as_secs_f64()),
        10..60 => format!("{:.1} s", took.as_secs_f64()),
        60..3600 => format!("{} min {:02} s", secs / 60, secs % 60),
        _ => format!("{} h {:02} min", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VersionMade;

    #[test]
    fn a_mirror_summary_gives_its_direction_and_its_numbers() {
        let mut stats = PassStats {
            operations: 7,
            hashed: 5,
            hashed_by_copies: 3,
            cache_hits: 1,
            ..PassStats::default()
        };
        stats.changes[Side::Backup as usize] = Changes {
            created: 3,
            replaced: 2,
            removed: 1,
            metadata: 1,
            bytes: 2560,
        };
        assert_eq!(
            changes_line(&stats),
            "into BACKUP: 3 created, 2 replaced, 1 removed, 1 metadata updated, \
             2.5 KiB (2560 bytes) copied"
        );
        assert_eq!(
            totals_line(&stats, Duration::from_millis(420)),
            "pass finished in 420 ms: 7 operations, 0 errors, 5 files hashed (3 while copying), \
             1 cached hash reused"
        );
    }

    #[test]
    fn a_twoway_summary_gives_both_directions_and_its_conflicts() {
        let mut stats = PassStats {
            kind: PassKind::Twoway,
            operations: 1,
            errors: 1,
            conflicts: Some(1),
            interrupted: true,
            ..PassStats::default()
        };
        stats.changes[Side::Source as usize].created = 1;
        stats.changes[Side::Source as usize].bytes = 1;
        assert_eq!(
            changes_line(&stats),
            "to SOURCE: 1 created, 0 replaced, 0 removed, 0 metadata updated, 1 byte copied; \
             to BACKUP: 0 created, 0 replaced, 0 removed, 0 metadata updated, 0 bytes copied"
        );
        assert_eq!(
            totals_line(&stats, Duration::from_secs(125)),
            "pass stopped after 2 min 05 s: 1 operation, 1 error, 1 conflict kept, \
             0 files hashed, 0 cached hashes reused"
        );
    }

    #[test]
    fn a_versioned_summary_names_the_version_made() {
        let mut stats = PassStats {
            kind: PassKind::Versioned,
            ..PassStats::default()
        };
        assert_eq!(changes_line(&stats), "no new version");
        stats.version = Some(VersionMade {
            name: "_2".into(),
            files: 12,
            linked: 10,
            copied: 2,
        });
        stats.changes[Side::Backup as usize].bytes = 3 << 30;
        assert_eq!(
            changes_line(&stats),
            "version _2 made: 12 files (10 hard-linked, 2 copied), 3.0 GiB (3221225472 bytes) \
             copied"
        );
    }
}
