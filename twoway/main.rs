//! `twoway SOURCE BACKUP` and `twoway DIR --restore`: parse the command line, run the recovery
//! system's processes, and hand the syncing and restoring over to the crates.

mod recovery;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sync_core::model::PassStats;
use sync_core::plan::reconcile::Policy;
use sync_core::run::console::Console;
use sync_core::run::flags::{self, CarryFlags, ConsoleFlags, PassFlags};
use sync_core::run::jobs::TwowayJob;
use sync_core::run::logging::SUMMARY;
use sync_core::run::passes::{Job, run_passes};
use sync_core::tree::meta::set_carry;
use sync_core::{Error, ExitCode, Program, Session, Setup};
use versioning::restore::{Options, Which, restore};
use versioning::retention::Keep;

use recovery::{Recovery, worse};

/// Who wins a conflict.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConflictPolicy {
    /// The later modification time (SOURCE on a tie).
    Newer,
    /// SOURCE.
    Source,
    /// BACKUP.
    Backup,
}

/// Keep SOURCE and BACKUP in sync both ways with versions of both, or bring a directory back
/// from its versions (`twoway DIR --restore`).
#[derive(Debug, Parser)]
#[command(
    name = "twoway",
    version,
    about = "Keep SOURCE and BACKUP in sync both ways, with a history of both; or list and \
             restore DIR's versions. Without --once it repeats every --interval seconds until \
             Ctrl+C or SIGTERM. Run it from a directory of its own: it keeps its state there \
             (config.json, .info.json, __versions__/).",
    after_help = "Examples (from ~/twoway-state):\n  \
                  twoway ~/Documents /mnt/usb/Documents --interval 300\n  \
                  twoway ~/Documents --versions\n  \
                  twoway ~/Documents --restore --path notes.txt\n  \
                  twoway ~/Documents --restore --version \"2026-12-06 18:00\" --target ~/then\n\n\
                  Exit codes: 0 success, 1 some entries failed (each logged), 2 bad usage or \
                  a refused pass (nothing changed), 3 a --once pass or a restore stopped by Ctrl+C or \
                  SIGTERM before it finished.",
    disable_version_flag = true,
    // A pass of twoway's is followed by its recovery system's snapshots.
    mut_arg("once", |a| a.help(
        "One two-way pass and one snapshot of each side, then exit (without it, twoway runs \
         until stopped)"
    ))
)]
struct Cli {
    /// One side (with --restore: the directory to restore, which may no longer exist).
    source: PathBuf,
    /// The other side.
    backup: Option<PathBuf>,
    #[command(flatten)]
    pass: PassFlags,
    /// Log file.
    #[arg(short, long, default_value = "twoway.log", value_name = "FILE")]
    log: PathBuf,
    /// The recovery system's configuration.
    #[arg(long, default_value = "config.json", value_name = "FILE")]
    config: PathBuf,
    #[command(flatten)]
    console: ConsoleFlags,
    #[command(flatten)]
    carry: CarryFlags,
    /// Which side wins a conflict; the loser is kept as a conflict copy on both sides.
    #[arg(long, value_enum, default_value_t = ConflictPolicy::Newer, value_name = "POLICY")]
    conflict: ConflictPolicy,
    /// Do not start the recovery system (the versioning children).
    #[arg(long)]
    no_recovery: bool,
    #[command(flatten)]
    keep: Keep,
    /// Bring DIR back from its versions.
    #[arg(long)]
    restore: bool,
    /// List DIR's versions, newest first: name, date, files, bytes, what changed.
    #[arg(long, conflicts_with = "restore")]
    versions: bool,
    /// With --restore: which version: latest (default), previous, a name from --versions, or
    /// a date and time (the newest version at or before it, e.g. "2026-12-07 09:15").
    #[arg(long, value_name = "VERSION")]
    version: Option<Which>,
    /// With --restore: only this path of DIR, relative to it (a file, link, node or whole
    /// directory); the rest of DIR is left as it is (repeatable).
    #[arg(long, value_name = "REL")]
    path: Vec<PathBuf>,
    /// With --restore: write into this new or empty directory; DIR is left as it is.
    #[arg(long, value_name = "OTHER")]
    target: Option<PathBuf>,
    /// Print the program's version.
    #[arg(short = 'V', action = clap::ArgAction::Version)]
    print_version: Option<bool>,
}

fn usage_error(message: &str) -> ! {
    flags::usage(Program::Twoway, message)
}

fn parse() -> Cli {
    let (cli, matches) = flags::parse::<Cli>(Program::Twoway);
    if cli.restore || cli.versions {
        refuse_sync_options(&matches);
    }
    cli
}

/// A restore takes none of a sync's options: one given with `--restore` is a usage error, not
/// silently ignored (`--restore --once` would let a user believe the sync ran). Only
/// `--no-recovery` passes: a restore starts no recovery system anyway.
fn refuse_sync_options(matches: &clap::ArgMatches) {
    let sync_only = [
        ("interval", "--interval"),
        ("once", "--once"),
        ("exclude", "--exclude"),
        ("force", "--force"),
        ("one_file_system", "--one-file-system"),
        ("conflict", "--conflict"),
        ("config", "--config"),
        ("keep_last", "--keep-last"),
        ("keep_hourly", "--keep-hourly"),
        ("keep_daily", "--keep-daily"),
        ("keep_weekly", "--keep-weekly"),
    ];
    for (id, flag) in sync_only {
        if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            usage_error(&format!("{flag} applies to a sync, not to --restore"));
        }
    }
}

fn main() {
    let cli = parse();
    set_carry(cli.carry.wanted());
    let code = match (cli.restore || cli.versions, &cli.backup) {
        (true, Some(_)) => usage_error(if cli.restore {
            "--restore takes one directory, not SOURCE and BACKUP"
        } else {
            "--versions takes one directory, not SOURCE and BACKUP"
        }),
        (true, None) if cli.versions => run_versions(&cli),
        (true, None) => run_restore(&cli),
        (false, None) => {
            usage_error("BACKUP is missing: twoway SOURCE BACKUP, or twoway DIR --restore")
        }
        (false, Some(backup)) => {
            if cli.version.is_some() {
                usage_error("--version applies only with --restore (the program's version is -V)");
            }
            if !cli.path.is_empty() {
                usage_error("--path applies only with --restore");
            }
            if cli.target.is_some() {
                usage_error("--target applies only with --restore");
            }
            run_sync(&cli, backup)
        }
    };
    sync_core::run::logging::flush();
    std::process::exit(code.code());
}

/// What the console shows. (The recovery children get none of it: they log to their own files.)
fn console(cli: &Cli) -> Console {
    cli.console.console()
}

fn run_restore(cli: &Cli) -> ExitCode {
    if let Err(err) = sync_core::run::logging::init("TWOWAY", &cli.log, console(cli).verbosity) {
        usage_error(&format!(
            "cannot open log file {}: {err}",
            cli.log.display()
        ));
    }
    // Ctrl+C or SIGTERM stops the copy between two files; DIR is left as it was.
    if let Err(err) = sync_core::signal::install() {
        log::warn!("cannot catch Ctrl+C and SIGTERM: {err}");
    }
    let which = cli.version.clone().unwrap_or(Which::Latest);
    let state_dir = match std::env::current_dir() {
        Ok(d) => d,
        Err(err) => usage_error(&format!("cannot read the current directory: {err}")),
    };
    let options = Options {
        paths: cli.path.clone(),
        target: cli.target.clone(),
        dry_run: cli.pass.dry_run,
    };
    sync_core::run::console::init(console(cli));
    sync_core::run::console::start_pass();
    let restored = restore(&state_dir, &cli.source, which.clone(), &options);
    sync_core::run::console::end_pass();
    match restored {
        Ok(done) => {
            let what = if options.paths.is_empty() {
                String::new()
            } else {
                let paths: Vec<String> = options
                    .paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                format!(" ({} of it)", paths.join(", "))
            };
            let into = if done.dir == done.from {
                String::new()
            } else {
                format!(" into {}", done.dir.display())
            };
            let entries = match done.entries {
                1 => "1 entry".to_string(),
                n => format!("{n} entries"),
            };
            if cli.pass.dry_run {
                log::info!(
                    target: SUMMARY,
                    "dry run: restoring {}{what} from version {which}{into} would change \
                     {entries}; nothing was changed",
                    done.from.display(),
                );
            } else {
                log::info!(
                    target: SUMMARY,
                    "restored {}{what} from version {which}{into} ({entries})",
                    done.from.display(),
                );
                if let Some(kept) = done.kept {
                    if options.paths.is_empty() {
                        log::info!(
                            target: SUMMARY,
                            "what {} held before is kept in {}",
                            done.dir.display(),
                            kept.display()
                        );
                    }
                    log_undo(&done.from, &kept, &options.paths);
                }
            }
            ExitCode::Success
        }
        // A restore that a stop cut short changed nothing, and says so in its error.
        Err(err) if sync_core::signal::stop_requested() => {
            log::error!("{}", sync_core::error::one_line(&err));
            ExitCode::Interrupted
        }
        Err(err) => {
            log::error!("{}", sync_core::error::one_line(&err));
            ExitCode::Usage
        }
    }
}

/// Says how to undo a restore that kept what it replaced in `kept`: restore that (listed by
/// `--versions`), or, where it had to be kept beside DIR (another file system), move it back.
fn log_undo(dir: &Path, kept: &Path, paths: &[PathBuf]) {
    let name = kept
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.starts_with(versioning::store::KEPT_BY_RESTORE)
        || name.starts_with(versioning::store::KEPT_BY_PATH_RESTORE)
    {
        let paths: String = paths
            .iter()
            .map(|p| format!(" --path {}", p.display()))
            .collect();
        log::info!(
            target: SUMMARY,
            "to undo this restore: twoway {} --restore --version {name}{paths}",
            dir.display()
        );
    } else {
        log::info!(target: SUMMARY, "to undo this restore, move {} back", kept.display());
    }
}

/// `twoway DIR --versions`: the listing on standard output; no log file is written.
fn run_versions(cli: &Cli) -> ExitCode {
    if cli.version.is_some() || cli.pass.dry_run || !cli.path.is_empty() || cli.target.is_some() {
        usage_error(
            "--versions lists; --version, --path, --target and --dry-run apply to --restore",
        );
    }
    let state_dir = match std::env::current_dir() {
        Ok(d) => d,
        Err(err) => usage_error(&format!("cannot read the current directory: {err}")),
    };
    let listed = versioning::history::store_of(&state_dir, &cli.source).and_then(|(_, vdir)| {
        let store = versioning::Store::open(&vdir)
            .map_err(|e| Error::Versions(sync_core::error::one_line(&e)))?;
        let listed = versioning::history::list(&store).map_err(Error::Versions)?;
        Ok(versioning::history::render(&vdir, &listed))
    });
    match listed {
        Ok(text) => {
            print!("{text}");
            ExitCode::Success
        }
        Err(err) => usage_error(&sync_core::error::one_line(&err)),
    }
}

fn run_sync(cli: &Cli, backup: &Path) -> ExitCode {
    let keep = cli.keep;
    // Without the recovery system no version is kept: a retention option would be ignored
    // (--dry-run passes: the same command line, tried first).
    if cli.no_recovery
        && let Some(flag) = keep.given()
    {
        usage_error(&format!(
            "{flag} applies to the recovery system, not with --no-recovery"
        ));
    }
    let setup = Setup {
        program: Program::Twoway,
        source: cli.source.clone(),
        backup: backup.to_path_buf(),
        log: cli.log.clone(),
        exclude: cli.pass.exclude.clone(),
        schedule: cli.pass.schedule(),
        dry_run: cli.pass.dry_run,
        checksum: false,
        force: cli.pass.force,
        one_file_system: cli.pass.one_file_system,
        state_dir: Some(PathBuf::from(".")),
        console: console(cli),
    };
    let policy = match cli.conflict {
        ConflictPolicy::Newer => Policy::Newer,
        ConflictPolicy::Source => Policy::Source,
        ConflictPolicy::Backup => Policy::Backup,
    };
    let session = match Session::open(setup) {
        Ok(s) => s,
        Err(err) => usage_error(&sync_core::error::one_line(&err)),
    };
    let schedule = session.schedule;
    let sync = TwowayJob::new(session, policy);
    let recovery = if cli.no_recovery || cli.pass.dry_run {
        None
    } else {
        let opts = &sync.session.opts;
        let state_dir = sync.session.state_dir.as_deref().unwrap_or(Path::new("."));
        let roots = [opts.source.as_path(), opts.backup.as_path()];
        // The versions carry what the sync carries, and leave out what it leaves alone.
        let mut child_args: Vec<String> = cli.carry.given().into_iter().map(String::from).collect();
        if cli.pass.one_file_system {
            child_args.push("--one-file-system".to_string());
        }
        // What the sync leaves alone, the versions leave out too.
        for pattern in &cli.pass.exclude {
            child_args.extend(["--exclude".to_string(), pattern.clone()]);
        }
        match Recovery::prepare(state_dir, &cli.config, roots, keep, child_args) {
            Ok(r) => Some(r),
            Err(err) => {
                log::error!("{}", sync_core::error::one_line(&err));
                return ExitCode::Usage;
            }
        }
    };
    let mut job = WithRecovery {
        sync,
        recovery,
        once: cli.pass.once,
        started: false,
    };
    run_passes(schedule, &mut job)
}

/// A two-way session plus, unless `--no-recovery`, its versioning children.
struct WithRecovery {
    sync: TwowayJob,
    recovery: Option<Recovery>,
    once: bool,
    started: bool,
}

impl Job for WithRecovery {
    fn pass(&mut self) -> Result<PassStats, Error> {
        self.sync.pass()
    }

    fn after_pass(&mut self, _stats: &PassStats) {
        // The children start after the first two-way pass, so their first versions hold the
        // merged state of both sides.
        if !self.once
            && !self.started
            && let Some(r) = self.recovery.as_mut()
        {
            r.start();
            self.started = true;
        }
    }

    fn tick_every(&self) -> Option<Duration> {
        // A child that died is noticed, and restarted, within half a second.
        self.recovery.as_ref().map(|_| Duration::from_millis(500))
    }

    fn tick(&mut self) {
        if let Some(r) = self.recovery.as_mut() {
            r.watch();
        }
    }

    fn finish(&mut self, exit: ExitCode) -> ExitCode {
        let Some(r) = self.recovery.as_mut() else {
            return exit;
        };
        if self.once {
            if exit == ExitCode::Usage || exit == ExitCode::Interrupted {
                return exit;
            }
            // A stop after the pass: the snapshots it asks for are not taken.
            if sync_core::signal::stop_requested() {
                log::info!("recovery: stopped before the snapshots of both sides were taken");
                return ExitCode::Interrupted;
            }
            return worse(exit, r.snapshot_once());
        }
        r.stop();
        exit
    }
}
