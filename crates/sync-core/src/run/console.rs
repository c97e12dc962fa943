//! The console: log lines on stderr, each written whole.

use std::io::{self, Write};

/// Writes one log line (ending in a newline) to the console. `urgent` lines (warnings and
/// errors) are never held back.
pub fn line(text: &str, _urgent: bool) {
    // One write per line, so that lines never interleave with another writer's.
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

/// Writes what the console holds back.
pub fn flush() {}

/// What the command line asks of the console.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console {
    /// How many log lines the console gets.
    pub verbosity: crate::run::logging::Verbosity,
    /// `--progress` (`Some(true)`) or `--no-progress` (`Some(false)`); `None`: a progress
    /// line where stderr is a terminal, unless quiet.
    pub progress: Option<bool>,
}

impl Console {
    /// From the flags both programs take: `-q`, `-v`, `--progress`, `--no-progress` (the last
    /// of the two given wins; clap enforces it).
    pub fn from_flags(quiet: bool, verbose: bool, progress: bool, no_progress: bool) -> Console {
        use crate::run::logging::Verbosity;
        Console {
            verbosity: match (quiet, verbose) {
                (true, _) => Verbosity::Quiet,
                (false, true) => Verbosity::Verbose,
                (false, false) => Verbosity::Normal,
            },
            progress: match (progress, no_progress) {
                (true, _) => Some(true),
                (false, true) => Some(false),
                (false, false) => None,
            },
        }
    }
}
