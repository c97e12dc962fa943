//! `oneway SOURCE BACKUP`: parse the command line, then hand over to the crates.

use std::path::{Path, PathBuf};

use clap::Parser;
use sync_core::run::flags::{self, CarryFlags, ConsoleFlags, PassFlags};
use sync_core::run::jobs::MirrorJob;
use sync_core::run::passes::run_passes;
use sync_core::tree::meta::set_carry;
use sync_core::{ExitCode, Program, Session, Setup};
use versioning::pass::VersionedJob;
use versioning::retention::{Keep, Retention};
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
    #[command(flatten)]
    pass: PassFlags,
    /// Log file.
    #[arg(short, long, default_value = "oneway.log", value_name = "FILE")]
    log: PathBuf,
    #[command(flatten)]
    console: ConsoleFlags,
    /// Re-hash every file even where the cached hash is still valid.
    #[arg(long)]
    checksum: bool,
    #[command(flatten)]
    carry: CarryFlags,
    /// Keep versions in BACKUP/_0 … instead of a plain mirror (_1 latest, _0 previous).
    #[arg(long, visible_alias = "versioned-backup")]
    versioned: bool,
    #[command(flatten)]
    keep: Keep,
    /// With --versioned: another version store (twoway's other side) whose latest version's
    /// file at the same path, equal in content and metadata, a new version hard-links rather
    /// than copies, where its own previous version has no such file.
    #[arg(long, value_name = "VDIR")]
    link_dest: Option<PathBuf>,
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
    flags::usage(Program::Oneway, message)
}

/// The retention policy the `--keep-*` options give, defaults filled in; they are a usage
/// error without `--versioned`.
fn retention(cli: &Cli) -> Retention {
    if !cli.versioned
        && let Some(flag) = cli.keep.given()
    {
        usage(&format!("{flag} applies only with --versioned"));
    }
    cli.keep.over(Retention::default())
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
    let (cli, _) = flags::parse::<Cli>(Program::Oneway);
    set_carry(cli.carry.wanted());
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
        schedule: cli.pass.schedule(),
        exclude: cli.pass.exclude,
        dry_run: cli.pass.dry_run,
        checksum: cli.checksum,
        force: cli.pass.force,
        one_file_system: cli.pass.one_file_system,
        state_dir: None,
        console: cli.console.console(),
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
