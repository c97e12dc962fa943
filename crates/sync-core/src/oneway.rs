//! The `oneway` run: checks, lock, logging, then passes (a mirror, or a versioned snapshot)
//! at an interval until stopped.

use std::path::PathBuf;
use std::time::Duration;

use crate::cache::{self, HashCache};
use crate::driver::{Job, Schedule, run_passes};
use crate::error::{Error, ExitCode};
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
    pass: impl FnMut(&PassOptions, &mut HashCache) -> Result<PassStats, Error>,
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

    let cache = match cache::default_location(&source, &backup) {
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

    let mut job = OnewayJob { opts, cache, pass };
    Ok(run_passes(
        Schedule {
            once: args.once,
            interval: args.interval,
        },
        &mut job,
    ))
}

struct OnewayJob<F> {
    opts: PassOptions,
    cache: HashCache,
    pass: F,
}

impl<F: FnMut(&PassOptions, &mut HashCache) -> Result<PassStats, Error>> Job for OnewayJob<F> {
    fn pass(&mut self) -> Result<PassStats, Error> {
        (self.pass)(&self.opts, &mut self.cache)
    }

    fn after_pass(&mut self, _stats: &PassStats) {
        if !self.opts.dry_run
            && let Err(err) = self.cache.save()
        {
            log::warn!("cannot save the hash cache: {err}");
        }
    }
}
