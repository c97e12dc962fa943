//! The recovery system's processes: one `oneway --versioned` child per side, started after the
//! first two-way pass, restarted if it dies, and stopped (SIGTERM, then SIGKILL) when twoway
//! stops, so that none outlives it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sync_core::{Error, ExitCode};
use versioning::recovery::{Config, Info, VERSIONS_DIR};
use versioning::retention::{Keep, Retention};

/// How long a child may take to finish its file operation after SIGTERM.
const GRACE: Duration = Duration::from_secs(10);
/// Restart delays grow from this while a child keeps dying young, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest the second side's child waits for the first side's first version (see
/// [`Recovery::start`]).
const SHARING_WAIT: Duration = Duration::from_secs(3600);

struct Keeper {
    /// The directory kept in versions.
    dir: PathBuf,
    /// `__versions__/KEY`.
    vdir: PathBuf,
    process: Option<Child>,
    /// The last line the running child wrote to its console.
    said: LastLine,
    started: Instant,
    backoff: Duration,
    next_start: Instant,
    /// Not started until the first side's store has a version (or `next_start`).
    waits_for_first: bool,
}

/// The two versioning children of one pair.
pub struct Recovery {
    config: Config,
    state_dir: PathBuf,
    keepers: Vec<Keeper>,
    /// Which versions the children keep: config.json's, overridden by twoway's options.
    retention: Retention,
    /// Options of the sync that the children take too.
    child_args: Vec<String>,
}

impl Recovery {
    /// Reads (or writes with defaults) the configuration, records both roots in `.info.json`
    /// and makes their version directories. Runs before any pass, so a bad configuration
    /// stops twoway before anything is synced.
    ///
    /// Fails, naming the file, on a bad configuration or `.info.json`.
    pub fn prepare(
        state_dir: &Path,
        config: &Path,
        roots: [&Path; 2],
        keep: Keep,
        child_args: Vec<String>,
    ) -> Result<Recovery, Error> {
        let config = Config::load_or_create(&state_dir.join(config))?;
        let retention = keep.over(config.retention);
        let keys = Info::register(state_dir, &roots)?;
        let mut keepers = Vec::new();
        for (dir, key) in roots.into_iter().zip(keys) {
            let vdir = state_dir.join(VERSIONS_DIR).join(&key);
            std::fs::create_dir_all(&vdir).map_err(|source| Error::StateUnreadable {
                path: vdir.clone(),
                source,
            })?;
            keepers.push(Keeper {
                dir: dir.to_path_buf(),
                vdir,
                process: None,
                said: LastLine::default(),
                started: Instant::now(),
                backoff: FIRST_BACKOFF,
                next_start: Instant::now(),
                waits_for_first: false,
            });
        }
        Ok(Recovery {
            config,
            state_dir: state_dir.to_path_buf(),
            keepers,
            retention,
            child_args,
        })
    }

    fn command(&self, i: usize, once: bool) -> Command {
        let keeper = &self.keepers[i];
        // The two sides hold mostly the same files once synced: each store shares them with
        // the other's rather than holding a second copy.
        let other = &self.keepers[1 - i].vdir;
        let mut cmd = Command::new(&self.config.program);
        cmd.arg(&keeper.dir)
            .arg(&keeper.vdir)
            .arg("--versioned")
            .arg("--link-dest")
            .arg(other)
            .args(&self.config.interval)
            .args(self.retention.args())
            .args(&self.child_args)
            .arg("--log")
            .arg(keeper.vdir.join("versionlogs.log"));
        if once {
            cmd.arg("--once");
        }
        // Its own process group: Ctrl+C reaches twoway only, which then stops the children
        // itself. Their console output is in their log files, but for what a child says
        // before it has one (a refused argument, a log it cannot open): its last line is
        // kept (see `LastLine`), to be shown if it fails.
        cmd.current_dir(&self.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        die_with_parent(&mut cmd);
        cmd
    }

    /// Starts both children (periodic mode): the first side's now, the second's once the
    /// first side's store holds a version. Started together, both would find no version to
    /// share and copy everything; and as a version links its own previous one first, two
    /// stores that began apart stay apart. Waiting costs little: the sides were just synced,
    /// so the first side's version holds the second's files too. The wait ends anyway if the
    /// first child stops or [`SHARING_WAIT`] passes (a first version that cannot be made, or
    /// takes that long), so the second side is never left without versions.
    pub fn start(&mut self) {
        self.spawn(0);
        log::info!(
            "recovery: the versioning of {} starts once {} has a version, to share its files",
            self.keepers[1].dir.display(),
            self.keepers[0].dir.display()
        );
        let second = &mut self.keepers[1];
        second.waits_for_first = true;
        second.next_start = Instant::now() + SHARING_WAIT;
    }

    /// Whether the first side's store holds a version, or its child is not running (then
    /// waiting for it is pointless).
    fn first_is_ready(&self) -> bool {
        self.keepers[0].process.is_none()
            || versioning::Store::open(&self.keepers[0].vdir).is_ok_and(|s| s.latest().is_some())
    }

    fn spawn(&mut self, i: usize) {
        let mut cmd = self.command(i, false);
        let keeper = &mut self.keepers[i];
        match cmd.spawn() {
            Ok(mut child) => {
                log::info!(
                    "recovery: keeping versions of {} in {} (pid {})",
                    keeper.dir.display(),
                    keeper.vdir.display(),
                    child.id()
                );
                keeper.said = LastLine::of(&mut child);
                keeper.process = Some(child);
                keeper.started = Instant::now();
            }
            Err(err) => {
                log::error!(
                    "recovery: cannot start {} for {}: {err}",
                    self.config.program.display(),
                    keeper.dir.display()
                );
                keeper.next_start = Instant::now() + keeper.backoff;
                keeper.backoff = (keeper.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Restarts a child that died (called while twoway waits between passes).
    pub fn watch(&mut self) {
        if sync_core::signal::stop_requested() {
            return;
        }
        for i in 0..self.keepers.len() {
            let keeper = &mut self.keepers[i];
            if let Some(child) = keeper.process.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                log::warn!(
                    "recovery: the versioning of {} stopped ({}){}; restarting it",
                    keeper.dir.display(),
                    describe(status),
                    keeper.said.as_reason()
                );
                keeper.process = None;
                // A child that keeps dying young is restarted ever more slowly.
                if keeper.started.elapsed() < Duration::from_secs(10) {
                    keeper.next_start = Instant::now() + keeper.backoff;
                    keeper.backoff = (keeper.backoff * 2).min(MAX_BACKOFF);
                } else {
                    keeper.backoff = FIRST_BACKOFF;
                    keeper.next_start = Instant::now();
                }
            }
            let keeper = &self.keepers[i];
            let due = Instant::now() >= keeper.next_start
                || (keeper.waits_for_first && self.first_is_ready());
            if keeper.process.is_none() && due {
                self.keepers[i].waits_for_first = false;
                self.spawn(i);
            }
        }
    }

    /// Stops the children: SIGTERM, then SIGKILL for any still running after the grace
    /// period.
    pub fn stop(&mut self) {
        for keeper in &mut self.keepers {
            if let Some(child) = keeper.process.as_ref()
                && let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + GRACE;
        for keeper in &mut self.keepers {
            let Some(mut child) = keeper.process.take() else {
                continue;
            };
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        log::warn!(
                            "recovery: the versioning of {} did not stop in time; killing it",
                            keeper.dir.display()
                        );
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// `--once`: one snapshot of each side, waited for; the worst exit code of the two.
    pub fn snapshot_once(&mut self) -> ExitCode {
        let mut worst = ExitCode::Success;
        // One after the other: the second side's snapshot shares the first's files.
        for (i, keeper) in self.keepers.iter().enumerate() {
            let run = self.command(i, true).spawn().and_then(|mut child| {
                let said = LastLine::of(&mut child);
                let status = child.wait()?;
                Ok((status, said))
            });
            let code = match run {
                Ok((s, _)) if s.success() => ExitCode::Success,
                Ok((s, mut said)) => {
                    let log = keeper.vdir.join("versionlogs.log");
                    let more = if log.exists() {
                        format!("; its log: {}", log.display())
                    } else {
                        String::new()
                    };
                    log::error!(
                        "recovery: the snapshot of {} failed ({}){}{more}",
                        keeper.dir.display(),
                        describe(s),
                        said.as_reason()
                    );
                    match s.code() {
                        Some(1) => ExitCode::PartialFailure,
                        // Ctrl+C in a terminal reaches the children too.
                        Some(3) => ExitCode::Interrupted,
                        _ => ExitCode::Usage,
                    }
                }
                Err(err) => {
                    log::error!(
                        "recovery: cannot run {}: {err}",
                        self.config.program.display()
                    );
                    ExitCode::Usage
                }
            };
            worst = worse(worst, code);
        }
        if worst == ExitCode::Success {
            log::info!("recovery: snapshots of both sides are up to date");
        }
        worst
    }
}

impl Drop for Recovery {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last line a child wrote to its console (its stderr, read to the end by a thread of
/// its own, so that the child never blocks on a full pipe): what it said when it failed.
#[derive(Default)]
struct LastLine(Option<JoinHandle<String>>);

impl LastLine {
    /// Reads `child`'s stderr, keeping its last non-empty line, until the child closes it.
    fn of(child: &mut Child) -> LastLine {
        LastLine(child.stderr.take().map(|stderr| {
            std::thread::spawn(move || {
                let mut last = String::new();
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if !line.trim().is_empty() {
                        last = line;
                    }
                }
                last
            })
        }))
    }

    /// `: it said "LINE"` (what the exited child said last, without its log prefix), or
    /// nothing. The child's end closed its stderr, which ends the reader.
    fn as_reason(&mut self) -> String {
        let line = self
            .0
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        let message = line.rsplit_once("] - ").map_or(line.as_str(), |(_, m)| m);
        if message.is_empty() {
            String::new()
        } else {
            format!(": it said \"{message}\"")
        }
    }
}

/// The worse of two exit codes (by number: a run that was stopped, 3, says so over a failure).
pub fn worse(a: ExitCode, b: ExitCode) -> ExitCode {
    if b.code() > a.code() { b } else { a }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// Asks the kernel to send the child SIGTERM if twoway dies without stopping it (a SIGKILL
/// gives twoway no chance to), so no versioning child ever outlives it.
fn die_with_parent(cmd: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec, and only makes two
    // async-signal-safe system calls (prctl, getppid); it allocates nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            // The parent may have died before the call above: then nobody will stop us.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other(
                    "twoway exited while starting a child",
                ));
            }
            Ok(())
        });
    }
}
