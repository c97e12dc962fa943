//! Errors that stop a run before or instead of a pass, and the exit codes of SPEC §5.

use std::io;
use std::path::PathBuf;

/// The process exit codes, in one place (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Every pass completed without a failed entry (or a periodic run was stopped by a signal).
    Success = 0,
    /// A pass finished, but some entries failed; each was logged.
    PartialFailure = 1,
    /// Bad usage, configuration or paths; nothing was changed.
    Usage = 2,
    /// A `--once` pass (mirror, versioned or two-way) or a restore was stopped by Ctrl+C or
    /// SIGTERM before it finished: what it did is whole (every file old or new, a restore
    /// leaves DIR as it was), but not everything was done. A periodic run stopped by a signal
    /// exits 0 instead, since a signal is how it is meant to end. (3: the next free code; rsync
    /// uses 20 for the same, but one small number after the others keeps the table simple, and
    /// 128 + N would read as "killed by signal N" to a shell.)
    Interrupted = 3,
}

impl ExitCode {
    /// The numeric code handed to the operating system.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// A fault that ends the run with exit code 2: nothing was changed on disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A root given on the command line does not exist.
    #[error("{role} {path} does not exist")]
    Missing {
        /// `SOURCE` or `BACKUP`.
        role: &'static str,
        /// The path as given.
        path: PathBuf,
    },
    /// A root given on the command line is not a directory.
    #[error("{role} {path} is not a directory")]
    NotADirectory {
        /// `SOURCE` or `BACKUP`.
        role: &'static str,
        /// The path as given.
        path: PathBuf,
    },
    /// A root could not be inspected.
    #[error("cannot access {role} {path}")]
    Inaccessible {
        /// `SOURCE` or `BACKUP`.
        role: &'static str,
        /// The path as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Both roots resolve to one directory.
    #[error("SOURCE {source_dir} and BACKUP {backup} are the same directory")]
    SameDirectory {
        /// Canonical SOURCE.
        source_dir: PathBuf,
        /// Canonical BACKUP.
        backup: PathBuf,
    },
    /// One root lies inside the other, so a pass would copy into itself.
    #[error("{inner_role} {inner} is inside {outer_role} {outer}")]
    Nested {
        /// The contained root's role.
        inner_role: &'static str,
        /// The contained root (canonical).
        inner: PathBuf,
        /// The containing root's role.
        outer_role: &'static str,
        /// The containing root (canonical).
        outer: PathBuf,
    },
    /// Another process holds the lock.
    #[error("{path} is locked by another running instance (lock file {lock}); stop it first")]
    Locked {
        /// The locked directory.
        path: PathBuf,
        /// The lock file, in the running user's lock directory.
        lock: PathBuf,
    },
    /// The lock could not be taken for another reason.
    #[error("cannot lock {path}")]
    Lock {
        /// The directory to lock.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// There is no place for the lock files of a user other than root.
    #[error("no directory for lock files: set HOME (or XDG_CACHE_HOME)")]
    NoLockDir,
    /// A directory or file of the program's own could be changed by another user, or leads
    /// through another user's link (issue 20); nothing was changed.
    #[error("refusing to use {what} {path}: {why}")]
    Untrusted {
        /// What it is: "the state directory", "the cache directory", "the lock directory".
        what: &'static str,
        /// The path as the program found it.
        path: PathBuf,
        /// What is wrong and how to mend it, naming the path concerned.
        why: String,
    },
    /// The log file cannot be opened for appending.
    #[error("cannot open log file {path}")]
    LogFile {
        /// The log file as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A safety check of SPEC §8 refused the pass.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The root of SOURCE could not be listed, so nothing can be decided.
    #[error("cannot list {role} {path}")]
    ListRoot {
        /// `SOURCE` or `BACKUP`.
        role: &'static str,
        /// The root.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The versions kept in BACKUP cannot be used as they are (a damaged manifest, a name
    /// taken by something else); the message names the file.
    #[error("{0}")]
    Versions(String),
    /// A state file (archive, configuration) exists but cannot be read.
    #[error("cannot read {path}")]
    StateUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A state file is damaged or foreign; it is left as it is.
    #[error("{path} is damaged: {what}; nothing was changed (move it away to start afresh)")]
    StateDamaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The directory twoway runs from (where its state lives) is inside a root.
    #[error(
        "the state directory {state} (the current directory) is inside {role} {root}; run twoway from a directory outside both"
    )]
    StateInsideRoot {
        /// The state directory.
        state: PathBuf,
        /// `SOURCE` or `BACKUP`.
        role: &'static str,
        /// The root.
        root: PathBuf,
    },
    /// An `--exclude` pattern is not a valid glob.
    #[error("invalid --exclude pattern {pattern:?}: {message}")]
    BadExclude {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A pass that the safety checks refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `role` (SOURCE, BACKUP) at `root` holds nothing, while `reference` holds `held` entries.
    EmptySide {
        /// SOURCE or BACKUP.
        role: &'static str,
        /// Where it is.
        root: PathBuf,
        /// What holds them: "BACKUP", "the last sync", "the latest version".
        reference: &'static str,
        /// How many entries.
        held: u64,
    },
    /// The pass would delete `removed` of the `total` files of `role` at `root`.
    MassDeletion {
        /// SOURCE, BACKUP or the latest version.
        role: &'static str,
        /// Where it is.
        root: PathBuf,
        /// Files the pass would delete (or leave out of a new version).
        removed: u64,
        /// Files there now.
        total: u64,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused: ")?;
        match self {
            Refusal::EmptySide {
                role,
                root,
                reference,
                held,
            } => write!(
                f,
                "{role} {} is empty while {reference} holds {held} entries (an unmounted drive \
                 looks like this)",
                root.display()
            )?,
            Refusal::MassDeletion {
                role,
                root,
                removed,
                total,
            } => write!(
                f,
                "the pass would delete {removed} of the {total} files of {role} {} (more than \
                 half)",
                root.display()
            )?,
        }
        f.write_str("; run with --force if this is intended")
    }
}

impl std::error::Error for Refusal {}

/// Formats an error and its causes on one line, the way the binaries print it.
pub fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Folds a usage message that spans several lines (clap's, for one) into the single line the
/// binaries print: the text up to its first blank line, without the leading `error: `.
pub fn usage_line(text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    parts.join(" ").trim_start_matches("error: ").to_string()
}
