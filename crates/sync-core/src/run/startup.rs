//! The start-up both programs share, in one order: check the roots (and twoway's state
//! directory), build the filter, check the cache directory, take the locks, start logging,
//! install the stop flag, open the hash cache. The state and cache directories must be beyond
//! the reach of other users ([`trust::untouchable`]): a root run reads and writes there.
//!
//! What it returns, a [`Session`], holds all of it until the run ends; the jobs of
//! [`crate::run::jobs`] (and the versioned one of the `versioning` crate) run passes on it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::hash::{self, DirCache};
use crate::pass::PassOptions;
use crate::run::console::Console;
use crate::run::lock::{Lock, LockDir};
use crate::run::passes::Schedule;
use crate::run::{logging, places, roots, trust};
use crate::scan::Filter;
use crate::signal;
use crate::tree::LocalTree;

/// Which program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `oneway`: SOURCE is read, BACKUP written.
    Oneway,
    /// `twoway`: both sides are read and written; state lives in the working directory.
    Twoway,
}

impl Program {
    /// Its name, as it is run.
    pub fn name(self) -> &'static str {
        match self {
            Program::Oneway => "oneway",
            Program::Twoway => "twoway",
        }
    }

    /// The tag of its log lines.
    pub fn tag(self) -> &'static str {
        match self {
            Program::Oneway => "ONEWAY",
            Program::Twoway => "TWOWAY",
        }
    }
}

/// What the command line says of where and how to work.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Which program.
    pub program: Program,
    /// SOURCE as given.
    pub source: PathBuf,
    /// BACKUP as given.
    pub backup: PathBuf,
    /// The log file.
    pub log: PathBuf,
    /// `--exclude` globs.
    pub exclude: Vec<String>,
    /// When passes run.
    pub schedule: Schedule,
    /// Log what a pass would do; change nothing.
    pub dry_run: bool,
    /// Ignore the hash cache.
    pub checksum: bool,
    /// Let the refusals of SPEC §8 through.
    pub force: bool,
    /// Leave alone what is below a mount point inside a root.
    pub one_file_system: bool,
    /// twoway's state directory (where it runs from), which must lie outside both roots.
    pub state_dir: Option<PathBuf>,
    /// What the console shows: `-q`, `-v`, the progress line.
    pub console: Console,
}

/// A checked, locked pair of roots with logging and the hash cache set up.
pub struct Session {
    /// What every pass works on (canonical roots, the filter) and how.
    pub opts: PassOptions,
    /// When passes run.
    pub schedule: Schedule,
    /// twoway's state directory, canonical.
    pub state_dir: Option<PathBuf>,
    /// Where a two-way pair's archive lives, whatever directory twoway runs from (see
    /// [`places::sync_state_dir`]); `None` where there is none outside both roots (the state
    /// directory then holds it, as earlier releases did).
    pub pair_state: Option<PathBuf>,
    /// The pair's hash cache.
    pub cache: DirCache,
    _locks: Vec<Lock>,
}

impl Session {
    /// Checks the roots (and the state directory, which must lie outside both and be beyond
    /// other users' reach), builds the filter, checks the cache directory, takes the locks
    /// (oneway: on BACKUP; twoway: on both roots, by directory and by path, so the pair is held
    /// whatever directory twoway runs from), starts logging, installs the stop flag and opens
    /// the hash cache.
    ///
    /// Fails, having changed nothing, on bad paths, a bad pattern, a state or cache directory
    /// that another user could change, a lock directory that is not the user's own, a held
    /// lock or an unusable log file.
    pub fn open(setup: Setup) -> Result<Session, Error> {
        let (source, backup) = roots::validate(&setup.source, &setup.backup)?;
        let state_dir = match &setup.state_dir {
            Some(dir) => Some(checked_state_dir(dir, &source, &backup)?),
            None => None,
        };
        let mut filter = Filter::new(&setup.exclude)?;
        check_cache_dir(&source, &backup)?;
        let lock_dir = LockDir::open()?;
        let locks: Vec<Lock> = match setup.program {
            Program::Oneway => vec![lock_dir.lock_dir(&backup)?],
            Program::Twoway => {
                // twoway leaves our temporary names alone on both sides: a user's file may
                // look like one, and only names it noted itself are removed.
                filter.skip_temp_files();
                // Path locks hold the pair even while a root is missing (what a restore
                // checks); directory locks keep a oneway off either root.
                vec![
                    lock_dir.lock_path(&source)?,
                    lock_dir.lock_path(&backup)?,
                    lock_dir.lock_dir(&source)?,
                    lock_dir.lock_dir(&backup)?,
                ]
            }
        };
        logging::init(setup.program.tag(), &setup.log, setup.console.verbosity).map_err(
            |source| Error::LogFile {
                path: setup.log.clone(),
                source,
            },
        )?;
        crate::run::console::init(setup.console);
        // Our own log file and lock files, if they lie in a root (a user backing up their
        // home with the cache in it), are neither copied nor deleted.
        for root in [&source, &backup] {
            for own in [setup.log.as_path(), lock_dir.path()] {
                if let Some(rel) = roots::relative_inside(root, own) {
                    filter.exclude_exact(rel);
                }
            }
        }
        if let Err(err) = signal::install() {
            log::warn!("cannot handle Ctrl+C: {err}");
        }
        let cache = hash::open(&source, &backup, setup.program == Program::Twoway);
        if let Some(dir) = &state_dir {
            remove_stale_state_temps(dir);
        }
        let pair_state = match setup.program {
            Program::Twoway => pair_state_dir(&source, &backup)?,
            Program::Oneway => None,
        };
        if let Some(dir) = &pair_state {
            remove_stale_state_temps(dir);
        }
        let every = if setup.schedule.once {
            String::new()
        } else {
            format!(" every {} s", setup.schedule.interval.as_secs())
        };
        match setup.program {
            Program::Oneway => log::info!(
                "backing up {} into {}{every}",
                source.display(),
                backup.display()
            ),
            Program::Twoway => log::info!(
                "syncing {} and {}{every}",
                source.display(),
                backup.display()
            ),
        }
        let open = |role, path: &PathBuf| {
            LocalTree::open(path).map_err(|source| Error::Inaccessible {
                role,
                path: path.clone(),
                source,
            })
        };
        let trees = [open("SOURCE", &source)?, open("BACKUP", &backup)?];
        Ok(Session {
            opts: PassOptions {
                source,
                backup,
                trees,
                filter,
                dry_run: setup.dry_run,
                checksum: setup.checksum,
                force: setup.force,
                one_file_system: setup.one_file_system,
            },
            schedule: setup.schedule,
            state_dir,
            pair_state,
            cache,
            _locks: locks,
        })
    }
}

/// The canonical state directory, which must lie outside both roots and be beyond the reach
/// of other users: twoway reads what it finds there (`.info.json` names the directories a
/// restore writes) and writes its archive there.
fn checked_state_dir(dir: &Path, source: &Path, backup: &Path) -> Result<PathBuf, Error> {
    let state_dir = std::fs::canonicalize(dir).map_err(|source| Error::StateUnreadable {
        path: dir.to_path_buf(),
        source,
    })?;
    for (role, root) in [("SOURCE", source), ("BACKUP", backup)] {
        if state_dir.starts_with(root) {
            return Err(Error::StateInsideRoot {
                state: state_dir,
                role,
                root: root.to_path_buf(),
            });
        }
    }
    trust::untouchable(&state_dir).map_err(|d| d.about("the state directory", &state_dir))?;
    Ok(state_dir)
}

/// The sync-state directory ([`places::sync_state_dir`]), checked as the state directory is
/// (the archive there decides what a two-way pass deletes), resolved; it is made when an
/// archive is first written there. `None` where there is none, or it lies in a root.
fn pair_state_dir(source: &Path, backup: &Path) -> Result<Option<PathBuf>, Error> {
    let Some(dir) = places::sync_state_dir() else {
        return Ok(None);
    };
    let resolved = places::absolute_dir(&dir).unwrap_or_else(|_| dir.clone());
    if resolved.starts_with(source) || resolved.starts_with(backup) {
        return Ok(None);
    }
    trust::untouchable_or_missing(&dir).map_err(|d| d.about("the sync-state directory", &dir))?;
    Ok(Some(resolved))
}

/// Refuses a cache directory that another user could change (the hash cache decides which
/// files are copied), unless it lies in a root, where the hash cache is not kept anyway.
fn check_cache_dir(source: &Path, backup: &Path) -> Result<(), Error> {
    let Some(dir) = places::cache_dir() else {
        return Ok(());
    };
    let resolved = places::absolute_dir(&dir).unwrap_or_else(|_| dir.clone());
    if resolved.starts_with(source) || resolved.starts_with(backup) {
        return Ok(());
    }
    trust::untouchable_or_missing(&dir).map_err(|d| d.about("the cache directory", &dir))
}

/// Removes what a killed write of a state file left in the state directory. Several pairs
/// may share the directory and write at any moment, so only files older than a minute (far
/// longer than any such write takes) are taken for leftovers.
fn remove_stale_state_temps(state_dir: &Path) {
    let Ok(listing) = std::fs::read_dir(state_dir) else {
        return;
    };
    let minute_ago = SystemTime::now() - Duration::from_secs(60);
    for entry in listing.flatten() {
        let ours = entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(crate::state::text::TEMP_PREFIX.as_bytes());
        let stale = entry
            .metadata()
            .is_ok_and(|m| m.is_file() && m.modified().is_ok_and(|t| t < minute_ago));
        if ours && stale {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => log::info!("removed leftover {}", entry.path().display()),
                Err(err) => log::warn!("cannot remove leftover {}: {err}", entry.path().display()),
            }
        }
    }
}
