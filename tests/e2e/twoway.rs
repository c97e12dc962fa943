//! `twoway`: the two-way pass against the archive of the last completed pass, conflicts and their
//! copies, refusals, the lock per pair of roots, kills and faults (SPEC §4, §5, §7, §8; issue 4).
//! Every test runs the real binary with `--no-recovery` (the recovery system is another issue) on
//! a fresh temporary directory, which is also its state directory, and checks the exit code, the
//! log and both sides on disk.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crate::util::*;

/// How long a run that must refuse may take before it counts as hung.
const HANG_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Helpers

/// One of the two roots, named as the log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Backup,
}

impl Side {
    /// `SOURCE` or `BACKUP`, as in the log.
    fn name(self) -> &'static str {
        match self {
            Side::Source => "SOURCE",
            Side::Backup => "BACKUP",
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Source => Side::Backup,
            Side::Backup => Side::Source,
        }
    }

    fn dir(self, env: &Env) -> &Path {
        match self {
            Side::Source => &env.src,
            Side::Backup => &env.dst,
        }
    }
}

/// Writes `content` to `dir/rel` (parents created) and sets its mtime to `mtime` seconds.
fn put(dir: &Path, rel: &str, content: &str, mtime: i64) -> Res<PathBuf> {
    let path = write(dir, rel, content)?;
    set_mtime(&path, mtime, 0)?;
    Ok(path)
}

/// The `K conflicts` of the run's summary; fails if the summary lacks it.
fn conflicts(run: &Run) -> Res<u64> {
    run.summary()?
        .conflicts
        .ok_or_else(|| fail(format!("the summary has no `K conflicts` part\n{run}")))
}

/// Fails unless the run's summary counts no error and no conflict.
fn expect_clean_summary(run: &Run) -> TestResult {
    let summary = run.summary()?;
    ensure!(
        summary.errors == 0 && summary.conflicts == Some(0),
        "expected 0 errors and 0 conflicts, got {summary:?}\n{run}"
    );
    Ok(())
}

/// Fails if the run logged any WARNING or ERROR line.
fn expect_no_warnings(run: &Run) -> TestResult {
    let bad: Vec<LogLine> = run
        .lines()
        .into_iter()
        .filter(|l| l.level == "WARNING" || l.level == "ERROR")
        .collect();
    ensure!(
        bad.is_empty(),
        "unexpected warnings or errors {bad:?}\n{run}"
    );
    Ok(())
}

/// Fails unless the run's operation lines are exactly `want` (in any order), and the summary
/// counts exactly that many operations.
fn expect_operations(run: &Run, want: &[&str]) -> TestResult {
    let mut have = run.operations();
    have.sort();
    let mut want: Vec<String> = want.iter().map(|m| m.to_string()).collect();
    want.sort();
    ensure!(
        have == want,
        "expected exactly the operations {want:#?}\nfound {have:#?}\n{run}"
    );
    let n = run.summary()?.operations;
    ensure!(
        n == want.len() as u64,
        "the summary counts {n} operations, the log shows {}\n{run}",
        want.len()
    );
    Ok(())
}

/// A pass that must succeed cleanly and leave both sides equal: the way tests set up the state
/// of a completed sync (the archive) before making the change under test.
fn sync(env: &Env) -> Res<Run> {
    let run = env.once(&[])?;
    run.expect_code(0)?;
    expect_clean_summary(&run)?;
    assert_synced(&env.src, &env.dst)?;
    Ok(run)
}

/// Runs `twoway ARGS` and checks it refuses: exit 2, a stderr line holding every needle, and
/// nothing changed in the fixture (SOURCE, BACKUP, archive).
fn expect_refusal(env: &Env, args: &[&dyn AsRef<OsStr>], needles: &[&str]) -> Res<Run> {
    let before = env.snapshot_all()?;
    let run = env.run_timeout(args, HANG_TIMEOUT)?;
    run.expect_code(2)?;
    ensure!(
        run.stderr
            .lines()
            .any(|line| needles.iter().all(|n| line.contains(n))),
        "expected one stderr line containing {needles:?}\n{run}"
    );
    assert_same(
        "a refused run changed the disk",
        &before,
        &env.snapshot_all()?,
    )?;
    Ok(run)
}

/// The local-time range `YYYYMMDD-HHMMSS` (in [`TWOWAY_TZ`]) that a pass ran within.
struct Window {
    from: String,
    to: String,
}

impl Window {
    fn contains(&self, stamp: &str) -> bool {
        self.from.as_str() <= stamp && stamp <= self.to.as_str()
    }
}

/// Runs `f` and returns its result with the local-time window it ran in (a second of margin each
/// side: the stamps are truncated to seconds).
fn timed<T>(f: impl FnOnce() -> Res<T>) -> Res<(T, Window)> {
    let start = now_secs()?;
    let out = f()?;
    let end = now_secs()?;
    Ok((
        out,
        Window {
            from: compact_stamp(start - 1, TWOWAY_TZ_OFFSET),
            to: compact_stamp(end + 1, TWOWAY_TZ_OFFSET),
        },
    ))
}

/// A conflict copy's name, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConflictCopy {
    /// The file name.
    name: String,
    /// `YYYYMMDD-HHMMSS`.
    stamp: String,
    /// `N` of `-N`, if the name carries a counter.
    counter: Option<u32>,
}

/// EXT of a file name: the text after its last dot, unless that dot opens the name.
fn extension(name: &str) -> Option<&str> {
    match name.rfind('.') {
        None | Some(0) => None,
        Some(i) => Some(&name[i + 1..]),
    }
}

/// Parses `candidate` as a conflict copy of the file name `name`:
/// `NAME.conflict-YYYYMMDD-HHMMSS[-N][.EXT]`. The contract leaves open whether NAME there is
/// the whole name (`a.txt.conflict-….txt`) or the name without `.EXT` (`a.conflict-….txt`):
/// both are accepted, and both sides must show the same name.
fn parse_conflict_copy(name: &str, candidate: &str) -> Option<ConflictCopy> {
    let ext = extension(name);
    let mut bases = vec![name];
    if let Some(e) = ext {
        bases.push(&name[..name.len() - e.len() - 1]);
    }
    let suffix = ext.map(|e| format!(".{e}")).unwrap_or_default();
    for base in bases {
        let Some(rest) = candidate
            .strip_prefix(base)
            .and_then(|r| r.strip_prefix(".conflict-"))
            .and_then(|r| r.strip_suffix(suffix.as_str()))
        else {
            continue;
        };
        let Some((stamp, counter)) = rest.split_at_checked(15) else {
            continue;
        };
        let well_formed = stamp.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'-',
            _ => b.is_ascii_digit(),
        });
        if !well_formed {
            continue;
        }
        let counter = match counter.strip_prefix('-') {
            None if counter.is_empty() => None,
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                match n.parse::<u32>() {
                    Ok(n) if n >= 2 => Some(n),
                    _ => continue,
                }
            }
            _ => continue,
        };
        return Some(ConflictCopy {
            name: candidate.to_owned(),
            stamp: stamp.to_owned(),
            counter,
        });
    }
    None
}

/// The conflict copies of `name` directly in `dir`, sorted by name.
fn conflict_copies(dir: &Path, name: &str) -> Res<Vec<ConflictCopy>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).context(|| format!("list {}", dir.display()))? {
        let file_name = entry?.file_name();
        if let Some(copy) = file_name
            .to_str()
            .and_then(|n| parse_conflict_copy(name, n))
        {
            out.push(copy);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One conflict a pass must have decided: on the top-level entry `name`, for `winner` by
/// `policy`, the loser's content being `loser`; `known` lists conflict copies of `name` that
/// existed before the pass.
struct Conflict<'a> {
    name: &'a str,
    winner: Side,
    policy: &'a str,
    loser: &'a str,
    known: &'a [&'a str],
}

/// Checks `conflict` after `run`, which ran within `window`: exactly one new conflict copy on
/// each side, with the same name, a stamp within the window, and the loser's content on both
/// sides; the WARNING line naming it. Returns the copy.
fn expect_conflict(
    env: &Env,
    run: &Run,
    window: &Window,
    conflict: &Conflict<'_>,
) -> Res<ConflictCopy> {
    let Conflict {
        name,
        winner,
        policy,
        loser,
        known,
    } = *conflict;
    let mut found = Vec::new();
    for side in [Side::Source, Side::Backup] {
        let new: Vec<ConflictCopy> = conflict_copies(side.dir(env), name)?
            .into_iter()
            .filter(|c| !known.contains(&c.name.as_str()))
            .collect();
        ensure!(
            new.len() == 1,
            "expected one new conflict copy of {name} in {}, found {new:?}\n{run}",
            side.name()
        );
        found.push(new[0].clone());
    }
    let copy = found[0].clone();
    ensure!(
        found[1] == copy,
        "the conflict copies differ: {} in SOURCE, {} in BACKUP\n{run}",
        copy.name,
        found[1].name
    );
    ensure!(
        window.contains(&copy.stamp),
        "conflict copy {} is stamped {}, not the local time ({TWOWAY_TZ}) of the pass, which \
         ran between {} and {}\n{run}",
        copy.name,
        copy.stamp,
        window.from,
        window.to
    );
    for side in [Side::Source, Side::Backup] {
        let path = side.dir(env).join(&copy.name);
        ensure!(
            kind_of(&path)? == Some("file") && read(&path)? == loser.as_bytes(),
            "{} in {} does not hold the loser's content {loser:?}\n{run}",
            copy.name,
            side.name()
        );
    }
    run.expect(
        "WARNING",
        &format!(
            "conflict on {name}: kept the {} version ({policy}); the {} version is saved as {} \
             on both sides",
            winner.name(),
            winner.other().name(),
            copy.name
        ),
    )?;
    Ok(copy)
}

/// The operation lines of a file-against-file conflict on the top-level `name` whose loser was
/// saved as `copy`: moved aside on the loser's side, copied to the winner's side, and the
/// winner's version written in its place on the loser's side.
fn expect_conflict_operations(run: &Run, name: &str, copy: &str, winner: Side) -> TestResult {
    let loser = winner.other().name();
    run.expect("INFO", &format!("saved {name} as {copy} in {loser}"))?;
    run.expect("INFO", &format!("copied {copy} to {}", winner.name()))?;
    run.expect_any(&[
        &format!("copied {name} to {loser}"),
        &format!("replaced {name} in {loser}"),
    ])
}

// ---------------------------------------------------------------------------------------------
// The first pass

#[test]
fn first_pass_merges_both_sides_and_identical_files_are_no_conflict() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "only_in_source.txt", "from source\n", T0 + 1)?;
    put(
        s,
        "new_dir/s.txt",
        "in a directory only SOURCE has\n",
        T0 + 2,
    )?;
    put(
        s,
        "both/s.txt",
        "SOURCE's file in a shared directory\n",
        T0 + 3,
    )?;
    set_mtime(&symlink(s, "source_link", "only_in_source.txt")?, T0 + 4, 0)?;
    put(d, "only_in_backup.txt", "from backup\n", T0 + 5)?;
    put(
        d,
        "both/b.txt",
        "BACKUP's file in a shared directory\n",
        T0 + 6,
    )?;
    mkdir(d, "empty_in_backup")?;
    // Same path, same content, same mtime on both sides: nothing to do.
    put(s, "same.txt", "identical on both sides\n", T0 + 7)?;
    put(d, "same.txt", "identical on both sides\n", T0 + 7)?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect_well_formed_log()?;
    expect_no_warnings(&run)?;
    expect_operations(
        &run,
        &[
            "copied only_in_source.txt to BACKUP",
            "created directory new_dir in BACKUP",
            "copied new_dir/s.txt to BACKUP",
            "copied both/s.txt to BACKUP",
            "created symlink source_link -> only_in_source.txt in BACKUP",
            "copied only_in_backup.txt to SOURCE",
            "copied both/b.txt to SOURCE",
            "created directory empty_in_backup in SOURCE",
        ],
    )?;
    expect_clean_summary(&run)?;
    run.expect("INFO", "Total number of operations: 8")?;
    let want = [
        ("only_in_source.txt", Want::file("from source\n")),
        ("new_dir", Want::Dir),
        (
            "new_dir/s.txt",
            Want::file("in a directory only SOURCE has\n"),
        ),
        ("both", Want::Dir),
        (
            "both/s.txt",
            Want::file("SOURCE's file in a shared directory\n"),
        ),
        (
            "both/b.txt",
            Want::file("BACKUP's file in a shared directory\n"),
        ),
        ("source_link", Want::link("only_in_source.txt")),
        ("only_in_backup.txt", Want::file("from backup\n")),
        ("empty_in_backup", Want::Dir),
        ("same.txt", Want::file("identical on both sides\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)?;
    // The archive is in the state directory, never inside either root.
    env.archive()?;
    for root in [s, d] {
        let inside = archives_under(root)?;
        ensure!(
            inside.is_empty(),
            "archive written inside {}: {inside:?}",
            root.display()
        );
    }

    // Nothing changed since: the next pass does nothing.
    let again = env.once(&[])?;
    again.expect_code(0)?;
    expect_operations(&again, &[])?;
    expect_clean_summary(&again)
}

/// The archive's text (the pair's `.twoway-archive-<hex>.txt` in the state directory).
fn archive_text(env: &Env) -> Res<String> {
    Ok(fs::read_to_string(env.archive()?)?)
}

/// Fails unless the archive records `side`'s file at `rel` as it is on disk: its SHA-256,
/// size, mode and modification time (the archive's `F` line; `rel` needs no escaping).
fn expect_archived_file(env: &Env, side: Side, rel: &str) -> TestResult {
    let path = side.dir(env).join(rel);
    let meta = fs::metadata(&path)?;
    // Run as root, owners are carried, and recorded at the end of the line.
    let line = format!(
        "F {} {} {:o} {}.{:09} {rel} +{}:{}:0",
        checksum::file_checksum(&path)?,
        meta.len(),
        meta.mode() & 0o7777,
        meta.mtime(),
        meta.mtime_nsec(),
        meta.uid(),
        meta.gid()
    );
    let text = archive_text(env)?;
    ensure!(
        text.lines().any(|l| l == line),
        "the archive lacks the line `{line}`:\n{text}"
    );
    Ok(())
}

#[test]
fn a_file_only_one_side_holds_is_read_once_by_its_copy_which_gives_the_archive_its_digest()
-> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "only SOURCE holds this\n", T0 + 1)?;
    put(s, "dir/b.txt", "and this, in a directory\n", T0 + 2)?;
    put(d, "c.txt", "only BACKUP holds this\n", T0 + 3)?;
    // A path both sides hold must be hashed on both to be compared.
    put(s, "same.txt", "on both sides\n", T0 + 4)?;
    put(d, "same.txt", "on both sides\n", T0 + 4)?;

    let run = env.once(&[])?;
    run.expect_code(0)?;
    expect_clean_summary(&run)?;
    // Every file read is counted, once: the copies' reads too (issue 23).
    let summary = run.summary()?;
    ensure!(
        summary.hashed == 5 && summary.hashed_while_copying == 3,
        "expected only same.txt's two sides hashed before the plan (2), the copies reading the \
         rest once (3 while copying, 5 in all), found {summary:?}\n{run}"
    );
    assert_synced(s, d)?;
    for (side, rel) in [
        (Side::Source, "a.txt"),
        (Side::Source, "dir/b.txt"),
        (Side::Backup, "c.txt"),
        (Side::Source, "same.txt"),
    ] {
        expect_archived_file(&env, side, rel)?;
    }

    // The digests the copies learnt are cached too: nothing changed, nothing read.
    let again = env.once(&[])?;
    again.expect_code(0)?;
    expect_operations(&again, &[])?;
    ensure!(
        again.summary()?.hashed == 0,
        "a pass with nothing changed read files\n{again}"
    );

    // An edit on one side is a change against the archive, not a conflict: the archive holds
    // the copied files' real digests.
    put(d, "a.txt", "edited in BACKUP\n", T0 + 10)?;
    put(s, "c.txt", "edited in SOURCE\n", T0 + 11)?;
    let edit = env.once(&[])?;
    edit.expect_code(0)?;
    expect_clean_summary(&edit)?;
    expect_operations(
        &edit,
        &["replaced a.txt in SOURCE", "replaced c.txt in BACKUP"],
    )?;
    assert_synced(s, d)
}

#[test]
fn a_file_left_unread_that_changes_before_its_copy_is_archived_as_it_was_copied() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    let file = put(s, "f.txt", "first version\n", T0 + 1)?;
    // Between the plan and the copy: other bytes, another size and time.
    let hook = format!(
        "printf 'second version, longer\\n' > '{0}' && touch -d @{1} '{0}'",
        file.display(),
        T0 + 50
    );
    let mut cmd = env.command(&[&"--once", s, d]);
    cmd.env("ONEWAY_TEST_HOOK_AFTER_PLAN", &hook);
    let run = env.run_command(cmd, &env.log)?;
    run.expect_code(0)?;
    expect_clean_summary(&run)?;
    expect_tree(
        "BACKUP",
        d,
        &[("f.txt", Want::file("second version, longer\n"))],
    )?;
    assert_synced(s, d)?;
    expect_archived_file(&env, Side::Source, "f.txt")?;

    // The archive holds what was copied, time included: nothing is left to do.
    let again = env.once(&[])?;
    again.expect_code(0)?;
    expect_operations(&again, &[])?;
    expect_clean_summary(&again)
}

#[test]
fn first_pass_same_path_different_content_is_a_conflict_kept_on_both_sides() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "written in SOURCE\n", T0 + 10)?;
    put(d, "a.txt", "written in BACKUP, later\n", T0 + 20)?;
    put(s, "other.txt", "no conflict here\n", T0 + 30)?;

    let (run, window) = timed(|| env.once(&[]))?;

    run.expect_code(0)?;
    run.expect_well_formed_log()?;
    // Default policy `newer`: BACKUP's later version wins; nothing is deleted in a first pass.
    let copy = expect_conflict(
        &env,
        &run,
        &window,
        &Conflict {
            name: "a.txt",
            winner: Side::Backup,
            policy: "newer",
            loser: "written in SOURCE\n",
            known: &[],
        },
    )?;
    ensure!(copy.counter.is_none(), "unexpected counter in {copy:?}");
    expect_conflict_operations(&run, "a.txt", &copy.name, Side::Backup)?;
    run.expect("INFO", "copied other.txt to BACKUP")?;
    ensure!(conflicts(&run)? == 1, "expected 1 conflict\n{run}");
    let want = [
        ("a.txt", Want::file("written in BACKUP, later\n")),
        (copy.name.as_str(), Want::file("written in SOURCE\n")),
        ("other.txt", Want::file("no conflict here\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    // Mtimes travel with the contents: the winner's and the loser's.
    assert_synced(s, d)?;
    ensure!(
        fs::metadata(s.join("a.txt"))?.mtime() == T0 + 20
            && fs::metadata(s.join(&copy.name))?.mtime() == T0 + 10,
        "mtimes not carried with the contents\n{run}"
    );

    let again = env.once(&[])?;
    again.expect_code(0)?;
    expect_operations(&again, &[])?;
    expect_clean_summary(&again)
}

#[test]
fn log_goes_to_twoway_log_in_the_state_directory_by_default() -> TestResult {
    let env = Env::twoway()?;
    write(&env.src, "a.txt", "a")?;
    let mut cmd = env.command_without_log();
    cmd.arg("--no-recovery")
        .arg("--once")
        .arg(&env.src)
        .arg(&env.dst);

    // The fixture's log path is `twoway.log` in the directory the binary runs from.
    let run = env.run_command(cmd, &env.root.join("twoway.log"))?;

    run.expect_code(0)?;
    run.expect_well_formed_log()?;
    run.expect("INFO", "copied a.txt to BACKUP")?;
    run.summary()?;
    assert_synced(&env.src, &env.dst)
}

#[test]
fn each_pair_of_roots_has_its_own_archive() -> TestResult {
    let env = Env::twoway()?;
    put(&env.src, "a.txt", "a\n", T0)?;
    put(&env.src, "b.txt", "b\n", T0)?;
    sync(&env)?;
    let first_archive = env.archive()?;
    let other = mkdir(&env.root, "other-backup")?;

    // SOURCE with a new, empty BACKUP: another pair, so a first pass that merges. Were the
    // first pair's archive used, a.txt and b.txt would look deleted from BACKUP.
    let run = env.run(&[&"--once", &env.src, &other])?;

    run.expect_code(0)?;
    run.expect("INFO", "copied a.txt to BACKUP")?;
    run.expect("INFO", "copied b.txt to BACKUP")?;
    expect_clean_summary(&run)?;
    assert_synced(&env.src, &other)?;
    let all = archives(&env.archive_dir())?;
    ensure!(
        all.len() == 2 && all.contains(&first_archive),
        "expected a second archive beside {}, found {all:?}",
        first_archive.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One-sided changes

/// Creates, modifies, deletes and re-modes on `changed`, then checks that one pass carries each
/// change to the other side and leaves `changed` exactly as the user left it.
fn one_sided_changes_are_carried(changed: Side) -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "keep.txt", "untouched\n", T0)?;
    put(s, "modified.txt", "before\n", T0 + 1)?;
    put(s, "gone.txt", "deleted soon\n", T0 + 2)?;
    put(s, "gone_dir/g1.txt", "deleted with its directory\n", T0 + 3)?;
    put(
        s,
        "gone_dir/sub/g2.txt",
        "deleted with its directory\n",
        T0 + 4,
    )?;
    put(s, "mode.txt", "its mode changes\n", T0 + 5)?;
    chmod(&s.join("mode.txt"), 0o644)?;
    mkdir(s, "mode_dir")?;
    chmod(&s.join("mode_dir"), 0o755)?;
    for i in 0..6 {
        put(s, &format!("filler/f{i}.txt"), &format!("filler {i}\n"), T0)?;
    }
    sync(&env)?;

    let c = changed.dir(&env);
    put(c, "new.txt", "created after the sync\n", T0 + 100)?;
    put(c, "new_dir/n.txt", "in a new directory\n", T0 + 101)?;
    put(c, "modified.txt", "after, and longer\n", T0 + 102)?;
    chmod(&c.join("modified.txt"), 0o600)?;
    fs::remove_file(c.join("gone.txt"))?;
    fs::remove_dir_all(c.join("gone_dir"))?;
    chmod(&c.join("mode.txt"), 0o640)?;
    chmod(&c.join("mode_dir"), 0o750)?;
    let changed_before = snapshot(c)?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect_well_formed_log()?;
    expect_no_warnings(&run)?;
    let other = changed.other().name();
    expect_operations(
        &run,
        &[
            &format!("copied new.txt to {other}"),
            &format!("created directory new_dir in {other}"),
            &format!("copied new_dir/n.txt to {other}"),
            &format!("replaced modified.txt in {other}"),
            &format!("removed gone.txt from {other}"),
            &format!("removed gone_dir/g1.txt from {other}"),
            &format!("removed gone_dir/sub/g2.txt from {other}"),
            &format!("removed directory gone_dir/sub from {other}"),
            &format!("removed directory gone_dir from {other}"),
            &format!("updated metadata of mode.txt in {other}"),
            &format!("updated metadata of mode_dir in {other}"),
        ],
    )?;
    expect_clean_summary(&run)?;
    let mut want = vec![
        ("keep.txt", Want::file("untouched\n")),
        ("modified.txt", Want::file("after, and longer\n")),
        ("mode.txt", Want::file("its mode changes\n")),
        ("mode_dir", Want::Dir),
        ("new.txt", Want::file("created after the sync\n")),
        ("new_dir", Want::Dir),
        ("new_dir/n.txt", Want::file("in a new directory\n")),
        ("filler", Want::Dir),
    ];
    let fillers: Vec<(String, String)> = (0..6)
        .map(|i| (format!("filler/f{i}.txt"), format!("filler {i}\n")))
        .collect();
    for (rel, content) in &fillers {
        want.push((rel, Want::file(content)));
    }
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    // Contents, modes (files and directories) and file mtimes all carried.
    assert_synced(s, d)?;
    assert_same(
        &format!(
            "{} (where the user made the changes) was changed",
            changed.name()
        ),
        &changed_before,
        &snapshot(c)?,
    )
}

#[test]
fn changes_in_source_only_reach_backup() -> TestResult {
    one_sided_changes_are_carried(Side::Source)
}

#[test]
fn changes_in_backup_only_reach_source() -> TestResult {
    one_sided_changes_are_carried(Side::Backup)
}

#[test]
fn file_turned_into_directory_in_source_is_carried_to_backup() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "keep.txt", "keep\n", T0)?;
    put(s, "thing", "a file for now\n", T0 + 1)?;
    sync(&env)?;
    fs::remove_file(s.join("thing"))?;
    put(s, "thing/inner.txt", "now a directory\n", T0 + 2)?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    expect_no_warnings(&run)?;
    expect_operations(
        &run,
        &[
            "removed thing from BACKUP",
            "created directory thing in BACKUP",
            "copied thing/inner.txt to BACKUP",
        ],
    )?;
    expect_clean_summary(&run)?;
    let want = [
        ("keep.txt", Want::file("keep\n")),
        ("thing", Want::Dir),
        ("thing/inner.txt", Want::file("now a directory\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)
}

#[test]
fn directory_turned_into_file_in_backup_is_carried_to_source() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    // Enough other files that removing the directory's two stays under the half-of-a-side
    // refusal.
    put(s, "keep.txt", "keep\n", T0)?;
    put(s, "keep2.txt", "keep 2\n", T0)?;
    put(s, "keep3.txt", "keep 3\n", T0)?;
    put(s, "thing/a.txt", "a\n", T0 + 1)?;
    put(s, "thing/sub/b.txt", "b\n", T0 + 2)?;
    sync(&env)?;
    fs::remove_dir_all(d.join("thing"))?;
    put(d, "thing", "now a file\n", T0 + 3)?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    expect_no_warnings(&run)?;
    run.expect("INFO", "removed thing/a.txt from SOURCE")?;
    run.expect("INFO", "removed thing/sub/b.txt from SOURCE")?;
    run.expect("INFO", "removed directory thing/sub from SOURCE")?;
    run.expect("INFO", "removed directory thing from SOURCE")?;
    run.expect_any(&["copied thing to SOURCE", "replaced thing in SOURCE"])?;
    expect_clean_summary(&run)?;
    let want = [
        ("keep.txt", Want::file("keep\n")),
        ("keep2.txt", Want::file("keep 2\n")),
        ("keep3.txt", Want::file("keep 3\n")),
        ("thing", Want::file("now a file\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)
}

#[test]
fn symlink_created_retargeted_and_removed_is_carried() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "a\n", T0)?;
    put(s, "b.txt", "b\n", T0 + 1)?;
    put(s, "sub/x.txt", "x\n", T0 + 2)?;
    sync(&env)?;

    // Created in SOURCE: a link to a file, a link to a directory (never followed), a dangling one.
    set_mtime(&symlink(s, "link", "a.txt")?, T0 + 50, 0)?;
    set_mtime(&symlink(s, "dir_link", "sub")?, T0 + 51, 0)?;
    set_mtime(&symlink(s, "dangling", "no/such/target")?, T0 + 52, 0)?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    expect_operations(
        &run,
        &[
            "created symlink link -> a.txt in BACKUP",
            "created symlink dir_link -> sub in BACKUP",
            "created symlink dangling -> no/such/target in BACKUP",
        ],
    )?;
    expect_clean_summary(&run)?;
    assert_synced(s, d)?;

    // Retargeted in BACKUP.
    fs::remove_file(d.join("link"))?;
    set_mtime(&symlink(d, "link", "b.txt")?, T0 + 60, 0)?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    expect_operations(&run, &["replaced symlink link -> b.txt in SOURCE"])?;
    expect_clean_summary(&run)?;
    ensure!(
        read_link(&s.join("link"))? == Path::new("b.txt"),
        "SOURCE/link not retargeted\n{run}"
    );
    assert_synced(s, d)?;

    // Removed in SOURCE.
    fs::remove_file(s.join("dangling"))?;
    let run = env.once(&[])?;
    run.expect_code(0)?;
    expect_operations(&run, &["removed dangling from BACKUP"])?;
    let want = [
        ("a.txt", Want::file("a\n")),
        ("b.txt", Want::file("b\n")),
        ("sub", Want::Dir),
        ("sub/x.txt", Want::file("x\n")),
        ("link", Want::link("b.txt")),
        ("dir_link", Want::link("sub")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)
}

#[test]
fn renamed_directory_on_one_side_is_renamed_on_the_other() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a/x.txt", "x\n", T0)?;
    put(s, "a/y.txt", "y\n", T0 + 1)?;
    put(s, "a/sub/z.txt", "z\n", T0 + 2)?;
    // Enough other files that the three deletions are not more than half of BACKUP.
    for i in 0..4 {
        put(s, &format!("keep{i}.txt"), &format!("keep {i}\n"), T0)?;
    }
    sync(&env)?;
    fs::rename(s.join("a"), s.join("b"))?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    expect_no_warnings(&run)?;
    run.expect("INFO", "removed directory a from BACKUP")?;
    run.expect("INFO", "created directory b in BACKUP")?;
    run.expect("INFO", "copied b/x.txt to BACKUP")?;
    run.expect("INFO", "copied b/sub/z.txt to BACKUP")?;
    expect_clean_summary(&run)?;
    let want = [
        ("b", Want::Dir),
        ("b/x.txt", Want::file("x\n")),
        ("b/y.txt", Want::file("y\n")),
        ("b/sub", Want::Dir),
        ("b/sub/z.txt", Want::file("z\n")),
        ("keep0.txt", Want::file("keep 0\n")),
        ("keep1.txt", Want::file("keep 1\n")),
        ("keep2.txt", Want::file("keep 2\n")),
        ("keep3.txt", Want::file("keep 3\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)
}

#[test]
fn time_only_change_updates_metadata_without_copy() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "same content\n", T0)?;
    put(s, "b.txt", "also the same\n", T0 + 1)?;
    sync(&env)?;
    let (backup_a, source_b) = (inode(&d.join("a.txt"))?, inode(&s.join("b.txt"))?);
    // `touch`: new mtimes, same contents, one on each side.
    set_mtime(&s.join("a.txt"), T0 + 500, 5)?;
    set_mtime(&d.join("b.txt"), T0 + 600, 6)?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    expect_no_warnings(&run)?;
    expect_operations(
        &run,
        &[
            "updated metadata of a.txt in BACKUP",
            "updated metadata of b.txt in SOURCE",
        ],
    )?;
    expect_clean_summary(&run)?;
    ensure!(
        inode(&d.join("a.txt"))? == backup_a && inode(&s.join("b.txt"))? == source_b,
        "a time-only change replaced a file instead of setting its mtime\n{run}"
    );
    let a = fs::metadata(d.join("a.txt"))?;
    let b = fs::metadata(s.join("b.txt"))?;
    ensure!(
        (a.mtime(), a.mtime_nsec()) == (T0 + 500, 5)
            && (b.mtime(), b.mtime_nsec()) == (T0 + 600, 6),
        "mtimes not carried\n{run}"
    );
    let want = [
        ("a.txt", Want::file("same content\n")),
        ("b.txt", Want::file("also the same\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)
}

#[test]
fn identical_edits_on_both_sides_are_not_a_conflict() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "old a\n", T0)?;
    put(s, "b.txt", "old b\n", T0 + 1)?;
    sync(&env)?;
    // The same edit, at the same time, on both sides.
    put(s, "a.txt", "the same new a\n", T0 + 100)?;
    put(d, "a.txt", "the same new a\n", T0 + 100)?;
    // The same content, saved at different times: still no conflict.
    put(s, "b.txt", "the same new b\n", T0 + 200)?;
    put(d, "b.txt", "the same new b\n", T0 + 300)?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    expect_no_warnings(&run)?;
    expect_clean_summary(&run)?;
    let copies: Vec<String> = run
        .operations()
        .into_iter()
        .filter(|m| m.contains("a.txt") || m.starts_with("copied ") || m.starts_with("replaced "))
        .collect();
    ensure!(
        copies.is_empty(),
        "identical edits caused copies or operations on a.txt: {copies:?}\n{run}"
    );
    let want = [
        ("a.txt", Want::file("the same new a\n")),
        ("b.txt", Want::file("the same new b\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    ensure!(
        fs::metadata(s.join("a.txt"))?.mtime() == T0 + 100
            && fs::metadata(d.join("a.txt"))?.mtime() == T0 + 100,
        "a.txt's mtime changed\n{run}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Conflicts

/// Both sides edit `a.txt` after a sync, SOURCE's edit stamped `source_mtime` and BACKUP's
/// `backup_mtime`; a pass with `args` must keep `winner`'s version by `policy` and the other as
/// a conflict copy on both sides.
fn conflicting_edits(
    args: &[&dyn AsRef<OsStr>],
    source_mtime: i64,
    backup_mtime: i64,
    winner: Side,
    policy: &str,
) -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "base\n", T0)?;
    put(s, "keep.txt", "keep\n", T0)?;
    sync(&env)?;
    let source_text = "edited in SOURCE\n";
    let backup_text = "edited in BACKUP, a longer line\n";
    put(s, "a.txt", source_text, source_mtime)?;
    put(d, "a.txt", backup_text, backup_mtime)?;
    let (win_text, lose_text, win_mtime, lose_mtime) = match winner {
        Side::Source => (source_text, backup_text, source_mtime, backup_mtime),
        Side::Backup => (backup_text, source_text, backup_mtime, source_mtime),
    };

    let (run, window) = timed(|| env.once(args))?;

    run.expect_code(0)?;
    run.expect_well_formed_log()?;
    let copy = expect_conflict(
        &env,
        &run,
        &window,
        &Conflict {
            name: "a.txt",
            winner,
            policy,
            loser: lose_text,
            known: &[],
        },
    )?;
    ensure!(copy.counter.is_none(), "unexpected counter in {copy:?}");
    expect_conflict_operations(&run, "a.txt", &copy.name, winner)?;
    ensure!(
        conflicts(&run)? == 1 && run.summary()?.errors == 0,
        "expected 1 conflict and no error\n{run}"
    );
    let want = [
        ("a.txt", Want::file(win_text)),
        (copy.name.as_str(), Want::file(lose_text)),
        ("keep.txt", Want::file("keep\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)?;
    ensure!(
        fs::metadata(s.join("a.txt"))?.mtime() == win_mtime
            && fs::metadata(s.join(&copy.name))?.mtime() == lose_mtime,
        "the winner's and the loser's mtimes did not travel with their contents\n{run}"
    );

    // Resolved: the next pass does nothing.
    let again = env.once(args)?;
    again.expect_code(0)?;
    expect_operations(&again, &[])?;
    expect_clean_summary(&again)
}

#[test]
fn conflicting_edits_newer_keeps_the_later_source_version() -> TestResult {
    conflicting_edits(
        &[&"--conflict", &"newer"],
        T0 + 500,
        T0 + 400,
        Side::Source,
        "newer",
    )
}

#[test]
fn conflicting_edits_by_default_keep_the_later_backup_version() -> TestResult {
    conflicting_edits(&[], T0 + 400, T0 + 500, Side::Backup, "newer")
}

#[test]
fn conflicting_edits_with_equal_mtimes_keep_the_source_version() -> TestResult {
    conflicting_edits(
        &[&"--conflict", &"newer"],
        T0 + 500,
        T0 + 500,
        Side::Source,
        "newer",
    )
}

#[test]
fn conflicting_edits_source_policy_keeps_the_older_source_version() -> TestResult {
    conflicting_edits(
        &[&"--conflict", &"source"],
        T0 + 400,
        T0 + 500,
        Side::Source,
        "source",
    )
}

#[test]
fn conflicting_edits_backup_policy_keeps_the_older_backup_version() -> TestResult {
    conflicting_edits(
        &[&"--conflict", &"backup"],
        T0 + 500,
        T0 + 400,
        Side::Backup,
        "backup",
    )
}

#[test]
fn two_conflicts_on_the_same_path_in_one_second_keep_both_copies() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "base\n", T0)?;
    sync(&env)?;

    // Round 1: SOURCE's edit is newer and wins.
    put(s, "a.txt", "round 1, SOURCE\n", T0 + 100)?;
    put(d, "a.txt", "round 1, BACKUP\n", T0 + 50)?;
    let (first, window1) = timed(|| env.once(&[]))?;
    first.expect_code(0)?;
    let copy1 = expect_conflict(
        &env,
        &first,
        &window1,
        &Conflict {
            name: "a.txt",
            winner: Side::Source,
            policy: "newer",
            loser: "round 1, BACKUP\n",
            known: &[],
        },
    )?;
    // Round 2, right away, most likely within the same second: both edit again.
    put(s, "a.txt", "round 2, SOURCE\n", T0 + 200)?;
    put(d, "a.txt", "round 2, BACKUP, longer\n", T0 + 150)?;
    let (second, window2) = timed(|| env.once(&[]))?;

    second.expect_code(0)?;
    let copy2 = expect_conflict(
        &env,
        &second,
        &window2,
        &Conflict {
            name: "a.txt",
            winner: Side::Source,
            policy: "newer",
            loser: "round 2, BACKUP, longer\n",
            known: &[&copy1.name],
        },
    )?;
    expect_conflict_operations(&second, "a.txt", &copy2.name, Side::Source)?;
    // Same second: the name was taken, so a counter; a later second: a name of its own.
    let expected_counter = (copy2.stamp == copy1.stamp).then_some(2);
    ensure!(
        copy2.counter == expected_counter,
        "second conflict copy {} after {}: expected counter {expected_counter:?}\n{second}",
        copy2.name,
        copy1.name
    );
    let want = [
        ("a.txt", Want::file("round 2, SOURCE\n")),
        (copy1.name.as_str(), Want::file("round 1, BACKUP\n")),
        (copy2.name.as_str(), Want::file("round 2, BACKUP, longer\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)
}

#[test]
fn conflict_copy_never_overwrites_a_file_already_bearing_its_name() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "base\n", T0)?;
    // The user already has files named like every conflict copy of a.txt that a pass within
    // the next two minutes could make, in both readings of the name: the copy must take a
    // counter and leave them all alone.
    let now = now_secs()?;
    let mut decoys = Vec::new();
    for t in now - 2..=now + 120 {
        let stamp = compact_stamp(t, TWOWAY_TZ_OFFSET);
        for name in [
            format!("a.conflict-{stamp}.txt"),
            format!("a.txt.conflict-{stamp}.txt"),
        ] {
            let content = format!("the user's own {name}\n");
            put(s, &name, &content, T0 + 1)?;
            decoys.push((name, content));
        }
    }
    sync(&env)?;
    put(s, "a.txt", "edited in SOURCE\n", T0 + 100)?;
    put(d, "a.txt", "edited in BACKUP, older\n", T0 + 50)?;

    let (run, window) = timed(|| env.once(&[]))?;

    ensure!(
        now_secs()? < now + 110,
        "the setup took too long for this test to mean anything"
    );
    run.expect_code(0)?;
    let known: Vec<&str> = decoys.iter().map(|(n, _)| n.as_str()).collect();
    let copy = expect_conflict(
        &env,
        &run,
        &window,
        &Conflict {
            name: "a.txt",
            winner: Side::Source,
            policy: "newer",
            loser: "edited in BACKUP, older\n",
            known: &known,
        },
    )?;
    ensure!(
        copy.counter == Some(2),
        "{} should carry the counter -2: its plain name was taken\n{run}",
        copy.name
    );
    expect_conflict_operations(&run, "a.txt", &copy.name, Side::Source)?;
    let mut want = vec![
        ("a.txt", Want::file("edited in SOURCE\n")),
        (copy.name.as_str(), Want::file("edited in BACKUP, older\n")),
    ];
    for (name, content) in &decoys {
        want.push((name, Want::file(content)));
    }
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)
}

/// The file `notes` becomes a directory on `dir_side` while the other side edits it: the
/// directory keeps the name whatever `args` say, the file goes to a conflict copy on both sides.
fn file_versus_directory(args: &[&dyn AsRef<OsStr>], dir_side: Side) -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "notes", "plain notes\n", T0)?;
    put(s, "keep.txt", "keep\n", T0)?;
    sync(&env)?;
    let file_side = dir_side.other();
    fs::remove_file(dir_side.dir(&env).join("notes"))?;
    put(
        dir_side.dir(&env),
        "notes/inner.txt",
        "now a directory\n",
        T0 + 10,
    )?;
    // The edit is the newest change of all: the directory still wins.
    put(
        file_side.dir(&env),
        "notes",
        "edited notes\n",
        T0 + 1_000_000,
    )?;

    let (run, window) = timed(|| env.once(args))?;

    run.expect_code(0)?;
    // No extension: `notes.conflict-YYYYMMDD-HHMMSS`.
    let copy = expect_conflict(
        &env,
        &run,
        &window,
        &Conflict {
            name: "notes",
            winner: dir_side,
            policy: "directory",
            loser: "edited notes\n",
            known: &[],
        },
    )?;
    ensure!(copy.counter.is_none(), "unexpected counter in {copy:?}");
    let (fname, dname) = (file_side.name(), dir_side.name());
    run.expect("INFO", &format!("saved notes as {} in {fname}", copy.name))?;
    run.expect("INFO", &format!("created directory notes in {fname}"))?;
    run.expect("INFO", &format!("copied notes/inner.txt to {fname}"))?;
    run.expect("INFO", &format!("copied {} to {dname}", copy.name))?;
    ensure!(conflicts(&run)? == 1, "expected 1 conflict\n{run}");
    let want = [
        ("notes", Want::Dir),
        ("notes/inner.txt", Want::file("now a directory\n")),
        (copy.name.as_str(), Want::file("edited notes\n")),
        ("keep.txt", Want::file("keep\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)
}

#[test]
fn file_versus_directory_conflict_keeps_the_directory_in_source() -> TestResult {
    file_versus_directory(&[], Side::Source)
}

#[test]
fn file_versus_directory_conflict_keeps_the_directory_whatever_the_policy() -> TestResult {
    file_versus_directory(&[&"--conflict", &"source"], Side::Backup)
}

// ---------------------------------------------------------------------------------------------
// Modification beats deletion

/// `edited` edits a.txt, the other side deletes it: the edit comes back to the deleting side.
fn edit_beats_delete(edited: Side) -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "original\n", T0)?;
    put(s, "keep.txt", "keep\n", T0)?;
    sync(&env)?;
    put(edited.dir(&env), "a.txt", "edited, and kept\n", T0 + 100)?;
    fs::remove_file(edited.other().dir(&env).join("a.txt"))?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect_well_formed_log()?;
    expect_operations(
        &run,
        &[&format!("copied a.txt to {}", edited.other().name())],
    )?;
    let want = [
        ("a.txt", Want::file("edited, and kept\n")),
        ("keep.txt", Want::file("keep\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)?;

    let again = env.once(&[])?;
    again.expect_code(0)?;
    expect_operations(&again, &[])
}

#[test]
fn edit_in_source_beats_delete_in_backup() -> TestResult {
    edit_beats_delete(Side::Source)
}

#[test]
fn edit_in_backup_beats_delete_in_source() -> TestResult {
    edit_beats_delete(Side::Backup)
}

#[test]
fn new_file_in_directory_deleted_on_other_side_brings_the_directory_back() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "d/a.txt", "unchanged sibling\n", T0)?;
    put(s, "d/b.txt", "edited soon\n", T0 + 1)?;
    put(s, "d/sub/c.txt", "unchanged, deeper\n", T0 + 2)?;
    for i in 0..4 {
        put(s, &format!("keep{i}.txt"), &format!("keep {i}\n"), T0)?;
    }
    sync(&env)?;
    fs::remove_dir_all(s.join("d"))?;
    put(d, "d/new.txt", "created in BACKUP\n", T0 + 100)?;
    put(d, "d/b.txt", "edited in BACKUP\n", T0 + 101)?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect_well_formed_log()?;
    for message in [
        "created directory d in SOURCE",
        "copied d/new.txt to SOURCE",
        "copied d/b.txt to SOURCE",
        "removed d/a.txt from BACKUP",
        "removed directory d/sub from BACKUP",
    ] {
        run.expect("INFO", message)?;
    }
    ensure!(run.summary()?.errors == 0, "errors in the pass\n{run}");
    // The directory is back with the new and the edited file; the unchanged ones stay deleted.
    let want = [
        ("d", Want::Dir),
        ("d/new.txt", Want::file("created in BACKUP\n")),
        ("d/b.txt", Want::file("edited in BACKUP\n")),
        ("keep0.txt", Want::file("keep 0\n")),
        ("keep1.txt", Want::file("keep 1\n")),
        ("keep2.txt", Want::file("keep 2\n")),
        ("keep3.txt", Want::file("keep 3\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)
}

// ---------------------------------------------------------------------------------------------
// Refusals: exit 2, a clear line on stderr, nothing touched

/// Everything on `emptied` is removed after a sync (an unmounted drive looks like this): refused
/// unless `--force`, which then empties the other side.
fn emptied_side_is_refused_unless_forced(emptied: Side) -> TestResult {
    let env = Env::twoway()?;
    put(&env.src, "a.txt", "a\n", T0)?;
    put(&env.src, "sub/b.txt", "b\n", T0)?;
    put(&env.src, "sub/deeper/c.txt", "c\n", T0)?;
    sync(&env)?;
    empty_dir(emptied.dir(&env))?;

    expect_refusal(
        &env,
        &[&"--once", &env.src, &env.dst],
        &[&format!(
            "refused: {} {} is empty while the last sync holds 3 entries (an unmounted drive \
             looks like this); run with --force if this is intended",
            emptied.name(),
            emptied.dir(&env).canonicalize()?.display()
        )],
    )?;

    let forced = env.once(&[&"--force"])?;
    forced.expect_code(0)?;
    let other = emptied.other().name();
    forced.expect("INFO", &format!("removed a.txt from {other}"))?;
    forced.expect("INFO", &format!("removed directory sub from {other}"))?;
    ensure!(forced.summary()?.errors == 0, "errors\n{forced}");
    expect_tree("SOURCE", &env.src, &[])?;
    expect_tree("BACKUP", &env.dst, &[])
}

#[test]
fn emptied_backup_is_refused_unless_forced() -> TestResult {
    emptied_side_is_refused_unless_forced(Side::Backup)
}

#[test]
fn emptied_source_is_refused_unless_forced() -> TestResult {
    emptied_side_is_refused_unless_forced(Side::Source)
}

/// Ten files synced; `deleted` of them removed in BACKUP, which SOURCE would follow.
fn delete_files_in_backup(deleted: usize) -> Res<Env> {
    let env = Env::twoway()?;
    for i in 0..10 {
        put(&env.src, &format!("f{i}.txt"), &format!("file {i}\n"), T0)?;
    }
    sync(&env)?;
    for i in 0..deleted {
        fs::remove_file(env.dst.join(format!("f{i}.txt")))?;
    }
    Ok(env)
}

#[test]
fn deleting_more_than_half_of_a_side_is_refused_unless_forced() -> TestResult {
    let env = delete_files_in_backup(6)?;

    // 6 of SOURCE's 10 files would go.
    expect_refusal(
        &env,
        &[&"--once", &env.src, &env.dst],
        &[&format!(
            "refused: the pass would delete 6 of the 10 files of SOURCE {} (more than half); \
             run with --force if this is intended",
            env.src.canonicalize()?.display()
        )],
    )?;

    let forced = env.once(&[&"--force"])?;
    forced.expect_code(0)?;
    let removed: Vec<String> = (0..6)
        .map(|i| format!("removed f{i}.txt from SOURCE"))
        .collect();
    let removed: Vec<&str> = removed.iter().map(String::as_str).collect();
    expect_operations(&forced, &removed)?;
    let left: Vec<(String, String)> = (6..10)
        .map(|i| (format!("f{i}.txt"), format!("file {i}\n")))
        .collect();
    let want: Vec<(&str, Want)> = left
        .iter()
        .map(|(rel, c)| (rel.as_str(), Want::file(c)))
        .collect();
    expect_tree("SOURCE", &env.src, &want)?;
    expect_tree("BACKUP", &env.dst, &want)
}

#[test]
fn deleting_exactly_half_of_a_side_is_allowed() -> TestResult {
    let env = delete_files_in_backup(5)?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect("INFO", "removed f4.txt from SOURCE")?;
    expect_clean_summary(&run)?;
    assert_synced(&env.src, &env.dst)
}

#[test]
fn second_instance_on_the_same_pair_from_another_directory_is_refused() -> TestResult {
    let env = Env::twoway()?;
    put(&env.src, "a.txt", "a\n", T0)?;
    let mut first = env.spawn(&[&"--interval", &"3600", &env.src, &env.dst])?;
    let summary = first.wait_for_first_pass(&env)?;
    // Something for a second instance to do, were it let through.
    put(&env.src, "b.txt", "b\n", T0 + 1)?;
    let (src_before, dst_before) = (snapshot(&env.src)?, snapshot(&env.dst)?);
    let elsewhere = mkdir(&env.root, "elsewhere")?;
    let other_log = elsewhere.join("twoway.log");
    let mut cmd = env.command_without_log();
    cmd.current_dir(&elsewhere)
        .arg("--log")
        .arg(&other_log)
        .arg("--no-recovery")
        .arg("--once")
        .arg(&env.src)
        .arg(&env.dst);

    let run = run_program_command(Program::Twoway, cmd, &other_log, HANG_TIMEOUT)?;

    run.expect_code(2)?;
    ensure!(
        run.stderr.lines().any(|l| l.contains("lock")),
        "expected a stderr line naming the lock\n{run}"
    );
    assert_same(
        "the refused instance changed SOURCE",
        &src_before,
        &snapshot(&env.src)?,
    )?;
    assert_same(
        "the refused instance changed BACKUP",
        &dst_before,
        &snapshot(&env.dst)?,
    )?;
    let stray = archives(&elsewhere)?;
    ensure!(
        stray.is_empty(),
        "the refused instance wrote an archive: {stray:?}"
    );

    // The first one ends normally on SIGTERM and reports its total.
    first.stop_with("TERM")?;
    let total = format!("Total number of operations: {}", summary.operations);
    ensure!(
        env.log_text()
            .lines()
            .filter_map(parse_log_line)
            .any(|l| l.level == "INFO" && l.message == total),
        "no `{total}` line at exit\n{}",
        env.log_text()
    );
    Ok(())
}

#[test]
fn state_directory_inside_source_or_backup_is_refused() -> TestResult {
    let env = Env::twoway()?;
    put(&env.src, "a.txt", "a\n", T0)?;
    mkdir(&env.src, "sub")?;
    put(&env.dst, "b.txt", "b\n", T0)?;
    let inside = [
        env.src.clone(),
        env.src.join("sub"),
        env.dst.clone(),
        env.dst.join("deeper/still"),
    ];
    mkdir(&env.dst, "deeper/still")?;
    for cwd in &inside {
        let before = env.snapshot_all()?;
        let mut cmd = env.command(&[&"--once", &env.src, &env.dst]);
        cmd.current_dir(cwd);

        let run = env.run_command(cmd, &env.log)?;

        run.expect_code(2)?;
        ensure!(
            run.stderr
                .lines()
                .any(|l| contains_path(l, &env.src) || contains_path(l, &env.dst)),
            "expected a stderr line naming the root the state directory {} is in\n{run}",
            cwd.display()
        );
        assert_same(
            &format!("a run from {} changed the disk", cwd.display()),
            &before,
            &env.snapshot_all()?,
        )?;
    }
    Ok(())
}

/// Ways to damage an archive: truncated in the middle of a line, garbage appended, garbage only.
fn damage_archive(path: &Path, how: &str) -> TestResult {
    let bytes = read(path)?;
    match how {
        "truncated" => {
            let mut cut = bytes.len() / 2;
            while cut > 1 && bytes[cut - 1] == b'\n' {
                cut -= 1;
            }
            ensure!(cut > 0, "archive too short to truncate");
            fs::write(path, &bytes[..cut])?;
        }
        "garbage appended" => {
            let mut f = OpenOptions::new().append(true).open(path)?;
            f.write_all(b"\x00\xff this is not an archive line \x01\n")?;
        }
        _ => fs::write(path, "this is not a twoway archive\n")?,
    }
    Ok(())
}

#[test]
fn corrupt_archive_is_refused_naming_it_and_nothing_changes() -> TestResult {
    for how in ["truncated", "garbage appended", "garbage only"] {
        let env = Env::twoway()?;
        let (s, d) = (&env.src, &env.dst);
        put(s, "a.txt", "a\n", T0)?;
        put(s, "sub/b.txt", "b\n", T0 + 1)?;
        put(s, "c.txt", "c\n", T0 + 2)?;
        for i in 0..20 {
            put(s, &format!("more/m{i:02}.txt"), &format!("more {i}\n"), T0)?;
        }
        sync(&env)?;
        // Changes a pass with a good archive would carry, deletions included.
        fs::remove_file(s.join("c.txt"))?;
        put(s, "a.txt", "a, edited\n", T0 + 10)?;
        put(d, "new.txt", "new in BACKUP\n", T0 + 11)?;
        fs::remove_file(d.join("sub/b.txt"))?;
        let archive = env.archive()?;
        damage_archive(&archive, how)?;
        let name = archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();

        expect_refusal(&env, &[&"--once", s, d], &[name.as_str()])
            .map_err(|e| fail(format!("archive {how}: {e:?}")))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Options

#[test]
fn dry_run_changes_nothing() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "keep.txt", "keep\n", T0)?;
    put(s, "mod.txt", "before\n", T0 + 1)?;
    put(s, "del.txt", "deleted soon\n", T0 + 2)?;
    put(s, "conf.txt", "base\n", T0 + 3)?;
    put(d, "from_backup.txt", "only in BACKUP\n", T0 + 4)?;

    // A dry first pass writes no archive and copies nothing.
    let before = env.snapshot_all()?;
    let dry = env.once(&[&"--dry-run"])?;
    dry.expect_code(0)?;
    dry.expect("INFO", "dry run: copied keep.txt to BACKUP")?;
    dry.expect("INFO", "dry run: copied from_backup.txt to SOURCE")?;
    assert_same(
        "a dry first pass changed the disk",
        &before,
        &env.snapshot_all()?,
    )?;
    ensure!(
        archives(&env.archive_dir())?.is_empty(),
        "a dry run wrote an archive"
    );

    sync(&env)?;
    put(s, "new.txt", "new in SOURCE\n", T0 + 10)?;
    put(d, "mod.txt", "after, in BACKUP\n", T0 + 11)?;
    fs::remove_file(s.join("del.txt"))?;
    put(s, "conf.txt", "conflict, SOURCE\n", T0 + 20)?;
    put(d, "conf.txt", "conflict, BACKUP\n", T0 + 12)?;
    let before = env.snapshot_all()?;

    let dry = env.once(&[&"--dry-run"])?;

    dry.expect_code(0)?;
    dry.expect_well_formed_log()?;
    for message in [
        "dry run: copied new.txt to BACKUP",
        "dry run: replaced mod.txt in SOURCE",
        "dry run: removed del.txt from BACKUP",
    ] {
        dry.expect("INFO", message)?;
    }
    let unprefixed: Vec<String> = dry
        .operations()
        .into_iter()
        .filter(|m| !m.starts_with("dry run: "))
        .collect();
    ensure!(
        unprefixed.is_empty(),
        "operation lines without `dry run: `: {unprefixed:?}\n{dry}"
    );
    assert_same("a dry run changed the disk", &before, &env.snapshot_all()?)?;

    // The archive was left alone, so a real pass still sees every change.
    let (real, window) = timed(|| env.once(&[]))?;
    real.expect_code(0)?;
    for message in [
        "copied new.txt to BACKUP",
        "replaced mod.txt in SOURCE",
        "removed del.txt from BACKUP",
    ] {
        real.expect("INFO", message)?;
    }
    let copy = expect_conflict(
        &env,
        &real,
        &window,
        &Conflict {
            name: "conf.txt",
            winner: Side::Source,
            policy: "newer",
            loser: "conflict, BACKUP\n",
            known: &[],
        },
    )?;
    let want = [
        ("keep.txt", Want::file("keep\n")),
        ("mod.txt", Want::file("after, in BACKUP\n")),
        ("conf.txt", Want::file("conflict, SOURCE\n")),
        (copy.name.as_str(), Want::file("conflict, BACKUP\n")),
        ("from_backup.txt", Want::file("only in BACKUP\n")),
        ("new.txt", Want::file("new in SOURCE\n")),
    ];
    expect_tree("SOURCE", s, &want)?;
    expect_tree("BACKUP", d, &want)?;
    assert_synced(s, d)
}

#[test]
fn excluded_paths_are_left_alone_on_both_sides() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "a\n", T0)?;
    put(s, "x.tmp", "SOURCE's scratch\n", T0)?;
    put(s, "sub/y.tmp", "SOURCE's deeper scratch\n", T0)?;
    put(s, "cache/c.txt", "SOURCE's cache\n", T0)?;
    put(s, "both.tmp", "SOURCE's version\n", T0)?;
    put(d, "b.txt", "b\n", T0)?;
    put(d, "z.tmp", "BACKUP's scratch\n", T0)?;
    put(d, "cache/d.txt", "BACKUP's cache\n", T0)?;
    put(d, "both.tmp", "BACKUP's version, different\n", T0 + 1)?;
    let excludes: [&dyn AsRef<OsStr>; 4] = [&"--exclude", &"*.tmp", &"--exclude", &"cache"];

    let run = env.once(&excludes)?;

    run.expect_code(0)?;
    expect_no_warnings(&run)?;
    expect_operations(
        &run,
        &[
            "copied a.txt to BACKUP",
            "created directory sub in BACKUP",
            "copied b.txt to SOURCE",
        ],
    )?;
    expect_clean_summary(&run)?;
    expect_tree(
        "SOURCE",
        s,
        &[
            ("a.txt", Want::file("a\n")),
            ("b.txt", Want::file("b\n")),
            ("x.tmp", Want::file("SOURCE's scratch\n")),
            ("sub", Want::Dir),
            ("sub/y.tmp", Want::file("SOURCE's deeper scratch\n")),
            ("cache", Want::Dir),
            ("cache/c.txt", Want::file("SOURCE's cache\n")),
            ("both.tmp", Want::file("SOURCE's version\n")),
        ],
    )?;
    expect_tree(
        "BACKUP",
        d,
        &[
            ("a.txt", Want::file("a\n")),
            ("b.txt", Want::file("b\n")),
            ("z.tmp", Want::file("BACKUP's scratch\n")),
            ("sub", Want::Dir),
            ("cache", Want::Dir),
            ("cache/d.txt", Want::file("BACKUP's cache\n")),
            ("both.tmp", Want::file("BACKUP's version, different\n")),
        ],
    )?;

    // Deleting excluded paths on one side deletes nothing on the other.
    fs::remove_file(s.join("both.tmp"))?;
    fs::remove_dir_all(d.join("cache"))?;
    let run = env.once(&excludes)?;
    run.expect_code(0)?;
    expect_operations(&run, &[])?;
    ensure!(
        read(&d.join("both.tmp"))? == b"BACKUP's version, different\n"
            && read(&s.join("cache/c.txt"))? == b"SOURCE's cache\n",
        "a deletion of an excluded path was carried over\n{run}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Kills and faults

/// Files of the kill test: a synced base of 200, then 2000 new ones on each side, 50 of the base
/// deleted in SOURCE and 50 others edited in BACKUP. Returns what both sides must hold once a
/// pass has completed.
fn prepare_kill_fixture(env: &Env) -> Res<Vec<(String, Want)>> {
    let (s, d) = (&env.src, &env.dst);
    for i in 0..200 {
        put(
            s,
            &format!("shared/{i:03}.txt"),
            &format!("shared {i}\n"),
            T0 + i,
        )?;
    }
    sync(env)?;
    let mut want = vec![("shared".to_owned(), Want::Dir)];
    for dir in 0..20 {
        want.push((format!("s{dir:02}"), Want::Dir));
        want.push((format!("b{dir:02}"), Want::Dir));
        for i in 0..100 {
            for (side, tag) in [(s, "s"), (d, "b")] {
                let rel = format!("{tag}{dir:02}/f{i:03}.txt");
                let content = format!("{tag} {dir} {i}: {}\n", "x".repeat(i as usize));
                put(side, &rel, &content, T0 + 1000 + i)?;
                want.push((rel, Want::file(content)));
            }
        }
    }
    for i in 0..200 {
        let rel = format!("shared/{i:03}.txt");
        match i {
            0..50 => fs::remove_file(s.join(&rel))?,
            100..150 => {
                let content = format!("edited {i} in BACKUP\n");
                put(d, &rel, &content, T0 + 5000 + i)?;
                want.push((rel, Want::file(content)));
            }
            _ => want.push((rel, Want::file(format!("shared {i}\n")))),
        }
    }
    Ok(want)
}

/// After the rerun that followed a kill: a clean pass, both sides holding exactly `want` (every
/// original content, in place), leftover temporary files never carried over, and nothing left
/// for a further pass to do.
fn expect_converged(env: &Env, run: &Run, want: &[(String, Want)]) -> TestResult {
    run.expect_code(0)?;
    expect_clean_summary(run)?;
    // Leftover temporary files of the killed run may remain where they were written, but are
    // never carried to the other side.
    for side in [Side::Source, Side::Backup] {
        for temp in temp_files(side.dir(env))? {
            ensure!(
                kind_of(&side.other().dir(env).join(&temp))?.is_none(),
                "temporary file {temp:?} of {} was carried to {}\n{run}",
                side.name(),
                side.other().name()
            );
        }
    }
    let carried: Vec<String> = run
        .operations()
        .into_iter()
        .filter(|m| m.contains(TMP_PREFIX) && !m.starts_with("removed "))
        .collect();
    ensure!(
        carried.is_empty(),
        "temporary files carried over: {carried:?}\n{run}"
    );
    let want: Vec<(&str, Want)> = want.iter().map(|(r, w)| (r.as_str(), w.clone())).collect();
    for side in [Side::Source, Side::Backup] {
        let dir = side.dir(env);
        expect_entries(side.name(), dir, &without_temp_files(snapshot(dir)?), &want)?;
    }
    assert_same(
        "SOURCE and BACKUP after the rerun (temporary files and directory mtimes aside)",
        &without_dir_mtimes(without_temp_files(snapshot(&env.src)?)),
        &without_dir_mtimes(without_temp_files(snapshot(&env.dst)?)),
    )?;
    let again = env.once(&[])?;
    again.expect_code(0)?;
    expect_operations(&again, &[])
}

/// When the kill test sends SIGKILL.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This many milliseconds after the start.
    Millis(u64),
    /// As soon as the run has logged this many operation lines (it is then mid-apply).
    Operations(usize),
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

#[test]
fn kill_during_a_pass_then_rerun_converges_with_nothing_lost() -> TestResult {
    let plans = [
        KillAt::Millis(1),
        KillAt::Millis(5),
        KillAt::Millis(15),
        KillAt::Millis(40),
        KillAt::Millis(100),
        KillAt::Millis(250),
        KillAt::Operations(1),
        KillAt::Operations(300),
        KillAt::Operations(2500),
    ];
    let mut landed = 0;
    for plan in plans {
        let env = Env::twoway()?;
        let want = prepare_kill_fixture(&env)?;
        // The log already holds the setup's pass: only what the killed run adds counts.
        let log_start = env.log_text().len();
        let mut child = env.spawn(&[&"--once", &env.src, &env.dst])?;
        match plan {
            KillAt::Millis(ms) => thread::sleep(Duration::from_millis(ms)),
            KillAt::Operations(n) => {
                child.wait_for_log(&env, &format!("{n} operation lines"), RUN_TIMEOUT, |text| {
                    operations_after(text, log_start) >= n
                })?;
            }
        }
        let status = child.kill()?;
        if status.code().is_none() {
            landed += 1;
        }
        let done = operations_after(&env.log_text(), log_start);
        let context = |e: Box<dyn std::error::Error>| {
            fail(format!(
                "after SIGKILL at {plan:?} ({}, {done} operations logged by then): {e:?}",
                describe_status(status)
            ))
        };

        let run = env.once(&[]).map_err(context)?;

        expect_converged(&env, &run, &want).map_err(context)?;
    }
    ensure!(
        landed >= 5,
        "only {landed} of {} kills hit a running pass: the test proved little",
        plans.len()
    );
    Ok(())
}

#[test]
fn unreadable_file_is_logged_its_old_copy_kept_and_retried() -> TestResult {
    let mut env = Env::twoway()?;
    let (s, d) = (env.src.clone(), env.dst.clone());
    put(&s, "a.txt", "old a\n", T0)?;
    put(&s, "b.txt", "old b\n", T0)?;
    put(&s, "c.txt", "old c\n", T0)?;
    put(&s, "sub/e.txt", "e\n", T0)?;
    // Root reads everything: run twoway as an unprivileged user.
    env.run_as_nobody()?;
    sync(&env)?;

    put(&s, "a.txt", "new content of a\n", T0 + 10)?;
    chmod(&s.join("a.txt"), 0o000)?;
    put(&s, "b.txt", "new content of b\n", T0 + 11)?;
    put(&d, "c.txt", "new content of c, from BACKUP\n", T0 + 12)?;
    give_back_to_nobody(&env)?;

    let run = env.once(&[])?;

    run.expect_code(1)?;
    ensure!(
        run.lines()
            .iter()
            .any(|l| l.level == "ERROR" && l.message.contains("a.txt")),
        "expected an ERROR line about a.txt\n{run}"
    );
    run.expect("INFO", "replaced b.txt in BACKUP")?;
    run.expect("INFO", "replaced c.txt in SOURCE")?;
    ensure!(
        run.summary()?.errors == 1,
        "expected 1 error in the summary\n{run}"
    );
    ensure!(
        read(&d.join("a.txt"))? == b"old a\n",
        "BACKUP/a.txt lost its old content\n{run}"
    );
    ensure!(
        kind_of(&s.join("a.txt"))? == Some("file"),
        "SOURCE/a.txt was removed\n{run}"
    );

    // Readable again: the failed entry kept its old archive state, so the edit is carried now
    // (had the archive recorded it as done, BACKUP's old copy would look newer and come back).
    chmod(&s.join("a.txt"), 0o644)?;
    let retry = env.once(&[])?;

    retry.expect_code(0)?;
    expect_operations(&retry, &["replaced a.txt in BACKUP"])?;
    expect_clean_summary(&retry)?;
    let want = [
        ("a.txt", Want::file("new content of a\n")),
        ("b.txt", Want::file("new content of b\n")),
        ("c.txt", Want::file("new content of c, from BACKUP\n")),
        ("sub", Want::Dir),
        ("sub/e.txt", Want::file("e\n")),
    ];
    expect_tree("SOURCE", &s, &want)?;
    expect_tree("BACKUP", &d, &want)?;
    assert_synced(&s, &d)
}

/// After [`Env::run_as_nobody`] as root, hands files the test wrote since back to that user, so
/// that twoway may set their times and modes.
fn give_back_to_nobody(env: &Env) -> TestResult {
    if fs::metadata(&env.root)?.uid() == NOBODY {
        chown_tree(&env.root, NOBODY, NOBODY)?;
    }
    Ok(())
}

#[test]
fn odd_names_round_trip_through_the_archive() -> TestResult {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    let latin1 = OsStr::from_bytes(b"caf\xe9 menu.txt");
    set_mtime(&write(s, latin1, "non-UTF-8 name")?, T0, 0)?;
    set_mtime(
        &write(d, "line\nbreak %20.txt", "newline and percent")?,
        T0,
        0,
    )?;

    let first = env.once(&[])?;
    first.expect_code(0)?;
    first.expect("INFO", "copied caf\\xe9 menu.txt to BACKUP")?;
    assert_synced(s, d)?;

    // If the archive had not kept both names exactly, this pass would see changes.
    let second = env.once(&[])?;
    second.expect_code(0)?;
    expect_operations(&second, &[])?;

    fs::remove_file(d.join(latin1))?;
    let third = env.once(&[])?;
    third.expect_code(0)?;
    expect_operations(&third, &["removed caf\\xe9 menu.txt from SOURCE"])?;
    assert_synced(s, d)
}

/// A killed pass can leave a replacement's temporary file (`.oneway-tmp-XXXXXX`, named for an
/// instant before its rename) on a side. The pass notes every such name in a journal beside
/// its archive first, so the next pass removes exactly those and never a user's look-alike.
#[test]
fn temporary_files_noted_by_a_killed_pass_are_removed_and_look_alikes_kept() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "a.txt", "a\n", T0)?;
    sync(&env)?;
    // What a kill between naming and renaming leaves: the file, and the journal naming it.
    let leftover = put(s, ".oneway-tmp-Ab12Cd", "half of a replacement", T0)?;
    let users = put(d, ".oneway-tmp-Zz99Yy", "the user's own file", T0)?;
    let journal = env.archive()?.with_extension("pending");
    fs::write(
        &journal,
        format!("{}\n", fs::canonicalize(&leftover)?.display()),
    )?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    ensure!(
        !leftover.exists(),
        "the noted leftover is still there\n{run}"
    );
    ensure!(
        read(&users)? == b"the user's own file",
        "a look-alike that no pass noted was touched\n{run}"
    );
    ensure!(!journal.exists(), "the journal outlived a completed pass");
    ensure!(
        !s.join(".oneway-tmp-Zz99Yy").exists(),
        "a temporary-looking file was carried to the other side"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The archive belongs to the pair

/// `twoway B A` after `twoway A B` finds the pair's archive: a file deleted from A since is
/// deleted from B, not brought back as new.
#[test]
fn the_archive_is_the_pairs_whichever_side_is_named_first() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "keep.txt", "keep\n", T0)?;
    put(s, "gone.txt", "deleted later\n", T0)?;
    sync(&env)?;
    fs::remove_file(s.join("gone.txt"))?;

    let run = env.run(&[&"--once", d, s])?;

    run.expect_code(0)?;
    run.expect("INFO", "removed gone.txt from SOURCE")?;
    ensure!(
        !s.join("gone.txt").exists() && !d.join("gone.txt").exists(),
        "the deleted file came back\n{run}"
    );
    ensure!(
        archives(&env.archive_dir())?.len() == 1,
        "a second archive was made for the pair named the other way round"
    );
    Ok(())
}

/// Run from another directory, twoway finds the same archive (it lives in the sync-state
/// directory, not where twoway runs).
#[test]
fn the_archive_is_found_whatever_directory_twoway_runs_from() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "keep.txt", "keep\n", T0)?;
    put(d, "gone.txt", "deleted later\n", T0)?;
    sync(&env)?;
    fs::remove_file(d.join("gone.txt"))?;
    let elsewhere = env.root.join("elsewhere");
    fs::create_dir(&elsewhere)?;

    let mut cmd = env.command(&[&"--once", s, d]);
    cmd.current_dir(&elsewhere);
    let run = env.run_command(cmd, &env.log)?;

    run.expect_code(0)?;
    run.expect("INFO", "removed gone.txt from SOURCE")?;
    ensure!(
        !s.join("gone.txt").exists(),
        "the deleted file came back\n{run}"
    );
    Ok(())
}

/// An archive an earlier release kept in the directory twoway ran from is taken over: the
/// pass uses it (nothing deleted since comes back) and moves it where the pair's belongs.
#[test]
fn an_archive_left_where_twoway_ran_is_taken_over() -> TestResult {
    let env = Env::twoway()?;
    let (s, d) = (&env.src, &env.dst);
    put(s, "keep.txt", "keep\n", T0)?;
    put(s, "gone.txt", "deleted later\n", T0)?;
    sync(&env)?;
    let (cs, cd) = (fs::canonicalize(s)?, fs::canonicalize(d)?);
    let old = sync_core::state::archive::path_for(&env.root, &cs, &cd);
    fs::rename(env.archive()?, &old)?;
    fs::remove_file(s.join("gone.txt"))?;

    let run = env.once(&[])?;

    run.expect_code(0)?;
    run.expect("INFO", "removed gone.txt from BACKUP")?;
    ensure!(
        !d.join("gone.txt").exists(),
        "the deleted file came back\n{run}"
    );
    ensure!(
        !old.exists(),
        "the earlier archive was left where twoway ran\n{run}"
    );
    env.archive()?;
    Ok(())
}
