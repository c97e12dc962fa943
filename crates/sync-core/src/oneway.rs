//! The `oneway` run: checks, lock, logging, then passes (a mirror, or a versioned snapshot)
//! at an interval until stopped.

use std::path::PathBuf;
use std::time::Duration;

use crate::cache::{self, HashCache};
use crate::error::{Error, ExitCode, one_line};
use crate::lock::DirLock;
use crate::mirror::{PassOptions, PassStats};
use crate::scan::Filter;
use crate::{logging, roots, signal};

/// The `oneway` command line, parsed.
#[derive(Debug, Clone)]
pub struct OnewayArgs {
    /// The directory to back up.
    pub source: PathBuf,
    /// The mirror.
    pub backup: PathBuf,
    /// Time between passes.
    pub interval: Duration,
    /// Log file.
    pub log: PathBuf,
    /// One pass, then exit.
    pub once: bool,
    /// Log what a pass would do; change nothing.
    pub dry_run: bool,
    /// Globs left alone on both sides.
    pub exclude: Vec<String>,
    /// Ignore the hash cache.
    pub checksum: bool,
    /// Let the refusals of SPEC §8 through.
    pub force: bool,
}

/// Runs `oneway`: validates the roots, takes the lock on BACKUP, sets up logging, then runs
/// `pass` once (`--once`) or at every interval until Ctrl+C or SIGTERM.
///
/// Fails, having changed nothing, on bad paths, a bad pattern, a held lock or an unusable
/// log file. A refused first pass is logged and gives [`ExitCode::Usage`]; later refused
/// passes in periodic mode are logged and retried at the next interval.
pub fn run(
    args: &OnewayArgs,
    mut pass: impl FnMut(&PassOptions, &mut HashCache) -> Result<PassStats, Error>,
) -> Result<ExitCode, Error> {
    let (source, backup) = roots::validate(&args.source, &args.backup)?;
    let mut filter = Filter::new(&args.exclude)?;
    let _lock = DirLock::acquire(&backup)?;
    logging::init("ONEWAY", &args.log, log::LevelFilter::Info).map_err(|source| {
        Error::LogFile {
            path: args.log.clone(),
            source,
        }
    })?;
    // Our own log file, if the user put it in a root, is neither mirrored nor deleted.
    for root in [&source, &backup] {
        if let Some(rel) = roots::relative_inside(root, &args.log) {
            filter.exclude_exact(rel);
        }
    }
    if let Err(err) = signal::install() {
        log::warn!("cannot handle Ctrl+C: {err}");
    }

    let mut cache = match cache::default_location(&source, &backup) {
        Some((path, tag)) => HashCache::load(path, tag),
        None => {
            log::warn!(
                "no cache directory outside SOURCE and BACKUP: hashes are kept in memory only"
            );
            HashCache::in_memory()
        }
    };
    let opts = PassOptions {
        source,
        backup,
        filter,
        dry_run: args.dry_run,
        checksum: args.checksum,
        force: args.force,
    };
    log::info!(
        "backing up {} into {}{}",
        opts.source.display(),
        opts.backup.display(),
        if args.once {
            String::new()
        } else {
            format!(" every {} s", args.interval.as_secs())
        }
    );

    let mut total = 0u64;
    let mut exit = ExitCode::Success;
    let mut first = true;
    loop {
        match pass(&opts, &mut cache) {
            Ok(stats) => {
                total += stats.operations;
                log_summary(&stats);
                if stats.errors > 0 {
                    exit = ExitCode::PartialFailure;
                }
                if !opts.dry_run
                    && let Err(err) = cache.save()
                {
                    log::warn!("cannot save the hash cache: {err}");
                }
            }
            Err(err) => {
                log::error!("{}", one_line(&err));
                if first || args.once {
                    log::info!("Total number of operations: {total}");
                    return Ok(ExitCode::Usage);
                }
            }
        }
        first = false;
        if args.once || signal::stop_requested() || signal::sleep_unless_stopped(args.interval) {
            break;
        }
    }
    log::info!("Total number of operations: {total}");
    // A stop by Ctrl+C or SIGTERM is a normal end of a periodic run (SPEC §5).
    Ok(if args.once { exit } else { ExitCode::Success })
}

fn log_summary(stats: &PassStats) {
    log::info!(
        "pass {}: {} operations, {} errors, {} files hashed, {} cached hashes reused",
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
