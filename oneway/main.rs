//! `oneway SOURCE BACKUP`: parse the command line, then hand over to the crates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use sync_core::run::console::Console;
use sync_core::run::jobs::MirrorJob;
use sync_core::run::passes::{Schedule, run_passes};
use sync_core::tree::meta::{Wanted, set_carry};
use sync_core::{ExitCode, Program, Session, Setup};
use versioning::pass::VersionedJob;
use versioning::retention::Retention;
use versioning::share::LinkDest;

/// Mirror SOURCE into BACKUP, again at every interval.
#[derive(Debug, Parser)]
#[command(
    name = "oneway",
    version,
    about = "Make BACKUP an exact copy of SOURCE (or, with --versioned, keep dated versions of \
             it). Without --once it repeats every --interval seconds until Ctrl+C or SIGTERM.",
    after_help = "Examples:\n  oneway ~/Documents /mnt/usb/Documents --once\n  \
                  oneway ~/Documents /mnt/usb/Documents-versions --versioned --interval 600\n  \
                  oneway --versions /mnt/usb/Documents-versions\n\n\
                  Exit codes: 0 success, 1 some entries failed (each logged), 2 bad usage or \
                  a refused pass (nothing changed), 3 a --once pass stopped by Ctrl+C or \
                  SIGTERM before it finished."
)]
struct Cli {
    /// The directory to back up.
    #[arg(required_unless_present = "versions")]
    source: Option<PathBuf>,
    /// The directory that becomes an exact copy of SOURCE (must exist).
    #[arg(required_unless_present = "versions")]
    backup: Option<PathBuf>,
    /// List the versions that `--versioned` keeps in BACKUP, newest first (name, date,
    /// files, bytes, what changed), and exit.
    #[arg(long, value_name = "BACKUP", conflicts_with_all = [
        "source", "backup", "interval", "log", "versioned", "keep_last", "keep_hourly",
        "keep_daily", "keep_weekly", "link_dest", "once", "quiet", "verbose", "progress",
        "no_progress", "dry_run", "exclude", "checksum", "force", "one_file_system", "no_owner",
        "no_group", "no_xattrs",
    ])]
    versions: Option<PathBuf>,
    /// Seconds between passes (at least 1); the first pass runs at once.
    #[arg(short, long, default_value_t = 3600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    interval: u64,
    /// Log file.
    #[arg(short, long, default_value = "oneway.log", value_name = "FILE")]
    log: PathBuf,
    /// Keep versions in BACKUP/_0 … instead of a plain mirror (_1 latest, _0 previous).
    #[arg(long, visible_alias = "versioned-backup")]
    versioned: bool,
    /// With --versioned: the newest versions kept as _0 … _{N-1}, the latest last (at least
    /// 2, default 2).
    #[arg(long, visible_alias = "keep", value_name = "N",
          value_parser = clap::value_parser!(u32).range(2..1000))]
    keep_last: Option<u32>,
    /// With --versioned: also keep the newest version of each of the last N hours that have
    /// one (default 24).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..100_000))]
    keep_hourly: Option<u32>,
    /// With --versioned: and of each of the last N days (default 9: what stood at the end of
    /// a day stays at least a week after it is deleted).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..100_000))]
    keep_daily: Option<u32>,
    /// With --versioned: and of each of the last N weeks, Monday to Sunday (default 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..100_000))]
    keep_weekly: Option<u32>,
    /// With --versioned: another version store (twoway's other side) whose latest version's
    /// file at the same path, equal in content and metadata, a new version hard-links rather
    /// than copies, where its own previous version has no such file.
    #[arg(long, value_name = "VDIR")]
    link_dest: Option<PathBuf>,
    /// One pass, then exit (without it, the program runs until stopped).
    #[arg(long)]
    once: bool,
    /// Console: only warnings, errors and the summary (the log file still gets every line).
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// Also log why each path was decided (console and log file).
    #[arg(short, long)]
    verbose: bool,
    /// Show the progress line even where stderr is not a terminal, or with -q.
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,
    /// Never show the progress line (default: shown where stderr is a terminal).
    #[arg(long, overrides_with = "progress")]
    no_progress: bool,
    /// Log what a pass would do; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Leave matching paths alone on both sides (repeatable). A pattern without `/` matches a
    /// name at any depth; one with `/` matches the path from the root.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Re-hash every file even where the cached hash is still valid.
    #[arg(long)]
    checksum: bool,
    /// Allow a pass that the safety checks would refuse.
    #[arg(long)]
    force: bool,
    /// Leave alone what is below a mount point inside a root, on both sides (as rsync's
    /// -x): another file system mounted there is neither copied nor deleted.
    #[arg(short = 'x', long)]
    one_file_system: bool,
    /// Do not carry owners: copies are owned by the user running this (as without root).
    #[arg(long)]
    no_owner: bool,
    /// Do not carry groups.
    #[arg(long)]
    no_group: bool,
    /// Do not carry extended attributes and ACLs.
    #[arg(long)]
    no_xattrs: bool,
}

/// The store `--link-dest` names, held from now on; a usage error without `--versioned` or
/// if it is no version store (checked before anything is opened or written).
fn link_dest(cli: &Cli) -> Option<LinkDest> {
    let path = cli.link_dest.as_ref()?;
    if !cli.versioned {
        usage("--link-dest applies only with --versioned");
    }
    match LinkDest::open(path, cli.backup.as_deref().unwrap_or(Path::new(""))) {
        Ok(dest) => Some(dest),
        Err(err) => usage(&sync_core::error::one_line(&err)),
    }
}

fn usage(message: &str) -> ! {
    eprintln!("oneway: {message}");
    std::process::exit(ExitCode::Usage.code());
}

/// The retention policy the `--keep-*` options give, defaults filled in; they are a usage
/// error without `--versioned`.
fn retention(cli: &Cli) -> Retention {
    let given = [
        (cli.keep_last, "--keep-last"),
        (cli.keep_hourly, "--keep-hourly"),
        (cli.keep_daily, "--keep-daily"),
        (cli.keep_weekly, "--keep-weekly"),
    ];
    if !cli.versioned
        && let Some((_, flag)) = given.iter().find(|(n, _)| n.is_some())
    {
        usage(&format!("{flag} applies only with --versioned"));
    }
    let default = Retention::default();
    Retention {
        last: cli.keep_last.unwrap_or(default.last),
        hourly: cli.keep_hourly.unwrap_or(default.hourly),
        daily: cli.keep_daily.unwrap_or(default.daily),
        weekly: cli.keep_weekly.unwrap_or(default.weekly),
    }
}

/// `oneway --versions BACKUP`: the listing on standard output.
fn list_versions(store: &Path) -> ExitCode {
    let listed = versioning::Store::open(store)
        .map_err(|e| sync_core::error::one_line(&e))
        .and_then(|s| versioning::history::list(&s));
    match listed {
        Ok(listed) if listed.is_empty() => {
            usage(&format!(
                "{} holds no versions made by oneway --versioned",
                store.display()
            ));
        }
        Ok(listed) => {
            print!("{}", versioning::history::render(store, &listed));
            ExitCode::Success
        }
        Err(err) => {
            eprintln!("oneway: {err}");
            ExitCode::Usage
        }
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            // clap's text spans several lines; the contract is one line, exit 2.
            eprintln!(
                "oneway: {}",
                sync_core::error::usage_line(&err.render().to_string())
            );
            std::process::exit(ExitCode::Usage.code());
        }
        Err(err) => err.exit(),
    };
    set_carry(Wanted {
        owner: !cli.no_owner,
        group: !cli.no_group,
        xattrs: !cli.no_xattrs,
    });
    if let Some(store) = &cli.versions {
        std::process::exit(list_versions(store).code());
    }
    let retention = retention(&cli);
    let link_dest = link_dest(&cli);
    let setup = Setup {
        program: Program::Oneway,
        source: cli.source.unwrap_or_default(),
        backup: cli.backup.unwrap_or_default(),
        log: cli.log,
        exclude: cli.exclude,
        schedule: Schedule {
            once: cli.once,
            interval: Duration::from_secs(cli.interval),
        },
        dry_run: cli.dry_run,
        checksum: cli.checksum,
        force: cli.force,
        one_file_system: cli.one_file_system,
        state_dir: None,
        console: Console::from_flags(cli.quiet, cli.verbose, cli.progress, cli.no_progress),
    };
    let code = match Session::open(setup) {
        Ok(session) => {
            let schedule = session.schedule;
            if cli.versioned {
                run_passes(
                    schedule,
                    &mut VersionedJob {
                        session,
                        retention,
                        link_dest,
                    },
                )
            } else {
                run_passes(schedule, &mut MirrorJob(session))
            }
        }
        Err(err) => {
            eprintln!("oneway: {}", sync_core::error::one_line(&err));
            ExitCode::Usage
        }
    };
    sync_core::run::logging::flush();
    std::process::exit(code.code());
}
