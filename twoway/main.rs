//! `twoway SOURCE BACKUP`: parse the command line, then hand over to `sync_core`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sync_core::ExitCode;
use sync_core::driver::{Schedule, run_passes};
use sync_core::reconcile::Policy;
use sync_core::twoway::{TwowayArgs, TwowaySession};

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

/// Keep SOURCE and BACKUP in sync both ways, again at every interval.
#[derive(Debug, Parser)]
#[command(name = "twoway", version, about)]
struct Cli {
    /// One side (must exist).
    source: PathBuf,
    /// The other side (must exist).
    backup: PathBuf,
    /// Seconds between passes (at least 1).
    #[arg(short, long, default_value_t = 3600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    interval: u64,
    /// Log file.
    #[arg(short, long, default_value = "twoway.log", value_name = "FILE")]
    log: PathBuf,
    /// One pass, then exit.
    #[arg(long)]
    once: bool,
    /// Log what a pass would do; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Leave matching paths alone on both sides (repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Allow a pass that the safety checks would refuse.
    #[arg(long)]
    force: bool,
    /// Which side wins a conflict; the loser is kept as a conflict copy on both sides.
    #[arg(long, value_enum, default_value_t = ConflictPolicy::Newer, value_name = "POLICY")]
    conflict: ConflictPolicy,
    /// Do not start the recovery system (the versioning children).
    #[arg(long)]
    no_recovery: bool,
}

fn usage_error(message: &str) -> ! {
    eprintln!("twoway: {message}");
    std::process::exit(ExitCode::Usage.code());
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            // clap's text spans several lines; the contract is one line, exit 2.
            let text = err.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            usage_error(message.join(" ").trim_start_matches("error: "));
        }
        Err(err) => err.exit(),
    };
    if !cli.no_recovery {
        usage_error("the recovery system is not built yet; run with --no-recovery");
    }
    let args = TwowayArgs {
        source: cli.source,
        backup: cli.backup,
        log: cli.log,
        dry_run: cli.dry_run,
        exclude: cli.exclude,
        force: cli.force,
        policy: match cli.conflict {
            ConflictPolicy::Newer => Policy::Newer,
            ConflictPolicy::Source => Policy::Source,
            ConflictPolicy::Backup => Policy::Backup,
        },
    };
    let mut session = match TwowaySession::open(&args, std::path::Path::new(".")) {
        Ok(s) => s,
        Err(err) => usage_error(&sync_core::error::one_line(&err)),
    };
    let schedule = Schedule {
        once: cli.once,
        interval: Duration::from_secs(cli.interval),
    };
    std::process::exit(run_passes(schedule, &mut session).code());
}
