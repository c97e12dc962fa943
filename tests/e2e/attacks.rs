//! Attacks by a user who owns part of a tree (issue 20, root-safety): while the real `oneway`
//! or `twoway` runs as root, a real process of uid/gid 65534 swaps a directory it owns for a
//! symlink to a root-only directory, replaces a root it owns with such a link, hijacks a
//! restore's work directory, or leaves setuid files in SOURCE.
//! Each test fails if root read, wrote, chmodded or removed anything outside the trees it was
//! given, or handed the user a privilege.
//!
//! **Canaries.** Before the attack a test puts `vault/` (root, 0700) beside the trees, holding
//! `secret/` (root, 0700) whose files (root, 0600) carry [`MARKER`]; the attacker's links point
//! at `secret/`, and its files are named like the user's where the attack redirects an
//! operation on a name. Afterwards any change under `vault/` (content, mode, time, an entry
//! added or gone) fails the test, and so do the marker's bytes in any file of BACKUP, of a
//! version or of the other side (where the user could read them).
//!
//! **The attacker** is this very test binary, started again under `setpriv --reuid=65534
//! --regid=65534 --clear-groups` with arguments that run only the ignored test [`racer`], and
//! `ATTACK_*` variables saying what to do: exchange a directory with a symlink
//! (`renameat2(RENAME_EXCHANGE)` through rustix, since `unsafe` is denied) in a tight loop or
//! once, or watch a directory for root's restore work directory and exchange that. So it is
//! a separate process with another uid, as a real attacker is, and no extra binary ships. It
//! checks its own uid, stops when the test creates its stop file (or after [`RACER_LIFETIME`]),
//! and a looping one leaves the directory where it found it. For it to reach anything, each
//! fixture's temporary directory is made traversable (0711, not listable) and the binary is
//! copied where 65534 can run it if the build directory is out of its reach.
//!
//! **Timing.** Most racers are released by the test aid `ONEWAY_TEST_HOOK_AFTER_PLAN`: the
//! pass has scanned and planned, and the hook holds it until the racer is exchanging, so the
//! race is with the apply step, where the checks and the acts on paths are. One test lets a
//! racer run through whole passes instead, scan included. A racing test repeats its pass until
//! damage shows or [`RACE_BUDGET`] is spent: on a hole it fails fast, and once the hole is
//! closed it costs a few seconds.
//!
//! On the code before the root-safety work every test here fails: they pin the holes it closes.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// The test aid's variable (docs/testing.md, "The test aid").
const HOOK: &str = "ONEWAY_TEST_HOOK_AFTER_PLAN";

/// What every canary file holds (with its name after it); no user file ever does.
const MARKER: &[u8] = b"ROOT-ONLY CANARY 7d41c9e2";

/// The canaries' modification time (a year before the users' files' [`T0`]).
const CANARY_MTIME: i64 = T0 - 365 * 86_400;

/// How long a racing test keeps repeating its pass when nothing goes wrong.
const RACE_BUDGET: Duration = Duration::from_secs(2);

/// How long a racer lives at most, whatever the test does: nothing is left running.
const RACER_LIFETIME: Duration = Duration::from_secs(30);

/// How many exchanges a looping racer makes before it says it is ready: by then it is in its
/// loop, not starting up.
const WARM_UP: u64 = 64;

// ---------------------------------------------------------------------------------------------
// The attacker

/// What a racer does to whom.
#[derive(Clone, Copy)]
enum Attack<'a> {
    /// Exchange the directory `dir` with a symlink at `link` (same file system) to `target`,
    /// in a tight loop, until stopped; then put both back.
    Swap {
        dir: &'a Path,
        link: &'a Path,
        target: &'a Path,
    },
    /// The same exchange, once, and leave it so.
    SwapOnce {
        dir: &'a Path,
        link: &'a Path,
        target: &'a Path,
    },
    /// Watch `parent` until an entry that was not there appears (whatever root makes in the
    /// user's directory), then exchange it once with a symlink at `link` (in `parent`) to
    /// `target`.
    Hunt {
        parent: &'a Path,
        link: &'a Path,
        target: &'a Path,
    },
}

/// When a racer starts its attack.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// As soon as it runs.
    Now,
    /// When the pass's test hook ([`Racer::hook`]) fires, after the plan.
    AfterPlan,
}

/// The scene of the attacks of one fixture: its temporary directory made traversable by uid
/// 65534, `ctl/` (root's, readable) for the test's signals to its racers and their output, and
/// `attacker/` (65534's) for the racers' own signals.
struct Arena {
    ctl: PathBuf,
    mine: PathBuf,
    exe: PathBuf,
    racers: Cell<u32>,
}

impl Arena {
    fn new(root: &Path) -> Res<Arena> {
        for ancestor in root.ancestors().skip(1) {
            let mode = fs::metadata(ancestor)?.mode();
            ensure!(
                mode & 0o001 != 0,
                "{} (mode {:o}) cannot be traversed by uid {NOBODY}, so no attacker can reach \
                 the trees: set TMPDIR to a directory everyone can reach",
                ancestor.display(),
                mode & 0o7777
            );
        }
        chmod(root, 0o711)?;
        let ctl = mkdir(root, "ctl")?;
        chmod(&ctl, 0o755)?;
        let mine = mkdir(root, "attacker")?;
        chmod(&mine, 0o755)?;
        chown_tree(&mine, NOBODY, NOBODY)?;
        let exe = racer_exe(root)?;
        Ok(Arena {
            ctl,
            mine,
            exe,
            racers: Cell::new(0),
        })
    }

    /// Starts a racer of uid 65534 doing `attack`, from `start` on.
    fn racer(&self, attack: Attack<'_>, start: Start) -> Res<Racer> {
        let n = self.racers.get();
        self.racers.set(n + 1);
        let racer_start = self.ctl.join(format!("start-{n}"));
        let stop = self.ctl.join(format!("stop-{n}"));
        let ready = self.mine.join(format!("ready-{n}"));
        let out = self.ctl.join(format!("racer-{n}.out"));
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&self.exe)
            .args(["--exact", "attacks::racer", "--ignored", "--nocapture"])
            .current_dir(&self.mine)
            .env("ATTACK_STOP", &stop)
            .env("ATTACK_READY", &ready)
            .env("ATTACK_MILLIS", RACER_LIFETIME.as_millis().to_string());
        if start == Start::AfterPlan {
            cmd.env("ATTACK_START", &racer_start);
        }
        match attack {
            Attack::Swap { dir, link, target } | Attack::SwapOnce { dir, link, target } => {
                let mode = if matches!(attack, Attack::Swap { .. }) {
                    "swap"
                } else {
                    "once"
                };
                cmd.env("ATTACK_MODE", mode)
                    .env("ATTACK_DIR", dir)
                    .env("ATTACK_LINK", link)
                    .env("ATTACK_TARGET", target);
            }
            Attack::Hunt {
                parent,
                link,
                target,
            } => {
                cmd.env("ATTACK_MODE", "hunt")
                    .env("ATTACK_DIR", parent)
                    .env("ATTACK_LINK", link)
                    .env("ATTACK_TARGET", target);
            }
        }
        let log = File::create(&out)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot start the racer {cmd:?}: {e}")))?;
        Ok(Racer {
            child,
            start: racer_start,
            stop,
            ready,
            out,
        })
    }
}

/// The test binary as uid 65534 can run it: where the build left it if every directory above
/// it can be traversed by others, else a copy in `root/bin/`.
fn racer_exe(root: &Path) -> Res<PathBuf> {
    let exe = std::env::current_exe()?;
    let reachable = exe
        .ancestors()
        .skip(1)
        .all(|a| fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 != 0))
        && fs::metadata(&exe).is_ok_and(|m| m.mode() & 0o005 == 0o005);
    if reachable {
        return Ok(exe);
    }
    let bin = mkdir(root, "bin")?;
    chmod(&bin, 0o755)?;
    let copy = bin.join("e2e");
    // Copied by another process, as in `Env::run_as_nobody`: a copy open for writing here
    // while another test thread forks would make its exec fail with "Text file busy".
    let copied = Command::new("cp").arg(&exe).arg(&copy).status();
    ensure!(
        copied.as_ref().is_ok_and(|s| s.success()),
        "cannot copy {} to {}: {copied:?}",
        exe.display(),
        copy.display()
    );
    chmod(&copy, 0o755)?;
    Ok(copy)
}

/// A running attacker; killed when dropped.
struct Racer {
    child: Child,
    start: PathBuf,
    stop: PathBuf,
    ready: PathBuf,
    out: PathBuf,
}

impl Racer {
    /// The test hook that releases a racer started with [`Start::AfterPlan`] and holds the
    /// pass until the racer is at work (5 s at most).
    fn hook(&self) -> String {
        format!(
            ": > {start}; i=0; while [ ! -e {ready} ] && [ $i -lt 5000 ]; do sleep 0.001; \
             i=$((i+1)); done",
            start = q(&self.start),
            ready = q(&self.ready)
        )
    }

    /// Waits until the racer says it is at work.
    fn wait_ready(&mut self) -> TestResult {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        while !self.ready.exists() {
            if let Some(status) = self.child.try_wait()? {
                return Err(fail(format!(
                    "the racer ended ({}) before it was ready:\n{}",
                    describe_status(status),
                    self.output()
                )));
            }
            ensure!(
                Instant::now() < deadline,
                "the racer was not ready within {WAIT_TIMEOUT:?}:\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Stops the racer, waits for it, and returns its report ("N exchanges in T ms", ...).
    fn stop(&mut self) -> Res<String> {
        fs::write(&self.stop, "")?;
        let deadline = Instant::now() + WAIT_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                self.child.kill()?;
                self.child.wait()?;
                return Err(fail(format!(
                    "the racer did not stop within {WAIT_TIMEOUT:?}:\n{}",
                    self.output()
                )));
            }
            thread::sleep(Duration::from_millis(1));
        };
        let out = self.output();
        ensure!(
            status.success(),
            "the racer failed ({}):\n{out}",
            describe_status(status)
        );
        out.lines()
            .find_map(|l| l.strip_prefix("racer report: "))
            .map(str::to_owned)
            .ok_or_else(|| fail(format!("the racer did not run (no report):\n{out}")))
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The attacker's main, run by this module's tests as uid 65534 (see the module doc); without
/// `ATTACK_MODE` it does nothing, so running the ignored tests does no harm.
#[test]
#[ignore = "the attacker's entry point: this module's tests run it as uid 65534"]
fn racer() -> TestResult {
    let Some(mode) = std::env::var_os("ATTACK_MODE") else {
        return Ok(());
    };
    let uid = rustix::process::getuid().as_raw();
    ensure!(
        uid == NOBODY,
        "the racer runs as uid {uid}: it must be the unprivileged {NOBODY}"
    );
    let var = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .ok_or_else(|| fail(format!("{name} is not set")))
    };
    let millis: u64 = std::env::var("ATTACK_MILLIS")?.parse()?;
    let knobs = Knobs {
        start: std::env::var_os("ATTACK_START").map(PathBuf::from),
        ready: var("ATTACK_READY")?,
        stop: var("ATTACK_STOP")?,
        deadline: Instant::now() + Duration::from_millis(millis),
    };
    let (dir, link) = (var("ATTACK_DIR")?, var("ATTACK_LINK")?);
    // The link appears only once released: a scan must not find it in the tree.
    if !knobs.wait_start() {
        println!("racer report: never released");
        return Ok(());
    }
    std::os::unix::fs::symlink(var("ATTACK_TARGET")?, &link)
        .context(|| format!("create the symlink {}", link.display()))?;
    let report = match mode.to_str() {
        Some("swap") => swap(&dir, &link, &knobs, false),
        Some("once") => swap(&dir, &link, &knobs, true),
        Some("hunt") => hunt(&dir, &link, &knobs),
        _ => Err(fail(format!("unknown ATTACK_MODE {mode:?}"))),
    }?;
    println!("racer report: {report}");
    Ok(())
}

/// A racer's signals and bound.
struct Knobs {
    /// Wait for this file before attacking, if given.
    start: Option<PathBuf>,
    /// Created once at work.
    ready: PathBuf,
    /// Stop once this file exists.
    stop: PathBuf,
    deadline: Instant,
}

impl Knobs {
    /// Waits for the release, if one is awaited; false if told to stop first (a pass that
    /// ended before its plan never fires its hook).
    fn wait_start(&self) -> bool {
        if let Some(start) = &self.start {
            while !start.exists() {
                if self.should_stop() {
                    return false;
                }
                thread::sleep(Duration::from_micros(200));
            }
        }
        true
    }

    fn say_ready(&self) -> TestResult {
        File::create(&self.ready).context(|| format!("create {}", self.ready.display()))?;
        Ok(())
    }

    fn should_stop(&self) -> bool {
        self.stop.exists() || Instant::now() >= self.deadline
    }
}

/// The directory holding `path`, held open (`O_PATH`), and `path`'s name in it: exchanges by
/// name beneath held directories cost the racer no path walk, so it flips faster.
fn parent_and_name(path: &Path) -> Res<(rustix::fd::OwnedFd, &OsStr)> {
    use rustix::fs::{Mode, OFlags};
    let parent = path.parent().ok_or_else(|| fail("no parent"))?;
    let name = path.file_name().ok_or_else(|| fail("no name"))?;
    let fd = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(format!("open {}: {e}", parent.display())))?;
    Ok((fd, name))
}

/// Exchanges `dir` and `link` once (`once`), or again and again until told to stop, then puts
/// them back.
fn swap(dir: &Path, link: &Path, knobs: &Knobs, once: bool) -> Res<String> {
    use rustix::fs::{RenameFlags, renameat_with};
    let (dir_parent, dir_name) = parent_and_name(dir)?;
    let (link_parent, link_name) = parent_and_name(link)?;
    let exchange = || {
        renameat_with(
            &dir_parent,
            dir_name,
            &link_parent,
            link_name,
            RenameFlags::EXCHANGE,
        )
    };
    let began = Instant::now();
    if once {
        exchange().map_err(|e| fail(format!("exchange {}: {e}", dir.display())))?;
        knobs.say_ready()?;
        return Ok("1 exchange".into());
    }
    let mut done = 0u64;
    let fault = loop {
        if let Err(e) = exchange() {
            break Some(e);
        }
        done += 1;
        if done == WARM_UP {
            knobs.say_ready()?;
        }
        // Checked every 64 exchanges, an even number: the loop ends with both put back.
        if done.is_multiple_of(64) && knobs.should_stop() {
            break None;
        }
    };
    if done % 2 == 1 {
        let _ = exchange();
    }
    let _ = fs::remove_file(link);
    let took = began.elapsed().as_millis();
    match fault {
        None => Ok(format!("{done} exchanges in {took} ms")),
        Some(e) => Err(fail(format!(
            "exchange of {} and {} failed after {done} exchanges: {e}",
            dir.display(),
            link.display()
        ))),
    }
}

/// Watches `parent` for an entry that was not there when it began, and exchanges it with `link`
/// (already there) once.
fn hunt(parent: &Path, link: &Path, knobs: &Knobs) -> Res<String> {
    use rustix::fs::{RenameFlags, renameat_with};
    let (link_parent, link_name) = parent_and_name(link)?;
    let mut known = std::collections::HashSet::new();
    for entry in fs::read_dir(parent)? {
        known.insert(entry?.file_name());
    }
    knobs.say_ready()?;
    let mut looks = 0u64;
    while !knobs.should_stop() {
        looks += 1;
        for entry in fs::read_dir(parent)? {
            let name = entry?.file_name();
            if !known.contains(&name) {
                renameat_with(
                    &link_parent,
                    &name,
                    &link_parent,
                    link_name,
                    RenameFlags::EXCHANGE,
                )
                .map_err(|e| fail(format!("exchange {name:?}: {e}")))?;
                return Ok(format!("exchanged {name:?} after {looks} looks"));
            }
        }
    }
    let _ = fs::remove_file(link);
    Ok(format!(
        "saw nothing new in {} ({looks} looks)",
        parent.display()
    ))
}

// ---------------------------------------------------------------------------------------------
// Canaries

/// Root's private files beside the trees: `vault/secret/NAME`, as described in the module doc.
struct Canary {
    vault: PathBuf,
    /// `vault/secret`, where the attacker's links point.
    dir: PathBuf,
    before: Snapshot,
}

impl Canary {
    /// Root-only canary files named `names` in `root/vault/secret/`.
    fn new(root: &Path, names: &[String]) -> Res<Canary> {
        let vault = mkdir(root, "vault")?;
        let dir = mkdir(&vault, "secret")?;
        for name in names {
            let path = write(&dir, name, canary_bytes(name))?;
            chmod(&path, 0o600)?;
            // Not the users' files' time, so that setting it through a link shows.
            set_mtime(&path, CANARY_MTIME, 0)?;
        }
        chmod(&dir, 0o700)?;
        set_mtime(&dir, CANARY_MTIME, 0)?;
        chmod(&vault, 0o700)?;
        let before = snapshot(&vault)?;
        Ok(Canary { vault, dir, before })
    }

    /// Fails, saying how many canaries changed and how, unless `vault/` is exactly as it was.
    fn expect_untouched(&self, context: &str) -> TestResult {
        let now = snapshot(&self.vault)?;
        let (mut modes, mut contents, mut times, mut added, mut gone) = (0, 0, 0, 0, 0);
        let mut examples = Vec::new();
        for (rel, was) in &self.before {
            match now.get(rel) {
                None => {
                    gone += 1;
                    examples.push(format!("gone: {rel:?}"));
                }
                Some(is) if is != was => {
                    if is.mode != was.mode {
                        modes += 1;
                    }
                    if is.node != was.node {
                        contents += 1;
                    }
                    if is.mtime != was.mtime {
                        times += 1;
                    }
                    examples.push(format!("{rel:?}: was {was}; now {is}"));
                }
                Some(_) => {}
            }
        }
        for (rel, is) in &now {
            if !self.before.contains_key(rel) {
                added += 1;
                examples.push(format!("new: {rel:?}: {is}"));
            }
        }
        if examples.is_empty() {
            return Ok(());
        }
        examples.truncate(8);
        Err(fail(format!(
            "{context}\nroot changed the root-only canary directory {} outside the trees \
             ({} entries): {modes} modes changed, {contents} contents changed, {times} mtimes \
             changed, {added} entries added, {gone} entries gone; for example:\n  {}",
            self.dir.display(),
            self.before.len(),
            examples.join("\n  ")
        )))
    }
}

/// What the canary file `name` holds.
fn canary_bytes(name: &str) -> Vec<u8> {
    let mut bytes = MARKER.to_vec();
    bytes.extend_from_slice(format!(" {name}\n").as_bytes());
    bytes
}

/// Fails if any regular file under `dir` (links never followed) holds canary bytes: root read
/// a root-only file and put its bytes where the user can read them.
fn expect_no_canary_bytes(what: &str, dir: &Path, context: &str) -> TestResult {
    let leaked: Vec<PathBuf> = snapshot(dir)?
        .into_iter()
        .filter(|(_, entry)| match &entry.node {
            Node::File(Content::Bytes(b)) => b.windows(MARKER.len()).any(|w| w == MARKER),
            _ => false,
        })
        .map(|(rel, _)| rel)
        .collect();
    ensure!(
        leaked.is_empty(),
        "{context}\n{} files in {what} ({}) hold the bytes of root-only canary files: root read \
         them through the user's link; for example {:?}",
        leaked.len(),
        dir.display(),
        &leaked[..leaked.len().min(5)]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// `path` quoted for `sh`.
fn q(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// `prefix0000`, `prefix0001`, ... (`n` names).
fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

/// Writes the user's file `dir/rel` with mode 0644 and mtime `mtime`.
fn user_file(dir: &Path, rel: &str, mtime: i64) -> TestResult {
    let path = write(dir, rel, format!("the user's {rel}, at {mtime}\n"))?;
    chmod(&path, 0o644)?;
    set_mtime(&path, mtime, 0)
}

/// Runs `PROGRAM --once EXTRA... FROM TO` with the test hook `hook`.
fn once_hooked(
    env: &Env,
    extra: &[&dyn AsRef<OsStr>],
    from_to: [&Path; 2],
    hook: &str,
) -> Res<Run> {
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"--once"];
    args.extend_from_slice(extra);
    args.push(&from_to[0]);
    args.push(&from_to[1]);
    let mut cmd = env.command(&args);
    cmd.env(HOOK, hook);
    env.run_command(cmd, &env.log)
}

/// The exit status and summary of a run, for a failure message.
fn brief(run: &Run) -> String {
    let summary = run
        .lines()
        .into_iter()
        .filter(|l| l.message.starts_with("pass "))
        .map(|l| l.message)
        .next_back()
        .unwrap_or_else(|| "no summary line".into());
    format!("{}, `{summary}`", describe_status(run.status))
}

/// Runs `round(0)`, `round(1)`, ... until one fails (its error is the test's) or
/// [`RACE_BUDGET`] is spent.
fn race_rounds(mut round: impl FnMut(usize) -> TestResult) -> TestResult {
    let began = Instant::now();
    let mut n = 0;
    while n == 0 || began.elapsed() < RACE_BUDGET {
        round(n)?;
        n += 1;
    }
    eprintln!("{n} rounds in {:?}: no damage", began.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. twoway's mode changes: lstat, then chmod by path

/// Files in the user's directory whose modes twoway carries, per round (see [`REMOVE_FILES`]
/// on why not more).
const MODE_FILES: usize = 400;

/// twoway checks a file with `lstat` and then chmods it by path: a user who exchanges the
/// directory holding it (theirs) with a link to a root-only directory between the two makes
/// root chmod root's file of the same name, 0600 becoming 0666.
#[test]
fn twoway_mode_changes_never_chmod_through_a_directory_swapped_for_a_link() -> TestResult {
    let env = Env::twoway()?;
    let arena = Arena::new(&env.root)?;
    let names = numbered("f", MODE_FILES);
    let u = env.src.join("u");
    for name in &names {
        user_file(&u, name, T0)?;
    }
    let canary = Canary::new(&env.root, &names)?;
    chown_tree(&env.src, NOBODY, NOBODY)?;
    env.once(&[])?.expect_code(0)?;
    let link = env.src.join(".u-swap");
    race_rounds(|round| {
        // The other side's modes change (the user's own files there), so twoway chmods all of
        // SOURCE/u.
        let mode = if round % 2 == 0 { 0o666 } else { 0o664 };
        for name in &names {
            chmod(&env.dst.join("u").join(name), mode)?;
        }
        let attack = Attack::Swap {
            dir: &u,
            link: &link,
            target: &canary.dir,
        };
        let mut racer = arena.racer(attack, Start::AfterPlan)?;
        let run = once_hooked(&env, &[], [&env.src, &env.dst], &racer.hook())?;
        let report = racer.stop()?;
        canary.expect_untouched(&format!(
            "round {round}: twoway carried {MODE_FILES} mode changes (to {mode:o}) into \
             SOURCE/u while uid {NOBODY} exchanged SOURCE/u with a link to the canaries \
             ({report}); twoway: {}",
            brief(&run)
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Copies: parents checked, then created by path

/// New files per round in the user's directory, for the copy races (see [`REMOVE_FILES`] on
/// why not more).
const COPY_FILES: usize = 200;

/// Which side a copy race writes.
#[derive(Clone, Copy)]
enum Written {
    /// `oneway`: BACKUP, a mirror.
    Mirror,
    /// `twoway`, SOURCE → BACKUP.
    TwowayBackup,
    /// `twoway`, BACKUP → SOURCE.
    TwowaySource,
}

/// A pass copies [`COPY_FILES`] new files into `u/` of the written side, whose root the user
/// owns, while the user exchanges that `u/` with a link to a root-only directory: every copy
/// must land in the tree or nowhere, never among the canaries.
fn copies_race(written: Written) -> TestResult {
    let env = match written {
        Written::Mirror => Env::new()?,
        Written::TwowayBackup | Written::TwowaySource => Env::twoway()?,
    };
    let arena = Arena::new(&env.root)?;
    let (from, to) = match written {
        Written::Mirror | Written::TwowayBackup => (&env.src, &env.dst),
        Written::TwowaySource => (&env.dst, &env.src),
    };
    user_file(from, "u/keep.txt", T0)?;
    let canary = Canary::new(&env.root, &numbered("secret-", 8))?;
    env.once(&[])?.expect_code(0)?;
    // The written side lies where the user can write (a home, a shared disk): its root is
    // theirs, its `u/` whoever's the program made it.
    chown_tree(from, NOBODY, NOBODY)?;
    std::os::unix::fs::lchown(to, Some(NOBODY), Some(NOBODY))?;
    let (u, link) = (to.join("u"), to.join(".u-swap"));
    race_rounds(|round| {
        for i in 0..COPY_FILES {
            user_file(from, &format!("u/r{round}-{i:04}"), T0)?;
        }
        let attack = Attack::Swap {
            dir: &u,
            link: &link,
            target: &canary.dir,
        };
        let mut racer = arena.racer(attack, Start::AfterPlan)?;
        let run = once_hooked(&env, &[], [&env.src, &env.dst], &racer.hook())?;
        let report = racer.stop()?;
        canary.expect_untouched(&format!(
            "round {round}: {} copied {COPY_FILES} new files into {}/u while uid {NOBODY} \
             exchanged that directory with a link to the canaries ({report}); {}: {}",
            env.program.name(),
            if to == &env.dst { "BACKUP" } else { "SOURCE" },
            env.program.name(),
            brief(&run)
        ))
    })
}

#[test]
fn mirror_copies_never_land_outside_backup_through_a_directory_swapped_for_a_link() -> TestResult {
    copies_race(Written::Mirror)
}

#[test]
fn twoway_copies_never_land_outside_backup_through_a_directory_swapped_for_a_link() -> TestResult {
    copies_race(Written::TwowayBackup)
}

#[test]
fn twoway_copies_never_land_outside_source_through_a_directory_swapped_for_a_link() -> TestResult {
    copies_race(Written::TwowaySource)
}

// ---------------------------------------------------------------------------------------------
// 2b. Removals: lstat, compare, then unlink by path

/// Files a removal race deletes per round (a few hundred: the race is won or lost by whole
/// passes, as the two processes share the CPUs, so more short rounds beat fewer long ones).
const REMOVE_FILES: usize = 200;

/// Removals have the shape of the mode changes above: a pass removes [`REMOVE_FILES`] files
/// from BACKUP/u (BACKUP's root is the user's) while the user exchanges BACKUP/u with a link
/// to root's files of the same names, none of which may go. For a mirror they are files
/// SOURCE lacks; for twoway, files synced and then deleted from SOURCE.
fn removals_race(program: Program) -> TestResult {
    let env = match program {
        Program::Oneway => Env::new()?,
        Program::Twoway => Env::twoway()?,
    };
    let arena = Arena::new(&env.root)?;
    let names = numbered("f", REMOVE_FILES);
    user_file(&env.src, "u/keep.txt", T0)?;
    let canary = Canary::new(&env.root, &names)?;
    // BACKUP's root is the user's (and keeps that owner, SOURCE's root's, when passes carry
    // it over).
    for root in [&env.src, &env.dst] {
        std::os::unix::fs::lchown(root, Some(NOBODY), Some(NOBODY))?;
    }
    env.once(&[])?.expect_code(0)?;
    let (u, link) = (env.dst.join("u"), env.dst.join(".u-swap"));
    race_rounds(|round| {
        if program == Program::Oneway {
            // A mirror removes from BACKUP whatever SOURCE lacks: put it there directly.
            for name in &names {
                // A new file each round, also where an earlier round left one.
                let _ = fs::remove_file(u.join(name));
                write(&u, name, format!("round {round}\n"))?;
            }
        } else {
            // twoway removes what was synced and then deleted on one side.
            for name in &names {
                write(&env.src, format!("u/{name}"), format!("round {round}\n"))?;
            }
            env.once(&[])?;
            for name in &names {
                fs::remove_file(env.src.join("u").join(name))?;
            }
        }
        let attack = Attack::Swap {
            dir: &u,
            link: &link,
            target: &canary.dir,
        };
        let mut racer = arena.racer(attack, Start::AfterPlan)?;
        // --force: the pass deletes nearly all of BACKUP, which is what the user asked for.
        let run = once_hooked(&env, &[&"--force"], [&env.src, &env.dst], &racer.hook())?;
        let report = racer.stop()?;
        canary.expect_untouched(&format!(
            "round {round}: {} removed {REMOVE_FILES} files from BACKUP/u while uid {NOBODY} \
             exchanged that directory with a link to root's files of the same names ({report}); \
             {}: {}",
            env.program.name(),
            env.program.name(),
            brief(&run)
        ))
    })
}

#[test]
fn mirror_removals_never_unlink_through_a_directory_swapped_for_a_link() -> TestResult {
    removals_race(Program::Oneway)
}

#[test]
fn twoway_removals_never_unlink_through_a_directory_swapped_for_a_link() -> TestResult {
    removals_race(Program::Twoway)
}

// ---------------------------------------------------------------------------------------------
// 3. Reads: a source directory swapped for a link after the scan

/// Files in the user's directory that a pass reads, for the read races.
const READ_FILES: usize = 200;

/// After the plan, the user exchanges SOURCE/u (theirs, with [`READ_FILES`] new files) with a
/// link to root's files of the same names, once: root must not copy them into `to` (BACKUP,
/// or a version with `--versioned`), where the user could read them.
fn read_after_plan(versioned: bool) -> TestResult {
    let env = Env::new()?;
    let arena = Arena::new(&env.root)?;
    let names = numbered("f", READ_FILES);
    user_file(&env.src, "u/keep.txt", T0)?;
    let canary = Canary::new(&env.root, &names)?;
    chown_tree(&env.src, NOBODY, NOBODY)?;
    let extra: Vec<&dyn AsRef<OsStr>> = if versioned {
        vec![&"--versioned"]
    } else {
        Vec::new()
    };
    env.once(&extra)?.expect_code(0)?;
    for name in &names {
        user_file(&env.src, &format!("u/{name}"), T0 + 1)?;
    }
    chown_tree(&env.src, NOBODY, NOBODY)?;
    let (u, link) = (env.src.join("u"), env.src.join(".u-swap"));
    let attack = Attack::SwapOnce {
        dir: &u,
        link: &link,
        target: &canary.dir,
    };
    let mut racer = arena.racer(attack, Start::AfterPlan)?;
    let run = once_hooked(&env, &extra, [&env.src, &env.dst], &racer.hook())?;
    let report = racer.stop()?;
    let context = format!(
        "oneway{} planned to copy {READ_FILES} new files of SOURCE/u, then uid {NOBODY} \
         exchanged SOURCE/u with a link to root's files of the same names ({report}); oneway: {}",
        if versioned { " --versioned" } else { "" },
        brief(&run)
    );
    canary.expect_untouched(&context)?;
    let what = if versioned { "the versions" } else { "BACKUP" };
    expect_no_canary_bytes(what, &env.dst, &context)
}

#[test]
fn mirror_never_reads_through_a_source_directory_swapped_for_a_link_after_the_plan() -> TestResult {
    read_after_plan(false)
}

#[test]
fn versioned_pass_never_reads_through_a_source_directory_swapped_for_a_link_after_the_plan()
-> TestResult {
    read_after_plan(true)
}

/// The same attack with the racer running freely through whole passes, scan included: the
/// user rewrites SOURCE/u before every round so that both a mirror and a versioned pass copy
/// all of it again.
#[test]
fn source_directory_swapped_throughout_passes_is_never_read_through() -> TestResult {
    let env = Env::new()?;
    let arena = Arena::new(&env.root)?;
    let vdir = mkdir(&env.root, "versions")?;
    let names = numbered("f", READ_FILES);
    for name in &names {
        user_file(&env.src, &format!("u/{name}"), T0)?;
    }
    // Enough elsewhere that a pass seeing SOURCE/u as a link is no mass deletion.
    for i in 0..READ_FILES {
        user_file(&env.src, &format!("other/o{i:04}"), T0)?;
    }
    let canary = Canary::new(&env.root, &names)?;
    chown_tree(&env.src, NOBODY, NOBODY)?;
    let versioned: [&dyn AsRef<OsStr>; 4] = [&"--once", &"--versioned", &env.src, &vdir];
    env.once(&[])?.expect_code(0)?;
    env.run(&versioned)?.expect_code(0)?;
    let (u, link) = (env.src.join("u"), env.src.join(".u-swap"));
    race_rounds(|round| {
        let stamp = T0 + 10 + i64::try_from(round)?;
        for name in &names {
            let path = u.join(name);
            fs::write(&path, format!("the user's {name}, round {round}\n"))?;
            set_mtime(&path, stamp, 0)?;
        }
        let attack = Attack::Swap {
            dir: &u,
            link: &link,
            target: &canary.dir,
        };
        let mut racer = arena.racer(attack, Start::Now)?;
        racer.wait_ready()?;
        let mirror = env.once(&[])?;
        let version = env.run(&versioned)?;
        let report = racer.stop()?;
        let context = format!(
            "round {round}: uid {NOBODY} exchanged SOURCE/u with a link to root's files of the \
             same names throughout a mirror pass ({}) and a versioned pass ({}): {report}",
            brief(&mirror),
            brief(&version)
        );
        canary.expect_untouched(&context)?;
        expect_no_canary_bytes("BACKUP", &env.dst, &context)?;
        expect_no_canary_bytes("the versions", &vdir, &context)
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Roots resolved again at every pass

/// Files in the user's SOURCE of a periodic run (the canaries have the same names, so the
/// pass after the swap replaces rather than deletes, and no refusal hides the hole).
const ROOT_FILES: usize = 5;

/// A periodic run over `root/home/src` (the user's, in their home) and BACKUP; after its first
/// pass, `prepare` runs, the user replaces `src` with a link to root's directory, and the test
/// waits for two more passes (or refusals), then checks the canaries and BACKUP. What is
/// asserted is what the user could gain, nothing of the canaries read or changed: whether a
/// later pass is refused (as issue 20 asks) or goes on with the directory opened at start is
/// the program's choice.
fn root_replaced(env: &Env, prepare: impl FnOnce() -> TestResult) -> TestResult {
    let arena = Arena::new(&env.root)?;
    let home = mkdir(&env.root, "home")?;
    let src = mkdir(&home, "src")?;
    let names = numbered("notes-", ROOT_FILES);
    for name in &names {
        user_file(&src, name, T0)?;
    }
    let canary = Canary::new(&env.root, &names)?;
    chown_tree(&home, NOBODY, NOBODY)?;
    let mut periodic = env.spawn(&[&"--interval", &"1", &src, &env.dst])?;
    periodic.wait_for_first_pass(env)?;
    prepare()?;
    let from = env.log_text().len();
    let attack = Attack::SwapOnce {
        dir: &src,
        link: &home.join("src-link"),
        target: &canary.dir,
    };
    let mut racer = arena.racer(attack, Start::Now)?;
    let report = racer.stop()?;
    ensure!(
        kind_of(&src)? == Some("symlink"),
        "the user's exchange did not leave SOURCE a link ({report})"
    );
    // Two passes (a refused one logs an error instead of a summary): the swap lands well
    // within the one-second interval, but even if the first pass after it had begun before
    // it, the second starts after it.
    let text = periodic.wait_for_log(env, "two passes after the swap", WAIT_TIMEOUT, |t| {
        passes_or_refusals(t.get(from..).unwrap_or("")) >= 2
    })?;
    periodic.kill()?;
    let context = format!(
        "after its first pass, uid {NOBODY} replaced SOURCE ({}) with a link to the root-only \
         canary directory; the periodic {} went on:\n{}",
        src.display(),
        env.program.name(),
        text.get(from..).unwrap_or("")
    );
    canary.expect_untouched(&context)?;
    expect_no_canary_bytes("BACKUP", &env.dst, &context)
}

/// The summary and error lines in a stretch of log text.
fn passes_or_refusals(text: &str) -> usize {
    text.lines()
        .filter_map(parse_log_line)
        .filter(|l| l.level == "ERROR" || parse_summary(&l.message).is_some())
        .count()
}

#[test]
fn periodic_oneway_never_reads_a_source_root_replaced_by_a_link() -> TestResult {
    let env = Env::new()?;
    root_replaced(&env, || Ok(()))
}

#[test]
fn periodic_twoway_never_writes_or_reads_through_a_source_root_replaced_by_a_link() -> TestResult {
    let env = Env::twoway()?;
    // Something new on the other side for twoway to carry into (what it takes for) SOURCE.
    root_replaced(&env, || {
        write(&env.dst, "planted.txt", "the user's planted file\n")?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// 5. Restore: the work directory beside DIR

/// `twoway DIR --restore` builds the restored tree in `PARENT/.DIR.restore-XXXXXX`, then fills
/// it by path; the user owning PARENT exchanges that work directory (whatever new entry
/// appears there) with a link to a root-only directory: root must write nothing there, and DIR
/// must not end up as that link.
#[test]
fn restore_never_writes_through_its_work_directory_swapped_for_a_link() -> TestResult {
    let env = Env::for_program(Program::Twoway)?;
    let arena = Arena::new(&env.root)?;
    let home = mkdir(&env.root, "home")?;
    let src = mkdir(&home, "src")?;
    // At the top of DIR: today a file in a subdirectory is guarded by the check that its
    // parents below the work directory are directories, which says nothing of the work
    // directory itself; a failed file would also stop the restore before its swap.
    for i in 0..500 {
        user_file(&src, &format!("f{i:04}"), T0)?;
    }
    let canary = Canary::new(&env.root, &numbered("secret-", 8))?;
    chown_tree(&home, NOBODY, NOBODY)?;
    // The recovery system (config.json, the first versions) as a user sets it up.
    env.run(&[&"--once", &src, &env.dst])?.expect_code(0)?;
    ensure!(
        env.root.join("__versions__/src").is_dir(),
        "no versions of SOURCE after the first run:\n{}",
        env.log_text()
    );
    let link = home.join(".attack-link");
    let mut tries = Vec::new();
    let began = Instant::now();
    loop {
        let attack = Attack::Hunt {
            parent: &home,
            link: &link,
            target: &canary.dir,
        };
        let mut racer = arena.racer(attack, Start::Now)?;
        racer.wait_ready()?;
        let run = env.run(&[&src, &"--restore"])?;
        let report = racer.stop()?;
        let hit = report.starts_with("exchanged");
        tries.push(format!("{report}; twoway --restore: {}", brief(&run)));
        let context = format!(
            "uid {NOBODY}, owning {}, exchanged what twoway --restore made there (its work \
             directory) with a link to the canaries: {}",
            home.display(),
            tries.join("; then ")
        );
        canary.expect_untouched(&context)?;
        ensure!(
            kind_of(&src)? != Some("symlink"),
            "{context}\nthe restored {} is the user's link {:?}",
            src.display(),
            read_link(&src)?
        );
        // A restore that makes nothing beside DIR leaves the attacker nothing to take; the
        // code of today always does (`.src.restore-XXXXXX`), and the racer always catches it.
        if hit || began.elapsed() >= RACE_BUDGET {
            eprintln!("{}", tries.join("; "));
            return Ok(());
        }
        if kind_of(&link)?.is_some() {
            fs::remove_file(&link)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. setuid and setgid bits on copies root owns

/// Puts the user's privileged entries in `dir`: `suid` (4755), `both` (6755), `plain` (0755)
/// files and the directory `shared` (2777), all owned by uid and gid 65534.
fn privileged_entries(dir: &Path) -> TestResult {
    for name in ["suid", "both", "plain"] {
        write(dir, name, format!("#!/bin/sh\necho {name}\n"))?;
    }
    mkdir(dir, "shared")?;
    write(dir, "shared/inside.txt", "inside\n")?;
    chown_tree(dir, NOBODY, NOBODY)?;
    // After the chown, which clears these bits.
    for (name, mode) in [
        ("suid", 0o4755),
        ("both", 0o6755),
        ("plain", 0o755),
        ("shared", 0o2777),
    ] {
        chmod(&dir.join(name), mode)?;
    }
    Ok(())
}

/// Fails if a copy in `copies` owned by someone else than its original in `originals` keeps
/// a setuid or setgid bit (a file), or is a setgid directory anyone may write.
fn expect_no_privilege_given(what: &str, originals: &Path, copies: &Path, run: &Run) -> TestResult {
    let mut wrong = Vec::new();
    for (rel, copy) in snapshot(copies)? {
        let original = originals.join(&rel);
        let (Ok(orig), Ok(meta)) = (
            fs::symlink_metadata(&original),
            fs::symlink_metadata(copies.join(&rel)),
        ) else {
            continue;
        };
        let Some(mode) = copy.mode else { continue };
        if meta.uid() == orig.uid() && meta.gid() == orig.gid() {
            continue;
        }
        let given = match copy.node {
            Node::File(_) => mode & 0o6000 != 0,
            Node::Dir => mode & 0o2000 != 0 && mode & 0o002 != 0,
            _ => false,
        };
        if given {
            wrong.push(format!(
                "{rel:?}: mode {mode:04o}, owner {}:{} (the user's original: {:04o}, {}:{})",
                meta.uid(),
                meta.gid(),
                orig.mode() & 0o7777,
                orig.uid(),
                orig.gid()
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "{what} ({}) gives the user's setuid/setgid bits to copies they do not own:\n  {}\n{run}",
        copies.display(),
        wrong.join("\n  ")
    );
    Ok(())
}

/// Fails unless the pass logged exactly one warning about the setuid/setgid bits it dropped.
fn expect_setuid_warning(run: &Run) -> TestResult {
    let warnings = run
        .lines()
        .into_iter()
        .filter(|l| l.level == "WARNING" && l.message.to_lowercase().contains("setuid"))
        .count();
    ensure!(
        warnings == 1,
        "expected one warning line about the setuid/setgid bits dropped, found {warnings}\n{run}"
    );
    Ok(())
}

// Run as root, copies keep their owner (and so their bits) unless `--no-owner` says not to:
// then they are root's, and must not keep the bits.

/// A mirror pass copies them (first copy), then the user sets the bit on `plain` and the next
/// pass carries that mode: neither may give root-owned copies the bits.
#[test]
fn mirror_never_gives_root_owned_copies_the_users_setuid_or_setgid_bits() -> TestResult {
    let env = Env::new()?;
    privileged_entries(&env.src)?;
    let run = env.once(&[&"--no-owner"])?;
    expect_no_privilege_given("BACKUP", &env.src, &env.dst, &run)?;
    expect_setuid_warning(&run)?;
    chmod(&env.src.join("plain"), 0o4755)?;
    let run = env.once(&[&"--no-owner"])?;
    expect_no_privilege_given("BACKUP, after plain became 4755", &env.src, &env.dst, &run)?;
    expect_setuid_warning(&run)
}

#[test]
fn versions_never_give_root_owned_copies_the_users_setuid_or_setgid_bits() -> TestResult {
    let env = Env::new()?;
    privileged_entries(&env.src)?;
    let run = env.once(&[&"--versioned", &"--no-owner"])?;
    run.expect_code(0)?;
    let latest = env.dst.join("_1");
    expect_no_privilege_given("the latest version", &env.src, &latest, &run)?;
    expect_setuid_warning(&run)
}

/// twoway carries them to BACKUP, then the user's later chmod of `plain` to 4755.
#[test]
fn twoway_never_gives_root_owned_copies_the_users_setuid_or_setgid_bits() -> TestResult {
    let env = Env::twoway()?;
    privileged_entries(&env.src)?;
    let run = env.once(&[&"--no-owner"])?;
    expect_no_privilege_given("BACKUP", &env.src, &env.dst, &run)?;
    expect_setuid_warning(&run)?;
    chmod(&env.src.join("plain"), 0o4755)?;
    let run = env.once(&[&"--no-owner"])?;
    expect_no_privilege_given("BACKUP, after plain became 4755", &env.src, &env.dst, &run)?;
    expect_setuid_warning(&run)
}

/// A new version shares the inode of an unchanged file with the previous version's file at the
/// same path. Versions keep SOURCE's owners, so the user owns their directories in the
/// previous version too: after the plan the user exchanges `u/` there with a link to root's
/// files of the same names, sizes and times. Root must not link those into the new version
/// (nor read them): the file to share is reached beneath the previous version, never through
/// a link.
#[test]
fn versioned_links_never_reach_through_a_version_directory_swapped_for_a_link() -> TestResult {
    let env = Env::new()?;
    let arena = Arena::new(&env.root)?;
    let names = numbered("f", READ_FILES);
    let canary = Canary::new(&env.root, &names)?;
    // The user's files look like the canaries to a check of size and time alone.
    for name in &names {
        let mut bytes = canary_bytes(name);
        bytes.iter_mut().for_each(|b| *b = b.to_ascii_lowercase());
        let path = write(&env.src, format!("u/{name}"), bytes)?;
        chmod(&path, 0o644)?;
        set_mtime(&path, CANARY_MTIME, 0)?;
    }
    user_file(&env.src, "other.txt", T0)?;
    chown_tree(&env.src, NOBODY, NOBODY)?;
    env.once(&[&"--versioned"])?.expect_code(0)?;
    // A change elsewhere: a new version is due, and u/'s files are to be linked to _1's.
    user_file(&env.src, "other.txt", T0 + 1)?;
    chown_tree(&env.src, NOBODY, NOBODY)?;
    let latest = fs::canonicalize(env.dst.join("_1"))?;
    let (u, link) = (latest.join("u"), latest.join(".u-swap"));
    let attack = Attack::SwapOnce {
        dir: &u,
        link: &link,
        target: &canary.dir,
    };
    let mut racer = arena.racer(attack, Start::AfterPlan)?;
    let run = once_hooked(&env, &[&"--versioned"], [&env.src, &env.dst], &racer.hook())?;
    let report = racer.stop()?;
    let context = format!(
        "oneway --versioned planned to link {READ_FILES} unchanged files of u/ to the previous \
         version's, then uid {NOBODY} exchanged that version's u/ with a link to root's files \
         of the same names, sizes and times ({report}); oneway: {}",
        brief(&run)
    );
    canary.expect_untouched(&context)?;
    let canaries: std::collections::HashSet<u64> = fs::read_dir(&canary.dir)?
        .map(|e| Ok(e?.metadata()?.ino()))
        .collect::<Res<_>>()?;
    let newest = fs::canonicalize(env.dst.join("_1"))?;
    for name in &names {
        let ino = fs::symlink_metadata(newest.join("u").join(name))?.ino();
        ensure!(
            !canaries.contains(&ino),
            "{context}\nthe new version's u/{name} is root's canary file (hard-linked to it)"
        );
    }
    expect_no_canary_bytes("the versions", &env.dst, &context)
}
