//! Trees deeper than any walk that recurses survives (issue 20; SECURITY.md rule 7): a legal
//! tree 2,000 directories deep crashed twoway, 3,000 `oneway --versioned`. Each tree here is
//! one chain of directories named `d`, with a file half way down and one at the bottom.
//!
//! 10,000 levels make paths of 20,000 bytes, five times PATH_MAX, so the helpers below reach
//! each level from the descriptor of the one above and never hand the kernel a long path (nor
//! does their clean-up: std's `remove_dir_all` recurses and holds a descriptor per level).
//! 1,900 levels stay below PATH_MAX (3,800 bytes of path) yet overflowed the recursive walks
//! all the same: those tests pin the recursion alone. Every run may hold 1,024 descriptors at
//! once, so depth must not cost one per level either.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use crate::util::*;

/// Deep enough for paths five times PATH_MAX.
const DEEP: usize = 10_000;
/// Paths of 3,800 bytes, below PATH_MAX, and still deep enough to overflow a recursive walk.
const BELOW_PATH_MAX: usize = 1_900;

/// The descriptors a run may hold at once: the usual soft limit (this machine's may be
/// higher), far fewer than the levels, so that a walk holding one per level fails here too.
const DESCRIPTORS: u32 = 1024;

/// The name of every directory of a chain.
const DIR: &str = "d";
/// The file half way down.
const HALF: &str = "h";
/// The file at the bottom.
const BOTTOM: &str = "f";

#[test]
fn mirror_of_a_tree_too_deep_for_a_recursive_walk_is_exact() -> TestResult {
    mirror_of_a_chain(BELOW_PATH_MAX)
}

#[test]
fn mirror_of_a_tree_10000_levels_deep_is_exact() -> TestResult {
    mirror_of_a_chain(DEEP)
}

#[test]
fn twoway_on_a_tree_too_deep_for_a_recursive_walk_carries_edits_at_the_bottom_both_ways()
-> TestResult {
    twoway_on_a_chain(BELOW_PATH_MAX)
}

#[test]
fn twoway_on_a_tree_10000_levels_deep_carries_edits_at_the_bottom_both_ways() -> TestResult {
    twoway_on_a_chain(DEEP)
}

#[test]
fn versions_of_a_tree_10000_levels_deep_are_made_rotated_and_dropped() -> TestResult {
    versions_of_a_chain(DEEP)
}

/// Dropping the oldest version removes a whole tree: one that holds a descriptor per level
/// (std's `remove_dir_all` does) runs out of them here, far below PATH_MAX.
#[test]
fn versions_of_a_tree_deeper_than_the_descriptors_a_run_may_hold_are_dropped() -> TestResult {
    versions_of_a_chain(DESCRIPTORS as usize + 100)
}

#[test]
fn restore_of_a_tree_10000_levels_deep_brings_it_back_whole() -> TestResult {
    // Recovery on: the pass snapshots both sides, which the restore reads back.
    let env = Deep(Env::for_program(Program::Twoway)?);
    // Both sides start as the same chain: the pass copies nothing, and its children make a
    // version of each side (two deep copies already, on two cores).
    build_chain(&env.src, DEEP)?;
    build_chain(&env.dst, DEEP)?;
    let run = env.once(&[])?;
    expect_pass(&run, "two-way pass with snapshots")?;
    synced_trees(&env.src, &env.dst)?;

    remove_tree(&env.src)?;
    let run = env.run(&[&env.src, &"--restore"])?;
    expect_exit_0(&run, "restore")?;
    synced_trees(&env.dst, &env.src)
}

/// A first copy (streamed, directory by directory) and a pass that walks both trees to carry
/// one edit at the bottom.
fn mirror_of_a_chain(depth: usize) -> TestResult {
    let env = Deep(Env::new()?);
    build_chain(&env.src, depth)?;
    let run = env.once(&[])?;
    expect_pass(&run, "first copy")?;
    same_trees(&env.src, &env.dst)?;

    write_at(&env.src, depth, BOTTOM, b"edited at the bottom\n", T0 + 10)?;
    let run = env.once(&[])?;
    expect_pass(&run, "second pass")?;
    expect_operations(&run, 1)?;
    same_trees(&env.src, &env.dst)
}

/// Both sides start as the same chain, so the first pass has nothing to copy and every pass
/// is mostly the two walks; then an edit at the bottom of each side in turn crosses over.
fn twoway_on_a_chain(depth: usize) -> TestResult {
    let env = Deep(Env::twoway()?);
    build_chain(&env.src, depth)?;
    build_chain(&env.dst, depth)?;
    let run = env.once(&[])?;
    expect_pass(&run, "first pass")?;
    synced_trees(&env.src, &env.dst)?;

    for (side, text, mtime) in [
        (&env.src, &b"edited in SOURCE\n"[..], T0 + 10),
        (&env.dst, &b"edited in BACKUP\n"[..], T0 + 20),
    ] {
        write_at(side, depth, BOTTOM, text, mtime)?;
        let run = env.once(&[])?;
        expect_pass(&run, &format!("pass after an edit in {}", side.display()))?;
        expect_operations(&run, 1)?;
        synced_trees(&env.src, &env.dst)?;
        ensure!(
            read_at(&env.src, depth, BOTTOM)? == text,
            "the edit did not reach both sides"
        );
    }
    Ok(())
}

/// Three versions: the first, a second that shares the unchanged half-way file with it, and a
/// third that pushes the first out (its whole tree is removed).
fn versions_of_a_chain(depth: usize) -> TestResult {
    let env = Deep(Env::new()?);
    build_chain(&env.src, depth)?;
    let versioned = |tag: &str| -> TestResult {
        let run = env.once(&[&"--versioned"])?;
        expect_pass(&run, &format!("versioned pass {tag}"))?;
        ensure!(
            !run.run.log.contains(" - WARNING] - "),
            "versioned pass {tag} warned:\n{}",
            short(&run.run)
        );
        Ok(())
    };
    let (latest, previous) = (env.dst.join("_1"), env.dst.join("_0"));

    versioned("1")?;
    same_trees(&env.src, &latest)?;

    write_at(&env.src, depth, BOTTOM, b"second\n", T0 + 10)?;
    versioned("2")?;
    same_trees(&env.src, &latest)?;
    ensure!(
        read_at(&previous, depth, BOTTOM)? == b"at the bottom\n",
        "_0 does not hold the first bottom file"
    );
    ensure!(
        stat_at(&previous, depth / 2, HALF)?.st_ino == stat_at(&latest, depth / 2, HALF)?.st_ino,
        "the unchanged half-way file (depth {}) was copied into the new version, not hard-linked",
        depth / 2
    );

    write_at(&env.src, depth, BOTTOM, b"third\n", T0 + 20)?;
    versioned("3")?;
    same_trees(&env.src, &latest)?;
    ensure!(
        read_at(&previous, depth, BOTTOM)? == b"second\n",
        "_0 does not hold the second bottom file"
    );
    let trees: Vec<OsString> = fs::read_dir(&env.dst)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|n| n.as_bytes().starts_with(b".v-") && !n.as_bytes().ends_with(b".manifest"))
        .collect();
    ensure!(
        trees.len() == 2,
        "expected the two kept version trees in VDIR, found {trees:?}"
    );
    Ok(())
}

/// A fixture whose trees are removed level by level before its temporary directory goes, and
/// whose runs report a failure, a timeout included, in a few short lines.
/// How long a run over a deep tree may take before it is taken for hung: longer than
/// [`RUN_TIMEOUT`], since each of its 10,000 levels is logged with a path of 20,000 bytes.
const DEEP_TIMEOUT: Duration = Duration::from_secs(300);

struct Deep(Env);

impl std::ops::Deref for Deep {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.0
    }
}

impl Drop for Deep {
    fn drop(&mut self) {
        if let Err(err) = remove_tree(&self.0.root) {
            eprintln!("cannot remove {}: {err:?}", self.0.root.display());
        }
    }
}

/// A finished run, and whether it had to be killed.
struct Ran {
    run: Run,
    timed_out: bool,
}

impl Deep {
    /// `PROGRAM --log LOG --once EXTRA... SOURCE BACKUP`, as [`Deep::run`] runs it.
    fn once(&self, extra: &[&dyn AsRef<OsStr>]) -> Res<Ran> {
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"--once"];
        args.extend_from_slice(extra);
        args.push(&self.src);
        args.push(&self.dst);
        self.run(&args)
    }

    /// Runs `PROGRAM --log LOG ARGS...` as [`Env::run`] does, except that a run killed after
    /// [`DEEP_TIMEOUT`] is returned like any other, for [`expect_exit_0`] to report briefly
    /// (its whole output would be megabytes of 20,000-byte lines), and that the program may
    /// open at most [`DESCRIPTORS`] files at once.
    fn run(&self, args: &[&dyn AsRef<OsStr>]) -> Res<Ran> {
        let log_before = fs::metadata(&self.log).map_or(0, |m| m.len());
        let program = self.command(args);
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={DESCRIPTORS}"))
            .arg("--")
            .arg(program.get_program())
            .args(program.get_args());
        if let Some(dir) = program.get_current_dir() {
            cmd.current_dir(dir);
        }
        for (key, value) in program.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let mut stderr = child.stderr.take().ok_or_else(|| fail("no stderr pipe"))?;
        // Drained meanwhile: a pass logs far more than a pipe holds.
        let reader = thread::spawn(move || {
            let mut bytes = Vec::new();
            stderr.read_to_end(&mut bytes).map(|_| bytes)
        });
        let deadline = Instant::now() + DEEP_TIMEOUT;
        let (status, timed_out) = loop {
            if let Some(status) = child.try_wait()? {
                break (status, false);
            }
            if Instant::now() >= deadline {
                child.kill()?;
                break (child.wait()?, true);
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stderr = reader
            .join()
            .map_err(|_| fail("the stderr reader panicked"))??;
        let log = fs::read(&self.log).unwrap_or_default();
        let new = log.get(usize::try_from(log_before)?..).unwrap_or(&log);
        Ok(Ran {
            run: Run {
                program: self.program,
                status,
                stdout: String::new(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
                log: String::from_utf8_lossy(new).into_owned(),
            },
            timed_out,
        })
    }
}

/// Fails unless the run exited 0 and, if it logged a pass summary, the pass counted no error.
fn expect_pass(ran: &Ran, what: &str) -> TestResult {
    expect_exit_0(ran, what)?;
    if let Some(summary) = last_summary(&ran.run.log) {
        ensure!(
            summary.errors == 0,
            "{what}: the pass counted errors: {summary:?}\n{}",
            short(&ran.run)
        );
    }
    Ok(())
}

fn expect_exit_0(ran: &Ran, what: &str) -> TestResult {
    ensure!(
        ran.run.status.code() == Some(0),
        "{what}: expected exit code 0, got {}{}\n{}",
        describe_status(ran.run.status),
        if ran.timed_out {
            format!(" (killed after {DEEP_TIMEOUT:?})")
        } else {
            String::new()
        },
        short(&ran.run)
    );
    Ok(())
}

fn expect_operations(ran: &Ran, n: u64) -> TestResult {
    let summary = last_summary(&ran.run.log).ok_or_else(|| fail("no pass summary in the log"))?;
    ensure!(
        summary.operations == n,
        "expected {n} operations, the summary says {summary:?}\n{}",
        short(&ran.run)
    );
    Ok(())
}

/// What a run printed, shortened: a line naming an entry 10,000 levels deep is 20,000 bytes
/// long. What stderr holds besides the log's lines (a crash), the log's errors and warnings,
/// then its last lines, each cut in the middle.
fn short(run: &Run) -> String {
    let cut = |line: &&str| -> String {
        let chars: Vec<char> = line.chars().collect();
        match chars.len() {
            0..=240 => format!("{line}\n"),
            n => format!(
                "{}…{}\n",
                chars[..120].iter().collect::<String>(),
                chars[n - 120..].iter().collect::<String>()
            ),
        }
    };
    let tag = run.program.tag();
    let other: Vec<&str> = run.stderr.lines().filter(|l| !l.starts_with(tag)).collect();
    let lines: Vec<&str> = run.log.lines().collect();
    let faults = lines
        .iter()
        .filter(|l| l.contains(" - ERROR] - ") || l.contains(" - WARNING] - "))
        .take(8);
    let last = &lines[lines.len().saturating_sub(4)..];
    format!(
        "--- stderr, without the log's lines:\n{}--- log: errors and warnings, then the last lines:\n{}…\n{}",
        other[other.len().saturating_sub(8)..]
            .iter()
            .map(cut)
            .collect::<String>(),
        faults.map(cut).collect::<String>(),
        last.iter().map(cut).collect::<String>()
    )
}

fn at_time(secs: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn open_dir(path: &Path) -> Res<OwnedFd> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))
}

/// The directory `name` in `dir`, never through a link.
fn open_sub(dir: &OwnedFd, name: &OsStr, level: usize) -> Res<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
    rustix::fs::openat(dir, name, flags, Mode::empty())
        .map_err(|e| fail(format!("cannot open {name:?} at depth {level}: {e}")))
}

/// The directory `levels` levels down the chain at `root`.
fn descend(root: &Path, levels: usize) -> Res<OwnedFd> {
    let mut dir = open_dir(root)?;
    for level in 0..levels {
        dir = open_sub(&dir, OsStr::new(DIR), level)?;
    }
    Ok(dir)
}

/// Makes the chain of `depth` directories in the empty directory `root`, the file [`HALF`] at
/// depth `depth / 2` and [`BOTTOM`] at `depth`. Every time is `T0`, so two chains built alike
/// are the same to the last nanosecond.
fn build_chain(root: &Path, depth: usize) -> TestResult {
    let mut dir = open_dir(root)?;
    for level in 0..=depth {
        if level == depth / 2 {
            write_in(&dir, HALF, b"half way\n", T0)?;
        }
        if level == depth {
            write_in(&dir, BOTTOM, b"at the bottom\n", T0)?;
        } else {
            rustix::fs::mkdirat(&dir, DIR, Mode::from_raw_mode(0o755))?;
        }
        // Its entries are made: nothing changes its time any more.
        rustix::fs::futimens(&dir, &at_time(T0))?;
        if level < depth {
            dir = open_sub(&dir, OsStr::new(DIR), level)?;
        }
    }
    Ok(())
}

/// Writes `bytes` into the file `name` of `dir` (created, or rewritten in place so that the
/// directory keeps its time), with the time `mtime`.
fn write_in(dir: &OwnedFd, name: &str, bytes: &[u8], mtime: i64) -> TestResult {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o644))?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    rustix::fs::futimens(&file, &at_time(mtime))?;
    Ok(())
}

fn write_at(root: &Path, level: usize, name: &str, bytes: &[u8], mtime: i64) -> TestResult {
    write_in(&descend(root, level)?, name, bytes, mtime)
}

fn read_at(root: &Path, level: usize, name: &str) -> Res<Vec<u8>> {
    read_in(&descend(root, level)?, OsStr::new(name), level)
}

fn stat_at(root: &Path, level: usize, name: &str) -> Res<rustix::fs::Stat> {
    Ok(rustix::fs::statat(
        descend(root, level)?,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

fn read_in(dir: &OwnedFd, name: &OsStr, level: usize) -> Res<Vec<u8>> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())
        .map_err(|e| fail(format!("cannot open {name:?} at depth {level}: {e}")))?;
    let mut bytes = Vec::new();
    File::from(fd).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The names in `dir`, in byte order.
fn names(dir: &OwnedFd) -> Res<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    names.sort();
    Ok(names)
}

/// Fails unless the chains at `a` and `b` hold the same names, kinds, modes, times, sizes,
/// contents and link targets at every level (their roots' own mode and time aside). A level
/// with two subdirectories is not a chain, and fails too.
fn same_trees(a: &Path, b: &Path) -> TestResult {
    compare_chains(a, b, true)
}

/// [`same_trees`] without the times of directories, which twoway does not carry (they move
/// with every change inside).
fn synced_trees(a: &Path, b: &Path) -> TestResult {
    compare_chains(a, b, false)
}

fn compare_chains(a: &Path, b: &Path, dir_times: bool) -> TestResult {
    let (mut da, mut db) = (open_dir(a)?, open_dir(b)?);
    for level in 0.. {
        let (na, nb) = (names(&da)?, names(&db)?);
        let at = || format!("at depth {level} of {} and {}", a.display(), b.display());
        ensure!(na == nb, "{}: {na:?} against {nb:?}", at());
        let mut sub = None;
        for name in &na {
            let sa = rustix::fs::statat(&da, name, AtFlags::SYMLINK_NOFOLLOW)?;
            let sb = rustix::fs::statat(&db, name, AtFlags::SYMLINK_NOFOLLOW)?;
            let kind = FileType::from_raw_mode(sa.st_mode);
            let meta = |s: &rustix::fs::Stat| {
                let kind = FileType::from_raw_mode(s.st_mode);
                let mode = (kind != FileType::Symlink).then_some(s.st_mode & 0o7777);
                let time = (dir_times || kind != FileType::Directory)
                    .then_some((s.st_mtime, s.st_mtime_nsec));
                (kind, mode, time)
            };
            ensure!(
                meta(&sa) == meta(&sb),
                "{}: {name:?} is {:?} against {:?} (kind, mode, time)",
                at(),
                meta(&sa),
                meta(&sb)
            );
            match kind {
                FileType::RegularFile => {
                    let (ca, cb) = (read_in(&da, name, level)?, read_in(&db, name, level)?);
                    ensure!(
                        ca == cb,
                        "{}: {name:?} holds {:?} against {:?}",
                        at(),
                        String::from_utf8_lossy(&ca),
                        String::from_utf8_lossy(&cb)
                    );
                }
                FileType::Symlink => {
                    let ta = rustix::fs::readlinkat(&da, name, Vec::new())?;
                    let tb = rustix::fs::readlinkat(&db, name, Vec::new())?;
                    ensure!(ta == tb, "{}: link {name:?}: {ta:?} against {tb:?}", at());
                }
                FileType::Directory => {
                    ensure!(sub.is_none(), "{}: more than one directory", at());
                    sub = Some(name);
                }
                _ => {}
            }
        }
        let Some(name) = sub else { return Ok(()) };
        (da, db) = (open_sub(&da, name, level)?, open_sub(&db, name, level)?);
    }
    unreachable!("the levels of a chain are counted without end")
}

/// Removes the tree at `path`, level by level: each directory is reached from the one above,
/// emptied of what is not a directory, and removed from its parent (reached through `..`)
/// once empty. One descriptor is open at a time, whatever the depth. An entry that vanishes
/// meanwhile is let go (a versioning child killed with its twoway removes its own work).
fn remove_tree(path: &Path) -> TestResult {
    use rustix::io::Errno;
    let gone = |result: rustix::io::Result<()>| match result {
        Err(Errno::NOENT) => Ok(()),
        other => other,
    };
    let mut dir = match open_dir(path) {
        Ok(dir) => dir,
        Err(_) if fs::symlink_metadata(path).is_err() => return Ok(()),
        Err(err) => return Err(err),
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
    // The names from `path` down to `dir`.
    let mut down: Vec<OsString> = Vec::new();
    loop {
        let mut sub = None;
        for name in names(&dir)? {
            match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    sub = Some(name);
                    break;
                }
                Ok(_) => gone(rustix::fs::unlinkat(&dir, &name, AtFlags::empty()))?,
                Err(Errno::NOENT) => {}
                Err(err) => return Err(err.into()),
            }
        }
        if let Some(name) = sub {
            // A version keeps SOURCE's modes: a read-only directory is opened up first.
            gone(rustix::fs::chmodat(
                &dir,
                &name,
                Mode::RWXU,
                AtFlags::empty(),
            ))?;
            match rustix::fs::openat(&dir, &name, flags, Mode::empty()) {
                Ok(inner) => {
                    dir = inner;
                    down.push(name);
                }
                Err(Errno::NOENT) => {}
                Err(err) => return Err(err.into()),
            }
            continue;
        }
        let Some(name) = down.pop() else { break };
        let parent = rustix::fs::openat(&dir, "..", flags, Mode::empty())?;
        gone(rustix::fs::unlinkat(&parent, &name, AtFlags::REMOVEDIR))?;
        dir = parent;
    }
    drop(dir);
    fs::remove_dir(path).context(|| format!("remove {}", path.display()))
}
