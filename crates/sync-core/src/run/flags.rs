//! The command-line options both programs take, declared once: each program's own options
//! flatten these groups in (clap), so a flag has one name, one range and one help text in
//! both. Also how both read their command line: a usage error is one line and exit 2.

use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches};

use crate::error::ExitCode;
use crate::run::console::Console;
use crate::run::passes::Schedule;
use crate::run::startup::Program;
use crate::tree::meta::Wanted;

/// When passes run and what they leave alone.
#[derive(Debug, Clone, Args)]
pub struct PassFlags {
    /// Seconds between passes (at least 1); the first pass runs at once.
    #[arg(short, long, default_value_t = 3600, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    pub interval: u64,
    /// One pass, then exit (without it, the program runs until stopped).
    #[arg(long)]
    pub once: bool,
    /// Log what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Leave matching paths alone on both sides (repeatable). A pattern without `/` matches a
    /// name at any depth; one with `/` matches the path from the root.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Allow a pass that the safety checks would refuse.
    #[arg(long)]
    pub force: bool,
    /// Leave alone what is below a mount point inside a root, on both sides (as rsync's
    /// -x): another file system mounted there is neither copied nor deleted.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
}

impl PassFlags {
    /// When passes run.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            once: self.once,
            interval: Duration::from_secs(self.interval),
        }
    }
}

/// What the console shows.
#[derive(Debug, Clone, Args)]
pub struct ConsoleFlags {
    /// Console: only warnings, errors and the summary (the log file still gets every line).
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also log why each path was decided (console and log file).
    #[arg(short, long)]
    pub verbose: bool,
    /// Show the progress line even where stderr is not a terminal, or with -q.
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    /// Never show the progress line (default: shown where stderr is a terminal).
    #[arg(long, overrides_with = "progress")]
    pub no_progress: bool,
}

impl ConsoleFlags {
    /// The console these flags ask for.
    pub fn console(&self) -> Console {
        Console::from_flags(self.quiet, self.verbose, self.progress, self.no_progress)
    }
}

/// What a copy carries beyond content, mode and times.
#[derive(Debug, Clone, Args)]
pub struct CarryFlags {
    /// Do not carry owners: copies are owned by the user running this (as without root).
    #[arg(long)]
    pub no_owner: bool,
    /// Do not carry groups.
    #[arg(long)]
    pub no_group: bool,
    /// Do not carry extended attributes and ACLs.
    #[arg(long)]
    pub no_xattrs: bool,
}

impl CarryFlags {
    /// What these flags leave carried.
    pub fn wanted(&self) -> Wanted {
        Wanted {
            owner: !self.no_owner,
            group: !self.no_group,
            xattrs: !self.no_xattrs,
        }
    }

    /// The flags given, as they are written (for a child that must carry alike).
    pub fn given(&self) -> Vec<&'static str> {
        [
            (self.no_owner, "--no-owner"),
            (self.no_group, "--no-group"),
            (self.no_xattrs, "--no-xattrs"),
        ]
        .into_iter()
        .filter_map(|(on, flag)| on.then_some(flag))
        .collect()
    }
}

/// Reads `program`'s command line into `C`, with the matches (which say where each value came
/// from). `--help` and `--version` print and exit 0; anything else clap refuses is a usage
/// error: one line, exit 2.
pub fn parse<C: CommandFactory + FromArgMatches>(program: Program) -> (C, clap::ArgMatches) {
    let parsed = C::command()
        .try_get_matches()
        .and_then(|matches| C::from_arg_matches(&matches).map(|c| (c, matches)));
    match parsed {
        Ok(parsed) => parsed,
        // clap's text spans several lines; the contract is one line, exit 2.
        Err(err) if err.use_stderr() => usage(
            program,
            &crate::error::usage_line(&err.render().to_string()),
        ),
        Err(err) => err.exit(),
    }
}

/// Ends the program on a usage error: `program: message` on stderr, exit 2.
pub fn usage(program: Program, message: &str) -> ! {
    eprintln!("{}: {message}", program.name());
    std::process::exit(ExitCode::Usage.code());
}
