//! The pass loop shared by `oneway` and `twoway`: a pass at start, then one per interval until
//! Ctrl+C or SIGTERM; the summary line after each pass and the operation count at the end.

use std::time::Duration;

use crate::error::{Error, ExitCode, one_line};
use crate::model::PassStats;
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
        console::start_pass();
        let pass = job.pass();
        console::end_pass();
        match pass {
            Ok(stats) => {
                total += stats.operations;
                log_summary(&stats);
                if stats.errors > 0 {
                    exit = ExitCode::PartialFailure;
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
    // A stop by Ctrl+C or SIGTERM is the normal end of a periodic run (SPEC §5).
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

fn log_summary(stats: &PassStats) {
    let conflicts = stats
        .conflicts
        .map(|c| format!(", {c} conflicts"))
        .unwrap_or_default();
    log::info!(
        target: SUMMARY,
        "pass {}: {} operations, {} errors, {} files hashed, {} cached hashes reused{conflicts}",
        if stats.interrupted {
            "stopped"
        } else {
            "finished"
        },
        stats.operations,
        stats.errors,
        stats.hashed,
        stats.cache_hits
    );
}
