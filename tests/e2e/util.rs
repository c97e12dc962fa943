//! Helpers for the end-to-end tests: a fixture holding SOURCE, BACKUP, an XDG cache directory and a
//! log file in one fresh temporary directory; running the real `oneway` or `twoway` binary with a
//! timeout (in the foreground, or in the background for periodic mode); building trees; snapshots
//! of trees that never follow symlinks, compared with a readable difference; parsing the log.
//!
//! `unsafe` is forbidden workspace-wide, so signals are sent with the shell's `kill` builtin and
//! FIFOs are made with coreutils' `mkfifo` rather than through `libc`.

use std::collections::BTreeMap;
use std::error::Error;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use filetime::FileTime;

/// What every test returns.
pub type TestResult = Result<(), Box<dyn Error>>;
/// A fallible helper's result.
pub type Res<T> = Result<T, Box<dyn Error>>;

/// `ensure!(cond, "format", args..)`: return a [`Failure`] with that message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::util::fail(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;

/// A test failure whose message is printed as it is: the test harness shows a returned error
/// with `{:?}`, which for a plain `String` would quote it and turn every newline into `\n`.
pub struct Failure(String);

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Failure {}

/// A boxed [`Failure`] with this message.
pub fn fail(message: impl Into<String>) -> Box<dyn Error> {
    Box::new(Failure(message.into()))
}

/// Adds what was being done, and to which path, to an I/O error.
pub trait Context<T> {
    /// `what` is e.g. "read /tmp/x/dst/a.txt".
    fn context(self, what: impl FnOnce() -> String) -> Res<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Res<T> {
        self.map_err(|e| fail(format!("cannot {}: {e}", what())))
    }
}

/// The one-way binary under test.
pub const ONEWAY: &str = env!("CARGO_BIN_EXE_oneway");
/// The two-way binary under test.
pub const TWOWAY: &str = env!("CARGO_BIN_EXE_twoway");
/// How long a foreground run may take before it is killed and the test fails. Generous: it only
/// catches hangs, it never decides an outcome.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for a background process to reach a state (first pass done, exit, ...).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Prefix of the temporary files `oneway` writes before renaming them into place.
pub const TMP_PREFIX: &str = ".oneway-tmp-";
/// The unprivileged user and group (`nobody`/`nogroup`).
pub const NOBODY: u32 = 65534;

/// A mtime used by tests that set times explicitly (2020-09-13).
pub const T0: i64 = 1_600_000_000;

/// The time zone `twoway` runs in: a POSIX rule for UTC+05:30 with no daylight saving, so that
/// "local time" (conflict-copy names) is known to the tests and differs from UTC.
pub const TWOWAY_TZ: &str = "<+0530>-05:30";
/// The offset of [`TWOWAY_TZ`] from UTC, in seconds.
pub const TWOWAY_TZ_OFFSET: i64 = 5 * 3600 + 30 * 60;

/// Which binary a fixture runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `oneway`, the mirror.
    Oneway,
    /// `twoway`, the two-way sync.
    Twoway,
}

impl Program {
    /// `oneway` or `twoway`.
    pub fn name(self) -> &'static str {
        match self {
            Program::Oneway => "oneway",
            Program::Twoway => "twoway",
        }
    }

    /// The path of the built binary.
    pub fn bin(self) -> &'static str {
        match self {
            Program::Oneway => ONEWAY,
            Program::Twoway => TWOWAY,
        }
    }

    /// The tag that opens each of its log lines: `[ONEWAY]` or `[TWOWAY]`.
    pub fn tag(self) -> &'static str {
        match self {
            Program::Oneway => "[ONEWAY]",
            Program::Twoway => "[TWOWAY]",
        }
    }

    /// The name of its default log file: `oneway.log` or `twoway.log`.
    pub fn default_log(self) -> &'static str {
        match self {
            Program::Oneway => "oneway.log",
            Program::Twoway => "twoway.log",
        }
    }
}

/// A fresh temporary directory holding `src/`, `dst/`, `cache/` (the XDG cache home) and the path
/// of the log file `oneway.log` (`twoway.log` for [`Env::twoway`]). The binary always runs with
/// the temporary directory as its current directory (for twoway: its state directory, where the
/// archive lives), `XDG_CACHE_HOME` set to `cache/` and `--log LOG`.
pub struct Env {
    _dir: tempfile::TempDir,
    /// The temporary directory.
    pub root: PathBuf,
    /// SOURCE.
    pub src: PathBuf,
    /// BACKUP.
    pub dst: PathBuf,
    /// `XDG_CACHE_HOME`, outside SOURCE and BACKUP.
    pub cache: PathBuf,
    /// `XDG_STATE_HOME` (made by the first twoway run): twoway keeps its archives in
    /// `oneway/` there.
    pub state_home: PathBuf,
    /// The log file given with `--log`.
    pub log: PathBuf,
    /// The binary this fixture runs.
    pub program: Program,
    bin: PathBuf,
    wrapper: Vec<OsString>,
    /// Arguments given to every run right after `--log LOG`.
    fixed_args: Vec<OsString>,
    /// Environment variables set for every run.
    vars: Vec<(OsString, OsString)>,
}

impl Env {
    /// A new `oneway` fixture with empty `src/`, `dst/` and `cache/`.
    pub fn new() -> Res<Env> {
        Env::for_program(Program::Oneway)
    }

    /// A new `twoway` fixture with empty `src/`, `dst/` and `cache/`, the log in `twoway.log`.
    /// Every run gets `--no-recovery` (the recovery system is tested elsewhere) and runs in the
    /// time zone [`TWOWAY_TZ`].
    pub fn twoway() -> Res<Env> {
        let mut env = Env::for_program(Program::Twoway)?;
        env.fixed_args.push("--no-recovery".into());
        env.vars.push(("TZ".into(), TWOWAY_TZ.into()));
        Ok(env)
    }

    /// A new fixture for `program` with empty `src/`, `dst/` and `cache/`.
    pub fn for_program(program: Program) -> Res<Env> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().to_path_buf();
        let env = Env {
            src: root.join("src"),
            dst: root.join("dst"),
            cache: root.join("cache"),
            state_home: root.join("state-home"),
            log: root.join(program.default_log()),
            root,
            _dir: dir,
            program,
            bin: PathBuf::from(program.bin()),
            wrapper: Vec::new(),
            fixed_args: Vec::new(),
            vars: Vec::new(),
        };
        for d in [&env.src, &env.dst, &env.cache] {
            fs::create_dir(d).context(|| format!("create {}", d.display()))?;
        }
        Ok(env)
    }

    /// From now on run the binary as uid/gid 65534 through `setpriv`, so that permission bits
    /// are enforced (root reads everything). Call it after building the trees: it hands the whole
    /// temporary directory (trees, cache, log location) to that user, and copies the binary into a
    /// 0755 directory there, since the build directory may not be reachable by that user.
    /// When the tests already run unprivileged, nothing needs to change.
    pub fn run_as_nobody(&mut self) -> TestResult {
        if fs::metadata(&self.root)?.uid() != 0 {
            return Ok(());
        }
        let probe = Command::new("setpriv").arg("--version").output();
        ensure!(
            probe.as_ref().is_ok_and(|o| o.status.success()),
            "setpriv (util-linux) is needed to run {} as an unprivileged user: {probe:?}",
            self.program.name()
        );
        for ancestor in self.root.ancestors().skip(1) {
            let mode = fs::metadata(ancestor)?.mode();
            ensure!(
                mode & 0o001 != 0,
                "{} (mode {:o}) cannot be traversed by uid {NOBODY}: set TMPDIR to a directory \
                 everyone can reach",
                ancestor.display(),
                mode & 0o7777
            );
        }
        let bindir = self.root.join("bin");
        fs::create_dir(&bindir)?;
        let bin = bindir.join(self.program.name());
        let built = self.program.bin();
        // Copied by another process: a copy written here would be open for writing in this
        // process while another test thread forks, and the child's inherited descriptor makes
        // `exec` of the copy fail with "Text file busy".
        let copied = Command::new("cp").arg(built).arg(&bin).status();
        ensure!(
            copied.as_ref().is_ok_and(|s| s.success()),
            "cannot copy {built} to {}: {copied:?}",
            bin.display()
        );
        chmod(&bindir, 0o755)?;
        chmod(&bin, 0o755)?;
        chown_tree(&self.root, NOBODY, NOBODY)?;
        self.bin = bin;
        self.wrapper = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]
        .map(OsString::from)
        .to_vec();
        Ok(())
    }

    /// The command line `PROGRAM --log LOG [--no-recovery] ARGS...`, ready to run in the fixture.
    pub fn command(&self, args: &[&dyn AsRef<OsStr>]) -> Command {
        let mut cmd = self.command_without_log();
        cmd.arg("--log").arg(&self.log).args(&self.fixed_args);
        for a in args {
            cmd.arg(a.as_ref());
        }
        cmd
    }

    /// The bare command (no arguments at all, not even `--no-recovery`), ready to run in the
    /// fixture.
    pub fn command_without_log(&self) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.current_dir(&self.root)
            .env("XDG_CACHE_HOME", &self.cache)
            .env("XDG_STATE_HOME", &self.state_home)
            .env_remove("RUST_LOG")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `PROGRAM --log LOG ARGS...` to its end (killed after [`RUN_TIMEOUT`]).
    pub fn run(&self, args: &[&dyn AsRef<OsStr>]) -> Res<Run> {
        self.run_timeout(args, RUN_TIMEOUT)
    }

    /// Runs `PROGRAM --log LOG ARGS...`, killing it and failing after `timeout`.
    pub fn run_timeout(&self, args: &[&dyn AsRef<OsStr>], timeout: Duration) -> Res<Run> {
        run_program_command(self.program, self.command(args), &self.log, timeout)
    }

    /// Runs `oneway --log LOG ARGS...` to its end (killed after [`RUN_TIMEOUT`]); the same as
    /// [`Env::run`].
    pub fn oneway(&self, args: &[&dyn AsRef<OsStr>]) -> Res<Run> {
        self.run(args)
    }

    /// Runs `oneway --log LOG ARGS...`, killing it and failing after `timeout`; the same as
    /// [`Env::run_timeout`].
    pub fn oneway_timeout(&self, args: &[&dyn AsRef<OsStr>], timeout: Duration) -> Res<Run> {
        self.run_timeout(args, timeout)
    }

    /// Runs `PROGRAM --log LOG --once EXTRA... SOURCE BACKUP`.
    pub fn once(&self, extra: &[&dyn AsRef<OsStr>]) -> Res<Run> {
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"--once"];
        args.extend_from_slice(extra);
        args.push(&self.src);
        args.push(&self.dst);
        self.run(&args)
    }

    /// Runs `cmd` (built with [`Env::command`] or [`Env::command_without_log`], then changed) to
    /// its end; `log` is the log file it writes.
    pub fn run_command(&self, cmd: Command, log: &Path) -> Res<Run> {
        run_program_command(self.program, cmd, log, RUN_TIMEOUT)
    }

    /// Starts `PROGRAM --log LOG ARGS...` in the background; its stdout and stderr go to files in
    /// the fixture. The process is killed when the returned handle is dropped.
    pub fn spawn(&self, args: &[&dyn AsRef<OsStr>]) -> Res<Background> {
        self.spawn_command(self.command(args))
    }

    /// Starts `cmd` (built with [`Env::command`], then changed) in the background, as
    /// [`Env::spawn`] does.
    pub fn spawn_command(&self, mut cmd: Command) -> Res<Background> {
        let n = fs::read_dir(&self.root)?.count();
        let stderr_path = self.root.join(format!("background-{n}.stderr"));
        cmd.stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&stderr_path)?));
        let child = cmd.spawn()?;
        Ok(Background {
            child,
            stderr_path,
            program: self.program,
        })
    }

    /// The whole log file as text ("" while it does not exist).
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A snapshot of everything in the fixture that a run must leave alone when it refuses:
    /// SOURCE, BACKUP, the twoway archive and whatever else the test put there, without the log
    /// file, the cache and the stderr files of background runs.
    pub fn snapshot_all(&self) -> Res<Snapshot> {
        let log_name = self.log.file_name().map(PathBuf::from);
        let mut snap = snapshot(&self.root)?;
        snap.retain(|rel, _| {
            !(rel.starts_with("oneway.log")
                || log_name.as_ref().is_some_and(|l| rel.starts_with(l))
                || rel.starts_with("cache")
                || rel.to_string_lossy().starts_with("background-"))
        });
        Ok(snap)
    }

    /// Where twoway keeps its archives (its sync-state directory).
    pub fn archive_dir(&self) -> PathBuf {
        self.state_home.join("oneway")
    }

    /// The one twoway archive (`twoway-archive-<hex>.txt`) in [`Env::archive_dir`]; fails
    /// unless there is exactly one.
    pub fn archive(&self) -> Res<PathBuf> {
        let found = archives(&self.archive_dir())?;
        match found.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(fail(format!(
                "expected exactly one twoway-archive-<hex>.txt in {}, found {found:?}",
                self.archive_dir().display()
            ))),
        }
    }
}

/// The twoway archives directly in `dir` (none if it does not exist): files named
/// `twoway-archive-<hex>.txt`, or `.twoway-archive-<hex>.txt` as earlier releases named them
/// where twoway ran (lowercase or uppercase hex digits, at least one).
pub fn archives(dir: &Path) -> Res<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in fs::read_dir(dir).context(|| format!("list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let hex = name
            .strip_prefix('.')
            .unwrap_or(name)
            .strip_prefix("twoway-archive-")
            .and_then(|n| n.strip_suffix(".txt"));
        if hex.is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Every twoway archive anywhere under `dir` (relative paths), for checks that none was written
/// where it must not be.
pub fn archives_under(dir: &Path) -> Res<Vec<PathBuf>> {
    Ok(snapshot(dir)?
        .into_keys()
        .filter(|rel| {
            rel.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".twoway-archive-"))
        })
        .collect())
}

/// Runs `cmd` (a `oneway` command line) to its end with its output captured, killing it and
/// failing after `timeout`; the log text is what the run appended to `log`.
pub fn run_command(cmd: Command, log: &Path, timeout: Duration) -> Res<Run> {
    run_program_command(Program::Oneway, cmd, log, timeout)
}

/// Runs `cmd`, a command line of `program`, as [`run_command`] does; the run's log lines are
/// parsed with `program`'s tag.
pub fn run_program_command(
    program: Program,
    mut cmd: Command,
    log: &Path,
    timeout: Duration,
) -> Res<Run> {
    let log_before = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    // Drain both pipes on threads: a pass over many files logs more than a pipe holds.
    let mut out = child.stdout.take().ok_or_else(|| fail("no stdout pipe"))?;
    let mut err = child.stderr.take().ok_or_else(|| fail("no stderr pipe"))?;
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf).map(|_| buf)
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        err.read_to_end(&mut buf).map(|_| buf)
    });
    let (status, finished) = wait_deadline(&mut child, timeout)?;
    let stdout = out_reader.join().map_err(|_| "stdout reader panicked")??;
    let stderr = err_reader.join().map_err(|_| "stderr reader panicked")??;
    let log_bytes = fs::read(log).unwrap_or_default();
    let start = usize::try_from(log_before)?;
    // A log file that shrank was created anew: all of it is this run's.
    let new_part = log_bytes.get(start..).unwrap_or(&log_bytes);
    let run = Run {
        program,
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        log: String::from_utf8_lossy(new_part).into_owned(),
    };
    ensure!(
        finished,
        "{cmd:?} did not finish within {timeout:?} and was killed\n{run}"
    );
    Ok(run)
}

/// Waits for `child` up to `timeout`; on expiry kills and reaps it. Returns the exit status and
/// whether the process finished by itself.
fn wait_deadline(child: &mut Child, timeout: Duration) -> Res<(ExitStatus, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, true));
        }
        if Instant::now() >= deadline {
            child.kill()?;
            return Ok((child.wait()?, false));
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// What a finished run showed: exit status, stdout, stderr and the lines it added to the log file.
pub struct Run {
    /// The binary that ran; its tag is the one its log lines must carry.
    pub program: Program,
    /// The exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// What this run appended to the log file.
    pub log: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- {}", describe_status(self.status))?;
        writeln!(f, "--- stdout:\n{}", tail(&self.stdout))?;
        writeln!(f, "--- stderr:\n{}", tail(&self.stderr))?;
        write!(f, "--- log:\n{}", tail(&self.log))
    }
}

/// The last 60 lines of `text`, so that a failure message stays readable.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(60);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[... {skip} lines]\n"));
    }
    for l in &lines[skip..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// "exit code N" or "killed by signal N".
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status:?}"),
    }
}

impl Run {
    /// Fails unless the process exited with `code`.
    pub fn expect_code(&self, code: i32) -> TestResult {
        ensure!(
            self.status.code() == Some(code),
            "expected exit code {code}, got {}\n{self}",
            describe_status(self.status)
        );
        Ok(())
    }

    /// The well-formed log lines (with this program's tag) this run wrote to the log file.
    pub fn lines(&self) -> Vec<LogLine> {
        self.log
            .lines()
            .filter_map(|l| parse_program_log_line(self.program, l))
            .collect()
    }

    /// Whether the log has a line with this level and exactly this message.
    pub fn has(&self, level: &str, message: &str) -> bool {
        self.lines()
            .iter()
            .any(|l| l.level == level && l.message == message)
    }

    /// Fails unless the log has a line with this level and exactly this message.
    pub fn expect(&self, level: &str, message: &str) -> TestResult {
        ensure!(
            self.has(level, message),
            "expected log line {level} `{message}`\n{self}"
        );
        Ok(())
    }

    /// Fails unless the log has an INFO line with one of these messages.
    pub fn expect_any(&self, messages: &[&str]) -> TestResult {
        ensure!(
            messages.iter().any(|m| self.has("INFO", m)),
            "expected one of the INFO log lines {messages:?}\n{self}"
        );
        Ok(())
    }

    /// Fails if any log message contains `needle`.
    pub fn expect_no_message_containing(&self, needle: &str) -> TestResult {
        let hits: Vec<LogLine> = self
            .lines()
            .into_iter()
            .filter(|l| l.message.contains(needle))
            .collect();
        ensure!(
            hits.is_empty(),
            "expected no log message containing `{needle}`, found {hits:?}\n{self}"
        );
        Ok(())
    }

    /// The messages of the operation lines (copied, replaced, created, removed, updated
    /// metadata, saved), `dry run: ` prefix included.
    pub fn operations(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.level == "INFO" && is_operation(&l.message))
            .map(|l| l.message)
            .collect()
    }

    /// The last `pass finished` summary of this run, with the line of changes before it.
    pub fn summary(&self) -> Res<Summary> {
        summaries(&self.lines())
            .into_iter()
            .filter(|(stopped, _)| !stopped)
            .map(|(_, summary)| summary)
            .next_back()
            .ok_or_else(|| fail(format!("no `pass finished` summary line\n{self}")))
    }

    /// Fails unless every log-file line has the `[ONEWAY][YYYY-MM-DD HH:MM:SS - LEVEL] - MESSAGE`
    /// form (`[TWOWAY]` for twoway), and the log lines on stderr are the same lines as in the
    /// log file.
    pub fn expect_well_formed_log(&self) -> TestResult {
        for line in self.log.lines() {
            ensure!(
                parse_program_log_line(self.program, line).is_some(),
                "malformed log line {line:?}\n{self}"
            );
        }
        let in_file = self.lines();
        let on_stderr: Vec<LogLine> = self
            .stderr
            .lines()
            .filter_map(|l| parse_program_log_line(self.program, l))
            .collect();
        ensure!(
            in_file == on_stderr,
            "the log lines on stderr differ from those in the log file\n{self}"
        );
        Ok(())
    }
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// INFO, WARNING, ERROR (DEBUG and TRACE are accepted by the parser too).
    pub level: String,
    /// What follows `] - `.
    pub message: String,
}

/// Parses `[ONEWAY][YYYY-MM-DD HH:MM:SS - LEVEL] - MESSAGE` or the same with `[TWOWAY]`.
pub fn parse_log_line(line: &str) -> Option<LogLine> {
    parse_program_log_line(Program::Oneway, line)
        .or_else(|| parse_program_log_line(Program::Twoway, line))
}

/// Parses `TAG[YYYY-MM-DD HH:MM:SS - LEVEL] - MESSAGE` with `program`'s tag only.
pub fn parse_program_log_line(program: Program, line: &str) -> Option<LogLine> {
    let rest = line.strip_prefix(program.tag())?.strip_prefix('[')?;
    let (stamp, rest) = rest.split_at_checked(19)?;
    let well_formed_stamp = stamp.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        10 => b == b' ',
        13 | 16 => b == b':',
        _ => b.is_ascii_digit(),
    });
    if !well_formed_stamp {
        return None;
    }
    let (level, message) = rest.strip_prefix(" - ")?.split_once("] - ")?;
    if !matches!(level, "INFO" | "WARNING" | "ERROR" | "DEBUG" | "TRACE") {
        return None;
    }
    Some(LogLine {
        level: level.to_owned(),
        message: message.to_owned(),
    })
}

/// Whether a message (after an optional `dry run: `) reports a change to BACKUP (oneway) or to
/// either side (twoway).
pub fn is_operation(message: &str) -> bool {
    let m = message.strip_prefix("dry run: ").unwrap_or(message);
    [
        "created directory ",
        "copied ",
        "replaced ",
        "created symlink ",
        "updated metadata of ",
        "removed ",
        "saved ",
    ]
    .iter()
    .any(|p| m.starts_with(p))
}

/// What a pass gave one side, read back from its line of changes
/// (`C created, R replaced, D removed, M metadata updated, B copied`; see `parse_changes`):
/// the engine's own type, so the tests compare the log with what the engine counts.
pub use sync_core::model::Changes;

/// The version a versioned pass made, from
/// `version NAME made: F files (L hard-linked, C copied), B copied`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// F.
    pub files: u64,
    /// L.
    pub linked: u64,
    /// C.
    pub copied: u64,
    /// B, in bytes.
    pub bytes: u64,
}

/// A pass's summary: the numbers of its last line,
/// `pass finished in T: N operations, E errors[, K conflicts kept], H files hashed[ (W while
/// copying)], C cached hashes reused` (`pass stopped after T: …` for a pass a stop cut short),
/// and, where the line before it was read too ([`summaries`], [`Run::summary`],
/// [`last_summary`]), what it changed per direction or the version it made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// N.
    pub operations: u64,
    /// E.
    pub errors: u64,
    /// H: every file read and hashed, before the plan and by copies.
    pub hashed: u64,
    /// C.
    pub cached: u64,
    /// K, only in twoway's summary.
    pub conflicts: Option<u64>,
    /// W: of H, the files copies read and hashed as they copied them.
    pub hashed_while_copying: u64,
    /// T, to the precision printed.
    pub took: Duration,
    /// `into BACKUP: …` (a mirror) or `to BACKUP: …` (twoway).
    pub to_backup: Option<Changes>,
    /// `to SOURCE: …` (twoway).
    pub to_source: Option<Changes>,
    /// `version NAME made: …`; `Some(None)` for `no new version`.
    pub version: Option<Option<Version>>,
}

/// Parses a summary's last line (singular or plural words accepted), if the pass finished.
pub fn parse_summary(message: &str) -> Option<Summary> {
    match parse_totals(message)? {
        (false, summary) => Some(summary),
        (true, _) => None,
    }
}

/// Parses a summary's last line, finished or stopped: whether it was stopped, and its numbers.
pub fn parse_totals(message: &str) -> Option<(bool, Summary)> {
    let (stopped, rest) = match message.strip_prefix("pass finished in ") {
        Some(rest) => (false, rest),
        None => (true, message.strip_prefix("pass stopped after ")?),
    };
    let (took, rest) = rest.split_once(": ")?;
    let took = parse_took(took)?;
    let (mut ops, mut errors, mut hashed, mut cached) = (None, None, None, None);
    let (mut conflicts, mut while_copying) = (None, 0);
    for part in rest.split(", ") {
        let (num, words) = part.split_once(' ')?;
        let n: u64 = num.parse().ok()?;
        if words.starts_with("operation") {
            ops = Some(n);
        } else if words.starts_with("error") {
            errors = Some(n);
        } else if words.starts_with("file") && words.contains("hashed") {
            hashed = Some(n);
            if let Some(w) = words
                .strip_prefix("files hashed (")
                .or(words.strip_prefix("file hashed ("))
            {
                while_copying = w.strip_suffix(" while copying)")?.parse().ok()?;
            } else if words != "files hashed" && words != "file hashed" {
                return None;
            }
        } else if words.starts_with("cached hash") {
            cached = Some(n);
        } else if words == "conflict kept" || words == "conflicts kept" {
            conflicts = Some(n);
        } else {
            return None;
        }
    }
    let summary = Summary {
        operations: ops?,
        errors: errors?,
        hashed: hashed?,
        cached: cached?,
        conflicts,
        hashed_while_copying: while_copying,
        took,
        to_backup: None,
        to_source: None,
        version: None,
    };
    Some((stopped, summary))
}

/// `420 ms`, `4.20 s`, `12.3 s`, `2 min 05 s`, `1 h 02 min`.
fn parse_took(text: &str) -> Option<Duration> {
    let words: Vec<&str> = text.split(' ').collect();
    let mut secs = 0.0;
    for pair in words.chunks(2) {
        let [n, unit] = pair else { return None };
        let n: f64 = n.parse().ok()?;
        secs += n * match *unit {
            "ms" => 0.001,
            "s" => 1.0,
            "min" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
    }
    Some(Duration::from_secs_f64(secs))
}

/// `512 bytes`, `1 byte`, `2.5 KiB (2560 bytes)`: the exact number of bytes.
fn parse_bytes(text: &str) -> Option<u64> {
    let exact = match text.split_once(" (") {
        Some((_, exact)) => exact.strip_suffix(')')?,
        None => text,
    };
    let (n, unit) = exact.split_once(' ')?;
    matches!(unit, "byte" | "bytes").then_some(())?;
    n.parse().ok()
}

/// Parses `C created, R replaced, D removed, M metadata updated, B copied`.
fn parse_changes(text: &str) -> Option<Changes> {
    let parts: Vec<&str> = text.split(", ").collect();
    let [created, replaced, removed, metadata, copied] = parts[..] else {
        return None;
    };
    let num = |part: &str, words: &str| -> Option<u64> {
        part.strip_suffix(words)?.strip_suffix(' ')?.parse().ok()
    };
    Some(Changes {
        created: num(created, "created")?,
        replaced: num(replaced, "replaced")?,
        removed: num(removed, "removed")?,
        metadata: num(metadata, "metadata updated")?,
        bytes: parse_bytes(copied.strip_suffix(" copied")?)?,
    })
}

/// What a summary's line of changes says: `(to SOURCE, to BACKUP, version)`.
type ChangesLine = (Option<Changes>, Option<Changes>, Option<Option<Version>>);

/// Parses a summary's line of changes: `into BACKUP: …`, `to SOURCE: …; to BACKUP: …`,
/// `version NAME made: …` or `no new version`.
pub fn parse_changes_line(message: &str) -> Option<ChangesLine> {
    if let Some(rest) = message.strip_prefix("into BACKUP: ") {
        return Some((None, Some(parse_changes(rest)?), None));
    }
    if let Some(rest) = message.strip_prefix("to SOURCE: ") {
        let (source, backup) = rest.split_once("; to BACKUP: ")?;
        return Some((
            Some(parse_changes(source)?),
            Some(parse_changes(backup)?),
            None,
        ));
    }
    if message == "no new version" {
        return Some((None, None, Some(None)));
    }
    let rest = message.strip_prefix("version ")?;
    let (_name, rest) = rest.split_once(" made: ")?;
    let (files, rest) = rest.split_once(" (")?;
    let (linked, rest) = rest.split_once(" hard-linked, ")?;
    let (copied, rest) = rest.split_once(" copied), ")?;
    let files = files
        .strip_suffix(" files")
        .or(files.strip_suffix(" file"))?;
    let version = Version {
        files: files.parse().ok()?,
        linked: linked.parse().ok()?,
        copied: copied.parse().ok()?,
        bytes: parse_bytes(rest.strip_suffix(" copied")?)?,
    };
    Some((None, None, Some(Some(version))))
}

/// Every pass summary in `lines`, in order: whether the pass was stopped, and its numbers with
/// the line of changes logged just before its last line.
pub fn summaries(lines: &[LogLine]) -> Vec<(bool, Summary)> {
    let mut out = Vec::new();
    let mut changes = None;
    for line in lines.iter().filter(|l| l.level == "INFO") {
        if let Some(c) = parse_changes_line(&line.message) {
            changes = Some(c);
        } else if let Some((stopped, mut summary)) = parse_totals(&line.message) {
            if let Some((to_source, to_backup, version)) = changes.take() {
                summary.to_source = to_source;
                summary.to_backup = to_backup;
                summary.version = version;
            }
            out.push((stopped, summary));
        }
    }
    out
}

/// The last `pass finished` summary in a log text.
pub fn last_summary(log: &str) -> Option<Summary> {
    let lines: Vec<LogLine> = log.lines().filter_map(parse_log_line).collect();
    summaries(&lines)
        .into_iter()
        .filter(|(stopped, _)| !stopped)
        .map(|(_, summary)| summary)
        .next_back()
}

/// A process running in the background; killed (SIGKILL) and reaped when dropped.
pub struct Background {
    child: Child,
    stderr_path: PathBuf,
    program: Program,
}

impl Background {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`INT`, `TERM`, ...) with the shell's `kill` builtin.
    pub fn signal(&self, name: &str) -> TestResult {
        let status = Command::new("sh")
            .args(["-c", "kill -s \"$1\" \"$2\"", "sh", name])
            .arg(self.pid().to_string())
            .status()?;
        ensure!(status.success(), "kill -s {name} {} failed", self.pid());
        Ok(())
    }

    /// Sends signal `name` (`INT`, `TERM`) to a periodic run, and fails unless it then ends
    /// normally: exit code 0, as SPEC §5 wants for a stop by Ctrl+C or SIGTERM.
    pub fn stop_with(&mut self, name: &str) -> TestResult {
        self.signal(name)?;
        let status = self.wait_exit(WAIT_TIMEOUT)?;
        ensure!(
            status.code() == Some(0),
            "after SIG{name} the run ended with {}, expected exit code 0\nstderr:\n{}",
            describe_status(status),
            self.stderr()
        );
        Ok(())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> Res<ExitStatus> {
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Res<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits for the process to exit; fails (and kills it) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Res<ExitStatus> {
        match wait_deadline(&mut self.child, timeout)? {
            (status, true) => Ok(status),
            (_, false) => Err(fail(format!(
                "process did not exit within {timeout:?}; killed\nstderr:\n{}",
                self.stderr()
            ))),
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        tail(&fs::read_to_string(&self.stderr_path).unwrap_or_default())
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_all(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Polls every 10 ms until `ready(log text)` holds for the fixture's log, and returns that
    /// text. Fails if the process exits first or after `timeout`.
    pub fn wait_for_log(
        &mut self,
        env: &Env,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> Res<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = env.log_text();
            if ready(&text) {
                return Ok(text);
            }
            if let Some(status) = self.try_wait()? {
                return Err(fail(format!(
                    "{} exited ({}) before {what}\nstderr:\n{}\nlog:\n{}",
                    self.program.name(),
                    describe_status(status),
                    self.stderr(),
                    tail(&text)
                )));
            }
            if Instant::now() >= deadline {
                return Err(fail(format!(
                    "no {what} within {timeout:?}\nstderr:\n{}\nlog:\n{}",
                    self.stderr(),
                    tail(&text)
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the first `pass finished` summary in the log and returns it.
    pub fn wait_for_first_pass(&mut self, env: &Env) -> Res<Summary> {
        let text = self.wait_for_log(env, "`pass finished` line", WAIT_TIMEOUT, |t| {
            last_summary(t).is_some()
        })?;
        last_summary(&text).ok_or_else(|| fail("summary vanished"))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `cond` every 10 ms until it holds; fails after `timeout` naming `what`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Res<bool>,
) -> TestResult {
    let deadline = Instant::now() + timeout;
    while !cond()? {
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Building trees

/// Writes `bytes` to `dir/rel`, creating parent directories. Returns the path.
pub fn write(dir: &Path, rel: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> Res<PathBuf> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).context(|| format!("create {}", parent.display()))?;
    }
    fs::write(&path, bytes).context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Creates the directory `dir/rel` and its parents. Returns the path.
pub fn mkdir(dir: &Path, rel: impl AsRef<Path>) -> Res<PathBuf> {
    let path = dir.join(rel);
    fs::create_dir_all(&path).context(|| format!("create {}", path.display()))?;
    Ok(path)
}

/// Creates the symlink `dir/rel -> target`, creating parent directories. Returns the path.
pub fn symlink(dir: &Path, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> Res<PathBuf> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).context(|| format!("create {}", parent.display()))?;
    }
    std::os::unix::fs::symlink(target, &path)
        .context(|| format!("create symlink {}", path.display()))?;
    Ok(path)
}

/// Sets the permission bits of `path` (follows symlinks: use it on files and directories).
pub fn chmod(path: &Path, mode: u32) -> TestResult {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .context(|| format!("chmod {mode:o} {}", path.display()))?;
    Ok(())
}

/// Sets the modification (and access) time of `path` without following a symlink.
pub fn set_mtime(path: &Path, secs: i64, nanos: u32) -> TestResult {
    let t = FileTime::from_unix_time(secs, nanos);
    filetime::set_symlink_file_times(path, t, t)
        .context(|| format!("set the mtime of {}", path.display()))?;
    Ok(())
}

/// Creates a FIFO at `path` with coreutils' `mkfifo`.
pub fn mkfifo(path: &Path) -> TestResult {
    let status = Command::new("mkfifo").arg(path).status()?;
    ensure!(status.success(), "mkfifo {} failed", path.display());
    ensure!(
        fs::symlink_metadata(path)?.file_type().is_fifo(),
        "{} is not a FIFO",
        path.display()
    );
    Ok(())
}

/// Hands `path` and everything under it to `uid:gid` (symlinks themselves, never their targets).
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> TestResult {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .context(|| format!("chown {}", path.display()))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The change time of `path` (seconds, nanoseconds), without following a symlink.
pub fn ctime(path: &Path) -> Res<(i64, i64)> {
    let m = fs::symlink_metadata(path).context(|| format!("stat {}", path.display()))?;
    Ok((m.ctime(), m.ctime_nsec()))
}

/// The content of the file at `path`.
pub fn read(path: &Path) -> Res<Vec<u8>> {
    fs::read(path).context(|| format!("read {}", path.display()))
}

/// The target of the symlink at `path`.
pub fn read_link(path: &Path) -> Res<PathBuf> {
    fs::read_link(path).context(|| format!("read the symlink {}", path.display()))
}

/// The inode number of `path`, without following a symlink.
pub fn inode(path: &Path) -> Res<u64> {
    Ok(fs::symlink_metadata(path)
        .context(|| format!("stat {}", path.display()))?
        .ino())
}

/// Whether `text` mentions `path`, as given or with symlinks resolved.
pub fn contains_path(text: &str, path: &Path) -> bool {
    let given = path.to_string_lossy();
    text.contains(given.as_ref())
        || fs::canonicalize(path).is_ok_and(|c| text.contains(c.to_string_lossy().as_ref()))
}

// ---------------------------------------------------------------------------------------------
// Snapshots

/// Files up to this size are kept in a snapshot byte for byte; larger ones by length only, and
/// [`assert_trees_equal`] compares their contents by streaming both files.
pub const SNAPSHOT_INLINE_LIMIT: u64 = 1 << 20;

/// Relative path (raw bytes) -> entry, sorted.
pub type Snapshot = BTreeMap<PathBuf, Entry>;

/// What a snapshot records of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Kind and content.
    pub node: Node,
    /// `mode & 0o7777`; `None` for symlinks, whose mode means nothing on Linux.
    pub mode: Option<u32>,
    /// Modification time: seconds, nanoseconds.
    pub mtime: (i64, i64),
}

/// Kind and content of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file.
    File(Content),
    /// A directory.
    Dir,
    /// A symlink and its target.
    Symlink(PathBuf),
    /// Anything else (FIFO, socket, device).
    Other(&'static str),
}

/// A regular file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The bytes, for files up to [`SNAPSHOT_INLINE_LIMIT`].
    Bytes(Vec<u8>),
    /// The length of a larger file.
    Large(u64),
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Node::File(Content::Bytes(b)) if b.len() <= 80 => {
                write!(f, "file {:?}", String::from_utf8_lossy(b))?
            }
            Node::File(Content::Bytes(b)) => write!(f, "file of {} bytes", b.len())?,
            Node::File(Content::Large(n)) => write!(f, "file of {n} bytes")?,
            Node::Dir => write!(f, "directory")?,
            Node::Symlink(t) => write!(f, "symlink -> {t:?}")?,
            Node::Other(kind) => write!(f, "{kind}")?,
        }
        if let Some(mode) = self.mode {
            write!(f, ", mode {mode:04o}")?;
        }
        write!(f, ", mtime {}.{:09}", self.mtime.0, self.mtime.1)
    }
}

/// Every entry under `dir` (not `dir` itself), read with `symlink_metadata`: links are never
/// followed.
pub fn snapshot(dir: &Path) -> Res<Snapshot> {
    let mut snap = Snapshot::new();
    walk(dir, Path::new(""), &mut snap)?;
    Ok(snap)
}

fn walk(root: &Path, rel: &Path, snap: &mut Snapshot) -> TestResult {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).context(|| format!("list {}", dir.display()))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).context(|| format!("stat {}", path.display()))?;
        let ft = meta.file_type();
        let node = if ft.is_symlink() {
            Node::Symlink(read_link(&path)?)
        } else if ft.is_dir() {
            Node::Dir
        } else if ft.is_file() {
            if meta.len() <= SNAPSHOT_INLINE_LIMIT {
                Node::File(Content::Bytes(read(&path)?))
            } else {
                Node::File(Content::Large(meta.len()))
            }
        } else if ft.is_fifo() {
            Node::Other("fifo")
        } else if ft.is_socket() {
            Node::Other("socket")
        } else {
            Node::Other("device")
        };
        let is_dir = matches!(node, Node::Dir);
        snap.insert(
            rel.clone(),
            Entry {
                mode: (!ft.is_symlink()).then_some(meta.mode() & 0o7777),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                node,
            },
        );
        if is_dir {
            walk(root, &rel, snap)?;
        }
    }
    Ok(())
}

/// Inode numbers of every entry under `dir`.
pub fn inodes(dir: &Path) -> Res<BTreeMap<PathBuf, u64>> {
    let mut out = BTreeMap::new();
    for rel in snapshot(dir)?.into_keys() {
        let ino = inode(&dir.join(&rel))?;
        out.insert(rel, ino);
    }
    Ok(out)
}

/// One line per difference between two snapshots.
pub fn diff(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, ea) in a {
        match b.get(rel) {
            None => out.push(format!("only in first:  {rel:?}: {ea}")),
            Some(eb) if ea != eb => out.push(format!(
                "differs: {rel:?}\n    first:  {ea}\n    second: {eb}"
            )),
            Some(_) => {}
        }
    }
    for (rel, eb) in b {
        if !a.contains_key(rel) {
            out.push(format!("only in second: {rel:?}: {eb}"));
        }
    }
    out
}

fn report(what: &str, diffs: &[String]) -> TestResult {
    if diffs.is_empty() {
        return Ok(());
    }
    let mut msg = format!("{what}: {} difference(s)\n", diffs.len());
    for d in diffs.iter().take(40) {
        msg.push_str("  ");
        msg.push_str(d);
        msg.push('\n');
    }
    if diffs.len() > 40 {
        msg.push_str("  ...\n");
    }
    Err(fail(msg))
}

/// Fails with a readable difference unless the trees under `a` and `b` hold the same paths, kinds,
/// contents, symlink targets, permission bits (not for symlinks) and mtimes (nanoseconds).
pub fn assert_trees_equal(a: &Path, b: &Path) -> TestResult {
    compare_trees(a, b, snapshot(a)?, snapshot(b)?)
}

/// The two-way version of [`assert_trees_equal`]: the same, except that directory mtimes are
/// not compared (they move with every change inside; `faithful_twoway` checks them, through
/// rsync).
pub fn assert_synced(a: &Path, b: &Path) -> TestResult {
    let sa = without_dir_mtimes(snapshot(a)?);
    let sb = without_dir_mtimes(snapshot(b)?);
    compare_trees(a, b, sa, sb)
}

/// `snap` with every directory's mtime set to zero, for comparisons that ignore them.
pub fn without_dir_mtimes(mut snap: Snapshot) -> Snapshot {
    for entry in snap.values_mut() {
        if entry.node == Node::Dir {
            entry.mtime = (0, 0);
        }
    }
    snap
}

/// `snap` without the entries named `.oneway-tmp-*` (and nothing else: an entry inside such a
/// name would be too odd to hide).
pub fn without_temp_files(mut snap: Snapshot) -> Snapshot {
    snap.retain(|rel, _| {
        !rel.file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(TMP_PREFIX.as_bytes()))
    });
    snap
}

fn compare_trees(a: &Path, b: &Path, sa: Snapshot, sb: Snapshot) -> TestResult {
    let mut diffs = diff(&sa, &sb);
    for (rel, ea) in &sa {
        if let (Node::File(Content::Large(_)), Some(eb)) = (&ea.node, sb.get(rel))
            && ea.node == eb.node
            && !files_equal(&a.join(rel), &b.join(rel))?
        {
            diffs.push(format!("differs: {rel:?}: same length, different content"));
        }
    }
    report(
        &format!("trees {} and {} differ", a.display(), b.display()),
        &diffs,
    )
}

/// Fails with a readable difference unless two snapshots are the same.
pub fn assert_same(what: &str, before: &Snapshot, after: &Snapshot) -> TestResult {
    report(what, &diff(before, after))
}

/// Whether two files have the same content (streamed, for large files).
pub fn files_equal(a: &Path, b: &Path) -> Res<bool> {
    let fa = File::open(a).context(|| format!("open {}", a.display()));
    let fb = File::open(b).context(|| format!("open {}", b.display()));
    let (mut fa, mut fb) = (fa?, fb?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Every entry under `dir` whose name starts with `.oneway-tmp-`.
pub fn temp_files(dir: &Path) -> Res<Vec<PathBuf>> {
    Ok(snapshot(dir)?
        .into_keys()
        .filter(|rel| {
            rel.file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(TMP_PREFIX.as_bytes()))
        })
        .collect())
}

/// The kind of entry at `path` without following links, or `None` when nothing is there.
pub fn kind_of(path: &Path) -> Res<Option<&'static str>> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Ok(Some("symlink")),
        Ok(m) if m.is_dir() => Ok(Some("directory")),
        Ok(m) if m.is_file() => Ok(Some("file")),
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            let t = m.file_type();
            Ok(Some(if t.is_fifo() {
                "fifo"
            } else if t.is_socket() {
                "socket"
            } else {
                "device"
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Expected trees

/// What a test expects at one path of a tree: kind and content only (no mode, no mtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// A regular file with these bytes.
    File(Vec<u8>),
    /// A directory.
    Dir,
    /// A symlink to this target.
    Link(PathBuf),
}

impl Want {
    /// A regular file holding `bytes`.
    pub fn file(bytes: impl AsRef<[u8]>) -> Want {
        Want::File(bytes.as_ref().to_vec())
    }

    /// A symlink to `target`.
    pub fn link(target: impl AsRef<Path>) -> Want {
        Want::Link(target.as_ref().to_path_buf())
    }
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::File(b) => write!(f, "file {:?}", String::from_utf8_lossy(b)),
            Want::Dir => write!(f, "directory"),
            Want::Link(t) => write!(f, "symlink -> {t:?}"),
        }
    }
}

/// What `entry` is, in the terms of [`Want`] (a large file is read from `path`).
fn as_want(entry: &Entry, path: &Path) -> Res<Option<Want>> {
    Ok(match &entry.node {
        Node::File(Content::Bytes(b)) => Some(Want::File(b.clone())),
        Node::File(Content::Large(_)) => Some(Want::File(read(path)?)),
        Node::Dir => Some(Want::Dir),
        Node::Symlink(t) => Some(Want::Link(t.clone())),
        Node::Other(_) => None,
    })
}

/// Fails with a readable difference unless `dir` holds exactly the entries `want` lists (every
/// directory listed too), with those kinds, contents and link targets. `what` names the tree in
/// the message ("SOURCE", "BACKUP").
pub fn expect_tree(what: &str, dir: &Path, want: &[(&str, Want)]) -> TestResult {
    expect_entries(what, dir, &snapshot(dir)?, want)
}

/// [`expect_tree`] on a snapshot `have` of `dir` that the caller has filtered (for example with
/// [`without_temp_files`]).
pub fn expect_entries(
    what: &str,
    dir: &Path,
    have: &Snapshot,
    want: &[(&str, Want)],
) -> TestResult {
    let mut wanted: BTreeMap<PathBuf, &Want> = BTreeMap::new();
    for (rel, w) in want {
        ensure!(
            wanted.insert(PathBuf::from(rel), w).is_none(),
            "expect_tree: {rel} listed twice"
        );
    }
    let mut diffs = Vec::new();
    for (rel, w) in &wanted {
        match have.get(rel) {
            None => diffs.push(format!("missing: {rel:?}: expected {w}")),
            Some(entry) => {
                let got = as_want(entry, &dir.join(rel))?;
                if got.as_ref() != Some(*w) {
                    diffs.push(format!(
                        "differs: {rel:?}\n    expected: {w}\n    found:    {entry}"
                    ));
                }
            }
        }
    }
    for (rel, entry) in have {
        if !wanted.contains_key(rel) {
            diffs.push(format!("unexpected: {rel:?}: {entry}"));
        }
    }
    report(
        &format!("{what} ({}) is not as expected", dir.display()),
        &diffs,
    )
}

/// Removes everything inside `dir`, leaving it empty.
pub fn empty_dir(dir: &Path) -> TestResult {
    for entry in fs::read_dir(dir).context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            fs::remove_dir_all(&path).context(|| format!("remove {}", path.display()))?;
        } else {
            fs::remove_file(&path).context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Clock

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> Res<i64> {
    Ok(i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?)
}

/// `YYYYMMDD-HHMMSS` of the instant `unix_secs` in a zone `offset` seconds east of UTC (the
/// proleptic Gregorian calendar, as every time library prints it).
pub fn compact_stamp(unix_secs: i64, offset: i64) -> String {
    let t = unix_secs + offset;
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Days to civil date: Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A file system mounted over a directory for the length of a test; unmounted when dropped (a
/// loop device made by `mount -o loop` goes with it).
pub struct Mounted {
    path: PathBuf,
}

impl Mounted {
    /// Runs `mount ARGS... PATH`; the error says why it failed.
    pub fn mount<S: AsRef<OsStr>>(args: &[S], path: &Path) -> Result<Mounted, String> {
        let out = Command::new("mount")
            .args(args)
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(one_line(&out.stderr));
        }
        Ok(Mounted {
            path: path.to_path_buf(),
        })
    }

    /// A tmpfs with `options` (`size=64m`, …) over the existing directory `path`.
    pub fn tmpfs(path: &Path, options: &str) -> Result<Mounted, String> {
        let options = format!("{options},mode=0755");
        Mounted::mount(&["-t", "tmpfs", "-o", &options, "tmpfs"], path)
    }

    /// Changes the size of a mounted tmpfs.
    pub fn resize(&self, size: &str) -> TestResult {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()?;
        ensure!(
            status.success(),
            "cannot resize the tmpfs at {}",
            self.path.display()
        );
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A tool's error output on one line.
pub fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The mount `made`, or, where it failed, a failure; `None` after saying on the console that
/// `test` (`module::name`) is skipped, when the run allows skipping. A test that cannot make its file system has
/// proved nothing, so it never passes silently.
pub fn mounted_or_skip(
    made: Result<Mounted, String>,
    what: &str,
    test: &str,
) -> Res<Option<Mounted>> {
    match made {
        Ok(m) => Ok(Some(m)),
        Err(why) if std::env::var_os("ONEWAY_TESTS_ALLOW_SKIP").is_some() => {
            // Past the test harness's capture: it shows for a passing test too.
            let _ = io::Write::write_fmt(
                &mut io::stderr(),
                format_args!("SKIPPED: {test}: cannot mount {what} ({why}); the test needs root\n"),
            );
            Ok(None)
        }
        Err(why) => Err(fail(format!(
            "{test}: cannot mount {what} ({why}); the test needs root (set \
             ONEWAY_TESTS_ALLOW_SKIP=1 to skip it explicitly)"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Faithful copies: trees with everything `rsync -aHAXS --numeric-ids` carries, and its verdict

/// Sets the extended attribute `name` of `path` (a link itself, not its target).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> TestResult {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .map_err(|e| format!("setxattr {name} on {}: {e}", path.display()))?;
    Ok(())
}

/// The extended attributes of `path` (a link itself), by name.
pub fn xattrs_of(path: &Path) -> Res<BTreeMap<String, Vec<u8>>> {
    let mut names = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(path, &mut names[..])
        .map_err(|e| format!("listxattr {}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 64 * 1024];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..])
            .map_err(|e| format!("getxattr {name} of {}: {e}", path.display()))?;
        value.truncate(len);
        out.insert(name, value);
    }
    Ok(out)
}

/// A POSIX ACL entry: tag (`ACL_USER_OBJ` 1, `ACL_USER` 2, `ACL_GROUP_OBJ` 4, `ACL_GROUP` 8,
/// `ACL_MASK` 0x10, `ACL_OTHER` 0x20), permission bits (rwx as 4, 2, 1) and id.
pub type AclEntry = (u16, u16, u32);

/// Gives `path` the access ACL (or, with `default`, a directory's default ACL) `entries`, in
/// the kernel's format for `system.posix_acl_*` (what `setfacl` writes; no package needed).
pub fn set_acl(path: &Path, default: bool, entries: &[AclEntry]) -> TestResult {
    let mut value = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        value.extend_from_slice(&tag.to_le_bytes());
        value.extend_from_slice(&perm.to_le_bytes());
        value.extend_from_slice(&id.to_le_bytes());
    }
    let name = if default {
        "system.posix_acl_default"
    } else {
        "system.posix_acl_access"
    };
    set_xattr(path, name, &value)
}

/// An ACL granting uid `user` read and write besides the mode's owner, group and others
/// (`u::rw-,u:USER:rw-,g::r--,m::rw-,o::r--`).
pub fn acl_for(user: u32) -> [AclEntry; 5] {
    [
        (0x01, 6, u32::MAX),
        (0x02, 6, user),
        (0x04, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ]
}

/// Makes the character device `major:minor` at `path` (only root may).
pub fn mknod_char(path: &Path, major: u32, minor: u32) -> TestResult {
    let dev = rustix::fs::makedev(major, minor);
    let mode = rustix::fs::Mode::from_raw_mode(0o640);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        mode,
        dev,
    )
    .map_err(|e| format!("mknod {}: {e}", path.display()))?;
    Ok(())
}

/// A file of `len` bytes that holds only `data` at `at` and holes elsewhere.
pub fn sparse_file(path: &Path, len: u64, at: u64, data: &[u8]) -> TestResult {
    use std::os::unix::fs::FileExt;
    let file = File::create(path).context(|| format!("create {}", path.display()))?;
    file.write_all_at(data, at)?;
    file.set_len(len)?;
    Ok(())
}

/// Builds in `dir` (as root) a tree with everything a faithful copy carries: files and
/// directories of two owners, a setuid file and a setgid directory of the other user, user and
/// trusted extended attributes, an access ACL and a default ACL, a group of three hard links
/// in two directories, a sparse file, a FIFO, a character device, a link owned by the other
/// user, times set last, and a root of its own mode and owner. Everything is readable by
/// uid 65534 (so that a run as that user reads it all).
pub fn rich_tree(dir: &Path) -> TestResult {
    write(dir, "root.txt", "root's file\n")?;
    write(dir, "theirs/own.txt", "the user's file\n")?;
    write(dir, "theirs/tool", "#!/bin/sh\necho tool\n")?;
    write(dir, "shared/inside.txt", "inside\n")?;
    write(dir, "attrs/tagged.txt", "tagged\n")?;
    write(dir, "attrs/acl.txt", "acl\n")?;
    fs::create_dir_all(dir.join("attrs/inherits"))?;
    write(dir, "links/first.txt", "one inode, three names\n")?;
    fs::create_dir_all(dir.join("more"))?;
    fs::hard_link(dir.join("links/first.txt"), dir.join("links/second.txt"))?;
    fs::hard_link(dir.join("links/first.txt"), dir.join("more/third.txt"))?;
    sparse_file(&dir.join("disk.img"), 64 << 20, 1 << 20, &[7u8; 4096])?;
    mkfifo(&dir.join("pipe"))?;
    mknod_char(&dir.join("null"), 1, 3)?;
    symlink(dir, "theirs/link", "own.txt")?;
    chown_tree(&dir.join("theirs"), NOBODY, NOBODY)?;
    std::os::unix::fs::lchown(dir.join("shared"), Some(NOBODY), Some(NOBODY))?;
    chmod(&dir.join("theirs/tool"), 0o4755)?;
    chmod(&dir.join("shared"), 0o2775)?;
    chmod(&dir.join("null"), 0o640)?;
    set_xattr(&dir.join("attrs/tagged.txt"), "user.origin", b"rich tree")?;
    set_xattr(&dir.join("attrs/tagged.txt"), "trusted.note", b"root only")?;
    set_xattr(&dir.join("attrs"), "user.dir", b"on a directory")?;
    set_acl(&dir.join("attrs/acl.txt"), false, &acl_for(NOBODY))?;
    set_acl(&dir.join("attrs/inherits"), true, &acl_for(NOBODY))?;
    // Times last, deepest first: each change above moved its directory's.
    let mut t = T_RICH;
    for rel in [
        "theirs/link",
        "theirs/own.txt",
        "theirs/tool",
        "shared/inside.txt",
        "attrs/tagged.txt",
        "attrs/acl.txt",
        "links/first.txt",
        "disk.img",
        "pipe",
        "null",
        "root.txt",
        "attrs/inherits",
        "theirs",
        "shared",
        "attrs",
        "links",
        "more",
    ] {
        set_mtime(&dir.join(rel), t, 0)?;
        t += 1;
    }
    std::os::unix::fs::lchown(dir, Some(NOBODY), Some(NOBODY))?;
    chmod(dir, 0o750)?;
    set_mtime(dir, t, 0)
}

/// A time before anything the tests write.
const T_RICH: i64 = 1_500_000_000;

/// What `rsync -aHAXSn --numeric-ids --checksum --itemize-changes` finds different between
/// `src` and `dst` (root directory included): one line per difference, none when `dst` is a
/// faithful copy.
pub fn rsync_differences(src: &Path, dst: &Path) -> Res<Vec<String>> {
    let mut a = src.as_os_str().to_os_string();
    a.push("/");
    let mut b = dst.as_os_str().to_os_string();
    b.push("/");
    let out = Command::new("rsync")
        .args([
            "-aHAXSn",
            "--numeric-ids",
            "--checksum",
            "--itemize-changes",
        ])
        .arg(&a)
        .arg(&b)
        .output()
        .context(|| "run rsync (the faithful-copy tests compare with it)".to_string())?;
    ensure!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// Fails unless `rsync` finds `copy` a faithful copy of `original` (see [`rsync_differences`]),
/// and every sparse file of `original` is sparse in `copy` (rsync's dry run does not look at
/// allocation): its copy takes at most the blocks the original takes, and 64 KiB.
pub fn expect_faithful(what: &str, original: &Path, copy: &Path, run: &Run) -> TestResult {
    let differences = rsync_differences(original, copy)?;
    ensure!(
        differences.is_empty(),
        "{what}: rsync -aHAXSn --numeric-ids --checksum finds differences:\n  {}\n{run}",
        differences.join("\n  ")
    );
    for (rel, entry) in snapshot(original)? {
        if !matches!(entry.node, Node::File(_)) {
            continue;
        }
        let orig = fs::symlink_metadata(original.join(&rel))?;
        if orig.blocks() * 512 >= orig.len() {
            continue;
        }
        let held = fs::symlink_metadata(copy.join(&rel))?.blocks() * 512;
        ensure!(
            held <= orig.blocks() * 512 + (64 << 10),
            "{what}: the sparse file {} takes {held} bytes in the copy, {} in the original\n{run}",
            rel.display(),
            orig.blocks() * 512
        );
    }
    Ok(())
}

/// The bytes the trees `dirs` take on disk together, each inode counted once however many
/// names it has in them (st_blocks × 512, links never followed): what hard links between the
/// trees save shows.
pub fn disk_usage(dirs: &[&Path]) -> Res<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut todo: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(path) = todo.pop() {
        let meta = fs::symlink_metadata(&path).context(|| format!("stat {}", path.display()))?;
        if seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).context(|| format!("list {}", path.display()))? {
                todo.push(entry?.path());
            }
        }
    }
    Ok(total)
}

/// `n` bytes that no two calls with other seeds share (and that do not compress).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
