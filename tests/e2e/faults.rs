//! Faults and hostile input (SPEC §7, §8; issue 7): trees changed between the scan and the apply
//! step of a pass (through the documented test aid `ONEWAY_TEST_HOOK_AFTER_PLAN`, so without
//! sleeps or races), SIGKILL at many points of every kind of pass and of a restore, a full disk,
//! permission faults as an unprivileged user, damaged state files, and hostile trees. Every test
//! runs the real binaries and checks the exit code, the log and the disk.
//!
//! The disk-full and the 100,000-entry tests mount a small tmpfs (they run as root, as the
//! README asks); where that is impossible, the disk-full tests print `SKIPPED:` on the console
//! (past the test harness's capture) and return, so that a skip is never mistaken for a pass.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// The test aid's variable (docs/testing.md, "The test aid").
const HOOK: &str = "ONEWAY_TEST_HOOK_AFTER_PLAN";

// ---------------------------------------------------------------------------------------------
// Helpers

/// `path` quoted for `sh`.
fn q(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// A script run by the test aid, in `ROOT/hook/`: it runs its body (with `set -e`), then counts
/// its runs, so a test can tell that its change really happened between scan and apply.
struct Hook {
    dir: PathBuf,
    script: PathBuf,
}

impl Hook {
    /// A hook running the shell commands `body`.
    fn new(env: &Env, body: &str) -> Res<Hook> {
        let dir = env.root.join("hook");
        fs::create_dir_all(&dir)?;
        let script = dir.join("hook.sh");
        fs::write(
            &script,
            format!("set -e\n{body}\necho run >> {}\n", q(&dir.join("ran"))),
        )?;
        Ok(Hook { dir, script })
    }

    /// A hook that holds the pass right after its plan: it creates `ready`, then waits until
    /// [`Hook::release`] creates `go` (or a minute passes, so that nothing is left hanging).
    fn gate(env: &Env) -> Res<Hook> {
        let hook = Hook::new(env, "")?;
        fs::write(
            &hook.script,
            format!(
                ": > {ready}\n\
                 i=0\n\
                 while [ ! -e {go} ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done\n",
                ready = q(&hook.dir.join("ready")),
                go = q(&hook.dir.join("go")),
            ),
        )?;
        Ok(hook)
    }

    /// The variable's value.
    fn value(&self) -> String {
        format!("sh {}", q(&self.script))
    }

    fn runs(&self) -> usize {
        fs::read_to_string(self.dir.join("ran"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Runs `PROGRAM --once EXTRA... SOURCE BACKUP` with the hook set; fails unless the hook ran
    /// exactly once.
    fn once(&self, env: &Env, extra: &[&dyn AsRef<OsStr>]) -> Res<Run> {
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"--once"];
        args.extend_from_slice(extra);
        args.push(&env.src);
        args.push(&env.dst);
        let mut cmd = env.command(&args);
        cmd.env(HOOK, self.value());
        let before = self.runs();
        let run = env.run_command(cmd, &env.log)?;
        ensure!(
            self.runs() == before + 1,
            "the test hook ran {} times during the pass, expected once: the change under test \
             did not happen between scan and apply\n{run}",
            self.runs() - before
        );
        Ok(run)
    }

    fn ready(&self) -> bool {
        self.dir.join("ready").exists()
    }

    /// Lets a gated pass (or the orphaned hook of a killed one) go on.
    fn release(&self) -> TestResult {
        fs::write(self.dir.join("go"), "")?;
        Ok(())
    }

    /// Makes the gate close again for the next run.
    fn reset(&self) -> TestResult {
        for name in ["ready", "go"] {
            match fs::remove_file(self.dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Writes `content` to `dir/rel` (parents created) with mtime `mtime` seconds.
fn put(dir: &Path, rel: &str, content: &str, mtime: i64) -> Res<PathBuf> {
    let path = write(dir, rel, content)?;
    set_mtime(&path, mtime, 0)?;
    Ok(path)
}

/// `len` bytes of a xorshift stream seeded by `seed`: large files that differ by seed.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Fails unless the run logged an ERROR line containing `needle`.
fn expect_error_about(run: &Run, needle: &str) -> TestResult {
    ensure!(
        run.lines()
            .iter()
            .any(|l| l.level == "ERROR" && l.message.contains(needle)),
        "expected an ERROR line about {needle}\n{run}"
    );
    Ok(())
}

/// Fails unless the run ended with exit code 0 or 1 (a pass that finished), not a crash.
fn expect_finished(run: &Run) -> TestResult {
    ensure!(
        matches!(run.status.code(), Some(0 | 1)),
        "expected a finished pass (exit code 0 or 1), got {}\n{run}",
        describe_status(run.status)
    );
    Ok(())
}

/// A pass that must succeed with no error and no conflict.
fn expect_clean(run: &Run) -> TestResult {
    run.expect_code(0)?;
    let summary = run.summary()?;
    ensure!(
        summary.errors == 0 && summary.conflicts.unwrap_or(0) == 0,
        "expected no error and no conflict, got {summary:?}\n{run}"
    );
    Ok(())
}

/// Fails unless a further pass finds nothing to do.
fn expect_nothing_left(env: &Env) -> TestResult {
    let again = env.once(&[])?;
    expect_clean(&again)?;
    let ops = again.operations();
    ensure!(
        ops.is_empty(),
        "a further pass still found work: {ops:?}\n{again}"
    );
    Ok(())
}

/// The distinct contents of the regular files under `dir` (links not followed).
fn contents(dir: &Path) -> Res<BTreeSet<Vec<u8>>> {
    let mut out = BTreeSet::new();
    for (rel, entry) in snapshot(dir)? {
        match entry.node {
            Node::File(Content::Bytes(b)) => {
                out.insert(b);
            }
            Node::File(Content::Large(_)) => {
                out.insert(read(&dir.join(rel))?);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Fails unless every one of `wanted` is the content of some file under `dir`.
fn expect_contents_kept(what: &str, dir: &Path, wanted: &[&str]) -> TestResult {
    let have = contents(dir)?;
    let lost: Vec<&&str> = wanted
        .iter()
        .filter(|w| !have.contains(w.as_bytes()))
        .collect();
    ensure!(
        lost.is_empty(),
        "{what}: these contents are no longer in any file of {}: {lost:?}",
        dir.display()
    );
    Ok(())
}

/// Whether `rel` is, or is inside, one of our temporary names (`.oneway-tmp-…`): a staged
/// file, or a new directory being built hidden, whose content is at no path of the tree yet.
fn is_temp(rel: &Path) -> bool {
    rel.iter()
        .any(|n| n.as_bytes().starts_with(TMP_PREFIX.as_bytes()))
}

/// Names in `dir` (not recursive) starting with `prefix`.
fn names_starting(dir: &Path, prefix: &str) -> Res<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).context(|| format!("list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Writes a line on the console past the test harness's capture, so that it shows for a
/// passing test too.
fn console(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}

// ---------------------------------------------------------------------------------------------
// Fingerprints: what each path holds, by content

/// Kind and content of one entry: a file by its SHA-256, a link by its target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fp {
    File(String),
    Dir,
    Link(PathBuf),
    Special,
}

type Fps = BTreeMap<PathBuf, Fp>;

/// Every entry under `dir`, links never followed.
fn fingerprints(dir: &Path) -> Res<Fps> {
    let mut out = Fps::new();
    fingerprint_walk(dir, Path::new(""), &mut out)?;
    Ok(out)
}

fn fingerprint_walk(root: &Path, rel: &Path, out: &mut Fps) -> TestResult {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).context(|| format!("list {}", dir.display()))? {
        let rel = rel.join(entry?.file_name());
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).context(|| format!("stat {}", path.display()))?;
        let fp = if meta.file_type().is_symlink() {
            Fp::Link(read_link(&path)?)
        } else if meta.is_dir() {
            Fp::Dir
        } else if meta.is_file() {
            let digest =
                checksum::file_digest(&path).context(|| format!("hash {}", path.display()))?;
            Fp::File(hex_of(&digest))
        } else {
            Fp::Special
        };
        let is_dir = fp == Fp::Dir;
        out.insert(rel.clone(), fp);
        if is_dir {
            fingerprint_walk(root, &rel, out)?;
        }
    }
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `fps` without our temporary files.
fn without_temps(mut fps: Fps) -> Fps {
    fps.retain(|rel, _| !is_temp(rel));
    fps
}

/// Fails unless `now` holds, at every path but our temporary files, what `old` or `new` holds
/// there (absence included): never a partial file, never a third content. A path whose kind
/// changes from `old` to `new` may also be absent for a moment (the old entry is removed before
/// the new one is made).
fn expect_each_path_old_or_new(what: &str, now: &Fps, old: &Fps, new: &Fps) -> TestResult {
    let paths: BTreeSet<&PathBuf> = now.keys().chain(old.keys()).chain(new.keys()).collect();
    let mut bad = Vec::new();
    for rel in paths {
        if is_temp(rel) {
            continue;
        }
        let (n, o, w) = (now.get(rel), old.get(rel), new.get(rel));
        let kind_change = matches!((o, w), (Some(a), Some(b))
            if std::mem::discriminant(a) != std::mem::discriminant(b));
        if n != o && n != w && !(n.is_none() && kind_change) {
            bad.push(format!(
                "{rel:?}: holds {n:?}; before the pass {o:?}, after it {w:?}"
            ));
        }
    }
    ensure!(
        bad.is_empty(),
        "{what}: {} path(s) hold neither their old nor their new content:\n  {}",
        bad.len(),
        bad.iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    Ok(())
}

/// Fails unless two fingerprint maps are equal, listing the differences.
fn expect_same_fps(what: &str, have: &Fps, want: &Fps) -> TestResult {
    let mut diffs = Vec::new();
    for rel in have.keys().chain(want.keys()).collect::<BTreeSet<_>>() {
        let (h, w) = (have.get(rel), want.get(rel));
        if h != w {
            diffs.push(format!("{rel:?}: have {h:?}, want {w:?}"));
        }
    }
    ensure!(
        diffs.is_empty(),
        "{what}: {} difference(s):\n  {}",
        diffs.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Kills

/// When a crash test sends SIGKILL.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// While the test hook holds the pass right after its plan: before any change.
    AfterPlan,
    /// This many milliseconds after the start.
    Millis(u64),
    /// As soon as the run has logged this many operation lines (it is then mid-apply).
    Ops(usize),
}

/// The number of operation lines in `text` after its first `from` bytes.
fn operations_after(text: &str, from: usize) -> usize {
    text.get(from..)
        .unwrap_or_default()
        .lines()
        .filter_map(parse_log_line)
        .filter(|l| is_operation(&l.message))
        .count()
}

/// Starts `args` in the background (with the gate hook for [`KillAt::AfterPlan`]), sends
/// SIGKILL at `at`, and returns how it ended. A run that finished before the kill point is
/// simply reaped.
/// How a run that [`run_and_kill`] killed ended, and what it had logged on the console (which
/// gets each line as it is logged; the log file gets them in batches, and loses the last one to
/// SIGKILL).
struct Killed {
    status: ExitStatus,
    console: String,
}

fn run_and_kill(env: &Env, args: &[&dyn AsRef<OsStr>], at: KillAt, gate: &Hook) -> Res<Killed> {
    gate.reset()?;
    let mut cmd = env.command(args);
    if matches!(at, KillAt::AfterPlan) {
        cmd.env(HOOK, gate.value());
    }
    let mut child = env.spawn_command(cmd)?;
    let deadline = Instant::now() + RUN_TIMEOUT;
    match at {
        KillAt::Millis(ms) => thread::sleep(Duration::from_millis(ms)),
        KillAt::AfterPlan => {
            while !gate.ready() {
                if let Some(status) = child.try_wait()? {
                    return Err(fail(format!(
                        "the run ended ({}) before its plan was made: no change was due?\n{}",
                        describe_status(status),
                        child.stderr()
                    )));
                }
                ensure!(Instant::now() < deadline, "the gate hook never ran");
                thread::sleep(Duration::from_millis(1));
            }
        }
        KillAt::Ops(n) => {
            // Counted on the console: a pass on a busy machine could end between two of the log
            // file's batches.
            while operations_after(&child.stderr_all(), 0) < n {
                if child.try_wait()?.is_some() {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "no {n} operations within {RUN_TIMEOUT:?}"
                );
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let status = child.kill()?;
    gate.release()?;
    Ok(Killed {
        status,
        console: child.stderr_all(),
    })
}

/// Whether a killed run was stopped before it logged its summary.
fn cut_short(status: ExitStatus, log: &str, log_start: usize) -> bool {
    status.code().is_none() && last_summary(log.get(log_start..).unwrap_or_default()).is_none()
}

// ---------------------------------------------------------------------------------------------
// 1. Changed during the pass: oneway

#[test]
fn source_rewritten_after_the_scan_is_never_installed_torn() -> TestResult {
    let env = Env::new()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "grow.txt", "version 1\n", T0)?;
    put(s, "same.txt", "AAAA-1\n", T0)?;
    put(s, "quiet.txt", "quiet 1\n", T0)?;
    write(s, "big.bin", pattern(3 << 20, 1))?;
    set_mtime(&s.join("big.bin"), T0, 0)?;
    env.once(&[])?.expect_code(0)?;
    let old = fingerprints(d)?;

    // Changes the scan sees...
    put(s, "grow.txt", "version 2\n", T0 + 10)?;
    put(s, "same.txt", "BBBB-2\n", T0 + 10)?;
    write(s, "big.bin", pattern(3 << 20, 2))?;
    set_mtime(&s.join("big.bin"), T0 + 10, 0)?;
    let scanned = fingerprints(s)?;
    // ...and what the hook writes in their place before the apply step: another size, the same
    // size, and a same-size rewrite of an unchanged file that puts its mtime back.
    let big3 = env.root.join("big3.bin");
    fs::write(&big3, pattern(3 << 20, 3))?;
    let hook = Hook::new(
        &env,
        &format!(
            "printf 'version 3, written during the pass and longer\\n' > {grow}\n\
             printf 'CCCC-3\\n' > {same}\n\
             cat {big3} > {big}\n\
             printf 'QUIET 2\\n' > {quiet}\n\
             touch -m -d @{T0} {quiet}\n",
            grow = q(&s.join("grow.txt")),
            same = q(&s.join("same.txt")),
            big = q(&s.join("big.bin")),
            big3 = q(&big3),
            quiet = q(&s.join("quiet.txt")),
        ),
    )?;

    let run = hook.once(&env, &[])?;

    expect_finished(&run)?;
    let rewritten = without_temps(fingerprints(s)?);
    let now = without_temps(fingerprints(d)?);
    for (rel, fp) in &now {
        let candidates = [old.get(rel), scanned.get(rel), rewritten.get(rel)];
        ensure!(
            candidates.contains(&Some(fp)),
            "BACKUP/{rel:?} holds {fp:?}: neither its old content, nor SOURCE's at the scan, nor \
             SOURCE's complete rewrite\n{run}"
        );
    }
    ensure!(
        temp_files(d)?.is_empty(),
        "temporary files left in BACKUP: {:?}\n{run}",
        temp_files(d)?
    );

    // The next pass converges, the quiet rewrite included (its change time gives it away).
    let next = env.once(&[])?;
    expect_clean(&next)?;
    assert_trees_equal(s, d)?;
    expect_nothing_left(&env)
}

/// A large file rewritten over and over while passes copy it (the kernel copying it while
/// another thread hashes the copy from a mapping of it): every pass ends normally, BACKUP only
/// ever holds what SOURCE held at one moment (a version, or the start of one: the writer
/// truncates, then writes), and once the writer stops, the next pass converges. (Whether a
/// copy spans two versions is timing: the check after each copy that SOURCE held still is
/// what `source_rewritten_after_the_scan_is_never_installed_torn` pins down.)
#[test]
fn large_file_rewritten_during_its_copies_leaves_backup_a_state_of_it_and_converges() -> TestResult
{
    let env = Env::new()?;
    // Above the size from which a copy hashes on a second thread; three versions, one size.
    let versions: Vec<Vec<u8>> = (1..=3).map(|k| pattern(12 << 20, k)).collect();
    let file = env.src.join("big.bin");
    fs::write(&file, &versions[0])?;
    env.once(&[])?.expect_code(0)?;
    let copy = env.dst.join("big.bin");

    let stop = std::sync::atomic::AtomicBool::new(false);
    let outcome = thread::scope(|scope| -> TestResult {
        let writer = scope.spawn(|| -> io::Result<u64> {
            let mut rewrites = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Truncated, then written: a reader may meet it empty, short or whole.
                fs::write(&file, &versions[1 + (rewrites % 2) as usize])?;
                rewrites += 1;
            }
            Ok(rewrites)
        });
        let mut checked = Ok(());
        for pass in 0..8 {
            let run = env.once(&[])?;
            let held = read(&copy)?;
            if !versions.iter().any(|v| v.starts_with(&held)) {
                checked = Err(fail(format!(
                    "after pass {pass}, BACKUP/big.bin ({} bytes) is not what SOURCE held at \
                     any moment\n{run}",
                    held.len()
                )));
                break;
            }
            ensure!(
                matches!(run.status.code(), Some(0 | 1)),
                "pass {pass}: {}\n{run}",
                describe_status(run.status)
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rewrites = writer.join().expect("the writer panicked")?;
        ensure!(rewrites > 0, "the writer never rewrote the file");
        checked
    });
    outcome?;

    let last = env.once(&[])?;
    expect_clean(&last)?;
    assert_trees_equal(&env.src, &env.dst)
}

#[test]
fn new_directory_whose_name_is_taken_after_the_scan_is_left_as_its_taker_made_it() -> TestResult {
    // A new directory is built hidden and gets its name only when complete: if the name was
    // taken in the meantime, the taker's directory must not receive our copies, nor our mode
    // and time.
    let env = Env::new()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "kept.txt", "kept\n", T0)?;
    env.once(&[])?.expect_code(0)?;
    put(s, "fresh/a.txt", "a\n", T0)?;
    put(s, "fresh/sub/b.txt", "b\n", T0)?;
    put(s, "other/c.txt", "c\n", T0)?;
    let taken = d.join("fresh");
    let hook = Hook::new(
        &env,
        &format!(
            "mkdir {t}\nprintf 'mine\\n' > {t}/mine.txt\nchmod 751 {t}\ntouch -m -d @{T0} {t}\n",
            t = q(&taken),
        ),
    )?;

    let run = hook.once(&env, &[])?;

    run.expect_code(1)?;
    run.expect(
        "ERROR",
        "skipped fresh: it changed in BACKUP since the scan; retried next pass",
    )?;
    let names: Vec<_> = fs::read_dir(&taken)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    ensure!(
        names == ["mine.txt"],
        "BACKUP/fresh now holds {names:?}\n{run}"
    );
    let meta = fs::metadata(&taken)?;
    ensure!(
        (meta.mode() & 0o7777, meta.mtime()) == (0o751, T0),
        "BACKUP/fresh got mode {:o} and mtime {}\n{run}",
        meta.mode() & 0o7777,
        meta.mtime()
    );
    ensure!(
        fs::read(d.join("other/c.txt"))? == b"c\n",
        "other/ was not mirrored\n{run}"
    );
    let left = temp_files(d)?;
    ensure!(left.is_empty(), "leftovers in BACKUP: {left:?}\n{run}");

    // The next pass mirrors into the directory that is there now, as into any other.
    expect_clean(&env.once(&[])?)?;
    assert_trees_equal(s, d)
}

#[test]
fn backup_edited_after_the_scan_is_never_overwritten_and_mirrored_next_pass() -> TestResult {
    let env = Env::new()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "replace.txt", "old\n", T0)?;
    put(s, "remove.txt", "to be removed\n", T0)?;
    put(s, "meta.txt", "same content\n", T0)?;
    put(s, "gone/inner.txt", "inside a removed directory\n", T0)?;
    env.once(&[])?.expect_code(0)?;

    put(s, "replace.txt", "new from SOURCE, longer\n", T0 + 10)?;
    fs::remove_file(s.join("remove.txt"))?;
    set_mtime(&s.join("meta.txt"), T0 + 10, 0)?;
    put(s, "create.txt", "new in SOURCE\n", T0 + 10)?;
    fs::remove_dir_all(s.join("gone"))?;
    let hook = Hook::new(
        &env,
        &format!(
            "printf 'edited in BACKUP during the pass\\n' > {r}\n\
             printf 'edited in BACKUP too\\n' > {rm}\n\
             printf 'meta edited in BACKUP\\n' > {m}\n\
             printf 'made in BACKUP during the pass\\n' > {c}\n\
             printf 'made inside gone during the pass\\n' > {g}\n",
            r = q(&d.join("replace.txt")),
            rm = q(&d.join("remove.txt")),
            m = q(&d.join("meta.txt")),
            c = q(&d.join("create.txt")),
            g = q(&d.join("gone/new.txt")),
        ),
    )?;

    let run = hook.once(&env, &[])?;

    run.expect_code(1)?;
    for name in ["replace.txt", "remove.txt", "meta.txt", "create.txt"] {
        expect_error_about(&run, name)?;
    }
    for (rel, content) in [
        ("replace.txt", "edited in BACKUP during the pass\n"),
        ("remove.txt", "edited in BACKUP too\n"),
        ("meta.txt", "meta edited in BACKUP\n"),
        ("create.txt", "made in BACKUP during the pass\n"),
        ("gone/new.txt", "made inside gone during the pass\n"),
    ] {
        ensure!(
            kind_of(&d.join(rel))? == Some("file") && read(&d.join(rel))? == content.as_bytes(),
            "BACKUP/{rel}, changed after the scan, was overwritten or removed\n{run}"
        );
    }
    ensure!(temp_files(d)?.is_empty(), "temporary files left\n{run}");

    let next = env.once(&[])?;
    expect_clean(&next)?;
    assert_trees_equal(s, d)?;
    expect_nothing_left(&env)
}

#[test]
fn source_deleted_after_the_scan_is_logged_and_the_next_pass_converges() -> TestResult {
    let env = Env::new()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "changed.txt", "old\n", T0)?;
    put(s, "same-size.txt", "1111\n", T0)?;
    for i in 0..6 {
        // Enough files that stay for the deletions not to look like an unmounted SOURCE.
        put(s, &format!("stays{i}.txt"), "stays\n", T0)?;
    }
    env.once(&[])?.expect_code(0)?;

    put(s, "changed.txt", "changed, then deleted\n", T0 + 10)?;
    put(s, "same-size.txt", "2222\n", T0 + 10)?;
    put(s, "new.txt", "new, then deleted\n", T0 + 10)?;
    put(
        s,
        "newdir/a.txt",
        "a new directory, then deleted\n",
        T0 + 10,
    )?;
    let hook = Hook::new(
        &env,
        &format!(
            "rm {} {} {}\nrm -r {}\n",
            q(&s.join("changed.txt")),
            q(&s.join("same-size.txt")),
            q(&s.join("new.txt")),
            q(&s.join("newdir")),
        ),
    )?;

    let run = hook.once(&env, &[])?;

    expect_finished(&run)?;
    for name in ["changed.txt", "same-size.txt", "new.txt", "newdir/a.txt"] {
        ensure!(
            run.lines()
                .iter()
                .any(|l| l.level != "INFO" && l.message.contains(name)),
            "no warning or error about {name}, which vanished from SOURCE\n{run}"
        );
    }
    // The read failed: the old copies stay (never deleted because of a read error), nothing
    // new was made of what vanished.
    ensure!(
        read(&d.join("changed.txt"))? == b"old\n",
        "BACKUP/changed.txt lost\n{run}"
    );
    ensure!(
        read(&d.join("same-size.txt"))? == b"1111\n",
        "BACKUP/same-size.txt lost\n{run}"
    );
    ensure!(
        kind_of(&d.join("new.txt"))?.is_none(),
        "BACKUP/new.txt was made\n{run}"
    );
    ensure!(temp_files(d)?.is_empty(), "temporary files left\n{run}");

    let next = env.once(&[])?;
    expect_clean(&next)?;
    assert_trees_equal(s, d)?;
    expect_nothing_left(&env)
}

// ---------------------------------------------------------------------------------------------
// 1. Changed during the pass: twoway

/// One of the two roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Backup,
}

impl Side {
    fn dir(self, env: &Env) -> &Path {
        match self {
            Side::Source => &env.src,
            Side::Backup => &env.dst,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Source => Side::Backup,
            Side::Backup => Side::Source,
        }
    }
}

/// A twoway pass that must succeed cleanly and leave both sides equal.
fn sync(env: &Env) -> Res<Run> {
    let run = env.once(&[])?;
    expect_clean(&run)?;
    assert_synced(&env.src, &env.dst)?;
    Ok(run)
}

#[test]
fn twoway_never_overwrites_what_changed_after_the_scan_and_loses_nothing() -> TestResult {
    for edited in [Side::Source, Side::Backup] {
        let env = Env::twoway()?;
        let from = edited.dir(&env).to_path_buf();
        let to = edited.other().dir(&env).to_path_buf();
        put(&from, "a.txt", "base a\n", T0)?;
        put(&from, "d.txt", "base d\n", T0)?;
        sync(&env)?;

        // The pass will carry an edit of a.txt and the deletion of d.txt to the other side...
        put(&from, "a.txt", "edited on the first side\n", T0 + 10)?;
        fs::remove_file(from.join("d.txt"))?;
        // ...where both change after the scan.
        let hook = Hook::new(
            &env,
            &format!(
                "printf 'edited on the other side during the pass\\n' > {a}\n\
                 printf 'd edited on the other side during the pass\\n' > {d}\n",
                a = q(&to.join("a.txt")),
                d = q(&to.join("d.txt")),
            ),
        )?;

        let run = hook.once(&env, &[])?;

        let context = |e: Box<dyn std::error::Error>| fail(format!("edited in {edited:?}: {e:?}"));
        run.expect_code(1).map_err(context)?;
        expect_error_about(&run, "a.txt").map_err(context)?;
        expect_error_about(&run, "d.txt").map_err(context)?;
        ensure!(
            read(&to.join("a.txt"))? == b"edited on the other side during the pass\n"
                && read(&to.join("d.txt"))? == b"d edited on the other side during the pass\n",
            "edited in {edited:?}: a change made after the scan was overwritten or removed\n{run}"
        );

        // The next pass sees both edits of a.txt (a conflict: both kept) and the edit of d.txt
        // beating its deletion.
        let next = env.once(&[])?;
        next.expect_code(0).map_err(context)?;
        let all = [
            "edited on the first side\n",
            "edited on the other side during the pass\n",
            "d edited on the other side during the pass\n",
        ];
        expect_contents_kept("SOURCE", &env.src, &all).map_err(context)?;
        expect_contents_kept("BACKUP", &env.dst, &all).map_err(context)?;
        assert_synced(&env.src, &env.dst).map_err(context)?;
        expect_nothing_left(&env).map_err(context)?;
    }
    Ok(())
}

#[test]
fn files_created_on_both_sides_during_a_twoway_pass_are_all_kept() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "base.txt", "base\n", T0)?;
    sync(&env)?;

    put(s, "planned.txt", "planned copy from SOURCE\n", T0 + 10)?;
    let hook = Hook::new(
        &env,
        &format!(
            "printf 'made in SOURCE during the pass\\n' > {s_new}\n\
             printf 'made in BACKUP during the pass\\n' > {d_new}\n\
             printf 'BACKUP made planned.txt first\\n' > {clash}\n\
             printf 'both: SOURCE\\n' > {s_both}\n\
             printf 'both: BACKUP\\n' > {d_both}\n\
             mkdir {s_dir} {d_dir}\n\
             printf 'dir: SOURCE\\n' > {s_dir}/x.txt\n\
             printf 'dir: BACKUP\\n' > {d_dir}/y.txt\n",
            s_new = q(&s.join("during-s.txt")),
            d_new = q(&d.join("during-b.txt")),
            clash = q(&d.join("planned.txt")),
            s_both = q(&s.join("both.txt")),
            d_both = q(&d.join("both.txt")),
            s_dir = q(&s.join("newdir")),
            d_dir = q(&d.join("newdir")),
        ),
    )?;

    let run = hook.once(&env, &[])?;

    run.expect_code(1)?;
    expect_error_about(&run, "planned.txt")?;
    ensure!(
        read(&d.join("planned.txt"))? == b"BACKUP made planned.txt first\n",
        "the file made in BACKUP after the scan was overwritten\n{run}"
    );

    let next = env.once(&[])?;
    next.expect_code(0)?;
    let all = [
        "base\n",
        "planned copy from SOURCE\n",
        "made in SOURCE during the pass\n",
        "made in BACKUP during the pass\n",
        "BACKUP made planned.txt first\n",
        "both: SOURCE\n",
        "both: BACKUP\n",
        "dir: SOURCE\n",
        "dir: BACKUP\n",
    ];
    expect_contents_kept("SOURCE", s, &all)?;
    expect_contents_kept("BACKUP", d, &all)?;
    assert_synced(s, d)?;
    expect_nothing_left(&env)
}

#[test]
fn files_deleted_during_a_twoway_pass_settle_next_pass_with_nothing_lost() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    for name in ["x", "y", "z", "keep"] {
        put(s, &format!("{name}.txt"), &format!("base {name}\n"), T0)?;
    }
    sync(&env)?;

    put(
        s,
        "x.txt",
        "x edited in SOURCE, then deleted there\n",
        T0 + 10,
    )?;
    put(s, "y.txt", "y edited in SOURCE\n", T0 + 10)?;
    fs::remove_file(s.join("z.txt"))?;
    put(d, "w.txt", "w new in BACKUP, then deleted there\n", T0 + 10)?;
    let hook = Hook::new(
        &env,
        &format!(
            "rm {} {} {} {}\n",
            q(&s.join("x.txt")),
            q(&d.join("y.txt")),
            q(&d.join("z.txt")),
            q(&d.join("w.txt")),
        ),
    )?;

    let run = hook.once(&env, &[])?;

    expect_finished(&run)?;
    for name in ["x.txt", "y.txt", "w.txt"] {
        expect_error_about(&run, name)?;
    }

    // x: edited then deleted in SOURCE: deleted. y: edited in SOURCE, deleted in BACKUP: the
    // edit wins. z: deleted on both sides. w: made and deleted in BACKUP: nothing.
    let next = env.once(&[])?;
    expect_clean(&next)?;
    let want = [
        ("keep.txt", Want::file("base keep\n")),
        ("y.txt", Want::file("y edited in SOURCE\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    expect_nothing_left(&env)
}

// ---------------------------------------------------------------------------------------------
// 2. Crash tests

/// SOURCE at generation `g` of the oneway crash test: 360 small files in 8 directories (a third
/// of them edited, a tenth deleted and another tenth added at every generation, a few with a
/// new mode only), three 3 MiB files (one rewritten per generation), a symlink retargeted, a
/// path that turns from file to directory and back, and a directory that comes and goes.
fn oneway_generation(src: &Path, g: u32) -> TestResult {
    empty_dir(src)?;
    for dir in 0..8u32 {
        for i in 0..50u32 {
            if (i * 7 + dir + g).is_multiple_of(10) {
                continue;
            }
            let tag = if (i + dir) % 3 == g % 3 { g } else { 0 };
            let rel = format!("d{dir}/f{i:02}.txt");
            let pad = ((i * 37 + dir * 11 + tag * 13) % 400) as usize;
            let path = write(src, &rel, format!("{rel} tag {tag}\n{}", "x".repeat(pad)))?;
            let mode = if (i + g).is_multiple_of(13) {
                0o600
            } else {
                0o644
            };
            chmod(&path, mode)?;
            set_mtime(&path, T0 + i64::from(i + dir * 100 + tag * 1000), 0)?;
        }
    }
    for k in 0..3u32 {
        let tag = if g % 3 == k { g } else { 0 };
        let path = write(
            src,
            format!("large{k}.bin"),
            pattern(3 << 20, u64::from(k * 1000 + tag)),
        )?;
        set_mtime(&path, T0 + i64::from(tag), 0)?;
    }
    let link = symlink(src, "link", format!("d{}/f{:02}.txt", g % 8, g % 50))?;
    set_mtime(&link, T0 + i64::from(g), 0)?;
    if g.is_multiple_of(2) {
        put(src, "morph", &format!("morph is a file at {g}\n"), T0)?;
    } else {
        put(
            src,
            "morph/inner.txt",
            &format!("morph is a directory at {g}\n"),
            T0,
        )?;
    }
    for i in 0..4 {
        put(
            src,
            &format!("extra{}/e{i}.txt", g % 2),
            &format!("extra {g} {i}\n"),
            T0,
        )?;
    }
    Ok(())
}

#[test]
fn sigkill_at_any_point_of_a_mirror_pass_leaves_old_or_new_and_the_next_pass_converges()
-> TestResult {
    let env = Env::new()?;
    let gate = Hook::gate(&env)?;
    oneway_generation(&env.src, 0)?;
    env.once(&[])?.expect_code(0)?;
    let plans = [
        KillAt::AfterPlan,
        KillAt::Ops(1),
        KillAt::Ops(20),
        KillAt::Ops(80),
        KillAt::Ops(200),
        KillAt::Millis(0),
        KillAt::Millis(5),
        KillAt::Millis(20),
        KillAt::Millis(60),
    ];
    let mut cut = Vec::new();
    for (round, at) in plans.into_iter().enumerate() {
        let g = round as u32 + 1;
        let old = fingerprints(&env.dst)?;
        oneway_generation(&env.src, g)?;
        let new = fingerprints(&env.src)?;
        kill_mirror_pass_then_converge(&env, &gate, at, (&old, &new), &mut cut)?;
    }
    expect_kills_landed("a pass", &cut)
}

/// Kills `oneway --once SOURCE BACKUP` at `at`; checks that BACKUP holds each path as `old`
/// or `new` has it, then that the next pass makes BACKUP equal to SOURCE with no temporary
/// file left. A kill that cut the pass short goes into `cut`, with the operations it logged.
fn kill_mirror_pass_then_converge(
    env: &Env,
    gate: &Hook,
    at: KillAt,
    (old, new): (&Fps, &Fps),
    cut: &mut Vec<(KillAt, usize)>,
) -> TestResult {
    let context = kill_pass(env, gate, at, cut)?;
    let now = fingerprints(&env.dst)?;
    expect_each_path_old_or_new("BACKUP", &now, old, new).map_err(context)?;

    let rerun = env.once(&[]).map_err(context)?;
    expect_clean(&rerun).map_err(context)?;
    assert_trees_equal(&env.src, &env.dst).map_err(context)?;
    let left = temp_files(&env.dst)?;
    ensure!(
        left.is_empty(),
        "after SIGKILL at {at:?}: temporary files left after the next pass: {left:?}"
    );
    Ok(())
}

/// Runs `--once SOURCE BACKUP` and kills it at `at`; a kill that cut the pass short goes into
/// `cut`, with the operations it logged. Gives what to wrap a later failure in: how the run
/// ended and what it had done.
fn kill_pass(
    env: &Env,
    gate: &Hook,
    at: KillAt,
    cut: &mut Vec<(KillAt, usize)>,
) -> Res<impl Fn(Box<dyn std::error::Error>) -> Box<dyn std::error::Error> + Copy> {
    let Killed { status, console } = run_and_kill(env, &[&"--once", &env.src, &env.dst], at, gate)?;
    let ops = operations_after(&console, 0);
    if cut_short(status, &console, 0) {
        cut.push((at, ops));
    }
    Ok(move |e: Box<dyn std::error::Error>| {
        fail(format!(
            "after SIGKILL at {at:?} ({}, {ops} operations logged): {e:?}",
            describe_status(status)
        ))
    })
}

/// At least three of the kills cut `what` short, and one of them after it had done something:
/// the kills did land inside it.
fn expect_kills_landed(what: &str, cut: &[(KillAt, usize)]) -> TestResult {
    eprintln!("kills that cut {what} short (point, operations logged): {cut:?}");
    ensure!(
        cut.len() >= 3 && cut.iter().any(|(_, ops)| *ops > 0),
        "too few kills landed inside {what}, and at least one must land mid-apply: {cut:?}"
    );
    Ok(())
}

/// A first copy into an empty BACKUP applies each directory as soon as the walk has planned
/// it (so that its plan is never held whole): killed anywhere, it leaves BACKUP holding only
/// whole files of SOURCE (and hidden directories of ours), and the next pass converges.
#[test]
fn sigkill_at_any_point_of_a_first_copy_leaves_whole_files_and_the_next_pass_converges()
-> TestResult {
    let env = Env::new()?;
    let gate = Hook::gate(&env)?;
    oneway_generation(&env.src, 1)?;
    let new = fingerprints(&env.src)?;
    let plans = [
        KillAt::AfterPlan,
        KillAt::Ops(1),
        KillAt::Ops(40),
        KillAt::Ops(200),
        KillAt::Millis(5),
        KillAt::Millis(30),
    ];
    let mut cut = Vec::new();
    for at in plans {
        empty_dir(&env.dst)?;
        kill_mirror_pass_then_converge(&env, &gate, at, (&Fps::new(), &new), &mut cut)?;
    }
    expect_kills_landed("a first copy", &cut)
}

/// A first copy stopped by SIGTERM right after its plan began (the stop flag set while the
/// after-plan hook holds it) changes nothing in BACKUP: no directory is made, hidden or not,
/// and none is published empty; the next pass makes the whole copy.
#[test]
fn first_copy_stopped_before_it_copies_leaves_backup_empty() -> TestResult {
    let env = Env::new()?;
    oneway_generation(&env.src, 1)?;
    let gate = Hook::gate(&env)?;
    let mut cmd = env.command(&[&"--once", &env.src, &env.dst]);
    cmd.env(HOOK, gate.value());
    let mut run = env.spawn_command(cmd)?;
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !gate.ready() {
        ensure!(
            run.try_wait()?.is_none(),
            "the first copy ended before its plan was made\n{}",
            run.stderr()
        );
        ensure!(Instant::now() < deadline, "the gate hook never ran");
        thread::sleep(Duration::from_millis(1));
    }
    // The stop flag is set while the pass waits on the hook, before it changes anything.
    run.signal("TERM")?;
    thread::sleep(Duration::from_millis(100));
    gate.release()?;
    let status = run.wait_exit(WAIT_TIMEOUT)?;
    // A --once pass a stop cut short exits 3, not 0 (issue 23: it did not finish).
    ensure!(
        status.code() == Some(3),
        "a stopped first copy ended with {}, expected exit code 3\n{}",
        describe_status(status),
        run.stderr()
    );
    let held: Vec<PathBuf> = snapshot(&env.dst)?.into_keys().collect();
    ensure!(
        held.is_empty(),
        "BACKUP holds {held:?} after a first copy stopped before it began\n{}",
        run.stderr()
    );
    let next = env.once(&[])?;
    expect_clean(&next)?;
    assert_trees_equal(&env.src, &env.dst)
}

/// The entries of VDIR that are not a sign of an unfinished rotation: `_0` … `_{keep-1}`,
/// `.current`, the one generation it names, and the version trees and manifests it names.
fn expect_clean_vdir(vdir: &Path, keep: usize) -> TestResult {
    let current = read_link(&vdir.join(".current"))?;
    let gen_name = current.to_string_lossy().into_owned();
    let gen_dir = vdir.join(&current);
    let mut live = BTreeSet::new();
    for k in 0..keep {
        let target = read_link(&gen_dir.join(format!("_{k}")))?;
        let id = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        live.insert(id.clone());
        live.insert(format!("{id}.manifest"));
    }
    let mut stray = Vec::new();
    for entry in fs::read_dir(vdir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let ours = name == ".current"
            || name == gen_name
            || live.contains(&name)
            || (name.starts_with('_') && name[1..].parse::<usize>().is_ok_and(|k| k < keep));
        if !ours {
            stray.push(name);
        }
    }
    ensure!(
        stray.is_empty(),
        "leftovers of an unfinished rotation in {}: {stray:?}",
        vdir.display()
    );
    Ok(())
}

/// The pair (`_0`, `_1`) of a version directory, by content.
fn version_pair(vdir: &Path) -> Res<(Fps, Fps)> {
    Ok((
        fingerprints(&vdir.join("_0/"))?,
        fingerprints(&vdir.join("_1/"))?,
    ))
}

#[test]
fn sigkill_at_any_point_of_a_rotation_leaves_old_or_new_versions_and_no_leftovers() -> TestResult {
    let env = Env::new()?;
    let gate = Hook::gate(&env)?;
    let vdir = env.dst.clone();
    let versioned_args: [&dyn AsRef<OsStr>; 4] = [&"--once", &"--versioned", &env.src, &vdir];
    for g in 0..2 {
        oneway_generation(&env.src, g)?;
        env.run(&versioned_args)?.expect_code(0)?;
    }
    // `None`: kill at the gate after the plan; `Some(ms)`: `ms` after the build began.
    let plans: [Option<u64>; 8] = [
        None,
        Some(0),
        Some(1),
        Some(3),
        Some(8),
        Some(20),
        Some(50),
        Some(150),
    ];
    let mut outcomes = Vec::new();
    for (round, after_build_starts) in plans.into_iter().enumerate() {
        let g = round as u32 + 2;
        let old = version_pair(&vdir)?;
        oneway_generation(&env.src, g)?;
        let new = (old.1.clone(), fingerprints(&env.src)?);

        let status = match after_build_starts {
            None => run_and_kill(&env, &versioned_args, KillAt::AfterPlan, &gate)?.status,
            Some(ms) => {
                let mut child = env.spawn(&versioned_args)?;
                let deadline = Instant::now() + WAIT_TIMEOUT;
                while names_starting(&vdir, ".building-")?.is_empty() && child.try_wait()?.is_none()
                {
                    ensure!(Instant::now() < deadline, "no version build started");
                    thread::sleep(Duration::from_micros(200));
                }
                thread::sleep(Duration::from_millis(ms));
                child.kill()?
            }
        };

        let now = version_pair(&vdir)?;
        let state = if now == old {
            "old"
        } else if now == new {
            "new"
        } else {
            return Err(fail(format!(
                "after SIGKILL {after_build_starts:?} ms into a build ({}), the versions are \
                 neither the old pair nor the new one",
                describe_status(status)
            )));
        };
        outcomes.push((after_build_starts, describe_status(status), state));

        let rerun = env.run(&versioned_args)?;
        rerun.expect_code(0)?;
        ensure!(
            version_pair(&vdir)? == new,
            "after SIGKILL {after_build_starts:?} ms into a build and a rerun, the versions are \
             not (previous latest, SOURCE)\n{rerun}"
        );
        expect_clean_vdir(&vdir, 2)?;
    }
    eprintln!("rotation kills (ms after the build started, status, versions): {outcomes:?}");
    ensure!(
        outcomes.iter().filter(|o| o.2 == "old").count() >= 2,
        "too few kills landed before the switch: {outcomes:?}"
    );
    Ok(())
}

#[test]
fn leftovers_of_a_killed_rotation_are_removed_by_the_next_pass() -> TestResult {
    // The deterministic complement of the test above: every kind of leftover a kill can leave
    // in VDIR, made by hand, including ones a timed kill rarely hits.
    let env = Env::new()?;
    put(&env.src, "a.txt", "a\n", T0)?;
    let versioned: [&dyn AsRef<OsStr>; 4] = [&"--once", &"--versioned", &env.src, &env.dst];
    for content in ["a 1\n", "a 2\n"] {
        put(&env.src, "a.txt", content, T0)?;
        env.run(&versioned)?.expect_code(0)?;
    }
    let versions = (
        snapshot(&env.dst.join("_0/"))?,
        snapshot(&env.dst.join("_1/"))?,
    );
    let v = &env.dst;
    put(v, ".building-18a-99/a.txt", "half a version\n", T0)?;
    put(v, ".listing-tmp-Xy12Ab", "dirsync-manifest 1\ndig", T0)?;
    put(v, ".v-18a-99/a.txt", "a version never switched to\n", T0)?;
    put(v, ".v-18a-99.manifest", "dirsync-manifest 1\n", T0)?;
    put(
        v,
        ".v-18a-98.manifest",
        "a manifest without its version\n",
        T0,
    )?;
    mkdir(v, ".gen-99")?;
    symlink(v, ".current.tmp", ".gen-99")?;

    let run = env.run(&versioned)?;

    expect_clean(&run)?;
    expect_clean_vdir(v, 2)?;
    ensure!(
        (snapshot(&v.join("_0/"))?, snapshot(&v.join("_1/"))?) == versions,
        "the versions changed\n{run}"
    );
    Ok(())
}

#[test]
fn leftover_state_temp_file_of_a_killed_twoway_is_removed_by_the_next_pass() -> TestResult {
    let env = Env::twoway()?;
    put(&env.src, "a.txt", "a\n", T0)?;
    sync(&env)?;
    // What a SIGKILL during the archive's atomic write leaves (a window too short to hit with a
    // timed kill): its temporary file, an hour old.
    let leftover = put(
        &env.root,
        ".listing-tmp-Xy12Ab",
        "twoway-archive 1\nsource /",
        T0,
    )?;
    let hour_ago = now_secs()? - 3600;
    set_mtime(&leftover, hour_ago, 0)?;
    put(&env.src, "b.txt", "b\n", T0)?;

    let run = env.once(&[])?;

    expect_clean(&run)?;
    let left = names_starting(&env.root, ".listing-tmp-")?;
    ensure!(
        left.is_empty(),
        "temporary files left in the state directory: {left:?}\n{run}"
    );
    Ok(())
}

/// The twoway crash fixture: a synced base, then one-sided changes on both sides (creations,
/// edits, deletions, a large file, a directory removed). Returns what both sides must hold once
/// a pass completes.
fn twoway_kill_fixture(env: &Env) -> Res<Fps> {
    let (s, d) = (&env.src, &env.dst);
    for i in 0..120 {
        put(
            s,
            &format!("shared/{i:03}.txt"),
            &format!("shared {i}\n"),
            T0 + i,
        )?;
    }
    for i in 0..5 {
        put(s, &format!("gone/{i}.txt"), &format!("gone {i}\n"), T0)?;
    }
    write(s, "big.bin", pattern(2 << 20, 7))?;
    set_mtime(&s.join("big.bin"), T0, 0)?;
    sync(env)?;
    let base = fingerprints(s)?;

    for dir in 0..4 {
        for i in 0..60 {
            for (side, tag) in [(s, "s"), (d, "b")] {
                let rel = format!("{tag}{dir}/f{i:02}.txt");
                put(
                    side,
                    &rel,
                    &format!("{rel}: {}\n", "y".repeat(i)),
                    T0 + 2000 + i as i64,
                )?;
            }
        }
    }
    for i in 0..20 {
        fs::remove_file(s.join(format!("shared/{i:03}.txt")))?;
    }
    for i in 20..40 {
        put(
            s,
            &format!("shared/{i:03}.txt"),
            &format!("edited {i} in SOURCE\n"),
            T0 + 5000,
        )?;
    }
    for i in 60..80 {
        put(
            d,
            &format!("shared/{i:03}.txt"),
            &format!("edited {i} in BACKUP\n"),
            T0 + 5000,
        )?;
    }
    write(s, "big.bin", pattern(2 << 20, 8))?;
    set_mtime(&s.join("big.bin"), T0 + 5000, 0)?;
    fs::remove_dir_all(d.join("gone"))?;

    // One-sided changes only: each path ends as the side that changed it holds it.
    let (fs_, fd) = (fingerprints(s)?, fingerprints(d)?);
    let mut want = Fps::new();
    for rel in base
        .keys()
        .chain(fs_.keys())
        .chain(fd.keys())
        .collect::<BTreeSet<_>>()
    {
        let (b, x, y) = (base.get(rel), fs_.get(rel), fd.get(rel));
        ensure!(
            x == b || y == b,
            "fixture error: {rel:?} changed on both sides"
        );
        if let Some(fp) = if x != b { x } else { y } {
            want.insert(rel.clone(), fp.clone());
        }
    }
    Ok(want)
}

#[test]
fn sigkill_at_any_point_of_a_twoway_pass_leaves_old_or_new_and_the_rerun_converges() -> TestResult {
    let plans = [
        KillAt::AfterPlan,
        KillAt::Ops(1),
        KillAt::Ops(15),
        KillAt::Ops(120),
        KillAt::Ops(400),
        KillAt::Millis(0),
        KillAt::Millis(10),
    ];
    let mut cut = Vec::new();
    let mut leftovers = 0;
    for at in plans {
        let env = Env::twoway()?;
        let gate = Hook::gate(&env)?;
        let want = twoway_kill_fixture(&env)?;
        let old = (fingerprints(&env.src)?, fingerprints(&env.dst)?);
        let context = kill_pass(&env, &gate, at, &mut cut)?;
        let now = (fingerprints(&env.src)?, fingerprints(&env.dst)?);
        expect_each_path_old_or_new("SOURCE", &now.0, &old.0, &want).map_err(context)?;
        expect_each_path_old_or_new("BACKUP", &now.1, &old.1, &want).map_err(context)?;

        let rerun = env.once(&[]).map_err(context)?;
        expect_clean(&rerun).map_err(context)?;
        for side in [Side::Source, Side::Backup] {
            let have = fingerprints(side.dir(&env))?;
            expect_same_fps(
                &format!("{side:?} after the rerun"),
                &without_temps(have.clone()),
                &want,
            )
            .map_err(context)?;
            // Leftover temporary files stay where they were written: twoway never deletes a
            // file of that name (it could be the user's), and never carries one over.
            for rel in have.keys().filter(|r| is_temp(r)) {
                leftovers += 1;
                ensure!(
                    kind_of(&side.other().dir(&env).join(rel))?.is_none(),
                    "after SIGKILL at {at:?}: temporary file {rel:?} was carried from {side:?}"
                );
            }
        }
        let state_temps = names_starting(&env.root, ".listing-tmp-")?;
        ensure!(
            state_temps.is_empty(),
            "after SIGKILL at {at:?} and a rerun, temporary files in the state directory: \
             {state_temps:?}"
        );
        expect_nothing_left(&env).map_err(context)?;
    }
    eprintln!("{leftovers} temporary files left in the sides");
    expect_kills_landed("a two-way pass", &cut)
}

/// A twoway fixture with the recovery system: `twoway SOURCE BACKUP --once` from the fixture's
/// directory has synced once, written `config.json` and `.info.json`, and made the first
/// version of each side.
fn recovery_env(fill: impl FnOnce(&Env) -> TestResult) -> Res<Env> {
    let env = Env::for_program(Program::Twoway)?;
    fill(&env)?;
    let run = env.once(&[])?;
    expect_clean(&run)?;
    for name in ["config.json", ".info.json"] {
        ensure!(
            env.root.join(name).is_file(),
            "no {name} after the first run\n{run}"
        );
    }
    Ok(env)
}

/// The version directory of SOURCE (`src`) in a [`recovery_env`].
fn src_versions(env: &Env) -> PathBuf {
    env.root.join("__versions__/src")
}

/// The `before-restore-*` directories kept for SOURCE, by content.
fn kept_before_restore(env: &Env) -> Res<Vec<Fps>> {
    let vdir = src_versions(env);
    let mut out = Vec::new();
    for name in names_starting(&vdir, "before-restore-")? {
        out.push(fingerprints(&vdir.join(name))?);
    }
    Ok(out)
}

#[test]
fn sigkill_during_a_restore_leaves_old_or_restored_and_the_rerun_completes() -> TestResult {
    let env = recovery_env(|env| {
        for dir in 0..6 {
            for i in 0..50 {
                put(
                    &env.src,
                    &format!("d{dir}/f{i:02}.txt"),
                    &format!("{dir} {i}\n"),
                    T0,
                )?;
            }
        }
        for k in 0..2 {
            write(&env.src, format!("big{k}.bin"), pattern(4 << 20, k))?;
        }
        Ok(())
    })?;
    let version_dir = fs::canonicalize(src_versions(&env).join("_1"))?;
    let version = snapshot(&version_dir)?;
    let version_fps = fingerprints(&version_dir)?;
    let restore_args: [&dyn AsRef<OsStr>; 2] = [&env.src, &"--restore"];
    // `None`: killed right away; `Some(ms)`: `ms` after the copy began (a restore takes about
    // 0.15 s here, so the last ones land after the swap).
    let plans: [Option<u64>; 8] = [
        None,
        Some(0),
        Some(2),
        Some(8),
        Some(25),
        Some(60),
        Some(120),
        Some(250),
    ];
    let mut outcomes = Vec::new();
    for (round, after_work_starts) in plans.into_iter().enumerate() {
        // What SOURCE holds now differs from its version, and must never be thrown away.
        put(
            &env.src,
            &format!("round-{round}.txt"),
            &format!("only before restore {round}\n"),
            T0,
        )?;
        put(
            &env.src,
            "d0/f00.txt",
            &format!("edited before restore {round}\n"),
            T0 + 9,
        )?;
        let old = fingerprints(&env.src)?;

        let mut child = env.spawn(&restore_args)?;
        if let Some(ms) = after_work_starts {
            let deadline = Instant::now() + WAIT_TIMEOUT;
            while names_starting(&env.root, ".src.restore-")?.is_empty()
                && child.try_wait()?.is_none()
            {
                ensure!(Instant::now() < deadline, "no restore started");
                thread::sleep(Duration::from_micros(200));
            }
            thread::sleep(Duration::from_millis(ms));
        }
        let status = child.kill()?;

        let now = fingerprints(&env.src)?;
        let state = if now == old {
            "old"
        } else if now == version_fps {
            "restored"
        } else {
            expect_same_fps(
                "SOURCE killed mid-restore: neither its old content nor the version; against \
                 the old content",
                &now,
                &old,
            )?;
            "?"
        };
        let leftover = names_starting(&env.root, ".src.restore-")?;
        outcomes.push((
            after_work_starts,
            describe_status(status),
            state,
            leftover.len(),
        ));

        let rerun = env.run(&restore_args)?;
        let context = |e: Box<dyn std::error::Error>| {
            fail(format!(
                "after SIGKILL {after_work_starts:?} ms into a restore ({state}): {e:?}"
            ))
        };
        rerun.expect_code(0).map_err(context)?;
        assert_same("SOURCE restored", &version, &snapshot(&env.src)?).map_err(context)?;
        let left = names_starting(&env.root, ".src.restore-")?;
        ensure!(
            left.is_empty(),
            "after SIGKILL {after_work_starts:?} ms into a restore and a rerun, leftovers beside \
             SOURCE: {left:?}"
        );
        ensure!(
            kept_before_restore(&env)?.contains(&old),
            "after SIGKILL {after_work_starts:?} ms into a restore ({state}) and a rerun, what \
             SOURCE held before is kept nowhere under {}",
            src_versions(&env).display()
        );
    }
    eprintln!("restore kills (ms after the work started, status, SOURCE, leftovers): {outcomes:?}");
    ensure!(
        outcomes.iter().filter(|o| o.3 > 0).count() >= 2,
        "too few kills landed while a restore was being copied: {outcomes:?}"
    );
    Ok(())
}

#[test]
fn restore_killed_after_its_swap_never_loses_what_the_directory_held() -> TestResult {
    let env = recovery_env(|env| {
        put(&env.src, "a.txt", "in the version\n", T0)?;
        Ok(())
    })?;
    put(
        &env.src,
        "precious.txt",
        "written after the last snapshot, nowhere else\n",
        T0,
    )?;
    // The state a SIGKILL leaves right after the restore's exchange: the restored tree at
    // SOURCE, what SOURCE held in the work directory beside it, not yet moved under
    // __versions__ (a window of one rename: too short to hit reliably with a timed kill).
    let work = env.root.join(".src.restore-k1ll3d");
    fs::rename(&env.src, &work)?;
    let version = fs::canonicalize(src_versions(&env).join("_1"))?;
    let status = Command::new("cp")
        .arg("-a")
        .arg(&version)
        .arg(&env.src)
        .status()?;
    ensure!(status.success(), "cp -a failed");

    let run = env.run(&[&env.src, &"--restore"])?;

    run.expect_code(0)?;
    expect_contents_kept(
        "the state directory",
        &env.root,
        &["written after the last snapshot, nowhere else\n"],
    )
}

// ---------------------------------------------------------------------------------------------
// 3. Disk full

/// Mounts a small tmpfs over `path`, or says on the console that `test` is skipped and why:
/// a disk-full test that cannot make its small disk has proved nothing.
fn small_fs_or_skip(path: &Path, size: &str, test: &str) -> Res<Option<Mounted>> {
    let made = Mounted::tmpfs(path, &format!("size={size}"));
    mounted_or_skip(made, &format!("a {size} tmpfs"), &format!("faults::{test}"))
}

#[test]
fn full_backup_disk_fails_the_pass_keeps_old_copies_and_the_next_pass_completes() -> TestResult {
    let env = Env::new()?;
    let Some(small) = small_fs_or_skip(
        &env.dst,
        "2m",
        "full_backup_disk_fails_the_pass_keeps_old_copies_and_the_next_pass_completes",
    )?
    else {
        return Ok(());
    };
    let s = &env.src;
    for i in 0..8 {
        put(s, &format!("small{i}.txt"), &format!("small {i}\n"), T0)?;
    }
    write(s, "data.bin", pattern(1 << 20, 1))?;
    set_mtime(&s.join("data.bin"), T0, 0)?;
    let first = env.once(&[])?;
    expect_clean(&first)?;
    let old = fingerprints(&env.dst)?;

    // Replacing data.bin needs room for the new 1.5 MiB beside the old 1 MiB: it can never fit
    // in 2 MiB, whatever order the copies run in. At most one of the new files fits.
    write(s, "data.bin", pattern(3 << 19, 2))?;
    set_mtime(&s.join("data.bin"), T0 + 10, 0)?;
    write(s, "new1.bin", pattern(600 << 10, 3))?;
    write(s, "new2.bin", pattern(600 << 10, 4))?;
    put(s, "small0.txt", "small 0, edited\n", T0 + 10)?;
    let new = fingerprints(s)?;

    let run = env.once(&[])?;

    run.expect_code(1)?;
    expect_error_about(&run, "data.bin")?;
    ensure!(
        run.log.contains("No space left on device"),
        "no error says the disk is full\n{run}"
    );
    let now = fingerprints(&env.dst)?;
    ensure!(
        now.get(Path::new("data.bin")) == old.get(Path::new("data.bin")),
        "BACKUP/data.bin lost its old content\n{run}"
    );
    expect_each_path_old_or_new("BACKUP on a full disk", &now, &old, &new)?;
    let temps = temp_files(&env.dst)?;
    ensure!(
        temps.is_empty(),
        "a failed copy left its temporary file on the full disk: {temps:?}"
    );

    small.resize("16m")?;
    let next = env.once(&[])?;
    expect_clean(&next)?;
    assert_trees_equal(s, &env.dst)?;
    expect_nothing_left(&env)
}

#[test]
fn full_disk_on_one_side_fails_the_twoway_pass_and_the_archive_keeps_what_failed() -> TestResult {
    let env = Env::twoway()?;
    let Some(small) = small_fs_or_skip(
        &env.dst,
        "2m",
        "full_disk_on_one_side_fails_the_twoway_pass_and_the_archive_keeps_what_failed",
    )?
    else {
        return Ok(());
    };
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "a\n", T0)?;
    put(s, "b.txt", "b\n", T0)?;
    write(s, "data.bin", pattern(1 << 20, 1))?;
    set_mtime(&s.join("data.bin"), T0, 0)?;
    sync(&env)?;
    let old_data = read(&d.join("data.bin"))?;

    let new_data = pattern(3 << 19, 2);
    write(s, "data.bin", &new_data)?;
    set_mtime(&s.join("data.bin"), T0 + 10, 0)?;
    write(s, "new1.bin", pattern(600 << 10, 3))?;
    put(d, "b.txt", "b, edited in BACKUP\n", T0 + 10)?;

    let run = env.once(&[])?;

    run.expect_code(1)?;
    expect_error_about(&run, "data.bin")?;
    ensure!(
        read(&d.join("data.bin"))? == old_data && read(&s.join("data.bin"))? == new_data,
        "data.bin changed on a side it should not have\n{run}"
    );
    ensure!(
        temp_files(d)?.is_empty(),
        "temporary files left on the full disk\n{run}"
    );
    // The archive still holds data.bin as it was: the failed copy is retried, never taken back.
    let archived = sync_core::state::archive::load(
        &env.archive()?,
        &fs::canonicalize(s)?,
        &fs::canonicalize(d)?,
    )?
    .ok_or("no archive")?;
    match archived.get(Path::new("data.bin")) {
        Some(sync_core::model::Item::File { size, .. }) => ensure!(
            *size == 1 << 20,
            "the archive records data.bin as copied ({size} bytes) although the copy failed"
        ),
        other => return Err(fail(format!("the archive holds {other:?} for data.bin"))),
    }

    small.resize("16m")?;
    let next = env.once(&[])?;
    expect_clean(&next)?;
    ensure!(
        read(&s.join("data.bin"))? == new_data && read(&d.join("data.bin"))? == new_data,
        "after room was made, data.bin is not SOURCE's new content on both sides\n{next}"
    );
    ensure!(
        read(&s.join("b.txt"))? == b"b, edited in BACKUP\n",
        "BACKUP's edit of b.txt was lost\n{next}"
    );
    assert_synced(s, d)?;
    expect_nothing_left(&env)
}

// ---------------------------------------------------------------------------------------------
// 4. Permission faults, as the unprivileged user 65534

/// After [`Env::run_as_nobody`] (as root), hands what the test wrote since back to that user.
fn give_back_to_nobody(env: &Env) -> TestResult {
    if fs::metadata(&env.root)?.uid() == NOBODY {
        chown_tree(&env.root, NOBODY, NOBODY)?;
    }
    Ok(())
}

/// Whether the tests run as root (and can hand a directory to another owner).
fn running_as_root() -> Res<bool> {
    let probe = tempfile::tempdir()?;
    Ok(fs::metadata(probe.path())?.uid() == 0)
}

#[test]
fn unreadable_source_files_keep_their_old_copies_and_are_retried() -> TestResult {
    let mut env = Env::new()?;
    let s = env.src.clone();
    put(&s, "grow.txt", "old grow\n", T0)?;
    put(&s, "same.txt", "old same\n", T0)?;
    for i in 0..4 {
        put(&s, &format!("ok{i}.txt"), "ok\n", T0)?;
    }
    env.run_as_nobody()?;
    expect_clean(&env.once(&[])?)?;

    // Another size (copied without comparing), the same size (hashed to compare), and a new
    // file: none readable.
    put(&s, "grow.txt", "new grow, longer than before\n", T0 + 10)?;
    put(&s, "same.txt", "new same\n", T0 + 10)?;
    put(&s, "fresh.txt", "new and unreadable\n", T0 + 10)?;
    give_back_to_nobody(&env)?;
    for name in ["grow.txt", "same.txt", "fresh.txt"] {
        chmod(&s.join(name), 0o000)?;
    }

    let run = env.once(&[])?;

    run.expect_code(1)?;
    for name in ["grow.txt", "same.txt", "fresh.txt"] {
        expect_error_about(&run, &format!("cannot read {name}"))?;
    }
    ensure!(run.summary()?.errors == 3, "expected 3 errors\n{run}");
    let d = &env.dst;
    ensure!(
        read(&d.join("grow.txt"))? == b"old grow\n" && read(&d.join("same.txt"))? == b"old same\n",
        "an old copy was not kept\n{run}"
    );
    ensure!(
        kind_of(&d.join("fresh.txt"))?.is_none(),
        "BACKUP/fresh.txt was made\n{run}"
    );
    ensure!(temp_files(d)?.is_empty(), "temporary files left\n{run}");

    for name in ["grow.txt", "same.txt", "fresh.txt"] {
        chmod(&s.join(name), 0o644)?;
    }
    let retry = env.once(&[])?;
    expect_clean(&retry)?;
    assert_trees_equal(&s, d)
}

/// A oneway fixture run as nobody whose SOURCE holds `locked/` and `open/`, four files each;
/// gives it and SOURCE's path.
fn locked_and_open() -> Res<(Env, PathBuf)> {
    let mut env = Env::new()?;
    let s = env.src.clone();
    for i in 0..4 {
        put(
            &s,
            &format!("locked/f{i}.txt"),
            &format!("locked {i}\n"),
            T0,
        )?;
        put(&s, &format!("open/f{i}.txt"), &format!("open {i}\n"), T0)?;
    }
    env.run_as_nobody()?;
    Ok((env, s))
}

/// A first copy into an empty BACKUP makes each directory of SOURCE's root before it reads it
/// (it streams, see `mirror_pass`): one it cannot read is never left in BACKUP, not even empty,
/// and comes whole once it can be read.
#[test]
fn unlistable_directory_of_a_first_copy_leaves_nothing_in_backup() -> TestResult {
    let (env, s) = locked_and_open()?;
    chmod(&s.join("locked"), 0o000)?;

    let run = env.once(&[])?;

    run.expect_code(1)?;
    expect_error_about(&run, "cannot list locked")?;
    run.expect("INFO", "copied open/f0.txt")?;
    let held: Vec<PathBuf> = snapshot(&env.dst)?.into_keys().collect();
    ensure!(
        held.iter().all(|rel| rel.starts_with("open")),
        "BACKUP holds more than SOURCE's readable directory: {held:?}\n{run}"
    );

    chmod(&s.join("locked"), 0o755)?;
    let retry = env.once(&[])?;
    expect_clean(&retry)?;
    assert_trees_equal(&s, &env.dst)
}

#[test]
fn unlistable_source_directory_is_never_taken_for_empty() -> TestResult {
    let (env, s) = locked_and_open()?;
    expect_clean(&env.once(&[])?)?;
    let before = snapshot(&env.dst.join("locked"))?;

    put(&s, "open/f0.txt", "open 0, edited\n", T0 + 10)?;
    give_back_to_nobody(&env)?;
    chmod(&s.join("locked"), 0o000)?;

    let run = env.once(&[])?;

    run.expect_code(1)?;
    expect_error_about(&run, "cannot list locked")?;
    run.expect("INFO", "replaced open/f0.txt")?;
    assert_same(
        "BACKUP/locked, under an unlistable SOURCE directory",
        &before,
        &snapshot(&env.dst.join("locked"))?,
    )?;
    ensure!(
        fs::metadata(env.dst.join("locked"))?.mode() & 0o777 == 0o755,
        "BACKUP/locked got the mode of the unlistable directory\n{run}"
    );

    chmod(&s.join("locked"), 0o755)?;
    let retry = env.once(&[])?;
    expect_clean(&retry)?;
    assert_trees_equal(&s, &env.dst)
}

#[test]
fn unsearchable_source_directory_is_never_taken_for_empty() -> TestResult {
    let mut env = Env::new()?;
    let s = env.src.clone();
    for i in 0..4 {
        put(
            &s,
            &format!("noexec/f{i}.txt"),
            &format!("noexec {i}\n"),
            T0,
        )?;
        put(&s, &format!("open/f{i}.txt"), &format!("open {i}\n"), T0)?;
    }
    env.run_as_nobody()?;
    expect_clean(&env.once(&[])?)?;
    let before = snapshot(&env.dst.join("noexec"))?;
    // Names can be listed, but nothing in it can be looked at or opened.
    chmod(&s.join("noexec"), 0o644)?;

    let run = env.once(&[])?;

    run.expect_code(1)?;
    expect_error_about(&run, "noexec")?;
    assert_same(
        "BACKUP/noexec, under an unsearchable SOURCE directory",
        &before,
        &snapshot(&env.dst.join("noexec"))?,
    )?;
    chmod(&s.join("noexec"), 0o755)?;
    let retry = env.once(&[])?;
    expect_clean(&retry)?;
    assert_trees_equal(&s, &env.dst)
}

#[test]
fn read_only_backup_directory_fails_its_steps_which_succeed_once_writable() -> TestResult {
    ensure!(
        running_as_root()?,
        "this test hands a directory to root: run the tests as root"
    );
    let mut env = Env::new()?;
    let s = env.src.clone();
    put(&s, "ro/replace.txt", "old\n", T0)?;
    put(&s, "ro/remove.txt", "remove me\n", T0)?;
    for i in 0..4 {
        put(&s, &format!("ok{i}.txt"), "ok\n", T0)?;
    }
    env.run_as_nobody()?;
    expect_clean(&env.once(&[])?)?;

    put(&s, "ro/replace.txt", "new content\n", T0 + 10)?;
    put(&s, "ro/create.txt", "created\n", T0 + 10)?;
    fs::remove_file(s.join("ro/remove.txt"))?;
    put(&s, "ok0.txt", "ok, edited\n", T0 + 10)?;
    give_back_to_nobody(&env)?;
    // BACKUP/ro now belongs to root: the unprivileged oneway can neither write in it nor
    // change its mode.
    let ro = env.dst.join("ro");
    std::os::unix::fs::lchown(&ro, Some(0), Some(0))?;
    chmod(&ro, 0o755)?;
    let before = snapshot(&ro)?;

    let run = env.once(&[])?;

    run.expect_code(1)?;
    for name in ["ro/replace.txt", "ro/create.txt", "ro/remove.txt"] {
        expect_error_about(&run, name)?;
    }
    run.expect("INFO", "replaced ok0.txt")?;
    assert_same("the read-only BACKUP/ro", &before, &snapshot(&ro)?)?;

    std::os::unix::fs::lchown(&ro, Some(NOBODY), Some(NOBODY))?;
    let retry = env.once(&[])?;
    expect_clean(&retry)?;
    assert_trees_equal(&s, &env.dst)
}

#[test]
fn unlistable_directory_on_one_side_is_never_taken_for_empty_by_twoway() -> TestResult {
    let mut env = Env::twoway()?;
    let (s, d) = (env.src.clone(), env.dst.clone());
    for i in 0..4 {
        put(
            &s,
            &format!("locked/f{i}.txt"),
            &format!("locked {i}\n"),
            T0,
        )?;
    }
    put(&s, "a.txt", "a\n", T0)?;
    env.run_as_nobody()?;
    sync(&env)?;

    put(&d, "locked/f0.txt", "f0 edited in BACKUP\n", T0 + 10)?;
    put(&d, "new.txt", "new in BACKUP\n", T0 + 10)?;
    give_back_to_nobody(&env)?;
    chmod(&s.join("locked"), 0o000)?;
    let before = snapshot(&d.join("locked"))?;

    let run = env.once(&[])?;

    run.expect_code(1)?;
    expect_error_about(&run, "cannot list locked")?;
    run.expect("INFO", "copied new.txt to SOURCE")?;
    assert_same(
        "BACKUP/locked, whose SOURCE side cannot be listed",
        &before,
        &snapshot(&d.join("locked"))?,
    )?;

    chmod(&s.join("locked"), 0o755)?;
    let retry = env.once(&[])?;
    expect_clean(&retry)?;
    retry.expect("INFO", "replaced locked/f0.txt in SOURCE")?;
    expect_contents_kept(
        "SOURCE",
        &s,
        &[
            "f0 edited in BACKUP\n",
            "locked 1\n",
            "locked 2\n",
            "locked 3\n",
            "new in BACKUP\n",
        ],
    )?;
    assert_synced(&s, &d)
}

#[test]
fn unsearchable_directory_on_one_side_is_never_taken_for_empty_by_twoway() -> TestResult {
    let mut env = Env::twoway()?;
    let (s, d) = (env.src.clone(), env.dst.clone());
    for i in 0..4 {
        put(
            &s,
            &format!("noexec/f{i}.txt"),
            &format!("noexec {i}\n"),
            T0,
        )?;
        put(&s, &format!("other/f{i}.txt"), &format!("other {i}\n"), T0)?;
    }
    env.run_as_nobody()?;
    sync(&env)?;
    chmod(&s.join("noexec"), 0o644)?;
    let before = snapshot(&d.join("noexec"))?;

    let run = env.once(&[])?;

    run.expect_code(1)?;
    expect_error_about(&run, "noexec")?;
    assert_same(
        "BACKUP/noexec, whose SOURCE side cannot be searched",
        &before,
        &snapshot(&d.join("noexec"))?,
    )?;
    chmod(&s.join("noexec"), 0o755)?;
    let retry = env.once(&[])?;
    expect_clean(&retry)?;
    assert_synced(&s, &d)?;
    expect_contents_kept("SOURCE", &s, &["noexec 0\n", "noexec 3\n"])
}

#[test]
fn read_only_directory_on_one_side_fails_twoway_steps_which_are_retried() -> TestResult {
    ensure!(
        running_as_root()?,
        "this test hands a directory to root: run the tests as root"
    );
    let mut env = Env::twoway()?;
    let (s, d) = (env.src.clone(), env.dst.clone());
    put(&s, "ro/f.txt", "base f\n", T0)?;
    put(&s, "ro/gone.txt", "base gone\n", T0)?;
    put(&s, "a.txt", "a\n", T0)?;
    env.run_as_nobody()?;
    sync(&env)?;

    put(&s, "ro/f.txt", "f edited in SOURCE\n", T0 + 10)?;
    put(&s, "ro/new.txt", "new in SOURCE\n", T0 + 10)?;
    fs::remove_file(s.join("ro/gone.txt"))?;
    give_back_to_nobody(&env)?;
    let ro = d.join("ro");
    std::os::unix::fs::lchown(&ro, Some(0), Some(0))?;
    chmod(&ro, 0o755)?;
    let before = snapshot(&ro)?;

    let run = env.once(&[])?;

    run.expect_code(1)?;
    for name in ["ro/f.txt", "ro/new.txt", "ro/gone.txt"] {
        expect_error_about(&run, name)?;
    }
    assert_same("the read-only BACKUP/ro", &before, &snapshot(&ro)?)?;

    // Had the archive recorded the failed steps as done, this pass would take BACKUP's stale
    // state for the news: delete new.txt from SOURCE, bring back gone.txt, undo the edit.
    std::os::unix::fs::lchown(&ro, Some(NOBODY), Some(NOBODY))?;
    let retry = env.once(&[])?;
    expect_clean(&retry)?;
    let want = [
        ("a.txt", Want::file("a\n")),
        ("ro", Want::Dir),
        ("ro/f.txt", Want::file("f edited in SOURCE\n")),
        ("ro/new.txt", Want::file("new in SOURCE\n")),
    ];
    expect_tree("SOURCE", &s, &want)?;
    expect_tree("BACKUP", &d, &want)?;
    assert_synced(&s, &d)
}

#[test]
fn unreadable_file_makes_no_version_until_it_can_be_read() -> TestResult {
    let mut env = Env::new()?;
    let s = env.src.clone();
    put(&s, "a.txt", "a\n", T0)?;
    put(&s, "b.txt", "b\n", T0)?;
    env.run_as_nobody()?;
    let versioned: [&dyn AsRef<OsStr>; 4] = [&"--once", &"--versioned", &s, &env.dst];
    expect_clean(&env.run(&versioned)?)?;
    let latest = snapshot(&env.dst.join("_1/"))?;
    let vdir_before = snapshot(&env.dst)?;

    put(&s, "a.txt", "a, edited\n", T0 + 10)?;
    put(&s, "secret.txt", "unreadable\n", T0 + 10)?;
    give_back_to_nobody(&env)?;
    chmod(&s.join("secret.txt"), 0o000)?;

    let run = env.run(&versioned)?;

    run.expect_code(1)?;
    expect_error_about(&run, "secret.txt")?;
    assert_same("the versions", &vdir_before, &snapshot(&env.dst)?)?;

    chmod(&s.join("secret.txt"), 0o644)?;
    let retry = env.run(&versioned)?;
    expect_clean(&retry)?;
    assert_same("_0", &latest, &snapshot(&env.dst.join("_0/"))?)?;
    assert_trees_equal(&s, &env.dst.join("_1/"))
}

#[test]
fn unsearchable_source_directory_makes_no_version() -> TestResult {
    let mut env = Env::new()?;
    let s = env.src.clone();
    put(&s, "a.txt", "a\n", T0)?;
    put(&s, "noexec/f.txt", "f\n", T0)?;
    env.run_as_nobody()?;
    let versioned: [&dyn AsRef<OsStr>; 4] = [&"--once", &"--versioned", &s, &env.dst];
    expect_clean(&env.run(&versioned)?)?;
    put(&s, "a.txt", "a, edited\n", T0 + 10)?;
    give_back_to_nobody(&env)?;
    chmod(&s.join("noexec"), 0o644)?;
    let vdir_before = snapshot(&env.dst)?;

    let run = env.run(&versioned)?;

    run.expect_code(1)?;
    expect_error_about(&run, "noexec")?;
    assert_same("the versions", &vdir_before, &snapshot(&env.dst)?)
}

// ---------------------------------------------------------------------------------------------
// 5. Damaged state

/// Damaged versions of a state file: what a crash, a full disk, another program or a stray
/// editor could leave. `good` is the intact file.
fn damaged_variants(good: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let text = String::from_utf8_lossy(good).into_owned();
    let mut half = good.len() / 2;
    while half > 1 && good[half - 1] == b'\n' {
        half -= 1;
    }
    let without_last_line = {
        let mut lines: Vec<&str> = text.lines().collect();
        lines.pop();
        lines.join("\n") + "\n"
    };
    vec![
        ("truncated mid-line", good[..half].to_vec()),
        ("truncated at a line end", without_last_line.into_bytes()),
        ("empty", Vec::new()),
        (
            "a JSON array",
            b"[\"--interval\", \"60\", {\"a\": 1}]\n".to_vec(),
        ),
        (
            "another program's JSON",
            b"{\"name\": \"my-app\", \"version\": \"1.0.0\"}\n".to_vec(),
        ),
        (
            "a shell script",
            b"#!/bin/sh\necho 'not a state file'\n".to_vec(),
        ),
        (
            "binary",
            [b"\x89PNG\r\n\x1a\n".as_slice(), &[0, 0, 0, 13, 0xff, 0xfe]].concat(),
        ),
        ("not UTF-8", [good, b"\xff\xfe\n".as_slice()].concat()),
    ]
}

/// Everything in the fixture ([`Env::snapshot_all`]) but the lock file of `.info.json`, which
/// a run may create or touch without changing any state.
fn state_snapshot(env: &Env) -> Res<Snapshot> {
    let mut snap = env.snapshot_all()?;
    snap.remove(Path::new(".info.json.lock"));
    Ok(snap)
}

/// Writes each damaged variant of `file` in turn and runs `args`: each run must exit 2 with a
/// message naming the file, and change nothing at all (the file included) in the fixture.
fn expect_damage_refused(
    env: &Env,
    file: &Path,
    variants: &[(&str, Vec<u8>)],
    args: &[&dyn AsRef<OsStr>],
) -> TestResult {
    let good = read(file)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (how, bytes) in variants {
        if bytes == &good {
            continue;
        }
        fs::write(file, bytes)?;
        let before = state_snapshot(env)?;

        let run = env.run(args)?;

        let context = |e: Box<dyn std::error::Error>| fail(format!("{name} {how}: {e:?}"));
        run.expect_code(2).map_err(context)?;
        let said = format!("{}\n{}", run.stderr, run.log);
        ensure!(
            said.contains(&name),
            "{name} {how}: the error does not name the file\n{run}"
        );
        assert_same(
            &format!("the fixture after a run with {name} {how}"),
            &before,
            &state_snapshot(env)?,
        )
        .map_err(context)?;
        ensure!(
            read(file)? == *bytes,
            "{name} {how}: the file was rewritten"
        );
    }
    fs::write(file, good)?;
    Ok(())
}

/// A recovery fixture, then changes a pass would carry, deletions included.
fn damaged_state_env() -> Res<Env> {
    let env = recovery_env(|env| {
        for i in 0..6 {
            put(&env.src, &format!("f{i}.txt"), &format!("f {i}\n"), T0)?;
        }
        put(&env.dst, "b.txt", "b\n", T0)?;
        Ok(())
    })?;
    fs::remove_file(env.src.join("f0.txt"))?;
    put(&env.dst, "b.txt", "b, edited\n", T0 + 10)?;
    Ok(env)
}

#[test]
fn damaged_config_json_stops_twoway_before_anything_and_is_left_as_it_is() -> TestResult {
    let env = damaged_state_env()?;
    let file = env.root.join("config.json");
    let variants = damaged_variants(&read(&file)?);
    expect_damage_refused(&env, &file, &variants, &[&"--once", &env.src, &env.dst])?;
    // Intact again: the pass runs.
    let run = env.once(&[])?;
    run.expect_code(0)?;
    assert_synced(&env.src, &env.dst)
}

#[test]
fn damaged_info_json_stops_sync_and_restore_and_is_left_as_it_is() -> TestResult {
    let env = damaged_state_env()?;
    let file = env.root.join(".info.json");
    let mut variants = damaged_variants(&read(&file)?);
    variants.push(("with a number for a path", b"{\"src\": 5}\n".to_vec()));
    variants.push((
        "with a relative path",
        b"{\"src\": \"relative/src\", \"dst\": \"dst\"}\n".to_vec(),
    ));
    variants.push((
        "with a key that is a path",
        b"{\"../x\": \"/tmp/x\"}\n".to_vec(),
    ));
    expect_damage_refused(&env, &file, &variants, &[&"--once", &env.src, &env.dst])?;
    expect_damage_refused(&env, &file, &variants, &[&env.src, &"--restore"])?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    assert_synced(&env.src, &env.dst)
}

#[test]
fn damaged_or_foreign_archive_stops_twoway_before_anything_and_is_left_as_it_is() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    for i in 0..6 {
        put(s, &format!("f{i}.txt"), &format!("f {i}\n"), T0)?;
    }
    put(s, "sub/g.txt", "g\n", T0)?;
    sync(&env)?;
    fs::remove_file(s.join("f0.txt"))?;
    put(d, "f1.txt", "f 1, edited in BACKUP\n", T0 + 10)?;
    fs::remove_dir_all(d.join("sub"))?;
    let archive = env.archive()?;
    let good = read(&archive)?;
    let text = String::from_utf8(good.clone())?;

    // The archive of another pair, written by twoway itself from this state directory.
    let (o1, o2) = (mkdir(&env.root, "other1")?, mkdir(&env.root, "other2")?);
    put(&o1, "x.txt", "x\n", T0)?;
    env.run(&[&"--once", &o1, &o2])?.expect_code(0)?;
    let other = archives(&env.archive_dir())?
        .into_iter()
        .find(|a| a != &archive)
        .ok_or("no archive for the other pair")?;
    let other_bytes = read(&other)?;
    fs::remove_file(&other)?;
    fs::remove_dir_all(&o1)?;
    fs::remove_dir_all(&o2)?;

    let entry = text
        .lines()
        .find(|l| l.starts_with("F ") && l.split(' ').any(|f| f == "f1.txt"))
        .ok_or("no entry for f1.txt")?;
    let count = text
        .lines()
        .filter(|l| l.starts_with(['F', 'D', 'L']))
        .count();
    let mut variants = damaged_variants(&good);
    variants.push(("of another pair", other_bytes));
    variants.push((
        "with an entry leaving the tree",
        text.replace(entry, &entry.replace(" f1.txt", " ../f1.txt"))
            .into_bytes(),
    ));
    variants.push((
        "with an entry repeated",
        text.replace(entry, &format!("{entry}\n{entry}"))
            .replace(&format!("end {count}"), &format!("end {}", count + 1))
            .into_bytes(),
    ));
    variants.push((
        "with a wrong entry count",
        text.replace(&format!("end {count}"), &format!("end {}", count + 1))
            .into_bytes(),
    ));
    expect_damage_refused(&env, &archive, &variants, &[&"--once", s, d])?;
    ensure!(read(&archive)? == good, "the archive was not put back");
    let run = env.once(&[])?;
    run.expect_code(0)?;
    assert_synced(s, d)
}

/// The manifest beside the version that `VDIR/name` stands for.
fn manifest_of(vdir: &Path, name: &str) -> Res<PathBuf> {
    let mut path = fs::canonicalize(vdir.join(name))?.into_os_string();
    path.push(".manifest");
    Ok(PathBuf::from(path))
}

/// Damaged versions of a manifest, beyond [`damaged_variants`]: a recorded digest that does not
/// match, a header alone, an entry leaving the version.
fn manifest_variants(good: &[u8]) -> Res<Vec<(&'static str, Vec<u8>)>> {
    let text = String::from_utf8(good.to_vec())?;
    let digest_line = text.lines().nth(1).ok_or("no digest line")?;
    let last = digest_line.chars().last().ok_or("empty digest line")?;
    let flipped = format!(
        "{}{}",
        &digest_line[..digest_line.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let entry = text
        .lines()
        .find(|l| l.starts_with("F "))
        .ok_or("no file entry")?;
    let (head, rel) = entry.rsplit_once(' ').ok_or("bad entry")?;
    let mut variants = damaged_variants(good);
    variants.push((
        "with a wrong digest",
        text.replace(digest_line, &flipped).into_bytes(),
    ));
    variants.push(("with its header only", b"dirsync-manifest 1\n".to_vec()));
    variants.push((
        "with an entry leaving the version",
        text.replace(entry, &format!("{head} ../{rel}"))
            .into_bytes(),
    ));
    Ok(variants)
}

#[test]
fn damaged_manifest_stops_a_versioned_pass_and_is_left_as_it_is() -> TestResult {
    let env = Env::new()?;
    let s = &env.src;
    for i in 0..6 {
        put(s, &format!("f{i}.txt"), &format!("f {i}\n"), T0)?;
    }
    let versioned: [&dyn AsRef<OsStr>; 4] = [&"--once", &"--versioned", s, &env.dst];
    env.run(&versioned)?.expect_code(0)?;
    put(s, "f1.txt", "f 1, edited\n", T0 + 10)?;
    env.run(&versioned)?.expect_code(0)?;
    // A rotation is due, which would drop the oldest version.
    fs::remove_file(s.join("f2.txt"))?;
    put(s, "new.txt", "new\n", T0 + 20)?;
    let manifest = manifest_of(&env.dst, "_1")?;
    let variants = manifest_variants(&read(&manifest)?)?;

    expect_damage_refused(&env, &manifest, &variants, &versioned)?;

    let run = env.run(&versioned)?;
    run.expect_code(0)?;
    assert_trees_equal(s, &env.dst.join("_1/"))
}

#[test]
fn damaged_manifest_stops_a_restore_and_is_left_as_it_is() -> TestResult {
    let env = damaged_state_env()?;
    put(&env.src, "unsynced.txt", "not in any version\n", T0)?;
    let manifest = manifest_of(&src_versions(&env), "_1")?;
    let variants = manifest_variants(&read(&manifest)?)?;

    expect_damage_refused(&env, &manifest, &variants, &[&env.src, &"--restore"])?;

    ensure!(
        names_starting(&env.root, ".src.restore-")?.is_empty(),
        "a refused restore left its work directory"
    );
    let run = env.run(&[&env.src, &"--restore"])?;
    run.expect_code(0)?;
    ensure!(
        kind_of(&env.src.join("unsynced.txt"))?.is_none(),
        "the restore with an intact manifest did not happen\n{run}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Hostile trees

/// How long a run over a hostile tree may take before it counts as hung.
const HANG: Duration = Duration::from_secs(30);

/// Runs `PROGRAM --once EXTRA... SOURCE BACKUP`, failing as hung after [`HANG`].
fn once_or_hang(env: &Env, extra: &[&dyn AsRef<OsStr>], to: &Path) -> Res<Run> {
    let mut args: Vec<&dyn AsRef<OsStr>> = vec![&"--once"];
    args.extend_from_slice(extra);
    args.push(&env.src);
    args.push(&to);
    env.run_timeout(&args, HANG)
}

/// Symlink loops of every shape: two links naming each other, a link to itself, a link to its
/// own directory and one to the root's parent.
fn symlink_loops(s: &Path) -> TestResult {
    symlink(s, "a", "b")?;
    symlink(s, "b", "a")?;
    symlink(s, "self", "self")?;
    put(s, "dir/f.txt", "f\n", T0)?;
    symlink(s, "dir/up", "..")?;
    symlink(s, "dir/here", ".")?;
    symlink(s, "dir/again", "../dir")?;
    Ok(())
}

#[test]
fn symlink_loops_are_copied_as_links_without_hanging() -> TestResult {
    let env = Env::new()?;
    symlink_loops(&env.src)?;

    let run = once_or_hang(&env, &[], &env.dst)?;
    expect_clean(&run)?;
    assert_trees_equal(&env.src, &env.dst)?;
    expect_nothing_left(&env)?;

    let vdir = mkdir(&env.root, "versions")?;
    let run = once_or_hang(&env, &[&"--versioned"], &vdir)?;
    expect_clean(&run)?;
    assert_trees_equal(&env.src, &vdir.join("_1/"))?;

    let two = Env::twoway()?;
    symlink_loops(&two.src)?;
    put(&two.dst, "other.txt", "other\n", T0)?;
    let run = once_or_hang(&two, &[], &two.dst)?;
    expect_clean(&run)?;
    assert_synced(&two.src, &two.dst)?;
    expect_nothing_left(&two)
}

#[test]
fn symlinks_pointing_outside_are_never_followed_nor_written_through() -> TestResult {
    let env = Env::new()?;
    let outside = mkdir(&env.root, "outside")?;
    for i in 0..3 {
        put(
            &outside,
            &format!("o{i}.txt"),
            &format!("outside {i}\n"),
            T0,
        )?;
    }
    put(&outside, "x/f.txt", "outside, under x\n", T0)?;
    let outside_before = snapshot(&outside)?;
    let (s, d) = (&env.src, &env.dst);
    for i in 0..6 {
        // Enough files on both sides that the replacements are not a mass deletion.
        put(s, &format!("ok{i}.txt"), "ok\n", T0)?;
        put(d, &format!("ok{i}.txt"), "ok\n", T0)?;
    }
    symlink(s, "abs", &outside)?;
    symlink(s, "rel", "../outside")?;
    put(s, "x/f.txt", "SOURCE's own x/f.txt\n", T0)?;
    put(s, "x/o0.txt", "SOURCE's own x/o0.txt\n", T0)?;
    // In BACKUP: a link to outside where SOURCE has a directory, and a directory where SOURCE
    // has a link to outside.
    symlink(d, "x", &outside)?;
    put(d, "abs/o1.txt", "BACKUP's own abs/o1.txt\n", T0)?;

    let run = env.once(&[])?;
    expect_clean(&run)?;
    assert_trees_equal(s, d)?;
    assert_same(
        "the directory outside",
        &outside_before,
        &snapshot(&outside)?,
    )?;

    // Removing the links removes them, never what they point to.
    fs::remove_file(s.join("abs"))?;
    fs::remove_file(s.join("rel"))?;
    let run = env.once(&[])?;
    expect_clean(&run)?;
    assert_trees_equal(s, d)?;
    assert_same(
        "the directory outside",
        &outside_before,
        &snapshot(&outside)?,
    )?;

    // twoway: a link to outside on one side, a directory on the other; then the link deleted.
    let two = Env::twoway()?;
    let outside = mkdir(&two.root, "outside")?;
    put(&outside, "o.txt", "outside\n", T0)?;
    let outside_before = snapshot(&outside)?;
    symlink(&two.src, "abs", &outside)?;
    symlink(&two.src, "x", &outside)?;
    put(&two.dst, "x/f.txt", "BACKUP's own x/f.txt\n", T0)?;
    let run = two.once(&[])?;
    run.expect_code(0)?;
    assert_synced(&two.src, &two.dst)?;
    fs::remove_file(two.dst.join("abs"))?;
    let run = two.once(&[])?;
    expect_clean(&run)?;
    ensure!(
        kind_of(&two.src.join("abs"))?.is_none(),
        "the deleted link came back\n{run}"
    );
    assert_synced(&two.src, &two.dst)?;
    assert_same(
        "the directory outside",
        &outside_before,
        &snapshot(&outside)?,
    )
}

#[test]
fn backup_directory_swapped_for_a_link_after_the_scan_is_never_written_through() -> TestResult {
    let env = Env::new()?;
    let outside = mkdir(&env.root, "outside")?;
    put(&outside, "keep.txt", "outside\n", T0)?;
    let outside_before = snapshot(&outside)?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "dir/f.txt", "f\n", T0)?;
    for i in 0..4 {
        put(s, &format!("ok{i}.txt"), "ok\n", T0)?;
    }
    env.once(&[])?.expect_code(0)?;
    put(s, "dir/new.txt", "new in SOURCE\n", T0 + 10)?;
    put(s, "dir/f.txt", "f, edited\n", T0 + 10)?;
    let hook = Hook::new(
        &env,
        &format!(
            "rm -r {dir}\nln -s {out} {dir}\n",
            dir = q(&d.join("dir")),
            out = q(&outside)
        ),
    )?;

    let run = hook.once(&env, &[])?;

    expect_finished(&run)?;
    assert_same(
        "the directory outside, after BACKUP/dir became a link to it",
        &outside_before,
        &snapshot(&outside)?,
    )?;
    let next = env.once(&[])?;
    expect_clean(&next)?;
    assert_trees_equal(s, d)?;
    assert_same(
        "the directory outside",
        &outside_before,
        &snapshot(&outside)?,
    )
}

#[test]
fn twoway_directory_swapped_for_a_link_after_the_scan_is_never_written_through() -> TestResult {
    let env = Env::twoway()?;
    let outside = mkdir(&env.root, "outside")?;
    put(&outside, "keep.txt", "outside\n", T0)?;
    let outside_before = snapshot(&outside)?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "dir/f.txt", "f\n", T0)?;
    sync(&env)?;
    put(s, "dir/new.txt", "new in SOURCE\n", T0 + 10)?;
    let hook = Hook::new(
        &env,
        &format!(
            "rm -r {dir}\nln -s {out} {dir}\n",
            dir = q(&d.join("dir")),
            out = q(&outside)
        ),
    )?;

    let run = hook.once(&env, &[])?;

    expect_finished(&run)?;
    assert_same(
        "the directory outside, after BACKUP/dir became a link to it",
        &outside_before,
        &snapshot(&outside)?,
    )
}

#[test]
fn directory_of_100000_entries_is_mirrored_once_and_then_left_alone() -> TestResult {
    let env = Env::new()?;
    // On a tmpfs when possible: 100,000 files are made, copied and deleted once each, and a
    // file system without a journal takes minutes over that.
    let fs_dir = mkdir(&env.root, "fs")?;
    let mounted = Mounted::tmpfs(&fs_dir, "size=512m,nr_inodes=400k").ok();
    let (src, dst) = if mounted.is_some() {
        (mkdir(&fs_dir, "src")?, mkdir(&fs_dir, "dst")?)
    } else {
        console(
            "note: faults::directory_of_100000_entries_is_mirrored_once_and_then_left_alone: \
             no tmpfs, running on the root file system (slower)",
        );
        (env.src.clone(), env.dst.clone())
    };
    let big = mkdir(&src, "big")?;
    for i in 0..100_000 {
        fs::File::create(big.join(format!("f{i:06}")))?;
    }

    let run = env.run(&[&"--once", &src, &dst])?;
    expect_clean(&run)?;
    ensure!(
        run.summary()?.operations == 100_002,
        "expected 100,002 operations (a directory, its files, and the root's new time)\n{run}"
    );
    let copied = fs::read_dir(dst.join("big"))?.count();
    ensure!(
        copied == 100_000,
        "BACKUP/big holds {copied} entries, not 100,000"
    );

    let again = env.run(&[&"--once", &src, &dst])?;
    expect_clean(&again)?;
    let summary = again.summary()?;
    ensure!(
        summary.operations == 0 && summary.hashed == 0,
        "the pass with nothing changed did work: {summary:?}\n{again}"
    );
    ensure!(
        fs::read_dir(dst.join("big"))?.count() == 100_000,
        "BACKUP/big changed on the second pass"
    );
    drop(mounted);
    Ok(())
}

/// `depth` nested directories under `root`, with a file at the bottom; returns its relative path.
fn deep_path(depth: usize) -> PathBuf {
    (0..depth).map(|i| format!("level{i:03}")).collect()
}

#[test]
fn path_more_than_100_levels_deep_is_mirrored_versioned_and_synced() -> TestResult {
    let env = Env::new()?;
    let deep = deep_path(130);
    let file = deep.join("bottom.txt");
    put(&env.src, &file.to_string_lossy(), "at the bottom\n", T0)?;
    put(
        &env.src,
        &deep.join("../sibling.txt").to_string_lossy(),
        "one up\n",
        T0,
    )?;

    expect_clean(&env.once(&[])?)?;
    assert_trees_equal(&env.src, &env.dst)?;
    put(
        &env.src,
        &file.to_string_lossy(),
        "at the bottom, edited\n",
        T0 + 10,
    )?;
    let run = env.once(&[])?;
    expect_clean(&run)?;
    run.expect("INFO", &format!("replaced {}", file.display()))?;
    assert_trees_equal(&env.src, &env.dst)?;

    let vdir = mkdir(&env.root, "versions")?;
    expect_clean(&env.run(&[&"--once", &"--versioned", &env.src, &vdir])?)?;
    assert_trees_equal(&env.src, &vdir.join("_1/"))?;

    let two = Env::twoway()?;
    put(&two.src, &file.to_string_lossy(), "deep in SOURCE\n", T0)?;
    sync(&two)?;
    put(
        &two.dst,
        &file.to_string_lossy(),
        "deep, edited in BACKUP\n",
        T0 + 10,
    )?;
    let run = two.once(&[])?;
    expect_clean(&run)?;
    run.expect("INFO", &format!("replaced {} in SOURCE", file.display()))?;
    assert_synced(&two.src, &two.dst)
}

/// Names a user may have that look like the files we make ourselves.
const LOOK_ALIKES: [&str; 14] = [
    ".oneway-tmp-abc123",
    ".oneway-tmp-abc",
    ".oneway-tmp-abcdefg",
    "sub/.oneway-tmp-ZZZ999",
    "x.conflict-20260101-000000.txt",
    "sub/y.conflict-20260101-000000-2",
    ".listing-tmp-x",
    ".listing-tmp-abc123",
    ".building-x/inner.txt",
    ".hashcache-abc123",
    ".twoway-archive-0123456789abcdef.txt",
    "before-restore-20260101-000000/kept.txt",
    ".v-18a-1.manifest",
    "_1/not-a-version.txt",
];

fn put_look_alikes(dir: &Path, tag: &str) -> TestResult {
    for (i, rel) in LOOK_ALIKES.iter().enumerate() {
        put(dir, rel, &format!("{tag}'s file {rel}\n"), T0 + i as i64)?;
    }
    put(dir, "x.txt", &format!("{tag}'s x.txt\n"), T0)?;
    Ok(())
}

#[test]
fn names_like_our_own_files_are_mirrored_and_versioned_like_any_other() -> TestResult {
    let env = Env::new()?;
    put_look_alikes(&env.src, "SOURCE")?;

    let run = env.once(&[])?;
    expect_clean(&run)?;
    assert_trees_equal(&env.src, &env.dst)?;
    expect_nothing_left(&env)?;
    // A mirror pass removes what SOURCE no longer holds, and only that.
    fs::remove_file(env.src.join("x.txt"))?;
    let run = env.once(&[])?;
    expect_clean(&run)?;
    assert_trees_equal(&env.src, &env.dst)?;

    let vdir = mkdir(&env.root, "versions")?;
    let versioned: [&dyn AsRef<OsStr>; 4] = [&"--once", &"--versioned", &env.src, &vdir];
    expect_clean(&env.run(&versioned)?)?;
    assert_trees_equal(&env.src, &vdir.join("_1/"))?;
    put(&env.src, "x.txt", "x is back\n", T0)?;
    expect_clean(&env.run(&versioned)?)?;
    assert_trees_equal(&env.src, &vdir.join("_1/"))?;
    ensure!(
        snapshot(&vdir.join("_0/"))?.len() + 1 == snapshot(&env.src)?.len(),
        "the previous version is not SOURCE without x.txt"
    );
    Ok(())
}

#[test]
fn names_like_our_own_files_are_never_deleted_by_twoway() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put_look_alikes(s, "SOURCE")?;
    put(
        d,
        ".oneway-tmp-qqq111",
        "BACKUP's file with our temporary name\n",
        T0,
    )?;
    put(d, "sub/.oneway-tmp-777aaa", "BACKUP's deeper one\n", T0)?;

    let run = env.once(&[])?;
    run.expect_code(0)?;
    // Exactly `.oneway-tmp-` and six letters or digits is never carried (README); every other
    // look-alike is an ordinary file.
    let exact = [".oneway-tmp-abc123", "sub/.oneway-tmp-ZZZ999"];
    for rel in LOOK_ALIKES.iter().chain(&["x.txt"]) {
        let content = format!("SOURCE's file {rel}\n");
        let content = if *rel == "x.txt" {
            "SOURCE's x.txt\n".to_string()
        } else {
            content
        };
        ensure!(
            read(&s.join(rel))? == content.as_bytes(),
            "SOURCE/{rel} changed\n{run}"
        );
        if exact.contains(rel) {
            ensure!(
                kind_of(&d.join(rel))?.is_none(),
                "{rel} was carried to BACKUP\n{run}"
            );
        } else {
            ensure!(
                read(&d.join(rel))? == content.as_bytes(),
                "{rel} was not carried to BACKUP\n{run}"
            );
        }
    }
    ensure!(
        kind_of(&s.join(".oneway-tmp-qqq111"))?.is_none()
            && read(&d.join(".oneway-tmp-qqq111"))? == b"BACKUP's file with our temporary name\n",
        "BACKUP's .oneway-tmp-qqq111 was carried or changed\n{run}"
    );
    expect_nothing_left(&env)?;

    // Deleting the look-alikes' neighbours deletes nothing else.
    fs::remove_file(s.join("x.txt"))?;
    fs::remove_file(d.join("sub/y.conflict-20260101-000000-2"))?;
    let run = env.once(&[])?;
    expect_clean(&run)?;
    for (dir, rel) in [
        (s, ".oneway-tmp-abc123"),
        (s, "sub/.oneway-tmp-ZZZ999"),
        (d, ".oneway-tmp-qqq111"),
        (d, "sub/.oneway-tmp-777aaa"),
        (s, "x.conflict-20260101-000000.txt"),
        (d, "x.conflict-20260101-000000.txt"),
    ] {
        ensure!(
            kind_of(&dir.join(rel))? == Some("file"),
            "{} was deleted\n{run}",
            dir.join(rel).display()
        );
    }
    ensure!(
        kind_of(&s.join("sub/y.conflict-20260101-000000-2"))?.is_none()
            && kind_of(&d.join("x.txt"))?.is_none(),
        "a deletion was not carried\n{run}"
    );
    Ok(())
}

#[test]
fn directory_deleted_on_one_side_keeps_a_users_temp_named_file_on_the_other() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "sub/a.txt", "a\n", T0)?;
    for i in 0..4 {
        put(s, &format!("ok{i}.txt"), "ok\n", T0)?;
    }
    sync(&env)?;
    put(s, "sub/.oneway-tmp-abc123", "the user's own file\n", T0)?;
    fs::remove_dir_all(d.join("sub"))?;

    let run = env.once(&[])?;

    expect_finished(&run)?;
    ensure!(
        read(&s.join("sub/.oneway-tmp-abc123"))? == b"the user's own file\n",
        "the user's file named like our temporary files was deleted\n{run}"
    );
    ensure!(
        kind_of(&d.join("sub"))?.is_none(),
        "BACKUP/sub came back\n{run}"
    );
    Ok(())
}

#[test]
fn directory_deleted_on_one_side_but_holding_excluded_files_settles() -> TestResult {
    for (extra, name) in [
        (None, "sub/.oneway-tmp-abc123"),
        (Some("*.log"), "sub/debug.log"),
    ] {
        let env = Env::twoway()?;
        let (s, d) = (&env.src, &env.dst);
        put(s, "sub/a.txt", "a\n", T0)?;
        for i in 0..4 {
            put(s, &format!("ok{i}.txt"), "ok\n", T0)?;
        }
        let args: Vec<&dyn AsRef<OsStr>> = match &extra {
            Some(glob) => vec![&"--exclude", glob],
            None => Vec::new(),
        };
        expect_clean(&env.once(&args)?)?;
        put(s, name, "the user's own file, left alone\n", T0)?;
        fs::remove_dir_all(d.join("sub"))?;

        let first = env.once(&args)?;
        let second = env.once(&args)?;

        ensure!(
            read(&s.join(name))? == b"the user's own file, left alone\n",
            "{name} was deleted\n{first}\n{second}"
        );
        second
            .expect_code(0)
            .map_err(|e| fail(format!("with {name}: {e:?}")))?;
    }
    Ok(())
}

#[test]
fn users_directory_named_like_a_restore_leftover_is_kept() -> TestResult {
    let env = recovery_env(|env| put(&env.src, "a.txt", "a\n", T0).map(drop))?;
    put(
        &env.root,
        ".src.restore-notes/keep.txt",
        "the user's notes\n",
        T0,
    )?;

    let run = env.run(&[&env.src, &"--restore"])?;

    run.expect_code(0)?;
    ensure!(
        read(&env.root.join(".src.restore-notes/keep.txt"))? == b"the user's notes\n",
        "the user's directory .src.restore-notes beside SOURCE was deleted\n{run}"
    );
    Ok(())
}
