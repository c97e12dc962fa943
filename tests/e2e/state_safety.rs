//! The program's own files in places only the running user controls (issue 20): locks that no
//! other user can plant, replace or hold, a log file never opened through another user's link,
//! and state and cache directories refused when another user could change them.
//!
//! Each test runs the real binary as root while the unprivileged user 65534 attacks through
//! `setpriv`, as SECURITY.md asks; without root (which is needed to be attacked by someone
//! else) they pass without testing anything. Root-only canaries outside the trees must come out
//! unchanged.

use std::fs::{self, File, TryLockError};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::util::*;

/// Whether the tests run as root (and can be attacked by another user).
fn running_as_root() -> Res<bool> {
    let probe = tempfile::tempdir()?;
    Ok(fs::metadata(probe.path())?.uid() == 0)
}

/// `PROGRAM ARGS...` as uid/gid 65534.
fn as_nobody(program: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd
}

/// Runs `PROGRAM ARGS...` as uid 65534 to its end; fails unless it succeeds.
fn nobody_does(program: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> TestResult {
    let out = as_nobody(program, args).output()?;
    ensure!(
        out.status.success(),
        "as uid 65534, {program} {:?} failed: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Opens the fixture to other users (a fresh temporary directory is 0700) and makes
/// `secret/`, a root-only directory holding `canary` (0600): what an attacker would like the
/// root run to write to. Returns `secret/`.
fn open_fixture_with_secret(env: &Env) -> Res<PathBuf> {
    chmod(&env.root, 0o755)?;
    let secret = mkdir(&env.root, "secret")?;
    let canary = write(&secret, "canary", "root only\n")?;
    chmod(&canary, 0o600)?;
    chmod(&secret, 0o700)?;
    Ok(secret)
}

/// Fails if `secret/` changed in any way since `before`.
fn expect_secret_untouched(secret: &Path, before: &Snapshot, run: &Run) -> TestResult {
    let after = snapshot(secret)?;
    ensure!(
        &after == before,
        "the root-only directory {} changed:\n{}\n{run}",
        secret.display(),
        diff(before, &after).join("\n")
    );
    Ok(())
}

/// The name main's per-path lock took in `$TMPDIR/oneway-locks-UID`: the first 32 hex digits
/// of the SHA-256 of the canonical path. The attacker can compute it as well as we can.
fn old_lock_name(dir: &Path) -> Res<String> {
    let canonical = fs::canonicalize(dir)?;
    let digest = checksum::digest_reader(canonical.as_os_str().as_bytes())?;
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex[..32].to_string())
}

/// Lock files used to be made in `$TMPDIR/oneway-locks-UID`, wherever that led and through a
/// link at the file's predictable name, so another user could have root create or truncate
/// any file (`/etc/nologin`). Locks now live in a directory of root's own, and a run whose
/// TMPDIR is full of such links makes nothing through them.
#[test]
fn lock_files_are_never_made_through_another_users_link() -> TestResult {
    if !running_as_root()? {
        return Ok(());
    }
    let env = Env::twoway()?;
    write(&env.src, "a.txt", "a\n")?;
    let secret = open_fixture_with_secret(&env)?;
    // One shared temporary directory whose lock directory is a link to `secret/`, one where it
    // is the attacker's own directory, with links at the lock files' names.
    let (tmp_dir_link, tmp_file_links) = (mkdir(&env.root, "tmp1")?, mkdir(&env.root, "tmp2")?);
    chmod(&tmp_dir_link, 0o1777)?;
    chmod(&tmp_file_links, 0o1777)?;
    nobody_does(
        "ln",
        &[&"-s", &secret, &tmp_dir_link.join("oneway-locks-0")],
    )?;
    let planted = tmp_file_links.join("oneway-locks-0");
    nobody_does("mkdir", &[&"-m", &"0777", &planted])?;
    for (root, target) in [(&env.src, "nologin-src"), (&env.dst, "nologin-dst")] {
        nobody_does(
            "ln",
            &[
                &"-s",
                &secret.join(target),
                &planted.join(old_lock_name(root)?),
            ],
        )?;
    }

    for (n, tmp) in [&tmp_dir_link, &tmp_file_links].into_iter().enumerate() {
        let before = snapshot(&secret)?;
        write(&env.src, format!("new-{n}.txt"), "new\n")?;
        let mut cmd = env.command(&[&"--once", &env.src, &env.dst]);
        cmd.env("TMPDIR", tmp);
        let run = env.run_command(cmd, &env.log)?;
        run.expect_code(0)?;
        expect_secret_untouched(&secret, &before, &run)?;
        ensure!(
            env.dst.join(format!("new-{n}.txt")).is_file(),
            "the run did not sync\n{run}"
        );
    }
    Ok(())
}

/// A process of uid 65534 holding an `flock` on `path` (a directory it can open); killed
/// when dropped.
struct FlockHolder(Child);

impl FlockHolder {
    fn start(path: &Path) -> Res<FlockHolder> {
        let child = as_nobody("flock", &[&path, &"sleep", &"120"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let holder = FlockHolder(child);
        wait_until(
            &format!("uid 65534 to hold an flock on {}", path.display()),
            WAIT_TIMEOUT,
            || {
                let probe = File::open(path)?;
                Ok(matches!(probe.try_lock(), Err(TryLockError::WouldBlock)))
                // An `Ok` took the lock for an instant; dropping `probe` gave it back.
            },
        )?;
        Ok(holder)
    }
}

impl Drop for FlockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Locks used to be `flock`s on the roots themselves: anyone who could open BACKUP could hold
/// its lock and stop every backup into it. Another user's flock on BACKUP is now nothing to
/// oneway.
#[test]
fn another_users_flock_on_backup_does_not_stop_oneway() -> TestResult {
    if !running_as_root()? {
        return Ok(());
    }
    let env = Env::new()?;
    write(&env.src, "a.txt", "a\n")?;
    chmod(&env.root, 0o755)?;
    let _holder = FlockHolder::start(&env.dst)?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    run.expect("INFO", "copied a.txt")?;
    assert_trees_equal(&env.src, &env.dst)
}

/// As [`another_users_flock_on_backup_does_not_stop_oneway`], for twoway, which locked both
/// roots.
#[test]
fn another_users_flocks_on_both_roots_do_not_stop_twoway() -> TestResult {
    if !running_as_root()? {
        return Ok(());
    }
    let env = Env::twoway()?;
    write(&env.src, "a.txt", "a\n")?;
    write(&env.dst, "b.txt", "b\n")?;
    chmod(&env.root, 0o755)?;
    let _holders = [FlockHolder::start(&env.src)?, FlockHolder::start(&env.dst)?];
    let run = env.once(&[])?;
    run.expect_code(0)?;
    assert_synced(&env.src, &env.dst)
}

/// The log file used to be opened wherever a link at its path led, so a user who could write
/// where root logs could have root append to, or create, any file. A link of another user on
/// the log's path is now refused, naming it, and nothing is written through it; root's own
/// link is still followed.
#[test]
fn a_log_path_through_another_users_link_is_refused() -> TestResult {
    if !running_as_root()? {
        return Ok(());
    }
    let env = Env::new()?;
    write(&env.src, "a.txt", "a\n")?;
    let secret = open_fixture_with_secret(&env)?;
    let public = mkdir(&env.root, "public")?;
    chown_tree(&public, NOBODY, NOBODY)?;
    let (existing, dangling) = (public.join("evil.log"), public.join("new.log"));
    nobody_does("ln", &[&"-s", &secret.join("canary"), &existing])?;
    nobody_does("ln", &[&"-s", &secret.join("made.log"), &dangling])?;

    for log in [&existing, &dangling] {
        let before = snapshot(&secret)?;
        let mut cmd = env.command_without_log();
        cmd.arg("--log")
            .arg(log)
            .arg("--once")
            .arg(&env.src)
            .arg(&env.dst);
        let run = env.run_command(cmd, &env.log)?;
        run.expect_code(2)?;
        ensure!(
            run.stderr.lines().any(|l| l.contains("log file")
                && contains_path(l, log)
                && l.contains("belongs to user 65534")),
            "expected one stderr line naming the log file and its owner\n{run}"
        );
        expect_secret_untouched(&secret, &before, &run)?;
        ensure!(
            fs::read_dir(&env.dst)?.next().is_none(),
            "the refused run wrote BACKUP\n{run}"
        );
    }

    // A link of root's own is root's choice, and is followed.
    let logs = mkdir(&env.root, "logs")?;
    let own = symlink(&env.root, "mine.log", logs.join("real.log"))?;
    let mut cmd = env.command_without_log();
    cmd.arg("--log")
        .arg(&own)
        .arg("--once")
        .arg(&env.src)
        .arg(&env.dst);
    let run = env.run_command(cmd, &own)?;
    run.expect_code(0)?;
    run.expect("INFO", "copied a.txt")?;
    Ok(())
}

/// What a refused run must show: exit 2, one stderr line holding every needle, and no change
/// in the trees, the cache or the state directory.
fn expect_untrusted(env: &Env, mut cmd: Command, state: &Path, needles: &[&str]) -> TestResult {
    let before = [snapshot(&env.src)?, snapshot(&env.dst)?, snapshot(state)?];
    let cache_before = snapshot(&env.cache)?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2),
        "expected exit code 2, got {:?}\n{stderr}",
        out.status
    );
    ensure!(
        stderr
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n))),
        "expected one stderr line containing {needles:?}\n{stderr}"
    );
    let after = [snapshot(&env.src)?, snapshot(&env.dst)?, snapshot(state)?];
    for (what, b, a) in [
        ("SOURCE", 0, 0),
        ("BACKUP", 1, 1),
        ("the state directory", 2, 2),
    ] {
        assert_same(
            &format!("a refused run changed {what}"),
            &before[b],
            &after[a],
        )?;
    }
    assert_same(
        "a refused run changed the cache",
        &cache_before,
        &snapshot(&env.cache)?,
    )
}

/// The hash cache decides what is copied, so a cache directory that another user owns, can
/// write, or reaches through a link of theirs, is refused, saying what to mend; mended, the
/// same run goes through.
#[test]
fn a_cache_directory_another_user_could_change_is_refused() -> TestResult {
    use std::os::unix::fs::{chown, lchown};
    if !running_as_root()? {
        return Ok(());
    }
    let env = Env::new()?;
    write(&env.src, "a.txt", "a\n")?;
    let cache = env.cache.display().to_string();

    chown(&env.cache, Some(NOBODY), Some(NOBODY))?;
    expect_untrusted(
        &env,
        env.command(&[&"--once", &env.src, &env.dst]),
        &env.root,
        &["cache directory", &cache, "belongs to user 65534"],
    )?;
    chown(&env.cache, Some(0), Some(0))?;

    chmod(&env.cache, 0o777)?;
    expect_untrusted(
        &env,
        env.command(&[&"--once", &env.src, &env.dst]),
        &env.root,
        &[
            "cache directory",
            "writable by others (mode 777)",
            "chmod go-w",
        ],
    )?;
    chmod(&env.cache, 0o755)?;

    let link = symlink(&env.root, "cache-link", &env.cache)?;
    lchown(&link, Some(NOBODY), Some(NOBODY))?;
    let mut cmd = env.command(&[&"--once", &env.src, &env.dst]);
    cmd.env("XDG_CACHE_HOME", &link);
    expect_untrusted(
        &env,
        cmd,
        &env.root,
        &[
            "cache directory",
            "symbolic link that belongs to user 65534",
        ],
    )?;

    let run = env.once(&[])?;
    run.expect_code(0)?;
    assert_trees_equal(&env.src, &env.dst)
}

/// twoway reads `.info.json` (which says where a restore writes) and its archive from the
/// directory it runs in: one that another user owns or can write is refused, for a sync and
/// for a restore, saying what to mend; mended, the same sync goes through.
#[test]
fn a_state_directory_another_user_could_change_is_refused() -> TestResult {
    use std::os::unix::fs::chown;
    if !running_as_root()? {
        return Ok(());
    }
    let env = Env::twoway()?;
    write(&env.src, "a.txt", "a\n")?;
    let state = mkdir(&env.root, "state")?;
    let shown = state.display().to_string();
    let sync = || {
        let mut cmd = env.command(&[&"--once", &env.src, &env.dst]);
        cmd.current_dir(&state);
        cmd
    };
    let restore = || {
        let mut cmd = env.command_without_log();
        cmd.current_dir(&state)
            .arg("--log")
            .arg(&env.log)
            .arg(&env.src)
            .arg("--restore");
        cmd
    };

    chown(&state, Some(NOBODY), Some(NOBODY))?;
    for cmd in [sync(), restore()] {
        expect_untrusted(
            &env,
            cmd,
            &state,
            &["state directory", &shown, "belongs to user 65534"],
        )?;
    }
    chown(&state, Some(0), Some(0))?;

    chmod(&state, 0o777)?;
    for cmd in [sync(), restore()] {
        expect_untrusted(
            &env,
            cmd,
            &state,
            &["state directory", "writable by others (mode 777)"],
        )?;
    }
    chmod(&state, 0o755)?;

    let run = env.run_command(sync(), &env.log)?;
    run.expect_code(0)?;
    assert_synced(&env.src, &env.dst)
}
