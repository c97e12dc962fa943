//! The console: log lines on stderr, each written whole, and, where stderr is a terminal (or
//! with `--progress`), one live progress line for each pass ([`start_pass`], [`end_pass`]).
//!
//! The progress line shows the files and bytes the pass's copies have done (from
//! [`crate::progress`], which the applier updates), of the pass's total where it is known
//! before copying starts (so the percentage never goes backwards), the rate, the time left and
//! the file being copied; a thread redraws it every `TICK`. A first copy into an empty
//! BACKUP plans and copies directory by directory: its total is not known until the end, so
//! its line shows what is known (files and bytes done, rate, file) and no percentage.
//!
//! Log lines appear above the line and never tear it: while it is shown, the console's lines
//! are held and written in one go, the line cleared before and drawn again after (indicatif's
//! `suspend`), at every tick, and at once for a warning or an error. Redrawing after every
//! line would cost a first copy of 20,000 small files 20,000 redraws. Without a progress line
//! nothing but the log lines is written: no escape sequence.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use crate::display::Escaped;
use crate::progress::{self, Snapshot};

/// How much the console gets; the log file gets every operation line whatever this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    /// `-q`: warnings, errors and the summary (lines logged with the target [`SUMMARY`](crate::run::logging::SUMMARY)).
    Quiet,
    /// Every operation line (INFO and up).
    #[default]
    Normal,
    /// `-v`: also why each path was decided (DEBUG), on the console and in the log file.
    Verbose,
}

/// How often the progress line is redrawn and held log lines written.
const TICK: Duration = Duration::from_millis(200);

/// Held console lines are written once they reach this much, whatever the tick.
const HELD_BYTES: usize = 64 * 1024;

/// Whether passes show a progress line (decided once, at start: [`init`]).
static WANTED: AtomicBool = AtomicBool::new(false);

/// Which pass's line is shown; a ticker whose pass has ended stops.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The progress line being shown, and the log lines held while it is.
static SHOWN: Mutex<Option<Shown>> = Mutex::new(None);

struct Shown {
    bar: ProgressBar,
    held: String,
    generation: u64,
    /// The style in use: `Some(bytes total is known)` once set.
    style: Option<Style>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// No total (scanning, or a first copy that streams).
    Open,
    /// A total in bytes.
    Bytes,
    /// A total of files that are all empty.
    Files,
}

impl Shown {
    fn write_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        self.bar.suspend(|| {
            let _ = io::stderr().lock().write_all(held.as_bytes());
        });
    }

    /// Redraws the line from what the copies have done. Only what changed is set (each
    /// setter may draw); a tick draws when nothing did, so the rate and time left move.
    fn update(&mut self, done: Snapshot) {
        let style = match done.total {
            None => Style::Open,
            Some((_, 0)) => Style::Files,
            Some(_) => Style::Bytes,
        };
        let (prefix, length, position) = match done.total {
            Some((files, bytes)) if style == Style::Bytes => (
                format!("{}/{files} files", done.files),
                Some(bytes),
                done.bytes.min(bytes),
            ),
            Some((files, _)) => (
                format!("{}/{files} files", done.files),
                Some(files),
                done.files.min(files),
            ),
            None => (format!("{} files", done.files), None, done.bytes),
        };
        let message = match &done.current {
            Some(rel) => Escaped(rel).to_string(),
            None if done.files == 0 && done.total.is_none() => "scanning and comparing".to_string(),
            None => String::new(),
        };
        let mut drawn = false;
        if self.style != Some(style) {
            let template = match style {
                Style::Open => {
                    "{spinner} {bytes} copied, {prefix}, {binary_bytes_per_sec}, {elapsed}  {wide_msg}"
                }
                Style::Bytes => {
                    "{percent:>3}% {bytes}/{total_bytes}, {prefix}, {binary_bytes_per_sec}, {eta} left  {wide_msg}"
                }
                Style::Files => "{percent:>3}% {prefix}, {eta} left  {wide_msg}",
            };
            if let Ok(s) = ProgressStyle::with_template(template) {
                self.bar.set_style(s);
            }
            self.style = Some(style);
        }
        if self.bar.prefix() != prefix {
            self.bar.set_prefix(prefix);
            drawn = true;
        }
        if self.bar.message() != message {
            self.bar.set_message(message);
            drawn = true;
        }
        if let Some(length) = length
            && self.bar.length() != Some(length)
        {
            self.bar.set_length(length);
            drawn = true;
        }
        if self.bar.position() != position {
            self.bar.set_position(position);
            drawn = true;
        }
        if !drawn {
            self.bar.tick();
        }
    }
}

fn shown() -> std::sync::MutexGuard<'static, Option<Shown>> {
    SHOWN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decides, once, whether passes show a progress line: as `--progress`/`--no-progress` say,
/// else where stderr is a terminal, unless quiet.
pub fn init(console: Console) {
    let wanted = console
        .progress
        .unwrap_or_else(|| console.verbosity != Verbosity::Quiet && io::stderr().is_terminal());
    WANTED.store(wanted, Ordering::Relaxed);
}

/// Shows the progress line of a pass that starts now (if wanted).
pub fn start_pass() {
    if !WANTED.load(Ordering::Relaxed) {
        return;
    }
    // indicatif draws only on a terminal; `--progress` elsewhere draws through our own.
    let target = if io::stderr().is_terminal() {
        ProgressDrawTarget::stderr_with_hz(10)
    } else {
        ProgressDrawTarget::term_like_with_hz(Box::new(RawStderr), 10)
    };
    let bar = ProgressBar::with_draw_target(None, target);
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
    progress::watch(true);
    let mut shown = Shown {
        bar,
        held: String::new(),
        generation,
        style: None,
    };
    shown.update(progress::snapshot());
    *self::shown() = Some(shown);
    let ticker = std::thread::Builder::new()
        .name("progress".into())
        .spawn(move || {
            loop {
                std::thread::sleep(TICK);
                let mut guard = self::shown();
                let Some(shown) = guard.as_mut().filter(|s| s.generation == generation) else {
                    return;
                };
                shown.write_held();
                shown.update(progress::snapshot());
            }
        });
    if ticker.is_err() {
        // No ticker, no line: the lines go out as they come.
        end_pass();
    }
}

/// Writes the held lines and takes the progress line away (if one is shown).
pub fn end_pass() {
    let taken = self::shown().take();
    if let Some(mut shown) = taken {
        shown.write_held();
        shown.bar.finish_and_clear();
        progress::watch(false);
    }
}

/// Whether stderr is `/dev/null` (a run from cron, or under a benchmark's harness): lines
/// written there go nowhere, and writing them costs a system call each (a first copy of
/// 20,000 files logs 21,000 lines: about 2% of its time). The log file gets them all anyway.
pub fn discarded() -> bool {
    use std::os::fd::AsFd;
    let Ok(stat) = rustix::fs::fstat(io::stderr().as_fd()) else {
        return false;
    };
    rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::CharacterDevice
        && (
            rustix::fs::major(stat.st_rdev),
            rustix::fs::minor(stat.st_rdev),
        ) == (1, 3)
}

/// Writes one log line (ending in a newline) to the console. `urgent` lines (warnings and
/// errors) are never held back.
pub fn line(text: &str, urgent: bool) {
    let mut guard = shown();
    match guard.as_mut() {
        Some(shown) => {
            shown.held.push_str(text);
            if urgent || shown.held.len() >= HELD_BYTES {
                shown.write_held();
            }
        }
        None => {
            // One write per line, so that lines never interleave with another writer's.
            let _ = io::stderr().lock().write_all(text.as_bytes());
        }
    }
}

/// Writes the lines held above the progress line. (`try_lock`: called from the panic hook,
/// which may run with the lock held.)
pub fn flush() {
    if let Ok(mut guard) = SHOWN.try_lock()
        && let Some(shown) = guard.as_mut()
    {
        shown.write_held();
    }
}

/// stderr as a terminal, for `--progress` where it is none (indicatif draws only on a
/// terminal): the same escape sequences, written as they come.
#[derive(Debug)]
struct RawStderr;

impl RawStderr {
    fn write(&self, text: &str) -> io::Result<()> {
        io::stderr().lock().write_all(text.as_bytes())
    }

    fn escape(&self, n: usize, code: char) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.write(&format!("\x1b[{n}{code}"))
    }
}

impl TermLike for RawStderr {
    fn width(&self) -> u16 {
        std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100)
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.escape(n, 'A')
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.escape(n, 'B')
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.escape(n, 'C')
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.escape(n, 'D')
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write(&format!("{s}\n"))
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        self.write(s)
    }

    fn clear_line(&self) -> io::Result<()> {
        self.write("\r\x1b[2K")
    }

    fn flush(&self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// What the command line asks of the console.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console {
    /// How many log lines the console gets.
    pub verbosity: Verbosity,
    /// `--progress` (`Some(true)`) or `--no-progress` (`Some(false)`); `None`: a progress
    /// line where stderr is a terminal, unless quiet.
    pub progress: Option<bool>,
}

impl Console {
    /// From the flags both programs take: `-q`, `-v`, `--progress`, `--no-progress` (the last
    /// of the two given wins; clap enforces it).
    pub fn from_flags(quiet: bool, verbose: bool, progress: bool, no_progress: bool) -> Console {
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
