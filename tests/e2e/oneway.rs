//! `oneway`: the mirror pass, its log, its refusals, locking, signals and faults (SPEC §3, §5, §7,
//! §8; issue 2). Every test runs the real binary on a fresh temporary directory and checks the
//! exit code, the log and the disk.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// How long a run that must not hang (FIFO, refusals) may take before it counts as hung.
const HANG_TIMEOUT: Duration = Duration::from_secs(20);

/// A small tree: five regular files at three depths, a symlink and an empty directory, with
/// explicit mtimes on the files.
fn small_tree(s: &Path) -> TestResult {
    let files = [
        ("a.txt", &b"alpha\n"[..]),
        ("notes.md", b"# notes\n"),
        ("sub/b.txt", b"bravo\n"),
        ("sub/e.txt", b"echo\n"),
        ("sub/deeper/c.bin", b"\x00\x01\x02\xff binary"),
    ];
    for (i, (rel, bytes)) in (0u32..).zip(files) {
        set_mtime(&write(s, rel, bytes)?, T0 + i64::from(i), 1000 + i)?;
    }
    symlink(s, "link", "a.txt")?;
    mkdir(s, "empty")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The mirror

#[test]
fn nested_tree_is_mirrored_exactly() -> TestResult {
    let env = Env::new()?;
    let s = &env.src;
    write(s, "top.txt", "top\n")?;
    write(s, "a/run.sh", "#!/bin/sh\necho hi\n")?;
    write(s, "a/b/group.txt", "group readable\n")?;
    write(s, "a/b/c/deep.txt", "deep secret\n")?;
    write(s, "private/key.txt", "key")?;
    // Modes a process umask of 022 would cut, and a set-user-ID bit, which no create gives.
    write(s, "a/shared.txt", "everyone writes\n")?;
    write(s, "a/setuid.sh", "#!/bin/sh\n")?;
    mkdir(s, "empty")?;
    mkdir(s, "a/b/empty2")?;
    let absolute_target = s.join("a/run.sh");
    symlink(s, "links/dangling", "no/such/target")?;
    symlink(s, "links/to_dir", "../a")?;
    symlink(s, "links/relative", "../top.txt")?;
    symlink(s, "links/absolute", &absolute_target)?;
    for (rel, mode) in [
        ("a/b/c/deep.txt", 0o600),
        ("a/run.sh", 0o755),
        ("a/b/group.txt", 0o640),
        ("private/key.txt", 0o400),
        ("a/shared.txt", 0o666),
        ("a/setuid.sh", 0o4755),
        ("private", 0o700),
        ("a/b/empty2", 0o750),
    ] {
        chmod(&s.join(rel), mode)?;
    }
    // Files and symlinks first, then directories deepest first: adding or touching an entry
    // changes its directory's mtime.
    let files_and_links = [
        "top.txt",
        "a/run.sh",
        "a/b/group.txt",
        "a/b/c/deep.txt",
        "private/key.txt",
        "a/shared.txt",
        "a/setuid.sh",
        "links/dangling",
        "links/to_dir",
        "links/relative",
        "links/absolute",
    ];
    let dirs = [
        "a/b/c",
        "a/b/empty2",
        "a/b",
        "a",
        "private",
        "empty",
        "links",
    ];
    for (i, rel) in (0u32..).zip(files_and_links.iter().chain(&dirs)) {
        set_mtime(
            &s.join(rel),
            T0 + 1000 * i64::from(i),
            123_456_789 + 1001 * i,
        )?;
    }

    let run = env.once(&[])?;

    run.expect_code(0)?;
    assert_trees_equal(s, &env.dst)?;
    run.expect_well_formed_log()?;
    for message in [
        "created directory a",
        "created directory a/b/c",
        "created directory a/b/empty2",
        "created directory empty",
        "created directory private",
        "created directory links",
        "copied top.txt",
        "copied a/run.sh",
        "copied a/b/c/deep.txt",
        "copied private/key.txt",
        "created symlink links/dangling -> no/such/target",
        "created symlink links/to_dir -> ../a",
        "created symlink links/relative -> ../top.txt",
    ] {
        run.expect("INFO", message)?;
    }
    run.expect(
        "INFO",
        &format!(
            "created symlink links/absolute -> {}",
            absolute_target.display()
        ),
    )?;
    let bad: Vec<LogLine> = run
        .lines()
        .into_iter()
        .filter(|l| l.level == "WARNING" || l.level == "ERROR")
        .collect();
    ensure!(
        bad.is_empty(),
        "unexpected warnings or errors {bad:?}\n{run}"
    );
    // 7 directories, 5 files, 4 symlinks: one logged operation each at least, and the summary
    // counts exactly the logged operations.
    let summary = run.summary()?;
    let operations = run.operations().len() as u64;
    ensure!(
        summary.errors == 0 && summary.operations == operations && operations >= 16,
        "summary {summary:?} does not match the {operations} operation lines (16 or more expected)\n{run}"
    );
    Ok(())
}

#[test]
fn deletions_extras_and_type_changes_are_mirrored() -> TestResult {
    let env = Env::new()?;
    let (s, d) = (&env.src, &env.dst);
    for i in 0..16 {
        write(s, format!("keep/k{i:02}.txt"), format!("keep {i}\n"))?;
    }
    write(s, "gone.txt", "gone")?;
    write(s, "dir_gone/inner.txt", "inner")?;
    write(s, "file_to_dir", "a file for now")?;
    write(s, "dir_to_file/x.txt", "x")?;
    write(s, "file_to_link", "a file for now, too")?;
    symlink(s, "link_to_file", "keep/k00.txt")?;
    env.once(&[])?.expect_code(0)?;
    assert_trees_equal(s, d)?;

    fs::remove_file(s.join("gone.txt"))?;
    fs::remove_dir_all(s.join("dir_gone"))?;
    fs::remove_file(s.join("file_to_dir"))?;
    write(s, "file_to_dir/now_inside.txt", "inside")?;
    fs::remove_dir_all(s.join("dir_to_file"))?;
    write(s, "dir_to_file", "now a file")?;
    fs::remove_file(s.join("file_to_link"))?;
    symlink(s, "file_to_link", "keep/k01.txt")?;
    fs::remove_file(s.join("link_to_file"))?;
    write(s, "link_to_file", "now a regular file")?;
    write(d, "extra.txt", "only in BACKUP")?;
    write(d, "extra_dir/sub/e.txt", "only in BACKUP")?;
    mkdir(d, "extra_empty")?;
    symlink(d, "extra_link", "keep")?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    assert_trees_equal(s, d)?;
    for message in [
        "removed gone.txt",
        "removed directory dir_gone",
        "removed extra.txt",
        "removed directory extra_dir",
        "removed directory extra_empty",
        "removed extra_link",
        "removed file_to_dir",
        "created directory file_to_dir",
        "copied file_to_dir/now_inside.txt",
        "removed directory dir_to_file",
        "created symlink file_to_link -> keep/k01.txt",
    ] {
        run.expect("INFO", message)?;
    }
    run.expect_any(&["copied dir_to_file", "replaced dir_to_file"])?;
    run.expect_any(&["copied link_to_file", "replaced link_to_file"])?;
    ensure!(run.summary()?.errors == 0, "errors in the pass\n{run}");
    Ok(())
}

#[test]
fn unchanged_tree_second_pass_rewrites_nothing() -> TestResult {
    let env = Env::new()?;
    small_tree(&env.src)?;
    env.once(&[])?.expect_code(0)?;
    let inodes_before = inodes(&env.dst)?;
    let before = snapshot(&env.dst)?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    let operations = run.operations();
    ensure!(
        operations.is_empty(),
        "operations on an unchanged tree: {operations:?}\n{run}"
    );
    let summary = run.summary()?;
    ensure!(
        summary.operations == 0 && summary.hashed == 0 && summary.errors == 0,
        "expected 0 operations, 0 files hashed, 0 errors, got {summary:?}\n{run}"
    );
    let inodes_after = inodes(&env.dst)?;
    let rewritten: Vec<_> = inodes_before
        .iter()
        .filter(|(rel, ino)| inodes_after.get(*rel) != Some(ino))
        .map(|(rel, _)| rel)
        .collect();
    ensure!(
        rewritten.is_empty(),
        "BACKUP entries rewritten (inode changed): {rewritten:?}"
    );
    assert_same(
        "BACKUP changed in a pass with nothing to do",
        &before,
        &snapshot(&env.dst)?,
    )?;
    assert_trees_equal(&env.src, &env.dst)
}

#[test]
fn content_change_with_same_size_and_mtime_is_copied() -> TestResult {
    let env = Env::new()?;
    let path = write(&env.src, "a.txt", "version 1: hello")?;
    write(&env.src, "b.txt", "unchanged")?;
    set_mtime(&path, T0, 500)?;
    env.once(&[])?.expect_code(0)?;
    let (old_ctime, old_ino) = (ctime(&path)?, inode(&path)?);

    // Rewrite in place (same inode), same length, then put the old mtime back.
    fs::write(&path, "version 2: HELLO")?;
    set_mtime(&path, T0, 500)?;
    // Only the change time tells this file from the one hashed in the first pass. The kernel may
    // stamp it with a coarse clock, so touch it until it shows a new value.
    wait_until("a new ctime on a.txt", Duration::from_secs(10), || {
        if ctime(&path)? != old_ctime {
            return Ok(true);
        }
        set_mtime(&path, T0, 500)?;
        Ok(false)
    })?;
    let meta = fs::metadata(&path)?;
    ensure!(
        meta.len() == 16 && (meta.mtime(), meta.mtime_nsec()) == (T0, 500) && meta.ino() == old_ino,
        "the test did not keep size, mtime and inode"
    );

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect("INFO", "replaced a.txt")?;
    run.expect_no_message_containing("b.txt")?;
    ensure!(
        read(&env.dst.join("a.txt"))? == b"version 2: HELLO",
        "BACKUP/a.txt still has the old content"
    );
    assert_trees_equal(&env.src, &env.dst)
}

#[test]
fn metadata_only_change_is_applied_without_copying() -> TestResult {
    let env = Env::new()?;
    let path = write(&env.src, "a.txt", "same content")?;
    write(&env.src, "sub/b.txt", "b")?;
    set_mtime(&path, T0, 1)?;
    env.once(&[])?.expect_code(0)?;
    let ino = inode(&env.dst.join("a.txt"))?;

    chmod(&path, 0o600)?;
    set_mtime(&path, T0 + 3600, 999_999_999)?;
    chmod(&env.src.join("sub"), 0o700)?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect("INFO", "updated metadata of a.txt")?;
    run.expect("INFO", "updated metadata of sub")?;
    ensure!(
        !run.has("INFO", "replaced a.txt") && !run.has("INFO", "copied a.txt"),
        "a metadata-only change rewrote the file\n{run}"
    );
    ensure!(
        inode(&env.dst.join("a.txt"))? == ino,
        "BACKUP/a.txt was rewritten (inode changed)"
    );
    assert_trees_equal(&env.src, &env.dst)
}

#[test]
fn odd_file_names_are_mirrored_exactly() -> TestResult {
    let env = Env::new()?;
    let s = &env.src;
    // (name on disk, name as the log must show it)
    let names: [(&[u8], &str); 8] = [
        (b"with space.txt", "with space.txt"),
        (b"caf\xe9.txt", "caf\\xe9.txt"),
        (b"-rf", "-rf"),
        (b"new\nline.txt", "new\\nline.txt"),
        (b"tab\there", "tab\\there"),
        (b"back\\slash", "back\\\\slash"),
        (
            b"dir with space/inner file.txt",
            "dir with space/inner file.txt",
        ),
        (b"d\xff/x.txt", "d\\xff/x.txt"),
    ];
    for (raw, _) in names {
        write(s, OsStr::from_bytes(raw), raw)?;
    }
    let long = format!("{}.txt", "n".repeat(251));
    ensure!(long.len() == 255, "the long name must be 255 bytes");
    write(s, &long, "long name")?;
    symlink(
        s,
        OsStr::from_bytes(b"lnk\xe9"),
        OsStr::from_bytes(b"caf\xe9.txt"),
    )?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    assert_trees_equal(s, &env.dst)?;
    run.expect_well_formed_log()?;
    for (_, logged) in names {
        run.expect("INFO", &format!("copied {logged}"))?;
    }
    run.expect("INFO", &format!("copied {long}"))?;
    run.expect("INFO", "created directory d\\xff")?;
    run.expect("INFO", "created symlink lnk\\xe9 -> caf\\xe9.txt")?;

    // The names survive the hash cache too: nothing to do the second time.
    let second = env.once(&[])?;
    second.expect_code(0)?;
    ensure!(
        second.summary()?.operations == 0 && second.operations().is_empty(),
        "second pass over odd names was not empty\n{second}"
    );
    Ok(())
}

#[test]
fn dry_run_changes_nothing_and_logs_what_it_would_do() -> TestResult {
    let env = Env::new()?;
    let (s, d) = (&env.src, &env.dst);
    for i in 0..6 {
        write(s, format!("keep{i}.txt"), format!("keep {i}"))?;
    }
    write(s, "changed.txt", "version 1")?;
    write(s, "gone.txt", "gone")?;
    write(s, "file_to_dir", "a file for now")?;
    write(s, "meta.txt", "only the mode changes")?;
    // Large enough that a real pass hashes it while copying it: a dry run still says that
    // only its time would change.
    let large = write(s, "large.bin", vec![7u8; 9 << 20])?;
    env.once(&[])?.expect_code(0)?;

    write(s, "new.txt", "new")?;
    write(s, "changed.txt", "version 2, longer")?;
    fs::remove_file(s.join("gone.txt"))?;
    fs::remove_file(s.join("file_to_dir"))?;
    write(s, "file_to_dir/inside.txt", "inside")?;
    mkdir(s, "newdir")?;
    symlink(s, "newlink", "new.txt")?;
    chmod(&s.join("meta.txt"), 0o600)?;
    set_mtime(&large, 1_600_000_000, 0)?;
    write(d, "extra.txt", "only in BACKUP")?;
    let (src_before, dst_before) = (snapshot(s)?, snapshot(d)?);

    let run = env.once(&[&"--dry-run"])?;

    run.expect_code(0)?;
    assert_same("--dry-run changed SOURCE", &src_before, &snapshot(s)?)?;
    assert_same("--dry-run changed BACKUP", &dst_before, &snapshot(d)?)?;
    for message in [
        "copied new.txt",
        "replaced changed.txt",
        "removed gone.txt",
        "removed file_to_dir",
        "created directory file_to_dir",
        "copied file_to_dir/inside.txt",
        "created directory newdir",
        "created symlink newlink -> new.txt",
        "updated metadata of meta.txt",
        "updated metadata of large.bin",
        "removed extra.txt",
    ] {
        run.expect("INFO", &format!("dry run: {message}"))?;
    }
    let unprefixed: Vec<String> = run
        .operations()
        .into_iter()
        .filter(|m| !m.starts_with("dry run: "))
        .collect();
    ensure!(
        unprefixed.is_empty(),
        "operation lines without `dry run: ` in a dry run: {unprefixed:?}\n{run}"
    );

    // The real pass still finds all of it to do.
    let real = env.once(&[])?;
    real.expect_code(0)?;
    real.expect("INFO", "copied new.txt")?;
    real.expect("INFO", "removed extra.txt")?;
    real.expect("INFO", "updated metadata of large.bin")?;
    assert_trees_equal(s, d)
}

#[test]
fn excluded_paths_are_left_alone_on_both_sides() -> TestResult {
    let env = Env::new()?;
    let (s, d) = (&env.src, &env.dst);
    write(s, "a.txt", "a")?;
    write(s, "debug.log", "excluded by base name")?;
    write(s, "sub/deep/trace.log", "excluded by base name, deeper")?;
    write(s, "sub/deep/keep.txt", "kept")?;
    write(s, "cache/tmp/big.bin", "excluded by path")?;
    write(s, "cache/keep.txt", "kept")?;
    write(
        s,
        "other/cache/tmp/kept.txt",
        "a path pattern is anchored at the root",
    )?;
    write(s, "build/out.bin", "excluded by build/*")?;
    write(s, "build/sub/x.o", "under an excluded directory")?;
    write(s, "node_modules/x.js", "excluded directory")?;
    write(s, "web/node_modules/y.js", "excluded directory, deeper")?;
    write(s, "web/index.html", "kept")?;
    // In BACKUP, excluded entries that SOURCE does not have must survive.
    write(d, "old.log", "excluded, only in BACKUP")?;
    write(d, "web/node_modules/keepme.js", "excluded, only in BACKUP")?;
    write(d, "build/stale.o", "excluded, only in BACKUP")?;
    write(d, "cache/tmp/old.bin", "excluded, only in BACKUP")?;

    let run = env.once(&[
        &"--exclude",
        &"*.log",
        &"--exclude",
        &"cache/tmp",
        &"--exclude",
        &"build/*",
        &"--exclude",
        &"node_modules",
    ])?;

    run.expect_code(0)?;
    for rel in [
        "a.txt",
        "sub/deep/keep.txt",
        "cache/keep.txt",
        "other/cache/tmp/kept.txt",
        "web/index.html",
    ] {
        ensure!(
            files_equal(&s.join(rel), &d.join(rel))?,
            "{rel} was not copied\n{run}"
        );
        run.expect("INFO", &format!("copied {rel}"))?;
    }
    for rel in [
        "debug.log",
        "sub/deep/trace.log",
        "cache/tmp/big.bin",
        "build/out.bin",
        "build/sub",
        "node_modules",
        "web/node_modules/y.js",
    ] {
        ensure!(
            kind_of(&d.join(rel))?.is_none(),
            "excluded {rel} was copied to BACKUP\n{run}"
        );
    }
    for (rel, content) in [
        ("old.log", "excluded, only in BACKUP"),
        ("web/node_modules/keepme.js", "excluded, only in BACKUP"),
        ("build/stale.o", "excluded, only in BACKUP"),
        ("cache/tmp/old.bin", "excluded, only in BACKUP"),
    ] {
        ensure!(
            fs::read(d.join(rel)).is_ok_and(|b| b == content.as_bytes()),
            "excluded {rel} in BACKUP was not left alone\n{run}"
        );
    }
    for needle in [
        ".log",
        "node_modules",
        "big.bin",
        "old.bin",
        "build/out.bin",
        "build/sub",
        "stale.o",
    ] {
        run.expect_no_message_containing(needle)?;
    }
    ensure!(run.summary()?.errors == 0, "errors in the pass\n{run}");
    Ok(())
}

/// A FIFO is made as a FIFO in BACKUP (as `rsync -D` does), never opened: a pipe no one
/// writes to would block a reader for ever.
#[test]
fn fifo_in_source_is_made_as_a_fifo_without_opening_it() -> TestResult {
    let env = Env::new()?;
    let (s, d) = (&env.src, &env.dst);
    write(s, "a.txt", "a")?;
    write(s, "sub/b.txt", "b")?;
    mkfifo(&s.join("pipe"))?;
    mkfifo(&s.join("sub/pipe2"))?;

    let run = env.oneway_timeout(&[&"--once", s, d], HANG_TIMEOUT)?;

    run.expect_code(0)?;
    run.expect("INFO", "created fifo pipe")?;
    run.expect("INFO", "created fifo sub/pipe2")?;
    run.expect("INFO", "copied sub/b.txt")?;
    for rel in ["pipe", "sub/pipe2"] {
        ensure!(
            kind_of(&d.join(rel))? == Some("fifo"),
            "FIFO {rel} was not made as a FIFO in BACKUP\n{run}"
        );
    }
    assert_same("BACKUP differs from SOURCE", &snapshot(s)?, &snapshot(d)?)?;
    // Nothing to do the next time.
    let again = env.oneway_timeout(&[&"--once", s, d], HANG_TIMEOUT)?;
    again.expect_code(0)?;
    ensure!(
        again.summary()?.operations == 0,
        "a second pass did something\n{again}"
    );
    Ok(())
}

#[test]
fn leftover_temp_files_in_backup_are_removed_by_next_pass() -> TestResult {
    let env = Env::new()?;
    small_tree(&env.src)?;
    env.once(&[])?.expect_code(0)?;
    write(&env.dst, ".oneway-tmp-a1b2c3", "half written")?;
    write(&env.dst, "sub/.oneway-tmp-x9", "half written")?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    let left = temp_files(&env.dst)?;
    ensure!(
        left.is_empty(),
        "temporary files left in BACKUP: {left:?}\n{run}"
    );
    ensure!(run.summary()?.errors == 0, "errors in the pass\n{run}");
    assert_trees_equal(&env.src, &env.dst)
}

#[test]
fn leftover_hidden_directory_of_a_killed_pass_is_removed_and_not_taken_for_content() -> TestResult {
    // A new directory is built under a temporary name and renamed when complete; SIGKILL
    // before then leaves that directory (the kill tests in `faults` hit this by chance).
    let env = Env::new()?;
    small_tree(&env.src)?;
    env.once(&[])?.expect_code(0)?;
    // More leftover files than BACKUP holds real ones: counted as the user's, their removal
    // would trip the refusal of a pass that deletes more than half of BACKUP.
    for i in 0..20 {
        write(
            &env.dst,
            format!(".oneway-tmp-Ab12Cd/sub/f{i}.txt"),
            "a copy",
        )?;
    }

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect(
        "INFO",
        "removed leftover temporary directory .oneway-tmp-Ab12Cd",
    )?;
    let left = temp_files(&env.dst)?;
    ensure!(
        left.is_empty(),
        "leftovers still in BACKUP: {left:?}\n{run}"
    );
    assert_trees_equal(&env.src, &env.dst)
}

#[test]
fn log_goes_to_oneway_log_in_current_directory_by_default() -> TestResult {
    let env = Env::new()?;
    write(&env.src, "a.txt", "a")?;
    let mut cmd = env.command_without_log();
    cmd.arg("--once").arg(&env.src).arg(&env.dst);

    // The fixture's log path is `oneway.log` in the directory the binary runs from.
    let run = run_command(cmd, &env.root.join("oneway.log"), RUN_TIMEOUT)?;

    run.expect_code(0)?;
    run.expect("INFO", "copied a.txt")?;
    run.summary()?;
    assert_trees_equal(&env.src, &env.dst)
}

// ---------------------------------------------------------------------------------------------
// Refusals: exit 2, one clear line on stderr, nothing touched

/// Runs `oneway ARGS` and checks it refuses: exit 2, a stderr line holding every needle (and
/// naming `path`, as given or resolved, when one is given), and nothing changed in the fixture.
fn expect_refusal(
    env: &Env,
    args: &[&dyn AsRef<OsStr>],
    needles: &[&str],
    path: Option<&Path>,
) -> TestResult {
    let before = env.snapshot_all()?;
    let run = env.oneway_timeout(args, HANG_TIMEOUT)?;
    run.expect_code(2)?;
    let clear = |line: &str| {
        needles.iter().all(|n| line.contains(n)) && path.is_none_or(|p| contains_path(line, p))
    };
    ensure!(
        run.stderr.lines().any(clear),
        "expected one stderr line containing {needles:?}{}\n{run}",
        path.map(|p| format!(" and {}", p.display()))
            .unwrap_or_default()
    );
    assert_same(
        "a refused run changed the disk",
        &before,
        &env.snapshot_all()?,
    )
}

/// SOURCE with content and an empty BACKUP: a pass that should have been refused would show.
fn refusal_env() -> Res<Env> {
    let env = Env::new()?;
    write(&env.src, "a.txt", "a")?;
    write(&env.src, "sub/b.txt", "b")?;
    Ok(env)
}

#[test]
fn missing_source_is_refused() -> TestResult {
    let env = refusal_env()?;
    let missing = env.root.join("no-such-source");
    expect_refusal(
        &env,
        &[&"--once", &missing, &env.dst],
        &["does not exist"],
        Some(&missing),
    )
}

#[test]
fn missing_backup_is_refused() -> TestResult {
    let env = refusal_env()?;
    let missing = env.root.join("no-such-backup");
    expect_refusal(
        &env,
        &[&"--once", &env.src, &missing],
        &["does not exist"],
        Some(&missing),
    )?;
    ensure!(
        kind_of(&missing)?.is_none(),
        "the missing BACKUP was created"
    );
    Ok(())
}

#[test]
fn file_as_source_or_backup_is_refused() -> TestResult {
    let env = refusal_env()?;
    let file = write(&env.root, "plain-file", "not a directory")?;
    expect_refusal(
        &env,
        &[&"--once", &file, &env.dst],
        &["is not a directory"],
        Some(&file),
    )?;
    expect_refusal(
        &env,
        &[&"--once", &env.src, &file],
        &["is not a directory"],
        Some(&file),
    )
}

#[test]
fn backup_inside_source_is_refused() -> TestResult {
    let env = refusal_env()?;
    let inner = mkdir(&env.src, "inner")?;
    expect_refusal(&env, &[&"--once", &env.src, &inner], &["inside"], None)?;
    // The same through a symlink outside SOURCE.
    let alias = symlink(&env.root, "alias", &inner)?;
    expect_refusal(&env, &[&"--once", &env.src, &alias], &["inside"], None)
}

#[test]
fn source_inside_backup_is_refused() -> TestResult {
    let env = refusal_env()?;
    let inner = mkdir(&env.dst, "inner")?;
    write(&inner, "x.txt", "x")?;
    expect_refusal(&env, &[&"--once", &inner, &env.dst], &["inside"], None)?;
    let alias = symlink(&env.root, "alias", &inner)?;
    expect_refusal(&env, &[&"--once", &alias, &env.dst], &["inside"], None)
}

#[test]
fn same_directory_is_refused() -> TestResult {
    let env = refusal_env()?;
    expect_refusal(
        &env,
        &[&"--once", &env.src, &env.src],
        &["same directory"],
        None,
    )
}

#[test]
fn same_directory_through_symlink_is_refused() -> TestResult {
    let env = refusal_env()?;
    let link = symlink(&env.root, "link-to-src", &env.src)?;
    expect_refusal(
        &env,
        &[&"--once", &env.src, &link],
        &["same directory"],
        None,
    )?;
    expect_refusal(
        &env,
        &[&"--once", &link, &env.src],
        &["same directory"],
        None,
    )
}

#[test]
fn bad_interval_is_refused() -> TestResult {
    let env = refusal_env()?;
    // No --once: an interval that got through would start a periodic run, caught by the timeout.
    for value in ["0", "-5", "abc"] {
        expect_refusal(
            &env,
            &[&"--interval", &value, &env.src, &env.dst],
            &["interval", value],
            None,
        )?;
    }
    expect_refusal(
        &env,
        &[&"-i", &"0", &env.src, &env.dst],
        &["interval"],
        None,
    )
}

#[test]
fn empty_source_over_full_backup_is_refused_unless_forced() -> TestResult {
    let env = Env::new()?;
    small_tree(&env.src)?;
    env.once(&[])?.expect_code(0)?;
    fs::remove_dir_all(&env.src)?;
    fs::create_dir(&env.src)?;

    expect_refusal(
        &env,
        &[&"--once", &env.src, &env.dst],
        &[
            &format!(
                "refused: SOURCE {} is empty while BACKUP holds {} entries ",
                env.src.canonicalize()?.display(),
                snapshot(&env.dst)?.len()
            ),
            "entries (an unmounted drive looks like this); run with --force if this is intended",
        ],
        None,
    )?;

    let forced = env.once(&[&"--force"])?;
    forced.expect_code(0)?;
    forced.expect("INFO", "removed a.txt")?;
    forced.expect("INFO", "removed directory sub")?;
    assert_trees_equal(&env.src, &env.dst)?;
    ensure!(
        snapshot(&env.dst)?.is_empty(),
        "BACKUP not emptied\n{forced}"
    );
    Ok(())
}

#[test]
fn deleting_more_than_half_of_backup_is_refused_unless_forced() -> TestResult {
    let env = Env::new()?;
    for i in 1..=4 {
        write(&env.src, format!("f{i}.txt"), format!("file {i}"))?;
    }
    env.once(&[])?.expect_code(0)?;
    for i in 2..=4 {
        fs::remove_file(env.src.join(format!("f{i}.txt")))?;
    }

    // 3 of BACKUP's 4 files would go.
    expect_refusal(
        &env,
        &[&"--once", &env.src, &env.dst],
        &[&format!(
            "refused: the pass would delete 3 of the 4 files of BACKUP {} (more than half); run \
             with --force if this is intended",
            env.dst.canonicalize()?.display()
        )],
        None,
    )?;

    let forced = env.once(&[&"--force"])?;
    forced.expect_code(0)?;
    for i in 2..=4 {
        forced.expect("INFO", &format!("removed f{i}.txt"))?;
    }
    assert_trees_equal(&env.src, &env.dst)
}

#[test]
fn deleting_exactly_half_of_backup_is_allowed() -> TestResult {
    let env = Env::new()?;
    for i in 1..=4 {
        write(&env.src, format!("f{i}.txt"), format!("file {i}"))?;
    }
    env.once(&[])?.expect_code(0)?;
    fs::remove_file(env.src.join("f3.txt"))?;
    fs::remove_file(env.src.join("f4.txt"))?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect("INFO", "removed f3.txt")?;
    run.expect("INFO", "removed f4.txt")?;
    assert_trees_equal(&env.src, &env.dst)
}

// ---------------------------------------------------------------------------------------------
// Lock, signals, crashes, faults

#[test]
fn second_instance_on_same_backup_is_refused_naming_the_lock() -> TestResult {
    let env = Env::new()?;
    write(&env.src, "a.txt", "a")?;
    let mut first = env.spawn(&[&"--interval", &"3600", &env.src, &env.dst])?;
    first.wait_for_first_pass(&env)?;
    // Something for a second instance to do, were it let through.
    write(&env.src, "b.txt", "b")?;

    expect_refusal(
        &env,
        &[&"--once", &env.src, &env.dst],
        &["lock"],
        Some(&env.dst),
    )?;

    // A lock held by a killed process does not block the next run.
    let status = first.kill()?;
    ensure!(
        status.code().is_none(),
        "the first instance had exited by itself ({}) before it was killed",
        describe_status(status)
    );
    let run = env.once(&[])?;
    run.expect_code(0)?;
    run.expect("INFO", "copied b.txt")?;
    assert_trees_equal(&env.src, &env.dst)
}

/// Writes a file of `mib` MiB: a xorshift pattern, each MiB stamped with its index so no two are
/// alike.
fn write_pattern(path: &Path, mib: u32) -> TestResult {
    let mut block = vec![0u8; 1 << 20];
    let mut x: u32 = 0x1234_5678;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x.to_le_bytes()[3];
    }
    let mut f = File::create(path)?;
    for i in 0..mib {
        block[..4].copy_from_slice(&i.to_le_bytes());
        f.write_all(&block)?;
    }
    Ok(())
}

/// The first entry of `dir` (not recursive) whose name starts with `.oneway-tmp-`.
/// The file `pid` is writing in `dir` before it has its final name: a temporary file
/// `.oneway-tmp-*` there, or a file without any name yet (`O_TMPFILE`, which /proc shows as
/// `DIR/#INODE (deleted)` among the process's open files).
fn temp_file_in(dir: &Path, pid: u32) -> Res<Option<String>> {
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if name.as_bytes().starts_with(TMP_PREFIX.as_bytes()) {
            return Ok(Some(name.to_string_lossy().into_owned()));
        }
    }
    let dir = fs::canonicalize(dir)?;
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Ok(None);
    };
    for fd in fds.flatten() {
        if let Ok(target) = fs::read_link(fd.path()) {
            let shown = target.to_string_lossy();
            if target.starts_with(&dir) && shown.ends_with(" (deleted)") {
                return Ok(Some(shown.into_owned()));
            }
        }
    }
    Ok(None)
}

#[test]
fn sigkill_during_large_copy_leaves_no_partial_file() -> TestResult {
    let env = Env::new()?;
    let big = env.src.join("big.bin");
    write_pattern(&big, 256)?;
    set_mtime(&big, T0, 42)?;
    let final_path = env.dst.join("big.bin");

    let mut child = env.spawn(&[&"--once", &env.src, &env.dst])?;
    let deadline = Instant::now() + RUN_TIMEOUT;
    let temp = loop {
        if let Some(name) = temp_file_in(&env.dst, child.pid())? {
            child.kill()?;
            break name;
        }
        if let Some(status) = child.try_wait()? {
            return Err(fail(format!(
                "oneway --once ended ({}) before any {TMP_PREFIX}* file was seen in BACKUP, so \
                 it could not be killed mid-copy\nstderr:\n{}",
                describe_status(status),
                child.stderr()
            )));
        }
        ensure!(
            Instant::now() < deadline,
            "no {TMP_PREFIX}* file in BACKUP within {RUN_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(1));
    };

    // Killed while the temporary file {temp} existed: the final name holds nothing or all.
    let renamed = match kind_of(&final_path)? {
        None => false,
        Some("file") => {
            ensure!(
                files_equal(&big, &final_path)?,
                "after SIGKILL (temporary file {temp} seen), BACKUP/big.bin holds a partial copy"
            );
            true
        }
        Some(kind) => return Err(fail(format!("BACKUP/big.bin is a {kind}"))),
    };

    let run = env.once(&[])?;

    run.expect_code(0)?;
    if !renamed {
        run.expect("INFO", "copied big.bin")?;
    }
    ensure!(run.summary()?.errors == 0, "errors in the pass\n{run}");
    let left = temp_files(&env.dst)?;
    ensure!(
        left.is_empty(),
        "temporary files left in BACKUP after the next pass: {left:?}\n{run}"
    );
    assert_trees_equal(&env.src, &env.dst)
}

/// Reading SOURCE leaves its access times as they were (`O_NOATIME`): a first copy and a
/// `--checksum` pass read every file, and a file system mounted `relatime` (the default) would
/// otherwise write the inode of every file not read for a day.
#[test]
fn reading_source_leaves_its_access_times_as_they_were() -> TestResult {
    let env = Env::new()?;
    let long_ago = filetime::FileTime::from_unix_time(now_secs()? - 3 * 86_400, 0);
    let modified = filetime::FileTime::from_unix_time(T0, 0);
    let atime = |path: &Path| -> Res<i64> { Ok(fs::metadata(path)?.atime()) };
    let files = [
        write(&env.src, "a.txt", "alpha")?,
        write(&env.src, "b.txt", "bravo")?,
        write(&env.src, "sub/c.txt", "charlie")?,
    ];
    let control = write(&env.root, "control.txt", "read plainly")?;
    for path in files.iter().chain([&control]) {
        filetime::set_file_times(path, long_ago, modified)?;
    }
    // This file system does move the access time of a file not read for a day.
    read(&control)?;
    ensure!(
        atime(&control)? != long_ago.unix_seconds(),
        "{} does not update access times on read (mounted noatime?): this test checks nothing \
         there",
        env.root.display()
    );

    env.once(&[])?.expect_code(0)?;
    env.once(&[&"--checksum"])?.expect_code(0)?;

    for path in &files {
        ensure!(
            atime(path)? == long_ago.unix_seconds(),
            "reading {} moved its access time",
            path.display()
        );
    }
    // Last: comparing the trees reads them.
    assert_trees_equal(&env.src, &env.dst)
}

/// A file that the user may read but does not own cannot be opened without moving its access
/// time: it is read all the same, by a copy and by `--checksum`.
#[test]
fn a_readable_file_of_another_user_is_copied_and_hashed() -> TestResult {
    let mut env = Env::new()?;
    ensure!(
        fs::metadata(&env.root)?.uid() == 0,
        "run as root: the test gives a file to root and runs oneway as uid {NOBODY}"
    );
    write(&env.src, "mine.txt", "mine")?;
    let theirs = write(&env.src, "theirs.txt", "theirs")?;
    env.run_as_nobody()?;
    std::os::unix::fs::chown(&theirs, Some(0), Some(0))?;
    chmod(&theirs, 0o644)?;

    env.once(&[])?.expect_code(0)?;
    assert_trees_equal(&env.src, &env.dst)?;
    let checked = env.once(&[&"--checksum"])?;
    checked.expect_code(0)?;
    ensure!(
        checked.summary()?.errors == 0,
        "errors in the --checksum pass\n{checked}"
    );
    Ok(())
}

#[test]
fn unreadable_file_is_logged_and_its_old_copy_kept() -> TestResult {
    let mut env = Env::new()?;
    let s = env.src.clone();
    write(&s, "a.txt", "old a")?;
    write(&s, "b.txt", "old b")?;
    write(&s, "c.txt", "c")?;
    write(&s, "sub/d.txt", "d")?;
    // Root reads everything: run oneway as an unprivileged user.
    env.run_as_nobody()?;
    let first = env.once(&[])?;
    first.expect_code(0)?;
    assert_trees_equal(&env.src, &env.dst)?;

    write(&s, "a.txt", "new content of a")?;
    chmod(&s.join("a.txt"), 0o000)?;
    write(&s, "b.txt", "new content of b")?;

    let run = env.once(&[])?;

    run.expect_code(1)?;
    ensure!(
        run.lines()
            .iter()
            .any(|l| l.level == "ERROR" && l.message.starts_with("cannot read a.txt: ")),
        "expected ERROR `cannot read a.txt: ...`\n{run}"
    );
    run.expect("INFO", "replaced b.txt")?;
    ensure!(
        run.summary()?.errors == 1,
        "expected 1 error in the summary\n{run}"
    );
    ensure!(
        read(&env.dst.join("a.txt"))? == b"old a",
        "BACKUP/a.txt lost its old content\n{run}"
    );
    ensure!(
        read(&env.dst.join("b.txt"))? == b"new content of b",
        "BACKUP/b.txt was not updated\n{run}"
    );
    for rel in ["c.txt", "sub/d.txt"] {
        ensure!(
            files_equal(&s.join(rel), &env.dst.join(rel))?,
            "BACKUP/{rel} differs\n{run}"
        );
    }
    Ok(())
}

/// Periodic mode: after the first pass, signal `name` makes oneway exit 0 and log the total.
fn signal_ends_periodic_run(name: &str) -> TestResult {
    let env = Env::new()?;
    small_tree(&env.src)?;
    let mut bg = env.spawn(&[&"--interval", &"3600", &env.src, &env.dst])?;
    let summary = bg.wait_for_first_pass(&env)?;
    ensure!(
        summary.operations > 0,
        "the first pass did nothing: {summary:?}"
    );

    bg.stop_with(name)?;
    let want = format!("Total number of operations: {}", summary.operations);
    let log = env.log_text();
    ensure!(
        log.lines()
            .filter_map(parse_log_line)
            .any(|l| l.level == "INFO" && l.message == want),
        "expected INFO `{want}` in the log:\n{log}"
    );
    assert_trees_equal(&env.src, &env.dst)
}

/// Context switches of every thread of process `pid` so far: each is a wake-up.
fn context_switches(pid: u32) -> Res<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = fs::read_to_string(task?.path().join("status"))?;
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}

#[test]
fn waiting_for_the_next_pass_wakes_nothing() -> TestResult {
    let env = Env::new()?;
    small_tree(&env.src)?;
    let mut bg = env.spawn(&[&"--interval", &"3600", &env.src, &env.dst])?;
    bg.wait_for_first_pass(&env)?;
    // Let the end of the pass settle (idle pool threads park, the log is written).
    std::thread::sleep(Duration::from_millis(500));
    let before = context_switches(bg.pid())?;
    std::thread::sleep(Duration::from_secs(2));
    let woken = context_switches(bg.pid())? - before;
    // A nap-and-check loop of 50 ms would wake about 40 times here.
    ensure!(
        woken <= 4,
        "oneway woke {woken} times in 2 s of waiting for its next pass"
    );
    bg.stop_with("TERM")
}

#[test]
fn sigint_in_periodic_mode_exits_zero_and_logs_operation_count() -> TestResult {
    signal_ends_periodic_run("INT")
}

#[test]
fn sigterm_in_periodic_mode_exits_zero_and_logs_operation_count() -> TestResult {
    signal_ends_periodic_run("TERM")
}

#[test]
fn deleted_log_file_is_created_again() -> TestResult {
    let env = Env::new()?;
    write(&env.src, "a.txt", "a")?;
    let mut bg = env.spawn(&[&"--interval", &"1", &env.src, &env.dst])?;
    bg.wait_for_first_pass(&env)?;

    fs::remove_file(&env.log)?;
    write(&env.src, "new.txt", "arrived after the log was deleted")?;

    bg.wait_for_log(
        &env,
        "a recreated log file with `copied new.txt` and a later `pass finished`",
        Duration::from_secs(20),
        |text| {
            let lines: Vec<LogLine> = text.lines().filter_map(parse_log_line).collect();
            lines
                .iter()
                .position(|l| l.message == "copied new.txt")
                .is_some_and(|i| {
                    lines[i..]
                        .iter()
                        .any(|l| parse_summary(&l.message).is_some())
                })
        },
    )?;
    bg.stop_with("TERM")?;
    assert_trees_equal(&env.src, &env.dst)
}

// ---------------------------------------------------------------------------------------------
// The hash cache

#[test]
fn twenty_thousand_unchanged_files_are_not_hashed_again() -> TestResult {
    let env = Env::new()?;
    for d in 0..200 {
        let dir = mkdir(&env.src, format!("d{d:03}"))?;
        for f in 0..100 {
            fs::write(dir.join(format!("f{f:02}.txt")), format!("{d}/{f}\n"))?;
        }
    }

    let first = env.once(&[])?;

    first.expect_code(0)?;
    let operations = first.operations();
    let copied = operations
        .iter()
        .filter(|m| m.starts_with("copied "))
        .count();
    ensure!(
        copied == 20_000,
        "expected 20000 `copied` lines, got {copied}\n{first}"
    );
    let summary = first.summary()?;
    ensure!(
        summary.errors == 0 && summary.operations == operations.len() as u64,
        "summary {summary:?} does not match {} operation lines\n{first}",
        operations.len()
    );
    assert_trees_equal(&env.src, &env.dst)?;

    let second = env.once(&[])?;

    second.expect_code(0)?;
    let summary = second.summary()?;
    ensure!(
        summary.operations == 0 && summary.hashed == 0 && summary.errors == 0,
        "expected 0 operations and 0 files hashed on the unchanged tree, got {summary:?}\n{second}"
    );
    ensure!(
        second.operations().is_empty(),
        "operations on an unchanged tree\n{second}"
    );
    Ok(())
}

#[test]
fn checksum_option_rehashes_every_file() -> TestResult {
    let env = Env::new()?;
    small_tree(&env.src)?; // five regular files
    env.once(&[])?.expect_code(0)?;

    let run = env.once(&[&"--checksum"])?;

    run.expect_code(0)?;
    let summary = run.summary()?;
    ensure!(
        summary.hashed == 10 && summary.operations == 0 && summary.errors == 0,
        "expected both sides' 5 files re-hashed (10) and 0 operations, got {summary:?}\n{run}"
    );
    ensure!(
        run.operations().is_empty(),
        "operations on an unchanged tree\n{run}"
    );
    assert_trees_equal(&env.src, &env.dst)
}

/// BACKUP's root takes SOURCE root's mode and time, as every directory below it does: a
/// private SOURCE keeps a private BACKUP (other users cannot read a 0700 SOURCE's files through
/// a 0755 BACKUP), and a later change of SOURCE root's mode is carried too.
#[test]
fn a_private_source_keeps_a_private_backup() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new()?;
    write(&env.src, "d/f.txt", "private")?;
    chmod(&env.src, 0o700)?;
    chmod(&env.dst, 0o755)?;
    set_mtime(&env.src, T0 + 20, 7)?;
    let mode = |path: &Path| -> Res<u32> { Ok(fs::metadata(path)?.permissions().mode() & 0o7777) };

    env.once(&[])?.expect_code(0)?;
    ensure!(
        mode(&env.dst)? == 0o700,
        "BACKUP of a 0700 SOURCE has mode {:o}",
        mode(&env.dst)?
    );
    ensure!(
        filetime::FileTime::from_last_modification_time(&fs::metadata(&env.dst)?)
            == filetime::FileTime::from_unix_time(T0 + 20, 7),
        "BACKUP's root does not have SOURCE root's time"
    );

    chmod(&env.src, 0o750)?;
    set_mtime(&env.src, T0 + 20, 7)?;
    env.once(&[])?.expect_code(0)?;
    ensure!(
        mode(&env.dst)? == 0o750,
        "BACKUP's root kept mode {:o} after SOURCE's became 750",
        mode(&env.dst)?
    );
    // Nothing differs now: the next pass does nothing.
    let again = env.once(&[])?;
    again.expect_code(0)?;
    ensure!(
        again.summary()?.operations == 0,
        "a pass after the root was matched still did something\n{again}"
    );
    Ok(())
}
