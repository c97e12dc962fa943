//! What a person reads at the end of a pass, and the exit status a stop leaves (issue 23): the
//! summary's counts per direction (or the version made), the bytes copied and the files hashed,
//! on passes whose changes are known; and the exit status of a `--once` pass, of a restore and
//! of a periodic run stopped by a real SIGINT or SIGTERM.
//!
//! A stop "in the middle of a pass" is sent while the pass waits in the test aid
//! `ONEWAY_TEST_HOOK_AFTER_PLAN` (docs/testing.md), which holds it between its plan and its
//! first change until the test lets it go: the stop lands at a known point, not by timing.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::restore::Pair;
use crate::util::*;

/// The test aid's variable.
const HOOK: &str = "ONEWAY_TEST_HOOK_AFTER_PLAN";

/// The exit status of a `--once` pass or a restore stopped by a signal (README, exit codes).
const INTERRUPTED: i32 = 3;

/// Writes `content` to `dir/rel` with mtime `mtime`; returns its length.
fn put(dir: &Path, rel: &str, content: &str, mtime: i64) -> Res<u64> {
    set_mtime(&write(dir, rel, content)?, mtime, 0)?;
    Ok(content.len() as u64)
}

/// `path` quoted for `sh`.
fn q(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// A hook that holds a pass (or a restore) right after its plan: it creates `ready`, then
/// waits until the test creates `go` (or a minute passes, so nothing is left hanging).
struct Gate {
    dir: PathBuf,
}

impl Gate {
    fn new(root: &Path) -> Res<Gate> {
        let dir = root.join("gate");
        fs::create_dir_all(&dir)?;
        fs::write(
            dir.join("hook.sh"),
            format!(
                ": > {ready}\n\
                 i=0\n\
                 while [ ! -e {go} ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done\n",
                ready = q(&dir.join("ready")),
                go = q(&dir.join("go")),
            ),
        )?;
        Ok(Gate { dir })
    }

    fn value(&self) -> String {
        format!("sh {}", q(&self.dir.join("hook.sh")))
    }

    /// Waits until the held process reaches the gate; fails if `child` exits first.
    fn wait_ready(&self, mut exited: impl FnMut() -> Res<Option<ExitStatus>>) -> TestResult {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        while !self.dir.join("ready").exists() {
            if let Some(status) = exited()? {
                return Err(fail(format!(
                    "the run ended ({}) before it reached the gate",
                    describe_status(status)
                )));
            }
            ensure!(Instant::now() < deadline, "the gate hook never ran");
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Lets the held process go on. The signal sent before is handled on a thread of
    /// `ctrlc`'s, which sets the stop flag a moment after delivery; the pause makes sure the
    /// flag is up before the first step (it is checked before each one).
    fn release(&self) -> TestResult {
        thread::sleep(Duration::from_millis(200));
        fs::write(self.dir.join("go"), "")?;
        Ok(())
    }
}

/// Starts `env`'s program with `args` and the gate, sends `signal` once it is held, lets it go
/// and waits for its end.
fn stop_at_gate(
    env: &Env,
    args: &[&dyn AsRef<OsStr>],
    signal: &str,
) -> Res<(ExitStatus, Background)> {
    let gate = Gate::new(&env.root)?;
    let mut cmd = env.command(args);
    cmd.env(HOOK, gate.value());
    let mut child = env.spawn_command(cmd)?;
    gate.wait_ready(|| child.try_wait())?;
    child.signal(signal)?;
    gate.release()?;
    let status = child.wait_exit(RUN_TIMEOUT)?;
    Ok((status, child))
}

/// `n` files of a few hundred bytes under `dir/many/`.
fn many_files(dir: &Path, n: usize) -> TestResult {
    for i in 0..n {
        put(dir, &format!("many/f{i:04}.txt"), &"x".repeat(100 + i), T0)?;
    }
    Ok(())
}

/// The summary's last pass, with `what` for messages: fails unless it was stopped.
fn expect_stopped(log: &str, what: &str) -> Res<Summary> {
    let lines: Vec<LogLine> = log.lines().filter_map(parse_log_line).collect();
    let passes = summaries(&lines);
    match passes.last() {
        Some((true, summary)) => Ok(*summary),
        other => Err(fail(format!(
            "{what}: expected the last pass summary to be `pass stopped after …`, found \
             {other:?}\nlog:\n{log}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// The summary's counts

#[test]
fn mirror_summary_counts_each_kind_of_change_the_bytes_and_the_files_hashed() -> TestResult {
    let env = Env::new()?;
    let (s, d) = (&env.src, &env.dst);
    let mut first_bytes = 0;
    for (rel, content) in [
        ("keep.txt", "kept as it is\n"),
        ("edit1.txt", "first edit, before\n"),
        ("edit2.txt", "second edit, before\n"),
        ("gone.txt", "removed later\n"),
        ("mode.txt", "its mode changes\n"),
        ("sub/deep.txt", "one level down\n"),
    ] {
        first_bytes += put(s, rel, content, T0)?;
    }
    set_mtime(&s.join("sub"), T0, 0)?;
    set_mtime(s, T0, 0)?;

    // A first copy into an empty BACKUP reads every file once, as it copies it.
    let first = env.once(&[])?;
    first.expect_code(0)?;
    let summary = first.summary()?;
    let into = summary
        .to_backup
        .ok_or_else(|| fail(format!("no `into BACKUP:` line\n{first}")))?;
    ensure!(
        summary.hashed == 6 && summary.hashed_while_copying == 6,
        "a first copy of 6 files must count 6 files hashed, all while copying: {summary:?}\n{first}"
    );
    ensure!(
        into.created == 7 && into.replaced == 0 && into.removed == 0 && into.bytes == first_bytes,
        "expected 7 created (6 files, a directory) and {first_bytes} bytes copied: \
         {into:?}\n{first}"
    );
    ensure!(
        summary.operations == into.created + into.metadata && summary.errors == 0,
        "the operations are not the changes counted: {summary:?}\n{first}"
    );

    // Three created, two replaced, one removed, one mode changed; the root's time is put back
    // so that only those count.
    let mut bytes = 0;
    for (rel, content) in [
        ("new1.txt", "new one\n"),
        ("new2.txt", "new two, longer\n"),
        ("sub/new3.txt", "new three, in sub\n"),
        ("edit1.txt", "first edit, after, with more bytes\n"),
        ("edit2.txt", "second edit, after\n"),
    ] {
        bytes += put(s, rel, content, T0 + 10)?;
    }
    fs::remove_file(s.join("gone.txt"))?;
    chmod(&s.join("mode.txt"), 0o600)?;
    set_mtime(&s.join("sub"), T0, 0)?;
    set_mtime(s, T0, 0)?;

    let run = env.once(&[])?;
    run.expect_code(0)?;
    let summary = run.summary()?;
    let into = summary
        .to_backup
        .ok_or_else(|| fail(format!("no `into BACKUP:` line\n{run}")))?;
    let want = Changes {
        created: 3,
        replaced: 2,
        removed: 1,
        metadata: 1,
        bytes,
    };
    ensure!(
        into == want,
        "expected {want:?}, the summary says {into:?}\n{run}"
    );
    ensure!(
        summary.operations == 7 && summary.errors == 0 && summary.conflicts.is_none(),
        "expected 7 operations, no error, no conflict count: {summary:?}\n{run}"
    );
    ensure!(
        run.has(
            "INFO",
            &format!(
                "into BACKUP: 3 created, 2 replaced, 1 removed, 1 metadata updated, {bytes} \
                 bytes copied"
            )
        ),
        "the line of changes is not as documented\n{run}"
    );
    assert_trees_equal(s, d)?;

    // Nothing changed: nothing done.
    let again = env.once(&[])?;
    let summary = again.summary()?;
    ensure!(
        summary.to_backup == Some(Changes::default()),
        "a pass with nothing to do: {summary:?}\n{again}"
    );
    Ok(())
}

#[test]
fn twoway_summary_counts_each_direction_apart() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    for rel in ["both.txt", "edited.txt", "deleted.txt", "mode.txt"] {
        put(s, rel, &format!("{rel} as first synced\n"), T0)?;
    }
    env.once(&[])?.expect_code(0)?;

    // To BACKUP: one new file, one edit. To SOURCE: two new files, a deletion, a mode.
    let mut to_backup = put(s, "from-source.txt", "made in SOURCE\n", T0 + 5)?;
    to_backup += put(
        s,
        "edited.txt",
        "edited in SOURCE, longer than before\n",
        T0 + 6,
    )?;
    let mut to_source = put(d, "from-backup-1.txt", "made in BACKUP\n", T0 + 7)?;
    to_source += put(d, "from-backup-2.txt", "also made in BACKUP\n", T0 + 8)?;
    fs::remove_file(d.join("deleted.txt"))?;
    chmod(&d.join("mode.txt"), 0o600)?;

    let run = env.once(&[])?;
    run.expect_code(0)?;
    let summary = run.summary()?;
    let want_source = Changes {
        created: 2,
        replaced: 0,
        removed: 1,
        metadata: 1,
        bytes: to_source,
    };
    let want_backup = Changes {
        created: 1,
        replaced: 1,
        removed: 0,
        metadata: 0,
        bytes: to_backup,
    };
    ensure!(
        summary.to_source == Some(want_source) && summary.to_backup == Some(want_backup),
        "expected to SOURCE {want_source:?} and to BACKUP {want_backup:?}, the summary says \
         {:?} and {:?}\n{run}",
        summary.to_source,
        summary.to_backup
    );
    ensure!(
        summary.operations == 6 && summary.errors == 0 && summary.conflicts == Some(0),
        "expected 6 operations, no error and 0 conflicts kept: {summary:?}\n{run}"
    );
    assert_trees_equal(s, d)?;

    // A conflict: both sides edit one file; the loser is kept under a conflict name.
    put(s, "both.txt", "SOURCE's edit\n", T0 + 20)?;
    put(d, "both.txt", "BACKUP's later edit\n", T0 + 30)?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    let summary = run.summary()?;
    ensure!(
        summary.conflicts == Some(1),
        "expected `1 conflict kept`: {summary:?}\n{run}"
    );
    Ok(())
}

#[test]
fn versioned_summary_names_the_version_made_and_counts_its_files() -> TestResult {
    let env = Env::new()?;
    let s = &env.src;
    let mut bytes = 0;
    for rel in ["a.txt", "b.txt", "sub/c.txt"] {
        bytes += put(s, rel, &format!("{rel}, first version\n"), T0)?;
    }
    let versioned = || {
        env.once(&[&"--versioned"])
            .and_then(|run| run.expect_code(0).map(|()| run))
    };

    let run = versioned()?;
    let summary = run.summary()?;
    let want = Version {
        files: 3,
        linked: 0,
        copied: 3,
        bytes,
    };
    // Each file is hashed before the plan; a copy reads it again only where its stamp is too
    // recent to trust (counted apart).
    ensure!(
        summary.version == Some(Some(want))
            && summary.hashed == 3 + summary.hashed_while_copying
            && summary.hashed_while_copying <= 3,
        "expected a version of 3 files, all copied ({bytes} bytes), and 3 files hashed before \
         the plan: {summary:?}\n{run}"
    );
    ensure!(
        run.lines()
            .iter()
            .any(|l| l.message.starts_with("version _") && l.message.contains(" made: 3 files (")),
        "the version line does not name the version\n{run}"
    );

    let edited = put(s, "b.txt", "b.txt, second version, longer\n", T0 + 5)?;
    let run = versioned()?;
    let want = Version {
        files: 3,
        linked: 2,
        copied: 1,
        bytes: edited,
    };
    ensure!(
        run.summary()?.version == Some(Some(want)),
        "expected 2 files hard-linked and 1 copied ({edited} bytes)\n{run}"
    );

    let run = versioned()?;
    ensure!(
        run.summary()?.version == Some(None) && run.has("INFO", "no new version"),
        "a pass with nothing changed must say `no new version`\n{run}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Exit status after a stop

#[test]
fn oneway_once_stopped_by_sigint_exits_3_and_says_pass_stopped() -> TestResult {
    let env = Env::new()?;
    put(&env.src, "first.txt", "synced before\n", T0)?;
    env.once(&[])?.expect_code(0)?;
    many_files(&env.src, 200)?;

    let (status, _child) = stop_at_gate(&env, &[&"--once", &env.src, &env.dst], "INT")?;

    ensure!(
        status.code() == Some(INTERRUPTED),
        "an interrupted --once pass ended with {}, expected exit code {INTERRUPTED}\nlog:\n{}",
        describe_status(status),
        env.log_text()
    );
    let log = env.log_text();
    let summary = expect_stopped(&log, "oneway --once")?;
    let copied = fs::read_dir(env.dst.join("many")).map_or(0, |d| d.count());
    ensure!(
        copied < 200 && summary.operations < 201,
        "the stop did not stop the pass: {copied} of 200 files copied, {summary:?}\n{log}"
    );
    ensure!(
        log.lines()
            .filter_map(parse_log_line)
            .any(|l| l.message.starts_with("Total number of operations: ")),
        "no `Total number of operations` line after the stop\n{log}"
    );
    Ok(())
}

#[test]
fn versioned_once_stopped_by_sigterm_exits_3_and_keeps_the_versions() -> TestResult {
    let env = Env::new()?;
    put(&env.src, "first.txt", "the first version\n", T0)?;
    env.once(&[&"--versioned"])?.expect_code(0)?;
    let before = snapshot(&env.dst)?;
    many_files(&env.src, 200)?;

    let args: [&dyn AsRef<OsStr>; 4] = [&"--once", &"--versioned", &env.src, &env.dst];
    let (status, _child) = stop_at_gate(&env, &args, "TERM")?;

    ensure!(
        status.code() == Some(INTERRUPTED),
        "an interrupted --once --versioned pass ended with {}, expected exit code \
         {INTERRUPTED}\nlog:\n{}",
        describe_status(status),
        env.log_text()
    );
    expect_stopped(&env.log_text(), "oneway --once --versioned")?;
    assert_same(
        "the version store after a stopped pass",
        &before,
        &snapshot(&env.dst)?,
    )
}

#[test]
fn twoway_once_stopped_by_sigint_exits_3_without_taking_snapshots() -> TestResult {
    // With the recovery system, as users run it: the snapshots --once takes after its pass
    // are not taken once a stop was asked for.
    let p = Pair::new()?;
    many_files(&p.a, 200)?;
    let gate = Gate::new(&p.state)?;
    let mut cmd = p.command(&[&p.a, &p.b, &"--once"]);
    cmd.env(HOOK, gate.value()).stdout(Stdio::null());
    let stderr = p.state.join("stderr.txt");
    cmd.stderr(fs::File::create(&stderr)?);
    let mut child = cmd.spawn()?;
    gate.wait_ready(|| Ok(child.try_wait()?))?;
    signal(&child, "INT")?;
    gate.release()?;
    let status = wait(&mut child)?;

    let log = p.log();
    ensure!(
        status.code() == Some(INTERRUPTED),
        "an interrupted twoway --once ended with {}, expected exit code {INTERRUPTED}\n\
         stderr:\n{}\nlog:\n{log}",
        describe_status(status),
        fs::read_to_string(&stderr).unwrap_or_default()
    );
    expect_stopped(&log, "twoway --once")?;
    let versions = p.state.join("__versions__");
    let mut taken = Vec::new();
    for k in ["A", "B"] {
        if let Ok(dir) = fs::read_dir(versions.join(k)) {
            taken.extend(
                dir.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with('_')),
            );
        }
    }
    ensure!(
        taken.is_empty(),
        "snapshots were taken after the stop: {taken:?}\n{log}"
    );
    Ok(())
}

#[test]
fn restore_stopped_by_sigint_exits_3_and_leaves_dir_untouched() -> TestResult {
    let p = Pair::new()?;
    many_files(&p.a, 200)?;
    let out = p.run(&[&p.a, &p.b, &"--once"])?;
    crate::restore::expect_code(&out, 0)?;
    // What A holds now, which a restore would replace.
    put(&p.a, "written-since.txt", "not in any version\n", T0 + 100)?;
    let before = snapshot(&p.a)?;

    let gate = Gate::new(&p.state)?;
    let mut cmd = p.command(&[&p.a, &"--restore"]);
    cmd.env(HOOK, gate.value())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn()?;
    gate.wait_ready(|| Ok(child.try_wait()?))?;
    signal(&child, "INT")?;
    gate.release()?;
    let status = wait(&mut child)?;

    let log = p.log();
    ensure!(
        status.code() == Some(INTERRUPTED),
        "an interrupted restore ended with {}, expected exit code {INTERRUPTED}\nlog:\n{log}",
        describe_status(status)
    );
    assert_same("A after a stopped restore", &before, &snapshot(&p.a)?)?;
    let parent = p.a.parent().ok_or_else(|| fail("A has no parent"))?;
    let left: Vec<String> = fs::read_dir(parent)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restore-"))
        .collect();
    ensure!(
        left.is_empty(),
        "the stopped restore left {left:?} beside A\n{log}"
    );
    ensure!(
        log.contains("stopped by a signal") && log.contains("nothing was changed"),
        "the log does not say the restore was stopped and changed nothing\n{log}"
    );
    Ok(())
}

#[test]
fn periodic_run_stopped_between_passes_exits_0() -> TestResult {
    let env = Env::new()?;
    put(&env.src, "a.txt", "periodic\n", T0)?;
    let mut run = env.spawn(&[&env.src, &env.dst])?;
    let first = run.wait_for_first_pass(&env)?;
    // Exit code 0 is checked by `stop_with`.
    run.stop_with("INT")?;
    let log = env.log_text();
    let last = log
        .lines()
        .filter_map(parse_log_line)
        .next_back()
        .ok_or_else(|| fail("empty log"))?;
    ensure!(
        last.message == format!("Total number of operations: {}", first.operations),
        "the run did not end with the total of its operations\n{log}"
    );
    Ok(())
}

#[test]
fn periodic_run_stopped_in_the_middle_of_a_pass_exits_0() -> TestResult {
    // A periodic run is only ever ended by a signal (SPEC §5: exit 0), wherever it lands; the
    // summary says the pass was stopped.
    let env = Env::new()?;
    put(&env.src, "first.txt", "synced before\n", T0)?;
    env.once(&[])?.expect_code(0)?;
    many_files(&env.src, 200)?;

    let (status, _child) = stop_at_gate(&env, &[&env.src, &env.dst], "TERM")?;

    ensure!(
        status.code() == Some(0),
        "a periodic run stopped in a pass ended with {}, expected exit code 0\nlog:\n{}",
        describe_status(status),
        env.log_text()
    );
    expect_stopped(&env.log_text(), "periodic oneway")?;
    Ok(())
}

/// Sends signal `name` to `child` with the shell's `kill`.
fn signal(child: &Child, name: &str) -> TestResult {
    let status = std::process::Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", name])
        .arg(child.id().to_string())
        .status()?;
    ensure!(status.success(), "kill -s {name} {} failed", child.id());
    Ok(())
}

/// Waits for `child`'s end; kills it and fails after [`RUN_TIMEOUT`].
fn wait(child: &mut Child) -> Res<ExitStatus> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail("the process did not end in time; killed"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}
